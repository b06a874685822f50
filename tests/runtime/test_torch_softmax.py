"""The fused softmax attention of the torch path (dsfc/runtime/torch_softmax.py) and the generated modules that call
it on backend="torch" (softmax attention, FoX, ALiBi, GQA).

Oracles, independent of the code under test: ``_naive`` below, the whole [T, S] score matrix in float64 (masked,
decay added, ``torch.logsumexp`` and ``softmax``: no blocks) and its autograd gradients; ``gradcheck`` (finite
differences) at float64; the generated module's float64 reference recurrence (dsfc/reference.py) and its previous
two-pass path (``kernel_log_sum`` then ``kernel_attention``, differentiable einsums), still what a module runs with
``softmax_attention_torch`` taken away.

Tolerances: float64 against float64 1e-12 relative (the same sums in another order); fp32 (torch's fused CPU flash
kernel, its backward where it applies) TOL32 = 2e-5 relative, as tests/triton.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from dsfc.check import load_module
from dsfc.codegen.plan import py_name
from dsfc.pipeline import compile_spec, compile_text
from dsfc.reference import reference_forward
from dsfc.runtime import kernelised, torch_softmax
from dsfc.runtime.torch_softmax import softmax_attention_torch
from tests.e2e.test_decayed_softmax import ALIBI
from tests.e2e.test_softmax_attention import GQA

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
TOL32 = 2e-5


def rel(got, want) -> float:
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _naive(q, k, v, scale, gcum):
    """(y, L): w_ij = scale q_i . k_j + G_(S-T+i) - G_j over the keys j <= S - T + i, L_i = logsumexp_j w_ij,
    y_i = sum_j softmax_j(w_ij) v_j."""
    T, S = q.shape[1], k.shape[1]
    w = torch.einsum("btgk,bsgk->bgts", q, k) * scale
    if gcum is not None:
        g = gcum.permute(0, 2, 1)  # [B, G, S]
        w = w + g[:, :, S - T:, None] - g[:, :, None, :]
    w = w.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), float("-inf"))
    y = torch.einsum("bgts,bsgv->btgv", torch.softmax(w, -1), v)
    return y, torch.logsumexp(w, -1).permute(0, 2, 1)


def _inputs(T, S, decay, seed, dtype, K=6, V=5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, T, 3, K, generator=gen, dtype=F64).to(dtype)
    k = torch.randn(2, S, 3, K, generator=gen, dtype=F64).to(dtype)
    v = torch.randn(2, S, 3, V, generator=gen, dtype=F64).to(dtype)
    g = -torch.rand(2, S, 3, generator=gen, dtype=F64).cumsum(1) * 0.5 if decay else None
    wy = torch.randn(2, T, 3, V, generator=gen, dtype=F64)
    wl = torch.randn(2, T, 3, generator=gen, dtype=F64)
    return [q, k, v, g], wy, wl


def _check(T, S, decay, dtype, tol, read_L=True, K=6, V=5):
    """y, L and the gradients w.r.t. q, k, v (and G) of a loss reading y (and L) against the float64 formula."""
    xs, wy, wl = _inputs(T, S, decay, T * 100 + S, dtype, K, V)
    xs = [x for x in xs if x is not None]
    got_in = [x.clone().requires_grad_() for x in xs]
    ref_in = [x.double().requires_grad_() for x in xs]
    y, L = softmax_attention_torch(*got_in[:3], 0.4, got_in[3] if decay else None)
    y0, L0 = _naive(*ref_in[:3], 0.4, ref_in[3] if decay else None)
    assert y.dtype == dtype and L.dtype == dtype and y.shape == y0.shape and L.shape == L0.shape
    assert rel(y.detach(), y0) <= tol and rel(L.detach(), L0) <= tol
    loss = (y * wy.to(dtype)).sum() + ((L * wl.to(dtype)).sum() if read_L else 0)
    loss0 = (y0 * wy).sum() + ((L0 * wl).sum() if read_L else 0)
    got, want = torch.autograd.grad(loss, got_in), torch.autograd.grad(loss0, ref_in)
    for x, a, b in zip(got_in, got, want):
        assert a.dtype == x.dtype and torch.isfinite(a).all()
        # (a one-key sequence's dG is 0, its own decay cancelling: an absolute check there)
        assert rel(a, b) <= tol if b.abs().max() > 0 else a.abs().max() <= tol


CASES = [(1, 1), (5, 5), (33, 33), (1, 9), (5, 40), (33, 50)]  # T, S: S > T a KV cache


@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("T,S", CASES)
def test_matches_float64_formula(T, S, decay):
    _check(T, S, decay, F64, 1e-12)


@pytest.mark.parametrize("decay", [False, True])
def test_blocks_cross(decay, monkeypatch):
    """More queries than one block (BLOCK = 16 here): the blocks' key ranges and the dk / dv / dG accumulation."""
    monkeypatch.setattr(torch_softmax, "BLOCK", 16)
    _check(45, 45, decay, F64, 1e-12)
    _check(40, 57, decay, F64, 1e-12)


@pytest.mark.parametrize("T,S,decay,read_L", [(33, 33, False, False), (33, 33, False, True), (33, 50, True, True),
                                              (5, 40, False, False)])
def test_fp32_flash_kernels(T, S, decay, read_L, monkeypatch):
    """fp32 on CPU: torch's fused flash kernel forward (the output and L in one pass); its backward where nothing
    reaches L, no decay, no cache and K = V, the blocked one otherwise. Both checked against the formula."""
    if torch_softmax._FLASH_CPU is None:
        pytest.skip("no _scaled_dot_product_flash_attention_for_cpu in this torch")
    calls = {"fwd": 0, "bwd": 0, "blocked": 0}
    fwd, bwd, blocked = torch_softmax._flash, torch_softmax._FLASH_CPU_BWD, torch_softmax._backward

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch_softmax, "_flash", count("fwd", fwd))
    monkeypatch.setattr(torch_softmax, "_backward", count("blocked", blocked))
    if bwd is not None:
        monkeypatch.setattr(torch_softmax, "_FLASH_CPU_BWD", count("bwd", bwd))
    _check(T, S, decay, torch.float32, TOL32, read_L=read_L, K=5)
    fast_bwd = bwd is not None and not read_L and not decay and S == T
    assert calls == {"fwd": 1, "bwd": int(fast_bwd), "blocked": int(not fast_bwd)}


def test_fp32_without_torchs_flash_ops(monkeypatch):
    """A torch without the private flash ops (getattr -> None): fp32 takes the blocked passes, same numbers."""
    monkeypatch.setattr(torch_softmax, "_FLASH_CPU", None)
    monkeypatch.setattr(torch_softmax, "_FLASH_CPU_BWD", None)
    monkeypatch.setattr(torch_softmax, "_flash", None)  # a call fails
    _check(33, 33, False, torch.float32, TOL32, read_L=False)
    _check(33, 50, True, torch.float32, TOL32)


@pytest.mark.parametrize("decay", [False, True])
def test_huge_scores_stay_finite(decay):
    """fp32 scores of several hundred (and a cumulative log-decay of ~-1e4): y, L and the gradients finite and within
    the rounding of the scores (8 * 2^-24 * max |w|) of the float64 formula."""
    gen = torch.Generator().manual_seed(4)
    q, k = 10 * torch.randn(1, 33, 2, 4, generator=gen), 10 * torch.randn(1, 40, 2, 4, generator=gen)
    v = torch.randn(1, 40, 2, 5, generator=gen)
    g = -300 * torch.rand(1, 40, 2, generator=gen, dtype=F64).cumsum(1) if decay else None
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    x64 = [x.double().requires_grad_() for x in (q, k, v)]
    y, L = softmax_attention_torch(*xs, 0.5, g)
    y0, L0 = _naive(*x64, 0.5, g)
    tol = 8 * 2**-24 * 0.5 * (q.abs().max() * k.abs().max() * 4).item()
    assert torch.isfinite(y).all() and torch.isfinite(L).all()
    assert rel(y.detach(), y0) <= 10 * tol and rel(L.detach(), L0) <= tol
    wy = torch.randn(y0.shape, generator=gen, dtype=F64)
    for a, b in zip(torch.autograd.grad((y * wy.float()).sum(), xs), torch.autograd.grad((y0 * wy).sum(), x64)):
        assert torch.isfinite(a).all() and rel(a, b) <= 10 * tol


def test_gradcheck_and_double_backward():
    """Finite differences at float64 through y and L, w.r.t. q, k, v and G (with a KV cache); the blocked backward
    is differentiable itself (create_graph=True, as the two-pass einsum path was)."""
    xs, _, _ = _inputs(3, 5, True, 7, F64, K=2, V=2)
    xs = [x[:1, :, :1].clone().requires_grad_() for x in xs]  # B = G = 1: gradgradcheck's cost grows as size^2

    def f(q, k, v, g):
        y, L = softmax_attention_torch(q, k, v, 0.7, g)
        return y, L

    assert torch.autograd.gradcheck(f, xs)
    assert torch.autograd.gradgradcheck(f, xs)


def test_bad_inputs_are_clear_errors():
    q = torch.randn(1, 4, 2, 3)
    with pytest.raises(ValueError, match=r"softmax_attention_torch: .*S >= T"):
        softmax_attention_torch(q, q[:, :2], q[:, :2], 1.0)
    with pytest.raises(ValueError, match=r"softmax_attention_torch: gcum must be \[B, S, G\]"):
        softmax_attention_torch(q, q, q, 1.0, torch.zeros(1, 4))
    y, L = softmax_attention_torch(q[:, :0], q[:, :0], q[:, :0], 1.0)
    assert y.shape == (1, 0, 2, 3) and L.shape == (1, 0, 2)


# -- the generated modules -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _result(kind):
    if kind in ("softmax_attention", "fox"):
        return compile_spec(str(ROOT / "specs" / f"{kind}.dsf"))
    return compile_text({"alibi": ALIBI, "gqa": GQA}[kind])


@pytest.fixture(scope="module")
def modules():
    return {kind: (r := _result(kind), load_module(r, name=f"dsfc_torchsoft_{kind}"))
            for kind in ("softmax_attention", "fox", "alibi", "gqa")}


def _spy(monkeypatch) -> list:
    """The T of every fused pass; the two-pass functions fail if called."""
    calls = []
    real = torch_softmax._SoftmaxAttention.forward

    def spy(ctx, q, *args):
        calls.append(q.shape[1])
        return real(ctx, q, *args)

    monkeypatch.setattr(torch_softmax._SoftmaxAttention, "forward", staticmethod(spy))
    return calls


@pytest.mark.parametrize("kind", ["softmax_attention", "fox", "alibi", "gqa"])
def test_module_matches_reference_and_two_pass_path(kind, modules, monkeypatch):
    """backend="torch" in float64: one pass and a continued KV cache against the float64 reference recurrence;
    the fused pass ran once per forward (the two-pass functions not at all); the gradients of the input and the
    parameters equal those of the previous two-pass path (the module with softmax_attention_torch taken away)."""
    result, module = modules[kind]
    torch.manual_seed(0)
    dims = {"d": 5, "H": 2, "K": 3, "V": 4} if kind in ("softmax_attention", "fox") else {}
    m = getattr(module, result.plan.model)(**dims, dtype=F64, backend="torch")
    u = torch.randn(2, 13, m._in_features(), dtype=F64, requires_grad=True)
    named = dict(m.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach() for p in result.sym.params}
    want, _ = reference_forward(result.sym, result.sym.dim_values(dims), params, u.detach())
    w = torch.linspace(-1, 1, want.shape[-1], dtype=F64)
    with monkeypatch.context() as patch:
        calls = _spy(patch)
        for name in ("kernel_attention", "kernel_log_sum"):
            patch.setattr(module, name, None)  # a call fails
        y = m(u)
        assert rel(y.detach(), want) <= 1e-12
        fused = torch.autograd.grad((y * w).sum(), [u, *m.parameters()])
        y1, cache = m(u[:, :7].detach(), output_final_state=True)
        y2 = m(u[:, 7:].detach(), initial_state=cache)
        assert rel(torch.cat([y1, y2], 1), want) <= 1e-12
        assert calls == [13, 7, 6]
    monkeypatch.setattr(module, "softmax_attention_torch", None)  # the template's two-pass path
    y = m(u)
    assert rel(y.detach(), want) <= 1e-12
    two_pass = torch.autograd.grad((y * w).sum(), [u, *m.parameters()])
    for a, b in zip(fused, two_pass):
        assert rel(a, b) <= 1e-12


def test_auto_on_cpu_takes_the_fused_pass(modules, monkeypatch):
    result, module = modules["softmax_attention"]
    m = module.SoftmaxAttention(d=5, H=2, K=3, V=4)
    calls = _spy(monkeypatch)
    m(torch.randn(1, 6, 5))
    assert m.backend == "auto" and calls == [6]


@pytest.mark.parametrize("kind", ["fox", "softmax_attention"])
def test_module_under_torch_compile(kind, modules):
    """backend="torch" with the fused pass under torch.compile(fullgraph=True, backend="aot_eager"): forward and
    parameter gradients match the eager module in fp32 (FoX: the blocked backward; softmax attention with K = V:
    torch's flash CPU backward, traced with fake tensors)."""
    result, module = modules[kind]
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(d=5, H=2, K=4, V=4, backend="torch")
    u = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(1))
    out = {}
    for name, fn in (("compiled", torch.compile(model, backend="aot_eager", fullgraph=True)), ("eager", model)):
        y = fn(u)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        out[name] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad()
    assert rel(out["compiled"][0], out["eager"][0]) <= TOL32
    for n, want in out["eager"][1].items():
        assert rel(out["compiled"][1][n], want) <= TOL32, n
