"""``dsfc bench --gpu`` (also ``python benchmarks/gpu_bench.py``): the generated kernels against the GPU anchors.

One run, the same inputs for every row of a group (the generated module's own projections, computed once outside
the timed region, then handed to each implementation in the layout it wants):

* ``s6``: generated S6 (Triton) vs mamba-ssm ``selective_scan_fn`` vs the sequential torch loop
  (``selective_scan_ref`` style, skipped above ``--loop-max-T``: ~35 s fwd+bwd at T=16384);
* ``ssd``: generated SSD vs mamba-ssm ``mamba_chunk_scan_combined`` vs fla ``chunk_simple_gla``;
* ``gla``: generated GLA vs fla ``chunk_gla``;  ``linear_attention``: generated vs fla ``chunk_linear_attn``.

Only the recurrence is timed (the generated module's ``_core_triton``, or ``_core`` where the spec has no Triton
kernel: the row says which), forward and forward+backward, median of CUDA-event timings. Every anchor row also
reports its max relative difference from the generated output, so a fast-but-wrong row is visible.

Achieved bandwidth = minimum bytes (every input read once, the output written once, as in
/work/shared/gpu-anchors.md) / forward time, as a fraction of the device's peak HBM bandwidth (``PEAKS``). A missing
anchor (not installed, no CUDA build) is a row with ``skipped`` set to the reason, never an error.

Results go to ``benchmarks/results/<device>.json``. ``--quick`` runs small sizes (a device check of a few minutes);
``--device cpu`` runs the same code on CPU (under ``TRITON_INTERPRET=1``, tiny sizes: a smoke test of the wiring,
not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Peak HBM bandwidth (GB/s) and dense bf16 tensor-core TFLOP/s, vendor datasheets (SXM parts unless named).
PEAKS = {
    "H100 PCIe": {"hbm_GBps": 2000.0, "bf16_TFLOPs": 756.0},
    "H100": {"hbm_GBps": 3350.0, "bf16_TFLOPs": 989.0},
    "H200": {"hbm_GBps": 4800.0, "bf16_TFLOPs": 989.0},
    "A100": {"hbm_GBps": 2039.0, "bf16_TFLOPs": 312.0},
}

GROUPS = ("s6", "s6_step", "ssd", "gla", "gla_step", "linear_attention", "softmax_attention", "gated_deltanet")

# sizes: batch 8; T in {1024, 4096, 16384}; widths 1024-2048; S6 n=16; heads 8-16 of 64-128
FULL = {
    "batch": 8,
    "T": (1024, 4096, 16384),
    "s6": {"d": 2048, "n": 16, "r": 128},
    "s6_step": {"d": 2048, "n": 16, "r": 128},
    "ssd": {"H": 16, "P": 64, "n": 64, "G": 1},
    "gla": {"d": 2048, "H": 16, "K": 128, "V": 128, "R": 16},
    "gla_step": {"d": 2048, "H": 16, "K": 128, "V": 128, "R": 16},
    "linear_attention": {"d": 1024, "H": 16, "K": 64, "V": 64},
    "softmax_attention": {"H": 16, "K": 64, "V": 64},
    "gated_deltanet": {"d": 2048, "H": 16, "K": 128, "V": 128},
}
QUICK = {
    "batch": 8,
    "T": (1024,),
    "s6": {"d": 1024, "n": 16, "r": 64},
    "s6_step": {"d": 1024, "n": 16, "r": 64},
    "ssd": {"H": 8, "P": 64, "n": 64, "G": 1},
    "gla": {"d": 1024, "H": 8, "K": 64, "V": 64, "R": 16},
    "gla_step": {"d": 1024, "H": 8, "K": 64, "V": 64, "R": 16},
    "linear_attention": {"d": 512, "H": 8, "K": 64, "V": 64},
    "softmax_attention": {"H": 8, "K": 64, "V": 64},
    "gated_deltanet": {"d": 1024, "H": 8, "K": 64, "V": 64},
}
SMOKE = {  # --device cpu: the interpreter runs ~1 ms per step and op
    "batch": 1,
    "T": (8,),
    "s6": {"d": 4, "n": 2, "r": 2},
    "s6_step": {"d": 4, "n": 2, "r": 2},
    "ssd": {"H": 2, "P": 2, "n": 2, "G": 1},
    "gla": {"d": 4, "H": 2, "K": 2, "V": 2, "R": 2},
    "gla_step": {"d": 4, "H": 2, "K": 2, "V": 2, "R": 2},
    "linear_attention": {"d": 4, "H": 2, "K": 2, "V": 2},
    "softmax_attention": {"H": 2, "K": 4, "V": 4},
    "gated_deltanet": {"d": 4, "H": 2, "K": 2, "V": 2},
}


@dataclass
class Row:
    group: str
    impl: str
    T: int
    shape: dict
    dtype: str = ""
    fwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    min_bytes: int | None = None
    achieved_GBps: float | None = None
    frac_peak_bw: float | None = None
    speedup_vs_generated_fwd: float | None = None  # > 1: this row is faster than the generated kernel
    speedup_vs_generated_fwdbwd: float | None = None
    max_rel_diff_vs_generated: float | None = None
    skipped: str | None = None
    note: str = ""


@dataclass
class Report:
    device: str
    peak: dict | None
    torch: str
    triton: str
    mode: str
    started: str
    rows: list[Row] = field(default_factory=list)
    complete: bool = False  # False in the partial file written after each group (a run cut off keeps its rows)


# ---- device, peaks, output ------------------------------------------------------------------------------------


def device_key(name: str) -> str | None:
    """The ``PEAKS`` entry of a ``torch.cuda.get_device_name`` string, or None when unknown."""
    for key in sorted(PEAKS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if all(part in name for part in key.split()):
            return key
    return None


def result_path(device: str, out_dir: Path = RESULTS) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower() or "unknown"
    return out_dir / f"{slug}.json"


def write_report(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)  # never a half-written file if the session is cut off
    return path


def add_ratios(rows: list[Row], peak_GBps: float | None) -> None:
    """Bandwidth and ratios against the group's generated row at the same T (in place)."""
    for r in rows:
        if r.fwd_ms and r.min_bytes:
            r.achieved_GBps = r.min_bytes / (r.fwd_ms * 1e-3) / 1e9
            r.frac_peak_bw = r.achieved_GBps / peak_GBps if peak_GBps else None
    # the reference row of a group: the generated module's own path ("generated (...)"), not the sweep or kernel rows;
    # of several (softmax_attention: fp32, then the run's dtype) the last
    gen = {(r.group, r.T): r for r in rows if r.impl.startswith("generated (") and not r.skipped}
    for r in rows:
        g = gen.get((r.group, r.T))
        if g is None or r is g or r.skipped:
            continue
        if g.fwd_ms and r.fwd_ms:
            r.speedup_vs_generated_fwd = g.fwd_ms / r.fwd_ms
        if g.fwdbwd_ms and r.fwdbwd_ms:
            r.speedup_vs_generated_fwdbwd = g.fwdbwd_ms / r.fwdbwd_ms


def format_rows(rows: list[Row]) -> str:
    out = [f"{'group':<17} {'impl':<42} {'T':>6} {'fwd ms':>9} {'f+b ms':>9} {'GB/s':>7} {'%peak':>6} "
           f"{'x gen':>6} {'rel diff':>8}"]
    for r in rows:
        if r.skipped:
            out.append(f"{r.group:<17} {r.impl:<42} {r.T:>6}  skipped: {r.skipped}")
            continue

        def f(x, fmt):
            return format(x, fmt) if x is not None else "-"

        out.append(f"{r.group:<17} {r.impl:<42} {r.T:>6} {f(r.fwd_ms, '9.3f')} {f(r.fwdbwd_ms, '9.3f')} "
                   f"{f(r.achieved_GBps, '7.0f')} "
                   f"{f(None if r.frac_peak_bw is None else 100 * r.frac_peak_bw, '6.1f')} "
                   f"{f(r.speedup_vs_generated_fwd, '6.2f')} {f(r.max_rel_diff_vs_generated, '8.1e')}"
                   + (f"  {r.note}" if r.note else ""))
    return "\n".join(out)


# ---- anchors --------------------------------------------------------------------------------------------------


def import_anchor(name: str):
    """``(function, None)`` or ``(None, reason)`` for an anchor implementation."""
    try:
        if name == "selective_scan_fn":
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fn
        elif name == "selective_state_update":
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update as fn
        elif name == "mamba_chunk_scan_combined":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as fn
        elif name == "chunk_simple_gla":
            from fla.ops.simple_gla import chunk_simple_gla as fn
        elif name == "chunk_gla":
            from fla.ops.gla import chunk_gla as fn
        elif name == "fused_recurrent_gla":
            from fla.ops.gla import fused_recurrent_gla as fn
        elif name == "chunk_linear_attn":
            from fla.ops.linear_attn import chunk_linear_attn as fn
        elif name == "chunk_gated_delta_rule":
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fn
        else:
            return None, f"unknown anchor {name!r}"
    except Exception as exc:  # noqa: BLE001 - ImportError, or a CUDA extension failing to load
        return None, f"{name} not importable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return fn, None


# ---- timing ---------------------------------------------------------------------------------------------------


def time_ms(fn, device: str, repeats: int, warmup: int = 1) -> float | None:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, wall clock on CPU), after ``warmup`` untimed calls.
    In ``--warm`` mode one untimed call (it compiles) and None."""
    import torch

    if _WARM is not None:
        fn()
        return None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


_WARM: tuple[int, int] | None = None  # (part, parts) in --warm mode (run() sets it)


def slice_autotune_configs(part: int, parts: int) -> None:
    """Make every ``triton.autotune`` created from now on keep only slice ``part`` of ``parts`` of its configs.

    ``--warm`` runs ``parts`` processes in parallel, each compiling its slice, so that triton's on-disk kernel cache
    holds every config of every anchor before the timed run: that run's autotuning then benchmarks configs instead
    of compiling them one after another (compiling was most of a fresh GPU's first-call time: ~800 configs for fla
    and mamba-ssm). Must run before the anchors are imported (their decorators build the autotuners)."""
    from triton.runtime import autotuner

    init = autotuner.Autotuner.__init__

    def sliced_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if len(self.configs) > 1:
            self.configs = self.configs[part % len(self.configs)::parts]

    autotuner.Autotuner.__init__ = sliced_init


_IO_BYTES = 2  # bytes per streamed element in the benchmark's input dtype (run() sets it): the minimum traffic


def _nbytes(*tensors) -> int:
    """Bytes to read (or write) these streams once in the input dtype, whatever dtype they are held in here."""
    return int(sum(t.numel() for t in tensors)) * _IO_BYTES


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _fwd_bwd(fn, inputs):
    """A closure running forward then backward of ``sum(y)`` w.r.t. ``inputs`` (tensors requiring grad)."""
    import torch

    def run():
        y = fn()
        torch.autograd.grad(y, inputs, torch.ones_like(y), allow_unused=True)

    return run


# ---- the groups -----------------------------------------------------------------------------------------------


def _load_generated(spec: str, dims: dict, device: str):
    import torch

    from .check import load_module
    from .pipeline import compile_spec

    result = compile_spec(ROOT / "specs" / f"{spec}.dsf")
    module = load_module(result, name=f"dsfc_gpu_bench_{spec}")
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**dims).to(device)
    return result, module, model


def _shape(result, tensor, dims) -> tuple[int, ...]:
    vals = result.sym.dim_values(dims)
    return tuple(int(result.sym.subs_dims(e, vals)) for e in tensor.shape())


_CHECKPOINT = None  # set by run(): called with each timed row, so that a run cut off keeps the rows it finished


def _bench_impl(group, impl, T, shape, fn, grad_inputs, device, repeats, dtype, min_bytes, note="", y_ref=None):
    """Forward timed under no_grad; forward+backward of sum(y) w.r.t. ``grad_inputs``; with ``y_ref`` (the generated
    output) also the row's max relative difference from it, before the row is checkpointed (a run cut off later
    keeps it)."""
    import torch

    row = Row(group, impl, T, shape, dtype=str(dtype).replace("torch.", ""), min_bytes=min_bytes, note=note)
    try:
        with torch.no_grad():
            row.fwd_ms = time_ms(fn, device, repeats)
        if grad_inputs:
            row.fwdbwd_ms = time_ms(_fwd_bwd(fn, grad_inputs), device, repeats)
        if y_ref is not None:
            with torch.no_grad():
                row.max_rel_diff_vs_generated = _rel(fn().float().reshape(y_ref.shape), y_ref)
    except Exception as exc:  # noqa: BLE001 - one broken row must not end the run
        row.skipped = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        traceback.print_exc(file=sys.stderr)
    if _CHECKPOINT is not None:
        _CHECKPOINT(row)
    return row


def _generated_rows(group, spec, dims, B, T, device, repeats, dtype, min_bytes_fn):
    """Time the generated recurrence over precomputed lets (the projections stay outside the timed region): the
    Triton kernel where the spec has one, else the torch path (the row's impl says which).

    Returns ``(row, y as fp32, env)``; ``env`` holds the lets and the input (under the input's name) that the anchor
    rows are built from, so that every row of the group sees the same numbers."""
    import torch

    result, module, model = _load_generated(spec, dims, device)
    cdt = torch.float32
    g = torch.Generator(device=device).manual_seed(1)
    u = torch.randn(B, T, model._in_features(), device=device, generator=g)
    name = result.plan.input_name
    env = model._lets(u.reshape(B, T, *_shape(result, result.sym.input, dims)), cdt)
    has_kernel = module._core_triton_available is not None
    core = model._core_triton if has_kernel else model._core
    # diagonal kernels read the lets themselves (in the input dtype); the outer-product path first makes its q, k,
    # v streams from them in torch (fp32, as forward does) and casts those to the input dtype for the kernel. The
    # input stays in the compute dtype as forward hands it over: the core may run torch maths on it (S6's hoisted
    # dt projection, an einsum with the fp32 weights) before casting it for the kernel
    direct = has_kernel and result.plan.triton is not None
    env["_io_dtype"] = dtype
    leaves = {}
    for k, v in env.items():  # the time-varying operands: in the input dtype for the kernels, leaves for backward
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 3 and tuple(v.shape[:2]) == (B, T):
            leaves[k] = v.detach().to(dtype if direct and k != name else cdt).requires_grad_()
    env.update(leaves)
    h0 = torch.zeros(B, *_shape(result, result.sym.state, dims), device=device, dtype=cdt)

    def fn():
        return core(env[name], h0, env, B, T, cdt)[0]

    impl = ("generated (triton)" if direct else "generated (torch streams + triton)") if has_kernel else \
        "generated (torch path: no Triton kernel)"
    row = _bench_impl(group, impl, T, dims, fn, list(leaves.values()), device, repeats,
                      dtype if has_kernel else cdt, min_bytes_fn(env, env[name]))
    with torch.no_grad():
        y = fn().float()
    env["_bench"] = (fn, list(leaves.values()))  # for the tuning sweep

    def torch_path():
        return model._core(env[name], h0, env, B, T, cdt)[0]

    env["_torch_path"] = torch_path  # the same lets through the module's torch path (the delta rule's baseline)
    return row, y, env


SWEEP_T = 4096  # the sequence length at which the tuning sweeps run (the first T when it is not measured)
# (CHUNK_T, CHUNK_ELEMS, PREFETCH) of the diagonal kernels; CHUNK_T 1: the step kernels
DIAGONAL_SWEEP = [(1, 0, False), (1, 0, True), (16, 8192, False), (32, 8192, False)]
OUTER_SWEEP = {  # (chunk, block_v, num_warps, schedule) of chunked_outer_triton
    "scalar": [(64, 64, 8, "split"), (64, 64, 4, "split"), (64, 64, 8, "fused"), (64, 64, 4, "fused"),
               (32, 64, 4, "fused")],
    # (H100, 2026-11-26, GLA K = V = 128: fused at chunk 64 needs more shared memory than sm_90 has; 2026-11-27:
    # chunk 16 / 128 / 8 warps / fused was the fastest, 0.69x of the chunk-64 default forward, and is the default now)
    "per_key": [(64, 64, 8, "split"), (16, 64, 8, "fused"), (16, 128, 8, "split")],
}
# Not swept: chunk 64 with a 32-wide value slice at 4 warps, fused, which triton 3.6 miscompiles on an H100 (wrong
# results, or an illegal access that ends the process's CUDA context; chunked_outer_triton refuses it on Hopper).


def _sweeping(device: str, T: int) -> bool:
    """Whether this (device, T) gets the tuning sweep rows: on a GPU, at SWEEP_T (or the first T if not measured)."""
    return device == "cuda" and (T == SWEEP_T or (SWEEP_T not in _SIZES_T and T == _SIZES_T[0]))


_SIZES_T: tuple = (SWEEP_T,)  # run() sets it to the measured lengths


def _diagonal_sweep(group, T, dims, device, repeats, dtype, y_gen, env, min_bytes):
    """The generated diagonal kernels under other chunk shapes (and the step-by-step kernels): one row each, with
    its max relative difference from the default configuration's output."""
    import torch

    from .runtime import triton_diagonal as td

    fn, leaves = env["_bench"]
    rows = []
    saved = (td.CHUNKED_FORWARD, td.CHUNKED_BACKWARD, td.CHUNK_T, td.CHUNK_ELEMS, td.PREFETCH)
    try:
        for chunk_t, elems, prefetch in DIAGONAL_SWEEP:  # chunked forward and backward, or step forward and backward
            td.CHUNKED_FORWARD, td.CHUNKED_BACKWARD = chunk_t > 1, "always" if chunk_t > 1 else "never"
            td.CHUNK_T, td.CHUNK_ELEMS, td.PREFETCH = max(chunk_t, 1), elems or saved[3], prefetch
            label = (("generated, step kernels" + (", PREFETCH" if prefetch else "")) if chunk_t == 1 else
                     f"generated, CHUNK_T={chunk_t} CHUNK_ELEMS={elems}")
            r = _bench_impl(group, label, T, dims, fn, leaves, device, repeats, dtype, min_bytes, note="sweep",
                            y_ref=y_gen)
            rows.append(r)
    finally:
        td.CHUNKED_FORWARD, td.CHUNKED_BACKWARD, td.CHUNK_T, td.CHUNK_ELEMS, td.PREFETCH = saved
    return rows


def bench_s6(B, T, dims, device, repeats, dtype, loop_max_T):
    import torch

    def min_bytes(env, x):  # u, dt [B,T,d]; B, C [B,T,n]; y [B,T,d]
        return _nbytes(x, env["dt"], env["b"], env["cq"]) + _nbytes(x)

    rows = []
    gen, y_gen, env = _generated_rows("s6", "s6", dims, B, T, device, repeats, dtype, min_bytes)
    x = env["u_"]
    rows.append(gen)
    if _sweeping(device, T) and not gen.skipped:
        rows += _diagonal_sweep("s6", T, dims, device, repeats, dtype, y_gen, env, gen.min_bytes)
    # constants of the anchors' graphs: detached, so that every backward runs through the timed inputs only
    A = -torch.exp(env["A_log"].float()).detach()  # [d, n]
    D = env["D"].float().detach()
    dt, b, cq, u = (t.detach() for t in (env["dt"].to(dtype), env["b"].to(dtype), env["cq"].to(dtype), x.to(dtype)))
    mb = gen.min_bytes

    fn, reason = import_anchor("selective_scan_fn")
    if fn is None:
        rows.append(Row("s6", "mamba-ssm selective_scan_fn", T, dims, skipped=reason))
    else:
        ins = [t.transpose(1, 2).contiguous().requires_grad_() for t in (u, dt, b, cq)]  # [B, d|n, T]

        def mamba():
            return fn(ins[0], ins[1], A, ins[2], ins[3], D, delta_softplus=False).transpose(1, 2)

        r = _bench_impl("s6", "mamba-ssm selective_scan_fn", T, dims, mamba, ins, device, repeats, dtype, mb,
                        y_ref=y_gen)
        rows.append(r)

    if T > loop_max_T:
        rows.append(Row("s6", "torch sequential loop", T, dims, skipped=f"T > --loop-max-T {loop_max_T} (too slow)"))
    else:
        ins = [t.float().detach().requires_grad_() for t in (u, dt, b, cq)]

        def loop():
            uu, dd, bb, cc = ins
            a = torch.exp(dd[..., None] * A)  # [B, T, d, n]
            bu = dd[..., None] * bb[:, :, None, :] * uu[..., None]
            h = torch.zeros_like(a[:, 0])
            ys = []
            for t in range(a.shape[1]):
                h = a[:, t] * h + bu[:, t]
                ys.append(torch.einsum("bdn,bn->bd", h, cc[:, t]))
            return torch.stack(ys, 1) + D * uu

        r = _bench_impl("s6", "torch sequential loop", T, dims, loop, ins, device, max(1, repeats // 3), torch.float32,
                        mb, note="fp32, selective_scan_ref style", y_ref=y_gen)
        rows.append(r)
    return rows


def bench_s6_step(B, T, dims, device, repeats, dtype, loop_max_T):
    """One decoding step (T=1, whatever ``T`` says): the generated forward kernel at T=1 vs mamba-ssm's Triton
    ``selective_state_update`` (the single-token kernel Mamba uses for generation)."""
    import torch

    def min_bytes(env, x):  # state read and written [B, d, n] fp32; u, dt [B, d]; B, C [B, n]; y [B, d]
        return _nbytes(x, env["dt"], env["b"], env["cq"]) + _nbytes(x) + 2 * x.numel() * dims["n"] * 4

    rows = []
    gen, y_gen, env = _generated_rows("s6_step", "s6", dims, B, 1, device, repeats, dtype, min_bytes)
    gen.note = "forward kernel at T=1 (no separate step kernel)"
    rows.append(gen)
    fn, reason = import_anchor("selective_state_update")
    if fn is None:
        rows.append(Row("s6_step", "mamba-ssm selective_state_update", 1, dims, skipped=reason))
        return rows
    A = -torch.exp(env["A_log"].float()).detach()
    D = env["D"].float().detach()
    x, dt, b, cq = (t[:, 0].to(dtype).detach() for t in (env["u_"], env["dt"], env["b"], env["cq"]))
    state = torch.zeros(B, *A.shape, device=device, dtype=torch.float32)

    dt_bias = torch.zeros(dt.shape[-1], device=device, dtype=torch.float32)  # dt is already softplus-ed
    D = D.to(dtype)

    def mamba():
        state.zero_()  # h0 = 0, as the generated row
        return fn(state, x, dt, A, b, cq, D=D, dt_bias=dt_bias)

    r = _bench_impl("s6_step", "mamba-ssm selective_state_update", 1, dims, mamba, [], device, repeats, dtype,
                    gen.min_bytes, note="includes a state.zero_()", y_ref=y_gen.reshape(B, -1))
    rows.append(r)
    return rows


def bench_ssd(B, T, dims, device, repeats, dtype, loop_max_T):
    import torch

    def min_bytes(env, x):  # x [B,T,H,P], dt [B,T,H], B, C [B,T,G,n], y [B,T,H,P]
        return _nbytes(x, env["dt"], env["Bm"], env["Cm"]) + _nbytes(x)

    rows = []
    gen, y_gen, env = _generated_rows("ssd", "ssd", dims, B, T, device, repeats, dtype, min_bytes)
    x = env["u_"]
    rows.append(gen)
    H, P, n, G = dims["H"], dims["P"], dims["n"], dims["G"]
    A = -torch.exp(env["A_log"].float()).detach()
    D = env["D"].float().detach()
    xx, dt, Bm, Cm = (t.detach() for t in (x.to(dtype), env["dt"].float(), env["Bm"].to(dtype), env["Cm"].to(dtype)))
    y_gen = y_gen.reshape(B, T, H, P)

    # SSD as scalar-decay GLA: q = C, k = dt B, v = x, log-decay dt A per head (the fla row's inputs)
    R = H // G
    q = Cm.repeat_interleave(R, dim=2)  # [B, T, H, n]
    k = (Bm.float().repeat_interleave(R, dim=2) * dt[..., None]).to(dtype)
    g = (dt * A).float()  # log decay per head
    kernel_rows, sweep = _kernel_rows("ssd", T, dims, device, repeats, dtype, gen.min_bytes,
                                      y_gen - (D[:, None] * xx.float()), q, k, xx, g,
                                      "same q, k, v, g as fla; no D term")
    rows.extend(kernel_rows)
    # fla before mamba-ssm, whose autotuning is the slow part of a cut-off run
    fn, reason = import_anchor("chunk_simple_gla")
    if fn is None:
        rows.append(Row("ssd", "fla chunk_simple_gla", T, dims, skipped=reason))
    else:
        ins = [t.detach().clone().requires_grad_() for t in (q, k, xx)]

        def fla():
            return fn(ins[0], ins[1], ins[2], g=g, scale=1.0)[0] + D[:, None] * ins[2]

        r = _bench_impl("ssd", "fla chunk_simple_gla", T, dims, fla, ins, device, repeats, dtype, gen.min_bytes,
                        note="SSD as scalar-decay GLA (q=C, k=dt B, v=x)", y_ref=y_gen)
        rows.append(r)
    fn, reason = import_anchor("mamba_chunk_scan_combined")
    if fn is None:
        rows.append(Row("ssd", "mamba-ssm mamba_chunk_scan_combined", T, dims, skipped=reason))
    else:
        ins = [t.detach().clone().requires_grad_() for t in (xx, dt, Bm, Cm)]

        def mamba():
            return fn(ins[0], ins[1], A, ins[2], ins[3], chunk_size=256, D=D)

        r = _bench_impl("ssd", "mamba-ssm mamba_chunk_scan_combined", T, dims, mamba, ins, device, repeats, dtype,
                        gen.min_bytes, y_ref=y_gen)
        rows.append(r)

    rows.extend(sweep())
    return rows


def _kernel_rows(group, T, dims, device, repeats, dtype, min_bytes, y_ref, q, k, v, g, note):
    """The generated outer-product kernel alone (``chunked_outer_triton``) on the streams an anchor row gets: the
    kernel-to-kernel comparison (the generated row also times the torch that makes the streams). Returns the
    default-configuration row and a function that runs the tuning sweep's rows, which the caller runs after the
    anchors: a sweep configuration that breaks the CUDA context (an illegal access) then cannot cost the anchors."""
    import torch

    try:
        from .runtime.triton_outer import chunked_outer_triton
    except ImportError as exc:
        return [Row(group, "generated kernel only (chunked_outer_triton)", T, dims, skipped=str(exc))], list
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def row(cfg):
        kw = {} if cfg is None else dict(zip(("chunk", "block_v", "num_warps", "schedule"), cfg))

        def kern(kw=kw):
            return chunked_outer_triton(ins[0], ins[1], ins[2], g, **kw)

        label = "generated kernel only (chunked_outer_triton)" + (
            "" if cfg is None else " chunk={} block_v={} warps={} {}".format(*cfg))
        r = _bench_impl(group, label, T, dims, kern, ins, device, repeats, dtype, min_bytes,
                        note=note if cfg is None else "sweep", y_ref=y_ref)
        return r

    def sweep():
        if not _sweeping(device, T):
            return []
        configs = OUTER_SWEEP["per_key" if g is not None and g.dim() == 4 else "scalar"]
        if _WARM is not None:  # --warm: each process compiles a slice
            configs = configs[_WARM[0]::_WARM[1]]
        return [row(cfg) for cfg in configs]

    return [row(None)], sweep


def _fla_qkv(env, x, W_V, dtype):
    import torch

    v = torch.einsum("btm,hvm->bthv", x.float(), W_V.float())
    return v.to(dtype).detach()


def bench_gla(B, T, dims, device, repeats, dtype, loop_max_T):
    import torch

    def min_bytes(env, x):  # q, k, g [B,T,H,K]; v [B,T,H,V]; y [B,T,H,V]
        v = env["q"].shape[:2] + (dims["H"], dims["V"])
        return _nbytes(env["q"], env["k"], env["alpha"]) + 2 * math.prod(v) * _IO_BYTES

    rows = []
    gen, y_gen, env = _generated_rows("gla", "gla", dims, B, T, device, repeats, dtype, min_bytes)
    x = env["u_"]
    rows.append(gen)
    H, K, V = dims["H"], dims["K"], dims["V"]
    v = _fla_qkv(env, x, env["W_V"], dtype)
    g = torch.log(env["alpha"].float()).detach()
    kernel_rows, sweep = _kernel_rows("gla", T, dims, device, repeats, dtype, gen.min_bytes, y_gen.reshape(B, T, H, V),
                                      (env["q"].float() * K ** -0.5).to(dtype), env["k"].to(dtype), v, g,
                                      "same q, k, v, g as fla")
    rows.extend(kernel_rows)
    fn, reason = import_anchor("chunk_gla")
    if fn is None:
        rows.append(Row("gla", "fla chunk_gla", T, dims, skipped=reason))
        rows.extend(sweep())
        return rows
    ins = [t.detach().clone().to(dtype).requires_grad_() for t in (env["q"], env["k"])] + [v.detach().requires_grad_()]

    def fla():
        return fn(ins[0], ins[1], ins[2], g=g, scale=K ** -0.5)[0]

    r = _bench_impl("gla", "fla chunk_gla", T, dims, fla, ins, device, repeats, dtype, gen.min_bytes,
                    y_ref=y_gen.reshape(B, T, -1))
    rows.append(r)
    rows.extend(sweep())
    return rows


def bench_gla_step(B, T, dims, device, repeats, dtype, loop_max_T):
    """One GLA decoding step (T = 1, whatever ``T`` says) from a random carried state: the generated module's core at
    T = 1 (from a zero state), the decode kernel alone (``chunked_outer_triton`` at T = 1, no autograd: one launch
    of ``_outer_step``) and fla's ``fused_recurrent_gla``, the last two on the same q, k, v, g and state."""
    import torch

    from .runtime.triton_outer import chunked_outer_triton

    H, K, V = dims["H"], dims["K"], dims["V"]

    def min_bytes(env, x):  # the fp32 state [B, H, K, V] read and written; q, k, g [B, H, K]; v, y [B, H, V]
        return 2 * B * H * K * V * 4 + _nbytes(env["q"], env["k"], env["alpha"]) + 2 * B * H * V * _IO_BYTES

    rows = []
    gen, _, env = _generated_rows("gla_step", "gla", dims, B, 1, device, repeats, dtype, min_bytes)
    gen.note = "the module's core at T = 1 from a zero state (the decode kernel)"
    rows.append(gen)
    q = (env["q"].float() * K ** -0.5).to(dtype).detach()
    k = env["k"].to(dtype).detach()
    v = _fla_qkv(env, env["u_"], env["W_V"], dtype).detach()
    g = torch.log(env["alpha"].float()).detach()
    s0 = 0.1 * torch.randn(B, H, K, V, device=device, generator=torch.Generator(device=device).manual_seed(2))

    def kernel():
        return chunked_outer_triton(q, k, v, g, s0)

    rows.append(_bench_impl("gla_step", "generated decode kernel (chunked_outer_triton, T = 1)", 1, dims, kernel,
                            [], device, repeats, dtype, gen.min_bytes, note="from a random state"))
    with torch.no_grad():
        y_kernel = kernel().float()
    fn, reason = import_anchor("fused_recurrent_gla")
    if fn is None:
        rows.append(Row("gla_step", "fla fused_recurrent_gla", 1, dims, skipped=reason))
        return rows

    def fla():
        return fn(q, k, v, gk=g, scale=1.0, initial_state=s0, output_final_state=True)[0]

    rows.append(_bench_impl("gla_step", "fla fused_recurrent_gla", 1, dims, fla, [], device, repeats, dtype,
                            gen.min_bytes, note="from the same state; compared with the decode kernel",
                            y_ref=y_kernel.reshape(B, 1, -1)))
    return rows


def bench_linear_attention(B, T, dims, device, repeats, dtype, loop_max_T):
    import torch

    def min_bytes(env, x):
        v = env["qf"].shape[:2] + (dims["H"], dims["V"])
        return _nbytes(env["qf"], env["kf"]) + 2 * math.prod(v) * _IO_BYTES

    rows = []
    gen, y_gen, env = _generated_rows("linear_attention", "linear_attention", dims, B, T, device, repeats, dtype,
                                      min_bytes)
    x = env["u_"]
    rows.append(gen)
    K = dims["K"]
    v = _fla_qkv(env, x, env["W_V"], dtype)
    kernel_rows, sweep = _kernel_rows("linear_attention", T, dims, device, repeats, dtype, gen.min_bytes,
                                      y_gen.reshape(B, T, dims["H"], dims["V"]),
                                      (env["qf"].float() * K ** -0.5).to(dtype), env["kf"].to(dtype), v, None,
                                      "same q, k, v as fla")
    rows.extend(kernel_rows)
    fn, reason = import_anchor("chunk_linear_attn")
    if fn is None:
        rows.append(Row("linear_attention", "fla chunk_linear_attn", T, dims, skipped=reason))
        rows.extend(sweep())
        return rows
    ins = [t.detach().clone().to(dtype).requires_grad_() for t in (env["qf"], env["kf"])]
    ins.append(v.detach().requires_grad_())

    def fla():
        return fn(ins[0], ins[1], ins[2], scale=K ** -0.5, normalize=False)[0]

    r = _bench_impl("linear_attention", "fla chunk_linear_attn", T, dims, fla, ins, device, repeats, dtype,
                    gen.min_bytes, y_ref=y_gen.reshape(B, T, -1))
    rows.append(r)
    rows.extend(sweep())
    return rows


def bench_softmax_attention(B, T, dims, device, repeats, dtype, loop_max_T):
    """The quadratic family's fused softmax kernels (dsfc/runtime/triton_softmax.py: y and the causal log-sum-exp
    in one FlashAttention-2 pass, as the generated softmax module calls them on backend="triton") vs torch's
    scaled_dot_product_attention (causal; FlashAttention on a GPU in bf16 / fp16) on the same q, k, v, and the two
    passes the module called before (dsfc/runtime/triton_attention.py: the log-sum, then the attention with row
    = -L) in the run's dtype, for what the fusion buys.

    Two generated rows: fp32 (exact products, the generated module's compute dtype) and the run's dtype (bf16 / fp16
    q, k, v: the kernels' tensor-core path; fp16 on CPU, where the run is fp32). The fp32 row's
    output is every other row's ``y_ref`` (the most accurate one here: a row's max_rel_diff_vs_generated is its own
    error); the run-dtype row, listed last of the generated rows, is the group's reference for the speed ratios, as
    the other groups' generated rows run in the run's dtype."""
    import torch
    import torch.nn.functional as F

    from .runtime.triton_attention import kernel_attention_triton, kernel_log_sum_triton
    from .runtime.triton_softmax import softmax_attention_triton

    H, K, V = dims["H"], dims["K"], dims["V"]
    g = torch.Generator(device=device).manual_seed(1)
    q, k = (torch.randn(B, T, H, K, device=device, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, V, device=device, generator=g)
    scale = K ** -0.5
    mb = _nbytes(q, k, v) + B * T * H * V * 4

    def softmax_attention(xs):
        """y = softmax(scale q k^T, causal) v and L (unused here) from the fused kernels."""
        return softmax_attention_triton(xs[0], xs[1], xs[2], scale)[0]

    def two_pass(xs):
        """y as two kernel calls, L = log sum_j exp(scale q k_j) (fp32 also for half inputs: rounding it would cost
        ~2% in every weight), then sum_j exp(scale q k_j - L) v_j."""
        L = kernel_log_sum_triton(xs[0], xs[1], scale, True, out_dtype=torch.float32)
        return kernel_attention_triton(xs[0], xs[1], xs[2], -L, None, scale)

    ins32 = [x.clone().requires_grad_() for x in (q, k, v)]
    rows = [_bench_impl("softmax_attention", "generated (triton, fp32)", T, dims, lambda: softmax_attention(ins32),
                        ins32, device, repeats, torch.float32, mb, note="exact fp32 products")]
    with torch.no_grad():
        y_gen = softmax_attention(ins32).float()
    # a CPU run is fp32 throughout (run()); there the half row takes fp16, the dtype of the interpreter's half path
    # (its bf16 tl.dot is wrong), so that the smoke test covers that path's wiring
    half = dtype if dtype != torch.float32 else torch.float16 if device == "cpu" else None
    if half is not None:
        ins_half = [x.detach().to(half).requires_grad_() for x in (q, k, v)]
        rows.append(_bench_impl("softmax_attention", f"two-pass kernels (triton, {str(half)[6:]})", T, dims,
                                lambda: two_pass(ins_half), ins_half, device, repeats, half, mb,
                                note="log-sum pass, then attention with row = -L", y_ref=y_gen))
        rows.append(_bench_impl("softmax_attention", f"generated (triton, {str(half)[6:]})", T, dims,
                                lambda: softmax_attention(ins_half), ins_half, device, repeats, half, mb,
                                note="tensor-core products, fp32 statistics", y_ref=y_gen))
    for dt in dict.fromkeys((dtype, torch.float32)):  # the run's dtype (FlashAttention for half), and fp32
        sdpa_ins = [x.detach().transpose(1, 2).to(dt).requires_grad_() for x in (q, k, v)]

        def sdpa(xs=sdpa_ins):
            return F.scaled_dot_product_attention(*xs, is_causal=True, scale=scale).transpose(1, 2)

        rows.append(_bench_impl("softmax_attention", f"torch scaled_dot_product_attention ({str(dt)[6:]})", T, dims,
                                sdpa, sdpa_ins, device, repeats, dt, mb, y_ref=y_gen))
    return rows


def bench_gated_deltanet(B, T, dims, device, repeats, dtype, loop_max_T):
    """Gated DeltaNet: the generated Triton path (the chunk-parallel torch maths of the WY form around the
    state-passing kernel), the module's torch path on the same lets (a Python loop over chunks in place of the
    kernel: the ratio is what the kernel buys) and fla's ``chunk_gated_delta_rule`` on the same q, k, v, g, beta."""
    import torch
    import torch.nn.functional as F

    H, K, V = dims["H"], dims["K"], dims["V"]

    def min_bytes(env, x):  # q, k [B,T,H,K]; v, y [B,T,H,V]; g, beta [B,T,H]
        return B * T * H * (2 * K + 2 * V + 2) * _IO_BYTES

    rows = []
    gen, y_gen, env = _generated_rows("gated_deltanet", "gated_deltanet", dims, B, T, device, repeats, dtype,
                                      min_bytes)
    rows.append(gen)
    _, leaves = env["_bench"]

    def torch_path_row():  # after the anchor: on the 2026-11-27 H100 the group's limit cut fla's row behind it
        return _bench_impl("gated_deltanet", "generated (torch path: chunk loop in Python)", T, dims,
                           env["_torch_path"], leaves, device, repeats, torch.float32, gen.min_bytes,
                           note="same lets as the Triton row", y_ref=y_gen.reshape(B, T, -1))

    fn, reason = import_anchor("chunk_gated_delta_rule")
    if fn is None:
        rows.append(Row("gated_deltanet", "fla chunk_gated_delta_rule", T, dims, skipped=reason))
        rows.append(torch_path_row())
        return rows
    # the spec's value is silu(W_V u) (B u = beta k sigmoid(vpre) vpre); beta and the decay go to fla separately
    ins = [t.detach().clone().to(dtype).requires_grad_()
           for t in (env["q"], env["k"], F.silu(env["vpre"].float()))]
    g = torch.log(env["alpha"].float()).detach()
    beta = env["beta"].to(dtype).detach()

    def fla():
        return fn(ins[0], ins[1], ins[2], g=g, beta=beta, scale=K ** -0.5)[0]

    rows.append(_bench_impl("gated_deltanet", "fla chunk_gated_delta_rule", T, dims, fla, ins, device, repeats,
                            dtype, gen.min_bytes, y_ref=y_gen.reshape(B, T, -1)))
    rows.append(torch_path_row())
    return rows


BENCHES = {"s6": bench_s6, "s6_step": bench_s6_step, "ssd": bench_ssd, "gla": bench_gla,
           "gla_step": bench_gla_step, "linear_attention": bench_linear_attention,
           "softmax_attention": bench_softmax_attention, "gated_deltanet": bench_gated_deltanet}


# ---- command line ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dsfc bench --gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, T=1024 only (a few minutes)")
    p.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS))
    p.add_argument("-T", type=int, nargs="+", help="sequence lengths (default: 1024 4096 16384; quick: 1024)")
    p.add_argument("--batch", type=int, help="batch size (default 8)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                   help="input dtype (default: bf16 on a GPU, fp32 for the CPU smoke test)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loop-max-T", type=int, default=4096, help="longest T for the sequential torch loop row")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: tiny sizes under TRITON_INTERPRET=1, a smoke test of the wiring (not a benchmark)")
    p.add_argument("-o", "--output", type=Path, help="JSON path (default benchmarks/results/<device>.json)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="merge these reports of one device (one per group, as gpu_check.sh writes) into one, and exit")
    p.add_argument("--markdown", action="store_true", help="also print the rows as a Markdown table (for the README)")
    p.add_argument("--warm", metavar="PART/PARTS",
                   help="compile only (nothing timed): run each row once with every triton.autotune cut to slice PART "
                        "of PARTS of its configs; PARTS processes in parallel fill triton's kernel cache for a timed "
                        "run (benchmarks/gpu_check.sh does this)")
    args = p.parse_args(argv)
    if args.warm is not None:
        m = re.fullmatch(r"(\d+)/(\d+)", args.warm)
        if not m or not int(m[1]) < int(m[2]):
            p.error(f"--warm wants PART/PARTS with 0 <= PART < PARTS, got {args.warm!r}")
        args.warm = (int(m[1]), int(m[2]))
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.T and any(t < 1 for t in args.T):
        p.error("-T values must be >= 1")
    if args.batch is not None and args.batch < 1:  # --batch 0 fell back to the default 8 (plan_sizes tests truth)
        p.error(f"--batch must be >= 1, got {args.batch}")
    return args


def plan_sizes(args) -> dict:
    base = SMOKE if args.device == "cpu" else (QUICK if args.quick else FULL)
    sizes = dict(base)
    if args.T:
        sizes["T"] = tuple(args.T)
    if args.batch:
        sizes["batch"] = args.batch
    return sizes


def run(args, path: Path | None = None) -> Report:
    """Run the groups; when ``path`` is given the report so far is written there after each group."""
    name = device_name(args.device)
    import torch

    key = device_key(name) if args.device == "cuda" else None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    # the CPU smoke test defaults to fp32 (the interpreter's bf16 tl.dot is wrong); --dtype bf16 there still checks
    # the half-input wiring of the groups without tensor-core products (S6)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if args.device == "cpu" else "bf16")]
    sizes = plan_sizes(args)
    global _IO_BYTES, _SIZES_T, _WARM
    _SIZES_T = tuple(sizes["T"])
    _WARM = getattr(args, "warm", None)
    if _WARM is not None:
        slice_autotune_configs(*_WARM)
    _IO_BYTES = torch.empty((), dtype=dtype).element_size()
    report = Report(device=name, peak=PEAKS.get(key) if key else None, torch=torch.__version__, triton=triton_version,
                    mode=("warm " if _WARM else "")
                    + ("smoke" if args.device == "cpu" else ("quick" if args.quick else "full")),
                    started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    peak_bw = report.peak["hbm_GBps"] if report.peak else None
    repeats = 1 if args.device == "cpu" else args.repeats
    global _CHECKPOINT
    pending: list[Row] = []

    def checkpoint(row):
        pending.append(row)
        if path is not None:
            partial = Report(**{**asdict(report), "rows": []})
            partial.rows = report.rows + pending
            add_ratios(partial.rows, peak_bw)
            write_report(partial, path)

    _CHECKPOINT = checkpoint
    for group in args.groups:
        step = group.endswith("_step")  # one token: T is 1, and a launch-bound time needs more repeats
        for T in (1,) if step else sizes["T"]:
            print(f"-- {group} T={T}", file=sys.stderr, flush=True)
            pending.clear()
            try:
                rows = BENCHES[group](sizes["batch"], T, sizes[group], args.device, repeats * (10 if step else 1),
                                      dtype, args.loop_max_T)
            except Exception as exc:  # noqa: BLE001 - a failed group is a row, the run goes on
                traceback.print_exc(file=sys.stderr)
                why = f"group failed: {type(exc).__name__}: {exc}"[:300]
                rows = [Row(group, "generated", T, sizes[group], skipped=why)]
            pending.clear()
            report.rows += rows
            if args.device == "cuda":
                torch.cuda.empty_cache()
            if path is not None:
                add_ratios(report.rows, peak_bw)
                write_report(report, path)
    _CHECKPOINT = None
    add_ratios(report.rows, peak_bw)
    report.complete = True
    return report


def device_name(device: str) -> str:
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see dsfc.check)
        return f"cpu-{platform.machine()}"
    import torch

    if not torch.cuda.is_available():
        # "use --device cpu" named an option dsfc bench --gpu does not take ("unrecognized arguments: --device")
        raise SystemExit("dsfc bench --gpu: no CUDA device (a smoke test of the wiring on CPU: "
                         "python benchmarks/gpu_bench.py --device cpu)")
    return torch.cuda.get_device_name()


def merge_reports(paths: list[Path]) -> Report:
    """One report from several of the same device and versions (gpu_check.sh runs each group in its own process).
    It is complete only if every part is; a part that cannot be read is an error naming it."""
    parts = []
    for path in paths:
        try:
            parts.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"dsfc bench --merge: cannot read {path}: {exc}") from None
    if not parts:
        raise SystemExit("dsfc bench --merge: no reports given")
    first = parts[0]
    for path, part in zip(paths, parts):
        for key in ("device", "torch", "triton"):
            if part.get(key) != first.get(key):
                raise SystemExit(f"dsfc bench --merge: {path} has {key}={part.get(key)!r}, "
                                 f"{paths[0]} has {first.get(key)!r}: results of different set-ups do not merge")
    rows = [Row(**row) for part in parts for row in part["rows"]]
    modes = sorted({part["mode"] for part in parts})
    report = Report(device=first["device"], peak=first["peak"], torch=first["torch"], triton=first["triton"],
                    mode="+".join(modes), started=min(part["started"] for part in parts), rows=rows,
                    complete=all(part["complete"] for part in parts))
    add_ratios(report.rows, report.peak["hbm_GBps"] if report.peak else None)
    return report


def format_markdown(rows: list[Row]) -> str:
    head = ("| group | implementation | T | fwd ms | fwd+bwd ms | GB/s (% peak) | generated / this, fwd | fwd+bwd "
            "| max rel diff |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]

    def f(x, fmt):
        return format(x, fmt) if x is not None else "—"

    for r in rows:
        if r.skipped:
            out.append(f"| {r.group} | {r.impl} | {r.T} | skipped: {r.skipped} | | | | | |")
            continue
        if r.frac_peak_bw is not None:
            bw = f"{r.achieved_GBps:.0f} ({100 * r.frac_peak_bw:.0f}%)"
        else:
            bw = f(r.achieved_GBps, ".0f")
        out.append(f"| {r.group} | {r.impl} | {r.T} | {f(r.fwd_ms, '.3f')} | {f(r.fwdbwd_ms, '.3f')} | {bw} | "
                   f"{f(r.speedup_vs_generated_fwd, '.2f')} | {f(r.speedup_vs_generated_fwdbwd, '.2f')} | "
                   f"{f(r.max_rel_diff_vs_generated, '.1e')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        report = merge_reports(args.merge)
        path = write_report(report, args.output or result_path(report.device))
        print(f"device: {report.device}  torch {report.torch}  triton {report.triton}  complete {report.complete}")
        print(format_markdown(report.rows) if args.markdown else format_rows(report.rows))
        print(f"wrote {path}")
        return 0
    path = args.output or result_path(device_name(args.device))
    report = run(args, path)  # writes the rows so far after each group: a run cut off by a timeout keeps them
    print(f"device: {report.device}  peak: {report.peak}  torch {report.torch}  triton {report.triton}  "
          f"mode {report.mode}")
    print(format_rows(report.rows))
    if args.markdown:
        print(format_markdown(report.rows))
    write_report(report, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
