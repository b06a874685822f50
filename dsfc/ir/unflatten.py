"""Split flattened output axes: ``C[o, (h, a, b)] = delta(o, h*V + b) ...`` reads as ``delta(o_0, h) delta(o_1, b)``.

A spec may declare its output flat (``output y[H * V]``) and address it through a mixed-radix index,
``delta(o, sum_i stride_i * x_i)`` with ``x_i`` in ``[0, extent_i)``, the strides those of a row-major layout
(the innermost stride 1, each next one the previous stride times the previous extent) and the extents multiplying
to o's extent. Then o is exactly the flattening of a virtual multi-axis index (o_0, ..., o_(n-1)) of those
extents, and the delta is the product ``prod_i delta(o_i, x_i)`` (a mixed-radix representation is unique). The
structure analysis only recognises separate delta pairs (an output axis that maps to a state axis), so this pass
rewrites the SymSpec onto the virtual axes before it runs:

- the output tensor's flat axis becomes the virtual axes (row-major, so the generated module still returns y as
  ``[batch, time, H * V]`` with o = h*V + b);
- in C and D, o is replaced by ``sum_i stride_i * o_i`` and the result simplified exactly: such deltas split into
  per-digit deltas, and ``o // s`` / ``o % s`` at a digit boundary s become the digits they select;
- post-ops reading ``y[e]`` read ``y[digits of e]``.

The rewrite only happens when the extents tile o exactly (checked symbolically over the free dims); otherwise the
spec is left alone. The reference backend (``CompileResult.sym``) keeps the original spec. A flat *input* needs no
split: ``delta(m, h*P + p)`` against B's or D's summed input index is contracted by substitution (``u[h*P + p]``).

A flat *state* axis is split the same way (``unflatten_state``) where A, B and C read its index only through its
digits (``i // (K * V)``, ``(i // V) % K``, ``i % V``, A's ``delta(i, i2)``): the analysis then sees GLA's heads, keys
and values. The module keeps the declared state at its API (``SymSpec.state_view``): its initial and final states are
reshaped to and from the virtual axes (row-major, a view).
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from ..analysis.index_algebra import terms
from .digits import block_stride, div_mod_reads, free_dims, outer_extent, radix_digits, same
from .functions import TaylorRange
from .lower import index_symbol
from .symspec import SymAxis, SymMatrix, SymSpec


def _divmod_split(sym: SymSpec, m: SymMatrix, k: int):
    """Output row k of m read only through ``o // s`` and ``o % s`` with one stride s that divides o's extent:
    the digits [(s, extent / s), (1, s)], or None.

    ``delta(o // V, h) * delta(o % V, b)`` says the same as ``delta(o, h*V + b)``; without this it was left flat and
    the spec analysed as a dense readout (the elementwise scan instead of the chunked outer-product one).
    """
    o = m.rows[k]
    found = div_mod_reads(m.entry, {o})
    if not found or {L for L, _ in found} != {o}:
        return None  # no such reads, or o read through another flat index (o + 1) // s
    if len({free_dims(sym, s) for _, s in found}) != 1:
        return None
    s = next(iter(found))[1]
    if not block_stride(sym, s):
        return None
    hidden = m.entry.xreplace({node: sp.Integer(0) for nodes in found.values() for node in nodes})
    if o in hidden.free_symbols:
        return None  # o is also used on its own: keep it flat
    outer = outer_extent(sym, m.row_extents[k], s)
    if outer is None or outer == 1:
        return None  # s may not divide o's extent at every choice of the free dims
    return [(s, outer), (sp.Integer(1), s)]


def _find_split(sym: SymSpec, m: SymMatrix, k: int):
    """The mixed-radix digits that output row k of matrix m is compared with in one of its deltas, or None."""
    o = m.rows[k]
    extents = dict(zip(m.cols, m.col_extents))
    for t in terms(m.entry):
        for d in sp.preorder_traversal(t):
            if isinstance(d, sp.KroneckerDelta) and o in d.args:
                other = d.args[1] if d.args[0] == o else d.args[0]
                digits = radix_digits(sym, other, extents, m.row_extents[k])
                if digits is not None:
                    return [(s, e) for s, e, _ in digits]
    return _divmod_split(sym, m, k)


class _Simplifier:
    """Exact rewrites of deltas, floors and mods over digit symbols of known ranges [0, extent)."""

    def __init__(self, sym: SymSpec, ranges: dict[sp.Symbol, sp.Expr]):
        self.sym = sym
        self.ranges = ranges  # symbol -> extent (digits, and the matrix's column symbols)

    def _linear(self, e: sp.Expr):
        """e = sum c_i x_i over range-known symbols with nonnegative coefficients free of them, else None."""
        e = sp.expand(e)
        xs = [s for s in e.free_symbols if s in self.ranges]
        coeffs = {x: e.coeff(x) for x in xs}
        if sp.expand(e - sum(c * x for x, c in coeffs.items())) != 0:
            return None
        if any(c.free_symbols & set(xs) or not c.is_nonnegative for c in coeffs.values()):
            return None
        return coeffs

    def _bound(self, coeffs) -> sp.Expr:
        return sum((c * (self.ranges[x] - 1) for x, c in coeffs.items()), sp.Integer(0))

    def _below(self, coeffs, limit: sp.Expr) -> bool:
        gap = sp.simplify(free_dims(self.sym, limit - self._bound(coeffs)))
        return bool(gap.is_positive)

    def floor(self, arg):
        coeffs = self._linear(arg)
        if coeffs is None:
            return None
        whole = {x: c for x, c in coeffs.items() if c.is_integer}
        frac = {x: c for x, c in coeffs.items() if x not in whole}
        if frac and not self._below(frac, sp.Integer(1)):
            return None
        return sum((c * x for x, c in whole.items()), sp.Integer(0))

    def mod(self, arg, m):
        coeffs = self._linear(arg)
        if coeffs is None or not self._below(coeffs, m):
            return None
        return arg

    def delta(self, a, b):
        """delta(sum s_i x_i, sum s_i y_i) with both sides the same mixed radix -> prod delta(x_i, y_i)."""
        ca, cb = self._linear(a), self._linear(b)
        if not ca or not cb or len(ca) != len(cb) or len(ca) < 2:
            return None
        pairs = []
        for x, c in ca.items():
            y = next((y for y, d in cb.items() if same(free_dims(self.sym, c), free_dims(self.sym, d))), None)
            if y is None or not same(free_dims(self.sym, self.ranges[x]), free_dims(self.sym, self.ranges[y])):
                return None
            pairs.append((x, y))
        if len({y for _, y in pairs}) != len(pairs):
            return None
        # uniqueness needs a mixed radix: each stride the previous one times its extent, the innermost 1
        stride = sp.Integer(1)
        left = dict(ca)
        while left:
            x = next((x for x, c in left.items() if same(free_dims(self.sym, c), stride)), None)
            if x is None:
                return None
            stride = free_dims(self.sym, stride * self.ranges[x])
            del left[x]
        return sp.Mul(*[sp.KroneckerDelta(x, y) for x, y in pairs])

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        def rule(node):
            if isinstance(node, sp.floor):
                out = self.floor(node.args[0])
            elif isinstance(node, sp.Mod):
                out = self.mod(*node.args)
            else:
                out = self.delta(*node.args)
            return node if out is None else out

        return sp.S(expr).replace(lambda n: isinstance(n, (sp.floor, sp.Mod, sp.KroneckerDelta)), rule)


def _digits_of(e: sp.Expr, split) -> list[sp.Expr]:
    """The row-major digits of a flat index e: e // stride_i % extent_i (no mod on the most significant)."""
    out = []
    for i, (s, n) in enumerate(split):
        d = sp.floor(e / s) if s != 1 else e
        out.append(d if i == 0 else sp.Mod(d, n))
    return out


def _digit_symbols(x: sp.Symbol, split: list, taken: set[str], ranges: dict) -> tuple[list, sp.Expr]:
    """Fresh index symbols x_0, x_1, ... for the digits of the flat index x (names not in ``taken``; each recorded
    there and its extent in ``ranges``), and x as their row-major sum ``sum_i stride_i * x_i``."""
    digits = []
    for i, (_, n) in enumerate(split):
        name = f"{x}_{i}"
        while name in taken:
            name = "_" + name
        taken.add(name)
        digits.append(index_symbol(name))
        ranges[digits[-1]] = n
    return digits, sum((s * d for (s, _), d in zip(split, digits)), sp.Integer(0))


def _virtual_axes(sym: SymSpec, axes, splits: dict, named: bool) -> list[SymAxis]:
    """``axes`` with each split one replaced by an axis per digit (outermost first), named ``<axis>_<j>`` when
    ``named`` (the state's: the family reasons name its axes), unnamed otherwise (the outputs')."""
    vals = sym.dim_values()
    out: list[SymAxis] = []
    for k, ax in enumerate(axes):
        if k not in splits:
            out.append(ax)
            continue
        stem = ax.name or f"_i{k}"
        out += [SymAxis(f"{stem}_{j}" if named else None, n, int(sym.subs_dims(n, vals)))
                for j, (_, n) in enumerate(splits[k])]
    return out


def unflatten_output(sym: SymSpec) -> SymSpec:
    """Split every flat output axis that C (or D) addresses through a mixed-radix delta; ``sym`` itself when none."""
    c = sym.matrices.get("C")
    d = sym.matrices.get("D")
    splits = {}
    for k in range(len(sym.output.axes)):
        split = _find_split(sym, c, k) if c is not None else None
        if split is None and d is not None:
            split = _find_split(sym, d, k)
        if split is not None:
            splits[k] = split
    if not splits:
        return sym
    axes = _virtual_axes(sym, sym.output.axes, splits, named=False)
    out_t = replace(sym.output, axes=tuple(axes))
    matrices = dict(sym.matrices)
    for name in ("C", "D"):
        m = sym.matrices.get(name)
        if m is None:
            continue
        taken = {str(s) for s in m.entry.free_symbols} | {str(s) for s in m.rows + m.cols}
        rows, env, ranges = [], {}, dict(zip(m.cols, m.col_extents))
        for k, o in enumerate(m.rows):
            if k not in splits:
                rows.append(o)
                ranges[o] = m.row_extents[k]
                continue
            digits, env[o] = _digit_symbols(o, splits[k], taken, ranges)
            rows += digits
        entry = _Simplifier(sym, ranges)(m.entry.subs(env, simultaneous=True))
        matrices[name] = replace(m, rows=tuple(rows), row_extents=tuple(a.extent for a in axes), entry=entry)
    posts = sym.posts
    if posts:
        base = sym.output.base

        def reindex(expr):
            def one(node):
                idx = []
                for k, e in enumerate(node.indices):
                    idx += _digits_of(e, splits[k]) if k in splits else [e]
                return base[tuple(idx)]
            return expr.replace(lambda n: isinstance(n, sp.Indexed) and n.base == base, one)

        posts = tuple(replace(p, expr=reindex(p.expr)) for p in posts)
    return replace(sym, output=out_t, matrices=matrices, posts=posts)


# --- flat state axes ------------------------------------------------------------------------------------------------


def _digit_read(node: sp.Expr, x: sp.Symbol, total: sp.Expr):
    """The boundaries (N, ..., lo) of a read of the flat index x through nested ``// s`` and ``% e`` (``x // s``,
    ``x % e``, ``(x // s) % e``, ...): each level narrows the run of digits read, ``// s`` raising its low boundary
    to lo * s, ``% e`` its high one to lo * e. None when node is not such a read of x alone (an offset ``(x + 1) // V``,
    a scaled ``2 x // V``)."""
    if node == x:
        return total, sp.Integer(1), [total, sp.Integer(1)]
    if not isinstance(node, (sp.floor, sp.Mod)):
        return None
    if isinstance(node, sp.floor):
        inner, step = sp.fraction(sp.together(node.args[0]))
    else:
        inner, step = node.args
    if step == 1 or not (step.free_symbols or step.is_Integer):
        return None
    below = _digit_read(inner, x, total)
    if below is None:
        return None
    hi, lo, seen = below
    hi, lo = (hi, lo * step) if isinstance(node, sp.floor) else (lo * step, lo)
    return hi, lo, seen + [hi, lo]


def _digit_reads(entry: sp.Expr, x: sp.Symbol, total: sp.Expr, in_subscripts: bool = True):
    """The outermost digit reads of x in entry, {node: the boundaries they read at}; ``in_subscripts=False``: only
    those used as values, not inside a tensor's subscript (a walk that skips Indexed nodes: rebuilding the entry
    with its reads replaced re-evaluated every function in it, minutes on a large entry)."""
    found = {}

    def walk(e):
        b = _digit_read(e, x, total) if e != x else None
        if b is not None:
            found[e] = b[2]
            return
        if not in_subscripts and isinstance(e, sp.Indexed):
            return
        for a in e.args:
            walk(a)

    walk(sp.S(entry))
    return found


def _radix_chain(sym: SymSpec, bounds: list, total: sp.Expr):
    """The boundaries as one row-major radix of ``total``: [(stride, extent)] from the most significant digit, each
    extent the ratio of two consecutive boundaries (a polynomial over the free dims, or a declared floor dim), at
    least two digits; None when they do not nest (a stride 2 of an extent H K V, V and K of an extent K V)."""
    uniq: list = []
    for b in [total, sp.Integer(1)] + bounds:
        if not (b == 1 or block_stride(sym, b) or same(free_dims(sym, b), free_dims(sym, total))):
            return None
        if not any(same(free_dims(sym, b), free_dims(sym, u)) for u in uniq):
            uniq.append(b)
    divides = {k: sum(1 for j, c in enumerate(uniq) if j != k and outer_extent(sym, b, c) is not None)
               for k, b in enumerate(uniq)}
    # row-major boundaries decrease: ordered by their value at the default dims, ties by how many others they are
    # multiples of. The count alone misordered a group boundary P R n (R = H // G, SSD's grouped heads read as
    # i // (P n) // R): P R n / n = H P / G is no extent the module can print, so it counted fewer than P n did
    vals = sym.dim_values()
    chain = [uniq[k] for k in sorted(divides, key=lambda k: (-float(sym.subs_dims(uniq[k], vals)), -divides[k]))]
    if len(chain) < 3 or not same(free_dims(sym, chain[0]), free_dims(sym, total)) or chain[-1] != 1:
        return None
    split = []
    for hi, lo in zip(chain, chain[1:]):
        e = outer_extent(sym, hi, lo)
        if e is None or e == 1:
            return None
        split.append((lo, e))
    return split


def _state_index_uses(sym: SymSpec) -> list[tuple[str, str]]:
    """(matrix, "rows" / "cols") of every index tuple of the matrices that runs over the state."""
    where = {"A": ("rows", "cols"), "B": ("rows",), "C": ("cols",)}
    return [(name, side) for name, sides in where.items() if name in sym.matrices for side in sides]


def _tied_outputs(sym: SymSpec, m: SymMatrix, x: sp.Symbol, total: sp.Expr) -> dict:
    """C's output indices o of x's extent tied to the state index x by a factor ``delta(o, x)`` of every term:
    {o: that delta}. Where o = x, a read ``o // s`` is a read ``x // s``: PolaFormer's ``delta(e, b)`` with a query
    switched by ``e // Vh`` reads the value axis b in halves."""
    tied = {}
    for o, extent in zip(m.rows, m.row_extents):
        pair = sp.KroneckerDelta(o, x)
        if same(free_dims(sym, extent), free_dims(sym, total)) and all(
                pair in sp.Mul.make_args(t) for t in terms(m.entry)):
            tied[o] = pair
    return tied


def _state_split(sym: SymSpec, k: int):
    """The mixed-radix digits that state axis k is read through, in every matrix, or None.

    Every use of the axis's index (A's rows and columns, B's rows, C's columns) must be a digit read (``_digit_read``),
    A's ``delta(i, i2)`` between its two copies, or C's ``delta(o, i)`` with an output index o of the same extent,
    whose own digit reads then count as i's (the output is split after the state, through that delta); where such an
    output read exists, i may also be the whole subscript of a tensor (``W_v[h, i, m]``: the digits' radix sum reads
    the same entry; without one, a gather such as SSD's ``A_log[h]`` next to ``h // R`` keeps the axis whole). The
    union of the boundaries read must nest into one row-major radix of the axis's extent."""
    total = sym.state.axes[k].extent
    if sp.S(total).has(TaylorRange):
        return None  # a feature range (taylor(K, p)): its slots are not a product of dims
    bounds, subscripts, blocked_read = [], [], False
    for name, side in _state_index_uses(sym):
        m = sym.matrices[name]
        x = getattr(m, side)[k]
        reads = _digit_reads(m.entry, x, total)
        tied = _tied_outputs(sym, m, x, total) if name == "C" else {}
        # only a block index used as a value (PolaFormer's (e // Vh) * qo) asks for a split: a gather by group,
        # q[o // R, a], reads a compound subscript as it is, and a split of GQA's heads into (G, R) gains nothing
        tied = {o: pair for o, pair in tied.items() if _digit_reads(m.entry, o, total, in_subscripts=False)}
        for o in tied:
            blocked_read = True
            reads.update(_digit_reads(m.entry, o, total))
        hidden = m.entry.xreplace({node: sp.Integer(0) for node in reads})
        hidden = hidden.xreplace({pair: sp.Integer(1) for pair in tied.values()})
        if name == "A":
            pair = sp.KroneckerDelta(m.rows[k], m.cols[k])
            hidden = hidden.xreplace({pair: sp.Integer(1)})
        subscripts.append((x, hidden))
        hidden = hidden.replace(lambda n: isinstance(n, sp.Indexed) and x in n.indices, lambda n: sp.Integer(0))
        if x in hidden.free_symbols or any(o in hidden.free_symbols for o in tied):
            return None  # x read on its own (an offset (i + 1) // V, a scale 2 i // V, a value i * w)
        bounds += [b for bs in reads.values() for b in bs]
    if not bounds:
        return None
    if not blocked_read and any(x in hidden.free_symbols for x, hidden in subscripts):
        return None  # the index a whole subscript (SSD's A_log[h] next to h // R): no output read in blocks to split
    return _radix_chain(sym, bounds, total)


def unflatten_state(sym: SymSpec) -> SymSpec:
    """Split every flat state axis read only through mixed-radix digits; ``sym`` itself when none.

    ``state S[i: H * K * V]`` read in A, B and C through ``i // (K * V)``, ``(i // V) % K`` and ``i % V`` is the
    state ``[H, K, V]`` flattened row-major: i = h K V + a V + b with each digit in its range is the unique
    decomposition, so substituting it and simplifying exactly (``_Simplifier``) turns every read into the digit it
    selects, and A's ``delta(i, i2)`` into ``delta(h, h2) delta(a, a2) delta(b, b2)``. The structure analysis then
    sees heads, keys and values (GLA's chunked outer-product family instead of the elementwise diagonal scan over T x
    H K V entries). The state tensor takes the virtual axes; ``state_view`` keeps the declared one, so the module's
    initial and final states stay ``[batch, H * K * V]`` (a row-major reshape, a view). Refused, the axis left as
    written, when any use does not decompose: the index read on its own, at an offset, with a stride that does not
    divide its extent, boundaries that do not nest, or a read left with a floor or mod after the substitution."""
    splits = {}
    for k in range(len(sym.state.axes)):
        split = _state_split(sym, k)
        if split is not None:
            splits[k] = split
    if not splits:
        return sym
    axes = _virtual_axes(sym, sym.state.axes, splits, named=True)
    extents = tuple(a.extent for a in axes)
    matrices = dict(sym.matrices)
    for name, sides in (("A", ("rows", "cols")), ("B", ("rows",)), ("C", ("cols",))):
        m = sym.matrices.get(name)
        if m is None:
            continue
        taken = {str(s) for s in m.entry.free_symbols} | {str(s) for s in m.rows + m.cols}
        ranges = {**dict(zip(m.rows, m.row_extents)), **dict(zip(m.cols, m.col_extents))}
        env, fields = {}, {}
        for side in sides:
            new = []
            for k, x in enumerate(getattr(m, side)):
                if k not in splits:
                    new.append(x)
                    continue
                digits, env[x] = _digit_symbols(x, splits[k], taken, ranges)
                new += digits
            fields[side] = tuple(new)
            fields["row_extents" if side == "rows" else "col_extents"] = extents
        entry = _Simplifier(sym, ranges)(m.entry.subs(env, simultaneous=True))
        digits = {d for e in env.values() for d in e.free_symbols} - set(sym.dims.values())
        if any(isinstance(n, (sp.floor, sp.Mod)) and n.free_symbols & digits for n in sp.preorder_traversal(entry)):
            return sym  # a read the digits did not simplify: not proven exact, keep the spec as written
        matrices[name] = replace(m, entry=entry, **fields)
    return replace(sym, state=replace(sym.state, axes=tuple(axes)), matrices=matrices,
                   state_view=sym.state_view or sym.state)
