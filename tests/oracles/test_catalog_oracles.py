"""dsfc.reference.reference_forward for the catalogue specs against re-implementations of each model's reference code.

Every oracle is written here from the original library's reference function (maths doc /work/shared/dsf-models.md,
section 5), independent of dsfc; dsfc is only used to load the spec and to call ``reference_forward`` /
``dense_matrices``:

- RetNet:               fla ``naive_retention`` (fla/ops/retention/naive.py): parallel form, decay mask
                        gamma_h^(n-m), gamma_h = 1 - 2^(-5-h), q scaled by K^-1/2, head-first ``[B, H, T, K]``.
- GLA:                  fla ``naive_recurrent_gla`` (fla/ops/gla/naive.py), gk = logsigmoid(gk_proj(u)) / 16
                        (fla/layers/gla.py), ``[B, T, H, K]``.
- HGRN:                 fla ``naive_recurrent_hgrn`` (fla/ops/hgrn/naive.py) fed as fla/layers/hgrn.py does:
                        g = logaddexp(log lb, log1p(-lb) + logsigmoid(f)), x = swiglu(i, 1 - exp(g)); the lower bound
                        from fla/models/hgrn/modeling_hgrn.py (softmax over layers, cumsum minus the first).
- Gated DeltaNet:       fla ``naive_recurrent_gated_delta_rule`` (fla/ops/gated_delta_rule/naive.py) with the gate of
                        ``naive_gdn_gate`` (gate.py) and the no-conv branch of fla/layers/gated_deltanet.py.
- mLSTM:                xlstm ``recurrent_step_stabilized_simple`` (with its max-stabiliser m) and
                        ``parallel_stabilized_simple`` (xlstm/blocks/mlstm/backends.py), eps = 0; the headwise q/k/v
                        projections of ``LinearHeadwiseExpand`` and the gates of ``mLSTMCell``.
- RWKV-6:               fla ``naive_recurrent_rwkv6`` (fla/ops/rwkv6/recurrent_naive.py, head-first) fed by the
                        token shift / DDLerp / LoRA of fla/layers/rwkv6.py, scale = 1. as the layer passes it.
- RG-LRU:               recurrentgemma ``RGLRU.forward`` + ``BlockDiagonalLinear`` + ``rnn_scan``
                        (recurrentgemma/torch/layers.py), at segment_pos > 0 (no document reset).
- qLSTM, qLSTM-S6:      dsf-mqar ``qLSTM.forward`` (zoology/mixers/lstm.py), reversed=False / True, without the conv,
                        the gelu(gate) and the output projection (as the specs).
- normalized attention: dsf-mqar ``SelfNormAttention`` + ``MHNA`` (zoology/mixers/attention.py), parallel form.
- LRU, S4D:             |lambda| of the 2x2 blocks (sqrt(det)) against exp(-exp(nu_log)) / exp(dt Re A), and the
                        forward pass against minimal-LRU's complex recurrence / s4d.py's Vandermonde kernel + FFT conv.

The originals run in float32; here everything is float64, so agreement to 1e-10 is expected (both sides compute the
same real numbers, only in a different order). Differences from the originals that the specs make on purpose are
applied to the oracle too and named at each test (no conv, no post-ops, no eps).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsfc.reference import dense_matrices, reference_forward

from oracle_support import BATCH, F64, T, TOL, check_param_names, load, randn, run_dsfc


def dsfc_matrices(sym, overrides, params, u, running0=None):
    dims = sym.dim_values(overrides)
    check_param_names(sym, params, dims)
    return dense_matrices(sym, dims, params, u, running0)


def hf(x):
    """[B, T, H, ...] <-> head-first [B, H, T, ...]."""
    return x.transpose(1, 2)


def l2norm(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


# ---------------------------------------------------------------------------------------------------------------------
# Oracles (independent of dsfc), float64
# ---------------------------------------------------------------------------------------------------------------------


def naive_retention(q, k, v):
    """fla naive_retention (parallel form). q, k: [B, H, T, K]; v: [B, H, T, V]."""
    _, n_heads, seq_len, d_head = q.shape
    s = (1 - torch.tensor(2.0, dtype=F64).pow(-5.0 - torch.arange(n_heads, dtype=F64))).log2()
    n = torch.arange(seq_len, dtype=F64)
    n = 2.0 ** ((n.unsqueeze(-1) - n) * s.view(-1, 1, 1)) * n.unsqueeze(-1).ge(n)
    s = torch.einsum("bhqd,bhkd,hqk->bhqk", q * d_head**-0.5, k, n.to(q.dtype))
    return torch.einsum("bhqk,bhkd->bhqd", s, v)


def naive_recurrent_gla(q, k, v, gk, initial_state=None):
    """fla naive_recurrent_gla. q, k, gk: [B, T, H, K]; v: [B, T, H, V]; returns (o [B,T,H,V], h [B,H,K,V])."""
    q, k, v, gk = (x.transpose(1, 2) for x in (q, k, v, gk))
    B, H, Tn, K, V = *q.shape, v.shape[-1]
    o = torch.zeros_like(v)
    scale = K**-0.5
    h = q.new_zeros(B, H, K, V)
    if initial_state is not None:
        h = h + initial_state
    for i in range(Tn):
        q_i = q[:, :, i] * scale
        k_i = k[:, :, i]
        v_i = v[:, :, i]
        gk_i = gk[:, :, i].exp()
        kv_i = k_i[..., None] * v_i[..., None, :]
        h = h * gk_i[..., None] + kv_i
        o[:, :, i] = (q_i[..., None] * h).sum(-2)
    return o.transpose(1, 2), h


def naive_recurrent_hgrn(x, g, initial_state=None):
    """fla naive_recurrent_hgrn: h = exp(g) h + x. x, g: [B, T, D]."""
    B, Tn, D = x.shape
    h = torch.zeros(B, D, dtype=x.dtype)
    o = torch.zeros_like(x)
    if initial_state is not None:
        h = h + initial_state
    for i in range(Tn):
        h = g[:, i].exp() * h + x[:, i]
        o[:, i] = h
    return o, h


def naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=None):
    """fla naive_recurrent_gated_delta_rule. q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g: [B, T, H]."""
    q, k, v, beta, g = (x.transpose(1, 2).contiguous() for x in (q, k, v, beta, g))
    B, H, Tn, K, V = *k.shape, v.shape[-1]
    o = torch.zeros(B, H, Tn, V, dtype=v.dtype)
    h = torch.zeros(B, H, K, V, dtype=v.dtype)
    if initial_state is not None:
        h = initial_state.clone()
    q = q * (1 / (q.shape[-1] ** 0.5))
    for i in range(Tn):
        b_q = q[:, :, i]
        b_k = k[:, :, i]
        b_v = v[:, :, i].clone()
        h = h.clone() * g[:, :, i].exp()[..., None, None]
        b_beta = beta[:, :, i]
        b_v = b_v - (h.clone() * b_k[..., None]).sum(-2)
        b_v = b_v * b_beta[..., None]
        h = h.clone() + b_k.unsqueeze(-1) * b_v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", b_q, h)
    return o.transpose(1, 2), h


def naive_gdn_gate(g, A_log, dt_bias):
    """fla naive_gdn_gate: g = -exp(A_log) * softplus(g + dt_bias)."""
    return -A_log.exp() * F.softplus(g + dt_bias)


def mlstm_recurrent_step_stabilized_simple(c_state, n_state, m_state, q, k, v, igate_preact, fgate_preact, eps=0.0):
    """xlstm recurrent_step_stabilized_simple. c: (B,NH,DH,DH), n: (B,NH,DH,1), m: (B,NH,1,1), q/k/v: (B,NH,1,DH),
    gates (B,NH,1,1). The original's eps = 1e-6 is set to 0 (the spec leaves it out)."""
    B, NH, S, DH = q.shape
    q, k, v = q.squeeze(2).unsqueeze(-1), k.squeeze(2).unsqueeze(-1), v.squeeze(2).unsqueeze(-1)
    log_fg_act = F.logsigmoid(fgate_preact)
    m_state_new = torch.max(log_fg_act + m_state, igate_preact)
    fg_act = torch.exp(log_fg_act + m_state - m_state_new)
    ig_act = torch.exp(igate_preact - m_state_new)
    k_scaled = k / math.sqrt(DH)
    c_state_new = fg_act * c_state + ig_act * (k_scaled @ v.transpose(-1, -2))
    n_state_new = fg_act * n_state + ig_act * k_scaled
    h_num = q.transpose(-1, -2) @ c_state_new
    qn_dotproduct = q.transpose(-1, -2) @ n_state_new
    max_val = torch.exp(-m_state_new)
    h_denom = torch.maximum(qn_dotproduct.abs(), max_val) + eps
    h = h_num / h_denom
    return h, (c_state_new, n_state_new, m_state_new)


def mlstm_parallel_stabilized_simple(queries, keys, values, igate_preact, fgate_preact, eps=0.0):
    """xlstm parallel_stabilized_simple (row-wise stabilisation), eps = 0. All (B, NH, S, DH) / gates (B, NH, S, 1)."""
    B, NH, S, DH = queries.shape
    log_fgates = F.logsigmoid(fgate_preact)
    ltr = torch.tril(torch.ones((S, S), dtype=torch.bool))
    log_fgates_cumsum = torch.cat([torch.zeros((B, NH, 1, 1), dtype=F64), torch.cumsum(log_fgates, dim=-2)], dim=-2)
    rep = log_fgates_cumsum.repeat(1, 1, 1, S + 1)
    _log_fg_matrix = rep - rep.transpose(-2, -1)
    log_fg_matrix = torch.where(ltr, _log_fg_matrix[:, :, 1:, 1:], -float("inf"))
    log_D_matrix = log_fg_matrix + igate_preact.transpose(-2, -1)
    max_log_D, _ = torch.max(log_D_matrix, dim=-1, keepdim=True)
    D_matrix = torch.exp(log_D_matrix - max_log_D)
    keys_scaled = keys / math.sqrt(DH)
    C_matrix = (queries @ keys_scaled.transpose(-2, -1)) * D_matrix
    normalizer = torch.maximum(C_matrix.sum(dim=-1, keepdim=True).abs(), torch.exp(-max_log_D))
    return (C_matrix / (normalizer + eps)) @ values


def naive_recurrent_rwkv6(q, k, v, w, u, scale=None, initial_state=None):
    """fla naive_recurrent_rwkv6 (head-first). q, k, w: [B, H, T, K]; v: [B, H, T, V]; u: [H, K]. w is the log decay."""
    B, H, Tn, K, V = *q.shape, v.shape[-1]
    h = torch.zeros(B, H, K, V, dtype=q.dtype)
    o = torch.zeros_like(v)
    if scale is None:
        scale = K**-0.5
    if initial_state is not None:
        h = h + initial_state
    for i in range(Tn):
        q_i = q[:, :, i, :] * scale
        k_i = k[:, :, i]
        v_i = v[:, :, i, :]
        w_i = w[:, :, i].exp()
        kv_i = k_i[..., None] * v_i[..., None, :]
        o_i = (h + u[None, ..., None] * kv_i) * q_i[..., None]
        o[:, :, i] = o_i.sum(-2)
        h = h * w_i[..., None] + kv_i
    return o, h


def block_diagonal_linear(x, w, b):
    """recurrentgemma BlockDiagonalLinear: x [..., nh*bw], w [nh, bw_in, bw_out], b [nh, bw]."""
    nh = w.shape[0]
    x = x.reshape(*x.shape[:-1], nh, -1)
    y = torch.einsum("... h i, h i j -> ... h j", x, w) + b
    return y.reshape(*y.shape[:-2], -1)


def rglru_forward(x, segment_pos, a_param, Wa, ba, Wi, bi, h0=None):
    """recurrentgemma RGLRU.forward + rnn_scan (linear mode), float64 accumulation."""
    reset = segment_pos == 0
    gate_x = torch.sigmoid(block_diagonal_linear(x, Wi, bi))
    gate_a = torch.sigmoid(block_diagonal_linear(x, Wa, ba))
    log_a = -8.0 * gate_a * F.softplus(a_param)
    a = torch.exp(log_a)
    a_square = torch.exp(2 * log_a)
    gated_x = x * gate_x
    multiplier = torch.sqrt(1 - a_square)
    multiplier = reset[..., None] + ~reset[..., None] * multiplier
    normalized_x = gated_x * multiplier
    a = a * ~reset[..., None]
    h_t = torch.zeros(x[:, 0].shape, dtype=F64) if h0 is None else h0
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        h_t = a[:, t] * h_t + normalized_x[:, t]
        y[:, t] = h_t
    return y, h_t


def warp_scan(gates, tokens, h0=None):
    """accelerated_scan.warp.scan semantics, [B, C, T] layout: h_t = gates_t h_{t-1} + tokens_t."""
    h = torch.zeros_like(tokens[..., 0]) if h0 is None else h0
    out = []
    for t in range(tokens.shape[-1]):
        h = gates[..., t] * h + tokens[..., t]
        out.append(h)
    return torch.stack(out, -1)


def qlstm_forward(u, p, reversed_sigmoid, h0=None):
    """dsf-mqar qLSTM.forward without the conv, gelu(gate) and self.output (as the specs): returns sigmoid(o) * h."""
    x = u @ p["W_x"].T  # the x half of self.input; no conv
    forget = x @ p["W_f"].T + p["b_f"]
    inp = x @ p["W_i"].T + p["b_i"]
    output = x @ p["W_o"].T + p["b_o"]
    if reversed_sigmoid:
        alpha = torch.pow(torch.sigmoid(-forget), torch.relu(p["alpha"]))
    else:
        alpha = forget.sigmoid()
    x = inp.sigmoid() * x
    h = warp_scan(alpha.mT.contiguous(), x.mT.contiguous(), h0).mT
    return output.sigmoid() * h, h[:, -1]


def self_norm_attention(q, k, v, n):
    """dsf-mqar SelfNormAttention.forward (no dropout). q, k: [B, S, H, D]; v: [B, S, H, Dv]; n: [B, S, H]."""
    seqlen = q.shape[1]
    scores = torch.einsum("bthd,bshd->bhts", q, k)
    mask_mul = torch.tril(torch.full((seqlen, seqlen), 1.0, dtype=F64), 0)
    n = torch.exp(n.permute(0, 2, 1))  # "b l h -> b h l"
    scores = scores * mask_mul
    attention = torch.div(scores, n[:, :, :, None])
    return torch.einsum("bhts,bshd->bthd", attention, v)


# ---------------------------------------------------------------------------------------------------------------------
# RetNet
# ---------------------------------------------------------------------------------------------------------------------

ATT = {"d": 6, "H": 3, "K": 3, "V": 2}


def qkv_params(gen, d, H, K, V, names=("W_Q", "W_K", "W_V")):
    return {
        names[0]: randn(gen, H, K, d, scale=d**-0.5),
        names[1]: randn(gen, H, K, d, scale=d**-0.5),
        names[2]: randn(gen, H, V, d, scale=d**-0.5),
    }


def test_retnet_matches_fla_naive_retention():
    sym = load("retnet.dsf")
    d, H, K, V = ATT["d"], ATT["H"], ATT["K"], ATT["V"]
    gen = torch.Generator().manual_seed(11)
    params = qkv_params(gen, d, H, K, V)
    u = randn(gen, BATCH, T, d)

    y, S = run_dsfc(sym, ATT, params, u)

    q = torch.einsum("hkm,btm->bthk", params["W_Q"], u)
    k = torch.einsum("hkm,btm->bthk", params["W_K"], u)
    v = torch.einsum("hvm,btm->bthv", params["W_V"], u)
    o = naive_retention(hf(q), hf(k), hf(v))  # no rotary (the spec leaves it out)
    torch.testing.assert_close(y, hf(o).reshape(BATCH, T, H * V), **TOL)
    # final state S_T = sum_j gamma_h^(T-1-j) k_j v_j^T
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=F64))
    w = gamma[:, None] ** (T - 1 - torch.arange(T, dtype=F64))  # [H, T]
    S_ref = torch.einsum("ht,bthk,bthv->bhkv", w, k, v)
    torch.testing.assert_close(S, S_ref.reshape(BATCH, -1), **TOL)


def test_retnet_A_is_fixed_gamma_per_head():
    sym = load("retnet.dsf")
    d, H, K, V = ATT["d"], ATT["H"], ATT["K"], ATT["V"]
    gen = torch.Generator().manual_seed(12)
    params = qkv_params(gen, d, H, K, V)
    A, _, _, D = dsfc_matrices(sym, ATT, params, randn(gen, BATCH, T, d))
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=F64))
    want = torch.diag(gamma.repeat_interleave(K * V))
    assert torch.equal(A, want.expand_as(A))
    assert not D.any()


# ---------------------------------------------------------------------------------------------------------------------
# GLA
# ---------------------------------------------------------------------------------------------------------------------

GLA = {"d": 6, "H": 2, "K": 3, "V": 2, "R": 2}


def gla_setup(seed):
    d, H, K, V, R = (GLA[k] for k in "dHKVR")
    gen = torch.Generator().manual_seed(seed)
    params = qkv_params(gen, d, H, K, V)
    params.update({"W_g1": randn(gen, R, d, scale=d**-0.5), "W_g2": randn(gen, H, K, R),
                   "b_g": randn(gen, H, K, shift=1.0)})
    u = randn(gen, BATCH, T, d)
    return params, u


@pytest.mark.parametrize("with_h0", [False, True])
def test_gla_matches_fla_naive_recurrent_gla(with_h0):
    sym = load("gla.dsf")
    H, K, V = GLA["H"], GLA["K"], GLA["V"]
    params, u = gla_setup(21)
    S0 = randn(torch.Generator().manual_seed(22), BATCH, H, K, V) if with_h0 else None

    y, S = run_dsfc(sym, GLA, params, u, None if S0 is None else S0.reshape(BATCH, -1))

    q = torch.einsum("hkm,btm->bthk", params["W_Q"], u)
    k = torch.einsum("hkm,btm->bthk", params["W_K"], u)
    v = torch.einsum("hvm,btm->bthv", params["W_V"], u)
    # fla: gk = logsigmoid(gk_proj(u)) / gate_logit_normalizer, gk_proj = Linear(d, R) -> Linear(R, H*K, bias)
    gk = F.logsigmoid(torch.einsum("hkr,rm,btm->bthk", params["W_g2"], params["W_g1"], u) + params["b_g"]) / 16
    o, S_ref = naive_recurrent_gla(q, k, v, gk, initial_state=S0)
    torch.testing.assert_close(y, o.reshape(BATCH, T, H * V), **TOL)
    torch.testing.assert_close(S, S_ref.reshape(BATCH, -1), **TOL)


def test_gla_eigenvalues_are_alpha_per_key():
    sym = load("gla.dsf")
    H, K, V = GLA["H"], GLA["K"], GLA["V"]
    params, u = gla_setup(23)
    A, _, _, _ = dsfc_matrices(sym, GLA, params, u)
    alpha = torch.sigmoid(torch.einsum("hkr,rm,btm->bthk", params["W_g2"], params["W_g1"], u) + params["b_g"]) ** (1 / 16)
    want = torch.diag_embed(alpha.repeat_interleave(V, dim=-1).reshape(BATCH, T, H * K * V))
    torch.testing.assert_close(A, want, rtol=0, atol=1e-14)
    assert bool(((alpha > 0) & (alpha < 1)).all())


# ---------------------------------------------------------------------------------------------------------------------
# HGRN
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [1, 3])
@pytest.mark.parametrize("with_h0", [False, True])
def test_hgrn_matches_fla_naive_recurrent_hgrn(layer, with_h0):
    sym = load("hgrn.dsf")
    d, E, L = 5, 5, 4
    dims = {"d": d, "E": E, "L": L, "layer": layer}
    gen = torch.Generator().manual_seed(30 + layer)
    params = {"W_i": randn(gen, E, d, scale=d**-0.5), "W_f": randn(gen, E, d, scale=d**-0.5),
              "Gamma": randn(gen, L, E)}
    u = randn(gen, BATCH, T, d)
    h0 = randn(gen, BATCH, E) if with_h0 else None

    y, h = run_dsfc(sym, dims, params, u, h0)

    # HGRNModel: lower_bounds = softmax(Gamma, 0); cumsum(0) - lower_bounds[0]; layer i gets lower_bounds[i]
    lb_all = params["Gamma"].softmax(0)
    lb_all = lb_all.cumsum(0) - lb_all[0]
    i = u @ params["W_i"].T
    f = F.logsigmoid(u @ params["W_f"].T)
    if layer - 1 > 0:  # HGRNAttention: "the lower bound for the first layer is zero"
        lb = lb_all[layer - 1]
        f = torch.logaddexp(lb.log(), torch.log1p(-lb) + f)
    x = F.silu(i) * (1 - f.exp())  # swiglu(i, 1 - f.exp())
    o, h_ref = naive_recurrent_hgrn(x, f, initial_state=h0)
    torch.testing.assert_close(y, o, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)
    if layer == 1:
        assert bool((lb_all[0] == 0).all())


def test_hgrn_eigenvalues_lie_above_the_lower_bound():
    sym = load("hgrn.dsf")
    d, E, L, layer = 4, 4, 4, 3
    dims = {"d": d, "E": E, "L": L, "layer": layer}
    gen = torch.Generator().manual_seed(35)
    params = {"W_i": randn(gen, E, d), "W_f": randn(gen, E, d, scale=3.0), "Gamma": randn(gen, L, E)}
    A, _, _, _ = dsfc_matrices(sym, dims, params, randn(gen, BATCH, T, d))
    lb_all = params["Gamma"].softmax(0)
    lb = (lb_all.cumsum(0) - lb_all[0])[layer - 1]
    lam = torch.diagonal(A, dim1=-2, dim2=-1)
    assert torch.equal(A, torch.diag_embed(lam))
    assert bool(((lam > lb) & (lam < 1)).all())


# ---------------------------------------------------------------------------------------------------------------------
# Gated DeltaNet
# ---------------------------------------------------------------------------------------------------------------------

GDN = {"d": 6, "H": 2, "K": 3, "V": 2}


def gdn_setup(seed):
    d, H, K, V = (GDN[k] for k in "dHKV")
    gen = torch.Generator().manual_seed(seed)
    params = qkv_params(gen, d, H, K, V)
    params.update({"W_a": randn(gen, H, d), "W_b": randn(gen, H, d), "A_log": randn(gen, H, scale=0.5),
                   "dt_bias": randn(gen, H, scale=0.5)})
    u = randn(gen, BATCH, T, d)
    # fla GatedDeltaNet, use_short_conv=False: q, k, v = silu(proj); l2norm of q, k in the kernel (eps left out)
    q = l2norm(F.silu(torch.einsum("hkm,btm->bthk", params["W_Q"], u)))
    k = l2norm(F.silu(torch.einsum("hkm,btm->bthk", params["W_K"], u)))
    v = F.silu(torch.einsum("hvm,btm->bthv", params["W_V"], u))
    g = naive_gdn_gate(u @ params["W_a"].T, params["A_log"], params["dt_bias"])  # [B, T, H], log alpha
    beta = torch.sigmoid(u @ params["W_b"].T)
    return params, u, (q, k, v, beta, g)


@pytest.mark.parametrize("with_h0", [False, True])
def test_gated_deltanet_matches_fla_naive_recurrent(with_h0):
    sym = load("gated_deltanet.dsf")
    H, K, V = GDN["H"], GDN["K"], GDN["V"]
    params, u, (q, k, v, beta, g) = gdn_setup(41)
    S0 = randn(torch.Generator().manual_seed(42), BATCH, H, K, V) if with_h0 else None

    y, S = run_dsfc(sym, GDN, params, u, None if S0 is None else S0.reshape(BATCH, -1))

    o, S_ref = naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=S0)
    torch.testing.assert_close(y, o.reshape(BATCH, T, H * V), **TOL)
    torch.testing.assert_close(S, S_ref.reshape(BATCH, -1), **TOL)


def test_gated_deltanet_eigenvalues_are_alpha_and_alpha_times_one_minus_beta():
    """Maths doc 5.15: eigenvalues alpha (multiplicity (K-1) V) and alpha (1 - beta) (multiplicity V), in (0, 1)."""
    sym = load("gated_deltanet.dsf")
    H, K, V = GDN["H"], GDN["K"], GDN["V"]
    params, u, (_, _, _, beta, g) = gdn_setup(43)
    A, _, _, _ = dsfc_matrices(sym, GDN, params, u)
    torch.testing.assert_close(A, A.transpose(-1, -2), rtol=0, atol=1e-14)
    alpha = g.exp()
    blocks = A.reshape(BATCH, T, H, K * V, H, K * V)
    for h in range(H):
        ev = torch.linalg.eigvalsh(blocks[:, :, h, :, h, :])  # ascending
        small = (alpha[..., h] * (1 - beta[..., h]))[..., None].expand(BATCH, T, V)
        big = alpha[..., h][..., None].expand(BATCH, T, (K - 1) * V)
        torch.testing.assert_close(ev, torch.cat([small, big], -1), rtol=0, atol=1e-12)
    assert bool(((alpha > 0) & (alpha < 1)).all())


# ---------------------------------------------------------------------------------------------------------------------
# mLSTM
# ---------------------------------------------------------------------------------------------------------------------

MLSTM = {"H": 2, "DH": 4, "bs": 2}


def mlstm_setup(seed):
    H, DH, bs = MLSTM["H"], MLSTM["DH"], MLSTM["bs"]
    E = H * DH
    gen = torch.Generator().manual_seed(seed)
    params = {
        "W_Q": randn(gen, E // bs, bs, bs, scale=0.7),
        "W_K": randn(gen, E // bs, bs, bs, scale=0.7),
        "W_V": randn(gen, E // bs, bs, bs, scale=0.7),
        "W_f": randn(gen, H, 3, E, scale=0.3),
        "b_f": randn(gen, H, shift=2.0),
        "W_i": randn(gen, H, 3, E, scale=0.3),
        "b_i": randn(gen, H, scale=0.5),
    }
    u = randn(gen, BATCH, T, E)

    def headwise(x, w):  # LinearHeadwiseExpand.forward: "...hd,hod->...ho"
        x = x.view(*x.shape[:-1], w.shape[0], -1)
        return torch.einsum("...hd,hod->...ho", x, w).reshape(*x.shape[:-2], -1)

    q, k, v = (headwise(u, params[n]) for n in ("W_Q", "W_K", "W_V"))  # [B, T, E]
    if_in = torch.cat([q, k, v], dim=-1)  # mLSTMCell: if_gate_input
    ipre = if_in @ params["W_i"].reshape(H, 3 * E).T + params["b_i"]  # igate: Linear(3E, NH)
    fpre = if_in @ params["W_f"].reshape(H, 3 * E).T + params["b_f"]
    heads = lambda x: x.view(BATCH, T, H, DH).transpose(1, 2)  # noqa: E731  (B, NH, S, DH)
    return params, u, heads(q), heads(k), heads(v), ipre.transpose(1, 2)[..., None], fpre.transpose(1, 2)[..., None]


@pytest.mark.parametrize("with_h0", [False, True])
def test_mlstm_matches_xlstm_recurrent_step(with_h0):
    """xLSTM's stabilised step (with m) equals the unstabilised DSF exactly when eps = 0 (m cancels); the carried
    (C, n) enter xLSTM with m = 0, where its scaled state equals the unscaled one."""
    sym = load("mlstm.dsf")
    H, DH = MLSTM["H"], MLSTM["DH"]
    params, u, q, k, v, ipre, fpre = mlstm_setup(51)
    gen = torch.Generator().manual_seed(52)
    C0 = randn(gen, BATCH, H, DH, DH) if with_h0 else torch.zeros(BATCH, H, DH, DH, dtype=F64)
    n0 = randn(gen, BATCH, H, DH) if with_h0 else torch.zeros(BATCH, H, DH, dtype=F64)

    y, st = run_dsfc(sym, MLSTM, params, u, {"h": C0.reshape(BATCH, -1), "n": n0})

    c, n, m = C0, n0[..., None], torch.zeros(BATCH, H, 1, 1, dtype=F64)
    ys = []
    for t in range(T):
        sl = slice(t, t + 1)
        h, (c, n, m) = mlstm_recurrent_step_stabilized_simple(c, n, m, q[:, :, sl], k[:, :, sl], v[:, :, sl],
                                                              ipre[:, :, sl], fpre[:, :, sl])
        ys.append(h[:, :, 0])  # (B, NH, DH)
    y_ref = torch.stack(ys, 1).reshape(BATCH, T, H * DH)
    torch.testing.assert_close(y, y_ref, **TOL)
    # xLSTM's state is scaled by exp(-m); the DSF's is not
    scale = torch.exp(m)
    torch.testing.assert_close(st["h"], (c * scale).reshape(BATCH, -1), **TOL)
    torch.testing.assert_close(st["n"], (n * scale)[..., 0], **TOL)


def test_mlstm_matches_xlstm_parallel_stabilized():
    sym = load("mlstm.dsf")
    H, DH = MLSTM["H"], MLSTM["DH"]
    params, u, q, k, v, ipre, fpre = mlstm_setup(53)
    y, _ = run_dsfc(sym, MLSTM, params, u)
    y_ref = mlstm_parallel_stabilized_simple(q, k, v, ipre, fpre)  # (B, NH, S, DH)
    torch.testing.assert_close(y, y_ref.transpose(1, 2).reshape(BATCH, T, H * DH), **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# RWKV-6
# ---------------------------------------------------------------------------------------------------------------------

RWKV = {"d": 6, "H": 2, "K": 2, "V": 3, "R": 2, "Rw": 3, "layer": 2, "L": 4}


def rwkv6_setup(seed):
    d, H, K, V, R, Rw = (RWKV[k] for k in ("d", "H", "K", "V", "R", "Rw"))
    gen = torch.Generator().manual_seed(seed)
    params = {
        "mu_x": randn(gen, d, scale=0.5),
        "W_x1": randn(gen, 4, R, d, scale=d**-0.5),
        "W_x2": randn(gen, 4, d, R, scale=0.5),
        "x_bias": randn(gen, 4, d, scale=0.5),
        "W_r": randn(gen, H, K, d, scale=d**-0.5),
        "W_k": randn(gen, H, K, d, scale=d**-0.5),
        "W_v": randn(gen, H, V, d, scale=d**-0.5),
        "W_w1": randn(gen, Rw, d, scale=d**-0.5),
        "W_w2": randn(gen, H, K, Rw, scale=0.5),
        "b_w": randn(gen, H, K, scale=0.5, shift=-1.0),
        "bonus": randn(gen, H, K),
    }
    x = randn(gen, BATCH, T, d)
    return params, x


def rwkv6_fla_inputs(p, x, x_prev):
    """fla RWKV6Attention.forward up to the kernel call (v with its token shift). x_prev: the
    conv_state cache x_{-1} (zeros = no cache: token_shift pads with zeros)."""
    d, H, K, V, R = (RWKV[k] for k in "dHKVR")
    shifted = torch.cat([x_prev[:, None], x[:, :-1]], 1)
    delta = shifted - x
    # x_proj = LerpLinear(d, 5R) -> tanh -> Linear(5R, d); the r, w, k, v slices (0-3) of the five (g feeds the
    # output gate, a post-op the spec leaves out)
    xx = x + delta * p["mu_x"]
    z = torch.tanh(torch.einsum("srm,btm->btsr", p["W_x1"], xx))  # [B, T, 4, R]
    mm = torch.einsum("btsr,scr->btsc", z, p["W_x2"]) + p["x_bias"]  # [B, T, 4, d]
    mr, mw, mk, mv = mm.unbind(-2)
    r = torch.einsum("hkm,btm->bthk", p["W_r"], x + delta * mr)  # DDLerpLinear
    k = torch.einsum("hkm,btm->bthk", p["W_k"], x + delta * mk)
    # w_proj = DDLerpLinear with LoRA(d, K*H, Rw): Linear(no bias) -> tanh -> Linear(bias)
    wt = torch.einsum("hkj,btj->bthk", p["W_w2"], torch.tanh(torch.einsum("jm,btm->btj", p["W_w1"], x + delta * mw)))
    w = -torch.exp(wt + p["b_w"])  # fla: w = -exp(w); the kernel applies exp(w)
    v = torch.einsum("hvm,btm->bthv", p["W_v"], x + delta * mv)
    return r, k, v, w


@pytest.mark.parametrize("with_cache", [False, True])
def test_rwkv6_matches_fla_naive_recurrent_rwkv6(with_cache):
    sym = load("rwkv6.dsf")
    H, K, V, d = RWKV["H"], RWKV["K"], RWKV["V"], RWKV["d"]
    params, x = rwkv6_setup(61)
    gen = torch.Generator().manual_seed(62)
    S0 = randn(gen, BATCH, H, K, V) if with_cache else torch.zeros(BATCH, H, K, V, dtype=F64)
    x_prev = randn(gen, BATCH, d) if with_cache else torch.zeros(BATCH, d, dtype=F64)

    # a fresh sequence passes no state at all: the spec's prev(x[c], 0) is fla's zero-padded token shift x_{-1} = 0;
    # the cache case passes the carried x_{-1} (fla's conv_state)
    state = {"h": S0.reshape(BATCH, -1), "xp": x_prev} if with_cache else None
    y, st = run_dsfc(sym, RWKV, params, x, state)

    r, k, v, w = rwkv6_fla_inputs(params, x, x_prev)
    o, S_ref = naive_recurrent_rwkv6(hf(r), hf(k), hf(v), hf(w), params["bonus"], scale=1.0, initial_state=S0)
    torch.testing.assert_close(y, hf(o).reshape(BATCH, T, H * V), **TOL)
    torch.testing.assert_close(st["h"], S_ref.reshape(BATCH, -1), **TOL)
    torch.testing.assert_close(st["xp"], x[:, -1], **TOL)  # fla's conv_state = hidden_states[:, -1]


def test_rwkv6_split_sequence_carries_the_token_shift():
    sym = load("rwkv6.dsf")
    params, x = rwkv6_setup(63)
    y, st = run_dsfc(sym, RWKV, params, x)  # fresh: no state, the token shift starts from 0
    y1, st1 = run_dsfc(sym, RWKV, params, x[:, :3])
    y2, st2 = run_dsfc(sym, RWKV, params, x[:, 3:], st1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, **TOL)
    torch.testing.assert_close(st2["h"], st["h"], **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# RG-LRU
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_h0", [False, True])
def test_rg_lru_matches_recurrentgemma(with_h0):
    sym = load("rg_lru.dsf")
    W, nh = 6, 2
    bw = W // nh
    gen = torch.Generator().manual_seed(71)
    params = {
        "W_a": randn(gen, nh, bw, bw, scale=bw**-0.5),
        "b_a": randn(gen, nh, bw, scale=0.3),
        "W_i": randn(gen, nh, bw, bw, scale=bw**-0.5),
        "b_i": randn(gen, nh, bw, scale=0.3),
        "Lambda": randn(gen, W),
    }
    x = randn(gen, BATCH, T, W)
    h0 = randn(gen, BATCH, W) if with_h0 else None

    y, h = run_dsfc(sym, {"W": W, "nh": nh}, params, x, h0)

    # segment_pos > 0 throughout: inside a document (the spec does not model the reset at segment_pos == 0)
    segment_pos = torch.arange(1, T + 1).expand(BATCH, T)
    y_ref, h_ref = rglru_forward(x, segment_pos, params["Lambda"], params["W_a"], params["b_a"], params["W_i"],
                                 params["b_i"], h0)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# qLSTM and the S6-style qLSTM (eq. 23)
# ---------------------------------------------------------------------------------------------------------------------


def qlstm_params(gen, d, Hd, with_alpha, alpha=0.7):
    p = {
        "W_x": randn(gen, Hd, d, scale=d**-0.5),
        "W_f": randn(gen, Hd, Hd, scale=Hd**-0.5),
        "W_i": randn(gen, Hd, Hd, scale=Hd**-0.5),
        "W_o": randn(gen, Hd, Hd, scale=Hd**-0.5),
        "b_f": randn(gen, Hd, scale=0.5),
        "b_i": randn(gen, Hd, scale=0.5),
        "b_o": randn(gen, Hd, scale=0.5),
    }
    if with_alpha:
        p["alpha"] = torch.tensor(alpha, dtype=F64)
    return p


@pytest.mark.parametrize("spec,reversed_sigmoid,alpha",
                         [("qlstm.dsf", False, None), ("qlstm_s6.dsf", True, 0.7), ("qlstm_s6.dsf", True, -0.3)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_qlstm_matches_dsf_mqar_qlstm(spec, reversed_sigmoid, alpha, with_h0):
    sym = load(spec)
    d, e = 3, 2
    Hd = d * e
    gen = torch.Generator().manual_seed(81 + reversed_sigmoid)
    params = qlstm_params(gen, d, Hd, reversed_sigmoid, alpha=alpha)
    u = randn(gen, BATCH, T, d)
    h0 = randn(gen, BATCH, Hd) if with_h0 else None

    y, h = run_dsfc(sym, {"d": d, "e": e}, params, u, h0)

    y_ref, h_ref = qlstm_forward(u, params, reversed_sigmoid, h0)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)


@pytest.mark.parametrize("alpha", [1.3, 0.0, -0.5])
def test_qlstm_s6_eigenvalues_in_half_open_unit_interval(alpha):
    """Maths doc 5.11: lambda = exp(-relu(alpha) softplus(f)) in (0, 1], and exactly 1 when alpha <= 0."""
    sym = load("qlstm_s6.dsf")
    d, e = 3, 2
    gen = torch.Generator().manual_seed(85)
    params = qlstm_params(gen, d, d * e, True, alpha=alpha)
    A, _, _, _ = dsfc_matrices(sym, {"d": d, "e": e}, params, randn(gen, BATCH, T, d))
    lam = torch.diagonal(A, dim1=-2, dim2=-1)
    assert torch.equal(A, torch.diag_embed(lam))
    if alpha <= 0:
        assert bool((lam == 1).all())
    else:
        assert bool(((lam > 0) & (lam < 1)).all())


# ---------------------------------------------------------------------------------------------------------------------
# Normalized attention (paper eq. 21)
# ---------------------------------------------------------------------------------------------------------------------

NA = {"d": 4, "H": 2, "K": 3}  # V = d // H = 2


def na_setup(seed):
    d, H, K = NA["d"], NA["H"], NA["K"]
    V = d // H
    gen = torch.Generator().manual_seed(seed)
    params = qkv_params(gen, d, H, K, V)
    params.update({"b_Q": randn(gen, H, K, scale=0.3), "b_K": randn(gen, H, K, scale=0.3),
                   "W_n": randn(gen, H, d), "b_n": randn(gen, H, scale=0.3)})
    u = randn(gen, BATCH, T, d)
    return params, u


def test_normalized_attention_matches_dsf_mqar_mhna():
    sym = load("normalized_attention.dsf")
    d, H = NA["d"], NA["H"]
    V = d // H
    params, u = na_setup(91)

    y, st = run_dsfc(sym, NA, params, u)

    # MHNA: qk = Wqk(x) -> "(two h d)"; v = Wv(x) -> "(h d)"; n = Wn(x); v bias left out (as the spec)
    q = torch.einsum("hkm,btm->bthk", params["W_Q"], u) + params["b_Q"]
    k = torch.einsum("hkm,btm->bthk", params["W_K"], u) + params["b_K"]
    v = torch.einsum("hvm,btm->bthv", params["W_V"], u)
    n = u @ params["W_n"].T + params["b_n"]
    o = self_norm_attention(q, k, v, n)
    torch.testing.assert_close(y, o.reshape(BATCH, T, H * V), **TOL)
    # state: h_T = exp(-s_T) sum_j k_j v_j^T, and the carried prev is s_T
    S_ref = torch.exp(-n[:, -1])[:, :, None, None] * torch.einsum("bthk,bthv->bhkv", k, v)
    torch.testing.assert_close(st["h"], S_ref.reshape(BATCH, -1), **TOL)
    torch.testing.assert_close(st["s_prev"], n[:, -1], **TOL)


def test_normalized_attention_split_sequence_and_eigenvalues():
    sym = load("normalized_attention.dsf")
    d, H, K = NA["d"], NA["H"], NA["K"]
    V = d // H
    params, u = na_setup(92)
    y, st = run_dsfc(sym, NA, params, u)
    y1, st1 = run_dsfc(sym, NA, params, u[:, :4])
    y2, st2 = run_dsfc(sym, NA, params, u[:, 4:], st1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, **TOL)
    torch.testing.assert_close(st2["h"], st["h"], **TOL)
    # lambda_t = exp(s_(t-1) - s_t) per head (step 0 of a fresh sequence: s_(-1) := s_0)
    A, _, _, _ = dsfc_matrices(sym, NA, params, u)
    s = u @ params["W_n"].T + params["b_n"]
    s_prev = torch.cat([s[:, :1], s[:, :-1]], 1)
    lam = torch.exp(s_prev - s).repeat_interleave(K * V, dim=-1)
    torch.testing.assert_close(A, torch.diag_embed(lam), rtol=1e-14, atol=0)
    assert bool((lam[:, 1:] > 1).any())  # not bounded by 1


@pytest.mark.parametrize("name,eta_of", [
    ("normalized_attention_sigmoid", torch.sigmoid),
    ("normalized_attention_exprelu", lambda s: torch.exp(torch.relu(s))),
])
def test_normalized_attention_variants_match_the_quadratic_formula(name, eta_of):
    """The rebuttal normalisers (maths doc 5.3): y_t = (1 / eta(s_t)) sum_(j <= t) (q_t . k_j) v_j per head, written
    here as masked quadratic attention, with no recurrence."""
    sym = load(f"{name}.dsf")
    d, H = NA["d"], NA["H"]
    V = d // H
    params, u = na_setup(93)
    y, st = run_dsfc(sym, NA, params, u)
    q = torch.einsum("hkm,btm->bthk", params["W_Q"], u) + params["b_Q"]
    k = torch.einsum("hkm,btm->bthk", params["W_K"], u) + params["b_K"]
    v = torch.einsum("hvm,btm->bthv", params["W_V"], u)
    eta = eta_of(u @ params["W_n"].T + params["b_n"])  # [B, T, H]
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril()
    o = torch.einsum("bhts,bshv->bthv", scores, v) / eta[..., None]
    torch.testing.assert_close(y, o.reshape(BATCH, T, H * V), **TOL)
    S_ref = torch.einsum("bthk,bthv->bhkv", k, v) / eta[:, -1, :, None, None]
    torch.testing.assert_close(st["h"], S_ref.reshape(BATCH, -1), **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# LRU and S4D: complex modes as 2x2 blocks
# ---------------------------------------------------------------------------------------------------------------------


def block_moduli(A, n_blocks):
    """|lambda| of each 2x2 diagonal block of A [..., 2n, 2n] (rows/cols (j, s) -> 2 j + s): sqrt(det)."""
    idx = torch.arange(n_blocks)
    a, b = A[..., 2 * idx, 2 * idx], A[..., 2 * idx, 2 * idx + 1]
    c, e = A[..., 2 * idx + 1, 2 * idx], A[..., 2 * idx + 1, 2 * idx + 1]
    return torch.sqrt(a * e - b * c)


def lru_setup(seed, d=3, Nc=4):
    gen = torch.Generator().manual_seed(seed)
    params = {
        "nu_log": randn(gen, Nc, scale=0.5, shift=-1.0),
        "theta_log": randn(gen, Nc, scale=0.5),
        "gamma_log": randn(gen, Nc, scale=0.3, shift=-0.5),
        "B_re": randn(gen, Nc, d, scale=(2 * d) ** -0.5),
        "B_im": randn(gen, Nc, d, scale=(2 * d) ** -0.5),
        "C_re": randn(gen, d, Nc, scale=Nc**-0.5),
        "C_im": randn(gen, d, Nc, scale=Nc**-0.5),
        "D": randn(gen, d),
    }
    return params, randn(gen, BATCH, T, d), {"d": d, "Nc": Nc}


def test_lru_block_moduli_are_exp_minus_exp_nu():
    sym = load("lru.dsf")
    params, u, dims = lru_setup(101)
    A, _, _, _ = dsfc_matrices(sym, dims, params, u)
    assert bool((A == A[:, :1]).all())  # time-invariant
    Nc = dims["Nc"]
    blocks = A[0, 0].reshape(Nc, 2, Nc, 2)
    for j1 in range(Nc):
        for j2 in range(Nc):
            if j1 != j2:
                assert bool((blocks[j1, :, j2, :] == 0).all())
    r = block_moduli(A[0, 0], Nc)
    torch.testing.assert_close(r, torch.exp(-torch.exp(params["nu_log"])), rtol=1e-14, atol=0)
    assert bool((r < 1).all())
    # and the phase: eigenvalues r e^(+-i theta)
    ev = torch.linalg.eigvals(A[0, 0])
    want = torch.exp(-torch.exp(params["nu_log"]) + 1j * torch.exp(params["theta_log"]))
    got = sorted(ev.tolist(), key=lambda z: (round(abs(z), 9), z.imag))
    ref = sorted(torch.cat([want, want.conj()]).tolist(), key=lambda z: (round(abs(z), 9), z.imag))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_h0", [False, True])
def test_lru_matches_minimal_lru_complex_recurrence(with_h0):
    sym = load("lru.dsf")
    params, u, dims = lru_setup(102)
    Nc = dims["Nc"]
    h0c = torch.complex(randn(torch.Generator().manual_seed(103), BATCH, Nc),
                        randn(torch.Generator().manual_seed(104), BATCH, Nc)) if with_h0 else None
    h0 = None if h0c is None else torch.stack([h0c.real, h0c.imag], -1).reshape(BATCH, -1)

    y, h = run_dsfc(sym, dims, params, u, h0)

    # minimal-LRU: lambda = exp(-exp(nu_log) + i exp(theta_log)); B_norm = (B_re + i B_im) * exp(gamma_log)[:, None]
    lam = torch.exp(-torch.exp(params["nu_log"]) + 1j * torch.exp(params["theta_log"]))
    B_norm = torch.complex(params["B_re"], params["B_im"]) * torch.exp(params["gamma_log"])[:, None]
    C = torch.complex(params["C_re"], params["C_im"])
    hc = torch.zeros(BATCH, Nc, dtype=torch.complex128) if h0c is None else h0c
    ys = []
    for t in range(T):
        hc = lam * hc + u[:, t].to(torch.complex128) @ B_norm.T
        ys.append((hc @ C.T).real + params["D"] * u[:, t])
    torch.testing.assert_close(y, torch.stack(ys, 1), **TOL)
    torch.testing.assert_close(h, torch.stack([hc.real, hc.imag], -1).reshape(BATCH, -1), **TOL)


def s4d_setup(seed, d=3, Nh=4):
    gen = torch.Generator().manual_seed(seed)
    params = {
        "log_dt": torch.rand(d, generator=gen, dtype=F64) * (math.log(0.5) - math.log(0.01)) + math.log(0.01),
        "log_A_real": randn(gen, d, Nh, scale=0.5, shift=math.log(0.5)),
        "A_imag": math.pi * torch.arange(Nh, dtype=F64).expand(d, Nh) + randn(gen, d, Nh, scale=0.3),
        "C_re": randn(gen, d, Nh, scale=0.5**0.5),
        "C_im": randn(gen, d, Nh, scale=0.5**0.5),
        "D": randn(gen, d),
    }
    return params, randn(gen, BATCH, T, d), {"d": d, "Nh": Nh}


def test_s4d_block_moduli_are_exp_dt_re_A():
    sym = load("s4d.dsf")
    params, u, dims = s4d_setup(111)
    d, Nh = dims["d"], dims["Nh"]
    A, _, _, _ = dsfc_matrices(sym, dims, params, u)
    assert bool((A == A[:, :1]).all())  # time-invariant
    r = block_moduli(A[0, 0], d * Nh).reshape(d, Nh)
    dt = torch.exp(params["log_dt"])
    re_A = -torch.exp(params["log_A_real"])
    torch.testing.assert_close(r, torch.exp(dt[:, None] * re_A), rtol=1e-14, atol=0)
    assert bool((r < 1).all())


def test_s4d_matches_s4d_kernel_fft_convolution():
    sym = load("s4d.dsf")
    params, u, dims = s4d_setup(112)

    y, _ = run_dsfc(sym, dims, params, u)

    # S4DKernel.forward + S4D.forward (before the GELU / output_linear), transposed layout (B, H, L)
    L = T
    dt = torch.exp(params["log_dt"])
    C = torch.complex(params["C_re"], params["C_im"])
    A = -torch.exp(params["log_A_real"]) + 1j * params["A_imag"]
    dtA = A * dt.unsqueeze(-1)
    K = dtA.unsqueeze(-1) * torch.arange(L)
    C = C * (torch.exp(dtA) - 1.0) / A
    K = 2 * torch.einsum("hn, hnl -> hl", C, torch.exp(K)).real
    uu = u.transpose(1, 2)
    k_f = torch.fft.rfft(K, n=2 * L)
    u_f = torch.fft.rfft(uu, n=2 * L)
    y_ref = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L] + uu * params["D"].unsqueeze(-1)
    torch.testing.assert_close(y, y_ref.transpose(1, 2), **TOL)
