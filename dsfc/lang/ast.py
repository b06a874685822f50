"""Typed AST of a dsfc spec: frozen dataclasses, each node carrying the span it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span

# ----------------------------------------------------------------------------------------------------------------
# Expressions


@dataclass(frozen=True)
class Expr:
    span: Span = field(compare=False, kw_only=True)


@dataclass(frozen=True)
class Num(Expr):
    value: float | int


@dataclass(frozen=True)
class Name(Expr):
    """A bare name: a dim, an index variable, or a scalar param/let."""

    name: str


@dataclass(frozen=True)
class Index(Expr):
    """``X[i, j]``: an entry of a param, let, input or state."""

    name: str
    subscripts: tuple[Expr, ...]


@dataclass(frozen=True)
class Call(Expr):
    """``f(a, b)``: an elementwise function (exp, softplus, ...) or a running op (cumsum, prev)."""

    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class SumOver(Expr):
    """``sum(k: extent, body)``; extent None means "inferred from where k subscripts a tensor"."""

    var: str
    extent: Expr | None
    body: Expr


@dataclass(frozen=True)
class BinOp(Expr):
    op: str  # one of + - * / // % ^
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr


# ----------------------------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True)
class Axis:
    """One index range of a tensor: ``c: d`` (named) or ``d`` (anonymous)."""

    name: str | None
    extent: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True)
class ModelDecl:
    name: str
    description: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class DimDecl:
    name: str
    value: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True)
class TensorDecl:
    """``input u[d]``, ``state h[c: d, j: n]``, ``output y[d]``."""

    kind: str  # "input" | "state" | "output"
    name: str
    axes: tuple[Axis, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class InitExpr:
    """``= expr``: a deterministic initial value, possibly over the param's named axes."""

    expr: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True)
class InitDist:
    """``~ normal(0, 0.02)``: a random initialiser."""

    dist: str
    args: tuple[Expr, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class ParamDecl:
    name: str
    axes: tuple[Axis, ...]
    init: InitExpr | InitDist | None
    span: Span = field(compare=False)


@dataclass(frozen=True)
class LetDecl:
    name: str
    axes: tuple[Axis, ...]
    expr: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True)
class IndexVar:
    name: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class MatrixDef:
    """``A[(c, j), (c2, j2)] = expr``: one entry of a DSF matrix, in index notation."""

    matrix: str  # "A" | "B" | "C" | "D"
    rows: tuple[IndexVar, ...]
    cols: tuple[IndexVar, ...]
    expr: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True)
class ReadoutDecl:
    """``readout pre`` (y_t = C h_{t-1} + D u_t) or ``readout post`` (the default)."""

    mode: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class PostDecl:
    """``post out[o: d] = expr``: a post-op after the DSF core; may read the core's output. The last one is the
    layer's output."""

    name: str
    axes: tuple[Axis, ...]
    expr: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True)
class DriveDecl:
    """``drive x``: the let that B and D multiply (the driven input), instead of the raw input."""

    name: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class UnusedDecl:
    """``unused extra, spare``: params or lets the spec declares on purpose although nothing the layer computes reads
    them (kept for a checkpoint's keys, say); without it the compiler warns about each one."""

    names: tuple[tuple[str, Span], ...]  # each name with its own span
    span: Span = field(compare=False)


Statement = (ModelDecl | DimDecl | TensorDecl | ParamDecl | LetDecl | MatrixDef | ReadoutDecl | PostDecl | DriveDecl
             | UnusedDecl)


@dataclass(frozen=True)
class Spec:
    """A parsed spec file: statements in source order plus the text they came from."""

    path: str
    source: str
    statements: tuple[Statement, ...]
