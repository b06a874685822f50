"""Launch and autograd for the diagonal-scan Triton kernels that dsfc generates per spec.

A generated module defines two ``@triton.jit`` kernels with the spec's maths printed into them (see the module's
``_scan_fwd`` / ``_scan_bwd`` and ``dsfc/codegen/templates/triton_diagonal.py.jinja``). This file is the
spec-independent part: block sizes, grid, buffers, and the ``torch.autograd.Function`` around the kernels.

How is the kernel parallelised? The state entries are laid out as a ``[R, C]`` matrix: ``C`` counts the state axes
the readout ``y = C h`` sums over (the reduced axes), ``R`` the others. One program owns one batch row and one
``[BLOCK_R, BLOCK_C]`` tile of that matrix, keeps its tile of ``h`` in registers and walks time sequentially.

* fused readout (``READOUT=True``): the tile spans all ``C`` columns (grid ``(B, cdiv(R, BLOCK_R), 1)``), so each
  program sums its own ``C h`` rows and writes ``y`` directly; no state is ever written except the final one.
* states out (``READOUT=False``): used when the readout does not split that way (decided by the compiler) or when
  ``C`` is too large for one tile (``MAX_BLOCK_C``, decided here): the kernel writes every state ``[B, T, N]`` and
  the generated module does the readout in torch.

Backward (recompute, no activations saved by the forward): the forward kernel is rerun with ``READOUT=False`` into
a ``[B, T, N]`` scratch buffer of states (skipped when the forward already returned the states), then the backward
kernel walks time in reverse with the state gradient in registers and accumulates every leaf's gradient from the
SymPy-derived derivatives printed into it: ``tl.atomic_add`` per step for time-varying leaves, one atomic per
program at the end for parameters. Float atomics make the order of gradient sums nondeterministic on a GPU.

Status: checked against the torch path under ``TRITON_INTERPRET=1`` (triton 3.6 and 3.9) and compiled for sm_90 by
triton 3.6 and 3.9 without a GPU; not yet run or timed on a GPU, so ``TILE`` / ``PROGRAMS`` are first guesses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

__all__ = ["diagonal_scan_triton", "MAX_BLOCK_C", "TILE"]

MAX_BLOCK_C = 2048  # widest readout reduction fused into one tile
TILE = 1024  # most state entries per program (on CPU under the interpreter: always, fewer programs run faster)
PROGRAMS = 512  # on CUDA, tiles shrink (down to 32 entries) until B * N / tile reaches this many programs


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _prev_pow2(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


@dataclass(frozen=True)
class _Launch:
    fwd: Any
    bwd: Any
    T: int
    dims: tuple[int, ...]
    consts: tuple[float, ...]
    R: int
    C: int
    P: int  # output features per step when fused
    fused: bool
    block_r: int
    block_c: int
    num_warps: int

    def grid(self, batch: int) -> tuple[int, int, int]:
        return (batch, -(-self.R // self.block_r), -(-self.C // self.block_c))


def _dtype(t: torch.Tensor):
    import triton.language as tl

    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _strides(leaves) -> list[int]:
    return [s for x in leaves for s in x.stride()]


def _consts(L: _Launch, h0):
    """Host constants as a tensor in the compute dtype (a float kernel argument would be fp32 even for fp64)."""
    return torch.tensor(L.consts or (0.0,), device=h0.device, dtype=h0.dtype)


def _launch_fwd(L: _Launch, h0, leaves, T: int, fused: bool):
    B, N = h0.shape[0], L.R * L.C
    width = L.P if fused else N
    out = torch.empty((B, T, width), device=h0.device, dtype=h0.dtype)
    hT = torch.empty((B, N), device=h0.device, dtype=h0.dtype)
    L.fwd[L.grid(B)](h0, out, hT, *leaves, *_strides(leaves), *L.dims, _consts(L, h0), T, L.R, L.C, width,
                     BLOCK_R=L.block_r, BLOCK_C=L.block_c, READOUT=fused, DTYPE=_dtype(h0), num_warps=L.num_warps)
    return out, hT


class _DiagonalScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, L: _Launch, h0, *leaves):
        out, hT = _launch_fwd(L, h0, leaves, L.T, L.fused)
        ctx.L = L
        # only references to tensors the caller holds anyway (and, unfused, the states the readout needs anyway)
        ctx.save_for_backward(h0, out if not L.fused else None, *leaves)
        return out, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dhT):
        L = ctx.L
        T = L.T
        h0, out, *leaves = ctx.saved_tensors
        B, N = h0.shape[0], L.R * L.C
        states = out if not L.fused else _launch_fwd(L, h0, leaves, T, False)[0]
        width = L.P if L.fused else N
        dout = torch.zeros((B, T, width), device=h0.device, dtype=h0.dtype) if dout is None else dout.contiguous()
        dhT = torch.zeros_like(h0) if dhT is None else dhT.contiguous()
        grads = [torch.zeros_like(x) for x in leaves]
        dh0 = torch.empty_like(h0)
        L.bwd[L.grid(B)](h0, states, dout, dhT, dh0, *leaves, *grads, *_strides(leaves), *L.dims, _consts(L, h0), T,
                         L.R, L.C, width, BLOCK_R=L.block_r, BLOCK_C=L.block_c, READOUT=L.fused, DTYPE=_dtype(h0),
                         num_warps=L.num_warps)
        return (None, dh0, *grads)


def diagonal_scan_triton(fwd, bwd, h0: torch.Tensor, leaves, *, T: int, dims, consts, R: int, C: int, P: int,
                         can_fuse: bool):
    """Run the generated kernels. ``h0`` ``[B, N]``-compatible initial state, ``leaves`` the tensors the kernels read
    (params ``[*shape]``, time-varying lets and the input ``[B, T, *shape]``), all in the compute dtype.

    Returns ``(out, final [B, N], fused)``: ``out`` is ``y`` ``[B, T, P]`` when ``fused``, else the states
    ``[B, T, N]`` (the caller then does the readout in torch).
    """
    dev = h0.device
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"dsfc: the Triton kernels need CUDA tensors (got {dev.type}); on CPU set "
                           "TRITON_INTERPRET=1 before triton is imported (slow: for tests)")
    fused = bool(can_fuse) and _next_pow2(C) <= MAX_BLOCK_C
    tile = TILE
    if dev.type == "cuda":  # small batches: smaller tiles, so that there are a few programs per SM
        tile = max(32, min(TILE, _prev_pow2(h0.shape[0] * R * C // PROGRAMS)))
    block_c = _next_pow2(C) if fused else min(_next_pow2(C), tile)
    block_r = max(1, min(_next_pow2(R), tile // block_c))
    num_warps = max(1, min(8, block_r * block_c // 128))
    L = _Launch(fwd, bwd, int(T), tuple(int(d) for d in dims), tuple(float(c) for c in consts), int(R), int(C), int(P),
                fused, block_r, block_c, num_warps)
    h0 = h0.reshape(h0.shape[0], R * C).contiguous()
    leaves = [x.contiguous() for x in leaves]
    out, hT = _DiagonalScanFn.apply(L, h0, *leaves)
    return out, hT, fused
