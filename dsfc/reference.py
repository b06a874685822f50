"""The reference recurrence: ground truth for every test.

It materialises the dense DSF matrices A_t, B_t, C_t, D_t of every step straight from the SymPy IR, with a small
numeric evaluator of SymPy trees (gather for every subscript, broadcast-and-sum for every ``Sum``), and runs

    h_t = A_t h_(t-1) + B_t u_t,     y_t = C_t h_t + D_t u_t

in float64, one step at a time. It deliberately uses none of the structure analysis or the generated code paths.
"""

from __future__ import annotations

import itertools
import math

import sympy as sp
import torch
import torch.nn.functional as F

from .ir.functions import is_infinite_range, slots_for_infinite
from .ir.functions import Elu, Gelu, LogSigmoid, Relu, Sigmoid, Silu, Softplus
from .ir.symspec import SymSpec

_UNARY = {
    sp.exp: torch.exp,
    sp.log: torch.log,
    sp.tanh: torch.tanh,
    sp.sin: torch.sin,
    sp.cos: torch.cos,
    sp.Abs: torch.abs,
    Softplus: F.softplus,
    Sigmoid: torch.sigmoid,
    LogSigmoid: F.logsigmoid,
    Relu: torch.relu,
    Silu: F.silu,
    Elu: F.elu,
    Gelu: F.gelu,
}


SLOTS = "<slots>"  # dims key: the slot count standing for an infinite feature range (the sequence length)


class Evaluator:
    """Evaluate SymPy expressions of a spec over named index axes, in float64.

    ``tensors`` maps a base name to its value: params ``[*shape]``, batched tensors (the input, time-varying lets)
    ``[B, T, *shape]``. ``batched`` names the latter. Results have shape ``[B, T, *axes]`` or ``[*axes]``.
    """

    def __init__(self, sym: SymSpec, dims: dict[str, int], tensors: dict[str, torch.Tensor], batched: set[str]):
        self.sym = sym
        self.dims = {sym.dims[k]: v for k, v in dims.items() if k != SLOTS}
        self.slots = dims.get(SLOTS)  # an infinite feature range is evaluated on this many slots (see _slot_features)
        self.tensors = tensors
        self.batched = batched

    def size(self, expr) -> int:
        v = sp.S(expr).subs(self.dims)
        if self.slots is not None:
            v = slots_for_infinite(v, self.slots)
        if not v.is_Integer:
            raise ValueError(f"extent {expr} is not an integer at dims {self.dims}")
        return int(v)

    def _arange(self, k: int, n: int, rank: int) -> torch.Tensor:
        shape = [1] * rank
        shape[k] = n
        return torch.arange(n).view(shape)

    # integer (subscript) expressions -> long tensors over the axes
    def index(self, e, axes, sizes) -> torch.Tensor | int:
        if isinstance(e, sp.Integer):
            return int(e)
        if isinstance(e, sp.Symbol):
            if e in axes:
                k = axes.index(e)
                return self._arange(k, sizes[k], len(axes))
            if e in self.dims:
                return self.dims[e]
            raise ValueError(f"unbound index {e}")
        if isinstance(e, sp.Add):
            out = 0
            for a in e.args:
                out = out + self.index(a, axes, sizes)
            return out
        if isinstance(e, sp.Mul):
            num, den = 1, 1
            for a in e.args:
                if isinstance(a, sp.Pow) and a.exp == -1:
                    den = den * self.index(a.base, axes, sizes)
                else:
                    num = num * self.index(a, axes, sizes)
            if isinstance(den, int) and den == 1:
                return num
            raise ValueError(f"non-integer subscript {e}")
        if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:  # c * c, folded by SymPy into c**2
            base = self.index(e.base, axes, sizes)
            out = 1
            for _ in range(int(e.exp)):
                out = out * base
            return out
        if isinstance(e, sp.floor):
            inner = e.args[0]
            num, den = sp.fraction(sp.together(inner))
            a, b = self.index(num, axes, sizes), self.index(den, axes, sizes)
            return torch.div(torch.as_tensor(a), b, rounding_mode="floor")
        if isinstance(e, sp.Mod):
            a, b = self.index(e.args[0], axes, sizes), self.index(e.args[1], axes, sizes)
            return torch.remainder(torch.as_tensor(a), b)
        raise ValueError(f"unsupported subscript {e}")

    def _rank_up(self, x: torch.Tensor, batched: bool, rank: int) -> torch.Tensor:
        """View a result so that its trailing dims are the axes: [B, T, *axes] or [*axes]."""
        want = rank + (2 if batched else 0)
        if x.dim() < want:
            if batched:
                x = x.reshape(x.shape[:2] + (1,) * (want - x.dim()) + x.shape[2:])
            else:
                x = x.reshape((1,) * (want - x.dim()) + tuple(x.shape))
        return x

    def evaluate(self, e, axes: tuple, sizes: tuple[int, ...]) -> torch.Tensor:
        """Value of ``e`` at every point of the index grid ``axes`` (sizes given)."""
        f64 = torch.float64
        rank = len(axes)
        if e.is_Number:
            return torch.tensor(float(e), dtype=f64)
        if isinstance(e, sp.Symbol):
            if e in axes or e in self.dims:
                return torch.as_tensor(self.index(e, axes, sizes), dtype=f64)
            name = str(e)
            x = self.tensors[name].to(f64)
            if name in self.batched:  # a scalar time-varying let: [B, T]
                return x.reshape(x.shape + (1,) * rank)
            return x
        if isinstance(e, sp.Indexed):
            name = str(e.base.label)
            subs = [self.index(s, axes, sizes) for s in e.indices]
            subs = [torch.as_tensor(s) for s in subs]
            if subs:
                subs = torch.broadcast_tensors(*subs)
            x = self.tensors[name].to(f64)
            if name in self.batched:
                return self._rank_up(x[(slice(None), slice(None), *subs)], True, rank)
            return self._rank_up(x[tuple(subs)], False, rank)
        if isinstance(e, sp.Add):
            out = self.evaluate(e.args[0], axes, sizes)
            for a in e.args[1:]:
                out = out + self.evaluate(a, axes, sizes)
            return out
        if isinstance(e, sp.Mul):
            out = self.evaluate(e.args[0], axes, sizes)
            for a in e.args[1:]:
                out = out * self.evaluate(a, axes, sizes)
            return out
        if isinstance(e, sp.Pow):
            return torch.pow(self.evaluate(e.base, axes, sizes), self.evaluate(e.exp, axes, sizes))
        if isinstance(e, sp.KroneckerDelta):
            a, b = (torch.as_tensor(self.index(x, axes, sizes)) for x in e.args)
            return (a == b).to(f64)
        if isinstance(e, sp.Sum):
            # SymPy merges nested sums into one Sum with several limits: bind them all, then reduce
            body, body_axes, body_sizes = e.function, axes, sizes
            for var, lo, hi in e.limits:
                if lo != 0:
                    body = body.subs(var, var + lo)
                body_axes, body_sizes = body_axes + (var,), body_sizes + (self.size(hi - lo + 1),)
            k = len(e.limits)
            x = self.evaluate(body, body_axes, body_sizes)
            batched = x.dim() > rank + k
            x = self._rank_up(x, batched, rank + k)
            x = x.expand(*x.shape[: x.dim() - k], *body_sizes[rank:])
            return x.sum(dim=tuple(range(-k, 0)))
        if isinstance(e, (sp.Max, sp.Min)):
            op = torch.maximum if isinstance(e, sp.Max) else torch.minimum
            out = self.evaluate(e.args[0], axes, sizes)
            for a in e.args[1:]:
                out = op(out, self.evaluate(a, axes, sizes))
            return out
        for cls, fn in _UNARY.items():
            if isinstance(e, cls):
                return fn(self.evaluate(e.args[0], axes, sizes))
        if isinstance(e, (sp.floor, sp.Mod)):
            return torch.as_tensor(self.index(e, axes, sizes), dtype=f64)
        raise NotImplementedError(f"reference evaluator: unsupported expression {type(e).__name__}: {e}")


def _full(x: torch.Tensor, batch: tuple[int, int], sizes: tuple[int, ...]) -> torch.Tensor:
    rank = len(sizes)
    if x.dim() == rank + 2:
        return x.expand(*batch, *sizes)
    x = x.reshape((1,) * (rank - x.dim()) + tuple(x.shape)) if x.dim() < rank else x
    return x.expand(*batch, *sizes)


def _with_slots(sym: SymSpec, dims: dict, T: int) -> dict:
    """An infinite feature state is evaluated in the slot basis of the sequence's T steps (no carried cache)."""
    if any(is_infinite_range(a.extent) for a in sym.state.axes):
        return {**dims, SLOTS: T}
    return dims


def evaluate_lets(sym: SymSpec, dims: dict[str, int], params: dict[str, torch.Tensor], u: torch.Tensor,
                  running0: dict[str, torch.Tensor] | None = None):
    """All lets over the whole sequence; returns (tensor table, batched names).

    Running quantities are computed with a plain loop over time from their per-step arguments; ``running0``
    holds their carried values from before t = 0 (default: zero, or for ``prev`` its start value, else the first
    step's own value).
    """
    B, T = u.shape[:2]
    dims = _with_slots(sym, dims, T)
    tensors = {k: v.detach().to(torch.float64) if False else v.to(torch.float64) for k, v in params.items()}
    inp_shape = [Evaluator(sym, dims, {}, set()).size(e) for e in sym.input.shape()]
    tensors[sym.input.name] = u.to(torch.float64).reshape(B, T, *inp_shape)
    batched = {sym.input.name}
    for let in sym.lets:
        ev = Evaluator(sym, dims, tensors, batched)
        sizes = tuple(ev.size(e) for e in let.tensor.shape())
        if let.running:
            args = [_full(ev.evaluate(a, let.index, sizes), (B, T), sizes) for a in let.args]
            start = (running0 or {}).get(let.tensor.name)
            tensors[let.tensor.name] = _run_over_time(let.running, args, start, (B, *sizes))
            if let.running == "prev" and T:
                tensors[f"{let.tensor.name}:last"] = args[0][:, -1]
            batched.add(let.tensor.name)
            continue
        if let.feature is not None:
            tensors[let.tensor.name] = _feature_map(ev, let, sizes, (B, T))
            # an infinite map is a kernel row over the T slots, masked to the past: time-varying even when its
            # vector is not (Aaren's query is a param)
            if let.time_varying or let.feature.infinite:
                batched.add(let.tensor.name)
            continue
        x = ev.evaluate(let.expr, let.index, sizes)
        if let.time_varying:
            x = _full(x, (B, T), sizes)
            batched.add(let.tensor.name)
        else:
            x = x.expand(*sizes) if sizes else x.reshape(())
        tensors[let.tensor.name] = x
    return tensors, batched


def _feature_map(ev: Evaluator, let, sizes, batch) -> torch.Tensor:
    """A Taylor feature-map let, entry by entry: feature number n of order r is the multi-index (a_1..a_r) in
    row-major order, with value prod_i x[a_i] / (K^(r/4) sqrt(r!)). Written as a plain loop over multi-indices
    (not the runtime's outer-product recursion) so that the two are independent."""
    fm = let.feature
    if fm.infinite:
        return _slot_features(ev, let, batch)
    outer = tuple(s for k, s in enumerate(let.index) if k != fm.axis)
    outer_sizes = tuple(n for k, n in enumerate(sizes) if k != fm.axis)
    length, order = ev.size(fm.length), ev.size(fm.order)
    x = ev.evaluate(fm.body, outer + (fm.var,), outer_sizes + (length,))
    x = _full(x, batch, outer_sizes + (length,)) if let.time_varying else \
        x.reshape((1,) * (len(outer_sizes) + 1 - x.dim()) + tuple(x.shape)).expand(*outer_sizes, length)
    feats = []
    for r in range(order + 1):
        scale = 1.0 / (length ** (r / 4) * math.sqrt(math.factorial(r)))
        for multi in itertools.product(range(length), repeat=r):
            term = torch.ones_like(x[..., 0])
            for a in multi:
                term = term * x[..., a]
            feats.append(term * scale)
    out = torch.stack(feats, -1)
    return out.movedim(-1, fm.axis - len(let.index))


def _slot_features(ev: Evaluator, let, batch) -> torch.Tensor:
    """An infinite feature map in the basis {phi(k_j)} of the T slots (the paper's bounded-T form): the key map (the
    one B reads) is the one-hot slot t; any other is its kernel row exp(x_t . k_j / sqrt(K)) for j <= t, else 0."""
    sym = ev.sym
    fm = let.feature
    b_reads = {str(n.base.label) for n in sp.preorder_traversal(sym.matrices["B"].entry) if isinstance(n, sp.Indexed)}
    key = next(x for x in sym.lets if x.feature is not None and x.tensor.name in b_reads)
    T = batch[1]

    def vectors(x):
        outer = tuple(s for k, s in enumerate(x.index) if k != x.feature.axis)
        sizes = tuple(ev.size(a.extent) for k, a in enumerate(x.tensor.axes) if k != x.feature.axis)
        length = ev.size(x.feature.length)
        return _full(ev.evaluate(x.feature.body, outer + (x.feature.var,), sizes + (length,)), batch,
                     sizes + (length,)), length

    kv, length = vectors(key)
    if let is key:
        out = torch.eye(T, dtype=torch.float64).reshape((1, T) + (1,) * (kv.dim() - 3) + (T,))
        out = out.expand(*kv.shape[:-1], T)
    else:
        qv, _ = vectors(let)
        s = torch.einsum("bi...k,bj...k->bi...j", qv, kv) / math.sqrt(length)
        past = torch.ones(T, T, dtype=torch.bool).tril().reshape((1, T) + (1,) * (kv.dim() - 3) + (T,))
        out = torch.where(past, torch.exp(s), torch.zeros((), dtype=torch.float64))
    return out.movedim(-1, fm.axis - len(let.index))


def _run_over_time(op: str, args, start, shape) -> torch.Tensor:
    """cumsum / scan / prev over the time axis, one step at a time."""
    T = args[-1].shape[1]
    out = []
    if op == "window":
        x = args[0][..., 0]  # the argument does not depend on the window axis
        K = shape[-1]
        hist = torch.zeros(shape, dtype=torch.float64) if start is None else start.to(torch.float64).reshape(shape)
        for t in range(T):
            hist = torch.cat([hist[..., 1:], x[:, t].unsqueeze(-1)], -1)
            out.append(hist)
        return torch.stack(out, 1) if out else args[0]
    if op == "prev":
        x = args[0]  # args[1]: prev(x, s)'s start value s (fixed over time), z_0 when nothing is carried
        first = args[1] if len(args) > 1 else x
        z = (first[:, 0] if T else None) if start is None else start.to(torch.float64).reshape(shape)
        for t in range(T):
            out.append(z)
            z = x[:, t]
    else:
        z = torch.zeros(shape, dtype=torch.float64) if start is None else start.to(torch.float64).reshape(shape)
        for t in range(T):
            z = (args[0][:, t] * z if op == "scan" else z) + args[-1][:, t]
            out.append(z)
    return torch.stack(out, 1) if out else args[-1]


def running_finals(sym: SymSpec, tensors) -> dict[str, torch.Tensor]:
    """The carried values of running quantities after the last step (for a following call's initial state)."""
    out = {}
    for let in sym.running_lets:
        name = let.tensor.name
        out[name] = tensors[f"{name}:last"] if f"{name}:last" in tensors else tensors[name][:, -1]
    return out


def dense_matrices(sym: SymSpec, dims: dict[str, int], params: dict[str, torch.Tensor], u: torch.Tensor,
                   running0: dict[str, torch.Tensor] | None = None, _tables=None):
    """Dense DSF matrices per step: A [B,T,N,N], B [B,T,N,d], C [B,T,p,N], D [B,T,p,d] (float64)."""
    Bsz, T = u.shape[:2]
    dims = _with_slots(sym, dims, T)
    tensors, batched = _tables or evaluate_lets(sym, dims, params, u, running0)
    ev = Evaluator(sym, dims, tensors, batched)
    out = []
    for name in ("A", "B", "C", "D"):
        m = sym.matrices.get(name)
        row_t, col_t = {"A": ("state", "state"), "B": ("state", "input"), "C": ("output", "state"),
                        "D": ("output", "input")}[name]
        by_kind = {"state": sym.state, "input": sym.driven, "output": sym.output}
        rs = tuple(ev.size(e) for e in by_kind[row_t].shape())
        cs = tuple(ev.size(e) for e in by_kind[col_t].shape())
        n_rows, n_cols = math.prod(rs), math.prod(cs)
        if m is None:
            out.append(torch.zeros(Bsz, T, n_rows, n_cols, dtype=torch.float64))
            continue
        x = ev.evaluate(m.entry, m.rows + m.cols, rs + cs)
        out.append(_full(x, (Bsz, T), rs + cs).reshape(Bsz, T, n_rows, n_cols))
    return tuple(out)


def apply_posts(sym: SymSpec, dims, tables, y: torch.Tensor) -> torch.Tensor:
    """Post-ops after the core, evaluated like lets with the core output as one more time-varying tensor."""
    tensors, batched = dict(tables[0]), set(tables[1])
    Bsz, T = y.shape[:2]
    ev = Evaluator(sym, dims, tensors, batched)
    tensors[sym.output.name] = y.reshape(Bsz, T, *[ev.size(e) for e in sym.output.shape()])
    batched.add(sym.output.name)
    for post in sym.posts:
        ev = Evaluator(sym, dims, tensors, batched)
        sizes = tuple(ev.size(e) for e in post.tensor.shape())
        tensors[post.tensor.name] = _full(ev.evaluate(post.expr, post.index, sizes), (Bsz, T), sizes)
        batched.add(post.tensor.name)
    return tensors[sym.posts[-1].tensor.name].reshape(Bsz, T, math.prod(sizes))  # sizes: the last post's


def reference_forward(
    sym: SymSpec,
    dims: dict[str, int],
    params: dict[str, torch.Tensor],
    u: torch.Tensor,
    initial_state=None,
):
    """Run the DSF recurrence step by step in float64. Returns (y [B,T,p], final state).

    The state is the flat h [B, N]; for specs with running quantities both ``initial_state`` and the returned final
    state are dicts ``{"h": h, <running let>: value}``.
    """
    running0 = None
    if isinstance(initial_state, dict):
        running0 = {k: v for k, v in initial_state.items() if k != "h"}
        initial_state = initial_state.get("h")
    dims = _with_slots(sym, dims, u.shape[1])
    if SLOTS in dims and (initial_state is not None or running0):
        raise ValueError("reference: an infinite feature state is evaluated from the start of a sequence "
                         "(run the prefix and the continuation together)")
    tables = evaluate_lets(sym, dims, params, u, running0)
    A, Bm, C, D = dense_matrices(sym, dims, params, u, _tables=tables)
    Bsz, T = u.shape[:2]
    N = A.shape[-1]
    # the driven input: the raw input, or the let named by 'drive'
    u64 = tables[0][sym.driven.name].to(torch.float64)
    u64 = u64.expand(Bsz, T, *u64.shape[2:]) if sym.driven.name in tables[1] else u64.expand(Bsz, T, *u64.shape)
    u64 = u64.reshape(Bsz, T, math.prod(Evaluator(sym, dims, {}, set()).size(e) for e in sym.driven.shape()))
    if initial_state is None:
        h = torch.zeros(Bsz, N, dtype=torch.float64)
    else:
        h = initial_state.to(torch.float64).reshape(Bsz, N)
    ys = []
    for t in range(T):
        h_prev = h
        h = torch.einsum("bij,bj->bi", A[:, t], h) + torch.einsum("bij,bj->bi", Bm[:, t], u64[:, t])
        read = h_prev if sym.readout == "pre" else h
        ys.append(torch.einsum("bij,bj->bi", C[:, t], read) + torch.einsum("bij,bj->bi", D[:, t], u64[:, t]))
    # T = 0: an empty y that is still a function of the inputs (as the generated module's is), so that a backward
    # through it gives zero gradients instead of 'does not require grad'
    y = torch.stack(ys, 1) if ys else torch.einsum("btij,btj->bti", D, u64)
    if sym.posts:
        y = apply_posts(sym, dims, tables, y)
    if sym.running_lets:
        finals = running_finals(sym, tables[0]) if T else dict(running0 or {})
        return y, {"h": h, **finals}
    return y, h
