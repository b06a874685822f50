"""``dsfc bench``: the generated CPU forward against the per-step loop people write by hand.

The baseline is written the way mamba-ssm's ``selective_scan_ref`` is: the same vectorised projections and
discretisation (the generated module's own lets and per-step quantities), then a Python loop over time on the
structured tensors. It is obtained by swapping the generated module's scan helper for a sequential loop, so both
sides see the same inputs and differ only in the recurrence algorithm. Ratios, not absolute times, are reported:
this machine's timings swing between runs.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .analysis.facts import Family
from .check import build_model, load_module, param_elements
from .pipeline import CompileResult
from .codegen.plan import constructor_kwargs


def loop_diagonal_scan(a, b, h0=None, **_):
    """selective_scan_ref's loop: x = deltaA[:, i] * x + deltaB_u[:, i], one time step per iteration."""
    h = torch.zeros_like(a[:, 0]) if h0 is None else h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def loop_outer_scan(q, k, v, log_decay=None, h0=None, output_final_state=False, readout="post", **_):
    """fla's naive recurrent linear attention: S = decay * S + k v^T; y = S^T q, one step per iteration."""
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(Bsz, H, K, V) if h0 is None else h0
    ys = []
    for t in range(T):
        if readout == "pre":
            ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
        if log_decay is not None:
            g = torch.exp(log_decay[:, t])
            S = S * (g[..., None] if g.dim() == 3 else g[..., None, None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        if readout == "post":
            ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    y = torch.stack(ys, 1)
    return (y, S) if output_final_state else y


def loop_delta_scan(q, k, v, f, log_decay=None, h0=None, output_final_state=False, readout="post", scaled_read=False,
                    **_):
    """fla's naive delta rule: S = s (S - k (f^T S)) + k v^T (s S - k (f^T S) + k v^T, scaled_read); y = S^T q, one
    step per iteration."""
    Bsz, T, H, K = q.shape
    S = q.new_zeros(Bsz, H, K, v.shape[-1]) if h0 is None else h0
    ys = []
    for t in range(T):
        S_prev = S
        read = torch.einsum("bhk,bhkv->bhv", f[:, t], S)[:, :, None, :]
        if scaled_read and log_decay is not None:
            S = S * torch.exp(log_decay[:, t])[..., None, None]
        S = S - k[:, t, :, :, None] * read
        if log_decay is not None and not scaled_read:
            S = S * torch.exp(log_decay[:, t])[..., None, None]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S if readout == "post" else S_prev))
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


@contextmanager
def _variant(module, which: str, compiled: bool):
    """Run the generated module as itself ("generated") or with its scans swapped for per-step loops ("loop")."""
    from .runtime import compiled_chunks, scans

    loops = {"diagonal_scan": loop_diagonal_scan, "chunked_outer_scan": loop_outer_scan,
             "chunked_delta_scan": loop_delta_scan}
    loops = {name: fn for name, fn in loops.items() if hasattr(module, name)}  # what this module's template imports
    saved_scans = {name: getattr(module, name) for name in loops}
    saved_modes = (scans.COMPILE, compiled_chunks.MODE)
    if which == "loop":
        for name, fn in loops.items():
            setattr(module, name, fn)
        scans.COMPILE, compiled_chunks.MODE = "never", "never"  # the baseline is the eager per-step loop
    else:
        scans.COMPILE = "auto" if compiled else "never"
        compiled_chunks.MODE = "always" if compiled else "never"
    try:
        yield
    finally:
        for name, fn in saved_scans.items():
            setattr(module, name, fn)
        scans.COMPILE, compiled_chunks.MODE = saved_modes


def check_dims(result: CompileResult, dims: dict | None) -> None:
    """ValueError naming a ``--dims`` override the spec's module refuses: an unknown dim, a dim < 1, a derived dim that
    is not a whole number (H = 3, G = 2 for R = H // G). The module is built on the meta device: nothing allocated."""
    from .plot import override_dims

    override_dims(result, {}, dims)
    cls = getattr(load_module(result, f"dsfc_bench_{result.module_name}"), result.plan.model)
    try:
        cls(**constructor_kwargs(dims or {}), device="meta")
    except ValueError as exc:
        raise ValueError(f"dims {dims}: {exc}") from None
    # the fp32 parameters at these dims may take at most half this machine's memory (the rest is for the layer's
    # streams and the baseline's): `--dims d=100000000` spent a minute initialising 23 GB before the OS killed it
    numbers = param_elements(result.sym, result.sym.dim_values(dims))
    memory = _physical_memory_bytes()
    if memory is not None and 4 * numbers > memory // 2:
        raise ValueError(f"dims {dims}: the parameters hold {numbers:.3g} numbers ({4 * numbers / 2**30:.3g} GiB in "
                         f"fp32), more than half this machine's {memory / 2**30:.3g} GiB of memory; use smaller --dims")


def _physical_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _setup(result: CompileResult, batch: int, T: int, dims: dict | None, name: str):
    module = load_module(result, name)
    torch.manual_seed(0)
    model = build_model(getattr(module, result.plan.model), result, dims or {}, "benchmark")
    u = torch.randn(batch, T, model._in_features())
    return module, model, u


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def measure_peak_mb(spec_path: str, which: str, batch: int, T: int, dims: dict | None, compiled: bool) -> float:
    """Peak resident memory (MB) that one forward adds, measured in this process (call it in a fresh one).

    Linux only: the kernel's high-water mark is reset (``/proc/self/clear_refs``) after set-up and warm-up, so
    the figure is the forward's own peak above what was resident before it (inputs, weights, compiled code).
    """
    from .pipeline import compile_spec

    result = compile_spec(spec_path)
    module, model, u = _setup(result, batch, T, dims, f"dsfc_probe_{result.module_name}")
    with torch.no_grad(), _variant(module, which, compiled):
        model(u[:, : min(T, 64)])  # compile the chunk graph (its shapes do not depend on T) and warm caches
        gc.collect()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current resident size
        base = _status_mb("VmRSS")
        model(u)
        return _status_mb("VmHWM") - base


def _peak_in_subprocess(spec_path, which, batch, T, dims, compiled) -> float | None:
    """A fresh interpreter per measurement: memory freed by an earlier run would otherwise be reused unseen."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    args = json.dumps({"spec": spec_path, "which": which, "batch": batch, "T": T, "dims": dims or {},
                       "compiled": compiled})
    proc = subprocess.run([sys.executable, "-m", "dsfc.bench", args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"  (peak memory of the {which} run not measured: {proc.stderr.strip().splitlines()[-1:]})")
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def run_bench(result: CompileResult, batch=1, T=4096, dims=None, repeats=3, compiled=False, memory=False) -> dict:
    module, model, u = _setup(result, batch, T, dims, f"dsfc_bench_{result.module_name}")
    family = result.structure.family
    with torch.no_grad():
        with _variant(module, "generated", compiled):
            fast = _time(lambda: model(u), repeats)
            y_fast = model(u)
        with _variant(module, "loop", compiled):
            if family == Family.QUADRATIC:
                # no scan to swap: the baseline is the KV-cache loop people write for decoding, step() per token
                slow = _time(lambda: _step_loop(model, u), max(1, repeats // 2))
                y_slow = _step_loop(model, u)
            else:
                slow = _time(lambda: model(u), max(1, repeats // 2))
                y_slow = model(u)
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
    if memory:
        dims_now = row["dims"]
        gen = _peak_in_subprocess(result.spec.path, "generated", batch, T, dims_now, compiled)
        loop = _peak_in_subprocess(result.spec.path, "loop", batch, T, dims_now, compiled)
        row["generated_peak_mb"], row["loop_peak_mb"] = gen, loop
        if gen is not None and loop is not None:
            print(f"  peak memory of one forward: generated {gen:7.1f} MB   loop {loop:7.1f} MB")
    return row


if __name__ == "__main__":  # the peak-memory probe: python -m dsfc.bench '{"spec": ..., "which": ...}'
    _a = json.loads(sys.argv[1])
    print(measure_peak_mb(_a["spec"], _a["which"], _a["batch"], _a["T"], _a["dims"], _a["compiled"]))
