"""Structure analysis (dsfc/analysis): A class, B u form, A/B coupling, eigenvalue bound, algorithm family.

The expected values for the catalog are written by hand from /work/shared/dsf-models.md, section 2 (summary table),
not from running dsfc:

| Model            | A_i structure                    | B_i u_i form               | coupling | eigenvalues      | family    |
|------------------|----------------------------------|----------------------------|----------|------------------|-----------|
| Mamba S6         | diag exp(-dt_c exp(A_log[c,j]))  | outer per channel dt x (x) b | dt_c   | (0, 1)           | selective (diagonal) scan |
| Mamba-2 SSD      | scalar/head exp(dt_h A_h)        | outer (dt_h x) (x) B       | dt_h     | (0, 1)           | SSD chunked |
| Linear attn, un. | I                                | outer phi(k) (x) v         | none     | all = 1          | chunked cumsum |
| DeltaNet         | (I - beta k k^T) (x) I_V         | outer beta k (x) v         | beta, k  | {1, 1-beta} (0,1] | chunkwise WY (dsfc: dense scan) |
| Linear attn, nor.| sI per head, (eta_(i-1)/eta_i) I | outer phi(k) (x) v / eta_i | eta_i    | > 0, not bounded | chunked linear attn + running z |
| RetNet           | scalar/head gamma_h (fixed)      | outer k (x) v              | none     | (0, 1)           | chunkwise with decay mask |
| GLA              | diag(K) (x) I_V                  | outer k (x) v              | none     | (0, 1)           | chunkwise |
| HGRN             | diag f in (gamma_l, 1)           | (1 - f) gated input        | f        | (gamma_l, 1)     | elementwise scan |
| qLSTM            | diag sigma(f)                    | sigma(i) (.) x             | none     | (0, 1)           | elementwise scan |
| qLSTM, S6-style  | diag sigma(-f)^relu(alpha)       | elementwise                | none     | (0, 1]           | elementwise scan |
| Gated DeltaNet   | alpha (I - beta k k^T) (x) I_V   | outer beta k (x) v         | beta, k (alpha only in A) | {alpha, alpha(1-beta)} | chunkwise WY (dsfc: dense scan) |
| mLSTM            | scalar/head sigma(f)             | outer exp(i) k (x) v       | none (normaliser in C) | (0, 1) | chunkwise |
| RWKV-6           | diag(K) (x) I_V, exp(-exp(w))    | outer k (x) v, bonus in D  | none     | (0, 1)           | chunkwise, pre-update readout |
| S4D              | 2x2 blocks, time-invariant       | fixed Bbar per channel     | dt (ZOH) | exp(dt Re A) < 1 | FFT convolution (dsfc: dense scan) |
| LRU              | 2x2 blocks, time-invariant       | dense gamma (.) B          | none     | exp(-exp(nu)) < 1 | parallel scan (dsfc: dense scan) |
| RG-LRU           | diag a^(c r)                     | elementwise sqrt(1-a^2) (.) i (.) x | a | (a^8, 1) in (0, 1) | elementwise scan |
| Normalized attn. | sI per head, eta(u_(i-1))/eta(u_i) | outer k (x) v / eta(u_i) | eta(u_i) | > 0, unbounded   | linear attn + output scaling |

dsfc's own conventions where they differ from the table's words: its B form is about the raw input u, so a B that
gates a projection W u (qLSTM, HGRN) is "general"; the chunked algorithm needs a post-update readout, so RWKV-6 runs
as a diagonal scan; there is no FFT or associative-scan path, so the 2x2-block models run as a dense scan.

State sizes are products of the spec's default dims, multiplied out by hand below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dsfc.analysis.facts import AKind, BForm, Bound, Family
from dsfc.lang.parse import parse_file, parse_spec
from dsfc.pipeline import analyse as analyse_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture(scope="module")
def reports():
    # analysis only (parse, check, lower, analyse): no code generation needed here
    return {name: analyse_spec(parse_file(SPECS / f"{name}.dsf"))[3] for name in COVERED}


COVERED = ("s6", "ssd", "linear_attention", "deltanet", "linear_attention_normalized", "retnet", "gla", "hgrn", "qlstm",
           "qlstm_s6", "gated_deltanet", "mlstm", "rwkv6", "s4d", "lru", "rg_lru", "normalized_attention",
           "mamba_block", "taylor_attention", "softmax_attention", "normalized_attention_sigmoid",
           "normalized_attention_exprelu", "fox")


def test_every_catalog_spec_is_covered_here():
    assert {p.stem for p in SPECS.glob("*.dsf")} <= set(COVERED), "add the new spec's expected structure here"


def test_s6(reports):
    r = reports["s6"]
    assert r.a_kind == AKind.DIAGONAL.value == "diagonal"
    assert r.a_time_varying is True
    assert r.a_axes["diagonal"] == ["c", "j"] and r.a_axes["mixed"] == []
    assert r.a_axes["decay depends on"] == ["c", "j"]  # exp(-dt[c] exp(A_log[c, j]))
    assert r.b_form == BForm.OUTER.value == "outer product"  # (dt x)[c] (x) b[j]
    assert "dt" in r.coupling
    assert r.eigen_bound == Bound.STABLE.value == "|lambda| < 1"
    assert r.family == Family.DIAGONAL_SCAN.value == "diagonal scan"
    assert r.d_present is True
    assert r.time_invariant is False
    assert r.state_size_default == 64 * 16  # d * n
    assert r.state_bytes_default == 4 * 64 * 16


def test_ssd(reports):
    r = reports["ssd"]
    assert r.a_kind == AKind.SCALAR_PER_GROUP.value == "scalar per group"
    assert r.a_time_varying is True
    assert r.a_axes["decay depends on"] == ["h"]  # one scalar per head
    assert r.b_form == "outer product"
    assert "dt" in r.coupling
    assert r.eigen_bound == "|lambda| < 1"
    assert r.family == Family.CHUNKED_OUTER.value == "chunked outer-product scan"
    assert r.d_present is True
    assert r.state_size_default == 24 * 64 * 128  # H * P * n


def test_linear_attention(reports):
    r = reports["linear_attention"]
    assert r.a_kind == AKind.IDENTITY.value == "identity"
    assert r.a_time_varying is False  # A = I does not read the input
    assert r.b_form == "outer product"
    assert r.coupling == ()
    assert r.coupling_params == ()
    assert r.eigen_bound == Bound.MARGINAL.value == "|lambda| <= 1"
    assert r.family == "chunked outer-product scan"
    assert r.d_present is False
    assert r.time_invariant is False  # B and C read the input
    assert r.state_size_default == 8 * 64 * 64  # H * K * V


def test_deltanet(reports):
    r = reports["deltanet"]
    assert r.a_kind == AKind.BLOCK_DIAGONAL.value == "block-diagonal"
    assert r.a_low_rank is True
    assert r.a_time_varying is True
    assert r.a_axes["diagonal"] == ["h", "b"] and r.a_axes["mixed"] == ["a"]  # (I_K - beta k k^T) (x) I_V per head
    assert r.b_form == "outer product"
    assert set(r.coupling) == {"beta", "k"}
    # maths doc 5.14: "chunkwise WY / UT transform"
    assert r.family == Family.CHUNKED_DELTA.value == "chunked delta-rule scan"
    # eigenvalues are {1, 1 - beta} with beta in (0, 1): 1 is attained, so exactly |lambda| <= 1
    assert r.eigen_bound == Bound.MARGINAL.value, r.eigen_reason
    assert r.state_size_default == 4 * 128 * 128  # H * K * V


STABLE, MARGINAL, UNBOUNDED = Bound.STABLE.value, Bound.MARGINAL.value, Bound.UNBOUNDED.value
DIAG, OUTER, DENSE = Family.DIAGONAL_SCAN.value, Family.CHUNKED_OUTER.value, Family.DENSE_SCAN.value
DELTA = Family.CHUNKED_DELTA.value

# name: (decay depends on, mixed axes, coupling must contain, coupling must not contain, eigen bound (None: any sound
#        answer), family, time-invariant A, state size at the default dims multiplied out by hand)
TABLE = {
    "retnet": (["h"], [], set(), {"k"}, STABLE, OUTER, True, 8 * 128 * 256),
    "gla": (["h", "a"], [], set(), {"k", "q"}, STABLE, OUTER, False, 4 * 128 * 256),
    "hgrn": (["c"], [], {"f"}, set(), STABLE, DIAG, False, 1024),  # f in (gamma_l, 1), gamma_l in [0, 1)
    "qlstm": (["c"], [], set(), {"f", "ig"}, STABLE, DIAG, False, 2 * 256),
    "qlstm_s6": (["c"], [], set(), {"f", "ig"}, MARGINAL, DIAG, False, 2 * 256),
    "gated_deltanet": (["h", "a"], ["a"], {"beta", "k"}, {"alpha"}, None, DELTA, False, 6 * 256 * 512),  # WY + gates
    "mlstm": (["h"], [], set(), {"f", "ig"}, STABLE, OUTER, False, 4 * 128 * 128),
    "rwkv6": (["h", "a"], [], set(), {"w"}, STABLE, OUTER, False, 4 * 128 * 256),  # maths doc: GLA-like chunked, pre-update readout
    "s4d": (["c", "n", "s"], ["s"], set(), set(), STABLE, DENSE, True, 256 * 32 * 2),
    "lru": (["j", "s"], ["s"], set(), set(), STABLE, DENSE, True, 256 * 2),
    "rg_lru": (["c"], [], {"a"}, set(), STABLE, DIAG, False, 2560),
    "normalized_attention": (["h"], [], {"s"}, set(), UNBOUNDED, OUTER, False, 1 * 128 * 256),
    # rebuttal variants (maths doc 5.3): eta = sigmoid(s), exp(relu(s)); lambda = eta_prev / eta > 0, unbounded
    "normalized_attention_sigmoid": (["h"], [], {"eta"}, set(), UNBOUNDED, OUTER, False, 1 * 128 * 256),
    "normalized_attention_exprelu": (["h"], [], {"r"}, set(), UNBOUNDED, OUTER, False, 1 * 128 * 256),
    "mamba_block": (["c", "j"], [], {"dt"}, set(), STABLE, DIAG, False, 2 * 64 * 16),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_catalog_table(reports, name):
    decay_axes, mixed, has, lacks, bound, family, a_invariant, n = TABLE[name]
    r = reports[name]
    assert r.a_axes["decay depends on"] == decay_axes
    assert r.a_axes["mixed"] == mixed
    assert has <= set(r.coupling), r.coupling
    assert not (lacks & set(r.coupling)), r.coupling
    if bound is not None:
        assert r.eigen_bound == bound, r.eigen_reason
    assert r.family == family, r.family_reason
    assert r.a_time_varying is (not a_invariant)
    assert r.state_size_default == n


def test_catalog_bounds_are_never_wrong(reports):
    """Where the table's bound is only partly provable, dsfc may say less ('unknown'), never something false."""
    assert reports["hgrn"].eigen_bound == STABLE  # (gamma_l, 1) with gamma_l a partial softmax sum
    assert reports["gated_deltanet"].eigen_bound in (STABLE, MARGINAL, "unknown")  # {alpha, alpha (1 - beta)}
    assert reports["gated_deltanet"].a_low_rank is True
    assert reports["s4d"].time_invariant is True  # fixed Bbar, C, D: an LTI system
    assert reports["lru"].time_invariant is True
    assert reports["rwkv6"].d_present is True  # the bonus term
    assert reports["rg_lru"].b_form == "elementwise"  # sqrt(1 - a^2) i (.) x with B = delta(c, m)
    for name in ("qlstm", "hgrn"):
        assert reports[name].b_form == "general"  # a gate times the projection W u: a contraction of u


def test_linear_attention_normalized(reports):
    r = reports["linear_attention_normalized"]
    assert r.a_kind == "scalar per group"  # (eta_prev / eta) I: one scalar per head
    assert r.a_axes["decay depends on"] == ["h"]
    assert r.a_time_varying is True
    assert r.b_form == "outer product"
    assert "eta" in r.coupling
    assert r.eigen_bound == Bound.UNBOUNDED.value  # eta_(i-1) / eta_i > 0 can exceed 1
    assert r.family == "chunked outer-product scan"
    assert r.state_size_default == 8 * 64 * 64  # H * K * V (the running z, eta are carried separately)


def test_taylor_attention(reports):
    r = reports["taylor_attention"]
    assert r.a_kind == "scalar per group"  # (eta_prev / eta) I per head
    assert r.a_axes["decay depends on"] == ["h"]
    assert r.b_form == "outer product"  # phi(k)[h, f] (x) v[h, b]
    assert r.coupling == ("eta",)
    assert r.eigen_bound == Bound.UNBOUNDED.value and r.eigen_interval == "(0, inf)"
    assert "even-order Taylor feature map" in r.eigen_reason  # eta > 0 because p = 2 is even
    assert r.family == "chunked outer-product scan"
    assert r.state_size == "H*V*taylor(K, p)"
    # D_p = sum_(r<=p) K^r by hand at K = 16, p = 2: 1 + 16 + 256 = 273; N = H * V * D_p = 4 * 16 * 273
    assert r.state_size_default == 4 * 16 * (1 + 16 + 256) == 17472
    assert r.state_bytes_default == 4 * 17472
    assert r.feature_note == "taylor(K, p) = sum_(r<=p) K^r = 273: grows as K^p"


def test_fox(reports):
    """Softmax attention with a forget gate: the same family; A's eigenvalue gains the gate f in (0, 1), and the
    KV cache one log-decay per head and token."""
    r = reports["fox"]
    assert r.a_kind == "scalar per group" and r.a_axes["decay depends on"] == ["h"]
    assert r.coupling == ("eta",)
    assert r.eigen_bound == Bound.UNBOUNDED.value and r.eigen_interval == "(0, inf)"
    assert "f in (0, 1)" in r.eigen_reason and "exp(q.k / sqrt(K)) > 0" in r.eigen_reason
    assert r.family == Family.QUADRATIC.value
    assert r.kv_cache == "H*(K + V + 1) = 132 floats per token"  # 4 heads * (16 + 16 + the log-decay)


def test_softmax_attention(reports):
    r = reports["softmax_attention"]
    assert r.a_kind == "scalar per group"
    assert r.a_axes["decay depends on"] == ["h"]
    assert r.b_form == "outer product"
    assert r.coupling == ("eta",)
    assert r.eigen_bound == Bound.UNBOUNDED.value and r.eigen_interval == "(0, inf)"
    assert "exp(q.k / sqrt(K)) > 0" in r.eigen_reason  # eta is a sum of exponentials
    assert r.family == Family.QUADRATIC.value == "quadratic attention"
    assert "infinite" in r.family_reason and "KV cache" in r.family_reason
    assert r.state_size == "H*V*taylor(K, inf)"
    assert r.state_size_default is None and r.state_bytes_default is None  # N is infinite
    assert r.kv_cache == "H*(K + V) = 128 floats per token"  # 4 heads * (16 + 16)
    assert "N = H*V*taylor(K, inf) (infinite" in r.table()


# -- small inline specs ----------------------------------------------------------------------------------------------

HEADER = """
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n]
param W[n, d] ~ normal(0, 1)
param Wc[n, d] ~ normal(0, 1)
let x[c: d, j: n] = u[c] * W[j, c]
B[(c, j), k] = delta(c, k) * W[j, k]
C[o, (c, j)] = delta(o, c) * Wc[j, o]
"""


def diag_spec(decay: str) -> str:
    return HEADER + f"A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * ({decay})\n"


class _Analysed:
    def __init__(self, text: str):
        self.report = analyse_spec(parse_spec(text, "x.dsf"))[3]


def analyse(text: str) -> _Analysed:
    """The structure report of an inline spec (``.report``, as on a CompileResult)."""
    return _Analysed(text)


@pytest.mark.parametrize(
    "decay",
    [
        "sigmoid(x[c, j])",
        "exp(-softplus(x[c, j]))",
        "exp(-softplus(x[c, j]) * exp(x[c, j]))",
        "tanh(x[c, j])",  # (-1, 1)
        "0.5 * sigmoid(x[c, j]) + 0.25",  # (0.25, 0.75)
        "min(exp(x[c, j]), 0.9)",  # (0, 0.9]: min kept its upper end
        "max(sigmoid(x[c, j]), 0.5) * 0.9",  # [0.45, 0.9)
        "abs(tanh(x[c, j])) * 0.99",  # [0, 0.99): abs kept the farther end of (-1, 1)
    ],
)
def test_provably_contracting_diagonal_is_stable(decay):
    r = analyse(diag_spec(decay)).report
    assert r.a_kind == "diagonal"
    assert r.eigen_bound == "|lambda| < 1", r.eigen_reason
    assert r.family == "diagonal scan"


@pytest.mark.parametrize("decay, want", [
    ("min(exp(x[c, j]), 0.9)", "(0, 0.9]"),
    ("max(sigmoid(x[c, j]), 0.5) * 0.9", "[0.45, 0.9)"),
    ("abs(tanh(x[c, j])) * 0.99", "[0, 0.99)"),
    ("max(tanh(x[c, j]), -0.5)", "[-0.5, 1)"),
    ("min(sigmoid(x[c, j]), tanh(x[c, j]))", "(-1, 1)"),
])
def test_min_max_abs_keep_both_ends(decay, want):
    """Interval rules of min, max and abs (dsfc/analysis/stability.py): they lost the upper end before, so such
    decays were 'unknown'. Written by hand: min takes the smaller end of each side, abs the farther end."""
    r = analyse(diag_spec(decay)).report
    assert r.eigen_interval == want, r.eigen_reason


@pytest.mark.parametrize("decay, want", [
    ("cos(x[c, j]) ^ 2", "[0, 1]"),
    ("0.5 * sin(x[c, j])", "[-0.5, 0.5]"),
    ("tanh(x[c, j]) ^ 3", "(-1, 1)"),
    ("(0.9 * tanh(x[c, j])) ^ 2", "[0, 0.81)"),
    ("x[c, j] ^ 2", "[0, inf)"),
])
def test_sin_cos_and_integer_powers_of_signed_bases(decay, want):
    """sin and cos lie in [-1, 1], and x^p for an integer p > 0 has a range whatever the sign of x (|x|^p for an
    even p, increasing for an odd p): a new user's cos(theta)^2 decay was 'unknown' with interval (-inf, inf)."""
    r = analyse(diag_spec(decay)).report
    assert r.eigen_interval == want, r.eigen_reason


@pytest.mark.parametrize("decay, want", [
    # weights exp(2x) and 1 after SymPy's rewrite: a mean of 0.5 and 0.9 (interval arithmetic: (0, 1)); as a rational
    # function of the one quantity exp(2x) in (0, inf) neither end is reached (it was [0.5, 0.9] from the mean alone)
    ("(0.5 * exp(x[c, j]) + 0.9 * exp(-x[c, j])) / (exp(x[c, j]) + exp(-x[c, j]))", "(0.5, 0.9)"),
    # PaTH's form: a mean of tanh in (-1, 1) and 1, weights softplus > 0 and 0.001
    ("(tanh(x[c, j]) * softplus(x[c, j]) + 0.001) / (softplus(x[c, j]) + 0.001)", "(-1, 1]"),
    # a weight that may be negative is no mean: nothing proven
    ("(0.5 * x[c, j] + 0.9) / (x[c, j] + 1)", "(-inf, inf)"),
])
def test_weighted_means_lie_in_the_hull_of_their_values(decay, want):
    """(x_1 w_1 + x_2 w_2) / (w_1 + w_2) with w_i >= 0 lies between x_1 and x_2 (hand-derived hulls above)."""
    r = analyse(diag_spec(decay)).report
    assert r.eigen_interval == want, r.eigen_reason


def test_exp_of_positive_exceeds_one():
    """exp(softplus(x)) is in (1, inf): the whole interval beyond 1 proves growth (it was "unbounded", the wording
    now kept, as "not proven <= 1", for intervals that merely reach inf)."""
    r = analyse(diag_spec("exp(softplus(x[c, j]))")).report
    assert r.a_kind == "diagonal"
    assert r.eigen_bound == Bound.EXCEEDS.value == "|lambda| > 1", r.eigen_reason


def test_unproven_growth_is_worded_not_proven():
    r = analyse(diag_spec("exp(x[c, j] ^ 2)")).report  # [1, inf): 1 is attained, so no growth is proven
    assert r.eigen_bound == Bound.UNBOUNDED.value == "not proven <= 1", r.eigen_reason
    assert "not proven <= 1" in r.eigen_reason and "can exceed" not in r.eigen_reason


@pytest.mark.parametrize("decay", [
    "exp(-relu(x[c, j]))",
    "exp(-relu(W[j, c]) * softplus(x[c, j]))",  # qLSTM-S6: [0, inf) * (0, inf) reaches 0, so lambda reaches 1
    "exp(-sigmoid(x[c, j]) * relu(W[j, c]))",
    "sigmoid(x[c, j]) + 0 * x[c, j] + (1 - sigmoid(x[c, j])) * 1",
])
def test_decay_reaching_one_is_marginal_not_stable(decay):
    # exp(-relu(x)) = 1 for every x <= 0: an eigenvalue of exactly 1 is possible, so only |lambda| <= 1 is true.
    # The last form is 1 identically: whatever its simplification, "< 1" would be wrong.
    r = analyse(diag_spec(decay)).report
    assert r.eigen_bound != "|lambda| < 1", r.eigen_reason
    assert r.eigen_bound in ("|lambda| <= 1", "unknown")


def test_index_values_are_nonnegative():
    # RetNet's gamma_h = 1 - 2^(-5-h): h >= 0, so gamma in [31/32, 1)
    text = HEADER + "A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * (1 - 2 ^ (-5 - c))\n"
    r = analyse(text).report
    assert r.eigen_bound == "|lambda| < 1", r.eigen_reason
    assert r.eigen_interval == "[0.96875, 1)"


def test_gated_delta_rule_with_a_sum_gate_is_identity_minus_rank_one():
    text = """
dim d = 2
dim K = 3
input u[d]
state S[a: K, b: d]
param Wk[K, d] ~ normal(0, 1)
param wg[d] ~ normal(0, 1)
let k[a: K] = tanh(sum(m, Wk[a, m] * u[m]))
let g = sigmoid(sum(m, wg[m] * u[m]))
A[(a, b), (a2, b2)] = (1 - g) * delta(b, b2) * (delta(a, a2) - 0.5 * k[a] * k[a2])
B[(a, b), m] = k[a] * delta(b, m)
C[o, (a, b)] = delta(o, b)
"""
    r = analyse(text).report
    assert r.a_kind == "block-diagonal" and r.a_axes["mixed"] == ["a"]
    assert r.a_low_rank is True


def test_unprovable_decay_is_not_claimed_stable():
    r = analyse(diag_spec("x[c, j]")).report  # any real number
    assert r.eigen_bound in ("unknown", "not proven <= 1")
    assert r.eigen_bound != "|lambda| < 1"


def test_dense_time_invariant_matrix():
    text = """
dim n = 3
dim d = 2
input u[d]
state h[i: n]
param W[n, n] ~ uniform(-0.3, 0.3)
param Wb[n, d] ~ normal(0, 1)
param Wc[d, n] ~ normal(0, 1)
A[i, i2] = W[i, i2]
B[i, k] = Wb[i, k]
C[o, i] = Wc[o, i]
"""
    res = analyse(text)
    r = res.report
    assert r.a_kind == AKind.DENSE.value == "dense"
    assert r.a_axes["mixed"] == ["i"] and r.a_axes["diagonal"] == []
    assert r.time_invariant is True
    assert r.a_time_varying is False
    assert r.a_low_rank is False
    assert r.family == "dense scan"
    assert r.coupling == ()
    assert r.eigen_bound == "unknown"  # nothing is proven about a general matrix


def test_scalar_decay_shared_by_the_whole_state():
    text = """
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n]
param w[d] ~ normal(0, 1)
param W[n, d] ~ normal(0, 1)
let g = sigmoid(sum(m, w[m] * u[m]))
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * g
B[(c, j), k] = delta(c, k) * W[j, k]
C[o, (c, j)] = delta(o, c)
"""
    r = analyse(text).report
    assert r.a_kind == AKind.SCALAR.value == "scalar"
    assert r.a_axes["decay depends on"] == []
    assert r.a_time_varying is True
    assert r.eigen_bound == "|lambda| < 1"
    assert r.coupling == ()  # g appears only in A


def test_scalar_per_group_and_identity():
    text = """
dim G = 2
dim E = 3
input u[g: G, e: E]
state h[g: G, e: E]
param p[G] = 0.5
A[(g, e), (g2, e2)] = delta(g, g2) * delta(e, e2) * p[g]
B[(g, e), (g2, e2)] = delta(g, g2) * delta(e, e2)
C[(o, f), (g, e)] = delta(o, g) * delta(f, e)
"""
    r = analyse(text).report
    assert r.a_kind == "scalar per group"
    assert r.a_axes["decay depends on"] == ["g"]
    assert r.time_invariant is True
    assert r.b_form == "elementwise"
    r1 = analyse(text.replace("* p[g]", "")).report
    assert r1.a_kind == "identity" and r1.eigen_bound == "|lambda| <= 1"


def test_shared_param_is_reported_as_coupling():
    text = HEADER.replace("B[(c, j), k] = delta(c, k) * W[j, k]", "B[(c, j), k] = delta(c, k) * sigmoid(x[c, j])") + \
        "A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * (1 - sigmoid(x[c, j]))\n"
    r = analyse(text).report
    assert r.coupling == ("x",)
    assert r.coupling_params == ("W",)  # x reads W


# -- sharper interval rules: a let used twice (multilinear hull) and softmax-like weights ------------------------------

SOFTMAX_HEADER = HEADER.replace("let x[c: d, j: n]", "param P[j: n, c: d] ~ normal(0, 1)\nlet x[c: d, j: n]") + \
    "let w[j: n, c: d] = exp(P[j, c]) / sum(j2, exp(P[j2, c]))\n" + \
    "let g[c: d] = sigmoid(P[0, c])\n"


def test_convex_gate_counts_its_let_once():
    # g + (1 - g) s with g, s in (0, 1): (0, 1), although plain interval arithmetic gives (0, 2)
    r = analyse(SOFTMAX_HEADER + "A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * "
                                 "(g[c] + (1 - g[c]) * sigmoid(x[c, j]))\n").report
    assert r.eigen_bound == STABLE, r.eigen_reason
    assert r.eigen_interval == "(0, 1)"


def test_convex_gate_that_can_exceed_one_is_not_stable():
    r = analyse(SOFTMAX_HEADER + "A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * "
                                 "(g[c] + (1 - g[c]) * 2 * sigmoid(x[c, j]))\n").report
    assert r.eigen_bound not in (STABLE, MARGINAL), r.eigen_reason  # reaches (0, 2)


def test_softmax_weight_is_at_most_one():
    r = analyse(SOFTMAX_HEADER + "A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * w[j, c]\n").report
    assert r.eigen_bound == MARGINAL, r.eigen_reason  # (0, 1]: a single weight can be (almost) all of the mass
    assert "softmax-like" in r.eigen_reason


def test_partial_sum_of_softmax_weights_is_below_one():
    # all weights but the first: a convex combination of 0 and 1 with positive weights, so in (0, 1)
    r = analyse(SOFTMAX_HEADER + "A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * "
                                 "(sum(i: n, w[i, c]) - w[0, c])\n").report
    assert r.eigen_bound == STABLE, r.eigen_reason


GATE_TIMES_BLOCK = """
model GD2 "gate times the whole block"
dim M = 3
dim H = 2
dim K = 3
dim V = 2
input u[M]
state S[h: H, a: K, b: V]
output y[o: H, e: V]
param W1[H, K, M] ~ normal(0, 0.7)
param W4[H, M] ~ normal(0, 0.7)
param W5[H, M] ~ normal(0, 0.7)
param W_V8[H, V, M] ~ normal(0, 1)
param W9[H, K, M] ~ normal(0, 0.7)
let kr[h: H, a: K] = silu(sum(m, W1[h, a, m] * u[m]))
let k3[h: H, a: K] = kr[h, a] / sqrt(1 + sum(a3, kr[h, a3] ^ 2))
let beta5[h: H] = sigmoid(sum(m, W4[h, m] * u[m]))
let g[h: H] = sum(m, W5[h, m] * u[m])
let q10[h: H, a: K] = elu(sum(m, W9[h, a, m] * u[m])) + 1
A[(h, a, b), (h2, a2, b2)] = (1 - sigmoid(g[h])) * delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta5[h] * k3[h, a] * k3[h, a2])
B[(h, a, b), m] = beta5[h] * k3[h, a] * W_V8[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q10[h, a]
readout pre
"""


def test_gate_multiplying_the_whole_delta_block_is_still_the_delta_rule():
    # (1 - sigmoid(g)) (I - beta k k^T) expands into two identity terms and two rank-1 terms (found by hypothesis)
    r = analyse(GATE_TIMES_BLOCK).report
    assert r.a_low_rank is True
    assert r.family == "chunked delta-rule scan", r.family_reason


# A = diag(s) + (rank 1) with s varying along the mixed axis was read as "s I minus rank 1", whose eigenvalues are s
# (multiplicity K-1) and s - g^T f: for this A dsfc claimed |lambda| < 1 while A_t = [[s0 + 5, -5], [5, s1 - 5]]
# (s0 = sigmoid(2.2), s1 = sigmoid(-2.2)) has the eigenvalues 2.54 and -1.54. A per-key diagonal (Kimi delta
# attention, RWKV-7's diag(w) - a b^T) is not "identity minus rank-1" either.
NOT_SCALAR_MINUS_RANK1 = """
dim d = 2
input u[d]
state h[a: 2]
param g = 5
param w[a: 2] = 2.2 - 4.4 * a
let s[a: 2] = sigmoid(w[a])
A[a, a2] = delta(a, a2) * s[a] + g * (1 - 2 * a2)
B[a, m] = delta(a, m)
C[o, a] = delta(o, a)
"""

PER_KEY_DELTA = """
dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_K[H, K, d]
param W_V[H, V, d]
param W_a[H, K, d]
param W_beta[H, d]
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let alpha[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
let beta[h: H] = sigmoid(sum(m, W_beta[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * alpha[h, a] * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * k[h, a]
"""


def test_a_varying_diagonal_plus_rank_one_is_not_claimed_stable():
    import numpy as np
    import torch

    from dsfc.reference import dense_matrices

    _, sym, _, r = analyse_spec(parse_spec(NOT_SCALAR_MINUS_RANK1, "x.dsf"))
    # the truth, from the float64 reference's dense A at the param's initial value
    params = {"g": torch.tensor(5.0, dtype=torch.float64), "w": torch.tensor([2.2, -2.2], dtype=torch.float64)}
    A = dense_matrices(sym, {"d": 2}, params, torch.zeros(1, 1, 2, dtype=torch.float64))[0][0, 0].numpy()
    assert abs(np.linalg.eigvals(A)).max() > 2.5
    assert r.eigen_bound not in (STABLE, MARGINAL), r.eigen_reason
    assert not r.a_low_rank


def test_a_per_key_gated_delta_rule_is_not_identity_minus_rank_one():
    r = analyse_spec(parse_spec(PER_KEY_DELTA, "x.dsf"))[3]
    assert not r.a_low_rank and "s*I" not in r.eigen_reason and "s I" not in r.eigen_reason, r.eigen_reason
    # not the scalar delta rule's scan: the per-key decay runs the diagonal-plus-rank-1 one (was the dense scan)
    assert r.family == Family.CHUNKED_DPLR.value
