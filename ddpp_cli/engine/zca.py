"""ZCA whitening exactly as docs/data.md#zca-whitening (and MTT's kornia ``ZCAWhitening(eps=0.1)``).

On images in [0, 1] flattened to D = C·H·W: mean μ, covariance Σ = XcᵀXc/(N−1), Σ = U S Uᵀ in
float64, W = U diag((S + ε)^−½) Uᵀ and W⁻¹ = U diag((S + ε)^½) Uᵀ with ε = 0.1;
x ↦ (x − μ) W and y ↦ y W⁻¹ + μ. Fit once on the train split, saved with the buffer.

KIP's variant (``variant="kip"``, :func:`fit_kip`; docs/methods.md, KIP) standardises each
channel, then makes each image zero-mean and unit-norm ("layer norm") before whitening, with a
ridge relative to the covariance's mean eigenvalue; it is fitted and applied alike, and saved in
the same file with its ``variant`` and channel statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import store
from ddpp_cli.engine.errors import DdppError

MAX_ZCA_DIM = 12288
DEFAULT_REGULARIZATION = 0.1
# KIP's strength, relative to tr(Σ)/D: google-research's preprocessing as the KIP authors' team
# ran it, ``get_preprocess_op(x_train, layer_norm=True, zca_reg=0.1)`` (zca_reg_absolute_scale
# False: reg · tr(cov)/D).
KIP_REGULARIZATION = 0.1
VARIANTS = ("ddpp", "kip")
_CHUNK = 4096


def _check_dim(shape: tuple[int, int, int]) -> int:
    dim = shape[0] * shape[1] * shape[2]
    if dim > MAX_ZCA_DIM:
        raise DdppError(
            f"images of shape {shape[0]}×{shape[1]}×{shape[2]} ({dim} values) are too large for "
            f"ZCA whitening (at most {MAX_ZCA_DIM}); use --no-zca or a smaller --image-size."
        )
    return dim


@dataclass(frozen=True, eq=False)
class ZCA:
    """A fitted ZCA transform; ``apply``/``invert`` map (N, C, H, W) batches, differentiably."""

    mean: torch.Tensor  # (D,) float32
    whiten: torch.Tensor  # (D, D) float32
    unwhiten: torch.Tensor  # (D, D) float32
    shape: tuple[int, int, int]  # (C, H, W)
    regularization: float = DEFAULT_REGULARIZATION
    variant: str = "ddpp"  # VARIANTS; "kip": channel standardisation + layer norm first
    channel_mean: tuple[float, ...] = ()  # kip only
    channel_std: tuple[float, ...] = ()  # kip only

    @property
    def dim(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def to(self, device: torch.device | str) -> ZCA:
        """The same transform with its tensors on ``device`` (avoids a copy per call)."""
        return ZCA(
            mean=self.mean.to(device),
            whiten=self.whiten.to(device),
            unwhiten=self.unwhiten.to(device),
            shape=self.shape,
            regularization=self.regularization,
            variant=self.variant,
            channel_mean=self.channel_mean,
            channel_std=self.channel_std,
        )

    def _standardised(self, x: torch.Tensor) -> torch.Tensor:
        """KIP's first steps: per-channel (x − m)/s, then each image zero-mean, unit-norm."""
        mean = torch.tensor(self.channel_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.channel_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return layer_norm(((x - mean) / std).reshape(x.shape[0], -1)).reshape(x.shape)

    def _map(self, x: torch.Tensor, matrix: torch.Tensor, whitening: bool) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise DdppError(
                f"ZCA was fitted on images of shape {self.shape}, got {tuple(x.shape[1:])}; "
                "use the ZCA saved with the data it was fitted on."
            )
        flat = x.reshape(x.shape[0], -1)
        matrix = matrix.to(device=x.device, dtype=x.dtype)
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        chunks = []
        for start in range(0, flat.shape[0], _CHUNK):
            part = flat[start : start + _CHUNK]
            chunks.append((part - mean) @ matrix if whitening else part @ matrix + mean)
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out.reshape(x.shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten a batch: (x − μ) W (kip: standardised and layer-normed first, μ = 0), same
        shape, on x's device and dtype."""
        if self.variant == "kip":
            x = self._standardised(x)
        return self._map(x, self.whiten, whitening=True)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply`: y W⁻¹ + μ. For kip, whose layer norm forgets each image's mean
        and norm, the unwhitened image is scaled to unit variance per value and
        de-standardised: pixels up to brightness and contrast (for pictures)."""
        y = self._map(x, self.unwhiten, whitening=False)
        if self.variant != "kip":
            return y
        mean = torch.tensor(self.channel_mean, dtype=y.dtype, device=y.device).view(1, -1, 1, 1)
        std = torch.tensor(self.channel_std, dtype=y.dtype, device=y.device).view(1, -1, 1, 1)
        return y * (self.dim**0.5) * std + mean


def fit(images: torch.Tensor, regularization: float = DEFAULT_REGULARIZATION) -> ZCA:
    """Fit ZCA on (N, C, H, W) images in [0, 1]; covariance accumulated in float64 in chunks."""
    if images.ndim != 4 or images.shape[0] < 2:
        raise DdppError(
            "ZCA needs a batch of at least 2 images shaped (N, C, H, W), "
            f"got {tuple(images.shape)}."
        )
    if regularization < 0:
        raise DdppError(f"ZCA regularization must be >= 0, got {regularization}.")
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    dim = _check_dim(shape)
    n = images.shape[0]
    flat = images.detach().reshape(n, dim)
    device = flat.device

    total = torch.zeros(dim, dtype=torch.float64, device=device)
    for start in range(0, n, _CHUNK):
        total += flat[start : start + _CHUNK].to(torch.float64).sum(dim=0)
    mean = total / n
    cov = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for start in range(0, n, _CHUNK):
        centred = flat[start : start + _CHUNK].to(torch.float64) - mean
        cov.addmm_(centred.T, centred)
    cov /= n - 1

    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.clamp_min(0.0)
    scale = (eigenvalues + regularization).rsqrt()
    whiten = (eigenvectors * scale) @ eigenvectors.T
    unwhiten = (eigenvectors / scale) @ eigenvectors.T
    return ZCA(
        mean=mean.float().cpu(),
        whiten=whiten.float().cpu(),
        unwhiten=unwhiten.float().cpu(),
        shape=shape,
        regularization=float(regularization),
    )


def layer_norm(flat: torch.Tensor) -> torch.Tensor:
    """Each row zero-mean, then unit-norm (KIP's ``layer_norm=True``)."""
    centred = flat - flat.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True)


def fit_kip(images: torch.Tensor, regularization: float = KIP_REGULARIZATION) -> ZCA:
    """KIP's ZCA of (N, C, H, W) images: per-channel standardisation (train mean/std), layer
    norm, Σ = XᵀX/N (not centred: as KIP's code), ridge reg · tr(Σ)/D, W = U (S + ridge)^−½ Uᵀ
    in float64; where N < D, the D − N smallest directions keep scale 1 (its rank control)."""
    if images.ndim != 4 or images.shape[0] < 2:
        raise DdppError(f"KIP's ZCA needs (N, C, H, W) images, N ≥ 2; got {tuple(images.shape)}.")
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    dim = _check_dim(shape)
    x = images.detach().to(torch.float64)
    channel_mean = x.mean(dim=(0, 2, 3))
    channel_std = x.std(dim=(0, 2, 3), unbiased=False)
    n = x.shape[0]
    cov = torch.zeros(dim, dim, dtype=torch.float64, device=x.device)
    for start in range(0, n, _CHUNK):
        part = x[start : start + _CHUNK]
        part = (part - channel_mean.view(1, -1, 1, 1)) / channel_std.view(1, -1, 1, 1)
        flat = layer_norm(part.reshape(part.shape[0], dim))
        cov.addmm_(flat.T, flat)
    cov /= n
    ridge = regularization * torch.trace(cov) / dim
    eigenvalues, eigenvectors = torch.linalg.eigh(cov + ridge * torch.eye(dim, dtype=cov.dtype))
    scale = eigenvalues.clamp_min(torch.finfo(torch.float64).tiny).rsqrt()
    if n < dim:  # eigh sorts ascending: the D − N smallest are the unseen directions
        scale[: dim - n] = 1.0
    whiten = (eigenvectors * scale) @ eigenvectors.T
    unwhiten = (eigenvectors / scale) @ eigenvectors.T
    return ZCA(
        mean=torch.zeros(dim), whiten=whiten.float().cpu(), unwhiten=unwhiten.float().cpu(),
        shape=shape, regularization=float(regularization), variant="kip",
        channel_mean=tuple(float(v) for v in channel_mean),
        channel_std=tuple(float(v) for v in channel_std),
    )  # fmt: skip


def save(zca: ZCA, path: Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``zca`` as a ``ddpp.zca/1`` file (tensors mean/whiten/unwhiten) atomically."""
    meta: dict[str, Any] = dict(metadata or {})
    meta["shape"] = list(zca.shape)
    meta["regularization"] = zca.regularization
    if zca.variant != "ddpp":
        meta.update(
            variant=zca.variant, channel_mean=list(zca.channel_mean),
            channel_std=list(zca.channel_std),
        )  # fmt: skip
    tensors = {"mean": zca.mean, "whiten": zca.whiten, "unwhiten": zca.unwhiten}
    return store.write(Path(path), tensors, store.ZCA_FORMAT, meta)


_REMEDY = "remake it with the buffer (ddpp buffer), or pass another --zca-file"
_ZCA_KEYS: dict[str, store.Check] = {
    "shape": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(store.is_int(i) and i > 0 for i in v),
        "must be [C, H, W]",
    ),
    "regularization": store.NUMBER,
    "dataset": store.optional(store.TEXT),
    "variant": (lambda v: v in VARIANTS, f"must be one of {', '.join(VARIANTS)}"),
    "channel_mean": (
        lambda v: isinstance(v, list) and all(store.is_number(x) for x in v),
        "must be numbers",
    ),
    "channel_std": (
        lambda v: isinstance(v, list) and all(store.is_number(x) and x > 0 for x in v),
        "must be positive numbers",
    ),
}


def load(path: Path) -> ZCA:
    """Read a ``ddpp.zca/1`` file, checking its shapes; DdppError if foreign or inconsistent."""
    stored = store.read(Path(path), store.ZCA_FORMAT)
    store.check_keys(
        Path(path), stored.metadata, _ZCA_KEYS, what="ZCA file", remedy=_REMEDY, required=("shape",)
    )
    shape = stored.metadata["shape"]
    shape_t = (shape[0], shape[1], shape[2])
    dim = shape_t[0] * shape_t[1] * shape_t[2]
    mean = store.require_tensor(stored, "mean", ndim=1)
    whiten = store.require_tensor(stored, "whiten", ndim=2)
    unwhiten = store.require_tensor(stored, "unwhiten", ndim=2)
    if mean.shape[0] != dim or whiten.shape != (dim, dim) or unwhiten.shape != (dim, dim):
        raise DdppError(
            f"{path}: ZCA tensors do not match its shape {shape_t} (D = {dim}): mean "
            f"{tuple(mean.shape)}, whiten {tuple(whiten.shape)}, unwhiten {tuple(unwhiten.shape)}."
        )
    regularization = stored.metadata.get("regularization", DEFAULT_REGULARIZATION)
    variant = stored.metadata.get("variant", "ddpp")
    stats = [
        tuple(float(v) for v in stored.metadata.get(k) or ())
        for k in ("channel_mean", "channel_std")
    ]
    if variant == "kip" and not all(len(s) == shape_t[0] for s in stats):
        raise DdppError(
            f"{path}: KIP's ZCA needs channel_mean and channel_std for {shape_t[0]} "
            f"channels; {_REMEDY}."
        )
    return ZCA(
        mean=mean.float(),
        whiten=whiten.float(),
        unwhiten=unwhiten.float(),
        shape=shape_t,
        regularization=float(regularization),
        variant=variant,
        channel_mean=stats[0],
        channel_std=stats[1],
    )
