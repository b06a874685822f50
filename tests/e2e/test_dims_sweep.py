"""Dims and lengths sweep of the catalog (torch path): every spec in specs/*.dsf built at dims the catalog does not use
(every dim 1, odd primes 3 / 5 / 7 cycled over the free dims, so head dims 3, 5, 7 and state expansion n = 1), run at
lengths around the torch path's chunks (``diagonal_scan`` / ``chunked_outer_scan`` / ``chunked_delta_scan`` chunk
64: T = 0, 1, 63, 64, 65, 129), batch 1 from zero and batch 3 from an initial state, token by token with ``step``,
with gradients of u, the initial state and every parameter against autograd through the float64 reference
(``dsfc.reference``). KV-cache specs (softmax attention, FoX) start from the cache of a 3-token prefix and are checked
against the reference over the whole sequence.

The hunt (2026-11-28) ran wider than this file keeps: 4 dim sets per spec (all 1, all 3, primes, widths 17 with
heads 3 and head dims 5 / 2) at T = 0, 1, 15, 16, 17, 33, 63, 64, 65, 129, and on the Triton path (interpreted)
every spec at prime dims at T = 0, 1, 17, 33 (a one-off run, not kept), plus fp16 / bf16 inputs.
It found no mismatch (every error below 1e-8 of the largest entry in float64): this file keeps a fast subset as
coverage. Dim sets the spec itself forbids (``spec_errors_at``) are skipped.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dsf_testing import F64, build, grads_of, rel_err, run_steps, state_err  # noqa: E402
from dsfc.check import spec_errors_at  # noqa: E402
from dsfc.codegen.plan import py_name  # noqa: E402
from dsfc.pipeline import compile_spec  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.dsf"))
TOL = 1e-8  # float64 throughout: rounding of O(T) terms of O(1) entries, far below any indexing or chunking error
PREFIX = 3  # KV-cache specs: tokens before the continued call


@functools.lru_cache(maxsize=None)
def compiled(name: str):
    return compile_spec(ROOT / "specs" / f"{name}.dsf")


def sweep_dims(result, style: str) -> dict[str, int] | None:
    """The first legal dim set of ``style`` ("ones": every free dim 1; "primes": 3, 5, 7 cycled), or None."""
    free = list(result.sym.free_dims)
    candidates = {"ones": [{k: 1 for k in free}],
                  "primes": [{k: (3, 5, 7)[i % 3] for i, k in enumerate(free)},
                             {k: (5, 3, 7)[i % 3] for i, k in enumerate(free)}, {k: 3 for k in free}]}[style]
    return next((d for d in candidates if spec_errors_at(result, d) is None), None)


def is_kv_cache(built) -> bool:
    """Quadratic specs carry a KV cache that grows with T instead of a fixed-shape state."""
    return built.result.structure.family.value == "quadratic attention"


def check_fixed_state(built, b: int, t: int, with_h0: bool, gen, step: bool, grads: bool) -> None:
    model = built.model
    h0 = built.initial_state(b, gen) if with_h0 else None
    u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
    y_ref, h_ref = built.reference(u, h0)
    with torch.no_grad():
        y, hT = model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_ref) < TOL and state_err(hT, h_ref) < TOL, (b, t, with_h0)
    if step and t:
        y_s, h_s = run_steps(model, u, h0)
        assert rel_err(y_s, y_ref) < TOL and state_err(h_s, h_ref) < TOL, (b, t, with_h0, "step")
    if grads:
        w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
        got, want = grads_of(model, built, u, h0, w), grads_of(None, built, u, h0, w)
        scale = max((g.abs().max().item() for g in want if g.numel()), default=0.0)
        for k, (g, r) in enumerate(zip(got, want)):
            err = (g - r).abs().max().item() if g.numel() else 0.0
            assert torch.isfinite(g).all() and err <= 1e-7 * scale, (b, t, with_h0, "grad", k)


def check_kv_cache(built, b: int, t: int, with_h0: bool, gen, step: bool, grads: bool) -> None:
    """The continued call (from the cache of PREFIX tokens, or from nothing) against the reference of the whole
    sequence; gradients of the whole u (through the cache) and every parameter."""
    model = built.model
    p = PREFIX if with_h0 else 0
    u = torch.randn(b, p + t, built.d_in(), generator=gen, dtype=F64)
    names = [q.tensor.name for q in built.sym.params]
    named = dict(model.named_parameters())

    def run(x):
        cache = model(x[:, :p], output_final_state=True)[1] if p else None
        return model(x[:, p:], initial_state=cache), cache

    with torch.no_grad():
        y_ref = built.reference(u)[0][:, p:]
        y, cache = run(u)
    assert rel_err(y, y_ref) < TOL, (b, t, with_h0)
    if step and t:
        assert rel_err(run_steps(model, u[:, p:], cache)[0], y_ref) < TOL, (b, t, with_h0, "step")
    if grads:
        w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
        uu = u.clone().requires_grad_()
        got = torch.autograd.grad((run(uu)[0] * w).sum(), [uu, *(named[py_name(n)] for n in names)],
                                  allow_unused=True)
        P = {n: named[py_name(n)].detach().clone().requires_grad_() for n in names}
        ur = u.clone().requires_grad_()
        y_r = reference_forward(built.sym, built.all_dims, P, ur)[0][:, p:]
        want = torch.autograd.grad((y_r * w).sum(), [ur, *P.values()], allow_unused=True)
        leaves = [ur, *P.values()]
        got = [torch.zeros_like(x) if g is None else g for g, x in zip(got, leaves)]
        want = [torch.zeros_like(x) if g is None else g for g, x in zip(want, leaves)]
        scale = max(g.abs().max().item() for g in want if g.numel())
        for k, (g, r) in enumerate(zip(got, want)):
            assert torch.isfinite(g).all() and (g - r).abs().max().item() <= 1e-7 * scale, (b, t, "grad", k)


def check_sweep(built, shapes, gen) -> None:
    """``shapes``: (batch, T, from an initial state, step, gradients)."""
    check = check_kv_cache if is_kv_cache(built) else check_fixed_state
    for b, t, with_h0, step, grads in shapes:
        check(built, b, t, with_h0, gen, step, grads)


# around the torch path's chunk of 64 (T = C - 1, C, C + 1, 2C + 1), batch 3 from a state, forward only (the
# reference's autograd costs seconds at T = 129); T = 0, 1 and 17 with step and gradients
LONG = [(3, t, True, False, False) for t in (63, 64, 65, 129)]
SHORT = [(3, 0, True, False, True), (1, 1, False, True, True), (3, 17, True, True, True), (1, 17, False, False, True)]


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_at_dims_one_matches_the_reference(name):
    result = compiled(name)
    dims = sweep_dims(result, "ones")
    if dims is None:
        pytest.skip(f"{name}: the spec forbids every dim 1")
    check_sweep(build(result, dims), SHORT + LONG[2:3], torch.Generator().manual_seed(0))


# one spec per torch-path family (diagonal, dense, chunked outer, chunked delta); the hunt ran them all. Taylor
# attention is left out: at K = 7, p = 3 the float64 reference materialises its dense matrices over T = 129 and asks
# for ~138 GB (a cost of the reference, not a wrong module; see the report of 2026-11-28)
PRIME_SPECS = ["s6", "lru", "gla", "deltanet", "ssd"]


@pytest.mark.parametrize("name", PRIME_SPECS)
def test_every_family_at_odd_prime_dims_matches_the_reference_around_the_chunk(name):
    result = compiled(name)
    dims = sweep_dims(result, "primes")
    assert dims is not None, name
    check_sweep(build(result, dims), SHORT[1:3] + LONG, torch.Generator().manual_seed(1))
