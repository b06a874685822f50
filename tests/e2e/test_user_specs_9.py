"""A ninth new-spec hunt.

Realistic mistakes in specs now get a hint towards the fix. A misspelt function (``sigmod``, ``softpuls``) listed
every function instead of naming the one meant, and the list left out ``cumsum``, ``scan``, ``prev``, ``window`` and
``taylor``, so ``cumsom`` got no help; ``tayler(K, 2)`` in a state's axis was "must be built from numbers and dims
only". Both now say ``did you mean 'sigmoid'?`` (``check._function_hint``; ``_similar`` counts a swap of two
neighbours as one edit, as ``softpuls`` for ``softplus``). A misspelt keyword or a lower-case matrix at the start of a
line (``parm``, ``lte``, ``a[...] = ...``) read only "unexpected 'parm' after the end of the statement"; the hint now
names the keyword meant (only for a name that starts its line). A sum index named like its own let
(``let k[...] = sum(k, W[.., k] * u[k])``) gave a spurious "cycle among lets: k -> k" before the real "sum index 'k'
shadows an existing name": ``check.referenced_tensors`` no longer counts a sum's (or taylor's) bound index as a
read. ``window`` over a let whose window axis is not the last one now says the window is the let's last axis.

Found, not fixed in this round (the algorithm, not the result): an output axis that indexes no state axis (``output
y[h: H, z: 1, b: V]`` with ``delta(z, 0)`` in C) made ``structure.split_outer`` give up, so a gated delta rule ran as
the dense per-step block scan (a linear attention as the diagonal scan) instead of the chunked form (fixed since:
tests/e2e/test_broadcast_outputs.py); and a decay that varies along the value axis (GLA's two-sided gate
``alpha[a] * beta[b]``) runs as the elementwise diagonal scan, the chunked kernels having no value-side decay. Both
match the reference.

New user specs the catalog and the earlier hunts do not cover (an LTI S4D with the ZOH input at n = 1 and a dense C,
S6 with one scalar dt at d = 7, n = 3, RG-LRU with block-diagonal gates and a gelu gate post with a residual, HGRN
with a learned lower bound and an RMS norm post, minGRU at d = 17, a 2-axis state read by a dense C into 5 outputs,
H3's shift conv (window) times a diagonal SSM, single-head linear attention with relu^2 features at K = 5, V = 7,
Performer's positive random features, retention with rotary q / k at a cumsum position, RetNet with a scan normaliser
in C and a group-norm post, GLA in a value-first state with a value-first output, GLA's two-sided gate, heads as the
state's last axis, Mamba-2 at d_state n = 1 with a driven x, D, a silu gate and a gated RMSNorm, Taylor features of
order 3 with a per-head decay and a scan normaliser, a delta rule with a learned constant beta at V = 1, a K = 1 gated
delta rule with q = k, a gated delta rule on a 2-axis input, qLSTM with an output gate in C, softmax attention at
K = 1 with a dense D and a gate post). Each is checked against the float64 reference recurrence built from the same
spec: forward with and without an initial state at T = 0, 1 and 7, batch 1 and 3, token-by-token step, gradients of
the input, the initial state and every parameter, on the torch path and the Triton path (interpreted on CPU); the
chunked families also with chunks of 3 steps. Softmax attention (a KV cache, no fixed state) is compared on its own.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (TRITON, F64, check_all_paths, compile_and_build, grads_of, rel_err,  # noqa: E402
                         run_steps)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")


S4D_ZOH_N1 = """
model S4DZohN1 "LTI S4D-real with ZOH input (exp(dt a) - 1) / a, one state per channel, dense C, D skip"
dim d = 5
dim n = 1
input u[d]
state h[c: d, j: n]
output y[d]
param log_dt[c: d] = log(0.01) + (c / d) * (log(0.1) - log(0.01))
param A_log[c: d, j: n] = log(0.5 + j)
param Bp[d, n] ~ normal(0, 1)
param Cp[d, d, n] ~ normal(0, 0.5)
param D[d] = 1
let a[c: d, j: n] = -exp(A_log[c, j])
let dt[c: d] = exp(log_dt[c])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(dt[c] * a[c, j])
B[(c, j), k] = delta(c, k) * (exp(dt[c] * a[c, j]) - 1) / a[c, j] * Bp[c, j]
C[o, (c, j)] = Cp[o, c, j]
D[o, k] = delta(o, k) * D[k]
"""


S6_SCALAR_DT = """
model S6ScalarDt "S6 with one dt for all channels (a scalar let), odd dims d = 7, n = 3"
dim d = 7
dim n = 3
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param w_dt[d] ~ normal(0, 0.3)
param b_dt ~ normal(-2, 0.1)
param W_B[n, d] ~ normal(0, 0.5)
param W_C[n, d] ~ normal(0, 0.5)
let dt = softplus(sum(k, w_dt[k] * u[k]) + b_dt)
let b[j: n] = sum(k, W_B[j, k] * u[k])
let cq[j: n] = sum(k, W_C[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * dt * b[j]
C[o, (c, j)] = delta(o, c) * cq[j]
"""


RGLRU_BLOCKS = """
model RGLRUBlocks "RG-LRU with 3 gate blocks of width 2, c = 8, output gate post and D-like skip post"
dim nh = 3
dim bw = 2
dim W = nh * bw
input x[W]
state h[c: W]
output y[W]
param W_a[nh, bw, bw] ~ normal(0, 1 / sqrt(bw))
param W_i[nh, bw, bw] ~ normal(0, 1 / sqrt(bw))
param W_g[W, W] ~ normal(0, 1 / sqrt(W))
param Lambda[c: W] = log(1 / sqrt(0.81 + 0.188 * (c + 0.5) / W) - 1)
let r[c: W] = sigmoid(sum(i: bw, x[(c // bw) * bw + i] * W_a[c // bw, i, c % bw]))
let ig[c: W] = sigmoid(sum(i: bw, x[(c // bw) * bw + i] * W_i[c // bw, i, c % bw]))
let a[c: W] = exp(-8 * r[c] * softplus(Lambda[c]))
A[c, c2] = delta(c, c2) * a[c]
B[c, m] = delta(c, m) * sqrt(1 - a[c] ^ 2) * ig[c]
C[o, c] = delta(o, c)
post g[c: W] = y[c] * gelu(sum(m, W_g[c, m] * x[m])) + x[c]
"""


HGRN_NORM = """
model HGRNNorm "HGRN with lower bound, output gate and an RMS norm post over the 5 channels"
dim d = 5
input u[d]
state h[c: d]
output y[d]
param W_f[d, d] ~ normal(0, 0.5)
param W_i[d, d] ~ normal(0, 0.5)
param W_g[d, d] ~ normal(0, 0.5)
param lb[d] ~ uniform(0, 0.5)
param gain[d] = 1
let f[c: d] = lb[c] + (1 - lb[c]) * sigmoid(sum(m, W_f[c, m] * u[m]))
let i[c: d] = silu(sum(m, W_i[c, m] * u[m]))
A[c, c2] = delta(c, c2) * f[c]
let x[c: d] = (1 - f[c]) * i[c]
drive x
B[c, m] = delta(c, m)
C[o, c] = delta(o, c)
post g[c: d] = y[c] * sigmoid(sum(m, W_g[c, m] * u[m]))
post o[c: d] = gain[c] * g[c] / sqrt(sum(c2, g[c2] ^ 2) / d + 1e-5)
"""


D17_MINGRU = """
model MinGRU17 "minGRU at d = 17: h = (1 - z) h + z htilde, z and htilde from u, driven input"
dim d = 17
input u[d]
state h[c: d]
output y[d]
param W_z[d, d] ~ normal(0, 0.3)
param W_h[d, d] ~ normal(0, 0.3)
param b_z[d] = -1
let z[c: d] = sigmoid(sum(m, W_z[c, m] * u[m]) + b_z[c])
let x[c: d] = z[c] * sum(m, W_h[c, m] * u[m])
drive x
A[c, c2] = delta(c, c2) * (1 - z[c])
B[c, m] = delta(c, m)
C[o, c] = delta(o, c)
"""


DENSE_C_2AXIS = """
model DenseC2Axis "S5-like: 2-axis state h[c: 3, j: 2], dense readout C over both axes into 5 outputs, dense D"
dim d = 4
dim E = 3
dim n = 2
dim p = 5
input u[d]
state h[c: E, j: n]
output y[p]
param A_log[c: E, j: n] = log(0.2 + c + j)
param W_dt[E, d] ~ normal(0, 0.5)
param Bp[E, n, d] ~ normal(0, 0.5)
param Cp[p, E, n] ~ normal(0, 0.5)
param Dp[p, d] ~ normal(0, 0.5)
let dt[c: E] = softplus(sum(m, W_dt[c, m] * u[m]) - 1)
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
B[(c, j), m] = dt[c] * Bp[c, j, m]
C[o, (c, j)] = Cp[o, c, j]
D[o, m] = Dp[o, m]
"""


H3_SHIFT = """
model H3Shift "H3: shift-SSM on k as a width-4 window conv, diagonal SSM over k * v per channel, q readout, E = 5"
dim d = 3
dim E = 5
dim W = 4
input u[d]
state s[c: E]
output y[c: E]
param W_q[E, d] ~ normal(0, 1)
param W_k[E, d] ~ normal(0, 1)
param W_v[E, d] ~ normal(0, 1)
param shift[E, W] ~ normal(0, 0.5)
param a_log[c: E] = log(0.1 + c / E)
let kx[c: E] = sum(m, W_k[c, m] * u[m])
let kw[c: E, w: W] = window(kx[c])
let ks[c: E] = sum(w, shift[c, w] * kw[c, w])
let x[c: E] = ks[c] * sum(m, W_v[c, m] * u[m])
drive x
A[c, c2] = delta(c, c2) * exp(-exp(a_log[c]))
B[c, m] = delta(c, m)
C[o, c] = delta(o, c) * sum(m, W_q[c, m] * u[m])
"""


LIN_RELU2_H1 = """
model LinReLU2 "single-head linear attention, relu^2 features, K = 5, V = 7, normaliser cumsum read by a post"
dim d = 3
dim H = 1
dim K = 5
dim V = 7
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
let qf[h: H, a: K] = relu(sum(m, W_Q[h, a, m] * u[m])) ^ 2
let kf[h: H, a: K] = relu(sum(m, W_K[h, a, m] * u[m])) ^ 2
let z[h: H, a: K] = cumsum(kf[h, a])
let den[h: H] = sum(a, qf[h, a] * z[h, a]) + 1
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
B[(h, a, b), m] = kf[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * qf[h, a]
post o[h: H, b: V] = y[h, b] / den[h]
"""


PERFORMER = """
model Performer "FAVOR+ positive random features exp(w.x - |x|^2 / 2) / sqrt(M), fixed projection, M = 5"
dim d = 3
dim H = 2
dim K = 3
dim M = 5
dim V = 2
input u[d]
state S[h: H, r: M, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 1)
param Wr[M, K] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qf[h: H, r: M] = exp(sum(a, Wr[r, a] * q[h, a]) - sum(a, q[h, a] ^ 2) / 2) / sqrt(M)
let kf[h: H, r: M] = exp(sum(a, Wr[r, a] * k[h, a]) - sum(a, k[h, a] ^ 2) / 2) / sqrt(M)
let z[h: H, r: M] = cumsum(kf[h, r])
A[(h, r, b), (h2, r2, b2)] = delta(h, h2) * delta(r, r2) * delta(b, b2)
B[(h, r, b), m] = kf[h, r] * W_V[h, b, m]
C[(o, e), (h, r, b)] = delta(o, h) * delta(e, b) * qf[h, r]
post o[h: H, b: V] = y[h, b] / (sum(r, qf[h, r] * z[h, r]) + 1e-6)
"""


RETNET_ROPE = """
model RetNetRoPE "retention with rotary q / k at position cumsum(1) - 1, pair partner a + 1 - 2 (a % 2)"
dim d = 3
dim H = 2
dim K = 4
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param theta[i: K // 2] = 10000 ^ (-2 * i / K)
let cnt = cumsum(1)
let pos = cnt - 1
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qr[h: H, a: K] = q[h, a] * cos(pos * theta[a // 2])
    + (2 * (a % 2) - 1) * q[h, a + 1 - 2 * (a % 2)] * sin(pos * theta[a // 2])
let kr[h: H, a: K] = k[h, a] * cos(pos * theta[a // 2])
    + (2 * (a % 2) - 1) * k[h, a + 1 - 2 * (a % 2)] * sin(pos * theta[a // 2])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * (1 - 2 ^ (-5 - h))
B[(h, a, b), m] = kr[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * qr[h, a]
"""


RETNET_SCAN_NORM = """
model RetNetScanNorm "RetNet with its running normaliser as scan(gamma, |q.k|-free key sum) and a group-norm post"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
let gam[h: H] = 1 - 2 ^ (-2 - h)
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m]) / sqrt(K)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let nrm[h: H] = scan(gam[h], 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gam[h]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(nrm[o])
post gn[h: H, b: V] = y[h, b] / sqrt(sum(b2, y[h, b2] ^ 2) / V + 1e-5)
"""


GLA_VALUE_FIRST = """
model GLAValueFirst "GLA per-key decay in a value-first state S[h, b, a], output y[b, h] (value axis first)"
dim d = 3
dim H = 3
dim K = 2
dim V = 5
input u[d]
state S[h: H, b: V, a: K]
output y[b: V, h: H]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_g[H, K, d] ~ normal(0, 1)
let g[h: H, a: K] = exp(-softplus(sum(m, W_g[h, a, m] * u[m])) / 4)
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h, a]
B[(h, b, a), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(e, o), (h, b, a)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


GLA_TWO_SIDED = """
model GLATwoSided "GLA with the general 2-D gate alpha[a] * beta[b] (key and value side decays)"
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
param W_al[H, K, d] ~ normal(0, 1)
param W_be[H, V, d] ~ normal(0, 1)
let al[h: H, a: K] = sigmoid(sum(m, W_al[h, a, m] * u[m]) + 2)
let be[h: H, b: V] = sigmoid(sum(m, W_be[h, b, m] * u[m]) + 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a] * be[h, b]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


HEADS_LAST = """
model HeadsLast "linear attention with a scalar decay per head, heads as the state's LAST axis S[a, b, h]"
dim d = 3
dim H = 3
dim K = 2
dim V = 2
input u[d]
state S[a: K, b: V, h: H]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param w_g[H, d] ~ normal(0, 1)
let g[h: H] = sigmoid(sum(m, w_g[h, m] * u[m]) + 1)
A[(a, b, h), (a2, b2, h2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h]
B[(a, b, h), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (a, b, h)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


SSD_N1_GATE = """
model SSDN1Gate "Mamba-2 with d_state n = 1, head dim 5, 3 heads, D skip, silu(z) gate and gated RMSNorm posts"
dim H = 3
dim P = 5
dim n = 1
dim d = H * P
input u[d]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[h: H] = log(1 + h)
param dt_bias[H] ~ dt_bias(0.001, 0.1)
param W_x[H, P, d] ~ normal(0, 1 / sqrt(d))
param W_z[H, P, d] ~ normal(0, 1 / sqrt(d))
param W_dt[H, d] ~ normal(0, 1 / sqrt(d))
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param D[H] = 1
param nw[H, P] = 1
let x[h: H, p: P] = sum(m, W_x[h, p, m] * u[m])
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]) + dt_bias[h])
let Bm[j: n] = sum(m, W_B[j, m] * u[m])
let Cm[j: n] = sum(m, W_C[j, m] * u[m])
drive x
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
post g[h: H, p: P] = y[h, p] * silu(sum(m, W_z[h, p, m] * u[m]))
post o[h: H, p: P] = nw[h, p] * g[h, p] / sqrt(sum(p2, g[h, p2] ^ 2) / P + 1e-5)
"""


TAYLOR3_DECAY = """
model Taylor3Decay "Based-style Taylor features of order 3 at K = 2, a scalar per-head decay, normaliser scan in a post"
dim d = 3
dim H = 2
dim K = 2
dim V = 3
dim p = 3
input u[d]
state S[h: H, f: taylor(K, p), b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 1)
param g_log[h: H] = log(0.1 * (h + 1))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qf[h: H, f: taylor(K, p)] = taylor(a, q[h, a])
let kf[h: H, g: taylor(K, p)] = taylor(c, k[h, c])
let gam[h: H] = exp(-exp(g_log[h]))
let n[h: H, f: taylor(K, p)] = scan(gam[h], kf[h, f])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * gam[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[h, f]
post o[h: H, b: V] = y[h, b] / (abs(sum(f, qf[h, f] * n[h, f])) + 1)
"""


DELTA_PARAM_BETA = """
model DeltaParamBeta "delta rule with a per-head beta = sigmoid(param), L2-normalised keys, V = 1, 3 heads of K = 5"
dim d = 4
dim H = 3
dim K = 5
dim V = 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param beta_raw[h: H] = h - 1
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2) + 1e-6)
let beta[h: H] = sigmoid(beta_raw[h])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


DELTA_K1 = """
model DeltaK1 "delta rule at K = 1 with q = k (one shared projection), tanh keys, single head, decay gate"
dim d = 2
dim H = 1
dim K = 1
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_b[d] ~ normal(0, 1)
param w_a[d] ~ normal(0, 1)
let k[h: H, a: K] = tanh(sum(m, W_K[h, a, m] * u[m]))
let beta = sigmoid(sum(m, W_b[m] * u[m]))
let al = exp(-softplus(sum(m, w_a[m] * u[m])))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * al * (delta(a, a2) - beta * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * k[h, a]
"""


SOFTMAX_K1_GATE = """
model SoftmaxK1Gate "softmax attention with K = 1 (scale 1), 3 heads, V = 2, D skip and a sigmoid output-gate post"
dim d = 3
dim H = 3
dim K = 1
dim V = 2
input u[d]
state S[h: H, f: taylor(K, inf), b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_D[H, V, d] ~ normal(0, 0.5)
param W_g[H, d] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qf[h: H, f: taylor(K, inf)] = taylor(a, q[h, a])
let kf[h: H, f: taylor(K, inf)] = taylor(a, k[h, a])
let z[h: H, f: taylor(K, inf)] = cumsum(kf[h, f])
let eta[h: H] = sum(f, qf[h, f] * z[h, f])
let eta_prev[h: H] = prev(eta[h])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * eta_prev[h] / eta[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m] / eta[h]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[h, f]
D[(o, e), m] = W_D[o, e, m]
post g[h: H, b: V] = y[h, b] * sigmoid(sum(m, W_g[h, m] * u[m]))
"""


GDN_IN2_ONE = """
model GDNIn2One "gated delta rule on a 2-axis input u[t: 2, c: 3], output y[h, z: 1, b] with a size-1 axis"
dim Tt = 2
dim E = 3
dim H = 2
dim K = 3
dim V = 2
dim one = 1
input u[t: Tt, c: E]
state S[h: H, a: K, b: V]
output y[h: H, z: one, b: V]
param W_Q[H, K, Tt, E] ~ normal(0, 0.5)
param W_K[H, K, Tt, E] ~ normal(0, 0.5)
param W_V[H, V, Tt, E] ~ normal(0, 0.5)
param W_a[H, E] ~ normal(0, 1)
param W_b[H, Tt] ~ normal(0, 1)
let kr[h: H, a: K] = sum(t, sum(c, W_K[h, a, t, c] * u[t, c]))
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2) + 1e-6)
let al[h: H] = exp(-softplus(sum(c, W_a[h, c] * u[0, c])))
let beta[h: H] = sigmoid(sum(t, W_b[h, t] * u[t, 1]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * al[h] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), (t, c)] = beta[h] * k[h, a] * W_V[h, b, t, c]
C[(o, z, e), (h, a, b)] = delta(o, h) * delta(e, b) * delta(z, 0) * sum(t, sum(c, W_Q[h, a, t, c] * u[t, c]))
"""

QLSTM_OGATE = """
model QLSTMOGate "qLSTM: f, i, o gates from u, candidate tanh(W u) driven, output gate in C, D skip, d = 5"
dim d = 5
input u[d]
state c[j: d]
output y[d]
param W_f[d, d] ~ normal(0, 0.4)
param W_i[d, d] ~ normal(0, 0.4)
param W_o[d, d] ~ normal(0, 0.4)
param W_c[d, d] ~ normal(0, 0.4)
param Dp[d] = 0.5
let f[j: d] = sigmoid(sum(m, W_f[j, m] * u[m]) + 1)
let ig[j: d] = sigmoid(sum(m, W_i[j, m] * u[m]))
let og[j: d] = sigmoid(sum(m, W_o[j, m] * u[m]))
let x[j: d] = ig[j] * tanh(sum(m, W_c[j, m] * u[m]))
drive x
A[j, j2] = delta(j, j2) * f[j]
B[j, m] = delta(j, m)
C[o, j] = delta(o, j) * og[j]
D[o, m] = delta(o, m) * Dp[m]
"""

CASES = {
    "s4d_zoh_n1": (S4D_ZOH_N1, Family.DIAGONAL_SCAN),
    "s6_scalar_dt": (S6_SCALAR_DT, Family.DIAGONAL_SCAN),
    "rglru_blocks": (RGLRU_BLOCKS, Family.DIAGONAL_SCAN),
    "hgrn_norm": (HGRN_NORM, Family.DIAGONAL_SCAN),
    "d17_mingru": (D17_MINGRU, Family.DIAGONAL_SCAN),
    "dense_c_2axis": (DENSE_C_2AXIS, Family.DIAGONAL_SCAN),
    "h3_shift": (H3_SHIFT, Family.DIAGONAL_SCAN),
    "lin_relu2_h1": (LIN_RELU2_H1, Family.CHUNKED_OUTER),
    "performer": (PERFORMER, Family.CHUNKED_OUTER),
    "retnet_rope": (RETNET_ROPE, Family.CHUNKED_OUTER),
    "retnet_scan_norm": (RETNET_SCAN_NORM, Family.CHUNKED_OUTER),
    "gla_value_first": (GLA_VALUE_FIRST, Family.CHUNKED_OUTER),
    "gla_two_sided": (GLA_TWO_SIDED, Family.DIAGONAL_SCAN),
    "heads_last": (HEADS_LAST, Family.CHUNKED_OUTER),
    "ssd_n1_gate": (SSD_N1_GATE, Family.CHUNKED_OUTER),
    "taylor3_decay": (TAYLOR3_DECAY, Family.CHUNKED_OUTER),
    "delta_param_beta": (DELTA_PARAM_BETA, Family.CHUNKED_DELTA),
    "delta_k1": (DELTA_K1, Family.CHUNKED_DELTA),
    # an output axis the state lacks (z: 1, delta(z, 0)): the gate of a broadcast output (was the dense scan)
    "gdn_in2_one": (GDN_IN2_ONE, Family.CHUNKED_DELTA),
    "qlstm_ogate": (QLSTM_OGATE, Family.DIAGONAL_SCAN),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    """torch (forward at T = 1, 7 and batch 1, 3, step, gradients; T = 0 at batch 3) and Triton from an initial
    state, and for the chunked families the torch path with chunks of 3 steps (T = 9 crosses chunk boundaries)."""
    text, family = CASES[name]
    built = compile_and_build(text, path=f"{name}.dsf")
    check_all_paths(built, family)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_softmax_attention_at_k1_with_skip_and_gate(backend):
    """Quadratic attention (K = 1, three heads, a dense D and a gate post) against the reference's slot form: forward
    at T = 0, 1, 7, gradients of the input and every param, token-by-token step and a forward continued from the
    KV cache of a prefix (the reference takes no cache: it runs prefix and continuation together)."""
    if backend == "triton" and not TRITON:
        pytest.skip("triton not installed")
    built = compile_and_build(SOFTMAX_K1_GATE, path="softmax_k1_gate.dsf")
    assert built.result.structure.family == Family.QUADRATIC, built.result.structure.family_reason
    model = built.model
    model.backend = backend
    gen = torch.Generator().manual_seed(0)
    for b, t in ((1, 0), (1, 1), (3, 7)):
        u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
        y_ref, _ = built.reference(u)
        with torch.no_grad():
            y = model(u)
        assert rel_err(y, y_ref) < 1e-8, (b, t)
        w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
        got, want = grads_of(model, built, u, None, w), grads_of(None, built, u, None, w)
        scale = max((g.abs().max().item() for g in want if g.numel()), default=0.0)
        for k, (g, r) in enumerate(zip(got, want)):
            assert (g - r).abs().max().item() <= 1e-7 * scale if g.numel() else True, (b, t, k)
    u = torch.randn(2, 7, built.d_in(), generator=gen, dtype=F64)
    y_ref, _ = built.reference(u)
    with torch.no_grad():
        y_s, _ = run_steps(model, u, None)
        y0, cache = model(u[:, :3], output_final_state=True)
        y1 = model(u[:, 3:], initial_state=cache)
    assert rel_err(y_s, y_ref) < 1e-8 and rel_err(torch.cat([y0, y1], 1), y_ref) < 1e-8


BAD_BASE = """\
dim d = 4
dim H = 2
dim K = 3
input u[d]
state S[h: H, a: K]
param W_K[H, K, d] ~ normal(0, 1)
param w_g[H, d] ~ normal(0, 1)
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let g[h: H] = sigmoid(sum(m, w_g[h, m] * u[m]))
A[(h, a), (h2, a2)] = delta(h, h2) * delta(a, a2) * g[h]
B[(h, a), m] = k[h, a] * delta(m, 0)
C[o, (h, a)] = delta(o, h * K + a)
"""


@pytest.mark.parametrize("old, new, want", [
    # a misspelt function: the list of every function, now a suggestion (a swap of two neighbours is one edit)
    ("sigmoid(sum", "sigmod(sum", ["x.dsf:9:15: error: unknown function 'sigmod'", "  hint: did you mean 'sigmoid'?"]),
    ("sigmoid(sum", "softpuls(sum",
     ["x.dsf:9:15: error: unknown function 'softpuls'", "  hint: did you mean 'softplus'?"]),
    # running ops and taylor were missing from the list, so cumsom got no help towards cumsum
    ("sigmoid(sum(m, w_g[h, m] * u[m]))", "cumsom(k[h, 0])",
     ["x.dsf:9:15: error: unknown function 'cumsom'", "  hint: did you mean 'cumsum'?"]),
    # in an extent: 'must be built from numbers and dims only', not naming the typo
    ("state S[h: H, a: K]", "state S[h: H, a: tayler(K, 2)]",
     ["x.dsf:5:18: error: unknown function 'tayler' in axis 1 of 'S'", "  hint: did you mean 'taylor'?"]),
    # a sum index named like its own let: a second, wrong error 'cycle among lets: k -> k' came first
    ("sum(m, W_K[h, a, m] * u[m])", "sum(k, W_K[h, a, k] * u[k])",
     ["x.dsf:8:21: error: sum index 'k' shadows the let 'k' (line 8); rename one of them"]),
    # a misspelt keyword or a lower-case matrix at the start of a line
    ("param w_g", "parm w_g", ["x.dsf:7:1: error: unexpected 'parm' after the end of the statement",
                               "  hint: did you mean 'param'? each statement starts with a keyword (model, dim, "
                               "input, state, output, param, let, post, drive, readout, unused) or a matrix entry "
                               "such as A[...] = ..."]),
    ("let g[", "lte g[", ["x.dsf:9:1: error: unexpected 'lte' after the end of the statement"]),
    ("A[(h, a)", "a[(h, a)", ["x.dsf:10:1: error: unexpected 'a' after the end of the statement"]),
])
def test_mistakes_get_a_positioned_error_with_a_useful_hint(old, new, want):
    from dsfc.lang.errors import SpecErrors

    assert old in BAD_BASE
    with pytest.raises(SpecErrors) as info:
        compile_text(BAD_BASE.replace(old, new, 1), "x.dsf")
    lines = [line for line in info.value.render().splitlines() if "error:" in line or "hint:" in line]
    assert lines[:len(want)] == want and not any("cycle" in line for line in lines), lines
    if new.startswith(("lte", "a[")):
        assert lines[1].startswith(f"  hint: did you mean {'let' if new.startswith('lte') else 'A'!r}?"), lines


def test_a_keyword_suggestion_only_at_the_start_of_a_line():
    """A stray name after a complete statement, mid-line, is not taken for a misspelt keyword ('d' is not 'D')."""
    from dsfc.lang.errors import SpecErrors

    with pytest.raises(SpecErrors) as info:
        compile_text(BAD_BASE.replace("delta(m, 0)", "delta(m, 0) d"), "x.dsf")
    assert "did you mean" not in info.value.render()


def test_window_on_the_wrong_axis_says_the_window_is_the_last_axis():
    from dsfc.lang.errors import SpecErrors

    with pytest.raises(SpecErrors) as info:
        compile_text(BAD_BASE + "let kw[w: 3, h: H] = window(g[h])\n", "x.dsf")
    assert "hint: the window is the let's last axis (here 'h')" in info.value.render()
