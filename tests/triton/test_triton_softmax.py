"""The fused softmax attention kernels (dsfc/runtime/triton_softmax.py) and the generated modules that call them
(softmax attention, FoX, GQA on backend="triton"; ALiBi planned alike), under the Triton interpreter on CPU (or
compiled, DSFC_TEST_DEVICE=cuda).

Oracles, independent of the code under test: ``_naive`` below, the whole [T, S] score matrix in float64 (masked,
decay added, ``torch.logsumexp`` and ``softmax``: no blocks, no running maximum) and its autograd gradients; the
generated module's float64 reference recurrence (dsfc/reference.py) and its torch path.

Tolerances as tests/triton/test_triton_attention.py: float64 against float64 1e-12 relative (the same sums in
another order); the fp16 half path TOL16 = 8 * 2^-11 (P and dS rounded to fp16 as product operands, fp16 outputs;
measured <= 5e-4), compared with the float64 formula on the fp16 values themselves.
"""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")

from dsfc.check import load_module  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_spec, compile_text  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402
from dsfc.runtime import triton_attention, triton_softmax  # noqa: E402
from dsfc.runtime.triton_softmax import softmax_attention_triton  # noqa: E402
from tests.e2e.test_decayed_softmax import ALIBI, UNNORMALISED  # noqa: E402
from tests.e2e.test_softmax_attention import GATED, GQA  # noqa: E402
from tests.triton.test_triton_outer import ROOT, TOL32, rel  # noqa: E402

F64 = torch.float64
TOL16 = 8 * 2**-11


def _naive(q, k, v, scale, gcum):
    """(y, L): w_ij = scale q_i . k_j + G_(S-T+i) - G_j over the keys j <= S - T + i, L_i = logsumexp_j w_ij,
    y_i = sum_j exp(w_ij - L_i) v_j."""
    T, S = q.shape[1], k.shape[1]
    w = torch.einsum("btgk,bsgk->bgts", q, k) * scale
    if gcum is not None:
        g = gcum.permute(0, 2, 1)  # [B, G, S]
        w = w + g[:, :, S - T:, None] - g[:, :, None, :]
    w = w.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), float("-inf"))
    L = torch.logsumexp(w, -1)
    y = torch.einsum("bgts,bsgv->btgv", torch.softmax(w, -1), v)
    return y, L.permute(0, 2, 1)


def _inputs(T, S, decay, seed, dtype=F64):
    """q [2, T, 2, 16], k, v [2, S, 2, 16] and (decay) a cumulative log-decay [2, S, 2] (fp64), float64 values
    rounded to ``dtype`` for q, k, v."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, T, 2, 16, generator=gen, dtype=F64).to(dtype)
    k = torch.randn(2, S, 2, 16, generator=gen, dtype=F64).to(dtype)
    v = torch.randn(2, S, 2, 16, generator=gen, dtype=F64).to(dtype)
    g = -torch.rand(2, S, 2, generator=gen, dtype=F64).cumsum(1) * 0.5 if decay else None
    wy = torch.randn(2, T, 2, 16, generator=gen, dtype=F64)
    wl = torch.randn(2, T, 2, generator=gen, dtype=F64)
    return [q, k, v, g], wy, wl


def _check_against_naive(T, S, decay, dtype, tol, scale=0.25):
    """Forward (y and L) and the gradients w.r.t. q, k, v and G of a loss reading both y and L."""
    xs, wy, wl = _inputs(T, S, decay, seed=T * 100 + S, dtype=dtype)
    xs = [x for x in xs if x is not None]
    dev = [x.to(DEVICE).requires_grad_() for x in xs]
    ref = [x.double().requires_grad_() for x in xs]
    y, L = softmax_attention_triton(*dev[:3], scale, dev[3] if decay else None)
    y0, L0 = _naive(*ref[:3], scale, ref[3] if decay else None)
    assert y.dtype == dtype and L.dtype == dtype
    assert rel(y.detach(), y0) <= tol and rel(L.detach(), L0) <= tol
    got = torch.autograd.grad((y * wy.to(y)).sum() + (L * wl.to(L)).sum(), dev)
    want = torch.autograd.grad((y0 * wy).sum() + (L0 * wl).sum(), ref)
    for x, a, b in zip(dev, got, want):
        assert a.dtype == x.dtype and torch.isfinite(a).all()
        # (a one-key sequence's dG is 0 exactly, its own decay cancelling: an absolute check there)
        assert rel(a, b) <= tol if b.abs().max() > 0 else a.abs().max() <= tol


CASES = [(1, 1), (5, 5), (33, 33), (1, 9), (5, 40), (33, 50)]  # T, S: S > T a KV cache


@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("T,S", CASES)
def test_fused_matches_float64_formula(T, S, decay):
    _check_against_naive(T, S, decay, F64, 1e-12)


def test_fused_fp32_matches_float64_formula():
    _check_against_naive(33, 50, True, torch.float32, TOL32)


def _spy(monkeypatch) -> list:
    """Every launch's constexprs (the fused kernels take theirs from triton_attention._constexprs)."""
    seen = []
    real = triton_attention._constexprs

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(triton_attention, "_constexprs", spy)
    return seen


@pytest.mark.parametrize("T,S,decay", [(5, 5, False), (33, 50, True)])
def test_fp16_takes_the_half_path(T, S, decay, monkeypatch):
    seen = _spy(monkeypatch)
    _check_against_naive(T, S, decay, torch.float16, TOL16)
    assert [c["HALF"] for c in seen] == [2, 2, 2]  # the forward and both backward kernels, fp16 operands


@pytest.mark.parametrize("half", [False, True])
def test_unequal_tiles(half, monkeypatch):
    """BM != BN as on the GPU's half path (``TILES["cuda_half"]``): the split of each loop into unmasked blocks
    (below the diagonal, inside T and S) and masked ones with the block edges falling off the diagonal."""
    for path in ("interpret", "cuda", "cuda_half", "cuda_half_wide"):
        monkeypatch.setitem(triton_attention.TILES, path, {"fwd": (32, 16, 4), "bwd_kv": (16, 32, 4),
                                                           "bwd_q": (32, 16, 4)})
    seen = _spy(monkeypatch)
    for T, S in ((45, 45), (29, 70)):
        _check_against_naive(T, S, True, torch.float16 if half else F64, TOL16 if half else 1e-12)
    assert {(c["BM"], c["BN"]) for c in seen} == {(32, 16), (16, 32)}


def test_huge_scores_and_decay_stay_finite():
    """Scores of several hundred and a cumulative log-decay of ~-1e4: every exp argument is <= 0 (forward) or
    w - L <= 0 (backward), nothing overflows; fp32 against the float64 formula within the rounding of the scores
    (8 * 2^-24 * max |w|, as test_triton_attention's test of the two-pass kernels)."""
    gen = torch.Generator().manual_seed(4)
    q, k = 10 * torch.randn(1, 33, 2, 4, generator=gen), 10 * torch.randn(1, 40, 2, 4, generator=gen)
    v = torch.randn(1, 40, 2, 4, generator=gen)
    g = -300 * torch.rand(1, 40, 2, generator=gen, dtype=F64).cumsum(1)
    y, L = softmax_attention_triton(*(x.to(DEVICE) for x in (q, k, v)), 0.5, g.to(DEVICE))
    y0, L0 = _naive(q.double(), k.double(), v.double(), 0.5, g)
    tol = 8 * 2**-24 * 0.5 * (q.abs().max() * k.abs().max() * 4).item()
    assert torch.isfinite(y).all() and torch.isfinite(L).all()
    assert rel(y, y0) <= 10 * tol and rel(L, L0) <= tol


def test_bad_inputs_are_clear_errors():
    q = torch.randn(1, 4, 2, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"softmax_attention_triton: .*S >= T"):
        softmax_attention_triton(q, q[:, :2], q[:, :2], 1.0)
    with pytest.raises(ValueError, match=r"softmax_attention_triton: gcum must be \[B, S, G\]"):
        softmax_attention_triton(q, q, q, 1.0, torch.zeros(1, 4, device=DEVICE))
    y, L = softmax_attention_triton(q[:, :0], q[:, :0], q[:, :0], 1.0)
    assert y.shape == (1, 0, 2, 3) and L.shape == (1, 0, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_custom_ops_pass_opcheck(dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 2, 3, generator=gen).to(DEVICE, dtype) for _ in range(3))
    for gdec in (torch.empty(0, dtype=F64, device=DEVICE),
                 -torch.rand(1, 5, 2, generator=gen, dtype=F64).cumsum(1).to(DEVICE)):
        torch.library.opcheck(triton_softmax._softmax_fwd_op, (q, k, v, gdec, 0.5),
                              test_utils=("test_schema", "test_faketensor"))


# -- the generated modules -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _result(kind):
    if kind in ("softmax_attention", "fox"):
        return compile_spec(str(ROOT / "specs" / f"{kind}.dsf"))
    return compile_text({"alibi": ALIBI, "gqa": GQA, "gated": GATED, "unnormalised": UNNORMALISED}[kind])


def test_plan_fuses_only_softmax_rows():
    """The fused path is planned where the row weight is minus the log-sum of the same scores, and only there: a
    column weight (a per-key gate) or no normaliser at all keep the two-pass kernels."""
    for kind in ("softmax_attention", "fox", "alibi", "gqa"):
        assert _result(kind).plan.quadratic["fused"] == "eta", kind
    for kind in ("gated", "unnormalised"):
        result = _result(kind)
        assert result.plan.quadratic["fused"] == "" and "_fused" not in result.source, kind


@pytest.fixture(scope="module")
def modules():
    return {kind: (r := _result(kind), load_module(r, name=f"dsfc_softfuse_{kind}"))
            for kind in ("softmax_attention", "fox", "gqa")}


def _count_fused(monkeypatch) -> list:
    calls = []
    real = triton_softmax._forward

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_softmax, "_forward", spy)
    return calls


@pytest.mark.parametrize("kind", ["softmax_attention", "fox", "gqa"])
def test_module_matches_reference_and_torch_path(kind, modules, monkeypatch):
    """backend="triton" in float64: one pass and a continued KV cache (the prefix's state, then the rest) against
    the float64 reference recurrence of the whole sequence; the input's and parameters' gradients against the torch
    path; and the fused kernel ran (once per forward), the two-pass kernels not at all."""
    result, module = modules[kind]
    torch.manual_seed(0)
    dims = {"d": 5, "H": 2, "K": 3, "V": 4} if kind in ("softmax_attention", "fox") else {}
    m = getattr(module, result.plan.model)(**dims, dtype=F64).to(DEVICE)
    u = torch.randn(2, 13, m._in_features(), dtype=F64)
    named = dict(m.named_parameters())
    params = {p.tensor.name: named[py_name(p.tensor.name)].detach().cpu() for p in result.sym.params}
    want, _ = reference_forward(result.sym, result.sym.dim_values(dims), params, u)
    calls = _count_fused(monkeypatch)
    monkeypatch.setattr(triton_attention, "_forward", None)  # the two-pass kernels: a call fails
    ud = u.to(DEVICE).requires_grad_()
    w = torch.linspace(-1, 1, want.shape[-1], dtype=F64)
    grads = {}
    for backend in ("triton", "torch"):
        m.backend = backend
        y = m(ud)
        grads[backend] = torch.autograd.grad((y * w.to(y)).sum(), [ud, *m.parameters()])
        if backend == "triton":
            assert rel(y.detach(), want) <= 1e-12
            y1, cache = m(ud[:, :7].detach(), output_final_state=True)
            y2 = m(ud[:, 7:].detach(), initial_state=cache)
            assert rel(torch.cat([y1, y2], 1), want) <= 1e-12
            assert [s[1] for s in calls] == [13, 7, 6]  # T of each fused launch: no two-pass fallback
    for a, b in zip(grads["triton"], grads["torch"]):
        assert rel(a, b) <= 1e-12


def test_module_under_torch_compile(modules):
    """FoX with the fused ops under torch.compile(fullgraph=True, backend="aot_eager"): forward and gradients match
    the uncompiled torch path."""
    result, module = modules["fox"]
    torch.manual_seed(0)
    model = module.FoX(d=5, H=2, K=3, V=4).to(DEVICE)
    u = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(1)).to(DEVICE)
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
