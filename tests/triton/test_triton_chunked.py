"""The chunked diagonal kernels (``_scan_fwd_chunked`` / ``_scan_bwd_chunked``: CHUNK_T steps loaded at once, an
associative scan over the chunk's time axis, the backward keeping only the chunk-start states) against the
step-by-step kernels and the float64 reference, and the rule that picks between them.

Defaults (measured on an H200, dsfc/runtime/triton_diagonal.py): the step forward; the chunked backward only when the
step backward's [B, T, N] state buffer would not fit STATES_BUDGET of free memory. The tests force each path.
T values cross chunk boundaries (chunk_t = 4 on CPU, 16 on CUDA) and leave tails.
Tolerance: TOL32 of test_triton_diagonal (1e-5 of the output scale, justified there): the scan multiplies the same
decays in a different order (a tree instead of a chain), a few ulps apart.
"""

from tests.triton._device import DEVICE  # noqa: F401  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

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
    monkeypatch.setattr(triton_diagonal, "CHUNKED_FORWARD", True)
    with torch.no_grad():
        y, hT = b.run("triton", u, h0)
    assert seen and all(c > 1 for c in seen), f"the chunked kernel did not run: chunk lengths {seen}"
    want_y, want_hT = b.reference(u, h0)
    assert rel(y, want_y) < TOL32
    assert rel(hT.reshape(want_hT.shape), want_hT) < TOL32
    # the step kernel on the same inputs (the default)
    monkeypatch.setattr(triton_diagonal, "CHUNKED_FORWARD", False)
    seen.clear()
    with torch.no_grad():
        y1, hT1 = b.run("triton", u, h0)
    assert seen and all(c == 1 for c in seen)
    assert rel(y, y1) < TOL32 and rel(hT, hT1) < TOL32


@pytest.mark.parametrize("key", ["s6", "gate", "rglru", "mix", "dense_c"])
@pytest.mark.parametrize("T", [1, 2, 9])
def test_prefetching_step_kernel_matches(monkeypatch, key, T):
    """PREFETCH (the next step's loads issued before this step's maths) computes exactly what the plain step kernel
    does: the same operations on the same values, only the loads move (masked at t = T)."""
    b = built(key)
    u, h0 = b.inputs(2, T, seed=7)
    monkeypatch.setattr(triton_diagonal, "CHUNKED_FORWARD", False)
    outs = {}
    for prefetch in (False, True):
        monkeypatch.setattr(triton_diagonal, "PREFETCH", prefetch)
        with torch.no_grad():
            outs[prefetch] = b.run("triton", u, h0)
    for got, want in zip(outs[True], outs[False]):
        assert torch.equal(got, want)
    assert rel(outs[True][0], b.reference(u, h0)[0]) < TOL32


@pytest.mark.parametrize("faster", [False, True])
def test_auto_prefetch_keeps_the_faster(monkeypatch, faster):
    """PREFETCH = "auto" (the default): on a GPU the step forward is timed with and without prefetching on the first
    call of a launch shape (faked here: no GPU) and the faster is kept for later calls; the results stay exact."""
    from dsfc.runtime import autochoice

    b = built("s6")
    u, h0 = b.inputs(2, 9, seed=3)
    monkeypatch.setattr(triton_diagonal, "CHUNKED_FORWARD", False)
    monkeypatch.setattr(triton_diagonal, "PREFETCH", "auto")
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    timed = []
    monkeypatch.setattr(autochoice, "time_ms", lambda run, prefetch: timed.append(prefetch) or
                        (1.0 if prefetch == faster else 2.0))
    with torch.no_grad():
        y, hT = b.run("triton", u, h0)
        assert sorted(timed) == [False, True]
        y2, hT2 = b.run("triton", u, h0)
    assert len(timed) == 2  # the choice is cached per launch shape
    (key, choice), = [(k, c) for k, c in autochoice._CHOICES.items() if k[0] == "diagonal prefetch"]
    assert choice == int(faster)
    assert torch.equal(y, y2) and torch.equal(hT, hT2)
    assert rel(y, b.reference(u, h0)[0]) < TOL32


def test_pre_readout_keeps_the_step_kernel(monkeypatch):
    b = built("mix")  # readout pre: y_t reads h_(t-1), which the chunked kernels do not produce
    assert not hasattr(b.module, "_scan_fwd_chunked")
    assert triton_diagonal._KERNELS[b.module._KERNEL_KEY][2:] == (None, None)
    monkeypatch.setattr(triton_diagonal, "CHUNKED_FORWARD", True)
    u, h0 = b.inputs(1, 9)
    seen = _launches(monkeypatch)
    with torch.no_grad():
        y, _ = b.run("triton", u, h0)
    assert seen == [1]
    assert rel(y, b.reference(u, h0)[0]) < TOL32


def _all_grads(b, backend, u, h0):
    uu, hh = u.clone().requires_grad_(), h0.clone().requires_grad_()
    b.model.zero_grad(set_to_none=True)
    y, hT = b.run(backend, uu, hh)
    (y.square().sum() + hT.sum()).backward()
    grads = {"u": uu.grad, "h0": hh.grad, **{n: p.grad.clone() for n, p in b.model.named_parameters()}}
    b.model.zero_grad(set_to_none=True)  # built() shares the model between tests: leave no gradients behind
    return grads


@pytest.mark.parametrize("forward", ["step", "chunked"])
@pytest.mark.parametrize("key", ["s6", "rglru", "dense_c"])
def test_chunked_backward_matches_torch(monkeypatch, key, forward):
    """The chunked backward after either forward (after the step forward it plans its own chunk tiles): gradients
    of the input, the initial state and every parameter (static leaves summed over chunks) match the torch path."""
    b = built(key)
    u, h0 = b.inputs(2, 21, seed=5)
    monkeypatch.setattr(triton_diagonal, "CHUNKED_FORWARD", forward == "chunked")
    monkeypatch.setattr(triton_diagonal, "CHUNKED_BACKWARD", "always")
    starts = []
    real = triton_diagonal._chunk_starts
    monkeypatch.setattr(triton_diagonal, "_chunk_starts", lambda *a: starts.append(1) or real(*a))
    got = _all_grads(b, "triton", u, h0)
    want = _all_grads(b, "torch", u, h0)
    assert starts or key == "dense_c", "the chunked backward did not run"  # dense_c: states out, none recomputed
    for name in want:
        assert rel(got[name], want[name]) < TOL32, name


def test_backward_rule(monkeypatch):
    """auto: the step backward while its [B, T, N] buffer fits STATES_BUDGET of free memory, else the chunked one;
    never when the forward already returned every state (unfused readout)."""
    L = triton_diagonal._Launch(1000, (), (), 64, 16, 64, True, 16, 16, 4)
    h0 = torch.zeros(8, 64 * 16)  # 8 * 1000 * 1024 * 4 bytes = 32 MB of states
    monkeypatch.setattr(triton_diagonal, "CHUNKED_BACKWARD", "auto")
    monkeypatch.setattr(triton_diagonal, "STATES_BUDGET", 0.25)
    assert not triton_diagonal._chunked_backward(L, h0, False)  # CPU counts 4 GiB free: 32 MB fits
    monkeypatch.setattr(triton_diagonal, "STATES_BUDGET", 0.001)
    assert triton_diagonal._chunked_backward(L, h0, False)
    assert not triton_diagonal._chunked_backward(L, h0, True)
    monkeypatch.setattr(triton_diagonal, "CHUNKED_BACKWARD", "never")
    assert not triton_diagonal._chunked_backward(L, h0, False)
    monkeypatch.setattr(triton_diagonal, "CHUNKED_BACKWARD", "always")
    assert triton_diagonal._chunked_backward(L, h0, True)
