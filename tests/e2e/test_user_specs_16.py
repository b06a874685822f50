"""A sixteenth new-spec hunt: xPos retention, a Laguerre memory, a Cayley-gated orthogonal RNN, Holt's trend model,
Mamba-2 with two groups and odd head dims, DiJiang's DCT feature map, S6 with one state per channel, and unusual
spellings (one matrix shared by A, B, C and D, a deep chain of lets, constants, nested functions).

Checked (each against an independent float64 implementation written here from the model's equations, not from
dsfc's reference): forward at T = 0, 1, 7 and 9 on the torch path and at T = 0 and 9 on the Triton path
(interpreted), batch 1 and 3, from zero and, where the state is a plain tensor, from an initial state; token-by-token
step; gradients of the input and every parameter on the torch and Triton paths; against dsfc's reference through
``check_all_paths`` (final state, step, gradients of u, h0 and the parameters, chunks of 3 for the chunked
families); the family and eigenvalue bound of ``dsfc analyze``, a claimed bound checked on the module's own A.
Errors: heads that do not divide the width, and sLSTM's stabiliser written as a running max (a let cycle through
``prev``: documented as not a DSF), are reported at the line with a hint.

Found and fixed:
- The Triton printer wrote every power whose exponent was not an integer literal as ``exp(n log(x))``, NaN for a
  negative base: SharedChain's ``l2 ^ two`` (the let constant ``two = 2 * half + 1`` folds to the float 2.0) gave
  a wrong Triton output, and ``g[c] ^ (c + 1)`` with g a tanh (SignedPow) NaN gradients, the backward kernel's CSE
  having replaced ``c + 1`` by a plain symbol. Whole-number float exponents are integers now, CSE temporaries that
  stand for integers are declared so, and an integer power of a base of either sign prints as ``|x|^n`` with the
  sign of odd n (1 at n = 0).
- The interval prover read ``g ^ (c + 1)`` (|g| < 1, an index exponent) as unbounded: it bounds it by |g| now.

- Laguerre's triangular A was "unknown": a block triangular on its mixed axis (proven for every dims, with a symbolic
  gap between row and column) has its diagonal entries as eigenvalues, here a with |a| < 1 (stability.py).

Left weaker than the truth here, proven since hunt 17: xPos retention's ``zeta[a] ^ (1 / sc)`` was "unknown" (the
prover had no range for a let that is a formula of an index, ``a // 2``); floor(x) = x - {x} now bounds it below 1.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (BACKENDS, F64, INTERPRETER_WARNINGS, build, case_builds, check_all_paths,  # noqa: E402
                         check_forward_against_loop, check_grads_against_loop, spec_hunt_tests, stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.lang.errors import SpecErrors  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

RETXPOS = """
model RetXPos "RetNet retention with xPos: q, k rotated by n theta, scaled by zeta^(+-n / sc); gamma_h = 1 - 2^(-5-h)"
dim d = 5
dim H = 2
dim K = 4
dim K2 = K // 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param th[j: K2] = 10000 ^ (-2 * j / K)
let sc = 512
# xPos: zeta_j = (2 j / K + 0.4) / 1.4 per rotary pair; the ratio zeta^(n - m) becomes a per-key decay zeta^(1 / sc)
let ze[a: K] = ((a // 2) * 2 / K + 0.4) / 1.4
let n = cumsum(1)
let q0[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k0[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let q[h: H, a: K] = q0[h, a] * cos(n * th[a // 2])
    + (2 * (a % 2) - 1) * q0[h, a + 1 - 2 * (a % 2)] * sin(n * th[a // 2])
let k[h: H, a: K] = k0[h, a] * cos(n * th[a // 2])
    + (2 * (a % 2) - 1) * k0[h, a + 1 - 2 * (a % 2)] * sin(n * th[a // 2])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * (1 - 2 ^ (-5 - h)) * ze[a] ^ (1 / sc)
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

LAGUERRE = """
model Laguerre "discrete Laguerre memory per channel, a cascade of all-pass sections behind a low-pass one"
dim d = 3
dim Q = 4
dim p = 2
input u[d]
state x[c: d, i: Q]
output y[p]
param a_p[d] ~ normal(0, 1)
param W_o[p, d, Q] ~ normal(0, 0.5)
let a[c: d] = tanh(a_p[c])
# the cascade of all-pass sections solved for x_t: lower triangular, a on the diagonal, (1 - a^2) (-a)^(i - j - 1) below
A[(c, i), (c2, j)] = delta(c, c2) * (delta(i, j) * a[c]
    + min(max(i - j, 0), 1) * (1 - a[c] ^ 2) * (-a[c]) ^ max(i - j - 1, 0))
B[(c, i), m] = delta(c, m) * sqrt(1 - a[c] ^ 2) * (-a[c]) ^ i
C[o, (c, i)] = W_o[o, c, i]
"""

CAYLEY = """
model CayleyRNN "gated orthogonal RNN: rho (I - S)^-1 (I + S) per channel, S = [[0, -w], [w, 0]] (a Cayley rotation)"
dim d = 3
dim E = 3
input u[d]
state h[c: E, r: 2]
output y[d]
param W_w[E, d] ~ normal(0, 0.5)
param W_r[E, d] ~ normal(0, 0.5)
param W_B[E, 2, d] ~ normal(0, 0.5)
param W_C[d, E, 2] ~ normal(0, 0.5)
let w[c: E] = sum(m, W_w[c, m] * u[m])
let rho[c: E] = sigmoid(sum(m, W_r[c, m] * u[m]))
let den[c: E] = 1 + w[c] ^ 2
A[(c, r), (c2, r2)] = delta(c, c2) * rho[c] / den[c] * (delta(r, r2) * (1 - w[c] ^ 2)
    + 2 * w[c] * (delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1)))
B[(c, r), m] = (1 - rho[c]) * W_B[c, r, m]
C[o, (c, r)] = W_C[o, c, r]
"""

HOLT = """
model HoltTrend "Holt's linear trend (double exponential smoothing) per channel, input-gated alpha, fixed beta"
dim d = 4
input u[d]
state s[c: d, r: 2]
output y[d]
param W_a[d, d] ~ normal(0, 0.5)
param be_p[d] ~ normal(0, 1)
let al[c: d] = sigmoid(sum(m, W_a[c, m] * u[m]))
let be[c: d] = sigmoid(be_p[c])
# r = 0: level l = al u + (1 - al)(l + b); r = 1: trend b = be (l_new - l) + (1 - be) b
A[(c, r), (c2, r2)] = delta(c, c2) * (delta(r, 0) * (1 - al[c])
    + delta(r, 1) * (delta(r2, 0) * (-al[c] * be[c]) + delta(r2, 1) * (1 - be[c] + be[c] * (1 - al[c]))))
B[(c, r), m] = delta(c, m) * al[c] * (delta(r, 0) + delta(r, 1) * be[c])
# forecast one step ahead: l + b
C[o, (c, r)] = delta(o, c)
"""

SHARED = """
model SharedChain "one matrix W in A's gate, B, C and D; a deep chain of lets, constants and nested functions"
dim d = 3
dim n = 5
input u[d]
state h[c: d, j: n]
output y[d]
param W[d, d] ~ normal(0, 0.5)
param s[j: n] = 1 / (j + 1)
let half = 0.5
let two = 2 * half + 1
let l1[c: d] = sum(m, W[c, m] * u[m])
let l2[c: d] = tanh(l1[c]) * half
let l3[c: d] = softplus(sigmoid(l2[c]) - half)
let l4[c: d] = l3[c] + l2[c] ^ two
let l5[c: d] = exp(-softplus(l4[c] * two))
let l6[c: d, j: n] = l5[c] ^ s[j]
let l7[c: d, j: n] = 1 - l6[c, j]
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * l6[c, j]
B[(c, j), m] = l7[c, j] * W[c, m]
C[o, (c, j)] = W[o, c] * s[j] * half
D[o, m] = sum(k, W[k, o] * W[k, m])
"""

MAMBA2G = """
model Mamba2Groups "Mamba-2 SSD, ngroups = 2, odd head dim, d_state 5, D per head, silu(z) gate and RMSNorm in posts"
dim H = 4
dim P = 3
dim n = 5
dim G = 2
dim R = H // G
dim d = 7
input u[d]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[h: H] = log(1 + h)
param dt_bias[H] ~ dt_bias(0.001, 0.1)
param W_x[H, P, d] ~ normal(0, 0.5)
param W_z[H, P, d] ~ normal(0, 0.5)
param W_dt[H, d] ~ normal(0, 0.5)
param W_B[G, n, d] ~ normal(0, 0.5)
param W_C[G, n, d] ~ normal(0, 0.5)
param D[H] = 1
param g_w[h: H, p: P] = 1
let x[h: H, p: P] = sum(m, W_x[h, p, m] * u[m])
let z[h: H, p: P] = sum(m, W_z[h, p, m] * u[m])
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]) + dt_bias[h])
let Bm[g: G, j: n] = sum(m, W_B[g, j, m] * u[m])
let Cm[g: G, j: n] = sum(m, W_C[g, j, m] * u[m])
drive x
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[h // R, j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[h // R, j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
post gy[h: H, p: P] = y[h, p] * silu(z[h, p])
post o[h: H, p: P] = gy[h, p] / sqrt(sum(h2, sum(p2, gy[h2, p2] ^ 2)) / (H * P) + 1e-5) * g_w[h, p]
"""

DIJIANG = """
model DiJiang "DiJiang: linear attention with a DCT feature map, phi(x) = D exp(Cdct x), weights D, per head, no decay"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, f: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
# the DCT-II matrix, orthonormal: c_f sqrt(2 / K) cos(pi (2 a + 1) f / (2 K)), c_0 = 1 / sqrt(2)
param Cd[f: K, a: K] = sqrt(2 / K) * (1 - (1 - sqrt(0.5)) * delta(f, 0))
    * cos(3.141592653589793 * (2 * a + 1) * f / (2 * K))
param Dw[f: K] = 1 / (f + 1)
let qf[h: H, f: K] = Dw[f] * exp(sum(a, Cd[f, a] * sum(m, W_Q[h, a, m] * u[m])))
let kf[h: H, f: K] = Dw[f] * exp(sum(a, Cd[f, a] * sum(m, W_K[h, a, m] * u[m])))
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2)
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[h, f]
"""

S6N1 = """
model S6One "Mamba S6 with d_state 1 and d = 3: the smallest selective scan, dt rank 1"
dim d = 3
dim n = 1
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_dt[1, d] ~ normal(0, 0.5)
param w_dt[d] ~ normal(0, 0.5)
param b_dt[d] ~ dt_bias(0.001, 0.1)
param W_B[n, d] ~ normal(0, 0.5)
param W_C[n, d] ~ normal(0, 0.5)
param D[d] = 1
let dt[c: d] = softplus(w_dt[c] * sum(m, W_dt[0, m] * u[m]) + b_dt[c])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
B[(c, j), m] = delta(c, m) * dt[c] * sum(k, W_B[j, k] * u[k])
C[o, (c, j)] = delta(o, c) * sum(k, W_C[j, k] * u[k])
D[o, m] = delta(o, m) * D[m]
"""

BADHEADS = """
model BadHeads "heads do not divide the width"
dim d = 5
dim H = 2
dim K = d // H
input u[d]
state S[h: H, a: K]
A[(h, a), (h2, a2)] = delta(h, h2) * delta(a, a2) * 0.9
B[(h, a), m] = delta(h * K + a, m)
C[o, (h, a)] = delta(o, h * K + a)
"""

RUNMAX = """
model SLSTMMax "sLSTM-style exponential gating with the stabiliser as a running max"
dim d = 3
input u[d]
state c[d]
param W_i[d, d] ~ normal(0, 0.5)
param W_f[d, d] ~ normal(0, 0.5)
let li[e: d] = sum(k, W_i[e, k] * u[k])
let lf[e: d] = logsigmoid(sum(k, W_f[e, k] * u[k]))
let mp[e: d] = prev(m[e])
let m[e: d] = max(lf[e] + mp[e], li[e])
A[e, e2] = delta(e, e2) * exp(lf[e] + mp[e] - m[e])
B[e, k] = delta(e, k) * exp(li[e] - m[e])
C[o, e] = delta(o, e)
"""
CASES = {
    "retxpos": (RETXPOS, Family.CHUNKED_OUTER),
    "laguerre": (LAGUERRE, Family.DENSE_SCAN),
    "cayley": (CAYLEY, Family.DENSE_SCAN),
    "holt": (HOLT, Family.DENSE_SCAN),
    "shared": (SHARED, Family.DIAGONAL_SCAN),
    "mamba2g": (MAMBA2G, Family.CHUNKED_OUTER),
    "dijiang": (DIJIANG, Family.CHUNKED_OUTER),
    "s6n1": (S6N1, Family.DIAGONAL_SCAN),
}


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d] and an initial state in the spec's layout (None: zero; specs
# with running lets are checked from zero only), and returns y [B, T, ...].

def _retxpos(P, u, h0=None):
    # retention with xPos (Sun et al. 2023), the parallel form: y_n = sum_(m <= n) gamma^(n - m) (Q_n . K_m) v_m
    # / sqrt(K) with Q_n = R(n theta) q_n zeta^(n / sc), K_m = R(m theta) k_m zeta^(-m / sc), positions n from 1,
    # R rotating the pairs (2j, 2j + 1) by n theta_j, zeta_j = (2j / K + 0.4) / 1.4, gamma_h = 1 - 2^(-5 - h)
    H, K, _ = P["W_Q"].shape
    Bsz, T = u.shape[:2]
    pos = torch.arange(1, T + 1, dtype=F64)
    zeta = ((torch.arange(K, dtype=F64) // 2) * 2 / K + 0.4) / 1.4

    def rope(z):  # z [B, T, H, K]
        phi = pos[:, None] * P["th"]  # [T, K / 2]
        c, s = torch.cos(phi)[None, :, None], torch.sin(phi)[None, :, None]
        z2 = z.reshape(Bsz, T, H, K // 2, 2)
        return torch.stack([z2[..., 0] * c - z2[..., 1] * s, z2[..., 1] * c + z2[..., 0] * s], -1).reshape(z.shape)

    q = rope(torch.einsum("hkd,btd->bthk", P["W_Q"], u)) * zeta ** (pos[:, None, None] / 512)
    k = rope(torch.einsum("hkd,btd->bthk", P["W_K"], u)) * zeta ** (-pos[:, None, None] / 512)
    v = torch.einsum("hvd,btd->bthv", P["W_V"], u)
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=F64))
    dist = (pos[:, None] - pos[None, :])  # n - m
    mask = torch.where(dist >= 0, gamma[:, None, None] ** dist.clamp(min=0), torch.zeros(()))  # [H, T, T]
    scores = torch.einsum("bnhk,bmhk->bhnm", q, k) * mask / math.sqrt(K)
    return torch.einsum("bhnm,bmhv->bnhv", scores, v)


def _laguerre(P, u, h0=None):
    # the discrete Laguerre network per channel: a low-pass section x_0 = a x_0 + sqrt(1 - a^2) u followed by
    # all-pass sections x_k = a x_k + x_(k-1)(t-1) - a x_(k-1)(t), computed in order k = 0, 1, ...; y = W_o . x
    a = torch.tanh(P["a_p"])
    p, d, Q = P["W_o"].shape
    x, ys = (u.new_zeros(u.shape[0], d, Q) if h0 is None else h0), []
    for t in range(u.shape[1]):
        new = [a * x[..., 0] + torch.sqrt(1 - a ** 2) * u[:, t]]
        for k in range(1, Q):
            new.append(a * x[..., k] + x[..., k - 1] - a * new[k - 1])
        x = torch.stack(new, -1)
        ys.append(torch.einsum("pcq,bcq->bp", P["W_o"], x))
    return stack_steps(ys, u, p)


def _cayley(P, u, h0=None):
    # h_c = rho_c Cay(w_c) h_c + (1 - rho_c) W_B[c] u with the Cayley transform Cay(w) = (I - S)^-1 (I + S) of
    # the skew-symmetric S = [[0, -w], [w, 0]], solved here as a 2x2 linear system; y = W_C . h
    E = P["W_w"].shape[0]
    h, ys = (u.new_zeros(u.shape[0], E, 2) if h0 is None else h0), []
    eye = torch.eye(2, dtype=F64)
    for t in range(u.shape[1]):
        w = u[:, t] @ P["W_w"].T
        rho = torch.sigmoid(u[:, t] @ P["W_r"].T)
        S = torch.zeros(*w.shape, 2, 2, dtype=F64)
        S = S + torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64) * w[..., None, None]
        rot = torch.linalg.solve(eye - S, (eye + S) @ h[..., None])[..., 0]
        h = rho[..., None] * rot + (1 - rho[..., None]) * torch.einsum("crd,bd->bcr", P["W_B"], u[:, t])
        ys.append(torch.einsum("ocr,bcr->bo", P["W_C"], h))
    return stack_steps(ys, u, P["W_C"].shape[0])


def _holt(P, u, h0=None):
    # Holt's linear trend (double exponential smoothing) per channel: level l = al u + (1 - al)(l + b), trend
    # b = be (l_new - l) + (1 - be) b, al = sigmoid(W_a u) per step, be = sigmoid(be_p); the one-step forecast l + b
    d = u.shape[2]
    s = u.new_zeros(u.shape[0], d, 2) if h0 is None else h0
    lv, tr, ys = s[..., 0], s[..., 1], []
    be = torch.sigmoid(P["be_p"])
    for t in range(u.shape[1]):
        al = torch.sigmoid(u[:, t] @ P["W_a"].T)
        new = al * u[:, t] + (1 - al) * (lv + tr)
        tr = be * (new - lv) + (1 - be) * tr
        lv = new
        ys.append(lv + tr)
    return stack_steps(ys, u, d)


def _shared(P, u, h0=None):
    # the chain of lets evaluated in order; h[c, j] = l6 h + (1 - l6) (W u)_c, y = W^T (s . h) / 2 + W^T W u
    W, s = P["W"], P["s"]
    d, n = W.shape[0], s.shape[0]
    h, ys = (u.new_zeros(u.shape[0], d, n) if h0 is None else h0), []
    for t in range(u.shape[1]):
        l1 = u[:, t] @ W.T
        l2 = torch.tanh(l1) * 0.5
        l3 = torch.nn.functional.softplus(torch.sigmoid(l2) - 0.5)
        l4 = l3 + l2 ** 2
        l5 = torch.exp(-torch.nn.functional.softplus(l4 * 2))
        l6 = l5[..., None] ** s
        h = l6 * h + (1 - l6) * l1[..., None]
        ys.append(torch.einsum("oc,bcj,j->bo", W, h, s) * 0.5 + u[:, t] @ (W.T @ W).T)
    return stack_steps(ys, u, d)


def _mamba2g(P, u, h0=None):
    # Mamba-2 (Dao & Gu 2024) with G groups: head h reads group h // (H / G) of B and C; S = exp(-dt e^A_log) S
    # + dt x B^T, y = S C + D x, then the gate y silu(z) and an RMSNorm over all heads (eps 1e-5) times g_w
    H, Pd, _ = P["W_x"].shape
    G, n, _ = P["W_B"].shape
    R = H // G
    S, ys = (u.new_zeros(u.shape[0], H, Pd, n) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        x = torch.einsum("hpd,bd->bhp", P["W_x"], ut)
        z = torch.einsum("hpd,bd->bhp", P["W_z"], ut)
        dt = torch.nn.functional.softplus(ut @ P["W_dt"].T + P["dt_bias"])
        Bm = torch.einsum("gnd,bd->bgn", P["W_B"], ut).repeat_interleave(R, 1)
        Cm = torch.einsum("gnd,bd->bgn", P["W_C"], ut).repeat_interleave(R, 1)
        a = torch.exp(-dt * torch.exp(P["A_log"]))
        S = a[..., None, None] * S + dt[..., None, None] * x[..., None] * Bm[:, :, None]
        y = torch.einsum("bhpn,bhn->bhp", S, Cm) + P["D"][:, None] * x
        g = y * torch.nn.functional.silu(z)
        ys.append(g / torch.sqrt((g ** 2).mean((1, 2), keepdim=True) + 1e-5) * P["g_w"])
    return stack_steps(ys, u, H, Pd)


def _dijiang(P, u, h0=None):
    # DiJiang (Chen et al. 2024): linear attention with the frequency-domain kernel phi(x) = Dw exp(DCT x), the DCT
    # an orthonormal DCT-II matrix at initialisation; S = S + phi(k) v^T, y = phi(q)^T S per head
    H, K, _ = P["W_Q"].shape
    V = P["W_V"].shape[1]
    dct, Dw = P["Cd"], P["Dw"]  # learned; initialised to the DCT-II matrix and 1 / (f + 1) (checked below)
    S, ys = (u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        qf = Dw * torch.exp(torch.einsum("fa,had,bd->bhf", dct, P["W_Q"], ut))
        kf = Dw * torch.exp(torch.einsum("fa,had,bd->bhf", dct, P["W_K"], ut))
        S = S + kf[..., None] * torch.einsum("hvd,bd->bhv", P["W_V"], ut)[:, :, None]
        ys.append(torch.einsum("bhf,bhfv->bhv", qf, S))
    return stack_steps(ys, u, H, V)


def _s6n1(P, u, h0=None):
    # Mamba's S6 (Gu & Dao 2023) with d_state 1: dt = softplus(w_dt (W_dt u) + b_dt) (dt rank 1), h = exp(-dt
    # e^A_log) h + dt B u, y = C h + D u with scalar B = W_B u, C = W_C u
    d = u.shape[2]
    h, ys = (u.new_zeros(u.shape[0], d, 1) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        dt = torch.nn.functional.softplus(P["w_dt"] * (ut @ P["W_dt"].T) + P["b_dt"])
        Bs, Cs = ut @ P["W_B"].T, ut @ P["W_C"].T  # [B, 1]
        h = torch.exp(-dt[..., None] * torch.exp(P["A_log"])) * h + (dt * ut)[..., None] * Bs[:, None]
        ys.append((h * Cs[:, None]).sum(-1) + P["D"] * ut)
    return stack_steps(ys, u, d)


INDEPENDENT = {"retxpos": _retxpos, "laguerre": _laguerre, "cayley": _cayley, "holt": _holt, "shared": _shared,
               "mamba2g": _mamba2g, "dijiang": _dijiang, "s6n1": _s6n1}
EIGEN = {"retxpos": Bound.STABLE, "laguerre": Bound.STABLE, "cayley": Bound.STABLE, "holt": Bound.STABLE,
         "shared": Bound.UNBOUNDED, "mamba2g": Bound.STABLE, "dijiang": Bound.MARGINAL, "s6n1": Bound.STABLE}
# the bound each spec has on its module's A (checked at random inputs) where the report is weaker: none since hunt 17
TRUE_BOUND: dict = {}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


# forward, gradients, every path against the reference, the structure report (dsf_testing.spec_hunt_tests)
(test_new_spec_matches_an_independent_implementation, test_new_spec_gradients_match_an_independent_implementation,
 test_new_spec_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, TRUE_BOUND, grad_backends=BACKENDS)


def test_heads_that_do_not_divide_the_width_are_refused_clearly():
    """``dim K = d // H`` with d = 5, H = 2 is an error at the dim's line; a spec that compiles at its defaults is
    refused by the constructor at dims that do not divide, naming the dims."""
    with pytest.raises(SpecErrors) as err:
        compile_text(BADHEADS, "bad.dsf")
    text = err.value.render()
    assert "bad.dsf:5:9: error: dim 'K': 5 // 2 is not exact" in text and "must divide evenly" in text, text
    ok = compile_text(BADHEADS.replace("dim d = 5", "dim d = 6"), "ok.dsf")
    with pytest.raises(ValueError, match="d must be divisible by H"):
        build(ok, {"d": 5, "H": 2})


def test_a_running_max_stabiliser_is_a_let_cycle_with_a_hint():
    """sLSTM's stabiliser m_t = max(log f_t + m_(t-1), log i_t) is a nonlinear running quantity: no DSF form. The
    error names the cycle at its line and says so."""
    with pytest.raises(SpecErrors) as err:
        compile_text(RUNMAX, "runmax.dsf")
    text = err.value.render()
    assert "runmax.dsf:10:1: error: cycle among lets: mp -> m -> mp" in text and "running max" in text, text


def test_dijiang_starts_from_the_orthonormal_dct():
    """DiJiang's Cd param, initialised by a formula over its named axes, is the orthonormal DCT-II matrix built here
    from its definition (C C^T = I), and Dw is 1 / (f + 1)."""
    P = _built("dijiang").params()
    K = P["Cd"].shape[0]
    f, a = torch.arange(K, dtype=F64)[:, None], torch.arange(K, dtype=F64)[None, :]
    dct = math.sqrt(2 / K) * torch.cos(math.pi * (2 * a + 1) * f / (2 * K))
    dct[0] /= math.sqrt(2)
    assert torch.allclose(P["Cd"], dct, atol=1e-6) and torch.allclose(dct @ dct.T, torch.eye(K, dtype=F64))
    assert torch.allclose(P["Dw"], 1 / torch.arange(1, K + 1, dtype=F64), atol=1e-7)


SIGNEDPOW = """
model SignedPow "per-channel decay g_c^(c + 1) with a signed gate g = tanh(W u): each channel a higher power"
dim d = 4
input u[d]
state h[d]
output y[d]
param W[d, d] ~ normal(0, 0.5)
let g[c: d] = tanh(sum(m, W[c, m] * u[m]))
A[c, c2] = delta(c, c2) * g[c] ^ (c + 1)
B[c, m] = delta(c, m) * (1 - g[c] ^ 2)
C[o, c] = delta(o, c)
"""


@functools.cache
def _signedpow_built():
    return build(compile_text(SIGNEDPOW, "signedpow.dsf"), {"d": 4})


def _signedpow(P, u, h0=None):
    # h_c = g_c^(c + 1) h_c + (1 - g_c^2) u_c with g = tanh(W u) of either sign; y = h
    d = u.shape[2]
    powers = torch.arange(1, d + 1, dtype=F64)
    h, ys = (u.new_zeros(u.shape[0], d) if h0 is None else h0), []
    for t in range(u.shape[1]):
        g = torch.tanh(u[:, t] @ P["W"].T)
        h = g ** powers * h + (1 - g ** 2) * u[:, t]
        ys.append(h)
    return stack_steps(ys, u, d)


def test_a_negative_base_under_an_integer_power_keeps_its_sign_in_triton():
    """The fix: the Triton printer wrote every power that was not an integer literal as exp(n log(g)), NaN (dropped
    by the scan's masking, or a wrong output) wherever g < 0: a whole-number float exponent (SharedChain's
    l2 ^ two with the let constant two = 2 * half + 1, folded to 2.0) and an integer index exponent on a signed
    base (g_c ^ (c + 1)), whose backward kernel also lost the exponent's integrality to a CSE temporary. Both now
    print as integer powers; the Triton path matches the loop and its gradients (SharedChain: the tests above)."""
    built = _signedpow_built()
    loop = _signedpow
    check_forward_against_loop(built, loop, backends=BACKENDS)
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(2, 5, built.d_in(), generator=gen, dtype=F64)
    check_grads_against_loop(built, loop, u, torch.randn(2, 5, built.d_out(), generator=gen, dtype=F64),
                             backends=BACKENDS)


def test_an_integer_index_power_of_a_gate_in_the_unit_interval_is_a_decay():
    """The prover read g^(c + 1) (g in (-1, 1), the exponent an index expression) as unbounded; |g^n| <= |g| for
    every integer n >= 1 (and n = 0 adds the value 1), so SignedPow is stable, which its A confirms at scale 3."""
    built = _signedpow_built()
    assert built.result.report.eigen_bound == Bound.STABLE, built.result.report.eigen_reason
    u = 3 * torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert (torch.linalg.eigvals(built.dsf_matrices(u)[0]).abs() < 1).all()
    with_zero = compile_text(SIGNEDPOW.replace("^ (c + 1)", "^ c"), "zero.dsf").report
    assert with_zero.eigen_bound == Bound.MARGINAL, with_zero.eigen_reason  # c = 0: the eigenvalue 1
