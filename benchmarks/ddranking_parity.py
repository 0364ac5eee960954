"""Parity of ddpp's scores with DD-Ranking's own metric code: the same accuracies fed to both.

DD-Ranking is not a dependency of ddpp. Run this in a separate environment that has both:

    python3 -m venv /tmp/ddr-venv
    echo /path/to/ddpp/.venv/lib/python3.11/site-packages > \\
        /tmp/ddr-venv/lib/python3.11/site-packages/ddpp-venv.pth   # torch, numpy from ddpp's venv
    /tmp/ddr-venv/bin/pip install --no-deps ddranking timm && /tmp/ddr-venv/bin/pip install \\
        kornia pandas tqdm pyyaml
    PYTHONPATH=. /tmp/ddr-venv/bin/python benchmarks/ddranking_parity.py [--export DIR]

DD-Ranking's ``compute_metrics`` trains its networks inside the loop that computes the scores;
here its training helpers are replaced by ones that return given accuracies (percent, as its
``validate`` returns), so that its own loop, formulas and averaging compute the scores. The same
accuracies (as fractions) go to ``ddpp_cli.engine.scores.compute_scores`` with the ``ddranking``
convention, and, for one run, with the ``ddpp`` convention against DD-Ranking fed fractions.
Then it loads a ``ddpp export --format ddranking`` folder (``--export DIR``, else a generated
CIFAR-10-shaped set exported here) as DD-Ranking's demos do (``Config.from_file``,
``torch.load``). Prints each difference; exits 1 above 1e-9 (relative for values above 1).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine.scores import Accuracies, compute_scores, get_convention

TOLERANCE = 1e-9
# Five runs' accuracies (fractions): the set with its labels, hard labels, without DSA; random
# images with and without DSA; the whole set (one figure, as DD-Ranking's cache holds).
RUNS = {
    "set_labels": [0.712, 0.695, 0.731, 0.704, 0.688],
    "set_hard": [0.603, 0.611, 0.598, 0.620, 0.607],
    "set_no_dsa": [0.652, 0.640, 0.671, 0.660, 0.649],
    "random": [0.514, 0.498, 0.531, 0.507, 0.522],
    "random_no_dsa": [0.451, 0.437, 0.466, 0.440, 0.459],
}
FULL = 0.913


def _quiet(call):
    with contextlib.redirect_stdout(io.StringIO()):
        return call()


def _bare(cls, runs: int, folder: Path, **attributes):
    """An instance of DD-Ranking's metric class without its __init__ (which loads data)."""
    metric = object.__new__(cls)
    metric.__dict__.update(
        use_dist=False, rank=0, world_size=1, num_eval=runs, ipc=1, num_classes=10,
        dataset="PARITY", model_name="ConvNet-3", eval_full_data=False, device="cpu",
        save_path=str(folder / f"{cls.__name__}.csv"), **attributes,
    )  # fmt: skip
    metric._get_random_data_helper = lambda eval_iter: (None, torch.zeros(1), None)
    return metric


def _feeder(values):
    """A helper that returns the next accuracy of ``values`` each call, lr 0.01."""
    stream = iter(values)
    return lambda *args, **kwargs: (next(stream), 0.01)


def ddranking_hard(scale: float, runs: int, folder: Path) -> dict[str, float]:
    from ddranking.metrics import hard_label

    hard_label.REAL_DATA_ACC_CACHE["PARITY-ConvNet-3"] = scale * FULL
    # Its loop appends each run's LRS twice (hard_label.py l. 384 and 388), so its own
    # save_results (a DataFrame of columns of unequal length) raises; skip the CSV.
    hard_label.save_results = lambda results, path: None
    metric = _bare(hard_label.LabelRobustScoreHard, runs, folder)
    order = [scale * v for r in range(runs) for v in (RUNS["set_hard"][r], RUNS["random"][r])]
    metric._compute_hard_label_metrics_helper = _feeder(order)
    return _label_scores(metric)


def _label_scores(metric: Any) -> dict[str, float]:
    """HLR, IOR and LRS (their means over the runs) as a DD-Ranking label metric computes them."""
    found = _quiet(lambda: metric.compute_metrics(image_tensor=torch.zeros(1), syn_lr=0.01))
    return {"hlr": found["hard_label_recovery_mean"], "ior": found["improvement_over_random_mean"],
            "lrs": found["label_robust_score_mean"]}  # fmt: skip


def ddranking_soft(scale: float, runs: int, folder: Path) -> dict[str, float]:
    from ddranking.metrics import soft_label

    soft_label.REAL_DATA_ACC_CACHE["PARITY-ConvNet-3"] = scale * FULL
    metric = _bare(soft_label.LabelRobustScoreSoft, runs, folder, soft_label_mode="M")
    metric._compute_hard_label_metrics_helper = _feeder([scale * v for v in RUNS["set_hard"]])
    soft = [scale * v for r in range(runs) for v in (RUNS["set_labels"][r], RUNS["random"][r])]
    metric._compute_soft_label_metrics_helper = _feeder(soft)
    return _label_scores(metric)


def ddranking_ars(scale: float, runs: int, folder: Path) -> dict[str, float]:
    from ddranking.metrics import aug_robust

    metric = _bare(aug_robust.AugmentationRobustScore, runs, folder, label_type="hard")
    metric._get_random_data_helper = lambda eval_iter: (None, torch.zeros(1), None, None)
    with_aug = [scale * v for r in range(runs) for v in (RUNS["set_labels"][r], RUNS["random"][r])]
    without = [scale * v for r in range(runs)
               for v in (RUNS["set_no_dsa"][r], RUNS["random_no_dsa"][r])]  # fmt: skip
    metric._compute_with_aug_metrics_helper = _feeder(with_aug)
    metric._compute_without_aug_metrics_helper = _feeder(without)
    found = _quiet(lambda: metric.compute_metrics(image_tensor=torch.zeros(1), syn_lr=0.01))
    return {"ars": found["augmentation_robust_score_mean"]}


def ddpp(convention: str, runs: int, hard_ior: bool) -> dict[str, float]:
    """ddpp's scores of the same accuracies (``hard_ior``: IOR on hard labels, as DD-Ranking's
    hard-label class computes it)."""
    take = {name: values[:runs] for name, values in RUNS.items()}
    accuracies = Accuracies(
        full=[FULL], set_labels=take["set_hard"] if hard_ior else take["set_labels"],
        set_hard=take["set_hard"], set_no_dsa=take["set_no_dsa"], random=take["random"],
        random_no_dsa=take["random_no_dsa"],
    )  # fmt: skip
    return compute_scores(accuracies, get_convention(convention))


def compare(label: str, ours: dict[str, float], theirs: dict[str, float]) -> float:
    worst = 0.0
    for key, value in theirs.items():
        difference = abs(ours[key] - float(value))
        worst = max(worst, difference / max(1.0, abs(float(value))))
        print(f"{label:<44} {key:<4} ddpp {ours[key]:+.12f}  DD-Ranking {float(value):+.12f}  "
              f"|diff| {difference:.1e}")  # fmt: skip
    return worst


def make_export(folder: Path) -> Path:
    """A CIFAR-10-shaped set (IPC 2, generated images), written by ddpp's DD-Ranking export."""
    from ddpp_cli.engine import export
    from ddpp_cli.engine.distilled import DistilledSet

    generator = torch.Generator().manual_seed(0)
    chosen = DistilledSet(
        images=torch.randn(20, 3, 32, 32, generator=generator),
        labels=torch.arange(10).repeat_interleave(2), lr=0.01, dataset="cifar10",
        class_names=tuple(f"c{k}" for k in range(10)),
        preprocessing={"kind": "normalize", "mean": [0.4914, 0.4822, 0.4465],
                       "std": [0.2023, 0.1994, 0.2010]},
        source="distill", arch="convnet",
    )  # fmt: skip
    export.export_set(chosen, "ddranking", folder / "export")
    return folder / "export"


def load_export(folder: Path) -> None:
    """Load a ``ddpp export --format ddranking`` folder as DD-Ranking's demos do."""
    from ddranking.config import Config

    config = Config.from_file(str(folder / "config.json"))
    images = torch.load(folder / "images.pt", weights_only=True)
    labels = torch.load(folder / "labels.pt", weights_only=True)
    lr = torch.load(folder / "lr.pt", weights_only=True)
    print(
        f"export {folder}: Config.from_file read dataset={config.get('dataset')} "
        f"ipc={config.get('ipc')} model={config.get('model_name')}; images "
        f"{tuple(images.shape)} {images.dtype}, labels {tuple(labels.shape)}, lr {lr}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="a ddpp export --format ddranking folder")
    args = parser.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        folder, runs = Path(scratch), len(RUNS["set_hard"])
        worst = max(
            compare("ddranking, hard-label LRS, 5 runs", ddpp("ddranking", runs, True),
                    ddranking_hard(100.0, runs, folder)),
            compare("ddranking, soft-label LRS, 5 runs", ddpp("ddranking", runs, False),
                    ddranking_soft(100.0, runs, folder)),
            compare("ddranking, ARS, 5 runs", ddpp("ddranking", runs, False),
                    ddranking_ars(100.0, runs, folder)),
            compare("ddpp (fractions), soft-label LRS, 1 run", ddpp("ddpp", 1, False),
                    ddranking_soft(1.0, 1, folder)),
            compare("ddpp (fractions), ARS, 1 run", ddpp("ddpp", 1, False),
                    ddranking_ars(1.0, 1, folder)),
        )  # fmt: skip
        print(f"largest difference {worst:.1e} (tolerance {TOLERANCE:g}, relative above 1)")
        load_export(args.export or make_export(folder))
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
