"""Every GPU ratio that issue 15, docs/performance.md and docs/parallel.md claim, in one command.

On a machine with CUDA, in under 8 minutes (``--budget``, default 450 s; every step is skipped
with a message once the time left would not cover it), this prints:

- distillation at IPC 10, N 20 (CIFAR-shaped random data, ConvNet-3, DSA, one GPU): the memory
  mode against the graph mode (time and peak CUDA memory), and the memory mode's peak at N 60
  against N 20;
- the execution options against the plain graph mode: ``--amp bf16``, ``--channels-last``,
  ``--compile`` (its compile time is inside its warm-up iteration, not in the timed ones);
- with ``--mtt DIR`` (a checkout of MTT): ddpp's graph and memory modes against MTT's own
  ``distill.py`` on the same GPU (``benchmarks/distill_bench.py --mtt``);
- distillation on 1 GPU against all GPUs of the machine (torchrun, one rank per GPU), when
  there are at least two;
- ``--parallel K`` for buffer and evaluation: experts per hour and evaluation runs per hour,
  batched against one network at a time (``benchmarks/parallel_bench.py``).

Without CUDA it says so and exits (status 0). ``--device cpu --tiny`` runs the same steps on
tiny settings on the CPU, to check the script itself; its figures mean nothing.

    python benchmarks/gpu_check.py --mtt ../mtt-distillation --json gpu-check.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_bench  # the sibling script, for its child runners

HERE = Path(__file__).resolve().parent


class Clock:
    """The time left of the budget; a step runs only when its estimate fits."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, label: str, needed: float) -> bool:
        if self.left() >= needed:
            return True
        print(f"skipped: {label} (needs ~{needed:.0f} s, {max(self.left(), 0):.0f} s left)")
        return False


def bench_args(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    """The options distill_bench's child runners read: its own defaults (so none is missing),
    then this check's."""
    values = vars(distill_bench.parse([]))
    values.update(
        repeats=args.repeats, device=args.device, threads=0, amp="off", compile=False,
        channels_last=False, thp=False, profile_out=None, mtt=args.mtt,
    )  # fmt: skip
    values.update(changes)
    return argparse.Namespace(**values)


def seconds(record: dict[str, Any]) -> float | None:
    return None if "error" in record else float(record["median_seconds"])


def memory(record: dict[str, Any]) -> float | None:
    if "error" in record:
        return None
    return float(record.get("peak_cuda_mb", record["peak_rss_mb"]))


def ratio(label: str, numerator: float | None, denominator: float | None, claim: str) -> dict:
    """Print one ratio (or why it is missing) and return it as a record."""
    if numerator is None or denominator is None:
        print(f"{label}: not measured")
        return {"label": label, "ratio": None, "claim": claim}
    value = numerator / denominator
    print(f"{label}: {value:.2f}×   ({claim})")
    return {"label": label, "ratio": value, "claim": claim}


def measure(
    args: argparse.Namespace, clock: Clock, runs: dict, plan: list, ipc: int, n: int
) -> None:
    """Run the distillation configurations of ``plan`` (name, options, N, mode, seconds) that
    the budget allows into ``runs``; "mtt" runs MTT's distill.py."""
    for name, options, steps, mode, needed in plan:
        if name == "mtt" and not args.mtt:
            continue
        if not clock.allows(f"distill {name}", needed):
            continue
        limit = min(clock.left(), needed * 3)
        if name == "mtt":
            runs[name] = distill_bench.run_mtt(bench_args(args), ipc, steps, 0, timeout=limit)
        else:
            runs[name] = distill_bench.run_child(options, ipc, steps, mode, timeout=limit)
        report(name, runs[name])


def distill_ratios(args: argparse.Namespace, runs: dict, ipc: int, n: int) -> list[dict]:
    """One GPU: graph vs memory, N 60 vs N 20 memory, bf16 / channels-last / compile, MTT."""
    graph = runs.get("graph", {"error": "skipped"})

    def t(name: str) -> float | None:
        return seconds(runs.get(name, {"error": "skipped"}))

    def m(name: str) -> float | None:
        return memory(runs.get(name, {"error": "skipped"}))

    where = f"IPC {ipc}, N {n}"
    results = [
        ratio(f"memory vs graph s/it ({where})", t("memory"), seconds(graph), "target ≤ 1.25×"),
        ratio(f"memory vs graph peak memory ({where})", m("memory"), memory(graph), "< 1×"),
        ratio(
            f"memory mode peak memory, N {3 * n} vs N {n}",
            m("memory N60"),
            m("memory"),
            "target ≤ 1.2×",
        ),
        ratio(f"bf16 vs float32 s/it ({where})", t("bf16"), seconds(graph), "< 1× expected"),
        ratio(
            f"channels-last vs default s/it ({where})",
            t("channels-last"),
            seconds(graph),
            "< 1× expected",
        ),
        ratio(f"compile vs eager s/it ({where})", t("compile"), seconds(graph), "< 1× expected"),
    ]
    if args.mtt:
        results += [
            ratio(
                f"ddpp graph vs MTT s/it ({where}, one device)",
                seconds(graph),
                t("mtt"),
                "target ≤ 1.0×",
            ),
            ratio(f"ddpp memory vs MTT s/it ({where}, one device)", t("memory"), t("mtt"), "–"),
            ratio(f"ddpp graph vs MTT peak memory ({where})", memory(graph), m("mtt"), "≤ 1×"),
        ]
    else:
        print("MTT: not compared (pass --mtt DIR, a checkout of mtt-distillation)")
    return results


def report(name: str, record: dict[str, Any]) -> None:
    if "error" in record:
        print(f"  {name}: failed: {record['error']}", flush=True)
    else:
        print(f"  {name}: {record['median_seconds']:.3f} s/it", flush=True)


def multi_gpu_ratio(args: argparse.Namespace, clock: Clock, ipc: int, n: int) -> list[dict]:
    """Distillation on 1 GPU against one rank per GPU (torchrun)."""
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else args.cpu_ranks
    if gpus < 2:
        print("1 vs all GPUs: this machine has one GPU; needs at least two, skipped")
        return []
    records = {}
    for layout in ("1x1", f"{gpus}x1"):
        if not clock.allows(f"distill on layout {layout}", 90):
            return []
        options = bench_args(args, threads=1)
        records[layout] = distill_bench.run_child(
            options, ipc, n, "graph", layout, timeout=min(clock.left(), 300)
        )
        report(layout, records[layout])
    one, every = seconds(records["1x1"]), seconds(records[f"{gpus}x1"])
    result = ratio(f"distill speed, {gpus} GPUs vs 1 (IPC {ipc}, N {n})", one, every,
                   f"ideal {gpus}×")  # fmt: skip
    return [{"runs": records}, result]


def parallel_ratios(args: argparse.Namespace, clock: Clock) -> list[dict]:
    """``--parallel K`` for buffer and evaluation (benchmarks/parallel_bench.py)."""
    if not clock.allows("--parallel K (parallel_bench.py)", 60):
        return []
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "parallel.json"
        command = [
            sys.executable, str(HERE / "parallel_bench.py"), "--device", args.device,
            "--ks", "2" if args.tiny else "2,4,8", "--json", str(out),
        ]  # fmt: skip
        if args.tiny:
            command += ["--eval-epochs", "1"]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True,
                           timeout=max(clock.left(), 1))  # fmt: skip
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as error:
            print(f"--parallel K: failed ({type(error).__name__})")
            return []
        rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    results = []
    for row in rows:
        if row.get("batched"):
            for key, what in (("expert_speedup", "experts/h"), ("eval_speedup", "eval runs/h")):
                value = row[key]
                print(f"--parallel {row['k']} vs 1, {what}: {value:.2f}×")
                results.append({"label": f"--parallel {row['k']} {what}", "ratio": value})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mtt", type=Path, help="a checkout of mtt-distillation")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for everything")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per run")
    parser.add_argument("--tiny", action="store_true", help="IPC 1, N 2, 1 repeat: a dry run")
    parser.add_argument("--cpu-ranks", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write every record and ratio here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; it measures GPU ratios only, so there is nothing "
            "to do. (Use --device cpu --tiny to dry-run the script.)"
        )
        return
    if args.device == "cpu" and not args.tiny:
        raise SystemExit("gpu_check: --device cpu is for a dry run; add --tiny")
    if args.tiny:
        args.repeats = 1
    ipc, n = (1, 2) if args.tiny else (10, 20)
    clock = Clock(args.budget)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU (dry run)"
    print(f"gpu_check on {name}, torch {torch.__version__}, budget {args.budget:.0f} s")
    runs: dict[str, dict[str, Any]] = {}
    first = [  # the ratios the targets need, before the optional ones
        ("graph", bench_args(args), n, "graph", 60),
        ("memory", bench_args(args), n, "memory", 60),
        ("mtt", None, n, "mtt", 90),
    ]
    then = [
        ("bf16", bench_args(args, amp="bf16"), n, "graph", 60),
        ("channels-last", bench_args(args, channels_last=True), n, "graph", 60),
        ("memory N60", bench_args(args), 3 * n, "memory", 90),
        ("compile", bench_args(args, compile=True), n, "graph", 240),  # compiling is slow
    ]
    measure(args, clock, runs, first, ipc, n)
    others = multi_gpu_ratio(args, clock, ipc, n)
    others += parallel_ratios(args, clock)
    measure(args, clock, runs, then, ipc, n)
    print()
    results = [{"runs": runs}, *distill_ratios(args, runs, ipc, n), *others]
    print(f"done, {args.budget - clock.left():.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
