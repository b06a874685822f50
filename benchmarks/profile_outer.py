"""Where the time of ``chunked_outer_triton`` goes on a GPU: one torch.profiler table (CUDA time per kernel) per
configuration, forward and forward+backward, at the benchmark's GLA / SSD sizes. A diagnostic for tuning, not a test.

    python benchmarks/profile_outer.py [--decay per_key|scalar] [-T 4096] [--configs 64,64,8,split 16,128,8,fused]
        [--fla] [-o out.json]

``--fla`` profiles fla's ``chunk_gla`` (per key) / ``chunk_simple_gla`` (scalar) on the same inputs too (its
autotuning makes the first call slow). Writes the tables (and a JSON of per-kernel milliseconds per call) to -o.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsfc


def _inputs(decay: str, B: int, T: int, H: int, K: int, V: int, dtype, device):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=gen)

    q = (randn(B, T, H, K) * K**-0.5).to(dtype).requires_grad_()
    k = (randn(B, T, H, K) * K**-0.5).to(dtype).requires_grad_()
    v = randn(B, T, H, V).to(dtype).requires_grad_()
    # GLA: log-sigmoid gates / 16 (fla's convention); SSD-like scalar: -softplus
    g = (F.logsigmoid(randn(B, T, H, K)) / 16) if decay == "per_key" else -F.softplus(randn(B, T, H))
    return q, k, v, g.float().requires_grad_()


def _profile(fn, grad_inputs, backward: bool, repeats: int, device: str):
    """{kernel name: device ms per call} of fn (and its backward) over ``repeats`` calls after two warm-up calls
    (on CPU, a smoke test: the CPU ops' self time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def once():
        y = fn()
        if backward:
            torch.autograd.grad(y, grad_inputs, torch.ones_like(y))

    for _ in range(2):
        once()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            once()
        sync()
    times = {}
    for e in prof.key_averages():
        t = (getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)) if cuda else e.self_cpu_time_total
        if t and (not cuda or e.device_type.name == "CUDA"):
            times[e.key[:90]] = t / 1000 / repeats
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def _table(title: str, times: dict) -> str:
    total = sum(times.values())
    lines = [f"-- {title}: {total:.3f} ms of kernels per call"]
    lines += [f"   {ms:8.3f} ms  {100 * ms / total:5.1f}%  {name}" for name, ms in times.items() if ms > 0.002 * total]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decay", choices=("per_key", "scalar"), default="per_key")
    p.add_argument("-B", type=int, default=8)
    p.add_argument("-T", type=int, default=4096)
    p.add_argument("-H", type=int, default=16)
    p.add_argument("-K", type=int, default=128)
    p.add_argument("-V", type=int, default=128)
    p.add_argument("--configs", nargs="*", default=["default"],
                   help="chunk,block_v,num_warps,schedule (or 'default': chunked_outer_triton's own choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fla", action="store_true")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=INT",
                   help="set dsfc.runtime.triton_outer tuning constants first (e.g. SCORES_WARPS=8)")
    p.add_argument("-o", "--output")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a smoke test of this script under TRITON_INTERPRET=1 (tiny sizes), not a profile")
    args = p.parse_args(argv)

    import torch

    import dsfc.runtime.triton_outer as triton_outer
    from dsfc.runtime.triton_outer import chunked_outer_triton

    for assignment in args.set:
        name, _, value = assignment.partition("=")
        if not name.isupper() or not hasattr(triton_outer, name) or not value.lstrip("-").isdigit():
            p.error(f"--set {assignment!r}: expected NAME=INT with NAME a tuning constant of triton_outer")
        setattr(triton_outer, name, int(value))

    if args.device == "cuda" and not torch.cuda.is_available():
        print("profile_outer.py needs a CUDA GPU (--device cpu: a smoke test)", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    q, k, v, g = _inputs(args.decay, args.B, args.T, args.H, args.K, args.V, dtype, args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(name, "torch", torch.__version__, "B T H K V", args.B, args.T, args.H, args.K, args.V, args.decay,
          " ".join(args.set), flush=True)
    runs = {}
    for cfg in args.configs:
        kw = {} if cfg == "default" else dict(zip(("chunk", "block_v", "num_warps"), map(int, cfg.split(",")[:3])),
                                               schedule=cfg.split(",")[3])
        for backward in (False, True):
            title = f"dsfc {cfg} {'fwd+bwd' if backward else 'fwd'}"
            try:
                times = _profile(lambda: chunked_outer_triton(q, k, v, g, **kw), [q, k, v, g], backward, args.repeats,
                                 args.device)
            except Exception as exc:  # noqa: BLE001 - one configuration failing must not end the run
                print(f"-- {title}: failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                continue
            runs[title] = times
            print(_table(title, times), flush=True)
    if args.fla:
        try:
            if args.decay == "per_key":
                from fla.ops.gla import chunk_gla as fla_fn
            else:
                from fla.ops.simple_gla import chunk_simple_gla as fla_fn
        except ImportError as exc:
            print(f"-- fla: not importable ({exc})")
        else:
            for backward in (False, True):
                title = f"fla {fla_fn.__name__} {'fwd+bwd' if backward else 'fwd'}"
                try:
                    times = _profile(lambda: fla_fn(q, k, v, g, scale=1.0)[0], [q, k, v, g], backward, args.repeats,
                                 args.device)
                except Exception as exc:  # noqa: BLE001
                    print(f"-- {title}: failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    continue
                runs[title] = times
                print(_table(title, times), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
