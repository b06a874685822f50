"""The chunked delta rule's Triton path (dsfc/runtime/triton_delta.py: the chunk-to-chunk state recurrence as one
kernel, forward and backward) under the Triton interpreter, or compiled with DSFC_TEST_DEVICE=cuda
(tests/triton/_device.py); inputs are drawn on CPU and moved to DEVICE, the float64 references run on CPU.

Oracles, none computed by the code under test:
* ``_loop``: the delta rule one step at a time, written here from its definition
  (``S_t = s_t (I - k_t f_t^T) S_(t-1) + k_t v_t^T``, ``y_t = S_t^T q_t`` or ``S_(t-1)^T q_t``), float64, with
  ordinary autograd for the gradients;
* for the generated modules (deltanet, gated_deltanet): the spec evaluator ``dsfc.reference.reference_forward`` for
  the forward, the torch path (itself checked against the reference in tests/e2e) for the gradients.

Tolerances: float64 runs agree to rounding, TOL64 = 1e-10 relative to the largest entry (the unit lower-triangular
solve of <= 16 rows and <= 5 chunks of recurrence lose a few hundred ulps at most). fp32: TOL32 = 2e-5, as the outer
family's kernels (tests/triton/test_triton_outer.py): both dots per chunk run at input_precision="ieee" (no TF32), so
the error is fp32 rounding of sums of <= 64 products over a few chunks; an indexing, mask or sign error is O(1).
"""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it
from hypothesis import given, settings, strategies as st  # noqa: E402

import dsfc.runtime.triton_delta as triton_delta  # noqa: E402
from dsfc.check import load_module, small_dims  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_spec  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402
from dsfc.runtime.triton_delta import chunked_delta_triton  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL64 = 1e-10
TOL32 = 2e-5
F64 = torch.float64


def rel(got, want) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _loop(q, k, v, f, g, h0, readout="post", scaled_read=False):
    """The delta rule step by step (float64 on CPU): the oracle. scaled_read: A = s I - k f^T."""
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=F64) if h0 is None else h0
    eye = torch.eye(K, dtype=F64)
    ys = []
    for t in range(T):
        s = 1.0 if g is None else torch.exp(g[:, t])[..., None, None]
        rank_one = k[:, t, :, :, None] * f[:, t, :, None, :]
        A = s * eye - rank_one if scaled_read else s * (eye - rank_one)
        S_new = A @ S + k[:, t, :, :, None] * v[:, t, :, None, :]
        read = S if readout == "pre" else S_new
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], read))
        S = S_new
    return torch.stack(ys, 1), S


def _inputs(B, T, H, K, V, decay, seed, initial=True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=F64)
    key = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen, dtype=F64), dim=-1)
    beta = torch.rand(B, T, H, 1, generator=gen, dtype=F64)
    k, f = beta * key, key  # DeltaNet's split: |lambda(I - beta k k^T)| <= 1
    v = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    g = -torch.rand(B, T, H, generator=gen, dtype=F64) if decay else None
    h0 = 0.5 * torch.randn(B, H, K, V, generator=gen, dtype=F64) if initial else None
    return q, k, v, f, g, h0


def _check(B, T, H, K, V, chunk, decay, readout, initial=True, seed=0):
    """Triton forward and every gradient against the loop, float64."""
    ins = _inputs(B, T, H, K, V, decay, seed, initial)
    want_ins = [None if x is None else x.clone().requires_grad_() for x in ins]
    got_ins = [None if x is None else x.to(DEVICE).requires_grad_() for x in ins]
    y_want, s_want = _loop(*want_ins, readout=readout)
    y_got, s_got = chunked_delta_triton(*got_ins, chunk=chunk, output_final_state=True, readout=readout)
    assert rel(y_got, y_want) <= TOL64 and rel(s_got, s_want) <= TOL64
    gen = torch.Generator().manual_seed(seed + 1)
    wy, ws = torch.randn(y_want.shape, generator=gen, dtype=F64), torch.randn(s_want.shape, generator=gen, dtype=F64)
    used = [i for i, x in enumerate(ins) if x is not None]
    grads_want = torch.autograd.grad((y_want * wy).sum() + (s_want * ws).sum(), [want_ins[i] for i in used])
    grads_got = torch.autograd.grad((y_got * wy.to(DEVICE)).sum() + (s_got * ws.to(DEVICE)).sum(),
                                    [got_ins[i] for i in used])
    for i, gw, gg in zip(used, grads_want, grads_got):
        assert rel(gg, gw) <= TOL64, "qkvfgh"[i]


CASES = [  # B, T, H, K, V, chunk, decay, readout
    (2, 37, 2, 5, 7, 16, True, "post"),  # two chunks and a remainder; K, V below tl.dot's 16 (masked lanes)
    (1, 1, 1, 4, 3, 64, True, "post"),  # one step
    (2, 13, 1, 3, 70, 16, False, "post"),  # no decay (DeltaNet); two value slices of 64
    (1, 40, 2, 20, 6, 8, True, "pre"),  # readout before the update (queries moved a step); chunk below 16
    (3, 33, 1, 40, 17, 32, True, "post"),  # K = 40 (a 64-wide key tile)
]


@pytest.mark.parametrize("B,T,H,K,V,chunk,decay,readout", CASES)
def test_kernel_matches_loop(B, T, H, K, V, chunk, decay, readout):
    _check(B, T, H, K, V, chunk, decay, readout)


def test_kernel_without_initial_state():
    _check(2, 21, 2, 6, 5, 8, True, "post", initial=False)


@settings(max_examples=8, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 30), H=st.integers(1, 2), K=st.integers(1, 9), V=st.integers(1, 9),
       chunk=st.sampled_from([4, 8, 16, 64]), decay=st.booleans(), readout=st.sampled_from(["post", "pre"]),
       seed=st.integers(0, 1000))
def test_kernel_matches_loop_property(B, T, H, K, V, chunk, decay, readout, seed):
    _check(B, T, H, K, V, chunk, decay, readout, seed=seed)


@pytest.mark.parametrize("decay,readout,K,V,initial", [(True, "post", 5, 7, True), (False, "post", 3, 70, True),
                                                        (True, "pre", 16, 33, True), (False, "pre", 1, 1, False)])
def test_decode_step_matches_loop(monkeypatch, decay, readout, K, V, initial):
    """T = 1 without autograd (decoding): one launch of the step kernel, against the loop in fp64 and fp32."""
    launches = []
    single_step = triton_delta._single_step
    monkeypatch.setattr(triton_delta, "_single_step", lambda *a: launches.append(1) or single_step(*a))
    ins = _inputs(2, 1, 2, K, V, decay, 5, initial)
    y_want, s_want = _loop(*ins, readout=readout)
    for dtype, tol in ((F64, TOL64), (torch.float32, TOL32)):
        with torch.no_grad():
            y, s = chunked_delta_triton(*[None if x is None else x.to(DEVICE, dtype) for x in ins],
                                        output_final_state=True, readout=readout)
        assert y.dtype == s.dtype == dtype
        assert rel(y, y_want) <= tol and rel(s, s_want) <= tol
    assert launches == [1, 1]


def test_kernel_fp32_and_bf16_inputs():
    """fp32 inputs: fp32 compute against the float64 loop. bf16 inputs: computed in fp32 (as the torch path does),
    the outputs bf16 again."""
    ins = _inputs(2, 37, 2, 5, 7, True, 3)
    y_want, s_want = _loop(*ins)
    dev32 = [x.to(DEVICE, torch.float32) for x in ins]
    y, s = chunked_delta_triton(*dev32, chunk=16, output_final_state=True)
    assert y.dtype == s.dtype == torch.float32
    assert rel(y, y_want) <= TOL32 and rel(s, s_want) <= TOL32
    y16 = chunked_delta_triton(*[x.to(torch.bfloat16) for x in dev32], chunk=16)
    assert y16.dtype == torch.bfloat16 and rel(y16, y_want) <= 2e-2  # bf16 inputs: 2^-8 relative per entry


def test_kernel_empty_sequence():
    q, k, v, f, g, h0 = (x.to(DEVICE) for x in _inputs(2, 0, 2, 3, 4, True, 0))
    y, s = chunked_delta_triton(q, k, v, f, g, h0, output_final_state=True)
    assert y.shape == (2, 0, 2, 4) and torch.equal(s, h0)


def test_kernel_shape_errors_name_the_argument():
    q, k, v, f, g, h0 = (x.to(DEVICE) for x in _inputs(1, 5, 1, 3, 4, True, 0))
    with pytest.raises(ValueError, match="log_decay must be"):
        chunked_delta_triton(q, k, v, f, g[..., None].expand(1, 5, 1, 3), h0)
    with pytest.raises(ValueError, match="h0 must be"):
        chunked_delta_triton(q, k, v, f, g, h0[..., :2])


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU-without-interpreter message")
def test_kernel_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        chunked_delta_triton(*_inputs(1, 3, 1, 2, 2, True, 0))


def test_no_second_derivative_says_why():
    q, k, v, f, g, h0 = (x.to(DEVICE).requires_grad_() for x in _inputs(1, 9, 1, 3, 4, True, 0))
    y = chunked_delta_triton(q, k, v, f, g, h0, chunk=4)
    (dv,) = torch.autograd.grad(y.square().sum(), [v], create_graph=True)  # through the backward kernel
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(dv.sum(), [q])


# -- the generated modules -----------------------------------------------------------------------------------------

DELTA_SPECS = ["deltanet", "gated_deltanet"]


def _module(name, monkeypatch, chunk=4):
    """The generated module, its Triton path at chunks of ``chunk`` steps (several chunks at a tiny T)."""
    result = compile_spec(ROOT / "specs" / f"{name}.dsf")
    assert result.plan.triton_delta and "chunked delta rule" in result.plan.triton_note
    module = load_module(result, name=f"dsfc_triton_delta_test_{name}")
    assert module._core_triton_available is module._core_triton_outer
    monkeypatch.setattr(module, "chunked_delta_triton", functools.partial(chunked_delta_triton, chunk=chunk))
    return result, module


@pytest.mark.parametrize("name", DELTA_SPECS)
def test_generated_matches_reference_and_torch(monkeypatch, name):
    """float64 forward (with an initial state) vs the spec's reference; fp32 gradients of the input, the initial
    state and every parameter vs the torch path. The kernel runs (not the torch loop)."""
    result, module = _module(name, monkeypatch)
    launches = []
    pass_fwd = triton_delta._pass_fwd
    monkeypatch.setattr(triton_delta, "_pass_fwd", lambda *a: launches.append(a[0].shape) or pass_fwd(*a))
    dims = small_dims(result)
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**dims).double().to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(2, 11, model._in_features(), generator=gen, dtype=F64).to(DEVICE)
    h0 = 0.5 * torch.randn(2, model._state_size(), generator=gen, dtype=F64).to(DEVICE)
    model.backend = "triton"
    with torch.no_grad():
        y, hT = model(u, initial_state=h0, output_final_state=True)
    assert launches and launches[0][2] == 3  # 11 steps in chunks of 4
    named = dict(model.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach().cpu() for p in result.sym.params}
    y_ref, h_ref = reference_forward(result.sym, result.sym.dim_values(dims), params, u.cpu(), initial_state=h0.cpu())
    assert rel(y, y_ref) <= TOL64 and rel(hT.reshape(2, -1), h_ref) <= TOL64

    model.float()
    grads = {}
    for backend in ("triton", "torch"):
        model.backend = backend
        uu = u.float().clone().requires_grad_()
        hh = h0.float().clone().requires_grad_()
        y, hT = model(uu, initial_state=hh, output_final_state=True)
        gg = torch.Generator().manual_seed(2)
        loss = (y * torch.randn(y.shape, generator=gg).to(y)).sum() + (hT * torch.randn(hT.shape, generator=gg).to(hT)).sum()
        names = ["u", "h0"] + [n for n, _ in model.named_parameters()]
        grads[backend] = dict(zip(names, torch.autograd.grad(loss, [uu, hh] + list(model.parameters()),
                                                             allow_unused=True)))
    for n, want in grads["torch"].items():
        if want is not None:
            assert rel(grads["triton"][n], want) <= TOL32, n


@pytest.mark.parametrize("name", DELTA_SPECS)
def test_generated_step_matches_reference(monkeypatch, name):
    """Token-by-token decoding (step) on the Triton path, one decode-kernel launch per token: the same outputs as the
    reference over the sequence."""
    result, module = _module(name, monkeypatch)
    dims = small_dims(result)
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**dims, backend="triton").double().to(DEVICE)
    u = torch.randn(1, 4, model._in_features(), generator=torch.Generator().manual_seed(3), dtype=F64).to(DEVICE)
    launches = []
    single_step = triton_delta._single_step
    monkeypatch.setattr(triton_delta, "_single_step", lambda *a: launches.append(1) or single_step(*a))
    state, ys = None, []
    with torch.no_grad():
        for t in range(u.shape[1]):
            y_t, state = model.step(u[:, t], state)
            ys.append(y_t)
    assert len(launches) == u.shape[1]  # the decode kernel, one launch per token
    named = dict(model.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach().cpu() for p in result.sym.params}
    y_ref, _ = reference_forward(result.sym, result.sym.dim_values(dims), params, u.cpu())
    assert rel(torch.stack(ys, 1), y_ref) <= TOL64


def test_generated_under_torch_compile(monkeypatch):
    """The delta-pass custom ops under torch.compile(fullgraph=True, backend="aot_eager"): forward and gradients
    match the uncompiled torch path. (DeltaNet: Gated DeltaNet's softplus gate meets torch's aot_eager stride bug
    of softplus_backward on the torch path too, see tests/e2e/test_user_hunt_7.py; the default Inductor is right.)"""
    result, module = _module("deltanet", monkeypatch)
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**small_dims(result)).to(DEVICE)
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


@pytest.mark.parametrize("readout", ["post", "pre"])
def test_scaled_read_matches_loop(monkeypatch, readout):
    """scaled_read (A = s I - k f^T, Comba): chunked forward and gradients, and the decode step kernel (SCALED)."""
    ins = _inputs(2, 21, 2, 5, 6, True, 7)
    want_ins = [x.clone().requires_grad_() for x in ins]
    got_ins = [x.to(DEVICE).requires_grad_() for x in ins]
    y_want, s_want = _loop(*want_ins, readout=readout, scaled_read=True)
    y_got, s_got = chunked_delta_triton(*got_ins, chunk=8, output_final_state=True, readout=readout,
                                        scaled_read=True)
    assert rel(y_got, y_want) <= TOL64 and rel(s_got, s_want) <= TOL64
    grads_want = torch.autograd.grad((y_want ** 2).sum() + s_want.sum(), want_ins)
    grads_got = torch.autograd.grad((y_got ** 2).sum() + s_got.sum(), got_ins)
    for name, gw, gg in zip("qkvfgh", grads_want, grads_got):
        assert rel(gg, gw) <= TOL64, name
    launches = []
    single_step = triton_delta._single_step
    monkeypatch.setattr(triton_delta, "_single_step", lambda *a: launches.append(1) or single_step(*a))
    ins = _inputs(2, 1, 2, 5, 7, True, 8)
    y_want, s_want = _loop(*ins, readout=readout, scaled_read=True)
    with torch.no_grad():
        y, s = chunked_delta_triton(*[x.to(DEVICE) for x in ins], output_final_state=True, readout=readout,
                                    scaled_read=True)
    assert launches == [1] and rel(y, y_want) <= TOL64 and rel(s, s_want) <= TOL64
