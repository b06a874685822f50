"""``dsfc check``: the generated module against the reference recurrence, on random inputs at small dims.

Three paths must agree: the float64 reference recurrence (dense matrices, one step at a time), the generated
``forward`` (structured algorithm) and token-by-token ``step``. The generated ``dsf_matrices`` must equal the
reference's dense matrices.

The Triton path (``backend="triton"``), where the spec has a kernel, is checked too at one tiny shape: forward and
final state against the reference, gradients of a random loss against the torch path. Without a GPU the kernels run
under the Triton interpreter: ``TRITON_INTERPRET=1`` is set for the duration of the check (before the generated module
is imported: ``triton.jit`` picks the interpreter when a kernel is defined) and the report says so. A spec without a
kernel gets a note "no Triton kernel (reason)", not a failure.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
import types
from pathlib import Path
from dataclasses import dataclass, field

import sympy as sp
import torch

from .codegen.plan import py_name
from .pipeline import CompileResult
from .reference import dense_matrices, reference_forward
from .codegen.plan import constructor_kwargs

# float64 everywhere: the structured and sequential paths differ only by summation order, so agreement to 1e-8
# relative to the output scale is expected; anything larger is a real mismatch.
TOL = 1e-8


@dataclass
class CheckRow:
    what: str
    shape: str
    abs_err: float
    rel_err: float
    ok: bool


@dataclass
class CheckReport:
    model: str
    dims: dict
    rows: list[CheckRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def worst(self) -> str:
        """One line naming the failed comparison that differs most (relative), its shape and by how much, against
        the tolerance; empty when every row passed."""
        bad = [r for r in self.rows if not r.ok]
        if not bad:
            return ""
        r = max(bad, key=lambda r: (r.rel_err != r.rel_err, r.rel_err))  # NaN first: it is the worst
        more = f" (and {len(bad) - 1} more comparison(s))" if len(bad) > 1 else ""
        return (f"{r.what} at {r.shape} differs from the float64 reference by max abs {r.abs_err:.2e}, rel "
                f"{r.rel_err:.2e} (it passes within {TOL:g}, absolute or relative){more}")

    def table(self) -> str:
        lines = [f"{self.model}  dims {self.dims}"]
        # the widest label sets the column (a fixed 28 let "triton grad A_log (vs torch)" push its row's numbers right)
        width = max([28] + [len(r.what) for r in self.rows])
        for r in self.rows:
            lines.append(f"  {'ok ' if r.ok else 'BAD'} {r.what:<{width}} {r.shape:<16} max abs {r.abs_err:.2e}  "
                         f"rel {r.rel_err:.2e}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_MODULE_DIR: Path | None = None


def _module_dir() -> Path:
    """One private temporary directory per process for the imported sources, removed at exit: a directory per call,
    never removed, left a /tmp/dsfc-* behind on every ``dsfc check``. The files stay while the process runs (Triton
    reads a kernel's source at import, tracebacks and ``inspect`` read it later)."""
    global _MODULE_DIR
    if _MODULE_DIR is None or not _MODULE_DIR.is_dir():
        _MODULE_DIR = Path(tempfile.mkdtemp(prefix="dsfc-"))
        atexit.register(shutil.rmtree, _MODULE_DIR, ignore_errors=True)
    return _MODULE_DIR


def load_module(result: CompileResult, name: str | None = None) -> types.ModuleType:
    """Import generated source as a module (written to a private temporary file first)."""
    mod_name = name or f"dsfc_generated_{result.module_name}"
    # a directory of its own per call inside the process's one: two loads of one spec (other dims, another name)
    # must not overwrite a file a loaded module still reads its source from
    tmp = Path(tempfile.mkdtemp(dir=_module_dir()))
    path = tmp / f"{result.module_name}.py"
    path.write_text(result.source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def spec_errors_at(result: CompileResult, dims: dict[str, int]) -> str | None:
    """The front end's errors with the free dims at ``dims`` instead of their defaults, or None.

    The compiler checks subscript ranges (``u[h * 4 + b]``), exact divisions and initial values at the default dims
    only; at other dims the generated module indexed past a tensor and the CLI reported an internal error."""
    from .lang import ast
    from .lang.check import check_spec
    from .lang.errors import SpecErrors

    spec = result.spec
    statements = tuple(
        dataclasses.replace(s, value=ast.Num(int(dims[s.name]), span=s.value.span))
        if isinstance(s, ast.DimDecl) and s.name in dims else s
        for s in spec.statements
    )
    try:
        check_spec(dataclasses.replace(spec, statements=statements))
    except SpecErrors as exc:
        return exc.render()
    # the dims-only divisors and log / sqrt arguments (lower_to_sympy tested them at the defaults; the generated
    # constructor refuses dims that leave their domain, so the check dims must not)
    values = result.sym.dim_values({k: int(v) for k, v in dims.items()})
    for dom in result.sym.dim_domains:
        value = result.sym.subs_dims(dom.expr, values).evalf()
        if not dom.holds(value):
            at = ", ".join(f"{k}={v}" for k, v in dims.items())
            return (f"{result.spec.path}:{dom.span.line}:{dom.span.column}: {dom.text} is {value} at {at}, but as "
                    f"{dom.role} it must be {dom.need}")
    return None


def small_dims(result: CompileResult) -> dict[str, int]:
    """Shrink the spec's free dims for a fast check, keeping derived dims (e.g. d // H) exact.

    A derived dim that the shrinking brings down to 1 while its default is larger (RG-LRU's block width W // nh at
    W = nh) would make the check blind to its indexing (``c // bw``, ``c % bw``): such dims are widened again by
    growing one free dim a few times over, when that keeps every division exact."""
    sym = result.sym
    base = {k: sym.dim_defaults[k] for k in sym.free_dims}
    defaults = sym.dim_values(base)

    def values(cand):
        try:
            vals = sym.dim_values(cand)
        except Exception:  # noqa: BLE001 - not a valid candidate
            return None
        if not all(float(x).is_integer() and x > 0 for x in vals.values()):
            return None
        return vals if cand == base or spec_errors_at(result, cand) is None else None  # e.g. u[h * 4 + b] at d = 5

    def collapsed(vals) -> int:
        return sum(1 for k, x in vals.items() if x == 1 and defaults[k] > 1)

    # derived dims must stay valid: fall back to the defaults scaled down until every division is exact
    candidates = [{k: min(v, 3 if v <= 8 else 5) for k, v in base.items()}]
    candidates += [{k: min(v, 2 ** (scale + 1)) for k, v in base.items()} for scale in range(6)]
    first_valid = None
    for small in candidates:
        vals = values(small)
        if vals is None:
            continue
        if not collapsed(vals):
            return small
        first_valid = first_valid or small
        for k in small:
            for factor in range(2, 7):
                wider = {**small, k: min(base[k], small[k] * factor)}
                wider_vals = values(wider)
                if wider_vals is not None and not collapsed(wider_vals):
                    return wider
    return first_valid or base


def _err(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    if a.numel() == 0:
        return 0.0, 0.0
    abs_err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return abs_err, abs_err / max(scale, 1e-30)


def triton_runnable() -> str | None:
    """How Triton kernels run in this process: "GPU", "interpreted", None when triton is not installed, or a sentence
    saying why they cannot run here.

    Without CUDA this sets ``TRITON_INTERPRET=1`` for the rest of the process, which only works before triton is
    first imported: ``triton.jit`` picks the interpreter when a function is defined, and ``tl.sum`` & co. are defined
    when ``triton.language`` is imported (a kernel calling a compiled ``tl.sum`` fails inside the interpreter).
    """
    if importlib.util.find_spec("triton") is None:
        return None
    from dsfc.runtime.dispatch import triton_interpreting  # as Triton reads it: "true" and "on" too

    interpreting = triton_interpreting()
    if not interpreting and torch.cuda.is_available():
        return "GPU"
    if not interpreting:
        if "triton" in sys.modules:
            return ("not run: no GPU, and triton was imported before TRITON_INTERPRET=1 could be set "
                    "(run `dsfc check` in a fresh process, or set TRITON_INTERPRET=1 first)")
        os.environ["TRITON_INTERPRET"] = "1"
        return "interpreted"
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(standard.sum, InterpretedFunction):
        return "not run: TRITON_INTERPRET=1 was set after triton was imported (set it before, in a fresh process)"
    return "interpreted"


def run_check(result: CompileResult, dims: dict[str, int] | None = None, seed: int = 0,
              shapes=((1, 1), (2, 7), (3, 16)), model_factory=None, triton: bool = True) -> CheckReport:
    """``triton``: also check the Triton path (see the module docstring)."""
    return _run_check(result, dims, seed, shapes, model_factory, triton_runnable() if triton else "off")


MAX_CHECK_ELEMENTS = 1 << 27  # 1 GiB of float64 parameters: more is not a "small dims" check


class CheckDimsError(ValueError):
    """The spec compiles, but its module cannot be built at the dims a check or benchmark runs at (exit code 2, no
    traceback): too large, or an initialiser that fails there (``log(d - 5)`` at d = 3)."""


class CheckSizeError(CheckDimsError):
    """The spec's tensors are too large to check even at the smallest dims dsfc tries."""


def build_model(cls, result: CompileResult, dims: dict, what: str = "check"):
    """``cls(**dims)``; a ValueError of the generated constructor (the spec's initialisers fail at these dims) is a
    CheckDimsError naming the dims: it was reported as an internal error of dsfc."""
    try:
        return cls(**constructor_kwargs(dims))
    except ValueError as exc:
        raise CheckDimsError(f"cannot build the module at the {what} dims {dims}: {exc}") from None


def param_elements(sym, all_dims: dict) -> int:
    """How many numbers the parameters of the module hold at the given dims (computed, nothing allocated)."""
    subs = {sym.dims[k]: v for k, v in all_dims.items() if k in sym.dims}
    total = 0
    for p in sym.params:
        n = 1
        for ax in p.tensor.axes:
            n *= int(sp.S(ax.extent).subs(subs))
        total += n
    return total


def _nonfinite_cause(sym, all_dims, params, u, h0, h_all, shape) -> str:
    """Why the reference left float64: a DSF matrix that is itself inf / NaN at the sampled input (a fractional
    power of a negative param, exp of a huge value: blaming A's growth for that misled), a post-op, or else the
    recurrence growing the state."""
    running0 = {k: v for k, v in h0.items() if k != "h"} if isinstance(h0, dict) else None
    try:
        mats = dense_matrices(sym, all_dims, params, u, running0)
    except (RuntimeError, ValueError, ZeroDivisionError, OverflowError):  # nothing better to say than growth
        mats = ()
    bad = [name for name, m in zip("ABCD", mats) if not bool(torch.isfinite(m).all())]
    head = f"the reference recurrence is not finite at {shape} (y or the state is inf / NaN): "
    if bad:
        return head + (f"the spec's {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} already inf / NaN at the "
                       "sampled input (a fractional power or log of a negative value, a division by zero, exp "
                       "overflowing)")
    if bool(torch.isfinite(h_all).all()):
        return head + "the state is finite, so a post-op makes the output inf / NaN"
    return (f"the reference recurrence overflows float64 at {shape} (y or the state is inf / NaN): the spec's A "
            "grows the state without bound (see `dsfc analyze`, eigenvalues)")


def _run_check(result, dims, seed, shapes, model_factory, triton_how) -> CheckReport:
    sym = result.sym
    cls = None if model_factory is not None else getattr(load_module(result), result.plan.model)
    # the way out of a size error: dims the caller chose (`dsfc check --dims d=99999999` was told that "a size that
    # is not a free dim cannot be shrunk", about a free dim it had just set) or the spec's fixed sizes
    too_big = ("use smaller --dims" if dims is not None else
               "a size that is not a free dim (a number or a derived dim in an axis) cannot be shrunk for the check")
    if dims is None:
        dims = small_dims(result)
        if cls is not None and param_elements(sym, sym.dim_values(dims)) <= MAX_CHECK_ELEMENTS:
            try:
                build_model(cls, result, dims)
            except CheckDimsError:
                # the initialisers fail at the shrunk dims (log(d - 5) at d = 3): the defaults, where the compiler
                # checked them, are the smallest dims known to work
                dims = {k: sym.dim_defaults[k] for k in sym.free_dims}
    elif {k: dims[k] for k in sym.free_dims if k in dims} != {k: sym.dim_defaults[k] for k in sym.free_dims}:
        problems = spec_errors_at(result, dims)
        if problems is not None:
            raise CheckDimsError(f"{sym.model} is not valid at the dims {dims}:\n{problems}")
    n_params = param_elements(sym, sym.dim_values(dims))
    if n_params > MAX_CHECK_ELEMENTS:
        raise CheckSizeError(
            f"{sym.model}: the parameters hold {n_params:.3g} numbers at the check dims {dims} (more than "
            f"{MAX_CHECK_ELEMENTS:.3g}); {too_big}")
    n_state = sym.state_size().subs({sym.dims[k]: v for k, v in sym.dim_values(dims).items() if k in sym.dims})
    # the reference and dsf_matrices build A_t for every step of a check shape at once: N^2 alone let
    # `--dims d=700` (S6, N = 11200) through to a 13 GiB allocation (B = 2, T = 7)
    steps = max((b * t for b, t in shapes), default=1)
    if n_state.is_Integer and int(n_state) ** 2 * steps > MAX_CHECK_ELEMENTS:  # (an infinite state is never dense)
        raise CheckSizeError(
            f"{sym.model}: the state has N = {int(n_state)} entries at the check dims {dims}, and the reference builds "
            f"the dense N x N matrix A_t for each of {steps} steps ({int(n_state) ** 2 * steps:.3g} numbers, more "
            f"than {MAX_CHECK_ELEMENTS:.3g}); {too_big}")
    torch.manual_seed(seed)
    if model_factory is None:
        model = build_model(cls, result, dims).double()
    else:
        model = model_factory(dims)
    # raw outputs: a NaN output is this check's own finding ("reference stays finite", a BAD row with a note), where
    # the module's FloatingPointError (check_finite_output) stopped the check at its first forward
    model.check_finite = False
    all_dims = sym.dim_values(dims)
    params = {name: p.detach() for name, p in model.named_parameters()}
    params = {p.tensor.name: params[py_name(p.tensor.name)] for p in sym.params}
    d_in = model._in_features()
    report = CheckReport(sym.model, dims)
    if result.structure.family.value == "quadratic attention":
        _check_quadratic(report, model, sym, all_dims, params, d_in, shapes)
        if triton_how != "off":
            _check_triton_quadratic(model, sym, all_dims, params, d_in, report, triton_how, seed)
        return report
    running = bool(sym.running_lets)
    for b, t in shapes:
        u = torch.randn(b, t, d_in, dtype=torch.float64)
        if running:
            # a realistic carried state: the final state of a random prefix (running sums stay consistent)
            with torch.no_grad():
                _, h0 = model(torch.randn(b, 3, d_in, dtype=torch.float64), output_final_state=True)
            h0 = {k: v + 0.1 * torch.randn_like(v) if k == "h" else v for k, v in h0.items()}
        else:
            h0 = torch.randn(b, model._state_size(), dtype=torch.float64) * 0.5
        y_ref, h_ref = reference_forward(sym, all_dims, params, u, initial_state=h0)
        shape = f"B={b} T={t}"
        h_all = torch.cat([x.reshape(b, -1) for x in h_ref.values()], 1) if isinstance(h_ref, dict) else h_ref
        if not bool(torch.isfinite(y_ref).all()) or not bool(torch.isfinite(h_all).all()):
            # nothing to compare: the recurrence itself leaves float64 (|A| far above 1, or huge constants)
            report.rows.append(CheckRow("reference stays finite", shape, float("inf"), float("inf"), False))
            report.notes.append(_nonfinite_cause(sym, all_dims, params, u, h0, h_all, shape))
            break
        with torch.no_grad():
            y, hT = model(u, initial_state=h0, output_final_state=True)
        pairs = [("forward y", y, y_ref)]
        if running:
            pairs += [(f"final state[{k!r}]", hT[k].reshape(b, -1), h_ref[k].reshape(b, -1)) for k in h_ref]
        else:
            pairs.append(("forward final state", hT.reshape(b, -1), h_ref))
        for what, got, want in pairs:
            a, r = _err(got, want)
            report.rows.append(CheckRow(what, shape, a, r, r <= TOL or a <= TOL))
        state = h0
        ys = []
        for i in range(t):
            yi, state = model.step(u[:, i], state)
            ys.append(yi)
        a, r = _err(torch.stack(ys, 1), y_ref)
        report.rows.append(CheckRow("step (token by token)", shape, a, r, r <= TOL or a <= TOL))
        if t <= 16 and sym.state_size().subs({sym.dims[k]: v for k, v in all_dims.items()}) <= 512:
            running0 = {k: v for k, v in h0.items() if k != "h"} if running else None
            with torch.no_grad():
                got = model.dsf_matrices(u, running0) if running else model.dsf_matrices(u)
            want = dense_matrices(sym, all_dims, params, u, running0)
            for name, g, w in zip("ABCD", got, want):
                a, r = _err(g, w)
                report.rows.append(CheckRow(f"dsf_matrices {name}", shape, a, r, r <= TOL or a <= TOL))
    if triton_how != "off":
        _check_triton(result, model, params, report, triton_how, seed)
    return report


def _check_triton(result: CompileResult, model, params, report: CheckReport, how, seed: int) -> None:
    """backend="triton" at B=2, T=7 in float64: forward vs the reference, gradients vs the torch path."""
    module = sys.modules[type(model).__module__]
    if how is None:
        report.notes.append("triton not installed: Triton path not checked")
        return
    if how.startswith("not run"):
        report.notes.append(f"Triton path {how}")
        return
    if getattr(module, "_core_triton_available", None) is None:
        reason = (getattr(result.plan, "triton_note", "") or "none generated").removeprefix("no Triton kernel: ")
        report.notes.append(f"no Triton kernel ({reason})")
        return
    sym = result.sym
    all_dims = sym.dim_values(report.dims)
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(2, 7, model._in_features(), dtype=torch.float64, generator=g)
    h0 = None if sym.running_lets else torch.randn(2, model._state_size(), dtype=torch.float64, generator=g) * 0.5
    shape = "B=2 T=7"
    y_ref, h_ref = reference_forward(sym, all_dims, params, u, initial_state=h0)
    if how == "GPU":  # compiled kernels need CUDA tensors; the reference stays on CPU
        model = copy.deepcopy(model).cuda()
        u, h0 = u.cuda(), None if h0 is None else h0.cuda()
    outs = {}
    with warnings.catch_warnings():
        # padded lanes of a tile compute on zero-filled loads (e.g. 1 / sqrt(1 - a^2) at a = 1) and are masked out of
        # every store; numpy (the interpreter) warns about them, a GPU does not
        warnings.filterwarnings("ignore", r"(invalid value|divide by zero|overflow) encountered", RuntimeWarning)
        _run_backends(model, u, h0, seed, outs)
    y, hT, grads = outs["triton"]
    pairs = [("triton forward y", y, y_ref)]
    if isinstance(hT, dict):
        pairs += [(f"triton final state[{k!r}]", hT[k].reshape(2, -1), h_ref[k].reshape(2, -1)) for k in h_ref]
    else:
        pairs.append(("triton final state", hT.reshape(2, -1), h_ref))
    _report_triton(report, model, pairs, grads, outs["torch"][2], shape, how)


def _check_triton_quadratic(model, sym, all_dims, params, d_in, report: CheckReport, how, seed: int) -> None:
    """backend="triton" of a quadratic-attention module at B=2, T=7 (float64): one pass and a continued KV cache
    (3 cached steps) against the reference, gradients (input and parameters) against the torch path."""
    module = sys.modules[type(model).__module__]
    if how is None or how.startswith("not run") or getattr(module, "_core_triton_available", None) is None:
        report.notes.append("triton not installed: Triton path not checked" if how is None else
                            f"Triton path {how}" if how.startswith("not run") else "no Triton kernel")
        return
    g = torch.Generator().manual_seed(seed + 1)
    prefix = torch.randn(2, 3, d_in, dtype=torch.float64, generator=g)
    u = torch.randn(2, 7, d_in, dtype=torch.float64, generator=g)
    y_ref, _ = reference_forward(sym, all_dims, params, torch.cat([prefix, u], 1))
    if how == "GPU":
        model = copy.deepcopy(model).cuda()
        prefix, u = prefix.cuda(), u.cuda()
    outs = {}
    old_backend = model.backend
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"(invalid value|divide by zero|overflow) encountered", RuntimeWarning)
            for backend in ("triton", "torch"):
                model.backend = backend
                uu = u.clone().requires_grad_()
                y_all = model(torch.cat([prefix, uu], 1))
                _, cache = model(prefix, output_final_state=True)
                y = model(uu, initial_state=cache)
                w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed + 2))
                loss = ((y_all[:, 3:] + y) * w.to(y.device)).sum()
                grads = torch.autograd.grad(loss, [uu] + list(model.parameters()), allow_unused=True)
                grads = [None if x is None else x.cpu() for x in grads]
                outs[backend] = (y_all.detach().cpu(), y.detach().cpu(), grads)
    finally:
        model.backend = old_backend
    y_all, y, grads = outs["triton"]
    pairs = [("triton forward y (one pass)", y_all, y_ref), ("triton forward y (continued KV cache)", y, y_ref[:, 3:])]
    _report_triton(report, model, pairs, grads, outs["torch"][2], "B=2 T=7", how)


def _report_triton(report: CheckReport, model, pairs, grads, torch_grads, shape: str, how: str) -> None:
    """Rows for the Triton path: the forward ``pairs`` (what, got, want), then the gradients of the input and every
    parameter against the torch path's; and the note saying where the kernels ran."""
    names = ["u"] + [n for n, _ in model.named_parameters()]
    for name, got, want in zip(names, grads, torch_grads):
        if want is not None:
            pairs.append((f"triton grad {name} (vs torch)", got if got is not None else torch.zeros_like(want), want))
    for what, got, want in pairs:
        a, r = _err(got, want)
        report.rows.append(CheckRow(what, shape, a, r, r <= TOL or a <= TOL))
    report.notes.append("Triton kernels ran interpreted (TRITON_INTERPRET=1, no GPU): correctness only, not speed"
                        if how == "interpreted" else f"Triton kernels ran on the {how}")


def _run_backends(model, u, h0, seed, outs) -> None:
    """Forward and gradients of a random loss on the triton and torch backends (results on CPU, into ``outs``)."""
    old_backend = model.backend
    try:
        for backend in ("triton", "torch"):
            model.backend = backend
            uu = u.clone().requires_grad_()
            y, hT = model(uu, initial_state=h0, output_final_state=True)
            h = hT["h"] if isinstance(hT, dict) else hT
            gg = torch.Generator().manual_seed(seed + 2)
            loss = (y * torch.randn(y.shape, dtype=y.dtype, generator=gg).to(y.device)).sum()
            loss = loss + (h * torch.randn(h.shape, dtype=h.dtype, generator=gg).to(h.device)).sum()
            wrt = [uu] + list(model.parameters())
            grads = torch.autograd.grad(loss, wrt, allow_unused=True)
            hT = {k: v.detach().cpu() for k, v in hT.items()} if isinstance(hT, dict) else hT.detach().cpu()
            outs[backend] = (y.detach().cpu(), hT, [None if x is None else x.cpu() for x in grads])
    finally:
        model.backend = old_backend


def _check_quadratic(report: CheckReport, model, sym, all_dims, params, d_in, shapes) -> CheckReport:
    """An infinite feature state: the reference runs the paper's slot form over a whole sequence (prefix included),
    and the module must match it in one pass, continuing its KV cache after the prefix, and step by step."""

    def row(what, shape, got, want):
        a, r = _err(got, want)
        report.rows.append(CheckRow(what, shape, a, r, r <= TOL or a <= TOL))

    for b, t in shapes:
        shape = f"B={b} T={t}"
        prefix = torch.randn(b, 3, d_in, dtype=torch.float64)
        u = torch.randn(b, t, d_in, dtype=torch.float64)
        y_ref, _ = reference_forward(sym, all_dims, params, torch.cat([prefix, u], 1))
        with torch.no_grad():
            y_all = model(torch.cat([prefix, u], 1))
            _, cache = model(prefix, output_final_state=True)
            y = model(u, initial_state=cache)
        row("forward y (one pass)", shape, y_all, y_ref)
        row("forward y (continued KV cache)", shape, y, y_ref[:, 3:])
        state, ys = cache, []
        for i in range(t):
            yi, state = model.step(u[:, i], state)
            ys.append(yi)
        row("step (KV cache, token by token)", shape, torch.stack(ys, 1), y_ref[:, 3:])
        if t <= 16:
            with torch.no_grad():
                got = model.dsf_matrices(u)
            want = dense_matrices(sym, all_dims, params, u)
            for name, g, w in zip("ABCD", got, want):
                row(f"dsf_matrices {name} (slot basis)", shape, g, w)
    return report
