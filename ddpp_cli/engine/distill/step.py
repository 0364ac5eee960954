"""One iteration of trajectory matching with pruning (:class:`MatchingStep`, docs/distill.md)
and the guards a run checks after it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from ddpp_cli.engine.distill.state import DistillState
from ddpp_cli.engine.student import Student, UnrollStep, plan_unroll
from ddpp_cli.engine.unroll import match

if TYPE_CHECKING:
    from ddpp_cli.engine.distill.config import DistillConfig


def read_snapshots(path: Path, rows: tuple[int, ...]) -> list[torch.Tensor]:
    """Rows ``rows`` of an expert file's ``params`` [E+1, P], without loading the whole file."""
    with safe_open(str(path), framework="pt") as handle:
        params = handle.get_slice("params")
        return [params[row].float() for row in rows]


def upper_start_epoch(config: DistillConfig, iteration: int) -> int:
    """The exclusive upper start epoch of iteration ``iteration`` (0-based): T⁺, or DATM's
    difficulty-aligned window growing from T⁻⁺ to T⁺ over ``expansion_end`` iterations
    (DATM.py 485-489: T⁻⁺ + ⌊(T⁺ − T⁻⁺) · it / end⌋, at most T⁺)."""
    top, current = config.max_start_epoch, config.max_start_from
    if current is None:
        return top
    return min(current + int((top - current) * iteration / config.expansion_end), top)


class MatchingStep:
    """Picks an expert and a start epoch, unrolls the student from θ_i on the images, matches
    θ_{i+M} with pruning and steps the optimizers (skipped when the loss is not finite, or above
    ``skip_threshold``: DATM's rule). The inner loss is taken against ``labels`` (class indices
    or teacher logits), or against the state's learned label vectors when it has them."""

    def __init__(
        self,
        config: DistillConfig,
        student: Student,
        expert_paths: dict[int, Path],
        labels: torch.Tensor,
        image_size: tuple[int, int],
        device: torch.device,
    ) -> None:
        self.config = config
        self.student = student
        self.expert_paths = expert_paths
        self.labels = labels
        self.image_size = image_size
        self.device = device

    def step(self, state: DistillState) -> dict[str, Any]:
        """One iteration on ``state``; returns its metrics (loss, pruned fraction, start epoch,
        expert). The caller checks the guards (:func:`divergence`)."""
        c = self.config
        expert = state.next_expert()
        if c.min_start_epoch is None and c.max_start_from is None:
            start_epoch = int(
                torch.randint(c.max_start_epoch, (1,), generator=state.generators["start"])
            )
        else:  # DATM's window [T⁻, upper)
            upper = upper_start_epoch(c, state.iteration)
            low = c.min_start_epoch or 0
            start_epoch = int(torch.randint(low, upper, (1,), generator=state.generators["start"]))
        start, target = (
            t.to(self.device)
            for t in read_snapshots(
                self.expert_paths[expert], (start_epoch, start_epoch + c.expert_epochs)
            )
        )
        labels = self.labels if state.targets is None else state.targets
        steps = plan_unroll(
            len(labels), c.syn_steps, c.batch_syn, self.student.dsa, self.image_size,
            state.generators["unroll"],
        )  # fmt: skip
        self._check_ranks_agree(state, expert, start_epoch, steps)
        state.zero_grad()
        keep = c.unroll_budget * 2**20 if c.unroll == "memory" else 0
        result = match(
            self.student, start, target, state.images, labels, state.lr, steps, c.eps,
            c.unroll, keep,
        )  # fmt: skip
        record = {
            "loss": result.loss,
            "pruned_fraction": result.pruned_fraction,
            "start_epoch": start_epoch,
            "expert": expert,
        }
        skipped = c.skip_threshold is not None and result.loss > c.skip_threshold
        if skipped:
            record["skipped"] = True
        if math.isfinite(result.loss) and not skipped:
            state.optimizer_step()
        return record

    def _check_ranks_agree(
        self, state: DistillState, expert: int, start_epoch: int, steps: list[UnrollStep]
    ) -> None:
        """Under torchrun: RuntimeError unless every rank drew the same expert, start epoch,
        minibatches and DSA parameters and holds the same α and X (fingerprints, one small
        gather per iteration; the draws come from the same seeded generators on every rank)."""
        world = self.student.world
        if not world.distributed:
            return
        draws = 0.0
        for j, step in enumerate(steps, start=1):
            if step.indices is not None:
                positions = torch.arange(1, step.indices.numel() + 1, dtype=torch.float64)
                draws += j * float((step.indices.double() * positions).sum())
            draws += j * sum(float(v.double().sum()) for v in step.augment.values.values())
        images = float(state.images.detach().double().sum())
        ops = ",".join(step.augment.op for step in steps)
        fingerprint = (expert, start_epoch, ops, draws, float(state.lr.detach()), images)
        world.agree(fingerprint, f"the draws or state of iteration {state.iteration + 1}")


def divergence(loss: float, state: DistillState) -> str | None:
    """What went wrong in the last step (non-finite loss, α not finite and positive, or
    non-finite images), or None."""
    lr = state.learned_lr
    if not math.isfinite(loss):
        return f"the matching loss became {loss}"
    if lr is not None and (not math.isfinite(lr) or lr <= 0):
        return f"the learned lr became {lr}"
    if not bool(torch.isfinite(state.images.detach()).all()):
        return "the images became non-finite"
    return None
