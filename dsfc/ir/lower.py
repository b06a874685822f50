"""CheckedSpec -> SymSpec: build SymPy expressions from the AST (never from text).

Params, lets and the input become ``IndexedBase`` objects, index variables integer symbols, ``sum`` a ``Sum``, and
``delta`` a ``KroneckerDelta``. A let's base carries the sign facts SymPy can prove about its definition (softplus
makes ``dt`` positive), so later passes reason with assumptions rather than by evaluation.
"""

from __future__ import annotations

import sympy as sp

from ..lang import ast
from ..lang.check import CheckedSpec, TensorInfo
from ..lang.check import FEATURE_MAPS, INFINITE_ORDER, is_feature_range
from .functions import FUNCTION_TABLE, TaylorRange
from .symspec import FeatureMap, SymAxis, SymInit, SymLet, SymMatrix, SymParam, SymSpec, SymTensor


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


def _running_assumptions(op: str, args) -> dict[str, bool]:
    """Sign facts that survive the running op: a running sum of positives is positive, prev keeps the sign."""
    if op in ("prev", "window"):
        return _sign_assumptions(args[0]) if op == "prev" else {"real": True}
    x = args[-1]
    if op == "scan" and not args[0].is_nonnegative:
        return {"real": True}
    if x.is_positive:
        return {"real": True, "positive": True}
    if x.is_nonnegative:
        return {"real": True, "nonnegative": True}
    return {"real": True}


def _kernel_sum_positive(expr: sp.Expr, lets, defaults: dict) -> str | None:
    """Why ``sum(f, phi(x)[f] * psi[f])`` is positive, when psi is phi(y) or a cumsum of phi(y) for the same Taylor
    feature map of even (or infinite) order: phi(x).phi(y) = sum_{r<=p} s^r / r! has no real root for even p (and is
    exp(s) for p = inf). None when the expression is not such a kernel sum or the order is odd or symbolic."""
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
        if let.running == "cumsum" and isinstance(let.args[0], sp.Indexed) and str(let.args[0].base.label) in by_name:
            let, f = by_name[str(let.args[0].base.label)], let.args[0].subs(dict(zip(let.index, f.indices)))
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
        if isinstance(e, ast.Num):
            if isinstance(e.value, int):
                return sp.Integer(e.value)
            return sp.Float(e.value) if not float(e.value).is_integer() else sp.Integer(int(e.value))
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
                return a / b
            if e.op == "//":
                return sp.floor(a / b)
            if e.op == "%":
                return sp.Mod(a, b)
            if e.op == "^":
                return a**b
        if isinstance(e, ast.Neg):
            return -self.expr(e.operand, scope)
        raise AssertionError(f"cannot lower {type(e).__name__}")  # pragma: no cover

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
                init = SymInit("expr", self.expr(p.init.expr, scope), (), index)
            else:
                init = SymInit(p.init.dist, None, tuple(self.expr(a, {}) for a in p.init.args), index)
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
                reads = {str(n.base.label) if isinstance(n, sp.Indexed) else str(n)
                         for n in sp.preorder_traversal(body) if isinstance(n, (sp.Indexed, sp.Symbol))}
                varying = bool(reads & ({c.input.name} | {x.tensor.name for x in lets if x.time_varying}))
                lets.append(SymLet(self.tensor(info, base), index, base[index], varying, feature=fmap))
                continue
            expr = self.expr(let.expr, scope)
            why = _kernel_sum_positive(expr, lets, {self.dims[k]: v for k, v in c.dim_values.items()})
            facts = {"real": True, "positive": True} if why else _sign_assumptions(expr)
            base = self.make_base(let.name, len(info.axes), **facts)
            reads = {str(n.base.label) if isinstance(n, sp.Indexed) else str(n)
                     for n in sp.preorder_traversal(expr) if isinstance(n, (sp.Indexed, sp.Symbol))}
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
        return SymSpec(
            driven=driven,
            posts=tuple(posts),
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


def lower_to_sympy(checked: CheckedSpec) -> SymSpec:
    return _Lowering(checked).run()
