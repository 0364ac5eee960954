"""Issue 14's acceptance: ``ddpp run --profile quick`` at IPC 1 on every folder of the family.

Each folder (see ``make_folder_family.py``) gets

    python -m ddpp_cli run --dataset imagefolder --data-dir FOLDER --ipc 1 --profile quick \
        --out OUT/NAME/run --buffer OUT/NAME/buffer --device cpu --json

one at a time (a fresh buffer per folder: ``ddpp run`` would otherwise reuse one imagefolder
buffer for every folder), with its output in ``OUT/NAME/log.txt`` and its JSON in
``OUT/NAME/run.json``. A folder whose ``run.json`` exists is not run again, so the script can be
restarted. At the end it prints a Markdown table: distilled vs random real accuracy (same
protocol), the gain, the learned lr α (initial → final) and how long the run took; a run that
diverged says so (exit status 1 of ``ddpp run``).

    python benchmarks/folder_family_bench.py --family /tmp/ddpp-family --out /tmp/ddpp-family-runs

Nothing here is imported by the tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ddpp_cli.engine import layout

COVERING = ("gray16-c10", "rgb16-c3", "gray32-c3", "rgb32-c10", "gray64-c10", "rgb64-c3")
TARGET_GAIN = 10.0  # points over random real images (issue 14)


def run_one(folder: Path, out: Path, extra: list[str]) -> dict | None:
    """Run (or reuse) one folder's ``ddpp run``; its JSON, or None if it failed."""
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / layout.RUN_SUMMARY_NAME
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    command = [
        sys.executable, "-m", "ddpp_cli", "run", "--dataset", "imagefolder", "--data-dir",
        str(folder), "--ipc", "1", "--profile", "quick", "--out", str(out / "run"), "--buffer",
        str(out / "buffer"), "--device", "cpu", "--json", *extra,
    ]  # fmt: skip
    started = time.time()
    with open(out / "log.txt", "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
    if done.returncode != 0:
        (out / "failed.txt").write_text(f"exit status {done.returncode}\n", encoding="utf-8")
        return None
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["wall_seconds"] = time.time() - started
    result_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def first_lr(record: dict) -> float | None:
    metrics = Path(record["distill"]["metrics"])
    if not metrics.is_file():
        return None
    first = json.loads(metrics.read_text(encoding="utf-8").splitlines()[0])
    return first.get("lr")


def table(rows: list[tuple[str, dict | None]]) -> str:
    lines = [
        "| folder | distilled (3 runs) | random real | gain | α start → end | diverged | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, record in rows:
        if record is None:
            lines.append(f"| {name} | failed (see its log.txt) | | | | yes? | |")
            continue
        distilled, baseline = record["distilled"], record["random_baseline"]
        gain = record["gain"]
        start = first_lr(record)
        alpha = f"{start:.4g} → {record['distill']['final_lr']:.4g}" if start else "–"
        mark = "**" if 100 * gain >= TARGET_GAIN else ""
        lines.append(
            f"| {name} | {100 * distilled['mean']:.1f} ± {100 * distilled['std']:.1f} % "
            f"| {100 * baseline['mean']:.1f} ± {100 * baseline['std']:.1f} % "
            f"| {mark}{100 * gain:+.1f}{mark} | {alpha} | no | "
            f"{record.get('wall_seconds', record['seconds']):.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", type=Path, required=True, help="make_folder_family.py --out")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("extra", nargs="*", help="more ddpp run options, after --")
    args = parser.parse_args()
    rows = []
    for name in args.only or COVERING:
        record = run_one(args.family / name, args.out / name, args.extra)
        rows.append((name, record))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
