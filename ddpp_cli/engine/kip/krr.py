"""KIP's loss: kernel ridge regression from the support set to a target batch, as pure functions.

KIP's code (google-research ``kip/``, its colab's ``loss_acc_fn``)::

    k_ss_reg = k_ss + |reg| · tr(k_ss) / n · I
    pred     = k_ts · solve(k_ss_reg, y_support)
    loss     = ½ · mean((pred − y_target)²)

with ``reg`` 1e-6 and labels one-hot minus 1/K (``one_hot(..., center=True)``). The solve runs
in float64, as KIP's code does (``jax_enable_x64``).
"""

from __future__ import annotations

import torch

# KIP's ``loss_acc_fn(..., reg=1e-6)``: the ridge, relative to the mean diagonal of K_ss.
DEFAULT_REGULARIZATION = 1e-6


def centred_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """KIP's label vectors: one-hot minus 1/K (``one_hot(x, k, center=True)``), float32."""
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).float()
    return one_hot - 1.0 / num_classes


def regularised(k_ss: torch.Tensor, regularization: float) -> torch.Tensor:
    """K_ss + |reg| · tr(K_ss)/n · I: KIP's ridge, scaled by the kernel's mean diagonal."""
    n = k_ss.shape[0]
    ridge = abs(regularization) * torch.trace(k_ss) / n
    return k_ss + ridge * torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)


def krr_predict(
    k_ts: torch.Tensor, k_ss: torch.Tensor, y_support: torch.Tensor, regularization: float
) -> torch.Tensor:
    """K_ts (K_ss + λ I)⁻¹ y_s with KIP's λ (:func:`regularised`), computed in float64."""
    k_ss, k_ts = k_ss.double(), k_ts.double()
    weights = torch.linalg.solve(regularised(k_ss, regularization), y_support.double())
    return k_ts @ weights


def kip_loss(
    k_ts: torch.Tensor,
    k_ss: torch.Tensor,
    y_support: torch.Tensor,
    y_target: torch.Tensor,
    regularization: float = DEFAULT_REGULARIZATION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(½ · mean((prediction − y_t)²), accuracy of the prediction's argmax) on the target batch;
    the loss is differentiable w.r.t. both kernels and ``y_support``."""
    prediction = krr_predict(k_ts, k_ss, y_support, regularization)
    loss = 0.5 * ((prediction - y_target.double()) ** 2).mean()
    accuracy = (prediction.argmax(1) == y_target.argmax(1)).double().mean()
    return loss, accuracy.detach()
