"""Distillation speed and memory: seconds per iteration and peak memory per unroll mode, per
torchrun layout, and side by side with MTT's own ``distill.py`` (docs/performance.md#bars).

Each configuration (IPC × syn_steps × unroll mode × layout) runs in a fresh subprocess, so its
peak RSS (``ru_maxrss``) is its own. One iteration is the engine's own: ``plan_unroll`` →
``match`` (unroll, pruning mask, matching loss, backward in either mode) → the two SGD steps, on
CIFAR-shaped random data (3×32×32, 10 classes, ConvNet-3 width 128 with instance norm, DSA on,
full batch). Seconds are the median of ``--repeats`` iterations after one warm-up iteration.
ddpp's children keep freed memory for reuse as ddpp's distillation loop does
(engine/allocator.py; ``--malloc system`` for glibc's defaults); MTT's child keeps its own
defaults unless ``--mtt-malloc keep``. Each table row names its allocator.

Layouts (``--layouts 1x2 2x1 1x1``, or ``--nproc K`` for every ranks × threads = K plus 1x1) run
a configuration as R torchrun ranks (gloo on the CPU, one GPU each on CUDA) of T threads; the
ranks split each minibatch (docs/parallel.md) and the peak RSS is the sum over the ranks.

``--mtt DIR`` also runs MTT's own ``distill.py`` from a checkout of
github.com/GeorgeCazenavette/mtt-distillation at DIR, in a fresh subprocess per (IPC, N), with
the same threads as the whole machine's layout (``--mtt-threads``): random CIFAR-shaped data and a
random expert buffer generated in a temporary folder, wandb replaced by a recorder (the end of an
iteration is its "Grand_Loss" log), the evaluation stubbed out, and tqdm/kornia/scipy stubbed
where they are not installed. Nothing of MTT is copied; the stubs are made at run time.

    python benchmarks/distill_bench.py                      # the three MTT reference settings
    python benchmarks/distill_bench.py --ipc 10 --syn-steps 20 --nproc 2 --mtt ../mtt-distillation
    python benchmarks/distill_bench.py --ipc 1 --syn-steps 20 60 --modes memory --repeats 3
    python benchmarks/distill_bench.py --profile docs/profile.txt --ipc 10 --syn-steps 20

Nothing here is imported by the tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

# MTT reference (2 cores, torch 2.14.1 CPU, DSA on, full batch): (ipc, syn_steps) → (s/it, MB).
REFERENCE: dict[tuple[int, int], tuple[float, float]] = {
    (1, 20): (1.99, 2010.0),
    (1, 60): (5.61, 4282.0),
    (10, 20): (28.7, 8167.0),
}


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in this process and return its record."""
    import torch

    from ddpp_cli.engine import allocator, models
    from ddpp_cli.engine.augment import DSA
    from ddpp_cli.engine.device import make_generator
    from ddpp_cli.engine.distributed import join_world
    from ddpp_cli.engine.functional import ParamLayout, flat_parameters
    from ddpp_cli.engine.student import Student, describe, plan_unroll
    from ddpp_cli.engine.unroll import match

    ipc, syn_steps, mode = args.one
    ipc, syn_steps = int(ipc), int(syn_steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    world, device = join_world(torch.device(args.device))  # torchrun layouts: R ranks
    torch.manual_seed(0)
    model = models.create("convnet", 3, 10, 32).to(device).train()
    layout = ParamLayout.of(model)
    start = flat_parameters(model)
    target = start + 0.01 * start.abs().mean() * torch.randn_like(start)
    images = torch.randn(10 * ipc, 3, 32, 32, device=device).requires_grad_(True)
    labels = torch.arange(10, device=device).repeat_interleave(ipc)
    alpha = torch.tensor(0.01, device=device).requires_grad_(True)
    # Small lrs keep random data finite over the repeats; the work done is the same.
    opt_images = torch.optim.SGD([images], lr=1.0, momentum=0.5)
    opt_lr = torch.optim.SGD([alpha], lr=0.0, momentum=0.5)  # α fixed: random data diverge
    dsa = DSA()
    notices: list[str] = []
    student = Student(
        model, layout, dsa, amp=args.amp, compile=args.compile,
        channels_last=args.channels_last, on_notice=notices.append, world=world,
    )  # fmt: skip
    generator = make_generator(0, "unroll")

    def iteration() -> float:
        steps = plan_unroll(len(labels), syn_steps, None, dsa, (32, 32), generator)
        opt_images.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        keep = args.unroll_budget * 2**20 if mode == "memory" else 0
        result = match(student, start, target, images, labels, alpha, steps, 0.1, mode, keep)
        opt_images.step()
        opt_lr.step()
        return result.loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_mb()
    # As ddpp's distillation loop: freed memory kept unless DDPP_MALLOC=system (allocator.py).
    with allocator.freed_memory_kept() as kept:
        seconds, cpu_seconds, loss, load = _timed(args, iteration, device)
    rss = world.gather(_rss_mb())
    record = {
        "ipc": ipc,
        "syn_steps": syn_steps,
        "mode": mode,
        "layout": f"{world.size}x{torch.get_num_threads()}",
        "unroll_budget_mib": args.unroll_budget if mode == "memory" else None,
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "median_cpu_seconds": statistics.median(cpu_seconds),  # all threads; robust to load
        "peak_rss_mb": sum(rss),  # the whole layout's
        "peak_rss_mb_per_rank": rss,
        "rss_before_mb": sum(world.gather(rss_before)),
        "loss": loss,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_average": load,
        "notices": notices,
        "thp": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "malloc": "keep" if kept else "system",
        **describe(student),
    }
    if device.type == "cuda":
        record["peak_cuda_mb"] = max(world.gather(torch.cuda.max_memory_allocated(device) / 2**20))
    return record if world.is_main else {}


def _timed(
    args: argparse.Namespace, iteration: Any, device: Any
) -> tuple[list[float], list[float], float, list[float]]:
    """Wall and CPU seconds of ``args.repeats`` iterations after a warm-up, the last loss and
    the load average before and after (and, with ``--profile-out``, a profiled iteration first)."""
    import torch

    if args.profile_out:
        from torch.profiler import ProfilerActivity, profile

        iteration()  # warm-up
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            iteration()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        Path(args.profile_out).write_text(table + "\n", encoding="utf-8")
    seconds, cpu_seconds = [], []
    load = [os.getloadavg()[0]]
    for i in range(args.repeats + 1):  # the first is the warm-up
        started, cpu_started = time.perf_counter(), time.process_time()
        loss = iteration()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
    load.append(os.getloadavg()[0])
    return seconds, cpu_seconds, loss, load


def run_child(
    args: argparse.Namespace,
    ipc: int,
    syn_steps: int,
    mode: str,
    layout: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """``one`` in a fresh interpreter (under torchrun for R > 1 ranks); its record comes back
    as the last line of stdout (an ``error`` record after ``timeout`` seconds)."""
    ranks, threads = parse_layout(layout) if layout else (1, args.threads)
    script = [str(Path(__file__).resolve()), "--one", str(ipc), str(syn_steps), mode]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        script = [*launcher, "--nproc-per-node", str(ranks), *script]
    else:
        script = [sys.executable, *script]
    command = [
        *script, "--repeats", str(args.repeats), "--device", args.device, "--amp", args.amp,
        "--unroll-budget", str(args.unroll_budget),
    ]  # fmt: skip
    if threads:
        command += ["--threads", str(threads)]
    if args.compile:
        command.append("--compile")
    if args.channels_last:
        command.append("--channels-last")
    if args.profile_out:
        command += ["--profile-out", args.profile_out]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if ranks > 1 and sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # PyTorch's CPU allocator: 2 MB-aligned, madvise(MADV_HUGEPAGE) blocks; ddpp sets it on
    # import (ddpp_cli/__init__.py), and the children import torch first, so it is set here.
    env["THP_MEM_ALLOC_ENABLE"] = "1" if args.thp else "0"
    env["DDPP_MALLOC"] = args.malloc  # ddpp's loop keeps freed memory unless told "system"
    key = {"ipc": ipc, "syn_steps": syn_steps, "mode": mode, "layout": layout or ""}
    return _child_record(command, env, key, timeout)


def _child_record(
    command: list[str], env: dict[str, str], key: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {**key, "error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {**key, "error": " | ".join(tail)}
    return json.loads(lines[-1])


def parse_layout(text: str) -> tuple[int, int]:
    """``"RxT"`` → (R ranks, T threads per rank)."""
    ranks, _, threads = text.lower().partition("x")
    if not (ranks.isdigit() and threads.isdigit() and int(ranks) > 0 and int(threads) > 0):
        raise SystemExit(f"layout {text!r} is not RANKSxTHREADS, e.g. 2x1")
    return int(ranks), int(threads)


def layouts_for(nproc: int) -> list[str]:
    """Every ranks × threads = ``nproc`` (most threads first), then 1x1 for the speed-ups."""
    found = [f"{r}x{nproc // r}" for r in range(1, nproc + 1) if nproc % r == 0]
    return found + (["1x1"] if "1x1" not in found else [])


# ---------------------------------------------------------------- MTT's own distill.py


def mtt_one(args: argparse.Namespace) -> dict[str, Any]:
    """Run MTT's ``distill.py`` from ``args.mtt`` in this process on random CIFAR-shaped data
    and a random buffer; seconds per iteration from the times of its "Grand_Loss" logs."""
    import torch

    ipc, syn_steps = (int(v) for v in args.mtt_one)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    malloc = "system"
    if os.environ.get("DDPP_MALLOC") == "keep":  # only when asked: MTT itself never does this
        from ddpp_cli.engine import allocator

        malloc = "keep" if allocator.keep_freed_memory() else "system"
    source = Path(args.mtt).resolve()
    if not (source / "distill.py").is_file():
        raise SystemExit(f"{source} holds no distill.py; pass a checkout of mtt-distillation")
    logs: list[tuple[float, float]] = []  # (wall, CPU) seconds at the end of each iteration
    _stub_modules(logs)
    sys.path.insert(0, str(source))
    import utils  # MTT's

    expert_epochs, max_start_epoch = 2, 2
    utils.get_dataset = _random_cifar(utils, ipc)
    if not torch.cuda.is_available():  # MTT saves its images with .cuda() at iteration 0
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    work = Path(tempfile.mkdtemp(prefix="mtt-bench-"))
    buffer = work / "buffers" / "CIFAR10_NO_ZCA" / "ConvNet"
    buffer.mkdir(parents=True)
    net = utils.get_network("ConvNet", 3, 10, (32, 32), dist=False)
    params = [p.detach().clone() for p in net.parameters()]
    generator = torch.Generator().manual_seed(0)
    trajectory = [
        [p + 0.01 * p.abs().mean() * torch.randn(p.shape, generator=generator) for p in params]
        for _ in range(max_start_epoch + expert_epochs + 1)
    ]
    torch.save([trajectory, trajectory], buffer / "replay_buffer_0.pt")
    os.chdir(work)
    sys.argv = [
        "distill.py", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc", str(ipc),
        "--syn_steps", str(syn_steps), "--expert_epochs", str(expert_epochs),
        "--max_start_epoch", str(max_start_epoch), "--Iteration", str(args.repeats),
        "--eval_it", str(args.repeats + 1), "--num_eval", "1", "--lr_img", "1.0",
        "--lr_lr", "0.0", "--lr_teacher", "0.01", "--buffer_path", str(work / "buffers"),
        "--data_path", str(work),
    ]  # fmt: skip
    rss_before = _rss_mb()
    try:
        runpy.run_path(str(source / "distill.py"), run_name="__main__")
    finally:
        os.chdir(Path(__file__).resolve().parent)
        shutil.rmtree(work, ignore_errors=True)
    seconds = [b[0] - a[0] for a, b in itertools.pairwise(logs)]  # iteration 0: the warm-up
    cpu_seconds = [b[1] - a[1] for a, b in itertools.pairwise(logs)]
    return {
        "ipc": ipc,
        "syn_steps": syn_steps,
        "mode": "mtt",
        "layout": f"1x{threads}",
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "median_cpu_seconds": statistics.median(cpu_seconds),
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": rss_before,
        "threads": threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_average": [os.getloadavg()[0]] * 2,
        "mtt": str(source),
        "malloc": malloc,
        "thp": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
    }


def _stub_modules(logs: list[tuple[float, float]]) -> None:
    """wandb (always: a recorder), and tqdm / kornia / scipy where they are not installed."""
    import importlib.machinery
    import importlib.util

    def module(name: str) -> types.ModuleType:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() works on it
        sys.modules[name] = stub
        return stub

    class Config:
        def __init__(self, args: Any) -> None:
            self._items = dict(vars(args))

    wandb = module("wandb")
    wandb.run = types.SimpleNamespace(name="bench")

    def init(config: Any = None, **_: Any) -> None:
        wandb.config = Config(config)

    def log(values: dict[str, Any], step: int | None = None) -> None:
        if "Grand_Loss" in values:
            logs.append((time.perf_counter(), time.process_time()))

    wandb.init, wandb.log, wandb.finish = init, log, lambda: None
    wandb.Histogram = wandb.Image = lambda *a, **k: None
    if importlib.util.find_spec("tqdm") is None:
        module("tqdm").tqdm = lambda iterable=None, *a, **k: iterable
    if importlib.util.find_spec("kornia") is None:
        module("kornia")  # only its ZCA, unused here
    if importlib.util.find_spec("scipy") is None:  # only its rotate, for non-DSA augmentation
        module("scipy")
        module("scipy.ndimage")
        module("scipy.ndimage.interpolation").rotate = None


def _random_cifar(utils: Any, ipc: int) -> Any:
    """A stand-in for MTT's ``get_dataset``: random CIFAR-10-shaped tensors, no evaluation
    (its ``evaluate_synset`` is replaced too; ``--eval_it`` is past the last iteration)."""
    import torch

    def get_dataset(dataset: str, data_path: str, batch_size: int = 1, subset: Any = None,
                    args: Any = None) -> tuple:  # fmt: skip
        generator = torch.Generator().manual_seed(1)
        per_class = max(ipc, 10)
        labels = torch.arange(10).repeat_interleave(per_class)
        images = torch.randn(len(labels), 3, 32, 32, generator=generator)
        train = utils.TensorDataset(images, labels)
        test = utils.TensorDataset(images[:10], labels[:10])
        loader = torch.utils.data.DataLoader(test, batch_size=256)
        mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
        classes = [str(c) for c in range(10)]
        class_map = {c: c for c in range(10)}
        return 3, (32, 32), 10, classes, mean, std, train, test, loader, None, class_map, None

    utils.evaluate_synset = lambda *a, **k: (None, 0.0, 0.0)
    return get_dataset


def run_mtt(
    args: argparse.Namespace, ipc: int, syn_steps: int, threads: int, timeout: float | None = None
) -> dict[str, Any]:
    """:func:`mtt_one` in a fresh interpreter."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--mtt", str(args.mtt), "--mtt-one",
        str(ipc), str(syn_steps), "--repeats", str(args.repeats),
    ]  # fmt: skip
    env = dict(os.environ)
    # MTT as its users run it: PyTorch's and glibc's defaults (--mtt-malloc keep: ddpp's setting).
    env["THP_MEM_ALLOC_ENABLE"] = env.get("THP_MEM_ALLOC_ENABLE", "0")
    env["DDPP_MALLOC"] = args.mtt_malloc
    if threads:
        command += ["--threads", str(threads)]
        env["OMP_NUM_THREADS"] = str(threads)
    if args.device.startswith("cuda"):  # MTT uses DataParallel over every visible GPU
        env.setdefault("CUDA_VISIBLE_DEVICES", args.device.partition(":")[2] or "0")
    else:  # MTT takes a GPU whenever it sees one
        env["CUDA_VISIBLE_DEVICES"] = ""
    key = {"ipc": ipc, "syn_steps": syn_steps, "mode": "mtt", "layout": f"1x{threads}"}
    return _child_record(command, env, key, timeout)


def _key(record: dict[str, Any]) -> tuple[int, int, str, str]:
    return record["ipc"], record["syn_steps"], record["mode"], record.get("layout", "")


def _mtt_for(by_key: dict, ipc: int, n: int) -> dict[str, Any] | None:
    found = [r for (i, m, mode, _), r in by_key.items() if (i, m, mode) == (ipc, n, "mtt")]
    return found[0] if found else None


def table(records: list[dict[str, Any]]) -> str:
    """The results as a Markdown table. "× MTT" divides by MTT measured in the same run when
    ``--mtt`` was given (marked "same run"), else by MTT's published reference figures."""
    by_key = {_key(r): r for r in records if "error" not in r}
    lines = [
        "| IPC | N | unroll | layout | allocator | s/it (median) | CPU s/it | × MTT s/it "
        "| peak RSS MB | × MTT RSS | unroll MB | × graph s/it | RSS / RSS at N=20 | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        layout = r.get("layout", "")
        if "error" in r:
            lines.append(
                f"| {r['ipc']} | {r['syn_steps']} | {r['mode']} | {layout} | failed: {r['error']} |"
            )
            continue
        mtt = _mtt_for(by_key, r["ipc"], r["syn_steps"])
        if mtt is not None:
            ref, source = (mtt["median_seconds"], mtt["peak_rss_mb"]), " (same run)"
        else:
            ref, source = REFERENCE.get((r["ipc"], r["syn_steps"])), ""
        graph = by_key.get((r["ipc"], r["syn_steps"], "graph", layout))
        short = by_key.get((r["ipc"], 20, r["mode"], layout))
        cells = [
            str(r["ipc"]),
            str(r["syn_steps"]),
            r["mode"],
            layout,
            r.get("malloc", "system") + (", THP" if r.get("thp") else ""),
            f"{r['median_seconds']:.2f}",
            f"{r['median_cpu_seconds']:.2f}",
            f"{r['median_seconds'] / ref[0]:.2f}{source}" if ref else "–",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_rss_mb'] / ref[1]:.2f}" if ref else "–",
            f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f}",
            f"{r['median_seconds'] / graph['median_seconds']:.2f}" if graph else "–",
            f"{r['peak_rss_mb'] / short['peak_rss_mb']:.2f}" if short else "–",
            "–".join(f"{v:.1f}" for v in r["load_average"]),
        ]
        if "peak_cuda_mb" in r:
            cells[7] += f" (CUDA {r['peak_cuda_mb']:.0f})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """Issue 15's targets, where the measured grid allows a verdict (met, or missed by how much).

    Why a target is missed is in docs/performance.md (the profile of one iteration).
    """
    by_key = {_key(r): r for r in records if "error" not in r}
    lines = []

    def line(label: str, got: float, limit: float, at_least: bool = False) -> None:
        ok = got >= limit if at_least else got <= limit
        bound = "≥" if at_least else "≤"
        verdict = "met" if ok else f"missed ({got:.2f}× against {bound} {limit}×)"
        lines.append(f"{label}: {got:.2f}× (target {bound} {limit}×): {verdict}")

    for ipc, n in sorted({(k[0], k[1]) for k in by_key}):
        mtt = _mtt_for(by_key, ipc, n)
        runs = {k[3]: r for k, r in by_key.items() if k[:3] == (ipc, n, "graph")}
        if mtt is not None:
            threads = mtt["threads"]
            whole = [r for layout, r in runs.items() if _cores(layout) == threads]
            if whole:
                best = min(whole, key=lambda r: r["median_seconds"])
                line(
                    f"IPC {ipc}, N {n}: best layout for {threads} cores ({best['layout']}) vs "
                    f"MTT with {threads} threads",
                    best["median_seconds"] / mtt["median_seconds"], 0.8,
                )  # fmt: skip
            single = runs.get(f"1x{threads}")
            if single:
                line(
                    f"IPC {ipc}, N {n}: one process, {threads} threads, vs MTT",
                    single["median_seconds"] / mtt["median_seconds"], 1.0,
                )  # fmt: skip
        if "1x1" in runs and "2x1" in runs:
            line(
                f"IPC {ipc}, N {n}: speed of 2 ranks × 1 thread vs 1 × 1",
                runs["1x1"]["median_seconds"] / runs["2x1"]["median_seconds"], 1.7, True,
            )  # fmt: skip
        for layout, base in runs.items():
            memory = by_key.get((ipc, n, "memory", layout))
            if memory:
                line(
                    f"IPC {ipc}, N {n}, {layout}: memory mode s/it vs graph mode",
                    memory["median_seconds"] / base["median_seconds"], 1.25,
                )  # fmt: skip
    for ipc, layout in sorted({(k[0], k[3]) for k in by_key if k[2] == "memory"}):
        short, long = (
            by_key.get((ipc, 20, "memory", layout)),
            by_key.get((ipc, 60, "memory", layout)),
        )
        if short and long:
            growth = long["peak_rss_mb"] / short["peak_rss_mb"]
            line(f"IPC {ipc}, {layout}: memory mode peak RSS, N 60 vs N 20", growth, 1.2)
    return lines


def _cores(layout: str) -> int:
    ranks, threads = parse_layout(layout)
    return ranks * threads


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, nargs="+", help="default: MTT's reference settings")
    parser.add_argument("--syn-steps", type=int, nargs="+", help="default: the reference's")
    parser.add_argument("--modes", nargs="+", default=["graph", "memory"])
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations after warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument(
        "--layouts", nargs="+", metavar="RxT", help="torchrun layouts: R ranks × T threads each"
    )
    parser.add_argument(
        "--nproc", type=int, help="every layout of R ranks × T threads = K, plus 1x1"
    )
    parser.add_argument("--mtt", type=Path, help="a checkout of MTT: run its distill.py too")
    parser.add_argument(
        "--mtt-threads", type=int, default=0,
        help="MTT's threads (default: --threads, else the most cores of a layout, else torch's)",
    )  # fmt: skip
    parser.add_argument(
        "--unroll-budget", type=int, default=2048, metavar="MIB",
        help="memory mode: MiB of the last steps' graphs kept (ddpp's --unroll-budget)",
    )  # fmt: skip
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--thp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ddpp's children with THP_MEM_ALLOC_ENABLE=1, as ddpp sets it (--no-thp: 0)",
    )
    parser.add_argument(
        "--malloc", choices=["keep", "system"], default="keep",
        help="ddpp's children: freed memory kept for reuse, as ddpp's distillation loop "
        "(engine/allocator.py), or glibc's default (system)",
    )  # fmt: skip
    parser.add_argument(
        "--mtt-malloc", choices=["keep", "system"], default="system",
        help="MTT's child: glibc's default, as MTT runs (default), or ddpp's setting (keep)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument(
        "--profile", type=Path, help="profile one iteration per configuration into PATH-<config>"
    )
    parser.add_argument("--one", nargs=3, metavar=("IPC", "N", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--mtt-one", nargs=2, metavar=("IPC", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.one:
        record = one(args)
        if record:  # rank 0's
            print(json.dumps(record))
        from ddpp_cli.engine import distributed

        if distributed.launched():  # as ddpp's main(): no abort in the interpreter's teardown
            distributed.end_process(0)
        return
    if args.mtt_one:
        print(json.dumps(mtt_one(args)))
        return
    if args.ipc is None and args.syn_steps is None:
        grid = sorted(REFERENCE)
    else:
        grid = [(i, n) for i in args.ipc or [1, 10] for n in args.syn_steps or [20, 60]]
    layouts: list[str | None] = list(args.layouts or [])
    if args.nproc:
        layouts += [layout for layout in layouts_for(args.nproc) if layout not in layouts]
    layouts = layouts or [None]
    mtt_threads = args.mtt_threads or args.threads
    if not mtt_threads and layouts != [None]:
        mtt_threads = max(_cores(layout) for layout in layouts if layout)
    records = []
    for ipc, syn_steps in grid:
        if args.mtt:
            record = run_mtt(args, ipc, syn_steps, mtt_threads)
            records.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
        for layout in layouts:
            for mode in args.modes:
                tag = f"-{layout}" if layout else ""
                args.profile_out = (
                    f"{args.profile}-ipc{ipc}-n{syn_steps}-{mode}{tag}.txt"
                    if args.profile
                    else None
                )
                record = run_child(args, ipc, syn_steps, mode, layout)
                records.append(record)
                print(json.dumps(record), file=sys.stderr, flush=True)
    print(table(records))
    for verdict in verdicts(records):
        print(verdict)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
