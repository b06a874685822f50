"""CPU profile of the generated torch path (backend="auto" on CPU) against simple plain-torch baselines.

    python benchmarks/cpu_profile.py --quick            # T in {512, 2048}, a few repeats
    python benchmarks/cpu_profile.py                    # T in {512, 2048, 8192}, plus compile times
    python benchmarks/cpu_profile.py --specs s6 lru -T 2048

For every spec of specs/ (and a few user variants) at moderate dims, batch 2, fp32, 2 threads:

* fwd / fwd+bwd: the module's forward under no_grad (so CPU inference takes its compiled path where it has one)
  and forward plus backward to the input and the parameters (a random output gradient: ``y.sum().backward()``
  hands autograd an expanded, stride-0 gradient, which sent some bmm backwards down a slow path).
* baseline: the same module with its recurrence swapped for an independent simple implementation of the kind
  cpu-notes.md says each family needs (a chunked scan with a cumulative-product fix-up for diagonal scans, a
  segment-sum chunked form a la mamba2's ssd_minimal for linear attention, a chunk loop of the WY form for the
  delta rule, a complex diagonal scan for 2 x 2 rotation blocks, SDPA for softmax attention), timed interleaved
  with the module in one process. ratio = module / baseline (fwd+bwd when the row has it); max rel = the largest
  difference of the outputs relative to max |y| (a check that the baseline computes the same thing).
* peak MB: growth of the resident set of a separate process running the module's forward+backward alone (T
  ascending, so each T's peak is its own).

Timings on a shared 2-core machine swing 2x between runs: read the ratios, which are measured in the same process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (name, spec file or variant, dims): moderate sizes a new user would try (d = 256, heads 4 x 64, n = 16)
CONFIGS = [
    ("deltanet", "deltanet", dict(d=256, H=4, K=64, V=64)),
    ("fox", "fox", dict(d=256, H=4, K=64, V=64)),
    ("gated_deltanet", "gated_deltanet", dict(d=256, H=4, K=64, V=64)),
    ("gated_deltanet K=V=32", "gated_deltanet", dict(d=256, H=8, K=32, V=32)),
    ("gla", "gla", dict(d=256, H=4, K=64, V=64, R=16)),
    ("gla sigmoid gate", "gla_sigmoid", dict(d=256, H=4, K=64, V=64, R=16)),
    ("hgrn", "hgrn", dict(d=256, E=256)),
    ("linear_attention", "linear_attention", dict(d=256, H=4, K=64, V=64)),
    ("linear_attention_normalized", "linear_attention_normalized", dict(d=256, H=4, K=64, V=64)),
    ("lru", "lru", dict(d=256, Nc=128)),
    ("mamba_block", "mamba_block", dict(d=256, e=2, n=16, r=16)),
    ("mlstm", "mlstm", dict(H=4, DH=64)),
    ("normalized_attention", "normalized_attention", dict(d=256, H=4, K=64)),
    ("normalized_attention_exprelu", "normalized_attention_exprelu", dict(d=256, H=4, K=64)),
    ("normalized_attention_sigmoid", "normalized_attention_sigmoid", dict(d=256, H=4, K=64)),
    ("qlstm", "qlstm", dict(d=256)),
    ("qlstm_s6", "qlstm_s6", dict(d=256)),
    ("retnet", "retnet", dict(d=256, H=4, K=64, V=64)),
    ("rg_lru", "rg_lru", dict(W=256, nh=4)),
    ("rwkv6", "rwkv6", dict(d=256, H=4, K=64, V=64, R=32, Rw=64)),
    ("s4d", "s4d", dict(d=256, Nh=8)),
    ("s6", "s6", dict(d=256, n=16, r=16)),
    ("s6 scalar dt", "s6_scalar_dt", dict(d=256, n=16)),
    ("softmax_attention", "softmax_attention", dict(d=256, H=4, K=64, V=64)),
    ("ssd", "ssd", dict(H=8, P=32, n=16, G=1)),
    ("taylor_attention", "taylor_attention", dict(d=256, H=4, K=16, V=64, p=2)),
]
QUICK = ["s6", "s6 scalar dt", "mamba_block", "hgrn", "rg_lru", "lru", "s4d", "linear_attention", "gla",
         "gla sigmoid gate", "ssd", "mlstm", "gated_deltanet", "gated_deltanet K=V=32", "softmax_attention"]


def _variant_text(kind: str) -> str:
    if kind == "gla_sigmoid":  # a plain sigmoid gate instead of sigmoid^(1/16)
        text = (ROOT / "specs/gla.dsf").read_text()
        old = "let alpha[h: H, a: K] = exp(logsigmoid(gk[h, a]) / 16)"
        assert old in text
        return text.replace(old, "let alpha[h: H, a: K] = sigmoid(gk[h, a])")
    if kind == "s6_scalar_dt":  # one dt per token shared by every channel
        return """model S6ScalarDt "S6 with a scalar dt per token"
dim d = 64
dim n = 16
input u[d]
state h[c: d, j: n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param w_dt[d] ~ normal(0, 1 / sqrt(d))
param b_dt = -3
param W_B[n, d] ~ normal(0, 1 / sqrt(d))
param W_C[n, d] ~ normal(0, 1 / sqrt(d))
param D[d] = 1
let dt = softplus(sum(k, w_dt[k] * u[k]) + b_dt)
let b[j: n] = sum(k, W_B[j, k] * u[k])
let cq[j: n] = sum(k, W_C[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-dt * exp(A_log[c, j]))
B[(c, j), k] = delta(c, k) * dt * b[j]
C[o, (c, j)] = delta(o, c) * cq[j]
D[o, k] = delta(o, k) * D[k]
"""
    raise KeyError(kind)


def load(kind: str):
    """The generated module (generated/<kind>.py, or a variant compiled now) and its nn.Module class."""
    import torch

    if (ROOT / "generated" / f"{kind}.py").exists():
        mod = importlib.import_module(f"generated.{kind}")
    else:
        from dsfc.check import load_module
        from dsfc.pipeline import compile_text

        mod = load_module(compile_text(_variant_text(kind), f"<{kind}>"))
    cls = next(v for v in vars(mod).values()
               if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == mod.__name__)
    return mod, cls


# ---- baselines: independent plain-torch recurrences ------------------------------------------------------------


def base_diagonal(a, b, h0=None, chunk=64, **_):
    """h_t = a_t h_(t-1) + b_t: a loop over the L steps of a chunk for all chunks at once (local states from 0 and
    the running product of a), then the carries chunk by chunk and a cumulative-product fix-up."""
    import torch

    shape = torch.broadcast_shapes(a.shape, b.shape)
    a, b = a.expand(shape), b.expand(shape)
    B, T = shape[:2]
    L = chunk
    nc = -(-T // L)
    pad = nc * L - T
    if pad:
        a = torch.cat([a, a.new_ones(B, pad, *shape[2:])], 1)
        b = torch.cat([b, b.new_zeros(B, pad, *shape[2:])], 1)
    a = a.reshape(B, nc, L, *shape[2:])
    b = b.reshape(B, nc, L, *shape[2:])
    h, p, hs, ps = torch.zeros_like(b[:, :, 0]), torch.ones_like(a[:, :, 0]), [], []
    for t in range(L):
        h = a[:, :, t] * h + b[:, :, t]
        p = p * a[:, :, t]
        hs.append(h)
        ps.append(p)
    hs, ps = torch.stack(hs, 2), torch.stack(ps, 2)
    carry = torch.zeros_like(b[:, 0, 0]) if h0 is None else h0.expand_as(b[:, 0, 0])
    carries = []
    for c in range(nc):
        carries.append(carry)
        carry = ps[:, c, -1] * carry + hs[:, c, -1]
    out = hs + ps * torch.stack(carries, 1).unsqueeze(2)
    return out.reshape(B, nc * L, *shape[2:])[:, :T]


def _segsum(x):
    """mamba2 ssd_minimal's segsum over the last dim: out[..., i, j] = sum_(j < l <= i) x_l, -inf above."""
    import torch

    L = x.shape[-1]
    xe = x[..., None].expand(*x.shape, L)
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device), -1)
    seg = torch.cumsum(xe.masked_fill(~mask, 0), dim=-2)
    return seg.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device)), float("-inf"))


def base_outer(q, k, v, log_decay=None, h0=None, output_final_state=False, readout="post", chunk=64, **_):
    """Chunked linear attention a la ssd_minimal: intra-chunk (Q K^T * exp(segsum)) V, states passed chunk by chunk.
    A per-key decay (GLA, RWKV-6) uses chunks of 16 and an explicit [L, L, K] decay (stable, L K work per token)."""
    import torch

    B, T, H, K = q.shape
    V = v.shape[-1]
    if readout == "pre":  # y_t = S_(t-1)^T q_t: the post readout with the queries one step earlier
        y, S = base_outer(torch.cat([q[:, 1:], torch.zeros_like(q[:, :1])], 1), k, v, log_decay, h0, True)
        S0 = torch.zeros(B, H, K, V, dtype=q.dtype) if h0 is None else h0
        y = torch.cat([torch.einsum("bhk,bhkv->bhv", q[:, 0], S0)[:, None], y[:, :-1]], 1)
        return (y, S) if output_final_state else y
    g = torch.zeros(B, T, H, dtype=q.dtype) if log_decay is None else log_decay
    per_key = g.dim() == 4
    L = 16 if per_key else chunk
    nc = -(-T // L)
    pad = nc * L - T

    def ch(x):
        x = torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], 1) if pad else x
        return x.reshape(B, nc, L, *x.shape[2:]).transpose(2, 3)  # [B, nc, H, L, ...]

    qc, kc, vc = ch(q), ch(k), ch(v)
    gc = ch(g if per_key else g[..., None])  # [B, nc, H, L, K or 1]
    cum = torch.cumsum(gc, 3)
    if per_key:
        seg = _segsum(gc.transpose(-1, -2)).permute(0, 1, 2, 4, 5, 3)  # [B, nc, H, L, L, K]
        scores = torch.einsum("bchik,bchjk,bchijk->bchij", qc, kc, torch.exp(seg))
    else:
        scores = (qc @ kc.transpose(-1, -2)) * torch.exp(_segsum(gc[..., 0]))
    y = scores @ vc
    k_end = kc * torch.exp(cum[:, :, :, -1:] - cum)
    S = torch.zeros(B, H, K, V, dtype=q.dtype) if h0 is None else h0
    ys = []
    for c in range(nc):
        ys.append((qc[:, c] * torch.exp(cum[:, c])) @ S)
        S = torch.exp(cum[:, c, :, -1])[..., None] * S + k_end[:, c].transpose(-1, -2) @ vc[:, c]
    y = (y + torch.stack(ys, 1)).transpose(2, 3).reshape(B, nc * L, H, V)[:, :T]
    return (y, S) if output_final_state else y


def base_delta(q, k, v, f, log_decay=None, h0=None, output_final_state=False, readout="post", chunk=64, **_):
    """S_t = s_t (I - k_t f_t^T) S_(t-1) + k_t v_t^T chunk by chunk (fla's chunk_delta_rule in torch): per chunk a
    unit lower-triangular solve for the pseudo-values, then the readout and the next state."""
    import torch

    B, T, H, K = q.shape
    V = v.shape[-1]
    g = torch.zeros(B, T, H, dtype=q.dtype) if log_decay is None else log_decay
    L = chunk
    nc = -(-T // L)
    pad = nc * L - T

    def ch(x):
        x = torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], 1) if pad else x
        return x.reshape(B, nc, L, *x.shape[2:]).transpose(2, 3)

    qc, kc, vc, fc, gc = ch(q), ch(k), ch(v), ch(f), ch(g[..., None])[..., 0]
    S = torch.zeros(B, H, K, V, dtype=q.dtype) if h0 is None else h0
    eye = torch.eye(L, dtype=q.dtype)
    ys = []
    for c in range(nc):
        D = torch.exp(_segsum(gc[:, c]))  # [B, H, L, L]
        gam = torch.exp(torch.cumsum(gc[:, c], -1))[..., None]
        A = torch.tril(D * (fc[:, c] @ kc[:, c].transpose(-1, -2)), -1)
        W = torch.linalg.solve_triangular(eye + A, vc[:, c] - gam * (fc[:, c] @ S), upper=False, unitriangular=True)
        ys.append(gam * (qc[:, c] @ S) + (D * (qc[:, c] @ kc[:, c].transpose(-1, -2))) @ W)
        S = gam[..., -1:, :] * S + (kc[:, c] * D[..., -1, :, None]).transpose(-1, -2) @ W
    y = torch.stack(ys, 1).transpose(2, 3).reshape(B, nc * L, H, V)[:, :T]
    return (y, S) if output_final_state else y


def base_block(m, b, h0, **_):
    """2 x 2 rotation-scaling blocks [[x, -y], [y, x]] are complex multiplications: a complex diagonal scan."""
    import torch

    lam = torch.complex(m[..., 0, 0], m[..., 1, 0])
    h = base_diagonal(lam, torch.complex(b[..., 0], b[..., 1]), torch.complex(h0[..., 0], h0[..., 1]))
    return torch.stack([h.real, h.imag], -1)


def base_attention(q, k, v, row, col, scale, gcum=None):
    """Softmax attention by torch's SDPA, the decay G_i - G_j as a float mask (the module's row is -logsumexp of
    the same weights, so y is the softmax average; only valid for such specs, as the catalog's)."""
    import torch
    import torch.nn.functional as F

    T = q.shape[1]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    if gcum is None and col is None:
        y = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:
        mask = torch.zeros(T, T, dtype=q.dtype).masked_fill(
            torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        if gcum is not None:
            gg = gcum.transpose(1, 2).to(q.dtype)
            mask = mask + (gg[..., :, None] - gg[..., None, :])
        if col is not None:
            mask = mask + col.transpose(1, 2)[..., None, :]
        y = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return y.transpose(1, 2)


def base_log_sum(x, ys, scale, history, gcum=None):
    import torch

    if not history:
        return torch.einsum("btgk,btgk->btg", x, ys) * scale
    return torch.zeros(x.shape[:3], dtype=x.dtype)  # unused by base_attention


def base_softmax(q, k, v, scale, gcum=None):
    """The fused (y, L) of ``dsfc.runtime.torch_softmax`` by SDPA; L (read by nothing once y is given) as zeros."""
    import torch

    return base_attention(q, k, v, None, None, scale, gcum), torch.zeros(q.shape[:3], dtype=q.dtype)


BASELINES = {"diagonal_scan": base_diagonal, "chunked_outer_scan": base_outer, "chunked_delta_scan": base_delta,
             "block_scan": base_block, "kernel_attention": base_attention, "kernel_log_sum": base_log_sum,
             "softmax_attention_torch": base_softmax}


# ---- workers ---------------------------------------------------------------------------------------------------


def _median_ms(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def time_worker(kind, dims, Ts, repeats, threads):
    import torch

    torch.set_num_threads(threads)
    mod, cls = load(kind)
    torch.manual_seed(0)
    model = cls(**dims)
    saved = {name: getattr(mod, name) for name in list(BASELINES) + ["use_compiled_chunks"] if hasattr(mod, name)}
    swapped = {name: BASELINES[name] for name in saved if name in BASELINES}
    swapped["use_compiled_chunks"] = lambda *a, **k: False

    def use(which):
        for name, fn in (saved if which == "module" else swapped).items():
            setattr(mod, name, fn)

    rows = []
    for T in Ts:
        u = torch.randn(2, T, model._in_features())
        ug = u.clone().requires_grad_()
        with torch.no_grad():
            y_ref = model(u)
        gy = torch.randn_like(y_ref)

        def fwd():
            with torch.no_grad():
                model(u)

        def fwd_bwd():
            model.zero_grad(set_to_none=True)
            model(ug).backward(gy)

        use("base")
        with torch.no_grad():
            y_base = model(u)
        use("module")
        err = float((y_ref - y_base).abs().max() / y_ref.abs().max().clamp_min(1e-30))
        res = {"module": {"fwd": [], "bwd": []}, "base": {"fwd": [], "bwd": []}}
        for which in ("module", "base"):  # warm-up (and compilation) excluded
            use(which)
            fwd()
            fwd_bwd()
        for _ in range(repeats):  # interleaved, so load from other jobs hits both sides alike
            for which in ("module", "base"):
                use(which)
                res[which]["fwd"].append(_median_ms(fwd, 1))
                res[which]["bwd"].append(_median_ms(fwd_bwd, 1))
        use("module")
        med = {w: {k: statistics.median(v) for k, v in d.items()} for w, d in res.items()}
        rows.append({"T": T, "fwd": med["module"]["fwd"], "fwd_bwd": med["module"]["bwd"],
                     "base_fwd": med["base"]["fwd"], "base_fwd_bwd": med["base"]["bwd"], "max_rel": err})
    return rows


def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_worker(kind, dims, Ts, threads):
    """Peak resident growth of the module's forward+backward, T ascending; and the first call's cost."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    mod, cls = load(kind)
    model = cls(**dims)
    u = torch.randn(2, Ts[0], model._in_features())
    with torch.no_grad():
        model(u)
    first = (time.perf_counter() - t0) * 1e3
    rows = []
    for T in Ts:
        u = torch.randn(2, T, model._in_features(), requires_grad=True)
        base = _rss_mb()
        y = model(u)
        y.backward(torch.randn_like(y))
        del y
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({"T": T, "peak_mb": max(0.0, peak - base)})
    return {"first_call_ms": first, "rows": rows}


def _run(args):
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T in {512, 2048}, fewer specs and repeats")
    ap.add_argument("--specs", nargs="*", help="config names (see CONFIGS)")
    ap.add_argument("-T", nargs="*", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile-times", action="store_true", help="also time `dsfc compile` per spec")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--dims", help=argparse.SUPPRESS)
    a = ap.parse_args()
    Ts = a.T or ([512, 2048] if a.quick else [512, 2048, 8192])
    if a.worker:
        dims = json.loads(a.dims)
        if a.worker[0] == "time":
            print(json.dumps(time_worker(a.worker[1], dims, Ts, a.repeats or 3, a.threads)))
        else:
            print(json.dumps(memory_worker(a.worker[1], dims, Ts, a.threads)))
        return
    names = a.specs or (QUICK if a.quick else [c[0] for c in CONFIGS])
    repeats = a.repeats or (3 if a.quick else 5)
    print(f"batch 2, fp32, {a.threads} threads; ratio = module / baseline (same process, interleaved medians)")
    print(f"{'spec':30s} {'T':>5s} {'fwd ms':>9s} {'f+b ms':>9s} {'base f':>8s} {'base f+b':>9s} {'ratio f':>7s} "
          f"{'ratio f+b':>9s} {'max rel':>8s} {'peak MB':>8s} {'1st call ms':>11s}")
    for name, kind, dims in CONFIGS:
        if name not in names:
            continue
        common = ["-T", *map(str, Ts), "--threads", str(a.threads), "--dims", json.dumps(dims)]
        timed = _run(["--worker", "time", kind, "--repeats", str(repeats), *common])
        mem = _run(["--worker", "memory", kind, *common])
        if "error" in timed:
            print(f"{name:30s} error: {timed['error']}")
            continue
        peaks = {r["T"]: r["peak_mb"] for r in mem.get("rows", [])}
        for r in timed:
            first = f"{mem['first_call_ms']:11.0f}" if r["T"] == Ts[0] and "first_call_ms" in mem else ""
            print(f"{name:30s} {r['T']:5d} {r['fwd']:9.1f} {r['fwd_bwd']:9.1f} {r['base_fwd']:8.1f} "
                  f"{r['base_fwd_bwd']:9.1f} {r['fwd'] / r['base_fwd']:7.2f} {r['fwd_bwd'] / r['base_fwd_bwd']:9.2f} "
                  f"{r['max_rel']:8.1e} {peaks.get(r['T'], float('nan')):8.0f} {first}", flush=True)
    if a.compile_times or not a.quick:
        print("\ndsfc compile (one process per spec, wall seconds):")
        for spec in sorted((ROOT / "specs").glob("*.dsf")):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dsfc", "compile", str(spec), "-o", "/tmp/dsfc_cpu_profile"],
                           capture_output=True, cwd=ROOT)
            print(f"  {spec.name:36s} {time.perf_counter() - t0:6.1f}")


if __name__ == "__main__":
    main()
