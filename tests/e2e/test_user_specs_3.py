"""A third new-spec hunt: layers the catalog does not cover, written as a new user would (S5, H3's shift and diagonal
SSMs, Longhorn, GateLoop, Mamba-2 with a short conv, RetNet with per-key decays, a per-key gated delta rule, RWKV-7's
diag(w) - a b^T, linear attention with elu + 1 and relu features, odd but legal constructs, learned / value-axis /
two-gate / often-zero decays, multi-axis keys, values and groups, Mamba-2's conv over xBC with a gate and a post).
Each must compile to the family its structure admits and match the float64 reference recurrence built from the same
spec (never stored outputs): forward with and without an initial state, token-by-token step, gradients of the input,
the initial state and every parameter, on the torch path and, where the spec has a Triton kernel, the Triton path
(interpreted on CPU)."""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

from dsf_testing import HEAD, check_new_spec  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too (S5's (ab - 1) / lam on padding): numpy warns, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

# S5 with a real diagonal: one MIMO state shared by all channels, ZOH discretisation, time-invariant
S5REAL = """
model S5Real "S5: shared real-diagonal MIMO SSM, ZOH"
dim d = 6
dim N = 5
input u[d]
state h[j: N]
output y[d]
param lam_log[j: N] = log(0.5 + j)
param log_step[N] ~ uniform(log(0.001), log(0.1))
param Bp[N, d] ~ normal(0, 1 / sqrt(d))
param Cp[d, N] ~ normal(0, 1 / sqrt(N))
param Dp[d] ~ normal(0, 1)
let lam[j: N] = -exp(lam_log[j])
let ab[j: N] = exp(lam[j] * exp(log_step[j]))
A[j, j2] = delta(j, j2) * ab[j]
B[j, m] = (ab[j] - 1) / lam[j] * Bp[j, m]
C[o, j] = Cp[o, j]
D[o, m] = delta(o, m) * Dp[m]
"""

# H3's shift SSM: a per-channel shift register (nilpotent A), C a learned causal filter over the last W inputs
SHIFT_SSM = """
model ShiftSSM "H3 shift SSM"
dim d = 4
dim W = 4
input u[d]
state h[c: d, w: W]
output y[d]
param Kf[d, W] ~ normal(0, 0.5)
A[(c, w), (c2, w2)] = delta(c, c2) * delta(w, w2 + 1)
B[(c, w), m] = delta(c, m) * delta(w, 0)
C[o, (c, w)] = delta(o, c) * Kf[c, w]
"""

# H3 (Fu et al. 2023), one head per channel: y = q * diagSSM(shiftSSM(k) * v); the shift SSM is a causal conv of k
H3 = """
model H3 "H3: shift-conv of k, times v, diagonal SSM, times q"
dim d = 6
dim n = 3
dim W = 3
input u[d]
state h[c: d, j: n]
output y[d]
param W_Q[d, d] ~ normal(0, 1 / sqrt(d))
param W_K[d, d] ~ normal(0, 1 / sqrt(d))
param W_V[d, d] ~ normal(0, 1 / sqrt(d))
param Ksh[d, W] ~ normal(0, 0.5)
param A_log[c: d, j: n] = log(0.5 + j)
param Bd[d, n] ~ normal(0, 1)
param Cd[d, n] ~ normal(0, 1)
param Dd[d] = 1
let k[c: d] = sum(m, W_K[c, m] * u[m])
let ks[c: d, w: W] = window(k[c])
let kc[c: d] = sum(w, Ksh[c, w] * ks[c, w])
let q[c: d] = sum(m, W_Q[c, m] * u[m])
let x[c: d] = kc[c] * sum(m, W_V[c, m] * u[m])
drive x
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-exp(A_log[c, j]))
B[(c, j), m] = delta(c, m) * Bd[c, j]
C[o, (c, j)] = delta(o, c) * q[o] * Cd[c, j]
D[o, m] = delta(o, m) * q[o] * Dd[m]
"""

# Longhorn (Liu et al. 2024): online-learning SSM, S_t = (1 - eps k^2) * S_(t-1) + (eps x) k^T per value channel i,
# key j, with eps_i = beta_i / (1 + beta_i k.k)
LONGHORN = """
model Longhorn "Longhorn: diagonal A = 1 - eps[i] k[j]^2, input eps x k"
dim d = 5
dim n = 3
input u[d]
state h[i: d, j: n]
output y[d]
param W_K[n, d] ~ normal(0, 1 / sqrt(d))
param W_Q[n, d] ~ normal(0, 1 / sqrt(d))
param W_b[d, d] ~ normal(0, 1 / sqrt(d))
let k[j: n] = sum(m, W_K[j, m] * u[m])
let q[j: n] = sum(m, W_Q[j, m] * u[m])
let beta[i: d] = sigmoid(sum(m, W_b[i, m] * u[m]))
let kk = sum(j, k[j] ^ 2)
let eps[i: d] = beta[i] / (1 + beta[i] * kk)
A[(i, j), (i2, j2)] = delta(i, i2) * delta(j, j2) * (1 - eps[i] * k[j] ^ 2)
B[(i, j), m] = delta(i, m) * eps[i] * k[j]
C[o, (i, j)] = delta(o, i) * q[j]
"""

# GateLoop (Katsch 2023) with complex per-key gates as real 2x2 blocks: a_t = sigmoid(.) e^(i theta_t)
GATELOOP = """
model GateLoop "GateLoop: data-controlled complex per-key transition, k v^T input"
dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, s: 2, b: V]
output y[h: H, b: V]
param W_Q[H, K, 2, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, 2, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_m[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_t[H, K, d] ~ normal(0, 1 / sqrt(d))
let r[h: H, a: K] = sigmoid(sum(m, W_m[h, a, m] * u[m]))
let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])
let q[h: H, a: K, s: 2] = sum(m, W_Q[h, a, s, m] * u[m])
let k[h: H, a: K, s: 2] = sum(m, W_K[h, a, s, m] * u[m])
A[(h, a, s, b), (h2, a2, s2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * r[h, a]
    * (delta(s, s2) * cos(th[h, a]) + (s - s2) * sin(th[h, a]))
B[(h, a, s, b), m] = k[h, a, s] * W_V[h, b, m]
C[(o, e), (h, a, s, b)] = delta(o, h) * delta(e, b) * q[h, a, s]
"""

# Mamba-2 with ngroups = 1, a D skip and a short causal conv on x (not on B, C), in-projection from d
MAMBA2_CONV = """
model Mamba2Conv "Mamba-2 SSD, G = 1, short conv + SiLU on x, D skip"
dim d = 6
dim H = 3
dim P = 2
dim E = H * P
dim n = 3
dim W = 3
input u[d]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param W_x[E, d] ~ normal(0, 1 / sqrt(d))
param W_conv[E, W] ~ normal(0, 1 / sqrt(W))
param b_conv[E] ~ zeros()
param W_dt[H, d] ~ normal(0, 1 / sqrt(d))
param dt_b[H] ~ dt_bias(0.001, 0.1)
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param A_log[h: H] = log(1 + h)
param Dp[H] = 1
let xr[e: E] = sum(m, W_x[e, m] * u[m])
let xs[e: E, w: W] = window(xr[e])
let x[h: H, p: P] = silu(sum(w, W_conv[h * P + p, w] * xs[h * P + p, w]) + b_conv[h * P + p])
drive x
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]) + dt_b[h])
let Bm[j: n] = sum(m, W_B[j, m] * u[m])
let Cm[j: n] = sum(m, W_C[j, m] * u[m])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * Dp[h]
"""

# RetNet with xpos-like per-key decays: gamma[h, a] = (1 - 2^(-5 - h)) * zeta_a, time-invariant, per key
RETNET_XPOS = """
model RetNetXpos "RetNet, per-key fixed decays"
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
let gam[h: H, a: K] = (1 - 2 ^ (-5 - h)) * (a + 0.4 * K) / (1.4 * K)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gam[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

# Gated DeltaNet with a per-key decay (Kimi Delta Attention): S_t = diag(alpha_t) (I - beta k k^T) S_(t-1) + beta k v^T
KDA = """
model KDA "per-key gated delta rule"
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_beta[H, d] ~ normal(0, 1 / sqrt(d))
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let alpha[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
let beta[h: H] = sigmoid(sum(m, W_beta[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * alpha[h, a] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = alpha[h, a] * beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# RWKV-7 generalised delta rule: S_t = (diag(w) - kh (a * kh)^T) S_(t-1) + k v^T, different left/right vectors
RWKV7 = """
model RWKV7 "RWKV-7-style A = diag(w) - z b^T"
""" + HEAD + """param W_R[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_w[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_aa[H, K, d] ~ normal(0, 1 / sqrt(d))
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let kh[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let ia[h: H, a: K] = sigmoid(sum(m, W_aa[h, a, m] * u[m]))
let w[h: H, a: K] = exp(-0.606531 * sigmoid(sum(m, W_w[h, a, m] * u[m])))
let r[h: H, a: K] = sum(m, W_R[h, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) * w[h, a] - kh[h, a] * ia[h, a2] * kh[h, a2])
B[(h, a, b), m] = kr[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * r[h, a]
"""

# linear attention with the elu + 1 feature map (Katharopoulos et al. 2020), unnormalised
LA_ELU = """
model LAElu "linear attention, elu+1 features"
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = elu(sum(m, W_Q[h, a, m] * u[m])) + 1
let k[h: H, a: K] = elu(sum(m, W_K[h, a, m] * u[m])) + 1
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# linear attention with the elu + 1 feature map (Katharopoulos et al. 2020), unnormalised
LA_RELU = """
model LARelu "linear attention, relu features"
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = relu(sum(m, W_Q[h, a, m] * u[m]))
let k[h: H, a: K] = relu(sum(m, W_K[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# unusual but legal: a dim used only inside params, a param shared by A and B, C reading the input, scalar params,
# integer powers, nested lets, derived dims built on derived dims
UNUSUAL = """
model Unusual "odd constructs"
dim d = 6
dim H = 2
dim K = d // H
dim K2 = 2 * K - 1
dim r = 4                       # only used by params
input u[d]
state h[g: H, a: K2]
output y[d]
param P[r, d] ~ normal(0, 0.5)
param Q[K2, r] ~ normal(0, 0.5)
param tau = 0.7                 # scalar
param bias ~ zeros()            # scalar, no axes
param lam[H, K2] ~ uniform(-1, 1)
let z[q: r] = sum(m, P[q, m] * u[m])
let zz[a: K2] = sum(q, Q[a, q] * z[q]) ^ 2 + bias
let gate[g: H, a: K2] = sigmoid(lam[g, a] + tau * zz[a])
let gate2[g: H, a: K2] = gate[g, a] ^ 3
A[(g, a), (g2, a2)] = delta(g, g2) * delta(a, a2) * gate2[g, a]
B[(g, a), m] = (1 - gate2[g, a]) * lam[g, a] * delta(m, g * K + a % K)
C[o, (g, a)] = delta(o // K, g) * u[o] ^ 2 * tau / (1 + a)
D[o, m] = delta(o, m) * tau ^ 2
"""

# a learned, time-invariant per-key decay used directly (not provably positive: the signed log path), plus a value
# gate in C; a pre-update readout with a D bonus (RWKV-4/5 style with fixed per-key decays)
LEARNED_DECAY = """
model LearnedDecay "per-key learned decay, pre-update readout, bonus"
""" + HEAD + """param W_R[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param g[H, K] ~ uniform(-0.95, 0.95)
param bonus[H, K] ~ normal(0, 1)
let r[h: H, a: K] = sum(m, W_R[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
readout pre
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * r[h, a]
D[(o, e), m] = sum(a, r[o, a] * bonus[o, a] * k[o, a]) * W_V[o, e, m]
"""

# a decay per value channel (not per key): not the chunked outer form's per-key decay
VALUE_DECAY = """
model ValueDecay "decay along the value axis"
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_g[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let g[h: H, b: V] = sigmoid(sum(m, W_g[h, b, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h, b]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# decay = key gate x value gate (GLA with both gates, the outer product of two gates)
BOTH_DECAY = """
model BothDecay "decay alpha[a] * beta[b]"
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let al[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
let be[h: H, b: V] = sigmoid(sum(m, W_b[h, b, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a] * be[h, b]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

# two key axes (a, s), two value axes (b, e), two group axes (h, g); per-key decay on the key axis a only
MULTIAXIS = """
model MultiAxis "multi-axis keys, values and groups"
dim d = 5
dim H = 2
dim G = 2
dim K = 2
dim S = 2
dim V = 2
dim E = 3
input u[d]
state M[h: H, g: G, a: K, s: S, b: V, e: E]
output y[h: H, g: G, b: V, e: E]
param W_Q[H, G, K, S, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, G, K, S, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, G, V, E, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, K, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, g: G, a: K, s: S] = sum(m, W_Q[h, g, a, s, m] * u[m])
let k[h: H, g: G, a: K, s: S] = sum(m, W_K[h, g, a, s, m] * u[m])
let v[h: H, g: G, b: V, e: E] = sum(m, W_V[h, g, b, e, m] * u[m])
let al[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
drive v
A[(h, g, a, s, b, e), (h2, g2, a2, s2, b2, e2)] = delta(h, h2) * delta(g, g2) * delta(a, a2) * delta(s, s2)
    * delta(b, b2) * delta(e, e2) * al[h, a]
B[(h, g, a, s, b, e), (h2, g2, b2, e2)] = delta(h, h2) * delta(g, g2) * delta(b, b2) * delta(e, e2) * k[h, g, a, s]
C[(o1, o2, o3, o4), (h, g, a, s, b, e)] = delta(o1, h) * delta(o2, g) * delta(o3, b) * delta(o4, e) * q[h, g, a, s]
"""

# Mamba-2 as mamba-ssm runs it: one short causal conv + SiLU over x, B and C together (xBC), G = 1, D skip,
# silu(z) output gate folded into C and D, out-projection as a post (the gate in C is applied after the chunked
# outer-product scan: OuterSplit.gate)
MAMBA2_XBC = """
model Mamba2XBC "Mamba-2 block: conv over xBC, SSD core, D skip, gate, out-projection"
dim d = 5
dim H = 3
dim P = 2
dim E = H * P
dim n = 3
dim W = 3
input u[d]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param W_x[E, d] ~ normal(0, 1 / sqrt(d))
param W_z[E, d] ~ normal(0, 1 / sqrt(d))
param W_Bp[n, d] ~ normal(0, 1 / sqrt(d))
param W_Cp[n, d] ~ normal(0, 1 / sqrt(d))
param cx[E, W] ~ normal(0, 1 / sqrt(W))
param cB[n, W] ~ normal(0, 1 / sqrt(W))
param cC[n, W] ~ normal(0, 1 / sqrt(W))
param W_dt[H, d] ~ normal(0, 1 / sqrt(d))
param dt_b[H] ~ dt_bias(0.001, 0.1)
param A_log[h: H] = log(1 + h)
param Dp[H] = 1
param W_out[d, E] ~ normal(0, 1 / sqrt(E))
let xr[e: E] = sum(m, W_x[e, m] * u[m])
let br[j: n] = sum(m, W_Bp[j, m] * u[m])
let cr[j: n] = sum(m, W_Cp[j, m] * u[m])
let xs[e: E, w: W] = window(xr[e])
let bs[j: n, w: W] = window(br[j])
let cs[j: n, w: W] = window(cr[j])
let x[h: H, p: P] = silu(sum(w, cx[h * P + p, w] * xs[h * P + p, w]))
let Bm[j: n] = silu(sum(w, cB[j, w] * bs[j, w]))
let Cm[j: n] = silu(sum(w, cC[j, w] * cs[j, w]))
let z[h: H, p: P] = silu(sum(m, W_z[h * P + p, m] * u[m]))
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]) + dt_b[h])
drive x
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * z[o, e] * Cm[j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * z[o, e] * Dp[h]
post out[o: d] = sum(c, W_out[o, c] * y[c // P, c % P])
"""

# a decay that is exactly 0 on about half the steps (relu of a gate): log(0) in the log-space scans
RELU_DECAY_KEY = """
model ReluDecayKey
""" + HEAD + """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_a[H, K, d] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let al[h: H, a: K] = relu(tanh(sum(m, W_a[h, a, m] * u[m])))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

CASES = {
    "s5real": (S5REAL, Family.DIAGONAL_SCAN, {'d': 5, 'N': 3}),
    "shift_ssm": (SHIFT_SSM, Family.DENSE_SCAN, {'d': 3, 'W': 5}),
    "h3": (H3, Family.DIAGONAL_SCAN, {'d': 5, 'n': 3, 'W': 3}),
    "longhorn": (LONGHORN, Family.DIAGONAL_SCAN, {'d': 3, 'n': 5}),
    "gateloop": (GATELOOP, Family.CHUNKED_OUTER, {'d': 3, 'H': 3, 'K': 1, 'V': 5}),  # rotation in q, k
    "mamba2_conv": (MAMBA2_CONV, Family.CHUNKED_OUTER, {'d': 7, 'H': 3, 'P': 3, 'n': 5, 'W': 2}),
    "retnet_xpos": (RETNET_XPOS, Family.CHUNKED_OUTER, {'d': 3, 'H': 3, 'K': 3, 'V': 1}),
    "kda": (KDA, Family.CHUNKED_DPLR, {'d': 3, 'H': 1, 'K': 5, 'V': 3}),
    "rwkv7": (RWKV7, Family.CHUNKED_DPLR, {'d': 5, 'H': 3, 'K': 3, 'V': 1}),
    "la_elu": (LA_ELU, Family.CHUNKED_OUTER, {'d': 7, 'H': 1, 'K': 5, 'V': 3}),
    "la_relu": (LA_RELU, Family.CHUNKED_OUTER, {'d': 3, 'H': 3, 'K': 3, 'V': 5}),
    "unusual": (UNUSUAL, Family.DIAGONAL_SCAN, {'d': 15, 'H': 5, 'r': 3}),
    "learned_decay": (LEARNED_DECAY, Family.CHUNKED_OUTER, {'d': 3, 'H': 1, 'K': 5, 'V': 3}),
    "value_decay": (VALUE_DECAY, Family.DIAGONAL_SCAN, {'d': 5, 'H': 3, 'K': 1, 'V': 5}),
    "both_decay": (BOTH_DECAY, Family.DIAGONAL_SCAN, {'d': 3, 'H': 1, 'K': 3, 'V': 5}),
    "multiaxis": (MULTIAXIS, Family.CHUNKED_OUTER, {'d': 3, 'H': 1, 'G': 2, 'K': 2, 'S': 1, 'V': 3, 'E': 1}),
    "mamba2_xbc": (MAMBA2_XBC, Family.CHUNKED_OUTER, {'d': 3, 'H': 3, 'P': 1, 'n': 3, 'W': 2}),
    "relu_decay_key": (RELU_DECAY_KEY, Family.CHUNKED_OUTER, {'d': 3, 'H': 1, 'K': 3, 'V': 2}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    text, family, dims = CASES[name]
    check_new_spec(text, family, dims, name)
