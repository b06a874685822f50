"""Numerics at extreme values, fourth round: every case compares fp32 against the float64 reference recurrence.

Normalised attention (``A = eta_prev / eta``, ``B = k v^T / eta``; dsfc/analysis/log_space.py,
``telescoping_gauge``). The per-step form multiplied ``exp(-s_j)`` (inf in fp32 for ``s_j < -88``) by the segment
decay ``exp(s_j - s_t)``, or the tiny ``exp(-s_j)`` (``s_j > 88``) by a growing decay that overflowed: every output
of the chunk was NaN even where the true output is of order 1. Now the scan runs on ``S = eta h`` (decay 1, input
``k v^T``) and ``y_t = exp(-log eta_t) q_t . S_t``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy as sp
import torch

from dsf_testing import F64, assert_grads_close, compile_and_build, output_and_grads
from dsfc.analysis.facts import Bound
from dsfc.analysis.log_space import affine_parts, telescoping_gauge
from dsfc.ir.functions import Sigmoid
from dsfc.pipeline import compile_text

SPECS = Path(__file__).resolve().parents[2] / "specs"
NA_SPECS = ["normalized_attention", "normalized_attention_sigmoid", "normalized_attention_exprelu"]
NA_DIMS = {"d": 4, "H": 2, "K": 3}
T = 21
SPIKE = slice(5, 9)  # the steps where s = W_n u + b_n is pushed to +-100


def na_with_spike(name: str, spike: float):
    """A small normalised-attention module whose s is ``spike`` (plus O(1) noise) at steps 5..8 and O(1) elsewhere;
    inputs, output weights and an initial state (h and the carried prev let) for it."""
    b = compile_and_build((SPECS / f"{name}.dsf").read_text(), NA_DIMS, path=f"{name}.dsf")
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, T, 4, generator=g, dtype=F64)
    with torch.no_grad():
        b.model.W_n[:, 0] = 1.0
        b.model.W_n[:, 1:] = 0.5 * torch.randn(2, 3, generator=g, dtype=F64)
    u[:, SPIKE, 0] += spike
    w = torch.randn(2, T, 4, generator=g, dtype=F64)  # output H * V = 2 * (d // H)
    return b, u, w


@pytest.mark.parametrize("name", ["gla", "linear_attention", *NA_SPECS])
def test_telescoping_gauge_only_for_ratio_decays_with_matching_input(name):
    """The gauge applies where A = X_prev / X and B carries 1 / X exactly; a gated decay (GLA) or none (linear
    attention) keeps its log-space scan."""
    r = compile_text((SPECS / f"{name}.dsf").read_text(), f"{name}.dsf")
    st = r.structure
    got = telescoping_gauge(st.a.decay, st.outer.value, r.core) if st.a.decay is not None else None
    assert (got is not None) == (name in NA_SPECS)


@pytest.mark.parametrize("name", NA_SPECS)
def test_generated_normalized_attention_scans_the_gauge_form(name):
    src = compile_text((SPECS / f"{name}.dsf").read_text(), f"{name}.dsf").source
    assert "_ell = " in src and "_log_decay = None" in src
    assert "torch.exp(-s" not in src.split("def _core(")[1].split("def step(")[0]  # no exp(-s) stream into the scan


@pytest.mark.parametrize("name", NA_SPECS)
def test_normalized_attention_large_eta_fp32(name):
    """s = +100 at four steps: exp(-s) ~ 4e-44 underflows, the decay out of the spike exp(100) overflowed and the
    chunk's outputs were NaN. fp32 torch path vs float64, output and every gradient. The outputs are O(1) sums of
    T terms: fp32 rounding ~1e-6 relative."""
    b, u, w = na_with_spike(name, 100.0)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    y32, g32 = output_and_grads(b.model, "torch", u, w, torch.float32)
    assert torch.isfinite(y32).all()
    assert (y32 - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
    assert_grads_close(g32, g64, 1e-4)


@pytest.mark.parametrize("name", NA_SPECS)
def test_normalized_attention_small_eta_fp32(name):
    """s = -100 at four steps: exp(-s) = exp(100) overflowed fp32 and made every output NaN. The true output at the
    spike itself is ~exp(100) (exp(relu(s)) = 1 there for the exprelu variant), beyond fp32: those steps are
    skipped; every other step must match float64 (~1e-6: fp32 rounding of O(T) sums)."""
    b, u, w = na_with_spike(name, -100.0)
    b.model.backend = "reference"
    with torch.no_grad():
        y64 = b.model(u)
        model = b.model.to(torch.float32)
        model.backend = "torch"
        model.check_finite = False  # the spike steps, beyond fp32, are NaN: an error by default (test_user_hunt_12)
        y32 = model(u.float()).to(F64)
    fits = y64.abs().amax(-1) < 1e30  # [B, T]: the steps whose true output fp32 can hold
    assert fits[:, : SPIKE.start].all() and fits[:, SPIKE.stop:].all()
    assert torch.isfinite(y32[fits]).all()
    assert (y32 - y64)[fits].abs().max().item() <= 1e-5 * y64[fits].abs().max().item()


@pytest.mark.parametrize("name", NA_SPECS)
def test_normalized_attention_gauge_keeps_initial_and_final_state(name):
    """The scan runs on S = eta h from 0; the initial state enters as exp(log eta_prev_1 - log eta_t) q . h0 and the
    final state is converted back. Float64 both sides (exact up to rounding), with a carried prev let."""
    b, u, _ = na_with_spike(name, 0.0)
    g = torch.Generator().manual_seed(1)
    h0 = b.initial_state(2, g)
    b.model.backend = "torch"
    with torch.no_grad():
        y, s = b.model(u, initial_state=h0, output_final_state=True)
    y_ref, s_ref = b.reference(u, h0)
    assert (y - y_ref).abs().max().item() <= 1e-10 * y_ref.abs().max().item()
    for key in s_ref:
        assert (s[key].reshape(2, -1) - s_ref[key].reshape(2, -1)).abs().max().item() <= 1e-10 * (
            s_ref[key].abs().max().item())


# ---- HGRN's 1 - f, f = gam + (1 - gam) sigmoid(z) (dsfc/analysis/log_space.py, affine_parts / hoist_complement_sums)
# fp32's 1 - f kept eps / (1 - f) relative precision of the input scale: 3e-3 output error at z = 12, 14% at z = 16.
# Now 1 - f = (1 - gam) sigmoid(-z), z a let of its own (f_pre) that f reads too.
HGRN_DIMS = {"d": 4, "E": 4, "L": 4, "layer": 3}


def hgrn_saturated(z: float):
    """HGRN with the forget gate's pre-activation z + O(1) noise (f -> 1 as z grows) and gam = 1/4 .. 1/2."""
    b = compile_and_build((SPECS / "hgrn.dsf").read_text(), HGRN_DIMS, path="hgrn.dsf")
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 24, 4, generator=g, dtype=F64)
    w = torch.randn(2, 24, 4, generator=g, dtype=F64)
    with torch.no_grad():
        b.model.W_f.copy_(0.3 * torch.randn(4, 4, generator=g, dtype=F64))
        b.model.W_f[:, 0] = 1.0
        b.model.Gamma.copy_(0.5 * torch.randn(4, 4, generator=g, dtype=F64))
    u[..., 0] = z
    return b, u, w


def test_affine_complement_forms():
    r = compile_text((SPECS / "hgrn.dsf").read_text(), "hgrn.dsf")
    src = r.source
    assert "f_pre = F.linear(" in src and "torch.sigmoid(-f_pre)" in src  # the projection hoisted, once
    assert "(-f)" not in src.split("def _core(")[1]  # no 1 - f left in the recurrence
    a, b, q = affine_parts(r.sym.let("f").expr)
    assert sp.simplify(a + b - 1) == 0 and isinstance(q, Sigmoid)
    x = sp.Symbol("x")
    assert affine_parts(x + 2 * sp.exp(x)) is None  # a + b != 1
    assert affine_parts(sp.Rational(1, 4) + sp.Rational(3, 4) * sp.exp(x)) is not None


@pytest.mark.parametrize("z", [12.0, 16.0])
def test_hgrn_saturated_gate_fp32(z):
    """fp32 torch path vs float64 at a nearly closed gate, output and every gradient. T = 24 << 1 / (1 - f) ~ 1e5,
    so fp32's rounding of f itself (the decay) moves the output by ~T eps; O(T) sums add ~1e-6."""
    b, u, w = hgrn_saturated(z)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    y32, g32 = output_and_grads(b.model, "torch", u, w, torch.float32)
    assert (y32 - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
    assert_grads_close(g32, g64, 1e-5)


# ---- index-valued decays (dsfc/analysis/stability.py, IntervalProver.range_over): an index a of extent K was read
# as [0, inf), so RetNet-xpos's per-key decay (a + 0.4 K) / (1.4 K) was reported unbounded.
XPOS_HEAD = """model X "index-valued per-key decay"
dim d = 3
dim H = 2
dim K = 4
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""


@pytest.mark.parametrize("decay, want", [
    # the let RETNET_XPOS has (tests/e2e/test_user_specs_3.py): (1 - 2^-5) (0.4 / 1.4) .. < 1
    ("gam[h, a]", "[0.276786, 1)"),
    # written in A directly (over the state's row symbols)
    ("(a + 0.4 * K) / (1.4 * K)", "[0.285714, 1)"),
])
def test_index_valued_decay_is_bounded(decay, want):
    text = XPOS_HEAD + "let gam[h: H, a: K] = (1 - 2 ^ (-5 - h)) * (a + 0.4 * K) / (1.4 * K)\n" + \
        f"A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * {decay}\n"
    r = compile_text(text, "x.dsf").report
    assert (r.eigen_bound, r.eigen_interval) == (Bound.STABLE.value, want), r.eigen_reason


def test_index_valued_decay_above_one_is_not_called_stable():
    """(a + K) / K is in [1, 2): the bound is finite now, and nothing below 1 is claimed ("not proven <= 1": a range
    from >= 0 that reaches above 1, as for A = I + beta k k^T, tests/analysis/test_delta_stability.py)."""
    text = XPOS_HEAD + "A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * (a + K) / K\n"
    r = compile_text(text, "x.dsf").report
    assert (r.eigen_bound, r.eigen_interval) == (Bound.UNBOUNDED.value, "[1, 2)"), r.eigen_reason


# ---- L2-normalised keys (dsfc/codegen/printers.py, _l2_norm; dsfc/runtime/features.py, l2_norm): DeltaNet's
# k = kr / sqrt(sum(kr^2)) squared kr first, 0 in fp32 once |kr| < 1e-19, so inputs of 1e-25 gave 0 / 0 = NaN where
# float64's keys are unit vectors. sqrt(sum(x^2)) is now computed on x / max|x| (inv_l2_norm for
# its inverse, whose gradient stays finite). The spec has no eps (nor does the
# reference): an exactly-zero key is 0 / 0 in every backend, as written; a spec that wants fla's behaviour writes
# kr / sqrt(sum(kr^2) + eps) itself.
DN_DIMS = {"d": 8, "H": 2, "K": 4, "V": 4}


def test_generated_deltanet_norm_is_scaled():
    src = compile_text((SPECS / "deltanet.dsf").read_text(), "deltanet.dsf").source
    assert "from dsfc.runtime.features import inv_l2_norm" in src
    assert "k = kr * inv_l2_norm(" in src and "torch.rsqrt(" not in src.split("def _lets(")[1].split("return")[0]


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
def test_l2_normalised_keys_tiny_inputs_fp32(name):
    """Inputs of 1e-25: fp32 torch path vs float64. The keys and queries are unit vectors computed to fp32 rounding;
    y ~ 1e-25, compared relative to its own scale: ~1e-6 for O(T) sums. The gradients must be finite (they were NaN);
    their values are not compared here: the delta-rule backward multiplies two O(|u|) quantities, subnormal in fp32
    at |u| < 1e-19 (the u gradient is 2e-4 off at 1e-20, 0.9 at 1e-25; README, leftovers)."""
    b = compile_and_build((SPECS / f"{name}.dsf").read_text(), DN_DIMS, path=f"{name}.dsf")
    g = torch.Generator().manual_seed(0)
    u = 1e-25 * torch.randn(2, 12, 8, generator=g, dtype=F64)
    w = torch.randn(2, 12, 8, generator=g, dtype=F64)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    y32, g32 = output_and_grads(b.model, "torch", u, w, torch.float32)
    assert torch.isfinite(y32).all()
    assert (y32 - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
    assert all(torch.isfinite(x).all() for x in g32)


def test_zero_key_is_nan_in_reference_and_torch():
    """An exactly-zero input makes kr = 0: the spec's k = 0 / sqrt(0) is NaN in float64 and in fp32 alike (no
    silent eps). With ``check_finite`` on (the default) that NaN output of finite inputs is an error naming the step
    (test_user_hunt_12.py); off, it flows out as before."""
    b = compile_and_build((SPECS / "deltanet.dsf").read_text(), DN_DIMS, path="deltanet.dsf")
    u = torch.zeros(1, 3, 8, dtype=F64)
    for backend in ("reference", "torch"):
        b.model.backend = backend
        with pytest.raises(FloatingPointError, match=r"the output is NaN at \[batch, time, feature\] = \[0, 0, 0\]"):
            b.model(u)
    b.model.check_finite = False
    b.model.backend = "reference"
    with torch.no_grad():
        y64 = b.model(u)
        b.model.backend = "torch"
        y = b.model(u)
    assert torch.isnan(y64).all() and torch.isnan(y).all()
