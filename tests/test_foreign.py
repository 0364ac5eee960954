"""Import of other tools' distilled sets: MTT's images/labels/lr_best.pt, DC's and CAFE's
res_*.pt, and the mean/std each tool normalised with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_mtt_import import tiny_cifar  # noqa: F401 (fixture)

from ddpp_cli.engine import data, distilled, foreign, foreign_tools
from ddpp_cli.engine.buffer import mtt_import
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import load_test_split
from ddpp_cli.engine.foreign import ImportTarget
from ddpp_cli.engine.model_selection import label_of_settings
from ddpp_cli.engine.preprocess import Normalization

TARGET = ImportTarget(
    dataset="fashionmnist",
    class_names=tuple(f"c{k}" for k in range(3)),
    image_shape=(1, 28, 28),
    preprocessing={"kind": "normalize", "mean": [0.2861], "std": [0.353]},
)


def mtt_files(folder, ipc=2, lr=None):
    images = torch.randn(3 * ipc, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(3).repeat_interleave(ipc)
    torch.save(images, folder / "images_best.pt")
    torch.save(labels, folder / "labels_best.pt")
    if lr is not None:
        torch.save(lr, folder / "lr_best.pt")
    return images, labels


def test_mtt_set_imports_with_its_learned_lr_and_origin(tmp_path):
    images, labels = mtt_files(tmp_path, lr=torch.tensor(0.0123, requires_grad=True))
    found = foreign.import_mtt(
        tmp_path / "images_best.pt", tmp_path / "labels_best.pt", TARGET,
        lr_path=tmp_path / "lr_best.pt",
    )  # fmt: skip
    assert torch.equal(found.images, images) and torch.equal(found.labels, labels)
    assert found.lr == pytest.approx(0.0123)
    assert found.source == "import-mtt" and found.ipc == 2
    record = found.settings["imported"]
    assert record["method"] == "mtt" and record["zca"] is False
    assert record["images"]["sha256"] == distilled.file_sha256(tmp_path / "images_best.pt")
    # It is an ordinary ddpp set: it saves and loads.
    again = distilled.load(distilled.save(tmp_path / "set.safetensors", found))
    assert torch.equal(again.images, images) and again.settings == found.settings


def test_mtt_set_with_given_lr_or_none(tmp_path):
    mtt_files(tmp_path)
    paths = (tmp_path / "images_best.pt", tmp_path / "labels_best.pt")
    assert foreign.import_mtt(*paths, TARGET).lr is None
    assert foreign.import_mtt(*paths, TARGET, lr=0.01).lr == 0.01
    with pytest.raises(DdppError, match="positive"):
        foreign.import_mtt(*paths, TARGET, lr=-1.0)
    torch.save(0.02, tmp_path / "lr.pt")
    with pytest.raises(DdppError, match="not both"):
        foreign.import_mtt(*paths, TARGET, lr=0.01, lr_path=tmp_path / "lr.pt")
    assert foreign.import_mtt(*paths, TARGET, lr_path=tmp_path / "lr.pt").lr == 0.02


def test_dc_result_file_picks_the_experiment_and_sorts_class_major(tmp_path):
    sets = []
    for seed in range(2):
        images = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        labels = torch.tensor([2, 0, 1, 0, 2, 1])
        sets.append([images, labels])
    torch.save({"data": sets, "accs_all_exps": {"ConvNet": [0.5, 0.6]}}, tmp_path / "res.pt")
    found = foreign.import_dc(tmp_path / "res.pt", TARGET, experiment=1, method="dsa")
    assert found.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(found.images, sets[1][0][torch.tensor([1, 3, 2, 5, 0, 4])])
    assert found.lr is None and found.source == "import-dc"
    assert found.settings["imported"]["experiment"] == 1
    assert found.settings["imported"]["method"] == "dsa"
    assert torch.equal(foreign.import_dc(tmp_path / "res.pt", TARGET).images[0], sets[0][0][1])
    with pytest.raises(DdppError, match="holds 2 experiment"):
        foreign.import_dc(tmp_path / "res.pt", TARGET, experiment=2)


def test_a_dc_result_written_as_dc_main_writes_it_imports(tmp_path):
    """DC/DSA/DM's main.py: ``torch.save({'data': data_save, 'accs_all_exps': accs_all_exps})``
    with each accuracy a numpy float64 (its epoch() divides numpy sums)."""
    numpy = pytest.importorskip("numpy")
    data_save = []
    for seed in range(2):
        images = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        data_save.append([images.detach().cpu(), torch.tensor([2, 0, 1, 0, 2, 1])])
    accs_all_exps = {"ConvNet": [numpy.sum(numpy.equal([1, 0], [1, 1])) / 2.0, numpy.float64(0.6)]}
    assert isinstance(accs_all_exps["ConvNet"][0], numpy.float64)
    path = tmp_path / "res_DC_FashionMNIST_ConvNet_1ipc.pt"
    torch.save({"data": data_save, "accs_all_exps": accs_all_exps}, path)
    found = foreign.import_dc(path, TARGET, experiment=1)
    assert torch.equal(found.images[0], data_save[1][0][1])


def test_numpy_arrays_and_other_globals_stay_refused(tmp_path):
    numpy = pytest.importorskip("numpy")
    torch.save({"data": [], "accs": numpy.arange(3)}, tmp_path / "res_array.pt")
    with pytest.raises(DdppError, match="weights-only"):
        foreign.load_weights_only(tmp_path / "res_array.pt")


class Payload:
    """A pickle that would create a file when loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["images_best.pt", "res.pt"])
def test_an_arbitrary_pickle_is_refused_and_never_executed(tmp_path, name):
    marker = tmp_path / "pwned"
    mtt_files(tmp_path)
    torch.save({"data": [[Payload(marker), torch.zeros(3)]]}, tmp_path / "res.pt")
    if name == "images_best.pt":
        torch.save(Payload(marker), tmp_path / name)
    with pytest.raises(DdppError, match="never arbitrary pickles"):
        if name == "res.pt":
            foreign.import_dc(tmp_path / name, TARGET)
        else:
            foreign.import_mtt(tmp_path / name, tmp_path / "labels_best.pt", TARGET)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.zeros(6, 3, 32, 32), torch.arange(3).repeat(2), r"images are \(3, 32, 32\)"),
        (torch.zeros(6, 28, 28), torch.arange(3).repeat(2), r"\(N, C, H, W\)"),
        (torch.zeros(6, 1, 28, 28), torch.arange(5), "6 images but 5 labels"),
        (torch.zeros(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 0, 1]), "classes 0…2"),
        (torch.zeros(6, 1, 28, 28), torch.tensor([0, 1, 0, 1, 0, 1]), "no image of class 2"),
        (torch.zeros(3, 1, 28, 28), torch.tensor([0.0, 1.5, 2.0]), "soft labels"),
        (torch.full((3, 1, 28, 28), float("nan")), torch.arange(3), "NaN"),
        (torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.arange(3), "floating point"),
    ],
)
def test_sets_that_do_not_fit_the_dataset_are_refused(tmp_path, images, labels, message):
    torch.save(images, tmp_path / "i.pt")
    torch.save(labels, tmp_path / "l.pt")
    with pytest.raises(DdppError, match=message):
        foreign.import_mtt(tmp_path / "i.pt", tmp_path / "l.pt", TARGET)


def test_files_of_the_wrong_structure_are_refused(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(DdppError, match="not a DC/DSA/DM result file"):
        foreign.import_dc(tmp_path / "list.pt", TARGET)
    torch.save({"data": [[torch.zeros(3, 1, 28, 28)]]}, tmp_path / "half.pt")
    with pytest.raises(DdppError, match="pair"):
        foreign.import_dc(tmp_path / "half.pt", TARGET)
    with pytest.raises(DdppError, match="does not exist"):
        foreign.import_dc(tmp_path / "missing.pt", TARGET)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DdppError, match="weights-only"):
        foreign.import_dc(tmp_path / "junk.pt", TARGET)


def test_find_files_infers_the_kind_from_the_names(tmp_path):
    mtt_files(tmp_path, lr=torch.tensor(0.01))
    found = foreign.find_files(tmp_path)  # a folder holding images_best.pt
    assert found == foreign.ForeignFiles(
        "mtt", tmp_path / "images_best.pt", tmp_path / "labels_best.pt", tmp_path / "lr_best.pt"
    )
    assert foreign.find_files(tmp_path / "images_best.pt") == found
    torch.save(torch.zeros(6, 1, 28, 28), tmp_path / "images_1000.pt")
    with pytest.raises(DdppError, match=r"labels_1000\.pt is missing"):
        foreign.find_files(tmp_path / "images_1000.pt")
    dc = tmp_path / "dc"
    dc.mkdir()
    torch.save({"data": []}, dc / "res_DSA_FashionMNIST_ConvNet_1ipc.pt")
    assert foreign.find_files(dc).kind == "dc"
    assert foreign.find_files(tmp_path / "images_best.pt", "dc").kind == "dc"  # --import-kind
    with pytest.raises(DdppError, match=r"images_<tag>\.pt"):
        foreign.find_files(dc / "res_DSA_FashionMNIST_ConvNet_1ipc.pt", "mtt")
    torch.save({"data": []}, dc / "res_DM.pt")
    with pytest.raises(DdppError, match="several res_"):
        foreign.find_files(dc)
    with pytest.raises(DdppError, match="unknown import kind 'krr'"):
        foreign.find_files(dc, "krr")


def test_import_set_takes_the_lr_file_else_the_given_lr_and_experiments_only_for_dc(tmp_path):
    mtt_files(tmp_path)
    assert foreign.import_set(tmp_path, TARGET).lr is None
    assert foreign.import_set(tmp_path, TARGET, lr=0.03).lr == 0.03
    torch.save(torch.tensor(0.02), tmp_path / "lr_best.pt")
    assert foreign.import_set(tmp_path, TARGET, lr=0.03).lr == pytest.approx(0.02)
    with pytest.raises(DdppError, match="--experiment"):
        foreign.import_set(tmp_path, TARGET, experiment=1)


# --------------------------------------------- the mean/std each tool normalised its images with


def test_each_tools_normalization_comes_from_its_own_get_dataset():
    cifar10 = data.info("cifar10")
    for tool in ("mtt", "cafe"):  # their utils.get_dataset: CIFAR-100 with CIFAR-10's mean/std
        assert foreign_tools.normalization_source(tool, "CIFAR100") == "cifar10"
        assert foreign_tools.tool_normalization(tool, "cifar100") == Normalization(
            cifar10.mean, cifar10.std
        )
        assert foreign_tools.tool_normalization(tool, "cifar10") is None
    # DC's utils.get_dataset uses CIFAR-100's own mean/std, which are ddpp's table values.
    assert foreign_tools.normalization_source("dc", "cifar100") == "cifar100"
    assert foreign_tools.tool_normalization("dc", "cifar100") is None
    # One table: what 'ddpp buffer --import' records for MTT's experts is the same.
    assert mtt_import.mtt_normalization("cifar100") == Normalization(cifar10.mean, cifar10.std)
    assert foreign_tools.list_tools() == ["mtt", "dc", "cafe", "kip"]
    with pytest.raises(
        DdppError, match="unknown import kind 'krr'; choose one of: mtt, dc, cafe, kip"
    ):
        foreign_tools.get_tool("krr")


def save_as_mtt(folder, classes, ipc=1, shape=(3, 8, 8)):
    """What MTT's distill.py saves: ``image_syn.cpu()`` (a leaf that requires grad) and its
    int64 ``label_syn``, as images_best.pt and labels_best.pt; no lr_best.pt."""
    folder.mkdir()
    generator = torch.Generator().manual_seed(classes)
    image_syn = torch.randn(classes * ipc, *shape, generator=generator).requires_grad_(True)
    label_syn = torch.tensor(
        np.array([np.ones(ipc) * i for i in range(classes)]), dtype=torch.long, requires_grad=False
    ).view(-1)
    torch.save(image_syn.cpu(), folder / "images_best.pt")
    torch.save(label_syn.cpu(), folder / "labels_best.pt")
    return folder


def save_as_res(path, classes, ipc=1, shape=(3, 8, 8), label_dtype=torch.long):
    """What DC's main.py (int64 labels) and CAFE's distill.py (``dtype=torch.int`` labels) save:
    ``{'data': [[images, labels]], 'accs_all_exps': {...}}``, numpy accuracies included."""
    images = torch.randn(classes * ipc, *shape, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor(
        np.array([np.ones(ipc) * i for i in range(classes)]), dtype=label_dtype
    ).view(-1)
    accs = {"ConvNet": [np.float64(0.25)]}
    torch.save({"data": [[images, labels]], "accs_all_exps": accs}, path)
    return path


@pytest.mark.parametrize(
    ("layout", "kind", "normalized_as"),
    [("mtt", None, "cifar10"), ("dc", None, "cifar100"), ("cafe", "cafe", "cifar10")],
)
def test_a_cifar100_import_normalizes_train_and_test_as_its_tool_did(
    tiny_cifar,  # noqa: F811 (the fixture imported above)
    tmp_path,
    layout,
    kind,
    normalized_as,
):
    if layout == "mtt":
        path = save_as_mtt(tmp_path / "logged_files", 100)
    else:
        dtype = torch.int if layout == "cafe" else torch.long
        path = save_as_res(tmp_path / "res_DC_CIFAR100_ConvNet_1ipc.pt", 100, label_dtype=dtype)
    found = foreign.import_for_dataset(path, "cifar100", kind=kind, zca=False, download=False)
    expected = data.info(normalized_as)
    assert found.preprocessing == {
        "kind": "normalize", "mean": list(expected.mean), "std": list(expected.std)
    }  # fmt: skip
    assert found.settings["imported"]["normalized_as"] == normalized_as
    assert found.source == f"import-{kind or layout}"
    # The test split is normalised as the set records, also after a save and a load.
    saved = distilled.load(distilled.save(tmp_path / "set.safetensors", found))
    test_images, _, _ = load_test_split(saved, download=False)
    raw = tiny_cifar("cifar100", None, "test")
    mean = torch.tensor(expected.mean).view(1, 3, 1, 1)
    std = torch.tensor(expected.std).view(1, 3, 1, 1)
    torch.testing.assert_close(test_images, (raw.images - mean) / std)


def test_default_lr_note_only_for_a_tool_that_learns_an_lr(tmp_path):
    mtt_files(tmp_path)
    found = foreign.import_set(tmp_path, TARGET)
    assert foreign.default_lr_note(found, 0.01, "default") == (
        "lr 0.01, the default: MTT's distill.py saves no learned lr; pass --lr with the "
        "Synthetic_LR of its log."
    )
    assert foreign.default_lr_note(found, 0.02, "--lr") is None
    torch.save({"data": [[torch.zeros(3, 1, 28, 28), torch.arange(3)]]}, tmp_path / "res.pt")
    assert foreign.default_lr_note(foreign.import_set(tmp_path / "res.pt", TARGET), 0.01,
                                   "default") is None  # fmt: skip


def test_an_import_names_how_its_tool_chose_the_set(tmp_path):
    """MTT's images_best.pt is the iteration with the best mean test accuracy (distill.py's
    save_this_it), images_<n>.pt iteration n unselected; DC's and CAFE's res_*.pt the final
    iteration ("only record the final results"); a set imported before imports recorded it says
    its selection is unknown; ddpp's own sets keep their rule."""
    mtt_files(tmp_path)
    best = foreign.import_mtt(tmp_path / "images_best.pt", tmp_path / "labels_best.pt", TARGET)
    assert label_of_settings(best.settings) == "test-selected (MTT's convention)"
    for name in ("images", "labels"):
        (tmp_path / f"{name}_500.pt").write_bytes((tmp_path / f"{name}_best.pt").read_bytes())
    at_500 = foreign.import_set(tmp_path / "images_500.pt", TARGET)
    assert label_of_settings(at_500.settings) == (
        "iteration 500 as MTT's distill.py saved it (not selected)"
    )
    sets = [[torch.randn(6, 1, 28, 28), torch.tensor([2, 0, 1, 0, 2, 1])]]
    torch.save({"data": sets}, tmp_path / "res_DM.pt")
    expected = {
        "dc": "the final iteration as DC/DSA/DM saved it (not selected)",
        "cafe": "the final iteration as CAFE saved it (not selected)",
    }
    for kind, label in expected.items():
        found = foreign.import_set(tmp_path / "res_DM.pt", TARGET, kind=kind)
        assert label_of_settings(found.settings) == label
        saved = distilled.load(distilled.save(tmp_path / f"{kind}.safetensors", found))
        assert label_of_settings(saved.settings) == label
    older = {"imported": {"kind": "mtt", "method": "mtt"}}
    assert label_of_settings(older) == "as its tool saved it (selection unknown)"
    assert label_of_settings({"selection": "best-test"}) == "test-selected (MTT's convention)"
    assert label_of_settings({}) == "validation split, tested once"
