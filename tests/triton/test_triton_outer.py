"""Chunked outer-product Triton kernels (dsfc/runtime/triton_outer.py) and the generated modules' Triton path, run
on CPU under the Triton interpreter, or compiled on a GPU with DSFC_TEST_DEVICE=cuda (tests/triton/_device.py): the
inputs are drawn on CPU from seeded generators (identical values on either device) and moved to DEVICE; the float64
references run on CPU.

Every catalog spec of the chunked outer-product family, forward and gradients (input, initial state, every
parameter), backend="triton" in fp32 against the module's float64 reference recurrence (backend="reference" on a
float64 copy of the model: dense per-step matrices, ordinary autograd) and against the independent float64 spec
evaluator dsfc.reference.reference_forward; the torch path (backend="torch") is checked against the same reference.
T in {1, 13, 37} (see CASES): one step, one partial chunk, two chunks of 16 and a remainder; batch 2, H = 2, K, V <= 8
(not powers of two: masked lanes).

Tolerances (relative to the largest entry of the compared tensor).
* fp32 vs the float64 reference, TOL32 = 2e-5. The kernels accumulate in fp32 (tl.dot at input_precision="ieee":
  under the interpreter and on a GPU alike, no TF32); sums of <= 16 products per matmul over <= 3 chunks give a few
  ulps of the output scale. The log-decay gradient is a reverse cumsum over T of q.dq - k.dk, a difference of
  O(|q dq|) terms, so it loses a little more. Measured worst over every spec, case, output and gradient (triton and
  torch paths): 4.1e-6 (mLSTM; every other spec <= 2e-6). Where the log-decay gradient is exactly 0 (the decay acts on
  an empty state: T = 1 without an initial state) the kernel's value is the rounding residue of q.dq - k.dk, compared
  against the largest gradient entry of the layer instead. 2e-5 keeps ~5x margin, while a wrong sign, index, mask or
  missing term (an O(1) relative error) fails by 4 orders of magnitude.
* half inputs, TOL_BF16 = 2e-2: the inputs (and params) are rounded to bf16 / fp16 before both paths see them, so
  the extra error is the final rounding of y, the state and the gradients to bf16 (2^-8 = 3.9e-3 relative per
  entry; fp16 2^-11). Measured worst: 5.2e-3 (bf16, per-key decay); 2e-2 allows a few such roundings, and an O(1)
  error still fails.
"""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import copy  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

from dsfc.check import load_module  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_spec  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402
import dsfc.runtime.triton_outer as triton_outer  # noqa: E402
from dsfc.runtime import autochoice  # noqa: E402
from dsfc.runtime.triton_outer import chunked_outer_triton  # noqa: E402
from dsfc.runtime.scans import chunked_outer_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL32 = 2e-5
TOL_BF16 = 2e-2

# every spec of the family, with small dims (the reference's dense N x N matrices cost N^2 per step, N = H K V <= 72):
# H = 2, K, V <= 8, mostly not powers of two (masked lanes); the runtime tests below cover K, V up to 40
SPECS = {
    "linear_attention": {"d": 8, "H": 2, "K": 5, "V": 7},
    "linear_attention_normalized": {"d": 8, "H": 2, "K": 4, "V": 6},
    "normalized_attention": {"d": 10, "H": 2, "K": 5},  # V = d // H = 5
    "normalized_attention_sigmoid": {"d": 6, "H": 2, "K": 4},
    "normalized_attention_exprelu": {"d": 6, "H": 2, "K": 4},
    "ssd": {"H": 2, "P": 6, "n": 5, "G": 1},
    "retnet": {"d": 8, "H": 2, "K": 4, "V": 6},
    "gla": {"d": 8, "H": 2, "K": 6, "V": 5, "R": 3},  # per-key decay
    "mlstm": {"H": 2, "DH": 4, "bs": 4},
    "rwkv6": {"d": 8, "H": 2, "K": 4, "V": 4, "R": 2, "Rw": 3, "layer": 2, "L": 3},  # pre-update readout
    "taylor_attention": {"d": 8, "H": 2, "K": 2, "V": 4, "p": 2},  # feature range taylor(K, p) = 7
}
FAMILY = "chunked outer-product scan"


class Built:
    def __init__(self, key: str, dtype=torch.float32):
        self.result = compile_spec(ROOT / "specs" / f"{key}.dsf")
        self.module = load_module(self.result, name=f"dsfc_triton_outer_test_{key}_{str(dtype)[6:]}")
        torch.manual_seed(0)
        dims = SPECS[key]
        self.model = getattr(self.module, self.result.plan.model)(**dims, dtype=dtype)
        with torch.no_grad():  # some specs initialise parameters to 0 (gates, biases): make every path matter
            for p in self.model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(dtype))
        self.model64 = copy.deepcopy(self.model).double()  # the float64 reference: stays on CPU
        self.model = self.model.to(DEVICE)
        self.dims = self.result.sym.dim_values(dims)
        self.dtype = dtype

    def inputs(self, batch: int, T: int, with_h0: bool, seed: int = 1):
        """u, and an initial state: the final state of a random prefix (a carried state, running quantities
        included), with its h perturbed so that it is not the state the prefix would reach. Drawn on CPU, returned
        on DEVICE."""
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(batch, T, self.model._in_features(), generator=g).to(self.dtype)
        if not with_h0:
            return u.to(DEVICE), None
        prefix = torch.randn(batch, 5, self.model._in_features(), generator=g).to(self.dtype)
        with torch.no_grad():
            _, state = run(self.model64, "reference", prefix.double(), None)
        h = state["h"] if isinstance(state, dict) else state
        h = (h + 0.5 * torch.randn(h.shape, generator=g, dtype=h.dtype)).to(self.dtype)
        state = {**{k: v.to(self.dtype) for k, v in state.items()}, "h": h} if isinstance(state, dict) else h
        return u.to(DEVICE), _to(state, DEVICE)


def run(model, backend: str, u, state, fn=None):
    """``(fn or model)(u)`` with ``model.backend = backend`` (fn: e.g. a torch.compile of model)."""
    model.backend = backend
    try:
        return (model if fn is None else fn)(u, initial_state=state, output_final_state=True)
    finally:
        model.backend = "auto"


_CACHE: dict = {}


def built(key: str, dtype=torch.float32) -> Built:
    if (key, dtype) not in _CACHE:
        _CACHE[key, dtype] = Built(key, dtype)
    return _CACHE[key, dtype]


def rel(got, want) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _h(state):
    return state["h"] if isinstance(state, dict) else state


def _to(state, *args):
    """``state.to(*args)`` for a tensor, a dict of tensors (a carried state with running quantities) or None."""
    if state is None:
        return None
    return {k: v.to(*args) for k, v in state.items()} if isinstance(state, dict) else state.to(*args)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _leaf(state, dtype=None, device=None):
    """A differentiable copy of the initial state (its h; running quantities are carried as they are), on
    ``device`` (default: where it is)."""
    if state is None:
        return None, None
    if isinstance(state, dict):
        h = state["h"].detach().to(device=device, dtype=dtype or state["h"].dtype).clone().requires_grad_()
        return {**{k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}, "h": h}, h
    h = state.detach().to(device=device, dtype=dtype or state.dtype).clone().requires_grad_()
    return h, h


def forward_and_grads(fn, backend: str, u, state, dtype=None, model=None):
    """y, final h, and dL/d(u, h0, every parameter) of a fixed random linear loss of y and the final state, for
    ``fn`` the model (or, with ``model`` given, a wrapper of it such as its torch.compile). ``u`` and ``state`` are
    moved to the model's device (DEVICE, or CPU for the float64 reference model); the results stay there."""
    model = fn if model is None else model
    dev = _device_of(model)
    uu = u.detach().to(device=dev, dtype=dtype or u.dtype).clone().requires_grad_()
    st, h0 = _leaf(state, dtype, dev)
    y, final = run(model, backend, uu, st, fn)
    hT = _h(final)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g).to(y)).sum() + (
        hT * torch.randn(hT.shape, generator=g).to(hT)).sum()
    names = [n for n, _ in model.named_parameters()]
    wrt = [uu] + ([h0] if h0 is not None else []) + [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    out = dict(zip(["u"] + (["h0"] if h0 is not None else []) + names, grads))
    return y.detach(), hT.detach(), out


# -- what gets generated ------------------------------------------------------------------------------------------


def test_every_outer_spec_is_tested():
    # the generated modules say their algorithm (generated/ is kept in sync with specs/ by the catalog tests)
    family = sorted(p.stem for p in (ROOT / "generated").glob("*.py")
                    if f"Algorithm: {FAMILY}." in p.read_text())
    assert family == sorted(p.stem for p in (ROOT / "specs").glob("*.dsf") if p.stem in SPECS) == sorted(SPECS)


@pytest.mark.parametrize("key", sorted(SPECS))
def test_outer_specs_get_a_kernel(key):
    b = built(key)
    assert b.result.plan.triton_note == "Triton kernel: chunked outer-product scan"
    assert b.module._core_triton_available is not None
    assert b.module._core_triton_available.__name__ == "_core_triton_outer"
    src = b.result.source
    assert "chunked_outer_triton(_q, _k, _v, _log_decay, _s0, output_final_state=True" in src
    assert "Fused into the kernels" in src  # the generated file says what runs where


def test_auto_picks_triton_on_cuda_only():
    model = built("retnet").model

    class OnCuda:  # _resolve_backend reads only the device flag
        is_cuda = True

    assert model._resolve_backend(OnCuda()) == "triton"
    assert model._resolve_backend(torch.zeros(1)) == "torch"  # a CPU tensor (also when DEVICE is cuda)
    assert model._resolve_backend(torch.zeros(1, device=DEVICE)) == ("triton" if DEVICE == "cuda" else "torch")


def test_module_imports_without_triton(monkeypatch):
    # built() caches the shared retnet module: build it before triton is hidden, or every later test that uses it
    # would get a module without kernels (an order-dependent failure under xdist)
    result = built("retnet").result
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.setitem(sys.modules, "dsfc.runtime.triton_outer", None)  # as if never imported: it imports triton
    # CPU tensors on any DEVICE: no kernel is launched (the torch path runs, the triton backend is refused first)
    module = load_module(result, name="dsfc_triton_outer_test_retnet_no_triton")
    assert module._core_triton_available is None
    model = module.RetNet(**SPECS["retnet"])
    assert model(torch.randn(1, 2, 8)).shape == (1, 2, 12)  # the torch path still runs
    model.backend = "triton"
    with pytest.raises(RuntimeError, match="no Triton kernel"):
        model(torch.randn(1, 2, 8))


# -- the layers: triton vs reference (float64) vs torch ------------------------------------------------------------


# T = 1: one step (h0=None: the decay acts on an empty state, its gradient is exactly 0); 13: one partial chunk;
# 37: two chunks of 16 and a remainder of 5, from a carried state
CASES = [(1, False), (1, True), (13, False), (37, True)]


@pytest.mark.parametrize("T,with_h0", CASES, ids=[f"T{T}-{'h0' if h else 'h0=None'}" for T, h in CASES])
@pytest.mark.parametrize("key", sorted(SPECS))
def test_forward_and_gradients_match_reference(key, T, with_h0):
    b = built(key)
    u, state = b.inputs(2, T, with_h0)
    y, hT, got = forward_and_grads(b.model, "triton", u, state)
    y_ref, h_ref, want = forward_and_grads(b.model64, "reference", u, state, torch.float64)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape and hT.shape == h_ref.shape
    assert rel(y, y_ref) <= TOL32 and rel(hT, h_ref) <= TOL32
    assert set(got) == set(want)
    scale = max(w.abs().max().item() for w in want.values() if w is not None)
    for name, w in want.items():
        if w is None:  # a parameter the layer does not read on this path
            assert got[name] is None or not got[name].abs().max() > 0, name
            continue
        assert got[name] is not None, name
        if not w.abs().max() > 0:  # exactly 0 (the decay of an empty state at T = 1): rounding residue only
            assert got[name].abs().max() <= TOL32 * scale, name
            continue
        assert rel(got[name], w) <= TOL32, (name, rel(got[name], w))
    if T == 13:  # the independent spec evaluator agrees with the module's reference (forward), and so does torch
        named = dict(b.model64.named_parameters())  # on CPU, as is the evaluator's input
        params = {p.tensor.name: named[py_name(p.tensor.name)].detach() for p in b.result.sym.params}
        state64 = _to(state, "cpu", torch.float64)
        if not b.result.plan.posts:
            y_ev, h_ev = reference_forward(b.result.sym, b.dims, params, u.double().cpu(),
                                           initial_state=None if state64 is None else (
                                               {**state64, "h": _h(state64).reshape(2, -1)}
                                               if isinstance(state64, dict) else state64.reshape(2, -1)))
            assert rel(y.reshape(y_ev.shape), y_ev) <= TOL32
            assert rel(hT.reshape(2, -1), _h(h_ev)) <= TOL32
        y_t, h_t, want_t = forward_and_grads(b.model, "torch", u, state)
        assert rel(y_t, y_ref) <= TOL32 and rel(h_t, h_ref) <= TOL32
        for name, w in want.items():
            if w is not None:
                assert rel(want_t[name], w) <= TOL32, name


def test_bf16_layer_matches_reference():
    """A bf16 model and input: the module computes in fp32 from bf16 values; y is rounded to bf16."""
    b = built("gla", torch.bfloat16)
    u, state = b.inputs(2, 37, True)
    y, hT, got = forward_and_grads(b.model, "triton", u, state)
    y_ref, h_ref, want = forward_and_grads(b.model64, "reference", u, state, torch.float64)
    assert y.dtype == torch.bfloat16
    assert rel(y, y_ref) <= TOL_BF16 and rel(hT, h_ref) <= TOL_BF16
    for name, w in want.items():
        assert rel(got[name], w) <= TOL_BF16, name


# -- the runtime function directly: bf16 / fp16 streams, masking, every decay kind ------------------------------


def _loop(q, k, v, g, s0):
    """The recurrence step by step (float64): S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T, y_t = S_t^T q_t."""
    S, ys = s0, []
    for t in range(q.shape[1]):
        if g is not None:
            d = g[:, t].exp()
            S = S * (d[..., None, None] if d.dim() == 2 else d[..., None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("schedule", ["fused", "split"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("decay", ["none", "scalar", "key"])
def test_runtime_half_inputs(decay, dtype, schedule):
    B, T, H, K, V = 2, 37, 2, 5, 11
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(B, T, H, K, generator=gen).to(DEVICE, dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).to(DEVICE, dtype)
    g = {"none": None, "scalar": -torch.rand(B, T, H, generator=gen),
         "key": -torch.rand(B, T, H, K, generator=gen)}[decay]
    g = None if g is None else g.to(DEVICE, dtype)
    s0 = torch.randn(B, H, K, V, generator=gen).to(DEVICE, dtype)
    xs = [x.requires_grad_() for x in (q, k, v, g, s0) if x is not None]
    y, sT = chunked_outer_triton(q, k, v, g, s0, output_final_state=True, schedule=schedule)
    assert y.dtype == dtype and sT.dtype == dtype
    xs64 = [x.detach().double().cpu().requires_grad_() for x in xs]  # the float64 loop on CPU
    y64, s64 = _loop(*xs64[:3], xs64[3] if g is not None else None, xs64[-1])
    wy, ws = torch.randn(y.shape, generator=gen), torch.randn(sT.shape, generator=gen)
    got = torch.autograd.grad((y * wy.to(y)).sum() + (sT * ws.to(sT)).sum(), xs)
    want = torch.autograd.grad((y64 * wy.double()).sum() + (s64 * ws.double()).sum(), xs64)
    tol = TOL32 if dtype == torch.float32 else TOL_BF16
    assert rel(y, y64) <= tol and rel(sT, s64) <= tol
    for a, w in zip(got, want):
        assert a.dtype == dtype and rel(a, w) <= tol


@pytest.mark.parametrize("schedule", ["fused", "split"])
@pytest.mark.parametrize("decay", ["scalar", "key"])
def test_runtime_value_slices(monkeypatch, decay, schedule):
    """V split over several programs (as on a GPU for V > 64): dq, dk summed over slices, the last slice masked;
    several chunks (the split schedule's per-chunk programs), the last one partial."""
    monkeypatch.setattr(triton_outer, "MAX_BLOCK_V", 16)
    B, T, H, K, V = 1, 21, 2, 7, 40  # three value slices of 16, the last 8 wide
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64).to(DEVICE) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64).to(DEVICE)
    g = -torch.rand((B, T, H) if decay == "scalar" else (B, T, H, K), generator=gen, dtype=torch.float64).to(DEVICE)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64).to(DEVICE)
    xs = [x.requires_grad_() for x in (q, k, v, g, s0)]
    y, sT = chunked_outer_triton(*xs, output_final_state=True, schedule=schedule)
    xs64 = [x.detach().cpu().clone().requires_grad_() for x in xs]  # the float64 loop on CPU
    y64, s64 = _loop(*xs64)
    wy, ws = torch.randn(y.shape, generator=gen, dtype=torch.float64), torch.randn(sT.shape, generator=gen,
                                                                                    dtype=torch.float64)
    got = torch.autograd.grad((y * wy.to(y)).sum() + (sT * ws.to(sT)).sum(), xs)
    want = torch.autograd.grad((y64 * wy).sum() + (s64 * ws).sum(), xs64)
    assert rel(y, y64) <= 1e-12 and rel(sT, s64) <= 1e-12
    for a, w in zip(got, want):
        assert rel(a, w) <= 1e-12


def test_schedule_is_checked():
    q = torch.randn(1, 4, 1, 3, device=DEVICE)
    with pytest.raises(ValueError, match="schedule must be 'auto', 'fused' or 'split', got 'parallel'"):
        chunked_outer_triton(q, q, q, schedule="parallel")


def _launch(split=2, half=0):
    return triton_outer._Launch(1, 40, 2, 8, 8, 1, 16, 16, 16, torch.float32, half, 4, split)


def test_auto_schedule_takes_the_faster_when_both_agree(monkeypatch):
    """schedule="auto" (the default): the first call of a launch shape times both schedules (faked here: no GPU)
    and keeps the faster; later calls of that shape reuse the choice without timing again."""
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    timed = []
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: timed.append(L.split) or (1.0 if L.split else 2.0))
    out = torch.randn(3, 4)
    L = triton_outer._resolve(_launch(), "fwd", lambda c: (out.clone(),), torch.device("cpu"))
    assert L.split == 1 and sorted(timed) == [0, 1]
    assert triton_outer._resolve(_launch(), "fwd", lambda c: 1 / 0, torch.device("cpu")).split == 1  # cached
    assert len(timed) == 2
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: 2.0 if L.split else 1.0)
    assert triton_outer._resolve(_launch(), "bwd", lambda c: (out.clone(),), torch.device("cpu")).split == 0
    # forced schedules and devices where nothing can be timed never time anything
    assert triton_outer._resolve(_launch(split=1), "fwd", lambda c: 1 / 0, torch.device("cpu")).split == 1
    monkeypatch.setattr(autochoice, "can_time", lambda device: False)
    assert triton_outer._resolve(_launch(half=1), "fwd", lambda c: 1 / 0, torch.device("cpu")).split == 0
    # a shape chosen earlier keeps its choice where nothing can be timed (a CUDA graph captured after warm-up)
    assert triton_outer._resolve(_launch(), "fwd", lambda c: 1 / 0, torch.device("cpu")).split == 1


@pytest.mark.parametrize("bad", ["off", "nan"])
def test_auto_schedule_never_picks_a_schedule_that_disagrees(monkeypatch, bad):
    """A schedule whose results differ from the other's (a miscompile) is not picked however fast it is."""
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: 1.0 if L.split else 100.0)
    good = torch.randn(3, 4)
    wrong = good + 0.1 * good.abs().max() if bad == "off" else good.clone().fill_(float("nan"))
    L = triton_outer._resolve(_launch(), "fwd", lambda c: (good, wrong if c.split else good), torch.device("cpu"))
    assert L.split == 0
    # within the half-precision tolerance (bf16 operands rounded the same way, summed in another order) it agrees
    close = good + 1e-3 * good.abs().max()
    assert triton_outer._resolve(_launch(half=1), "fwd", lambda c: (close if c.split else good,),
                                 torch.device("cpu")).split == 1


def test_auto_schedule_runs_the_kernels_it_chose(monkeypatch):
    """End to end under the interpreter, with timing faked to favour split: forward and backward each resolve
    (cached per phase) and still match the float64 loop."""
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: 1.0 if L.split else 2.0)
    B, T, H, K, V = 1, 21, 1, 5, 6
    gen = torch.Generator().manual_seed(8)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    xs = [x.to(DEVICE).requires_grad_() for x in (q, k, v, g)]
    y = chunked_outer_triton(*xs, schedule="auto")
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((y * w.to(y)).sum(), xs)
    assert sorted(key[1] for key in autochoice._CHOICES) == ["bwd", "fwd"]
    assert all(choice == 1 for choice in autochoice._CHOICES.values())
    xs64 = [x.detach().cpu().clone().requires_grad_() for x in xs]
    y64, _ = _loop(*xs64, torch.zeros(B, H, K, V, dtype=torch.float64))
    want = torch.autograd.grad((y64 * w).sum(), xs64)
    assert rel(y, y64) <= 1e-12
    for a, b in zip(got, want):
        assert rel(a, b) <= 1e-12


@pytest.mark.parametrize("key", ["gla", "ssd"])
def test_split_schedule_in_generated_module(monkeypatch, key):
    """The module knob SCHEDULE (default "auto": fused under the interpreter) reaches the generated modules' Triton
    path: with "split", forward, final state and
    every gradient still match the torch path (an independent algorithm)."""
    monkeypatch.setattr(triton_outer, "SCHEDULE", "split")
    b = built(key)
    u, state = b.inputs(2, 35, True)  # two full chunks and a partial one, from a carried state
    y_s, h_s, g_s = forward_and_grads(b.model, "triton", u, state)
    y_t, h_t, g_t = forward_and_grads(b.model, "torch", u, state)
    assert rel(y_s, y_t) <= TOL32 and rel(h_s, h_t) <= TOL32
    for name, want in g_t.items():
        if want is not None:
            assert rel(g_s[name], want) <= TOL32, name


@pytest.mark.parametrize("key", ["gla", "rwkv6"])
def test_per_key_sub_chunks_in_generated_module(monkeypatch, key):
    """The per-key specs' modules with the GPU's 64-step chunks (4 sub-chunks of 16: the tensor-core score blocks
    between sub-chunks, which the interpreter's default 16-step chunks never reach), both schedules: forward, final
    state and every gradient against the torch path; RWKV-6 with its pre-update readout."""
    monkeypatch.setattr(triton_outer, "CHUNK", 64)
    b = built(key)
    u, state = b.inputs(1, 70, True)  # a full chunk and a partial one, from a carried state (batch 1: the
    # interpreter's cost is per program; batches > 1 are covered by test_forward_and_gradients_match_reference)
    y_t, h_t, g_t = forward_and_grads(b.model, "torch", u, state)
    for schedule in ("fused", "split"):
        monkeypatch.setattr(triton_outer, "SCHEDULE", schedule)
        y_s, h_s, g_s = forward_and_grads(b.model, "triton", u, state)
        assert rel(y_s, y_t) <= TOL32 and rel(h_s, h_t) <= TOL32, schedule
        for name, want in g_t.items():
            if want is not None:
                assert rel(g_s[name], want) <= TOL32, (schedule, name)


def test_runtime_float64_and_no_initial_state():
    B, T, H, K, V = 1, 20, 1, 16, 16
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(3))
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64) * 3
    y = chunked_outer_triton(*(x.to(DEVICE) for x in (q, k, v, g)))
    y64, _ = _loop(q, k, v, g, torch.zeros(B, H, K, V, dtype=torch.float64))  # on CPU
    assert y.dtype == torch.float64 and rel(y, y64) <= 1e-12


# -- torch.compile: the custom ops --------------------------------------------------------------------------------


@pytest.fixture
def compile_env():
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-outer")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# no decay (a dummy g), one per head, one per (head, key), the pre-update readout
@pytest.mark.parametrize("key", ["linear_attention", "retnet", "gla", "rwkv6"])
def test_outer_under_torch_compile(compile_env, key):
    """torch.compile(fullgraph=True, backend="aot_eager") of the triton path: the kernels are custom ops (no graph
    break); forward, final state and the gradients of the input, the initial state and every parameter match the
    uncompiled torch path (an independent algorithm)."""
    b = built(key)
    u, state = b.inputs(2, 19, True)  # a full chunk and a partial one, from a carried state
    graphs = []

    def aot_eager(gm, example_inputs):  # records the Dynamo graph: the kernels must be in it, as one op each
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(b.model, backend=aot_eager, fullgraph=True)
    y_c, h_c, g_c = forward_and_grads(compiled, "triton", u, state, model=b.model)
    assert len(graphs) == 1 and graphs[0].count("torch.ops.dsfc.outer_scan_fwd") == 1
    y_t, h_t, g_t = forward_and_grads(b.model, "torch", u, state)
    assert rel(y_c, y_t) <= TOL32 and rel(h_c, h_t) <= TOL32
    assert set(g_c) == set(g_t)
    for name, want in g_t.items():
        if want is None:
            assert g_c[name] is None, name
        else:
            assert rel(g_c[name], want) <= TOL32, name


@pytest.mark.parametrize("split", [0, 1])
@pytest.mark.parametrize("decay", ["none", "scalar", "key"])
def test_outer_custom_op_passes_opcheck(decay, split):
    """torch.library.opcheck: schema, fake (meta) implementation and autograd registration agree with the real op."""
    B, T, H, K, V = 1, 5, 1, 3, 4
    gen = torch.Generator().manual_seed(6)
    q, k = (torch.randn(B, T, H, K, generator=gen).to(DEVICE).requires_grad_() for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).to(DEVICE).requires_grad_()
    g = {"none": torch.empty(0, device=DEVICE),
         "scalar": -torch.rand(B, T, H, generator=gen).to(DEVICE).requires_grad_(),
         "key": -torch.rand(B, T, H, K, generator=gen).to(DEVICE).requires_grad_()}[decay]
    s0 = torch.randn(B, H, K, V, generator=gen).to(DEVICE).requires_grad_()
    # decay, chunk, block_k, block_v, half, warps, split
    cfg = [{"none": 0, "scalar": 1, "key": 2}[decay], 16, 16, 16, 0, 4, split]
    torch.library.opcheck(triton_outer._outer_fwd_op, (q, k, v, g, s0, cfg, torch.float32),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    y, sT, p = triton_outer._outer_fwd_op(q, k, v, g, s0, cfg, torch.float32)
    dy, dsT = torch.randn(y.shape, generator=gen).to(DEVICE), torch.randn(sT.shape, generator=gen).to(DEVICE)
    args = tuple(x.detach() for x in (q, k, v, g, s0, sT, p, dy, dsT)) + (cfg, torch.float32)
    torch.library.opcheck(triton_outer._outer_bwd_op, args, test_utils=("test_schema", "test_faketensor"))


def test_auto_schedule_skips_a_schedule_that_cannot_launch(monkeypatch):
    """On a GPU a tile can need more shared memory than the device has (triton raises OutOfResources at launch):
    "auto" then keeps the schedule that launches, whichever it is; if none does, the error is raised."""
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: 1.0)
    out = torch.randn(3, 4)

    def fused_too_big(c):
        if c.split == 0:
            raise RuntimeError("out of resource: shared memory, Required: 296320, Hardware limit: 232448")
        return (out,)

    assert triton_outer._resolve(_launch(), "bwd", fused_too_big, torch.device("cpu")).split == 1

    def split_too_big(c):
        if c.split == 1:
            raise RuntimeError("out of resource: shared memory")
        return (out,)

    assert triton_outer._resolve(_launch(half=1), "bwd", split_too_big, torch.device("cpu")).split == 0

    def neither(c):
        raise RuntimeError(f"out of resource ({c.split})")

    with pytest.raises(RuntimeError, match=r"out of resource \(0\)"):
        triton_outer._resolve(_launch(split=2, half=2), "bwd", neither, torch.device("cpu"))


def test_fused_miscompile_on_hopper_is_recognised(monkeypatch):
    """The configuration benchmarks/probe_outer_configs.py found miscompiled (H100, triton 3.6: chunk 64, a 32-wide
    value slice, K >= 64, 4 warps, fused) is named on any sm_90 GPU, and only there."""
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    cuda = torch.device("cuda")

    def launch(**kw):
        base = dict(B=8, T=4096, H=16, K=64, V=64, decay=0, chunk=64, block_k=64, block_v=32, cdt=torch.float32,
                    half=1, num_warps=4, split=0)
        return triton_outer._Launch(**{**base, **kw})

    assert "miscompiles" in triton_outer.fused_miscompiles(launch(), cuda)
    for ok in (dict(num_warps=8), dict(block_v=64), dict(chunk=16), dict(K=32, block_k=32)):
        assert triton_outer.fused_miscompiles(launch(**ok), cuda) is None, ok
    assert triton_outer.fused_miscompiles(launch(), torch.device("cpu")) is None
    capability[0] = (8, 0)
    assert triton_outer.fused_miscompiles(launch(), cuda) is None


def test_known_miscompile_is_refused_when_asked_for_and_avoided_by_auto(monkeypatch):
    """schedule="fused" on such a configuration is a ValueError naming it; "auto" runs the split schedule only
    (no timing: the fused one would be the reference it is checked against) and is right."""
    monkeypatch.setattr(triton_outer, "fused_miscompiles", lambda L, device: "triton miscompiles this (test)")
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: pytest.fail("nothing is timed"))
    B, T, H, K, V = 1, 19, 1, 4, 5
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    xs = [x.to(DEVICE) for x in (q, k, v, g)]
    with pytest.raises(ValueError, match=r"miscompiles this \(test\); use schedule='split' or 'auto'"):
        chunked_outer_triton(*xs, schedule="fused")
    y = chunked_outer_triton(*xs, schedule="auto")
    y64, _ = _loop(q, k, v, g, torch.zeros(B, H, K, V, dtype=torch.float64))
    assert rel(y, y64) <= 1e-12
    assert not autochoice._CHOICES  # split was forced, not chosen


def test_too_little_shared_memory_is_a_clear_error(monkeypatch):
    """A forced schedule whose tiles need more shared memory than the GPU has (K = 256 fused on an H100) says which
    configuration and what to change, not only triton's OutOfResources."""
    from triton.runtime.errors import OutOfResources

    def too_big(*args, **kwargs):
        raise OutOfResources(258048, 232448, "shared memory")

    monkeypatch.setattr(triton_outer, "_fwd", too_big)
    q = torch.randn(1, 20, 1, 4, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"the fused forward kernels at K=4, chunk=16, block_v=16 need more "
                                           r"shared memory than this GPU has .*use schedule='auto'"):
        chunked_outer_triton(q, q, q, schedule="fused")


@pytest.mark.parametrize("K,V,decay,dtype,want,want_gpu", [
    (128, 128, "key", torch.float16, 64, 128),   # 8192 / K, at most MAX_BLOCK_V; on a GPU 16384 / K, at most 128
    (256, 128, "key", torch.float16, 32, 64),
    (128, 128, "key", torch.float32, 64, 64),    # fp32 operands: the wide slice would not fit sm_90's shared memory
    (128, 128, "head", torch.float16, 64, 64),
    (512, 64, "head", torch.float16, 16, 16),
    (32, 24, "key", torch.float16, 32, 32),      # never wider than V (rounded up to a power of two)
    (128, 128, "key@64", torch.float16, 64, 64),  # the caller's chunk 64: the slice for that chunk, not chunk 16's
])
def test_default_value_slice(monkeypatch, K, V, decay, dtype, want, want_gpu):
    """The value slice chunked_outer_triton picks when none is given (the launch configuration it hands the op):
    a per-key decay with half operands on a GPU takes twice the slice (chunk 16, measured fastest on an H100)."""
    seen = {}

    def fake_op(q, k, v, g, s0, cfg, cdt):
        seen["block_v"] = cfg[3]
        return q.new_zeros(*q.shape[:3], v.shape[-1], dtype=cdt), s0, q.new_empty(0)

    monkeypatch.setattr(triton_outer, "_outer_fwd_op", fake_op)
    monkeypatch.setattr(triton_outer, "_outer_scan_fwd", fake_op)  # inference calls the implementation directly
    q = torch.zeros(1, 3, 1, K, dtype=dtype, device=DEVICE)
    v = torch.zeros(1, 3, 1, V, dtype=dtype, device=DEVICE)
    decay, _, chunk = decay.partition("@")
    g = torch.zeros(1, 3, 1, K, device=DEVICE) if decay == "key" else torch.zeros(1, 3, 1, device=DEVICE)
    chunked_outer_triton(q, q, v, g, chunk=int(chunk) if chunk else None)
    assert seen["block_v"] == (want_gpu if q.is_cuda else want)


def test_auto_schedule_asks_the_torch_scan_when_the_schedules_disagree(monkeypatch):
    """The reference schedule (fused) can be the miscompiled one: when the two disagree, the torch chunked scan's
    results decide, so auto picks split here although fused is the reference and faster; the truth is not computed
    when they agree; when neither agrees with it the error says so."""
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: 2.0 if L.split else 1.0)
    good = torch.randn(3, 4)
    wrong = good + 0.5 * good.abs().max()
    asked = []

    def truth():
        asked.append(1)
        return (good,)

    cpu = torch.device("cpu")
    L = triton_outer._resolve(_launch(), "fwd", lambda c: (good if c.split else wrong,), cpu, truth)
    assert L.split == 1 and asked
    asked.clear()
    assert triton_outer._resolve(_launch(half=1), "fwd", lambda c: (good,), cpu, truth).split == 0 and not asked
    with pytest.raises(RuntimeError, match="disagrees with the torch implementation.*backend='torch'"):
        triton_outer._resolve(_launch(half=2), "fwd", lambda c: (wrong + c.split,), cpu, truth)


def test_auto_schedule_truth_end_to_end(monkeypatch):
    """Under the interpreter, with the fused forward and backward corrupted and timing faked to favour fused: auto
    still runs split for both phases (the torch scan settles it), and the results match the float64 loop."""
    monkeypatch.setattr(autochoice, "_CHOICES", {})
    monkeypatch.setattr(autochoice, "can_time", lambda device: True)
    monkeypatch.setattr(autochoice, "time_ms", lambda run, L: 2.0 if L.split else 1.0)
    fwd, bwd = triton_outer._fwd, triton_outer._bwd

    def bad_fwd(L, *args):
        y, sT, states = fwd(L, *args)
        return (y if y is None or L.split else y + 1.0), sT, states

    def bad_bwd(L, *args):
        dq, dk, dv, ds0 = bwd(L, *args)
        return dq, dk, (dv if L.split else dv * 2), ds0

    monkeypatch.setattr(triton_outer, "_fwd", bad_fwd)
    monkeypatch.setattr(triton_outer, "_bwd", bad_bwd)
    B, T, H, K, V = 1, 20, 1, 4, 3
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)
    xs = [x.to(DEVICE).requires_grad_() for x in (q, k, v, g)]
    y = chunked_outer_triton(*xs, schedule="auto")
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((y * w.to(y)).sum(), xs)
    assert sorted(autochoice._CHOICES.values()) == [1, 1]
    xs64 = [x.detach().cpu().clone().requires_grad_() for x in xs]
    y64, _ = _loop(*xs64, torch.zeros(B, H, K, V, dtype=torch.float64))
    want = torch.autograd.grad((y64 * w).sum(), xs64)
    assert rel(y, y64) <= 1e-12
    for a, b in zip(got, want):
        assert rel(a, b) <= 1e-12


def test_bad_dtypes_and_tuning_knobs_are_clear_errors():
    """Complex inputs were a KeyError inside the launch, all-integer q, k, v an integer result (the torch scan refuses
    both), a float / string chunk or block_v a TypeError from a comparison, and num_warps was never checked (0, 3 or
    -1 reached triton on a GPU)."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 5, 2, 4, generator=g).to(DEVICE) for _ in range(2))
    v = torch.randn(1, 5, 2, 3, generator=g).to(DEVICE)
    with pytest.raises(TypeError, match="floating-point dtype, got torch.complex64.*chunked_outer_scan"):
        chunked_outer_triton(q.to(torch.complex64), k, v)
    with pytest.raises(TypeError, match="floating-point dtype, got torch.int64"):
        chunked_outer_triton(q.long(), k.long(), v.long())
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got list"):
        chunked_outer_triton(q.tolist(), k, v)
    for name, bad, err, msg in [("chunk", 16.0, TypeError, "chunk must be an integer, got 16.0"),
                                ("chunk", "16", TypeError, "chunk must be an integer, got '16'"),
                                ("block_v", 16.0, TypeError, "block_v must be an integer, got 16.0"),
                                ("chunk", 8, ValueError, "chunk must be a power of two >= 16, got 8"),
                                ("chunk", 48, ValueError, "chunk must be a power of two >= 16, got 48"),
                                ("block_v", 24, ValueError, "block_v must be a power of two >= 16, got 24"),
                                ("num_warps", 3, ValueError, "num_warps must be a power of two >= 1 and <= 32, got 3"),
                                ("num_warps", 0, ValueError, "num_warps must be a power of two"),
                                ("num_warps", 64, ValueError, "num_warps must be a power of two"),
                                ("num_warps", 2.5, TypeError, "num_warps must be an integer, got 2.5")]:
        with pytest.raises(err, match=msg):
            chunked_outer_triton(q, k, v, **{name: bad})
    # mixed integer / float inputs promote, as in the torch scan, and stay right
    qi = torch.randint(-3, 3, (1, 5, 2, 4), generator=g).to(DEVICE)
    ref = chunked_outer_scan(qi.cpu().double(), k.cpu().double(), v.cpu().double())
    assert rel(chunked_outer_triton(qi, k, v).cpu().double(), ref) <= TOL32


# -- per-key decay: the intra-chunk scores by sub-chunks ----------------------------------------------------------


class _GarbageScores:
    """``_key_scores_fwd`` with its output buffer filled with NaN first: the kernel leaves the entries above the
    diagonal unwritten (its readers mask them), so a reader that did not would turn NaN here (torch.empty on CPU is
    often zeros, which would hide it)."""

    def __init__(self, real):
        self.real = real

    def __getitem__(self, grid):
        def launch(q, k, g, p, *args, **kwargs):
            p.fill_(float("nan"))
            return self.real[grid](q, k, g, p, *args, **kwargs)

        return launch


@pytest.mark.parametrize("chunk,T,schedule,dtype,V", [
    (32, 37, "fused", torch.float64, 11),   # 2 sub-chunks per chunk, a partial last chunk
    (64, 37, "split", torch.float64, 11),   # 4 sub-chunks, T ends inside the third
    (64, 130, "fused", torch.float64, 40),  # three chunks (the last 2 steps), three value slices of 16
    (32, 45, "split", torch.float32, 20),
    (64, 50, "fused", torch.float16, 20),   # half operands: the scores stored in fp16
])
def test_per_key_sub_chunks(monkeypatch, chunk, T, schedule, dtype, V):
    """Chunks of several sub-chunks of 16 (``_key_scores_fwd``: tensor-core blocks between sub-chunks, elementwise
    diagonal blocks; ``_key_scores_bwd_kernel``), forward and every gradient against the float64 loop."""
    monkeypatch.setattr(triton_outer, "_key_scores_fwd", _GarbageScores(triton_outer._key_scores_fwd))
    B, H, K = 1, 2, 5  # one sequence: the sub-chunk schedule is per (batch, head) program, two heads suffice
    gen = torch.Generator().manual_seed(11)
    q, k = (torch.randn(B, T, H, K, generator=gen).to(DEVICE, dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).to(DEVICE, dtype)
    g = (-2 * torch.rand(B, T, H, K, generator=gen)).to(DEVICE, dtype)
    s0 = torch.randn(B, H, K, V, generator=gen).to(DEVICE, dtype)
    xs = [x.requires_grad_() for x in (q, k, v, g, s0)]
    y, sT = chunked_outer_triton(*xs, output_final_state=True, schedule=schedule, chunk=chunk, block_v=16)
    xs64 = [x.detach().double().cpu().requires_grad_() for x in xs]
    y64, s64 = _loop(*xs64)
    wy, ws = torch.randn(y.shape, generator=gen), torch.randn(sT.shape, generator=gen)
    got = torch.autograd.grad((y * wy.to(y)).sum() + (sT * ws.to(sT)).sum(), xs)
    want = torch.autograd.grad((y64 * wy.double()).sum() + (s64 * ws.double()).sum(), xs64)
    # float64: the same sums in another order (a few ulps); fp32 / fp16: TOL32 / TOL_BF16, justified above
    tol = {torch.float64: 1e-12, torch.float32: TOL32, torch.float16: TOL_BF16}[dtype]
    assert rel(y, y64) <= tol and rel(sT, s64) <= tol
    for name, a, w in zip("q k v g s0".split(), got, want):
        assert rel(a, w) <= tol, name


@pytest.mark.parametrize("K,key_slice", [(40, 16), (33, 32)])
def test_per_key_score_backward_in_key_slices(monkeypatch, K, key_slice):
    """The score backward runs one program per slice of keys (``SCORES_BWD_BLOCK_K``): several slices, the last one
    partial, give every gradient of the float64 loop (a slice that read or wrote another's keys would not)."""
    monkeypatch.setattr(triton_outer, "SCORES_BWD_BLOCK_K", key_slice)
    B, T, H, V = 1, 37, 2, 6
    gen = torch.Generator().manual_seed(K)
    q, k = (torch.randn(B, T, H, K, generator=gen).double() for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).double()
    g = -torch.rand(B, T, H, K, generator=gen).double()
    xs = [x.to(DEVICE).requires_grad_() for x in (q, k, v, g)]
    y = chunked_outer_triton(*xs, schedule="split", chunk=32, block_v=16)
    xs64 = [x.detach().cpu().requires_grad_() for x in xs]
    y64, _ = _loop(*xs64, torch.zeros(B, H, K, V, dtype=torch.float64))
    w = torch.randn(y.shape, generator=gen).double()
    got = torch.autograd.grad((y * w.to(y)).sum(), xs)
    want = torch.autograd.grad((y64 * w).sum(), xs64)
    for name, a, b in zip("q k v g".split(), got, want):
        assert rel(a, b) <= 1e-12, name


@pytest.mark.parametrize("schedule", ["fused", "split"])
def test_per_key_strong_decay_stays_finite(schedule):
    """A log-decay of up to -60 per step (the decay over one 64-step chunk is exp(-1900): far below fp32's range,
    where exp(G_i) / exp(G_j) of prefix sums would overflow), with one key that never decays: every factor the
    sub-chunk kernels form is exp(<= 0), so y, the state and every gradient stay finite and match the float64
    loop to fp32 accuracy."""
    B, T, H, K, V = 1, 130, 1, 4, 8
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    g = -60 * torch.rand(B, T, H, K, generator=gen)
    g[..., 0] = 0.0
    xs = [x.to(DEVICE).requires_grad_() for x in (q, k, v, g)]
    y, sT = chunked_outer_triton(*xs, output_final_state=True, schedule=schedule, chunk=64)
    xs64 = [x.detach().double().cpu().requires_grad_() for x in xs]
    y64, s64 = _loop(*xs64, torch.zeros(B, H, K, V, dtype=torch.float64))
    got = torch.autograd.grad(y.sum() + sT.sum(), xs)
    want = torch.autograd.grad(y64.sum() + s64.sum(), xs64)
    assert rel(y, y64) <= TOL32 and rel(sT, s64) <= TOL32
    for a, w in zip(got, want):
        assert torch.isfinite(a).all() and rel(a, w) <= TOL32


@pytest.mark.parametrize("decay", ["scalar", "key"])
@pytest.mark.parametrize("chunk,schedule", [(64, "fused"), (32, "split"), (16, "fused")])
def test_zero_decay_resets_the_state(chunk, schedule, decay):
    """A decay of exactly 0 (log-decay -inf: a relu gate, or A = 0) cuts off everything before it, as the torch scan
    documents. The per-key sub-chunk kernels formed the diagonal blocks' decays as gc[i] - gc[j] of running sums and
    the keys' decays to the sub-chunk end as total - gc[j]: -inf - (-inf) = NaN, so y and every gradient were NaN
    (found with a relu-gated GLA spec; ``dsfc check`` reported it). Every decay is now a sum of its own terms, -inf
    after a zero decay, never a difference. Zeros at several steps, inside and at the edges of sub-chunks, forward
    and the gradients of q, k, v, s0 against the float64 loop (g's own gradient is 0 * inf there in the loop, not a
    number to compare)."""
    B, T, H, K, V = 2, 45, 2, 5, 6
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    shape = (B, T, H) if decay == "scalar" else (B, T, H, K)
    g = -torch.rand(*shape, generator=gen, dtype=torch.float64)
    for t in (0, 3, 15, 16, 17, 31, 40):
        g[:, t, 0] = float("-inf")  # head 0 (every key of it, per key) never remembers past these steps
    if decay == "key":
        g[1, 20:25, 1, 2] = float("-inf")  # a run of zeros on one key only
    xs = [x.to(DEVICE).requires_grad_() for x in (q, k, v, s0)]
    y, sT = chunked_outer_triton(xs[0], xs[1], xs[2], g.to(DEVICE), xs[3], output_final_state=True,
                                 schedule=schedule, chunk=chunk)
    xs64 = [x.detach().double().cpu().requires_grad_() for x in xs]
    y64, s64 = _loop(xs64[0], xs64[1], xs64[2], g, xs64[3])
    assert torch.isfinite(y).all() and torch.isfinite(sT).all()
    assert rel(y, y64) <= 1e-12 and rel(sT, s64) <= 1e-12
    wy, ws = torch.randn(y.shape, generator=gen), torch.randn(sT.shape, generator=gen)
    got = torch.autograd.grad((y * wy.to(y)).sum() + (sT * ws.to(sT)).sum(), xs)
    want = torch.autograd.grad((y64 * wy.double()).sum() + (s64 * ws.double()).sum(), xs64)
    for name, a, w in zip("q k v s0".split(), got, want):
        assert torch.isfinite(a).all() and rel(a, w) <= 1e-12, name


# -- the backward's epilogue: part sums, casts and the log-decay gradient in one kernel ---------------------------


def _epilogue_reference(dq, dk, q, k, g, sT, dsT, decay: int, cdt: torch.dtype):
    """``_bwd_epilogue``'s results in torch, before the casts to q's, k's and g's dtypes: the backward op's torch tail
    that the kernel replaced (dq, dk parts [P, B, T, H, K] in the compute dtype ``cdt``)."""
    dq, dk = dq.sum(0), dk.sum(0)
    if decay == 0:
        return dq, dk, torch.zeros_like(g)
    dG = q.to(cdt) * dq - k.to(cdt) * dk  # dL/dG_t, G the prefix sum of the log-decay over time
    if decay == 2:
        dG[:, -1] += (dsT * sT).sum(-1)
    else:
        dG = dG.sum(-1)
        dG[:, -1] += (dsT * sT).sum((-2, -1))
    return dq, dk, torch.flip(torch.cumsum(torch.flip(dG, [1]), 1), [1])  # dL/dg_t = sum_(s >= t) dL/dG_s


def _within(got, want, tol: float, rounding: float) -> bool:
    """Elementwise |got - want| <= rounding |want| + tol max|want|: ``rounding`` the final cast's relative error
    (0 when the output keeps the compute dtype), ``tol`` the compute dtype's summation-order differences."""
    got, want = got.double().cpu(), want.double().cpu()
    if want.numel() == 0:  # the dummy g's gradient without a decay
        return got.numel() == 0
    return bool(((got - want).abs() <= rounding * want.abs() + tol * want.abs().max()).all())


# (q, k dtype, g dtype); the compute dtype is fp64 with fp64 inputs, else fp32
EPILOGUE_DTYPES = [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                   (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)]


@pytest.mark.parametrize("tiles", ["interpreter", "cuda"])
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("dtypes", EPILOGUE_DTYPES, ids=lambda d: "-".join(str(x)[6:] for x in d))
@pytest.mark.parametrize("decay", ["none", "scalar", "key"])
def test_bwd_epilogue_matches_torch(monkeypatch, decay, dtypes, parts, tiles):
    """``_bwd_epilogue`` (one kernel: the sum of the P parts of dq, dk, their casts, dL/dG and its reverse cumsum over
    time) against the torch formula: T = 1, 5, 37 (one partial chunk; 37 = 2 chunks of 16 and 5, 32 + 5 with the
    GPU's tiles), K = 5, 24 (masked key columns; per key, 24 is a full block of 32 masked), B * H = 6 programs (or
    rows of programs). "cuda": the tiles ``_epilogue_tiles`` picks on a GPU, run by the interpreter.

    Tolerances: fp64, 1e-12 of the largest entry (the same sums in another order: a few ulps); fp32 compute, 1e-6
    (~8 ulps: the reverse cumsum over <= 37 steps of sums over <= 24 keys, in chunks plus a carry). Half outputs also
    allow one ulp of their dtype per entry (2^-7 bf16, 2^-10 fp16): torch rounds to nearest, as the compiled kernel
    does, but the interpreter truncates fp32 -> bf16 (checked: every bf16 store of it equals the truncation)."""
    if tiles == "cuda":
        tiles_of = triton_outer._epilogue_tiles
        monkeypatch.setattr(triton_outer, "_epilogue_tiles", lambda d, K, cuda: tiles_of(d, K, True))
    decay = {"none": 0, "scalar": 1, "key": 2}[decay]
    dt, g_dt = dtypes
    cdt = torch.float64 if dt == torch.float64 else torch.float32
    B, H, V = 2, 3, 4
    for T in (1, 5, 37):
        for K in (5, 24):
            gen = torch.Generator().manual_seed(T * 100 + K)
            dq, dk = (torch.randn(parts, B, T, H, K, generator=gen, dtype=cdt) for _ in range(2))
            q, k = (torch.randn(B, T, H, K, generator=gen).to(dt) for _ in range(2))
            g = {0: torch.empty(0), 1: -torch.rand(B, T, H, generator=gen),
                 2: -torch.rand(B, T, H, K, generator=gen)}[decay].to(g_dt)
            sT, dsT = (torch.randn(B, H, K, V, generator=gen, dtype=cdt) for _ in range(2))
            args = [x.to(DEVICE) for x in (dq, dk, q, k, g, sT, dsT)]
            got = triton_outer._bwd_epilogue(*args, decay, cdt)
            want = _epilogue_reference(dq, dk, q, k, g, sT, dsT, decay, cdt)
            for name, a, w, out_dt in zip(("dq", "dk", "dg"), got, want, (dt, dt, g_dt)):
                assert a.shape == w.shape and a.dtype == out_dt and a.device.type == DEVICE, (name, T, K)
                rounding = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}.get(out_dt, 0.0)
                tol = 1e-12 if cdt == torch.float64 else 1e-6
                assert _within(a, w, tol, rounding), (name, T, K, rel(a, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("decay", ["none", "scalar", "key", "zero"])
@pytest.mark.parametrize("readout", ["post", "pre"])
def test_single_step_kernel(monkeypatch, decay, dtype, readout):
    """T = 1 without autograd (a decode step) is one launch of ``_outer_step`` and nothing else, and matches the
    float64 loop: y and the new state, with and without an initial state, V wider than one value slice. With
    autograd the chunked kernels run instead (the step kernel has no backward). Tolerances: TOL32 (one product
    sum of <= K terms); half inputs are rounded before the float64 loop sees them, so only the rounding of the
    outputs counts (2^-11 fp16, 2^-8 bf16 relative): 4 such units."""
    launched = []
    for name in ("_outer_step", "_outer_fwd", "_outer_out", "_key_scores_fwd"):
        real = getattr(triton_outer, name)

        class Spy:
            def __init__(self, real, name):
                self.real, self.name = real, name

            def __getitem__(self, grid):
                launched.append(self.name)
                return self.real[grid]

        monkeypatch.setattr(triton_outer, name, Spy(real, name))
    B, H, K, V = 2, 3, 5, 70  # V = 70: three value slices of STEP_BLOCK_V = 32, the last masked
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(B, 1, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, 1, H, V, generator=gen, dtype=torch.float64)
    g = {"none": None, "scalar": -torch.rand(B, 1, H, generator=gen, dtype=torch.float64),
         "key": -torch.rand(B, 1, H, K, generator=gen, dtype=torch.float64),
         "zero": torch.tensor([0.0, float("-inf"), -0.5], dtype=torch.float64).expand(B, 1, H)}[decay]
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    q, k, v, s0 = (x.to(dtype).to(torch.float64) for x in (q, k, v, s0))  # the values the kernel sees
    g = None if g is None else g.to(dtype).to(torch.float64)
    for h0 in (None, s0):
        start = torch.zeros(B, H, K, V, dtype=torch.float64) if h0 is None else h0
        y_loop, s_loop = _loop(q if readout == "post" else torch.zeros_like(q), k, v, g, start)
        if readout == "pre":
            y_loop = torch.einsum("bthk,bhkv->bthv", q, start)
        args = [x.to(dtype).to(DEVICE) for x in (q, k, v)]
        launched.clear()
        y, sT = chunked_outer_triton(*args, None if g is None else g.to(dtype).to(DEVICE),
                                     None if h0 is None else h0.to(dtype).to(DEVICE), output_final_state=True,
                                     readout=readout)
        assert launched.count("_outer_step") >= 1 and set(launched) == {"_outer_step"}, launched
        assert y.dtype == dtype and sT.dtype == dtype
        tol = {torch.float16: 4 * 2**-11, torch.bfloat16: 4 * 2**-8}.get(dtype, TOL32)
        assert rel(y.cpu(), y_loop) <= tol and rel(sT.cpu(), s_loop) <= tol
    launched.clear()
    qg = args[0].clone().requires_grad_()
    chunked_outer_triton(qg, *args[1:], None if g is None else g.to(dtype).to(DEVICE)).sum().backward()
    assert "_outer_step" not in launched and qg.grad is not None


@pytest.mark.parametrize("schedule", ["fused", "split"])
def test_per_key_backward_reuses_the_forward_scores(monkeypatch, schedule):
    """The per-key intra-chunk scores are computed once per forward+backward (the forward hands them to the backward,
    which recomputed them before: 0.8 of 9.3 ms on an H200), and the gradients still match the float64 loop."""
    calls = []
    scores = triton_outer._scores

    def counted(L, *args):
        calls.append(L.chunk)
        return scores(L, *args)

    monkeypatch.setattr(triton_outer, "_scores", counted)
    B, T, H, K, V = 2, 21, 1, 5, 3
    gen = torch.Generator().manual_seed(8)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    xs = [x.to(DEVICE).requires_grad_() for x in (q, k, v, g, s0)]
    y, sT = chunked_outer_triton(*xs, output_final_state=True, schedule=schedule)
    w, ws = torch.randn(y.shape, generator=gen, dtype=torch.float64), torch.randn(sT.shape, generator=gen,
                                                                                 dtype=torch.float64)
    got = torch.autograd.grad((y * w.to(y)).sum() + (sT * ws.to(sT)).sum(), xs)
    assert len(calls) == 1
    xs64 = [x.detach().cpu().clone().requires_grad_() for x in xs]
    y64, sT64 = _loop(*xs64)
    want = torch.autograd.grad((y64 * w).sum() + (sT64 * ws).sum(), xs64)
    assert rel(y, y64) <= 1e-12 and rel(sT, sT64) <= 1e-12
    for a, e in zip(got, want):
        assert rel(a, e) <= 1e-10
