"""Experts per hour and evaluation runs per hour: one network at a time versus ``--parallel K``.

Times the engine's own training loops on Fashion-MNIST-shaped random data (1×28×28, 10 classes,
DSA on) and extrapolates to the full protocols:

- expert (``ddpp buffer``): SGD lr 0.01, batch 256; one expert = 50 epochs of 60,000 images
  (235 steps each) plus a 10,000-image test pass per epoch. Timed on ``--expert-steps`` steps.
- evaluation run (``ddpp evaluate``) at IPC 10: 100 images, batch 256 (one step per epoch),
  SGD momentum 0.9; one run = 1000 epochs plus one 10,000-image test pass. Timed on
  ``--eval-epochs`` epochs.

"sequential" is what ``--parallel 1`` runs (``training.train_epoch``, one network after the
other); "batched K" is what ``--parallel K`` runs (``batched.train_epoch`` over K stacked
networks, vmap); ``--ks 1`` adds the vmap machinery alone. Each configuration is timed after one
untimed warm-up step; every timed step trains all K networks. Prints a table and
writes JSON. Example (the command behind docs/parallel.md):

    OMP_NUM_THREADS=1 python benchmarks/parallel_bench.py --threads 1 --json parallel-bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ddpp_cli.engine import augment, batched, models
from ddpp_cli.engine.device import resolve_device, seeded
from ddpp_cli.engine.training import predict, train_epoch

CHANNELS, SIZE, CLASSES = 1, 28, 10
TRAIN_IMAGES, TEST_IMAGES, BATCH = 60_000, 10_000, 256
EXPERT_EPOCHS, EVAL_EPOCHS, EVAL_IMAGES = 50, 1000, 100
TEST_PROBE = 128  # test images timed per configuration, scaled to the 10,000 of a real pass


def forward_flops(arch: str) -> float:
    """Multiply-adds ×2 of one forward pass of one image (convolutions and linear layers)."""
    model = models.create(arch, CHANNELS, CLASSES, SIZE)
    total = 0.0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += 2.0 * output[0].numel() * kernel
        elif isinstance(module, nn.Linear):
            total += 2.0 * module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, CHANNELS, SIZE, SIZE))
    for handle in handles:
        handle.remove()
    return total


def networks(arch: str, count: int, device: torch.device) -> list[nn.Module]:
    result = []
    for k in range(count):
        with seeded(k):
            result.append(models.create(arch, CHANNELS, CLASSES, SIZE).to(device))
    return result


def random_data(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, CHANNELS, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return images.to(device), labels.to(device)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(step: Callable[[], object], repeats: int, warm_up: Callable[[], object] | None) -> float:
    """Seconds per call of ``step`` (after one call of ``warm_up``, which is not timed)."""
    if warm_up is not None:
        warm_up()
    synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize()
    return (time.perf_counter() - started) / repeats


def measure(
    arch: str, k: int, images: torch.Tensor, labels: torch.Tensor, options: dict, repeats: int
) -> tuple[float, float]:
    """(train seconds per network-epoch over ``images``, test seconds per network-image)."""
    device = images.device
    dsa = augment.DSA(augment.DEFAULT_STRATEGY)
    test = random_data(TEST_PROBE, 99, device)[0]
    first = (images[:BATCH], labels[:BATCH])  # one step to warm up
    if k == 0:  # sequential: one network at a time, as --parallel 1
        (net,) = networks(arch, 1, device)
        optimizer = torch.optim.SGD(net.parameters(), **options)
        generator = torch.Generator().manual_seed(0)

        def epoch(x: torch.Tensor, y: torch.Tensor) -> float:
            return train_epoch(net, x, y, optimizer, batch_size=BATCH, dsa=dsa, generator=generator)

        train = timed(lambda: epoch(images, labels), repeats, lambda: epoch(*first))
        test_seconds = timed(lambda: predict(net, test), 1, None)
        return train, test_seconds / TEST_PROBE
    stacked = batched.StackedNetworks(networks(arch, k, device))
    optimizer = torch.optim.SGD(stacked.parameters(), **options)
    generators = [torch.Generator().manual_seed(i) for i in range(k)]

    def batched_epoch(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        return batched.train_epoch(
            stacked, [(x, y)] * k, optimizer, batch_size=BATCH, dsa=dsa, generators=generators
        )

    train = timed(lambda: batched_epoch(images, labels), repeats, lambda: batched_epoch(*first))
    test_seconds = timed(lambda: stacked.predict(test), 1, None)
    return train / k, test_seconds / (k * TEST_PROBE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="2,4,8", help="numbers K of networks batched together")
    parser.add_argument("--arch", default="convnet")
    parser.add_argument("--expert-steps", type=int, default=1, help="training steps timed (×256)")
    parser.add_argument("--eval-epochs", type=int, default=2, help="evaluation epochs timed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", type=Path, default=Path("parallel-bench.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    flops = forward_flops(args.arch)
    load_before = os.getloadavg()

    rows = []
    device = resolve_device(args.device)
    expert_data = random_data(BATCH * args.expert_steps, 1, device)
    eval_data = random_data(EVAL_IMAGES, 2, device)
    expert_options = {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0}
    eval_options = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    steps_per_epoch = math.ceil(TRAIN_IMAGES / BATCH)
    for k in [0, *ks]:
        label = "sequential" if k == 0 else f"batched K={k}"  # sequential = --parallel 1
        train, test = measure(args.arch, k, *expert_data, expert_options, repeats=1)
        expert_seconds = EXPERT_EPOCHS * (
            train / args.expert_steps * steps_per_epoch + test * TEST_IMAGES
        )
        epoch, test = measure(args.arch, k, *eval_data, eval_options, repeats=args.eval_epochs)
        run_seconds = EVAL_EPOCHS * epoch + test * TEST_IMAGES
        rows.append(
            {
                "mode": label,
                "k": max(k, 1),
                "batched": k > 0,
                "expert_step_seconds_per_network": train / args.expert_steps,
                "experts_per_hour": 3600 / expert_seconds,
                "eval_epoch_seconds_per_network": epoch,
                "eval_runs_per_hour": 3600 / run_seconds,
                "train_gflops": 3 * flops * BATCH / (train / args.expert_steps) / 1e9,
            }
        )
        print(f"  {label:<12} done", flush=True)
    base = rows[0]
    for row in rows:
        row["expert_speedup"] = row["experts_per_hour"] / base["experts_per_hour"]
        row["eval_speedup"] = row["eval_runs_per_hour"] / base["eval_runs_per_hour"]
    best_expert = max(rows[1:], key=lambda r: r["expert_speedup"])
    best_eval = max(rows[1:], key=lambda r: r["eval_speedup"])
    load_after = os.getloadavg()

    print()
    print(
        f"{args.arch}, 1×28×28, 10 classes, DSA on, {device}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; forward {flops / 1e6:.1f} MFLOP per image per network"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    header = (
        f"| {'mode':<12} | s/step/net (256) | experts/h | speed-up | s/epoch/net (IPC 10) "
        f"| eval runs/h | speed-up | train GFLOP/s |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['mode']:<12} | {r['expert_step_seconds_per_network']:>16.3f} "
            f"| {r['experts_per_hour']:>9.3f} | {r['expert_speedup']:>7.2f}× "
            f"| {r['eval_epoch_seconds_per_network']:>20.3f} | {r['eval_runs_per_hour']:>11.2f} "
            f"| {r['eval_speedup']:>7.2f}× | {r['train_gflops']:>13.1f} |"
        )
    targets = {
        "experts": (best_expert["expert_speedup"], 1.5),
        "evaluation runs": (best_eval["eval_speedup"], 2.0),
    }
    for what, (got, want) in targets.items():
        verdict = "meets" if got >= want else f"falls short by {want / got:.2f}×"
        print(f"best {what} speed-up {got:.2f}× vs target {want:.1f}×: {verdict}")
    payload = {
        "arch": args.arch,
        "image_shape": [CHANNELS, SIZE, SIZE],
        "classes": CLASSES,
        "forward_flops_per_image": flops,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "expert_steps_timed": args.expert_steps,
        "eval_epochs_timed": args.eval_epochs,
        "rows": rows,
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
