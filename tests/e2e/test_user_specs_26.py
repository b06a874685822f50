"""A twenty-sixth spec hunt: catalog layers rewritten the way other codebases write them (fla, mamba-ssm,
recurrentgemma, xLSTM, RetNet), at tiny dims; none repeats a rewrite of tests/e2e/test_equivalent_rewrites.py.

Rewrites: GLA's decay through a log-space let chain (``lg = -softplus(-gk) / 16``, ``alpha = exp(lg)``, fla's
``logsigmoid(gk) / normalizer``) with the scale ``K ^ (-0.5)``; GLA with the state [V, K] (transposed) and the decay
``sigmoid(gk) ^ (1 / 16)``; GLA with every subscript order swapped (params stored [d, K, H], state [K, V, H], output [V,
H], deltas and factors reversed); GLA with A written through a flattened delta ``delta(h * K + a, h2 * K + a2)`` read at
the primed key, key-major (``delta(a * H + h, a2 * H + h2)``) and over the whole state (``delta(h * K * V + a * V + b,
..)``, B's key read through a summed flat delta); GLA with values shared by groups of heads (GQA-style grouped values,
``W_V[h // R, b, m]``); retention with one gate shared by all heads; retention with multi-value heads (M value heads per
key head, state [H, K, M, V]) and gamma written ``1 - 1 / 2 ^ (5 + h)``; RetNet's gamma as ``1 - exp((-5 - h) log 2)``
and the scale ``K ^ (-1 / 2)``, and as ``1 - exp2(log2(1 / 32) - h)``; Gated DeltaNet with ``A = -exp(A_log)`` its own
let and ``dt`` clamped with min / max (mamba-ssm's ``dt_limit``), the decay ``exp(A dt / 16)``; Gated DeltaNet with beta
folded into the key (``kb = sqrt(beta) k``, ``A = alpha (I - kb kb^T)``, ``B = sqrt(beta) kb v^T``); SSD with dt clamped
and ``A = -exp(A_log)`` as a let; S6 with its diagonal written as a flattened delta ``delta(c * n + j, c2 * n + j2)``;
mLSTM with its normaliser ``max(|n^T q|, 1)`` as a post instead of folded into C.

Checked: each rewrite's family equals the catalog layer's (the catalog spec compiled at its own dims); forward at
T = 0, 1, 7, 9, batch 1 and 3, from zero and from an initial state, and token-by-token step against an independent
float64 loop written here from the model's equations (not dsfc's reference), on the torch path, and on the Triton
path (interpreted) for three of them; dsfc's reference against the same loops.

Found and fixed: A written through a flattened delta (``delta(h * K + a, h2 * K + a2) * delta(b, b2)``, the way a
codebase that indexes a flat state writes its diagonal) was analysed as a dense A: GLA ran the dense scan (family
"dense", bound "unknown"; its key-major and whole-state flattenings too) and S6 the dense scan instead of the diagonal
one (right numbers, a worse performance class). The canonical pass (ir/canonical.py) now splits such a delta into
``delta(h, h2) * delta(a, a2)`` where the low part provably lies in (-K, K) (``split_flat_deltas`` in
analysis/index_algebra.py; refused otherwise: a low index over another dim, a stride 2).

Found and fixed: ``exp2`` and ``log2`` (RetNet's gamma as ``1 - exp2(log2(1 / 32) - h)``, as Triton kernels and fla
write base-2 decays) were "unknown function"; they are now functions, ``2 ^ x`` and ``log(x) / log(2)``.

Found and fixed (a later session, ``tests/e2e/test_flat_state.py``): GLA with its state declared as one flat axis
(``state S[i: H * K * V]``, A, B and C reading i through ``//`` and ``%``) ran the elementwise diagonal scan, right
numbers; the flat state axis is now split into virtual axes (``unflatten_state`` in ir/unflatten.py) and it runs the
chunked outer-product scan, its initial and final states still ``[batch, H * K * V]``.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402
import sympy as sp  # noqa: E402
import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, case_builds,  # noqa: E402
                         check_forward_against_loop, matvec, stack_steps)
from dsfc.analysis.index_algebra import split_flat_deltas  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS
SPECS = pathlib.Path(__file__).resolve().parents[2] / "specs"
sig, softplus = torch.sigmoid, torch.nn.functional.softplus

GLA_HEAD = """
dim d = 7
dim H = 2
dim K = 3
dim V = 4
dim R = 2
input u[d]
param W_g1[R, d] ~ normal(0, 0.5)
"""
GLA_PARAMS = """
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_g2[H, K, R] ~ normal(0, 0.5)
param b_g[H, K] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let gr[r: R] = sum(m, W_g1[r, m] * u[m])
let gk[h: H, a: K] = sum(r, W_g2[h, a, r] * gr[r]) + b_g[h, a]
"""
GLA_LOGSPACE = "model GLALog \"GLA, the decay through a log-space let chain\"" + GLA_HEAD + GLA_PARAMS + """
state S[h: H, a: K, b: V]
output y[h: H, b: V]
let lg[h: H, a: K] = -softplus(-gk[h, a]) / 16
let alpha[h: H, a: K] = exp(lg[h, a])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * alpha[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] * K ^ (-0.5)
"""
GLA_VK = "model GLAVK \"GLA, the state [V, K]\"" + GLA_HEAD + GLA_PARAMS + """
state S[h: H, b: V, a: K]
output y[h: H, b: V]
let alpha[h: H, a: K] = sigmoid(gk[h, a]) ^ (1 / 16)
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * delta(a, a2) * alpha[h, a]
B[(h, b, a), m] = W_V[h, b, m] * k[h, a]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""
GLA_FLAT = "model GLAFlat \"GLA, A through a flattened delta\"" + GLA_HEAD + GLA_PARAMS + """
state S[h: H, a: K, b: V]
output y[h: H, b: V]
let alpha[h: H, a: K] = exp(logsigmoid(gk[h, a]) / 16)
A[(h, a, b), (h2, a2, b2)] = delta(h * K + a, h2 * K + a2) * delta(b, b2) * alpha[h2, a2]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""
# key-major flattening (a * H + h), and the whole state flattened in A with B's key read through a summed flat delta
GLA_KEY_MAJOR = (GLA_FLAT.replace("GLAFlat", "GLAKeyMajor")
                 .replace("delta(h * K + a, h2 * K + a2) * delta(b, b2) * alpha[h2, a2]",
                          "delta(a * H + h, a2 * H + h2) * delta(b, b2) * alpha[h, a]"))
GLA_FLAT3 = (GLA_FLAT.replace("GLAFlat", "GLAFlat3")
             .replace("delta(h * K + a, h2 * K + a2) * delta(b, b2) * alpha[h2, a2]",
                      "delta(h * K * V + a * V + b, h2 * K * V + a2 * V + b2) * alpha[h, a]")
             .replace("B[(h, a, b), m] = k[h, a] * W_V[h, b, m]",
                      "B[(h, a, b), m] = sum(i: K, k[h, i] * delta(h * K + i, h * K + a)) * W_V[h, b, m]"))
GLA_SWAPPED = "model GLASwap \"GLA, every subscript order swapped\"" + GLA_HEAD + """
state S[a: K, b: V, h: H]
output y[b: V, h: H]
param W_Q[d, K, H] ~ normal(0, 0.5)
param W_K[d, K, H] ~ normal(0, 0.5)
param W_V[d, V, H] ~ normal(0, 0.5)
param W_g2[R, K, H] ~ normal(0, 0.5)
param b_g[K, H] ~ normal(0, 0.5)
let q[a: K, h: H] = sum(m, u[m] * W_Q[m, a, h])
let k[a: K, h: H] = sum(m, u[m] * W_K[m, a, h])
let gr[r: R] = sum(m, u[m] * W_g1[r, m])
let gk[a: K, h: H] = b_g[a, h] + sum(r, gr[r] * W_g2[r, a, h])
let alpha[a: K, h: H] = exp(logsigmoid(gk[a, h]) / 16)
A[(a, b, h), (a2, b2, h2)] = alpha[a, h] * delta(b2, b) * delta(a2, a) * delta(h2, h)
B[(a, b, h), m] = W_V[m, b, h] * k[a, h]
C[(e, o), (a, b, h)] = q[a, h] * delta(b, e) * delta(h, o) / sqrt(K)
"""
GLA_GQV = """
model GLAGQV "GLA, keys per head, values shared by groups of R heads"
dim d = 7
dim H = 4
dim G = 2
dim R = H // G
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[G, V, d] ~ normal(0, 0.5)
param W_g[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let alpha[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * alpha[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h // R, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""
RET_HEAD = """
dim d = 7
dim H = 2
dim K = 3
dim V = 4
input u[d]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
"""
RET_SHARED_GATE = "model GatedRet \"retention, one sigmoid gate shared by all heads\"" + RET_HEAD + """
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_V[H, V, d] ~ normal(0, 0.5)
param w_g[d] ~ normal(0, 0.5)
let g = sigmoid(sum(m, w_g[m] * u[m]) + 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""
RET_MULTI_VALUE = "model MVRet \"retention, M = 2 value heads per key head\"\ndim M = 2" + RET_HEAD + """
state S[h: H, a: K, g: M, b: V]
output y[h: H, g: M, b: V]
param W_V[H, M, V, d] ~ normal(0, 0.5)
A[(h, a, g, b), (h2, a2, g2, b2)] = delta(h, h2) * delta(a, a2) * delta(g, g2) * delta(b, b2)
    * (1 - 1 / 2 ^ (5 + h))
B[(h, a, g, b), m] = k[h, a] * W_V[h, g, b, m]
C[(o, f, e), (h, a, g, b)] = delta(o, h) * delta(f, g) * delta(e, b) * q[h, a] / sqrt(K)
"""
RET_EXP_LOG2 = "model RetLog2 \"RetNet, gamma = 1 - exp((-5 - h) log 2)\"" + RET_HEAD + """
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_V[H, V, d] ~ normal(0, 0.5)
let gamma[h: H] = 1 - exp((-5 - h) * log(2))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gamma[h]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] * K ^ (-1 / 2)
"""
# exp2 and log2 as Triton and fla write them (they were "unknown function 'exp2'")
RET_EXP2 = (RET_EXP_LOG2.replace("exp((-5 - h) * log(2))", "exp2(log2(1 / 32) - h)")
            .replace("RetLog2 \"RetNet, gamma = 1 - exp((-5 - h) log 2)",
                     "RetExp2 \"RetNet, gamma = 1 - exp2(log2(1 / 32) - h)"))
GDN_HEAD = """
dim d = 7
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_a[H, d] ~ normal(0, 0.5)
param W_b[H, d] ~ normal(0, 0.5)
param A_log[h: H] = log(16 * (h + 0.5) / H)
param dt_bias[H] ~ normal(0, 0.5)
let qr[h: H, a: K] = silu(sum(m, W_Q[h, a, m] * u[m]))
let kr[h: H, a: K] = silu(sum(m, W_K[h, a, m] * u[m]))
let q[h: H, a: K] = qr[h, a] / sqrt(sum(a2, qr[h, a2] ^ 2))
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let vpre[h: H, b: V] = sum(m, W_V[h, b, m] * u[m])
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""
GDN_ALOG_LET = "model GDNLet \"Gated DeltaNet, A = -exp(A_log) a let, dt clamped\"" + GDN_HEAD + """
let Aneg[h: H] = -exp(A_log[h])
let dt[h: H] = min(max(softplus(sum(m, W_a[h, m] * u[m]) + dt_bias[h]), 0.3), 1.5)
let alpha[h: H] = exp(Aneg[h] * dt[h] / 16)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * alpha[h] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * sigmoid(vpre[h, b]) * W_V[h, b, m]
"""
GDN_SQRT_BETA = "model GDNKb \"Gated DeltaNet, beta folded into the key\"" + GDN_HEAD + """
let alpha[h: H] = exp(-exp(A_log[h]) * softplus(sum(m, W_a[h, m] * u[m]) + dt_bias[h]) / 16)
let kb[h: H, a: K] = sqrt(beta[h]) * k[h, a]
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * alpha[h] * (delta(a, a2) - kb[h, a] * kb[h, a2])
B[(h, a, b), m] = sqrt(beta[h]) * kb[h, a] * sigmoid(vpre[h, b]) * W_V[h, b, m]
"""
SSD_CLAMP = """
model SSDClamp "SSD, dt clamped (mamba-ssm dt_limit), A = -exp(A_log) a let"
dim H = 4
dim P = 2
dim n = 3
dim G = 2
dim R = H // G
input u[h: H, p: P]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[h: H] = log(1 + 15 * (h + 0.5) / H)
param dt_bias[H] ~ normal(0, 1)
param W_dt[H, H * P] ~ normal(0, 0.5)
param W_B[G, n, H * P] ~ normal(0, 0.5)
param W_C[G, n, H * P] ~ normal(0, 0.5)
param D[H] ~ normal(0, 1)
let dt[h: H] = max(min(softplus(sum(m: H * P, W_dt[h, m] * u[m // P, m % P]) + dt_bias[h]), 1.5), 0.3)
let Aa[h: H] = -exp(A_log[h])
let dA[h: H] = exp(dt[h] * Aa[h])
let Bm[g: G, j: n] = sum(m: H * P, W_B[g, j, m] * u[m // P, m % P])
let Cm[g: G, j: n] = sum(m: H * P, W_C[g, j, m] * u[m // P, m % P])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * dA[h]
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[h // R, j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[h // R, j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
"""
S6_FLAT = """
model S6Flat "S6, the diagonal A through a flattened delta, A = -exp(A_log) a let"
dim d = 4
dim n = 3
dim r = 2
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_xdt[r, d] ~ normal(0, 1)
param W_dt[d, r] ~ normal(0, 1)
param b_dt[d] ~ normal(0, 1)
param W_B[n, d] ~ normal(0, 1)
param W_C[n, d] ~ normal(0, 1)
param D[d] ~ normal(0, 1)
let dt[c: d] = softplus(sum(q, W_dt[c, q] * sum(k, W_xdt[q, k] * u[k])) + b_dt[c])
let Aa[c: d, j: n] = -exp(A_log[c, j])
let b[j: n] = sum(k, W_B[j, k] * u[k])
let cq[j: n] = sum(k, W_C[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c * n + j, c2 * n + j2) * exp(dt[c] * Aa[c, j])
B[(c, j), k] = delta(c, k) * dt[c] * b[j]
C[o, (c, j)] = delta(o, c) * cq[j]
D[o, k] = delta(o, k) * D[k]
"""
MLSTM_POST = """
model MLPost "mLSTM, the normaliser max(|n^T q|, 1) as a post"
dim d = 7
dim H = 2
dim K = 3
input u[d]
state S[h: H, a: K, b: K]
output y[h: H, b: K]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, K, d] ~ normal(0, 0.5)
param W_f[H, d] ~ normal(0, 0.5)
param W_i[H, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m]) / sqrt(K)
let f[h: H] = sigmoid(sum(m, W_f[h, m] * u[m]) + 3)
let ig[h: H] = exp(sum(m, W_i[h, m] * u[m]))
let n[h: H, a: K] = scan(f[h], ig[h] * k[h, a])
let den[h: H] = max(abs(sum(a, n[h, a] * q[h, a])), 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * f[h]
B[(h, a, b), m] = ig[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
post yn[h: H, b: K] = y[h, b] / den[h]
"""

# name -> (spec, family, the catalog layer it rewrites)
CASES = {
    "gla_logspace": (GLA_LOGSPACE, Family.CHUNKED_OUTER, "gla"),
    "gla_vk": (GLA_VK, Family.CHUNKED_OUTER, "gla"),
    "gla_swapped": (GLA_SWAPPED, Family.CHUNKED_OUTER, "gla"),
    "gla_flat": (GLA_FLAT, Family.CHUNKED_OUTER, "gla"),
    "gla_key_major": (GLA_KEY_MAJOR, Family.CHUNKED_OUTER, "gla"),
    "gla_flat3": (GLA_FLAT3, Family.CHUNKED_OUTER, "gla"),
    "gla_gqv": (GLA_GQV, Family.CHUNKED_OUTER, "gla"),
    "ret_shared_gate": (RET_SHARED_GATE, Family.CHUNKED_OUTER, "retnet"),
    "ret_multi_value": (RET_MULTI_VALUE, Family.CHUNKED_OUTER, "retnet"),
    "ret_exp_log2": (RET_EXP_LOG2, Family.CHUNKED_OUTER, "retnet"),
    "ret_exp2": (RET_EXP2, Family.CHUNKED_OUTER, "retnet"),
    "gdn_alog_let": (GDN_ALOG_LET, Family.CHUNKED_DELTA, "gated_deltanet"),
    "gdn_sqrt_beta": (GDN_SQRT_BETA, Family.CHUNKED_DELTA, "gated_deltanet"),
    "ssd_clamp": (SSD_CLAMP, Family.CHUNKED_OUTER, "ssd"),
    "s6_flat": (S6_FLAT, Family.DIAGONAL_SCAN, "s6"),
    "mlstm_post": (MLSTM_POST, Family.CHUNKED_OUTER, "mlstm"),
}
ON_TRITON = {"gla_flat", "gdn_sqrt_beta", "ssd_clamp"}


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d_in] and an initial state in the spec's layout (None: zero), and
# returns y [B, T, ...].

def _outer(u, h0, shape, step, out_shape):
    """S_t = step(S_(t-1), u_t) -> (S_t, y_t) from zero or h0."""
    S, ys = (u.new_zeros(u.shape[0], *shape) if h0 is None else h0), []
    for t in range(u.shape[1]):
        S, y = step(S, u[:, t])
        ys.append(y)
    return stack_steps(ys, u, *out_shape)


def _gla(P, u, h0=None, swapped=False, vk=False):
    # per head S = diag(sigmoid(gk)^(1/16)) S + k v^T, gk = W_g2 (W_g1 u) + b_g; y = S^T q / sqrt(K)
    if swapped:  # params stored [d, K, H], [R, K, H], [K, H]; state [K, V, H]; output [V, H]
        P = {"W_Q": P["W_Q"].permute(2, 1, 0), "W_K": P["W_K"].permute(2, 1, 0), "W_V": P["W_V"].permute(2, 1, 0),
             "W_g1": P["W_g1"], "W_g2": P["W_g2"].permute(2, 1, 0), "b_g": P["b_g"].T}
        h0 = None if h0 is None else h0.permute(0, 3, 1, 2)
    if vk:
        h0 = None if h0 is None else h0.transpose(-1, -2)
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]

    def step(S, ut):
        q, k, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        gk = torch.einsum("har,br->bha", P["W_g2"], ut @ P["W_g1"].T) + P["b_g"]
        S = sig(gk)[..., None] ** (1 / 16) * S + k[..., :, None] * v[..., None, :]
        y = torch.einsum("zha,zhab->zhb", q, S) / K ** 0.5
        return S, (y.transpose(1, 2) if swapped else y)
    return _outer(u, h0, (H, K, V), step, (V, H) if swapped else (H, V))


def _gla_gqv(P, u, h0=None):
    # per head S_h = diag(sigmoid(W_g u + 2)) S_h + k_h v_(h // R)^T, the value of the head's group
    H, K, _ = P["W_K"].shape
    G, V, _ = P["W_V"].shape

    def step(S, ut):
        q, k = matvec(P["W_Q"], ut), matvec(P["W_K"], ut)
        v = matvec(P["W_V"], ut).repeat_interleave(H // G, 1)
        S = sig(matvec(P["W_g"], ut) + 2)[..., None] * S + k[..., :, None] * v[..., None, :]
        return S, torch.einsum("zha,zhab->zhb", q, S) / K ** 0.5
    return _outer(u, h0, (H, K, V), step, (H, V))


def _retention(gamma_of, multi=False):
    def loop(P, u, h0=None):
        # S_h = gamma S_h + k_h v^T (v per value head g under multi), y = S^T q / sqrt(K)
        H, K, _ = P["W_K"].shape
        shape = P["W_V"].shape[:-1]

        def step(S, ut):
            q, k, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
            g = gamma_of(P, ut, H)
            if multi:  # S [B, H, K, M, V]
                S = g[..., None, None, None] * S + k[..., :, None, None] * v[:, :, None]
                return S, torch.einsum("zha,zhagb->zhgb", q, S) / K ** 0.5
            S = g[..., None, None] * S + k[..., :, None] * v[..., None, :]
            return S, torch.einsum("zha,zhab->zhb", q, S) / K ** 0.5
        state = (H, K, *shape[1:]) if multi else (H, K, shape[1])
        return _outer(u, h0, state, step, shape)
    return loop


def _fixed_gamma(P, ut, H):
    return (1 - 2.0 ** (-5 - torch.arange(H, dtype=F64))).expand(ut.shape[0], H)


def _shared_gate(P, ut, H):
    return sig(ut @ P["w_g"] + 2)[:, None].expand(-1, H)


def _gdn(clamp):
    def loop(P, u, h0=None):
        # per head S = alpha (I - beta k k^T) S + beta k (sigmoid(v) * v)^T, alpha = exp(-exp(A_log) dt / 16),
        # dt = softplus(W_a u + dt_bias) (clamped to [0.3, 1.5] under clamp); q, k = L2-normalised silu;
        # y = S^T q / sqrt(K)
        H, K, _ = P["W_K"].shape
        V = P["W_V"].shape[1]

        def step(S, ut):
            qr, kr, v = torch.nn.functional.silu(matvec(P["W_Q"], ut)), torch.nn.functional.silu(
                matvec(P["W_K"], ut)), matvec(P["W_V"], ut)
            q, k = qr / qr.norm(dim=-1, keepdim=True), kr / kr.norm(dim=-1, keepdim=True)
            dt = softplus(ut @ P["W_a"].T + P["dt_bias"])
            dt = dt.clamp(0.3, 1.5) if clamp else dt
            alpha = torch.exp(-torch.exp(P["A_log"]) * dt / 16)[..., None, None]
            beta = sig(ut @ P["W_b"].T)[..., None]
            kS = torch.einsum("zha,zhab->zhb", k, S)
            S = alpha * (S - beta[..., None] * k[..., :, None] * kS[..., None, :]) \
                + (beta * k)[..., :, None] * (sig(v) * v)[..., None, :]
            return S, torch.einsum("zha,zhab->zhb", q, S) / K ** 0.5
        return _outer(u, h0, (H, K, V), step, (H, V))
    return loop


def _ssd(P, u, h0=None):
    # per head h: S_h = exp(-dt exp(A_log)) S_h + dt x_h B_g^T (g = h // R), y_h = S_h C_g + D_h x_h,
    # dt = clamp(softplus(W_dt x + dt_bias), 0.3, 1.5)
    G, n, _ = P["W_B"].shape
    H = P["A_log"].shape[0]
    Pd = P["W_dt"].shape[1] // H
    R = H // G

    def step(S, ut):
        x = ut.reshape(-1, H, Pd)
        dt = softplus(ut.flatten(1) @ P["W_dt"].T + P["dt_bias"]).clamp(0.3, 1.5)
        Bm = matvec(P["W_B"], ut.flatten(1)).repeat_interleave(R, 1)
        Cm = matvec(P["W_C"], ut.flatten(1)).repeat_interleave(R, 1)
        S = torch.exp(-dt * torch.exp(P["A_log"]))[..., None, None] * S \
            + (dt[..., None] * x)[..., :, None] * Bm[:, :, None, :]
        return S, torch.einsum("zhpj,zhj->zhp", S, Cm) + P["D"][:, None] * x
    return _outer(u.flatten(2), h0, (H, Pd, n), step, (H, Pd))


def _s6(P, u, h0=None):
    # per channel c: h_c = exp(-dt_c exp(A_log[c])) h_c + dt_c u_c b, y_c = cq . h_c + D_c u_c
    d, n = P["A_log"].shape

    def step(S, ut):
        dt = softplus((ut @ P["W_xdt"].T) @ P["W_dt"].T + P["b_dt"])
        b, cq = ut @ P["W_B"].T, ut @ P["W_C"].T
        S = torch.exp(-dt[..., None] * torch.exp(P["A_log"])) * S + (dt * ut)[..., None] * b[:, None, :]
        return S, torch.einsum("zcj,zj->zc", S, cq) + P["D"] * ut
    return _outer(u, h0, (d, n), step, (d,))


def _mlstm(P, u, h0=None):
    # per head C = f C + i k v^T, n = f n + i k (k scaled by 1/sqrt(K)), y = C^T q / max(|n . q|, 1); n starts at 0
    assert h0 is None
    H, K, _ = P["W_K"].shape
    C, n, ys = u.new_zeros(u.shape[0], H, K, K), u.new_zeros(u.shape[0], H, K), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut) / K ** 0.5, matvec(P["W_V"], ut)
        f, i = sig(ut @ P["W_f"].T + 3), torch.exp(ut @ P["W_i"].T)
        C = f[..., None, None] * C + (i[..., None] * k)[..., :, None] * v[..., None, :]
        n = f[..., None] * n + i[..., None] * k
        den = (n * q).sum(-1).abs().clamp_min(1)
        ys.append(torch.einsum("zha,zhab->zhb", q, C) / den[..., None])
    return stack_steps(ys, u, H, K)


INDEPENDENT = {
    "gla_logspace": _gla, "gla_vk": functools.partial(_gla, vk=True),
    "gla_swapped": functools.partial(_gla, swapped=True), "gla_flat": _gla, "gla_gqv": _gla_gqv,
    "gla_key_major": _gla, "gla_flat3": _gla,
    "ret_shared_gate": _retention(_shared_gate),
    "ret_multi_value": _retention(_fixed_gamma, multi=True), "ret_exp_log2": _retention(_fixed_gamma),
    "ret_exp2": _retention(_fixed_gamma),
    "gdn_alog_let": _gdn(True), "gdn_sqrt_beta": _gdn(False), "ssd_clamp": _ssd, "s6_flat": _s6, "mlstm_post": _mlstm,
}

_compiled, _built = case_builds(CASES)


@functools.lru_cache(maxsize=None)
def _catalog_family(layer: str) -> Family:
    return compile_text((SPECS / f"{layer}.dsf").read_text(), f"{layer}.dsf").structure.family


@pytest.mark.parametrize("name", list(CASES))
def test_rewrite_gets_the_catalog_family_and_matches_an_independent_implementation(name):
    """The rewrite's family is the catalog layer's (compiled at its own dims), not a worse one; forward, step and
    initial state against the float64 loop above (torch; Triton too for ``ON_TRITON``). One test per spec: each
    compiles once per worker."""
    _, family, layer = CASES[name]
    got = _compiled(name).structure
    assert got.family == family == _catalog_family(layer), got.family_reason
    backends = ("torch", "triton") if TRITON and name in ON_TRITON else ("torch",)
    check_forward_against_loop(_built(name), INDEPENDENT[name], backends=backends)


GLA_FLAT_STATE = "model GLAFlatState \"GLA, the state one flat axis\"" + GLA_HEAD + GLA_PARAMS + """
state S[i: H * K * V]
output y[h: H, b: V]
let alpha[h: H, a: K] = exp(logsigmoid(gk[h, a]) / 16)
A[i, i2] = delta(i, i2) * alpha[i // (K * V), (i // V) % K]
B[i, m] = k[i // (K * V), (i // V) % K] * W_V[i // (K * V), i % V, m]
C[(o, e), i] = delta(o, i // (K * V)) * delta(e, i % V) * q[o, (i // V) % K] / sqrt(K)
"""


def _gla_flat_state(P, u, h0=None):
    # the state index i = h K V + a V + b (row-major), so the flat state is the [H, K, V] one reshaped
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    return _gla(P, u, None if h0 is None else h0.reshape(-1, H, K, V))


def test_flat_state_numbers():
    """GLA with its state declared as one flat axis S[i: H * K * V], A, B and C reading i through // and %:
    right numbers (the chunked outer-product scan over the split state)."""
    built = build(compile_text(GLA_FLAT_STATE, "gla_flat_state.dsf"), {"d": 7, "H": 2, "K": 3, "V": 4, "R": 2})
    assert built.result.structure.family == Family.CHUNKED_OUTER
    check_forward_against_loop(built, _gla_flat_state)


def test_flat_state_gets_the_chunked_family():
    assert compile_text(GLA_FLAT_STATE, "gla_flat_state.dsf").structure.family == Family.CHUNKED_OUTER


def test_flattened_deltas_split_only_where_proven():
    """``split_flat_deltas`` splits delta(h K + a, h2 K + a2) and the three-level (h K + a) V + b, and leaves a low
    index over another dim (a in [0, V), V unrelated to K), a stride 2 and a constant offset as written."""
    h, h2, a, a2, b, b2 = sp.symbols("h h2 a a2 b b2", integer=True, nonnegative=True)
    H, K, V = sp.symbols("H K V", integer=True, positive=True)
    d = sp.KroneckerDelta
    ranges = {h: H, h2: H, a: K, a2: K, b: V, b2: V}
    assert split_flat_deltas(d(h * K + a, h2 * K + a2), ranges) == d(h, h2) * d(a, a2)
    assert split_flat_deltas(d((h * K + a) * V + b, (h2 * K + a2) * V + b2), ranges) == d(h, h2) * d(a, a2) * d(b, b2)
    assert split_flat_deltas(d(h * K + b, h2 * K + b2), ranges) == d(h * K + b, h2 * K + b2)
    assert split_flat_deltas(d(2 * h + a, 2 * h2 + a2), ranges) == d(2 * h + a, 2 * h2 + a2)
    assert split_flat_deltas(d(h * K + a, h2 * K + 1), ranges) == d(h * K + a, h2 * K + 1)
    assert split_flat_deltas(d(h * K + a, 0), ranges) == d(h, 0) * d(a, 0)
