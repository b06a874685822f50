"""A fifth new-spec hunt: layers the catalog and the earlier hunts do not cover, written as a new user would
(RWKV-7's diag(w) minus a rank-1 correction in a value-first state S[h, b, a], GateLoop's complex per-key decay as a
data-dependent 2x2 rotation, Longhorn's per-element decay 1 - dt k^2, Hedgehog's learned softmax feature map with a
running normaliser, cosFormer's cos/sin position reweighting with the position a cumsum of 1, degree-2 polynomial
attention through a 4-axis state k (x) k, Mamba-2 with several groups and head dim 3, a delta rule in a value-first
state, a constant non-diagonal A (damped shift register), a 3-axis output with a state-permuting C and an
input-dependent D, S6 read before the update, a GLA with a cos^2 gate that can reach 0, a conv-driven GLA read before
the update with a gated post). Each must compile to the family its structure admits and match the float64 reference
recurrence built from the same spec (never stored outputs): forward with and without an initial state at T = 1, 7
and 19, token-by-token step, gradients of the input, the initial state and every parameter, on the torch path and
the Triton path (interpreted on CPU)."""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

from dsf_testing import check_backend, check_new_spec, compile_and_build  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

# q, k, v projections of the multi-head specs below (spec text = header + QKV + the rest)
QKV = """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
"""

# RWKV-7 (Peng et al. 2025): S_t = S_(t-1) (diag(w) - kk^T (kk a)) + v^T k, the state value-first S[h, b, a]
RWKV7 = """
model RWKV7 "RWKV-7-like: diag(w) minus rank-1 kk (a kk), value-first state"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, b: V, a: K]
output y[h: H, b: V]
param W_R[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_w[H, K, d] ~ normal(0, 0.3)
param W_a[H, K, d] ~ normal(0, 0.3)
let r[h: H, a: K] = sum(m, W_R[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let kn[h: H, a: K] = k[h, a] / sqrt(sum(c, k[h, c] ^ 2) + 1e-6)
let w[h: H, a: K] = exp(-0.6065 * sigmoid(sum(m, W_w[h, a, m] * u[m])))
let ia[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) * w[h, a2] - kn[h, a2] * ia[h, a2] * kn[h, a])
B[(h, b, a), m] = W_V[h, b, m] * k[h, a]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * r[h, a]
"""

# GateLoop (Katsch 2023): complex per-key decay mag exp(i theta), written as a data-dependent 2x2 rotation
GATELOOP = """
model GateLoop "GateLoop: complex per-key decay as a 2x2 rotation, outer-product input"
dim d = 4
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, r: 2, b: V]
output y[h: H, b: V]
param W_Q[H, K, 2, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, 2, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_g[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_t[H, K, d] ~ normal(0, 1 / sqrt(d))
let mag[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 2)
let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])
A[(h, a, r, b), (h2, a2, r2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * mag[h, a]
    * (cos(th[h, a]) * delta(r, r2) + sin(th[h, a]) * (r2 - r))
B[(h, a, r, b), m] = sum(m2, W_K[h, a, r, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, r, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, r, m] * u[m])
"""

# Longhorn (Liu et al. 2024): S = (1 - dt k^2) S + dt x k^T with dt = beta / (1 + beta |k|^2)
LONGHORN = """
model Longhorn "Longhorn: online-learning SSM, per-element decay 1 - dt_c k_j^2"
dim d = 5
dim n = 3
input u[d]
state h[c: d, j: n]
output y[d]
param W_k[n, d] ~ normal(0, 1 / sqrt(d))
param W_q[n, d] ~ normal(0, 1 / sqrt(d))
param W_b[d, d] ~ normal(0, 1 / sqrt(d))
let k[j: n] = sum(m, W_k[j, m] * u[m])
let q[j: n] = sum(m, W_q[j, m] * u[m])
let be[c: d] = sigmoid(sum(m, W_b[c, m] * u[m]))
let dt[c: d] = be[c] / (1 + be[c] * sum(j2, k[j2] ^ 2))
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * (1 - dt[c] * k[j] ^ 2)
B[(c, j), m] = delta(c, m) * dt[c] * k[j]
C[o, (c, j)] = delta(o, c) * q[j]
D[o, m] = delta(o, m)
"""

# Hedgehog (Zhang et al. 2024): learned feature map softmax(W q) ++ softmax(-W q), running normaliser
HEDGEHOG = """
model Hedgehog "Hedgehog: learned softmax feature map over 2F features, running normaliser"
dim d = 4
dim H = 2
dim K = 3
dim F = 2
dim V = 3
input u[d]
state S[h: H, f: 2 * F, b: V]
output y[h: H, b: V]
""" + QKV + """param W_f[H, F, K] ~ normal(0, 1)
let qp[h: H, f: F] = sum(a, W_f[h, f, a] * q[h, a])
let kp[h: H, f: F] = sum(a, W_f[h, f, a] * k[h, a])
let qf[h: H, f: 2 * F] = exp((1 - 2 * (f // F)) * qp[h, f % F]) / sum(g: F, exp(qp[h, g]) + exp(-qp[h, g]))
let kf[h: H, f: 2 * F] = exp((1 - 2 * (f // F)) * kp[h, f % F]) / sum(g: F, exp(kp[h, g]) + exp(-kp[h, g]))
let z[h: H, f: 2 * F] = cumsum(kf[h, f])
let eta[h: H] = sum(f, qf[h, f] * z[h, f])
let ep[h: H] = prev(eta[h])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * ep[h] / eta[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m] / eta[h]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[h, f]
"""

# cosFormer (Qin et al. 2022): relu features reweighted by cos / sin(pi i / 2M), i a cumsum of 1
COSFORMER = """
model CosFormer "cosFormer: relu features with cos/sin position reweighting, position from a cumsum of 1"
dim d = 4
dim H = 2
dim K = 2
dim V = 3
dim M = 64
input u[d]
state S[h: H, r: 2, a: K, b: V]
output y[h: H, b: V]
""" + QKV + """let one[z: 1] = 1
let pos[z: 1] = cumsum(one[z])
let cs[r: 2] = cos(3.14159265 * pos[0] / (2 * M)) * (1 - r) + sin(3.14159265 * pos[0] / (2 * M)) * r
A[(h, r, a, b), (h2, r2, a2, b2)] = delta(h, h2) * delta(r, r2) * delta(a, a2) * delta(b, b2)
B[(h, r, a, b), m] = relu(k[h, a]) * cs[r] * W_V[h, b, m]
C[(o, e), (h, r, a, b)] = delta(o, h) * delta(e, b) * relu(q[h, a]) * cs[r]
"""

# PolySketch-like degree-2 polynomial attention (q.k)^2 through explicit k (x) k features: a 4-axis state
POLY2 = """
model Poly2 "degree-2 polynomial attention (q.k)^2 with explicit tensor-product features"
dim d = 4
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, a3: K, b: V]
output y[h: H, b: V]
""" + QKV + """A[(h, a, a3, b), (h2, a2, a4, b2)] = delta(h, h2) * delta(a, a2) * delta(a3, a4) * delta(b, b2)
B[(h, a, a3, b), m] = k[h, a] * k[h, a3] * W_V[h, b, m]
C[(o, e), (h, a, a3, b)] = delta(o, h) * delta(e, b) * q[h, a] * q[h, a3]
"""

# Mamba-2 with ngroups = 2 (heads h // R share B and C) and an odd head dim
SSD_GROUPS = """
model SSDGroups "Mamba-2 SSD with ngroups 2, head dim 3"
dim H = 4
dim P = 3
dim n = 2
dim G = 2
dim R = H // G
input u[h: H, p: P]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[h: H] = log(1 + h)
param W_dt[H, H * P] ~ normal(0, 0.2)
param W_B[G, n, H * P] ~ normal(0, 0.3)
param W_C[G, n, H * P] ~ normal(0, 0.3)
param D[H] = 1
let dt[h: H] = softplus(sum(m: H * P, W_dt[h, m] * u[m // P, m % P]))
let Bm[g: G, j: n] = sum(m: H * P, W_B[g, j, m] * u[m // P, m % P])
let Cm[g: G, j: n] = sum(m: H * P, W_C[g, j, m] * u[m // P, m % P])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[h // R, j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[h // R, j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
"""

# DeltaNet with a value-first state S[h, b, a]: the delta rule's key axis is not the middle one
DELTA_VK = """
model DeltaVK "delta rule with a value-first state S[h, b, a]"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, b: V, a: K]
output y[h: H, b: V]
""" + QKV + """param W_b[H, d] ~ normal(0, 1 / sqrt(d))
let kn[h: H, a: K] = k[h, a] / sqrt(sum(c, k[h, c] ^ 2) + 1e-6)
let be[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - be[h] * kn[h, a] * kn[h, a2])
B[(h, b, a), m] = be[h] * kn[h, a] * W_V[h, b, m]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# a constant, non-diagonal A (a damped shift register): an LTI layer with a dense B and C
SHIFT = """
model Shift "constant non-diagonal A: 0.5 I plus 0.3 shift, input only into channel 0"
dim d = 5
dim N = 4
input u[d]
state h[N]
output y[d]
param Wb[N, d] ~ normal(0, 1)
param Wc[d, N] ~ normal(0, 1)
A[i, k] = 0.5 * delta(i, k) + 0.3 * delta(i, k + 1)
B[i, m] = Wb[i, m]
C[o, i] = Wc[o, i]
"""

# a 3-axis output, C swapping the last state axis (z -> 1 - z), D reading the input nonlinearly
OUT3 = """
model Out3 "output with three axes y[h, p, z], state 3 axes, D over 3 axes"
dim H = 2
dim P = 3
dim Z = 2
dim d = 4
input u[d]
state S[h: H, p: P, z: Z]
output y[h: H, p: P, z: Z]
param W[H, P, Z, d] ~ normal(0, 0.5)
param g[H] ~ normal(0, 1)
A[(h, p, z), (h2, p2, z2)] = delta(h, h2) * delta(p, p2) * delta(z, z2) * sigmoid(g[h] + u[0])
B[(h, p, z), m] = W[h, p, z, m]
C[(h, p, z), (h2, p2, z2)] = delta(h, h2) * delta(p, p2) * delta(z, 1 - z2)
D[(h, p, z), m] = W[h, p, z, m] * u[m]
"""

# S6 read before the update (readout pre) with D = tanh(u)
S6_PRE = """
model S6Pre "S6 read before the update, D = tanh(u) gated"
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n]
output y[d]
readout pre
param A_log[c: d, j: n] = log(j + 1)
param W_dt[d, d] ~ normal(0, 1 / sqrt(d))
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
let dt[c: d] = softplus(sum(k, W_dt[c, k] * u[k]))
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * dt[c] * sum(m, W_B[j, m] * u[m])
C[o, (c, j)] = delta(o, c) * sum(m, W_C[j, m] * u[m])
D[o, k] = delta(o, k) * tanh(u[k])
"""

# GLA with a cos(.)^2 per-key gate: proven in [0, 1] (sin / cos bounds), exactly 0 where the gate's argument is pi/2
COS2_GATE = """
model Cos2Gate "GLA with a cos(.)^2 per-key gate in [0, 1]"
dim d = 3
dim H = 2
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_g[H, K, d] ~ normal(0, 1 / sqrt(d))
let al[h: H, a: K] = cos(sum(m, W_g[h, a, m] * u[m])) ^ 2
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

# a conv-driven GLA read before the update (readout pre), the driven value in B and D, a gated 2-axis post
DRIVE_PRE = """
model DrivePre "conv-driven GLA read before the update, with a 2-axis post"
dim d = 4
dim H = 2
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
readout pre
param cw[d, 3] ~ normal(0, 0.5)
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_g[H, K, d] ~ normal(0, 1 / sqrt(d))
param go[H, V] ~ normal(1, 0.1)
let xs[c: d, w: 3] = window(u[c])
let x[c: d] = silu(sum(w, cw[c, w] * xs[c, w]))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * x[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * x[m])
let al[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 2)
let vv[h: H, b: V] = sum(m, W_V[h, b, m] * x[m])
drive vv
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * k[h, a]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
D[(o, e), (h2, b2)] = delta(o, h2) * delta(e, b2) * 0.5
post g[h: H, b: V] = y[h, b] * go[h, b] * sigmoid(x[(h * V + b) % d])
"""

CASES = {
    "rwkv7": (RWKV7, Family.CHUNKED_DPLR, {'d': 3, 'H': 2, 'K': 2, 'V': 3}),
    "gateloop": (GATELOOP, Family.CHUNKED_OUTER, {'d': 3, 'H': 1, 'K': 3, 'V': 2}),  # rotation in q, k
    "longhorn": (LONGHORN, Family.DIAGONAL_SCAN, {'d': 7, 'n': 1}),
    "hedgehog": (HEDGEHOG, Family.CHUNKED_OUTER, {'d': 5, 'H': 1, 'K': 2, 'F': 3, 'V': 2}),
    "cosformer": (COSFORMER, Family.CHUNKED_OUTER, {'d': 3, 'H': 2, 'K': 3, 'V': 1, 'M': 5}),
    "poly2": (POLY2, Family.CHUNKED_OUTER, {'d': 3, 'H': 1, 'K': 3, 'V': 2}),
    "ssd_groups": (SSD_GROUPS, Family.CHUNKED_OUTER, {'H': 6, 'P': 3, 'n': 1, 'G': 3}),
    "delta_vk": (DELTA_VK, Family.CHUNKED_DELTA, {'d': 3, 'H': 3, 'K': 2, 'V': 1}),
    "shift": (SHIFT, Family.DENSE_SCAN, {'d': 2, 'N': 7}),
    "out3": (OUT3, Family.DIAGONAL_SCAN, {'H': 1, 'P': 5, 'Z': 2, 'd': 3}),
    "s6_pre": (S6_PRE, Family.DIAGONAL_SCAN, {'d': 5, 'n': 3}),
    "cos2_gate": (COS2_GATE, Family.CHUNKED_OUTER, {'d': 3, 'H': 1, 'K': 3, 'V': 2}),
    "drive_pre": (DRIVE_PRE, Family.CHUNKED_OUTER, {'d': 5, 'H': 2, 'K': 1, 'V': 3}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    text, family, dims = CASES[name]
    check_new_spec(text, family, dims, name)
    # and a longer odd T with several sequences, from an initial state (past one chunk of the chunked scans)
    check_backend(compile_and_build(text, dims, path=f"{name}.dsf"), "torch", ((3, 19),), h0s=(True,))
