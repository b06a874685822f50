"""Structure of A, the form of B u, the readout, and the algorithm family they admit.

Everything is *discovered* from the index-form entries: a state axis is "diagonal" when every term of A's entry
carries delta(row_k, col_k); the decay is what remains once those deltas are stripped.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, replace

import sympy as sp

from ..ir.symspec import SymSpec
from ..lang.errors import SpecError, SpecErrors
from .facts import AKind, BForm, Family
from .index_algebra import common_row_col_deltas, contract_product, factors, simplify, split_deltas, strip_deltas, terms
from .kernelise import has_infinite_state, kernelise, reject_infinite_lets


def _depends(expr: sp.Expr, syms) -> tuple[int, ...]:
    free = expr.free_symbols
    return tuple(k for k, s in enumerate(syms) if s in free)


@dataclass(frozen=True)
class AStructure:
    kind: AKind
    diag_axes: tuple[int, ...]  # state axes where A carries delta(row, col)
    mixed_axes: tuple[int, ...]  # the others
    decay: sp.Expr | None  # diagonal families: the entry with deltas stripped, over the row symbols
    decay_axes: tuple[int, ...]  # state axes the decay (or block) depends on
    block: sp.Expr | None  # block-diagonal/dense: entry over rows (all) and cols (mixed axes)
    rows: tuple[sp.Symbol, ...]
    cols: tuple[sp.Symbol, ...]
    low_rank: bool  # block = s * I - (rank-1) (DeltaNet-like)


@functools.lru_cache(maxsize=64)
def pair_blocks(a: AStructure) -> tuple[tuple[sp.Expr, ...], ...] | None:
    """The 2 x 2 blocks of A over its one mixed axis, entries [i][j] (simplified, over the rows), when it has one
    mixed axis and a block; None otherwise. The caller checks that axis has 2 entries (at the defaults for a bound,
    at every dims for code). Cached: the eigenvalue prover and the planner both ask, and simplify is the cost."""
    if len(a.mixed_axes) != 1 or a.block is None:
        return None
    r, c = a.rows[a.mixed_axes[0]], a.cols[a.mixed_axes[0]]
    return tuple(tuple(simplify(sp.S(a.block).subs({r: i, c: j}, simultaneous=True)) for j in range(2))
                 for i in range(2))


def rotation_parts(m: tuple[tuple[sp.Expr, ...], ...]) -> tuple[sp.Expr, sp.Expr] | None:
    """(x, y) when the 2 x 2 blocks ``m`` are rotation-scalings ``[[x, -y], [y, x]]``: a complex diagonal x + i y
    written in real form (S4D's and LRU's modes), else None."""
    if simplify(m[0][0] - m[1][1]) != 0 or simplify(m[0][1] + m[1][0]) != 0:
        return None
    return m[0][0], m[1][0]


@dataclass(frozen=True)
class OuterSplit:
    """(B u)[g,k,v] = key[g,k] * value[g,v], y[g,v] = sum_k query[g,k] h[g,k,v]: linear-attention form."""

    group_axes: tuple[int, ...]
    key_axes: tuple[int, ...]
    value_axes: tuple[int, ...]
    key: sp.Expr
    value: sp.Expr
    query: sp.Expr
    # output axis k <-> state axis out_map[k]; None: an output axis that indexes no state axis (y[h, z, b] with
    # delta(z, 0) in C), along which y is the gate times the state's readout, broadcast
    out_map: tuple[int | None, ...]
    # a factor of C over the output (group and value) axes only, no key axis: y[g,v] = gate[g,v] * sum_k q h, applied
    # after the scan (Mamba's silu(z) written into C); 1 when C has none
    gate: sp.Expr = sp.Integer(1)
    # rank axes summed in B u: (B u)[g,k,v] = sum_r key[g,r,k] * value[g,r,v] (Mamba-3's MIMO SSD, several tokens
    # per step), as (symbol, extent) pairs; key and value are over these symbols too. () for one outer product
    key_rank: tuple[tuple[sp.Symbol, sp.Expr], ...] = ()
    # output axes the state lacks along which the query varies with the key axes: y[g,r,v] = sum_k q[g,r,k] h[g,k,v]
    # (R queries per step read one state); their out_map entries are None, and they are not broadcast
    query_rank: tuple[int, ...] = ()


@dataclass(frozen=True)
class RankOneBlock:
    """A's block on the mixed axes = scale * I + row_vec[rows] * col_vec[cols] (identity plus rank 1)."""

    scale: sp.Expr  # over the row symbols of the other axes (e.g. a gate per head)
    row_vec: sp.Expr  # depends on the mixed row symbols
    col_vec: sp.Expr  # depends on the mixed column symbols


@dataclass(frozen=True)
class DeltaSplit:
    """The delta rule: A = s (I - key read^T) per group, B u = key (x) value, so the chunkwise WY form applies."""

    decay: sp.Expr  # s over the group row symbols (1 for DeltaNet)
    read: sp.Expr  # f over the group and key row symbols
    # the read carries the decay: A = s I - key read^T (a rank-1 weight independent of s, Comba's al I - be k k^T),
    # where s (I - key (read / s)^T) would divide by s (inf once s underflows in fp32)
    scaled: bool = False
    # a product of delta-rule factors over a step axis (the gated delta product): A = s (I - k_(n-1) f_(n-1)^T) ...
    # (I - k_0 f_0^T), run as n sub-steps of the delta rule. The split's key and ``read`` are then sum_j delta(r, j)
    # k_j and sum_j delta(r, j) f_j over its rank axis r (key_rank), the sub-step keys (not B's keys, which are the
    # later factors times k_j); the number of factors n (0: one factor, the plain rule). The decay sits at the first
    # sub-step, or with ``scaled`` at the last (B u carries the gate too): there S = s S - k f^T S + k v^T with the
    # key k = s k_(n-1), the scan's scaled read
    substeps: int = 0


@dataclass(frozen=True)
class DplrSplit:
    """A per-key decay with a rank-1 correction: A = diag(d) + x y^T on the key axes per group (identity on the value
    axes), B u = key (x) value: Kimi Delta Attention in either order, RWKV-7. Run by ``chunked_dplr_scan``."""

    decay: sp.Expr  # d over the group and key row symbols (it may be shared over the keys)
    write: sp.Expr  # x over the group and key row symbols
    read: sp.Expr  # y over the group and key row symbols (A's column symbols renamed to the rows)


@dataclass(frozen=True)
class RotationSplit:
    """A's 2 x 2 blocks on one key axis of extent 2 (the pair axis, r) are rotation-scalings
    rho R(theta) = [[x, -y], [y, x]] (x = rho cos theta, y = rho sin theta; a complex per-key decay rho e^(i theta)),
    x and y over the group and key rows only. Rotations commute, so with Phi_t = theta_1 + ... + theta_t and
    P_t = R(Phi_t) the state P_t^T S_t is a plain outer-product scan with the real decay rho and the keys and queries
    rotated by -Phi_t (``rotate_pairs``): the chunked outer-product family, whose keys include the pair axis."""

    pair_axis: int  # the state axis of the (re, im) pair, one of the split's key axes
    x: sp.Expr  # the block's diagonal entry, over the row symbols
    y: sp.Expr  # its lower off-diagonal entry
    rho: sp.Expr  # the real decay per step, >= 0 unless the spec writes rho cos, rho sin with a signed rho
    theta: sp.Expr | None  # the angle per step; None: atan2(y, x), computed from x and y by the generated code
    decay_axes: tuple[int, ...]  # state axes rho depends on (never the pair axis)


@dataclass(frozen=True)
class Readout:
    """y[o] = (C h)[o] and (D u)[o] with deltas contracted, over the output symbols."""

    out_syms: tuple[sp.Symbol, ...]
    ch: sp.Expr
    du: sp.Expr  # 0 when D is absent


@dataclass(frozen=True)
class Structure:
    a: AStructure
    bu: sp.Expr  # (B u)[rows] over the state row symbols of A
    b_form: BForm
    readout: Readout
    outer: OuterSplit | None
    family: Family
    family_reason: str
    kernel: object = None  # Kernelised (analysis/kernelise.py) for the quadratic family, else None
    delta: DeltaSplit | None = None  # the delta-rule form of an identity-plus-rank-1 A (family CHUNKED_DELTA)
    dplr: DplrSplit | None = None  # the diagonal-plus-rank-1 form of A (family CHUNKED_DPLR)
    rotation: RotationSplit | None = None  # a rotating decay per key pair moved into q and k (CHUNKED_OUTER)


def classify_a(sym: SymSpec) -> AStructure:
    m = sym.matrices["A"]
    rows, cols = m.rows, m.cols
    # an axis of literal extent 1 has row index = column index (both 0): diagonal there with or without a delta
    unit = {k for k, extent in enumerate(m.row_extents) if extent == 1 and m.col_extents[k] == 1}
    diag = sorted(common_row_col_deltas(m.entry, rows, cols) | unit)
    mixed = tuple(k for k in range(len(rows)) if k not in diag)
    stripped = simplify(strip_deltas(m.entry, rows, cols, diag)) if diag else m.entry
    if not mixed:
        decay = stripped
        dep = _depends(decay, rows)
        if decay == 1:
            kind = AKind.IDENTITY
        elif not dep:
            kind = AKind.SCALAR
        elif len(dep) < len(rows):
            kind = AKind.SCALAR_PER_GROUP
        else:
            kind = AKind.DIAGONAL
        return AStructure(kind, tuple(diag), (), decay, dep, None, rows, cols, False)
    block = stripped
    dep = tuple(sorted(set(_depends(block, rows)) | set(mixed)))
    kind = AKind.BLOCK_DIAGONAL if diag else AKind.DENSE
    low_rank = _is_identity_minus_rank1(block, rows, cols, mixed)
    return AStructure(kind, tuple(diag), mixed, None, dep, block, rows, cols, low_rank)


def _is_identity_minus_rank1(block, rows, cols, mixed) -> bool:
    """block == s * prod delta(row_k, col_k) (k mixed) - f(rows) * g(cols), s constant over the mixed axes?"""
    ident = [t for t in terms(block) if all(frozenset((rows[k], cols[k])) in
                                            {frozenset(f.args) for f in factors(t) if isinstance(f, sp.KroneckerDelta)}
                                            for k in mixed)]
    rest = [t for t in terms(block) if t not in ident]
    if not ident or not rest:
        return False
    if _scale_varies_on_mixed(sp.Add(*[split_deltas(t)[1] for t in ident]), rows, cols, mixed):
        return False
    # a gate written as a sum, (1 - g) (I - beta k k^T), expands into several rank-1 terms sharing their factors
    low = sp.factor_terms(sp.Add(*rest))
    if isinstance(low, sp.Add):
        return False
    row_part = [f for f in factors(low) if not (f.free_symbols & {cols[k] for k in mixed})]
    col_part = [f for f in factors(low) if f.free_symbols & {cols[k] for k in mixed}]
    return bool(col_part) and all(not (f.free_symbols & {rows[k] for k in mixed}) for f in col_part) and bool(row_part)


def _free_dims(sym: SymSpec):
    """Rewrites an extent over the free dims (derived dims substituted by their definitions)."""
    return sym.in_free_dims


def compute_bu(sym: SymSpec, rows) -> sp.Expr:
    m = sym.matrices["B"]
    entry = m.entry.subs(dict(zip(m.rows, rows)), simultaneous=True)
    return contract_product(entry, m.cols, m.col_extents, sym.driven.base[m.cols] if m.cols else sym.driven.base,
                            dict(zip(rows, m.row_extents)), _free_dims(sym))


def compute_readout(sym: SymSpec) -> Readout:
    c = sym.matrices["C"]
    out_syms = c.rows
    ch = contract_product(c.entry, c.cols, c.col_extents, sym.state.base[c.cols], dict(zip(out_syms, c.row_extents)),
                          _free_dims(sym))
    d = sym.matrices.get("D")
    if d is None:
        du = sp.Integer(0)
    else:
        entry = d.entry.subs(dict(zip(d.rows, out_syms)), simultaneous=True)
        du = contract_product(entry, d.cols, d.col_extents, sym.driven.base[d.cols],
                              dict(zip(out_syms, d.row_extents)), _free_dims(sym))
    return Readout(out_syms, ch, du)


def _outer_axes(deps: list[set[int]], n_axes: int) -> bool:
    """Is a product of factors with these row dependences an outer product: group axes G and two non-empty sets X, Y
    of other axes with every factor over G + X or over G + Y? Two factors whose dependences are merely not nested
    are not enough: S6 with a bilinear discretisation, dt[c] u[c] b[j] / (1 - dt[c] a[c, j] / 2), has a factor over
    (c, j) that ties them, and its B u has full rank over (c, j). For each candidate G, the factors' other axes are
    joined into connected components; two or more components split into X and Y."""
    for size in range(n_axes - 1):
        for group in itertools.combinations(range(n_axes), size):
            comps: list[set[int]] = []
            for d in deps:
                rest = d - set(group)
                if not rest:
                    continue
                touching = [c for c in comps if c & rest]
                merged = rest.union(*touching)
                comps = [c for c in comps if not c & rest] + [merged]
            if len(comps) >= 2:
                return True
    return False


def classify_b(bu: sp.Expr, rows) -> BForm:
    if len(terms(bu)) != 1:
        bu = sp.factor_terms(bu)  # (1 - f) v expanded into two terms is still one product (see split_outer)
    fs = factors(bu) if not isinstance(bu, sp.Add) else []
    deps = [set(_depends(f, rows)) for f in fs]
    if _outer_axes(deps, len(rows)):
        return BForm.OUTER
    if bu.has(sp.Sum):
        return BForm.GENERAL
    return BForm.ELEMENTWISE


def split_outer(sym: SymSpec, a: AStructure, bu: sp.Expr, readout: Readout) -> OuterSplit | None:
    """Try to write the system in linear-attention form (see OuterSplit); None when it does not fit."""
    if len(terms(bu)) != 1:
        # a key or value written as a sum, (1 - f) v (HGRN2), reaches here expanded into terms that share the other
        # factor: regroup them (a factor that mixes key and value axes is rejected below)
        # a sum that stays a sum may still be a sum of outer products (_term_rank below)
        bu = sp.factor_terms(bu)
    ch = _one_contraction(_lift_fixed_reads(readout.ch, sym.state.base, sym.state.shape(), set(sym.dims.values())),
                          sym.state.base)
    if a.mixed_axes or len(sp.Add.make_args(ch)) != 1:  # not terms(): it would expand the merged sum again
        return None
    rows = a.rows
    summed: list[sp.Symbol] = []
    outside = []  # factors outside the contraction (scales such as 1/sqrt(K))
    while True:
        if isinstance(ch, sp.Mul):
            # peel only the contraction over the state: a query written inline, sum(k, W_Q[a, k] * u[k]), is a
            # factor of the query, not a contraction of C
            sums = [f for f in factors(ch) if isinstance(f, sp.Sum) and f.has(sym.state.base)]
            if len(sums) != 1:
                break
            outside += [f for f in factors(ch) if f is not sums[0]]
            ch = sums[0]
        if not isinstance(ch, sp.Sum):
            break
        summed.extend(lim[0] for lim in ch.limits)
        ch = ch.function
    ch = sp.Mul(*outside, ch)
    hs = [f for f in factors(ch) if isinstance(f, sp.Indexed) and f.base == sym.state.base]
    if len(hs) != 1:
        return None
    h = hs[0]
    query = sp.Mul(*[f for f in factors(ch) if f is not h])
    out_map: dict[int, int | None] = {}
    key_axes = []
    for k, s in enumerate(h.indices):
        if s in readout.out_syms:
            out_map[readout.out_syms.index(s)] = k
        elif s in summed:
            key_axes.append(k)
        else:
            return None
    if not key_axes or len(out_map) != len(set(out_map.values())):
        return None
    kept = sorted(out_map.values())
    # output axes the state lacks: C's factors along them (delta(z, 0), a weight w[h, z]) must be free of the
    # contracted axes, so they join the gate (over the outputs) and y is the readout broadcast along them
    bcast = {s for s in readout.out_syms if s not in h.indices}
    for j, s in enumerate(readout.out_syms):
        if s in bcast:
            out_map[j] = None
    # the extra output axes that a factor shares with the contracted axes (q[h, r, a]: R queries per step) are query
    # rank axes, and so is every extra axis that shares a factor with one of those; the rest are broadcast
    q_rank: set[sp.Symbol] = set()
    grown = True
    while grown:
        grown = False
        for f in factors(query):
            fb = f.free_symbols & bcast
            if fb - q_rank and (f.free_symbols & set(summed) or fb & q_rank):
                q_rank |= fb
                grown = True
    bcast_fs = [f for f in factors(query) if f.free_symbols & bcast and not f.free_symbols & q_rank]
    # (an extra axis named like a state axis would be renamed with the state's symbols below: not split)
    if any(f.free_symbols & set(summed) for f in bcast_fs) or bcast & set(rows):
        return None
    query = sp.Mul(*[f for f in factors(query) if not any(f is g for g in bcast_fs)])
    # rename the readout's symbols to the state row symbols
    ren = {h.indices[k]: rows[k] for k in range(len(rows))}
    query = query.subs(ren, simultaneous=True)
    bcast_gate = sp.Mul(*bcast_fs).subs(ren, simultaneous=True)
    bu_f = factors(bu)
    key_syms = {rows[k] for k in key_axes}
    key = sp.Mul(*[f for f in bu_f if f.free_symbols & key_syms])
    value = sp.Mul(*[f for f in bu_f if not (f.free_symbols & key_syms)])
    q_rank_axes = tuple(j for j, s in enumerate(readout.out_syms) if s in q_rank)
    found = _finish_outer(a, rows, key_axes, kept, key_syms, summed, key, value, query, out_map, bcast_gate=bcast_gate)
    if found is None:
        # not one outer product: a sum over a rank axis of outer products, sum_r key[r] (x) value[r]?
        ranked = _rank_sum(bu, key_syms, set(rows)) or _term_rank(bu, key_syms, set(rows))
        if ranked is not None:
            found = _finish_outer(a, rows, key_axes, kept, key_syms, summed, ranked[1], ranked[2], query, out_map,
                                  bcast_gate=bcast_gate, key_rank=ranked[0])
    return None if found is None else replace(found, query_rank=q_rank_axes)


def _finish_outer(a: AStructure, rows, key_axes, kept, key_syms, summed, key, value, query, out_map, bcast_gate,
                  key_rank=()) -> OuterSplit | None:
    """The group, value axes and gate of a split into key, value and query; None when they do not separate."""
    # group axes: those the decay, the key or the query vary along; the other output axes are value axes
    base = {k for k in kept if k in a.decay_axes or rows[k] in key.free_symbols}
    gate = sp.Integer(1)
    group = sorted(base | {k for k in kept if rows[k] in query.free_symbols})
    if len(group) == len(kept):
        # every output axis is a group axis because the query varies along it: factors of C free of the key axes
        # (a gate on the outputs, z[h, p] in Mamba-2's C) come out as the gate, applied after the scan, so that
        # the axes they alone vary along can be value axes
        others = {rows[k] for k in kept if k not in base}
        keyish = key_syms | set(summed)
        gate_fs = [f for f in factors(query) if f.free_symbols & others and not f.free_symbols & keyish]
        gate = sp.Mul(*gate_fs)
        query = sp.Mul(*[f for f in factors(query) if not any(f is g for g in gate_fs)])
        group = sorted(base | {k for k in kept if rows[k] in query.free_symbols})
    value_axes = [k for k in kept if k not in group]
    if not value_axes:
        return None
    vsyms = {rows[k] for k in value_axes}
    if key.free_symbols & vsyms or query.free_symbols & vsyms:
        return None
    if (query.free_symbols | key.free_symbols) & set(summed) - key_syms:
        return None
    if value.free_symbols & key_syms:
        return None
    return OuterSplit(tuple(group), tuple(key_axes), tuple(value_axes), key, value, query,
                      tuple(out_map[k] for k in range(len(out_map))), gate * bcast_gate, tuple(key_rank))


def _rank_sum(bu: sp.Expr, key_syms: set, taken: set
              ) -> tuple[tuple[tuple[sp.Symbol, sp.Expr], ...], sp.Expr, sp.Expr] | None:
    """B u = sum_r key[r] * value[r] (a rank-R input per step): ``(((r, extent), ...), key, value)``, else None.

    The contraction puts the user's sum over r inside B's sum over the input, dt sum(m, u[m] sum(r, k[r, a]
    W_V[r, b, m])): the sums whose summand mixes the key rows with other factors are opened (finite sums with
    constant limits commute) into one product over all their indices. Each factor goes to the key when it varies
    along a key row, else to the value; an index summed in factors of both is a rank axis, one of either alone stays
    a sum inside it. A factor over both a key row and a value row (sum_r k[r, a] v[r, b] w[r, a, b]) lands in the
    key, and the caller's separation check then rejects the split, as it must: that B u has no rank-R form."""
    limits: list[tuple] = []
    fs: list[sp.Expr] = []

    def open_sums(e) -> bool:
        for f in factors(e):
            if isinstance(f, sp.Sum) and f.free_symbols & key_syms and len(terms(f.function)) == 1:
                body = f.function
                for var, lo, hi in f.limits:
                    # an extent over the rows or another index (a triangular sum) is no fixed number of sub-steps
                    if lo != 0 or sp.S(hi).free_symbols & ({v for v, _ in limits} | taken | key_syms):
                        return False
                    # an opened index becomes free: renamed apart from the state rows and the indices already
                    # opened (a name shared with an output axis, C's r in y[h, r, b], is harmless: the query is
                    # printed on its own)
                    used = taken | {v for v, _ in limits} | bu.free_symbols
                    fresh = next(sp.Symbol(f"{var.name}{i or ''}", **var.assumptions0) for i in itertools.count()
                                 if sp.Symbol(f"{var.name}{i or ''}", **var.assumptions0) not in used)
                    body = body.subs(var, fresh)
                    limits.append((fresh, hi + 1))
                if not open_sums(body):
                    return False
            else:
                fs.append(f)
        return True

    if not open_sums(bu) or not limits:
        return None
    key_fs = [f for f in fs if f.free_symbols & key_syms]
    value_fs = [f for f in fs if not f.free_symbols & key_syms]
    in_key = set().union(*[f.free_symbols for f in key_fs])
    in_value = set().union(*[f.free_symbols for f in value_fs])
    rank = tuple((v, n) for v, n in limits if v in in_key and v in in_value)
    if not rank or any(sp.S(n).free_symbols & {v for v, _ in limits} for _, n in rank):
        return None

    def summed(fs_side, inside):
        own = [(v, n) for v, n in limits if v in inside and (v, n) not in rank]
        body = sp.Mul(*[f for f in fs_side if f.free_symbols & {v for v, _ in own}])
        rest = sp.Mul(*[f for f in fs_side if not f.free_symbols & {v for v, _ in own}])
        return rest * (sp.Sum(body, *[(v, 0, n - 1) for v, n in own]) if own else body)

    return rank, summed(key_fs, in_key - in_value), summed(value_fs, in_value - in_key)


def _term_rank(bu: sp.Expr, key_syms: set, taken: set
               ) -> tuple[tuple[tuple[sp.Symbol, sp.Expr], ...], sp.Expr, sp.Expr] | None:
    """B u = key_1 (x) value_1 + ... + key_R (x) value_R written out term by term: a rank-R input over a new axis r,
    key[r] = sum_i delta(r, i) key_i and value[r] likewise (the cross terms vanish: delta(r, i) delta(r, j) = 0).

    Mamba-3's trapezoidal rule, lam B_t x_t + (1 - lam) a B_(t-1) x_(t-1), reaches here as two terms even when the
    spec stacks x_t and x_(t-1) on a drive axis r: the deltas over r contract that sum away. Without this the layer
    ran the elementwise diagonal scan over all N state entries. The sum is one factor of B u (factor_terms pulled the
    common factors, dt, out of it) that varies along the key rows; the caller's separation check rejects a split in
    which some term mixes key and value rows."""
    fs = factors(bu)
    sums = [f for f in fs if isinstance(f, sp.Add) and f.free_symbols & key_syms]
    if len(sums) != 1:
        return None
    common = [f for f in fs if f is not sums[0]]
    used = taken | bu.free_symbols
    r = next(sp.Symbol(f"r{i or ''}", integer=True, nonnegative=True) for i in itertools.count()
             if sp.Symbol(f"r{i or ''}", integer=True, nonnegative=True) not in used)
    # terms that share their value part are one outer product (their key parts summed): (1 - f) v arrives expanded
    # as v - f v, which would otherwise cost a sub-step per term
    by_value: dict[sp.Expr, sp.Expr] = {}
    for t in sp.Add.make_args(sums[0]):
        on_value = [f for f in factors(t) if f.free_symbols and not f.free_symbols & key_syms]  # numbers: the key's
        value_part = sp.Mul(*on_value)
        key_part = sp.Mul(*[f for f in factors(t) if not any(f is g for g in on_value)])
        by_value[value_part] = by_value.get(value_part, sp.Integer(0)) + key_part
    parts = list(by_value.items())
    keys = [sp.KroneckerDelta(r, i) * key_part for i, (_, key_part) in enumerate(parts)]
    values = [sp.KroneckerDelta(r, i) * value_part for i, (value_part, _) in enumerate(parts)]
    key = sp.Mul(*[f for f in common if f.free_symbols & key_syms]) * sp.Add(*keys)
    value = sp.Mul(*[f for f in common if not f.free_symbols & key_syms]) * sp.Add(*values)
    return ((r, sp.Integer(len(parts))),), key, value


def _lift_fixed_reads(ch: sp.Expr, base, extents, dims: set) -> sp.Expr:
    """A readout that reads the state at fixed entries of an axis, C = delta(o, h) (delta(s, 0) - lam delta(s, 1))
    q[s, h, a] (differential attention's two maps stacked on an axis s, their difference read), reaches here as one
    contraction per fixed entry, sum_a q0 S[0, h, a, b] - lam sum_a q1 S[1, h, a, b]: no one contraction, so the
    layer ran the elementwise diagonal scan. Each read at a fixed index c of axis k becomes a sum over that axis
    with delta(s_k, c), the same s_k in every term; _one_contraction then merges the terms, and the axis is a key
    axis of a query with deltas in it. ch is returned as it is unless every term is one contraction of one read."""
    lifted, fixed_syms = [], {}
    for t in terms(ch):
        sums = [f for f in factors(t) if isinstance(f, sp.Sum) and f.has(base)]
        if len(sums) != 1:
            return ch
        reads = [x for x in sp.preorder_traversal(sums[0].function) if isinstance(x, sp.Indexed) and x.base == base]
        if len(reads) != 1:
            return ch
        h = reads[0]
        fixed = [k for k, i in enumerate(h.indices) if sp.S(i).free_symbols <= dims]
        if not fixed:
            lifted.append(t)
            continue
        for k in fixed:
            fixed_syms.setdefault(k, sp.Dummy(f"fixed{k}", integer=True, nonnegative=True))
        idx = [fixed_syms[k] if k in fixed else i for k, i in enumerate(h.indices)]
        gate = sp.Mul(*[sp.KroneckerDelta(fixed_syms[k], h.indices[k]) for k in fixed])
        body = sums[0].function.xreplace({h: base[tuple(idx)]}) * gate
        limits = [*sums[0].limits, *((fixed_syms[k], 0, extents[k] - 1) for k in sorted(fixed))]
        lifted.append(sp.Mul(*[f for f in factors(t) if f is not sums[0]]) * sp.Sum(body, *limits))
    if not fixed_syms:
        return ch
    return sp.Add(*lifted)


def _one_contraction(ch: sp.Expr, base) -> sp.Expr:
    """A query written as a sum, C = delta(o, h) (q[h, a] + p[h, a]) or (elu(q) + 1), reaches the readout as one
    contraction of the state per term, sum_a q h + sum_a p h: merge them into sum_a (q + p) h when every term is
    one contraction over the same indices (nested sums likewise), so that the query is one factor again. Else ch."""
    parts = []
    for t in terms(ch):
        sums = [f for f in factors(t) if isinstance(f, sp.Sum) and f.has(base)]
        if len(sums) != 1:
            return ch
        parts.append((sp.Mul(*[f for f in factors(t) if f is not sums[0]]), sums[0]))
    limits = parts[0][1].limits
    if len(parts) > 1 and any(s.limits != limits for _, s in parts):
        # a sign or weight along a contracted axis, q[a, r] (1 - 2 r) (GateLoop's Re(q^T S) on (re, im) pairs),
        # reaches here as sum_(a, r) q S - 2 sum_r r sum_a q S: nested sums flattened, the limits may agree
        parts = [(r, _flat_sum(s)) for r, s in parts]
        limits = parts[0][1].limits
    if len(parts) == 1 or any(s.limits != limits or r.free_symbols & {lim[0] for lim in limits} for r, s in parts):
        return ch
    inner = sp.Add(*[r * s.function for r, s in parts])
    merged = _one_contraction(inner, base)
    return sp.Sum(merged if merged is not inner else sp.factor_terms(inner), *limits)


def _flat_sum(s: sp.Sum) -> sp.Sum:
    """sum_r f(r) sum_a g(a, r) as sum_(a, r) f(r) g(a, r): a summand that is a product with one sum whose limits
    and variables the other factors do not involve is merged into the outer sum, inner limits first (as SymPy orders
    the limits of one sum written over both). Anything else is returned as it is."""
    inner = [f for f in factors(s.function) if isinstance(f, sp.Sum)]
    if len(inner) != 1:
        return s
    rest = [f for f in factors(s.function) if f is not inner[0]]
    bound = {lim[0] for lim in inner[0].limits}
    outer_vars = {lim[0] for lim in s.limits}
    if any(f.free_symbols & bound for f in rest) or any(sp.S(b).free_symbols & outer_vars
                                                          for lim in inner[0].limits for b in lim[1:]):
        return s
    return _flat_sum(sp.Sum(sp.Mul(*rest, inner[0].function), *inner[0].limits, *s.limits))


def contracted_axes(sym: SymSpec, readout: Readout) -> set[int]:
    """State axes that C sums over (not mapped to an output index): the 'key' axes of a readout."""
    out = set()
    for node in sp.preorder_traversal(readout.ch):
        if isinstance(node, sp.Indexed) and node.base == sym.state.base:
            out |= {k for k, s in enumerate(node.indices) if s not in readout.out_syms}
    return out


def _scale_varies_on_mixed(scale: sp.Expr, rows, cols, mixed) -> bool:
    """A diagonal diag(s) with s varying along a mixed axis (a per-key gate: Kimi delta attention, RWKV-7's
    diag(w) - a b^T) is not s I: its eigenvalues are not s and s - g^T f."""
    return bool(scale.free_symbols & ({rows[k] for k in mixed} | {cols[k] for k in mixed}))


def split_rank_one(a: AStructure) -> RankOneBlock | None:
    """Write A's block as scale * I + (rank 1) on the mixed axes, or None when it does not have that form."""
    parts = _diagonal_plus_rank_one(a)
    if parts is None or _scale_varies_on_mixed(parts.scale, a.rows, a.cols, a.mixed_axes):
        return None
    return parts


def _diagonal_plus_rank_one(a: AStructure) -> RankOneBlock | None:
    """A's block as diag(scale) + (rank 1) on the mixed axes, the scale free to vary along them (a per-key decay),
    or None when it does not have that form."""
    if a.block is None or not a.mixed_axes:
        return None
    rows, cols, mixed = a.rows, a.cols, a.mixed_axes
    pairs = {frozenset((rows[k], cols[k])) for k in mixed}
    ident, rest = [], []
    for t in terms(a.block):
        deltas, _ = split_deltas(t)
        (ident if pairs <= {frozenset(d.args) for d in deltas} else rest).append(t)
    if not rest or not ident:
        return None
    scale = sp.Add(*[split_deltas(t)[1] for t in ident])
    # a gate multiplying the whole block, g (I - b k k^T), expands into several rank-1 terms: factor them together
    rank_one = rest[0] if len(rest) == 1 else sp.factor_terms(sp.Add(*rest))
    if not isinstance(rank_one, sp.Mul) and len(rest) != 1:
        return None
    col_syms = {cols[k] for k in mixed}
    col_vec = sp.Mul(*[f for f in factors(rank_one) if f.free_symbols & col_syms])
    row_vec = sp.Mul(*[f for f in factors(rank_one) if not (f.free_symbols & col_syms)])
    if row_vec.free_symbols & col_syms or sp.Mul(row_vec, col_vec) != rank_one:
        return None
    return RankOneBlock(scale, row_vec, col_vec)


def _outer_on_block_axes(sym: SymSpec, a: AStructure, bu: sp.Expr, readout: Readout) -> OuterSplit | None:
    """The outer-product split of B u and C as if A were diagonal (its block lives on the key axes only), when its
    key axes are exactly A's mixed axes and it has no rank axes: several keys or queries per step run as sub-steps of
    the outer-product scan only; the delta-rule and DPLR scans take one key, value and query per step."""
    outer = split_outer(sym, replace(a, mixed_axes=()), bu, readout)
    if outer is None or set(outer.key_axes) != set(a.mixed_axes) or outer.key_rank or outer.query_rank:
        return None
    return outer


def split_delta(sym: SymSpec, a: AStructure, bu: sp.Expr, readout: Readout) -> tuple[OuterSplit, DeltaSplit] | None:
    """DeltaNet's form: A = s (I - key f^T) (x) I_value per group with the *same* key that B u writes
    (B u = key (x) value), s constant over the key axes, C contracting the key axes. None otherwise."""
    parts = split_rank_one(a)
    if parts is None:
        return None
    outer = _outer_on_block_axes(sym, a, bu, readout)
    if outer is None:
        return None
    rows, cols = a.rows, a.cols
    key_rows = {rows[k] for k in outer.key_axes}
    key_cols = {cols[k] for k in outer.key_axes}
    value_rows = {rows[k] for k in outer.value_axes}
    if a.block.free_symbols & value_rows or parts.scale.free_symbols & (key_rows | key_cols):
        return None
    # row_vec = -scale * rho * key with rho constant over the key axes: then f = rho * col_vec
    rho = simplify(-parts.row_vec / (parts.scale * outer.key))
    if sp.fraction(sp.together(rho))[1] != 1:
        # a rank-1 weight written as a let that carries the scale, be = al * bi (Comba's A = al I - be k k^T), left
        # f = be k / al, which is 0 / 0 in fp32 once al underflows (sigmoid(-104)): NaN outputs and gradients where
        # float64's are finite. Lets that only name a product are looked through, so that al cancels: f = bi k
        looked = simplify(sym.inline_product_lets(rho))
        if sp.fraction(sp.together(looked))[1] == 1:
            rho = looked
    scaled = False
    if sp.fraction(sp.together(rho))[1] != 1:
        # a weight independent of the scale (Comba's be = 0.5 bi): be / al is inf in fp32 once al underflows. The
        # scan takes A = s I - key f^T as it is, f = be k carrying the scale (chunked_delta_scan's scaled_read)
        weight = simplify(-parts.row_vec / outer.key)
        if sp.fraction(sp.together(weight))[1] != 1:
            weight = simplify(sym.inline_product_lets(weight))
        if sp.fraction(sp.together(weight))[1] == 1:
            rho, scaled = weight, True
    if rho.free_symbols & (key_rows | key_cols | value_rows) or rho.has(sp.zoo, sp.nan):
        return None
    read = (rho * parts.col_vec).subs({cols[k]: rows[k] for k in outer.key_axes}, simultaneous=True)
    return outer, DeltaSplit(parts.scale, read, scaled)


def split_delta_product(sym: SymSpec, a: AStructure, bu: sp.Expr, readout: Readout
                        ) -> tuple[OuterSplit, DeltaSplit] | None:
    """The gated delta product: A = s (I - k_(n-1) f_(n-1)^T) ... (I - k_0 f_0^T) on one key axis per group
    (identity on the value axes, s constant over the keys), B u = sum_j (I - k_(n-1) f_(n-1)^T) ... (I - k_(j+1)
    f_(j+1)^T) k_j (x) v_j, a sum over a rank axis of n terms, C contracting the key axis: n delta-rule steps per
    token, the gate s on the first. None otherwise.

    The spec writes the product expanded. The product telescopes, P = I - sum_j w_j f_j^T with w_j = (the later
    factors) k_j, and w_j is B's key at rank j: so A = s (I - sum_j w_j f_j^T) with B's own keys, and each f_j is
    read off the terms of A whose row part is a multiple of w_j (lets that only name a product looked through).
    The sub-step keys k_j follow from w_j = k_j - sum_(l > j) (f_l . k_j) w_l: k_(n-1) = w_(n-1), k_j the terms of
    w_j along no later w_l's row factors, and the rest is checked to be sum_(l > j) c_l w_l with each c_l the
    contraction f_l . k_j (a sum over the key axis, possibly a let that names it). Every step is an identity, so
    the split is exact; anything not matched leaves the dense scan."""
    if a.block is None or len(a.mixed_axes) != 1:
        return None
    outer = split_outer(sym, replace(a, mixed_axes=()), bu, readout)
    if outer is None or set(outer.key_axes) != set(a.mixed_axes):
        return None
    if len(outer.key_rank) != 1 or outer.query_rank or not sp.S(outer.key_rank[0][1]).is_Integer:
        return None
    (rvar, n), = outer.key_rank
    n = int(n)
    rows, cols = a.rows, a.cols
    key_row, key_col = rows[outer.key_axes[0]], cols[outer.key_axes[0]]
    value_rows = {rows[k] for k in outer.value_axes}
    # the scale s of the identity: the terms of A's block with delta(key row, key column), their other factors (a
    # further delta, on the key row, is then in s and refused below)
    eye = sp.KroneckerDelta(key_row, key_col)
    s = sp.Add(*[t / eye for t in terms(a.block)
                 if frozenset((key_row, key_col)) in {frozenset(d.args) for d in split_deltas(t)[0]}])
    if n < 2 or a.block.free_symbols & value_rows or s.free_symbols & {key_row, key_col} or s == 0:
        return None
    # A's rank-1 terms grouped by their column factor: each group's row part is -s c w_j, f_j collects c col
    rest = sp.expand(sym.inline_product_lets(simplify(a.block - s * eye)))
    groups: dict[sp.Expr, sp.Expr] = {}
    for t in sp.Add.make_args(rest):
        col = sp.Mul(*[f for f in factors(t) if f.free_symbols & {key_col}])
        if col == 1:
            return None
        groups[col] = groups.get(col, sp.Integer(0)) + sp.Mul(*[f for f in factors(t) if key_col not in f.free_symbols])
    written = [sp.expand(sym.inline_product_lets(simplify(outer.key.subs(rvar, j)))) for j in range(n)]
    # the rank axis is B's terms in SymPy's order, not the steps': w_j spans the directions of k_j, ..., k_(n-1),
    # so the first step's key has the most (a tie is checked like any other order, and fails)
    order = sorted(range(n), key=lambda i: -len(_directions(written[i], key_row)))
    written = [written[i] for i in order]
    # the gate on the first factor, B u = sum_j w_j v_j^T; or on the last, B u = s sum_j w_j v_j^T (B's keys carry
    # it): the form whose keys and reads need no division
    for last in (False, True) if s != 1 else (False,):
        w = [sp.expand(simplify(x / s)) for x in written] if last else written
        if any(x == 0 or key_row not in x.free_symbols or sp.fraction(sp.together(x))[1] != 1 for x in w):
            continue
        reads = _substep_reads(groups, w, s, key_row, key_col)
        keys = None if reads is None else _substep_keys(sym, w, reads, key_row)
        if keys is None:
            continue
        if last:  # the last sub-step, S = s S - (s k) f^T S + (s k) v^T: the scan's scaled read, its key B's own
            keys[-1] = written[-1]
        step_key = sp.Add(*[sp.KroneckerDelta(rvar, j) * k for j, k in enumerate(keys)])
        step_read = sp.Add(*[sp.KroneckerDelta(rvar, j) * f for j, f in enumerate(reads)])
        step_value = sp.Add(*[sp.KroneckerDelta(rvar, j) * outer.value.subs(rvar, i) for j, i in enumerate(order)])
        return replace(outer, key=step_key, value=step_value), DeltaSplit(s, step_read, last, n)
    return None


def _substep_reads(groups: dict, w: list, s: sp.Expr, key_row: sp.Symbol, key_col: sp.Symbol) -> list | None:
    """f_j from A's rank-1 terms grouped by column factor ({col: row}): each row part is -s c w_j for one j (c free
    of the key), and f_j sums c col over its groups; None when a group matches no w_j or a read would divide."""
    reads = [sp.Integer(0)] * len(w)
    for col, row in groups.items():
        for j in range(len(w)):
            ratio = simplify(-row / (s * w[j]))
            if key_row not in ratio.free_symbols and not ratio.has(sp.zoo, sp.nan) and ratio != 0:
                if sp.fraction(sp.together(ratio))[1] != 1:
                    return None
                reads[j] += ratio * col.subs(key_col, key_row)
                break
        else:
            return None
    return None if any(f == 0 for f in reads) else reads


def _directions(e: sp.Expr, key_row: sp.Symbol) -> dict[sp.Expr, sp.Expr]:
    """An expanded vector over the key row as {row factor: coefficient}: its terms grouped by their factors that
    vary along the key."""
    out: dict[sp.Expr, sp.Expr] = {}
    for t in sp.Add.make_args(sp.expand(e)):
        d = sp.Mul(*[f for f in factors(t) if key_row in f.free_symbols])
        out[d] = out.get(d, sp.Integer(0)) + sp.Mul(*[f for f in factors(t) if key_row not in f.free_symbols])
    return out


def _substep_keys(sym: SymSpec, w: list, reads: list, key_row: sp.Symbol) -> list | None:
    """k_j from B's keys w_j = k_j - sum_(l > j) (f_l . k_j) w_l (see split_delta_product), or None."""
    n = len(w)
    keys: list = [None] * n
    keys[n - 1] = w[n - 1]
    for j in range(n - 2, -1, -1):
        later = set().union(*[_directions(w[l], key_row) for l in range(j + 1, n)])
        own = _directions(w[j], key_row)
        keys[j] = sp.Add(*[d * c for d, c in own.items() if d not in later])
        if keys[j] == 0:
            return None
        residual = sp.expand(keys[j] - w[j])  # = sum_(l > j) c_l w_l
        for l in range(j + 1, n):
            lead = next(iter(_directions(keys[l], key_row)))
            own_coef = _directions(w[l], key_row).get(lead, sp.Integer(0))
            if own_coef == 0:  # k_l's direction cancelled in w_l: not the telescoped form
                return None
            coef = simplify(_directions(residual, key_row).get(lead, sp.Integer(0)) / own_coef)
            if not _is_contraction(sym, coef, reads[l], keys[j], key_row):
                return None
            residual = sp.expand(residual - coef * w[l])
        if simplify(residual) != 0:
            return None
    return keys


def _is_contraction(sym: SymSpec, c: sp.Expr, f: sp.Expr, k: sp.Expr, key_row: sp.Symbol) -> bool:
    """Whether the scalar ``c`` is sum over the key axis of f k (f and k over ``key_row``), with the sums that lets
    name read through: both sides as one sum over a common dummy whose bodies agree."""
    extent = next(ax.extent for ax, s in zip(sym.state.axes, sym.matrices["A"].rows) if s == key_row)
    x = sp.Dummy("x", integer=True, nonnegative=True)
    want = (sp.expand(f * k).subs(key_row, x), sp.S(extent) - 1)

    def let_sum(e):
        read = sym.let_read(e)
        if read is None or read[0].running or read[0].feature is not None:
            return None
        value = read[0].value_at(read[1])
        return value if value.has(sp.Sum) else None

    c = sp.S(c).replace(lambda e: let_sum(e) is not None, let_sum)
    sums = [g for g in factors(c) if isinstance(g, sp.Sum)]
    if len(sums) != 1 or len(sums[0].limits) != 1:
        return False
    (var, lo, hi), = sums[0].limits
    rest = sp.Mul(*[g for g in factors(c) if g is not sums[0]])
    if lo != 0 or rest.has(var) or sym.in_free_dims(sp.S(hi) - want[1]) != 0:
        return False
    body = sp.expand(sym.inline_product_lets(rest * sums[0].function.subs(var, x)))
    return simplify(body - sp.expand(sym.inline_product_lets(want[0]))) == 0


def split_dplr(sym: SymSpec, a: AStructure, bu: sp.Expr, readout: Readout) -> tuple[OuterSplit, DplrSplit] | None:
    """The diagonal-plus-rank-1 form: A = diag(d) + x y^T on the key axes per group (d may vary along the keys:
    Kimi Delta Attention, RWKV-7), identity on the value axes, B u = key (x) value with any key, C contracting the
    key axes, and d with a log form (exp(...), sigmoid(...)) or proven >= 0. None otherwise."""
    parts = _diagonal_plus_rank_one(a)
    if parts is None:
        return None
    outer = _outer_on_block_axes(sym, a, bu, readout)
    if outer is None:
        return None
    rows, cols = a.rows, a.cols
    key_rows = {rows[k] for k in outer.key_axes}
    value_rows = {rows[k] for k in outer.value_axes}
    if a.block.free_symbols & value_rows or parts.col_vec.free_symbols & key_rows:
        return None
    to_rows = {cols[k]: rows[k] for k in outer.key_axes}
    decay = simplify(sp.S(parts.scale).subs(to_rows, simultaneous=True))  # diag(d): its column index is its row's
    read = sp.S(parts.col_vec).subs(to_rows, simultaneous=True)
    if any(e.has(sp.zoo, sp.nan) for e in (decay, parts.row_vec, read)) or decay == 0:
        return None
    if decay != 1 and not _has_log_form(sym, decay):
        return None  # a decay that may be negative: the dense scan (the log-space scan would need its signs folded)
    return outer, DplrSplit(decay, parts.row_vec, read)


def _polar(x: sp.Expr, y: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
    """(rho, theta) when x = rho cos(theta) and y = rho sin(theta) as the spec writes them (retention's
    gam cos(th), gam sin(th)): the scan then takes log(rho) in its exact form (a sigmoid's log-sigmoid) and the
    angle as written, no sqrt(x^2 + y^2) or atan2(y, x). None otherwise."""
    x, y = sp.factor_terms(x), sp.factor_terms(y)
    for f in factors(x):
        if isinstance(f, sp.cos):
            theta = f.args[0]
            rho = simplify(x / f)
            if not rho.has(theta) and simplify(y - rho * sp.sin(theta)) == 0:
                return rho, theta
    return None


def split_rotation(sym: SymSpec, a: AStructure, bu: sp.Expr, readout: Readout
                   ) -> tuple[OuterSplit, RotationSplit] | None:
    """A rotating decay per key pair (GateLoop, retention with a complex decay, xPos-like rotations): A's one mixed
    axis has extent 2, its blocks are rotation-scalings [[x, -y], [y, x]] with x, y over the other axes' rows, and
    B u and C split into key x value and a query read as if A were diagonal, the pair axis among the key axes. Then
    S~_t = P_t^T S_t (P_t the rotation by the cumulative angle) is an outer-product scan with the decay rho and
    the keys and queries rotated by -Phi_t (see RotationSplit). None otherwise: the dense (complex diagonal) scan."""
    if len(a.mixed_axes) != 1 or sp.S(sym.state.axes[a.mixed_axes[0]].extent) != 2:
        return None
    m = pair_blocks(a)
    parts = rotation_parts(m) if m is not None else None
    if parts is None:
        return None
    x, y = parts
    pair = a.mixed_axes[0]
    if any(e.has(sp.zoo, sp.nan) for e in (x, y)) or (x == 0 and y == 0):
        return None
    block_axes = tuple(sorted(set(_depends(x, a.rows)) | set(_depends(y, a.rows))))
    # the split sees A as diagonal with a decay over the block's axes: those become group (or key) axes, never
    # value axes (a block varying along the values has no per-key form)
    outer = split_outer(sym, replace(a, mixed_axes=(), decay_axes=block_axes), bu, readout)
    # rank axes (R outer products and R queries per step) compose: the rotation acts on the key axes, a step's
    # sub-steps share its cumulative angle
    if outer is None or pair not in outer.key_axes:
        return None
    if set(block_axes) & set(outer.value_axes):
        return None
    polar = _polar(x, y)
    rho, theta = polar if polar is not None else (sp.sqrt(x ** 2 + y ** 2), None)
    if rho.has(sp.zoo, sp.nan) or rho == 0:
        return None
    return outer, RotationSplit(pair, x, y, rho, theta, _depends(rho, a.rows))


def _has_log_form(sym: SymSpec, decay: sp.Expr) -> bool:
    """Can the log-space scan take this decay: a closed-form log (exp, sigmoid, products) or proven >= 0 (then the
    generated code takes log|d| through ``log_abs_decay``, which keeps an exact 0 finite)."""
    from .log_space import exact_log
    from .stability import IntervalProver  # stability imports this module

    return exact_log(decay, sym) is not None or IntervalProver(sym).range(decay).lo >= 0


def analyse_structure_of(sym: SymSpec) -> Structure:
    a = classify_a(sym)
    bu = compute_bu(sym, a.rows)
    readout = compute_readout(sym)
    if readout.ch == 0:
        c = sym.matrices["C"]
        raise SpecErrors([SpecError(
            "matrix C is zero: the output never reads the state, so the layer has no recurrence to compile",
            c.span, hint="C reads the state into the output, e.g. C[o, (c, j)] = delta(o, c) * q[j]; a layer "
            "without a state is not a DSF")], sym.checked.spec.path, sym.checked.spec.source)
    if a.kind == AKind.SCALAR_PER_GROUP and set(a.decay_axes) & contracted_axes(sym, readout):
        # the decay varies along an axis that C contracts (GLA's key index): diagonal, shared over the rest
        a = replace(a, kind=AKind.DIAGONAL)
    b_form = classify_b(bu, a.rows)
    outer = split_outer(sym, a, bu, readout)  # a pre-update readout runs the same algorithm, shifted a step
    if not has_infinite_state(sym):
        reject_infinite_lets(sym)
    if has_infinite_state(sym):
        # the kernelised form takes one key and one query per step: a rank-R input is not that form
        kern = kernelise(sym, a, None if outer is not None and (outer.key_rank or outer.query_rank) else outer,
                         readout)
        names = _axis_names(sym, (kern.feature_axis,))
        why = (f"the state axis {names[0]} is the infinite feature range of exp, so N is infinite: contractions over "
               f"it are exp(q.k / sqrt(K)) (kernelised) and the algorithm is quadratic in T, with a KV cache "
               f"growing by one key and one value per step instead of a fixed-size state")
        return Structure(a, bu, b_form, readout, outer, Family.QUADRATIC, why, kernel=kern)
    delta = split_delta(sym, a, bu, readout) if a.mixed_axes else None
    if delta is not None:
        outer, dsplit = delta
        family = Family.CHUNKED_DELTA
        form = "s I - k f^T (f carries the decay)" if dsplit.scaled else "s (I - k f^T)"
        why = (f"A is {form} on key axes {', '.join(_axis_names(sym, outer.key_axes))} per group with the "
               "key that B u writes (B u = key x value) and C contracts the key axes: the delta rule, run "
               "chunkwise in its WY (UT-transform) form")
        return Structure(a, bu, b_form, readout, outer, family, why, delta=dsplit)
    product = split_delta_product(sym, a, bu, readout) if a.mixed_axes else None
    if product is not None:
        outer, dsplit = product
        (r, n), = outer.key_rank
        dots = "" if n == 2 else " ..."
        at = "last, B's keys carrying it" if dsplit.scaled else "first"
        why = (f"A is s (I - k_{n - 1} f_{n - 1}^T){dots} (I - k_0 f_0^T), a product of {n} delta-rule factors on "
               f"key axis {_axis_names(sym, outer.key_axes)[0]} per group (written expanded), and B u is the "
               f"matching sum over the rank axis {r} (each k_j (x) v_j through the later factors), C contracts the "
               f"key axis: the gated delta product, run as {n} sub-steps of the chunked delta rule per step (the "
               f"decay at the {at}; the readout "
               f"{'before the first' if sym.readout == 'pre' else 'at the last'})")
        return Structure(a, bu, b_form, readout, outer, Family.CHUNKED_DELTA, why, delta=dsplit)
    dplr = split_dplr(sym, a, bu, readout) if a.mixed_axes else None
    if dplr is not None:
        outer, psplit = dplr
        keys = ", ".join(_axis_names(sym, outer.key_axes))
        shared = not (psplit.decay.free_symbols & {a.rows[k] for k in outer.key_axes})
        per = "shared over the keys" if shared else "per key"
        why = (f"A is diag(d) + x y^T on key axes {keys} per group (d {per}, a rank-1 correction with its own read "
               "vector), identity on the value axes, B u = key x value and C contracts the key axes: run chunkwise "
               "(pairwise per-key decays from segment sums, one triangular solve per chunk for the rank-1 reads), not "
               "as a dense matrix-vector product per step")
        return Structure(a, bu, b_form, readout, outer, Family.CHUNKED_DPLR, why, dplr=psplit)
    rotation = split_rotation(sym, a, bu, readout) if a.mixed_axes else None
    if rotation is not None:
        outer, rsplit = rotation
        pair = _axis_names(sym, (rsplit.pair_axis,))[0]
        keys = ", ".join(_axis_names(sym, outer.key_axes))
        rho_per = _per_key(rsplit.rho, a.rows, outer.key_axes)
        theta_per = _per_key(rsplit.theta if rsplit.theta is not None else rsplit.x + rsplit.y, a.rows,
                             outer.key_axes)
        form = "rho cos theta, rho sin theta as written" if rsplit.theta is not None else (
            "rho = sqrt(x^2 + y^2), theta = atan2(y, x)")
        ranks = ", ".join(str(r) for r, _ in outer.key_rank)
        sums = f"a sum over the rank axis {ranks} of " if ranks else ""
        why = (f"A is 2x2 rotation-scaling blocks rho R(theta) on the pair axis {pair} ({form}; rho {rho_per}, theta "
               f"{theta_per}), B u = {sums}key x value and C contracts the key axes {keys}: rotation pairs moved into "
               "the keys and queries (rotated by minus the cumulative angle, a data-dependent rotary embedding; the "
               "state rotated back at the end), leaving the real decay rho: the chunkwise-parallel (matmul) form "
               "applies" + _rank_steps(outer, readout, ", each with its step's keys and queries rotated by the step's "
                                                   "cumulative angle"))
        return Structure(a, bu, b_form, readout, outer, Family.CHUNKED_OUTER, why, rotation=rsplit)
    if a.mixed_axes:
        family = Family.DENSE_SCAN
        why = (f"A couples state axes {', '.join(_axis_names(sym, a.mixed_axes))} (no delta there), "
               "so the recurrence needs a matrix-vector product per step")
    elif outer is not None:
        family = Family.CHUNKED_OUTER
        decay = "no decay" if a.kind == AKind.IDENTITY else (
            "a per-key decay" if set(a.decay_axes) & set(outer.key_axes) else "a scalar decay per group")
        ranks = [str(r) for r, _ in outer.key_rank]
        kv_rank = "".join(r + ", " for r in ranks)
        sums = f"a sum over the rank axis {', '.join(ranks)} of " if ranks else ""
        why = (f"A is {a.kind.value} ({decay}), B u is {sums}key[{kv_rank}"
               f"{', '.join(_axis_names(sym, outer.group_axes + outer.key_axes))}] x value[{kv_rank}"
               f"{', '.join(_axis_names(sym, outer.group_axes + outer.value_axes))}] and C contracts the key axes: "
               "the chunkwise-parallel (matmul) form applies") + _rank_steps(outer, readout)
    else:
        family = Family.DIAGONAL_SCAN
        why = f"A is {a.kind.value}: every state entry evolves independently (elementwise linear scan)"
    return Structure(a, bu, b_form, readout, outer, family, why)


def _rank_steps(outer: OuterSplit, readout: Readout, how: str = "") -> str:
    """The family reason's clause on rank axes (R outer products, R queries per step run as sub-steps), "" without;
    ``how`` follows it."""
    ranks = [str(r) for r, _ in outer.key_rank]
    reads = [str(readout.out_syms[j]) for j in outer.query_rank]
    if not (ranks or reads):
        return ""
    per_step = ([f"the outer products along rank axis {', '.join(ranks)}"] if ranks else []) + (
        [f"the queries along output axis {', '.join(reads)}"] if reads else [])
    return f"; {' and '.join(per_step)} run as sub-steps of each step (R_k + R_q - 1 sub-steps){how}"


def _per_key(e: sp.Expr, rows, key_axes) -> str:
    """"per key" when ``e`` varies along a key axis, else "per group" (a family reason's wording)."""
    return "per key" if set(_depends(e, rows)) & set(key_axes) else "per group"


def _axis_names(sym: SymSpec, ks) -> list[str]:
    out = []
    for k in ks:
        ax = sym.state.axes[k]
        out.append(ax.name or f"axis{k}")
    return out
