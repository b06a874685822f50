"""What the generated constructor must check about its dims: the checker's subscript rules, at any dims.

The front end (lang/check.py) tests every subscript at the spec's default dims by enumeration. A module built at
other dims (``SSD(H=6, G=4)``) needs the same tests there, or it indexes past a tensor deep in ``forward``. This
module turns each checked subscript (``SymSpec.index_uses``) into a condition over the dims:

* an index that is a bare variable (``W[h, m]``) needs its range's extent to equal the axis extent;
* any other subscript needs its least and greatest value over its index ranges inside [0, extent). Where those are
  known in closed form (sums and products of independent monotone pieces: ``h // R``, ``h * P + p``), they are
  SymPy expressions over the dims; otherwise (``%`` of a range that may not cover it, a variable used twice) the
  constructor enumerates the values, as the checker does.

Conditions that hold at every dims (``h < H`` for ``h`` in ``range(H)``, ``m % bs < bs``) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..ir.functions import TaylorRange
from ..ir.symspec import SymIndexUse, SymSpec


@dataclass(frozen=True)
class Bounds:
    """lo <= subscript <= hi over the index ranges; ``exact``: both are reached (not just bounds)."""

    lo: sp.Expr
    hi: sp.Expr
    exact: bool
    indices: frozenset  # the index symbols the subscript uses


@dataclass(frozen=True)
class ExtentMatch:
    """``index`` ranges over ``index_extent`` values and subscripts an axis of ``axis_extent``: they must agree."""

    index: sp.Symbol
    index_extent: sp.Expr
    axis_extent: sp.Expr
    use: SymIndexUse


@dataclass(frozen=True)
class SubscriptRange:
    """``use.subscript`` must stay in [0, axis_extent): ``bounds`` in closed form, or None to enumerate."""

    bounds: Bounds | None
    use: SymIndexUse


def dim_conditions(sym: SymSpec) -> list[ExtentMatch | SubscriptRange]:
    """The checks of every subscript that may fail at some dims, in spec order, without duplicates."""
    out, seen = [], set()
    for use in sym.index_uses:
        cond = _condition(sym, use)
        key = _key(cond)
        if cond is not None and key not in seen:
            seen.add(key)
            out.append(cond)
    return out


def _key(cond) -> tuple | None:
    """Two uses with the same condition (``Bm[h // R, j]`` in B and ``Cm[h // R, j]`` in C) are checked once."""
    if isinstance(cond, ExtentMatch):
        return ("extent", cond.index_extent, cond.axis_extent)
    if isinstance(cond, SubscriptRange):
        return ("range", cond.use.subscript, cond.use.ranges, cond.use.axis_extent)
    return None


def _condition(sym: SymSpec, use: SymIndexUse) -> ExtentMatch | SubscriptRange | None:
    extents = [use.axis_extent] + [e for _, e in use.ranges]
    if any(sp.S(e).has(TaylorRange) for e in extents):
        return None  # a feature range's size is computed by the compiler from its own dims, never given directly
    ranges = dict(use.ranges)
    # only a subscript written as a lone index must match the axis (lang/check.py's rule); ``b + 0`` over
    # ``range(V)`` into an axis of V + 1 is a compound subscript in the spec, and must only stay inside the axis
    # (the constructor raised at the spec's own default dims, which the compiler had accepted)
    if use.subscript in ranges and use.bare:
        index_extent = ranges[use.subscript]
        if _always(sym, sp.Eq(index_extent, use.axis_extent)):
            return None
        return ExtentMatch(use.subscript, index_extent, use.axis_extent, use)
    bounds = subscript_bounds(use.subscript, ranges)
    if bounds is not None and _always(sym, bounds.lo >= 0) and _always_below(sym, bounds.hi, use.axis_extent):
        return None
    return SubscriptRange(bounds if bounds is not None and bounds.exact else None, use)


def _always(sym: SymSpec, relation) -> bool:
    """Whether a relation between dim expressions provably holds for all positive integer dims; tried as written
    and with the derived dims replaced by their definitions (``e // DH < H`` needs ``E = H * DH``)."""
    definitions = {sym.dims[name]: expr for name, expr in sym.dim_defs.items()}
    for form in (relation, relation.subs(definitions)):
        diff = sp.expand(form.lhs - form.rhs) if isinstance(form, sp.Rel) else None
        if diff is None:
            if form is sp.true:
                return True
            continue
        truth = {sp.Eq: diff.is_zero, sp.GreaterThan: diff.is_nonnegative, sp.LessThan: diff.is_nonpositive}
        if truth.get(type(form)) is True:
            return True
    return False


def _always_below(sym: SymSpec, hi: sp.Expr, extent: sp.Expr) -> bool:
    """Whether hi < extent for all dims; ``n // d < extent`` is ``n < d * extent`` (d > 0): ``m // P`` for m in
    range(H * P) stays below H."""
    if isinstance(hi, sp.floor):
        num, den = sp.fraction(sp.together(hi.args[0]))
        if den.is_positive and _always(sym, num <= den * extent - 1):
            return True
    return _always(sym, hi <= extent - 1)


def subscript_bounds(e: sp.Expr, ranges: dict) -> Bounds | None:
    """Least and greatest value of an integer subscript over index symbols ranging over [0, n), or None where no
    closed form is known. ``exact`` says whether both are reached: each piece is monotone in its indices and no
    index appears in two pieces, so the extremes of the pieces combine into the extremes of the whole."""
    e = sp.S(e)
    used = frozenset(s for s in e.free_symbols if s in ranges)
    if not used:
        return Bounds(e, e, True, used)
    if e in ranges:
        return Bounds(sp.Integer(0), ranges[e] - 1, True, used)
    if isinstance(e, sp.Add):
        return _sum_bounds([subscript_bounds(a, ranges) for a in e.args])
    if isinstance(e, sp.Mul):
        return _product_bounds([subscript_bounds(a, ranges) for a in e.args])
    if isinstance(e, sp.floor):
        return _floor_bounds(e, ranges)
    if isinstance(e, sp.Mod):
        return _mod_bounds(e, ranges)
    return None


def _disjoint(parts: list[Bounds]) -> bool:
    seen = set()
    for p in parts:
        if seen & p.indices:
            return False
        seen |= p.indices
    return True


def _sum_bounds(parts: list[Bounds | None]) -> Bounds | None:
    if any(p is None for p in parts):
        return None
    return Bounds(sp.expand(sp.Add(*[p.lo for p in parts])), sp.expand(sp.Add(*[p.hi for p in parts])),
                  all(p.exact for p in parts) and _disjoint(parts), frozenset().union(*[p.indices for p in parts]))


def _product_bounds(parts: list[Bounds | None]) -> Bounds | None:
    """Products of non-negative ranges, and of those with a constant of known sign (``-1``, a dim)."""
    if any(p is None for p in parts):
        return None
    const = sp.Mul(*[p.lo for p in parts if not p.indices])
    ranged = [p for p in parts if p.indices]
    if not all(sp.S(p.lo).is_nonnegative for p in ranged) or not (const.is_nonnegative or const.is_nonpositive):
        return None
    lo, hi = sp.Mul(*[p.lo for p in ranged]), sp.Mul(*[p.hi for p in ranged])
    lo, hi = (const * lo, const * hi) if const.is_nonnegative else (const * hi, const * lo)
    return Bounds(lo, hi, all(p.exact for p in ranged) and _disjoint(ranged),
                  frozenset().union(*[p.indices for p in ranged]))


def _floor_bounds(e: sp.floor, ranges: dict) -> Bounds | None:
    """``x // c`` for a positive c free of indices: monotone in x."""
    num, den = sp.fraction(sp.together(e.args[0]))
    if den.free_symbols & set(ranges) or not den.is_positive:
        return None
    inner = subscript_bounds(num, ranges)
    if inner is None:
        return None
    return Bounds(sp.floor(sp.expand(inner.lo) / den), sp.floor(sp.expand(inner.hi) / den), inner.exact,
                  inner.indices)


def _mod_bounds(e: sp.Mod, ranges: dict) -> Bounds | None:
    """``x % m`` for a positive m free of indices lies in [0, m - 1]; whether x's values reach both ends depends on
    which values they are, so the bounds are not exact (enough to prove ``c % bw`` inside an axis of bw)."""
    x, m = e.args
    inner = subscript_bounds(x, ranges)
    if inner is None or m.free_symbols & set(ranges) or not m.is_positive:
        return None
    return Bounds(sp.Integer(0), m - 1, False, inner.indices)
