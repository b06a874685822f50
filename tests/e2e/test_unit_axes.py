"""A state axis of literal extent 1 is diagonal whether or not the spec writes ``delta`` on it.

On ``state h[c: 1]`` the row and column indices of A are both 0, so ``A[i, k] = g`` is the scalar ``g``; the analysis
looked for ``delta(i, k)`` only and called it "A couples state axes c (no delta there)": a dense scan (a matrix-vector
product per step, the generic Triton block scan) for what is a gated scalar recurrence. ``classify_a`` now counts an
axis of extent 1 (a literal, not a dim the user may resize) as diagonal. Checked on two specs against float64 loops
written here: a one-state gated RNN with a wider output, and a per-channel gate on ``state h[c: d, j: 1]``.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import torch  # noqa: E402

from dsf_testing import (INTERPRETER_WARNINGS, case_builds, matvec, spec_hunt_tests, stack_steps)  # noqa: E402
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import AKind, Family  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

SCALAR_STATE = """
model ScalarState "one gated state read out to 5 outputs: h = g h + (1 - g) w.u, g = sigmoid(w.u)"
dim d = 2
dim o = 5
input u[d]
state h[c: 1]
output y[o]
param w[d] ~ normal(0, 1)
param v[o] ~ normal(0, 1)
let g = sigmoid(sum(k, w[k] * u[k]))
A[i, k] = g
B[i, k] = (1 - g) * w[k]
C[i, k] = v[i]
"""

UNIT_AXIS = """
model UnitAxis "a per-channel gate on a state with a literal extent-1 axis beside the channels"
dim d = 3
input u[d]
state h[c: d, j: 1]
output y[d]
param w[d] ~ normal(0, 1)
A[(c, j), (c2, j2)] = delta(c, c2) * 0.9 * sigmoid(w[c] * u[c])
B[(c, j), k] = delta(c, k)
C[o, (c, j)] = delta(o, c)
D[o, k] = 0.5 * delta(o, k)
"""

CASES = {"scalarstate": (SCALAR_STATE, Family.DIAGONAL_SCAN), "unitaxis": (UNIT_AXIS, Family.DIAGONAL_SCAN)}
sig = torch.sigmoid


def _scalarstate(P, u, h0=None):
    h, ys = (u.new_zeros(u.shape[0]) if h0 is None else h0.reshape(-1)), []
    for t in range(u.shape[1]):
        x = matvec(P["w"][None], u[:, t])[:, 0]
        g = sig(x)
        h = g * h + (1 - g) * x
        ys.append(h[:, None] * P["v"])
    return stack_steps(ys, u, P["v"].shape[0])


def _unitaxis(P, u, h0=None):
    h, ys = (u.new_zeros(u.shape[0], u.shape[2]) if h0 is None else h0.reshape(u.shape[0], -1)), []
    for t in range(u.shape[1]):
        h = 0.9 * sig(P["w"] * u[:, t]) * h + u[:, t]
        ys.append(h + 0.5 * u[:, t])
    return stack_steps(ys, u, u.shape[2])


INDEPENDENT = {"scalarstate": _scalarstate, "unitaxis": _unitaxis}
EIGEN = {"scalarstate": Bound.STABLE, "unitaxis": Bound.STABLE}

_compiled, _built = case_builds(CASES)

(test_unit_axis_matches_an_independent_implementation, test_unit_axis_gradients_match_an_independent_implementation,
 test_unit_axis_matches_the_reference, test_unit_axis_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built)


def test_a_unit_axis_without_delta_is_diagonal():
    a = _compiled("scalarstate").structure.a
    assert a.kind == AKind.SCALAR and not a.mixed_axes, a
    a = _compiled("unitaxis").structure.a
    assert a.kind == AKind.SCALAR_PER_GROUP and not a.mixed_axes, a


def test_a_dim_of_default_one_is_not_assumed_one():
    """``dim n = 1`` is a default the user may change: without a delta the axis stays mixed (dense)."""
    text = SCALAR_STATE.replace("state h[c: 1]", "state h[c: n]").replace("dim o = 5", "dim o = 5\ndim n = 1")
    from dsfc.pipeline import compile_text
    result = compile_text(text, "dimone.dsf")
    assert result.structure.family == Family.DENSE_SCAN and result.structure.a.mixed_axes, result.structure.a
