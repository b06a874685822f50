"""backend="auto" on a GPU whose Triton kernels cannot be built there (tiles sized for sm_90 on a GPU with less shared
memory, a construct a triton version lacks): the call runs the torch path, warned once per device and input dtype,
and later calls go straight to torch (a failed build is not retried per call: each try costs a compile).
backend="triton" keeps the error; any other error is re-raised as it was.

No GPU here: ``checks.on_gpu`` is patched so that auto's Triton-side logic runs on CPU tensors, and the module's
kernel entry point is patched to raise triton's own error classes (what a real launch raises when the build fails).
"""

import warnings

import pytest

from tests.triton._device import DEVICE  # noqa: F401  (first: sets TRITON_INTERPRET=1 on CPU)

import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

from triton.runtime.errors import OutOfResources, PTXASError  # noqa: E402

import dsfc.runtime.checks as checks  # noqa: E402
import generated.gla as gla_module  # noqa: E402
import generated.softmax_attention as softmax_module  # noqa: E402
from dsfc.runtime.checks import TritonBuildFallback, triton_build_error  # noqa: E402


@pytest.fixture
def auto_on_gpu(monkeypatch):
    monkeypatch.setattr(checks, "on_gpu", lambda u: True)


def _gla(backend):
    torch.manual_seed(0)
    return gla_module.GLA(d=8, H=2, K=4, V=4, R=2, backend=backend).to(DEVICE)


def _unbuildable(monkeypatch, module, name, error):
    """Replace ``module.name`` by a kernel entry point that raises ``error()``; returns the list of its calls."""
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        raise error()

    monkeypatch.setattr(module, name, fail)
    return calls


def _too_little_shared_memory():
    # as chunked_outer_triton re-raises triton's OutOfResources: a RuntimeError naming the tiles, the cause kept
    try:
        raise OutOfResources(262144, 232448, "shared memory")
    except OutOfResources as exc:
        raise RuntimeError("chunked_outer_triton: the fused forward kernels need more shared memory") from exc


def test_the_build_error_is_found_through_a_cause_and_only_from_triton():
    try:
        _too_little_shared_memory()
    except RuntimeError as exc:
        assert isinstance(triton_build_error(exc), OutOfResources)
    assert isinstance(triton_build_error(PTXASError("ptxas fatal")), PTXASError)
    assert triton_build_error(RuntimeError("CUDA error: an illegal memory access was encountered")) is None

    class CompilationError(Exception):  # the name alone, not triton's class: not a build failure
        pass

    assert triton_build_error(CompilationError("x")) is None


def test_auto_runs_the_torch_path_once_a_kernel_cannot_be_built(monkeypatch, auto_on_gpu):
    calls = _unbuildable(monkeypatch, gla_module, "_core_triton_available", _too_little_shared_memory)
    model = _gla("auto")
    torch.manual_seed(1)
    u = torch.randn(2, 7, 8, device=DEVICE)
    h0 = torch.randn(2, 2, 4, 4, device=DEVICE)
    uu = u.clone().requires_grad_(True)
    expected = (rf"GLA: backend='auto' runs the torch path on {u.device} for torch.float32 inputs from now on"
                r".*OutOfResources.*more shared memory")
    with pytest.warns(TritonBuildFallback, match=expected):
        y, hT = model(uu, initial_state=h0, output_final_state=True)
    assert len(calls) == 1
    y.square().sum().backward()

    # the numbers and gradients of the torch backend, the same path
    model_torch = _gla("torch")
    uu2 = u.clone().requires_grad_(True)
    y2, hT2 = model_torch(uu2, initial_state=h0, output_final_state=True)
    y2.square().sum().backward()
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    torch.testing.assert_close(hT, hT2, rtol=0, atol=0)
    torch.testing.assert_close(uu.grad, uu2.grad, rtol=0, atol=0)

    with warnings.catch_warnings():  # later calls: straight to torch, no new build, no new warning
        warnings.simplefilter("error", TritonBuildFallback)
        model(u)
        y_t, _ = model.step(u[:, 0], h0)
    assert len(calls) == 1
    torch.testing.assert_close(y_t, model_torch.step(u[:, 0], h0)[0], rtol=0, atol=0)

    # another input dtype is another build: tried again, warned again
    with pytest.warns(TritonBuildFallback, match="torch.float64"):
        model.double()(u.double())
    assert len(calls) == 2

    # backend="triton" keeps the error
    model.float().backend = "triton"
    with pytest.raises(RuntimeError, match="more shared memory") as info:
        model(u)
    assert isinstance(info.value.__cause__, OutOfResources)


def test_other_errors_are_not_swallowed(monkeypatch, auto_on_gpu):
    def fault():
        return RuntimeError("CUDA error: an illegal memory access was encountered")

    calls = _unbuildable(monkeypatch, gla_module, "_core_triton_available", fault)
    model = _gla("auto")
    u = torch.randn(1, 3, 8, device=DEVICE)
    for _ in range(2):  # nothing recorded: the next call tries the kernel again
        with warnings.catch_warnings():
            warnings.simplefilter("error", TritonBuildFallback)
            with pytest.raises(RuntimeError, match="illegal memory access"):
                model(u)
    assert len(calls) == 2


def test_attention_falls_back_too(monkeypatch, auto_on_gpu):
    calls = _unbuildable(monkeypatch, softmax_module, "triton_kernels_for", lambda: PTXASError("ptxas fatal: sm_75"))
    torch.manual_seed(0)
    model = softmax_module.SoftmaxAttention(d=8, H=2, K=4, V=4, backend="auto").to(DEVICE)
    u = torch.randn(2, 5, model._in_features(), device=DEVICE)
    with pytest.warns(TritonBuildFallback, match="PTXASError: PTXAS error: ptxas fatal"):
        y = model(u)
    model.backend = "torch"
    torch.testing.assert_close(y, model(u), rtol=0, atol=0)
    model.backend = "auto"
    model(u)
    assert len(calls) == 1
