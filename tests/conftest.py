"""Shared fixtures: tiny generated datasets (never downloads) and the real Debian files; one torch
thread per pytest-xdist worker."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker runs torch on one thread: the workers share the cores (no OpenMP
    threads spin-waiting on each other), and tiny tensors run fastest on one thread anyway."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


# ConvNet-3 (width 128, instance norm) on 1×8×8 images: 3 convolutions 3×3 with biases, 2 affine
# norm parameters per channel each, and a classifier over 128 features of 1×1 (8 → 4 → 2 → 1).
CONVNET_8PX_PARAMETERS = (
    (1 * 9 * 128 + 128) + 2 * (128 * 9 * 128 + 128) + 3 * 2 * 128 + (128 * 10 + 10)
)


def write_idx(path: Path, array: torch.Tensor, gz: bool = True) -> None:
    """Write a uint8 tensor as an IDX file (the MNIST container format)."""
    array = array.to(torch.uint8).contiguous()
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    payload = header + array.numpy().tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def synthetic_digits(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Easy 28×28 images: class k is a bright bar at row 2k+4, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 28, 28, generator=generator) * 60
    for i, k in enumerate(labels.tolist()):
        images[i, 2 * k + 4 : 2 * k + 7, 4:24] += 180
    return images.clamp(0, 255), labels


def make_mnist_folder(folder: Path, train_per_class: int = 10, test_per_class: int = 5) -> Path:
    """A folder with the four (gzipped) MNIST IDX files of synthetic digits."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, per_class, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        images, labels = synthetic_digits(per_class, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def assert_one_line_error(result, *fragments: str) -> None:
    """A CLI result that failed as user errors must: status 2, one ``error:`` line naming every
    fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A session-wide tiny MNIST-format folder (100 train, 50 test images)."""
    return make_mnist_folder(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture(scope="session")
def tiny_buffer(tiny_mnist, tmp_path_factory) -> Path:
    """Two experts × 3 epochs on the tiny MNIST folder resized to 8×8 (a fast ConvNet-3), trained
    once per session on one thread; tests read it and never write into it."""
    from ddpp_cli.engine.buffer import BufferConfig

    config = BufferConfig(dataset="mnist", experts=2, epochs=3, batch_size=64, image_size=8)
    return _one_thread_buffer(config, tmp_path_factory.mktemp("tiny-buffer"), tiny_mnist)


@pytest.fixture(scope="session")
def good_buffer(tiny_mnist, tmp_path_factory) -> Path:
    """Two experts × 4 epochs at lr 0.02, batch 10, 8×8: they classify most tiny digits correctly
    (``tiny_buffer`` classifies too few to pick a real image per class, as DATM's labels need);
    trained once per session on one thread; tests read it and never write into it."""
    from ddpp_cli.engine.buffer import BufferConfig

    config = BufferConfig(
        dataset="mnist", experts=2, epochs=4, batch_size=10, lr=0.02, image_size=8
    )
    return _one_thread_buffer(config, tmp_path_factory.mktemp("good-buffer"), tiny_mnist)


def _one_thread_buffer(config, folder: Path, data_root: Path) -> Path:
    """``config``'s buffer trained into ``folder``, one thread (same bits on any core count)."""
    from ddpp_cli.engine.buffer import train_buffer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_buffer(config, folder, data_root=data_root, download=False)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture
def fashion_mnist_dir() -> Path:
    """Debian's Fashion-MNIST files; skipped where the package is not installed."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny tensors run fastest on one thread (no OpenMP spin-waiting on a busy machine), and a fixed
    thread count keeps CPU results bit-identical between the runs that resume tests compare.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path, monkeypatch):
    """Keep platformdirs' default folders inside the test's tmp dir."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


_SIGNALLING_CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from ddpp_cli.cli import main
from ddpp_cli.engine import buffer as buffer_engine, evaluate
from ddpp_cli.commands import {module} as commands

class Signalling(commands.{display}):
    def __call__(self, event):
        super().__call__(event)
        if {when}:
            print({message!r}, flush=True)
            time.sleep(600)  # until the SIGKILL

commands.{display} = Signalling
sys.argv = ["ddpp", *sys.argv[1:]]
main()
"""


def kill_ddpp_when(args: list[str], *, display: str, when: str, message: str) -> None:
    """Run ``ddpp ARGS`` in a child process whose ``display`` (``"buffer.BufferDisplay"``, a
    class of ``ddpp_cli.commands``) prints ``message`` once ``when`` holds (an expression of
    ``event``, ``evaluate`` and ``buffer_engine``) and then waits; SIGKILL it there. The kill lands
    at that point by construction, not by timing; the test fails if the child never says it."""
    module, cls = display.split(".")
    source = _SIGNALLING_CHILD.format(module=module, display=cls, when=when, message=message)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = [sys.executable, "-c", source, *map(str, args)]
    process = subprocess.Popen(
        child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    said = process.stdout.readline()  # "" if the child ends without saying it
    if said.strip() != message:
        process.kill()
        pytest.fail(f"the child never said {message!r}: {said!r} {process.communicate()}")
    process.send_signal(signal.SIGKILL)
    process.wait()


def _without_timing(records: list[dict], timing: tuple[str, ...]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in timing} for record in records]


def _identical(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bit for bit, a NaN matching a NaN (a set without a learned lr stores NaN)."""
    if torch.equal(x, y):
        return True
    if x.shape != y.shape or x.dtype != y.dtype or not x.is_floating_point():
        return False
    inf = float("inf")
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(
        x.nan_to_num(0.0, inf, -inf), y.nan_to_num(0.0, inf, -inf)
    )


def ctrl_c_after(iteration: int):
    """An ``on_event`` for a distillation that presses Ctrl-C once ``iteration`` has finished."""
    from ddpp_cli.engine import distill

    def interrupt(event: object) -> None:
        if isinstance(event, distill.IterationFinished) and event.iteration == iteration:
            raise KeyboardInterrupt

    return interrupt


def assert_same_run(a: Path, b: Path) -> None:
    """Two distillation run folders are the same run bit for bit, timings aside: the current set,
    every checkpoint tensor (momentum and generator states included) and its metadata (the config
    may differ in what a resume may change), every metrics line (no line twice) and the best
    set."""
    from ddpp_cli.engine import distill, store

    formats = (store.DISTILLED_FORMAT, store.DISTILLED_FORMAT_V2)  # hard labels, label vectors
    first, second = (store.read(f / distill.DISTILLED_NAME, formats) for f in (a, b))
    assert first.tensors.keys() == second.tensors.keys()
    assert all(_identical(first.tensors[k], second.tensors[k]) for k in first.tensors)
    ca, cb = (store.read(f / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT) for f in (a, b))
    method = (ca.metadata.get("config") or {}).get("method", "tm")
    kept = {"momentum_lr", "rng_unroll"} if method == "tm" else {"rng_matching"}
    adam = distill.get_method(method).optimizer == "adam"  # kip: Adam's state, not momentum
    assert {"adam_images_exp_avg" if adam else "momentum_images", *kept} <= ca.tensors.keys()
    assert ca.tensors.keys() == cb.tensors.keys()
    assert all(torch.equal(ca.tensors[k], cb.tensors[k]) for k in ca.tensors)
    meta_timing = ("config", "elapsed_seconds")
    assert _without_timing([ca.metadata], meta_timing) == _without_timing(
        [cb.metadata], meta_timing
    )
    la, lb = ([json.loads(x) for x in (f / distill.METRICS_NAME).read_text().splitlines()]
              for f in (a, b))  # fmt: skip
    assert [line["iteration"] for line in lb] == list(range(len(lb)))  # no line twice
    assert _without_timing(la, ("seconds", "elapsed")) == _without_timing(
        lb, ("seconds", "elapsed")
    )
    assert (a / distill.BEST_NAME).is_file() == (b / distill.BEST_NAME).is_file()
    if (a / distill.BEST_NAME).is_file():
        best_a, best_b = (store.read(f / distill.BEST_NAME, formats) for f in (a, b))
        assert torch.equal(best_a.tensors["images"], best_b.tensors["images"])
        changeable = distill.CHANGEABLE_ON_RESUME  # e.g. a resume's longer --iterations
        settings_a, settings_b = (
            {k: v for k, v in best.metadata.get("settings", {}).items() if k not in changeable}
            for best in (best_a, best_b)
        )
        assert settings_a == settings_b
        assert _without_timing([best_a.metadata], ("settings",)) == _without_timing(
            [best_b.metadata], ("settings",)
        )


@pytest.fixture
def wide_console(monkeypatch):
    """The CLI's console 200 columns wide for the test: its width is fixed when
    ``commands._display`` is imported (from COLUMNS, which pytest-xdist's workers set to 80), so
    ``CliRunner(env={"COLUMNS": ...})`` cannot widen it and long table cells would wrap."""
    from ddpp_cli.commands import _display

    monkeypatch.setattr(_display.out, "width", 200)
