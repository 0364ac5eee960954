"""The architecture registry: names, exact parameter counts, shapes, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpp_cli.engine import models
from ddpp_cli.engine.errors import DdppError

ALL = [
    "alexnet",
    "convnet",
    "convnet-bn",
    "convnet-d3",
    "convnet-d4",
    "convnet-d5",
    "resnet18",
    "resnet18-ap",
    "resnet18-bn",
    "vgg11",
    "vgg11-bn",
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv(c_in: int, c_out: int, k: int) -> int:  # bias-free, as in every ResNet convolution
    return c_in * c_out * k * k


def _gn(c: int) -> int:  # GroupNorm(c, c, affine): weight + bias
    return 2 * c


def _resnet18_ap_by_hand(channels: int, side: int, classes: int) -> int:
    """MTT's ResNet18_AP (networks.py), counted layer by layer from its definition."""
    stem = _conv(channels, 64, 3) + _gn(64)
    total = stem
    in_planes = 64
    for planes in (64, 128, 256, 512):
        # first block: conv1, bn1, conv2, bn2, and a shortcut (1×1 conv, AvgPool, norm)
        # whenever the width changes (stages 2-4); second block: conv1, bn1, conv2, bn2
        first = _conv(in_planes, planes, 3) + _gn(planes) + _conv(planes, planes, 3) + _gn(planes)
        if in_planes != planes:
            first += _conv(in_planes, planes, 1) + _gn(planes)
        second = 2 * (_conv(planes, planes, 3) + _gn(planes))
        total += first + second
        in_planes = planes
    final_side = side // 2 // 2 // 2  # three AvgPool 2; the final avg_pool2d(1) keeps the map
    return total + (512 * final_side * final_side) * classes + classes  # Linear(512·4·4, K)


def test_resnet18_ap_count_by_hand_is_mtts_published_figure() -> None:
    # stem 1,856 + stage1 147,968 + stage2 525,568 + stage3 2,099,712 + stage4 8,393,728
    # + head 512·4·4·10 + 10 = 81,930
    assert _resnet18_ap_by_hand(3, 32, 10) == 11_250_762


def test_available_lists_every_architecture() -> None:
    assert models.available() == ALL


@pytest.mark.parametrize(
    ("name", "channels", "size", "classes", "expected"),
    [
        ("convnet", 3, 32, 10, 320_010),
        ("convnet-d3", 3, 32, 10, 320_010),
        ("convnet-bn", 3, 32, 10, 320_010),
        ("convnet", 3, 32, 100, 504_420),
        ("convnet", 1, 28, 10, 317_706),
        ("alexnet", 3, 32, 10, 1_872_202),
        ("vgg11", 3, 32, 10, 9_231_114),
        ("vgg11-bn", 3, 32, 10, 9_231_114),
        ("resnet18", 3, 32, 10, 11_173_962),
        ("resnet18-bn", 3, 32, 10, 11_173_962),
        ("resnet18-ap", 3, 32, 10, _resnet18_ap_by_hand(3, 32, 10)),
        ("resnet18-ap", 1, 28, 10, _resnet18_ap_by_hand(1, 28, 10)),
        ("resnet18-ap", 3, 64, 200, _resnet18_ap_by_hand(3, 64, 200)),
    ],
)
def test_parameter_counts_match_the_reference_networks(
    name: str, channels: int, size: int, classes: int, expected: int
) -> None:
    assert n_params(models.create(name, channels, classes, size)) == expected


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_forward_and_backward(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = models.create(name, channels, 7, size)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize(("channels", "size", "depth"), [(3, 64, 4), (1, 112, 5), (3, 128, 5)])
def test_convnet_picks_its_depth_from_the_image_size(channels: int, size: int, depth: int) -> None:
    model = models.create("convnet", channels, 4, size)
    assert model.depth == depth
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == depth
    assert model.classifier.in_features == 128 * (size // 2**depth) ** 2
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert model.features[0].weight.grad is not None


def test_convnet_depth_rule() -> None:
    expected = {8: 3, 28: 3, 32: 3, 48: 4, 64: 4, 96: 5, 112: 5, 128: 5, 224: 6}
    assert {size: models.convnet_depth(size) for size in expected} == expected
    assert models.convnet_depth((32, 64)) == 4
    assert models.convnet_depth((128, 32)) == 5


def test_fixed_depth_convnets() -> None:
    for depth in (3, 4, 5):
        model = models.create(f"convnet-d{depth}", 3, 10, 64)
        assert model.depth == depth
        assert model.classifier.in_features == 128 * (64 // 2**depth) ** 2


def test_mnist_like_inputs_are_padded_to_32_px() -> None:
    gray28 = models.create("convnet", 1, 10, 28)
    assert gray28.features[0].padding == (3, 3)
    assert gray28.classifier.in_features == 128 * 4 * 4
    assert models.create("vgg11", 1, 10, 28).features[0].padding == (3, 3)
    assert models.create("alexnet", 1, 10, 28).features[0].padding == (4, 4)
    # Colour 28 px images and grayscale images of other sizes keep padding 1.
    colour28 = models.create("convnet", 3, 10, 28)
    assert colour28.features[0].padding == (1, 1)
    assert colour28.classifier.in_features == 128 * 3 * 3
    assert models.create("convnet", 1, 10, 32).features[0].padding == (1, 1)
    assert models.create("vgg11", 3, 10, 32).features[0].padding == (1, 1)


def test_instancenorm_is_groupnorm_with_one_group_per_channel() -> None:
    for name in ("convnet", "vgg11", "resnet18", "resnet18-ap"):
        model = models.create(name, 3, 10, 32)
        norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert norms, name
        assert all(m.num_groups == m.num_channels and m.affine for m in norms), name
        assert not models.uses_batchnorm(model)
    assert not any(
        isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))
        for m in models.create("alexnet", 3, 10, 32).modules()
    )


def test_uses_batchnorm() -> None:
    for name in ALL:
        model = models.create(name, 3, 10, 32)
        assert models.uses_batchnorm(model) == name.endswith("-bn"), name


def test_resnet18_ap_parameters_in_mtts_order() -> None:
    # MTT's ResNet18_AP named_parameters(), written from networks.py: stem conv1, bn1; per block
    # conv1, bn1, conv2, bn2 and, where the width changes, shortcut.0 (1×1 conv) and shortcut.2
    # (norm after the AvgPool at shortcut.1); classifier Linear(512·4·4, 10). ddpp names its
    # norms norm1/norm2 where MTT says bn1/bn2; order and shapes are MTT's.
    def norm(prefix: str, c: int) -> list:
        return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,))]

    expected = [("conv1.weight", (64, 3, 3, 3)), *norm("bn1", 64)]
    in_planes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p, c_in = f"layer{stage}.{block}", in_planes if block == 0 else planes
            expected += [(f"{p}.conv1.weight", (planes, c_in, 3, 3)), *norm(f"{p}.bn1", planes)]
            expected += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *norm(f"{p}.bn2", planes)]
            if c_in != planes:
                expected += [(f"{p}.shortcut.0.weight", (planes, c_in, 1, 1))]
                expected += norm(f"{p}.shortcut.2", planes)
        in_planes = planes
    expected += [("classifier.weight", (10, 512 * 4 * 4)), ("classifier.bias", (10,))]
    model = models.create("resnet18-ap", 3, 10, 32)
    found = [(n.replace("norm", "bn"), tuple(p.shape)) for n, p in model.named_parameters()]
    assert found == expected


def test_resnet18_ap_downsamples_by_average_pooling() -> None:
    ap = models.create("resnet18-ap", 3, 10, 32)
    assert all(m.stride == (1, 1) for m in ap.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.AvgPool2d) for m in ap.modules()) == 6  # 3 blocks + 3 shortcuts
    strided = models.create("resnet18", 3, 10, 32)
    assert sum(m.stride == (2, 2) for m in strided.modules() if isinstance(m, nn.Conv2d)) == 6


def test_parameter_order_follows_the_reference_networks() -> None:
    names = [n for n, _ in models.create("convnet-d3", 3, 10, 32).named_parameters()]
    assert names == [
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
        "features.4.weight",
        "features.4.bias",
        "features.5.weight",
        "features.5.bias",
        "features.8.weight",
        "features.8.bias",
        "features.9.weight",
        "features.9.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    resnet = [n for n, _ in models.create("resnet18", 3, 10, 32).named_parameters()]
    assert resnet[:3] == ["conv1.weight", "norm1.weight", "norm1.bias"]
    assert resnet[-2:] == ["classifier.weight", "classifier.bias"]


def test_non_square_images() -> None:
    for name in ("convnet", "alexnet", "resnet18"):
        model = models.create(name, 3, 5, (32, 48))
        assert model(torch.randn(2, 3, 32, 48)).shape == (2, 5)


def test_image_size_forms_are_equivalent() -> None:
    a = models.create("convnet", 3, 10, 32)
    b = models.create("convnet", 3, 10, (32, 32))
    assert n_params(a) == n_params(b)


def test_unknown_architecture_lists_the_choices() -> None:
    with pytest.raises(DdppError, match=r"unknown architecture 'lenet'; choose one of: alexnet, "):
        models.create("lenet", 3, 10, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("convnet", 0, 10, 32), "channels must be at least 1"),
        (("convnet", 3, 1, 32), "classes must be at least 2"),
        (("convnet", 3.0, 10, 32), "channels must be an integer"),
        (("convnet", 3, 10, 0), "image size must be positive"),
        (("convnet", 3, 10, (32,)), "image size must be a positive integer or a"),
        (("convnet", 3, 10, "32"), "image size must be a positive integer or a"),
        (("convnet-d5", 3, 10, 16), "too small for 'convnet-d5'.*convnet-d3"),
        (("vgg11", 3, 10, 16), "too small for 'vgg11'"),
        (("alexnet", 3, 10, 4), "too small for 'alexnet'"),
        (("resnet18-ap", 3, 10, 4), "too small for 'resnet18-ap'"),
    ],
)
def test_bad_arguments_raise_clear_errors(args: tuple, message: str) -> None:
    with pytest.raises(DdppError, match=message):
        models.create(*args)


def test_smallest_sizes_that_work() -> None:
    for name, size in [("convnet-d5", 32), ("vgg11", 32), ("alexnet", 8), ("resnet18-ap", 8)]:
        model = models.create(name, 3, 10, size)
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_check_known_accepts_every_available_name_and_names_the_choices_otherwise():
    for name in models.available():
        models.check_known(name)
    with pytest.raises(DdppError, match=r"unknown architecture 'convnet9'; choose one of: alexnet"):
        models.check_known("convnet9")


def convnet_count_by_hand(channels: int, width: int, depth: int, classes: int, side: int) -> int:
    """DC's ConvNet: depth × (conv 3×3 + bias, GroupNorm affine) then Linear from the final map."""
    convs = sum((c_in * 9 + 1) * width for c_in in [channels] + [width] * (depth - 1))
    norms = 2 * width * depth
    final = side // 2**depth
    return convs + norms + (width * final * final + 1) * classes


@pytest.mark.parametrize(
    ("name", "width", "depth"),
    [("convnet-w1024", 1024, 3), ("convnet-w128", 128, 3), ("convnet-d4-w64", 64, 4)],
)
def test_convnets_of_any_width_count_as_by_hand(name: str, width: int, depth: int) -> None:
    expected = convnet_count_by_hand(3, width, depth, 10, 32)
    assert models.parameter_count(name, 3, 10, 32) == expected
    model = models.create(name, 3, 10, 32)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.features[0].out_channels == width and model.depth == depth
    assert models.parameter_count("convnet-w1024", 3, 10, 32) == 19_075_082  # Table II's KIP width


def test_width_combines_with_batchnorm_and_depth_and_128_is_the_default() -> None:
    bn = models.create("convnet-bn-d4-w256", 3, 10, 64)
    assert models.uses_batchnorm(bn) and bn.depth == 4 and bn.features[0].out_channels == 256
    torch.manual_seed(0)
    plain = models.create("convnet", 3, 10, 32)
    torch.manual_seed(0)
    w128 = models.create("convnet-w128", 3, 10, 32)
    for a, b in zip(plain.parameters(), w128.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["convnet-w0", "convnet-w", "convnet-w1024-bn", "convnet-x2",
                                  "convnet-w99999", "resnet18-w64"])  # fmt: skip
def test_other_names_are_refused_naming_the_family(name: str) -> None:
    with pytest.raises(DdppError, match=r"unknown architecture.*convnet\[-bn\]\[-dN\]\[-wN\]"):
        models.check_known(name)
