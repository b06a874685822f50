"""tests/e2e/test_numerics_4.py on the chunked outer-product Triton path (the story is there): normalised attention
with s = +-100 at a few steps, fp32 against the float64 reference. Before the gauge form every output was NaN."""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from dsf_testing import F64, assert_grads_close, compile_and_build, output_and_grads  # noqa: E402
from test_numerics_4 import DN_DIMS, SPECS, hgrn_saturated, na_with_spike  # noqa: E402


@pytest.mark.parametrize("spike", [100.0, -100.0])
def test_normalized_attention_extreme_eta_triton(spike):
    """fp32 Triton vs float64 on the steps whose true output fp32 holds (all of them at +100; the spike's own steps,
    ~exp(100), are skipped at -100); gradients at +100, where the loss is finite. Same tolerances as the torch test:
    fp32 rounding of O(T) sums, ~1e-6."""
    b, u, w = na_with_spike("normalized_attention", spike)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    fits = y64.abs().amax(-1) < 1e30
    if spike > 0:
        y32, g32 = output_and_grads(b.model, "triton", u, w, torch.float32, DEVICE)
        assert fits.all()
        assert_grads_close(g32, g64, 1e-4)
    else:
        model = b.model.to(DEVICE, torch.float32)
        model.backend = "triton"
        model.check_finite = False  # the spike steps, beyond fp32, are NaN: an error by default (test_user_hunt_12)
        with torch.no_grad():
            y32 = model(u.to(DEVICE, torch.float32)).cpu().to(F64)
    assert torch.isfinite(y32[fits]).all()
    assert (y32 - y64)[fits].abs().max().item() <= 1e-5 * y64[fits].abs().max().item()


def test_hgrn_saturated_gate_triton():
    """HGRN's 1 - f at a nearly closed gate on the Triton diagonal path (fp32 vs float64; tolerance as the torch
    test's: the bug gave 14% at z = 16)."""
    b, u, w = hgrn_saturated(16.0)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    y32, g32 = output_and_grads(b.model, "triton", u, w, torch.float32, DEVICE)
    assert (y32 - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
    assert_grads_close(g32, g64, 1e-5)


def test_deltanet_tiny_inputs_triton():
    """DeltaNet's L2-normalised keys at inputs of 1e-25 on the delta-rule Triton path: the keys come from the same
    generated lets as the torch path (inv_l2_norm), so the output matches float64 to fp32 rounding (it was NaN)."""
    b = compile_and_build((SPECS / "deltanet.dsf").read_text(), DN_DIMS, path="deltanet.dsf")
    u = 1e-25 * torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    b.model.backend = "reference"
    with torch.no_grad():
        y64 = b.model(u)
        model = b.model.to(DEVICE, torch.float32)
        model.backend = "triton"
        y32 = model(u.to(DEVICE, torch.float32)).cpu().to(F64)
    assert torch.isfinite(y32).all()
    assert (y32 - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
