"""dsfc.reference.reference_forward against independent re-implementations of each model's reference code.

Each oracle below is written from the original library's reference function, with NO use of dsfc beyond loading the
spec and calling ``reference_forward`` / ``dense_matrices`` on the dsfc side:

- S6:               mamba-ssm ``selective_scan_ref`` (mamba_ssm/ops/selective_scan_interface.py), channel-first
                    ``[B, D, L]`` layout, ``deltaA = exp(delta * A)``, ``deltaB_u = delta * B * u``, ``y = C h + D u``.
- SSD:              mamba-ssm Mamba-2 semantics, a plain per-step loop over heads with grouped B/C
                    (``repeat(B, "b l g n -> b l (g h) n")``), plus the chunked ``ssd_minimal_discrete`` algorithm.
- Linear attention: fla ``naive_recurrent_linear_attn`` (fla/ops/linear_attn/naive.py), ``[B, T, H, K]``, unnormalised,
                    default scale ``K ** -0.5``.
- DeltaNet:         fla ``delta_rule_recurrence`` (fla/ops/delta_rule/naive.py), head-first ``[B, H, T, K]``, q scaled by
                    ``K ** -0.5``.

The originals cast to float32; here every oracle runs in float64, like the dsfc reference. Both sides then compute the
same real numbers with the same precision and only a different order of operations (dense matvecs vs elementwise
products, einsum contraction order, chunked sums), so agreement to 1e-10 (rtol and atol) is expected: the rounding
error of a length-7 recurrence over O(1)-O(10) values in float64 is ~1e-14.

Final states are compared flattened row-major in the spec's state axis order: S6 (c, j), SSD (h, p, j), linear
attention and DeltaNet (h, a, b) -- i.e. mamba's ``last_state [B, D, N]``, Mamba-2's ``[B, H, P, N]`` and fla's
``[B, H, K, V]`` reshaped to ``[B, -1]``.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from dsfc.reference import dense_matrices, reference_forward

from oracle_support import BATCH, F64, T, TOL, check_param_names, load, randn, run_dsfc


# ---------------------------------------------------------------------------------------------------------------------
# Oracles (independent of dsfc)
# ---------------------------------------------------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """mamba-ssm selective_scan_ref, real A, variable B and C of shape [B, N, L], no z; float64.

    u, delta: [B, D, L]; A: [D, N]; B, C: [B, N, L]; D: [D]. Returns (out [B, D, L], last_state [B, D, N]).
    ``initial_state`` is an addition (the original starts from zeros).
    """
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    x = A.new_zeros((batch, dim, dstate)) if initial_state is None else initial_state.clone()
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    return out, x


def ssd_recurrent(x, dt, A, B, C, D, initial_state=None):
    """Mamba-2 SSD, one step at a time. x: [B, L, H, P], dt: [B, L, H] (after softplus), A: [H] (negative),
    B, C: [B, L, G, N], D: [H]. Returns (y [B, L, H, P], final state [B, H, P, N])."""
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Bh = B.repeat_interleave(H // G, dim=2)  # repeat(B, "b l g n -> b l (g h) n", h=H // G)
    Ch = C.repeat_interleave(H // G, dim=2)
    s = x.new_zeros(Bsz, H, P, N) if initial_state is None else initial_state.clone()
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, t] * A)  # [B, H]
        s = dA[:, :, None, None] * s + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], Bh[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Ch[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), s


def segsum(x):
    """mamba ssd_minimal.segsum: stable segment sums, -inf above the diagonal."""
    Tn = x.size(-1)
    x = x[..., None].expand(*x.shape, Tn)  # repeat(x, "... d -> ... d e", e=T)
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~mask, 0)
    x_segsum = torch.cumsum(x, dim=-2)
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool), diagonal=0)
    return x_segsum.masked_fill(~mask, -torch.inf)


def ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):
    """mamba ssd_minimal_discrete on discretised inputs (X*dt, A*dt), with B and C already repeated to heads
    ([B, L, H, N]); the original's einsums carry a separate group index that is only summed correctly for G = 1,
    so the group->head expansion is done first and the einsums index B, C by head."""
    Bsz, Ln, H, P = X.shape
    nc = Ln // block_len

    def chunks(t):
        return t.reshape(Bsz, nc, block_len, *t.shape[2:])

    X, A, B, C = chunks(X), chunks(A), chunks(B), chunks(C)
    A = A.permute(0, 3, 1, 2)  # b c l h -> b h c l
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(segsum(A))
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, :1])
    states = torch.cat([initial_states, states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    state_decay_out = torch.exp(A_cumsum)
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, state_decay_out)
    return (Y_diag + Y_off).reshape(Bsz, Ln, H, P), final_state


def naive_recurrent_linear_attn(q, k, v, initial_state=None, scale=None):
    """fla naive_recurrent_linear_attn, normalize=False, float64. q, k: [B, T, H, K]; v: [B, T, H, V]."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    Bsz, Tn, H, K, V = *q.shape, v.shape[-1]
    o = torch.empty_like(v)
    S = torch.zeros((Bsz, H, K, V), dtype=q.dtype)
    if initial_state is not None:
        S = S + initial_state
    for t in range(Tn):
        S = S + torch.einsum("b h k, b h v -> b h k v", k[:, t], v[:, t])
        o[:, t] = torch.einsum("b h k v, b h k -> b h v", S, q[:, t] * scale)
    return o, S


def delta_rule_recurrence(q, k, v, beta, initial_state=None):
    """fla delta_rule_recurrence, float64. q, k: [B, H, L, K]; v: [B, H, L, V]; beta: [B, H, L]."""
    b, h, l, d_k = q.shape
    d_v = v.shape[-1]
    o = torch.zeros_like(v)
    S = torch.zeros(b, h, d_k, d_v, dtype=v.dtype)
    q = q * (d_k**-0.5)
    if beta.ndim < v.ndim:
        beta = beta[..., None]
    if initial_state is not None:
        S = S + initial_state
    for i in range(l):
        _k = k[:, :, i]
        _q = q[:, :, i]
        _v = v[:, :, i].clone()
        beta_i = beta[:, :, i]
        _v = _v - (S.clone() * _k[..., None]).sum(-2)
        _v = _v * beta_i
        S = S.clone() + _k.unsqueeze(-1) * _v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", _q, S)
    return o, S


def l2norm(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


# ---------------------------------------------------------------------------------------------------------------------
# S6
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_h0", [False, True])
def test_s6_matches_selective_scan_ref(with_h0):
    sym = load("s6.dsf")
    d, n, r = 6, 3, 2
    gen = torch.Generator().manual_seed(6)
    params = {
        "A_log": randn(gen, d, n, scale=0.5),
        "W_xdt": randn(gen, r, d, scale=d**-0.5),
        "W_dt": randn(gen, d, r, scale=r**-0.5),
        "b_dt": randn(gen, d, scale=0.5, shift=-1.0),
        "W_B": randn(gen, n, d),
        "W_C": randn(gen, n, d),
        "D": randn(gen, d),
    }
    u = randn(gen, BATCH, T, d)
    h0 = randn(gen, BATCH, d, n) if with_h0 else None

    y, h = run_dsfc(sym, {"d": d, "n": n, "r": r}, params, u, None if h0 is None else h0.reshape(BATCH, d * n))

    x = u.transpose(1, 2)  # [B, D, L], channel-first
    delta = torch.einsum("cq,qk,bkl->bcl", params["W_dt"], params["W_xdt"], x)  # dt_proj(x_proj_dt(x)), no bias
    Bsel = torch.einsum("jk,bkl->bjl", params["W_B"], x)  # [B, N, L]
    Csel = torch.einsum("jk,bkl->bjl", params["W_C"], x)
    A = -torch.exp(params["A_log"])
    out, last = selective_scan_ref(
        x, delta, A, Bsel, Csel, D=params["D"], delta_bias=params["b_dt"], delta_softplus=True, initial_state=h0
    )
    torch.testing.assert_close(y, out.transpose(1, 2), **TOL)
    torch.testing.assert_close(h, last.reshape(BATCH, d * n), **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# Mamba-2 SSD
# ---------------------------------------------------------------------------------------------------------------------


def ssd_setup(H, G, P, n, Tn, seed):
    gen = torch.Generator().manual_seed(seed)
    params = {
        "A_log": randn(gen, H, scale=0.5),
        "dt_bias": randn(gen, H, scale=0.5, shift=-1.0),
        "W_dt": randn(gen, H, H * P, scale=(H * P) ** -0.5),  # nn.Linear weights over the flat (h, p) input
        "W_B": randn(gen, G, n, H * P),
        "W_C": randn(gen, G, n, H * P),
        "D": randn(gen, H),
    }
    u = randn(gen, BATCH, Tn, H, P)
    xf = u.reshape(BATCH, Tn, H * P)  # "b l h p -> b l (h p)"
    dt = F.softplus(xf @ params["W_dt"].T + params["dt_bias"])  # [B, L, H]
    Bg = torch.einsum("gjm,btm->btgj", params["W_B"], xf)  # [B, L, G, N]
    Cg = torch.einsum("gjm,btm->btgj", params["W_C"], xf)
    A = -torch.exp(params["A_log"])
    return params, u, dt, A, Bg, Cg


SSD_SHAPES = [(2, 1), (4, 2), (2, 2)]  # (H, G): one group, two heads per group, one head per group


@pytest.mark.parametrize("H,G", SSD_SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_ssd_matches_mamba2_recurrence(H, G, with_h0):
    sym = load("ssd.dsf")
    P, n = 2, 3
    params, u, dt, A, Bg, Cg = ssd_setup(H, G, P, n, T, seed=10 * H + G)
    gen = torch.Generator().manual_seed(99)
    h0 = randn(gen, BATCH, H, P, n) if with_h0 else None

    y, h = run_dsfc(sym, {"H": H, "P": P, "n": n, "G": G}, params, u,
                    None if h0 is None else h0.reshape(BATCH, -1))

    y_ref, s_ref = ssd_recurrent(u, dt, A, Bg, Cg, params["D"], initial_state=h0)
    torch.testing.assert_close(y, y_ref.reshape(BATCH, T, H * P), **TOL)
    torch.testing.assert_close(h, s_ref.reshape(BATCH, -1), **TOL)


@pytest.mark.parametrize("H,G", SSD_SHAPES)
def test_ssd_matches_ssd_minimal_chunked(H, G):
    """The chunked SSD algorithm (two chunks of 4, with an initial state) against dsfc; T = 8 for whole chunks."""
    sym = load("ssd.dsf")
    P, n, Tn, block = 2, 3, 8, 4
    params, u, dt, A, Bg, Cg = ssd_setup(H, G, P, n, Tn, seed=20 * H + G)
    gen = torch.Generator().manual_seed(7)
    h0 = randn(gen, BATCH, H, P, n)

    y, h = run_dsfc(sym, {"H": H, "P": P, "n": n, "G": G}, params, u, h0.reshape(BATCH, -1))

    Bh, Ch = Bg.repeat_interleave(H // G, dim=2), Cg.repeat_interleave(H // G, dim=2)
    y_ssd, s_ssd = ssd_minimal_discrete(u * dt[..., None], A * dt, Bh, Ch, block, initial_states=h0[:, None])
    y_ssd = y_ssd + params["D"][:, None] * u  # ssd_minimal leaves the D skip to the caller
    torch.testing.assert_close(y, y_ssd.reshape(BATCH, Tn, H * P), **TOL)
    torch.testing.assert_close(h, s_ssd.reshape(BATCH, -1), **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# Linear attention and DeltaNet
# ---------------------------------------------------------------------------------------------------------------------

ATT_DIMS = {"d": 6, "H": 2, "K": 3, "V": 2}


def projections(params, u):
    q = torch.einsum("hkm,btm->bthk", params["W_Q"], u)  # [B, T, H, K]
    k = torch.einsum("hkm,btm->bthk", params["W_K"], u)
    v = torch.einsum("hvm,btm->bthv", params["W_V"], u)  # [B, T, H, V]
    return q, k, v


def attn_params(gen, with_beta: bool):
    d, H, K, V = ATT_DIMS["d"], ATT_DIMS["H"], ATT_DIMS["K"], ATT_DIMS["V"]
    params = {
        "W_Q": randn(gen, H, K, d, scale=d**-0.5),
        "W_K": randn(gen, H, K, d, scale=d**-0.5),
        "W_V": randn(gen, H, V, d, scale=d**-0.5),
    }
    if with_beta:
        params["W_beta"] = randn(gen, H, d)
    return params


@pytest.mark.parametrize("with_h0", [False, True])
def test_linear_attention_matches_fla_naive_recurrent(with_h0):
    sym = load("linear_attention.dsf")
    H, K, V = ATT_DIMS["H"], ATT_DIMS["K"], ATT_DIMS["V"]
    gen = torch.Generator().manual_seed(3)
    params = attn_params(gen, with_beta=False)
    u = randn(gen, BATCH, T, ATT_DIMS["d"])
    S0 = randn(gen, BATCH, H, K, V) if with_h0 else None

    y, h = run_dsfc(sym, ATT_DIMS, params, u, None if S0 is None else S0.reshape(BATCH, -1))

    q, k, v = projections(params, u)
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    o, S = naive_recurrent_linear_attn(phi(q), phi(k), v, initial_state=S0)  # scale = K ** -0.5
    torch.testing.assert_close(y, o.reshape(BATCH, T, H * V), **TOL)
    torch.testing.assert_close(h, S.reshape(BATCH, -1), **TOL)


def deltanet_inputs(params, u):
    q, k, v = projections(params, u)
    q, k = l2norm(F.silu(q)), l2norm(F.silu(k))  # fla: qk_activation='silu', qk_norm='l2' (eps omitted)
    beta = torch.sigmoid(torch.einsum("hm,btm->bth", params["W_beta"], u))
    return q, k, v, beta


@pytest.mark.parametrize("with_h0", [False, True])
def test_deltanet_matches_fla_delta_rule_recurrence(with_h0):
    sym = load("deltanet.dsf")
    H, K, V = ATT_DIMS["H"], ATT_DIMS["K"], ATT_DIMS["V"]
    gen = torch.Generator().manual_seed(4)
    params = attn_params(gen, with_beta=True)
    u = randn(gen, BATCH, T, ATT_DIMS["d"])
    S0 = randn(gen, BATCH, H, K, V) if with_h0 else None

    y, h = run_dsfc(sym, ATT_DIMS, params, u, None if S0 is None else S0.reshape(BATCH, -1))

    q, k, v, beta = deltanet_inputs(params, u)
    hf = lambda x: x.transpose(1, 2)  # noqa: E731  [B, T, H, ...] -> head-first [B, H, T, ...]
    o, S = delta_rule_recurrence(hf(q), hf(k), hf(v), hf(beta), initial_state=S0)
    torch.testing.assert_close(y, hf(o).reshape(BATCH, T, H * V), **TOL)
    torch.testing.assert_close(h, S.reshape(BATCH, -1), **TOL)


def test_deltanet_A_eigenvalues_are_one_and_one_minus_beta():
    """Maths doc 5.14: A_t = (I_K - beta k k^T) (x) I_V per head, symmetric, with eigenvalues 1 (multiplicity
    (K-1) V) and 1 - beta ||k||^2 = 1 - beta (multiplicity V), since k is L2-normalised."""
    sym = load("deltanet.dsf")
    H, K, V = ATT_DIMS["H"], ATT_DIMS["K"], ATT_DIMS["V"]
    gen = torch.Generator().manual_seed(5)
    params = attn_params(gen, with_beta=True)
    u = randn(gen, BATCH, T, ATT_DIMS["d"])
    dims = sym.dim_values(ATT_DIMS)
    check_param_names(sym, params, dims)
    A, _, _, _ = dense_matrices(sym, dims, params, u)
    N = H * K * V
    assert A.shape == (BATCH, T, N, N)
    torch.testing.assert_close(A, A.transpose(-1, -2), rtol=0, atol=1e-14)

    _, _, _, beta = deltanet_inputs(params, u)  # [B, T, H]
    assert bool(((beta > 0) & (beta < 1)).all())
    blocks = A.reshape(BATCH, T, H, K * V, H, K * V)
    for h1 in range(H):  # block-diagonal over heads
        for h2 in range(H):
            if h1 != h2:
                assert bool((blocks[:, :, h1, :, h2, :] == 0).all())
    for h1 in range(H):
        ev = torch.linalg.eigvalsh(blocks[:, :, h1, :, h1, :])  # ascending, [B, T, K*V]
        small = (1 - beta[:, :, h1])[..., None].expand(BATCH, T, V)
        ones = torch.ones(BATCH, T, (K - 1) * V, dtype=F64)
        torch.testing.assert_close(ev, torch.cat([small, ones], -1), rtol=0, atol=1e-12)


def test_linear_attention_A_is_identity():
    sym = load("linear_attention.dsf")
    gen = torch.Generator().manual_seed(8)
    params = attn_params(gen, with_beta=False)
    u = randn(gen, BATCH, T, ATT_DIMS["d"])
    dims = sym.dim_values(ATT_DIMS)
    A, _, _, D = dense_matrices(sym, dims, params, u)
    N = ATT_DIMS["H"] * ATT_DIMS["K"] * ATT_DIMS["V"]
    assert torch.equal(A, torch.eye(N, dtype=F64).expand(BATCH, T, N, N))
    assert not D.any()  # no skip term
