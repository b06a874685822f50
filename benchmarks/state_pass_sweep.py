"""Where the per-key outer-product scan's state passes could go faster on a GPU: times ``_outer_fwd`` as the
backward's recompute (states stored, no y) and as the forward (y, with and without storing the states), and
``_outer_bwd``, over value-slice widths and warps, at the benchmark's GLA sizes. A diagnostic, not a test.

    python benchmarks/state_pass_sweep.py [-T 4096] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsfc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-B", type=int, default=8)
    p.add_argument("-T", type=int, default=4096)
    p.add_argument("-H", type=int, default=16)
    p.add_argument("-K", type=int, default=128)
    p.add_argument("-V", type=int, default=128)
    p.add_argument("--decay", choices=("per_key", "scalar"), default="per_key")
    p.add_argument("-o", "--output")
    args = p.parse_args(argv)
    import torch
    import triton.testing

    from benchmarks.profile_outer import _inputs
    from dsfc.runtime import triton_outer as to

    if not torch.cuda.is_available():
        print("state_pass_sweep.py needs a CUDA GPU (it times kernels; tests/triton checks them on the CPU)",
              file=sys.stderr)
        return 2
    q, k, v, g = (x.detach() for x in _inputs(args.decay, args.B, args.T, args.H, args.K, args.V, torch.bfloat16,
                                               "cuda"))
    decay = 2 if args.decay == "per_key" else 1
    tiles = to.default_tiles(True, 1, decay, args.K, args.V)
    L0 = to._Launch(args.B, args.T, args.H, args.K, args.V, decay, tiles.chunk, tiles.block_k, tiles.block_v,
                    torch.float32, 1, tiles.num_warps, 0)
    s0 = torch.zeros((args.B, args.H, args.K, args.V), device="cuda")
    p_scores = to._scores(L0, q, k, g)
    dy = torch.randn(args.B, args.T, args.H, args.V, device="cuda")
    dsT = torch.zeros_like(s0)
    print(torch.cuda.get_device_name(), "B T H K V", args.B, args.T, args.H, args.K, args.V, args.decay, "default",
          tiles, flush=True)
    out = {}

    def timed(name, fn):
        try:
            ms = triton.testing.do_bench(fn, warmup=5, rep=40)
        except Exception as exc:  # noqa: BLE001 - one configuration failing must not end the sweep
            print(f"{name:60s} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            return
        out[name] = ms
        print(f"{name:60s} {ms:8.3f} ms", flush=True)

    timed("forward y, no states (default)", lambda: to._fwd(L0, q, k, v, g, s0, True, False, p_scores))
    timed("forward y + stored states (default)", lambda: to._fwd(L0, q, k, v, g, s0, True, True, p_scores))
    for bv in (128, 64, 32, 16):
        for w in (2, 4, 8):
            L = replace(L0, block_v=bv, num_warps=w)
            timed(f"recompute states only bv={bv} w={w}", lambda L=L: to._fwd(L, q, k, v, g, s0, False, True))
    _, _, states = to._fwd(L0, q, k, v, g, s0, False, True)
    for bv in (128, 64, 32):
        for w in (4, 8):
            L = replace(L0, block_v=bv, num_warps=w)
            timed(f"backward kernels (with recompute) bv={bv} w={w}",
                  lambda L=L: to._bwd(L, q, k, v, g, s0, dy, dsT, p_scores))
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
