"""Index grids for generated code: where a spec uses an index as a value or in a computed subscript."""

from __future__ import annotations

import torch


def axis(size: int, pos: int, rank: int, device=None, dtype=None) -> torch.Tensor:
    """``arange(size)`` viewed along dimension ``pos`` of a rank-``rank`` grid (size 1 elsewhere)."""
    shape = [1] * rank
    shape[pos] = size
    return torch.arange(size, device=device, dtype=dtype).view(shape)


def cached_index(module, key, device, build) -> torch.Tensor:
    """The integer index tensor ``build()`` (a function of dims only, e.g. SSD's head -> group map ``h // R`` for
    ``index_select``), made once per module, ``key`` (its printed code and the dims it reads) and device, then
    reused: built per call it was an ``arange`` and a ``floor_divide`` per read, four aten ops on every decoding
    step of SSD. Kept in a plain dict on the module, keyed by device, not in a buffer: a buffer would be garbage
    after ``to_empty`` (meta construction), and ``.to(device)`` would have to move it; here another device simply
    builds its own. Built outside inference mode (an inference tensor saved by a later training call's
    ``index_select`` backward is an error); under ``torch.compile`` built in the graph (no side effect)."""
    cache = module.__dict__.get("_dsfc_index_cache")
    if cache is None:
        cache = module.__dict__["_dsfc_index_cache"] = {}
    return cached_tensor(cache, (key, device), build)


def cached_tensor(cache: dict, key, build) -> torch.Tensor:
    """``cache[key]``, made by ``build()`` on first use: outside inference mode (an inference tensor saved by a
    later training call's backward is an error), and not cached under ``torch.compile`` (built in the graph)."""
    if torch.compiler.is_compiling():
        return build()
    entry = cache.get(key)
    if entry is None:
        with torch.inference_mode(False):
            entry = cache[key] = build()
    return entry
