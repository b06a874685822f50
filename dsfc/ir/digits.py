"""Mixed-radix indices over axes of known extents, shared by the output unflattening (``ir.unflatten``) and the
printers' block views.

A subscript ``sum_i stride_i * x_i`` whose strides are those of a row-major layout of the extents of the distinct
axes ``x_i`` (the innermost stride 1, each next one the previous stride times the previous extent) and whose
extents multiply to the extent of the axis it indexes reads that axis as the flattening of the axes ``x_i``: a
reshape, not a gather. Extents are compared over the free dims, ``//`` read as exact division (the spec checker and
the generated constructor refuse dims where it is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .lower import index_symbol
from .symspec import SymSpec


def free_dims(sym: SymSpec, expr: sp.Expr) -> sp.Expr:
    """An extent over the free dims only, ``//`` read as exact division: a state split into ``[g: G, r: R]`` with
    ``dim R = H // G`` tiles an output axis of extent ``H``."""
    return sym.in_free_dims(expr, exact_division=True)


def same(a: sp.Expr, b: sp.Expr) -> bool:
    return sp.simplify(a - b) == 0


def radix_digits(sym: SymSpec, expr: sp.Expr, extents: dict[sp.Symbol, sp.Expr], total: sp.Expr, least: int = 2):
    """``expr = sum_i stride_i * x_i`` a row-major mixed-radix index of extent ``total`` over at least ``least``
    distinct symbols of ``extents``? Returns the [(stride, extent, x)] from the most significant digit down, or None."""
    expr = sp.expand(expr)
    xs = [s for s in expr.free_symbols if s in extents]
    if len(xs) < least:
        return None
    coeffs = {x: expr.coeff(x) for x in xs}
    if sp.expand(expr - sum(c * x for x, c in coeffs.items())) != 0:
        return None  # a constant or a non-linear term
    if any(c.free_symbols & set(xs) for c in coeffs.values()):
        return None
    digits, stride, left = [], sp.Integer(1), dict(coeffs)
    while left:
        x = next((x for x, c in left.items() if same(free_dims(sym, c), stride)), None)
        if x is None:
            return None
        digits.append((coeffs[x], extents[x], x))
        stride = free_dims(sym, stride * extents[x])
        del left[x]
    if not same(stride, free_dims(sym, total)):
        return None
    return digits[::-1]


@dataclass(frozen=True)
class AxisSplit:
    """An expression over ``index`` rewritten over ``new_index``: the run of axes ``index[start:start + width]`` (read
    only as one flat row-major index L) replaced by the two digits (L // s, L % s). Row-major throughout, so the value
    over ``new_index`` reshapes to the value over ``index``."""

    expr: sp.Expr
    new_index: tuple
    new_extents: tuple
    start: int
    width: int


def _div_mod(node):
    """(L, s) of ``floor(L / s)`` or ``Mod(L, s)``, else None."""
    if isinstance(node, sp.floor):
        num, den = sp.fraction(sp.together(node.args[0]))
        return (sp.expand(num), den) if den != 1 else None
    if isinstance(node, sp.Mod):
        return sp.expand(node.args[0]), node.args[1]
    return None


def div_mod_reads(expr: sp.Expr, symbols: set) -> dict[tuple, list]:
    """The ``L // s`` and ``L % s`` nodes of ``expr`` whose L reads one of ``symbols``, by (L, s)."""
    found: dict[tuple, list] = {}
    for node in sp.preorder_traversal(sp.S(expr)):
        dm = _div_mod(node)
        if dm is not None and dm[0].free_symbols & symbols:
            found.setdefault(dm, []).append(node)
    return found


def block_stride(sym: SymSpec, s: sp.Expr) -> bool:
    """Whether ``s`` can be the stride of a split: a number or built from dims, and not 1."""
    return bool(s.is_Integer or (s.free_symbols and s.free_symbols <= set(sym.dims.values()))) and s != 1


def outer_extent(sym: SymSpec, total: sp.Expr, s: sp.Expr):
    """``total / s`` as an extent the generated module can print and has checked to be exact: a polynomial over the
    free dims, or a declared dim defined as that floor division (its constructor checks the divisibility). None
    otherwise (s may not divide ``total`` at every choice of the free dims)."""
    outer = sp.simplify(free_dims(sym, total) / free_dims(sym, s))
    if sp.fraction(sp.together(outer))[1] == 1 and (outer.is_positive or outer.free_symbols):
        return outer
    for name, definition in sym.dim_defs.items():
        if sp.S(definition).has(sp.floor) and same(free_dims(sym, sym.dims[name]), outer):
            return sym.dims[name]
    return None


def split_axes(sym: SymSpec, expr: sp.Expr, index: tuple, extents: tuple, taken: set[str]) -> AxisSplit | None:
    """The block split of a let's (or hoisted sum's) axes: some consecutive axes of ``index`` appear in ``expr``
    only through ``L // s`` and ``L % s``, with L their row-major flattening (or one bare axis) and one s that
    divides L's extent. Then ``L // s`` and ``L % s`` become new axes g and j and nothing else changes: (g, j) is
    L's unique decomposition, so the value is exact, and L = g s + j is row-major, so a reshape brings it back.
    RG-LRU's ``x[(c // bw) * bw + i] * W_a[c // bw, i, c % bw]`` reads then ``x[bw g + i] * W_a[g, i, j]``: a
    reshaped view of x and a batched einsum instead of a [B, T, W, bw] gather. None when nothing splits."""
    expr = sp.S(expr)
    ext = dict(zip(index, extents))
    found = div_mod_reads(expr, set(index))
    pairs = set(found)
    flats = {L for L, _ in pairs}
    if len(flats) != 1 or len({s for _, s in pairs}) != 1:
        return None  # one flat index, one stride (several would need several splits: not handled)
    (L, s), = pairs
    if not block_stride(sym, s):
        return None
    axes = sorted(L.free_symbols & set(index), key=index.index)
    if L.free_symbols - set(index) - set(sym.dims.values()):
        return None
    start, width = index.index(axes[0]), len(axes)
    if tuple(index[start:start + width]) != tuple(axes):
        return None  # the flattened axes must be consecutive for the reshape
    total = sp.Mul(*[ext[a] for a in axes])
    if width == 1:
        if L != axes[0]:
            return None
    else:
        digits = radix_digits(sym, L, ext, total)
        if digits is None or [x for _, _, x in digits] != axes:
            return None  # not row-major in the let's axis order
    outer = outer_extent(sym, total, s)
    if outer is None or outer == 1:
        return None
    names = []
    for stem in ("g", "j"):
        name = f"_{stem}{axes[0]}"
        while name in taken:
            name = "_" + name
        taken.add(name)
        names.append(index_symbol(name))
    g, j = names
    env = {node: g if isinstance(node, sp.floor) else j for node in found[(L, s)]}
    new = expr.xreplace(env)
    if new.free_symbols & set(axes):
        return None  # the axes are also read on their own: keep them
    new_index = tuple(index[:start]) + (g, j) + tuple(index[start + width:])
    new_extents = tuple(extents[:start]) + (outer, s) + tuple(extents[start + width:])
    return AxisSplit(new, new_index, new_extents, start, width)
