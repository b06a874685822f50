"""``product_as_matrix(sym) -> warnings``: B or D written as the product ``B u`` instead of the matrix ``B``.

A user who means ``B u = k z`` with ``z = W_z u`` a let, and writes ``B[(h, j), m] = k[h, j] * z[h]``, gets a layer
that compiles and computes ``k z sum(u)``: B's entry does not depend on its column index ``m``, so every input
channel is added in, and the input is read twice. (The matrix is ``B[(h, j), m] = k[h, j] * W_z[h, m]``.) An entry
that reads the input (directly or through its lets) yet is the same for every column is almost always this mistake;
a column-independent constant (``B[i, k] = 1``: the sum of the inputs) is not warned about, nor an input of one
entry, where the column is the only one. The column counts as read only where the value can change with it: a let
subscripted by it (``B[i, k] = Bm[i, k]``) reads it only if the let's definition reads that axis's index (a let
``Bm[i: N, k: d] = g[i] * z[i]`` is the product form one name away)."""

from __future__ import annotations

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits

from ..lang.errors import SpecWarning
from .symspec import SymSpec, read_closure, tensor_names


def product_as_matrix(sym: SymSpec) -> tuple[SpecWarning, ...]:
    """A warning at each of B and D whose entry reads the input but not its column index (input of > 1 entry)."""
    spec = sym.checked.spec
    varying = {let.tensor.name for let in sym.lets if let.time_varying} | {sym.input.name}
    lets, memo = {let.tensor.name: let for let in sym.lets}, {}
    found = []
    for name in ("B", "D"):
        m = sym.matrices.get(name)
        if m is None or not m.cols:
            continue
        width = sp.Mul(*m.col_extents).subs({sym.dims[k]: v for k, v in sym.dim_values().items()})
        if width.is_number and width <= 1:  # one input entry at the default dims: its column is the only one
            continue
        entry = sp.S(m.entry)
        if not read_closure(sym.lets, tensor_names(entry)) & varying:
            continue
        if any(_depends_on(entry, c, lets, memo) for c in m.cols):
            continue
        cols = ", ".join(str(c) for c in m.cols)
        driven = sym.driven.name if sym.driven is not None else sym.input.name
        # a let subscripted by the column that does not vary along that axis: the column is written, not read
        through = sorted({str(n.base.label) for n in entry.atoms(sp.Indexed)
                          if str(n.base.label) in lets and set(m.cols) & sp.S(n).free_symbols})
        via = ""
        if through:
            via = (f" (the let{'s' if len(through) > 1 else ''} {', '.join(map(repr, through))} read at it "
                   f"{'do' if len(through) > 1 else 'does'} not vary along that axis)")
        found.append(SpecWarning(
            f"{name}'s entry reads the input but not {name}'s column index ({cols}){via}: {name} {driven} then "
            f"multiplies it by the sum of the entries of {driven!r} (was the product {name} {driven} written where "
            f"the matrix {name} was meant?)", m.span, spec.path, spec.source,
            hint=f"write {name}'s entry over ({cols}): for {name} {driven} = k z with z = W {driven}, write "
                 f"k * W[..., {cols}], not k * z"))
    return tuple(found)


def _depends_on(expr, idx: sp.Symbol, lets: dict, memo: dict) -> bool:
    """Whether ``expr``'s value can change with the index ``idx``: ``idx`` read outside the subscripts of lets, or in
    the subscript of a let whose definition reads the index of that axis (through any chain of lets)."""
    expr = sp.S(expr)
    if idx not in expr.free_symbols:
        return False
    for node in expr.atoms(sp.Indexed):
        let = lets.get(str(node.base.label))
        if let is None:
            continue
        if any(idx in sp.S(s).free_symbols and _let_reads_axis(let, p, lets, memo) for p, s in enumerate(node.indices)):
            return True
    return _read_outside(expr, idx, lets)


def _read_outside(e, idx: sp.Symbol, lets: dict) -> bool:
    """Whether ``idx`` is read free in ``e`` outside the subscripts of lets: a walk, not ``e.xreplace`` of the reads
    (rebuilding re-evaluates every function in the entry: minutes on a 50-deep tanh chain)."""
    if e == idx:
        return True
    if isinstance(e, sp.Indexed) and str(e.base.label) in lets:
        return False
    if isinstance(e, ExprWithLimits) and idx in e.variables:  # a sum over an index of the same name: only its limits
        return any(_read_outside(b, idx, lets) for lim in e.limits for b in lim[1:])
    return any(_read_outside(a, idx, lets) for a in e.args)


def _let_reads_axis(let, axis: int, lets: dict, memo: dict) -> bool:
    """Whether the let's value can change along its axis ``axis``; a window or feature-map let: assumed so."""
    key = (let.tensor.name, axis)
    if key not in memo:
        memo[key] = True  # a cycle (none in a checked spec) or an axis beyond the let's index: assumed read
        if axis < len(let.index) and let.running != "window" and let.feature is None:
            memo[key] = any(_depends_on(e, let.index[axis], lets, memo) for e in let.definition)
    return memo[key]
