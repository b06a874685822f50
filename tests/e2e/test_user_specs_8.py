"""An eighth new-spec hunt.

A query written as a sum lost the chunked forms. ``C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * (q[h, a] + 1)``
(an inline ``elu(q) + 1`` feature, a query mixed with its ``prev``, ``(q - p) / 2``) reaches the readout as one
contraction of the state per term, ``sum_a q h + sum_a h``, and the outer-product split wanted one term: linear
attention and GLA with such a query compiled to the elementwise diagonal scan over the whole H*K*V state, and a delta
rule to the dense family (a block matrix-vector product per step) instead of the chunked WY scan. Results were right,
the algorithm was not the one the structure admits. ``structure._one_contraction`` now merges contractions over the
same indices (nested ones for multi-axis keys too) into one, ``sum_a (q + 1) h``, before the split.

At T = 0 the float64 reference (``dsfc.reference.reference_forward``) returned an empty y built by ``torch.zeros``,
detached from the inputs: a backward through it failed ("does not require grad") where the generated module's
empty y backpropagates zeros. It is now an empty einsum of D and the driven input. ``check_backend`` in the shared
helpers takes T = 0 (empty gradients).

New user specs the catalog and the earlier hunts do not cover (a gated delta rule with alpha = exp(-softplus(.)) and
keys normalised by ``(k.k + eps) ^ (-1/2)``, a Longhorn-style delta rule with a scalar let beta = 1 / (1 + k.k),
retention with decays a param initialised from h, mLSTM with the normaliser as a second state axis read by a post,
an S5-like diagonal SSM with dt shared by blocks of channels ``dt[p // G]``, RWKV-7's diag(w) - kappa (a kappa)^T at
H = 1, HGRN2 with a learned lower bound and 1 - f as the key, a 2-axis input with a swapped output, a 3-axis input
with a permuted 3-axis output and D, grouped GLA with ``dim R = H // G`` and an odd value dim, every function of the
language in the gates, one projection shared by A's step size, B and D, delta rules with keys shared by head groups,
a per-key beta on either side of the rank-1 term, a plus sign (I + beta k k^T), the gate expanded over both terms, a
short conv (window) on the keys with a prev query, mLSTM read before the update with its scan normaliser in a post,
cumsum positions in C, a GLA query over a 2-axis key with a sum and an output gate). Each is checked against the
float64 reference recurrence built from the same spec: forward with and without an initial state at T = 0, 1 and 7,
batch 1 and 3, token-by-token step, gradients of the input, the initial state and every parameter, on the torch path
and the Triton path (interpreted on CPU).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import check_backend, check_small_chunks, compile_and_build  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

TRITON = importlib.util.find_spec("triton") is not None and importlib.util.find_spec("numpy") is not None

GDN_SOFTPLUS = """
model GDNSoftplus "gated delta rule, alpha = exp(-softplus(x)), keys normalised with ^(-1/2)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, d] ~ normal(0, 1)
param W_b[H, d] ~ normal(0, 1)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] * (sum(a2, kr[h, a2] * kr[h, a2]) + 1e-6) ^ (-0.5)
let alpha[h: H] = exp(-softplus(sum(m, W_a[h, m] * u[m])))
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * alpha[h] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


LONGHORN_DELTA = """
model LonghornDelta "online-learning delta rule with beta = 1 / (1 + k.k), matrix state"
dim d = 3
dim K = 3
dim V = 2
input u[d]
state S[a: K, b: V]
output y[b: V]
param W_K[K, d] ~ normal(0, 1 / sqrt(d))
param W_V[V, d] ~ normal(0, 1 / sqrt(d))
param W_Q[K, d] ~ normal(0, 1 / sqrt(d))
let k[a: K] = sum(m, W_K[a, m] * u[m])
let beta = 1 / (1 + sum(a, k[a] * k[a]))
A[(a, b), (a2, b2)] = delta(b, b2) * (delta(a, a2) - beta * k[a] * k[a2])
B[(a, b), m] = beta * k[a] * W_V[b, m]
C[e, (a, b)] = delta(e, b) * sum(m, W_Q[a, m] * u[m])
"""


MSR_PARAM_DECAY = """
model MSRParamDecay "multi-scale retention, decays a param expression of h"
dim d = 3
dim H = 3
dim K = 2
dim V = 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param gamma[h: H] = 1 - exp(-(h + 1) * log(2))
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gamma[h]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


MLSTM_AXIS = """
model MLSTMAxis "mLSTM with the normaliser as a second state axis r (r = 0 memory, r = 1 normaliser)"
dim d = 4
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, r: 2, a: K, b: V]
output y[h: H, r: 2, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_f[H, d] ~ normal(0, 1)
param W_i[H, d] ~ normal(0, 0.3)
let f[h: H] = sigmoid(sum(m, W_f[h, m] * u[m]) + 2)
let ig[h: H] = exp(sum(m, W_i[h, m] * u[m]))
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m]) / sqrt(K)
let x[h: H, r: 2, b: V] = (1 - r) * sum(m, W_V[h, b, m] * u[m]) + r * delta(b, 0)
drive x
A[(h, r, a, b), (h2, r2, a2, b2)] = delta(h, h2) * delta(r, r2) * delta(a, a2) * delta(b, b2) * f[h]
B[(h, r, a, b), (h2, r2, b2)] = delta(h, h2) * delta(r, r2) * delta(b, b2) * ig[h] * k[h, a]
C[(o, s, e), (h, r, a, b)] = delta(o, h) * delta(s, r) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
post out[h: H, b: V] = y[h, 0, b] / max(abs(y[h, 1, 0]), 1)
"""


S5_BLOCKS = """
model S5Blocks "S5-like diagonal SSM, dt shared by blocks of G channels"
dim d = 3
dim P = 6
dim G = 2
dim NB = P // G
input u[d]
state x[p: P]
output y[d]
param log_lam[p: P] = log(0.5 + p / (2 * P))
param W_dt[NB, d] ~ normal(0, 1)
param b_dt[NB] ~ dt_bias(0.01, 0.1)
param Bm[P, d] ~ normal(0, 1 / sqrt(d))
param Cm[d, P] ~ normal(0, 1 / sqrt(P))
param Dm[d] ~ ones()
let dt[j: NB] = softplus(sum(m, W_dt[j, m] * u[m]) + b_dt[j])
A[p, p2] = delta(p, p2) * exp(-exp(log_lam[p]) * dt[p // G])
B[p, m] = dt[p // G] * Bm[p, m]
C[o, p] = Cm[o, p]
D[o, m] = delta(o, m) * Dm[o]
"""


RWKV7_SMALL = """
model RWKV7Small "RWKV-7-ish A = diag(w) - kappa (a kappa)^T with kappa L2-normalised, a in (0, 1)"
dim d = 3
dim H = 1
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_w[H, K, d] ~ normal(0, 1)
param W_k[H, K, d] ~ normal(0, 1)
param W_a[H, K, d] ~ normal(0, 1)
param W_v[H, V, d] ~ normal(0, 1)
param W_r[H, K, d] ~ normal(0, 1)
let w[h: H, a: K] = exp(-0.6 * sigmoid(sum(m, W_w[h, a, m] * u[m])))
let kr[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let kap[h: H, a: K] = kr[h, a] / sqrt(sum(j, kr[h, j] ^ 2))
let ia[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) * w[h, a] - kap[h, a] * ia[h, a2] * kap[h, a2])
B[(h, a, b), m] = kr[h, a] * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_r[h, a, m] * u[m])
"""


HGRN2_KEY = """
model HGRN2Key "HGRN2: per-key forget f, key 1 - f, query q, state per head"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_f[H, K, d] ~ normal(0, 1)
param W_v[H, V, d] ~ normal(0, 1)
param W_q[H, K, d] ~ normal(0, 1)
param lb[h: H, a: K] = h / H
let f[h: H, a: K] = lb[h, a] + (1 - lb[h, a]) * sigmoid(sum(m, W_f[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * f[h, a]
B[(h, a, b), m] = (1 - f[h, a]) * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * silu(sum(m, W_q[h, a, m] * u[m]))
"""


IN2_SWAP = """
model In2Swap "2-axis input u[g, c], diagonal state h[g, c], output y[c, g] (swapped order)"
dim G = 3
dim E = 2
input u[g: G, c: E]
state h[g: G, c: E]
output y[c: E, g: G]
param W[G, E] ~ normal(0, 1)
param Dp[E, G] ~ normal(0, 1)
let f[g: G, c: E] = sigmoid(W[g, c] * u[g, c] + 1)
A[(g, c), (g2, c2)] = delta(g, g2) * delta(c, c2) * f[g, c]
B[(g, c), (g2, c2)] = delta(g, g2) * delta(c, c2) * (1 - f[g, c])
C[(c, g), (g2, c2)] = delta(g, g2) * delta(c, c2) * (1 + c)
D[(c, g), (g2, c2)] = delta(g, g2) * delta(c, c2) * Dp[c, g]
"""


DIM_EXPRS = """
model DimExprs "grouped-query GLA with R = H // G, odd dims, K = 1"
dim d = 5
dim H = 6
dim G = 3
dim R = H // G
dim K = 1
dim V = 2 * R + 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[G, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[G, V, d] ~ normal(0, 1 / sqrt(d))
param W_g[H, d] ~ normal(0, 1)
let g[h: H] = logsigmoid(sum(m, W_g[h, m] * u[m]) + 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(g[h])
B[(h, a, b), m] = sum(m2, W_K[h // R, a, m2] * u[m2]) * W_V[h // R, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


ALL_FUNCS = """
model AllFuncs "every function of the language inside the gates of a diagonal recurrence"
dim d = 3
dim E = 3
input u[d]
state h[c: E]
output y[E]
param W[E, d] ~ normal(0, 1)
param P[E] ~ uniform(0.5, 1.5)
let z[c: E] = sum(m, W[c, m] * u[m])
let g1[c: E] = sigmoid(z[c]) * exp(logsigmoid(z[c] + 1)) / (1 + abs(tanh(z[c])))
let g2[c: E] = (1 + sin(z[c]) * cos(z[c])) / 2
let g3[c: E] = min(max(softplus(z[c]) / (1 + softplus(z[c])), 0.05), 0.95)
let x[c: E] = relu(z[c]) + silu(z[c]) + elu(z[c]) + gelu(z[c]) + sqrt(1 + z[c] ^ 2)
    + log(1 + P[c]) + pow(P[c], z[c] / 4)
A[c, c2] = delta(c, c2) * g1[c] * g2[c] * g3[c]
B[c, m] = W[c, m]
C[o, c] = delta(o, c) * x[c]
"""


SHARED_AB = """
model SharedAB "one parameter read by A and B (S6-like with shared projection W for dt and input)"
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n]
output y[d]
param W[d, d] ~ normal(0, 1 / sqrt(d))
param Al[c: d, j: n] = log(j + 1)
let dt[c: d] = softplus(sum(m, W[c, m] * u[m]))
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(Al[c, j]))
B[(c, j), m] = dt[c] * W[c, m] * exp(-Al[c, j])
C[o, (c, j)] = delta(o, c) * (1 + Al[c, j])
D[o, m] = W[o, m]
"""


GQA_DELTA = """
model GQADelta "delta rule with keys shared by R heads (k[h // R, a]), factors in odd order"
dim d = 4
dim H = 4
dim G = 2
dim R = H // G
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[G, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, K, d] ~ normal(0, 1)
let kr[g: G, a: K] = tanh(sum(m, W_K[g, a, m] * u[m]))
let k[g: G, a: K] = kr[g, a] / sqrt(sum(j, kr[g, j] ^ 2) + 1)
let beta[h: H] = sigmoid(sum(m, W_b[h, 0, m] * u[m]))
let bk[h: H, a: K] = sigmoid(sum(m, W_b[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(b, b2) * delta(h, h2) * (delta(a, a2) - k[h // R, a2] * beta[h] * k[h // R, a])
B[(h, a, b), m] = k[h // R, a] * W_V[h, b, m] * beta[h]
C[(o, e), (h, a, b)] = delta(e, b) * delta(o, h) * sum(m, W_Q[h, a, m] * u[m])
"""


KEY_BETA = """
model KeyBeta "A = I - k (bk k)^T with a per-key beta; B writes k"
dim d = 4
dim H = 4
dim G = 2
dim R = H // G
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[G, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, K, d] ~ normal(0, 1)
let kr[g: G, a: K] = tanh(sum(m, W_K[g, a, m] * u[m]))
let k[g: G, a: K] = kr[g, a] / sqrt(sum(j, kr[g, j] ^ 2) + 1)
let beta[h: H] = sigmoid(sum(m, W_b[h, 0, m] * u[m]))
let bk[h: H, a: K] = sigmoid(sum(m, W_b[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(b, b2) * delta(h, h2) * (delta(a, a2) - k[h // R, a] * bk[h, a2] * k[h // R, a2])
B[(h, a, b), m] = k[h // R, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(e, b) * delta(o, h) * sum(m, W_Q[h, a, m] * u[m])
"""


PLUS_RANK = """
model PlusRank "A = I + beta k k^T (a plus sign, eigenvalue 1 + beta |k|^2)"
dim d = 4
dim H = 4
dim G = 2
dim R = H // G
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[G, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, K, d] ~ normal(0, 1)
let kr[g: G, a: K] = tanh(sum(m, W_K[g, a, m] * u[m]))
let k[g: G, a: K] = kr[g, a] / sqrt(sum(j, kr[g, j] ^ 2) + 1)
let beta[h: H] = sigmoid(sum(m, W_b[h, 0, m] * u[m]))
let bk[h: H, a: K] = sigmoid(sum(m, W_b[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(b, b2) * delta(h, h2) * (delta(a, a2) + beta[h] * k[h // R, a] * k[h // R, a2])
B[(h, a, b), m] = beta[h] * k[h // R, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(e, b) * delta(o, h) * sum(m, W_Q[h, a, m] * u[m])
"""


DELTA_EXPANDED_D = """
model DeltaDExp "delta rule written as alpha I - alpha beta k k^T expanded, with D"
dim d = 4
dim H = 4
dim G = 2
dim R = H // G
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[G, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, K, d] ~ normal(0, 1)
let kr[g: G, a: K] = tanh(sum(m, W_K[g, a, m] * u[m]))
let k[g: G, a: K] = kr[g, a] / sqrt(sum(j, kr[g, j] ^ 2) + 1)
let beta[h: H] = sigmoid(sum(m, W_b[h, 0, m] * u[m]))
let bk[h: H, a: K] = sigmoid(sum(m, W_b[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(b, b2) * delta(h, h2) * delta(a, a2) * bk[h, 0]
    - delta(b, b2) * delta(h, h2) * bk[h, 0] * beta[h] * k[h // R, a] * k[h // R, a2]
B[(h, a, b), m] = beta[h] * k[h // R, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(e, b) * delta(o, h) * sum(m, W_Q[h, a, m] * u[m])
D[(o, e), m] = W_V[o, e, m] * beta[o]
"""


MLSTM_PRE = """
model MLSTMPre "mLSTM read before the update, normaliser scan in a post, exp input gate clipped by min"
dim d = 3
dim H = 2
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
readout pre
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_f[H, d] ~ normal(0, 1)
param W_i[H, d] ~ normal(0, 1)
let f[h: H] = sigmoid(sum(m, W_f[h, m] * u[m]) + 1)
let ig[h: H] = exp(min(sum(m, W_i[h, m] * u[m]), 2))
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m]) / sqrt(K)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let n[h: H, a: K] = scan(f[h], ig[h] * k[h, a])
let np[h: H, a: K] = prev(n[h, a])
let den[h: H] = max(abs(sum(a, np[h, a] * q[h, a])), 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * f[h]
B[(h, a, b), m] = ig[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
post out[h: H, b: V] = y[h, b] / den[h]
"""


CUM_POS = """
model CumPos "diagonal decay whose readout is modulated by a cumsum position and a cumsum of dt"
dim d = 2
dim E = 3
input u[d]
state x[c: E]
output y[c: E]
param W[E, d] ~ normal(0, 1)
param b[E] ~ dt_bias(0.01, 0.1)
let dt[c: E] = softplus(sum(m, W[c, m] * u[m]) + b[c])
let pos = cumsum(1)
let tau[c: E] = cumsum(dt[c])
A[c, c2] = delta(c, c2) * exp(-dt[c])
B[c, m] = dt[c] * W[c, m]
C[o, c] = delta(o, c) * cos(pos / 4) * exp(-tau[c] / (1 + pos))
"""


IN3 = """
model In3 "3-axis input u[g, c, r], D over 3 axes permuted, state h[c, g]"
dim G = 2
dim E = 3
dim Rr = 2
input u[g: G, c: E, r: Rr]
state h[c: E, g: G]
output y[r: Rr, g: G, c: E]
param W[G, E, Rr] ~ normal(0, 1)
let f[c: E, g: G] = sigmoid(sum(r, W[g, c, r] * u[g, c, r]))
A[(c, g), (c2, g2)] = delta(c, c2) * delta(g, g2) * f[c, g]
B[(c, g), (g2, c2, r2)] = delta(c, c2) * delta(g, g2) * W[g, c, r2]
C[(r, g, c), (c2, g2)] = delta(c, c2) * delta(g, g2) * (1 + r)
D[(r, g, c), (g2, c2, r2)] = delta(c, c2) * delta(g, g2) * delta(r, r2) * W[g, c, r]
"""


DELTA_CONV = """
model DeltaConv "delta rule, keys through a width-3 causal conv (window) + silu + L2 norm, query through prev"
dim d = 3
dim H = 1
dim K = 2
dim V = 3
dim W = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param conv[H, K, W] ~ normal(0, 0.5)
param W_b[H, d] ~ normal(0, 1)
let kx[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let kw[h: H, a: K, w: W] = window(kx[h, a])
let kc[h: H, a: K] = silu(sum(w, conv[h, a, w] * kw[h, a, w]))
let k[h: H, a: K] = kc[h, a] / sqrt(sum(a2, kc[h, a2] ^ 2) + 0.01)
let qx[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let qp[h: H, a: K] = prev(qx[h, a])
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * (qx[h, a] + qp[h, a]) / 2
post o[h: H, b: V] = y[h, b] * sigmoid(qp[h, 0])
"""


GATED_Q = """
model GatedQ "GLA per-key decay, query (q + prev q) with a gate on the output in C, key axis 2-D"
dim d = 3
dim H = 2
dim K = 2
dim J = 2
dim V = 3
input u[d]
state S[h: H, a: K, j: J, b: V]
output y[h: H, b: V]
param W_Q[H, K, J, d] ~ normal(0, 1)
param W_K[H, K, J, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_g[H, K, d] ~ normal(0, 1)
param W_z[H, V, d] ~ normal(0, 1)
let q[h: H, a: K, j: J] = sum(m, W_Q[h, a, j, m] * u[m])
let qp[h: H, a: K, j: J] = prev(q[h, a, j])
let g[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 1)
A[(h, a, j, b), (h2, a2, j2, b2)] = delta(h, h2) * delta(a, a2) * delta(j, j2) * delta(b, b2) * g[h, a]
B[(h, a, j, b), m] = sum(m2, W_K[h, a, j, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, j, b)] = delta(o, h) * delta(e, b) * silu(sum(m, W_z[h, b, m] * u[m]))
    * (q[h, a, j] - 0.5 * qp[h, a, j] + 1)
"""


MSR_ELU = """
model MSRElu "multi-scale retention, decays a param expression of h"
dim d = 3
dim H = 3
dim K = 2
dim V = 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param gamma[h: H] = 1 - exp(-(h + 1) * log(2))
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gamma[h]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * (elu(sum(m, W_Q[h, a, m] * u[m])) + 1) / 2
"""

CASES = {
    "gdn_softplus": (GDN_SOFTPLUS, Family.CHUNKED_DELTA),
    "longhorn_delta": (LONGHORN_DELTA, Family.CHUNKED_DELTA),
    "msr_param_decay": (MSR_PARAM_DECAY, Family.CHUNKED_OUTER),
    "mlstm_axis": (MLSTM_AXIS, Family.CHUNKED_OUTER),
    "s5_blocks": (S5_BLOCKS, Family.DIAGONAL_SCAN),
    "rwkv7_small": (RWKV7_SMALL, Family.CHUNKED_DPLR),
    "hgrn2_key": (HGRN2_KEY, Family.CHUNKED_OUTER),
    "in2_swap": (IN2_SWAP, Family.DIAGONAL_SCAN),
    "dim_exprs": (DIM_EXPRS, Family.CHUNKED_OUTER),
    "all_funcs": (ALL_FUNCS, Family.DIAGONAL_SCAN),
    "shared_ab": (SHARED_AB, Family.DIAGONAL_SCAN),
    "gqa_delta": (GQA_DELTA, Family.CHUNKED_DELTA),
    "key_beta": (KEY_BETA, Family.CHUNKED_DELTA),
    "plus_rank": (PLUS_RANK, Family.CHUNKED_DELTA),
    "delta_expanded_d": (DELTA_EXPANDED_D, Family.CHUNKED_DELTA),
    "mlstm_pre": (MLSTM_PRE, Family.CHUNKED_OUTER),
    "cum_pos": (CUM_POS, Family.DIAGONAL_SCAN),
    "in3": (IN3, Family.DIAGONAL_SCAN),
    "delta_conv": (DELTA_CONV, Family.CHUNKED_DELTA),
    "gated_q": (GATED_Q, Family.CHUNKED_OUTER),
    "msr_elu": (MSR_ELU, Family.CHUNKED_OUTER),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    """torch (forward at T = 0, 1, 7 and batch 1, 3, step, gradients) and Triton from an initial state, and for the
    chunked families the torch path with chunks of 3 steps (T = 7 and 9 cross chunk boundaries)."""
    text, family = CASES[name]
    built = compile_and_build(text, path=f"{name}.dsf")
    assert built.result.structure.family == family, built.result.structure.family_reason
    check_backend(built, "torch", ((1, 1), (3, 7)))
    check_backend(built, "torch", ((1, 0), (3, 0)), steps=False)
    if TRITON:
        check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))
    if family in (Family.CHUNKED_OUTER, Family.CHUNKED_DELTA):
        check_small_chunks(built)


SUM_QUERIES = ["(qx[h, a] + qp[h, a]) / 2", "(qx[h, a] + 1)", "(qx[h, a] - qp[h, a]) / 2", "qp[h, a]"]


@pytest.mark.parametrize("query", SUM_QUERIES)
def test_a_query_written_as_a_sum_keeps_the_delta_rule(query):
    """A sum in C's query made the readout two contractions: the delta rule fell to the dense family."""
    text = DELTA_CONV.replace("(qx[h, a] + qp[h, a]) / 2", query)
    result = compile_text(text, "delta_conv.dsf")
    assert result.structure.family == Family.CHUNKED_DELTA, result.structure.family_reason


@pytest.mark.parametrize("query, family", [
    ("sum(m, W_Q[h, a, m] * u[m])", Family.CHUNKED_OUTER),
    ("(sum(m, W_Q[h, a, m] * u[m]) + 1)", Family.CHUNKED_OUTER),
    ("(elu(sum(m, W_Q[h, a, m] * u[m])) + 1) / 2", Family.CHUNKED_OUTER),
    # not one contraction: the second term reads the state over b, not a
    ("sum(m, W_Q[h, a, m] * u[m]) + delta(o, h) * delta(e, 0) * u[0]", Family.DIAGONAL_SCAN),
])
def test_a_query_written_as_a_sum_keeps_the_outer_form(query, family):
    """Retention with an inline (elu(q) + 1) / 2 query compiled to the elementwise diagonal scan over H*K*V."""
    text = MSR_PARAM_DECAY.replace("sum(m, W_Q[h, a, m] * u[m])", query)
    result = compile_text(text, "msr.dsf")
    assert result.structure.family == family, result.structure.family_reason
    if family == Family.DIAGONAL_SCAN:
        check_backend(compile_and_build(text, path="msr.dsf"), "torch", ((2, 5),), h0s=(True,))


def test_reference_at_t0_backpropagates_zeros():
    """The reference's empty output at T = 0 is a function of the input (gradients are zeros, not an error)."""
    built = compile_and_build(S5_BLOCKS, path="s5_blocks.dsf")
    u = torch.zeros(2, 0, built.d_in(), dtype=torch.float64, requires_grad=True)
    y, h = reference_forward(built.sym, built.all_dims, built.params(), u)
    assert y.shape == (2, 0, 3) and h.shape == (2, 6)
    (g,) = torch.autograd.grad(y.sum(), [u])
    assert g.shape == u.shape
