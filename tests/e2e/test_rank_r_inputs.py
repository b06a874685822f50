"""Rank-R inputs per step, ``B u = sum_r k_r v_r^T`` (Mamba-3's MIMO SSD, several tokens per step), and R queries per
step, ``y[g, r, v] = sum_k q[g, r, k] S[g, k, v]``: the chunked outer-product scans run them as R_k + R_q - 1
sub-steps of each step (``runtime.scans.rank_substeps``).

Each spec is checked against dsfc's float64 reference through ``check_all_paths`` (torch at T = 0, 1, 7, batch 1
and 3, step, gradients of u, the initial state and every parameter; Triton, interpreted on CPU, from an initial
state; chunks of 3 steps over T = 9) and against a float64 loop written here from the equations (forward at T = 0,
1, 9 and 70, the last past the default chunk of 64 and not a multiple of it, from zero and from an initial state;
gradients on the torch and Triton paths). Specs that are not a sum of outer products over a rank axis must fall
back to the diagonal scan, still correct.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (BACKENDS, F64, INTERPRETER_WARNINGS, build, check_all_paths,  # noqa: E402
                         check_backend, matvec, py_name, rel_err)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

HEAD = """
dim d = 4
dim H = 2
dim R = {R}
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
param W_Q[H, R, K, d] ~ normal(0, 0.5)
param W_K[H, R, K, d] ~ normal(0, 0.5)
param W_V[H, R, V, d] ~ normal(0, 0.5)
param w_dt[H, d] ~ normal(0, 0.5)
param W_G[H, K, d] ~ normal(0, 0.5)
let dt[h: H] = softplus(sum(m, w_dt[h, m] * u[m]))
let k[h: H, r: R, a: K] = sum(m, W_K[h, r, a, m] * u[m])
let q[h: H, r: R, a: K] = sum(m, W_Q[h, r, a, m] * u[m])
let v[h: H, r: R, b: V] = sum(m, W_V[h, r, b, m] * u[m])
"""

# the decays, as A's entry after delta(h, h2) delta(a, a2) delta(b, b2)
DECAYS = {
    "head": "exp(-dt[h])",  # one scalar per head (Mamba-2/3)
    "none": "1",  # A = I (multi-token linear attention)
    "key": "sigmoid(sum(m, W_G[h, a, m] * u[m]))",  # per key, shared over the values (GLA)
    "signed": "tanh(sum(m, w_dt[h, m] * u[m]))",  # not provably >= 0: signs folded into the sub-step streams
}

MULTI_QUERY = "output y[h: H, r: R, b: V]\nC[(o, r, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, r, a]\n"
ONE_QUERY = "output y[h: H, b: V]\nC[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h, 0, a]\n"
RANK_B = "B[(h, a, b), m] = dt[h] * sum(r, k[h, r, a] * W_V[h, r, b, m])\n"
ONE_B = "B[(h, a, b), m] = dt[h] * k[h, 0, a] * W_V[h, 0, b, m]\n"


def spec(decay: str, b_text: str = RANK_B, c_text: str = MULTI_QUERY, R: int = 2, extra: str = "") -> str:
    return (f'model Rank "rank test"\n{HEAD.format(R=R)}{extra}{c_text}'
            f"A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * {DECAYS[decay]}\n{b_text}")


def _independent(decay, rank_b, multi_query, pre=False):
    """S_t = a_t S_(t-1) + dt sum_r k_r v_r^T (or its r = 0 term), y = q_r . S (every r, or r = 0), in float64."""
    def run(P, u, h0=None):
        B_, (H, R, K), V = u.shape[0], P["W_Q"].shape[:3], P["W_V"].shape[2]
        S = u.new_zeros(B_, H, K, V) if h0 is None else h0
        ys = []
        for t in range(u.shape[1]):
            x = u[:, t]
            dt = torch.nn.functional.softplus(matvec(P["w_dt"], x))  # [B, H]
            k, v, q = matvec(P["W_K"], x), matvec(P["W_V"], x), matvec(P["W_Q"], x)  # [B, H, R, *]
            a = {"head": torch.exp(-dt)[..., None, None], "none": torch.ones_like(dt)[..., None, None],
                 "key": torch.sigmoid(matvec(P["W_G"], x))[..., None],
                 "signed": torch.tanh(matvec(P["w_dt"], x))[..., None, None]}[decay]
            kv = torch.einsum("bhra,bhrv->bhav", k, v) if rank_b else torch.einsum("bha,bhv->bhav", k[:, :, 0],
                                                                                   v[:, :, 0])
            S_prev = S
            S = a * S + dt[..., None, None] * kv
            read = S_prev if pre else S
            ys.append(torch.einsum("bhra,bhav->bhrv", q, read) if multi_query else
                      torch.einsum("bha,bhav->bhv", q[:, :, 0], read))
        y = torch.stack(ys, 1) if ys else u.new_zeros(B_, 0, H, *((R,) if multi_query else ()), V)
        return y.flatten(2), S
    return run


# name: (spec text, family, independent loop or None)
CASES = {
    "mimo_r3_head": (spec("head", R=3), Family.CHUNKED_OUTER, _independent("head", True, True)),
    "mimo_r1_head": (spec("head", R=1), Family.CHUNKED_OUTER, _independent("head", True, True)),
    "tokens_none": (spec("none", c_text=ONE_QUERY, R=3), Family.CHUNKED_OUTER, _independent("none", True, False)),
    "tokens_key": (spec("key", c_text=ONE_QUERY), Family.CHUNKED_OUTER, _independent("key", True, False)),
    "queries_head": (spec("head", b_text=ONE_B, R=3), Family.CHUNKED_OUTER, _independent("head", False, True)),
    "mimo_signed": (spec("signed"), Family.CHUNKED_OUTER, _independent("signed", True, True)),
    "mimo_pre": (spec("head", R=3).replace("input u[d]", "input u[d]\nreadout pre"), Family.CHUNKED_OUTER,
                 _independent("head", True, True, pre=True)),
    # not a rank axis: w[r, a, b] ties the key row to the value row through r (B u has full rank over (a, b))
    "tied_rows": (spec("head", b_text="B[(h, a, b), m] = dt[h] * sum(r, k[h, r, a] * W_V[h, r, b, m] * w[r, a, b])\n",
                       extra="param w[R, K, V] ~ normal(0, 0.5)\n"), Family.DIAGONAL_SCAN, None),
    # not a rank axis: the sum over r of the key is one key (rank 1 per step), and a second term adds one more
    "sum_plus_term": (spec("head", b_text="B[(h, a, b), m] = dt[h] * (sum(r, k[h, r, a] * W_V[h, r, b, m]) + "
                                          "k[h, 0, a] * W_V[h, 0, b, m] * W_G[h, a, m])\n"),
                      Family.DIAGONAL_SCAN, None),
    # the rank index inside the decay's let: a group decay, still a rank-R input
    "rank_in_decay": (spec("head").replace("exp(-dt[h])", "exp(-sum(r, dt[h] * sigmoid(k[h, r, 0])))"),
                      Family.CHUNKED_OUTER, None),
}


@functools.lru_cache(maxsize=None)
def _compiled(name):
    return compile_text(CASES[name][0], f"{name}.dsf")


def _built(name):
    result = _compiled(name)
    return build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})


@pytest.mark.parametrize("name", list(CASES))
def test_rank_spec_matches_the_reference(name):
    """The family (rank axes named in the why line where found), and every path against the reference (the
    fallbacks, which run the diagonal scan, on the torch path)."""
    _, family, _ = CASES[name]
    built = _built(name)
    st = built.result.structure
    if family == Family.CHUNKED_OUTER and name not in ("tokens_key", "tokens_none", "queries_head"):
        assert "rank axis r" in st.family_reason and "output axis r" in st.family_reason, st.family_reason
    if family == Family.CHUNKED_OUTER:
        check_all_paths(built, family)
    else:
        assert st.family == family and st.outer is None, st.family_reason
        check_backend(built, "torch", ((1, 1), (3, 7)))


# the loop's cases; Triton (interpreted: seconds per call) on the two that differ most, the others through the
# reference test's Triton run
WITH_LOOP = [n for n, c in CASES.items() if c[2] is not None and n != "mimo_r1_head"]
LOOP_TRITON = ("mimo_r3_head", "mimo_pre")


@pytest.mark.parametrize("name", WITH_LOOP)
def test_rank_spec_matches_an_independent_loop(name):
    """Forward and final state (torch at T = 0, 1, 9, 70, batch 1 and 3, from zero and from an initial state;
    Triton at T = 9 from an initial state) and gradients of u and every parameter (torch; Triton too for
    LOOP_TRITON, T = 9) against the loop here."""
    _, _, loop = CASES[name]
    backends = BACKENDS if name in LOOP_TRITON else ("torch",)
    built = _built(name)
    gen = torch.Generator().manual_seed(1)
    P = built.params()
    for b, t in ((1, 0), (3, 1), (1, 9), (3, 70)):
        for with_h0 in (False, True):
            u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
            h0 = 0.5 * torch.randn(b, *built.state_shape(), generator=gen, dtype=F64) if with_h0 else None
            want, want_h = loop(P, u, h0)
            for backend in backends if t == 9 and with_h0 else ("torch",):
                built.model.backend = backend
                with torch.no_grad():
                    y, hT = built.model(u, initial_state=h0, output_final_state=True)
                assert rel_err(y, want) < 1e-8 and rel_err(hT, want_h) < 1e-8, (backend, b, t, with_h0)
    names = [p.tensor.name for p in built.sym.params]
    u = torch.randn(3, 9, built.d_in(), generator=gen, dtype=F64)
    w = torch.randn(3, 9, built.d_out(), generator=gen, dtype=F64)
    PP = {n: v.clone().requires_grad_() for n, v in P.items()}
    uu = u.clone().requires_grad_()
    want = torch.autograd.grad((loop(PP, uu)[0] * w).sum(), [uu, *(PP[n] for n in names)], allow_unused=True)
    want = [torch.zeros_like(x) if g is None else g for g, x in zip(want, [uu, *(PP[n] for n in names)])]
    named = dict(built.model.named_parameters())
    scale = max(g.abs().max().item() for g in want)
    for backend in backends:
        built.model.backend = backend
        uu = u.clone().requires_grad_()
        got = torch.autograd.grad((built.model(uu) * w).sum(), [uu, *(named[py_name(n)] for n in names)],
                                  allow_unused=True)
        got = [torch.zeros_like(x) if g is None else g for g, x in zip(got, [uu, *(named[py_name(n)] for n in names)])]
        for n, g, r in zip(["u", *names], got, want, strict=True):
            assert torch.isfinite(g).all() and (g - r).abs().max().item() <= 1e-8 * scale, (backend, n)


def test_substeps_place_queries_after_the_whole_step():
    """rank_substeps / rank_readouts on hand-built streams: one step, two keys, two queries, post and pre readout,
    against S = a S0 + k0 v0^T + k1 v1^T read by each query (no chunked scan in the way: a loop over sub-steps)."""
    from dsfc.runtime.scans import rank_readouts, rank_substeps

    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 2, 3, generator=gen, dtype=F64), torch.randn(1, 1, 1, 2, 3, generator=gen, dtype=F64)
    v, s0 = torch.randn(1, 1, 1, 2, 4, generator=gen, dtype=F64), torch.randn(3, 4, generator=gen, dtype=F64)
    g = torch.tensor([[[-0.7]]], dtype=F64)
    full = torch.exp(g[0, 0, 0]) * s0 + k[0, 0, 0].T @ v[0, 0, 0]
    for readout, read in (("post", full), ("pre", s0)):
        qs, ks, vs, gs = rank_substeps(q, k, v, g, fill=0.0, readout=readout)
        assert qs.shape == (1, 3, 1, 3) and vs.shape == (1, 3, 1, 4) and gs.shape == (1, 3, 1)
        S, ys = s0, []
        for j in range(3):
            before = S
            S = torch.exp(gs[0, j, 0]) * S + torch.outer(ks[0, j, 0], vs[0, j, 0])
            ys.append((before if readout == "pre" else S).T @ qs[0, j, 0])
        y = rank_readouts(torch.stack(ys)[None, :, None], 2, 2, readout=readout)  # [1, 1, 2, 1, 4]
        assert torch.allclose(S, full) and torch.allclose(y[0, 0, :, 0], q[0, 0, 0] @ read), readout
