"""Parameter initialisers that generated modules call (spec-independent)."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def dt_bias_(param: torch.Tensor, dt_min: float, dt_max: float, floor: float = 1e-4) -> torch.Tensor:
    """Mamba's dt bias: dt ~ log-uniform[dt_min, dt_max] clamped at ``floor``, stored as softplus^-1(dt)."""
    dt = torch.exp(torch.empty_like(param).uniform_(math.log(dt_min), math.log(dt_max))).clamp_(min=floor)
    # inverse softplus: dt + log(1 - exp(-dt)), written with expm1 for accuracy at small dt
    return param.copy_(dt + torch.log(-torch.expm1(-dt)))
