"""DSA ops: exact values on hand-made inputs, parameter ranges, reproducibility, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ddpp_cli.engine import augment
from ddpp_cli.engine.augment import DEFAULT_STRATEGY, DSA, OPS, DSAParams
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.errors import DdppError


def images(batch: int = 4, channels: int = 3, height: int = 16, width: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=generator)


def params_for(op: str, batch: int = 4, height: int = 16, width: int = 16, seed: int = 0):
    """One draw of ``op`` (a strategy of that op alone), reproducible per op and seed."""
    return DSA(op).sample(batch, height, width, make_generator(seed, op))


# --- the ops on hand-made inputs -------------------------------------------------------------


def test_color_pinned_values() -> None:
    x = torch.tensor([[[[0.0, 1.0]], [[2.0, 3.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    # Brightness alone: add the offset.
    out = augment.color(x, torch.tensor([0.25], dtype=torch.float64), one, one)
    torch.testing.assert_close(out, x + 0.25, rtol=0, atol=1e-12)
    # Saturation alone: channel means per pixel are 1 and 2; factor 0.5 halves the deviations.
    out = augment.color(x, zero, torch.tensor([0.5], dtype=torch.float64), one)
    expected = torch.tensor([[[[0.5, 1.5]], [[1.5, 2.5]]]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # Contrast alone: image mean 1.5; factor 2 doubles the deviations.
    out = augment.color(x, zero, one, torch.tensor([2.0], dtype=torch.float64))
    expected = torch.tensor([[[[-1.5, 0.5]], [[2.5, 4.5]]]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # All three, in order brightness → saturation → contrast.
    out = augment.color(
        x,
        torch.tensor([1.0], dtype=torch.float64),
        torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([2.0], dtype=torch.float64),
    )
    # +1: [[1, 2], [3, 4]]; saturation around [2, 3]: [[1.5, 2.5], [2.5, 3.5]]; mean 2.5, ×2.
    expected = torch.tensor([[[[0.5, 2.5]], [[2.5, 4.5]]]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_color_is_per_sample() -> None:
    x = torch.zeros(2, 1, 2, 2)
    out = augment.color(x, torch.tensor([0.1, -0.3]), torch.ones(2), torch.ones(2))
    assert torch.equal(out[0], torch.full((1, 2, 2), 0.1))
    assert torch.equal(out[1], torch.full((1, 2, 2), -0.3))


def test_crop_moves_pixels_by_the_shift_with_zero_fill() -> None:
    x = torch.arange(1.0, 1.0 + 2 * 3 * 5 * 6).reshape(2, 3, 5, 6)
    out = augment.crop(x, torch.tensor([1, -2]), torch.tensor([2, 0]))
    assert out.shape == x.shape
    # Sample 0: down 1, right 2.
    assert torch.equal(out[0, :, 1:, 2:], x[0, :, :-1, :-2])
    assert torch.equal(out[0, :, :1, :], torch.zeros(3, 1, 6))
    assert torch.equal(out[0, :, :, :2], torch.zeros(3, 5, 2))
    # Sample 1: up 2, no horizontal move.
    assert torch.equal(out[1, :, :-2, :], x[1, :, 2:, :])
    assert torch.equal(out[1, :, -2:, :], torch.zeros(3, 2, 6))


def test_crop_zero_shift_is_identity_and_large_shift_empties() -> None:
    x = images()
    assert torch.equal(augment.crop(x, torch.zeros(4, dtype=torch.long), torch.zeros(4)), x)
    gone = augment.crop(x, torch.full((4,), 16), torch.zeros(4, dtype=torch.long))
    assert torch.equal(gone, torch.zeros_like(x))


def test_cutout_zeroes_exactly_one_square() -> None:
    x = torch.ones(2, 3, 16, 16)
    out = augment.cutout(x, torch.tensor([8, 6]), torch.tensor([7, 9]), 8, 8)
    expected = torch.ones_like(x)
    expected[0, :, 4:12, 3:11] = 0
    expected[1, :, 2:10, 5:13] = 0
    assert torch.equal(out, expected)
    assert int((out[0, 0] == 0).sum()) == round(0.5 * 16) ** 2


def test_cutout_is_clipped_at_the_borders() -> None:
    x = torch.ones(1, 1, 16, 16)
    out = augment.cutout(x, torch.tensor([0]), torch.tensor([16]), 8, 8)
    expected = torch.ones_like(x)
    expected[0, 0, 0:4, 12:16] = 0
    assert torch.equal(out, expected)


def test_flip_follows_the_mask() -> None:
    x = images()
    mask = torch.tensor([True, False, False, True])
    out = augment.flip(x, mask)
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_scale_and_rotate_identity(dtype: torch.dtype, atol: float) -> None:
    # float32 grid_sample rounds the grid coordinates, so its identity is only good to a few 1e-6.
    x = images(height=12, width=20).to(dtype)
    ones = torch.ones(4)
    torch.testing.assert_close(augment.scale(x, ones, ones), x, rtol=0, atol=atol)
    torch.testing.assert_close(augment.rotate(x, torch.zeros(4)), x, rtol=0, atol=atol)


def test_scale_factor_two_samples_twice_the_region() -> None:
    # Width 5 with align_corners: output column j samples input at 2 (j - 2) + 2.
    x = torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 1, 3, 5).contiguous()
    out = augment.scale(x, torch.tensor([2.0]), torch.tensor([1.0]))
    torch.testing.assert_close(out[0, 0, 1], torch.tensor([0.0, 0.0, 2.0, 4.0, 0.0]))


def test_rotate_quarter_turn_in_pixel_space() -> None:
    # Non-square image: a dot 4 px right of the centre goes 4 px below it (clockwise on screen).
    x = torch.zeros(1, 1, 9, 17)
    x[0, 0, 4, 12] = 1.0
    out = augment.rotate(x, torch.tensor([math.pi / 2]))
    assert out[0, 0, 8, 8] == pytest.approx(1.0, abs=1e-5)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)


def test_ops_keep_shape_dtype_and_channels() -> None:
    dsa = DSA()
    for channels in (1, 3):
        for dtype in (torch.float32, torch.float64):
            x = images(channels=channels, height=12, width=20).to(dtype)
            for op in OPS:
                out = dsa.apply(x, params_for(op, height=12, width=20))
                assert out.shape == x.shape and out.dtype == dtype, op


# --- parameter draws --------------------------------------------------------------------------


def test_sample_ranges() -> None:
    n, height, width = 1000, 16, 24
    draw = {op: params_for(op, batch=n, height=height, width=width).values for op in OPS}
    color = draw["color"]
    assert bool((color["brightness"] >= -0.5).all() & (color["brightness"] < 0.5).all())
    assert bool((color["saturation"] >= 0).all() & (color["saturation"] < 2).all())
    assert bool((color["contrast"] >= 0.5).all() & (color["contrast"] < 1.5).all())
    for key, reach in (("shift_y", 2), ("shift_x", 3)):  # round(0.125 * 16), round(0.125 * 24)
        shifts = draw["crop"][key]
        assert shifts.dtype == torch.long
        assert set(shifts.tolist()) == set(range(-reach, reach + 1))
    cut = draw["cutout"]
    assert set(cut["size_y"].tolist()) == {8} and set(cut["size_x"].tolist()) == {12}
    assert int(cut["centre_y"].min()) == 0 and int(cut["centre_y"].max()) == height
    assert int(cut["centre_x"].min()) == 0 and int(cut["centre_x"].max()) == width
    assert 400 < int(draw["flip"]["mask"].sum()) < 600
    for key in ("sx", "sy"):
        factors = draw["scale"][key]
        assert bool((factors >= 1 / 1.2).all() & (factors <= 1.2).all())
        assert float(factors.min()) < 0.85 and float(factors.max()) > 1.15
    assert not torch.equal(draw["scale"]["sx"], draw["scale"]["sy"])
    angles = draw["rotate"]["angles"]
    limit = math.radians(15)
    assert bool((angles.abs() <= limit).all()) and float(angles.abs().max()) > 0.9 * limit


def test_every_op_is_chosen() -> None:
    dsa, generator = DSA(), make_generator(1, "ops")
    counts = dict.fromkeys(OPS, 0)
    for _ in range(600):
        counts[dsa.sample(2, 8, 8, generator).op] += 1
    assert all(count > 50 for count in counts.values()), counts


def test_subset_strategy_and_validation() -> None:
    dsa = DSA("flip_crop")
    assert dsa.ops == ("flip", "crop")
    generator = make_generator(2)
    assert {dsa.sample(2, 8, 8, generator).op for _ in range(50)} == {"flip", "crop"}
    assert DSA().ops == OPS and "_".join(OPS) == DEFAULT_STRATEGY
    for bad in ("color_blur", "colour", "crop_crop", "color__crop"):
        with pytest.raises(DdppError):
            DSA(bad)
    with pytest.raises(DdppError):
        DSA(scale_ratio=0.5)


def test_none_strategy_is_identity_and_draws_nothing() -> None:
    dsa = DSA("none")
    assert not dsa.enabled and DSA().enabled
    generator = make_generator(3)
    state = generator.get_state()
    x = images()
    assert dsa(x, generator) is x
    assert torch.equal(generator.get_state(), state)
    assert dsa.apply(x, dsa.sample(4, 16, 16, generator)) is x


# --- reproducibility ----------------------------------------------------------------------------


def test_seed_reproduces_and_seeds_differ() -> None:
    dsa, x = DSA(), images()

    def run(seed: int) -> list[torch.Tensor]:
        generator = make_generator(seed, "dsa")
        return [dsa(x, generator) for _ in range(12)]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_global_rng_is_untouched() -> None:
    state = torch.get_rng_state()
    DSA()(images(), make_generator(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_apply_replays_the_augmented_call_bit_for_bit() -> None:
    # What a second pass relies on: recorded parameters give the batch the first pass saw, which
    # is the op (pinned on hand-made inputs above) applied with exactly those values.
    x = images()
    for op in OPS:
        dsa = DSA(op)
        seen = dsa(x, make_generator(0, op))
        params = params_for(op)
        assert params.op == op
        assert torch.equal(dsa.apply(x, params), seen), op
        assert torch.equal(seen, getattr(augment, op)(x, **params.values)), op
        assert not torch.equal(seen, x), op


def test_apply_rejects_a_batch_of_the_wrong_size() -> None:
    with pytest.raises(ValueError):
        DSA().apply(images(batch=3), params_for("flip", batch=4))


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_gradient_reaches_the_images(op: str) -> None:
    x = images().requires_grad_()
    out = DSA().apply(x, params_for(op))
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("op", OPS)
def test_gradcheck(op: str) -> None:
    x = images(batch=2, channels=2, height=5, width=6).double().requires_grad_()
    params = params_for(op, batch=2, height=5, width=6, seed=4)
    assert torch.autograd.gradcheck(lambda t: DSA().apply(t, params), (x,))


def test_create_graph_and_torch_func() -> None:
    # The student unroll: a gradient taken with create_graph, then backpropagated to the images.
    dsa = DSA()
    x = images(batch=2, height=8, width=8).requires_grad_()
    # small seeded weights keep tanh out of saturation, where float32 gradients are exactly 0
    weight = torch.randn(3 * 8 * 8, 2, generator=torch.Generator().manual_seed(0)) * 0.05
    weight.requires_grad_()
    for op in OPS:
        params = params_for(op, batch=2, height=8, width=8)
        loss = (dsa.apply(x, params).flatten(1) @ weight).tanh().sum()
        (g_weight,) = torch.autograd.grad(loss, weight, create_graph=True)
        (g_x,) = torch.autograd.grad(g_weight.pow(2).sum(), x)
        assert g_x.abs().sum() > 0, op

        def loss_of(images: torch.Tensor, params: DSAParams = params) -> torch.Tensor:
            return (dsa.apply(images, params).flatten(1) @ weight.detach()).tanh().sum()

        func_grad = torch.func.grad(loss_of)(x.detach())
        (autograd_grad,) = torch.autograd.grad(loss_of(x), x)
        torch.testing.assert_close(func_grad, autograd_grad)
        # vmap over a stack of batches with the same draw.
        stacked = torch.stack([x.detach(), x.detach() + 1])
        out = torch.func.vmap(lambda t, params=params: dsa.apply(t, params))(stacked)
        torch.testing.assert_close(out[1], dsa.apply(x.detach() + 1, params))


# ------------------------------------------------------------------------ Siamese (shared) mode


@pytest.mark.parametrize("op", OPS)
def test_siamese_gives_every_image_of_both_sides_the_same_transform(op):
    dsa = DSA(op)
    real = images(batch=5, seed=1)
    syn = torch.cat([real[3:4], images(batch=1, seed=2)]).requires_grad_(True)
    for seed in range(6):
        out_real, out_syn = dsa.siamese([real, syn], make_generator(seed, "siamese"))
        # The same image on the real and the synthetic side comes out identical...
        assert torch.equal(out_syn[0], out_real[3])
        # ...and every image got the one transform drawn for batch 1 with the same generator.
        shared = dsa.sample_shared(16, 16, make_generator(seed, "siamese"))
        assert shared.op == op
        for value in shared.values.values():
            assert value.shape[0] == 1
        for i in range(5):
            assert torch.equal(out_real[i : i + 1], dsa.apply(real[i : i + 1], shared))
        assert torch.equal(out_syn[1:2], dsa.apply(syn[1:2].detach(), shared))
    # Differentiable into the synthetic side.
    out_syn.sum().backward()
    assert syn.grad is not None


def test_siamese_differs_from_per_sample_draws_and_broadcast_checks_its_input():
    dsa = DSA("rotate")
    x = images(batch=1).expand(4, -1, -1, -1)
    (shared,) = dsa.siamese([x], make_generator(0, "s"))
    assert all(torch.equal(shared[0], shared[i]) for i in range(4))
    per_sample = dsa(x, make_generator(0, "s"))
    assert not torch.equal(per_sample[0], per_sample[1])
    with pytest.raises(ValueError, match="not 1"):
        augment.broadcast(params_for("rotate", batch=2), 4)
    assert DSA("none").siamese([x], make_generator(0, "s"))[0] is x
