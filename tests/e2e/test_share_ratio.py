"""Shares ``n / (n + r)`` of positive terms are evaluated as ``sigmoid(log n - log r)`` (dsfc/analysis/log_space.py,
``shares`` / ``share_parts``; their log as ``-softplus(log r - log n)`` in ``exact_log``).

minLSTM's normalised gates ``f / (f + i)`` and ``i / (f + i)`` with ``f = sigmoid(a)``, ``i = sigmoid(b)`` were NaN
in fp32 once a and b were both below about -88 (f and i underflow to 0: 0 / 0), while the float64 reference
recurrence stays finite there. Written through the exact logs, ``sigmoid(logsigmoid(a) - logsigmoid(b))`` is finite
for every a, b, with finite gradients; the log-space scans read the log-decay as ``-softplus(...)``, not log of the
share. Checked in fp32 against the float64 reference at inputs scaled so that a, b < -100 (and > 100): outputs,
final states and the gradients of the input, the initial state and every parameter, on the torch path (diagonal
scan and chunked outer-product scan) and the Triton diagonal path (interpreted on CPU), which prints the share
into its kernel."""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import sympy as sp  # noqa: E402
import torch  # noqa: E402

from dsf_testing import (TRITON, F64, assert_grads_close, compile_and_build, grads_of, rel_err, run_steps,  # noqa: E402
                         state_err)
from dsfc.analysis.log_space import exact_log, shares  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.ir.functions import LogSigmoid, Sigmoid, Softplus  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")
F32 = torch.float32


def test_share_forms():
    a, b, c, x, w = sp.symbols("a b c x w", real=True)
    f, i = Sigmoid(a), Sigmoid(b)
    la, lb = LogSigmoid(a), LogSigmoid(b)
    assert shares(f / (f + i), None) == Sigmoid(la - lb)
    assert shares(w * i / (f + i), None) == w * Sigmoid(lb - la)
    assert shares(sp.exp(x) / (sp.exp(x) + f), None) == Sigmoid(x - la)
    assert shares(i / (2 * f + i), None) == Sigmoid(lb - la - sp.log(2))  # r = 2 f
    assert shares(f / (2 * f + i), None) == Sigmoid(la - lb + sp.log(2)) / 2  # f = (2 f) / 2
    assert exact_log(f / (f + i), None) == -Softplus(lb - la)
    assert exact_log(1 + sp.exp(x), None) == Softplus(x)
    # three terms: log r = logsumexp(log r1, log r2), folded through softplus
    assert shares(f / (f + i + Sigmoid(c)), None) == Sigmoid(la - (lb + Softplus(LogSigmoid(c) - lb)))
    # not shares: a term with no exact log (may be <= 0), n not a term of the sum, a difference
    for e in (f / (f + x), f / (i + Sigmoid(c)), f / (f - i + 1), 1 / (f + i)):
        assert shares(e, None) == e


MINLSTM = """
model MinLSTM "minLSTM: normalised forget / input gates"
dim d = 4
dim E = 3
input u[d]
state h[c: E]
output y[E]
param W_f[E, d] ~ normal(0, 1 / sqrt(d))
param W_i[E, d] ~ normal(0, 1 / sqrt(d))
param W_h[E, d] ~ normal(0, 1 / sqrt(d))
let f[c: E] = sigmoid(sum(m, W_f[c, m] * u[m]))
let i[c: E] = sigmoid(sum(m, W_i[c, m] * u[m]))
let fn[c: E] = f[c] / (f[c] + i[c])
A[c, c2] = delta(c, c2) * fn[c]
B[c, m] = i[c] / (f[c] + i[c]) * W_h[c, m]
C[o, c] = delta(o, c)
"""

# GLA with its per-key decay a share of two sigmoid gates: the chunked outer-product scan takes log(decay)
GLA_SHARE = """
model GlaShare "GLA, decay f / (f + i) per key"
dim d = 4
dim K = 2
dim V = 2
input u[d]
state S[a: K, b: V]
output y[b: V]
param W_Q[K, d] ~ normal(0, 1 / sqrt(d))
param W_K[K, d] ~ normal(0, 1 / sqrt(d))
param W_V[V, d] ~ normal(0, 1 / sqrt(d))
param W_f[K, d] ~ normal(0, 1 / sqrt(d))
param W_i[K, d] ~ normal(0, 1 / sqrt(d))
let f[a: K] = sigmoid(sum(m, W_f[a, m] * u[m]))
let i[a: K] = sigmoid(sum(m, W_i[a, m] * u[m]))
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * f[a] / (f[a] + i[a])
B[(a, b), m] = sum(m2, W_K[a, m2] * u[m2]) * W_V[b, m]
C[b3, (a, b)] = delta(b3, b) * sum(m, W_Q[a, m] * u[m])
"""


def _extreme(built, sign_f: float, sign_i: float, gen):
    """Gate projections W_f u, W_i u of sign sign_f / sign_i and size 112 .. 240 at every step: u in [40, 60]^d,
    the gate weights in +-[0.7, 1.0]. float64 sigmoids are still > 1e-105 there, fp32's are 0 below -88."""
    named = dict(built.model.named_parameters())
    with torch.no_grad():
        for name, sign in (("W_f", sign_f), ("W_i", sign_i)):
            w = named[name]
            w.copy_(sign * (0.7 + 0.3 * torch.rand(w.shape, generator=gen, dtype=F64)))


CASES = {  # (f's sign, i's sign): both gates underflow (0 / 0 before), both saturate at 1, one of each
    "both_low": (-1.0, -1.0), "both_high": (1.0, 1.0), "f_low": (-1.0, 1.0), "i_low": (1.0, -1.0)}


def _check_fp32(text, family, backend, case, shape=(2, 5), steps=True):
    built = compile_and_build(text, path="share.dsf")
    assert built.result.structure.family == family, built.result.structure.family_reason
    gen = torch.Generator().manual_seed(0)
    _extreme(built, *CASES[case], gen)
    b, t = shape
    u = 40 + 20 * torch.rand(b, t, built.d_in(), generator=gen, dtype=F64)
    h0 = 0.5 * torch.randn(b, *built.state_shape(), generator=gen, dtype=F64)
    y_ref, h_ref = built.reference(u, h0)
    w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
    want = grads_of(None, built, u, h0, w)
    assert torch.isfinite(y_ref).all() and all(torch.isfinite(g).all() for g in want)

    model = built.model.to(F32)
    model.backend = backend
    u32, h32, w32 = u.to(F32), h0.to(F32), w.to(F32)
    with torch.no_grad():
        y, hT = model(u32, initial_state=h32, output_final_state=True)
    assert torch.isfinite(y).all(), (backend, case, "NaN / inf output")
    assert rel_err(y.to(F64), y_ref) < 1e-5 and state_err(hT.to(F64), h_ref) < 1e-5, (backend, case)
    if steps:
        y_s, h_s = run_steps(model, u32, h32)
        assert rel_err(y_s.to(F64), y_ref) < 1e-5 and state_err(h_s.to(F64), h_ref) < 1e-5, (backend, case, "step")
    got = [g.to(F64) for g in grads_of(model, built, u32, h32, w32)]
    assert_grads_close(got, want, 1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_minlstm_fp32_at_extreme_gates(case):
    _check_fp32(MINLSTM, Family.DIAGONAL_SCAN, "torch", case)


@pytest.mark.parametrize("case", ["both_low", "f_low"])
def test_share_log_decay_fp32_at_extreme_gates(case):
    _check_fp32(GLA_SHARE, Family.CHUNKED_OUTER, "torch", case)


@pytest.mark.skipif(not TRITON, reason="triton / numpy not installed")
@pytest.mark.parametrize("case", ["both_low", "both_high"])
def test_minlstm_triton_fp32_at_extreme_gates(case):
    _check_fp32(MINLSTM, Family.DIAGONAL_SCAN, "triton", case, steps=False)
