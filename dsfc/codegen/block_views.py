"""Printing a let's (or a hoisted sum's) body over block axes where its axes are read as blocks.

``ir.digits.split_axes`` decides (exactly, over the spec's dims) whether some axes are read only through
``L // s`` and ``L % s``; the printer prints the rewritten body over the block axes and reshapes it back. Shared by
the torch lets (``plan``) and the Triton path's hoisted projections (``triton_plan``).
"""

from __future__ import annotations

import sympy as sp

from ..ir.digits import free_dims, radix_digits, same, split_axes
from ..ir.symspec import SymSpec
from .printers import TorchPrinter


def enable_block_reads(pr: TorchPrinter, sym: SymSpec) -> None:
    """Let ``pr`` print mixed-radix subscripts that tile their axis, and flat reads of a tensor through an axis
    whose extent is the product of its extents, as reshaped views (both checked over sym's dims)."""
    pr.radix = lambda e, extents, total: radix_digits(sym, e, extents, total)
    pr.same_extent = lambda a, b: same(free_dims(sym, a), free_dims(sym, b))


def print_over(pr: TorchPrinter, sym: SymSpec, expr, index, extents, sizes, tensor: bool = False) -> str:
    """``expr`` printed over the axes ``index`` (SymPy extents ``extents``, printed ``sizes``), through block axes
    when ``split_axes`` finds a block read (then the code is the full ``[B, T, *axes]`` / ``[*axes]`` tensor)."""
    expr, index = sp.S(expr), tuple(index)
    taken = {str(s) for s in expr.free_symbols} | set(sym.tensors) | set(sym.dims)
    split = split_axes(sym, expr, index, tuple(extents), taken) if index else None
    if split is None:
        return (pr.print_tensor if tensor else pr.print)(expr, index, sizes, dict(zip(index, extents)))
    new_sizes = {s: pr.size(x) for s, x in zip(split.new_index, split.new_extents)}
    return pr.print_split(split, index, sizes, new_sizes)
