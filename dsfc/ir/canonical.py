"""Canonical forms of the DSF matrices' entries, so that the same model written differently reads the same.

- ``sum(a3, delta(a3, a) * q[h, a3])`` is ``q[h, a]`` (``contract_delta_sums``): a delta under a sum in A, B, C or D
  is contracted where the pinned value provably stays in the summed range;
- ``delta(h * K + a, h2 * K + a2)`` is ``delta(h, h2) * delta(a, a2)`` (``split_flat_deltas``): a delta of two
  flattened indices is split where a, a2 provably lie in [0, K);
- a let read at an axis its definition never uses (``let gamma[h: H, a: K] = 1 - 2 ^ (-5 - h)``) is read at 0 there
  (``gamma[h, 0]``): the decay of A then depends on the head only, as when the let is declared ``gamma[h: H]``
  (a scalar decay per group, not a per-key one);
- a D written out as zero (``D[o, m] = 0``, ``0 * delta(o, m)``) is no D: the report says "absent" and the generated
  module adds no zero feedthrough, as when D is left out.

The reference backend (``CompileResult.sym``) keeps the spec as written; this runs on the analysis core only.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from ..analysis.index_algebra import contract_delta_sums, split_flat_deltas
from .symspec import SymSpec


def _unused_axes_reader(sym: SymSpec):
    """A function rewriting every read of a let at an axis its definition does not use (through other lets too) to a
    read at 0 there. Running and feature lets are left alone (their values depend on more than their expression)."""
    unused: dict[str, tuple[int, ...]] = {}

    def read_at_zero(expr):
        def one(node):
            zero = unused[str(node.base.label)]
            return node.base[tuple(sp.Integer(0) if k in zero else i for k, i in enumerate(node.indices))]
        return sp.S(expr).replace(lambda n: isinstance(n, sp.Indexed) and unused.get(str(n.base.label)), one)

    for let in sym.lets:
        if let.running or getattr(let, "feature", None) is not None:
            continue
        body = read_at_zero(let.expr)
        unused[let.tensor.name] = tuple(k for k, i in enumerate(let.index) if i not in body.free_symbols)
    return read_at_zero


def canonical_matrices(sym: SymSpec) -> SymSpec:
    """``sym`` with every matrix entry in canonical form; ``sym`` itself when nothing changes."""
    matrices, changed = dict(sym.matrices), False
    read_at_zero = _unused_axes_reader(sym)
    for name, m in sym.matrices.items():
        ranges = {**dict(zip(m.rows, m.row_extents)), **dict(zip(m.cols, m.col_extents))}
        entry = contract_delta_sums(read_at_zero(m.entry), ranges, sym.in_free_dims)
        entry = split_flat_deltas(entry, ranges, sym.in_free_dims)
        if name == "D" and sp.expand(entry) == 0:
            del matrices[name]
            changed = True
        elif entry != m.entry:
            matrices[name] = replace(m, entry=entry)
            changed = True
    return replace(sym, matrices=matrices) if changed else sym
