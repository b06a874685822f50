"""With half-precision inputs the carried state is returned in the accumulation dtype (fp32), not the input's.

The bug: ``forward(..., output_final_state=True)`` and ``step`` cast the final state (and running quantities such as
a normaliser's cumsum) to the input dtype. A bf16 decoding loop, ``y_t, state = model.step(u_t, state)``, then
rounded the state to bf16 after every token: after 512 tokens the outputs of S6 were 4% off and those of normalised
linear attention 12% (its running sum z ~ 500 has a bf16 spacing of 4, so increments of ~1 were lost), where
``forward`` on the same bf16 inputs is within bf16 output rounding (~4e-3). fla returns its final states in fp32 too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsf_testing import F64, compile_and_build

SPECS = Path(__file__).resolve().parents[2] / "specs"
CASES = {
    "s6": {"d": 4, "n": 3, "r": 2},
    "linear_attention_normalized": {"d": 4, "H": 2, "K": 3, "V": 2},
    "mamba_block": {"d": 4, "e": 2, "n": 3, "r": 2, "W": 3},
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_decoding_keeps_an_fp32_state(name, dtype):
    b = compile_and_build((SPECS / f"{name}.dsf").read_text(), CASES[name], path=f"{name}.dsf")
    g = torch.Generator().manual_seed(0)
    T = 384
    u = torch.randn(1, T, b.d_in(), generator=g, dtype=F64).to(dtype)  # the half input is the exact input
    b.model.backend = "torch"
    want = b.model(u.to(F64))  # float64 torch path (checked against the reference elsewhere)
    model = b.model.to(torch.float32)
    state, ys = None, []
    for t in range(T):
        y_t, state = model.step(u[:, t], state)
        ys.append(y_t)
    got = torch.stack(ys, 1)
    assert got.dtype == dtype
    for v in (state.values() if isinstance(state, dict) else [state]):
        assert v.dtype == torch.float32
    # y_t is rounded to the half format (bf16: 2^-8 relative), the fp32 state drifts by ~T * 2^-24; the bf16 state
    # gave 4e-2 (S6) and 1.2e-1 (normalised linear attention)
    tol = 8e-3 if dtype == torch.bfloat16 else 1e-3
    err = (got.to(F64) - want).abs().max().item() / want.abs().max().item()
    assert err <= tol, err
    # and forward's final state continues exactly like the step loop's
    _, final = model(u[:, : T // 2], output_final_state=True)
    assert all(v.dtype == torch.float32 for v in (final.values() if isinstance(final, dict) else [final]))
    y2 = model(u[:, T // 2 :], initial_state=final)
    assert (y2.to(F64) - want[:, T // 2 :]).abs().max().item() <= tol * want.abs().max().item()
