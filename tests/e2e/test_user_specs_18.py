"""An eighteenth new-spec hunt: control and signal-processing memories and two classic linear RNNs (a PID controller
read before the update, de Vries and Principe's gamma memory, a dilated FIR filter as a shift register, a linear
leaky echo-state network with a single input, a heavy-ball momentum RNN, a linearised multiplicative-integration
RNN, additive Holt-Winters with a season of 3, a bank of leaky integrators with learned time constants at d = 1, a
running mean with the step count from ``cumsum(1)``), sliding-window linear attention (the write of the token
leaving the window erased through a ``window`` let and a driven input), and a leaky integrate-and-fire neuron with a
reset, which is not a DSF.

Checked (each against an independent float64 implementation written here from the model's equations, not from
dsfc's reference: the PID law, the gamma taps, the FIR convolution over the history, the ESN / momentum / MI-RNN /
Holt-Winters update equations, the windowed attention sum): forward at T = 0, 1, 7 and 9 on the torch path and at
T = 0 and 9 on the Triton path (interpreted), batch 1 and 3, from zero and, where the state is a plain tensor, from
an initial state; token-by-token step; gradients of the input and every parameter on the torch and Triton paths;
against dsfc's reference through ``check_all_paths`` (final state, step, gradients of u, h0 and the parameters);
the family and eigenvalue bound of ``dsfc analyze``, a claimed bound checked on the module's own A. Error: the LIF
reset gate reads the state, refused at its line with the hint. Also (by a script, not kept: 1-2 min) each spec at
other dims (d = 1, E = 1, Q = 1, L = 1, R = 1, windows of 1, 5 and 12 steps) against its loop on both paths, and
fp32 against float64 at input scales 1 and 3: all within tolerance.

Found and fixed:
- The interval prover's case split over deltas of one index (``delta(h, 0) + delta(h, 2) g``: each selected value,
  then "any other value" with every delta of the index set to 0) collected the selected values from the top-level
  factors only, yet set nested deltas to 0 as well: ``0.5 exp(delta(i, 2))`` was read as 0.5 at i = 2, and decays
  0.8, 0.7 and 0.5 e = 1.36 were claimed ``|lambda| < 1``. Every delta of the index in the expression is collected
  now (an index a nested sum binds is left alone), and exact SymPy constants (E / 2) are ranged by their value, a
  few ulps wide, not as (0, inf) (stability.IntervalProver).
- A single selected value did not split: the gamma memory's triangular diagonal ``(mu - 1) delta(k, 0) + 1 - mu``
  (0 on the input tap, 1 - mu elsewhere) was ``[0, 1]``, ``|lambda| <= 1``; it is ``[0, 1)``, ``|lambda| < 1``.
  Nor did a value that is a dim: the same memory laid out oldest tap first selects its input tap by ``delta(k, Q)``.
- Not from these specs, seen while re-running the prover's tests: a softmax-attention module whose keys are shared
  by a group of heads (``k[h // R, a]``, hunt 14b's AlibiGQA) raised NameError, the printer caching that index
  tensor through ``cached_index``, which the quadratic template did not import.

Left weaker than the truth (no false claim): the linear ESN's, the MI-RNN's and Holt-Winters' dense A are "unknown"
(their eigenvalues depend on learned matrices and values: nothing to prove for all of them); NestedPick below, whose
decay 0.5 e exceeds 1 at every input, is "not proven <= 1" rather than "|lambda| > 1" (the hull of the cases also
holds 0.5).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (BACKENDS, F64, INTERPRETER_WARNINGS, build, case_builds, check_all_paths,  # noqa: E402
                         rel_err, spec_hunt_tests, stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.lang.errors import SpecErrors  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

PID = """
model PIDCtl "a PID controller per channel: e = W_e u, y = Kp e + Ki sum(e) + Kd (e - e_prev), read before the update"
dim d = 3
dim E = 5
input u[d]
state z[c: E, r: 2]        # r = 0: the integral of e up to t - 1, r = 1: e_(t-1)
output y[E]
param W_e[E, d] ~ normal(0, 0.5)
param Kp[E] ~ normal(0, 1)
param Ki[E] ~ normal(0, 1)
param Kd[E] ~ normal(0, 1)
A[(c, r), (c2, r2)] = delta(c, c2) * delta(r, r2) * delta(r, 0)
B[(c, r), m] = W_e[c, m]
C[o, (c, r)] = delta(o, c) * (delta(r, 0) * Ki[c] - delta(r, 1) * Kd[c])
D[o, m] = (Kp[o] + Ki[o] + Kd[o]) * W_e[o, m]
readout pre
"""

GAMMA = """
model GammaMemory "de Vries-Principe gamma memory per channel: x_k = (1 - mu) x_k + mu x_(k-1) at t - 1, x_0 = u"
dim d = 3
dim Q = 4
dim p = 5
input u[d]
state x[c: d, k: Q + 1]
output y[p]
param mu_p[d] ~ normal(0, 1)
param W_o[p, d, Q + 1] ~ normal(0, 0.5)
let mu[c: d] = sigmoid(mu_p[c])
# tap 0 holds u_t itself (row of zeros in A); tap k >= 1 leaks and takes the previous tap's value from the last step
A[(c, k), (c2, k2)] = delta(c, c2) * (1 - delta(k, 0)) * (delta(k, k2) * (1 - mu[c]) + delta(k - 1, k2) * mu[c])
B[(c, k), m] = delta(c, m) * delta(k, 0)
C[o, (c, k)] = W_o[o, c, k]
"""

FIR = """
model DilatedFIR "a dilated causal FIR filter per channel, y_t = sum_j w_j u_(t - 2 j), j = 0..L, as a shift register"
dim d = 3
dim L = 3
input u[d]
state s[c: d, i: 2 * L]    # the last 2 L inputs, newest first
output y[d]
param w[c: d, j: L + 1] ~ normal(0, 0.5)
# shift by one: s[0] = u_t, s[i] = s[i - 1]; read before the update s[i] = u_(t - 1 - i): tap j >= 1 is at i = 2 j - 1
A[(c, i), (c2, i2)] = delta(c, c2) * delta(i - 1, i2)
B[(c, i), m] = delta(c, m) * delta(i, 0)
C[o, (c, i)] = delta(o, c) * delta(i % 2, 1) * w[c, (i + 1) // 2]
D[o, m] = delta(o, m) * w[m, 0]
readout pre
"""

ESN = """
model LinearESN "linear leaky echo-state network: h = (1 - a) h + a (rho W_res h + W_in u), a reservoir of 6, 1 input"
dim d = 1
dim R = 6
dim p = 2
input u[d]
state h[R]
output y[p]
param W_res[R, R] ~ normal(0, 1 / sqrt(R))
param W_in[R, d] ~ uniform(-1, 1)
param a_p ~ zeros()
param rho = 0.9
param W_out[p, R] ~ normal(0, 0.5)
let a = sigmoid(a_p)
A[i, j] = (1 - a) * delta(i, j) + a * rho * W_res[i, j]
B[i, m] = a * W_in[i, m]
C[o, i] = W_out[o, i]
"""

MOMENTUM = """
model MomentumRNN "heavy-ball linear RNN: v = mu v + s (W u), h = lam h + v, s = softplus(.) per step, per channel"
dim d = 4
dim E = 3
input u[d]
state h[c: E, r: 2]          # r = 0: the velocity v, r = 1: the hidden state h
output y[d]
param W[E, d] ~ normal(0, 0.5)
param W_s[E, d] ~ normal(0, 0.5)
param mu_p[E] ~ normal(1, 0.5)
param lam_p[E] ~ normal(0, 1)
param W_o[d, E] ~ normal(0, 0.5)
let mu[c: E] = sigmoid(mu_p[c])
let lam[c: E] = sigmoid(lam_p[c])
let s[c: E] = softplus(sum(m, W_s[c, m] * u[m]))
# h_t = lam h + v_t = lam h + mu v + s W u: the h row reads the old v through mu
A[(c, r), (c2, r2)] = delta(c, c2) * (delta(r, 0) * delta(r2, 0) * mu[c]
    + delta(r, 1) * (delta(r2, 0) * mu[c] + delta(r2, 1) * lam[c]))
B[(c, r), m] = s[c] * W[c, m]
C[o, (c, r)] = delta(r, 1) * W_o[o, c]
"""

MIRNN = """
model MIRNNLin "linear multiplicative-integration RNN: h = (al tanh(W x) + b1) * (U h) + b2 * (W x), no activation"
dim d = 3
dim E = 4
input u[d]
state h[E]
output y[E]
param W[E, d] ~ normal(0, 0.5)
param U[E, E] ~ normal(0, 0.3)
param al[E] ~ normal(0, 0.5)
param b1[E] ~ normal(0, 0.5)
param b2[E] ~ ones()
let wx[e: E] = tanh(sum(m, W[e, m] * u[m]))
A[i, j] = (al[i] * wx[i] + b1[i]) * U[i, j]
B[i, m] = b2[i] * W[i, m]
C[o, i] = delta(o, i)
"""

SWLA = """
model SWLinAttn "sliding-window linear attention, window 3: S = S + k v^T - k_(t-3) v_(t-3)^T, per head, q read"
dim d = 5
dim H = 3
dim K = 2
dim V = 1
dim Wn = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let v[h: H, b: V] = sum(m, W_V[h, b, m] * u[m])
let kw[h: H, a: K, w: Wn + 1] = window(k[h, a])     # k_(t-3), ..., k_t
let vw[h: H, b: V, w: Wn + 1] = window(v[h, b])
# the write of step t and the erase of the write that leaves the window, both outer products, as one driven signal
let x[h: H, a: K, b: V] = k[h, a] * v[h, b] - kw[h, a, 0] * vw[h, b, 0]
drive x
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
B[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

HOLTWINTERS = """
model HoltWinters "additive Holt-Winters per channel, season m = 3: level, trend and the last m seasonal terms"
dim d = 2
dim m = 3
input u[d]
state z[c: d, r: m + 2]    # r = 0 level l, r = 1 trend b, r = 1 + j the seasonal term s_(t-j), j = 1..m
output y[d]
param W_a[d, d] ~ normal(0, 0.5)
param be_p[d] ~ normal(0, 1)
param ga_p[d] ~ normal(0, 1)
let al[c: d] = sigmoid(sum(q, W_a[c, q] * u[q]))
let be[c: d] = sigmoid(be_p[c])
let ga[c: d] = sigmoid(ga_p[c])
let ab[c: d] = al[c] * be[c]
# l' = al (u - s_m) + (1 - al)(l + b); b' = be (l' - l) + (1 - be) b; s' = ga (u - l - b) + (1 - ga) s_m; s shifts
A[(c, r), (c2, r2)] = delta(c, c2) * (
      delta(r, 0) * ((1 - al[c]) * (delta(r2, 0) + delta(r2, 1)) - al[c] * delta(r2, m + 1))
    + delta(r, 1) * (-ab[c] * delta(r2, 0) + (1 - ab[c]) * delta(r2, 1) - ab[c] * delta(r2, m + 1))
    + delta(r, 2) * (-ga[c] * (delta(r2, 0) + delta(r2, 1)) + (1 - ga[c]) * delta(r2, m + 1))
    + min(max(r - 2, 0), 1) * delta(r2, r - 1))
B[(c, r), q] = delta(c, q) * (delta(r, 0) * al[c] + delta(r, 1) * ab[c] + delta(r, 2) * ga[c])
# the one-step forecast l + b + s_(t+1-m)
C[o, (c, r)] = delta(o, c) * (delta(r, 0) + delta(r, 1) + delta(r, m + 1))
"""

LEAKY = """
model LeakyBank "a bank of leaky integrators: 5 learned time constants per channel, learned input gain, d = 1"
dim d = 1
dim R = 5
input u[d]
state h[c: d, r: R]
output y[d]
param log_tau[c: d, r: R] = log(2) * r        # time constants 1, 2, 4, 8, 16 steps
param gain[d] ~ ones()
param W_o[d, R] ~ normal(0, 0.5)
let tau[c: d, r: R] = 1 + exp(log_tau[c, r])
let leak[c: d, r: R] = exp(-1 / tau[c, r])
A[(c, r), (c2, r2)] = delta(c, c2) * delta(r, r2) * leak[c, r]
B[(c, r), m] = delta(c, m) * gain[c] * (1 - leak[c, r])
C[o, (c, r)] = delta(o, c) * W_o[c, r]
"""

LIFRESET = """
model LIFReset "leaky integrate-and-fire with a soft reset: v = be v (1 - spike(v)) + W u"
dim d = 3
input u[d]
state v[d]
param W[d, d] ~ normal(0, 0.5)
param be = 0.9
let spk[c: d] = sigmoid(5 * (v[c] - 1))
A[i, j] = delta(i, j) * be * (1 - spk[i])
B[i, m] = W[i, m]
C[o, i] = delta(o, i)
"""
CUMMEAN = """
model CumMean "the running mean of a projection: h = (n - 1) / n h + W u / n, n = t + 1"
dim d = 3
input u[d]
state h[d]
param W[d, d] ~ normal(0, 0.5)
let n = cumsum(1)
A[i, j] = delta(i, j) * (n - 1) / n
B[i, m] = W[i, m] / n
C[o, i] = delta(o, i)
"""

CASES = {
    "pid": (PID, Family.DIAGONAL_SCAN),
    "gamma": (GAMMA, Family.DENSE_SCAN),
    "fir": (FIR, Family.DENSE_SCAN),
    "esn": (ESN, Family.DENSE_SCAN),
    "mom": (MOMENTUM, Family.DENSE_SCAN),
    "mirnn": (MIRNN, Family.DENSE_SCAN),
    "swla": (SWLA, Family.DIAGONAL_SCAN),
    "hw": (HOLTWINTERS, Family.DENSE_SCAN),
    "leaky": (LEAKY, Family.DIAGONAL_SCAN),
    "cummean": (CUMMEAN, Family.DIAGONAL_SCAN),
}

sig, softplus = torch.sigmoid, torch.nn.functional.softplus


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d] and an initial state in the spec's layout (None: zero; specs
# with running lets are checked from zero only), and returns y [B, T, ...].

def _pid(P, u, h0=None):
    # the discrete PID law on the error e = W_e u: y = Kp e_t + Ki sum_(s <= t) e_s + Kd (e_t - e_(t-1)); the state
    # carries the integral up to t - 1 and e_(t-1)
    E = P["W_e"].shape[0]
    integ = u.new_zeros(u.shape[0], E) if h0 is None else h0[..., 0]
    e_prev = u.new_zeros(u.shape[0], E) if h0 is None else h0[..., 1]
    ys = []
    for t in range(u.shape[1]):
        e = u[:, t] @ P["W_e"].T
        integ = integ + e
        ys.append(P["Kp"] * e + P["Ki"] * integ + P["Kd"] * (e - e_prev))
        e_prev = e
    return stack_steps(ys, u, E)


def _gamma(P, u, h0=None):
    # the gamma memory (de Vries & Principe 1992): tap 0 is the input, tap k a leaky integrator of tap k - 1,
    # x_k(t) = (1 - mu) x_k(t - 1) + mu x_(k-1)(t - 1); y = W_o . x
    mu = sig(P["mu_p"])
    p, d, Q1 = P["W_o"].shape
    x, ys = (u.new_zeros(u.shape[0], d, Q1) if h0 is None else h0), []
    for t in range(u.shape[1]):
        x = torch.cat([u[:, t, :, None], (1 - mu[:, None]) * x[..., 1:] + mu[:, None] * x[..., :-1]], -1)
        ys.append(torch.einsum("pck,bck->bp", P["W_o"], x))
    return stack_steps(ys, u, p)


def _fir(P, u, h0=None):
    # the dilated FIR filter as a convolution: y_t = sum_(j = 0..L) w_j u_(t - 2 j), the inputs before t = 0 taken
    # from the initial shift register (h0[i] = u_(-1 - i)), zero without one
    w = P["w"]
    d, L1 = w.shape
    B_, T = u.shape[:2]
    hist = u.new_zeros(B_, 2 * (L1 - 1), d) if h0 is None else h0.flip(-1).transpose(1, 2)  # oldest first
    ext, off = torch.cat([hist, u], 1), hist.shape[1]
    ys = [sum(w[:, j] * ext[:, off + t - 2 * j] for j in range(L1)) for t in range(T)]
    return stack_steps(ys, u, d)


def _esn(P, u, h0=None):
    # a leaky echo-state network with the identity activation (Jaeger 2001, leaky form): h = (1 - a) h + a (rho W_res h
    # + W_in u), a = sigmoid(a_p); y = W_out h
    a, R = sig(P["a_p"]), P["W_res"].shape[0]
    h, ys = (u.new_zeros(u.shape[0], R) if h0 is None else h0), []
    for t in range(u.shape[1]):
        h = (1 - a) * h + a * (P["rho"] * h @ P["W_res"].T + u[:, t] @ P["W_in"].T)
        ys.append(h @ P["W_out"].T)
    return stack_steps(ys, u, P["W_out"].shape[0])


def _mom(P, u, h0=None):
    # the heavy-ball (momentum) RNN cell, linear: v = mu v + s (W u), h = lam h + v, step s = softplus(W_s u)
    E = P["W"].shape[0]
    mu, lam = sig(P["mu_p"]), sig(P["lam_p"])
    v = u.new_zeros(u.shape[0], E) if h0 is None else h0[..., 0]
    h = u.new_zeros(u.shape[0], E) if h0 is None else h0[..., 1]
    ys = []
    for t in range(u.shape[1]):
        v = mu * v + softplus(u[:, t] @ P["W_s"].T) * (u[:, t] @ P["W"].T)
        h = lam * h + v
        ys.append(h @ P["W_o"].T)
    return stack_steps(ys, u, P["W_o"].shape[0])


def _mirnn(P, u, h0=None):
    # multiplicative integration (Wu et al. 2016), identity activation: h = al * Wx * Uh + b1 * Uh + b2 * Wx, the Wx of
    # the product term squashed by tanh here
    E = P["U"].shape[0]
    h, ys = (u.new_zeros(u.shape[0], E) if h0 is None else h0), []
    for t in range(u.shape[1]):
        wx = u[:, t] @ P["W"].T
        h = (P["al"] * torch.tanh(wx) + P["b1"]) * (h @ P["U"].T) + P["b2"] * wx
        ys.append(h)
    return stack_steps(ys, u, E)


def _swla(P, u, h0=None, width=3):
    # sliding-window linear attention over the last ``width`` tokens, the parallel form: y_t = sum_(t - width < j <= t)
    # (q_t . k_j) v_j per head
    q = torch.einsum("hkd,btd->bthk", P["W_Q"], u)
    k = torch.einsum("hkd,btd->bthk", P["W_K"], u)
    v = torch.einsum("hvd,btd->bthv", P["W_V"], u)
    T = u.shape[1]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = ((j <= i) & (j > i - width)).to(F64)
    return torch.einsum("bihk,bjhk,ij,bjhv->bihv", q, k, mask, v)


def _hw(P, u, h0=None):
    # additive Holt-Winters, error-correction form (Hyndman et al.), season m: l' = al (u - s_(t-m)) + (1 - al)(l + b),
    # b' = be (l' - l) + (1 - be) b, s_t = ga (u - l - b) + (1 - ga) s_(t-m); forecast l' + b' + s_(t+1-m)
    d, m = u.shape[2], 3
    z = u.new_zeros(u.shape[0], d, m + 2) if h0 is None else h0
    lv, tr, seas = z[..., 0], z[..., 1], [z[..., 1 + j] for j in range(1, m + 1)]  # seas[j - 1] = s_(t-j)
    be, ga = sig(P["be_p"]), sig(P["ga_p"])
    ys = []
    for t in range(u.shape[1]):
        ut = u[:, t]
        al = sig(ut @ P["W_a"].T)
        new_l = al * (ut - seas[-1]) + (1 - al) * (lv + tr)
        new_b = be * (new_l - lv) + (1 - be) * tr
        s_t = ga * (ut - lv - tr) + (1 - ga) * seas[-1]
        lv, tr, seas = new_l, new_b, [s_t] + seas[:-1]
        ys.append(lv + tr + seas[-1])
    return stack_steps(ys, u, d)


def _leaky(P, u, h0=None):
    # leaky integrators dh/dt = (g u - h) / tau, exact over one step: h = e^(-1/tau) h + g (1 - e^(-1/tau)) u,
    # tau = 1 + exp(log_tau); y = W_o . h per channel
    leak = torch.exp(-1 / (1 + torch.exp(P["log_tau"])))
    h, ys = (u.new_zeros(u.shape[0], *leak.shape) if h0 is None else h0), []
    for t in range(u.shape[1]):
        h = leak * h + P["gain"][:, None] * (1 - leak) * u[:, t, :, None]
        ys.append((P["W_o"] * h).sum(-1))
    return stack_steps(ys, u, u.shape[2])


def _cummean(P, u, h0=None):
    # the running mean of W u over the steps so far (from zero only: the count n is a running let)
    x = u @ P["W"].T
    return x.cumsum(1) / torch.arange(1, u.shape[1] + 1, dtype=F64)[:, None]


INDEPENDENT = {"pid": _pid, "gamma": _gamma, "fir": _fir, "esn": _esn, "mom": _mom, "mirnn": _mirnn, "swla": _swla,
               "hw": _hw, "leaky": _leaky, "cummean": _cummean}
EIGEN = {"pid": Bound.MARGINAL, "gamma": Bound.STABLE, "fir": Bound.STABLE, "esn": Bound.UNKNOWN,
         "mom": Bound.STABLE, "mirnn": Bound.UNKNOWN, "swla": Bound.MARGINAL, "hw": Bound.UNKNOWN,
         "leaky": Bound.STABLE, "cummean": Bound.STABLE}
# the bound each spec has on its module's A (checked at random inputs) where the report is weaker: the ESN's,
# MI-RNN's and Holt-Winters' dense A have eigenvalues that depend on learned values (none to prove for all of them).
# The running mean's (n - 1) / n, "unknown" when this hunt was written (the count read as (0, inf), the ratio term
# by term), is proved in [0, 1): a count of terms >= 1 is >= 1, and the quotient is read as 1 - 1 / n.
TRUE_BOUND: dict[str, Bound] = {}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


# forward, gradients, every path against the reference, the structure report (dsf_testing.spec_hunt_tests)
(test_new_spec_matches_an_independent_implementation, test_new_spec_gradients_match_an_independent_implementation,
 test_new_spec_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, TRUE_BOUND, grad_backends=BACKENDS)


def test_a_reset_computed_from_the_membrane_potential_is_not_a_dsf():
    """A LIF neuron's reset gate reads the state (the membrane potential v): refused at the let's line, with the hint
    that a gate computed from the state has no DSF form."""
    with pytest.raises(SpecErrors) as err:
        compile_text(LIFRESET, "lif.dsf")
    text = err.value.render()
    assert "lif.dsf:8:30: error: let 'spk' reads the state 'v'" in text and "no DSF form" in text, text


NESTED = """
model NestedPick "per-head constant decay picked by deltas, one of them inside exp: 0.8, 0.7 and 0.5 e"
dim H = 3
input u[H]
state h[H]
A[i, j] = delta(i, j) * (0.3 * delta(i, 0) + 0.2 * delta(i, 1) + 0.5 * exp(delta(i, 2)))
B[i, m] = delta(i, m)
C[o, i] = delta(o, i)
"""

UPPER_GAMMA = """
model UpperGamma "gamma memory laid out oldest tap first: tap k reads tap k + 1, the input enters the last tap"
dim d = 2
dim Q = 3
input u[d]
state x[c: d, k: Q + 1]
param mu_p[d] ~ normal(0, 1)
let mu[c: d] = sigmoid(mu_p[c])
A[(c, k), (c2, k2)] = delta(c, c2) * (1 - delta(k, Q)) * (delta(k, k2) * (1 - mu[c]) + delta(k + 1, k2) * mu[c])
B[(c, k), m] = delta(c, m) * delta(k, Q)
C[o, (c, k)] = delta(o, c) * delta(k, 0)
"""


def test_a_case_split_on_deltas_sees_every_value_they_select():
    """The fix: the case split over ``delta(i, 0) + delta(i, 1) g`` collected the selected values from the top-level
    factors only, then set every delta of i to 0 for "any other i": ``0.5 exp(delta(i, 2))`` was read as 0.5 at
    i = 2, and the decays 0.8, 0.7, 0.5 e = 1.36 were claimed |lambda| < 1. Every delta of the index counts now (an
    index bound by a nested sum is left alone), and an exact constant such as E / 2 has its value, not (0, inf).
    Since the stability-prover session the entry at i = 2 (0.5 e for every input, at every dims with H > 2) makes it
    ``|lambda| > 1`` (was "not proven <= 1"); the module's own A below has that eigenvalue."""
    result = compile_text(NESTED, "nested.dsf")
    assert result.report.eigen_bound == Bound.EXCEEDS, result.report.eigen_reason
    assert "[0.5, 1.35914]" in result.report.eigen_reason, result.report.eigen_reason
    A = build(result, {"H": 3}).dsf_matrices(torch.zeros(1, 1, 3, dtype=F64))[0]
    assert torch.allclose(torch.linalg.eigvals(A).abs().max(), torch.tensor(0.5 * torch.e, dtype=F64))


def test_one_selected_value_splits_the_cases_too():
    """The gamma memory's diagonal (mu - 1) delta(k, 0) + 1 - mu (0 on the input tap, 1 - mu on the others) was read
    term by term as [0, 1], |lambda| <= 1; split at k = 0 and k != 0 it is [0, 1)."""
    reason = _built("gamma").result.report.eigen_reason
    assert "in [0, 1)" in reason and "triangular" in reason, reason
    # laid out oldest tap first, the input tap is the last, delta(k, Q): a value that is a dim splits the same way
    result = compile_text(UPPER_GAMMA, "upper.dsf")
    assert result.report.eigen_bound == Bound.STABLE and "upper triangular" in result.report.eigen_reason
    built = build(result, {"d": 2, "Q": 3})
    A = built.dsf_matrices(torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(1), dtype=F64))[0]
    assert (torch.linalg.eigvals(A).abs() < 1).all()
    # a unit impulse enters tap Q and first reaches the read tap 0 after Q = 3 steps, as mu^3
    u = torch.zeros(1, 4, 2, dtype=F64)
    u[:, 0] = 1
    with torch.no_grad():
        y = built.model(u)
    mu = torch.sigmoid(built.params()["mu_p"])
    assert torch.allclose(y[0], torch.cat([torch.zeros(3, 2, dtype=F64), mu[None] ** 3]), atol=1e-12), y


def test_a_sliding_window_wider_than_a_call_is_carried_across_calls():
    """A window of 5 steps over calls of 4 and 7 steps (the window let's carried history) equals one call over all 11
    and the parallel form written here, on the torch and Triton paths."""
    built = _built("swla", Wn=5)
    P = built.params()
    u = torch.randn(2, 11, built.d_in(), generator=torch.Generator().manual_seed(6), dtype=F64)
    want = _swla(P, u, width=5).reshape(2, 11, -1)
    for backend in BACKENDS:
        built.model.backend = backend
        with torch.no_grad():
            y1, state = built.model(u[:, :4], output_final_state=True)
            y2 = built.model(u[:, 4:], initial_state=state)
        assert rel_err(torch.cat([y1, y2], 1), want) < 1e-10, backend
