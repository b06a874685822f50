"""Tiles for the fused softmax attention kernels (dsfc/runtime/triton_softmax.py) on a GPU: times the forward, the
dk / dv kernel and the dq kernel over (BM, BN, warps, stages), each against the default tiles' outputs on the same
inputs (bf16, causal, the benchmark's B=8, T=4096, H=16, K=V=64), next to torch's scaled_dot_product_attention.
A diagnostic for choosing ``triton_attention.TILES["cuda_half"]``, not a test.

    python benchmarks/softmax_tiles_sweep.py [-T 4096] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsfc

FWD = [(128, 64, 8), (128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3)]
# FlashAttention's Triton tutorial (backward): 32 queries x 128 keys for dk / dv, 128 x 32 for dq, 4 warps, 5 stages
BWD_KV = [(32, 64, 8), (32, 128, 4, 5), (32, 128, 4, 3), (64, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 3)]
BWD_Q = [(128, 32, 8), (128, 32, 4, 5), (128, 32, 4, 3), (128, 64, 4, 3), (64, 64, 4, 3)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-B", type=int, default=8)
    p.add_argument("-T", type=int, default=4096)
    p.add_argument("-H", type=int, default=16)
    p.add_argument("-K", type=int, default=64)
    p.add_argument("-o", "--output")
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F
    import triton.testing

    from dsfc.runtime import triton_attention as ta
    from dsfc.runtime import triton_softmax as ts

    if not torch.cuda.is_available():
        print("softmax_tiles_sweep.py needs a CUDA GPU", file=sys.stderr)
        return 2
    B, T, H, K = args.B, args.T, args.H, args.K
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, T, H, K, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
    dy = torch.randn(B, T, H, K, device="cuda", generator=gen).to(torch.bfloat16)
    scale = K ** -0.5
    empty = q.new_empty(0, dtype=torch.float64)
    default = dict(ta.TILES["cuda_half"])
    y0, L0 = ts._forward(q, k, v, empty, scale)
    delta = (dy.float() * y0.float()).sum(-1)
    ref = ts._backward(q, k, v, empty, L0, delta, dy, scale)
    print(torch.cuda.get_device_name(), "B T H K", B, T, H, K, "default", default, flush=True)
    out = {"default": {w: list(t) for w, t in default.items()}}

    def bench(name, fn, check):
        try:
            got = fn()
            err = check(got)
            ms = triton.testing.do_bench(fn, warmup=5, rep=50)
        except Exception as exc:  # noqa: BLE001 - one configuration failing must not end the sweep
            print(f"{name:42s} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            return
        out[name] = {"ms": ms, "max_rel_err_vs_default": err}
        print(f"{name:42s} {ms:8.3f} ms   rel err vs default {err:.1e}", flush=True)

    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    tiles_of = {}
    bench("sdpa forward", lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale),
          lambda y: rel(y.transpose(1, 2), y0))
    for which, configs in (("fwd", FWD), ("bwd_kv", BWD_KV), ("bwd_q", BWD_Q)):
        for tiles in configs:
            ta.TILES["cuda_half"] = {**default, which: tiles}
            tiles_of[f"{which} {tiles}"] = tiles
            if which == "fwd":
                bench(f"fwd {tiles}", lambda: ts._forward(q, k, v, empty, scale)[0], lambda y: rel(y, y0))
            else:
                c = ta._constexprs(q, v, empty, empty, empty, which)
                del c["HAS_ROW"], c["HAS_COL"]
                dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
                st = ts._scalar(scale, q.dtype, q.device)
                if which == "bwd_kv":
                    def run(c=c, dk=dk, dv=dv):
                        ts._softmax_bwd_kv[(B * H * triton.cdiv(T, c["BN"]),)](q, k, v, L0, L0, delta, dy, dk, dv,
                                                                                L0, T, T, H, K, K, st, **c)
                        return dk, dv
                    bench(f"bwd_kv {tiles}", run, lambda r: max(rel(r[0], ref[1]), rel(r[1], ref[2])))
                else:
                    def run(c=c, dq=dq):
                        ts._softmax_bwd_q[(B * H * triton.cdiv(T, c["BM"]),)](q, k, v, L0, L0, delta, dy, dq, T, T,
                                                                               H, K, K, st, **c)
                        return dq
                    bench(f"bwd_q {tiles}", run, lambda r: rel(r, ref[0]))
    # the fastest tiles of each kernel whose outputs agree with the default's (bf16 operands: ~1e-2), end to end
    best = {}
    for which in ("fwd", "bwd_kv", "bwd_q"):
        ok = [(out[name]["ms"], name) for name in tiles_of if name.startswith(which + " ") and name in out
              and out[name]["max_rel_err_vs_default"] < 2e-2]
        best[which] = tiles_of[min(ok)[1]] if ok else default[which]
    out["best"] = {w: list(t) for w, t in best.items()}
    print("best", best, flush=True)
    qa, ka, va = (x.detach().requires_grad_() for x in (q, k, v))

    def fused_fb():
        y = ts.softmax_attention_triton(qa, ka, va, scale)[0]
        return torch.autograd.grad(y, (qa, ka, va), dy)

    for label, tiles in (("default", default), ("best", best)):
        ta.TILES["cuda_half"] = dict(tiles)
        with torch.no_grad():
            bench(f"fused forward, {label} tiles", lambda: ts.softmax_attention_triton(q, k, v, scale)[0],
                  lambda y: rel(y, y0))
        bench(f"fused forward+backward, {label} tiles", fused_fb, lambda r: rel(r[1], ref[1]))
    ta.TILES["cuda_half"] = default
    qs, ks, vs = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))

    def sdpa_fb():
        y = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        return torch.autograd.grad(y, (qs, ks, vs), dy.transpose(1, 2))

    bench("sdpa forward+backward", sdpa_fb, lambda r: 0.0)
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
