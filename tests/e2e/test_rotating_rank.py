"""A rotating (complex) decay per key pair together with rank-R inputs or R queries per step (Mamba-3's MIMO variant
with its data-dependent rotary, a complex state per key pair) runs the chunked outer-product scan.

Per head, A acts on the pair axis r as rho R(theta) (x = rho cos theta, y = rho sin theta, or x, y as written),
B u = sum_s k_s v_s^T over a rank axis s (or one outer product) and C reads R queries q_j (or one). The rotation
moves into the keys and queries (rotated by minus the step's cumulative angle, ``rotate_pairs``) and the rank axes
into sub-steps of each step (``rank_substeps``): every sub-step of step t sees the phase Phi_t, the decay rho sits
at one of them. Every spec is checked against a float64 loop written here in complex arithmetic from the maths (the
pair (S_0, S_1) as S_0 + i S_1, the block as x + i y, C's read q_0 S_0 + q_1 S_1 as Re(conj(q) S)) and against
dsfc's reference backend (the dense matrices as written): torch, step, Triton (interpreted on CPU), carried state,
odd T and chunk boundaries, gradients.
"""

from tests.triton._device import DEVICE  # noqa: F401  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, check_state_grads_against_loop,  # noqa: E402
                         matvec, rel_err, run_steps, state_err)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from dsfc.runtime.scans import chunked_outer_scan  # noqa: E402

pytestmark = INTERPRETER_WARNINGS
MOVED = "rotation pairs moved into the keys and queries"
SUB = "run as sub-steps of each step"
ROT = "(delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1))"

HEAD = """
dim d = 4
dim H = 2
dim R = {R}
dim K = 2
dim V = 3
input u[d]
"""

SPECS = {
    # Mamba-3 MIMO: R keys and R queries, rho = exp(-dt exp(A_log)) per head, angle dt * th per key pair (cos / sin),
    # the rank axis before the pair axis in the lets
    "mimo": 'model MimoRot "MIMO with a data-dependent rotary"' + HEAD.format(R=2) + f"""
state S[h: H, a: K, r: 2, b: V]
output y[h: H, j: R, b: V]
param W_q[H, R, K, 2, d] ~ normal(0, 0.5)
param W_k[H, R, K, 2, d] ~ normal(0, 0.5)
param W_v[H, R, V, d] ~ normal(0, 0.5)
param w_dt[H, d] ~ normal(0, 0.5)
param A_log[H] ~ normal(0, 0.5)
param W_t[H, K, d] ~ normal(0, 0.5)
let dt[h: H] = softplus(sum(m, w_dt[h, m] * u[m]))
let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])
let q[h: H, j: R, a: K, r: 2] = sum(m, W_q[h, j, a, r, m] * u[m])
let k[h: H, s: R, a: K, r: 2] = sum(m, W_k[h, s, a, r, m] * u[m])
A[(h, a, r, b), (h2, a2, r2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * exp(-dt[h] * exp(A_log[h]))
    * (delta(r, r2) * cos(dt[h] * th[h, a]) + {ROT} * sin(dt[h] * th[h, a]))
B[(h, a, r, b), m] = dt[h] * sum(s, k[h, s, a, r] * W_v[h, s, b, m])
C[(o, j, e), (h, a, r, b)] = delta(o, h) * delta(e, b) * q[h, j, a, r]
""",
    # x, y as written (rho = hypot, theta = atan2), the pair axis first in the state, R keys only, the rank axis
    # after the pair axis in the key's let
    "xy_keys": 'model XyKeys "x, y rotation, rank-R input"' + HEAD.format(R=3) + f"""
state S[h: H, r: 2, a: K, b: V]
output y[h: H, b: V]
param W_q[H, K, 2, d] ~ normal(0, 0.5)
param W_k[H, K, 2, R, d] ~ normal(0, 0.5)
param W_v[H, R, V, d] ~ normal(0, 0.5)
param W_x[H, K, d] ~ normal(0, 0.5)
param W_y[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K, r: 2] = sum(m, W_q[h, a, r, m] * u[m])
let k[h: H, a: K, r: 2, s: R] = sum(m, W_k[h, a, r, s, m] * u[m])
let v[h: H, s: R, b: V] = sum(m, W_v[h, s, b, m] * u[m])
let x[h: H, a: K] = 0.6 * tanh(sum(m, W_x[h, a, m] * u[m]))
let y2[h: H, a: K] = 0.6 * tanh(sum(m, W_y[h, a, m] * u[m]) + 0.5)
A[(h, r, a, b), (h2, r2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2)
    * (delta(r, r2) * x[h, a] + {ROT} * y2[h, a])
B[(h, r, a, b), m] = sum(s, k[h, a, r, s] * v[h, s, b]) * delta(m, 0)
C[(o, e), (h, r, a, b)] = delta(o, h) * delta(e, b) * q[h, a, r]
""",
    # R queries only (the rank axis after the pair axis, the output's rank axis last), rho per key pair (sigmoid)
    "queries": 'model RotQueries "R queries per step"' + HEAD.format(R=3) + f"""
state S[h: H, a: K, r: 2, b: V]
output y[h: H, b: V, j: R]
param W_q[H, K, 2, R, d] ~ normal(0, 0.5)
param W_k[H, K, 2, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param W_g[H, K, d] ~ normal(0, 0.5)
param W_t[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K, r: 2, j: R] = sum(m, W_q[h, a, r, j, m] * u[m])
let k[h: H, a: K, r: 2] = sum(m, W_k[h, a, r, m] * u[m])
let rho[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 1)
let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])
A[(h, a, r, b), (h2, a2, r2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * rho[h, a]
    * (delta(r, r2) * cos(th[h, a]) + {ROT} * sin(th[h, a]))
B[(h, a, r, b), m] = k[h, a, r] * W_v[h, b, m]
C[(o, e, j), (h, a, r, b)] = delta(o, h) * delta(e, b) * q[h, a, r, j]
""",
    # both ranks, the pre-update readout, a signed rho (tanh, per key pair) and GateLoop's sign (1 - 2 r) in C
    "pre_signed": 'model PreSigned "both ranks, readout pre, signed rho"' + HEAD.format(R=2) + f"""
readout pre
state S[h: H, a: K, r: 2, b: V]
output y[h: H, j: R, b: V]
param W_q[H, R, K, 2, d] ~ normal(0, 0.5)
param W_k[H, R, K, 2, d] ~ normal(0, 0.5)
param W_v[H, R, V, d] ~ normal(0, 0.5)
param W_g[H, K, d] ~ normal(0, 1)
param W_t[H, K, d] ~ normal(0, 0.5)
let q[h: H, j: R, a: K, r: 2] = sum(m, W_q[h, j, a, r, m] * u[m])
let k[h: H, s: R, a: K, r: 2] = sum(m, W_k[h, s, a, r, m] * u[m])
let rho[h: H, a: K] = tanh(sum(m, W_g[h, a, m] * u[m]))
let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])
A[(h, a, r, b), (h2, a2, r2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * rho[h, a]
    * (delta(r, r2) * cos(th[h, a]) + {ROT} * sin(th[h, a]))
B[(h, a, r, b), m] = sum(s, k[h, s, a, r] * W_v[h, s, b, m])
C[(o, j, e), (h, a, r, b)] = delta(o, h) * delta(e, b) * q[h, j, a, r] * (1 - 2 * r)
""",
}

# the spec's state layout as a permutation of the canonical [B, H, K, 2, V]
LAYOUT = {"xy_keys": (0, 1, 3, 2, 4)}


def _complex(x: torch.Tensor) -> torch.Tensor:
    """A real tensor with the pair last, [..., 2], as the complex x_0 + i x_1."""
    return torch.complex(x[..., 0], x[..., 1])


def _streams(name: str, P, ut):
    """The complex decay lam [B, H, K], keys k [B, H, Rk, K], values v [B, H, Rk, V] (complex dtype, real values)
    and queries q [B, H, Rq, K] of one step, from the maths (q already conjugated for a read Re(q S))."""
    sig = torch.sigmoid
    if name in ("mimo", "pre_signed"):
        k = _complex(matvec(P["W_k"], ut))  # [B, H, R, K]
        q = _complex(matvec(P["W_q"], ut))
        v = matvec(P["W_v"], ut)  # [B, H, R, V]
        th = matvec(P["W_t"], ut)
        if name == "mimo":
            dt = torch.nn.functional.softplus(matvec(P["w_dt"], ut))  # [B, H]
            lam = torch.exp(-dt * torch.exp(P["A_log"]))[..., None] * torch.exp(1j * dt[..., None] * th)
            k = dt[:, :, None, None] * k
            q = q.conj()
        else:  # C reads q_0 S_0 - q_1 S_1 = Re(q S)
            lam = torch.tanh(matvec(P["W_g"], ut)) * torch.exp(1j * th)
    elif name == "xy_keys":
        k = _complex(matvec(P["W_k"], ut).transpose(-1, -2)).transpose(2, 3)  # [B, H, K, R, 2] -> [B, H, R, K]
        v = matvec(P["W_v"], ut) * ut[:, None, None, :1]
        q = _complex(matvec(P["W_q"], ut)).conj()[:, :, None]
        lam = torch.complex(0.6 * torch.tanh(matvec(P["W_x"], ut)), 0.6 * torch.tanh(matvec(P["W_y"], ut) + 0.5))
    else:  # queries
        k = _complex(matvec(P["W_k"], ut))[:, :, None]
        v = matvec(P["W_v"], ut)[:, :, None]
        q = _complex(matvec(P["W_q"], ut).transpose(-1, -2)).conj().transpose(2, 3)  # [B, H, R, K]
        lam = sig(matvec(P["W_g"], ut) + 1) * torch.exp(1j * matvec(P["W_t"], ut))
    return lam, k, v.to(lam.dtype), q


def _loop(name: str, P, u, h0=None):
    """float64 complex loop: S = lam S + sum_s k_s v_s^T per (head, key pair), y_j = Re(q_j . S) (the pre-update S
    for readout pre); returns y [B, T, flat output] and the final state in the spec's layout."""
    B, T = u.shape[:2]
    H, V = P["W_v"].shape[0], P["W_v"].shape[-2]
    K = P["W_t" if "W_t" in P else "W_x"].shape[1]
    layout = LAYOUT.get(name, (0, 1, 2, 3, 4))
    st = torch.zeros(B, H, K, 2, V, dtype=F64) if h0 is None else h0.permute([layout.index(i) for i in range(5)])
    S, ys = torch.complex(st[:, :, :, 0], st[:, :, :, 1]), []
    for t in range(T):
        lam, k, v, q = _streams(name, P, u[:, t])
        read = S
        S = lam[..., None] * S + torch.einsum("zhsa,zhsv->zhav", k, v)
        y = torch.einsum("zhja,zhav->zhjv", q, read if name == "pre_signed" else S).real  # [B, H, Rq, V]
        ys.append(y.transpose(2, 3) if name == "queries" else y)  # queries: output [h, b, j]
    rq = _streams(name, P, u.new_zeros(B, u.shape[2]))[3].shape[2]
    y = torch.stack(ys, 1) if ys else u.new_zeros(B, 0, H * rq * V)
    final = torch.stack([S.real, S.imag], 3).permute(layout)
    return y.reshape(B, T, H * rq * V), final


@functools.lru_cache(maxsize=None)
def _result(name: str):
    return compile_text(SPECS[name], f"{name}.dsf")


def _built(name: str):
    result = _result(name)
    return build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})


@pytest.mark.parametrize("name", sorted(SPECS))
def test_rotation_with_rank_axes_runs_the_chunked_scan_and_matches_the_loop(name):
    """Family, reason; forward from zero and from a random initial state at T = 0, 1, 7 (odd) and 9 with chunks of
    4 steps (a chunk of sub-steps crossing step boundaries, a partial last chunk) and T = 34 with the default chunk
    (past it in sub-steps, not a multiple of it), the final state in the spec's layout, token-by-token step and a
    state carried between two calls, against the loop and the reference backend."""
    result = _result(name)
    assert result.structure.family == Family.CHUNKED_OUTER, result.structure.family_reason
    why = result.structure.family_reason
    assert MOVED in why and SUB in why and SUB in result.report.table(), why
    rot, outer = result.structure.rotation, result.structure.outer
    assert rot.pair_axis in outer.key_axes and (outer.key_rank or outer.query_rank)
    assert bool(outer.key_rank) == (name != "queries") and bool(outer.query_rank) == (name != "xy_keys")
    assert (rot.theta is None) == (name == "xy_keys")
    assert result.plan.signed_decay == (name == "pre_signed")
    built = _built(name)
    gen = torch.Generator().manual_seed(3)
    module = sys.modules[type(built.model).__module__]
    for b, t in ((2, 0), (3, 1), (2, 7), (2, 9), (2, 34)):
        module.chunked_outer_scan = functools.partial(chunked_outer_scan, chunk=4 if t < 34 else 64)
        for with_h0 in (False, True):
            u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
            h0 = 0.5 * torch.randn(b, *built.state_shape(), generator=gen, dtype=F64) if with_h0 else None
            want, want_h = _loop(name, built.params(), u, h0)
            y_ref, h_ref = built.reference(u, h0)
            assert rel_err(y_ref, want) < 1e-10 and state_err(h_ref, want_h) < 1e-10, ("reference", b, t, with_h0)
            with torch.no_grad():
                y, h = built.model(u, initial_state=h0, output_final_state=True)
            assert rel_err(y, want) < 1e-9 and state_err(h, want_h) < 1e-9, (b, t, with_h0)
            if 0 < t <= 7:
                with torch.no_grad():
                    y_s, h_s = run_steps(built.model, u, h0)
                assert rel_err(y_s, want) < 1e-9 and state_err(h_s, want_h) < 1e-9, ("step", b, t, with_h0)
                # a carried state: the first half, then the rest from its final state
                with torch.no_grad():
                    y1, h1 = built.model(u[:, :t // 2], initial_state=h0, output_final_state=True)
                    y2, h2 = built.model(u[:, t // 2:], initial_state=h1, output_final_state=True)
                assert rel_err(torch.cat([y1, y2], 1), want) < 1e-9 and state_err(h2, want_h) < 1e-9


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradients_match_float64_autograd_of_the_loop(name):
    """d (sum(y * w) + sum(h_T * w_h)) / d(u, every parameter) of the module (float64, torch path, T = 7 from a
    random initial state) against float64 autograd through the complex loop."""
    check_state_grads_against_loop(_built(name), lambda P, u, h0: _loop(name, P, u, h0), T=7)


@pytest.mark.skipif(not TRITON, reason="triton (and numpy, for the interpreter) not installed")
@pytest.mark.parametrize("name", ["mimo", "pre_signed"])
def test_the_triton_path_matches_the_loop(name):
    """backend="triton" (an explicit choice raises rather than falling back) in float32, T = 22 (66 sub-steps: past the
    kernels' chunk of 64, not a multiple of it) from a random initial state: output and final state against the
    loop; the backward at T = 5 (u and every parameter) against float64 autograd of the loop (the kernels' backward
    on rotated sub-steps)."""
    result = _result(name)
    assert any("rotate_pairs" in line for line in result.plan.triton_outer)
    assert any("rank_substeps" in line for line in result.plan.triton_outer)
    built = _built(name)
    P = built.params()  # float64, before the module goes to float32
    model = built.model.float()
    model.backend = "triton"
    gen = torch.Generator().manual_seed(4)
    for t in (22,):
        u = torch.randn(2, t, built.d_in(), generator=gen, dtype=F64)
        h0 = 0.5 * torch.randn(2, *built.state_shape(), generator=gen, dtype=F64)
        want, want_h = _loop(name, P, u, h0)
        with torch.no_grad():
            y, h = model(u.float(), initial_state=h0.float(), output_final_state=True)
        assert rel_err(y, want) < 2e-5 and state_err(h, want_h) < 2e-5, t
    u = torch.randn(2, 5, built.d_in(), generator=gen, dtype=F64)
    h0 = 0.5 * torch.randn(2, *built.state_shape(), generator=gen, dtype=F64)
    w = torch.randn(2, 5, built.d_out(), generator=gen, dtype=F64)
    uu = u.clone().requires_grad_()
    want = torch.autograd.grad((_loop(name, P, uu, h0)[0] * w).sum(), uu)[0]
    names = [p.tensor.name for p in built.sym.params]
    PP = {n: t.clone().requires_grad_() for n, t in P.items()}
    uu = u.clone().requires_grad_()
    want = torch.autograd.grad((_loop(name, PP, uu, h0)[0] * w).sum(), [uu, *[PP[n] for n in names]])
    params = dict(model.named_parameters())
    uu = u.float().requires_grad_()
    got = torch.autograd.grad((model(uu, initial_state=h0.float()) * w.float()).sum(),
                              [uu, *[params[py_name(n)] for n in names]])
    for n, g, ww in zip(["u", *names], got, want):
        assert rel_err(g, ww) < 1e-4, n


# -- the other cases: the composition elsewhere, and a sum that is not a rank axis -------------------------------------

TIED_HEAD = 'model {name} "{title}"' + HEAD.format(R=2) + f"""
state S[h: H, a: K, r: 2, b: V]
output y[h: H, b: V]
param W_q[H, K, 2, d] ~ normal(0, 0.5)
param W_k[H, R, K, 2, d] ~ normal(0, 0.5)
param W_v[H, R, V, d] ~ normal(0, 0.5)
param w[R, K, V] ~ normal(0, 0.5)
param W_t[H, K, d] ~ normal(0, 0.5)
let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])
let q[h: H, a: K, r: 2] = sum(m, W_q[h, a, r, m] * u[m])
let k[h: H, s: R, a: K, r: 2] = sum(m, W_k[h, s, a, r, m] * u[m])
A[(h, a, r, b), (h2, a2, r2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * 0.9
    * (delta(r, r2) * cos(th[h, a]) + {ROT} * sin(th[h, a]))
C[(o, e), (h, a, r, b)] = delta(o, h) * delta(e, b) * q[h, a, r]
"""
OTHERS = {
    # w[s, a, b] ties the key row a to the value row b: a becomes a group axis (the pair alone the key axis) and C's
    # sum over a a post; still R outer products per (head, a), composed with the rotation
    "tied_group": (TIED_HEAD.format(name="TiedGroup", title="a tied to b: a group axis")
                   + "B[(h, a, r, b), m] = sum(s, k[h, s, a, r] * W_v[h, s, b, m] * w[s, a, b])\n",
                   Family.CHUNKED_OUTER),
    # a rank sum plus another term is not a rank axis: the dense scan, still right
    "sum_plus_term": (TIED_HEAD.format(name="SumPlusTerm", title="a rank sum plus a term")
                      + "B[(h, a, r, b), m] = sum(s, k[h, s, a, r] * W_v[h, s, b, m]) + k[h, 0, a, r] * W_v[h, 0, b, m]"
                        " * w[0, a, b]\n", Family.DENSE_SCAN),
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_forms_against_the_reference(name):
    """The family, and forward (T = 1, 7, 70 from a random initial state), step and the gradient of u against
    dsfc's reference backend (the dense matrices as written)."""
    text, family = OTHERS[name]
    result = compile_text(text, f"{name}.dsf")
    assert result.structure.family == family, result.structure.family_reason
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
    gen = torch.Generator().manual_seed(6)
    for t in (1, 7, 70):
        u = torch.randn(2, t, built.d_in(), generator=gen, dtype=F64)
        h0 = 0.5 * torch.randn(2, *built.state_shape(), generator=gen, dtype=F64)
        y_ref, h_ref = built.reference(u, h0)
        with torch.no_grad():
            y, h = built.model(u, initial_state=h0, output_final_state=True)
        assert rel_err(y, y_ref) < 1e-9 and state_err(h, h_ref) < 1e-9, t
        if t == 7:
            with torch.no_grad():
                y_s, h_s = run_steps(built.model, u, h0)
            assert rel_err(y_s, y_ref) < 1e-9 and state_err(h_s, h_ref) < 1e-9
            w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
            uu = u.clone().requires_grad_()
            want = torch.autograd.grad((built.reference(uu, h0)[0] * w).sum(), uu)[0]
            uu = u.clone().requires_grad_()
            got = torch.autograd.grad((built.model(uu, initial_state=h0) * w).sum(), uu)[0]
            assert rel_err(got, want) < 1e-9
