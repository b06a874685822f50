"""A twenty-third new-spec hunt: classical signal-processing and memory layers a researcher might write as DSF specs,
at odd and prime dims, and broken versions of two of them.

Specs: a holographic (HRR) memory per head (2 heads, n = 5, d = 7) that binds key and value by circular convolution
(``B[(h, i), m] = sum(j, k[h, j] * W_V[h, (i - j) % n, m])``, index differences that go negative under ``%``) and
reads by circular correlation (``C = q[h, (i - e) % n]``) under a gated scalar decay; the Legendre Memory Unit's
memory (LegT, N = 5 per channel, d = 3, Euler step 1 / theta) with A written as one formula, its i < j test spelt
``min(max(j - i, 0), 1)``; a selective discrete Laguerre filter bank (N = 4 per channel, d = 5: a lower-triangular A
whose entries (1 - a^2) (-a)^(k - j - 1) are written as a formula, the pole a = sigmoid(.) from the input); an
autoassociative Hebbian memory (S = g S + k k^T, the key its own value: one projection read twice by B; 3 heads of
K = 3, d = 7); an IIR biquad per channel in transposed direct form II (poles r e^(+-i th), read before the update,
b0 in D; d = 5); a gated cyclic shift register (a ring buffer, ``A = g delta(j, (i - 1) % n)``, n = 5, d = 3); a
circular convolution per channel whose taps are a softmax (a circulant ``A = w[(i - j) % n]``); a GLA (3 heads of
K = 2, V = 3, d = 7) whose output lists each head's value slots rotated (``delta(b, (e + 1) % V)``), and softmax
attention and the delta rule with the same read.

Checked (each against an independent float64 loop written here from the model's equations, not from dsfc's
reference: the HRR and the circulant through FFTs, the LMU from its A as the paper states it case by case, the
Laguerre bank as its cascade l_k = a l_k' + l_(k-1)' - a l_(k-1), the biquad as its difference equations (that loop
itself against ``scipy.signal.lfilter``), the ring buffer through ``torch.roll``): forward at T = 0, 1, 7 and 9 on
the torch path and at T = 0 and 9 on the Triton path (interpreted), batch 1 and 3, from zero and from an initial
state; token-by-token step; gradients of the input and every parameter on the torch path; against dsfc's reference
through ``check_all_paths``; the family and eigenvalue bound of ``dsfc analyze``, the claimed (or true) bound
checked on the module's own A. Two broken versions each of the HRR and Laguerre specs (a misspelt function, a
param read with too few indices, an undefined name, transposed param indices) make ``python -m dsfc compile`` exit
2 with ``file:line:col`` errors and write nothing.

Found and fixed: the ring buffer and the circulant were "unknown" (true: |lambda| = g < 1, and |lambda| <= 1 with 1
reached). Their norm readings sum a row of A, ``g sum(j, delta(j, (i - 1) % n))`` and ``sum(j, w[(i - j) % n])``,
and the prover bounded such a sum term by term: n times the largest term, n a dim, unbounded. It now also reads a sum
exactly where it can (``_picked_or_permuted`` in analysis/stability.py): a delta of the summed index picks one term
(or none), and an index read only through ``(c +- j) % n`` over its full range 0 .. n - 1 is a permutation of that
range, so the sum is ``sum(j, w[j])`` = 1 for softmax taps. The exact reading is intersected with the term-by-term
one, so no earlier bound gets weaker (regression tests in tests/analysis/test_norm_bound.py: both claims checked on
the module's sampled A, and the readings refused for a residue of 2 j, another modulus, two residues).

Found and fixed: an output that lists each head's value slots rotated, ``C = delta(o, h) * delta(b, (e + 1) % V) *
q[h, a]``, was refused for softmax attention ("an infinite feature range needs ... this spec does not have that
form", at A), and ran the elementwise diagonal scan for a GLA and the dense scan for the delta rule (right numbers).
The outer-product, delta-rule and kernelised splits map each output axis to a state axis read at the output's own
index. A new pass (ir/gathered_reads.py, after unflatten_output) rewrites the analysis core where an output index e
reads a state axis only at a formula f(e) provably in its range and there is no D: the core output reads the axis at
its own index and a first post-op gathers ``y[.., e] = y_core[.., f(e)]``; the module's dsf_matrices still shows the
spec's C, and dsfc's reference keeps the spec as written. The rotated softmax, delta rule and GLA now run the
quadratic, chunked delta-rule and chunked outer-product families (against loops here; unit tests of the pass in
tests/analysis/test_gathered_reads.py). Where the read stays unsupported (an output axis of an independent dim read
through ``delta(e, b)``: E may exceed V), the kernelised error now names C's read, points at C and hints at
``dim E = V - 1``.

Left weaker than the truth (no false claim): the LMU's bound is "unknown": the spectral radius of I + A / theta is
0.88 at theta = 12, but theta is a learned param and at theta = 5 it is 1.34, so no bound holds for every theta
(``TRUE_BOUND`` records the truth at the spec's init).

Not done: a read at a formula of the output index in a spec with a D (D u is written into y's own slots) is left as
written (softmax attention refused with the located message at C, the others on the diagonal or dense scan).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, case_builds, check_grads_against_loop,  # noqa: E402
                         check_small_chunks, matvec, rel_err, run_steps, spec_hunt_tests, stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.cli import main  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

HRR = """
model HRRMemory "holographic memory per head: S = g S + k (*) v (circular convolution), y = q (#) S (correlation)"
dim d = 7
dim H = 2
dim n = 5
input u[d]
state S[h: H, i: n]
output y[h: H, e: n]
param W_Q[H, n, d] ~ normal(0, 0.4)
param W_K[H, n, d] ~ normal(0, 0.4)
param W_V[H, n, d] ~ normal(0, 0.4)
param w_g[H, d] ~ normal(0, 0.5)
let q[h: H, i: n] = sum(m, W_Q[h, i, m] * u[m])
let k[h: H, i: n] = sum(m, W_K[h, i, m] * u[m])
let g[h: H] = sigmoid(sum(m, w_g[h, m] * u[m]) + 1)
A[(h, i), (h2, i2)] = delta(h, h2) * delta(i, i2) * g[h]
B[(h, i), m] = sum(j, k[h, j] * W_V[h, (i - j) % n, m])
C[(o, e), (h, i)] = delta(o, h) * q[h, (i - e) % n]
"""

LMU = """
model LMU "Legendre Memory Unit memory (LegT), Euler step: m = m + (A m + B u) / theta, N = 5 per channel, d = 3"
dim d = 3
dim N = 5
input u[d]
state m[c: d, i: N]
output y[d]
param theta = 12
param W_out[d, d, N] ~ normal(0, 0.5)
# A[i, j] = (2 i + 1) (-1 if i < j else (-1)^(i - j + 1)), B[i] = (2 i + 1) (-1)^i (Voelker et al. 2019)
A[(c, i), (c2, j)] = delta(c, c2) * (delta(i, j) + (2 * i + 1) / theta
    * (-min(max(j - i, 0), 1) + (1 - min(max(j - i, 0), 1)) * (-1) ^ (i - j + 1)))
B[(c, i), m2] = delta(c, m2) * (2 * i + 1) * (-1) ^ i / theta
C[o, (c, i)] = W_out[o, c, i]
"""

LAGUERRE = """
model Laguerre "selective discrete Laguerre filter bank per channel: l_k = a l_k' + l_(k-1)' - a l_(k-1), N = 4, d = 5"
dim d = 5
dim N = 4
input u[d]
state l[c: d, k: N]
output y[d]
param w_a[d] ~ normal(0, 0.5)
param b_a[d] ~ normal(0, 0.5)
param W_out[d, N] ~ normal(0, 0.5)
let a[c: d] = sigmoid(w_a[c] * u[c] + b_a[c])
A[(c, k), (c2, j)] = delta(c, c2) * (delta(k, j) * a[c]
    + min(max(k - j, 0), 1) * (1 - a[c] ^ 2) * (-a[c]) ^ max(k - j - 1, 0))
B[(c, k), m] = delta(c, m) * sqrt(1 - a[c] ^ 2) * (-a[c]) ^ k
C[o, (c, k)] = delta(o, c) * W_out[c, k]
"""

HEBB = """
model HebbAuto "autoassociative Hebbian memory per head: S = g S + k k^T (the key is its own value), y = S q"
dim d = 7
dim H = 3
dim K = 3
input u[d]
state S[h: H, a: K, b: K]
output y[h: H, b: K]
param W_Q[H, K, d] ~ normal(0, 0.4)
param W_K[H, K, d] ~ normal(0, 0.4)
param w_g[H, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let g[h: H] = sigmoid(sum(m, w_g[h, m] * u[m]) + 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h]
B[(h, a, b), m] = k[h, a] * W_K[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

BIQUAD = """
model Biquad "IIR biquad per channel, transposed direct form II: poles r e^(+-i th), y = b0 x + s1 (read before update)"
dim d = 5
input x[d]
state s[c: d, j: 2]
output y[d]
readout pre
param rho[d] ~ normal(1, 0.5)
param phi[d] ~ normal(0, 1)
param b0[d] ~ normal(0, 0.5)
param b1[d] ~ normal(0, 0.5)
param b2[d] ~ normal(0, 0.5)
let r[c: d] = sigmoid(rho[c])
let a1[c: d] = 2 * r[c] * cos(3.141592653589793 * sigmoid(phi[c]))
let a2[c: d] = -r[c] ^ 2
A[(c, j), (c2, j2)] = delta(c, c2) * (delta(j2, 0) * (delta(j, 0) * a1[c] + delta(j, 1) * a2[c])
    + delta(j, 0) * delta(j2, 1))
B[(c, j), m] = delta(c, m) * (delta(j, 0) * (b1[c] + a1[c] * b0[c]) + delta(j, 1) * (b2[c] + a2[c] * b0[c]))
C[o, (c, j)] = delta(o, c) * delta(j, 0)
D[o, m] = delta(o, m) * b0[m]
"""

RING = """
model RingShift "gated cyclic shift register (a ring buffer): x_i = g x_((i - 1) mod n) + W_in u, n = 5, d = 3"
dim d = 3
dim n = 5
input u[d]
state x[n]
output y[d]
param w_g[d] ~ normal(0, 0.5)
param W_in[n, d] ~ normal(0, 0.5)
param W_out[d, n] ~ normal(0, 0.5)
let g = sigmoid(sum(m, w_g[m] * u[m]))
A[i, j] = g * delta(j, (i - 1) % n)
B[i, m] = W_in[i, m]
C[o, i] = W_out[o, i]
"""

CIRCULANT = """
model Circulant "circular convolution per channel: x = w (*) x + e_0 u_c, w a softmax over n = 5 taps, d = 3"
dim d = 3
dim n = 5
input u[d]
state x[c: d, i: n]
output y[d]
param z[n] ~ normal(0, 1)
param W_out[d, n] ~ normal(0, 0.5)
let w[i: n] = exp(z[i]) / sum(j, exp(z[j]))
A[(c, i), (c2, j)] = delta(c, c2) * w[(i - j) % n]
B[(c, i), m] = delta(c, m) * delta(i, 0)
C[o, (c, i)] = delta(o, c) * W_out[c, i]
"""

ROT_GLA = """
model RotGLA "GLA, 3 heads of K = 2, V = 3, d = 7, value slots rotated: y[h, e] = o[h, (e + 1) % V]"
dim d = 7
dim H = 3
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, e: V]
param W_Q[H, K, d] ~ normal(0, 0.4)
param W_K[H, K, d] ~ normal(0, 0.4)
param W_V[H, V, d] ~ normal(0, 0.4)
param w_g[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let g[h: H, a: K] = sigmoid(sum(m, w_g[h, a, m] * u[m]) + 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(b, (e + 1) % V) * q[h, a]
"""

CASES = {
    "hrr": (HRR, Family.DIAGONAL_SCAN),
    "lmu": (LMU, Family.DENSE_SCAN),
    "laguerre": (LAGUERRE, Family.DENSE_SCAN),
    "hebb": (HEBB, Family.CHUNKED_OUTER),
    "biquad": (BIQUAD, Family.DENSE_SCAN),
    "ring": (RING, Family.DENSE_SCAN),
    "circulant": (CIRCULANT, Family.DENSE_SCAN),
}
sig = torch.sigmoid


# -- independent float64 implementations from the models' equations ---------------------------------------------------
# Each takes the parameters by spec name, u [B, T, d_in] and an initial state in the spec's layout (None: zero), and
# returns y [B, T, ...].

def _hrr(P, u, h0=None):
    # per head: S = g S + k (*) v, (k (*) v)_i = sum_j k_j v_(i - j mod n) = ifft(fft(k) fft(v)); g = sigmoid(w_g u + 1)
    # y_e = sum_j q_j S_(j + e mod n) = ifft(conj(fft(q)) fft(S)) (circular correlation)
    H, n, _ = P["W_K"].shape
    S, ys = (u.new_zeros(u.shape[0], H, n) if h0 is None else h0), []
    fft, ifft = torch.fft.fft, torch.fft.ifft
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        g = sig(ut @ P["w_g"].T + 1)[..., None]
        S = g * S + ifft(fft(k) * fft(v)).real
        ys.append(ifft(fft(q).conj() * fft(S)).real)
    return stack_steps(ys, u, H, n)


def _lmu_matrices(N: int, theta):
    """The LegT A and B of Voelker et al. (2019), entry by entry as the paper states them."""
    A = [[(2 * i + 1) * (-1.0 if i < j else (-1.0) ** (i - j + 1)) for j in range(N)] for i in range(N)]
    B = [(2 * i + 1) * (-1.0) ** i for i in range(N)]
    return torch.tensor(A, dtype=F64) / theta, torch.tensor(B, dtype=F64) / theta


def _lmu(P, u, h0=None):
    # per channel c: m_c = m_c + (A m_c + B u_c) / theta (Euler, dt = 1); y = sum_(c, i) W_out[o, c, i] m[c, i]
    d, _, N = P["W_out"].shape
    A, B = _lmu_matrices(N, P["theta"])
    m, ys = (u.new_zeros(u.shape[0], d, N) if h0 is None else h0), []
    for t in range(u.shape[1]):
        m = m + m @ A.T + u[:, t, :, None] * B
        ys.append(torch.einsum("oci,bci->bo", P["W_out"], m))
    return stack_steps(ys, u, d)


def _laguerre(P, u, h0=None):
    # the cascade with this step's pole a = sigmoid(w_a u + b_a): l_0 = a l_0' + sqrt(1 - a^2) u,
    # l_k = a l_k' + l_(k-1)' - a l_(k-1) (primes: the previous step); y_c = sum_k W_out[c, k] l_k
    d, N = P["W_out"].shape
    prev = u.new_zeros(u.shape[0], d, N) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        ut = u[:, t]
        a = sig(P["w_a"] * ut + P["b_a"])
        cur = [a * prev[..., 0] + torch.sqrt(1 - a * a) * ut]
        for k in range(1, N):
            cur.append(a * prev[..., k] + prev[..., k - 1] - a * cur[k - 1])
        prev = torch.stack(cur, -1)
        ys.append((prev * P["W_out"]).sum(-1))
    return stack_steps(ys, u, d)


def _hebb(P, u, h0=None):
    # per head S = g S + k k^T, g = sigmoid(w_g u + 2); y[h, b] = sum_a q[h, a] S[h, a, b]
    H, K, _ = P["W_K"].shape
    S, ys = (u.new_zeros(u.shape[0], H, K, K) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k = matvec(P["W_Q"], ut), matvec(P["W_K"], ut)
        S = sig(ut @ P["w_g"].T + 2)[..., None, None] * S + k[..., :, None] * k[..., None, :]
        ys.append(torch.einsum("zha,zhab->zhb", q, S))
    return stack_steps(ys, u, H, K)


def _biquad(P, u, h0=None):
    # y = b0 x + s1;  s1 = b1 x + a1 y + s2;  s2 = b2 x + a2 y  (transposed direct form II of
    # H(z) = (b0 + b1 z^-1 + b2 z^-2) / (1 - a1 z^-1 - a2 z^-2)), a1 = 2 r cos(pi sigmoid(phi)), a2 = -r^2
    r = sig(P["rho"])
    a1, a2 = 2 * r * torch.cos(torch.pi * sig(P["phi"])), -r * r
    s = u.new_zeros(u.shape[0], u.shape[2], 2) if h0 is None else h0
    s1, s2, ys = s[..., 0], s[..., 1], []
    for t in range(u.shape[1]):
        x = u[:, t]
        y = P["b0"] * x + s1
        s1, s2 = P["b1"] * x + a1 * y + s2, P["b2"] * x + a2 * y
        ys.append(y)
    return stack_steps(ys, u, u.shape[2])


def _ring(P, u, h0=None):
    # x_new[i] = g x[i - 1 mod n] + (W_in u)_i (torch.roll by one), g = sigmoid(w_g . u); y = W_out x
    x = u.new_zeros(u.shape[0], P["W_in"].shape[0]) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        ut = u[:, t]
        x = sig(ut @ P["w_g"])[:, None] * torch.roll(x, 1, -1) + ut @ P["W_in"].T
        ys.append(x @ P["W_out"].T)
    return stack_steps(ys, u, u.shape[2])


def _circulant(P, u, h0=None):
    # per channel x_new = w (*) x + e_0 u_c, the circular convolution through FFTs, w = softmax(z); y_c = W_out[c] . x_c
    w = torch.softmax(P["z"], 0)
    d, n = P["W_out"].shape
    x, e0 = (u.new_zeros(u.shape[0], d, n) if h0 is None else h0), torch.eye(n, dtype=F64)[0]
    ys = []
    for t in range(u.shape[1]):
        x = torch.fft.ifft(torch.fft.fft(w) * torch.fft.fft(x)).real + u[:, t, :, None] * e0
        ys.append((x * P["W_out"]).sum(-1))
    return stack_steps(ys, u, d)


def _rotgla(P, u, h0=None):
    # per head S = diag(g) S + k v^T, g = sigmoid(w_g u + 2) per key; y[h, e] = (q^T S)[h, (e + 1) % V] (a roll by -1)
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    S, ys = (u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, k, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        S = sig(matvec(P["w_g"], ut) + 2)[..., None] * S + k[..., :, None] * v[..., None, :]
        ys.append(torch.roll(torch.einsum("zha,zhae->zhe", q, S), -1, -1))
    return stack_steps(ys, u, H, V)


INDEPENDENT = {"hrr": _hrr, "lmu": _lmu, "laguerre": _laguerre, "hebb": _hebb, "biquad": _biquad, "ring": _ring,
               "circulant": _circulant}
EIGEN = {"hrr": Bound.STABLE, "lmu": Bound.UNKNOWN, "laguerre": Bound.STABLE, "hebb": Bound.STABLE,
         "biquad": Bound.STABLE, "ring": Bound.STABLE, "circulant": Bound.MARGINAL}
TRUE_BOUND = {"lmu": Bound.STABLE}  # at theta = 12 (the init); not for every theta

_compiled, _built = case_builds(CASES)  # each spec compiled once per test worker


# forward, gradients, every path against the reference, the structure report (dsf_testing.spec_hunt_tests)
(test_new_spec_matches_an_independent_implementation, test_new_spec_gradients_match_an_independent_implementation,
 test_new_spec_matches_the_reference, test_the_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built, TRUE_BOUND)


def test_the_biquad_loop_is_scipy_lfilter():
    """The biquad's loop is the filter it says: per channel, scipy.signal.lfilter with b = (b0, b1, b2),
    a = (1, -a1, -a2) and the same initial conditions (scipy's zi is the transposed direct form II state)."""
    signal = pytest.importorskip("scipy.signal")
    P, gen = _built("biquad").params(), torch.Generator().manual_seed(3)
    u, h0 = torch.randn(2, 11, 5, generator=gen, dtype=F64), torch.randn(2, 5, 2, generator=gen, dtype=F64)
    r = sig(P["rho"])
    a1, a2 = 2 * r * torch.cos(torch.pi * sig(P["phi"])), -r * r
    got = _biquad(P, u, h0)
    for b in range(2):
        for c in range(5):
            want, _ = signal.lfilter([P["b0"][c].item(), P["b1"][c].item(), P["b2"][c].item()],
                                     [1.0, -a1[c].item(), -a2[c].item()], u[b, :, c].numpy(), zi=h0[b, c].numpy())
            assert torch.allclose(got[b, :, c], torch.from_numpy(want), rtol=1e-12, atol=1e-12), (b, c)


def test_the_lmu_and_laguerre_formulas_are_the_papers_matrices():
    """The min / max formulas spell the case-by-case matrices: the LMU's A (I + A_LegT / theta) and the Laguerre
    bank's A, read from the module at one step, equal the matrices built here from their definitions."""
    lmu = _built("lmu")
    A, B = _lmu_matrices(5, 12.0)
    u = torch.randn(1, 1, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    got = lmu.dsf_matrices(u)[0].reshape(3, 5, 3, 5)
    for c in range(3):
        assert torch.allclose(got[c, :, c], torch.eye(5, dtype=F64) + A, atol=1e-14), c
    lag = _built("laguerre")
    P, u = lag.params(), torch.randn(1, 1, 5, generator=torch.Generator().manual_seed(4), dtype=F64)
    a = sig(P["w_a"] * u[0, 0] + P["b_a"])
    got = lag.dsf_matrices(u)[0].reshape(5, 4, 5, 4)
    for c in range(5):
        ac = a[c].item()
        want = [[ac if k == j else (1 - ac * ac) * (-ac) ** (k - j - 1) if k > j else 0.0 for j in range(4)]
                for k in range(4)]
        assert torch.allclose(got[c, :, c], torch.tensor(want, dtype=F64), atol=1e-14), c


BROKEN = {  # (spec, the bad text, its replacement, the error's line:col, what the message says)
    "hrr-typo": (HRR, "sigmoid(sum(m, w_g", "sigmod(sum(m, w_g", "14:15", "unknown function 'sigmod'"),
    "hrr-arity": (HRR, "W_V[h, (i - j) % n, m]", "W_V[h, (i - j) % n]", "16:33",
                  "param 'W_V' has 3 axes but is indexed with 2"),
    "laguerre-undefined": (LAGUERRE, "sqrt(1 - a[c] ^ 2)", "sqrt(1 - al[c] ^ 2)", "13:39", "unknown name 'al'"),
    # one error for the read since hunt 25 (it was one per index, with hints to read part of an axis or wrap it)
    "laguerre-transposed": (LAGUERRE, "W_out[c, k]", "W_out[k, c]", "14:30",
                            "the indices of 'W_out' fit its axes only in another order ('k' ranges over 4 values, "
                            "axis 0 has 5; 'c' ranges over 5 values, axis 1 has 4)"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_spec_is_a_located_error_and_writes_nothing(case, tmp_path, capsys):
    """Each broken spec: ``dsfc compile`` exits 2, names ``file:line:col`` and the fault, and writes no file."""
    text, bad, good, where, says = BROKEN[case]
    assert text.count(bad) == 1
    spec = tmp_path / f"{case}.dsf"
    spec.write_text(text.replace(bad, good).lstrip("\n"))
    out = tmp_path / "out"
    assert main(["compile", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:{where}: error: {says}" in err, err
    assert not out.exists() or not any(out.iterdir())


def test_python_m_dsfc_compile_of_a_broken_spec_exits_non_zero(tmp_path):
    """The same through ``python -m dsfc`` as a user runs it: a non-zero exit, the located error on stderr."""
    text, bad, good, where, says = BROKEN["hrr-typo"]
    spec = tmp_path / "hrr.dsf"
    spec.write_text(text.replace(bad, good).lstrip("\n"))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "dsfc", "compile", str(spec), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"{spec}:{where}: error: {says}" in run.stderr, run.stderr
    assert not out.exists()


ROT_SOFT = """
model RotSoft "softmax attention, 2 heads of K = 2, V = 3, d = 5, value slots rotated: y[h, e] = o[(e + 1) % V]"
dim d = 5
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, f: taylor(K, inf), b: V]
output y[h: H, e: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qf[h: H, f: taylor(K, inf)] = taylor(a, q[h, a])
let kf[h: H, f: taylor(K, inf)] = taylor(a, k[h, a])
let z[h: H, f: taylor(K, inf)] = cumsum(kf[h, f])
let eta[h: H] = sum(f, qf[h, f] * z[h, f])
let eta_prev[h: H] = prev(eta[h])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * eta_prev[h] / eta[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m] / eta[h]
C[(o, e), (h, f, b)] = delta(o, h) * delta(b, (e + 1) % V) * qf[h, f]
"""
def _rotsoft(P, u, h0=None):
    # per head o_t = sum_(j<=t) softmax_j(q_t . k_j / sqrt(K)) v_j, then y[h, e] = o[h, (e + 1) % V] (a roll by -1)
    assert h0 is None
    q, k, v = matvec(P["W_Q"], u.flatten(0, 1)), matvec(P["W_K"], u.flatten(0, 1)), matvec(P["W_V"], u.flatten(0, 1))
    q, k, v = (x.unflatten(0, u.shape[:2]) for x in (q, k, v))  # [B, T, H, .]
    ys = []
    for t in range(u.shape[1]):
        w = torch.softmax(torch.einsum("zha,zjha->zhj", q[:, t], k[:, :t + 1]) / k.shape[-1] ** 0.5, -1)
        ys.append(torch.roll(torch.einsum("zhj,zjhb->zhb", w, v[:, :t + 1]), -1, -1))
    return stack_steps(ys, u, *P["W_V"].shape[:2])


# the delta rule with the same rotated read (L2-normalised keys, beta = sigmoid(.), 2 heads of K = 2, V = 3)
ROT_DELTA = (ROT_GLA.replace("model RotGLA \"GLA,", "model RotDelta \"delta rule,")
             .replace("param w_g[H, K, d]", "param w_b[H, d]")
             .replace("let g[h: H, a: K] = sigmoid(sum(m, w_g[h, a, m] * u[m]) + 2)",
                      "let kn[h: H, a: K] = k[h, a] / sqrt(sum(a3, k[h, a3] ^ 2) + 1e-6)\n"
                      "let be[h: H] = sigmoid(sum(m, w_b[h, m] * u[m]))")
             .replace("delta(a, a2) * delta(b, b2) * g[h, a]",
                      "delta(b, b2) * (delta(a, a2) - be[h] * kn[h, a] * kn[h, a2])")
             .replace("B[(h, a, b), m] = k[h, a]", "B[(h, a, b), m] = be[h] * kn[h, a]"))


def _rotdelta(P, u, h0=None):
    # per head S = S + be kn (v - S^T kn)^T, kn = k / sqrt(|k|^2 + 1e-6); y[h, e] = (q^T S)[h, (e + 1) % V]
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]
    S, ys = (u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0), []
    for t in range(u.shape[1]):
        ut = u[:, t]
        q, kr, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        k = kr / ((kr * kr).sum(-1, keepdim=True) + 1e-6).sqrt()
        be = sig(ut @ P["w_b"].T)[..., None, None]
        S = S + be * k[..., None] * (v - torch.einsum("zhav,zha->zhv", S, k))[..., None, :]
        ys.append(torch.roll(torch.einsum("zha,zhae->zhe", q, S), -1, -1))
    return stack_steps(ys, u, H, V)


def _check_rotated(built, loop, batches=((1, 1), (3, 9))) -> None:
    """Forward on torch and Triton, step by step (from zero and, for plain states, from an initial state) and the
    gradients, against ``loop``."""
    P, gen = built.params(), torch.Generator().manual_seed(6)
    for batch, t in batches:
        for with_h0 in (False, True) if not built.running else (False,):
            u = torch.randn(batch, t, built.d_in(), generator=gen, dtype=F64)
            h0 = 0.5 * torch.randn(batch, *built.state_shape(), generator=gen, dtype=F64) if with_h0 else None
            want = loop(P, u, h0).reshape(batch, t, built.d_out())
            for backend in ("torch", "triton") if TRITON else ("torch",):
                built.model.backend = backend
                with torch.no_grad():
                    assert rel_err(built.model(u, initial_state=h0), want) < 1e-8, (backend, batch, t, with_h0)
            built.model.backend = "torch"
            with torch.no_grad():
                assert rel_err(run_steps(built.model, u, h0)[0], want) < 1e-8, ("step", batch, t, with_h0)
    u = torch.randn(2, 5, built.d_in(), generator=gen, dtype=F64)
    check_grads_against_loop(built, loop, u, torch.randn(2, 5, built.d_out(), generator=gen, dtype=F64))


@pytest.mark.parametrize("text, loop, family", [(ROT_SOFT, _rotsoft, Family.QUADRATIC),
                                                (ROT_DELTA, _rotdelta, Family.CHUNKED_DELTA),
                                                (ROT_GLA, _rotgla, Family.CHUNKED_OUTER)],
                         ids=["softmax", "delta", "gla"])
def test_a_value_read_at_a_formula_of_the_output_index_runs_the_split_family(text, loop, family):
    """The fix: an output that lists each head's value slots rotated (``delta(b, (e + 1) % V)`` in C) was refused
    for softmax attention ("this spec does not have that form", at A) and ran the diagonal or dense scan for a GLA
    or the delta rule. The core now reads the slots at the output's own index and the rotation is a first post-op
    (ir/gathered_reads.py): quadratic, chunked delta-rule and chunked outer-product families, against loops on
    torch, Triton and step (from an initial state too, for plain states), with gradients, and in chunks of 3 steps
    against dsfc's reference, which keeps the spec as written."""
    result = compile_text(text, "rotated.dsf")
    assert result.structure.family == family, result.structure.family_reason
    assert result.core.posts[0].tensor.name == "y" and result.core.output.name == "y_core"
    built = build(result, dict(result.sym.dim_defaults))
    _check_rotated(built, loop)
    if family != Family.QUADRATIC:
        check_small_chunks(built)  # chunks of 3 steps: T = 9 crosses chunk boundaries (against the reference)


SOFT_NARROW = (ROT_SOFT.replace("dim V = 3", "dim V = 3\ndim E = 2")
               .replace("output y[h: H, e: V]", "output y[h: H, e: E]").replace("delta(b, (e + 1) % V)", "delta(e, b)"))


def test_a_read_not_provably_in_range_of_softmax_attention_is_a_located_error_at_c(tmp_path, capsys):
    """Softmax attention whose output axis of an independent dim E reads value slots through ``delta(e, b)`` (not
    provably in range: E may exceed V) is not the kernelised form. The error said "this spec does not have that
    form" at A; it now names C's read, points at C and hints at the dim formula that works (``dim E = V - 1``)."""
    spec = tmp_path / "narrow.dsf"
    spec.write_text(SOFT_NARROW.lstrip("\n"))
    assert main(["compile", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:22:1: error: C reads the state through delta(b, e), which is not provably in range" in err, err
    assert "hint: declare the output axis as a formula of the state axis it reads (dim E = V - 1)" in err
    assert not (tmp_path / "out").exists()
