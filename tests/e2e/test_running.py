"""Running quantities (cumsum, scan, prev, window lets) end to end: small inline specs compiled with
``dsfc.pipeline.compile_text``, checked against the float64 reference (``dsfc.check.run_check``) and against
hand-written loops of the models they describe; the state dict {"h": ..., <running let>: ...} carries them across
calls, so a forward over chunks chained through the returned state, or ``step`` token by token, equals one forward
over the whole sequence.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
import torch

from dsfc.check import load_module, run_check
from dsfc.pipeline import compile_text

F64 = torch.float64
SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
_counter = itertools.count()

# Katharopoulos-style linear attention whose normaliser is a cumsum, read out in C: y_t = S_t^T q_t / (q_t . z_t).
CUMSUM = """\
model CumsumNormalised "linear attention with a running (cumsum) normaliser in the readout"
dim d = 6
dim K = 3
dim V = 4
input u[d]
state S[a: K, b: V]
output y[b: V]
param W_Q[K, d] ~ uniform(-1 / sqrt(d), 1 / sqrt(d))
param W_K[K, d] ~ uniform(-1 / sqrt(d), 1 / sqrt(d))
param W_V[V, d] ~ uniform(-1 / sqrt(d), 1 / sqrt(d))
let q[a: K] = elu(sum(m, W_Q[a, m] * u[m])) + 1
let k[a: K] = elu(sum(m, W_K[a, m] * u[m])) + 1
let z[a: K] = cumsum(k[a])
let eta = sum(a, q[a] * z[a])
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2)
B[(a, b), m] = k[a] * W_V[b, m]
C[o, (a, b)] = delta(o, b) * q[a] / eta
"""

# mLSTM-like: the normaliser decays with the forget gate, n_t = f_t n_(t-1) + i_t k_t, and
# y_t = S_t^T q_t / max(|q_t . n_t|, 1) with S_t = f_t S_(t-1) + i_t k_t v_t^T.
SCAN = """\
model ScanNormalised "mLSTM-like decayed normaliser n_t = f_t n_(t-1) + i_t k_t"
dim d = 6
dim K = 3
dim V = 4
input u[d]
state S[a: K, b: V]
output y[b: V]
param W_Q[K, d] ~ normal(0, 0.5)
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
param w_f[d] ~ normal(0, 0.5)
param w_i[d] ~ normal(0, 0.5)
let f = sigmoid(sum(m, w_f[m] * u[m]))
let ig = exp(sum(m, w_i[m] * u[m]))
let q[a: K] = sum(m, W_Q[a, m] * u[m])
let k[a: K] = sum(m, W_K[a, m] * u[m]) / sqrt(K)
let n[a: K] = scan(f, ig * k[a])
let den = max(abs(sum(a, q[a] * n[a])), 1)
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * f
B[(a, b), m] = ig * k[a] * W_V[b, m]
C[o, (a, b)] = delta(o, b) * q[a] / den
"""

# Normalised attention's eigenvalue eta(u_(t-1)) / eta(u_t), per channel: h_t = 0.9 eta_(t-1)/eta_t h_(t-1) + u_t/eta_t.
PREV = """\
model PrevRatio "diagonal decay 0.9 eta(u_(t-1)) / eta(u_t)"
dim d = 5
input u[d]
state h[c: d]
param W[d, d] ~ normal(0, 0.5)
let eta[c: d] = softplus(sum(m, W[c, m] * u[m])) + 0.5
let eta_prev[c: d] = prev(eta[c])
A[i, k] = delta(i, k) * 0.9 * eta_prev[i] / eta[i]
B[i, k] = delta(i, k) / eta[i]
C[i, k] = delta(i, k)
"""

# A causal short convolution of the input (width 3) sets a diagonal gate: h_t = sigmoid(a + conv(u)_t) h_(t-1) + u_t.
WINDOW = """\
model ShortConvGate "gate from a causal short convolution of the input"
dim d = 4
dim w = 3
input u[d]
state h[c: d]
param W[d, w] ~ normal(0, 0.5)
param a[d] ~ normal(0, 1)
let xs[c: d, k: w] = window(u[c])
let x[c: d] = sum(k, W[c, k] * xs[c, k])
A[i, j] = delta(i, j) * sigmoid(a[i] + x[i])
B[i, j] = delta(i, j)
C[i, j] = delta(i, j)
"""

INLINE = {"cumsum": CUMSUM, "scan": SCAN, "prev": PREV, "window": WINDOW}
RUNNING = {"cumsum": {"z"}, "scan": {"n"}, "prev": {"eta_prev"}, "window": {"xs"},
           "normalized": {"z", "eta_prev"}}
# the catalog's normalised linear attention, at small dims
CATALOG = {"normalized": ("linear_attention_normalized.dsf", {"d": 6, "H": 2, "K": 3, "V": 2})}
ALL = list(INLINE) + list(CATALOG)


@functools.lru_cache(maxsize=None)
def compiled(name: str):
    if name in INLINE:
        return compile_text(INLINE[name], f"{name}.dsf")
    path = SPECS_DIR / CATALOG[name][0]
    return compile_text(path.read_text(), str(path))


def model_of(name: str, seed: int = 0):
    result = compiled(name)
    module = load_module(result, name=f"dsfc_running_{name}_{next(_counter)}")
    dims = CATALOG[name][1] if name in CATALOG else {}
    torch.manual_seed(seed)
    return getattr(module, result.plan.model)(**dims, dtype=F64)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    if want.numel() == 0:
        return 0.0
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


def assert_state_close(got: dict, want: dict, tol: float = 1e-10):
    assert isinstance(got, dict) and set(got) == set(want), (sorted(got), sorted(want))
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert rel(got[key], want[key]) <= tol, key


def inputs(model, batch: int = 2, T: int = 9, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, model._in_features(), generator=gen, dtype=F64)


# ----------------------------------------------------------------------------------------------------------------
# Against the float64 reference


@pytest.mark.parametrize("name", ALL)
def test_run_check_passes(name):
    result = compiled(name)
    assert {let.tensor.name for let in result.sym.running_lets} == RUNNING[name]
    report = run_check(result, dims=CATALOG[name][1] if name in CATALOG else None)
    assert report.ok, report.table()


@pytest.mark.parametrize("name", ALL)
def test_state_is_a_dict_of_h_and_the_running_lets(name):
    model = model_of(name)
    u = inputs(model)
    with torch.no_grad():
        y, state = model(u, output_final_state=True)
    assert set(state) == {"h"} | RUNNING[name]
    assert state["h"].reshape(u.shape[0], -1).shape[1] == model._state_size()
    lets = {let.tensor.name: let for let in compiled(name).sym.running_lets}
    for key in RUNNING[name]:
        assert state[key].shape[0] == u.shape[0] and state[key].dim() == 1 + len(lets[key].tensor.axes), key
        assert state[key].dtype == F64


@pytest.mark.parametrize("name", ALL)
def test_an_unknown_state_key_is_an_error(name):
    """A misspelt key of the state dict would otherwise start that running quantity from zero without a word."""
    model = model_of(name)
    u = inputs(model)
    with torch.no_grad():
        _, state = model(u, output_final_state=True)
        key = sorted(RUNNING[name])[0] if RUNNING[name] else "h"
        wrong = {("x" + k if k == key else k): v for k, v in state.items()}
        with pytest.raises(ValueError, match=rf"unknown initial_state key\(s\) \['x{key}'\]; expected keys"):
            model(u, initial_state=wrong)


# ----------------------------------------------------------------------------------------------------------------
# Carried across calls


@pytest.mark.parametrize("split", [1, 4, 8])
@pytest.mark.parametrize("name", ALL)
def test_forward_over_two_halves_equals_one_forward(name, split):
    model = model_of(name)
    u = inputs(model, T=9)
    with torch.no_grad():
        y, final = model(u, output_final_state=True)
        y1, s1 = model(u[:, :split], output_final_state=True)
        y2, s2 = model(u[:, split:], initial_state=s1, output_final_state=True)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-10
    assert_state_close(s2, final)


@pytest.mark.parametrize("name", ALL)
def test_forward_over_halves_from_a_carried_state(name):
    model = model_of(name)
    with torch.no_grad():
        _, s0 = model(inputs(model, T=4, seed=7), output_final_state=True)
        u = inputs(model, T=10)
        y, final = model(u, initial_state=s0, output_final_state=True)
        y1, s1 = model(u[:, :5], initial_state=s0, output_final_state=True)
        y2, s2 = model(u[:, 5:], initial_state=s1, output_final_state=True)
        # the whole sequence is also the prefix and u chained
        y_all = model(torch.cat([inputs(model, T=4, seed=7), u], 1))
    assert rel(torch.cat([y1, y2], 1), y) < 1e-10
    assert_state_close(s2, final)
    assert rel(y_all[:, 4:], y) < 1e-10


@pytest.mark.parametrize("name", ALL)
def test_an_empty_chunk_passes_the_state_through(name):
    model = model_of(name)
    u = inputs(model, T=5)
    with torch.no_grad():
        _, s1 = model(u, output_final_state=True)
        y0, s2 = model(u[:, :0], initial_state=s1, output_final_state=True)
    assert y0.shape[1] == 0
    assert_state_close(s2, s1, tol=0.0)


@pytest.mark.parametrize("name", ALL)
def test_step_token_by_token_equals_forward(name):
    model = model_of(name)
    u = inputs(model, T=7)
    with torch.no_grad():
        y, final = model(u, output_final_state=True)
    state, ys = None, []
    for t in range(u.shape[1]):
        y_t, state = model.step(u[:, t], state)
        ys.append(y_t)
    assert rel(torch.stack(ys, 1), y) < 1e-10
    assert_state_close(state, final)


# ----------------------------------------------------------------------------------------------------------------
# Against hand-written loops of the models the specs describe (fresh start: sums at 0, prev at x_0, windows at 0)


def _loop_cumsum(m, u):
    q = torch.nn.functional.elu(u @ m.W_Q.T) + 1
    k = torch.nn.functional.elu(u @ m.W_K.T) + 1
    v = u @ m.W_V.T
    S = torch.zeros(u.shape[0], q.shape[-1], v.shape[-1], dtype=F64)
    z = torch.zeros(u.shape[0], q.shape[-1], dtype=F64)
    ys = []
    for t in range(u.shape[1]):
        S = S + k[:, t, :, None] * v[:, t, None, :]
        z = z + k[:, t]
        ys.append(torch.einsum("ba,bav->bv", q[:, t], S) / (q[:, t] * z).sum(-1, keepdim=True))
    return torch.stack(ys, 1), {"z": z}


def _loop_scan(m, u):
    f = torch.sigmoid(u @ m.w_f)
    ig = torch.exp(u @ m.w_i)
    q = u @ m.W_Q.T
    k = (u @ m.W_K.T) / 3**0.5
    v = u @ m.W_V.T
    S = torch.zeros(u.shape[0], q.shape[-1], v.shape[-1], dtype=F64)
    n = torch.zeros(u.shape[0], q.shape[-1], dtype=F64)
    ys = []
    for t in range(u.shape[1]):
        S = f[:, t, None, None] * S + ig[:, t, None, None] * k[:, t, :, None] * v[:, t, None, :]
        n = f[:, t, None] * n + ig[:, t, None] * k[:, t]
        den = (q[:, t] * n).sum(-1, keepdim=True).abs().clamp_min(1.0)
        ys.append(torch.einsum("ba,bav->bv", q[:, t], S) / den)
    return torch.stack(ys, 1), {"n": n}


def _loop_prev(m, u):
    eta = torch.nn.functional.softplus(u @ m.W.T) + 0.5
    h = torch.zeros(u.shape[0], u.shape[-1], dtype=F64)
    ys = []
    for t in range(u.shape[1]):
        eta_prev = eta[:, t - 1] if t else eta[:, 0]
        h = 0.9 * eta_prev / eta[:, t] * h + u[:, t] / eta[:, t]
        ys.append(h)
    return torch.stack(ys, 1), {"eta_prev": eta[:, -1]}


def _loop_window(m, u):
    width = m.W.shape[1]
    padded = torch.cat([torch.zeros(u.shape[0], width - 1, u.shape[-1], dtype=F64), u], 1)
    h = torch.zeros(u.shape[0], u.shape[-1], dtype=F64)
    ys = []
    for t in range(u.shape[1]):
        xs = padded[:, t : t + width].transpose(1, 2)  # [B, d, w]: u_(t-w+1), ..., u_t
        h = torch.sigmoid(m.a + (m.W * xs).sum(-1)) * h + u[:, t]
        ys.append(h)
    return torch.stack(ys, 1), {"xs": padded[:, -width:].transpose(1, 2)}


def _loop_normalized(m, u):
    """Normalised linear attention: y_t[h] = sum_s (qf_t . kf_s) v_s / sum_s (qf_t . kf_s) over s <= t."""
    qf = torch.nn.functional.elu(torch.einsum("btd,hkd->bthk", u, m.W_Q)) + 1
    kf = torch.nn.functional.elu(torch.einsum("btd,hkd->bthk", u, m.W_K)) + 1
    v = torch.einsum("btd,hvd->bthv", u, m.W_V)
    scores = torch.einsum("bthk,bshk->bhts", qf, kf)
    causal = torch.ones(u.shape[1], u.shape[1], dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, 0.0)
    y = torch.einsum("bhts,bshv->bthv", scores, v) / scores.sum(-1).transpose(1, 2)[..., None]
    z = kf.sum(1)
    return y.reshape(u.shape[0], u.shape[1], -1), {"z": z, "eta_prev": (qf[:, -1] * z).sum(-1)}


LOOPS = {"cumsum": _loop_cumsum, "scan": _loop_scan, "prev": _loop_prev, "window": _loop_window,
         "normalized": _loop_normalized}


@pytest.mark.parametrize("name", ALL)
def test_matches_a_hand_written_loop(name):
    model = model_of(name)
    u = inputs(model, T=8)
    with torch.no_grad():
        y, state = model(u, output_final_state=True)
        want_y, want_running = LOOPS[name](model, u)
    assert rel(y, want_y) < 1e-10
    for key, want in want_running.items():
        assert rel(state[key], want) < 1e-10, key


# ----------------------------------------------------------------------------------------------------------------
# The in-module reference backend and running ops over constants


@pytest.mark.parametrize("name", ["cumsum", "window"])
def test_reference_backend_carries_the_state_like_torch(name):
    model = model_of(name)
    u = inputs(model, T=9)
    with torch.no_grad():
        y, final = model(u, output_final_state=True)
        model.backend = "reference"
        y_ref, final_ref = model(u, output_final_state=True)
        y1, s1 = model(u[:, :4], output_final_state=True)
        y2, s2 = model(u[:, 4:], initial_state=s1, output_final_state=True)
    assert rel(y_ref, y) < 1e-10 and rel(torch.cat([y1, y2], 1), y) < 1e-10
    assert_state_close(final_ref, final)
    assert_state_close(s2, final)



def test_running_op_over_a_constant():
    text = ("dim d = 3\ninput u[d]\nstate h[d]\nlet steps = cumsum(1)\n"
            "A[i, k] = delta(i, k) * 0.5\nB[i, k] = delta(i, k) / steps\nC[i, k] = delta(i, k)\n")
    report = run_check(compile_text(text, "steps.dsf"))
    assert report.ok, report.table()
