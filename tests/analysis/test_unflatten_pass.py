"""The unflatten pass (dsfc/ir/unflatten.py) on its own: which deltas it splits, and the exact rewrites it makes."""

import sympy as sp

from dsfc.ir.lower import lower_to_sympy
from dsfc.ir.unflatten import unflatten_output
from dsfc.lang.check import check_spec
from dsfc.lang.parse import parse_spec

BASE = """
model M "m"
dim H = 2
dim P = 3
dim n = 2
dim d = H * P
input u[d]
state S[h: H, p: P, j: n]
output y[{out}]
param W[n, d] ~ normal(0, 0.5)
param Dp[H] = 1
let c[j: n] = sum(m, W[j, m] * u[m])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * 0.5
B[(h, p, j), m] = delta(m, h * P + p) * c[j]
C[o, (h, p, j)] = delta(o, {flat}) * c[j]
{D}"""
D = "D[o, m] = delta(o, m) * Dp[o // P] * (1 + o % P)\n"


def _core(out="d", flat="h * P + p", D=D):
    sym = lower_to_sympy(check_spec(parse_spec(BASE.format(out=out, flat=flat, D=D), "m.dsf")))
    return sym, unflatten_output(sym)


def test_two_digits_split_the_deltas_floors_and_mods():
    sym, core = _core()
    c, d = core.matrices["C"], core.matrices["D"]
    o0, o1 = c.rows
    assert [a.extent for a in core.output.axes] == [sym.dims["H"], sym.dims["P"]]
    assert c.row_extents == (sym.dims["H"], sym.dims["P"])
    h, p, j = c.cols
    assert c.entry == sp.KroneckerDelta(o0, h) * sp.KroneckerDelta(o1, p) * sym.let("c").tensor.base[j]
    assert not d.entry.has(sp.floor, sp.Mod)  # o // P -> o_0, o % P -> o_1
    assert d.entry.has(sym.params[1].tensor.base[d.rows[0]])


def test_three_digits():
    sym, core = _core(out="H * P * n", flat="(h * P + p) * n + j", D="")
    assert [a.extent for a in core.output.axes] == [sym.dims[x] for x in ("H", "P", "n")]
    assert len(core.matrices["C"].entry.atoms(sp.KroneckerDelta)) == 3


def test_no_split_unless_the_digits_tile_o():
    for out, flat in (("d + 1", "h * P + p"), ("d", "h * n + p"), ("d", "h * P + p + 1"), ("d", "h * P")):
        sym, core = _core(out, flat, D="")
        assert core is sym, (out, flat)
