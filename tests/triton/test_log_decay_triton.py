"""The Triton outer-product path under decays that underflow in fp32 (tests/e2e/test_log_decay.py has the torch path
and the story): the generated code hands the kernels the exponent itself, so gradients stay finite and match the
float64 reference. Run in float64 (the decays underflow there too): in fp32 the kernels' log-decay gradient, a
reverse cumsum of q dq - k dk as fla computes it, carries rounding noise of eps * sum |q dq| that the chain rule
multiplies by d(log decay)/d(b_g) = -exp(b_g + ...) ~ 1e3 here, where autograd through the torch path's exp of
segment sums gets the true ~1e-300. Under the Triton interpreter on CPU (or compiled with DSFC_TEST_DEVICE=cuda)."""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from dsf_testing import F64, assert_grads_close, compile_and_build, output_and_grads  # noqa: E402
from test_log_decay import SPECS, STRONG  # noqa: E402


@pytest.mark.parametrize("name", ["per_key_double_exp", "per_head_sigmoid_power"])
def test_strong_decay_triton(name):
    b = compile_and_build(SPECS[name], path=f"{name}.dsf")
    with torch.no_grad():
        b.model.b_g.fill_(STRONG[name])
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 19, 3, generator=g, dtype=F64)
    w = torch.randn(2, 19, 4, generator=g, dtype=F64)
    _, got = output_and_grads(b.model, "triton", u, w, F64, DEVICE)
    _, want = output_and_grads(b.model, "reference", u, w, F64)
    assert_grads_close(got, want, 1e-9)  # float64, O(T) sums; see test_log_decay
