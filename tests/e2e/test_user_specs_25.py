"""A twenty-fifth new-spec hunt: layers from the delta-rule, gated-RNN and SSM literature in forms no earlier hunt
wrote.

Specs: Longhorn as the paper's closed-form online regression per head (``S = (I - eps k k^T) S + eps k x^T``, eps =
beta / (1 + beta k.k) with a learned beta_t and raw, unnormalised keys); Comba in its value-first layout (``S = S
(al - be k k^T) + be v k^T``, ``S[h, b, a]``) read through the corrected query ``q - dd k``; a Titans-like memory with
momentum in value-first layout (two coupled blocks on one axis: ``Mo = eta Mo - th (M k k^T - v k^T)``, ``M = (1 -
al) M + Mo``); minGRU with an expansion E = 7 > d = 3 and an out-projection post; cosFormer normalised (the
denominator carried as a constant value slot ``dim V1 = V + 1`` through a ``drive`` let, the position a ``cumsum``
of 1, the division a post); RWKV-4's time mixing (num / den read before the update, the bonus e^u in D, the
receptance gate and out-projection as posts); a TTT-linear-like inner loop (one gradient step of |W k - v|^2 / 2 per
token with a per-token learning rate, W value-first, a learned W_0 passed as ``initial_state``); a selective S5
(N = 6 modes shared by d = 3 channels, dt per mode from the input, ZOH, dense B [N, d], C [p, N] with p = 4, D
[p, d]); GateLoop with complex queries and keys (real / imaginary pairs on an axis of the state, the data-controlled
complex decay a 2 x 2 rotation-scaling block); the selective S5 with complex modes (lam = -exp(.) + i th, ZOH as
rotation-scaling blocks of lets, complex B and C, y = 2 Re(C x) + D u).

Checked (each against an independent float64 loop written here from the paper's equations, not from dsfc's
reference: Longhorn's as the regression's solve ``(I + beta k k^T)^-1 (S + beta k x^T)``, GateLoop's and the complex
S5's in complex arithmetic, cosFormer's recurrent loop against its quadratic cos(pi (t - j) / 2M) form, RWKV-4's against its
quadratic WKV sum): forward at T = 0, 1, 7 and 9 on the torch path and at T = 0 and 9 on the Triton path
(interpreted), batch 1 and 3, from zero and from an initial state (``dsf_testing.spec_hunt_tests``), and at T = 1,
7 and 33, batch 2, from an initial state (running state dicts included) on torch, step and (T = 33) Triton;
gradients of the input and every parameter; every path against dsfc's reference; the family and eigenvalue bound of
``dsfc analyze``, the claimed (or true) bound checked on the module's own A. Broken versions (a typo'd index, a
param declared with two axes swapped, a transposed read, a missing dim, a misspelt let, a misspelt drive) make
``python -m dsfc compile`` exit 2 with ``file:line:col`` errors and write nothing. Every output was right; spot-checked
in the hunt and not kept (they pass): each spec at two more dim sets (all 1s; odd sizes such as K = 7, V = 2) on
torch and Triton against the reference, and fp32 against float64 at input scales 1, 10, 30.

Found and fixed (a report weaker than the truth): the Titans-like memory with momentum was "unknown"; its A is
stacked over the (memory, momentum) axis with sub-blocks alpha_ij I + beta_ij k k^T sharing one k, and its
eigenvalues are those of the 2 x 2 matrices alpha and alpha + (k.k) beta, both in the open unit disk. A new rule
(``_stacked_rank1`` in analysis/stability.py) proves |lambda| < 1 for it and for hunt 11's key-first form; Jury's
conditions are now also read with each gate collected (1 + tr + det = eta (2 - al) + 2 - al + ...), which interval
arithmetic needs (tests/analysis/test_stacked_rank1.py: no claim where eta or the step can push |lambda| above 1, and
the module's A does).

Found and fixed (a report weaker than the truth): the complex selective S5 was "not proven <= 1" ([0, 1.41)): its
rotation-scaling block's entries are lets, ar = e^(dt lr) cos(dt th) and ai = e^(dt lr) sin(dt th), each read in
(-1, 1); the prover now also reads ar^2 + ai^2 with the lets inlined, e^(2 dt lr) in (0, 1).

Found and fixed (error messages): a typo'd index (``k[h, b2]`` for ``a2``) was hinted "write b2 + 0" (read part of
the axis); a read whose indices fit only in another order (``C_out[j, o]``, or a param declared ``W_V[H, d, V]`` and
read ``W_V[h, b, m]``) gave an error per index with hints to read part of an axis or wrap it; a misspelt ``drive``
gave two more errors, at B and D, about the raw input's axes. Now: "did you mean 'a2'?", one error for the read with
both fixes as the hint (``did you mean C_out[o, j]? Or, if the read is right, declare param C_out[N, p]``), and one
error for the drive with a "did you mean" when a let is one edit away.

Left weaker than the truth (no false claim): TTT's inner loop with raw keys is "unknown" (true: 1 - eta |k|^2 has no
lower bound, so no bound holds); the cosFormer needs ``y[h, b + 0]`` in its post to read the value slots without
the denominator slot (the documented spelling; the error's hint gives it).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, case_builds, matvec, rel_err, run_steps,  # noqa: E402
                         spec_hunt_tests, stack_steps, state_err)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.cli import main  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

COMBA = """
model Comba "Comba: S = S (al - be k k^T) + be v k^T (value-first S[h, b, a]), read y = S (q - dd k)"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, b: V, a: K]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_al[H, d] ~ normal(0, 0.5)
param w_be[H, d] ~ normal(0, 0.5)
param dd[H] = 0.3
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(j, kr[h, j] ^ 2) + 1e-6)
let al[h: H] = sigmoid(sum(m, w_al[h, m] * u[m]) + 2)
let be[h: H] = sigmoid(sum(m, w_be[h, m] * u[m]))
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * (al[h] * delta(a, a2) - be[h] * k[h, a] * k[h, a2])
B[(h, b, a), m] = be[h] * W_V[h, b, m] * k[h, a]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * (q[h, a] - dd[h] * k[h, a])
"""

COSFORMER = """
model CosFormerNorm "cosFormer, normalised: o = sum_j w_tj q.k_j v_j / sum_j w_tj q.k_j, w_tj = cos(pi (t - j) / 2M)"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
dim V1 = V + 1
dim M = 40
input u[d]
state S[h: H, r: 2, a: K, b: V1]
output y[h: H, b: V1]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = relu(sum(m, W_Q[h, a, m] * u[m]))
let k[h: H, a: K] = relu(sum(m, W_K[h, a, m] * u[m]))
let one = 1
let t = cumsum(one)
let cs[r: 2] = (1 - r) * cos(3.141592653589793 * t / (2 * M)) + r * sin(3.141592653589793 * t / (2 * M))
let v[h: H, c: V] = sum(m, W_V[h, c, m] * u[m])
let v1[h: H, b: V1] = sum(c, delta(b, c) * v[h, c]) + delta(b, V)
drive v1
A[(h, r, a, b), (h2, r2, a2, b2)] = delta(h, h2) * delta(r, r2) * delta(a, a2) * delta(b, b2)
B[(h, r, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * k[h, a] * cs[r]
C[(o, e), (h, r, a, b)] = delta(o, h) * delta(e, b) * q[h, a] * cs[r]
post o[h: H, b: V] = y[h, b + 0] / (y[h, V] + 0.001)
"""

GATELOOP = """
model GateLoopC "GateLoop: S = a S + k v^T, a = sigmoid(.) e^(i th) per key, q, k complex, y = Re(q^T S), (re, im)"
dim d = 5
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, r: 2, b: V]
output y[h: H, b: V]
param W_Q[H, K, 2, d] ~ normal(0, 0.5)
param W_K[H, K, 2, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_g[H, K, d] ~ normal(0, 0.5)
param w_th[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K, r: 2] = sum(m, W_Q[h, a, r, m] * u[m])
let k[h: H, a: K, r: 2] = sum(m, W_K[h, a, r, m] * u[m])
let g[h: H, a: K] = sigmoid(sum(m, w_g[h, a, m] * u[m]) + 1)
let th[h: H, a: K] = sum(m, w_th[h, a, m] * u[m])
# (re, im) of a z: [[g cos, -g sin], [g sin, g cos]]
A[(h, a, r, b), (h2, a2, r2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h, a]
    * (delta(r, r2) * cos(th[h, a]) + (delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1)) * sin(th[h, a]))
B[(h, a, r, b), m] = k[h, a, r] * W_V[h, b, m]
# Re(q S) = q_re S_re - q_im S_im
C[(o, e), (h, a, r, b)] = delta(o, h) * delta(e, b) * q[h, a, r] * (1 - 2 * r)
"""

LONGHORN = """
model Longhorn "Longhorn (Liu et al. 2024): S = (I - eps k k^T) S + eps k x^T, eps = beta / (1 + beta k.k), per head"
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
param w_b[H, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let beta[h: H] = sigmoid(sum(m, w_b[h, m] * u[m]))
let eps[h: H] = beta[h] / (1 + beta[h] * sum(a, k[h, a] * k[h, a]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - eps[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = eps[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

MINGRU = """
model MinGRU "minGRU (Feng et al. 2024) with expansion: h = (1 - z) h + z h~, z = sigmoid(W_z x), h~ = W_h x, y = W_o h"
dim d = 3
dim E = 7
input u[d]
state h[c: E]
output y[c: E]
param W_z[E, d] ~ normal(0, 0.5)
param b_z[E] = -1
param W_h[E, d] ~ normal(0, 0.5)
param W_o[d, E] ~ normal(0, 0.4)
let z[c: E] = sigmoid(sum(m, W_z[c, m] * u[m]) + b_z[c])
A[c, c2] = delta(c, c2) * (1 - z[c])
B[c, m] = z[c] * W_h[c, m]
C[o, c] = delta(o, c)
post out[o: d] = sum(c, W_o[o, c] * y[c])
"""

RWKV4 = """
model RWKV4R "RWKV-4 time mixing: WKV num/den read before the update, bonus e^u in D, out = W_o (sigmoid(r) wkv)"
dim d = 5
dim E = 3
input u[d]
state s[c: E, r: 2]
output y[c: E, r: 2]
param w[c: E] = -1 + c / E
param bonus[E] ~ normal(0, 0.5)
param W_k[E, d] ~ normal(0, 0.5)
param W_v[E, d] ~ normal(0, 0.5)
param W_r[E, d] ~ normal(0, 0.5)
param W_o[d, E] ~ normal(0, 0.5)
let k[c: E] = sum(m, W_k[c, m] * u[m])
let v[c: E] = sum(m, W_v[c, m] * u[m])
let rg[c: E] = sigmoid(sum(m, W_r[c, m] * u[m]))
let x[c: E, r: 2] = exp(k[c]) * ((1 - r) * v[c] + r)
drive x
readout pre
A[(c, r), (c2, r2)] = delta(c, c2) * delta(r, r2) * exp(-exp(w[c]))
B[(c, r), (c2, r2)] = delta(c, c2) * delta(r, r2)
C[(o, e), (c, r)] = delta(o, c) * delta(e, r)
D[(o, e), (c, r)] = delta(o, c) * delta(e, r) * exp(bonus[c])
post wkv[c: E] = rg[c] * y[c, 0] / y[c, 1]
post out[o: d] = sum(c, W_o[o, c] * wkv[c])
"""

S5SEL = """
model S5Sel "selective S5 (MIMO): N modes shared by the channels, dt per mode from u, ZOH, dense B [N, d], C [p, N], D"
dim d = 3
dim N = 6
dim p = 4
input u[d]
state x[N]
output y[p]
param lam_log[j: N] = log(0.5 + j)
param W_dt[N, d] ~ normal(0, 0.5)
param b_dt[N] = -1
param B_in[N, d] ~ normal(0, 0.5)
param C_out[p, N] ~ normal(0, 0.5)
param D_skip[p, d] ~ normal(0, 0.3)
let dt[j: N] = softplus(sum(m, W_dt[j, m] * u[m]) + b_dt[j])
let lam[j: N] = -exp(lam_log[j])
A[j, j2] = delta(j, j2) * exp(dt[j] * lam[j])
B[j, m] = (exp(dt[j] * lam[j]) - 1) / lam[j] * B_in[j, m]
C[o, j] = C_out[o, j]
D[o, m] = D_skip[o, m]
"""

TITANS = """
model Titans "Titans-like memory with momentum: Mo = eta Mo - th (M k k^T - v k^T), M = (1 - al) M + Mo (value-first)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, s: 2, b: V, a: K]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_al[H, d] ~ normal(0, 0.5)
param w_eta[H, d] ~ normal(0, 0.5)
param w_th[H, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(j, kr[h, j] ^ 2) + 1e-6)
let al[h: H] = sigmoid(sum(m, w_al[h, m] * u[m]) - 2)
let eta[h: H] = sigmoid(sum(m, w_eta[h, m] * u[m]))
let th[h: H] = 0.5 * sigmoid(sum(m, w_th[h, m] * u[m]))
# s = 0: the memory M, s = 1: the momentum Mo. Mo_t = eta Mo - th M k k^T + th v k^T; M_t = (1 - al) M + Mo_t
A[(h, s, b, a), (h2, s2, b2, a2)] = delta(h, h2) * delta(b, b2) * (delta(s2, 1) * eta[h] * delta(a, a2)
    + delta(s2, 0) * (delta(s, 0) * (1 - al[h]) * delta(a, a2) - th[h] * k[h, a] * k[h, a2]))
B[(h, s, b, a), m] = th[h] * W_V[h, b, m] * k[h, a]
C[(o, e), (h, s, b, a)] = delta(o, h) * delta(e, b) * delta(s, 0) * q[h, a]
"""

TTT = """
model TTTLinear "TTT-linear, per-token step: W = W - eta grad |W k - v|^2 / 2 = W (I - eta k k^T) + eta v k^T, z = W q"
dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state W[h: H, b: V, a: K]
output z[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_lr[H, d] ~ normal(0, 0.5)
param lr0 = 0.5
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let eta[h: H] = lr0 * sigmoid(sum(m, w_lr[h, m] * u[m])) / K
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - eta[h] * k[h, a] * k[h, a2])
B[(h, b, a), m] = eta[h] * W_V[h, b, m] * k[h, a]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * q[h, a]
"""

S5COMPLEX = """
model S5Complex "selective S5, complex modes: x = exp(dt lam) x + (exp(dt lam) - 1) / lam B u, y = 2 Re(C x) + D u"
dim d = 3
dim N = 4
dim p = 5
input u[d]
state x[j: N, r: 2]
output y[p]
param lam_log[j: N] = log(0.5 + 0.25 * j)
param lam_im[j: N] = 3.141592653589793 * j
param W_dt[N, d] ~ normal(0, 0.5)
param b_dt[N] = -1
param B_re[N, d] ~ normal(0, 0.5)
param B_im[N, d] ~ normal(0, 0.5)
param C_re[p, N] ~ normal(0, 0.5)
param C_im[p, N] ~ normal(0, 0.5)
param D_skip[p, d] ~ normal(0, 0.3)
let dt[j: N] = softplus(sum(m, W_dt[j, m] * u[m]) + b_dt[j])
let lr[j: N] = -exp(lam_log[j])
let ar[j: N] = exp(dt[j] * lr[j]) * cos(dt[j] * lam_im[j])
let ai[j: N] = exp(dt[j] * lr[j]) * sin(dt[j] * lam_im[j])
let den[j: N] = lr[j] ^ 2 + lam_im[j] ^ 2
# (exp(dt lam) - 1) / lam = (a - 1) conj(lam) / |lam|^2
let gr[j: N] = ((ar[j] - 1) * lr[j] + ai[j] * lam_im[j]) / den[j]
let gi[j: N] = (ai[j] * lr[j] - (ar[j] - 1) * lam_im[j]) / den[j]
A[(j, r), (j2, r2)] = delta(j, j2) * (delta(r, r2) * ar[j]
    + (delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1)) * ai[j])
B[(j, r), m] = delta(r, 0) * (gr[j] * B_re[j, m] - gi[j] * B_im[j, m])
    + delta(r, 1) * (gr[j] * B_im[j, m] + gi[j] * B_re[j, m])
C[o, (j, r)] = 2 * (delta(r, 0) * C_re[o, j] - delta(r, 1) * C_im[o, j])
D[o, m] = D_skip[o, m]
"""

CASES = {
    "longhorn": (LONGHORN, Family.CHUNKED_DELTA),
    "comba": (COMBA, Family.CHUNKED_DELTA),
    "titans": (TITANS, Family.DENSE_SCAN),
    "mingru": (MINGRU, Family.DIAGONAL_SCAN),
    "cosformer": (COSFORMER, Family.CHUNKED_OUTER),
    "rwkv4": (RWKV4, Family.DIAGONAL_SCAN),
    "ttt": (TTT, Family.CHUNKED_DELTA),
    "s5sel": (S5SEL, Family.DIAGONAL_SCAN),
    "gateloop": (GATELOOP, Family.CHUNKED_OUTER),  # the rotation moved into q and k (structure.split_rotation)
    "s5complex": (S5COMPLEX, Family.DENSE_SCAN),
}
sig = torch.sigmoid


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d] and an initial state in the spec's layout (None: zero; a dict
# {"h": ..., <running let>: ...} for cosFormer), and returns y [B, T, ...].

def _zeros(u, h0, *shape):
    return u.new_zeros(u.shape[0], *shape) if h0 is None else h0


def _longhorn(P, u, h0=None):
    # Longhorn's step is the closed form of the online regression min_S |S - S'|^2 + beta |S^T k - x|^2:
    # S = (I + beta k k^T)^-1 (S' + beta k x^T) (a solve here; the spec writes its Sherman-Morrison form); y = S^T q
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    S, ys, eye = _zeros(u, h0, H, K, V), [], torch.eye(K, dtype=F64)
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k, x = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        beta = sig(ut @ P["w_b"].T)[..., None, None]  # [B, H, 1, 1]
        lhs = eye + beta * k[..., :, None] * k[..., None, :]
        S = torch.linalg.solve(lhs, S + beta * k[..., :, None] * x[..., None, :])
        ys.append(torch.einsum("zha,zhab->zhb", q, S))
    return stack_steps(ys, u, H, V)


def _unit(x):
    return x / ((x * x).sum(-1, keepdim=True) + 1e-6).sqrt()


def _comba(P, u, h0=None):
    # value-first S [V, K] per head: S = S (al I - be k k^T) + be v k^T, k L2-normalised; y = S (q - dd k)
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    S, ys = _zeros(u, h0, H, V, K), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k, v = matvec(P["W_Q"], ut), _unit(matvec(P["W_K"], ut)), matvec(P["W_V"], ut)
        al = sig(ut @ P["w_al"].T + 2)[..., None, None]
        be = sig(ut @ P["w_be"].T)[..., None, None]
        Sk = torch.einsum("zhva,zha->zhv", S, k)
        S = al * S - be * Sk[..., None] * k[..., None, :] + be * v[..., None] * k[..., None, :]
        ys.append(torch.einsum("zhva,zha->zhv", S, q - P["dd"][:, None] * k))
    return stack_steps(ys, u, H, V)


def _titans(P, u, h0=None):
    # memory M and momentum Mo [V, K] per head (state [H, 2, V, K]: 0 = M, 1 = Mo), the gradient of |M k - v|^2 / 2:
    # Mo = eta Mo - th (M k - v) k^T, M = (1 - al) M + Mo; y = M q
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    st = _zeros(u, h0, H, 2, V, K)
    M, Mo, ys = st[:, :, 0], st[:, :, 1], []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k, v = matvec(P["W_Q"], ut), _unit(matvec(P["W_K"], ut)), matvec(P["W_V"], ut)
        al = sig(ut @ P["w_al"].T - 2)[..., None, None]
        eta = sig(ut @ P["w_eta"].T)[..., None, None]
        th = 0.5 * sig(ut @ P["w_th"].T)[..., None, None]
        grad = (torch.einsum("zhva,zha->zhv", M, k) - v)[..., None] * k[..., None, :]
        Mo = eta * Mo - th * grad
        M = (1 - al) * M + Mo
        ys.append(torch.einsum("zhva,zha->zhv", M, q))
    return stack_steps(ys, u, H, V)


def _mingru(P, u, h0=None):
    # h = (1 - z) h + z h~, z = sigmoid(W_z u + b_z), h~ = W_h u (minGRU, Feng et al. 2024); out = W_o h
    h, ys = _zeros(u, h0, P["W_h"].shape[0]), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        z = sig(ut @ P["W_z"].T + P["b_z"])
        h = (1 - z) * h + z * (ut @ P["W_h"].T)
        ys.append(h @ P["W_o"].T)
    return stack_steps(ys, u, P["W_o"].shape[0])


COS_M = 40  # cosFormer's M (the spec's dim M)


def _cosformer(P, u, h0=None):
    # cos(pi (t - j) / 2M) = cos_t cos_j + sin_t sin_j: two linear-attention states per head, numerator [K, V] and
    # denominator [K] each (the spec keeps the denominator as a last value slot); positions t = 1, 2, ... from the
    # carried count; o = (relu(q) . num) / (relu(q) . den + 0.001)
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    B = u.shape[0]
    S = u.new_zeros(B, H, 2, K, V + 1) if h0 is None else h0["h"]
    pos = u.new_zeros(B) if h0 is None else h0["t"].reshape(B)
    ys = []
    for t in range(u.shape[1]):
        ut = u[:, t]
        pos = pos + 1
        ang = math.pi * pos / (2 * COS_M)
        cs = torch.stack([torch.cos(ang), torch.sin(ang)], -1)[:, None, :, None, None]  # [B, 1, 2, 1, 1]
        q, k = torch.relu(matvec(P["W_Q"], ut)), torch.relu(matvec(P["W_K"], ut))
        v1 = torch.cat([matvec(P["W_V"], ut), u.new_ones(B, H, 1)], -1)
        S = S + cs * k[:, :, None, :, None] * v1[:, :, None, None, :]
        y = torch.einsum("zhra,zhrab->zhb", q[:, :, None, :] * cs[..., 0], S)
        ys.append(y[..., :V] / (y[..., V:] + 0.001))
    return stack_steps(ys, u, H, V)


def _cosformer_quadratic(P, u):
    """cosFormer as the paper writes it (from zero): o_t = sum_(j<=t) w_tj relu(q_t).relu(k_j) v_j /
    (sum_(j<=t) w_tj relu(q_t).relu(k_j) + 0.001), w_tj = cos(pi (t - j) / 2M)."""
    q, k = torch.relu(torch.einsum("...m,btm->bt...", P["W_Q"], u)), torch.relu(
        torch.einsum("...m,btm->bt...", P["W_K"], u))
    v = torch.einsum("...m,btm->bt...", P["W_V"], u)  # [B, T, H, V]
    T = u.shape[1]
    idx = torch.arange(T, dtype=F64)
    w = torch.cos(math.pi * (idx[:, None] - idx[None, :]) / (2 * COS_M)) * (idx[:, None] >= idx[None, :])
    s = torch.einsum("btha,bjha->bhtj", q, k) * w  # [B, H, T, T]
    return (torch.einsum("bhtj,bjhv->bthv", s, v) / (s.sum(-1).transpose(1, 2)[..., None] + 0.001))


def _rwkv4(P, u, h0=None):
    # RWKV-4 WKV per channel c (recurrent form): wkv = (num + e^(bonus + k) v) / (den + e^(bonus + k)),
    # num = e^-w num + e^k v, den = e^-w den + e^k, w = exp(w param); out = W_o (sigmoid(r) wkv)
    E = P["W_k"].shape[0]
    st = _zeros(u, h0, E, 2)
    num, den, ys = st[..., 0], st[..., 1], []
    decay = torch.exp(-torch.exp(P["w"]))
    for t in range(u.shape[1]):
        ut = u[:, t]
        k, v, r = ut @ P["W_k"].T, ut @ P["W_v"].T, sig(ut @ P["W_r"].T)
        bk = torch.exp(P["bonus"] + k)
        ys.append((r * (num + bk * v) / (den + bk)) @ P["W_o"].T)
        num, den = decay * num + torch.exp(k) * v, decay * den + torch.exp(k)
    return stack_steps(ys, u, P["W_o"].shape[0])


def _rwkv4_quadratic(P, u):
    """RWKV-4's WKV as the paper writes it (from zero): wkv_t = (sum_(i<t) e^(-(t-1-i) w + k_i) v_i
    + e^(u + k_t) v_t) / (the same with v = 1)."""
    k, v = u @ P["W_k"].T, u @ P["W_v"].T  # [B, T, E]
    T, w = u.shape[1], torch.exp(P["w"])
    out = []
    for t in range(T):
        e = torch.stack([-(t - 1 - i) * w + k[:, i] for i in range(t)] + [P["bonus"] + k[:, t]], 1)  # [B, t+1, E]
        out.append((e.exp() * v[:, :t + 1]).sum(1) / e.exp().sum(1))
    wkv = torch.stack(out, 1)
    return (sig(u @ P["W_r"].T) * wkv) @ P["W_o"].T


def _ttt(P, u, h0=None):
    # the inner model W [V, K] per head takes one gradient step of l(W) = |W k - v|^2 / 2 per token (autograd on the
    # loss), learning rate eta = lr0 sigmoid(w_lr u) / K; the output z = W q uses the updated W
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    W, ys = _zeros(u, h0, H, V, K), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        eta = (P["lr0"] * sig(ut @ P["w_lr"].T) / K)[..., None, None]
        grad = (torch.einsum("zhva,zha->zhv", W, k) - v)[..., None] * k[..., None, :]  # d/dW |W k - v|^2 / 2
        W = W - eta * grad
        ys.append(torch.einsum("zhva,zha->zhv", W, q))
    return stack_steps(ys, u, H, V)


def _s5sel(P, u, h0=None):
    # S5 with a per-mode step dt = softplus(W_dt u + b_dt): x = exp(dt lam) x + (exp(dt lam) - 1) / lam (B_in u)
    # (zero-order hold per mode, lam = -exp(lam_log)); y = C_out x + D_skip u
    lam = -torch.exp(P["lam_log"])
    x, ys = _zeros(u, h0, lam.shape[0]), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        dt = torch.nn.functional.softplus(ut @ P["W_dt"].T + P["b_dt"])
        x = torch.exp(dt * lam) * x + torch.expm1(dt * lam) / lam * (ut @ P["B_in"].T)
        ys.append(x @ P["C_out"].T + ut @ P["D_skip"].T)
    return stack_steps(ys, u, P["C_out"].shape[0])


def _s5complex(P, u, h0=None):
    # complex arithmetic: lam = -exp(lam_log) + i lam_im, dt = softplus(W_dt u + b_dt) per mode,
    # x = exp(dt lam) x + (exp(dt lam) - 1) / lam ((B_re + i B_im) u) (zero-order hold), y = 2 Re((C_re + i C_im) x)
    # + D_skip u; the state in the spec's layout [N, 2] is (Re x, Im x)
    lam = torch.complex(-torch.exp(P["lam_log"]), P["lam_im"])
    Bc, Cc = torch.complex(P["B_re"], P["B_im"]), torch.complex(P["C_re"], P["C_im"])
    st = _zeros(u, h0, lam.shape[0], 2)
    x, ys = torch.complex(st[..., 0], st[..., 1]), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        a = torch.exp(torch.nn.functional.softplus(ut @ P["W_dt"].T + P["b_dt"]) * lam)
        x = a * x + (a - 1) / lam * (ut.to(Bc.dtype) @ Bc.T)
        ys.append(2 * (x @ Cc.T).real + ut @ P["D_skip"].T)
    return stack_steps(ys, u, P["C_re"].shape[0])


def _gateloop(P, u, h0=None):
    # complex arithmetic: S [K, V] complex per head, S = a S + k v^T with a = g e^(i th) per key, k = k_re + i k_im;
    # y = Re(sum_a q_a S_a), q complex. The state in the spec's layout [H, K, 2, V] is (Re S, Im S) on axis 2
    H, K = P["W_K"].shape[:2]
    V = P["W_V"].shape[1]
    st = _zeros(u, h0, H, K, 2, V)
    S, ys = torch.complex(st[..., 0, :], st[..., 1, :]), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        qr, kr = matvec(P["W_Q"], ut), matvec(P["W_K"], ut)  # [B, H, K, 2]
        q, k = torch.complex(qr[..., 0], qr[..., 1]), torch.complex(kr[..., 0], kr[..., 1])
        a = sig(matvec(P["w_g"], ut) + 1) * torch.exp(1j * matvec(P["w_th"], ut))
        S = a[..., None] * S + k[..., None] * matvec(P["W_V"], ut)[:, :, None, :]
        ys.append(torch.einsum("zha,zhav->zhv", q, S).real)
    return stack_steps(ys, u, H, V)


INDEPENDENT = {"longhorn": _longhorn, "comba": _comba, "titans": _titans, "mingru": _mingru, "cosformer": _cosformer,
               "rwkv4": _rwkv4, "ttt": _ttt, "s5sel": _s5sel, "gateloop": _gateloop, "s5complex": _s5complex}
EIGEN = {"longhorn": Bound.MARGINAL, "comba": Bound.STABLE, "titans": Bound.STABLE, "mingru": Bound.STABLE,
         "cosformer": Bound.MARGINAL, "rwkv4": Bound.STABLE, "ttt": Bound.UNKNOWN, "s5sel": Bound.STABLE,
         "gateloop": Bound.STABLE, "s5complex": Bound.STABLE}
TRUE_BOUND = {}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


# gradients against the loops, every path against dsfc's reference, the structure report (dsf_testing.spec_hunt_tests);
# the forward check is the odd-length one below (T = 1, 7, 33 from an initial state, Triton at 33)
(_, test_new_spec_gradients_match_an_independent_implementation, test_new_spec_matches_the_reference,
 test_the_structure_report_is_true) = spec_hunt_tests(CASES, INDEPENDENT, EIGEN, _built, TRUE_BOUND)


def _initial(built, batch, gen):
    """A random initial state in the spec's layout; cosFormer's carries its count t too (a dict)."""
    h = 0.5 * torch.randn(batch, *built.state_shape(), generator=gen, dtype=F64)
    if not built.running:
        return h
    return {"h": h, "t": torch.full((batch,), 5.0, dtype=F64)}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_an_independent_implementation(name):
    """T = 1, 7 and 33 at batch 2 from a random initial state (cosFormer's with its count at 5) and T = 7 from zero:
    forward on torch, token-by-token step, and the Triton path (interpreted) at T = 33, against the loop; the final
    state against dsfc's reference."""
    built, loop = _built(name), INDEPENDENT[name]
    P, gen = built.params(), torch.Generator().manual_seed(7)
    for t, given in ((1, True), (7, True), (7, False), (33, True)):
        u = torch.randn(2, t, built.d_in(), generator=gen, dtype=F64)
        h0 = _initial(built, 2, gen) if given else None
        want = loop(P, u, h0).reshape(2, t, built.d_out())
        _, h_ref = built.reference(u, h0)
        for backend in ("torch", "triton") if TRITON and t == 33 else ("torch",):
            built.model.backend = backend
            with torch.no_grad():
                y, hT = built.model(u, initial_state=h0, output_final_state=True)
            assert rel_err(y, want) < 1e-8 and state_err(hT, h_ref) < 1e-8, (backend, t)
        built.model.backend = "torch"
        with torch.no_grad():
            assert rel_err(run_steps(built.model, u, h0)[0], want) < 1e-8, ("step", t)


def test_the_loops_are_the_papers_quadratic_forms():
    """cosFormer's and RWKV-4's recurrent loops above equal the models' quadratic (attention-like) forms as the
    papers write them, from zero (batch 2, T = 11)."""
    gen = torch.Generator().manual_seed(8)
    P = _built("cosformer").params()
    u = torch.randn(2, 11, 5, generator=gen, dtype=F64)
    assert rel_err(_cosformer(P, u), _cosformer_quadratic(P, u)) < 1e-12
    P = _built("rwkv4").params()
    assert rel_err(_rwkv4(P, u), _rwkv4_quadratic(P, u)) < 1e-12


def test_longhorn_step_is_the_closed_form_of_its_online_regression():
    """Longhorn's S = (I - eps k k^T) S + eps k x^T with eps = beta / (1 + beta k.k) minimises
    |S - S'|^2 + beta |S^T k - x|^2: the gradient of that objective at the module's next state is zero."""
    built = _built("longhorn")
    P, gen = built.params(), torch.Generator().manual_seed(9)
    u, h0 = torch.randn(2, 1, 5, generator=gen, dtype=F64), torch.randn(2, 2, 3, 3, generator=gen, dtype=F64)
    with torch.no_grad():
        _, S = built.model(u, initial_state=h0, output_final_state=True)
    ut = u[:, 0]
    k, x = matvec(P["W_K"], ut), matvec(P["W_V"], ut)
    beta = sig(ut @ P["w_b"].T)[..., None, None]
    resid = torch.einsum("zhab,zha->zhb", S, k) - x
    grad = 2 * (S - h0) + 2 * beta * k[..., :, None] * resid[..., None, :]
    assert grad.abs().max() < 1e-12


def test_a_learned_initial_weight_of_the_ttt_inner_model_gets_its_gradient():
    """TTT-linear's learned initial inner weight W_0 (one [H, V, K] tensor, broadcast over the batch) passed as
    ``initial_state``: output and d/dW_0 against autograd through the loop, on torch and (interpreted) Triton."""
    built = _built("ttt")
    P, gen = built.params(), torch.Generator().manual_seed(10)
    u, w = torch.randn(2, 7, 5, generator=gen, dtype=F64), torch.randn(2, 7, 6, generator=gen, dtype=F64)
    W0 = (0.3 * torch.randn(2, 3, 3, generator=gen, dtype=F64)).requires_grad_()
    want = _ttt(P, u, W0.expand(2, -1, -1, -1)).reshape(2, 7, 6)
    (g_want,) = torch.autograd.grad((want * w).sum(), W0)
    for backend in ("torch", "triton") if TRITON else ("torch",):
        built.model.backend = backend
        y = built.model(u, initial_state=W0.expand(2, -1, -1, -1))
        (g,) = torch.autograd.grad((y * w).sum(), W0)
        assert rel_err(y.detach(), want.detach()) < 1e-8 and rel_err(g, g_want) < 1e-8, backend
    built.model.backend = "torch"


BROKEN = {  # (spec, the bad text, its replacement, the error's line:col, what the message says, the hint)
    "comba-index": (COMBA, "be[h] * k[h, a] * k[h, a2])", "be[h] * k[h, a] * k[h, b2])", "20:107",
                    "index 'b2' ranges over 2 values but axis 1 of 'k' has extent 3",
                    "did you mean 'a2'? (it ranges over 3 values)"),
    "ttt-shape": (TTT, "param W_V[H, V, d]", "param W_V[H, d, V]", "18:28",
                  "the indices of 'W_V' fit its axes only in another order ('b' ranges over 3 values, axis 1 has 5; "
                  "'m' ranges over 5 values, axis 2 has 3)",
                  "did you mean W_V[h, m, b]? Or, if the read is right, declare param W_V[H, V, d]"),
    "s5-transposed": (S5SEL, "C[o, j] = C_out[o, j]", "C[o, j] = C_out[j, o]", "18:11",
                      "the indices of 'C_out' fit its axes only in another order", "did you mean C_out[o, j]?"),
    "titans-nodim": (TITANS, "dim K = 3\n", "", "6:30", "unknown dim 'K' in axis 3 of 'S'",
                     "declare it first: dim NAME = VALUE"),
    "longhorn-let": (LONGHORN, "B[(h, a, b), m] = eps[h]", "B[(h, a, b), m] = esp[h]", "18:19",
                     "unknown name 'esp'", "did you mean 'eps'?"),
    "cosformer-drive": (COSFORMER, "drive v1", "drive v2", "21:1",
                        "'drive' must name a let (the signal B and D multiply), got 'v2'", "did you mean 'v1'?"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_spec_is_a_located_error_and_writes_nothing(case, tmp_path, capsys):
    """Each broken spec: ``dsfc compile`` exits 2, names ``file:line:col``, the fault and a hint that fixes it, and
    writes no file. Found and fixed: a typo'd index (``k[h, b2]`` for ``a2``) was hinted "write b2 + 0" (read part
    of the axis), a read or declaration with two axes swapped gave an error per index with such hints, and a
    misspelt ``drive`` gave two more errors, one per matrix B and D, about the input's axes."""
    text, bad, good, where, says, hint = BROKEN[case]
    assert text.count(bad) == 1
    spec = tmp_path / f"{case}.dsf"
    spec.write_text(text.replace(bad, good).lstrip("\n"))
    out = tmp_path / "out"
    assert main(["compile", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:{where}: error: {says}" in err and f"hint: {hint}" in err, err
    assert err.count("error:") == (6 if case == "titans-nodim" else 1), err
    assert not out.exists() or not any(out.iterdir())


def test_python_m_dsfc_compile_of_a_broken_spec_exits_non_zero(tmp_path):
    """The same through ``python -m dsfc`` as a user runs it: a non-zero exit, the located error on stderr."""
    text, bad, good, where, says, _ = BROKEN["s5-transposed"]
    spec = tmp_path / "s5.dsf"
    spec.write_text(text.replace(bad, good).lstrip("\n"))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "dsfc", "compile", str(spec), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"{spec}:{where}: error: {says}" in run.stderr, run.stderr
    assert not out.exists()


def test_a_rotation_block_of_lets_is_bounded_with_its_lets_inlined():
    """The selective S5's A is a rotation-scaling block [[ar, -ai], [ai, ar]] of lets ar = e^(dt lr) cos(dt th),
    ai = e^(dt lr) sin(dt th): read by name, |lambda|^2 = ar^2 + ai^2 lay in [0, 2) ("not proven <= 1", a report
    weaker than the truth); with the lets inlined it simplifies to e^(2 dt lr) in (0, 1)."""
    rep = _compiled("s5complex").report
    assert (rep.eigen_bound, rep.eigen_interval) == (Bound.STABLE.value, "(0, 1)"), rep.eigen_reason
    assert "its lets inlined" in rep.eigen_reason, rep.eigen_reason
