"""A rotating (complex) decay per key pair with an outer-product input runs the chunked outer-product scan.

A state S[h, a, r, b] whose A acts on the pair axis r as rho R(theta) = [[x, -y], [y, x]] (x, y over the group and
key rows), B u = key[h, a, r] value[h, b] and C contracting (a, r) with a query: rotations commute, so with
Phi_t = theta_1 + ... + theta_t and P_t = R(Phi_t), P_t^T S_t is a plain outer-product scan with the real decay rho
and the keys and queries rotated by -Phi_t (``dsfc.runtime.scans.rotate_pairs``); the final state is P_T times the
scan's. Every case is checked against a float64 loop written here in complex arithmetic from the maths (the pair
(S_0, S_1) as S_0 + i S_1, the block as the complex number x + i y, C's read q_0 S_0 + q_1 S_1 as Re(conj(q) S)) and
against dsfc's reference backend (the dense matrices as written). Negative cases keep the dense scan.
"""

from tests.triton._device import DEVICE  # noqa: F401  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, check_state_grads_against_loop,  # noqa: E402
                         matvec, rel_err, run_steps, state_err)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from dsfc.runtime.scans import chunked_outer_scan, rotation_phases  # noqa: E402
from test_user_specs_25 import GATELOOP  # noqa: E402
from test_user_specs_27 import CRET  # noqa: E402

pytestmark = INTERPRETER_WARNINGS
MOVED = "rotation pairs moved into the keys and queries"
sig = torch.sigmoid

# A's entry: the rotation-scaling rho R(theta) on the pair (r, r2), identity on the other axes; {rho} and {th}
# are the let reads, filled in per case
ROT = ("delta(h, h2) * delta(a, a2) * delta(b, b2) * {rho}\n"
       "    * (delta(r, r2) * cos({th}) + (delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1)) * sin({th}))")


def _spec(name: str, lets: str, params: str, a_entry: str, pair_first: bool = False, readout: str = "") -> str:
    axes = "r, a" if pair_first else "a, r"
    state = "h: H, r: 2, a: K, b: V" if pair_first else "h: H, a: K, r: 2, b: V"
    return f"""
model {name} "a rotating decay per key pair, case {name}"
dim d = 4
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[{state}]
output y[h: H, b: V]
{readout}
param W_q[H, K, 2, d] ~ normal(0, 0.5)
param W_k[H, K, 2, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
{params}
let q[h: H, a: K, r: 2] = sum(m, W_q[h, a, r, m] * u[m])
let k[h: H, a: K, r: 2] = sum(m, W_k[h, a, r, m] * u[m])
{lets}
A[(h, {axes}, b), (h2, {axes.replace('r', 'r2').replace('a', 'a2')}, b2)] = {a_entry}
B[(h, {axes}, b), m] = k[h, a, r] * W_v[h, b, m]
C[(o, e), (h, {axes}, b)] = delta(o, h) * delta(e, b) * q[h, a, r]
"""


TH_DATA = "let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])"
SPECS = {
    # a per-head scalar rho, a data-dependent angle per pair
    "headrho": _spec("HeadRho", "let rho[h: H] = sigmoid(sum(m, W_g[h, m] * u[m]) + 2)\n" + TH_DATA,
                     "param W_g[H, d] ~ normal(0, 0.5)\nparam W_t[H, K, d] ~ normal(0, 0.5)",
                     ROT.format(rho="rho[h]", th="th[h, a]")),
    # rho per key pair, the pair axis first among the key axes
    "pairfirst": _spec("PairFirst", "let rho[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 1)\n" + TH_DATA,
                       "param W_g[H, K, d] ~ normal(0, 0.5)\nparam W_t[H, K, d] ~ normal(0, 0.5)",
                       ROT.format(rho="rho[h, a]", th="th[h, a]"), pair_first=True),
    # xPos-like: a constant angle per pair and a constant decay per head (time-invariant A)
    "xpos": _spec("XposLike", "let rho[h: H] = 1 - 2 ^ (-3 - h)\nlet th[h: H, a: K] = th0[a]",
                  "param th0[K] ~ normal(0, 1)", ROT.format(rho="rho[h]", th="th[h, a]")),
    # rho exactly 0 wherever the gate is negative (about half the steps)
    "zero": _spec("ZeroRho", "let rho[h: H, a: K] = relu(2 * sigmoid(sum(m, W_g[h, a, m] * u[m])) - 1)\n" + TH_DATA,
                  "param W_g[H, K, d] ~ normal(0, 1)\nparam W_t[H, K, d] ~ normal(0, 0.5)",
                  ROT.format(rho="rho[h, a]", th="th[h, a]")),
    # a signed rho (tanh): the scan takes log|rho|, the signs folded into the streams (fold_decay_sign)
    "signed": _spec("SignedRho", "let rho[h: H, a: K] = tanh(sum(m, W_g[h, a, m] * u[m]))\n" + TH_DATA,
                    "param W_g[H, K, d] ~ normal(0, 1)\nparam W_t[H, K, d] ~ normal(0, 0.5)",
                    ROT.format(rho="rho[h, a]", th="th[h, a]")),
    # the block written as x, y (no cos / sin): rho = sqrt(x^2 + y^2), theta = atan2(y, x)
    "general": _spec("GeneralXY", "let x[h: H, a: K] = 0.6 * tanh(sum(m, W_x[h, a, m] * u[m]))\n"
                     "let y2[h: H, a: K] = 0.6 * tanh(sum(m, W_y[h, a, m] * u[m]) + 0.5)",
                     "param W_x[H, K, d] ~ normal(0, 0.5)\nparam W_y[H, K, d] ~ normal(0, 0.5)",
                     "delta(h, h2) * delta(a, a2) * delta(b, b2)\n    * (delta(r, r2) * x[h, a] + (delta(r, 1) * "
                     "delta(r2, 0) - delta(r, 0) * delta(r2, 1)) * y2[h, a])"),
    # the pre-update readout, y_t = C h_(t-1)
    "pre": _spec("PreRead", "let rho[h: H] = sigmoid(sum(m, W_g[h, m] * u[m]) + 2)\n" + TH_DATA,
                 "param W_g[H, d] ~ normal(0, 0.5)\nparam W_t[H, K, d] ~ normal(0, 0.5)",
                 ROT.format(rho="rho[h]", th="th[h, a]"), readout="readout pre"),
    # the pair axis outermost and the value axis before the group and key axes, the output's axes swapped too
    "outermost": """
model Outermost "a rotating decay per key pair, the state [r, b, h, a], the output [b, h]"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[r: 2, b: V, h: H, a: K]
output y[b: V, h: H]
param W_q[H, K, 2, d] ~ normal(0, 0.5)
param W_k[H, K, 2, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param W_g[H, K, d] ~ normal(0, 0.5)
param W_t[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K, r: 2] = sum(m, W_q[h, a, r, m] * u[m])
let k[h: H, a: K, r: 2] = sum(m, W_k[h, a, r, m] * u[m])
let g[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 1)
let th[h: H, a: K] = sum(m, W_t[h, a, m] * u[m])
A[(r, b, h, a), (r2, b2, h2, a2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * g[h, a]
    * (delta(r, r2) * cos(th[h, a]) + (r - r2) * sin(th[h, a]))
B[(r, b, h, a), m] = k[h, a, r] * W_v[h, b, m]
C[(e, o), (r, b, h, a)] = delta(o, h) * delta(e, b) * q[h, a, r]
""",
    "cret": CRET,
    "gateloop": GATELOOP,
}


def _decay(name: str, P, ut) -> torch.Tensor:
    """The complex decay rho e^(i theta) = x + i y per (batch, head, key pair) at one step, from the maths."""
    B, (H, K) = ut.shape[0], P["W_Q" if name == "gateloop" else "W_q"].shape[:2]
    if name in ("cret", "gateloop"):
        th = matvec(P["W_th" if name == "cret" else "w_th"], ut)
        if name == "cret":
            rho = (1 - 2.0 ** (-2 - torch.arange(H, dtype=F64)))[None, :, None]
        else:
            rho = sig(matvec(P["w_g"], ut) + 1)
        return rho * torch.exp(1j * th)
    if name == "general":
        return torch.complex(0.6 * torch.tanh(matvec(P["W_x"], ut)), 0.6 * torch.tanh(matvec(P["W_y"], ut) + 0.5))
    if name == "xpos":
        rho = (1 - 2.0 ** (-3 - torch.arange(H, dtype=F64)))[None, :, None]
        th = P["th0"][None, None, :].expand(B, H, K)
    else:
        th = matvec(P["W_t"], ut)
        if name in ("headrho", "pre"):
            rho = sig(matvec(P["W_g"], ut) + 2)[..., None]
        elif name in ("pairfirst", "outermost"):
            rho = sig(matvec(P["W_g"], ut) + 1)
        elif name == "signed":
            rho = torch.tanh(matvec(P["W_g"], ut))
        else:  # zero
            rho = torch.relu(2 * sig(matvec(P["W_g"], ut)) - 1)
    return rho * torch.exp(1j * th)


# the spec's state layout as a permutation of [B, H, K, 2, V] (spec = canonical.permute(LAYOUT[name]))
LAYOUT = {"pairfirst": (0, 1, 3, 2, 4), "outermost": (0, 3, 4, 1, 2)}


def _loop(name: str, P, u, h0=None):
    """float64 complex loop: S = lam S + k v^T per (head, key pair), y = Re(conj(q) . S) (GateLoop: Re(q . S));
    returns y [B, T, ...] (CRET: its out-projection post) and the final state in the spec's layout."""
    B, T = u.shape[:2]
    H, K = P["W_Q" if name == "gateloop" else "W_q"].shape[:2]
    V = P["W_V" if name == "gateloop" else "W_v"].shape[1]
    layout = LAYOUT.get(name, (0, 1, 2, 3, 4))
    canonical = [layout.index(k) for k in range(5)]
    st = torch.zeros(B, H, K, 2, V, dtype=F64) if h0 is None else h0.permute(canonical)
    S, ys = torch.complex(st[:, :, :, 0], st[:, :, :, 1]), []
    for t in range(T):
        ut = u[:, t]
        if name == "gateloop":
            qr, kr, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        else:
            qr, kr, v = matvec(P["W_q"], ut), matvec(P["W_k"], ut), matvec(P["W_v"], ut)
        if name == "cret":  # the keys of group g = h // R, G = 1: every head reads group 0
            kr = kr.repeat_interleave(H // P["W_k"].shape[0], 1)
        q, k = torch.complex(qr[..., 0], qr[..., 1]), torch.complex(kr[..., 0], kr[..., 1])
        q = q if name == "gateloop" else q.conj()  # C: q_0 S_0 + q_1 S_1 (GateLoop: q_0 S_0 - q_1 S_1)
        if name == "pre":
            ys.append(torch.einsum("zha,zhav->zhv", q, S).real)
        S = _decay(name, P, ut)[..., None] * S + k[..., None] * v.to(S.dtype)[:, :, None, :]
        if name != "pre":
            ys.append(torch.einsum("zha,zhav->zhv", q, S).real)
    y = torch.stack(ys, 1) if ys else u.new_zeros(B, 0, H, V)
    if name == "cret":
        y = torch.einsum("ohv,bthv->bto", P["W_o"], y)
    if name == "outermost":
        y = y.transpose(2, 3)
    final = torch.stack([S.real, S.imag], 3).permute(layout)
    return y.reshape(B, T, y[0, 0].numel() if T else (P["W_o"].shape[0] if name == "cret" else H * V)), final


_COMPILED: dict = {}


def _result(name: str):
    if name not in _COMPILED:
        _COMPILED[name] = compile_text(SPECS[name], f"{name}.dsf")
    return _COMPILED[name]


def _built(name: str):
    result = _result(name)
    return build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_rotating_decay_runs_the_chunked_family_and_matches_the_loop(name):
    """Family, reason and report; forward from zero and from a random initial state at T = 0, 1, 7 (odd) and 9 with
    the module's scan patched to chunks of 4 steps (boundaries crossed, a partial last chunk) and at T = 64 and 65
    with the default chunk (one chunk exactly, one step past it), the final state in the spec's layout, and
    token-by-token step, against the loop and the reference backend."""
    result = _result(name)
    assert result.structure.family == Family.CHUNKED_OUTER, result.structure.family_reason
    assert MOVED in result.structure.family_reason and MOVED in result.report.table()
    rot = result.structure.rotation
    assert result.structure.a.mixed_axes == (rot.pair_axis,) and rot.pair_axis in result.structure.outer.key_axes
    assert (rot.theta is None) == (name == "general")  # cos / sin as written: no atan2, no sqrt
    assert result.plan.signed_decay == (name == "signed")  # tanh: log|rho|, the signs folded into the streams
    built = _built(name)
    gen = torch.Generator().manual_seed(3)
    module = sys.modules[type(built.model).__module__]
    for b, t in ((2, 0), (3, 1), (2, 7), (2, 9), (1, 64), (2, 65)):
        module.chunked_outer_scan = functools.partial(chunked_outer_scan, chunk=4 if t < 64 else 64)
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


def test_rho_is_exactly_zero_at_some_steps():
    """The zero case really has rho = 0 at some steps (else it tests nothing): the scan then takes log|rho| through
    log_abs_decay, which keeps log 0 finite; checked above against the loop."""
    built = _built("zero")
    u = torch.randn(2, 20, built.d_in(), generator=torch.Generator().manual_seed(0), dtype=F64)
    rho = torch.stack([_decay("zero", built.params(), u[:, t]).abs() for t in range(20)])
    assert (rho == 0).any() and (rho > 0).any()
    assert "log_abs_decay" in _result("zero").source


@pytest.mark.parametrize("name", ["cret", "zero", "general", "pre"])
def test_gradients_match_float64_autograd_of_the_loop(name):
    """d sum(y * w) / d(u, every parameter) of the module (float64, torch path, T = 9 from a random initial state)
    against float64 autograd through the complex loop. The general case keeps x, y away from 0 (atan2 and sqrt have
    no derivative at x = y = 0)."""
    check_state_grads_against_loop(_built(name), lambda P, u, h0: _loop(name, P, u, h0), T=9)


def test_a_long_sequence_keeps_its_phase_in_float32():
    """T = 4096 in float32 with a constant angle ~1.3 and ~2.1 rad per step (the cumulative angle reaches ~8600
    rad): the module's output against the float64 loop. A float32 cumsum of the angles would be off by ~1e-3 rad
    at the end (see the next test); the float64 cumsum reduced mod 2 pi keeps the phases to fp32 rounding."""
    built = _built("xpos")
    with torch.no_grad():
        built.model.th0.copy_(torch.tensor([1.3, 2.1], dtype=F64))
    u = torch.randn(1, 4096, built.d_in(), generator=torch.Generator().manual_seed(2), dtype=F64)
    want, want_h = _loop("xpos", built.params(), u)  # float64, before the module goes to float32
    model = built.model.float()
    with torch.no_grad():
        y, h = model(u.float(), output_final_state=True)
    assert rel_err(y, want) < 2e-5 and state_err(h, want_h) < 2e-5


def test_the_phases_are_accurate_at_t_16384():
    """rotation_phases in float32 at T = 16384 against float64 cos / sin of the float64 cumsum: within fp32 rounding;
    the naive float32 cumsum misses by orders of magnitude more (so this check could fail)."""
    theta = (torch.rand(1, 16384, 3, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.5).float()
    phi = torch.cumsum(theta.to(F64), 1)
    cos_k, sin_k, cos_q, sin_q, cos_end, sin_end = rotation_phases(theta, torch.float32)
    assert cos_k.dtype == torch.float32
    assert (cos_k - torch.cos(phi)).abs().max() < 1e-6 and (sin_k - torch.sin(phi)).abs().max() < 1e-6
    assert torch.equal(cos_end, cos_k[:, -1]) and torch.equal(sin_q, sin_k)
    naive = torch.cos(torch.cumsum(theta, 1))
    assert (naive - torch.cos(phi)).abs().max() > 1e-4
    _, _, cos_pre, sin_pre, _, _ = rotation_phases(theta, torch.float32, readout="pre")
    assert cos_pre[0, 0].eq(1).all() and sin_pre[0, 0].eq(0).all()
    assert (cos_pre[:, 1:] - torch.cos(phi[:, :-1])).abs().max() < 1e-6


@pytest.mark.skipif(not TRITON, reason="triton (and numpy, for the interpreter) not installed")
@pytest.mark.parametrize("name", ["cret", "zero"])
def test_the_triton_path_rotates_the_same_streams(name):
    """backend="triton" (an explicit choice raises rather than falling back) in float32, T = 9 and 70 (two chunks)
    from a random initial state: output and final state against the loop; the backward at T = 9 against float64
    autograd of the loop (the kernels' backward on rotated q and k)."""
    result = _result(name)
    assert any("rotate_pairs" in line for line in result.plan.triton_outer)
    built = _built(name)
    P = built.params()  # float64, before the module goes to float32
    model = built.model.float()
    model.backend = "triton"
    gen = torch.Generator().manual_seed(4)
    for t in (9, 70):
        u = torch.randn(2, t, built.d_in(), generator=gen, dtype=F64)
        h0 = 0.5 * torch.randn(2, *built.state_shape(), generator=gen, dtype=F64)
        want, want_h = _loop(name, P, u, h0)
        with torch.no_grad():
            y, h = model(u.float(), initial_state=h0.float(), output_final_state=True)
        assert rel_err(y, want) < 2e-5 and state_err(h, want_h) < 2e-5, t
    u = torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
    w = torch.randn(2, 9, built.d_out(), generator=gen, dtype=F64)
    uu = u.clone().requires_grad_()
    want = torch.autograd.grad((_loop(name, P, uu)[0] * w).sum(), uu)[0]
    uu = u.float().requires_grad_()
    got = torch.autograd.grad((model(uu) * w.float()).sum(), uu)[0]
    assert rel_err(got, want) < 1e-4


# -- negative cases: the dense scan, with the right numbers ------------------------------------------------------------

NEGATIVE = {
    # the angle varies along the value axis b: no per-key form
    "value_angle": _spec("ValueAngle", "let rho[h: H] = sigmoid(sum(m, W_g[h, m] * u[m]) + 2)\n"
                         "let th[h: H, b: V] = sum(m, W_t[h, b, m] * u[m])",
                         "param W_g[H, d] ~ normal(0, 0.5)\nparam W_t[H, V, d] ~ normal(0, 0.5)",
                         ROT.format(rho="rho[h]", th="th[h, b]")),
    # [[x, y], [y, x]]: symmetric, not a rotation-scaling
    "symmetric": _spec("SymBlock", "let rho[h: H] = sigmoid(sum(m, W_g[h, m] * u[m]) + 2)\n" + TH_DATA,
                       "param W_g[H, d] ~ normal(0, 0.5)\nparam W_t[H, K, d] ~ normal(0, 0.5)",
                       "delta(h, h2) * delta(a, a2) * delta(b, b2) * rho[h]\n    * (delta(r, r2) * cos(th[h, a]) "
                       "+ (delta(r, 1) * delta(r2, 0) + delta(r, 0) * delta(r2, 1)) * sin(th[h, a]))"),
    # the pair on a value axis: y[h, b, r] = sum_a q[h, a] S[h, a, b, r]
    "value_pair": """
model ValuePair "a rotating decay on a value pair: the state's (re, im) pair is read out, not contracted"
dim d = 4
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, a: K, b: V, r: 2]
output y[h: H, b: V, r: 2]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, 2, d] ~ normal(0, 0.5)
param W_g[H, d] ~ normal(0, 0.5)
param W_t[H, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let rho[h: H] = sigmoid(sum(m, W_g[h, m] * u[m]) + 2)
let th[h: H] = sum(m, W_t[h, m] * u[m])
A[(h, a, b, r), (h2, a2, b2, r2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * rho[h]
    * (delta(r, r2) * cos(th[h]) + (delta(r, 1) * delta(r2, 0) - delta(r, 0) * delta(r2, 1)) * sin(th[h]))
B[(h, a, b, r), m] = k[h, a] * W_v[h, b, r, m]
C[(o, e, f), (h, a, b, r)] = delta(o, h) * delta(e, b) * delta(f, r) * q[h, a]
""",
}


def _negative_loop(name: str, P, u):
    """float64 loops of the negative cases from zero: y [B, T, ...]."""
    B, T = u.shape[:2]
    ys = []
    if name == "value_pair":
        H, K, V = P["W_q"].shape[0], P["W_q"].shape[1], P["W_v"].shape[1]
        S = torch.zeros(B, H, K, V, dtype=torch.complex128)
        for t in range(T):
            ut = u[:, t]
            lam = sig(matvec(P["W_g"], ut) + 2) * torch.exp(1j * matvec(P["W_t"], ut))  # [B, H]
            vr = matvec(P["W_v"], ut)
            v = torch.complex(vr[..., 0], vr[..., 1])
            S = lam[:, :, None, None] * S + matvec(P["W_k"], ut)[..., None] * v[:, :, None, :]
            y = torch.einsum("zha,zhav->zhv", matvec(P["W_q"], ut).to(S.dtype), S)
            ys.append(torch.stack([y.real, y.imag], -1))
        return torch.stack(ys, 1).reshape(B, T, -1)
    H, K, V = P["W_q"].shape[0], P["W_q"].shape[1], P["W_v"].shape[1]
    S = torch.zeros(B, H, K, 2, V, dtype=F64)
    for t in range(T):
        ut = u[:, t]
        rho = sig(matvec(P["W_g"], ut) + 2)  # [B, H]
        if name == "value_angle":
            th = matvec(P["W_t"], ut)[:, :, None, :]  # [B, H, 1, V]
            sign = -1.0
        else:
            th = matvec(P["W_t"], ut)[..., None]  # [B, H, K, 1]
            sign = 1.0
        c, s = rho[:, :, None, None] * torch.cos(th), rho[:, :, None, None] * torch.sin(th)
        # [[c, sign s], [s, c]] on the pair: the rotation-scaling (sign -1) or the symmetric block (+1)
        S0, S1 = S[:, :, :, 0], S[:, :, :, 1]
        S = torch.stack([c * S0 + sign * s * S1, s * S0 + c * S1], 3)
        S = S + matvec(P["W_k"], ut)[..., None] * matvec(P["W_v"], ut)[:, :, None, None, :]
        ys.append(torch.einsum("zhar,zharv->zhv", matvec(P["W_q"], ut), S))
    return torch.stack(ys, 1).reshape(B, T, -1)


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_what_is_not_a_rotating_key_decay_keeps_the_dense_scan(name):
    """An angle over the value axis, a symmetric [[x, y], [y, x]] block, a rotation pair on a value axis: no
    rotation split (the dense scan, as before), and the numbers are right (loop and reference, T = 7 and 65)."""
    result = compile_text(NEGATIVE[name], f"{name}.dsf")
    assert result.structure.family == Family.DENSE_SCAN, result.structure.family_reason
    assert result.structure.rotation is None and MOVED not in result.structure.family_reason
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
    gen = torch.Generator().manual_seed(6)
    for t in (7, 65):
        u = torch.randn(2, t, built.d_in(), generator=gen, dtype=F64)
        want = _negative_loop(name, built.params(), u)
        assert rel_err(built.reference(u)[0], want) < 1e-10
        with torch.no_grad():
            assert rel_err(built.model(u), want) < 1e-9, t


def test_the_catalog_dense_rotations_are_unchanged():
    """S4D and LRU (complex diagonal modes with an elementwise input, no outer product) keep the dense scan's
    complex rotation_scan: no key axis to move a rotation into."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "specs"
    for spec in ("s4d.dsf", "lru.dsf"):
        result = compile_text((root / spec).read_text(), spec)
        assert result.structure.family == Family.DENSE_SCAN and result.plan.rotation_scan, spec


def test_math_pi_wrap_does_not_change_the_angle():
    """rotate_pairs by the wrapped angle is the rotation by the unwrapped one (cos, sin are 2 pi periodic)."""
    from dsfc.runtime.scans import rotate_pairs

    x = torch.randn(4, 2, dtype=F64)
    phi = torch.tensor([0.3, 7.0, -20.0, 1e4], dtype=F64)
    wrapped = torch.remainder(phi, 2 * math.pi)
    got = rotate_pairs(x, torch.cos(wrapped), torch.sin(wrapped), 1)
    want = torch.stack([torch.cos(phi) * x[:, 0] + torch.sin(phi) * x[:, 1],
                        -torch.sin(phi) * x[:, 0] + torch.cos(phi) * x[:, 1]], 1)
    assert rel_err(got, want) < 1e-12
    back = rotate_pairs(got, torch.cos(wrapped), torch.sin(wrapped), 1, back=True)
    assert rel_err(back, x) < 1e-12
