"""Decayed softmax attention: specs/fox.dsf (the Forgetting Transformer), an ALiBi-style spec (a constant per-head
log-decay param) and the un-normalised decayed kernel (A = f I), kernelised into quadratic attention whose weights
carry G_i - G_j, G the cumulative per-step log-decay.

Oracles: ``_masked_softmax`` below, a plain float64 masked softmax (or sum) of q.k / sqrt(K) + G_i - G_j written
from the module's parameters, and dsfc/reference.py's float64 slot-form recurrence of the same spec.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsfc.lang.errors import SpecErrors
from dsfc.pipeline import compile_spec
from dsfc.reference import reference_forward

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
DIMS = {"d": 5, "H": 2, "K": 3, "V": 4}

ALIBI = """model ALiBi "softmax attention with a constant per-head decay bias -s_h (i - j) (ALiBi's linear bias)"
dim d = 5
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, e: taylor(K, inf), b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param s[H] ~ uniform(0.1, 1)
let qf[h: H, e: taylor(K, inf)] = taylor(a, sum(m, W_Q[h, a, m] * u[m]))
let kf[h: H, e: taylor(K, inf)] = taylor(a, sum(m, W_K[h, a, m] * u[m]))
let z[h: H, e: taylor(K, inf)] = scan(exp(-s[h]), kf[h, e])
let eta[h: H] = sum(e, qf[h, e] * z[h, e])
let eta_prev[h: H] = prev(eta[h])
A[(h, e, b), (h2, e2, b2)] = delta(h, h2) * delta(e, e2) * delta(b, b2) * exp(-s[h]) * eta_prev[h] / eta[h]
B[(h, e, b), m] = kf[h, e] * W_V[h, b, m] / eta[h]
C[(o, c), (h, e, b)] = delta(o, h) * delta(c, b) * qf[h, e]
"""

UNNORMALISED = """model DecayedKernel "y_i = sum_(j<=i) exp(q_i.k_j / sqrt(K) + G_i - G_j) v_j (no normaliser)"
dim d = 5
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[h: H, e: taylor(K, inf), b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_F[H, d] ~ normal(0, 1)
let f[h: H] = sigmoid(sum(m, W_F[h, m] * u[m]))
let qf[h: H, e: taylor(K, inf)] = taylor(a, sum(m, W_Q[h, a, m] * u[m]))
let kf[h: H, e: taylor(K, inf)] = taylor(a, sum(m, W_K[h, a, m] * u[m]))
A[(h, e, b), (h2, e2, b2)] = delta(h, h2) * delta(e, e2) * delta(b, b2) * f[h]
B[(h, e, b), m] = kf[h, e] * W_V[h, b, m]
C[(o, c), (h, e, b)] = delta(o, h) * delta(c, b) * qf[h, e]
"""

KINDS = ["fox", "alibi", "unnormalised"]


def _compile(kind: str, tmp: Path):
    if kind == "fox":
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            return compile_spec("specs/fox.dsf")
        finally:
            os.chdir(cwd)
    path = tmp / f"{kind}.dsf"
    path.write_text(ALIBI if kind == "alibi" else UNNORMALISED, encoding="utf-8")
    return compile_spec(str(path))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decayed")
    out = {}
    for kind in KINDS:
        result = _compile(kind, tmp)
        ns: dict = {}
        exec(compile(result.source, f"<{kind}>", "exec"), ns)
        out[kind] = (result, ns[result.sym.model])
    return out


def _model(built, kind, seed=0, dtype=F64):
    torch.manual_seed(seed)
    cls = built[kind][1]
    return cls(**(DIMS if kind == "fox" else {}), dtype=dtype)


def _log_decay(m, kind, u):
    """log f per step and head [B, H, T]."""
    if kind == "alibi":
        return (-m.s)[None, :, None].expand(u.shape[0], -1, u.shape[1])
    return F.logsigmoid(torch.einsum("hd,btd->bht", m.W_F, u))


def _masked_softmax(m, kind, u):
    """The oracle: per head, weights exp(q_i.k_j / sqrt(K) + G_i - G_j) over j <= i, normalised (FoX, ALiBi) or
    not, times v_j; everything float64, one [T, T] matrix."""
    u = u.to(F64)
    q = torch.einsum("hkd,btd->bhtk", m.W_Q.double(), u)
    k = torch.einsum("hkd,btd->bhtk", m.W_K.double(), u)
    v = torch.einsum("hvd,btd->bhtv", m.W_V.double(), u)
    G = _log_decay(m, kind, u).double().cumsum(-1)
    T = u.shape[1]
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + G[..., :, None] - G[..., None, :]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    w = s.softmax(-1) if kind != "unnormalised" else torch.exp(s)
    return (w @ v).permute(0, 2, 1, 3).reshape(u.shape[0], T, v.shape[1] * v.shape[-1])


def _params(m):
    return {n: p.detach() for n, p in m.named_parameters()}


def test_fox_generated_file_is_fresh(built):
    assert (ROOT / "generated" / "fox.py").read_text() == built["fox"][0].source


def test_analysis_reads_the_decayed_normaliser(built):
    r = built["fox"][0].report
    assert r.family == "quadratic attention"
    assert "f[h]" in r.eigen_reason and "eta_prev" in r.eigen_reason and "(0, inf)" in r.eigen_reason
    kern = built["fox"][0].structure.kernel
    assert kern.history_decayed and kern.attention_decayed
    assert not built["unnormalised"][0].structure.kernel.history_decayed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,T", [(1, 0), (3, 1), (1, 7), (3, 33)])
def test_forward_matches_masked_softmax_and_reference(built, kind, batch, T):
    m = _model(built, kind)
    u = torch.randn(batch, T, 5, dtype=F64)
    y = m(u)
    assert y.shape == (batch, T, 8)
    torch.testing.assert_close(y, _masked_softmax(m, kind, u), rtol=1e-10, atol=1e-12)
    if T and T <= 7:  # the slot-form reference is O(T^3) in memory
        result = built[kind][0]
        y_ref, _ = reference_forward(result.sym, result.sym.dim_values(DIMS), _params(m), u)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_initial_state_and_step_continue_one_pass(built, kind):
    m = _model(built, kind)
    u = torch.randn(3, 9, 5, dtype=F64)
    want = _masked_softmax(m, kind, u)
    y1, cache = m(u[:, :4], output_final_state=True)
    assert cache["cache:decay"].shape == (3, 4, 2)
    y0, cache0 = m(u[:, 4:4], initial_state=cache, output_final_state=True)  # T = 0 continues too
    y2, cache2 = m(u[:, 4:], initial_state=cache0, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y0, y2], 1), want, rtol=1e-10, atol=1e-12)
    assert cache2["cache:keys"].shape[1] == 9 and cache2["cache:decay"].shape == (3, 9, 2)
    state, ys = None, []
    for t in range(9):
        y_t, state = m.step(u[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-10, atol=1e-12)
    # the carried decay is each key's G_last - G_j: bounded by the keys' age, not an ever-growing G
    G = _log_decay(m, kind, u).cumsum(-1).permute(0, 2, 1)
    torch.testing.assert_close(state["cache:decay"], G[:, -1:] - G, rtol=1e-10, atol=1e-12)


def _grads(m, u, cache, backend):
    m.backend = backend
    state = {k: v.clone().requires_grad_() for k, v in cache.items()}
    y = m(u, initial_state=state)
    w = torch.linspace(-1, 1, y.numel(), dtype=F64).reshape(y.shape)
    names = [n for n, _ in m.named_parameters()]
    inputs = [u, *m.parameters(), *state.values()]
    # the carried eta_prev is unused: A's telescoping leaves only eta_i of the current steps (zero gradient)
    grads = torch.autograd.grad((y * w).sum(), inputs, allow_unused=True, materialize_grads=True)
    return dict(zip(["u", *names, *state], grads))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_of_input_initial_state_and_params(built, kind):
    """torch path: gradcheck through the cache (FoX: the costly check, once), against the oracle's gradients (every
    kind); Triton (interpreted) against torch, the cache's entries included."""
    from torch.func import functional_call

    m = _model(built, kind)
    with torch.no_grad():
        _, cache = m(torch.randn(1, 3, 5, dtype=F64), output_final_state=True)
    u = torch.randn(1, 4, 5, dtype=F64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    ps = tuple(p.detach().clone().requires_grad_() for p in m.parameters())

    def run(x, *args):
        params, st = dict(zip(names, args[:len(names)])), dict(zip(cache, args[len(names):]))
        return functional_call(m, params, (x,), {"initial_state": st})

    st = tuple(v.clone().requires_grad_() for v in cache.values())
    if kind == "fox":
        assert torch.autograd.gradcheck(run, (u, *ps, *st))
    # against the oracle (no cache)
    w = torch.randn(1, 4, 8, dtype=F64)
    got = torch.autograd.grad((m(u) * w).sum(), [u, *m.parameters()])
    want = torch.autograd.grad((_masked_softmax(m, kind, u) * w).sum(), [u, *m.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton comparison runs under TRITON_INTERPRET=1 (or CUDA)")
    g_torch = _grads(m, u, cache, "torch")
    g_triton = _grads(m, u, cache, "triton")
    for name in g_torch:
        torch.testing.assert_close(g_triton[name], g_torch[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.fixture(scope="module")
def triton_env():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1 (set before triton is imported)")


@pytest.mark.parametrize("kind", ["fox", "unnormalised"])
def test_triton_forward_and_step_match_torch(built, kind, triton_env):
    m = _model(built, kind)
    u = torch.randn(3, 19, 5, dtype=F64)
    want = _masked_softmax(m, kind, u)
    m.backend = "triton"
    y1, cache = m(u[:, :6], output_final_state=True)
    y2 = m(u[:, 6:], initial_state=cache)
    torch.testing.assert_close(torch.cat([y1, y2], 1), want, rtol=1e-10, atol=1e-12)
    y_t, _ = m.step(u[:, 6], cache)
    torch.testing.assert_close(y_t, want[:, 6], rtol=1e-10, atol=1e-12)


def _chunked_oracle(m, u, block=500, dtype=F64):
    """The FoX oracle, a block of queries at a time (T = 4000 would be a 128 MB matrix per head); float64, or the
    naive fp32 form (G cumulated and differenced in fp32) for comparison."""
    u = u.to(dtype)
    q = torch.einsum("hkd,btd->bhtk", m.W_Q.to(dtype), u)
    k = torch.einsum("hkd,btd->bhtk", m.W_K.to(dtype), u)
    v = torch.einsum("hvd,btd->bhtv", m.W_V.to(dtype), u)
    G = F.logsigmoid(torch.einsum("hd,btd->bht", m.W_F.to(dtype), u)).cumsum(-1)
    T, out = u.shape[1], []
    for t0 in range(0, T, block):
        t1 = min(t0 + block, T)
        s = q[:, :, t0:t1] @ k[:, :, :t1].transpose(-1, -2) / q.shape[-1] ** 0.5
        s = s + G[:, :, t0:t1, None] - G[:, :, None, :t1]
        s = s.masked_fill(torch.ones(t1 - t0, t1, dtype=torch.bool).triu(t0 + 1), float("-inf"))
        out.append(s.softmax(-1) @ v[:, :, :t1])
    return torch.cat(out, 2).permute(0, 2, 1, 3).reshape(u.shape[0], T, -1)


def test_long_sequence_with_strong_decay_keeps_fp32_accuracy(built):
    """T = 4000 with log f ~ -1.5 per step: |G| ~ 6000, where fp32 G_i - G_j would keep ~3 digits (ulp(6000) =
    5e-4 in every weight's exponent). The module (fp32) forms G in float64 and the differences per query block."""
    m = _model(built, "fox", seed=3, dtype=torch.float32)
    with torch.no_grad():
        m.W_F.mul_(6.0)
    torch.manual_seed(5)
    u = torch.randn(1, 4000, 5)
    G = F.logsigmoid(torch.einsum("hd,btd->bht", m.W_F.double(), u.double())).cumsum(-1)
    assert G.abs().max() > 3000
    with torch.no_grad():
        want = _chunked_oracle(m, u)
        err = (m(u).double() - want).abs().max().item()
        naive = (_chunked_oracle(m, u, dtype=torch.float32).double() - want).abs().max().item()
    assert err < 5e-6 and err < naive / 20, (err, naive)  # here ~5e-7 against the naive fp32 form's ~3e-4


REFUSED = [
    # the decay of the history depends on the feature index
    ("let z[h: H, e: taylor(K, inf)] = scan(f[h], kf[h, e])",
     "let z[h: H, e: taylor(K, inf)] = scan(f[h] * kf[h, e], kf[h, e])", "z", "feature index"),
    # the history decays by f but A by another gate
    ("* f[h] * eta_prev[h] / eta[h]", "* g[h] * eta_prev[h] / eta[h]", "z", "differs from A's"),
    # a decay that is not provably positive
    ("scan(f[h], kf[h, e])", "scan(tanh(sum(m, W_F[h, m] * u[m])), kf[h, e])", "z", "not provably positive"),
    # A's decay per value entry, not per group
    ("* f[h] * eta_prev[h] / eta[h]", "* fb[h, b] * eta_prev[h] / eta[h]", "A", "group"),
]


@pytest.mark.parametrize("old,new,where,message", REFUSED, ids=["feature", "mismatch", "sign", "value-axis"])
def test_refused_with_a_positioned_error(tmp_path, old, new, where, message):
    text = (ROOT / "specs" / "fox.dsf").read_text()
    assert old in text
    text = text.replace(old, new).replace(
        "let qf[", "let g[h: H] = exp(-sum(m, W_F[h, m] * u[m]) ** 2)\n"
        "let fb[h: H, b: V] = sigmoid(sum(m, W_F[h, m] * u[m]) * b)\nlet qf[", 1)
    path = tmp_path / "bad.dsf"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecErrors) as info:
        compile_spec(str(path))
    err = info.value.errors[0]
    line = text.splitlines()[err.span.line - 1]
    assert message in err.message, err.message
    assert line.startswith(f"let {where}[") if where != "A" else line.startswith("A[")
