"""Semantic checks on the AST: names, scopes, arities, index ranges, shapes, let cycles, state dependence.

``check_spec(Spec) -> CheckedSpec``. Every problem becomes a positioned :class:`SpecError`; independent problems are
collected and raised together as :class:`SpecErrors`.
"""

from __future__ import annotations

import re

import itertools
import keyword
import math
import warnings
from dataclasses import dataclass, field

from . import ast
from .errors import NotADSFError, Span, SpecError, SpecErrors, SpecWarning

# Elementwise functions of the language and their arities. Meaning lives in ir/functions.py.
FUNCTIONS: dict[str, int] = {
    "exp": 1,
    "log": 1,
    "exp2": 1,
    "log2": 1,
    "sqrt": 1,
    "abs": 1,
    "tanh": 1,
    "sin": 1,
    "cos": 1,
    "softplus": 1,
    "sigmoid": 1,
    "logsigmoid": 1,
    "relu": 1,
    "silu": 1,
    "elu": 1,
    "gelu": 1,
    "pow": 2,
    "max": 2,
    "min": 2,
    "delta": 2,
}
# Ops over time: the whole right-hand side of a let, which becomes a running quantity carried with the state:
# cumsum(x): z_t = z_(t-1) + x_t;  scan(a, x): z_t = a_t z_(t-1) + x_t;  prev(x): x_(t-1).
# window(x): the last K values of x along the let's last axis (extent K), oldest first: a causal short conv is
# sum(k, W[c, k] * xs[c, k]) over such a window.
# prev(x, s): the same with z_0 = s when nothing is carried (s fixed over time: a token shift's zero padding).
TEMPORAL = {"cumsum": 1, "scan": 2, "prev": 1, "window": 1}  # prev also takes 2 (the start value)
PREV_START_HINT = ("prev(x) starts from x_0 itself, prev(x, s) from s (when no value is carried); s is fixed over "
                   "time: numbers, dims and params indexed by the let's axes, e.g. prev(x[c], 0) or prev(x[c], "
                   "x0[c]) with param x0[c: d]")
# Random initialisers and their accepted arities.
DISTRIBUTIONS: dict[str, tuple[int, ...]] = {
    "normal": (2,),  # normal(mean, std)
    "uniform": (2,),  # uniform(low, high)
    "log_uniform": (2,),  # exp(uniform(log low, log high))
    "dt_bias": (2,),  # Mamba: inverse softplus of log_uniform(dt_min, dt_max), dt clamped at 1e-4
    "zeros": (0,),
    "ones": (0,),
}
# Feature maps: a let ``let qf[h: H, f: taylor(K, p)] = taylor(a, q[h, a])`` maps the vector q[h, :] (index a) to
# its order-p Taylor features of exp, on the let's feature-range axis f. The range's size, sum_{r<=p} K^r, is
# computed by the compiler; p = inf gives the infinite range of exp itself (softmax attention), which only the
# kernelised (quadratic) algorithm can run. Meaning lives in ir/symspec.py (FeatureMap) and ir/functions.py (taylor).
FEATURE_MAPS = {"taylor": 2}
INFINITE_ORDER = "inf"  # the order of an infinite feature range: taylor(K, inf)
MATRIX_SHAPES = {  # which tensor each matrix's rows / columns index
    "A": ("state", "state"),
    "B": ("state", "input"),
    "C": ("output", "state"),
    "D": ("output", "input"),
}


@dataclass(frozen=True)
class AxisInfo:
    name: str | None
    extent: ast.Expr  # an expression over dims
    size: int  # its value at the default dims
    span: Span


@dataclass(frozen=True)
class TensorInfo:
    kind: str  # "input" | "state" | "output" | "param" | "let"
    name: str
    axes: tuple[AxisInfo, ...]
    span: Span


@dataclass(frozen=True)
class IndexUse:
    """One subscript of a tensor read, as the checker met it: ``tensor[..., subscript, ...]`` on axis ``position``.

    The checker tests its range at the default dims only; the generated constructor re-tests it at the dims it is
    built with, from this record (see analysis/dim_conditions.py)."""

    tensor: str
    position: int
    subscript: ast.Expr
    axis_extent: ast.Expr
    ranges: tuple[tuple[str, ast.Expr], ...]  # the index variables the subscript uses and their extents
    span: Span


@dataclass(frozen=True)
class CheckedSpec:
    """A spec whose names, shapes and ranges are known to be consistent."""

    spec: ast.Spec
    model: str
    description: str
    dims: tuple[ast.DimDecl, ...]  # in dependency (source) order
    dim_values: dict[str, int]  # defaults
    free_dims: tuple[str, ...]  # dims given by a literal: constructor arguments
    input: TensorInfo
    state: TensorInfo
    output: TensorInfo
    params: tuple[ast.ParamDecl, ...]
    lets: tuple[ast.LetDecl, ...]  # topologically sorted
    tensors: dict[str, TensorInfo]
    matrices: dict[str, ast.MatrixDef]
    readout: str  # "post" | "pre"
    time_varying: frozenset[str] = field(default_factory=frozenset)  # lets that depend on the input
    driven: TensorInfo | None = None  # what B and D multiply: the input, or a let named by 'drive'
    posts: tuple = ()  # PostDecl statements in source order (post-ops after the DSF core)
    index_uses: tuple[IndexUse, ...] = ()  # every checked subscript, for the constructor's checks at other dims
    warnings: tuple[SpecWarning, ...] = ()  # what compiles but is probably a mistake (check_spec issues them)


# what a user who reached for the state or the output can write instead (the errors below name the read)
STATE_READ_HINT = ("a function of linear reads of the state (a normaliser q.S / q.z, a ratio of two state entries) is "
                   "a post: read each part with C, then post o[...] = f(y[...]); a gate computed from the state has "
                   "no DSF form")
OUTPUT_READ_HINT = ("the output y = C h + D u is a read of the state: a linear feedback of the previous output belongs "
                    "in A (A + L C, as in an observer); a gate or other nonlinear function of it (a Jordan or NARX "
                    "network) has no DSF form")


class _Scope:
    """Index variables in scope: name -> (extent expression, size at defaults)."""

    def __init__(self, entries: dict[str, tuple[ast.Expr, int]] | None = None):
        self.entries = dict(entries or {})

    def bind(self, name: str, extent: ast.Expr, size: int) -> "_Scope":
        s = _Scope(self.entries)
        s.entries[name] = (extent, size)
        return s


def _name_the_axis_hint(p: ast.ParamDecl, name: str) -> str:
    """The hint for an unknown name in the initialiser of a param with anonymous axes: the user most likely meant
    an axis index (``param w[n] = log(j + 1)``), which only a named axis binds. With one anonymous axis the example
    names it after the unknown name; with several it shows the form."""
    anonymous = [a for a in p.axes if a.name is None]

    def extent(a: ast.Axis) -> str:
        e = a.extent
        return e.name if isinstance(e, ast.Name) else str(e.value) if isinstance(e, ast.Num) else "..."

    if len(anonymous) == 1:
        axes = ", ".join(f"{a.name or name}: {extent(a)}" for a in p.axes)
        return f"an initialiser sees only the param's named axes; to use the axis index, name it: " \
            f"param {p.name}[{axes}]"
    spare = iter(n for n in "ijklmnpqrs" if n not in {a.name for a in p.axes})
    axes = ", ".join(f"{a.name or next(spare, '_')}: {extent(a)}" for a in p.axes)
    return f"an initialiser sees only the param's named axes; to use an axis index, name the axes: " \
        f"param {p.name}[{axes}]"


def _walk(e: ast.Expr):
    yield e
    if isinstance(e, ast.Index):
        for s in e.subscripts:
            yield from _walk(s)
    elif isinstance(e, ast.Call):
        for a in e.args:
            yield from _walk(a)
    elif isinstance(e, ast.SumOver):
        if e.extent is not None:
            yield from _walk(e.extent)
        yield from _walk(e.body)
    elif isinstance(e, ast.BinOp):
        yield from _walk(e.left)
        yield from _walk(e.right)
    elif isinstance(e, ast.Neg):
        yield from _walk(e.operand)


def referenced_tensors(e: ast.Expr, bound: frozenset[str] = frozenset()) -> set[str]:
    """Names of params, lets, input and state that an expression reads (Index or bare Name). The index of an
    enclosing sum(k, ...) or taylor(a, ...) is not a read inside its body: a sum index named like a let is reported
    as shadowing, and must not also make the let depend on itself ("cycle among lets: k -> k")."""
    if isinstance(e, ast.Index):
        out = set() if e.name in bound else {e.name}
        for sub in e.subscripts:
            out |= referenced_tensors(sub, bound)
        return out
    if isinstance(e, ast.Name):
        return set() if e.name in bound else {e.name}
    if isinstance(e, ast.SumOver):
        out = referenced_tensors(e.extent, bound) if e.extent is not None else set()
        return out | referenced_tensors(e.body, bound | {e.var})
    if isinstance(e, ast.Call):
        args = e.args
        if e.func in FEATURE_MAPS and args and isinstance(args[0], ast.Name):
            bound, args = bound | {args[0].name}, args[1:]  # taylor(a, body): a is the body's vector index
        return set().union(*(referenced_tensors(a, bound) for a in args))
    if isinstance(e, ast.BinOp):
        return referenced_tensors(e.left, bound) | referenced_tensors(e.right, bound)
    if isinstance(e, ast.Neg):
        return referenced_tensors(e.operand, bound)
    return set()


# Capitalised names at the generated module's top level, which the model's class would shadow
MODULE_NAMES = {"F", "BACKENDS"}

MAX_SIZE = 2**62  # the largest size or element count dsfc accepts: torch sizes are int64


class _Checker:
    def __init__(self, spec: ast.Spec):
        self.spec = spec
        self.errors: list[SpecError] = []
        self.dims: dict[str, ast.DimDecl] = {}
        self.dim_values: dict[str, int] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.running_root = None  # the let right-hand side being checked (where cumsum/scan/prev may stand)
        self.current_let = None
        self.defining: str | None = None  # the dim whose value is being evaluated
        self.implicit_output = False  # True when the spec has no 'output' and the output is y[<input axes>]
        self.index_uses: list[IndexUse] = []
        # names whose declaration failed (already reported): their uses are not 'unknown name' errors too
        self.broken: set[str] = set()
        self.unnamed_axes = False  # checking a let or post with an unnamed axis (reported): its indices are unbound
        self.silenced: set[str] = set()  # names whose use in the expression being checked is already reported
        # while checking the initialiser of a param with anonymous axes: the hint for an unknown name there (the
        # user wrote ``param w[n] = log(j + 1)``, meaning the axis index, which only a named axis provides)
        self.anonymous_init: ast.ParamDecl | None = None

    def err(self, msg: str, span: Span, hint: str | None = None, cls=SpecError):
        self.errors.append(cls(msg, span, hint))

    # -- dims --------------------------------------------------------------------------------------------------
    def eval_dim_expr(self, e: ast.Expr, what: str) -> float | None:
        """Evaluate an expression over dims and numbers at the default dims; None after reporting an error."""
        if isinstance(e, ast.Num):
            return self.finite(e.value, e, what)
        if isinstance(e, ast.Name):
            if e.name in self.dim_values:
                return self.dim_values[e.name]
            if e.name == self.defining:
                self.err(f"{what} is defined in terms of itself", e.span)
                return None
            if e.name in self.dims:
                return None  # the dim itself failed; already reported
            self.err(f"unknown dim {e.name!r} in {what}", e.span, hint="declare it first: dim NAME = VALUE")
            return None
        if isinstance(e, ast.Neg):
            v = self.eval_dim_expr(e.operand, what)
            return None if v is None else -v
        if isinstance(e, ast.BinOp):
            a = self.eval_dim_expr(e.left, what)
            b = self.eval_dim_expr(e.right, what)
            if a is None or b is None:
                return None
            if e.op in ("/", "//", "%") and b == 0:
                self.err(f"division by zero in {what}", e.span)
                return None
            if e.op == "//" and a % b != 0:
                self.err(
                    f"{what}: {a:g} // {b:g} is not exact ({a:g} is not a multiple of {b:g})",
                    e.span,
                    hint="a dim split such as d // H must divide evenly",
                )
                return None
            try:
                v = {
                    "+": lambda: a + b,
                    "-": lambda: a - b,
                    "*": lambda: a * b,
                    "/": lambda: a / b,
                    "//": lambda: a // b,
                    "%": lambda: a % b,
                    # through floats, so that a huge integer power fails fast instead of building a huge int
                    "^": lambda: float(a) ** float(b),
                }[e.op]()
            except (OverflowError, ZeroDivisionError):
                v = math.inf
            return self.finite(v, e, what)
        if isinstance(e, ast.Call) and e.func in FEATURE_MAPS:
            return self.feature_range_size(e, what)
        if isinstance(e, ast.Call) and e.func in ("sqrt", "log", "exp") and len(e.args) == 1:
            v = self.eval_dim_expr(e.args[0], what)
            if v is None:
                return None
            try:
                return self.finite(getattr(math, e.func)(v), e, what)
            except ValueError:
                self.err(f"{e.func}({v:g}) is undefined in {what}", e.span)
                return None
            except OverflowError:
                return self.finite(math.inf, e, what)
        if isinstance(e, ast.Call) and e.func not in FUNCTIONS and e.func not in TEMPORAL:
            # tayler(K, 2) in a state's axis: name the typo, not only "numbers and dims"
            self.err(f"unknown function {e.func!r} in {what}", e.span, hint=_function_hint(
                e.func, ("sqrt", "log", "exp", *FEATURE_MAPS), "a size may use sqrt, log, exp and taylor(K, p)"))
            return None
        self.err(f"{what} must be built from numbers and dims only", e.span)
        return None

    def feature_range_size(self, e: ast.Call, what: str) -> float | None:
        """Size of the feature range ``taylor(K, p)``: sum_{r=0..p} K^r, or ``math.inf`` for ``taylor(K, inf)``."""
        if len(e.args) != 2:
            self.err(f"the feature range {e.func}(K, p) takes 2 arguments (vector length, order), got {len(e.args)}",
                     e.span, hint="e.g. state S[h: H, f: taylor(K, p), b: V]")
            return None
        k = self.size_of(e.args[0], f"the vector length of {e.func}(K, p) in {what}")
        order = e.args[1]
        if isinstance(order, ast.Name) and order.name == INFINITE_ORDER and order.name not in self.dims:
            return None if k is None else math.inf
        p = self.eval_dim_expr(order, f"the order of {e.func}(K, p) in {what}")
        if p is None or k is None:
            return None
        if float(p) != int(p) or p < 0:
            self.err(f"the order of {e.func}(K, p) in {what} must be a non-negative integer or inf, got {p:g}",
                     order.span)
            return None
        try:
            size = sum(k ** r for r in range(int(p) + 1))
        except OverflowError:
            size = math.inf
        if size > 2**62:
            self.err(f"the feature range {e.func}({k}, {int(p)}) in {what} is too large (overflows)", e.span)
            return None
        return size

    def finite(self, v, e: ast.Expr, what: str) -> float | None:
        """``v`` if it is a finite real number; otherwise report and return None."""
        if isinstance(v, complex):
            self.err(f"{what} is not a real number", e.span)
            return None
        if isinstance(v, float) and not math.isfinite(v):
            self.err(f"{what} is too large (overflows)", e.span)
            return None
        return v

    def size_of(self, e: ast.Expr, what: str) -> int | None:
        v = self.eval_dim_expr(e, what)
        if v is None:
            return None
        if v == math.inf and isinstance(e, ast.Call) and e.func in FEATURE_MAPS:
            return math.inf  # an infinite feature range (taylor(K, inf)): legal on the state and lets only
        # an int is exact (float(v) rounds one above 2^53: 2**53 + 1 was "must be a positive integer, got 9.0072e+15")
        if not (isinstance(v, int) or float(v) == int(v)) or v <= 0:
            self.err(f"{what} must be a positive integer, got {v:g}", e.span)
            return None
        if v > MAX_SIZE:
            self.err(f"{what} is too large: {v:g} (a tensor size is at most 2^62)", e.span)
            return None
        return int(v)

    def check_dims(self, decls: list[ast.DimDecl]):
        for d in decls:
            if d.name in self.dims:
                self.err(f"dim {d.name!r} is declared twice", d.span)
                continue
            self.dims[d.name] = d
            self.defining = d.name
            v = self.size_of(d.value, f"dim {d.name!r}")
            self.defining = None
            if v is not None:
                self.dim_values[d.name] = v

    # -- tensors -----------------------------------------------------------------------------------------------
    def axes_of(self, axes: tuple[ast.Axis, ...], owner: str) -> tuple[AxisInfo, ...] | None:
        out = []
        seen = set()
        ok = True
        for i, a in enumerate(axes):
            size = self.size_of(a.extent, f"axis {i} of {owner!r}")
            if size is None:
                ok = False
                continue
            if a.name is not None:
                if a.name in seen:
                    self.err(f"axis name {a.name!r} is used twice in {owner!r}", a.span)
                    ok = False
                if a.name in self.dims:
                    self.err(
                        f"axis name {a.name!r} of {owner!r} is also a dim; index names must differ from dims",
                        a.span,
                    )
                    ok = False
                seen.add(a.name)
            out.append(AxisInfo(a.name, a.extent, size, a.span))
        if ok and math.prod(a.size for a in out if a.size != math.inf) > MAX_SIZE:
            total = math.prod(a.size for a in out if a.size != math.inf)
            self.err(f"{owner!r} would have {total:.3g} elements at the default dims, too many for one tensor "
                     "(at most 2^62)", axes[0].span)
            return None
        return tuple(out) if ok else None

    def check_axis_names(self, t: TensorInfo):
        """The named axes of a param, let or post are index variables in its right-hand side: they must not be
        declared tensors too (the dependence analysis would read the index as the tensor)."""
        for a in t.axes:
            other = self.tensors.get(a.name) if a.name else None
            if other is not None:
                self.err(f"axis name {a.name!r} of {t.name!r} shadows the {other.kind} {a.name!r}; index names must "
                         "differ from declared names", a.span)

    def declare(self, kind: str, name: str, axes, span: Span):
        if name in self.tensors or name in self.dims:
            prev = self.tensors.get(name) or self.dims.get(name)
            if self.implicit_output and prev is self.tensors.get("y") and name == "y":
                self.err(
                    "'y' is the name of the output, which the spec leaves implicit (no 'output' statement)",
                    span,
                    hint="rename this, or declare the output under another name, e.g. output out[...]",
                )
                return
            self.err(
                f"{name!r} is already declared (line {prev.span.line})",
                span,
            )
            return
        if name in FUNCTIONS or name in TEMPORAL or name in FEATURE_MAPS or name == "sum":
            self.err(f"{name!r} is a built-in function and cannot be redeclared", span)
            self.broken.add(name)
            return
        if axes is None:
            self.broken.add(name)  # its axes failed (reported)
            return
        self.tensors[name] = TensorInfo(kind, name, axes, span)

    # -- expressions -------------------------------------------------------------------------------------------
    def check_expr(self, e: ast.Expr, scope: _Scope, ctx: str, allowed: set[str]) -> None:
        """Validate an expression. ``allowed``: tensor kinds it may read (e.g. {"param"} for inits)."""
        if isinstance(e, ast.Num):
            return
        if isinstance(e, ast.Name):
            if e.name in scope.entries or e.name in self.dims:
                return
            t = self.tensors.get(e.name)
            if t is None:
                self.unknown(e.name, e.span, scope)
                return
            self.check_access(t, e.span, ctx, allowed)
            if t.kind in ("state", "output"):
                return  # one error per mistake: the read itself is the problem, not its missing subscripts
            if t.axes:
                idx = ", ".join(a.name or f"i{k}" for k, a in enumerate(t.axes))
                self.err(
                    f"{t.kind} {e.name!r} has {len(t.axes)} ax{'is' if len(t.axes) == 1 else 'es'}; "
                    f"index it as {e.name}[{idx}]",
                    e.span,
                )
            return
        if isinstance(e, ast.Index):
            t = self.tensors.get(e.name)
            if t is None:
                if e.name in scope.entries or e.name in self.dims:
                    self.err(f"{e.name!r} is an index or dim and cannot be subscripted", e.span)
                else:
                    self.unknown(e.name, e.span, scope)
                for s in e.subscripts:
                    self.check_subscript(s, scope, ctx)
                return
            self.check_access(t, e.span, ctx, allowed)
            if len(e.subscripts) != len(t.axes):
                self.err(
                    f"{t.kind} {e.name!r} has {len(t.axes)} ax{'is' if len(t.axes) == 1 else 'es'} "
                    f"but is indexed with {len(e.subscripts)}",
                    e.span,
                )
                return
            if self.swapped_subscripts(e, t, scope):
                return
            for k, (s, axis) in enumerate(zip(e.subscripts, t.axes)):
                self.check_subscript(s, scope, ctx)
                self.check_range(s, axis, scope, e.name, k)
            return
        if isinstance(e, ast.Call):
            if e.func in TEMPORAL:
                if e is not self.running_root:
                    self.err(
                        f"'{e.func}' (a running quantity over time) must be the whole right-hand side of a let",
                        e.span,
                        hint=f"write it on its own line: let z[...] = {e.func}(...), then use z",
                    )
                    return
                arity = TEMPORAL[e.func]
                if e.func == "prev" and len(e.args) not in (1, 2):
                    self.err(f"prev takes 1 or 2 arguments (the value and its start), got {len(e.args)}", e.span,
                             hint=PREV_START_HINT)
                    return
                if len(e.args) != arity and e.func != "prev":
                    self.err(f"{e.func} takes {arity} argument{'s' if arity != 1 else ''}, got {len(e.args)}",
                             e.span)
                    return
                if e.func == "prev" and len(e.args) == 2 and not self.fixed_start(e.args[1], scope, ctx):
                    return
                if e.func == "window":
                    let = self.current_let
                    if let is None or not let.axes or let.axes[-1].name is None:
                        self.err("window(x) needs a let whose last axis is the window, e.g. let xs[c: d, k: 4] = "
                                 "window(x[c])", e.span)
                        return
                    last = let.axes[-1].name
                    if any(isinstance(n, ast.Name) and n.name == last for n in _walk(e.args[0])):
                        self.err(f"the argument of window must not use the window axis {last!r}", e.span,
                                 hint=f"the window is the let's last axis (here {last!r}); put the axis of the "
                                 "steps last, e.g. let xs[c: d, k: 4] = window(x[c])")
                        return
                for a in e.args[:1] if e.func == "prev" else e.args:  # prev's start: checked above
                    self.check_expr(a, scope, ctx, allowed)
                return
            if e.func in FEATURE_MAPS:
                self.check_feature_map(e, scope, ctx, allowed)
                return
            if e.func not in FUNCTIONS:
                self.err(f"unknown function {e.func!r}", e.span, hint=_function_hint(e.func))
                return
            arity = FUNCTIONS[e.func]
            if len(e.args) != arity:
                self.err(
                    f"{e.func} takes {arity} argument{'s' if arity != 1 else ''}, got {len(e.args)}",
                    e.span,
                )
                return
            if e.func == "delta":
                for a in e.args:
                    self.check_subscript(a, scope, ctx)
                return
            for a in e.args:
                self.check_expr(a, scope, ctx, allowed)
            return
        if isinstance(e, ast.SumOver):
            if e.var in scope.entries or e.var in self.dims or e.var in self.tensors:
                self.err(f"sum index {e.var!r} shadows {self.shadowed(e.var, scope)}", e.span)
                return
            if e.extent is not None:
                size = self.size_of(e.extent, f"the range of sum index {e.var!r}")
                if size is None:
                    return
                extent = e.extent
            else:
                before = len(self.errors)
                found = self.infer_extent(e.var, e.body)
                if len(self.errors) > before:
                    return  # conflicting extents: checking the body would report the same mistake again
                if found is None and self.indexes_broken(e.var, e.body):
                    return  # it subscripts a tensor whose declaration failed (a bad dim): that error is the one
                if found is None:
                    self.err(
                        f"cannot infer the range of sum index {e.var!r}: it never subscripts a tensor directly",
                        e.span,
                        hint=f"give it explicitly: sum({e.var}: EXTENT, ...)",
                    )
                    return
                extent, size = found
            self.check_expr(e.body, scope.bind(e.var, extent, size), ctx, allowed)
            return
        if isinstance(e, ast.BinOp):
            self.check_expr(e.left, scope, ctx, allowed)
            self.check_expr(e.right, scope, ctx, allowed)
            if e.op in ("//", "%") and not (self.is_integer_expr(e.left, scope)
                                            and self.is_integer_expr(e.right, scope)):
                # floor and mod are integer (index) arithmetic throughout codegen, the reference and the Triton
                # backward (no derivative): a real operand such as u[c] // 2 used to crash the printer
                self.err(f"operator {e.op!r} takes integer operands (index variables, dims and integers); "
                         f"it is not defined on real values here", e.span,
                         hint="floor division and modulo are for index arithmetic, e.g. u[(c + 1) % d]")
            return
        if isinstance(e, ast.Neg):
            self.check_expr(e.operand, scope, ctx, allowed)
            return
        raise AssertionError(f"unknown AST node {type(e).__name__}")  # pragma: no cover

    def fixed_start(self, e: ast.Expr, scope: _Scope, ctx: str) -> bool:
        """prev's start value z_0: read only numbers, dims, params and the let's own axes (not the input or a let,
        whose values are per step). Its shape mistakes (an unindexed or wrongly indexed param) get prev's hint."""
        for node in _walk(e):
            t = self.tensors.get(node.name) if isinstance(node, (ast.Name, ast.Index)) else None
            if t is not None and node.name not in scope.entries and t.kind not in ("param",):
                self.err(f"the start value of prev must be fixed over time (numbers, dims and params only); "
                         f"it reads the {t.kind} {node.name!r}",
                         node.span, hint=PREV_START_HINT)
                return False
        before = len(self.errors)
        self.check_expr(e, scope, f"the start value of prev in {ctx}", {"param"})
        for error in self.errors[before:]:
            error.hint = error.hint or PREV_START_HINT
        return len(self.errors) == before

    def check_feature_map(self, e: ast.Call, scope: _Scope, ctx: str, allowed: set[str]):
        """``let qf[..., f: taylor(K, p), ...] = taylor(a, x[..., a])``: the whole right-hand side of a let with one
        feature-range axis; ``a`` ranges over the vector x maps (length K), and the body must not use f."""
        let = self.current_let
        example = "e.g. let qf[h: H, f: taylor(K, p)] = taylor(a, q[h, a])"
        if e is not self.running_root or let is None:
            self.err(f"the feature map '{e.func}' must be the whole right-hand side of a let whose axes include a "
                     "feature range", e.span, hint=example)
            return
        feature_axes = [a for a in let.axes if is_feature_range(a.extent)]
        if len(feature_axes) != 1:
            self.err(f"let {let.name!r} is a feature map, so exactly one of its axes must be a feature range such as "
                     f"f: {e.func}(K, p); it has {len(feature_axes)}", e.span, hint=example)
            return
        if len(e.args) != 2 or not isinstance(e.args[0], ast.Name):
            self.err(f"{e.func} takes 2 arguments: the index of the vector it maps and the vector's entry, "
                     f"got {len(e.args)}" if len(e.args) != 2 else
                     f"the first argument of {e.func} must be the index of the vector it maps", e.span, hint=example)
            return
        var, body = e.args[0].name, e.args[1]
        if var in scope.entries or var in self.dims or var in self.tensors:
            self.err(f"feature-map index {var!r} shadows {self.shadowed(var, scope)}", e.args[0].span)
            return
        before = len(self.errors)
        found = self.infer_extent(var, body)
        if len(self.errors) > before:
            return
        if found is None:
            self.err(f"{e.func} maps a vector, but its index {var!r} never subscripts a tensor in {ctx}",
                     e.span, hint=example)
            return
        feature = feature_axes[0]
        want = self.size_of(feature.extent.args[0], f"the vector length of axis {feature.name!r}") \
            if len(feature.extent.args) == 2 else None
        if want is not None and want != found[1]:
            self.err(f"the feature range of axis {feature.name!r} of let {let.name!r} maps vectors of length {want}, "
                     f"but index {var!r} ranges over {found[1]} values", e.args[0].span)
            return
        used = next((n for n in _walk(body) if isinstance(n, ast.Name) and n.name == feature.name), None)
        if used is not None:
            self.err(f"the body of {e.func}({var}, ...) cannot use the feature axis {feature.name!r}: it maps the "
                     f"vector over {var!r}, and the features land on {feature.name!r}", used.span, hint=example)
            return
        inner = _Scope({k: v for k, v in scope.entries.items() if k != feature.name}).bind(var, *found)
        self.check_expr(body, inner, ctx, allowed)

    def infer_extent(self, var: str, body: ast.Expr):
        found = None
        for node in _walk(body):
            if isinstance(node, ast.Index) and node.name in self.tensors:
                t = self.tensors[node.name]
                for s, axis in zip(node.subscripts, t.axes):
                    if isinstance(s, ast.Name) and s.name == var:
                        if found is None:
                            found = (axis.extent, axis.size)
                        elif found[1] != axis.size:
                            self.err(
                                f"sum index {var!r} subscripts axes of different extents "
                                f"({found[1]} and {axis.size})",
                                node.span,
                            )
        return found

    def indexes_broken(self, var: str, body: ast.Expr) -> bool:
        """Whether ``var`` subscripts a tensor whose declaration failed (so its range cannot be inferred)."""
        return any(isinstance(node, ast.Index) and node.name in self.broken
                   and any(isinstance(s, ast.Name) and s.name == var for s in node.subscripts)
                   for node in _walk(body))

    def shadowed(self, name: str, scope: _Scope | None = None) -> str:
        """What an index name hides, with its line: "shadows a declared name" left the user to find which (a let
        named ``i`` made every ``A[i, j]`` an error pointing at the matrix, not at the let)."""
        if scope is not None and name in scope.entries:
            return "an index of the enclosing expression"
        if name in self.dims:
            return f"the dim {name!r} (line {self.dims[name].span.line})"
        t = self.tensors[name]
        return f"the {t.kind} {name!r} (line {t.span.line}); rename one of them"

    def unknown(self, name: str, span: Span, scope: _Scope):
        if name in self.broken or name in self.silenced:
            return  # declared, but its declaration failed: that error is the one to fix
        names = set(self.tensors) | set(self.dims) | set(scope.entries)
        close = [n for n in sorted(names) if _similar(n, name)]
        hint = f"did you mean {close[0]!r}?" if close else None
        if hint is None and self.anonymous_init is not None:
            hint = _name_the_axis_hint(self.anonymous_init, name)
        self.err(f"unknown name {name!r}", span, hint=hint)

    def check_access(self, t: TensorInfo, span: Span, ctx: str, allowed: set[str]):
        if t.kind == "state":
            self.err(
                f"{ctx} reads the state {t.name!r}: DSF matrices and lets may depend only on the input "
                f"(a recurrent gate such as LSTM/GRU's makes the system nonlinear in the state, so it is not a DSF)",
                span,
                hint=STATE_READ_HINT,
                cls=NotADSFError,
            )
        elif t.kind == "output" and "output" in allowed:
            pass
        elif t.kind == "output":
            self.err(f"{ctx} reads the output {t.name!r}: feeding y back makes the system nonlinear", span,
                     hint=OUTPUT_READ_HINT, cls=NotADSFError)
        elif t.kind not in allowed:
            self.err(f"{ctx} cannot read {t.kind} {t.name!r}", span)

    def is_integer_expr(self, e: ast.Expr, scope: _Scope) -> bool:
        """Is ``e`` integer arithmetic (the subscript language): integers, index variables, dims, + - * // %."""
        for node in _walk(e):
            if isinstance(node, ast.Num):
                if not isinstance(node.value, int):
                    return False
            elif isinstance(node, ast.Name):
                if node.name not in scope.entries and node.name not in self.dims:
                    return False
            elif isinstance(node, ast.BinOp):
                if node.op not in ("+", "-", "*", "//", "%"):
                    return False
            elif not isinstance(node, ast.Neg):
                return False
        return True

    def check_subscript(self, s: ast.Expr, scope: _Scope, ctx: str):
        """Subscripts are integer expressions over index variables, dims and integer literals."""
        divisions = [n for n in _walk(s) if isinstance(n, ast.BinOp) and n.op == "/"]
        if divisions:  # one error for the subscript, with it rewritten: ``k / (H / G)`` gave two bare errors
            self.err("operator '/' is not allowed in a subscript (use + - * // %)", divisions[0].span,
                     hint=self._floor_division_hint(s))
        for node in _walk(s):
            if isinstance(node, ast.Num):
                if not isinstance(node.value, int):
                    self.err(f"subscript must be an integer, got {node.value}", node.span)
            elif isinstance(node, ast.Name):
                if node.name not in scope.entries and node.name not in self.dims:
                    if node.name in self.tensors:
                        self.err(f"subscript uses {node.name!r}, which is not an index variable", node.span)
                    elif not self.unnamed_axes:  # with an unnamed axis reported, an unbound index is its name
                        self.unknown(node.name, node.span, scope)
            elif isinstance(node, ast.BinOp):
                if node.op not in ("+", "-", "*", "//", "%", "/"):
                    self.err(f"operator {node.op!r} is not allowed in a subscript (use + - * // %)", node.span)
            elif isinstance(node, (ast.Neg,)):
                pass
            else:
                self.err("subscripts may only combine index variables, dims and integers", node.span)

    def _floor_division_hint(self, s: ast.Expr) -> str:
        """The subscript as written with each '/' made '//' (taken from the source when it is on one line)."""
        text = None
        sp_, lines = s.span, (self.spec.source or "").splitlines()
        if sp_.end_line == sp_.line and sp_.end_column and 0 < sp_.line <= len(lines):
            text = re.sub(r"(?<!/)/(?!/)", "//", lines[sp_.line - 1][sp_.column - 1:sp_.end_column - 1])
        return ("an index is an integer: divide with '//' (floor division)" +
                (f", as in {text}" if text else ""))

    def _text(self, span: Span) -> str | None:
        """The source text of a one-line span, else None."""
        lines = (self.spec.source or "").splitlines()
        if span.end_line == span.line and span.end_column and 0 < span.line <= len(lines):
            return lines[span.line - 1][span.column - 1:span.end_column - 1]
        return None

    def swapped_subscripts(self, e: ast.Index, t: TensorInfo, scope: _Scope) -> bool:
        """One error for a read whose plain indices fit the tensor's axes only in another order (``C_out[j, o]`` of a
        ``param C_out[p, N]``, or a param declared with its axes swapped): each index gave its own error, with hints
        to read part of the axis (``o + 0``) or wrap it (``j % 4``). Reported and True when so, else False."""
        names = [s.name if isinstance(s, ast.Name) and s.name in scope.entries else None for s in e.subscripts]
        if None in names or len(set(names)) != len(names):
            return False
        sizes = [scope.entries[n][1] for n in names]
        wanted = [a.size for a in t.axes]
        wrong = [k for k, (z, w) in enumerate(zip(sizes, wanted)) if z != w]
        if len(wrong) < 2:
            return False
        order = next((perm for perm in itertools.permutations(range(len(names)))
                      if all(sizes[perm[k]] == wanted[k] for k in range(len(names)))
                      and all(perm[k] == k for k in range(len(names)) if k not in wrong)), None)
        if order is None:
            return False
        got = "; ".join(f"{names[k]!r} ranges over {sizes[k]} values, axis {k} has {wanted[k]}" for k in wrong)
        read = f"{e.name}[{', '.join(names[order[k]] for k in range(len(names)))}]"
        hint = f"did you mean {read}?"
        extents = [self._text(a.span) if t.kind == "param" else None for a in t.axes]
        if all(x is not None for x in extents):
            # the declaration whose axes, in the order this read gives them, fit (the read stays as written)
            inverse = [extents[order.index(k)] for k in range(len(names))]
            hint += f" Or, if the read is right, declare param {e.name}[{', '.join(inverse)}]"
        self.err(f"the indices of {e.name!r} fit its axes only in another order ({got})", e.span, hint=hint)
        return True

    def check_range(self, s: ast.Expr, axis: AxisInfo, scope: _Scope, tensor: str, k: int):
        """An index must stay inside the axis it subscripts (checked at the default dims)."""
        self.record_use(s, axis, scope, tensor, k)
        if isinstance(s, ast.Name) and s.name in scope.entries:
            size = scope.entries[s.name][1]
            if size != axis.size:
                # fewer values: most likely a read of the axis' first entries (the data part of a state or output
                # widened by a normaliser slot), which the language spells as a compound subscript; more values: a
                # read past the end, often where a factor such as (1 - delta(b, V)) zeroes it, still out of range
                # a misspelt index: another index in scope, one edit away, has the axis' extent (k[h, b2] for a2)
                close = [n for n in sorted(scope.entries) if scope.entries[n][1] == axis.size and _similar(n, s.name)]
                if close:
                    hint = f"did you mean {close[0]!r}? (it ranges over {axis.size} values)"
                elif size < axis.size:
                    hint = (f"to read the first {size} of its {axis.size} entries, write {s.name} + 0 (a compound "
                            f"subscript may cover part of an axis)")
                else:
                    hint = (f"declare the axis with {size} entries, or, where a factor zeroes the terms past its "
                            f"end, wrap the read: {s.name} % {axis.size}")
                self.err(
                    f"index {s.name!r} ranges over {size} values but axis {k} of {tensor!r} has extent "
                    f"{axis.size}",
                    s.span,
                    hint=hint,
                )
            return
        names = sorted({n.name for n in _walk(s) if isinstance(n, ast.Name) and n.name in scope.entries})
        sizes = [scope.entries[n][1] for n in names]
        if math.prod(sizes) > 200_000:
            return
        for values in itertools.product(*[range(z) for z in sizes]):
            env = dict(zip(names, values))
            where = " (at " + ", ".join(f"{n}={x}" for n, x in env.items()) + ")" if env else ""
            try:
                v = self.eval_index(s, env)
            except ZeroDivisionError:
                self.err(f"subscript {k} of {tensor!r} divides by zero{where}", s.span)
                return
            if v is None:
                return
            if not 0 <= v < axis.size:
                self.err(
                    f"subscript {k} of {tensor!r} reaches {v}{where}, outside its range 0..{axis.size - 1}",
                    s.span,
                )
                return

    def record_use(self, s: ast.Expr, axis: AxisInfo, scope: _Scope, tensor: str, k: int):
        """Keep what check_range tests, so that the generated constructor can test it again at its own dims."""
        names = sorted({n.name for n in _walk(s) if isinstance(n, ast.Name) and n.name in scope.entries})
        ranges = tuple((n, scope.entries[n][0]) for n in names)
        self.index_uses.append(IndexUse(tensor, k, s, axis.extent, ranges, s.span))

    def eval_index(self, s: ast.Expr, env: dict[str, int]) -> int | None:
        if isinstance(s, ast.Num):
            return int(s.value)
        if isinstance(s, ast.Name):
            if s.name in env:
                return env[s.name]
            return self.dim_values.get(s.name)
        if isinstance(s, ast.Neg):
            v = self.eval_index(s.operand, env)
            return None if v is None else -v
        if isinstance(s, ast.BinOp):
            a, b = self.eval_index(s.left, env), self.eval_index(s.right, env)
            if a is None or b is None:
                return None
            if s.op in ("//", "%") and b == 0:
                raise ZeroDivisionError
            return {"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0, "%": a % b if b else 0}.get(s.op)
        return None

    # -- statements --------------------------------------------------------------------------------------------
    def first_model(self, stmts: list) -> list:
        """The statements of the file's first model. Two specs in one file (``cat a.dsf b.dsf > both.dsf``) gave an
        error per statement of the second (every dim, the input, state, output and each matrix "declared twice"):
        a later ``model`` statement after which the input, state, output or a matrix is declared again starts a
        second model, reported once, and only the first is checked. A repeated ``model`` line alone is still one
        error at that line."""
        def declared(part) -> set:
            return ({s.kind for s in part if isinstance(s, ast.TensorDecl)}
                    | {s.matrix for s in part if isinstance(s, ast.MatrixDef)})

        for i, s in enumerate(stmts):
            if i == 0 or not isinstance(s, ast.ModelDecl):
                continue
            again = sorted(declared(stmts[:i]) & declared(stmts[i + 1:]))
            if again:
                self.err(
                    f"only one model per file: line {s.span.line} starts a second model (it declares "
                    f"{', '.join(again)} again)", s.span,
                    hint="put each model in a .dsf file of its own (the statements from this line on are not checked)",
                )
                return stmts[:i]
        return stmts

    def run(self) -> CheckedSpec:
        stmts = self.spec.statements
        if not stmts:
            self.err("empty spec: no statements", Span(1, 1), hint="a spec needs at least input, state, A, B and C")
            raise SpecErrors(self.errors, self.spec.path, self.spec.source)
        stmts = self.first_model(stmts)
        models = [s for s in stmts if isinstance(s, ast.ModelDecl)]
        for extra in models[1:]:
            self.err("only one 'model' statement is allowed", extra.span)
        model = models[0] if models else None
        if model is not None and not model.name[0].isupper():
            self.err(
                f"model name {model.name!r} should start with a capital letter (it names the nn.Module class)",
                model.span,
            )
        elif model is not None and (keyword.iskeyword(model.name) or model.name in MODULE_NAMES or "'" in model.name):
            self.err(
                f"model name {model.name!r} cannot name the nn.Module class: it is "
                + ("a Python keyword" if keyword.iskeyword(model.name) else
                   "not a Python identifier" if "'" in model.name else "a name the generated module already uses"),
                model.span,
                hint=f"e.g. model {model.name.rstrip(chr(39))}Layer",
            )
        self.check_dims([s for s in stmts if isinstance(s, ast.DimDecl)])

        tensors: dict[str, ast.TensorDecl] = {}
        for s in stmts:
            if isinstance(s, ast.TensorDecl):
                if s.kind in tensors:
                    # a researcher with two state tensors (RWKV-4's num / den, mLSTM's C and n) needs to know the
                    # DSF form: one state vector, the two stacked along an axis of their own
                    first = tensors[s.kind]
                    hint = (f"stack them along an axis of one state, e.g. state {first.name}[s: 2, ...] with "
                            f"delta(s, s2) in A and delta(s, 0), delta(s, 1) picking each part in B and C"
                            if s.kind == "state" else None)
                    self.err(f"only one {s.kind} may be declared (first at line {first.span.line})", s.span, hint=hint)
                    if s.name not in self.tensors:
                        self.broken.add(s.name)
                    continue
                tensors[s.kind] = s
                self.declare(s.kind, s.name, self.axes_of(s.axes, s.name), s.span)
        first = stmts[0].span
        for kind in ("input", "state"):
            if kind not in tensors:
                self.err(
                    f"missing '{kind}' declaration",
                    first,
                    hint="e.g. input u[d]" if kind == "input" else "e.g. state h[c: d, j: n]",
                )
        if "output" not in tensors and "input" in tensors and tensors["input"].name in self.tensors:
            inp = self.tensors[tensors["input"].name]
            if "y" in self.tensors:
                taken = self.tensors["y"]
                self.err(
                    f"the spec has no 'output' statement, so its output is named 'y'; but 'y' is the {taken.kind}",
                    taken.span,
                    hint="declare the output explicitly, e.g. output out[...]",
                )
            else:
                self.tensors["y"] = TensorInfo("output", "y", inp.axes, inp.span)
                self.implicit_output = True

        params = [s for s in stmts if isinstance(s, ast.ParamDecl)]
        for p in params:
            self.declare("param", p.name, self.axes_of(p.axes, p.name), p.span)
        lets = [s for s in stmts if isinstance(s, ast.LetDecl)]
        for let in lets:
            self.declare("let", let.name, self.axes_of(let.axes, let.name), let.span)

        for t in list(self.tensors.values()):
            if t.kind in ("param", "let"):
                self.check_axis_names(t)
            for k, a in enumerate(t.axes):
                if a.size == math.inf and t.kind in ("input", "output", "param"):
                    self.err(f"{t.kind} {t.name!r} has an infinite feature range on axis {a.name or k!r}: only the "
                             "state and lets may (they are never materialised; the compiler kernelises them)", a.span)

        # parameter initialisers: numbers, dims, the param's own named axes; no other tensors
        for p in params:
            if p.name not in self.tensors or p.init is None:
                continue
            info = self.tensors[p.name]
            scope = _Scope({a.name: (a.extent, a.size) for a in info.axes if a.name})
            if isinstance(p.init, ast.InitExpr):
                self.anonymous_init = p if any(a.name is None for a in p.axes) else None
                self.check_expr(p.init.expr, scope, f"the initialiser of {p.name!r}", set())
                self.anonymous_init = None
            else:
                if p.init.dist not in DISTRIBUTIONS:
                    self.err(
                        f"unknown initialiser {p.init.dist!r}",
                        p.init.span,
                        hint="known: " + ", ".join(sorted(DISTRIBUTIONS)),
                    )
                    continue
                if len(p.init.args) not in DISTRIBUTIONS[p.init.dist]:
                    self.err(
                        f"{p.init.dist} takes {DISTRIBUTIONS[p.init.dist][0]} arguments, got {len(p.init.args)}",
                        p.init.span,
                    )
                    continue
                for a in p.init.args:
                    self.check_expr(a, _Scope(), f"the initialiser of {p.name!r}", set())

        # lets: per-step quantities over the input and params; no cycles
        readable = {"param", "let", "input"}
        for let in lets:
            if let.name not in self.tensors:
                continue
            info = self.tensors[let.name]
            scope = _Scope({a.name: (a.extent, a.size) for a in info.axes if a.name})
            for a in let.axes:
                if a.name is None:
                    self.err(f"axes of let {let.name!r} must be named, e.g. let {let.name}[c: d] = ...", a.span)
            self.running_root, self.current_let = let.expr, let
            self.unnamed_axes = any(a.name is None for a in let.axes)
            self.check_expr(let.expr, scope, f"let {let.name!r}", readable)
            self.running_root, self.current_let, self.unnamed_axes = None, None, False
        order = self.sort_lets(lets)

        # the driven input: what B and D multiply (default: the raw input)
        self.driven = self.tensors.get(tensors["input"].name) if "input" in tensors else None
        drives = [s for s in stmts if isinstance(s, ast.DriveDecl)]
        for extra in drives[1:]:
            self.err("only one 'drive' statement is allowed", extra.span)
        if drives:
            dr = drives[0]
            t = self.tensors.get(dr.name)
            if t is None and dr.name in self.broken:
                self.driven = None  # a let whose declaration failed (reported)
            elif t is None or t.kind not in ("let", "input"):
                close = [n for n, x in sorted(self.tensors.items()) if x.kind == "let" and _similar(n, dr.name)]
                self.err(
                    f"'drive' must name a let (the signal B and D multiply), got {dr.name!r}"
                    + (f", which is a {t.kind}" if t else ""),
                    dr.span,
                    hint=f"did you mean {close[0]!r}?" if close else "e.g. let x[c: E] = silu(xc[c]) then drive x",
                )
                # B's and D's columns index the drive: checked against the raw input instead, a misspelt drive
                # gave an error per matrix ("the columns of B index the input 'u', which has 1 axis, but 2 ...")
                self.driven = None
            else:
                self.driven = t

        # the DSF matrices
        matrices: dict[str, ast.MatrixDef] = {}
        for s in stmts:
            if isinstance(s, ast.MatrixDef):
                if s.matrix in matrices:
                    self.err(f"matrix {s.matrix} is defined twice (first at line {matrices[s.matrix].span.line})",
                             s.span)
                    continue
                matrices[s.matrix] = s
                self.check_matrix(s)
        for m in ("A", "B", "C"):
            if m not in matrices:
                self.err(f"missing matrix {m}", first, hint=_MATRIX_HINTS[m])
        readouts = [s for s in stmts if isinstance(s, ast.ReadoutDecl)]
        for extra in readouts[1:]:
            self.err("only one 'readout' statement is allowed", extra.span)

        # post-ops: after the core, in source order; they may read the core's output and earlier post-ops
        posts = [s for s in stmts if isinstance(s, ast.PostDecl)]
        for post in posts:
            axes = self.axes_of(post.axes, post.name)
            for a in post.axes:
                if a.name is None:
                    self.err(f"axes of post {post.name!r} must be named, e.g. post {post.name}[o: d] = ...", a.span)
            # a post named like a declared tensor is reported by declare(); reading that name reads the tensor
            later = {q.name for q in posts[posts.index(post):]
                     if q.name not in self.tensors or self.tensors[q.name].kind == "post"}
            for node in _walk(post.expr):
                if isinstance(node, (ast.Index, ast.Name)) and node.name in later:
                    self.err(f"post {post.name!r} reads {node.name!r}, which is not defined before it", node.span)
            if axes is None:
                self.broken.add(post.name)
                continue
            self.check_axis_names(TensorInfo("post", post.name, axes, post.span))
            scope = _Scope({a.name: (a.extent, a.size) for a in axes if a.name})
            self.unnamed_axes = any(a.name is None for a in post.axes)
            self.silenced = later  # a read of a later post is reported above, not again as an unknown name
            self.check_expr(post.expr, scope, f"post {post.name!r}", {"param", "let", "input", "output", "post"})
            self.unnamed_axes, self.silenced = False, set()
            self.declare("post", post.name, axes, post.span)

        found = self.unused_declarations(stmts, lets, matrices, posts, drives[0] if drives else None)

        if self.errors:
            raise SpecErrors(self.errors, self.spec.path, self.spec.source)

        time_varying: set[str] = set()
        input_name = tensors["input"].name
        for let in order:
            refs = referenced_tensors(let.expr)
            if input_name in refs or refs & time_varying:
                time_varying.add(let.name)
        out_name = tensors["output"].name if "output" in tensors else "y"
        free_dims = tuple(
            d.name for d in self.dims.values() if isinstance(d.value, ast.Num)
        )
        return CheckedSpec(
            spec=self.spec,
            model=model.name if model else _default_model_name(self.spec.path),
            description=model.description if model else "",
            dims=tuple(self.dims.values()),
            dim_values=dict(self.dim_values),
            free_dims=free_dims,
            input=self.tensors[input_name],
            state=self.tensors[tensors["state"].name],
            output=self.tensors[out_name],
            params=tuple(p for p in params),
            lets=tuple(order),
            tensors=dict(self.tensors),
            matrices=matrices,
            readout=readouts[0].mode if readouts else "post",
            time_varying=frozenset(time_varying),
            driven=self.driven,
            posts=tuple(posts),
            index_uses=tuple(self.index_uses),
            warnings=found,
        )

    def unused_declarations(self, stmts, lets, matrices, posts, drive) -> tuple[SpecWarning, ...]:
        """A warning per param or let that nothing the layer computes reads (A, B, C, D, the posts, the drive let,
        through any chain of lets), unless an ``unused`` statement names it. Such a param was silently created,
        initialised and trained (its gradient always zero, its weight decayed) and a let computed every call: most
        often a typo'd name or a term dropped from a matrix. A name in ``unused`` that is not a param or let, or that
        the layer does read, is an error: the statement no longer says what the spec does."""
        let_exprs = {let.name: let.expr for let in lets}
        read: set[str] = set()
        todo = [m.expr for m in matrices.values()] + [p.expr for p in posts]
        if drive is not None:
            read.add(drive.name)
            todo += [let_exprs[drive.name]] if drive.name in let_exprs else []
        while todo:
            for name in referenced_tensors(todo.pop()) - read:
                read.add(name)
                if name in let_exprs:
                    todo.append(let_exprs[name])
        marked: dict[str, Span] = {}
        for decl in (s for s in stmts if isinstance(s, ast.UnusedDecl)):
            for name, span in decl.names:
                t = self.tensors.get(name)
                if t is None or t.kind not in ("param", "let"):
                    if name not in self.broken:
                        self.err(f"'unused' names {name!r}, which is "
                                 + (f"the {t.kind}" if t else "not declared") + "; it takes params and lets", span)
                elif name in read:
                    self.err(f"'unused' names {t.kind} {name!r}, but the layer reads it", span,
                             hint=f"remove {name!r} from the 'unused' statement")
                marked[name] = span
        found = []
        for t in self.tensors.values():
            if t.kind in ("param", "let") and t.name not in read and t.name not in marked:
                what = ("is created and trained, but its gradient is always zero" if t.kind == "param" else
                        "is computed on every call for nothing")
                found.append(SpecWarning(
                    f"{t.kind} {t.name!r} is never read by A, B, C, D, a post or the drive let: it {what}",
                    t.span, self.spec.path, self.spec.source,
                    hint=f"use it, delete it, or declare it deliberate with: unused {t.name}"))
        return tuple(found)

    def sort_lets(self, lets: list[ast.LetDecl]) -> list[ast.LetDecl]:
        by_name = {let.name: let for let in lets}
        # a let's own axis names are indices, not lets (one that shadows a let is reported by check_axis_names)
        deps = {let.name: sorted((referenced_tensors(let.expr) - {a.name for a in let.axes}) & set(by_name))
                for let in lets}
        order: list[ast.LetDecl] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done
        # lets already named in a reported cycle: one error per tangle of lets, but every separate cycle reported
        # (two unrelated cycles used to give one error, the second found only after fixing the first)
        reported: set[str] = set()

        def visit(name: str, path: list[str]):
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name):] + [name]
                if not reported & set(cycle):
                    self.err(
                        "cycle among lets: " + " -> ".join(cycle),
                        by_name[name].span,
                        hint="a let may only use lets that do not depend on it; a value carried over time is the "
                        "state or a running quantity of other lets (cumsum, scan(a, x): z_t = a_t z_(t-1) + x_t, prev, "
                        "window); a nonlinear one such as a running max(z_(t-1), x_t) has no DSF form",
                    )
                    reported.update(cycle)
                return
            state[name] = 1
            for d in deps[name]:
                visit(d, path + [name])
            state[name] = 2
            order.append(by_name[name])

        for let in lets:
            visit(let.name, [])
        return order

    def check_matrix(self, m: ast.MatrixDef):
        row_kind, col_kind = MATRIX_SHAPES[m.matrix]
        scope = _Scope()
        seen: set[str] = set()
        ok = True
        for group, kind, side in ((m.rows, row_kind, "rows"), (m.cols, col_kind, "columns")):
            t = self.driven if kind == "input" else next((t for t in self.tensors.values() if t.kind == kind), None)
            if t is None:
                return
            if len(group) != len(t.axes):
                want = ", ".join(a.name or f"i{k}" for k, a in enumerate(t.axes))
                want = f"({want})" if len(t.axes) > 1 else want
                self.err(
                    f"the {side} of {m.matrix} index the {kind} {t.name!r}, which has {len(t.axes)} "
                    f"ax{'is' if len(t.axes) == 1 else 'es'}, but {len(group)} index name"
                    f"{'s are' if len(group) != 1 else ' is'} given",
                    group[0].span if group else m.span,
                    hint=f"write {m.matrix}[{want}, ...]" if side == "rows" else f"write {m.matrix}[..., {want}]",
                )
                ok = False
                continue
            for iv, axis in zip(group, t.axes):
                if iv.name in seen:
                    self.err(f"index name {iv.name!r} is used twice in {m.matrix}[...]", iv.span)
                    ok = False
                elif iv.name in self.tensors or iv.name in self.dims:
                    self.err(f"index name {iv.name!r} shadows {self.shadowed(iv.name)}", iv.span)
                    ok = False
                seen.add(iv.name)
                scope = scope.bind(iv.name, axis.extent, axis.size)
        if ok:
            self.check_expr(m.expr, scope, f"matrix {m.matrix}", {"param", "let", "input"})


_MATRIX_HINTS = {
    "A": "e.g. A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c])",
    "B": "e.g. B[(c, j), k] = delta(c, k) * dt[c]",
    "C": "e.g. C[o, (c, j)] = delta(o, c) * q[j]",
}


def is_feature_range(extent: ast.Expr) -> bool:
    """Whether an axis extent is a feature range such as ``taylor(K, p)``."""
    return isinstance(extent, ast.Call) and extent.func in FEATURE_MAPS


def _function_hint(name: str, known=None, fallback: str | None = None) -> str:
    """'did you mean ...?' for a misspelt function (sigmod, cumsom, tayler), else the list of known ones."""
    known = sorted(known) if known is not None else sorted({*FUNCTIONS, *TEMPORAL, *FEATURE_MAPS, "sum"})
    close = [n for n in known if _similar(n, name)]
    if close:
        return f"did you mean {close[0]!r}?"
    return fallback or "known functions: " + ", ".join(known)


def _similar(a: str, b: str) -> bool:
    if a.lower() == b.lower():
        return True
    if abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 2:
        return False  # any two one-letter names are one edit apart: suggesting one for the other is noise
    # one edit apart
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        # one substitution, or two neighbours swapped (softpuls for softplus)
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def _default_model_name(path: str) -> str:
    import re
    from pathlib import Path

    stem = Path(path).stem if path and not path.startswith("<") else "Model"
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", stem) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    name = name if name[0].isalpha() else "Model" + name
    # none.dsf or f.dsf must not make class None (a SyntaxError) or class F (shadowing torch.nn.functional)
    return name + "Model" if keyword.iskeyword(name) or name in MODULE_NAMES else name


def check_spec(spec: ast.Spec) -> CheckedSpec:
    """The checked spec; raises SpecErrors for its mistakes and issues a SpecWarning (``warnings.warn``) for what
    compiles but is probably a mistake, e.g. a param nothing reads."""
    checked = _Checker(spec).run()
    for w in checked.warnings:
        warnings.warn(w, stacklevel=2)
    return checked


def too_deep_error(spec: ast.Spec) -> SpecError:
    """The error for a spec whose compilation reached Python's recursion limit (each statement's own nesting is
    bounded by the parser's MAX_NESTING). The passes inline lets into the matrices and into one another, so what
    nests is a chain of lets each reading the one before, all of it: 200 of them (``let x2 = 0.5 * x1 + 0.1``, ...)
    was "internal error: RecursionError ... This is a bug in dsfc". Named at the end of the longest such chain."""
    chains: dict[str, list[ast.LetDecl]] = {}  # let name -> the longest chain of lets that ends in it
    for s in spec.statements:
        if isinstance(s, ast.LetDecl):
            reads = {n.name for n in _walk(s.expr) if isinstance(n, (ast.Name, ast.Index)) and n.name in chains}
            chains[s.name] = max((chains[r] for r in reads), key=len, default=[]) + [s]
    chain = max(chains.values(), key=len, default=[])
    if len(chain) < 8:
        span = spec.statements[0].span if spec.statements else Span(1, 1)
        return SpecError("spec is too deeply nested to compile (Python's recursion limit was reached)", span,
                         hint="simplify its most deeply nested expressions")
    shown = [let.name for let in reversed(chain)]
    path = " <- ".join(shown if len(shown) <= 6 else shown[:3] + ["..."] + shown[-2:])
    return SpecError(
        f"spec is too deeply nested to compile: let {chain[-1].name!r} ends a chain of {len(chain)} lets, each "
        f"reading the one before ({path}); dsfc inlines lets into one another, following such a chain one level "
        "per let, and reached Python's recursion limit",
        chain[-1].span,
        hint="a chain of up to about 150 lets compiles: shorten it, e.g. merge consecutive lets into one "
        "expression each",
    )
