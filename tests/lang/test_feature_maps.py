"""The feature-map construct: ``let qf[h: H, f: taylor(K, p)] = taylor(a, q[h, a])`` and its feature range.

Misuse is a positioned error (line, column, message) from the checker or, for what only the structure shows (a
spec on an infinite range that cannot be kernelised), from the analysis; the CLI prints it with exit code 2 and
writes nothing. Sizes are checked against the formula sum_(r<=p) K^r written out by hand.
"""

from __future__ import annotations

import pytest
import sympy as sp

from dsfc.cli import main
from dsfc.lang.errors import SpecErrors
from dsfc.lang.parse import parse_spec
from dsfc.pipeline import analyse

HEAD = """dim d = 4
dim K = 3
dim H = 2
input u[d]
state S[h: H, f: taylor(K, 2), b: d]
param W[H, K, d] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W[h, a, m] * u[m])
"""  # lines 1-7; the case's lines start at 8
TAIL = """A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2)
B[(h, f, b), m] = kf[h, f] * delta(b, m)
C[o, (h, f, b)] = delta(o, b) * kf[h, f]
"""
GOOD = "let kf[h: H, f: taylor(K, 2)] = taylor(a, q[h, a])\n"


def first_error(text: str):
    with pytest.raises(SpecErrors) as info:
        analyse(parse_spec(text, "x.dsf"))
    e = info.value.errors[0]
    return e.span.line, e.span.column, e.message


def test_the_base_spec_is_valid_and_sizes_follow_the_formula():
    _, sym, _, report = analyse(parse_spec(HEAD + GOOD + TAIL, "x.dsf"))
    assert report.state_size == "H*d*taylor(K, 2)"
    assert report.state_size_default == 2 * 4 * (1 + 3 + 9)  # D_2 = 1 + K + K^2 at K = 3
    fm = sym.let("kf").feature
    assert (fm.kind, fm.axis, fm.order) == ("taylor", 1, 2) and fm.length == sp.Symbol("K", integer=True, positive=True)


def test_feature_map_let_works_with_any_names():
    text = HEAD.replace("f: taylor", "g: taylor") + "let phi_x[hh: H, ff: taylor(K, 2)] = taylor(j, q[hh, j])\n" + \
        TAIL.replace("kf", "phi_x").replace("f", "g").replace("delta(g, g2)", "delta(g, g2)")
    _, sym, _, report = analyse(parse_spec(text, "x.dsf"))
    assert sym.let("phi_x").feature.axis == 1 and report.state_size_default == 2 * 4 * 13


CASES = [
    ("wrong-range", "let kf[h: H, f: taylor(d, 2)] = taylor(a, q[h, a])\n", 8, 40,
     "the feature range of axis 'f' of let 'kf' maps vectors of length 4, but index 'a' ranges over 3 values"),
    ("not-a-vector", "let kf[h: H, f: taylor(K, 2)] = taylor(a, q[h, 0])\n", 8, 33,
     "taylor maps a vector, but its index 'a' never subscripts a tensor"),
    ("scalar-let", "let s = 1\nlet kf[h: H, f: taylor(K, 2)] = taylor(a, s)\n", 9, 33,
     "taylor maps a vector, but its index 'a' never subscripts a tensor"),
    ("not-the-whole-let", "let kf[h: H, f: taylor(K, 2)] = 2 * taylor(a, q[h, a])\n", 8, 37,
     "the feature map 'taylor' must be the whole right-hand side of a let whose axes include a feature range"),
    ("no-feature-axis", "let kf[h: H, f: K] = taylor(a, q[h, a])\n", 8, 22,
     "let 'kf' is a feature map, so exactly one of its axes must be a feature range"),
    ("first-arg-not-an-index", "let kf[h: H, f: taylor(K, 2)] = taylor(q[h, 0], q[h, 1])\n", 8, 33,
     "the first argument of taylor must be the index of the vector it maps"),
    ("body-uses-feature-axis", "let kf[h: H, f: taylor(K, 2)] = taylor(a, q[h, a] * f)\n", 8, 53,
     "the body of taylor(a, ...) cannot use the feature axis 'f'"),
    ("fractional-order", "let kf[h: H, f: taylor(K, 1.5)] = taylor(a, q[h, a])\n", 8, 27,
     "must be a non-negative integer or inf, got 1.5"),
    ("negative-order", "let kf[h: H, f: taylor(K, 0 - 1)] = taylor(a, q[h, a])\n", 8, 27,
     "must be a non-negative integer or inf, got -1"),
    ("range-arity", "let kf[h: H, f: taylor(K)] = taylor(a, q[h, a])\n", 8, 17,
     "the feature range taylor(K, p) takes 2 arguments (vector length, order), got 1"),
    ("binder-shadows-a-dim", "let kf[h: H, f: taylor(K, 2)] = taylor(K, q[h, K])\n", 8, 40,
     "feature-map index 'K' shadows the dim 'K' (line "),
    ("infinite-param", "param P[taylor(K, inf)] ~ normal(0, 1)\n" + GOOD, 8, 9,
     "param 'P' has an infinite feature range on axis 0"),
    ("infinite-let-finite-state", GOOD + "let w[h: H, g: taylor(K, inf)] = taylor(a, q[h, a])\n", 9, 1,
     "let 'w' lives on an infinite feature range, but the state does not"),
]


@pytest.mark.parametrize("text,line,column,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_misuse_is_a_positioned_error(text, line, column, message):
    got = first_error(HEAD + text + TAIL)
    assert got[:2] == (line, column), got
    assert message in got[2]


INFINITE = """dim d = 4
dim K = 3
input u[d]
state S[f: taylor(K, inf), b: d]
param W[K, d] ~ normal(0, 1)
let q[a: K] = sum(m, W[a, m] * u[m])
let kf[f: taylor(K, inf)] = taylor(a, q[a])
"""  # lines 1-7


def test_infinite_state_needs_the_kernelised_form():
    # A's per-step factor must be provably positive (its log is the decay bias; sigmoid(q[0]) is accepted now)
    text = INFINITE + ("A[(f, b), (f2, b2)] = delta(f, f2) * delta(b, b2) * tanh(q[0])\n"
                       "B[(f, b), m] = kf[f] * delta(b, m)\nC[o, (f, b)] = delta(o, b) * kf[f]\n")
    line, column, message = first_error(text)
    assert (line, column) == (8, 1) and "supports A = c * prev(X) / X or A = c per group" in message \
        and "not provably positive" in message


def test_infinite_let_that_is_not_a_feature_map_or_its_cumsum_is_rejected():
    text = INFINITE + ("let w[f: taylor(K, inf)] = prev(kf[f])\n"
                       "A[(f, b), (f2, b2)] = delta(f, f2) * delta(b, b2)\n"
                       "B[(f, b), m] = kf[f] * delta(b, m)\nC[o, (f, b)] = delta(o, b) * kf[f]\n")
    line, column, message = first_error(text)
    assert (line, column) == (8, 1)
    assert "neither a feature map taylor(a, ...) nor a cumsum or decayed scan of one" in message


def test_cli_reports_file_line_col_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.dsf"
    bad.write_text(HEAD + CASES[1][1] + TAIL, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["compile", str(bad), "-o", str(out)]) == 2
    assert not out.exists() or not any(out.iterdir())
    err = capsys.readouterr().err
    assert f"{bad}:8:33: error: taylor maps a vector" in err or "bad.dsf:8:33: error: taylor maps a vector" in err


def test_kernel_sum_must_contract_the_feature_index_of_the_same_map():
    text = INFINITE + ("let kg[f: taylor(3, inf)] = taylor(a, q[a])\n"  # another map (length 3 written as a number)
                       "let e = sum(f, kf[f] * kf[0])\n"
                       "A[(f, b), (f2, b2)] = delta(f, f2) * delta(b, b2) * e\n"
                       "B[(f, b), m] = kf[f] * delta(b, m)\nC[o, (f, b)] = delta(o, b) * kf[f]\n")
    line, column, message = first_error(text)
    assert (line, column) == (9, 1) and "must sum over the feature index of both factors" in message


SOFTMAX_TAIL = ("let z[f: taylor(K, inf)] = cumsum(kf[f])\n"
                "let e = sum(f, kf[f] * z[f])\n"
                "A[(f, b), (f2, b2)] = delta(f, f2) * delta(b, b2)\n"
                "B[(f, b), m] = kf[f] * delta(b, m)\nC[o, (f, b)] = delta(o, b) * kf[f]\n")


def test_infinite_state_rejects_pre_readout_and_posts_reading_feature_vectors():
    line, column, message = first_error(INFINITE + SOFTMAX_TAIL + "readout pre\n")
    assert (line, column) == (12, 1) and "post-update) readout only" in message
    # posts that read finite quantities run after the attention (tests/e2e/test_quadratic_posts.py)
    line, column, message = first_error(INFINITE + SOFTMAX_TAIL + "post o[b: d] = y[b] * sum(f, kf[f] * kf[f])\n")
    assert (line, column) == (13, 1) and "post 'o' reads 'kf', which lives on the infinite feature range" in message
