"""Distillation speed and memory (SPEC §10): seconds per iteration and peak memory per unroll mode.

Each configuration (IPC × syn_steps × unroll mode) runs in a fresh subprocess, so its peak RSS
(``ru_maxrss``) is its own. One iteration is the engine's own: ``plan_unroll`` → ``match``
(unroll, pruning mask, matching loss, backward in either mode) → the two SGD steps, on
CIFAR-shaped random data (3×32×32, 10 classes, ConvNet-3 width 128 with instance norm, DSA on,
full batch). Seconds are the median of ``--repeats`` iterations after one warm-up iteration.

    python benchmarks/distill_bench.py                      # the three MTT reference settings
    python benchmarks/distill_bench.py --ipc 1 --syn-steps 20 60 --modes memory --repeats 3
    python benchmarks/distill_bench.py --profile docs/profile.txt --ipc 10 --syn-steps 20

Nothing here is imported by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
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

    from ddpp_cli.engine import models
    from ddpp_cli.engine.augment import DSA
    from ddpp_cli.engine.device import make_generator
    from ddpp_cli.engine.functional import ParamLayout, flat_parameters
    from ddpp_cli.engine.unroll import Student, describe, match, plan_unroll

    ipc, syn_steps, mode = args.one
    ipc, syn_steps = int(ipc), int(syn_steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
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
        channels_last=args.channels_last, on_notice=notices.append,
    )  # fmt: skip
    generator = make_generator(0, "unroll")

    def iteration() -> float:
        steps = plan_unroll(len(labels), syn_steps, None, dsa, (32, 32), generator)
        opt_images.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        result = match(student, start, target, images, labels, alpha, steps, 0.1, mode)
        opt_images.step()
        opt_lr.step()
        return result.loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_mb()
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
    record = {
        "ipc": ipc,
        "syn_steps": syn_steps,
        "mode": mode,
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "median_cpu_seconds": statistics.median(cpu_seconds),  # all threads; robust to load
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": rss_before,
        "loss": loss,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_average": load,
        "notices": notices,
        "thp": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        **describe(student),
    }
    if device.type == "cuda":
        record["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def run_child(args: argparse.Namespace, ipc: int, syn_steps: int, mode: str) -> dict[str, Any]:
    """``one`` in a fresh interpreter; its record comes back as the last line of stdout."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--one", str(ipc), str(syn_steps), mode,
        "--repeats", str(args.repeats), "--device", args.device, "--amp", args.amp,
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.compile:
        command.append("--compile")
    if args.channels_last:
        command.append("--channels-last")
    if args.profile_out:
        command += ["--profile-out", args.profile_out]
    env = dict(os.environ)
    if args.thp:  # PyTorch's CPU allocator: 2 MB-aligned, madvise(MADV_HUGEPAGE) blocks
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"ipc": ipc, "syn_steps": syn_steps, "mode": mode, "error": " | ".join(tail)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(records: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, with MTT's reference figures as ratio columns."""
    by_key = {(r["ipc"], r["syn_steps"], r["mode"]): r for r in records if "error" not in r}
    lines = [
        "| IPC | N | unroll | s/it (median) | CPU s/it | × MTT s/it | peak RSS MB | × MTT RSS "
        "| unroll MB | × graph s/it | RSS / RSS at N=20 | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['ipc']} | {r['syn_steps']} | {r['mode']} | failed: {r['error']} |")
            continue
        ref = REFERENCE.get((r["ipc"], r["syn_steps"]))
        graph = by_key.get((r["ipc"], r["syn_steps"], "graph"))
        short = by_key.get((r["ipc"], 20, r["mode"]))
        cells = [
            str(r["ipc"]),
            str(r["syn_steps"]),
            r["mode"],
            f"{r['median_seconds']:.2f}",
            f"{r['median_cpu_seconds']:.2f}",
            f"{r['median_seconds'] / ref[0]:.2f}" if ref else "–",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_rss_mb'] / ref[1]:.2f}" if ref else "–",
            f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f}",
            f"{r['median_seconds'] / graph['median_seconds']:.2f}" if graph else "–",
            f"{r['peak_rss_mb'] / short['peak_rss_mb']:.2f}" if short else "–",
            "–".join(f"{v:.1f}" for v in r["load_average"]),
        ]
        if "peak_cuda_mb" in r:
            cells[5] += f" (CUDA {r['peak_cuda_mb']:.0f})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, where the measured grid allows a verdict (met, or missed by how much).

    Why a target is missed is in docs/performance.md (the profile of one iteration).
    """
    by_key = {(r["ipc"], r["syn_steps"], r["mode"]): r for r in records if "error" not in r}
    lines = []

    def line(label: str, got: float, limit: float) -> None:
        verdict = "met" if got <= limit else f"missed by {got / limit:.2f}×"
        lines.append(f"{label}: {got:.2f}× (target ≤ {limit}×): {verdict}")

    graph = by_key.get((10, 20, "graph"))
    if graph:
        line(
            "default mode s/it vs MTT at IPC 10, N 20",
            graph["median_seconds"] / REFERENCE[(10, 20)][0],
            0.6,
        )
    for ipc in sorted({r["ipc"] for r in by_key.values()}):
        short, long = by_key.get((ipc, 20, "memory")), by_key.get((ipc, 60, "memory"))
        if short and long:
            growth = long["peak_rss_mb"] / short["peak_rss_mb"]
            line(f"memory mode peak RSS, N 60 vs N 20, IPC {ipc}", growth, 1.2)
    for (ipc, n, mode), record in sorted(by_key.items()):
        base = by_key.get((ipc, n, "graph"))
        if mode == "memory" and base:
            ratio = record["median_seconds"] / base["median_seconds"]
            line(f"memory mode s/it vs graph mode at IPC {ipc}, N {n}", ratio, 1.3)
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, nargs="+", help="default: MTT's reference settings")
    parser.add_argument("--syn-steps", type=int, nargs="+", help="default: the reference's")
    parser.add_argument("--modes", nargs="+", default=["graph", "memory"])
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations after warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--thp", action="store_true", help="run the children with THP_MEM_ALLOC_ENABLE=1"
    )
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument(
        "--profile", type=Path, help="profile one iteration per configuration into PATH-<config>"
    )
    parser.add_argument("--one", nargs=3, metavar=("IPC", "N", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.one:
        print(json.dumps(one(args)))
        return
    if args.ipc is None and args.syn_steps is None:
        grid = sorted(REFERENCE)
    else:
        grid = [(i, n) for i in args.ipc or [1, 10] for n in args.syn_steps or [20, 60]]
    records = []
    for ipc, syn_steps in grid:
        for mode in args.modes:
            args.profile_out = (
                f"{args.profile}-ipc{ipc}-n{syn_steps}-{mode}.txt" if args.profile else None
            )
            record = run_child(args, ipc, syn_steps, mode)
            records.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
    print(table(records))
    for verdict in verdicts(records):
        print(verdict)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
