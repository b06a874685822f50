"""A fifteenth new-spec hunt: mixtures of memories, Householder and oscillator transitions, Legendre memories,
power-law forgetting, Based's hybrid read and Mamba-3's trapezoid with RoPE.

Found and fixed:
- Mamba-3's trapezoidal rule with data-dependent RoPE, ``B u = dt (lam B_t x_t + (1 - lam) a B_(t-1) x_(t-1))``
  with x_t and x_(t-1) stacked on a drive axis r, ran the elementwise diagonal scan over all N state entries: the
  deltas over r contract the user's sum away, and B u reaches the structure analysis as two written-out outer
  products, which neither the one-product split nor the rank-sum split (``_rank_sum`` opens sums) took.
  ``structure._term_rank`` now reads a sum of R outer products as a rank-R input over a new axis r
  (``key[r] = sum_i delta(r, i) key_i``, value likewise): the chunked outer-product scan with R sub-steps.
- A negative constant raised to an integer power that is not a literal, LegT's ``(-1) ^ (i - j + 1)`` (the LMU),
  printed as ``-1 ** n`` on the torch path, which Python reads as ``-(1 ** n) = -1``: the module's A had the wrong
  sign in every entry with an even exponent (the reference was right). The torch printer parenthesises negative
  numbers under ``**``; the Triton printer, which took ``tl.log(-1)`` (NaN, and an int32 literal the interpreter
  refused), prints the sign ``1 - 2 (n mod 2)`` times ``b ^ n``.

Checked clean (each against an independent float64 implementation written here from the paper's equations, not from
dsfc's reference: forward at T = 0, 1 and 9 on the torch path, batch 1 and 3, from zero and, where the state is a
plain tensor, from an initial state; token-by-token step; gradients of the input and every parameter on the torch
path; against dsfc's reference recurrence through ``check_all_paths``: torch at T = 0, 1, 7 with step and gradients
of u, the initial state and every parameter, the Triton path (interpreted) from an initial state, chunks of 3 for
the chunked families; fp32 against float64 at input scales 1, 10 and 30 on the torch path and 30 on the Triton path;
the family and eigenvalue bound of ``dsfc analyze``, a claimed bound checked on the module's own A): Mixture-of-Memories
with soft routing (M = 3 memories, a max-shifted softmax router, per-memory decay, the read summed over memories), a
linear attention under PaTH's Householder transform ``I - be w w^T`` (erase direction w, write key k: the chunked
diagonal-plus-rank-1 scan), D-LinOSS (damped oscillators, IMEX; Jury proves ``|lambda| < 1``), QRNN fo-pooling
with width-2 window convs, the parallel LMU (LegT, Euler, dense readout), linear attention with power-law
forgetting ``(n_(t-1) / n_t) ^ al`` through a running count, Based (Taylor-2 linear attention plus a width-3
sliding-window softmax in a post, from window lets), Mamba-3's trapezoid with RoPE (the fix above), a MEGA-style
damped EMA (a scan let) feeding q and k of a gated linear attention, a liquid time-constant cell's fused solver,
and alternating-sign weights ``(-1) ^ c``, ``(-2) ^ (c % 2)`` in a diagonal spec (the printer fix above).

PaTH's ``I - be w w^T`` with ``be`` in (0, 2) and w L2-normalised with an epsilon was ``unknown``: its eigenvalue
``((1 - be) S + eps) / (S + eps)`` is a weighted mean of 1 - be and 1, which the prover now reads (``|lambda| <= 1``).
The power-law decay ``(n_prev / n) ^ al`` was ``not proven <= 1``: the prover now reads prev(n) / n for a running
sum n of terms >= 0 as the share prev(n) / (prev(n) + x), in [0, 1] (``|lambda| <= 1``; 1 at the first step).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import math  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, build, case_builds, check_all_paths, check_backend,  # noqa: E402
                         check_fp32_against_float64, check_grads_against_loop, rel_err, run_steps,
                         check_structure_report)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

MOM = """
model MoMSoft "Mixture-of-Memories, soft routing: S_m = al_m S_m + g_m k v^T, y = sum_m g_m q^T S_m, g = softmax(W_r u)"
dim d = 5
dim M = 3
dim K = 3
dim V = 2
input u[d]
state S[m: M, a: K, b: V]
output y[V]
param W_r[M, d] ~ normal(0, 0.5)
param W_a[M, d] ~ normal(0, 0.5)
param b_a[m: M] = 2 + m
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
let z[m: M] = sum(j, W_r[m, j] * u[j])
let zm = max(max(z[0], z[1]), z[2])
let ez[m: M] = exp(z[m] - zm)
let g[m: M] = ez[m] / sum(m2, ez[m2])
let al[m: M] = sigmoid(sum(j, W_a[m, j] * u[j]) + b_a[m])
let q[a: K] = sum(j, W_Q[a, j] * u[j])
let k[a: K] = sum(j, W_K[a, j] * u[j]) / sqrt(K)
A[(m, a, b), (m2, a2, b2)] = delta(m, m2) * delta(a, a2) * delta(b, b2) * al[m]
B[(m, a, b), j] = g[m] * k[a] * W_V[b, j]
C[e, (m, a, b)] = delta(e, b) * g[m] * q[a]
"""

PATH = """
model PaTHLinear "linear attention under PaTH's Householder transform: S = (I - be w w^T) S + k v^T, w L2-normalised"
dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_W[H, K, d] ~ normal(0, 0.5)
param W_b[H, d] ~ normal(0, 0.5)
let wr[h: H, a: K] = sum(m, W_W[h, a, m] * u[m])
let wn[h: H] = 1 / sqrt(sum(a, wr[h, a] ^ 2) + 1e-6)
let w[h: H, a: K] = wr[h, a] * wn[h]
let be[h: H] = 2 * sigmoid(sum(m, W_b[h, m] * u[m]))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m]) / sqrt(K)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - be[h] * w[h, a] * w[h, a2])
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

DLINOSS = """
model DLinOSS "D-LinOSS (damped LinOSS, IMEX): z = S (z - dt A x + dt B u), x = x + dt z, S = 1 / (1 + dt G)"
dim d = 2
dim P = 3
input u[d]
state s[c: P, r: 2]
output y[d]
param A_hat[P] ~ normal(0, 1)
param G_hat[P] ~ normal(0, 1)
param dt_hat[P] ~ normal(0, 1)
param W_B[P, d] ~ normal(0, 0.5)
param W_C[d, P] ~ normal(0, 0.5)
param D[d] ~ normal(0, 1)
# A in (0, 3.9) and dt in (0, 1) keep dt^2 A < 4: the paper's stable region; G > 0 damps (det S < 1)
let Ad[c: P] = 3.9 * sigmoid(A_hat[c])
let G[c: P] = softplus(G_hat[c])
let dt[c: P] = sigmoid(dt_hat[c])
let S[c: P] = 1 / (1 + dt[c] * G[c])
# r = 0: the velocity z, r = 1: the position x
A[(c, r), (c2, r2)] = delta(c, c2) * (delta(r, 0) * delta(r2, 0) * S[c]
    - delta(r, 0) * delta(r2, 1) * dt[c] * Ad[c] * S[c]
    + delta(r, 1) * delta(r2, 0) * dt[c] * S[c] + delta(r, 1) * delta(r2, 1) * (1 - dt[c] ^ 2 * Ad[c] * S[c]))
B[(c, r), m] = S[c] * dt[c] * (delta(r, 0) + delta(r, 1) * dt[c]) * W_B[c, m]
C[o, (c, r)] = delta(r, 1) * W_C[o, c]
D[o, m] = delta(o, m) * D[m]
"""

QRNN = """
model QRNN "QRNN fo-pooling: z, f, o from width-2 causal convs of u, c = f c + (1 - f) z, h = o c"
dim d = 4
dim E = 5
dim Kc = 2
input u[d]
state cell[E]
output y[E]
param W_z[E, d, Kc] ~ normal(0, 0.5)
param W_f[E, d, Kc] ~ normal(0, 0.5)
param W_o[E, d, Kc] ~ normal(0, 0.5)
param b_f[E] = 1
let us[m: d, k: Kc] = window(u[m])
let zt[c: E] = tanh(sum(m, sum(k, W_z[c, m, k] * us[m, k])))
let f[c: E] = sigmoid(sum(m, sum(k, W_f[c, m, k] * us[m, k])) + b_f[c])
let og[c: E] = sigmoid(sum(m, sum(k, W_o[c, m, k] * us[m, k])))
let x[c: E] = (1 - f[c]) * zt[c]
drive x
A[c, c2] = delta(c, c2) * f[c]
B[c, c2] = delta(c, c2)
C[o, c] = delta(o, c) * og[c]
"""

LMU = """
model LMUParallel "parallel LMU: a Legendre memory (LegT, order Q, window theta) per channel, Euler step, dense readout"
dim d = 3
dim Q = 4
dim p = 2
input u[d]
state m[c: d, i: Q]
output y[p]
param theta = 8
param W_o[p, d, Q] ~ normal(0, 0.5)
param D[p, d] ~ normal(0, 0.5)
# LegT (Voelker et al. 2019): A_ij = (2i + 1) (-1 if i < j else (-1)^(i - j + 1)), B_i = (2i + 1) (-1)^i, / theta
A[(c, i), (c2, i2)] = delta(c, c2) * (delta(i, i2) + (2 * i + 1) / theta
    * (-min(max(i2 - i, 0), 1) + (1 - min(max(i2 - i, 0), 1)) * (-1) ^ (i - i2 + 1)))
B[(c, i), k] = delta(c, k) * (2 * i + 1) * (-1) ^ i / theta
C[o, (c, i)] = W_o[o, c, i]
D[o, k] = D[o, k]
"""

POWLAW = """
model PowerLawLA "linear attention with power-law forgetting: S = (n_prev / n)^al S + k v^T, n = cumsum(1), al per head"
dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param al_p[h: H] = h - 0.5
let n[h: H] = cumsum(1 + 0 * h)
let n_prev[h: H] = prev(n[h])
let al[h: H] = softplus(al_p[h])
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * (n_prev[h] / n[h]) ^ al[h]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

BASED = """
model BasedSWA "Based: Taylor-2 linear attention (normalised) plus a width-3 sliding-window softmax, summed in a post"
dim d = 4
dim K = 2
dim V = 3
dim p = 2
dim Wn = 3
input u[d]
state S[f: taylor(K, p), b: V]
output y[b: V]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
let q[a: K] = tanh(sum(m, W_Q[a, m] * u[m]))
let k[a: K] = tanh(sum(m, W_K[a, m] * u[m]))
let v[b: V] = sum(m, W_V[b, m] * u[m])
let qf[f: taylor(K, p)] = taylor(a, q[a])
let kf[f: taylor(K, p)] = taylor(a, k[a])
let z[f: taylor(K, p)] = cumsum(kf[f])
let den = sum(f, qf[f] * z[f])
# the last Wn keys and values (zeros before the start) and which of them exist
let kw[a: K, j: Wn] = window(k[a])
let vw[b: V, j: Wn] = window(v[b])
let ok[j: Wn] = window(1)
let es[j: Wn] = ok[j] * exp(sum(a, q[a] * kw[a, j]) / sqrt(K))
A[(f, b), (f2, b2)] = delta(f, f2) * delta(b, b2)
B[(f, b), m] = kf[f] * W_V[b, m]
C[e, (f, b)] = delta(e, b) * qf[f]
post o[b: V] = y[b] / den + sum(j, es[j] * vw[b, j]) / sum(j, es[j])
"""

M3TRAP = """
model Mamba3TrapRope "Mamba-3: trapezoid + data-dependent RoPE, B u = lam B_t x_t + (1 - lam) a B_(t-1) x_(t-1)"
dim d = 5
dim H = 2
dim K = 4
dim K2 = K // 2
dim P = 3
input u[d]
state S[h: H, a: K, b: P]
output y[h: H, b: P]
param W_B[H, K, d] ~ normal(0, 0.5)
param W_C[H, K, d] ~ normal(0, 0.5)
param W_x[H, P, d] ~ normal(0, 0.5)
param w_dt[H, d] ~ normal(0, 0.5)
param dt_b[H] ~ dt_bias(0.01, 0.1)
param W_l[H, d] ~ normal(0, 0.5)
param A_log[h: H] = log(h + 1)
param th[j: K2] = 1 / (j + 1)
let dt[h: H] = softplus(sum(m, w_dt[h, m] * u[m]) + dt_b[h])
let lam[h: H] = sigmoid(sum(m, W_l[h, m] * u[m]))
let al[h: H] = exp(-dt[h] * exp(A_log[h]))
let phi[h: H, j: K2] = cumsum(dt[h] * th[j])
let bk[h: H, a: K] = sum(m, W_B[h, a, m] * u[m])
let ck[h: H, a: K] = sum(m, W_C[h, a, m] * u[m])
let br[h: H, a: K] = bk[h, a] * cos(phi[h, a // 2])
    + (2 * (a % 2) - 1) * bk[h, a + 1 - 2 * (a % 2)] * sin(phi[h, a // 2])
let cr[h: H, a: K] = ck[h, a] * cos(phi[h, a // 2])
    + (2 * (a % 2) - 1) * ck[h, a + 1 - 2 * (a % 2)] * sin(phi[h, a // 2])
let x[h: H, b: P] = sum(m, W_x[h, b, m] * u[m])
# the previous step's rotated B and x (zero before the start): the last two steps, oldest first
let bw[h: H, a: K, k: 2] = window(br[h, a])
let xw[h: H, b: P, k: 2] = window(x[h, b])
# r = 0: this step's B_t x_t, r = 1: the previous step's B_(t-1) x_(t-1)
let xx[r: 2, h: H, b: P] = delta(r, 0) * x[h, b] + delta(r, 1) * xw[h, b, 0]
drive xx
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h]
B[(h, a, b), (r, h2, b2)] = delta(h, h2) * delta(b, b2) * dt[h]
    * (delta(r, 0) * lam[h] * br[h, a] + delta(r, 1) * (1 - lam[h]) * al[h] * bw[h, a, 0])
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * cr[h, a]
"""

MEGALA = """
model MegaLA "MEGA-style: a damped EMA of u per channel feeds q and k of a gated linear attention (one head, V = 5)"
dim d = 5
dim K = 3
dim V = 5
input u[d]
state S[a: K, b: V]
output y[b: V]
param al_p[d] ~ normal(0, 1)
param de_p[d] ~ normal(0, 1)
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
param w_g[d] ~ normal(0, 0.5)
let ema[c: d] = scan(1 - sigmoid(al_p[c]) * sigmoid(de_p[c]), sigmoid(al_p[c]) * u[c])
let q[a: K] = silu(sum(m, W_Q[a, m] * ema[m]))
let k[a: K] = silu(sum(m, W_K[a, m] * ema[m])) / sqrt(K)
let g = sigmoid(sum(m, w_g[m] * ema[m]) + 2)
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * g
B[(a, b), m] = (1 - g) * k[a] * W_V[b, m]
C[e, (a, b)] = delta(e, b) * q[a]
"""

LTC = """
model LTCFused "liquid time-constant cell, input-driven f, fused solver: x = (x + dt f A) / (1 + dt (1 / tau + f))"
dim d = 3
dim E = 7
input u[d]
state x[E]
output y[E]
param W_f[E, d] ~ normal(0, 0.5)
param b_f[E] ~ normal(0, 0.5)
param tau_log[c: E] = log(1 + c)
param A_p[E] ~ normal(0, 1)
let dt = 0.5
let f[c: E] = sigmoid(sum(m, W_f[c, m] * u[m]) + b_f[c])
let den[c: E] = 1 + dt * (exp(-tau_log[c]) + f[c])
let xin[c: E] = dt * f[c] * A_p[c] / den[c]
drive xin
A[c, c2] = delta(c, c2) / den[c]
B[c, c2] = delta(c, c2)
C[o, c] = delta(o, c)
"""

ALTSIGN = """
model AltSign "diagonal decay with an alternating-sign input weight (-1)^c and a (-2)^(c % 2) read"
dim d = 5
input u[d]
state h[d]
output y[d]
param W[d, d] ~ normal(0, 0.5)
let x[c: d] = (-1) ^ c * sigmoid(sum(m, W[c, m] * u[m]))
A[c, c2] = delta(c, c2) * sigmoid(u[c])
B[c, m] = delta(c, m) * x[c]
C[o, c] = delta(o, c) * (-2) ^ (c % 2)
"""

CASES = {
    "mom": (MOM, Family.CHUNKED_OUTER),
    "path": (PATH, Family.CHUNKED_DPLR),
    "dlinoss": (DLINOSS, Family.DENSE_SCAN),
    "qrnn": (QRNN, Family.DIAGONAL_SCAN),
    "lmu": (LMU, Family.DENSE_SCAN),
    "powlaw": (POWLAW, Family.CHUNKED_OUTER),
    "based": (BASED, Family.CHUNKED_OUTER),
    "m3trap": (M3TRAP, Family.CHUNKED_OUTER),
    "megala": (MEGALA, Family.CHUNKED_OUTER),
    "ltc": (LTC, Family.DIAGONAL_SCAN),
    "altsign": (ALTSIGN, Family.DIAGONAL_SCAN),
}


# -- independent float64 implementations from the papers' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d] and an initial state in the spec's layout (None: zero; specs
# with running lets are checked from zero only), and returns y [B, T, ...].

def _stack(ys, u, *shape):
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, *shape)


def _mom(P, u, h0=None):
    # Mixture-of-Memories (Du et al. 2025) with soft routing: g = softmax(W_r x), memory m decays by al_m and writes
    # g_m k v^T, the output mixes the memories' reads with the same weights, o = sum_m g_m q^T S_m
    M, K, V = P["W_r"].shape[0], P["W_Q"].shape[0], P["W_V"].shape[0]
    S, ys = (u.new_zeros(u.shape[0], M, K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        x = u[:, t]
        g = torch.softmax(x @ P["W_r"].T, -1)
        al = torch.sigmoid(x @ P["W_a"].T + P["b_a"])
        q, k, v = x @ P["W_Q"].T, x @ P["W_K"].T / math.sqrt(K), x @ P["W_V"].T
        S = al[..., None, None] * S + g[..., None, None] * k[:, None, :, None] * v[:, None, None, :]
        ys.append(torch.einsum("bm,ba,bmav->bv", g, q, S))
    return _stack(ys, u, V)


def _path(P, u, h0=None):
    # linear attention with PaTH's position transform (Yang et al. 2025): each step multiplies the memory by the
    # Householder-like H_t = I - be_t w_t w_t^T (be in (0, 2), w unit) before writing k_t v_t^T; o = q^T S
    H, K, _ = P["W_Q"].shape
    V = P["W_V"].shape[1]
    S, ys = (u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        x = u[:, t]
        wr = torch.einsum("hkd,bd->bhk", P["W_W"], x)
        w = wr / torch.sqrt((wr ** 2).sum(-1, keepdim=True) + 1e-6)
        be = 2 * torch.sigmoid(x @ P["W_b"].T)
        q = torch.einsum("hkd,bd->bhk", P["W_Q"], x)
        k = torch.einsum("hkd,bd->bhk", P["W_K"], x) / math.sqrt(K)
        v = torch.einsum("hvd,bd->bhv", P["W_V"], x)
        S = S - be[..., None, None] * w[..., None] * torch.einsum("bhk,bhkv->bhv", w, S)[:, :, None]
        S = S + k[..., None] * v[:, :, None]
        ys.append(torch.einsum("bhk,bhkv->bhv", q, S))
    return _stack(ys, u, H, V)


def _dlinoss(P, u, h0=None):
    # D-LinOSS (Boyer et al. 2025), x'' = -A x - G x' + B u, implicit-explicit step: z_n = (z - dt A x + dt B u) /
    # (1 + dt G), x_n = x + dt z_n; y = C x + D u. The state is (z, x) per oscillator
    A = 3.9 * torch.sigmoid(P["A_hat"])
    G = torch.nn.functional.softplus(P["G_hat"])
    dt = torch.sigmoid(P["dt_hat"])
    Pn = A.shape[0]
    z, x = (u.new_zeros(u.shape[0], Pn),) * 2 if h0 is None else (h0[..., 0], h0[..., 1])
    ys = []
    for t in range(u.shape[1]):
        z = (z - dt * A * x + dt * (u[:, t] @ P["W_B"].T)) / (1 + dt * G)
        x = x + dt * z
        ys.append(x @ P["W_C"].T + P["D"] * u[:, t])
    return _stack(ys, u, P["W_C"].shape[0])


def _qrnn(P, u, h0=None):
    # QRNN (Bradbury et al. 2017) with fo-pooling: Z = tanh(W_z * X), F = sigmoid(W_f * X + b), O = sigmoid(W_o * X),
    # convolutions of width 2 over [x_(t-1), x_t] (zeros before the start), c = f c + (1 - f) z, h = o c
    E = P["W_z"].shape[0]
    up = torch.cat([u.new_zeros(u.shape[0], 1, u.shape[2]), u], 1)
    c, ys = (u.new_zeros(u.shape[0], E) if h0 is None else h0), []
    for t in range(u.shape[1]):
        win = up[:, t: t + 2].transpose(1, 2)  # [B, d, 2], oldest first
        conv = {n: torch.einsum("emk,bmk->be", P[n], win) for n in ("W_z", "W_f", "W_o")}
        f = torch.sigmoid(conv["W_f"] + P["b_f"])
        c = f * c + (1 - f) * torch.tanh(conv["W_z"])
        ys.append(torch.sigmoid(conv["W_o"]) * c)
    return _stack(ys, u, E)


def _legt(Q):
    # Voelker et al. 2019: A_ij = (2i + 1) (-1 if i < j else (-1)^(i - j + 1)), B_i = (2i + 1) (-1)^i
    A = torch.empty(Q, Q, dtype=F64)
    for i in range(Q):
        for j in range(Q):
            A[i, j] = (2 * i + 1) * (-1.0 if i < j else (-1.0) ** (i - j + 1))
    B = torch.tensor([(2 * i + 1) * (-1.0) ** i for i in range(Q)], dtype=F64)
    return A, B


def _lmu(P, u, h0=None):
    # the parallel LMU (Chilkuri & Eliasmith 2021): a Legendre memory of order Q per input channel, m = (I + A /
    # theta) m + B / theta u_c (forward Euler of theta m' = A m + B u), y = W_o . m + D u
    p, d, Q = P["W_o"].shape
    A, Bv = _legt(Q)
    Ad = torch.eye(Q, dtype=F64) + A / P["theta"]
    m, ys = (u.new_zeros(u.shape[0], d, Q) if h0 is None else h0), []
    for t in range(u.shape[1]):
        m = m @ Ad.T + Bv / P["theta"] * u[:, t, :, None]
        ys.append(torch.einsum("pcq,bcq->bp", P["W_o"], m) + u[:, t] @ P["D"].T)
    return _stack(ys, u, p)


def _powlaw(P, u, h0=None):
    # power-law forgetting: the memory after t + 1 tokens is sum_i ((i + 1) / (t + 1)) ^ al k_i v_i^T per head
    # (al = softplus(al_p)), written here as that sum, not as a recurrence; o = q^T S
    H, K, _ = P["W_Q"].shape
    V = P["W_V"].shape[1]
    al = torch.nn.functional.softplus(P["al_p"])[:, None, None]
    q = torch.einsum("hkd,btd->bthk", P["W_Q"], u)
    k = torch.einsum("hkd,btd->bthk", P["W_K"], u)
    v = torch.einsum("hvd,btd->bthv", P["W_V"], u)
    ys = []
    for t in range(u.shape[1]):
        S = u.new_zeros(u.shape[0], H, K, V)
        for i in range(t + 1):
            S = S + ((i + 1) / (t + 1)) ** al * k[:, i, :, :, None] * v[:, i, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return _stack(ys, u, H, V)


def _based(P, u, h0=None):
    # Based (Arora et al. 2024), both reads in one layer: linear attention with the 2nd-order Taylor kernel
    # f(q.k) = 1 + q.k / sqrt(K) + (q.k)^2 / (2 K), normalised, plus softmax attention over the last 3 tokens
    K = P["W_Q"].shape[0]
    q, k = torch.tanh(u @ P["W_Q"].T), torch.tanh(u @ P["W_K"].T)
    v = u @ P["W_V"].T
    ys = []
    for t in range(u.shape[1]):
        s = torch.einsum("ba,bia->bi", q[:, t], k[:, : t + 1]) / math.sqrt(K)
        f = 1 + s + s ** 2 / 2
        lin = torch.einsum("bi,biv->bv", f, v[:, : t + 1]) / f.sum(-1, keepdim=True)
        lo = max(0, t - 2)
        w = torch.softmax(s[:, lo:], -1)
        ys.append(lin + torch.einsum("bi,biv->bv", w, v[:, lo: t + 1]))
    return _stack(ys, u, v.shape[-1])


def _m3trap(P, u, h0=None):
    # Mamba-3 (Lahoti et al. 2025): the complex SSM as data-dependent RoPE, B_t and C_t rotated pairwise by angles
    # phi_t = sum_(s<=t) dt_s th; the trapezoidal rule h_t = a_t h + dt_t (lam_t B_t x_t^T + (1 - lam_t) a_t
    # B_(t-1) x_(t-1)^T) (B_(-1) x_(-1) = 0), a = exp(-dt exp(A_log)); y = C_t^T h
    H, K, _ = P["W_B"].shape
    Pv = P["W_x"].shape[1]
    Bsz, T = u.shape[:2]

    def rope(z, phi):  # rotate pairs (2j, 2j + 1) by phi_j
        z2 = z.reshape(*z.shape[:-1], K // 2, 2)
        c, s = torch.cos(phi), torch.sin(phi)
        return torch.stack([z2[..., 0] * c - z2[..., 1] * s, z2[..., 1] * c + z2[..., 0] * s], -1).reshape(z.shape)

    S = u.new_zeros(Bsz, H, K, Pv) if h0 is None else h0
    phi = u.new_zeros(Bsz, H, K // 2)
    prev_bx = u.new_zeros(Bsz, H, K, Pv)
    ys = []
    for t in range(T):
        x = u[:, t]
        dt = torch.nn.functional.softplus(x @ P["w_dt"].T + P["dt_b"])
        lam = torch.sigmoid(x @ P["W_l"].T)
        a = torch.exp(-dt * torch.exp(P["A_log"]))
        phi = phi + dt[..., None] * P["th"]
        b = rope(torch.einsum("hkd,bd->bhk", P["W_B"], x), phi)
        c = rope(torch.einsum("hkd,bd->bhk", P["W_C"], x), phi)
        bx = b[..., None] * torch.einsum("hpd,bd->bhp", P["W_x"], x)[:, :, None]
        S = a[..., None, None] * S + (dt * lam)[..., None, None] * bx + (dt * (1 - lam) * a)[..., None, None] * prev_bx
        prev_bx = bx
        ys.append(torch.einsum("bhk,bhkp->bhp", c, S))
    return _stack(ys, u, H, Pv)


def _megala(P, u, h0=None):
    # MEGA's damped EMA (Ma et al. 2023) x'_t = (1 - al de) x'_(t-1) + al x_t per channel, al, de = sigmoid(.),
    # feeding q = silu(W_Q x'), k = silu(W_K x') / sqrt(K) and the gate g = sigmoid(w_g . x' + 2) of a gated linear
    # attention S = g S + (1 - g) k v^T with v = W_V x; o = q^T S
    K, V = P["W_Q"].shape[0], P["W_V"].shape[0]
    al, de = torch.sigmoid(P["al_p"]), torch.sigmoid(P["de_p"])
    e = u.new_zeros(u.shape[0], u.shape[2])
    S, ys = (u.new_zeros(u.shape[0], K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        e = (1 - al * de) * e + al * u[:, t]
        q = torch.nn.functional.silu(e @ P["W_Q"].T)
        k = torch.nn.functional.silu(e @ P["W_K"].T) / math.sqrt(K)
        g = torch.sigmoid(e @ P["w_g"] + 2)[:, None, None]
        S = g * S + (1 - g) * k[..., None] * (u[:, t] @ P["W_V"].T)[:, None]
        ys.append(torch.einsum("ba,bav->bv", q, S))
    return _stack(ys, u, V)


def _ltc(P, u, h0=None):
    # liquid time-constant network (Hasani et al. 2021), fused semi-implicit Euler step of
    # x' = -(1 / tau + f) x + f A with f = sigmoid(W u + b) (input-driven here): x = (x + dt f A) / (1 + dt (1 / tau
    # + f)), dt = 0.5
    E = P["A_p"].shape[0]
    x, ys = (u.new_zeros(u.shape[0], E) if h0 is None else h0), []
    for t in range(u.shape[1]):
        f = torch.sigmoid(u[:, t] @ P["W_f"].T + P["b_f"])
        x = (x + 0.5 * f * P["A_p"]) / (1 + 0.5 * (1 / torch.exp(P["tau_log"]) + f))
        ys.append(x)
    return _stack(ys, u, E)


def _altsign(P, u, h0=None):
    # h = sigmoid(u) h + (-1)^c sigmoid(W u) u per channel, y = (-2)^(c mod 2) h
    d = u.shape[2]
    sign = torch.tensor([(-1.0) ** c for c in range(d)], dtype=F64)
    read = torch.tensor([(-2.0) ** (c % 2) for c in range(d)], dtype=F64)
    h, ys = (u.new_zeros(u.shape[0], d) if h0 is None else h0), []
    for t in range(u.shape[1]):
        h = torch.sigmoid(u[:, t]) * h + sign * torch.sigmoid(u[:, t] @ P["W"].T) * u[:, t]
        ys.append(read * h)
    return _stack(ys, u, d)


INDEPENDENT = {"mom": _mom, "path": _path, "dlinoss": _dlinoss, "qrnn": _qrnn, "lmu": _lmu, "powlaw": _powlaw,
               "based": _based, "m3trap": _m3trap, "megala": _megala, "ltc": _ltc, "altsign": _altsign}

EIGEN = {"mom": Bound.STABLE, "path": Bound.MARGINAL, "dlinoss": Bound.STABLE, "qrnn": Bound.STABLE,
         "lmu": Bound.UNKNOWN, "powlaw": Bound.MARGINAL, "based": Bound.MARGINAL, "m3trap": Bound.STABLE,
         "megala": Bound.STABLE, "ltc": Bound.STABLE, "altsign": Bound.STABLE}
# the bound each spec has on its module's A (checked at random inputs) where the report is weaker
TRUE_BOUND = {"lmu": Bound.STABLE}


_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


def _input(built, b, t, gen, scale=1.0):
    return scale * torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_an_independent_implementation(name):
    """Forward (torch at T = 0, 1, 9; batch 1, 3) and token-by-token step against the loop written here, from
    zero and (plain-tensor states) from a random initial state; dsfc's reference too."""
    built = _built(name)
    gen = torch.Generator().manual_seed(1)
    P = built.params()
    for b, t in ((1, 0), (3, 1), (3, 9)):
        for with_h0 in (False, True) if not built.running else (False,):
            u = _input(built, b, t, gen)
            h0 = 0.5 * torch.randn(b, *built.state_shape(), generator=gen, dtype=F64) if with_h0 else None
            want = INDEPENDENT[name](P, u, h0).reshape(b, t, built.d_out())
            y_ref, _ = built.reference(u, h0)
            assert rel_err(y_ref, want) < 1e-10, ("reference", b, t, with_h0)
            with torch.no_grad():
                assert rel_err(built.model(u, initial_state=h0), want) < 1e-8, ("torch", b, t)
            if t:
                y_s, _ = run_steps(built.model, u, h0)
                assert rel_err(y_s, want) < 1e-8, ("step", b, t, with_h0)


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_gradients_match_an_independent_implementation(name):
    """d/d(u, every parameter) of sum(y * w) through the module's torch path against autograd through the loop
    written here, at batch 3, T = 9 (the Triton path's gradients are held to the reference's in check_all_paths)."""
    built = _built(name)
    gen = torch.Generator().manual_seed(2)
    u = _input(built, 3, 9, gen)
    w = torch.randn(3, 9, built.d_out(), generator=gen, dtype=F64)
    check_grads_against_loop(built, INDEPENDENT[name], u, w)


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    """torch (T = 0, 1, 7, batch 1 and 3, step, gradients of u, the initial state and every parameter), Triton from
    an initial state, and for the chunked families chunks of 3 steps over T = 9."""
    check_all_paths(_built(name), CASES[name][1])


@pytest.mark.parametrize("name", list(CASES))
def test_fp32_matches_float64_at_large_inputs(name):
    """fp32 (torch and Triton) against float64 at input scales 1, 10 and 30: outputs and gradients finite and close
    (the interpreted Triton path at the largest scale only, to keep this file short)."""
    # altsign is the printer's regression: its Triton path is checked against the reference in check_all_paths
    triton = () if name == "altsign" else (30.0,)
    check_fp32_against_float64(_built(name), {"torch": (1.0, 10.0, 30.0), "triton": triton})


@pytest.mark.parametrize("name", list(CASES))
def test_the_structure_report_is_true(name):
    """``dsfc analyze``'s family and eigenvalue bound; the bound it claims (or, where it is weaker, the one the
    spec has) holds for the module's own A at random inputs (scale 3)."""
    check_structure_report(_built(name), CASES[name][1], EIGEN[name], TRUE_BOUND.get(name),
                           make_input=lambda built, gen: _input(built, 2, 6, gen, 3.0))


TWO_WRITES = """
model TwoWrites "two outer products written out in B: S = 0.9 S + k v^T + k2 v2^T, o = q^T S"
dim d = 3
dim K = 2
dim V = 3
input u[d]
state S[a: K, b: V]
output y[b: V]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[2, K, d] ~ normal(0, 0.5)
param W_V[2, V, d] ~ normal(0, 0.5)
let k[a: K] = sum(m, W_K[0, a, m] * u[m])
let k2[a: K] = sum(m, W_K[1, a, m] * u[m])
let v[b: V] = sum(m, W_V[0, b, m] * u[m])
let v2[b: V] = sum(m, W_V[1, b, m] * u[m])
let one[i: 1] = 1
drive one
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * 0.9
B[(a, b), i] = k[a] * v[b] + k2[a] * v2[b]
C[e, (a, b)] = delta(e, b) * sum(m, W_Q[a, m] * u[m])
"""


def test_a_sum_of_outer_products_is_a_rank_r_input():
    """The fix: Mamba-3's trapezoid reaches the analysis as two written-out outer products; it runs the chunked
    outer-product scan with a rank axis of 2 (before: the diagonal scan over all H K P entries). So does a B written
    as k v^T + k2 v2^T (checked against the reference); a second term that mixes key and value rows is no rank-R
    input and stays on the diagonal scan."""
    st = _compiled("m3trap").structure
    assert st.family == Family.CHUNKED_OUTER and [int(n) for _, n in st.outer.key_rank] == [2], st.family_reason
    two = compile_text(TWO_WRITES, "two.dsf")
    assert two.structure.family == Family.CHUNKED_OUTER, two.structure.family_reason
    check_backend(build(two, {"d": 3, "K": 2, "V": 3}), "torch", ((2, 7),), steps=False)
    mixed = TWO_WRITES.replace("k2[a] * v2[b]", "k2[a] * v2[b] * (a + b)")
    assert compile_text(mixed, "mixed.dsf").structure.family == Family.DIAGONAL_SCAN


def test_a_negative_base_under_an_integer_power_keeps_its_sign():
    """The fix: LegT's (-1) ^ (i - j + 1) printed as -1 ** n (= -1) on the torch path and as exp(n log(-1)) (NaN)
    in Triton. The module's A equals the reference's dense A entry by entry."""
    built = _built("lmu")
    u = _input(built, 1, 2, torch.Generator().manual_seed(0))
    assert rel_err(built.dsf_matrices(u)[0], built.dense(u)[0]) < 1e-12
    src = _compiled("lmu").source
    assert "(-1) ** " in src and "-(1 ** " not in src
