"""The eigenvalue bound of a block triangular on its one mixed axis (stability.py ``_triangular``): its eigenvalues are
its diagonal entries. Each claim is checked on the eigenvalues of the generated module's own A at random inputs (and
at dims other than the spec's: the triangular shape is proven for every dims, not read off the defaults); a block with
one entry on the wrong side is not triangular and claims nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from dsf_testing import F64, compile_and_build  # noqa: E402

from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

# HiPPO-LegS's lower-triangular coupling -sqrt(2i + 1) sqrt(2j + 1) below the diagonal, its diagonal decay taken
# exactly (exp(-dt (i + 1))) and the rest as one Euler step
LEGS = """
model LegS "HiPPO-LegS memory per channel: exact diagonal decay, Euler-step coupling below the diagonal"
dim d = 2
dim Q = 4
input u[d]
state x[c: d, i: Q]
output y[d]
param w[d] ~ normal(0, 1)
param W_o[o: d, c: d, i: Q] ~ normal(0, 0.5)
let dt[c: d] = sigmoid(w[c] * u[c]) / Q
A[(c, i), (c2, j)] = delta(c, c2) * (delta(i, j) * exp(-dt[c] * (i + 1))
    - dt[c] * min(max(i - j, 0), 1) * sqrt(2 * i + 1) * sqrt(2 * j + 1))
B[(c, i), m] = delta(c, m) * dt[c] * sqrt(2 * i + 1)
C[o, (c, i)] = W_o[o, c, i]
"""
# upper triangular, every diagonal entry above 1
UPPER = LEGS.replace("max(i - j, 0)", "max(j - i, 0)").replace("exp(-dt[c] * (i + 1))", "(1 + softplus(u[c]))")
# one entry above the diagonal (row 0, last column): not triangular, the diagonal says nothing about the eigenvalues
NEAR = LEGS.replace("min(max(i - j, 0), 1)", "(min(max(i - j, 0), 1) + 30 * delta(i, 0) * delta(j, Q - 1))")


def _eigenvalues(text: str, dims: dict[str, int]) -> torch.Tensor:
    built = compile_and_build(text, dims)
    u = 3 * torch.randn(2, 5, dims["d"], generator=torch.Generator().manual_seed(0), dtype=F64)
    return torch.linalg.eigvals(built.dsf_matrices(u)[0])


@pytest.mark.parametrize("dims", [{"d": 2, "Q": 4}, {"d": 3, "Q": 7}])
def test_lower_triangular_block_is_bounded_by_its_diagonal(dims):
    report = compile_text(LEGS, "legs.dsf").report
    assert report.eigen_bound == Bound.STABLE, report.eigen_reason
    assert "lower triangular on axis 'i'" in report.eigen_reason
    lam = _eigenvalues(LEGS, dims)
    assert (lam.abs() < 1).all(), lam.abs().max()


def test_upper_triangular_block_with_a_diagonal_above_one_exceeds_one():
    report = compile_text(UPPER, "upper.dsf").report
    assert report.eigen_bound == Bound.EXCEEDS, report.eigen_reason
    assert "upper triangular" in report.eigen_reason
    lam = _eigenvalues(UPPER, {"d": 2, "Q": 5})
    assert (lam.abs() > 1).all(), lam.abs().min()


def test_one_entry_on_the_wrong_side_is_not_triangular():
    report = compile_text(NEAR, "near.dsf").report
    assert report.eigen_bound == Bound.UNKNOWN, report.eigen_reason
    # no triangular claim (the unknown reason lists the forms tried, triangular among them)
    assert "A is lower triangular" not in report.eigen_reason and "A is upper triangular" not in report.eigen_reason
    # and indeed the diagonal does not bound it: the coupling back from the last column pushes an eigenvalue out
    lam = _eigenvalues(NEAR, {"d": 2, "Q": 4})
    assert (lam.abs() > 1).any(), lam.abs().max()
