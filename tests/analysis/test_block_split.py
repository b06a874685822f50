"""``ir.digits.split_axes`` / ``radix_digits`` on their own: which let axes become block axes (exactly), which not."""

import sympy as sp

from dsfc.ir.digits import radix_digits, split_axes
from dsfc.ir.lower import lower_to_sympy
from dsfc.lang.check import check_spec
from dsfc.lang.parse import parse_spec

BASE = """
model M "m"
dim W = 6
dim nh = 3
dim bw = W // nh
input x[W]
state h[c: W]
output y[W]
param Wa[nh, bw, bw] ~ normal(0, 0.5)
let r[c: W] = {body}
A[c, c2] = delta(c, c2) * r[c]
B[c, m] = delta(c, m)
C[o, c] = delta(o, c)
"""


def _let(body):
    sym = lower_to_sympy(check_spec(parse_spec(BASE.format(body=body), "m.dsf")))
    let = next(x for x in sym.lets if x.tensor.name == "r")
    return sym, let


def _split(body):
    sym, let = _let(body)
    return sym, split_axes(sym, let.expr, tuple(let.index), tuple(a.extent for a in let.tensor.axes), set())


def test_divmod_read_axis_splits_into_block_axes_and_the_read_becomes_a_radix_index():
    sym, sp_ = _split("sigmoid(sum(i: bw, x[(c // bw) * bw + i] * Wa[c // bw, i, c % bw]))")
    assert sp_ is not None and (sp_.start, sp_.width) == (0, 1)
    g, j = sp_.new_index
    assert sp_.new_extents == (sym.dims["nh"], sym.dims["bw"])
    # c // bw -> g and c % bw -> j, nothing else: x's subscript is bw g + i, a row-major tiling of W
    x_sub = next(n.indices[0] for n in sp.preorder_traversal(sp_.expr) if isinstance(n, sp.Indexed)
                 and str(n.base) == "x")
    i = next(s for s in x_sub.free_symbols if str(s) == "i")
    digits = radix_digits(sym, x_sub, {g: sym.dims["nh"], i: sym.dims["bw"]}, sym.dims["W"])
    assert [x for _, _, x in digits] == [g, i]


def test_axis_also_read_on_its_own_or_through_two_strides_does_not_split():
    assert _split("sigmoid(sum(i: bw, x[(c // bw) * bw + i] * Wa[c // bw, i, c % bw])) * x[c]")[1] is None
    assert _split("x[(c // 2) * 2] * x[c % 3]")[1] is None


def test_stride_that_may_not_divide_the_extent_does_not_split():
    # W / 4 is no extent the module checks: the gather stays
    assert _split("x[(c // 4) * 4] * x[c % 4]")[1] is None


def test_radix_refuses_wrong_strides_and_extents_that_do_not_tile():
    sym, _ = _let("x[c]")
    g, i = sp.symbols("g i", integer=True, nonnegative=True)
    nh, bw, W = sym.dims["nh"], sym.dims["bw"], sym.dims["W"]
    assert radix_digits(sym, bw * g + i, {g: nh, i: bw}, W) is not None
    assert radix_digits(sym, 2 * g + i, {g: nh, i: bw}, W) is None  # stride 2 is not i's extent
    assert radix_digits(sym, bw * g + i + 1, {g: nh, i: bw}, W) is None  # a constant: reads past the block
    assert radix_digits(sym, bw * g + i, {g: nh - 1, i: bw}, W) is None  # does not cover W
