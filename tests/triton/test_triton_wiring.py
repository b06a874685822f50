"""The diagonal Triton kernels wired into PyTorch: torch.compile, half-precision inputs, ``step``, bad input.

Runs on CPU under the Triton interpreter, or compiled on DEVICE = cuda (tiny sizes, see test_triton_diagonal.py and
tests/triton/_device.py: inputs drawn on CPU and moved to DEVICE, references on CPU). Everything is compared against
the float64 reference recurrence (dsfc/reference.py) or the structured torch path, never against the kernels' own
earlier output.
"""

import os

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")

import dsfc.runtime.triton_diagonal as triton_diagonal  # noqa: E402
from tests.triton.test_triton_diagonal import TOL32, _grads, built, rel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")


# -- torch.compile ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compile_env():
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-wiring")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_forward_backward_matches(compile_env, backend):
    """A model around the S6 layer, compiled with fullgraph=True: the kernels are custom ops (one graph node each, no
    graph break); forward and all gradients match the uncompiled model on the torch path (an independent algorithm)."""
    b = built("s6")
    torch.manual_seed(3)
    proj = torch.nn.Linear(5, 5).to(DEVICE)
    model = torch.nn.Sequential(proj, b.model)
    u, _ = b.inputs(2, 7)

    def run(fn, layer_backend):
        b.model.backend = layer_backend
        model.zero_grad(set_to_none=True)  # built() shares the layer between tests: no gradients from before
        try:
            y = fn(u)
            g = torch.Generator().manual_seed(5)
            (y * torch.randn(y.shape, generator=g).to(y)).sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            model.zero_grad()
            return y.detach(), grads
        finally:
            b.model.backend = "auto"

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    y_c, g_c = run(compiled, "triton")
    y_t, g_t = run(model, "torch")
    assert rel(y_c, y_t) <= TOL32
    for name, want in g_t.items():
        assert rel(g_c[name], want) <= TOL32, name


def test_custom_op_passes_opcheck(monkeypatch):
    """torch.library.opcheck: schema, fake (meta) implementation and autograd registration agree with the real op."""
    b = built("gate")
    u, h0 = b.inputs(2, 3)
    key = b.module._KERNEL_KEY
    # the leaves the generated module hands the launcher (the gate's let is inlined: the kernel reads its hoisted
    # projection f_pre and the bias), the floating ones with grads
    seen = []

    class Captured(Exception):
        pass

    def capture(key_, h0_, leaves, **kwargs):
        seen.append(leaves)
        raise Captured

    monkeypatch.setattr(b.module, "diagonal_scan_triton", capture)
    with pytest.raises(Captured):
        b.run("triton", u, h0)
    leaves = [x.detach().clone().requires_grad_(x.dtype.is_floating_point) for x in seen[0]]
    assert len(leaves) >= 2
    L = triton_diagonal._Launch(3, (5, 1), (), 5, 1, 5, True, 8, 1, 1)
    args = (key, h0.reshape(2, 5), leaves, L.encode(), [0.0], torch.float32)
    torch.library.opcheck(triton_diagonal._scan_fwd_op, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# -- half-precision inputs ----------------------------------------------------------------------------------------

# Tolerance for half inputs, relative to the output scale: the time-varying operands (e.g. S6's dt, B, C, u) cross into
# the kernel rounded to the input format, and y is stored in it; each rounding is <= 0.5 ulp (fp16 2^-11, bf16
# 2^-8 relative) and a term multiplies 3-4 of them, so a few ulps is expected (measured: fp16 <= 1.2 ulp, bf16 <= 4.7
# ulp); 12 ulps leaves margin while any indexing or dtype mistake (an O(1) error) still fails. The fp32 state
# accumulation keeps T out of it: accumulating in half would add ~T/2 ulps.
HALF_TOL = {torch.float16: 12 * 2.0**-11, torch.bfloat16: 12 * 2.0**-8}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("key", ["s6", "mix", "dense_c"])
def test_half_inputs_match_reference(monkeypatch, key, dtype):
    b = built(key, dtype)
    u, h0 = b.inputs(2, 16)
    seen = []
    launch = triton_diagonal._launch_fwd

    def spy(key_, L, h0_, leaves, fused, out_dtype):
        seen.append(({x.dtype for x in leaves if x.dim() >= 3}, h0_.dtype, out_dtype))
        return launch(key_, L, h0_, leaves, fused, out_dtype)

    monkeypatch.setattr(triton_diagonal, "_launch_fwd", spy)
    with torch.no_grad():
        y, hT = b.run("triton", u, h0)
    y_ref, h_ref = b.reference(u, h0)
    assert seen and seen[0][0] == {dtype} and seen[0][1] == torch.float32  # half operands in, fp32 state
    assert y.dtype == dtype and hT.dtype == torch.float32  # the state in the accumulation dtype
    assert rel(y, y_ref) <= HALF_TOL[dtype] and rel(hT.reshape(2, -1), h_ref) <= HALF_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_gradients_match_torch(dtype):
    """Gradients through half operands vs the torch path (which keeps them in fp32): the same rounding budget."""
    b = built("s6", dtype)
    u, h0 = b.inputs(2, 7)
    got = _grads(b, "triton", u, h0, True)
    want = _grads(b, "torch", u, h0, True)
    for name, w in want.items():
        assert got[name].dtype == w.dtype, name
        assert rel(got[name], w) <= HALF_TOL[dtype], name


# -- step ---------------------------------------------------------------------------------------------------------


def test_step_runs_the_kernel_and_matches_reference(monkeypatch):
    """``step`` on the triton backend is the forward kernel at T=1 (one launch per token)."""
    b = built("s6")
    u, h0 = b.inputs(2, 5)
    launches = []
    launch = triton_diagonal._launch_fwd
    monkeypatch.setattr(triton_diagonal, "_launch_fwd", lambda *a: launches.append(a[1].T) or launch(*a))
    b.model.backend = "triton"
    try:
        state, ys = h0, []
        for t in range(u.shape[1]):
            y_t, state = b.model.step(u[:, t], state)
            ys.append(y_t)
    finally:
        b.model.backend = "auto"
    y_ref, h_ref = b.reference(u, h0)
    assert launches == [1] * u.shape[1]
    assert rel(torch.stack(ys, 1), y_ref) <= TOL32 and rel(state.reshape(2, -1), h_ref) <= TOL32


# -- bad input ----------------------------------------------------------------------------------------------------


def test_launcher_rejects_bad_input():
    b = built("gate")
    key = b.module._KERNEL_KEY
    u = torch.randn(2, 3, 5).to(DEVICE)
    kw = dict(T=3, dims=(5, 1), consts=(), R=5, C=1, P=5, can_fuse=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        triton_diagonal.diagonal_scan_triton(key, torch.zeros(2, 5, dtype=torch.float16, device=DEVICE), [u, u], **kw)
    with pytest.raises(ValueError, match="5 entries per batch row"):
        triton_diagonal.diagonal_scan_triton(key, torch.zeros(2, 4, device=DEVICE), [u, u], **kw)
    with pytest.raises(TypeError, match="float tensor"):
        triton_diagonal.diagonal_scan_triton(key, torch.zeros(2, 5, device=DEVICE), [u, u.long()], **kw)
    with pytest.raises(ValueError, match="operand 1 is on meta"):
        triton_diagonal.diagonal_scan_triton(key, torch.zeros(2, 5, device=DEVICE), [u, u.to("meta")], **kw)
    # an unregistered key was a KeyError, a list operand an AttributeError, a negative T a torch allocation error
    with pytest.raises(ValueError, match="no Triton kernels are registered under 'nope'"):
        triton_diagonal.diagonal_scan_triton("nope", torch.zeros(2, 5, device=DEVICE), [u, u], **kw)
    with pytest.raises(TypeError, match="operand 1 must be a tensor, got list"):
        triton_diagonal.diagonal_scan_triton(key, torch.zeros(2, 5, device=DEVICE), [u, [1.0]], **kw)
    with pytest.raises(ValueError, match="T must be an integer >= 0, got -1"):
        triton_diagonal.diagonal_scan_triton(key, torch.zeros(2, 5, device=DEVICE), [u, u], **{**kw, "T": -1})
    # CPU tensors without the interpreter (on any DEVICE): refused before any launch
    u_cpu = u.cpu()
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            triton_diagonal.diagonal_scan_triton(key, torch.zeros(2, 5), [u_cpu, u_cpu], **kw)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
