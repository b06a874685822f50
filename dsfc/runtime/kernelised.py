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

CPU inference in fp32 runs torch's fused flash-attention kernel for CPU instead (``_flash``): it returns the
normalised output and the row log-sum-exp L in one pass over the scores, never holding a [T, S] block of them, and
skips the key blocks above the diagonal; the unnormalised sum is exp(row_i + L_i) times the normalised output.
Measured on this 2-core CPU (fp32, T = 2048, 8 heads of 64): 6-15x faster than the blocked einsum path for each of
the two functions. Its L has no gradient, so anything recorded for backward keeps the einsum path.
"""

from __future__ import annotations

import torch

QUERY_BLOCK = 512

# torch's fused CPU attention (private, in torch 2.11-2.13): (output, logsumexp) = op(q, k, v, dropout_p, is_causal,
# attn_mask=, scale=), q / k / v [B, G, T, head] with one head size, the mask broadcast to [B, G, T, S]
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


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


def _use_flash(gcum: torch.Tensor | None, *tensors: torch.Tensor | None) -> bool:
    """The fused CPU kernel applies: fp32 CPU tensors (``gcum`` any float dtype: it is read in float64), nothing to
    differentiate (its log-sum-exp has no gradient)."""
    present = [t for t in tensors if t is not None]
    if _FLASH_CPU is None or any(t.numel() == 0 for t in present):  # no steps, heads or batch: the einsum path
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in present):
        return False
    if gcum is not None and gcum.device.type != "cpu":
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in present + [gcum] if t is not None))


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else torch.nn.functional.pad(x, (0, size - x.shape[-1]))


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, col: torch.Tensor | None,
           gcum: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised output [B, T, G, V], L [B, T, G]) of the weights exp(scale q_i . k_j + col_j + G_i - G_j), j
    visible to i, by the fused CPU kernel, blocks of ``QUERY_BLOCK`` queries when a mask is needed."""
    T, S, V = q.shape[1], k.shape[1], v.shape[-1]
    # one head size for the kernel: zero columns of q and k add 0 to every score, those of v are cut off after
    width = max(q.shape[-1], V)
    qh, kh, vh = (_pad_last(x, width).transpose(1, 2) for x in (q, k, v))  # [B, G, *, width]
    if col is None and gcum is None and S == T:
        # no cache and no bias: the kernel's own causal mask (queries and keys aligned at step 0) skips the key
        # blocks above the diagonal without a mask in memory
        out, lse = _FLASH_CPU(qh, kh, vh, 0.0, True, scale=scale)
        return out[..., :V].transpose(1, 2), lse.transpose(1, 2)
    outs, lses = [], []
    for t0, t1, s1 in _blocks(T, S):
        future = torch.ones(t1 - t0, s1, dtype=torch.bool, device=q.device).triu(S - T + t0 + 1)
        bias = torch.zeros((), dtype=q.dtype, device=q.device) + _decay(gcum, T, t0, t1, s1, q.dtype)
        if col is not None:
            bias = bias + col[:, :s1].permute(0, 2, 1)[:, :, None, :]
        bias = bias.masked_fill(future, float("-inf"))
        if bias.dim() < 4:  # [t1 - t0, s1]: one mask for every batch and group
            bias = bias[None, None]
        out, lse = _FLASH_CPU(qh[:, :, t0:t1], kh[:, :, :s1], vh[:, :, :s1], 0.0, False, attn_mask=bias, scale=scale)
        outs.append(out[..., :V])
        lses.append(lse)
    return torch.cat(outs, 2).transpose(1, 2), torch.cat(lses, 2).transpose(1, 2)


def kernel_log_sum(x: torch.Tensor, ys: torch.Tensor, scale: float, history: bool,
                   gcum: torch.Tensor | None = None) -> torch.Tensor:
    """log(phi(x_i) . psi_i) -> [B, T, G]: psi_i = phi(y_i) (``history`` False: ys [B, T, G, K]), or the running sum
    of phi(y_j) over the cached and current steps j <= i (``history`` True: ys [B, S, G, K], the last T current),
    decayed by exp(G_i - G_j) when ``gcum`` [B, S, G] is given (a ``scan`` history)."""
    if not history:
        return torch.einsum("btgk,btgk->btg", x, ys) * scale
    if _use_flash(gcum, x, ys):
        return _flash(x, ys, ys, scale, None, gcum)[1]
    T, S = x.shape[1], ys.shape[1]
    parts = [torch.logsumexp(_causal_scores(x[:, t0:t1], ys[:, :s1], scale) + _decay(gcum, T, t0, t1, s1, x.dtype), -1)
             for t0, t1, s1 in _blocks(T, S)]
    return torch.cat(parts, -1).permute(0, 2, 1)


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: torch.Tensor, col: torch.Tensor | None,
                     scale: float, gcum: torch.Tensor | None = None) -> torch.Tensor:
    """y_i = sum_(j <= i) exp(scale q_i . k_j + row_i + col_j + G_i - G_j) v_j.

    q [B, T, G, K]; k [B, S, G, K], v [B, S, G, V], col [B, S, G] or None (the S - T cached steps first); row
    [B, T, G]; gcum [B, S, G] or None (no decay). Returns [B, T, G, V]."""
    if _use_flash(gcum, q, k, v, row, col):
        y, lse = _flash(q, k, v, scale, col, gcum)
        # a row with no visible weight (col = -inf throughout) comes back as 0 with L = 0: y = 0, as below
        return y * torch.exp(row + lse)[..., None]
    T, S = q.shape[1], k.shape[1]
    out = []
    for t0, t1, s1 in _blocks(T, S):
        # (score + decay) first, rounded exactly as kernel_log_sum rounds it before its log-sum-exp: the row (minus
        # that log-sum-exp) then cancels the largest weight's exponent to 0 exactly. Added the other way round, each
        # fp32 weight carried the rounding of a sum of magnitude |score| (2e-5 relative at ALiBi scores of ~1e3)
        w = _causal_scores(q[:, t0:t1], k[:, :s1], scale) + _decay(gcum, T, t0, t1, s1, q.dtype)
        w = w + row[:, t0:t1].permute(0, 2, 1)[..., None]
        if col is not None:
            w = w + col[:, :s1].permute(0, 2, 1)[:, :, None, :]
        m = w.amax(-1, keepdim=True).detach()  # the row maximum: an exact shift, so exp never overflows
        m = m.masked_fill(m == float("-inf"), 0.0)  # a row whose every weight is 0 (col = -inf): y = 0, not NaN
        y = torch.einsum("bgts,bsgv->btgv", torch.exp(w - m), v[:, :s1])
        out.append(y * torch.exp(m.squeeze(-1)).permute(0, 2, 1)[..., None])
    return torch.cat(out, 1)
