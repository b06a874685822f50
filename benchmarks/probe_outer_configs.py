"""Which launch configurations of the outer-product kernels run correctly on this GPU (a device-session tool).

Triton miscompiles some tile shapes on some GPU / triton pairs: on an H100 with triton 3.6, chunk 64 with a 32-wide
value slice at 4 warps raised "illegal memory access" (cf. triton issues 11366 and 10486, Hopper wgmma with a
32-wide tile). An illegal access kills the process's CUDA context, so every configuration runs in a process of its
own: forward and backward of ``chunked_outer_triton`` on random bf16 inputs vs the torch chunked scan in fp32 on the
same (bf16-rounded) numbers. Prints one line per configuration and writes a JSON list with ``-o``.

    python benchmarks/probe_outer_configs.py [-j 12] [-o probe.json]     # the default grid, in parallel
    python benchmarks/probe_outer_configs.py --one K V DECAY SCHEDULE BLOCK_V WARPS   # one (0 for a default)
"""

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsfc

# (K, V, DECAY, SCHEDULE, BLOCK_V, WARPS): head sizes users pick, 32 to 256; DECAY 0 none (chunk 64 on a GPU, the
# wgmma path), 2 per key (chunk 16); BLOCK_V / WARPS 0: chunked_outer_triton's default
GRID = [cfg for schedule in ("fused", "split") for cfg in
        [(K, V, decay, schedule, bv, w) for decay in (0, 2)
         for K, V, bv, w in ((32, 32, 0, 0), (32, 32, 0, 8), (64, 64, 0, 0), (64, 64, 32, 4), (64, 64, 32, 8))]
        + [(256, 64, 0, schedule, bv, w) for bv, w in ((0, 0), (64, 8), (16, 8))]]


def run_one(K: int, V: int, decay: int, schedule: str, block_v: int, warps: int, B: int = 2, T: int = 200,
            H: int = 3) -> dict:
    import torch

    from dsfc.runtime.scans import chunked_outer_scan
    from dsfc.runtime.triton_outer import chunked_outer_triton

    torch.manual_seed(0)
    # T = 200: not a multiple of any chunk
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: under TRITON_INTERPRET=1, a smoke test
    q = (torch.randn(B, T, H, K, device=dev) * K ** -0.5).bfloat16()
    k = (torch.randn(B, T, H, K, device=dev) * K ** -0.5).bfloat16()
    v = torch.randn(B, T, H, V, device=dev).bfloat16()
    g = None
    if decay == 1:
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev) + 3)
    elif decay == 2:
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device=dev) + 3)
    dy = torch.randn(B, T, H, V, device=dev)
    kw = {"schedule": schedule}
    if block_v:
        kw["block_v"] = block_v
    if warps:
        kw["num_warps"] = warps

    def grads(fn, *xs):
        xs = [x.detach().clone().requires_grad_() for x in xs]
        y = fn(*xs)
        gs = torch.autograd.grad(y.float(), xs, dy)
        return [y.detach().float()] + [t.float() for t in gs]

    def ref(q_, k_, v_, *g_):
        return chunked_outer_scan(q_.float(), k_.float(), v_.float(), g_[0] if g_ else None)

    def tri(q_, k_, v_, *g_):
        return chunked_outer_triton(q_, k_, v_, g_[0] if g_ else None, **kw)

    extra = [] if g is None else [g]
    want = grads(ref, q, k, v, *extra)
    got = grads(tri, q, k, v, *extra)
    if dev == "cuda":
        torch.cuda.synchronize()
    errs = [float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(got, want)]
    return {"max_rel_err": max(errs), "ok": max(errs) < 3e-2}  # bf16 operands: ~1e-2 relative at these sizes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--one", nargs=6, metavar=("K", "V", "DECAY", "SCHEDULE", "BLOCK_V", "WARPS"))
    p.add_argument("-j", type=int, default=12, help="configurations run at once (each compiles its kernels)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per configuration")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    if args.one:
        K, V, decay, schedule, bv, w = args.one
        print(json.dumps(run_one(int(K), int(V), int(decay), schedule, int(bv), int(w))))
        return 0

    def probe(cfg):
        cmd = [sys.executable, __file__, "--one", *map(str, cfg)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"config": cfg, "result": "timeout"}
        if r.returncode == 0:
            out = json.loads(r.stdout.strip().splitlines()[-1])
            return {"config": cfg, "result": "ok" if out["ok"] else "wrong", **out}
        tail = (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"config": cfg, "result": "illegal access" if "illegal" in r.stderr else "error", "error": tail}

    results = []
    with ThreadPoolExecutor(args.j) as pool:
        for res in pool.map(probe, GRID):
            K, V, decay, schedule, bv, w = res["config"]
            print(f"K={K:3d} V={V:3d} decay={decay} {schedule:5s} block_v={bv or 'default':>7} "
                  f"warps={w or 'default':>7}: {res['result']} {res.get('max_rel_err', res.get('error', ''))}",
                  flush=True)
            results.append(res)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    bad = [r for r in results if r["result"] != "ok"]
    print(f"{len(results) - len(bad)} of {len(results)} configurations ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
