"""Positive parsing: the AST the parser builds from valid text, with the spans it records."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsfc.lang import ast
from dsfc.lang.check import check_spec
from dsfc.lang.errors import Span, SpecErrors
from dsfc.lang.parse import parse_file, parse_spec

S = Span(0, 0)  # spans do not take part in AST equality
SPECS = Path(__file__).resolve().parents[2] / "specs"


def N(value):
    return ast.Num(value, span=S)


def V(name):
    return ast.Name(name, span=S)


def I(name, *subs):  # noqa: E743 - Index
    return ast.Index(name, tuple(subs), span=S)


def Bin(op, left, right):
    return ast.BinOp(op, left, right, span=S)


def expr_of(text: str) -> ast.Expr:
    """Parse ``text`` as the right-hand side of a let and return its expression."""
    (let,) = parse_spec(f"let z = {text}\n", "x.dsf").statements
    return let.expr


# ----------------------------------------------------------------------------------------------------------------
# Whole statements


def test_statement_kinds_and_fields():
    spec = parse_spec(
        "\n".join(
            [
                'model S6 "selective scan"',
                "dim d = 4",
                "input u[d]",
                "state h[c: d, j: 2]",
                "output y[d]",
                "param W[k: d, d] ~ normal(0, 0.02)",
                "param b",
                "let z[c: d] = u[c]",
                "A[(c, j), (c2, j2)] = 1",
                "B[(c, j), k] = 1",
                "C[o, (c, j)] = 1",
                "D[o, k] = 0",
                "readout post",
            ]
        ),
        "x.dsf",
    )
    assert spec.path == "x.dsf"
    kinds = [type(s).__name__ for s in spec.statements]
    assert kinds == [
        "ModelDecl",
        "DimDecl",
        "TensorDecl",
        "TensorDecl",
        "TensorDecl",
        "ParamDecl",
        "ParamDecl",
        "LetDecl",
        "MatrixDef",
        "MatrixDef",
        "MatrixDef",
        "MatrixDef",
        "ReadoutDecl",
    ]
    model, dim, inp, state, out, w, b, let, a, bm, c, dm, readout = spec.statements
    assert (model.name, model.description) == ("S6", "selective scan")
    assert dim == ast.DimDecl("d", N(4), S)
    assert inp == ast.TensorDecl("input", "u", (ast.Axis(None, V("d"), S),), S)
    assert state.kind == "state" and [ax.name for ax in state.axes] == ["c", "j"]
    assert state.axes[1].extent == N(2)
    assert out.kind == "output"
    assert w == ast.ParamDecl(
        "W",
        (ast.Axis("k", V("d"), S), ast.Axis(None, V("d"), S)),
        ast.InitDist("normal", (N(0), N(0.02)), S),
        S,
    )
    assert b == ast.ParamDecl("b", (), None, S)
    assert let == ast.LetDecl("z", (ast.Axis("c", V("d"), S),), I("u", V("c")), S)
    assert [iv.name for iv in a.rows] == ["c", "j"] and [iv.name for iv in a.cols] == ["c2", "j2"]
    assert [iv.name for iv in bm.cols] == ["k"]
    assert [iv.name for iv in c.rows] == ["o"]
    assert dm.matrix == "D"
    assert readout.mode == "post"


def test_spans_are_one_based_lines_and_columns():
    spec = parse_spec("dim d = 4\n\n  input u[d]\nlet z[c: d] = 2 * u[c]\n", "x.dsf")
    dim, inp, let = spec.statements
    assert dim.span == Span(1, 1, 1, 10)
    assert dim.value.span == Span(1, 9, 1, 10)
    assert (inp.span.line, inp.span.column) == (3, 3)
    assert (let.axes[0].span.line, let.axes[0].span.column) == (4, 7)
    product = let.expr
    assert (product.span.line, product.span.column, product.span.end_column) == (4, 15, 23)
    assert (product.right.span.line, product.right.span.column) == (4, 19)
    assert product.right.subscripts[0].span == Span(4, 21, 4, 22)


def test_span_fields_do_not_take_part_in_equality():
    a = parse_spec("let z = 1 + x\n").statements[0]
    b = parse_spec("\n\n   let   z =\n 1+x  # moved\n").statements[0]
    assert a == b
    assert a.span != b.span


def test_comments_are_ignored_everywhere():
    text = "# leading comment\ndim d = 4   # trailing\n# between\ninput u[d # inside brackets\n]\n# the end"
    spec = parse_spec(text, "x.dsf")
    assert spec.statements == (
        ast.DimDecl("d", N(4), S),
        ast.TensorDecl("input", "u", (ast.Axis(None, V("d"), S),), S),
    )
    assert spec.source == text


def test_only_comments_parses_to_no_statements():
    assert parse_spec("# nothing here\n\n# at all\n").statements == ()


def test_multi_line_statements():
    spec = parse_spec(
        "state h[c: d,\n        j: n]\nlet z[c: d] =\n    u[c]\n  + 1\nA[(c, j),\n  (c2, j2)]\n  = 1\n",
        "x.dsf",
    )
    state, let, a = spec.statements
    assert [ax.name for ax in state.axes] == ["c", "j"]
    assert state.span.line == 1 and state.span.end_line == 2
    assert let.expr == Bin("+", I("u", V("c")), N(1))
    assert (let.expr.right.span.line, let.expr.right.span.column) == (5, 5)
    assert [iv.name for iv in a.cols] == ["c2", "j2"]
    assert (a.cols[0].span.line, a.cols[0].span.column) == (7, 4)


def test_several_statements_on_one_line():
    spec = parse_spec("dim d = 4 dim n = 2 input u[d]\n")
    assert [type(s).__name__ for s in spec.statements] == ["DimDecl", "DimDecl", "TensorDecl"]


def test_model_description_string():
    (m,) = parse_spec('model Lin "linear attention: y = S q # not a comment"\n').statements
    assert m.name == "Lin"
    assert m.description == "linear attention: y = S q # not a comment"
    (m,) = parse_spec("model Lin\n").statements
    assert m.description == ""


def test_readout_modes():
    assert parse_spec("readout pre\n").statements[0].mode == "pre"
    assert parse_spec("readout post\n").statements[0].mode == "post"


def test_bytes_input_and_byte_order_mark():
    text = "dim d = 4\n"
    assert parse_spec(text.encode()).statements == parse_spec(text).statements
    spec = parse_spec(b"\xef\xbb\xbf" + text.encode(), "x.dsf")
    assert spec.statements[0].span == Span(1, 1, 1, 10)


def test_crlf_line_endings():
    spec = parse_spec("dim d = 4\r\ninput u[d]\r\n")
    assert spec.statements[1].span.line == 2


# ----------------------------------------------------------------------------------------------------------------
# Initialisers


@pytest.mark.parametrize(
    "text, init",
    [
        ("param p[c: d] = log(c + 1)", ast.InitExpr(ast.Call("log", (Bin("+", V("c"), N(1)),), span=S), S)),
        ("param p ~ normal(0, 0.02)", ast.InitDist("normal", (N(0), N(0.02)), S)),
        ("param p ~ uniform(-1, 1)", ast.InitDist("uniform", (ast.Neg(N(1), span=S), N(1)), S)),
        ("param p ~ log_uniform(0.001, 0.1)", ast.InitDist("log_uniform", (N(0.001), N(0.1)), S)),
        ("param p ~ dt_bias(0.001, 0.1)", ast.InitDist("dt_bias", (N(0.001), N(0.1)), S)),
        ("param p ~ zeros()", ast.InitDist("zeros", (), S)),
        ("param p ~ ones()", ast.InitDist("ones", (), S)),
        ("param p", None),
    ],
)
def test_param_initialisers(text, init):
    (p,) = parse_spec(text + "\n").statements
    assert p.init == init


# ----------------------------------------------------------------------------------------------------------------
# Expressions


def test_sum_with_explicit_extent():
    e = expr_of("sum(k: d, W[c, k] * u[k])")
    assert e == ast.SumOver("k", V("d"), Bin("*", I("W", V("c"), V("k")), I("u", V("k"))), span=S)


def test_sum_with_inferred_extent():
    e = expr_of("sum(k, u[k])")
    assert e == ast.SumOver("k", None, I("u", V("k")), span=S)


def test_nested_sums():
    e = expr_of("sum(q, W[c, q] * sum(k: r, X[q, k]))")
    assert isinstance(e, ast.SumOver) and e.extent is None
    inner = e.body.right
    assert inner == ast.SumOver("k", V("r"), I("X", V("q"), V("k")), span=S)


def test_calls():
    assert expr_of("exp(x)") == ast.Call("exp", (V("x"),), span=S)
    assert expr_of("delta(i, j)") == ast.Call("delta", (V("i"), V("j")), span=S)
    assert expr_of("f()") == ast.Call("f", (), span=S)  # arity is the checker's business


def test_precedence_and_associativity():
    a, b, c = V("a"), V("b"), V("c")
    assert expr_of("a + b * c") == Bin("+", a, Bin("*", b, c))
    assert expr_of("a - b - c") == Bin("-", Bin("-", a, b), c)
    assert expr_of("a / b // c % 2") == Bin("%", Bin("//", Bin("/", a, b), c), N(2))
    assert expr_of("a ^ b ^ c") == Bin("^", a, Bin("^", b, c))
    assert expr_of("a ** b") == Bin("^", a, b)
    assert expr_of("-a ^ 2") == ast.Neg(Bin("^", a, N(2)), span=S)
    assert expr_of("a ^ -b") == Bin("^", a, ast.Neg(b, span=S))
    assert expr_of("(a + b) * c") == Bin("*", Bin("+", a, b), c)
    assert expr_of("+a") == a
    assert expr_of("a * -b") == Bin("*", a, ast.Neg(b, span=S))


def test_numbers():
    assert expr_of("3") == N(3) and isinstance(expr_of("3").value, int)
    assert isinstance(expr_of("3.0").value, float)
    assert expr_of("1e-3") == N(0.001)
    assert expr_of(".5") == N(0.5)
    assert expr_of("2.5E+2") == N(250.0)


def test_subscript_arithmetic():
    e = expr_of("X[i + 1, i - 1, 2 * i, i // 2, i % 2]")
    assert [s.op for s in e.subscripts] == ["+", "-", "*", "//", "%"]


def test_primed_names():
    assert expr_of("x' + x''") == Bin("+", V("x'"), V("x''"))


# ----------------------------------------------------------------------------------------------------------------
# Names shared between matrices and params


def test_param_named_D_used_in_matrix_D():
    text = "\n".join(
        [
            "dim d = 4",
            "input u[d]",
            "state h[d]",
            "param D[d] = 1",
            "param A_log[d]",
            "A[i, k] = delta(i, k) * exp(-exp(A_log[i]))",
            "B[i, k] = delta(i, k)",
            "C[i, k] = delta(i, k)",
            "D[o, k] = delta(o, k) * D[k]",
        ]
    )
    spec = parse_spec(text, "x.dsf")
    p = spec.statements[3]
    assert isinstance(p, ast.ParamDecl) and p.name == "D"
    m = spec.statements[-1]
    assert isinstance(m, ast.MatrixDef) and m.matrix == "D"
    assert m.expr.right == I("D", V("k"))
    checked = check_spec(spec)
    assert checked.tensors["D"].kind == "param"
    assert set(checked.matrices) == {"A", "B", "C", "D"}


def test_s6_spec_parses_and_checks():
    spec = parse_file(SPECS / "s6.dsf")
    checked = check_spec(spec)
    assert checked.model == "S6"
    assert checked.dim_values == {"d": 64, "n": 16, "r": 4}
    assert checked.free_dims == ("d", "n", "r")
    assert [ax.size for ax in checked.state.axes] == [64, 16]
    assert {let.name for let in checked.lets} == {"dt", "b", "cq"}
    assert checked.time_varying == {"dt", "b", "cq"}
    assert checked.readout == "post"


def test_derived_dims():
    spec = parse_spec(
        "dim d = 8\ndim H = 2\ndim K = d // H\ninput u[d]\nstate h[a: H, b: K]\n"
        "A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2)\nB[(a, b), k] = 1\nC[o, (a, b)] = 1\n"
    )
    checked = check_spec(spec)
    assert checked.dim_values == {"d": 8, "H": 2, "K": 4}
    assert checked.free_dims == ("d", "H")
    assert checked.output.name == "y" and [ax.size for ax in checked.output.axes] == [8]


# ----------------------------------------------------------------------------------------------------------------
# Running quantities over time: cumsum, scan, prev, window as the whole right-hand side of a let


def test_running_ops_parse_as_calls():
    assert expr_of("cumsum(k[a])") == ast.Call("cumsum", (I("k", V("a")),), span=S)
    assert expr_of("scan(f, i * k[a])") == ast.Call("scan", (V("f"), Bin("*", V("i"), I("k", V("a")))), span=S)
    assert expr_of("prev(eta[h])") == ast.Call("prev", (I("eta", V("h")),), span=S)
    assert expr_of("window(x[c])") == ast.Call("window", (I("x", V("c")),), span=S)
    assert expr_of("(cumsum(x))") == ast.Call("cumsum", (V("x"),), span=S)  # parentheses leave no node


RUNNING = """\
dim d = 4
dim K = 2
input u[d]
state h[c: d]
param W[K, d]
param w_f[d]
let k[a: K] = softplus(sum(m, W[a, m] * u[m]))
let f = sigmoid(sum(m, w_f[m] * u[m]))
let z[a: K] = cumsum(k[a])
let n[a: K] = scan(f, f * k[a])
let s = cumsum(sum(a, k[a]))
let paren[a: K] = (prev(k[a]))
let eta = sum(a, z[a] + n[a]) + s
let eta_prev = prev(eta)
let xs[c: d, w: 3] = window(u[c] * f)
let conv[c: d] = sum(w, xs[c, w])
A[i, j] = delta(i, j) * eta_prev / eta
B[i, j] = delta(i, j) * conv[i] / eta
C[i, j] = delta(i, j) * paren[0]
"""


def test_running_lets_check():
    checked = check_spec(parse_spec(RUNNING, "x.dsf"))
    lets = {let.name: let for let in checked.lets}
    assert {name: let.expr.func for name, let in lets.items() if isinstance(let.expr, ast.Call)} == {
        "k": "softplus",
        "f": "sigmoid",
        "z": "cumsum",
        "n": "scan",
        "s": "cumsum",
        "paren": "prev",
        "eta_prev": "prev",
        "xs": "window",
    }
    order = [let.name for let in checked.lets]
    # a running let comes after what its arguments read, and before the lets that read it
    for before, after in [("k", "z"), ("f", "n"), ("k", "n"), ("z", "eta"), ("n", "eta"), ("s", "eta"),
                          ("eta", "eta_prev"), ("f", "xs"), ("xs", "conv")]:
        assert order.index(before) < order.index(after), order
    assert {"z", "n", "s", "paren", "eta", "eta_prev", "xs", "conv"} <= checked.time_varying


def test_running_lets_lower_to_structural_lets():
    from dsfc.ir.lower import lower_to_sympy

    sym = lower_to_sympy(check_spec(parse_spec(RUNNING, "x.dsf")))
    running = {let.tensor.name: (let.running, len(let.args)) for let in sym.running_lets}
    assert running == {"z": ("cumsum", 1), "n": ("scan", 2), "s": ("cumsum", 1), "paren": ("prev", 1),
                       "eta_prev": ("prev", 1), "xs": ("window", 1)}
    assert all(let.time_varying for let in sym.running_lets)
    assert not any(let.running for let in sym.lets if let.tensor.name in ("k", "f", "eta", "conv"))


def test_running_let_of_params_only_is_accepted():
    text = "dim d = 4\ninput u[d]\nstate h[d]\nparam p\nlet steps = cumsum(1)\nlet acc = scan(0.5, p)\n" \
           "A[i, k] = delta(i, k) * 0.5\nB[i, k] = delta(i, k) * (acc + 1 / steps)\nC[i, k] = delta(i, k)\n"
    checked = check_spec(parse_spec(text, "x.dsf"))
    assert [let.name for let in checked.lets] == ["steps", "acc"]


def test_normalised_linear_attention_spec_parses_and_checks():
    checked = check_spec(parse_file(SPECS / "linear_attention_normalized.dsf"))
    assert checked.model == "LinearAttentionNormalized"
    lets = {let.name: let.expr for let in checked.lets}
    assert lets["z"] == ast.Call("cumsum", (I("kf", V("h"), V("a")),), span=S)
    assert lets["eta_prev"] == ast.Call("prev", (I("eta", V("h")),), span=S)
    assert [let.name for let in checked.lets] == ["qf", "kf", "z", "eta", "eta_prev"]


def test_lone_cr_line_endings_end_comments_and_lines():
    # classic Mac line ends: a comment must stop at the CR, not swallow the rest of the file (it did: the spec then
    # lost its input and state and the errors named missing declarations at 1:1)
    lf = "dim d = 4  # width\ninput u[d]\nstate h[c: d]\n# a comment line\nA[i, k] = delta(i, k) * 0.5\n"
    spec = parse_spec(lf.replace("\n", "\r"))
    assert spec.statements == parse_spec(lf).statements
    with pytest.raises(SpecErrors) as exc:
        parse_spec("dim d = 4  # width\rinput u[d]\rA[i, k] = delta(i, k) * )\r", "x.dsf")
    err = exc.value.errors[0]
    assert (err.span.line, err.span.column) == (3, 25)
    assert exc.value.render().splitlines()[1] == "    A[i, k] = delta(i, k) * )"
