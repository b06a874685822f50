"""The gathered-reads pass (dsfc/ir/gathered_reads.py) on its own: which output reads it moves into a post-op.

An output axis e that reads a state axis b at a formula f(e) provably in b's range, through a delta that every
term of C carries, becomes a core output axis read at its own index plus a first post ``y[.., e] = y_core[.., f(e)]``;
anything else is left as written (the structure analysis then sees it as before)."""

import pytest
import sympy as sp

from dsfc.ir.gathered_reads import gather_output_reads
from dsfc.ir.lower import lower_to_sympy
from dsfc.lang.check import check_spec
from dsfc.lang.parse import parse_spec

BASE = """
model M "m"
dim d = 3
dim H = 2
dim K = 2
dim V = 3
dim E = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, e: E]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w[E] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * 0.9
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * {read} * q[h, a]{extra}
"""


def _core(read, extra="", dim_e="dim E = 3"):
    text = BASE.format(read=read, extra=extra).replace("dim E = 3", dim_e)
    sym = lower_to_sympy(check_spec(parse_spec(text, "m.dsf")))
    return sym, gather_output_reads(sym)


@pytest.mark.parametrize("read, dim_e, formula", [("delta(b, (e + 1) % V)", "dim E = 3", "Mod(e + 1, V)"),
                                                  ("delta(V - 1 - e, b)", "dim E = V", "V - e - 1")])
def test_a_read_at_a_formula_of_the_output_index_becomes_a_post(read, dim_e, formula):
    sym, core = _core(read, dim_e=dim_e)
    c = core.matrices["C"]
    o, e_read = c.rows
    h, a, b = c.cols
    assert core.output.name == "y_core" and [ax.extent for ax in core.output.axes] == [sym.dims["H"], sym.dims["V"]]
    assert c.entry == sp.KroneckerDelta(o, h) * sp.KroneckerDelta(e_read, b) * core.lets[0].tensor.base[h, a]
    post = core.posts[0]
    assert post.tensor.name == "y" and len(core.posts) == 1
    assert sp.sstr(post.expr) == f"y_core[o, {formula}]"
    assert core.written == (sym.output, sym.matrices["C"], None) and core.added_posts == 1


@pytest.mark.parametrize("read, extra, dim_e", [
    ("delta(e, b)", "", "dim E = 3"),  # the output's own index: nothing to gather
    ("delta(b, (e + 1) % V)", " * w[e]", "dim E = 3"),  # e read outside the delta too
    ("delta(b, e + 1)", "", "dim E = 3"),  # e + 1 reaches V: not provably in range
    ("delta(b, e // 2)", "", "dim E = 7"),  # an independent E: e // 2 < V not at every dims
    ("delta(V - 1 - e, b)", "", "dim E = 3"),  # V - 1 - e < 0 where E > V
])
def test_other_reads_are_left_as_written(read, extra, dim_e):
    sym, core = _core(read, extra, dim_e)
    assert core is sym


def test_a_spec_with_d_is_left_as_written():
    text = BASE.format(read="delta(b, (e + 1) % V)", extra="").replace("dim d = 3", "dim d = 6") + \
        "D[(o, e), m] = delta(o * E + e, m)\n"
    sym = lower_to_sympy(check_spec(parse_spec(text, "m.dsf")))
    assert gather_output_reads(sym) is sym
