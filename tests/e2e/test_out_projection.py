"""An out-projection written into C runs the chunked algorithm, with the projection applied after the scan.

``C[o, (h, a, b)] = W_o[o, h*V + b] q[h, a]`` reads every value slot into every output, so no output axis maps to a
state axis and the structure analysis found no per-slot readout: such layers ran the elementwise diagonal scan over the
whole H K V state (right numbers, T x H K V state entries in memory). ``dsfc/ir/out_projection.py`` splits C into the
factors that read the output index (the projection, applied as a first post, with D u) and the rest (a readout per
value slot); the pipeline keeps the split only where it gives a chunked family. Each layer here is checked against a
float64 loop written from its equations (torch and Triton paths, step, initial state, gradients), and its
``dsf_matrices`` (the core's) against the reference through ``dsfc check``.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import torch  # noqa: E402

from dsf_testing import (BACKENDS, F64, INTERPRETER_WARNINGS, build, case_builds, check_grads_against_loop,  # noqa: E402
                         matvec, rel_err, run_steps, spec_hunt_tests, stack_steps)
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.check import run_check  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

GATED_PROJ = """
model GatedProj "gated linear attention, out-projection over the flat (head, value) index and a D skip in C / D"
dim d = 6
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[d]
param W_q[H, K, d] ~ normal(0, 1)
param W_k[H, K, d] ~ normal(0, 1)
param W_v[H, V, d] ~ normal(0, 1)
param W_a[H, d] ~ normal(0, 1)
param W_o[d, H * V] ~ normal(0, 1)
param D[d] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let al[h: H] = sigmoid(sum(m, W_a[h, m] * u[m]) + 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h]
B[(h, a, b), m] = k[h, a] * W_v[h, b, m]
C[o, (h, a, b)] = W_o[o, h * V + b] * q[h, a]
D[o, m] = delta(o, m) * D[m]
"""

DELTA_PROJ = """
model DeltaProj "DeltaNet with L2-normalised keys, the out-projection in C and an output gate after it"
dim d = 4
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[d]
param W_q[H, K, d] ~ normal(0, 1)
param W_k[H, K, d] ~ normal(0, 1)
param W_v[H, V, d] ~ normal(0, 1)
param W_b[H, d] ~ normal(0, 1)
param W_o[d, H, V] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta[h] * k[h, a] * k[h, a2])
B[(h, a, b), m] = beta[h] * k[h, a] * W_v[h, b, m]
C[o, (h, a, b)] = W_o[o, h, b] * q[h, a]
post g[o: d] = y[o] * sigmoid(u[o])
"""

SSD_PROJ = """
model SSDProj "Mamba-2 SSD read before the update, the out-projection over (head, channel) in C, D through it"
dim H = 2
dim P = 2
dim n = 3
dim E = 3
input u[h: H, p: P]
state S[h: H, p: P, j: n]
output y[E]
param A_log[h: H] = log(h + 1)
param W_dt[H, H * P] ~ normal(0, 1)
param W_B[n, H * P] ~ normal(0, 1)
param W_C[n, H * P] ~ normal(0, 1)
param W_o[E, H * P] ~ normal(0, 1)
param D[H] ~ normal(0, 1)
readout pre
let dt[h: H] = softplus(sum(m: H * P, W_dt[h, m] * u[m // P, m % P]))
let Bm[j: n] = sum(m: H * P, W_B[j, m] * u[m // P, m % P])
let Cm[j: n] = sum(m: H * P, W_C[j, m] * u[m // P, m % P])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[j]
C[o, (h, p, j)] = W_o[o, h * P + p] * Cm[j]
D[o, (h, p)] = W_o[o, h * P + p] * D[h]
"""

SOFTMAX_PROJ = """
model SoftmaxProj "causal softmax attention, 2 heads, the out-projection over (head, value) written into C"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, f: taylor(K, inf), b: V]
output y[d]
param W_Q[H, K, d] ~ normal(0, 1)
param W_K[H, K, d] ~ normal(0, 1)
param W_V[H, V, d] ~ normal(0, 1)
param W_O[d, H * V] ~ normal(0, 1)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qf[h: H, f: taylor(K, inf)] = taylor(a, q[h, a])
let kf[h: H, f: taylor(K, inf)] = taylor(a, k[h, a])
let z[h: H, f: taylor(K, inf)] = cumsum(kf[h, f])
let eta[h: H] = sum(f, qf[h, f] * z[h, f])
let eta_prev[h: H] = prev(eta[h])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * eta_prev[h] / eta[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m] / eta[h]
C[o, (h, f, b)] = W_O[o, h * V + b] * qf[h, f]
"""

# a readout weight on every state axis (no query: nothing to contract per slot): stays the diagonal scan
FULL_READ = """
model FullRead "a gated linear attention read by a learned weight on every state entry"
dim d = 3
dim H = 2
dim K = 2
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[d]
param W_k[H, K, d] ~ normal(0, 1)
param W_v[H, V, d] ~ normal(0, 1)
param W_r[d, H, K, V] ~ normal(0, 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * 0.8
B[(h, a, b), m] = sum(m2, W_k[h, a, m2] * u[m2]) * W_v[h, b, m]
C[o, (h, a, b)] = W_r[o, h, a, b]
"""

CASES = {
    "gatedproj": (GATED_PROJ, Family.CHUNKED_OUTER),
    "deltaproj": (DELTA_PROJ, Family.CHUNKED_DELTA),
    "ssdproj": (SSD_PROJ, Family.CHUNKED_OUTER),
    "fullread": (FULL_READ, Family.DIAGONAL_SCAN),
}
sig = torch.sigmoid


def _outer_loop(u, h0, shape, step, read, pre=False):
    """S_t = step(S_(t-1), t); y_t = read(S_t or S_(t-1), t): a plain loop over time."""
    S = u.new_zeros(u.shape[0], *shape) if h0 is None else h0.reshape(u.shape[0], *shape)
    ys = []
    for t in range(u.shape[1]):
        new = step(S, t)
        ys.append(read(S if pre else new, t))
        S = new
    return ys


def _gatedproj(P, u, h0=None):
    H, K, V = P["W_q"].shape[0], P["W_q"].shape[1], P["W_v"].shape[1]

    def proj(W, t):  # [H, X, d] . u_t -> [B, H, X]
        return torch.einsum("hxm,zm->zhx", W, u[:, t])

    def step(S, t):
        al = sig(torch.einsum("hm,zm->zh", P["W_a"], u[:, t]) + 1)
        return al[..., None, None] * S + proj(P["W_k"], t)[..., None] * proj(P["W_v"], t)[:, :, None, :]

    def read(S, t):
        z = torch.einsum("zha,zhab->zhb", proj(P["W_q"], t), S).reshape(u.shape[0], H * V)
        return matvec(P["W_o"], z) + P["D"] * u[:, t]

    return stack_steps(_outer_loop(u, h0, (H, K, V), step, read), u, u.shape[2])


def _deltaproj(P, u, h0=None):
    H, K, V = P["W_q"].shape[0], P["W_q"].shape[1], P["W_v"].shape[1]

    def proj(W, t):
        return torch.einsum("hxm,zm->zhx", W, u[:, t])

    def step(S, t):
        k = proj(P["W_k"], t)
        k = k / k.norm(dim=-1, keepdim=True)
        beta = sig(torch.einsum("hm,zm->zh", P["W_b"], u[:, t]))[..., None, None]
        v = proj(P["W_v"], t)
        # S <- (I - beta k k^T) S + beta k v^T
        return S - beta * k[..., None] * torch.einsum("zha,zhab->zhb", k, S)[:, :, None, :] \
            + beta * k[..., None] * v[:, :, None, :]

    def read(S, t):
        z = torch.einsum("zha,zhab->zhb", proj(P["W_q"], t), S)
        return torch.einsum("ohb,zhb->zo", P["W_o"], z) * sig(u[:, t])

    return stack_steps(_outer_loop(u, h0, (H, K, V), step, read), u, u.shape[2])


def _ssdproj(P, u, h0=None):
    H, n = P["W_dt"].shape[0], P["W_B"].shape[0]
    HP = P["W_dt"].shape[1]
    Pd = HP // H

    def step(S, t):
        x = u[:, t]  # [B, H * P], (h, p) row-major
        dt = torch.nn.functional.softplus(matvec(P["W_dt"], x))  # [B, H]
        a = torch.exp(-dt * torch.exp(P["A_log"]))
        bm = matvec(P["W_B"], x)  # [B, n]
        xs = x.reshape(-1, H, Pd)
        return a[..., None, None] * S + (dt[..., None] * xs)[..., None] * bm[:, None, None, :]

    def read(S, t):
        x = u[:, t]
        cm = matvec(P["W_C"], x)
        z = torch.einsum("zhpj,zj->zhp", S, cm).reshape(u.shape[0], HP)
        skip = (P["D"][:, None] * x.reshape(-1, H, Pd)).reshape(u.shape[0], HP)
        return matvec(P["W_o"], z + skip)

    return stack_steps(_outer_loop(u, h0, (H, Pd, n), step, read, pre=True), u, P["W_o"].shape[0])


def _fullread(P, u, h0=None):
    H, K, V = P["W_k"].shape[0], P["W_k"].shape[1], P["W_v"].shape[1]

    def step(S, t):
        k = torch.einsum("hxm,zm->zhx", P["W_k"], u[:, t])
        v = torch.einsum("hxm,zm->zhx", P["W_v"], u[:, t])
        return 0.8 * S + k[..., None] * v[:, :, None, :]

    def read(S, t):
        return torch.einsum("ohab,zhab->zo", P["W_r"], S)

    return stack_steps(_outer_loop(u, h0, (H, K, V), step, read), u, u.shape[2])


def _softmaxproj(P, u, h0=None):
    # per head: y_t = sum_(j<=t) softmax_j(q_t . k_j / sqrt(K)) v_j; then W_O over the flat (head, value) index
    assert h0 is None  # the state is a KV cache
    q, k, v = (torch.einsum("hxm,ztm->zthx", P[n], u) for n in ("W_Q", "W_K", "W_V"))
    K = q.shape[-1]
    ys = []
    for t in range(u.shape[1]):
        w = torch.softmax(torch.einsum("zha,zjha->zhj", q[:, t], k[:, :t + 1]) / K ** 0.5, -1)
        z = torch.einsum("zhj,zjhb->zhb", w, v[:, :t + 1]).reshape(u.shape[0], -1)
        ys.append(matvec(P["W_O"], z))
    return stack_steps(ys, u, u.shape[2])


INDEPENDENT = {"gatedproj": _gatedproj, "deltaproj": _deltaproj, "ssdproj": _ssdproj, "fullread": _fullread}
EIGEN = {"gatedproj": Bound.STABLE, "deltaproj": Bound.MARGINAL, "ssdproj": Bound.STABLE, "fullread": Bound.STABLE}

_compiled, _built = case_builds(CASES)

(test_out_projection_matches_an_independent_implementation,
 test_out_projection_gradients_match_an_independent_implementation,
 test_out_projection_matches_the_reference, test_out_projection_structure_report_is_true) = spec_hunt_tests(
    CASES, INDEPENDENT, EIGEN, _built)


def test_the_projection_is_the_first_post_and_the_spec_is_kept_as_written():
    result = _compiled("gatedproj")
    assert [p.tensor.name for p in result.core.posts] == ["y"]  # the layer output keeps the spec's name
    assert result.core.output.name != "y" and [a.extent for a in result.core.output.axes] == \
        [result.sym.dims["H"], result.sym.dims["V"]]
    assert "C" in result.sym.matrices and not result.sym.posts  # the reference evaluates the spec as written
    assert "output projection" in result.structure.family_reason
    assert "out-projection to y" in result.report.c_form and result.report.d_present  # D as written, in the post
    delta = _compiled("deltaproj")
    assert [p.tensor.name for p in delta.core.posts] == ["y", "g"]


def test_dsfc_check_passes_on_the_hoisted_layers():
    """``dsfc check``: forward, state, step and the core's dense matrices against the float64 reference."""
    for name in ("gatedproj", "ssdproj"):
        report = run_check(_compiled(name), triton=False)
        assert report.ok, report.format()


def test_softmax_attention_with_the_projection_in_c_is_kernelised():
    """The kernelised form was refused outright ("an infinite feature range needs ... C contracting the feature
    index"): with the projection hoisted it is softmax attention plus a post. Against the loop: torch and Triton
    (T = 0, 1, 7), step by step (the KV cache), gradients; and ``dsfc check`` (slot-basis matrices, KV cache)."""
    result = compile_text(SOFTMAX_PROJ, "softmaxproj.dsf")
    assert result.structure.family == Family.QUADRATIC, result.structure.family_reason
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
    gen = torch.Generator().manual_seed(4)
    for b, t in ((1, 0), (2, 1), (2, 7)):
        u = torch.randn(b, t, 5, generator=gen, dtype=F64)
        want = _softmaxproj(built.params(), u)
        for backend in BACKENDS:
            built.model.backend = backend
            with torch.no_grad():
                assert rel_err(built.model(u), want) < 1e-8, (backend, b, t)
        built.model.backend = "torch"
        if t:
            with torch.no_grad():
                assert rel_err(run_steps(built.model, u, None)[0], want) < 1e-8, ("step", b, t)
    u, w = (torch.randn(2, 5, 5, generator=gen, dtype=F64) for _ in range(2))
    check_grads_against_loop(built, _softmaxproj, u, w)
    assert run_check(result, triton=False).ok


def test_reference_backend_post_switch_and_dsf_matrices_describe_the_spec_as_written():
    """The leading post a pass adds (this out-projection, or hunt 23's gathered rotated read) is part of the spec's
    own core output: ``backend="reference"`` (the per-step dense recurrence on dsf_matrices, which show the spec's C
    and D as written) must not apply it a second time, ``post=False`` still applies it (the user's own posts only are
    skipped), and half inputs come back in their dtype. The reference backend applied the gather twice (1.3 relative
    error) when dsf_matrices first showed the spec's C."""
    from test_user_specs_23 import ROT_GLA

    gen = torch.Generator().manual_seed(7)
    for text, name in ((GATED_PROJ, "gatedproj"), (DELTA_PROJ, "deltaproj"), (ROT_GLA, "rotgla")):
        result = compile_text(text, f"{name}.dsf")
        assert result.core.added_posts == 1 and result.core.written[0] is result.sym.output
        built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
        u = torch.randn(2, 6, built.d_in(), generator=gen, dtype=F64)
        want, _ = built.reference(u)
        for backend in ("torch", "reference"):
            built.model.backend = backend
            with torch.no_grad():
                assert rel_err(built.model(u), want) < 1e-10, (name, backend)
        built.model.backend = "torch"
        mats = built.dsf_matrices(u[:, :3])
        assert [m.shape for m in mats] == [m.shape for m in built.dense(u[:, :3])], name
        assert all(rel_err(m, w) < 1e-10 for m, w in zip(mats, built.dense(u[:, :3]))), name
        with torch.no_grad():
            assert built.model(u.float()).dtype == torch.float32
    # a spec with posts of its own: post=False returns the spec's y, the out-projection applied
    result = compile_text(DELTA_PROJ, "deltaproj.dsf")
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
    u = torch.randn(2, 6, built.d_in(), generator=gen, dtype=F64)
    with torch.no_grad():
        gated = built.model(u)
        raw = built.model(u, post=False)
    assert raw.shape == gated.shape == (2, 6, 4)
    assert rel_err(raw * torch.sigmoid(u), gated) < 1e-12  # the spec's post g = y * sigmoid(u)
    assert rel_err(gated, _deltaproj(built.params(), u)) < 1e-10
