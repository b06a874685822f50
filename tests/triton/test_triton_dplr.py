"""The chunked diagonal-plus-rank-1 scan's Triton path (dsfc/runtime/triton_dplr.py: the chunk-to-chunk state
recurrence as one kernel, forward and reverse-chunk backward, and the decode step) under the Triton interpreter, or
compiled with DSFC_TEST_DEVICE=cuda (tests/triton/_device.py); inputs are drawn on CPU and moved to DEVICE, the
float64 references run on CPU.

Oracles, none computed by the code under test:
* ``_loop``: the recurrence one step at a time, written here from its definition
  (``S_t = (diag(d_t) + x_t y_t^T) S_(t-1) + k_t v_t^T``, ``o_t = S_t^T q_t`` or ``S_(t-1)^T q_t``), float64, with
  ordinary autograd for the gradients of q, k, v, x, y, log_decay and h0;
* ``_affine_loop``: the bare chunk recurrence ``S_(c+1) = trans_c S_c + inject_c`` for the state-passing hook itself;
* for the generated KDA / RWKV-7 modules (the specs of tests/e2e/test_dplr_scan.py): the spec evaluator
  ``dsfc.reference.reference_forward`` (dense per-step matrices, float64), differentiated by autograd for the
  gradients of the input, the initial state and every parameter.

Tolerances: float64 runs agree to rounding, TOL64 = 1e-10 relative to the largest entry (a unit lower-triangular
solve of <= 16 rows and a few chunks of recurrence lose a few hundred ulps at most). fp32: TOL32 = 2e-5, as the
delta-rule kernels (tests/triton/test_triton_delta.py): every tl.dot runs at input_precision="ieee" (no TF32), so the
error is fp32 rounding of sums of <= 32 products over a few chunks; an indexing, mask or transpose error is O(1).
"""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it
from hypothesis import given, settings, strategies as st  # noqa: E402

import dsfc.runtime.triton_dplr as triton_dplr  # noqa: E402
from dsfc.check import load_module  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # dsf_testing, test_dplr_scan (plain modules)
from test_dplr_scan import RWKV7  # noqa: E402
from dsfc.runtime.triton_dplr import chunked_dplr_triton, dplr_state_passing  # noqa: E402

TOL64 = 1e-10
TOL32 = 2e-5
F64 = torch.float64
NAMES = ("q", "k", "v", "x", "y", "log_decay", "h0")


def rel(got, want) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _loop(q, k, v, x, y, g, h0, readout="post"):
    """The DPLR recurrence step by step (float64 on CPU): the oracle. g: None, [B, T, H] or [B, T, H, K]."""
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=F64) if h0 is None else h0
    outs = []
    for t in range(T):
        if g is None:
            d = torch.ones(B, H, K, dtype=F64)
        else:
            d = torch.exp(g[:, t]) if g.dim() == 4 else torch.exp(g[:, t])[..., None].expand(B, H, K)
        A = torch.diag_embed(d) + x[:, t, :, :, None] * y[:, t, :, None, :]
        S_new = A @ S + k[:, t, :, :, None] * v[:, t, :, None, :]
        read = S if readout == "pre" else S_new
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], read))
        S = S_new
    return torch.stack(outs, 1), S


def _inputs(B, T, H, K, V, decay, seed, initial=True, kind="kda"):
    """Leaf tensors (every one differentiated on its own). kind "kda": x = -be k, y = al k (the paper's
    (I - be k k^T) diag(al)); "rwkv": x = -kap, y = a kap (RWKV-7's diag(w) - kap (a kap)^T), k an unrelated key.
    decay: None, "head" ([B, T, H], shared over the keys) or "key" ([B, T, H, K])."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    q = randn(B, T, H, K)
    unit = torch.nn.functional.normalize(randn(B, T, H, K), dim=-1)
    v = randn(B, T, H, V)
    g_key = -torch.rand(B, T, H, K, generator=gen, dtype=F64)
    g = None if decay is None else g_key if decay == "key" else g_key[..., 0]
    al = torch.ones(B, T, H, K, dtype=F64) if g is None else torch.exp(g if g.dim() == 4 else g[..., None])
    if kind == "kda":
        be = torch.rand(B, T, H, 1, generator=gen, dtype=F64)
        k, x, y = be * unit, -be * unit, al * unit
    else:
        a = torch.rand(B, T, H, K, generator=gen, dtype=F64)
        k, x, y = randn(B, T, H, K), -unit, a * unit
    h0 = 0.5 * randn(B, H, K, V) if initial else None
    return q, k, v, x, y, g, h0


def _check(B, T, H, K, V, chunk, decay, readout, initial=True, seed=0, kind="kda"):
    """Triton forward and every gradient against the loop, float64."""
    ins = _inputs(B, T, H, K, V, decay, seed, initial, kind)
    want_ins = [None if t is None else t.clone().requires_grad_() for t in ins]
    got_ins = [None if t is None else t.to(DEVICE).requires_grad_() for t in ins]
    o_want, s_want = _loop(*want_ins, readout=readout)
    o_got, s_got = chunked_dplr_triton(*got_ins, chunk=chunk, output_final_state=True, readout=readout)
    assert o_got.shape == o_want.shape and s_got.shape == s_want.shape
    assert rel(o_got, o_want) <= TOL64 and rel(s_got, s_want) <= TOL64
    gen = torch.Generator().manual_seed(seed + 1)
    wo, ws = torch.randn(o_want.shape, generator=gen, dtype=F64), torch.randn(s_want.shape, generator=gen, dtype=F64)
    used = [i for i, t in enumerate(ins) if t is not None]
    grads_want = torch.autograd.grad((o_want * wo).sum() + (s_want * ws).sum(), [want_ins[i] for i in used])
    grads_got = torch.autograd.grad((o_got * wo.to(DEVICE)).sum() + (s_got * ws.to(DEVICE)).sum(),
                                    [got_ins[i] for i in used])
    for i, gw, gg in zip(used, grads_want, grads_got):
        assert rel(gg, gw) <= TOL64, NAMES[i]


CASES = [  # B, T, H, K, V, chunk, decay, readout, kind
    (2, 37, 2, 5, 7, 16, "key", "post", "kda"),  # two chunks and a remainder; K, V below tl.dot's 16 (masked lanes)
    (1, 1, 1, 4, 3, 32, "key", "post", "rwkv"),  # one step (with autograd: the chunked path, one chunk)
    (2, 13, 1, 3, 40, 8, None, "post", "kda"),  # no decay; two value slices of 32
    (1, 23, 2, 20, 6, 8, "key", "pre", "rwkv"),  # readout before the update; K = 20: two 16-key blocks of the product
    (2, 19, 1, 6, 5, 4, "head", "post", "kda"),  # a decay shared over the keys, [B, T, H]
]


@pytest.mark.parametrize("B,T,H,K,V,chunk,decay,readout,kind", CASES)
def test_kernel_matches_loop(B, T, H, K, V, chunk, decay, readout, kind):
    _check(B, T, H, K, V, chunk, decay, readout, kind=kind)


def test_kernel_without_initial_state():
    _check(2, 21, 2, 6, 5, 8, "key", "post", initial=False)


def test_kernel_runs_and_returns_only_outputs(monkeypatch):
    """The kernel runs (not the torch loop), once per call, on the chunks; without output_final_state only o."""
    launches = []
    pass_fwd = triton_dplr._pass_fwd
    monkeypatch.setattr(triton_dplr, "_pass_fwd", lambda *a: launches.append(a[0].shape) or pass_fwd(*a))
    q, k, v, x, y, g, h0 = (t.to(DEVICE) for t in _inputs(1, 10, 2, 3, 4, "key", 4))
    o = chunked_dplr_triton(q, k, v, x, y, g, h0, chunk=4)
    assert isinstance(o, torch.Tensor) and o.shape == (1, 10, 2, 4)
    assert launches == [(1, 2, 3, 3, 3)]  # trans [B, H, 3 chunks, K, K]
    assert rel(o, _loop(q.cpu(), k.cpu(), v.cpu(), x.cpu(), y.cpu(), g.cpu(), h0.cpu())[0]) <= TOL64


def _affine_loop(trans, inject, h0):
    starts, S = [], h0
    for c in range(trans.shape[2]):
        starts.append(S)
        S = trans[:, :, c] @ S + inject[:, :, c]
    return torch.stack(starts, 2), S


def test_state_passing_hook_matches_affine_loop():
    """The hook alone on an arbitrary (not DPLR-built) trans: chunk-start states, final state and the gradients of
    trans, inject and h0 (both outputs weighted), float64; K = 20 (two key blocks of the product, masked to 32),
    V = 40 (two value slices)."""
    gen = torch.Generator().manual_seed(9)
    B, H, NC, K, V = 2, 1, 3, 20, 40
    ins = [torch.randn(B, H, NC, K, K, generator=gen, dtype=F64) / K ** 0.5,
           torch.randn(B, H, NC, K, V, generator=gen, dtype=F64), torch.randn(B, H, K, V, generator=gen, dtype=F64)]
    want_ins = [t.clone().requires_grad_() for t in ins]
    got_ins = [t.to(DEVICE).requires_grad_() for t in ins]
    want, got = _affine_loop(*want_ins), dplr_state_passing(*got_ins)
    w = [torch.randn(t.shape, generator=gen, dtype=F64) for t in want]
    for a, b in zip(got, want):
        assert rel(a, b) <= TOL64
    g_want = torch.autograd.grad(sum((t * wt).sum() for t, wt in zip(want, w)), want_ins)
    g_got = torch.autograd.grad(sum((t * wt.to(DEVICE)).sum() for t, wt in zip(got, w)), got_ins)
    for name, a, b in zip(("trans", "inject", "h0"), g_got, g_want):
        assert rel(a, b) <= TOL64, name


@settings(max_examples=5, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 24), H=st.integers(1, 2), K=st.integers(1, 9), V=st.integers(1, 9),
       chunk=st.sampled_from([4, 8, 32]), decay=st.sampled_from([None, "head", "key"]),
       readout=st.sampled_from(["post", "pre"]), kind=st.sampled_from(["kda", "rwkv"]), seed=st.integers(0, 1000))
def test_kernel_matches_loop_property(B, T, H, K, V, chunk, decay, readout, kind, seed):
    _check(B, T, H, K, V, chunk, decay, readout, seed=seed, kind=kind)


@pytest.mark.parametrize("decay,readout,K,V,initial", [("key", "post", 5, 7, True), (None, "post", 3, 40, True),
                                                        ("head", "pre", 16, 33, True), ("key", "pre", 1, 1, False)])
def test_decode_step_matches_loop(monkeypatch, decay, readout, K, V, initial):
    """T = 1 without autograd (decoding): one launch of the step kernel, no chunked machinery; against the loop in
    fp64 and fp32."""
    launches = []
    single_step = triton_dplr._single_step
    monkeypatch.setattr(triton_dplr, "_single_step", lambda *a: launches.append(1) or single_step(*a))
    monkeypatch.setattr(triton_dplr, "_pass_fwd", None)  # the chunked path would fail
    ins = _inputs(2, 1, 2, K, V, decay, 5, initial, "rwkv")
    o_want, s_want = _loop(*ins, readout=readout)
    for dtype, tol in ((F64, TOL64), (torch.float32, TOL32)):
        with torch.no_grad():
            o, s = chunked_dplr_triton(*[None if t is None else t.to(DEVICE, dtype) for t in ins],
                                       output_final_state=True, readout=readout)
        assert o.dtype == s.dtype == dtype
        assert rel(o, o_want) <= tol and rel(s, s_want) <= tol
    assert launches == [1, 1]


def test_kernel_fp32_and_bf16_inputs():
    """fp32 inputs: fp32 compute against the float64 loop. bf16 inputs: computed in fp32 (as the torch path does),
    the outputs bf16 again."""
    ins = _inputs(2, 37, 2, 5, 7, "key", 3)
    o_want, s_want = _loop(*ins)
    dev32 = [t.to(DEVICE, torch.float32) for t in ins]
    o, s = chunked_dplr_triton(*dev32, chunk=16, output_final_state=True)
    assert o.dtype == s.dtype == torch.float32
    assert rel(o, o_want) <= TOL32 and rel(s, s_want) <= TOL32
    o16 = chunked_dplr_triton(*[t.to(torch.bfloat16) for t in dev32], chunk=16)
    assert o16.dtype == torch.bfloat16 and rel(o16, o_want) <= 2e-2  # bf16 inputs: 2^-8 relative per entry


def test_kernel_empty_sequence():
    q, k, v, x, y, g, h0 = (t.to(DEVICE) for t in _inputs(2, 0, 2, 3, 4, "key", 0))
    o, s = chunked_dplr_triton(q, k, v, x, y, g, h0, output_final_state=True)
    assert o.shape == (2, 0, 2, 4) and torch.equal(s, h0)


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU-without-interpreter message")
def test_kernel_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        chunked_dplr_triton(*_inputs(1, 3, 1, 2, 2, "key", 0))


def test_no_second_derivative_says_why():
    q, k, v, x, y, g, h0 = (t.to(DEVICE).requires_grad_() for t in _inputs(1, 9, 1, 3, 4, "key", 0))
    o = chunked_dplr_triton(q, k, v, x, y, g, h0, chunk=4)
    (dv,) = torch.autograd.grad(o.square().sum(), [v], create_graph=True)  # through the backward kernel
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(dv.sum(), [q])


# -- the generated modules -----------------------------------------------------------------------------------------

_HEAD = """dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_a[H, K, d] ~ normal(0, 0.5)
param w_b[H, d] ~ normal(0, 0.5)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let be[h: H] = sigmoid(sum(m, w_b[h, m] * u[m]))
B[(h, a, b), m] = be[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

# the specs of tests/e2e/test_dplr_scan.py: Kimi Delta Attention ((I - be k k^T) diag(al)) and RWKV-7 (value-first
# state, diag(w) - kap (ia kap)^T, a key in B u that is not the transition's kap)
SPECS = {
    "kda": """model KDA "KDA: (I - be k k^T) diag(al)"
""" + _HEAD + """let al[h: H, a: K] = exp(-softplus(sum(m, W_a[h, a, m] * u[m])))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - be[h] * k[h, a] * k[h, a2]) * al[h, a2]
""",
    "rwkv7": RWKV7,  # the spec tests/e2e/test_dplr_scan.py checks on the torch path
}


@functools.lru_cache(maxsize=None)
def _compiled(name):
    return compile_text(SPECS[name], f"{name}.dsf")


def _module(name, monkeypatch, chunk=4):
    """The generated module, its Triton path at chunks of ``chunk`` steps (several chunks at a tiny T)."""
    result = _compiled(name)
    assert result.plan.triton_dplr and "diagonal-plus-rank-1" in result.plan.triton_note
    assert not result.plan.triton_dense
    module = load_module(result, name=f"dsfc_triton_dplr_test_{name}")
    assert module._core_triton_available is module._core_triton_outer
    monkeypatch.setattr(module, "chunked_dplr_triton", functools.partial(chunked_dplr_triton, chunk=chunk))
    return result, module


@pytest.mark.parametrize("name", sorted(SPECS))
def test_generated_matches_reference(monkeypatch, name):
    """float64, with an initial state: forward and the gradients of the input, the initial state and every parameter
    against the spec's reference recurrence (dense per-step matrices, autograd). The kernel runs (not the torch
    loop), on 3 chunks."""
    result, module = _module(name, monkeypatch)
    launches = []
    pass_fwd = triton_dplr._pass_fwd
    monkeypatch.setattr(triton_dplr, "_pass_fwd", lambda *a: launches.append(a[0].shape) or pass_fwd(*a))
    dims = {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**dims, backend="triton").double().to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(2, 11, model._in_features(), generator=gen, dtype=F64)
    h0 = 0.5 * torch.randn(2, model._state_size(), generator=gen, dtype=F64)
    named = dict(model.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach().cpu().clone().requires_grad_()
              for p in result.sym.params}
    u_ref, h_ref0 = u.clone().requires_grad_(), h0.clone().requires_grad_()
    y_ref, h_ref = reference_forward(result.sym, result.sym.dim_values(dims), params, u_ref, initial_state=h_ref0)
    wy = torch.randn(y_ref.shape, generator=gen, dtype=F64)
    wh = torch.randn(h_ref.shape, generator=gen, dtype=F64)
    want = torch.autograd.grad((y_ref * wy).sum() + (h_ref * wh).sum(), [u_ref, h_ref0, *params.values()])

    uu, hh = u.to(DEVICE).requires_grad_(), h0.to(DEVICE).requires_grad_()
    y, hT = model(uu, initial_state=hh, output_final_state=True)
    assert launches and launches[0][2] == 3  # 11 steps in chunks of 4
    assert rel(y, y_ref) <= TOL64 and rel(hT.reshape(2, -1), h_ref) <= TOL64
    loss = (y * wy.to(DEVICE)).sum() + (hT.reshape(2, -1) * wh.to(DEVICE)).sum()
    got = torch.autograd.grad(loss, [uu, hh] + [named[py_name(n)] for n in params])
    for n, a, b in zip(["u", "h0", *params], got, want):
        assert rel(a, b) <= TOL64, n


@pytest.mark.parametrize("name", ["rwkv7"])
def test_generated_step_matches_reference(monkeypatch, name):
    """Token-by-token decoding (step) on the Triton path, one decode-kernel launch per token: the same outputs as the
    reference over the sequence (RWKV-7: its value-first state is the layout a transposed state would get wrong;
    KDA's step is the same kernel, time)."""
    result, module = _module(name, monkeypatch)
    dims = {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**dims, backend="triton").double().to(DEVICE)
    u = torch.randn(1, 4, model._in_features(), generator=torch.Generator().manual_seed(3), dtype=F64)
    launches = []
    single_step = triton_dplr._single_step
    monkeypatch.setattr(triton_dplr, "_single_step", lambda *a: launches.append(1) or single_step(*a))
    state, ys = None, []
    with torch.no_grad():
        for t in range(u.shape[1]):
            y_t, state = model.step(u[:, t].to(DEVICE), state)
            ys.append(y_t)
    assert len(launches) == u.shape[1]  # the decode kernel, one launch per token
    named = dict(model.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach().cpu() for p in result.sym.params}
    y_ref, h_ref = reference_forward(result.sym, result.sym.dim_values(dims), params, u)
    assert rel(torch.stack(ys, 1), y_ref) <= TOL64
    assert rel(state.reshape(1, -1) if torch.is_tensor(state) else state["h"], h_ref) <= TOL64


def test_generated_under_torch_compile(monkeypatch):
    """The DPLR-pass custom ops under torch.compile(fullgraph=True, backend="aot_eager"): forward and gradients
    match the uncompiled torch path (RWKV-7: KDA's softplus gate meets torch's aot_eager stride bug of
    softplus_backward on the torch path too, see the README's torch.compile notes)."""
    result, module = _module("rwkv7", monkeypatch)
    torch.manual_seed(0)
    dims = {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}
    model = getattr(module, result.plan.model)(**dims).to(DEVICE)
    u = torch.randn(2, 9, model._in_features(), generator=torch.Generator().manual_seed(1)).to(DEVICE)
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


def test_custom_ops_opcheck():
    """torch.library.opcheck: the fake (meta) implementations' shapes and dtypes, the autograd registration."""
    gen = torch.Generator().manual_seed(2)
    trans = (torch.randn(1, 2, 3, 5, 5, generator=gen, dtype=F64) / 3).to(DEVICE).requires_grad_()
    inject = torch.randn(1, 2, 3, 5, 7, generator=gen, dtype=F64).to(DEVICE).requires_grad_()
    h0 = torch.randn(1, 2, 5, 7, generator=gen, dtype=F64).to(DEVICE).requires_grad_()
    torch.library.opcheck(triton_dplr._dplr_pass_fwd_op, (trans, inject, h0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(triton_dplr._dplr_pass_bwd_op, (trans.detach(), inject.detach(), h0.detach()),
                          test_utils=("test_schema", "test_faketensor"))


def test_auto_picks_the_dplr_kernel_on_cuda(monkeypatch):
    """backend="auto" takes the DPLR Triton path for CUDA tensors; CPU tensors stay on the torch path."""
    result, module = _module("kda", monkeypatch)
    dims = {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}
    model = getattr(module, result.plan.model)(**dims)

    class FakeCuda:  # only .is_cuda is read
        is_cuda = True

    class FakeCpu:
        is_cuda = False

    assert model._resolve_backend(FakeCuda()) == "triton"
    assert model._resolve_backend(FakeCpu()) == "torch"
