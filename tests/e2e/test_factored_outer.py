"""An outer-product input whose key is a sum: HGRN2's B u = (1 - f) (x) v, with the per-key forget gate f.

SymPy distributes (1 - f[h, a]) * v[h, b] into v - f v, two terms, and the analysis gave up on the outer-product
split ("B u general", family "diagonal scan": an elementwise scan over all H K V state entries instead of the
chunkwise-parallel linear-attention algorithm). The split and the B-form classification now regroup such terms with
``factor_terms``; a factor that mixes key and value axes still refuses the split. Checked against an independent
float64 loop of HGRN2 (forward, final state, step, gradients).
"""

from __future__ import annotations

import torch

from dsf_testing import F64, compile_and_build, rel_err, run_steps

HGRN2 = """
model HGRN2 "HGRN2: outer product with per-key forget gate, key = 1 - f"
dim d = 4
dim H = 2
dim K = 3
dim V = 5
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_q[H, K, d] ~ normal(0, 0.5)
param W_f[H, K, d] ~ normal(0, 0.5)
param b_f[H, K] ~ normal(0, 1)
param W_v[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_q[h, a, m] * u[m])
let f[h: H, a: K] = sigmoid(sum(m, W_f[h, a, m] * u[m]) + b_f[h, a])
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * f[h, a]
B[(h, a, b), m] = (1 - f[h, a]) * W_v[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""


def hgrn2_loop(P, u, S):
    ys = []
    for t in range(u.shape[1]):
        x = u[:, t]
        f = torch.sigmoid(torch.einsum("hkm,bm->bhk", P["W_f"], x) + P["b_f"])
        v = torch.einsum("hvm,bm->bhv", P["W_v"], x)
        S = f[..., None] * S + (1 - f)[..., None] * v[:, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", torch.einsum("hkm,bm->bhk", P["W_q"], x), S))
    return torch.stack(ys, 1).flatten(2), S


def test_hgrn2_is_an_outer_product_and_matches_a_loop():
    b = compile_and_build(HGRN2, path="hgrn2.dsf")
    st = b.result.structure
    assert st.family.value == "chunked outer-product scan" and st.b_form.value == "outer product"
    assert b.result.report.to_dict()["family"] == "chunked outer-product scan"
    model = b.model
    P = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    for T in (1, 9, 70):
        u = torch.randn(2, T, 4, generator=g, dtype=F64)
        h0 = 0.5 * torch.randn(2, 2, 3, 5, generator=g, dtype=F64)
        uu = u.clone().requires_grad_()
        y, sT = model(uu, initial_state=h0, output_final_state=True)
        uo = u.clone().requires_grad_()
        yo, so = hgrn2_loop(P, uo, h0)
        assert rel_err(y, yo) <= 1e-9 and rel_err(sT, so) <= 1e-9
        w = torch.randn(y.shape, generator=g, dtype=F64)
        got = torch.autograd.grad((y * w).sum() + sT.sum(), [uu, *P.values()])
        want = torch.autograd.grad((yo * w).sum() + so.sum(), [uo, *P.values()])
        for n, a, e in zip(["u", *P], got, want):
            assert rel_err(a, e) <= 1e-8, (T, n)
        ys, state = run_steps(model, u, h0)
        assert rel_err(ys, yo.detach()) <= 1e-9 and rel_err(state, so.detach()) <= 1e-9


def test_a_factor_mixing_key_and_value_axes_is_not_split():
    """(k[h, a] + v[h, b]) is no single key (x) value: the analysis must not call it a rank-1 outer product. It is
    the sum of two, (1 - f) (x) W_v u + (1 - f) W_f u (x) 1, which the structure pass reads as a rank-2 input (the
    chunked scan in two sub-steps); refusing it (the diagonal scan) would be correct too. Either way: the reference."""
    spec = HGRN2.replace("B[(h, a, b), m] = (1 - f[h, a]) * W_v[h, b, m]",
                         "B[(h, a, b), m] = (1 - f[h, a]) * (W_v[h, b, m] + W_f[h, a, m])")
    b = compile_and_build(spec, path="mixed.dsf")
    outer = b.result.structure.outer
    assert outer is None or [n for _, n in outer.key_rank] == [2], outer
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 9, 4, generator=g, dtype=F64)
    h0 = b.initial_state(2, g)
    y_ref, h_ref = b.reference(u, h0)
    with torch.no_grad():
        y, hT = b.model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_ref) <= 1e-9 and rel_err(hT.reshape(2, -1), h_ref) <= 1e-9
