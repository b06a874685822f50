"""Canonical forms of the DSF matrices' entries, so that the same model written differently reads the same.

- ``sum(a3, delta(a3, a) * q[h, a3])`` is ``q[h, a]`` (``contract_delta_sums``): a delta under a sum in A, B, C or D
  is contracted where the pinned value provably stays in the summed range;
- a D written out as zero (``D[o, m] = 0``, ``0 * delta(o, m)``) is no D: the report says "absent" and the generated
  module adds no zero feedthrough, as when D is left out.

The reference backend (``CompileResult.sym``) keeps the spec as written; this runs on the analysis core only.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from ..analysis.index_algebra import contract_delta_sums
from .symspec import SymSpec


def canonical_matrices(sym: SymSpec) -> SymSpec:
    """``sym`` with every matrix entry in canonical form; ``sym`` itself when nothing changes."""
    env = {sym.dims[k]: v for k, v in sym.dim_defs.items()}

    def normalize(expr):
        expr = sp.S(expr)
        for _ in range(len(env) + 1):
            new = expr.subs(env)
            if new == expr:
                break
            expr = new
        return expr

    matrices, changed = dict(sym.matrices), False
    for name, m in sym.matrices.items():
        ranges = {**dict(zip(m.rows, m.row_extents)), **dict(zip(m.cols, m.col_extents))}
        entry = contract_delta_sums(m.entry, ranges, normalize)
        if name == "D" and sp.expand(entry) == 0:
            del matrices[name]
            changed = True
        elif entry != m.entry:
            matrices[name] = replace(m, entry=entry)
            changed = True
    return replace(sym, matrices=matrices) if changed else sym
