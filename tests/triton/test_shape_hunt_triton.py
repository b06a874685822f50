"""Shape / dtype / stride hunt on backend="triton" (interpreted on CPU: tiny sizes): one module per kernel family
(diagonal, chunked outer product with per-key and per-head decay, dense block, quadratic attention) at odd and
non-power-of-two dims (K = 20, V = 18 cross the 16-wide tiles; K != V; 1 or 3 heads), sequence lengths on both sides of
the 16 / 32 chunks, strided / expanded / half inputs, non-contiguous states and gradients that reach only the final
state or a strided slice of y. Checked against the float64 reference backend (softmax attention: its torch path).
The hunt of 2026-11-27 found no mismatch here: this keeps the matrix it ran."""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: I001  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # dsf_testing (a plain module)
from dsf_testing import F64, generated_class, map_state, state_leaves  # noqa: E402

DIMS = {
    "s6": dict(d=3, n=5, r=1),
    "gla": dict(d=5, H=1, K=20, V=18, R=1),
    "retnet": dict(d=5, H=3, K=3, V=5),
    "deltanet": dict(d=5, H=1, K=3, V=7),
    "lru": dict(d=3, Nc=5),
    "softmax_attention": dict(d=5, H=3, K=3, V=5),
}



def _pair(name, dtype=F64):
    torch.manual_seed(0)
    oracle_backend = "torch" if name == "softmax_attention" else "reference"
    oracle = generated_class(name)(**DIMS[name], backend=oracle_backend).to(F64)
    model = copy.deepcopy(oracle).to(dtype)
    model.backend = "triton"
    return oracle.to(DEVICE), model.to(DEVICE)


def _start_state(model, batch):
    with torch.no_grad():
        u = torch.randn(batch, 3, model._in_features(), dtype=F64, device=DEVICE)
        return model(u, output_final_state=True)[1]


def _close(got, want, tol, what):
    # relative to the group's largest entry: an exactly-zero gradient is noise in both. None (autograd found no
    # path) and zeros (the kernel's backward returns a gradient for every stream) are the same gradient
    scale = max([float(w.detach().abs().max()) for w in want if w is not None and w.numel()] + [1e-30])
    for i, (g, w) in enumerate(zip(got, want)):
        g = torch.zeros_like(w) if g is None and w is not None else g
        w = torch.zeros_like(g) if w is None and g is not None else w
        if g is not None:
            diff = float((g.detach().to(F64) - w.detach().to(F64)).abs().max())
            assert diff <= tol * scale, (what, i, diff)


def _grads(model, u, s0, loss_of):
    u = u.clone().requires_grad_(True)
    s0 = map_state(s0, lambda v: v.clone().requires_grad_(True))
    y, s = model(u, initial_state=s0, output_final_state=True)
    grads = torch.autograd.grad(loss_of(y, s), [u, *state_leaves(s0), *model.parameters()], allow_unused=True)
    return [y.detach(), *[v.detach() for v in state_leaves(s)]], list(grads)


def _weighted(y, s):
    return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)).sum() + sum(
        (0.3 * v).sum() for v in state_leaves(s))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the interpreter's masked lanes divide by zero
        yield


@pytest.mark.parametrize("name", sorted(DIMS))
def test_chunk_boundaries_and_odd_dims_match_the_reference(name):
    oracle, model = _pair(name)
    for T, batch in ((1, 3), (17, 1), (33, 1)):
        torch.manual_seed(T)
        u = torch.randn(batch, T, model._in_features(), dtype=F64, device=DEVICE)
        s0 = _start_state(oracle, batch)
        out, g = _grads(model, u, s0, _weighted)
        out_r, g_r = _grads(oracle, u, s0, _weighted)
        _close(out, out_r, 1e-9, (name, T, "y / state"))
        _close(g, g_r, 1e-8, (name, T, "grads"))


@pytest.mark.parametrize("name", sorted(DIMS))
def test_gradients_through_the_final_state_or_a_strided_slice_only(name):
    # the backward gets a zero (or stride-0 / strided) incoming gradient for y or the final state
    oracle, model = _pair(name)
    u = torch.randn(2, 9, model._in_features(), dtype=F64, device=DEVICE)
    s0 = map_state(_start_state(oracle, 2), lambda v: v.transpose(0, -1).contiguous().transpose(0, -1))
    for loss_of in (lambda y, s: sum((1.5 * v).sum() for v in state_leaves(s)), lambda y, s: y[:, ::3].sum()):
        out, g = _grads(model, u, s0, loss_of)
        out_r, g_r = _grads(oracle, u, s0, loss_of)
        _close(out, out_r, 1e-9, (name, "y / state"))
        _close(g, g_r, 1e-8, (name, "grads"))


@pytest.mark.parametrize("name", sorted(DIMS))
def test_strided_and_half_inputs(name):
    oracle, model = _pair(name, torch.float32)
    batch, T, width = 2, 17, model._in_features()
    s0 = map_state(_start_state(oracle, batch), lambda v: v.float())
    cases = [("batch-expanded", torch.randn(1, T, width).expand(batch, T, width), 1e-4),
             ("permuted", torch.randn(width, batch, T).permute(1, 2, 0), 1e-4),
             ("fp16", torch.randn(batch, T, width).half(), 2e-2),
             ("fp64 into fp32 params", torch.randn(batch, T, width, dtype=F64), 1e-4)]
    for tag, u, tol in cases:
        u = u.to(DEVICE)
        with torch.no_grad():
            y, s = model(u, initial_state=s0, output_final_state=True)
            yr, sr = oracle(u.to(F64), initial_state=map_state(s0, lambda v: v.to(F64)), output_final_state=True)
        assert y.dtype == u.dtype, (name, tag, y.dtype)
        _close([y, *state_leaves(s)], [yr, *state_leaves(sr)], tol, (name, tag))


def _naive_outer(q, k, v, g, h0):
    """S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T, y_t = S_t^T q_t, one step at a time (autograd, float64)."""
    s, ys = h0, []
    for t in range(q.shape[1]):
        s = torch.exp(g[:, t])[..., None] * s + k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], s))
    return torch.stack(ys, 1), s


@pytest.mark.parametrize("strong", [-1e4, -1e30, float("-inf")])
def test_a_strong_per_key_decay_keeps_the_decays_after_it(strong):
    # the diagonal blocks of the per-key kernel took exp(seg(j+1..i)) as the difference of two running log-decay sums:
    # after a step with a log-decay of -1e4 (a gate saturated in fp32) both sums were ~-1e4 and the short segments
    # after it rounded away (y off by 0.6% at -1e4, 80% at -1e30; the torch scan and the reference were exact)
    from dsfc.runtime.triton_outer import chunked_outer_triton

    torch.manual_seed(0)
    B, T, H, K, V = 1, 20, 1, 3, 2
    q, k, v = (torch.randn(B, T, H, n, device=DEVICE) for n in (K, K, V))
    g = -0.05 * torch.rand(B, T, H, K, device=DEVICE)
    g[:, 6, :, 1:] = strong  # keys 1, 2 reset at step 6 (inside the first 16-step sub-chunk), key 0 does not
    h0 = torch.randn(B, H, K, V, device=DEVICE)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, h0)]
    y, s = chunked_outer_triton(*leaves, output_final_state=True)
    ref_leaves = [x.to(F64).requires_grad_(True) for x in (q, k, v, g, h0)]
    y_r, s_r = _naive_outer(*ref_leaves)
    _close([y, s], [y_r, s_r], 1e-5, (strong, "y / state"))
    w = torch.randn_like(y_r)
    grads = torch.autograd.grad((y * w.float()).sum() + s.sum(), leaves)
    grads_r = torch.autograd.grad((y_r * w).sum() + s_r.sum(), ref_leaves)
    _close(list(grads), list(grads_r), 1e-5, (strong, "grads"))
