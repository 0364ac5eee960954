"""Parity of ddpp's DATM labels and soft-label unroll with DATM's own ``distill/DATM.py``.

    PYTHONPATH=. python benchmarks/datm_parity.py --datm DIR   # DIR: a NUS-HPC-AI-Lab/DATM checkout

DATM's ``main(args)`` is imported from DIR (not copied) and run for one iteration
(``Iteration=0``) in float64 on a tiny fixture: 3 classes of 12 RGB 16×16 images (a class
pattern plus noise; :data:`OUTLIERS` show another class's), and a buffer in DATM's layout
(``<buffer>/FIXTURE/ConvNet/replay_buffer_<n>.pt``, 2 files × 2 experts × 5 snapshots, trained
here in float32 with ddpp's ``convnet-d3`` and stored as float64, so ddpp's float32 import of it
is exact; expert 0 learns class 2 as class 1, so that class falls back to expert 1; the last
expert is untrained, so the label average drops wrong experts). Settings: ``pix_init:
samples_predicted_correctly``, IPC 2, ``syn_steps`` 4, ``batch_syn`` 4 (chunks of 2 and 4),
``Sequential_Generation`` on, threshold 10 (the step is taken), no evaluation
(``skip_first_eva``, ``eval_it`` past the iteration), ``parall_eva`` (else DATM hard-codes
``cuda:0``). Eight runs: DSA off, each DSA op alone, and DATM's default strategy (its
``ParamDiffAug``; the draws recorded and turned into ddpp's parameters,
:func:`datm_augmentations`).

DATM is not edited; its run is recorded through its module's globals: ``torch`` becomes a view
of torch whose ``randperm`` records its outputs (DATM's minibatches; its torch RNG is reseeded
from the clock by ``get_network``), whose ``optim.SGD`` records each parameter at construction
and its ``.grad`` at ``step()``, whose ``cuda`` reports no GPU (everything on the CPU), and whose
``randn`` gives the default dtype where DATM asks for float32 (the noise start of ``image_syn``,
every row of which the selected real images overwrite); ``np.random.permutation`` records the
candidate order per class; ``random.shuffle`` records which expert the iteration takes;
``get_dataset`` is the fixture. In ``utils/utils_baseline.py`` (DiffAugment), ``torch.rand`` and
``torch.randint`` record their outputs and ``torch.tensor(..., dtype=torch.float)`` gives the
default dtype (the scale and rotate matrices; float32 ones would not meet float64 images).

Stubbed modules (made at run time, only where not installed, wandb always): ``wandb`` (a
recorder: ``init(config=...)`` exposes ``config._items``, ``log`` keeps Grand_Loss and
Start_Epoch), ``tqdm`` (the identity), ``kornia`` (ZCA in ``get_dataset``, replaced),
``scipy.ndimage.interpolation`` (``rotate`` of DC's non-DSA augmentation, evaluation only),
``yacs.config.CfgNode`` (an attribute dict, DATM's default config), ``yaml`` (imported, unused).
None of them computes anything the compared values depend on.

ddpp then computes the same iteration with its engine (``Student``, ``unroll.match`` with
learned labels, both unroll modes; the minibatches and DSA parameters DATM drew; the expert and
start epoch DATM took, read through ddpp's MTT-buffer import) and its teacher labels
(``teacher.select_correct`` on DATM's candidate order, ``teacher.teacher_logits`` on DATM's
images). Prints max absolute and max relative difference (|ddpp − DATM| / max |DATM|) of each;
exits 1 above 1e-6.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import io
import random
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpp_cli.engine import models
from ddpp_cli.engine.augment import DEFAULT_STRATEGY, DSA, DSAParams
from ddpp_cli.engine.buffer.mtt_import import flatten_mtt_epoch, load_mtt_file, mtt_files
from ddpp_cli.engine.distill import teacher
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.student import Student, UnrollStep
from ddpp_cli.engine.unroll import match

TOLERANCE = 1e-6
CLASSES, CHANNELS, SIZE, PER_CLASS = 3, 3, 16, 12
IPC, SYN_STEPS, BATCH_SYN, EXPERT_EPOCHS, LR_TEACHER = 2, 4, 4, 2, 0.01
FILES, EXPERTS, SNAPSHOTS = 2, 2, 5
EXPERT_LRS = (0.005, 0.01, 0.02, 0.0)  # per expert in file order; the last stays untrained
# Expert 0 learns class 2 as class 1: class 2's images come from the next expert (DATM.py 218-225).
CONFUSED = (2, 1)
# The first candidate of each class in DATM's draw (np.random.seed(0), DATM.py 23-33, 127-129),
# mislabelled, so that the selection has to pass it over.
OUTLIERS = (6, 17, 30)
DATASET, MODEL, ARCH = "FIXTURE", "ConvNet", "convnet-d3"  # DATM's ConvNet: depth 3, width 128


# ------------------------------------------------------------------------------ the fixture


@dataclass(frozen=True)
class Fixture:
    """The real images (float64, values exact in float32) and their class indices."""

    images: torch.Tensor
    labels: torch.Tensor


def make_fixture() -> Fixture:
    """PER_CLASS images per class (classes in blocks): the class's random pattern plus noise;
    the :data:`OUTLIERS` show the next class's pattern (experts that do not learn them by heart
    misclassify them)."""
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randn(CLASSES, CHANNELS, SIZE, SIZE, generator=generator)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    shown = labels.clone()
    shown[list(OUTLIERS)] = (labels[list(OUTLIERS)] + 1) % CLASSES
    noise = torch.randn(len(labels), CHANNELS, SIZE, SIZE, generator=generator)
    return Fixture((patterns[shown] + 0.5 * noise).double(), labels)


def train_experts(fixture: Fixture) -> list[list[list[list[torch.Tensor]]]]:
    """files → experts → snapshots → parameter tensors (DATM's buffer layout): plain SGD on the
    fixture in float32, one snapshot before training and one after each epoch."""
    images = fixture.images.float()
    trained = []
    for number, lr in enumerate(EXPERT_LRS):
        labels = fixture.labels.clone()
        if number == 0:
            labels[labels == CONFUSED[0]] = CONFUSED[1]
        torch.manual_seed(100 + number)
        net = models.create(ARCH, CHANNELS, CLASSES, SIZE)
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        generator = torch.Generator().manual_seed(200 + number)
        snapshots = [[p.detach().clone() for p in net.parameters()]]
        for _ in range(SNAPSHOTS - 1):
            for rows in torch.randperm(len(labels), generator=generator).split(6):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(images[rows]), labels[rows])
                loss.backward()
                optimizer.step()
            snapshots.append([p.detach().clone() for p in net.parameters()])
        trained.append([[p.double() for p in snapshot] for snapshot in snapshots])
    return [trained[f * EXPERTS : (f + 1) * EXPERTS] for f in range(FILES)]


def write_buffer(root: Path, experts: list[list[list[list[torch.Tensor]]]]) -> Path:
    """``root/FIXTURE/ConvNet/replay_buffer_<n>.pt`` (the reference's input format)."""
    folder = root / DATASET / MODEL
    folder.mkdir(parents=True, exist_ok=True)
    for number, content in enumerate(experts):
        torch.save(content, folder / f"replay_buffer_{number}.pt")
    return folder


# ------------------------------------------------------------------------------ DATM's run


@dataclass
class DatmRun:
    """What DATM's run did: its draws, its optimizers' parameters and gradients, its logs."""

    permutations: list[np.ndarray] = field(default_factory=list)
    randperms: list[torch.Tensor] = field(default_factory=list)
    shuffles: list[list[int]] = field(default_factory=list)
    augment_draws: list[torch.Tensor] = field(default_factory=list)
    optimizers: list[tuple[list[torch.Tensor], list[torch.Tensor] | None]] = field(
        default_factory=list
    )
    logs: dict[str, Any] = field(default_factory=dict)

    def parameter(self, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(value at construction, gradient at step()) of optimizer ``which`` (0: images,
        1: lr, 2: labels, DATM's order of construction)."""
        initial, grads = self.optimizers[which]
        if grads is None or grads[0] is None:
            raise SystemExit("DATM took no optimizer step; raise the fixture's threshold")
        return initial[0], grads[0]


class _View:
    """A module seen through ``overrides``; everything else is the module's own."""

    def __init__(self, real: Any, **overrides: Any) -> None:
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _stub_modules(record: DatmRun) -> None:
    """wandb (a recorder), and tqdm / kornia / scipy / yacs / yaml where not installed."""

    def module(name: str) -> types.ModuleType:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stub
        return stub

    wandb = module("wandb")
    wandb.run = types.SimpleNamespace(name="parity")

    def init(config: Any = None, **_: Any) -> None:
        wandb.config = types.SimpleNamespace(_items=dict(vars(config)))

    def log(values: dict[str, Any], step: int | None = None) -> None:
        record.logs.update(values)

    wandb.init, wandb.log, wandb.finish = init, log, lambda: None
    wandb.Histogram = wandb.Image = lambda *a, **k: None
    missing = [n for n in ("tqdm", "kornia", "scipy", "yacs", "yaml") if not _installed(n)]
    if "tqdm" in missing:
        module("tqdm").tqdm = lambda iterable=None, *a, **k: iterable
    if "kornia" in missing:
        module("kornia")
    if "scipy" in missing:
        module("scipy")
        module("scipy.ndimage")
        module("scipy.ndimage.interpolation").rotate = None
    if "yacs" in missing:

        class CfgNode(dict):
            __getattr__ = dict.__getitem__
            __setattr__ = dict.__setitem__

        module("yacs")
        module("yacs.config").CfgNode = CfgNode
    if "yaml" in missing:
        module("yaml")


def _installed(name: str) -> bool:
    return name in sys.modules or importlib.util.find_spec(name) is not None


def _recording_views(record: DatmRun) -> dict[str, Any]:
    """DATM's module globals ``torch``, ``np`` and ``random``, recording (module notes)."""

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
            params = list(params)
            super().__init__(params, *args, **kwargs)
            self._slot = len(record.optimizers)
            record.optimizers.append(([p.detach().clone() for p in params], None))

        def step(self, closure: Any = None) -> Any:
            grads = [
                None if p.grad is None else p.grad.detach().clone()
                for group in self.param_groups
                for p in group["params"]
            ]
            record.optimizers[self._slot] = (record.optimizers[self._slot][0], grads)
            return super().step(closure)

    def randperm(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = torch.randperm(*args, **kwargs)
        record.randperms.append(out.clone())
        return out

    def randn(*args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs["dtype"] = torch.get_default_dtype()
        return torch.randn(*args, **kwargs)

    def permutation(values: Any) -> np.ndarray:
        out = np.random.permutation(values)
        record.permutations.append(np.array(out))
        return out

    def shuffle(values: list) -> None:
        random.shuffle(values)
        record.shuffles.append(list(values))

    no_gpu = _View(torch.cuda, is_available=lambda: False, device_count=lambda: 0)
    return {
        "torch": _View(
            torch,
            randperm=randperm,
            randn=randn,
            cuda=no_gpu,
            optim=_View(torch.optim, SGD=RecordingSGD),
        ),
        "np": _View(np, random=_View(np.random, permutation=permutation)),
        "random": _View(random, shuffle=shuffle),
    }


def _recording_augment_view(record: DatmRun) -> _View:
    """``torch`` as DATM's ``utils/utils_baseline.py`` (its DiffAugment) sees it: ``rand`` and
    ``randint`` record their outputs, and ``tensor(..., dtype=torch.float)`` (the scale and
    rotate matrices) gives the default dtype, so that float64 images meet a float64 grid."""

    def recorded(draw: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = draw(*args, **kwargs)
            record.augment_draws.append(out.detach().clone())
            return out

        return call

    def tensor(data: Any, *args: Any, dtype: Any = None, **kwargs: Any) -> torch.Tensor:
        dtype = torch.get_default_dtype() if dtype is torch.float else dtype
        return torch.tensor(data, *args, dtype=dtype, **kwargs)

    return _View(torch, rand=recorded(torch.rand), randint=recorded(torch.randint), tensor=tensor)


def _fixture_dataset(fixture: Fixture) -> Any:
    def get_dataset(*_: Any, **__: Any) -> tuple:
        pairs = zip(fixture.images, fixture.labels, strict=True)
        train = [(image, int(label)) for image, label in pairs]
        names = [str(c) for c in range(CLASSES)]
        identity = {c: c for c in range(CLASSES)}
        stats = [0.0] * CHANNELS, [1.0] * CHANNELS
        return CHANNELS, (SIZE, SIZE), CLASSES, names, *stats, train, [], None, None, identity, {}

    return get_dataset


def datm_settings(cfg: Any, buffer_root: Path, dsa: str) -> argparse.Namespace:
    """DATM's default config (its ``utils/cfg.py``, as its ``__main__`` turns it into args) with
    the fixture's settings; ``dsa``: the DSA strategy, or ``none``."""
    settings = dict(cfg.items())
    settings.update(
        dataset=DATASET, model=MODEL, ipc=IPC, Iteration=0, eval_it=100, skip_first_eva=True,
        parall_eva=True, pix_init="samples_predicted_correctly", Sequential_Generation=True,
        min_start_epoch=0, current_max_start_epoch=2, max_start_epoch=3, expansion_end_epoch=10,
        expert_epochs=EXPERT_EPOCHS, syn_steps=SYN_STEPS, batch_syn=BATCH_SYN,
        lr_teacher=LR_TEACHER, lr_img=100.0, lr_lr=1e-5, lr_y=2.0, Momentum_y=0.9,
        threshold=10.0, dsa=dsa != "none", dsa_strategy=dsa, zca=False, load_all=False,
        max_files=FILES, max_experts=EXPERTS, Label_Model_Timestamp=-1,
        buffer_path=str(buffer_root), data_path=str(buffer_root), device=[0],
    )  # fmt: skip
    return argparse.Namespace(**settings)


def run_datm(datm: Path, fixture: Fixture, buffer_root: Path, dsa: str = "none") -> DatmRun:
    """DATM's ``main`` for one iteration in float64 with DSA strategy ``dsa``, recorded (module
    notes)."""
    datm = Path(datm).resolve()
    script = datm / "distill" / "DATM.py"
    if not script.is_file():
        raise SystemExit(f"{datm} holds no distill/DATM.py; pass a checkout of NUS-HPC-AI-Lab/DATM")
    record = DatmRun()
    _stub_modules(record)
    if str(datm) not in sys.path:
        sys.path.insert(0, str(datm))
    spec = importlib.util.spec_from_file_location("datm_distill", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vars(module).update(_recording_views(record), get_dataset=_fixture_dataset(fixture))
    sys.modules["utils.utils_baseline"].torch = _recording_augment_view(record)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # DATM.py 133: a tensor from a list
            module.main(datm_settings(module.cfg, buffer_root, dsa))
    finally:
        torch.set_default_dtype(previous)
    return record


# ------------------------------------------------------------------------------ ddpp's side


def ddpp_trajectories(folder: Path, layout: ParamLayout) -> list[list[torch.Tensor]]:
    """Every expert of the buffer (file order) as ddpp's import flattens it: flat θ per epoch."""
    experts = []
    for path in mtt_files(folder):
        for number, expert in enumerate(load_mtt_file(path)):
            where = f"{path.name} expert {number}"
            experts.append([flatten_mtt_epoch(epoch, layout, where) for epoch in expert])
    return experts


def datm_minibatches(
    randperms: list[torch.Tensor], augmentations: list[DSAParams] | None = None
) -> list[UnrollStep]:
    """DATM's steps: each permutation split into chunks of ``batch_syn``, popped from the end;
    step j augmented with ``augmentations[j]`` (none when not given)."""
    draws, chunks, steps = iter(randperms), [], []
    for number in range(SYN_STEPS):
        if not chunks:
            chunks = list(next(draws).split(BATCH_SYN))
        augment = augmentations[number] if augmentations else DSAParams("none")
        steps.append(UnrollStep(chunks.pop(), augment))
    return steps


def datm_augmentations(draws: list[torch.Tensor], strategy: str) -> list[DSAParams]:
    """ddpp's parameters of DATM's DiffAugment draws (``utils/utils_baseline.py`` 726-871, mode
    ``S``: one op per call, then its draws), with ParamDiffAug's ratios (= ddpp's defaults):
    color u_b − 0.5, 2 u_s, u_c + 0.5; crop: DATM's translation of the row (column) index,
    negated, is ddpp's downward (rightward) shift; cutout offsets are the centres; flip u < 0.5;
    scale 1/1.2 + u (1.2 − 1/1.2); rotate: DATM turns the grid by θ = (u − 0.5)·2·15°, ddpp by
    −angle."""
    ops, stream, steps = strategy.split("_"), iter(draws), []
    for _ in range(SYN_STEPS):
        op = ops[int(next(stream))]
        values: dict[str, torch.Tensor]
        if op == "color":
            b, s, c = (next(stream).reshape(-1) for _ in range(3))
            values = {"brightness": (b - 0.5) * 1.0, "saturation": s * 2.0, "contrast": c + 0.5}
        elif op == "crop":
            down, right = (-next(stream).reshape(-1) for _ in range(2))
            values = {"shift_y": down, "shift_x": right}
        elif op == "cutout":
            rows, cols = (next(stream).reshape(-1) for _ in range(2))
            size = torch.full_like(rows, int(SIZE * 0.5 + 0.5))
            values = {"centre_y": rows, "centre_x": cols, "size_y": size, "size_x": size}
        elif op == "flip":
            values = {"mask": next(stream).reshape(-1) < 0.5}
        elif op == "scale":
            sx, sy = (next(stream) * (1.2 - 1.0 / 1.2) + 1.0 / 1.2 for _ in range(2))
            values = {"sx": sx, "sy": sy}
        else:  # rotate
            theta = (next(stream) - 0.5) * 2 * 15.0 / 180 * float(np.pi)
            values = {"angles": -theta}
        steps.append(DSAParams(op, values))
    if next(stream, None) is not None:
        raise SystemExit("DATM drew more augmentation parameters than its steps use")
    return steps


@dataclass(frozen=True)
class Difference:
    """One compared quantity: max |ddpp − DATM|, and that over max |DATM|."""

    name: str
    max_abs: float
    max_rel: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= TOLERANCE

    def line(self) -> str:
        verdict = "ok" if self.ok else "DIFFERS"
        return f"{self.name:<42} max abs {self.max_abs:.3e}  max rel {self.max_rel:.3e}  {verdict}"


def difference(name: str, found: torch.Tensor, wanted: torch.Tensor) -> Difference:
    found, wanted = found.detach().double(), wanted.detach().double()
    if found.shape != wanted.shape:
        return Difference(f"{name} (shape {tuple(found.shape)} ≠ {tuple(wanted.shape)})", 1.0, 1.0)
    gap = float((found - wanted).abs().max())
    scale = float(wanted.abs().max())
    return Difference(name, gap, gap / scale if scale > 0 else gap)


# DSA off, each op alone, then DATM's default strategy (an op drawn per step)
DSA_RUNS = ("none", "color", "crop", "cutout", "flip", "scale", "rotate", DEFAULT_STRATEGY)


def compare(datm: Path) -> tuple[list[Difference], list[str]]:
    """Run DATM's iteration (without DSA, then with each DSA op) and ddpp's; the differences,
    and notes on the draws."""
    fixture = make_fixture()
    model = models.create(ARCH, CHANNELS, CLASSES, SIZE).double()
    layout = ParamLayout.of(model)
    results: list[Difference] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="datm-parity-") as work:
        buffer_root = Path(work)
        folder = write_buffer(buffer_root, train_experts(fixture))
        experts = [[t.double() for t in e] for e in ddpp_trajectories(folder, layout)]
        for dsa in DSA_RUNS:
            record = run_datm(datm, fixture, buffer_root, dsa)
            results += iteration(record, dsa, model, layout, experts, notes)
            if dsa == "none":
                images, labels = record.parameter(0)[0], record.parameter(2)[0]
                results += label_start(
                    record, fixture, model, layout, experts, images, labels, notes
                )
    return results, notes


def iteration(
    record: DatmRun,
    dsa: str,
    model: torch.nn.Module,
    layout: ParamLayout,
    experts: list[list[torch.Tensor]],
    notes: list[str],
) -> list[Difference]:
    """ddpp's iteration on DATM's starting values and draws, against DATM's loss and gradients."""
    images, image_grad = record.parameter(0)
    lr, lr_grad = record.parameter(1)
    labels, label_grad = record.parameter(2)
    file_order, expert_order = record.shuffles[0], record.shuffles[1]
    expert = file_order[0] * EXPERTS + expert_order[0]
    start_epoch = int(record.logs["Start_Epoch"])
    augmentations = datm_augmentations(record.augment_draws, dsa) if dsa != "none" else None
    steps = datm_minibatches(record.randperms, augmentations)
    ops = f" (ops {[s.augment.op for s in steps]})" if dsa == DEFAULT_STRATEGY else ""
    notes.append(
        f"DSA {dsa}{ops}: DATM took expert {expert_order[0]} of file {file_order[0]}, start epoch "
        f"{start_epoch}, minibatches {[s.indices.tolist() for s in steps]}"
    )
    start, target = experts[expert][start_epoch], experts[expert][start_epoch + EXPERT_EPOCHS]
    suffix = {"none": "", DEFAULT_STRATEGY: ", DSA every op"}.get(dsa, f", DSA {dsa}")
    results = []
    for mode in ("graph", "memory"):
        x = images.clone().requires_grad_(True)
        y = labels.clone().requires_grad_(True)
        alpha = torch.tensor(float(lr), dtype=torch.float64, requires_grad=True)
        student = Student(model, layout, DSA(dsa))
        found = match(student, start, target, x, y, alpha, steps, 0.0, mode)
        dtype, loss = torch.float64, torch.as_tensor(record.logs["Grand_Loss"])
        where = f"({mode}{suffix})"
        results += [
            difference(f"iteration loss {where}", torch.tensor(found.loss, dtype=dtype), loss),
            difference(f"dL/d images {where}", x.grad, image_grad),
            difference(f"dL/d labels {where}", y.grad, label_grad),
            difference(f"dL/d lr {where}", alpha.grad, lr_grad),
        ]
    return results


def label_start(
    record: DatmRun,
    fixture: Fixture,
    model: torch.nn.Module,
    layout: ParamLayout,
    experts: list[list[torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor,
    notes: list[str],
) -> list[Difference]:
    """ddpp's selection on DATM's candidate order, and ddpp's teacher labels of DATM's images."""
    finals = [trajectory[-1] for trajectory in experts]
    classes = torch.arange(CLASSES).repeat_interleave(IPC)
    candidates = [torch.as_tensor(p, dtype=torch.long) for p in record.permutations[:CLASSES]]
    names = [str(c) for c in range(CLASSES)]
    chosen = teacher.select_correct(model, layout, finals, candidates, fixture.images, IPC, names)
    pool = fixture.images.reshape(len(fixture.images), -1)
    datm_rows = [int((pool == row.reshape(1, -1)).all(1).nonzero()[0]) for row in images]
    in_class = [slice(c * IPC, (c + 1) * IPC) for c in range(CLASSES)]
    ddpp_sorted = [row for part in in_class for row in sorted(chosen[part].tolist())]
    datm_sorted = [row for part in in_class for row in sorted(datm_rows[part])]
    heads = [c.tolist()[:3] for c in candidates]
    notes.append(
        f"candidates per class (DATM's draw) begin {heads}; selected (pool rows): DATM "
        f"{datm_rows}, ddpp {chosen.tolist()} (same order: {datm_rows == chosen.tolist()})"
    )
    per_expert = torch.stack([teacher.logits_of(model, layout, t, images) for t in finals])
    correct = (per_expert.argmax(2) == classes).sum(1).tolist()
    notes.append(f"experts classifying each of DATM's {len(images)} images correctly: {correct}")
    ddpp_labels = teacher.teacher_logits(model, layout, finals, images, classes)
    exact_labels = teacher.averaged_correct_logits(per_expert, classes)
    results = [
        difference("selected rows (sorted per class)", torch.tensor(ddpp_sorted), torch.tensor(datm_sorted)),  # noqa: E501
        difference("teacher labels (teacher_logits)", ddpp_labels, labels),
        difference("teacher labels (float64 averaged_correct_logits)", exact_labels, labels),
    ]  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datm", type=Path, required=True, help="a NUS-HPC-AI-Lab/DATM checkout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results, notes = compare(args.datm)
    for note in notes:
        print(note)
    for result in results:
        print(result.line())
    largest: dict[str, Difference] = {}
    for result in results:
        quantity = result.name.split(" (")[0]
        if quantity not in largest or result.max_rel > largest[quantity].max_rel:
            largest[quantity] = result
    print("largest over the runs: " + "; ".join(
        f"{quantity} {worst.max_rel:.1e}" for quantity, worst in largest.items()
    ))  # fmt: skip
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} within {TOLERANCE:g}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
