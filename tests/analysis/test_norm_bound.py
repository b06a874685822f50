"""The eigenvalue prover on dense blocks bounded through a matrix norm.

The spectral radius of a matrix is at most each of its induced norms (the largest row or column sum of |entries|)
and its Frobenius norm. A block whose norm is proven <= 1 (a learned transition normalised over its rows, as in an
HMM's forward pass; ``tanh(W) / N``; ``W / ||W||_F``, with the norm's sums written in either order) has
``|lambda| <= 1``; before, any dense A with no triangular or 2x2 form was "unknown". Every claimed interval is checked
on the generated module's own A_t (float64, random inputs and several parameter draws), and blocks whose norm may
pass 1 must not be claimed: for them a parameter setting with ``|lambda| > 1`` is shown.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from dsf_testing import F64, build  # noqa: E402

from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

HEAD = """
model Dense "a dense A"
dim d = 2
dim N = 4
input u[d]
state h[N]
output y[d]
param W[N, N] ~ normal(0, 1)
param Win[N, d] ~ normal(0, 0.5)
param Wout[d, N] ~ normal(0, 0.5)
"""
TAIL = """
B[i, m] = Win[i, m]
C[o, i] = Wout[o, i]
"""
SOFTMAX_ROWS = "let P[i: N, j: N] = exp(W[i, j]) / sum(k, exp(W[i, k]))\n"
GATE = "let g[i: N] = sigmoid(sum(m, Win[i, m] * u[m]))\n"

# name: (lets and A, the claim, the norm that proves it)
CASES = {
    # an HMM's forward pass, alpha_t = diag(emission_t) P^T alpha_(t-1), damped: column sums of |A| < 0.9
    "hmm_forward": (SOFTMAX_ROWS + GATE + "A[i, j] = 0.9 * g[i] * P[j, i]", Bound.STABLE, "[0, 0.9)", "1 norm"),
    # a learned stochastic matrix acting on rows: row sums exactly g < 1
    "stochastic_rows": (SOFTMAX_ROWS + "param s ~ normal(0, 1)\nA[i, j] = sigmoid(s) * P[i, j]",
                        Bound.STABLE, "[0, 1)", "infinity norm"),
    # every entry in (-1/N, 1/N): row sums of |A| below 1
    "tanh_over_n": ("A[i, j] = tanh(W[i, j]) / N", Bound.STABLE, "[0, 1)", "infinity norm"),
    # ||A||_F = |tanh(s)| < 1 (the norm's sums written rows outside, and columns outside with other names)
    "frobenius": ("param s ~ normal(0, 1)\nlet fro = sqrt(sum(i, sum(j, W[i, j] ^ 2)))\n"
                  "A[i, j] = tanh(s) * W[i, j] / fro", Bound.STABLE, "[0, 1)", "Frobenius"),
    "frobenius_swapped": ("param s ~ normal(0, 1)\nlet fro = sqrt(sum(b, sum(a, W[a, b] ^ 2)))\n"
                          "A[i, j] = tanh(s) * W[i, j] / fro", Bound.STABLE, "[0, 1)", "Frobenius"),
    # ||A||_F = 1 exactly: |lambda| <= 1 (an orthogonal-like W reaches it)
    "frobenius_unit": ("let fro = sqrt(sum(i, sum(j, W[i, j] ^ 2)))\nA[i, j] = W[i, j] / fro",
                       Bound.MARGINAL, "[0, 1]", "Frobenius"),
    # a gated cyclic shift (a ring buffer): the delta picks one term of each row sum, g[i] < 1
    "cyclic_shift": (GATE + "A[i, j] = g[i] * delta(j, (i - 1) % N)", Bound.STABLE, "[0, 1)", "infinity norm"),
    # a circulant of softmax weights (a circular convolution): j -> (i - j) % N permutes 0 .. N - 1, row sums 1
    "circulant": ("let w[i: N] = exp(W[0, i]) / sum(k, exp(W[0, k]))\nA[i, j] = w[(i - j) % N]",
                  Bound.MARGINAL, "[0, 1]", "infinity norm"),
}
# blocks whose norms can pass 1: nothing <= 1 may be claimed (name: (lets and A, parameter W making |lambda| > 1))
NOT_CLAIMED = {
    "tanh": ("A[i, j] = tanh(W[i, j])", 3.0),  # W all 3: eigenvalue N tanh(3) ~ 4
    "frobenius_doubled": ("let fro = sqrt(sum(i, sum(j, W[i, j] ^ 2)))\nA[i, j] = 2 * W[i, j] / fro", 1.0),
}

PER_HEAD = """
model PerHead "one dense block per head: tanh(W_h) / K"
dim H = 3
dim K = 4
input u[H, K]
state S[H, K]
output y[H, K]
param W[H, K, K] ~ normal(0, 2)
A[(h, i), (h2, j)] = delta(h, h2) * tanh(W[h, i, j]) / K
B[(h, i), (m, n)] = delta(h, m) * delta(i, n)
C[(o, p), (h, i)] = delta(o, h) * delta(p, i)
"""


@functools.lru_cache(maxsize=None)
def _compiled(text: str):
    return compile_text(text, "dense.dsf")


def _ends(interval: str) -> tuple[float, float]:
    lo, hi = re.fullmatch(r"[\[(](.*), (.*)[\])]", interval).groups()
    return float(lo), float(hi)


def _radii(result, seed: int, weight: float | None = None) -> torch.Tensor:
    """|lambda| of every A_t of the generated module (T = 6 random steps, batch 2), its parameters drawn with
    ``seed`` (W set to ``weight`` everywhere when given)."""
    built = build(result, result.sym.dim_values(), seed=seed)
    if weight is not None:
        with torch.no_grad():
            built.model.W.fill_(weight)
    u = 3.0 * torch.randn(2, 6, built.d_in(), generator=torch.Generator().manual_seed(seed), dtype=F64)
    with torch.no_grad():
        A = built.model.dsf_matrices(u)[0]
    return torch.linalg.eigvals(A.reshape(-1, A.shape[-2], A.shape[-1])).abs()


@pytest.mark.parametrize("name", list(CASES) + ["per_head"])
def test_the_claim_and_the_sampled_spectral_radii(name):
    text, bound, interval, norm = CASES[name] if name in CASES else ("", Bound.STABLE, "[0, 1)", "infinity norm")
    result = _compiled(HEAD + text + TAIL if name in CASES else PER_HEAD)
    rep = result.report
    assert (rep.eigen_bound, rep.eigen_interval) == (bound.value, interval), rep.eigen_reason
    assert norm in rep.eigen_reason
    hi = _ends(interval)[1]
    for seed in range(3):
        radius = float(_radii(result, seed).max())
        assert radius <= hi + 1e-9, (name, seed, radius)
        if interval.endswith(")"):
            assert radius < hi


@pytest.mark.parametrize("name", list(NOT_CLAIMED))
def test_a_norm_that_can_pass_one_is_not_claimed(name):
    text, weight = NOT_CLAIMED[name]
    result = _compiled(HEAD + text + TAIL)
    assert result.report.eigen_bound not in (Bound.STABLE.value, Bound.MARGINAL.value), result.report.eigen_reason
    assert float(_radii(result, 0, weight).max()) > 1.0  # and the module's A indeed leaves the unit disc there


def test_norm_readings_simplify_only_small_expressions(monkeypatch):
    """The norm readings run on every dense block the form rules leave open, so their optional inlining is capped
    (``NORM_INLINE_MAX_OPS``): a gated DeltaProduct's block (three Householder reflections) inlined to 60 ops with
    seven sums, and SymPy's simplify of that ran for ~24 minutes (one test of the suite). The spec now compiles with
    every expression the norm readings simplify within the cap, and gets no norm claim (its true bound needs the
    reflections' product structure)."""
    import sympy as sp

    from dsfc.analysis import stability

    sizes, inside = [], []
    norm_bound, simplify = stability._norm_bound, stability.simplify

    def recording_norm_bound(sym, a):
        inside.append(True)
        try:
            return norm_bound(sym, a)
        finally:
            inside.pop()

    def recording_simplify(e):
        if inside:
            sizes.append(sp.count_ops(e))
        return simplify(e)

    monkeypatch.setattr(stability, "_norm_bound", recording_norm_bound)
    monkeypatch.setattr(stability, "simplify", recording_simplify)
    hunt = (ROOT / "tests" / "e2e" / "test_user_specs_13.py").read_text(encoding="utf-8")
    gdp3 = re.search(r'^GDP3 = """(.*?)"""', hunt, flags=re.S | re.M).group(1)  # (importing it compiles 12 specs)
    result = compile_text(gdp3)
    assert sizes and max(sizes) <= stability.NORM_INLINE_MAX_OPS, sizes
    # no norm claim (the unknown reason lists the readings tried and spellings, a normalised matrix among them)
    assert "|lambda| is at most" not in result.report.eigen_reason, result.report.eigen_reason


def test_a_sum_is_read_exactly_only_where_a_delta_picks_or_a_residue_permutes():
    """``_picked_or_permuted``, the exact readings behind the cyclic-shift and circulant claims: a delta of the
    summed index picks one term (or none: 0); ``(c +- j) % n`` over j in 0 .. n - 1 permutes the range. Not read:
    a delta whose other side reads j, a residue of 2 j (not one-to-one), a modulus other than the range's length, j
    read both inside and outside the residue, two different residues of j, a range not starting at 0, a body with a
    sum that binds j again."""
    import sympy as sp

    from dsfc.analysis.stability import _picked_or_permuted

    i, j = sp.symbols("i j", integer=True, nonnegative=True)
    n, m = sp.symbols("n m", integer=True, positive=True)
    w, g = sp.IndexedBase("w"), sp.Symbol("g", positive=True)
    over = (j, 0, n - 1)
    assert _picked_or_permuted(sp.Sum(g * w[j] * sp.KroneckerDelta(j, sp.Mod(i - 1, n)), over)) == [
        g * w[sp.Mod(i - 1, n)], 0]
    assert _picked_or_permuted(sp.Sum(w[sp.Mod(i - j, n)], over)) == [sp.Sum(w[j], over)]
    assert _picked_or_permuted(sp.Sum(w[sp.Mod(j + i + 3, n)] ** 2, over)) == [sp.Sum(w[j] ** 2, over)]
    for body in (sp.KroneckerDelta(j, sp.Mod(2 * j, n)), w[sp.Mod(2 * j + i, n)], w[sp.Mod(i - j, m)],
                 j * w[sp.Mod(i - j, n)], w[sp.Mod(i - j, n)] * w[sp.Mod(i + j, n)]):
        assert _picked_or_permuted(sp.Sum(body, over)) is None, body
    assert _picked_or_permuted(sp.Sum(w[sp.Mod(i - j, n)], (j, 1, n))) is None  # not the range 0 .. n - 1
    assert _picked_or_permuted(sp.Sum(sp.KroneckerDelta(j, i) * sp.Sum(w[j], over), over)) is None  # j bound inside
