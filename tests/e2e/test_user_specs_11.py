"""An eleventh new-spec hunt.

Found and fixed:
- A tensor entry picked by a subscript of dims only, ``u[d - 1]`` or ``W[n - 1, c]``, crashed every generated module
  that read it inside an expression over axes (a scalar gate ``sigmoid(u[d - 1] + 1)`` of a chunked linear attention
  whose q, k, v are slices of the input: "The expanded size of the tensor (1) must match the existing size (7)"; a
  diagonal decay ``sigmoid(u[d - 1] + W[n - 1, c])``: "The size of tensor a (3) must match ... (7)"). The torch
  printer added the axes' size-1 dims to such a read only when every subscript was an integer literal
  (``is_Integer``), so ``u_[:, :, d - 1]`` stayed ``[B, T]`` and broadcast its time axis against an axis of the
  state. ``TorchPrinter._indexed`` and ``_selected`` now treat any subscript free of the axes (an integer or an
  expression of dims) as one picked entry (basic indexing, then the view over the axes), as they did for literals
  (``SLICED``, ``DIM_SUB``; the Triton printer was already right).
- A Comba-style delta rule ``A = al I - be k k^T`` with the rank-1 weight a let carrying the scale, ``be = 0.9 al
  bi``, had the read vector ``f = (be / al) k`` printed as ``be k / al``: 0 / 0 in fp32 once ``al = sigmoid(z)``
  underflows, so at inputs of scale 30 every fp32 output and gradient (torch and Triton) was NaN where float64's are
  finite. ``structure.split_delta`` now looks through lets that only name a product (``SymSpec.inline_product_lets``,
  scalar lets included) when the quotient keeps a denominator, and ``al`` cancels: ``f = 0.9 bi k``
  (``DELTA_SCALAR_BE`` is the scalar-let form).
- RetNet's per-head decay written as the paper's linspace, ``1 - exp(log(1/32) + h (log(1/512) - log(1/32)) /
  (H - 1))``, divided by zero at one head: at ``dim H = 1`` (or ``Model(H=1)``) it compiled, ``dsfc analyze``
  reported ``|lambda| < 1 [0.96875, 1)``, and every output was NaN (0 / 0). Constants that divide by zero were
  refused, but a dims-only divisor inside an expression over indices was never evaluated. Now every dims-only
  divisor, log / sqrt argument and base of a negative or fractional power is a ``DimDomain`` (``ir/lower.py``):
  a spec error at the default dims, and a ``ValueError`` in the generated constructor at other dims (``H = 3`` gives
  the paper's decays, ``RETNET_LINSPACE``). The catalog's RWKV-6 init (``/ (L - 1)``, ``/ (H * K - 1)``) gets the
  constructor checks too: ``RWKV6(L=1)`` said only "float division by zero" from its initialisers.
- The same A with a weight independent of the scale (``be = 0.5 bi``; Comba's own form, ``COMBA_INDEP``) was scanned
  as ``al (I - (be / al) k k^T)``: once ``al`` underflows in fp32, ``be / al`` is inf and the outputs NaN (float64 is
  finite). Where the quotient by the scale keeps a denominator, ``split_delta`` now keeps the weight on the read
  (``DeltaSplit.scaled``, f = be k) and the scan takes ``s I - k f^T`` as it is: ``chunked_delta_scan(...,
  scaled_read=True)`` builds the WY form with the decays one step shorter (``D'[t, j] = exp(segsum(j+1..t-1))``,
  ``Gamma'_t = exp(sum_(l<t) g_l)``, as fla's ``chunk_comba`` uses its ``g0``), segment sums only, every factor
  exp(<= 0), no decay in a denominator. The Triton path shares the chunk-parallel torch parts and its unchanged
  state-passing kernel; its decode step kernel takes ``SCALED``. DeltaNet and Gated DeltaNet keep the unscaled read
  (their generated code is unchanged). Forward and gradients, torch and Triton, fp32 at input scale 30.

Found, NOT fixed:
- LightNet written with ``Z = cumsum(exp(k))`` overflows fp32 at keys above 88 (inputs of scale 30 here): the spec's
  maths (the paper computes it as a log-cumsum-exp), not a rewrite dsfc could make without carrying log Z.
- The known gap of rounds 3 and 9 (a decay along the value axis runs the elementwise diagonal scan, not a chunked
  one) is checked again here with a pre-update readout and a D skip (``VALUE_GATE_PRE``): slow for large states but
  correct on the torch and Triton paths.

Checked clean (each against an independent float64 implementation written here from the paper's equations, not from
dsfc's reference: forward at T = 0, 1, 7 and 9 (Triton interpreted on CPU at T = 0 and 9), batch 1 and 3, from zero
and, where the state is a plain tensor, from an initial state; token-by-token step; gradients of the input and every
parameter on the torch and Triton paths; and against dsfc's reference recurrence through ``check_all_paths``:
T = 0, 1, 7, an initial state, step, gradients of the input, the initial state and every parameter, Triton, chunks
of 3 over T = 9):
LightNet's additive decay (Qin et al. 2024, "You Only Scan Once": a per-key softmax over time, A = Z_prev / Z with
Z = cumsum(exp(k)), chunked outer-product scan), Titans' linear memory with momentum (Behrouz et al. 2024: memory
and momentum stacked on one state axis, a 2K x 2K dense block per head and value slot, dense scan), Mamba-1 with
the complex S4D-Lin initialisation A = -1/2 + i pi n as 2x2 rotation-scaling blocks with a complex B and
y = 2 Re(C h) (block scan), a Comba-style delta rule A = al I - be k k^T (be = 0.9 al bi), B = bi k v^T and the
output read at q - d k (chunked delta rule), MetaLA (Chou et al. 2024: key 1 - al, no key projection, the
self-augmentation sigmoid(q . (w (1 - al))) v as an input-dependent D), gated random-feature attention (Peng et al.
2021, RFA-gate: [cos, sin](W x) features over a 2-axis key, S = g S + (1 - g) phi(k) v^T, its normaliser a scan in
a post), q, k, v sliced from a prime-width input (13) with a rolled key index (a + 2) % K, a reversed value index,
a query read at (a + 4) % K, one head and delta factors in reversed order, a value-axis decay read before the update.
Spot-checked with ``dsfc check`` and fp32 against float64 at input scales 1, 10, 30 (not kept as tests: they pass):
heads rolled in the query (q[(h + 1) % H, a]) with keys reversed in B and a post reading u[d - 1] and u[d - 2 - b], a
delta rule with scalar decay and beta for all heads and a decay spelt (1 + exp(-z)) ^ -1, a diagonal scan reading the
input reversed with a decay u0^2 / (1 + u0^2 + s), softmax attention with a scalar gate sigmoid(u[d - 1]) in C, a
delta rule on normalised Taylor-2 key features, mLSTM gates as lets over (h, a) that ignore a with a forget gate
exp(-softplus(-f)) and an input gate exp(min(i, 3)), a gated delta rule with such broadcast alpha and beta, a GLA at
d = H = K = V = 1 read before the update, LightNet and Titans read before the update.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import math  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (BACKENDS, F64, HEAD, INTERPRETER_WARNINGS, assert_grads_close,  # noqa: E402
                         check_all_paths, check_forward_against_loop, compile_and_build, matvec,
                         output_and_grads, rel_err, check_grads_against_loop)
from dsfc.analysis.structure import Family  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

LIGHTNET = """
model LightNet "LightNet additive decay: per-key A = Z_prev / Z, Z = cumsum(exp(k)), B = exp(k) / Z (x) v"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let Z[h: H, a: K] = cumsum(exp(k[h, a]))
let Zp[h: H, a: K] = prev(Z[h, a])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * Zp[h, a] / Z[h, a]
B[(h, a, b), m] = exp(k[h, a]) / Z[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

TITANS = """
model TitansLin "Titans linear memory with momentum: S = (1 - al) S + Mo, Mo = eta Mo - th k (k^T S - v^T)"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state M[h: H, s: 2, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_al[H, d] ~ normal(0, 0.5)
param w_eta[H, d] ~ normal(0, 0.5)
param w_th[H, d] ~ normal(0, 0.5)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let al[h: H] = sigmoid(sum(m, w_al[h, m] * u[m]) - 2)
let eta[h: H] = sigmoid(sum(m, w_eta[h, m] * u[m]))
let th[h: H] = 0.5 * sigmoid(sum(m, w_th[h, m] * u[m]))
# s = 0: the memory S, s = 1: the momentum Mo; S_t = (1 - al) S + eta Mo_prev - th k k^T S + th k v^T
A[(h, s, a, b), (h2, s2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(s2, 1) * eta[h] * delta(a, a2)
    + delta(s2, 0) * (delta(s, 0) * (1 - al[h]) * delta(a, a2) - th[h] * k[h, a] * k[h, a2]))
B[(h, s, a, b), m] = th[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, s, a, b)] = delta(o, h) * delta(e, b) * delta(s, 0) * sum(m, W_Q[h, a, m] * u[m])
"""

S4D_LIN = """
model MambaS4DLin "Mamba-1, complex S4D-Lin A = -1/2 + i pi j as 2x2 rotation blocks, complex B, y = 2 Re(C h)"
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n, r: 2]
output y[d]
param A_log[c: d, j: n] = log(0.5)
param A_im[c: d, j: n] = 3.141592653589793 * j
param W_dt[d, d] ~ normal(0, 0.5)
param b_dt[d] ~ dt_bias(0.01, 0.5)
param W_B[n, 2, d] ~ normal(0, 0.5)
param W_C[n, 2, d] ~ normal(0, 0.5)
param D[d] = 1
let dt[c: d] = softplus(sum(k, W_dt[c, k] * u[k]) + b_dt[c])
let bq[j: n, r: 2] = sum(k, W_B[j, r, k] * u[k])
let cq[j: n, r: 2] = sum(k, W_C[j, r, k] * u[k])
let th[c: d, j: n] = A_im[c, j] * dt[c]
A[(c, j, r), (c2, j2, r2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
    * (delta(r, r2) * cos(th[c, j]) + (delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1)) * sin(th[c, j]))
B[(c, j, r), k] = delta(c, k) * dt[c] * bq[j, r]
C[o, (c, j, r)] = delta(o, c) * 2 * (delta(r, 0) * cq[j, 0] - delta(r, 1) * cq[j, 1])
D[o, k] = delta(o, k) * D[k]
"""

COMBA = """
model CombaLike "Comba-style delta rule: A = al I - be k k^T with independent al, be; B = bi k v^T; read q - dq k"
""" + HEAD + """\
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_al[H, d] ~ normal(0, 0.5)
param w_be[H, d] ~ normal(0, 0.5)
param dq[h: H] = 0.02 * (h + 1)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let al[h: H] = sigmoid(sum(m, w_al[h, m] * u[m]) + 2)
let bi[h: H] = sigmoid(sum(m, w_be[h, m] * u[m]))
let be[h: H] = al[h] * bi[h] * 0.9
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (al[h] * delta(a, a2) - be[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = bi[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * (sum(m, W_Q[h, a, m] * u[m]) - dq[h] * k[h, a])
"""

METALA = """
model MetaLA "MetaLA: per-key decay al, key 1 - al, self-augmentation sigmoid(q . (w (1 - al))) v in D"
dim d = 4
dim H = 3
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_A[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w_aug[H, K] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let al[h: H, a: K] = sigmoid(sum(m, W_A[h, a, m] * u[m]) + 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = (1 - al[h, a]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
D[(o, e), m] = sigmoid(sum(a, q[o, a] * w_aug[o, a] * (1 - al[o, a]))) * W_V[o, e, m]
"""

GATED_RFA = """
model GatedRFA "gated RFA: random Fourier features [cos, sin](W x) on a 2-axis key, S = g S + (1 - g) phi(k) v^T"
dim d = 4
dim H = 2
dim M = 3
dim V = 2
input u[d]
state S[h: H, s: 2, f: M, b: V]
output y[h: H, b: V]
param W_Q[H, d, d] ~ normal(0, 0.5)
param W_K[H, d, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param Wr[M, d] ~ normal(0, 1)
param w_g[H, d] ~ normal(0, 0.5)
let q[h: H, i: d] = sum(m, W_Q[h, i, m] * u[m])
let k[h: H, i: d] = sum(m, W_K[h, i, m] * u[m])
# s = 0: cos, s = 1: cos(x - pi / 2) = sin
let qf[h: H, s: 2, f: M] = cos(sum(i, Wr[f, i] * q[h, i]) - s * 1.5707963267948966) / sqrt(M)
let kf[h: H, s: 2, f: M] = cos(sum(i, Wr[f, i] * k[h, i]) - s * 1.5707963267948966) / sqrt(M)
let g[h: H] = sigmoid(sum(m, w_g[h, m] * u[m]) + 1)
let z[h: H, s: 2, f: M] = scan(g[h], (1 - g[h]) * kf[h, s, f])
A[(h, s, f, b), (h2, s2, f2, b2)] = delta(h, h2) * delta(s, s2) * delta(f, f2) * delta(b, b2) * g[h]
B[(h, s, f, b), m] = (1 - g[h]) * kf[h, s, f] * W_V[h, b, m]
C[(o, e), (h, s, f, b)] = delta(o, h) * delta(e, b) * qf[h, s, f]
post o[h: H, b: V] = y[h, b] / (sum(s, sum(f, qf[h, s, f] * z[h, s, f])) + 2)
"""

SLICED = """
model Sliced "q, k, v sliced from a prime-width input, k rolled by 2, v reversed, one head, gate from the last entry"
dim H = 1
dim K = 5
dim V = 2
dim d = 2 * K + V + 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
let q[h: H, a: K] = u[h * K + a]
let k[h: H, a: K] = u[K + (a + 2) % K]
let g = sigmoid(u[d - 1] + 1)
A[(h, a, b), (h2, a2, b2)] = delta(b2, b) * delta(a2, a) * delta(h2, h) * g
B[(h, a, b), m] = delta(m, 2 * K + V - 1 - b) * k[h, a]
C[(o, e), (h, a, b)] = q[h, (a + 4) % K] * delta(e, b) * delta(h, o)
"""

DIM_SUB = """
model DimSub "diagonal decay from the input's last entry u[d - 1], param rows and columns picked by dims"
dim d = 4
dim n = 3
input u[d]
state h[c: d, j: n]
output y[d]
param W[n, d] ~ normal(0, 1)
param P[n, n] ~ normal(0, 1)
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * sigmoid(u[d - 1] + W[n - 1, c] + P[j, n - 1])
B[(c, j), m] = delta(c, m) * W[n - 1, c] * P[n - 2, j]
C[o, (c, j)] = delta(o, c) * u[d - 2]
"""

VALUE_GATE_PRE = """
model ValueGatePre "decay along the value axis only (per value slot sigmoid), read before the update, per-head D"
dim d = 3
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_g[H, V, d] ~ normal(0, 0.5)
param Dh[h: H] = 0.5 + h
let g[h: H, b: V] = sigmoid(sum(m, W_g[h, b, m] * u[m]) + 1)
readout pre
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h, b]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
D[(o, e), m] = Dh[o] * W_V[o, e, m]
"""

# the same cancellation over scalar lets (a scalar let is a Symbol, not an Indexed entry)
DELTA_SCALAR_BE = """
model DeltaScalarBe "delta rule with scalar lets for all heads: A = al I - be k k^T, be = al * bi, B = bi k v^T"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param w[d] ~ normal(0, 0.5)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let al = sigmoid(sum(m, w[m] * u[m]) + 1)
let bi = sigmoid(u[d - 1])
let be = al * bi
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (al * delta(a, a2) - be * k[h, a] * k[h, a2])
B[(h, a, b), m] = bi * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

CASES = {
    "lightnet": (LIGHTNET, Family.CHUNKED_OUTER),
    "titans": (TITANS, Family.DENSE_SCAN),
    "s4d_lin": (S4D_LIN, Family.DENSE_SCAN),
    "comba": (COMBA, Family.CHUNKED_DELTA),
    "metala": (METALA, Family.CHUNKED_OUTER),
    "gated_rfa": (GATED_RFA, Family.CHUNKED_OUTER),
    "sliced": (SLICED, Family.CHUNKED_OUTER),
    "dim_sub": (DIM_SUB, Family.DIAGONAL_SCAN),
    # known gap (see the docstring): a value-axis decay runs the elementwise diagonal scan
    "value_gate_pre": (VALUE_GATE_PRE, Family.DIAGONAL_SCAN),
}


# -- independent float64 implementations from the papers' equations: plain loops over time ---------------------------
# Each takes the parameters by spec name, u [B, T, d] and an initial state in the spec's layout (None: zero; only
# for the specs whose state is a plain tensor), and returns y [B, T, ...].

def _l2(x):
    return x / x.pow(2).sum(-1, keepdim=True).sqrt()


def _lightnet(P, u, h0=None):
    # closed form, not the recurrence: per key a, S_t[a] = sum_(s<=t) exp(k_s[a]) v_s / sum_(s<=t) exp(k_s[a])
    ys = []
    for t in range(u.shape[1]):
        x = u[:, : t + 1]  # [B, t+1, d]
        ek = torch.exp(torch.einsum("ham,bsm->bsha", P["W_K"], x))
        v = torch.einsum("hvm,bsm->bshv", P["W_V"], x)
        S = torch.einsum("bsha,bshv->bhav", ek, v) / ek.sum(1)[..., None]
        ys.append(torch.einsum("bha,bhav->bhv", matvec(P["W_Q"], u[:, t]), S))
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, *P["W_V"].shape[:2])


def _titans(P, u, h0=None):
    B_, H, K, V = u.shape[0], *P["W_Q"].shape[:2], P["W_V"].shape[1]
    S = u.new_zeros(B_, H, K, V) if h0 is None else h0[:, :, 0]  # memory
    Mo = u.new_zeros(B_, H, K, V) if h0 is None else h0[:, :, 1]  # momentum (surprise)
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        k, v, q = _l2(matvec(P["W_K"], x)), matvec(P["W_V"], x), matvec(P["W_Q"], x)
        al, eta = torch.sigmoid(matvec(P["w_al"], x) - 2), torch.sigmoid(matvec(P["w_eta"], x))
        th = 0.5 * torch.sigmoid(matvec(P["w_th"], x))
        # gradient of the associative loss 1/2 |S^T k - v|^2 at the previous memory
        grad = k[..., None] * (torch.einsum("bha,bhav->bhv", k, S) - v)[..., None, :]
        Mo = eta[..., None, None] * Mo - th[..., None, None] * grad
        S = (1 - al)[..., None, None] * S + Mo
        ys.append(torch.einsum("bha,bhav->bhv", q, S))
    return torch.stack(ys, 1) if ys else u.new_zeros(B_, 0, H, V)


def _s4d_lin(P, u, h0=None):
    h = torch.zeros(u.shape[0], *P["A_log"].shape, dtype=torch.complex128) if h0 is None else torch.complex(
        h0[..., 0], h0[..., 1])
    lam_c = -torch.exp(P["A_log"]) + 1j * P["A_im"]  # [d, n]
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        dt = torch.nn.functional.softplus(matvec(P["W_dt"], x) + P["b_dt"])  # [B, d]
        Bc = torch.complex(matvec(P["W_B"][:, 0], x), matvec(P["W_B"][:, 1], x))  # [B, n]
        Cc = torch.complex(matvec(P["W_C"][:, 0], x), matvec(P["W_C"][:, 1], x))
        h = torch.exp(dt[..., None] * lam_c) * h + (dt * x)[..., None] * Bc[:, None, :]
        ys.append(2 * (h * Cc[:, None, :]).sum(-1).real + P["D"] * x)
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, u.shape[2])


def _comba(P, u, h0=None):
    B_, H, K, V = u.shape[0], *P["W_Q"].shape[:2], P["W_V"].shape[1]
    S = u.new_zeros(B_, H, K, V) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        k, v, q = _l2(matvec(P["W_K"], x)), matvec(P["W_V"], x), matvec(P["W_Q"], x)
        al, bi = torch.sigmoid(matvec(P["w_al"], x) + 2), torch.sigmoid(matvec(P["w_be"], x))
        be = 0.9 * al * bi
        S = (al[..., None, None] * S - be[..., None, None] * k[..., None] * torch.einsum("bha,bhav->bhv", k, S)[
            ..., None, :] + bi[..., None, None] * k[..., None] * v[..., None, :])
        ys.append(torch.einsum("bha,bhav->bhv", q - P["dq"][:, None] * k, S))
    return torch.stack(ys, 1) if ys else u.new_zeros(B_, 0, H, V)


def _metala(P, u, h0=None):
    B_, H, K, V = u.shape[0], *P["W_Q"].shape[:2], P["W_V"].shape[1]
    S = u.new_zeros(B_, H, K, V) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        q, v, al = matvec(P["W_Q"], x), matvec(P["W_V"], x), torch.sigmoid(matvec(P["W_A"], x) + 1)
        S = al[..., None] * S + (1 - al)[..., None] * v[..., None, :]
        aug = torch.sigmoid((q * P["w_aug"] * (1 - al)).sum(-1))
        ys.append(torch.einsum("bha,bhav->bhv", q, S) + aug[..., None] * v)
    return torch.stack(ys, 1) if ys else u.new_zeros(B_, 0, H, V)


def _gated_rfa(P, u, h0=None):
    M = P["Wr"].shape[0]

    def phi(x):  # [B, H, d] -> [B, H, 2, M]
        w = torch.einsum("fi,bhi->bhf", P["Wr"], x)
        return torch.stack([torch.cos(w), torch.sin(w)], 2) / math.sqrt(M)

    S, z, ys = 0, 0, []
    for t in range(u.shape[1]):
        x = u[:, t]
        qf, kf, v = phi(matvec(P["W_Q"], x)), phi(matvec(P["W_K"], x)), matvec(P["W_V"], x)
        g = torch.sigmoid(matvec(P["w_g"], x) + 1)[..., None, None]
        S = g[..., None] * S + (1 - g)[..., None] * kf[..., None] * v[:, :, None, None, :]
        z = g * z + (1 - g) * kf
        ys.append(torch.einsum("bhsf,bhsfv->bhv", qf, S) / ((qf * z).sum((-1, -2)) + 2)[..., None])
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, *P["W_V"].shape[:2])


def _sliced(P, u, h0=None, K=5, V=2):
    S = u.new_zeros(u.shape[0], 1, K, V) if h0 is None else h0
    ys = []
    roll = [(a + 2) % K for a in range(K)]
    for t in range(u.shape[1]):
        x = u[:, t]
        q, k = x[:, :K], x[:, K:2 * K][:, roll]
        v = x[:, 2 * K: 2 * K + V].flip(-1)
        g = torch.sigmoid(x[:, -1] + 1)
        S = g[:, None, None, None] * S + (k[..., None] * v[:, None, :])[:, None]
        ys.append(torch.einsum("ba,bav->bv", q[:, [(a + 4) % K for a in range(K)]], S[:, 0])[:, None])
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, 1, V)


def _dim_sub(P, u, h0=None):
    h = u.new_zeros(u.shape[0], *P["W"].shape[::-1]) if h0 is None else h0  # [B, d, n]
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        a = torch.sigmoid(x[:, -1, None, None] + P["W"][-1][:, None] + P["P"][:, -1][None, :])
        h = a * h + (P["W"][-1] * x)[..., None] * P["P"][-2][None, :]
        ys.append(x[:, -2, None] * h.sum(-1))
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, u.shape[2])


def _value_gate_pre(P, u, h0=None):
    B_, H, K, V = u.shape[0], *P["W_Q"].shape[:2], P["W_V"].shape[1]
    S = u.new_zeros(B_, H, K, V) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        q, k, v = matvec(P["W_Q"], x), matvec(P["W_K"], x), matvec(P["W_V"], x)
        ys.append(torch.einsum("bha,bhav->bhv", q, S) + P["Dh"][:, None] * v)  # read before the update
        S = torch.sigmoid(matvec(P["W_g"], x) + 1)[:, :, None, :] * S + k[..., None] * v[..., None, :]
    return torch.stack(ys, 1) if ys else u.new_zeros(B_, 0, H, V)


INDEPENDENT = {"lightnet": _lightnet, "titans": _titans, "s4d_lin": _s4d_lin, "comba": _comba, "metala": _metala,
               "gated_rfa": _gated_rfa, "sliced": _sliced, "dim_sub": _dim_sub, "value_gate_pre": _value_gate_pre}


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_an_independent_implementation(name):
    """Forward (torch at T = 0, 1, 7, 9, Triton at T = 0, 9; batch 1, 3) and token-by-token step against the loop
    written here, from zero and (plain-tensor states) from a random initial state; dsfc's reference too."""
    text, _ = CASES[name]
    check_forward_against_loop(compile_and_build(text, path=f"{name}.dsf"), INDEPENDENT[name], BACKENDS)


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_gradients_match_an_independent_implementation(name):
    """d/d(u, every parameter) of sum(y * w) through the module (torch and Triton) against autograd through the loop
    written here, at batch 3, T = 9."""
    text, _ = CASES[name]
    built = compile_and_build(text, path=f"{name}.dsf")
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(3, 9, built.d_in(), generator=gen, dtype=F64)
    w = torch.randn(3, 9, built.d_out(), generator=gen, dtype=F64)
    check_grads_against_loop(built, INDEPENDENT[name], u, w, BACKENDS)


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    """torch (T = 0, 1, 7, batch 1 and 3, step, gradients of u, the initial state and every parameter), Triton from
    an initial state, and for the chunked families chunks of 3 steps over T = 9."""
    text, family = CASES[name]
    built = compile_and_build(text, path=f"{name}.dsf")
    check_all_paths(built, family)


def test_titans_blocks_couple_memory_and_momentum_over_the_keys():
    """The dense block is the 2K x 2K (memory, momentum) x key block per head and value slot, not the whole state."""
    built = compile_and_build(TITANS, path="titans.dsf")
    st = built.result.structure
    axes = [a.name for a in built.sym.state.axes]
    assert sorted(axes[k] for k in st.a.mixed_axes) == ["a", "s"], st.a


def test_s4d_lin_keeps_its_rotation_blocks_and_complex_scan():
    """2x2 rotation-scaling blocks (a complex diagonal) with a proven |lambda| < 1, run as a complex diagonal scan."""
    built = compile_and_build(S4D_LIN, path="s4d_lin.dsf")
    report = built.result.report
    assert report.a_complex_diagonal and report.eigen_bound == "|lambda| < 1", (report.a_kind, report.eigen_bound)
    assert "rotation_scan(_rot_x, _rot_y, _bu, h0" in built.result.source and "block_scan(" not in built.result.source


def test_a_dim_subscript_reads_one_entry_broadcast_over_the_axes():
    """The fix's unit: ``u[d - 1]`` inside an expression over (c, j) prints as one picked entry with the axes' size-1
    dims (it was [B, T], broadcast against c), and a param row picked by a dim as basic indexing, no index grid."""
    src = compile_and_build(DIM_SUB, path="dim_sub.dsf").result.source
    assert "u_[:, :, (d - 1)][:, :, None, None]" in src
    assert "W[(n - 1), :]" in src and "W[(n - 1), axis(" not in src


@pytest.mark.parametrize("spec", ["comba", "scalar_lets"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rank_one_weight_carrying_the_scale_cancels_it_in_fp32(backend, spec):
    """Comba-style A = al I - be k k^T with be = 0.9 al bi: the delta rule's read vector f = (be / al) k was printed
    as be k / al, 0 / 0 in fp32 once al = sigmoid(z) underflows (inputs of scale 30): NaN outputs and gradients where
    float64's are finite. The analysis now looks through the product let be, so f = 0.9 bi k (scalar lets too)."""
    built = compile_and_build(COMBA if spec == "comba" else DELTA_SCALAR_BE, path=f"{spec}.dsf")
    assert built.result.structure.family == Family.CHUNKED_DELTA
    assert "/ al" not in built.result.source
    gen = torch.Generator().manual_seed(3)
    for scale in (1.0, 30.0):
        u = scale * torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
        w = torch.randn(2, 9, built.d_out(), generator=gen, dtype=F64)
        y64, g64 = output_and_grads(built.model, "torch", u, w, dtype=F64)
        y32, g32 = output_and_grads(built.model, backend, u, w, dtype=torch.float32)
        built.model.double()
        assert rel_err(y32, y64) < 1e-5, scale
        assert_grads_close(g32, g64, 1e-4)


COMBA_INDEP = COMBA.replace("let be[h: H] = al[h] * bi[h] * 0.9", "let be[h: H] = 0.5 * bi[h]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_independent_rank_one_weight_stays_finite_in_fp32(backend):
    """A = al I - be k k^T with be = 0.5 bi independent of al was scanned as al (I - (be / al) k k^T): inf in fp32
    once al underflows, NaN outputs where float64's are finite. The scan now takes s I - k f^T as it is (f = be k,
    ``scaled_read``: the WY build's decays one step shorter, segment sums only), forward and gradients."""
    built = compile_and_build(COMBA_INDEP, path="comba_indep.dsf")
    assert built.result.structure.family == Family.CHUNKED_DELTA and built.result.structure.delta.scaled
    assert "/ al" not in built.result.source and "scaled_read=True" in built.result.source
    gen = torch.Generator().manual_seed(3)
    for scale in (1.0, 30.0):
        u = scale * torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
        w = torch.randn(2, 9, built.d_out(), generator=gen, dtype=F64)
        y64, g64 = output_and_grads(built.model, "torch", u, w, dtype=F64)
        y32, g32 = output_and_grads(built.model, backend, u, w, dtype=torch.float32)
        built.model.double()
        assert torch.isfinite(y64).all()
        assert torch.isfinite(y32).all() and all(torch.isfinite(g).all() for g in g32)
        assert rel_err(y32, y64) < 1e-5, scale
        assert_grads_close(g32, g64, 1e-4)


def test_an_independent_rank_one_weight_matches_the_reference():
    """The scaled-read delta scan against dsfc's reference recurrence on every path (torch, step, gradients, Triton,
    chunks of 3 over T = 9)."""
    check_all_paths(compile_and_build(COMBA_INDEP, path="comba_indep.dsf"), Family.CHUNKED_DELTA)


RETNET_LINSPACE = """
model RetNetLinspace "RetNet gamma_h = 1 - exp(linspace(log(1/32), log(1/512), H)), the linspace step over H - 1"
dim d = 4
dim H = 1
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let gam[h: H] = 1 - exp(log(1 / 32) + h * (log(1 / 512) - log(1 / 32)) / (H - 1))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gam[h]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""


def test_retnet_linspace_decays_match_the_paper_at_three_heads():
    """At H = 3 the formula gives RetNet's 1 - 2^-5, 1 - 2^-7, 1 - 2^-9 (values a reader of the paper expects)."""
    built = compile_and_build(RETNET_LINSPACE.replace("dim H = 1", "dim H = 3"), path="retnet_linspace.dsf")
    u = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    A, _, _, _ = built.dsf_matrices(u)
    diag = A[0, 0].diagonal().reshape(3, 2, 2)
    want = 1 - torch.tensor([2.0 ** -5, 2.0 ** -7, 2.0 ** -9], dtype=F64)
    assert torch.allclose(diag, want[:, None, None].expand(3, 2, 2), rtol=0, atol=1e-14)


def test_a_let_dividing_by_a_dim_expression_that_is_zero_is_refused():
    """At the default H = 1 the linspace step divides by H - 1 = 0: a spec error at the divisor (was NaN outputs)."""
    from dsfc.lang.errors import SpecErrors
    from dsfc.pipeline import compile_text

    with pytest.raises(SpecErrors, match=r"H - 1 is 0 at the default dims \(H = 1\), but as a divisor"):
        compile_text(RETNET_LINSPACE, "retnet_linspace.dsf")


def test_a_module_built_where_a_dim_divisor_is_zero_is_refused():
    """Compiled at H = 3, the module built at H = 1 raises in its constructor (naming the divisor and its line)."""
    built = compile_and_build(RETNET_LINSPACE.replace("dim H = 1", "dim H = 3"), path="retnet_linspace.dsf")
    with pytest.raises(ValueError, match=r"at d=4, H=1, K=2, V=2: H - 1 \(spec line 13\), a divisor, must be nonzero"):
        type(built.model)(H=1)
    assert torch.isfinite(type(built.model)(H=2)(torch.randn(1, 3, 4))).all()
