"""Log-space scans of a decay that may be negative.

The chunked outer-product and delta-rule scans take log(decay). A spec whose decay can be negative (``tanh(...)``,
a learned factor the analysis cannot bound) produced NaN everywhere from the first negative step on, in forward, step,
the final state and every gradient, on the torch and Triton paths alike. The generated code now scans ``log|decay|``
and folds the cumulative signs into the streams (``dsfc.runtime.fold_decay_sign``) when the interval prover cannot
show the decay >= 0; specs whose decay is proven >= 0 (the whole catalog) are generated unchanged.

Each spec is checked against an independent float64 loop written from the model's maths (not from dsfc), forward,
final state, token-by-token step and gradients (autograd of the loop), at T up to 70 (two 64-step chunks).
"""

from __future__ import annotations

import pytest
import torch

from dsf_testing import F64, compile_and_build, grads_of, rel_err, run_steps

TOL = 1e-9

HEAD = """
dim d = 3
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
B[(h, a, b), m] = {b_entry}
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""

OUTER_B = "k[h, a] * W_v[h, b, m]"

SPECS = {
    # a scalar decay per head in (-1, 1)
    "outer_scalar_tanh": HEAD.format(b_entry=OUTER_B) + """
param W_a[H, d] ~ normal(0, 1)
let al[h: H] = tanh(sum(m, W_a[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h]
""",
    # a per-key decay in (-1, 1), read before the update
    "outer_key_tanh_pre": HEAD.format(b_entry=OUTER_B) + """
readout pre
param W_a[H, K, d] ~ normal(0, 1)
let al[h: H, a: K] = tanh(sum(m, W_a[h, a, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * al[h, a]
""",
    # a learned constant factor: nothing bounds its sign (init -0.8)
    "outer_learned_factor": HEAD.format(b_entry=OUTER_B) + """
param rho[h: H] = -0.8 + 0.1 * h
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * rho[h]
""",
    # the delta rule with a sign-changing gate, read after and before the update
    **{f"delta_tanh_{ro}": HEAD.format(b_entry="beta[h] * kn[h, a] * W_v[h, b, m]").replace(
        "C[(o, e)", f"readout {ro}\nC[(o, e)") + """
param W_b[H, d] ~ normal(0, 0.5)
param W_a[H, d] ~ normal(0, 1)
let kn[h: H, a: K] = k[h, a] / sqrt(sum(a2, k[h, a2] ^ 2))
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
let al[h: H] = tanh(sum(m, W_a[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * al[h] * (delta(a, a2) - beta[h] * kn[h, a] * kn[h, a2])
""" for ro in ("post", "pre")},
}

FAMILY = {"outer_scalar_tanh": "chunked outer-product scan", "outer_key_tanh_pre": "chunked outer-product scan",
          "outer_learned_factor": "chunked outer-product scan", "delta_tanh_post": "chunked delta-rule scan",
          "delta_tanh_pre": "chunked delta-rule scan"}


def loop(name: str, P: dict, u: torch.Tensor, S: torch.Tensor):
    """The models' recurrences written out step by step (float64, differentiable)."""
    ys = []
    pre = name.endswith("_pre")
    for t in range(u.shape[1]):
        x = u[:, t]
        q = torch.einsum("hkm,bm->bhk", P["W_q"], x)
        k = torch.einsum("hkm,bm->bhk", P["W_k"], x)
        v = torch.einsum("hvm,bm->bhv", P["W_v"], x)
        if pre:
            ys.append(torch.einsum("bhk,bhkv->bhv", q, S))
        if name.startswith("delta"):
            kn = k / k.pow(2).sum(-1, keepdim=True).sqrt()
            beta = torch.sigmoid(x @ P["W_b"].T)[..., None, None]
            al = torch.tanh(x @ P["W_a"].T)[..., None, None]
            kS = torch.einsum("bhk,bhkv->bhv", kn, S)
            S = al * (S - beta * kn[..., None] * kS[:, :, None, :]) + beta * kn[..., None] * v[:, :, None, :]
        else:
            if name == "outer_scalar_tanh":
                al = torch.tanh(x @ P["W_a"].T)[..., None, None]
            elif name == "outer_key_tanh_pre":
                al = torch.tanh(torch.einsum("hkm,bm->bhk", P["W_a"], x))[..., None]
            else:
                al = P["rho"][None, :, None, None]
            S = al * S + k[..., None] * v[:, :, None, :]
        if not pre:
            ys.append(torch.einsum("bhk,bhkv->bhv", q, S))
    return torch.stack(ys, 1).flatten(2), S


@pytest.mark.parametrize("name", sorted(SPECS))
def test_sign_changing_decay_matches_an_independent_loop(name):
    b = compile_and_build(SPECS[name], path=f"{name}.dsf")
    assert b.result.structure.family.value == FAMILY[name]
    assert b.result.plan.signed_decay
    model = b.model
    P = {n: p for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    for T in (1, 9, 70):
        u = torch.randn(2, T, 3, generator=g, dtype=F64)
        h0 = 0.5 * torch.randn(2, 2, 3, 2, generator=g, dtype=F64)
        with torch.no_grad():
            y_want, s_want = loop(name, {n: p.detach() for n, p in P.items()}, u, h0)
        for backend in ("torch", "reference"):
            model.backend = backend
            uu = u.clone().requires_grad_()
            y, sT = model(uu, initial_state=h0, output_final_state=True)
            assert torch.isfinite(y).all()
            assert rel_err(y, y_want) <= TOL and rel_err(sT, s_want) <= TOL, (backend, T)
            w = torch.randn(y.shape, generator=g, dtype=F64)
            ws = torch.randn(sT.shape, generator=g, dtype=F64)
            got = torch.autograd.grad((y * w).sum() + (sT * ws).sum(), [uu, *P.values()])
            uo = u.clone().requires_grad_()
            yo, so = loop(name, P, uo, h0)
            want = torch.autograd.grad((yo * w).sum() + (so * ws).sum(), [uo, *P.values()])
            for n, a, e in zip(["u", *P], got, want):
                assert rel_err(a, e) <= 1e-8, (backend, T, n)
        model.backend = "auto"
        ys, state = run_steps(model, u, h0)
        assert rel_err(ys, y_want) <= TOL and rel_err(state, s_want) <= TOL


def test_decays_proven_nonnegative_keep_the_plain_log():
    """A sigmoid gate is proven in (0, 1): no sign folding is generated."""
    spec = SPECS["outer_scalar_tanh"].replace("tanh(sum(m, W_a", "sigmoid(sum(m, W_a")
    b = compile_and_build(spec, path="sig.dsf")
    assert not b.result.plan.signed_decay
    assert "fold_decay_sign" not in b.result.source


ZERO_DECAYS = {  # decays that are exactly 0 at a token of zeros (u = 0: a zero-padded position)
    "tanh_signed": "tanh(sum(m, W_a[h, m] * u[m]))",  # signed path, nonzero slope at 0
    "tanh_squared": "tanh(sum(m, W_a[h, m] * u[m])) ^ 2",  # proven in [0, 1): the plain path, through log_abs_decay
    "square": "0.5 * sum(m, W_a[h, m] * u[m]) ^ 2",
}


@pytest.mark.parametrize("name", list(ZERO_DECAYS))
@pytest.mark.parametrize("delta", [False, True])
def test_a_decay_of_exactly_zero_keeps_every_gradient_finite(name, delta):
    """log(decay) is -inf at an exactly-zero decay, and its backward was inf * 0 = NaN in every gradient (forward
    and state were right). ``log_abs_decay`` now lifts an exact 0 to sqrt(tiny): the torch path matches the
    reference recurrence's gradients, zero tokens included, on the outer-product and delta-rule scans."""
    b_entry = "beta[h] * kn[h, a] * W_v[h, b, m]" if delta else OUTER_B
    mixer = "(delta(a, a2) - beta[h] * kn[h, a] * kn[h, a2])" if delta else "delta(a, a2)"
    spec = HEAD.format(b_entry=b_entry) + f"""
param W_b[H, d] ~ normal(0, 0.5)
param W_a[H, d] ~ normal(0, 1)
let kn[h: H, a: K] = k[h, a] / sqrt(sum(a2, k[h, a2] ^ 2) + 1)
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * {ZERO_DECAYS[name]} * {mixer}
"""
    built = compile_and_build(spec, path=f"zero_{name}.dsf")
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 70, 3, generator=gen, dtype=F64)
    u[:, [0, 5, 6, 40]] = 0
    h0 = torch.randn(2, *built.state_shape(), generator=gen, dtype=F64)
    w = torch.randn(2, 70, 4, generator=gen, dtype=F64)
    got, want = grads_of(built.model, built, u, h0, w), grads_of(None, built, u, h0, w)
    scale = max(g.abs().max().item() for g in want)
    for i, (g, r) in enumerate(zip(got, want)):
        assert torch.isfinite(g).all() and (g - r).abs().max().item() <= 1e-9 * scale, (name, i)
