"""Feature maps for generated code: the order-p Taylor features of exp (``taylor(a, x[..., a])`` in a spec), and
``elu1p``, the linear-attention map ``elu(x) + 1`` as codegen writes it."""

from __future__ import annotations

import math

import torch


def elu1p(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1 = exp(min(x, 0)) + relu(x): ``F.elu(x) + 1`` is ``(exp(x) - 1) + 1``, 0 in fp32 below x = -17
    (then 0 / 0 in a normalised linear attention); this keeps exp(x). Same values and gradient elsewhere."""
    return torch.exp(torch.clamp(x, max=0.0)) + torch.relu(x)


def taylor_dim(length: int, order: int) -> int:
    """Size of the order-``order`` Taylor feature range over vectors of ``length``: sum_{r<=order} length^r."""
    if order < 0:
        raise ValueError(f"taylor feature map: the order must be >= 0, got {order}")
    return sum(int(length) ** r for r in range(int(order) + 1))


def taylor_features(x: torch.Tensor, order: int) -> torch.Tensor:
    """phi(x) = concat_{r=0..order} (x / K^(1/4))^(x)r / sqrt(r!) over the last axis (length K), each r-fold outer
    power flattened row-major: [..., K] -> [..., taylor_dim(K, order)], so that
    phi(x) . phi(y) = sum_{r<=order} (x . y / sqrt(K))^r / r!  (zoology's TaylorExp for order 2)."""
    k = x.shape[-1]
    xs = x / k**0.25
    lead = x.shape[:-1]
    power = torch.ones(*lead, 1, dtype=x.dtype, device=x.device)
    parts = [power]
    for r in range(1, int(order) + 1):
        # the r-fold outer power from the (r-1)-fold one: [..., K^(r-1)] x [..., K] -> [..., K^r], row-major
        power = (power.unsqueeze(-1) * xs.unsqueeze(-2)).reshape(*lead, k**r) * (1 / math.sqrt(r))
        parts.append(power)
    return torch.cat(parts, -1)
