"""Distillation across torchrun ranks (docs/parallel.md): 2 gloo ranks give one process's
images, α and losses to float tolerance, in both unroll modes, with DSA, minibatches, an uneven
split and pruning, with DATM's learned labels; and a run resumes with another number of ranks.
One torchrun launch makes every two-rank run of the module."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import distill, distilled, models
from ddpp_cli.engine.augment import DSA, DSAParams
from ddpp_cli.engine.distill import DistillConfig
from ddpp_cli.engine.distill.setup import _check_shardable
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError

pytestmark = pytest.mark.usefixtures("one_thread")

# The tolerance: rounding only (shard-wise CE means added in another order, the all-reduce, the
# 1/size scaling of the graph mode's loss); in float64 one step's gradients agree to 1e-15.
# In float32 the runs differ as the two exact unroll modes of one process differ from each other:
# lr_img 100 turns ~1e-7 relative differences of dL/dX into ~1e-4 of the images' scale after 4
# iterations (measured: ≤ 3e-4 · max|X|, losses ≤ 7e-5 and α ≤ 3e-5 relative).
IMAGES_TOL = 1e-3  # × max |X|
TRAJECTORY_TOL = {"rtol": 1e-3, "atol": 2e-4}  # buffers: as test_batched.TRAJECTORY_TOL
LOSS_REL, LR_REL = 5e-4, 1e-4
# batch_syn 5 of 10 images: rank 0 takes 2 samples of each minibatch, rank 1 takes 3.
SETTINGS = {
    "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2, "iterations": 4, "batch_syn": 5,
    "eps": 0.1, "eval_every": 2, "eval_runs": 2, "eval_epochs": 2, "test_runs": 0,
    "lr_lr": 1e-6,
    # α₀ given (not derived from the tiny buffer): the run stays in a calm regime where rounding
    # does not flip a pruning decision within 4 iterations (with the derived 0.0067, α falls
    # tenfold and one mask entry flips at iteration 4 in graph vs memory mode as in 1 vs 2 ranks).
    "lr_teacher": 0.01,
}  # fmt: skip


def config(**overrides) -> DistillConfig:
    return DistillConfig.from_preset("mnist", 1, **{**SETTINGS, **overrides})


def run(folder: Path, buffer: Path, data_root: Path, **overrides):
    return distill.distill(
        config(**overrides), folder, buffer=buffer, data_root=data_root, download=False
    )


DRIVER = textwrap.dedent(
    """
    import json, sys
    import torch
    from ddpp_cli.engine import distill
    from ddpp_cli.engine.distributed import join_world
    torch.set_num_threads(1)
    settings, jobs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    world, device = join_world(torch.device("cpu"))
    for job in jobs:
        if "cli" in job:  # a ddpp command line, as a rank runs it
            from ddpp_cli.cli import app
            try:
                app(job["cli"], standalone_mode=False)
            except SystemExit as exc:
                if exc.code:
                    raise
            continue
        config = distill.DistillConfig.from_preset(
            "mnist", 1, **{**settings, **job["overrides"]}
        )
        distill.distill(
            config, job["folder"], buffer=job["buffer"], data_root=job["data"],
            download=False, device=device, world=world,
        )
    from ddpp_cli.engine.distributed import end_process
    end_process(0)  # as ddpp's main() ends a torchrun rank
    """
)


@pytest.fixture(scope="module")
def buffer(tiny_buffer) -> Path:
    return tiny_buffer  # conftest: 2 experts × 3 epochs, 8×8 MNIST


def torchrun(tmp_path: Path, jobs: list[dict]) -> str:
    """Run ``jobs`` (distillations, or ``{"cli": ARGS}`` ddpp command lines) on two gloo ranks,
    with a data home of their own under ``tmp_path``; rank 0's standard output."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg-data"), XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no network needed
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launched = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", str(script), json.dumps(SETTINGS), json.dumps(jobs),
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-4000:]
    return launched.stdout


def records(folder: Path) -> list[dict]:
    lines = (folder / distill.METRICS_NAME).read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_run(ours: Path, theirs: Path) -> None:
    mine = distilled.load(ours / "distilled.safetensors")
    reference = distilled.load(theirs / "distilled.safetensors")
    scale = float(reference.images.abs().max())
    torch.testing.assert_close(mine.images, reference.images, rtol=0, atol=IMAGES_TOL * scale)
    assert mine.lr == pytest.approx(reference.lr, rel=LR_REL)
    a, b = records(ours), records(theirs)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for left, right in zip(a[1:], b[1:], strict=True):
        assert (left["expert"], left["start_epoch"]) == (right["expert"], right["start_epoch"])
        assert left["loss"] == pytest.approx(right["loss"], rel=LOSS_REL)
        assert left["lr"] == pytest.approx(right["lr"], rel=LR_REL)
        assert left["pruned_fraction"] == right["pruned_fraction"]  # the same masks
    assert [r.get("val_accuracy") for r in a] == pytest.approx(
        [r.get("val_accuracy") for r in b], abs=1e-6
    )


# Minibatches of one image: rank 0's share is empty at every step.
SINGLE = {"batch_syn": 1, "iterations": 2, "lr_lr": 1e-8}
# test_datm's learned labels (DATM) in both unroll modes, on its buffer.
LEARNED = {"labels": "learned", "eval_every": 0}


def cli_commands(data_dir: Path) -> tuple[list[str], list[str]]:
    """``ddpp buffer`` (3 experts) and ``ddpp evaluate`` (a random baseline, 3 networks) on tiny
    8×8 MNIST: the command lines two ranks share and one process repeats."""
    data = ["--dataset", "mnist", "--data-dir", str(data_dir), "--no-download"]
    common = [*data, "--device", "cpu", "--seed", "3", "--test-subset", "20", "--image-size", "8"]
    buffer_args = ["buffer", *common, "--experts", "3", "--epochs", "1", "--train-subset", "40"]
    evaluate_args = [
        "evaluate", *common, "--baseline", "random", "--ipc", "2", "--runs", "3", "--epochs", "2",
    ]  # fmt: skip
    return buffer_args, evaluate_args


class Ranks(NamedTuple):
    root: Path  # a folder per two-rank run
    stdout: str  # rank 0's standard output (the ddpp command lines print there)


@pytest.fixture(scope="module")
def ranks(buffer, good_buffer, tiny_mnist, tmp_path_factory) -> Ranks:
    """Every two-rank run of the suite from one torchrun (a launch costs three interpreters):
    ddpp buffer and evaluate, then the distillations; one-then-two's first half runs in this
    process before. Tests read these folders and copy the one they continue."""
    root = tmp_path_factory.mktemp("ranks")
    # One process for two iterations, then two ranks resume to four (and the other way below).
    run(root / "one-then-two", buffer, tiny_mnist, iterations=2)
    buffer_args, evaluate_args = cli_commands(tiny_mnist)
    common = {"buffer": str(buffer), "data": str(tiny_mnist)}
    learned = {"buffer": str(good_buffer), "data": str(tiny_mnist)}
    stdout = torchrun(
        root,
        [
            {"cli": [*buffer_args, "--out", str(root / "cli-buffer"), "--parallel", "2", "-q"]},
            {"cli": [*evaluate_args, "--json"]},
            {**common, "folder": str(root / "two-graph"), "overrides": {"unroll": "graph"}},
            # Every step recomputed here; the single-image runs below keep every step's graph.
            {**common, "folder": str(root / "two-memory"),
             "overrides": {"unroll": "memory", "unroll_budget": 0}},
            {**common, "folder": str(root / "two-then-one"), "overrides": {"iterations": 2}},
            {**common, "folder": str(root / "one-then-two"), "overrides": {}},
            *(
                {**common, "folder": str(root / f"two-single-{mode}"),
                 "overrides": {**SINGLE, "unroll": mode}}
                for mode in ("graph", "memory")
            ),
            *(
                {**learned, "folder": str(root / f"two-learned-{mode}"),
                 "overrides": {**LEARNED, "unroll": mode}}
                for mode in ("graph", "memory")
            ),
        ],
    )  # fmt: skip
    return Ranks(root, stdout)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_resume_across_world_sizes(
    ranks, buffer, tiny_mnist, tmp_path
):
    ranks = ranks.root
    one = {mode: tmp_path / f"one-{mode}" for mode in ("graph", "memory")}
    for mode, folder in one.items():
        run(folder, buffer, tiny_mnist, unroll=mode)
    assert any(r.get("pruned_fraction", 0) > 0 for r in records(one["graph"]))  # mask nonzero
    for mode in ("graph", "memory"):
        run(tmp_path / f"one-single-{mode}", buffer, tiny_mnist, unroll=mode, **SINGLE)
    shutil.copytree(ranks / "two-then-one", tmp_path / "two-then-one")  # continued here
    run(tmp_path / "two-then-one", buffer, tiny_mnist)
    assert_same_run(ranks / "two-graph", one["graph"])
    assert_same_run(ranks / "two-memory", one["memory"])
    assert_same_run(tmp_path / "two-then-one", one["graph"])
    assert_same_run(ranks / "one-then-two", one["graph"])
    for mode in ("graph", "memory"):
        assert_same_run(ranks / f"two-single-{mode}", tmp_path / f"one-single-{mode}")
    assert (ranks / "two-graph" / distill.BEST_NAME).is_file()
    assert not list((ranks / "two-graph").glob("*.tmp*"))


@pytest.mark.slow
def test_learned_labels_on_two_ranks_match_one_process(ranks, good_buffer, tiny_mnist, tmp_path):
    """torchrun, 2 gloo ranks, minibatches split 2 + 3, pruning on, both unroll modes: the same
    images, α, losses and learned labels as one process (this module's tolerances)."""
    ranks = ranks.root
    from test_datm import setup_of, small_config

    teacher_labels = setup_of(small_config(labels="teacher"), good_buffer, tiny_mnist)
    for mode in ("graph", "memory"):
        run(tmp_path / f"one-{mode}", good_buffer, tiny_mnist, **LEARNED, unroll=mode)
        assert_same_run(ranks / f"two-learned-{mode}", tmp_path / f"one-{mode}")
        two, one = (
            distilled.load(folder / distill.DISTILLED_NAME)
            for folder in (ranks / f"two-learned-{mode}", tmp_path / f"one-{mode}")
        )
        scale = float(one.targets.abs().max())
        torch.testing.assert_close(two.targets, one.targets, rtol=0, atol=IMAGES_TOL * scale)
        assert not torch.equal(one.targets, teacher_labels.teacher_start()[1])


@pytest.mark.slow
def test_torchrun_splits_the_work_and_matches_one_process(ranks, tiny_mnist, tmp_path):
    """Two gloo ranks on the CPU: buffer (batched within a rank too) and a baseline evaluation."""
    buffer_args, evaluate_args = cli_commands(tiny_mnist)
    lines = ranks.stdout.strip().splitlines()
    assert lines[0] == str(ranks.root / "cli-buffer")  # rank 0 printed; rank 1 stayed quiet
    assert len(lines) == 2
    distributed_eval = json.loads(lines[1])

    runner = CliRunner()
    single = runner.invoke(app, [*buffer_args, "--out", str(tmp_path / "one"), "-q"])
    assert single.exit_code == 0, single.output
    for name in ("expert_0000", "expert_0001", "expert_0002"):
        ours = buffer_engine.load_trajectory(ranks.root / "cli-buffer" / f"{name}.safetensors")
        theirs = buffer_engine.load_trajectory(tmp_path / "one" / f"{name}.safetensors")
        torch.testing.assert_close(ours.params, theirs.params, **TRAJECTORY_TOL)
    manifest = json.loads((ranks.root / "cli-buffer" / "buffer.json").read_text())
    assert [e["index"] for e in manifest["experts"]] == [0, 1, 2]
    assert sorted(p.name for p in (ranks.root / "cli-buffer").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    single_eval = runner.invoke(app, [*evaluate_args, "--json"])
    assert single_eval.exit_code == 0, single_eval.output
    expected = json.loads(single_eval.stdout)
    assert expected["provenance"]["reused_runs"] == []  # trained here: the ranks' home is theirs
    assert distributed_eval["accuracies"] == expected["accuracies"]
    assert distributed_eval["protocol"]["train_size"] == expected["protocol"]["train_size"]


# ------------------------------------------------------------------- the pieces, in-process


@pytest.mark.parametrize(("total", "size"), [(5, 2), (10, 3), (1, 2), (7, 7)])
def test_split_covers_the_batch_contiguously_in_even_shares(total, size):
    shares = [World(rank, size, rank).split(total) for rank in range(size)]
    assert shares[0][0] == 0 and shares[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
    lengths = [stop - start for start, stop in shares]
    assert max(lengths) - min(lengths) <= 1


def test_a_draws_rows_augment_those_samples_as_the_whole_draw_does():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(5, 1, 8, 8, generator=generator)
    for strategy in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        dsa = DSA(strategy)
        params: DSAParams = dsa.sample(5, 8, 8, generator)
        whole = dsa.apply(images, params)
        parts = [dsa.apply(images[a:b], params.rows(a, b)) for a, b in ((0, 2), (2, 5))]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-6)


def test_a_folder_that_does_not_write_leaves_nothing(tmp_path):
    folder = tmp_path / "run"
    files = distill.RunFolder(folder, lambda *a: None, {}, {}, writes=False)
    files.create()
    files.log({"iteration": 1})
    files.write_summary({"iterations": 1})
    files.truncate(0)
    assert not folder.exists()


def test_batchnorm_is_refused_only_across_ranks():
    bn = models.create("convnet-bn", 1, 10, 8)
    _check_shardable("convnet-bn", bn, World())  # one process: fine
    _check_shardable("convnet", models.create("convnet", 1, 10, 8), World(0, 2, 0))
    with pytest.raises(DdppError, match="BatchNorm"):
        _check_shardable("convnet-bn", bn, World(0, 2, 0))
