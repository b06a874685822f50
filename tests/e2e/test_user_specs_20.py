"""A twentieth new-spec hunt: HGRN2 with a per-head lower bound on its forget gate, an H3-style shift SSM with learned
subdiagonal taps (A nilpotent), a gated linear recurrence with every dim 1, GLA with a low-rank gate through
logsigmoid / 16 and a per-head temperature in its feature map, a Liquid-S4-like input-dependent rank-1 term on a
diagonal A with a full learned D, mLSTM without the max-stabiliser (normaliser as a state column, divided out in a
post), and DeltaNet with L2-normalised q and k, a per-head temperature on q and a full D; unusual spellings (extra
parentheses, comments on every line, odd whitespace, ``.5``, ``2.``, ``5e-1``, ``1e-3``, several statements on one
line, ``pow(1 + exp(-x), -1)`` for a sigmoid, ``(+x) ** 1``); the liquid time-constant cell, not a DSF.

Checked (each against an independent float64 implementation written here from the model's equations, not from
dsfc's reference): forward at T = 0, 1, 7 and 9 on the torch path and at T = 0 and 9 on the Triton path
(interpreted), batch 1 and 3, from zero and from an initial state; token-by-token step; gradients of the input and
every parameter on the torch path; against dsfc's reference through ``check_all_paths`` (final state, step,
gradients of u, h0 and the parameters, Triton from an initial state, chunks of 3 for the chunked families); the
family and eigenvalue bound of ``dsfc analyze``, a claimed bound checked on the module's own A. Every spec passes
``dsfc check``. Errors: the LTC cell's gate reads the state, refused at its line with the hint.

Found and fixed:
- ``param lam[n] = log(j + 1)`` (an initialiser using the index of an anonymous axis) said only "unknown name 'j'";
  the error now carries a hint naming the axis: ``param lam[j: n]`` (lang.check, for every param initialiser with
  an anonymous axis and an unknown name that is not a near-miss of a declared one).

Left weaker than the truth (no false claim): the Liquid-S4-like A = diag(e^(-dt lam)) + dt tanh(p.u) b c^T is
"unknown" (dense; its eigenvalues depend on b.c, and no bound holds for every parameter value, so "unknown" is
right). No other finding: every spec matched its independent implementation on every path. Probed by hand with
clear errors and no change: ``A[(i), (k)]`` on a two-axis state (hint ``(c, j)``), Mamba-2's group index written
``Bg[k / (H / G), j]`` (then two bare errors; now one, its hint ``k // (H // G)``), ``dim d = 2.`` (accepted as 2).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, case_builds, check_all_paths, spec_hunt_tests,  # noqa: E402
                         stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.lang.errors import SpecErrors  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

HGRN2LB = """
model HGRN2LB "HGRN2 per head: S = diag(f) S + (1 - f) v^T, f = lb_h + (1 - lb_h) sigmoid(.), lb_h = h / H"
# comments everywhere, odd whitespace, and constants written .5, 2., 1e-3
dim d = 4      # width
dim H = 2      # heads: head h has the lower bound h / H
dim K = 3
dim V = 2
input u[d]   # the input
state S[h: H,   a: K,
        b: V]           # outer-product state
output y[h: H, b: V]
param W_f[H, K, d] ~ normal(0., .5)     # forget-gate projection
param b_f[H, K] = 1e-3
param W_q[H, K, d] ~ normal(0, 5e-1)
param W_v[H, V, d] ~ normal(0, .5)
let lb[h: H] = ((h) / (H))                          # HGRN's lower bound, here per head
let f[h: H, a: K] = (lb[h] + ((1 - lb[h]) * sigmoid( sum(m, W_f[h, a, m] * u[m]) + b_f[h, a] )))
let q[h: H, a: K] = silu(sum(m, W_q[h, a, m] * u[m])) # query
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * (f[h, a])   # diagonal decay
B[(h, a, b), m] = (1 - f[h, a]) * W_v[h, b, m]   # key = 1 - f
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / (2. * 1)
"""

SHIFT = """
model ShiftScale "H3-style shift SSM with learned subdiagonal taps: A nilpotent, y = sum_j w_j (prod s) u_(t-j)"
dim d = 3
dim n = 4
input u[d]
state x[c: d, j: n]
output y[d]
param s_p[d, n] ~ normal(0, 1)
param w[d, n] ~ normal(0, 0.5)
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2 + 1) * tanh(s_p[c, j])
B[(c, j), m] = delta(c, m) * delta(j, 0)
C[o, (c, j)] = delta(o, c) * w[c, j]
D[o, m] = delta(o, m)
"""

ALL_ONE = """
model AllOne "GLA with every dim 1: a scalar gated linear recurrence written in the tensor form"
dim d = 1   dim H = 1   dim K = 1   dim V = 1      # several statements on one line
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_a[H, K, d] ~ normal(0, 1)
param W_k[H, K, d] ~ normal(0, 1)
param W_v[H, V, d] ~ normal(0, 1)
param W_q[H, K, d] ~ normal(0, 1)
param Dm[1, 1] ~ normal(0, 1)
let al[h: H, a: K] = pow(1 + exp(-sum(m, W_a[h, a, m] * u[m])), -1)       # sigmoid, spelt out
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = sum(m2, W_k[h, a, m2] * u[m2]) * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * (+sum(m, W_q[h, a, m] * u[m])) ** 1
D[(o, e), m] = Dm[o + e, m]
"""

LOWRANK_GLA = """
model LowRankGLA "GLA: gate alpha = exp(logsigmoid(W2 tanh(W1 u) + b) / 16), per-head temperature in the feature map"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
dim R = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W1[R, d] ~ normal(0, 0.5)
param W2[H, K, R] ~ normal(0, 0.5)
param bg[H, K] ~ normal(0, 1)
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param tau_p[H] ~ normal(0, 0.5)
let z[r: R] = tanh(sum(m, W1[r, m] * u[m]))
let al[h: H, a: K] = exp(logsigmoid(sum(r, W2[h, a, r] * z[r]) + bg[h, a]) / 16)
let tau[h: H] = exp(tau_p[h])
let q[h: H, a: K] = elu(sum(m, W_q[h, a, m] * u[m]) / tau[h]) + 1
let k[h: H, a: K] = elu(sum(m, W_k[h, a, m] * u[m]) / tau[h]) + 1
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = k[h, a] * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

LIQUID = """
model LiquidFullD "Liquid-S4-like: A = diag(exp(dt lam)) + dt tanh(p.u) b c^T (input-dependent rank 1), full learned D"
dim d = 3
dim n = 4
input u[d]
state x[n]
output y[d]
param lam_log[j: n] = log(j + 1)
param W_dt[d] ~ normal(0, 0.5)
param bv[n] ~ normal(0, 0.5)
param cv[n] ~ normal(0, 0.5)
param pw[d] ~ normal(0, 0.5)
param W_B[n, d] ~ normal(0, 0.5)
param W_C[d, n] ~ normal(0, 0.5)
param Dm[d, d] ~ normal(0, 0.5)
let dt = softplus(sum(m, W_dt[m] * u[m]))
let g = tanh(sum(m, pw[m] * u[m]))
A[i, j] = delta(i, j) * exp(-dt * exp(lam_log[i])) + dt * g * bv[i] * cv[j]
B[i, m] = dt * W_B[i, m]
C[o, i] = W_C[o, i]
D[o, m] = Dm[o, m]
"""

MLSTM_NS = """
model MLSTMNoStab "mLSTM without the max-stabiliser: C = f C + i v k^T, n = f n + i k, h = C q / max(|n.q|, 1)"
dim d = 4
dim H = 2
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V + 1]      # b = V is the normaliser n
output y[h: H, b: V + 1]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param w_i[H, d] ~ normal(0, 0.3)
param w_f[H, d] ~ normal(0, 0.3)
param b_f[H] = 3
let ig[h: H] = exp(sum(m, w_i[h, m] * u[m]))            # exponential input gate, unstabilised
let fg[h: H] = sigmoid(sum(m, w_f[h, m] * u[m]) + b_f[h])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m]) / sqrt(K)
let v[h: H, b: V + 1] = sum(m, W_v[h, b % V, m] * u[m]) * (1 - delta(b, V)) + delta(b, V)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * fg[h]
let x[h: H, a: K, b: V + 1] = ig[h] * k[h, a] * v[h, b]
drive x
B[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_q[h, a, m] * u[m])
post o[h: H, b: V] = y[h, b + 0] / max(abs(y[h, V]), 1)
"""

DELTA_TEMP = """
model DeltaTemp "DeltaNet, L2-normalised q and k, beta = sigmoid(.), a learned per-head temperature on q.k, full D"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param w_b[H, d] ~ normal(0, 0.5)
param t_log[h: H] = log(2 + h)              # temperature per head, initialised 2, 3
param Dm[H * V, d] ~ normal(0, 0.3)
let kr[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2) + 1e-6)
let qr[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let q[h: H, a: K] = exp(t_log[h]) * qr[h, a] / sqrt(sum(a2, qr[h, a2] ^ 2) + 1e-6)
let be[h: H] = sigmoid(sum(m, w_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - be[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = be[h] * k[h, a] * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
D[(o, e), m] = Dm[o * V + e, m]
"""

LTC = """
model LTC "liquid time-constant cell: x = x + dt (-(1/tau + f) x + f A_), f = sigmoid(W x + U u): f reads the state"
dim d = 3
dim n = 4
input u[d]
state x[n]
output y[n]
param W[n, n] ~ normal(0, 0.5)
param U[n, d] ~ normal(0, 0.5)
param tau[n] = 1
param Ab[n] ~ normal(0, 1)
param dt = 0.1
let f[i: n] = sigmoid(sum(j, W[i, j] * x[j]) + sum(m, U[i, m] * u[m]))
A[i, j] = delta(i, j) * (1 - dt * (1 / tau[i] + f[i]))
B[i, m] = dt * f[i] * Ab[i] * delta(m, 0)
C[o, i] = delta(o, i)
"""
CASES = {
    "hgrn2lb": (HGRN2LB, Family.CHUNKED_OUTER),
    "shift": (SHIFT, Family.DENSE_SCAN),
    "allone": (ALL_ONE, Family.CHUNKED_OUTER),
    "lrgla": (LOWRANK_GLA, Family.CHUNKED_OUTER),
    "liquid": (LIQUID, Family.DENSE_SCAN),
    "mlstmns": (MLSTM_NS, Family.DIAGONAL_SCAN),
    "deltatemp": (DELTA_TEMP, Family.CHUNKED_DELTA),
}
sig, softplus, elu1 = torch.sigmoid, torch.nn.functional.softplus, (lambda x: torch.nn.functional.elu(x) + 1)


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d_in] and an initial state in the spec's layout (None: zero), and
# returns y [B, T, ...].

def _proj(W, x):
    """W [..., d] applied to x [B, d]: [B, ...]."""
    return torch.einsum("...m,bm->b...", W, x)


def _hgrn2lb(P, u, h0=None):
    # HGRN2 (Qin et al. 2024) per head: S = diag(f) S + (1 - f) v^T, y = q^T S (here / 2), the forget gate lower
    # bounded as in HGRN, f = lb + (1 - lb) sigmoid(W_f u + b_f), with lb = h / H for head h
    H, K, _ = P["W_f"].shape
    lb = torch.arange(H, dtype=F64)[:, None] / H
    S, ys = (u.new_zeros(u.shape[0], H, K, P["W_v"].shape[1]) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        f = lb + (1 - lb) * sig(_proj(P["W_f"], ut) + P["b_f"])              # [B, H, K]
        S = f[..., None] * S + (1 - f)[..., None] * _proj(P["W_v"], ut)[:, :, None, :]
        ys.append(torch.einsum("bha,bhav->bhv", torch.nn.functional.silu(_proj(P["W_q"], ut)), S) / 2)
    return stack_steps(ys, u, H, P["W_v"].shape[1])


def _shift(P, u, h0=None):
    # a shift register per channel: x_0 = u, x_j = tanh(s_j) x_(j-1) from the step before, y = w . x + u
    s = torch.tanh(P["s_p"])
    x, ys = (u.new_zeros(u.shape[0], *s.shape) if h0 is None else h0), []
    for t in range(u.shape[1]):
        x = torch.cat([u[:, t, :, None], s[None, :, 1:] * x[:, :, :-1]], -1)
        ys.append((x * P["w"]).sum(-1) + u[:, t])
    return stack_steps(ys, u, s.shape[0])


def _allone(P, u, h0=None):
    # the scalar recurrence h = sigmoid(a u) h + (k u)(v u), y = (q u) h + D u (every weight a 1 x 1 x 1 tensor)
    a, k, v, q, D = (P[n].reshape(()) for n in ("W_a", "W_k", "W_v", "W_q", "Dm"))
    h, ys = (u.new_zeros(u.shape[0]) if h0 is None else h0.reshape(-1)), []
    for t in range(u.shape[1]):
        x = u[:, t, 0]
        h = sig(a * x) * h + k * x * v * x
        ys.append(q * x * h + D * x)
    return stack_steps(ys, u, 1)


def _lrgla(P, u, h0=None):
    # GLA (Yang et al. 2024) with the gate alpha = exp(logsigmoid(W2 tanh(W1 u) + b) / 16), i.e. sigmoid(.)^(1/16),
    # and feature maps elu(x / tau_h) + 1 on q and k with tau_h = exp(tau_p[h]): S = diag(alpha) S + k v^T, y = q^T S
    H, K, _ = P["W_q"].shape
    tau = torch.exp(P["tau_p"])[:, None]
    S, ys = (u.new_zeros(u.shape[0], H, K, P["W_v"].shape[1]) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        al = sig(_proj(P["W2"], torch.tanh(_proj(P["W1"], ut))) + P["bg"]) ** (1 / 16)
        k, q = elu1(_proj(P["W_k"], ut) / tau), elu1(_proj(P["W_q"], ut) / tau)
        S = al[..., None] * S + k[..., None] * _proj(P["W_v"], ut)[:, :, None, :]
        ys.append(torch.einsum("bha,bhav->bhv", q, S))
    return stack_steps(ys, u, H, P["W_v"].shape[1])


def _liquid(P, u, h0=None):
    # x = (diag(exp(-dt exp(lam))) + dt g b c^T) x + dt W_B u, dt = softplus(w . u), g = tanh(p . u); y = W_C x + D u
    n = P["bv"].shape[0]
    x, ys = (u.new_zeros(u.shape[0], n) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        dt, g = softplus(ut @ P["W_dt"]), torch.tanh(ut @ P["pw"])
        x = (torch.exp(-dt[:, None] * torch.exp(P["lam_log"])) * x
             + (dt * g)[:, None] * P["bv"] * (x @ P["cv"])[:, None] + dt[:, None] * ut @ P["W_B"].T)
        ys.append(x @ P["W_C"].T + ut @ P["Dm"].T)
    return stack_steps(ys, u, P["Dm"].shape[0])


def _mlstmns(P, u, h0=None):
    # mLSTM (Beck et al. 2024) without its max-stabiliser: C = f C + i k v^T, n = f n + i k with i = exp(w_i . u),
    # f = sigmoid(w_f . u + b_f), k = W_k u / sqrt(K); h = C^T q / max(|n . q|, 1). The state's last value column is n.
    H, K, _ = P["W_q"].shape
    V = P["W_v"].shape[1]
    C, nrm = u.new_zeros(u.shape[0], H, K, V), u.new_zeros(u.shape[0], H, K)
    if h0 is not None:
        C, nrm = h0[..., :V], h0[..., V]
    ys = []
    for t in range(u.shape[1]):
        ut = u[:, t]
        i, f = torch.exp(ut @ P["w_i"].T), sig(ut @ P["w_f"].T + P["b_f"])
        k, q = _proj(P["W_k"], ut) / K ** 0.5, _proj(P["W_q"], ut)
        C = f[..., None, None] * C + (i[..., None] * k)[..., None] * _proj(P["W_v"], ut)[:, :, None, :]
        nrm = f[..., None] * nrm + i[..., None] * k
        qn = (q * nrm).sum(-1).abs().clamp(min=1)
        ys.append(torch.einsum("bha,bhav->bhv", q, C) / qn[..., None])
    return stack_steps(ys, u, H, V)


def _deltatemp(P, u, h0=None):
    # DeltaNet (Schlag et al. 2021; Yang et al. 2024) with q, k L2-normalised (eps 1e-6 under the root), beta =
    # sigmoid(w_b . u), q scaled by the head's temperature exp(t_log): S = S - beta k (k^T S - v^T), y = q^T S + D u
    H, K, _ = P["W_q"].shape
    V = P["W_v"].shape[1]

    def l2(x):
        return x / ((x * x).sum(-1, keepdim=True) + 1e-6).sqrt()

    S, ys = (u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        k, q = l2(_proj(P["W_k"], ut)), torch.exp(P["t_log"])[:, None] * l2(_proj(P["W_q"], ut))
        be = sig(ut @ P["w_b"].T)[..., None, None]
        kS = torch.einsum("bha,bhav->bhv", k, S)
        S = S - be * k[..., None] * (kS - _proj(P["W_v"], ut))[:, :, None, :]
        ys.append(torch.einsum("bha,bhav->bhv", q, S) + (ut @ P["Dm"].T).reshape(-1, H, V))
    return stack_steps(ys, u, H, V)


INDEPENDENT = {"hgrn2lb": _hgrn2lb, "shift": _shift, "allone": _allone, "lrgla": _lrgla, "liquid": _liquid,
               "mlstmns": _mlstmns, "deltatemp": _deltatemp}
EIGEN = {"hgrn2lb": Bound.STABLE, "shift": Bound.STABLE, "allone": Bound.STABLE, "lrgla": Bound.STABLE,
         "liquid": Bound.UNKNOWN, "mlstmns": Bound.STABLE, "deltatemp": Bound.MARGINAL}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


# forward, gradients, every path against the reference, the structure report (dsf_testing.spec_hunt_tests)
(test_new_spec_matches_an_independent_implementation, test_new_spec_gradients_match_an_independent_implementation,
 test_new_spec_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built)


def test_the_shift_ssm_is_proved_nilpotent():
    """The shift register's A is strictly lower triangular on its tap axis: its eigenvalues are all 0, and the
    report says so (rather than "unknown" for a dense A)."""
    assert "lambda = 0 in [0, 0]" in _compiled("shift").report.eigen_reason, _compiled("shift").report.eigen_reason


def test_the_liquid_time_constant_cell_is_not_a_dsf():
    """The LTC cell's gate f = sigmoid(W x + U u) reads the state: refused at the read, with the hint."""
    with pytest.raises(SpecErrors) as err:
        compile_text(LTC, "ltc.dsf")
    text = err.value.render()
    assert "ltc.dsf:13:40: error: let 'f' reads the state 'x'" in text, text
    assert "a gate computed from the state has no DSF form" in text, text


def test_an_initialiser_reading_an_anonymous_axis_gets_a_hint():
    """The fix: ``param lam_log[n] = log(j + 1)`` (the axis left anonymous) said only "unknown name 'j'"; the hint
    now shows the declaration with the axis named after the index the initialiser used, and, with several anonymous
    axes, names them all. A near-miss of a declared name keeps its "did you mean" hint."""
    text = LIQUID.replace("param lam_log[j: n]", "param lam_log[n]")
    with pytest.raises(SpecErrors) as err:
        compile_text(text, "liq.dsf")
    out = err.value.render()
    assert "liq.dsf:8:24: error: unknown name 'j'" in out, out
    assert "hint: an initialiser sees only the param's named axes; to use the axis index, name it: " \
        "param lam_log[j: n]" in out, out
    text = LIQUID.replace("param Dm[d, d] ~ normal(0, 0.5)", "param Dm[d, d] = 0.1 * delta(o, m)")
    with pytest.raises(SpecErrors) as err:
        compile_text(text, "liq2.dsf")
    out = err.value.render()
    assert "name the axes: param Dm[i: d, j: d]" in out, out
    text = LIQUID.replace("param Dm[d, d] ~ normal(0, 0.5)", "param Dm[d, d] = 0.1 * lam_lo")
    with pytest.raises(SpecErrors) as err:
        compile_text(text, "liq3.dsf")
    assert "did you mean 'lam_log'?" in err.value.render(), err.value.render()
