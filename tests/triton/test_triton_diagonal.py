"""Generated diagonal-scan Triton kernels, run on CPU under the Triton interpreter.

Three paths must agree: the generated kernels (backend="triton"), the structured torch path (backend="torch") and
the float64 reference recurrence (dsfc/reference.py). Sizes are tiny (batch 2, T in {1, 7, 16}, d <= 8, n <= 4):
the interpreter costs ~1 ms per op per time step.

Tolerance. The kernels run the recurrence sequentially in fp32; the torch path runs a chunked scan in fp32, the
reference loop in fp64. Over <= 16 steps of |a| < 1 with O(1) inputs the fp32 rounding of either path is a few ulps
of the output scale (~1e-7 relative; measured <= 5e-7), so 1e-5 relative to the output scale leaves 20x margin
while any wrong derivative or index (an O(1) error) fails by orders of magnitude. The float64 run must agree with
the fp64 reference to 1e-10.
"""

from tests.triton._device import DEVICE  # (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

from dsfc.check import load_module  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_spec, compile_text  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402
import dsfc.runtime.triton_diagonal as triton_diagonal  # noqa: E402

# The padded lanes of a tile (beyond R or C) compute on zero-filled loads, e.g. 1 / sqrt(1 - a^2) at a = 1, and are
# masked out of every store and sum; numpy (the interpreter) warns about them, a GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

ROOT = Path(__file__).resolve().parents[2]
TOL32 = 1e-5
TOL64 = 1e-10

GATE = """
model Gate "sigmoid-decay elementwise gate, one state per channel (n = 1)"
dim d = 5
dim n = 1
input u[d]
state h[c: d, j: n]
output y[d]
param W_f[d, d] ~ normal(0, 0.5)
param b_f[d] = 1
let f[c: d] = sigmoid(sum(k, W_f[c, k] * u[k]) + b_f[c])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * f[c]
B[(c, j), k] = delta(c, k) * (1 - f[c])
C[o, (c, j)] = delta(o, c)
"""

RGLRU = """
model RGLRU "RG-LRU-like: a = exp(-8 r softplus(lam)), sqrt(1 - a^2)-normalised gated input, D skip"
dim d = 6
input u[d]
state h[c: d]
output y[d]
param W_r[d, d] ~ normal(0, 0.3)
param W_i[d, d] ~ normal(0, 0.3)
param lam[d] ~ uniform(0.5, 2)
let r[c: d] = sigmoid(sum(k, W_r[c, k] * u[k]))
let gi[c: d] = sigmoid(sum(k, W_i[c, k] * u[k]))
A[c, c2] = delta(c, c2) * exp(-8 * r[c] * softplus(lam[c]))
B[c, k] = delta(c, k) * sqrt(1 - exp(-16 * r[c] * softplus(lam[c]))) * gi[c]
C[o, c] = delta(o, c)
D[o, k] = delta(o, k) * 0.5
"""

# pre-update readout, a dense input map (B u is a sum: hoisted to torch), a dim constant (1 / sqrt(n)) and an index
# (j + 1) in the readout coefficient, a scalar parameter inside the decay
MIX = """
model Mix "pre readout, hoisted sum, dim constant, scalar param"
dim d = 3
dim n = 4
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_Bu[n, d, d] ~ normal(0, 0.5)
param W_C[n, d] ~ normal(0, 0.5)
param W_dt[d, d] ~ normal(0, 0.5)
param gamma = 0.7
let dt[c: d] = softplus(sum(k, W_dt[c, k] * u[k]))
let cq[j: n] = sum(k, W_C[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt[c] * exp(A_log[c, j]) * gamma)
B[(c, j), k] = W_Bu[j, c, k] * dt[c]
C[o, (c, j)] = delta(o, c) * tanh(cq[j]) * (j + 1) / sqrt(n)
readout pre
"""

# a readout that mixes channels does not split per tile: the kernel writes states, torch reads out
DENSE_C = """
model DenseC "diagonal A, channel-mixing readout (states out, readout in torch)"
dim d = 3
dim n = 2
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_B[n, d] ~ normal(0, 0.5)
param W_out[d, d, n] ~ normal(0, 0.5)
let b[j: n] = sum(k, W_B[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * b[j]
C[o, (c, j)] = W_out[o, c, j]
D[o, k] = delta(o, k)
"""

SPECS = {
    "s6": (None, {"d": 5, "n": 3, "r": 2}),
    "gate": (GATE, {"d": 5, "n": 1}),
    "rglru": (RGLRU, {"d": 6}),
    "mix": (MIX, {"d": 3, "n": 4}),
    "dense_c": (DENSE_C, {"d": 3, "n": 2}),
}
FUSED = {"s6": True, "gate": True, "rglru": True, "mix": True, "dense_c": False}


class Built:
    def __init__(self, key: str, dtype=torch.float32):
        text, dims = SPECS[key]
        self.result = compile_spec(ROOT / "specs" / "s6.dsf") if text is None else compile_text(text, f"{key}.dsf")
        self.module = load_module(self.result, name=f"dsfc_triton_test_{key}_{str(dtype)[6:]}")
        torch.manual_seed(0)
        self.model = getattr(self.module, self.result.plan.model)(**dims, dtype=dtype).to(DEVICE)
        self.dims = self.result.sym.dim_values(dims)
        self.dtype = dtype

    def inputs(self, batch: int, T: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(batch, T, self.model._in_features(), generator=g, dtype=self.dtype)
        h0 = 0.5 * torch.randn(batch, self.model._state_size(), generator=g, dtype=self.dtype)
        return u.to(DEVICE), h0.reshape(batch, *self.state_shape()).to(DEVICE)

    def state_shape(self):
        return tuple(int(self.result.sym.subs_dims(e, self.dims)) for e in self.result.sym.state.shape())

    def run(self, backend: str, u, h0):
        self.model.backend = backend
        try:
            return self.model(u, initial_state=h0, output_final_state=True)
        finally:
            self.model.backend = "auto"

    def reference(self, u, h0):
        named = dict(self.model.named_parameters())
        params = {p.tensor.name: named[py_name(p.tensor.name)].detach().double().cpu() for p in self.result.sym.params}
        return reference_forward(self.result.sym, self.dims, params, u.double().cpu(),
                                 initial_state=None if h0 is None else h0.double().cpu())


_CACHE: dict = {}


def built(key: str, dtype=torch.float32) -> Built:
    if (key, dtype) not in _CACHE:
        _CACHE[key, dtype] = Built(key, dtype)
    return _CACHE[key, dtype]


def rel(got, want) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


# -- what gets generated ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SPECS))
def test_diagonal_specs_get_a_kernel(key):
    b = built(key)
    assert b.result.plan.triton is not None, b.result.plan.triton_note
    assert b.result.plan.triton.readout == FUSED[key]
    assert b.module._core_triton_available is not None
    src = b.result.source
    assert "@_jit\ndef _scan_fwd(" in src and "@_jit\ndef _scan_bwd(" in src
    assert "make_block_ptr" not in src  # removed in triton 3.9: plain pointer arithmetic only


def test_s6_maths_is_printed_into_the_kernel():
    src = built("s6").result.source
    kernel = src[src.index("def _scan_fwd("):src.index("def _scan_bwd(")]
    # the let dt = softplus(W_dt W_xdt u + b_dt) is inlined: torch computes the projection, the kernel the rest
    assert "fa0 = _softplus(x__dt_sum + x_b_dt)" in kernel
    assert "a = tl.exp(-fa0 * tl.exp(x_A_log))" in kernel
    assert "bu = fa0 * x_b * x_u" in kernel
    assert "tl.sum(tl.where(mask, coef * h, 0.0), axis=1, keep_dims=True)" in kernel  # in-kernel readout


def test_module_imports_without_triton(monkeypatch):
    result = built("s6").result  # before triton is hidden: built() caches the module that later tests share
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    module = load_module(result, name="dsfc_triton_test_s6_no_triton")
    assert module._core_triton_available is None
    model = module.S6(d=3, n=2, r=1)
    assert model(torch.randn(1, 2, 3)).shape == (1, 2, 3)  # the torch path still runs
    model.backend = "triton"
    with pytest.raises(RuntimeError, match="no Triton kernel"):
        model(torch.randn(1, 2, 3))


# -- forward ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("T", [1, 7, 16])
@pytest.mark.parametrize("key", sorted(SPECS))
def test_forward_matches_torch_and_reference(key, T, with_h0):
    b = built(key)
    u, h0 = b.inputs(2, T)
    h0 = h0 if with_h0 else None
    with torch.no_grad():
        y, hT = b.run("triton", u, h0)
        y_t, hT_t = b.run("torch", u, h0)
    y_ref, h_ref = b.reference(u, h0)
    assert y.shape == y_t.shape and hT.shape == hT_t.shape and y.dtype == torch.float32
    assert rel(y, y_t) <= TOL32 and rel(hT, hT_t) <= TOL32
    assert rel(y, y_ref) <= TOL32 and rel(hT.reshape(2, -1), h_ref) <= TOL32


@pytest.mark.parametrize("key", ["s6", "mix"])
def test_states_out_path_matches(monkeypatch, key):
    """The fused readout disabled (as for a reduction too wide for one tile): states out, readout in torch."""
    b = built(key)
    u, h0 = b.inputs(2, 7)
    with torch.no_grad():
        y_fused, h_fused = b.run("triton", u, h0)
        monkeypatch.setattr(triton_diagonal, "MAX_BLOCK_C", 1)
        y, hT = b.run("triton", u, h0)
    y_ref, h_ref = b.reference(u, h0)
    assert rel(y, y_ref) <= TOL32 and rel(hT.reshape(2, -1), h_ref) <= TOL32
    assert rel(y, y_fused) <= TOL32 and rel(hT, h_fused) <= TOL32


@pytest.mark.parametrize("key", ["s6", "mix"])
def test_float64_matches_reference(key):
    b = built(key, torch.float64)
    u, h0 = b.inputs(2, 7)
    with torch.no_grad():
        y, hT = b.run("triton", u, h0)
    y_ref, h_ref = b.reference(u, h0)
    assert y.dtype == torch.float64
    assert rel(y, y_ref) <= TOL64 and rel(hT.reshape(2, -1), h_ref) <= TOL64


# -- backward -----------------------------------------------------------------------------------------------------


def _grads(b: Built, backend: str, u, h0, with_h0: bool):
    params = [p for _, p in sorted(b.model.named_parameters())]
    u = u.clone().requires_grad_()
    h0 = h0.clone().requires_grad_() if with_h0 else None
    y, hT = b.run(backend, u, h0)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g).to(y)).sum() + (hT * torch.randn(hT.shape, generator=g).to(hT)).sum()
    wrt = [u] + ([h0] if with_h0 else []) + params
    names = ["u"] + (["h0"] if with_h0 else []) + [n for n, _ in sorted(b.model.named_parameters())]
    return dict(zip(names, torch.autograd.grad(loss, wrt, allow_unused=True)))


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("key", sorted(SPECS))
def test_gradients_match_torch(key, with_h0):
    b = built(key)
    u, h0 = b.inputs(2, 7)
    got = _grads(b, "triton", u, h0, with_h0)
    want = _grads(b, "torch", u, h0, with_h0)
    for name in want:
        if want[name] is None:
            assert got[name] is None or not got[name].abs().max() > 0, name
            continue
        assert got[name] is not None, name
        assert rel(got[name], want[name]) <= TOL32, name


@pytest.mark.parametrize("key", ["s6", "mix"])
def test_states_out_gradients_match(monkeypatch, key):
    b = built(key)
    u, h0 = b.inputs(2, 7)
    want = _grads(b, "torch", u, h0, True)
    monkeypatch.setattr(triton_diagonal, "MAX_BLOCK_C", 1)
    got = _grads(b, "triton", u, h0, True)
    for name in want:
        assert rel(got[name], want[name]) <= TOL32, name


def test_float64_gradients_match_torch():
    b = built("mix", torch.float64)
    u, h0 = b.inputs(2, 5)
    got = _grads(b, "triton", u, h0, True)
    want = _grads(b, "torch", u, h0, True)
    for name in want:
        assert rel(got[name], want[name]) <= TOL64, name


# -- every catalog spec that gets a kernel ------------------------------------------------------------------------

CATALOG = sorted((ROOT / "specs").glob("*.dsf"))


@pytest.mark.parametrize("path", CATALOG, ids=[p.stem for p in CATALOG])
def test_catalog_kernels_match_torch(path):
    """Forward (after any post-ops) and gradients w.r.t. the input and every parameter, backend triton vs torch
    (diagonal kernels and the dense family's block-scan kernel)."""
    from dsfc.check import small_dims

    result = compile_spec(path)
    module = load_module(result, name=f"dsfc_triton_test_catalog_{path.stem}")
    assert module._core_triton_available is not None, result.plan.triton_note  # every family has a Triton path
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**small_dims(result)).to(DEVICE)
    u = torch.randn(2, 7, model._in_features(), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    outs = {}
    for backend in ("triton", "torch"):
        model.backend = backend
        uu = u.clone().requires_grad_()
        y, final = model(uu, output_final_state=True)
        if isinstance(final, dict):  # running quantities and h, or a quadratic layer's KV cache
            h = final["h"] if "h" in final else torch.cat([v.reshape(v.shape[0], -1) for v in final.values()], 1)
        else:
            h = final
        g = torch.Generator().manual_seed(2)
        loss = (y * torch.randn(y.shape, generator=g).to(y)).sum() + (h * torch.randn(h.shape, generator=g).to(h)).sum()
        names = ["u"] + [n for n, _ in model.named_parameters()]
        grads = torch.autograd.grad(loss, [uu] + list(model.parameters()), allow_unused=True)
        outs[backend] = (y.detach(), h.detach(), dict(zip(names, grads)))
    (y, h, got), (y_t, h_t, want) = outs["triton"], outs["torch"]
    assert rel(y, y_t) <= TOL32 and rel(h, h_t) <= TOL32
    for name, w in want.items():
        if w is not None:
            assert rel(got[name], w) <= TOL32, name
