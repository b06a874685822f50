"""Small SymPy helpers for index notation: split products, collect deltas, contract sums against deltas.

We own the index semantics (every index lies in its declared range), so a Kronecker delta against a summed index
is contracted by substitution, without SymPy's range Piecewise, where the other side provably stays inside the summed
index's range (see ``contract_product``).
"""

from __future__ import annotations

import functools

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


def _bounds(expr: sp.Expr, ranges: dict):
    """(lo, hi) with lo <= expr <= hi over the index symbols' ranges [0, n), or None. Dims (positive symbols) are
    constants; hi may over-estimate (a floor is bounded by its real quotient), which only makes ``_within`` refuse."""
    expr = sp.S(expr)
    if expr.is_Integer or (expr.is_Symbol and expr.is_positive):
        return expr, expr
    if expr.is_Symbol:
        return (sp.Integer(0), ranges[expr] - 1) if expr in ranges else None
    if isinstance(expr, sp.Mod):
        low = _bounds(expr.args[0], ranges)
        return (sp.Integer(0), expr.args[1] - 1) if low is not None and expr.args[1].is_positive else None
    if isinstance(expr, sp.floor):
        num, den = sp.fraction(sp.together(expr.args[0]))
        b = _bounds(num, ranges)
        return (sp.Integer(0), b[1] / den) if b is not None and den.is_positive and _nonneg(b[0]) else None
    if isinstance(expr, sp.Add):
        parts = [_bounds(a, ranges) for a in expr.args]
        if any(p is None for p in parts):
            return None
        return sp.Add(*[p[0] for p in parts]), sp.Add(*[p[1] for p in parts])
    if isinstance(expr, sp.Mul):
        coeff = sp.Mul(*[f for f in expr.args if not (f.free_symbols - {x for x in f.free_symbols if x.is_positive})])
        rest = sp.Mul(*[f for f in expr.args if f.free_symbols - {x for x in f.free_symbols if x.is_positive}])
        if rest == 1 or isinstance(rest, sp.Mul):
            return None  # a product of index expressions
        b = _bounds(rest, ranges)
        if b is None:
            return None
        if coeff.is_nonnegative:
            return coeff * b[0], coeff * b[1]
        if coeff.is_nonpositive:
            return coeff * b[1], coeff * b[0]
    return None


def _nonneg(e) -> bool:
    return bool(sp.simplify(e).is_nonnegative)


def _within(expr: sp.Expr, extent: sp.Expr, ranges: dict, normalize) -> bool:
    """Whether ``expr``, an integer expression over index symbols of known ranges [0, n) and dims, provably lies in
    [0, extent) for every choice of the dims (checked over the free dims after ``normalize``)."""
    expr = sp.S(expr)
    if isinstance(expr, sp.floor):  # floor(num / den) < extent  <=>  num < extent * den (den > 0)
        num, den = sp.fraction(sp.together(expr.args[0]))
        return bool(den.is_positive) and _within(num, extent * den, ranges, normalize)
    b = _bounds(expr, ranges)
    return b is not None and _nonneg(normalize(b[0])) and _nonneg(normalize(extent - 1 - b[1]))


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
    """Positions k such that every term of ``entry`` contains delta(rows[k], cols[k]). A zero entry has no terms, so
    every position qualifies (0 = delta(r, c) * 0): ``A = 0`` (no memory) is a zero diagonal, not a dense N x N
    matrix with unknown eigenvalues run as a per-step matrix-vector product."""
    if sp.S(entry) == 0:
        return set(range(len(rows)))
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


# SymPy's simplify combines an expression's sums pairwise and re-simplifies their bodies in each rewrite it tries, so
# its cost roughly doubles with every Sum: a dense block averaging five softmaxes (six sums, 36 ops) took 3-9 s a call
# and 15-35 s a compile, a gated DeltaProduct's block (seven sums) 24 minutes. Beyond this many distinct sums the sums
# are held opaque (``_held_sum`` functions of their free indices): the rest simplifies as usual and identical sums
# still cancel; only rewrites across sums are lost (the prover's optional readings then prove less, never wrongly).
SIMPLIFY_MAX_SUMS = 4


def sum_count(expr) -> int:
    """How many distinct ``Sum`` nodes ``expr`` holds, nested ones included."""
    expr = sp.S(expr)
    return len(expr.atoms(sp.Sum)) if expr.has(sp.Sum) else 0


# memoised: the stability report's prover and the plan's ask about the same inlined sums (a chain of feature-map lets
# simplified twice over, ~1 s each); SymPy expressions are immutable and hashable, and simplify is pure
@functools.lru_cache(maxsize=512)
def simplify(expr):
    """``sp.simplify(expr)``, or ``expr`` unchanged when its functions nest deeper than MAX_SIMPLIFY_NESTING.

    A ``Sum`` whose body holds a delta of its summed index is held opaque: ``contract_delta_sums`` left it because
    the delta's other side may leave the summed range (``sum(k: p, delta(k, j) * ar[c, k])`` with j < L > p, ARMA's
    AR row padded with zeros), and SymPy's delta summation would write it as a range ``Piecewise`` that no printer
    or prover reads (an internal error in the torch printer). Exact as it stands, the printers read the sum.
    Every sum is held so when there are more than SIMPLIFY_MAX_SUMS of them, which bounds SymPy's cost, and when
    SymPy's sum combining fails inside (its ``sum_add`` raises StopIteration on a term with a Sum only in a
    denominator, ``x / Sum(...)``: a normalised decay's trace in the 2x2 check crashed ``dsfc compile``)."""
    if function_nesting(expr) > MAX_SIMPLIFY_NESTING:
        return expr
    try:
        return _simplify(expr, every=sum_count(expr) > SIMPLIFY_MAX_SUMS)
    except StopIteration:
        return _simplify(expr, every=True)


def _simplify(expr, every: bool):
    held = {}

    def hold(node):
        # every summed index counts: a double sum written with two limits (a Frobenius norm's
        # Sum(..., (i, 0, N - 1), (j, 0, N - 1)) over a delta-banded matrix) was never held, and SymPy's symbolic
        # summation recursed until Python's limit on it (HiPPO-FouT's norm bound: 9 s, then a RecursionError)
        summed = {limit[0] for limit in node.limits}
        if not every and not any(summed & d.free_symbols for d in node.function.atoms(sp.KroneckerDelta)):
            return node
        if node not in held:  # a function of the sum's free indices, so that an enclosing sum still sees them
            args = sorted((s for s in node.free_symbols if isinstance(s, sp.Symbol)), key=sp.default_sort_key)
            held[node] = sp.Function(f"_held_sum{len(held)}")(*args)
        return held[node]

    def hold_call(node):
        if node not in held:
            held[node] = sp.Function(f"_held_call{len(held)}")(*node.args)
        return held[node]

    expr = sp.S(expr)
    opaque = expr.replace(lambda n: isinstance(n, sp.Sum), hold) if expr.has(sp.Sum) else expr
    # hyperbolic functions held too: simplify's trigsimp rewrites them through exp and factors the result over
    # Q(i), which took 35 s on a 63-op 2x2 Jury determinant with two tanh gates (a random KDA-like spec compiled for
    # 107 s); no proof here uses a hyperbolic identity (the catalog's and the tests' 375 reports are unchanged)
    opaque = opaque.replace(lambda n: isinstance(n, HELD_CALLS), hold_call) if opaque.has(*HELD_CALLS) else opaque
    if not held:
        return sp.simplify(expr)
    back, out = {v: k for k, v in held.items()}, sp.simplify(opaque)
    while out.has(*back):  # a held sum's body may hold inner ones: one level per pass
        out = out.xreplace(back)
    return out


HELD_CALLS = (sp.tanh, sp.sinh, sp.cosh)  # simplify holds these opaque (see _simplify)


def _radix_parts(diff: sp.Expr, ranges: dict, normalize) -> list[sp.Expr] | None:
    """``diff`` = N X + Y with X an integer expression and |Y| <= N - 1 provably (Y over index symbols of known
    ranges): then diff = 0 exactly when X = 0 and Y = 0. Returns [Y, X's own parts...] (X split again, so that
    ``(h K + a) V + b`` gives three parts), or None when no such split is proven."""
    terms = sp.Add.make_args(sp.expand(diff))
    if len(terms) < 2 or not all(t.as_coeff_Mul()[0].is_Integer for t in terms):
        return None
    candidates = []
    for t in terms:
        for f in sp.Mul.make_args(t):
            n = abs(f) if f.is_Integer else f
            if ((n.is_Integer and n > 1) or (n.is_Symbol and n.is_positive and n.is_integer)) and n not in candidates:
                candidates.append(n)
    for n in candidates:
        high = [t for t in terms if sp.fraction(t / n)[1] == 1]
        low = [t for t in terms if sp.fraction(t / n)[1] != 1]
        if not high or not low:
            continue
        y, x = sp.Add(*low), sp.expand(sp.Add(*high) / n)
        b = _bounds(y, ranges)
        if b is None or not (_nonneg(normalize(n - 1 - b[1])) and _nonneg(normalize(n - 1 + b[0]))):
            continue
        return [y, *(_radix_parts(x, ranges, normalize) or [x])]
    return None


def split_flat_deltas(expr: sp.Expr, ranges: dict, normalize=None) -> sp.Expr:
    """Every ``delta(h K + a, h2 K + a2)`` of ``expr`` (a delta of two flattened indices, a, a2 in [0, K)) as the
    product ``delta(h, h2) * delta(a, a2)``, where the split is proven (``_radix_parts``; ``ranges``: the extents of
    the index symbols, e.g. a matrix's rows and columns; ``normalize`` rewrites derived dims over the free ones). The
    structure analysis reads a diagonal or a block pair from deltas of single index symbols; the flattened delta (the
    way a codebase that indexes a flat state writes it) is the same matrix but was analysed as a dense A (right
    numbers, the dense scan instead of the chunked one)."""
    from ..ir.functions import kronecker_delta

    expr = sp.S(expr)
    normalize = normalize or (lambda e: e)

    def one(node):
        parts = _radix_parts(node.args[0] - node.args[1], ranges, normalize)
        return node if parts is None else sp.Mul(*[kronecker_delta(p, 0) for p in parts])

    return expr.replace(lambda n: isinstance(n, sp.KroneckerDelta), one)


def contract_delta_sums(expr: sp.Expr, ranges: dict, normalize=None) -> sp.Expr:
    """Rewrite every ``Sum`` of ``expr`` whose body pins the summed index with a delta, ``sum(a3, delta(a3, a) *
    q[h, a3])`` -> ``q[h, a]``, where the delta's other side provably stays in the summed range (``ranges``: the
    extents of the index symbols outside the sums, e.g. a matrix's rows and columns). The structure analysis reads
    deltas at the top level of an entry; the same delta under a sum hid a key contraction (a dense readout and the
    elementwise scan instead of the chunked one). Sums that pin nothing are left exactly as written."""
    expr = sp.S(expr)
    if not expr.has(sp.Sum):
        return expr
    known = dict(ranges)
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Sum) and len(node.limits) == 1 and node.limits[0][1] == 0:
            var, _, hi = node.limits[0]
            if known.setdefault(var, hi + 1) != hi + 1:
                known[var] = None  # the same name summed over two ranges: not used to prove a pin
    known = {k: v for k, v in known.items() if v is not None}

    def rule(node):
        if len(node.limits) != 1 or node.limits[0][1] != 0:
            return node
        var, _, hi = node.limits[0]
        body, pinned = node.function, False
        for t in terms(body):
            deltas, _ = split_deltas(t)
            if any(_other(d, var) is not None and _within(_other(d, var), hi + 1, known, normalize or (lambda e: e))
                   for d in deltas):
                pinned = True
                break
        if not pinned:
            return node
        return contract_product(body, [var], [hi + 1], sp.Integer(1), known, normalize)

    # innermost sums first: a pin of an outer index may sit under an inner sum
    return expr.replace(lambda n: isinstance(n, sp.Sum), rule)
