"""A twenty-first new-spec hunt: dense blocks the norm-bound prover should reach, written as a user would.

Specs: an HMM's forward pass per head (A = diag(e(u)) P_h^T with P_h a softmax over the rows of a param and the
emissions e a softmax over the states), a dense A normalised by its Frobenius norm through a let chain
(``let n2 = sum(i, sum(j, W[i, j]^2))``, ``let nrm = sqrt(n2 + 1e-6)``, ``A = g W / nrm``), a per-head dense block
a_h(u) tanh(W_h) / K with heads as a diagonal axis, a two-timescale EMA pair (the slow EMA reads the fast one's new
value: a lower-triangular 2x2 block per channel), and an input-output HMM whose transition is a softmax(u)-mixture of
R learned row-stochastic matrices.

Checked (each against an independent float64 loop written here from the model's equations, not from dsfc's
reference): forward at T = 0, 1, 7 and 9 on the torch path and at T = 0 and 9 on the Triton path (interpreted),
batch 1 and 3, from zero and from an initial state; token-by-token step; gradients of the input and every parameter
on the torch path; against dsfc's reference through ``check_all_paths``; the family and eigenvalue bound of
``dsfc analyze``, the claimed (or true) bound checked on the module's own A. Every spec passes ``dsfc check``.

Found and fixed:
- The Frobenius-norm reading saw through one let only: with the norm spelt as a chain (``n2`` summed in one let,
  ``nrm = sqrt(n2 + 1e-6)`` in the next) ``g W / nrm`` was "unknown" (written in one let it was proved). Inlining the
  lets read outside sums (``IntervalProver._inlined(outside_sums=True)``) now follows a chain of them, up to
  ``INLINE_CHAIN_DEPTH`` = 4 levels: |lambda| < 1 by the Frobenius norm.
- The IO-HMM's bound changed from run to run (|lambda| < 1 by the 1 norm in some processes, "unknown" in others, on
  main too): ``_canonical_sums`` named and ordered summation indices by a digest of ``srepr``, which includes a
  SymPy Dummy's ``dummy_index``, drawn at random per process (the prover's ``j_frac`` placeholder for a free index).
  The digest now leaves ``dummy_index`` out: the same sums get the same names in every process, and the IO-HMM is
  |lambda| < 1 every time (its proof: each column sum of |A| is at most max e < 1).

Left weaker than the truth (no false claim): the HMM with softmax emissions is |lambda| <= 1: each column sum
sum_i e_i P[j, i] < sum_i e_i = 1 (every P[j, i] < 1 when N >= 2), but the prover bounds a softmax weight by (0, 1]
(N = 1 makes it 1), so the strict bound is missed (``TRUE_BOUND``).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (INTERPRETER_WARNINGS, case_builds, check_all_paths, spec_hunt_tests,  # noqa: E402
                         stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

HMM = """
model HMMHeads "HMM forward pass per head: alpha = diag(e(u)) P_h^T alpha + e(u) * (W_B u), P_h = softmax over rows"
dim d = 3
dim H = 2
dim N = 4
input u[d]
state al[h: H, i: N]
output y[d]
param W_P[H, N, N] ~ normal(0, 1)
param W_e[H, N, d] ~ normal(0, 0.5)
param W_B[H, N, d] ~ normal(0, 0.5)
param W_out[d, H, N] ~ normal(0, 0.5)
let P[h: H, i: N, j: N] = exp(W_P[h, i, j]) / sum(k, exp(W_P[h, i, k]))
let z[h: H, i: N] = sum(m, W_e[h, i, m] * u[m])
let e[h: H, i: N] = exp(z[h, i]) / sum(k, exp(z[h, k]))
A[(h, i), (h2, j)] = delta(h, h2) * e[h, i] * P[h, j, i]
B[(h, i), m] = e[h, i] * W_B[h, i, m]
C[o, (h, i)] = W_out[o, h, i]
"""

FRO = """
model FroGate "dense A normalised by its Frobenius norm through a let chain, gated by sigmoid(w . u)"
dim d = 3
dim N = 4
input u[d]
state x[N]
output y[d]
param W[N, N] ~ normal(0, 1)
param w_g[d] ~ normal(0, 0.5)
param Win[N, d] ~ normal(0, 0.5)
param Wout[d, N] ~ normal(0, 0.5)
let n2 = sum(i, sum(j, W[i, j] ^ 2))
let nrm = sqrt(n2 + 1e-6)
let g = sigmoid(sum(m, w_g[m] * u[m]))
A[i, j] = g * W[i, j] / nrm
B[i, m] = Win[i, m]
C[o, i] = Wout[o, i]
D[o, m] = delta(o, m)
"""

HEAD_TANH = """
model HeadTanh "per-head dense block a_h(u) tanh(W_h) / K, heads a diagonal axis"
dim d = 3
dim H = 2
dim K = 3
input u[d]
state s[h: H, i: K]
output y[h: H, i: K]
param W[H, K, K] ~ normal(0, 2)
param w_a[H, d] ~ normal(0, 0.5)
param W_in[H, K, d] ~ normal(0, 0.5)
let a[h: H] = sigmoid(sum(m, w_a[h, m] * u[m]))
A[(h, i), (h2, j)] = delta(h, h2) * a[h] * tanh(W[h, i, j]) / K
B[(h, i), m] = (1 - a[h]) * W_in[h, i, m]
C[(o, p), (h, i)] = delta(o, h) * delta(p, i)
"""

EMA2 = """
model EMA2 "two-timescale EMA pair per channel: fast = af fast + (1 - af) u; slow = as slow + (1 - as) fast_t"
dim d = 3
input u[d]
state x[c: d, s: 2]
output y[d]
param w_f[d] ~ normal(0, 0.5)
param w_s[d] ~ normal(0, 0.5)
param b_s[d] = 2
param wy[d, 2] ~ normal(0, 1)
let af[c: d] = sigmoid(w_f[c] * u[c])
let as[c: d] = sigmoid(w_s[c] * u[c] + b_s[c])
let dg[c: d, s: 2] = delta(s, 0) * af[c] + delta(s, 1) * as[c]                # the two rates
let M[c: d, s: 2, s2: 2] = delta(s, s2) * dg[c, s] + delta(s, 1) * delta(s2, 0) * (1 - as[c]) * af[c]
A[(c, s), (c2, s2)] = delta(c, c2) * M[c, s, s2]
B[(c, s), m] = delta(c, m) * (1 - af[c]) * (delta(s, 0) + delta(s, 1) * (1 - as[c]))
C[o, (c, s)] = delta(o, c) * wy[c, s]
"""

IOHMM = """
model IOHMM "input-output HMM: the transition a softmax(u)-mixture of R learned row-stochastic matrices"
dim d = 3
dim R = 2
dim N = 4
input u[d]
state al[N]
output y[d]
param W_P[R, N, N] ~ normal(0, 1)
param w_pi[R, d] ~ normal(0, 0.5)
param W_e[N, d] ~ normal(0, 0.5)
param W_B[N, d] ~ normal(0, 0.5)
param W_out[d, N] ~ normal(0, 0.5)
let P[r: R, i: N, j: N] = exp(W_P[r, i, j]) / sum(k, exp(W_P[r, i, k]))
let zp[r: R] = sum(m, w_pi[r, m] * u[m])
let pi[r: R] = exp(zp[r]) / sum(r2, exp(zp[r2]))
let e[i: N] = sigmoid(sum(m, W_e[i, m] * u[m]))
A[i, j] = e[i] * sum(r, pi[r] * P[r, j, i])
B[i, m] = W_B[i, m]
C[o, i] = W_out[o, i]
"""
CASES = {
    "hmm": (HMM, Family.DENSE_SCAN),
    "fro": (FRO, Family.DENSE_SCAN),
    "headtanh": (HEAD_TANH, Family.DENSE_SCAN),
    "ema2": (EMA2, Family.DENSE_SCAN),
    "iohmm": (IOHMM, Family.DENSE_SCAN),
}
sig = torch.sigmoid


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d_in] and an initial state in the spec's layout (None: zero), and
# returns y [B, T, ...].

def _proj(W, x):
    """W [..., d] applied to x [B, d]: [B, ...]."""
    return torch.einsum("...m,bm->b...", W, x)


def _hmm(P, u, h0=None):
    # the forward algorithm per head: alpha_t[i] = e_t[i] (sum_j P[j, i] alpha_(t-1)[j] + W_B[i] . u_t) with P the
    # row-stochastic transition softmax(W_P) over its last axis and e_t = softmax(W_e u_t) over the states;
    # y = W_out alpha
    H, N, _ = P["W_P"].shape
    T_ = torch.softmax(P["W_P"], -1)
    al, ys = (u.new_zeros(u.shape[0], H, N) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        e = torch.softmax(_proj(P["W_e"], ut), -1)
        al = e * (torch.einsum("hji,bhj->bhi", T_, al) + _proj(P["W_B"], ut))
        ys.append(torch.einsum("ohi,bhi->bo", P["W_out"], al))
    return stack_steps(ys, u, P["W_out"].shape[0])


def _fro(P, u, h0=None):
    # x = g(u) W / sqrt(||W||_F^2 + 1e-6) x + Win u, g = sigmoid(w_g . u); y = Wout x + u
    W = P["W"] / ((P["W"] ** 2).sum() + 1e-6).sqrt()
    x, ys = (u.new_zeros(u.shape[0], W.shape[0]) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        x = sig(ut @ P["w_g"])[:, None] * (x @ W.T) + ut @ P["Win"].T
        ys.append(x @ P["Wout"].T + ut)
    return stack_steps(ys, u, P["Wout"].shape[0])


def _headtanh(P, u, h0=None):
    # per head h: s_h = a_h tanh(W_h) / K s_h + (1 - a_h) W_in[h] u with a_h = sigmoid(w_a[h] . u); y = s
    H, K, _ = P["W"].shape
    M = torch.tanh(P["W"]) / K
    s, ys = (u.new_zeros(u.shape[0], H, K) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        a = sig(ut @ P["w_a"].T)[..., None]
        s = a * torch.einsum("hij,bhj->bhi", M, s) + (1 - a) * _proj(P["W_in"], ut)
        ys.append(s)
    return stack_steps(ys, u, H, K)


def _ema2(P, u, h0=None):
    # per channel c: fast = af fast + (1 - af) u_c, then slow = as slow + (1 - as) fast (the new fast), with
    # af = sigmoid(w_f u_c), as = sigmoid(w_s u_c + b_s); y_c = wy[c, 0] fast + wy[c, 1] slow
    x = u.new_zeros(u.shape[0], u.shape[2], 2) if h0 is None else h0
    fast, slow, ys = x[..., 0], x[..., 1], []
    for t in range(u.shape[1]):
        ut = u[:, t]
        af, as_ = sig(P["w_f"] * ut), sig(P["w_s"] * ut + P["b_s"])
        fast = af * fast + (1 - af) * ut
        slow = as_ * slow + (1 - as_) * fast
        ys.append(P["wy"][:, 0] * fast + P["wy"][:, 1] * slow)
    return stack_steps(ys, u, u.shape[2])


def _iohmm(P, u, h0=None):
    # an input-output HMM: the transition is the mixture sum_r pi_r(u) T_r of row-stochastic T_r = softmax(W_P[r])
    # with pi = softmax(w_pi u); alpha_t[i] = e_t[i] sum_j T[j, i] alpha_(t-1)[j] + W_B[i] . u_t, e = sigmoid(W_e u)
    T_ = torch.softmax(P["W_P"], -1)
    al, ys = (u.new_zeros(u.shape[0], T_.shape[1]) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        pi, e = torch.softmax(ut @ P["w_pi"].T, -1), sig(ut @ P["W_e"].T)
        mix = torch.einsum("br,rji->bji", pi, T_)
        al = e * torch.einsum("bji,bj->bi", mix, al) + ut @ P["W_B"].T
        ys.append(al @ P["W_out"].T)
    return stack_steps(ys, u, P["W_out"].shape[0])


INDEPENDENT = {"hmm": _hmm, "fro": _fro, "headtanh": _headtanh, "ema2": _ema2, "iohmm": _iohmm}
EIGEN = {"hmm": Bound.MARGINAL, "fro": Bound.STABLE, "headtanh": Bound.STABLE, "ema2": Bound.STABLE,
         "iohmm": Bound.STABLE}
TRUE_BOUND = {"hmm": Bound.STABLE}

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


# forward, gradients, every path against the reference, the structure report (dsf_testing.spec_hunt_tests)
(test_new_spec_matches_an_independent_implementation, test_new_spec_gradients_match_an_independent_implementation,
 test_new_spec_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, TRUE_BOUND)


def test_the_frobenius_norm_is_read_through_a_let_chain():
    """The fix: ``n2`` summed in one let and ``nrm = sqrt(n2 + 1e-6)`` in the next; the Frobenius reading inlines
    the chain and proves g ||W|| / sqrt(||W||^2 + 1e-6) < 1 (it was "unknown")."""
    report = _compiled("fro").report
    assert report.eigen_interval == "[0, 1)", report.eigen_reason
    assert "Frobenius norm" in report.eigen_reason, report.eigen_reason


def test_canonical_sums_do_not_depend_on_a_dummy_index():
    """The fix: the same sum around a prover placeholder (a SymPy Dummy, whose dummy_index differs per process and
    per creation) gets the same index names and order every time, so the proof found does not vary between runs."""
    import sympy as sp

    from dsfc.analysis.stability import _canonical_sums

    W = sp.IndexedBase("W")
    i, j = sp.symbols("i j", integer=True, nonnegative=True)
    N = sp.Symbol("N", integer=True, positive=True)

    def canonical() -> str:
        t = sp.Dummy("j_frac", nonnegative=True)  # a fresh dummy_index each time, as in another process
        form = _canonical_sums(sp.Sum(sp.exp(W[i, t * N, j]), (j, 0, N - 1), (i, 0, 2)))
        return str(form.xreplace({t: sp.Symbol("t")}))

    assert canonical() == canonical()
