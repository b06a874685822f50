"""Post-ops after kernelised (softmax) attention: a gate, a read of the normaliser eta (carried as its log inside the
module: the post reads exp of it) and an out-projection with a residual. Against an oracle written here from torch's
causal SDPA on the module's own parameters, forward and gradients on the torch and Triton paths, and token-by-token
``step`` with the KV cache against the one-pass forward."""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dsf_testing import (BACKENDS, F64, assert_grads_close, compile_and_build, output_and_grads, rel_err,  # noqa: E402
                         run_steps)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.lang.errors import SpecErrors  # noqa: E402

SPEC = """
model SoftmaxPosts "softmax attention, then a gate, the normaliser and an out-projection as posts"
dim d = 6
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, f: taylor(K, inf), b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ uniform(-1 / sqrt(d), 1 / sqrt(d))
param W_K[H, K, d] ~ uniform(-1 / sqrt(d), 1 / sqrt(d))
param W_V[H, V, d] ~ uniform(-1 / sqrt(d), 1 / sqrt(d))
param W_g[H, V, d] ~ normal(0, 0.5)
param W_O[d, H, V] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qf[h: H, f: taylor(K, inf)] = taylor(a, q[h, a])
let kf[h: H, f: taylor(K, inf)] = taylor(a, k[h, a])
let z[h: H, f: taylor(K, inf)] = cumsum(kf[h, f])
let eta[h: H] = sum(f, qf[h, f] * z[h, f])
let eta_prev[h: H] = prev(eta[h])
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * eta_prev[h] / eta[h]
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m] / eta[h]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[h, f]
post g[h: H, b: V] = y[h, b] * silu(sum(m, W_g[h, b, m] * u[m])) + 0.01 * log(eta[h])
post out[o: d] = sum(h, sum(b, W_O[o, h, b] * g[h, b])) + u[o]
"""
DIMS = {"d": 5, "H": 2, "K": 3, "V": 4}


def _oracle(m, u):
    """The spec's layer written directly: causal SDPA (scale 1/sqrt(K)), eta_i = sum_(j <= i) exp(q_i . k_j / sqrt(K))."""
    q, k, v = (torch.einsum("hkd,btd->bhtk", W, u) for W in (m.W_Q, m.W_K, m.W_V))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    scores = torch.einsum("bhtk,bhsk->bhts", q, k) / math.sqrt(q.shape[-1])
    causal = torch.ones(u.shape[1], u.shape[1], dtype=torch.bool).tril()
    log_eta = torch.logsumexp(scores.masked_fill(~causal, -math.inf), -1)  # [b, h, t]
    g = y * F.silu(torch.einsum("hvd,btd->bhtv", m.W_g, u)) + 0.01 * log_eta[..., None]
    return torch.einsum("ohv,bhtv->bto", m.W_O, g) + u


def test_posts_after_softmax_attention_match_the_oracle():
    built = compile_and_build(SPEC, DIMS, path="softmax_posts.dsf")
    assert built.result.structure.family == Family.QUADRATIC
    m = built.model
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 9, 5, generator=g, dtype=F64)
    w = torch.randn(2, 9, 5, generator=g, dtype=F64)
    uu = u.clone().requires_grad_()
    want = torch.autograd.grad((_oracle(m, uu) * w).sum(), [uu, *m.parameters()])
    for backend in BACKENDS:
        y, got = output_and_grads(m, backend, u, w)
        assert rel_err(y, _oracle(m, u).detach()) < 1e-12, backend  # float64: rounding only
        assert_grads_close(got, want, 1e-12)
    m.backend = "torch"
    with torch.no_grad():
        y_steps, _ = run_steps(m, u, None)  # the KV cache, one token at a time, posts on every step
        assert rel_err(y_steps, m(u)) < 1e-12
        assert m(u, post=False).shape == (2, 9, 2 * 4)  # the attention output before the posts


def test_a_post_may_not_read_a_feature_vector():
    text = SPEC.replace("+ 0.01 * log(eta[h])", "+ sum(f, z[h, f])")
    with pytest.raises(SpecErrors) as err:
        compile_and_build(text, DIMS, path="softmax_posts.dsf")
    msg = err.value.render()
    assert "post 'g' reads 'z'" in msg and "infinite feature range" in msg and "softmax_posts.dsf:" in msg
