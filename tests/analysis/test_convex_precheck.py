"""The convex-combination rule's affinity pre-check (stability.py ``_curved_in``): an atom read inside an exp, abs,
min or max, a non-integer or negative power, or an exponent is not affine, decided without SymPy's second derivative
(which cost ~0.5 s a call on a block's norm readings: the HiPPO-LegS block with one entry above its diagonal compiled
in 26 s alone, ~7 s now). The pre-check must only skip what the derivative test would have rejected: each expression it
calls curved is checked against ``expand(diff(e, w, 2)) != 0``, and the affine and polynomial forms the rule reads
pass it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sympy as sp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "analysis"))

from dsfc.analysis import stability  # noqa: E402
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.stability import _curved_in  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

from test_triangular_bound import NEAR  # noqa: E402

g = sp.IndexedBase("g")
k = sp.IndexedBase("k")
i, j, Q = sp.symbols("i j Q", integer=True, nonnegative=True)
w = g[i]
s = sp.Function("sig")(k[i])

CURVED = [
    sp.exp(-w * (i + 1)) * sp.Sum(sp.Abs(sp.KroneckerDelta(i, j) - w * k[j]), (j, 0, Q - 1)),
    sp.Abs(w - k[j]) + w,
    sp.Min(w, k[i]) * 2,
    sp.Max(0, 1 - w) + w,
    w / (1 + w),
    sp.sqrt(w + k[i]),
    2 ** w + w,
    sp.exp(s) * s,
    k[j] ** w,
]
AFFINE_OR_POLYNOMIAL = [
    w * k[i] + (1 - w) * k[j],
    (1 - w) * s ** 2 + w * (1 - (1 - s) ** 2),
    w ** 2 + k[i],
    sp.Sum(w * k[j], (j, 0, Q - 1)) + w,
    sp.exp(k[i]) * w + sp.Abs(k[j]),  # curved functions of other atoms only
    sp.Min(k[i], 1) * (1 - w),
]


@pytest.mark.parametrize("e", CURVED, ids=str)
def test_curved_forms_are_not_affine(e):
    atom = s if e.has(sp.exp(s)) else w
    assert _curved_in(e, atom)
    assert sp.expand(sp.diff(e, atom, 2)) != 0  # what the derivative test would have found


@pytest.mark.parametrize("e", AFFINE_OR_POLYNOMIAL, ids=str)
def test_polynomial_forms_are_left_to_the_derivative(e):
    assert not _curved_in(e, w)


def test_near_triangular_block_asks_no_derivative_of_a_curved_form(monkeypatch):
    """The near-triangular LegS block (its norm readings are sums of ``|exp(-dt (i + 1)) ...|``) still claims
    nothing, and no second derivative is taken of a form that reads the atom inside an exp or abs: those were the
    85 s. Counted, not timed. A function atom is differentiated by a Dummy standing for it (counted too)."""
    asked = []
    diff = sp.diff

    def counted(e, *args, **kw):
        if args[1:] == (2,) and args[0]._diff_wrt:  # the rule's second derivatives (a sigmoid atom's: by a Dummy)
            asked.append((e, args[0]))
        return diff(e, *args, **kw)

    monkeypatch.setattr(stability.sp, "diff", counted)
    report = compile_text(NEAR, "near.dsf").report
    # unknown whichever rule reports last (the norm readings, or since the fla oracle hunt the similar-to-symmetric
    # rule, which reads this block's rank-1 term too and bounds it no better)
    assert report.eigen_bound == Bound.UNKNOWN, report.eigen_reason
    def reads_inside(e, x):
        return any(isinstance(f, (sp.exp, sp.Abs)) and any(a.has(x) for a in f.args) for f in sp.preorder_traversal(e))

    curved = [(e, x) for e, x in asked if reads_inside(e, x)]
    assert not curved, [f"d^2/d{sp.sstr(x)}^2 of {sp.sstr(e)[:200]}" for e, x in curved]
