import json

import pytest
import torch
from conftest import CONVNET_8PX_PARAMETERS, make_mnist_folder

from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import models, store
from ddpp_cli.engine.buffer import BufferConfig, train_buffer
from ddpp_cli.engine.device import seeded
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import ParamLayout, flat_parameters


def small_config(**overrides) -> BufferConfig:
    """Tiny MNIST at 8×8 (a fast ConvNet): only the convergence test needs the 28 px digits."""
    settings = {
        "dataset": "mnist", "experts": 2, "epochs": 2, "batch_size": 64, "seed": 5, "image_size": 8
    }  # fmt: skip
    settings.update(overrides)
    return BufferConfig(**settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"experts": 0}, "--experts must be at least 1"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"arch": "transformer"}, "unknown architecture 'transformer'"),
        ({"dataset": "imagenet21k"}, "unknown dataset 'imagenet21k'"),
        ({"lr": -1.0}, "--lr must be a positive"),
        ({"train_subset": 0}, "--train-subset must be at least 1"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(DdppError, match=message):
        small_config(**overrides)


@pytest.mark.slow
def test_buffer_writes_one_file_per_expert_with_all_snapshots(tiny_mnist, tmp_path):
    events = []
    summary = train_buffer(
        small_config(),
        tmp_path / "buf",
        data_root=tiny_mnist,
        download=False,
        on_event=events.append,
    )
    assert [r.index for r in summary.experts] == [0, 1]
    with seeded(0):
        layout = ParamLayout.of(models.create("convnet", 1, 10, 8))
    for record in summary.experts:
        loaded = buffer_engine.load_trajectory(record.path, layout)
        assert loaded.params.shape == (3, CONVNET_8PX_PARAMETERS)
        assert loaded.metadata["format"] == store.TRAJECTORY_FORMAT
        assert loaded.metadata["arch"] == "convnet"
        assert loaded.metadata["layout"] == layout.to_json()
        assert len(loaded.metadata["test_accuracy"]) == 2
        assert loaded.metadata["test_accuracy"] == record.test_accuracy
        assert not torch.equal(loaded.params[0], loaded.params[-1])
    # different experts start from different initialisations
    first = buffer_engine.load_trajectory(summary.experts[0].path).params
    second = buffer_engine.load_trajectory(summary.experts[1].path).params
    assert not torch.equal(first[0], second[0])
    manifest = json.loads(summary.manifest.read_text())
    assert manifest["format"] == "ddpp.buffer/1"
    assert manifest["epochs"] == 2
    assert [e["file"] for e in manifest["experts"]] == [
        "expert_0000.safetensors",
        "expert_0001.safetensors",
    ]
    assert manifest["data"]["num_classes"] == 10
    assert manifest["preprocessing"]["kind"] == "normalize"
    kinds = {type(e).__name__ for e in events}
    assert {"BufferStarted", "ExpertStarted", "EpochFinished", "ExpertFinished"} <= kinds


@pytest.mark.slow
def test_initial_snapshot_is_the_seeded_model(tiny_mnist, tmp_path):
    summary = train_buffer(small_config(experts=1), tmp_path, data_root=tiny_mnist, download=False)
    params = buffer_engine.load_trajectory(summary.experts[0].path).params
    from ddpp_cli.engine.device import derive_seed

    with seeded(derive_seed(5, "expert", 0, "init")):
        model = models.create("convnet", 1, 10, 8)
    assert torch.equal(params[0], flat_parameters(model))


@pytest.mark.slow
def test_training_learns_the_synthetic_task(tmp_path):
    data_root = make_mnist_folder(tmp_path / "digits", train_per_class=20, test_per_class=5)
    summary = train_buffer(
        small_config(experts=1, epochs=4, batch_size=32, image_size=None),  # the 28 px digits
        tmp_path / "buffer",
        data_root=data_root,
        download=False,
    )
    assert summary.experts[0].test_accuracy[-1] >= 0.5


@pytest.mark.slow
def test_resume_gives_identical_files_to_an_uninterrupted_run(tiny_mnist, tmp_path):
    config = small_config(epochs=1)
    straight = train_buffer(config, tmp_path / "a", data_root=tiny_mnist, download=False)
    partial = train_buffer(
        small_config(epochs=1, experts=1), tmp_path / "b", data_root=tiny_mnist, download=False
    )
    first_bytes = partial.experts[0].path.read_bytes()
    resumed = train_buffer(config, tmp_path / "b", data_root=tiny_mnist, download=False)
    assert resumed.experts[0].resumed and not resumed.experts[1].resumed
    assert resumed.experts[0].path.read_bytes() == first_bytes
    for a, b in zip(straight.experts, resumed.experts, strict=True):
        assert torch.equal(
            buffer_engine.load_trajectory(a.path).params,
            buffer_engine.load_trajectory(b.path).params,
        )


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(tiny_mnist, tmp_path):
    train_buffer(small_config(experts=1), tmp_path, data_root=tiny_mnist, download=False)
    with pytest.raises(DdppError, match=r"other settings \(lr: 0\.01 there vs 0\.05 now"):
        train_buffer(
            small_config(experts=1, lr=0.05), tmp_path, data_root=tiny_mnist, download=False
        )


@pytest.mark.slow
def test_corrupted_expert_file_is_reported_not_overwritten(tiny_mnist, tmp_path):
    summary = train_buffer(small_config(experts=1), tmp_path, data_root=tiny_mnist, download=False)
    summary.experts[0].path.write_bytes(b"garbage")
    with pytest.raises(DdppError, match=r"expert_0000\.safetensors"):
        train_buffer(small_config(), tmp_path, data_root=tiny_mnist, download=False)
    assert summary.experts[0].path.read_bytes() == b"garbage"


@pytest.mark.slow
def test_zca_buffer_saves_and_reuses_the_whitening(tiny_mnist, tmp_path):
    summary = train_buffer(
        small_config(experts=1, epochs=1, zca=True), tmp_path, data_root=tiny_mnist, download=False
    )
    assert summary.zca is not None and summary.zca.is_file()
    before = summary.zca.read_bytes()
    train_buffer(
        small_config(experts=2, epochs=1, zca=True), tmp_path, data_root=tiny_mnist, download=False
    )
    assert summary.zca.read_bytes() == before
    manifest = buffer_engine.read_manifest(tmp_path)
    assert manifest.preprocessing == {
        "kind": "zca",
        "zca_file": "zca.safetensors",
        "regularization": 0.1,
    }


# MTT's ConvNet (networks.py) for 1-channel 28 px images, 10 classes, width 128, depth 3,
# instancenorm, avgpooling: ``named_parameters()`` order. Each block is Sequential entries
# [Conv2d, GroupNorm, ReLU, AvgPool2d], so blocks start at 0, 4, 8; the first convolution pads 3
# (28 → 32 px), three poolings leave 4×4 maps, so the head is Linear(128·4·4, 10).
MTT_CONVNET_D3_1CH_28PX = [
    ("features.0.weight", (128, 1, 3, 3)),
    ("features.0.bias", (128,)),
    ("features.1.weight", (128,)),
    ("features.1.bias", (128,)),
    ("features.4.weight", (128, 128, 3, 3)),
    ("features.4.bias", (128,)),
    ("features.5.weight", (128,)),
    ("features.5.bias", (128,)),
    ("features.8.weight", (128, 128, 3, 3)),
    ("features.8.bias", (128,)),
    ("features.9.weight", (128,)),
    ("features.9.bias", (128,)),
    ("classifier.weight", (10, 2048)),
    ("classifier.bias", (10,)),
]


def _mtt_buffer(parameters: list, experts: int, epochs: int, seed: int) -> list:
    """A replay buffer as MTT's buffer.py saves it: experts × snapshots × parameter tensors."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [
            [torch.randn(shape, generator=generator) for _, shape in parameters]
            for _ in range(epochs + 1)
        ]
        for _ in range(experts)
    ]


def test_import_mtt_gives_identical_tensors(tiny_mnist, tmp_path):
    with seeded(0):
        layout = ParamLayout.of(models.create("convnet", 1, 10, 28))
    source = tmp_path / "mtt"
    source.mkdir()
    buffers = [
        _mtt_buffer(MTT_CONVNET_D3_1CH_28PX, 2, 3, seed=0),
        _mtt_buffer(MTT_CONVNET_D3_1CH_28PX, 1, 3, seed=1),
    ]
    for number, content in enumerate(buffers):
        torch.save(content, source / f"replay_buffer_{number}.pt")
    summary = buffer_engine.import_mtt(
        source,
        tmp_path / "out",
        dataset="mnist",
        use_zca=False,
        data_root=tiny_mnist,
        download=False,
    )
    experts = [expert for content in buffers for expert in content]
    assert len(summary.experts) == 3
    for record, expert in zip(summary.experts, experts, strict=True):
        params = buffer_engine.load_trajectory(record.path, layout).params
        assert params.shape == (4, layout.numel)
        for epoch, tensors in enumerate(expert):
            unflat = layout.unflatten(params[epoch])
            for (name, _), tensor in zip(MTT_CONVNET_D3_1CH_28PX, tensors, strict=True):
                assert torch.equal(unflat[name], tensor), name
    assert buffer_engine.read_manifest(tmp_path / "out").epochs == 3
