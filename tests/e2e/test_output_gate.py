"""A gate on the outputs written into C (y[h, b] = z[h, b] * sum_a q[h, a] S[h, a, b], as Mamba-2's silu(z) or fla's
output gates are often written): the analysis takes the factor of C that is free of the key axes out as
``OuterSplit.gate`` and multiplies it in after the scan, so such specs keep the chunked outer-product, delta-rule or
kernelised attention algorithm instead of falling back to the diagonal scan. Each spec is checked against the float64
reference recurrence built from the same spec on the torch path and, interpreted on CPU, the Triton path
(``dsf_testing.check_backend``)."""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dsf_testing import (  # noqa: E402
    BACKENDS, TRITON, F64, HEAD, assert_grads_close, check_backend, compile_and_build, output_and_grads, rel_err,
)
from dsfc.analysis.structure import Family  # noqa: E402

QKV = """param W_Q[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_K[H, K, d] ~ normal(0, 1 / sqrt(d))
param W_V[H, V, d] ~ normal(0, 1 / sqrt(d))
param W_z[H, V, d] ~ normal(0, 1 / sqrt(d))
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let z[h: H, b: V] = silu(sum(m, W_z[h, b, m] * u[m]))
"""

# GLA with a per-key decay and fla's swish output gate inside C
GLA_GATED = """
model GLAGated "GLA, output gate in C"
""" + HEAD + QKV + """param W_g[H, K, d] ~ normal(0, 1 / sqrt(d))
let alpha[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 2)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * alpha[h, a]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * z[o, e] * q[h, a] / sqrt(K)
"""

# several gate factors (per value channel, per output, a constant), a pre-update readout and a D term
PRE_GATED = """
model PreGated "pre-update readout, two gate factors in C"
""" + HEAD + QKV + """param w[V] ~ normal(1, 0.2)
param lam[H] ~ uniform(0.5, 0.95)
readout pre
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * lam[h]
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = 2 * delta(o, h) * delta(e, b) * w[e] * q[h, a] * z[o, e]
D[(o, e), m] = delta(o, 0) * W_V[0, e, m]
"""

# Gated DeltaNet with its output gate in C: the delta-rule family applies the gate the same way
DELTA_GATED = """
model DeltaGated "gated delta rule, output gate in C"
""" + HEAD + QKV + """param W_b[H, d] ~ normal(0, 1 / sqrt(d))
let kn[h: H, a: K] = k[h, a] / sqrt(sum(a2, k[h, a2] ^ 2) + 1)
let beta[h: H] = sigmoid(sum(m, W_b[h, m] * u[m]))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * 0.9 * (delta(a, a2) - beta[h] * kn[h, a] * kn[h, a2])
B[(h, a, b), m] = beta[h] * kn[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] * z[o, e]
"""

# a factor of C over a key and a value axis together is not a gate: no outer split, the diagonal scan
NOT_A_GATE = """
model NotAGate "C factor over key and value"
""" + HEAD + QKV + """param M[K, V] ~ normal(0, 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * 0.8
B[(h, a, b), m] = k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a] * M[a, e]
"""

CASES = {
    "gla_gated": (GLA_GATED, Family.CHUNKED_OUTER, {"d": 3, "H": 2, "K": 3, "V": 5}),
    "pre_gated": (PRE_GATED, Family.CHUNKED_OUTER, {"d": 4, "H": 3, "K": 2, "V": 3}),
    "delta_gated": (DELTA_GATED, Family.CHUNKED_DELTA, {"d": 3, "H": 2, "K": 3, "V": 2}),
    "not_a_gate": (NOT_A_GATE, Family.DIAGONAL_SCAN, {"d": 3, "H": 1, "K": 2, "V": 3}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_gate_in_c(name):
    text, family, dims = CASES[name]
    built = compile_and_build(text, dims, path=f"{name}.dsf")
    st = built.result.structure
    assert st.family == family
    if family != Family.DIAGONAL_SCAN:
        assert st.outer.gate != 1 and "z[" in str(st.outer.gate)
        assert not (st.outer.query.free_symbols & {st.a.rows[k] for k in st.outer.value_axes})
    check_backend(built, "torch", ((1, 1), (2, 7)))
    if TRITON:
        check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))


def test_output_gate_with_softmax_attention():
    """The kernelised (quadratic) template multiplies the gate in with the query's other off-feature factors: against
    an oracle written here, torch's causal SDPA times the gate, forward and gradients, on torch and Triton."""
    text = open("specs/softmax_attention.dsf").read()
    text = text.replace("param W_V[H, V, d]", "param W_z[H, V, d] ~ normal(0, 1)\nparam W_V[H, V, d]")
    text = text.replace("* qf[h, f]", "* qf[h, f] * sigmoid(sum(m, W_z[o, e, m] * u[m]))")
    built = compile_and_build(text, {"d": 5, "H": 2, "K": 3, "V": 4}, path="softmax_gated.dsf")
    assert built.result.structure.family == Family.QUADRATIC and built.result.structure.outer.gate != 1
    m = built.model
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 9, 5, generator=g, dtype=F64)
    w = torch.randn(2, 9, 8, generator=g, dtype=F64)

    def oracle(u):
        q, k, v = (torch.einsum("hkd,btd->bhtk", W, u) for W in (m.W_Q, m.W_K, m.W_V))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True) * torch.sigmoid(torch.einsum("hvd,btd->bhtv",
                                                                                                   m.W_z, u))
        return y.permute(0, 2, 1, 3).reshape(u.shape[0], u.shape[1], -1)

    uu = u.clone().requires_grad_()
    want = torch.autograd.grad((oracle(uu) * w).sum(), [uu, *m.parameters()])
    for backend in BACKENDS:
        y, got = output_and_grads(m, backend, u, w)
        assert rel_err(y, oracle(u).detach()) < 1e-12, backend
        assert_grads_close(got, want, 1e-12)  # float64 throughout: rounding only
