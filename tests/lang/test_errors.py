"""Every mistake in a spec is a positioned error: ``path:line:col: error: message``, the source line and a caret.

Each case is a small inline spec with one mistake; the test asserts the exact line and column, a key part of the
message and, for state or output reads, that the error is a NotADSFError. Later tests check that independent errors
are collected in one run and how errors render.
"""

from __future__ import annotations

import pytest

from dsfc.lang.check import check_spec
from dsfc.lang.errors import NotADSFError, Span, SpecError, SpecErrors, render_error
from dsfc.lang.parse import parse_file, parse_spec

PRE = ["dim d = 4", "input u[d]", "state h[d]"]  # lines 1-3
MATS = ["A[i, k] = delta(i, k)", "B[i, k] = delta(i, k)", "C[i, k] = delta(i, k)"]


def spec(*middle: str, A: str | None = None, B: str | None = None, C: str | None = None) -> str:
    """PRE, then ``middle`` (from line 4 on), then A, B, C (each replaceable)."""
    mats = [A or MATS[0], B or MATS[1], C or MATS[2]]
    return "\n".join(PRE + list(middle) + mats) + "\n"


def run(text: str | bytes) -> SpecErrors:
    with pytest.raises(SpecErrors) as info:
        check_spec(parse_spec(text, "x.dsf"))
    return info.value


def only(text: str | bytes) -> SpecError:
    errs = run(text).errors
    assert len(errs) == 1, [(e.span.line, e.span.column, e.message) for e in errs]
    return errs[0]


def test_the_base_spec_is_valid():
    check_spec(parse_spec(spec(), "x.dsf"))


WHOLE_RHS = "(a running quantity over time) must be the whole right-hand side of a let"

# (id, text, line, column, part of the message)
CASES = [
    # -- syntax ------------------------------------------------------------------------------------------------
    ("unclosed-bracket", "dim d = 4\ninput u[d\nstate h[d]\n", 2, 10, "unexpected end of statement; expected"),
    ("missing-dim-value", "dim d = 4\ndim e\n", 2, 6, "unexpected end of statement; expected '='"),
    ("dim-empty-value", "dim d =\n", 1, 8, "unexpected end of statement; expected '(', '+', '-', a name, a number"),
    ("missing-comma", spec(A="A[i k] = 1"), 4, 5, "unexpected 'k'; expected ','"),
    ("unexpected-character", spec(C="C[i, k] = delta(i, k) $"), 6, 23, "unexpected character '$'"),
    ("non-ascii-character", spec(C="C[i, k] = λ"), 6, 11, "unexpected character 'λ'"),
    ("trailing-token", "dim d = 4\ninput u[d] extra\n", 2, 12, "unexpected 'extra' after the end of the statement"),
    ("two-values", spec(B="B[i, k] = 1 2"), 5, 13, "unexpected '2' after the end of the statement"),
    ("dangling-operator", spec(B="B[i, k] = 1 +"), 5, 14, "unexpected end of statement"),
    ("double-equals", spec(A="A[i, k] = = 1"), 4, 11, "unexpected '='"),
    ("unterminated-string", 'model S6 "selective\ndim d = 4\n', 1, 10, "unterminated string"),
    ("unknown-readout", spec("readout mid"), 4, 9, "unknown readout 'mid'; expected 'pre'"),
    ("readout-no-mode", spec("readout"), 4, 8, "unexpected end of statement; expected a name"),
    ("binder-outside-sum", spec(A="A[i, k] = exp(k2: 2)"), 4, 15, "only allowed as the first argument of sum"),
    ("binder-in-subscript", spec(A="A[i, k] = u[m: 2]"), 4, 13, "only allowed as the first argument of sum"),
    ("sum-one-argument", spec(A="A[i, k] = sum(u[i])"), 4, 11, "sum takes 2 arguments (index, body), got 1"),
    ("sum-number-index", spec(A="A[i, k] = sum(1, u[i])"), 4, 15, "the first argument of sum must be an index name"),
    ("sum-two-binders", spec(A="A[i, k] = sum(m: d, n: d)"), 4, 21, "only allowed as the first argument of sum"),
    # -- encoding and empty files ------------------------------------------------------------------------------
    ("empty-file", "", 1, 1, "empty spec: no statements"),
    ("blank-file", "  \n\n", 1, 1, "empty spec: no statements"),
    ("comments-only", "# nothing\n# here\n", 1, 1, "empty spec: no statements"),
    ("empty-bytes", b"", 1, 1, "empty spec: no statements"),
    ("nul-bytes", b"\x00\x01\x02garbage", 1, 1, "file is binary, not a spec (contains NUL bytes)"),
    ("binary-garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 3, 1, "file is binary, not a spec"),
    ("nul-in-text", "dim d = 4\ndim e = 5\x00\n", 2, 10, "file is binary, not a spec"),
    ("invalid-utf8", b"dim d = 4\ninput u[d\xff]\n", 2, 10, "file is not UTF-8 text (invalid byte 0xff)"),
    ("latin1-text", b"# caf\xe9\ndim d = 4\n", 1, 6, "file is not UTF-8 text (invalid byte 0xe9)"),
    # -- unknown names -----------------------------------------------------------------------------------------
    ("unknown-name", spec(C="C[i, k] = q[i]"), 6, 11, "unknown name 'q'"),
    ("unknown-bare-name", spec(C="C[i, k] = delta(i, k) * q"), 6, 25, "unknown name 'q'"),
    ("unknown-name-in-subscript", spec(C="C[i, k] = u[m]"), 6, 13, "unknown name 'm'"),
    ("unknown-dim-in-axis", spec("param p[q]"), 4, 9, "unknown dim 'q' in axis 0 of 'p'"),
    ("unknown-dim-in-dim", "dim K = d // 2\n" + spec(), 1, 9, "unknown dim 'd' in dim 'K'"),
    ("unknown-function", spec(C="C[i, k] = foo(u[i])"), 6, 11, "unknown function 'foo'"),
    ("unknown-function-in-init", spec("param p[c: d] = bar(c)"), 4, 17, "unknown function 'bar'"),
    ("unknown-initialiser", spec("param W[d, d] ~ gaussian(0, 1)"), 4, 15, "unknown initialiser 'gaussian'"),
    # -- running quantities (cumsum, scan, prev): only as the whole right-hand side of a let ---------------------
    ("cumsum-in-sum-expression", spec("let z[c: d] = 1 + cumsum(u[c])"), 4, 19, f"'cumsum' {WHOLE_RHS}"),
    ("cumsum-negated", spec("let z[c: d] = -cumsum(u[c])"), 4, 16, f"'cumsum' {WHOLE_RHS}"),
    ("prev-in-call", spec("let z[c: d] = exp(prev(u[c]))"), 4, 19, f"'prev' {WHOLE_RHS}"),
    ("cumsum-in-sum", spec("let z = sum(m, cumsum(u[m]))"), 4, 16, f"'cumsum' {WHOLE_RHS}"),
    ("cumsum-inside-prev", spec("let z[c: d] = prev(cumsum(u[c]))"), 4, 20, f"'cumsum' {WHOLE_RHS}"),
    ("scan-inside-scan", spec("let z[c: d] = scan(sigmoid(u[c]), scan(0.5, u[c]))"), 4, 35, f"'scan' {WHOLE_RHS}"),
    ("cumsum-in-matrix-entry", spec(A="A[i, k] = delta(i, k) * cumsum(u[i])"), 4, 25, f"'cumsum' {WHOLE_RHS}"),
    ("prev-as-matrix-entry", spec(A="A[i, k] = prev(u[i])"), 4, 11, f"'prev' {WHOLE_RHS}"),
    ("scan-in-matrix-entry", spec(B="B[i, k] = delta(i, k) * scan(0.5, u[i])"), 5, 25, f"'scan' {WHOLE_RHS}"),
    ("cumsum-in-initialiser", spec("param p[c: d] = cumsum(c)"), 4, 17, f"'cumsum' {WHOLE_RHS}"),
    ("prev-in-distribution", spec("param p ~ normal(prev(0), 1)"), 4, 18, f"'prev' {WHOLE_RHS}"),
    ("cumsum-two-arguments", spec("let z[c: d] = cumsum(u[c], 1)"), 4, 15, "cumsum takes 1 argument, got 2"),
    ("cumsum-no-argument", spec("let z[c: d] = cumsum()"), 4, 15, "cumsum takes 1 argument, got 0"),
    ("scan-one-argument", spec("let z[c: d] = scan(u[c])"), 4, 15, "scan takes 2 arguments, got 1"),
    ("scan-three-arguments", spec("let z[c: d] = scan(1, 2, u[c])"), 4, 15, "scan takes 2 arguments, got 3"),
    ("prev-three-arguments", spec("let z[c: d] = prev(u[c], 0, 1)"), 4, 15,
     "prev takes 1 or 2 arguments (the value and its start), got 3"),
    ("prev-time-varying-start", spec("let z[c: d] = prev(u[c], u[c])"), 4, 26,
     "the start value of prev must be fixed over time (numbers, dims and params only); it reads the input 'u'"),
    ("cumsum-unknown-name-in-argument", spec("let z[c: d] = cumsum(q[c])"), 4, 22, "unknown name 'q'"),
    ("cumsum-as-let-name", spec("let cumsum = 1"), 4, 1, "'cumsum' is a built-in function and cannot be redeclared"),
    ("scan-as-param-name", spec("param scan[d]"), 4, 1, "'scan' is a built-in function and cannot be redeclared"),
    ("prev-as-let-name", spec("let prev[c: d] = u[c]"), 4, 1, "'prev' is a built-in function and cannot be redeclared"),
    ("window-in-expression", spec("let xs[c: d, k: 3] = 2 * window(u[c])"), 4, 26, f"'window' {WHOLE_RHS}"),
    ("window-two-arguments", spec("let xs[c: d, k: 3] = window(u[c], 1)"), 4, 22, "window takes 1 argument, got 2"),
    ("window-scalar-let", spec("let xs = window(u[0])"), 4, 10, "window(x) needs a let whose last axis is the window"),
    ("window-uses-window-axis", spec("let xs[c: d, k: 4] = window(u[k])"), 4, 22, "must not use the window axis 'k'"),
    ("window-as-param-name", spec("param window"), 4, 1, "'window' is a built-in function and cannot be redeclared"),
    # -- declarations ------------------------------------------------------------------------------------------
    ("dim-twice", spec("dim d = 5"), 4, 1, "dim 'd' is declared twice"),
    ("name-twice", spec("param u[d]"), 4, 1, "'u' is already declared (line 2)"),
    ("param-named-like-dim", spec("param d"), 4, 1, "'d' is already declared (line 1)"),
    ("builtin-redeclared", spec("param exp"), 4, 1, "'exp' is a built-in function and cannot be redeclared"),
    ("sum-redeclared", spec("let sum = 1"), 4, 1, "'sum' is a built-in function"),
    (
        "param-named-like-implicit-output",
        spec("param y"),
        4,
        1,
        "'y' is the name of the output, which the spec leaves implicit (no 'output' statement)",
    ),
    (
        "input-named-like-implicit-output",
        "dim d = 4\ninput y[d]\nstate h[d]\n" + "\n".join(MATS),
        2,
        1,
        "the spec has no 'output' statement, so its output is named 'y'; but 'y' is the input",
    ),
    ("two-inputs", spec("input v[d]"), 4, 1, "only one input may be declared (first at line 2)"),
    ("two-states", spec("state g[d]"), 4, 1, "only one state may be declared (first at line 3)"),
    ("two-models", "model S\nmodel T\n" + spec(), 2, 1, "only one 'model' statement is allowed"),
    ("lowercase-model", "model s6\n" + spec(), 1, 1, "model name 's6' should start with a capital letter"),
    ("two-readouts", spec("readout pre", "readout post"), 5, 1, "only one 'readout' statement is allowed"),
    ("axis-name-twice", spec("param W[c: d, c: d]"), 4, 15, "axis name 'c' is used twice in 'W'"),
    ("axis-name-is-dim", spec("param W[d: d]"), 4, 9, "axis name 'd' of 'W' is also a dim"),
    ("let-anonymous-axis", spec("let z[d] = 1"), 4, 7, "axes of let 'z' must be named"),
    ("missing-input", "dim d = 4\nstate h[d]\n" + "\n".join(MATS), 1, 1, "missing 'input' declaration"),
    ("missing-state", "dim d = 4\ninput u[d]\n" + "\n".join(MATS), 1, 1, "missing 'state' declaration"),
    # -- dims --------------------------------------------------------------------------------------------------
    (
        "non-integer-dim",
        "dim d = 4.5\n" + "\n".join(PRE[1:] + MATS),
        1,
        9,
        "dim 'd' must be a positive integer, got 4.5",
    ),
    ("fraction-dim", "dim d = 9 / 2\n" + "\n".join(PRE[1:] + MATS), 1, 9, "must be a positive integer, got 4.5"),
    ("zero-dim", spec("dim z = 0"), 4, 9, "dim 'z' must be a positive integer, got 0"),
    ("negative-dim", spec("dim z = 2 - 3"), 4, 9, "dim 'z' must be a positive integer, got -1"),
    ("inexact-split", spec("dim H = 3", "dim K = d // H"), 5, 9, "dim 'K': 4 // 3 is not exact (4 is not a multiple"),
    ("dim-division-by-zero", spec("dim z = d / 0"), 4, 9, "division by zero in dim 'z'"),
    ("dim-overflow", spec("dim z = 10 ^ 400"), 4, 9, "dim 'z' is too large (overflows)"),
    ("dim-huge-literal", spec("dim z = 1e400"), 4, 9, "number '1e400' is too large for float64"),
    ("dim-complex", spec("dim z = (0 - 8) ^ 0.5"), 4, 9, "dim 'z' is not a real number"),
    ("dim-log-zero", spec("dim z = log(0)"), 4, 9, "log(0) is undefined in dim 'z'"),
    ("dim-self-reference", spec("dim n = 2 * n"), 4, 13, "dim 'n' is defined in terms of itself"),
    ("dim-from-function", spec("dim z = tanh(d)"), 4, 9, "dim 'z' must be built from numbers and dims only"),
    ("axis-not-integer", spec("param p[d / 3]"), 4, 9, "axis 0 of 'p' must be a positive integer, got 1.33333"),
    ("sum-extent-not-integer", spec(A="A[i, k] = sum(m: 1.5, 1)"), 4, 18, "range of sum index 'm' must be a positive"),
    # -- arity and shape ---------------------------------------------------------------------------------------
    ("function-arity", spec(C="C[i, k] = exp(u[i], 1)"), 6, 11, "exp takes 1 argument, got 2"),
    ("delta-arity", spec(C="C[i, k] = delta(i)"), 6, 11, "delta takes 2 arguments, got 1"),
    ("initialiser-arity", spec("param p ~ normal(1)"), 4, 9, "normal takes 2 arguments, got 1"),
    ("zeros-arity", spec("param p ~ zeros(1)"), 4, 9, "zeros takes 0 arguments, got 1"),
    ("too-many-subscripts", spec(B="B[i, k] = u[i, k]"), 5, 11, "input 'u' has 1 axis but is indexed with 2"),
    (
        "too-few-subscripts",
        spec("param W[d, d]", B="B[i, k] = W[i]"),
        6,
        11,
        "param 'W' has 2 axes but is indexed with 1",
    ),
    ("bare-tensor", spec("param W[d, d]", B="B[i, k] = W"), 6, 11, "param 'W' has 2 axes; index it as W[i0, i1]"),
    ("bare-named-tensor", spec("let z[c: d] = u[c]", B="B[i, k] = z"), 6, 11, "let 'z' has 1 axis; index it as z[c]"),
    ("subscripted-index", spec(B="B[i, k] = i[0]"), 5, 11, "'i' is an index or dim and cannot be subscripted"),
    ("subscripted-dim", spec(B="B[i, k] = d[0]"), 5, 11, "'d' is an index or dim and cannot be subscripted"),
    (
        "matrix-rows-too-few",
        "dim d = 4\ndim n = 2\ninput u[d]\nstate h[c: d, j: n]\nA[c, (c2, j2)] = 1\nB[(c, j), k] = 1\nC[o, (c, j)] = 1\n",
        5,
        3,
        "the rows of A index the state 'h', which has 2 axes, but 1 index name is given",
    ),
    (
        "matrix-cols-too-many",
        spec(B="B[i, (k, l)] = 1"),
        5,
        7,
        "the columns of B index the input 'u', which has 1 axis, but 2 index names are given",
    ),
    (
        "matrix-rows-too-many",
        spec("D[(o, p), k] = 1"),
        4,
        4,
        "the rows of D index the output 'y', which has 1 axis, but 2 index names are given",
    ),
    ("matrix-index-twice", spec(A="A[i, i] = 1"), 4, 6, "index name 'i' is used twice in A[...]"),
    ("matrix-index-shadows", spec(A="A[d, k] = 1"), 4, 3, "index name 'd' shadows the dim 'd' (line "),
    # -- index ranges ------------------------------------------------------------------------------------------
    (
        "subscript-past-end",
        spec(B="B[i, k] = u[i + 1]"),
        5,
        13,
        "subscript 0 of 'u' reaches 4 (at i=3), outside its range 0..3",
    ),
    ("subscript-negative", spec(B="B[i, k] = u[i - 1]"), 5, 13, "subscript 0 of 'u' reaches -1 (at i=0)"),
    ("subscript-constant", spec(B="B[i, k] = u[d]"), 5, 13, "subscript 0 of 'u' reaches 4, outside its range 0..3"),
    ("subscript-division-by-zero", spec(B="B[i, k] = u[i // 0]"), 5, 13, "subscript 0 of 'u' divides by zero (at i=0)"),
    (
        "index-range-mismatch",
        spec("dim n = 2", "param P[n]", A="A[i, k] = P[i]"),
        6,
        13,
        "index 'i' ranges over 4 values but axis 0 of 'P' has extent 2",
    ),
    (
        "sum-range-mismatch",
        spec(A="A[i, k] = sum(m: 3, u[m])"),
        4,
        23,
        "index 'm' ranges over 3 values but axis 0 of 'u' has extent 4",
    ),
    (
        "sum-range-conflict",
        spec("dim n = 2", "param P[n]", A="A[i, k] = sum(m, u[m] * P[m])"),
        6,
        25,
        "sum index 'm' subscripts axes of different extents (4 and 2)",
    ),
    ("sum-range-not-inferable", spec(A="A[i, k] = sum(m, 1)"), 4, 11, "cannot infer the range of sum index 'm'"),
    ("sum-shadows", spec(A="A[i, k] = sum(i, u[i])"), 4, 11, "sum index 'i' shadows an index of the enclosing expression"),
    ("subscript-float", spec(B="B[i, k] = u[0.5]"), 5, 13, "subscript must be an integer, got 0.5"),
    ("subscript-true-division", spec(B="B[i, k] = u[i / 2]"), 5, 13, "operator '/' is not allowed in a subscript"),
    # floor and mod are index arithmetic: on a real value the printer had no code for them (an internal error)
    ("floordiv-real", spec(B="B[i, k] = delta(i, k) * (u[i] // 2)"), 5, 26, "operator '//' takes integer operands"),
    ("mod-real", spec(B="B[i, k] = delta(i, k) * (i % 1.5)"), 5, 26, "operator '%' takes integer operands"),
    (
        "subscript-tensor",
        spec("param p", B="B[i, k] = u[p]"),
        6,
        13,
        "subscript uses 'p', which is not an index variable",
    ),
    ("subscript-call", spec(B="B[i, k] = u[exp(i)]"), 5, 13, "subscripts may only combine index variables, dims and"),
    ("delta-of-tensor", spec(B="B[i, k] = delta(i, u[k])"), 5, 20, "subscripts may only combine index variables"),
    # -- what each part may read -------------------------------------------------------------------------------
    ("init-reads-input", spec("param p[c: d] = u[c]"), 4, 17, "the initialiser of 'p' cannot read input 'u'"),
    ("init-reads-param", spec("param q", "param p = q"), 5, 11, "the initialiser of 'p' cannot read param 'q'"),
    ("dist-reads-index", spec("param p[c: d] ~ normal(c, 1)"), 4, 24, "unknown name 'c'"),
    # -- lets --------------------------------------------------------------------------------------------------
    ("let-cycle", spec("let a[c: d] = b[c]", "let b[c: d] = a[c] + u[c]"), 4, 1, "cycle among lets: a -> b -> a"),
    ("let-self-cycle", spec("let a[c: d] = a[c] * 0.5 + u[c]"), 4, 1, "cycle among lets: a -> a"),
    ("let-cycle-of-three", spec("let a = b", "let b = c2", "let c2 = a"), 4, 1, "cycle among lets: a -> b -> c2 -> a"),
    ("running-let-self-cycle", spec("let z[c: d] = cumsum(z[c])"), 4, 1, "cycle among lets: z -> z"),
    (
        "running-let-cycle",
        spec("let z[c: d] = scan(0.5, w[c])", "let w[c: d] = u[c] * z[c]"),
        4,
        1,
        "cycle among lets: z -> w -> z",
    ),
    # -- matrices ----------------------------------------------------------------------------------------------
    ("matrix-twice", spec("A[i, k] = 0"), 5, 1, "matrix A is defined twice (first at line 4)"),
    ("missing-A", "\n".join(PRE + MATS[1:]), 1, 1, "missing matrix A"),
    ("missing-B", "\n".join(PRE + MATS[:1] + MATS[2:]), 1, 1, "missing matrix B"),
    ("missing-C", "\n".join(PRE + MATS[:2]), 1, 1, "missing matrix C"),
]


@pytest.mark.parametrize("text, line, column, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_position_and_message(text, line, column, message):
    err = only(text)
    assert (err.span.line, err.span.column) == (line, column), err.message
    assert message in err.message
    assert not isinstance(err, NotADSFError)


@pytest.mark.parametrize("text, line, column, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_renders_location_source_line_and_caret(text, line, column, message):
    errs = run(text)
    err = errs.errors[0]
    out = errs.render().splitlines()
    assert out[0].startswith(f"x.dsf:{line}:{column}: error: ")
    assert message in out[0]
    source = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    source_lines = source.split("\n")
    shown = source_lines[line - 1] if line <= len(source_lines) else ""
    assert out[1] == "    " + "".join(ch if ch.isprintable() else "\ufffd" for ch in shown.rstrip("\r"))
    assert out[2].startswith("    " + " " * (column - 1) + "^")
    assert set(out[2].strip()) <= {"^", "~"}
    if err.hint:
        assert out[3] == f"  hint: {err.hint}"


# ----------------------------------------------------------------------------------------------------------------
# Reading the state or the output: not a DSF


STATE_READS = [
    ("A", spec(A="A[i, k] = delta(i, k) * sigmoid(u[i] + h[i])"), 4, 40, "matrix A reads the state 'h'"),
    ("B", spec(B="B[i, k] = delta(i, k) * h[i]"), 5, 25, "matrix B reads the state 'h'"),
    ("C", spec(C="C[i, k] = delta(i, k) * tanh(h[i])"), 6, 30, "matrix C reads the state 'h'"),
    ("D", spec("D[i, k] = delta(i, k) * h[k]"), 4, 25, "matrix D reads the state 'h'"),
    (
        "let",
        spec("let g[c: d] = sigmoid(u[c] + h[c])", A="A[i, k] = delta(i, k) * g[i]"),
        4,
        30,
        "let 'g' reads the state 'h'",
    ),
    ("bare", spec(A="A[i, k] = h"), 4, 11, "matrix A reads the state 'h'"),
    ("init", spec("param p[c: d] = h[c]"), 4, 17, "the initialiser of 'p' reads the state 'h'"),
    ("output-in-D", spec("output y[d]", "D[i, k] = y[i]"), 5, 11, "matrix D reads the output 'y'"),
    ("output-in-let", spec("let e[c: d] = y[c]"), 4, 15, "let 'e' reads the output 'y'"),
    ("cumsum-of-state", spec("let z[c: d] = cumsum(h[c])"), 4, 22, "let 'z' reads the state 'h'"),
    ("scan-decay-of-state", spec("let z[c: d] = scan(h[c], u[c])"), 4, 20, "let 'z' reads the state 'h'"),
    ("prev-of-output", spec("output y[d]", "let z[c: d] = prev(y[c])"), 5, 20, "let 'z' reads the output 'y'"),
]


@pytest.mark.parametrize("text, line, column, message", [c[1:] for c in STATE_READS], ids=[c[0] for c in STATE_READS])
def test_reading_state_or_output_is_not_a_dsf(text, line, column, message):
    err = only(text)
    assert isinstance(err, NotADSFError)
    assert (err.span.line, err.span.column) == (line, column)
    assert message in err.message


LSTM = """\
# A classic LSTM-style gate: the forget gate reads the previous state, so A depends on h.
model GatedRNN
dim d = 4
input u[d]
state h[d]
param W_f[d, d]
param U_f[d, d]
let f[c: d] = sigmoid(sum(k, W_f[c, k] * u[k]) + sum(k, U_f[c, k] * h[k]))
A[i, k] = delta(i, k) * f[i]
B[i, k] = delta(i, k) * (1 - f[i])
C[i, k] = delta(i, k)
"""


def test_lstm_style_gate_is_not_a_dsf():
    errs = run(LSTM)
    assert len(errs.errors) == 1
    (err,) = errs.errors
    assert isinstance(err, NotADSFError)
    assert (err.span.line, err.span.column) == (8, 69)
    assert "state 'h'" in err.message and "not a DSF" in err.message and "LSTM" in err.message
    assert "x.dsf:8:69: error: let 'f' reads the state 'h'" in errs.render()


def test_lstm_style_gate_written_into_A():
    text = spec("param U[d, d]", A="A[i, k] = delta(i, k) * sigmoid(sum(m, U[i, m] * h[m]))")
    err = only(text)
    assert isinstance(err, NotADSFError)
    assert (err.span.line, err.span.column) == (5, 50)
    assert "matrix A reads the state 'h'" in err.message


def test_not_a_dsf_is_a_spec_error():
    assert issubclass(NotADSFError, SpecError)


# ----------------------------------------------------------------------------------------------------------------
# Several errors in one run


def test_independent_syntax_errors_are_all_reported():
    text = "dim d = 4\ninput u[d\nstate h[d]\nA[i k] = 1\nB[i, k] = 1 +\nC[i, k] = delta(i, k) $\n"
    errs = run(text)
    got = [(e.span.line, e.span.column) for e in errs.errors]
    assert got == [(2, 10), (4, 5), (5, 14), (6, 23)]


def test_independent_check_errors_are_all_reported_in_source_order():
    text = "\n".join(
        [
            "dim d = 4",  # 1
            "dim K = d // 3",  # 2: inexact
            "input u[d]",  # 3
            "state h[d]",  # 4
            "param W[d, d] ~ foo(1)",  # 5: unknown initialiser
            "let a[c: d] = b[c]",  # 6: cycle
            "let b[c: d] = a[c] + h[c]",  # 7: reads the state
            "A[i, k] = delta(i, k) * u[i + 1]",  # 8: out of range
            "B[i, k] = q[i]",  # 9: unknown name
            "C[i, k] = exp(u[i], 1)",  # 10: arity
            "A[i, k] = 0",  # 11: defined twice
        ]
    )
    errs = run(text)
    got = [(e.span.line, e.span.column, type(e).__name__) for e in errs.errors]
    assert got == [
        (2, 9, "SpecError"),
        (5, 15, "SpecError"),
        (6, 1, "SpecError"),
        (7, 22, "NotADSFError"),
        (8, 27, "SpecError"),
        (9, 11, "SpecError"),
        (10, 11, "SpecError"),
        (11, 1, "SpecError"),
    ]
    rendered = errs.render()
    assert rendered.count(": error: ") == 8
    assert rendered.count("^") == 8


def test_errors_in_one_expression_are_all_reported():
    err_lines = run(spec(C="C[i, k] = foo(u[i]) + exp(u[i], 1) + q[i]")).errors
    assert [(e.span.line, e.span.column) for e in err_lines] == [(6, 11), (6, 23), (6, 38)]


def test_running_quantity_errors_are_all_reported():
    text = spec(
        "let z[c: d] = 1 + cumsum(u[c])",  # 4: nested
        "let n[c: d] = scan(u[c])",  # 5: arity
        "let w[c: d] = prev(u[c], 1, 2)",  # 6: arity (prev takes a start value, not a third argument)
        "let s[c: d] = cumsum(u[c])",  # 7: fine
        A="A[i, k] = delta(i, k) * prev(s[i])",  # 8: in a matrix entry
    )
    errs = run(text).errors
    assert [(e.span.line, e.span.column, e.message) for e in errs] == [
        (4, 19, f"'cumsum' {WHOLE_RHS}"),
        (5, 15, "scan takes 2 arguments, got 1"),
        (6, 15, "prev takes 1 or 2 arguments (the value and its start), got 3"),
        (8, 25, f"'prev' {WHOLE_RHS}"),
    ]


def test_misplaced_running_quantity_hint_names_the_op():
    err = only(spec(C="C[i, k] = delta(i, k) / scan(0.9, u[i])"))
    assert err.hint == "write it on its own line: let z[...] = scan(...), then use z"


def test_missing_matrices_are_all_reported():
    errs = run("\n".join(PRE)).errors
    assert [e.message for e in errs] == ["missing matrix A", "missing matrix B", "missing matrix C"]


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def test_render_format():
    errs = run(spec(C="C[i, k] = foo(u[i])"))
    assert errs.render() == (
        "x.dsf:6:11: error: unknown function 'foo'\n"
        "    C[i, k] = foo(u[i])\n"
        "              ^~~~~~~~~\n"
        "  hint: known functions: abs, cos, cumsum, delta, elu, exp, exp2, gelu, log, log2, logsigmoid, max, min, pow, "
        "prev, relu, scan, sigmoid, silu, sin, softplus, sqrt, sum, tanh, taylor, window"
    )


def test_render_of_an_empty_file_still_has_a_caret():
    assert run("").render().splitlines()[:3] == ["x.dsf:1:1: error: empty spec: no statements", "    ", "    ^"]


def test_render_replaces_tabs_and_control_characters():
    err = SpecError("boom", Span(1, 3, 1, 4))
    out = render_error(err, "p.dsf", "\tx\x1by\n")
    assert out.splitlines() == ["p.dsf:1:3: error: boom", "     x\ufffdy", "      ^"]


def test_render_uses_the_path_given():
    with pytest.raises(SpecErrors) as info:
        parse_spec(b"\x00", "specs/bad.dsf")
    assert info.value.render().startswith("specs/bad.dsf:1:1: error: file is binary")


def test_unknown_name_suggests_a_close_name():
    err = only(spec("param W_B[d, d]", B="B[i, k] = W_b[i, k]"))
    assert err.message == "unknown name 'W_b'"
    assert err.hint == "did you mean 'W_B'?"


def test_no_suggestion_between_unrelated_one_letter_names():
    err = only(spec(C="C[i, k] = q[i]"))
    assert err.hint is None


def test_parse_file_reports_a_missing_file(tmp_path):
    with pytest.raises(SpecErrors) as info:
        parse_file(tmp_path / "nope.dsf")
    (err,) = info.value.errors
    assert err.message.startswith("cannot read spec")
    assert info.value.path.endswith("nope.dsf")


def test_parse_file_reads_bytes(tmp_path):
    p = tmp_path / "bin.dsf"
    p.write_bytes(b"dim d = 4\n\x00\x00")
    with pytest.raises(SpecErrors) as info:
        parse_file(p)
    (err,) = info.value.errors
    assert (err.span.line, err.span.column) == (2, 1)
    assert "binary" in err.message
    assert info.value.render().startswith(f"{p}:2:1: error: file is binary")


def test_a_true_division_in_a_subscript_is_one_error_with_the_floor_division_written_out():
    """``Bg[h / (H / G), i]`` (Mamba-2's group index written with '/') gave one bare error per '/'; now one error
    at the outer '/', its hint the subscript with every '/' made '//'."""
    text = spec(B="B[i, k] = u[(i / 2) / 1] * delta(i, k)")
    with pytest.raises(SpecErrors) as exc:
        check_spec(parse_spec(text))
    errors = [e for e in exc.value.errors if "'/'" in str(e)]
    assert len(errors) == 1, exc.value.errors
    assert errors[0].hint.endswith("as in (i // 2) // 1"), errors[0].hint
