"""Quadratic (kernelised) attention for specs whose state is an infinite feature range of exp.

Contractions over the feature index of phi(x_i) . phi(y_j) are exp(scale * x_i . y_j). Every weight is formed in
log space and shifted by its row maximum before exp (the FlashAttention / mamba2 stabiliser), so nothing
overflows however large the scores; the shift is exact, so it is detached from autograd. Queries are processed in
blocks of ``QUERY_BLOCK`` so that at most [B, G, QUERY_BLOCK, S] scores exist at once (memory linear in T).

Decay (the Forgetting Transformer, ALiBi): ``gcum`` [B, S, G] is the cumulative per-step log-decay G over the key
positions (the cached steps first; query i is position S - T + i), and each weight gains G_i - G_j. G is float64
(O(S), cheap) and the differences are formed in float64 for the query block's pairs before the cast to the compute
dtype, never G itself: |G| ~ 1e5 after a long strongly-decaying sequence costs no precision where the weight is not
negligible (G_i - G_j small). (Against one reference per block, G_i - r itself reaches 512 steps' decay, ~1e3,
whose fp32 ulp 6e-5 showed in the output.) Gradients flow to gcum.
"""

from __future__ import annotations

import torch

QUERY_BLOCK = 512


def _causal_scores(x: torch.Tensor, ys: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * x_i . y_j over [B, T, G, K] x [B, S, G, K] -> [B, G, T, S], -inf where j > (S - T) + i: the T queries
    are the last T steps of the S keys (the first S - T are the cache)."""
    T, S = x.shape[1], ys.shape[1]
    s = torch.einsum("btgk,bsgk->bgts", x, ys) * scale
    future = torch.ones(T, S, dtype=torch.bool, device=x.device).triu(S - T + 1)
    return s.masked_fill(future, float("-inf"))


def _blocks(T: int, S: int):
    """Query blocks [t0, t1) and the keys they can see, [0, S - T + t1)."""
    for t0 in range(0, T, QUERY_BLOCK):
        t1 = min(t0 + QUERY_BLOCK, T)
        yield t0, t1, S - T + t1


def _decay(gcum: torch.Tensor | None, T: int, t0: int, t1: int, s1: int, dtype) -> torch.Tensor | float:
    """G_i - G_j [B, G, t1 - t0, s1] for the queries [t0, t1) and the keys [0, s1), 0 without decay: subtracted in
    float64 pair by pair, then cast (the Triton kernels do the same per tile)."""
    if gcum is None:
        return 0.0
    S = gcum.shape[1]
    g = gcum.to(torch.float64).permute(0, 2, 1)
    return (g[:, :, S - T + t0 : S - T + t1, None] - g[:, :, None, :s1]).to(dtype)


def kernel_log_sum(x: torch.Tensor, ys: torch.Tensor, scale: float, history: bool,
                   gcum: torch.Tensor | None = None) -> torch.Tensor:
    """log(phi(x_i) . psi_i) -> [B, T, G]: psi_i = phi(y_i) (``history`` False: ys [B, T, G, K]), or the running sum
    of phi(y_j) over the cached and current steps j <= i (``history`` True: ys [B, S, G, K], the last T current),
    decayed by exp(G_i - G_j) when ``gcum`` [B, S, G] is given (a ``scan`` history)."""
    if not history:
        return torch.einsum("btgk,btgk->btg", x, ys) * scale
    T, S = x.shape[1], ys.shape[1]
    parts = [torch.logsumexp(_causal_scores(x[:, t0:t1], ys[:, :s1], scale) + _decay(gcum, T, t0, t1, s1, x.dtype), -1)
             for t0, t1, s1 in _blocks(T, S)]
    return torch.cat(parts, -1).permute(0, 2, 1)


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: torch.Tensor, col: torch.Tensor | None,
                     scale: float, gcum: torch.Tensor | None = None) -> torch.Tensor:
    """y_i = sum_(j <= i) exp(scale q_i . k_j + row_i + col_j + G_i - G_j) v_j.

    q [B, T, G, K]; k [B, S, G, K], v [B, S, G, V], col [B, S, G] or None (the S - T cached steps first); row
    [B, T, G]; gcum [B, S, G] or None (no decay). Returns [B, T, G, V]."""
    T, S = q.shape[1], k.shape[1]
    out = []
    for t0, t1, s1 in _blocks(T, S):
        w = _causal_scores(q[:, t0:t1], k[:, :s1], scale) + row[:, t0:t1].permute(0, 2, 1)[..., None]
        w = w + _decay(gcum, T, t0, t1, s1, w.dtype)
        if col is not None:
            w = w + col[:, :s1].permute(0, 2, 1)[:, :, None, :]
        m = w.amax(-1, keepdim=True).detach()  # the row maximum: an exact shift, so exp never overflows
        m = m.masked_fill(m == float("-inf"), 0.0)  # a row whose every weight is 0 (col = -inf): y = 0, not NaN
        y = torch.einsum("bgts,bsgv->btgv", torch.exp(w - m), v[:, :s1])
        out.append(y * torch.exp(m.squeeze(-1)).permute(0, 2, 1)[..., None])
    return torch.cat(out, 1)
