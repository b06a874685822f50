"""Found by the eighteenth user hunt (a new user misusing the ``step`` API, feeding inf / -inf, mixing dtypes and
autocast, replacing or freezing parameters, asking for sizes past the kernels' 32-bit offsets, spelling
TRITON_INTERPRET and DSFC_* variables oddly, and giving the CLI specs whose dims have no value).
Each test failed before its fix, except those that pin what a fix keeps.

Found and fixed:

- ``TRITON_INTERPRET=true`` (or ``on`` / ``yes`` / ``True``, which Triton itself reads as true and so ran its
  interpreter) had every Triton launcher refuse CPU tensors with "set TRITON_INTERPRET=1", and ``dsfc check`` report
  "triton was imported before TRITON_INTERPRET=1 could be set": dsfc compared the variable with "1" only. Now
  ``dsfc.runtime.dispatch.triton_interpreting`` reads it as Triton does, and the refusal quotes a value that Triton
  reads as false (``TRITON_INTERPRET=' 1'``, ``=banana``).
- The generated diagonal kernels form ``t * stride_t + i * stride_i`` in 32 bits (only the batch term is 64-bit):
  one batch row of 2^31 elements or more (T = 2^20 + 1 tokens of d = 2048) wrapped to a wrong address on the GPU, a
  silently wrong output or an illegal access. ``dsfc.runtime.triton_diagonal`` now refuses such an operand by shape
  (checked here on meta tensors, nothing allocated), naming the shape and the way out (parts with the state carried,
  or backend='torch').
- ``dim d`` without a value (a user meaning "the caller sets d") was only "unexpected end of statement; expected
  '='": the error now hints that every dim has a value in the spec, which the constructor argument and ``--dims``
  override (``dsfc.lang.parse``).

Checked clean (no change): ``step`` with an integer state, a state of other dims, a batch-1 state for a batch of 2
(all named as ``state``), a state that requires grad (its gradient flows), a float64 / fp16 state for fp32 u;
inf and -inf (not NaN) in u, the initial state, u_t and the step state on both backends (named, with the index);
6 steps against one forward in fp16 / bf16 on the torch and Triton (interpreted) paths of S6 (equal outputs, fp32
states); forward and step under ``torch.autocast("cpu", bfloat16)``, ``no_grad`` and ``inference_mode`` (the
autocast result equals the plain one); u in float64 with fp32 parameters and a bf16 u with a float64 state; a module
moved to float64 run on Triton (interpreted) against the float64 reference; frozen parameters (no grad for them,
grads for the rest, on Triton too); a parameter replaced by one of the wrong shape (named) or deleted (named);
dims 0, -1, 2.5 and True at construction (named). CLI: ``--dims`` items ``d=x``, ``d=1e3``, ``d=3,n=2``, a dim given
twice, an unknown dim, ``d=0``, a dim too large for the parameters (named); ``-T 0`` / ``--batch 0`` /
``--repeats 0`` for bench; ``-o`` a directory for catalog / plot and a path under a regular file for compile,
catalog, plot (named; nothing written); DSFC_COMPILE / DSFC_SCAN_COMPILE typos (warned, from earlier hunts),
DSFC_TRACEBACK=yes (only "1" shows tracebacks).
"""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401,I001  (sets TRITON_INTERPRET=1 before triton is imported)

import functools
from pathlib import Path

import pytest
import torch

from dsfc.cli import main
from dsfc.lang.errors import SpecErrors
from dsfc.pipeline import compile_text
from dsfc.reference import reference_forward

from dsf_testing import TRITON
from generated.s6 import S6  # imports triton now, under TRITON_INTERPRET=1: a test below sets it to "0" for a while

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
needs_triton = pytest.mark.skipif(not TRITON, reason="triton (and numpy for its interpreter) not installed")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]


def _s6(backend: str, dtype=None, **kw):
    torch.manual_seed(0)
    return S6(**{"d": 4, "n": 3, "r": 2, **kw}, backend=backend, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _s6_spec():
    return compile_text((ROOT / "specs" / "s6.dsf").read_text(), "s6.dsf")


def _reference(model, u, h0=None):
    result = _s6_spec()
    dims = result.sym.dim_values({"d": model.d, "n": model.n, "r": model.r})
    params = {k: v.detach().to(F64) for k, v in model.named_parameters()}
    return reference_forward(result.sym, dims, params, u.to(F64), initial_state=h0)


# ---------------------------------------------------------------------------------------------------- TRITON_INTERPRET


@needs_triton
@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's spellings matter on CPU only")
@pytest.mark.parametrize("value", ["true", "True", "on", "yes"])
def test_triton_interpret_spelled_as_triton_reads_it_runs(monkeypatch, value):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    model = _s6("triton", F64)
    u = torch.randn(2, 5, 4, dtype=F64)
    want, _ = _reference(model, u)
    torch.testing.assert_close(model(u), want, rtol=1e-10, atol=1e-10)
    from dsfc.check import triton_runnable

    assert triton_runnable() == "interpreted"


@needs_triton
@pytest.mark.skipif(DEVICE != "cpu", reason="CPU tensors are refused only off the interpreter")
@pytest.mark.parametrize("value", ["0", " 1", "banana"])
def test_triton_interpret_read_as_false_is_quoted(monkeypatch, value):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    with pytest.raises(RuntimeError, match=rf"need CUDA tensors.*it is '{value}', which Triton reads as false"):
        _s6("triton")(torch.randn(1, 3, 4))


# ------------------------------------------------------------------------------------------- 32-bit kernel offsets


@needs_triton
@pytest.mark.skipif(DEVICE != "cpu", reason="meta tensors reach the launcher under the interpreter only")
def test_diagonal_kernel_refuses_rows_past_int32_by_shape():
    """Meta tensors: only shapes, nothing allocated. A row of exactly 2^31 elements has offsets up to 2^31 - 1."""
    model = _s6("triton", d=2048, n=16, r=4).to("meta")
    assert model(torch.empty(1, 2**20, 2048, device="meta")).shape == (1, 2**20, 2048)
    with pytest.raises(ValueError, match=r"shape \(1, 1048577, 2048\).*32-bit offsets.*in parts.*backend='torch'"):
        model(torch.empty(1, 2**20 + 1, 2048, device="meta"))
    model.backend = "torch"  # the way out named by the error
    assert model(torch.empty(1, 2**20 + 1, 2048, device="meta")).shape == (1, 2**20 + 1, 2048)


# ------------------------------------------------------------------------------------------------- dims without value


@pytest.mark.parametrize("line", ["dim d", "dim d   # the width, set by the caller"])
def test_dim_without_value_hints_defaults(line):
    text = f"model M\n{line}\ninput u[d]\nstate h[d]\noutput y[d]\nA[i, j] = delta(i, j) * 0.5\n"
    with pytest.raises(SpecErrors) as info:
        compile_text(text, "m.dsf")
    (err,) = info.value.errors
    assert err.span.line == 2
    assert "expected '='" in err.message
    assert "every dim has a value in the spec: write dim d = 64" in err.hint and "--dims d=" in err.hint


def test_dim_without_value_from_the_cli(tmp_path, capsys):
    spec = tmp_path / "m.dsf"
    spec.write_text("model M\ndim d\n")
    assert main(["check", str(spec), "--dims", "d=3", "--no-triton"]) == 2
    err = capsys.readouterr().err
    assert "m.dsf:2:6" in err and "every dim has a value" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- pinned: step and inf


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_state_misuse_is_named(backend):
    model = _s6(backend)
    u = torch.randn(2, 5, 4)
    _, state = model(u, output_final_state=True)
    with pytest.raises(TypeError, match="state must be a floating-point tensor, got torch.int64"):
        model.step(u[:, 0], state.to(torch.int64))
    with pytest.raises(ValueError, match=r"state must have shape \(2, 4, 3\).*got \(2, 4, 5\)"):
        model.step(u[:, 0], torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"state must have shape \(2, 4, 3\).*got \(1, 4, 3\)"):
        model.step(u[:, 0], state[:1])
    leaf = state.detach().clone().requires_grad_()
    y, new = model.step(u[:, 0], leaf)
    (y.sum() + new.sum()).backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    for other in (state.double(), state.half()):  # another float dtype: read, the new state stays fp32
        assert model.step(u[:, 0], other)[1].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
def test_infinite_inputs_are_named(backend, value):
    model = _s6(backend)
    u = torch.randn(2, 5, 4)
    _, state = model(u, output_final_state=True)
    bad_u = u.clone()
    bad_u[0, 1, 2] = value
    bad_state = state.clone()
    bad_state[1, 0, 0] = value
    with pytest.raises(ValueError, match=r"u contains NaN or inf \(first at \[batch, time, feature\] = \[0, 1, 2\]"):
        model(bad_u)
    with pytest.raises(ValueError, match="initial_state contains NaN or inf"):
        model(u, bad_state)
    with pytest.raises(ValueError, match=r"u_t contains NaN or inf \(first at \[batch, feature\] = \[0, 2\]"):
        model.step(bad_u[:, 1], state)
    with pytest.raises(ValueError, match="state contains NaN or inf"):
        model.step(u[:, 1], bad_state)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_steps_match_one_forward(backend, dtype):
    model = _s6(backend)
    u = torch.randn(2, 6, 4).to(dtype)
    with torch.no_grad():
        y, final = model(u, output_final_state=True)
        state, ys = None, []
        for t in range(u.shape[1]):
            y_t, state = model.step(u[:, t], state)
            ys.append(y_t)
    assert final.dtype == state.dtype == torch.float32
    # the same fp32 recurrence either way; only the rounding of y to the half dtype may differ by an ulp
    torch.testing.assert_close(torch.stack(ys, 1).float(), y.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(state, final, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_no_grad_inference_mode(backend):
    model = _s6(backend)
    u = torch.randn(2, 5, 4)
    want, want_state = model(u, output_final_state=True)
    with torch.autocast("cpu", torch.bfloat16):  # the lets' linear maps run in bf16 (as asked), the scan in fp32
        got, got_state = model(u, output_final_state=True)
        y_t, _ = model.step(u[:, 0])
    assert got.dtype == got_state.dtype == y_t.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_state, want_state, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y_t, want[:, 0], rtol=2e-2, atol=2e-2)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            torch.testing.assert_close(model.step(u[:, 0])[0], want[:, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_module_and_mixed_dtypes(backend):
    model = _s6(backend).double()
    u = torch.randn(2, 5, 4, dtype=F64)
    h0 = torch.randn(2, 4, 3, dtype=F64)
    want, want_final = _reference(model, u, h0.reshape(2, -1))
    y, final = model(u, h0, output_final_state=True)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final.reshape(2, -1), want_final, rtol=1e-10, atol=1e-10)
    fp32 = _s6(backend)
    assert fp32(u).dtype == F64 and fp32(u.bfloat16(), h0).dtype == torch.bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_replaced_and_deleted_parameters(backend):
    model = _s6(backend)
    model.A_log.requires_grad_(False)
    model.W_B.requires_grad_(False)
    u = torch.randn(2, 5, 4, requires_grad=True)
    model(u).sum().backward()
    assert model.A_log.grad is None and model.W_B.grad is None
    assert model.W_C.grad is not None and model.W_dt.grad is not None and u.grad is not None
    model.W_B = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"parameter 'W_B' has shape \(4, 3\).*give \(3, 4\)"):
        model(u)
    del model.W_B
    with pytest.raises(ValueError, match="parameter 'W_B' is NoneType, expected a tensor of shape"):
        model(u)


@pytest.mark.parametrize("dims", [{"d": 0}, {"n": 0}, {"r": -1}, {"d": 2.5}, {"d": True}])
def test_bad_dims_at_construction(dims):
    with pytest.raises(ValueError, match=f"dim {next(iter(dims))} must be a positive integer"):
        _s6("torch", **dims)


# --------------------------------------------------------------------------------------------------- pinned: CLI

TINY = """\
model Tiny "a small diagonal layer: the CLI's argument checks, not its maths, are under test"
dim d = 3
dim n = 2
input u[d]
state h[d, n]
output y[d]
param a[d, n] = 0.5
A[(i, k), (j, l)] = delta(i, j) * delta(k, l) * a[i, k]
B[(i, k), j] = delta(i, j)
C[o, (i, k)] = delta(o, i)
"""


@pytest.fixture
def tiny(tmp_path):
    spec = tmp_path / "tiny.dsf"
    spec.write_text(TINY)
    return str(spec)


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "--dims", "d=x"], "--dims d: expected an integer, got 'x'"),
        (["check", "--dims", "d=1e3"], "--dims d: expected an integer, got '1e3'"),
        (["bench", "--dims", "d=3,n=2"], "--dims d: expected an integer, got '3,n=2'"),
        (["bench", "--dims", "d=2", "d=3"], "--dims d is given twice, as 2 and 3"),
        (["bench", "--dims", "zz=2"], "unknown dim 'zz'; Tiny has dims d, n"),
        (["bench", "--dims", "d=0"], "dim d must be positive, got 0"),
        (["bench", "-T", "0"], "-T, --batch and --repeats must be at least 1"),
        (["check", "--dims", "d=999999999"], "the parameters hold 2e+09 numbers"),
        (["plot", "--dims", "d=999999999"], "the parameters hold 2e+09 numbers"),
    ],
)
def test_cli_dims_and_sizes(tiny, capsys, args, message):
    assert main([args[0], tiny, *args[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_output_paths(tiny, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    adir = tmp_path / "adir"
    adir.mkdir()
    cases = [
        (["compile", tiny, "-o", str(afile)], "it is a file, not a directory; no files written"),
        (["catalog", tiny, "-o", str(afile / "cat.md")], "is a file, not a directory"),
        (["plot", tiny, "-o", str(afile / "x.png")], "is a file, not a directory"),
        (["catalog", tiny, "-o", str(adir)], "is a directory; give the output file"),
        (["plot", tiny, "-o", str(adir)], "is a directory; give a file name"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in capsys.readouterr().err, args
    assert afile.read_text() == "keep" and not any(adir.iterdir())
