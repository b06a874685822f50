"""``step`` (one decoding token) after its per-call cost was cut: the T = 1 fast paths of the scans
(``diagonal_scan``, ``chunked_outer_scan``), the single-call finite check of u and the parameters, the cached
constants of the Triton launches. Every step must still compute forward's maths and keep every error check.

Float64, small dims, the committed generated modules; oracles: the module's float64 reference backend (the dense
DSF recurrence) and, for the outer-product step, a loop written from the recurrence's equations."""

from __future__ import annotations

import importlib

import pytest
import torch

from dsfc.runtime.scans import chunked_outer_scan, diagonal_scan

F64 = torch.float64
TOL = 1e-10

# one spec per family the step fast paths touch, plus running quantities (Mamba's conv window) and the delta rule
SPECS = {
    "s6": {"d": 4, "n": 3, "r": 2},
    "rg_lru": {"W": 4, "nh": 2},
    "ssd": {"H": 2, "P": 2, "n": 3, "G": 1},
    "gla": {"d": 6, "H": 2, "K": 3, "V": 2, "R": 2},
    "rwkv6": {"d": 4, "H": 2, "K": 2, "V": 2, "R": 2, "Rw": 2, "layer": 1, "L": 2},
    "mamba_block": {"d": 4, "e": 1, "n": 2, "r": 1, "W": 2},
    "deltanet": {"d": 4, "H": 2, "K": 2, "V": 2},
}


def _model(name: str):
    mod = importlib.import_module(f"generated.{name}")
    cls = next(v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == mod.__name__)
    torch.manual_seed(0)
    return cls(**SPECS[name]).to(F64)


def _max_err(a, b) -> float:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max(_max_err(a[k], b[k]) for k in a)
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _steps(model, u, state):
    ys = []
    for t in range(u.shape[1]):
        y, state = model.step(u[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("name", list(SPECS))
def test_step_matches_forward_and_the_reference_with_gradients(name):
    model = _model(name)
    B, T = 2, 5
    u = torch.randn(B, T, model._in_features(), dtype=F64)
    with torch.no_grad():
        _, s0 = model(torch.randn(B, 3, model._in_features(), dtype=F64), output_final_state=True)
        model.backend = "reference"
        y_ref, s_ref = model(u, initial_state=s0, output_final_state=True)
        model.backend = "torch"
    w = torch.randn(B, T, y_ref.shape[-1], dtype=F64)
    params = list(model.parameters())

    def grads(run):
        uu = u.clone().requires_grad_()
        y, s = run(uu)
        loss = (y * w).sum() + sum((v * 0.5).sum() for v in (s.values() if isinstance(s, dict) else [s]))
        return y.detach(), s, torch.autograd.grad(loss, [uu, *params])

    y_f, s_f, g_f = grads(lambda uu: model(uu, initial_state=s0, output_final_state=True))
    y_s, s_s, g_s = grads(lambda uu: _steps(model, uu, s0))
    assert _max_err(y_s, y_f) <= TOL and _max_err(y_s, y_ref) <= TOL
    assert _max_err({k: v.detach() for k, v in s_s.items()} if isinstance(s_s, dict) else s_s.detach(),
                    s_ref) <= TOL
    assert _max_err(s_f if not isinstance(s_f, torch.Tensor) else s_f.detach(), s_ref) <= TOL
    for a, b in zip(g_s, g_f):
        assert _max_err(a, b) <= TOL


@pytest.mark.parametrize("name", ["s6", "ssd", "mamba_block"])
def test_every_step_error_check_still_fires(name):
    model = _model(name)
    d = model._in_features()
    u_t = torch.randn(2, d, dtype=F64)
    _, state = model.step(u_t)
    h = state["h"] if isinstance(state, dict) else state
    m = type(model).__name__
    with pytest.raises(ValueError, match=rf"{m}.step: expected u_t of shape \[batch, {d}\]"):
        model.step(torch.randn(2, d + 1, dtype=F64), state)
    with pytest.raises(ValueError, match=rf"{m}: u_t contains NaN or inf"):
        model.step(torch.full((2, d), float("nan"), dtype=F64), state)
    with pytest.raises(ValueError, match=rf"{m}: state(\['h'\])? contains NaN or inf"):
        bad = h.clone()
        bad[0].view(-1)[0] = float("inf")
        model.step(u_t, {**state, "h": bad} if isinstance(state, dict) else bad)
    with pytest.raises(ValueError, match=rf"{m}: state(\['h'\])? must have shape"):
        model.step(u_t, {**state, "h": h[:, :1]} if isinstance(state, dict) else h[:, :1])
    with pytest.raises(ValueError, match=rf"{m}: u_t is on meta"):
        model.step(u_t.to("meta"), state)
    # a parameter: NaN (named), then finite but huge (3e38: a sum of the parameters overflowed, its max does not)
    name0, p0 = next(iter(model.named_parameters()))
    saved = p0.detach().clone()
    with torch.no_grad():
        p0.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=rf"{m}: parameter '{name0}' contains NaN or inf"):
        model.step(u_t, state)
    model.check_finite = False  # off: no check (the NaN flows into the output, as documented)
    y, _ = model.step(u_t, state)
    assert torch.isnan(y).any()
    del model.check_finite
    with torch.no_grad():
        p0.copy_(saved)
        p1 = list(model.parameters())[-1]
        keep = p1.detach().clone()
        p1.view(-1)[0] = 1e300 if p1.dtype == F64 else 3e38
    try:
        model._check_input(u_t[:, None], None)  # finite: not refused (the output itself may overflow)
    finally:
        with torch.no_grad():
            p1.copy_(keep)
    model.step(u_t, state)


def test_finite_check_of_an_empty_input_and_half_parameters():
    model = _model("s6").to(torch.bfloat16)
    y, s = model(torch.randn(2, 0, 4, dtype=torch.bfloat16), output_final_state=True)
    assert y.shape == (2, 0, 4)
    with torch.no_grad():
        model.D[0] = float("inf")
    with pytest.raises(ValueError, match="S6: parameter 'D' contains NaN or inf"):
        model.step(torch.randn(1, 4, dtype=torch.bfloat16))


def _outer_loop(q, k, v, g, h0, readout):
    """The recurrence from its equations, float64: S = diag(exp(g)) S + k v^T, y = S^T q (before the update: pre)."""
    B, T, H, K = q.shape
    S = h0.clone()
    ys = []
    for t in range(T):
        prev = S
        if g is not None:
            dec = torch.exp(g[:, t]) if g.dim() == 4 else torch.exp(g[:, t])[..., None]
            S = dec[..., None] * S
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], prev if readout == "pre" else S))
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("decay", [None, "head", "key", "zero", "growth"])
@pytest.mark.parametrize("readout", ["post", "pre"])
def test_one_step_outer_scan_matches_the_recurrence(decay, readout):
    gen = torch.Generator().manual_seed(3)
    B, H, K, V = 2, 3, 4, 5
    q, k = (torch.randn(B, 1, H, K, dtype=F64, generator=gen) for _ in range(2))
    v = torch.randn(B, 1, H, V, dtype=F64, generator=gen)
    h0 = torch.randn(B, H, K, V, dtype=F64, generator=gen)
    shape = {None: None, "head": (B, 1, H), "key": (B, 1, H, K), "zero": (B, 1, H), "growth": (B, 1, H, K)}[decay]
    g = None if shape is None else -torch.rand(shape, dtype=F64, generator=gen)
    if decay == "zero":
        g = torch.full(shape, float("-inf"), dtype=F64)  # a zero transition
    if decay == "growth":
        g = -g  # eigenvalues > 1, exact
    y, s = chunked_outer_scan(q, k, v, g, h0, output_final_state=True, readout=readout)
    y_want, s_want = _outer_loop(q, k, v, g, h0, readout)
    assert _max_err(y, y_want) <= TOL and _max_err(s, s_want) <= TOL
    # half inputs: fp32 inside, y in the input dtype, as at T > 1
    y16 = chunked_outer_scan(q.half(), k.half(), v.half(), None if g is None else g.half(), h0.half(),
                             readout=readout)
    assert y16.dtype == torch.float16 and y16.shape == (B, 1, H, V)


def test_one_step_diagonal_scan_is_the_loops_op_and_broadcasts():
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(2, 1, 3, 1, dtype=F64, generator=gen)  # one decay per row, broadcast over the last state dim
    b = torch.randn(2, 1, 3, 4, dtype=F64, generator=gen)
    h0 = torch.randn(2, 3, 4, dtype=F64, generator=gen)
    got = diagonal_scan(a, b, h0)
    assert got.shape == (2, 1, 3, 4)
    assert torch.equal(got[:, 0], torch.addcmul(b[:, 0], a[:, 0], h0))  # the loop's own op: the same rounding
    assert torch.allclose(got[:, 0], a[:, 0] * h0 + b[:, 0], rtol=0, atol=1e-15)
    two = diagonal_scan(a.expand(2, 2, 3, 1), b.expand(2, 2, 3, 4), h0)  # the loop, T = 2: its first step agrees
    assert torch.allclose(two[:, :1], got, rtol=0, atol=1e-15)
    assert diagonal_scan(a.float(), b.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="do not broadcast"):
        diagonal_scan(a, torch.randn(2, 1, 4, 5, dtype=F64))
