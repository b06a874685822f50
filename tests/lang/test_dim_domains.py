"""Dims-only sub-expressions with a domain (``DimDomain``, ir/lower.py): a divisor, the argument of log or sqrt, the
base of a negative or fractional power. Refused at the default dims with the spec's position; checked again by the
generated constructor at other dims. Each case is checked against what the maths says, not against dsfc's output:
the domain fails exactly where the expression, evaluated by hand at those dims, is 0 (or negative)."""

import importlib.util
import re
import sys

import pytest
import torch

from dsfc.lang.errors import SpecErrors
from dsfc.pipeline import compile_text

HEAD = """dim d = 3
dim L = {L}
input u[d]
state h[d]
"""
TAIL = """A[i, k] = delta(i, k) * a[i]
B[i, k] = delta(i, k)
C[i, k] = delta(i, k)
"""
# (let body over c, the part of it that must be in a domain as the spec writes it and its value at L, the role,
# the domain, and the dims L at which it leaves the domain)
CASES = [
    ("sigmoid(u[c]) / (L - 2)", "L - 2", "a divisor", "nonzero", [2]),
    ("sigmoid(u[c]) * (L - 2) ^ -1", "L - 2", "the base of a negative power", "nonzero", [2]),
    ("sigmoid(u[c]) * log(L - 2) / 4", "L - 2", "the argument of log", "positive", [1, 2]),
    ("sigmoid(u[c]) * sqrt(L - 2) / 4", "L - 2", "the argument of sqrt", "nonnegative", [1]),
    ("sigmoid(u[c]) * (L - 2) ^ 0.5 / 4", "L - 2", "the base of a fractional power", "nonnegative", [1]),
    ("sigmoid(u[c]) * pow(L - 2, -1)", "L - 2", "the base of a negative power", "nonzero", [2]),
    # a float zero: SymPy's Float(0.0) != 0 is True, so the domain compares floats
    ("sigmoid(u[c]) / (0.5 * L - 1)", "0.5 * L - 1", "a divisor", "nonzero", [2]),
]
VALUE = {"L - 2": lambda L: L - 2, "0.5 * L - 1": lambda L: int(0.5 * L - 1)}


def spec(body: str, L: int) -> str:
    return HEAD.format(L=L) + f"let a[c: d] = {body}\n" + TAIL


@pytest.mark.parametrize("body,part,role,need,bad", CASES)
def test_outside_its_domain_at_the_defaults_is_a_spec_error_at_its_position(body, part, role, need, bad):
    for L in bad:
        with pytest.raises(SpecErrors) as err:
            compile_text(spec(body, L), "dom.dsf")
        text = err.value.render()
        assert "dom.dsf:5:" in text and f"{part} is {VALUE[part](L)} at the default dims (L = {L}), but as {role} " \
            f"it must be {need}" in text, text


@pytest.mark.parametrize("body,part,role,need,bad", CASES)
def test_the_constructor_checks_it_at_the_dims_it_is_built_with(body, part, role, need, bad, tmp_path, monkeypatch):
    result = compile_text(spec(body, 5), "dom.dsf")
    path = tmp_path / "dom_mod.py"
    path.write_text(result.source)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("dom_mod")
    try:
        for L in range(1, 6):
            if L in bad:
                with pytest.raises(ValueError, match=rf"at d=3, L={L}: {re.escape(part)} \(spec line 5\), {role}, "
                                                     rf"must be {need}"):
                    mod.Dom(L=L)
            else:  # inside the domain the layer runs and is finite
                y = mod.Dom(L=L)(torch.randn(2, 4, 3))
                assert torch.isfinite(y).all()
    finally:
        sys.modules.pop("dom_mod", None)


@pytest.mark.parametrize("body", ["sigmoid(u[c]) / d", "sigmoid(u[c]) / sqrt(L + 1)", "sigmoid(u[c]) * L ^ -0.5",
                                  "sigmoid(u[c]) / max(L - 2, 1)", "sigmoid(u[c]) * log(L + 1) / 4"])
def test_those_that_hold_at_every_dims_get_no_check(body):
    result = compile_text(spec(body, 2), "dom.dsf")
    assert result.sym.dim_domains == ()
    assert "must be nonzero" not in result.source and "must be positive" not in result.source


def test_an_initialiser_keeps_its_own_message_at_the_defaults_and_gets_the_constructor_check(tmp_path, monkeypatch):
    text = HEAD.format(L=3) + "param w[c: d] = c / (L - 1)\nlet a[c: d] = sigmoid(u[c] + w[c])\n" + TAIL
    result = compile_text(text, "dom.dsf")
    assert [(str(x.expr), x.need) for x in result.sym.dim_domains] == [("L - 1", "nonzero")]
    with pytest.raises(SpecErrors) as err:
        compile_text(text.replace("dim L = 3", "dim L = 1"), "dom.dsf")
    assert "the initial value of 'w' is not a finite real number" in err.value.render()
    assert "at the default dims" not in err.value.render()  # said once, by the initialiser's own check
    path = tmp_path / "dom_init.py"
    path.write_text(result.source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        mod = importlib.import_module("dom_init")
        with pytest.raises(ValueError, match=r"L - 1 \(spec line 5\), a divisor, must be nonzero: the initial values "
                                             r"of 'w' would be inf or NaN"):
            mod.Dom(L=1)
    finally:
        sys.modules.pop("dom_init", None)


def test_dsfc_checks_small_dims_avoid_a_divisor_that_is_zero_there():
    """``dsfc check`` shrinks the dims (L = 4 -> 3 first); at L = 3 the divisor L - 3 is 0, so it must pick dims
    where the module can be built, and spec_errors_at says why L = 3 is refused."""
    from dsfc.check import small_dims, spec_errors_at

    text = HEAD.replace("dim d = 3", "dim d = 5").format(L=4) + "let a[c: d] = sigmoid(u[c]) / (L - 3)\n" + TAIL
    result = compile_text(text, "dom.dsf")
    assert "L - 3 is 0 at d=3, L=3, but as a divisor it must be nonzero" in spec_errors_at(result, {"d": 3, "L": 3})
    assert spec_errors_at(result, {"d": 3, "L": 4}) is None
    small = small_dims(result)
    assert small["L"] != 3
