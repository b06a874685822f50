"""``analyse_structure(SymSpec) -> StructureReport``: every analysis fact about a spec, in one typed record."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import sympy as sp

from ..ir.symspec import SymSpec
from ..ir.functions import TaylorRange, is_infinite_range
from ..ir.notation import spec_str
from .facts import Family
from .stability import eigenvalue_bound
from .structure import Structure, analyse_structure_of

CHUNK = 64  # chunk length assumed by the chunked algorithms' FLOP counts
DPLR_CHUNK = 32  # chunk length of chunked_dplr_scan (its default), for the DPLR family's FLOP count
QUADRATIC_T = 1024  # context length assumed by the quadratic (attention) family's FLOP count


def _refs(expr: sp.Expr) -> set[str]:
    out = set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Indexed):
            out.add(str(node.base.label))
        elif isinstance(node, sp.Symbol) and not (node.is_integer):
            out.add(str(node))
    return out


def _closure(sym: SymSpec, names: set[str]) -> set[str]:
    lets = {let.tensor.name: let for let in sym.lets}
    seen, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in lets:
            let = lets[n]
            for e in let.definition:
                todo.extend(_refs(e))
    return seen


def _ops(expr: sp.Expr, dims: dict) -> float:
    """Arithmetic operations to evaluate an expression once (a Sum costs extent x body)."""
    if isinstance(expr, sp.Sum):
        n = 1.0
        for _, lo, hi in expr.limits:
            n *= math.inf if is_infinite_range(hi) else float(sp.S(hi - lo + 1).subs(dims))
        return n * (_ops(expr.function, dims) + 1)
    if isinstance(expr, (sp.Indexed, sp.Symbol)) or expr.is_Number:
        return 0.0
    if isinstance(expr, sp.KroneckerDelta):
        return 0.0
    own = max(len(expr.args) - 1, 1) if isinstance(expr, (sp.Add, sp.Mul)) else 1
    return own + sum(_ops(a, dims) for a in expr.args)


@dataclass(frozen=True)
class StructureReport:
    model: str
    a_kind: str
    a_axes: dict  # {"diagonal": [...], "mixed": [...], "decay depends on": [...]}
    a_time_varying: bool
    a_low_rank: bool
    a_complex_diagonal: bool  # 2x2 rotation-scaling blocks: a complex diagonal written in real form
    b_form: str
    c_form: str
    d_present: bool
    coupling: tuple[str, ...]
    coupling_params: tuple[str, ...]
    eigen_bound: str
    eigen_interval: str | None
    eigen_reason: str
    time_invariant: bool
    state_shape: tuple[str, ...]
    state_size: str  # symbolic N
    state_size_default: int | None  # None: infinite (a feature range of exp); the state is a growing KV cache
    state_bytes_default: int | None  # fp32 recurrent state per sequence at the default dims (None: grows with T)
    flops_per_token: float  # at the default dims, for the chosen algorithm
    family: str
    family_reason: str
    kv_cache: str | None = None  # quadratic family: what the state holds per token instead of N
    feature_note: str | None = None  # how a finite feature range in N grows: taylor(K, p) = sum_(r<=p) K^r
    state_view: str | None = None  # the state as declared, where a flat axis was split (ir/unflatten.py)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=list)

    @property
    def state_size_text(self) -> str:
        """``N = <formula> = <value>``, or ``<formula> = inf`` for an infinite feature state."""
        return f"{self.state_size} = {self.state_size_default:,}" if self.state_size_default is not None else \
            f"{self.state_size} = inf"

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("model", self.model),
            ("A", f"{self.a_kind}" + (" (identity minus rank-1 blocks)" if self.a_low_rank else "")
             + (" (2x2 rotation-scaling blocks: a complex diagonal)" if self.a_complex_diagonal else "")
             + ("" if not self.a_time_varying else ", input-dependent")),
            ("A axes", ", ".join(f"{k}: {', '.join(v) or '-'}" for k, v in self.a_axes.items())),
            ("B u", self.b_form),
            ("C", self.c_form),
            ("D", "present" if self.d_present else "absent (0)"),
            ("coupling A/B", ", ".join(self.coupling) or "none"),
            ("shared params", ", ".join(self.coupling_params) or "none"),
            ("eigenvalues", f"{self.eigen_bound}" + (f"  {self.eigen_interval}" if self.eigen_interval else "")),
            ("  why", self.eigen_reason),
            ("time-invariant", "yes" if self.time_invariant else "no"),
            ("state", f"[{', '.join(self.state_shape)}]  N = {self.state_size} = {self.state_size_default}"
             if self.state_size_default is not None else
             f"[{', '.join(self.state_shape)}]  N = {self.state_size} (infinite: grows with T as a KV cache)"),
            *([("  feature range", self.feature_note)] if self.feature_note else []),
            *([("  declared", f"{self.state_view} (the module's initial and final states; a row-major reshape)")]
              if self.state_view else []),
            ("state bytes/seq", f"{self.state_bytes_default} (fp32, default dims)" if self.state_bytes_default
             is not None else f"grows with T: a KV cache of {self.kv_cache} (fp32, default dims)"),
            ("FLOPs/token", f"{self.flops_per_token:.3g} (default dims"
             + (f", context T = {QUADRATIC_T})" if self.kv_cache else ")")),
            ("family", self.family),
            ("  why", self.family_reason),
        ]

    def table(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self.rows())


def _axes_text(axes) -> tuple[str, ...]:
    return tuple(f"{x.name or '_'}: {sp.sstr(x.extent)}" for x in axes)


def analyse_structure(sym: SymSpec, structure: Structure | None = None) -> StructureReport:
    st = structure or analyse_structure_of(sym)
    a = st.a
    names = lambda ks: [sym.state.axes[k].name or f"axis{k}" for k in ks]  # noqa: E731
    tv = {let.tensor.name for let in sym.lets if let.time_varying} | {sym.input.name}
    m = sym.matrices
    refs = {k: _refs(v.entry) for k, v in m.items()}
    a_tv = bool(refs["A"] & tv)
    invariant = not any(refs[k] & tv for k in refs)
    params = {p.tensor.name for p in sym.params}
    lets = {let.tensor.name for let in sym.lets}
    # coupling: the lets and params that A's and B's entries both read directly (S6: dt; DeltaNet: beta, k).
    # What they share only through deeper projections is listed separately as shared params.
    coupling = sorted((refs["A"] & refs["B"]) & (params | lets))
    coupling_params = sorted(_closure(sym, refs["A"]) & _closure(sym, refs["B"]) & params)
    product = None
    if st.delta is not None and st.delta.substeps:  # the gated delta product: its factors, k_j and f_j per step
        (r, n), = st.outer.key_rank
        keys = [st.outer.key.subs(r, j) for j in range(n)]
        if st.delta.scaled:  # the gate on the last factor: that sub-step's key is s k_(n-1)
            keys[-1] = sp.cancel(keys[-1] / st.delta.decay)
        product = (st.delta.decay, [(k, st.delta.read.subs(r, j)) for j, k in enumerate(keys)])
    eb = eigenvalue_bound(sym, a, product)

    dims = {sym.dims[k]: v for k, v in sym.dim_values().items()}
    n_sym = sym.state_size()
    n_val = None if is_infinite_range(n_sym) else int(n_sym.subs(dims))
    ext = [0 if is_infinite_range(x.extent) else int(sp.S(x.extent).subs(dims)) for x in sym.state.axes]
    # lets on (or summing over) an infinite feature range are kernelised: their cost is the core's (quadratic)
    finite_lets = [let for let in sym.lets if let.time_varying and not any(
        is_infinite_range(x) for x in let.tensor.shape()) and not any(is_infinite_range(e) for e in let.definition)]
    let_cost = sum(math.prod(int(sp.S(x.extent).subs(dims)) for x in let.tensor.axes)
                   * (sum(_ops(e, dims) for e in let.definition) + 1) for let in finite_lets)
    out_size = math.prod(int(sp.S(x.extent).subs(dims)) for x in sym.output.axes)
    readout = out_size * (_ops(st.readout.ch, dims) + _ops(st.readout.du, dims) + 1)
    cache = None
    if st.family == Family.QUADRATIC:
        kern = st.kernel
        g = math.prod(ext[k] for k in kern.group_axes)
        kk = int(sp.S(kern.key.feature.length).subs(dims))
        vv = math.prod(ext[k] for k in kern.value_axes)
        # per token at context length QUADRATIC_T: scores and weighted values against every cached token
        core = g * QUADRATIC_T * (2 * kk + 2 * vv + 4)
        readout = out_size * _ops(st.readout.du, dims)
        ksym = sp.sstr(kern.key.feature.length)
        gsym = "*".join(sp.sstr(sym.state.axes[k].extent) for k in kern.group_axes) or "1"
        vsym = "*".join(sp.sstr(sym.state.axes[k].extent) for k in kern.value_axes)
        extra = int(kern.log_decay != 0) + int(kern.col_log != 0)  # each key's accumulated log-decay, its col weight
        more = f" + {extra}" if extra else ""
        cache = f"{gsym}*({ksym} + {vsym}{more}) = {g * (kk + vv + extra)} floats per token"
    elif st.family == Family.DIAGONAL_SCAN:
        core = n_val * (_ops(a.decay, dims) + _ops(st.bu, dims) + 2)
    elif st.family == Family.CHUNKED_OUTER:
        o = st.outer
        g = math.prod(ext[k] for k in o.group_axes)
        kk = math.prod(ext[k] for k in o.key_axes)
        vv = math.prod(ext[k] for k in o.value_axes)
        # per token: state update + inter-chunk readout (2KV each) and intra-chunk scores/outputs (2L(K+V)), per
        # sub-step: R_k + R_q - 1 of them for rank axes (several keys or queries per step)
        r_k = math.prod(int(sp.S(n).subs(dims)) for _, n in o.key_rank)
        r_q = math.prod(int(sp.S(sym.output.axes[j].extent).subs(dims)) for j in o.query_rank)
        core = (r_k + r_q - 1) * g * (4 * kk * vv + 2 * CHUNK * (kk + vv)) \
            + g * kk * (_ops(o.key, dims) + _ops(o.query, dims)) \
            + g * vv * (_ops(o.value, dims) + _ops(o.gate, dims)) + (0 if a.decay is None else g * _ops(a.decay, dims))
        if st.rotation is not None:
            # a rotating decay per key pair: rho and the angle per pair, q and k rotated (6 flops a pair each), the
            # phases' cos and sin
            rot = st.rotation
            angle = _ops(rot.theta, dims) if rot.theta is not None else _ops(rot.x, dims) + _ops(rot.y, dims) + 1
            core += g * (kk // 2) * (_ops(rot.rho, dims) + angle + 12 + 3)
        readout = out_size * _ops(st.readout.du, dims)
    elif st.family == Family.CHUNKED_DELTA:
        o = st.outer
        g = math.prod(ext[k] for k in o.group_axes)
        kk = math.prod(ext[k] for k in o.key_axes)
        vv = math.prod(ext[k] for k in o.value_axes)
        L = CHUNK
        # per token (chunk costs / L): F K^T and Q K^T scores (4LK), the triangular solve (L(K+V)), the chunk's
        # K x K transition and K x V injection (2K^2 + 2KV), pseudo-values and outputs (4KV + 2LV), state pass
        # (2K^2V/L); per sub-step for the gated delta product (n of them per token)
        steps = max(1, st.delta.substeps)
        core = steps * g * (4 * L * kk + L * (kk + vv) + 2 * kk * kk + 6 * kk * vv + 2 * L * vv
                            + 2 * kk * kk * vv // L) \
            + g * kk * (_ops(o.key, dims) + _ops(o.query, dims) + _ops(st.delta.read, dims)) \
            + g * vv * (_ops(o.value, dims) + _ops(o.gate, dims)) + g * _ops(st.delta.decay, dims)
        readout = out_size * _ops(st.readout.du, dims)
    elif st.family == Family.CHUNKED_DPLR:
        o, p = st.outer, st.dplr
        g = math.prod(ext[k] for k in o.group_axes)
        kk = math.prod(ext[k] for k in o.key_axes)
        vv = math.prod(ext[k] for k in o.value_axes)
        L = DPLR_CHUNK
        # per token (chunk costs / L): the pairwise per-key decays and the four decayed score matrices (~12LK), the
        # triangular solve and its right side (L(K+2V)), the chunk's K x K transition and injections (2K^2 + 4KV),
        # pseudo-values and outputs (4KV + 4LV), the state pass (2K^2V/L)
        core = g * (12 * L * kk + L * (kk + 2 * vv) + 2 * kk * kk + 8 * kk * vv + 4 * L * vv + 2 * kk * kk * vv // L) \
            + g * kk * (_ops(o.key, dims) + _ops(o.query, dims) + _ops(p.write, dims) + _ops(p.read, dims)
                        + _ops(p.decay, dims)) + g * vv * (_ops(o.value, dims) + _ops(o.gate, dims))
        readout = out_size * _ops(st.readout.du, dims)
    else:
        blocks = math.prod(ext[k] for k in a.diag_axes)
        mflat = math.prod(ext[k] for k in a.mixed_axes)
        core = blocks * mflat * mflat * (2 + _ops(a.block, dims)) + n_val * (_ops(st.bu, dims) + 1)
    c_form = _c_form(st)
    return StructureReport(
        model=sym.model,
        a_kind=a.kind.value,
        a_axes={"diagonal": names(a.diag_axes), "mixed": names(a.mixed_axes),
                "decay depends on": names(a.decay_axes)},
        a_time_varying=a_tv,
        a_low_rank=a.low_rank,
        a_complex_diagonal=eb.reason.startswith("2x2 rotation-scaling"),
        b_form=st.b_form.value,
        c_form=c_form,
        d_present="D" in m,
        coupling=tuple(coupling),
        coupling_params=tuple(coupling_params),
        eigen_bound=eb.bound.value,
        eigen_interval=eb.interval,
        eigen_reason=eb.reason,
        time_invariant=invariant,
        state_shape=_axes_text(sym.state.axes),
        state_view=None if sym.state_view is None else f"[{', '.join(_axes_text(sym.state_view.axes))}]",
        state_size=sp.sstr(n_sym),
        state_size_default=n_val,
        state_bytes_default=None if n_val is None else 4 * n_val,
        flops_per_token=float(let_cost + core + readout),
        family=st.family.value,
        family_reason=st.family_reason,
        kv_cache=cache,
        feature_note="; ".join(
            f"{sp.sstr(t)} = sum_(r<={sp.sstr(t.args[1])}) {sp.sstr(t.args[0])}^r = "
            f"{int(t.subs(dims))}: grows as {sp.sstr(t.args[0])}^{sp.sstr(t.args[1])}"
            for t in sorted(n_sym.atoms(TaylorRange), key=sp.default_sort_key) if t.args[1] is not sp.oo) or None,
    )


def _c_form(st: Structure) -> str:
    """How C reads the state: which state axes map to outputs (delta) and which it contracts."""
    if st.family == Family.QUADRATIC:
        return "query contraction over the infinite feature axis: exp(q.k / sqrt(K)) per cached key (kernelised)"
    if st.outer is not None:
        gate = "" if st.outer.gate == 1 else f", times the output gate {spec_str(st.outer.gate)}"
        return f"query contraction over the key axes (y = S^T q per group){gate}"
    ch = st.readout.ch
    mapped = {s for node in sp.preorder_traversal(ch) if isinstance(node, sp.Indexed)
              for s in node.indices if s in st.readout.out_syms}
    if not ch.has(sp.Sum):
        return "elementwise readout (C diagonal)"
    if mapped:
        return "per-output contraction over the other state axes (I (x) c^T form)"
    return "dense readout (every output reads the whole state)"
