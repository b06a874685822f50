"""The log-space scans' log(decay) is taken through the decay's definition (dsfc/analysis/log_space.py).

The bug: a decay written as a let, ``w = exp(-exp(x))`` (RWKV-6) or ``f = sigmoid(z)`` (mLSTM), was printed as
``torch.log(w)``. Under strong decay w underflows to 0 in fp32, the log is -inf and autograd's
``(1 / w) * dw = inf * 0`` made every gradient NaN while the reference's stayed finite. Now the generated code scans
the exponent itself (``-exp(x)``, ``logsigmoid(z)``).
"""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from dsf_testing import F64, assert_grads_close, compile_and_build, output_and_grads
from test_signed_decay import HEAD as SIGNED_HEAD
from test_signed_decay import OUTER_B
from dsfc.analysis.log_space import exact_log, log_of
from dsfc.ir.functions import LogSigmoid, Sigmoid
from dsfc.pipeline import compile_text

# test_signed_decay's outer-product head (d = 3, H = 2, K = 3, V = 2) with a gate projection
HEAD = SIGNED_HEAD.format(b_entry=OUTER_B) + """param W_g[H, K, d] ~ normal(0, 0.5)
param b_g[H, K] ~ normal(0, 0.1)
"""

# at these b_g each decay underflows even in float64: exp(-exp(7)) = exp(-1097), sigmoid(-400)^2 = exp(-800),
# exp(-40^2) = exp(-1600)
SPECS = {
    "per_key_double_exp": HEAD + """
let w[h: H, a: K] = exp(-exp(sum(m, W_g[h, a, m] * u[m]) + b_g[h, a]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * w[h, a]
""",
    "per_head_sigmoid_power": HEAD + """
let f[h: H] = sigmoid(-sum(m, W_g[h, 0, m] * u[m]) - b_g[h, 0]) ^ 2
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * f[h]
""",
    "per_key_product": HEAD + """
let s[h: H, a: K] = sigmoid(-sum(m, W_g[h, a, m] * u[m]) - b_g[h, a])
let w[h: H, a: K] = 0.5 * s[h, a] * exp(-b_g[h, a] ^ 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * w[h, a]
""",
}
STRONG = {"per_key_double_exp": 7.0, "per_head_sigmoid_power": 400.0, "per_key_product": 40.0}


def test_log_of_cancels_exp_and_sigmoid():
    x, y = sp.symbols("x y", real=True)
    sym = compile_text(SPECS["per_key_double_exp"], "w.dsf").sym
    assert exact_log(sp.exp(-sp.exp(x)), sym) == -sp.exp(x)
    assert exact_log(Sigmoid(x) ** 2, sym) == 2 * LogSigmoid(x)
    assert exact_log(sp.Rational(1, 2) * sp.exp(x) * Sigmoid(y), sym) == -sp.log(2) + x + LogSigmoid(y)
    assert exact_log(1 - Sigmoid(2 * x), sym) == LogSigmoid(-2 * x)  # fp32 rounds 1 - sigmoid(z) to 0 at z > 17
    assert exact_log((1 - Sigmoid(x)) / 2, sym) == LogSigmoid(-x) - sp.log(2)
    assert exact_log(sp.Min(Sigmoid(x), sp.Rational(9, 10)), sym) == sp.Min(LogSigmoid(x), sp.log(sp.Rational(9, 10)))
    assert exact_log(2 - Sigmoid(x), sym) is None
    assert exact_log(-sp.exp(x), sym) is None  # a negative decay: no real log
    assert exact_log(x + 1, sym) is None
    assert log_of(x + 1, sym) == sp.log(x + 1)
    # through a let, with the use's indices substituted for the let's own
    w = next(let for let in sym.lets if let.tensor.name == "w")
    h, a = sp.symbols("hh aa", integer=True)
    got = log_of(sp.IndexedBase("w")[h, a], sym)
    assert not got.atoms(sp.log) and {h, a} <= got.free_symbols and not set(w.index) & got.free_symbols


def _value(expr, x, x0) -> float:
    """expr at x = x0, with the spec functions written out in exp / log (independent of their printers)."""
    expr = expr.replace(Sigmoid, lambda z: 1 / (1 + sp.exp(-z))).replace(LogSigmoid, lambda z: -sp.log(1 + sp.exp(-z)))
    return float(expr.subs(x, x0).evalf(30))


@pytest.mark.parametrize("x0", [-3.0, -0.5, 0.0, 0.7, 2.5])
def test_log_of_agrees_numerically(x0):
    x = sp.Symbol("x", real=True)
    sym = compile_text(SPECS["per_key_double_exp"], "w.dsf").sym
    for expr in (sp.exp(-sp.exp(x)), Sigmoid(x) ** 3, 0.25 * sp.exp(2 * x) * Sigmoid(-x), sp.sqrt(Sigmoid(x)),
                 (1 - Sigmoid(3 * x)) / 4, sp.Min(Sigmoid(x), 0.6), sp.Max(sp.exp(-x * x), Sigmoid(2 * x))):
        want = math.log(_value(expr, x, x0))
        got = _value(log_of(expr, sym), x, x0)
        assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), expr


@pytest.mark.parametrize("name", sorted(SPECS))
def test_generated_code_scans_the_exponent(name):
    src = compile_text(SPECS[name], f"{name}.dsf").source
    line = next(x for x in src.splitlines() if x.strip().startswith("_log_decay ="))
    assert "torch.log(" not in line, line


@pytest.mark.parametrize("name", sorted(SPECS))
def test_strong_decay_gradients_stay_finite(name):
    """fp32 torch path under decays that underflow: finite gradients that match the float64 reference."""
    b = compile_and_build(SPECS[name], path=f"{name}.dsf")
    with torch.no_grad():
        b.model.b_g.fill_(STRONG[name])
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 21, 3, generator=g, dtype=F64)
    w = torch.randn(2, 21, 4, generator=g, dtype=F64)
    # fp32 first: the module is moved in place, so both runs use the same (fp32-representable) parameters
    _, got = output_and_grads(b.model, "torch", u, w, torch.float32)
    _, want = output_and_grads(b.model, "reference", u, w, F64)
    assert_grads_close(got, want, 1e-4)  # fp32 rounding of O(T) sums; the bug gave NaN
