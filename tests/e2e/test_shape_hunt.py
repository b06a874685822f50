"""Shape / dtype / stride hunt over the whole catalog (torch and reference backends): odd and non-power-of-two dims
(K != V, one head or three, widths of 1), sequence lengths on both sides of the scan chunks, batch 1 and 3, strided,
expanded and permuted inputs, half and float64 inputs against float32 parameters and the reverse, and a step() loop
against forward. Every result is checked against the module's own float64 reference recurrence (backend="reference";
softmax attention has none and is checked against its torch path at float64, which test_softmax_attention.py checks
against an oracle). The hunt of 2026-11-27 found no mismatch here: this keeps the matrix it ran."""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401,I001  (sets TRITON_INTERPRET=1 before triton is imported)

import copy

import pytest
import torch

from dsf_testing import F64, generated_class, map_state, state_leaves  # noqa: E402

# one odd configuration per catalog module: a width of 1 or a non-power-of-two, K != V, 1 or 3 heads
DIMS = {
    "deltanet": dict(d=5, H=1, K=3, V=7),
    "gated_deltanet": dict(d=6, H=3, K=1, V=2),
    "gla": dict(d=5, H=3, K=3, V=5, R=1),
    "hgrn": dict(d=1, E=7, L=3, layer=3),
    "linear_attention": dict(d=3, H=1, K=1, V=17),
    "linear_attention_normalized": dict(d=5, H=3, K=3, V=5),
    "lru": dict(d=3, Nc=5),
    "mamba_block": dict(d=1, e=3, n=1, r=1, W=1),
    "mlstm": dict(H=3, DH=2, bs=2),
    "normalized_attention": dict(d=6, H=3, K=3),
    "normalized_attention_exprelu": dict(d=1, H=1, K=1),
    "normalized_attention_sigmoid": dict(d=6, H=3, K=3),
    "qlstm": dict(d=3, e=1),
    "qlstm_s6": dict(d=1, e=3),
    "retnet": dict(d=5, H=3, K=3, V=5),
    "rg_lru": dict(W=6, nh=3),
    "rwkv6": dict(d=6, H=3, K=3, V=5, R=1, Rw=1, layer=1, L=2),
    "s4d": dict(d=1, Nh=1),
    "s6": dict(d=3, n=5, r=1),
    "softmax_attention": dict(d=5, H=3, K=3, V=5),
    "ssd": dict(H=3, P=2, n=3, G=3),
    "taylor_attention": dict(d=3, H=3, K=1, V=3, p=1),
}



def _pair(name, backend, dtype=F64):
    """(oracle, model under test) with the same parameters."""
    torch.manual_seed(0)
    oracle_backend = "torch" if name == "softmax_attention" else "reference"
    oracle = generated_class(name)(**DIMS[name], backend=oracle_backend).to(F64)
    model = copy.deepcopy(oracle).to(dtype)
    model.backend = backend
    return oracle, model


def _start_state(model, batch):
    with torch.no_grad():
        return model(torch.randn(batch, 3, model._in_features(), dtype=F64), output_final_state=True)[1]


def _run(model, u, s0):
    """y, final state and the gradients of u, s0 and the parameters of a loss that reads y and the final state."""
    u = u.clone().requires_grad_(True)
    s0 = map_state(s0, lambda v: v.clone().requires_grad_(True))
    y, s = model(u, initial_state=s0, output_final_state=True)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    loss = (y * weights).sum() + sum((0.3 * v).sum() for v in state_leaves(s))
    grads = torch.autograd.grad(loss, [u, *state_leaves(s0), *model.parameters()], allow_unused=True)
    return y.detach(), [v.detach() for v in state_leaves(s)], grads


def _close(got, want, tol, what):
    # relative to the largest entry of the group: a gradient that is zero in exact arithmetic (l2-normalised keys at
    # K = 1) is ~1e-15 noise in both, and an entrywise relative test would call that a mismatch
    scale = max([float(w.abs().max()) for w in want if w is not None and w.numel()] + [1e-30])
    for i, (g, w) in enumerate(zip(got, want)):
        if g is None or w is None:
            assert g is None and w is None or float((g if w is None else w).abs().max()) <= tol * scale, (what, i)
            continue
        assert g.dtype == w.dtype, (what, i, g.dtype, w.dtype)
        assert float((g - w).abs().max()) <= tol * scale, (what, i, float((g - w).abs().max()), scale)


@pytest.mark.parametrize("name", sorted(DIMS))
def test_odd_dims_and_chunk_boundaries_match_the_reference(name):
    oracle, model = _pair(name, "torch")
    for T, batch in ((1, 3), (17, 1), (33, 3)):
        torch.manual_seed(T)
        u = torch.randn(batch, T, model._in_features(), dtype=F64)
        s0 = _start_state(oracle, batch)
        y, s, g = _run(model, u, s0)
        yr, sr, gr = _run(oracle, u, s0)
        _close([y], [yr], 1e-10, (name, T, "y"))
        _close(s, sr, 1e-10, (name, T, "state"))
        _close(list(g), list(gr), 1e-8, (name, T, "grads"))


def _strided_inputs(batch, T, width):
    yield "transposed", torch.randn(T, batch, width).transpose(0, 1)
    yield "sliced", torch.randn(batch, T, 2 * width)[..., ::2]
    yield "batch-expanded", torch.randn(1, T, width).expand(batch, T, width)
    yield "time-expanded", torch.randn(batch, 1, width).expand(batch, T, width)
    yield "permuted", torch.randn(width, batch, T).permute(1, 2, 0)


@pytest.mark.parametrize("name", sorted(DIMS))
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_strided_and_mixed_dtype_inputs(name, backend):
    if backend == "reference" and name == "softmax_attention":
        pytest.skip("no reference backend for the quadratic path")
    oracle, model = _pair(name, backend, torch.float32)
    batch, T, width = 2, 17, model._in_features()
    s0 = map_state(_start_state(oracle, batch), lambda v: v.float())

    def check(tag, m, u, state, tol, want_dtype=None):
        ref = copy.deepcopy(m).to(F64)  # the parameters as m holds them (bf16-rounded ones included)
        ref.backend = oracle.backend
        with torch.no_grad():
            y, s = m(u, initial_state=state, output_final_state=True)
            yr, sr = ref(u.to(F64), initial_state=None if state is None else map_state(state, lambda v: v.to(F64)),
                            output_final_state=True)
        assert y.dtype == (want_dtype or u.dtype), (tag, y.dtype)
        _close([y.to(F64)], [yr], tol, (name, tag, "y"))
        _close([v.to(F64) for v in state_leaves(s)], state_leaves(sr), tol, (name, tag, "state"))

    for tag, u in _strided_inputs(batch, T, width):
        check(tag, model, u, s0, 1e-4)
    u = torch.randn(batch, T, width)
    check("fp16 input", model, u.half(), s0, 2e-2)
    check("bf16 input", model, u.bfloat16(), s0, 6e-2)
    check("fp64 input, fp32 params", model, u.double(), s0, 1e-4)
    check("fp64 state, fp32 input", model, u, map_state(s0, lambda v: v.double()), 1e-4)
    strided = map_state(s0, lambda v: v.transpose(0, -1).contiguous().transpose(0, -1))
    check("non-contiguous state", model, u, strided, 1e-4)
    check("fp64 params, fp32 input", copy.deepcopy(model).double(), u, s0, 1e-4)
    check("fp16 params, fp16 input", copy.deepcopy(model).half(), u.half(), s0, 3e-2)
    check("bf16 params, fp32 input", copy.deepcopy(model).bfloat16(), u, s0, 1e-4)


@pytest.mark.parametrize("name", sorted(DIMS))
def test_a_step_loop_continues_forward(name):
    oracle, model = _pair(name, "torch", torch.float32)
    u = torch.randn(3, 9, model._in_features())
    s0 = map_state(_start_state(oracle, 3), lambda v: v.float())
    with torch.no_grad():
        y, final = model(u, initial_state=s0, output_final_state=True)
        state, ys = s0, []
        for t in range(u.shape[1]):
            y_t, state = model.step(u[:, t], state)
            ys.append(y_t)
    _close([torch.stack(ys, 1)], [y], 1e-5, (name, "step y"))
    _close(state_leaves(state), state_leaves(final), 1e-5, (name, "step state"))
