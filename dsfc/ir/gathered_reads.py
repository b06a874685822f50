"""Output axes that read a state axis at a formula of their index: ``C[(o, e), (h, a, b)] = delta(b, (e + 1) % V) ...``.

The structure analysis maps each output axis to the state axis it reads at the output's own index (``delta(e, b)``):
that is what the outer-product, delta-rule and kernelised splits are written for. A read at a formula f(e) of the
output index (a rotation ``(e + 1) % V``, a reversal ``V - 1 - e``, a duplication ``e // 2``) is the same core
followed by a gather, ``y[e] = y_core[f(e)]``. This pass rewrites the analysis core that way before the structure
is analysed:

- the core output gets a virtual axis of the state axis's extent, read at its own index (``delta(e', b)``);
- the declared output becomes a first post-op, ``y[o, e] = y_core[o, f(e)]``, which the user's post-ops then read.

It applies only where f(e) provably stays in the state axis's range at every dims, C reads e through that delta
alone (every term carries it), and there is no D (D u is written into y's own slots, not the core's). The reference
backend (``CompileResult.sym``) keeps the spec as written.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from ..analysis.index_algebra import _within
from .lower import index_symbol
from .symspec import SymAxis, SymLet, SymSpec, SymTensor, fresh_name


def _gathered_read(sym: SymSpec, k: int):
    """(the delta, the state column symbol, f(e), C without the delta) for output row k of C, or None."""
    c = sym.matrices["C"]
    e = c.rows[k]
    ranges = {**dict(zip(c.rows, c.row_extents)), **dict(zip(c.cols, c.col_extents))}
    for d in c.entry.atoms(sp.KroneckerDelta):
        for b, x in (d.args, d.args[::-1]):
            if b not in c.cols or x.is_Symbol or e not in x.free_symbols:
                continue
            if x.free_symbols - {e} - set(sym.dims.values()):
                continue  # f may read the output index and dims only
            rest = c.entry.xreplace({d: sp.Integer(1)})
            if e in rest.free_symbols or sp.expand(c.entry - d * rest) != 0:
                continue  # e read elsewhere too, or not every term reads the state through d
            extent = c.col_extents[c.cols.index(b)]
            if not _within(x, extent, ranges, sym.in_free_dims):
                continue
            return d, b, x, rest
    return None


def gather_output_reads(sym: SymSpec) -> SymSpec:
    """``sym`` with each output axis read at a formula of its index moved into a first post-op (see the module
    docstring); ``sym`` itself when there is none."""
    c = sym.matrices.get("C")
    if c is None or "D" in sym.matrices:
        return sym
    found = {k: r for k in range(len(c.rows)) if (r := _gathered_read(sym, k)) is not None}
    if not found:
        return sym
    names = set(sym.tensors) | set(sym.dims) | {str(s) for s in c.entry.free_symbols | set(c.rows) | set(c.cols)}
    core_name = fresh_name(f"{sym.output.name}_core", names)
    entry, rows, axes, reads = c.entry, list(c.rows), list(sym.output.axes), list(c.rows)
    vals = sym.dim_values()
    for k, (d, b, x, _rest) in found.items():
        rows[k] = index_symbol(fresh_name(f"{c.rows[k]}_read", names))
        entry = entry.xreplace({d: sp.KroneckerDelta(rows[k], b)})
        extent = c.col_extents[c.cols.index(b)]
        axes[k] = SymAxis(None, extent, int(sym.subs_dims(extent, vals)))
        reads[k] = x
    base = sp.IndexedBase(core_name, real=True)
    core_out = SymTensor("output", core_name, base, tuple(axes), sym.output.span)
    post = SymLet(replace(sym.output, kind="post"), tuple(c.rows), base[tuple(reads)], True)
    matrices = {**sym.matrices, "C": replace(c, rows=tuple(rows), row_extents=tuple(a.extent for a in axes),
                                             entry=entry)}
    return replace(sym, output=core_out, matrices=matrices, posts=(post, *sym.posts),
                   written=sym.written or (sym.output, c, sym.matrices.get("D")), added_posts=sym.added_posts + 1)
