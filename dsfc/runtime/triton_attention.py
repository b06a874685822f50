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

Decay (FoX, ALiBi; HAS_DECAY): ``gcum`` [B, S, G] in fp64, the cumulative log-decay G over the key positions; the
log-weights gain G_(S-T+i) - G_j, subtracted in fp64 per tile and then cast, so a long strongly-decaying sequence
(|G| ~ 1e5) loses nothing to cancellation. Its gradient needs no kernel of its own: dG is the row sums of dW at the
query positions (dy_i . y_i; dL_i for the log-sum) minus the column sums dcol_j that the dk / dv kernel stores.

Precision: the compute dtype is fp32 (fp64 for fp64 inputs), products exact (``input_precision="ieee"``: no TF32).
With q, k, v all bf16 (or all fp16) on CUDA the kernels take the half path (HALF_DOTS, FlashAttention-2's
arithmetic): q, k, v are read in that dtype (no fp32 copies), ``q k^T`` and ``P v`` are tensor-core products of
bf16 / fp16 operands accumulating in fp32, P = exp(w - m) in [0, 1] rounded to the half dtype as an operand; the
row maxima, sums, log-sums, row / col weights and accumulators stay fp32. The backward rounds its operands likewise
(P, dW, q, k and dy as given; P = exp(w) itself rather than exp(w - m), so that dy is not scaled by exp(m) in fp16);
dq, dk, dv and y are stored in the half dtype, m and L in fp32 (``kernel_log_sum_triton`` rounds L to the inputs'
dtype on return unless given ``out_dtype``). fp16 weights exp(w) beyond 65504 overflow (bf16 has fp32's range). Under
the interpreter fp16 runs this path (numpy's fp32 matmul of fp16 operands: the same arithmetic); bf16 takes the exact
path there (the interpreter's bf16 tl.dot is wrong: no numpy bf16).
Softmax (row = -L, L the log-sum of the same scores, no col): dsfc/runtime/triton_softmax.py computes y and L in one
fused pass with these helpers and tiles; the generated modules call it there instead of the two passes here.
torch.compile: ``torch.library.custom_op`` s (``dsfc::attention_fwd`` / ``_bwd``, ``dsfc::log_sum_fwd``) with fake
(shape) functions and ``register_autograd``, as the scan kernels have; eager inference calls the implementations
directly (``dsfc.runtime.dispatch``).

Status: the exact path is checked against a naive float64 formula and scaled_dot_product_attention under
``TRITON_INTERPRET=1``, compiled for sm_90 by ``tests/triton/aot_compile.py`` (triton 3.6 and 3.9) and timed on an
H100 (B=8, T=4096, H=16, K=V=64, causal: 82 ms forward, 353 ms fwd+bwd; FlashAttention in bf16 0.65 / 2.5 ms):
exact fp32 products do not use tensor cores. The half path is new: checked in fp16 under the interpreter against the
float64 formula, compiled for sm_90 in bf16 and fp16 (triton 3.6 and 3.9; ptxas reports no register spills at
K = V = 64 or 128 with ``TILES["cuda_half"]``), and timed on the H100 in bf16: 2.1 ms forward, 15.5 ms fwd+bwd
(0.32x / 0.17x of FlashAttention), its output within 3.5e-3 of the exact path's. Tiles are fixed per path
(``TILES``), not autotuned; every key block is masked (no separate unmasked loop for blocks below the diagonal), and
the forward and backward walk only the blocks that hold visible pairs.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types

from typing import Optional

import torch

import triton
import triton.language as tl

from dsfc.runtime.dispatch import eager_inference, refuse_double_backward, require_triton_device
from dsfc.runtime.kernelised import kernel_log_sum

__all__ = ["kernel_attention_triton", "kernel_log_sum_triton", "triton_kernels_for"]

BLOCK = 16  # queries and keys per block under the interpreter (tl.dot's smallest tile)
HALF_DOTS = True  # q, k, v all bf16 (or all fp16) on CUDA: tensor-core products in that dtype, fp32 accumulation
# (BM queries, BN keys, num_warps) of each kernel: "interpret": 16 x 16 (tl.dot's smallest tile: fast interpreter
# runs); "cuda": the exact fp32 / fp64 products, 32 x 32 at 8 warps (ptxas spills kilobytes at 64 x 64 with them,
# <= 172 bytes at 32 x 32); "cuda_half": the tensor-core path, FlashAttention-2's shapes (its Triton tutorial's
# backward split: few queries per step for dk / dv, many resident queries for dq), checked with
# ``tests/triton/aot_compile.py --attention-only --resources`` (sm_90 registers / spills). An optional 4th entry: the
# pipeline stages. The backward's 64 x 64 tiles at 4 warps and 3 stages were the fastest of 17 measured on an H200
# (2026-11-30, bf16, B=8, T=4096, H=16, K=V=64, causal; benchmarks/softmax_tiles_sweep.py and
# benchmarks/results/nvidia-h200-softmax-tiles-2026-11-30.json): the fused softmax's dk / dv kernel 4.25 -> 1.90 ms,
# dq 1.39 -> 1.00 ms against the tutorial-like 32 x 64 / 128 x 32 at 8 warps (its 32 x 128 / 128 x 32 at 4 warps, 5
# stages: 3.09 / 1.63 ms); forward unchanged (128 x 64 at 8 warps was within 3% of the best). "cuda_half_wide":
# q / k or v wider than 64 (BK or BV = 128), not measured: the earlier tiles, which compile without spills there
# (64 x 64 dk / dv spills 0.5-1.3 KB at K = 128 in ptxas' sm_90 report; 40 bytes at K = 64, 0.35-0.85 KB with the
# decay or row / col weights)
TILES = {
    "interpret": {"fwd": (BLOCK, BLOCK, 4), "bwd_kv": (BLOCK, BLOCK, 4), "bwd_q": (BLOCK, BLOCK, 4)},
    "cuda": {"fwd": (32, 32, 8), "bwd_kv": (32, 32, 8), "bwd_q": (32, 32, 8)},
    "cuda_half": {"fwd": (128, 64, 8), "bwd_kv": (64, 64, 4, 3), "bwd_q": (64, 64, 4, 3)},
    "cuda_half_wide": {"fwd": (128, 64, 8), "bwd_kv": (32, 64, 8), "bwd_q": (128, 32, 8)},
}


@triton.jit
def _operand(x, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """x (any shape) as a tl.dot operand: bf16 (HALF = 1) or fp16 (HALF = 2) for the tensor cores, else DTYPE (the
    exact path's fp32 / fp64). A no-op for a tile loaded in that dtype."""
    if HALF == 1:
        return x.to(tl.bfloat16)
    elif HALF == 2:
        return x.to(tl.float16)
    else:
        return x.to(DTYPE)


@triton.jit
def _dot(a, b, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """a [M, N] @ b [N, P] accumulated in DTYPE (fp32, or fp64): HALF = 1 / 2, the operands rounded to bf16 / fp16
    (tensor cores, fp32 accumulator); HALF = 0, exact products (``input_precision="ieee"``: no TF32)."""
    if HALF == 0:
        return tl.dot(a.to(DTYPE), b.to(DTYPE), input_precision="ieee")
    else:
        return tl.dot(_operand(a, HALF, DTYPE), _operand(b, HALF, DTYPE), out_dtype=tl.float32)


@triton.jit
def _weights(q, k, row, col, gq, gk, qi, kj, T, S, scale, HAS_DECAY: tl.constexpr, HALF: tl.constexpr,
             DTYPE: tl.constexpr):
    """Log-weights [BM, BN] = scale q k^T + row + col (+ G_i - G_j) in DTYPE, -inf where key kj is not visible to
    query qi (after it, or beyond S or T). q [BM, BK], k [BN, BK] in the operand dtype; row [BM], col [BN] in DTYPE;
    HAS_DECAY: gq [BM], gk [BN] the cumulative log-decays in fp64, subtracted in fp64 before the cast (G itself may
    be ~1e5 after a long sequence, where fp32 would keep no digit of a difference ~1)."""
    w = _dot(q, tl.trans(k), HALF, DTYPE) * scale
    if HAS_DECAY:  # before row and col: (score + decay) rounds as in kernel_log_sum, whose L the row then cancels
        w += (gq[:, None] - gk[None, :]).to(DTYPE)
    w = w + row[:, None] + col[None, :]
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
def _tile_mask(m_rows, WIDTH: tl.constexpr, BW: tl.constexpr):
    """The mask [len(rows), BW] of a tile of rows of a [*, WIDTH] array: the rows' mask, and the columns < WIDTH
    unless the tile is the full width (a column mask stops 16-byte vector loads: one pointer and predicate per element,
    which ptxas spills at 64 x 64)."""
    if WIDTH == BW:
        return m_rows[:, None]  # (tl.load broadcasts it) constant along each row: vector loads
    else:
        return m_rows[:, None] & (tl.arange(0, BW) < WIDTH)[None, :]


@triton.jit
def _load(ptr, rows, m_rows, WIDTH: tl.constexpr, BW: tl.constexpr):
    """[len(rows), BW] of a row-major [*, WIDTH] array in its own dtype (zero beyond the rows' mask and WIDTH)."""
    cols = tl.arange(0, BW)
    return tl.load(ptr + rows[:, None] * WIDTH + cols[None, :], mask=_tile_mask(m_rows, WIDTH, BW), other=0.0)


@triton.jit
def _store(ptr, x, rows, m_rows, WIDTH: tl.constexpr, BW: tl.constexpr):
    """Writes x [len(rows), BW] to rows of a row-major [*, WIDTH] array, rounded to the array's dtype."""
    cols = tl.arange(0, BW)
    tl.store(ptr + rows[:, None] * WIDTH + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=_tile_mask(m_rows, WIDTH, BW))


@triton.jit
def _key_block(k_ptr, v_ptr, col_ptr, g_ptr, b, g, kj, S, G, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, HAS_COL: tl.constexpr, HAS_DECAY: tl.constexpr, HALF: tl.constexpr,
               DTYPE: tl.constexpr):
    """Keys kj of one (b, g): their rows of the [B, S, G, *] arrays and mask, k [BN, BK] and v [BN, BV] in the
    operand dtype, col [BN] in DTYPE, the keys' cumulative log-decay gk [BN] (fp64; 0 without decay)."""
    mkj = kj < S
    k_rows = (b * S + kj) * G + g
    k = _operand(_load(k_ptr, k_rows, mkj, K, BK), HALF, DTYPE)
    v = _operand(_load(v_ptr, k_rows, mkj, V, BV), HALF, DTYPE)
    col = tl.load(col_ptr + k_rows, mask=mkj, other=0.0).to(DTYPE) if HAS_COL else tl.zeros(kj.shape, DTYPE)
    gk = tl.load(g_ptr + k_rows, mask=mkj, other=0.0) if HAS_DECAY else tl.zeros(kj.shape, tl.float64)
    return k_rows, mkj, k, v, col, gk


@triton.jit
def _query_block(q_ptr, row_ptr, m_ptr, dy_ptr, g_ptr, b, g, qi, T, S, G, K: tl.constexpr, V: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr, HAS_ROW: tl.constexpr, HAS_DECAY: tl.constexpr,
                 HALF: tl.constexpr, DTYPE: tl.constexpr):
    """Queries qi of one (b, g) for the backward: rows and mask, q [BM, BK] (operand dtype), row and the forward's
    row maxima m [BM] (DTYPE), and dy [BM, BV] as a product operand: exact path, dy exp(m) (y = exp(m) sum_j p_ij
    v_j with p_ij = exp(w_ij - m_i) <= 1: ``_probs``); half path, dy as given (``_probs`` keeps exp(m) in P)."""
    mq = qi < T
    q_rows = (b * T + qi) * G + g
    q = _operand(_load(q_ptr, q_rows, mq, K, BK), HALF, DTYPE)
    row = tl.load(row_ptr + q_rows, mask=mq, other=0.0).to(DTYPE) if HAS_ROW else tl.zeros(qi.shape, DTYPE)
    m = tl.load(m_ptr + q_rows, mask=mq, other=0.0).to(DTYPE)
    dy = _load(dy_ptr, q_rows, mq, V, BV)
    if HALF == 0:
        dy = dy.to(DTYPE) * tl.exp(m)[:, None]
    gq = _query_decay(g_ptr, b, g, qi, mq, T, S, G, HAS_DECAY)
    return q_rows, mq, q, row, m, _operand(dy, HALF, DTYPE), gq


@triton.jit
def _query_decay(g_ptr, b, g, qi, mq, T, S, G, HAS_DECAY: tl.constexpr):
    """The queries' cumulative log-decay [BM] (fp64): query i is key position S - T + i of the [B, S, G] array."""
    if HAS_DECAY:
        return tl.load(g_ptr + (b * S + (S - T) + qi) * G + g, mask=mq, other=0.0)
    else:
        return tl.zeros(qi.shape, tl.float64)


@triton.jit
def _probs(w, m, HALF: tl.constexpr):
    """The backward's weights [BM, BN] from the log-weights w [BM, BN] and the row maxima m [BM], 0 where masked.
    Exact path: exp(w - m) <= 1 (``_query_block`` puts exp(m) into dy). Half path: exp(w) itself, FlashAttention-2's
    P, rounded to bf16 / fp16 as an operand: <= 1 in softmax use (row = -L, w = s - L), and dy stays as the caller
    gave it; folding exp(m) in [1 / S, 1] into an fp16 dy instead would push small gradients into underflow, and
    exp(m) > 1 would overflow where the weights themselves are in range."""
    if HALF == 0:
        return tl.exp(w - m[:, None])
    else:
        return tl.exp(w)


@triton.jit
def _attn_fwd(q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, g_ptr, y_ptr, m_ptr, T, S, G, K: tl.constexpr, V: tl.constexpr,
              scale_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_ROW: tl.constexpr,
              HAS_COL: tl.constexpr, HAS_DECAY: tl.constexpr, LSE: tl.constexpr, HALF: tl.constexpr,
              DTYPE: tl.constexpr):
    """One block of BM queries of one (b, g): y [BM, V] and the row maxima m [BM] (LSE: L = m + log(sum) [BM]).
    The maxima, sums and the accumulator are DTYPE; HALF: q k^T and P v take bf16 / fp16 operands."""
    scale = tl.load(scale_ptr)  # a pointer: a Python float argument would be rounded to fp32
    i_q, b, g, qi = _block_coords(tl.cdiv(T, BM), G, BM)
    mq = qi < T
    q_rows = (b * T + qi) * G + g  # rows of the [B, T, G, *] arrays
    q = _operand(_load(q_ptr, q_rows, mq, K, BK), HALF, DTYPE)
    row = tl.load(row_ptr + q_rows, mask=mq, other=0.0).to(DTYPE) if HAS_ROW else tl.zeros((BM,), DTYPE)
    gq = _query_decay(g_ptr, b, g, qi, mq, T, S, G, HAS_DECAY)
    m = tl.full((BM,), float("-inf"), DTYPE)
    acc = tl.zeros((BM, BV), DTYPE)
    total = tl.zeros((BM,), DTYPE)
    end = tl.minimum(S, S - T + (i_q + 1) * BM)  # the keys the block's last query sees: no fully masked block
    for n0 in range(0, end, BN):
        kj = n0 + tl.arange(0, BN)
        mkj = kj < S
        k_rows = (b * S + kj) * G + g
        k = _operand(_load(k_ptr, k_rows, mkj, K, BK), HALF, DTYPE)
        col = tl.load(col_ptr + k_rows, mask=mkj, other=0.0).to(DTYPE) if HAS_COL else tl.zeros((BN,), DTYPE)
        gk = tl.load(g_ptr + k_rows, mask=mkj, other=0.0) if HAS_DECAY else tl.zeros((BN,), tl.float64)
        w = _weights(q, k, row, col, gq, gk, qi, kj, T, S, scale, HAS_DECAY, HALF, DTYPE)
        m_new = tl.maximum(m, tl.max(w, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet (or beyond T)
        grow = tl.exp(m - shift)  # rescales what was summed under the old maximum (0 while it was -inf)
        p = tl.exp(w - shift[:, None])  # in [0, 1]: rounding it to bf16 / fp16 costs <= 2^-9 / 2^-12 absolute
        if LSE:
            total = total * grow + tl.sum(p, axis=1)  # the unrounded weights: L exact to fp32
        else:
            v = _operand(_load(v_ptr, k_rows, mkj, V, BV), HALF, DTYPE)
            acc = acc * grow[:, None] + _dot(p, v, HALF, DTYPE)
        m = m_new
    m = tl.where(m == float("-inf"), 0.0, m)
    if LSE:
        tl.store(y_ptr + q_rows, m + tl.log(tl.where(mq, total, 1.0)), mask=mq)  # (rows beyond T: no log(0))
    else:
        _store(y_ptr, acc * tl.exp(m)[:, None], q_rows, mq, V, BV)
        tl.store(m_ptr + q_rows, m, mask=mq)


@triton.jit
def _attn_bwd_kv(q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, g_ptr, m_ptr, dy_ptr, dk_ptr, dv_ptr, dcol_ptr, T, S, G,
                 K: tl.constexpr, V: tl.constexpr, scale_ptr, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
                 HAS_DECAY: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """dk, dv, dcol of one block of BN keys of one (b, g), over the query blocks that see it (accumulated in DTYPE;
    HALF: the products' operands, P, dW, q and dy, in bf16 / fp16). dcol_j = sum_i dw_ij is stored with col or with
    the decay (the keys' share of dG: -dcol)."""
    scale = tl.load(scale_ptr)  # a pointer: a Python float argument would be rounded to fp32
    i_k, b, g, kj = _block_coords(tl.cdiv(S, BN), G, BN)
    k_rows, mkj, k, v, col, gk = _key_block(k_ptr, v_ptr, col_ptr, g_ptr, b, g, kj, S, G, K, V, BK, BV, HAS_COL,
                                            HAS_DECAY, HALF, DTYPE)
    dk = tl.zeros((BN, BK), DTYPE)
    dv = tl.zeros((BN, BV), DTYPE)
    dcol = tl.zeros((BN,), DTYPE)
    # query i sees key j iff i >= j - (S - T): start at the block of the first query that sees the block's first
    # key (every later query sees it too), so no fully masked query block is visited
    first = tl.maximum(i_k * BN - (S - T), 0) // BM * BM
    for m0 in range(first, T, BM):
        qi = m0 + tl.arange(0, BM)
        q_rows, mq, q, row, m, dy, gq = _query_block(q_ptr, row_ptr, m_ptr, dy_ptr, g_ptr, b, g, qi, T, S, G, K, V,
                                                     BK, BV, HAS_ROW, HAS_DECAY, HALF, DTYPE)
        w = _weights(q, k, row, col, gq, gk, qi, kj, T, S, scale, HAS_DECAY, HALF, DTYPE)
        p = _probs(w, m, HALF)  # 0 where not visible
        dv += _dot(tl.trans(p), dy, HALF, DTYPE)
        dw = p * _dot(dy, tl.trans(v), HALF, DTYPE)  # dL/dw_ij = exp(w_ij) dy_i . v_j
        dk += _dot(tl.trans(dw), q, HALF, DTYPE) * scale
        dcol += tl.sum(dw, axis=0)
    _store(dk_ptr, dk, k_rows, mkj, K, BK)
    _store(dv_ptr, dv, k_rows, mkj, V, BV)
    if HAS_COL or HAS_DECAY:
        tl.store(dcol_ptr + k_rows, dcol, mask=mkj)


@triton.jit
def _attn_bwd_q(q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, g_ptr, m_ptr, dy_ptr, dq_ptr, T, S, G, K: tl.constexpr,
                V: tl.constexpr, scale_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_DECAY: tl.constexpr, HALF: tl.constexpr,
                DTYPE: tl.constexpr):
    """dq of one block of BM queries of one (b, g), over the keys they see (accumulated in DTYPE; HALF: dW and k as
    bf16 / fp16 operands)."""
    scale = tl.load(scale_ptr)  # a pointer: a Python float argument would be rounded to fp32
    i_q, b, g, qi = _block_coords(tl.cdiv(T, BM), G, BM)
    q_rows, mq, q, row, m, dy, gq = _query_block(q_ptr, row_ptr, m_ptr, dy_ptr, g_ptr, b, g, qi, T, S, G, K, V, BK,
                                                 BV, HAS_ROW, HAS_DECAY, HALF, DTYPE)
    dq = tl.zeros((BM, BK), DTYPE)
    end = tl.minimum(S, S - T + (i_q + 1) * BM)  # the keys the block's last query sees: no fully masked block
    for n0 in range(0, end, BN):
        kj = n0 + tl.arange(0, BN)
        k_rows, mkj, k, v, col, gk = _key_block(k_ptr, v_ptr, col_ptr, g_ptr, b, g, kj, S, G, K, V, BK, BV, HAS_COL,
                                                HAS_DECAY, HALF, DTYPE)
        p = _probs(_weights(q, k, row, col, gq, gk, qi, kj, T, S, scale, HAS_DECAY, HALF, DTYPE), m, HALF)
        dw = p * _dot(dy, tl.trans(v), HALF, DTYPE)
        dq += _dot(dw, k, HALF, DTYPE) * scale
    _store(dq_ptr, dq, q_rows, mq, K, BK)


# ---- launches ----------------------------------------------------------------------------------------------------


def _pow2(x: int) -> int:
    return max(16, 1 << max(0, int(x) - 1).bit_length())


_HALF_CODES = {torch.bfloat16: 1, torch.float16: 2}  # the kernels' HALF constexpr: 0 exact, 1 bf16, 2 fp16


def _half_code(q: torch.Tensor) -> int:
    """The kernels' HALF for operands of q's dtype (the ops see q, k, v in one dtype): 1 bf16, 2 fp16, else 0."""
    half = _HALF_CODES.get(q.dtype, 0)
    if half == 1 and q.device.type != "cuda":  # the drop-ins below never send bf16 to the interpreter
        raise ValueError("dsfc: bf16 attention kernels need CUDA: the interpreter's bf16 tl.dot is wrong (no numpy "
                         "bf16)")
    return half


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the row maxima m, the log-sums L, the row / col weights and the scale: fp64 for fp64 operands,
    else fp32 (the half path keeps them fp32, as FlashAttention-2 keeps its log-sum-exp)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tiles_key(q: torch.Tensor, v: torch.Tensor) -> str:
    """The ``TILES`` entry for a launch on q [.., K] and v [.., V]."""
    if q.device.type != "cuda":
        return "interpret"
    if not _half_code(q):
        return "cuda"
    return "cuda_half" if max(_pow2(q.shape[-1]), _pow2(v.shape[-1])) <= 64 else "cuda_half_wide"


def _constexprs(q, v, row, col, gdec, which: str) -> dict:
    """The launch's tiles, widths, flags and dtypes; ``which``: "fwd", "bwd_kv" or "bwd_q"."""
    half = _half_code(q)
    tiles = TILES[tiles_key(q, v)][which]
    BM, BN, warps, *stages = tiles  # an optional 4th entry: the software pipeline's stages (else triton's default)
    return dict(BM=BM, BN=BN, BK=_pow2(q.shape[-1]), BV=_pow2(v.shape[-1]), HAS_ROW=row.numel() > 0,
                HAS_COL=col.numel() > 0, HAS_DECAY=gdec.numel() > 0, HALF=half,
                DTYPE=tl.float64 if q.dtype == torch.float64 else tl.float32,
                num_warps=warps, **({"num_stages": stages[0]} if stages else {}))


def _scalar(x: float, dtype: torch.dtype, device) -> torch.Tensor:
    """x as a one-element tensor of the stats dtype: triton passes a Python float as an fp32 scalar, which on a GPU
    cost fp64 runs ~1e-7 of relative error (the interpreter keeps it exact)."""
    return torch.full((1,), float(x), dtype=_stats_dtype(dtype), device=device)


def _forward(q, k, v, row, col, gdec, scale: float, lse: bool):
    """``(y, m)``: y [B, T, G, V] in q's dtype (LSE: L [B, T, G] in the stats dtype) and the row maxima m
    [B, T, G] in the stats dtype. q, k, v in one dtype (fp32, fp64; bf16 / fp16: the half path), row / col in the
    stats dtype, gdec [B, S, G] (the cumulative log-decay) fp64; empty: none."""
    B, T, G, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    stats = _stats_dtype(q.dtype)
    y = q.new_empty((B, T, G), dtype=stats) if lse else q.new_empty((B, T, G, V))
    m = q.new_empty((B, T, G), dtype=stats)
    c = _constexprs(q, v, row, col, gdec, "fwd")
    grid = (B * G * triton.cdiv(T, c["BM"]),)
    dummy = m  # never read (HAS_ROW / HAS_COL false)
    _attn_fwd[grid](q, k, v, row if row.numel() else dummy, col if col.numel() else dummy,
                    gdec if gdec.numel() else dummy, y, m, T, S, G, K, V, _scalar(scale, q.dtype, q.device), LSE=lse,
                    **c)
    return y, m


def _backward(q, k, v, row, col, gdec, m, dy, scale: float):
    """``(dq, dk, dv, dcol)`` through y = sum_j exp(w_ij) v_j, given the forward's m; dq, dk, dv in their operands'
    dtype, dcol_j = sum_i dw_ij [B, S, G] in the stats dtype (empty without col and decay)."""
    B, T, G, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    c_kv, c_q = _constexprs(q, v, row, col, gdec, "bwd_kv"), _constexprs(q, v, row, col, gdec, "bwd_q")
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with_dcol = col.numel() > 0 or gdec.numel() > 0
    dcol = q.new_empty((B, S, G), dtype=_stats_dtype(q.dtype)) if with_dcol else torch.empty_like(col)
    dummy = m  # never read or written (HAS_ROW / HAS_COL / HAS_DECAY false)
    args = (q, k, v, row if row.numel() else dummy, col if col.numel() else dummy, gdec if gdec.numel() else dummy,
            m, dy)
    scale_t = _scalar(scale, q.dtype, q.device)
    _attn_bwd_kv[(B * G * triton.cdiv(S, c_kv["BN"]),)](*args, dk, dv, dcol if with_dcol else dummy, T, S, G, K, V,
                                                          scale_t, **c_kv)
    _attn_bwd_q[(B * G * triton.cdiv(T, c_q["BM"]),)](*args, dq, T, S, G, K, V, scale_t, **c_q)
    return dq, dk, dv, dcol


# ---- custom ops (torch.compile: one opaque node per launch; autograd) --------------------------------------------


def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                   gdec: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v, row, col, gdec = (x.contiguous() for x in (q, k, v, row, col, gdec))
    return _forward(q, k, v, row, col, gdec, scale, lse=False)


_attention_fwd_op = torch.library.custom_op("dsfc::attention_fwd", mutates_args=())(_attention_fwd)


@_attention_fwd_op.register_fake
def _(q, k, v, row, col, gdec, scale):
    return q.new_empty((*q.shape[:3], v.shape[-1])), q.new_empty(q.shape[:3], dtype=_stats_dtype(q.dtype))


@torch.library.custom_op("dsfc::attention_bwd", mutates_args=())
def _attention_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                      gdec: torch.Tensor, m: torch.Tensor, dy: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, row, col, gdec, m, dy = (x.contiguous() for x in (q, k, v, row, col, gdec, m, dy))
    return _backward(q, k, v, row, col, gdec, m, dy, scale)


@_attention_bwd_op.register_fake
def _(q, k, v, row, col, gdec, m, dy, scale):
    dcol = q.new_empty((k.shape[0], k.shape[1], k.shape[2]), dtype=_stats_dtype(q.dtype)) if \
        col.numel() or gdec.numel() else torch.empty_like(col)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dcol


def _decay_grad(gdec: torch.Tensor, dcol: torch.Tensor, drow: torch.Tensor) -> torch.Tensor:
    """dL/dG [B, S, G] through w_ij += G_(S - T + i) - G_j: the query side's row sums sum_j dw_ij (the last T
    positions) minus the key side's column sums dcol_j = sum_i dw_ij."""
    dg = -dcol.to(gdec.dtype)
    T = drow.shape[1]
    dg[:, dg.shape[1] - T:] += drow.to(gdec.dtype)
    return dg


def _attention_setup(ctx, inputs, output):
    q, k, v, row, col, gdec, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, row, col, gdec, *output)


def _attention_backward(ctx, dy, dm):
    q, k, v, row, col, gdec, y, m = ctx.saved_tensors
    dq, dk, dv, dcol = _attention_bwd_op(q, k, v, row, col, gdec, m, dy, ctx.scale)
    # sum_j dL/dw_ij = dy_i . y_i, summed in the stats dtype (the half path's dy and y are bf16 / fp16)
    drow = (dy.to(m.dtype) * y.to(m.dtype)).sum(-1)
    dgdec = _decay_grad(gdec, dcol, drow) if gdec.numel() else None
    return (dq, dk, dv, drow.to(row.dtype) if row.numel() else None, (dcol if col.numel() else None), dgdec, None)


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup)
refuse_double_backward(_attention_bwd_op, "attention")


def _log_sum_fwd(x: torch.Tensor, ys: torch.Tensor, gdec: torch.Tensor, scale: float) -> torch.Tensor:
    x, ys, gdec = x.contiguous(), ys.contiguous(), gdec.contiguous()
    none = x.new_empty(0, dtype=_stats_dtype(x.dtype))
    return _forward(x, ys, ys, none, none, gdec, scale, lse=True)[0]


_log_sum_fwd_op = torch.library.custom_op("dsfc::log_sum_fwd", mutates_args=())(_log_sum_fwd)


@_log_sum_fwd_op.register_fake
def _(x, ys, gdec, scale):
    return x.new_empty(x.shape[:3], dtype=_stats_dtype(x.dtype))


def _log_sum_setup(ctx, inputs, output):
    x, ys, gdec, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(x, ys, gdec, output)


def _log_sum_backward(ctx, dL):
    # dL_i / dw_ij = exp(w_ij - L_i): the attention backward with v = 1, dy = dL, row = -L and m = 0; with a decay,
    # the row sums sum_j dw_ij are dL_i (the weights sum to 1) and the column sums come back as dcol
    x, ys, gdec, L = ctx.saved_tensors
    ones = ys.new_ones((*ys.shape[:3], 1))
    dx, dys, _, dcol = _attention_bwd_op(x, ys, ones, -L, L.new_empty(0), gdec, torch.zeros_like(L),
                                         dL[..., None].to(L.dtype), ctx.scale)
    return dx, dys, (_decay_grad(gdec, dcol, dL) if gdec.numel() else None), None


_log_sum_fwd_op.register_autograd(_log_sum_backward, setup_context=_log_sum_setup)


# ---- the drop-ins --------------------------------------------------------------------------------------------------


def _check_device(name: str, *xs):
    dev = xs[0].device
    require_triton_device(dev, f"{name}'s Triton kernels")
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


def _check_decay(name: str, k, gcum):
    if gcum is not None and tuple(gcum.shape) != tuple(k.shape[:3]):
        raise ValueError(f"{name}: gcum must be [B, S, G] = {tuple(k.shape[:3])}, got {tuple(gcum.shape)}")


def _operand_dtype(*xs: torch.Tensor) -> torch.dtype:
    """The dtype the kernels read q, k, v (x, ys) in: their own when all are bf16 or all fp16 (HALF_DOTS: the
    tensor-core path; fp16 only under the interpreter, whose bf16 tl.dot is wrong), else fp32 (fp64 if any is)."""
    dtype = xs[0].dtype
    if HALF_DOTS and dtype in _HALF_CODES and all(x.dtype == dtype for x in xs):
        if xs[0].device.type == "cuda" or dtype == torch.float16:
            return dtype
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def kernel_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: Optional[torch.Tensor],
                            col: Optional[torch.Tensor], scale: float,
                            gcum: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``dsfc.runtime.kernelised.kernel_attention`` on the Triton kernels above (CUDA tensors, or CPU under
    ``TRITON_INTERPRET=1``): y_i = sum_(j <= S - T + i) exp(scale q_i . k_j + row_i + col_j + G_(S-T+i) - G_j) v_j,
    [B, T, G, V], in the inputs' promoted dtype; ``gcum`` [B, S, G] is the cumulative log-decay G (None: none), read
    in fp64. Differentiable w.r.t. q, k, v, row, col and gcum.

    Computed in fp32 (fp64 for fp64 inputs) with exact products; q, k, v all bf16 (or all fp16) on CUDA: the
    products on tensor cores in that dtype, everything else fp32 (HALF_DOTS, the module docstring's Precision)."""
    name = "kernel_attention_triton"
    _check_shapes(name, q, k, v, row, col)
    _check_decay(name, k, gcum)
    _check_device(name, q, k, v, row, col, gcum)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    B, T, G, _ = q.shape
    if T == 0 or B == 0 or G == 0:
        return q.new_zeros((B, T, G, v.shape[-1]), dtype=dtype)
    operands = _operand_dtype(q, k, v)
    stats = _stats_dtype(operands)  # row and col: fp32 (fp64) on every path
    none = q.new_empty(0, dtype=stats)
    args = [x.to(operands) for x in (q, k, v)] + [none if x is None else x.to(stats) for x in (row, col)]
    args.append(q.new_empty(0, dtype=torch.float64) if gcum is None else gcum.to(torch.float64))
    forward = _attention_fwd if eager_inference(*args) else _attention_fwd_op
    return forward(*args, float(scale))[0].to(dtype)


def kernel_log_sum_triton(x: torch.Tensor, ys: torch.Tensor, scale: float, history: bool,
                          gcum: Optional[torch.Tensor] = None, *,
                          out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``dsfc.runtime.kernelised.kernel_log_sum`` with its history sum (a causal log-sum-exp over [B, T, G] x
    [B, S, G]) on the Triton kernels above, in ``out_dtype`` (default: the inputs' promoted dtype; x and ys both
    bf16 or both fp16 on CUDA: tensor-core products, as kernel_attention_triton); without history it is one
    elementwise product, left to torch. A half-precision caller that hands the log-sums L on as an attention row
    weight should ask for fp32: L ~ 9 rounded to bf16 is off by ~0.02, a 2% error in every weight exp(w - L)."""
    if not history:
        out = kernel_log_sum(x, ys, scale, history)
        return out if out_dtype is None else out.to(out_dtype)
    name = "kernel_log_sum_triton"
    _check_shapes(name, x, ys, ys, None, None)
    _check_decay(name, ys, gcum)
    _check_device(name, x, ys, gcum)
    dtype = torch.promote_types(x.dtype, ys.dtype) if out_dtype is None else out_dtype
    B, T, G, _ = x.shape
    if T == 0 or B == 0 or G == 0:
        return x.new_zeros((B, T, G), dtype=dtype)
    operands = _operand_dtype(x, ys)  # the log-sums are fp32 on the half path too, then rounded to dtype
    args = [x.to(operands), ys.to(operands),
            x.new_empty(0, dtype=torch.float64) if gcum is None else gcum.to(torch.float64)]
    forward = _log_sum_fwd if eager_inference(*args) else _log_sum_fwd_op
    return forward(*args, float(scale)).to(dtype)


def triton_kernels_for(io_dtype: torch.dtype):
    """(attention, log_sum) with kernel_attention_triton's and kernel_log_sum_triton's signatures, for a caller that
    computes in fp32 data whose precision is ``io_dtype`` (a generated module given a bf16 / fp16 input: its
    projections run in fp32, as its other paths do). A half ``io_dtype`` hands q, k, v (x, ys) to the kernels in
    that dtype, so they take the half path (tensor-core products, fp32 statistics), and returns fp32 results:
    the log-sums never round to half (see kernel_log_sum_triton). Any other dtype: the kernels as they are."""
    if io_dtype not in _HALF_CODES:
        return kernel_attention_triton, kernel_log_sum_triton

    def attention(q, k, v, row, col, scale, gcum=None):
        out = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        return kernel_attention_triton(q.to(io_dtype), k.to(io_dtype), v.to(io_dtype), row, col, scale,
                                       gcum).to(out)

    def log_sum(x, ys, scale, history, gcum=None):
        if not history:  # one elementwise product in torch: no kernel, nothing to gain from rounding its inputs
            return kernel_log_sum_triton(x, ys, scale, history)
        out = torch.promote_types(x.dtype, ys.dtype)
        return kernel_log_sum_triton(x.to(io_dtype), ys.to(io_dtype), scale, history, gcum, out_dtype=out)

    return attention, log_sum
