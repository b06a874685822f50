"""The Triton diagonal kernels under RG-LRU's weak decays (tests/e2e/test_complement.py has the torch path and the
story): the kernels compute ``sqrt(-expm1(-16 r softplus(Lambda)))``, not ``sqrt(1 - a * a)``, whose fp32 value
was 0 with the gate closed (NaN gradients). The kernels' own ``_softplus`` was ``log(1 + exp(x))``: 0 below
x = -17 in fp32 and ~1% off at Lambda = -12; now Kahan's log1p form (as ``_logsigmoid``). fp32, against the float64
reference. Under the Triton interpreter on CPU (or compiled with DSFC_TEST_DEVICE=cuda)."""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from dsf_testing import F64, assert_grads_close, compile_and_build, output_and_grads  # noqa: E402
from test_complement import CASES, DIMS, SPEC  # noqa: E402


@pytest.mark.parametrize("case", sorted(CASES))
def test_rg_lru_weak_decay_triton(case):
    b = compile_and_build(SPEC, DIMS, path="rg_lru.dsf")
    name, value = CASES[case]
    with torch.no_grad():
        getattr(b.model, name).fill_(value)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 19, 4, generator=g, dtype=F64)
    w = torch.randn(2, 19, 4, generator=g, dtype=F64)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    y32, g32 = output_and_grads(b.model, "triton", u, w, torch.float32, DEVICE)
    # as on the torch path: the reference's float64 1 - a^2 is good to ~1e-7 relative here, fp32 sums to ~1e-6;
    # the bugs gave 0 / NaN (closed gate) and ~1e-2 (the kernels' softplus at Lambda = -12)
    assert (y32 - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
    assert_grads_close(g32, g64, 1e-4)


ELU_SPEC = """
model EluGate "a diagonal scan whose input scale is the feature map elu(z) + 1 (elu1p in the kernels)"
dim d = 3
input u[d]
state h[c: d]
output y[d]
param W[d, d] ~ normal(0, 1)
param b[d] ~ zeros()
let z[c: d] = sum(m, W[c, m] * u[m]) + b[c]
A[c, c2] = delta(c, c2) * sigmoid(z[c])
B[c, m] = delta(c, m) * (elu(z[c]) + 1)
C[o, c] = delta(o, c)
"""


def test_elu_feature_map_in_the_diagonal_kernels():
    """elu(z) + 1 is printed as the kernels' _elu1p, its derivative from Elu1p.fdiff: at z ~ -15 (b = -15) the old
    (exp(z) - 1) + 1 kept ~20% of exp(z) in fp32. Forward and every gradient against the float64 reference."""
    b = compile_and_build(ELU_SPEC, path="elu_gate.dsf")
    with torch.no_grad():
        b.model.b.copy_(torch.tensor([-15.0, 0.5, 3.0]))
    g = torch.Generator().manual_seed(0)
    u = 0.3 * torch.randn(2, 13, 3, generator=g, dtype=F64)
    w = torch.randn(2, 13, 3, generator=g, dtype=F64)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    y32, g32 = output_and_grads(b.model, "triton", u, w, torch.float32, DEVICE)
    # channel 0's entries are ~3e-7: compared on their own scale (fp32 rounding ~1e-7 relative, O(T) sums)
    for c in range(3):
        assert (y32[..., c] - y64[..., c]).abs().max().item() <= 1e-5 * y64[..., c].abs().max().item()
    assert_grads_close(g32, g64, 1e-5)
