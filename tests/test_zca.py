"""ZCA whitening: the formula of docs/data.md#zca-whitening, inverse, covariance, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpp_cli.engine import store, zca
from ddpp_cli.engine.errors import DdppError


def _images(n: int = 300, shape: tuple[int, int, int] = (2, 3, 4), seed: int = 0) -> torch.Tensor:
    """Correlated data in [0, 1]: a random mixing of uniform noise, squashed by a sigmoid."""
    generator = torch.Generator().manual_seed(seed)
    dim = shape[0] * shape[1] * shape[2]
    mixing = torch.randn(dim, dim, generator=generator) / dim**0.5
    raw = torch.randn(n, dim, generator=generator) @ mixing
    return torch.sigmoid(2 * raw).reshape(n, *shape)


def test_whitening_matrix_matches_spec_formula_computed_with_numpy_svd() -> None:
    images = _images()
    fitted = zca.fit(images)
    x = images.reshape(images.shape[0], -1).double().numpy()
    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / (x.shape[0] - 1)
    u, s, _ = np.linalg.svd(cov)  # symmetric PSD: SVD == eigendecomposition
    expected_w = u @ np.diag((s + 0.1) ** -0.5) @ u.T
    expected_inv = u @ np.diag((s + 0.1) ** 0.5) @ u.T
    np.testing.assert_allclose(fitted.whiten.double().numpy(), expected_w, atol=1e-5)
    np.testing.assert_allclose(fitted.unwhiten.double().numpy(), expected_inv, atol=1e-5)
    np.testing.assert_allclose(fitted.mean.double().numpy(), x.mean(axis=0), atol=1e-6)
    assert fitted.shape == (2, 3, 4)
    assert fitted.whiten.dtype == torch.float32
    # x ↦ (x − μ) W, per docs/data.md#zca-whitening.
    whitened = fitted.apply(images[:5]).reshape(5, -1).double().numpy()
    np.testing.assert_allclose(whitened, (x[:5] - x.mean(axis=0)) @ expected_w, atol=1e-4)


def test_invert_undoes_apply() -> None:
    images = _images()
    fitted = zca.fit(images)
    whitened = fitted.apply(images)
    assert whitened.shape == images.shape
    torch.testing.assert_close(fitted.invert(whitened), images, atol=1e-4, rtol=0)


def test_whitened_train_covariance_is_identity_shrunk_by_regularization() -> None:
    images = _images(n=500)
    fitted = zca.fit(images)
    x = images.reshape(images.shape[0], -1).double()
    s, u = torch.linalg.eigh(torch.cov(x.T))
    s = s.clamp_min(0)
    expected = u @ torch.diag(s / (s + 0.1)) @ u.T
    y = fitted.apply(images).reshape(images.shape[0], -1).double()
    torch.testing.assert_close(torch.cov(y.T), expected, atol=1e-4, rtol=0)
    assert torch.allclose(y.mean(dim=0), torch.zeros(y.shape[1], dtype=y.dtype), atol=1e-5)


def test_apply_is_differentiable_and_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(n=50)
    fitted = zca.fit(images)
    monkeypatch.setattr(zca, "_CHUNK", 7)  # several chunks
    x = images.clone().requires_grad_(True)
    out = fitted.apply(x)
    torch.testing.assert_close(
        out, (images.reshape(50, -1) - fitted.mean).mm(fitted.whiten).view_as(x)
    )
    out.sum().backward()
    expected_grad = fitted.whiten.sum(dim=1).expand(50, -1).reshape_as(x)
    torch.testing.assert_close(x.grad, expected_grad)


def test_chunked_fit_equals_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(n=100)
    whole = zca.fit(images)
    monkeypatch.setattr(zca, "_CHUNK", 9)
    chunked = zca.fit(images)
    torch.testing.assert_close(chunked.whiten, whole.whiten, atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path) -> None:
    fitted = zca.fit(_images())
    path = zca.save(fitted, tmp_path / "zca.safetensors", {"dataset": "toy"})
    loaded = zca.load(path)
    assert loaded.shape == fitted.shape
    assert loaded.regularization == pytest.approx(0.1)
    for name in ("mean", "whiten", "unwhiten"):
        assert torch.equal(getattr(loaded, name), getattr(fitted, name))
    assert store.read_metadata(path)["dataset"] == "toy"


def test_too_large_images_are_refused() -> None:
    images = torch.rand(2, 3, 64, 65)  # 12480 > 12288
    with pytest.raises(DdppError, match=r"too large for ZCA.*--no-zca.*--image-size"):
        zca.fit(images)


def test_loading_a_foreign_file_is_refused(tmp_path) -> None:
    path = store.write(
        tmp_path / "other.safetensors", {"images": torch.zeros(2)}, store.DISTILLED_FORMAT, {}
    )
    with pytest.raises(DdppError, match=r"not a ddpp\.zca/1 file"):
        zca.load(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(DdppError):
        zca.load(junk)


def test_loading_inconsistent_shapes_is_refused(tmp_path) -> None:
    fitted = zca.fit(_images())
    path = store.write(
        tmp_path / "bad.safetensors",
        {"mean": fitted.mean, "whiten": fitted.whiten, "unwhiten": fitted.unwhiten},
        store.ZCA_FORMAT,
        {"shape": [3, 3, 4], "regularization": 0.1},
    )
    with pytest.raises(DdppError, match="do not match"):
        zca.load(path)


def test_apply_rejects_wrong_image_shape() -> None:
    fitted = zca.fit(_images())
    with pytest.raises(DdppError, match="fitted on images of shape"):
        fitted.apply(torch.rand(2, 3, 3, 4))
