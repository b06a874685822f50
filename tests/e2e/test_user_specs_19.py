"""A nineteenth new-spec hunt: adaptive-filter and eligibility-trace memories, selective and reparametrised SSMs, and
two normalised reads. S7's input-dependent diagonal SSM (StableSSM reparametrisation lam = -1 / (0.5 + w^2), ZOH), a
time-invariant dense A bounded by its Frobenius norm (tanh(s) W / ||W||_F), normalised-LMS adaptive filters whose
taps are a window of a reference signal (two-stream input, read before the update), the Dutch eligibility trace of
true-online TD(lambda) (a vector-state delta rule), an exponential window of W steps (an EMA minus the input leaving
the window), a delta rule with a value-side gate (S = (I - be k k^T) S diag(ga) + be k v^T), a time-invariant
reflection RNN (A = g (I - 2 v v^T / |v|^2), eigenvalues g and -g), a multi-rate EMA bank at d = 1 (rates
r^(2^j)), and linear attention whose normaliser is a ones column of the state, divided out in a post; the same layer
dividing by the state inside C, and Oja's rule, are not DSFs.

Checked (each against an independent float64 implementation written here from the model's equations, not from
dsfc's reference: the S7 / ZOH step, the matrix recurrence with A formed here, the NLMS update, the true-online
trace, the truncated exponential sum over the window, the gated delta update, the reflection, the EMA bank, the
normalised attention as a ratio of prefix sums): forward at T = 0, 1, 7 and 9 on the torch path and at T = 0 and 9
on the Triton path (interpreted), batch 1 and 3, from zero and, where the state is a plain tensor, from an initial
state; token-by-token step; gradients of the input and every parameter on the torch and Triton paths; against
dsfc's reference through ``check_all_paths`` (final state, step, gradients of u, h0 and the parameters); the family
and eigenvalue bound of ``dsfc analyze``, a claimed bound checked on the module's own A. Errors: C dividing by a
read of the state, and Oja's let reading the state, refused at their lines with the hint (which names the post
form NormPost follows). Every spec passes ``dsfc check``.

Found and fixed:
- An index over fewer values than the axis it subscripts (``post o[b: V] = y[b] / y[V]`` over an output of V + 1,
  the data part of a state widened by a normaliser slot) was refused with no hint, though the language reads such a
  part as ``y[b + 0]``; and one over more values (``W_V[b, m]`` with b over V + 1, the extra term zeroed by
  ``(1 - delta(b, V))``) gave no way out either. Both errors now carry a hint: ``b + 0`` for the first entries, and
  a wider declaration or, where a factor zeroes the terms past the end, a wrapped read ``b % V`` (lang.check).

The dense A = tanh(s) W / ||W||_F was "unknown" here (no norm rule in the prover); a later session added one (its
spectral radius is at most its Frobenius norm |tanh(s)| < 1): now ``|lambda| < 1``.

Left weaker than the truth (no false claim): the Dutch trace's second eigenvalue
gl (1 - al |phi|^2) is "unknown" (|phi|^2 = sum of K tanh^2 is bounded only by the dim K: at K = 7 and al = 0.1 the
trace is stable, at K >= 20 it may not be, so "unknown" is right for a dim-free claim). NLMS with a learned epsilon
(``param eps``) is "unknown", rightly (a trained epsilon may turn negative); with the literal 0.01 it is proved
``|lambda| <= 1`` on (-1, 1] from mu in (0, 2).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, case_builds, check_all_paths, spec_hunt_tests,  # noqa: E402
                         stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.lang.errors import SpecErrors  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

S7 = """
model S7Sel "S7: input-dependent diagonal SSM, StableSSM reparametrisation lam = -1 / (0.5 + w^2), ZOH, D skip"
dim d = 3
dim n = 5
input u[d]
state x[c: d, j: n]
output y[d]
param W_l[n, d] ~ normal(0, 0.5)
param b_l[n] ~ normal(0, 1)
param W_dt[d, d] ~ normal(0, 0.5)
param dt_b[d] = -1
param W_B[n, d] ~ normal(0, 0.5)
param W_C[n, d] ~ normal(0, 0.5)
param Dk[d] ~ ones()
let w[j: n] = sum(m, W_l[j, m] * u[m]) + b_l[j]
let lam[j: n] = -1 / (0.5 + w[j] ^ 2)
let dt[c: d] = softplus(sum(m, W_dt[c, m] * u[m]) + dt_b[c])
let Bk[j: n] = sum(m, W_B[j, m] * u[m])
let Ck[j: n] = sum(m, W_C[j, m] * u[m])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(dt[c] * lam[j])
B[(c, j), m] = delta(c, m) * (exp(dt[c] * lam[j]) - 1) / lam[j] * Bk[j]
C[o, (c, j)] = delta(o, c) * Ck[j]
D[o, m] = delta(o, m) * Dk[m]
"""

SPECTRAL = """
model SpectralDense "LTI dense A = tanh(s) W / ||W||_F: the Frobenius norm bounds the spectral radius, |lam| < 1"
dim d = 2
dim N = 5
input u[d]
state h[N]
output y[d]
param W[N, N] ~ normal(0, 1)
param s ~ normal(0, 1)
param Win[N, d] ~ normal(0, 0.5)
param Wout[d, N] ~ normal(0, 0.5)
let fro = sqrt(sum(i, sum(j, W[i, j] ^ 2)))
A[i, j] = tanh(s) * W[i, j] / fro
B[i, m] = Win[i, m]
C[o, i] = Wout[o, i]
"""

NLMS = """
model NLMS "normalised LMS adaptive filters per channel: w = w + mu e x / (eps + |x|^2), x the last L reference samples"
dim E = 3
dim L = 4
input u[s: 2, c: E]          # s = 0: the reference signal, s = 1: the desired signal
state w[c: E, a: L]
output y[E]                  # the a-priori prediction w_(t-1) . x_t
param mu_p[E] ~ normal(0, 1)
let mu[c: E] = 2 * sigmoid(mu_p[c])
let xw[c: E, a: L] = window(u[0, c])       # x_(t-L+1), ..., x_t
let nrm[c: E] = 0.01 + sum(a, xw[c, a] ^ 2)
A[(c, a), (c2, a2)] = delta(c, c2) * (delta(a, a2) - mu[c] * xw[c, a] * xw[c, a2] / nrm[c])
B[(c, a), (s, m)] = delta(c, m) * delta(s, 1) * mu[c] * xw[c, a] / nrm[c]
C[o, (c, a)] = delta(o, c) * xw[c, a]
readout pre
"""

DUTCH = """
model DutchTrace "true-online TD(lambda) Dutch eligibility trace: e = gl (I - al phi phi^T) e + al phi, phi = tanh(W u)"
dim d = 4
dim K = 7
input u[d]
state e[K]
output y[1]
param W[K, d] ~ normal(0, 0.5)
param g_p ~ normal(2, 1)
param al = 0.1
param th[K] ~ normal(0, 1)
let gl = sigmoid(g_p)
let phi[a: K] = tanh(sum(m, W[a, m] * u[m]))
A[a, a2] = gl * (delta(a, a2) - al * phi[a] * phi[a2])
drive phi
B[a, a2] = al * delta(a, a2)
C[o, a] = th[a]
"""

TRUNC_EMA = """
model TruncEMA "exponential window of W = 4 steps: h = a h + u - a^W u_(t-W), y = (1 - a) / (1 - a^W) h"
dim d = 3
dim Wd = 4
input u[d]
state h[d]
output y[d]
param a_p[d] ~ normal(1, 0.5)
let a[c: d] = sigmoid(a_p[c])
let uw[c: d, w: Wd + 1] = window(u[c])        # u_(t-W), ..., u_t
let x[c: d] = u[c] - a[c] ^ Wd * uw[c, 0]
drive x
A[i, j] = delta(i, j) * a[i]
B[i, m] = delta(i, m)
C[o, i] = delta(o, i) * (1 - a[i]) / (1 - a[i] ^ Wd)
"""

DELTA_VGATE = """
model DeltaValueGate "delta rule with a value-side gate: S = (I - be k k^T) S diag(ga) + be k v^T, ga per value slot"
dim d = 5
dim H = 1
dim K = 3
dim V = 5
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_b[H, d] ~ normal(0, 0.5)
param W_g[H, V, d] ~ normal(0, 0.5)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let be[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
let ga[h: H, b: V] = sigmoid(sum(m, W_g[h, b, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * ga[h, b] * (delta(a, a2) - be[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = be[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

REFLECT = """
model ReflectRNN "time-invariant reflection RNN per head: A = g (I - 2 v v^T / |v|^2), eigenvalues g and -g"
dim d = 2
dim H = 3
dim K = 4
input u[d]
state h[g: H, a: K]
output y[d]
param v[H, K] ~ normal(0, 1)
param g_p[H] ~ normal(0, 1)
param W_i[H, K, d] ~ normal(0, 0.5)
param W_o[d, H, K] ~ normal(0, 0.5)
let gg[g: H] = sigmoid(g_p[g])
let vn[g: H, a: K] = v[g, a] / sqrt(sum(a2, v[g, a2] ^ 2))
A[(g, a), (g2, a2)] = delta(g, g2) * gg[g] * (delta(a, a2) - 2 * vn[g, a] * vn[g, a2])
B[(g, a), m] = W_i[g, a, m]
C[o, (g, a)] = W_o[o, g, a]
"""

EMA_BANK = """
model EMABank "multi-rate EMA bank: per-channel learned rate r = sigmoid(.), expansion n with rates r^(2^j), d = 1"
dim d = 1
dim n = 3
input u[d]
state m[c: d, j: n]
output y[d]
param r_p[d] ~ normal(2, 0.5)
param mix[d, n] ~ normal(0, 1)
let r[c: d, j: n] = sigmoid(r_p[c]) ^ (2 ^ j)
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * r[c, j]
B[(c, j), q] = delta(c, q) * (1 - r[c, j])
C[o, (c, j)] = delta(o, c) * mix[c, j]
"""

NORM_POST = """
model NormPost "the hint followed: the normaliser z as a ones column of the state, y = q.S, post o = y[:V] / y[V]"
dim d = 3
dim K = 2
dim V = 2
input u[d]
state S[a: K, b: V + 1]       # b = V holds z = sum k
output y[V + 1]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
let q[a: K] = elu(sum(m, W_Q[a, m] * u[m])) + 1
let k[a: K] = elu(sum(m, W_K[a, m] * u[m])) + 1
let vv[b: V + 1] = sum(m, W_V[b % V, m] * u[m]) * (1 - delta(b, V)) + delta(b, V)
let x[a: K, b: V + 1] = k[a] * vv[b]
drive x
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2)
B[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2)
C[o, (a, b)] = delta(o, b) * q[a]
post o[b: V] = y[b + 0] / y[V]
"""

NORM_STATE = """
model NormFromState "linear attention with its normaliser as a ones column of the state, read as y = q.S / q.z"
dim d = 3
dim K = 2
dim V = 2
input u[d]
state S[a: K, b: V + 1]       # b = V holds z = sum k
output y[V]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
let q[a: K] = elu(sum(m, W_Q[a, m] * u[m])) + 1
let k[a: K] = elu(sum(m, W_K[a, m] * u[m])) + 1
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2)
B[(a, b), m] = k[a] * (W_V[b % V, m] * (1 - delta(b, V)) + delta(b, V) * delta(m, 0))
C[o, (a, b)] = delta(o, b) * q[a] / sum(a2, q[a2] * S[a2, V])
"""

OJA = """
model Oja "Oja's rule as a layer: w = w + eta y (x - y w), y = w . x: the update reads w squared"
dim d = 4
input u[d]
state w[d]
output y[1]
param eta = 0.05
let yo = sum(m, w[m] * u[m])
A[i, j] = delta(i, j) * (1 - eta * yo ^ 2)
B[i, m] = eta * yo * delta(i, m)
C[o, i] = u[i]
"""

CASES = {
    "s7": (S7, Family.DIAGONAL_SCAN),
    "spectral": (SPECTRAL, Family.DENSE_SCAN),
    "nlms": (NLMS, Family.DENSE_SCAN),
    "dutch": (DUTCH, Family.DENSE_SCAN),
    "tema": (TRUNC_EMA, Family.DIAGONAL_SCAN),
    "dvgate": (DELTA_VGATE, Family.DENSE_SCAN),
    "reflect": (REFLECT, Family.DENSE_SCAN),
    "bank": (EMA_BANK, Family.DIAGONAL_SCAN),
    "normpost": (NORM_POST, Family.DIAGONAL_SCAN),
}

sig, softplus, elu1 = torch.sigmoid, torch.nn.functional.softplus, (lambda x: torch.nn.functional.elu(x) + 1)


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d_in] and an initial state in the spec's layout (None: zero; specs
# with running lets are checked from zero only), and returns y [B, T, ...].

def _s7(P, u, h0=None):
    # S7 (Soydan et al. 2024): an input-dependent diagonal Lambda_t under StableSSM's reparametrisation
    # lam = -1 / (0.5 + w^2), ZOH over the step dt: x = e^(dt lam) x + (e^(dt lam) - 1) / lam B_t u, y = C_t . x + D u
    Bsz, T, d = u.shape
    n = P["W_l"].shape[0]
    x, ys = (u.new_zeros(Bsz, d, n) if h0 is None else h0), []
    for t in range(T):
        ut = u[:, t]
        lam = -1 / (0.5 + (ut @ P["W_l"].T + P["b_l"]) ** 2)             # [B, n]
        dt = softplus(ut @ P["W_dt"].T + P["dt_b"])                      # [B, d]
        abar = torch.exp(dt[:, :, None] * lam[:, None, :])               # [B, d, n]
        x = abar * x + (abar - 1) / lam[:, None, :] * (ut @ P["W_B"].T)[:, None, :] * ut[:, :, None]
        ys.append((x * (ut @ P["W_C"].T)[:, None, :]).sum(-1) + P["Dk"] * ut)
    return stack_steps(ys, u, d)


def _spectral(P, u, h0=None):
    # h = A h + W_in u with A = tanh(s) W / ||W||_F formed here; y = W_out h
    A = torch.tanh(P["s"]) * P["W"] / P["W"].norm()
    h, ys = (u.new_zeros(u.shape[0], A.shape[0]) if h0 is None else h0), []
    for t in range(u.shape[1]):
        h = h @ A.T + u[:, t] @ P["Win"].T
        ys.append(h @ P["Wout"].T)
    return stack_steps(ys, u, P["Wout"].shape[0])


def _nlms(P, u, h0=None, L=4, eps=0.01):
    # normalised LMS (Nagumo-Noda; Haykin ch. 6) per channel: taps x_t = the last L reference samples (zeros before
    # the start), prediction y_t = w . x_t before the update, e = d_t - y_t, w += mu e x / (eps + |x|^2)
    Bsz, T, _ = u.shape
    uu = u.reshape(Bsz, T, 2, u.shape[2] // 2)
    E = uu.shape[-1]
    mu = 2 * sig(P["mu_p"])
    ref = torch.cat([u.new_zeros(Bsz, L - 1, E), uu[:, :, 0]], 1)
    w, ys = (u.new_zeros(Bsz, E, L) if h0 is None else h0), []
    for t in range(T):
        x = ref[:, t:t + L].transpose(1, 2)                              # [B, E, L], oldest first
        y = (w * x).sum(-1)
        w = w + (mu * (uu[:, t, 1] - y) / (eps + (x * x).sum(-1)))[..., None] * x
        ys.append(y)
    return stack_steps(ys, u, E)


def _dutch(P, u, h0=None):
    # true-online TD(lambda)'s Dutch trace (van Seijen & Sutton 2014): e = gl e + al phi - al gl (e . phi) phi,
    # phi = tanh(W u), gl = sigmoid(g_p) standing for gamma lambda; read out as th . e
    gl, al = sig(P["g_p"]), P["al"]
    e, ys = (u.new_zeros(u.shape[0], P["W"].shape[0]) if h0 is None else h0), []
    for t in range(u.shape[1]):
        phi = torch.tanh(u[:, t] @ P["W"].T)
        e = gl * e + al * phi - al * gl * (e * phi).sum(-1, keepdim=True) * phi
        ys.append((e @ P["th"])[:, None])
    return stack_steps(ys, u, 1)


def _tema(P, u, h0=None, W=4):
    # an exponential window of W steps, normalised: y_t = (1 - a) / (1 - a^W) sum_(j < W) a^j u_(t-j), the parallel
    # form (inputs before the start are 0)
    a = sig(P["a_p"])
    T = u.shape[1]
    j = torch.arange(T)[:, None] - torch.arange(T)[None, :]               # t - s
    wts = torch.where((j >= 0) & (j < W), a[:, None, None] ** j.clamp_min(0).to(F64), u.new_zeros(()))
    return torch.einsum("cts,bsc->btc", wts, u) * (1 - a) / (1 - a ** W)


def _dvgate(P, u, h0=None):
    # the delta rule with a value-side gate: S = ((I - be k k^T) S) * ga[b] + be k v^T, k L2-normalised, y = q^T S
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    S, ys = (u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q = torch.einsum("hkd,bd->bhk", P["W_Q"], ut)
        k = torch.einsum("hkd,bd->bhk", P["W_K"], ut)
        k = k / k.norm(dim=-1, keepdim=True)
        v = torch.einsum("hvd,bd->bhv", P["W_V"], ut)
        be = sig(ut @ P["W_b"].T)[..., None, None]
        ga = sig(torch.einsum("hvd,bd->bhv", P["W_g"], ut))[:, :, None, :]
        S = ga * (S - be * k[..., None] * torch.einsum("bhk,bhkv->bhv", k, S)[:, :, None, :]) \
            + be * k[..., None] * v[:, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q, S))
    return stack_steps(ys, u, H, V)


def _reflect(P, u, h0=None):
    # per head: h = g (h - 2 v (v . h) / |v|^2) + W_i u (a scaled Householder reflection), y = W_o . h
    g = sig(P["g_p"])[:, None]
    vn = P["v"] / P["v"].norm(dim=-1, keepdim=True)
    H, K = vn.shape
    h, ys = (u.new_zeros(u.shape[0], H, K) if h0 is None else h0), []
    for t in range(u.shape[1]):
        h = g * (h - 2 * vn * (h * vn).sum(-1, keepdim=True)) + torch.einsum("hkd,bd->bhk", P["W_i"], u[:, t])
        ys.append(torch.einsum("dhk,bhk->bd", P["W_o"], h))
    return stack_steps(ys, u, P["W_o"].shape[0])


def _bank(P, u, h0=None):
    # a bank of EMAs m_j = r_j m_j + (1 - r_j) u with r_j = r^(2^j), r = sigmoid(r_p); y = mix . m
    r = sig(P["r_p"])[:, None] ** (2.0 ** torch.arange(P["mix"].shape[1], dtype=F64))
    m, ys = (u.new_zeros(u.shape[0], *r.shape) if h0 is None else h0), []
    for t in range(u.shape[1]):
        m = r * m + (1 - r) * u[:, t, :, None]
        ys.append((P["mix"] * m).sum(-1))
    return stack_steps(ys, u, u.shape[2])


def _normpost(P, u, h0=None):
    # normalised linear attention (Katharopoulos et al. 2020), elu + 1 features, as the ratio of two prefix sums:
    # y_t = sum_(s <= t) (q_t . k_s) v_s / sum_(s <= t) q_t . k_s; an initial state adds its S and z to the sums
    q, k = elu1(u @ P["W_Q"].T), elu1(u @ P["W_K"].T)
    v = u @ P["W_V"].T
    S = torch.einsum("bta,btv->btav", k, v).cumsum(1)
    z = k.cumsum(1)
    if h0 is not None:
        S, z = S + h0[:, None, :, :-1], z + h0[:, None, :, -1]
    return torch.einsum("bta,btav->btv", q, S) / torch.einsum("bta,bta->bt", q, z)[..., None]


INDEPENDENT = {"s7": _s7, "spectral": _spectral, "nlms": _nlms, "dutch": _dutch, "tema": _tema, "dvgate": _dvgate,
               "reflect": _reflect, "bank": _bank, "normpost": _normpost}
EIGEN = {"s7": Bound.STABLE, "spectral": Bound.STABLE, "nlms": Bound.MARGINAL, "dutch": Bound.UNKNOWN,
         "tema": Bound.STABLE, "dvgate": Bound.STABLE, "reflect": Bound.STABLE, "bank": Bound.STABLE,
         "normpost": Bound.MARGINAL}
# the bound each spec has on its module's A (checked at random inputs) where the report is weaker: the Dutch trace's
# eigenvalues gl and gl (1 - al |phi|^2) with |phi|^2 < K = 7, al = 0.1 lie in (0, 1) at these dims
TRUE_BOUND = {"dutch": Bound.STABLE}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


# forward, gradients, every path against the reference, the structure report (dsf_testing.spec_hunt_tests)
(test_new_spec_matches_an_independent_implementation, test_new_spec_gradients_match_an_independent_implementation,
 test_new_spec_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, TRUE_BOUND)


def test_a_divide_by_a_state_read_in_c_is_not_a_dsf():
    """Normalised linear attention dividing by q.z inside C, z a column of the state: refused at the read of the
    state, with the hint that names the post form (NormPost follows it and matches the ratio of prefix sums)."""
    with pytest.raises(SpecErrors) as err:
        compile_text(NORM_STATE, "normstate.dsf")
    text = err.value.render()
    assert "normstate.dsf:16:53: error: matrix C reads the state 'S'" in text, text
    assert "a normaliser q.S / q.z" in text and "post o[...] = f(y[...])" in text, text


def test_oja_rule_is_not_a_dsf():
    """Oja's rule updates w by y = w . x: the let y reads the state, refused at its line with the hint."""
    with pytest.raises(SpecErrors) as err:
        compile_text(OJA, "oja.dsf")
    text = err.value.render()
    assert "oja.dsf:8:17: error: let 'yo' reads the state 'w'" in text and "no DSF form" in text, text


def test_an_index_over_part_of_an_axis_gets_a_hint():
    """The fix: an index ranging over fewer values than its axis (the data part ``y[b]`` of an output widened by a
    normaliser slot) and one ranging over more (``W_V[b, m]`` with b over V + 1, the extra term zeroed by a factor)
    were refused with no way out; the hints name ``b + 0`` and ``b % V``, and NormPost, written with them, compiles
    (it is checked above)."""
    text = NORM_POST.replace("y[b + 0]", "y[b]").replace("W_V[b % V, m]", "W_V[b, m]")
    with pytest.raises(SpecErrors) as err:
        compile_text(text, "np.dsf")
    out = err.value.render()
    assert "np.dsf:14:31: error: index 'b' ranges over 3 values but axis 0 of 'W_V' has extent 2" in out, out
    assert "declare the axis with 3 entries, or, where a factor zeroes the terms past its end, wrap the read: " \
        "b % 2" in out, out
    assert "np.dsf:20:18: error: index 'b' ranges over 2 values but axis 0 of 'y' has extent 3" in out, out
    assert "to read the first 2 of its 3 entries, write b + 0" in out, out


def test_nlms_with_a_learned_epsilon_is_not_claimed():
    """With its epsilon a learned parameter (which training may drive negative) the NLMS step 1 - mu |x|^2 /
    (eps + |x|^2) has no bound: "unknown", not the |lambda| <= 1 that the literal 0.01 gives."""
    text = NLMS.replace("let nrm[c: E] = 0.01 + ", "param eps = 0.01\nlet nrm[c: E] = eps + ")
    result = compile_text(text, "nlms_eps.dsf")
    assert result.report.eigen_bound == Bound.UNKNOWN, result.report.eigen_reason
    assert "in (-1, 1]" in _compiled("nlms").report.eigen_reason, _compiled("nlms").report.eigen_reason
