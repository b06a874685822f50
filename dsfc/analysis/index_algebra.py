"""Small SymPy helpers for index notation: split products, collect deltas, contract sums against deltas.

We own the index semantics (every index lies in its declared range), so a Kronecker delta against a summed index
is contracted by substitution, without SymPy's range Piecewise, where the other side provably stays inside the summed
index's range (see ``contract_product``).
"""

from __future__ import annotations

import sympy as sp


def terms(expr: sp.Expr) -> list[sp.Expr]:
    """Top-level additive terms, after distributing products over sums (not inside functions)."""
    e = sp.expand(expr, deep=False, mul=True, multinomial=False, power_exp=False, power_base=False, log=False)
    return list(sp.Add.make_args(e))


def factors(term: sp.Expr) -> list[sp.Expr]:
    return list(sp.Mul.make_args(term))


def split_deltas(term: sp.Expr) -> tuple[list[sp.KroneckerDelta], sp.Expr]:
    deltas, rest = [], []
    for f in factors(term):
        (deltas if isinstance(f, sp.KroneckerDelta) else rest).append(f)
    return deltas, sp.Mul(*rest)


def delta_pairs(deltas) -> set[frozenset]:
    return {frozenset(d.args) for d in deltas}


def index_symbols(expr: sp.Expr, candidates) -> set[sp.Symbol]:
    cands = set(candidates)
    return {s for s in expr.free_symbols if s in cands}


def _other(delta: sp.KroneckerDelta, var: sp.Symbol):
    """For delta(var, e) with e free of var, return e; otherwise None."""
    a, b = delta.args
    if a == var and var not in b.free_symbols:
        return b
    if b == var and var not in a.free_symbols:
        return a
    return None


def _within(expr: sp.Expr, extent: sp.Expr, ranges: dict, normalize) -> bool:
    """Whether ``expr``, an integer expression over symbols of known ranges [0, n), provably lies in [0, extent)
    for every choice of the dims: expr is an integer combination of those symbols plus a constant, and its least and
    largest values are bounded (exactly, over the free dims after ``normalize``)."""
    expr = sp.expand(expr)
    xs = expr.free_symbols
    if not xs <= set(ranges):
        return False
    coeffs = {x: expr.coeff(x) for x in xs}
    const = sp.expand(expr - sum(c * x for x, c in coeffs.items()))
    if const.free_symbols & xs or any(c.free_symbols & xs for c in coeffs.values()):
        return False  # a product of indices, a floor or a mod of one: not bounded here
    lo, hi = const, const
    for x, c in coeffs.items():
        if c.is_nonnegative:
            hi += c * (ranges[x] - 1)
        elif c.is_nonpositive:
            lo += c * (ranges[x] - 1)
        else:
            return False
    return bool(sp.simplify(normalize(lo)).is_nonnegative) and bool(
        sp.simplify(normalize(extent - 1 - hi)).is_nonnegative)


def contract_product(entry: sp.Expr, cols, extents, operand, row_ranges=None, normalize=None) -> sp.Expr:
    """sum over ``cols`` of entry * operand, contracting deltas that pin a summed index: e.g. B u, C h, D u.

    Each summed index pinned by a delta is substituted away; indices still present become a ``Sum``; indices
    absent from a term multiply it by their extent. A delta(var, e) pins var only where e provably stays in var's
    range, given the ranges of the matrix's rows (``row_ranges``; ``normalize`` rewrites derived dims over the free
    ones): with an output wider than the state, ``C[o, c] = delta(o, c)`` is 0 for o >= N, and substituting c := o
    read the state out of its range (an IndexError or a shape error in the generated module). Such a delta stays
    under the ``Sum``, which is exact.
    """
    ranges = dict(zip(cols, extents))
    known = {**dict(row_ranges or {}), **ranges}
    normalize = normalize or (lambda e: e)
    out = []
    for t in terms(entry * operand):
        free = list(cols)
        changed = True
        while changed:
            changed = False
            deltas, rest = split_deltas(t)
            for var in list(free):
                pin = next((d for d in deltas if _other(d, var) is not None
                            and _within(_other(d, var), ranges[var], known, normalize)), None)
                if pin is not None:
                    other = _other(pin, var)
                    t = sp.Mul(*[d for d in deltas if d is not pin], rest).subs(var, other)
                    free.remove(var)
                    changed = True
                    break
        for var in free:
            if var in t.free_symbols:
                # keep factors that do not involve the summed index outside the Sum: k[a] * sum_m W[b, m] u[m]
                inside = [f for f in factors(t) if var in f.free_symbols]
                outside = [f for f in factors(t) if var not in f.free_symbols]
                t = sp.Mul(*outside) * sp.Sum(sp.Mul(*inside), (var, 0, ranges[var] - 1))
            else:
                t = t * ranges[var]
        out.append(t)
    return sp.Add(*out)


def common_row_col_deltas(entry: sp.Expr, rows, cols) -> set[int]:
    """Positions k such that every term of ``entry`` contains delta(rows[k], cols[k])."""
    ts = terms(entry)
    common = None
    for t in ts:
        deltas, _ = split_deltas(t)
        pairs = delta_pairs(deltas)
        here = {k for k, (r, c) in enumerate(zip(rows, cols)) if frozenset((r, c)) in pairs}
        common = here if common is None else common & here
    return common or set()


def strip_deltas(entry: sp.Expr, rows, cols, positions) -> sp.Expr:
    """Remove delta(rows[k], cols[k]) for k in positions from every term, renaming cols[k] -> rows[k]."""
    out = []
    for t in terms(entry):
        deltas, rest = split_deltas(t)
        keep = [d for d in deltas if not any(frozenset(d.args) == frozenset((rows[k], cols[k])) for k in positions)]
        out.append(sp.Mul(*keep, rest))
    e = sp.Add(*out)
    return e.subs({cols[k]: rows[k] for k in positions}, simultaneous=True)


# sp.simplify tries rewrites whose cost grows exponentially with how deeply functions nest (tanh(tanh(...)) 16 deep
# takes minutes). Spec entries nest a few levels (exp(-dt * exp(A_log))); deeper ones are left as written, which
# only means the analysis proves less about them.
MAX_SIMPLIFY_NESTING = 6


def function_nesting(expr) -> int:
    """How deeply function applications (exp, tanh, softplus, ...) nest in ``expr`` (walked without recursion)."""
    deepest, stack = 0, [(sp.S(expr), 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, sp.Function):
            depth += 1
        deepest = max(deepest, depth)
        stack.extend((a, depth) for a in node.args)
    return deepest


def simplify(expr):
    """``sp.simplify(expr)``, or ``expr`` unchanged when its functions nest deeper than MAX_SIMPLIFY_NESTING."""
    return sp.simplify(expr) if function_nesting(expr) <= MAX_SIMPLIFY_NESTING else expr
