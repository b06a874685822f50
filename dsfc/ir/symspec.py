"""The SymPy IR: what lowering produces and every later pass reads."""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..lang.check import CheckedSpec
from ..lang.errors import Span


def at_indices(expr: sp.Expr, index: tuple[sp.Symbol, ...], indices: tuple[sp.Expr, ...]) -> sp.Expr:
    """``expr`` (over the index symbols ``index``) at ``indices``: ``let x[c] = sum(j, W[c, j] u[j])`` read as
    ``x[j]`` is ``sum(j', W[j, j'] u[j'])``. A sum's bound variable that occurs in ``indices`` is renamed first;
    a plain ``subs`` would capture it (``sum(j, W[j, j] u[j])``, a diagonal read where a projection was meant)."""
    expr = sp.S(expr)
    outer = set().union(*[sp.S(i).free_symbols for i in indices]) if indices else set()
    if outer and expr.has(sp.Sum):
        taken = outer | expr.free_symbols | {v for n in sp.preorder_traversal(expr) if isinstance(n, sp.Sum)
                                             for v, *_ in n.limits}

        names = {x.name for x in taken}

        def fresh(v: sp.Symbol) -> sp.Symbol:
            k = 1
            while f"{v.name}_{k}" in names:
                k += 1
            names.add(f"{v.name}_{k}")
            return sp.Symbol(f"{v.name}_{k}", **v.assumptions0)

        def rename(e):
            if not e.args:
                return e
            e = e.func(*[rename(a) for a in e.args])
            if isinstance(e, sp.Sum):
                clash = {v: fresh(v) for v, *_ in e.limits if v in outer}
                if clash:
                    e = sp.Sum(e.function.xreplace(clash), *[(clash.get(v, v), lo, hi) for v, lo, hi in e.limits])
            return e

        expr = rename(expr)
    return expr.subs(dict(zip(index, indices)), simultaneous=True)


def fresh_name(stem: str, taken: set[str]) -> str:
    """``stem``, or ``_stem``, ``__stem``, ... : the first not in ``taken``, which it joins (names a pass adds)."""
    name = stem
    while name in taken:
        name = "_" + name
    taken.add(name)
    return name


def tensor_names(expr: sp.Expr) -> set[str]:
    """The names of the tensors ``expr`` reads (indexed entries and scalar symbols; index symbols and dims too, which
    callers filter by the names they look for)."""
    return {str(n.base.label) if isinstance(n, sp.Indexed) else str(n)
            for n in sp.preorder_traversal(sp.S(expr)) if isinstance(n, (sp.Indexed, sp.Symbol))}


def read_closure(lets, roots) -> set[str]:
    """The names ``roots`` read, directly or through any chain of ``lets`` (SymLets; the roots included): each let
    reached adds what its definition reads, its own index symbols aside. Callers keep the names they look for (the
    lets a kernel must compute, the params a layer uses)."""
    by_name = {let.tensor.name: let for let in lets}
    read, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in read:
            continue
        read.add(name)
        let = by_name.get(name)
        if let is not None:
            own = {str(i) for i in let.index}
            todo += [n for e in let.definition for n in tensor_names(e) if n not in own and n not in read]
    return read


class DimError(ValueError):
    """Dim values that break a derived dim (a // that does not divide exactly)."""


@dataclass(frozen=True)
class SymAxis:
    name: str | None
    extent: sp.Expr  # over dim symbols
    size: int  # at the default dims


@dataclass(frozen=True)
class SymTensor:
    """A named tensor of the spec. ``base`` is an IndexedBase, or a Symbol for a scalar."""

    kind: str  # "input" | "state" | "output" | "param" | "let"
    name: str
    base: sp.Basic
    axes: tuple[SymAxis, ...]
    span: Span

    def shape(self) -> tuple[sp.Expr, ...]:
        return tuple(a.extent for a in self.axes)


@dataclass(frozen=True)
class SymInit:
    kind: str  # "expr" | "normal" | "uniform" | "log_uniform" | "dt_bias" | "zeros" | "ones" | "default"
    expr: sp.Expr | None  # for "expr": over the param's index symbols and dims
    args: tuple[sp.Expr, ...]
    index: tuple[sp.Symbol, ...]  # the param's index symbols (for "expr")


@dataclass(frozen=True)
class SymParam:
    tensor: SymTensor
    init: SymInit


@dataclass(frozen=True)
class FeatureMap:
    """``taylor(a, body)``: the order-p Taylor feature map of exp over the vector ``body`` (index ``var``, length
    ``length``), phi_p(x) = concat_{r=0..p} (x / length^(1/4))^(x)r / sqrt(r!), flattened row-major, so that
    phi_p(x) . phi_p(y) = sum_{r<=p} (x.y / sqrt(length))^r / r!. Its values lie on the let's axis ``axis`` (a
    feature range of extent taylor(length, order)); ``order`` is ``sympy.oo`` for exp itself (never materialised).
    ``body`` is over the let's other index symbols and ``var``."""

    kind: str  # "taylor"
    var: sp.Symbol
    length: sp.Expr
    order: sp.Expr
    body: sp.Expr
    axis: int

    @property
    def infinite(self) -> bool:
        return self.order is sp.oo


@dataclass(frozen=True)
class SymLet:
    """A per-step quantity. ``running`` marks a quantity over time (its value at t depends on earlier steps):

    - ``"cumsum"``: z_t = z_(t-1) + args[0]_t, z_(-1) = 0 (or the carried state);
    - ``"scan"``:   z_t = args[0]_t * z_(t-1) + args[1]_t (a decayed running sum);
    - ``"prev"``:   z_t = args[0]_(t-1); at t = 0 the carried state, or when there is none args[1] (a start value
      fixed over time, ``prev(x, s)``) if given, else args[0]_0;
    - ``"window"``: z_t[..., k] = args[0]_(t-K+1+k) along the let's last axis (extent K), zeros (or the carried
      window) before the start: the input of a causal short convolution.
    For a running let ``expr`` is a placeholder symbol and ``args`` holds the per-step expressions.
    """

    tensor: SymTensor
    index: tuple[sp.Symbol, ...]
    expr: sp.Expr
    time_varying: bool
    running: str | None = None
    args: tuple[sp.Expr, ...] = ()
    feature: FeatureMap | None = None  # a feature-map let: ``expr`` is a placeholder, the map is here
    positive_reason: str | None = None  # why the let is provably positive when SymPy cannot see it (kernel sums)

    def value_at(self, indices: tuple[sp.Expr, ...], expr: sp.Expr | None = None) -> sp.Expr:
        """The let's expression (or ``expr``, one over the let's index symbols) at ``indices`` (``at_indices``)."""
        return at_indices(self.expr if expr is None else expr, self.index, tuple(indices))

    @property
    def definition(self) -> tuple[sp.Expr, ...]:
        """The expressions the let's value is computed from (its arguments, feature-map body, or expression)."""
        if self.running:
            return self.args
        if self.feature is not None:
            return (self.feature.body,)
        return (self.expr,)


@dataclass(frozen=True)
class SymMatrix:
    """One DSF matrix in index form: ``entry`` over the row and column index symbols."""

    name: str  # "A" | "B" | "C" | "D"
    rows: tuple[sp.Symbol, ...]
    cols: tuple[sp.Symbol, ...]
    row_extents: tuple[sp.Expr, ...]
    col_extents: tuple[sp.Expr, ...]
    entry: sp.Expr
    span: Span


@dataclass(frozen=True)
class SymIndexUse:
    """A checked subscript (lang/check.py IndexUse) in SymPy: ``subscript`` over the index symbols of ``ranges``
    (symbol -> extent over dims) must lie in [0, axis_extent). ``text``: the subscript as the spec writes it.
    ``bare``: the spec writes a lone index name (``y[h, b]``), whose range must equal the axis; SymPy folds
    ``b + 0`` or ``b * 1`` to ``b`` too, but the checker reads those as compound subscripts, range-checked only."""

    tensor: str
    position: int
    subscript: sp.Expr
    axis_extent: sp.Expr
    ranges: tuple[tuple[sp.Symbol, sp.Expr], ...]
    text: str
    span: Span
    bare: bool = True


@dataclass(frozen=True)
class DimDomain:
    """A sub-expression of dims only that the spec's maths needs inside a domain: a divisor nonzero (``/ (H - 1)``,
    ``^ -1``), the argument of a log positive, of a sqrt or a fractional power nonnegative. The spec checker tested
    it at the default dims; the generated constructor tests it at the dims the module is built with (outside its
    domain every output would be inf or NaN). ``text``: the sub-expression as the spec writes it."""

    expr: sp.Expr
    need: str  # "nonzero" | "positive" | "nonnegative"
    role: str  # "a divisor", "the argument of log", ...: for messages
    text: str
    span: Span
    effect: str = "every output would be inf or NaN"  # what breaks outside the domain, for messages

    def holds(self, value: sp.Expr) -> bool:
        """Whether ``value`` (the expression at some dims: a number) lies in the domain."""
        v = float(value)  # SymPy's Float(0.0) != 0 is True: compare as a float
        return {"nonzero": v != 0, "positive": v > 0, "nonnegative": v >= 0}[self.need]


@dataclass(frozen=True)
class SymSpec:
    checked: CheckedSpec
    model: str
    description: str
    dims: dict[str, sp.Symbol]
    dim_defs: dict[str, sp.Expr]  # derived dims: name -> expression over free dims
    dim_defaults: dict[str, int]
    free_dims: tuple[str, ...]
    input: SymTensor
    state: SymTensor
    output: SymTensor
    params: tuple[SymParam, ...]
    lets: tuple[SymLet, ...]  # topological order
    matrices: dict[str, SymMatrix]  # D may be absent
    readout: str
    driven: SymTensor | None = None  # what B and D multiply: the input or a let (``drive x``)
    posts: tuple[SymLet, ...] = ()  # post-ops after the core, in order; the last is the layer output
    index_uses: tuple[SymIndexUse, ...] = ()  # every subscript the checker tested (at the default dims)
    dim_domains: tuple[DimDomain, ...] = ()  # dims-only divisors and log / sqrt arguments (checked at the defaults)
    # the output, C and D as the spec wrote them, where a pass rewrote the core's (ir/gathered_reads.py,
    # ir/out_projection.py) and moved part of C into ``added_posts`` leading posts: the module's dsf_matrices show the
    # spec's matrices, its reference backend skips those posts, and ``post=False`` still applies them
    written: tuple[SymTensor, SymMatrix, SymMatrix | None] | None = None
    added_posts: int = 0
    # the state as the spec declared it, where ir/unflatten.py split a flat state axis into virtual ones: the module's
    # initial and final states keep this shape (a row-major reshape of the core's)
    state_view: SymTensor | None = None

    @property
    def layer_output(self) -> SymTensor:
        return self.posts[-1].tensor if self.posts else self.output

    @property
    def path(self) -> str:
        return self.checked.spec.path

    @property
    def tensors(self) -> dict[str, SymTensor]:
        out = {t.name: t for t in (self.input, self.state, self.output)}
        out.update({p.tensor.name: p.tensor for p in self.params})
        out.update({let.tensor.name: let.tensor for let in self.lets})
        out.update({post.tensor.name: post.tensor for post in self.posts})
        return out

    def let(self, name: str) -> SymLet | None:
        return next((x for x in self.lets if x.tensor.name == name), None)

    def let_read(self, e: sp.Basic) -> tuple[SymLet, tuple[sp.Expr, ...]] | None:
        """The let ``e`` reads and at which indices: ``f[c]`` (an Indexed) or ``s`` (a scalar let is a Symbol, not
        an Indexed: passes that looked for Indexed reads only skipped scalar lets); None for anything else."""
        if isinstance(e, sp.Indexed):
            let = self.let(self.base_name(e.base))
            return (let, tuple(e.indices)) if let is not None else None
        if isinstance(e, sp.Symbol):
            let = self.let(str(e))
            return (let, ()) if let is not None and not let.index else None
        return None

    def inline_product_lets(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` with every read of a let that only names a product (of let, param and input entries, scalar lets
        and numbers: ``bk = beta * k``, ``be = 0.9 * al * bi``; no sum, no function; not running, not a feature map)
        replaced by its definition, to a fixed point. Such a let is notation: the rank-1 prover must see ``beta k k``
        however it is spelt, and the delta rule's read vector must cancel a scale the product carries."""
        def product_let(e):
            read = self.let_read(e)
            if read is None or read[0].running or read[0].feature is not None:
                return None
            plain = all(f.is_Number or isinstance(f, (sp.Indexed, sp.Symbol))
                        or (isinstance(f, sp.Pow) and f.exp.is_Number and isinstance(f.base, (sp.Indexed, sp.Symbol)))
                        for f in sp.Mul.make_args(read[0].expr))
            return read[0].value_at(read[1]) if plain else None

        for _ in range(len(self.lets)):
            new = expr.replace(lambda e: product_let(e) is not None, product_let)
            if new == expr:
                break
            expr = new
        return expr

    def base_name(self, base: sp.Basic) -> str:
        return str(base.label) if isinstance(base, sp.IndexedBase) else str(base)

    def in_free_dims(self, expr: sp.Expr, exact_division: bool = False) -> sp.Expr:
        """``expr`` over the free dims only: every derived dim replaced by its definition, to a fixed point (a derived
        dim may read another). ``exact_division``: a ``//`` is read as ``/`` (``G * R`` with ``dim R = H // G`` is
        ``H``), which is exact: the spec checker and the generated constructor refuse dims where it is not."""
        env = {self.dims[k]: sp.S(v) for k, v in self.dim_defs.items()}
        if exact_division:
            env = {k: v.replace(sp.floor, lambda x: x) for k, v in env.items()}
        expr = sp.S(expr)
        for _ in range(len(env) + 1):
            new = expr.subs(env)
            if new == expr:
                break
            expr = new
        return expr

    def subs_dims(self, expr: sp.Expr, values: dict[str, int]) -> sp.Expr:
        """Substitute dims (free and derived) by numbers."""
        env = {self.dims[k]: v for k, v in values.items() if k in self.dims}
        return sp.S(expr).subs(env)

    def dim_values(self, overrides: dict[str, int] | None = None) -> dict[str, int]:
        """All dims (free and derived) at the defaults, with free dims overridden."""
        vals = {k: self.dim_defaults[k] for k in self.free_dims}
        vals.update(overrides or {})
        for name, expr in self.dim_defs.items():
            env = {self.dims[k]: x for k, x in vals.items()}
            for node in sp.preorder_traversal(sp.S(expr)):
                # a // in a dim must divide exactly (the spec checker's rule at the defaults, the generated
                # constructor's at any dims): never floor silently
                if isinstance(node, sp.floor) and not sp.S(node.args[0]).subs(env).is_integer:
                    num, den = sp.fraction(sp.together(node.args[0]))
                    raise DimError(f"dim '{name}': {sp.sstr(num)} // {sp.sstr(den)} is not exact at "
                                   + ", ".join(f"{k}={vals[k]}" for k in vals))
            v = sp.S(expr).subs(env)
            if v.is_integer:
                vals[name] = int(v)
            else:  # log(d) / log(2) at d = 8 is 3 but SymPy cannot tell: an integer up to rounding is that integer
                f = float(v)
                vals[name] = int(round(f)) if abs(f - round(f)) <= 1e-9 * abs(f) else f
        return vals

    @property
    def running_lets(self) -> tuple[SymLet, ...]:
        return tuple(let for let in self.lets if let.running)

    def state_size(self) -> sp.Expr:
        return sp.Mul(*self.state.shape())
