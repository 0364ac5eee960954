"""A baseline evaluated under the protocol of distilled sets (docs/evaluation.md): its
coresets chosen (once, or per run), trained on and tested, the result recording how."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ddpp_cli.engine import data
from ddpp_cli.engine.baselines.selection import Baseline
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.evaluate import EvalConfig, EvalResult, evaluate_per_run
from ddpp_cli.engine.events import OnEvent


def evaluate_baseline(
    baseline: Baseline,
    config: EvalConfig,
    *,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
) -> tuple[EvalResult, DistilledSet]:
    """Evaluate the baseline under ``config``; also returns run 0's coreset as a set.

    Herding and forgetting first train their selection network (progress to ``on_event``).
    ``parallel`` runs train at once as one batched model; under torchrun (``world``) the runs
    are split between the ranks, which all use rank 0's coreset; ``records`` keeps finished runs
    for a rerun to continue (see :func:`evaluate.evaluate_per_run`)."""
    c = baseline.config
    if not baseline.coreset.per_run:
        main = world is None or world.is_main
        chosen = baseline.indices(0, device, on_event, kept_in=records, keep=main)
        if world is not None:  # training on GPUs is not bit-reproducible: one coreset for all
            baseline._cache[0] = world.from_main(chosen)

    def set_for_run(run: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = baseline.indices(run, device)
        return baseline.train.images[index], baseline.train.labels[index]

    result = evaluate_per_run(
        set_for_run, baseline.test_images, baseline.test_labels,
        num_classes=baseline.train.num_classes, config=config, lr=None, device=device,
        on_event=on_event, parallel=parallel, world=world, records=records,
    )  # fmt: skip
    result = replace(
        result,
        protocol={
            **result.protocol,
            "dataset": data.info(c.dataset).name,
            "source": c.method,
            "ipc": c.ipc,
            "preprocessing": baseline.preprocessing.kind,
            "baseline": {
                **c.describe(),
                "image_size": baseline.image_size,
                "pool_size": len(baseline.train),
                "subset_per_run": baseline.coreset.per_run,
                "zca_file": None if baseline.zca_path is None else str(baseline.zca_path),
                **baseline.selection(),
            },
        },
    )
    return result, baseline.make_set(baseline.indices(0, device), run=0)
