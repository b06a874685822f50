"""FlashAttention-style Triton kernels of the quadratic attention family (dsfc/runtime/triton_attention.py) and the
generated modules' backend="triton", under the Triton interpreter on CPU (or compiled, DSFC_TEST_DEVICE=cuda).

Oracles, independent of the code under test: a naive float64 formula (the whole [T, S] weight matrix, masked,
exponentiated, times v: no blocks, no running maximum), ``torch.nn.functional.scaled_dot_product_attention`` for
the softmax spec, and the module's float64 reference recurrence / torch path.

Tolerances: float64 against float64, 1e-12 relative (the same sums in another order: a few ulps of the output scale
over <= 64 terms); fp32, TOL32 = 2e-5 as in test_triton_outer (exact "ieee" products, fp32 accumulation over <= 64
keys; measured <= 3e-7), an O(1) error in a mask, offset or gradient term fails by orders of magnitude.

The half path (q, k, v all fp16: tensor-core products on a GPU; under the interpreter fp16 tl.dot is numpy's fp32
matmul of the fp16 operands, the same arithmetic; bf16 falls back to the exact path there) is checked against the
float64 formula on the fp16 inputs themselves, so only the kernels' own roundings count: P = exp(w - m) in [0, 1]
and, backward, exp(m) dy and dW rounded to fp16 as product operands (2^-11 relative each), the fp16 outputs (2^-11
relative), fp32 everywhere else. Signed sums (P v, dW k) cancel, which scales these relative to the result's maximum
by up to ~sqrt(terms); TOL16 = 8 * 2^-11 (~4e-3) covers that with margin (measured <= 1.2e-3 forward and backward),
and an O(1) error in a mask, offset or gradient term still fails by orders of magnitude.
"""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")

from dsfc.check import load_module, run_check  # noqa: E402
from dsfc.pipeline import compile_spec  # noqa: E402
from dsfc.runtime import triton_attention  # noqa: E402
from dsfc.runtime.triton_attention import kernel_attention_triton, kernel_log_sum_triton  # noqa: E402
from tests.triton.test_triton_outer import ROOT, TOL32, rel  # noqa: E402

F64 = torch.float64
TOL16 = 8 * 2**-11


def _naive(q, k, v, row, col, scale):
    """y_i = sum_(j <= S - T + i) exp(scale q_i . k_j + row_i + col_j) v_j, the whole weight matrix at once."""
    T, S = q.shape[1], k.shape[1]
    w = torch.einsum("btgk,bsgk->bgts", q, k) * scale
    if row is not None:
        w = w + row.permute(0, 2, 1)[..., None]
    if col is not None:
        w = w + col.permute(0, 2, 1)[:, :, None, :]
    visible = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    w = w.masked_fill(~visible, float("-inf"))
    return torch.einsum("bgts,bsgv->btgv", torch.exp(w), v)


def _naive_log_sum(x, ys, scale):
    T, S = x.shape[1], ys.shape[1]
    w = torch.einsum("btgk,bsgk->bgts", x, ys) * scale
    w = w.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), float("-inf"))
    return torch.logsumexp(w, -1).permute(0, 2, 1)


CASES = [  # B, T, S, G, K, V, with row, with col
    (2, 1, 1, 1, 3, 4, True, False),    # one step
    (2, 5, 5, 2, 3, 4, False, False),   # one partial block, no row weight
    (1, 37, 37, 2, 5, 7, True, True),   # three query / key blocks, the last partial
    (2, 20, 45, 3, 4, 4, True, True),   # a 25-step KV cache: every query sees it
    (1, 1, 30, 1, 6, 3, True, False),   # decoding: one query after 29 cached keys
]


@pytest.mark.parametrize("B,T,S,G,K,V,with_row,with_col", CASES)
def test_attention_matches_naive_formula(B, T, S, G, K, V, with_row, with_col):
    gen = torch.Generator().manual_seed(T * S + G)
    q, k = torch.randn(B, T, G, K, generator=gen, dtype=F64), torch.randn(B, S, G, K, generator=gen, dtype=F64)
    v = torch.randn(B, S, G, V, generator=gen, dtype=F64)
    row = torch.randn(B, T, G, generator=gen, dtype=F64) if with_row else None
    col = torch.randn(B, S, G, generator=gen, dtype=F64) if with_col else None
    xs = [x for x in (q, k, v, row, col) if x is not None]
    dev = [x.to(DEVICE).requires_grad_() for x in xs]
    it = iter(dev)
    args = [next(it) if x is not None else None for x in (q, k, v, row, col)]
    y = kernel_attention_triton(*args, 0.6)
    ref = [x.clone().requires_grad_() for x in xs]
    it = iter(ref)
    y0 = _naive(*[next(it) if x is not None else None for x in (q, k, v, row, col)], 0.6)
    assert y.shape == y0.shape and rel(y.cpu(), y0) <= 1e-12
    w = torch.randn(y0.shape, generator=gen, dtype=F64)
    got = torch.autograd.grad((y * w.to(y.device)).sum(), dev)
    want = torch.autograd.grad((y0 * w).sum(), ref)
    for a, b in zip(got, want):
        assert rel(a.cpu(), b) <= 1e-12


def test_keys_masked_by_minus_inf_columns_give_zero_on_both_paths():
    """col = -inf removes a key (weight exp(-inf) = 0); a query that sees only removed keys gets y = 0. The torch
    version shifted such a row by its maximum, -inf, and returned NaN; both must match the naive formula."""
    from dsfc.runtime.kernelised import kernel_attention

    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 6, 1, 3, generator=gen, dtype=F64), torch.randn(1, 6, 1, 3, generator=gen, dtype=F64)
    v = torch.randn(1, 6, 1, 2, generator=gen, dtype=F64)
    col = torch.zeros(1, 6, 1, dtype=F64)
    col[:, :3] = float("-inf")  # queries 0..2 see only removed keys
    want = _naive(q, k, v, None, col, 1.0)
    assert torch.equal(want[:, :3], torch.zeros_like(want[:, :3]))
    for got in (kernel_attention(q, k, v, torch.zeros(1, 6, 1, dtype=F64), col, 1.0),
                kernel_attention_triton(*(x.to(DEVICE) for x in (q, k, v)), None, col.to(DEVICE), 1.0).cpu()):
        assert torch.isfinite(got).all() and rel(got, want) <= 1e-12


@pytest.mark.parametrize("T,S", [(1, 1), (37, 37), (9, 40)])
def test_log_sum_matches_logsumexp(T, S):
    gen = torch.Generator().manual_seed(S)
    x = torch.randn(2, T, 2, 5, generator=gen, dtype=F64) * 4
    ys = torch.randn(2, S, 2, 5, generator=gen, dtype=F64) * 4
    dx, dys = x.to(DEVICE).requires_grad_(), ys.to(DEVICE).requires_grad_()
    L = kernel_log_sum_triton(dx, dys, 0.5, True)
    rx, rys = x.clone().requires_grad_(), ys.clone().requires_grad_()
    L0 = _naive_log_sum(rx, rys, 0.5)
    assert rel(L.cpu(), L0) <= 1e-12
    w = torch.randn(L0.shape, generator=gen, dtype=F64)
    for a, b in zip(torch.autograd.grad((L * w.to(L.device)).sum(), (dx, dys)),
                    torch.autograd.grad((L0 * w).sum(), (rx, rys))):
        assert rel(a.cpu(), b) <= 1e-12
    if S == T:  # without history: one product per step, left to torch
        assert rel(kernel_log_sum_triton(dx, dys, 0.5, False).detach().cpu(), (x * ys * 0.5).sum(-1)) <= 1e-12


def test_softmax_weights_far_beyond_exp_range_stay_finite():
    """Scores of several hundred (exp overflows fp32 beyond 88): softmax through row = -log-sum, in fp32, matches
    scaled_dot_product_attention (float64), gradients included, and nothing is inf or NaN (every exp argument the
    kernels form is <= 0). Tolerance: the fp32 rounding of a score s is 2^-24 |s| absolute in the exponent, so the
    weights are off by that relatively: 8 * 2^-24 * max |s| (~3e-4 here) bounds it with margin; the gradients carry
    the same relative error times the O(10) spread of the weights' derivatives."""
    gen = torch.Generator().manual_seed(1)
    q = 10 * torch.randn(2, 33, 2, 4, generator=gen)
    k = 10 * torch.randn(2, 33, 2, 4, generator=gen)
    v = torch.randn(2, 33, 2, 4, generator=gen)
    scale = 0.5
    smax = (scale * torch.einsum("btgk,bsgk->bgts", q, k)).abs().max().item()
    assert smax > 300
    tol = 8 * 2**-24 * smax
    xs = [x.to(DEVICE).requires_grad_() for x in (q, k, v)]
    L = kernel_log_sum_triton(xs[0], xs[1], scale, True)
    y = kernel_attention_triton(*xs, -L, None, scale)
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    y0 = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in ref), is_causal=True, scale=scale).transpose(1, 2)
    assert torch.isfinite(y).all() and rel(y.detach().cpu(), y0) <= tol
    w = torch.randn(y.shape, generator=gen)
    got = torch.autograd.grad((y * w.to(y.device)).sum(), xs)
    want = torch.autograd.grad((y0 * w.double()).sum(), ref)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and rel(a.cpu(), b) <= 10 * tol


def test_bad_shapes_and_devices_are_clear_errors():
    q = torch.randn(1, 4, 2, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"S >= T"):
        kernel_attention_triton(q, q[:, :2], q[:, :2], None, None, 1.0)
    with pytest.raises(ValueError, match=r"row must be \[B, T, G\] = \(1, 4, 2\), got \(1, 4\)"):
        kernel_attention_triton(q, q, q, torch.zeros(1, 4, device=DEVICE), None, 1.0)
    with pytest.raises(ValueError, match=r"col must be \[B, S, G\]"):
        kernel_attention_triton(q, q, q, None, torch.zeros(1, 5, 2, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match=r"must be \[B, T, G, K\]"):
        kernel_attention_triton(q[0], q, q, None, None, 1.0)
    assert kernel_attention_triton(q[:, :0], q[:, :0], q[:, :0], None, None, 1.0).shape == (1, 0, 2, 3)


@pytest.mark.parametrize("lse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_custom_ops_pass_opcheck(lse, dtype):
    """The ops torch.compile sees: schema, fake (shape and dtype: fp16 operands, fp32 maxima / log-sums) functions
    and autograd registration."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 2, 3, generator=gen).to(DEVICE, dtype) for _ in range(3))
    # without and with a decay (the cumulative log-decay G, fp64 [B, S, G])
    for gdec in (torch.empty(0, dtype=torch.float64, device=DEVICE),
                 -torch.rand(1, 5, 2, generator=gen, dtype=torch.float64).cumsum(1).to(DEVICE)):
        if lse:
            torch.library.opcheck(triton_attention._log_sum_fwd_op, (q, k, gdec, 0.5),
                                  test_utils=("test_schema", "test_faketensor"))
        else:
            row = torch.randn(1, 5, 2, generator=gen).to(DEVICE)
            torch.library.opcheck(triton_attention._attention_fwd_op, (q, k, v, row, row.new_empty(0), gdec, 0.5),
                                  test_utils=("test_schema", "test_faketensor"))


# -- the generated modules -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def softmax_module():
    result = compile_spec(str(ROOT / "specs" / "softmax_attention.dsf"))
    return result, load_module(result)


def test_softmax_spec_gets_the_kernels(softmax_module):
    result, module = softmax_module
    assert result.plan.triton_note == "Triton kernel: FlashAttention-style quadratic attention"
    assert module._core_triton_available is not None
    m = module.SoftmaxAttention(d=5, H=2, K=3, V=4)
    assert m._resolve_backend(torch.zeros(1, 1, 5)) == "torch"  # auto: torch on CPU
    m.backend = "cuda"
    with pytest.raises(ValueError, match="backend must be one of"):
        m(torch.zeros(1, 1, 5))


def test_softmax_module_triton_matches_sdpa_and_torch_path(softmax_module):
    """backend="triton": one pass, a continued KV cache and step against scaled_dot_product_attention on the module's
    projections; gradients of input and parameters against the torch path."""
    _, module = softmax_module
    torch.manual_seed(0)
    m = module.SoftmaxAttention(d=5, H=2, K=3, V=4, dtype=F64).to(DEVICE)
    u = torch.randn(2, 19, 5, dtype=F64)

    def sdpa(x):
        q, k, v = (torch.einsum("hkd,btd->bhtk", getattr(m, w).detach().cpu(), x) for w in ("W_Q", "W_K", "W_V"))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).permute(0, 2, 1, 3).reshape(2, 19, 8)

    want = sdpa(u)
    ud = u.to(DEVICE).requires_grad_()
    grads = {}
    for backend in ("triton", "torch"):
        m.backend = backend
        y = m(ud)
        grads[backend] = torch.autograd.grad((y * torch.linspace(-1, 1, 8, dtype=F64, device=DEVICE)).sum(),
                                             [ud, *m.parameters()])
        if backend == "triton":
            assert rel(y.detach().cpu(), want) <= 1e-12
            y1, cache = m(ud[:, :7].detach(), output_final_state=True)
            y2 = m(ud[:, 7:].detach(), initial_state=cache)
            assert rel(torch.cat([y1, y2], 1).cpu(), want) <= 1e-12
            y_step, _ = m.step(ud[:, 7].detach(), cache)
            assert rel(y_step.cpu(), want[:, 7]) <= 1e-12
    for a, b in zip(grads["triton"], grads["torch"]):
        assert rel(a.cpu(), b.cpu()) <= 1e-12


def test_check_runs_the_triton_path_of_quadratic_specs():
    """dsfc check: the Triton rows (forward, continued cache, gradients) for the quadratic family too."""
    report = run_check(compile_spec(str(ROOT / "specs" / "softmax_attention.dsf")), shapes=((1, 2),))
    rows = [r for r in report.rows if r.what.startswith("triton")]
    assert report.ok and {"triton forward y (one pass)", "triton forward y (continued KV cache)",
                          "triton grad W_Q (vs torch)"} <= {r.what for r in rows}


# -- the half path (fp16 under the interpreter) ----------------------------------------------------------------------


def _spy_constexprs(monkeypatch) -> list:
    """Records every launch's constexprs (``_constexprs``' results, HALF and the tiles among them)."""
    seen = []
    real = triton_attention._constexprs

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(triton_attention, "_constexprs", spy)
    return seen


def _fp16_case(B, T, S, G, K, V, with_row, with_col, seed):
    """fp16 q, k, v (row, col fp32) and a fp16 output weight, and float64 copies of exactly those values."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, G, K, generator=gen).half(), torch.randn(B, S, G, K, generator=gen).half()
    v = torch.randn(B, S, G, V, generator=gen).half()
    row = torch.randn(B, T, G, generator=gen) if with_row else None
    col = torch.randn(B, S, G, generator=gen) if with_col else None
    w = torch.randn(B, T, G, V, generator=gen).half()
    return [q, k, v, row, col], w


HALF_CASES = CASES + [  # K = V = 64 as on the GPU; odd T with a KV cache (S > T) and odd S
    (1, 23, 41, 2, 64, 64, True, False),
    (1, 33, 33, 1, 64, 64, False, True),
]


@pytest.mark.parametrize("B,T,S,G,K,V,with_row,with_col", HALF_CASES)
def test_fp16_attention_takes_the_half_path_and_matches_naive_formula(B, T, S, G, K, V, with_row, with_col,
                                                                      monkeypatch):
    seen = _spy_constexprs(monkeypatch)
    xs, w = _fp16_case(B, T, S, G, K, V, with_row, with_col, seed=T * S + G)
    dev = [None if x is None else x.to(DEVICE).requires_grad_() for x in xs]
    ref = [None if x is None else x.double().requires_grad_() for x in xs]
    scale = K**-0.5
    y = kernel_attention_triton(*dev, scale)
    y0 = _naive(*ref, scale)
    assert y.dtype == torch.float16 and rel(y.detach().cpu(), y0) <= TOL16
    got = torch.autograd.grad((y * w.to(DEVICE)).sum(), [x for x in dev if x is not None])
    want = torch.autograd.grad((y0 * w.double()).sum(), [x for x in ref if x is not None])
    for x, a, b in zip([x for x in dev if x is not None], got, want):
        assert a.dtype == x.dtype and rel(a.cpu(), b) <= TOL16
    assert [c["HALF"] for c in seen] == [2, 2, 2]  # forward and both backward kernels on fp16 operands
    assert all(c["DTYPE"] == triton_attention.tl.float32 for c in seen)


@pytest.mark.parametrize("T,S", [(1, 1), (37, 37), (9, 40)])
def test_fp16_log_sum_matches_logsumexp(T, S):
    """The log-sums are fp32 in the kernels, rounded to fp16 on return (the inputs' dtype): <= 2^-11 relative."""
    gen = torch.Generator().manual_seed(S)
    x = (torch.randn(2, T, 2, 16, generator=gen) * 2).half()
    ys = (torch.randn(2, S, 2, 16, generator=gen) * 2).half()
    dx, dys = x.to(DEVICE).requires_grad_(), ys.to(DEVICE).requires_grad_()
    L = kernel_log_sum_triton(dx, dys, 0.25, True)
    rx, rys = x.double().requires_grad_(), ys.double().requires_grad_()
    L0 = _naive_log_sum(rx, rys, 0.25)
    assert L.dtype == torch.float16 and rel(L.detach().cpu(), L0) <= TOL16
    w = torch.randn(L0.shape, generator=gen).half()
    for a, b in zip(torch.autograd.grad((L * w.to(L.device)).sum(), (dx, dys)),
                    torch.autograd.grad((L0 * w.double()).sum(), (rx, rys))):
        assert a.dtype == torch.float16 and rel(a.cpu(), b) <= TOL16


def test_log_sum_out_dtype_keeps_fp32_for_half_inputs():
    """out_dtype=float32 returns the kernels' fp32 log-sums unrounded: for fp16 inputs it is closer to the float64
    formula than the default (rounded to fp16) by well over the fp16 rounding step."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 37, 2, 16, generator=gen) * 2).half()
    ys = (torch.randn(2, 37, 2, 16, generator=gen) * 2).half()
    L0 = _naive_log_sum(x.double(), ys.double(), 0.25)
    L16 = kernel_log_sum_triton(x.to(DEVICE), ys.to(DEVICE), 0.25, True)
    L32 = kernel_log_sum_triton(x.to(DEVICE), ys.to(DEVICE), 0.25, True, out_dtype=torch.float32)
    assert L16.dtype == torch.float16 and L32.dtype == torch.float32
    err16, err32 = rel(L16.cpu(), L0), rel(L32.cpu(), L0)
    assert err32 <= 1e-5 < err16  # fp16 products (exact in fp32 sums) vs a 2^-11 rounding of the result


@pytest.mark.parametrize("half", [False, True])
def test_unequal_tiles_skip_no_visible_block(half, monkeypatch):
    """The GPU's half-path tiles have BM != BN (``TILES["cuda_half"]``): such tiles under the interpreter, so the
    causal loop bounds (the forward and dq loops stop at the block's last visible key, the dk / dv loop starts at
    the first query block that sees the key block) are exercised with BM != BN, with and without a KV cache."""
    for path in ("interpret", "cuda", "cuda_half", "cuda_half_wide"):  # whichever this device runs
        monkeypatch.setitem(triton_attention.TILES, path, {"fwd": (32, 16, 4), "bwd_kv": (16, 32, 4),
                                                           "bwd_q": (32, 16, 4)})
    seen = _spy_constexprs(monkeypatch)
    for T, S in ((45, 45), (29, 70)):
        xs, w = _fp16_case(1, T, S, 2, 8, 8, True, True, seed=S)
        if not half:
            xs, w = [None if x is None else x.double() for x in xs], w.double()
        dev = [x.to(DEVICE).requires_grad_() for x in xs]
        ref = [x.double().requires_grad_() for x in xs]
        y = kernel_attention_triton(*dev, 0.3)  # log-weights <= 5.4: results <= ~1e3, no fp16 overflow
        y0 = _naive(*ref, 0.3)
        tol = TOL16 if half else 1e-12
        assert rel(y.detach().cpu(), y0) <= tol
        for a, b in zip(torch.autograd.grad((y * w.to(DEVICE)).sum(), dev),
                        torch.autograd.grad((y0 * w.double()).sum(), ref)):
            assert rel(a.cpu(), b) <= tol
    assert {(c["BM"], c["BN"]) for c in seen} == {(32, 16), (16, 32)}


def test_only_all_fp16_inputs_take_the_half_path(monkeypatch):
    """Mixed dtypes keep the exact fp32 path (and an fp32 result); bf16 too under the interpreter (its bf16 tl.dot is
    wrong), rounding the result to bf16; HALF_DOTS = False turns the half path off."""
    seen = _spy_constexprs(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 6, 1, 4, generator=gen).to(DEVICE) for _ in range(3))
    want = _naive(q.double(), k.double(), v.double(), None, None, 0.5)
    cases = [((q.half(), k, v.half()), torch.float32, 0), ((q.bfloat16(), k.bfloat16(), v.bfloat16()),
                                                           torch.bfloat16, 1 if DEVICE == "cuda" else 0)]
    for args, dtype, half in cases:
        seen.clear()
        y = kernel_attention_triton(*args, None, None, 0.5)
        assert y.dtype == dtype and [c["HALF"] for c in seen] == [half]
        assert rel(y.cpu(), want) <= 2e-2  # the inputs' own rounding (bf16: 2^-9)
    monkeypatch.setattr(triton_attention, "HALF_DOTS", False)
    seen.clear()
    assert kernel_attention_triton(q.half(), k.half(), v.half(), None, None, 0.5).dtype == torch.float16
    assert [c["HALF"] for c in seen] == [0]


def test_softmax_module_half_input_takes_the_half_path(softmax_module, monkeypatch):
    """A generated module given an fp16 input hands the kernels q, k, v in fp16 (the tensor-core path on a GPU):
    every launch has HALF = 2, the normaliser stays fp32, and y and the input gradient match the float64 module on
    the same (fp16-valued) input. Tolerance: TOL16 for the kernels' own roundings plus fp16 rounding of q, k, v from
    their fp32 projections and of y on return (2^-11 relative each): 2 * TOL16."""
    _, module = softmax_module
    torch.manual_seed(0)
    m = module.SoftmaxAttention(d=5, H=2, K=4, V=4, dtype=F64)
    u = torch.randn(2, 21, 5, dtype=F64).half()
    w = torch.linspace(-1, 1, 8, dtype=F64)
    m.backend = "torch"
    u64 = u.double().requires_grad_()
    want = m(u64)
    (want_du,) = torch.autograd.grad((want * w).sum(), [u64])
    seen = _spy_constexprs(monkeypatch)
    m16 = m.to(torch.float32).to(DEVICE)
    m16.backend = "triton"
    ud = u.to(DEVICE).requires_grad_()
    y = m16(ud)
    (du,) = torch.autograd.grad((y.float() * w.float().to(DEVICE)).sum(), [ud])
    assert y.dtype == torch.float16 and du.dtype == torch.float16
    assert seen and {c["HALF"] for c in seen} == {2}
    assert rel(y.cpu(), want.detach()) <= 2 * TOL16
    assert rel(du.cpu(), want_du) <= 2 * TOL16
