"""A thirtieth spec hunt, "a researcher's ablations": sixteen one-change variants of catalog layers (GLA, Mamba-2
SSD, RetNet, Gated DeltaNet, RG-LRU, mLSTM, S6, linear attention), written the way a user edits a spec for an
experiment.

Specs (one change each from the catalog layer, tiny odd dims, K != V where the layer has both): GLA with its decay a
learned per-head scalar times a per-key gate; GLA with sigmoid swapped for a clipped ``1 - min(relu(.), 1)`` (the decay
is exactly 0 at some steps); GLA with a token shift (prev) in the gate and the key scaled by the decay's complement
(1 - alpha); Mamba-2 SSD with B and C tied (one projection); SSD time-invariant (dt from its bias only) with the state
written (h, j, p); RetNet with keys shared by two heads (GQA-style ``k[h // R]``) and a dense D skip; RetNet with the
head axis removed, width-1 keys and a value-major state; RetNet with a learned power of its decay and head 0 fixed at
1 (no forgetting); Gated DeltaNet with an L1-normalised key; Gated DeltaNet with its state written value-major
(h, b, a); Gated DeltaNet with keys shared by two heads; RG-LRU with a token shift in its recurrence gate; mLSTM with
one head, K != V, the forget gate spelled exp(-softplus(-x)) and an output-gate post; S6 with B and C tied and dt =
exp(.); S6 with a head axis added (dt per head, A_log per (head, j)); linear attention with its key divided by its
running sum (cumsum) and a D skip.

Tested (each against a float64 loop written here from the ablated equations, not from dsfc): forward at T = 0, 1, 7, 9
from zero and from a random state, token-by-token step, gradients of the input and every parameter; every path against
dsfc's reference (torch with step and gradients, Triton interpreted from an initial state, the chunked families with
3-step chunks); a sequence cut at an odd offset and continued from its final state (torch across a 64-step chunk; Triton
for four: running lets and a value-major delta state); the family and the eigenvalue report, its claim checked on the
module's own A (``dsf_testing.spec_hunt_tests``). Every variant of a fast-family layer stays in it: the GLA, SSD,
RetNet, mLSTM and linear-attention variants in the chunked outer-product scan, the DeltaNet ones (value-major, shared
keys, L1 key) in the chunked delta-rule scan, S6 with a head axis moves up to the chunked outer-product scan (a decay
per (head, j) over the value axis p), the rest stay diagonal. The reports are as tight as the catalog's where the change
should not move them ((0, 1) for GLA, SSD, Gated DeltaNet, RG-LRU, mLSTM, S6; [31/32, 1) for RetNet with shared keys;
[0, 1] for the relu gate that reaches 0; (0, 1] with the no-forgetting head).

Found and fixed (a report weaker than the truth): Gated DeltaNet with an L1-normalised key was "unknown" (-inf, 1):
|k|^2 = sum(j, x_j^2) / sum(j, |x_j|)^2 read as two independent sums was [0, inf). The prover's norm-ratio rule reads
``sum(j, |y_j|^p) / D`` with D at least ``sum(j, |y_j|)^p`` (``(S + c)^p``, c >= 0, or its expanded form) as [0, 1],
also for features >= 0 over their sum and a softmax over the key axis; the delta rule is then (0, 1). A signed sum, a
denominator shrunk below the norm and a key of twice that length are not claimed.

Found and fixed (a report weaker than the truth): HGRN's lower-bounded gate ``mu + (1 - mu) g`` with g = min(relu(x), 1)
was (0, 2), "not proven <= 1" (with mu a let of its own: [0, 1], not (0, 1]): the multilinear rule that reads mu once
did not take ``min`` / ``max`` as atoms (SymPy's Min is no Function). Now (0, 1], true on the module's A (exactly 1
where the gate saturates). The norm-ratio rule also proves hunt 12's DPFP fast weight programmer (features >= 0 over
their sum): "unknown" before, now |lambda| <= 1 (0, 1]. Of 69 test and catalog specs that read min / max or abs, or
divide by a sum or raise to a negative power, only these three reports changed.

Probed, held (not a test): the GLA decay that is exactly 0 in fp32 at T = 300 (torch and Triton within 1.5e-7 of
float64, finite gradients); a GQA key read through a let alias (``k[h, a] = kg[h // R, a]``), (1 - a) on SSD's B, a
token shift in GLA's key, a value-major GLA with the decay inline in A and a constant per-(head, key) decay all keep
their fast family and catalog-tight reports.

Not done: ablations of RWKV, Mamba-3 or DPLR layers; a token shift with a zero first step (``prev`` repeats x_0 at
the first step, as documented; RWKV's shift pads 0).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import math  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, case_builds, check_continued_against_loop,  # noqa: E402
                         compile_and_build, matvec, rel_err, spec_hunt_tests, stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

GLA_HEADKEY = """
model GLAHeadKey "GLA ablation: alpha = gam_h * sigmoid(gk) (a learned per-head scalar times a per-key gate)"
dim d = 5
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
param W_g[H, K, d] ~ normal(0, 0.5)
param g_head[H] ~ normal(2, 0.5)
let gam[h: H] = sigmoid(g_head[h])
let alpha[h: H, a: K] = gam[h] * sigmoid(sum(m, W_g[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * alpha[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

GLA_RELU = """
model GLAReluGate "GLA ablation: sigmoid swapped for a clipped 1 - relu: alpha = 1 - min(relu(gk), 1), can hit 0"
dim d = 5
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
param W_g[H, K, d] ~ normal(0, 0.5)
param b_g[H, K] ~ normal(0, 0.2)
let gk[h: H, a: K] = sum(m, W_g[h, a, m] * u[m]) + b_g[h, a]
let alpha[h: H, a: K] = 1 - min(relu(gk[h, a]), 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * alpha[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

GLA_COMP = """
model GLAShiftComp "GLA ablation: token shift in the gate (u + prev u) and the value gated by 1 - alpha"
dim d = 5
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
param W_g[H, K, d] ~ normal(0, 0.5)
let up[m: d] = prev(u[m])
let alpha[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * (u[m] + up[m])) + 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * alpha[h, a]
B[(h, a, b), m] = (1 - alpha[h, a]) * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

SSD_TIED = """
model SSDTiedBC "SSD ablation: B and C tied (one projection W_BC read by both), D skip kept"
dim H = 2
dim P = 3
dim n = 4
dim G = 1
dim R = H // G
input u[h: H, p: P]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[h: H] = log(1 + 15 * (h + 0.5) / H)
param dt_bias[H] ~ dt_bias(0.001, 0.1)
param W_dt[H, H * P] ~ normal(0, 0.5)
param W_BC[G, n, H * P] ~ normal(0, 0.5)
param D[H] = 1
let dt[h: H] = softplus(sum(m: H * P, W_dt[h, m] * u[m // P, m % P]) + dt_bias[h])
let Bm[g: G, j: n] = sum(m: H * P, W_BC[g, j, m] * u[m // P, m % P])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[h // R, j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Bm[h // R, j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
"""

SSD_LTI = """
model SSDLTI "SSD ablation: time-invariant (dt = softplus(dt_bias) per head, no input), state order (h, j, p)"
dim H = 2
dim P = 3
dim n = 4
input u[h: H, p: P]
state S[h: H, j: n, p: P]
output y[h: H, p: P]
param A_log[h: H] = log(1 + 15 * (h + 0.5) / H)
param dt_bias[H] ~ dt_bias(0.001, 0.1)
param W_B[n, H * P] ~ normal(0, 0.5)
param W_C[n, H * P] ~ normal(0, 0.5)
let dt[h: H] = softplus(dt_bias[h])
let Bm[j: n] = sum(m: H * P, W_B[j, m] * u[m // P, m % P])
let Cm[j: n] = sum(m: H * P, W_C[j, m] * u[m // P, m % P])
A[(h, j, p), (h2, j2, p2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, j, p), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[j]
C[(o, e), (h, j, p)] = delta(o, h) * delta(e, p) * Cm[j]
"""

RET_GQA = """
model RetGQAKeys "RetNet ablation: keys shared by R = 2 heads (GQA-style reads k[h // R]), D skip added, K != V"
dim d = 5
dim H = 4
dim R = 2
dim HK = H // R
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[HK, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_D[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[g: HK, a: K] = sum(m, W_K[g, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * (1 - 2 ^ (-5 - h))
B[(h, a, b), m] = k[h // R, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
D[(o, e), m] = W_D[o, e, m]
"""

RET_ONE = """
model RetOneHead "RetNet ablation: the head axis removed (one head, gamma = 1 - 2^-5), width 1 keys, value-major state"
dim d = 3
dim K = 1
dim V = 5
input u[d]
state S[b: V, a: K]
output y[V]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
let q[a: K] = sum(m, W_Q[a, m] * u[m])
let k[a: K] = sum(m, W_K[a, m] * u[m])
A[(b, a), (b2, a2)] = delta(a, a2) * delta(b, b2) * (1 - 2 ^ -5)
B[(b, a), m] = k[a] * W_V[b, m]
C[e, (b, a)] = delta(e, b) * q[a] / sqrt(K)
"""

RET_LEARN = """
model RetLearnNoForget "RetNet ablation: gamma per head a learned power gam0^c, head 0 fixed at 1 (no forgetting)"
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
param c_raw[H] ~ uniform(0.5, 2)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let gam[h: H] = delta(h, 0) + (1 - delta(h, 0)) * (1 - 2 ^ (-5 - h)) ^ softplus(c_raw[h])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gam[h]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

GDN_L1 = """
model GDNL1Key "Gated DeltaNet ablation: the key normalised by its L1 norm instead of L2 (||k||_2 <= 1)"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_a[H, d] ~ normal(0, 0.5)
param W_b[H, d] ~ normal(0, 0.5)
param A_log[h: H] = log(16 * (h + 0.5) / H)
param dt_bias[H] ~ dt_bias(0.001, 0.1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let alpha[h: H] = exp(-exp(A_log[h]) * softplus(sum(m, W_a[h, m] * u[m]) + dt_bias[h]))
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
state S[h: H, a: K, b: V]
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sum(a2, abs(kr[h, a2]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * alpha[h] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

GDN_VMAJOR = """
model GDNValueMajor "Gated DeltaNet ablation: state axes written value-major S[h, b, a] (L2 key), same layer"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_a[H, d] ~ normal(0, 0.5)
param W_b[H, d] ~ normal(0, 0.5)
param A_log[h: H] = log(16 * (h + 0.5) / H)
param dt_bias[H] ~ dt_bias(0.001, 0.1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let alpha[h: H] = exp(-exp(A_log[h]) * softplus(sum(m, W_a[h, m] * u[m]) + dt_bias[h]))
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
state S[h: H, b: V, a: K]
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * alpha[h] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, b, a), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

GDN_GQA = """
model GDNSharedKeys "Gated DeltaNet ablation: keys shared by R = 2 heads (reads k[h // R]), L2 key, one key group"
dim d = 4
dim H = 2
dim R = 2
dim HK = H // R
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[HK, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_a[H, d] ~ normal(0, 0.5)
param W_b[H, d] ~ normal(0, 0.5)
param A_log[h: H] = log(16 * (h + 0.5) / H)
param dt_bias[H] ~ dt_bias(0.001, 0.1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let kr[g: HK, a: K] = sum(m, W_K[g, a, m] * u[m])
let k[g: HK, a: K] = kr[g, a] / sqrt(sum(a2, kr[g, a2] ^ 2))
let alpha[h: H] = exp(-exp(A_log[h]) * softplus(sum(m, W_a[h, m] * u[m]) + dt_bias[h]))
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * alpha[h]
    * (delta(a, a2) - beta[h] * k[h // R, a] * k[h // R, a2])
B[(h, a, b), m] = beta[h] * k[h // R, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

RGLRU_SHIFT = """
model RGLRUShift "RG-LRU ablation: token shift in the gate r = sigmoid(W_a (x + prev x) + b_a), odd width, one block"
dim W = 5
input x[W]
state h[c: W]
output y[W]
param W_a[W, W] ~ normal(0, 0.5)
param b_a[W] ~ zeros()
param W_i[W, W] ~ normal(0, 0.5)
param Lambda[c: W] = log(1 / sqrt(0.81 + 0.188 * (c + 0.5) / W) - 1)
let xp[m: W] = prev(x[m])
let r[c: W] = sigmoid(sum(i, W_a[c, i] * (x[i] + xp[i])) + b_a[c])
let ig[c: W] = sigmoid(sum(i, W_i[c, i] * x[i]))
let a[c: W] = exp(-8 * r[c] * softplus(Lambda[c]))
A[c, c2] = delta(c, c2) * a[c]
B[c, m] = delta(c, m) * sqrt(1 - a[c] ^ 2) * ig[c]
C[o, c] = delta(o, c)
"""

MLSTM_ONEHEAD = """
model MLSTMOneHeadPost "mLSTM ablation: one head (no head axis), K != V, forget gate exp(-softplus), output gate post"
dim d = 4
dim K = 3
dim V = 2
input u[d]
state S[a: K, b: V]
output y[V]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
param w_f[d] ~ normal(0, 0.5)
param w_i[d] ~ normal(0, 0.5)
param W_o[V, d] ~ normal(0, 0.5)
let q[a: K] = sum(m, W_Q[a, m] * u[m])
let kn[a: K] = sum(m, W_K[a, m] * u[m]) / sqrt(K)
let f = exp(-softplus(-(sum(m, w_f[m] * u[m]) + 3)))
let ig = exp(sum(m, w_i[m] * u[m]))
let n[a: K] = scan(f, ig * kn[a])
let den = max(abs(sum(a, n[a] * q[a])), 1)
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * f
B[(a, b), m] = ig * kn[a] * W_V[b, m]
C[e, (a, b)] = delta(e, b) * q[a] / den
post z[e: V] = y[e] * sigmoid(sum(m, W_o[e, m] * u[m]))
"""

S6_TIED = """
model S6TiedExp "S6 ablation: B and C tied (one projection), dt = exp(.) instead of softplus, no D skip, odd n"
dim d = 3
dim n = 5
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_dt[d, d] ~ normal(0, 0.3)
param log_dt[d] ~ uniform(-4, -2)
param W_B[n, d] ~ normal(0, 0.5)
let dt[c: d] = exp(sum(k, W_dt[c, k] * u[k]) + log_dt[c])
let b[j: n] = sum(k, W_B[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * dt[c] * b[j]
C[o, (c, j)] = delta(o, c) * b[j]
"""

S6_HEADS = """
model S6Heads "S6 ablation: a head axis added (dt per head, shared by its P channels), A_log per (head, j)"
dim H = 2
dim P = 2
dim n = 3
input u[h: H, p: P]
state x[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[h: H, j: n] = log(j + 1)
param W_dt[H, H * P] ~ normal(0, 0.5)
param b_dt[H] ~ dt_bias(0.001, 0.1)
param W_B[n, H * P] ~ normal(0, 0.5)
param W_C[n, H * P] ~ normal(0, 0.5)
param D[H] = 1
let dt[h: H] = softplus(sum(m: H * P, W_dt[h, m] * u[m // P, m % P]) + b_dt[h])
let b[j: n] = sum(m: H * P, W_B[j, m] * u[m // P, m % P])
let cq[j: n] = sum(m: H * P, W_C[j, m] * u[m // P, m % P])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h, j]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * b[j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * cq[j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
"""

LA_RUNKEY = """
model LARunKey "linear attention ablation: elu+1 key divided by its running sum (k_t / sum_s<=t k_s), D skip, odd K"
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
param Dsk[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = elu(sum(m, W_Q[h, a, m] * u[m])) + 1
let kf[h: H, a: K] = elu(sum(m, W_K[h, a, m] * u[m])) + 1
let z[h: H, a: K] = cumsum(kf[h, a])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
B[(h, a, b), m] = kf[h, a] / z[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
D[(o, e), m] = Dsk[o, e, m]
"""

sig, sp_ = torch.sigmoid, torch.nn.functional.softplus
# -- independent float64 loops, written from the ablated equations (not from dsfc) ------------------------------------
# Each takes the parameters by spec name, u [B, T, d_in] (a multi-axis input flattened row-major) and an initial state
# in the module's layout (None: zero) and returns y [B, T, ...].


def _outer_loop(u, h0, shape, step):
    """S_t = step(S_(t-1), u_t) -> (S_t, y_t) from S_0 = h0 (zero when None), the outputs stacked."""
    S = u.new_zeros(u.shape[0], *shape) if h0 is None else h0.clone()
    ys = []
    for t in range(u.shape[1]):
        S, y = step(S, u[:, t], t)
        ys.append(y)
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, 1)


def _gla(P, u, h0, alpha_of, value_scale=None):
    """GLA per head: S = diag(alpha) S + k v^T (times value_scale(alpha) on the key side), y = S^T q / sqrt(K)."""
    H, K, _ = P["W_Q"].shape
    V = P["W_V"].shape[1]

    def step(S, x, t):
        q, k, v = matvec(P["W_Q"], x), matvec(P["W_K"], x), matvec(P["W_V"], x)
        a = alpha_of(x, t)
        kk = k if value_scale is None else k * value_scale(a)
        S = a[..., None] * S + kk[..., None] * v[:, :, None, :]
        return S, torch.einsum("bha,bhav->bhv", q, S) / math.sqrt(K)

    return _outer_loop(u, h0, (H, K, V), step)


def _gla_headkey(P, u, h0=None):
    # alpha[h, a] = sigmoid(g_head[h]) * sigmoid(W_g u)[h, a]
    return _gla(P, u, h0, lambda x, t: sig(P["g_head"])[:, None] * sig(matvec(P["W_g"], x)))


def _gla_relu(P, u, h0=None):
    # alpha = 1 - min(relu(gk), 1) = 1 - clip(gk, 0, 1): exactly 0 wherever gk >= 1
    return _gla(P, u, h0, lambda x, t: 1 - (matvec(P["W_g"], x) + P["b_g"]).clamp(0, 1))


def _gla_comp(P, u, h0=None):
    # token shift: the gate reads u_t + u_(t-1) (u_0 + u_0 at the first step); the key is scaled by 1 - alpha
    def alpha(x, t):
        xp = u[:, max(t - 1, 0)]
        return sig(matvec(P["W_g"], x + xp) + 1)

    return _gla(P, u, h0, alpha, value_scale=lambda a: 1 - a)


def _ssd(P, u, h0, H, Pd, n, dt_of, Bm_of, Cm_of, groups, order="hpj", skip=None):
    """Mamba-2 SSD per head: S[h, p, j] = exp(-dt_h e^(A_log_h)) S + dt_h x[h, p] Bm[g(h), j],
    y[h, p] = sum_j Cm[g(h), j] S[h, p, j] (+ D[h] x[h, p]); g(h) = h // (H / groups). ``order`` "hjp": the state
    is laid out [H, n, P] (the loop runs in [H, P, n] and transposes at the ends)."""
    R = H // groups
    A = torch.exp(P["A_log"])
    g = torch.arange(H) // R
    hp = None if h0 is None else (h0.transpose(-1, -2) if order == "hjp" else h0)

    def step(S, x, t):
        xs = x.reshape(-1, H, Pd)
        dt, Bm, Cm = dt_of(x), Bm_of(x), Cm_of(x)  # [B, H], [B, G, n], [B, G, n]
        S = torch.exp(-dt * A)[:, :, None, None] * S + (dt[:, :, None] * xs)[..., None] * Bm[:, g, None, :]
        y = torch.einsum("bhpj,bhj->bhp", S, Cm[:, g])
        if skip is not None:
            y = y + skip[:, None] * xs
        return S, y

    return _outer_loop(u, hp, (H, Pd, n), step)


def _ssd_tied(P, u, h0=None):
    # one projection W_BC for both B and C
    H, Pd, n = 2, 3, 4
    bm = lambda x: matvec(P["W_BC"], x)  # noqa: E731
    return _ssd(P, u, h0, H, Pd, n, lambda x: sp_(matvec(P["W_dt"], x) + P["dt_bias"]), bm, bm, 1, skip=P["D"])


def _ssd_lti(P, u, h0=None):
    # dt = softplus(dt_bias): the same decay at every step; one B / C group; no D; state [H, n, P]
    H, Pd, n = 2, 3, 4
    return _ssd(P, u, h0, H, Pd, n, lambda x: sp_(P["dt_bias"]).expand(x.shape[0], H),
                lambda x: matvec(P["W_B"], x)[:, None], lambda x: matvec(P["W_C"], x)[:, None], 1, order="hjp")


def _retnet(P, u, h0, gam, key=None, skip=None):
    """RetNet per head: S = gam_h S + k v^T, y = S^T q / sqrt(K) (+ skip u); ``key(x)`` the per-head keys."""
    H, K, _ = P["W_Q"].shape
    V = P["W_V"].shape[1]

    def step(S, x, t):
        q, v = matvec(P["W_Q"], x), matvec(P["W_V"], x)
        k = matvec(P["W_K"], x) if key is None else key(x)
        S = gam[:, None, None] * S + k[..., None] * v[:, :, None, :]
        y = torch.einsum("bha,bhav->bhv", q, S) / math.sqrt(K)
        return S, y if skip is None else y + matvec(skip, x)

    return _outer_loop(u, h0, (H, K, V), step)


def _ret_gqa(P, u, h0=None):
    # keys shared by R = 2 heads: head h reads key group h // 2; gamma_h = 1 - 2^(-5-h); a dense D skip W_D u
    H = P["W_Q"].shape[0]
    gam = 1 - 2.0 ** (-5 - torch.arange(H, dtype=F64))
    return _retnet(P, u, h0, gam, key=lambda x: matvec(P["W_K"], x)[:, torch.arange(H) // 2], skip=P["W_D"])


def _ret_one(P, u, h0=None):
    # one head, the state laid out [V, K]: S[b, a] = (31/32) S[b, a] + v[b] k[a], y[b] = sum_a S[b, a] q[a] / sqrt(K)
    K = P["W_Q"].shape[0]
    S = u.new_zeros(u.shape[0], P["W_V"].shape[0], K) if h0 is None else h0.clone()
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        q, k, v = matvec(P["W_Q"], x), matvec(P["W_K"], x), matvec(P["W_V"], x)
        S = (1 - 2.0 ** -5) * S + v[:, :, None] * k[:, None, :]
        ys.append(torch.einsum("bva,ba->bv", S, q) / math.sqrt(K))
    return stack_steps(ys, u, P["W_V"].shape[0])


def _ret_learn(P, u, h0=None):
    # gamma_0 = 1 (no forgetting), gamma_h = (1 - 2^(-5-h))^softplus(c_raw[h]) for h > 0
    H = P["W_Q"].shape[0]
    base = 1 - 2.0 ** (-5 - torch.arange(H, dtype=F64))
    gam = torch.where(torch.arange(H) == 0, torch.ones((), dtype=F64), base ** sp_(P["c_raw"]))
    return _retnet(P, u, h0, gam)


def _gdn(P, u, h0, key, value_major=False, R=1):
    """Gated DeltaNet per head: S = alpha (S - beta k (k^T S)) + beta k v^T, y = S^T q / sqrt(K);
    alpha = exp(-e^(A_log) softplus(W_a u + dt_bias)), beta = sigmoid(W_b u); ``key(x)`` [B, H // R, K]."""
    H, K, _ = P["W_Q"].shape
    V = P["W_V"].shape[1]
    A = torch.exp(P["A_log"])
    hp = None if h0 is None else (h0.transpose(-1, -2) if value_major else h0)

    def step(S, x, t):
        q, v = matvec(P["W_Q"], x), matvec(P["W_V"], x)
        k = key(x)[:, torch.arange(H) // R]
        al = torch.exp(-A * sp_(matvec(P["W_a"], x) + P["dt_bias"]))
        be = sig(matvec(P["W_b"], x))
        kS = torch.einsum("bha,bhav->bhv", k, S)
        S = al[:, :, None, None] * (S - be[:, :, None, None] * k[..., None] * kS[:, :, None, :]) \
            + (be[:, :, None] * k)[..., None] * v[:, :, None, :]
        return S, torch.einsum("bha,bhav->bhv", q, S) / math.sqrt(K)

    return _outer_loop(u, hp, (H, K, V), step)


def _l2(x):
    return x / x.pow(2).sum(-1, keepdim=True).sqrt()


def _gdn_l1(P, u, h0=None):
    return _gdn(P, u, h0, lambda x: (lambda k: k / k.abs().sum(-1, keepdim=True))(matvec(P["W_K"], x)))


def _gdn_vmajor(P, u, h0=None):
    return _gdn(P, u, h0, lambda x: _l2(matvec(P["W_K"], x)), value_major=True)


def _gdn_gqa(P, u, h0=None):
    return _gdn(P, u, h0, lambda x: _l2(matvec(P["W_K"], x)), R=2)


def _rglru_shift(P, u, h0=None):
    # r = sigmoid(W_a (x_t + x_(t-1)) + b_a) (x_0 + x_0 at the first step), a = exp(-8 r softplus(Lambda)),
    # h = a h + sqrt(1 - a^2) sigmoid(W_i x) x, y = h
    h = u.new_zeros(u.shape[0], u.shape[2]) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        x, xp = u[:, t], u[:, max(t - 1, 0)]
        r = sig((x + xp) @ P["W_a"].T + P["b_a"])
        a = torch.exp(-8 * r * sp_(P["Lambda"]))
        h = a * h + torch.sqrt(1 - a ** 2) * sig(x @ P["W_i"].T) * x
        ys.append(h)
    return stack_steps(ys, u, u.shape[2])


def _mlstm_onehead(P, u, h0=None):
    # one head: f = sigmoid(w_f u + 3) (= exp(-softplus(-(.)))), i = exp(w_i u), k~ = W_K u / sqrt(K),
    # C = f C + i k~ v^T, n = f n + i k~, y = C^T q / max(|n^T q|, 1), then the output gate y * sigmoid(W_o u)
    K, V = P["W_Q"].shape[0], P["W_V"].shape[0]
    C = u.new_zeros(u.shape[0], K, V) if h0 is None else h0.clone()
    n = u.new_zeros(u.shape[0], K)
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        q, k, v = x @ P["W_Q"].T, x @ P["W_K"].T / math.sqrt(K), x @ P["W_V"].T
        f, i = sig(x @ P["w_f"] + 3), torch.exp(x @ P["w_i"])
        C = f[:, None, None] * C + (i[:, None] * k)[..., None] * v[:, None, :]
        n = f[:, None] * n + i[:, None] * k
        den = (n * q).sum(-1).abs().clamp_min(1)
        y = torch.einsum("bav,ba->bv", C, q) / den[:, None]
        ys.append(y * sig(x @ P["W_o"].T))
    return stack_steps(ys, u, V)


def _s6_tied(P, u, h0=None):
    # h[c, j] = exp(-dt_c e^(A_log[c, j])) h + dt_c b_j u_c, y_c = sum_j b_j h[c, j], b = W_B u read by B and C,
    # dt = exp(W_dt u + log_dt); no D
    d, n = P["A_log"].shape
    h = u.new_zeros(u.shape[0], d, n) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        dt = torch.exp(x @ P["W_dt"].T + P["log_dt"])
        b = x @ P["W_B"].T
        h = torch.exp(-dt[..., None] * torch.exp(P["A_log"])) * h + (dt * x)[..., None] * b[:, None, :]
        ys.append((h * b[:, None, :]).sum(-1))
    return stack_steps(ys, u, d)


def _s6_heads(P, u, h0=None):
    # S6 with a head axis: dt per head (shared by its P channels), A_log per (head, j), one B / C for all heads, D
    H, n = P["A_log"].shape
    Pd = u.shape[2] // H
    h = u.new_zeros(u.shape[0], H, Pd, n) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        xs = x.reshape(-1, H, Pd)
        dt = sp_(x @ P["W_dt"].T + P["b_dt"])
        b, c = x @ P["W_B"].T, x @ P["W_C"].T
        dA = torch.exp(-dt[..., None] * torch.exp(P["A_log"]))  # [B, H, n]
        h = dA[:, :, None, :] * h + (dt[..., None] * xs)[..., None] * b[:, None, None, :]
        ys.append(torch.einsum("bhpj,bj->bhp", h, c) + P["D"][:, None] * xs)
    return stack_steps(ys, u, H, Pd)


def _la_runkey(P, u, h0=None):
    # phi = elu + 1; the key phi(W_K u)_t divided by its running sum z_t = sum_(s <= t) phi(W_K u)_s (per entry);
    # S = S + (k / z) v^T, y = S^T phi(q) + Dsk u
    elu1 = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    H, K, _ = P["W_Q"].shape
    V = P["W_V"].shape[1]
    S = u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0.clone()
    z = u.new_zeros(u.shape[0], H, K)
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        q, kf, v = elu1(matvec(P["W_Q"], x)), elu1(matvec(P["W_K"], x)), matvec(P["W_V"], x)
        z = z + kf
        S = S + (kf / z)[..., None] * v[:, :, None, :]
        ys.append(torch.einsum("bha,bhav->bhv", q, S) + matvec(P["Dsk"], x))
    return stack_steps(ys, u, H, V)


CASES = {
    "gla_headkey": (GLA_HEADKEY, Family.CHUNKED_OUTER),
    "gla_relu": (GLA_RELU, Family.CHUNKED_OUTER),
    "gla_comp": (GLA_COMP, Family.CHUNKED_OUTER),
    "ssd_tied": (SSD_TIED, Family.CHUNKED_OUTER),
    "ssd_lti": (SSD_LTI, Family.CHUNKED_OUTER),
    "ret_gqa": (RET_GQA, Family.CHUNKED_OUTER),
    "ret_one": (RET_ONE, Family.CHUNKED_OUTER),
    "ret_learn": (RET_LEARN, Family.CHUNKED_OUTER),
    "gdn_l1": (GDN_L1, Family.CHUNKED_DELTA),
    "gdn_vmajor": (GDN_VMAJOR, Family.CHUNKED_DELTA),
    "gdn_gqa": (GDN_GQA, Family.CHUNKED_DELTA),
    "rglru_shift": (RGLRU_SHIFT, Family.DIAGONAL_SCAN),
    "mlstm_onehead": (MLSTM_ONEHEAD, Family.CHUNKED_OUTER),
    "s6_tied": (S6_TIED, Family.DIAGONAL_SCAN),
    "s6_heads": (S6_HEADS, Family.CHUNKED_OUTER),  # a per-(head, j) decay over the value axis p: the matmul form
    "la_runkey": (LA_RUNKEY, Family.CHUNKED_OUTER),
}
INDEPENDENT = {"gla_headkey": _gla_headkey, "gla_relu": _gla_relu, "gla_comp": _gla_comp, "ssd_tied": _ssd_tied,
               "ssd_lti": _ssd_lti, "ret_gqa": _ret_gqa, "ret_one": _ret_one, "ret_learn": _ret_learn,
               "gdn_l1": _gdn_l1, "gdn_vmajor": _gdn_vmajor, "gdn_gqa": _gdn_gqa, "rglru_shift": _rglru_shift,
               "mlstm_onehead": _mlstm_onehead, "s6_tied": _s6_tied, "s6_heads": _s6_heads, "la_runkey": _la_runkey}
EIGEN = {name: Bound.STABLE for name in CASES} | {"gla_relu": Bound.MARGINAL, "ret_learn": Bound.MARGINAL,
                                                  "la_runkey": Bound.MARGINAL}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker

# forward (T = 0, 1, 7, 9, from zero and from a random state) and gradients against the loops on torch (Triton against
# the loops: the continued sequences below); every path against dsfc's reference (torch with step and gradients,
# Triton from an initial state, the chunked families with 3-step chunks) and the family and eigenvalue bound, its
# claim checked on the module's own A (dsf_testing.spec_hunt_tests)
(test_ablation_matches_an_independent_implementation, test_ablation_gradients_match_an_independent_implementation,
 test_ablation_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, backends=("torch",))


# Triton's continued sequences on the running-state specs and a value-major delta state:
# the interpreter is slow, and every spec's Triton path is checked from an initial state against the reference
_CONTINUED_ON_TRITON = ("gla_comp", "gdn_vmajor", "mlstm_onehead", "la_runkey")


@pytest.mark.parametrize("name", list(CASES))
def test_a_sequence_continued_from_its_final_state_matches_the_loop(name):
    """A sequence cut at an odd offset and continued from the first call's final state (forward, and token by token
    from the same state) equals the loop over the whole sequence: torch at T = 7 + 60 (crossing a 64-step chunk),
    Triton (interpreted) at T = 5 + 8 (``_CONTINUED_ON_TRITON``)."""
    check_continued_against_loop(_built(name), INDEPENDENT[name], TRITON and name in _CONTINUED_ON_TRITON)


def _variant(text, old, new):
    assert old in text
    return text.replace(old, new)


_L1_KEY = "let k[h: H, a: K] = kr[h, a] / sum(a2, abs(kr[h, a2]))"


@pytest.mark.parametrize("key, bound", [
    ("let k[h: H, a: K] = kr[h, a] / (sum(a2, abs(kr[h, a2])) + 0.001)", Bound.STABLE),
    ("let k[h: H, a: K] = exp(kr[h, a]) / sum(a2, exp(kr[h, a2]))", Bound.STABLE),
    ("let k[h: H, a: K] = kr[h, a] / sum(a2, kr[h, a2])", Bound.UNKNOWN),
    ("let k[h: H, a: K] = kr[h, a] / sum(a2, abs(kr[h, a2])) * 2", Bound.UNKNOWN),
], ids=["l1-eps", "softmax-key", "signed-sum", "twice-l1"])
def test_an_l1_normalised_key_bounds_the_delta_rule(key, bound):
    """Found here (the prover's norm-ratio rule): |k|^2 of a key divided by its L1 norm (plus eps >= 0), or of
    features >= 0 divided by their sum (a softmax here; DPFP's relu features below), is ||x||_2^2 / ||x||_1^2 in
    [0, 1], so the gated delta rule alpha (1 - beta |k|^2) is in (0, 1); it was "unknown". A signed sum in the
    denominator (k / sum(k) can be huge) and a key of twice that length (beta |k|^2 up to 4: eigenvalues below -1)
    are not claimed. (A denominator shrunk below the norm, ``sum(|x|) - 0.5``, was probed: not claimed.)"""
    from dsfc.lang.parse import parse_spec
    from dsfc.pipeline import analyse

    report = analyse(parse_spec(_variant(GDN_L1, _L1_KEY, key), "l1.dsf"))[3]
    assert report.eigen_bound == bound, report.eigen_reason


def test_the_l1_normalised_key_keeps_its_eigenvalues_inside():
    """The claim checked at the extreme: a one-hot-like key (one entry dominating, |k|^2 -> 1) and beta near 1 put
    alpha (1 - beta |k|^2) near 0, never below; the key spread evenly gives |k|^2 = 1 / K. The module's own A."""
    built = _built("gdn_l1")
    with torch.no_grad():
        built.model.W_b.fill_(0.0)
        built.model.W_b[:, 0] = 40.0  # beta = sigmoid(40 u_0) near 1 where u_0 > 0
    u = torch.zeros(1, 4, built.d_in(), dtype=F64)
    u[0, :, 0] = torch.tensor([1.0, 2.0, 0.5, 3.0])
    lam = torch.linalg.eigvals(built.dsf_matrices(u)[0]).abs()
    assert (lam < 1).all() and (lam >= 0).all()


HGRN_RELU = """
model HGRNReluGate "HGRN ablation: the lower bound mu + (1 - mu) g with g = min(relu(.), 1), not sigmoid"
dim d = 3
input x[d]
state h[c: d]
output y[d]
param W_f[d, d] ~ normal(0, 0.5)
param mu_raw[d] ~ normal(0, 1)
let f[c: d] = sigmoid(mu_raw[c]) + (1 - sigmoid(mu_raw[c])) * min(relu(sum(m, W_f[c, m] * x[m])), 1)
A[c, c2] = delta(c, c2) * f[c]
B[c, m] = delta(c, m) * (1 - f[c])
C[o, c] = delta(o, c)
"""


def test_a_lower_bounded_gate_through_min_is_bounded_by_one():
    """Found here (the prover's atoms): HGRN's lower-bounded gate ``mu + (1 - mu) g`` with the sigmoid g swapped for
    ``min(relu(x), 1)`` reads mu twice; the multilinear rule that reads it exactly did not see ``min`` as an atom
    (SymPy's Min is no Function), so the gate was (0, 2), "not proven <= 1". It is (0, 1]: exactly 1 where
    relu(x) >= 1 (no forgetting), never above. Checked on the module against a loop, and the eigenvalues of its A
    at inputs that saturate the gate."""
    built = compile_and_build(HGRN_RELU)
    report = built.result.report
    assert report.eigen_bound == Bound.MARGINAL and report.eigen_interval == "(0, 1]", report.eigen_reason
    P = built.params()
    u = 4 * torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    h, ys = torch.zeros(2, 3, dtype=F64), []
    for t in range(9):
        mu = torch.sigmoid(P["mu_raw"])
        f = mu + (1 - mu) * (u[:, t] @ P["W_f"].T).clamp(0, 1)
        h = f * h + (1 - f) * u[:, t]
        ys.append(h)
    with torch.no_grad():
        assert rel_err(built.model(u), torch.stack(ys, 1)) < 1e-10
    lam = torch.linalg.eigvals(built.dsf_matrices(u)[0]).abs()
    assert (lam <= 1 + 1e-12).all() and (lam == 1).any()


def test_dpfp_features_over_their_sum_bound_the_delta_rule():
    """The norm-ratio rule on hunt 12's fast weight programmer (``test_user_specs_12.DPFP``): DPFP features >= 0
    divided by their (double) sum have |k|^2 in [0, 1], so I - beta k k^T is |lambda| <= 1, (0, 1]; it was
    "unknown" (-inf, 1]. True on the module's own A at large inputs."""
    from test_user_specs_12 import DPFP

    built = compile_and_build(DPFP)
    report = built.result.report
    assert report.eigen_bound == Bound.MARGINAL and report.eigen_interval == "(0, 1]", report.eigen_reason
    u = 5 * torch.randn(2, 6, built.d_in(), generator=torch.Generator().manual_seed(6), dtype=F64)
    lam = torch.linalg.eigvals(built.dsf_matrices(u)[0]).abs()
    assert (lam <= 1 + 1e-12).all()
