"""Spec-independent scan kernels that dsfc-generated modules import.

Two recurrences cover every DSF layer whose transition is diagonal or block-scalar:

* :func:`diagonal_scan` -- ``h_t = a_t * h_{t-1} + b_t`` with an elementwise transition (S6, S4D, LRU, RG-LRU,
  HGRN, qLSTM, Mamba-2 written per state, ...).
* :func:`chunked_outer_scan` -- ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``y_t = S_t^T q_t`` with a matrix
  state per head (linear attention, RetNet, GLA, Mamba-2 SSD, mLSTM without normaliser, ...).

Both run in plain PyTorch, so they work on any device and are differentiable with ordinary autograd.  Neither has a
Python loop over all T time steps:

* ``diagonal_scan`` is a two-level chunked scan.  Time is cut into chunks of ``chunk`` steps; a sequential loop over
  the steps *of one chunk* runs for all chunks at once (each iteration is one vectorised op over ``B * nchunks *
  prod(S)`` elements), the chunk-to-chunk carries come from the same scan applied recursively to the per-chunk
  summaries, and a last loop over the chunk's steps recomputes the states from the right carry.  That is
  ``~3 * chunk + (recursion)`` vectorised ops instead of ``T``.  An optional ``torch.compile`` path fuses the
  per-chunk loops (see :data:`COMPILE`).
* ``chunked_outer_scan`` is the chunkwise-parallel form of linear attention (fla's chunk kernels, mamba2's
  ``ssd_minimal``): matmuls inside a chunk plus state passing between chunks.

Numerics shared by both:

* Accumulation is in fp32 at least: fp16/bf16 inputs are upcast, the result is cast back.  float64 stays float64.
* No ratio of cumulative products is ever formed (no ``cumprod(a)[t] / cumprod(a)[s]``, no ``exp(cumsum[t] -
  cumsum[s])``).  Such ratios overflow or lose all precision under strong decay (``a -> 0``).  Every decay factor
  used here is a product of the ``a``'s, or ``exp`` of a sum of log-decays taken directly over the segment in
  question, so it is ``<= 1`` whenever ``|a| <= 1`` (``log_decay <= 0``).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from .compiled_chunks import CompileNotice

__all__ = ["block_scan", "diagonal_scan", "chunked_outer_scan", "chunked_delta_scan", "chunked_dplr_scan", "COMPILE",
           "COMPILE_MIN_NUMEL"]

Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------------------------------
# Compiled fast path switch.
#
# "auto" (default): use torch.compile'd chunk loops for diagonal_scan when the problem has at least COMPILE_MIN_NUMEL
#                   state elements (B * T * prod(S)); below that, compile time (seconds) would never pay off.
# "1" / "always":   use them whenever possible (any size).
# "0" / "never":    never compile.
# Set from the environment variable DSFC_SCAN_COMPILE at import; may be reassigned at run time
# (``dsfc.runtime.scans.COMPILE = "never"``).  Any failure of the compiled path disables it for the rest of the
# process (with one warning) and the eager path is used instead.
# ---------------------------------------------------------------------------------------------------------------------
COMPILE: str = os.environ.get("DSFC_SCAN_COMPILE", "auto").strip().lower()
if COMPILE not in ("auto", "0", "never", "false", "off", "no", "1", "always", "true", "on", "yes"):
    # a typo (DSFC_SCAN_COMPILE=nevr) silently meant auto; said, not raised, as for DSFC_COMPILE: an import
    warnings.warn(f"DSFC_SCAN_COMPILE must be auto, never or always (or 0 / 1), got {COMPILE!r}: using auto",
                  stacklevel=2)
    COMPILE = "auto"
COMPILE_MIN_NUMEL: int = 2**20

# Chunk length of the compiled loops.  Fixed (not the caller's ``chunk``) so that one compiled graph serves every
# call.  16 unrolled steps fuse into one C++ loop nest; with 32 Inductor's code for the states loop ran 2x slower
# and took longer to compile (measured on the 2-core CPU).
_COMPILED_CHUNK = 16


# =====================================================================================================================
# helpers
# =====================================================================================================================


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrences accumulate in: at least fp32 (complex: at least complex64)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


def _result_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """Promoted dtype of the given (non-None) tensors; must be floating point or complex."""
    dtype = None
    for t in tensors:
        if t is None:
            continue
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype is None or not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(f"scan inputs must be floating point or complex tensors, got {dtype}")
    return dtype


def check_int_option(name: str, value, minimum: int = 1, power_of_two: bool = False, maximum: Optional[int] = None
                     ) -> int:
    """``value`` as an int, or an error naming the option: TypeError for a non-integer (``16.0``, ``"16"``, ``None``,
    ``True``: a bool is no size), ValueError below ``minimum``, above ``maximum`` or, with ``power_of_two``, not a
    power of two."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = value.__index__()
    if value < minimum or (maximum is not None and value > maximum) or (power_of_two and value & (value - 1)):
        want = ("a power of two " if power_of_two else "an integer ") + f">= {minimum}"
        want += f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be {want}, got {value}")
    return value


def check_tensors(fn: str, **tensors) -> None:
    """TypeError naming the first argument of ``fn`` that is neither a tensor nor None (a list, a numpy array)."""
    for name, t in tensors.items():
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _pad_time(x: Tensor, dim: int, pad: int, value: float) -> Tensor:
    """Append ``pad`` constant steps along ``dim`` (no-op for pad == 0)."""
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


# =====================================================================================================================
# diagonal_scan
# =====================================================================================================================
#
# Layout inside: time is dim 1 of [B, T, *S].  ``a`` may broadcast against ``b`` over the state dims (a size-1 dim
# in ``a``), which the chunk-level recursion of chunked_outer_scan uses.  In chunked form the tensors are
# [B, nc, L, *S] and the loops below run over dim 2 (the L steps of a chunk) for all nc chunks at once.
#
# The loops take their per-step slices with one ``unbind`` instead of L ``x[:, :, step]`` selects: the backward of
# unbind is a single stack, whereas every select's backward would allocate and fill a zero tensor of full size.


def _fma(b: Tensor, a: Tensor, h: Tensor) -> Tensor:
    """``a * h + b``: one addcmul for real tensors; for complex ones (rotation_scan's modes) a multiply and an add,
    2.4x faster on CPU (torch's complex addcmul is not vectorised: 1.0 ms against 0.41 ms at 262k complex64 entries,
    one thread)."""
    return b + a * h if h.is_complex() else torch.addcmul(b, a, h)


def _summary_steps(a_steps: Sequence[Tensor], b_steps: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Summary of one chunk given its L per-step slices: ``(prod_l a_l, h_L from h = 0)``.

    Composing chunks is then the same recurrence one level up: carry' = prod * carry + h_L.  The product only
    multiplies a's (never divides), so it shrinks monotonically when |a| <= 1.
    """
    p, h = a_steps[0], b_steps[0]
    for a_t, b_t in zip(a_steps[1:], b_steps[1:]):
        h = _fma(b_t, a_t, h)  # h = a_t * h + b_t (one op for real tensors)
        p = p * a_t
    return p, h


def _states_steps(a_steps: Sequence[Tensor], b_steps: Sequence[Tensor], h: Tensor, dim: int) -> Tensor:
    """All states of a chunk from carry ``h``, given its per-step slices; stacked along ``dim``.

    One vectorised op per step; the list is stacked once at the end (no in-place writes, so autograd sees a plain
    graph).
    """
    out = []
    for a_t, b_t in zip(a_steps, b_steps):
        h = _fma(b_t, a_t, h)
        out.append(h)
    return torch.stack(out, dim=dim)


def _time_loop(a: Tensor, b: Tensor, h: Tensor) -> Tensor:
    """Plain sequential scan over dim 1 of [B, T, *S] (used only for T <= chunk)."""
    return _states_steps(a.unbind(1), b.unbind(1), h, dim=1)


def _scan(a: Tensor, b: Tensor, h0: Tensor, chunk: int) -> Tensor:
    """Two-level chunked scan of h_t = a_t h_{t-1} + b_t over dim 1; a, b: [B, T, *S] (a may broadcast); h0 full.

    1. Pad T to a multiple of the chunk length L with identity steps (a = 1, b = 0): they leave the state unchanged
       and their outputs are sliced off.
    2. For every chunk but the last, summarise it as (prod a, final state from zero) -- a loop over L steps,
       vectorised over chunks.
    3. The carries entering each chunk are the states at chunk ends, i.e. the same recurrence on the summaries; it
       is solved by calling this function recursively (nc elements instead of T).
    4. Re-run the L steps of every chunk from its carry, collecting all states.

    Step 4 recomputes the local scan instead of fixing up a stored local scan with ``cumprod(a) * carry``: it needs
    neither the cumulative-product tensor nor an extra pass over [B, T, *S], which measured faster on CPU.
    """
    B, T = b.shape[0], b.shape[1]
    L = max(chunk, 2)  # chunks of 1 would recurse T levels deep
    if T <= L:
        return _time_loop(a, b, h0)
    nc = -(-T // L)
    pad = nc * L - T
    a = _pad_time(a, 1, pad, 1.0)
    b = _pad_time(b, 1, pad, 0.0)
    # [B, nc, L, *S] -> L slices [B, nc, *S], shared by both passes (one stack per input in the backward).
    a_steps = a.reshape(a.shape[0], nc, L, *a.shape[2:]).unbind(2)
    b_steps = b.reshape(B, nc, L, *b.shape[2:]).unbind(2)
    # Summaries of every chunk; the last one is not needed, but slicing the small results is cheaper (also for
    # the backward) than slicing the inputs.
    p, hl = _summary_steps(a_steps, b_steps)
    # States at the ends of chunks 0..nc-2 = carries into chunks 1..nc-1.
    ends = _scan(p[:, :-1], hl[:, :-1], h0, chunk)
    carry = torch.cat([h0.unsqueeze(1), ends], dim=1)
    h = _states_steps(a_steps, b_steps, carry, dim=2)  # [B, nc, L, *S]
    h = h.reshape(B, nc * L, *h.shape[3:])
    return h[:, :T] if pad else h


def _matvec(m, h):
    """``m @ h`` on blocks held entry by entry (m[i][j], h[j]: tensors [B, nc, G]): each op runs on one contiguous
    slab. Broadcast [.., P, P] products (or bmm over millions of 2 x 2 matrices) ran at 10-40 ns per element."""
    return [_dot([m_i[j] for j in range(len(h))], h) for m_i in m]


def _dot(xs, ys):
    out = xs[0] * ys[0]
    for x, y in zip(xs[1:], ys[1:]):
        out = torch.addcmul(out, x, y)
    return out


def _matmul_small(a, b):
    """``a @ b`` on blocks held entry by entry (see _matvec)."""
    P = len(b)
    return [[_dot([a_i[j] for j in range(P)], [b[j][k] for j in range(P)]) for k in range(P)] for a_i in a]


def _broadcast_dims_narrowed(x: Tensor) -> Tensor:
    """``x`` with each dim of stride 0 (an expanded dim) narrowed to size 1: the same values, broadcastable back."""
    for dim in range(x.dim()):
        if x.stride(dim) == 0 and x.shape[dim] > 1:
            x = x.narrow(dim, 0, 1)
    return x


def rotation_scan(x: Tensor, y: Tensor, b: Tensor, h0: Tensor, axis: int) -> Tensor:
    """All states of ``h_t = M_t h_{t-1} + b_t`` where M_t acts on a pair axis of the state as the rotation-scaling
    ``[[x, -y], [y, x]]`` (S4D's and LRU's complex modes written as real 2 x 2 blocks): b [B, T, *S] with
    ``S[axis] == 2``, h0 [B, *S], x and y broadcastable to [B, T, *S without axis]; returns [B, T, *S].

    ``[[x, -y], [y, x]] (h0, h1) = (x h0 - y h1, y h0 + x h1)`` is the complex product ``(x + i y)(h0 + i h1)``, so
    the recurrence is diagonal_scan's over complex numbers: 4 real multiplies a step where block_scan's 2 x 2
    products need 8 and its reductions separate ops (~4x slower forward on CPU). fp32 / fp64 only (complex64 /
    complex128); the caller's compute dtype is one of those."""
    # x, y come expanded to [B, T, ...] (stride 0 where the modes do not vary: S4D's over batch and time); made
    # complex as they are, they were a [B, T, ...] complex buffer (S4D at B = 2, T = 1024: 134 MB, ~0.2 s a call)
    z = torch.complex(_broadcast_dims_narrowed(x), _broadcast_dims_narrowed(y))
    z = z.expand(b.shape[0], b.shape[1], *z.shape[2:])  # diagonal_scan: a carries b's batch and time dims
    bc = torch.complex(b.select(2 + axis, 0), b.select(2 + axis, 1))
    hc = torch.complex(h0.select(1 + axis, 0), h0.select(1 + axis, 1))
    states = diagonal_scan(z, bc, hc)
    # the pair axis outermost in memory (a [B, T, 2, ...] buffer seen as [B, T, ..., 2, ...]): the readout selects
    # one part of it (C's delta(s, 0) and delta(s, 1) terms), and a part of a pair-innermost buffer has stride 2, for
    # which torch.einsum's CPU bmm path makes a slow strided copy (S4D's readout at B = 2, T = 1024: 124 ms against
    # 13 ms a contraction at one thread; seconds with two threads on a loaded machine)
    return torch.stack([states.real, states.imag], 2).movedim(2, 2 + axis)


def rotation_phases(theta: Tensor, dtype: torch.dtype, readout: str = "post"
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """cos and sin of the cumulative angles of a rotating decay per key pair: theta [B, T, ...] (the angle of each
    step), Phi_t = theta_1 + ... + theta_t. Returns ``(cos_k, sin_k, cos_q, sin_q, cos_end, sin_end)`` in ``dtype``:
    the keys' phases Phi_t, the queries' (Phi_t, or Phi_(t-1) for the pre-update readout, which reads the state
    before step t's rotation) and the last step's Phi_T [B, ...] (the final state's rotation back).

    Phi grows with T: the cumsum runs in float64 and is reduced mod 2 pi before cos / sin, so fp32 phases keep their
    accuracy at T = 16384 (an fp32 cumsum of angles ~1 loses ~1e-3 rad there). Cheap: [B, T, groups, keys / 2]."""
    phi = torch.cumsum(theta.to(torch.float64), 1)
    two_pi = 2 * math.pi
    wrapped = torch.remainder(phi, two_pi)
    cos_k, sin_k = torch.cos(wrapped).to(dtype), torch.sin(wrapped).to(dtype)
    if readout == "pre":
        before = torch.remainder(phi - theta.to(torch.float64), two_pi)
        cos_q, sin_q = torch.cos(before).to(dtype), torch.sin(before).to(dtype)
    else:
        cos_q, sin_q = cos_k, sin_k
    return cos_k, sin_k, cos_q, sin_q, cos_k[:, -1], sin_k[:, -1]


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor, dim: int, back: bool = False) -> Tensor:
    """``x`` with its pair axis ``dim`` (extent 2, (re, im)) rotated by minus the angle, ``P^T x`` with
    ``P = [[cos, -sin], [sin, cos]]`` (``back``: by plus the angle, ``P x``). cos and sin broadcast against x
    without the pair axis. A rotation is orthogonal whatever the angle: nothing here can overflow."""
    x0, x1 = x.select(dim, 0), x.select(dim, 1)
    if back:
        return torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), dim)
    return torch.stack((cos * x0 + sin * x1, cos * x1 - sin * x0), dim)


def pair_angle(y: Tensor, x: Tensor) -> Tensor:
    """``atan2(y, x)``, the angle of a rotating decay written as x = rho cos theta, y = rho sin theta, with a zero
    derivative where ``x^2 + y^2`` is 0 (there 0, as atan2(0, 0)). torch's atan2 backward divides by x^2 + y^2:
    0 / 0 = NaN at x = y = 0, and a relu-gated block (x = g c, y = g s, g = relu(.)) is exactly 0 at half its
    steps, which made every gradient NaN although the recurrence h = (x + i y) h + ... is a polynomial in x, y.
    Where rho = 0 the angle changes nothing downstream (the state is cut, and later steps only see differences
    of cumulative angles from that step on), so the value chosen there is free."""
    zero = (x * x + y * y) == 0
    return torch.atan2(torch.where(zero, torch.zeros_like(y), y), torch.where(zero, torch.ones_like(x), x))


def pair_modulus(x: Tensor, y: Tensor) -> Tensor:
    """``rho = sqrt(x^2 + y^2)`` of a rotating decay as ``hypot(x, y)`` (no overflow of x^2 in fp32 above 1.8e19)
    with a zero derivative at x = y = 0, where sqrt's backward was inf * 0 = NaN (see :func:`pair_angle`)."""
    zero = (x == 0) & (y == 0)
    r = torch.hypot(torch.where(zero, torch.ones_like(x), x), y)
    return torch.where(zero, torch.zeros_like(r), r)


def block_scan(m: Tensor, b: Tensor, h0: Tensor, *, chunk: Optional[int] = None) -> Tensor:
    """All states of ``h_t = M_t h_{t-1} + b_t`` with small per-group blocks: m [B, T, G, P, P], b [B, T, G, P],
    h0 [B, G, P]; returns [B, T, G, P].

    The dense family's per-step Python loop (LRU's and S4D's 2 x 2 rotation-scaling blocks) cost ~2 ops per time
    step, forward and backward. This is diagonal_scan's two-level chunked scan with matrices: per chunk of L steps
    the product M_L ... M_1 and the state from zero (one loop over L steps for all chunks at once), the carries into
    the chunks by the same scan one level up, and the chunk's states again from its carry. Only products of the
    M's are formed (no inverses), so the scheme is as stable as the loop. Cost: the chunk products are P times the
    work of a matrix-vector step, so the caller keeps it for small P (P <= 4). ``chunk`` None: about sqrt(T), which
    balances the ~L ops of a chunk's loops against the T / L chunks they run over."""
    B, T, P = b.shape[0], b.shape[1], b.shape[-1]
    L = max(chunk if chunk is not None else round(T**0.5), 2)
    nc = -(-T // L) if T > L else 1
    L = L if T > L else T
    pad = nc * L - T
    if pad:  # identity steps: M = I, b = 0 leave the state unchanged; their states are sliced off
        eye = torch.eye(P, dtype=m.dtype, device=m.device).expand(B, pad, *m.shape[2:])
        m = torch.cat([m, eye], 1)
        b = _pad_time(b, 1, pad, 0.0)
    # entry by entry, time-major: [B, nc, L, G] slabs, the L steps of every chunk unbound once
    m = m.reshape(B, nc, L, *m.shape[2:])
    b = b.reshape(B, nc, L, *b.shape[2:])
    m_steps = [[m[..., i, j].unbind(2) for j in range(P)] for i in range(P)]
    b_steps = [b[..., i].unbind(2) for i in range(P)]

    def mat(t):
        return [[m_steps[i][j][t] for j in range(P)] for i in range(P)]

    def vec(t):
        return [b_steps[i][t] for i in range(P)]

    h0s = [h0[..., i] for i in range(P)]
    if nc == 1:
        h, out = [x.unsqueeze(1) for x in h0s], []
        for t in range(L):
            h = [hi + bi for hi, bi in zip(_matvec(mat(t), h), vec(t))]
            out.append(torch.stack(h, -1))
        return torch.stack(out, 2).reshape(B, L, *b.shape[3:])
    prod, hl = mat(0), vec(0)
    for t in range(1, L):
        hl = [hi + bi for hi, bi in zip(_matvec(mat(t), hl), vec(t))]
        prod = _matmul_small(mat(t), prod)
    ends = block_scan(torch.stack([torch.stack(r, -1) for r in prod], -2)[:, :-1], torch.stack(hl, -1)[:, :-1], h0,
                      chunk=chunk)
    h = [torch.cat([h0s[i].unsqueeze(1), ends[..., i]], dim=1) for i in range(P)]  # the carry into every chunk
    out = []
    for t in range(L):
        h = [hi + bi for hi, bi in zip(_matvec(mat(t), h), vec(t))]
        out.append(torch.stack(h, -1))
    h = torch.stack(out, 2).reshape(B, nc * L, *b.shape[3:])
    return h[:, :T] if pad else h


# -- compiled path (inference only) -------------------------------------------------------------------------------
#
# torch.compile of the two chunk loops with a fixed loop length fuses the L unrolled steps into one C++
# loop nest (no per-step tensors).  Only used when autograd is not recording: compiling the joint forward/backward
# graph of the unrolled steps took over a minute on the 2-core CPU, which no training run amortises predictably.
# Inputs are flattened to contiguous [M, L, D] so that a single pair of graphs (per dtype/device) serves every
# batch size, state shape and T.

_compiled: dict = {}
_compile_broken = False


def _get_compiled() -> Optional[Tuple[Callable, Callable]]:
    """Compiled (_flat_summary, _flat_states) on [M, L, D] tensors, created once per process (None if broken)."""
    if _compile_broken:
        return None
    if not _compiled:
        warnings.warn("dsfc.runtime.scans: compiling the diagonal scan's chunk loops with torch.compile on this first "
                      "large call (seconds; cached afterwards; DSFC_SCAN_COMPILE=never skips it)", CompileNotice,
                      stacklevel=4)
        try:
            _compiled["summary"] = torch.compile(_flat_summary, dynamic=True)
            _compiled["states"] = torch.compile(_flat_states, dynamic=True)
        except Exception as exc:  # torch.compile unavailable (e.g. unsupported Python version)
            _disable_compile(exc)
            return None
    return _compiled["summary"], _compiled["states"]


def _flat_summary(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Chunk summaries on [M, L, D] (chunks flattened into M): returns ([M, D], [M, D])."""
    return _summary_steps(a.unbind(1), b.unbind(1))


def _flat_states(a: Tensor, b: Tensor, h: Tensor) -> Tensor:
    """Chunk states on [M, L, D] with carries [M, D]: returns [M, L, D]."""
    return _states_steps(a.unbind(1), b.unbind(1), h, dim=1)


def _disable_compile(exc: BaseException) -> None:
    global _compile_broken
    _compile_broken = True
    warnings.warn(
        f"dsfc.runtime.scans: torch.compile path failed ({type(exc).__name__}: {exc}); "
        "using the eager scan from now on",
        RuntimeWarning,
        stacklevel=3,
    )


def _is_broadcast(x: Tensor) -> bool:
    """True for expanded views (a stride-0 dim of size > 1), e.g. a per-head decay ``.expand``-ed over states."""
    return any(st == 0 and n > 1 for st, n in zip(x.stride(), x.shape))


def _want_compiled(a: Tensor, b: Tensor, h0: Tensor) -> bool:
    """Whether diagonal_scan should take the compiled path for these (compute-dtype) inputs."""
    mode = COMPILE
    if mode in ("0", "never", "false", "off", "no") or _compile_broken:
        return False
    if torch.compiler.is_compiling():
        return False  # already inside someone's torch.compile: let Dynamo trace the eager code instead
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or h0.requires_grad):
        return False  # training: eager autograd (see the note above)
    if a.is_complex() or b.is_complex():
        return False  # rotation_scan's complex modes: Inductor's complex support is partial (eager is 4 ops a step)
    if a.shape != b.shape or b.shape[1] < 2 or _is_broadcast(a) or _is_broadcast(b):
        return False  # broadcast inputs would need a materialised copy; T = 1 has nothing to fuse
    if mode in ("1", "always", "true", "on", "yes"):
        return True
    return b.numel() >= COMPILE_MIN_NUMEL


def _scan_compiled(a: Tensor, b: Tensor, h0: Tensor, chunk: int) -> Tensor:
    """Same algorithm as _scan with the chunk loops compiled; a, b [B, T, *S] (same shape), no autograd."""
    summary_fn, states_fn = _get_compiled()
    shape = b.shape
    B, T = shape[0], shape[1]
    a = a.reshape(B, T, -1)
    b = b.reshape(B, T, -1)
    D = b.shape[2]
    L = _COMPILED_CHUNK
    nc = -(-T // L)
    pad = nc * L - T
    # Always pad to whole chunks (also for T < L), so the compiled loop length never changes.
    ac = _pad_time(a, 1, pad, 1.0).contiguous().view(B * nc, L, D)
    bc = _pad_time(b, 1, pad, 0.0).contiguous().view(B * nc, L, D)
    h0 = h0.reshape(B, D)
    if nc == 1:
        carry = h0
    else:
        # Summaries of all chunks (the last one is unused; computing it keeps the input a contiguous view).
        p, hl = summary_fn(ac, bc)
        p, hl = p.view(B, nc, D)[:, :-1], hl.view(B, nc, D)[:, :-1]
        ends = _dispatch(p, hl, h0, chunk)  # nc - 1 steps: eager, or compiled if still large
        carry = torch.cat([h0.unsqueeze(1), ends], dim=1).view(B * nc, D)
    h = states_fn(ac, bc, carry).view(B, nc * L, D)
    if pad:
        h = h[:, :T]
    return h.reshape(shape)


def _dispatch(a: Tensor, b: Tensor, h0: Tensor, chunk: int) -> Tensor:
    """Compiled scan when allowed and working, else the eager one (inputs already in the compute dtype)."""
    if _want_compiled(a, b, h0) and _get_compiled() is not None:
        try:
            return _scan_compiled(a, b, h0, chunk)
        except Exception as exc:  # compile or codegen failure: fall back for the rest of the process
            _disable_compile(exc)
    return _scan(a, b, h0, chunk)


def diagonal_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None, *, chunk: int = 64) -> Tensor:
    """All states of the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``, ``t = 0..T-1``.

    Args:
        a: transitions, [B, T, *S] (any number of state dims S; elementwise, "diagonal" transition).  ``a`` may
            also broadcast against ``b`` over the state dims (size-1 dims), e.g. one decay per head.
        b: inputs, [B, T, *S].
        h0: initial state h_{-1}, [B, *S] (broadcastable); zeros if None.
        chunk: chunk length of the two-level scan (performance knob only; results do not depend on it beyond
            rounding).

    Returns:
        [B, T, *S]: h_0 .. h_{T-1}, in the promoted input dtype.  fp16/bf16 inputs are accumulated in fp32.

    Differentiable with ordinary autograd (no in-place ops).  Cost: about ``3 * chunk + 3 * T / chunk`` vectorised
    elementwise ops; no Python loop over individual time steps for ``T > chunk``.  Large problems outside autograd
    may use a ``torch.compile``'d loop, see :data:`COMPILE`.

    Precondition, not checked: ``a``, ``b`` and ``h0`` are finite.  A NaN / inf makes the states NaN from its step
    on (earlier steps are unaffected).  The check would read a reduction back to the host, a device sync on every
    call of the generated modules, which already check their input ``u`` (``model.check_finite``).
    """
    check_tensors("diagonal_scan", a=a, b=b, h0=h0)
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError("diagonal_scan expects a, b of shape [B, T, *S]")
    chunk = check_int_option("chunk", chunk)
    try:
        # equal shapes (the generated modules expand both): torch.broadcast_shapes is Python (tens of us per call,
        # a tenth of a small decoding step)
        shape = b.shape if a.shape == b.shape else torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError as exc:
        raise ValueError(f"diagonal_scan: a {tuple(a.shape)} and b {tuple(b.shape)} do not broadcast") from exc
    if a.dim() != len(shape) or a.shape[:2] != shape[:2]:
        raise ValueError(f"diagonal_scan: a {tuple(a.shape)} must have b's batch and time dims and rank")
    out_dtype = _result_dtype(a, b, h0)
    cdt = _compute_dtype(out_dtype)
    B, T, S = shape[0], shape[1], shape[2:]

    if h0 is None:
        h0 = torch.zeros((B, *S), dtype=cdt, device=b.device)
    else:
        try:
            h0 = h0.to(cdt).expand(B, *S)
        except RuntimeError:  # torch's "expanded size ... must match" named neither h0 nor the shape it needs
            raise ValueError(f"diagonal_scan: h0 {tuple(h0.shape)} does not broadcast to the state shape [B, *S] = "
                             f"{(B, *S)}") from None
    if T == 0:
        return torch.empty(shape, dtype=out_dtype, device=b.device)
    a = a.to(cdt)
    b = b.to(cdt).expand(shape)
    if T == 1:  # a decoding step: the one op the time loop would run, without its unbind / stack (same rounding)
        return _fma(b, a, h0[:, None]).to(out_dtype)
    h = _dispatch(a, b, h0, max(1, int(chunk)))
    return h.to(out_dtype)


# =====================================================================================================================
# chunked_outer_scan
# =====================================================================================================================
#
# Notation inside (per batch and head): the chunk length is L, nc chunks, g_t = log_decay_t (shape [], or [K]).
#   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   y_t = S_t^T q_t.
# Unrolled over one chunk starting from the state S_prev left by the previous chunk (positions i, j in the chunk):
#   y_i = sum_{j<=i} (q_i ⊙ exp(seg(j+1..i)))^T k_j v_j  +  (q_i ⊙ exp(seg(0..i)))^T S_prev
#   S_end = diag(exp(seg(0..L-1))) S_prev + sum_j (k_j ⊙ exp(seg(j+1..L-1))) v_j^T
# where seg(m..n) = sum_{l=m}^{n} g_l.  Each seg(...) is computed as a sum over exactly that segment (masked cumsum,
# or a cumsum that starts at the segment's first element), never as the difference of two prefix sums.  With
# g <= 0 every exponent is therefore <= 0 and every factor lies in [0, 1].


def _segsum(x: Tensor, dim: int = -1) -> Tensor:
    """Segment sums ``out[..., i, j, ...] = sum_{l=j+1}^{i} x[..., l, ...]`` for i >= j, ``-inf`` for j > i.

    mamba2 ssd_minimal's ``segsum``: the entries x_l with j < l are masked to 0 and then summed with one cumsum over
    l, so each segment sum is accumulated from its own terms only (a difference of two prefix sums would lose the
    small segment to the rounding of the large prefixes).  ``x``'s dim ``dim`` (length n) becomes two dims (i, j)
    of length n at positions dim, dim+1; exp of the result is the decay mask with exact zeros above the diagonal.
    """
    dim = dim % x.dim()
    n = x.shape[dim]
    xe = x.unsqueeze(dim + 1).expand(*x.shape[: dim + 1], n, *x.shape[dim + 1 :])  # xe[.., l, j, ..] = x_l
    idx = torch.arange(n, device=x.device)
    shape = [1] * xe.dim()
    shape[dim], shape[dim + 1] = n, n
    strict_lower = (idx[:, None] > idx[None, :]).view(shape)  # l > j
    seg = torch.cumsum(xe.masked_fill(~strict_lower, 0), dim=dim)  # sum over j < l <= i
    lower = (idx[:, None] >= idx[None, :]).view(shape)
    return seg.masked_fill(~lower, float("-inf"))


def _rev_cumsum_exclusive(x: Tensor, dim: int) -> Tensor:
    """``out_j = sum_{l > j} x_l`` along ``dim``, summed directly over the suffix (not total - prefix)."""
    n = x.shape[dim]
    shifted = torch.cat([x.narrow(dim, 1, n - 1), torch.zeros_like(x.narrow(dim, 0, 1))], dim=dim)
    return torch.flip(torch.cumsum(torch.flip(shifted, [dim]), dim=dim), [dim])


def _intra_diag_decay(qc: Tensor, kc: Tensor, g: Tensor) -> Tensor:
    """Intra-chunk scores ``A[i, j] = sum_a q[i,a] k[j,a] exp(seg_a(j+1..i))`` (j <= i, else 0), per-key decay.

    qc, kc, g: [..., L, K]; returns [..., L, L].

    The textbook factorisation ``(q ⊙ exp(b)) (k ⊙ exp(-b))^T`` with prefix sums b overflows (exp(-b) grows without
    bound under decay), and an explicit [L, L, K] tensor of segment sums costs L*K elementwise work per token.
    Instead the chunk is split recursively in halves (divide and conquer, log2(L) levels).  For a query i in the
    second half B and a key j in the first half A of a block, the decay splits exactly at the boundary between them:

        seg(j+1..i) = seg(j+1..end_A) + seg(start_B..i)

    so that block of scores is one matmul ``(q_B ⊙ exp(seg(start_B..i))) (k_A ⊙ exp(seg(j+1..end_A)))^T``.  Both
    exponents are sums over their own segment (a cumsum starting at the boundary), hence <= 0 for g <= 0: every factor
    is in [0, 1] and nothing overflows or cancels.  Pairs inside A or inside B are handled at the next level down;
    at the bottom (single positions) the decay is exp(0) = 1.  Work: O(K log L) elementwise per token plus matmuls.
    """
    *batch, L, K = qc.shape
    Lp = 1 << (L - 1).bit_length()  # next power of two; padded positions are identities with q = k = 0
    if Lp != L:
        qc, kc, g = (_pad_time(x, -2, Lp - L, 0.0) for x in (qc, kc, g))
    scores = (qc * kc).sum(-1)[..., None, None]  # blocks of size 1: [..., Lp, 1, 1]
    h = 1
    while h < Lp:
        # Pair up blocks of size h into blocks of size 2h = [A, B]; [..., n, 2, h, K] views.
        n = Lp // (2 * h)
        gb = g.reshape(*batch, n, 2, h, K)
        q_b = qc.reshape(*batch, n, 2, h, K)[..., 1, :, :]
        k_a = kc.reshape(*batch, n, 2, h, K)[..., 0, :, :]
        q_in = torch.cumsum(gb[..., 1, :, :], dim=-2)  # seg(start_B .. i), i in B
        k_out = _rev_cumsum_exclusive(gb[..., 0, :, :], dim=-2)  # seg(j+1 .. end_A), j in A
        off = torch.matmul(q_b * torch.exp(q_in), (k_a * torch.exp(k_out)).transpose(-1, -2))  # [..., n, h, h]
        blocks = scores.reshape(*batch, n, 2, h, h)
        top = torch.cat([blocks[..., 0, :, :], torch.zeros_like(off)], dim=-1)  # [A-A, 0]
        bottom = torch.cat([off, blocks[..., 1, :, :]], dim=-1)  # [B-A, B-B]
        scores = torch.cat([top, bottom], dim=-2)  # [..., n, 2h, 2h]
        h *= 2
    scores = scores.reshape(*batch, Lp, Lp)
    return scores[..., :L, :L] if Lp != L else scores


def _outer_scan_impl(
    q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], h0: Tensor, chunk: int
) -> Tuple[Tensor, Tensor]:
    """Chunkwise-parallel outer scan; inputs in compute dtype, T >= 1.  Returns (y [B,T,H,V], S_T [B,H,K,V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = min(T, chunk)
    nc = -(-T // L)
    pad = nc * L - T
    # Padded steps are identities: k = v = 0 adds nothing, g = 0 decays nothing; their y are dropped.
    q, k, v = (_pad_time(x, 1, pad, 0.0) for x in (q, k, v))

    def chunked(x: Tensor) -> Tensor:  # [B, T', H, X] -> [B, H, nc, L, X]
        return x.reshape(B, nc, L, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc = chunked(q), chunked(k), chunked(v)

    if g is None:
        # No decay: causal (Q K^T) V inside the chunk, running sum of K^T V across chunks.
        idx = torch.arange(L, device=q.device)
        causal = idx[:, None] >= idx[None, :]  # not .tril(): that took ~15 ms even for 2 x 2 on this CPU build
        scores = torch.matmul(qc, kc.transpose(-1, -2)).masked_fill(~causal, 0)
        y = torch.matmul(scores, vc)
        delta = torch.matmul(kc.transpose(-1, -2), vc)  # [B, H, nc, K, V]
        ends = h0.unsqueeze(2) + torch.cumsum(delta, dim=2)  # state at the end of each chunk
        prev = torch.cat([h0.unsqueeze(2), ends[:, :, :-1]], dim=2)
        y = y + torch.matmul(qc, prev)
    else:
        scalar = g.dim() == 3
        g = _pad_time(g, 1, pad, 0.0)
        gc = chunked(g.unsqueeze(-1) if scalar else g)  # [B, H, nc, L, 1 or K]
        q_in = torch.cumsum(gc, dim=3)  # seg(0..i): decay of S_prev up to and including step i
        k_out = _rev_cumsum_exclusive(gc, dim=3)  # seg(j+1..L-1): decay of k_j v_j^T to the chunk end
        tot = q_in[..., -1, :]  # [B, H, nc, 1 or K] decay over the whole chunk
        if scalar:
            seg = _segsum(gc.squeeze(-1), dim=-1)  # [B, H, nc, L, L], -inf above the diagonal
            scores = torch.matmul(qc, kc.transpose(-1, -2)) * torch.exp(seg)
        else:
            scores = _intra_diag_decay(qc, kc, gc)
        y = torch.matmul(scores, vc)
        delta = torch.matmul((kc * torch.exp(k_out)).transpose(-1, -2), vc)  # [B, H, nc, K, V]
        # Chunk-to-chunk recurrence S_c = exp(tot_c) ⊙ S_{c-1} + delta_c: a diagonal scan over nc steps
        # (products of per-chunk decays, never ratios).
        decay = torch.exp(tot).unsqueeze(-1)  # [B, H, nc, 1 or K, 1], broadcasts over K and V
        # Only nc steps: always eager (a compiled graph per broadcast pattern would not pay off).
        ends = _scan(decay.transpose(1, 2), delta.transpose(1, 2), h0, chunk).transpose(1, 2)
        prev = torch.cat([h0.unsqueeze(2), ends[:, :, :-1]], dim=2)
        y = y + torch.matmul(qc * torch.exp(q_in), prev)

    y = y.permute(0, 2, 3, 1, 4).reshape(B, nc * L, H, V)
    if pad:
        y = y[:, :T]
    return y, ends[:, :, -1]


def check_outer_inputs(name: str, q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor],
                       h0: Optional[Tensor], readout: str = "post") -> None:
    """The argument checks every chunked outer-product scan shares (the torch one and the Triton one)."""
    check_tensors(name, q=q, k=k, v=v, log_decay=log_decay, h0=h0)
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{name} expects q, k [B,T,H,K] and v [B,T,H,V]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if readout not in ("post", "pre"):
        raise ValueError(f"readout must be 'post' or 'pre', got {readout!r}")
    B, T, H, K = q.shape
    if log_decay is not None and log_decay.shape not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"log_decay must be [B,T,H] or [B,T,H,K], got {tuple(log_decay.shape)}")
    if h0 is not None and h0.shape != (B, H, K, v.shape[-1]):
        raise ValueError(f"h0 must be [B,H,K,V] = {(B, H, K, v.shape[-1])}, got {tuple(h0.shape)}")


def read_before_update(run_post, q: Tensor, h0: Tensor) -> Tuple[Tensor, Tensor]:
    """A pre-update readout y_t = S_(t-1)^T q_t from a post-update scan ``run_post(q) -> (y, S_T)``: it is the post
    readout of step t-1 with the query q_t, so the queries move one step earlier (the last reads nothing) and
    y_0 = h0^T q_0. q: [B, T, H, K] with T >= 1; h0: [B, H, K, V]."""
    y_next, state = run_post(torch.cat([q[:, 1:], torch.zeros_like(q[:, :1])], 1))
    y0 = torch.einsum("bhk,bhkv->bhv", q[:, 0].to(y_next.dtype), h0.to(y_next.dtype))[:, None]
    return torch.cat([y0, y_next[:, :-1]], 1), state


def log_abs_decay(decay: Tensor, zero_grad: bool = True) -> Tuple[Tensor, Tensor]:
    """``(log|decay|, sign)`` of a decay that may be negative, for the log-space chunked scans.

    The chunked outer-product and delta-rule scans take the decay as a logarithm (segment sums of log-decays), which
    is only defined for a decay >= 0. A spec whose decay the compiler cannot prove nonnegative (``tanh(...)``, a
    learned factor) is scanned on ``|decay|`` with the signs folded into the streams (:func:`fold_decay_sign`).
    The sign is +1 or -1 exactly (+1 at a zero decay).

    A decay of exactly 0 (``tanh(x)`` or ``x ^ 2`` at x = 0, a zero-padded token) is lifted to sqrt(tiny) of its
    dtype (1e-154 in float64, 1e-19 in float32: it still cuts the state to far below rounding), not log 0 = -inf,
    whose backward was inf * 0 = NaN in every gradient. The lift is a constant added to the decay, so d log|decay|
    / d decay = 1 / sqrt(tiny) there and the scan's gradient, decay * d/d decay, comes back as d/d decay.

    ``zero_grad=False`` (the Triton scan): no gradient flows through an exact-zero decay. The kernels' log-decay
    gradient is a difference (q dq - k dk), accurate to the rounding of the streams, not relative to the decay:
    divided by sqrt(tiny) that rounding came back as 1e138. 0 is exact where the decay's own derivative vanishes
    at 0 (x ^ 2, relu(x), tanh(x) ^ 2); for tanh(x) at x = 0 only the gradient through that one step is lost."""
    if not zero_grad:
        decay = torch.where(decay == 0, decay.detach(), decay)
    sign = torch.where(decay < 0, -torch.ones_like(decay), torch.ones_like(decay))
    lift = (decay == 0).to(decay.dtype) * torch.finfo(decay.dtype).tiny ** 0.5  # in decay's dtype: 1e-154 is 0 in fp32
    return torch.log(torch.abs(decay + lift)), sign


def fold_decay_sign(sign: Tensor, q: Tensor, k: Tensor, v: Tensor, *, readout: str = "post", delta: bool = False
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fold the signs of a decay into the streams of a scan that runs on ``|decay|``: returns ``(q, k, v, end)``,
    with the true final state ``end * S_T`` of the scan's final state ``S_T``.

    With ``c_t = prod_(l<=t) sign_l`` (+-1, per group, or per group and key for a per-key decay), the true state is
    ``S_t = c_t S'_t`` where ``S'`` is the state of the same recurrence on ``|decay|`` with the input term scaled by
    ``c_t`` (``c_t^2 = 1``): the key (outer product; a per-key sign stays on its key row) or, for the delta rule,
    whose key also sits in the rank-1 transition, the value. The readout is linear in the state, so the queries take
    ``c_t`` (post-update readout) or ``c_(t-1)`` (pre-update readout, ``c_(-1) = 1``).

    sign: [B, T, H] or [B, T, H, K]; q, k: [B, T, H, K]; v: [B, T, H, V]."""
    c = torch.cumprod(sign, dim=1)
    read = c if readout == "post" else torch.cat([torch.ones_like(c[:, :1]), c[:, :-1]], 1)

    def scaled(x, s):
        return x * (s if s.dim() == x.dim() else s.unsqueeze(-1)).to(x.dtype)

    q = scaled(q, read)
    if delta:
        v = scaled(v, c)
    else:
        k = scaled(k, c)
    end = c[:, -1]  # [B, H] or [B, H, K]
    end = end[..., None] if end.dim() == 3 else end[..., None, None]
    return q, k, v, end


def _substep_layout(rq: int, rk: int, readout: str) -> Tuple[int, int, int, int]:
    """``(L, query, key, decay)``: the sub-steps per step and the first sub-step of the queries, of the keys and the
    one that carries the decay (see :func:`rank_substeps`)."""
    L = rq + rk - 1
    if readout == "post":
        return L, rk - 1, 0, 0  # decay and keys first; the queries read from the last key on
    return L, 0, rq - 1, rq - 1  # "pre": the queries read before the step's decay and keys


def rank_substeps(q: Tensor, k: Tensor, v: Tensor, decay: Optional[Tensor], *, fill: float, readout: str = "post",
                  decay_at: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """A step with R_k outer products in its input, ``S_t = a_t S_(t-1) + sum_r k_(t,r) v_(t,r)^T``, and R_q
    queries, ``y_(t,r) = S_t^T q_(t,r)``, as ``L = R_q + R_k - 1`` sub-steps of a one-outer-product scan: the
    decay at one sub-step (``fill``: 0 for a log-decay, 1 for a decay, at the others), one key and value per
    sub-step, and the queries at the sub-steps that see the whole step (post readout: from the last key on; pre:
    before the decay and the first key). The chunked scans, torch and Triton, forward and backward, then run
    unchanged on T L steps; :func:`rank_readouts` gathers the queries' outputs.

    Why sub-steps rather than a rank axis inside the chunk products (scores [C R_q, C R_k]): the same algebra (a
    query sees every key of its step and the earlier ones, decays by step), with no new kernel, no new backward and
    no new autotuned signature; the cost is the zero rows, (R_q - 1) keys and (R_k - 1) queries per step, which is
    nothing at R_q = 1 (several tokens per step) or R_k = 1 (several queries) and < 2x at R_q = R_k.

    q: [B, T, H, R_q, K]; k: [B, T, H, R_k, K]; v: [B, T, H, R_k, V]; decay: None, [B, T, H] or [B, T, H, K].
    ``decay_at``: the sub-step of the decay when not the layout's (the gated delta product with its gate on the
    last factor: the last key's sub-step). Returns q, k [B, T L, H, K], v [B, T L, H, V] and the decay [B, T L, ...]."""
    B, T, H, rq, K = q.shape
    rk = k.shape[3]
    L, q0, k0, d0 = _substep_layout(rq, rk, readout)
    if decay_at is not None:
        if not 0 <= decay_at < L:
            raise ValueError(f"rank_substeps: decay_at={decay_at} is not one of the {L} sub-steps of a step")
        d0 = decay_at

    def place(x: Tensor, first: int, value: float = 0.0) -> Tensor:  # [B, T, n, ...] -> [B, T L, ...]
        def pad(n: int) -> Tensor:
            return torch.full((B, T, n, *x.shape[3:]), value, dtype=x.dtype, device=x.device)

        return torch.cat([pad(first), x, pad(L - first - x.shape[2])], 2).reshape(B, T * L, *x.shape[3:])

    qs = place(q.transpose(2, 3), q0)
    ks = place(k.transpose(2, 3), k0)
    vs = place(v.transpose(2, 3), k0)
    ds = None if decay is None else place(decay.unsqueeze(2), d0, fill)
    return qs, ks, vs, ds


def rank_substep_keys(x: Tensor, rq: int, readout: str = "post") -> Tensor:
    """A second key-shaped stream placed as :func:`rank_substeps` places the keys: x [B, T, H, R_k, K] ->
    [B, T L, H, K], zero at the query-only sub-steps. The gated delta product's reads f_j (its sub-steps are the
    delta rule's, which reads the state along f as well as writing along k)."""
    B, T, H, rk = x.shape[:4]
    L, _, k0, _ = _substep_layout(rq, rk, readout)
    zeros = x.new_zeros(B, T, L - rk, H, *x.shape[4:])
    x = torch.cat([zeros[:, :, :k0], x.transpose(2, 3), zeros[:, :, k0:]], 2)
    return x.reshape(B, T * L, H, *x.shape[4:])


def rank_readouts(y: Tensor, rq: int, rk: int, readout: str = "post") -> Tensor:
    """The queries' outputs of a scan over :func:`rank_substeps`' streams: y [B, T L, H, V] -> [B, T, R_q, H, V]."""
    L, q0, _, _ = _substep_layout(rq, rk, readout)
    B, TL = y.shape[:2]
    return y.reshape(B, TL // L, L, *y.shape[2:])[:, :, q0: q0 + rq]


def _outer_one_step(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], h0: Tensor,
                    readout: str) -> Tuple[Tensor, Tensor]:
    """chunked_outer_scan at T = 1 (compute dtype): ``S = diag(exp(g)) h0 + k v^T``, ``y = S^T q`` (``h0^T q``
    before the update for readout "pre"). Returns ``(y [B, 1, H, V], S [B, H, K, V])``."""
    state = h0
    if g is not None:  # [B, 1, H] (per head) or [B, 1, H, K] (per key): exp(g) <= 1 scales the rows of S
        state = state * torch.exp(g[:, 0] if g.dim() == 4 else g[:, 0, :, None])[..., None]
    state = state + k[:, 0, :, :, None] * v[:, 0, :, None, :]
    read = h0 if readout == "pre" else state
    y = (q[:, 0, :, None, :] @ read)[:, :, 0]  # [B, H, 1, K] @ [B, H, K, V]
    return y[:, None], state


def chunked_outer_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Optional[Tensor] = None,
    h0: Optional[Tensor] = None,
    *,
    chunk: int = 64,
    output_final_state: bool = False,
    readout: str = "post",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Multi-head linear-attention recurrence with optional log-space decay, in fla's batch-first layout.

    Per batch and head::

        S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_t^T      (S in R^{K x V}, S_{-1} = h0)
        y_t = S_t^T q_t            (readout="post")     or     y_t = S_{t-1}^T q_t      (readout="pre", RWKV)

    Args:
        q, k: [B, T, H, K].
        v: [B, T, H, V].
        log_decay: None (identity transition), [B, T, H] (one scalar per head), or [B, T, H, K] (diagonal on the
            key index, shared over V).  Usually <= 0; positive values (eigenvalues > 1) are handled exactly, without
            clamping (they can overflow only if the decay itself does).  ``-inf`` means a zero transition.
        h0: [B, H, K, V] initial state, zeros if None.
        chunk: chunk length of the chunkwise-parallel algorithm.
        output_final_state: also return S_{T-1} (the state after the last step).
        readout: "post" (after the update) or "pre" (before it). The pre-update readout is the post-update one
            shifted by a step: y_t = S_{t-1}^T q_t is what the post form computes at step t-1 for the query q_t,
            so the same chunked algorithm runs on the queries moved one step earlier, and y_0 = h0^T q_0.

    Returns:
        y [B, T, H, V] (promoted input dtype), or ``(y, S_T)`` with S_T [B, H, K, V] if ``output_final_state``.

    Chunkwise algorithm: within a chunk, ``(Q K^T ⊙ decay mask) V``; across chunks, the state is passed on and read
    with ``Q S_prev``.  Decay masks are exp of segment sums (``_segsum``), so every factor is <= 1 for
    ``log_decay <= 0``.  A per-key decay is kept inside the score contraction by splitting the chunk recursively at
    block boundaries (:func:`_intra_diag_decay`), again with every factor in [0, 1].  Accumulates in fp32 at least;
    differentiable with ordinary autograd.

    Precondition, not checked: ``log_decay`` has no NaN or ``+inf`` (``-inf`` is fine, see above).  A NaN makes
    ``y`` NaN from its step on.  The check would read a reduction back to the host, a device sync on every call of
    the generated modules, which compute ``log_decay`` from their parameters and already check their input ``u``
    (``model.check_finite``).
    """
    check_outer_inputs("chunked_outer_scan", q, k, v, log_decay, h0, readout)
    chunk = check_int_option("chunk", chunk)
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = _result_dtype(q, k, v, log_decay, h0)
    cdt = _compute_dtype(out_dtype)
    if h0 is None:
        h0 = torch.zeros(B, H, K, V, dtype=cdt, device=q.device)
    h0 = h0.to(cdt)

    if T == 0:
        y = torch.empty(B, 0, H, V, dtype=out_dtype, device=q.device)
        state = h0
    elif T == 1:  # a decoding step: the recurrence itself, not the chunked form padded to a chunk (~5x the Python)
        y, state = _outer_one_step(q.to(cdt), k.to(cdt), v.to(cdt), None if log_decay is None else log_decay.to(cdt),
                                   h0, readout)
        y = y.to(out_dtype)
    else:
        g = None if log_decay is None else log_decay.to(cdt)
        q = q.to(cdt)
        def run(qq):
            return _outer_scan_impl(qq, k.to(cdt), v.to(cdt), g, h0, int(chunk))

        y, state = read_before_update(run, q, h0) if readout == "pre" else run(q)
        y = y.to(out_dtype)
    if output_final_state:
        return y, state.to(out_dtype)
    return y


# =====================================================================================================================
# chunked_delta_scan
# =====================================================================================================================


def chunked_delta_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    f: Tensor,
    log_decay: Optional[Tensor] = None,
    h0: Optional[Tensor] = None,
    *,
    chunk: int = 64,
    output_final_state: bool = False,
    readout: str = "post",
    state_passing: Optional[Callable] = None,
    step: Optional[Callable] = None,
    scaled_read: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Delta-rule recurrence (DeltaNet, Gated DeltaNet, Comba) with a scalar decay per head, chunkwise, batch-first.

    Per batch and head::

        S_t = s_t (I - k_t f_t^T) S_{t-1} + k_t v_t^T        (S in R^{K x V}, s_t = exp(log_decay_t))
        y_t = S_t^T q_t   (readout="post")   or   S_{t-1}^T q_t   (readout="pre")

    DeltaNet is k_t = beta_t key_t, f_t = key_t, s_t = 1; Gated DeltaNet adds s_t = alpha_t.

    ``scaled_read=True``: f already carries the decay, ``S_t = s_t S_{t-1} - k_t f_t^T S_{t-1} + k_t v_t^T``
    (Comba's ``A = al I - be k k^T`` with be independent of al: f = be k, where the unscaled read (be / al) k is
    inf once al underflows). Same algorithm with the WY build's decays one step shorter (fla's chunk_comba ``g0``):
    ``D'[t, j] = exp(segsum(j+1..t-1))`` in place of ``D``'s ``j+1..t`` and ``Gamma'_t = exp(sum_(l<t) g_l)`` in
    place of ``Gamma``, both segment sums, so no decay ever divides (s_t D'[t, j] = D[t, j], s_t Gamma'_t = Gamma_t).

    Args:
        q, k, f: [B, T, H, K];  v: [B, T, H, V];  log_decay: None (s = 1) or [B, T, H];  h0: [B, H, K, V] or None.

    Algorithm (the WY / UT-transform form of fla's chunk_delta_rule, derived for this parameterisation): write
    S_t = s_t S_{t-1} + k_t w_t^T with the pseudo-values w_t = v_t - s_t S_{t-1}^T f_t. Inside a chunk, with the
    decay mask D[t, j] = exp(segsum(j+1..t)) (every factor exp(<= 0) for log_decay <= 0) and the chunk-start state
    S_0, Gamma_t = exp(cumsum(log_decay)):

        (I + strict_tril(D * F K^T)) W = V - diag(Gamma) F S_0           (unit lower-triangular solve)
        Y   = diag(Gamma) Q S_0 + tril(D * Q K^T) W
        S_L = Gamma_L S_0 + (K * D[L, :])^T W

    The solve is split into chunk-local parts (T V and T diag(Gamma) F, all chunks at once) and a K x K state
    recurrence over chunks; only that recurrence is sequential (T / chunk steps).

    ``state_passing`` runs that recurrence instead of the torch loop: called as ``state_passing(w_v, w_f, k_end, tot,
    S_0)`` (``w_v = T V``, ``w_f = T diag(Gamma) F`` ``[B, H, nc, L, V|K]``, the keys decayed to their chunk's end
    ``k_end`` ``[B, H, nc, L, K]``, each chunk's total decay ``tot`` ``[B, H, nc]``), it returns the chunk-start
    states ``[B, H, nc, K, V]``, the pseudo-values ``W = w_v - w_f S_c`` ``[B, H, nc, L, V]`` and the final state
    (``dsfc.runtime.triton_delta.delta_state_passing``: one Triton kernel). ``step`` runs a sequence of one step
    instead (decoding): ``step(q, k, v, f, log_decay, S_0, readout, scaled_read) -> (y, S_1)``, every argument
    already in the compute dtype (``log_decay`` None for s = 1).

    Precondition, not checked: ``log_decay`` has no NaN or ``+inf``.  A NaN makes ``y`` NaN from the start of its
    chunk on (the chunk's solve mixes its steps).  The check would be a device sync on every call of the generated
    modules, which already check their input ``u`` (``model.check_finite``).
    """
    check_tensors("chunked_delta_scan", q=q, k=k, v=v, f=f, log_decay=log_decay, h0=h0)
    if q.dim() != 4 or k.shape != q.shape or f.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "chunked_delta_scan expects q, k, f [B,T,H,K] and v [B,T,H,V]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(f.shape)}, {tuple(v.shape)}"
        )
    chunk = check_int_option("chunk", chunk)
    if readout not in ("post", "pre"):
        raise ValueError(f"readout must be 'post' or 'pre', got {readout!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if log_decay is not None and log_decay.shape != (B, T, H):
        raise ValueError(f"log_decay must be [B,T,H] (one scalar per head), got {tuple(log_decay.shape)}")
    if h0 is not None and h0.shape != (B, H, K, V):
        raise ValueError(f"h0 must be [B,H,K,V] = {(B, H, K, V)}, got {tuple(h0.shape)}")
    out_dtype = _result_dtype(q, k, v, f, log_decay, h0)
    cdt = _compute_dtype(out_dtype)
    h0 = torch.zeros(B, H, K, V, dtype=cdt, device=q.device) if h0 is None else h0.to(cdt)
    if T == 0:
        y = torch.empty(B, 0, H, V, dtype=out_dtype, device=q.device)
        return (y, h0.to(out_dtype)) if output_final_state else y
    q, k, v, f = (x.to(cdt) for x in (q, k, v, f))
    g = None if log_decay is None else log_decay.to(cdt)
    def run(qq):
        return _delta_scan_impl(qq, k, v, f, g, h0, int(chunk), state_passing, scaled_read)

    if T == 1 and step is not None:
        y, state = step(q, k, v, f, g, h0, readout, scaled_read)
    else:
        y, state = read_before_update(run, q, h0) if readout == "pre" else run(q)
    y = y.to(out_dtype)
    return (y, state.to(out_dtype)) if output_final_state else y


def _delta_scan_impl(q, k, v, f, g, h0, chunk, state_passing=None, scaled_read=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = min(T, chunk)
    nc = -(-T // L)
    pad = nc * L - T
    # padded steps: k = v = f = 0 and log decay 0 leave the state unchanged; their outputs are dropped
    q, k, v, f = (_pad_time(x, 1, pad, 0.0) for x in (q, k, v, f))

    def chunked(x):  # [B, T', H, X] -> [B, H, nc, L, X]
        return x.reshape(B, nc, L, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc, fc = chunked(q), chunked(k), chunked(v), chunked(f)
    idx = torch.arange(L, device=q.device)
    if g is None:
        mask = (idx[:, None] >= idx[None, :]).to(q.dtype)  # D with s = 1: the causal mask
        gamma = torch.ones(B, H, nc, L, 1, dtype=q.dtype, device=q.device)
        k_end = kc  # decay of k_j to the chunk end: 1
        tot = torch.ones(B, H, nc, 1, 1, dtype=q.dtype, device=q.device)
    else:
        gc = chunked(_pad_time(g, 1, pad, 0.0).unsqueeze(-1)).squeeze(-1)  # [B, H, nc, L]
        mask = torch.exp(_segsum(gc, dim=-1))  # [B, H, nc, L, L]; exact zeros above the diagonal
        gamma = torch.exp(torch.cumsum(gc, dim=-1)).unsqueeze(-1)  # decay from the chunk start through step t
        k_end = kc * torch.exp(_rev_cumsum_exclusive(gc, dim=-1)).unsqueeze(-1)
        tot = gamma[..., -1:, :]  # [B, H, nc, 1, 1]
    if scaled_read and g is not None:
        # f carries s_t: the WY build takes the decays up to step t - 1, D'[t, j] = D[t - 1, j] (its rows moved
        # down a step: exp(segsum(j+1..t-1)), 0 for j >= t) and Gamma'_t = exp(sum_(l<t) g_l), a cumsum over
        # exactly those steps: every factor exp(<= 0), no decay in a denominator
        strict = torch.cat([torch.zeros_like(mask[..., :1, :]), mask[..., :-1, :]], dim=-2)
        g_before = torch.cat([torch.zeros_like(gc[..., :1]), gc[..., :-1]], dim=-1)
        gamma_read = torch.exp(torch.cumsum(g_before, dim=-1)).unsqueeze(-1)
    else:
        strict = mask * (idx[:, None] > idx[None, :]).to(q.dtype)
        gamma_read = gamma
    lower = torch.matmul(fc, kc.transpose(-1, -2)) * strict  # strict_tril(D * F K^T)
    eye = torch.eye(L, dtype=q.dtype, device=q.device)
    # T V and T diag(Gamma) F for every chunk at once (unit lower-triangular solves)
    rhs = torch.cat([vc, gamma_read * fc], dim=-1)
    sol = torch.linalg.solve_triangular(eye + lower, rhs, upper=False, unitriangular=True)
    w_v, w_f = sol[..., :V], sol[..., V:]  # W = w_v - w_f S_0
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * mask  # tril(D * Q K^T)
    if state_passing is not None:
        S0, W, S = state_passing(w_v, w_f, k_end, tot.reshape(B, H, nc), h0)
        return _delta_outputs(gamma * qc, S0, scores, W, T, pad), S
    # chunk-to-chunk state recurrence: S_next = (tot I - k_end^T w_f) S_0 + k_end^T w_v  (K x K times K x V)
    trans = tot * torch.eye(K, dtype=q.dtype, device=q.device) - torch.matmul(k_end.transpose(-1, -2), w_f)
    inject = torch.matmul(k_end.transpose(-1, -2), w_v)
    starts = []
    S = h0
    for c in range(nc):
        starts.append(S)
        S = torch.matmul(trans[:, :, c], S) + inject[:, :, c]
    S0 = torch.stack(starts, dim=2)  # [B, H, nc, K, V] the state at each chunk start
    W = w_v - torch.matmul(w_f, S0)
    return _delta_outputs(gamma * qc, S0, scores, W, T, pad), S


def _delta_outputs(q_decayed: Tensor, S0: Tensor, scores: Tensor, W: Tensor, T: int, pad: int) -> Tensor:
    """y = (Gamma Q) S_0 + tril(D Q K^T) W per chunk, back to [B, T, H, V]."""
    B, H, nc, L, _ = q_decayed.shape
    y = torch.matmul(q_decayed, S0) + torch.matmul(scores, W)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, nc * L, H, W.shape[-1])
    return y[:, :T] if pad else y


# =====================================================================================================================
# chunked_dplr_scan
# =====================================================================================================================


def chunked_dplr_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    x: Tensor,
    y: Tensor,
    log_decay: Optional[Tensor] = None,
    h0: Optional[Tensor] = None,
    *,
    chunk: int = 32,
    output_final_state: bool = False,
    readout: str = "post",
    state_passing: Optional[Callable] = None,
    step: Optional[Callable] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Diagonal-plus-rank-1 (DPLR) recurrence with a per-key decay, chunkwise, batch-first.

    Per batch and head::

        S_t = (diag(d_t) + x_t y_t^T) S_{t-1} + k_t v_t^T      (S in R^{K x V}, d_t = exp(log_decay_t) per key)
        o_t = S_t^T q_t   (readout="post")   or   S_{t-1}^T q_t   (readout="pre")

    Kimi Delta Attention is d = al, x = -be k, y = al * k (``(I - be k k^T) diag(al)``) or x = -be al k, y = k (the
    other order); RWKV-7 is d = w, x = -kappa_hat, y = a * kappa_hat. The scalar delta rule is the special case of a
    d shared over the keys, but it has its own tuned scan (:func:`chunked_delta_scan`); this one is for the per-key
    case, which it runs in O(T L K (K + V)) instead of a K x K matrix-vector product per step.

    Args:
        q, k, x, y: [B, T, H, K];  v: [B, T, H, V];  log_decay: None (d = 1), [B, T, H] (shared over the keys) or
        [B, T, H, K]; usually <= 0, ``-inf`` is a zero decay.  h0: [B, H, K, V] or None.

    Algorithm (derived for this parameterisation; the pseudo-values are fla's DPLR ``w`` written for a read vector
    that differs from the write vector). Write S_t = D_t S_{t-1} + x_t w_t^T + k_t v_t^T with the unknown
    pseudo-values w_t^T = y_t^T S_{t-1}. Inside a chunk of L steps with start state S_0, let Gam(t<-r) =
    diag(exp(sum_(r<l<=t) log d_l)), a product of decays of the steps after r through t (per key, from segment sums:
    every factor exp(<= 0), never a ratio of prefix products). Unrolling S_(s-1) gives

        w_s^T = y_s^T Gam(s-1<-start) S_0 + sum_(r<s) y_s^T Gam(s-1<-r) (x_r w_r^T + k_r v_r^T)

    so (I - L_yx) W = L_yk V + diag-decayed Y S_0, with L_yx[s, r] = y_s^T Gam(s-1<-r) x_r strictly lower
    triangular: one unit lower-triangular solve per chunk (W = W_v + W_f S_0). Then

        o_t = q_t^T Gam(t<-start) S_0 + sum_(r<=t) q_t^T Gam(t<-r) (x_r w_r^T + k_r v_r^T)
        S_L = Gam(L<-start) S_0 + sum_r Gam(L<-r) (x_r w_r^T + k_r v_r^T)

    The pairwise products sum_a u_t[a] w_r[a] Gam(t<-r)[a] (q and y against x and k) are ``_intra_diag_decay``'s
    divide and conquer over the chunk, split at block boundaries so that both factors of every product are
    exp(segment sum <= 0): no [L, L, K] tensor of pairwise decays (which took most of the time on CPU: 5-6x slower
    at K = 64, L = 32). Only the K x K chunk-to-chunk state recurrence is sequential (T / L steps). Accumulates in
    fp32 at least; differentiable with autograd.

    ``state_passing`` runs that recurrence, ``S_(c+1) = trans_c S_c + inject_c``, instead of the torch loop: called
    as ``state_passing(trans, inject, S_0)`` (``trans`` ``[B, H, nc, K, K]``, ``inject`` ``[B, H, nc, K, V]``, the
    initial state ``[B, H, K, V]``, all in the compute dtype), it returns the chunk-start states ``[B, H, nc, K, V]``
    and the final state (``dsfc.runtime.triton_dplr.dplr_state_passing``: one Triton kernel). ``step`` runs a
    sequence of one step instead (decoding): ``step(q, k, v, x, y, log_decay, S_0, readout) -> (o, S_1)``, every
    argument in the compute dtype, ``log_decay`` ``[B, 1, H, K]``.

    Precondition, not checked (a device sync per call otherwise): ``log_decay`` has no NaN or ``+inf``.
    """
    check_tensors("chunked_dplr_scan", q=q, k=k, v=v, x=x, y=y, log_decay=log_decay, h0=h0)
    if q.dim() != 4 or any(t.shape != q.shape for t in (k, x, y)) or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "chunked_dplr_scan expects q, k, x, y [B,T,H,K] and v [B,T,H,V]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(x.shape)}, {tuple(y.shape)}, {tuple(v.shape)}"
        )
    chunk = check_int_option("chunk", chunk)
    if readout not in ("post", "pre"):
        raise ValueError(f"readout must be 'post' or 'pre', got {readout!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if log_decay is not None and log_decay.shape not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"log_decay must be [B,T,H] or [B,T,H,K], got {tuple(log_decay.shape)}")
    if h0 is not None and h0.shape != (B, H, K, V):
        raise ValueError(f"h0 must be [B,H,K,V] = {(B, H, K, V)}, got {tuple(h0.shape)}")
    out_dtype = _result_dtype(q, k, v, x, y, log_decay, h0)
    cdt = _compute_dtype(out_dtype)
    h0 = torch.zeros(B, H, K, V, dtype=cdt, device=q.device) if h0 is None else h0.to(cdt)
    if T == 0:
        o = torch.empty(B, 0, H, V, dtype=out_dtype, device=q.device)
        return (o, h0.to(out_dtype)) if output_final_state else o
    k, v, x, y = (t.to(cdt) for t in (k, v, x, y))
    if log_decay is None:
        g = torch.zeros(B, T, H, K, dtype=cdt, device=q.device)
    else:
        g = log_decay.to(cdt)
        g = g.unsqueeze(-1).expand(B, T, H, K) if g.dim() == 3 else g

    def run(qq):
        return _dplr_scan_impl(qq, k, v, x, y, g, h0, int(chunk), state_passing)

    q = q.to(cdt)
    if T == 1 and step is not None:
        o, state = step(q, k, v, x, y, g, h0, readout)
    else:
        o, state = read_before_update(run, q, h0) if readout == "pre" else run(q)
    o = o.to(out_dtype)
    return (o, state.to(out_dtype)) if output_final_state else o


def _dplr_scan_impl(q, k, v, x, y, g, h0, chunk, state_passing=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = min(T, chunk)
    nc = -(-T // L)
    pad = nc * L - T
    # padded steps: q = k = v = x = y = 0 and log decay 0 leave the state unchanged; their outputs are dropped
    q, k, v, x, y, g = (_pad_time(t, 1, pad, 0.0) for t in (q, k, v, x, y, g))

    def chunked(t):  # [B, T', H, X] -> [B, H, nc, L, X]
        return t.reshape(B, nc, L, H, t.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc, xc, yc, gc = (chunked(t) for t in (q, k, v, x, y, g))
    # decays from the chunk start / to the chunk end, per key: cumulative sums over the chunk's own steps (segment
    # sums of log decays <= 0, so every factor is exp(<= 0); no prefix is ever divided by another)
    upto = torch.cumsum(gc, dim=-2)  # sum over steps 0..t: Gam(t <- start)
    # Gam(s-1 <- start), the steps before s: 1 at the first step
    read_start = torch.cat([torch.ones_like(gc[..., :1, :]), torch.exp(upto[..., :-1, :])], dim=-2)
    out_start = torch.exp(upto)
    end = torch.exp(_rev_cumsum_exclusive(gc, dim=-2))  # Gam(L-1 <- r): the steps after r
    tot = torch.exp(upto[..., -1, :])  # Gam(L-1 <- start), [B, H, nc, K]

    # the pairwise per-key decayed products, sum_a u_t[a] w_r[a] Gam(t <- r)[a] for r <= t, by _intra_diag_decay's
    # divide and conquer (O(K log L) elementwise work per token, not an [L, L, K] tensor): the outputs' q_t against
    # x_r and k_r, and the reads' y_s against them, Gam(s-1 <- r) for r < s: y shifted one step earlier (row s-1
    # of the result is read s), so the read's products are the same form one row down
    y_next = torch.cat([yc[..., 1:, :], torch.zeros_like(yc[..., :1, :])], dim=-2)
    pairs = _intra_diag_decay(torch.stack([qc, qc, y_next, y_next]), torch.stack([xc, kc, xc, kc]),
                              gc.unsqueeze(0).expand(4, *gc.shape))
    s_qx, s_qk = pairs[0], pairs[1]
    zero_row = torch.zeros_like(pairs[2][..., :1, :])
    l_yx = torch.cat([zero_row, pairs[2][..., :-1, :]], dim=-2)  # strictly lower triangular
    l_yk = torch.cat([zero_row, pairs[3][..., :-1, :]], dim=-2)
    eye = torch.eye(L, dtype=q.dtype, device=q.device)
    rhs = torch.cat([torch.matmul(l_yk, vc), yc * read_start], dim=-1)
    sol = torch.linalg.solve_triangular(eye - l_yx, rhs, upper=False, unitriangular=True)
    w_v, w_f = sol[..., :V], sol[..., V:]  # W = w_v + w_f S_0

    x_end, k_end = xc * end, kc * end  # the writes of each step decayed to the chunk's end
    # chunk-to-chunk state recurrence: S_next = (diag(tot) + x_end^T w_f) S_0 + x_end^T w_v + k_end^T v
    trans = torch.diag_embed(tot) + torch.matmul(x_end.transpose(-1, -2), w_f)
    inject = torch.matmul(x_end.transpose(-1, -2), w_v) + torch.matmul(k_end.transpose(-1, -2), vc)
    if state_passing is not None:
        S0, S = state_passing(trans, inject, h0)
    else:
        starts = []
        S = h0
        for c in range(nc):
            starts.append(S)
            S = torch.matmul(trans[:, :, c], S) + inject[:, :, c]
        S0 = torch.stack(starts, dim=2)  # [B, H, nc, K, V]
    W = w_v + torch.matmul(w_f, S0)
    o = torch.matmul(qc * out_start, S0) + torch.matmul(s_qx, W) + torch.matmul(s_qk, vc)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, nc * L, H, V)
    return (o[:, :T] if pad else o), S
