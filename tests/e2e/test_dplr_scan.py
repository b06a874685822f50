"""The chunked diagonal-plus-rank-1 scan (family CHUNKED_DPLR): A = diag(d) + x y^T per group on the key axes with a
per-key decay d (Kimi Delta Attention in both orders, RWKV-7), ``dsfc.runtime.scans.chunked_dplr_scan``.

The runtime function is checked against a plain float64 loop written here from the recurrence
``S_t = (diag(d_t) + x_t y_t^T) S_(t-1) + k_t v_t^T`` (not from the chunked algorithm); the generated modules against
dsfc's float64 reference recurrence (``check_all_paths``: torch at T = 0, 1, 7, batch 1 and 3, step, initial state,
every gradient; chunks of 3 steps; the Triton path, chunked_dplr_triton: tests/triton/test_triton_dplr.py).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, build, check_all_paths, check_backend,  # noqa: E402
                         check_small_chunks, rel_err)
from dsfc.analysis.structure import Family  # noqa: E402
from dsfc.analysis.structure import analyse_structure_of  # noqa: E402
from dsfc.cli import main  # noqa: E402
from dsfc.ir.lower import lower_to_sympy  # noqa: E402
from dsfc.lang.check import check_spec  # noqa: E402
from dsfc.lang.parse import parse_spec  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from dsfc.runtime.scans import chunked_dplr_scan  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

_HEAD = """dim d = 5
dim H = 2
dim K = 3
dim V = 3
input u[d]
state S[h: H, a: K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param W_a[H, K, d] ~ normal(0, 0.5)
param w_b[H, d] ~ normal(0, 0.5)
let kr[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let k[h: H, a: K] = kr[h, a] / sqrt(sum(a2, kr[h, a2] ^ 2))
let be[h: H] = sigmoid(sum(m, w_b[h, m] * u[m]))
B[(h, a, b), m] = be[h] * k[h, a] * W_V[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * sum(m, W_Q[h, a, m] * u[m])
"""

# Kimi Delta Attention, the paper's order: S = (I - be k k^T) diag(al) S + be k v^T, A = diag(al) - be k (al k)^T
KDA = """model KDA "KDA: (I - be k k^T) diag(al)"
""" + _HEAD + """let al[h: H, a: K] = exp(-softplus(sum(m, W_a[h, a, m] * u[m])))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - be[h] * k[h, a] * k[h, a2]) * al[h, a2]
"""

# the other order: S = diag(al) (I - be k k^T) S + be k v^T, A = diag(al) - be (al k) k^T
KDA_OTHER = """model KDAOther "KDA, decay after the delta step: diag(al) (I - be k k^T)"
""" + _HEAD + """let al[h: H, a: K] = exp(-softplus(sum(m, W_a[h, a, m] * u[m])))
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * al[h, a] * (delta(a, a2) - be[h] * k[h, a] * k[h, a2])
"""

# RWKV-7 (Peng et al. 2025): diag(w) + a b^T with a = -kappa_hat, b = kappa_hat * gate, a value-first state and a
# key kr in B u that is not the kappa of the transition
RWKV7 = """model RWKV7 "RWKV-7: S = S (diag(w) - kap (ia kap)^T) + v k^T, value-first state"
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, b: V, a: K]
output y[h: H, b: V]
param W_r[H, K, d] ~ normal(0, 0.5)
param W_k[H, K, d] ~ normal(0, 0.5)
param W_v[H, V, d] ~ normal(0, 0.5)
param W_w[H, K, d] ~ normal(0, 0.5)
param W_a[H, K, d] ~ normal(0, 0.5)
let kr[h: H, a: K] = sum(m, W_k[h, a, m] * u[m])
let kap[h: H, a: K] = kr[h, a] / sqrt(sum(c, kr[h, c] ^ 2) + 1e-6)
let w[h: H, a: K] = exp(-0.6065 * sigmoid(sum(m, W_w[h, a, m] * u[m])))
let ia[h: H, a: K] = sigmoid(sum(m, W_a[h, a, m] * u[m]))
A[(h, b, a), (h2, b2, a2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) * w[h, a] - kap[h, a] * ia[h, a2] * kap[h, a2])
B[(h, b, a), m] = W_v[h, b, m] * kr[h, a]
C[(o, e), (h, b, a)] = delta(o, h) * delta(e, b) * sum(m, W_r[h, a, m] * u[m])
"""

# per-key decays exactly 1 (key 0), exactly 0 (key 1) and a relu gate that is often exactly 0 (key 2)
ZERO_ONE = """model ZeroOneDPLR "KDA with per-key decays 1, 0 and relu(tanh(.))"
""" + _HEAD + """let g[h: H] = relu(tanh(sum(m, W_a[h, 0, m] * u[m])))
let al[h: H, a: K] = delta(a, 0) + delta(a, 2) * g[h]
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(b, b2) * (delta(a, a2) - be[h] * k[h, a] * k[h, a2]) * al[h, a2]
"""

SPECS = {"kda": KDA, "kda_other": KDA_OTHER, "rwkv7": RWKV7, "zero_one": ZERO_ONE}


@functools.lru_cache(maxsize=None)
def _compiled(name: str):
    """One compile per spec and worker (the parametrised tests share it; the compile is most of their time)."""
    return compile_text(SPECS[name], f"{name}.dsf")


def _built(name: str):
    result = _compiled(name)
    return build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims})


@pytest.mark.parametrize("name", ["kda", "rwkv7"])
def test_spec_runs_the_dplr_scan_on_every_path(name):
    check_all_paths(_built(name), Family.CHUNKED_DPLR)


@pytest.mark.parametrize("name", ["kda_other", "zero_one"])
def test_spec_runs_the_dplr_scan_on_the_torch_path(name):
    """As above without the interpreted Triton run (the same DPLR kernels as the two specs above; time)."""
    built = _built(name)
    assert built.result.structure.family == Family.CHUNKED_DPLR, built.result.structure.family_reason
    check_backend(built, "torch", ((1, 1), (3, 7)))
    check_small_chunks(built)


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("name", ["kda", "rwkv7"])
def test_fp32_module_matches_float64_reference(name, scale):
    built = _built(name)
    gen = torch.Generator().manual_seed(1)
    u = scale * torch.randn(2, 70, built.d_in(), generator=gen, dtype=F64)
    y_ref, h_ref = built.reference(u)
    model = built.model.float()
    model.backend = "torch"
    with torch.no_grad():
        y, hT = model(u.float(), output_final_state=True)
    assert torch.isfinite(y).all() and rel_err(y.double(), y_ref) < 1e-4
    assert rel_err(hT.double().reshape(h_ref.shape), h_ref) < 1e-4


def test_analyze_reports_the_dplr_family(tmp_path, capsys):
    path = tmp_path / "kda.dsf"
    path.write_text(KDA)
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"family           {Family.CHUNKED_DPLR.value}" in out
    assert "diag(d) + x y^T on key axes a per group (d per key" in out


def test_a_scalar_delta_rule_keeps_its_own_scan():
    """The per-key scan subsumes the scalar delta rule, which keeps its tuned scan (and Triton kernels)."""
    gdn = KDA.replace("* al[h, a2]\n", "* exp(-softplus(sum(m, W_a[h, 0, m] * u[m])))\n")
    assert analyse_structure_of(lower_to_sympy(check_spec(parse_spec(gdn, "gdn.dsf")))).family == Family.CHUNKED_DELTA


# ---- the runtime function against a plain float64 loop --------------------------------------------------------------


def _loop(q, k, v, x, y, g, h0, readout="post"):
    """S_t = (diag(exp(g_t)) + x_t y_t^T) S_(t-1) + k_t v_t^T, o_t = S_t^T q_t (post) or S_(t-1)^T q_t (pre)."""
    S, outs = h0, []
    for t in range(q.shape[1]):
        prev = S
        read = torch.einsum("bhk,bhkv->bhv", y[:, t], S)
        write = x[:, t][..., None] * read[:, :, None] + k[:, t][..., None] * v[:, t][:, :, None]
        S = torch.exp(g[:, t])[..., None] * S + write
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S if readout == "post" else prev))
    o = torch.stack(outs, 1) if outs else q.new_zeros(q.shape[0], 0, q.shape[2], v.shape[-1])
    return o, S


def _kda_streams(B, T, H, K, V, scale, lo, gen, dtype=F64):
    """KDA's streams (x = -be k, y = al k, k L2-normalised) with log-decays uniform in [lo, 0]."""
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=dtype)
    k = torch.nn.functional.normalize(scale * randn(B, T, H, K), dim=-1)
    be = torch.sigmoid(scale * randn(B, T, H, 1))
    g = lo * torch.rand(B, T, H, K, generator=gen, dtype=dtype)
    return scale * randn(B, T, H, K), k, scale * randn(B, T, H, V), -be * k, torch.exp(g) * k, g, randn(B, H, K, V)


@pytest.mark.parametrize("readout", ["post", "pre"])
@pytest.mark.parametrize("T,chunk", [(0, 4), (1, 4), (7, 3), (16, 4), (37, 8)])
def test_runtime_matches_loop_with_gradients(T, chunk, readout):
    gen = torch.Generator().manual_seed(T)
    args = [t.requires_grad_() for t in _kda_streams(2, T, 3, 4, 5, 1.0, -3.0, gen)]
    o, S = chunked_dplr_scan(*args, chunk=chunk, output_final_state=True, readout=readout)
    o_ref, S_ref = _loop(*args, readout=readout)
    assert rel_err(o, o_ref) < 1e-10 if T else o.shape == o_ref.shape
    assert rel_err(S, S_ref) < 1e-10
    w_o, w_S = torch.randn(o.shape, generator=gen, dtype=F64), torch.randn(S.shape, generator=gen, dtype=F64)
    got = torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), args, allow_unused=True)
    want = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_S).sum(), args, allow_unused=True)
    for a, e in zip(got, want):
        if e is None:
            continue
        assert a is not None and torch.isfinite(a).all() and (a - e).abs().max() <= 1e-9 * max(1.0, e.abs().max())


@pytest.mark.parametrize("scale,lo", [(1.0, -20.0), (10.0, -5.0), (30.0, -5.0), (1.0, -1e-3)])
def test_fp32_long_sequence_strong_decay(scale, lo):
    """T = 2048 with log-decays down to -20 per step, inputs of scale 10 and 30: finite, and fp32 matches float64."""
    gen = torch.Generator().manual_seed(0)
    args = _kda_streams(1, 2048, 2, 4, 3, scale, lo, gen)
    o_ref, S_ref = _loop(*args)
    o, S = chunked_dplr_scan(*(t.float() for t in args), output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_err(o.double(), o_ref) < 1e-4 and rel_err(S.double(), S_ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(dtype):
    gen = torch.Generator().manual_seed(2)
    args = [t.to(dtype) for t in _kda_streams(2, 50, 2, 4, 3, 1.0, -2.0, gen)]
    o_ref, S_ref = _loop(*(t.double() for t in args))
    o, S = chunked_dplr_scan(*args, chunk=8, output_final_state=True)
    assert o.dtype == dtype and S.dtype == dtype
    assert rel_err(o.double(), o_ref) < 1e-2 and rel_err(S.double(), S_ref) < 1e-2


def test_decays_exactly_zero_and_one():
    """log d = -inf (a zero decay) and 0 (no decay) per key: forward and gradients finite and right."""
    gen = torch.Generator().manual_seed(3)
    q, k, v, x, y, g, h0 = _kda_streams(1, 20, 2, 4, 3, 1.0, -1.0, gen)
    g = g.clone()
    g[..., 0] = 0.0
    g[:, ::3, :, 1] = float("-inf")
    y = torch.exp(g) * k
    args = [t.requires_grad_() for t in (q, k, v, x, y, h0)]
    o, S = chunked_dplr_scan(*args[:5], g, args[5], chunk=8, output_final_state=True)
    o_ref, S_ref = _loop(*args[:5], g, args[5])
    assert rel_err(o, o_ref) < 1e-10 and rel_err(S, S_ref) < 1e-10
    for a, e in zip(torch.autograd.grad(o.sum(), args), torch.autograd.grad(o_ref.sum(), args)):
        assert torch.isfinite(a).all() and (a - e).abs().max() <= 1e-9 * max(1.0, e.abs().max())


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 40), H=st.integers(1, 2), K=st.integers(1, 5), V=st.integers(1, 4),
       chunk=st.integers(1, 12), lo=st.floats(-8.0, 0.0), shared=st.booleans(), pre=st.booleans(),
       seed=st.integers(0, 2**16))
def test_random_dplr_matches_loop(B, T, H, K, V, chunk, lo, shared, pre, seed):
    """Random diag(d) + x y^T with unrelated x, y, k (|x| |y| kept <= 1 so the loop stays bounded)."""
    gen = torch.Generator().manual_seed(seed)

    def unit(*s):
        return torch.nn.functional.normalize(torch.randn(*s, generator=gen, dtype=F64), dim=-1)
    g = lo * torch.rand(B, T, H, *(() if shared else (K,)), generator=gen, dtype=F64)
    q, k, x, y = (unit(B, T, H, K) for _ in range(4))
    v, h0 = torch.randn(B, T, H, V, generator=gen, dtype=F64), torch.randn(B, H, K, V, generator=gen, dtype=F64)
    readout = "pre" if pre else "post"
    o, S = chunked_dplr_scan(q, k, v, x, y, g, h0, chunk=chunk, output_final_state=True, readout=readout)
    o_ref, S_ref = _loop(q, k, v, x, y, g if not shared else g[..., None].expand(B, T, H, K), h0, readout)
    assert rel_err(o, o_ref) < 1e-9 and rel_err(S, S_ref) < 1e-9


def test_bad_shapes_are_named():
    q = torch.zeros(1, 3, 2, 4)
    with pytest.raises(ValueError, match="q, k, x, y"):
        chunked_dplr_scan(q, q, torch.zeros(1, 3, 2, 5), q[..., :3], q, None)
    with pytest.raises(ValueError, match="log_decay must be"):
        chunked_dplr_scan(q, q, torch.zeros(1, 3, 2, 5), q, q, torch.zeros(1, 3, 4))
