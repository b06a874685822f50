"""Triton kernels for the quadratic (kernelised) attention family: ``kernel_attention_triton`` and
``kernel_log_sum_triton``, drop-ins for ``dsfc.runtime.kernelised``'s torch functions (same arguments, results and
gradients)::

    y_i = sum_(j visible to i) exp(scale q_i . k_j + row_i + col_j) v_j         (kernel_attention)
    L_i = log sum_(j visible to i) exp(scale x_i . y_j)                          (kernel_log_sum, history=True)

q [B, T, G, K]; k [B, S, G, K], v [B, S, G, V], row [B, T, G], col [B, S, G] or None. S >= T: the first S - T keys
are a KV cache, and query i is step S - T + i, so it sees the keys j <= S - T + i.

Forward (FlashAttention's schedule): one program per (block of BM queries, b, g) walks the key blocks its queries
can see with a running row maximum m_i of the log-weights, rescaling its accumulator when the maximum grows, so
every exp argument is <= 0 and nothing [T, S]-sized is ever stored; ``y = exp(m) * acc`` at the end (the torch
version's shift, exact). ``kernel_log_sum`` is the same walk summing the weights: ``L = m + log(sum)``.

Backward (recomputation, FlashAttention-2's split): the forward keeps only m [B, T, G]; the weights
``P_ij = exp(w_ij - m_i)`` are recomputed from q and k. One program per key block accumulates dk, dv and dcol over
the query blocks that see it; one per query block accumulates dq; ``drow_i = sum_j dw_ij = dy_i . y_i`` is one
torch reduction. ``kernel_log_sum``'s gradient is the same pair of kernels with v = 1, row = -L and m = 0
(dL_i / dw_ij is the softmax weight ``exp(w_ij - L_i)``).

Precision: the compute dtype is fp32 (fp64 for fp64 inputs), products exact (``input_precision="ieee"``: no TF32).
torch.compile: ``torch.library.custom_op`` s (``dsfc::attention_fwd`` / ``_bwd``, ``dsfc::log_sum_fwd``) with fake
(shape) functions and ``register_autograd``, as the scan kernels have; eager inference calls the implementations
directly (``dsfc.runtime.dispatch``).

Status: checked against a naive float64 formula and scaled_dot_product_attention under ``TRITON_INTERPRET=1``, and
compiled for sm_90 by ``tests/triton/aot_compile.py`` (triton 3.6 and 3.9); not yet run or timed on a GPU. Block
sizes are fixed (16 under the interpreter, 32 on a GPU), not autotuned; the products are exact fp32 (fp64), so on a
GPU these kernels do not use tensor cores: correct and memory-linear in T, not FlashAttention's speed.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types

import os
from typing import Optional

import torch

import triton
import triton.language as tl

from dsfc.runtime.dispatch import eager_inference
from dsfc.runtime.kernelised import kernel_log_sum

__all__ = ["kernel_attention_triton", "kernel_log_sum_triton"]

BLOCK = 16  # queries and keys per block under the interpreter (tl.dot's smallest tile)
BLOCK_CUDA = 32  # on a GPU, at 8 warps: ptxas (tests/triton/aot_compile.py --resources) spills kilobytes at 64 x 64
# with these exact fp32 products (no tensor cores) and <= 172 bytes at 32 x 32


@triton.jit
def _weights(q, k, row, col, qi, kj, T, S, scale):
    """Log-weights [BM, BN] = scale q k^T + row + col, -inf where key kj is not visible to query qi (after it, or
    beyond S or T)."""
    w = tl.dot(q, tl.trans(k), input_precision="ieee") * scale + row[:, None] + col[None, :]
    visible = (kj[None, :] <= (S - T) + qi[:, None]) & (kj[None, :] < S) & (qi[:, None] < T)
    return tl.where(visible, w, float("-inf"))


@triton.jit
def _block_coords(n_blocks, G, BLOCK_N: tl.constexpr):
    """(block index, b, g, the block's rows [BLOCK_N]) of this program on a flat grid of B * G * n_blocks."""
    pid = tl.program_id(0)
    i = pid % n_blocks
    i_bg = (pid // n_blocks).to(tl.int64)
    return i, i_bg // G, i_bg % G, i * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _load(ptr, rows, m_rows, width, BW: tl.constexpr, DTYPE: tl.constexpr):
    """[len(rows), BW] of a row-major [*, width] array (zero beyond the rows' mask and the width)."""
    cols = tl.arange(0, BW)
    mask = m_rows[:, None] & (cols < width)[None, :]
    return tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(DTYPE)


@triton.jit
def _key_block(k_ptr, v_ptr, col_ptr, b, g, kj, S, G, K, V, BK: tl.constexpr, BV: tl.constexpr,
               HAS_COL: tl.constexpr, DTYPE: tl.constexpr):
    """Keys kj of one (b, g): their rows of the [B, S, G, *] arrays and mask, k [BN, BK], v [BN, BV], col [BN]."""
    mkj = kj < S
    k_rows = (b * S + kj) * G + g
    k = _load(k_ptr, k_rows, mkj, K, BK, DTYPE)
    v = _load(v_ptr, k_rows, mkj, V, BV, DTYPE)
    col = tl.load(col_ptr + k_rows, mask=mkj, other=0.0).to(DTYPE) if HAS_COL else tl.zeros(kj.shape, DTYPE)
    return k_rows, mkj, k, v, col


@triton.jit
def _query_block(q_ptr, row_ptr, m_ptr, dy_ptr, b, g, qi, T, G, K, V, BK: tl.constexpr, BV: tl.constexpr,
                 HAS_ROW: tl.constexpr, DTYPE: tl.constexpr):
    """Queries qi of one (b, g) for the backward: rows and mask, q [BM, BK], row and the forward's row maxima m
    [BM], and dy [BM, BV] scaled by exp(m) (y = exp(m) sum_j p_ij v_j with p_ij = exp(w_ij - m_i) <= 1)."""
    mq = qi < T
    q_rows = (b * T + qi) * G + g
    q = _load(q_ptr, q_rows, mq, K, BK, DTYPE)
    row = tl.load(row_ptr + q_rows, mask=mq, other=0.0).to(DTYPE) if HAS_ROW else tl.zeros(qi.shape, DTYPE)
    m = tl.load(m_ptr + q_rows, mask=mq, other=0.0).to(DTYPE)
    dy = _load(dy_ptr, q_rows, mq, V, BV, DTYPE) * tl.exp(m)[:, None]
    return q_rows, mq, q, row, m, dy


@triton.jit
def _attn_fwd(q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, y_ptr, m_ptr, T, S, G, K, V, scale_ptr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_ROW: tl.constexpr,
              HAS_COL: tl.constexpr, LSE: tl.constexpr, DTYPE: tl.constexpr):
    """One block of BM queries of one (b, g): y [BM, V] and the row maxima m [BM] (LSE: L = m + log(sum) [BM])."""
    scale = tl.load(scale_ptr)  # a pointer: a Python float argument would be rounded to fp32
    i_q, b, g, qi = _block_coords(tl.cdiv(T, BM), G, BM)
    mq = qi < T
    q_rows = (b * T + qi) * G + g  # rows of the [B, T, G, *] arrays
    q = _load(q_ptr, q_rows, mq, K, BK, DTYPE)
    row = tl.load(row_ptr + q_rows, mask=mq, other=0.0).to(DTYPE) if HAS_ROW else tl.zeros((BM,), DTYPE)
    m = tl.full((BM,), float("-inf"), DTYPE)
    acc = tl.zeros((BM, BV), DTYPE)
    total = tl.zeros((BM,), DTYPE)
    end = tl.minimum(S, S - T + (i_q + 1) * BM)  # the keys the block's last query sees
    for n0 in range(0, end, BN):
        kj = n0 + tl.arange(0, BN)
        mkj = kj < S
        k_rows = (b * S + kj) * G + g
        k = _load(k_ptr, k_rows, mkj, K, BK, DTYPE)
        col = tl.load(col_ptr + k_rows, mask=mkj, other=0.0).to(DTYPE) if HAS_COL else tl.zeros((BN,), DTYPE)
        w = _weights(q, k, row, col, qi, kj, T, S, scale)
        m_new = tl.maximum(m, tl.max(w, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet (or beyond T)
        grow = tl.exp(m - shift)  # rescales what was summed under the old maximum (0 while it was -inf)
        p = tl.exp(w - shift[:, None])
        if LSE:
            total = total * grow + tl.sum(p, axis=1)
        else:
            v = _load(v_ptr, k_rows, mkj, V, BV, DTYPE)
            acc = acc * grow[:, None] + tl.dot(p, v, input_precision="ieee")
        m = m_new
    m = tl.where(m == float("-inf"), 0.0, m)
    if LSE:
        tl.store(y_ptr + q_rows, m + tl.log(tl.where(mq, total, 1.0)), mask=mq)  # (rows beyond T: no log(0))
    else:
        cols = tl.arange(0, BV)
        tl.store(y_ptr + q_rows[:, None] * V + cols[None, :], acc * tl.exp(m)[:, None],
                 mask=mq[:, None] & (cols < V)[None, :])
        tl.store(m_ptr + q_rows, m, mask=mq)


@triton.jit
def _attn_bwd_kv(q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, m_ptr, dy_ptr, dk_ptr, dv_ptr, dcol_ptr, T, S, G, K, V,
                 scale_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, DTYPE: tl.constexpr):
    """dk, dv, dcol of one block of BN keys of one (b, g), over the query blocks that see it."""
    scale = tl.load(scale_ptr)  # a pointer: a Python float argument would be rounded to fp32
    i_k, b, g, kj = _block_coords(tl.cdiv(S, BN), G, BN)
    k_rows, mkj, k, v, col = _key_block(k_ptr, v_ptr, col_ptr, b, g, kj, S, G, K, V, BK, BV, HAS_COL, DTYPE)
    dk = tl.zeros((BN, BK), DTYPE)
    dv = tl.zeros((BN, BV), DTYPE)
    dcol = tl.zeros((BN,), DTYPE)
    first = tl.maximum(i_k * BN - (S - T), 0) // BM * BM  # the first query that sees the block's first key
    for m0 in range(first, T, BM):
        q_rows, mq, q, row, m, dy = _query_block(q_ptr, row_ptr, m_ptr, dy_ptr, b, g, m0 + tl.arange(0, BM), T, G,
                                                 K, V, BK, BV, HAS_ROW, DTYPE)
        qi = m0 + tl.arange(0, BM)
        p = tl.exp(_weights(q, k, row, col, qi, kj, T, S, scale) - m[:, None])  # <= 1; 0 where not visible
        dv += tl.dot(tl.trans(p), dy, input_precision="ieee")
        dw = p * tl.dot(dy, tl.trans(v), input_precision="ieee")  # dL/dw_ij = P_ij dy_i . v_j
        dk += tl.dot(tl.trans(dw), q, input_precision="ieee") * scale
        dcol += tl.sum(dw, axis=0)
    cols_k = tl.arange(0, BK)
    cols_v = tl.arange(0, BV)
    tl.store(dk_ptr + k_rows[:, None] * K + cols_k[None, :], dk, mask=mkj[:, None] & (cols_k < K)[None, :])
    tl.store(dv_ptr + k_rows[:, None] * V + cols_v[None, :], dv, mask=mkj[:, None] & (cols_v < V)[None, :])
    if HAS_COL:
        tl.store(dcol_ptr + k_rows, dcol, mask=mkj)


@triton.jit
def _attn_bwd_q(q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, m_ptr, dy_ptr, dq_ptr, T, S, G, K, V, scale_ptr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_ROW: tl.constexpr,
                HAS_COL: tl.constexpr, DTYPE: tl.constexpr):
    """dq of one block of BM queries of one (b, g), over the keys they see."""
    scale = tl.load(scale_ptr)  # a pointer: a Python float argument would be rounded to fp32
    i_q, b, g, qi = _block_coords(tl.cdiv(T, BM), G, BM)
    q_rows, mq, q, row, m, dy = _query_block(q_ptr, row_ptr, m_ptr, dy_ptr, b, g, qi, T, G, K, V, BK, BV, HAS_ROW,
                                             DTYPE)
    dq = tl.zeros((BM, BK), DTYPE)
    end = tl.minimum(S, S - T + (i_q + 1) * BM)
    for n0 in range(0, end, BN):
        kj = n0 + tl.arange(0, BN)
        k_rows, mkj, k, v, col = _key_block(k_ptr, v_ptr, col_ptr, b, g, kj, S, G, K, V, BK, BV, HAS_COL, DTYPE)
        p = tl.exp(_weights(q, k, row, col, qi, kj, T, S, scale) - m[:, None])
        dw = p * tl.dot(dy, tl.trans(v), input_precision="ieee")
        dq += tl.dot(dw, k, input_precision="ieee") * scale
    cols = tl.arange(0, BK)
    tl.store(dq_ptr + q_rows[:, None] * K + cols[None, :], dq, mask=mq[:, None] & (cols < K)[None, :])


# ---- launches ----------------------------------------------------------------------------------------------------


def _pow2(x: int) -> int:
    return max(16, 1 << max(0, int(x) - 1).bit_length())


def _blocks(x: torch.Tensor) -> tuple[int, int]:
    b = BLOCK_CUDA if x.device.type == "cuda" else BLOCK
    return b, b


def _scalar(x: float, like: torch.Tensor) -> torch.Tensor:
    """x as a one-element tensor of ``like``'s dtype and device: triton passes a Python float as an fp32 scalar, which
    on a GPU cost fp64 runs ~1e-7 of relative error (the interpreter keeps it exact)."""
    return torch.full((1,), float(x), dtype=like.dtype, device=like.device)


def _constexprs(q, v, row, col, cdt) -> dict:
    BM, BN = _blocks(q)
    return dict(BM=BM, BN=BN, BK=_pow2(q.shape[-1]), BV=_pow2(v.shape[-1]), HAS_ROW=row.numel() > 0,
                HAS_COL=col.numel() > 0, DTYPE=tl.float64 if cdt == torch.float64 else tl.float32,
                num_warps=4 if q.device.type != "cuda" else 8)


def _forward(q, k, v, row, col, scale: float, lse: bool):
    """``(y, m)``: y [B, T, G, V] (LSE: L [B, T, G]) and the row maxima m [B, T, G], in q's dtype (the compute
    dtype). ``row`` / ``col`` empty: none."""
    B, T, G, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    y = q.new_empty((B, T, G) if lse else (B, T, G, V))
    m = q.new_empty((B, T, G))
    c = _constexprs(q, v, row, col, q.dtype)
    grid = (B * G * triton.cdiv(T, c["BM"]),)
    dummy = q
    _attn_fwd[grid](q, k, v, row if row.numel() else dummy, col if col.numel() else dummy, y, m, T, S, G, K, V,
                    _scalar(scale, q), LSE=lse, **c)
    return y, m


def _backward(q, k, v, row, col, m, dy, scale: float):
    """``(dq, dk, dv, dcol)`` (dcol empty without col) through y = sum_j exp(w_ij) v_j, given the forward's m."""
    B, T, G, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    c = _constexprs(q, v, row, col, q.dtype)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dcol = torch.empty_like(col)
    dummy = q
    args = (q, k, v, row if row.numel() else dummy, col if col.numel() else dummy, m, dy)
    _attn_bwd_kv[(B * G * triton.cdiv(S, c["BN"]),)](*args, dk, dv, dcol if col.numel() else dummy, T, S, G, K, V,
                                                       _scalar(scale, q), **c)
    _attn_bwd_q[(B * G * triton.cdiv(T, c["BM"]),)](*args, dq, T, S, G, K, V, _scalar(scale, q), **c)
    return dq, dk, dv, dcol


# ---- custom ops (torch.compile: one opaque node per launch; autograd) --------------------------------------------


def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v, row, col = (x.contiguous() for x in (q, k, v, row, col))
    return _forward(q, k, v, row, col, scale, lse=False)


_attention_fwd_op = torch.library.custom_op("dsfc::attention_fwd", mutates_args=())(_attention_fwd)


@_attention_fwd_op.register_fake
def _(q, k, v, row, col, scale):
    return q.new_empty((*q.shape[:3], v.shape[-1])), q.new_empty(q.shape[:3])


@torch.library.custom_op("dsfc::attention_bwd", mutates_args=())
def _attention_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                      m: torch.Tensor, dy: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, row, col, m, dy = (x.contiguous() for x in (q, k, v, row, col, m, dy))
    return _backward(q, k, v, row, col, m, dy, scale)


@_attention_bwd_op.register_fake
def _(q, k, v, row, col, m, dy, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(col)


def _attention_setup(ctx, inputs, output):
    q, k, v, row, col, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, row, col, *output)


def _attention_backward(ctx, dy, dm):
    q, k, v, row, col, y, m = ctx.saved_tensors
    dq, dk, dv, dcol = _attention_bwd_op(q, k, v, row, col, m, dy, ctx.scale)
    drow = (dy * y).sum(-1) if row.numel() else None  # sum_j dL/dw_ij = dy_i . y_i
    return dq, dk, dv, drow, (dcol if col.numel() else None), None


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup)


def _log_sum_fwd(x: torch.Tensor, ys: torch.Tensor, scale: float) -> torch.Tensor:
    x, ys = x.contiguous(), ys.contiguous()
    none = x.new_empty(0)
    return _forward(x, ys, ys, none, none, scale, lse=True)[0]


_log_sum_fwd_op = torch.library.custom_op("dsfc::log_sum_fwd", mutates_args=())(_log_sum_fwd)


@_log_sum_fwd_op.register_fake
def _(x, ys, scale):
    return x.new_empty(x.shape[:3])


def _log_sum_setup(ctx, inputs, output):
    x, ys, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(x, ys, output)


def _log_sum_backward(ctx, dL):
    # dL_i / dw_ij = exp(w_ij - L_i): the attention backward with v = 1, dy = dL, row = -L and m = 0
    x, ys, L = ctx.saved_tensors
    ones = ys.new_ones((*ys.shape[:3], 1))
    dx, dys, _, _ = _attention_bwd_op(x, ys, ones, -L, x.new_empty(0), torch.zeros_like(L), dL[..., None], ctx.scale)
    return dx, dys, None


_log_sum_fwd_op.register_autograd(_log_sum_backward, setup_context=_log_sum_setup)


# ---- the drop-ins --------------------------------------------------------------------------------------------------


def _check_device(name: str, *xs):
    dev = xs[0].device
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"dsfc: {name}'s Triton kernels need CUDA tensors (got {dev.type}); on CPU set "
                           "TRITON_INTERPRET=1 before triton is imported (slow: for tests)")
    for x in xs[1:]:
        if x is not None and x.device != dev:
            raise ValueError(f"{name}: every tensor must be on {dev}, got one on {x.device}")


def _check_shapes(name: str, q, k, v, row, col):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{name}: q, k, v must be [B, T, G, K], [B, S, G, K], [B, S, G, V], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, G, K = q.shape
    S = k.shape[1]
    if k.shape != (B, S, G, K) or v.shape[:3] != (B, S, G) or S < T:
        raise ValueError(f"{name}: k must be [B, S, G, K] and v [B, S, G, V] with S >= T for q {tuple(q.shape)}, "
                         f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if row is not None and tuple(row.shape) != (B, T, G):
        raise ValueError(f"{name}: row must be [B, T, G] = {(B, T, G)}, got {tuple(row.shape)}")
    if col is not None and tuple(col.shape) != (B, S, G):
        raise ValueError(f"{name}: col must be [B, S, G] = {(B, S, G)}, got {tuple(col.shape)}")


def kernel_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: Optional[torch.Tensor],
                            col: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """``dsfc.runtime.kernelised.kernel_attention`` on the Triton kernels above (CUDA tensors, or CPU under
    ``TRITON_INTERPRET=1``): y_i = sum_(j <= S - T + i) exp(scale q_i . k_j + row_i + col_j) v_j, [B, T, G, V], in
    the inputs' promoted dtype (computed in fp32, or fp64). Differentiable w.r.t. q, k, v, row and col."""
    name = "kernel_attention_triton"
    _check_shapes(name, q, k, v, row, col)
    _check_device(name, q, k, v, row, col)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    B, T, G, _ = q.shape
    if T == 0 or B == 0 or G == 0:
        return q.new_zeros((B, T, G, v.shape[-1]), dtype=dtype)
    none = q.new_empty(0, dtype=cdt)
    args = [x.to(cdt) for x in (q, k, v)] + [none if x is None else x.to(cdt) for x in (row, col)]
    forward = _attention_fwd if eager_inference(*args) else _attention_fwd_op
    return forward(*args, float(scale))[0].to(dtype)


def kernel_log_sum_triton(x: torch.Tensor, ys: torch.Tensor, scale: float, history: bool) -> torch.Tensor:
    """``dsfc.runtime.kernelised.kernel_log_sum`` with its history sum (a causal log-sum-exp over [B, T, G] x
    [B, S, G]) on the Triton kernels above; without history it is one elementwise product, left to torch."""
    if not history:
        return kernel_log_sum(x, ys, scale, history)
    name = "kernel_log_sum_triton"
    _check_shapes(name, x, ys, ys, None, None)
    _check_device(name, x, ys)
    dtype = torch.promote_types(x.dtype, ys.dtype)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    B, T, G, _ = x.shape
    if T == 0 or B == 0 or G == 0:
        return x.new_zeros((B, T, G), dtype=dtype)
    args = [x.to(cdt), ys.to(cdt)]
    forward = _log_sum_fwd if eager_inference(*args) else _log_sum_fwd_op
    return forward(*args, float(scale)).to(dtype)
