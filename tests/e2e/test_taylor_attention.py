"""specs/taylor_attention.dsf: the order-p Taylor feature map of exp on a compiler-sized feature range.

Oracles written here, independent of dsfc: zoology's ``TaylorExp`` feature map (p = 2) re-implemented from its
source, normalised linear attention over it in a plain float64 loop, and ``scaled_dot_product_attention`` for the
limit p -> inf. The generic catalog tests (tests/e2e/test_catalog.py) also run this spec against dsfc/reference.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsfc.check import small_dims
from dsfc.pipeline import compile_spec
from dsfc.reference import reference_forward

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64


@pytest.fixture(scope="module")
def compiled():
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = compile_spec("specs/taylor_attention.dsf")
    finally:
        os.chdir(cwd)
    ns: dict = {}
    exec(compile(result.source, "<taylor_attention>", "exec"), ns)
    return result, ns[result.sym.model]


class TaylorExp:
    """zoology/mixers/feature_maps/taylor.py (HazyResearch/zoology), the p = 2 map: [1, x/d^(1/4), vec(x x^T)/(sqrt2 sqrt d)]."""

    def __init__(self, input_dim: int):
        self.r2 = math.sqrt(2)
        self.rd = math.sqrt(input_dim)
        self.rrd = math.sqrt(self.rd)

    def __call__(self, x):
        x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(start_dim=-2) / self.r2
        return torch.cat([x[..., :1] ** 0, x / self.rrd, x2 / self.rd], dim=-1)


def _qkv(m, u):
    q = torch.einsum("hkd,btd->bthk", m.W_Q, u)
    k = torch.einsum("hkd,btd->bthk", m.W_K, u)
    v = torch.einsum("hvd,btd->bthv", m.W_V, u)
    return q, k, v


def _normalised_linear_attention(fq, fk, v):
    """y_i = sum_(j<=i) (fq_i . fk_j) v_j / sum_(j<=i) fq_i . fk_j, one step at a time ([B, T, H, *])."""
    ys = []
    S = torch.zeros(fq.shape[0], fq.shape[2], fq.shape[3], v.shape[3], dtype=F64)
    z = torch.zeros(fq.shape[0], fq.shape[2], fq.shape[3], dtype=F64)
    for t in range(fq.shape[1]):
        S = S + fk[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + fk[:, t]
        ys.append(torch.einsum("bhf,bhfv->bhv", fq[:, t], S) / torch.einsum("bhf,bhf->bh", fq[:, t], z)[..., None])
    return torch.stack(ys, 1).reshape(fq.shape[0], fq.shape[1], -1)


def test_p2_features_are_zoologys_taylor_exp(compiled):
    _, cls = compiled
    torch.manual_seed(0)
    m = cls(d=5, H=2, K=3, V=4, p=2, dtype=F64)
    u = torch.randn(2, 6, 5, dtype=F64)
    env = m._lets(u, F64)
    q, k, v = _qkv(m, u)
    fmap = TaylorExp(3)
    torch.testing.assert_close(env["qf"], fmap(q))
    torch.testing.assert_close(env["kf"], fmap(k))
    torch.testing.assert_close(m(u), _normalised_linear_attention(fmap(q), fmap(k), v))


def test_forward_step_reference_and_dsf_matrices_agree_at_odd_p(compiled):
    result, cls = compiled
    torch.manual_seed(1)
    dims = {**small_dims(result), "p": 3}
    m = cls(**dims, dtype=F64)
    u = torch.randn(3, 7, dims["d"], dtype=F64)
    y1, state = m(u[:, :3], output_final_state=True)
    y2 = m(u[:, 3:], initial_state=state)
    params = {p.tensor.name: getattr(m, p.tensor.name).detach() for p in result.sym.params}
    y_ref, _ = reference_forward(result.sym, result.sym.dim_values(dims), params, u)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_ref, rtol=1e-9, atol=1e-10)
    st, ys = None, []
    for t in range(7):
        y_t, st = m.step(u[:, t], st)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y_ref, rtol=1e-9, atol=1e-10)
    A, B, C, D = m.dsf_matrices(u[:, :2])
    n = dims["H"] * dims["V"] * sum(dims["K"] ** r for r in range(4))  # N = H * V * D_3
    assert A.shape[-1] == n and B.shape[-2] == n and C.shape[-1] == n


def test_converges_to_softmax_as_p_grows(compiled):
    """On inputs of small norm (|q.k|/sqrt(K) < 1) the Taylor error against exact softmax falls with p."""
    _, cls = compiled
    errs = []
    for p in (1, 2, 3):
        torch.manual_seed(2)
        m = cls(d=6, H=2, K=4, V=3, p=p, dtype=F64)
        torch.manual_seed(3)
        u = 0.5 * torch.randn(2, 9, 6, dtype=F64)
        q, k, v = _qkv(m, u)
        assert (torch.einsum("bihk,bjhk->bhij", q, k).abs().max() / 2) < 1
        want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        errs.append((m(u) - want.transpose(1, 2).reshape(2, 9, -1)).abs().max().item())
    assert errs[0] > errs[1] > errs[2], errs  # monotone in p
    assert errs[2] < errs[0] / 10, errs  # and by an order of magnitude from p = 1 to p = 3


FEATURE_FIRST = """
model FeatFirst "feature axis first in the lets, second in the state"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
dim p = 3
input u[d]
state S[h: H, f: taylor(K, p), b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let qf[g: taylor(K, p), hh: H] = taylor(a, sum(m, W_Q[hh, a, m] * u[m]))
let kf[g: taylor(K, p), hh: H] = taylor(c, sum(m, W_K[hh, c, m] * u[m]))
let gate[g: taylor(K, p)] = sigmoid(sum(hh, kf[g, hh]))
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * 0.9
B[(h, f, b), m] = kf[f, h] * gate[f] * W_V[h, b, m]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[f, h]
"""


def test_feature_maps_work_at_any_axis_position_and_in_other_lets(tmp_path):
    """Feature axis first in the lets, second in the state, renamed indices, a let reading the features and order 3:
    the module (runtime taylor_features) against dsfc's reference (its own loop over multi-indices)."""
    from dsfc.check import run_check

    path = tmp_path / "feature_first.dsf"
    path.write_text(FEATURE_FIRST, encoding="utf-8")
    report = run_check(compile_spec(str(path)), shapes=((1, 1), (2, 7)))
    assert report.rows and all(r.ok for r in report.rows), [(r.what, r.rel_err) for r in report.rows if not r.ok]
