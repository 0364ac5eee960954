"""Network registry: the DC/DSA benchmark architectures used by MTT and DDPP.

``create(name, channels, num_classes, image_size)`` is the one entry point and ``available()``
lists the names. The networks follow the DC/DSA benchmark variants (Zhao et al.) that MTT and
DDPP evaluate with: "instancenorm" means ``GroupNorm(C, C, affine=True)``, ``-bn`` variants use
BatchNorm, and grayscale 28×28 inputs (MNIST-like) get extra padding in the first convolution so
that the network sees 32×32 feature maps. Parameters are registered in the same order as the
reference networks, so a flat parameter vector (see ``functional.py``) lines up with the lists in
MTT's replay buffers.

Differences from the reference code, all of which leave the parameter counts at 32 px unchanged:
heads are sized for any image size (the reference hard-codes 32 px for AlexNet, VGG and ResNet),
ResNet18 ends in a global average pool (the reference uses a fixed 4×4 pool, which is global only
at 32 px), and ReLUs are not in-place, which keeps every model safe under ``torch.func``.
ResNet18-AP is MTT's ``ResNet18_AP``: downsampling by average pooling and no final pool, so its
head reads the whole last feature map (``Linear(512·4·4, K)`` at 32 px, ``512·3·3`` at 28 px).
Block norms are named ``norm1``/``norm2`` where the reference says ``bn1``/``bn2``; the order of
the parameters, which is what MTT's buffers rely on, is the same.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpp_cli.engine.errors import DdppError

CONVNET_WIDTH = 128
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
RESNET18_STAGES = ((64, 2), (128, 2), (256, 2), (512, 2))  # (width, basic blocks)

ImageSize = int | tuple[int, int]


# --------------------------------------------------------------------------------------------
# Helpers


def _norm(kind: str, channels: int) -> nn.Module:
    """``instancenorm`` = GroupNorm with one group per channel (affine); ``batchnorm``."""
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}")


def _mnist_like(channels: int, size: tuple[int, int]) -> bool:
    """Grayscale 28×28 inputs, which DC pads to 32×32 in the first convolution."""
    return channels == 1 and size == (28, 28)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _feature_size(arch: str, layers: nn.Sequential, size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after ``layers`` (convolutions and poolings); DdppError if it vanishes."""
    h, w = size
    pools = 0
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel, stride, padding = (
                _pair(layer.kernel_size),
                _pair(layer.stride),
                _pair(layer.padding),  # type: ignore[arg-type]
            )
            h = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
            w = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
            pools += not isinstance(layer, nn.Conv2d)
            if h < 1 or w < 1:
                fix = " or a shallower ConvNet (convnet-d3)" if arch.startswith("convnet") else ""
                raise DdppError(
                    f"image size {size[0]}×{size[1]} is too small for '{arch}': its feature map "
                    f"vanishes at pooling layer {pools}; use larger images{fix}."
                )
    return h, w


def _image_size(image_size: ImageSize) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` → ``(32, 32)``; DdppError for anything else."""
    try:
        if isinstance(image_size, bool):
            raise TypeError
        if isinstance(image_size, Sequence) and not isinstance(image_size, str):
            if len(image_size) != 2:
                raise TypeError
            h, w = (operator.index(v) for v in image_size)
        else:
            h = w = operator.index(image_size)  # type: ignore[arg-type]
    except TypeError:
        raise DdppError(
            f"image size must be a positive integer or a (height, width) pair, got {image_size!r}."
        ) from None
    if h < 1 or w < 1:
        raise DdppError(f"image size must be positive, got {h}×{w}.")
    return h, w


def _positive_int(value: int, what: str, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise DdppError(f"{what} must be an integer, got {value!r}.") from None
    if number < minimum:
        raise DdppError(f"{what} must be at least {minimum}, got {number}.")
    return number


# --------------------------------------------------------------------------------------------
# Architectures


class ConvNet(nn.Module):
    """DC's ConvNet: ``depth`` × [Conv 3×3 (pad 1) → norm → ReLU → AvgPool 2] → Linear."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        depth: int,
        norm: str = "instancenorm",
        width: int = CONVNET_WIDTH,
        arch: str = "convnet",
    ) -> None:
        super().__init__()
        self.depth = depth
        first_pad = 3 if _mnist_like(channels, image_size) else 1
        layers: list[nn.Module] = []
        in_channels = channels
        for d in range(depth):
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=first_pad if d == 0 else 1),
                _norm(norm, width),
                nn.ReLU(),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        h, w = _feature_size(arch, self.features, image_size)
        self.classifier = nn.Linear(width * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNet(nn.Module):
    """DC's AlexNet: five convolutions (no norm layers), three max-pools, one Linear."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, kernel_size=5, padding=4 if channels == 1 else 2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(128, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 192, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        h, w = _feature_size("alexnet", self.features, image_size)
        self.fc = nn.Linear(192 * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class VGG(nn.Module):
    """DC's VGG: [Conv 3×3 → norm → ReLU] per number in ``cfg``, MaxPool 2 at "M"; Linear."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        cfg: Sequence[int | str] = VGG11_CFG,
        norm: str = "instancenorm",
        arch: str = "vgg11",
    ) -> None:
        super().__init__()
        first_pad = 3 if _mnist_like(channels, image_size) else 1
        layers: list[nn.Module] = []
        in_channels = channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out_channels = int(item)
            pad = 1 if layers else first_pad
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=pad),
                _norm(norm, out_channels),
                nn.ReLU(),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        h, w = _feature_size(arch, self.features, image_size)
        self.classifier = nn.Linear(in_channels * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block; ``avgpool`` downsamples by AvgPool 2 after stride-1 convolutions."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm: str, avgpool: bool = False
    ) -> None:
        super().__init__()
        conv_stride = 1 if avgpool else stride
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=conv_stride, padding=1, bias=False
        )
        self.norm1 = _norm(norm, planes)
        self.pool = nn.AvgPool2d(2, 2) if avgpool and stride != 1 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.norm2 = _norm(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=conv_stride, bias=False),
                *([nn.AvgPool2d(2, 2)] if avgpool and stride != 1 else []),
                _norm(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(self.pool(out)))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """DC's CIFAR ResNet18: 3×3 stem (stride 1), four stages of two basic blocks, global pool.

    ``avgpool=True`` is MTT's ResNet18_AP: stride-1 convolutions, AvgPool 2 to downsample, and
    no final pool (the head reads the flattened 512×H/8×W/8 map).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        norm: str = "instancenorm",
        avgpool: bool = False,
        arch: str = "resnet18",
    ) -> None:
        super().__init__()
        if avgpool and min(image_size) < 8:
            raise DdppError(
                f"image size {image_size[0]}×{image_size[1]} is too small for '{arch}': it "
                "halves the feature map three times; use images of at least 8×8."
            )
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.norm1 = _norm(norm, 64)
        stages = []
        in_planes = 64
        for i, (planes, blocks) in enumerate(RESNET18_STAGES):
            stage = []
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                stage.append(BasicBlock(in_planes, planes, stride, norm, avgpool))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.global_pool = not avgpool
        h, w = (1, 1) if self.global_pool else (image_size[0] // 8, image_size[1] // 8)
        self.classifier = nn.Linear(in_planes * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.global_pool:
            out = F.adaptive_avg_pool2d(out, 1)
        return self.classifier(torch.flatten(out, 1))


# --------------------------------------------------------------------------------------------
# Registry


def convnet_depth(image_size: ImageSize) -> int:
    """ConvNet depth for an image size: the smallest depth ≥ 3 whose final map is ≤ 4 px.

    That is 3 up to 32 px, 4 up to 64 px, 5 up to 128 px (so 112 px gets 5, as in the paper's
    COVID-19 experiments), 6 up to 256 px; the larger side decides for non-square images.
    """
    side = max(_image_size(image_size))
    depth = 3
    while side > 4 * 2**depth:
        depth += 1
    return depth


def _convnet(depth: int | None, norm: str, arch: str) -> Callable[..., nn.Module]:
    def build(channels: int, num_classes: int, size: tuple[int, int]) -> nn.Module:
        d = convnet_depth(size) if depth is None else depth
        return ConvNet(channels, num_classes, size, depth=d, norm=norm, arch=arch)

    return build


_BUILDERS: dict[str, Callable[[int, int, tuple[int, int]], nn.Module]] = {
    "alexnet": lambda c, k, s: AlexNet(c, k, s),
    "convnet": _convnet(None, "instancenorm", "convnet"),
    "convnet-bn": _convnet(None, "batchnorm", "convnet-bn"),
    "convnet-d3": _convnet(3, "instancenorm", "convnet-d3"),
    "convnet-d4": _convnet(4, "instancenorm", "convnet-d4"),
    "convnet-d5": _convnet(5, "instancenorm", "convnet-d5"),
    "resnet18": lambda c, k, s: ResNet18(c, k, s),
    "resnet18-ap": lambda c, k, s: ResNet18(c, k, s, avgpool=True, arch="resnet18-ap"),
    "resnet18-bn": lambda c, k, s: ResNet18(c, k, s, norm="batchnorm", arch="resnet18-bn"),
    "vgg11": lambda c, k, s: VGG(c, k, s),
    "vgg11-bn": lambda c, k, s: VGG(c, k, s, norm="batchnorm", arch="vgg11-bn"),
}


# Any ConvNet of the family: ``convnet`` with optional ``-bn`` (BatchNorm), ``-dN`` (depth N
# instead of the image size's) and ``-wN`` (N channels per block instead of 128), e.g.
# ``convnet-w1024`` (KIP's and Table II's wide ConvNet) or ``convnet-bn-d4-w256``.
CONVNET_FAMILY = "convnet[-bn][-dN][-wN]"
_CONVNET_NAME = re.compile(
    r"convnet(?P<bn>-bn)?(?:-d(?P<depth>[1-9]\d*))?(?:-w(?P<width>[1-9]\d*))?"
)
MAX_CONVNET_WIDTH = 16384


def available() -> list[str]:
    """Architecture names accepted by ``create``, sorted (any ConvNet of :data:`CONVNET_FAMILY`
    is accepted too)."""
    return sorted(_BUILDERS)


def _builder(name: str) -> Callable[[int, int, tuple[int, int]], nn.Module] | None:
    """The builder of ``name``: a registered architecture, or a ConvNet of the family."""
    if name in _BUILDERS:
        return _BUILDERS[name]
    match = _CONVNET_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match["width"] or CONVNET_WIDTH) > MAX_CONVNET_WIDTH:
        return None
    depth = None if match["depth"] is None else int(match["depth"])
    norm = "batchnorm" if match["bn"] else "instancenorm"
    width = int(match["width"] or CONVNET_WIDTH)

    def build(channels: int, num_classes: int, size: tuple[int, int]) -> nn.Module:
        d = convnet_depth(size) if depth is None else depth
        return ConvNet(channels, num_classes, size, depth=d, norm=norm, width=width, arch=name)

    return build


def check_known(name: str) -> None:
    """Raise a DdppError naming the choices unless ``name`` is one of ``available()`` or a
    ConvNet of :data:`CONVNET_FAMILY`."""
    if _builder(name) is None:
        raise DdppError(
            f"unknown architecture '{name}'; choose one of: {', '.join(available())}, or any "
            f"{CONVNET_FAMILY} (e.g. convnet-w1024; width at most {MAX_CONVNET_WIDTH})."
        )


def parameter_count(name: str, channels: int, num_classes: int, image_size: ImageSize) -> int:
    """How many parameters architecture ``name`` has for such images (e.g. 317,706 for
    ConvNet-3 on 28×28 gray images and 10 classes)."""
    with torch.device("meta"):
        model = create(name, channels, num_classes, image_size)
    return sum(p.numel() for p in model.parameters())


def create(name: str, channels: int, num_classes: int, image_size: ImageSize) -> nn.Module:
    """Build architecture ``name`` for ``channels``-channel images of ``image_size`` pixels.

    ``image_size`` is an int (square) or (height, width). Parameters get PyTorch's default
    initialisation from the global RNG; seed it (e.g. ``torch.manual_seed``) for reproducibility.
    """
    name = name.lower() if isinstance(name, str) else name
    check_known(name)
    builder = _builder(name)
    channels = _positive_int(channels, "the number of image channels", 1)
    num_classes = _positive_int(num_classes, "the number of classes", 2)
    return builder(channels, num_classes, _image_size(image_size))


def uses_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers (running statistics; batch-dependent outputs)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
