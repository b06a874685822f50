"""The eigenvalue prover on running counts and quotients that hold their denominator (``(n - 1) / n``).

A running sum of terms >= c > 0 is >= c (``cumsum(1)`` is a count, >= 1), and ``(n - 1) / n`` is read as
``1 - 1 / n``: a running mean's decay is proved in [0, 1) instead of "not proven" ([0, inf) read term by term).
Every claimed interval is checked on the generated module's own A_t (float64, T = 40 steps so the counts grow),
and forms whose true range leaves [0, 1] must not be claimed inside it.
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
from dsfc.check import small_dims  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

HEAD = """
model Q "a quotient decay"
dim d = 3
input u[d]
state h[d]
param W[d, d] ~ normal(0, 0.5)
"""
TAIL = """
B[i, m] = W[i, m]
C[o, i] = delta(o, i)
"""

# name: (lets and A, the claim, the true range of the decay at the steps sampled (t = 1 .. 40))
CASES = {
    # the running mean: n = t, (n - 1) / n = 1 - 1 / n in [0, 1)
    "count": ("let n = cumsum(1)\nA[i, j] = delta(i, j) * (n - 1) / n", Bound.STABLE, "[0, 1)"),
    # terms in (0.5, 1.5): n > 0.5, 1 - 0.5 / n in (0, 1)
    "gated_count": ("let g[c: d] = 0.5 + sigmoid(u[c])\nlet n[c: d] = cumsum(g[c])\n"
                    "A[i, j] = delta(i, j) * (n[i] - 0.5) / n[i]", Bound.STABLE, "(0, 1)"),
    # a decayed count z = 0.9 z + 1 >= 1: (z - 1) / z in [0, 1)
    "scan_count": ("let z = scan(0.9, 1)\nA[i, j] = delta(i, j) * (z - 1) / z", Bound.STABLE, "[0, 1)"),
    # a count over a dim as well: the dim is [1, inf), (d - 1) / d a constant in [0, 1)
    "dim_share": ("A[i, j] = delta(i, j) * (d - 1) / d", Bound.STABLE, "[0, 1)"),
}
# (n + 1) / n = 1 + 1 / n in (1, 2]: nothing <= 1 may be claimed
GROWING = "let n = cumsum(1)\nA[i, j] = delta(i, j) * (n + 1) / n"


@functools.lru_cache(maxsize=None)
def _compiled(text: str):
    return compile_text(HEAD + text + TAIL, "q.dsf")


def _ends(interval: str) -> tuple[float, float]:
    lo, hi = re.fullmatch(r"[\[(](.*), (.*)[\])]", interval).groups()
    return float(lo), float(hi)


def _decays(result, seed: int = 0) -> torch.Tensor:
    """The diagonal of every A_t of the generated module over 40 steps (the A of these specs is diagonal)."""
    built = build(result, small_dims(result), seed=seed)
    u = 3.0 * torch.randn(2, 40, built.d_in(), generator=torch.Generator().manual_seed(seed), dtype=F64)
    with torch.no_grad():
        A = built.model.dsf_matrices(u)[0]
    return torch.diagonal(A.reshape(-1, A.shape[-2], A.shape[-1]), dim1=-2, dim2=-1)


@pytest.mark.parametrize("name", list(CASES))
def test_the_claim_and_the_sampled_decays(name):
    text, bound, interval = CASES[name]
    rep = _compiled(text).report
    assert (rep.eigen_bound, rep.eigen_interval) == (bound.value, interval), rep.eigen_reason
    lo, hi = _ends(interval)
    lam = _decays(_compiled(text))
    assert lo - 1e-12 <= float(lam.min()) and float(lam.max()) <= hi + 1e-12, (name, lam.min(), lam.max())
    if interval.endswith(")"):  # an open upper end: no sample reaches it
        assert float(lam.max()) < hi


def test_a_growing_quotient_is_not_claimed_stable():
    rep = _compiled(GROWING).report
    assert rep.eigen_bound not in (Bound.STABLE.value, Bound.MARGINAL.value), rep.eigen_reason
    assert float(_decays(_compiled(GROWING)).min()) > 1.0  # the module's decay is indeed above 1 at every step
