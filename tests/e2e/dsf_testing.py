"""Shared helpers of the end-to-end tests: compile a spec, build its module at chosen dims, run the reference.

Not a test module (no ``test_`` prefix); imported by ``test_catalog.py`` and ``test_properties.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from dataclasses import dataclass

import pytest
import torch

from dsfc.check import load_module
from dsfc.codegen.plan import constructor_kwargs, py_name
from dsfc.pipeline import CompileResult, compile_text
from dsfc.reference import dense_matrices, reference_forward

F64 = torch.float64
# the generated Triton kernels run here on CPU under the interpreter, which needs numpy
TRITON = importlib.util.find_spec("triton") is not None and importlib.util.find_spec("numpy") is not None
BACKENDS = ("torch", "triton") if TRITON else ("torch",)
# the Triton interpreter evaluates masked-off lanes too: numpy may warn, nothing is read (a module's ``pytestmark``)
INTERPRETER_WARNINGS = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                                  "ignore:divide by zero encountered:RuntimeWarning",
                                                  "ignore:overflow encountered:RuntimeWarning")
# the dims, input, state and output that many multi-head test specs share (spec text = "model ...\n" + HEAD + ...)
HEAD = """\
dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
"""
_counter = itertools.count()


@dataclass
class Built:
    """A compiled spec, its generated module instantiated at ``dims`` (float64), and the reference's inputs."""

    result: CompileResult
    model: torch.nn.Module
    dims: dict[str, int]  # free dims passed to the constructor
    all_dims: dict[str, int]  # free and derived dims (what reference.py takes)

    @property
    def sym(self):
        return self.result.sym

    def params(self, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The model's parameters keyed by spec name (the generated attribute may be renamed by py_name)."""
        from dsfc.codegen.plan import py_name

        named = dict((model or self.model).named_parameters())
        return {p.tensor.name: named[py_name(p.tensor.name)].detach() for p in self.sym.params}

    def d_in(self) -> int:
        return self.model._in_features()

    def n_state(self) -> int:
        return self.model._state_size()

    def state_shape(self) -> tuple[int, ...]:
        return tuple(int(self.sym.subs_dims(e, self.all_dims)) for e in self.sym.state.shape())

    def d_out(self) -> int:
        """Width of forward's y: the DSF output, or the last post-op's ('post' statements) when there are any."""
        out = self.sym.posts[-1].tensor if getattr(self.sym, "posts", ()) else self.sym.output
        n = 1
        for e in out.shape():
            n *= int(self.sym.subs_dims(e, self.all_dims))
        return n

    @property
    def running(self) -> bool:
        """Specs with running quantities (cumsum/scan/prev lets) carry a state dict {"h": h, <let>: value}."""
        return bool(self.sym.running_lets)

    def initial_state(self, batch: int, gen: torch.Generator, dtype=F64):
        """A random initial state: h ~ 0.5 N(0, 1); for running specs, the final state of a random 3-step prefix
        with noise on h (running sums such as a normaliser must stay consistent, e.g. positive)."""
        h = 0.5 * torch.randn(batch, *self.state_shape(), generator=gen, dtype=F64)
        if not self.running:
            return h.to(dtype)
        dev = next(self.model.parameters(), torch.empty(0)).device  # the prefix runs where the model is
        with torch.no_grad():
            _, s = self.model(torch.randn(batch, 3, self.d_in(), generator=gen, dtype=F64).to(dev),
                              output_final_state=True)
        return {k: (s[k].cpu() + h if k == "h" else s[k].cpu()).to(dtype) for k in s}

    def reference(self, u: torch.Tensor, h0=None, model=None):
        """float64 reference (y [B,T,p], final state [B,N] or state dict) at the params of ``model``, computed on the
        CPU wherever the model and ``u`` are (a GPU's float64 is not the oracle) and returned on ``u``'s device."""
        p = {k: v.detach().cpu().to(F64) for k, v in self.params(model).items()}
        y, hT = reference_forward(self.sym, self.all_dims, p, u.cpu().to(F64),
                                  initial_state=map_state(h0, lambda x: x.cpu().to(F64)))
        return y.to(u.device), map_state(hT, lambda x: x.to(u.device))

    def dense(self, u: torch.Tensor, h0=None):
        running0 = {k: v.to(F64) for k, v in h0.items() if k != "h"} if isinstance(h0, dict) else None
        return dense_matrices(self.sym, self.all_dims, self.params(), u.to(F64), running0)

    def dsf_matrices(self, u: torch.Tensor, h0=None):
        with torch.no_grad():
            if isinstance(h0, dict):
                return self.model.dsf_matrices(u, {k: v for k, v in h0.items() if k != "h"})
            return self.model.dsf_matrices(u)


def build(result: CompileResult, dims: dict[str, int], seed: int = 0) -> Built:
    """Import the generated source under a fresh module name and instantiate it at ``dims`` in float64."""
    module = load_module(result, name=f"dsfc_e2e_{result.module_name}_{next(_counter)}")
    cls = getattr(module, result.plan.model)
    torch.manual_seed(seed)
    model = cls(**constructor_kwargs(dims), dtype=F64)  # dims named like builtins get a trailing _
    return Built(result, model, dict(dims), result.sym.dim_values(dims))


def compile_and_build(text: str, dims: dict[str, int] | None = None, path: str = "x.dsf", seed: int = 0) -> Built:
    result = compile_text(text, path)
    return build(result, dims if dims is not None else {k: result.sym.dim_defaults[k] for k in result.sym.free_dims},
                 seed)


def case_builds(cases: dict):
    """``(compiled, built)`` for a spec hunt's ``CASES`` table (name -> (spec text, family)): ``compiled(name)``
    compiles each spec once per test worker (1-2 s each), ``built(name, **dims)`` builds a fresh float64 module of it
    at its default dims, any of them overridden."""

    @functools.lru_cache(maxsize=None)
    def compiled(name: str) -> CompileResult:
        return compile_text(cases[name][0], f"{name}.dsf")

    def built(name: str, **dims: int) -> Built:
        result = compiled(name)
        return build(result, {k: dims.get(k, result.sym.dim_defaults[k]) for k in result.sym.free_dims})

    return compiled, built


def map_state(state, fn):
    """Apply ``fn`` to a state tensor or to every entry of a state dict (None stays None)."""
    if state is None:
        return None
    if isinstance(state, dict):
        return {k: fn(v) for k, v in state.items()}
    return fn(state)


def state_leaves(state) -> list:
    """The tensors of a state (a tensor, or a dict of them in key order)."""
    return [state[k] for k in sorted(state)] if isinstance(state, dict) else [state]


def generated_class(name: str):
    """The nn.Module class of ``generated/<name>.py``."""
    import importlib

    mod = importlib.import_module(f"generated.{name}")
    return next(v for v in vars(mod).values()
                if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == mod.__name__)


def h_of(state):
    return state["h"] if isinstance(state, dict) else state


def state_err(got, want) -> float:
    """rel_err of two states (tensors of any layout with the same batch, or dicts with the same keys)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (sorted(got), sorted(want))
        return max(state_err(got[k], want[k]) for k in want)
    b = want.shape[0]
    return rel_err(got.reshape(b, -1), want.reshape(b, -1))


def stack_steps(ys: list, u: torch.Tensor, *shape: int) -> torch.Tensor:
    """A loop's per-step outputs stacked along time; [batch, 0, *shape] when the loop ran no step (T = 0)."""
    return torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, *shape)


def matvec(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W [..., d] applied to x [B, d] -> [B, ...]: the projections of the hunts' independent loops."""
    return torch.einsum("...m,bm->b...", W, x)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (0 for empty tensors); the scale is floored so that all-zero outputs pass."""
    if want.numel() == 0:
        return 0.0
    got, want = got.to(F64), want.to(F64)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


def run_steps(model, u: torch.Tensor, h0: torch.Tensor | None):
    """Token-by-token ``step`` over u [B,T,d]; returns (y [B,T,p], final state as step returns it)."""
    state, ys = h0, []
    for t in range(u.shape[1]):
        y_t, state = model.step(u[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


def check_forward_against_loop(built, loop, backends=("torch",)) -> None:
    """Forward (T = 0, 1, 7, 9; batch 1, 3) and token-by-token step against ``loop(params, u, h0)``, an independent
    float64 implementation written from the paper, from zero and (plain-tensor states) from a random initial state;
    dsfc's reference too. Backends other than torch run at T = 0 and the chunk-crossing T = 9 only (the Triton
    interpreter is slow)."""
    gen = torch.Generator().manual_seed(1)
    P = built.params()
    for b, t in ((1, 0), (3, 1), (1, 7), (3, 9)):
        for with_h0 in (False, True) if not built.running else (False,):
            u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
            h0 = 0.5 * torch.randn(b, *built.state_shape(), generator=gen, dtype=F64) if with_h0 else None
            want = loop(P, u, h0).reshape(b, t, built.d_out())
            y_ref, _ = built.reference(u, h0)
            assert rel_err(y_ref, want) < 1e-10, ("reference", b, t, with_h0)
            for backend in backends if t in (0, 9) else ("torch",):
                built.model.backend = backend
                with torch.no_grad():
                    assert rel_err(built.model(u, initial_state=h0), want) < 1e-8, (backend, b, t, with_h0)
            built.model.backend = "torch"
            if t:
                y_s, _ = run_steps(built.model, u, h0)
                assert rel_err(y_s, want) < 1e-8, ("step", b, t, with_h0)


def output_and_grads(model, backend: str, u: torch.Tensor, w: torch.Tensor, dtype=F64, device="cpu"):
    """Run ``model`` (moved in place to device / dtype) on ``backend``; returns y and the gradients of sum(y * w)
    with respect to u and every parameter, all as float64 on the CPU for comparison."""
    model = model.to(device, dtype)
    model.backend = backend
    uu = u.to(device, dtype).requires_grad_()
    y = model(uu)
    grads = torch.autograd.grad((y * w.to(device, dtype)).sum(), [uu, *model.parameters()])
    return y.detach().cpu().to(F64), [g.cpu().to(F64) for g in grads]


def assert_grads_close(got, want, rel: float) -> None:
    """Every gradient finite and within ``rel`` times the largest gradient of all. Not each tensor's own scale: a
    gradient through an underflowed decay is ~1e-100 in float64 and 0 in fp32, all rounding relative to itself."""
    scale = max(e.abs().max().item() for e in want)
    for i, (a, e) in enumerate(zip(got, want, strict=True)):
        assert torch.isfinite(a).all(), f"gradient {i} is not finite"
        err = (a - e).abs().max().item()
        assert err <= rel * scale, f"gradient {i}: error {err:.3g} > {rel:g} x largest gradient {scale:.3g}"


def check_grads_against_loop(built, loop, u: torch.Tensor, w: torch.Tensor, backends=("torch",),
                             to_module=None) -> None:
    """d/d(u, every parameter) of sum(y * w) through the module on each backend against autograd through ``loop``,
    an independent float64 implementation taking the parameters by spec name (``loop(P, u)``); each gradient finite
    and within 1e-8 of the largest. ``to_module``: how the module takes ``u`` when the loop's layout differs."""
    to_module = to_module or (lambda x: x)
    names = [p.tensor.name for p in built.sym.params]
    P = {n: v.clone().requires_grad_() for n, v in built.params().items()}
    uu = u.clone().requires_grad_()
    leaves = [uu, *(P[n] for n in names)]
    want = torch.autograd.grad((loop(P, uu).reshape(w.shape) * w).sum(), leaves, allow_unused=True)
    want = [torch.zeros_like(x) if g is None else g for g, x in zip(want, leaves)]
    want[0] = to_module(want[0])
    scale = max(g.abs().max().item() for g in want)
    named = dict(built.model.named_parameters())
    for backend in backends:
        built.model.backend = backend
        uu = to_module(u).clone().requires_grad_()
        got = torch.autograd.grad((built.model(uu) * w).sum(), [uu, *(named[py_name(n)] for n in names)])
        for n, g, r in zip(["u", *names], got, want, strict=True):
            assert torch.isfinite(g).all() and (g - r).abs().max().item() <= 1e-8 * scale, (backend, n)


def check_state_grads_against_loop(built, loop, T: int, seed: int = 5) -> None:
    """d (sum(y * w) + sum(h_T * w_h)) / d(u, every parameter) of the module (float64, torch path, T steps from a
    random initial state, the final state too) against autograd through ``loop(P, u, h0) -> (y, h_T)``, an
    independent float64 implementation taking the parameters by spec name; each gradient within 1e-9 relative."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, T, built.d_in(), generator=gen, dtype=F64)
    h0 = 0.5 * torch.randn(2, *built.state_shape(), generator=gen, dtype=F64)
    names = [p.tensor.name for p in built.sym.params]
    P = {n: t.clone().requires_grad_() for n, t in built.params().items()}
    uu = u.clone().requires_grad_()
    want_y, want_h = loop(P, uu, h0)
    w = torch.randn(want_y.shape, generator=gen, dtype=F64)
    wh = torch.randn(want_h.shape, generator=gen, dtype=F64)
    want = torch.autograd.grad((want_y * w).sum() + (want_h * wh).sum(), [uu, *[P[n] for n in names]])
    params = dict(built.model.named_parameters())
    uu = u.clone().requires_grad_()
    y, h = built.model(uu, initial_state=h0, output_final_state=True)
    got = torch.autograd.grad((y * w).sum() + (h * wh).sum(), [uu, *[params[py_name(n)] for n in names]])
    for n, g, ww in zip(["u", *names], got, want):
        assert rel_err(g, ww) < 1e-9, n


def check_continued_against_loop(built, loop, on_triton: bool, seed: int = 11) -> None:
    """A sequence cut at an odd offset and continued from the first call's final state (forward, and token by token
    from the same state) against ``loop(P, u)``, an independent float64 implementation over the whole sequence:
    torch at T = 7 + 60 (crossing a 64-step chunk), with ``on_triton`` also Triton at T = 5 + 8 (interpreted on the
    CPU: short). Outputs and the final states within 1e-8."""
    P, gen = built.params(), torch.Generator().manual_seed(seed)
    for backend, (t1, t2) in [("torch", (7, 60))] + ([("triton", (5, 8))] if on_triton else []):
        u = torch.randn(2, t1 + t2, built.d_in(), generator=gen, dtype=F64)
        want = loop(P, u).reshape(2, t1 + t2, built.d_out())
        built.model.backend = backend
        with torch.no_grad():
            y1, h1 = built.model(u[:, :t1], output_final_state=True)
            y2, h2 = built.model(u[:, t1:], initial_state=h1, output_final_state=True)
            assert rel_err(torch.cat([y1, y2], 1), want) < 1e-8, backend
            state, ys = h1, []
            for t in range(t1, t1 + t2):
                y_t, state = built.model.step(u[:, t], state)
                ys.append(y_t)
            assert rel_err(torch.stack(ys, 1), want[:, t1:]) < 1e-8 and state_err(state, h2) < 1e-8, backend
        built.model.backend = "torch"


def grads_of(model, built, u, h0, w):
    """d/d(u, h0, params) of sum(y * w) through ``model`` (None: the float64 reference recurrence)."""
    names = [p.tensor.name for p in built.sym.params]
    named = dict(built.model.named_parameters())
    # the reference runs where its inputs are (the tests hand it CPU tensors), whatever device the model is on
    where = {"device": u.device} if model is None else {}
    params = {n: named[py_name(n)].detach().to(**where).clone().requires_grad_() for n in names}
    uu = u.clone().requires_grad_()
    hh = map_state(h0, lambda x: x.clone().requires_grad_())
    h_leaves = list(hh.values()) if isinstance(hh, dict) else [hh] if hh is not None else []
    if model is None:
        y, _ = reference_forward(built.sym, built.all_dims, params, uu, initial_state=hh)
        leaves = [uu, *h_leaves, *params.values()]
    else:
        y = model(uu, initial_state=hh)
        leaves = [uu, *h_leaves, *(named[py_name(n)] for n in names)]
    got = torch.autograd.grad((y * w).sum(), leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, leaves)]


def check_fp32_against_float64(built, scales, make_input=None) -> None:
    """fp32 against float64 at input scales 1, 10 and 30 (batch 2, T = 9): outputs within 1e-5 and gradients of the
    input and every parameter within 1e-4 of the largest. ``scales``: backend -> the scales it is checked at (the
    float64 run is always the torch path). ``make_input(gen, scale)``: the float64 input (default scale * randn)."""
    gen = torch.Generator().manual_seed(3)
    for scale in (1.0, 10.0, 30.0):
        if make_input is None:
            u = scale * torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
        else:
            u = make_input(gen, scale)
        w = torch.randn(2, 9, built.d_out(), generator=gen, dtype=F64)
        y64, g64 = output_and_grads(built.model, "torch", u, w, dtype=F64)
        for backend in BACKENDS:
            if scale not in scales.get(backend, ()):
                continue
            y32, g32 = output_and_grads(built.model, backend, u, w, dtype=torch.float32)
            built.model.double()
            assert rel_err(y32, y64) < 1e-5, (backend, scale)
            assert_grads_close(g32, g64, 1e-4)


def check_backend(built, backend, shapes, steps=True, h0s=(False, True), tol=1e-8, device="cpu"):
    """``built.model`` on ``backend`` against the float64 reference recurrence, per (batch, T) in ``shapes``, without
    and / or with an initial state: output, final state, token-by-token ``step`` (``steps``) and the gradients of
    the input, the initial state and every parameter. ``device``: where the model runs (tests/triton pass their
    DEVICE, "cuda" under benchmarks/gpu_check.sh); inputs are drawn on the CPU and the reference stays there."""
    model = built.model.to(device)
    model.backend = backend
    gen = torch.Generator().manual_seed(0)

    def on(x):
        return map_state(x, lambda v: v.to(device))

    def back(xs):
        return [x.cpu() for x in xs]

    for b, t in shapes:
        for h0 in (built.initial_state(b, gen) if given else None for given in h0s):
            u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
            y_ref, h_ref = built.reference(u, h0)
            with torch.no_grad():
                y, hT = model(on(u), initial_state=on(h0), output_final_state=True)
            y, hT = y.cpu(), map_state(hT, torch.Tensor.cpu)
            assert rel_err(y, y_ref) < tol and state_err(hT, h_ref) < tol, (backend, b, t)
            if steps:
                y_s, h_s = run_steps(model, on(u), on(h0))
                y_s, h_s = y_s.cpu(), map_state(h_s, torch.Tensor.cpu)
                assert rel_err(y_s, y_ref) < tol and state_err(h_s, h_ref) < tol, (backend, b, t, "step")
            w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
            got, want = back(grads_of(model, built, on(u), on(h0), on(w))), grads_of(None, built, u, h0, w)
            # an exactly-zero reference gradient (a decay at T = 1 from a zero state) may come back as rounding
            # noise of the log-decay backward: compare against the largest gradient's scale
            scale = max((g.abs().max().item() for g in want if g.numel()), default=0.0)  # T = 0: u's is empty
            for k, (g, r) in enumerate(zip(got, want)):
                err = (g - r).abs().max().item() if g.numel() else 0.0
                assert torch.isfinite(g).all() and err <= 1e-7 * scale, (backend, b, t, k)


def check_new_spec(text: str, family, dims: dict[str, int], name: str) -> None:
    """A user spec compiles to ``family`` (None: any) and matches the reference on the torch and reference backends
    and, where triton and numpy are installed, on the Triton path (interpreted on CPU: one shape, from an initial
    state, no step; the torch run covers step)."""
    built = compile_and_build(text, dims, path=f"{name}.dsf")
    assert family is None or built.result.structure.family == family, built.result.structure.family_reason
    check_backend(built, "torch", ((1, 1), (2, 7)))
    check_backend(built, "reference", ((2, 5),), steps=False, h0s=(True,))
    if TRITON:
        check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))


def check_small_chunks(built, shapes=((3, 9),), chunk: int = 3) -> None:
    """For the chunked families: ``built.model``'s torch path with the generated module's chunked scans patched to
    ``chunk`` steps (T = 9 crosses chunk boundaries, with a partial last chunk) against the reference."""
    import sys

    from dsfc.runtime import scans

    module = sys.modules[type(built.model).__module__]
    for fn in ("chunked_outer_scan", "chunked_delta_scan", "chunked_dplr_scan"):
        if hasattr(module, fn):
            setattr(module, fn, functools.partial(getattr(scans, fn), chunk=chunk))
    check_backend(built, "torch", shapes, steps=False)


def check_all_paths(built, family) -> None:
    """The hunts' per-spec check: the compiled family is ``family``; torch at T = 1, 7 (batch 1, 3) with step and
    gradients and at T = 0 (batch 3); Triton (interpreted on CPU where there is no GPU) from an initial state; and
    the chunked families again with chunks of 3 steps (``check_small_chunks``)."""
    from dsfc.analysis.structure import Family

    assert built.result.structure.family == family, built.result.structure.family_reason
    check_backend(built, "torch", ((1, 1), (3, 7)))
    check_backend(built, "torch", ((3, 0),), steps=False)
    if TRITON:
        check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))
    if family in (Family.CHUNKED_OUTER, Family.CHUNKED_DELTA, Family.CHUNKED_DPLR):
        check_small_chunks(built)


def check_structure_report(built, family, eigen, true_bound=None, make_input=None) -> None:
    """The hunts' report check: ``dsfc analyze``'s family is ``family`` and its eigenvalue bound ``eigen``; the bound
    it claims (or ``true_bound``, where the report is weaker than the spec's truth) holds for the module's own A at
    random inputs (scale 3; ``make_input(built, gen)`` for specs that need a particular input), read mid-sequence
    for specs with running quantities."""
    from dsfc.analysis.facts import Bound

    report = built.result.report
    assert built.result.structure.family == family, built.result.structure.family_reason
    assert eigen == report.eigen_bound, report.eigen_reason
    gen = torch.Generator().manual_seed(5)
    running0 = built.initial_state(2, gen) if built.running else None
    u = make_input(built, gen) if make_input else 3 * torch.randn(2, 6, built.d_in(), generator=gen, dtype=F64)
    lam = torch.linalg.eigvals(built.dsf_matrices(u, running0)[0]).abs()
    bound = true_bound or report.eigen_bound
    if bound == Bound.STABLE:
        assert (lam < 1).all(), lam.max()
    elif bound == Bound.MARGINAL:
        assert (lam <= 1 + 1e-12).all(), lam.max()


def spec_hunt_tests(cases: dict, independent: dict, eigen: dict, built, true_bound: dict | None = None,
                    backends=BACKENDS, grad_backends=("torch",)) -> tuple:
    """The four checks every spec hunt runs on each spec of its ``CASES`` table, as test functions parametrised by
    spec name; the hunt binds them to ``test_*`` names so that pytest collects them there:

    * the forward, step and initial state against ``independent[name]``, the hunt's own float64 loop
      (``check_forward_against_loop``);
    * d/d(u, every parameter) of sum(y * w) at batch 2, T = 5 against autograd through that loop
      (``check_grads_against_loop``; torch only by default: the Triton path's gradients are checked against the
      reference by the third check, and the interpreter is slow);
    * every path against dsfc's reference (``check_all_paths``);
    * the family and the eigenvalue bound ``eigen[name]``, the claim (or ``true_bound[name]`` where the report is
      weaker than the truth) checked on the module's own A (``check_structure_report``).

    ``backends`` / ``grad_backends``: a tuple, or a function of the spec name giving one."""
    def pick(choice, name):
        return choice(name) if callable(choice) else choice

    true_bound = true_bound or {}
    each = pytest.mark.parametrize("name", list(cases))

    @each
    def forward(name):
        check_forward_against_loop(built(name), independent[name], backends=pick(backends, name))

    @each
    def gradients(name):
        b = built(name)
        gen = torch.Generator().manual_seed(2)
        u = torch.randn(2, 5, b.d_in(), generator=gen, dtype=F64)
        w = torch.randn(2, 5, b.d_out(), generator=gen, dtype=F64)
        check_grads_against_loop(b, independent[name], u, w, backends=pick(grad_backends, name))

    @each
    def reference(name):
        check_all_paths(built(name), cases[name][1])

    @each
    def report(name):
        check_structure_report(built(name), cases[name][1], eigen[name], true_bound.get(name))

    return forward, gradients, reference, report
