"""Triton kernels for the chunked diagonal-plus-rank-1 (DPLR) scan (Kimi Delta Attention, RWKV-7):
``chunked_dplr_triton``, a drop-in for ``dsfc.runtime.scans.chunked_dplr_scan`` whose sequential part runs as one
Triton kernel.

``chunked_dplr_scan`` computes ``S_t = (diag(d_t) + x_t y_t^T) S_(t-1) + k_t v_t^T`` chunkwise (see its docstring):
per batch row, head and chunk ``c`` everything is chunk-parallel (the pairwise per-key decayed products, one unit
lower-triangular solve per chunk, the outputs from the chunk-start states; batched torch) except the affine state
recurrence across chunks::

    S_(c+1) = trans_c S_c + inject_c        (trans_c [K, K] = diag(tot_c) + x_end_c^T w_f_c, inject_c [K, V])

which the torch path runs as a Python loop of T / L matmuls. Here it is one launch (``_dplr_pass_fwd``): one
program per (batch row, head, value slice of ``BLOCK_V``) keeps its ``[K, BLOCK_V]`` slice of the state in
registers (fp32, fp64 for fp64 inputs), walks the chunks in order with ``S = trans_c S + inject_c`` and writes every
chunk-start state ``S_c`` and the final state. The value slices are independent (trans acts on the key axis only);
each re-reads the chunk's ``trans_c`` tile (L2-resident: the slices of one head run together). The product is
``_affine_step``: ``inject_c`` plus ``tl.dot`` s of [K, 16] column blocks of ``trans_c`` with the matching [16,
BLOCK_V] key blocks of ``S_c``, which the program reads back from the chunk-start store it has just made (after a
``tl.debug_barrier``, so that every thread sees the others' writes; registers cannot be sliced), instead of one
[K, K] x [K, BLOCK_V] dot that spills (see the tile notes below). The interpreter runs a program's threads as one,
so that barrier is the part of the kernel the CPU tests cannot check; it is the CUDA rule (``__syncthreads`` orders
a block's global-memory accesses) and has not run on a GPU.

Backward (``_dplr_pass_bwd``, no recompute: the forward stored every ``S_c``, which the outputs need anyway):
reverse chunk order with ``G = dL/dS_(c+1)`` in registers::

    dL/dinject_c = G
    G           <- trans_c^T G + dL/dS_c (from the outputs)

storing every ``G`` (one owner per entry: no atomics); ``dL/dh0`` is the last ``G``. ``dL/dtrans_c = G_(c+1) S_c^T``
sums over the value axis, which the value slices split: a batched matmul afterwards (torch). Autograd carries the
gradients on through the torch code that built ``trans`` and ``inject`` (the solve, the decayed products).

Decoding (a single step, no autograd: the modules' ``step``) skips the chunked machinery: ``_dplr_step`` reads the
state once, applies ``S' = d * S + x (y^T S) + k v^T`` and the readout, and writes it back (one launch per token).

Both passes are ``torch.library.custom_op`` s (``dsfc::dplr_pass_fwd`` / ``_bwd``) with ``register_fake`` and
``register_autograd``, so a ``torch.compile``d model keeps one opaque node per launch.

Precision: ``tl.dot`` with ``input_precision="ieee"`` (no TF32: ``trans`` carries the rank-1 corrections of the delta
rule, differences of nearly equal terms that TF32's 10-bit mantissa would swamp; the recurrence compounds them over
T / L chunks).

Status: checked against a per-step float64 loop and the generated modules' reference under ``TRITON_INTERPRET=1``
(triton 3.9, tests/triton/test_triton_dplr.py) and compiled ahead of time for sm_90 (tests/triton/aot_compile.py);
not run or timed on a GPU (none was lent while it was written).
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types
from typing import Optional

import torch

from dsfc.runtime.dispatch import eager_inference, next_pow2, refuse_double_backward, require_triton_device
from dsfc.runtime.scans import chunked_dplr_scan

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; chunked_dplr_triton then raises
    triton = None

__all__ = ["chunked_dplr_triton", "dplr_state_passing", "available"]

# Tiles, sized without a GPU from ptxas' report for sm_90 (tests/triton/aot_compile.py --dplr-only --resources).
# fp32 with input_precision="ieee" makes tl.dot an FMA product whose operands each thread holds along the whole inner
# axis: one [128, 128] x [128, 32] dot per chunk spilled 9-16 KB per thread at 8 warps (5-18 KB at 4-16 warps, BLOCK_V
# 16 or 32; and fp64 needed 288 KB of shared memory). Split along the inner (key) axis in blocks of BLOCK_J = 16
# (_affine_step), K = V = 128 at 8 warps takes 185 registers with [128, 32] slices, no spill (fp64: 240); [128, 64]
# slices spilled 40 bytes, BLOCK_J = 32 16 bytes, 4 warps 80 bytes. K = 64: 149 registers. K = 256 gets [256, 16]
# slices (255 registers, no spill), the cap on the state tile.
MAX_STATE_TILE = 4096  # most state entries one program holds ([BLOCK_K, BLOCK_V] registers)
MAX_BLOCK_V = 32
BLOCK_J = 16
NUM_WARPS = 8


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _state_tiles(pid_v, K, V, BK: tl.constexpr, BV: tl.constexpr):
        """Offsets (+ mask) of the program's [K, BLOCK_V] slice of a [K, V] state."""
        kk = tl.arange(0, BK)
        vv = pid_v * BV + tl.arange(0, BV)
        s_off = kk[:, None] * V + vv[None, :]
        s_mask = (kk[:, None] < K) & (vv[None, :] < V)
        return kk, vv, s_off, s_mask

    @triton.jit
    def _affine_step(mat_ptr, state_ptr, acc, kk, vv, K, V, BK: tl.constexpr, BJ: tl.constexpr,
                     TRANSPOSE: tl.constexpr, DTYPE: tl.constexpr):
        """acc + M S for the [K, K] matrix M at ``mat_ptr`` (its transpose, TRANSPOSE) and the state slice S that
        this program has just stored at ``state_ptr``, in blocks of BJ along the inner (key) axis: a [BK, BK] x
        [BK, BV] tl.dot at once is an FMA product (fp32 with input_precision="ieee") whose operands ptxas cannot keep
        in registers (K = 128: 5-18 KB spilled per thread); the state's key blocks are read back from the store
        (L1 / L2), the barrier making the other threads' writes visible."""
        tl.debug_barrier()
        for j0 in range(0, BK, BJ):
            jj = j0 + tl.arange(0, BJ)
            # masked lanes (keys past K, values past V) load 0: rows and columns of 0 add nothing to the product
            if TRANSPOSE:
                m_off = jj[None, :] * K + kk[:, None]  # M^T[i, j] = M[j, i]
            else:
                m_off = kk[:, None] * K + jj[None, :]
            m = tl.load(mat_ptr + m_off, mask=(kk[:, None] < K) & (jj[None, :] < K), other=0.0).to(DTYPE)
            sj = tl.load(state_ptr + jj[:, None] * V + vv[None, :], mask=(jj[:, None] < K) & (vv[None, :] < V),
                         other=0.0).to(DTYPE)
            acc += tl.dot(m, sj, input_precision="ieee")
        return acc

    @triton.jit
    def _dplr_pass_fwd(trans_ptr, inject_ptr, h0_ptr, starts_ptr, final_ptr, NC, K, V, BK: tl.constexpr,
                       BV: tl.constexpr, BJ: tl.constexpr, DTYPE: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        kk, vv, s_off, s_mask = _state_tiles(tl.program_id(1), K, V, BK, BV)
        s = tl.load(h0_ptr + bh * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)
        for c in range(0, NC):
            row = bh * NC + c
            tl.store(starts_ptr + row * K * V + s_off, s, mask=s_mask)
            inj = tl.load(inject_ptr + row * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)
            s = _affine_step(trans_ptr + row * K * K, starts_ptr + row * K * V, inj, kk, vv, K, V, BK, BJ, False,
                             DTYPE)
        tl.store(final_ptr + bh * K * V + s_off, s, mask=s_mask)

    @triton.jit
    def _dplr_pass_bwd(trans_ptr, dstarts_ptr, dfinal_ptr, g_ptr, dh0_ptr, NC, K, V, BK: tl.constexpr,
                       BV: tl.constexpr, BJ: tl.constexpr, DTYPE: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        kk, vv, s_off, s_mask = _state_tiles(tl.program_id(1), K, V, BK, BV)
        g = tl.load(dfinal_ptr + bh * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)  # dL/dS_(c+1)
        for cc in range(0, NC):
            row = bh * NC + (NC - 1 - cc)
            tl.store(g_ptr + row * K * V + s_off, g, mask=s_mask)
            ds = tl.load(dstarts_ptr + row * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)
            g = _affine_step(trans_ptr + row * K * K, g_ptr + row * K * V, ds, kk, vv, K, V, BK, BJ, True, DTYPE)
        tl.store(dh0_ptr + bh * K * V + s_off, g, mask=s_mask)

    @triton.jit
    def _dplr_step(q_ptr, k_ptr, v_ptr, x_ptr, y_ptr, g_ptr, s0_ptr, o_ptr, sT_ptr, K, V, BK: tl.constexpr,
                   BV: tl.constexpr, PRE: tl.constexpr, DTYPE: tl.constexpr):
        """One decoding step (T = 1) of one (batch row, head, value slice): S' = d * S + x (y^T S) + k v^T with
        d = exp(g) per key, and o = S'^T q (o = S^T q before the update, PRE); the state read and written once."""
        bh = tl.program_id(0).to(tl.int64)
        kk = tl.arange(0, BK)
        vv = tl.program_id(1) * BV + tl.arange(0, BV)
        mk = kk < K
        mv = vv < V
        s_off = kk[:, None] * V + vv[None, :]
        s_mask = mk[:, None] & mv[None, :]
        s = tl.load(s0_ptr + bh * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)
        q = tl.load(q_ptr + bh * K + kk, mask=mk, other=0.0).to(DTYPE)
        k = tl.load(k_ptr + bh * K + kk, mask=mk, other=0.0).to(DTYPE)
        x = tl.load(x_ptr + bh * K + kk, mask=mk, other=0.0).to(DTYPE)
        y = tl.load(y_ptr + bh * K + kk, mask=mk, other=0.0).to(DTYPE)
        d = tl.exp(tl.load(g_ptr + bh * K + kk, mask=mk, other=0.0).to(DTYPE))
        v = tl.load(v_ptr + bh * V + vv, mask=mv, other=0.0).to(DTYPE)
        ys = tl.sum(y[:, None] * s, axis=0)  # y^T S, [BV]
        s_new = d[:, None] * s + x[:, None] * ys[None, :] + k[:, None] * v[None, :]
        if PRE:
            o = tl.sum(q[:, None] * s, axis=0)
        else:
            o = tl.sum(q[:, None] * s_new, axis=0)
        tl.store(o_ptr + bh * V + vv, o, mask=mv)
        tl.store(sT_ptr + bh * K * V + s_off, s_new, mask=s_mask)


def _launch_cfg(K: int, V: int) -> tuple:
    """(BLOCK_K, BLOCK_V, BLOCK_J, value slices): tl.dot's tiles are at least 16 on every side."""
    block_k = max(16, next_pow2(K))
    block_v = max(16, min(MAX_BLOCK_V, next_pow2(V), MAX_STATE_TILE // block_k))
    return block_k, block_v, BLOCK_J, triton.cdiv(V, block_v)


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pass_fwd(trans, inject, h0):
    B, H, NC, K, V = inject.shape
    starts = torch.empty((B, H, NC, K, V), device=h0.device, dtype=h0.dtype)
    final = torch.empty((B, H, K, V), device=h0.device, dtype=h0.dtype)
    block_k, block_v, block_j, nv = _launch_cfg(K, V)
    _dplr_pass_fwd[(B * H, nv)](trans.contiguous(), inject.contiguous(), h0.contiguous(), starts, final, NC, K, V,
                                BK=block_k, BV=block_v, BJ=block_j, DTYPE=_tl_dtype(h0.dtype), num_warps=NUM_WARPS)
    return starts, final


@torch.library.custom_op("dsfc::dplr_pass_fwd", mutates_args=())
def _dplr_pass_fwd_op(trans: torch.Tensor, inject: torch.Tensor,
                      h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _pass_fwd(trans, inject, h0)


@_dplr_pass_fwd_op.register_fake
def _(trans, inject, h0):
    return h0.new_empty(inject.shape), h0.new_empty(h0.shape)


@torch.library.custom_op("dsfc::dplr_pass_bwd", mutates_args=())
def _dplr_pass_bwd_op(trans: torch.Tensor, dstarts: torch.Tensor,
                      dfinal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G, dL/dh0)``: ``G[:, :, c]`` is dL/dS_(c+1) (= dL/dinject_c), from which the caller forms dL/dtrans."""
    B, H, NC, K, V = dstarts.shape
    g = torch.empty((B, H, NC, K, V), device=dstarts.device, dtype=dstarts.dtype)
    dh0 = torch.empty((B, H, K, V), device=dstarts.device, dtype=dstarts.dtype)
    block_k, block_v, block_j, nv = _launch_cfg(K, V)
    _dplr_pass_bwd[(B * H, nv)](trans.contiguous(), dstarts.contiguous(), dfinal.contiguous(), g, dh0, NC, K, V,
                                BK=block_k, BV=block_v, BJ=block_j, DTYPE=_tl_dtype(dstarts.dtype), num_warps=NUM_WARPS)
    return g, dh0


@_dplr_pass_bwd_op.register_fake
def _(trans, dstarts, dfinal):
    return dstarts.new_empty(dstarts.shape), dstarts.new_empty(dfinal.shape)


def _setup_context(ctx, inputs, output):
    trans, _, _ = inputs
    starts, _ = output
    ctx.save_for_backward(trans, starts)


def _backward(ctx, dstarts, dfinal):
    trans, starts = ctx.saved_tensors
    dstarts = torch.zeros_like(starts) if dstarts is None else dstarts.to(starts.dtype)
    dfinal = starts.new_zeros(starts[:, :, 0].shape) if dfinal is None else dfinal.to(starts.dtype)
    g, dh0 = _dplr_pass_bwd_op(trans, dstarts, dfinal)
    # dL/dtrans_c = G_(c+1) S_c^T sums over the value axis (split across the kernel's value slices): a batched matmul
    dtrans = torch.matmul(g, starts.transpose(-1, -2))
    return dtrans, g, dh0


_dplr_pass_fwd_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(_dplr_pass_bwd_op, "DPLR")


def dplr_state_passing(trans: torch.Tensor, inject: torch.Tensor, h0: torch.Tensor) -> tuple:
    """The chunked DPLR scan's sequential part (module docstring) on the Triton kernels: ``(starts, S_final)`` from
    ``trans`` ``[B, H, NC, K, K]``, ``inject`` ``[B, H, NC, K, V]`` and ``h0`` ``[B, H, K, V]``, all in the compute
    dtype (fp32 / fp64). The ``state_passing`` of ``chunked_dplr_scan``."""
    if eager_inference(trans, inject, h0):  # no autograd, no compile: the op's dispatch is overhead
        return _pass_fwd(trans, inject, h0)
    return _dplr_pass_fwd_op(trans, inject, h0)


STEP_BLOCK_V = 32  # the decode step's value slice


def _single_step(q, k, v, x, y, g, h0, readout):
    """T = 1 without autograd (decoding): one launch of ``_dplr_step``; the arguments in the compute dtype,
    ``g`` the per-key log-decay ``[B, 1, H, K]``."""
    B, _, H, K = q.shape
    V = v.shape[-1]
    block_k = next_pow2(K)
    block_v = max(1, min(STEP_BLOCK_V, next_pow2(V), 4096 // block_k))
    o = torch.empty((B, 1, H, V), device=q.device, dtype=h0.dtype)
    s_new = torch.empty((B, H, K, V), device=q.device, dtype=h0.dtype)
    _dplr_step[(B * H, triton.cdiv(V, block_v))](q.contiguous(), k.contiguous(), v.contiguous(), x.contiguous(),
                                                 y.contiguous(), g.contiguous(), h0.contiguous(), o, s_new, K, V,
                                                 BK=block_k, BV=block_v, PRE=readout == "pre",
                                                 DTYPE=_tl_dtype(h0.dtype))
    return o, s_new


def chunked_dplr_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        log_decay: Optional[torch.Tensor] = None, h0: Optional[torch.Tensor] = None, *,
                        chunk: int = 32, output_final_state: bool = False, readout: str = "post"):
    """``chunked_dplr_scan`` (same arguments, results and checks) with its chunk-to-chunk state recurrence on the
    Triton kernels above: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (slow: for tests).
    Differentiable w.r.t. q, k, v, x, y, log_decay and h0; the chunk-parallel parts are torch (autograd). A single
    step without autograd (decoding, the modules' ``step``) is one launch of ``_dplr_step`` instead."""
    if triton is None:
        raise RuntimeError("dsfc: chunked_dplr_triton needs triton")
    require_triton_device(q.device)
    decoding = eager_inference(*[t for t in (q, k, v, x, y, log_decay, h0) if t is not None])
    return chunked_dplr_scan(q, k, v, x, y, log_decay, h0, chunk=chunk, output_final_state=output_final_state,
                             readout=readout, state_passing=dplr_state_passing,
                             step=_single_step if decoding else None)
