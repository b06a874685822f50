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
every exponent is <= 0, every factor in [0, 1]. A per-key decay (GLA) keeps the key index in the mask: an
``[L, L, K]`` tensor of segment sums (L*K exps per token; the torch path's divide and conquer needs fewer, but an
``[L, L, K]`` tile at L = 16 is cheap next to the matmuls).

Forward: grid ``(cdiv(V, BLOCK_V), B * H)``; each program walks the chunks of one (b, h) in order with its
``[K, BLOCK_V]`` slice of the state in registers, ``tl.dot`` for the three matmuls per chunk.

Backward (no activations stored by the forward): the forward kernel is rerun without ``y`` to write the state at
the start of every chunk (``[B, H, T / L, K, V]``, L times smaller than the per-step states), then one program per
(b, h, value slice) walks the chunks in reverse with its slice of ``dL/dS`` in registers and writes dv, dS_0 and its
share of dq, dk (sums over V: one buffer per slice, summed in torch). The log-decay gradient
uses the identity of fla's ``chunk_simple_gla`` / ``chunk_gla``: y and S_T depend on g only through
``exp(G_i - G_j)`` between a query at i and a key at j (G the prefix sum of g over time), so
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
3.6 interpreter fails on numpy 2.4, for every kernel), compiled for sm_90 by triton 3.6 and 3.9 without a GPU, and run
on an H200 (``tests/triton`` compiled, triton 3.6; timings in the README's "GPU benchmark": not yet competitive with
fla). Chunk and block sizes are not autotuned (``dsfc bench --gpu`` sweeps a few); the per-key decay's [L, L, K]
elementwise tiles and the value-slice split of the backward (q k^T recomputed per slice) are the simple versions.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types

import os
from dataclasses import dataclass
from typing import Optional

import torch

import triton
import triton.language as tl

from dsfc.runtime.scans import check_outer_inputs, read_before_update

__all__ = ["chunked_outer_triton", "CHUNK", "MAX_BLOCK_V"]

CHUNK = 16  # chunk length L (tl.dot needs >= 16 on a GPU); also the tile of the per-key [L, L, K] decay mask
CHUNK_CUDA = 64  # on a GPU without per-key decay: longer chunks, fewer sequential steps ([L, L] masks only)
HALF_DOTS = True  # bf16 / fp16 q, k, v: the matmuls run in that dtype on tensor cores (fp32 accumulation), as fla's
# the DECAY constexpr: no decay, one log-decay per head, one per (head, key) (constexpr globals: kernels may read them)
MAX_BLOCK_V = 64  # widest value slice per program: more programs (B * H * V / 64), a smaller state tile each
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
def _chunk_decay(g, rows, BT: tl.constexpr, DECAY: tl.constexpr):
    """Decay factors of one chunk from its log-decays ``g`` ([BT], or [BT, BK] per key; padded steps hold 0).

    Returns (mask, q_in, k_out, tot): ``mask`` [BT, BT] (or [BT, BT, BK]) = exp(seg(j+1..i)) for j <= i, else 0;
    ``q_in`` = exp(seg(0..i)) (decay of the chunk's initial state up to step i); ``k_out`` = exp(seg(j+1..L-1)) (decay
    of k_j v_j^T to the chunk end); ``tot`` = exp(seg(0..L-1)). Every seg is a sum over its own terms."""
    ii = rows[:, None]
    jj = rows[None, :]
    if DECAY == PER_KEY:
        seg = tl.cumsum(tl.where((ii > jj)[:, :, None], g[:, None, :], 0.0), axis=0)  # [BT, BT, BK]
        mask = tl.where((ii >= jj)[:, :, None], tl.exp(seg), 0.0)
        k_out = tl.exp(tl.sum(tl.where((ii == BT - 1)[:, :, None], seg, 0.0), axis=0))  # row L-1: [BT, BK]
    else:
        seg = tl.cumsum(tl.where(ii > jj, g[:, None], 0.0), axis=0)  # [BT, BT]
        mask = tl.where(ii >= jj, tl.exp(seg), 0.0)
        k_out = tl.exp(tl.sum(tl.where(ii == BT - 1, seg, 0.0), axis=0))  # [BT]
    q_in = tl.exp(tl.cumsum(g, axis=0))
    tot = tl.exp(tl.sum(g, axis=0))
    return mask, q_in, k_out, tot


@triton.jit
def _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, kk, mk, vv, mv, T, H, K, V,
                BT: tl.constexpr, DECAY: tl.constexpr, DTYPE: tl.constexpr):
    """q, k [BT, BK], v [BT, BV] and g ([BT] or [BT, BK]) of one chunk, zero beyond T, K and V."""
    row = (b * T + t) * H + h  # [BT] int64: (b, t, h) of the [B, T, H, ...] streams
    m_qk = mt[:, None] & mk[None, :]
    q = tl.load(q_ptr + row[:, None] * K + kk[None, :], mask=m_qk, other=0.0).to(DTYPE)
    k = tl.load(k_ptr + row[:, None] * K + kk[None, :], mask=m_qk, other=0.0).to(DTYPE)
    v = tl.load(v_ptr + row[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0).to(DTYPE)
    if DECAY == PER_KEY:
        g = tl.load(g_ptr + row[:, None] * K + kk[None, :], mask=m_qk, other=0.0).to(DTYPE)
    elif DECAY == SCALAR:
        g = tl.load(g_ptr + row, mask=mt, other=0.0).to(DTYPE)
    else:
        g = tl.zeros((BT,), DTYPE)
    return q, k, v, g


@triton.jit
def _scores(q, k, mask, DECAY: tl.constexpr, HALF: tl.constexpr):
    """Decayed causal scores P[i, j] = sum_a q[i, a] k[j, a] mask[i, j(, a)], [BT, BT]."""
    if DECAY == PER_KEY:
        return tl.sum(q[:, None, :] * k[None, :, :] * mask, axis=2)
    else:
        return _dot(q, tl.trans(k), HALF) * mask


@triton.jit
def _outer_fwd(q_ptr, k_ptr, v_ptr, g_ptr, s0_ptr, y_ptr, sT_ptr, states_ptr, T, H, K, V, NC,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
               WRITE_Y: tl.constexpr, STORE_STATES: tl.constexpr, DTYPE: tl.constexpr, HALF: tl.constexpr):
    """One (b, h) and one BLOCK_V slice of the value axis: chunks in order, the [BK, BV] state in registers.
    WRITE_Y: y [B, T, H, V]; STORE_STATES: the state at the start of every chunk, [B, H, NC, K, V]."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    b = i_bh // H
    h = i_bh % H
    rows = tl.arange(0, BT)
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mk = kk < K
    mv = vv < V
    m_s = mk[:, None] & mv[None, :]
    s_off = kk[:, None] * V + vv[None, :]
    s = tl.load(s0_ptr + i_bh * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)
    for c in range(0, NC):
        if STORE_STATES:
            tl.store(states_ptr + (i_bh * NC + c) * K * V + s_off, s, mask=m_s)
        t = c * BT + rows
        mt = t < T
        q, k, v, g = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, kk, mk, vv, mv, T, H, K, V, BT, DECAY, DTYPE)
        mask, q_in, k_out, tot = _chunk_decay(g, rows, BT, DECAY)
        if DECAY == PER_KEY:
            q_dec = q * q_in
            k_dec = k * k_out
        else:
            q_dec = q * q_in[:, None]
            k_dec = k * k_out[:, None]
        if WRITE_Y:
            p = _scores(q, k, mask, DECAY, HALF)
            y = _dot(p, v, HALF) + _dot(q_dec, s, HALF)
            row = (b * T + t) * H + h
            tl.store(y_ptr + row[:, None] * V + vv[None, :], y, mask=mt[:, None] & mv[None, :])
        if DECAY == PER_KEY:
            s = tot[:, None] * s
        else:
            s = tot * s
        s += _dot(tl.trans(k_dec), v, HALF)
    tl.store(sT_ptr + i_bh * K * V + s_off, s, mask=m_s)


@triton.jit
def _outer_bwd(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, dy_ptr, dsT_ptr, dq_ptr, dk_ptr, dv_ptr, ds0_ptr,
               B, T, H, K, V, NC, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
               DTYPE: tl.constexpr, HALF: tl.constexpr):
    """One (b, h) and one BLOCK_V slice of the value axis: chunks in reverse with that slice of ds = dL/dS (the state
    after the chunk) in registers. Writes dv and ds0 = dL/dS_0 of its slice, and its slice's share of dq and dk
    (sums over V) into the [cdiv(V, BV), B, T, H, K] buffers dq_ptr, dk_ptr, summed over slices by the launcher."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    b = i_bh // H
    h = i_bh % H
    rows = tl.arange(0, BT)
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    part = i_v.to(tl.int64) * B * T * H * K  # this slice's share of dq, dk
    mk = kk < K
    mv = vv < V
    m_s = mk[:, None] & mv[None, :]
    s_off = kk[:, None] * V + vv[None, :]
    ds = tl.load(dsT_ptr + i_bh * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)
    for cc in range(0, NC):
        c = NC - 1 - cc
        t = c * BT + rows
        mt = t < T
        row = (b * T + t) * H + h
        m_qk = mt[:, None] & mk[None, :]
        m_v = mt[:, None] & mv[None, :]
        q, k, v, g = _load_chunk(q_ptr, k_ptr, v_ptr, g_ptr, b, h, t, mt, kk, mk, vv, mv, T, H, K, V, BT, DECAY, DTYPE)
        dy = tl.load(dy_ptr + row[:, None] * V + vv[None, :], mask=m_v, other=0.0).to(DTYPE)
        s = tl.load(states_ptr + (i_bh * NC + c) * K * V + s_off, mask=m_s, other=0.0).to(DTYPE)  # S before chunk
        mask, q_in, k_out, tot = _chunk_decay(g, rows, BT, DECAY)
        p = _scores(q, k, mask, DECAY, HALF)  # y_intra = p v
        dpv = _dot(dy, tl.trans(v), HALF)  # dL/dp before the decay mask, [BT, BT]
        if DECAY == PER_KEY:
            dpv = tl.where(rows[:, None] >= rows[None, :], dpv, 0.0)
            dq = tl.sum(dpv[:, :, None] * k[None, :, :] * mask, axis=1)
            dk = tl.sum(dpv[:, :, None] * q[:, None, :] * mask, axis=0)
            q_dec = q * q_in
            k_dec = k * k_out
            dq += q_in * _dot(dy, tl.trans(s), HALF)
            dk += k_out * _dot(v, tl.trans(ds), HALF)
        else:
            dp = dpv * mask
            dq = _dot(dp, k, HALF)
            dk = _dot(tl.trans(dp), q, HALF)
            q_dec = q * q_in[:, None]
            k_dec = k * k_out[:, None]
            dq += q_in[:, None] * _dot(dy, tl.trans(s), HALF)
            dk += k_out[:, None] * _dot(v, tl.trans(ds), HALF)
        dv = _dot(tl.trans(p), dy, HALF) + _dot(k_dec, ds, HALF)
        tl.store(dq_ptr + part + row[:, None] * K + kk[None, :], dq, mask=m_qk)
        tl.store(dk_ptr + part + row[:, None] * K + kk[None, :], dk, mask=m_qk)
        tl.store(dv_ptr + row[:, None] * V + vv[None, :], dv, mask=m_v)
        if DECAY == PER_KEY:
            ds = tot[:, None] * ds
        else:
            ds = tot * ds
        ds += _dot(tl.trans(q_dec), dy, HALF)
    tl.store(ds0_ptr + i_bh * K * V + s_off, ds, mask=m_s)


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

    @property
    def nc(self) -> int:
        return -(-self.T // self.chunk)

    @property
    def tl_dtype(self):
        return tl.float64 if self.cdt == torch.float64 else tl.float32

    def encode(self) -> list[int]:
        return [self.decay, self.chunk, self.block_k, self.block_v, self.half, self.num_warps]

    @staticmethod
    def decode(q: torch.Tensor, v: torch.Tensor, cfg, cdt: torch.dtype) -> "_Launch":
        B, T, H, K = q.shape
        decay, chunk, block_k, block_v, half, num_warps = (int(x) for x in cfg)
        return _Launch(B, T, H, K, v.shape[-1], decay, chunk, block_k, block_v, cdt, half, num_warps)


def _fwd(L: _Launch, q, k, v, g, s0, write_y: bool, store_states: bool):
    dev = q.device
    y = torch.empty((L.B, L.T, L.H, L.V), device=dev, dtype=L.cdt) if write_y else s0
    sT = torch.empty((L.B, L.H, L.K, L.V), device=dev, dtype=L.cdt)
    states = torch.empty((L.B, L.H, L.nc, L.K, L.V), device=dev, dtype=L.cdt) if store_states else sT
    grid = (-(-L.V // L.block_v), L.B * L.H)
    _outer_fwd[grid](q, k, v, q if L.decay == 0 else g, s0, y, sT, states, L.T, L.H, L.K, L.V, L.nc,
                     BT=L.chunk, BK=L.block_k, BV=L.block_v, DECAY=L.decay, WRITE_Y=write_y,
                     STORE_STATES=store_states, DTYPE=L.tl_dtype, HALF=L.half, num_warps=L.num_warps)
    return y, sT, states


# ---- the custom ops (eager implementations; fake = shapes only) -------------------------------------------------
# torch.compile of a surrounding model keeps one opaque node per launch (Dynamo cannot trace Triton's launcher under
# the interpreter). Custom ops take no optional tensor that autograd must route, so a missing log-decay is the decay
# kind NONE in ``cfg`` with a dummy empty ``g`` (never read by the kernels, its gradient None).


@torch.library.custom_op("dsfc::outer_scan_fwd", mutates_args=())
def _outer_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, s0: torch.Tensor,
                  cfg: list[int], cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [B, T, H, V], S_T [B, H, K, V])`` in the compute dtype ``cdt``."""
    L = _Launch.decode(q, v, cfg, cdt)
    y, sT, _ = _fwd(L, q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), s0.contiguous(), True, False)
    return y, sT


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
    L = _Launch.decode(q, v, cfg, cdt)
    q, k, v, g, s0 = (x.contiguous() for x in (q, k, v, g, s0))
    _, _, states = _fwd(L, q, k, v, g, s0, False, True)  # recompute the chunk-start states
    dy, dsT = dy.contiguous(), dsT.contiguous()
    nv = -(-L.V // L.block_v)
    dq = torch.empty((nv, L.B, L.T, L.H, L.K), device=q.device, dtype=L.cdt)
    dk = torch.empty_like(dq)
    dv = torch.empty((L.B, L.T, L.H, L.V), device=q.device, dtype=L.cdt)
    ds0 = torch.empty_like(sT)
    _outer_bwd[(nv, L.B * L.H)](q, k, v, q if L.decay == 0 else g, states, dy, dsT, dq, dk, dv, ds0, L.B, L.T, L.H,
                                L.K, L.V, L.nc, BT=L.chunk, BK=L.block_k, BV=L.block_v, DECAY=L.decay,
                                DTYPE=L.tl_dtype, HALF=L.half, num_warps=L.num_warps)
    dq, dk = (dq[0], dk[0]) if nv == 1 else (dq.sum(0), dk.sum(0))
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
                         num_warps: Optional[int] = None):
    """``chunked_outer_scan`` (same arguments and results) on the Triton kernels above: CUDA tensors, or CPU tensors
    under ``TRITON_INTERPRET=1`` (slow: for tests). Differentiable w.r.t. q, k, v, log_decay and h0.

    ``chunk`` (default: CHUNK_CUDA on a GPU without per-key decay, else CHUNK), ``block_v`` (the value slice of one
    program, default min(V, MAX_BLOCK_V)) and ``num_warps`` are tuning knobs (``dsfc bench --gpu`` sweeps them).
    With q, k, v all bf16 (or all fp16) the matmuls take that dtype (HALF_DOTS), accumulating in fp32.

    ``readout="pre"`` (y_t = S_(t-1)^T q_t, RWKV) is the post-update kernel run on the queries moved one step
    earlier, with y_0 = h0^T q_0 (as ``chunked_outer_scan`` does it); the shift is torch, so autograd covers it."""
    check_outer_inputs("chunked_outer_triton", q, k, v, log_decay, h0, readout)
    if readout == "pre" and q.shape[1] > 0:
        start = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[-1]) if h0 is None else h0
        y, state = read_before_update(
            lambda qq: chunked_outer_triton(qq, k, v, log_decay, h0, chunk=chunk, output_final_state=True,
                                            block_v=block_v, num_warps=num_warps), q, start)
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
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 16 (tl.dot's smallest tile), got {chunk}")
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
        block_v = min(max(16, _next_pow2(V)), MAX_BLOCK_V)
    elif block_v < 16 or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two >= 16, got {block_v}")
    if num_warps is None:
        num_warps = 8 if chunk * block_k >= 64 * 64 else 4
    L = _Launch(B, T, H, K, V, decay, int(chunk), block_k, int(block_v), cdt, half, int(num_warps))
    g = q.new_empty(0) if log_decay is None else log_decay  # NONE: a dummy the kernels never read
    y, sT = _outer_fwd_op(q, k, v, g, s0, L.encode(), cdt)
    y = y.to(out_dtype)
    return (y, sT.to(out_dtype)) if output_final_state else y
