"""Flat output axes addressed through a mixed-radix delta (dsfc/ir/unflatten.py).

``output y[H * V]`` read as ``C[o, (h, a, b)] = delta(o, h*V + b) * q[h, a]`` is linear attention with its output
flattened; the analysis saw a dense readout and picked the elementwise diagonal scan. The unflatten pass splits o
into virtual (H, V) digits first, so the spec gets the chunked outer-product family of its named-axes equivalent,
with the same results (forward, final state, step, gradients) and the user's flat output shape. A split that does
not tile o exactly is not made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsf_testing import F64, compile_and_build, rel_err, run_steps
from dsfc.check import run_check

ROOT = Path(__file__).resolve().parents[2]
OUTER = "chunked outer-product scan"

FLAT_LA = """
model FlatLA "linear attention with a flat output y[H * V] and anonymous state axes"
dim d = 3
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[H, K, V]
output y[H * V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param g[h: H] = 1 + h
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * sigmoid(g[h])
B[(h, a, b), m] = k[h, a] * W_v[h, b, m]
C[o, (h, a, b)] = delta(o, h * V + b) * q[h, a]
"""
NAMED_LA = FLAT_LA.replace("output y[H * V]", "output y[h: H, b: V]").replace(
    "C[o, (h, a, b)] = delta(o, h * V + b) * q[h, a]", "C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]")

FLAT_SSD = """
model FlatSSD "SSD-like core with a flat input u[d] and flat output y[d], d = H * P, compound deltas"
dim H = 2
dim P = 3
dim n = 2
dim d = H * P
input u[d]
state S[h: H, p: P, j: n]
output y[d]
param A_log[h: H] = log(h + 1)
param W_dt[H, d] ~ normal(0, 0.5)
param W_B[n, d] ~ normal(0, 0.5)
param W_C[n, d] ~ normal(0, 0.5)
param Dp[H] = 1
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]))
let bm[j: n] = sum(m, W_B[j, m] * u[m])
let cm[j: n] = sum(m, W_C[j, m] * u[m])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), m] = delta(m, h * P + p) * dt[h] * bm[j]
C[o, (h, p, j)] = delta(o, h * P + p) * cm[j]
D[o, m] = delta(o, m) * Dp[o // P]
"""
NAMED_SSD = FLAT_SSD.replace("output y[d]", "output y[h: H, p: P]").replace(
    "C[o, (h, p, j)] = delta(o, h * P + p) * cm[j]",
    "C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * cm[j]").replace(
    "D[o, m] = delta(o, m) * Dp[o // P]", "D[(o, e), m] = delta(m, o * P + e) * Dp[o]")


def _run(b, u, h0, params=None):
    """forward (y, final state) and gradients of a fixed loss w.r.t. u and every parameter."""
    model = b.model
    if params is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n])
    uu = u.clone().requires_grad_()
    y, sT = model(uu, initial_state=h0, output_final_state=True)
    w = torch.linspace(-1, 1, y.numel(), dtype=F64).reshape(y.shape)
    grads = torch.autograd.grad((y * w).sum() + sT.sum(), [uu, *model.parameters()])
    return y.detach(), sT.detach(), grads


@pytest.mark.parametrize("flat, named, d_in", [(FLAT_LA, NAMED_LA, 3), (FLAT_SSD, NAMED_SSD, 6)],
                         ids=["linear_attention", "ssd"])
def test_flat_output_gets_the_outer_family_and_matches(flat, named, d_in):
    fb = compile_and_build(flat, path="flat.dsf")
    nb = compile_and_build(named, path="named.dsf")
    assert fb.result.structure.family.value == OUTER == nb.result.structure.family.value
    assert fb.result.report.to_dict()["family"] == OUTER
    assert len(fb.result.sym.output.axes) == 1  # the spec as written (what the reference evaluates) is untouched
    assert len(fb.result.core.output.axes) == 2
    g = torch.Generator().manual_seed(0)
    for T in (1, 9, 70):
        u = torch.randn(2, T, d_in, generator=g, dtype=F64)
        h0 = fb.initial_state(2, g)
        y, sT, grads = _run(fb, u, h0)
        assert y.shape == (2, T, 6)  # the declared flat width, o = h*V + b row-major
        y_ref, s_ref = fb.reference(u, h0)
        assert rel_err(y, y_ref) <= 1e-9 and rel_err(sT.reshape(2, -1), s_ref) <= 1e-9
        ny, nsT, ngrads = _run(nb, u, h0, dict(fb.model.named_parameters()))
        assert rel_err(y, ny.reshape(2, T, -1)) <= 1e-9 and rel_err(sT, nsT) <= 1e-9
        for a, e in zip(grads, ngrads):
            assert rel_err(a, e) <= 1e-8
        ys, state = run_steps(fb.model, u, h0)
        assert rel_err(ys.detach(), y) <= 1e-9 and rel_err(state.detach(), sT) <= 1e-9


def test_flat_outputs_pass_dsfc_check_with_triton(tmp_path):
    """`dsfc check` in a fresh process (it sets TRITON_INTERPRET=1 before triton is imported when there is no GPU):
    the generated module and its Triton outer-product kernels against the reference on the spec as written."""
    paths = []
    for name, text in (("flat_la.dsf", FLAT_LA), ("flat_ssd.dsf", FLAT_SSD)):
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "dsfc.cli", "check", *paths], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    la, ssd = proc.stdout.split("FlatSSD")
    for part in (la, ssd):
        assert "BAD" not in part and "ok  triton forward y" in part and "ok  triton grad u (vs torch)" in part, part


@pytest.mark.parametrize("change", [
    ("output y[H * V]", "output y[H * V + 1]"),  # extents do not tile o
    ("delta(o, h * V + b)", "delta(o, h * K + b)"),  # wrong stride (K != V)
    ("delta(o, h * V + b)", "delta(o, h * V + b + 1)"),  # an offset
], ids=["extent", "stride", "offset"])
def test_a_split_that_does_not_tile_o_is_not_made(change):
    """No unflattening of o (it would read the wrong slots); since hunt 24 the out-projection split reads such a
    delta(o, .) as a projection applied in a post after the chunked scan (it ran the diagonal scan)."""
    b = compile_and_build(FLAT_LA.replace(*change), path="bad.dsf")
    core = b.result.core
    assert [p.tensor.name for p in core.posts] == ["y"] and core.output.name != "y"
    assert len(core.output.axes) == 2  # the core reads z[h, b]: no axis of o
    assert b.result.structure.family.value == "chunked outer-product scan", b.result.structure.family_reason
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 9, 3, generator=g, dtype=F64)
    h0 = b.initial_state(2, g)
    y_ref, s_ref = b.reference(u, h0)
    with torch.no_grad():
        y, sT = b.model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_ref) <= 1e-9 and rel_err(sT.reshape(2, -1), s_ref) <= 1e-9


def test_post_ops_read_the_flat_output():
    """A post indexing y[e] on the flat axis reads the virtual digits of e."""
    spec = FLAT_LA + "post z[e: H * V] = y[e] * sigmoid(y[e]) * g[e // V]\n"
    b = compile_and_build(spec, path="post.dsf")
    assert b.result.structure.family.value == OUTER
    report = run_check(b.result, shapes=((2, 7),), triton=False)
    assert report.ok, report.table()
