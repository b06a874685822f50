"""specs/softmax_attention.dsf: the infinite feature range of exp, kernelised into quadratic attention.

Oracles written here, independent of dsfc: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` on
the module's own q/k/v projections (re-implemented in the test from its parameters), a plain float64 loop over the
paper's slot-basis recurrence, and the KV cache checked against running the whole sequence at once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsfc.pipeline import compile_spec

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64


def _load(stem: str):
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = compile_spec(f"specs/{stem}.dsf")
    finally:
        os.chdir(cwd)
    ns: dict = {}
    exec(compile(result.source, f"<{stem}>", "exec"), ns)  # the generated source, as written to generated/
    return result, ns[result.sym.model]


@pytest.fixture(scope="module")
def softmax():
    return _load("softmax_attention")


def _model(cls, d=5, H=2, K=3, V=4, seed=0):
    torch.manual_seed(seed)
    return cls(d=d, H=H, K=K, V=V, dtype=F64)


def _sdpa(m, u):
    """Causal softmax attention from the module's parameters: q = W_Q u per head, scale 1/sqrt(K)."""
    q = torch.einsum("hkd,btd->bhtk", m.W_Q, u)
    k = torch.einsum("hkd,btd->bhtk", m.W_K, u)
    v = torch.einsum("hvd,btd->bhtv", m.W_V, u)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # default scale 1/sqrt(K)
    return y.permute(0, 2, 1, 3).reshape(u.shape[0], u.shape[1], -1)


def test_generated_file_is_fresh(softmax):
    result, _ = softmax
    assert (ROOT / "generated" / "softmax_attention.py").read_text() == result.source


def test_analysis_reports_an_infinite_state_and_quadratic_family(softmax):
    r = softmax[0].report
    assert r.state_size_default is None and r.state_bytes_default is None and r.state_size == "H*V*taylor(K, inf)"
    assert r.family == "quadratic attention" and "infinite" in r.family_reason
    assert r.kv_cache == "H*(K + V) = 128 floats per token"


@pytest.mark.parametrize("batch,T", [(1, 1), (3, 7), (2, 64 + 3)])
def test_forward_matches_sdpa(softmax, batch, T):
    m = _model(softmax[1])
    u = torch.randn(batch, T, 5, dtype=F64)
    torch.testing.assert_close(m(u), _sdpa(m, u), rtol=1e-10, atol=1e-12)


def test_step_and_continued_forward_match_one_pass(softmax):
    m = _model(softmax[1])
    u = torch.randn(3, 9, 5, dtype=F64)
    want = _sdpa(m, u)
    y1, cache = m(u[:, :4], output_final_state=True)
    y2, cache2 = m(u[:, 4:], initial_state=cache, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), want, rtol=1e-10, atol=1e-12)
    assert cache2["cache:keys"].shape == (3, 9, 2, 3) and cache2["cache:values"].shape == (3, 9, 2, 4)
    state, ys = None, []
    for t in range(9):
        y_t, state = m.step(u[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-10, atol=1e-12)
    assert state["cache:keys"].shape[1] == 9  # the KV cache grows by one per step


def test_dsf_matrices_of_an_empty_sequence_have_no_steps_and_no_slots(softmax):
    m = _model(softmax[1])
    A1, B1, C1, D1 = m.dsf_matrices(torch.randn(2, 1, 5, dtype=F64))
    A, B, C, D = m.dsf_matrices(torch.randn(2, 0, 5, dtype=F64))
    assert A.shape == (2, 0, 0, 0) and B.shape == (2, 0, 0, 5)
    assert C.shape == (2, 0, C1.shape[2], 0) and D.shape == (2, 0, *D1.shape[2:])


@pytest.mark.parametrize("T", [1, 5])
def test_dsf_matrices_are_the_papers_slot_form(softmax, T):
    """A_i = (eta_(i-1)/eta_i) I, B_i writes v_i/eta_i into slot i, C_i[., slot j] = exp(q_i.k_j/sqrt(K)); the
    recurrence on them (a plain loop here) reproduces softmax attention."""
    m = _model(softmax[1])
    u = torch.randn(2, T, 5, dtype=F64)
    A, B, C, D = m.dsf_matrices(u)
    H, K, V = 2, 3, 4
    assert A.shape == (2, T, H * T * V, H * T * V) and C.shape == (2, T, H * V, H * T * V)
    q = torch.einsum("hkd,btd->bthk", m.W_Q, u)
    k = torch.einsum("hkd,btd->bthk", m.W_K, u)
    s = torch.einsum("bihk,bjhk->bhij", q, k) / K**0.5
    eta = torch.logcumsumexp(s, -1).diagonal(dim1=-2, dim2=-1).exp()  # eta_i = sum_(j<=i) exp(s_ij)
    for i in range(T):
        ratio = eta[:, :, i - 1] / eta[:, :, i] if i else torch.ones_like(eta[:, :, 0])
        diag = A[:, i].diagonal(dim1=-2, dim2=-1).reshape(2, H, T * V)
        torch.testing.assert_close(diag, ratio[:, :, None].expand(2, H, T * V))
        Cw = C[:, i].reshape(2, H, V, H, T, V)
        for h in range(H):
            for j in range(i + 1):
                torch.testing.assert_close(Cw[:, h, 0, h, j, 0], torch.exp(s[:, h, i, j]))
    Bw = B.reshape(2, T, H, T, V, 5)
    for i in range(T):
        for h in range(H):  # B_i writes W_V u_i / eta_i into slot i only
            want = torch.zeros(2, T, V, 5, dtype=F64)
            want[:, i] = m.W_V[h].detach() / eta[:, h, i, None, None]
            torch.testing.assert_close(Bw[:, i, h], want)
    h = torch.zeros(2, H * T * V, dtype=F64)
    ys = []
    for i in range(T):
        h = torch.einsum("bij,bj->bi", A[:, i], h) + torch.einsum("bij,bj->bi", B[:, i], u[:, i])
        ys.append(torch.einsum("bij,bj->bi", C[:, i], h))
    torch.testing.assert_close(torch.stack(ys, 1), _sdpa(m, u), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch,T", [(1, 1), (2, 7)])
def test_reference_evaluator_slot_form_matches_sdpa(softmax, batch, T):
    """dsfc/reference.py runs the dense slot-form recurrence in float64 (no kernelisation): it must be softmax."""
    from dsfc.reference import reference_forward

    result, cls = softmax
    m = _model(cls)
    u = torch.randn(batch, T, 5, dtype=F64)
    params = {n: getattr(m, n).detach() for n in ("W_Q", "W_K", "W_V")}
    y_ref, final = reference_forward(result.sym, result.sym.dim_values({"d": 5, "H": 2, "K": 3, "V": 4}), params, u)
    torch.testing.assert_close(y_ref, _sdpa(m, u), rtol=1e-10, atol=1e-12)
    assert final["h"].shape == (batch, 2 * T * 4)  # N = H * T * V slots


def test_large_logits_stay_finite(softmax):
    m = _model(softmax[1]).float()
    with torch.no_grad():
        m.W_Q.mul_(60.0)
        m.W_K.mul_(60.0)
    u = torch.randn(2, 33, 5)
    s = torch.einsum("hkd,btd->bhtk", m.W_Q, u) @ torch.einsum("hkd,btd->bhtk", m.W_K, u).transpose(-1, -2)
    assert s.abs().max() / 3**0.5 > 200  # scores far beyond exp's fp32 range
    y = m(u)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), _sdpa(m.double(), u.double()), rtol=1e-3, atol=1e-3)
    y_step, state = m.step(u[:, 0])
    assert torch.isfinite(y_step).all() and all(torch.isfinite(v).all() for v in state.values())


def test_gradcheck_wrt_input_parameters_and_cache(softmax):
    from torch.func import functional_call

    m = _model(softmax[1], d=3, H=2, K=2, V=2)
    u = torch.randn(1, 4, 3, dtype=F64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in (m.W_Q, m.W_K, m.W_V))

    def run(x, wq, wk, wv):
        return functional_call(m, {"W_Q": wq, "W_K": wk, "W_V": wv}, (x,))

    assert torch.autograd.gradcheck(run, (u, *params))
    with torch.no_grad():
        _, cache = m(torch.randn(1, 2, 3, dtype=F64), output_final_state=True)
    keys = cache["cache:keys"].clone().requires_grad_()
    values = cache["cache:values"].clone().requires_grad_()

    def cont(x, ks, vs):
        return m(x, initial_state={**cache, "cache:keys": ks, "cache:values": vs})

    assert torch.autograd.gradcheck(cont, (u, keys, values))


def test_gradients_match_sdpa(softmax):
    m = _model(softmax[1])
    u = torch.randn(2, 6, 5, dtype=F64, requires_grad=True)
    g = torch.randn(2, 6, 8, dtype=F64)
    got = torch.autograd.grad((m(u) * g).sum(), (u, m.W_Q, m.W_K, m.W_V))
    want = torch.autograd.grad((_sdpa(m, u) * g).sum(), (u, m.W_Q, m.W_K, m.W_V))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


UNNORMALISED = """model ExpKernel "y_i = 2 sum_(j<=i) exp(q_i.k_j / sqrt(K)) u_j + sigmoid(sum_(j<=i) u_j) u_i"
dim d = 5
dim K = 3
input u[d]
state S[f: taylor(K, inf), b: d]
output y[b: d]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
let qf[g: taylor(K, inf)] = taylor(a, sum(m, W_Q[a, m] * u[m]))
let kf[g: taylor(K, inf)] = taylor(c, sum(m, W_K[c, m] * u[m]))
A[(f, b), (f2, b2)] = delta(f, f2) * delta(b, b2)
B[(f, b), m] = kf[f] * delta(b, m)
C[o, (f, b)] = 2 * delta(o, b) * qf[f]
let cu[c: d] = cumsum(u[c])
D[o, m] = delta(o, m) * sigmoid(cu[o])
"""


def test_the_kernelised_form_is_general_not_softmax_only(tmp_path):
    """Another spec on taylor(K, inf): A = I (no normaliser), no group axis, a constant factor in C, a D term reading
    a finite running quantity (carried in the cache dict too)."""
    from dsfc.reference import reference_forward

    path = tmp_path / "exp_kernel.dsf"
    path.write_text(UNNORMALISED, encoding="utf-8")
    result = compile_spec(str(path))
    assert result.report.family == "quadratic attention"
    ns: dict = {}
    exec(compile(result.source, "<exp_kernel>", "exec"), ns)
    torch.manual_seed(4)
    m = ns["ExpKernel"](dtype=F64)
    u = torch.randn(2, 6, 5, dtype=F64)
    s = torch.einsum("kd,bid->bik", m.W_Q, u) @ torch.einsum("kd,bjd->bjk", m.W_K, u).transpose(1, 2) / 3**0.5
    want = 2 * (torch.exp(s) * torch.ones(6, 6, dtype=torch.bool).tril()) @ u + torch.sigmoid(u.cumsum(1)) * u
    torch.testing.assert_close(m(u), want, rtol=1e-10, atol=1e-12)
    y1, cache = m(u[:, :2], output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, m(u[:, 2:], initial_state=cache)], 1), want, rtol=1e-10, atol=1e-12)
    params = {"W_Q": m.W_Q.detach(), "W_K": m.W_K.detach()}
    y_ref, _ = reference_forward(result.sym, result.sym.dim_values(), params, u)  # the slot form, float64 loop
    torch.testing.assert_close(y_ref, want, rtol=1e-10, atol=1e-12)


def test_bench_compares_forward_with_the_kv_cache_loop(softmax):
    from dsfc.bench import run_bench

    row = run_bench(softmax[0], T=9, dims={"d": 5, "H": 2, "K": 3, "V": 4}, repeats=1)
    assert row["family"] == "quadratic attention" and row["max_rel_err"] < 1e-5


GQA = """model GQA "R query heads per group share its keys and values: two group axes (h, r)"
dim d = 4
dim H = 2
dim R = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, r: R, f: taylor(K, inf), b: V]
output y[h: H, r: R, b: V]
param W_Q[H, R, K, d] ~ normal(0, 0.6)
param W_K[H, K, d] ~ normal(0, 0.6)
param W_V[H, V, d] ~ normal(0, 0.6)
let qf[h: H, r: R, f: taylor(K, inf)] = taylor(a, sum(m, W_Q[h, r, a, m] * u[m]))
let kf[h: H, r: R, f: taylor(K, inf)] = taylor(a, sum(m, W_K[h, a, m] * u[m]))
let z[h: H, r: R, f: taylor(K, inf)] = cumsum(kf[h, r, f])
let eta[h: H, r: R] = sum(f, qf[h, r, f] * z[h, r, f])
let eta_prev[h: H, r: R] = prev(eta[h, r])
A[(h, r, f, b), (i, s, e, c)] = delta(h, i) * delta(r, s) * delta(f, e) * delta(b, c) * eta_prev[h, r] / eta[h, r]
B[(h, r, f, b), m] = kf[h, r, f] * W_V[h, b, m] / eta[h, r]
C[(o, s, e), (h, r, f, b)] = delta(o, h) * delta(s, r) * delta(e, b) * qf[h, r, f]
"""

GATED = """model Gated "no group axis, a per-key gate exp(g_j) (a column weight), a per-query factor and a D term"
dim d = 3
dim K = 2
dim V = 3
input u[d]
state S[f: taylor(K, inf), b: V]
output y[b: V]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
param w_g[d] ~ normal(0, 0.5)
let qf[g: taylor(K, inf)] = taylor(a, sum(m, W_Q[a, m] * u[m]))
let kf[g: taylor(K, inf)] = taylor(c, sum(m, W_K[c, m] * u[m]))
let gate = sum(m, w_g[m] * u[m])
A[(f, b), (f2, b2)] = delta(f, f2) * delta(b, b2)
B[(f, b), m] = kf[f] * W_V[b, m] * exp(gate)
C[o, (f, b)] = 0.5 * delta(o, b) * qf[f] * sigmoid(gate)
D[o, m] = delta(o, m) * 2
"""


def _gqa_naive(m, u):
    q = torch.einsum("hrkd,btd->bhrtk", m.W_Q, u)
    k = torch.einsum("hkd,btd->bhtk", m.W_K, u)[:, :, None].expand(-1, -1, 2, -1, -1)
    v = torch.einsum("hvd,btd->bhtv", m.W_V, u)[:, :, None].expand(-1, -1, 2, -1, -1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=3**-0.5)  # [B, H, R, T, V]
    return y.permute(0, 3, 1, 2, 4).reshape(u.shape[0], u.shape[1], -1)


def _gated_naive(m, u):
    s = torch.einsum("kd,bid->bik", m.W_Q, u) @ torch.einsum("kd,bjd->bjk", m.W_K, u).transpose(1, 2) / 2**0.5
    g = u @ m.w_g
    w = torch.exp(s + g[:, None, :]) * torch.ones(u.shape[1], u.shape[1], dtype=torch.bool).tril()
    return 0.5 * torch.sigmoid(g)[..., None] * (w @ (u @ m.W_V.T)) + 2 * u


@pytest.mark.parametrize("text,naive", [(GQA, _gqa_naive), (GATED, _gated_naive)], ids=["gqa", "gated"])
def test_slot_form_of_other_group_shapes(text, naive, tmp_path):
    """dsf_matrices with two group axes or none: the slot lets were [B, T, prod(groups) or 1, T] while the matrix
    entries index them by the spec's own group axes (an IndexError / expand error, and `dsfc check` an internal
    error). The recurrence h_t = A_t h_(t-1) + B_t u_t, y_t = C_t h_t + D_t u_t over the matrices, forward and the
    reference evaluator must all give the naive formula."""
    from dsfc.check import run_check

    path = tmp_path / "spec.dsf"
    path.write_text(text, encoding="utf-8")
    result = compile_spec(str(path))
    ns: dict = {}
    exec(compile(result.source, "<spec>", "exec"), ns)
    torch.manual_seed(2)
    m = ns[result.sym.model](dtype=F64)
    u = torch.randn(2, 5, m.W_Q.shape[-1], dtype=F64)
    with torch.no_grad():
        want = naive(m, u)
        torch.testing.assert_close(m(u), want, rtol=1e-10, atol=1e-12)
        A, B, C, D = m.dsf_matrices(u)
        h = torch.zeros(2, A.shape[-1], dtype=F64)
        ys = []
        for t in range(u.shape[1]):
            h = torch.einsum("bij,bj->bi", A[:, t], h) + torch.einsum("bij,bj->bi", B[:, t], u[:, t])
            ys.append(torch.einsum("bij,bj->bi", C[:, t], h) + torch.einsum("bij,bj->bi", D[:, t], u[:, t]))
    torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-10, atol=1e-12)
    report = run_check(result, shapes=((1, 1), (2, 4)), triton=False)
    assert report.ok, report.table()


@pytest.mark.parametrize("batch, T", [(2, 0), (0, 5)])
def test_cache_of_an_empty_call_continues(softmax, batch, T):
    """forward on no steps (T = 0, or no rows) with output_final_state returned ``{}`` as its cache, and passing it
    back, as the error message itself says to, raised "the KV cache dict lacks 'cache:keys', 'cache:values'". It is
    now an empty cache (S = 0) that continues like no state at all."""
    _, cls = softmax
    m = _model(cls)
    u = torch.randn(batch, 6, 5, dtype=F64)
    _, cache = m(torch.randn(batch, T, 5, dtype=F64), output_final_state=True)
    y, final = m(u, initial_state=cache, output_final_state=True)
    y_t, _ = m.step(u[:, 0], cache)
    assert final["cache:keys"].shape[:2] == (batch, T + 6) and y.shape == (batch, 6, 8) and y_t.shape == (batch, 8)
    if batch:  # float64: rounding only
        torch.testing.assert_close(y, _sdpa(m, u), atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(y_t, _sdpa(m, u[:, :1])[:, 0], atol=1e-12, rtol=1e-10)
