"""The DatasetCondensation export: one ``res_<method>_<dataset>_<model>_<ipc>ipc.pt``.

DC/DSA's ``main.py`` (and DM's ``main_DM.py``) save ``{'data': [[image_syn, label_syn], ...],
'accs_all_exps': {model: [accuracies]}}`` with ``torch.save``, one ``[images, labels]`` pair per
experiment: images normalised with the dataset's own mean/std (DC never whitens), labels int64
class indices, class-major. The export writes one experiment and no accuracies (an empty list
under the model's name). The format has no place for label vectors or a learned lr: a set's
hard labels are written, with a note saying what was left out.
"""

from __future__ import annotations

from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.export.registry import Exported, ExportFormat, ExportRequest
from ddpp_cli.engine.export.spaces import in_tool_space, write_torch

# ddpp's dataset and architecture names as DC's utils.get_dataset / get_network spell them.
DC_DATASETS = {
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "svhn": "SVHN",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "tinyimagenet": "TinyImageNet",
}
DC_MODELS = {
    "convnet": "ConvNet",
    "convnet-bn": "ConvNetBN",
    **{f"convnet-d{depth}": f"ConvNetD{depth}" for depth in range(1, 6)},
}
DC_METHODS = {"dc": "DC", "dsa": "DSA", "dm": "DM"}


def file_name(distilled: DistilledSet) -> str:
    """``res_<method>_<dataset>_<model>_<ipc>ipc.pt`` as DC's ``main.py`` names it: DC, DSA or DM
    for a set those methods made (ddpp's ``--method`` or an import's record), else "DDPP"; the
    dataset and model as DC spells them (ddpp's names where DC has none)."""
    settings = distilled.settings or {}
    made_by = settings.get("method") or (settings.get("imported") or {}).get("method")
    method = DC_METHODS.get(str(made_by or distilled.source), "DDPP")
    dataset = DC_DATASETS.get(distilled.dataset, distilled.dataset)
    return f"res_{method}_{dataset}_{dc_model(distilled.arch)}_{distilled.ipc}ipc.pt"


def dc_model(arch: str | None) -> str:
    """The architecture as DC's ``get_network`` names it (ddpp's name where DC has none)."""
    return DC_MODELS.get(arch or "convnet", arch or "ConvNet")


def write(request: ExportRequest) -> Exported:
    """Write ``request.distilled`` as a one-experiment ``res_*.pt`` into ``request.out_dir``."""
    distilled = request.distilled
    images, notes = in_tool_space(distilled, "dc", request.zca_path, keep_zca=False)
    if distilled.targets is not None:
        notes.append(
            f"DC's res_*.pt holds class indices only: the set's {distilled.label_text} were "
            "left out (--format mtt or ddranking keeps them)."
        )
    if distilled.lr is not None:
        notes.append(f"DC's res_*.pt has no learned lr: {distilled.lr:g} was left out.")
    name = file_name(distilled)
    content = {
        "data": [[images.detach().float().cpu(), distilled.labels.long().cpu()]],
        "accs_all_exps": {dc_model(distilled.arch): []},
    }
    path = write_torch(request.out_dir / name, content)
    return Exported((path,), tuple(notes))


FORMAT = ExportFormat(
    name="dc",
    title="DC / DSA / DM",
    writes="res_<method>_<dataset>_<model>_<ipc>ipc.pt (torch.save of {'data', 'accs_all_exps'})",
    soft_labels="",
    writer=write,
)
