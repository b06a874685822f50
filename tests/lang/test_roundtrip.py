"""Property tests: unparse(random AST) parses back to the same AST; arbitrary input never crashes the front end.

AST equality ignores spans (``span`` fields have ``compare=False``), so a round trip through text must reproduce the
tree exactly, whatever whitespace, line breaks and comments separate the tokens.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsfc.lang import ast
from dsfc.lang.check import check_spec
from dsfc.lang.errors import Span, SpecErrors
from dsfc.lang.parse import parse_spec

S = Span(0, 0)
KEYWORDS = {"model", "dim", "input", "state", "output", "param", "let", "readout", "post", "drive"}
# The unparser's precedence levels, loosest first; atoms (numbers, names, calls, subscripts, parentheses) are 5.
PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2, "neg": 3, "^": 4}

# ----------------------------------------------------------------------------------------------------------------
# A tiny unparser: AST -> tokens, with the fewest parentheses the grammar needs


def unparse_expr(e: ast.Expr, ctx: int = 0, pow_token: str = "^") -> list[str]:
    def wrap(tokens: list[str], prec: int) -> list[str]:
        return ["(", *tokens, ")"] if prec < ctx else tokens

    def args(items) -> list[str]:
        out: list[str] = []
        for k, a in enumerate(items):
            if k:
                out.append(",")
            out += unparse_expr(a, 0, pow_token)
        return out

    if isinstance(e, ast.Num):
        return [str(e.value) if isinstance(e.value, int) else repr(e.value)]
    if isinstance(e, ast.Name):
        return [e.name]
    if isinstance(e, ast.Index):
        return [e.name, "[", *args(e.subscripts), "]"]
    if isinstance(e, ast.Call):
        return [e.func, "(", *args(e.args), ")"]
    if isinstance(e, ast.SumOver):
        head = [e.var] if e.extent is None else [e.var, ":", *unparse_expr(e.extent, 0, pow_token)]
        return ["sum", "(", *head, ",", *unparse_expr(e.body, 0, pow_token), ")"]
    if isinstance(e, ast.Neg):
        return wrap(["-", *unparse_expr(e.operand, PREC["neg"], pow_token)], PREC["neg"])
    if isinstance(e, ast.BinOp):
        p = PREC[e.op]
        if e.op == "^":  # atom ^ unary: right-associative, the left operand must be an atom
            left, right = unparse_expr(e.left, 5, pow_token), unparse_expr(e.right, PREC["neg"], pow_token)
            return wrap([*left, pow_token, *right], p)
        left, right = unparse_expr(e.left, p, pow_token), unparse_expr(e.right, p + 1, pow_token)  # left-assoc
        return wrap([*left, e.op, *right], p)
    raise AssertionError(type(e))


def unparse_axes(axes) -> list[str]:
    out = ["["]
    for k, a in enumerate(axes):
        if k:
            out.append(",")
        if a.name is not None:
            out += [a.name, ":"]
        out += unparse_expr(a.extent)
    return out + ["]"]


def unparse_group(group, parens: bool) -> list[str]:
    names = []
    for k, iv in enumerate(group):
        if k:
            names.append(",")
        names.append(iv.name)
    return ["(", *names, ")"] if parens or len(group) > 1 else names


def unparse_stmt(s, rnd: random.Random) -> list[str]:
    if isinstance(s, ast.ModelDecl):
        return ["model", s.name] + ([f'"{s.description}"'] if s.description or rnd.random() < 0.5 else [])
    if isinstance(s, ast.DimDecl):
        return ["dim", s.name, "=", *unparse_expr(s.value)]
    if isinstance(s, ast.TensorDecl):
        return [s.kind, s.name, *unparse_axes(s.axes)]
    if isinstance(s, ast.ParamDecl):
        out = ["param", s.name] + (unparse_axes(s.axes) if s.axes else [])
        if isinstance(s.init, ast.InitExpr):
            out += ["=", *unparse_expr(s.init.expr)]
        elif isinstance(s.init, ast.InitDist):
            out += ["~", s.init.dist, "("]
            for k, a in enumerate(s.init.args):
                out += ([","] if k else []) + unparse_expr(a)
            out.append(")")
        return out
    if isinstance(s, ast.LetDecl):
        return ["let", s.name] + (unparse_axes(s.axes) if s.axes else []) + ["=", *unparse_expr(s.expr)]
    if isinstance(s, ast.MatrixDef):
        rows = unparse_group(s.rows, rnd.random() < 0.3)
        cols = unparse_group(s.cols, rnd.random() < 0.3)
        return [s.matrix, "[", *rows, ",", *cols, "]", "=", *unparse_expr(s.expr)]
    if isinstance(s, ast.ReadoutDecl):
        return ["readout", s.mode]
    raise AssertionError(type(s))


# Separators between tokens: always some whitespace, sometimes a line break or a comment.
SEPARATORS = [" ", " ", " ", "", "\n", "\t", "  # a comment\n    ", "\n\n"]


def join(tokens: list[str], rnd: random.Random) -> str:
    out = [tokens[0]]
    for prev, tok in zip(tokens, tokens[1:]):
        sep = rnd.choice(SEPARATORS)
        if sep == "" and (prev[-1].isalnum() or prev[-1] in "_'.") and (tok[0].isalnum() or tok[0] in "_'."):
            sep = " "  # two words (or a word and a number) need something between them
        if sep == "" and prev in ("-", "+", "/", "*") and tok in ("-", "+", "/", "*", "//", "**"):
            sep = " "  # '/' '/' would lex as '//', '*' '*' as '**'
        if tok in ("A", "B", "C", "D") and "\n" in sep:
            sep = " "  # a line opening with 'A[...] =' starts a new statement
        if tok in KEYWORDS and "\n" in sep:
            sep = " "  # likewise a line opening with a keyword ('readout' then 'post' on the next line)
        out += [sep, tok]
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Strategies: well-formed random ASTs


names = st.from_regex(r"[A-Za-z_][A-Za-z_0-9]{0,5}'{0,1}", fullmatch=True).filter(
    lambda n: n not in KEYWORDS and n != "sum"
)
numbers = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e30, allow_nan=False, allow_infinity=False),
).map(lambda v: ast.Num(v, span=S))


def _compound(children):
    binops = st.builds(
        lambda op, a, b: ast.BinOp(op, a, b, span=S),
        st.sampled_from(["+", "-", "*", "/", "//", "%", "^"]),
        children,
        children,
    )
    return st.one_of(
        binops,
        st.builds(lambda a: ast.Neg(a, span=S), children),
        st.builds(lambda n, subs: ast.Index(n, tuple(subs), span=S), names, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda n, xs: ast.Call(n, tuple(xs), span=S), names, st.lists(children, max_size=3)),
        st.builds(
            lambda v, ext, body: ast.SumOver(v, ext, body, span=S),
            names,
            st.none() | children,
            children,
        ),
    )


exprs = st.recursive(numbers | names.map(lambda n: ast.Name(n, span=S)), _compound, max_leaves=12)
axes = st.lists(st.builds(lambda n, e: ast.Axis(n, e, S), st.none() | names, exprs), min_size=1, max_size=3)
index_groups = st.lists(names.map(lambda n: ast.IndexVar(n, S)), min_size=1, max_size=3).map(tuple)
statements = st.one_of(
    st.builds(
        lambda n, desc: ast.ModelDecl(n, desc, S),
        names,
        st.text(st.characters(blacklist_characters='"\n\r\x00', blacklist_categories=("Cs",)), max_size=20),
    ),
    st.builds(lambda n, e: ast.DimDecl(n, e, S), names, exprs),
    st.builds(
        lambda k, n, a: ast.TensorDecl(k, n, tuple(a), S), st.sampled_from(["input", "state", "output"]), names, axes
    ),
    st.builds(
        lambda n, a, init: ast.ParamDecl(n, tuple(a), init, S),
        names,
        st.just([]) | axes,
        st.one_of(
            st.none(),
            exprs.map(lambda e: ast.InitExpr(e, S)),
            st.builds(lambda d, xs: ast.InitDist(d, tuple(xs), S), names, st.lists(exprs, max_size=3)),
        ),
    ),
    st.builds(lambda n, a, e: ast.LetDecl(n, tuple(a), e, S), names, st.just([]) | axes, exprs),
    st.builds(
        lambda m, r, c, e: ast.MatrixDef(m, r, c, e, S),
        st.sampled_from(["A", "B", "C", "D"]),
        index_groups,
        index_groups,
        exprs,
    ),
    st.builds(lambda m: ast.ReadoutDecl(m, S), st.sampled_from(["pre", "post"])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(e=exprs, seed=st.integers(0, 2**32 - 1), pow_token=st.sampled_from(["^", "**"]))
def test_expression_round_trip(e, seed, pow_token):
    text = "let z = " + join(unparse_expr(e, 0, pow_token), random.Random(seed)) + "\n"
    (let,) = parse_spec(text, "x.dsf").statements
    assert let.expr == e, text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stmts=st.lists(statements, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_statement_round_trip(stmts, seed):
    rnd = random.Random(seed)
    text = "\n".join(join(unparse_stmt(s, rnd), rnd) for s in stmts) + "\n"
    spec = parse_spec(text, "x.dsf")
    assert spec.statements == tuple(stmts), text


def test_unparser_parenthesises_only_where_needed():
    e = parse_spec("let z = (a - (b - c)) * -(x ^ y ^ z) + (-2) ^ 2\n").statements[0].expr
    assert " ".join(unparse_expr(e)) == "( a - ( b - c ) ) * - x ^ y ^ z + ( - 2 ) ^ 2"


# ----------------------------------------------------------------------------------------------------------------
# Robustness: whatever the input, the front end answers with positioned SpecErrors, never a crash

VALID = """\
model S "tiny"
dim d = 4
dim n = 2
dim K = d // n
input u[d]
state h[c: d, j: n]
param W[d, d] ~ normal(0, 0.1)
param A_log[c: d, j: n] = log(j + 1)
let z[c: d] = softplus(sum(k, W[c, k] * u[k]))
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-z[c] * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * z[c]
C[o, (c, j)] = delta(o, c) * u[o]
D[o, k] = delta(o, k)
"""


def _front_end(data) -> None:
    try:
        check_spec(parse_spec(data, "x.dsf"))
    except SpecErrors as errs:
        assert errs.errors
        for line in errs.render().split("\n"):
            assert line.startswith(("x.dsf:", "    ", "  hint: ")), line
        out = errs.render().split("\n")
        for k, line in enumerate(out):
            if line.startswith("x.dsf:"):
                assert out[k + 2].lstrip().startswith("^")


def test_valid_base_spec():
    check_spec(parse_spec(VALID, "x.dsf"))


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, len(VALID)), cut=st.integers(0, 8), insert=st.text(max_size=6))
def test_mutated_specs_give_spec_errors_only(pos, cut, insert):
    _front_end(VALID[:pos] + insert + VALID[pos + cut :])


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_input_gives_spec_errors_only(data):
    _front_end(data)


RUNNING_VALID = """\
dim d = 4
dim K = 2
input u[d]
state S[a: K, b: d]
output y[b: d]
param W[K, d]
param w_f[d]
let k[a: K] = elu(sum(m, W[a, m] * u[m])) + 1
let f = sigmoid(sum(m, w_f[m] * u[m]))
let z[a: K] = cumsum(k[a])
let n[a: K] = scan(f, k[a])
let eta = sum(a, z[a] * n[a])
let eta_prev = prev(eta)
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * eta_prev / eta
B[(a, b), m] = k[a] * delta(b, m) / eta
C[o, (a, b)] = delta(o, b) * k[a]
"""


def test_valid_running_spec():
    check_spec(parse_spec(RUNNING_VALID, "x.dsf"))


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, len(RUNNING_VALID)), cut=st.integers(0, 8), insert=st.text(max_size=6))
def test_mutated_running_specs_give_spec_errors_only(pos, cut, insert):
    _front_end(RUNNING_VALID[:pos] + insert + RUNNING_VALID[pos + cut :])
