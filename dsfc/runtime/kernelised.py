"""Quadratic (kernelised) attention for specs whose state is an infinite feature range of exp.

Contractions over the feature index of phi(x_i) . phi(y_j) are exp(scale * x_i . y_j). Every weight is formed in
log space and shifted by its row maximum before exp (the FlashAttention / mamba2 stabiliser), so nothing
overflows however large the scores; the shift is exact, so it is detached from autograd.
"""

from __future__ import annotations

import torch


def _causal_scores(x: torch.Tensor, ys: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * x_i . y_j over [B, T, G, K] x [B, S, G, K] -> [B, G, T, S], -inf where j > (S - T) + i."""
    T, S = x.shape[1], ys.shape[1]
    s = torch.einsum("btgk,bsgk->bgts", x, ys) * scale
    future = torch.ones(T, S, dtype=torch.bool, device=x.device).triu(S - T + 1)
    return s.masked_fill(future, float("-inf"))


def kernel_log_sum(x: torch.Tensor, ys: torch.Tensor, scale: float, history: bool) -> torch.Tensor:
    """log(phi(x_i) . psi_i) -> [B, T, G]: psi_i = phi(y_i) (``history`` False: ys [B, T, G, K]), or the running sum
    of phi(y_j) over the cached and current steps j <= i (``history`` True: ys [B, S, G, K], the last T current)."""
    if not history:
        return torch.einsum("btgk,btgk->btg", x, ys) * scale
    return torch.logsumexp(_causal_scores(x, ys, scale), -1).permute(0, 2, 1)


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: torch.Tensor, col: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """y_i = sum_(j <= i) exp(scale q_i . k_j + row_i + col_j) v_j.

    q [B, T, G, K]; k [B, S, G, K], v [B, S, G, V], col [B, S, G] or None (the S - T cached steps first); row
    [B, T, G]. Returns [B, T, G, V]."""
    w = _causal_scores(q, k, scale) + row.permute(0, 2, 1)[..., None]
    if col is not None:
        w = w + col.permute(0, 2, 1)[:, :, None, :]
    m = w.amax(-1, keepdim=True).detach()  # the row maximum: exact shift, never overflows
    y = torch.einsum("bgts,bsgv->btgv", torch.exp(w - m), v)
    return y * torch.exp(m.squeeze(-1)).permute(0, 2, 1)[..., None]
