"""Import of other tools' distilled sets: MTT's images/labels/lr_best.pt and DC's res_*.pt."""

from __future__ import annotations

import pytest
import torch

from ddpp_cli.engine import distilled, foreign
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.foreign import ImportTarget

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
    with pytest.raises(DdppError, match="unknown import kind 'kip'"):
        foreign.find_files(dc, "kip")


def test_import_set_takes_the_lr_file_else_the_given_lr_and_experiments_only_for_dc(tmp_path):
    mtt_files(tmp_path)
    assert foreign.import_set(tmp_path, TARGET).lr is None
    assert foreign.import_set(tmp_path, TARGET, lr=0.03).lr == 0.03
    torch.save(torch.tensor(0.02), tmp_path / "lr_best.pt")
    assert foreign.import_set(tmp_path, TARGET, lr=0.03).lr == pytest.approx(0.02)
    with pytest.raises(DdppError, match="--experiment"):
        foreign.import_set(tmp_path, TARGET, experiment=1)
