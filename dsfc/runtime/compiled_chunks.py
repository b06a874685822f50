"""The compiled CPU path of the diagonal family: torch.compile fuses a generated chunk of steps into one loop nest.

Eager torch has to materialise the per-step decay and input terms as [B, T, N] tensors (several passes over
memory); the generated ``_diagonal_chunk`` computes them one step at a time from the lets, and Inductor turns a
chunk of ``CHUNK`` unrolled steps into a single C++ loop. Measured on the 2-core CPU (docs: README, Benchmark).
Compile cost is paid once per module and input shape (seconds), so this path is only taken for large inference
calls on CPU; everything else uses the eager path.
"""

from __future__ import annotations

import os
import warnings

import torch

CHUNK = 32  # steps per compiled graph (unrolled); 16-32 measured best on this CPU
MIN_NUMEL = 2**22  # B * T * N below which compile time cannot pay off
MODE = os.environ.get("DSFC_COMPILE", "auto").strip().lower()  # "auto" | "never" | "always"
_broken = False


def use_compiled_chunks(x: torch.Tensor, h0: torch.Tensor) -> bool:
    """CPU, no autograd, big enough (or DSFC_COMPILE=always), and torch.compile has not failed before."""
    if _broken or MODE in ("0", "never") or x.is_cuda or torch.is_grad_enabled() and x.requires_grad:
        return False
    if MODE in ("1", "always"):
        return x.shape[1] >= CHUNK
    return x.shape[0] * x.shape[1] * h0[0].numel() >= MIN_NUMEL and x.shape[1] >= CHUNK


def run_compiled_chunks(module, env: dict, h0: torch.Tensor, time_varying: list[str]):
    """Run ``module._diagonal_chunk`` over the sequence in compiled chunks of CHUNK steps (the tail eagerly)."""
    global _broken
    fn = module.__dict__.get("_compiled_chunk")
    if fn is None:
        fn = torch.compile(module._diagonal_chunk, dynamic=False)
        module.__dict__["_compiled_chunk"] = fn
    T = env[time_varying[-1]].shape[1]
    # split once into views; slicing every tensor per chunk in a dict comprehension costs more than it looks
    pieces = {k: v.split(CHUNK, 1) for k, v in env.items() if k in time_varying}
    h, ys = h0, []
    for i in range((T + CHUNK - 1) // CHUNK):
        chunk = {k: (pieces[k][i] if k in pieces else v) for k, v in env.items()}
        run = fn if chunk[time_varying[-1]].shape[1] == CHUNK else module._diagonal_chunk
        try:
            y, h = run(chunk, h)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to the eager chunk
            _broken = True
            warnings.warn(f"dsfc: torch.compile of the chunk failed ({type(exc).__name__}: {exc}); using eager",
                          RuntimeWarning, stacklevel=2)
            y, h = module._diagonal_chunk(chunk, h)
        ys.append(y)
    return torch.cat(ys, 1), h
