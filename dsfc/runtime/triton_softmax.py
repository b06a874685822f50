"""Fused softmax attention in Triton (FlashAttention-2): ``softmax_attention_triton`` returns the normalised output
and its row log-sum-exp in one pass, for the quadratic plans whose row weight is exactly minus the log-sum of the
same scores (softmax attention, FoX / ALiBi: ``dsfc.codegen.plan``'s ``fused`` quadratic plans)::

    w_ij = scale q_i . k_j (+ G_(S-T+i) - G_j),  L_i = log sum_(j visible to i) exp(w_ij),
    y_i  = sum_(j visible to i) exp(w_ij - L_i) v_j

q [B, T, G, K]; k [B, S, G, K], v [B, S, G, V]; gcum [B, S, G] (fp64) or none. S >= T: the first S - T keys are a
KV cache, query i is step S - T + i and sees the keys j <= S - T + i. This is kernel_log_sum_triton followed by
kernel_attention_triton with row = -L (dsfc/runtime/triton_attention.py), in one forward pass instead of two and a
backward that needs no second walk for the normaliser.

Forward: one program per (block of BM queries, b, g) walks the key blocks its queries see with a running row
maximum m and sum l (FlashAttention-2), ``y = acc / l`` and ``L = m + log l`` at the end. Causal: the key blocks
every query of the block sees (strictly below the diagonal) in a loop without a mask, then the diagonal blocks
masked; the blocks above the diagonal are never visited.

Backward (FlashAttention-2): ``Delta_i = dy_i . y_i - dL_i`` (one torch reduction in the stats dtype; dL the
gradient reaching L itself, e.g. through a carried normaliser), P = exp(w - L), dS = P (dy V^T - Delta), and
dv = P^T dy, dk = scale dS^T q, dq = scale dS k. One program per key block (dk, dv, and the column sums of dS for
the decay) loops over the query blocks that see it; one per query block (dq) over its keys; each splits its loop
into masked (diagonal, or past T / S) and unmasked blocks. Decay: dG = dL at the query positions (the rows of dS sum
to dL_i, the softmax weights to 1) minus the column sums of dS.

Precision as triton_attention.py: exact fp32 / fp64 products (``input_precision="ieee"``); q, k, v all bf16 (or all
fp16) on CUDA take the half path (tensor-core products, P and dS rounded to the half dtype as operands, m, l, L and
the accumulators fp32); fp16 runs that path under the interpreter too, bf16 the exact one there. Tiles: the same
``TILES`` as triton_attention (not autotuned). torch.compile: ``dsfc::softmax_fwd`` / ``dsfc::softmax_bwd`` custom
ops with fake functions and ``register_autograd``.

Status: checked under ``TRITON_INTERPRET=1`` against a float64 formula (forward, both outputs' gradients w.r.t. q,
k, v and the decay; fp16 half path) and compiled for sm_90 by ``tests/triton/aot_compile.py --softmax-only``; not yet
timed on a GPU. No column weight: a plan with one keeps the two-pass kernels.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types

from typing import Optional

import torch

import triton
import triton.language as tl

from dsfc.runtime import triton_attention
from dsfc.runtime.dispatch import eager_inference, refuse_double_backward
from dsfc.runtime.triton_attention import (
    _HALF_CODES,
    _block_coords,
    _check_decay,
    _check_device,
    _check_shapes,
    _decay_grad,
    _dot,
    _load,
    _operand,
    _operand_dtype,
    _query_decay,
    _scalar,
    _stats_dtype,
    _store,
)

__all__ = ["softmax_attention_triton", "softmax_kernel_for"]


@triton.jit
def _scores(q, k, gq, gk, scale, HAS_DECAY: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """scale q k^T (+ G_i - G_j, subtracted in fp64 and then cast) [BM, BN] in DTYPE, unmasked."""
    w = _dot(q, tl.trans(k), HALF, DTYPE) * scale
    if HAS_DECAY:
        w += (gq[:, None] - gk[None, :]).to(DTYPE)
    return w


@triton.jit
def _visible(w, qi, kj, T, S):
    """w with -inf where key kj is not visible to query qi (after it, or beyond S or T)."""
    visible = (kj[None, :] <= (S - T) + qi[:, None]) & (kj[None, :] < S) & (qi[:, None] < T)
    return tl.where(visible, w, float("-inf"))


@triton.jit
def _fwd_step(acc, m, l, q, gq, k_ptr, v_ptr, g_ptr, b, g, qi, n0, T, S, G, scale, K: tl.constexpr,
              V: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, MASKED: tl.constexpr,
              HAS_DECAY: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """One key block [n0, n0 + BN) folded into the running (acc, m, l) of FlashAttention-2 (MASKED: the causal /
    bounds mask; unmasked blocks are wholly visible to every query of the block)."""
    kj = n0 + tl.arange(0, BN)
    mkj = kj < S
    k_rows = (b * S + kj) * G + g
    k = _operand(_load(k_ptr, k_rows, mkj, K, BK), HALF, DTYPE)
    gk = tl.load(g_ptr + k_rows, mask=mkj, other=0.0) if HAS_DECAY else tl.zeros((BN,), tl.float64)
    w = _scores(q, k, gq, gk, scale, HAS_DECAY, HALF, DTYPE)
    if MASKED:
        w = _visible(w, qi, kj, T, S)
    m_new = tl.maximum(m, tl.max(w, axis=1))
    if MASKED:
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet (or beyond T)
    else:
        shift = m_new
    grow = tl.exp(m - shift)  # rescales what was summed under the old maximum (0 while it was -inf)
    p = tl.exp(w - shift[:, None])  # in [0, 1]
    l = l * grow + tl.sum(p, axis=1)
    v = _operand(_load(v_ptr, k_rows, mkj, V, BV), HALF, DTYPE)
    acc = acc * grow[:, None] + _dot(p, v, HALF, DTYPE)
    return acc, m_new, l


@triton.jit
def _softmax_fwd(q_ptr, k_ptr, v_ptr, g_ptr, y_ptr, L_ptr, T, S, G, K: tl.constexpr, V: tl.constexpr, scale_ptr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr,
                 HALF: tl.constexpr, DTYPE: tl.constexpr):
    """One block of BM queries of one (b, g): y [BM, V] (y's dtype) and L [BM] (DTYPE)."""
    scale = tl.load(scale_ptr)  # a pointer: a Python float argument would be rounded to fp32
    i_q, b, g, qi = _block_coords(tl.cdiv(T, BM), G, BM)
    mq = qi < T
    q_rows = (b * T + qi) * G + g
    q = _operand(_load(q_ptr, q_rows, mq, K, BK), HALF, DTYPE)
    gq = _query_decay(g_ptr, b, g, qi, mq, T, S, G, HAS_DECAY)
    m = tl.full((BM,), float("-inf"), DTYPE)
    acc = tl.zeros((BM, BV), DTYPE)
    l = tl.zeros((BM,), DTYPE)
    # keys [0, full) are visible to the block's first query, hence to all of them; [full, end) the diagonal blocks
    full = (S - T + i_q * BM + 1) // BN * BN
    end = tl.minimum(S, S - T + (i_q + 1) * BM)
    for n0 in range(0, full, BN):
        acc, m, l = _fwd_step(acc, m, l, q, gq, k_ptr, v_ptr, g_ptr, b, g, qi, n0, T, S, G, scale, K, V, BN, BK,
                              BV, False, HAS_DECAY, HALF, DTYPE)
    for n0 in range(full, end, BN):
        acc, m, l = _fwd_step(acc, m, l, q, gq, k_ptr, v_ptr, g_ptr, b, g, qi, n0, T, S, G, scale, K, V, BN, BK,
                              BV, True, HAS_DECAY, HALF, DTYPE)
    l = tl.where(mq, l, 1.0)  # every query sees itself: l >= 1 for the rows < T
    m = tl.where(mq, m, 0.0)
    _store(y_ptr, acc / l[:, None], q_rows, mq, V, BV)
    tl.store(L_ptr + q_rows, m + tl.log(l), mask=mq)


@triton.jit
def _bwd_rows(q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, qi, T, S, G, K: tl.constexpr, V: tl.constexpr,
              BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """Queries qi of one (b, g) for the backward: rows, mask, q [BM, BK] and dy [BM, BV] as operands, L and Delta
    [BM] (DTYPE), the queries' cumulative log-decay [BM] (fp64)."""
    mq = qi < T
    q_rows = (b * T + qi) * G + g
    q = _operand(_load(q_ptr, q_rows, mq, K, BK), HALF, DTYPE)
    dy = _operand(_load(dy_ptr, q_rows, mq, V, BV), HALF, DTYPE)
    L = tl.load(L_ptr + q_rows, mask=mq, other=0.0).to(DTYPE)
    D = tl.load(D_ptr + q_rows, mask=mq, other=0.0).to(DTYPE)
    gq = _query_decay(g_ptr, b, g, qi, mq, T, S, G, HAS_DECAY)
    return q_rows, mq, q, dy, L, D, gq


@triton.jit
def _kv_step(dk, dv, dcol, k, v, gk, kj, q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, m0, T, S, G, scale,
             K: tl.constexpr, V: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
             MASKED: tl.constexpr, HAS_DECAY: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """One query block [m0, m0 + BM) folded into a key block's dk, dv and column sums of dS (MASKED: the causal /
    bounds mask; unmasked blocks lie inside T and see every key of the block)."""
    qi = m0 + tl.arange(0, BM)
    q_rows, mq, q, dy, L, D, gq = _bwd_rows(q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, qi, T, S, G, K, V, BK, BV,
                                            HAS_DECAY, HALF, DTYPE)
    w = _scores(q, k, gq, gk, scale, HAS_DECAY, HALF, DTYPE)
    if MASKED:
        w = _visible(w, qi, kj, T, S)
    p = tl.exp(w - L[:, None])  # the softmax weights, 0 where masked
    dv += _dot(tl.trans(p), dy, HALF, DTYPE)
    ds = p * (_dot(dy, tl.trans(v), HALF, DTYPE) - D[:, None])
    dk += _dot(tl.trans(ds), q, HALF, DTYPE) * scale
    if HAS_DECAY:
        dcol += tl.sum(ds, axis=0)
    return dk, dv, dcol


@triton.jit
def _softmax_bwd_kv(q_ptr, k_ptr, v_ptr, g_ptr, L_ptr, D_ptr, dy_ptr, dk_ptr, dv_ptr, dcol_ptr, T, S, G,
                    K: tl.constexpr, V: tl.constexpr, scale_ptr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr, HALF: tl.constexpr,
                    DTYPE: tl.constexpr):
    """dk, dv (and with the decay the column sums of dS) of one block of BN keys of one (b, g), over the query
    blocks that see it."""
    scale = tl.load(scale_ptr)
    i_k, b, g, kj = _block_coords(tl.cdiv(S, BN), G, BN)
    n0 = i_k * BN
    mkj = kj < S
    k_rows = (b * S + kj) * G + g
    k = _operand(_load(k_ptr, k_rows, mkj, K, BK), HALF, DTYPE)
    v = _operand(_load(v_ptr, k_rows, mkj, V, BV), HALF, DTYPE)
    gk = tl.load(g_ptr + k_rows, mask=mkj, other=0.0) if HAS_DECAY else tl.zeros((BN,), tl.float64)
    dk = tl.zeros((BN, BK), DTYPE)
    dv = tl.zeros((BN, BV), DTYPE)
    dcol = tl.zeros((BN,), DTYPE)
    # query i sees key j iff i >= j - (S - T): the first query block that sees the block's first key; from `full`
    # on, every query sees the block's last key (hence all of it); the blocks past T // BM * BM hold rows >= T
    first = tl.maximum(n0 - (S - T), 0) // BM * BM
    full = tl.minimum(tl.cdiv(tl.maximum(n0 + BN - 1 - (S - T), 0), BM) * BM, T)
    t_full = T // BM * BM
    if HALF == 0:  # the exact path: one masked loop (the three copies of the step spilled ~1 KB at fp32 32 x 32)
        for m0 in range(first, T, BM):
            dk, dv, dcol = _kv_step(dk, dv, dcol, k, v, gk, kj, q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, m0, T, S,
                                    G, scale, K, V, BM, BK, BV, True, HAS_DECAY, HALF, DTYPE)
    else:
        for m0 in range(first, full, BM):
            dk, dv, dcol = _kv_step(dk, dv, dcol, k, v, gk, kj, q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, m0, T, S,
                                    G, scale, K, V, BM, BK, BV, True, HAS_DECAY, HALF, DTYPE)
        for m0 in range(full, t_full, BM):
            dk, dv, dcol = _kv_step(dk, dv, dcol, k, v, gk, kj, q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, m0, T, S,
                                    G, scale, K, V, BM, BK, BV, False, HAS_DECAY, HALF, DTYPE)
        for m0 in range(tl.maximum(full, t_full), T, BM):
            dk, dv, dcol = _kv_step(dk, dv, dcol, k, v, gk, kj, q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, m0, T, S,
                                    G, scale, K, V, BM, BK, BV, True, HAS_DECAY, HALF, DTYPE)
    _store(dk_ptr, dk, k_rows, mkj, K, BK)
    _store(dv_ptr, dv, k_rows, mkj, V, BV)
    if HAS_DECAY:
        tl.store(dcol_ptr + k_rows, dcol, mask=mkj)


@triton.jit
def _q_step(dq, q, dy, L, D, gq, qi, k_ptr, v_ptr, g_ptr, b, g, n0, T, S, G, scale, K: tl.constexpr,
            V: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, MASKED: tl.constexpr,
            HAS_DECAY: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """One key block [n0, n0 + BN) folded into a query block's dq (MASKED as in _fwd_step)."""
    kj = n0 + tl.arange(0, BN)
    mkj = kj < S
    k_rows = (b * S + kj) * G + g
    k = _operand(_load(k_ptr, k_rows, mkj, K, BK), HALF, DTYPE)
    v = _operand(_load(v_ptr, k_rows, mkj, V, BV), HALF, DTYPE)
    gk = tl.load(g_ptr + k_rows, mask=mkj, other=0.0) if HAS_DECAY else tl.zeros((BN,), tl.float64)
    w = _scores(q, k, gq, gk, scale, HAS_DECAY, HALF, DTYPE)
    if MASKED:
        w = _visible(w, qi, kj, T, S)
    p = tl.exp(w - L[:, None])
    ds = p * (_dot(dy, tl.trans(v), HALF, DTYPE) - D[:, None])
    return dq + _dot(ds, k, HALF, DTYPE) * scale


@triton.jit
def _softmax_bwd_q(q_ptr, k_ptr, v_ptr, g_ptr, L_ptr, D_ptr, dy_ptr, dq_ptr, T, S, G, K: tl.constexpr,
                   V: tl.constexpr, scale_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, HAS_DECAY: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """dq of one block of BM queries of one (b, g), over the keys they see (rows >= T are computed but not
    stored: each row of dq is its own)."""
    scale = tl.load(scale_ptr)
    i_q, b, g, qi = _block_coords(tl.cdiv(T, BM), G, BM)
    q_rows, mq, q, dy, L, D, gq = _bwd_rows(q_ptr, dy_ptr, L_ptr, D_ptr, g_ptr, b, g, qi, T, S, G, K, V, BK, BV,
                                            HAS_DECAY, HALF, DTYPE)
    dq = tl.zeros((BM, BK), DTYPE)
    full = (S - T + i_q * BM + 1) // BN * BN
    end = tl.minimum(S, S - T + (i_q + 1) * BM)
    for n0 in range(0, full, BN):
        dq = _q_step(dq, q, dy, L, D, gq, qi, k_ptr, v_ptr, g_ptr, b, g, n0, T, S, G, scale, K, V, BN, BK, BV,
                     False, HAS_DECAY, HALF, DTYPE)
    for n0 in range(full, end, BN):
        dq = _q_step(dq, q, dy, L, D, gq, qi, k_ptr, v_ptr, g_ptr, b, g, n0, T, S, G, scale, K, V, BN, BK, BV,
                     True, HAS_DECAY, HALF, DTYPE)
    _store(dq_ptr, dq, q_rows, mq, K, BK)


# ---- launches ----------------------------------------------------------------------------------------------------


def _forward(q, k, v, gdec, scale: float):
    """(y [B, T, G, V] in q's dtype, L [B, T, G] in the stats dtype); gdec [B, S, G] fp64, empty: no decay."""
    B, T, G, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    y = q.new_empty((B, T, G, V))
    L = q.new_empty((B, T, G), dtype=_stats_dtype(q.dtype))
    c = triton_attention._constexprs(q, v, gdec, gdec, gdec, "fwd")
    del c["HAS_ROW"], c["HAS_COL"]
    _softmax_fwd[(B * G * triton.cdiv(T, c["BM"]),)](q, k, v, gdec if gdec.numel() else L, y, L, T, S, G, K, V,
                                                     _scalar(scale, q.dtype, q.device), **c)
    return y, L


def _backward(q, k, v, gdec, L, delta, dy, scale: float):
    """(dq, dk, dv, dcol): dcol_j = sum_i dS_ij [B, S, G] in the stats dtype with a decay, else empty."""
    B, T, G, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    c_kv, c_q = (triton_attention._constexprs(q, v, gdec, gdec, gdec, which) for which in ("bwd_kv", "bwd_q"))
    for c in (c_kv, c_q):
        del c["HAS_ROW"], c["HAS_COL"]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    decay = gdec.numel() > 0
    dcol = q.new_empty((B, S, G) if decay else (0,), dtype=_stats_dtype(q.dtype))
    g = gdec if decay else L  # never read without the decay
    scale_t = _scalar(scale, q.dtype, q.device)
    _softmax_bwd_kv[(B * G * triton.cdiv(S, c_kv["BN"]),)](q, k, v, g, L, delta, dy, dk, dv, dcol if decay else L,
                                                           T, S, G, K, V, scale_t, **c_kv)
    _softmax_bwd_q[(B * G * triton.cdiv(T, c_q["BM"]),)](q, k, v, g, L, delta, dy, dq, T, S, G, K, V, scale_t,
                                                         **c_q)
    return dq, dk, dv, dcol


# ---- custom ops ----------------------------------------------------------------------------------------------------


def _softmax_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gdec: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v, gdec = (x.contiguous() for x in (q, k, v, gdec))
    return _forward(q, k, v, gdec, scale)


_softmax_fwd_op = torch.library.custom_op("dsfc::softmax_fwd", mutates_args=())(_softmax_fwd_impl)


@_softmax_fwd_op.register_fake
def _(q, k, v, gdec, scale):
    return q.new_empty((*q.shape[:3], v.shape[-1])), q.new_empty(q.shape[:3], dtype=_stats_dtype(q.dtype))


@torch.library.custom_op("dsfc::softmax_bwd", mutates_args=())
def _softmax_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gdec: torch.Tensor, L: torch.Tensor,
                    delta: torch.Tensor, dy: torch.Tensor,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, gdec, L, delta, dy = (x.contiguous() for x in (q, k, v, gdec, L, delta, dy))
    return _backward(q, k, v, gdec, L, delta, dy, scale)


@_softmax_bwd_op.register_fake
def _(q, k, v, gdec, L, delta, dy, scale):
    shape = (*k.shape[:3],) if gdec.numel() else (0,)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(shape, dtype=_stats_dtype(q.dtype)))


def _softmax_setup(ctx, inputs, output):
    q, k, v, gdec, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, gdec, *output)


def _softmax_backward(ctx, dy, dL):
    q, k, v, gdec, y, L = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(y)
    # Delta_i = dy_i . y_i - dL_i in the stats dtype (the half path's dy and y are bf16 / fp16)
    delta = (dy.to(L.dtype) * y.to(L.dtype)).sum(-1)
    if dL is not None:
        delta = delta - dL.to(L.dtype)
    dq, dk, dv, dcol = _softmax_bwd_op(q, k, v, gdec, L, delta, dy.to(y.dtype), ctx.scale)
    dgdec = None
    if gdec.numel():
        dgdec = _decay_grad(gdec, dcol, dL if dL is not None else torch.zeros_like(L))
    return dq, dk, dv, dgdec, None


_softmax_fwd_op.register_autograd(_softmax_backward, setup_context=_softmax_setup)
refuse_double_backward(_softmax_bwd_op, "softmax attention")


# ---- the drop-in -------------------------------------------------------------------------------------------------


def softmax_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                             gcum: Optional[torch.Tensor] = None, *,
                             out_dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, L)``: causal softmax attention over a KV cache and its row log-sum-exp in one pass, the same numbers as
    ``kernel_log_sum_triton(q, k, scale, True, gcum)`` then ``kernel_attention_triton(q, k, v, -L, None, scale,
    gcum)``. q [B, T, G, K], k [B, S, G, K], v [B, S, G, V] (S >= T), gcum [B, S, G] the cumulative log-decay (read
    in fp64) or None. y [B, T, G, V] and L [B, T, G] in ``out_dtype`` (default: the inputs' promoted dtype).
    Differentiable w.r.t. q, k, v and gcum, through y and L. CUDA tensors, or CPU under ``TRITON_INTERPRET=1``."""
    name = "softmax_attention_triton"
    _check_shapes(name, q, k, v, None, None)
    _check_decay(name, k, gcum)
    _check_device(name, q, k, v, gcum)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype) if out_dtype is None else out_dtype
    B, T, G, _ = q.shape
    if T == 0 or B == 0 or G == 0:
        return q.new_zeros((B, T, G, v.shape[-1]), dtype=dtype), q.new_zeros((B, T, G), dtype=dtype)
    operands = _operand_dtype(q, k, v)
    args = [x.to(operands) for x in (q, k, v)]
    args.append(q.new_empty(0, dtype=torch.float64) if gcum is None else gcum.to(torch.float64))
    forward = _softmax_fwd_impl if eager_inference(*args) else _softmax_fwd_op
    y, L = forward(*args, float(scale))
    return y.to(dtype), L.to(dtype)


def softmax_kernel_for(io_dtype: torch.dtype):
    """``softmax_attention_triton`` for a caller computing in fp32 on data of precision ``io_dtype`` (as
    ``triton_attention.triton_kernels_for``): a half ``io_dtype`` hands q, k, v to the kernels in that dtype (the
    tensor-core path) and returns y and L in the callers' promoted dtype (L never rounded to half)."""
    if io_dtype not in _HALF_CODES:
        return softmax_attention_triton

    def fused(q, k, v, scale, gcum=None):
        out = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        return softmax_attention_triton(q.to(io_dtype), k.to(io_dtype), v.to(io_dtype), scale, gcum, out_dtype=out)

    return fused
