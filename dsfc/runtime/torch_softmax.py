"""Fused softmax attention in torch (the CPU path): ``softmax_attention_torch`` returns the normalised output and its
row log-sum-exp in one pass, for the quadratic plans whose row weight is exactly minus the log-sum of the same scores
(softmax attention, FoX / ALiBi: ``dsfc.codegen.plan``'s ``fused`` quadratic plans), as
``dsfc.runtime.triton_softmax`` does on Triton::

    w_ij = scale q_i . k_j (+ G_(S-T+i) - G_j),  L_i = log sum_(j visible to i) exp(w_ij),
    y_i  = sum_(j visible to i) exp(w_ij - L_i) v_j

q [B, T, G, K]; k [B, S, G, K], v [B, S, G, V]; gcum [B, S, G] (read in fp64) or none. S >= T: the first S - T keys
are a KV cache, query i is step S - T + i and sees the keys j <= S - T + i. The same numbers as
``kernel_log_sum(q, k, scale, True, gcum)`` then ``kernel_attention(q, k, v, -L, None, scale, gcum)``
(dsfc/runtime/kernelised.py), which a call recorded for backward ran as two differentiable einsum passes.

Forward (a ``torch.autograd.Function``, so nothing of it is recorded): fp32 CPU tensors run torch's fused CPU
flash-attention kernel (``kernelised._flash``: y and L together, causal mask built in when S = T without decay, else
blocks of ``kernelised.QUERY_BLOCK`` queries with a bias); other dtypes and devices one blocked pass over
``BLOCK`` queries (scores, log-sum-exp, softmax, P V), the decay's differences G_i - G_j formed in fp64 before the
cast as kernelised does.

Backward (FlashAttention-2): ``Delta_i = dy_i . y_i - dL_i`` (dL the gradient reaching L itself), then per block of
``BLOCK`` queries and the keys they see: P = softmax(w) recomputed (its own log-sum-exp: at fp32 scores of ~400,
exp(w - L) with the forward's L was 70x further off in dv), dS = P (dy V^T - Delta), dv += P^T dy, dk +=
scale dS^T q, dq = scale dS k; memory O(BLOCK * S) per (batch, group). Decay: dG = dL at the query positions (the
rows of dS sum to dL_i) minus the column sums of dS. fp32 CPU without decay, cache or a gradient reaching L, outside
``create_graph``, runs torch's fused CPU flash backward instead (``_FLASH_CPU_BWD``). The blocked backward is plain
differentiable torch, so a second derivative (``create_graph=True``) works as on the einsum path.
"""

from __future__ import annotations

import torch

from dsfc.runtime.checks import transform_in_effect
from dsfc.runtime.kernelised import _FLASH_CPU, _decay, _flash, kernel_attention, kernel_log_sum

__all__ = ["BLOCK", "softmax_attention_torch"]

BLOCK = 256  # queries per block of the blocked passes (scores [B, G, BLOCK, S] at once)

# torch's fused CPU flash backward (private, torch 2.11-2.13): (dq, dk, dv) = op(dy, q, k, v, out, logsumexp,
# dropout_p, is_causal, attn_mask=, scale=), all [B, G, T, head]; it forms Delta = rowsum(dy * out) itself
_FLASH_CPU_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def _blocks(T: int, S: int):
    """Query blocks [t0, t1) and the keys they can see, [0, S - T + t1)."""
    for t0 in range(0, T, BLOCK):
        t1 = min(t0 + BLOCK, T)
        yield t0, t1, S - T + t1


def _scores(qh, kh, gcum, T: int, t0: int, t1: int, s1: int, scale: float) -> torch.Tensor:
    """w [B, G, t1 - t0, s1] for the queries [t0, t1) and the keys [0, s1), -inf where a key is after the query."""
    S = kh.shape[2]
    w = torch.matmul(qh[:, :, t0:t1], kh[:, :, :s1].transpose(-1, -2)) * scale
    w = w + _decay(gcum, T, t0, t1, s1, w.dtype)  # (score + decay) rounded as kernel_log_sum rounds it
    future = torch.ones(t1 - t0, s1, dtype=torch.bool, device=w.device).triu(S - T + t0 + 1)
    return w.masked_fill(future, float("-inf"))


def _fast(*tensors: torch.Tensor) -> bool:
    """torch's fused CPU kernel applies: it exists, fp32 CPU tensors, none empty."""
    return _FLASH_CPU is not None and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.numel() > 0
                                          for t in tensors)


def _forward(q, k, v, gcum, scale: float):
    """(y [B, T, G, V], L [B, T, G]) in q's dtype, nothing recorded."""
    if _fast(q, k, v):
        return _flash(q, k, v, scale, None, gcum)
    T, S = q.shape[1], k.shape[1]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # [B, G, *, K]
    ys, Ls = [], []
    for t0, t1, s1 in _blocks(T, S):
        w = _scores(qh, kh, gcum, T, t0, t1, s1, scale)
        L = torch.logsumexp(w, -1)  # finite: every query sees itself
        ys.append(torch.matmul(torch.exp(w - L[..., None]), vh[:, :, :s1]))
        Ls.append(L)
    return torch.cat(ys, 2).transpose(1, 2), torch.cat(Ls, 2).transpose(1, 2)


def _backward(q, k, v, gcum, y, L, dy, dL, scale: float):
    """(dq, dk, dv, dG or None), blocked over queries; differentiable itself (create_graph)."""
    T, S = q.shape[1], k.shape[1]
    delta = (dy * y).sum(-1)
    if dL is not None:
        delta = delta - dL
    qh, kh, vh, dyh = (x.transpose(1, 2) for x in (q, k, v, dy))  # [B, G, *, K]
    Dh = delta.transpose(1, 2)  # [B, G, T]
    dq = torch.zeros_like(qh)
    dk, dv = torch.zeros_like(kh), torch.zeros_like(vh)
    dcol = None if gcum is None else q.new_zeros(Dh.shape[:2] + (S,))
    for t0, t1, s1 in _blocks(T, S):
        # P from the recomputed scores' own log-sum-exp (a block holds every key its queries see), not the saved L:
        # at scores of ~1e3 the forward's differently rounded L left P's rows summing to 1 +- 1e-4 (fp32)
        p = torch.softmax(_scores(qh, kh, gcum, T, t0, t1, s1, scale), -1)  # 0 where masked
        dyb = dyh[:, :, t0:t1]
        dv[:, :, :s1] += torch.matmul(p.transpose(-1, -2), dyb)
        ds = p * (torch.matmul(dyb, vh[:, :, :s1].transpose(-1, -2)) - Dh[:, :, t0:t1, None])
        dq[:, :, t0:t1] = torch.matmul(ds, kh[:, :, :s1]) * scale
        dk[:, :, :s1] += torch.matmul(ds.transpose(-1, -2), qh[:, :, t0:t1]) * scale
        if dcol is not None:
            dcol[:, :, :s1] += ds.sum(-2)
    dg = None
    if gcum is not None:
        dg = -dcol.transpose(1, 2).to(gcum.dtype)
        if dL is not None:
            dg = torch.cat([dg[:, : S - T], dg[:, S - T :] + dL.to(gcum.dtype)], 1)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), dg


class _SoftmaxAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gcum, scale: float):
        y, L = _forward(q, k, v, gcum, scale)
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # dL is None unless L itself is used
        ctx.save_for_backward(q, k, v, gcum, y, L)
        return y, L

    @staticmethod
    def backward(ctx, dy, dL):
        q, k, v, gcum, y, L = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(y)
        T, S = q.shape[1], k.shape[1]
        if (dL is None and gcum is None and S == T and q.shape[-1] == v.shape[-1] and not torch.is_grad_enabled()
                and _FLASH_CPU_BWD is not None and _fast(q, k, v, dy)):
            qh, kh, vh, yh, dyh = (x.transpose(1, 2) for x in (q, k, v, y, dy))
            dq, dk, dv = _FLASH_CPU_BWD(dyh, qh, kh, vh, yh, L.transpose(1, 2), 0.0, True, scale=ctx.scale)
            return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None, None
        dq, dk, dv, dg = _backward(q, k, v, gcum, y, L, dy, dL, ctx.scale)
        return dq, dk, dv, dg, None


def _check(q, k, v, gcum) -> None:
    name = "softmax_attention_torch"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{name}: q, k, v must be [B, T, G, K], [B, S, G, K], [B, S, G, V], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, G, K = q.shape
    S = k.shape[1]
    if k.shape != (B, S, G, K) or v.shape[:3] != (B, S, G) or S < T:
        raise ValueError(f"{name}: k must be [B, S, G, K] and v [B, S, G, V] with S >= T for q {tuple(q.shape)}, "
                         f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if gcum is not None and tuple(gcum.shape) != (B, S, G):
        raise ValueError(f"{name}: gcum must be [B, S, G] = {(B, S, G)}, got {tuple(gcum.shape)}")


def softmax_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                            gcum: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, L)``: causal softmax attention over a KV cache and its row log-sum-exp in one pass, the same numbers as
    ``kernel_log_sum(q, k, scale, True, gcum)`` then ``kernel_attention(q, k, v, -L, None, scale, gcum)``. q [B, T,
    G, K], k [B, S, G, K], v [B, S, G, V] (S >= T), gcum [B, S, G] the cumulative log-decay or None. y [B, T, G, V]
    and L [B, T, G] in the inputs' promoted dtype. Differentiable w.r.t. q, k, v and gcum, through y and L."""
    _check(q, k, v, gcum)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    B, T, G, _ = q.shape
    if T == 0 or B == 0 or G == 0:  # tied to the inputs (zero gradients)
        y = (q.sum() + k.sum() + v.sum()).to(dtype) * 0
        return y + q.new_zeros((B, T, G, v.shape[-1]), dtype=dtype), y + q.new_zeros((B, T, G), dtype=dtype)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    if transform_in_effect(q, k, v, gcum) is not None:
        # the autograd.Function has no batching or jvp rule: under torch.func (per-sample gradients by vmap, jacfwd)
        # or forward-mode AD the two differentiable passes, the same numbers
        L = kernel_log_sum(q, k, scale, True, gcum)
        return kernel_attention(q, k, v, -L, None, scale, gcum), L
    return _SoftmaxAttention.apply(q, k, v, gcum, float(scale))

