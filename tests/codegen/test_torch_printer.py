"""The torch printer's tensor-entry forms, evaluated and compared with the same entry written by hand in torch.

An entry whose subscripts are integers or functions of one axis each prints as basic indexing plus ``index_select``
(whose backward is an ``index_add`` along one dim), any other as a gather with index grids (whose backward is an
accumulating ``index_put`` over every element); both must give the entry's values.
"""

import pytest
import sympy as sp
import torch

from dsfc.codegen.printers import TensorRef, TorchPrinter
from dsfc.runtime.indexing import axis

Bsz, T = 2, 3
H, R, n = 6, 3, 4  # G = H / R = 2 groups
h, i, j = sp.symbols("h i j", integer=True)
Hs, Rs, ns = sp.symbols("H R n", integer=True, positive=True)


def printed(entry, axes, tensors):
    refs = {name: TensorRef(name, t.dim() - (2 if batched else 0), batched) for name, (t, batched) in tensors.items()}
    printer = TorchPrinter(refs, {Hs: "H", Rs: "R", ns: "n"})
    sizes = {h: "H", i: "n", j: "R"}
    code = printer.print(entry, axes, sizes)
    env = {"axis": axis, "torch": torch, "_dev": None, "_dtype": torch.float64, "H": H, "R": R, "n": n}
    env.update({name: t for name, (t, _) in tensors.items()})
    return code, eval(code, env)  # noqa: S307 - printer output in a test


def test_group_broadcast_is_an_index_select_with_the_gathers_values_and_gradient():
    Cm = torch.randn(Bsz, T, H // R, n, dtype=torch.float64, requires_grad=True)
    entry = sp.IndexedBase("Cm")[sp.floor(h / Rs), i]
    code, got = printed(entry, (h, i), {"Cm": (Cm, True)})
    assert "index_select" in code and "axis(H, 0, 2" not in code
    want = Cm.repeat_interleave(R, dim=2)  # head h reads group h // R
    torch.testing.assert_close(got, want)
    dy = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, Cm, dy)[0], torch.autograd.grad(want, Cm, dy)[0])


def test_reversed_static_entry_and_integer_subscripts():
    w = torch.randn(n, dtype=torch.float64)
    code, got = printed(sp.IndexedBase("w")[ns - 1 - i], (i,), {"w": (w, False)})
    assert "index_select" in code
    torch.testing.assert_close(got, torch.flip(w, [0]))
    mm = torch.randn(Bsz, T, 4, n, dtype=torch.float64)
    code, got = printed(sp.IndexedBase("mm")[2, i], (i,), {"mm": (mm, True)})
    assert "axis(" not in code  # basic indexing: a view
    torch.testing.assert_close(got, mm[:, :, 2])


def test_selected_dims_are_permuted_and_broadcast_into_axis_order():
    x = torch.randn(Bsz, T, R, H // 2, dtype=torch.float64)
    # axes (h, i, j): x[j, h // 2] has h at position 0, j at 2 and no i
    code, got = printed(sp.IndexedBase("x")[j, sp.floor(h / 2)], (h, i, j), {"x": (x, True)})
    assert "index_select" in code
    want = torch.empty(Bsz, T, H, 1, R, dtype=torch.float64)
    for hh in range(H):
        for jj in range(R):
            want[:, :, hh, 0, jj] = x[:, :, jj, hh // 2]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)


def test_two_subscripts_of_one_axis_stay_a_gather():
    q = torch.randn(Bsz, T, H // R, R, dtype=torch.float64)
    code, got = printed(sp.IndexedBase("q")[sp.floor(h / Rs), sp.Mod(h, Rs)], (h,), {"q": (q, True)})
    assert "index_select" not in code
    torch.testing.assert_close(got, q.reshape(Bsz, T, H))


@pytest.mark.parametrize("entry", ["Cm[floor(h / R), i]", "Cm[floor(h / R), n - 1 - i]"])
def test_select_form_matches_the_gather_form(entry):
    """The same entry printed both ways (the gather forced by printing it through ``index``) agrees."""
    Cm = torch.randn(Bsz, T, H // R, n, dtype=torch.float64)
    e = sp.sympify(entry, locals={"Cm": sp.IndexedBase("Cm"), "h": h, "i": i, "R": Rs, "n": ns})
    code, got = printed(e, (h, i), {"Cm": (Cm, True)})
    printer = TorchPrinter({"Cm": TensorRef("Cm", 2, True)}, {Hs: "H", Rs: "R", ns: "n"})
    subs = ", ".join(printer.index(s, (h, i), {h: "H", i: "n"}) for s in e.indices)
    gather = eval(f"Cm[:, :, {subs}]", {"axis": axis, "Cm": Cm, "_dev": None, "H": H, "R": R, "n": n})  # noqa: S307
    assert "index_select" in code
    torch.testing.assert_close(got, gather)


def _flat_printed(entry, axes, sizes, x, extents, batched=True):
    refs = {"x": TensorRef("x", len(extents), batched, extents)}
    code = TorchPrinter(refs, {Hs: "H", Rs: "R", ns: "n"}).print(entry, axes, sizes)
    return code, eval(code, {"axis": axis, "torch": torch, "_dev": None, "H": H, "R": R, "n": n, "x": x})  # noqa: S307


def test_a_row_major_flat_read_is_a_flatten_with_the_gathers_values_and_gradient():
    # x [G, R] read as x[h // R, h % R] over h in [0, G * R): the flattening (a view), not an index-grid gather
    # (whose backward is an accumulating index_put over every element)
    x = torch.randn(Bsz, T, H // R, R, dtype=torch.float64, requires_grad=True)
    e = sp.IndexedBase("x")[sp.floor(h / Rs), sp.Mod(h, Rs)]
    printer = TorchPrinter({}, {Hs: "H", Rs: "R", ns: "n"})
    code, got = _flat_printed(e, (h,), {h: printer.size(sp.floor(Hs / Rs) * Rs)}, x, (sp.floor(Hs / Rs), Rs))
    assert "flatten(2, 3)" in code and "axis(" not in code
    want = x.reshape(Bsz, T, H)
    torch.testing.assert_close(got, want)
    dy = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, dy)[0], dy.reshape(x.shape))


def test_a_three_digit_flat_read_and_its_non_row_major_cousins():
    P, Q = 2, 3
    Ps, Qs = sp.Integer(P), sp.Integer(Q)
    m = sp.Symbol("m", integer=True)
    x = torch.randn(Bsz, T, 4, P, Q, dtype=torch.float64)
    extents = (sp.Integer(4), Ps, Qs)
    size = TorchPrinter({}, {}).size(sp.Integer(4 * P * Q))
    row_major = sp.IndexedBase("x")[sp.floor(m / (Ps * Qs)), sp.Mod(sp.floor(m / Qs), Ps), sp.Mod(m, Qs)]
    code, got = _flat_printed(row_major, (m,), {m: size}, x, extents)
    assert "flatten(2, 4)" in code
    torch.testing.assert_close(got, x.reshape(Bsz, T, 4 * P * Q))
    # digits in the wrong order (column-major) or a range that is not the whole tensor: still a correct gather
    col_major = sp.IndexedBase("x")[sp.Mod(m, 4), sp.Mod(sp.floor(m / 4), Ps), sp.floor(m / (4 * Ps))]
    code, got = _flat_printed(col_major, (m,), {m: size}, x, extents)
    assert "flatten" not in code
    torch.testing.assert_close(got, x.permute(0, 1, 4, 3, 2).reshape(Bsz, T, 4 * P * Q))
    code, got = _flat_printed(row_major, (m,), {m: TorchPrinter({}, {}).size(sp.Integer(2 * P * Q))}, x, extents)
    assert "flatten" not in code
    torch.testing.assert_close(got, x.reshape(Bsz, T, 4 * P * Q)[:, :, : 2 * P * Q])
