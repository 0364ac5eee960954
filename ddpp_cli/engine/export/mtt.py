"""The MTT-family export: ``images_best.pt``, ``labels_best.pt`` and ``lr_best.pt``.

MTT's ``distill.py`` saves ``images_best.pt`` (the (N, C, H, W) synthetic images in model-input
space, ZCA-whitened under ``--zca``) and ``labels_best.pt`` (``label_syn``: int64 class indices,
class-major) with ``torch.save``; DATM adds ``lr_best.pt`` (``syn_lr``, a 0-d float tensor) and,
with soft labels, saves float logits (N, K) as ``labels_best.pt``. A set's soft-CE label vectors
(logits) go there; MSE targets (KIP's) have no place in these files and are refused.
"""

from __future__ import annotations

from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.export.registry import Exported, ExportFormat, ExportRequest
from ddpp_cli.engine.export.spaces import in_tool_space, lr_tensor, write_torch

IMAGES_NAME = "images_best.pt"
LABELS_NAME = "labels_best.pt"
LR_NAME = "lr_best.pt"


def write(request: ExportRequest) -> Exported:
    """Write the MTT-family files of ``request.distilled`` into ``request.out_dir``."""
    distilled = request.distilled
    if distilled.targets is not None and distilled.target_loss != "soft-ce":
        raise DdppError(
            f"this set has {distilled.label_text}, which MTT's files cannot hold (its labels are "
            "class indices or DATM's logits); export it with --format ddranking."
        )
    images, notes = in_tool_space(distilled, "mtt", request.zca_path, keep_zca=True)
    labels = distilled.labels.long() if distilled.targets is None else distilled.targets.float()
    out = request.out_dir
    files = [
        write_torch(out / IMAGES_NAME, images.detach().float().cpu()),
        write_torch(out / LABELS_NAME, labels.detach().cpu()),
    ]
    if distilled.lr is None:
        notes.append("the set has no learned lr, so no lr_best.pt was written.")
    else:
        files.append(write_torch(out / LR_NAME, lr_tensor(distilled.lr)))
    if distilled.targets is not None and distilled.temperature != 1:
        notes.append(
            f"labels_best.pt holds logits meant for temperature {distilled.temperature:g}; "
            "DATM trains on them at temperature 1."
        )
    return Exported(tuple(files), tuple(notes))


FORMAT = ExportFormat(
    name="mtt",
    title="MTT / DATM",
    writes=f"{IMAGES_NAME}, {LABELS_NAME}, {LR_NAME} (torch.save)",
    soft_labels=f"{LABELS_NAME} as float logits (N, K), as DATM saves them",
    writer=write,
)
