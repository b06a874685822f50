"""Per-call cost of ``step`` (one decoding token) at tiny sizes, where the per-token maths is negligible and the
module's Python (argument and parameter checks, the finite check, dispatch) is what is timed.

    python benchmarks/step_overhead.py                 # s6, ssd, gla, rg_lru; torch backend; batch 1
    python benchmarks/step_overhead.py --triton        # also backend="triton" (TRITON_INTERPRET=1 on CPU)
    python benchmarks/step_overhead.py --profile s6    # cProfile of 300 steps of one spec, top 25 by own time

Each row: the fastest of 7 rounds of the mean per-call time of ``--calls`` steps (perf_counter), fp32, no_grad,
one thread (``--clock thread_time``: this thread's CPU time, steadier on a shared machine). ``py calls``: the
Python-level function calls of one step (cProfile's count: the same however loaded the machine is). ``step``: the
module's step; ``forward T=1``: ``forward(u_t[:, None], state, True)``, which step calls; ``torch maths``: S6's
step written inline in plain torch without any check (the floor for a Python-level step). ``ops per step``:
aten ops / of them not views / Triton launches of one step (``count_ops``; counts, the same on any machine: on a
GPU each non-view op or launch is a kernel launch or an allocation, ~5 us of host time at T = 1). Under the Triton
interpreter (``--triton`` on CPU) the kernel itself runs in Python: only differences between runs mean anything.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# tiny dims: a decode step whose maths costs a few microseconds
DIMS = {
    "s6": {"d": 16, "n": 4, "r": 2},
    "ssd": {"H": 2, "P": 4, "n": 4, "G": 1},
    "gla": {"d": 16, "H": 2, "K": 4, "V": 4, "R": 2},
    "rg_lru": {"W": 16, "nh": 2},
}


def _model(name: str, backend: str):
    import torch

    mod = importlib.import_module(f"generated.{name}")
    cls = next(v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == mod.__name__)
    return cls(**DIMS[name], backend=backend)


CLOCK = time.perf_counter


def _time(fn, calls: int) -> float:
    """Fastest of 7 rounds of the mean seconds per call (the machine is shared: the slower rounds are the noise)."""
    fn()
    rounds = []
    for _ in range(7):
        t0 = CLOCK()
        for _ in range(calls):
            fn()
        rounds.append((CLOCK() - t0) / calls)
    return min(rounds)


def _python_calls(fn) -> int:
    """Python function calls (and C functions called from Python) of one call of ``fn``: a count, not a time, so
    the same on a loaded machine."""
    fn()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    return sum(v[1] for v in pstats.Stats(prof).stats.values())


# aten ops that only make a view or read metadata: no kernel, no allocation (still a dispatcher call each)
VIEW_OPS = frozenset({"view", "_unsafe_view", "permute", "unsqueeze", "squeeze", "detach", "select", "slice", "expand",
                      "as_strided", "t", "transpose", "alias", "promote_types", "reshape", "split", "unbind"})


def count_ops(fn):
    """``(aten ops by name, Triton launches)`` of one call of ``fn``: every aten op the dispatcher sees (a
    ``TorchDispatchMode``; views included: each is a dispatcher call) and every launch of a ``@triton.jit`` kernel
    (compiled or interpreted). Counts, not times: what a decode step costs on a GPU, where each launch is ~5 us of
    host time whatever the maths, and the same on a loaded machine."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    ops, launches = collections.Counter(), [0]

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    patched = []
    try:
        import triton.runtime.interpreter as interp
        import triton.runtime.jit as jit

        for cls in (jit.JITFunction, interp.InterpretedFunction):
            def run(self, *a, _orig=cls.run, **k):
                launches[0] += 1
                with _disable_current_modes():  # the interpreter's own tensor ops are the kernel, not the step
                    return _orig(self, *a, **k)
            patched.append((cls, cls.run))
            cls.run = run
    except ImportError:
        pass
    try:
        with _Count():
            fn()
    finally:
        for cls, orig in patched:
            cls.run = orig
    return ops, launches[0]


def kernel_ops(ops) -> int:
    """The ops of ``count_ops`` that are not views: allocations, maths, copies, host reads."""
    return sum(n for name, n in ops.items() if name not in VIEW_OPS)


def _s6_inline(model, u_t, h):
    """S6's step in plain torch, no checks: the floor."""
    import torch
    import torch.nn.functional as F

    dt = F.softplus(model.b_dt + (u_t @ model.W_xdt.T) @ model.W_dt.T)
    a = torch.exp(-torch.exp(model.A_log) * dt[:, :, None])
    h = a * h + (u_t @ model.W_B.T)[:, None, :] * (dt * u_t)[:, :, None]
    y = torch.einsum("bj,bij->bi", u_t @ model.W_C.T, h) + model.D * u_t
    return y, h


def rows(names, backends, calls: int, batch: int):
    import torch

    out = []
    for name in names:
        for backend in backends:
            model = _model(name, backend)
            u_t = torch.randn(batch, model._in_features())
            with torch.no_grad():
                _, state = model.step(u_t)
                step_s = _time(lambda: model.step(u_t, state), calls)
                fwd_s = _time(lambda: model(u_t[:, None], initial_state=state, output_final_state=True), calls)
                row = {"spec": name, "backend": backend, "step_us": step_s * 1e6, "forward_T1_us": fwd_s * 1e6,
                       "step_calls": _python_calls(lambda: model.step(u_t, state))}
                ops, launches = count_ops(lambda: model.step(u_t, state))
                row.update(step_ops=sum(ops.values()), step_kernel_ops=kernel_ops(ops), step_launches=launches)
                if name == "s6" and backend == "torch":
                    row["torch_maths_us"] = _time(lambda: _s6_inline(model, u_t, state), calls) * 1e6
            out.append(row)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", nargs="+", default=list(DIMS))
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--triton", action="store_true", help="also backend='triton' (interpreted on CPU)")
    ap.add_argument("--profile", metavar="SPEC", help="cProfile 300 steps of SPEC instead of timing")
    ap.add_argument("--clock", choices=["perf_counter", "thread_time"], default="perf_counter",
                    help="thread_time: this thread's CPU time (less swayed by other processes on a shared machine)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = getattr(time, args.clock)
    if args.triton or (args.profile and os.environ.get("TRITON_INTERPRET") is None and "--triton" in sys.argv):
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    torch.set_num_threads(1)
    backends = ["torch", "triton"] if args.triton else ["torch"]
    if args.profile:
        model = _model(args.profile, backends[-1])
        u_t = torch.randn(args.batch, model._in_features())
        with torch.no_grad():
            _, state = model.step(u_t)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(300):
                model.step(u_t, state)
            prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    print(f"{'spec':8} {'backend':8} {'step us':>9} {'forward T=1 us':>15} {'py calls':>9} {'ops per step':>13} "
          f"{'torch maths us':>15}")
    for r in rows(args.specs, backends, args.calls, args.batch):
        maths = f"{r['torch_maths_us']:15.1f}" if "torch_maths_us" in r else ""
        ops = f"{r['step_ops']}/{r['step_kernel_ops']}/{r['step_launches']}"
        print(f"{r['spec']:8} {r['backend']:8} {r['step_us']:9.1f} {r['forward_T1_us']:15.1f} {r['step_calls']:9d} "
              f"{ops:>13} {maths}")


if __name__ == "__main__":
    main()
