"""Devices and seeding: one user seed drives every random draw through torch.Generator objects."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ddpp_cli.engine.errors import DdppError

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a usable device, or raise a DdppError."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise DdppError("device 'mps' is not available here; use --device cpu or auto.")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DdppError(f"device '{spec}' is not available here; use --device cpu or auto.")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise DdppError(
                f"device '{spec}' does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
        return torch.device(spec)
    raise DdppError(f"unknown device '{spec}'; choose one of: {DEVICE_CHOICES}.")


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and any keys (e.g. "expert", 3).

    Streams derived with different keys are independent, and the same keys always give the same
    stream, so a stage can be resumed or split across processes without changing its draws.
    """
    text = "/".join([str(seed), *map(str, keys)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def make_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded from ``derive_seed(seed, *keys)``.

    Random draws are made on the CPU and moved to the compute device, so a seed gives the same
    run on every device.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(seed, *keys))
    return generator


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. a model constructor) under a fixed global CPU seed, restoring it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
