"""ddpp's DATM iteration and teacher labels against DATM's own code (benchmarks/datm_parity.py).

The side-by-side run needs a checkout of NUS-HPC-AI-Lab/DATM named by ``DDPP_DATM_DIR``; the
harness's own pieces (DATM's minibatch order, the difference measure) are pinned here without it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "benchmarks" / "datm_parity.py"
COMPARED = (
    *(
        f"{name} ({mode}{'' if dsa == 'none' else f', DSA {dsa}'})"
        for dsa in ("none", "color", "crop", "cutout", "flip", "scale", "rotate", "every op")
        for mode in ("graph", "memory")
        for name in ("iteration loss", "dL/d images", "dL/d labels", "dL/d lr")
    ),
    "selected rows (sorted per class)",
    "teacher labels (teacher_logits)",
    "teacher labels (float64 averaged_correct_logits)",
)


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("datm_parity", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_minibatches_are_datms_chunks_popped_from_the_end(parity):
    """DATM.py 509-514: ``torch.split(randperm, batch_syn)``, ``pop()`` (the last chunk first),
    a new permutation once the chunks run out. 6 images, chunks of 4: [4 | 2]."""
    assert (parity.SYN_STEPS, parity.BATCH_SYN) == (4, 4)
    first, second = torch.tensor([5, 2, 0, 3, 1, 4]), torch.tensor([1, 0, 3, 2, 5, 4])
    steps = parity.datm_minibatches([first, second])
    assert [s.indices.tolist() for s in steps] == [[1, 4], [5, 2, 0, 3], [5, 4], [1, 0, 3, 2]]
    assert all(s.augment.op == "none" for s in steps)


def test_datms_augmentation_draws_become_ddpps_parameters(parity):
    """DiffAugment (DATM's utils/utils_baseline.py, mode S): an op index, then the op's draws.
    color: x + (u_b − 0.5), saturation 2 u_s, contrast u_c + 0.5; crop: DATM's translation t
    of the row index reads row i + t, i.e. moves the content up by t: ddpp's shift −t; rotate:
    DATM's grid turns by θ = (u − 0.5)·2·15° (u = 0.75: 7.5°), ddpp's by −angle; cutout: the
    offsets are the centres of a round(16 · 0.5) = 8 square."""
    strategy = "color_crop_cutout_flip_scale_rotate"
    column = lambda *v: torch.tensor(v).reshape(-1, 1, 1)  # noqa: E731 (DATM's [B, 1, 1] draws)
    draws = [
        torch.tensor([0]), *(torch.tensor([0.25, 1.0]).reshape(-1, 1, 1, 1),) * 3,  # color
        torch.tensor([1]), column(2, -1), column(0, 3),  # crop
        torch.tensor([5]), torch.tensor([0.75, 0.5]),  # rotate
        torch.tensor([2]), column(3, 16), column(0, 9),  # cutout
    ]  # fmt: skip
    color, crop, rotate, cutout = parity.datm_augmentations(draws, strategy)
    assert color.op == "color"
    assert color.values["brightness"].tolist() == [-0.25, 0.5]
    assert color.values["saturation"].tolist() == [0.5, 2.0]
    assert color.values["contrast"].tolist() == [0.75, 1.5]
    assert crop.op == "crop"
    assert crop.values["shift_y"].tolist() == [-2, 1]
    assert crop.values["shift_x"].tolist() == [0, -3]
    assert rotate.op == "rotate"
    assert rotate.values["angles"].tolist() == pytest.approx([-7.5 * torch.pi / 180, 0.0])
    assert cutout.op == "cutout"
    assert cutout.values["centre_y"].tolist() == [3, 16]
    assert cutout.values["centre_x"].tolist() == [0, 9]
    assert cutout.values["size_y"].tolist() == cutout.values["size_x"].tolist() == [8, 8]
    with pytest.raises(SystemExit, match="more augmentation"):
        parity.datm_augmentations([*draws, torch.tensor([3]), torch.rand(2, 1, 1, 1)], strategy)


def test_difference_is_relative_to_the_largest_reference_value(parity):
    """|ddpp − DATM| = 1e-5 on a reference whose largest magnitude is 4: relative 2.5e-6, over
    the 1e-6 tolerance; a gap of 2e-6 (relative 5e-7) is within it."""
    wanted = torch.tensor([1.0, -4.0, 0.5], dtype=torch.float64)
    gap = torch.tensor([0.0, 0.0, 1e-5], dtype=torch.float64)
    over = parity.difference("x", wanted + gap, wanted)
    assert over.max_abs == pytest.approx(1e-5, rel=1e-9)
    assert over.max_rel == pytest.approx(2.5e-6, rel=1e-9)
    assert not over.ok
    within = parity.difference("x", wanted + 2e-6, wanted)
    assert within.max_rel == pytest.approx(5e-7, rel=1e-6)
    assert within.ok
    assert not parity.difference("x", wanted[:2], wanted).ok  # a shape mismatch never passes


@pytest.mark.slow
def test_one_iteration_and_the_teacher_labels_equal_datms_own_code():
    """DATM's ``distill/DATM.py`` ``main`` (one iteration, float64, learned labels) and ddpp's
    engine on its draws: loss and dL/d images, labels, lr (both unroll modes), the selected
    images and the teacher labels, each within 1e-6 relative (docs/distill.md, Parity with
    DATM's code)."""
    datm = os.environ.get("DDPP_DATM_DIR")
    if not datm:
        pytest.skip(
            "DDPP_DATM_DIR is not set; point it to a checkout of NUS-HPC-AI-Lab/DATM "
            "(git clone https://github.com/NUS-HPC-AI-Lab/DATM) to run DATM's own code"
        )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--datm", datm],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for name in COMPARED:
        found = [line for line in lines if line.startswith(name + " ")]
        assert len(found) == 1 and found[0].endswith(" ok"), (name, done.stdout)
    assert f"{len(COMPARED)}/{len(COMPARED)} within 1e-06" in lines
