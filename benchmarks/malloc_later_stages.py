"""What the distillation loop's malloc setting does to the stages after it (docs/performance.md).

``ddpp run`` trains evaluation networks after the distillation loop, in the same process. The
loop sets glibc's malloc to keep freed memory (``allocator.freed_memory_kept``); glibc turns its
dynamic mmap/trim thresholds off for good at the first ``mallopt``, so a later stage runs under
neither the loop's setting nor malloc's pristine defaults. This script measures a later stage
(training ConvNet-3 networks on Fashion-MNIST-shaped data, as evaluation and buffer training do)
in a fresh process per state of malloc:

- ``pristine``: malloc never touched (what ``ddpp evaluate`` alone runs under);
- ``restored``: what ddpp did before: the loop's setting, then malloc's default parameters set
  back (``M_MMAP_MAX`` 65536, ``M_TRIM_THRESHOLD`` 128 KiB) and the heap trimmed — with glibc's
  dynamic thresholds left off, since no call turns them on again;
- ``after-loop``: after a block of ``freed_memory_kept`` that allocated and freed a
  distillation-sized graph (``--graph-gb``), as in ``ddpp run`` after its distillation now;
- ``kept``: freed memory kept for the whole process (no mmap, no trimming).

Each row: wall, user and system seconds and minor page faults of the stage alone, and the
process's resident memory when it ends (medians over
``--repeats`` fresh processes). Run it on an idle machine:

    python benchmarks/malloc_later_stages.py --repeats 3

Nothing here is imported by the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

STATES = ("pristine", "restored", "after-loop", "kept")

CHILD = r"""
import json, resource, sys, time
import torch
from ddpp_cli.engine import allocator, models

state, graph_gb = sys.argv[1], float(sys.argv[2])
images, epochs = int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
def graph():
    blocks = [torch.empty(13 * 2**20) for _ in range(int(graph_gb * 2**30 / (52 * 2**20)))]
    for block in blocks:
        block.fill_(1.0)

if state == "restored":
    libc = allocator.glibc()
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD
    graph()
    libc.mallopt(-4, 65536)
    libc.mallopt(-1, 128 * 1024)
    libc.malloc_trim(0)
elif state == "after-loop":
    with allocator.freed_memory_kept({}):
        graph()
elif state == "kept":
    allocator.keep_freed_memory()
x = torch.randn(images, 1, 28, 28)
y = torch.randint(0, 10, (images,))
test = torch.randn(10000, 1, 28, 28)
usage = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
for run in range(2):
    net = models.create("convnet", 1, 10, (28, 28))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(epochs):
        for i in range(0, images, 256):
            loss = torch.nn.functional.cross_entropy(net(x[i:i + 256]), y[i:i + 256])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        for i in range(0, len(test), 500):
            net(test[i:i + 500])
wall = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "wall": wall, "user": after.ru_utime - usage.ru_utime, "sys": after.ru_stime - usage.ru_stime,
    "faults": after.ru_minflt - usage.ru_minflt,
    "rss_gb": int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**30,
}))
"""


def measure(state: str, args: argparse.Namespace) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            state,
            str(args.graph_gb),
            str(args.images),
            str(args.epochs),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--graph-gb", type=float, default=4.0, help="the loop's graph, GB")
    parser.add_argument("--images", type=int, default=2000, help="training images per network")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    results: dict[str, list[dict[str, float]]] = {state: [] for state in STATES}
    for _ in range(args.repeats):
        for state in STATES:  # interleaved, so drifting load hits every state alike
            results[state].append(measure(state, args))
    print(f"# {started}; 2 networks × {args.epochs} epochs × {args.images} images + 10,000 tests")
    print("| malloc state | wall s | user s | system s | minor faults | RSS after, GB |")
    print("|---|---|---|---|---|---|")
    for state, rows in results.items():
        cell = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"| {state} | {cell['wall']:.2f} | {cell['user']:.2f} | {cell['sys']:.2f} | "
            f"{cell['faults']:,.0f} | {cell['rss_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()
