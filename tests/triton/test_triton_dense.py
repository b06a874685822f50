"""The dense-scan family's Triton path (dsfc/runtime/triton_dense.py) under the Triton interpreter (or compiled on
DEVICE = cuda, tests/triton/_device.py), tiny sizes; inputs are drawn on CPU, moved to DEVICE, and the float64
references run on CPU.

The block-scan kernel is compared against a float64 per-step loop written here; the generated modules (a per-key
gated delta rule, s4d, lru) against the float64 reference recurrence (forward) and the torch path (gradients).
Tolerances: float64 runs agree to rounding (1e-10 relative to the output scale); fp32 runs to 1e-5 as in
test_triton_diagonal.py (a few ulps over <= 16 steps of contracting blocks; an indexing error is O(1)).
"""


from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")

import dsfc.runtime.triton_dense as triton_dense  # noqa: E402
from dsfc.check import load_module, small_dims  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_spec, compile_text  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402
from tests.triton.test_triton_diagonal import ROOT, TOL32, TOL64, rel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")


def loop(blocks, bu, h0):
    h, out = h0, []
    for t in range(bu.shape[1]):
        h = torch.einsum("bgij,bgj->bgi", blocks[:, t], h) + bu[:, t]
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("max_elems", [8192, 16], ids=["one-program", "several-programs"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 7, 5, 3)], ids=["M=4", "M=3"])
def test_block_scan_matches_loop(monkeypatch, shape, max_elems):
    """Forward and gradients (blocks, bu, h0) in float64; M=3 pads the tile, 16 elements force BLOCK_G < G."""
    monkeypatch.setattr(triton_dense, "MAX_BLOCK_ELEMS", max_elems)
    B, L, G, M = shape
    g = torch.Generator().manual_seed(0)
    blocks = 0.5 * torch.randn(B, L, G, M, M, generator=g, dtype=torch.float64)
    bu = torch.randn(B, L, G, M, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, G, M, generator=g, dtype=torch.float64)
    w = torch.randn(B, L, G, M, generator=g, dtype=torch.float64)
    xs = [x.to(DEVICE).requires_grad_() for x in (blocks, bu, h0)]
    xs64 = [x.clone().requires_grad_() for x in (blocks, bu, h0)]  # the float64 loop on CPU
    got = triton_dense.block_scan_triton(*xs)
    want = loop(*xs64)
    assert rel(got, want) <= TOL64
    for a, b in zip(torch.autograd.grad((got * w.to(DEVICE)).sum(), xs),
                    torch.autograd.grad((want * w).sum(), xs64)):
        assert rel(a, b) <= TOL64


def test_block_scan_half_inputs():
    """fp16 blocks and bu, fp32 state: vs the fp64 loop on the same (rounded) values, to fp32 accuracy."""
    g = torch.Generator().manual_seed(1)
    blocks = (0.5 * torch.randn(2, 6, 3, 4, 4, generator=g)).half().to(DEVICE)
    bu = torch.randn(2, 6, 3, 4, generator=g).half().to(DEVICE)
    h0 = torch.randn(2, 3, 4, generator=g).to(DEVICE)
    got = triton_dense.block_scan_triton(blocks, bu, h0)
    assert got.dtype == torch.float32
    assert rel(got, loop(blocks.double().cpu(), bu.double().cpu(), h0.double().cpu())) <= TOL32


def test_block_scan_rejects_bad_input():
    h0 = torch.zeros(2, 3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="disagree"):
        triton_dense.block_scan_triton(torch.zeros(2, 5, 3, 4, 3, device=DEVICE), torch.zeros(2, 5, 3, 4, device=DEVICE),
                                       h0)
    with pytest.raises(TypeError, match="float32 or float64"):
        triton_dense.block_scan_triton(torch.zeros(2, 5, 3, 4, 4, device=DEVICE), torch.zeros(2, 5, 3, 4, device=DEVICE),
                                       h0.half())
    with pytest.raises(TypeError, match="float tensor"):
        triton_dense.block_scan_triton(torch.zeros(2, 5, 3, 4, 4, dtype=torch.long, device=DEVICE),
                                       torch.zeros(2, 5, 3, 4, device=DEVICE), h0)


# A delta rule whose gate varies over the key index, A = diag(g) (I - k k^T), is the chunked diagonal-plus-rank-1
# family when B u = k v^T (with its own Triton kernel since 2026-11-29, tests/triton/test_triton_dplr.py); with a full
# input matrix B, not an outer product of a key and a value, no chunked form applies and it stays in the dense family,
# its [K, K] blocks per head and value the block-scan kernel's.
PER_KEY_GATED_DELTA = """
model PerKeyGatedDelta "delta rule with a per-key gate and a full B: A = diag(g) (I - k k^T), the dense family"
dim d = 16
dim H = 2
dim K = 4
dim V = 4
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_B[H, K, V, d] ~ normal(0, 1 / sqrt(d))
param W_g[H, K, d] ~ normal(0, 1 / sqrt(d))
let k[h: H, a: K] = tanh(sum(m, W_K[h, a, m] * u[m])) / 2
let g[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * g[h, a] * (delta(a, a2) - k[h, a] * k[h, a2])
B[(h, a, b), m] = W_B[h, a, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * k[h, a]
"""
DENSE = ["per_key_gated_delta", "s4d", "lru"]


def _compile(name):
    if name == "per_key_gated_delta":
        return compile_text(PER_KEY_GATED_DELTA, "per_key_gated_delta.dsf")
    return compile_spec(ROOT / "specs" / f"{name}.dsf")


@pytest.mark.parametrize("name", DENSE)
def test_dense_specs_match_reference_and_torch(monkeypatch, name):
    """float64 forward vs the reference; fp32 gradients vs the torch path; chunks of 3 steps over T=7 (the state
    carried across launches)."""
    monkeypatch.setattr(triton_dense, "chunk_len", lambda *a, **k: 3)
    result = _compile(name)
    assert result.plan.triton_dense is not None and "dense block scan" in result.plan.triton_note
    module = load_module(result, name=f"dsfc_triton_dense_test_{name}")
    module.dense_chunk_len = triton_dense.chunk_len
    assert module._core_triton_available is module._core_triton_dense
    dims = small_dims(result)
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**dims).double().to(DEVICE)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 7, model._in_features(), generator=g, dtype=torch.float64).to(DEVICE)
    h0 = 0.5 * torch.randn(2, model._state_size(), generator=g, dtype=torch.float64).to(DEVICE)
    model.backend = "triton"
    with torch.no_grad():
        y, hT = model(u, initial_state=h0, output_final_state=True)
    named = dict(model.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach().cpu() for p in result.sym.params}
    y_ref, h_ref = reference_forward(result.sym, result.sym.dim_values(dims), params, u.cpu(), initial_state=h0.cpu())
    assert rel(y, y_ref) <= TOL64 and rel(hT.reshape(2, -1), h_ref) <= TOL64

    model.float()
    grads = {}
    for backend in ("triton", "torch"):
        model.backend = backend
        uu = u.float().clone().requires_grad_()
        y, hT = model(uu, initial_state=h0.float(), output_final_state=True)
        gg = torch.Generator().manual_seed(2)
        loss = (y * torch.randn(y.shape, generator=gg).to(y)).sum() + (hT * torch.randn(hT.shape, generator=gg).to(hT)).sum()
        names = ["u"] + [n for n, _ in model.named_parameters()]
        grads[backend] = dict(zip(names, torch.autograd.grad(loss, [uu] + list(model.parameters()),
                                                             allow_unused=True)))
    for n, want in grads["torch"].items():
        if want is not None:
            assert rel(grads["triton"][n], want) <= TOL32, n


def test_dense_step_uses_the_kernel(monkeypatch):
    result = _compile("per_key_gated_delta")
    module = load_module(result, name="dsfc_triton_dense_test_step")
    calls = []
    kernel = module.block_scan_triton
    monkeypatch.setattr(module, "block_scan_triton", lambda *a: calls.append(a[1].shape[1]) or kernel(*a))
    torch.manual_seed(0)
    model = module.PerKeyGatedDelta(**small_dims(result), backend="triton").double().to(DEVICE)
    u = torch.randn(1, 3, model._in_features(), dtype=torch.float64).to(DEVICE)
    state, ys = None, []
    for t in range(3):
        y_t, state = model.step(u[:, t], state)
        ys.append(y_t)
    named = dict(model.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach().cpu() for p in result.sym.params}
    y_ref, _ = reference_forward(result.sym, result.sym.dim_values(small_dims(result)), params, u.cpu())
    assert calls == [1, 1, 1]
    assert rel(torch.stack(ys, 1), y_ref) <= TOL64


def test_dense_under_torch_compile():
    """The block-scan custom ops under torch.compile(fullgraph=True, backend="aot_eager"): forward and gradients
    match the uncompiled torch path."""
    result = _compile("per_key_gated_delta")
    module = load_module(result, name="dsfc_triton_dense_test_compile")
    torch.manual_seed(0)
    model = module.PerKeyGatedDelta(**small_dims(result)).to(DEVICE)
    u = torch.randn(2, 5, model._in_features(), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out = {}
    for name, fn, backend in (("compiled", torch.compile(model, backend="aot_eager", fullgraph=True), "triton"),
                              ("torch", model, "torch")):
        model.backend = backend
        y = fn(u)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y)).sum().backward()
        out[name] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad()
    assert rel(out["compiled"][0], out["torch"][0]) <= TOL32
    for n, want in out["torch"][1].items():
        assert rel(out["compiled"][1][n], want) <= TOL32, n


def test_auto_picks_the_triton_kernel_on_cuda():
    """backend="auto" picks each spec's Triton path for CUDA tensors: the delta rule's (its chunk-to-chunk recurrence
    in one kernel, everything else the torch path's chunk-parallel code) and the block scan of the specs whose only
    algorithm it is; CPU tensors stay on the torch path."""
    for name in ("deltanet", "gated_deltanet", "lru"):
        result = _compile(name)
        module = load_module(result, name=f"dsfc_triton_dense_auto_{name}")
        model = getattr(module, result.plan.model)(**small_dims(result))

        class FakeCuda:  # only .is_cuda is read
            is_cuda = True

        class FakeCpu:
            is_cuda = False

        assert model._resolve_backend(FakeCuda()) == "triton", name
        assert model._resolve_backend(FakeCpu()) == "torch", name


def test_block_scan_non_contiguous_state():
    """A permuted h0 (the generated code passes h0.permute(...).reshape(...), a view when a group axis has size 1):
    dh0 came back with h0's permuted strides but the kernel's row-major values, a transposed gradient (KDA-style
    specs with one head, tests/e2e/test_user_specs_3.py)."""
    B, L, G, M = 2, 4, 3, 5
    g = torch.Generator().manual_seed(1)
    blocks = 0.5 * torch.randn(B, L, G, M, M, generator=g, dtype=torch.float64)
    bu = torch.randn(B, L, G, M, generator=g, dtype=torch.float64)
    h0_t = torch.randn(B, M, G, generator=g, dtype=torch.float64)
    w = torch.randn(B, L, G, M, generator=g, dtype=torch.float64)
    leaf = h0_t.to(DEVICE).requires_grad_()
    xs = [blocks.to(DEVICE).requires_grad_(), bu.to(DEVICE).requires_grad_()]
    h0 = leaf.transpose(1, 2)  # [B, G, M], not contiguous
    assert not h0.is_contiguous()
    got = triton_dense.block_scan_triton(*xs, h0)
    leaf64 = h0_t.clone().requires_grad_()
    xs64 = [x.clone().requires_grad_() for x in (blocks, bu)]
    want = loop(*xs64, leaf64.transpose(1, 2))
    assert rel(got, want) <= TOL64
    for a, b in zip(torch.autograd.grad((got * w.to(DEVICE)).sum(), [*xs, leaf]),
                    torch.autograd.grad((want * w).sum(), [*xs64, leaf64])):
        assert rel(a, b) <= TOL64
