"""A state declared as one flat axis (``state S[i: H * K * V]``) and read through mixed-radix digits
(``i // (K * V)``, ``(i // V) % K``, ``i % V``) is split into virtual axes before the analysis (``unflatten_state`` in
dsfc/ir/unflatten.py), so it gets the family of the [H, K, V] spelling; the module keeps the declared flat state at its
API (initial_state, the final state, step()'s state are ``[batch, H * K * V]``).

Checked, at tiny dims, against float64 loops written here from the models' equations (not dsfc's reference): GLA
(chunked outer-product; was the elementwise diagonal scan), a delta rule (chunked delta-rule; was the dense scan) and
S6 (``state h[i: d * n]``; the diagonal scan, now over [d, n]); forward at T = 0, 1, 7, 9 from zero and from an
initial state, on the torch path and the Triton one (interpreted), token-by-token step, dsfc's reference; the final
state in the declared flat shape, continued from a split of the sequence at an offset. Left as written, right numbers:
the flat index read on its own (``A_f[i]``), at an offset (``b[(i + 1) % n]``) and with a stride that does not divide
the digits (``w[i % 2]`` next to ``i // n``).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, check_forward_against_loop,  # noqa: E402
                         matvec, rel_err, stack_steps)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS
sig, softplus = torch.sigmoid, torch.nn.functional.softplus

GLA = """model GLAFlat "GLA, the state one flat axis"
dim d = 4
dim H = 2
dim K = 3
dim V = 4
input u[d]
state S[i: H * K * V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_g[H, K, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let alpha[h: H, a: K] = sigmoid(sum(m, W_g[h, a, m] * u[m]) + 2)
A[i, i2] = delta(i, i2) * alpha[i // (K * V), (i // V) % K]
B[i, m] = k[i // (K * V), (i // V) % K] * W_V[i // (K * V), i % V, m]
C[(o, e), i] = delta(o, i // (K * V)) * delta(e, i % V) * q[o, (i // V) % K] / sqrt(K)
"""
DELTA = """model DeltaFlat "a delta rule, the state one flat axis"
dim d = 5
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[i: H * K * V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_beta[H, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let beta[h: H] = sigmoid(sum(m, W_beta[h, m] * u[m]))
A[i, i2] = delta(i // (K * V), i2 // (K * V)) * delta(i % V, i2 % V) * (delta((i // V) % K, (i2 // V) % K) \
- beta[i // (K * V)] * k[i // (K * V), (i // V) % K] * k[i2 // (K * V), (i2 // V) % K])
B[i, m] = beta[i // (K * V)] * k[i // (K * V), (i // V) % K] * W_V[i // (K * V), i % V, m]
C[(o, e), i] = delta(o, i // (K * V)) * delta(e, i % V) * q[o, (i // V) % K]
"""
S6_HEAD = """
dim d = 3
dim n = 4
dim r = 2
input u[d]
state h[i: d * n]
output y[d]
param A_log[c: d, j: n] = log(j + 1)
param W_xdt[r, d] ~ normal(0, 0.5)
param W_dt[d, r] ~ normal(0, 0.5)
param b_dt[d] ~ normal(0, 0.5)
param W_B[n, d] ~ normal(0, 0.5)
param W_C[n, d] ~ normal(0, 0.5)
param D[d] ~ normal(0, 0.5)
let dt[c: d] = softplus(sum(q, W_dt[c, q] * sum(k, W_xdt[q, k] * u[k])) + b_dt[c])
let b[j: n] = sum(k, W_B[j, k] * u[k])
let cq[j: n] = sum(k, W_C[j, k] * u[k])
C[o, i] = delta(o, i // n) * cq[i % n]
D[o, k] = delta(o, k) * D[k]
"""
S6 = "model S6Flat \"S6, the state one flat axis h[i: d * n]\"" + S6_HEAD + """
A[i, i2] = delta(i, i2) * exp(-dt[i // n] * exp(A_log[i // n, i % n]))
B[i, k] = delta(i // n, k) * dt[i // n] * b[i % n]
"""
# not a digit decomposition: left as written (flat state, the elementwise diagonal scan)
S6_OWN = "model S6Own \"S6, a decay param read at the flat index\"" + S6_HEAD + """
param A_f[d * n] ~ normal(0, 0.5)
unused A_log
A[i, i2] = delta(i, i2) * exp(-dt[i // n] * exp(A_f[i]))
B[i, k] = delta(i // n, k) * dt[i // n] * b[i % n]
"""
S6_OFFSET = "model S6Offset \"S6, B reading b at an offset of the flat index\"" + S6_HEAD + """
A[i, i2] = delta(i, i2) * exp(-dt[i // n] * exp(A_log[i // n, i % n]))
B[i, k] = delta(i // n, k) * dt[i // n] * b[(i + 1) % n]
"""
S6_STRIDE2 = "model S6Stride2 \"S6, a gate read at i % 2 next to i // n\"" + S6_HEAD + """
param w[2] ~ normal(0, 0.5)
A[i, i2] = delta(i, i2) * exp(-dt[i // n] * exp(A_log[i // n, i % n])) * sigmoid(w[i % 2])
B[i, k] = delta(i // n, k) * dt[i // n] * b[i % n]
"""

# Mamba-2's SSD with grouped B / C (R = H // G heads per group read b, c of group h // R): the flat index's group
# digit is read as i // (P n) // R, a boundary P R n between the head's and the state's
SSD = """model SSDFlat "SSD with grouped B / C, the state one flat axis h[i: H * P * n]"
dim H = 4
dim G = 2
dim R = H // G
dim P = 2
dim n = 3
dim d = H * P
input u[d]
state S[i: H * P * n]
output y[d]
param A_log[H] ~ uniform(0, 1)
param W_dt[H, d] ~ normal(0, 0.5)
param W_B[G, n, d] ~ normal(0, 0.5)
param W_C[G, n, d] ~ normal(0, 0.5)
param Dp[H] ~ normal(0, 0.5)
let dt[h: H] = softplus(sum(m, W_dt[h, m] * u[m]))
let bq[g: G, j: n] = sum(m, W_B[g, j, m] * u[m])
let cq[g: G, j: n] = sum(m, W_C[g, j, m] * u[m])
A[i, i2] = delta(i, i2) * exp(-dt[i // (P * n)] * exp(A_log[i // (P * n)]))
B[i, m] = delta(m, (i // (P * n)) * P + (i // n) % P) * dt[i // (P * n)] * bq[i // (P * n) // R, i % n]
C[o, i] = delta(o, (i // (P * n)) * P + (i // n) % P) * cq[i // (P * n) // R, i % n]
D[o, m] = delta(o, m) * Dp[o // P]
"""

def _run(u, S, step):
    """S_t, y_t = step(S_(t-1), u_t) from S; returns (y [B, T, ...], S_T)."""
    ys = []
    for t in range(u.shape[1]):
        S, y = step(S, u[:, t])
        ys.append(y)
    return ys, S


def _gla(P, u, h0=None):
    # per head S = diag(sigmoid(W_g u + 2)) S + k v^T, y = S^T q / sqrt(K); the flat state is [H, K, V] row-major
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]

    def step(S, ut):
        q, k, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        S = sig(matvec(P["W_g"], ut) + 2)[..., None] * S + k[..., :, None] * v[..., None, :]
        return S, torch.einsum("zha,zhab->zhb", q, S) / K ** 0.5
    S = u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0.reshape(-1, H, K, V)
    ys, S = _run(u, S, step)
    return stack_steps(ys, u, H, V), S.reshape(u.shape[0], -1)


def _delta(P, u, h0=None):
    # per head S = (I - beta k k^T) S + beta k v^T with k L2-normalised, y = S^T q
    H, K, _ = P["W_K"].shape
    V = P["W_V"].shape[1]

    def step(S, ut):
        q, kr, v = matvec(P["W_Q"], ut), matvec(P["W_K"], ut), matvec(P["W_V"], ut)
        k = kr / kr.norm(dim=-1, keepdim=True)
        beta = sig(matvec(P["W_beta"], ut))[..., None, None]
        S = S - beta * k[..., :, None] * torch.einsum("zha,zhab->zhb", k, S)[..., None, :]
        S = S + beta * k[..., :, None] * v[..., None, :]
        return S, torch.einsum("zha,zhab->zhb", q, S)
    S = u.new_zeros(u.shape[0], H, K, V) if h0 is None else h0.reshape(-1, H, K, V)
    ys, S = _run(u, S, step)
    return stack_steps(ys, u, H, V), S.reshape(u.shape[0], -1)


def _s6(P, u, h0=None, variant=None):
    # per channel c and state j: h = exp(-dt_c exp(A_log[c, j])) h + dt_c b_j u_c, y_c = sum_j cq_j h[c, j] + D_c u_c
    d, n = P["A_log"].shape
    A_log = P["A_f"].reshape(d, n) if variant == "own" else P["A_log"]
    flat = torch.arange(d * n).reshape(d, n)

    def step(h, ut):
        dt = softplus(matvec(P["W_dt"], ut @ P["W_xdt"].T) + P["b_dt"])
        b, cq = matvec(P["W_B"], ut), matvec(P["W_C"], ut)
        if variant == "offset":
            b = b.roll(-1, 1)  # b[(j + 1) % n]
        decay = torch.exp(-dt[:, :, None] * torch.exp(A_log))
        if variant == "stride2":
            decay = decay * sig(P["w"][flat % 2])
        h = decay * h + dt[:, :, None] * b[:, None, :] * ut[:, :, None]
        return h, torch.einsum("zcj,zj->zc", h, cq) + P["D"] * ut
    h = u.new_zeros(u.shape[0], d, n) if h0 is None else h0.reshape(-1, d, n)
    ys, h = _run(u, h, step)
    return stack_steps(ys, u, d), h.reshape(u.shape[0], -1)


def _ssd(P, u, h0=None):
    # per head h (group g = h // R): S[h] = exp(-dt_h exp(A_log_h)) S[h] + dt_h x_h b_g^T with x_h = u[h P : h P + P],
    # y[h P + p] = S[h, p] . c_g + Dp_h u[h P + p]; the flat state is [H, P, n] row-major
    H, G, n = P["A_log"].shape[0], P["W_B"].shape[0], P["W_B"].shape[1]
    Pw, grp = u.shape[-1] // H, torch.arange(H) // (H // G)

    def step(S, ut):
        dt = softplus(matvec(P["W_dt"], ut))
        b, c = matvec(P["W_B"], ut)[:, grp], matvec(P["W_C"], ut)[:, grp]  # [B, H, n]
        x = ut.reshape(-1, H, Pw)
        S = torch.exp(-dt * torch.exp(P["A_log"]))[..., None, None] * S + (dt[..., None] * x)[..., None] * b[:, :, None]
        y = torch.einsum("zhpj,zhj->zhp", S, c) + P["Dp"][:, None] * x
        return S, y.reshape(u.shape[0], -1)
    S = u.new_zeros(u.shape[0], H, Pw, n) if h0 is None else h0.reshape(-1, H, Pw, n)
    ys, S = _run(u, S, step)
    return stack_steps(ys, u, H * Pw), S.reshape(u.shape[0], -1)

# name -> (spec, the family, the core's state extents (split), loop, dims)
CASES = {
    "gla": (GLA, Family.CHUNKED_OUTER, (2, 3, 4), _gla),
    "delta": (DELTA, Family.CHUNKED_DELTA, (2, 3, 2), _delta),
    "s6": (S6, Family.DIAGONAL_SCAN, (3, 4), _s6),
    "ssd_grouped": (SSD, Family.CHUNKED_OUTER, (2, 2, 2, 3), _ssd),
    "s6_own": (S6_OWN, Family.DIAGONAL_SCAN, (12,), functools.partial(_s6, variant="own")),
    "s6_offset": (S6_OFFSET, Family.DIAGONAL_SCAN, (12,), functools.partial(_s6, variant="offset")),
    "s6_stride2": (S6_STRIDE2, Family.DIAGONAL_SCAN, (12,), functools.partial(_s6, variant="stride2")),
}
SPLIT = ("gla", "delta", "s6", "ssd_grouped")
ON_TRITON = ("delta", "s6", "ssd_grouped")  # and GLA in test_flat_state_round_trip (the interpreter is slow)


@functools.lru_cache(maxsize=None)
def _compiled(name):
    return compile_text(CASES[name][0], f"{name}.dsf")


def _built(name):
    result = _compiled(name)
    return build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})


def _sizes(tensor, built):
    return tuple(int(built.sym.subs_dims(a.extent, built.all_dims)) for a in tensor.axes)


@pytest.mark.parametrize("name", list(CASES))
def test_family_and_forward_against_an_independent_loop(name):
    """The flat spelling's family (the [H, K, V] spelling's where it decomposes) and its split core state; the
    reference keeps the flat state; forward (torch, and Triton for ``ON_TRITON``), step and the reference against the
    float64 loop, from zero and from a flat initial state."""
    _, family, core_state, loop = CASES[name]
    built = _built(name)
    result = built.result
    assert result.structure.family == family, result.structure.family_reason
    assert _sizes(result.core.state, built) == core_state
    assert _sizes(result.sym.state, built) == (built.n_state(),)  # the reference's state: as declared
    backends = ("torch", "triton") if TRITON and name in ON_TRITON else ("torch",)
    check_forward_against_loop(built, lambda P, u, h0: loop(P, u, h0)[0], backends=backends)


@pytest.mark.parametrize("name", SPLIT)
def test_flat_state_round_trip(name):
    """initial_state and the final state in the declared flat shape [batch, N]: the final state equals the loop's
    (its [H, K, V] state flattened row-major), GLA's on the Triton path too; a sequence split at an offset and
    continued from the first part's final state gives the whole sequence's outputs and final state; step()'s state is
    flat too; the split [batch, H, K, V] shape is not the module's API."""
    built = _built(name)
    loop = CASES[name][3]
    model, P, N = built.model, built.params(), built.n_state()
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
    h0 = 0.5 * torch.randn(2, N, generator=gen, dtype=F64)
    y_want, s_want = loop(P, u, h0)
    y_want = y_want.reshape(2, 9, -1)
    for backend in ("torch", "triton") if TRITON and name == "gla" else ("torch",):  # the interpreter is slow
        model.backend = backend
        with torch.no_grad():
            y, s = model(u, initial_state=h0, output_final_state=True)
            assert s.shape == (2, N), (backend, s.shape)
            assert rel_err(y, y_want) < 1e-8 and rel_err(s, s_want) < 1e-8, backend
            y1, s1 = model(u[:, :4], initial_state=h0, output_final_state=True)
            y2, s2 = model(u[:, 4:], initial_state=s1, output_final_state=True)
            assert s1.shape == s2.shape == (2, N)
            assert rel_err(torch.cat([y1, y2], 1), y_want) < 1e-8 and rel_err(s2, s_want) < 1e-8, backend
            y0, s0 = model(u[:, :0], initial_state=h0, output_final_state=True)  # T = 0: h0 back, flat
            assert y0.shape[1] == 0 and s0.shape == (2, N) and torch.equal(s0, h0), backend
    model.backend = "torch"
    with torch.no_grad():
        state, ys = h0, []
        for t in range(9):
            y_t, state = model.step(u[:, t], state)
            assert state.shape == (2, N)
            ys.append(y_t)
        assert rel_err(torch.stack(ys, 1), y_want) < 1e-8 and rel_err(state, s_want) < 1e-8
        with pytest.raises(ValueError, match="initial_state must have shape") as err:
            model(u, initial_state=h0.reshape(2, *CASES[name][2]))
        # a one-axis state is its own flat form: the message names the shape once, not "(or flat [batch, N])" again
        assert "or flat" not in str(err.value) and f"({2}, {N})" in str(err.value), str(err.value)


def test_report_names_the_declared_state():
    """The structure report shows the split state and the declared one the module's states keep."""
    table = _compiled("gla").report.table()
    assert "[i_0: H, i_1: K, i_2: V]" in table and "declared       [i: H*K*V]" in table
    assert "declared" not in _compiled("s6_own").report.table()


def test_boundaries_that_do_not_nest_stay_flat():
    """C reading the key at ``i % K`` next to ``i // (K * V)`` and ``i % V``: K and V do not divide one another, so
    no single row-major radix holds all the reads; the state stays flat (the elementwise diagonal scan)."""
    text = GLA.replace("q[o, (i // V) % K]", "q[o, i % K]")
    result = compile_text(text, "gla_no_nest.dsf")
    assert result.core.state == result.sym.state and result.core.state_view is None
    assert result.structure.family == Family.DIAGONAL_SCAN


def test_a_split_the_analysis_refuses_falls_back_to_the_declared_state(monkeypatch):
    """Where the structure analysis refuses the split state (a form it has no algorithm for), the spec is analysed
    with its state as declared, as before the split existed, instead of failing to compile."""
    from dsfc import pipeline
    from dsfc.lang.errors import SpecError, SpecErrors

    analyse = pipeline.analyse_structure_of

    def refuse_split(core):
        if core.state_view is not None:
            raise SpecErrors([SpecError("refused for the test")])
        return analyse(core)

    monkeypatch.setattr(pipeline, "analyse_structure_of", refuse_split)
    result = compile_text(GLA, "gla_refused.dsf")
    assert result.core.state_view is None and result.core.state == result.sym.state
    assert result.structure.family == Family.DIAGONAL_SCAN


def test_literal_extents_split_as_dims_do():
    """The same GLA with every extent and digit stride a number (``state S[i: 24]``, ``i // 12``, ``(i // 4) % 3``,
    ``i % 4``): split as the dims spelling is (the chunked outer-product scan), the same numbers as the reference.
    A literal state extent next to digits read through dims (``i // (K * V)``) stays flat (README "Known not
    done")."""
    text = (GLA.replace("dim H = 2\n", "").replace("dim K = 3\n", "").replace("dim V = 4\n", "")
            .replace("H * K * V", "24").replace("(K * V)", "12").replace("(i // V) % K", "(i // 4) % 3")
            .replace("i % V", "i % 4").replace("/ sqrt(K)", "/ sqrt(3)")
            .replace("[H, K, d]", "[2, 3, d]").replace("[H, V, d]", "[2, 4, d]")
            .replace("h: H, a: K", "h: 2, a: 3").replace("h: H, b: V", "h: 2, b: 4"))
    assert not any(f"{n}" in text.split("input")[1] for n in ("H,", "K,", "V,", "* K", "* V")), text
    result = compile_text(text, "gla_literal.dsf")
    assert result.structure.family == Family.CHUNKED_OUTER, result.structure.family_reason
    built = build(result, {})
    u = torch.randn(2, 9, built.d_in(), generator=torch.Generator().manual_seed(1), dtype=F64)
    h0 = torch.randn(2, 24, generator=torch.Generator().manual_seed(2), dtype=F64)
    y_ref, h_ref = built.reference(u, h0)
    with torch.no_grad():
        y, h = built.model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_ref) < 1e-10 and rel_err(h, h_ref) < 1e-10
    mixed = GLA.replace("state S[i: H * K * V]", "state S[i: 24]")
    assert compile_text(mixed, "gla_mixed.dsf").structure.family == Family.DIAGONAL_SCAN
