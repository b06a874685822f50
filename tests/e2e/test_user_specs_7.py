"""A seventh new-spec hunt.

Index ranges narrower than the axis they read: the checker requires a subscript written as a lone index (``y[h, b]``)
to range over exactly its axis, and only range-checks a compound one (``y[h, b + 0]`` with b in range(V) into an axis
of V + 1, the normaliser column of linear attention with a ones-augmented value). SymPy folds ``b + 0`` to ``b``, and
two later stages then read it as a lone index: the generated constructor's dim check raised "index b ranges over 2
values, but the axis has 3 entries" at the spec's own default dims (the module could not be built at all), and the
torch printer printed ``y[h, b]`` as the whole tensor (the post came out V + 1 wide, or broadcast V + 1 against V).
``SymIndexUse.bare`` now keeps the checker's syntactic reading, and ``TorchPrinter._narrowed`` cuts a tensor read to
the ranges of its index symbols.

``A = 0`` (a memoryless baseline) has no deltas for the structure analysis to find, so every state axis was "mixed":
a dense A with unknown eigenvalues, run as an N x N matrix-vector product per step. A zero entry now counts as
diagonal on every axis (``common_row_col_deltas``): a scalar decay 0, eigenvalues exactly 0, and the family the rest
of the spec admits (the chunked outer-product scan for a k v^T input read by q).

A let or a post with an axis its expression does not use (``let g[c: E, k: R] = f[c]``, a broadcast) was printed as
a size-1 dim: a later ``sum(k, g[c, k])``, an einsum, added one entry instead of R (R times too small, silently),
and a post ``z[c: E, k: R] = y[c]`` came out E wide instead of E * R (``dsfc check`` stopped with an internal error).
Time-varying lets and posts are now expanded to their declared shape where an axis is unused (``plan._expanded``;
static lets already were).

The eigenvalue prover bounded a sum over a dim-sized range by [0, inf) even when divided by its own count: a delta
rule with keys tanh(.) / sqrt(K) was "unknown"; ``sum(i: n, x_i) / n`` is now a mean, inside the range of x
(``IntervalProver._mean``), and that spec is ``|lambda| <= 1``.

``dsfc check`` blamed any inf / NaN in the reference on A growing the state; it now names a DSF matrix that is
itself not finite at the sampled input (``P ^ 0.5`` of a negative param in B), or a post-op, when that is the cause.

New user specs the catalog and the earlier hunts do not cover (linear attention with squared-relu features and the
normaliser as a ones column of the value axis, RWKV-4's num / den state with the bonus term in a post, an AR(P)
companion-matrix recurrence with input-dependent coefficients, 3x3 rotation blocks, Mamba-2 with a derived odd head
dim, a D skip per head and a gated RMSNorm post, GLA at K = 1 with squared-relu features, S6 with every dim 1,
retention with one scalar decay param and a dense D, A = 0, a value-first output transposed back by a post, a
per-key decay whose C contracts the values instead of the keys, a clipped gate raised to a softplus step size, grouped
linear attention with shared keys and decays read before the update). Each is checked against the float64 reference
recurrence built from the same spec: forward with and without an initial state, token-by-token step, gradients of
the input, the initial state and every parameter, on the torch path and the Triton path (interpreted on CPU), at the
spec's dims and at odd / unit dims given to the constructor.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import TRITON, check_backend, check_new_spec, compile_and_build  # noqa: E402
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

LA_SQRELU_AUG = """
model LASqReluAug "linear attention, squared-relu features, the normaliser as a ones column of the value axis"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V + 1]
output y[h: H, b: V + 1]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V + 1, d] ~ normal(0, 1 / sqrt(d))
let qf[h: H, a: K] = relu(sum(m, W_Q[h, a, m] * u[m])) ^ 2 + 0.1
let kf[h: H, a: K] = relu(sum(m, W_K[h, a, m] * u[m])) ^ 2 + 0.1
let vx[h: H, b: V + 1] = (1 - delta(b, V)) * sum(m, W_V[h, b, m] * u[m]) + delta(b, V)
drive vx
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * kf[h, a]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * qf[h, a]
post out[h: H, b: V] = y[h, b + 0] / y[h, V]
"""

NARROW_B = """
model NarrowB "a per-key decay whose params are wider than the axes they are read over (b + 0, a * 1)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K + 1, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V + 2, d] ~ normal(0, 1 / sqrt(d))
param W_g[H, K + 1, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a * 1, m] * u[m])
let g[h: H, a: K] = logsigmoid(sum(m, W_g[h, a + 0, m] * u[m]) + 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(g[h, a])
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b + 0, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
D[(o, e), m] = W_V[o, e + 1, m]
"""

NARROW_DIAG = """
model NarrowDiag "diagonal scan reading wider params and lets through b + 0"
dim d = 3
dim E = 4
input u[d]
state h[c: E]
output y[E]
param W_f[E + 1, d] ~ normal(0, 1)
param W_x[E + 2, d] ~ normal(0, 1)
let f[c: E + 1] = sigmoid(sum(m, W_f[c, m] * u[m]))
A[c, c2] = delta(c, c2) * f[c + 0]
B[c, m] = (1 - f[c + 0]) * W_x[c * 1, m]
C[o, c] = delta(o, c) * f[c + 1]
"""

RWKV4 = """
model RWKV4 "RWKV-4 WKV: token shift, num/den state decayed by exp(-exp(w)), read before update, bonus in a post"
dim d = 5
dim E = 3
input u[d]
state s[c: E, r: 2]
output y[c: E, r: 2]
param w[c: E] = -1 + c / E
param bonus[E] ~ normal(0, 0.5)
param W_k[E, d] ~ normal(0, 1 / sqrt(d))
param W_v[E, d] ~ normal(0, 1 / sqrt(d))
param mu[d] ~ uniform(0, 1)
let up[m: d] = prev(u[m])
let k[c: E] = sum(m, W_k[c, m] * (mu[m] * u[m] + (1 - mu[m]) * up[m]))
let v[c: E] = sum(m, W_v[c, m] * (mu[m] * u[m] + (1 - mu[m]) * up[m]))
let x[c: E, r: 2] = exp(k[c]) * ((1 - r) * v[c] + r)
drive x
readout pre
A[(c, r), (c2, r2)] = delta(c, c2) * delta(r, r2) * exp(-exp(w[c]))
B[(c, r), (c2, r2)] = delta(c, c2) * delta(r, r2)
C[(o, e), (c, r)] = delta(o, c) * delta(e, r)
post wkv[c: E] = (y[c, 0] + exp(bonus[c] + k[c]) * v[c]) / (y[c, 1] + exp(bonus[c] + k[c]))
"""

AR_COMPANION = """
model ARCompanion "input-dependent AR(P) per channel: companion-matrix blocks, first row 0.3 tanh coefficients"
dim d = 3
dim E = 3
dim P = 3
input u[d]
state h[c: E, i: P]
output y[E]
param W_a[E, P, d] ~ normal(0, 1)
param W_b[E, d] ~ normal(0, 1 / sqrt(d))
let a[c: E, i: P] = 0.3 * tanh(sum(m, W_a[c, i, m] * u[m]))
A[(c, i), (c2, i2)] = delta(c, c2) * (delta(i, 0) * a[c, i2] + delta(i, i2 + 1))
B[(c, i), m] = delta(i, 0) * W_b[c, m]
C[o, (c, i)] = delta(o, c) * delta(i, 0)
"""

ROT3 = """
model Rot3 "3x3 blocks: a rotation about the third axis by an input-dependent angle, magnitude sigmoid"
dim d = 4
dim E = 5
input u[d]
state h[c: E, r: 3]
output y[E]
param W_th[E, d] ~ normal(0, 1)
param W_g[E, d] ~ normal(0, 1)
param W_b[E, 3, d] ~ normal(0, 1 / sqrt(d))
param W_c[E, 3] ~ normal(0, 1)
let th[c: E] = sum(m, W_th[c, m] * u[m])
let g[c: E] = sigmoid(sum(m, W_g[c, m] * u[m]))
# [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]: the plane of axes 0 and 1 rotates, axis 2 is kept
A[(c, r), (c2, r2)] = delta(c, c2) * g[c] * (delta(r, 2) * delta(r2, 2)
                      + (1 - delta(r, 2)) * (1 - delta(r2, 2)) * (delta(r, r2) * cos(th[c]) + (r - r2) * sin(th[c])))
B[(c, r), m] = W_b[c, r, m]
C[o, (c, r)] = delta(o, c) * W_c[c, r]
"""

MAMBA2_RMSGATE = """
model Mamba2RMS "Mamba-2 SSD core, head dim P = E // H derived (odd), D skip per head, gated RMSNorm post"
dim d = 5
dim H = 3
dim E = 9
dim P = E // H
dim n = 3
input u[d]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param W_x[E, d] ~ normal(0, 1 / sqrt(d))
param W_z[E, d] ~ normal(0, 1 / sqrt(d))
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param W_dt[H, d] ~ normal(0, 0.3)
param b_dt[H] ~ dt_bias(0.001, 0.1)
param A_log[h: H] = log(h + 1)
param Dh[H] = 1
param g_norm[E] = 1
let x[h: H, p: P] = sum(m, W_x[h * P + p, m] * u[m])
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]) + b_dt[h])
let bb[j: n] = sum(m, W_B[j, m] * u[m])
let cc[j: n] = sum(m, W_C[j, m] * u[m])
drive x
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * bb[j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * cc[j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * Dh[h]
post gz[h: H, p: P] = y[h, p] * silu(sum(m, W_z[h * P + p, m] * u[m]))
post out[h: H, p: P] = gz[h, p] / sqrt(sum(p2, gz[h, p2] ^ 2) / P + 1e-5) * g_norm[h * P + p]
"""

GLA_K1 = """
model GLAK1 "GLA at K = 1 with squared-relu q/k features and a low-rank per-key gate, V = 5"
dim d = 3
dim H = 2
dim K = 1
dim V = 5
dim R = 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_g1[R, d] ~ normal(0, 1 / sqrt(d))
param W_g2[H, K, R] ~ normal(0, 1)
let g[h: H, a: K] = logsigmoid(sum(r, W_g2[h, a, r] * sum(m, W_g1[r, m] * u[m])) + 2) / 8
let qf[h: H, a: K] = relu(sum(m, W_Q[h, a, m] * u[m])) ^ 2
let kf[h: H, a: K] = relu(sum(m, W_K[h, a, m] * u[m])) ^ 2
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(g[h, a])
B[(h, a, b), m] = kf[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * qf[h, a]
"""

S6_ONES = """
model S6Ones "S6 with every dim 1"
dim d = 1
dim n = 1
dim r = 1
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_xdt[r, d] ~ normal(0, 1 / sqrt(d))
param W_dt[d, r] ~ uniform(-1 / sqrt(r), 1 / sqrt(r))
param b_dt[d] ~ dt_bias(0.001, 0.1)
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param D[d] = 1
let dt[c: d] = softplus(sum(q, W_dt[c, q] * sum(k, W_xdt[q, k] * u[k])) + b_dt[c])
let b[j: n] = sum(k, W_B[j, k] * u[k])
let cq[j: n] = sum(k, W_C[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * dt[c] * b[j]
C[o, (c, j)] = delta(o, c) * cq[j]
D[o, k] = delta(o, k) * D[k]
"""

RETNET_SCALAR_PARAM = """
model RetScalar "retention with one scalar learned decay param (no axes) shared by all heads, non-square D"
dim d = 4
dim H = 3
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param s = 2
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_D[H, V, d] ~ normal(0, 0.1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * sigmoid(s + h)
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m]) / sqrt(K)
D[(o, e), m] = W_D[o, e, m]
"""

ZERO_DECAY = """
model ZeroDecay "A = 0: each step's state is its own outer product k v^T (no memory), read by q"
dim d = 3
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
A[(h, a, b), (h2, a2, b2)] = 0
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

ZERO_DIAG = """
model ZeroDiag "A = 0 on a 2-axis state with a dense B and a D skip: y = C B u + D u"
dim d = 3
dim E = 2
dim n = 3
input u[d]
state h[c: E, j: n]
output y[d]
param W_B[E, n, d] ~ normal(0, 1)
param W_C[d, E, n] ~ normal(0, 1)
A[(c, j), (c2, j2)] = 0
B[(c, j), m] = W_B[c, j, m] * tanh(u[m])
C[o, (c, j)] = W_C[o, c, j]
D[o, m] = delta(o, m)
"""

LA_TRANSPOSED = """
model LATransposed "GLA with the output declared value-first y[b, h] and a post that transposes it back"
dim d = 4
dim H = 3
dim K = 2
dim V = 5
input u[d]
state S[h: H, a: K, b: V]
output y[b: V, h: H]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, K, d] ~ normal(0, 1 / sqrt(d))
let al[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]) + 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(e, o), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
post z[h: H, b: V] = y[b, h] * sigmoid(u[h % d])
"""

C_OVER_VALUES = """
model COverValues "outer-product input, per-key decay, but C contracts the value axis (y[h, a] = S[h, a, :] . w)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, a: K]
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_r[H, V, d] ~ normal(0, 1 / sqrt(d))
let al[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, a) * sum(m, W_r[h, b, m] * u[m])
"""

MINPOW_DECAY = """
model MinPowDecay "diagonal decay min(sigmoid(x), 0.95) ^ dt with dt = softplus: a clipped gate raised to a step size"
dim d = 3
dim E = 5
input u[d]
state h[c: E]
output y[E]
param W_f[E, d] ~ normal(0, 1)
param W_dt[E, d] ~ normal(0, 1)
param W_x[E, d] ~ normal(0, 1 / sqrt(d))
let f[c: E] = min(sigmoid(sum(m, W_f[c, m] * u[m]) + 2), 0.95)
let dt[c: E] = softplus(sum(m, W_dt[c, m] * u[m]))
A[c, c2] = delta(c, c2) * f[c] ^ dt[c]
B[c, m] = (1 - f[c] ^ dt[c]) * W_x[c, m]
C[o, c] = delta(o, c)
D[o, m] = delta(o, m % E) * 0.5
"""

GQA_LA_PRE = """
model GQALAPre "grouped linear attention: keys and decays shared by R heads per group, read before the update, D skip"
dim d = 6
dim G = 2
dim R = 3
dim H = G * R
dim K = 2
dim V = 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[G, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_g[G, d] ~ normal(0, 1 / sqrt(d))
param Dh[H] ~ normal(0, 1)
let kg[g: G, a: K] = sum(m, W_K[g, a, m] * u[m])
let lg[g: G] = logsigmoid(sum(m, W_g[g, m] * u[m]) + 1)
readout pre
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(lg[h // R])
B[(h, a, b), m] = kg[h // R, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
D[(o, e), m] = delta(m, o) * Dh[o]
"""

BCAST = """
model Bcast "a let and posts with an axis their expression does not use (a broadcast), summed afterwards"
dim d = 3
dim E = 3
dim R = 2
input u[d]
state h[c: E]
output y[E]
param W[E, d] ~ normal(0, 1)
let f[c: E] = sigmoid(sum(m, W[c, m] * u[m]))
let g[c: E, k: R] = f[c]
let gs[c: E] = sum(k, g[c, k]) / R
A[c, c2] = delta(c, c2) * gs[c]
B[c, m] = W[c, m] * sum(k, g[c, k])
C[o, c] = delta(o, c)
post z[c: E, k: R] = y[c]
post z2[c: E] = sum(k, z[c, k])
post z3[c: E, k: R] = z2[c] * (k + 1)
post out[c: E, k: R, e: 2] = z3[c, k]
"""

SOFTMAX_QK_NORM = """
model SoftmaxQKNorm "softmax attention with L2-normalised q, k and a learned temperature, H = 1, V = 1, out-proj post"
dim d = 3
dim H = 1
dim K = 3
dim V = 1
input u[d]
state S[h: H, f: taylor(K, inf), b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param tau = 2
param W_o[d, H] ~ normal(0, 1)
let qr[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let q[h: H, a: K] = tau * qr[h, a] / sqrt(sum(a2, qr[h, a2] ^ 2))
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let qf[h: H, f: taylor(K, inf)] = taylor(a, q[h, a])
let kf[h: H, f: taylor(K, inf)] = taylor(a, k[h, a])
let z[h: H, f: taylor(K, inf)] = cumsum(kf[h, f])
let eta[h: H] = sum(f, qf[h, f] * z[h, f])
let eta_prev[h: H] = prev(eta[h])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * eta_prev[h] / eta[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m] / eta[h]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[h, f]
post out[o: d] = sum(h, W_o[o, h] * y[h, 0])
"""

GDN_PRE = """
model GDNPre "gated delta rule read before the update, K = 1, V = 1, sigmoid-gated output post, H = 3"
dim d = 4
dim H = 3
dim K = 1
dim V = 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, d] ~ normal(0, 1)
param W_g[H, d] ~ normal(0, 1)
param W_z[H, V, d] ~ normal(0, 1)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2) + 1)
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
let al[h: H] = exp(-softplus(sum(m, W_g[h, m] * u[m])))
readout pre
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * al[h] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
post z[h: H, b: V] = y[h, b] * sigmoid(sum(m, W_z[h, b, m] * u[m]))
"""

DELTA_VFIRST_D = """
model DeltaD "delta rule, beta in (0, 1), keys tanh(u) / sqrt(K) read from u, a D skip, a derived K = d // H"
dim d = 6
dim H = 2
dim K = d // H
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, d] ~ normal(0, 1)
param Dm[H, V, d] ~ normal(0, 0.1)
let k[h: H, a: K] = tanh(u[h * K + a]) / sqrt(K)
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
D[(o, e), m] = Dm[o, e, m]
"""

MID_HEADS = """
model MidHeads "GLA with the state laid out value, head, key: S[b, h, a], output y[b, h]"
dim d = 4
dim H = 3
dim K = 2
dim V = 3
input u[d]
state S[b: V, h: H, a: K]
output y[b: V, h: H]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, K, d] ~ normal(0, 1 / sqrt(d))
let al[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]) + 1)
A[(b, h, a), (b2, h2, a2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(b, h, a), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(e, o), (b, h, a)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

WIDE_OUT = """
model WideOut "S6-like with an output wider than the state's channels: C = delta(o, c) over o < d + 2, readout pre"
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n]
output y[d + 2]
param A_log[c: d, j: n] = log(j + 1)
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
let dt[c: d] = softplus(u[c])
readout pre
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * dt[c] * sum(m, W_B[j, m] * u[m])
C[o, (c, j)] = delta(o, c) * sum(m, W_C[j, m] * u[m])
D[o, k] = delta(o, k + 2)
"""

CASES = {
    "la_sqrelu_aug": (LA_SQRELU_AUG, Family.CHUNKED_OUTER),
    "narrow_b": (NARROW_B, Family.CHUNKED_OUTER),
    "narrow_diag": (NARROW_DIAG, Family.DIAGONAL_SCAN),
    "rwkv4": (RWKV4, Family.DIAGONAL_SCAN),
    "ar_companion": (AR_COMPANION, Family.DENSE_SCAN),
    "rot3": (ROT3, Family.DENSE_SCAN),
    "mamba2_rmsgate": (MAMBA2_RMSGATE, Family.CHUNKED_OUTER),
    "gla_k1": (GLA_K1, Family.CHUNKED_OUTER),
    "s6_ones": (S6_ONES, Family.DIAGONAL_SCAN),
    "retnet_scalar_param": (RETNET_SCALAR_PARAM, Family.CHUNKED_OUTER),
    "zero_decay": (ZERO_DECAY, Family.CHUNKED_OUTER),
    "zero_diag": (ZERO_DIAG, Family.DIAGONAL_SCAN),
    "la_transposed": (LA_TRANSPOSED, Family.CHUNKED_OUTER),
    "c_over_values": (C_OVER_VALUES, Family.DIAGONAL_SCAN),
    "minpow_decay": (MINPOW_DECAY, Family.DIAGONAL_SCAN),
    "gqa_la_pre": (GQA_LA_PRE, Family.CHUNKED_OUTER),
    "bcast": (BCAST, Family.DIAGONAL_SCAN),
    "gdn_pre": (GDN_PRE, Family.CHUNKED_DELTA),
    "delta_vfirst_d": (DELTA_VFIRST_D, Family.CHUNKED_DELTA),
    "mid_heads": (MID_HEADS, Family.CHUNKED_OUTER),
    "wide_out": (WIDE_OUT, Family.DIAGONAL_SCAN),
}

FULL = {"la_sqrelu_aug", "narrow_b", "zero_decay", "zero_diag", "bcast"}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    """Every backend against the reference for the specs behind a fix (FULL); the others (2 CPU cores: ~5 s a spec
    for the full check) from an initial state at one odd T, torch (forward, step, gradients) and Triton."""
    text, family = CASES[name]
    if name in FULL:
        check_new_spec(text, family, None, name)
    else:
        built = compile_and_build(text, path=f"{name}.dsf")
        assert built.result.structure.family == family, built.result.structure.family_reason
        check_backend(built, "torch", ((2, 7),), h0s=(True,))
        if TRITON:
            check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))
    if family in (Family.CHUNKED_OUTER, Family.CHUNKED_DELTA):
        # a longer odd T with several sequences, from an initial state (past one chunk of the chunked scans)
        check_backend(compile_and_build(text, path=f"{name}.dsf"), "torch", ((3, 33),), steps=False, h0s=(True,))


@pytest.mark.parametrize("name, dims", [
    ("la_sqrelu_aug", dict(d=1, H=1, K=1, V=1)),
    ("mamba2_rmsgate", dict(d=2, H=5, E=5, n=1)),  # head dim P = E // H = 1
    ("rot3", dict(d=1, E=1)),
    ("ar_companion", dict(d=2, E=2, P=5)),
    ("gla_k1", dict(d=1, H=1, K=3, V=1, R=3)),
    ("narrow_b", dict(d=2, H=1, K=1, V=3)),
    ("delta_vfirst_d", dict(d=5, H=5, V=3)),  # K = d // H = 1
])
def test_new_spec_at_other_dims(name, dims):
    """The spec's module built at odd / unit dims: torch (forward, step, gradients) and Triton, from a state."""
    built = compile_and_build(CASES[name][0], dims, path=f"{name}.dsf")
    check_backend(built, "torch", ((2, 5),), h0s=(True,))
    if TRITON:
        check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))


def test_narrower_index_reads_the_first_entries():
    """``y[h, b + 0]`` (b in range(V)) into an axis of V + 1 builds at the spec's dims, and its post is V wide."""
    built = compile_and_build(LA_SQRELU_AUG, path="la_sqrelu_aug.dsf")
    assert built.d_out() == 2 * 2
    assert built.model._state_size() == 2 * 3 * 3


@pytest.mark.parametrize("name, kind", [("zero_decay", "scalar"), ("zero_diag", "scalar")])
def test_zero_a_is_a_zero_diagonal(name, kind):
    """A = 0 (no memory) had no deltas to find, so every axis was 'mixed': dense A, eigenvalues unknown, and the
    dense family's N x N matrix-vector product per step. It is the zero scalar: eigenvalues exactly 0."""
    r = compile_text(CASES[name][0], f"{name}.dsf").report
    assert (r.a_kind, r.eigen_bound, r.eigen_interval) == (kind, Bound.STABLE.value, "[0, 0]"), r.eigen_reason


NAN_B = """
model NanB "B reads a fractional power of a signed param (-1 at c = 0): NaN"
dim d = 3
input u[d]
state h[c: d]
output y[d]
param P[c: d] = c - 1
A[c, c2] = delta(c, c2) * 0.5
B[c, m] = delta(c, m) * P[c] ^ 0.5
C[o, c] = delta(o, c)
"""


@pytest.mark.parametrize("text, reason", [
    (NAN_B, "the spec's B is already inf / NaN"),
    (NAN_B.replace("P[c] ^ 0.5", "1").replace("C[o, c] = delta(o, c)", "C[o, c] = delta(o, c)\n"
                                                                        "post z[c: d] = log(y[c])"),
     "a post-op makes the output inf / NaN"),
])
def test_check_names_why_the_reference_is_not_finite(text, reason):
    """``dsfc check`` blamed A's growth for any inf / NaN in the reference; a NaN B (a fractional power of a negative
    param) or a post's log of a negative output has nothing to do with A."""
    from dsfc.check import run_check

    torch.manual_seed(1)
    rep = run_check(compile_text(text, "nan.dsf"), triton=False)
    assert any(reason in note for note in rep.notes), rep.notes
    assert not any("grows the state" in note for note in rep.notes), rep.notes


def test_softmax_with_l2_normalised_queries_and_keys():
    """Quadratic family: q, k L2-normalised in the spec, a learned temperature, H = V = 1, an out-projection post
    reading y[h, 0]; dsfc check (reference, forward, step, KV cache, Triton) at the spec's dims."""
    from dsfc.check import run_check

    result = compile_text(SOFTMAX_QK_NORM, "softmax_qk_norm.dsf")
    assert result.structure.family == Family.QUADRATIC
    rep = run_check(result, dims={"d": 3, "H": 1, "K": 3, "V": 1})
    assert rep.ok, rep.table()


def test_mean_over_a_sum_bounds_the_delta_rule():
    """A delta rule with keys tanh(.) / sqrt(K): g^T f = beta sum(a, tanh(.)^2) / K. Interval arithmetic bounded the
    sum by [0, inf) (its count K is a dim) and called the eigenvalues unknown; a sum over its own count is a mean,
    inside its terms' range [0, 1), so s - g^T f is in (0, 1] (IntervalProver._mean)."""
    r = compile_text(DELTA_VFIRST_D, "delta_vfirst_d.dsf").report
    assert (r.eigen_bound, r.eigen_interval) == (Bound.MARGINAL.value, "(0, 1]"), r.eigen_reason
