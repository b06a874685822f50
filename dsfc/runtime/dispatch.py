"""When a kernel launcher may skip its ``torch.library`` custom op and call the implementation directly.

The custom ops exist for ``torch.compile`` (one opaque node per launch) and for autograd (``register_autograd``).
Neither is involved in eager inference, where the op's dispatch is pure overhead, paid on every token of a decoding
loop: the S6 forward at T = 1 (B = 8, d = 2048, n = 16) with its kernel launch stubbed out took 160 us of Python per
call through the op and 97 us calling the implementation directly (this project's 2-core CPU machine).
"""

import os

import torch

__all__ = ["MAX_OFFSET", "OffsetLimitError", "check_offsets", "eager_inference", "next_pow2", "owns_storage",
           "refuse_double_backward", "require_triton_device", "triton_interpreting"]

# the spellings Triton itself reads as true (its getenv_bool: case-insensitive, no surrounding spaces)
_TRUE = ("1", "true", "on", "yes")


def next_pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1): Triton block sizes."""
    return 1 << max(0, int(x) - 1).bit_length()


def triton_interpreting() -> bool:
    """Whether Triton runs its kernels in the interpreter, read from ``TRITON_INTERPRET`` as Triton reads it. Compared
    with "1" only, ``TRITON_INTERPRET=true`` (which Triton honours) had the launchers refuse CPU tensors with "set
    TRITON_INTERPRET=1", and ``dsfc check`` report the kernels as run on the GPU."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in _TRUE


def require_triton_device(device: torch.device, kernels: str = "the Triton kernels") -> None:
    """Refuse a kernel launch on a non-CUDA device outside the interpreter, saying how to run it on CPU."""
    if device.type == "cuda" or triton_interpreting():
        return
    value = os.environ.get("TRITON_INTERPRET")
    now = "" if value is None else f" (it is {value!r}, which Triton reads as false)"
    raise RuntimeError(f"dsfc: {kernels} need CUDA tensors (got {device.type}); on CPU set "
                       f"TRITON_INTERPRET=1 before triton is imported{now} (slow: for tests)")


def eager_inference(*tensors: torch.Tensor) -> bool:
    """True outside ``torch.compile`` when no gradient can flow to any of ``tensors``."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def refuse_double_backward(op, kernels: str) -> None:
    """Give a backward custom op an autograd formula that says why there is none: a gradient of a gradient
    (``create_graph=True``, a gradient penalty, a Hessian-vector product) through a Triton kernel was torch's "Trying to
    backward through dsfc.<op>.default but no autograd formula was registered", naming neither the cause nor the
    way out."""

    def _backward(ctx, *grads):
        raise RuntimeError(
            f"dsfc: the Triton {kernels} kernels have no second derivative (a gradient of a gradient: "
            "create_graph=True, a gradient penalty, a Hessian-vector product); build the module with "
            "backend='torch' (or set model.backend = 'torch') for that"
        )

    op.register_autograd(_backward)


def owns_storage(t: torch.Tensor, *others) -> bool:
    """``t`` is contiguous and alone on its storage (not a view of a larger buffer, such as step T of a [B, T, N]
    buffer, which it would keep alive), and that storage is none of ``others``' (the caller's initial state): a
    final state the module may hand back as is, without forward's defensive copy (one copy per decoding step)."""
    if torch.compiler.is_compiling() or not t.is_contiguous():  # (storages are not traceable: copy as before)
        return False
    storage = t.untyped_storage()
    if t.storage_offset() != 0 or storage.nbytes() != t.numel() * t.element_size():
        return False
    return all(x is None or x.untyped_storage().data_ptr() != storage.data_ptr() for x in others)


# Triton forms ``ptr + offset`` in int32 unless an operand of the offset is int64. The outer-product, delta-rule,
# attention and dense kernels cast their program's base (program id, or the batch index) to int64, so only offsets
# within one program's tile stay 32-bit there; the generated diagonal kernels keep the offsets within one batch row
# 32-bit (t * stride_t + i * stride_i, per step: see triton_diagonal). Those are refused here, by shape, before any
# launch (a wrapped offset is a silently wrong output or an illegal access on the GPU).
MAX_OFFSET = 2**31 - 1


class OffsetLimitError(ValueError):
    """A tensor the Triton kernels would address past 32-bit offsets. backend="auto" catches it and runs the torch
    path (``checks.triton_offset_fallback``); backend="triton" lets it through."""


def row_extent(x: torch.Tensor) -> int:
    """The largest offset (in elements) within one batch row of ``x`` (every axis but the first); 0 when empty."""
    if x.numel() == 0:
        return 0
    return sum((n - 1) * abs(s) for n, s in zip(x.shape[1:], x.stride()[1:]))


def check_offsets(kernels: str, named, extent=row_extent, what: str = "one batch row") -> None:
    """Raise OffsetLimitError for the first ``(name, tensor)`` of ``named`` whose ``extent`` (the largest offset the
    kernels form in 32 bits) passes MAX_OFFSET. By shape only: also for meta tensors."""
    for name, x in named:
        reach = extent(x)
        if reach > MAX_OFFSET:
            raise OffsetLimitError(
                f"dsfc: {kernels} cannot address {name} of shape {tuple(x.shape)}: {what} spans {reach + 1} "
                f"elements, beyond the kernels' 32-bit offsets ({MAX_OFFSET + 1} = 2**31); run the sequence in "
                "parts (forward(u[:, :k], output_final_state=True), then the rest with initial_state=that state) or "
                "with backend='torch' (backend='auto' does that by itself)"
            )
