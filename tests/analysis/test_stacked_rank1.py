"""The eigenvalue prover on a block stacked over a 2-entry axis whose sub-blocks are each alpha_ij I + beta_ij f g^T
with one f and g (``_stacked_rank1`` in analysis/stability.py): a Titans-like memory with momentum (the twenty-fifth
spec hunt, tests/e2e/test_user_specs_25.py; hunt 11's key-first form too) was "unknown", and its truth is |lambda| < 1.

The eigenvalues are those of the 2 x 2 matrices alpha and alpha + (g^T f) beta. Each proven bound is checked on the
generated module's own A (``dsf_matrices``) at random inputs and perturbed parameters; variants where it does not
hold (momentum above 1, a step too large) or where the rule does not apply (a second key in the momentum block) get
no claim, and the first two are shown to reach |lambda| > 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from dsf_testing import F64, build  # noqa: E402
from test_user_specs_11 import TITANS as TITANS_KEY_FIRST  # noqa: E402
from test_user_specs_25 import TITANS  # noqa: E402

from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

MOMENTUM_ABOVE_ONE = TITANS.replace("let eta[h: H] = sigmoid(", "let eta[h: H] = 2 * sigmoid(")
STEP_TOO_LARGE = TITANS.replace("let th[h: H] = 0.5 * sigmoid(", "let th[h: H] = 6 * sigmoid(")
TWO_KEYS = (TITANS.replace("param w_th[H, d] ~ normal(0, 0.5)",
                           "param w_th[H, d] ~ normal(0, 0.5)\nparam W_K2[H, K, d] ~ normal(0, 0.5)")
            .replace("let al[h: H]", "let k2[h: H, a: K] = sum(m, W_K2[h, a, m] * u[m])\nlet al[h: H]")
            .replace("(delta(s, 0) * (1 - al[h]) * delta(a, a2) - th[h] * k[h, a] * k[h, a2])",
                     "(delta(s, 0) * ((1 - al[h]) * delta(a, a2) - th[h] * k[h, a] * k[h, a2])"
                     " - delta(s, 1) * th[h] * k2[h, a] * k2[h, a2])"))


def _max_modulus(text: str, scales=(0.3, 1.0, 3.0), perturb: float = 0.3) -> float:
    """The largest |lambda| of the module's A_t over random inputs at ``scales`` and perturbed parameters."""
    result = compile_text(text, "t.dsf")
    built = build(result, dict(result.sym.dim_defaults))
    gen, top = torch.Generator().manual_seed(0), 0.0
    with torch.no_grad():
        for p in built.model.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    for scale in scales:
        u = scale * torch.randn(3, 8, built.d_in(), generator=gen, dtype=F64)
        top = max(top, torch.linalg.eigvals(built.dsf_matrices(u)[0]).abs().max().item())
    return top


@pytest.mark.parametrize("text", [TITANS, TITANS_KEY_FIRST], ids=["value_first", "key_first"])
def test_memory_with_momentum_is_proven_stable_and_is(text):
    rep = compile_text(text, "t.dsf").report
    assert (rep.eigen_bound, rep.eigen_interval) == (Bound.STABLE.value, "[0, 1)"), rep.eigen_reason
    assert "alpha + (g^T f) beta: 2x2 blocks" in rep.eigen_reason and "g^T f = -th[h]*sum(" in rep.eigen_reason, \
        rep.eigen_reason
    assert _max_modulus(text) < 1


@pytest.mark.parametrize("text", [MOMENTUM_ABOVE_ONE, STEP_TOO_LARGE], ids=["momentum_above_one", "step_too_large"])
def test_no_claim_where_the_stacked_block_can_grow(text):
    """eta in (0, 2) (alpha's eigenvalue eta exceeds 1) and th in (0, 6) (the key direction's pair leaves the disk):
    no bound claimed, and the module's A does reach |lambda| > 1."""
    rep = compile_text(text, "t.dsf").report
    assert rep.eigen_bound not in (Bound.STABLE.value, Bound.MARGINAL.value), rep.eigen_reason
    assert _max_modulus(text, scales=(1.0, 3.0, 10.0), perturb=0.0) > 1


RANK_TWO = TWO_KEYS.replace("- delta(s, 1) * th[h] * k2[h, a] * k2[h, a2])",
                            "- th[h] * k2[h, a] * k2[h, a2])")


@pytest.mark.parametrize("text", [TWO_KEYS, RANK_TWO], ids=["second_key_in_the_momentum", "rank_two_blocks"])
def test_the_rule_needs_one_rank_one_direction(text):
    """The momentum block written with a second key k2, or every block with k k^T + k2 k2^T (rank 2), is not
    alpha (x) I + beta (x) f g^T: the rule does not apply (the quotient argument needs one g), nothing is claimed."""
    assert text != TITANS and (text == TWO_KEYS or text.count("k2[h, a] * k2[h, a2]") == 1)
    rep = compile_text(text, "t.dsf").report
    assert rep.eigen_bound == Bound.UNKNOWN.value and "alpha + (g^T f)" not in rep.eigen_reason, rep.eigen_reason


def test_a_rank_two_sub_block_is_not_split_as_rank_one():
    """``_rank1_parts`` on 2 I - k k^T - p p^T: factor_terms leaves one factor (k k^T + p p^T) over the row and the
    column index, which must not be read as g (it would make the block rank 1); 2 I - 3 k k^T splits."""
    import sympy as sp

    from dsfc.analysis.stability import _rank1_parts

    a, a2 = sp.symbols("a a2", integer=True)
    k, p = sp.IndexedBase("k"), sp.IndexedBase("p")
    assert _rank1_parts(2 * sp.KroneckerDelta(a, a2) - k[a] * k[a2] - p[a] * p[a2], (a,), (a2,), (0,)) is None
    assert _rank1_parts(2 * sp.KroneckerDelta(a, a2) - 3 * k[a] * k[a2], (a,), (a2,), (0,)) == (2, -3 * k[a], k[a2])
