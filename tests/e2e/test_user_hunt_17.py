"""Found by the seventeenth user hunt (a new user misusing the generated modules on both backends and the CLI: strided,
transposed, sliced-with-step and expanded inputs and initial states, torch.func transforms and forward-mode AD,
meta modules, dtype changes mid-use, state dicts from other dims, whole-module torch.save; subcommands with missing
or extra arguments, odd output paths, symlinks, spec files that are long, comment-only, or hold two models).
Each test failed before its fix, except those that pin what a fix keeps.

Found and fixed:

- ``backend="triton"`` under a torch.func transform or forward-mode AD failed deep inside the kernel launcher with
  torch's "Batching rule not implemented for dsfc::diagonal_scan_fwd" (vmap), "In order to use an autograd.Function
  with functorch transforms ... it must override the setup_context staticmethod" (grad, jacrev), "Cannot access
  storage of TensorWrapper" (jvp, jacfwd) or "You must implement the jvp function for custom autograd.Function"
  (``torch.autograd.forward_ad``): the kernels have a reverse-mode gradient only. Now a RuntimeError naming the
  backend, the transform and ``model.backend = 'torch'`` (``dsfc.runtime.checks.triton_refusal``), and
  ``backend="auto"`` on CUDA picks the torch path for such a call instead of the kernels.
- A chain of 200 lets, each reading the one before (``let x2[i: d] = 0.5 * x1[i] + 0.1``, ...), was "internal
  error: RecursionError: maximum recursion depth exceeded ... This is a bug in dsfc": the passes inline lets into one
  another one recursion level per let. Now a spec error at the chain's last let naming its length and the way out
  (``dsfc.lang.check.too_deep_error``, raised by the pipeline for any RecursionError of a pass).
- Two specs in one file (``cat a.dsf b.dsf > both.dsf``) gave twelve errors, one per redeclared dim, input, state,
  output, param and matrix of the second: now one error at the second ``model`` line, saying one model per file.
- An extra argument (``dsfc compare a.dsf b.dsf c.dsf``, ``dsfc plot a.dsf b.dsf``, ``dsfc compile x.dsf --dims
  d=2``) printed the usage of ``dsfc`` itself with "dsfc: error: unrecognized arguments": now the subcommand's usage,
  and that compare takes two specs, plot one, or which subcommands take the option.

Checked clean (no change): transposed, time-strided ([:, ::2]), feature-major and expanded (stride-0 batch) inputs
and initial states on the torch and Triton (interpreted) paths of S6, GLA, DeltaNet, RetNet, RWKV-6, SSD, HGRN
(outputs equal to the contiguous call's; gradients of u, h0 and parameters against the float64 reference); inputs
left unmodified by both backends; requires_grad on h0 only (Triton included); fp16 / bf16 inputs on the Triton path;
torch.func vmap / grad / jvp / jacrev / jacfwd and forward-mode AD on the torch path; torch.compile(dynamic=True)
across changing T and batch on both backends; a module on meta fed meta input; a state or u on another device than the
parameters (named); load_state_dict with a missing key, an extra key, or from a module of other dims (torch names the
key and shapes); torch.save / torch.load of a whole module (weights_only=False; torch's own default refuses it with a
message that says so); .float() / .double() between calls with the state carried; every subcommand without
arguments, ``--dims`` items without ``=`` or a value, ``--json --latex``; ``-o`` the spec itself (compile, catalog,
plot), a non-existent nested directory (created), a dangling, looping or directory symlink as the spec; a spec of
comments only; Greek and accented identifiers (named with their code point); a 2000-term sum (the nesting limit).
"""

from __future__ import annotations

import sys

from tests.triton._device import DEVICE  # noqa: F401,I001  (sets TRITON_INTERPRET=1 before triton is imported)

import functools
import re
import types
from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from dsfc.cli import main
from dsfc.lang.errors import SpecErrors
from dsfc.pipeline import compile_text
from dsfc.reference import reference_forward

from dsf_testing import TRITON

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
needs_triton = pytest.mark.skipif(not TRITON, reason="triton (and numpy for its interpreter) not installed")
# torch.func's own use of torch.jit.script (torch 2.13 deprecates it), not the modules'
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _s6(backend: str):
    from generated.s6 import S6

    torch.manual_seed(0)
    return S6(d=4, n=3, r=2, backend=backend, dtype=F64)


@functools.lru_cache(maxsize=None)
def _s6_spec():
    return compile_text((ROOT / "specs" / "s6.dsf").read_text(), "s6.dsf")


def _reference_y(model, u: torch.Tensor, h0=None) -> torch.Tensor:
    """S6's float64 reference recurrence (dsfc.reference) at the module's parameters."""
    result = _s6_spec()
    dims = result.sym.dim_values({"d": model.d, "n": model.n, "r": model.r})
    params = {k: v.detach() for k, v in model.named_parameters()}
    return reference_forward(result.sym, dims, params, u, initial_state=h0)[0]


def _vmap(m, u, h0):
    return torch.func.vmap(lambda x: m(x[None])[0])(u)


def _grad(m, u, h0):
    return torch.func.grad(lambda x: m(x).sum())(u)


def _jvp(m, u, h0):
    return torch.func.jvp(m, (u,), (torch.ones_like(u),))


def _jacrev(m, u, h0):
    return torch.func.jacrev(lambda x: m(x).sum(-1))(u)


def _jacfwd(m, u, h0):
    return torch.func.jacfwd(lambda x: m(x).sum(-1))(u)


def _dual_u(m, u, h0):
    with fwAD.dual_level():
        return m(fwAD.make_dual(u, torch.ones_like(u)))


def _dual_h0_only(m, u, h0):
    with fwAD.dual_level():
        return m(u, initial_state=fwAD.make_dual(h0, torch.ones_like(h0)))


def _dual_parameter(m, u, h0):
    with fwAD.dual_level():
        params = {k: fwAD.make_dual(v.detach(), torch.ones_like(v)) for k, v in m.named_parameters()}
        return torch.func.functional_call(m, params, (u,))


TRANSFORMS = {
    "vmap": (_vmap, "torch.func.vmap"),
    "grad": (_grad, r"torch.func.grad / vjp / jacrev"),
    "jvp": (_jvp, r"torch.func.jvp / jacfwd"),
    "jacrev": (_jacrev, r"torch.func.grad / vjp / jacrev"),
    "jacfwd": (_jacfwd, r"torch.func.jvp / jacfwd inside torch.func.vmap"),
    "forward_ad u": (_dual_u, "forward-mode AD"),
    "forward_ad h0 only": (_dual_h0_only, "forward-mode AD"),
    "forward_ad parameter": (_dual_parameter, "forward-mode AD"),
}


@needs_triton
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_the_triton_backend_refuses_a_torch_func_transform_by_name_and_the_torch_path_runs_it(name):
    call, says = TRANSFORMS[name]
    u, h0 = torch.randn(1, 3, 4, dtype=F64), torch.randn(1, 4, 3, dtype=F64)
    model = _s6("triton")
    with pytest.raises(RuntimeError, match=r"^S6: backend='triton' cannot run under " + says.replace(".", r"\.")
                       + r".*set model\.backend = 'torch'"):
        call(model, u, h0)
    model.backend = "torch"  # the way out the message names
    call(model, u, h0)


@needs_triton
def test_the_kernels_run_the_next_plain_call_after_a_refusal():
    # the refusal is raised before any launch, inside the transform: nothing of it is left behind (a launcher's own
    # failure under jacfwd left functorch state that broke a later torch.compile'd call)
    u, h0 = torch.randn(1, 3, 4, dtype=F64), torch.randn(1, 4, 3, dtype=F64)
    model = _s6("triton")
    for call in (_jacfwd, _vmap):
        with pytest.raises(RuntimeError, match="backend='triton' cannot run under"):
            call(model, u, h0)
    assert torch.allclose(model(u, initial_state=h0), _reference_y(model, u, h0), atol=1e-10)


def test_the_torch_path_gives_the_reference_jvp():
    # forward-mode AD through the torch backend (what the refusal points to) against finite differences of the
    # float64 reference recurrence
    model = _s6("torch")
    u, v = torch.randn(1, 4, 4, dtype=F64), torch.randn(1, 4, 4, dtype=F64)
    _, tangent = torch.func.jvp(model, (u,), (v,))
    eps = 1e-6
    fd = (_reference_y(model, u + eps * v) - _reference_y(model, u - eps * v)) / (2 * eps)
    assert torch.allclose(tangent, fd, atol=1e-7)


@needs_triton
def test_auto_picks_the_torch_path_for_a_call_the_kernels_cannot_run():
    # backend="auto" chooses Triton for a CUDA input: simulated here (no GPU) by an input that reports is_cuda
    model = _s6("auto")
    on_gpu = types.SimpleNamespace(is_cuda=True)
    assert model._resolve_backend(on_gpu) == "triton"
    picked = []
    torch.func.vmap(lambda x: picked.append(model._resolve_backend(on_gpu)) or x)(torch.zeros(2))
    assert picked == ["torch"]
    assert model._resolve_backend(torch.zeros(1)) == "torch"  # a CPU input: torch, as before


@needs_triton
def test_the_quadratic_triton_backend_refuses_vmap_by_name():
    from generated.softmax_attention import SoftmaxAttention

    model = SoftmaxAttention(d=4, H=2, K=2, V=2, backend="triton", dtype=F64)
    u = torch.randn(2, 3, 4, dtype=F64)
    with pytest.raises(RuntimeError, match=r"^SoftmaxAttention: backend='triton' cannot run under torch\.func\.vmap"):
        _vmap(model, u, None)
    model.backend = "torch"
    assert torch.allclose(_vmap(model, u, None), model(u))


def _chain(n: int) -> str:
    lets = "\n".join(f"let x{k}[i: d] = 0.5 * x{k - 1}[i] + 0.1" for k in range(1, n))
    return f"""\
model Chain "a long chain of lets"
dim d = 3
input u[d]
state h[d]
output y[d]
param a[d] = 0.5
let x0[i: d] = u[i]
{lets}
A[i, j] = delta(i, j) * sigmoid(a[i])
B[i, k] = delta(i, k) * x{n - 1}[k]
C[o, i] = delta(o, i)
D[o, k] = 0
"""


def test_a_long_chain_of_lets_is_a_spec_error_at_its_last_let(tmp_path, capsys):
    spec = tmp_path / "chain.dsf"
    spec.write_text(_chain(200))
    # Python's default limit, what `dsfc compile` runs under: a test that ran torch.compile before this one in the
    # same worker left a higher limit behind (dynamo raises it), and the chain of 200 then compiled
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        status = main(["compile", str(spec), "-o", str(tmp_path / "out")])
    finally:
        sys.setrecursionlimit(limit)
    assert status == 2
    err = capsys.readouterr().err
    assert f"{spec}:206:1: error: spec is too deeply nested to compile: let 'x199' ends a chain of 200 lets" in err
    assert "(x199 <- x198 <- x197 <- ... <- x1 <- x0)" in err and "hint: a chain of up to about 150 lets" in err
    assert "internal error" not in err and "RecursionError" not in err
    assert not (tmp_path / "out").exists()


def test_two_models_in_one_file_are_one_error(tmp_path, capsys):
    both = tmp_path / "both.dsf"
    s6, lru = (ROOT / "specs" / "s6.dsf").read_text(), (ROOT / "specs" / "lru.dsf").read_text()
    both.write_text(s6 + lru)
    assert main(["compile", str(both), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    line = s6.count("\n") + next(i for i, text in enumerate(lru.splitlines(), 1) if text.startswith("model "))
    assert err.count("error:") == 1, err
    assert (f"both.dsf:{line}:1: error: only one model per file: line {line} starts a second model (it declares "
            "A, B, C, D, input, output, state again)") in err
    assert "put each model in a .dsf file of its own" in err and not (tmp_path / "out").exists()


def test_a_repeated_model_line_alone_is_still_its_own_error():
    # pins what the fix keeps: a model line given twice, with no second model after it, stays one error at that line
    text = (ROOT / "specs" / "s6.dsf").read_text().replace("model S6 ", "model S6 \"x\"\nmodel S6 ", 1)
    with pytest.raises(SpecErrors) as info:
        compile_text(text, "dup.dsf")
    assert [e.message for e in info.value.errors] == ["only one 'model' statement is allowed"]


@pytest.mark.parametrize("args, says", [
    (["compare", "s6", "lru", "hgrn"], r"dsfc compare: error: unrecognized arguments: .*hgrn\.dsf "
                                      r"\(dsfc compare takes exactly two specs\)"),
    (["plot", "s6", "lru"], r"dsfc plot: error: unrecognized arguments: .*lru\.dsf \(dsfc plot takes one spec: "
                            r"run it once per spec\)"),
    (["compile", "s6", "--dims", "d=2"], r"dsfc compile: error: unrecognized arguments: --dims d=2 \(--dims is an "
                                         r"option of dsfc check / dsfc bench / dsfc plot\)"),
    (["analyze", "s6", "--zzz"], r"dsfc analyze: error: unrecognized arguments: --zzz\n"),
])
def test_an_extra_argument_names_the_subcommand_and_what_it_takes(args, says, capsys):
    argv = [str(ROOT / "specs" / f"{a}.dsf") if a in ("s6", "lru", "hgrn") else a for a in args]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: dsfc {args[0]} ")
    assert re.search(says, err), err
