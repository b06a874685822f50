"""Triton kernels for the dense-scan family (A not diagonal, e.g. DeltaNet's I - beta k k^T): a per-step block
matrix-vector recurrence with the state in registers.

The generated module (``_core_triton_dense``, from ``plan._dense_lines(..., kernel=True)``) builds, in torch, the
per-step blocks of A and the driven input for a chunk of ``L`` steps, exactly as the torch path does:

    blocks [B, L, G, M, M],  bu [B, L, G, M],  h [B, G, M]:   h_t[g] = blocks_t[g] @ h_(t-1)[g] + bu_t[g]

(``G`` independent groups of ``M`` coupled state entries: DeltaNet has G = H V groups of M = K). This file runs that
recurrence: one program per (batch row, ``BLOCK_G`` groups) keeps its ``[BLOCK_G, M]`` slice of ``h`` in registers,
loads each step's ``[BLOCK_G, M, M]`` blocks and writes every state (the readout runs in torch on the states).

Why it is slow, and documented so: the blocks are materialised in memory by torch (``M`` times the state per step)
and read once, so the kernel moves ``B L G M^2`` values per chunk for ``B L G M`` of useful state: it is
memory-bound at ~1/M of a structured (e.g. WY/UT-chunked) kernel's efficiency. It is a correct, general baseline for
any dense-A spec at small ``M``; spec-specific structure (rank-one updates) is not exploited.

Backward (a second kernel, no torch recompute): reverse time with ``g = dL/dh_t`` in registers,
``dbu_t = g``, ``dblocks_t = g h_(t-1)^T`` (stored, one owner per entry: no atomics), ``g <- blocks_t^T g``; the
gradients of the blocks and bu flow on through the torch code that built them (autograd).

Both are ``torch.library.custom_op`` s (``dsfc::block_scan_fwd`` / ``_bwd``), so they work under ``torch.compile``.
Inputs may be fp16 / bf16 / fp32 / fp64; the state is accumulated in fp32 (fp64 for fp64 inputs) and the states are
returned in the compute dtype.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types (string
# annotations are not understood by every torch version this must run on)

import torch

from dsfc.runtime.dispatch import next_pow2, refuse_double_backward, require_triton_device

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; block_scan_triton then raises
    triton = None

__all__ = ["block_scan_triton", "chunk_len", "available"]

MAX_BLOCK_ELEMS = 8192  # most block-matrix entries one program holds per step ([BLOCK_G, M, M] registers)
CHUNK_BYTES = 256 << 20  # memory budget of one chunk's materialised blocks (the generated module picks L from it)


def available() -> bool:
    return triton is not None


def chunk_len(batch: int, groups: int, m: int, itemsize: int = 4, cap: int = 64) -> int:
    """Steps per chunk such that the chunk's blocks ``[B, L, G, M, M]`` stay within ``CHUNK_BYTES``."""
    per_step = max(1, batch * groups * m * m * itemsize)
    return max(1, min(cap, CHUNK_BYTES // per_step))


if triton is not None:

    @triton.jit
    def _block_scan_fwd(blocks_ptr, bu_ptr, h0_ptr, states_ptr, L, G, M, BLOCK_G: tl.constexpr,
                        BLOCK_M: tl.constexpr, DTYPE: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        gg = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)[:, None, None]  # [BG, 1, 1]
        ii = tl.arange(0, BLOCK_M)[None, :, None]  # output row of the block
        jj = tl.arange(0, BLOCK_M)[None, None, :]  # input column of the block
        mask_blk = (gg < G) & (ii < M) & (jj < M)
        g2 = tl.reshape(gg, (BLOCK_G, 1))
        j2 = tl.arange(0, BLOCK_M)[None, :]
        mask_h = (g2 < G) & (j2 < M)
        h_off = g2 * M + j2  # [BG, BM] offsets of h within one batch row
        h = tl.load(h0_ptr + b * G * M + h_off, mask=mask_h, other=0.0).to(DTYPE)
        for t in range(0, L):
            row = b * L + t
            blk = tl.load(blocks_ptr + row * G * M * M + gg * M * M + ii * M + jj, mask=mask_blk,
                          other=0.0).to(DTYPE)
            bu = tl.load(bu_ptr + row * G * M + h_off, mask=mask_h, other=0.0).to(DTYPE)
            # h_new[g, i] = sum_j blk[g, i, j] h[g, j]: h enters as [BG, 1, BM], the sum runs over the last axis
            h = tl.sum(blk * tl.reshape(h, (BLOCK_G, 1, BLOCK_M)), axis=2) + bu
            tl.store(states_ptr + row * G * M + h_off, h, mask=mask_h)

    @triton.jit
    def _block_scan_bwd(blocks_ptr, h0_ptr, states_ptr, dstates_ptr, dblocks_ptr, dbu_ptr, dh0_ptr, L, G, M,
                        BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, DTYPE: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        gg = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)[:, None, None]
        ii = tl.arange(0, BLOCK_M)[None, :, None]
        jj = tl.arange(0, BLOCK_M)[None, None, :]
        mask_blk = (gg < G) & (ii < M) & (jj < M)
        g2 = tl.reshape(gg, (BLOCK_G, 1))
        j2 = tl.arange(0, BLOCK_M)[None, :]
        mask_h = (g2 < G) & (j2 < M)
        h_off = g2 * M + j2
        g = tl.zeros((BLOCK_G, BLOCK_M), DTYPE)  # dL/dh_t, accumulated backwards
        for tt in range(0, L):
            t = L - 1 - tt
            row = b * L + t
            g = g + tl.load(dstates_ptr + row * G * M + h_off, mask=mask_h, other=0.0).to(DTYPE)
            if t > 0:
                h_prev = tl.load(states_ptr + (row - 1) * G * M + h_off, mask=mask_h, other=0.0).to(DTYPE)
            else:
                h_prev = tl.load(h0_ptr + b * G * M + h_off, mask=mask_h, other=0.0).to(DTYPE)
            tl.store(dbu_ptr + row * G * M + h_off, g, mask=mask_h)
            # dblocks[g, i, j] = g[g, i] h_prev[g, j]
            dblk = tl.reshape(g, (BLOCK_G, BLOCK_M, 1)) * tl.reshape(h_prev, (BLOCK_G, 1, BLOCK_M))
            tl.store(dblocks_ptr + row * G * M * M + gg * M * M + ii * M + jj, dblk, mask=mask_blk)
            blk = tl.load(blocks_ptr + row * G * M * M + gg * M * M + ii * M + jj, mask=mask_blk,
                          other=0.0).to(DTYPE)
            # g_prev[g, j] = sum_i blk[g, i, j] g[g, i]
            g = tl.sum(blk * tl.reshape(g, (BLOCK_G, BLOCK_M, 1)), axis=1)
        tl.store(dh0_ptr + b * G * M + h_off, g, mask=mask_h)


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_cfg(G: int, M: int) -> tuple[int, int, int]:
    block_m = next_pow2(M)
    block_g = max(1, min(next_pow2(G), MAX_BLOCK_ELEMS // (block_m * block_m)))
    num_warps = max(1, min(8, block_g * block_m * block_m // 1024))
    return block_g, block_m, num_warps


@torch.library.custom_op("dsfc::block_scan_fwd", mutates_args=())
def _block_scan_fwd_op(blocks: torch.Tensor, bu: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    B, L, G, M = bu.shape
    states = torch.empty((B, L, G, M), device=h0.device, dtype=h0.dtype)
    block_g, block_m, num_warps = _launch_cfg(G, M)
    _block_scan_fwd[(B, triton.cdiv(G, block_g))](blocks.contiguous(), bu.contiguous(), h0.contiguous(), states, L,
                                                   G, M, BLOCK_G=block_g, BLOCK_M=block_m,
                                                   DTYPE=_tl_dtype(h0.dtype), num_warps=num_warps)
    return states


@_block_scan_fwd_op.register_fake
def _(blocks, bu, h0):
    return h0.new_empty(bu.shape)


@torch.library.custom_op("dsfc::block_scan_bwd", mutates_args=())
def _block_scan_bwd_op(blocks: torch.Tensor, h0: torch.Tensor, states: torch.Tensor,
                       dstates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dblocks, dbu, dh0)`` in the compute dtype (cast to the inputs' dtypes by the autograd wrapper)."""
    B, L, G, M = states.shape
    dblocks = torch.empty((B, L, G, M, M), device=h0.device, dtype=h0.dtype)
    dbu = torch.empty((B, L, G, M), device=h0.device, dtype=h0.dtype)
    # row-major, as the kernel writes it: empty_like kept the strides of a permuted h0 (a transposed gradient)
    dh0 = torch.empty(h0.shape, device=h0.device, dtype=h0.dtype)
    block_g, block_m, num_warps = _launch_cfg(G, M)
    _block_scan_bwd[(B, triton.cdiv(G, block_g))](blocks.contiguous(), h0.contiguous(), states.contiguous(),
                                                   dstates.contiguous(), dblocks, dbu, dh0, L, G, M,
                                                   BLOCK_G=block_g, BLOCK_M=block_m, DTYPE=_tl_dtype(h0.dtype),
                                                   num_warps=num_warps)
    return dblocks, dbu, dh0


@_block_scan_bwd_op.register_fake
def _(blocks, h0, states, dstates):
    B, L, G, M = states.shape
    return h0.new_empty((B, L, G, M, M)), h0.new_empty((B, L, G, M)), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    blocks, bu, h0 = inputs
    ctx.dtypes = (blocks.dtype, bu.dtype)
    ctx.save_for_backward(blocks, h0, output)


def _backward(ctx, dstates):
    blocks, h0, states = ctx.saved_tensors
    if dstates is None:
        dstates = torch.zeros_like(states)
    dblocks, dbu, dh0 = _block_scan_bwd_op(blocks, h0, states, dstates)
    return dblocks.to(ctx.dtypes[0]), dbu.to(ctx.dtypes[1]), dh0


_block_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(_block_scan_bwd_op, "block-scan")


def block_scan_triton(blocks: torch.Tensor, bu: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """States ``[B, L, G, M]`` of ``h_t = blocks_t @ h_(t-1) + bu_t`` (per group), ``h0`` ``[B, G, M]`` in the
    compute dtype (fp32 / fp64); ``blocks`` ``[B, L, G, M, M]`` and ``bu`` ``[B, L, G, M]`` in any float dtype."""
    if triton is None:
        raise RuntimeError("dsfc: block_scan_triton needs triton")
    if h0.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dsfc: the dense Triton scan's state must be float32 or float64, got {h0.dtype}")
    if h0.dim() != 3 or bu.dim() != 4 or blocks.dim() != 5:
        raise ValueError(f"dsfc: dense Triton scan expects h0 [B, G, M], bu [B, L, G, M], blocks [B, L, G, M, M]; "
                         f"got {tuple(h0.shape)}, {tuple(bu.shape)}, {tuple(blocks.shape)}")
    B, G, M = h0.shape
    L = bu.shape[1]
    if tuple(bu.shape) != (B, L, G, M) or tuple(blocks.shape) != (B, L, G, M, M):
        raise ValueError(f"dsfc: dense Triton scan shapes disagree: h0 {tuple(h0.shape)}, bu {tuple(bu.shape)}, "
                         f"blocks {tuple(blocks.shape)}")
    for name, x in (("blocks", blocks), ("bu", bu)):
        if not x.is_floating_point():
            raise TypeError(f"dsfc: dense Triton scan {name} must be a float tensor, got {x.dtype}")
        if x.device != h0.device:
            raise ValueError(f"dsfc: dense Triton scan {name} is on {x.device}, the state on {h0.device}")
    require_triton_device(h0.device)
    return _block_scan_fwd_op(blocks, bu, h0)
