"""Triton kernels for the chunked delta rule (DeltaNet, Gated DeltaNet): ``chunked_delta_triton``, a drop-in for
``dsfc.runtime.scans.chunked_delta_scan`` whose sequential part runs as one Triton kernel.

``chunked_delta_scan`` computes the delta rule chunkwise in its WY / UT-transform form (see its docstring). Per batch
row, head and chunk ``c`` of ``L`` steps everything is chunk-parallel (batched torch matmuls and one unit
lower-triangular solve for all chunks at once) except the state recurrence across chunks, which in this form
(fla's ``chunk_delta_rule_fwd_h``) reads::

    X_c     = w_v_c - w_f_c S_c                 (the chunk's pseudo-values, [L, V])
    S_(c+1) = tot_c S_c + k_end_c^T X_c         (S in R^{K x V})

with ``w_v = T V``, ``w_f = T diag(Gamma) F`` (T the chunk's UT transform), ``k_end`` the keys decayed to the chunk
end and ``tot`` the chunk's total decay (every factor exp(<= 0)). The torch path runs it as a Python loop over the
T / L chunks (a few small launches each); here it is one launch: one program per (batch row, head, value slice of
``BLOCK_V``) keeps its ``[K, BLOCK_V]`` slice of the state in registers (fp32, fp64 for fp64 inputs), walks the
chunks in order (each in sub-blocks of 16 rows, two ``tl.dot`` per sub-block) and writes every chunk-start state
``S_c`` and ``X_c``; the outputs
``y = (Gamma Q) S_c + tril(D Q K^T) X_c`` are chunk-parallel matmuls again (torch).

Backward (``_delta_pass_bwd``, no recompute: the forward stored ``S_c`` and ``X_c``, which the outputs need anyway):
reverse chunk order with ``G = dL/dS_(c+1)`` in registers::

    dX_c    = dL/dX_c (from y) + k_end_c G      (= dL/dw_v_c)
    G      <- tot_c G - w_f_c^T dX_c + dL/dS_c (from y)

storing ``dX_c`` and every ``G`` (one owner per entry: no atomics). The gradients that sum over the value axis, which
the value slices split, are batched matmuls afterwards: ``dL/dw_f_c = -dX_c S_c^T``,
``dL/dk_end_c = X_c G_(c+1)^T``, ``dL/dtot_c = <G_(c+1), S_c>``. Autograd carries them on through the torch code
that built ``w_v``, ``w_f``, ``k_end`` and ``tot`` (the solve, the decay masks).

Decoding (a single step, no autograd: the modules' ``step``) skips the chunked machinery: ``_delta_step`` reads the
state once, applies ``S' = s (S - k (f^T S)) + k v^T`` (``s S - k (f^T S) + k v^T`` with ``scaled_read``: f carries
the decay) and the readout, and writes it back (one launch per token).

Both launches are ``torch.library.custom_op`` s (``dsfc::delta_pass_fwd`` / ``_bwd``) with ``register_fake`` and
``register_autograd``, so a ``torch.compile``d model keeps one opaque node per launch.

Precision: ``tl.dot`` with ``input_precision="ieee"`` (no TF32: the delta rule's pseudo-values are differences of
nearly equal terms, ``v - S^T k``, which TF32's 10-bit mantissa would swamp).

Status: checked against a per-step float64 loop and the generated modules' reference under ``TRITON_INTERPRET=1``
(triton 3.9, tests/triton/test_triton_delta.py) and compiled ahead of time for sm_90 (tests/triton/aot_compile.py);
not yet run or timed on a GPU (none was lent while it was written).
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types
from typing import Optional

import torch

from dsfc.runtime.dispatch import eager_inference, next_pow2, refuse_double_backward, require_triton_device
from dsfc.runtime.scans import chunked_delta_scan

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; chunked_delta_triton then raises
    triton = None

__all__ = ["chunked_delta_triton", "delta_state_passing", "available"]

# Tiles, sized without a GPU from ptxas' report for sm_90 (tests/triton/aot_compile.py --delta-only --resources),
# K = V = 128, chunk 64, fp32: whole-chunk [64, 128] operand tiles with a [128, 64] state slice at 4 warps took 255
# registers and spilled 40 KB per thread (and needed more shared memory than sm_90 has at K = 256 or in fp64);
# 16-row sub-blocks with [128, 32] slices still spilled 0.5-1.5 KB at 4 and 8 warps; [128, 16] at 8 warps takes 184
# registers, no spill. BLOCK_V never goes below 16 (tl.dot's smallest tile), so K = 256 (Gated DeltaNet's default)
# gets [256, 16] slices, twice the cap: 255 registers with 44-76 bytes spilled, the smallest this layout allows
# (splitting K across programs would need a cross-program reduction of w_f S). More value slices re-read the chunk's
# w_f and k_end tiles once each (L2-resident: the slices of one head run together).
MAX_STATE_TILE = 2048  # most fp32 state entries one program holds ([BLOCK_K, BLOCK_V] registers)
MAX_BLOCK_V = 64
NUM_WARPS = 8


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _tiles(pid_v, K, V, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        """Offsets of a [BL, K] and a [BL, V] tile of rows and of the program's [K, BLOCK_V] state slice (+ masks)."""
        ll = tl.arange(0, BL)
        kk = tl.arange(0, BK)
        vv = pid_v * BV + tl.arange(0, BV)
        lk_off = ll[:, None] * K + kk[None, :]
        lv_off = ll[:, None] * V + vv[None, :]
        s_off = kk[:, None] * V + vv[None, :]
        s_mask = (kk[:, None] < K) & (vv[None, :] < V)
        return ll, kk, vv, lk_off, lv_off, s_off, s_mask

    # Both kernels walk a chunk's L rows in sub-blocks of BL (16): every row of chunk c reads the same S_c (forward)
    # or G = dL/dS_(c+1) (backward), so the sub-blocks are independent products summed into one update, and the
    # tiles stay [16, K] (a whole [64, 128] chunk tile per operand spilled and overflowed shared memory on sm_90).

    @triton.jit
    def _delta_pass_fwd(wv_ptr, wf_ptr, ke_ptr, tot_ptr, h0_ptr, starts_ptr, x_ptr, final_ptr, NC, L, K, V,
                        BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DTYPE: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        ll, kk, vv, lk_off, lv_off, s_off, s_mask = _tiles(tl.program_id(1), K, V, BL, BK, BV)
        s = tl.load(h0_ptr + bh * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)
        for c in range(0, NC):
            row = bh * NC + c
            tl.store(starts_ptr + row * K * V + s_off, s, mask=s_mask)
            inject = tl.zeros((BK, BV), DTYPE)
            for r0 in range(0, L, BL):
                rows = r0 + ll
                # rows past L and key columns past K load 0: they add nothing to either product
                lk_mask = (rows[:, None] < L) & (kk[None, :] < K)
                lv_mask = (rows[:, None] < L) & (vv[None, :] < V)
                wf = tl.load(wf_ptr + row * L * K + r0 * K + lk_off, mask=lk_mask, other=0.0).to(DTYPE)
                wv = tl.load(wv_ptr + row * L * V + r0 * V + lv_off, mask=lv_mask, other=0.0).to(DTYPE)
                x = wv - tl.dot(wf, s, input_precision="ieee")
                tl.store(x_ptr + row * L * V + r0 * V + lv_off, x, mask=lv_mask)
                ke = tl.load(ke_ptr + row * L * K + r0 * K + lk_off, mask=lk_mask, other=0.0).to(DTYPE)
                inject += tl.dot(tl.trans(ke), x, input_precision="ieee")
            tot = tl.load(tot_ptr + row).to(DTYPE)
            s = tot * s + inject
        tl.store(final_ptr + bh * K * V + s_off, s, mask=s_mask)

    @triton.jit
    def _delta_pass_bwd(wf_ptr, ke_ptr, tot_ptr, dstarts_ptr, dx_ptr, dfinal_ptr, dwv_ptr, g_ptr, dh0_ptr, NC, L,
                        K, V, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DTYPE: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        ll, kk, vv, lk_off, lv_off, s_off, s_mask = _tiles(tl.program_id(1), K, V, BL, BK, BV)
        g = tl.load(dfinal_ptr + bh * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)  # dL/dS_(c+1)
        for cc in range(0, NC):
            row = bh * NC + (NC - 1 - cc)
            tl.store(g_ptr + row * K * V + s_off, g, mask=s_mask)
            through_x = tl.zeros((BK, BV), DTYPE)  # -sum over the chunk's rows of w_f^T dX
            for r0 in range(0, L, BL):
                rows = r0 + ll
                lk_mask = (rows[:, None] < L) & (kk[None, :] < K)
                lv_mask = (rows[:, None] < L) & (vv[None, :] < V)
                ke = tl.load(ke_ptr + row * L * K + r0 * K + lk_off, mask=lk_mask, other=0.0).to(DTYPE)
                dx = tl.load(dx_ptr + row * L * V + r0 * V + lv_off, mask=lv_mask, other=0.0).to(DTYPE)
                dx = dx + tl.dot(ke, g, input_precision="ieee")
                tl.store(dwv_ptr + row * L * V + r0 * V + lv_off, dx, mask=lv_mask)
                wf = tl.load(wf_ptr + row * L * K + r0 * K + lk_off, mask=lk_mask, other=0.0).to(DTYPE)
                through_x -= tl.dot(tl.trans(wf), dx, input_precision="ieee")
            tot = tl.load(tot_ptr + row).to(DTYPE)
            ds = tl.load(dstarts_ptr + row * K * V + s_off, mask=s_mask, other=0.0).to(DTYPE)
            g = tot * g + through_x + ds
        tl.store(dh0_ptr + bh * K * V + s_off, g, mask=s_mask)

    @triton.jit
    def _delta_step(q_ptr, k_ptr, v_ptr, f_ptr, g_ptr, s0_ptr, y_ptr, sT_ptr, K, V, BK: tl.constexpr,
                    BV: tl.constexpr, DECAY: tl.constexpr, PRE: tl.constexpr, DTYPE: tl.constexpr,
                    SCALED: tl.constexpr = False):
        """One decoding step (T = 1) of one (batch row, head, value slice): S' = s (S - k (f^T S)) + k v^T
        (S' = s S - k (f^T S) + k v^T where f carries the decay, SCALED) and y = S'^T q (y = S^T q before the
        update, PRE); the state read and written once, in DTYPE."""
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
        f = tl.load(f_ptr + bh * K + kk, mask=mk, other=0.0).to(DTYPE)
        v = tl.load(v_ptr + bh * V + vv, mask=mv, other=0.0).to(DTYPE)
        fs = tl.sum(f[:, None] * s, axis=0)  # f^T S, [BV]
        if SCALED:
            s_new = s
            if DECAY:
                s_new = tl.exp(tl.load(g_ptr + bh).to(DTYPE)) * s
            s_new -= k[:, None] * fs[None, :]
        else:
            s_new = s - k[:, None] * fs[None, :]
            if DECAY:
                s_new = tl.exp(tl.load(g_ptr + bh).to(DTYPE)) * s_new
        s_new += k[:, None] * v[None, :]
        if PRE:
            y = tl.sum(q[:, None] * s, axis=0)
        else:
            y = tl.sum(q[:, None] * s_new, axis=0)
        tl.store(y_ptr + bh * V + vv, y, mask=mv)
        tl.store(sT_ptr + bh * K * V + s_off, s_new, mask=s_mask)


def _launch_cfg(L: int, K: int, V: int, itemsize: int = 4) -> tuple:
    """(BLOCK_L, BLOCK_K, BLOCK_V, value slices): tl.dot's tiles are at least 16 on every side; the state slice
    holds at most MAX_STATE_TILE fp32 entries (half that in fp64)."""
    block_l = 16
    block_k = max(16, next_pow2(K))
    cap = MAX_STATE_TILE * 4 // max(4, itemsize)
    block_v = max(16, min(MAX_BLOCK_V, next_pow2(V), cap // block_k))
    return block_l, block_k, block_v, triton.cdiv(V, block_v)


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pass_fwd(w_v, w_f, k_end, tot, h0):
    B, H, NC, L, V = w_v.shape
    K = w_f.shape[-1]
    starts = torch.empty((B, H, NC, K, V), device=h0.device, dtype=h0.dtype)
    x = torch.empty((B, H, NC, L, V), device=h0.device, dtype=h0.dtype)
    final = torch.empty((B, H, K, V), device=h0.device, dtype=h0.dtype)
    block_l, block_k, block_v, nv = _launch_cfg(L, K, V, h0.element_size())
    _delta_pass_fwd[(B * H, nv)](w_v.contiguous(), w_f.contiguous(), k_end.contiguous(), tot.contiguous(),
                                 h0.contiguous(), starts, x, final, NC, L, K, V, BL=block_l, BK=block_k, BV=block_v,
                                 DTYPE=_tl_dtype(h0.dtype), num_warps=NUM_WARPS)
    return starts, x, final


@torch.library.custom_op("dsfc::delta_pass_fwd", mutates_args=())
def _delta_pass_fwd_op(w_v: torch.Tensor, w_f: torch.Tensor, k_end: torch.Tensor, tot: torch.Tensor,
                       h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _pass_fwd(w_v, w_f, k_end, tot, h0)


@_delta_pass_fwd_op.register_fake
def _(w_v, w_f, k_end, tot, h0):
    B, H, NC, L, V = w_v.shape
    K = w_f.shape[-1]
    return h0.new_empty((B, H, NC, K, V)), h0.new_empty((B, H, NC, L, V)), h0.new_empty((B, H, K, V))


@torch.library.custom_op("dsfc::delta_pass_bwd", mutates_args=())
def _delta_pass_bwd_op(w_f: torch.Tensor, k_end: torch.Tensor, tot: torch.Tensor, dstarts: torch.Tensor,
                       dx: torch.Tensor, dfinal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/dw_v, G, dL/dh0)``: ``G[:, :, c]`` is dL/dS_(c+1), from which the caller forms the other gradients."""
    B, H, NC, L, V = dx.shape
    K = w_f.shape[-1]
    dwv = torch.empty((B, H, NC, L, V), device=dx.device, dtype=dx.dtype)
    g = torch.empty((B, H, NC, K, V), device=dx.device, dtype=dx.dtype)
    dh0 = torch.empty((B, H, K, V), device=dx.device, dtype=dx.dtype)
    block_l, block_k, block_v, nv = _launch_cfg(L, K, V, dx.element_size())
    _delta_pass_bwd[(B * H, nv)](w_f.contiguous(), k_end.contiguous(), tot.contiguous(), dstarts.contiguous(),
                                 dx.contiguous(), dfinal.contiguous(), dwv, g, dh0, NC, L, K, V, BL=block_l,
                                 BK=block_k, BV=block_v, DTYPE=_tl_dtype(dx.dtype), num_warps=NUM_WARPS)
    return dwv, g, dh0


@_delta_pass_bwd_op.register_fake
def _(w_f, k_end, tot, dstarts, dx, dfinal):
    B, H, NC, L, V = dx.shape
    K = w_f.shape[-1]
    return dx.new_empty((B, H, NC, L, V)), dx.new_empty((B, H, NC, K, V)), dx.new_empty((B, H, K, V))


def _setup_context(ctx, inputs, output):
    w_v, w_f, k_end, tot, h0 = inputs
    starts, x, _ = output
    ctx.save_for_backward(w_f, k_end, tot, starts, x)


def _backward(ctx, dstarts, dx, dfinal):
    w_f, k_end, tot, starts, x = ctx.saved_tensors
    dstarts = torch.zeros_like(starts) if dstarts is None else dstarts
    dx = torch.zeros_like(x) if dx is None else dx
    dfinal = starts.new_zeros(starts[:, :, 0].shape) if dfinal is None else dfinal
    dwv, g, dh0 = _delta_pass_bwd_op(w_f, k_end, tot, dstarts.to(x.dtype), dx.to(x.dtype), dfinal.to(x.dtype))
    # the sums over the value axis (split across the kernel's value slices): batched matmuls
    dwf = -torch.matmul(dwv, starts.transpose(-1, -2))
    dke = torch.matmul(x, g.transpose(-1, -2))
    dtot = (g * starts).sum(dim=(-1, -2))
    return dwv, dwf, dke, dtot, dh0


_delta_pass_fwd_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(_delta_pass_bwd_op, "delta-rule")


def delta_state_passing(w_v: torch.Tensor, w_f: torch.Tensor, k_end: torch.Tensor, tot: torch.Tensor,
                        h0: torch.Tensor) -> tuple:
    """The chunked delta rule's sequential part (module docstring) on the Triton kernels: ``(starts, X, S_final)``
    from ``w_v`` ``[B, H, NC, L, V]``, ``w_f`` and ``k_end`` ``[B, H, NC, L, K]``, ``tot`` ``[B, H, NC]`` and ``h0``
    ``[B, H, K, V]``, all in the compute dtype (fp32 / fp64). The ``state_passing`` of ``chunked_delta_scan``."""
    if eager_inference(w_v, w_f, k_end, tot, h0):  # no autograd, no compile: the op's dispatch is overhead
        return _pass_fwd(w_v, w_f, k_end, tot, h0)
    return _delta_pass_fwd_op(w_v, w_f, k_end, tot, h0)


STEP_BLOCK_V = 32  # the decode step's value slice


def _single_step(q, k, v, f, g, h0, readout, scaled_read=False):
    """T = 1 without autograd (decoding): one launch of ``_delta_step``; the arguments in the compute dtype."""
    B, _, H, K = q.shape
    V = v.shape[-1]
    block_k = next_pow2(K)
    block_v = max(1, min(STEP_BLOCK_V, next_pow2(V), MAX_STATE_TILE * 2 // block_k))
    y = torch.empty((B, 1, H, V), device=q.device, dtype=h0.dtype)
    s_new = torch.empty((B, H, K, V), device=q.device, dtype=h0.dtype)
    dummy = q.new_empty(0)  # no decay: the kernel never reads it
    _delta_step[(B * H, triton.cdiv(V, block_v))](q.contiguous(), k.contiguous(), v.contiguous(), f.contiguous(),
                                                  dummy if g is None else g.contiguous(), h0.contiguous(), y, s_new,
                                                  K, V, BK=block_k, BV=block_v, DECAY=g is not None,
                                                  PRE=readout == "pre", DTYPE=_tl_dtype(h0.dtype),
                                                  SCALED=scaled_read)
    return y, s_new


def chunked_delta_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, f: torch.Tensor,
                         log_decay: Optional[torch.Tensor] = None, h0: Optional[torch.Tensor] = None, *,
                         chunk: int = 64, output_final_state: bool = False, readout: str = "post",
                         scaled_read: bool = False):
    """``chunked_delta_scan`` (same arguments, results and checks) with its chunk-to-chunk state recurrence on the
    Triton kernels above: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (slow: for tests).
    Differentiable w.r.t. q, k, v, f, log_decay and h0; the chunk-parallel parts are torch (autograd). A single
    step without autograd (decoding, the modules' ``step``) is one launch of ``_delta_step`` instead."""
    if triton is None:
        raise RuntimeError("dsfc: chunked_delta_triton needs triton")
    dev = q.device
    require_triton_device(dev)
    decoding = eager_inference(*[x for x in (q, k, v, f, log_decay, h0) if x is not None])
    return chunked_delta_scan(q, k, v, f, log_decay, h0, chunk=chunk, output_final_state=output_final_state,
                              readout=readout, state_passing=delta_state_passing,
                              step=_single_step if decoding else None, scaled_read=scaled_read)
