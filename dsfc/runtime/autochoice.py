"""Pick the faster of equivalent kernel variants on a GPU, measured on the first call of each launch shape.

Some choices between kernel variants that compute the same thing (the outer-product family's fused or split
schedule, the diagonal step kernel with or without prefetching) depend on the GPU, the triton version and the shape,
and no rule written without a GPU gets them right. ``choose`` times each candidate once per launch shape (after the
launch that compiles it), keeps the fastest for the rest of the process, and only considers a candidate whose
results agree with the first one's (the variant that ran on a GPU first): a variant that miscompiles on some GPU /
triton pair is never picked however fast it is, and one that cannot launch there (shared memory) is skipped. Where
nothing can be timed (not CUDA, e.g. the interpreter; or a CUDA graph being captured) it takes the first candidate
without timing anything.
"""

from typing import Callable, Hashable, Optional, Sequence

import torch

__all__ = ["choose", "agree"]

REPEATS = 3  # timed launches per candidate (after one that compiles it and whose results are compared)
_CHOICES: dict = {}  # key -> index of the chosen candidate


def can_time(device: torch.device) -> bool:
    """CUDA, and not while a CUDA graph is being captured (nothing can be timed or synchronised then)."""
    return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def time_ms(run: Callable, candidate) -> float:
    """Milliseconds for REPEATS launches of ``run(candidate)``."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPEATS):
        run(candidate)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def agree(want: Sequence[torch.Tensor], got: Sequence[torch.Tensor], rtol: float) -> bool:
    """Every tensor of ``got`` within ``rtol`` of the largest entry of its ``want`` (NaN where ``want`` is finite:
    no)."""
    for a, b in zip(want, got):
        if a.numel() == 0:
            continue
        a, b = a.float(), b.float()
        if bool(torch.isfinite(a).all()) and not bool(torch.isfinite(b).all()):
            return False
        scale = max(a.abs().max().item(), 1e-30)
        if not (a - b).abs().max().item() <= rtol * scale:  # `not <=`: a NaN difference disagrees
            return False
    return True


def choose(key: Hashable, candidates: Sequence, run: Callable, device: torch.device, rtol: float,
           truth: Optional[Callable[[], Sequence[torch.Tensor]]] = None) -> int:
    """Index of the candidate to launch for ``key`` (a launch shape): the fastest of those whose results
    (``run(candidate)``, a sequence of tensors) agree with candidate 0's within ``rtol``, measured on the first call
    and cached; 0 where nothing can be timed. A candidate that fails to launch (a tile needing more shared memory
    than this GPU has) is left out, and if candidate 0 is the one that failed the first that launched is the
    reference; if none launches, the first error is raised.

    ``truth`` (optional): the same results computed independently (a torch implementation), consulted only when
    some candidate disagrees with the reference: the reference itself may be the one this GPU / triton pair
    miscompiles (triton 3.6 did so on an H100, see triton_outer.fused_miscompiles). The candidates that agree with
    ``truth`` are then the usable ones; if none does, a RuntimeError says so rather than returning wrong results."""
    if key in _CHOICES:
        return _CHOICES[key]
    if not can_time(device):
        return 0
    outs, errors = {}, []
    for i, c in enumerate(candidates):  # the first launch of each also compiles it
        try:
            outs[i] = run(c)
        except Exception as exc:  # noqa: BLE001 - e.g. triton's OutOfResources: more shared memory than the GPU has
            errors.append(exc)
    if not outs:
        raise errors[0]
    ref = min(outs)  # candidate 0, or the first that launched
    usable = [i for i in outs if i == ref or agree(outs[ref], outs[i], rtol)]
    if len(usable) < len(outs) and truth is not None:
        want = truth()
        usable = [i for i in outs if agree(want, outs[i], rtol)]
        if not usable:
            raise RuntimeError(f"dsfc: every kernel variant of {key!r} disagrees with the torch implementation on "
                               f"this GPU (a Triton miscompile?); run the module with backend='torch'")
    times = {i: time_ms(run, candidates[i]) for i in usable} if len(usable) > 1 else {usable[0]: 0.0}
    _CHOICES[key] = min(times, key=times.get)
    return _CHOICES[key]
