"""A sixth new-spec hunt.

Dims named like the generated module's own locals: every method of the generated class starts with the spec's
dims as locals (``t, x, y = self.t, self.x, self.y``), and a few methods then bound locals of their own that a spec
may also use as a dim name (``_reference``'s ``A, B, C, D, x, h, ys, t, read``, ``forward``'s ``y, final, core``,
``_posts``' argument ``y``, ``_check_running``'s argument ``batch``, ``_core``'s ``args``, the quadratic family's ``g``
and ``y``). A dim ``t`` (a tap count) or ``y`` (with the output named otherwise) was then a tensor where an int was
meant: backend="reference" raised in reshape, a spec with posts raised "'int' object has no attribute 'dtype'", and
an empty input to a quadratic spec failed in new_zeros. The generated locals are now ``_``-prefixed (spec names
never are: py_name renames them). Lets named like the runtime helpers the module imports (expm1) shadowed them
too; those names are now reserved. And the eigenvalue prover called minLSTM's f / (f + i) unbounded.

New user specs the catalog and the earlier hunts do not cover (Mamba with the exact ZOH input (exp(dt a) - 1) / a
at n = 1, RetNet with its gammas a parameter vector (some negative), GLA with one gate per head from a low-rank
projection at H = 1, a delta rule with beta in (0, 2), minGRU with its g(x) as the
driven input and an out-projection post, minLSTM). Each is checked against the float64 reference
recurrence built from the same spec: forward with and without an initial state, token-by-token step, gradients of
the input, the initial state and every parameter, on the torch path and the Triton path (interpreted on CPU)."""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import F64, check_backend, check_new_spec, compile_and_build, rel_err, run_steps  # noqa: E402
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

LOCALS_DIAG = """
model LocalsDiag "dims named like the generated code's locals, read by the decay, B, C, a running let and a post"
dim t = 2
dim x = 3
dim ys = 2
dim read = 1
dim a = 2
dim g = 3
dim y = 2
dim batch = 2
dim args = 2
input inp[t]
state s[c: x, j: ys]
output out[x]
param W[x, ys, t] ~ normal(0, 1)
param Wg[x, t] ~ normal(0, 1)
let gate[c: x] = sigmoid(sum(m, Wg[c, m] * inp[m]) + read / (a + g + y + batch + args + t))
let z[c: x] = cumsum(gate[c])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * gate[c] ^ (1 + j / ys + t / (a + g + y + batch + args))
B[(c, j), k] = W[c, j, k] * z[c] / (1 + z[c])
C[o, (c, j)] = delta(o, c) * (1 + j + x + ys + read + y)
post w[o: x] = out[o] * (a + g + y + batch + args + t + read)
"""

LOCALS_OUTER = """
model LocalsOuter "GLA with dims named like generated locals (g heads, e keys, y values, x input, t, batch, args)"
dim x = 4
dim g = 2
dim e = 3
dim y = 2
dim t = 2
dim batch = 3
dim args = 1
dim final = 2
input u[x]
state S[h: g, a: e, b: y]
output o[h: g, b: y]
param W_Q[g, e, x] ~ normal(0, 1 / sqrt(x))
param W_K[g, e, x] ~ normal(0, 1 / sqrt(x))
param W_V[g, y, x] ~ normal(0, 1 / sqrt(x))
param W_a[g, e, x] ~ normal(0, 1 / sqrt(x))
let al[h: g, a: e] = sigmoid(sum(m, W_a[h, a, m] * u[m]) + t + batch / (args + final))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m] / (t + y)
C[(h3, b3), (h, a, b)] = delta(h3, h) * delta(b3, b) * sum(m, W_Q[h, a, m] * u[m]) / sqrt(e + g + final)
"""

LOCALS_DELTA = """
model LocalsDelta "delta rule with dims named like generated locals"
dim x = 4
dim g = 2
dim e = 2
dim y = 2
dim t = 2
dim k = 3
input u[x]
state S[h: g, a: e, b: y]
output o[h: g, b: y]
param W_Q[g, e, x] ~ normal(0, 1 / sqrt(x))
param W_K[g, e, x] ~ normal(0, 1 / sqrt(x))
param W_V[g, y, x] ~ normal(0, 1 / sqrt(x))
param W_b[g, x] ~ normal(0, 1)
let kr[h: g, a: e] = sum(m, W_K[h, a, m] * u[m])
let kk[h: g, a: e] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let beta[h: g] = sigmoid(sum(m, W_b[h, m] * u[m]) + t - k)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta[h] * kk[h, a] * kk[h, a2])
B[(h, a, b), m] = beta[h] * kk[h, a] * W_V[h, b, m] * t / k
C[(h3, b3), (h, a, b)] = delta(h3, h) * delta(b3, b) * sum(m, W_Q[h, a, m] * u[m]) / (y + e + x)
"""

LOCALS_DENSE = """
model LocalsDense "2x2 rotation blocks with dims named like generated locals"
dim x = 2
dim t = 3
dim g = 2
input u[x]
state s[c: t, r: 2]
output o[t]
param th[t] ~ normal(0, 1)
param Wb[t, 2, x] ~ normal(0, 1)
let mag[c: t] = 0.9 * sigmoid(sum(m, u[m]) + g)
A[(c, r), (c2, r2)] = delta(c, c2) * mag[c] * (cos(th[c]) * delta(r, r2) + sin(th[c]) * (r2 - r))
B[(c, r), m] = Wb[c, r, m] / g
C[o2, (c, r)] = delta(o2, c) * (1 + r * t)
"""

LOCALS_SOFTMAX = """
model LocalsSoftmax "softmax attention with dims g (heads), batch (keys), y (values), x (input), a post"
dim x = 4
dim g = 2
dim batch = 3
dim y = 2
input u[x]
state S[h: g, f: taylor(batch, inf), b: y]
output o[h: g, b: y]
param W_Q[g, batch, x] ~ normal(0, 1 / sqrt(x))
param W_K[g, batch, x] ~ normal(0, 1 / sqrt(x))
param W_V[g, y, x] ~ normal(0, 1 / sqrt(x))
let q[h: g, a: batch] = sum(m, W_Q[h, a, m] * u[m]) / sqrt(batch)
let k[h: g, a: batch] = sum(m, W_K[h, a, m] * u[m])
let qf[h: g, f: taylor(batch, inf)] = taylor(a, q[h, a])
let kf[h: g, f: taylor(batch, inf)] = taylor(a, k[h, a])
let z[h: g, f: taylor(batch, inf)] = cumsum(kf[h, f])
let eta[h: g] = sum(f, qf[h, f] * z[h, f])
let eta_prev[h: g] = prev(eta[h])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * eta_prev[h] / eta[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m] / eta[h]
C[(o2, e), (h, f, b)] = delta(o2, h) * delta(e, b) * qf[h, f]
post w[h: g, b: y] = o[h, b] * (g + y)
"""

MAMBA_ZOH = """
model MambaZOH "S6 with exact ZOH input: (exp(dt a) - 1) / a, learned dt bias, n = 1"
dim d = 12
dim n = 1
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_dt[d, d] ~ normal(0, 0.3)
param b_dt[d] ~ dt_bias(0.001, 0.1)
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param Dp[d] = 1
let dt[c: d] = softplus(sum(k, W_dt[c, k] * u[k]) + b_dt[c])
let a[c: d, j: n] = -exp(A_log[c, j])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(dt[c] * a[c, j])
B[(c, j), k] = delta(c, k) * (exp(dt[c] * a[c, j]) - 1) / a[c, j] * sum(m, W_B[j, m] * u[m])
C[o, (c, j)] = delta(o, c) * sum(m, W_C[j, m] * u[m])
D[o, k] = delta(o, k) * Dp[k]
"""

RETNET_NEG = """
model RetNetNeg "per-head learned decay parameter, some negative"
dim d = 3
dim H = 3
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param gam[h: H] = 0.9 - 0.8 * h
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gam[h]
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

GLA_SCALAR_LOWRANK = """
model GLAScalar "GLA with one scalar gate per head from a low-rank projection, H = 1"
dim d = 6
dim H = 1
dim K = 3
dim V = 5
dim R = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_g1[R, d] ~ normal(0, 1 / sqrt(d))
param W_g2[H, R] ~ normal(0, 1)
param b_g[H] = 3
let g[h: H] = logsigmoid(sum(r, W_g2[h, r] * sum(m, W_g1[r, m] * u[m])) + b_g[h]) / 16
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(g[h])
B[(h, a, b), m] = sum(m2, W_K[h, a, m2] * u[m2]) * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

DELTANET_BETA = """
model DeltaBeta "delta rule, beta = 2 sigmoid (negative eigenvalues), K = 1 heads, unnormalised tanh keys"
dim d = 4
dim H = 3
dim K = 2
dim V = 1
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_b[H, d] ~ normal(0, 1)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2) + 1e-6)
let beta[h: H] = 2 * sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

MINGRU_G = """
model MinGRUg "minGRU with g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0) as the driven input, out-proj post"
dim d = 5
dim E = 7
input u[d]
state h[c: E]
output y[E]
param W_z[E, d] ~ normal(0, 1 / sqrt(d))
param W_h[E, d] ~ normal(0, 1 / sqrt(d))
param W_o[d, E] ~ normal(0, 1 / sqrt(E))
let z[c: E] = sigmoid(sum(m, W_z[c, m] * u[m]))
let hp[c: E] = sum(m, W_h[c, m] * u[m])
let x[c: E] = relu(hp[c]) + sigmoid(min(hp[c], 0))
drive x
A[c, c2] = delta(c, c2) * (1 - z[c])
B[c, m] = delta(c, m) * z[c]
C[o, c] = delta(o, c)
post out[o: d] = sum(c, W_o[o, c] * y[c])
"""

LOCALS = {
    "locals_diag": (LOCALS_DIAG, Family.DIAGONAL_SCAN),
    "locals_outer": (LOCALS_OUTER, Family.CHUNKED_OUTER),
    "locals_delta": (LOCALS_DELTA, Family.CHUNKED_DELTA),
    "locals_dense": (LOCALS_DENSE, Family.DENSE_SCAN),
}
CASES = {
    "mamba_zoh": (MAMBA_ZOH, Family.DIAGONAL_SCAN),
    "retnet_neg": (RETNET_NEG, Family.CHUNKED_OUTER),
    "gla_scalar_lowrank": (GLA_SCALAR_LOWRANK, Family.CHUNKED_OUTER),
    "deltanet_beta": (DELTANET_BETA, Family.CHUNKED_DELTA),
    "mingru_g": (MINGRU_G, Family.DIAGONAL_SCAN),
}


@pytest.mark.parametrize("name", list(LOCALS))
def test_dims_named_like_generated_locals(name):
    """Every backend, the reference one included (it read a dim t as its loop counter), and a post (its argument y
    was replaced by a dim y)."""
    text, family = LOCALS[name]
    check_new_spec(text, family, None, name)


def test_quadratic_dims_named_like_generated_locals():
    """Softmax attention with dims g, batch, y: the empty input's cache shapes (g, y were locals), a continued KV
    cache, step and a post, against the reference recurrence (its state is a cache, not the DSF state)."""
    built = compile_and_build(LOCALS_SOFTMAX, path="locals_softmax.dsf")
    assert built.result.structure.family == Family.QUADRATIC
    model = built.model
    u = torch.randn(2, 7, built.d_in(), generator=torch.Generator().manual_seed(0), dtype=F64)
    y_ref, _ = built.reference(u)
    for backend in ("torch", "triton"):
        model.backend = backend
        y0, cache0 = model(u[:, :0], output_final_state=True)
        assert y0.shape == (2, 0, 4) and cache0["cache:keys"].shape == (2, 0, 2, 3)
        assert cache0["cache:values"].shape == (2, 0, 2, 2)
        _, cache = model(u[:, :3], output_final_state=True)
        y_tail = model(u[:, 3:], initial_state=cache)
        assert rel_err(model(u), y_ref) < 1e-10 and rel_err(y_tail, y_ref[:, 3:]) < 1e-10, backend
    model.backend = "torch"
    assert rel_err(run_steps(model, u, None)[0], y_ref) < 1e-10


@pytest.mark.parametrize("name", list(CASES))
def test_new_spec_matches_the_reference(name):
    text, family = CASES[name]
    check_new_spec(text, family, None, name)
    # a longer odd T with several sequences, from an initial state (past one chunk of the chunked scans)
    check_backend(compile_and_build(text, path=f"{name}.dsf"), "torch", ((3, 33),), h0s=(True,))


# minLSTM (Feng et al. 2024): normalised gates f / (f + i) and i / (f + i). Interval arithmetic read f twice and
# reported the decay "unbounded (0, inf): can exceed 1"; a share n / (n + r) of n, r >= 0 is now bounded by [0, 1]
MINLSTM = """
model MinLSTM "minLSTM: normalised forget / input gates"
dim d = 4
dim E = 6
input u[d]
state h[c: E]
output y[E]
param W_f[E, d] ~ normal(0, 1 / sqrt(d))
param W_i[E, d] ~ normal(0, 1 / sqrt(d))
param W_h[E, d] ~ normal(0, 1 / sqrt(d))
let f[c: E] = sigmoid(sum(m, W_f[c, m] * u[m]))
let i[c: E] = sigmoid(sum(m, W_i[c, m] * u[m]))
let fn[c: E] = f[c] / (f[c] + i[c])
A[c, c2] = delta(c, c2) * fn[c]
B[c, m] = i[c] / (f[c] + i[c]) * W_h[c, m]
C[o, c] = delta(o, c)
"""


def test_minlstm_normalised_gate_is_a_share_in_0_1():
    r = compile_text(MINLSTM, "minlstm.dsf").report
    assert (r.eigen_bound, r.eigen_interval) == (Bound.STABLE.value, "(0, 1)"), r.eigen_reason
    check_new_spec(MINLSTM, Family.DIAGONAL_SCAN, None, "minlstm")


PR = "relu(sum(m, W_h[c, m] * u[m]))"  # >= 0, and 0 for u . W_h[c] <= 0


@pytest.mark.parametrize("decay, want", [
    ("f[c] / (f[c] + i[c])", (Bound.STABLE.value, "(0, 1)")),
    ("i[c] / (2 * f[c] + i[c])", (Bound.STABLE.value, "(0, 1)")),  # the share rule's r = 2 f, not f
    ("f[c] / (f[c] + 1)", (Bound.STABLE.value, "(0, 0.5)")),
    ("f[c] / (f[c] - i[c] + 1)", (Bound.STABLE.value, "(0, 1)")),  # r = 1 - i > 0
    (f"{PR} / ({PR} + 1)", (Bound.STABLE.value, "[0, 1)")),  # 0 is attained
    # not shares: the rest can be negative, or both terms can be 0 at once (0 / 0): no bound below 1 is claimed
    ("f[c] / (f[c] + sum(m, W_h[c, m] * u[m]))", None),
    ("f[c] / (f[c] - i[c] + 0.5)", None),
    (f"{PR} / ({PR} + relu(-sum(m, W_h[c, m] * u[m])))", None),
])
def test_share_bound(decay, want):
    text = MINLSTM.replace("A[c, c2] = delta(c, c2) * fn[c]", f"A[c, c2] = delta(c, c2) * {decay}")
    r = compile_text(text, "share.dsf").report
    if want is None:
        assert r.eigen_bound != Bound.STABLE.value, r.eigen_reason
    else:
        assert (r.eigen_bound, r.eigen_interval) == want, r.eigen_reason


# lets named like the runtime helpers the module imports: the printer writes exp(x) - 1 as expm1(x) (the ZOH input
# (exp(dt a) - 1) / a), so a let named expm1 made expm1 a local of _lets, read before it was bound
# (UnboundLocalError); spec names that meet a helper now get a trailing _ (py_name), as keywords and builtins do
HELPERS = """
model Helpers "spec names that are also the generated module's runtime helpers: expm1, empty_output, inv_l2_norm"
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_dt[d, d] ~ normal(0, 0.3)
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
let dt[c: d] = softplus(sum(k, W_dt[c, k] * u[k]))
let a[c: d, j: n] = -exp(A_log[c, j])
let expm1[c: d, j: n] = exp(dt[c] * a[c, j]) - 1
let inv_l2_norm[j: n] = sum(m, W_B[j, m] * u[m]) / sqrt(sum(j2, sum(m, W_B[j2, m] * u[m]) ^ 2))
let empty_output[c: d] = u[c] * 2
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(dt[c] * a[c, j])
B[(c, j), k] = delta(c, k) * (exp(dt[c] * a[c, j]) - 1) / a[c, j] * inv_l2_norm[j] + 0 * expm1[c, j]
C[o, (c, j)] = delta(o, c) * (1 + empty_output[c])
"""


def test_lets_named_like_runtime_helpers():
    check_new_spec(HELPERS, Family.DIAGONAL_SCAN, None, "helpers")
