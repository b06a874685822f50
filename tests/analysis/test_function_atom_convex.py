"""The convex-combination rule differentiates by a Dummy standing for a function atom (stability.py
``_convex_combination``): SymPy cannot differentiate by ``sigmoid(x)`` and its ValueError ended every sharper rule
for the expression, so LinOSS's Jury sum ``1 + tr + det`` (tr = 2 S, det = S for the implicit oscillator, S = 1 / (1 +
dt^2 A) in (0, 1]) was (0, inf). The new ranges, derived by hand, are checked against the report, and every range the
report claims is checked against sampled 2x2 blocks of the module's own A (random wide parameters, inputs at several
scales, two sizes): a sharper claim must be true. The hull's ends are open where the atom never reaches 0 or 1
(a sigmoid): read closed, Titans' momentum block lost its ``|lambda| < 1``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from dsf_testing import F64, build  # noqa: E402
from test_user_specs_12 import LINOSS_IM  # noqa: E402
from test_user_specs_14 import LINOSSSEL  # noqa: E402
from test_user_specs_15 import DLINOSS  # noqa: E402
from test_user_specs_25 import TITANS  # noqa: E402

from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

# 1 + tr + det by hand: LinOSS-IM 1 + 3 S, S in (0, 1] (A = relu(.) may be 0): (1, 4], reported as the superset
# [1, 4] (S's closed end at 1 makes the prover close both); the selective form alike, (1, 4]; D-LinOSS (IMEX, det = S
# = 1 / (1 + dt G)) 2 + S (2 - dt^2 A) with dt in (0, 1), A in (0, 3.9): (0.1, 4). 1 - tr + det: 1 - S in [0, 1) for
# both LinOSS-IM forms (was [0, inf)); D-LinOSS's (0, 3.9) unchanged
CASES = {
    "linoss_im": (LINOSS_IM, "[1, 4]", "[0, 1)", Bound.MARGINAL, {"P": (2, 6)}),
    "linosssel": (LINOSSSEL, "(1, 4]", "[0, 1)", Bound.MARGINAL, {"P": (2, 5)}),
    "dlinoss": (DLINOSS, "(0.1, 4)", "(0, 3.9)", Bound.STABLE, {"P": (2, 5)}),
}
INTERVAL = r"([\[(])(-?[0-9.e+-]+|-?inf), (-?[0-9.e+-]+|-?inf)([\])])"
TOL = 1e-9


@pytest.fixture(scope="module")
def compiled():
    return {name: compile_text(text, f"{name}.dsf") for name, (text, *_rest) in CASES.items()}


def _claims(reason: str) -> dict[str, tuple]:
    """The ranges the Jury report states: det, 1 - tr + det, 1 + tr + det -> (lo, hi, lo_open, hi_open)."""
    out = {}
    for key, pat in (("det", r"det = .*? in "), ("minus", r"1 - tr \+ det in "), ("plus", r"1 \+ tr \+ det in ")):
        m = re.search(pat + INTERVAL, reason)
        assert m, f"no {key} range in {reason!r}"
        out[key] = (float(m.group(2)), float(m.group(3)), m.group(1) == "(", m.group(4) == ")")
    return out


def _inside(x: torch.Tensor, claim) -> bool:
    lo, hi, lo_open, hi_open = claim
    above = x > lo - TOL if not lo_open else x > lo - TOL * max(1.0, abs(lo))
    below = x < hi + TOL if not hi_open else x < hi + TOL * max(1.0, abs(hi))
    return bool((above & below).all())


@pytest.mark.parametrize("name", CASES)
def test_jury_sum_is_sharp(compiled, name):
    rep = compiled[name].report
    assert rep.eigen_bound == CASES[name][3], rep.eigen_reason
    assert f"1 + tr + det in {CASES[name][1]}" in rep.eigen_reason, rep.eigen_reason
    assert f"1 - tr + det in {CASES[name][2]}" in rep.eigen_reason, rep.eigen_reason


@pytest.mark.parametrize("name", CASES)
def test_claimed_ranges_hold_on_sampled_blocks(compiled, name):
    result = compiled[name]
    claims = _claims(result.report.eigen_reason)
    gen = torch.Generator().manual_seed(7)
    seen = []
    for P in CASES[name][4]["P"]:
        built = build(result, {k: (P if k == "P" else result.sym.dim_defaults[k]) for k in result.sym.free_dims})
        for spread in (0.5, 3.0, 30.0):  # wide parameters: the claims hold for every value, not just the init's
            with torch.no_grad():
                for p in built.model.parameters():
                    p.copy_(spread * torch.randn(p.shape, generator=gen, dtype=F64))
            for scale in (0.1, 1.0, 10.0, 300.0):
                u = scale * torch.randn(3, 4, built.d_in(), generator=gen, dtype=F64)
                A = built.dsf_matrices(u)[0]
                blocks = torch.diagonal(A.reshape(-1, P, 2, P, 2), dim1=1, dim2=3).movedim(-1, 1).reshape(-1, 2, 2)
                tr = blocks.diagonal(dim1=-2, dim2=-1).sum(-1)
                det = torch.linalg.det(blocks)
                assert torch.isfinite(det).all()
                for key, x in (("det", det), ("minus", 1 - tr + det), ("plus", 1 + tr + det)):
                    assert _inside(x, claims[key]), (name, P, spread, scale, key, claims[key], x.min(), x.max())
                lam = torch.linalg.eigvals(blocks).abs()
                assert float(lam.max()) <= 1 + 1e-9
                seen.append(1 + tr + det)
    plus = torch.cat(seen)
    lo, hi = claims["plus"][:2]
    # the samples reach into the claimed range's both halves: not a vacuous check
    assert float(plus.min()) < lo + 0.5 * (hi - lo) < float(plus.max())


def test_hull_open_where_the_gate_never_reaches_its_end():
    """Titans' alpha + (g^T f) beta block: 1 - tr + det = al (1 - eta) - g^T f, al and eta sigmoids, g^T f in (-0.5,
    0]. Mixed in al its ends are [0, 0.5) (al = 0) and (0, 1.5) (al = 1); al never reaches 0, so (0, 1.5), and the
    eigenvalues stay strictly inside the unit disk, checked on sampled A_t."""
    result = compile_text(TITANS, "titans.dsf")
    rep = result.report
    assert rep.eigen_bound == Bound.STABLE, rep.eigen_reason
    assert "1 - tr + det in (0, 1.5)" in rep.eigen_reason, rep.eigen_reason
    gen = torch.Generator().manual_seed(3)
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
    for spread in (0.5, 1.0):  # gates unsaturated: a float64 sigmoid of 40 is 1, the bound's open end reached
        with torch.no_grad():
            for p in built.model.parameters():
                p.copy_(spread * torch.randn(p.shape, generator=gen, dtype=F64))
        for scale in (0.1, 1.0, 2.0):
            A = built.dsf_matrices(scale * torch.randn(2, 3, built.d_in(), generator=gen, dtype=F64))[0]
            lam = torch.linalg.eigvals(A.reshape(-1, A.shape[-1], A.shape[-1])).abs()
            assert float(lam.max()) < 1
