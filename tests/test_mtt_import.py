"""``ddpp buffer --import``: MTT's replay_buffer_*.pt folders, streamed, resumable, preprocessing.

The fixtures are MTT buffer folders named as MTT's buffer.py names them
(``<buffer_path>/<dataset>[_NO_ZCA]/ConvNet/replay_buffer_<n>.pt``), holding lists of experts,
each a list of per-epoch parameter lists with the shapes of MTT's ConvNet written out below.
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch

from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import data, store
from ddpp_cli.engine.buffer import check_import_options, import_mtt, mtt_import
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.preprocess import prepare, recorded_normalization

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)


def mtt_convnet_shapes(channels: int, classes: int, final_size: int) -> list[tuple[int, ...]]:
    """MTT's ConvNet (width 128, depth 3, instancenorm = GroupNorm(128, 128, affine)) in the
    order of ``net.parameters()``: per block conv weight, conv bias, norm weight, norm bias;
    then the classifier on the flattened 128 × final_size² features."""
    shapes: list[tuple[int, ...]] = []
    for block in range(3):
        shapes += [(128, channels if block == 0 else 128, 3, 3), (128,), (128,), (128,)]
    return [*shapes, (classes, 128 * final_size * final_size), (classes,)]


MNIST_SHAPES = mtt_convnet_shapes(1, 10, 4)  # 1×28×28 (first conv pads 3: 28 → 32 → 4)


def test_the_written_out_shapes_are_mtts_convnet():
    assert sum(torch.Size(s).numel() for s in MNIST_SHAPES) == 317_706  # docs/data.md#networks
    assert sum(torch.Size(s).numel() for s in mtt_convnet_shapes(3, 10, 4)) == 320_010


def mtt_experts(shapes, experts: int, epochs: int, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [
        [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(epochs + 1)]
        for _ in range(experts)
    ]


def mtt_folder(root: Path, name: str, counts: list[int], shapes=MNIST_SHAPES, epochs=2) -> Path:
    """``root/name/ConvNet`` with one replay_buffer_<n>.pt per entry of ``counts``."""
    folder = root / name / "ConvNet"
    folder.mkdir(parents=True)
    for number, count in enumerate(counts):
        content = mtt_experts(shapes, count, epochs, seed=number)
        torch.save(content, folder / f"replay_buffer_{number}.pt")
    return folder


def run_import(source: Path, out: Path, tiny_mnist: Path, **options) -> buffer_engine.BufferSummary:
    settings = {"dataset": "mnist", "data_root": tiny_mnist, "download": False}
    settings.setdefault("use_zca", False)
    return import_mtt(source, out, **{**settings, **options})


def test_import_gives_identical_tensors_in_file_order(tiny_mnist, tmp_path):
    source = mtt_folder(tmp_path, "mnist", [2, 1])
    summary = run_import(source, tmp_path / "out", tiny_mnist)
    layout = buffer_engine.read_manifest(tmp_path / "out").layout
    experts = [e for n in range(2) for e in torch.load(source / f"replay_buffer_{n}.pt")]
    assert [r.index for r in summary.experts] == [0, 1, 2]
    for record, expert in zip(summary.experts, experts, strict=True):
        params = buffer_engine.load_trajectory(record.path, layout).params
        assert params.shape == (3, 317_706)
        for epoch, tensors in enumerate(expert):
            unflat = layout.unflatten(params[epoch])
            for name, tensor in zip(layout.names, tensors, strict=True):
                assert torch.equal(unflat[name], tensor)
    manifest = buffer_engine.read_manifest(tmp_path / "out")
    assert manifest.epochs == 2 and len(manifest.experts) == 3
    assert manifest.config["zca"] is False


@pytest.fixture
def young_gc():
    """gc.collect() over the objects made during the test only: what existed before (the suite's
    modules, torch) is frozen out of the collections, which then take milliseconds, not tenths
    of a second each; cyclic garbage made by the test is collected as before."""
    gc.freeze()
    yield
    gc.unfreeze()


class LoadSpy:
    """Wraps torch.load: records each call and keeps weak references to the tensors it returned,
    so a test can ask how many files' experts are still alive at any moment (with ``young_gc``:
    each ask collects garbage)."""

    def __init__(self, monkeypatch):
        self.real = torch.load
        self.calls: list[tuple[str, object]] = []
        self.alive: list[list[weakref.ref]] = []
        self.peak_files = 0
        monkeypatch.setattr(mtt_import.torch, "load", self)
        real_write = mtt_import.store.write

        def write(*args, **kwargs):
            self.check()
            return real_write(*args, **kwargs)

        monkeypatch.setattr(mtt_import.store, "write", write)

    def files_alive(self) -> int:
        gc.collect()
        return sum(1 for refs in self.alive if any(ref() is not None for ref in refs))

    def check(self) -> None:
        self.peak_files = max(self.peak_files, self.files_alive())

    def __call__(self, path, *args, **kwargs):
        self.check()
        self.calls.append((Path(path).name, kwargs.get("weights_only")))
        content = self.real(path, *args, **kwargs)
        self.alive.append([weakref.ref(t) for expert in content for e in expert for t in e])
        return content


@pytest.mark.slow
def test_import_streams_one_file_at_a_time_and_takes_the_first_n(
    tiny_mnist, tmp_path, monkeypatch, young_gc
):
    source = mtt_folder(tmp_path, "mnist", [2, 1, 2, 2])
    spy = LoadSpy(monkeypatch)
    summary = run_import(source, tmp_path / "out", tiny_mnist, experts=4)
    assert spy.calls == [(f"replay_buffer_{n}.pt", True) for n in range(3)]  # not file 3
    assert spy.peak_files == 1  # never two files' experts at once
    assert [r.index for r in summary.experts] == [0, 1, 2, 3]
    assert sorted(buffer_engine.expert_files(tmp_path / "out")) == [0, 1, 2, 3]
    assert spy.files_alive() == 0


class Killed(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch it)."""


@pytest.mark.slow
def test_rerun_after_a_kill_continues_and_equals_an_uninterrupted_import(
    tiny_mnist, tmp_path, monkeypatch, young_gc
):
    source = mtt_folder(tmp_path, "mnist", [1, 2, 1])
    whole = tmp_path / "whole"
    run_import(source, whole, tiny_mnist)

    out = tmp_path / "out"
    real_write = mtt_import.store.write
    writes = []

    def dies_at_the_third_expert(path, *args, **kwargs):
        if len(writes) == 2:
            raise Killed
        writes.append(path)
        return real_write(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(mtt_import.store, "write", dies_at_the_third_expert)
        with pytest.raises(Killed):
            run_import(source, out, tiny_mnist)
    assert sorted(buffer_engine.expert_files(out)) == [0, 1]
    spy = LoadSpy(monkeypatch)
    summary = run_import(source, out, tiny_mnist)
    assert [name for name, _ in spy.calls] == ["replay_buffer_1.pt", "replay_buffer_2.pt"]
    assert [r.resumed for r in summary.experts] == [True, True, False, False]
    files, expected = buffer_engine.expert_files(out), buffer_engine.expert_files(whole)
    assert sorted(files) == sorted(expected) == [0, 1, 2, 3]
    for index, path in expected.items():  # (safetensors orders header keys at random)
        resumed, uninterrupted = (
            store.read(p, store.TRAJECTORY_FORMAT) for p in (files[index], path)
        )
        assert torch.equal(resumed.tensors["params"], uninterrupted.tensors["params"])
        assert resumed.metadata == uninterrupted.metadata
    manifest = json.loads((out / "buffer.json").read_text())
    assert manifest == json.loads((whole / "buffer.json").read_text())
    assert not list(out.glob(".*.tmp"))


def test_rerun_with_other_settings_or_a_foreign_folder_is_refused(tiny_mnist, tmp_path):
    source = mtt_folder(tmp_path, "mnist", [1])
    run_import(source, tmp_path / "out", tiny_mnist)
    with pytest.raises(DdppError, match=r"holds another buffer.*arch"):
        run_import(source, tmp_path / "out", tiny_mnist, arch="convnet-bn")
    with pytest.raises(DdppError, match="more experts than"):
        run_import(source, tmp_path / "out2", tiny_mnist, experts=2)


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("epochs", "--epochs"),
        ("lr", "--lr"),
        ("batch_size", "--batch-size"),
        ("dsa", "--dsa/--no-dsa"),
        ("train_subset", "--train-subset"),
        ("test_subset", "--test-subset"),
        ("parallel", "--parallel"),
        ("seed", "--seed"),
    ],
)
def test_options_that_cannot_apply_to_an_import_are_refused(name, flag):
    with pytest.raises(DdppError) as caught:
        check_import_options({"experts": 5, "device": "cpu", name: False})
    message = str(caught.value)
    assert message == (
        f"{flag} does not apply to --import: the experts are already trained; drop it."
    )
    assert "\n" not in message


def test_options_that_apply_or_were_not_given_pass():
    check_import_options({"experts": 3, "zca": True, "device": "cpu", "epochs": None, "lr": None})


def test_import_validates_the_device_and_the_expert_count(tiny_mnist, tmp_path):
    source = mtt_folder(tmp_path, "mnist", [1])
    with pytest.raises(DdppError, match="unknown device 'tpu'"):
        run_import(source, tmp_path / "out", tiny_mnist, device="tpu")
    with pytest.raises(DdppError, match="--experts must be at least 1"):
        run_import(source, tmp_path / "out", tiny_mnist, experts=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("buffers/cifar10/ConvNet", ("cifar10", True)),
        ("buffers/CIFAR100/ConvNet", ("cifar100", True)),
        ("buffers/cifar10_NO_ZCA/ConvNet", ("cifar10", False)),
        ("buffers/CIFAR100_NO_ZCA/ConvNetD4", ("cifar100", False)),
        ("buffers/Tiny/ConvNet", ("tinyimagenet", None)),  # MTT marks ZCA only for CIFAR
        ("buffers/cifar10/my-experts", (None, None)),  # not an MTT model folder
    ],
)
def test_mtt_folder_names_tell_dataset_and_zca(tmp_path, path, expected):
    assert buffer_engine.mtt_folder_settings(tmp_path / path) == expected


def test_zca_must_be_given_when_the_folder_does_not_tell_and_must_agree(tmp_path):
    with pytest.raises(DdppError, match="pass --zca or --no-zca") as caught:
        buffer_engine.resolve_import_zca(tmp_path / "experts", "cifar10", None)
    assert "\n" not in str(caught.value)
    assert buffer_engine.resolve_import_zca(tmp_path / "experts", "cifar10", True) is True
    with pytest.raises(DdppError, match="without ZCA, but --zca was given"):
        buffer_engine.resolve_import_zca(tmp_path / "cifar10_NO_ZCA" / "ConvNet", "cifar10", True)
    with pytest.raises(DdppError, match="cifar100 experts, not cifar10; pass --dataset cifar100"):
        buffer_engine.resolve_import_zca(tmp_path / "cifar100" / "ConvNet", "cifar10", None)


@pytest.fixture
def tiny_cifar(monkeypatch):
    """cifar10/cifar100 as 3×8×8 images, 2 train and 1 test image per class (never downloads)."""
    real_load = data.load

    def load(name, root=None, split="train", **kwargs):
        key = data.info(name).name
        if key not in ("cifar10", "cifar100"):
            return real_load(name, root, split, **kwargs)
        classes = data.info(key).num_classes
        per_class = 2 if split == "train" else 1
        generator = torch.Generator().manual_seed(classes + per_class)
        labels = torch.arange(classes).repeat_interleave(per_class)
        images = torch.rand(len(labels), 3, 8, 8, generator=generator)
        return data.ImageSplit(images, labels, tuple(f"c{k}" for k in range(classes)))

    monkeypatch.setattr(data, "load", load)
    return load


def cifar_import(tmp_path: Path, folder_name: str, classes: int, **options):
    source = mtt_folder(tmp_path, folder_name, [1, 1], shapes=mtt_convnet_shapes(3, classes, 1))
    dataset = folder_name.split("_")[0].lower()
    out = tmp_path / f"out-{folder_name}"
    import_mtt(source, out, dataset=dataset, download=False, **options)
    return out, buffer_engine.read_manifest(out)


def test_zca_is_inferred_from_mtts_folder_names(tiny_cifar, tmp_path):
    out, manifest = cifar_import(tmp_path, "cifar10", 10)
    assert manifest.config["zca"] is True
    assert manifest.preprocessing_kind == "zca"
    assert (out / "zca.safetensors").is_file()
    out, manifest = cifar_import(tmp_path, "cifar10_NO_ZCA", 10)
    assert manifest.config["zca"] is False and not (out / "zca.safetensors").exists()
    assert manifest.preprocessing == {
        "kind": "normalize",
        "mean": list(CIFAR10_MEAN),
        "std": list(CIFAR10_STD),
    }


def test_cifar100_without_zca_keeps_mtts_cifar10_normalization(tiny_cifar, tmp_path):
    out, manifest = cifar_import(tmp_path, "cifar100_NO_ZCA", 100)
    recorded = manifest.preprocessing
    assert (recorded["mean"], recorded["std"]) == (list(CIFAR10_MEAN), list(CIFAR10_STD))
    expert = store.read_metadata(buffer_engine.expert_files(out)[0])
    assert expert["preprocessing"] == recorded

    # What a later stage prepares for this buffer: the recorded normalisation wins.
    default = prepare("cifar100", use_zca=False, download=False)
    assert default.preprocessing.normalization.mean == CIFAR100_MEAN
    prepared = prepare(
        "cifar100", use_zca=False, download=False, normalization=recorded_normalization(recorded)
    )
    assert prepared.preprocessing.normalization.mean == CIFAR10_MEAN
    assert prepared.preprocessing.normalization.std == CIFAR10_STD
    raw = tiny_cifar("cifar100", None, "train")
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(prepared.train.images, (raw.images - mean) / std)
    assert recorded_normalization({"kind": "zca", "zca_file": "zca.safetensors"}) is None


def test_import_refuses_wrong_structures_and_pickles(tiny_mnist, tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    cases = {
        "dict": {"not": "a list"},
        "shallow": [[torch.zeros(3)]],
        "empty": [],
        "text": [[["text"]]],
        "pickle": [Exploit()],
    }
    for name, content in cases.items():
        source = tmp_path / name / "ConvNet"
        source.mkdir(parents=True)
        torch.save(content, source / "replay_buffer_0.pt")
        expected = "weights-only" if name == "pickle" else "not an MTT replay buffer"
        with pytest.raises(DdppError, match=expected):
            run_import(source, tmp_path / f"out-{name}", tiny_mnist)


def test_import_refuses_wrong_architecture_and_mixed_epochs(tiny_mnist, tmp_path):
    source = mtt_folder(tmp_path, "mnist", [1])
    with pytest.raises(DdppError, match="do not match the architecture"):
        run_import(source, tmp_path / "out", tiny_mnist, arch="convnet-d4")
    torch.save(mtt_experts(MNIST_SHAPES, 1, 3, 9), source / "replay_buffer_1.pt")
    with pytest.raises(DdppError, match="has 3 epochs but the experts before it have 2"):
        run_import(source, tmp_path / "out2", tiny_mnist)
