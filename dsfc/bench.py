"""``dsfc bench``: the generated CPU forward against the per-step loop people write by hand.

The baseline is written the way mamba-ssm's ``selective_scan_ref`` is: the same vectorised projections and
discretisation (the generated module's own lets and per-step quantities), then a Python loop over time on the
structured tensors. It is obtained by swapping the generated module's scan helper for a sequential loop, so both
sides see the same inputs and differ only in the recurrence algorithm. Ratios, not absolute times, are reported:
this machine's timings swing between runs.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

from .analysis.facts import Family
from .check import load_module
from .pipeline import CompileResult


def loop_diagonal_scan(a, b, h0=None, **_):
    """selective_scan_ref's loop: x = deltaA[:, i] * x + deltaB_u[:, i], one time step per iteration."""
    h = torch.zeros_like(a[:, 0]) if h0 is None else h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def loop_outer_scan(q, k, v, log_decay=None, h0=None, output_final_state=False, **_):
    """fla's naive recurrent linear attention: S = decay * S + k v^T; y = S^T q, one step per iteration."""
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(Bsz, H, K, V) if h0 is None else h0
    ys = []
    for t in range(T):
        if log_decay is not None:
            g = torch.exp(log_decay[:, t])
            S = S * (g[..., None] if g.dim() == 3 else g[..., None, None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    y = torch.stack(ys, 1)
    return (y, S) if output_final_state else y


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation) excluded
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _step_loop(model, u):
    """Token by token through ``step`` (a KV cache for the quadratic family)."""
    state, ys = None, []
    for t in range(u.shape[1]):
        y_t, state = model.step(u[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1)


def run_bench(result: CompileResult, batch=1, T=4096, dims=None, repeats=3, compiled=False, stress=True) -> dict:
    from .runtime import compiled_chunks, scans

    module = load_module(result, f"dsfc_bench_{result.module_name}")
    cls = getattr(module, result.plan.model)
    torch.manual_seed(0)
    model = cls(**(dims or {}))
    u = torch.randn(batch, T, model._in_features())
    old_compile, old_mode = scans.COMPILE, compiled_chunks.MODE
    scans.COMPILE = "auto" if compiled else "never"
    compiled_chunks.MODE = "always" if compiled else "never"
    try:
        with torch.no_grad():
            fast = _time(lambda: model(u), repeats)
            y_fast = model(u)
            family = result.structure.family
            if family == Family.QUADRATIC:
                # no scan to swap: the baseline is the KV-cache loop people write for decoding, step() per token
                slow = _time(lambda: _step_loop(model, u), max(1, repeats // 2))
                y_slow = _step_loop(model, u)
            else:
                saved = (module.diagonal_scan, module.chunked_outer_scan)
                module.diagonal_scan, module.chunked_outer_scan = loop_diagonal_scan, loop_outer_scan
                compiled_chunks.MODE = "never"  # the baseline is the eager per-step loop
                try:
                    slow = _time(lambda: model(u), max(1, repeats // 2))
                    y_slow = model(u)
                finally:
                    module.diagonal_scan, module.chunked_outer_scan = saved
    finally:
        scans.COMPILE, compiled_chunks.MODE = old_compile, old_mode
    rel = ((y_fast - y_slow).abs().max() / y_slow.abs().max().clamp_min(1e-30)).item()
    row = {
        "spec": result.spec.path,
        "model": result.sym.model,
        "family": family.value,
        "batch": batch,
        "T": T,
        "dims": {k: getattr(model, k) for k in result.sym.free_dims},
        "generated_ms": fast * 1e3,
        "loop_ms": slow * 1e3,
        "speedup": slow / fast,
        "max_rel_err": rel,
        "compiled_scan": compiled,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    note = {Family.DENSE_SCAN: "  (dense family: both sides loop over time)",
            Family.QUADRATIC: "  (quadratic family: the baseline is step() with the KV cache)"}.get(family, "")
    print(f"{row['model']:<18} {family.value:<27} B={batch} T={T} dims={row['dims']}")
    print(f"  generated {fast * 1e3:9.1f} ms   loop {slow * 1e3:9.1f} ms   speed-up {slow / fast:5.1f}x   "
          f"max rel err {rel:.1e}{note}")
    return row
