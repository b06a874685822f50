"""Triton path of user specs outside the catalog (tests/e2e/test_user_specs.py): forward vs the float64 reference,
gradients vs the torch path, as ``dsfc check`` runs it."""

import sys
from pathlib import Path

from tests.triton._device import DEVICE  # noqa: F401  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402

pytest.importorskip("triton")

from dsfc.check import run_check  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # dsf_testing, test_user_specs (plain modules)
from test_user_specs import INLINE_QUERY, SQUARE_FEATURES, SQUARE_SUBSCRIPTS  # noqa: E402
from test_user_specs_2 import CONST_EXPRS  # noqa: E402


@pytest.mark.parametrize("text", [SQUARE_SUBSCRIPTS, SQUARE_FEATURES, INLINE_QUERY, CONST_EXPRS],
                         ids=["square_subscripts", "square_features", "inline_query", "constant_expressions"])
def test_triton_path_of_user_specs(text):
    report = run_check(compile_text(text, "user.dsf"), shapes=((2, 7),))
    assert report.ok, report.table()
    assert any(r.what.startswith("triton forward") for r in report.rows), report.table()
