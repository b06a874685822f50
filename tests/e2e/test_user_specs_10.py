"""A tenth new-spec hunt.

Found and fixed:
- A decay written as a power of a positive constant with a varying exponent, ``2 ^ (-softplus(z))`` (or ``10 ^
  (-x)``), was scanned by the log-space families as ``log(2 ^ (-softplus(z)))``: fp32 rounds the power to 0 once the
  exponent is below -149, the log is -inf and every gradient of the fp32 torch and Triton paths was NaN at inputs of
  scale 30 (float64's are finite). ``log_space.exact_log`` now takes ``log(c ^ p) = p log c`` for a positive constant
  c, as it took ``log(x ^ p) = p log x`` for an exp or a sigmoid x.
- A power of an integer constant with a varying exponent in a Triton kernel, ``1 - 10 ^ (-1 - s)`` (two EMA rates
  along a state axis), printed ``tl.exp(... * tl.log(10))``: ``tl.log`` of an integer literal is an int32 tensor, and
  the Triton path raised "numpy data itemsize (64 bits) exceeds dtype primitive_bitwidth (32 bits) for triton type
  int32" (the torch path was right). The Triton printer now prints a constant base's log, and any constant
  subexpression that is not a plain number (``log(3)``, ``sqrt(2)``), as its float value.
- A second ``state`` statement (a researcher porting a two-timescale EMA, or RWKV-4's num / den) got "only one state
  may be declared" and nothing more; it now hints at the DSF form, both stacked along an axis of one state (``state
  h[s: 2, ...]``), as ``TWO_RATES`` below does.

Found here, fixed by the twenty-seventh session (the algorithm, not the result): an out-projection folded into C,
``C[o, (h, a, b)] = W_O[o, h, b] * q[h, a]`` (the DSF's "absorb the output map into C"), has no output axis tied to a
state axis, so ``structure.split_outer`` gave up and the layer ran the elementwise diagonal scan over the whole H*K*V
state. ``ir/out_projection.py`` now applies such a projection after the chunked outer-product scan, as a post
(``FUSED_OUTPROJ``, against the reference and an independent implementation). Also seen and left: an
mLSTM with an un-stabilised exponential input gate overflows fp32 at inputs of scale 300 (float64 does not): the
spec's maths, not a rewrite dsfc could make without the max-stabiliser state. ``prev(x)`` at the first step of a fresh
sequence is ``x_0`` itself (documented), so RWKV-4's pre-update denominator written as ``prev(scan(..))`` is wrong at
t = 0; the spec here writes it from the scan itself.

Checked clean (each against an independent float64 implementation written here and against dsfc's reference
recurrence: forward with and without an initial state at T = 0, 1, 7 and a chunk-crossing T = 9 with chunks of 3,
batch 1 and 3, token-by-token step, gradients of the input, the initial state and every parameter, torch path and
Triton path interpreted on CPU): RWKV-5's per-key constant decay read before the update with the bonus u as an
input-dependent D, Lightning attention / TransNormer's constant per-head decay exp(-8 (h + 1) / H) with an SRMSNorm
post, MEGA's multi-dimensional damped EMA, a GLA-like gate 2 ^ (-softplus(z)) with a pow(sigmoid(z), 1 / 16) key
scale, a per-key decay written as 1 / (1 + exp(-z)) by hand, an mLSTM with an exponential input gate, a forget gate
exp(logsigmoid(.)) and the max(|q.n|, 1) normaliser post, RWKV-4's numerator read before the update with the bonus in
D and the denominator (scan - e^k) / w, Mamba-2 with G = 2 groups sharing B, C and A_log, S6 at d = 1, constants spelt
1.5e-3, 2E+1, .5, 5., 10 ^ -2, 2 ^ -1 ^ 2 through nested lets at d = 13, two EMAs stacked in one state, a chain of 40
lets. Odd dims: heads that do not divide the width are refused at compile time and by the constructor.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import math  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (BACKENDS, TRITON, F64, assert_grads_close, check_all_paths, check_backend,  # noqa: E402
                         compile_and_build, matvec, output_and_grads, rel_err)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

RWKV5 = """
model RWKV5 "RWKV-5 (Eagle): per-head per-key constant decay exp(-exp(w)), read before the update, bonus u in D"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_R[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w[h: H, a: K] = -1 + 0.5 * a - 0.3 * h
param bonus[h: H, a: K] = 0.5 - 0.2 * a
let r[h: H, a: K] = sum(m, W_R[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
readout pre
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(-exp(w[h, a]))
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * r[h, a]
D[(o, e), m] = sum(a, r[o, a] * bonus[o, a] * k[o, a]) * W_V[o, e, m]
"""

LIGHTNING = """
model Lightning "TransNormer / Lightning attention: constant per-head decay exp(-8 (h + 1) / H), SRMSNorm post"
dim d = 4
dim H = 3
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = silu(sum(m, W_Q[h, a, m] * u[m]))
let k[h: H, a: K] = silu(sum(m, W_K[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(-8 * (h + 1) / H)
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
post o[h: H, b: V] = y[h, b] / sqrt(sum(b2, y[h, b2] ^ 2) / V + 1e-6)
"""

MEGA = """
model MegaEMA "MEGA multi-dimensional damped EMA: h = (1 - alpha delta) h + alpha beta x, y = sum_j eta h, d = 5, n = 3"
dim d = 5
dim n = 3
input u[d]
state h[c: d, j: n]
output y[d]
param alpha_raw[d, n] ~ normal(0, 1)
param delta_raw[d, n] ~ normal(0, 1)
param beta[d, n] ~ normal(0, 1)
param eta[d, n] ~ normal(0, 1)
let al[c: d, j: n] = sigmoid(alpha_raw[c, j])
let dl[c: d, j: n] = sigmoid(delta_raw[c, j])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * (1 - al[c, j] * dl[c, j])
B[(c, j), m] = delta(c, m) * al[c, j] * beta[c, j]
C[o, (c, j)] = delta(o, c) * eta[c, j]
"""

GATELOOP_POW2 = """
model Pow2Gate "GLA-like per-key gate written as 2 ^ (-softplus(z)) and a pow(sigmoid(z), 1 / 16) input scale"
dim d = 3
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_g[H, K, d] ~ normal(0, 1)
let z[h: H, a: K] = sum(m, W_g[h, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * 2 ^ (-softplus(z[h, a]))
B[(h, a, b), m] = pow(sigmoid(z[h, a]), 1 / 16) * sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

MANUAL_SIGMOID = """
model ManualSigmoid "per-key decay written as 1 / (1 + exp(-z)) by hand, scalar gate exp(logsigmoid(z))"
dim d = 3
dim H = 2
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_g[H, K, d] ~ normal(0, 1)
let z[h: H, a: K] = sum(m, W_g[h, a, m] * u[m]) + 2
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) / (1 + exp(-z[h, a]))
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

MLSTM_EXP = """
model MLSTMExp "mLSTM: exponential input gate, forget gate exp(logsigmoid(f)), normaliser scan with max(|n.q|, 1)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_i[H, d] ~ normal(0, 0.3)
param w_f[H, d] ~ normal(0, 0.3)
param b_f[h: H] = 3 + h
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m]) / sqrt(K)
let ig[h: H] = exp(sum(m, w_i[h, m] * u[m]))
let fg[h: H] = exp(logsigmoid(sum(m, w_f[h, m] * u[m]) + b_f[h]))
let n[h: H, a: K] = scan(fg[h], ig[h] * k[h, a])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * fg[h]
B[(h, a, b), m] = ig[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
post o[h: H, b: V] = y[h, b] / max(abs(sum(a, q[h, a] * n[h, a])), 1)
"""

RWKV4_PRE = """
model RWKV4Pre "RWKV-4 numerator as the state read before the update, bonus in D, denominator from a scan in a post"
dim d = 4
input u[d]
state num[c: d]
output y[d]
param W_k[d, d] ~ normal(0, 0.5)
param W_v[d, d] ~ normal(0, 0.5)
param wd[c: d] = -0.5 + 0.3 * c
param bonus[c: d] = 0.3
let k[c: d] = sum(m, W_k[c, m] * u[m])
let w[c: d] = exp(-exp(wd[c]))
let den[c: d] = scan(w[c], exp(k[c]))
let den_prev[c: d] = (den[c] - exp(k[c])) / w[c]
readout pre
A[c, c2] = delta(c, c2) * w[c]
B[c, m] = exp(k[c]) * W_v[c, m]
C[o, c] = delta(o, c)
D[o, m] = exp(bonus[o] + k[o]) * W_v[o, m]
post o[c: d] = y[c] / (den_prev[c] + exp(bonus[c] + k[c]))
"""

FUSED_OUTPROJ = """
model FusedOutProj "linear attention with a per-head decay and the out-projection folded into C: y = W_O (q^T S)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[d]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_O[d, H, V] ~ normal(0, 1)
param w_g[H, d] ~ normal(0, 1)
let g[h: H] = sigmoid(sum(m, w_g[h, m] * u[m]) + 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[o, (h, a, b)] = W_O[o, h, b] * sum(m, W_Q[h, a, m] * u[m])
"""

SSD_GROUP_A = """
model SSDGroupA "Mamba-2 with G = 2 groups of R = 3 heads sharing B, C and A_log, dt per head, head dim 2, n = 2"
dim G = 2
dim R = 3
dim H = G * R
dim P = 2
dim n = 2
dim d = 5
input u[d]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[g: G] = log(1 + g)
param W_x[H, P, d] ~ normal(0, 0.5)
param W_dt[H, d] ~ normal(0, 0.5)
param dt_bias[H] ~ dt_bias(0.01, 0.1)
param W_B[G, n, d] ~ normal(0, 0.5)
param W_C[G, n, d] ~ normal(0, 0.5)
param D[H] = 1
let x[h: H, p: P] = sum(m, W_x[h, p, m] * u[m])
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]) + dt_bias[h])
let Bm[g: G, j: n] = sum(m, W_B[g, j, m] * u[m])
let Cm[g: G, j: n] = sum(m, W_C[g, j, m] * u[m])
drive x
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h // R]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[h // R, j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[o // R, j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
"""

S6_D1 = """
model S6D1 "S6 with a single channel d = 1 and n = 5"
dim d = 1
dim n = 5
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param w_dt[d, d] ~ normal(0, 1)
param b_dt[d] ~ dt_bias(0.001, 0.1)
param W_B[n, d] ~ normal(0, 1)
param W_C[n, d] ~ normal(0, 1)
param D[d] = 1
let dt[c: d] = softplus(sum(k, w_dt[c, k] * u[k]) + b_dt[c])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * dt[c] * sum(m, W_B[j, m] * u[m])
C[o, (c, j)] = delta(o, c) * sum(m, W_C[j, m] * u[m])
D[o, k] = delta(o, k) * D[k]
"""

CONSTANTS = """
model Constants "odd constant spellings: 1.5e-3, 2E+1, .5, 5., 10 ^ -2, 2 ^ -1 ^ 2, nested lets, d = 13"
dim d = 13
input u[d]
state h[c: d]
output y[d]
param w[d] ~ normal(0, 1E-1)
param s[c: d] = .5 + c * 1.5e-3
let c1 = 2E+1 * 10 ^ -2
let c2 = c1 * 5. / 2 ^ -1 ^ 2
let c3 = (c2 - c1) * 1e0
let g[c: d] = sigmoid(s[c] * c3 + w[c] * u[c])
A[c, c2x] = delta(c, c2x) * g[c]
B[c, m] = delta(c, m) * (1 - g[c]) * 2.5E-1
C[o, c] = delta(o, c) * c3
"""

TWO_RATES = """
model TwoRates "two EMAs per channel (rates 0.1, 0.01) stacked along an axis of one state, B scaled by sqrt(2) / log(3)"
dim d = 5
input u[d]
state h[s: 2, c: d]
output y[d]
param W_in[2, d, d] ~ normal(0, 0.5)
param mix[s: 2] = 1 - 2 * s
A[(s, c), (s2, c2)] = delta(s, s2) * delta(c, c2) * (1 - 10 ^ (-1 - s))
B[(s, c), m] = 10 ^ (-1 - s) * W_in[s, c, m] * sqrt(2) / log(3)
C[o, (s, c)] = delta(o, c) * mix[s]
"""

LET_CHAIN = "\n".join(
    ['model LetChain "a decay behind a chain of 40 lets, each 0.9 times the last plus 0.01 i"', "dim d = 3",
     "input u[d]", "state h[c: d]", "param w[d] ~ normal(0, 1)", "let l0[c: d] = w[c] * u[c]"]
    + [f"let l{i}[c: d] = 0.9 * l{i - 1}[c] + 0.01 * {i}" for i in range(1, 40)]
    + ["A[c, c2] = delta(c, c2) * sigmoid(l39[c])", "B[c, m] = delta(c, m)", "C[o, c] = delta(o, c)"]) + "\n"

CASES = {
    "rwkv5": (RWKV5, Family.CHUNKED_OUTER),
    "lightning": (LIGHTNING, Family.CHUNKED_OUTER),
    "mega": (MEGA, Family.DIAGONAL_SCAN),
    "gateloop_pow2": (GATELOOP_POW2, Family.CHUNKED_OUTER),
    "manual_sigmoid": (MANUAL_SIGMOID, Family.CHUNKED_OUTER),
    "mlstm_exp": (MLSTM_EXP, Family.CHUNKED_OUTER),
    "rwkv4_pre": (RWKV4_PRE, Family.DIAGONAL_SCAN),
    # the out-projection in C is applied after the chunked scan (ir/out_projection.py; see the docstring)
    "fused_outproj": (FUSED_OUTPROJ, Family.CHUNKED_OUTER),
    "ssd_group_a": (SSD_GROUP_A, Family.CHUNKED_OUTER),
    "s6_d1": (S6_D1, Family.DIAGONAL_SCAN),
    "constants": (CONSTANTS, Family.DIAGONAL_SCAN),
    "two_rates": (TWO_RATES, Family.DIAGONAL_SCAN),
    "let_chain": (LET_CHAIN, Family.DIAGONAL_SCAN),
}


# -- independent float64 implementations: plain loops over time, from the model's parameters (by spec name) ---------

def _rwkv5(P, u):
    S = u.new_zeros(u.shape[0], *P["W_R"].shape[:2], P["W_V"].shape[1])
    w = torch.exp(-torch.exp(P["w"]))
    ys = []
    for t in range(u.shape[1]):
        r, k, v = matvec(P["W_R"], u[:, t]), matvec(P["W_K"], u[:, t]), matvec(P["W_V"], u[:, t])
        kv = k[..., None] * v[..., None, :]
        ys.append(torch.einsum("bha,bhav->bhv", r, S + P["bonus"][None, :, :, None] * kv))  # read before the update
        S = w[None, :, :, None] * S + kv
    return torch.stack(ys, 1)


def _lightning(P, u):
    H = P["W_Q"].shape[0]
    lam = torch.exp(-8 * torch.arange(1, H + 1, dtype=F64) / H)
    S = u.new_zeros(u.shape[0], H, P["W_Q"].shape[1], P["W_V"].shape[1])
    ys = []
    for t in range(u.shape[1]):
        q = torch.nn.functional.silu(matvec(P["W_Q"], u[:, t]))
        k = torch.nn.functional.silu(matvec(P["W_K"], u[:, t]))
        S = lam[None, :, None, None] * S + k[..., None] * matvec(P["W_V"], u[:, t])[..., None, :]
        y = torch.einsum("bha,bhav->bhv", q, S)
        ys.append(y / torch.sqrt((y ** 2).mean(-1, keepdim=True) + 1e-6))
    return torch.stack(ys, 1)


def _mega(P, u):
    al, dl = torch.sigmoid(P["alpha_raw"]), torch.sigmoid(P["delta_raw"])
    h = u.new_zeros(u.shape[0], *al.shape)
    ys = []
    for t in range(u.shape[1]):
        h = (1 - al * dl) * h + al * P["beta"] * u[:, t, :, None]
        ys.append((P["eta"] * h).sum(-1))
    return torch.stack(ys, 1)


def _gated_outer(u, decay, key, value, query):
    """S = decay * S + key value^T per head, y = query^T S; the callables take u_t [B, d]."""
    S, ys = None, []
    for t in range(u.shape[1]):
        kv = key(u[:, t])[..., None] * value(u[:, t])[..., None, :]
        S = kv if S is None else decay(u[:, t])[..., None] * S + kv
        ys.append(torch.einsum("bha,bhav->bhv", query(u[:, t]), S))
    return torch.stack(ys, 1)


def _gateloop_pow2(P, u):
    z = lambda x: matvec(P["W_g"], x)  # noqa: E731
    return _gated_outer(u, lambda x: 2.0 ** (-torch.nn.functional.softplus(z(x))),
                        lambda x: torch.sigmoid(z(x)) ** (1 / 16) * matvec(P["W_K"], x),
                        lambda x: matvec(P["W_V"], x), lambda x: matvec(P["W_Q"], x))


def _manual_sigmoid(P, u):
    return _gated_outer(u, lambda x: torch.sigmoid(matvec(P["W_g"], x) + 2), lambda x: matvec(P["W_K"], x),
                        lambda x: matvec(P["W_V"], x), lambda x: matvec(P["W_Q"], x))


def _mlstm_exp(P, u):
    K = P["W_Q"].shape[1]
    S, n, ys = 0, 0, []
    for t in range(u.shape[1]):
        x = u[:, t]
        q, k, v = matvec(P["W_Q"], x), matvec(P["W_K"], x) / math.sqrt(K), matvec(P["W_V"], x)
        ig = torch.exp(matvec(P["w_i"], x))
        fg = torch.sigmoid(matvec(P["w_f"], x) + P["b_f"])
        S = fg[..., None, None] * S + (ig[..., None] * k)[..., None] * v[..., None, :]
        n = fg[..., None] * n + ig[..., None] * k
        den = torch.clamp((q * n).sum(-1).abs(), min=1)
        ys.append(torch.einsum("bha,bhav->bhv", q, S) / den[..., None])
    return torch.stack(ys, 1)


def _rwkv4_pre(P, u):
    w = torch.exp(-torch.exp(P["wd"]))
    num, den, ys = 0, 0, []
    for t in range(u.shape[1]):
        k, v = matvec(P["W_k"], u[:, t]), matvec(P["W_v"], u[:, t])
        cur = torch.exp(P["bonus"] + k)
        ys.append((num + cur * v) / (den + cur))  # RWKV-4's wkv: the past plus the bonused current token
        num, den = w * num + torch.exp(k) * v, w * den + torch.exp(k)
    return torch.stack(ys, 1)


def _fused_outproj(P, u):
    y = _gated_outer(u, lambda x: torch.sigmoid(matvec(P["w_g"], x) + 1)[..., None], lambda x: matvec(P["W_K"], x),
                     lambda x: matvec(P["W_V"], x), lambda x: matvec(P["W_Q"], x))
    return torch.einsum("ohv,bthv->bto", P["W_O"], y)


def _ssd_group_a(P, u):
    G, n = P["W_B"].shape[:2]
    H = P["W_x"].shape[0]
    grp = torch.arange(H) // (H // G)
    S, ys = 0, []
    for t in range(u.shape[1]):
        x = matvec(P["W_x"], u[:, t])  # [B, H, P]
        dt = torch.nn.functional.softplus(matvec(P["W_dt"], u[:, t]) + P["dt_bias"])
        Bm, Cm = matvec(P["W_B"], u[:, t])[:, grp], matvec(P["W_C"], u[:, t])[:, grp]  # [B, H, n]
        a = torch.exp(-dt * torch.exp(P["A_log"][grp]))
        S = a[..., None, None] * S + (dt[..., None] * x)[..., None] * Bm[:, :, None, :]
        ys.append(torch.einsum("bhpj,bhj->bhp", S, Cm) + P["D"][:, None] * x)
    return torch.stack(ys, 1)


def _s6_d1(P, u):
    h, ys = 0, []
    for t in range(u.shape[1]):
        x = u[:, t]  # [B, 1]
        dt = torch.nn.functional.softplus(x * P["w_dt"][0, 0] + P["b_dt"][0])  # [B, 1]
        h = torch.exp(-dt * torch.exp(P["A_log"][0])) * h + dt * matvec(P["W_B"], x) * x
        ys.append((h * matvec(P["W_C"], x)).sum(-1, keepdim=True) + P["D"] * x)
    return torch.stack(ys, 1)


def _constants(P, u):
    c3 = 1.8  # c1 = 20 * 0.01, c2 = c1 * 5 / 2^(-1) = 2, c3 = c2 - c1
    h, ys = 0, []
    for t in range(u.shape[1]):
        g = torch.sigmoid(P["s"] * c3 + P["w"] * u[:, t])
        h = g * h + (1 - g) * 0.25 * u[:, t]
        ys.append(c3 * h)
    return torch.stack(ys, 1)


def _two_rates(P, u):
    h, ys = 0, []
    rate = torch.tensor([0.1, 0.01], dtype=F64)[:, None]
    for t in range(u.shape[1]):
        h = (1 - rate) * h + rate * matvec(P["W_in"], u[:, t]) * math.sqrt(2) / math.log(3)  # [B, 2, d]
        ys.append(h[:, 0] - h[:, 1])
    return torch.stack(ys, 1)


def _let_chain(P, u):
    h, ys = 0, []
    for t in range(u.shape[1]):
        x = P["w"] * u[:, t]
        for i in range(1, 40):
            x = 0.9 * x + 0.01 * i
        h = torch.sigmoid(x) * h + u[:, t]
        ys.append(h)
    return torch.stack(ys, 1)


INDEPENDENT = {"rwkv5": _rwkv5, "lightning": _lightning, "mega": _mega, "gateloop_pow2": _gateloop_pow2,
               "manual_sigmoid": _manual_sigmoid, "mlstm_exp": _mlstm_exp, "rwkv4_pre": _rwkv4_pre,
               "fused_outproj": _fused_outproj, "ssd_group_a": _ssd_group_a, "s6_d1": _s6_d1,
               "constants": _constants, "two_rates": _two_rates, "let_chain": _let_chain}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_an_independent_implementation(name):
    """The module's forward (torch and, where installed, Triton) and dsfc's reference recurrence against a loop
    written here from the model's own definition, at T = 1, 9 and batch 1, 3 from a zero state."""
    text, _ = CASES[name]
    built = compile_and_build(text, path=f"{name}.dsf")
    gen = torch.Generator().manual_seed(1)
    P = built.params()
    for b, t in ((1, 1), (3, 9)):
        u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
        want = INDEPENDENT[name](P, u).reshape(b, t, -1)
        y_ref, _ = built.reference(u)
        assert rel_err(y_ref, want) < 1e-10, ("reference", b, t)
        for backend in BACKENDS:
            built.model.backend = backend
            with torch.no_grad():
                assert rel_err(built.model(u), want) < 1e-8, (backend, b, t)


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    """torch (forward at T = 1, 7 and batch 1, 3, step, gradients; T = 0 at batch 3) and Triton from an initial
    state, and for the chunked families the torch path with chunks of 3 steps (T = 9 crosses chunk boundaries)."""
    text, family = CASES[name]
    built = compile_and_build(text, path=f"{name}.dsf")
    check_all_paths(built, family)


def test_constants_spelt_oddly_initialise_as_written():
    """.5 + c * 1.5e-3 and normal(0, 1E-1): the values a reader of the spec expects, not computed by dsfc."""
    built = compile_and_build(CONSTANTS, path="constants.dsf")
    P = built.params()
    assert torch.allclose(P["s"], 0.5 + torch.arange(13, dtype=F64) * 1.5e-3, rtol=0, atol=1e-15)
    assert 0.01 < P["w"].std().item() < 0.3


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_constant_base_power_decay_keeps_fp32_gradients_finite(backend):
    """2 ^ (-softplus(z)) at inputs of scale 30 and 300: the fp32 log of the rounded-to-0 power was -inf and every
    gradient NaN; now the fp32 outputs and gradients match float64's (to the largest gradient's scale)."""
    if backend == "triton" and not TRITON:
        pytest.skip("triton not installed")
    built = compile_and_build(GATELOOP_POW2, path="gateloop_pow2.dsf")
    gen = torch.Generator().manual_seed(3)
    for scale in (30.0, 300.0):
        u = scale * torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
        w = torch.randn(2, 9, built.d_out(), generator=gen, dtype=F64)
        y64, g64 = output_and_grads(built.model, "torch", u, w, dtype=F64)
        y32, g32 = output_and_grads(built.model, backend, u, w, dtype=torch.float32)
        built.model.double()
        assert rel_err(y32, y64) < 1e-5, scale
        assert_grads_close(g32, g64, 1e-4)


def test_a_second_state_is_refused_with_the_stacked_form_as_hint():
    from dsfc.lang.errors import SpecErrors

    text = TWO_RATES.replace("state h[s: 2, c: d]", "state h[c: d]\nstate g[c: d]")
    with pytest.raises(SpecErrors) as info:
        compile_text(text, "x.dsf")
    out = info.value.render()
    assert "only one state may be declared (first at line 5)" in out
    assert "hint: stack them along an axis of one state, e.g. state h[s: 2, ...]" in out


def test_heads_that_do_not_divide_the_width_are_refused():
    """At compile time (a derived head dim d // H at the defaults) and by the constructor (at dims given to it)."""
    from dsfc.lang.errors import SpecErrors

    split = RWKV5.replace("dim d = 5\ndim H = 2", "dim d = 13\ndim H = 2\ndim P = d // H")
    with pytest.raises(SpecErrors) as info:
        compile_text(split, "x.dsf")
    assert "dim 'P': 13 // 2 is not exact (13 is not a multiple of 2)" in info.value.render()
    ok = compile_and_build(split.replace("dim d = 13", "dim d = 12"), path="split.dsf")
    with pytest.raises(ValueError, match=r"d=13"):
        type(ok.model)(d=13, H=2)


def test_a_long_let_chain_compiles_fast():
    t0 = time.perf_counter()
    compile_text(LET_CHAIN, "chain.dsf")
    assert time.perf_counter() - t0 < 20


TWO_LITERAL_AXES = """
model TwoLit "dense 4 x 4 blocks over two literal state axes of 2 (a 2 x 2 grid of coupled entries per channel)"
dim d = 3
input u[d]
state h[c: d, i: 2, j: 2]
output y[d]
param M[c: d, i: 2, j: 2, i2: 2, j2: 2] ~ normal(0, 0.3)
param W[c: d, i: 2, j: 2] ~ normal(0, 1)
A[(c, i, j), (c2, i2, j2)] = delta(c, c2) * 0.5 * tanh(M[c, i, j, i2, j2] + u[c])
B[(c, i, j), k] = delta(c, k) * W[c, i, j]
C[o, (c, i, j)] = delta(o, c)
"""


def test_small_blocks_over_two_literal_axes_take_the_chunked_block_scan():
    """Blocks of literal size <= 4 run block_scan on the torch path whether one axis or a product of literal axes
    spans them (2 x 2 = 4 here); checked against the reference at a T that crosses its chunks."""
    built = compile_and_build(TWO_LITERAL_AXES, path="two_lit.dsf")
    assert built.result.structure.family == Family.DENSE_SCAN
    assert "block_scan(_blocks" in built.result.source
    check_all_paths(built, Family.DENSE_SCAN)
    check_backend(built, "torch", ((2, 30),), steps=False)
