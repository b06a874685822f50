"""``reuse_lets(expr, SymSpec) -> expr``: every reduction in ``expr`` that a let already computes read from that let.

The structure analysis inlines the DSF matrices into per-state-entry expressions, so a projection the spec names
once can come back as a sum of its own: HGRN's ``B[c, m] = (1 - f[c]) sigmoid(ipre[c]) W_i[c, m]`` gives
``B u = (1 - f[c]) sigmoid(ipre[c]) sum(m, W_i[c, m] u[m])``, where ``sum(m, W_i[c, m] u[m])`` is the let ``ipre``.
Printed as is, the generated module computes that projection twice (and its Triton kernel reads a hoisted copy as one
more stream). A let whose whole definition is a sum is matched against each sum in ``expr``, with its index symbols as
wildcards and bound variables renamed to a canonical form on both sides, so ``sum(k, W[c, k] u[k])`` is
``x[c]`` for ``let x[c'] = sum(m, W[c', m] u[m])``. Only where each index is a symbol ranging over exactly the
let's axis (``ranges``): a sum at an index the let does not cover stays. Codegen only: the analysis sees the spec as
written.
"""

from __future__ import annotations

import sympy as sp

from .symspec import SymSpec


def canonical_bound(expr: sp.Expr) -> sp.Expr:
    """``expr`` with every sum's bound variables renamed by nesting depth and position (``_bv0_0``, ...)."""

    def walk(e, depth):
        if not e.args:
            return e
        if isinstance(e, sp.Sum):
            names = {v: sp.Symbol(f"_bv{depth}_{k}", **v.assumptions0) for k, (v, *_) in enumerate(e.limits)}
            body = walk(e.function.xreplace(names), depth + 1)
            return sp.Sum(body, *[(names[v], walk(lo, depth), walk(hi, depth)) for v, lo, hi in e.limits])
        return e.func(*[walk(a, depth) for a in e.args])

    return walk(sp.S(expr), 0)


def reuse_lets(expr: sp.Expr, sym: SymSpec, ranges: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
    expr = sp.S(expr)
    if not expr.has(sp.Sum):
        return expr
    patterns = []
    for let in sym.lets:
        if let.running or let.feature is not None or not isinstance(let.expr, sp.Sum):
            continue
        wild = tuple(sp.Wild(f"_w{k}") for k in range(len(let.index)))
        pattern = canonical_bound(let.expr).xreplace(dict(zip(let.index, wild)))
        patterns.append((let, wild, pattern))
    if not patterns:
        return expr

    def walk(e):
        if isinstance(e, sp.Sum):
            canon = canonical_bound(e)
            for let, wild, pattern in patterns:
                found = canon.match(pattern)
                if found is None or not all(w in found for w in wild):
                    continue
                idx = tuple(found[w] for w in wild)
                covered = all(i in ranges and sym.in_free_dims(ranges[i] - a.extent, exact_division=True) == 0
                              for i, a in zip(idx, let.tensor.axes))
                if covered:
                    return let.tensor.base[idx] if idx else let.tensor.base
            return e
        if not e.args:
            return e
        return e.func(*[walk(a) for a in e.args])

    return walk(expr)
