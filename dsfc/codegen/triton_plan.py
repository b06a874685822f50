"""``plan_triton_diagonal(SymSpec, Structure, ...) -> TritonPlan | None``: the printed pieces of the generated Triton
kernels of a diagonal-scan spec (``templates/triton_diagonal.py.jinja`` lays them out).

The recurrence, per state entry s:   h_t[s] = a_t[s] h_(t-1)[s] + bu_t[s],    y_t[o] = sum_red coef_t[s] h_t[s]

1. Lets read by ``a``, ``bu`` or the readout coefficient are inlined (their definitions substituted, to any depth),
   except running lets, feature maps and lets that are a bare sum: the spec's elementwise maths (softplus of a
   projection plus a bias, gates, exp(-8 r softplus(Lambda))) then runs in the kernel's registers, and the torch
   side computes only the projections (``kernel_lets``: the lets the Triton path still needs from ``_lets``).
   Sums inside the result (projections of the input) are hoisted to torch: each distinct sum becomes a tensor over
   the state axes it depends on (a let's sum: over the let's axes, read at the let's read indices), computed in the
   module before the launch (``hoisted``); a sum a bare-sum let already computes reads that let (``ir.let_reuse``).
   Only params, lets, the input and those tensors cross into the kernel. When the inlined maths does not print to
   Triton, the plan is made again without inlining.
2. The readout ``C h`` is split, when it has the form ``sum_red coef[s] h[s]`` with ``h`` subscripted by output and
   summed symbols only, into ``coef`` over the state symbols, the reduced state axes and the output <-> state axis
   map (``_split_readout``). The state is laid out as a ``[R, C]`` matrix, C = the reduced axes, so one tile
   holds whole reductions and the kernel writes ``y``. Otherwise the kernel writes states and torch reads out.
   An elementwise ``D u`` (no sum: ``D[i] u[i]``, a gated skip) over a split readout is also printed into the
   forward kernel (``fwd_skip``: the output axes renamed to the state row axes they map to, the same inlining),
   which adds it to ``y`` when the launcher sets SKIP (inference: no autograd, so no backward term is needed; a
   decoding step saves two torch ops). Otherwise, and under autograd, ``D u`` is added in torch.
3. Every tensor entry (a *leaf*, e.g. ``dt[c]``) becomes a register tile loaded once per step (time-varying) or
   once per program (static); dim-only subexpressions and numbers fp32 does not hold exactly (0.9) become host
   constants (``consts``), loaded in the compute dtype.
4. Backward: ``sympy.diff`` of ``a``, ``bu`` and ``coef`` with respect to every leaf gives each leaf's gradient
   contribution, ``ga * da/dx + g * dbu/dx`` (+ ``gc * dcoef/dx``), with ``g = dL/dh_t``, ``ga = g h_(t-1)``,
   ``gc = dL/dy_t h``.
5. Each group of expressions is CSE'd (``order='canonical'``); temporaries free of time-varying leaves are hoisted
   out of the time loop.

A node the Triton printer cannot print makes the plan fail with a reason; the module is then generated without a
Triton kernel (``_core_triton_available = None``), never with wrong code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..analysis.log_space import complements
from ..analysis.structure import Structure
from ..ir.let_reuse import canonical_bound, reuse_lets
from ..ir.symspec import SymSpec, read_closure, tensor_names
from .block_views import print_over
from .printers import PrinterError, TorchPrinter
from .triton_printer import TritonPrinter
from ..analysis.index_algebra import simplify

SCAN, READ, SKIP = "scan", "readout", "skip"


@dataclass(frozen=True)
class TensorArg:
    """A tensor that crosses into the kernels: pointer, gradient pointer and one stride per dim."""

    name: str  # spec name (or a hoisted sum's)
    code: str  # its value in the wrapper (an env local, u_, or a hoisted temporary)
    ptr: str
    grad: str
    strides: tuple[str, ...]
    batched: bool  # [B, T, *axes]


@dataclass(frozen=True)
class Leaf:
    """One tensor entry the maths reads, loaded into the register tile ``var``."""

    var: str
    tensor: TensorArg
    offset: str  # element offset from the tensor's base pointer (uses b and t when batched)
    shape: str  # "2d" ([BLOCK_R, BLOCK_C]), "rows" ([BLOCK_R, 1]), "cols" ([1, BLOCK_C]) or "scalar"
    group: str  # SCAN (read by a or bu), READ (read by the readout coefficient only) or SKIP (by D u only)

    @property
    def batched(self) -> bool:
        return self.tensor.batched

    @property
    def mask(self) -> str | None:
        return {"2d": "mask", "rows": "mask_r", "cols": "mask_c", "scalar": None}[self.shape]


@dataclass(frozen=True)
class Block:
    """A CSE'd group of expressions: statements before the time loop, statements inside it, the results."""

    invariant: list[tuple[str, str]]
    loop: list[tuple[str, str]]
    results: list[str]


@dataclass(frozen=True)
class Grad:
    leaf: Leaf
    code: str  # the contribution of this step (a tile), already printed


@dataclass
class TritonPlan:
    tensors: list[TensorArg]
    dims: list[tuple[str, str]]  # (kernel argument, wrapper value)
    consts: list[tuple[str, str]]  # (kernel argument, wrapper value: a float from dims)
    hoisted: list[tuple[str, str]]  # (wrapper local, torch code)
    index_lines: list[tuple[str, str]]  # state index tensors from the tile offsets rr, cc
    state_off: str
    out_off: str
    R: str
    C: str
    P: str
    readout: bool  # the readout splits: the kernels have the fused READOUT path
    pre: bool  # pre-update readout (y_t = C h_(t-1))
    leaves: list[Leaf]
    fwd_scan: Block  # results: a, bu
    fwd_read: Block | None  # results: coef
    bwd_scan: Block  # results: a, then one contribution per scan_grads
    bwd_read: Block | None  # results: coef, then one contribution per read_grads
    scan_grads: list[Grad]
    read_grads: list[Grad]
    state_shape: list[str]
    out_shape: list[str]
    du: str | None  # torch code of D u over the output, or None
    fwd_skip: Block | None  # results: D u over the state rows (elementwise D over a split readout), or None
    torch_readout: list[str]  # the unfused path's readout (torch), from `states`
    kernel_lets: frozenset[str] = frozenset()  # the lets the Triton path reads from env (the others are inlined)
    helpers: tuple[str, ...] = field(default_factory=tuple)

    def leaves_of(self, group: str, batched: bool) -> list[Leaf]:
        return [x for x in self.leaves if x.group == group and x.batched == batched]


def _kname(name: str) -> str:
    return name.replace("'", "_prime")


def _cse(exprs, prefix: str, time_varying: set) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr], list[bool]]:
    reps, reduced = sp.cse(exprs, symbols=sp.numbered_symbols(prefix), order="canonical")
    # a CSE symbol that stands for an integer (an index expression such as i + 1) is declared one, so that the
    # printer still sees g ** ea1 as an integer power: a plain symbol printed it as exp(ea1 log g), NaN for g < 0
    typed: dict[sp.Symbol, sp.Symbol] = {}
    for k, (s, e) in enumerate(reps):
        e = e.xreplace(typed)
        if e.is_integer:
            typed[s] = sp.Symbol(s.name, integer=True)
        reps[k] = (typed.get(s, s), e)
    reduced = [r.xreplace(typed) for r in reduced]
    varying = set(time_varying)
    inv = []
    for s, e in reps:
        if e.free_symbols & varying:
            varying.add(s)
            inv.append(False)
        else:
            inv.append(True)
    return reps, reduced, inv


def _split_readout(sym: SymSpec, st: Structure):
    """y[o] = sum_red coef * h[subs], each subscript of h a distinct output or summed symbol? Returns (coef over the
    state row symbols, reduced state axes, out_map: output axis -> state axis) or None. A sum of such terms splits
    when every term reduces the same state axes (SymPy expands ``(j + 1) h[o, j]`` into two sums)."""
    parts = [_split_term(sym, st, term) for term in sp.Add.make_args(st.readout.ch)]
    if not parts or any(p is None for p in parts) or len({p[1:] for p in parts}) != 1:
        return None
    return sp.Add(*[p[0] for p in parts]), parts[0][1], parts[0][2]


def _split_term(sym: SymSpec, st: Structure, ch):
    out_syms, rows = st.readout.out_syms, st.a.rows
    state = sym.state
    outside, summed = [], {}
    e = ch
    while True:
        if isinstance(e, sp.Mul):
            sums = [f for f in e.args if isinstance(f, sp.Sum)]
            if len(sums) != 1 or any(f.has(state.base) for f in e.args if f is not sums[0]):
                break
            outside += [f for f in e.args if f is not sums[0]]
            e = sums[0]
        if not isinstance(e, sp.Sum):
            break
        for var, lo, hi in e.limits:
            if lo != 0:
                return None
            summed[var] = hi + 1
        e = e.function
    body = sp.Mul(*outside, e)
    hs = {n for n in sp.preorder_traversal(body) if isinstance(n, sp.Indexed) and n.base == state.base}
    if len(hs) != 1:
        return None
    h = hs.pop()
    subs = list(h.indices)
    if len(set(subs)) != len(subs) or not all(s in out_syms or s in summed for s in subs):
        return None
    if not all(o in subs for o in out_syms) or not all(v in subs for v in summed):
        return None
    for k, s in enumerate(subs):
        if s in summed and simplify(summed[s] - state.axes[k].extent) != 0:
            return None
    H = sp.Dummy("H")
    lin = body.xreplace({h: H})
    coef = sp.diff(lin, H)
    if coef.has(H) or lin.subs(H, 0) != 0 or coef.has(state.base):
        return None
    coef = coef.xreplace({subs[k]: rows[k] for k in range(len(rows))})
    red = tuple(k for k, s in enumerate(subs) if s in summed)
    out_map = tuple(subs.index(o) for o in out_syms)
    return coef, red, out_map


def plan_triton_diagonal(sym: SymSpec, st: Structure, pr: TorchPrinter, torch_readout: list[str]
                         ) -> tuple[TritonPlan | None, str]:
    """The kernels' plan, or None and the reason when the spec's maths does not print to Triton."""
    # a let's maths the Triton printer cannot write: the let stays a torch-computed stream; a D u it cannot write
    # is added in torch (the kernel is the same without it)
    exc = None
    for inline in (True, False):
        for skip in (True, False):
            try:
                return _plan(sym, st, pr, torch_readout, inline, skip), "Triton kernel: diagonal scan"
            except PrinterError as err:
                exc = err
    return None, f"no Triton kernel: {exc}"


def _inlinable_lets(sym: SymSpec) -> dict:
    """The lets the kernel computes itself: not running (their value depends on earlier steps), not feature maps,
    and not a bare sum (a projection: it would come back as a hoisted torch tensor, the same let computed twice)."""
    return {let.tensor.name: let for let in sym.lets
            if not let.running and let.feature is None and let.expr is not None and not isinstance(let.expr, sp.Sum)}


def _inline_lets(e, sym: SymSpec, lets: dict, hoist_let_sum):
    """``e`` with every read of an inlinable let outside a sum replaced by its definition, to any depth. Reads
    inside a sum stay: the sum is hoisted to torch, which reads the let's tensor (inlined there, a projection of an
    inlined gate would be recomputed inside the einsum). The sums of a let's definition are hoisted over the let's
    own axes *before* its read indices are substituted (``hoist_let_sum(let, sum)`` -> the hoisted tensor's read
    over the let's index symbols): a gate read at r[c], r[(c + 1) % d] and r[0] reads one projection at three
    indices, where substituting first gave three sums and so three projections (three matmuls, three streams)."""
    if isinstance(e, sp.Sum) or not e.args and not isinstance(e, sp.Symbol):
        return e
    read = sym.let_read(e)
    if read is not None and read[0].tensor.name in lets:
        let, indices = read
        value = _replace_sums(complements(let.expr, sym), lambda x: hoist_let_sum(let, x))
        return _inline_lets(let.value_at(indices, value), sym, lets, hoist_let_sum)
    if isinstance(e, (sp.Indexed, sp.Symbol)):
        return e
    return e.func(*[_inline_lets(a, sym, lets, hoist_let_sum) for a in e.args])


def _replace_sums(e, fn):
    """``e`` with each outermost sum ``x`` replaced by ``fn(x)``."""
    if isinstance(e, sp.Sum):
        return fn(e)
    if not e.args or isinstance(e, sp.Indexed):
        return e
    return e.func(*[_replace_sums(a, fn) for a in e.args])


def _needed_lets(sym: SymSpec, roots: set[str]) -> frozenset[str]:
    """The lets that ``roots`` (tensor names) read, directly or through other lets."""
    return frozenset(read_closure(sym.lets, roots) & {let.tensor.name for let in sym.lets})


def _plan(sym: SymSpec, st: Structure, pr: TorchPrinter, torch_readout: list[str], inline: bool, skip: bool
          ) -> TritonPlan:
    rows = st.a.rows
    axes = sym.state.axes
    nax = len(rows)
    split = _split_readout(sym, st)
    if split is not None:
        coef, red, out_map = split
    else:
        coef, red, out_map = None, (nax - 1,), ()
    col_axes = list(red)
    row_axes = [k for k in range(nax) if k not in red]
    row_syms = {rows[k] for k in row_axes}
    col_syms = {rows[k] for k in col_axes}

    dims = {s: f"dim_{_kname(n)}" for n, s in sym.dims.items()}
    dims_code = {s: pr.dims[s] for s in sym.dims.values()}
    indices = {s: f"i_{_kname(str(s))}" for s in rows}
    rr, cc = sp.Symbol("rr", integer=True, nonnegative=True), sp.Symbol("cc", integer=True, nonnegative=True)
    ip = TritonPrinter({}, {**indices, rr: "rr", cc: "cc"}, dims)

    # ---- index tensors from the tile offsets, flat offsets of the state and of y
    index_lines = []
    for flat, ks in ((rr, row_axes), (cc, col_axes)):
        for p, k in enumerate(ks):
            after = sp.Mul(*[axes[q].extent for q in ks[p + 1:]])
            e = sp.floor(flat / after) if p + 1 < len(ks) else flat
            if p > 0:
                e = sp.Mod(e, axes[k].extent)
            index_lines.append((indices[rows[k]], ip.index(e)))

    def flat(syms, extents):
        return sum((s * sp.Mul(*extents[k + 1:]) for k, s in enumerate(syms)), sp.Integer(0))

    state_ext = [a.extent for a in axes]
    state_off = ip.index(flat(list(rows), state_ext))
    # offsets span the whole tile (a tile axis with no state axis on it has BLOCK = 1, but say so to the compiler)
    state_off += "".join(f" + 0 * {v}" for v, ks in (("rr", row_axes), ("cc", col_axes)) if not ks)
    out_off = ip.index(flat([rows[k] for k in out_map], [a.extent for a in sym.output.axes])) if split else "0"
    out_off += " + 0 * rr" if not row_axes or not out_map else ""

    # ---- hoist sums to torch
    hoisted: list[tuple[str, str]] = []
    hoisted_tensors: dict[str, tuple[sp.Basic, bool, int]] = {}
    row_sizes = {s: pr.size(axes[k].extent) for k, s in enumerate(rows)}
    ranges = {s: a.extent for s, a in zip(rows, axes)}
    taken = set(sym.tensors)

    hoisted_of: dict[tuple, tuple] = {}  # canonical (sum, sizes) -> (the tensor's read over _ax0.., the sum)

    def register(e, free, sizes, stem, first, extents):
        """The hoisted tensor of the sum ``e`` over the index symbols ``free`` (sizes: printed extents), read at
        them; the same sum over the same axes is computed once (a let in a and in bu)."""
        # keyed up to the names of the index symbols and bound variables: let r[c] = f(sum(m, W[c, m] u[m])) and
        # let q[i] = g(sum(k, W[i, k] u[k])) read one projection
        canon = {s: sp.Symbol(f"_ax{k}", integer=True) for k, s in enumerate(free)}
        key = (canonical_bound(e.xreplace(canon)), tuple(sizes[s] for s in free))
        if key in hoisted_of:
            return hoisted_of[key][0].xreplace({v: k for k, v in canon.items()})
        name, k = first, 0
        while name in taken:
            k += 1
            name = f"{stem}{k}"
        taken.add(name)
        batched = pr._is_batched(e)
        shape = ", ".join(sizes[s] for s in free)
        lead = "_B, _T" + (", " if free else "") if batched else ""
        code = print_over(pr, sym, e, free, [extents[s] for s in free], {s: sizes[s] for s in free}, tensor=True)
        code = f"({code}).expand({lead}{shape})" if (lead or shape) else code
        hoisted.append((name, code))
        base = sp.IndexedBase(name) if free else sp.Symbol(name)
        hoisted_tensors[name] = (base, batched, len(free))
        hoisted_of[key] = (base[tuple(canon[s] for s in free)] if free else base, e)
        return base[tuple(free)] if free else base

    def hoist(e):
        if isinstance(e, sp.Sum):
            return register(e, [s for s in rows if s in e.free_symbols], row_sizes, "_sum", "_sum0", ranges)
        if not e.args or isinstance(e, sp.Indexed):
            return e
        return e.func(*[hoist(a) for a in e.args])

    def hoist_let_sum(let, e):
        # over the let's own axes, named after it (RG-LRU: r's projection is _r_sum); a sum a bare-sum let computes
        # is read from that let
        ext = dict(zip(let.index, (a.extent for a in let.tensor.axes)))
        e = reuse_lets(e, sym, ext)
        if not isinstance(e, sp.Sum):
            return e
        sizes = {s: pr.size(x) for s, x in ext.items()}
        stem = f"_{_kname(let.tensor.name)}_sum"
        return register(e, [s for s in let.index if s in e.free_symbols], sizes, stem, stem, ext)

    lets = _inlinable_lets(sym) if inline else {}

    def kernel_form(e):
        return hoist(reuse_lets(_inline_lets(sp.S(e), sym, lets, hoist_let_sum), sym, ranges))

    a_e, bu_e = kernel_form(st.a.decay), kernel_form(st.bu)
    coef_e = kernel_form(coef) if split else None
    # D u into the kernel: elementwise only (a sum over the input is a projection, a matmul torch does better), and
    # only where the kernel writes y (a split readout), at the state row that each output entry is read from
    skip_e = None
    if skip and split and st.readout.du != 0 and not st.readout.du.has(sp.Sum):
        to_rows = {o: rows[k] for o, k in zip(st.readout.out_syms, out_map)}
        skip_e = kernel_form(st.readout.du.xreplace(to_rows))

    # ---- tensors and leaves
    kinds = {}  # name -> (its value in the wrapper, batched)
    for p in sym.params:
        kinds[p.tensor.name] = (pr.tensors[p.tensor.name].code, False)
    for let in sym.lets:
        kinds[let.tensor.name] = (pr.tensors[let.tensor.name].code, let.time_varying)
    kinds[sym.input.name] = (pr.tensors[sym.input.name].code, True)
    for name, (_, batched, _) in hoisted_tensors.items():
        kinds[name] = (name, batched)
    order = [p.tensor.name for p in sym.params] + [x.tensor.name for x in sym.lets] + [sym.input.name] + list(
        hoisted_tensors)

    def leaves_in(e, out=None) -> set:
        out = set() if out is None else out
        if isinstance(e, sp.Indexed):
            if str(e.base.label) not in kinds:
                raise PrinterError(f"unknown tensor {e.base.label}")
            out.add(e)
        elif isinstance(e, sp.Symbol):
            if str(e) in kinds and e not in rows:
                out.add(e)
        else:
            for arg in e.args:
                leaves_in(arg, out)
        return out

    scan_leaves = leaves_in(a_e) | leaves_in(bu_e)
    read_leaves = (leaves_in(coef_e) - scan_leaves) if split else set()
    skip_leaves = (leaves_in(skip_e) - scan_leaves - read_leaves) if skip_e is not None else set()
    all_leaves = scan_leaves | read_leaves | skip_leaves

    def tname(x) -> str:
        return str(x.base.label) if isinstance(x, sp.Indexed) else str(x)

    used = sorted({tname(x) for x in all_leaves}, key=order.index)
    tensors: dict[str, TensorArg] = {}
    for name in used:
        code, batched = kinds[name]
        rank = hoisted_tensors[name][2] if name in hoisted_tensors else len(sym.tensors[name].axes)
        k = _kname(name)
        strides = tuple(f"p_{k}_s{i}" for i in range(rank + (2 if batched else 0)))
        tensors[name] = TensorArg(name, code, f"p_{k}", f"g_{k}", strides, batched)

    leaves: list[Leaf] = []
    leaf_sym: dict[sp.Basic, sp.Symbol] = {}
    for group, group_leaves in ((SCAN, scan_leaves), (READ, read_leaves), (SKIP, skip_leaves)):
        for x in sorted(group_leaves, key=lambda x: (order.index(tname(x)), sp.default_sort_key(x))):
            ta = tensors[tname(x)]
            same = sorted((y for y in all_leaves if tname(y) == ta.name), key=sp.default_sort_key)
            var = f"x_{_kname(ta.name)}" + (f"_{same.index(x)}" if len(same) > 1 else "")
            subs = list(x.indices) if isinstance(x, sp.Indexed) else []
            terms = []
            lead = 2 if ta.batched else 0
            if ta.batched:
                terms += [f"b * {ta.strides[0]}", f"t * {ta.strides[1]}"]
            for i, s in enumerate(subs):
                code = ip.index_factor(s)
                if code != "0":
                    terms.append(f"{code} * {ta.strides[lead + i]}")
            free = set().union(*[sp.S(s).free_symbols for s in subs]) if subs else set()
            shape = {(True, True): "2d", (True, False): "rows", (False, True): "cols", (False, False): "scalar"}[
                (bool(free & row_syms), bool(free & col_syms))]
            leaves.append(Leaf(var, ta, " + ".join(terms) or "0", shape, group))
            leaf_sym[x] = sp.Symbol(var, real=True)

    # ---- consts: dim-only value subexpressions and numbers that fp32 does not hold exactly, passed from the host
    # in the compute dtype (a literal such as 0.9 in a kernel is an fp32 constant, even in a float64 kernel)
    consts: list[tuple[str, str]] = []
    const_sym: dict[sp.Expr, sp.Symbol] = {}
    dimset = set(sym.dims.values())

    def const(e, code: str) -> sp.Symbol:
        if e not in const_sym:
            const_sym[e] = sp.Symbol(f"kc{len(consts)}", real=True)
            consts.append((f"kc{len(consts)}", code))
        return const_sym[e]

    def lift(e):
        # e.is_number, not e.is_Number: a constant expression (tanh(1), sqrt(2), pi) printed as is would be evaluated
        # by the kernel in fp32 (tl.sqrt(2), a literal 3.14159...), off by ~5e-8 in a float64 kernel
        if e.is_number and not e.is_Integer and e.is_finite and e.is_real:
            v = float(e)
            with np.errstate(over="ignore"):  # beyond fp32's range: not exact in fp32, so a host constant
                exact = float(np.float32(v)) == v
            return (e if e.is_Number else sp.Float(v)) if exact else const(e, repr(v))
        if e.free_symbols and e.free_symbols <= dimset and not e.is_Integer:
            return const(e, f"float({pr.print(e, (), {})})")
        if not e.args or isinstance(e, (sp.KroneckerDelta, sp.floor, sp.Mod)):
            return e
        return e.func(*[lift(a) for a in e.args])

    def prep(e):
        return lift(e.xreplace(leaf_sym)) if e is not None else None

    a_s, bu_s, coef_s, skip_s = prep(a_e), prep(bu_e), prep(coef_e), prep(skip_e)

    G, GA, GC = sp.Symbol("g", real=True), sp.Symbol("ga", real=True), sp.Symbol("gc", real=True)
    values = {s: s.name for s in leaf_sym.values()}
    values.update({s: s.name for s in const_sym.values()})
    values.update({G: "g", GA: "ga", GC: "gc"})
    tv = {leaf_sym[x] for x in leaf_sym if tensors[tname(x)].batched} | {G, GA, GC}

    helpers: set[str] = set()

    def block(exprs, prefix) -> Block:
        reps, reduced, inv = _cse([lift(e) for e in exprs], prefix, tv)
        vals = dict(values)
        vals.update({s: s.name for s in const_sym.values()})
        vals.update({s: s.name for s, _ in reps})
        tp = TritonPrinter(vals, indices, dims)
        inv_lines = [(s.name, tp.doprint(e)) for (s, e), i in zip(reps, inv) if i]
        loop_lines = [(s.name, tp.doprint(e)) for (s, e), i in zip(reps, inv) if not i]
        results = [tp.doprint(e) for e in reduced]
        helpers.update(tp.helpers)
        return Block(inv_lines, loop_lines, results)

    fwd_scan = block([a_s, bu_s], "fa")  # own prefixes: the chunked backward runs the forward maths beside the backward
    fwd_read = block([coef_s], "fc") if split else None
    fwd_skip = block([skip_s], "fd") if skip_s is not None else None

    scan_grads_e, scan_grad_leaves = [], []
    read_grads_e, read_grad_leaves = [], []
    for leaf in leaves:
        x = sp.Symbol(leaf.var, real=True)
        e = GA * sp.diff(a_s, x) + G * sp.diff(bu_s, x)
        if e != 0:
            scan_grads_e.append(e)
            scan_grad_leaves.append(leaf)
        if split:
            e = GC * sp.diff(coef_s, x)
            if e != 0:
                read_grads_e.append(e)
                read_grad_leaves.append(leaf)
    bwd_scan = block([a_s] + scan_grads_e, "ea")
    bwd_read = block([coef_s] + read_grads_e, "ec") if split else None
    scan_grads = [Grad(leaf, code) for leaf, code in zip(scan_grad_leaves, bwd_scan.results[1:])]
    read_grads = [Grad(leaf, code) for leaf, code in zip(read_grad_leaves, bwd_read.results[1:])] if split else []

    # what the Triton path reads from the torch lets: the kernel's tensors, the hoisted sums, D u, the unfused
    # readout (taken when the reduced axes are too wide for one tile), the posts; and what those lets read
    roots = set(used) | tensor_names(st.readout.du) | tensor_names(st.readout.ch)
    # running lets are always computed by _lets (their last values are part of the final state, read or not): a let
    # they read must be computed too (`let pv = prev(e[c])` with e inlined read None)
    roots |= {let.tensor.name for let in sym.lets if let.running}
    for _, e in hoisted_of.values():
        roots |= tensor_names(e)
    for post in sym.posts:
        for e in post.definition:
            roots |= tensor_names(e)

    out_syms = st.readout.out_syms
    du = None
    if st.readout.du != 0:
        du = pr.print(st.readout.du, out_syms, {s: pr.size(a.extent) for s, a in zip(out_syms, sym.output.axes)})

    def prod(exts):
        return " * ".join(pr.size(e) for e in exts) or "1"

    return TritonPlan(
        tensors=[tensors[n] for n in used],
        dims=[(dims[s], dims_code[s]) for s in sym.dims.values()],
        consts=consts,
        hoisted=hoisted,
        index_lines=index_lines,
        state_off=state_off,
        out_off=out_off,
        R=prod([axes[k].extent for k in row_axes]),
        C=prod([axes[k].extent for k in col_axes]),
        P=prod([a.extent for a in sym.output.axes]),
        readout=split is not None,
        pre=sym.readout == "pre",
        leaves=leaves,
        fwd_scan=fwd_scan,
        fwd_read=fwd_read,
        bwd_scan=bwd_scan,
        bwd_read=bwd_read,
        scan_grads=scan_grads,
        read_grads=read_grads,
        state_shape=[pr.size(a.extent) for a in axes],
        out_shape=[pr.size(a.extent) for a in sym.output.axes],
        du=du,
        fwd_skip=fwd_skip,
        torch_readout=torch_readout,
        kernel_lets=_needed_lets(sym, roots),
        helpers=tuple(sorted(helpers)),
    )
