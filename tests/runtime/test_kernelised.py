"""dsfc.runtime.kernelised against the formula written out densely here (float64), with query blocks smaller than
the sequence so that the blocked path runs, a cache (S > T), and scores large enough to overflow a naive exp."""

from __future__ import annotations

import pytest
import torch

from dsfc.runtime import kernelised

F64 = torch.float64


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(kernelised, "QUERY_BLOCK", 4)


def _dense(q, k, v, row, col, scale):
    T, S = q.shape[1], k.shape[1]
    y = torch.zeros(q.shape[0], T, q.shape[2], v.shape[3], dtype=F64)
    for i in range(T):
        for j in range(S - T + i + 1):
            w = scale * (q[:, i] * k[:, j]).sum(-1) + row[:, i] + (0 if col is None else col[:, j])
            y[:, i] += torch.exp(w)[..., None] * v[:, j]
    return y


@pytest.mark.parametrize("T,S", [(1, 1), (9, 9), (7, 12)])
def test_kernel_attention_is_the_causal_formula(small_blocks, T, S):
    g = torch.Generator().manual_seed(T * 100 + S)
    q, k = torch.randn(2, T, 3, 4, generator=g, dtype=F64), torch.randn(2, S, 3, 4, generator=g, dtype=F64)
    v = torch.randn(2, S, 3, 5, generator=g, dtype=F64)
    row, col = torch.randn(2, T, 3, generator=g, dtype=F64), torch.randn(2, S, 3, generator=g, dtype=F64)
    torch.testing.assert_close(kernelised.kernel_attention(q, k, v, row, col, 0.5), _dense(q, k, v, row, col, 0.5))
    torch.testing.assert_close(kernelised.kernel_attention(q, k, v, row, None, 0.5), _dense(q, k, v, row, None, 0.5))
    want = torch.stack([torch.log(sum(torch.exp(0.5 * (q[:, i] * k[:, j]).sum(-1)) for j in range(S - T + i + 1)))
                        for i in range(T)], 1)
    torch.testing.assert_close(kernelised.kernel_log_sum(q, k, 0.5, True), want)


def test_softmax_weights_do_not_overflow_in_fp32(small_blocks):
    q = torch.full((1, 6, 1, 2), 20.0)
    k = torch.full((1, 6, 1, 2), 20.0)  # scores 400 * 2 * 0.5 = 400: exp overflows fp32
    v = torch.arange(6.0).reshape(1, 6, 1, 1)
    lse = kernelised.kernel_log_sum(q, k, 0.5, True)
    y = kernelised.kernel_attention(q, k, v, -lse, None, 0.5)
    assert torch.isfinite(lse).all() and torch.isfinite(y).all()
    # equal scores: the mean of v_0..v_i; fp32 log-sum-exp of scores ~400 carries ~400 * 2^-24 relative error
    torch.testing.assert_close(y[0, :, 0, 0], torch.arange(6.0) / 2, rtol=1e-4, atol=1e-6)


# -- the fused CPU kernel (fp32 inference) ---------------------------------------------------------------------------

def _dense_log_sum(q, k, scale, gcum):
    T, S = q.shape[1], k.shape[1]
    rows = []
    for i in range(T):
        ws = [scale * (q[:, i] * k[:, j]).sum(-1) + (0 if gcum is None else gcum[:, S - T + i] - gcum[:, j])
              for j in range(S - T + i + 1)]
        rows.append(torch.logsumexp(torch.stack(ws), 0))
    return torch.stack(rows, 1)


@pytest.fixture
def flash_calls(monkeypatch):
    """Counts the fused kernel's calls (a test of the fp32 path must know that path ran)."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    real = kernelised._FLASH_CPU
    if real is None:
        pytest.skip("this torch has no fused CPU attention kernel")
    monkeypatch.setattr(kernelised, "_FLASH_CPU", counted)
    return calls


@pytest.mark.parametrize("block", [4, 512])
@pytest.mark.parametrize("T,cache", [(1, 0), (9, 0), (7, 5)])
@pytest.mark.parametrize("K,V", [(4, 4), (6, 3), (2, 5)])
def test_fp32_inference_runs_the_fused_kernel_and_is_the_formula(monkeypatch, flash_calls, block, T, cache, K, V):
    """Query blocks, a cache, head sizes that differ (the kernel takes one: zero-padded), a per-key log weight and a
    decay: fp32 through the fused kernel against the float64 formula (fp32 rounding of O(1) sums: 1e-5)."""
    monkeypatch.setattr(kernelised, "QUERY_BLOCK", block)
    g = torch.Generator().manual_seed(T * 100 + cache * 10 + K)
    S = T + cache
    q, k = torch.randn(2, T, 3, K, generator=g, dtype=F64), torch.randn(2, S, 3, K, generator=g, dtype=F64)
    v = torch.randn(2, S, 3, V, generator=g, dtype=F64)
    row, col = torch.randn(2, T, 3, generator=g, dtype=F64), torch.randn(2, S, 3, generator=g, dtype=F64)
    gcum = (-torch.rand(2, S, 3, generator=g, dtype=F64) * 3).cumsum(1)
    f32 = [x.float() for x in (q, k, v, row, col)]
    for c, gc in ((None, None), (col, None), (None, gcum), (col, gcum)):
        got = kernelised.kernel_attention(*f32[:4], None if c is None else c.float(), 0.5, gc)
        # the decay enters as G_i - G_j: folded into row and col of the dense formula
        if gc is None:
            want = _dense(q, k, v, row, c, 0.5)
        else:
            want = _dense(q, k, v, row + gc[:, cache:], (0 if c is None else c) - gc, 0.5)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kernelised.kernel_log_sum(f32[0], f32[1], 0.5, True, gc).double(),
                                   _dense_log_sum(q, k, 0.5, gc), rtol=1e-5, atol=1e-5)
    assert flash_calls, "the fp32 inference path did not run the fused kernel"


def test_fused_kernel_rows_with_no_visible_weight_are_zero(flash_calls):
    """col = -inf on every key a query sees (a fully masked row): y = 0, not NaN, as on the einsum path."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 5, 2, 3, generator=g) for _ in range(3))
    col = torch.full((1, 5, 2), float("-inf"))
    col[:, 3] = 0.0
    y = kernelised.kernel_attention(q, k, v, torch.zeros(1, 5, 2), col, 0.5)
    assert flash_calls and torch.isfinite(y).all() and (y[:, :3] == 0).all()
    want = _dense(q.double(), k.double(), v.double(), torch.zeros(1, 5, 2, dtype=F64), col.double(), 0.5)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-6)


def test_a_call_recorded_for_backward_keeps_the_differentiable_path(flash_calls):
    """The fused kernel's L has no gradient: with a gradient to record, the einsum path runs, and its gradient is
    the float64 formula's."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 6, 2, 3, generator=g, dtype=F64) for _ in range(3))
    row = torch.randn(1, 6, 2, generator=g, dtype=F64)
    q32 = q.float().requires_grad_()
    kernelised.kernel_attention(q32, k.float(), v.float(), row.float(), None, 0.5).sum().backward()
    q64 = q.clone().requires_grad_()
    _dense(q64, k, v, row, None, 0.5).sum().backward()
    assert not flash_calls
    torch.testing.assert_close(q32.grad.double(), q64.grad, rtol=1e-4, atol=1e-5)
