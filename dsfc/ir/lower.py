"""CheckedSpec -> SymSpec: build SymPy expressions from the AST (never from text).

Params, lets and the input become ``IndexedBase`` objects, index variables integer symbols, ``sum`` a ``Sum``, and
``delta`` a ``KroneckerDelta``. A let's base carries the sign facts SymPy can prove about its definition (softplus
makes ``dt`` positive), so later passes reason with assumptions rather than by evaluation.
"""

from __future__ import annotations

import itertools
import math

import sympy as sp

from ..lang import ast
from ..lang.check import CheckedSpec, TensorInfo
from ..lang.check import FEATURE_MAPS, INFINITE_ORDER, is_feature_range
from ..lang.errors import SpecError, SpecErrors
from .functions import FLOAT_FUNCTIONS, FUNCTION_TABLE, TaylorRange
from .symspec import (DimDomain, FeatureMap, SymAxis, SymIndexUse, SymInit, SymLet, SymMatrix, SymParam, SymSpec,
                      SymTensor, tensor_names)


def index_symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, integer=True, nonnegative=True)


def dim_symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, integer=True, positive=True)


def _sign_assumptions(expr: sp.Expr) -> dict[str, bool]:
    facts = {"real": True}
    if expr.is_positive:
        facts["positive"] = True
    elif expr.is_negative:
        facts["negative"] = True
    elif expr.is_nonnegative:
        facts["nonnegative"] = True
    elif expr.is_nonpositive:
        facts["nonpositive"] = True
    return facts


RUNNING = ("cumsum", "scan", "prev", "window")
# functions whose argument has a domain (DimDomain): what it must be, and what the messages call it
DOMAINS = {"log": ("positive", "the argument of log"), "sqrt": ("nonnegative", "the argument of sqrt")}

OUTPUTS = "every output would be inf or NaN"

FLOAT_MAX = sp.Float(1.7976931348623157e308)


def not_finite_real(x) -> str | None:
    """Why a lowered expression is not a finite real number anywhere (it contains ``zoo``, ``nan``, ``oo``, ``I`` or
    a number beyond float64), or None. Infinite feature ranges ``taylor(K, oo)`` are legal extents and not looked at."""
    if not isinstance(x, sp.Basic):
        return None
    if x.has(TaylorRange):
        x = x.replace(lambda n: isinstance(n, TaylorRange), lambda n: sp.Integer(1))
    if x.has(sp.nan):
        return "it is undefined (not a number, e.g. 0 / 0)"
    if x.has(sp.zoo):
        return "it is infinite (a division by zero or log(0))"
    if x.has(sp.oo, -sp.oo):
        return "it is infinite"
    if x.has(sp.I):
        return "it is not real (the sqrt, log or a fractional power of a negative number)"
    if any(abs(n) > FLOAT_MAX for n in x.atoms(sp.Number)):
        return "it overflows float64 (a number larger than 1.8e308)"
    return None


def _float_function(expr: sp.Expr, symbols: list):
    """``expr`` as a float64 Python function of ``symbols`` (None when it cannot be printed as one)."""
    try:
        return sp.lambdify(symbols, expr, modules=[FLOAT_FUNCTIONS, "math"])
    except Exception:  # noqa: BLE001 -- a construct lambdify cannot print: the exact path checks every element
        return None


def _finite_float(fn, values) -> bool:
    """Whether ``fn(*values)`` is a finite real float64 (False on any failure: the exact check then decides)."""
    try:
        v = fn(*values)
        return not isinstance(v, complex) and math.isfinite(float(v))
    except Exception:  # noqa: BLE001 -- log(0), sqrt(-1), 1 / 0, overflow, ... all mean "look exactly"
        return False


def _running_assumptions(op: str, args) -> dict[str, bool]:
    """Sign facts that survive the running op: a running sum of positives is positive, prev keeps the sign (the sign
    both its value and its start value have: prev(x, 0) of a positive x is only nonnegative)."""
    if op == "prev":
        facts = _sign_assumptions(args[0])
        if len(args) > 1:
            start = args[1]
            kept = {k: v for k, v in facts.items() if getattr(start, f"is_{k}") is True}
            weaker = {"positive": "nonnegative", "negative": "nonpositive"}
            for k, w in weaker.items():  # positive x, start 0: nonnegative
                if k in facts and k not in kept and getattr(start, f"is_{w}") is True:
                    kept[w] = True
            facts = kept
        return facts
    if op == "window":
        return {"real": True}
    x = args[-1]
    if op == "scan" and not args[0].is_nonnegative:
        return {"real": True}
    if x.is_positive:
        return {"real": True, "positive": True}
    if x.is_nonnegative:
        return {"real": True, "nonnegative": True}
    return {"real": True}


def _kernel_sum_positive(expr: sp.Expr, lets, defaults: dict) -> str | None:
    """Why ``sum(f, phi(x)[f] * psi[f])`` is positive, when psi is phi(y), a cumsum of phi(y), or a decayed history
    scan(g, phi(y)) with g > 0 (a positive combination of kernel values), for the same Taylor feature map of even (or
    infinite) order: phi(x).phi(y) = sum_{r<=p} s^r / r! has no real root for even p (and is exp(s) for p = inf).
    None when the expression is not such a kernel sum or the order is odd or symbolic. A kernel sum plus terms
    sympy proves nonnegative (an attention sink, ``+ exp(s[h])``) is positive too."""
    if isinstance(expr, sp.Add):
        why = [r for r in (_kernel_sum_positive(t, lets, defaults) for t in expr.args) if r]
        rest = [t for t in expr.args if _kernel_sum_positive(t, lets, defaults) is None]
        if why and all(t.is_nonnegative for t in rest):
            return why[0] + (" plus nonnegative terms" if rest else "")
        return None
    if not isinstance(expr, sp.Sum) or len(expr.limits) != 1:
        return None
    var = expr.limits[0][0]
    by_name = {x.tensor.name: x for x in lets}
    fs = sp.Mul.make_args(expr.function)
    if len(fs) != 2 or not all(isinstance(f, sp.Indexed) and str(f.base.label) in by_name for f in fs):
        return None
    maps = []
    for f in fs:
        let = by_name[str(f.base.label)]
        decayed = let.running == "scan" and let.args[0].is_positive is True
        if (let.running == "cumsum" or decayed) and isinstance(let.args[-1], sp.Indexed) \
                and str(let.args[-1].base.label) in by_name:
            let, f = by_name[str(let.args[-1].base.label)], let.value_at(f.indices, let.args[-1])
        if let.feature is None or f.indices[let.feature.axis] != var:
            return None
        maps.append(let.feature)
    a, b = maps
    if (a.kind, a.length, a.order) != (b.kind, b.length, b.order):
        return None
    if a.order is sp.oo:
        return "a sum of exp(q.k / sqrt(K)) > 0 (kernel of the infinite Taylor feature map)"
    order = sp.S(a.order).subs(defaults)
    if order.is_Integer and int(order) % 2 == 0:
        at = "" if a.order.is_Integer else f" at the default {a.order} = {order}; odd orders can make it <= 0"
        return f"a sum of kernel values sum_(r<={a.order}) s^r/r! > 0 (even-order Taylor feature map{at})"
    return None


class _Lowering:
    def __init__(self, checked: CheckedSpec):
        self.checked = checked
        self.dims = {d.name: dim_symbol(d.name) for d in checked.dims}
        self.bases: dict[str, sp.Basic] = {}
        self.errors: list[SpecError] = []
        self.dim_domains: dict[tuple, DimDomain] = {}
        self.effect = OUTPUTS  # what a DimDomain outside its domain breaks (messages)

    def axes(self, info: TensorInfo) -> tuple[SymAxis, ...]:
        return tuple(SymAxis(a.name, self.expr(a.extent, {}), a.size) for a in info.axes)

    def make_base(self, name: str, rank: int, **facts) -> sp.Basic:
        facts = facts or {"real": True}
        base = sp.IndexedBase(name, **facts) if rank else sp.Symbol(name, **facts)
        self.bases[name] = base
        return base

    def tensor(self, info: TensorInfo, base: sp.Basic) -> SymTensor:
        return SymTensor(info.kind, info.name, base, self.axes(info), info.span)

    def expr(self, e: ast.Expr, scope: dict[str, sp.Symbol]) -> sp.Expr:
        """Lower one expression. A constant that is not a finite real number (``1 / 0``, ``log(-1)``, ``3 % 0``,
        ``10^400``) is a SpecError at the innermost sub-expression that produces it."""
        try:
            out = self._expr(e, scope)
        except ZeroDivisionError:
            out, why = None, "it divides by zero"
        else:
            why = not_finite_real(out)
        if why is not None:
            # reported once, here; the enclosing expressions go on with a placeholder so that every independent
            # mistake of the spec is reported in one run
            self.errors.append(SpecError(f"this expression is not a finite real number: {why}", e.span))
            return sp.Dummy("invalid", real=True)
        return out

    def _expr(self, e: ast.Expr, scope: dict[str, sp.Symbol]) -> sp.Expr:
        if isinstance(e, ast.Num):
            if isinstance(e.value, int):
                return sp.Integer(e.value)
            v = float(e.value)
            # an integral real is kept exact only while float64 holds it exactly (1e300 stays a float)
            return sp.Integer(int(v)) if v.is_integer() and abs(v) <= 2**53 else sp.Float(v)
        if isinstance(e, ast.Name):
            if e.name in scope:
                return scope[e.name]
            if e.name in self.dims:
                return self.dims[e.name]
            return self.bases[e.name]
        if isinstance(e, ast.Index):
            return self.bases[e.name][tuple(self.expr(s, scope) for s in e.subscripts)]
        if isinstance(e, ast.Call) and e.func in FEATURE_MAPS:  # a feature range as an extent: taylor(K, p)
            order = e.args[1]
            p = sp.oo if isinstance(order, ast.Name) and order.name == INFINITE_ORDER and order.name not in self.dims \
                else self.expr(order, scope)
            return TaylorRange(self.expr(e.args[0], scope), p)
        if isinstance(e, ast.Call):
            args = [self.expr(a, scope) for a in e.args]
            if e.func in DOMAINS:
                self.domain(args[0], *DOMAINS[e.func], e.args[0])
            if e.func == "pow":
                self.power_domain(*args, e.args[0])
            return FUNCTION_TABLE[e.func](*args)
        if isinstance(e, ast.SumOver):
            var = index_symbol(e.var)
            if e.extent is not None:
                extent = self.expr(e.extent, {})
            else:
                extent = self.infer_extent(e.var, e.body)
            body = self.expr(e.body, {**scope, e.var: var})
            return sp.Sum(body, (var, 0, extent - 1))
        if isinstance(e, ast.BinOp):
            a, b = self.expr(e.left, scope), self.expr(e.right, scope)
            if e.op == "+":
                return a + b
            if e.op == "-":
                return a - b
            if e.op == "*":
                return a * b
            if e.op == "/":
                self.domain(b, "nonzero", "a divisor", e.right)
                return a / b
            if e.op == "//":
                return sp.floor(a / b)
            if e.op == "%":
                return sp.Mod(a, b)
            if e.op == "^":
                self.power_domain(a, b, e.left)
                return a**b
        if isinstance(e, ast.Neg):
            return -self.expr(e.operand, scope)
        raise AssertionError(f"cannot lower {type(e).__name__}")  # pragma: no cover

    def power_domain(self, base: sp.Expr, exponent: sp.Expr, node: ast.Expr) -> None:
        """``base ^ exponent`` with a constant exponent: a negative one divides by the base, a fractional one needs
        it nonnegative (positive when both)."""
        if not exponent.is_number or not exponent.is_real:
            return
        if exponent.is_integer is False:
            self.domain(base, "positive" if exponent.is_negative else "nonnegative", "the base of a fractional power",
                        node)
        elif exponent.is_negative:
            self.domain(base, "nonzero", "the base of a negative power", node)

    def domain(self, x: sp.Expr, need: str, role: str, node: ast.Expr) -> None:
        """Record a sub-expression of dims only that must lie in a domain (a divisor nonzero, a log's argument
        positive): a SpecError when it does not at the default dims, else a check for the generated constructor
        (SymSpec.dim_domains). Constants were checked by ``expr``; ones SymPy proves in the domain for every
        positive dims (``d``, ``H + 1``) are left out."""
        dims = set(self.dims.values())
        if not isinstance(x, sp.Expr) or not x.free_symbols or not x.free_symbols <= dims or x.has(TaylorRange):
            return
        if {"nonzero": x.is_nonzero, "positive": x.is_positive, "nonnegative": x.is_nonnegative}[need]:
            return
        dom = DimDomain(x, need, role, _source_text(self.checked.spec.source, node.span) or sp.sstr(x), node.span,
                        self.effect)
        value = self._at_defaults(x).evalf()
        if not value.is_Number:  # pragma: no cover - every dim has a default value
            return
        if not dom.holds(value):
            if self.effect != OUTPUTS:  # a param's initialiser: check_init_values / check_dist_args say it there
                return
            at = ", ".join(f"{s} = {self.checked.dim_values[str(s)]}" for s in sorted(x.free_symbols, key=str))
            shown = int(value) if float(value).is_integer() else float(value)
            self.errors.append(SpecError(
                f"{dom.text} is {shown} at the default dims ({at}), but as {role} it must be {need}: {dom.effect}",
                node.span,
                hint=f"choose default dims at which it is {need}, or guard it (e.g. max(..., 1)); a module built "
                     "at other dims checks it in its constructor"))
            return
        self.dim_domains.setdefault((x, need), dom)

    def collect(self, check, p, values, *args) -> None:
        """Run a value check of param ``p``, recording its error; skipped when ``values`` already failed."""
        if any(sp.S(v).atoms(sp.Dummy) for v in (values if isinstance(values, tuple) else (values,))):
            return
        try:
            check(p, values, *args)
        except SpecError as err:
            self.errors.append(err)

    def _at_defaults(self, x: sp.Expr) -> sp.Expr:
        return sp.S(x).subs({self.dims[k]: v for k, v in self.checked.dim_values.items()})

    def check_dist_args(self, p: ast.ParamDecl, args: tuple) -> None:
        """The arguments of ``~ dist(...)`` at the default dims: a std must be >= 0, a range ordered, and a
        log-uniform or dt_bias range positive (torch would fail in the generated constructor otherwise)."""
        vals = []
        for a in args:
            v = self._at_defaults(a).evalf()
            why = not_finite_real(v)
            if why is None and not v.is_Number:  # symbolic, or a number evalf cannot reduce: float() would raise
                why = "it is not a number" if not v.is_number else "it cannot be evaluated to a number"
            if why is not None:
                raise SpecError(f"the arguments of {p.init.dist} for {p.name!r} must be finite real numbers: "
                                f"{sp.sstr(a)}: {why}", p.init.span)
            vals.append(float(v))
        dist = p.init.dist
        if dist == "normal" and vals[1] < 0:
            raise SpecError(f"the std of normal(mean, std) for {p.name!r} must be >= 0, got {vals[1]:g}", p.init.span)
        if dist in ("uniform", "log_uniform", "dt_bias") and vals[0] > vals[1]:
            raise SpecError(f"{dist}(lo, hi) for {p.name!r} needs lo <= hi, got {vals[0]:g} > {vals[1]:g}",
                            p.init.span)
        if dist in ("log_uniform", "dt_bias") and vals[0] <= 0:
            raise SpecError(f"{dist}(lo, hi) for {p.name!r} needs 0 < lo (it draws the log of the value), "
                            f"got lo = {vals[0]:g}", p.init.span)

    def check_init_values(self, p: ast.ParamDecl, expr: sp.Expr, index: tuple, info: TensorInfo) -> None:
        """``param P[c: d] = expr``: expr at every element (at the default dims) must be a finite real number, e.g.
        not ``log(c)`` at c = 0. Only the index symbols expr uses are enumerated, up to 4096 combinations."""
        expr = self._at_defaults(expr)
        used = [(s, a.size) for s, a in zip(index, info.axes) if s in expr.free_symbols]
        if math.prod(size for _, size in used) > 4096:
            return
        # exact SymPy substitution costs ~10 ms an element (RG-LRU's 2560-wide Lambda took a minute to compile): each
        # element is screened in float64 first, and only one whose float value is not a finite real number is
        # evaluated exactly, which decides (and words) the error
        at_float = _float_function(expr, [s for s, _ in used])
        for values in itertools.product(*(range(size) for _, size in used)):
            if at_float is not None and _finite_float(at_float, values):
                continue
            env = {s: v for (s, _), v in zip(used, values)}
            v = expr.subs(env)
            why = not_finite_real(v) or not_finite_real(v.evalf())
            if why is not None:
                at = ", ".join(f"{s}={k}" for s, k in env.items())
                raise SpecError(f"the initial value of {p.name!r} is not a finite real number"
                                f"{' at ' + at if at else ''}: {why}", p.init.span)

    def index_use(self, use) -> SymIndexUse:
        """A checked subscript, lowered: the constructor re-checks its range at the dims it is built with."""
        scope = {name: index_symbol(name) for name, _ in use.ranges}
        ranges = tuple((scope[name], self.expr(extent, {})) for name, extent in use.ranges)
        return SymIndexUse(use.tensor, use.position, self.expr(use.subscript, scope), self.expr(use.axis_extent, {}),
                           ranges, _source_text(self.checked.spec.source, use.span), use.span,
                           bare=isinstance(use.subscript, ast.Name))

    def infer_extent(self, var: str, body: ast.Expr) -> sp.Expr:
        from ..lang.check import _walk

        for node in _walk(body):
            if isinstance(node, ast.Index) and node.name in self.checked.tensors:
                info = self.checked.tensors[node.name]
                for s, axis in zip(node.subscripts, info.axes):
                    if isinstance(s, ast.Name) and s.name == var:
                        return self.expr(axis.extent, {})
        raise AssertionError(f"range of {var} not inferable (checker should have caught it)")  # pragma: no cover

    def run(self) -> SymSpec:
        c = self.checked
        dim_defs = {}
        for d in c.dims:
            if d.name not in c.free_dims:
                dim_defs[d.name] = self.expr(d.value, {})
        inp = self.tensor(c.input, self.make_base(c.input.name, len(c.input.axes)))
        state = self.tensor(c.state, self.make_base(c.state.name, len(c.state.axes)))
        out = self.tensor(c.output, self.make_base(c.output.name, len(c.output.axes)))

        params = []
        for p in c.params:
            info = c.tensors[p.name]
            base = self.make_base(p.name, len(info.axes))
            index = tuple(index_symbol(a.name or f"_i{k}") for k, a in enumerate(info.axes))
            scope = {a.name: s for a, s in zip(info.axes, index) if a.name}
            if p.init is None:
                init = SymInit("default", None, (), index)
            elif isinstance(p.init, ast.InitExpr):
                self.effect = f"the initial values of {p.name!r} would be inf or NaN"
                init = SymInit("expr", self.expr(p.init.expr, scope), (), index)
                self.effect = OUTPUTS
                self.collect(self.check_init_values, p, init.expr, index, info)
            else:
                self.effect = f"the initialiser of {p.name!r} would draw inf or NaN"
                init = SymInit(p.init.dist, None, tuple(self.expr(a, {}) for a in p.init.args), index)
                self.effect = OUTPUTS
                self.collect(self.check_dist_args, p, init.args)
            params.append(SymParam(self.tensor(info, base), init))

        lets = []
        for let in c.lets:
            info = c.tensors[let.name]
            index = tuple(index_symbol(a.name) for a in info.axes)
            scope = {a.name: s for a, s in zip(info.axes, index)}
            if isinstance(let.expr, ast.Call) and let.expr.func in RUNNING:
                # a quantity over time: its per-step arguments are lowered, the op itself stays structural
                args = tuple(self.expr(a, scope) for a in let.expr.args)
                facts = _running_assumptions(let.expr.func, args)
                base = self.make_base(let.name, len(info.axes), **facts)
                expr = base[index] if index else base
                lets.append(SymLet(self.tensor(info, base), index, expr, True, let.expr.func, args))
                continue
            if isinstance(let.expr, ast.Call) and let.expr.func in FEATURE_MAPS:
                # a feature map: the body is a vector over the binder, the let's feature axis holds its features
                pos = next(k for k, a in enumerate(info.axes) if is_feature_range(a.extent))
                rng = info.axes[pos].extent  # taylor(K, p): lowered argument by argument (taylor(K, inf) is oo)
                order = rng.args[1]
                length = self.expr(rng.args[0], {})
                order = sp.oo if isinstance(order, ast.Name) and order.name == INFINITE_ORDER \
                    and order.name not in self.dims else self.expr(order, {})
                var = index_symbol(let.expr.args[0].name)
                inner = {k: v for k, v in scope.items() if k != info.axes[pos].name}
                body = self.expr(let.expr.args[1], {**inner, let.expr.args[0].name: var})
                fmap = FeatureMap(let.expr.func, var, length, order, body, pos)
                base = self.make_base(let.name, len(info.axes))
                reads = tensor_names(body)
                varying = bool(reads & ({c.input.name} | {x.tensor.name for x in lets if x.time_varying}))
                lets.append(SymLet(self.tensor(info, base), index, base[index], varying, feature=fmap))
                continue
            expr = self.expr(let.expr, scope)
            why = _kernel_sum_positive(expr, lets, {self.dims[k]: v for k, v in c.dim_values.items()})
            facts = {"real": True, "positive": True} if why else _sign_assumptions(expr)
            base = self.make_base(let.name, len(info.axes), **facts)
            reads = tensor_names(expr)
            varying = bool(reads & ({c.input.name} | {x.tensor.name for x in lets if x.time_varying}))
            lets.append(SymLet(self.tensor(info, base), index, expr, varying, positive_reason=why))

        matrices = {}
        for name, m in c.matrices.items():
            from ..lang.check import MATRIX_SHAPES

            row_kind, col_kind = MATRIX_SHAPES[name]
            driven = inp if c.driven is None or c.driven.name == c.input.name else \
                next(x.tensor for x in lets if x.tensor.name == c.driven.name)
            by_kind = {"state": state, "input": driven, "output": out}
            rows = tuple(index_symbol(iv.name) for iv in m.rows)
            cols = tuple(index_symbol(iv.name) for iv in m.cols)
            scope = {iv.name: s for iv, s in zip(m.rows + m.cols, rows + cols)}
            matrices[name] = SymMatrix(
                name,
                rows,
                cols,
                by_kind[row_kind].shape(),
                by_kind[col_kind].shape(),
                self.expr(m.expr, scope),
                m.span,
            )
        driven = inp if c.driven is None or c.driven.name == c.input.name else \
            next(x.tensor for x in lets if x.tensor.name == c.driven.name)
        # post-ops: lets evaluated after the core; the core output reads as a time-varying tensor
        posts = []
        for post in c.posts:
            info = c.tensors[post.name]
            index = tuple(index_symbol(a.name) for a in info.axes)
            expr = self.expr(post.expr, dict(zip([a.name for a in info.axes], index)))
            base = self.make_base(post.name, len(info.axes), **_sign_assumptions(expr))
            posts.append(SymLet(self.tensor(info, base), index, expr, True))
        if self.errors:
            raise SpecErrors(self.errors, c.spec.path, c.spec.source)
        return SymSpec(
            driven=driven,
            posts=tuple(posts),
            index_uses=tuple(self.index_use(u) for u in c.index_uses),
            dim_domains=tuple(self.dim_domains.values()),
            checked=c,
            model=c.model,
            description=c.description,
            dims=self.dims,
            dim_defs=dim_defs,
            dim_defaults=dict(c.dim_values),
            free_dims=c.free_dims,
            input=inp,
            state=state,
            output=out,
            params=tuple(params),
            lets=tuple(lets),
            matrices=matrices,
            readout=c.readout,
        )


def _source_text(source: str, span) -> str:
    """The spec's text at ``span`` (one line), for messages; "" when the span does not say."""
    lines = source.splitlines()
    if span.end_line != span.line or span.end_column is None or not 0 < span.line <= len(lines):
        return ""
    return lines[span.line - 1][span.column - 1:span.end_column - 1]


def lower_to_sympy(checked: CheckedSpec) -> SymSpec:
    try:
        return _Lowering(checked).run()
    except SpecError as err:
        raise SpecErrors([err], checked.spec.path, checked.spec.source) from None
