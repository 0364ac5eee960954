"""A family of small ImageFolder datasets built from Debian's Fashion-MNIST IDX files (issue 14).

Each folder is ``<out>/<name>/train/<class>/NNNNN.png`` + ``test/<class>/NNNNN.png``: a seeded,
class-balanced draw of Fashion-MNIST (train from the 60k train split, test from the 10k test
split), resized (bilinear, antialiased) to 16, 32 or 64 px. RGB folders colour every image with a
random tint drawn independently of its class (a per-image factor in [0.25, 1] per channel), so
colour carries no label. The 3-class folders use the first three classes (T-shirt/top,
Trouser, Pullover).

The covering design: 16, 32 and 64 px × gray/RGB × 10/3 classes would be 12 folders; six cover
every pair of factors (each size with gray and RGB, each size with 10 and 3 classes, gray and
RGB each with 10 and 3 classes), which is what fits the 2-core CPU budget of the acceptance
runs (64 px runs cost about 4× a 32 px one):

    gray16-c10  rgb16-c3  gray32-c3  rgb32-c10  gray64-c10  rgb64-c3

    python benchmarks/make_folder_family.py --out /tmp/ddpp-family            # the six folders
    python benchmarks/make_folder_family.py --out /tmp/ddpp-family --all      # all twelve
    python benchmarks/make_folder_family.py --out /tmp/f --only gray16-c10 --train 1400

Deterministic: the same seed gives the same files. Nothing here is imported by the tests.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ddpp_cli.engine import data

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
)  # fmt: skip
COVERING = ("gray16-c10", "rgb16-c3", "gray32-c3", "rgb32-c10", "gray64-c10", "rgb64-c3")
ALL = tuple(
    f"{colour}{size}-c{k}"
    for size, colour, k in itertools.product((16, 32, 64), ("gray", "rgb"), (10, 3))
)


def parse_name(name: str) -> tuple[bool, int, int]:
    """``rgb32-c10`` -> (rgb, size, classes)."""
    head, classes = name.split("-c")
    rgb = head.startswith("rgb")
    return rgb, int(head.removeprefix("rgb").removeprefix("gray")), int(classes)


def balanced_draw(labels: torch.Tensor, classes: int, total: int, seed: int) -> torch.Tensor:
    """``total`` indices (about total/classes per class) of labels < ``classes``, seeded, sorted."""
    generator = torch.Generator().manual_seed(seed)
    per_class = [total // classes + (1 if c < total % classes else 0) for c in range(classes)]
    chosen = []
    for label, take in enumerate(per_class):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def render(images: torch.Tensor, size: int, rgb: bool, seed: int) -> torch.Tensor:
    """uint8 (N, C, size, size) from uint8 (N, 1, 28, 28): resized, tinted when ``rgb``."""
    x = images.float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if rgb:
        generator = torch.Generator().manual_seed(seed)
        tint = 0.25 + 0.75 * torch.rand(len(x), 3, 1, 1, generator=generator)
        x = x * tint  # independent of the label: colour carries no class information
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def write_split(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        class_dir = folder / f"{label}-{CLASSES[label]}"
        class_dir.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        mode = "RGB" if array.shape[2] == 3 else "L"
        Image.fromarray(array if mode == "RGB" else array[:, :, 0], mode).save(
            class_dir / f"{index:05d}.png"
        )


def make(name: str, out: Path, train: int, test: int, seed: int) -> Path:
    """Write folder ``name`` under ``out`` (replacing nothing: refuses an existing folder)."""
    rgb, size, classes = parse_name(name)
    folder = out / name
    if folder.exists():
        raise SystemExit(f"{folder} exists; remove it or choose another --out.")
    for split, total, offset in (("train", train, 0), ("test", test, 1)):
        loaded = data.load("fashionmnist", SOURCE, split, download=False)
        raw = (loaded.images * 255).round().to(torch.uint8)
        idx = balanced_draw(loaded.labels, classes, total, seed + offset)
        pictures = render(raw[idx], size, rgb, seed + 10 + offset)
        write_split(folder / split, pictures, loaded.labels[idx])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--all", action="store_true", help="all 12 folders, not the 6 covering")
    parser.add_argument("--only", nargs="+", default=None, help=f"names, e.g. {COVERING[0]}")
    parser.add_argument("--train", type=int, default=1400, help="training images per folder")
    parser.add_argument("--test", type=int, default=500, help="test images per folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = args.only or (ALL if args.all else COVERING)
    for name in names:
        if name not in ALL:
            raise SystemExit(f"unknown folder '{name}'; choose from: {', '.join(ALL)}")
        folder = make(name, args.out, args.train, args.test, args.seed)
        print(f"{name}: {folder} ({args.train} train / {args.test} test)")


if __name__ == "__main__":
    main()
