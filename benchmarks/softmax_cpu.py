"""CPU timing of the softmax-attention modules' torch path: the fused pass (``dsfc.runtime.torch_softmax``) against
the previous two-pass path (``kernel_log_sum`` then ``kernel_attention``) and SDPA, in one process, interleaved.

    python benchmarks/softmax_cpu.py                          # softmax attention, T in {1024, 2048}, 1 and 2 threads
    python benchmarks/softmax_cpu.py --specs fox -T 2048 --threads 2

Every variant is the same generated module (generated/<spec>.py, d = 256, 4 heads of K = V = 64, batch 2, fp32) with
its attention swapped: "fused" as generated, "two-pass" with ``softmax_attention_torch`` taken away (the template's
other branch), "sdpa" with it replaced by ``torch.nn.functional.scaled_dot_product_attention`` (causal, the decay as
a float mask; ``benchmarks/cpu_profile.py``'s baseline). fwd: forward under no_grad; fwd+bwd: forward and backward to
the input and the parameters with a random output gradient. Medians of ``--repeats`` interleaved runs, after one
warm-up of each; max rel: each variant's output against the fused one's.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.cpu_profile import base_softmax  # noqa: E402

DIMS = {"softmax_attention": dict(d=256, H=4, K=64, V=64), "fox": dict(d=256, H=4, K=64, V=64)}


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run(spec: str, T: int, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    mod = importlib.import_module(f"generated.{spec}")
    cls = next(v for v in vars(mod).values()
               if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == mod.__name__)
    torch.manual_seed(0)
    model = cls(**DIMS[spec], backend="torch")
    fused = mod.softmax_attention_torch
    variants = {"fused": fused, "two-pass": None, "sdpa": base_softmax}
    u = torch.randn(2, T, model._in_features())
    ug = u.clone().requires_grad_()
    gy = torch.randn(2, T, model(u[:, :1]).shape[-1])
    outs, times = {}, {name: {"fwd": [], "fwd+bwd": []} for name in variants}

    def fwd():
        with torch.no_grad():
            return model(u)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(ug).backward(gy)

    for name, fn in variants.items():  # warm-up and outputs
        mod.softmax_attention_torch = fn
        outs[name] = fwd()
        fwd_bwd()
    for _ in range(repeats):
        for name, fn in variants.items():
            mod.softmax_attention_torch = fn
            times[name]["fwd"].append(_ms(fwd))
            times[name]["fwd+bwd"].append(_ms(fwd_bwd))
    mod.softmax_attention_torch = fused
    ref = outs["fused"]
    return {name: {**{k: statistics.median(v) for k, v in t.items()},
                   "max_rel": float((outs[name] - ref).abs().max() / ref.abs().max())} for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", nargs="*", default=["softmax_attention"], choices=sorted(DIMS))
    ap.add_argument("-T", nargs="*", type=int, default=[1024, 2048])
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print("batch 2, fp32, d = 256, H = 4, K = V = 64; ms (medians); ratios to SDPA in parentheses")
    print(f"{'spec':18s} {'T':>5s} {'thr':>3s} {'variant':9s} {'fwd ms':>14s} {'fwd+bwd ms':>16s} {'max rel':>8s}")
    for spec in a.specs:
        for threads in a.threads:
            for T in a.T:
                res = run(spec, T, threads, a.repeats)
                base = res["sdpa"]
                for name, r in res.items():
                    f, b = r["fwd"], r["fwd+bwd"]
                    print(f"{spec:18s} {T:5d} {threads:3d} {name:9s} {f:8.1f} ({f / base['fwd']:3.1f}x) "
                          f"{b:9.1f} ({b / base['fwd+bwd']:3.1f}x) {r['max_rel']:8.1e}", flush=True)


if __name__ == "__main__":
    main()
