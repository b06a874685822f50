"""One mistake, one error: a declaration that fails (a bad axis, a failed dim, a second input, a built-in's name)
used to leave its name undeclared, so every later use of it was reported as ``unknown name`` although the spec
declares it. Those follow-on errors are suppressed; errors that do not come from the first one are still reported."""

from __future__ import annotations

import pytest

from dsfc.lang.check import check_spec
from dsfc.lang.errors import SpecErrors
from dsfc.lang.parse import parse_spec

PRE = ["dim d = 4", "input u[d]", "state h[c: d]", "param w[d]"]  # lines 1-4


def errors(*lines: str) -> list[tuple[int, str]]:
    with pytest.raises(SpecErrors) as info:
        check_spec(parse_spec("\n".join(PRE + list(lines)) + "\n", "x.dsf"))
    return [(e.span.line, e.message) for e in info.value.errors]


USES = ["let b[c: d] = a[c] * 2",  # line 6
        "A[i, k] = delta(i, k) * a[i]",  # line 7
        "B[i, k] = delta(i, k) * b[i]",
        "C[i, k] = delta(i, k)"]


@pytest.mark.parametrize("bad, line, message", [
    ("let a[c: d, c: d] = w[c]", 5, "axis name 'c' is used twice in 'a'"),
    ("let a[c: dd] = w[c]", 5, "unknown dim 'dd' in axis 0 of 'a'"),
    ("let a[c: 0] = w[c]", 5, "axis 0 of 'a' must be a positive integer, got 0"),
    ("let a[c: d, d: 2] = w[c]", 5, "axis name 'd' of 'a' is also a dim"),
    ("let a[d] = w[c]", 5, "axes of let 'a' must be named"),  # the unnamed axis, not 'unknown name c'
])
def test_a_let_whose_declaration_fails_gives_one_error(bad, line, message):
    errs = errors(bad, *USES)
    assert len(errs) == 1 and errs[0][0] == line and errs[0][1].startswith(message), errs


def test_a_failed_dim_is_one_error_not_one_per_tensor_that_uses_it():
    errs = errors("dim K = d // 3", "param W[K]", "let a[c: d] = W[c % K] * u[c]", *USES)
    assert [m for _, m in errs] == ["dim 'K': 4 // 3 is not exact (4 is not a multiple of 3)"], errs


def test_a_second_input_is_one_error():
    errs = errors("input x[d]", "let a[c: d] = x[c]", *USES)
    assert [m.split(" (")[0] for _, m in errs] == ["only one input may be declared"], errs


def test_a_let_named_after_a_builtin_is_one_error():
    errs = errors("let exp[c: d] = w[c]", "let a[c: d] = exp[c]", *USES)
    assert [m for _, m in errs] == ["'exp' is a built-in function and cannot be redeclared"], errs


def test_a_post_whose_declaration_fails_gives_one_error():
    errs = errors("let a[c: d] = w[c]", *USES, "post g[o: d, o: d] = y[o]", "post out[o: d] = g[o] * 2")
    assert [m for _, m in errs] == ["axis name 'o' is used twice in 'g'"], errs


def test_a_drive_of_a_failed_let_is_one_error():
    errs = errors("let x[c: dd] = silu(u[c])", "drive x", "let a[c: d] = w[c]", *USES)
    assert [m for _, m in errs] == ["unknown dim 'dd' in axis 0 of 'x'"], errs


def test_independent_errors_are_still_reported():
    # the failed let 'a' silences its uses, not a misspelt name next to them, nor a genuinely unknown index
    errs = errors("let a[c: d, c: d] = w[c]", "let b[c: d] = a[c] * ww[c]", "A[i, k] = delta(i, k) * a[i]",
                  "B[i, k] = delta(i, k) * b[i] * zz", "C[i, k] = delta(i, k) * q[i]")
    assert errs == [(5, "axis name 'c' is used twice in 'a'"), (6, "unknown name 'ww'"), (8, "unknown name 'zz'"),
                    (9, "unknown name 'q'")]


def test_an_unnamed_let_axis_does_not_hide_a_misspelt_tensor():
    errs = errors("let a[d] = ww[c]", *USES)
    assert errs == [(5, "axes of let 'a' must be named, e.g. let a[c: d] = ..."), (5, "unknown name 'ww'")]


# an axis name of a let, param or post that is also a declared tensor was accepted: 'let a[u: d] = w[u]' crashed the
# generated module (IndexError: the let counted as reading the input u), 'let a[b: d] = w[b]' with a let b was a
# bogus "cycle among lets", 'let a[h: d] = ...' hid a state read
@pytest.mark.parametrize("bad, owner, name, kind", [
    ("let a[u: d] = w[u]", "a", "u", "input"),
    ("let a[b: d] = w[b]", "a", "b", "let"),
    ("let a[h: d] = w[h]", "a", "h", "state"),
    ("let a[w: d] = w[w]", "a", "w", "param"),
    ("let a[c: d] = w[c]\nparam q[a: d] = a", "q", "a", "let"),
])
def test_an_axis_name_may_not_shadow_a_tensor(bad, owner, name, kind):
    errs = errors(*bad.split("\n"), *USES)
    assert [m for _, m in errs] == [f"axis name {name!r} of {owner!r} shadows the {kind} {name!r}; index names must "
                                    "differ from declared names"]


def test_a_post_axis_may_not_shadow_a_tensor():
    errs = errors("let a[c: d] = w[c]", *USES, "post out[w: d] = y[w] * 2")
    assert [m for _, m in errs] == ["axis name 'w' of 'out' shadows the param 'w'; index names must differ from "
                                    "declared names"]


def test_a_post_named_like_a_declared_tensor_is_one_error():
    # 'post y[o: d] = y[o] * 2' without an output statement also said "post 'y' reads 'y', which is not defined
    # before it": the y it reads is the output, the post's own declaration is what failed
    errs = errors("let a[c: d] = w[c]", *USES, "post y[o: d] = y[o] * 2")
    assert [m for _, m in errs] == ["'y' is the name of the output, which the spec leaves implicit (no 'output' "
                                    "statement)"], errs
    errs = errors("let a[c: d] = w[c]", *USES, "post a[o: d] = y[o] * a[o]")
    assert [m for _, m in errs] == ["'a' is already declared (line 5)"], errs
    # a post that really reads itself is still an error
    errs = errors("let a[c: d] = w[c]", *USES, "post g[o: d] = y[o] * g[o]")
    assert [m for _, m in errs] == ["post 'g' reads 'g', which is not defined before it"], errs


def test_each_separate_let_cycle_is_reported_once():
    """Two unrelated cycles are two mistakes (the second used to surface only after the first was fixed); a tangle
    of lets (a -> b -> a and a -> c -> a) is one."""
    errs = errors("let z[c: d] = z[c] + 1", "let a[c: d] = b[c] + e[c]", "let b[c: d] = a[c]",  # lines 5-7
                  "let e[c: d] = a[c] * u[c]", "A[i, k] = delta(i, k)", "B[i, k] = delta(i, k) * z[i] * a[i]",
                  "C[i, k] = delta(i, k)")
    assert errs == [(5, "cycle among lets: z -> z"), (6, "cycle among lets: a -> b -> a")], errs


def test_a_sum_over_a_failed_dims_axis_is_one_error():
    """``dim d = 0`` used to add "cannot infer the range of sum index 'k': it never subscripts a tensor directly" for
    every ``sum(k, W[j, k] * u[k])``: the tensors it subscripts were dropped with the dim, so the range looked
    unknowable. Such a sum now defers to the dim's error; a sum that really subscripts nothing still gets its own."""
    with pytest.raises(SpecErrors) as info:
        check_spec(parse_spec("\n".join([
            "dim d = 0", "dim n = 2", "input u[d]", "state h[c: n]", "param W[n, d]",
            "let b[j: n] = sum(k, W[j, k] * u[k])",
            "let z[j: n] = sum(m, 2 * b[j])",  # m subscripts nothing at all: still an error
            "A[i, k] = delta(i, k) * 0.5", "B[i, k] = b[i] * z[i]", "C[i, k] = delta(i, k)"]) + "\n", "x.dsf"))
    errs = [(e.span.line, e.message) for e in info.value.errors]
    assert errs[0] == (1, "dim 'd' must be a positive integer, got 0"), errs
    assert not any(line == 6 for line, _ in errs), errs
    assert any(line == 7 and "cannot infer the range of sum index 'm'" in m for line, m in errs), errs
