"""Hoist an output projection written into C out of the core: ``y[o] = sum(W_o[o, h*V + b] q[h, a] S[h, a, b])``.

A researcher writing a whole layer puts its out-projection into C,
``C[o, (h, a, b)] = W_o[o, h*V + b] * q[h, a]``. Every output then reads every value slot, so C maps no output axis
to a state axis and the structure analysis finds no linear-attention readout (``q^T S`` per head and value slot): the
layer ran the elementwise diagonal scan, a state of H K V entries per step in memory. The same layer with the
projection written as a ``post`` runs the chunked algorithms. This pass makes that rewrite itself:

    C[o, s] = P(o, s_Z) Q(s)   (P: the factors that read an output index; Z: the state axes P reads)
      ->  core output z[s_Z] with C'[z, s] = prod_(k in Z) delta(z_k, s_k) Q(s)
          post y[o] = sum_(s_Z) P(o, s_Z) z[s_Z] + (D u)[o]

D u moves into the post with the projection (it is added to y, not to z). The spec's own posts read y as before.
The pipeline keeps the rewrite only where the structure analysis then finds a chunked family for a layer it would
otherwise scan elementwise or densely (``pipeline._analyse_core``); the reference backend evaluates the spec as
written (``CompileResult.sym``), so ``dsfc check`` compares the rewritten layer against the original maths.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import sympy as sp

from ..analysis.index_algebra import contract_product, factors, terms
from .lower import index_symbol
from .symspec import SymAxis, SymLet, SymMatrix, SymSpec, fresh_name


def out_projection_splits(sym: SymSpec) -> Iterator[SymSpec]:
    """Every way to hoist C's output projection (``hoist_out_projection``), fewest kept state axes first: the axes
    the projection reads, then those plus one more, two more, ... (never all of them). A projection shared by every
    head (``W_o[o, b] q[h, a]``) reads b only, and contracting the head axis too makes it a key axis that the values
    vary along; keeping it (z[h, b]) is the per-head readout the chunked families take."""
    c = sym.matrices.get("C")
    if c is None:
        return
    split = _projection(sym)
    if split is None:
        return
    proj, Z = split
    others = [k for k in range(len(c.cols)) if k not in Z]
    for n in range(1 if _reads_per_slot(proj, c) else 0, len(others)):
        for extra in itertools.combinations(others, n):
            hoisted = hoist_out_projection(sym, extra)
            if hoisted is not None:
                yield hoisted


def _reads_per_slot(proj: list, c: SymMatrix) -> bool:
    """C maps every output axis to a state axis by a delta of its own (``delta(o, h) delta(e, b)``): a core reading
    the same slots is the spec as written (an output axis of an independent dim narrower than the value axis stays
    what it is; a softmax layer gets the kernelised form's located error and its hint, ``dim E = V - 1``)."""
    pinned = set()
    for f in proj:
        if not isinstance(f, sp.KroneckerDelta):
            return False
        a, b = f.args
        pinned |= {a, b} & set(c.rows) if {a, b} & set(c.cols) else set()
    return pinned == set(c.rows)


def _projection(sym: SymSpec) -> tuple[list, list[int]] | None:
    """(the factors of C that read an output index, the state axes they read) where C is one such product."""
    c = sym.matrices.get("C")
    if c is None or not c.rows or len(terms(c.entry)) != 1:
        return None
    rows = set(c.rows)
    proj = [f for f in factors(c.entry) if f.free_symbols & rows]
    if not proj:
        return None
    Z = [k for k, s in enumerate(c.cols) if s in sp.Mul(*proj).free_symbols]
    if not Z or len(Z) == len(c.cols):
        return None  # the projection reads no state axis (a plain gate), or every one (nothing left to contract)
    return proj, Z


def hoist_out_projection(sym: SymSpec, extra: tuple[int, ...] = ()) -> SymSpec | None:
    """``sym`` with C's output projection moved into a post (see the module docstring), the core output indexed by
    the state axes the projection reads and by the state axes ``extra`` (positions in C's columns); None where C is
    not one product whose output-reading factors also read some, but not all, state axes."""
    split = _projection(sym)
    if split is None:
        return None
    proj, Z = split
    c = sym.matrices["C"]
    if len(set(Z) | set(extra)) == len(c.cols):
        return None  # the core would read every state entry: nothing left to contract
    Z = sorted(set(Z) | set(extra))
    # a delta on kept axes alone (a read of one head, delta(h, 0)) selects slots of z: it goes with the projection
    kept = {c.cols[k] for k in Z}
    rest = [f for f in factors(c.entry) if not f.free_symbols & set(c.rows)]
    proj += [f for f in rest if isinstance(f, sp.KroneckerDelta) and f.free_symbols <= kept]
    rest = [f for f in rest if f not in proj]
    P = sp.Mul(*proj)
    bound = {v for n in sp.preorder_traversal(P) if isinstance(n, sp.Sum) for v, *_ in n.limits}
    if bound & {c.cols[k] for k in Z}:
        return None  # a state index also bound inside the projection (sum(b, ...)): keep the spec as written
    taken = {t for t in sym.tensors} | {str(s) for s in sp.S(c.entry).free_symbols} | set(sym.dims)
    taken |= {str(s) for s in c.rows + c.cols}
    vals = sym.dim_values()
    state_axes = sym.state.axes
    core_name = fresh_name(f"{sym.output.name}_core", taken)
    z_syms = tuple(index_symbol(fresh_name(f"z_{state_axes[k].name or k}", taken)) for k in Z)
    z_axes = tuple(SymAxis(state_axes[k].name, c.col_extents[k], int(sym.subs_dims(c.col_extents[k], vals)))
                   for k in Z)
    z_base = sp.IndexedBase(core_name, real=True)
    core_out = replace(sym.output, name=core_name, base=z_base, axes=z_axes)
    pinned = sp.Mul(*[sp.KroneckerDelta(z, c.cols[k]) for z, k in zip(z_syms, Z)])
    new_c = SymMatrix("C", z_syms, c.cols, tuple(a.extent for a in z_axes), c.col_extents, pinned * sp.Mul(*rest),
                      c.span)
    read = sp.Sum(P * z_base[tuple(c.cols[k] for k in Z)], *[(c.cols[k], 0, c.col_extents[k] - 1) for k in Z])
    d = sym.matrices.get("D")
    if d is not None:
        entry = d.entry.subs(dict(zip(d.rows, c.rows)), simultaneous=True)
        driven = sym.driven.base[d.cols] if d.cols else sym.driven.base
        read = read + contract_product(entry, d.cols, d.col_extents, driven, dict(zip(c.rows, c.row_extents)),
                                       sym.in_free_dims)
    post = SymLet(replace(sym.output, kind="post"), tuple(c.rows), read, True)
    matrices = {k: v for k, v in sym.matrices.items() if k not in ("C", "D")}
    matrices["C"] = new_c
    return replace(sym, output=core_out, matrices=matrices, posts=(post,) + tuple(sym.posts),
                   written=sym.written or (sym.output, c, d), added_posts=sym.added_posts + 1)
