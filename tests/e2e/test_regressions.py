"""Minimal specs for the compiler bugs the property tests found; each must compile, run and match the reference.

1. A constant A (``A = 0.5 I``, an all-equal dense A, a query of 1) printed as a Python number: ``.expand`` failed.
2. A post-op reading the input: the input was not bound in ``_posts`` (NameError).
3. Spec names equal to members of the generated nn.Module (``step``, ``forward``, ``to``, ...) or to locals of its
   methods (``m``, ``out``, ``h0``): KeyError at construction, or silently wrong matrices.
4. Primed names (``w'``, legal in specs) printed verbatim: invalid Python.
5. A running let whose name Python cannot use (``None``) was carried under the renamed key in the state dict.
6. The reference crashed at T = 0 (``reshape(B, 0, -1)``, ``prev`` reading step 0, post-ops skipped).
7. Spec names equal to Python builtins (``super``, ``int``, ``dict``): the generated methods call them.
8. A readout that does not depend on an output axis (``C[o, c] = 1``) printed y without that axis.
"""

from __future__ import annotations

import pytest
import torch

from dsf_testing import F64, compile_and_build, rel_err, run_steps, state_err
from dsfc.analysis.facts import Bound
from dsfc.pipeline import compile_text

TOL = 1e-8

HEAD = """
dim d = 3
input u[d]
state h[c: d]
param W[d] ~ normal(0, 1)
"""

CASES = {
    "constant_diagonal_A": HEAD + """
A[c, c2] = delta(c, c2) * 0.5
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
""",
    "constant_dense_A": HEAD + """
A[c, c2] = 0.9 / d
B[c, k] = W[c] * delta(c, k)
C[o, c] = delta(o, c)
""",
    "query_of_one": """
dim M = 2
dim K = 2
dim V = 3
input u[M]
state S[a: K, b: V]
output y[e: V]
param W_K[K, M] ~ normal(0, 1)
param W_V[V, M] ~ normal(0, 1)
let k[a: K] = sigmoid(sum(m, W_K[a, m] * u[m]))
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2)
B[(a, b), m] = k[a] * W_V[b, m]
C[e, (a, b)] = delta(e, b)
""",
    "post_reads_input": HEAD + """
A[c, c2] = delta(c, c2) * sigmoid(W[c])
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
post g[o: d] = y[o] * sigmoid(u[o])
""",
    "module_member_names": """
dim d = 3
input u[d]
state h[c: d]
param step[d] ~ normal(0, 1)
param forward[d] ~ normal(0, 1)
param to[d] ~ normal(0, 1)
param dsf_matrices[d] ~ normal(0, 1)
param training[d] ~ normal(0, 1)
param backend[d] ~ normal(0, 1)
let m[c: d] = sigmoid(step[c] * u[c] + forward[c])
let out[c: d] = tanh(to[c] * u[c]) + dsf_matrices[c]
let h0[c: d] = training[c] + backend[c]
A[c, c2] = delta(c, c2) * m[c]
B[c, k] = delta(c, k) * out[c]
C[o, c] = delta(o, c) * h0[c]
D[o, k] = delta(o, k) * m[k]
""",
    # 7. Spec names equal to Python builtins the generated methods call: a dim named super / int / isinstance was
    #    "TypeError: 'int' object is not callable" in the constructor, one named dict an UnboundLocalError
    "builtin_names": """
dim d = 3
dim super = 2
dim int = 2
dim isinstance = 1
input u[d]
state h[c: d]
param tuple[super, int] ~ normal(0, 1)
param dict[d] ~ normal(0, 1)
let len[c: d] = sigmoid(dict[c] * u[c] + tuple[0, 1] + isinstance)
A[c, c2] = delta(c, c2) * len[c]
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
""",
    # 8. An output axis the readout does not depend on (every output the sum of the state): y printed as
    #    [B, T, 1] and the module's reshape to [B, T, 5] failed
    "readout_free_of_the_output_axis": HEAD + """
output y[5]
A[c, c2] = delta(c, c2) * sigmoid(W[c] * u[c])
B[c, k] = delta(c, k)
C[o, c] = u[c]
""",
    "dense_readout_free_of_the_output_axis": HEAD + """
output y[5]
A[c, c2] = 0.2 * sigmoid(u[c] + W[c2])
B[c, k] = delta(c, k)
C[o, c] = 1
""",
    "primed_names": """
dim d = 3
input u[d]
state h[c: d]
param w'[d] ~ normal(0, 1)
param w''[d] ~ normal(0, 1)
let g'[c: d] = sigmoid(w'[c] * u[c] + w''[c])
A[c, c'] = delta(c, c') * g'[c]
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
""",
    "running_let_named_None": HEAD + """
let None[c: d] = cumsum(sigmoid(W[c] * u[c]))
A[c, c2] = delta(c, c2) * 0.5
B[c, k] = delta(c, k) / None[c]
C[o, c] = delta(o, c)
""",
    "post_and_prev": HEAD + """
let p[c: d] = prev(tanh(W[c] * u[c]))
A[c, c2] = delta(c, c2) * sigmoid(p[c])
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
post g[o: d] = y[o] * sigmoid(u[o])
""",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_regression_spec_matches_reference(name):
    b = compile_and_build(CASES[name], path=f"{name}.dsf")
    g = torch.Generator().manual_seed(0)
    for T in (0, 1, 9):
        u = torch.randn(2, T, b.d_in(), generator=g, dtype=F64)
        h0 = b.initial_state(2, g)
        y_ref, h_ref = b.reference(u, h0)
        with torch.no_grad():
            y, hT = b.model(u, initial_state=h0, output_final_state=True)
        assert y.shape == y_ref.shape == (2, T, b.d_out())
        assert rel_err(y, y_ref) <= TOL and state_err(hT, h_ref) <= TOL
        if T:
            ys, state = run_steps(b.model, u, h0)
            assert rel_err(ys, y_ref) <= TOL and state_err(state, h_ref) <= TOL


def test_running_state_is_keyed_by_the_spec_name():
    b = compile_and_build(CASES["running_let_named_None"], path="x.dsf")
    with torch.no_grad():
        _, state = b.model(torch.randn(1, 4, 3, dtype=F64), output_final_state=True)
    assert set(state) == {"h", "None"}


# A decay that is a SCALAR let (a Symbol in the IR, not an Indexed): the log-space scans took log(let) instead of
# looking through its definition (log_space.exact_log looked through Indexed lets only), so where fp32 rounds the
# decay to 0 (saturated gates) the scan read log 0 = -inf and the gradients were NaN. Shrunk from the property test
# test_random_specs_with_saturated_gates_stay_finite (an outer spec with a per-head decay and no heads).
SCALAR_DECAY_LET = {
    "outer": """
dim M = 3
dim K = 2
dim V = 2
input u[M]
state S[a: K, b: V]
output y[e: V]
param Wz[M] ~ normal(0, 1)
param Wk[K, M] ~ normal(0, 1)
let z = sum(m, Wz[m] * u[m])
let dec = exp(-softplus(z) * 4)
let k[a: K] = sigmoid(sum(m, Wk[a, m] * u[m]))
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * dec
B[(a, b), m] = k[a] * delta(b, m)
C[e, (a, b)] = delta(e, b) * k[a]
""",
    "diagonal": """
dim M = 3
input u[M]
state h[c: M]
param Wz[M] ~ normal(0, 1)
let z = sum(m, Wz[m] * u[m])
let dec = 1 - sigmoid(z)
A[c, c2] = delta(c, c2) * dec
B[c, m] = delta(c, m)
C[o, c] = delta(o, c)
""",
}


@pytest.mark.parametrize("name", sorted(SCALAR_DECAY_LET))
def test_scalar_decay_let_is_scanned_in_log_space(name):
    b = compile_and_build(SCALAR_DECAY_LET[name], path=f"{name}.dsf")
    model = b.model.to(torch.float32)
    u = (60 * torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(0))).requires_grad_()
    y = model(u)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_prover_survives_sympy_sum_simplify_failure():
    """Found by the property suite: ranging |k|^2 of keys ``elu(.) + 1`` normalised by ``sqrt(1 + sum k^2)`` inlines
    the lets into a sum SymPy's simplify crashes on (sum_add's StopIteration on ``2*Elu(Sum(...))``); the compile
    failed with that traceback. The prover now drops that optional sharper reading and the spec compiles, its
    eigenvalue claim still sound (|lambda| <= 1 from beta in (0, 1) and |k|^2 in [0, 1))."""
    text = """model RandDense "sympy sum_add crash"
dim M = 1
dim H = 1
dim K = 1
dim V = 1
input u[M]
state S[h: H, a: K, b: V]
output y[o: H, e: V]
param lam[H, K, M] ~ normal(0, 0.7)
param W4[H, M] ~ normal(0, 0.7)
param Wv[H, V, M] ~ normal(0, 1)
param Wq[H, K, M] ~ normal(0, 0.7)
let kr2[h: H, a: K] = elu(sum(m, lam[h, a, m] * u[m])) + 1
let k3[h: H, a: K] = kr2[h, a] / sqrt(1 + sum(a3, kr2[h, a3] ^ 2))
let beta5[h: H] = sigmoid(sum(m, W4[h, m] * u[m]))
let q8[h: H, a: K] = elu(sum(m, Wq[h, a, m] * u[m])) + 1
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - beta5[h] * k3[h, a] * k3[h, a2])
B[(h, a, b), m] = beta5[h] * k3[h, a] * Wv[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q8[h, a]
readout pre
"""
    report = compile_text(text, "gen.dsf").report
    assert report.eigen_bound in (Bound.MARGINAL.value, Bound.STABLE.value), report.eigen_reason
