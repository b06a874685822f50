"""The spec's streams that the chunked outer-product kernels read as they are (dsfc/runtime/triton_outer.py's
``heads_per_group``, ``v_scale``, ``skip`` / ``skip_weight``), under the Triton interpreter on CPU (or compiled on a
GPU with DSFC_TEST_DEVICE=cuda): the kernel against a float64 loop written from the equations, and the generated
modules whose streams take that form (SSD at G = 1 and G = 2, a variant with only k grouped and no skip) against
their float64 reference recurrence (backend="reference").

The equations, per batch row b, head h (H = v's heads), step t, with q, k [B, T, H / R, K] read at group h // R::

    S_t[h] = diag(exp(g_t[h])) S_(t-1)[h] + k_t[h // R] (v_scale_t[h] v_t[h])^T     (g per head or per key)
    y_t[h] = S_t[h]^T q_t[h // R] + skip_weight[h] skip_t[h]          (readout "pre": S_(t-1) instead of S_t)

Tolerances as tests/triton/test_triton_outer.py's: fp64 inputs 1e-12 of the largest entry (the same sums in another
order), fp32 2e-5, fp16 inputs 2e-2 (the matmuls take fp16 operands, as on a GPU; the reference loop runs on the
fp16-rounded inputs in float64). A wrong group, a missing scale or skip term is an O(1) error.
"""

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import copy  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

import dsfc.runtime.triton_outer as triton_outer  # noqa: E402
from dsfc.check import load_module  # noqa: E402
from dsfc.pipeline import compile_spec, compile_text  # noqa: E402
from dsfc.runtime.triton_outer import chunked_outer_triton  # noqa: E402
from tests.triton.test_triton_outer import forward_and_grads, rel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-2}


def _loop(q, k, v, g, h0, vs, skip, skw, readout="post"):
    """The equations above as a float64 loop over t and h (autograd gives its gradients); g None: no decay."""
    B, T, H, V = v.shape
    rq, rk = H // q.shape[2], H // k.shape[2]
    S = [h0[:, h].double() for h in range(H)]
    ys = []
    for t in range(T):
        row = []
        for h in range(H):
            qh, kh = q[:, t, h // rq].double(), k[:, t, h // rk].double()
            vh = v[:, t, h].double() * (1.0 if vs is None else vs[:, t, h, None].double())
            before = torch.einsum("bkv,bk->bv", S[h], qh)
            decay = 1.0 if g is None else torch.exp(g[:, t, h].double())[..., None] if g.dim() == 4 else \
                torch.exp(g[:, t, h].double())[:, None, None]  # per key: [B, K, 1]; per head [B, 1, 1]
            S[h] = decay * S[h] + kh[:, :, None] * vh[:, None, :]
            y = before if readout == "pre" else torch.einsum("bkv,bk->bv", S[h], qh)
            row.append(y if skip is None else y + skw[h].double() * skip[:, t, h].double())
        ys.append(torch.stack(row, 1))
    return torch.stack(ys, 1), torch.stack(S, 1)


def _case(B, T, G, R, K, V, decay, dtype, seed, q_grouped=True, k_grouped=True, v_scale=True, skip=True):
    """The inputs on CPU in ``dtype`` (g, the scale and the skip weights fp32 or fp64): q, k, v, g, h0, vs, skip,
    skw, with None for what the case leaves out."""
    gen = torch.Generator().manual_seed(seed)
    H = G * R
    side = torch.float64 if dtype == torch.float64 else torch.float32
    rnd = lambda *s, dt=dtype: torch.randn(*s, generator=gen).to(dt)  # noqa: E731
    q = rnd(B, T, G if q_grouped else H, K)
    k = rnd(B, T, G if k_grouped else H, K)
    v = rnd(B, T, H, V)
    g = {"none": None, "scalar": -torch.rand(B, T, H, generator=gen).to(side),
         "key": -torch.rand(B, T, H, K, generator=gen).to(side)}[decay]
    h0 = rnd(B, H, K, V, dt=side)
    vs = (0.5 + torch.rand(B, T, H, generator=gen)).to(side) if v_scale else None
    sk, skw = (rnd(B, T, H, V), rnd(H, dt=side)) if skip else (None, None)
    return q, k, v, g, h0, vs, sk, skw


def _check(case, R, schedule="fused", readout="post", grads=True):
    q, k, v, g, h0, vs, sk, skw = case
    dtype = v.dtype
    leaves = [x if x is None else x.to(DEVICE).requires_grad_(grads) for x in case]
    lq, lk, lv, lg, lh0, lvs, lsk, lskw = leaves
    y, sT = chunked_outer_triton(lq, lk, lv, lg, lh0, output_final_state=True, readout=readout, schedule=schedule,
                                 heads_per_group=R, v_scale=lvs, skip=lsk, skip_weight=lskw)
    ref = [None if x is None else x.double().requires_grad_() for x in case]
    y64, sT64 = _loop(*ref, readout=readout)
    tol = TOL[dtype]
    assert y.shape == y64.shape and sT.shape == sT64.shape
    assert rel(y, y64) <= tol and rel(sT, sT64) <= tol
    if not grads:
        return
    gen = torch.Generator().manual_seed(3)
    wy, ws = torch.randn(y64.shape, generator=gen, dtype=torch.float64), torch.randn(sT64.shape, generator=gen,
                                                                                      dtype=torch.float64)
    used = [i for i, x in enumerate(case) if x is not None]
    got = torch.autograd.grad((y * wy.to(y)).sum() + (sT * ws.to(sT)).sum(), [leaves[i] for i in used])
    want = torch.autograd.grad((y64 * wy).sum() + (sT64 * ws).sum(), [ref[i] for i in used])
    names = ["q", "k", "v", "g", "h0", "v_scale", "skip", "skip_weight"]
    for i, a, w in zip(used, got, want):
        assert a.shape == case[i].shape and a.dtype == case[i].dtype, names[i]
        assert rel(a, w) <= tol, (names[i], rel(a, w))


# -- the kernels -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["fused", "split"])
@pytest.mark.parametrize("decay", ["scalar", "none"])
def test_grouped_scaled_skip_against_the_loop(decay, schedule):
    """q and k shared by R = 2 heads, v scaled, the skip term: forward, final state and every gradient (q, k per
    group, the scale, the skip tensor and weights), T = 19 (a chunk of 16 and a remainder), batch 2, h0."""
    _check(_case(2, 19, 2, 2, 5, 6, decay, torch.float64, seed=1), 2, schedule)


def test_k_grouped_only_no_skip_fp32():
    """Only k grouped (q per head), a v scale, no skip, fp32 inputs: each argument works alone."""
    _check(_case(2, 13, 3, 2, 4, 5, "scalar", torch.float32, seed=2, q_grouped=False, skip=False), 2)


def test_pre_readout_and_per_key_decay_take_the_torch_streams():
    """readout="pre" (q per head for y_0 = h0^T q_0, the skip term added after the shift) and the per-key decay (the
    score kernels read q, k, v per head: built in torch) give the equations' results too."""
    _check(_case(2, 19, 2, 2, 5, 6, "scalar", torch.float64, seed=4), 2, readout="pre")
    _check(_case(1, 17, 1, 2, 4, 3, "key", torch.float64, seed=5), 2)


def test_one_step_chunked_and_decode():
    """T = 1 with gradients (the chunked kernels, one masked chunk) and without (the decode step, the streams in
    torch)."""
    _check(_case(2, 1, 2, 2, 5, 6, "scalar", torch.float64, seed=6), 2)
    with torch.no_grad():
        _check(_case(2, 1, 2, 2, 5, 6, "scalar", torch.float64, seed=7), 2, grads=False)


def test_fp16_inputs():
    """fp16 q, k, v and skip (fp16 tensor-core operands, as on a GPU), fp32 scale, decay and weights: the results in
    fp32, the gradients in the inputs' dtypes."""
    _check(_case(2, 19, 2, 2, 8, 8, "scalar", torch.float16, seed=8), 2)


def test_defaults_launch_as_before(monkeypatch):
    """Without the new arguments the op gets the 7-entry configuration and no extra tensors (the launch of before,
    bit for bit); with them, the 11 entries carry the groups and the flags."""
    seen = []
    real = triton_outer._outer_scan_fwd

    def spy(*args, **kwargs):
        seen.append((list(args[5]), sorted(kwargs)))
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_outer, "_outer_scan_fwd", spy)
    q, k, v, g, h0, vs, sk, skw = (x if x is None else x.to(DEVICE)
                                   for x in _case(1, 5, 2, 2, 4, 4, "scalar", torch.float32, seed=9))
    with torch.no_grad():
        plain = chunked_outer_triton(q.repeat_interleave(2, 2), k.repeat_interleave(2, 2), v, g, h0)
        fused = chunked_outer_triton(q, k, v, g, h0, heads_per_group=2, v_scale=torch.ones_like(vs),
                                     skip=sk, skip_weight=torch.zeros_like(skw))
    assert len(seen[0][0]) == 7 and seen[0][1] == []
    assert seen[1][0][7:] == [2, 2, 1, 1] and seen[1][1] == ["skip", "skw", "vs"]
    assert torch.equal(plain, fused)  # scale 1, weight 0: the same arithmetic


def test_bad_groups_and_shapes_are_clear_errors():
    q, k, v, g, h0, vs, sk, skw = (x if x is None else x.to(DEVICE)
                                   for x in _case(1, 3, 2, 2, 4, 4, "scalar", torch.float32, seed=10))
    with pytest.raises(ValueError, match="heads_per_group=3"):
        chunked_outer_triton(q, k, v, g, heads_per_group=3)
    with pytest.raises(ValueError, match="v_scale must be"):
        chunked_outer_triton(q, k, v, g, heads_per_group=2, v_scale=vs[:, :, :1])
    with pytest.raises(ValueError, match="come together"):
        chunked_outer_triton(q, k, v, g, heads_per_group=2, skip=sk)
    with pytest.raises(ValueError, match="skip must be"):
        chunked_outer_triton(q, k, v, g, heads_per_group=2, skip=sk, skip_weight=skw[:1])


def test_custom_ops_with_the_new_inputs_pass_opcheck():
    """torch.library.opcheck of the forward op with v scale and skip (schema, fake, autograd registration) and of the
    backward op (schema, fake)."""
    q, k, v, g, s0, vs, sk, skw = (x.to(DEVICE).requires_grad_() for x in _case(1, 5, 1, 2, 3, 4, "scalar",
                                                                                 torch.float32, seed=11))
    cfg = [1, 16, 16, 16, 0, 4, 0, 2, 2, 1, 1]
    extra = dict(vs=vs, skip=sk, skw=skw)
    torch.library.opcheck(triton_outer._outer_fwd_op, (q, k, v, g, s0, cfg, torch.float32), extra,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    y, sT, p = triton_outer._outer_fwd_op(q, k, v, g, s0, cfg, torch.float32, **extra)
    dy, dsT = torch.randn_like(y), torch.randn_like(sT)
    args = tuple(x.detach() for x in (q, k, v, g, s0, sT, p, dy, dsT)) + (cfg, torch.float32)
    torch.library.opcheck(triton_outer._outer_bwd_op, args, {n: x.detach() for n, x in extra.items()},
                          test_utils=("test_schema", "test_faketensor"))


def test_under_torch_compile(monkeypatch):
    """torch.compile(fullgraph=True, aot_eager) of a call with every new input: one forward op in the graph (no graph
    break), the forward and gradients as the loop's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-outer")
    torch._dynamo.reset()
    graphs = []

    def aot_eager(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    case = _case(2, 19, 2, 2, 5, 6, "scalar", torch.float64, seed=12)
    leaves = [x.to(DEVICE).requires_grad_() for x in case]
    fn = torch.compile(lambda q, k, v, g, h0, vs, sk, skw: chunked_outer_triton(
        q, k, v, g, h0, output_final_state=True, heads_per_group=2, v_scale=vs, skip=sk, skip_weight=skw,
        schedule="fused"), backend=aot_eager, fullgraph=True)
    try:
        y, sT = fn(*leaves)
        got = torch.autograd.grad(y.sum() + sT.sum(), leaves)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1 and graphs[0].count("torch.ops.dsfc.outer_scan_fwd") == 1
    ref = [x.double().requires_grad_() for x in case]
    y64, sT64 = _loop(*ref)
    want = torch.autograd.grad(y64.sum() + sT64.sum(), ref)
    assert rel(y, y64) <= TOL[torch.float64] and rel(sT, sT64) <= TOL[torch.float64]
    for a, w in zip(got, want):
        assert rel(a, w) <= TOL[torch.float64]


# -- the generated modules ------------------------------------------------------------------------------------------

SSD_DIMS = {"H": 4, "P": 6, "n": 5}
# SSD with C's group read squared (q no longer a plain grouped read) and a time-varying D term (D dt: not a per-head
# skip): only k grouped and v's factor are fused, the rest keeps the torch lines
VARIANT = (ROOT / "specs" / "ssd.dsf").read_text().replace(
    "C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[h // R, j]",
    "C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[h // R, j] * Cm[h // R, j]").replace(
    "D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h]",
    "D[(o, e), (h, p)] = delta(o, h) * delta(e, p) * D[h] * dt[h]")


def _models(result, name, dims):
    module = load_module(result, name=name)
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(**dims)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model


def _against_reference(result, name, dims, T):
    model = _models(result, name, dims)
    model64 = copy.deepcopy(model).double()  # the float64 reference, on CPU
    model = model.to(DEVICE)
    gen = torch.Generator().manual_seed(T)
    u = torch.randn(2, T, model._in_features(), generator=gen)
    h0 = torch.randn(2, dims["H"], dims["P"], dims["n"], generator=gen)
    y, hT, grads = forward_and_grads(model, "triton", u.to(DEVICE), h0.to(DEVICE))
    y64, hT64, grads64 = forward_and_grads(model64, "reference", u, h0, torch.float64)
    assert rel(y, y64) <= TOL[torch.float32] and rel(hT, hT64) <= TOL[torch.float32]
    assert grads.keys() == grads64.keys() and len(grads) > 3
    for n in grads:
        assert rel(grads[n], grads64[n]) <= TOL[torch.float32], (n, rel(grads[n], grads64[n]))


@pytest.mark.parametrize("G, T", [(2, 13), (2, 1), (1, 13)])
def test_ssd_fuses_groups_scale_and_skip(G, T):
    """The generated SSD hands C, B per group, dt as v's factor and D u as the skip term to the kernels (no
    index_select, no dt * u, no D term in torch), and matches its float64 reference at G = 2 (R = 2) and G = 1
    (R = 4), forward and gradients (u, h0, every parameter), T = 13 and 1."""
    result = compile_spec(ROOT / "specs" / "ssd.dsf")
    body = result.source[result.source.index("def _core_triton_outer"):]
    assert "_fused = dict(heads_per_group=R, v_scale=_vs, skip=_skip, skip_weight=_skw)" in body
    assert "index_select" not in body and "dt[:, :, :, None] * u_" not in body and "D[:, None]" not in body
    assert "chunked_outer_triton(_q, _k, _v, _log_decay, _s0, output_final_state=True, **_fused)" in body
    _against_reference(result, f"dsfc_outer_fused_ssd_{G}_{T}", {**SSD_DIMS, "G": G}, T)


def test_a_partial_match_keeps_the_torch_lines():
    """The variant: q stays materialised per head (index_select), the D term stays in torch, k is grouped and v's
    factor fused; its numbers match the reference too."""
    result = compile_text(VARIANT, "ssd_variant.dsf")
    body = result.source[result.source.index("def _core_triton_outer"):]
    assert "_fused = dict(heads_per_group=R, v_scale=_vs)" in body
    assert re.search(r"_q = \(?\s*Cm\.index_select", body) and "_k = Bm  #" in body
    assert "_y = _y + D[:, None] * dt[:, :, :, None] * u_" in body
    _against_reference(result, "dsfc_outer_fused_ssd_variant", {**SSD_DIMS, "G": 2}, 13)


@pytest.mark.parametrize("name, fused", [("ssd", "heads_per_group=R, v_scale=_vs, skip=_skip, skip_weight=_skw"),
                                         ("mlstm", "v_scale=_vs"), ("taylor_attention", "v_scale=_vs"),
                                         ("linear_attention_normalized", "v_scale=_vs"), ("retnet", None),
                                         ("gla", None), ("linear_attention", None), ("rwkv6", None),
                                         ("normalized_attention", None)])
def test_generated_catalog_fusions(name, fused):
    """What each catalog spec of the family fuses (generated/ is kept in sync with specs/ by the catalog tests):
    a value with a per-(t, h) factor (mLSTM's input gate, the normalised attentions' 1 / eta) takes v_scale; GLA
    and RWKV-6 (per-key decay), RetNet and linear attention (no such factor), the normalised attention (its gauge
    scan) keep today's call."""
    src = (ROOT / "generated" / f"{name}.py").read_text()
    if fused is None:
        assert "_fused = " not in src and "**_fused" not in src
        assert "chunked_outer_triton(_q, _k, _v, _log_decay, _s0, output_final_state=True" in src
    else:
        assert f"_fused = dict({fused})" in src and "output_final_state=True, **_fused)" in src


def test_group_index_built_under_inference_mode_serves_a_training_call():
    """The head -> group index of the unfused paths is cached per process: made first by a decoding step under
    torch.inference_mode, it was an inference tensor, and a later training call whose per-key decay repeats the
    groups' rows in torch (index_select saves its index for backward) failed with "Inference tensors cannot be
    saved for backward"."""
    torch.manual_seed(3)
    B, H, G, K, V = 1, 6, 3, 4, 4  # a (heads, group) pair no other test uses: the cache starts empty for it
    q = torch.randn(B, 1, G, K, device=DEVICE)
    k = torch.randn(B, 1, G, K, device=DEVICE)
    v = torch.randn(B, 1, H, V, device=DEVICE)
    with torch.inference_mode():
        chunked_outer_triton(q, k, v, -torch.rand(B, 1, H, device=DEVICE), heads_per_group=H // G)
    T = 5
    q = torch.randn(B, T, G, K, device=DEVICE, requires_grad=True)
    k = torch.randn(B, T, G, K, device=DEVICE, requires_grad=True)
    v = torch.randn(B, T, H, V, device=DEVICE, requires_grad=True)
    g = -torch.rand(B, T, H, K, device=DEVICE)  # per key: q, k repeated per head in torch
    y = chunked_outer_triton(q, k, v, g, heads_per_group=H // G)
    y.square().sum().backward()
    want = chunked_outer_triton(q.repeat_interleave(H // G, 2), k.repeat_interleave(H // G, 2), v, g)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert q.grad is not None and bool(torch.isfinite(q.grad).all())
