"""Feature maps for generated code: the order-p Taylor features of exp (``taylor(a, x[..., a])`` in a spec); the
elementwise forms codegen writes for ``elu(x) + 1`` (``elu1p``) and ``exp(x) - 1`` (``expm1``); and the scaled
L2 norms ``l2_norm`` and ``inv_l2_norm`` for ``sqrt(sum(x^2))``."""

from __future__ import annotations

import math

import torch


def elu1p(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1 = exp(min(x, 0)) + relu(x): ``F.elu(x) + 1`` is ``(exp(x) - 1) + 1``, 0 in fp32 below x = -17
    (then 0 / 0 in a normalised linear attention); this keeps exp(x). Same values and gradient elsewhere."""
    return torch.exp(torch.clamp(x, max=0.0)) + torch.relu(x)


def expm1(x: torch.Tensor) -> torch.Tensor:
    """exp(x) - 1 without cancellation. ``torch.expm1``, except while torch.compile traces: Inductor's CPU code for
    ``torch.expm1`` computed ``exp(x) - 1`` (torch 2.13: relative error 1 for |x| < 6e-8 in fp32, so RG-LRU's
    compiled-chunk path lost its input scale again); there Kahan's ``(e - 1) x / log(e)``, which compiles exactly."""
    if not torch.compiler.is_compiling():
        return torch.expm1(x)
    e = torch.exp(x)
    one = e == 1.0
    near = torch.where(one, x, (e - 1.0) * x / torch.where(one, torch.ones_like(e), torch.log(e)))
    return torch.where(x.abs() < 0.5, near, e - 1.0)


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """sqrt(sum(x^2)) over the last axis, computed on x / max|x| (the scale a constant for autograd): x^2 is 0 in
    fp32 for |x| < 1e-19 and inf above 1.8e19, where the norm itself is representable. An all-zero x gives 0."""
    m = _scale(x)
    return m[..., 0] * torch.sqrt(torch.square(x / m).sum(-1))


def inv_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """1 / l2_norm(x) as (1 / m) rsqrt(sum((x / m)^2)): ``1 / l2_norm`` would differentiate to -1 / norm^2, inf in
    fp32 for a norm below 1e-19 although the chain's product (the gradient through x / norm) is finite."""
    m = _scale(x)
    return torch.rsqrt(torch.square(x / m).sum(-1)) / m[..., 0]  # (a division, not 1 / m times: one op fewer)


def _scale(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the last axis (kept), at least the dtype's smallest normal number (an all-zero x: 0 / tiny = 0,
    as 0 / 1 was; any scale > 0 cancels); no gradient (a constant rescaling). One clamp, not a comparison, a ones
    tensor and a where: three ops fewer per normalisation on every decoding step (DeltaNet has two)."""
    return x.detach().abs().amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


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
