"""A fourth new-spec hunt: layers the catalog and the earlier hunts do not cover, written as a new user would
(HGRN2 with 1 - f as the key, S6 with the bilinear discretisation, DeltaProduct's two Householder steps, a TTT-like
delta rule with a learned per-head rate, Mamba-3's trapezoidal update through prev(), a gated delta rule read before
the update with a D skip and an output gate, an mLSTM with a scan normaliser, a window of 1 and a norm post, a
2-axis input with a shifted readout, dims given as expressions with a flat output, integer // and % inside values).
Each must compile to the family its structure admits and match the float64 reference recurrence built from the same
spec (never stored outputs): forward with and without an initial state, token-by-token step, gradients of the input,
the initial state and every parameter, on the torch path and the Triton path (interpreted on CPU)."""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

from dsf_testing import HEAD, check_new_spec  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

# HGRN2 (Qin et al. 2024): outer-product state, forget gate f with a learned lower bound, key 1 - f
HGRN2 = """
model HGRN2 "HGRN2: outer-product state, forget gate f, key 1 - f"
dim d = 6
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_F[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param lb[H, K] ~ uniform(0, 0.5)
let q[h: H, a: K] = silu(sum(m, W_Q[h, a, m] * u[m]))
let f[h: H, a: K] = lb[h, a] + (1 - lb[h, a]) * sigmoid(sum(m, W_F[h, a, m] * u[m]))
let v[h: H, b: V] = sum(m, W_V[h, b, m] * u[m])
drive v
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * f[h, a]
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * (1 - f[h, a])
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# S6 with the bilinear (Tustin) discretisation instead of ZOH
S6_BILINEAR = """
model S6Bilinear "S6 with bilinear (Tustin) discretisation"
dim d = 5
dim n = 3
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_dt[d, d] ~ normal(0, 1 / sqrt(d))
param b_dt[d] ~ dt_bias(0.001, 0.1)
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
let dt[c: d] = softplus(sum(k, W_dt[c, k] * u[k]) + b_dt[c])
let a[c: d, j: n] = -exp(A_log[c, j])
let b[j: n] = sum(k, W_B[j, k] * u[k])
let cq[j: n] = sum(k, W_C[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * (1 + dt[c] * a[c, j] / 2) / (1 - dt[c] * a[c, j] / 2)
B[(c, j), k] = delta(c, k) * dt[c] * b[j] / (1 - dt[c] * a[c, j] / 2)
C[o, (c, j)] = delta(o, c) * cq[j]
"""

# DeltaProduct with two Householder-like steps per token: A a product of two identity-minus-rank-1 factors
DELTA_PRODUCT = """
model DeltaProduct "two Householder-like steps per token: A = (I - b1 k1 k1^T)(I - b2 k2 k2^T)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K1[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K2[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V1[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_V2[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, 2, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k1r[h: H, a: K] = sum(m, W_K1[h, a, m] * u[m])
let k2r[h: H, a: K] = sum(m, W_K2[h, a, m] * u[m])
let k1[h: H, a: K] = k1r[h, a] / sqrt(sum(c, k1r[h, c] ^ 2) + 1e-6)
let k2[h: H, a: K] = k2r[h, a] / sqrt(sum(c, k2r[h, c] ^ 2) + 1e-6)
let be[h: H, i: 2] = 2 * sigmoid(sum(m, W_b[h, i, m] * u[m]))
let v1[h: H, b: V] = sum(m, W_V1[h, b, m] * u[m])
let v2[h: H, b: V] = sum(m, W_V2[h, b, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2)
    * sum(c, (delta(a, c) - be[h, 1] * k2[h, a] * k2[h, c]) * (delta(c, a2) - be[h, 0] * k1[h, c] * k1[h, a2]))
B[(h, a, b), m] = (be[h, 0] * (k1[h, a] - be[h, 1] * k2[h, a] * sum(c, k2[h, c] * k1[h, c])) * W_V1[h, b, m]
    + be[h, 1] * k2[h, a] * W_V2[h, b, m])
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# a TTT-linear-like delta rule with a learned per-head learning rate
TTT_LINEAR = """
model TTTLinear "TTT-linear-like delta rule with a learned per-head lr"
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param lr_log[h: H] = -1 - h
param w_lr[H, d] ~ normal(0, 0.1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(c, kr[h, c] ^ 2) + 1e-6)
let eta[h: H] = exp(lr_log[h]) * sigmoid(sum(m, w_lr[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - eta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = eta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# Mamba-3's trapezoidal update: the previous step's B x through prev(), driven
MAMBA3_TRAP = """
model Mamba3Trap "Mamba-3-style trapezoidal update: h_t = a h + dt (lam B_t x_t + (1 - lam) a B_(t-1) x_(t-1))"
dim d = 4
dim H = 2
dim P = 2
dim n = 3
input u[d]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param W_x[H, P, d] ~ normal(0, 1 / sqrt(d))
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param W_dt[H, d] ~ normal(0, 1 / sqrt(d))
param dt_b[H] ~ dt_bias(0.001, 0.1)
param W_l[H, d] ~ normal(0, 1 / sqrt(d))
param A_log[h: H] = log(1 + h)
let x[h: H, p: P] = sum(m, W_x[h, p, m] * u[m])
let Bm[j: n] = sum(m, W_B[j, m] * u[m])
let Cm[j: n] = sum(m, W_C[j, m] * u[m])
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]) + dt_b[h])
let lam[h: H] = sigmoid(sum(m, W_l[h, m] * u[m]))
let al[h: H] = exp(-dt[h] * exp(A_log[h]))
let bx[h: H, p: P, j: n] = Bm[j] * x[h, p]
let bx_prev[h: H, p: P, j: n] = prev(bx[h, p, j])
let xi[h: H, p: P, j: n] = dt[h] * (lam[h] * bx[h, p, j] + (1 - lam[h]) * al[h] * bx_prev[h, p, j])
drive xi
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * al[h]
B[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2)
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[j]
"""

# a gated delta rule read before the update, with an output gate in C and D
DELTA_PRE = """
model DeltaPre "gated delta rule read before the update (readout pre), D skip, per-value output gate"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, d] ~ normal(0, 1 / sqrt(d))
param W_z[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(c, kr[h, c] ^ 2) + 1e-6)
let be[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
let al[h: H] = exp(-softplus(sum(m, W_a[h, m] * u[m])))
let z[h: H, b: V] = silu(sum(m, W_z[h, b, m] * u[m]))
readout pre
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * al[h] * (delta(a, a2) - be[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = be[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * z[o, e] * q[h, a]
D[(o, e), m] = z[o, e] * W_V[o, e, m]
"""

# mLSTM: scan normaliser, max(|n.q|, 1), a window of 1, a scalar param in D, an RMS-norm post
MLSTM_NORM = """
model MLSTMNorm "mLSTM with scan normaliser, max(|n.q|, 1) denominator, group RMS norm post, W=1 conv"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param w_i[H, d] ~ normal(0, 0.1)
param w_f[H, d] ~ normal(0, 0.1)
param cw[d, 1] ~ normal(1, 0.1)
param gn[h: H, b: V] = 1
param s
let xs[c: d, w: 1] = window(u[c])
let x[c: d] = silu(cw[c, 0] * xs[c, 0])
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * x[m]) / sqrt(K)
let k[h: H, a: K] = sum(m, W_K[h, a, m] * x[m])
let ig[h: H] = exp(sum(m, w_i[h, m] * u[m]))
let fg[h: H] = sigmoid(sum(m, w_f[h, m] * u[m]) + 3)
let n[h: H, a: K] = scan(fg[h], ig[h] * k[h, a])
let den[h: H] = max(abs(sum(a, n[h, a] * q[h, a])), 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * fg[h]
B[(h, a, b), m] = ig[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / den[h]
D[(o, e), m] = s * delta(o * V + e, m)
post ms[h: H] = sum(b, y[h, b] ^ 2) / V
post out[h: H, b: V] = gn[h, b] * y[h, b] / sqrt(ms[h] + 1e-5)
"""

# a 2-axis input, a state axis of extent 1, an output wider than the state (shifted readout)
MULTI_INPUT = """
model MultiIn "a 2-axis input u[g, c], per-group diagonal decay, shifted readout, state axis of extent 1"
dim G = 2
dim d = 3
dim one = 1
input u[g: G, c: d]
state h[g: G, c: d, z: one]
output y[o: G, e: d + 1]
param W[G, d] ~ normal(0, 1)
let a[g: G, c: d] = sigmoid(W[g, c] * u[g, c])
A[(g, c, z), (g2, c2, z2)] = delta(g, g2) * delta(c, c2) * delta(z, z2) * a[g, c]
B[(g, c, z), (g2, k)] = delta(g, g2) * delta(c, k)
C[(o, e), (g, c, z)] = delta(o, g) * delta(e, c + 1)
D[(o, e), (g, k)] = delta(o, g) * delta(e, 0) * u[g, 0]
"""

# SSD with derived dims P = 2 n + 1 and E = H * P, a flat output read through h * P + p, a dense D
DIM_EXPRESSIONS = """
model Primes "SSD with dims as expressions: P = 2 n + 1, E = H * P, no model-width match"
dim d = 7
dim H = 3
dim n = 2
dim P = 2 * n + 1
dim E = H * P
input u[d]
state S[h: H, p: P, j: n]
output y[o: E]
param W_x[E, d] ~ normal(0, 1 / sqrt(d))
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param W_dt[H, d] ~ normal(0, 1 / sqrt(d))
param A_log[h: H] = log(1 + h)
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]))
let Bm[j: n] = sum(m, W_B[j, m] * u[m])
let Cm[j: n] = sum(m, W_C[j, m] * u[m])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), m] = dt[h] * Bm[j] * W_x[h * P + p, m]
C[o, (h, p, j)] = delta(o, h * P + p) * Cm[j]
D[o, m] = W_x[o, m] * 0.1
"""

# integer // and % of indices inside values (a real operand is an error), abs, min, max, pow, gelu, elu
INTEGER_OPS = """
model Ops2 "odd operators: integer // and % in values, abs, min, max, pow, gelu, elu, sin, cos"
dim d = 5
input u[d]
state h[c: d]
param P[d] ~ normal(0, 1)
let z[c: d] = 3 * u[c]
A[i, k] = delta(i, k) * sigmoid(u[i]) ^ (1 + abs(u[k]))
B[i, k] = delta(i, k) * (z[i] * (i // 2) + (k % 3) + min(P[i], u[k]) + pow(abs(u[k]), 0.5) + gelu(u[k]) + elu(u[i]))
C[i, k] = delta(i, k) * max(cos(u[i]), sin(P[k])) + (i - k) * 0.1
"""

CASES = {
    "hgrn2": (HGRN2, Family.CHUNKED_OUTER, {'d': 3, 'H': 3, 'K': 2, 'V': 5}),
    "s6_bilinear": (S6_BILINEAR, Family.DIAGONAL_SCAN, {'d': 3, 'n': 5}),
    "deltaproduct": (DELTA_PRODUCT, Family.DENSE_SCAN, {'d': 3, 'H': 1, 'K': 3, 'V': 2}),
    "ttt": (TTT_LINEAR, Family.CHUNKED_DELTA, {'d': 5, 'H': 3, 'K': 2, 'V': 3}),
    "mamba3": (MAMBA3_TRAP, Family.DIAGONAL_SCAN, {'d': 3, 'H': 1, 'P': 3, 'n': 2}),
    "delta_pre": (DELTA_PRE, Family.CHUNKED_DELTA, {'d': 3, 'H': 2, 'K': 3, 'V': 1}),
    "mlstm_norm": (MLSTM_NORM, Family.CHUNKED_OUTER, {'d': 7, 'H': 3, 'K': 1, 'V': 2}),
    "multin": (MULTI_INPUT, Family.DIAGONAL_SCAN, {'G': 3, 'd': 2, 'one': 1}),
    "primes": (DIM_EXPRESSIONS, Family.CHUNKED_OUTER, {'d': 5, 'H': 2, 'n': 3}),
    "ops2": (INTEGER_OPS, Family.DIAGONAL_SCAN, {'d': 7}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    text, family, dims = CASES[name]
    check_new_spec(text, family, dims, name)
