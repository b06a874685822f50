"""Index grids for generated code: where a spec uses an index as a value or in a computed subscript."""

from __future__ import annotations

import torch


def axis(size: int, pos: int, rank: int, device=None, dtype=None) -> torch.Tensor:
    """``arange(size)`` viewed along dimension ``pos`` of a rank-``rank`` grid (size 1 elsewhere)."""
    shape = [1] * rank
    shape[pos] = size
    return torch.arange(size, device=device, dtype=dtype).view(shape)
