"""Triton kernels, launch and autograd for the chunked outer-product family (linear attention, RetNet, GLA, mLSTM,
Mamba-2 SSD, ...): ``chunked_outer_triton``, a drop-in for ``dsfc.runtime.scans.chunked_outer_scan``.

Per batch row and head (fla's layout: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]``)::

    S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T,     y_t = S_t^T q_t       (g: log-decay, none / [B,T,H] / [B,T,H,K])

The generated module computes these streams in torch (they involve the spec's projections and elementwise maths,
differentiated by ordinary autograd) and hands them to this file, so the kernels are spec-independent, except for
three forms the kernels read as they are rather than from memory written for them (``chunked_outer_triton``'s
``heads_per_group``, ``v_scale``, ``skip``): q, k shared by a group of heads (read at head h's group through the
row index, ``_group_rows``), v times a per-(t, h) factor (multiplied on load, ``_load_chunk``) and a per-head skip
term ``y + w[h] x`` (added in the store, ``_store_y``); their gradients beyond the kernels' are torch. What the
kernels fuse: the chunking and T-masking, the in-chunk segment sums of the log-decay, every decay mask and decay
factor (exp), the intra-chunk ``(Q K^T ⊙ decay) V``, the inter-chunk read ``(Q ⊙ decay) S`` and the state passing;
the state lives in registers in the compute dtype (fp32, or fp64 for fp64 inputs) for the whole sequence.

Decay masks (same maths as scans.py's ``_outer_scan_impl``, chunk length L, positions i, j in a chunk):
``seg[i, j] = sum_{j < l <= i} g_l`` is accumulated from its own terms by one masked cumsum (mamba2's ``segsum``),
never as a difference of prefix sums and never as a ratio of exp(cumsum); the decay of ``k_j v_j^T`` to the chunk end
is the last row of the same matrix, the decay of the previous state to step i is the in-chunk cumsum. For g <= 0
every exponent is <= 0, every factor in [0, 1].

A per-key decay (GLA, RWKV-6) keeps the key index in the mask, so its intra-chunk scores
``P[i, j] = sum_a q[i, a] k[j, a] exp(seg_a(j+1..i))`` are not a masked ``q k^T``. They are computed first, by a
chunk-parallel kernel (``_key_scores_fwd``, fla's ``chunk_gla`` design), into a ``[B, T, H, L]`` buffer that the
state passes read as the other decays' kernels read their masked ``q k^T``: the chunk is cut into sub-chunks of 16;
a block between a query sub-chunk I and an earlier key sub-chunk J is one tensor-core product of queries decayed
from I's start and keys decayed to it (the decay split at that boundary: both factors exp(<= 0)); a diagonal block
is built one key column at a time from ``[16, K]`` tiles (column j's segment sums: a cumsum of g masked to the rows
after j). The backward's part through P is the same sub-chunk walk (``_key_scores_bwd_kernel``, with
``dL/dP = dy v^T`` formed there), its dq, dk summed with the state passes' like another value slice's.

Forward, two schedules (``SCHEDULE``). Fused: one program per (b, h, value slice of BLOCK_V) walks the chunks of its
(b, h) in order with its ``[K, BLOCK_V]`` slice of the state in registers, ``tl.dot`` for the three matmuls per
chunk. Split (fla's and Mamba-2's design): that sequential pass only carries the state and stores it at every chunk
start (``[B, H, T / L, K, V]`` in the matmul operand dtype), then one program per (chunk, b, h, value slice) computes
the chunk's outputs from its start state: T / L times the parallelism for the states' round trip through memory.
"auto" (the default) times both on a GPU once per launch shape and keeps the faster of two that agree.

Backward (no activations stored by the forward): the forward's sequential pass is rerun to store the chunk-start
states; then, fused: one program per (b, h, value slice) walks the chunks in reverse with its slice of ``dL/dS`` in
registers and writes dv, dS_0 and its share of dq, dk (sums over V: one buffer per slice, summed later); split:
that reverse pass only stores ``dL/dS`` after every chunk, and one program per chunk computes dq, dk, dv from the two
stored states. The log-decay gradient uses the identity of fla's ``chunk_simple_gla`` / ``chunk_gla``: y and S_T
depend on g only through ``exp(G_i - G_j)`` between a query at i and a key at j (G the prefix sum of g over time), so
``dL/dG_t = q_t ⊙ dq_t - k_t ⊙ dk_t`` (+ ``<dS_T, S_T>`` at t = T - 1) and ``dL/dg_t = sum_(s >= t) dL/dG_s`` (a
reverse cumsum over time). One last launch (``_bwd_epilogue``) sums the slices' dq, dk, casts them to the inputs'
dtypes and forms dL/dg: every tensor read and written once.

torch.compile: the forward and backward launches are ``torch.library.custom_op`` s (``dsfc::outer_scan_fwd`` /
``_bwd``) with ``register_fake`` (shapes only) and ``register_autograd``, as the diagonal and dense kernels are, so a
compiled model keeps one opaque node per launch. No log-decay is the decay kind NONE (in the ops' ``int[]`` config)
with an empty dummy tensor in its place; the backward's epilogue (slice sums, the log-decay cumsum) runs inside the
backward op.

Precision: with fp32 (fp64) q, k, v, ``tl.dot`` runs with ``input_precision="ieee"`` (no TF32: the module computes
in fp32 on purpose; on a GPU such dots do not use the tensor cores). With q, k, v all bf16 (or all fp16) the matmuls
take that dtype, as fla's kernels do (HALF_DOTS): the scores, decayed queries / keys and the state are rounded to it
before each tensor-core product, which accumulates in fp32; the decays, the state and every accumulation stay fp32.
Under the interpreter bf16 dots fall back to fp32 (its bf16 tl.dot is wrong), fp16 dots run as on a GPU.

Status: checked against the float64 reference under ``TRITON_INTERPRET=1`` (triton 3.9, and 3.6 with numpy 2.2: the
3.6 interpreter fails on numpy 2.4, for every kernel), both schedules; compiled for sm_90 by triton 3.6 and 3.9
without a GPU (``tests/triton/aot_compile.py --outer-only --resources`` prints ptxas' registers and spills). The
no-decay and per-head kernels ran on an H100 (the README's "GPU benchmark"), and so did the per-key score kernels
(GLA at T = 4096 on an H100, 2026-11-27: 0.68x forward, 0.52x forward+backward of fla's ``chunk_gla`` at chunk 16,
the default since; see ``default_tiles``). The whole of tests/triton passed compiled on that H100 (its five failures
were the tests' own device handling). Chunk and block sizes are not autotuned (``dsfc bench --gpu`` sweeps a few);
the value-slice split of the backward (q k^T recomputed per slice) is the simple version.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types

from dataclasses import dataclass, replace
from typing import Optional

import torch

import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from dsfc.runtime import autochoice
from dsfc.runtime.dispatch import eager_inference, next_pow2, refuse_double_backward, require_triton_device
from dsfc.runtime.indexing import cached_tensor
from dsfc.runtime.scans import (check_int_option, check_outer_inputs, check_tensors, chunked_outer_scan,
                                 read_before_update)

__all__ = ["chunked_outer_triton", "CHUNK", "MAX_BLOCK_V"]

CHUNK = 16  # chunk length L (tl.dot needs >= 16 on a GPU)
CHUNK_CUDA = 64  # on a GPU with half operands: longer chunks, fewer sequential steps
SUB_CHUNK = 16  # per-key decay: the sub-chunk of the intra-chunk scores (``_key_scores_fwd``)
# The per-key score kernels' warps for a [16, 128] tile of keys (``scores_warps`` scales them with the tile): forward
# and backward are loops over key columns of elementwise [16, K] work and reductions, which fewer warps keep within
# a warp. H200, GLA's shape (bf16, B 8, T 4096, H 16, K = V = 128, chunk 16), 2026-11-27: forward 1.03 ms at 4
# warps, 1.16 at 8, 0.96 at 2, 0.83 at 1; backward 7.0 ms at 8 warps, 3.4 at 4, 1.8 at 2, 2.2 at 1
SCORES_WARPS = 1
SCORES_BWD_WARPS = 2
# The score backward (``_key_scores_bwd_kernel``): keys per program and the value slice of dL/dP = dy v^T. Timed on
# an H100 at GLA's shape (bf16, B 8, T 4096, H 16, K = V = 128, chunk 64): all 128 keys with 64-wide value slices
# took 9.2 ms (2026-11-26; ptxas: 255 registers, one program per SM); 32-key slices with 16-wide value slices
# (125 registers, two programs per SM) took 14.2 ms (2026-11-27): each slice recomputes dL/dP, in narrow tiles
SCORES_BWD_BLOCK_K = 128
SCORES_BWD_BLOCK_V = 64
HALF_DOTS = True  # bf16 / fp16 q, k, v: the matmuls run in that dtype on tensor cores (fp32 accumulation), as fla's
# the DECAY constexpr: no decay, one log-decay per head, one per (head, key) (constexpr globals: kernels may read them)
STEP_BLOCK_V = 32  # the decode step's value slice (``_single_step``)
MAX_BLOCK_V = 64  # widest value slice per program: more programs (B * H * V / 64), a smaller state tile each
# "fused": one sequential kernel per (b, h, value slice) computes everything (B * H * V / BLOCK_V programs, each
# walking T / L chunks); "split" (fla's and Mamba-2's design): that kernel only passes the state and stores it at
# every chunk start, then one program per chunk computes the outputs (and, backward, the gradients) in parallel.
# Split does more memory traffic (the [B, H, T / L, K, V] states, in the matmul dtype) for far more parallelism.
# "auto": on CUDA, the faster of the two for each launch shape, timed on its first call (``_resolve``); fused
# elsewhere (the interpreter) and during CUDA-graph capture.
SCHEDULE = "auto"
NONE: tl.constexpr = tl.constexpr(0)
SCALAR: tl.constexpr = tl.constexpr(1)
PER_KEY: tl.constexpr = tl.constexpr(2)


@triton.jit
def _dot(a, b, HALF: tl.constexpr):
    """a @ b accumulated in fp32 (fp64 for fp64 operands). HALF = 1 / 2: the operands rounded to bf16 / fp16 first
    (tensor cores; the inputs were that dtype anyway); 0: exact products ("ieee", no TF32)."""
    if HALF == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif HALF == 2:
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _chunk_decays(g, g_next, DECAY: tl.constexpr):
    """The chunk's decay factors from its log-decays ``g`` and ``g_next`` (g one step later: ``g_next[j] = g[j+1]``,
    0 past the chunk; [BT], or [BT, BK] per key): ``q_in`` = exp(seg(0..i)) (decay of the chunk's initial state up
    to step i), ``k_out`` = exp(seg(j+1..L-1)) (decay of k_j v_j^T to the chunk end), ``tot`` = exp(seg(0..L-1)).
    Every seg is a sum of its own terms (a cumsum of g, a reverse cumsum of g_next), never a difference."""
    if DECAY == NONE:
        return g + 1.0, g_next + 1.0, tl.sum(g, axis=0) + 1.0
    q_in = tl.exp(tl.cumsum(g, axis=0))
    k_out = tl.exp(tl.cumsum(g_next, axis=0, reverse=True))
    tot = tl.exp(tl.sum(g, axis=0))
    return q_in, k_out, tot


@triton.jit
def _scalar_mask(g, rows, BT: tl.constexpr):
    """[BT, BT] decay mask of one log-decay per step: exp(seg(j+1..i)) for j <= i, else 0 (mamba2's segsum: one
    masked cumsum down the rows)."""
    ii = rows[:, None]
    jj = rows[None, :]
    seg = tl.cumsum(tl.where(ii > jj, g[:, None], 0.0), axis=0)
    return tl.where(ii >= jj, tl.exp(seg), 0.0)


@triton.jit
def _load_rows(ptr, row, mt, kk, mk, K, DTYPE: tl.constexpr):
    """Rows ``row`` ([BT] indices of [B * T * H] rows) of a [B, T, H, K] stream, [BT, BK], zero beyond T and K."""
    return tl.load(ptr + row[:, None] * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0).to(DTYPE)


@triton.jit
def _group_rows(b, t, h, T, H, R):
    """Rows of head h's steps t in a stream that R heads share ([B, T, H / R, K]: head h reads group h // R, as
    mamba2's grouped B and C); R = 1: the rows (b, t, h) of a [B, T, H, K] stream."""
    return (b * T + t) * (H // R) + h // R


@triton.jit
def _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, vs_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K, V, RQ, RK,
                BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr, V_SCALE: tl.constexpr):
    """q, k [BT, BK], v [BT, BV], g and g_next ([BT] or [BT, BK]) of one chunk, zero beyond T, K, V and (g_next)
    the chunk. q (k) shared by RQ (RK) heads: read at head h's group. V_SCALE: v is v_scale[b, t, h] v (the
    spec's per-step, per-head factor of the value, SSD's dt, multiplied on load instead of in memory)."""
    row = (b * T + t) * H + h  # [BT] int64: (b, t, h) of the [B, T, H, ...] streams
    q = _load_rows(q_ptr, _group_rows(b, t, h, T, H, RQ), mt, kk, mk, K, DTYPE)
    k = _load_rows(k_ptr, _group_rows(b, t, h, T, H, RK), mt, kk, mk, K, DTYPE)
    v = tl.load(v_ptr + row[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0).to(DTYPE)
    if V_SCALE:
        v = v * tl.load(vs_ptr + row, mask=mt, other=0.0).to(DTYPE)[:, None]
    g, g_next = _load_log_decay(g_ptr, b, h, t, mt, rows, kk, mk, T, H, K, BT, DECAY, DTYPE)
    return q, k, v, g, g_next


@triton.jit
def _store_y(y_ptr, skip_ptr, skw_ptr, y, row, h, mt, vv, mv, V, SKIP: tl.constexpr, DTYPE: tl.constexpr):
    """Store one chunk's y [BT, BV] at its [BT] rows; SKIP: y + skip_weight[h] skip[b, t, h, :] first (the spec's
    per-head D u term, added here rather than by a read of y and a write in torch)."""
    m = mt[:, None] & mv[None, :]
    offs = row[:, None] * V + vv[None, :]
    if SKIP:
        y += tl.load(skw_ptr + h).to(DTYPE) * tl.load(skip_ptr + offs, mask=m, other=0.0).to(DTYPE)
    tl.store(y_ptr + offs, y, mask=m)


@triton.jit
def _load_log_decay(g_ptr, b, h, t, mt, rows, kk, mk, T, H, K, BT: tl.constexpr, DECAY: tl.constexpr,
                    DTYPE: tl.constexpr):
    """g and g_next (g one step later within the chunk) of one chunk: [BT], [BT, BK] per key, zeros for NONE."""
    row = (b * T + t) * H + h
    m_next = (rows + 1 < BT) & (t + 1 < T)
    if DECAY == PER_KEY:
        g = tl.load(g_ptr + row[:, None] * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0).to(DTYPE)
        g_next = tl.load(g_ptr + (row + H)[:, None] * K + kk[None, :], mask=m_next[:, None] & mk[None, :],
                         other=0.0).to(DTYPE)
    elif DECAY == SCALAR:
        g = tl.load(g_ptr + row, mask=mt, other=0.0).to(DTYPE)
        g_next = tl.load(g_ptr + row + H, mask=m_next, other=0.0).to(DTYPE)
    else:
        g = tl.zeros((BT,), DTYPE)
        g_next = tl.zeros((BT,), DTYPE)
    return g, g_next


@triton.jit
def _chunk_y(q, k, v, g, g_next, s, p, rows, BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr,
             HALF: tl.constexpr):
    """y [BT, BV] of one chunk given the state before it, s [BK, BV]: (decayed causal scores) v + (decayed q) s.
    Per key, the scores ``p`` [BT, BT] come from ``_key_scores_fwd`` (``_load_scores``); other decays ignore it."""
    q_in, k_out, tot = _chunk_decays(g, g_next, DECAY)
    if DECAY == PER_KEY:
        q_dec = q * q_in
    else:
        p = _dot(q, tl.trans(k), HALF)
        if DECAY == SCALAR:
            p = p * _scalar_mask(g, rows, BT)
        else:
            p = tl.where(rows[:, None] >= rows[None, :], p, 0.0)
        q_dec = q * q_in[:, None]
    return _dot(p, v, HALF) + _dot(q_dec, s, HALF)


@triton.jit
def _chunk_state(k, v, g, g_next, s, DECAY: tl.constexpr, HALF: tl.constexpr):
    """The state after the chunk from the state s before it: exp(seg(0..L-1)) s + sum_j (decayed k_j) v_j^T."""
    q_in, k_out, tot = _chunk_decays(g, g_next, DECAY)
    if DECAY == PER_KEY:
        return tot[:, None] * s + _dot(tl.trans(k * k_out), v, HALF)
    else:
        return tot * s + _dot(tl.trans(k * k_out[:, None]), v, HALF)


@triton.jit
def _chunk_dstate(q, g, g_next, dy, ds, DECAY: tl.constexpr, HALF: tl.constexpr):
    """dL/d(state before the chunk) from ds = dL/d(state after it): exp(seg(0..L-1)) ds + (decayed q)^T dy."""
    q_in, k_out, tot = _chunk_decays(g, g_next, DECAY)
    if DECAY == PER_KEY:
        return tot[:, None] * ds + _dot(tl.trans(q * q_in), dy, HALF)
    else:
        return tot * ds + _dot(tl.trans(q * q_in[:, None]), dy, HALF)


@triton.jit
def _chunk_grads(q, k, v, g, g_next, dy, s, ds, p, rows, BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr,
                 HALF: tl.constexpr):
    """dq, dk (this value slice's share) and dv of one chunk, given the state before it s and ds = dL/d(state after
    it). Per key: the scores ``p`` are given, and dq, dk omit the part through them (``_key_scores_bwd_kernel``'s)."""
    q_in, k_out, tot = _chunk_decays(g, g_next, DECAY)
    if DECAY == PER_KEY:
        k_dec = k * k_out
        dq = q_in * _dot(dy, tl.trans(s), HALF)
        dk = k_out * _dot(v, tl.trans(ds), HALF)
    else:
        if DECAY == SCALAR:
            mask = _scalar_mask(g, rows, BT)
        else:
            mask = tl.where(rows[:, None] >= rows[None, :], 1.0, 0.0).to(DTYPE)
        p = _dot(q, tl.trans(k), HALF) * mask
        dp = _dot(dy, tl.trans(v), HALF) * mask  # dL/dP, P the decayed causal scores (y_intra = P v)
        dq = _dot(dp, k, HALF)
        dk = _dot(tl.trans(dp), q, HALF)
        k_dec = k * k_out[:, None]
        dq += q_in[:, None] * _dot(dy, tl.trans(s), HALF)
        dk += k_out[:, None] * _dot(v, tl.trans(ds), HALF)
    dv = _dot(tl.trans(p), dy, HALF) + _dot(k_dec, ds, HALF)
    return dq, dk, dv


# ---- per-key decay: the intra-chunk scores, sub-chunk by sub-chunk ---------------------------------------------
# A per-key decay cannot factor the decay mask out of q k^T, and forming exp(G_i) and exp(-G_j) separately (G the
# in-chunk prefix sum) overflows under strong decay. So, as fla's chunk_gla does it, a chunk of BT steps is cut into
# sub-chunks of BC = 16: between a query sub-chunk I and an earlier key sub-chunk J the decay splits at I's first
# step into a query factor exp(seg(start_I..i)) and a key factor exp(seg(j+1..end_J) + [whole sub-chunks between]),
# every exponent <= 0, and the block is one tensor-core product of decayed queries and keys; only the diagonal
# blocks (J = I) need the elementwise decays (``_diagonal_scores``, key column by key column, with exp(<= 0) of
# segment sums within the 16 steps). One program per (sub-chunk, chunk, b, h):
# B * H * T / BC programs, all independent, so the row loops of the diagonal blocks run in parallel rather than
# inside the sequential pass. The scores go to memory ([B, T, H, BT], the matmul operand dtype), where the state
# passes and the output / gradient programs read them as the other decays' kernels read q k^T.


@triton.jit
def _step_row(ptr, row0, j, t0, T, H, K, kk, DTYPE: tl.constexpr):
    """Step j of the sub-chunk that starts at step t0 (``row0``: its row of the [B * T * H] rows) of a [B, T, H, K]
    stream, [BK], zero beyond T and K. A load, not a row taken out of a register tile (which costs a reduction)."""
    width = tl.where(t0 + j < T, K, 0)  # (the interpreter rejects a scalar mask & a vector one)
    return tl.load(ptr + (row0 + j * H) * K + kk, mask=kk < width, other=0.0).to(DTYPE)


@triton.jit
def _decay_from_start(gt):
    """exp(seg(start..i)) [BC, BK], the per-key decay from the sub-chunk's start to step i (inclusive), from its
    log-decays gt [BC, BK]: a running sum from the start is each prefix's own terms, never a difference; a zero decay
    (-inf) makes every later sum -inf, exp 0."""
    return tl.exp(tl.cumsum(gt, axis=0))


@triton.jit
def _decay_to_end(g_next):
    """exp(seg(j+1..BC-1)) [BC, BK], the per-key decay from step j to the end of the sub-chunk (0 if a zero decay
    lies after j): a reverse cumsum of g one step later, each segment summed from its own terms. (exp(total - gc[j]),
    a difference of running sums, lost the short segments after a strong decay: see ``_key_column``.)"""
    return tl.exp(tl.cumsum(g_next, axis=0, reverse=True))


@triton.jit
def _key_column(k_ptr, g_ptr, seg, row0, j, t0, rows, kk, T, H, K, DTYPE: tl.constexpr):
    """Key step j of a diagonal block, the loop body ``_diagonal_scores`` and ``_diagonal_grads`` share; the loop
    walks j from the sub-chunk's last step back to its first. Given ``seg`` = seg(j+2..i) [BC, BK] (key step j+1's
    log-decays to every query row i, 0 for i <= j+1): the key row k_j [BK], seg(j+1..i) = g_{j+1} + seg(j+2..i)
    for i > j (0 for i <= j), and the decays exp(seg(j+1..i)) to every query row i >= j (0 for i < j). Each segment
    is a sum of its own terms (mamba2's segsum), never a difference of two running sums: after a strong decay (a
    log-decay of -1e4, a gate saturated in fp32) both running sums are large and their difference lost the short
    segments after it (GLA's y off by 80% at -1e30, where the torch scan and the reference agree). Growing the sums
    one step per column costs one add, where a masked cumsum per column cost a [BC, BK] scan. A zero decay (-inf)
    makes every later sum -inf (exp 0), never NaN."""
    k_j = _step_row(k_ptr, row0, j, t0, T, H, K, kk, DTYPE)
    g_after = _step_row(g_ptr, row0, j + 1, t0, T, H, K, kk, DTYPE)
    seg = tl.where((rows > j)[:, None], g_after[None, :] + seg, 0.0)
    return k_j, seg, tl.where((rows >= j)[:, None], tl.exp(seg), 0.0)


@triton.jit
def _diagonal_scores(q, g_ptr, k_ptr, row0, t0, rows, kk, T, H, K, BC: tl.constexpr, BK: tl.constexpr,
                     DTYPE: tl.constexpr):
    """The diagonal block of the per-key scores, P[i, j] = sum_a q[i, a] k[j, a] exp(seg_a(j+1..i)) for j <= i
    [BC, BC], one key column at a time (as fla's chunk_gla does it): the key row and the next step's log-decay are
    loaded, the decays to every query row are one [BC, BK] exp, and the column is a sum along the keys' axis."""
    p = tl.zeros((BC, BC), DTYPE)
    seg = tl.zeros((BC, BK), DTYPE)
    for back in range(BC):
        j = BC - 1 - back
        k_j, seg, e = _key_column(k_ptr, g_ptr, seg, row0, j, t0, rows, kk, T, H, K, DTYPE)
        p_j = tl.sum(q * e * k_j[None, :], axis=1)  # [BC] over queries i
        p = tl.where((rows == j)[None, :], p_j[:, None], p)
    return p


@triton.jit
def _diagonal_grads(q, g_ptr, dp, k_ptr, row0, t0, rows, kk, T, H, K, BC: tl.constexpr, BK: tl.constexpr,
                    DTYPE: tl.constexpr):
    """dq and dk [BC, BK] through the diagonal block of ``_diagonal_scores``' P given dp = dL/dP [BC, BC], key column
    by key column: each decay tile serves both (dq_i += dp_ij k_j e_ij; dk_j = sum_i dp_ij q_i e_ij)."""
    dq = tl.zeros((BC, BK), DTYPE)
    dk = tl.zeros((BC, BK), DTYPE)
    seg = tl.zeros((BC, BK), DTYPE)
    for back in range(BC):
        j = BC - 1 - back
        k_j, seg, e = _key_column(k_ptr, g_ptr, seg, row0, j, t0, rows, kk, T, H, K, DTYPE)
        dp_j = tl.sum(tl.where((rows == j)[None, :], dp, 0.0), axis=1)  # column j of dp: [BC] over queries i
        dq += dp_j[:, None] * e * k_j[None, :]
        dk_j = tl.sum(dp_j[:, None] * e * q, axis=0)  # [BK]
        dk = tl.where((rows == j)[:, None], dk_j[None, :], dk)
    return dq, dk


@triton.jit
def _sub_chunk(pid, NC, H, BT: tl.constexpr, BC: tl.constexpr):
    """(sub-chunk within the chunk, chunk, b, h) of program ``pid`` on a flat grid of B * H * NC * (BT / BC)."""
    NS: tl.constexpr = BT // BC
    i_s = pid % NS
    c = (pid // NS) % NC
    i_bh = (pid // NS // NC).to(tl.int64)
    return i_s, c, i_bh // H, i_bh % H


@triton.jit
def _sub_chunk_keys(ptr, g_ptr, b, h, c, j, rows, kk, mk, T, H, K, BT: tl.constexpr, BC: tl.constexpr,
                    DTYPE: tl.constexpr):
    """Sub-chunk j of chunk c: its rows of ``ptr`` (q or k) [BC, BK], its log-decays g and g one step later (0 past
    the sub-chunk), and the row indices and mask of its steps."""
    t = c * BT + j * BC + rows
    mt = t < T
    row = (b * T + t) * H + h
    x = _load_rows(ptr, row, mt, kk, mk, K, DTYPE)
    g, g_next = _load_log_decay(g_ptr, b, h, t, mt, rows, kk, mk, T, H, K, BC, PER_KEY, DTYPE)
    return x, g, g_next, row, mt


@triton.jit
def _own_sub_chunk(pid, k0, q_ptr, k_ptr, g_ptr, NC, T, H, K, BT: tl.constexpr, BC: tl.constexpr,
                   BK: tl.constexpr, DTYPE: tl.constexpr):
    """Program ``pid``'s sub-chunk (``_sub_chunk``), keys k0 .. k0 + BK - 1: its rows and key offsets, q and k
    [BC, BK], its log-decays and the log-decays one step later [BC, BK] (0 past the sub-chunk), its [B * T * H] row
    indices and mask, and its first step t0 with that step's row row0."""
    i_s, c, b, h = _sub_chunk(pid, NC, H, BT, BC)
    rows = tl.arange(0, BC)
    kk = k0 + tl.arange(0, BK)
    mk = kk < K
    t0 = c * BT + i_s * BC
    row0 = (b * T + t0) * H + h
    mt = t0 + rows < T
    row = row0 + rows * H
    q = _load_rows(q_ptr, row, mt, kk, mk, K, DTYPE)
    k = _load_rows(k_ptr, row, mt, kk, mk, K, DTYPE)
    gt, gt_next = _load_log_decay(g_ptr, b, h, t0 + rows, mt, rows, kk, mk, T, H, K, BC, PER_KEY, DTYPE)
    return i_s, c, b, h, rows, kk, mk, q, k, gt, gt_next, row, mt, row0, t0


@triton.jit
def _value_products(dy_ptr, v_ptr, row_a, m_a, row_b, m_b, V, BC: tl.constexpr, BV: tl.constexpr,
                    DTYPE: tl.constexpr, HALF: tl.constexpr):
    """[BC, BC] sum_v dy[a, v] v[b, v]: dL/dP between query rows a and key rows b (y_intra = P v), over all of V."""
    dp = tl.zeros((BC, BC), DTYPE)
    for v0 in range(0, V, BV):
        vv = v0 + tl.arange(0, BV)
        mv = vv < V
        dy = tl.load(dy_ptr + row_a[:, None] * V + vv[None, :], mask=m_a[:, None] & mv[None, :], other=0.0)
        v = tl.load(v_ptr + row_b[:, None] * V + vv[None, :], mask=m_b[:, None] & mv[None, :], other=0.0)
        dp += _dot(dy.to(DTYPE), tl.trans(v.to(DTYPE)), HALF)
    return dp


@triton.jit
def _key_scores_fwd(q_ptr, k_ptr, g_ptr, p_ptr, T, H, K, NC, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                    DTYPE: tl.constexpr, HALF: tl.constexpr):
    """Rows of one query sub-chunk I of P [B, T, H, BT], P[i, j] = sum_a q[i, a] k[j, a] exp(seg_a(j+1..i)) for
    the keys j <= i of the chunk (columns past i are not written: readers mask them)."""
    i_s, c, b, h, rows, kk, mk, q, k, gt, _, row, mt, row0, t0 = _own_sub_chunk(tl.program_id(0), 0, q_ptr, k_ptr,
                                                                             g_ptr, NC, T, H, K, BT, BC, BK, DTYPE)
    p_rows = p_ptr + row[:, None] * BT + rows[None, :]  # column 0 of each of I's rows, + BC * J for block J
    p = _diagonal_scores(q, g_ptr, k_ptr, row0, t0, rows, kk, T, H, K, BC, BK, DTYPE)
    tl.store(p_rows + i_s * BC, p, mask=mt[:, None])
    q_dec = q * _decay_from_start(gt)  # decay from the start of I to step i
    between = tl.zeros((BK,), DTYPE)  # log-decay of the whole sub-chunks strictly between J and I
    for back in range(1, BT // BC):
        j = i_s - back
        if j >= 0:
            k_j, g_j, g_next_j, row_j, mt_j = _sub_chunk_keys(k_ptr, g_ptr, b, h, c, j, rows, kk, mk, T, H, K, BT,
                                                              BC, DTYPE)
            k_dec = k_j * tl.exp(tl.cumsum(g_next_j, axis=0, reverse=True) + between[None, :])  # to I's start
            tl.store(p_rows + j * BC, _dot(q_dec, tl.trans(k_dec), HALF), mask=mt[:, None])
            between += tl.sum(g_j, axis=0)


@triton.jit
def _key_scores_bwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, dy_ptr, dq_ptr, dk_ptr, T, H, K, V, NC, BT: tl.constexpr,
                           BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DTYPE: tl.constexpr,
                           HALF: tl.constexpr):
    """dq, dk of one sub-chunk S and one slice of BK keys through the intra-chunk per-key scores
    (``_key_scores_fwd``'s P), with dL/dP = dy v^T summed over all of V here: dq_S from the keys of S and of the
    earlier sub-chunks, dk_S from the queries of S and of the later ones. Written to dq_ptr, dk_ptr ([B, T, H, K], a
    slot the launcher sums). Every key column is independent given dL/dP, so the keys are cut into slices, one per
    program (fla's chunk_gla splits its intra-chunk backward the same way): [16, BK] tiles instead of [16, K]. At
    K = 128 in one program ptxas needed 255 registers at 8 warps (one program per SM on an H100, where this kernel
    took 9.2 of GLA's 19.2 ms forward+backward); dL/dP is recomputed per slice (small: [16, 16] blocks over V)."""
    NK = tl.cdiv(K, BK)
    pid = tl.program_id(0)
    i_s, c, b, h, rows, kk, mk, q, k, gt, gt_next, row, mt, row0, t0 = _own_sub_chunk(pid // NK, (pid % NK) * BK,
                                                                                   q_ptr, k_ptr, g_ptr, NC, T, H, K,
                                                                                   BT, BC, BK, DTYPE)
    dp = _value_products(dy_ptr, v_ptr, row, mt, row, mt, V, BC, BV, DTYPE, HALF)
    dq, dk = _diagonal_grads(q, g_ptr, dp, k_ptr, row0, t0, rows, kk, T, H, K, BC, BK, DTYPE)
    dq_off = tl.zeros((BC, BK), DTYPE)
    between = tl.zeros((BK,), DTYPE)
    for back in range(1, BT // BC):  # keys of earlier sub-chunks J: dq_i += sum_j dp_ij k_dec_j (x q's decay)
        j = i_s - back
        if j >= 0:
            k_j, g_j, g_next_j, row_j, mt_j = _sub_chunk_keys(k_ptr, g_ptr, b, h, c, j, rows, kk, mk, T, H, K, BT,
                                                              BC, DTYPE)
            k_dec = k_j * tl.exp(tl.cumsum(g_next_j, axis=0, reverse=True) + between[None, :])
            dq_off += _dot(_value_products(dy_ptr, v_ptr, row, mt, row_j, mt_j, V, BC, BV, DTYPE, HALF), k_dec, HALF)
            between += tl.sum(g_j, axis=0)
    dq += dq_off * _decay_from_start(gt)
    dk_off = tl.zeros((BC, BK), DTYPE)
    between = tl.zeros((BK,), DTYPE)
    for ahead in range(1, BT // BC):  # queries of later sub-chunks I: dk_j += sum_i dp_ij q_dec_i (x k's decay)
        i = i_s + ahead
        if i < BT // BC:
            q_i, g_i, g_next_i, row_i, mt_i = _sub_chunk_keys(q_ptr, g_ptr, b, h, c, i, rows, kk, mk, T, H, K, BT,
                                                              BC, DTYPE)
            q_dec = q_i * tl.exp(tl.cumsum(g_i, axis=0) + between[None, :])
            dp_i = _value_products(dy_ptr, v_ptr, row_i, mt_i, row, mt, V, BC, BV, DTYPE, HALF)
            dk_off += _dot(tl.trans(dp_i), q_dec, HALF)
            between += tl.sum(g_i, axis=0)
    dk += dk_off * _decay_to_end(gt_next)
    m_qk = mt[:, None] & mk[None, :]
    tl.store(dq_ptr + row[:, None] * K + kk[None, :], dq, mask=m_qk)
    tl.store(dk_ptr + row[:, None] * K + kk[None, :], dk, mask=m_qk)


@triton.jit
def _load_scores(p_ptr, b, h, t, mt, rows, T, H, BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr):
    """One chunk's per-key scores [BT, BT] (zero above the diagonal and beyond T); zeros for the other decays."""
    if DECAY == PER_KEY:
        row = (b * T + t) * H + h
        causal = mt[:, None] & (rows[None, :] <= rows[:, None])
        return tl.load(p_ptr + row[:, None] * BT + rows[None, :], mask=causal, other=0.0).to(DTYPE)
    else:
        return tl.zeros((BT, BT), DTYPE)


@triton.jit
def _program_coords(NV, H, NC, PER_CHUNK: tl.constexpr):
    """(value slice, chunk, b, h, bh) of this program on a flat grid (a 1-D grid: no 65535 limit on B * H or NC).
    PER_CHUNK: one program per (value slice, chunk, b, h), else per (value slice, b, h) and the chunk is 0."""
    pid = tl.program_id(0)
    i_v = pid % NV
    if PER_CHUNK:
        c = (pid // NV) % NC
        i_bh = (pid // NV // NC).to(tl.int64)
    else:
        c = 0
        i_bh = (pid // NV).to(tl.int64)
    return i_v, c, i_bh // H, i_bh % H, i_bh


@triton.jit
def _slice_offsets(i_v, K, V, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and masks of value slice i_v: chunk rows [BT], keys [BK], values [BV] (with their masks) and the
    slice's [BK, BV] entries within one [K, V] state (offset and mask)."""
    rows = tl.arange(0, BT)
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mk = kk < K
    mv = vv < V
    return rows, kk, vv, mk, mv, kk[:, None] * V + vv[None, :], mk[:, None] & mv[None, :]


@triton.jit
def _outer_fwd(q_ptr, k_ptr, v_ptr, g_ptr, p_ptr, s0_ptr, y_ptr, sT_ptr, states_ptr, vs_ptr, skip_ptr, skw_ptr, T,
               H, K, V, NC, NV, RQ, RK, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
               WRITE_Y: tl.constexpr, STORE_STATES: tl.constexpr, DTYPE: tl.constexpr, HALF: tl.constexpr,
               V_SCALE: tl.constexpr, SKIP: tl.constexpr):
    """One (b, h) and one BLOCK_V slice of the value axis: chunks in order, the [BK, BV] state in registers.
    WRITE_Y: y [B, T, H, V] (the fused schedule); STORE_STATES: the state at the start of every chunk,
    [B, H, NC, K, V] in states_ptr's dtype (for the split schedule's ``_outer_out`` and for the backward)."""
    i_v, c0, b, h, i_bh = _program_coords(NV, H, 1, False)
    rows, kk, vv, mk, mv, s_off, m_s = _slice_offsets(i_v, K, V, BT, BK, BV)
    s = tl.load(s0_ptr + i_bh * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)
    for c in range(0, NC):
        if STORE_STATES:
            tl.store(states_ptr + (i_bh * NC + c) * K * V + s_off, s, mask=m_s)
        t = c * BT + rows
        mt = t < T
        q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, vs_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H,
                                         K, V, RQ, RK, BT, DECAY, DTYPE, V_SCALE)
        if WRITE_Y:
            p = _load_scores(p_ptr, b, h, t, mt, rows, T, H, BT, DECAY, DTYPE)
            y = _chunk_y(q, k, v, g, g_next, s, p, rows, BT, DECAY, DTYPE, HALF)
            _store_y(y_ptr, skip_ptr, skw_ptr, y, (b * T + t) * H + h, h, mt, vv, mv, V, SKIP, DTYPE)
        s = _chunk_state(k, v, g, g_next, s, DECAY, HALF)
    tl.store(sT_ptr + i_bh * K * V + s_off, s, mask=m_s)


@triton.jit
def _outer_out(q_ptr, k_ptr, v_ptr, g_ptr, p_ptr, states_ptr, y_ptr, vs_ptr, skip_ptr, skw_ptr, T, H, K, V, NC, NV,
               RQ, RK, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr,
               HALF: tl.constexpr, V_SCALE: tl.constexpr, SKIP: tl.constexpr):
    """Split schedule: y of one chunk of one (b, h) and value slice, from the chunk's start state that
    ``_outer_fwd`` (STORE_STATES) wrote. Every chunk is independent: B * H * NC * cdiv(V, BV) programs."""
    i_v, c, b, h, i_bh = _program_coords(NV, H, NC, True)
    rows, kk, vv, mk, mv, s_off, m_s = _slice_offsets(i_v, K, V, BT, BK, BV)
    s = tl.load(states_ptr + (i_bh * NC + c) * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)
    t = c * BT + rows
    mt = t < T
    q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, vs_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K,
                                     V, RQ, RK, BT, DECAY, DTYPE, V_SCALE)
    p = _load_scores(p_ptr, b, h, t, mt, rows, T, H, BT, DECAY, DTYPE)
    y = _chunk_y(q, k, v, g, g_next, s, p, rows, BT, DECAY, DTYPE, HALF)
    _store_y(y_ptr, skip_ptr, skw_ptr, y, (b * T + t) * H + h, h, mt, vv, mv, V, SKIP, DTYPE)


@triton.jit
def _store_chunk_grads(dq_ptr, dk_ptr, dv_ptr, dq, dk, dv, row, mt, kk, mk, vv, mv, part, K, V):
    """Store one chunk's dq, dk (this value slice's share, at offset ``part``) and dv."""
    m_qk = mt[:, None] & mk[None, :]
    tl.store(dq_ptr + part + row[:, None] * K + kk[None, :], dq, mask=m_qk)
    tl.store(dk_ptr + part + row[:, None] * K + kk[None, :], dk, mask=m_qk)
    tl.store(dv_ptr + row[:, None] * V + vv[None, :], dv, mask=mt[:, None] & mv[None, :])


@triton.jit
def _outer_bwd(q_ptr, k_ptr, v_ptr, g_ptr, p_ptr, states_ptr, dy_ptr, dsT_ptr, dq_ptr, dk_ptr, dv_ptr, ds0_ptr,
               dstates_ptr, vs_ptr, B, T, H, K, V, NC, NV, RQ, RK, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, DECAY: tl.constexpr, GRADS: tl.constexpr, STORE_DSTATES: tl.constexpr,
               DTYPE: tl.constexpr, HALF: tl.constexpr, V_SCALE: tl.constexpr):
    """One (b, h) and one BLOCK_V slice of the value axis: chunks in reverse with that slice of ds = dL/dS (the state
    after the chunk) in registers; writes ds0 = dL/dS_0 of its slice. GRADS (the fused schedule): also dv and its
    slice's share of dq and dk (sums over V) into the [cdiv(V, BV), B, T, H, K] buffers dq_ptr, dk_ptr, summed over
    slices by the launcher. STORE_DSTATES (split): ds after every chunk, [B, H, NC, K, V], for ``_outer_grads``."""
    i_v, c0, b, h, i_bh = _program_coords(NV, H, 1, False)
    rows, kk, vv, mk, mv, s_off, m_s = _slice_offsets(i_v, K, V, BT, BK, BV)
    part = i_v.to(tl.int64) * B * T * H * K  # this slice's share of dq, dk
    ds = tl.load(dsT_ptr + i_bh * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)
    for cc in range(0, NC):
        c = NC - 1 - cc
        t = c * BT + rows
        mt = t < T
        row = (b * T + t) * H + h
        q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, vs_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H,
                                         K, V, RQ, RK, BT, DECAY, DTYPE, V_SCALE)
        dy = tl.load(dy_ptr + row[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0).to(DTYPE)
        if STORE_DSTATES:
            tl.store(dstates_ptr + (i_bh * NC + c) * K * V + s_off, ds, mask=m_s)
        if GRADS:
            s = tl.load(states_ptr + (i_bh * NC + c) * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)  # S before
            p = _load_scores(p_ptr, b, h, t, mt, rows, T, H, BT, DECAY, DTYPE)
            dq, dk, dv = _chunk_grads(q, k, v, g, g_next, dy, s, ds, p, rows, BT, DECAY, DTYPE, HALF)
            _store_chunk_grads(dq_ptr, dk_ptr, dv_ptr, dq, dk, dv, row, mt, kk, mk, vv, mv, part, K, V)
        ds = _chunk_dstate(q, g, g_next, dy, ds, DECAY, HALF)
    tl.store(ds0_ptr + i_bh * K * V + s_off, ds, mask=m_s)


@triton.jit
def _outer_grads(q_ptr, k_ptr, v_ptr, g_ptr, p_ptr, states_ptr, dstates_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr, vs_ptr, B,
                 T, H, K, V, NC, NV, RQ, RK, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 DECAY: tl.constexpr, DTYPE: tl.constexpr, HALF: tl.constexpr, V_SCALE: tl.constexpr):
    """Split schedule: the gradients of one chunk of one (b, h) and value slice, from the chunk's start state and
    dL/d(its end state) that the two sequential passes wrote. Every chunk is independent."""
    i_v, c, b, h, i_bh = _program_coords(NV, H, NC, True)
    rows, kk, vv, mk, mv, s_off, m_s = _slice_offsets(i_v, K, V, BT, BK, BV)
    part = i_v.to(tl.int64) * B * T * H * K
    chunk_off = (i_bh * NC + c) * K * V + s_off  # this chunk's stored states
    s = tl.load(states_ptr + chunk_off, mask=m_s, other=0.0).to(DTYPE)
    ds = tl.load(dstates_ptr + chunk_off, mask=m_s, other=0.0).to(DTYPE)
    t = c * BT + rows
    mt = t < T
    row = (b * T + t) * H + h
    q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, vs_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K,
                                     V, RQ, RK, BT, DECAY, DTYPE, V_SCALE)
    dy = tl.load(dy_ptr + row[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0).to(DTYPE)
    p = _load_scores(p_ptr, b, h, t, mt, rows, T, H, BT, DECAY, DTYPE)
    dq, dk, dv = _chunk_grads(q, k, v, g, g_next, dy, s, ds, p, rows, BT, DECAY, DTYPE, HALF)
    _store_chunk_grads(dq_ptr, dk_ptr, dv_ptr, dq, dk, dv, row, mt, kk, mk, vv, mv, part, K, V)


@triton.jit
def _outer_step(q_ptr, k_ptr, v_ptr, g_ptr, s0_ptr, y_ptr, sT_ptr, K, V, s0_bh, s0_k, s0_v, sT_bh, sT_k, sT_v,
                BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr):
    """One step (T = 1: decoding) of one (b, h) and value slice: S' = diag(exp(g)) S + k v^T, y = S'^T q. The state
    slice [BK, BV] is read once and written once, in registers in between; q, k, v, g are [B*H, K | V] rows. S and
    S' are strided ((b, h), k, v): a module whose state is [.., V, K] in memory passes it as is, and gets S' in
    that layout (no transposed copy in, none out)."""
    # (b, h) in int64: the [B*H, K] rows' offsets i_bh * K pass 2^31 at B*H*K >= 2^31 elements (8 GiB of fp32 q)
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mk, mv = kk < K, vv < V
    m2 = mk[:, None] & mv[None, :]
    s = tl.load(s0_ptr + i_bh * s0_bh + kk[:, None] * s0_k + vv[None, :] * s0_v, mask=m2, other=0.0).to(DTYPE)
    if DECAY == SCALAR:
        s = s * tl.exp(tl.load(g_ptr + i_bh).to(DTYPE))  # exp(-inf) = 0: a zero decay forgets the state
    elif DECAY == PER_KEY:
        s = s * tl.exp(tl.load(g_ptr + i_bh * K + kk, mask=mk, other=0.0).to(DTYPE))[:, None]
    k = tl.load(k_ptr + i_bh * K + kk, mask=mk, other=0.0).to(DTYPE)
    v = tl.load(v_ptr + i_bh * V + vv, mask=mv, other=0.0).to(DTYPE)
    s = s + k[:, None] * v[None, :]
    q = tl.load(q_ptr + i_bh * K + kk, mask=mk, other=0.0).to(DTYPE)
    tl.store(y_ptr + i_bh * V + vv, tl.sum(q[:, None] * s, axis=0), mask=mv)
    tl.store(sT_ptr + i_bh * sT_bh + kk[:, None] * sT_k + vv[None, :] * sT_v, s, mask=m2)


def _single_step(q, k, v, log_decay, s0, decay: int, cdt: torch.dtype):
    """T = 1 without autograd: the decode step as one launch of ``_outer_step`` (the chunked kernels would pad the
    step to a chunk of 16-64 rows and, on the split schedule, launch twice). y [B, 1, H, V] and S' in ``cdt``; S'
    in the memory layout of ``s0`` when that is [B, H, K, V] or [B, H, V, K], so that a module whose state is a
    transposed view (SSD's [H, P, n] read as [H, n, P]) gets its own layout back without a copy either way."""
    B, _, H, K = q.shape
    V = v.shape[-1]
    y = torch.empty((B, 1, H, V), device=q.device, dtype=cdt)
    s0_strides = _bh_strides(s0)
    if s0_strides is None:
        s0 = s0.contiguous()
        s0_strides = _bh_strides(s0)
    sT, sT_strides = None, None
    if s0.is_contiguous() or s0.transpose(2, 3).is_contiguous():  # dense: empty_like keeps its strides
        sT = torch.empty_like(s0, dtype=cdt)
        sT_strides = _bh_strides(sT)
    if sT_strides is None:
        sT = torch.empty((B, H, K, V), device=q.device, dtype=cdt)
        sT_strides = _bh_strides(sT)
    g = q.new_empty(0) if log_decay is None else log_decay.contiguous()
    BK = max(16, next_pow2(K))
    # one state tile of <= 4096 entries per program (many programs: decoding has no time axis to keep SMs busy);
    # ptxas at K = 128 (BK 128 x BV 32, 4 warps): 124-154 registers, no spills in fp32 / bf16; fp64 per-key spills 8 B
    # (tests/triton/aot_compile.py --resources)
    BV = min(max(16, next_pow2(V)), STEP_BLOCK_V, max(16, 4096 // BK))
    _outer_step[(B * H, triton.cdiv(V, BV))](q.contiguous(), k.contiguous(), v.contiguous(), g, s0, y, sT, K, V,
                                            *s0_strides, *sT_strides, BK=BK, BV=BV, DECAY=decay,
                                            DTYPE=tl.float64 if cdt == torch.float64 else tl.float32, num_warps=4)
    return y, sT


def _bh_strides(s: torch.Tensor) -> Optional[tuple[int, int, int]]:
    """``(s_bh, s_k, s_v)`` of a state ``s`` [B, H, K, V] whose (b, h) pairs are one axis of uniform stride (the
    decode kernel's ``i_bh * s_bh``), or None."""
    B, H = s.shape[:2]
    if H == 1:
        return s.stride(0), s.stride(2), s.stride(3)
    if B == 1 or s.stride(0) == H * s.stride(1):
        return s.stride(1), s.stride(2), s.stride(3)
    return None


@dataclass(frozen=True)
class Tiles:
    """The launch shape ``chunked_outer_triton`` picks when it is not given one."""

    chunk: int
    block_k: int
    block_v: int
    num_warps: int


def default_tiles(cuda: bool, half: int, decay: int, K: int, V: int, chunk: Optional[int] = None) -> Tiles:
    """The default tiles for q, k of K and v of V features (``half``: the matmuls' operand dtype, see ``_dot``;
    ``decay``: NONE / SCALAR / PER_KEY; ``chunk``: a chunk length given by the caller). Measured on GPUs, see
    the README's "GPU benchmark" sections; tests/triton/aot_compile.py compiles these for sm_90."""
    if chunk is None:
        # long chunks need half operands: fp32 tiles at L = 64, K = 128 take 345 KB of shared memory in the backward
        # (sm_90 has 227 KB). A per-key decay keeps L = 16: its intra-chunk scores are a walk over sub-chunks of 16
        # (at L = 16, one), and the state passes' extra chunks cost less (H100, GLA K = V = 128, T = 4096, bf16,
        # 2026-11-27: L = 16 with the whole 128-wide value slice at 8 warps, fused, 2.57 / 16.7 ms forward /
        # forward+backward; L = 64 with 64-wide slices, 3.6 / 23.9 ms; L = 32, 3.6 / 21.5 ms)
        chunk = CHUNK_CUDA if cuda and half and decay != PER_KEY.value else CHUNK
    block_k = max(16, next_pow2(K))
    # the [BK, BV] state slice and the dots' tiles scale with BK * BV: keep BK * BV <= 128 * 64, so that K = 256
    # or 512 still fits sm_90's 227 KB of shared memory (AOT-compiled: a 512 x 16 split backward takes 217 KB); at
    # L = 16 with a per-key decay and half operands on a GPU the [L, K] tiles are small and the state slice may be
    # 128 x 128 (fp32 operands: the fused backward would need 298 KB of shared memory)
    wide = cuda and half and decay == PER_KEY.value and chunk == CHUNK
    block_v = min(max(16, next_pow2(V)), 2 * MAX_BLOCK_V if wide else MAX_BLOCK_V,
                  max(16, (16384 if wide else 8192) // block_k))
    # ptxas (tests/triton/aot_compile.py --resources): at these sizes 4 warps spill registers where 8 do not
    num_warps = 8 if chunk * block_k >= 64 * 64 or decay == PER_KEY.value else 4
    return Tiles(int(chunk), block_k, int(block_v), num_warps)


def scores_warps(warps_at_128: int, keys: int) -> int:
    """The warps of a per-key score kernel whose programs take ``keys`` keys (a power of two), given its warps at 128
    (``SCORES_WARPS``, ``SCORES_BWD_WARPS``): the same elements per thread, 1 to 8 warps."""
    return max(1, min(8, warps_at_128 * keys // 128))


@dataclass(frozen=True)
class _Launch:
    """Everything but the tensors, decoded from the custom ops' ``int[]`` argument (shapes come from the tensors)."""

    B: int
    T: int
    H: int
    K: int
    V: int
    decay: int  # NONE, SCALAR, PER_KEY (0, 1, 2); with NONE the ops get a dummy g
    chunk: int
    block_k: int
    block_v: int  # the value slice of one program (forward and backward)
    cdt: torch.dtype
    half: int = 0  # the matmuls' operand dtype: 0 the compute dtype (exact products), 1 bf16, 2 fp16
    num_warps: int = 4
    split: int = 0  # the schedule: 0 fused (one sequential kernel), 1 split (sequential states + parallel chunks),
    # 2 auto (resolved to 0 or 1 by ``_resolve`` inside each op: the forward and the backward choose separately)
    rq: int = 1  # heads per group of q: q is [B, T, H / rq, K], head h reads its group h // rq (mamba2's C)
    rk: int = 1  # of k likewise (mamba2's B)
    vscale: int = 0  # 1: v is v_scale[b, t, h] v, multiplied on load (``_load_chunk``)
    skip: int = 0  # 1: y + skip_weight[h] skip[b, t, h, :] in the forward's store (``_store_y``)

    @property
    def nc(self) -> int:
        return -(-self.T // self.chunk)

    @property
    def nv(self) -> int:
        return -(-self.V // self.block_v)

    @property
    def sub_chunk(self) -> int:
        """Per key: the sub-chunk of the intra-chunk scores (tl.dot's smallest tile, or the whole chunk)."""
        return min(SUB_CHUNK, self.chunk)

    @property
    def ns(self) -> int:
        return self.chunk // self.sub_chunk

    @property
    def tl_dtype(self):
        return tl.float64 if self.cdt == torch.float64 else tl.float32

    @property
    def states_dtype(self) -> torch.dtype:
        """Stored chunk states (and their gradients): the matmul operand dtype. The kernels read them only as
        operands of ``_dot``, which rounds them to that dtype anyway, so storing them rounded loses nothing."""
        return {1: torch.bfloat16, 2: torch.float16}.get(self.half, self.cdt)

    def encode(self) -> list[int]:
        return [self.decay, self.chunk, self.block_k, self.block_v, self.half, self.num_warps, self.split, self.rq,
                self.rk, self.vscale, self.skip]

    @staticmethod
    def decode(q: torch.Tensor, v: torch.Tensor, cfg, cdt: torch.dtype) -> "_Launch":
        """From the op's ``cfg`` (7 entries: no grouped reads, v scale or skip; or 11); the heads are v's."""
        B, T, _, K = q.shape
        return _Launch(B, T, v.shape[2], K, v.shape[-1], *(int(x) for x in cfg[:3]), int(cfg[3]), cdt,
                       *(int(x) for x in cfg[4:]))

    def constexprs(self) -> dict:
        return dict(BT=self.chunk, BK=self.block_k, BV=self.block_v, DECAY=self.decay, DTYPE=self.tl_dtype,
                    HALF=self.half, num_warps=self.num_warps)


def _scores(L: _Launch, q, k, g):
    """Per key: the intra-chunk scores P [B, T, H, chunk] (``_key_scores_fwd``, in the matmul operand dtype: the
    readers use them only as ``_dot`` operands); other decays: None (their kernels form q k^T themselves)."""
    if L.decay != 2:
        return None
    p = torch.empty((L.B, L.T, L.H, L.chunk), device=q.device, dtype=L.states_dtype)
    _key_scores_fwd[(L.ns * L.nc * L.B * L.H,)](q, k, g, p, L.T, L.H, L.K, L.nc, BT=L.chunk, BC=L.sub_chunk,
                                                 BK=L.block_k, DTYPE=L.tl_dtype, HALF=L.half,
                                                 num_warps=scores_warps(SCORES_WARPS, L.block_k))
    return p


def _fwd(L: _Launch, q, k, v, g, s0, write_y: bool, store_states: bool, p=None, vs=None, skip=None, skw=None):
    """``(y or None, S_T, chunk-start states or None)``. The fused schedule writes y from the sequential kernel; the
    split one stores the chunk-start states there and computes y in a second, chunk-parallel launch. ``p``: the
    per-key scores if already computed (y needs them; the state pass alone does not). ``vs``, ``skip``, ``skw``:
    v's scale and the skip term's tensor and weights when ``L.vscale`` / ``L.skip`` (else never read)."""
    dev = q.device
    vs, skip, skw = (q if x is None else x for x in (vs, skip, skw))  # absent: any pointer, never read
    if write_y and p is None:
        p = _scores(L, q, k, g)
    g = q if L.decay == 0 else g  # NONE: any pointer, never read
    p = q if p is None else p  # not per key: never read
    y = torch.empty((L.B, L.T, L.H, L.V), device=dev, dtype=L.cdt) if write_y else None
    sT = torch.empty((L.B, L.H, L.K, L.V), device=dev, dtype=L.cdt)
    keep_states = store_states or (write_y and L.split)
    states = torch.empty((L.B, L.H, L.nc, L.K, L.V), device=dev, dtype=L.states_dtype) if keep_states else None
    fused_y = write_y and not L.split
    _outer_fwd[(L.nv * L.B * L.H,)](q, k, v, g, p, s0, y if fused_y else sT, sT, sT if states is None else states,
                                    vs, skip, skw, L.T, L.H, L.K, L.V, L.nc, L.nv, L.rq, L.rk, WRITE_Y=fused_y,
                                    STORE_STATES=keep_states, V_SCALE=L.vscale, SKIP=int(bool(L.skip) and fused_y),
                                    **L.constexprs())
    if write_y and L.split:
        _outer_out[(L.nv * L.nc * L.B * L.H,)](q, k, v, g, p, states, y, vs, skip, skw, L.T, L.H, L.K, L.V, L.nc,
                                               L.nv, L.rq, L.rk, V_SCALE=L.vscale, SKIP=L.skip, **L.constexprs())
    return y, sT, states


def _bwd(L: _Launch, q, k, v, g, s0, dy, dsT, p=None, vs=None):
    """``(dq, dk, dv, ds0)`` in the compute dtype (dq, dk still in parts to be summed: [parts, B, T, H, K], one per
    value slice and, per key, one more for the part through the intra-chunk scores; per head also for q, k that
    heads share; dv the gradient of the scaled v when ``L.vscale``). ``p``: the per-key scores the forward kept
    (recomputed when absent or of another chunk length)."""
    dev = q.device
    _, _, states = _fwd(L, q, k, v, g, s0, False, True, None, vs)  # recompute the chunk-start states
    vs = q if vs is None else vs
    if L.decay != 2:
        p = None
    elif p is None or tuple(p.shape) != (L.B, L.T, L.H, L.chunk) or p.dtype != L.states_dtype:
        p = _scores(L, q, k, g)
    g = q if L.decay == 0 else g
    p = q if p is None else p
    parts = L.nv + (L.decay == 2)
    dq = torch.empty((parts, L.B, L.T, L.H, L.K), device=dev, dtype=L.cdt)
    dk = torch.empty_like(dq)
    dv = torch.empty((L.B, L.T, L.H, L.V), device=dev, dtype=L.cdt)
    ds0 = torch.empty((L.B, L.H, L.K, L.V), device=dev, dtype=L.cdt)
    dstates = torch.empty_like(states) if L.split else ds0
    _outer_bwd[(L.nv * L.B * L.H,)](q, k, v, g, p, states, dy, dsT, dq, dk, dv, ds0, dstates, vs, L.B, L.T, L.H,
                                    L.K, L.V, L.nc, L.nv, L.rq, L.rk, GRADS=not L.split,
                                    STORE_DSTATES=bool(L.split), V_SCALE=L.vscale, **L.constexprs())
    if L.split:
        _outer_grads[(L.nv * L.nc * L.B * L.H,)](q, k, v, g, p, states, dstates, dy, dq, dk, dv, vs, L.B, L.T, L.H,
                                                 L.K, L.V, L.nc, L.nv, L.rq, L.rk, V_SCALE=L.vscale,
                                                 **L.constexprs())
    if L.decay == 2:  # the part through the intra-chunk scores, into the last slot
        key_slice = min(L.block_k, SCORES_BWD_BLOCK_K)
        grid = (-(-L.K // key_slice) * L.ns * L.nc * L.B * L.H,)
        _key_scores_bwd_kernel[grid](q, k, v, g, dy, dq[-1], dk[-1], L.T, L.H, L.K, L.V, L.nc, BT=L.chunk,
                                     BC=L.sub_chunk, BK=key_slice, BV=SCORES_BWD_BLOCK_V, DTYPE=L.tl_dtype,
                                     HALF=L.half, num_warps=scores_warps(SCORES_BWD_WARPS, key_slice))
    return dq, dk, dv, ds0


# ---- the schedule on a GPU -------------------------------------------------------------------------------------


def fused_miscompiles(L: _Launch, device: torch.device) -> Optional[str]:
    """Why this GPU is known to miscompile the fused schedule at ``L``'s tiles, or None.

    Measured with benchmarks/probe_outer_configs.py (one process per configuration) on an H100, triton 3.6: chunk 64
    with a 32-wide value slice and K >= 64 at 4 warps gave wrong results (K = V = 64: 70% error) or, at the benchmark
    sizes, an illegal memory access; the split schedule with the same tiles, and 8 warps, were right (as was
    K = V = 32). Triton issues 11366 and 10486 report the same on Hopper (wgmma, a 32-wide tile, 4 warps; 3.7.1 too),
    so every sm_90 GPU is treated alike."""
    if device.type != "cuda" or L.chunk < 64 or L.block_v >= 64 or L.block_k < 64 or L.num_warps != 4:
        return None
    if torch.cuda.get_device_capability(device)[0] != 9:
        return None
    return (f"triton miscompiles the fused outer-product kernels on Hopper at chunk={L.chunk}, block_v={L.block_v}, "
            f"K={L.K}, num_warps=4 (wrong results or an illegal memory access; triton issues 11366, 10486)")


def _resolve(L: _Launch, phase: str, run, device: torch.device, truth=None) -> _Launch:
    """L with its schedule resolved: fused (0) and split (1) as given; auto (2): the faster of the two on this launch
    shape's first call on a GPU, provided their results agree (``autochoice.choose``; fused, the schedule that ran
    on a GPU first, is the reference and the fallback; if they disagree, ``truth()``, the torch scan's results,
    decides which is right). ``run(L)`` launches the phase and returns its outputs. The forward and backward choose
    separately; T counts by its power-of-two bucket (training lengths vary)."""
    if L.split != 2:
        return L
    fused, split = replace(L, split=0), replace(L, split=1)
    key = ("outer", phase, str(device), L.B * L.H, L.T.bit_length(), L.K, L.V, L.decay, L.chunk, L.block_k,
           L.block_v, L.half, L.num_warps, L.cdt, L.rq, L.rk, L.vscale, L.skip)
    # the same maths with the same operand rounding, summed in another order
    rtol = 2e-2 if L.half else 1e-4
    return (fused, split)[autochoice.choose(key, (fused, split), run, device, rtol, truth)]


def _torch_outer(q, k, v, g, s0, decay: int, cdt: torch.dtype, dy=None, dsT=None, L=None, vs=None, skip=None,
                 skw=None):
    """The ops' results from the torch chunked scan (an independent implementation, for ``_resolve`` to settle a
    disagreement between the schedules): ``(y, S_T)``, or with ``dy``, ``dsT`` the gradients ``(dq, dk, dv, ds0)``
    (by ``torch.func.vjp``: inside a custom op's implementation ordinary autograd records nothing). With ``L``'s
    grouped reads, v scale and skip term: the same on the streams they stand for (``_streams``), the gradients
    those of the per-head q, k and the scaled v, as ``_bwd`` computes them."""
    log_decay = g.detach().to(cdt) if decay else None
    rq, rk = (1, 1) if L is None else (L.rq, L.rk)
    q, k, v = _streams(q.detach(), k.detach(), v.detach(), rq, rk, None if vs is None else vs.detach())
    extra = 0.0 if skip is None else (skw.detach().to(cdt)[:, None] * skip.detach().to(cdt))

    def scan(q_, k_, v_, s0_):
        y, sT = chunked_outer_scan(q_, k_, v_, log_decay, s0_, output_final_state=True)
        return y + extra, sT

    xs = [x.detach().to(cdt) for x in (q, k, v, s0)]
    if dy is None:
        return scan(*xs)
    _, vjp = torch.func.vjp(scan, *xs)
    return vjp((dy.to(cdt), dsT.to(cdt)))


_GROUP_INDEX: dict = {}  # (heads, heads per group, device) -> the group of each head, h // r


def _group_index(heads: int, r: int, device: torch.device) -> torch.Tensor:
    """``arange(heads) // r``, built once per shape and device (``cached_tensor``; a decoding step built it per
    token: an arange and a division on every step)."""
    return cached_tensor(_GROUP_INDEX, (heads, r, device),
                         lambda: torch.div(torch.arange(heads, device=device), r, rounding_mode="floor"))


def _streams(q, k, v, rq: int, rk: int, v_scale=None):
    """q, k and v as the scan reads them, in torch: the groups' rows repeated for their heads, v times its scale (the
    paths that do not fuse them: the per-key decay's score kernels, the decode step, the pre readout's y_0)."""
    H = v.shape[2]
    q, k = (x if r == 1 else x.index_select(2, _group_index(H, r, x.device)) for x, r in ((q, rq), (k, rk)))
    return q, k, (v if v_scale is None else v_scale[..., None] * v)


def _slices_summed(grads):
    """``_bwd``'s gradients with dq, dk summed over their parts (the op's results)."""
    dq, dk, dv, ds0 = grads
    return dq.sum(0), dk.sum(0), dv, ds0


def _too_big_is_clear(L: _Launch, phase: str, launch):
    """``launch()``, with triton's OutOfResources (tiles needing more shared memory than the GPU has: K = 256 fused,
    say) turned into an error that names the configuration and what to change."""
    try:
        return launch()
    except OutOfResources as exc:
        schedule = ("fused", "split")[L.split]
        raise RuntimeError(f"chunked_outer_triton: the {schedule} {phase} kernels at K={L.K}, chunk={L.chunk}, "
                           f"block_v={L.block_v} need more shared memory than this GPU has ({exc}); use "
                           "schedule='auto' (it skips such variants), 'split', or a smaller block_v") from exc


# ---- the backward's epilogue: part sums and the log-decay gradient ------------------------------------------------
# ``_bwd`` leaves dq, dk in parts ([P, B, T, H, K]: one per value slice, per key one more for the scores' part) in
# the compute dtype. One launch sums them, writes dq, dk in q's / k's dtype and, with a decay, forms
# dL/dG_t = q_t dq_t - k_t dk_t (summed over K for one decay per head; + <dS_T, S_T> at t = T - 1) and its reverse
# cumsum over time, dL/dg_t = sum_(s >= t) dL/dG_s, in g's dtype. Done in torch this took ~4.5 ms of a 32 ms fwd+bwd
# on an H100 (B = 8, T = 4096, H = 16, K = V = 128): the part sums, flip / cumsum / flip, casts and elementwise
# passes each went through memory; here every tensor is read and written once. One program per (b, h, block of K
# columns) walks time backwards a chunk of BT rows at a time with the suffix sum of the later chunks in registers
# (the chunk's own suffix sums: tl.cumsum(reverse=True) down the rows); one decay per head needs the sum over all K,
# so there one program per (b, h) holds every key column. No decay has no sum over time: one program per chunk.
# Tiles (ptxas, tests/triton/aot_compile.py --resources, sm_90, triton 3.9, bf16 q, k): 64 x 32 at 4 warps and
# 64 x 128 at 8 spill registers (255 each: every element has 64-bit pointers into 5-7 streams); 32 x 32 at 4 warps
# takes 155, and 32 x 128 at 8 warps 203, without spills (triton 3.6: 120 and 255, no spills). Not timed on a GPU.
EPILOGUE_CHUNK = 16  # time rows per step under the interpreter (each op a numpy call: few, small tiles)
EPILOGUE_CHUNK_CUDA = 32
EPILOGUE_BLOCK_K = 32  # key columns per program without the sum over K: B * H * K / 32 programs walk in parallel
EPILOGUE_TILE = 4096  # one decay per head: BT * BK <= this (all K columns in one tile; K = 256 takes BT = 16)


@triton.jit
def _epilogue_coords(NK, NCP, K, BK: tl.constexpr):
    """(b * H + h as int64, key columns kk [BK] and their mask, first chunk-program) of this program on a flat grid
    of B * H * NCP * NK: NK blocks of key columns, NCP = 1 (a walk over every chunk) or the chunk count (no
    decay: one chunk each)."""
    pid = tl.program_id(0)
    i_k = pid % NK
    c = (pid // NK) % NCP
    i_bh = (pid // NK // NCP).to(tl.int64)
    kk = i_k * BK + tl.arange(0, BK)
    return i_bh, kk, kk < K, c


@triton.jit
def _parts_summed(ptr, offs, m, P, part, BT: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr):
    """sum_p ptr[p, ...] at the [BT, BK] offsets ``offs`` of one part (mask ``m``), accumulated in DTYPE; ``part``
    (int64) is one part's size. The pointer steps by whole parts: no P * B * T * H * K product to overflow."""
    acc = tl.zeros((BT, BK), DTYPE)
    ptrs = ptr + offs
    for _ in range(0, P):
        acc += tl.load(ptrs, mask=m, other=0.0).to(DTYPE)
        ptrs += part
    return acc


@triton.jit
def _final_state_term(fin_ptr, i_bh, kk, mk, K, DECAY: tl.constexpr, DTYPE: tl.constexpr):
    """<dS_T, S_T>'s share of dL/dG_(T-1): [BK] of the [B, H, K] ``fin_ptr`` per key, the [B, H] entry per head."""
    if DECAY == PER_KEY:
        return tl.load(fin_ptr + i_bh * K + kk, mask=mk, other=0.0).to(DTYPE)
    else:
        return tl.load(fin_ptr + i_bh).to(DTYPE)


@triton.jit
def _bwd_epilogue_kernel(dq_parts_ptr, dk_parts_ptr, q_ptr, k_ptr, fin_ptr, dq_ptr, dk_ptr, dg_ptr, P, B, T, H, K,
                         NK, NCP, NC, RQ, RK, BT: tl.constexpr, BK: tl.constexpr, DECAY: tl.constexpr,
                         DTYPE: tl.constexpr):
    """dq, dk [B, T, H, K] (the stores cast to their pointers' dtypes) = the sums of the P parts
    ``dq_parts_ptr``, ``dk_parts_ptr`` [P, B, T, H, K]; with a decay also dg = dL/dg ([B, T, H, K] per key,
    [B, T, H] per head, in dg_ptr's dtype) from q, k and ``fin_ptr`` (``_final_state_term``). Each program walks
    NC chunks of BT steps from its last (every chunk of its (b, h) with a decay, NC = 1 without), carrying
    ``later``: the sum of dL/dG over the steps after the current chunk ([BK] per key, [1] per head). q (k) shared by
    RQ (RK) heads ([B, T, H / RQ, K]) is read at head h's group; dq, dk are per head either way."""
    i_bh, kk, mk, c0 = _epilogue_coords(NK, NCP, K, BK)
    b = i_bh // H
    h = i_bh % H
    rows = tl.arange(0, BT)
    part = tl.cast(B, tl.int64) * T * H * K  # one part's size: int64, P * part can pass 2^31
    if DECAY != NONE:
        fin = _final_state_term(fin_ptr, i_bh, kk, mk, K, DECAY, DTYPE)
    if DECAY == PER_KEY:
        later = tl.zeros((BK,), DTYPE)
    else:
        later = tl.zeros((1,), DTYPE)
    for cc in range(0, NC):
        t = (c0 + 1) * NC * BT - (cc + 1) * BT + rows  # chunks in reverse: with a decay c0 = 0, NC chunks
        mt = t < T
        row = (b * T + t) * H + h  # [BT] int64 rows of the [B, T, H, ...] streams
        offs = row[:, None] * K + kk[None, :]
        m = mt[:, None] & mk[None, :]
        dq = _parts_summed(dq_parts_ptr, offs, m, P, part, BT, BK, DTYPE)
        dk = _parts_summed(dk_parts_ptr, offs, m, P, part, BT, BK, DTYPE)
        tl.store(dq_ptr + offs, dq.to(dq_ptr.dtype.element_ty), mask=m)
        tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=m)
        if DECAY != NONE:
            # dL/dG from the summed gradients in the compute dtype (not the rounded ones just stored)
            q = tl.load(q_ptr + _group_rows(b, t, h, T, H, RQ)[:, None] * K + kk[None, :], mask=m, other=0.0)
            k = tl.load(k_ptr + _group_rows(b, t, h, T, H, RK)[:, None] * K + kk[None, :], mask=m, other=0.0)
            q, k = q.to(DTYPE), k.to(DTYPE)
            dG = q * dq - k * dk  # zero beyond T and K
            last = t == T - 1  # S_T = exp(G_(T-1)) S_0 + ...: the final state's own dependence on G_(T-1)
            if DECAY == PER_KEY:
                dG += tl.where(last[:, None], fin[None, :], 0.0)
                dg = tl.cumsum(dG, axis=0, reverse=True) + later[None, :]
                later += tl.sum(dG, axis=0)
                tl.store(dg_ptr + offs, dg.to(dg_ptr.dtype.element_ty), mask=m)
            else:
                dG = tl.sum(dG, axis=1) + tl.where(last, fin, 0.0)  # [BT]: one log-decay per (b, t, h)
                dg = tl.cumsum(dG, axis=0, reverse=True) + later
                later += tl.sum(dG, axis=0)
                tl.store(dg_ptr + row, dg.to(dg_ptr.dtype.element_ty), mask=mt)


def _epilogue_tiles(decay: int, K: int, cuda: bool) -> tuple[int, int, int]:
    """``_bwd_epilogue_kernel``'s (BT, BK, num_warps) for K key columns (tests/triton/aot_compile.py compiles these)."""
    bt = EPILOGUE_CHUNK_CUDA if cuda else EPILOGUE_CHUNK
    if decay == 1:  # the sum over K in one program: every key column in one tile, fewer rows for a wide K
        bk = next_pow2(K)
        bt = max(1, min(bt, EPILOGUE_TILE // bk))
    else:
        bk = min(next_pow2(K), EPILOGUE_BLOCK_K)
    return bt, bk, 8 if cuda and bt * bk > 1024 else 4  # the per-head tiles: 8 warps


def _bwd_epilogue(dq, dk, q, k, g, sT, dsT, decay: int, cdt: torch.dtype, rq: int = 1, rk: int = 1):
    """``(dq, dk, dg)`` of the backward op from ``_bwd``'s dq, dk parts [P, B, T, H, K] (compute dtype ``cdt``):
    dq, dk in q's / k's dtype, dg in g's (zeros like the dummy g without a decay). The same as, in torch::

        dq, dk = dq.sum(0), dk.sum(0)
        dG = q * dq - k * dk                                      # per key; per head: .sum(-1)
        dG[:, -1] += (dsT * sT).sum(-1)                           # per head: .sum((-2, -1))
        dg = flip(cumsum(flip(dG, [1]), 1), [1])                  # dL/dg_t = sum_(s >= t) dL/dG_s

    q (k) shared by ``rq`` (``rk``) heads, [B, T, H / rq, K]: the kernel reads head h's group, writes dq per head in
    ``cdt`` and the sum over each group's heads is torch's (then the cast to q's dtype)."""
    P, B, T, H, K = dq.shape
    dq_out, dk_out = (torch.empty(x.shape, device=x.device, dtype=x.dtype) if r == 1 else
                      torch.empty((B, T, H, K), device=x.device, dtype=cdt) for x, r in ((q, rq), (k, rk)))
    dg = torch.zeros_like(g) if decay == 0 else torch.empty_like(g)
    if dq_out.numel() == 0:
        return _group_sums(dq_out, q, rq), _group_sums(dk_out, k, rk), dg.zero_()
    bt, bk, warps = _epilogue_tiles(decay, K, q.device.type == "cuda")
    nk, nc = -(-K // bk), -(-T // bt)
    ncp = nc if decay == 0 else 1  # no decay: one program per chunk; else one walks them all
    fin = q  # no decay: never read
    if decay:
        fin = (dsT * sT).sum(-1) if decay == 2 else (dsT * sT).sum((-2, -1))
        fin = fin.to(cdt).contiguous()
    _bwd_epilogue_kernel[(B * H * ncp * nk,)](dq, dk, q, k, fin, dq_out, dk_out, q if decay == 0 else dg, P, B, T,
                                              H, K, nk, ncp, nc // ncp, rq, rk, BT=bt, BK=bk, DECAY=decay,
                                              DTYPE=tl.float64 if cdt == torch.float64 else tl.float32,
                                              num_warps=warps)
    return _group_sums(dq_out, q, rq), _group_sums(dk_out, k, rk), dg


def _group_sums(d: torch.Tensor, x: torch.Tensor, r: int) -> torch.Tensor:
    """A per-head gradient [B, T, H, K] of a stream ``x`` that ``r`` heads share ([B, T, H / r, K]): summed over each
    group's heads, in x's dtype (``d`` itself when r = 1)."""
    if r == 1:
        return d
    B, T, H, K = d.shape
    return d.view(B, T, H // r, r, K).sum(3).to(x.dtype)


# ---- the custom ops (eager implementations; fake = shapes only) -------------------------------------------------
# torch.compile of a surrounding model keeps one opaque node per launch (Dynamo cannot trace Triton's launcher under
# the interpreter). Custom ops take no optional tensor that autograd must route, so a missing log-decay is the decay
# kind NONE in ``cfg`` with a dummy empty ``g`` (never read by the kernels, its gradient None).


def _outer_scan_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, s0: torch.Tensor,
                    cfg: list[int], cdt: torch.dtype, vs: Optional[torch.Tensor] = None,
                    skip: Optional[torch.Tensor] = None, skw: Optional[torch.Tensor] = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y [B, T, H, V], S_T [B, H, K, V], P)`` in the compute dtype ``cdt``; P: per key, the intra-chunk scores
    [B, T, H, chunk] (``_scores``), which the backward reuses (small: chunk values per row of q); else empty.
    ``vs`` [B, T, H] (cfg's v scale), ``skip`` [B, T, H, V] and ``skw`` [H] (its skip term): see
    ``chunked_outer_triton``."""
    q, k, v, g, s0 = (x.contiguous() for x in (q, k, v, g, s0))
    vs, skip, skw = (None if x is None else x.contiguous() for x in (vs, skip, skw))
    L0 = _Launch.decode(q, v, cfg, cdt)
    L = _resolve(L0, "fwd", lambda c: _fwd(c, q, k, v, g, s0, True, False, None, vs, skip, skw)[:2], q.device,
                 truth=lambda: _torch_outer(q, k, v, g, s0, int(cfg[0]), cdt, L=L0, vs=vs, skip=skip, skw=skw))

    def run():
        p = _scores(L, q, k, g)
        return _fwd(L, q, k, v, g, s0, True, False, p, vs, skip, skw)[:2] + (
            q.new_empty(0, dtype=cdt) if p is None else p,)

    return _too_big_is_clear(L, "forward", run)


_outer_fwd_op = torch.library.custom_op("dsfc::outer_scan_fwd", mutates_args=())(_outer_scan_fwd)


@_outer_fwd_op.register_fake
def _(q, k, v, g, s0, cfg, cdt, vs=None, skip=None, skw=None):
    B, T, _, K = q.shape
    H, V = v.shape[2], v.shape[-1]
    L = _Launch.decode(q, v, cfg, cdt)
    p = q.new_empty((B, T, H, L.chunk), dtype=L.states_dtype) if L.decay == 2 else q.new_empty(0, dtype=cdt)
    return q.new_empty((B, T, H, V), dtype=cdt), q.new_empty((B, H, K, V), dtype=cdt), p


@torch.library.custom_op("dsfc::outer_scan_bwd", mutates_args=())
def _outer_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, s0: torch.Tensor,
                  sT: torch.Tensor, p: torch.Tensor, dy: torch.Tensor, dsT: torch.Tensor, cfg: list[int],
                  cdt: torch.dtype, vs: Optional[torch.Tensor] = None, skip: Optional[torch.Tensor] = None,
                  skw: Optional[torch.Tensor] = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dg, ds0, dvs, dskip, dskw)`` in the inputs' dtypes (``dg`` of the dummy ``g`` is zeros when
    there is no decay; the last three empty when their inputs are None). The v scale's and the skip term's
    gradients are torch, from the kernels' gradient of the scaled v and from dy: dv = vs dv', dvs = sum_V v dv',
    dskip = skw dy, dskw = sum_(B, T, V) skip dy."""
    q, k, v, g, s0, dy, dsT = (x.contiguous() for x in (q, k, v, g, s0, dy, dsT))
    vs = None if vs is None else vs.contiguous()
    L0 = _Launch.decode(q, v, cfg, cdt)
    L = _resolve(L0, "bwd", lambda c: _slices_summed(_bwd(c, q, k, v, g, s0, dy, dsT, p, vs)), q.device,
                 truth=lambda: _torch_outer(q, k, v, g, s0, int(cfg[0]), cdt, dy, dsT, L=L0, vs=vs))
    dq, dk, dv, ds0 = _too_big_is_clear(L, "backward", lambda: _bwd(L, q, k, v, g, s0, dy, dsT, p, vs))
    # the part sums, dq, dk in the inputs' dtypes and dL/dg (a reverse cumsum over time): one launch
    dq, dk, dg = _bwd_epilogue(dq, dk, q, k, g, sT, dsT, L.decay, L.cdt, L.rq, L.rk)
    dvs = q.new_empty(0) if vs is None else (v.to(cdt) * dv).sum(-1).to(vs.dtype)  # (outputs may not alias)
    if vs is not None:
        dv = vs.to(cdt)[..., None] * dv
    dskip = q.new_empty(0) if skip is None else (skw.to(cdt)[:, None] * dy).to(skip.dtype)
    dskw = q.new_empty(0) if skip is None else (skip.to(cdt) * dy).sum((0, 1, 3)).to(skw.dtype)
    return dq, dk, dv.to(v.dtype), dg, ds0.to(s0.dtype), dvs, dskip, dskw


@_outer_bwd_op.register_fake
def _(q, k, v, g, s0, sT, p, dy, dsT, cfg, cdt, vs=None, skip=None, skw=None):
    return tuple(torch.empty_like(x) for x in (q, k, v, g, s0)) + tuple(
        q.new_empty(0) if x is None else torch.empty_like(x) for x in (vs, skip, skw))


def _setup_context(ctx, inputs, output):
    q, k, v, g, s0, cfg, cdt, vs, skip, skw = inputs
    ctx.cfg, ctx.cdt = cfg, cdt
    # the inputs (held by the caller anyway), one state per row and the per-key scores (chunk values per row of q;
    # recomputing them cost 0.8 of GLA's 9.3 ms forward+backward on an H200): the backward recomputes the states
    ctx.save_for_backward(q, k, v, g, s0, output[1], output[2], vs, skip, skw)
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, dy, dsT, dp):
    q, k, v, g, s0, sT, p, vs, skip, skw = ctx.saved_tensors
    if dy is None:
        dy = sT.new_zeros((*v.shape[:3], sT.shape[-1]))
    if dsT is None:
        dsT = torch.zeros_like(sT)
    dq, dk, dv, dg, ds0, dvs, dskip, dskw = _outer_bwd_op(q, k, v, g, s0, sT, p, dy, dsT, ctx.cfg, ctx.cdt, vs, skip,
                                                          skw)
    return (dq, dk, dv, (dg if int(ctx.cfg[0]) else None), ds0, None, None, None if vs is None else dvs,
            None if skip is None else dskip, None if skip is None else dskw)


_outer_fwd_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(_outer_bwd_op, "outer-product scan")


def chunked_outer_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: Optional[torch.Tensor] = None,
                         h0: Optional[torch.Tensor] = None, *, chunk: Optional[int] = None,
                         output_final_state: bool = False, readout: str = "post", block_v: Optional[int] = None,
                         num_warps: Optional[int] = None, schedule: Optional[str] = None,
                         heads_per_group: Optional[int] = None, v_scale: Optional[torch.Tensor] = None,
                         skip: Optional[torch.Tensor] = None, skip_weight: Optional[torch.Tensor] = None):
    """``chunked_outer_scan`` (same arguments and results) on the Triton kernels above: CUDA tensors, or CPU tensors
    under ``TRITON_INTERPRET=1`` (slow: for tests). Differentiable w.r.t. q, k, v, log_decay and h0.

    ``chunk`` (default: CHUNK_CUDA on a GPU with half operands and no per-key decay, else CHUNK), ``block_v`` (the
    value slice of one program; the defaults: ``default_tiles``), ``num_warps`` and ``schedule`` (``"fused"``: one
    sequential kernel per (b, h, value slice); ``"split"``: a light sequential pass writing the chunk-start states,
    then one program per chunk; ``"auto"``: the faster on a GPU, timed once per launch shape; default SCHEDULE) are
    tuning knobs (``dsfc bench --gpu`` sweeps them).
    With q, k, v all bf16 (or all fp16) the matmuls take that dtype (HALF_DOTS), accumulating in fp32.

    ``readout="pre"`` (y_t = S_(t-1)^T q_t, RWKV) is the post-update kernel run on the queries moved one step
    earlier, with y_0 = h0^T q_0 (as ``chunked_outer_scan`` does it); the shift is torch, so autograd covers it.

    The spec's elementwise maths around the scan, read by the kernels instead of written to memory first (each
    differentiable; the H heads are v's):

    - ``heads_per_group`` R: q and / or k may be [B, T, H / R, K], shared by R consecutive heads (head h reads group
      h // R: Mamba-2's grouped B and C); the kernels read the group's rows, dq / dk are summed over its heads.
    - ``v_scale`` [B, T, H]: the scan's v is ``v_scale[..., None] * v`` (SSD's dt x), multiplied on load.
    - ``skip`` [B, T, H, V] with ``skip_weight`` [H]: y + skip_weight[h] skip[b, t, h] (the D u term), added in the
      forward's store.

    The decode step (T = 1 without autograd), the per-key decay (its score kernels read q, k per head) and the pre
    readout's queries take the streams built in torch (``_streams``) instead: the same results."""
    check_tensors("chunked_outer_triton", q=q, k=k, v=v, log_decay=log_decay, h0=h0, v_scale=v_scale, skip=skip,
                  skip_weight=skip_weight)
    R = 1 if heads_per_group is None else check_int_option("heads_per_group", heads_per_group, 1)
    H = v.shape[2] if v.dim() == 4 else None
    rq, rk = (1 if x.dim() != 4 or H is None or x.shape[2] == H or R == 1 else R for x in (q, k))
    for name, x, r in (("q", q, rq), ("k", k, rk)):
        if r > 1 and x.shape[2] * r != H:
            raise ValueError(f"chunked_outer_triton: {name} [B,T,G,K] read by heads_per_group={R} heads each must "
                             f"have G * {R} = H = {H} (v's heads); got {tuple(x.shape)}")
    # the checks see q, k per head (a broadcast view of the group's rows: shapes only)
    check_outer_inputs("chunked_outer_triton", *(x if r == 1 else x[:, :, :1].expand(*x.shape[:2], H, x.shape[3])
                                                 for x, r in ((q, rq), (k, rk))), v, log_decay, h0, readout)
    if v_scale is not None and v_scale.shape != v.shape[:3]:
        raise ValueError(f"chunked_outer_triton: v_scale must be [B,T,H] = {tuple(v.shape[:3])}, got "
                         f"{tuple(v_scale.shape)}")
    if (skip is None) != (skip_weight is None):
        raise ValueError("chunked_outer_triton: skip and skip_weight come together (y + skip_weight[h] skip)")
    if skip is not None and (skip.shape != v.shape or skip_weight.shape != (v.shape[2],)):
        raise ValueError(f"chunked_outer_triton: skip must be [B,T,H,V] = {tuple(v.shape)} and skip_weight [H], got "
                         f"{tuple(skip.shape)}, {tuple(skip_weight.shape)}")
    promoted = q.dtype
    for x in (k, v, log_decay, h0, v_scale, skip, skip_weight):
        promoted = promoted if x is None else torch.promote_types(promoted, x.dtype)
    if not promoted.is_floating_point:  # complex was a KeyError deep in the launch, all-integer an integer result
        raise TypeError(f"chunked_outer_triton: q, k, v (log_decay, h0) must promote to a floating-point dtype, got "
                        f"{promoted}" + (" (complex scans: chunked_outer_scan)" if promoted.is_complex else ""))
    # the tuning knobs: a float or a string was a TypeError from a comparison, an odd num_warps reached triton
    # chunk: tl.dot's smallest tile is 16; block_v likewise
    chunk = None if chunk is None else check_int_option("chunk", chunk, 16, power_of_two=True)
    block_v = None if block_v is None else check_int_option("block_v", block_v, 16, power_of_two=True)
    num_warps = None if num_warps is None else check_int_option("num_warps", num_warps, 1, True, maximum=32)
    knobs = dict(chunk=chunk, block_v=block_v, num_warps=num_warps, schedule=schedule)
    if readout == "pre" and q.shape[1] > 0:
        q = _streams(q, k, v, rq, 1)[0]  # y_0 = h0^T q_0 reads q per head
        start = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[-1]) if h0 is None else h0
        y, state = read_before_update(
            lambda qq: chunked_outer_triton(qq, k, v, log_decay, h0, output_final_state=True, v_scale=v_scale,
                                            heads_per_group=R if rk > 1 else None, **knobs), q, start)
        if skip is not None:
            y = y + skip_weight[:, None] * skip
        return (y, state) if output_final_state else y
    B, T, _, K = q.shape
    V = v.shape[-1]
    decay = 0 if log_decay is None else (1 if log_decay.dim() == 3 else 2)  # NONE, SCALAR, PER_KEY
    if decay == 2 and (rq > 1 or rk > 1 or v_scale is not None):  # the score kernels read q, k per head
        q, k, v = _streams(q, k, v, rq, rk, v_scale)
        rq, rk, v_scale = 1, 1, None
    half = 0
    if HALF_DOTS and q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16):
        half = 1 if q.dtype == torch.bfloat16 else 2
        if half == 1 and q.device.type != "cuda":  # the interpreter's bf16 tl.dot returns garbage (no numpy bf16)
            half = 0
    # one choice of tiles for the chunk in use: the value slice picked for the default chunk (128 wide at chunk 16
    # with a per-key decay on a GPU) does not fit shared memory at a chunk the caller gives (64)
    tiles = default_tiles(q.device.type == "cuda", half, decay, K, V, chunk)
    chunk = tiles.chunk
    schedule = SCHEDULE if schedule is None else schedule
    if schedule not in ("auto", "fused", "split"):
        raise ValueError(f"schedule must be 'auto', 'fused' or 'split', got {schedule!r}")
    dev = q.device
    require_triton_device(dev)
    extras = [x for x in (v_scale, skip, skip_weight) if x is not None]
    inputs = [x for x in (q, k, v, log_decay, h0) if x is not None] + extras
    out_dtype = inputs[0].dtype
    for x in inputs[1:]:
        out_dtype = torch.promote_types(out_dtype, x.dtype)
    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32  # fp32 compute for fp32 / bf16 / fp16
    s0 = torch.zeros((B, H, K, V), device=dev, dtype=cdt) if h0 is None else h0
    if T == 0:
        y = torch.empty((B, 0, H, V), device=dev, dtype=out_dtype)
        return (y, s0.contiguous().to(out_dtype)) if output_final_state else y
    block_k = tiles.block_k
    block_v = tiles.block_v if block_v is None else block_v
    num_warps = tiles.num_warps if num_warps is None else num_warps
    L = _Launch(B, T, H, K, V, decay, int(chunk), block_k, int(block_v), cdt, half, int(num_warps),
                {"fused": 0, "split": 1, "auto": 2}[schedule], rq, rk, int(v_scale is not None), int(skip is not None))
    hazard = fused_miscompiles(L, dev)
    if hazard and schedule == "fused":
        raise ValueError(f"chunked_outer_triton: {hazard}; use schedule='split' or 'auto', or num_warps=8")
    if hazard:  # auto: the split schedule only (the fused one would be the reference that split is checked against)
        L = replace(L, split=1)
    g = q.new_empty(0) if log_decay is None else log_decay  # NONE: a dummy the kernels never read
    if T == 1 and eager_inference(q, k, v, g, s0, *extras):  # decoding (step): one kernel, the state read and
        # written once; the streams in torch (one step: small)
        q, k, v = _streams(q, k, v, rq, rk, v_scale)
        y, sT = _single_step(q, k, v, log_decay, s0, decay, cdt)  # s0 strided as given (no copy)
        if skip is not None:
            y = y + skip_weight.to(cdt).unsqueeze(-1) * skip.to(cdt)
        return (y.to(out_dtype), sT.to(out_dtype)) if output_final_state else y.to(out_dtype)
    s0 = s0.contiguous()
    fused = dict(vs=v_scale, skip=skip, skw=skip_weight) if extras else {}
    forward = _outer_scan_fwd if eager_inference(q, k, v, g, s0, *extras) else _outer_fwd_op
    cfg = L.encode() if fused or rq > 1 or rk > 1 else L.encode()[:7]
    y, sT, _ = forward(q, k, v, g, s0, cfg, cdt, **fused)
    y = y.to(out_dtype)
    return (y, sT.to(out_dtype)) if output_final_state else y
