"""The chunked diagonal forward kernel (``_scan_fwd_chunked``: CHUNK_T steps loaded at once, an associative scan
over the chunk's time axis) against the step-by-step kernel (``_scan_fwd``) and the float64 reference.

The chunked kernel is what runs on a GPU for every diagonal spec without a pre-update readout; the step kernel stays
for those and for T = 1. T values cross chunk boundaries (chunk_t = 4 on CPU, 16 on CUDA) and leave tails.
Tolerance: TOL32 of test_triton_diagonal (1e-5 of the output scale, justified there): the scan multiplies the same
decays in a different order (a tree instead of a chain), a few ulps apart.
"""

from tests.triton._device import DEVICE  # (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")

import dsfc.runtime.triton_diagonal as triton_diagonal  # noqa: E402
from tests.triton.test_triton_diagonal import TOL32, built, rel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")


def _launches(monkeypatch):
    """Record the chunk length of every forward launch."""
    seen = []
    real = triton_diagonal._launch_fwd

    def spy(key, L, *args, **kwargs):
        seen.append(L.chunk_t)
        return real(key, L, *args, **kwargs)

    monkeypatch.setattr(triton_diagonal, "_launch_fwd", spy)
    return seen


@pytest.mark.parametrize("key", ["s6", "gate", "rglru", "dense_c"])
@pytest.mark.parametrize("T", [2, 5, 16, 23])
def test_chunked_forward_matches_step_kernel_and_reference(monkeypatch, key, T):
    b = built(key)
    u, h0 = b.inputs(2, T, seed=3)
    seen = _launches(monkeypatch)
    with torch.no_grad():
        y, hT = b.run("triton", u, h0)
    assert seen and all(c > 1 for c in seen), f"the chunked kernel did not run: chunk lengths {seen}"
    want_y, want_hT = b.reference(u, h0)
    assert rel(y, want_y) < TOL32
    assert rel(hT.reshape(want_hT.shape), want_hT) < TOL32
    # the step kernel on the same inputs (the chunked kernel unregistered)
    fwd, bwd, _fwd_chunked, _bwd_chunked = triton_diagonal._KERNELS[b.module._KERNEL_KEY]
    monkeypatch.setitem(triton_diagonal._KERNELS, b.module._KERNEL_KEY, (fwd, bwd, None, None))
    seen.clear()
    with torch.no_grad():
        y1, hT1 = b.run("triton", u, h0)
    assert seen and all(c == 1 for c in seen)
    assert rel(y, y1) < TOL32 and rel(hT, hT1) < TOL32


def test_pre_readout_keeps_the_step_kernel(monkeypatch):
    b = built("mix")  # readout pre: y_t reads h_(t-1), which the chunked kernel does not produce
    assert b.module._scan_fwd_chunked if hasattr(b.module, "_scan_fwd_chunked") else True
    assert triton_diagonal._KERNELS[b.module._KERNEL_KEY][2] is None
    u, h0 = b.inputs(1, 9)
    seen = _launches(monkeypatch)
    with torch.no_grad():
        y, _ = b.run("triton", u, h0)
    assert seen == [1]
    assert rel(y, b.reference(u, h0)[0]) < TOL32


def test_gradients_through_the_chunked_forward(monkeypatch):
    """The backward recomputes the states with the chunked kernel (states out, READOUT=False): gradients of the
    input and the initial state must still match the torch path."""
    b = built("s6")
    u, h0 = b.inputs(2, 21, seed=5)
    starts = []
    real = triton_diagonal._chunk_starts
    monkeypatch.setattr(triton_diagonal, "_chunk_starts", lambda *a: starts.append(1) or real(*a))
    grads = {}
    b.model.zero_grad(set_to_none=True)
    for backend in ("triton", "torch"):
        uu, hh = u.clone().requires_grad_(), h0.clone().requires_grad_()
        y, hT = b.run(backend, uu, hh)
        (y.square().sum() + hT.sum()).backward()
        grads[backend] = (uu.grad, hh.grad)
    assert starts, "the chunked backward did not run"
    for got, want in zip(grads["triton"], grads["torch"]):
        assert rel(got, want) < TOL32
    # every parameter's gradient too (A_log: a static leaf accumulated over chunks; W_*: through the lets in torch)
    params = dict(b.model.named_parameters())
    per_backend = {}
    for backend in ("triton", "torch"):
        b.model.zero_grad()
        y, hT = b.run(backend, u, h0)
        (y.square().sum() + hT.sum()).backward()
        per_backend[backend] = {n: p.grad.clone() for n, p in params.items()}
    b.model.zero_grad(set_to_none=True)  # the model is shared (built() caches it): leave no gradients behind
    for name in params:
        assert rel(per_backend["triton"][name], per_backend["torch"][name]) < TOL32, name
