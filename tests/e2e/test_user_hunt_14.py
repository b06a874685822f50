"""Found by the fourteenth user hunt (a new user of the spec language, the CLI and the generated modules on inputs
nobody tested, starting from the three gaps round 13 left open: number literals beyond float64, parameters replaced
by ones of another shape, dtype or device, torch.export with a dynamic time dimension). Each test failed before its
fix.

Found and fixed:

- (Round 13's fourth open item.) ``1e-400`` in a spec was silently 0.0 (an fp64 underflow: a decay rate or an
  initialiser's std that vanished without a word), and ``1e400`` was "this expression is not a finite real number:
  it is infinite", as if the spec divided by zero (``dim z = 1e400``: "dim 'z' is too large (overflows)"). Both are
  now refused at the literal: "number '1e-400' is too small for float64: it would be 0.0" with "write 0 if zero is
  meant", "number '1e400' is too large for float64" (``dsfc.lang.parse._real_number``). A zero mantissa
  (``0e-500``) is 0 and a subnormal (``1e-310``) is kept, as float64 holds them.
"""

from __future__ import annotations

import pytest

from dsfc.lang.errors import SpecErrors
from dsfc.lang.parse import parse_spec

MINI = """\
model Mini "tiny"
dim d = 4
input u[d]
state h[d]
output y[d]
param a[d] = {value}
param D[d] = 1
A[i, j] = delta(i, j) * a[i]
B[i, k] = delta(i, k)
C[o, i] = delta(o, i)
D[o, k] = delta(o, k) * D[k]
"""


def _spec(value: str = "0.5") -> str:
    return MINI.format(value=value)


# -- 1. number literals beyond float64 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value, literal, message", [
    ("1e-400", "1e-400", "number '1e-400' is too small for float64: it would be 0.0"),
    ("0.5 * 2.5E-999", "2.5E-999", "number '2.5E-999' is too small for float64: it would be 0.0"),
    ("normal(0, 1e-400)", "1e-400", "number '1e-400' is too small for float64"),  # inside a call
    ("1e400", "1e400", "number '1e400' is too large for float64"),
    ("1 / 1e400", "1e400", "number '1e400' is too large for float64"),  # not the division
])
def test_a_number_beyond_float64_is_refused_at_the_literal(value, literal, message):
    """1e-400 was silently 0.0; 1e400 was "not a finite real number: it is infinite", as if the spec divided by 0."""
    with pytest.raises(SpecErrors) as info:
        parse_spec(_spec(value), "n.dsf")
    (err,) = info.value.errors
    assert err.message.startswith(message), err.message
    line = _spec(value).splitlines()[5]
    assert (err.span.line, err.span.column) == (6, line.index(literal) + 1), err.span


@pytest.mark.parametrize("value, want", [("0e-500", 0.0), ("0.000e999", 0.0), ("1e-310", 1e-310),
                                          ("1.7976931348623157e308", 1.7976931348623157e308)])
def test_a_zero_mantissa_a_subnormal_and_the_largest_float_are_kept(value, want):
    (param,) = [s for s in parse_spec(_spec(value), "n.dsf").statements if getattr(s, "name", None) == "a"]
    assert param.init.expr.value == want
