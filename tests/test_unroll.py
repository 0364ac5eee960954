"""The student unroll (engine/unroll.py, engine/student.py): the reverse Hessian-vector step on
hand-made values, the memory mode's gradients against the graph mode's, and the execution options
(bf16 autocast, torch.compile and its fallback, channels-last)."""

from __future__ import annotations

import pytest
import torch

from ddpp_cli.engine import models, unroll
from ddpp_cli.engine import student as student_module
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.functional import ParamLayout, flat_parameters
from ddpp_cli.engine.pruning import prune_mask
from ddpp_cli.engine.student import Student, describe, plan_unroll
from ddpp_cli.engine.unroll import match, reverse_step

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------- the reverse step


def test_reverse_step_pins_the_adjoint_formulas():
    """g(θ, x) = x ⊙ θ (the gradient of ½ Σ x θ²): ∂g/∂θ = diag(x), ∂g/∂x = diag(θ)."""
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = torch.tensor([3.0, 0.25, -1.0], dtype=torch.float64)
    adjoint = torch.tensor([0.5, 4.0, -2.0], dtype=torch.float64)
    lr = torch.tensor(0.1, dtype=torch.float64)
    d_theta, d_x, d_lr = reverse_step(lambda t, v: v * t, theta, x, lr, adjoint)
    # a − α x a, −α θ a, −⟨a, x θ⟩
    assert d_theta.tolist() == pytest.approx([0.35, 3.9, -2.2], abs=1e-15)
    assert d_x.tolist() == pytest.approx([-0.05, 0.8, 0.1], abs=1e-15)
    assert float(d_lr) == pytest.approx(-0.5, abs=1e-15)  # −(1.5 − 2 + 1)


def test_reverse_step_of_a_quadratic_matches_the_matrix():
    """g = A θ + B x: dθ = a − α Aᵀ a, dx = −α Bᵀ a, dα = −⟨a, Aθ + Bx⟩."""
    generator = torch.Generator().manual_seed(0)
    a_mat = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    b_mat = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    theta = torch.randn(4, generator=generator, dtype=torch.float64)
    x = torch.randn(2, generator=generator, dtype=torch.float64)
    adjoint = torch.randn(4, generator=generator, dtype=torch.float64)
    lr = torch.tensor(0.3, dtype=torch.float64)
    d_theta, d_x, d_lr = reverse_step(lambda t, v: a_mat @ t + b_mat @ v, theta, x, lr, adjoint)
    torch.testing.assert_close(d_theta, adjoint - 0.3 * a_mat.T @ adjoint, rtol=0, atol=1e-14)
    torch.testing.assert_close(d_x, -0.3 * b_mat.T @ adjoint, rtol=0, atol=1e-14)
    expected = -(adjoint @ (a_mat @ theta + b_mat @ x))
    torch.testing.assert_close(d_lr, expected, rtol=0, atol=1e-14)


def test_reverse_step_with_no_dependence_on_x_gives_zeros():
    theta, x = torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    lr, adjoint = torch.tensor(0.5, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    _, d_x, _ = reverse_step(lambda t, v: 2.0 * t, theta, x, lr, adjoint)
    assert d_x.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------- whole iterations


def tiny_problem(dtype=torch.float64, channels: int = 1):
    torch.manual_seed(0)
    model = models.ConvNet(channels, 3, (8, 8), depth=2, width=4).to(dtype).train()
    layout = ParamLayout.of(model)
    generator = torch.Generator().manual_seed(1)
    start = flat_parameters(model)
    noise = torch.randn(start.shape, generator=generator, dtype=dtype)
    target = start + 0.3 * start.abs().mean() * noise
    images = torch.randn(6, channels, 8, 8, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return model, layout, start, target, images, labels


def gradients(student: Student, problem, steps, mode: str, lr: float = 0.1, keep_bytes: int = 0):
    _, _, start, target, images, labels = problem
    x = images.clone().requires_grad_(True)
    alpha = torch.tensor(lr, dtype=images.dtype, requires_grad=True)
    result = match(student, start, target, x, labels, alpha, steps, 0.1, mode, keep_bytes)
    return result, x.grad, alpha.grad


def test_memory_mode_gradients_equal_the_graph_mode():
    """float64, DSA on, minibatches of 4 out of 6 (so steps see different images), 5 steps,
    with parameters pruned: dL/dX and dL/dα agree to 1e-10 relative."""
    problem = tiny_problem()
    model, layout, *_ = problem
    dsa = DSA()
    steps = plan_unroll(6, 5, 4, dsa, (8, 8), make_generator(3, "t"))
    assert {len(s.indices) for s in steps} == {2, 4}
    assert len({s.augment.op for s in steps}) > 1
    student = Student(model, layout, dsa)
    graph, gx_graph, ga_graph = gradients(student, problem, steps, "graph")
    memory, gx_memory, ga_memory = gradients(student, problem, steps, "memory")
    assert 0 < graph.pruned_fraction < 0.5  # a nonzero mask, the same in both modes
    assert memory.pruned_fraction == graph.pruned_fraction
    assert memory.loss == pytest.approx(graph.loss, rel=1e-12)
    assert gx_graph.abs().sum() > 0 and float(ga_graph) != 0
    torch.testing.assert_close(gx_memory, gx_graph, rtol=1e-10, atol=1e-10 * gx_graph.abs().max())
    torch.testing.assert_close(ga_memory, ga_graph, rtol=1e-10, atol=0)


def test_memory_mode_in_float32_matches_to_1e_5():
    problem = tiny_problem(torch.float32, channels=3)
    model, layout, *_ = problem
    dsa = DSA()
    steps = plan_unroll(6, 4, None, dsa, (8, 8), make_generator(4, "t"))
    student = Student(model, layout, dsa)
    _, gx_graph, ga_graph = gradients(student, problem, steps, "graph")
    _, gx_memory, ga_memory = gradients(student, problem, steps, "memory")
    scale = gx_graph.abs().max()
    torch.testing.assert_close(gx_memory, gx_graph, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(ga_memory, ga_graph, rtol=1e-5, atol=0)


def step_graph_bytes(student: Student, problem, steps) -> int:
    _, _, start, _, images, labels = problem
    source = images.detach().requires_grad_(True)
    return unroll._kept_step(student, start, source, labels, steps[0])[1]


@pytest.mark.parametrize("kept_steps", [0, 1, 3, 5])
def test_keeping_the_last_graphs_changes_nothing(kept_steps):
    """Memory mode with a budget for K of the 5 steps' graphs: the same images' and α's
    gradients as rebuilding every step, to 1e-12 in float64 (a step computed with its graph may
    round differently from one computed without); DSA on, minibatches of 4 of 6, pruning on."""
    problem = tiny_problem()
    model, layout, start, _, images, labels = problem
    dsa = DSA()
    steps = plan_unroll(6, 5, 4, dsa, (8, 8), make_generator(3, "t"))
    student = Student(model, layout, dsa)
    size = step_graph_bytes(student, problem, steps)
    assert size > images.numel() * images.element_size()  # activations, not just the input
    budget = kept_steps * size + size // 2
    lr = torch.tensor(0.1, dtype=torch.float64)
    source = images.detach().requires_grad_(True)
    _, kept = unroll.unroll_states(
        student, start, images, labels, lr, steps, keep_bytes=budget, source=source
    )
    assert sorted(kept) == list(range(5 - kept_steps, 5))
    recomputed, gx_recomputed, ga_recomputed = gradients(student, problem, steps, "memory")
    memory, gx_memory, ga_memory = gradients(student, problem, steps, "memory", keep_bytes=budget)
    assert memory.pruned_fraction == recomputed.pruned_fraction
    assert memory.loss == pytest.approx(recomputed.loss, rel=1e-12)
    scale = gx_recomputed.abs().max()
    torch.testing.assert_close(gx_memory, gx_recomputed, rtol=1e-12, atol=1e-12 * scale)
    torch.testing.assert_close(ga_memory, ga_recomputed, rtol=1e-12, atol=0)


def test_kept_count_fits_the_budget():
    world = World()
    assert unroll.kept_count(100, 0, 20, world) == 0
    assert unroll.kept_count(100, 250, 20, world) == 2
    assert unroll.kept_count(100, 10**9, 20, world) == 20
    assert unroll.kept_count(0, 10, 20, world) == 20  # nothing saved: everything fits


def test_graph_bytes_counts_each_storage_once():
    base = torch.zeros(10, dtype=torch.float64)
    assert unroll.graph_bytes([base, base[2:], base.view(2, 5), torch.zeros(3)]) == 80 + 12


def test_states_end_where_the_graph_unroll_ends():
    model, layout, start, _, images, labels = tiny_problem()
    dsa = DSA()
    steps = plan_unroll(6, 3, 4, dsa, (8, 8), make_generator(5, "t"))
    student = Student(model, layout, dsa)
    lr = torch.tensor(0.1, dtype=torch.float64)
    states, kept = unroll.unroll_states(student, start, images, labels, lr, steps)
    assert kept == {}
    end = unroll.unroll_graph(student, start, images, labels, lr, steps)
    assert len(states) == 4 and not any(s.requires_grad for s in states)
    torch.testing.assert_close(states[-1], end.detach(), rtol=0, atol=1e-14)


def test_gradients_accumulate_and_a_non_finite_loss_leaves_them():
    problem = tiny_problem()
    model, layout, start, target, images, labels = problem
    dsa = DSA("none")
    steps = plan_unroll(6, 2, None, dsa, (8, 8), make_generator(0, "t"))
    student = Student(model, layout, dsa)
    x = images.clone().requires_grad_(True)
    alpha = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    match(student, start, target, x, labels, alpha, steps, 0.0, "memory")
    once = x.grad.clone()
    match(student, start, target, x, labels, alpha, steps, 0.0, "memory")
    torch.testing.assert_close(x.grad, 2 * once)
    x.grad = None
    bad = torch.full_like(target, float("nan"))
    result = match(student, start, bad, x, labels, alpha, steps, 0.0, "memory")
    assert result.loss != result.loss and x.grad is None


def test_unknown_mode_is_a_value_error():
    model, layout, start, target, images, labels = tiny_problem()
    with pytest.raises(ValueError, match="unroll mode"):
        match(Student(model, layout, DSA()), start, target, images, labels,
              torch.tensor(0.1), [], 0.1, "tesla")  # fmt: skip
    with pytest.raises(ValueError, match="amp"):
        Student(model, layout, DSA(), amp="fp8")


# ------------------------------------------------------------------- execution options


def test_bf16_autocast_runs_on_the_cpu_and_stays_close():
    problem = tiny_problem(torch.float32, channels=3)
    model, layout, *_ = problem
    dsa = DSA()
    steps = plan_unroll(6, 3, None, dsa, (8, 8), make_generator(6, "t"))
    exact, gx, _ = gradients(Student(model, layout, dsa), problem, steps, "graph")
    for mode in ("graph", "memory"):
        student = Student(model, layout, dsa, amp="bf16")
        result, gx_amp, ga_amp = gradients(student, problem, steps, mode)
        assert torch.isfinite(torch.tensor(result.loss)) and torch.isfinite(gx_amp).all()
        assert gx_amp.dtype == torch.float32 and torch.isfinite(ga_amp)
        assert result.loss == pytest.approx(exact.loss, rel=0.05)
        assert torch.nn.functional.cosine_similarity(gx_amp.flatten(), gx.flatten(), 0) > 0.9


def test_channels_last_gives_the_same_gradients():
    problem = tiny_problem(channels=3)
    model, layout, *_ = problem
    dsa = DSA()
    steps = plan_unroll(6, 3, 4, dsa, (8, 8), make_generator(7, "t"))
    _, gx, ga = gradients(Student(model, layout, dsa), problem, steps, "graph")
    for mode in ("graph", "memory"):
        student = Student(model, layout, dsa, channels_last=True)
        _, gx_cl, ga_cl = gradients(student, problem, steps, mode)
        torch.testing.assert_close(gx_cl, gx, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ga_cl, ga, rtol=1e-10, atol=0)


@pytest.mark.slow
def test_compiled_step_matches_eager(monkeypatch):
    """torch.compile's tracing (AOT autograd, the 'aot_eager' backend: no C++ codegen, so the
    test is fast) through both modes; inductor itself is exercised by the benchmark."""
    monkeypatch.setattr(student_module, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    problem = tiny_problem(torch.float32, channels=3)
    model, layout, *_ = problem
    dsa = DSA("flip")
    steps = plan_unroll(6, 2, None, dsa, (8, 8), make_generator(8, "t"))
    _, gx, ga = gradients(Student(model, layout, dsa), problem, steps, "graph")
    notices: list[str] = []
    for mode in ("graph", "memory"):
        student = Student(model, layout, dsa, compile=True, on_notice=notices.append)
        _, gx_c, ga_c = gradients(student, problem, steps, mode)
        assert describe(student)["compile"], notices
        torch.testing.assert_close(gx_c, gx, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ga_c, ga, rtol=1e-4, atol=1e-8)
    assert notices == []


def test_compile_failure_falls_back_with_a_notice(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(student_module, "COMPILE_BACKEND", broken_backend)
    torch._dynamo.reset()
    problem = tiny_problem(torch.float32, channels=3)
    model, layout, *_ = problem
    dsa = DSA("flip")
    steps = plan_unroll(6, 2, None, dsa, (8, 8), make_generator(8, "t"))
    _, gx, _ = gradients(Student(model, layout, dsa), problem, steps, "graph")
    notices: list[str] = []
    student = Student(model, layout, dsa, compile=True, on_notice=notices.append)
    _, gx_c, _ = gradients(student, problem, steps, "memory")
    assert len(notices) == 1 and "continuing without --compile" in notices[0]
    assert not describe(student)["compile"]
    torch.testing.assert_close(gx_c, gx, rtol=1e-5, atol=1e-7)


def test_prune_mask_is_taken_at_the_end_of_the_unroll():
    problem = tiny_problem()
    model, layout, start, target, images, labels = problem
    dsa = DSA()
    steps = plan_unroll(6, 2, None, dsa, (8, 8), make_generator(9, "t"))
    student = Student(model, layout, dsa)
    lr = torch.tensor(0.1, dtype=torch.float64)
    end = unroll.unroll_states(student, start, images, labels, lr, steps)[0][-1]
    expected = 1.0 - float(prune_mask(end, target, 0.1).float().mean())
    result, _, _ = gradients(student, problem, steps, "memory")
    assert result.pruned_fraction == expected


def test_accumulator_dtype_is_float32_on_mps_only():
    assert unroll.accumulator_dtype(torch.device("mps")) == torch.float32
    assert unroll.accumulator_dtype("mps:0") == torch.float32
    assert unroll.accumulator_dtype(torch.device("cpu")) == torch.float64
    assert unroll.accumulator_dtype("cuda:1") == torch.float64


def test_memory_mode_accumulates_in_the_dtype_the_device_gets(monkeypatch):
    """The memory unroll asks accumulator_dtype for lr's device and sums in what it returns."""
    problem = tiny_problem(torch.float32, channels=3)
    model, layout, *_ = problem
    dsa = DSA()
    steps = plan_unroll(6, 3, None, dsa, (8, 8), make_generator(5, "t"))
    student = Student(model, layout, dsa)
    _, _, ga_float64 = gradients(student, problem, steps, "memory")
    asked = []
    real_zeros = torch.zeros
    made = []

    def as_on_mps(device):
        asked.append(torch.device(device))
        return torch.float32

    def zeros(*args, **kwargs):
        tensor = real_zeros(*args, **kwargs)
        made.append(tensor.dtype)
        return tensor

    monkeypatch.setattr(unroll, "accumulator_dtype", as_on_mps)
    monkeypatch.setattr(unroll.torch, "zeros", zeros)
    _, _, ga_float32 = gradients(student, problem, steps, "memory")
    monkeypatch.undo()
    assert asked == [torch.device("cpu")]
    assert torch.float64 not in made and torch.float32 in made
    torch.testing.assert_close(ga_float32, ga_float64, rtol=1e-5, atol=0)
