"""Equivalent rewrites of catalog specs: the same model written differently must get the same family and the same
numbers.

Each test writes a catalog layer (at tiny dims) a second way a user might choose (state axes split or reordered, a
decay or gate written through another identity, a zero D written out, ...), asserts the rewrite's family through the
analysis API equals the original's, and checks the rewrite's generated module against its own float64 reference
recurrence and against the original's module with the same parameters.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import TRITON, F64, check_backend, compile_and_build, rel_err  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402

# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")


def same_model(orig: str, rewrite: str, dims: dict[str, int], family: Family, maps=None):
    """Both specs get ``family``; the rewrite matches its reference and the original at the original's params
    (``maps``: rewrite param name -> function of the original's params, for a parameter stored otherwise)."""
    ob, rb = compile_and_build(orig, dims), compile_and_build(rewrite, dims)
    assert ob.result.structure.family == family, ob.result.structure.family_reason
    assert rb.result.structure.family == family, rb.result.structure.family_reason
    op, named = ob.params(), dict(rb.model.named_parameters())
    with torch.no_grad():
        for p in rb.sym.params:
            name = p.tensor.name
            named[py_name(name)].copy_((maps or {}).get(name, lambda q, n=name: q[n])(op))
    check_backend(rb, "torch", ((2, 7),), steps=False, h0s=(False,))
    u = torch.randn(2, 9, ob.d_in(), generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        assert rel_err(rb.model(u), ob.model(u)) < 1e-10
    return ob, rb


SSD_HEAD = """
model SSD "Mamba-2 SSD core at tiny dims"
dim H = 4
dim P = 2
dim n = 3
dim G = 2
dim R = H // G
input u[h: H, p: P]
param A_log[h: H] = log(1 + 15 * (h + 0.5) / H)
param dt_bias[H] ~ normal(0, 1)
param W_dt[H, H * P] ~ normal(0, 1)
param W_B[G, n, H * P] ~ normal(0, 1)
param W_C[G, n, H * P] ~ normal(0, 1)
param D[H] ~ normal(0, 1)
let dt[h: H] = softplus(sum(m: H * P, W_dt[h, m] * u[m // P, m % P]) + dt_bias[h])
let Bm[g: G, j: n] = sum(m: H * P, W_B[g, j, m] * u[m // P, m % P])
let Cm[g: G, j: n] = sum(m: H * P, W_C[g, j, m] * u[m // P, m % P])
output y[h: H, p: P]
"""
SSD = SSD_HEAD + """
state S[h: H, p: P, j: n]
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[h // R, j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[h // R, j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
"""
# the head axis split into (group, head in group): head h = g * R + r, R = H // G a derived dim
SSD_GROUPED_STATE = SSD_HEAD + """
state S[g: G, r: R, p: P, j: n]
A[(g, r, p, j), (g2, r2, p2, j2)] = delta(g, g2) * delta(r, r2) * delta(p, p2) * delta(j, j2)
                                   * exp(-dt[g * R + r] * exp(A_log[g * R + r]))
B[(g, r, p, j), (h2, p2)] = delta(g * R + r, h2) * delta(p, p2) * dt[g * R + r] * Bm[g, j]
C[(o, e), (g, r, p, j)] = delta(o, g * R + r) * delta(e, p) * Cm[g, j]
D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]
"""


def test_ssd_state_split_into_group_and_head():
    """C = delta(o, g * R + r) with R = H // G: the output head axis is the flattening of the state's (g, r). The
    unflatten pass compared G * floor(H / G) with H, which SymPy cannot equate, so the output was left unsplit and
    the spec fell back to the elementwise diagonal scan. A derived dim's // is exact (checked), so it now divides."""
    _, rb = same_model(SSD, SSD_GROUPED_STATE, {"H": 4, "P": 2, "n": 3, "G": 2}, Family.CHUNKED_OUTER)
    if TRITON:
        check_backend(rb, "triton", ((2, 5),), steps=False, h0s=(True,))


LA_HEAD = """
model LA "unnormalised linear attention at tiny dims"
dim d = 5
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
let qf[h: H, a: K] = elu(sum(m, W_Q[h, a, m] * u[m])) + 1
let kf[h: H, a: K] = elu(sum(m, W_K[h, a, m] * u[m])) + 1
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
"""
LA = LA_HEAD + """
B[(h, a, b), m] = kf[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * qf[h, a] / sqrt(K)
"""
# the same entries with the deltas under sums: sum(m2, delta(m2, m) * ...) and sum(a3, delta(a3, a) * ...)
LA_SUMMED_DELTAS = LA_HEAD + """
B[(h, a, b), m] = sum(m2, kf[h, a] * delta(m2, m) * W_V[h, b, m2])
C[(o, e), (h, a, b)] = sum(a3, delta(a3, a) * delta(o, h) * delta(e, b) * qf[h, a3]) / sqrt(K)
"""


def test_linear_attention_deltas_under_sums():
    """A delta under a sum in C (sum(a3, delta(a3, a) * q[h, a3])) was not contracted: the analysis saw a dense
    readout and chose the elementwise diagonal scan. Matrix entries are now canonicalised (ir/canonical.py)."""
    _, rb = same_model(LA, LA_SUMMED_DELTAS, {"d": 5, "H": 2, "K": 3, "V": 4}, Family.CHUNKED_OUTER)
    if TRITON:
        check_backend(rb, "triton", ((2, 5),), steps=False, h0s=(True,))


HGRN_HEAD = """
model HGRN "HGRN at tiny dims"
dim d = 5
dim E = 4
dim L = 3
dim layer = 2
input u[d]
state h[c: E]
output y[E]
param W_i[E, d] ~ normal(0, 1)
param W_f[E, d] ~ normal(0, 1)
param Gamma[L, E] ~ normal(0, 1)
let sm[j: L, c: E] = exp(Gamma[j, c]) / sum(j2, exp(Gamma[j2, c]))
let gam[c: E] = sum(j, ((layer - 1 - j + L) // L) * sm[j, c]) - sm[0, c]
let ipre[c: E] = sum(m, W_i[c, m] * u[m])
"""
HGRN = HGRN_HEAD + """
let f[c: E] = gam[c] + (1 - gam[c]) * sigmoid(sum(m, W_f[c, m] * u[m]))
A[c, c2] = delta(c, c2) * f[c]
B[c, m] = (1 - f[c]) * sigmoid(ipre[c]) * W_i[c, m]
C[o, c] = delta(o, c)
"""
# f as 1 - (1 - gamma)(1 - s), A's deltas swapped, and a D written out as zero
HGRN_ZERO_D = HGRN_HEAD + """
let s[c: E] = 1 / (1 + exp(-sum(m, W_f[c, m] * u[m])))
let f[c: E] = 1 - (1 - gam[c]) * (1 - s[c])
A[c2, c] = f[c] * delta(c2, c)
B[c, m] = W_i[c, m] * sigmoid(ipre[c]) * (1 - gam[c]) * (1 - s[c])
C[o, c] = delta(c, o)
D[o, m] = 0
"""


def test_hgrn_zero_d_is_absent():
    """D[o, m] = 0 was reported as a present D and compiled into a zero feedthrough product; a zero D is now dropped
    from the analysis core (the reference still evaluates the spec as written)."""
    ob, rb = same_model(HGRN, HGRN_ZERO_D, {"d": 5, "E": 4, "L": 3, "layer": 2}, Family.DIAGONAL_SCAN)
    assert not ob.result.report.d_present and not rb.result.report.d_present
    check_backend(rb, "reference", ((2, 5),), steps=False, h0s=(True,))
    u = torch.randn(1, 3, 5, dtype=F64)
    assert float(rb.dsf_matrices(u)[3].abs().max()) == 0.0


DN_HEAD = """
model DN "DeltaNet at tiny dims"
dim d = 6
dim H = 2
dim K = 3
dim V = 4
input u[d]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_beta[H, d] ~ normal(0, 1)
let qr[h: H, a: K] = silu(sum(m, W_Q[h, a, m] * u[m]))
let kr[h: H, a: K] = silu(sum(m, W_K[h, a, m] * u[m]))
let q[h: H, a: K] = qr[h, a] / sqrt(sum(a2, qr[h, a2] ^ 2))
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let beta[h: H] = sigmoid(sum(m, W_beta[h, m] * u[m]))
"""
DN = DN_HEAD + """
state S[h: H, a: K, b: V]
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""
# the state as [h, b, a] and beta * k named by a let
DN_NAMED_PRODUCT = DN_HEAD + """
state S[h: H, b: V, a: K]
let bk[h: H, a: K] = beta[h] * k[h, a]
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - bk[h, a] * k[h, a2])
B[(h, b, a), m] = bk[h, a] * W_V[h, b, m]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""


def test_deltanet_beta_k_named_by_a_let():
    """With beta * k named by a let, the rank-1 eigenvalue prover inlined one level (bk -> beta k) and then saw
    sum_a k^2 with k not inlined: 'unknown' instead of |lambda| <= 1. Lets that only name a product are now read
    through before the contraction."""
    ob, rb = same_model(DN, DN_NAMED_PRODUCT, {"d": 6, "H": 2, "K": 3, "V": 4}, Family.CHUNKED_DELTA)
    assert rb.result.report.eigen_bound == ob.result.report.eigen_bound == "|lambda| <= 1"
    assert rb.result.report.eigen_interval == ob.result.report.eigen_interval


RET_HEAD = """
model RetNet "RetNet retention at tiny dims"
dim d = 5
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] / sqrt(K)
"""
RET = RET_HEAD + """
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * (1 - 2 ^ (-5 - h))
"""
# the per-head gamma declared over (head, key) although it does not depend on the key
RET_GAMMA_OVER_KEYS = RET_HEAD + """
let gamma[h: H, a: K] = 1 - 2 ^ (-5 - h)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * gamma[h, a]
"""


def test_retnet_gamma_let_declared_over_keys():
    """A decay let declared over an axis its definition never uses made the decay depend on that axis: 'diagonal'
    with a per-key decay instead of a scalar per head. Such reads are now taken at 0 on the unused axis."""
    ob, rb = same_model(RET, RET_GAMMA_OVER_KEYS, {"d": 5, "H": 2, "K": 3, "V": 4}, Family.CHUNKED_OUTER)
    assert rb.result.report.a_kind == ob.result.report.a_kind == "scalar per group"
    assert rb.result.structure.a.decay_axes == ob.result.structure.a.decay_axes


# f = gamma + (1 - gamma) s written as gamma sigmoid(-x) + sigmoid(x)
HGRN_MIXED_GATE = HGRN_HEAD + """
let f[c: E] = gam[c] * sigmoid(-sum(m, W_f[c, m] * u[m])) + sigmoid(sum(m, W_f[c, m] * u[m]))
A[c, c2] = delta(c, c2) * f[c]
B[c, m] = (1 - f[c]) * sigmoid(ipre[c]) * W_i[c, m]
C[o, c] = delta(o, c)
"""


def test_hgrn_gate_written_as_mixture_eigen_bound():
    """gam * sigmoid(-x) + sigmoid(x) was bounded term by term, (0, 2); sigmoid(-x) is now read as 1 - sigmoid(x),
    one gate, and the mixture's corners give the same bound as 1 - (1 - gam)(1 - sigmoid(x))."""
    ob, rb = same_model(HGRN, HGRN_MIXED_GATE, {"d": 5, "E": 4, "L": 3, "layer": 2}, Family.DIAGONAL_SCAN)
    assert rb.result.report.eigen_bound == ob.result.report.eigen_bound
    assert rb.result.report.eigen_interval == ob.result.report.eigen_interval


S6_HEAD = """
model S6 "Mamba S6 at tiny dims"
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
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]))
D[o, k] = delta(o, k) * D[k]
"""
S6 = S6_HEAD + """
let b[j: n] = sum(k, W_B[j, k] * u[k])
let cq[j: n] = sum(k, W_C[j, k] * u[k])
B[(c, j), k] = delta(c, k) * dt[c] * b[j]
C[o, (c, j)] = delta(o, c) * cq[j]
"""
# the B and C projections written inside B and C instead of as lets
S6_INLINE = S6_HEAD + """
B[(c, j), k] = delta(c, k) * dt[c] * sum(k2, W_B[j, k2] * u[k2])
C[o, (c, j)] = delta(o, c) * sum(k2, W_C[j, k2] * u[k2])
"""


def test_s6_projections_inline_numbers():
    same_model(S6, S6_INLINE, {"d": 4, "n": 3, "r": 2}, Family.DIAGONAL_SCAN)


@pytest.mark.xfail(strict=True, reason="a projection written inside B or C is not hoisted into a let: the short-"
                   "chunk path evaluates it per step inside its loop and the FLOPs/token estimate counts it per entry")
def test_s6_projections_inline_cost():
    ob, rb = same_model(S6, S6_INLINE, {"d": 4, "n": 3, "r": 2}, Family.DIAGONAL_SCAN)
    assert rb.result.report.flops_per_token == ob.result.report.flops_per_token
