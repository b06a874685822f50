"""The gated delta product (DeltaProduct, fla's gated_delta_product): n delta-rule steps per token,

    S_t = g_t (I - b_(t,n-1) k_(t,n-1) k_(t,n-1)^T) ... (I - b_(t,0) k_(t,0) k_(t,0)^T) S_(t-1)
          + sum_j (I - b_(t,n-1) k k^T) ... (I - b_(t,j+1) k k^T) b_(t,j) k_(t,j) v_(t,j)^T,     y_t = S_t^T q_t,

written by a user as DSF matrices: A the product expanded term by term (every subset of the factors), B u the
matching sum over the step axis j. ``structure.split_delta_product`` reads it back as a product and the module runs
the chunked delta-rule scan over T * n sub-steps (the gate at one sub-step, the readout at each token's last).

Checked against a float64 loop written here from the recurrence above (S <- g S, then S <- S + b_j k_j (v_j -
k_j^T S)^T for each j; with the gate on the last factor, S <- g S after the steps): forward at T = 0, 1, 7, 9 and
token-by-token step, from zero and from an initial state; the final state and a sequence of odd length split in two
with the state carried; gradients of the input, every parameter and through the final state; chunks of 3 sub-steps
(a token's sub-steps straddle chunk boundaries); the Triton path (interpreted on CPU) against the reference. A B u
that is not the matching sum (each k_j v_j^T written alone) is no product: the dense scan, still correct.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import itertools  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, check_backend,  # noqa: E402
                         check_forward_against_loop, check_small_chunks, check_state_grads_against_loop, rel_err)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

H, K, V = 2, 3, 2


def product_spec(n: int, gate: str, readout: str = "post", matching: bool = True) -> str:
    """The spec of n Householder-like steps per token. ``gate``: "first" (S <- g S before the steps, fla's form),
    "last" (after them: B u = g (...) carries g too, which the analysis reads as g on the values), "last_key" (the
    same with g inside B's keys, lets ge_j = g e_j: the scan's scaled read at the last sub-step) or "none".
    ``matching=False``: B u = sum_j b_j k_j v_j^T, each written alone (not the product's sum). beta in (0, 2)
    (fla's allow_neg_eigval)."""
    c = {(l, j): f"c{l}{j}[h]" for l in range(n) for j in range(l)}  # k_l . e_j, l > j

    def chain(subset, e="e") -> str:  # e_(jm) (k_jm . e_(jm-1)) ... (k_j2 . e_j1), the subset increasing
        return " * ".join([f"{e}{subset[-1]}[h, a]"] + [c[subset[i + 1], subset[i]] for i in range(len(subset) - 1)])

    a_terms = ["delta(a, a2)"]
    for m in range(1, n + 1):
        for subset in itertools.combinations(range(n), m):
            a_terms.append(f"{'-' if m % 2 else '+'} {chain(subset)} * k[h, {subset[0]}, a2]")
    b_terms = []
    e = "ge" if gate == "last_key" else "e"
    for j in range(n):
        key = [f"{e}{j}[h, a]"]
        if matching:
            later = range(j + 1, n)
            for m in range(1, n - j):
                for subset in itertools.combinations(later, m):
                    key.append(f"{'-' if m % 2 else '+'} {chain((j,) + subset, e)}")
        b_terms.append(f"delta(j, {j}) * ({' '.join(key)})")
    g_a = "" if gate == "none" else "g[h] * "
    g_b = "g[h] * " if gate == "last" else ""
    lets = "".join(f"let e{j}[h: H, a: K] = beta[h, {j}] * k[h, {j}, a]\n" for j in range(n))
    if gate == "last_key":
        lets += "".join(f"let ge{j}[h: H, a: K] = g[h] * e{j}[h, a]\n" for j in range(n))
    lets += "".join(f"let c{l}{j}[h: H] = sum(x, k[h, {l}, x] * e{j}[h, x])\n" for (l, j) in c)
    gate_let = "" if gate == "none" else (  # with none, the gate's input entries are read by nothing
        "let g[h: H] = exp(-exp(A_log[h]) * softplus(u[H * K + H * J * K + H * J * V + h]))\n")
    return f"""model DeltaProduct "{n} delta-rule steps per token, gate {gate}"
dim H = {H}
dim K = {K}
dim V = {V}
dim J = {n}
dim d = H * (K + J * K + J * V + 1 + J)
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
{"" if gate == "none" else "param A_log[H] ~ uniform(-1, 1)" + chr(10)}let q[h: H, a: K] = u[h * K + a]
let kr[h: H, j: J, a: K] = u[H * K + (h * J + j) * K + a]
let k[h: H, j: J, a: K] = kr[h, j, a] / sqrt(sum(a3, kr[h, j, a3] ^ 2))
let v[h: H, j: J, b: V] = u[H * K + H * J * K + (h * J + j) * V + b]
{gate_let}let beta[h: H, j: J] = 2 * sigmoid(u[H * K + H * J * K + H * J * V + H + h * J + j])
{lets}drive v
{"readout pre" + chr(10) if readout == "pre" else ""}A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * {g_a}(
    {" ".join(a_terms)})
B[(h, a, b), (h2, j, b2)] = delta(h, h2) * delta(b, b2) * {g_b}(
    {" + ".join(b_terms)})
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, a]
"""


def loop(n: int, gate: str, readout: str = "post"):
    """``loop(P, u, h0) -> (y [B, T, H * V], S_T [B, H, K, V])`` in float64, from the recurrence (module doc)."""
    def run(P, u, h0=None):
        Bsz, T = u.shape[:2]
        at = [0]

        def take(*shape):
            x = u[..., at[0]:at[0] + H * int(torch.tensor(shape).prod())]
            at[0] += x.shape[-1]
            return x.reshape(Bsz, T, H, *shape)

        q, kr, v, g_in, b_in = take(K), take(n, K), take(n, V), take(), take(n)
        k = kr / kr.norm(dim=-1, keepdim=True)
        g = None if gate == "none" else torch.exp(-P["A_log"].exp() * F.softplus(g_in))
        beta = 2 * torch.sigmoid(b_in)
        S = u.new_zeros(Bsz, H, K, V) if h0 is None else h0.to(F64)
        ys = []
        for t in range(T):
            read = S
            if gate == "first":
                S = g[:, t, :, None, None] * S
            for j in range(n):
                kj = k[:, t, :, j]
                err = v[:, t, :, j] - torch.einsum("bhk,bhkv->bhv", kj, S)
                S = S + (beta[:, t, :, j, None] * kj)[..., None] * err[..., None, :]
            if gate in ("last", "last_key"):
                S = g[:, t, :, None, None] * S
            ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], read if readout == "pre" else S))
        y = torch.stack(ys, 1) if ys else u.new_zeros(Bsz, 0, H, V)
        return y.reshape(Bsz, T, H * V), S
    return run


CASES = {  # name -> (n, gate, readout)
    "n2_first": (2, "first", "post"),
    "n3_last_key": (3, "last_key", "post"),
    "n2_last": (2, "last", "post"),
    "n2_none_pre": (2, "none", "pre"),
}


@functools.lru_cache(maxsize=None)
def _compiled(n: int, gate: str, readout: str, matching: bool = True):
    return compile_text(product_spec(n, gate, readout, matching), f"delta_product_{n}_{gate}.dsf")


def _built(name: str, seed: int = 0):
    n, gate, readout = CASES[name]
    result = _compiled(n, gate, readout)
    return build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}, seed)


@pytest.mark.parametrize("readout", ["post", "pre"])
def test_substep_helpers_place_reads_like_keys(readout):
    """rank_substep_keys puts a key-shaped stream where rank_substeps puts the keys; decay_at moves the decay (the
    gate on the last factor) and is refused outside the step's sub-steps."""
    from dsfc.runtime.scans import rank_substep_keys, rank_substeps

    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 3, 2, r, 4, generator=gen, dtype=F64) for r in (1, 3, 3))
    log_decay = -torch.rand(2, 3, 2, generator=gen, dtype=F64)
    _, ks, _, ds = rank_substeps(q, k, v, log_decay, fill=0.0, readout=readout, decay_at=2)
    assert torch.equal(rank_substep_keys(k, 1, readout=readout), ks)
    assert torch.equal(ds.reshape(2, 3, 3, 2)[:, :, 2], log_decay) and not ds.reshape(2, 3, 3, 2)[:, :, :2].any()
    with pytest.raises(ValueError, match="decay_at=3 is not one of the 3 sub-steps"):
        rank_substeps(q, k, v, log_decay, fill=0.0, readout=readout, decay_at=3)


@pytest.mark.parametrize("name", list(CASES))
def test_the_product_is_read_as_delta_rule_substeps(name):
    """The family is the chunked delta rule with n sub-steps, the gate on the last factor inside B's keys as the
    scan's scaled read at the last sub-step (outside them it scales the values); the family's reason says so."""
    n, gate, _ = CASES[name]
    st = _compiled(*CASES[name]).structure
    assert st.family == Family.CHUNKED_DELTA, st.family_reason
    assert st.delta.substeps == n and st.delta.scaled == (gate == "last_key")
    assert f"a product of {n} delta-rule factors" in st.family_reason
    source = _compiled(*CASES[name]).source
    assert "rank_substep_keys(" in source and ("decay_at=" in source) == (gate == "last_key")


@pytest.mark.parametrize("name", list(CASES))
def test_eigenvalue_bound_from_the_factors_holds(name):
    """The report bounds |lambda| by max |g| prod ||I - b_j k_j k_j^T|| (each factor's norm max(1, |1 - b_j|) <= 1
    for b_j in (0, 2)): < 1 with a gate in (0, 1), <= 1 without; the spectra of the module's own A_t (inputs scaled
    up, so that the sigmoids saturate) lie inside."""
    built = _built(name)
    report = built.result.report
    gated = CASES[name][1] != "none"
    assert report.eigen_interval == ("[0, 1)" if gated else "[0, 1]"), report.eigen_reason
    assert "product of delta-rule factors" in report.eigen_reason
    u = 4 * torch.randn(2, 6, built.d_in(), generator=torch.Generator().manual_seed(6), dtype=F64)
    lam = torch.linalg.eigvals(built.dsf_matrices(u)[0]).abs()
    assert lam.max() < 1 + 1e-12 and (not gated or lam.max() < 1)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_step_match_the_loop(name):
    """Forward (T = 0, 1, 7, 9, batch 1 and 3, from zero and from an initial state), token-by-token step and the
    reference against the loop."""
    built = _built(name)
    run = loop(*CASES[name])
    check_forward_against_loop(built, lambda P, u, h0: run(P, u, h0)[0])


@pytest.mark.parametrize("name", list(CASES))
def test_final_state_and_a_split_sequence_match_the_loop(name):
    """The final state at odd T = 7 from an initial state, and 3 + 4 with the state carried."""
    built = _built(name)
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 7, built.d_in(), generator=gen, dtype=F64)
    h0 = 0.5 * torch.randn(2, H, K, V, generator=gen, dtype=F64)
    y, S = loop(*CASES[name])(built.params(), u, h0)
    with torch.no_grad():
        y_all, h_all = built.model(u, initial_state=h0, output_final_state=True)
        y1, h1 = built.model(u[:, :3], initial_state=h0, output_final_state=True)
        y2, h2 = built.model(u[:, 3:], initial_state=h1, output_final_state=True)
    assert rel_err(y_all, y) < 1e-10 and rel_err(h_all, S) < 1e-10
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(h2, S) < 1e-10


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_the_loop(name):
    """d(sum(y w) + sum(S_T w_h)) / d(u, A_log) at T = 7 from an initial state against autograd through the loop."""
    check_state_grads_against_loop(_built(name), loop(*CASES[name]), T=7)


@pytest.mark.parametrize("name", ["n2_first", "n3_last_key"])
def test_substeps_straddling_chunk_boundaries(name):
    """Chunks of 3 sub-steps: a token's sub-steps split across two chunks (T = 9: 18 or 27 sub-steps)."""
    check_small_chunks(_built(name))


@pytest.mark.skipif(not TRITON, reason="triton (and numpy for its interpreter) not installed")
@pytest.mark.parametrize("name", ["n2_first", "n3_last_key"])
def test_triton_path(name):
    """The Triton path (the delta rule's state-passing kernel, interpreted on CPU) from an initial state: output,
    final state and gradients against the reference, and the output against the loop."""
    built = _built(name)
    check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(1, 4, built.d_in(), generator=gen, dtype=F64)
    built.model.backend = "triton"
    with torch.no_grad():
        y, S = built.model(u, output_final_state=True)
    want_y, want_S = loop(*CASES[name])(built.params(), u)
    assert rel_err(y, want_y) < 1e-8 and rel_err(S, want_S) < 1e-8


def test_unmatched_input_is_no_product():
    """B u = sum_j b_j k_j v_j^T with A the product: the sub-steps would add the later factors to the earlier keys,
    so it is not the delta product: the dense scan, matching the reference."""
    result = _compiled(2, "first", "post", matching=False)
    assert result.structure.family == Family.DENSE_SCAN, result.structure.family_reason
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
    check_backend(built, "torch", ((2, 5),), steps=False, h0s=(True,))


# the spec's contraction k_1 . e_0 as another spelling: c10 = k_1 . k_0 (beta_0 left out) is no product of these
# factors (it would need the second factor's key to be both e_0 and k_0); reads p_j = sin(kr_j + 1), not the keys
# (I - b_j k_j p_j^T, Comba's factor twice), are one, whose eigenvalues the prover does not bound
VARIANTS = {
    "wrong_contraction": ("let c10[h: H] = sum(x, k[h, 1, x] * e0[h, x])",
                          "let c10[h: H] = sum(x, k[h, 1, x] * k[h, 0, x])", Family.DENSE_SCAN),
    "other_reads": ("let c10[h: H] = sum(x, k[h, 1, x] * e0[h, x])",
                    "let p[h: H, j: J, a: K] = sin(kr[h, j, a] + 1)\nlet c10[h: H] = sum(x, p[h, 1, x] * e0[h, x])",
                    Family.CHUNKED_DELTA),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_are_read_only_when_exact(name):
    """Each variant's family as stated above, and the module (torch, from an initial state) matches the reference."""
    old, new, family = VARIANTS[name]
    text = product_spec(2, "first").replace(old, new)
    if name == "other_reads":
        text = text.replace("k[h, 0, a2]", "p[h, 0, a2]").replace("k[h, 1, a2]", "p[h, 1, a2]")
    result = compile_text(text, f"delta_product_{name}.dsf")
    assert result.structure.family == family, result.structure.family_reason
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})
    check_backend(built, "torch", ((2, 5),), steps=False, h0s=(True,))
