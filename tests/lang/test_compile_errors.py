"""Mistakes that only show once a spec is evaluated (constants, initialisers, sizes, nesting) are positioned errors
too: ``dsfc compile`` prints ``path:line:col: error: ...`` with a caret, exits with 2 and writes no file; never a
Python traceback from SymPy, the printer, Lark or torch.

Each case is a small spec with one mistake, run through the CLI as a user would.
"""

from __future__ import annotations

import pytest

from dsfc.cli import main
from dsfc.lang.errors import SpecErrors
from dsfc.pipeline import compile_text

PRE = ["model M", "dim d = 4", "input u[d]", "state h[d]"]  # lines 1-4
MATS = {"A": "A[i, k] = delta(i, k) * 0.5", "B": "B[i, k] = delta(i, k)", "C": "C[i, k] = delta(i, k)"}


def spec(*middle: str, **mats: str) -> str:
    """PRE, then ``middle`` (from line 5 on), then A, B, C (each replaceable)."""
    return "\n".join(PRE + list(middle) + [mats.get(k, v) for k, v in MATS.items()]) + "\n"


NOT_FINITE = "this expression is not a finite real number"

# (id, text, line, column, part of the message)
CASES = [
    # constants that are not finite real numbers, at the innermost sub-expression that makes them
    ("division-by-zero", spec(A="A[i, k] = delta(i, k) * (1 + u[i] / (2 - 2))"), 5, 30, "it is infinite"),
    ("zero-over-zero", spec(A="A[i, k] = delta(i, k) * (0 / 0 + u[i])"), 5, 26, "it is undefined"),
    ("modulo-zero", spec(C="C[i, k] = delta(i, k) * (3 % 0)"), 7, 26, "divides by zero"),
    ("floor-division-zero", spec(C="C[i, k] = delta(i, k) * (3 // 0)"), 7, 26, "it is infinite"),
    ("log-zero", spec(A="A[i, k] = delta(i, k) * log(0)"), 5, 25, "it is infinite"),
    ("log-negative", spec(A="A[i, k] = delta(i, k) * log(-1)"), 5, 25, "it is not real"),
    ("sqrt-negative", spec("let z[c: d] = u[c] + sqrt(-1)", A="A[i, k] = delta(i, k) * z[i]"), 5, 22, "not real"),
    ("fractional-power-of-negative", spec(C="C[i, k] = delta(i, k) * (-1) ^ 0.5"), 7, 25, "not real"),
    ("zero-to-negative-power", spec(C="C[i, k] = delta(i, k) * 0 ^ -1"), 7, 25, "it is infinite"),
    ("huge-power", spec(C="C[i, k] = delta(i, k) * 10 ^ 100000"), 7, 25, "overflows float64"),
    ("infinite-literal", spec(C="C[i, k] = delta(i, k) * 1e999999"), 7, 25, "number '1e999999' is too large for float64"),
    ("number-with-5000-digits", spec(C="C[i, k] = delta(i, k) * " + "1" * 5000), 7, 25, "5000 digits) is too large"),
    # initialisers: distribution arguments and deterministic values, at the default dims
    ("uniform-reversed", spec("param w[d] ~ uniform(1, 0)"), 5, 12, "uniform(lo, hi) for 'w' needs lo <= hi"),
    ("normal-negative-std", spec("param w[d] ~ normal(0, -1)"), 5, 12, "the std of normal(mean, std) for 'w' must be >= 0"),
    ("normal-infinite-std", spec("param w[d] ~ normal(0, exp(1000))"), 5, 12, "must be finite real numbers"),
    ("normal-division-by-zero", spec("param w[d] ~ normal(0, 1 / 0)"), 5, 24, NOT_FINITE),
    ("log-uniform-negative", spec("param w[d] ~ log_uniform(-1, 1)"), 5, 12, "needs 0 < lo"),
    ("log-uniform-reversed", spec("param w[d] ~ log_uniform(1, 0.1)"), 5, 12, "needs lo <= hi"),
    ("dt-bias-zero", spec("param w[d] ~ dt_bias(0, 0.1)"), 5, 12, "dt_bias(lo, hi) for 'w' needs 0 < lo"),
    ("dt-bias-reversed", spec("param w[d] ~ dt_bias(0.1, 0.001)"), 5, 12, "needs lo <= hi"),
    ("init-log-zero-at-an-index", spec("param w[c: d] = log(c)"), 5, 15, "initial value of 'w' is not a finite real number at c=0"),
    ("init-division-at-an-index", spec("param w[c: d] = 1 / (c - 2)"), 5, 15, "at c=2: it is infinite"),
    ("init-log-negative-at-an-index", spec("param w[c: d] = log(c - 1)"), 5, 15, "at c=0: it is not real"),
    ("init-overflow", spec("param w[c: d] = exp(10000)"), 5, 15, "overflows float64"),
    # initial values are screened in float64 and only suspicious elements evaluated exactly: each way a float can
    # fail (an exception, inf, a complex power) must still reach the exact check, through the spec's own functions
    ("init-sqrt-negative-late-index", spec("param w[c: d] = sqrt(2 - c)"), 5, 15, "at c=3: it is not real"),
    ("init-log-relu-at-an-index", spec("param w[c: d] = log(relu(c - 1))"), 5, 15, "at c=0: it is infinite"),
    ("init-overflow-at-an-index", spec("param w[c: d] = exp(400 * c)"), 5, 15, "at c=2: it overflows float64"),
    ("init-fractional-power-at-an-index", spec("param w[c: d] = pow(c - 1, 0.5)"), 5, 15, "at c=0: it is not real"),
    # sizes no tensor can have
    ("derived-dim-too-large", spec("dim e = 10 ^ 100", "param w[e]"), 5, 9, "dim 'e' is too large: 1e+100"),
    ("tensor-too-large", spec("param w[10^7, 10^7, 10^7]"), 5, 9, "'w' would have 1e+21 elements"),
    # nesting deeper than the analysis can follow
    ("deeply-nested-calls", spec(C="C[i, k] = " + "tanh(" * 200 + "u[i]" + ")" * 200), 7, 11, "nested too deeply"),
    ("very-long-sum", spec(C="C[i, k] = " + " + ".join(["u[i]"] * 5000)), 7, 11, "nested too deeply"),
    ("many-unary-minus", spec(C="C[i, k] = " + "-" * 5000 + "u[i]"), 7, 11, "nested too deeply"),
    # a fifth new-user hunt: mistakes a user plausibly makes, each a positioned error through the CLI
    ("function-typo", spec(A="A[i, k] = delta(i, k) * sigmiod(u[i])"), 5, 25, "unknown function 'sigmiod'"),
    ("function-arity", spec(A="A[i, k] = delta(i, k) * sigmoid(u[i], 2)"), 5, 25, "sigmoid takes 1 argument, got 2"),
    ("index-never-bound", spec(A="A[i, k] = delta(i, k) * sigmoid(u[j])"), 5, 35, "unknown name 'j'"),
    ("A-groups-vs-state", spec(A="A[(i, j), k] = delta(i, k)"), 5, 4, "the rows of A index the state 'h', which has "
     "1 axis, but 2 index names are given"),
    ("D-one-index", spec("D[i] = u[i]"), 5, 4, "unexpected ']'; expected ','"),
    ("two-readouts", spec("readout pre", "readout post"), 6, 1, "only one 'readout' statement is allowed"),
    ("readout-word", spec("readout before"), 5, 9, "unknown readout 'before'"),
    ("dim-twice", spec("dim d = 5"), 5, 1, "dim 'd' is declared twice"),
    ("greek-function", spec(A="A[i, k] = delta(i, k) * σ(u[i])"), 5, 25, "unexpected character 'σ'"),
    ("fractional-dim", spec().replace("dim d = 4", "dim d = 4.5"), 2, 9, "dim 'd' must be a positive integer"),
    ("inexact-split", spec("dim e = d // 3"), 5, 9, "dim 'e': 4 // 3 is not exact"),
    ("two-inputs", spec("input x[d]"), 5, 1, "only one input may be declared (first at line 3)"),
    ("running-max-through-scan-let", spec("let m[c: d] = scan(1, max(m[c], u[c]))"), 5, 1, "cycle among lets: m -> m"),
    ("C-zero", spec(C="C[i, k] = delta(i, k) * 0"), 7, 1, "matrix C is zero"),
    ("only-comments", "# a spec to write later\n\n# TODO\n", 1, 1, "empty spec: no statements"),
]


@pytest.mark.parametrize("text, line, column, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_position_and_message(text, line, column, message):
    with pytest.raises(SpecErrors) as info:
        compile_text(text, "x.dsf")
    (err,) = info.value.errors
    assert message in err.message
    assert (err.span.line, err.span.column) == (line, column), err.message


@pytest.mark.parametrize("text, line, column, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_exits_2_with_a_caret_and_writes_nothing(tmp_path, capsys, text, line, column, message):
    path = tmp_path / "bad.dsf"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["compile", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}:{column}: error: " in err and message in err
    assert "Traceback" not in err
    assert "\n    " + " " * (column - 1) + "^" in err
    assert not out.exists() or not any(out.iterdir())


def test_moderately_nested_expressions_still_compile():
    text = spec(C="C[i, k] = delta(i, k) * (" + " + ".join(["u[k]"] * 50) + ")",
                A="A[i, k] = delta(i, k) * sigmoid(" + "tanh(" * 50 + "u[i]" + ")" * 50 + ")")
    compile_text(text, "x.dsf")


def test_an_integral_real_beyond_2_53_stays_a_float():
    # 1e300 is a float in the spec; it used to become a 301-digit Python int in the generated code
    r = compile_text(spec(C="C[i, k] = delta(i, k) * 1e300 * 1e-300"), "x.dsf")
    assert "1" + "0" * 300 not in r.source


def test_non_ascii_digits_are_not_numbers():
    with pytest.raises(SpecErrors) as info:
        compile_text(spec().replace("dim d = 4", "dim d = \uff14"), "x.dsf")
    assert "unexpected character" in info.value.errors[0].message


def test_deeply_nested_functions_compile_in_seconds():
    # sp.simplify of A's entry grew exponentially with the nesting (tanh 16 deep took minutes); now bounded
    import time

    t0 = time.perf_counter()
    compile_text(spec(A="A[i, k] = delta(i, k) * sigmoid(" + "tanh(" * 40 + "u[i]" + ")" * 40 + ")"), "x.dsf")
    assert time.perf_counter() - t0 < 30
