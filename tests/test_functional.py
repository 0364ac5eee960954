"""Flat-parameter layout and the functional forward used by the student unroll."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ddpp_cli.engine import models
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import (
    ParamLayout,
    flat_parameters,
    functional_forward,
    load_flat,
)


def make(name: str = "convnet", channels: int = 3, classes: int = 10, size: int = 32):
    torch.manual_seed(0)
    return models.create(name, channels, classes, size)


def test_layout_follows_named_parameters() -> None:
    model = make()
    layout = ParamLayout.of(model)
    named = list(model.named_parameters())
    assert layout.names == tuple(n for n, _ in named)
    assert layout.shapes == tuple(tuple(p.shape) for _, p in named)
    assert layout.numel == 320_010 == sum(p.numel() for p in model.parameters())


def test_flatten_unflatten_round_trip() -> None:
    model = make()
    layout = ParamLayout.of(model)
    flat = flat_parameters(model)
    assert flat.shape == (layout.numel,) and not flat.requires_grad
    assert torch.equal(layout.flatten(dict(model.named_parameters())), flat)
    pieces = layout.unflatten(flat)
    assert list(pieces) == list(layout.names)
    for name, p in model.named_parameters():
        assert torch.equal(pieces[name], p)
        # A view into the flat vector, not a copy.
        assert pieces[name].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    assert torch.equal(layout.flatten(pieces), flat)


def test_flat_parameters_is_a_copy() -> None:
    model = make()
    flat = flat_parameters(model)
    flat.zero_()
    assert not torch.equal(flat_parameters(model), flat)


def test_load_flat_copies_values_in_place() -> None:
    source, target = make(), models.create("convnet", 3, 10, 32)
    weight = target.classifier.weight
    flat = flat_parameters(source).requires_grad_()
    load_flat(target, flat * 1.0)
    assert target.classifier.weight is weight
    assert torch.equal(flat_parameters(target), flat.detach())
    assert not any(p.grad is not None for p in target.parameters())
    with pytest.raises(DdppError, match=r"does not fit a layout of 320010 parameters"):
        load_flat(target, flat.detach()[:-1])


@pytest.mark.parametrize("name", models.available())
def test_functional_forward_equals_the_module_exactly(name: str) -> None:
    model = make(name)
    x = torch.randn(2, 3, 32, 32)
    layout = ParamLayout.of(model)
    flat = flat_parameters(model)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(functional_forward(model, layout, flat, x), expected)
        if models.uses_batchnorm(model):
            model.eval()
            assert torch.equal(functional_forward(model, layout, flat, x), model(x))


def test_gradients_flow_into_the_flat_vector() -> None:
    model = make()
    layout = ParamLayout.of(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    flat = flat_parameters(model).requires_grad_()
    (grad,) = torch.autograd.grad(
        F.cross_entropy(functional_forward(model, layout, flat, x), y), flat
    )
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


def _unrolled_loss(model, layout, start, target, x_syn, y, lr):
    """Two student steps from ``start`` on ``x_syn``, then the distance to ``target``."""
    theta = start
    for _ in range(2):
        loss = F.cross_entropy(functional_forward(model, layout, theta, x_syn), y)
        (g,) = torch.autograd.grad(loss, theta, create_graph=True)
        theta = theta - lr * g
    return ((theta - target) ** 2).sum()


def test_second_order_gradients_through_the_student_unroll() -> None:
    model = make("convnet-d3", channels=1, classes=3, size=8).double()
    layout = ParamLayout.of(model)
    start = flat_parameters(model).requires_grad_()
    target = start.detach() + 0.01 * torch.randn(layout.numel, dtype=torch.float64)
    x_syn = torch.randn(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)

    loss = _unrolled_loss(model, layout, start, target, x_syn, y, lr)
    gx, glr = torch.autograd.grad(loss, (x_syn, lr))
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0 and glr != 0

    # The gradient w.r.t. the images agrees with a central finite difference.
    direction = torch.randn_like(x_syn)
    eps = 1e-5
    with torch.no_grad():
        plus = x_syn + eps * direction
        minus = x_syn - eps * direction
    numeric = (
        _unrolled_loss(model, layout, start, target, plus, y, lr)
        - _unrolled_loss(model, layout, start, target, minus, y, lr)
    ) / (2 * eps)
    torch.testing.assert_close((gx * direction).sum(), numeric.detach(), rtol=1e-4, atol=1e-8)


def test_vmap_over_stacked_flat_vectors() -> None:
    model = make()
    layout = ParamLayout.of(model)
    other = models.create("convnet", 3, 10, 32)
    flats = torch.stack([flat_parameters(model), flat_parameters(other)])
    x = torch.randn(2, 3, 32, 32)
    out = torch.func.vmap(lambda f: functional_forward(model, layout, f, x))(flats)
    with torch.no_grad():
        torch.testing.assert_close(out[0], model(x))
        torch.testing.assert_close(out[1], other(x))


def test_layout_json_round_trip() -> None:
    layout = ParamLayout.of(make("resnet18-ap"))
    data = json.loads(json.dumps(layout.to_json()))
    assert data[0] == ["conv1.weight", [64, 3, 3, 3]]
    assert ParamLayout.from_json(data) == layout


@pytest.mark.parametrize(
    "data",
    [
        {"a": [1]},
        [["a"]],
        [["a", [2, "3"]]],
        [["a", [-1]]],
        [[1, [2]]],
        [["a", [2]], ["a", [3]]],
        [["a", [True]]],
    ],
)
def test_malformed_layout_json_is_rejected(data) -> None:
    with pytest.raises(DdppError, match="malformed"):
        ParamLayout.from_json(data)


def test_check_compatible_names_the_first_mismatch() -> None:
    model_layout = ParamLayout.of(make(classes=10))
    model_layout.check_compatible(ParamLayout.of(make(classes=10)), "buffer 'b'")
    with pytest.raises(
        DdppError,
        match=r"buffer 'b' does not match the model: parameter 12 is 'classifier.weight' of shape "
        r"\(100, 2048\) there, but the model expects 'classifier.weight' of shape \(10, 2048\)",
    ):
        model_layout.check_compatible(ParamLayout.of(make(classes=100)), "buffer 'b'")
    with pytest.raises(DdppError, match=r"parameter 0 is 'conv1.weight'"):
        model_layout.check_compatible(ParamLayout.of(make("resnet18")), "the file 'x'")
    shorter = ParamLayout(model_layout.names[:-1], model_layout.shapes[:-1])
    with pytest.raises(DdppError, match=r"13 parameter tensors but the model has 14.*classifier"):
        model_layout.check_compatible(shorter, "the file 'x'")


def test_unflatten_rejects_wrong_shapes() -> None:
    layout = ParamLayout(("a", "b"), ((2, 3), (4,)))
    assert layout.numel == 10
    with pytest.raises(DdppError, match=r"expected shape \(10,\)"):
        layout.unflatten(torch.zeros(11))
    with pytest.raises(DdppError, match=r"expected shape \(10,\)"):
        layout.unflatten(torch.zeros(2, 5))
    with pytest.raises(DdppError, match="'b' is missing"):
        layout.flatten({"a": torch.zeros(2, 3)})
    with pytest.raises(DdppError, match=r"'a' has shape \(3, 2\); expected \(2, 3\)"):
        layout.flatten({"a": torch.zeros(3, 2), "b": torch.zeros(4)})
