"""Triton kernels, launch and autograd for the chunked outer-product family (linear attention, RetNet, GLA, mLSTM,
Mamba-2 SSD, ...): ``chunked_outer_triton``, a drop-in for ``dsfc.runtime.scans.chunked_outer_scan``.

Per batch row and head (fla's layout: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]``)::

    S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T,     y_t = S_t^T q_t       (g: log-decay, none / [B,T,H] / [B,T,H,K])

The generated module computes these streams in torch (they involve the spec's projections and elementwise maths,
differentiated by ordinary autograd) and hands them to this file, so the kernels are spec-independent. What the
kernels fuse: the chunking and T-masking, the in-chunk segment sums of the log-decay, every decay mask and decay
factor (exp), the intra-chunk ``(Q K^T ⊙ decay) V``, the inter-chunk read ``(Q ⊙ decay) S`` and the state passing;
the state lives in registers in the compute dtype (fp32, or fp64 for fp64 inputs) for the whole sequence.

Decay masks (same maths as scans.py's ``_outer_scan_impl``, chunk length L, positions i, j in a chunk):
``seg[i, j] = sum_{j < l <= i} g_l`` is accumulated from its own terms by one masked cumsum (mamba2's ``segsum``),
never as a difference of prefix sums and never as a ratio of exp(cumsum); the decay of ``k_j v_j^T`` to the chunk end
is the last row of the same matrix, the decay of the previous state to step i is the in-chunk cumsum. For g <= 0
every exponent is <= 0, every factor in [0, 1]. A per-key decay (GLA) keeps the key index in the mask, so its
intra-chunk scores are elementwise: built one query row i at a time from ``[L, K]`` tiles (row i's segment sums are
a reverse cumsum of g one step later, cut below row i), not from one ``[L, L, K]`` tile, which did not fit in the
registers at K = 128 (ptxas reported kilobytes of spills).

Forward, two schedules (``SCHEDULE``). Fused: one program per (b, h, value slice of BLOCK_V) walks the chunks of its
(b, h) in order with its ``[K, BLOCK_V]`` slice of the state in registers, ``tl.dot`` for the three matmuls per
chunk. Split (fla's and Mamba-2's design): that sequential pass only carries the state and stores it at every chunk
start (``[B, H, T / L, K, V]`` in the matmul operand dtype), then one program per (chunk, b, h, value slice) computes
the chunk's outputs from its start state: T / L times the parallelism for the states' round trip through memory.
"auto" (the default) times both on a GPU once per launch shape and keeps the faster of two that agree.

Backward (no activations stored by the forward): the forward's sequential pass is rerun to store the chunk-start
states; then, fused: one program per (b, h, value slice) walks the chunks in reverse with its slice of ``dL/dS`` in
registers and writes dv, dS_0 and its share of dq, dk (sums over V: one buffer per slice, summed in torch); split:
that reverse pass only stores ``dL/dS`` after every chunk, and one program per chunk computes dq, dk, dv from the two
stored states. The log-decay gradient uses the identity of fla's ``chunk_simple_gla`` / ``chunk_gla``: y and S_T
depend on g only through ``exp(G_i - G_j)`` between a query at i and a key at j (G the prefix sum of g over time), so
``dL/dG_t = q_t ⊙ dq_t - k_t ⊙ dk_t`` (+ ``<dS_T, S_T>`` at t = T - 1) and ``dL/dg_t = sum_(s >= t) dL/dG_s`` (a
reverse cumsum over time, in torch).

torch.compile: the forward and backward launches are ``torch.library.custom_op`` s (``dsfc::outer_scan_fwd`` /
``_bwd``) with ``register_fake`` (shapes only) and ``register_autograd``, as the diagonal and dense kernels are, so a
compiled model keeps one opaque node per launch. No log-decay is the decay kind NONE (in the ops' ``int[]`` config)
with an empty dummy tensor in its place; the backward's torch tail (slice sums, the log-decay cumsum) runs inside the
backward op.

Precision: with fp32 (fp64) q, k, v, ``tl.dot`` runs with ``input_precision="ieee"`` (no TF32: the module computes
in fp32 on purpose; on a GPU such dots do not use the tensor cores). With q, k, v all bf16 (or all fp16) the matmuls
take that dtype, as fla's kernels do (HALF_DOTS): the scores, decayed queries / keys and the state are rounded to it
before each tensor-core product, which accumulates in fp32; the decays, the state and every accumulation stay fp32.
Under the interpreter bf16 dots fall back to fp32 (its bf16 tl.dot is wrong), fp16 dots run as on a GPU.

Status: checked against the float64 reference under ``TRITON_INTERPRET=1`` (triton 3.9, and 3.6 with numpy 2.2: the
3.6 interpreter fails on numpy 2.4, for every kernel), both schedules; compiled for sm_90 by triton 3.6 and 3.9
without a GPU (``tests/triton/aot_compile.py --outer-only --resources`` prints ptxas' registers and spills); the
fused schedule with the old ``[L, L, K]`` per-key tiles ran on an H200 (``tests/triton`` compiled, triton 3.6; timings
in the README's "GPU benchmark": not yet competitive with fla). Chunk and block sizes are not autotuned (``dsfc
bench --gpu`` sweeps a few); the value-slice split of the backward (q k^T recomputed per slice) is the simple version.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types

import os
from dataclasses import dataclass, replace
from typing import Optional

import torch

import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from dsfc.runtime import autochoice
from dsfc.runtime.dispatch import eager_inference
from dsfc.runtime.scans import check_int_option, check_outer_inputs, chunked_outer_scan, read_before_update

__all__ = ["chunked_outer_triton", "CHUNK", "MAX_BLOCK_V"]

CHUNK = 16  # chunk length L (tl.dot needs >= 16 on a GPU); also the tile of the per-key [L, L, K] decay mask
CHUNK_CUDA = 64  # on a GPU without per-key decay: longer chunks, fewer sequential steps ([L, L] masks only)
HALF_DOTS = True  # bf16 / fp16 q, k, v: the matmuls run in that dtype on tensor cores (fp32 accumulation), as fla's
# the DECAY constexpr: no decay, one log-decay per head, one per (head, key) (constexpr globals: kernels may read them)
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
def _key_decay_row(g_next, rows, i):
    """Per-key decay from every key j of the chunk to query row i, [BT, BK]: exp(seg(j+1..i)) for j <= i, else 0;
    seg(j+1..i) = sum_(l=j..i-1) g_next[l], a reverse cumsum of g_next cut below row i."""
    seg = tl.cumsum(tl.where((rows < i)[:, None], g_next, 0.0), axis=0, reverse=True)
    return tl.where((rows <= i)[:, None], tl.exp(seg), 0.0)


@triton.jit
def _row(x, rows, i):
    """Row i of the register tile x [BT, N] as [N]."""
    return tl.sum(tl.where((rows == i)[:, None], x, 0.0), axis=0)


@triton.jit
def _key_scores(q, k, g_next, rows, BT: tl.constexpr, DTYPE: tl.constexpr):
    """Per-key decayed causal scores P[i, j] = sum_a q[i, a] k[j, a] exp(seg_a(j+1..i)), [BT, BT], one query row at
    a time: [BT, BK] tiles instead of an [BT, BT, BK] one (which does not fit in registers at BK = 128)."""
    p = tl.zeros((BT, BT), DTYPE)
    for i in range(BT):
        p_i = tl.sum(k * _key_decay_row(g_next, rows, i) * _row(q, rows, i)[None, :], axis=1)  # [BT] over keys j
        p = tl.where((rows == i)[:, None], p_i[None, :], p)
    return p


@triton.jit
def _key_scores_bwd(q, k, g_next, dp, rows, BT: tl.constexpr, DTYPE: tl.constexpr):
    """``_key_scores`` and its gradients: P, dq = dL/dq and dk = dL/dk through P given dp = dL/dP, row by row."""
    p = tl.zeros((BT, BT), DTYPE)
    dq = tl.zeros(q.shape, DTYPE)
    dk = tl.zeros(k.shape, DTYPE)
    for i in range(BT):
        sel = (rows == i)[:, None]
        e = _key_decay_row(g_next, rows, i)  # [BT, BK]
        q_i = _row(q, rows, i)
        dp_i = _row(dp, rows, i)  # [BT] over keys j
        ke = k * e
        p = tl.where(sel, tl.sum(ke * q_i[None, :], axis=1)[None, :], p)
        dq = tl.where(sel, tl.sum(dp_i[:, None] * ke, axis=0)[None, :], dq)
        dk += dp_i[:, None] * e * q_i[None, :]
    return p, dq, dk


@triton.jit
def _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K, V,
                BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr):
    """q, k [BT, BK], v [BT, BV], g and g_next ([BT] or [BT, BK]) of one chunk, zero beyond T, K, V and (g_next)
    the chunk."""
    row = (b * T + t) * H + h  # [BT] int64: (b, t, h) of the [B, T, H, ...] streams
    m_qk = mt[:, None] & mk[None, :]
    q = tl.load(q_ptr + row[:, None] * K + kk[None, :], mask=m_qk, other=0.0).to(DTYPE)
    k = tl.load(k_ptr + row[:, None] * K + kk[None, :], mask=m_qk, other=0.0).to(DTYPE)
    v = tl.load(v_ptr + row[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0).to(DTYPE)
    g, g_next = _load_log_decay(g_ptr, b, h, t, mt, rows, kk, mk, T, H, K, BT, DECAY, DTYPE)
    return q, k, v, g, g_next


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
def _chunk_y(q, k, v, g, g_next, s, rows, BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr,
             HALF: tl.constexpr):
    """y [BT, BV] of one chunk given the state before it, s [BK, BV]: (decayed causal scores) v + (decayed q) s."""
    q_in, k_out, tot = _chunk_decays(g, g_next, DECAY)
    if DECAY == PER_KEY:
        p = _key_scores(q, k, g_next, rows, BT, DTYPE)
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
def _chunk_grads(q, k, v, g, g_next, dy, s, ds, rows, BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr,
                 HALF: tl.constexpr):
    """dq, dk (this value slice's share) and dv of one chunk, given the state before it s and ds = dL/d(state after
    it)."""
    q_in, k_out, tot = _chunk_decays(g, g_next, DECAY)
    dpv = _dot(dy, tl.trans(v), HALF)  # dL/dP, P the decayed causal scores (y_intra = P v)
    if DECAY == PER_KEY:
        p, dq, dk = _key_scores_bwd(q, k, g_next, dpv, rows, BT, DTYPE)
        k_dec = k * k_out
        dq += q_in * _dot(dy, tl.trans(s), HALF)
        dk += k_out * _dot(v, tl.trans(ds), HALF)
    else:
        if DECAY == SCALAR:
            mask = _scalar_mask(g, rows, BT)
        else:
            mask = tl.where(rows[:, None] >= rows[None, :], 1.0, 0.0).to(DTYPE)
        p = _dot(q, tl.trans(k), HALF) * mask
        dp = dpv * mask
        dq = _dot(dp, k, HALF)
        dk = _dot(tl.trans(dp), q, HALF)
        k_dec = k * k_out[:, None]
        dq += q_in[:, None] * _dot(dy, tl.trans(s), HALF)
        dk += k_out[:, None] * _dot(v, tl.trans(ds), HALF)
    dv = _dot(tl.trans(p), dy, HALF) + _dot(k_dec, ds, HALF)
    return dq, dk, dv


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
def _outer_fwd(q_ptr, k_ptr, v_ptr, g_ptr, s0_ptr, y_ptr, sT_ptr, states_ptr, T, H, K, V, NC, NV,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
               WRITE_Y: tl.constexpr, STORE_STATES: tl.constexpr, DTYPE: tl.constexpr, HALF: tl.constexpr):
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
        q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K, V,
                                         BT, DECAY, DTYPE)
        if WRITE_Y:
            y = _chunk_y(q, k, v, g, g_next, s, rows, BT, DECAY, DTYPE, HALF)
            row = (b * T + t) * H + h
            tl.store(y_ptr + row[:, None] * V + vv[None, :], y, mask=mt[:, None] & mv[None, :])
        s = _chunk_state(k, v, g, g_next, s, DECAY, HALF)
    tl.store(sT_ptr + i_bh * K * V + s_off, s, mask=m_s)


@triton.jit
def _outer_out(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, y_ptr, T, H, K, V, NC, NV,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr,
               HALF: tl.constexpr):
    """Split schedule: y of one chunk of one (b, h) and value slice, from the chunk's start state that
    ``_outer_fwd`` (STORE_STATES) wrote. Every chunk is independent: B * H * NC * cdiv(V, BV) programs."""
    i_v, c, b, h, i_bh = _program_coords(NV, H, NC, True)
    rows, kk, vv, mk, mv, s_off, m_s = _slice_offsets(i_v, K, V, BT, BK, BV)
    s = tl.load(states_ptr + (i_bh * NC + c) * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)
    t = c * BT + rows
    mt = t < T
    q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K, V,
                                     BT, DECAY, DTYPE)
    y = _chunk_y(q, k, v, g, g_next, s, rows, BT, DECAY, DTYPE, HALF)
    row = (b * T + t) * H + h
    tl.store(y_ptr + row[:, None] * V + vv[None, :], y, mask=mt[:, None] & mv[None, :])


@triton.jit
def _store_chunk_grads(dq_ptr, dk_ptr, dv_ptr, dq, dk, dv, row, mt, kk, mk, vv, mv, part, K, V):
    """Store one chunk's dq, dk (this value slice's share, at offset ``part``) and dv."""
    m_qk = mt[:, None] & mk[None, :]
    tl.store(dq_ptr + part + row[:, None] * K + kk[None, :], dq, mask=m_qk)
    tl.store(dk_ptr + part + row[:, None] * K + kk[None, :], dk, mask=m_qk)
    tl.store(dv_ptr + row[:, None] * V + vv[None, :], dv, mask=mt[:, None] & mv[None, :])


@triton.jit
def _outer_bwd(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, dy_ptr, dsT_ptr, dq_ptr, dk_ptr, dv_ptr, ds0_ptr, dstates_ptr,
               B, T, H, K, V, NC, NV, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
               GRADS: tl.constexpr, STORE_DSTATES: tl.constexpr, DTYPE: tl.constexpr, HALF: tl.constexpr):
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
        q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K, V,
                                         BT, DECAY, DTYPE)
        dy = tl.load(dy_ptr + row[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0).to(DTYPE)
        if STORE_DSTATES:
            tl.store(dstates_ptr + (i_bh * NC + c) * K * V + s_off, ds, mask=m_s)
        if GRADS:
            s = tl.load(states_ptr + (i_bh * NC + c) * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)  # S before
            dq, dk, dv = _chunk_grads(q, k, v, g, g_next, dy, s, ds, rows, BT, DECAY, DTYPE, HALF)
            _store_chunk_grads(dq_ptr, dk_ptr, dv_ptr, dq, dk, dv, row, mt, kk, mk, vv, mv, part, K, V)
        ds = _chunk_dstate(q, g, g_next, dy, ds, DECAY, HALF)
    tl.store(ds0_ptr + i_bh * K * V + s_off, ds, mask=m_s)


@triton.jit
def _outer_grads(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, dstates_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr, B, T, H, K, V,
                 NC, NV, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                 DTYPE: tl.constexpr, HALF: tl.constexpr):
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
    q, k, v, g, g_next = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, rows, kk, mk, vv, mv, T, H, K, V,
                                     BT, DECAY, DTYPE)
    dy = tl.load(dy_ptr + row[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0).to(DTYPE)
    dq, dk, dv = _chunk_grads(q, k, v, g, g_next, dy, s, ds, rows, BT, DECAY, DTYPE, HALF)
    _store_chunk_grads(dq_ptr, dk_ptr, dv_ptr, dq, dk, dv, row, mt, kk, mk, vv, mv, part, K, V)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


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

    @property
    def nc(self) -> int:
        return -(-self.T // self.chunk)

    @property
    def nv(self) -> int:
        return -(-self.V // self.block_v)

    @property
    def tl_dtype(self):
        return tl.float64 if self.cdt == torch.float64 else tl.float32

    @property
    def states_dtype(self) -> torch.dtype:
        """Stored chunk states (and their gradients): the matmul operand dtype. The kernels read them only as
        operands of ``_dot``, which rounds them to that dtype anyway, so storing them rounded loses nothing."""
        return {1: torch.bfloat16, 2: torch.float16}.get(self.half, self.cdt)

    def encode(self) -> list[int]:
        return [self.decay, self.chunk, self.block_k, self.block_v, self.half, self.num_warps, self.split]

    @staticmethod
    def decode(q: torch.Tensor, v: torch.Tensor, cfg, cdt: torch.dtype) -> "_Launch":
        B, T, H, K = q.shape
        decay, chunk, block_k, block_v, half, num_warps, split = (int(x) for x in cfg)
        return _Launch(B, T, H, K, v.shape[-1], decay, chunk, block_k, block_v, cdt, half, num_warps, split)

    def constexprs(self) -> dict:
        return dict(BT=self.chunk, BK=self.block_k, BV=self.block_v, DECAY=self.decay, DTYPE=self.tl_dtype,
                    HALF=self.half, num_warps=self.num_warps)


def _fwd(L: _Launch, q, k, v, g, s0, write_y: bool, store_states: bool):
    """``(y or None, S_T, chunk-start states or None)``. The fused schedule writes y from the sequential kernel; the
    split one stores the chunk-start states there and computes y in a second, chunk-parallel launch."""
    dev = q.device
    g = q if L.decay == 0 else g  # NONE: any pointer, never read
    y = torch.empty((L.B, L.T, L.H, L.V), device=dev, dtype=L.cdt) if write_y else None
    sT = torch.empty((L.B, L.H, L.K, L.V), device=dev, dtype=L.cdt)
    keep_states = store_states or (write_y and L.split)
    states = torch.empty((L.B, L.H, L.nc, L.K, L.V), device=dev, dtype=L.states_dtype) if keep_states else None
    fused_y = write_y and not L.split
    _outer_fwd[(L.nv * L.B * L.H,)](q, k, v, g, s0, y if fused_y else sT, sT, sT if states is None else states,
                                    L.T, L.H, L.K, L.V, L.nc, L.nv, WRITE_Y=fused_y, STORE_STATES=keep_states,
                                    **L.constexprs())
    if write_y and L.split:
        _outer_out[(L.nv * L.nc * L.B * L.H,)](q, k, v, g, states, y, L.T, L.H, L.K, L.V, L.nc, L.nv,
                                               **L.constexprs())
    return y, sT, states


def _bwd(L: _Launch, q, k, v, g, s0, dy, dsT):
    """``(dq, dk, dv, ds0)`` in the compute dtype (dq, dk still split by value slice: [nv, B, T, H, K])."""
    dev = q.device
    _, _, states = _fwd(L, q, k, v, g, s0, False, True)  # recompute the chunk-start states
    g = q if L.decay == 0 else g
    dq = torch.empty((L.nv, L.B, L.T, L.H, L.K), device=dev, dtype=L.cdt)
    dk = torch.empty_like(dq)
    dv = torch.empty((L.B, L.T, L.H, L.V), device=dev, dtype=L.cdt)
    ds0 = torch.empty((L.B, L.H, L.K, L.V), device=dev, dtype=L.cdt)
    dstates = torch.empty_like(states) if L.split else ds0
    _outer_bwd[(L.nv * L.B * L.H,)](q, k, v, g, states, dy, dsT, dq, dk, dv, ds0, dstates, L.B, L.T, L.H, L.K, L.V,
                                    L.nc, L.nv, GRADS=not L.split, STORE_DSTATES=bool(L.split), **L.constexprs())
    if L.split:
        _outer_grads[(L.nv * L.nc * L.B * L.H,)](q, k, v, g, states, dstates, dy, dq, dk, dv, L.B, L.T, L.H, L.K,
                                                 L.V, L.nc, L.nv, **L.constexprs())
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
           L.block_v, L.half, L.num_warps, L.cdt)
    # the same maths with the same operand rounding, summed in another order
    rtol = 2e-2 if L.half else 1e-4
    return (fused, split)[autochoice.choose(key, (fused, split), run, device, rtol, truth)]


def _torch_outer(q, k, v, g, s0, decay: int, cdt: torch.dtype, dy=None, dsT=None):
    """The ops' results from the torch chunked scan (an independent implementation, for ``_resolve`` to settle a
    disagreement between the schedules): ``(y, S_T)``, or with ``dy``, ``dsT`` the gradients ``(dq, dk, dv, ds0)``
    (by ``torch.func.vjp``: inside a custom op's implementation ordinary autograd records nothing)."""
    log_decay = g.detach().to(cdt) if decay else None

    def scan(q_, k_, v_, s0_):
        return chunked_outer_scan(q_, k_, v_, log_decay, s0_, output_final_state=True)

    xs = [x.detach().to(cdt) for x in (q, k, v, s0)]
    if dy is None:
        return scan(*xs)
    _, vjp = torch.func.vjp(scan, *xs)
    return vjp((dy.to(cdt), dsT.to(cdt)))


def _slices_summed(grads):
    """``_bwd``'s gradients with dq, dk summed over the value slices (the op's results)."""
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


# ---- the custom ops (eager implementations; fake = shapes only) -------------------------------------------------
# torch.compile of a surrounding model keeps one opaque node per launch (Dynamo cannot trace Triton's launcher under
# the interpreter). Custom ops take no optional tensor that autograd must route, so a missing log-decay is the decay
# kind NONE in ``cfg`` with a dummy empty ``g`` (never read by the kernels, its gradient None).


def _outer_scan_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, s0: torch.Tensor,
                    cfg: list[int], cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [B, T, H, V], S_T [B, H, K, V])`` in the compute dtype ``cdt``."""
    q, k, v, g, s0 = (x.contiguous() for x in (q, k, v, g, s0))
    L = _resolve(_Launch.decode(q, v, cfg, cdt), "fwd", lambda c: _fwd(c, q, k, v, g, s0, True, False)[:2], q.device,
                 truth=lambda: _torch_outer(q, k, v, g, s0, int(cfg[0]), cdt))
    y, sT, _ = _too_big_is_clear(L, "forward", lambda: _fwd(L, q, k, v, g, s0, True, False))
    return y, sT


_outer_fwd_op = torch.library.custom_op("dsfc::outer_scan_fwd", mutates_args=())(_outer_scan_fwd)


@_outer_fwd_op.register_fake
def _(q, k, v, g, s0, cfg, cdt):
    B, T, H, K = q.shape
    V = v.shape[-1]
    return q.new_empty((B, T, H, V), dtype=cdt), q.new_empty((B, H, K, V), dtype=cdt)


@torch.library.custom_op("dsfc::outer_scan_bwd", mutates_args=())
def _outer_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, s0: torch.Tensor,
                  sT: torch.Tensor, dy: torch.Tensor, dsT: torch.Tensor, cfg: list[int],
                  cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dg, ds0)`` in the inputs' dtypes (``dg`` of the dummy ``g`` is zeros when there is no decay)."""
    q, k, v, g, s0, dy, dsT = (x.contiguous() for x in (q, k, v, g, s0, dy, dsT))
    L = _resolve(_Launch.decode(q, v, cfg, cdt), "bwd", lambda c: _slices_summed(_bwd(c, q, k, v, g, s0, dy, dsT)),
                 q.device, truth=lambda: _torch_outer(q, k, v, g, s0, int(cfg[0]), cdt, dy, dsT))
    dq, dk, dv, ds0 = _too_big_is_clear(L, "backward", lambda: _bwd(L, q, k, v, g, s0, dy, dsT))
    dq, dk = (dq[0], dk[0]) if L.nv == 1 else (dq.sum(0), dk.sum(0))
    if L.decay == 0:
        dg = torch.zeros_like(g)
    else:
        # dL/dG_t = q_t dq_t - k_t dk_t (summed over K for one decay per head), and at t = T-1 the final state's
        # own dependence on the last prefix sum, S_T = exp(G_(T-1)) S_0 + ...
        dG = q.to(L.cdt) * dq - k.to(L.cdt) * dk
        if L.decay == 2:
            dG[:, -1] += (dsT * sT).sum(-1)
        else:
            dG = dG.sum(-1)
            dG[:, -1] += (dsT * sT).sum((-2, -1))
        dg = torch.flip(torch.cumsum(torch.flip(dG, [1]), 1), [1]).to(g.dtype)  # dL/dg_t = sum_(s>=t) dL/dG_s
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, ds0.to(s0.dtype)


@_outer_bwd_op.register_fake
def _(q, k, v, g, s0, sT, dy, dsT, cfg, cdt):
    return tuple(torch.empty_like(x) for x in (q, k, v, g, s0))


def _setup_context(ctx, inputs, output):
    q, k, v, g, s0, cfg, cdt = inputs
    ctx.cfg, ctx.cdt = cfg, cdt
    # the inputs (held by the caller anyway) and one state per row: the backward recomputes the chunk-start states
    ctx.save_for_backward(q, k, v, g, s0, output[1])


def _backward(ctx, dy, dsT):
    q, k, v, g, s0, sT = ctx.saved_tensors
    if dy is None:
        dy = sT.new_zeros((*q.shape[:3], sT.shape[-1]))
    if dsT is None:
        dsT = torch.zeros_like(sT)
    dq, dk, dv, dg, ds0 = _outer_bwd_op(q, k, v, g, s0, sT, dy, dsT, ctx.cfg, ctx.cdt)
    return dq, dk, dv, (dg if int(ctx.cfg[0]) else None), ds0, None, None


_outer_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def chunked_outer_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: Optional[torch.Tensor] = None,
                         h0: Optional[torch.Tensor] = None, *, chunk: Optional[int] = None,
                         output_final_state: bool = False, readout: str = "post", block_v: Optional[int] = None,
                         num_warps: Optional[int] = None, schedule: Optional[str] = None):
    """``chunked_outer_scan`` (same arguments and results) on the Triton kernels above: CUDA tensors, or CPU tensors
    under ``TRITON_INTERPRET=1`` (slow: for tests). Differentiable w.r.t. q, k, v, log_decay and h0.

    ``chunk`` (default: CHUNK_CUDA on a GPU without per-key decay, else CHUNK), ``block_v`` (the value slice of one
    program, default min(V, MAX_BLOCK_V, 8192 / K)), ``num_warps`` and ``schedule`` (``"fused"``: one sequential
    kernel per (b, h, value slice); ``"split"``: a light sequential pass writing the chunk-start states, then one
    program per chunk; ``"auto"``: the faster on a GPU, timed once per launch shape; default SCHEDULE) are tuning knobs
    (``dsfc bench --gpu`` sweeps them).
    With q, k, v all bf16 (or all fp16) the matmuls take that dtype (HALF_DOTS), accumulating in fp32.

    ``readout="pre"`` (y_t = S_(t-1)^T q_t, RWKV) is the post-update kernel run on the queries moved one step
    earlier, with y_0 = h0^T q_0 (as ``chunked_outer_scan`` does it); the shift is torch, so autograd covers it."""
    check_outer_inputs("chunked_outer_triton", q, k, v, log_decay, h0, readout)
    promoted = q.dtype
    for x in (k, v, log_decay, h0):
        promoted = promoted if x is None else torch.promote_types(promoted, x.dtype)
    if not promoted.is_floating_point:  # complex was a KeyError deep in the launch, all-integer an integer result
        raise TypeError(f"chunked_outer_triton: q, k, v (log_decay, h0) must promote to a floating-point dtype, got "
                        f"{promoted}" + (" (complex scans: chunked_outer_scan)" if promoted.is_complex else ""))
    # the tuning knobs: a float or a string was a TypeError from a comparison, an odd num_warps reached triton
    # chunk: tl.dot's smallest tile is 16; block_v likewise
    chunk = None if chunk is None else check_int_option("chunk", chunk, 16, power_of_two=True)
    block_v = None if block_v is None else check_int_option("block_v", block_v, 16, power_of_two=True)
    num_warps = None if num_warps is None else check_int_option("num_warps", num_warps, 1, True, maximum=32)
    if readout == "pre" and q.shape[1] > 0:
        start = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[-1]) if h0 is None else h0
        y, state = read_before_update(
            lambda qq: chunked_outer_triton(qq, k, v, log_decay, h0, chunk=chunk, output_final_state=True,
                                            block_v=block_v, num_warps=num_warps, schedule=schedule), q, start)
        return (y, state) if output_final_state else y
    B, T, H, K = q.shape
    V = v.shape[-1]
    decay = 0 if log_decay is None else (1 if log_decay.dim() == 3 else 2)  # NONE, SCALAR, PER_KEY
    half = 0
    if HALF_DOTS and q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16):
        half = 1 if q.dtype == torch.bfloat16 else 2
        if half == 1 and q.device.type != "cuda":  # the interpreter's bf16 tl.dot returns garbage (no numpy bf16)
            half = 0
    if chunk is None:
        # long chunks need half operands: fp32 tiles at L = 64, K = 128 take 345 KB of shared memory in the backward
        # (sm_90 has 227 KB); per-key decay keeps [L, L, K] masks, so L = 16 there
        chunk = CHUNK_CUDA if q.device.type == "cuda" and decay != 2 and half else CHUNK
    schedule = SCHEDULE if schedule is None else schedule
    if schedule not in ("auto", "fused", "split"):
        raise ValueError(f"schedule must be 'auto', 'fused' or 'split', got {schedule!r}")
    dev = q.device
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"dsfc: the Triton kernels need CUDA tensors (got {dev.type}); on CPU set "
                           "TRITON_INTERPRET=1 before triton is imported (slow: for tests)")
    inputs = [x for x in (q, k, v, log_decay, h0) if x is not None]
    out_dtype = inputs[0].dtype
    for x in inputs[1:]:
        out_dtype = torch.promote_types(out_dtype, x.dtype)
    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32  # fp32 compute for fp32 / bf16 / fp16
    s0 = torch.zeros((B, H, K, V), device=dev, dtype=cdt) if h0 is None else h0.contiguous()
    if T == 0:
        y = torch.empty((B, 0, H, V), device=dev, dtype=out_dtype)
        return (y, s0.to(out_dtype)) if output_final_state else y
    block_k = max(16, _next_pow2(K))
    if block_v is None:
        # the [BK, BV] state slice and the dots' tiles scale with BK * BV: keep BK * BV <= 128 * 64, so that K = 256
        # or 512 still fits sm_90's 227 KB of shared memory (AOT-compiled: a 512 x 16 split backward takes 217 KB).
        # A per-key decay with half operands (chunk 16: smaller tiles) takes twice as wide a slice: on an H100 (GLA,
        # K = V = 128, bf16, T = 4096) the fused kernels with 128-wide slices at 8 warps ran 12.5 / 36.4 ms forward /
        # forward+backward against 17.4 / 55.5 ms for the default 64-wide ones, and every per-key kernel at
        # BK * BV = 128 * 128 compiles within 100 KB of shared memory (fp32 operands spill far more: kept at 64)
        wide = decay == 2 and half
        block_v = min(max(16, _next_pow2(V)), 2 * MAX_BLOCK_V if wide else MAX_BLOCK_V,
                      max(16, (16384 if wide else 8192) // block_k))
    if num_warps is None:
        # ptxas (tests/triton/aot_compile.py --resources): at these sizes 4 warps spill registers where 8 do not
        num_warps = 8 if chunk * block_k >= 64 * 64 or decay == 2 else 4
    L = _Launch(B, T, H, K, V, decay, int(chunk), block_k, int(block_v), cdt, half, int(num_warps),
                {"fused": 0, "split": 1, "auto": 2}[schedule])
    hazard = fused_miscompiles(L, dev)
    if hazard and schedule == "fused":
        raise ValueError(f"chunked_outer_triton: {hazard}; use schedule='split' or 'auto', or num_warps=8")
    if hazard:  # auto: the split schedule only (the fused one would be the reference that split is checked against)
        L = replace(L, split=1)
    g = q.new_empty(0) if log_decay is None else log_decay  # NONE: a dummy the kernels never read
    forward = _outer_scan_fwd if eager_inference(q, k, v, g, s0) else _outer_fwd_op
    y, sT = forward(q, k, v, g, s0, L.encode(), cdt)
    y = y.to(out_dtype)
    return (y, sT.to(out_dtype)) if output_final_state else y
