"""Launch and autograd for the diagonal-scan Triton kernels that dsfc generates per spec.

A generated module defines two ``@triton.jit`` kernels with the spec's maths printed into them (see the module's
``_scan_fwd`` / ``_scan_bwd`` and ``dsfc/codegen/templates/triton_diagonal.py.jinja``). This file is the
spec-independent part: block sizes, grid, buffers, and the custom ops (with their autograd) around the kernels.

How is the kernel parallelised? The state entries are laid out as a ``[R, C]`` matrix: ``C`` counts the state axes
the readout ``y = C h`` sums over (the reduced axes), ``R`` the others. One program owns one batch row and one
``[BLOCK_R, BLOCK_C]`` tile of that matrix, keeps its tile of ``h`` in registers and walks time sequentially.

* fused readout (``READOUT=True``): the tile spans all ``C`` columns (grid ``(B, cdiv(R, BLOCK_R), 1)``), so each
  program sums its own ``C h`` rows and writes ``y`` directly; no state is ever written except the final one.
* states out (``READOUT=False``): used when the readout does not split that way (decided by the compiler) or when
  ``C`` is too large for one tile (``MAX_BLOCK_C``, decided here): the kernel writes every state ``[B, T, N]`` and
  the generated module does the readout in torch.

Backward (recompute, no activations saved by the forward), step-by-step kernels: the forward kernel is rerun with
``READOUT=False`` into a ``[B, T, N]`` scratch buffer of states (skipped when the forward already returned the
states; replaced by the chunked backward when the buffer would not fit, see CHUNKED_BACKWARD), then the backward
kernel walks time in reverse with the state gradient in registers and accumulates every leaf's gradient from the
SymPy-derived derivatives printed into it: ``tl.atomic_add`` per step for time-varying leaves, one atomic per
program at the end for parameters. Float atomics make the order of gradient sums nondeterministic on a GPU.

torch.compile: the launch is two ``torch.library.custom_op`` s (``dsfc::diagonal_scan_fwd`` / ``_bwd``) with
``register_fake`` (output shapes only) and ``register_autograd``, so Dynamo puts one opaque node per launch into the
graph of a surrounding model instead of tracing into Triton's launcher (which it cannot trace under the interpreter
and would graph-break on). Custom ops take only tensors and plain values, so the generated ``@triton.jit`` functions
are looked up by a string key (``register_kernels``) that each generated module registers at import.

Precision: leaves may be fp16 / bf16 (the generated module passes the time-varying ones in the input dtype); the
kernels load every value with ``.to(DTYPE)`` and accumulate the state in fp32 (fp64 for fp64 modules), the fused
output ``y`` is stored in the leaves' input dtype (``out_dtype``), the final state and the unfused states stay in the
compute dtype (they feed more arithmetic), and leaf gradients are accumulated in fp32 then cast to the leaf dtype.

Status: checked against the torch path and the fp64 reference under ``TRITON_INTERPRET=1``, compiled for sm_90
without a GPU (``tests/triton/aot_compile.py``, triton 3.6 and 3.9), and run on an H200 (``tests/triton`` compiled,
triton 3.6; README "GPU benchmark" for the timings that chose the defaults below). ``TILE`` / ``PROGRAMS`` /
``CHUNK_T`` are not autotuned.

Chunked kernels (``_scan_fwd_chunked`` / ``_scan_bwd_chunked``, not generated for a pre-update readout): CHUNK_T steps
at a time as [CHUNK_T, BLOCK_R, BLOCK_C] tiles with an associative scan over time; the backward keeps only the
chunk-start states ([B, cdiv(T, CHUNK_T), N], written by the chunked forward in its STARTS mode) instead of every
state.
"""

# no `from __future__ import annotations`: torch.library.custom_op reads the annotations as types (string
# annotations are not understood by every torch version this must run on)
from dataclasses import dataclass, replace
from typing import Any

import torch

from dsfc.runtime import autochoice
from dsfc.runtime.dispatch import (check_offsets, eager_inference, next_pow2, refuse_double_backward,
                                   require_triton_device)

__all__ = ["diagonal_scan_triton", "register_kernels", "MAX_BLOCK_C", "TILE"]

MAX_BLOCK_C = 2048  # widest readout reduction fused into one tile
TILE = 1024  # most state entries per program (on CPU under the interpreter: always, fewer programs run faster)
PROGRAMS = 512  # on CUDA, tiles shrink (down to 32 entries) until B * N / tile reaches this many programs

# Which kernels run. Measured on an H200 (S6, B=8, d=2048, n=16, T=4096, bf16; README "GPU benchmark"): the chunked
# forward is 2.4-3.9x slower than the step-by-step one (its associative scan over [CHUNK_T, BLOCK_R, BLOCK_C] tiles
# costs more than the per-step load latency it hides), and step fwd+bwd beats chunked fwd+bwd 23 ms to 38 ms. But
# the step backward needs every state [B, T, N] (4.3 GB there) and the chunked one only the chunk starts. So: step
# kernels, except a backward whose [B, T, N] buffer would take more than STATES_BUDGET of the free GPU memory.
CHUNKED_FORWARD = False
CHUNKED_BACKWARD = "auto"  # "auto" (the rule above), "always" or "never"
STATES_BUDGET = 0.25  # fraction of free device memory the step backward's state buffer may take
# Step forward: issue the next step's loads before this step's maths (True), or not (False); "auto": on a GPU, time
# both on the first call of each launch shape and keep the faster (``autochoice``; not yet measured by hand)
PREFETCH = "auto"
CHUNK_T = 16  # steps per chunk of the chunked forward kernel (its loads are issued once per chunk)
CHUNK_ELEMS = 4096  # most [CHUNK_T, BLOCK_R, BLOCK_C] elements per chunk tile (registers: ~32 a thread at 4 warps)

# str key -> (fwd, bwd, chunked fwd or None, chunked bwd or None) @triton.jit kernels of one generated module
# (custom ops cannot take Python functions)
_KERNELS: dict[str, tuple[Any, Any, Any, Any]] = {}


def register_kernels(fwd, bwd, fwd_chunked=None, bwd_chunked=None) -> str:
    """Register a generated module's kernels; returns the key its launches pass to the custom ops.
    ``fwd_chunked`` / ``bwd_chunked``: the kernels that scan CHUNK_T steps at a time (None for a pre-update
    readout, which keeps the step-by-step kernels)."""
    fn = getattr(fwd, "fn", fwd)  # a triton JITFunction wraps the Python function
    key = f"{fn.__module__}:{id(fwd):x}"  # the same source may be imported under several module names
    _KERNELS[key] = (fwd, bwd, fwd_chunked, bwd_chunked)
    return key


def _prev_pow2(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


@dataclass(frozen=True)
class _Launch:
    """Everything but the tensors, decoded from the custom ops' ``int[]`` / ``float[]`` arguments."""

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
    chunk_t: int = 1  # 1: the step-by-step forward kernel; else the chunked one, this many steps per chunk
    skip: bool = False  # the fused step forward adds the module's elementwise D u to y (SKIP; no autograd)

    def encode(self) -> list[int]:
        return [self.T, self.R, self.C, self.P, int(self.fused), self.block_r, self.block_c, self.num_warps,
                self.chunk_t, int(self.skip), *self.dims]

    @staticmethod
    def decode(cfg, consts) -> "_Launch":
        T, R, C, P, fused, block_r, block_c, num_warps, chunk_t, skip, *dims = (int(x) for x in cfg)
        return _Launch(T, tuple(dims), tuple(float(c) for c in consts), R, C, P, bool(fused), block_r, block_c,
                       num_warps, chunk_t, bool(skip))

    def grid(self, batch: int) -> tuple[int, int, int]:
        return (batch, -(-self.R // self.block_r), -(-self.C // self.block_c))

    def width(self) -> int:
        return self.P if self.fused else self.R * self.C


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _strides(leaves) -> list[int]:
    return [s for x in leaves for s in x.stride()]


_CONSTS_CACHE: dict = {}


def _consts(L: _Launch, h0):
    """Host constants as a tensor in the compute dtype (a float kernel argument would be fp32 even for fp64).

    Made once per (constants, device, dtype) and reused (the kernels only read it): ``torch.tensor(..., device=
    "cuda")`` per launch was a copy from pageable host memory, which waits for the stream, so every decoding step
    synchronised the device once more. A handful of entries per process (one per spec's constants and dtype)."""
    key = (L.consts, h0.device, h0.dtype)
    cached = _CONSTS_CACHE.get(key)
    if cached is None:
        cached = _CONSTS_CACHE[key] = torch.tensor(L.consts or (0.0,), device=h0.device, dtype=h0.dtype)
    return cached


def _launch_fwd(key: str, L: _Launch, h0, leaves, fused: bool, out_dtype: torch.dtype, starts: bool = False):
    """``(out, hT)``: y (fused) or every state, or with ``starts`` only the state entering each chunk
    (``[B, cdiv(T, chunk_t), N]``, the chunked kernel in STARTS mode: all the chunked backward keeps)."""
    fwd, _bwd, fwd_chunked, _bwd_chunked = _KERNELS[key]
    B, N = h0.shape[0], L.R * L.C
    width = L.P if fused else N
    rows = -(-L.T // L.chunk_t) if starts else L.T
    meta = dict(BLOCK_R=L.block_r, BLOCK_C=L.block_c, READOUT=fused, DTYPE=_tl_dtype(h0.dtype), num_warps=L.num_warps)

    def launch(prefetch: bool = False):
        out = torch.empty((B, rows, width), device=h0.device, dtype=out_dtype if fused else h0.dtype)
        hT = torch.empty((B, N), device=h0.device, dtype=h0.dtype)
        args = (h0, out, hT, *leaves, *_strides(leaves), *L.dims, _consts(L, h0), L.T, L.R, L.C, width)
        if L.chunk_t > 1:
            fwd_chunked[L.grid(B)](*args, CHUNK_T=L.chunk_t, STARTS=starts, **meta)
        else:  # D u only into y (the backward's recomputed states never)
            fwd[L.grid(B)](*args, PREFETCH=prefetch, SKIP=L.skip and fused, **meta)
        return out, hT

    prefetch = PREFETCH
    if PREFETCH == "auto" and L.chunk_t == 1:
        # the same loads in another order: bit-identical results (rtol 0 would do; 1e-6 leaves room for FMA
        # contraction choices), so the only question is speed, which depends on the GPU: time both once per shape
        shape = (key, B, L.T.bit_length(), L.R, L.C, L.P, fused, L.skip, L.block_r, L.block_c, L.num_warps,
                 str(h0.dtype), str(out_dtype), str(h0.device))
        prefetch = (False, True)[autochoice.choose(("diagonal prefetch",) + shape, (False, True), launch, h0.device,
                                                   1e-6)]
    return launch(bool(prefetch))


def _chunk_starts(key: str, L: _Launch, h0, leaves):
    return _launch_fwd(key, L, h0, leaves, False, h0.dtype, starts=True)[0]


# ---- the custom ops (eager implementations; fake = shapes only) -------------------------------------------------


def _scan_fwd(key: str, h0: torch.Tensor, leaves: list[torch.Tensor], cfg: list[int], consts: list[float],
              out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    L = _Launch.decode(cfg, consts)
    return _launch_fwd(key, L, h0, [x.contiguous() for x in leaves], L.fused, out_dtype)


_scan_fwd_op = torch.library.custom_op("dsfc::diagonal_scan_fwd", mutates_args=())(_scan_fwd)


@_scan_fwd_op.register_fake
def _(key, h0, leaves, cfg, consts, out_dtype):
    L = _Launch.decode(cfg, consts)
    out = h0.new_empty((h0.shape[0], L.T, L.width()), dtype=out_dtype if L.fused else h0.dtype)
    return out, h0.new_empty(h0.shape)


@torch.library.custom_op("dsfc::diagonal_scan_bwd", mutates_args=())
def _scan_bwd_op(key: str, h0: torch.Tensor, states: torch.Tensor | None, dout: torch.Tensor, dhT: torch.Tensor,
                 leaves: list[torch.Tensor], cfg: list[int], consts: list[float]) -> list[torch.Tensor]:
    """``[dh0, *dleaves]``. ``states``: the forward's states when it wrote them (unfused), else None (recomputed)."""
    L = _Launch.decode(cfg, consts)
    bwd, bwd_chunked = _KERNELS[key][1], _KERNELS[key][3]
    leaves = [x.contiguous() for x in leaves]
    # fp32 (fp64) gradient buffers even for half leaves: the kernels accumulate into them with atomics
    grads = [torch.zeros(x.shape, device=x.device, dtype=h0.dtype) for x in leaves]
    dh0 = torch.empty_like(h0)
    rest = (*leaves, *grads, *_strides(leaves), *L.dims, _consts(L, h0), L.T, L.R, L.C, L.width())
    meta = dict(BLOCK_R=L.block_r, BLOCK_C=L.block_c, READOUT=L.fused, DTYPE=_tl_dtype(h0.dtype),
                num_warps=L.num_warps)
    Lc = None
    if bwd_chunked is not None and L.T > 1 and _chunked_backward(L, h0, states is not None):
        Lc = L if L.chunk_t > 1 else _Launch(  # after a step forward: chunk-sized tiles for the chunked backward
            L.T, L.dims, L.consts, L.R, L.C, L.P, L.fused,
            *_tiles(h0.shape[0], L.T, L.R, L.C, L.fused, h0.device.type == "cuda", True))
    if Lc is not None and Lc.chunk_t > 1:  # recompute only the chunk starts, not every state
        starts = _chunk_starts(key, Lc, h0, leaves)
        meta.update(BLOCK_R=Lc.block_r, BLOCK_C=Lc.block_c, num_warps=Lc.num_warps)
        bwd_chunked[Lc.grid(h0.shape[0])](h0, starts, dout.contiguous(), dhT.contiguous(), dh0, *rest,
                                          CHUNK_T=Lc.chunk_t, STARTS=False, **meta)
    else:
        if states is None:
            states = _launch_fwd(key, L, h0, leaves, False, h0.dtype)[0]
        bwd[L.grid(h0.shape[0])](h0, states.contiguous(), dout.contiguous(), dhT.contiguous(), dh0, *rest, **meta)
    return [dh0, *(g.to(x.dtype) for g, x in zip(grads, leaves))]


@_scan_bwd_op.register_fake
def _(key, h0, states, dout, dhT, leaves, cfg, consts):
    return [torch.empty_like(h0), *(torch.empty_like(x) for x in leaves)]


def _setup_context(ctx, inputs, output):
    key, h0, leaves, cfg, consts, _ = inputs
    out, _hT = output
    ctx.key, ctx.cfg, ctx.consts, ctx.n_leaves = key, cfg, consts, len(leaves)
    ctx.fused = bool(cfg[4])
    # only references to tensors the caller holds anyway (and, unfused, the states the readout needs anyway): the
    # fused backward recomputes the states rather than keeping a [B, T, N] activation alive
    ctx.save_for_backward(h0, out if not ctx.fused else None, *leaves)


def _backward(ctx, dout, dhT):
    h0, states, *leaves = ctx.saved_tensors
    L = _Launch.decode(ctx.cfg, ctx.consts)
    if dout is None:
        dout = h0.new_zeros((h0.shape[0], L.T, L.width()))
    if dhT is None:
        dhT = torch.zeros_like(h0)
    dh0, *dleaves = _scan_bwd_op(ctx.key, h0, states, dout, dhT, leaves, ctx.cfg, ctx.consts)
    return None, dh0, dleaves, None, None, None


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(_scan_bwd_op, "diagonal-scan")


# The generated kernels address one batch row of an operand in 32-bit arithmetic (t * stride_t + i * stride_i: only
# the batch term b * stride_b is 64-bit), so a row whose offsets reach 2^31 would wrap to a wrong address: a silently
# wrong output (or an illegal access) on the GPU, at T * d >= 2^31 (T = 2^20 tokens of d = 2048). Refused by shape,
# per operand the kernels read (exact: S6's [B, T, d] and [B, T, n] operands, never a [B, T, d * n] state, which the
# fused kernel does not form); the shared predicate and its error are dispatch.check_offsets.
def _check_offsets(leaves, T) -> None:
    check_offsets(f"the Triton scan (T = {T})", ((f"operand {i}", x) for i, x in enumerate(leaves)))


def _check_args(h0: torch.Tensor, leaves, R: int, C: int, T: int = 0):
    """Clear errors for what the kernels would otherwise read wrongly (or crash on) without saying why."""
    if not isinstance(h0, torch.Tensor) or h0.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dsfc: the Triton scan's state must be float32 or float64, got "
                        f"{getattr(h0, 'dtype', type(h0).__name__)}")
    if h0.dim() < 1 or h0[0].numel() != R * C:
        raise ValueError(f"dsfc: the Triton scan's initial state must have {R * C} entries per batch row, got shape "
                         f"{tuple(h0.shape)}")
    for i, x in enumerate(leaves):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"dsfc: Triton scan operand {i} must be a tensor, got {type(x).__name__}")
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"dsfc: Triton scan operand {i} must be a float tensor, got {x.dtype}")
        if x.device != h0.device:
            raise ValueError(f"dsfc: Triton scan operand {i} is on {x.device}, the state on {h0.device}")
    _check_offsets(leaves, T)  # by shape only: also for meta tensors, before the device check
    dev = h0.device
    require_triton_device(dev)


def _tiles(B: int, T: int, R: int, C: int, fused: bool, cuda: bool, chunked: bool) -> tuple[int, int, int, int]:
    """``(block_r, block_c, num_warps, chunk_t)`` of one launch; ``chunk_t`` 1 for the step-by-step kernels."""
    tile = TILE
    if cuda:  # small batches: smaller tiles, so that there are a few programs per SM
        tile = max(32, min(TILE, _prev_pow2(B * R * C // PROGRAMS)))
        if chunked:  # a chunk tile holds CHUNK_T copies of the state tile
            tile = min(tile, max(32, CHUNK_ELEMS // CHUNK_T))
    block_c = next_pow2(C) if fused else min(next_pow2(C), tile)
    block_r = max(1, min(next_pow2(R), tile // block_c))
    num_warps = max(1, min(8, block_r * block_c // 128))
    chunk_t = 1
    if chunked:  # as many steps as fit CHUNK_ELEMS (at most CHUNK_T; fewer than 4 is not worth a scan)
        chunk_t = min(CHUNK_T, _prev_pow2(max(1, CHUNK_ELEMS // (block_r * block_c))), next_pow2(T))
        chunk_t = chunk_t if chunk_t >= 4 or (chunk_t > 1 and T <= chunk_t) else 1
        if chunk_t > 1:
            num_warps = max(1, min(8, chunk_t * block_r * block_c // 512))
    return block_r, block_c, num_warps, chunk_t


def _chunked_backward(L: _Launch, h0: torch.Tensor, have_states: bool) -> bool:
    """Whether the backward runs the chunked kernels (keeping only the chunk-start states) rather than recomputing
    every state into a [B, T, N] buffer for the step-by-step backward (CHUNKED_BACKWARD)."""
    if CHUNKED_BACKWARD == "always":
        return True
    if CHUNKED_BACKWARD == "never" or have_states:  # unfused: the forward's output already is every state
        return False
    need = h0.shape[0] * L.T * L.R * L.C * h0.element_size()
    free = torch.cuda.mem_get_info(h0.device)[0] if h0.device.type == "cuda" else 4 << 30
    return need > STATES_BUDGET * free


def diagonal_scan_triton(key: str, h0: torch.Tensor, leaves, *, T: int, dims, consts, R: int, C: int, P: int,
                         can_fuse: bool, out_dtype: torch.dtype | None = None, skip: bool = False):
    """Run the generated kernels registered under ``key`` (``register_kernels``). ``h0`` ``[B, N]``-compatible
    initial state in the compute dtype (fp32 or fp64), ``leaves`` the tensors the kernels read (params
    ``[*shape]``, time-varying lets and the input ``[B, T, *shape]``; fp16 / bf16 / fp32 / fp64, read as the
    compute dtype). ``out_dtype``: dtype of the fused ``y`` (default: the compute dtype).

    ``skip``: the kernels were generated with an elementwise D u term (``SKIP``); it is added in the kernel when no
    gradient is needed (the backward kernels have no term for it: under autograd the caller adds D u in torch), on
    the fused step forward.

    Returns ``(out, final [B, N], fused, skipped)``: ``out`` is ``y`` ``[B, T, P]`` when ``fused`` (with D u in it
    when ``skipped``), else the states ``[B, T, N]`` in the compute dtype (the caller then does the readout in
    torch).
    """
    if key not in _KERNELS:
        raise ValueError(f"dsfc: no Triton kernels are registered under {key!r} (register_kernels returns the key)")
    if isinstance(T, bool) or not hasattr(T, "__index__") or T.__index__() < 0:
        raise ValueError(f"dsfc: the Triton scan's T must be an integer >= 0, got {T!r}")
    _check_args(h0, leaves, R, C, T)
    fused = bool(can_fuse) and next_pow2(C) <= MAX_BLOCK_C
    chunked = CHUNKED_FORWARD and _KERNELS[key][2] is not None and T > 1
    eager = eager_inference(h0, *leaves)
    L = _Launch(int(T), tuple(int(d) for d in dims), tuple(float(c) for c in consts), int(R), int(C), int(P),
                fused, *_tiles(h0.shape[0], int(T), int(R), int(C), fused, h0.device.type == "cuda", chunked))
    skipped = bool(skip) and fused and eager and L.chunk_t == 1
    L = replace(L, skip=skipped)
    h0 = h0.reshape(h0.shape[0], R * C).contiguous()
    # never an empty consts list: register_autograd matches backward's return against the inputs' pytree, where an
    # empty list is a node (needing []) but a list of floats a leaf (needing None); the kernel ignores the padding
    consts_arg = list(L.consts) or [0.0]
    forward = _scan_fwd if eager else _scan_fwd_op
    out, hT = forward(key, h0, list(leaves), L.encode(), consts_arg, out_dtype or h0.dtype)
    return out, hT, fused, skipped
