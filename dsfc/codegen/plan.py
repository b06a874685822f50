"""``plan_module(SymSpec, Structure, StructureReport) -> ModulePlan``: every printed piece the template lays out.

The template only places these strings; which algorithm runs is decided here from the structure report.
"""

from __future__ import annotations

import builtins
import keyword
import re
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field

import sympy as sp

from ..analysis.dim_conditions import ExtentMatch, dim_conditions
from ..analysis.facts import Family
from ..analysis.log_space import complements, exact_log, hoist_complement_sums, log_of, telescoping_gauge
from ..analysis.report import StructureReport
from ..analysis.stability import IntervalProver
from ..analysis.structure import Structure, pair_blocks, rotation_parts
from ..ir.functions import Elu1p, Expm1, TaylorRange
from ..ir.let_reuse import reuse_lets
from ..ir.symspec import SymSpec, read_closure, tensor_names
from ..runtime import checks as _rt_checks, kernel_form as _rt_kernel_form
from ..lang.errors import SpecError, SpecErrors
from .block_views import enable_block_reads, print_over
from .printers import PrinterError, TensorRef, TorchPrinter
from .triton_plan import TritonPlan, plan_triton_diagonal

# Names the generated module itself uses at module or function scope.
_RESERVED = {"torch", "F", "nn", "math", "axis", "cached_index", "diagonal_scan", "chunked_outer_scan",
             "chunked_outer_triton", "chunked_delta_scan", "chunked_delta_triton", "chunked_dplr_scan", "dt_bias_",
             "chunked_dplr_triton", "self", "taylor_dim", "taylor_features", "rank_substeps", "rank_readouts",
             "kernel_matrix",
             "run_compiled_chunks", "run_compiled_lets", "use_compiled_chunks",
             "initial_state", "output_final_state", "state", "u_t", "u",
             # locals and arguments of the generated methods that spec names share a scope with
             "h0", "env", "out", "m", "running0", "running_final", "factory", "device", "dtype", "backend",
             # members of the generated class: a param or dim is stored as self.<name> and must not replace them
             "forward", "step", "dsf_matrices", "kernel_form", "driven_input", "reset_parameters", "training",
             "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile",
             "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "get_buffer",
             "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia",
             "named_buffers", "named_children", "named_modules", "named_parameters", "parameters",
             "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
             "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
             "register_load_state_dict_pre_hook", "register_module", "register_parameter",
             "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
             "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "type", "xpu", "zero_grad",
             # the runtime helpers a generated module imports and its methods call: a let named expm1 (exp(x) - 1)
             # was a local of _lets, read before it was bound when the printer wrote expm1(...) for another let
             "BACKENDS", "CACHE_COLS", "CACHE_DECAY", "CACHE_KEYS", "CACHE_VALUES", "check_extent_match",
             "check_finite_input",
             "values_hidden", "check_kv_cache", "check_running_state", "check_subscript", "check_subscript_values",
             "empty_output", "step_state_errors", "elu1p", "expm1", "l2_norm", "inv_l2_norm", "fold_decay_sign",
             "log_abs_decay",
             "kernel_attention", "kernel_log_sum", "triton_kernels_for", "softmax_kernel_for",
             "softmax_attention_torch", "block_scan", "block_scan_triton",
             "rotation_scan", "rotate_pairs", "rotation_phases", "pair_angle", "pair_modulus",
             "dense_chunk_len",
             "diagonal_scan_triton", "register_kernels", "owns_storage", "triton", "tl",
             "OffsetLimitError"}  # (defined in runtime.dispatch, imported through runtime.checks)
# every public name of the runtime modules the generated code imports from, so a helper added there is reserved with
# it (a param named check_dense_matrices was read before assignment in dsf_matrices, a dim named check_tensor_kind
# shadowed the function in _check_input: "'int' object is not callable")
_RESERVED |= {name for mod in (_rt_checks, _rt_kernel_form) for name, obj in vars(mod).items()
              if not name.startswith("_") and getattr(obj, "__module__", None) == mod.__name__}
# class attributes of the generated module: a param named check_finite was "KeyError: attribute 'check_finite'
# already exists" in the constructor
_RESERVED |= {"check_finite"}
# Python's builtins: every spec name is a local of some generated method (dims in all of them), and the methods call
# super, int, isinstance, tuple, dict, ... (a dim named super was "TypeError: 'int' object is not callable")
_RESERVED |= {name for name in dir(builtins) if not name.startswith("_")}


def py_name(name: str) -> str:
    """The Python identifier of a spec name (param, let, post, dim, input).

    Safe names are kept. Unsafe ones (keywords, the names in ``_RESERVED``, a leading ``_`` that could meet the
    generated module's own ``_B``, ``_dtype``, ``_y``, ...) get a trailing ``_``, and so does every name that already
    ends in ``_``: kept names never end in ``_`` and renamed ones always do, so two spec names never meet, and the
    module's own helpers may end in ``_`` (``u_``, ``dt_bias_``, ``<let>_now_``) without meeting a spec name.
    Primes (``c'``, allowed in spec names, not in Python) become ``_p`` per prime plus the trailing ``_``.
    """
    base = name.rstrip("'")
    if base != name:
        return f"{base}_{'p' * (len(name) - len(base))}_"
    if keyword.iskeyword(name) or name in _RESERVED or name.startswith("_") or name.endswith("_"):
        return name + "_"
    return name


def constructor_kwargs(dims: dict) -> dict:
    """Spec dim values -> keyword arguments of the generated constructor (dims named like ``self`` or ``dtype`` are
    renamed there by py_name)."""
    return {py_name(k): v for k, v in dims.items()}


@dataclass
class ParamPlan:
    name: str
    attr: str
    shape: list[str]
    init: str  # one statement


@dataclass
class LetPlan:
    name: str
    code: str
    source: str  # the spec's definition, as a comment
    running: str | None = None  # "cumsum" | "scan" | "prev" (see SymLet)
    args: list[str] = field(default_factory=list)
    shape: str = ""  # "_B, _T, <let axes>"
    window: str = ""  # window(x): the window length (the extent of the let's last axis)
    in_kernel: bool = False  # the Triton kernel computes it (TritonPlan.kernel_lets): _lets(_kernel=True) skips it

    @property
    def carried_shape(self) -> str:
        """The let's own axes after a batch axis, as tuple items: ", E, W" (or "" for a scalar let); the shape of its
        carried value in a state dict is ``(_B{carried_shape},)``."""
        assert self.shape.startswith("_B, _T"), self.shape
        return self.shape.removeprefix("_B, _T")


@dataclass
class ModulePlan:
    model: str
    description: str
    stamp: str
    analysis_table: str
    free_dims: list[tuple[str, int]]
    derived_dims: list[tuple[str | None, str, str | None]]  # (name, code, None) or (None, failing condition, message)
    dim_locals: str
    params: list[ParamPlan]
    param_locals: list[tuple[str, str]]
    lets: list[LetPlan]
    input_name: str
    input_shape: list[str]
    input_size: str
    state_shape: list[str]
    state_size: str
    output_shape: list[str]
    output_size: str
    family: str
    core: list[str]  # body lines of _core (after lets), computing y and final
    matrices: list[tuple[str, str, list[str], list[str]]]  # (name, code, row shape, col shape)
    first_param: str | None
    pre_readout: bool
    step_body: list[str] = field(default_factory=list)  # diagonal family: one step, for the compiled chunk path
    time_varying: list[str] = field(default_factory=list)  # env keys that carry a time axis
    chunk_inputs: list[str] = field(default_factory=list)  # params and lets the step body reads
    dim_checks: list[str] = field(default_factory=list)  # body of _check_subscripts: one call per subscript check

    @property
    def chunk_time_varying(self) -> list[bool]:
        """Per argument of ``_diagonal_chunk`` after h0 (chunk_inputs, then the input): sliced along time?"""
        return [n in self.time_varying for n in self.chunk_inputs] + [True]

    @property
    def dim_check_helpers(self) -> list[str]:
        """The runtime helpers (dsfc/runtime/checks.py) that ``dim_checks`` call: what the module imports."""
        helpers = ("check_extent_match", "check_subscript", "check_subscript_values")
        return [h for h in helpers if any(line.startswith(f"{h}(") for line in self.dim_checks)]

    @property
    def env_locals(self) -> list[str]:
        """Names the methods unpack from the env dict of ``_lets``: params (cast), then lets."""
        return [name for name, _ in self.param_locals] + [py_name(let.name) for let in self.lets]
    running: list[str] = field(default_factory=list)  # names of running lets (carried in the state dict)
    driven: str = ""  # local name of what B and D multiply (the input or a let)
    driven_size: str = ""
    posts: list[LetPlan] = field(default_factory=list)  # post-ops after the core; the last is the layer output
    output_local: str = "y"
    layer_output_size: str = ""
    # leading posts a pass added (ir/out_projection.py, ir/gathered_reads.py): part of the spec's own core output,
    # whose local name and shape are spec_output_*; user_posts: the spec has post-ops of its own (forward's post=)
    added_posts: int = 0
    spec_output_local: str = "y"
    spec_output_shape: list[str] = field(default_factory=list)
    user_posts: bool = False

    @property
    def spec_output_size(self) -> str:
        return " * ".join(self.spec_output_shape) or self.output_size
    extra_imports: list[str] = field(default_factory=list)
    triton: TritonPlan | None = None  # the generated Triton kernels (diagonal family), or None
    triton_note: str = ""  # why there is (or is not) a Triton kernel
    triton_dense: list[str] | None = None  # dense family: body of _core_triton_dense (block-scan kernel), or None
    triton_outer: list[str] = field(default_factory=list)  # chunked outer family: body of _core_triton_outer
    triton_delta: bool = False  # ... whose scan is the delta rule's (chunked_delta_triton, triton_delta.py)
    triton_dplr: bool = False  # ... or the DPLR scan (chunked_dplr_triton, triton_dplr.py)
    feature_maps: bool = False  # the spec has a feature map or range: import the runtime's Taylor helpers
    helpers: list[str] = field(default_factory=list)  # elu1p / expm1 that log_space.complements wrote
    block_scan: bool = False  # the dense family's small blocks: import the runtime's chunked block scan
    rotation_scan: bool = False  # 2 x 2 rotation-scaling blocks: the runtime's complex diagonal scan
    rotation_pairs: bool = False  # a rotating decay per key pair in the chunked scan: import its rotary helpers
    rotation_xy: bool = False  # ... written as x, y (no cos / sin): import pair_angle, pair_modulus
    dplr_scan: bool = False  # A = diag(d) + x y^T per group: import the runtime's chunked DPLR scan
    signed_decay: bool = False  # a log-space scan of a decay not proven >= 0: import the runtime's sign folding
    zero_decay: bool = False  # a log-space scan of a decay >= 0 that can be exactly 0: import log_abs_decay
    rank_substeps: bool = False  # a rank-R input or R queries per step, run as sub-steps: import their helpers
    delta_substeps: bool = False  # the delta rule over sub-steps (the gated delta product): rank_substep_keys too
    template: str = "module.py.jinja"  # quadratic attention (an infinite feature state) has its own
    quadratic: dict = field(default_factory=dict)  # quadratic family: the printed pieces (see _plan_quadratic)
    # the state's shape at the module's API where a flat state axis was split (ir/unflatten.py, SymSpec.state_view):
    # initial_state and the final state are [batch, *state_view], the core's h0 [batch, *state_shape] (a reshape)
    state_view: list[str] = field(default_factory=list)


def _written(sym: SymSpec) -> tuple:
    """(the output, C, D) as the spec wrote them, for dsf_matrices: the core's unless a pass rewrote them."""
    return sym.written or (sym.output, sym.matrices["C"], sym.matrices.get("D"))


def _written_matrix(sym: SymSpec, name: str):
    written = _written(sym)
    return {"C": written[1], "D": written[2]}.get(name, sym.matrices.get(name))


def _spec_output_fields(sym: SymSpec, pr) -> dict:
    """ModulePlan's added_posts, spec_output_* and user_posts (see there)."""
    out = _written(sym)[0]
    return dict(added_posts=sym.added_posts, spec_output_local=py_name(out.name),
                spec_output_shape=[pr.size(a.extent) for a in out.axes], user_posts=len(sym.posts) > sym.added_posts)


def _src(sym: SymSpec, name: str) -> str:
    let = sym.checked.spec.source.splitlines()
    for s in tuple(sym.checked.lets) + tuple(sym.checked.posts):
        if s.name == name:
            line = let[s.span.line - 1].strip() if s.span.line <= len(let) else ""
            return line
    let = sym.let(name) or next((p for p in sym.posts if p.tensor.name == name), None)
    if let is not None and not let.running:  # a let or post dsfc added (log_space.hoist_complement_sums,
        # ir/out_projection.py)
        return f"(dsfc) {name}[{', '.join(map(str, let.index))}] = {sp.sstr(let.expr)}"
    return ""


def _check_python_names(sym: SymSpec) -> None:
    """Two spec names must not become one Python name. ``py_name`` keeps them apart except for contrived pairs
    (``_x'`` and ``_x_p``, ``x_'`` and ``p_x_``); report those at the second name instead of generating wrong code."""
    from ..lang.errors import SpecError, SpecErrors

    named = [(d.name, d.span) for d in sym.checked.dims]
    named += [(t.name, t.span) for t in sym.tensors.values() if t.kind not in ("state", "output")]
    seen: dict[str, str] = {}
    for name, span in named:
        first = seen.setdefault(py_name(name), name)
        if first != name:
            raise SpecErrors([SpecError(f"{name!r} and {first!r} would both be {py_name(name)!r} in the generated "
                                        "Python module", span, hint=f"rename {name!r}")],
                             sym.checked.spec.path, sym.checked.spec.source)


def _map_expressions(st, fn):
    """``st`` with ``fn`` applied to every expression it holds (the kernel form excepted)."""
    if isinstance(st, sp.Basic):
        return fn(st)
    if dataclasses.is_dataclass(st) and not isinstance(st, type):
        return dataclasses.replace(st, **{f.name: _map_expressions(getattr(st, f.name), fn)
                                          for f in dataclasses.fields(st) if f.name != "kernel"})
    return st


def _for_printing(st, sym: SymSpec):
    """``st`` as both the torch and the Triton paths print it: every ``1 - P`` written without cancellation
    (``log_space.complements``), every sum a let already computes read from the let (``ir.let_reuse``)."""
    ranges = {s: a.extent for s, a in zip(st.a.rows, sym.state.axes)}
    ranges.update({s: a.extent for s, a in zip(st.readout.out_syms, sym.output.axes)})
    return _map_expressions(st, lambda e: reuse_lets(complements(e, sym), sym, ranges))


def _expressions(st):
    """Every expression held by ``st`` and its parts."""
    if isinstance(st, sp.Basic):
        yield st
    elif dataclasses.is_dataclass(st) and not isinstance(st, type):
        for f in dataclasses.fields(st):
            if f.name != "kernel":
                yield from _expressions(getattr(st, f.name))


def plan_module(sym: SymSpec, st: Structure, report: StructureReport, stamp: str) -> ModulePlan:
    _check_python_names(sym)
    # 1 - f for a gate f = a + (1 - a) sigmoid(sum(...)): the sum becomes a let of its own, read by both forms
    sym = hoist_complement_sums(sym, [m.entry for m in sym.matrices.values()])
    st = _for_printing(st, sym)
    dims_code = {v: py_name(k) for k, v in sym.dims.items()}
    tensors: dict[str, TensorRef] = {}
    def extents(t):
        return tuple(a.extent for a in t.axes)

    for p in sym.params:
        tensors[p.tensor.name] = TensorRef(py_name(p.tensor.name), len(p.tensor.axes), False, extents(p.tensor))
    for let in sym.lets:
        tensors[let.tensor.name] = TensorRef(py_name(let.tensor.name), len(let.tensor.axes), let.time_varying,
                                             extents(let.tensor))
    tensors[sym.input.name] = TensorRef(py_name(sym.input.name), len(sym.input.axes), True, extents(sym.input))
    pr = TorchPrinter(tensors, dims_code)
    pr.index_owner = "self"  # every generated method that prints a tensor read has the module as self
    enable_block_reads(pr, sym)

    def sizes(syms, axes):
        return {s: pr.size(a.extent) for s, a in zip(syms, axes)}

    # ---- dims
    free = [(py_name(k), sym.dim_defaults[k]) for k in sym.free_dims]
    derived = []
    for name, expr in sym.dim_defs.items():
        # checks come right before the derived dim they guard, after every dim they read (source order)
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.floor):
                num, den = sp.fraction(sp.together(node.args[0]))
                derived.append((None, f"{pr.index(num, (), {})} % {pr.index(den, (), {})} != 0",
                                f"{sp.sstr(num)} must be divisible by {sp.sstr(den)}"))
        try:
            code = pr.index(expr, (), {})
        except PrinterError:
            # sqrt, log, exp or a real power (dim s = sqrt(d)): computed in floating point, so it must land on a
            # positive integer (up to rounding) and becomes that int; a float size would break every tensor shape
            code = "(" + sp.pycode(sp.S(expr).subs({v: sp.Symbol(c) for v, c in dims_code.items()})) + ")"
            derived.append((None, f"abs({code} - round({code})) > 1e-9 * abs({code}) or round({code}) < 1",
                            f"dim {name} = {sp.sstr(expr)} must be a positive integer"))
            code = f"int(round({code}))"
        else:
            if not _positive_when_exact(expr):  # dim X = d - 5: the front end's rule, at the module's dims
                derived.append((None, f"{code} < 1", f"dim {name} = {sp.sstr(expr)} must be a positive integer"))
        derived.append((py_name(name), code, None))
    # the spec's dims-only divisors and log / sqrt arguments, at the module's dims (checked at the defaults by
    # lower_to_sympy): outside their domain every output would be inf or NaN
    need_code = {"nonzero": "== 0", "positive": "<= 0", "nonnegative": "< 0"}
    for dom in sym.dim_domains:
        code = sp.pycode(sp.S(dom.expr).subs({v: sp.Symbol(c) for v, c in dims_code.items()}))
        derived.append((None, f"({code}) {need_code[dom.need]}", f"{dom.text} (spec line {dom.span.line}), "
                        f"{dom.role}, must be {dom.need}: {dom.effect}"))
    all_dims = [py_name(k) for k in sym.dims]
    dim_locals = ", ".join(all_dims) + (" = " if all_dims else "") + ", ".join(f"self.{d}" for d in all_dims)

    # ---- params
    params = []
    for p in sym.params:
        attr = py_name(p.tensor.name)
        shape = [pr.size(a.extent) for a in p.tensor.axes]
        init = _init_code(pr, p, attr, sizes(p.init.index, p.tensor.axes))
        params.append(ParamPlan(p.tensor.name, attr, shape, init))
    param_locals = [(py_name(p.tensor.name), f"self.{py_name(p.tensor.name)}.to(_dtype)") for p in sym.params]

    dim_checks = _dim_check_lines(sym, pr)
    if st.family == Family.QUADRATIC:
        plan = _plan_quadratic(sym, st, report, stamp, pr, sizes, free, derived, dim_locals, params, param_locals)
        plan.dim_checks = dim_checks
        return plan

    # ---- lets
    lets = []

    def is_tensor(a):
        return a.has(sp.Indexed) or any(str(x) in pr.tensors for x in a.free_symbols)

    for let in sym.lets:
        let_sizes = sizes(let.index, let.tensor.axes)
        shape = ", ".join(["_B", "_T"] + [let_sizes[i] for i in let.index])
        if let.running:
            # an argument that is a plain number (cumsum(1)) still has to be a tensor to expand over time
            args = [pr.print(a, let.index, let_sizes) if is_tensor(a)
                    else f"torch.as_tensor({pr.print(a, let.index, let_sizes)}, dtype=_dtype, device=_dev)"
                    for a in let.args]
            window = let_sizes[let.index[-1]] if let.running == "window" else ""
            lets.append(LetPlan(let.tensor.name, "", _src(sym, let.tensor.name), let.running, args, shape, window))
            continue
        if let.feature is not None:
            lets.append(LetPlan(let.tensor.name, _feature_code(pr, let, let_sizes), _src(sym, let.tensor.name),
                                shape=shape))
            continue
        code = print_over(pr, sym, complements(let.expr, sym), let.index, extents(let.tensor), let_sizes)
        if not let.time_varying:
            # a static let may print as a number or a lower-rank view: give it its declared shape
            full = ", ".join(let_sizes[i] for i in let.index)
            full += "," if len(let.index) == 1 else ""
            code = f"torch.broadcast_to(torch.as_tensor({code}, dtype=_dtype, device=_dev), ({full}))"
        else:
            code = _expanded(code, let.expr, let.index, shape)
        lets.append(LetPlan(let.tensor.name, code, _src(sym, let.tensor.name), shape=shape))

    st_shape = [pr.size(a.extent) for a in sym.state.axes]
    in_shape = [pr.size(a.extent) for a in sym.input.axes]
    out_shape = [pr.size(a.extent) for a in sym.output.axes]
    rows = st.a.rows
    row_sizes = sizes(rows, sym.state.axes)
    out_syms = st.readout.out_syms
    out_sizes = sizes(out_syms, sym.output.axes)
    full_state = ", ".join(st_shape)

    core: list[str] = []
    step_body: list[str] = []
    chunk_inputs: list[str] = []
    triton, triton_note = None, f"no Triton kernel: the {st.family.value} family has none yet"
    triton_dense = None
    triton_outer: list[str] = []
    if st.family == Family.DIAGONAL_SCAN:
        core += [
            "# diagonal A: every state entry follows h = a * h_prev + bu (elementwise linear scan)",
            f"_a = {pr.print_tensor(st.a.decay, rows, row_sizes)}",
            f"_bu = {pr.print_tensor(st.bu, rows, row_sizes)}",
            f"_shape = (_B, _T, {full_state})",
            "_states = diagonal_scan(_a.expand(_shape), _bu.expand(_shape), h0)",
        ]
        readout = _readout_lines(sym, st, pr, out_syms, out_sizes, tensors)
        core += readout
        triton, triton_note = plan_triton_diagonal(sym, st, pr, readout)
        if triton is not None:
            lets = [dataclasses.replace(x, in_kernel=not x.running and x.name not in triton.kernel_lets) for x in lets]
        step_body = _step_lines(sym, st, pr, rows, row_sizes, out_syms, out_sizes)
        used = set().union(*[tensor_names(e) for e in (st.a.decay, st.bu, st.readout.ch, st.readout.du)])
        chunk_inputs = [py_name(n) for n in [p.tensor.name for p in sym.params] + [x.tensor.name for x in sym.lets]
                        if n in used]
    elif st.family == Family.CHUNKED_OUTER:
        core += _outer_lines(sym, st, pr, rows, row_sizes, out_syms, out_sizes)
        # the same streams, scanned by the Triton kernels of dsfc/runtime/triton_outer.py
        triton_outer = _outer_lines(sym, st, pr, rows, row_sizes, out_syms, out_sizes, scan="chunked_outer_triton")
        triton_note = "Triton kernel: chunked outer-product scan"
    elif st.family == Family.CHUNKED_DELTA:
        core += _outer_lines(sym, st, pr, rows, row_sizes, out_syms, out_sizes, scan="chunked_delta_scan")
        # the same streams and chunk-parallel maths, the chunk-to-chunk state recurrence one Triton kernel
        # (dsfc/runtime/triton_delta.py)
        triton_outer = _outer_lines(sym, st, pr, rows, row_sizes, out_syms, out_sizes, scan="chunked_delta_triton")
        triton_note = "Triton kernel: chunked delta rule (its chunk-to-chunk state recurrence)"
    elif st.family == Family.CHUNKED_DPLR:
        core += _outer_lines(sym, st, pr, rows, row_sizes, out_syms, out_sizes, scan="chunked_dplr_scan")
        # the same streams and chunk-parallel maths, the chunk-to-chunk state recurrence one Triton kernel
        # (dsfc/runtime/triton_dplr.py)
        triton_outer = _outer_lines(sym, st, pr, rows, row_sizes, out_syms, out_sizes, scan="chunked_dplr_triton")
        triton_note = "Triton kernel: chunked diagonal-plus-rank-1 scan (its chunk-to-chunk state recurrence)"
    else:
        core += _dense_lines(sym, st, pr, rows, row_sizes, tensors)
        readout = _readout_lines(sym, st, pr, out_syms, out_sizes, tensors)
        core += readout
        # the same blocks, run by the generic block-scan Triton kernel (dsfc/runtime/triton_dense.py)
        triton_dense = _dense_lines(sym, st, pr, rows, row_sizes, tensors, kernel=True) + readout
        triton_note = ("Triton kernel: generic dense block scan (blocks materialised by torch; slow, "
                       "see triton_dense.py)")

    if triton_outer:  # lets the Triton path never reads (GLA's alpha: it scans the decay's log from gk) are skipped
        lets = _skip_unread_lets(sym, lets, triton_outer)
    posts = _post_plans(sym, pr, sizes)
    layer_shape = [pr.size(a.extent) for a in sym.layer_output.axes]

    matrices = []
    by_kind = {"state": sym.state, "input": sym.driven, "output": _written(sym)[0]}
    shapes = {"A": ("state", "state"), "B": ("state", "input"), "C": ("output", "state"), "D": ("output", "input")}
    for name in ("A", "B", "C", "D"):
        rk, ck = shapes[name]
        rshape = [pr.size(a.extent) for a in by_kind[rk].axes]
        cshape = [pr.size(a.extent) for a in by_kind[ck].axes]
        m = _written_matrix(sym, name)
        if m is None:
            code = "None"
        else:
            entry_sizes = {**sizes(m.rows, by_kind[rk].axes), **sizes(m.cols, by_kind[ck].axes)}
            code = pr.print(m.entry, m.rows + m.cols, entry_sizes)
        matrices.append((name, code, rshape, cshape))

    return ModulePlan(
        model=sym.model,
        description=sym.description,
        stamp=stamp,
        analysis_table=report.table(),
        free_dims=free,
        derived_dims=derived,
        dim_locals=dim_locals,
        dim_checks=dim_checks,
        params=params,
        param_locals=param_locals,
        lets=lets,
        input_name=py_name(sym.input.name),
        input_shape=in_shape,
        input_size=" * ".join(in_shape),
        state_shape=st_shape,
        state_size=" * ".join(st_shape),
        state_view=[pr.size(a.extent) for a in sym.state_view.axes] if sym.state_view is not None else [],
        output_shape=out_shape,
        output_size=" * ".join(out_shape),
        family=st.family.value,
        core=core,
        matrices=matrices,
        first_param=params[0].attr if params else None,
        pre_readout=sym.readout == "pre",
        step_body=step_body,
        chunk_inputs=chunk_inputs,
        time_varying=[py_name(let.tensor.name) for let in sym.lets if let.time_varying],
        triton=triton,
        triton_note=triton_note,
        triton_dense=triton_dense,
        triton_outer=triton_outer,
        triton_delta=st.family == Family.CHUNKED_DELTA,
        triton_dplr=st.family == Family.CHUNKED_DPLR,
        running=[let.tensor.name for let in sym.running_lets],  # state dict keys are the spec names
        driven=py_name(sym.driven.name),
        driven_size=" * ".join(pr.size(a.extent) for a in sym.driven.axes),
        posts=posts,
        output_local=py_name(sym.output.name),
        layer_output_size=" * ".join(layer_shape),
        **_spec_output_fields(sym, pr),
        signed_decay=st.family in _LOG_SPACE and _signed_decay(sym, st),
        zero_decay=st.family in _LOG_SPACE and _zero_decay(sym, st),
        rank_substeps=st.family in (Family.CHUNKED_OUTER, Family.CHUNKED_DELTA) and _has_rank(st.outer),
        delta_substeps=bool(st.delta and st.delta.substeps),
        helpers=[name for name, fn in (("elu1p", Elu1p), ("expm1", Expm1))
                 if any(complements(let.expr, sym).has(fn) for let in sym.lets if let.expr is not None)
                 or any(e.has(fn) for e in _expressions(st))] + sorted(pr.helpers),
        feature_maps=any(let.feature is not None for let in sym.lets)
        or any(isinstance(a.extent, sp.Basic) and a.extent.has(TaylorRange) for a in sym.state.axes),
        block_scan=st.family is Family.DENSE_SCAN and _rotation_parts(sym, st) is None
        and (_small_blocks(sym, st) or not _block_size(sym, st).is_Integer),
        rotation_scan=st.family is Family.DENSE_SCAN and _rotation_parts(sym, st) is not None,
        rotation_pairs=st.rotation is not None,
        rotation_xy=st.rotation is not None and st.rotation.theta is None,
        dplr_scan=st.family is Family.CHUNKED_DPLR,
    )


def _feature_code(pr: TorchPrinter, let, let_sizes) -> str:
    """A feature-map let: the vector (the body over the let's other axes and the binder, last) mapped over its last
    axis by the runtime's ``taylor_features``, the features then moved to the let's feature axis."""
    fm = let.feature
    if fm.infinite:
        raise PrinterError(f"the infinite feature map of {let.tensor.name} cannot be materialised")
    outer = tuple(s for k, s in enumerate(let.index) if k != fm.axis)
    axes = outer + (fm.var,)
    sizes = {**{s: let_sizes[s] for s in outer}, fm.var: pr.size(fm.length)}
    lead = ["_B", "_T"] if let.time_varying else []
    shape = ", ".join(lead + [sizes[s] for s in axes])
    body = pr.print_tensor(fm.body, axes, sizes)
    code = f"taylor_features(({body}).expand({shape}{',' if len(lead + list(axes)) == 1 else ''}), {pr.size(fm.order)})"
    if fm.axis != len(let.index) - 1:
        code += f".movedim(-1, {fm.axis - len(let.index)})"
    return code


def _init_code(pr: TorchPrinter, p, attr: str, sizes) -> str:
    init = p.init
    target = f"self.{attr}"
    args = [pr.print(a, (), {}) for a in init.args]
    if init.kind == "expr":
        value = pr.print(init.expr, init.index, sizes)
        value = f"torch.as_tensor({value}, dtype=_dtype, device=_dev)"
        return f"{target}.copy_(torch.broadcast_to({value}, {target}.shape))"
    if init.kind == "normal":
        return f"nn.init.normal_({target}, {args[0]}, {args[1]})"
    if init.kind == "uniform":
        return f"nn.init.uniform_({target}, {args[0]}, {args[1]})"
    if init.kind == "log_uniform":
        log_range = f"math.log({args[0]}), math.log({args[1]})"
        return f"{target}.copy_(torch.exp(torch.empty_like({target}).uniform_({log_range})))"
    if init.kind == "dt_bias":
        return f"dt_bias_({target}, {args[0]}, {args[1]})"
    if init.kind == "zeros":
        return f"nn.init.zeros_({target})"
    if init.kind == "ones":
        return f"nn.init.ones_({target})"
    return f"nn.init.normal_({target}, 0.0, 0.02)  # no initialiser in the spec: dsfc's default"


@contextmanager
def _rebound(pr: TorchPrinter, refs: dict[str, TensorRef]):
    """Print with some tensor names pointing at other code for a while (a time slice, the state being read)."""
    saved = {n: pr.tensors.get(n) for n in refs}
    pr.tensors.update(refs)
    try:
        yield
    finally:
        for n, old in saved.items():
            if old is None:
                del pr.tensors[n]
            else:
                pr.tensors[n] = old


def _expanded(code: str, expr, index, shape: str) -> str:
    """A time-varying let's or a post's code at its declared ``[B, T, *axes]`` shape. An axis the expression does
    not use (``let g[c: E, k: R] = f[c]``) prints as a size-1 dim, and a later ``sum(k, g[c, k])``, an einsum, then
    summed that one entry instead of R equal ones (R times too small), while a post's reshape to the layer's width
    failed. Only then: an ``expand`` (a view) where every axis is used would change nothing."""
    if all(i in sp.S(expr).free_symbols for i in index):
        return code
    return f"({code}).expand({shape})"


def _time_sliced(sym, pr: TorchPrinter, index: str) -> dict[str, TensorRef]:
    """Every time-varying tensor (lets and the input) read at ``[:, index]`` only."""
    names = [let.tensor.name for let in sym.lets if let.time_varying] + [sym.input.name]
    return {n: TensorRef(f"{pr.tensors[n].code}[:, {index}]", pr.tensors[n].rank, True, pr.tensors[n].extents)
            for n in names}


def _state_read(sym) -> dict[str, TensorRef]:
    """The state, as the readout sees it: the local ``_read`` ([B, T, *state])."""
    return {sym.state.name: TensorRef("_read", len(sym.state.axes), True)}


def _readout_lines(sym, st, pr: TorchPrinter, out_syms, out_sizes, tensors) -> list[str]:
    lines = []
    if sym.readout == "pre":
        lines.append("# pre-update readout: y_t = C_t h_(t-1) + D_t u_t")
        lines.append("_read = torch.cat([h0.unsqueeze(1), _states[:, :-1]], 1)")
    else:
        lines.append("_read = _states")
    with _rebound(pr, _state_read(sym)):
        lines.append(f"_y = {pr.print(st.readout.ch, out_syms, out_sizes)}")
        if st.readout.du != 0:
            lines.append(f"_y = _y + {pr.print(st.readout.du, out_syms, out_sizes)}")
    if not all(s in st.readout.ch.free_symbols | sp.S(st.readout.du).free_symbols for s in out_syms):
        # an output axis the readout does not depend on (C[o, c] = 1) prints as a size-1 axis: the module's
        # reshape to [B, T, p] failed ("shape '[2, 5, 6]' is invalid for input of size 10")
        lines.append(f"_y = _y.expand(_B, _T, {', '.join(out_sizes[s] for s in out_syms)})")
    lines.append("_final = _states[:, -1]")
    return lines


def _step_lines(sym, st, pr: TorchPrinter, rows, row_sizes, out_syms, out_sizes) -> list[str]:
    """The diagonal recurrence written one step at a time over a short chunk (for torch.compile to fuse):
    time-varying tensors are read at step ``_t`` only, so no [B, T, N] intermediate is ever materialised."""
    with _rebound(pr, {**_time_sliced(sym, pr, "_t:_t + 1"), **_state_read(sym)}):
        lines = [
            f"_a = {pr.print_tensor(st.a.decay, rows, row_sizes)}",
            f"_bu = {pr.print_tensor(st.bu, rows, row_sizes)}",
            "_h_prev = _h",
            "_h = _a * _h + _bu",
            f"_read = {'_h_prev' if sym.readout == 'pre' else '_h'}",
            f"_y_t = {pr.print(st.readout.ch, out_syms, out_sizes)}",
        ]
        if st.readout.du != 0:
            lines.append(f"_y_t = _y_t + {pr.print(st.readout.du, out_syms, out_sizes)}")
    return lines


def _post_plans(sym, pr: TorchPrinter, sizes, rewrite=lambda e: e) -> list[LetPlan]:
    """The post-ops' code; they read the core output as a time-varying tensor (``rewrite``: the kernelised plan
    reads its log lets X as exp(X))."""
    posts = []
    if sym.posts:
        pr.tensors[sym.output.name] = TensorRef(py_name(sym.output.name), len(sym.output.axes), True,
                                                tuple(a.extent for a in sym.output.axes))
    for post in sym.posts:
        pr.tensors[post.tensor.name] = TensorRef(py_name(post.tensor.name), len(post.tensor.axes), True,
                                                 tuple(a.extent for a in post.tensor.axes))
        post_sizes = sizes(post.index, post.tensor.axes)
        code = pr.print(rewrite(post.expr), post.index, post_sizes)
        code = _expanded(code, post.expr, post.index, ", ".join(["_B", "_T"] + [post_sizes[i] for i in post.index]))
        posts.append(LetPlan(post.tensor.name, code, _src(sym, post.tensor.name)))
    return posts


def _log_decay(sym, decay):
    """log(decay) for the log-space scans; None for decay 1 (no decay)."""
    return None if decay == 1 else log_of(decay, sym)


_PROVER: list = []  # [(sym, its IntervalProver)]: the spec being planned


def _prover(sym) -> IntervalProver:
    """One interval prover per spec for the plan's decay-sign questions: plan_module asks about a dozen, and each
    fresh prover re-derived the same let ranges (a second each for a chain of feature-map lets)."""
    if not _PROVER or _PROVER[0][0] is not sym:
        _PROVER[:] = [(sym, IntervalProver(sym))]
    return _PROVER[0][1]


# the families whose scans take the decay as a logarithm (segment sums of log-decays)
_LOG_SPACE = (Family.CHUNKED_OUTER, Family.CHUNKED_DELTA, Family.CHUNKED_DPLR)


def _scan_decay(st) -> sp.Expr:
    """The decay the log-space scan takes: the delta rule's or the DPLR form's s or d, else A's diagonal."""
    return st.delta.decay if st.delta else st.dplr.decay if st.dplr else st.rotation.rho if st.rotation \
        else st.a.decay


def _decay_axes(st) -> tuple[int, ...]:
    """The state axes the outer-product scan's decay varies along: A's diagonal's, or a rotating decay's rho's
    (A's block varies along the pair axis by its very form; rho never does)."""
    return st.rotation.decay_axes if st.rotation else st.a.decay_axes


def _signed_decay(sym, st) -> bool:
    """The log-space scans (chunked outer product, delta rule) take log(decay): True when the decay is not exp(...)
    and the interval prover cannot show it >= 0 (tanh(...), a learned factor), so the generated code scans |decay|
    and folds the signs into the streams (``dsfc.runtime.fold_decay_sign``)."""
    decay = _scan_decay(st)
    if decay == 1 or exact_log(decay, sym) is not None:  # exp(...), sigmoid(...), products of those: positive
        return False
    return _prover(sym).range(decay).lo < 0


def _gauge(sym, st):
    """telescoping_gauge's (log X, log X_prev, value) when A = X_prev / X per group and the scan runs on X h with
    no decay (no log of the decay is taken), else None."""
    o = st.outer
    if st.delta or st.dplr or st.rotation or _has_rank(o) or sym.readout == "pre" \
            or set(st.a.decay_axes) - set(o.group_axes) \
            or _signed_decay(sym, st):
        return None
    return telescoping_gauge(st.a.decay, o.value, sym)


def _zero_decay(sym, st) -> bool:
    """A decay proven >= 0 that can be exactly 0 (x ^ 2, relu(x); no closed-form log): log(decay) would be -inf
    there, with an inf * 0 = NaN backward, so the generated code takes it through ``log_abs_decay`` too. So is one
    only proven > 0 whose range reaches down to 0: floating point rounds it to 0 all the same (ReGLA's ``(1 - r)
    g^2 + r (1 - (1 - g)^2)`` with r = 1 and g < 1e-8 is 0 in fp32, 1e-17 in float64, and its log's backward made
    the gradients NaN where the plain loop's are finite)."""
    decay = _scan_decay(st)
    if decay == 1 or exact_log(decay, sym) is not None or _signed_decay(sym, st) or _gauge(sym, st) is not None:
        return False
    return _prover(sym).range(decay).lo == 0


def _has_rank(o) -> bool:
    """A rank-R input (sum_r key (x) value) or R queries per step: the scan runs over sub-steps (rank_substeps)."""
    return o is not None and bool(o.key_rank or o.query_rank)


def _skip_unread_lets(sym: SymSpec, lets: list[LetPlan], lines: list[str]) -> list[LetPlan]:
    """``lets`` with ``in_kernel`` set on those the printed Triton-path ``lines`` do not read, directly or through
    other lets (running lets, whose last values are state, and what the posts read are always read): on that path
    ``_lets(_kernel=True)`` leaves them out, ops per decoding step that fed nothing. A name is read when it occurs
    in the lines as a word (a comment naming it only keeps a let computed)."""
    text = "\n".join(lines)
    roots = {x.tensor.name for x in sym.lets
             if x.running or re.search(rf"\b{re.escape(py_name(x.tensor.name))}\b", text)}
    for post in sym.posts:
        for e in post.definition:
            roots |= tensor_names(e)
    needed = read_closure(sym.lets, roots)
    return [dataclasses.replace(x, in_kernel=x.name not in needed) for x in lets]


def _outer_lines(sym, st, pr: TorchPrinter, rows, row_sizes, out_syms, out_sizes, scan="chunked_outer_scan"
                 ) -> list[str]:
    o = st.outer
    sz = [pr.size(a.extent) for a in sym.state.axes]
    G, K, V = list(o.group_axes), list(o.key_axes), list(o.value_axes)

    def over(axes_idx):
        syms = tuple(rows[k] for k in axes_idx)
        return syms, {s: row_sizes[s] for s in syms}

    def prod(idx):
        return " * ".join(sz[k] for k in idx) if idx else "1"

    gk, gk_s = over(G + K)
    gv, gv_s = over(G + V)
    rank = _has_rank(o)
    # rank axes: B u's summed ones on the keys and values, C's query ones (output axes) on the queries, each
    # printed between the group and the key (value) axes and flattened into one axis of R_k (R_q) entries
    kr_syms = tuple(r for r, _ in o.key_rank)
    kr_sizes = {r: pr.size(n) for r, n in o.key_rank}
    qr_syms = tuple(out_syms[j] for j in o.query_rank)
    qr_sizes = {r: out_sizes[r] for r in qr_syms}
    rk = " * ".join(kr_sizes[r] for r in kr_syms) or "1"
    rq = " * ".join(qr_sizes[r] for r in qr_syms) or "1"
    ranked = {"_q": (gk[:len(G)] + qr_syms + gk[len(G):], {**gk_s, **qr_sizes}, G, qr_syms, rq, K),
              "_k": (gk[:len(G)] + kr_syms + gk[len(G):], {**gk_s, **kr_sizes}, G, kr_syms, rk, K),
              "_v": (gv[:len(G)] + kr_syms + gv[len(G):], {**gv_s, **kr_sizes}, G, kr_syms, rk, V)}
    ranked["_f"] = ranked["_k"]

    def stream(name, expr):
        axes, sizes_, g_idx, r_syms, r_n, x_idx = ranked[name]
        printed = f"{name} = {pr.print_tensor(expr, axes, sizes_)}"
        if not rank:
            return printed, (f"{name} = {name}.expand(_B, _T, {', '.join(sz[k] for k in g_idx + x_idx)})"
                             f".reshape(_B, _T, {prod(g_idx)}, {prod(x_idx)})")
        full = [sz[k] for k in g_idx] + [sizes_[r] for r in r_syms] + [sz[k] for k in x_idx]
        return printed, (f"{name} = {name}.expand(_B, _T, {', '.join(full)}).reshape(_B, _T, {prod(g_idx)}, "
                         f"{r_n}, {prod(x_idx)})")

    delta, dplr = st.delta, st.dplr
    gauge = _gauge(sym, st)  # A = X_prev / X, B u = k v / X: scan X h, decay 1
    if gauge is not None:
        o = dataclasses.replace(o, value=gauge[2])
    lines = [
        "# delta rule, A = s (I - k f^T) per group and B u = k v^T: chunkwise WY (UT-transform) scan" if delta else
        "# A = diag(d) + x y^T per group (d per key) and B u = k v^T: chunked diagonal-plus-rank-1 scan" if dplr else
        "# outer-product B u and a per-group decay: chunkwise-parallel linear-attention scan",
    ]
    streams = [stream("_q", o.query), stream("_k", o.key), stream("_v", o.value)]
    fused = {} if (scan != "chunked_outer_triton" or rank or gauge is not None or _signed_decay(sym, st)
                   ) else _kernel_fusions(sym, st, pr, rows, row_sizes, out_syms, out_sizes)
    for i, name in enumerate(("_q", "_k", "_v")):
        if name in fused:
            streams[i] = fused[name]
    lines += [printed for printed, _ in streams]
    rot = st.rotation
    if rot is not None:
        lines += _rotation_prologue(sym, st, pr, rows, row_sizes, sym.readout, rank and {
            "_q": (qr_syms, rq, qr_sizes), "_k": (kr_syms, rk, kr_sizes)})
        streams = streams[2:]  # q and k were shaped by the prologue
    lines += [shaped for _, shaped in streams if shaped]
    if delta and delta.substeps:
        # the gated delta product: f_j per sub-step over the rank axis, shaped as the keys
        lines += list(stream("_f", delta.read))
    elif delta:
        lines += [
            f"_f = {pr.print_tensor(delta.read, gk, gk_s)}",
            f"_f = _f.expand(_B, _T, {', '.join(sz[k] for k in G + K)}).reshape(_B, _T, {prod(G)}, {prod(K)})",
        ]
    if dplr:
        expand = f".expand(_B, _T, {', '.join(sz[k] for k in G + K)}).reshape(_B, _T, {prod(G)}, {prod(K)})"
        lines += [
            f"_xw = ({pr.print_tensor(dplr.write, gk, gk_s)}){expand}  # x: the rank-1 write",
            f"_yr = ({pr.print_tensor(dplr.read, gk, gk_s)}){expand}  # y: the rank-1 read",
        ]
    decay = _scan_decay(st)
    logd = None if gauge else _log_decay(sym, decay)
    signed = _signed_decay(sym, st)
    # a decay that may be negative is scanned as log|decay|, its signs folded into the streams (fold_decay_sign);
    # one >= 0 that can be exactly 0 (x ^ 2, relu(x)) through log_abs_decay too, which keeps log 0 finite
    unsigned_log = not signed and logd is not None and _zero_decay(sym, st)
    target, logd = ("_decay", decay) if signed or unsigned_log else ("_log_decay", logd)
    # the Triton backward's log-decay gradient is not accurate relative to a zero decay (see log_abs_decay)
    zero_grad = ", zero_grad=False" if scan == "chunked_outer_triton" else ""

    def decay_code(axes, sizes) -> str:
        # rho = sqrt(x^2 + y^2) of a rotating decay written as x, y: pair_modulus, finite derivative at x = y = 0
        if rot is not None and rot.theta is None and target == "_decay":
            return f"pair_modulus({pr.print_tensor(rot.x, axes, sizes)}, {pr.print_tensor(rot.y, axes, sizes)})"
        return pr.print(logd, axes, sizes)

    if gauge:
        g, g_s = over(G)
        shape = f".expand(_B, _T{''.join(', ' + sz[k] for k in G)}).reshape(_B, _T, {prod(G)})"
        ell, ell_prev = (f"({pr.print(e, g, g_s)}){shape}" for e in gauge[:2])
        lines += [
            "# A = X_prev / X and B u = k v^T / X per group (X = exp(_ell)): the scan runs on S = X h, decay 1, and",
            "# y = exp(-_ell) q . S, the initial state decayed by exp(_ell_prev[0] - _ell): exponents of differences",
            "# only, never exp(-_ell) times exp(_ell) (inf * 0 in fp32 where |_ell| > 88)",
            f"_ell = {ell}",
            f"_ell_prev = {ell_prev}",
            "_log_decay = None",
        ]
    elif logd is None:
        lines.append("_log_decay = None  # s = 1 (no gate)" if delta else "_log_decay = None  # A = I")
    elif (dplr and decay.free_symbols & set(gk[len(G):])) or (not delta and not dplr and set(_decay_axes(st)) & set(K)):
        s, s_s = over(G + K)
        lines.append(f"{target} = ({decay_code(s, s_s)}).expand(_B, _T, {', '.join(sz[k] for k in G + K)})"
                     f".reshape(_B, _T, {prod(G)}, {prod(K)})")
    else:
        s, s_s = over(G)
        code = decay_code(s, s_s) if G else decay_code((), {})
        lines.append(f"{target} = torch.as_tensor({code}, dtype=_dtype, device=_dev).expand(_B, _T"
                     f"{''.join(', ' + sz[k] for k in G)}).reshape(_B, _T, {prod(G)})")
    if rank:
        lines += [
            f"# rank axes: {rk} outer products and {rq} queries per step run as {rk} + {rq} - 1 sub-steps of the "
            "one-outer-product scan",
            f"_q, _k, _v, {target} = rank_substeps(_q, _k, _v, {target}, "
            f"fill={1.0 if target == '_decay' else 0.0}, readout=\"{sym.readout}\")",
        ]
        if delta:
            at = "last (the gate on the last factor)" if delta.scaled else "first"
            reads = "before the first" if sym.readout == "pre" else "at the last"
            lines[-2] = (f"# the gated delta product: {rk} delta-rule sub-steps per step (the decay at the {at}, "
                         f"the readout {reads})")
            if delta.scaled:  # the query is one per step (no query rank axis): the last key's sub-step is rk - 1
                lines[-1] = lines[-1][:-1] + f", decay_at={delta.substeps - 1})"
            lines.append(f"_f = rank_substep_keys(_f, {rq}, readout=\"{sym.readout}\")")
    if signed:
        lines += [
            "# the decay is not proven >= 0: scan log|decay| with its signs folded into the streams",
            f"_log_decay, _sign = log_abs_decay(_decay{zero_grad})",
            f"_q, _k, _v, _sign_end = fold_decay_sign(_sign, _q, _k, _v, readout=\"{sym.readout}\""
            f"{', delta=True' if delta else ''})",
        ]
        if delta and delta.scaled:
            # S_t = s_t S - k f^T S + k v^T: on |s| the read carries s's sign too (c_t c_(t-1) = sign_t)
            lines.append("_f = _f * _sign[..., None].to(_f.dtype)")
    elif unsigned_log:
        lines.append(f"_log_decay, _ = log_abs_decay(_decay{zero_grad})  # no closed-form log; log 0 stays finite")
    order = G + K + V
    perm = [0] + [1 + k for k in order]
    inv = [0] + [1 + order.index(k) for k in range(len(sz))]
    if scan == "chunked_outer_triton":
        # half inputs: q, k, v cross into the kernels in the input dtype (half their reads; fp32 inside, as fla's
        # kernels take them); the log-decay, the state and the outputs stay fp32
        lines += [
            "_io = env.get(\"_io_dtype\", _dtype)",
            "if _io in (torch.float16, torch.bfloat16):",
            "    _q, _k, _v = _q.to(_io), _k.to(_io), _v.to(_io)",
        ]
    s0 = f"h0.permute({', '.join(map(str, perm))}).reshape(_B, {prod(G)}, {prod(K)}, {prod(V)})"
    if gauge:
        lines += [f"_h0 = {s0}", "_s0 = torch.zeros_like(_h0)  # S = X h from 0; h0 is added after the scan"]
    else:
        lines.append(f"_s0 = {s0}")
    streams = ", _f" if delta else ", _xw, _yr" if dplr else ""
    lines += fused.get("lines", [])
    lines.append(f"_y, _sT = {scan}(_q, _k, _v{streams}, _log_decay, _s0, output_final_state=True"
                 + (", readout=\"pre\"" if sym.readout == "pre" else "") + fused.get("args", "")
                 + (", scaled_read=True)  # A = s I - k f^T: f carries the decay" if delta and delta.scaled else ")"))
    if gauge:
        lines += [
            "_y = torch.exp(-_ell)[..., None] * _y.to(_dtype) + torch.exp(_ell_prev[:, :1] - _ell)[..., None]"
            " * torch.einsum(\"btgk,bgkv->btgv\", _q.to(_dtype), _h0)",
            "_sT = torch.exp(-_ell[:, -1])[..., None, None] * _sT"
            " + torch.exp(_ell_prev[:, 0] - _ell[:, -1])[..., None, None] * _h0",
        ]
    if rot is not None:
        pair_dim = 1 + len(G) + K.index(rot.pair_axis)
        ends = ", ".join(["..."] + ["None"] * len(V))  # the phases [B, G.., K.. but the pair] over the values
        lines += [
            "# the scan's state is P_T^T S_T: the final state rotated back by P_T, in the spec's layout",
            f"_sT = rotate_pairs(_sT.reshape(_B, {', '.join(sz[k] for k in order)}), _rc_end[{ends}], _rs_end[{ends}], "
            f"{pair_dim}, back=True).reshape(_B, {prod(G)}, {prod(K)}, {prod(V)})",
        ]
    lines += [
        f"_final = {'(_sT * _sign_end)' if signed else '_sT'}.reshape(_B, {', '.join(sz[k] for k in order)})"
        f".permute({', '.join(map(str, inv))})",
    ]
    if scan.endswith("_triton"):
        # a fresh buffer of the kernels (SSD's [H, n, P] state comes back in its [H, P, n] layout): forward need not
        # copy it (one copy per decoding step)
        lines.append("env[\"_final_owned\"] = owns_storage(_final, h0)")
    # y: [B, T, G, V] in (G, V) order, or [B, T, R_q, G, V] with query rank axes; the output axes map to state axes
    # through out_map, the query rank axes to the leading ones
    gv_order = G + V
    if rank:
        lines.append(f"_y = rank_readouts(_y, {rq}, {rk}, readout=\"{sym.readout}\")")
    present = [k for k in range(len(out_syms)) if o.out_map[k] is not None or k in o.query_rank]
    out_perm = [0, 1] + [2 + (o.query_rank.index(k) if k in o.query_rank
                              else len(o.query_rank) + gv_order.index(o.out_map[k])) for k in present]
    lines.append(f"_y = _y.reshape(_B, _T, {', '.join([qr_sizes[r] for r in qr_syms] + [sz[k] for k in gv_order])})"
                 + ("" if out_perm == sorted(out_perm) else f".permute({', '.join(map(str, out_perm))})"))
    # an output axis narrower than the state axis it reads (y[h, e: E] with C = delta(e, b) over b < V, pinned
    # because E <= V at every dims, E = V - 1): the scan reads every slot; the output keeps its first E
    narrow = [k for k in present if o.out_map[k] is not None and _narrower(sym, k, o.out_map[k])]
    if narrow:
        index = ", ".join(f":{out_sizes[out_syms[k]]}" if k in narrow else ":" for k in present)
        lines.append(f"_y = _y[:, :, {index}]  # output axes narrower than the state axes they read")
    if len(present) < len(out_syms):
        # output axes the state lacks: a size-1 axis each, broadcast by C's factor along them (the gate)
        index = ", ".join(":" if k in present else "None" for k in range(len(out_syms)))
        lines.append(f"_y = _y[:, :, {index}]")
    mapped = [k for k in range(len(out_syms)) if o.out_map[k] is not None]
    if o.gate != 1:
        gate = o.gate.subs({rows[o.out_map[k]]: out_syms[k] for k in mapped}, simultaneous=True)
        lines.append(f"_y = _y * {pr.print(gate, out_syms, out_sizes)}  # C's factor over the outputs alone")
    if len(present) < len(out_syms):
        lines.append(f"_y = _y.expand(_B, _T, {', '.join(out_sizes[s] for s in out_syms)}).contiguous()")
    if st.readout.du != 0 and "skip" not in fused:
        lines.append(f"_y = _y + {pr.print(st.readout.du, out_syms, out_sizes)}")
    return lines


def _rotation_prologue(sym, st, pr: TorchPrinter, rows, row_sizes, readout, ranks) -> list[str]:
    """The lines that rotate the keys and queries of a rotating decay per key pair (``st.rotation``) by minus the
    cumulative angle, and shape them for the scan as ``stream`` would. ``ranks``: None without rank axes, else per
    "_q" and "_k" the rank axes printed between its group and key axes (R queries, R outer products per step:
    ``(symbols, flat size, sizes)``; none for a stream of one), along which the phases broadcast: the step's
    sub-steps (``rank_substeps``, after this) share its angle, the decay sitting at one of them.

    Why q and k are rotated in real arithmetic rather than the scan run on complex numbers (``chunked_outer_scan``
    is exact on a complex per-key log-decay log rho + i theta): Triton has no complex type, so the complex route
    would leave ``chunked_outer_triton`` behind; rotated q and k are plain real streams, which every chunked
    kernel (torch and Triton, forward and backward) takes unchanged, the decay rho a real per-key (or per-group)
    log-decay."""
    o, rot = st.outer, st.rotation
    sz = [pr.size(a.extent) for a in sym.state.axes]
    G, K = list(o.group_axes), list(o.key_axes)
    rest = [k for k in K if k != rot.pair_axis]  # the key axes but the pair: the angle's
    gk = G + K
    angle_axes = tuple(rows[k] for k in G + rest)
    angle_sizes = {s: row_sizes[s] for s in angle_axes}
    full = ", ".join(sz[k] for k in gk)
    flat = f"{' * '.join(sz[k] for k in G) or '1'}, {' * '.join(sz[k] for k in K)}"
    expand = f".expand(_B, _T{''.join(', ' + sz[k] for k in G + rest)})"
    pair = rows[rot.pair_axis]
    lines = [
        f"# A's 2 x 2 blocks on the pair axis {pair} are rotation-scalings rho R(theta), which commute: the scan runs",
        "# on P_t^T S_t (P_t the rotation by Phi_t = theta_1 + ... + theta_t) with the real decay rho and the keys",
        "# and queries rotated by -Phi_t (a data-dependent rotary embedding); P_0 = I, so h0 enters as it is",
    ]
    if rot.theta is not None:
        lines.append(f"_theta = ({pr.print_tensor(rot.theta, angle_axes, angle_sizes)}){expand}")
    else:
        # x = rho cos theta, y = rho sin theta not written as such: the angle atan2(y, x) (0 where x = y = 0, with
        # a zero derivative there: pair_angle)
        lines += [
            f"_rx = {pr.print_tensor(rot.x, angle_axes, angle_sizes)}",
            f"_ry = {pr.print_tensor(rot.y, angle_axes, angle_sizes)}",
            f"_theta = pair_angle(_ry, _rx){expand}",
        ]
    lines.append(f"_rc, _rs, _qc, _qs, _rc_end, _rs_end = rotation_phases(_theta, _dtype, readout=\"{readout}\")")
    for name, (c, s_) in (("_q", ("_qc", "_qs")), ("_k", ("_rc", "_rs"))):
        if not ranks:
            pair_dim = 2 + len(G) + K.index(rot.pair_axis)
            lines.append(f"{name} = rotate_pairs({name}.expand(_B, _T, {full}), {c}, {s_}, {pair_dim})"
                         f".reshape(_B, _T, {flat})")
            continue
        # the rank axes sit between the group and the key axes: the phases get a unit axis for each
        r_syms, r_n, r_sizes = ranks[name]
        pair_dim = 2 + len(G) + len(r_syms) + K.index(rot.pair_axis)
        at = ", ".join([":", ":"] + [":"] * len(G) + ["None"] * len(r_syms) + ["..."])
        widths = ", ".join([sz[k] for k in G] + [r_sizes[r] for r in r_syms] + [sz[k] for k in K])
        lines.append(f"{name} = rotate_pairs({name}.expand(_B, _T, {widths}), {c}[{at}], {s_}[{at}], {pair_dim})"
                     f".reshape(_B, _T, {' * '.join(sz[k] for k in G) or '1'}, {r_n}, "
                     f"{' * '.join(sz[k] for k in K)})")
    return lines


def _kernel_fusions(sym, st, pr: TorchPrinter, rows, row_sizes, out_syms, out_sizes) -> dict:
    """What the chunked outer-product kernels compute from the spec's streams on load instead of reading them from
    memory (``chunked_outer_triton``'s ``heads_per_group``, ``v_scale``, ``skip``), found on the SymPy streams of a
    scan with one group (head) axis h, one key axis and post-update or pre-update readout:

    - q or k a grouped read ``X[h // R, j]`` of a time-varying X [G, K] with G R = H (Mamba-2's C and B): X is passed
      with ``heads_per_group=R`` ("_q" / "_k": its (printed, shaped) lines), not materialised per head;
    - v a product whose factors over h alone (SSD's dt, mLSTM's input gate) multiply a time-varying rest over
      (h, p..) (x, a projection): the rest is printed as v and the factor passed as ``v_scale`` ("_v", "lines");
    - D u a product of factors over the output's head axis alone that are not time-varying (SSD's D) and a
      time-varying rest, the outputs the state's group and value axes in order, no output gate: the rest is passed
      as ``skip``, the factor as its per-head weights, added in the kernels' store ("skip").

    Every stream that is not exactly such a form keeps its lines (``{}`` when none is). "lines": those that print
    the scale, the skip tensors and ``_fused``, the scan's keyword arguments, before the scan; "args": ``**_fused``."""
    o = st.outer
    G, K, V = list(o.group_axes), list(o.key_axes), list(o.value_axes)
    if len(G) != 1 or len(K) != 1 or not V:
        return {}
    h, j = rows[G[0]], rows[K[0]]
    extent = [a.extent for a in sym.state.axes]
    same = lambda a, b: sp.simplify(sym.in_free_dims(a - b, exact_division=True)) == 0  # noqa: E731
    dims = set(sym.dims.values())

    def per_head(e, head, axes):
        """``(factor, rest)`` of a product ``e`` over ``axes``: the product of its factors that read no axis but
        ``head``, and of the others; None for an empty product."""
        factors = sp.Mul.make_args(e)
        own = [f for f in factors if not (f.free_symbols & set(axes)) - {head}]
        rest = [f for f in factors if f not in own]
        return sp.Mul(*own) if own else None, sp.Mul(*rest) if rest else None

    def paren(code):
        return code if code.isidentifier() else f"({code})"

    # a per-key decay's score kernels read q, k and v per head: chunked_outer_triton would build them in torch
    # so do rotated keys and queries (a rotating decay per key pair): they are computed in torch, never read as
    # they are
    streams = () if set(st.a.decay_axes) & set(K) or st.rotation else (
        ("_q", o.query), ("_k", o.key), ("_v", o.value))
    found, args, lines, groups = {}, [], [], set()
    for name, e in streams[:2]:
        sub = e.indices[0] if isinstance(e, sp.Indexed) and len(e.indices) == 2 else None
        if not isinstance(sub, sp.floor):
            continue
        R = sp.simplify(h / sub.args[0])
        ref = pr.tensors.get(str(e.base.label))
        if (R.free_symbols - dims or not ref or not ref.batched or ref.extents is None or len(ref.extents) != 2
                or e.indices[1] != j or not same(ref.extents[1], extent[K[0]])
                or not same(ref.extents[0] * R, extent[G[0]])):
            continue
        groups.add(pr.size(R))
        found[name] = (f"{name} = {ref.code}  # [B, T, {pr.size(ref.extents[0])}, {pr.size(ref.extents[1])}]: head h "
                       f"reads group h // {pr.size(R)}", None)
    if len(groups) > 1:  # one heads_per_group for q and k
        found = {}
    if found:
        args.append(f"heads_per_group={groups.pop()}")
    sizes = [pr.size(extent[k]) for k in G + V]
    shape = f".expand(_B, _T, {', '.join(sizes)}).reshape(_B, _T, {sizes[0]}, {' * '.join(sizes[1:])})"
    scale, rest = per_head(o.value, h, rows) if streams else (None, None)
    if scale and rest and pr._is_batched(rest):
        gv = tuple(rows[k] for k in G + V)
        found["_v"] = (f"_v = {pr.print_tensor(rest, gv, {a: row_sizes[a] for a in gv})}", f"_v = _v{shape}")
        code = pr.print(scale, (h,), {h: row_sizes[h]})
        lines.append(f"_vs = torch.as_tensor({code}, dtype=_dtype, device=_dev).expand(_B, _T, {sizes[0]})  # v's "
                     "factor")
        args.append("v_scale=_vs")
    du = st.readout.du
    if du != 0 and o.gate == 1 and len(out_syms) == 1 + len(V) and list(o.out_map) == G + V and not o.query_rank:
        weight, rest = per_head(du, out_syms[0], out_syms)
        if weight and rest and pr._is_batched(rest) and not pr._is_batched(weight):
            code = pr.print(weight, (out_syms[0],), {out_syms[0]: out_sizes[out_syms[0]]})
            lines += [f"_skw = torch.as_tensor({code}, dtype=_dtype, device=_dev).expand({sizes[0]})  # D u: + _skw[h] "
                      "_skip in the kernels", f"_skip = {paren(pr.print_tensor(rest, out_syms, out_sizes))}{shape}"]
            args.append("skip=_skip, skip_weight=_skw")
            found["skip"] = True
    if not args:
        return {}
    lines += ["# read by the kernels as they are (grouped rows, the v factor on load, D u in the store)",
              f"_fused = dict({', '.join(args)})"]
    return {**found, "lines": lines, "args": ", **_fused"}


# the largest block size that the torch path scans chunkwise (block_scan); larger blocks keep the per-step loop, as
# the chunk products cost P times a matrix-vector step
SMALL_BLOCK = 4


def _block_size(sym, st) -> sp.Expr:
    """The size of A's coupled blocks: the product of the mixed axes' extents (a number, or an expression of dims)."""
    return sp.Mul(*[sym.state.axes[k].extent for k in st.a.mixed_axes])


def _small_blocks(sym, st) -> bool:
    """Are A's coupled blocks of a literal size <= SMALL_BLOCK (the torch path's chunked block_scan)? A size of dims
    is decided by the module at construction (``_dense_lines``)."""
    size = _block_size(sym, st)
    return bool(size.is_Integer and size <= SMALL_BLOCK)


def _rotation_parts(sym, st) -> tuple[sp.Expr, sp.Expr] | None:
    """(x, y) when A's coupled blocks are 2 x 2 rotation-scalings ``[[x, -y], [y, x]]`` over one mixed axis of
    extent 2 at every dims (S4D's and LRU's complex modes): the torch path scans them as complex numbers x + i y
    (``rotation_scan``)."""
    if len(st.a.mixed_axes) != 1 or sp.S(sym.state.axes[st.a.mixed_axes[0]].extent) != 2:
        return None
    m = pair_blocks(st.a)
    return rotation_parts(m) if m is not None else None


def _dense_lines(sym, st, pr: TorchPrinter, rows, row_sizes, tensors, kernel: bool = False) -> list[str]:
    """``kernel``: the Triton variant (a block-scan launch per chunk instead of the per-step torch loop)."""
    a = st.a
    sz = [pr.size(ax.extent) for ax in sym.state.axes]
    Dg, Mx = list(a.diag_axes), list(a.mixed_axes)
    cols = tuple(a.cols[k] for k in Mx)
    axes = rows + cols
    sizes = {**row_sizes, **{c: sz[k] for c, k in zip(cols, Mx)}}
    order = Dg + Mx
    perm = [0] + [1 + k for k in order]
    inv = [0] + [1 + order.index(k) for k in range(len(sz))]
    prod_d = " * ".join(sz[k] for k in Dg) if Dg else "1"
    prod_m = " * ".join(sz[k] for k in Mx)
    # the block entry reads lets at the current chunk of time only (bounded memory)
    with _rebound(pr, _time_sliced(sym, pr, "_t0:_t1")):
        block = pr.print_tensor(a.block, axes, sizes)
        bu = pr.print_tensor(st.bu, rows, row_sizes)
    blocks = [
        f"    _blocks = ({block}).expand(_B, _t1 - _t0, {', '.join(sz)}, {', '.join(sz[k] for k in Mx)})",
        f"    _blocks = _blocks.permute(0, 1, {', '.join(str(2 + k) for k in order)}, "
        f"{', '.join(str(2 + len(sz) + j) for j in range(len(Mx)))})"
        f".reshape(_B, _t1 - _t0, {prod_d}, {prod_m}, {prod_m})",
        f"    _bu = ({bu}).expand(_B, _t1 - _t0, {', '.join(sz)})",
        f"    _bu = _bu.permute({', '.join(map(str, [0, 1] + [2 + k for k in order]))})"
        f".reshape(_B, _t1 - _t0, {prod_d}, {prod_m})",
    ]
    unpermute = (f"reshape(_B, _T, {', '.join(sz[k] for k in order)})"
                 f".permute({', '.join(map(str, [0, 1] + [2 + order.index(k) for k in range(len(sz))]))})")
    if kernel:
        return [
            "# A couples some state axes: per-step block matrix-vector recurrence, one Triton launch per chunk",
            f"_h = h0.permute({', '.join(map(str, perm))}).reshape(_B, {prod_d}, {prod_m})",
            "_chunks = []",
            f"_L = dense_chunk_len(_B, {prod_d}, {prod_m})  # steps per chunk: its blocks stay within a memory budget",
            "for _t0 in range(0, _T, _L):",
            "    _t1 = min(_t0 + _L, _T)",
            *blocks,
            "    _st = block_scan_triton(_blocks, _bu, _h)",
            "    _h = _st[:, -1]",
            "    _chunks.append(_st)",
            f"_states = torch.cat(_chunks, 1).{unpermute}",
        ]
    rotation = _rotation_parts(sym, st)
    if rotation is not None:
        k = a.mixed_axes[0]
        with _rebound(pr, _time_sliced(sym, pr, "_t0:_t1")):
            x, y = (pr.print_tensor(part, rows, row_sizes) for part in rotation)
        return [
            "# A's 2 x 2 blocks are rotation-scalings [[x, -y], [y, x]]: a complex diagonal scan of x + i y",
            "# (dsfc.runtime.rotation_scan)",
            "_t0, _t1 = 0, _T",
            f"_rot_x = ({x}).expand(_B, _T, {', '.join(sz)}).select({2 + k}, 0)",
            f"_rot_y = ({y}).expand(_B, _T, {', '.join(sz)}).select({2 + k}, 0)",
            f"_bu = ({bu}).expand(_B, _T, {', '.join(sz)})",
            f"_states = rotation_scan(_rot_x, _rot_y, _bu, h0, {k})",
        ]
    small = [
        "# A couples some state axes in small blocks: two-level chunked block scan (dsfc.runtime.block_scan)",
        f"_h = h0.permute({', '.join(map(str, perm))}).reshape(_B, {prod_d}, {prod_m})",
        "_t0, _t1 = 0, _T",
        *(line[4:] for line in blocks),
        f"_states = block_scan(_blocks, _bu, _h).{unpermute}",
    ]
    loop = [
        "# A couples some state axes: per-step block matrix-vector recurrence (documented as slow)",
        f"_h = h0.permute({', '.join(map(str, perm))}).reshape(_B, {prod_d}, {prod_m})",
        "_chunks = []",
        "for _t0 in range(0, _T, 64):  # bounded memory: build the blocks of 64 steps at a time",
        "    _t1 = min(_t0 + 64, _T)",
        *blocks,
        "    for _t in range(_t1 - _t0):",
        "        _h = torch.einsum(\"bgij,bgj->bgi\", _blocks[:, _t], _h) + _bu[:, _t]",
        "        _chunks.append(_h)",
        f"_states = torch.stack(_chunks, 1).{unpermute}",
    ]
    if _small_blocks(sym, st):
        # small blocks (LRU's, S4D's 2 x 2 complex pairs): all T steps' blocks at once (P times the states'
        # memory) and a two-level chunked scan; the per-step loop below was ~2 ops per step, forward and backward
        return small
    if not _block_size(sym, st).is_Integer:
        # blocks sized by dims (biquads in series, dim S = 2: 4 x 4): the size is known at construction, so the
        # module picks the scan there; a literal-size rule gave such blocks the per-step loop at every dims
        return [f"if {prod_m} <= {SMALL_BLOCK}:", *("    " + x for x in small), "else:", *("    " + x for x in loop)]
    return loop


def _positive_when_exact(expr: sp.Expr) -> bool:
    """Whether a derived dim is positive for all positive dims once its ``//`` are exact (the constructor checks
    that first): ``H // G`` is, ``d - 5`` is not and gets a check of its own."""
    return bool(sp.S(expr).replace(sp.floor, lambda x: x).is_positive)


def _dim_check_lines(sym: SymSpec, pr: TorchPrinter) -> list[str]:
    """The calls of ``_check_subscripts``: each subscript that may leave its axis at some dims, checked at the
    module's dims with the runtime's helpers (dsfc/runtime/checks.py); ``_where`` names the model and its dims."""
    lines = []
    for cond in dim_conditions(sym):
        use = cond.use
        where = f"axis {use.position} of {use.tensor!r}, spec line {use.span.line}"
        extent = pr.size(use.axis_extent)
        if isinstance(cond, ExtentMatch):
            what = f"index {cond.index} ({where})"
            lines.append(f"check_extent_match(_where, {what!r}, {pr.size(cond.index_extent)}, {extent})")
            continue
        what = f"subscript {use.text or sp.sstr(use.subscript)} ({where})"
        if cond.bounds is not None:
            lo, hi = pr.size(cond.bounds.lo), pr.size(cond.bounds.hi)
            lines.append(f"check_subscript(_where, {what!r}, {lo}, {hi}, {extent})")
            continue
        # no closed form for its least and greatest value: enumerate, as the front end does
        names = {s: py_name(str(s)) for s, _ in use.ranges}
        value = TorchPrinter(pr.tensors, {**pr.dims, **names}).size(use.subscript)
        ranges = ", ".join(pr.size(e) for _, e in use.ranges) + ","
        lines.append(f"check_subscript_values(_where, {what!r}, lambda {', '.join(names.values())}: {value}, "
                     f"({ranges}), {extent})")
    return lines


def _narrower(sym: SymSpec, out_axis: int, state_axis: int) -> bool:
    """Whether output axis ``out_axis`` is not as wide as the state axis it reads (``dim E = V - 1``: y[h, e: E] read
    through delta(e, b) over b < V): the scan's cores return every slot of the state axis, the output its first E."""
    extent = sym.in_free_dims(sym.output.axes[out_axis].extent) - sym.in_free_dims(sym.state.axes[state_axis].extent)
    return sp.simplify(extent) != 0


def _narrowed_outputs(sym: SymSpec, axes: list[int], state_sizes: list[str], pr: TorchPrinter) -> str:
    """The attention's output [B, T, groups, values] cut to output axes narrower than the state axes they read
    (output axis i reads state axis ``axes[i]``: y[h, e: E] with C = delta(e, b) over b < V, E <= V at every dims);
    "" when every output axis is as wide as its state axis."""
    outs = sym.output.axes
    narrow = [i for i, k in enumerate(axes) if i < len(outs) and _narrower(sym, i, k)]
    if not narrow:
        return ""
    index = ", ".join(f":{pr.size(outs[i].extent)}" if i in narrow else ":" for i in range(len(axes)))
    return f"_y.reshape(_B, _T, {', '.join(state_sizes)})[:, :, {index}]"


def _plan_quadratic(sym, st, report, stamp, pr: TorchPrinter, sizes, free, derived, dim_locals, params,
                    param_locals) -> ModulePlan:
    """Quadratic attention for an infinite feature state (analysis/kernelise.py): feature lets are kept as their
    vectors, kernel sums as logs (causal log-sum-exp), the core is ``kernel_attention`` over the KV cache, and
    ``dsf_matrices`` writes the paper's form in the basis {phi(k_j)} of the first T slots."""
    kern = st.kernel
    pr.infinite = "_T"  # the feature range in slot form (dsf_matrices); never printed as a size elsewhere
    logs = set(kern.log_lets)
    hist = set(kern.histories)
    rows = st.a.rows
    row_sizes = sizes(rows, sym.state.axes)
    g_syms = tuple(rows[k] for k in kern.group_axes)
    v_syms = tuple(rows[k] for k in kern.value_axes)
    g_size = " * ".join(row_sizes[s] for s in g_syms) or "1"
    v_size = " * ".join(row_sizes[s] for s in v_syms) or "1"
    length = pr.size(kern.key.feature.length)
    for fl in (kern.query, kern.key):
        outer = tuple(ix for k, ix in enumerate(fl.index) if k != fl.feature.axis)
        if len(outer) != len(g_syms) or [a.extent for k, a in enumerate(fl.tensor.axes) if k != fl.feature.axis] \
                != [sym.state.axes[k].extent for k in kern.group_axes]:
            raise SpecErrors([SpecError(f"feature-map let {fl.tensor.name!r} must have the state's group axes "
                                        "(in order) besides its feature axis", fl.tensor.span)],
                             sym.checked.spec.path, sym.checked.spec.source)
    for h in hist:
        if _src_name(sym.let(h).args[-1]) != kern.key.tensor.name:
            raise SpecErrors([SpecError(f"cumsum let {h!r} must sum the key feature map {kern.key.tensor.name!r} "
                                        "(its history is the KV cache)", sym.let(h).tensor.span)],
                             sym.checked.spec.path, sym.checked.spec.source)

    def logsub(e):
        return e.subs({x: sp.exp(x) for x in sp.preorder_traversal(e) if _src_name(x) in logs}, simultaneous=True)

    lets = []
    for let in sym.lets:
        name, src = let.tensor.name, _src(sym, let.tensor.name)
        let_sizes = sizes(let.index, let.tensor.axes)
        shape = ", ".join(["_B", "_T"] + [let_sizes[i] for i in let.index if let_sizes.get(i) is not None])
        if let.feature is not None:  # an infinite feature map: keep the vector, [B, T, G, K]
            fm = let.feature
            outer = tuple(ix for k, ix in enumerate(let.index) if k != fm.axis)
            axes = outer + (fm.var,)
            sz = {**{ix: let_sizes[ix] for ix in outer}, fm.var: length}
            code = (f"({pr.print_tensor(fm.body, axes, sz)}).expand(_B, _T, {', '.join(sz[x] for x in axes)})"
                    f".reshape(_B, _T, {g_size}, {length})")
            lets.append(LetPlan(name, code, src, "vector"))
        elif name in hist:
            lets.append(LetPlan(name, py_name(kern.key.tensor.name), src, "history"))
        elif any(ks[0] == name for ks in kern.kernel_sums):
            _, qn, kn, over, extra_log = next(ks for ks in kern.kernel_sums if ks[0] == name)
            other = py_name(next(h for h in hist) if over else kn)
            gcum = ", _gcum" if over and kern.history_decayed else ""  # a scan history: weights exp(G_i - G_j)
            code = f"_log_sum({py_name(qn)}, {other}, {length} ** -0.5, {over}{gcum})" \
                + ("" if not let.index else f".reshape({shape})")
            if extra_log is not None:  # + a positive term (an attention sink): log(e^lse + e^extra_log)
                extra = print_over(pr, sym, extra_log, let.index, [a.extent for a in let.tensor.axes], let_sizes)
                extra = f"torch.as_tensor({extra}, dtype=_dtype, device=_dev)" if not sp.S(extra_log).has(
                    sp.Indexed) and not any(str(x) in pr.tensors for x in sp.S(extra_log).free_symbols) else extra
                code = f"torch.logaddexp({code}, {extra})"
            lets.append(LetPlan(name, code, src, "log", shape=shape if let.index else ""))
        elif let.running == "prev":
            args = [pr.print(a, let.index, let_sizes) for a in let.args]
            if len(args) > 1 and not (let.args[1].has(sp.Indexed) or any(str(x) in pr.tensors
                                                                        for x in let.args[1].free_symbols)):
                args[1] = f"torch.as_tensor({args[1]}, dtype=_dtype, device=_dev)"  # prev(x, 0): a number's start
            if len(args) > 1 and name in logs and let.args[1].is_nonnegative is not True:
                raise SpecErrors([SpecError(f"the start value of prev let {name!r} must be provably >= 0: it is the "
                                            "prev of a kernel sum, which the quadratic form keeps as its log",
                                            let.tensor.span, hint="start it at a number >= 0, e.g. prev(eta[h], 1), "
                                            "or leave the start out (prev(eta[h]) starts at eta_0)")],
                                 sym.checked.spec.path, sym.checked.spec.source)
            if len(args) > 1 and name in logs:  # the prev of a kernel sum is kept as its log: so is its start value
                args[1] = f"torch.log(torch.as_tensor({args[1]}, dtype=_dtype, device=_dev))"
            lets.append(LetPlan(name, "", src, "prev", args, shape))
        elif let.running:  # a finite running quantity: as in module.py.jinja
            args = [pr.print(logsub(a), let.index, let_sizes) if a.has(sp.Indexed) or any(
                str(x) in pr.tensors for x in a.free_symbols) else
                f"torch.as_tensor({pr.print(a, let.index, let_sizes)}, dtype=_dtype, device=_dev)" for a in let.args]
            window = let_sizes[let.index[-1]] if let.running == "window" else ""
            lets.append(LetPlan(name, "", src, let.running, args, shape, window))
        else:
            code = print_over(pr, sym, logsub(let.expr), let.index, [a.extent for a in let.tensor.axes], let_sizes)
            if not let.time_varying:
                full = ", ".join(let_sizes[i] for i in let.index)
                code = (f"torch.broadcast_to(torch.as_tensor({code}, dtype=_dtype, device=_dev), "
                        f"({full}{',' if len(let.index) == 1 else ''}))")
            else:
                code = _expanded(code, let.expr, let.index, shape)
            lets.append(LetPlan(name, code, src, shape=shape))

    gv = g_syms + v_syms
    gv_sizes = {s: row_sizes[s] for s in gv}
    g_sizes = {s: row_sizes[s] for s in g_syms}

    def per_group(e):
        return f"({pr.print_tensor(e, g_syms, g_sizes)}).expand(_B, _T, {', '.join(g_sizes[s] for s in g_syms)})" \
               f".reshape(_B, _T, {g_size})"

    q = {
        "query": py_name(kern.query.tensor.name),
        "key": py_name(kern.key.tensor.name),
        "key_name": kern.key.tensor.name,
        "scale": f"{length} ** -0.5",
        "value": f"({pr.print_tensor(kern.value, gv, gv_sizes)}).expand(_B, _T, "
                 f"{', '.join(gv_sizes[s] for s in gv)}).reshape(_B, _T, {g_size}, {v_size})",
        "row": per_group(kern.row_log),
        "col": per_group(kern.col_log) if kern.col_log != 0 else "",
        "qscale": "" if kern.qscale == 1 else
        f"({pr.print_tensor(kern.qscale, gv, gv_sizes)}).expand(_B, _T, {', '.join(gv_sizes[s] for s in gv)})"
        f".reshape(_B, _T, {g_size}, {v_size})",
        "du": "" if st.readout.du == 0 else pr.print(
            logsub(st.readout.du), st.readout.out_syms, sizes(st.readout.out_syms, sym.output.axes)),
        "narrow": _narrowed_outputs(sym, [rows.index(s) for s in gv], [gv_sizes[s] for s in gv], pr),
        "g_size": g_size,
        # the group axes as separate dims (dsf_matrices indexes the slot lets by the spec's own group axes)
        "g_dims": "".join(f"{g_sizes[s]}, " for s in g_syms),
        "v_size": v_size,
        "length": length,
        "cache_note": report.kv_cache or "",
        # the per-step log-decay per group [B, T, G] (FoX, ALiBi); computed right after the decayed history (its
        # kernel sums read the cumulative G) or, when only A decays, after every let
        "decay": per_group(kern.log_decay) if kern.log_decay != 0 else "",
        "decay_after": next((h for h in sorted(hist) if kern.history_decayed), ""),
        "attention_decayed": kern.attention_decayed,
    }
    # dsf_matrices: the slot basis {phi(k_j)}, j < T: phi(k_i) is the one-hot slot i, phi(q_i) the row of kernel
    # values exp(q_i . k_j / sqrt(K)) (zero for j > i), a cumsum of phi(k) the indicator of the past slots
    pr.infinite = "_T"
    by_kind = {"state": sym.state, "input": sym.driven, "output": _written(sym)[0]}
    shapes = {"A": ("state", "state"), "B": ("state", "input"), "C": ("output", "state"), "D": ("output", "input")}
    matrices = []
    slot_ref = {n: TensorRef(f"slots_[{n!r}]", len(sym.let(n).tensor.axes), True)
                for n in [kern.query.tensor.name, kern.key.tensor.name, *hist]}
    with _rebound(pr, slot_ref):
        for name in ("A", "B", "C", "D"):
            rk, ck = shapes[name]
            rshape = [pr.size(a.extent) for a in by_kind[rk].axes]
            cshape = [pr.size(a.extent) for a in by_kind[ck].axes]
            m = _written_matrix(sym, name)
            code = "None" if m is None else pr.print(
                sp.powsimp(logsub(m.entry)), m.rows + m.cols,
                {**sizes(m.rows, by_kind[rk].axes), **sizes(m.cols, by_kind[ck].axes)})
            matrices.append((name, code, rshape, cshape))
    fused = _fused_softmax(sym, kern, lets, g_syms)
    q["fused"] = fused  # the kernel-sum let computed with the attention in one pass (backend="triton"), or ""
    if fused:
        _, qn, _, _, _ = next(ks for ks in kern.kernel_sums if ks[0] == fused)
        gcum = ", _gcum" if kern.attention_decayed else ""
        q["fused_call"] = f"_fused({py_name(qn)}, {py_name(next(iter(hist)))}, _fused_all, {length} ** -0.5{gcum})"
    hist_role = "decayed" if kern.history_decayed else "history"
    q["slot_lets"] = [(kern.query.tensor.name, "query"), (kern.key.tensor.name, "key")] + [(h, hist_role) for h in
                                                                                          sorted(hist)]
    out_shape = [pr.size(a.extent) for a in sym.output.axes]
    in_shape = [pr.size(a.extent) for a in sym.input.axes]
    pr.infinite = None
    posts = _post_plans(sym, pr, sizes, logsub)
    layer_shape = [pr.size(a.extent) for a in sym.layer_output.axes]
    if None in st.outer.out_map or list(st.outer.out_map) != sorted(st.outer.out_map) \
            or len(sym.output.axes) != len(gv):
        raise SpecErrors([SpecError("the kernelised form needs the output axes to be the state's group and value "
                                    "axes, in order", sym.matrices["C"].span)],
                         sym.checked.spec.path, sym.checked.spec.source)
    return ModulePlan(
        model=sym.model, description=sym.description, stamp=stamp, analysis_table=report.table(), free_dims=free,
        derived_dims=derived, dim_locals=dim_locals, params=params, param_locals=param_locals, lets=lets,
        input_name=py_name(sym.input.name), input_shape=in_shape, input_size=" * ".join(in_shape),
        state_shape=[], state_size="", output_shape=out_shape, output_size=" * ".join(out_shape),
        family=st.family.value, core=[], matrices=matrices, first_param=params[0].attr if params else None,
        pre_readout=False, running=[let.tensor.name for let in sym.running_lets if let.tensor.name not in hist],
        driven=py_name(sym.driven.name), driven_size=" * ".join(pr.size(a.extent) for a in sym.driven.axes),
        output_local=py_name(sym.output.name), layer_output_size=" * ".join(layer_shape), posts=posts,
        **_spec_output_fields(sym, pr), template="quadratic.py.jinja", quadratic=q,
        triton_note="Triton kernel: FlashAttention-style quadratic attention", helpers=sorted(pr.helpers),
    )


def _fused_softmax(sym, kern, lets: list, g_syms: tuple) -> str:
    """The kernel-sum let whose negation is the attention's whole row weight, over the same scores (its query, the
    history of the attention's key, the same decay) and without a column weight: the weights are then a softmax and
    ``dsfc.runtime.triton_softmax`` computes the attention and that log-sum in one fused pass. "" when not (an
    attention sink's extra term, a column weight, another row term, values that read a let computed after it)."""
    neg = -kern.row_log
    name = _src_name(neg)
    if name is None or tuple(neg.indices) != g_syms or kern.col_log != 0 or len(kern.histories) != 1:
        return ""
    ks = next((ks for ks in kern.kernel_sums if ks[0] == name), None)
    if ks is None or not ks[3] or ks[4] is not None or ks[1] != kern.query.tensor.name \
            or ks[2] != kern.key.tensor.name or kern.history_decayed != kern.attention_decayed:
        return ""
    # the values are formed in _lets at that let: every let they read must come before it
    order = [let.name for let in lets]
    before = set(order[:order.index(name)])
    read = {_src_name(x) for x in sp.preorder_traversal(kern.value)} & set(order)
    return name if read <= before else ""


def _src_name(e) -> str | None:
    return str(e.base.label) if isinstance(e, sp.Indexed) else None
