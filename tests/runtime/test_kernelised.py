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
