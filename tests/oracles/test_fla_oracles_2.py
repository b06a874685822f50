"""More layers of flash-linear-attention (fla-core 0.6.0) ported to dsfc by a user, against fla's own reference code.

As ``test_fla_oracles.py``: each spec packs fla's arguments (q, k, v, gate / beta logits) into the input ``u``
(head-major blocks, ``u[offset + h * X + x]``) and keeps the few trained tensors fla's layer reads (``A_log``,
``dt_bias``, RWKV-7's ``k_k``, ``k_a``, ``r_k`` and group-norm affine) as params, so that both sides get the same
numbers. Compared (float64): the generated module's torch path, reference backend, ``step`` and Triton path
(interpreted on CPU) at T = 0, 1, 7, 9 from zero and from an initial state, the final / carried state and a sequence
split in two, and the gradients of the input and every parameter, against a float64 loop transcribed here from fla's
code (the file and function named at each loop); ``dsfc analyze``'s family and eigenvalue bound against the spectra
of the module's own A_t. Each transcription is checked against fla's function itself where fla is installed
(``pytest.importorskip("fla")``; 1e-5: fla's naive functions compute in float32):

- iplr: ``iplr_recurrence`` (fla/ops/generalized_delta_rule/iplr/naive.py), S = (I + beta alpha^T) S + k v^T, fed as
  the delta rule (alpha = -kk, beta = kk sigmoid(a), kk L2-normalised); chunked diagonal-plus-rank-1 scan (fla: the
  chunked iplr), eigenvalues (0, 1]. With alpha, beta free the report is "unknown (-inf, inf)", the truth (an
  eigenvalue 1 + alpha . beta; checked).
- gdn2: ``naive_recurrent_gdn2`` (fla/ops/gdn2/naive.py), per-key decay, a per-key erase gate and a per-value write gate
  (S = (I - k (b k)^T) diag(exp g) S + k (w v)^T), the KDA gate; chunked diagonal-plus-rank-1 scan, |lambda| < 1.
- precond: ``naive_recurrent_precond_gated_delta_rule`` (fla/ops/precond_gated_delta_rule/naive.py): the gated delta
  rule whose write key is k scaled by exp(-log(1.5) softsign(log(A + 1e-6) + 0.2)), A the running ATK accumulator
  A_t = exp(g_atk) A + beta_atk k^2 (a ``scan`` let, carried with the state: fla's ``initial_A_state``); chunked
  delta-rule scan, |lambda| < 1 (after the fix below). Also with grouped value heads (fla's GVA: 4 value heads, each
  pair sharing its key head's q, k and ATK state, read as ``k[h // R, a]``): still the chunked delta rule.
- rwkv7: RWKV-7's time mix after the token shift as fla composes it: ``k_update_ref`` (fla/ops/rwkv7/fused_k_update.py),
  kk = L2(k k_k), the DPLR core with scale 1 (``fused_mul_recurrent_rwkv7``'s kernel; its reference
  ``dplr_recurrence``), fla's GroupNorm per head, then ``gate_output_correction_ref``
  (fla/ops/rwkv7/gate_output_correction.py: + (r . (k r_k)) v, times the gate) as posts; chunked DPLR, |lambda| < 1.
  fla's Triton ``fused_mul_recurrent_rwkv7`` does not run on this CPU (no Triton driver): its kernel's loop is the one
  transcribed.
- fox: ``naive_forgetting_attn`` (fla/ops/forgetting_attn/naive.py), softmax attention with logsigmoid forget gates per
  head, as the decayed softmax (``scan`` of the Taylor features); quadratic attention (fla: parallel), eigenvalues
  "not proven <= 1", true (f eta_(t-1) / eta_t exceeds 1 where the new query weighs the history more).
- lightning: ``chunk_lightning_attn`` (fla/ops/lightning_attn/chunk.py) at layer 1 of 4, i.e. simple_gla with the fixed
  per-head decay g_gamma = -(8 / H)(1 - 1/4) h (``naive_recurrent_simple_gla`` as the reference); chunked
  outer-product scan, |lambda| <= 1 (head 0 does not decay: true).
- lightnet: ``fused_recurrent_lightnet`` (fla/ops/lightnet/fused_recurrent.py): its gate (fla/ops/gsa/gate.py
  ``fused_additive_gate_fwd_kernel``, Triton only, transcribed: z = logcumsumexp(x) per key, k = exp(x - z),
  g = z_prev - z), then ``naive_recurrent_gla``; written as Z = cumsum(exp(x)), A = prev(Z) / Z, B = exp(x) / Z;
  chunked outer-product scan (fla: chunk_gla), |lambda| <= 1 (1 at t = 0: true). dsfc's carried Z is exp(z), fla's
  log-normaliser (checked across a split).

Every output, state and gradient of the seven agreed (~1e-7 against fla's float32, 1e-10 against the transcriptions).

Found and fixed (``dsfc/analysis/stability.py``, ``IntervalProver._sign_cases``): the preconditioned gated delta rule
was eigenvalues "unknown (-248.8, 1)". Interval arithmetic read x and |x| of softsign x / (1 + |x|) apart (x in
[-13.6, inf) gave [-13.6, inf), so the key scale exp(-log(1.5) s) reached 250); a rational function of x and |x| is
now ranged on each sign of x (|x| = x, then -x): softsign in [-0.93, 1), the scale in (2/3, 1.46], the report
(-0.459, 1), |lambda| < 1, the truth.

Not done: log_linear_attn (its Fenwick-tree levels move state between levels by the token's position: a DSF with A
reading t's binary digits, not written), gsa / abc (a softmax over slots of the state's read: not linear in the state),
titans / ttt (a layer norm inside the inner loss), mesa_net (a linear solve with the state), gated_oja_rule (no
pure-torch reference in fla-core 0.6.0), fla's Triton kernels themselves (no driver on CPU).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # dsf_testing (a plain module)

import pytest  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dsf_testing import (BACKENDS, F64, INTERPRETER_WARNINGS, case_builds, compile_and_build, rel_err,  # noqa: E402
                         spec_hunt_tests)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402

H, K, V = 2, 4, 3  # the specs' default dims (RWKV-7's value width is K)
GN_EPS = 0.00064  # fla's RWKV-7 GroupNorm eps is head_dim * 1e-5 (64 * 1e-5 at its head size)

HEAD = """\
dim H = 2
dim K = 4
dim V = 3
"""
CORE = """\
state S[h: H, a: K, b: V]
output y[h: H, b: V]
"""
QK_L2 = """\
let q[h: H, a: K] = qr[h, a] / sqrt(sum(a2, qr[h, a2] ^ 2))
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
"""
READ = """\
drive v
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""

IPLR = f"""model IPLR "fla iplr fed as the delta rule: alpha = -kk, beta = kk sigmoid(a)"
{HEAD}dim d = H * (3 * K + V + 1)
input u[d]
{CORE}let q[h: H, a: K] = u[h * K + a]
let k[h: H, a: K] = u[H * K + h * K + a]
let kkr[h: H, a: K] = u[2 * H * K + h * K + a]
let kk[h: H, a: K] = kkr[h, a] / sqrt(sum(a2, kkr[h, a2] ^ 2))
let v[h: H, b: V] = u[3 * H * K + h * V + b]
let s[h: H] = sigmoid(u[3 * H * K + H * V + h])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - s[h] * kk[h, a] * kk[h, a2])
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * k[h, a]
{READ}"""

IPLR_FREE = f"""model IPLRFree "fla iplr with alpha and beta fed free"
{HEAD}dim d = H * (4 * K + V)
input u[d]
{CORE}let q[h: H, a: K] = u[h * K + a]
let k[h: H, a: K] = u[H * K + h * K + a]
let al[h: H, a: K] = u[2 * H * K + h * K + a]
let be[h: H, a: K] = u[3 * H * K + h * K + a]
let v[h: H, b: V] = u[4 * H * K + h * V + b]
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) + be[h, a] * al[h, a2])
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * k[h, a]
{READ}"""

GDN2 = f"""model GDN2 "fla gdn2: S = (I - k (b k)^T) diag(exp g) S + k (w v)^T"
{HEAD}dim d = H * (4 * K + 2 * V)
input u[d]
{CORE}param A_log[H] ~ uniform(-1, 1)
param dt_bias[H, K] ~ uniform(-1, 1)
let qr[h: H, a: K] = u[h * K + a]
let kr[h: H, a: K] = u[H * K + h * K + a]
{QK_L2}let v[h: H, b: V] = u[2 * H * K + h * V + b]
let g[h: H, a: K] = -exp(A_log[h]) * softplus(u[2 * H * K + H * V + h * K + a] + dt_bias[h, a])
let eb[h: H, a: K] = sigmoid(u[3 * H * K + H * V + h * K + a])
let wv[h: H, b: V] = sigmoid(u[4 * H * K + H * V + h * V + b])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (
    (delta(a, a2) - k[h, a] * eb[h, a2] * k[h, a2]) * exp(g[h, a2]))
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * k[h, a] * wv[h, b]
{READ}"""

PRECOND = f"""model PrecondGDN "fla precond_gated_delta_rule: the gated delta rule with a preconditioned write key"
{HEAD}dim d = H * (2 * K + V + 4)
input u[d]
{CORE}param A_log[H] ~ uniform(-1, 1)
param dt_bias[H] ~ uniform(-1, 1)
let qr[h: H, a: K] = u[h * K + a]
let kr[h: H, a: K] = u[H * K + h * K + a]
{QK_L2}let v[h: H, b: V] = u[2 * H * K + h * V + b]
let g[h: H] = -exp(A_log[h]) * softplus(u[2 * H * K + H * V + h] + dt_bias[h])
let beta[h: H] = sigmoid(u[2 * H * K + H * V + H + h])
let gatk[h: H] = logsigmoid(u[2 * H * K + H * V + 2 * H + h])
let batk[h: H] = sigmoid(u[2 * H * K + H * V + 3 * H + h])
let atk[h: H, a: K] = scan(exp(gatk[h]), batk[h] * k[h, a] ^ 2)
let r[h: H, a: K] = log(atk[h, a] + 0.000001) + 0.2
let m[h: H, a: K] = exp(-log(1.5) * r[h, a] / (1 + abs(r[h, a])))
let kp[h: H, a: K] = k[h, a] * m[h, a]
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * exp(g[h]) * (delta(a, a2) - beta[h] * kp[h, a] * k[h, a2])
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * beta[h] * kp[h, a]
{READ}"""

RWKV7 = f"""model RWKV7 "fla rwkv7 time mix after the token shift: k update, kk, DPLR core, group norm, bonus, gate"
dim H = 2
dim K = 4
dim d = H * 6 * K
input u[d]
state S[h: H, a: K, b: K]
output y[h: H, b: K]
param k_k[H, K] ~ uniform(0.5, 1.5)
param k_a[H, K] ~ uniform(0.5, 1.5)
param r_k[H, K] ~ uniform(-1, 1)
param gn_w[H, K] ~ uniform(0.5, 1.5)
param gn_b[H, K] ~ uniform(-0.5, 0.5)
let r[h: H, a: K] = u[h * K + a]
let k0[h: H, a: K] = u[H * K + h * K + a]
let v[h: H, b: K] = u[2 * H * K + h * K + b]
let av[h: H, a: K] = sigmoid(u[3 * H * K + h * K + a])
let w[h: H, a: K] = exp(-exp(-0.5) * sigmoid(u[4 * H * K + h * K + a]))
let gt[h: H, b: K] = u[5 * H * K + h * K + b]
let kkr[h: H, a: K] = k0[h, a] * k_k[h, a]
let kk[h: H, a: K] = kkr[h, a] / sqrt(sum(a2, kkr[h, a2] ^ 2))
let k[h: H, a: K] = k0[h, a] * (1 + (av[h, a] - 1) * k_a[h, a])
let bonus[h: H] = sum(a, r[h, a] * k[h, a] * r_k[h, a])
drive v
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) * w[h, a] - kk[h, a] * av[h, a] * kk[h, a2])
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * k[h, a]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * r[h, a]
post mu[h: H] = sum(b, y[h, b]) / K
post var[h: H] = sum(b, (y[h, b] - mu[h]) ^ 2) / K
post out[h: H, b: K] = gt[h, b] * (
    (y[h, b] - mu[h]) / sqrt(var[h] + {GN_EPS}) * gn_w[h, b] + gn_b[h, b] + bonus[h] * v[h, b])
"""

FOX = f"""model FoX "fla forgetting_attn: softmax attention with a forget gate per head"
{HEAD}dim d = H * (2 * K + V + 1)
input u[d]
state S[h: H, e: taylor(K, inf), b: V]
output y[h: H, b: V]
let q[h: H, a: K] = u[h * K + a]
let k[h: H, a: K] = u[H * K + h * K + a]
let v[h: H, b: V] = u[2 * H * K + h * V + b]
let f[h: H] = sigmoid(u[2 * H * K + H * V + h])
let qf[h: H, e: taylor(K, inf)] = taylor(a, q[h, a])
let kf[h: H, e: taylor(K, inf)] = taylor(a, k[h, a])
let z[h: H, e: taylor(K, inf)] = scan(f[h], kf[h, e])
let eta[h: H] = sum(e, qf[h, e] * z[h, e])
let eta_prev[h: H] = prev(eta[h])
drive v
A[(h, e, b), (h2, e2, b2)] = delta(h, h2) * delta(e, e2) * delta(b, b2) * f[h] * eta_prev[h] / eta[h]
B[(h, e, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * kf[h, e] / eta[h]
C[(o, c), (h, e, b)] = delta(o, h) * delta(c, b) * qf[h, e]
"""

LIGHTNING = f"""model Lightning "fla lightning_attn at layer 1 of 4: a fixed decay per head"
{HEAD}dim d = H * (2 * K + V)
input u[d]
{CORE}let q[h: H, a: K] = u[h * K + a]
let k[h: H, a: K] = u[H * K + h * K + a]
let v[h: H, b: V] = u[2 * H * K + h * V + b]
let alpha[h: H] = exp(-(8 / H) * (1 - 1 / 4) * h)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * alpha[h]
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * k[h, a]
{READ}"""

LIGHTNET = f"""model LightNet "fla lightnet: GLA with k = exp(x - z), g = z_prev - z, z = logcumsumexp(x) per key"
{HEAD}dim d = H * (2 * K + V)
input u[d]
{CORE}let q[h: H, a: K] = u[h * K + a]
let ex[h: H, a: K] = exp(u[H * K + h * K + a])
let v[h: H, b: V] = u[2 * H * K + h * V + b]
let Z[h: H, a: K] = cumsum(ex[h, a])
let Zp[h: H, a: K] = prev(Z[h, a])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * Zp[h, a] / Z[h, a]
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * ex[h, a] / Z[h, a]
{READ}"""

CASES = {
    "iplr": (IPLR, Family.CHUNKED_DPLR),
    "gdn2": (GDN2, Family.CHUNKED_DPLR),
    "precond": (PRECOND, Family.CHUNKED_DELTA),
    "rwkv7": (RWKV7, Family.CHUNKED_DPLR),
    "fox": (FOX, Family.QUADRATIC),
    "lightning": (LIGHTNING, Family.CHUNKED_OUTER),
    "lightnet": (LIGHTNET, Family.CHUNKED_OUTER),
}
# the packed blocks of u per spec, in order, each [.., H, width]
LAYOUT = {"iplr": [K, K, K, V, 1], "gdn2": [K, K, V, K, K, V], "precond": [K, K, V, 1, 1, 1, 1],
          "rwkv7": [K] * 6, "fox": [K, K, V, 1], "lightning": [K, K, V], "lightnet": [K, K, V]}


def unpack(name: str, u: torch.Tensor) -> list[torch.Tensor]:
    out, at = [], 0
    for width in LAYOUT[name]:
        out.append(u[..., at:at + H * width].reshape(*u.shape[:-1], H, width))
        at += H * width
    assert at == u.shape[-1]
    return out


def l2(x):
    return x / x.norm(dim=-1, keepdim=True)


def lightning_gamma(num_layers: int = 4, layer_idx: int = 1) -> torch.Tensor:
    """fla/ops/lightning_attn/chunk.py chunk_lightning_attn: g_gamma = -(8 / H (1 - layer_idx / L)) arange(H)."""
    return -(8 / H * (1 - layer_idx / num_layers)) * torch.arange(H, dtype=F64)


# ---------------------------------------------------------------------------------------------------------------------
# float64 transcriptions of fla's reference code ([B, T, H, .] in, o [B, T, H, V] and S [B, H, K, V] out)
# ---------------------------------------------------------------------------------------------------------------------


def _state(q, v, h0):
    return q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[-1]) if h0 is None else h0.clone()


def _out(o, q, v):
    return torch.stack(o, 1) if o else q.new_zeros(*q.shape[:3], v.shape[-1])


def iplr_loop(q, k, v, alpha, beta, h0=None):
    """fla/ops/generalized_delta_rule/iplr/naive.py iplr_recurrence: S += k v^T + beta (alpha^T S) (alpha^T S read
    from the old S), o = S^T (K^-1/2 q)."""
    S, o = _state(q, v, h0), []
    for t in range(q.shape[1]):
        read = torch.einsum("bhk,bhkv->bhv", alpha[:, t], S)
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :] + beta[:, t, :, :, None] * read[..., None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, S))
    return _out(o, q, v), S


def gdn2_loop(q, k, v, g, b, w, h0=None):
    """fla/ops/gdn2/naive.py naive_recurrent_gdn2: S = S exp(g) per key; erase = (b k)^T S; S += k (w v - erase)^T;
    o = S^T (K^-1/2 q)."""
    S, o = _state(q, v, h0), []
    for t in range(q.shape[1]):
        S = S * g[:, t].exp()[..., None]
        erase = torch.einsum("bhk,bhkv->bhv", b[:, t] * k[:, t], S)
        S = S + k[:, t, :, :, None] * (w[:, t] * v[:, t] - erase)[..., None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, S))
    return _out(o, q, v), S


def precond_loop(q, k, v, g_atk, g, beta_atk, beta, h0=None, A0=None):
    """fla/ops/precond_gated_delta_rule/naive.py naive_recurrent_precond_gated_delta_rule (defaults x = 1.5,
    eps = 1e-6, log_atk_scale = -0.2; q, k L2-normalised inside): A = A exp(g_atk) + beta_atk k^2;
    r = log(A + eps) + 0.2; k' = k exp(-log(x) r / (1 + |r|)); S = S exp(g); S += k' (beta (v - k^T S))^T;
    o = S^T (K^-1/2 q). Returns (o, S, A)."""
    q, k = l2(q) * K**-0.5, l2(k)
    S, o = _state(q, v, h0), []
    A = q.new_zeros(q.shape[0], q.shape[2], K) if A0 is None else A0.clone()
    for t in range(q.shape[1]):
        kt = k[:, t]
        A = A * g_atk[:, t].exp()[..., None] + beta_atk[:, t, :, None] * kt**2
        r = torch.log(A + 1e-6) + 0.2
        kp = kt * torch.exp(-math.log(1.5) * r / (1 + r.abs()))
        S = S * g[:, t].exp()[..., None, None]
        vt = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", kt, S))
        S = S + kp[..., None] * vt[..., None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return _out(o, q, v), S, A


def rwkv7_loop(r, w, k0, v, a, gate, P, h0=None):
    """RWKV-7's time mix as fla composes it: k = k_update_ref(k0, a, k_a) (fla/ops/rwkv7/fused_k_update.py),
    kk = L2(k0 k_k); the core of fused_mul_recurrent_rwkv7's kernel (fla/ops/rwkv7/fused_recurrent.py, scale 1):
    S = exp(w) S - (kk a) (kk^T S) + k v^T (the rank-1 read of the old S), o = S^T r; then GroupNorm per head and
    gate_output_correction_ref (fla/ops/rwkv7/gate_output_correction.py): (o + (r . (k r_k)) v) * gate.
    w here is the log decay. Returns (out [B, T, H, K], S)."""
    kk = l2(k0 * P["k_k"])
    k = k0 + k0 * (a - 1) * P["k_a"]
    S, o = _state(r, v, h0), []
    for t in range(r.shape[1]):
        read = torch.einsum("bhk,bhkv->bhv", -kk[:, t], S)
        S = S * w[:, t].exp()[..., None] + (kk[:, t] * a[:, t])[..., None] * read[..., None, :] \
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", r[:, t], S))
    o = _out(o, r, v)
    mu = o.mean(-1, keepdim=True)
    var = ((o - mu) ** 2).mean(-1, keepdim=True)
    o = (o - mu) / torch.sqrt(var + GN_EPS) * P["gn_w"] + P["gn_b"]
    return (o + (r * k * P["r_k"]).sum(-1, keepdim=True) * v) * gate, S


def fox_attn(q, k, v, g):
    """fla/ops/forgetting_attn/naive.py naive_forgetting_attn (no window): softmax over j <= i of
    K^-1/2 q_i . k_j + G_i - G_j, G = cumsum(g), applied to v."""
    T = q.shape[1]
    G = g.cumsum(1)
    G = G.transpose(1, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q * K**-0.5, k) + G[..., :, None] - G[..., None, :]
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v)


def simple_gla_loop(q, k, v, g, h0=None):
    """fla/ops/simple_gla/naive.py naive_recurrent_simple_gla: S = S exp(g) + k v^T, o = S^T (K^-1/2 q)."""
    S, o = _state(q, v, h0), []
    for t in range(q.shape[1]):
        S = S * g[:, t].exp()[..., None, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, S))
    return _out(o, q, v), S


def lightnet_gate(x, z0=None):
    """fla/ops/gsa/gate.py fused_additive_gate_fwd_kernel (LightNet's gate, fla/ops/lightnet/fused_recurrent.py):
    z_t = logaddexp(z_(t-1), x_t) from z_(-1) = z0 (or -inf), k = exp(x - z), g = z_(t-1) - z_t (0 where
    z_(t-1) = -inf). Returns (k, g, z_T)."""
    zp = x.new_full((x.shape[0], *x.shape[2:]), -math.inf) if z0 is None else z0
    ks, gs = [], []
    for t in range(x.shape[1]):
        z = torch.logaddexp(zp, x[:, t])
        ks.append(torch.exp(x[:, t] - z))
        gs.append(torch.where(zp == -math.inf, torch.zeros_like(z), zp - z))
        zp = z
    stack = (lambda xs: torch.stack(xs, 1)) if ks else (lambda xs: x.new_zeros(x.shape))
    return stack(ks), stack(gs), zp


def gla_loop(q, k, v, gk, h0=None):
    """fla/ops/gla/naive.py naive_recurrent_gla: S = S exp(gk) per key + k v^T, o = S^T (K^-1/2 q)."""
    S, o = _state(q, v, h0), []
    for t in range(q.shape[1]):
        S = S * gk[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, S))
    return _out(o, q, v), S


def lightnet_loop(q, x, v, h0=None, z0=None):
    """fused_recurrent_lightnet: the gate above, then GLA. Returns (o, S, z_T)."""
    k, g, z = lightnet_gate(x, z0)
    return (*gla_loop(q, k, v, g, h0), z)


def fla_args(name: str, P: dict, u: torch.Tensor) -> tuple:
    """The spec's inputs (packed u, params by spec name) -> the arguments fla's function takes."""
    parts = unpack(name, u)
    if name == "iplr":
        q, k, kk, v, a = parts
        kk = l2(kk)
        return q, k, v, -kk, kk * a.sigmoid()
    if name == "gdn2":
        q, k, v, g, b, w = parts
        g = -P["A_log"].exp()[:, None] * F.softplus(g + P["dt_bias"])  # naive_kda_gate (fla/ops/kda/gate.py)
        return l2(q), l2(k), v, g, b.sigmoid(), w.sigmoid()
    if name == "precond":
        q, k, v, g, b, ga, ba = parts
        g = -P["A_log"].exp() * F.softplus(g[..., 0] + P["dt_bias"])  # naive_gdn_gate
        return q, k, v, F.logsigmoid(ga[..., 0]), g, ba[..., 0].sigmoid(), b[..., 0].sigmoid()
    if name == "rwkv7":
        r, k0, v, a, w, gate = parts
        return r, -math.exp(-0.5) * w.sigmoid(), k0, v, a.sigmoid(), gate
    if name == "fox":
        q, k, v, g = parts
        return q, k, v, F.logsigmoid(g[..., 0])
    if name == "lightnet":
        return tuple(parts)
    q, k, v = parts
    return q, k, v, lightning_gamma().expand(*u.shape[:2], H)


def transcribed(name: str):
    """``loop(P, u, h0) -> y [B, T, width]`` for dsf_testing."""
    def loop(P, u, h0=None):
        args = fla_args(name, P, u)
        if name == "fox":
            o = fox_attn(*args)
        elif name == "rwkv7":
            o = rwkv7_loop(*args, P, h0=h0)[0]
        else:
            o = LOOPS[name](*args, h0=h0)[0]
        return o.reshape(*u.shape[:2], o.shape[2] * o.shape[3])
    return loop


LOOPS = {"iplr": iplr_loop, "gdn2": gdn2_loop, "precond": precond_loop, "lightning": simple_gla_loop,
         "lightnet": lightnet_loop}
INDEPENDENT = {name: transcribed(name) for name in CASES}
EIGEN = {"iplr": Bound.MARGINAL, "gdn2": Bound.STABLE, "precond": Bound.STABLE, "rwkv7": Bound.STABLE,
         "fox": Bound.UNBOUNDED, "lightning": Bound.MARGINAL, "lightnet": Bound.MARGINAL}

_compiled, _built = case_builds(CASES)

# the chunked DPLR kernels are the interpreter's slowest: checked against the reference by the third test only
_BACKENDS = lambda name: ("torch",) if name in ("gdn2", "rwkv7") else BACKENDS  # noqa: E731
test_fla_layer_matches_its_transcription, test_fla_layer_gradients_match_the_transcription = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, backends=_BACKENDS)[:2]
# FoX's state is a KV cache (no fixed state shape for these two checks): its report is checked below
RECURRENT = {name: case for name, case in CASES.items() if name != "fox"}
test_fla_layer_matches_the_reference_on_every_path, test_fla_layer_structure_report_is_true = spec_hunt_tests(
    RECURRENT, INDEPENDENT, EIGEN, _built)[2:]
test_fla_layer_matches_the_reference_on_every_path = INTERPRETER_WARNINGS(
    test_fla_layer_matches_the_reference_on_every_path)


def test_fox_runs_as_attention_and_is_not_claimed_stable():
    """FoX: the quadratic (attention) form, as fla runs it (parallel_forgetting_attn), with eigenvalues "not proven
    <= 1": f eta_(t-1) / eta_t with a new query each step is not bounded by 1."""
    built = _built("fox")
    assert built.result.structure.family == Family.QUADRATIC, built.result.structure.family_reason
    assert built.result.report.eigen_bound == Bound.UNBOUNDED, built.result.report.eigen_reason


# ---------------------------------------------------------------------------------------------------------------------
# final and carried state; the transcriptions against fla itself
# ---------------------------------------------------------------------------------------------------------------------


def _inputs(built, b: int, t: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
    # the value width (FoX's state shape, infinite, is not asked)
    width = K if built.result.module_name == "rwkv7" else V
    return u, 0.5 * torch.randn(b, H, K, width, generator=gen, dtype=F64), gen


def _transcription_with_state(name, P, u, h0, A0=None):
    """(o [B, T, width], final state in the module's layout) from the transcription."""
    args = fla_args(name, P, u)
    if name == "precond":
        o, S, A = precond_loop(*args, h0=h0, A0=A0)
        return o.reshape(*u.shape[:2], -1), {"h": S, "atk": A}
    o, S = rwkv7_loop(*args, P, h0=h0) if name == "rwkv7" else LOOPS[name](*args, h0=h0)[:2]
    return o.reshape(*u.shape[:2], -1), S


def _err(got, want):
    if isinstance(want, dict):
        return max(rel_err(got[k], want[k]) for k in want)
    return rel_err(got, want)


@pytest.mark.parametrize("name", ["iplr", "gdn2", "precond", "rwkv7", "lightning"])
def test_final_state_and_a_split_sequence_match_the_transcription(name):
    """The final state from an initial state at odd T (precond: its ATK accumulator too, fla's initial_A_state), and
    T = 9 run as 4 + 5 with the state carried, on the torch path and token by token; fla's [B, H, K, V] layout."""
    built = _built(name)
    u, h0, gen = _inputs(built, 2, 9, 7)
    P = built.params()
    A0 = torch.rand(2, H, K, generator=gen, dtype=F64) if name == "precond" else None
    init = {"h": h0, "atk": A0} if name == "precond" else h0
    y, S = _transcription_with_state(name, P, u, h0, A0)
    model = built.model
    with torch.no_grad():
        y_all, h_all = model(u, initial_state=init, output_final_state=True)
        y1, h1 = model(u[:, :4], initial_state=init, output_final_state=True)
        y2, h2 = model(u[:, 4:], initial_state=h1, output_final_state=True)
        state, ys = init, []
        for t in range(9):
            y_t, state = model.step(u[:, t], state)
            ys.append(y_t)
    assert rel_err(y_all, y) < 1e-10 and _err(h_all, S) < 1e-10
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and _err(h2, S) < 1e-10
    assert rel_err(torch.stack(ys, 1), y) < 1e-10 and _err(state, S) < 1e-10


def _call_fla(name: str, args: tuple, P: dict, h0):
    """fla's own functions on float32 copies of the arguments; returns (o [B, T, width], final state or None)."""
    import importlib

    def fn(module, function):
        return getattr(importlib.import_module(module), function)

    f32 = [a.float() for a in args]
    P = {k: v.float() for k, v in P.items()}
    h0 = None if h0 is None else h0.float()
    if name == "iplr":  # head-first [B, H, T, .]
        q, k, v, alpha, beta = (a.transpose(1, 2) for a in f32)
        o, S = fn("fla.ops.generalized_delta_rule.iplr.naive", "iplr_recurrence")(q, k, v, alpha, beta,
                                                                                  initial_state=h0)
        return o.transpose(1, 2), S
    if name == "gdn2":
        return fn("fla.ops.gdn2.naive", "naive_recurrent_gdn2")(*f32, initial_state=h0, output_final_state=True)
    if name == "precond":
        o, S, _ = fn("fla.ops.precond_gated_delta_rule.naive", "naive_recurrent_precond_gated_delta_rule")(
            *f32, initial_state=h0, output_final_state=True)
        return o, S
    if name == "rwkv7":
        r, w, k0, v, a, gate = f32
        kk = l2(k0 * P["k_k"])
        k = fn("fla.ops.rwkv7.fused_k_update", "k_update_ref")(k0, a, P["k_a"])
        # dplr_recurrence scales q by K^-1/2; fused_mul_recurrent_rwkv7 runs its kernel with scale 1
        o, S = fn("fla.ops.generalized_delta_rule.dplr.naive", "dplr_recurrence")(
            *(x.transpose(1, 2) for x in (r * K**0.5, k, v, -kk, kk * a, w)), initial_state=h0)
        B, T = r.shape[:2]
        o = F.group_norm(o.transpose(1, 2).reshape(B * T, H * K), H, P["gn_w"].reshape(-1), P["gn_b"].reshape(-1),
                         eps=GN_EPS).reshape(B, T, H * K)
        out = fn("fla.ops.rwkv7.gate_output_correction", "gate_output_correction_ref")(
            o, r, k, P["r_k"], v, gate.reshape(B, T, H * K))
        return out, S
    if name == "fox":
        return fn("fla.ops.forgetting_attn.naive", "naive_forgetting_attn")(*f32), None
    if name == "lightnet":  # fla's gate is a Triton kernel only: the transcribed gate, then fla's naive GLA
        q, x, v = f32
        k, g, _ = lightnet_gate(x)
        return fn("fla.ops.gla.naive", "naive_recurrent_gla")(q, k, v, g, initial_state=h0, output_final_state=True)
    return fn("fla.ops.simple_gla.naive", "naive_recurrent_simple_gla")(*f32, initial_state=h0,
                                                                        output_final_state=True)


@pytest.mark.parametrize("name", list(CASES))
def test_transcription_matches_fla(name):
    """Where fla is installed: each transcription above against fla's own code (float32, so 1e-5), at T = 7 from an
    initial state (none for fox, which has no state in fla, and for precond, whose ATK state starts at 0 in both)."""
    pytest.importorskip("fla")
    built = _built(name)
    u, h0, _ = _inputs(built, 2, 7, 11)
    if name in ("fox", "precond"):
        h0 = None
    P = built.params()
    args = fla_args(name, P, u)
    if name == "fox":
        o, S = fox_attn(*args).reshape(2, 7, -1), None
    else:
        o, S = _transcription_with_state(name, P, u, h0)
        S = S["h"] if isinstance(S, dict) else S
    o_fla, S_fla = _call_fla(name, args, P, h0)
    assert rel_err(o_fla.reshape(2, 7, -1), o) < 1e-5
    if S is not None:
        assert rel_err(S_fla, S) < 1e-5


def test_free_iplr_is_reported_unknown_and_exceeds_one():
    """alpha, beta free: A = I + beta alpha^T has the eigenvalue 1 + alpha . beta, anywhere in (-inf, inf); the
    report says so ("unknown (-inf, inf)") and the module's A_t has eigenvalues above 1 and below -1."""
    built = compile_and_build(IPLR_FREE, path="iplr_free.dsf")
    report = built.result.report
    assert built.result.structure.family == Family.CHUNKED_DPLR
    assert report.eigen_bound == Bound.UNKNOWN and report.eigen_interval == "(-inf, inf)", report.eigen_reason
    gen = torch.Generator().manual_seed(3)
    lam = torch.linalg.eigvals(built.dsf_matrices(2 * torch.randn(4, 8, built.d_in(), generator=gen, dtype=F64))[0])
    assert lam.real.max() > 1.5 and lam.real.min() < -1


def test_precond_key_scale_is_bounded_on_each_sign():
    """The fix: softsign of r = log(A + 1e-6) + 0.2 in [-13.6, inf) is read on each sign of r, [-0.93, 1), so the
    key scale is in (2/3, 1.46] and A's eigenvalue exp(g) (1 - beta sum(k^2 m)) in (-0.459, 1). The module's A_t
    at saturated gates (beta near 1, the ATK accumulator near 0 so the scale is largest) stays inside."""
    built = _built("precond")
    report = built.result.report
    assert report.eigen_interval == "(-0.458959, 1)", report.eigen_reason
    assert "m in (0.666667, 1.45896]" in report.eigen_reason
    u, _, gen = _inputs(built, 4, 12, 12)
    off = 2 * H * K + H * V
    u[..., off:off + H] = -6.0  # g near 0: exp(g) near 1
    u[..., off + H:off + 2 * H] = 8.0  # beta near 1
    u[..., off + 3 * H:off + 4 * H] = -12.0  # beta_atk near 0: A small, the scale near its top
    lam = torch.linalg.eigvals(built.dsf_matrices(u, {"atk": torch.zeros(4, H, K, dtype=F64)})[0])
    assert lam.imag.abs().max() < 1e-12
    assert (lam.real > -0.459).all() and (lam.real < 1).all() and lam.real.min() < -0.3


SOFTSIGN = """model Softsign "a decay from softsign: (1 + x / (1 + |x|)) / 2 in (0, 1)"
dim K = 3
input u[K]
state s[a: K]
output y[a: K]
let x[a: K] = 4 * u[a]
let lam[a: K] = (1 + x[a] / (1 + abs(x[a]))) / 2
A[a, a2] = delta(a, a2) * lam[a]
B[a, a2] = delta(a, a2)
C[a, a2] = delta(a, a2)
"""


def test_softsign_decay_is_stable():
    """The sign-case rule alone: a decay (1 + softsign(x)) / 2 with x unbounded is in (0, 1) (interval arithmetic:
    x / (1 + |x|) of x in (-inf, inf) was (-inf, inf), "unknown"); sampled decays lie there."""
    built = compile_and_build(SOFTSIGN, path="softsign.dsf")
    report = built.result.report
    assert report.eigen_bound == Bound.STABLE and report.eigen_interval == "(0, 1)", report.eigen_reason
    gen = torch.Generator().manual_seed(4)
    lam = torch.linalg.eigvals(built.dsf_matrices(3 * torch.randn(2, 9, 3, generator=gen, dtype=F64))[0]).real
    assert (lam > 0).all() and (lam < 1).all()


# grouped value heads (fla's GVA: HV = H * R value heads, each group of R sharing its key head's q, k and ATK state)
PRECOND_GVA = f"""model PrecondGVA "precond gated delta rule: 4 value heads in groups of 2 sharing a key head"
{HEAD}dim R = 2
dim HV = H * R
dim d = 2 * H * K + HV * V + 2 * HV + 2 * H
input u[d]
state S[h: HV, a: K, b: V]
output y[h: HV, b: V]
param A_log[HV] ~ uniform(-1, 1)
param dt_bias[HV] ~ uniform(-1, 1)
let qr[h: H, a: K] = u[h * K + a]
let kr[h: H, a: K] = u[H * K + h * K + a]
{QK_L2}let v[h: HV, b: V] = u[2 * H * K + h * V + b]
let g[h: HV] = -exp(A_log[h]) * softplus(u[2 * H * K + HV * V + h] + dt_bias[h])
let beta[h: HV] = sigmoid(u[2 * H * K + HV * V + HV + h])
let gatk[h: H] = logsigmoid(u[2 * H * K + HV * V + 2 * HV + h])
let batk[h: H] = sigmoid(u[2 * H * K + HV * V + 2 * HV + H + h])
let atk[h: H, a: K] = scan(exp(gatk[h]), batk[h] * k[h, a] ^ 2)
let r[h: H, a: K] = log(atk[h, a] + 0.000001) + 0.2
let m[h: H, a: K] = exp(-log(1.5) * r[h, a] / (1 + abs(r[h, a])))
let kp[h: H, a: K] = k[h, a] * m[h, a]
drive v
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * exp(g[h]) * (
    delta(a, a2) - beta[h] * kp[h // R, a] * k[h // R, a2])
B[(h, a, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * beta[h] * kp[h // R, a]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h // R, a] / sqrt(K)
"""


def _gva_args(built, u):
    """fla's arguments (key heads for q, k, g_atk, beta_atk; value heads for v, g, beta) from the packed u."""
    B, T, R = u.shape[0], u.shape[1], 2
    widths = [(H, K), (H, K), (H * R, V), (H * R, 1), (H * R, 1), (H, 1), (H, 1)]
    parts, at = [], 0
    for n, w in widths:
        parts.append(u[..., at:at + n * w].reshape(B, T, n, w))
        at += n * w
    q, k, v, g, b, ga, ba = parts
    P = built.params()
    g = -P["A_log"].exp() * F.softplus(g[..., 0] + P["dt_bias"])
    return q, k, v, F.logsigmoid(ga[..., 0]), g, ba[..., 0].sigmoid(), b[..., 0].sigmoid()


def test_precond_with_grouped_value_heads_matches_the_transcription():
    """fla's GVA path (repeat_interleave of q, k, g_atk, beta_atk over each group, as its naive function does) against
    the spec reading the key head h // R: still the chunked delta rule and |lambda| < 1; torch path from an initial
    state, Triton, step, and the final state, T = 9."""
    built = compile_and_build(PRECOND_GVA, path="precond_gva.dsf")
    assert built.result.structure.family == Family.CHUNKED_DELTA, built.result.structure.family_reason
    assert built.result.report.eigen_bound == Bound.STABLE, built.result.report.eigen_reason
    gen = torch.Generator().manual_seed(14)
    u = torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
    h0 = 0.5 * torch.randn(2, 2 * H, K, V, generator=gen, dtype=F64)
    q, k, v, ga, g, ba, b = _gva_args(built, u)
    q, k, ga, ba = (x.repeat_interleave(2, dim=2) for x in (q, k, ga, ba))
    o, S, _ = precond_loop(q, k, v, ga, g, ba, b, h0=h0)
    o = o.reshape(2, 9, -1)
    for backend in BACKENDS:
        built.model.backend = backend
        with torch.no_grad():
            y, state = built.model(u, initial_state={"h": h0}, output_final_state=True)
        assert rel_err(y, o) < 1e-10 and rel_err(state["h"], S) < 1e-10, backend
    built.model.backend = "torch"
    state, ys = {"h": h0}, []
    with torch.no_grad():
        for t in range(9):
            y_t, state = built.model.step(u[:, t], state)
            ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), o) < 1e-10 and rel_err(state["h"], S) < 1e-10


def test_precond_gva_transcription_matches_fla():
    """Where fla is installed: the GVA transcription above against naive_recurrent_precond_gated_delta_rule with
    4 value heads and 2 key heads (float32, 1e-5)."""
    pytest.importorskip("fla")
    from fla.ops.precond_gated_delta_rule.naive import naive_recurrent_precond_gated_delta_rule

    built = compile_and_build(PRECOND_GVA, path="precond_gva.dsf")
    u = torch.randn(2, 7, built.d_in(), generator=torch.Generator().manual_seed(15), dtype=F64)
    args = _gva_args(built, u)
    q, k, v, ga, g, ba, b = args
    o, S, _ = precond_loop(*(x.repeat_interleave(2, dim=2) for x in (q, k)), v,
                           *(x.repeat_interleave(2, dim=2) for x in (ga,)), g, ba.repeat_interleave(2, dim=2), b)
    o_fla, S_fla, _ = naive_recurrent_precond_gated_delta_rule(*(x.float() for x in args), output_final_state=True)
    assert rel_err(o_fla, o) < 1e-5 and rel_err(S_fla, S) < 1e-5


def test_lightnet_carries_fla_log_normaliser_as_its_running_sum():
    """LightNet's carried state: dsfc's h is fla's S and its running Z is exp(z), fla's log-normaliser; T = 9 run as
    4 + 5 with the state dict carried (and token by token) equals the whole run and the transcription continued from
    (S, z) at t = 4. From an h0 alone fla starts g at 0 (decay 1), as dsfc starts prev(Z) at Z_0 (Z_0 / Z_0 = 1)."""
    built = _built("lightnet")
    u, h0, _ = _inputs(built, 2, 9, 16)
    q, x, v = fla_args("lightnet", built.params(), u)
    o, S, z = lightnet_loop(q, x, v, h0=h0)
    o1, S1, z1 = lightnet_loop(q[:, :4], x[:, :4], v[:, :4], h0=h0)
    o2, S2, z2 = lightnet_loop(q[:, 4:], x[:, 4:], v[:, 4:], h0=S1, z0=z1)
    assert rel_err(torch.cat([o1, o2], 1), o) < 1e-12 and rel_err(S2, S) < 1e-12
    model = built.model
    with torch.no_grad():
        y, state = model(u, initial_state={"h": h0}, output_final_state=True)
        y1, s1 = model(u[:, :4], initial_state={"h": h0}, output_final_state=True)
        y2, s2 = model(u[:, 4:], initial_state=s1, output_final_state=True)
        st, ys = {"h": h0}, []
        for t in range(9):
            y_t, st = model.step(u[:, t], st)
            ys.append(y_t)
    o = o.reshape(2, 9, H * V)
    assert rel_err(y, o) < 1e-10 and rel_err(state["h"], S) < 1e-10 and rel_err(state["Z"], z.exp()) < 1e-10
    assert rel_err(torch.cat([y1, y2], 1), o) < 1e-10 and rel_err(s1["Z"], z1.exp()) < 1e-10
    assert rel_err(s2["h"], S) < 1e-10 and rel_err(torch.stack(ys, 1), o) < 1e-10 and rel_err(st["h"], S) < 1e-10
