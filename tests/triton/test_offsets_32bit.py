"""32-bit address safety of the Triton kernels, and backend="auto" falling back to torch where they refuse a size.

Checked (audit of every kernel's address arithmetic, ``tl.program_id`` / ``* stride`` / ``.to(tl.int64)``):

* outer-product chunked kernels (runtime/triton_outer.py): the flat-grid coordinates (``_program_coords``,
  ``_sub_chunk``, ``_epilogue_coords``) are int64, so every ``(b * T + t) * H + h`` row, every per-chunk state offset
  ``(i_bh * NC + c) * K * V`` and the gradient parts' ``part`` are 64-bit; only within-tile offsets stay 32-bit.
  FOUND and fixed: the decode-step kernel ``_outer_step`` formed ``i_bh * K`` / ``i_bh * V`` from the int32 program
  id (only its strided state offsets used an int64 copy): at B * H * K >= 2^31 (8 GiB of fp32 q at T = 1) the q, k,
  v, g and y addresses wrapped. The (b, h) index is now cast once.
* delta-rule kernels (runtime/triton_delta.py), attention kernels (runtime/triton_attention.py), dense kernels:
  program bases already int64; nothing to guard.
* generated diagonal kernels: the batch term is 64-bit but the offsets within one batch row (t * stride_t + ...) are
  32-bit per step, so they stay guarded, by shape, before any launch; the predicate now lives in
  ``dispatch.check_offsets`` (raising ``OffsetLimitError``, a ValueError naming the tensor, its extent and 2**31).

FOUND and fixed: backend="auto" on CUDA raised that error instead of running the torch path. The generated forward
now catches OffsetLimitError (raised by the kernel's own exact check, before any launch) and, under "auto", reruns
the call on the torch path with one OffsetFallback warning per module; "triton" keeps the error. A conservative
T * N rule would have refused S6 at d * n times too short a sequence: the exact limit is tested at the real size
on meta tensors (no memory), and the fallback's numbers on tiny tensors with the limit monkeypatched small.
"""

import inspect
import warnings
from pathlib import Path

import pytest

from tests.triton._device import DEVICE  # noqa: F401  (first: sets TRITON_INTERPRET=1 on CPU)

import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

import dsfc.runtime.dispatch as dispatch  # noqa: E402
import generated.s6 as s6_module  # noqa: E402
from dsfc.runtime.checks import OffsetFallback  # noqa: E402
from dsfc.runtime.dispatch import OffsetLimitError, check_offsets, row_extent  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402

F64 = torch.float64


@pytest.fixture
def auto_picks_triton(monkeypatch):
    """backend="auto" picks Triton on CUDA only; here (CPU interpreter, meta tensors) make it pick Triton too, so the
    fallback after the kernel's refusal is what runs."""
    real = s6_module.choose_backend

    def choose(module, *args):
        if module.backend == "auto":
            module.backend = "triton"
            try:
                real(module, *args)  # the other refusals still apply
            finally:
                module.backend = "auto"
            return "triton"
        return real(module, *args)

    monkeypatch.setattr(s6_module, "choose_backend", choose)


def _reference(model, u, h0):
    """The fp64 step-by-step DSF recurrence (dsfc.reference) with the module's parameters."""
    result = compile_text((Path(__file__).resolve().parents[2] / "specs" / "s6.dsf").read_text(), "s6.dsf")
    dims = result.sym.dim_values({"d": model.d, "n": model.n, "r": model.r})
    params = {k: v.detach().to(F64) for k, v in model.named_parameters()}
    return reference_forward(result.sym, dims, params, u.to(F64), initial_state=h0)


def _s6(backend, **kw):
    torch.manual_seed(0)
    return s6_module.S6(**{"d": 4, "n": 3, "r": 2, **kw}, backend=backend).to(DEVICE)


# ------------------------------------------------------------------------------------------------- the predicate


def test_row_extent_is_the_largest_offset_of_one_batch_row():
    x = torch.empty(3, 5, 7)
    assert row_extent(x) == 5 * 7 - 1
    assert row_extent(x.transpose(1, 2)) == 5 * 7 - 1  # a permuted view reaches as far
    assert row_extent(x[:, ::2]) == 2 * 2 * 7 + 6  # a strided slice: its last element, not its size
    assert row_extent(torch.empty(3, 1, 7).expand(3, 5, 7)) == 6  # stride 0 adds nothing
    assert row_extent(torch.empty(3, 0, 7)) == 0


def test_check_offsets_is_exact_and_names_tensor_extent_and_limit(monkeypatch):
    monkeypatch.setattr(dispatch, "MAX_OFFSET", 34)
    check_offsets("the kernels", [("u", torch.empty(2, 5, 7))])  # offsets 0 .. 34: fits
    with pytest.raises(OffsetLimitError, match=r"the kernels cannot address u of shape \(2, 6, 7\): one batch row "
                                               r"spans 42 elements.*32-bit offsets \(35 = 2\*\*31\)"):
        check_offsets("the kernels", [("u", torch.empty(2, 5, 7)), ("u", torch.empty(2, 6, 7))])
    assert issubclass(OffsetLimitError, ValueError)  # what callers caught before it had its own class


# ------------------------------------------------------------------------------- the real limit, on meta tensors


@pytest.mark.skipif(DEVICE != "cpu", reason="meta tensors reach the launcher under the interpreter only")
def test_auto_falls_back_at_the_exact_s6_limit_not_at_t_times_n(auto_picks_triton):
    """S6 at d = 2048, n = 16: its kernel reads [B, T, d] rows, so it runs up to T * d = 2^31 elements a row (a
    T * N rule would stop it at T = 2^16). Past that, auto runs torch (warned once), triton raises."""
    model = _s6("auto", d=2048, n=16, r=4).to("meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error", OffsetFallback)  # at the limit: the kernel runs, no fallback
        assert model(torch.empty(1, 2**20, 2048, device="meta")).shape == (1, 2**20, 2048)
    with pytest.warns(OffsetFallback, match=r"backend='auto' runs the torch path.*shape \(1, 1048577, 2048\)"):
        assert model(torch.empty(1, 2**20 + 1, 2048, device="meta")).shape == (1, 2**20 + 1, 2048)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OffsetFallback)  # once per module
        model(torch.empty(1, 2**20 + 1, 2048, device="meta"))
    model.backend = "triton"
    with pytest.raises(OffsetLimitError, match=r"shape \(1, 1048577, 2048\).*32-bit offsets.*backend='auto'"):
        model(torch.empty(1, 2**20 + 1, 2048, device="meta"))


# --------------------------------------------------------------------- the fallback's numbers, limit made small


def test_auto_fallback_matches_the_reference_with_gradients(monkeypatch, auto_picks_triton):
    B, T, d = 2, 5, 4
    monkeypatch.setattr(dispatch, "MAX_OFFSET", T * d - 1)  # u's row [T, d] just fits: the kernel runs
    model = _s6("auto", d=d)
    u = torch.randn(B, T, d, device=DEVICE)
    h0 = 0.5 * torch.randn(B, d, 3, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OffsetFallback)
        model(u, initial_state=h0)
    model.backend = "triton"
    model(u, initial_state=h0)

    monkeypatch.setattr(dispatch, "MAX_OFFSET", T * d - 2)  # one element less: the kernel refuses u
    with pytest.raises(OffsetLimitError, match=r"shape \(2, 5, 4\): one batch row spans 20 elements"):
        model(u, initial_state=h0)
    model.backend = "auto"
    uu = u.clone().requires_grad_(True)
    with pytest.warns(OffsetFallback):
        y, hT = model(uu, initial_state=h0, output_final_state=True)
    y_ref, h_ref = _reference(model.cpu(), u.cpu().to(F64), h0.cpu().to(F64).reshape(B, -1))
    model.to(DEVICE)
    torch.testing.assert_close(y.detach().cpu().to(F64), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hT.detach().cpu().to(F64).reshape(B, -1), h_ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()  # the torch path's autograd: the gradient the torch backend gives
    model.backend = "torch"
    uu2 = u.clone().requires_grad_(True)
    model(uu2, initial_state=h0).square().sum().backward()
    torch.testing.assert_close(uu.grad, uu2.grad, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ int64 casts (complement, source only)


def test_kernel_program_bases_are_int64():
    import dsfc.runtime.triton_attention as attention
    import dsfc.runtime.triton_delta as delta
    import dsfc.runtime.triton_outer as outer

    assert "tl.program_id(0).to(tl.int64)" in inspect.getsource(outer._outer_step.fn)
    for fn in (outer._program_coords, outer._sub_chunk, outer._epilogue_coords, attention._block_coords):
        assert ".to(tl.int64)" in inspect.getsource(fn.fn), fn
    assert inspect.getsource(delta).count("tl.program_id(0).to(tl.int64)") == 3  # fwd pass, bwd pass, step
    assert "b = tl.program_id(0).to(tl.int64)" in inspect.getsource(s6_module)  # generated diagonal kernels
