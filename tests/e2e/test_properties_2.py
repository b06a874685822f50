"""Property tests of the families and grammar ``test_properties.py``'s generators do not draw (tests/e2e/spec_gen.py:
``dplr_specs``, ``rank_specs``, ``attention_specs``, ``linear_attention_specs``, ``complex_specs``,
``rotating_key_specs``): chunked
diagonal-plus-rank-1 (KDA in both orders, RWKV-7), rank-R inputs and R queries (MIMO), softmax / decayed softmax /
ALiBi / un-normalised decayed kernels, signed decays, decayed running normalisers, readout pre, posts (gates,
RMSNorm, out-projections), keys shared by groups of heads, odd key widths, complex states as 2x2 blocks, rotating
decays per key pair (the chunked outer-product scan with q and k rotated).

Each example: the family the analysis picks is the generator's (a fall back to the dense or diagonal scan is a
finding), then the torch path (batch 1 at T = 1 and batch > 1 at an odd T, from zero and from a random initial state,
token-by-token ``step``, gradients of the input, the initial state and every parameter) and the Triton path
(interpreted on CPU: forward, final state and gradients from an initial state) against dsfc's float64 reference
recurrence, and the chunked families again with chunks of 3 steps.

Deterministic in CI (``derandomize``: the same examples every run, DSFC_PROPERTY2_EXAMPLES per generator, default 4);
to hunt bugs run many more with a random seed, e.g.
``DSFC_PROPERTY2_EXAMPLES=200 DSFC_PROPERTY2_RANDOM=1 python -m pytest -n 2 tests/e2e/test_properties_2.py``.

Found and fixed: none. The hunts (30 random examples per generator, then 15 more of dplr / rank after readout pre,
signed per-key decays, D and posts were added to them) found no mismatch and no family regression; the one failure
was in this file's harness (a quadratic-attention state is a KV cache, not the reference's state: check_attention).
``rotating_key_specs`` (added with the rotating decay per key pair): 60 random examples, no mismatch; with rank-R
inputs / R queries drawn too (the rotation composed with the rank sub-steps): 42 random examples, no mismatch.

Found, NOT fixed: none.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import os  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, event, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, check_backend, check_small_chunks,  # noqa: E402
                         grads_of, rel_err, run_steps)
from dsfc.pipeline import compile_text  # noqa: E402
from spec_gen import (attention_specs, complex_specs, dplr_specs, linear_attention_specs, rank_specs,  # noqa: E402
                      rotating_key_specs)

pytestmark = INTERPRETER_WARNINGS

EXAMPLES = int(os.environ.get("DSFC_PROPERTY2_EXAMPLES", "4"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("DSFC_PROPERTY2_RANDOM"),
                    database=None, phases=(Phase.explicit, Phase.generate),  # no shrinking: minutes per spec
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CHUNKED = ("chunked outer-product scan", "chunked delta-rule scan", "chunked diagonal-plus-rank-1 scan")
shapes = st.tuples(st.integers(2, 3), st.sampled_from([3, 5, 9]), st.integers(0, 2**16))


def check_generated(gen, shape, triton: bool = True):
    """The family is the generator's; torch and (if ``triton``) Triton forward, state, step and gradients match the
    float64 reference recurrence; chunked families also with chunks of 3 steps."""
    batch, T, seed = shape
    note(gen.text)
    note(f"labels={gen.labels} batch={batch} T={T} seed={seed}")
    result = compile_text(gen.text, "gen.dsf")
    event(f"{gen.kind} -> {result.report.family}")
    assert result.report.family == gen.labels["family"], result.report.family_reason
    built = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}, seed=seed)
    if result.report.family == "quadratic attention":
        for backend in ("torch", "triton") if triton and TRITON else ("torch",):
            check_attention(built, backend, ((1, 1), (batch, T)))
        return
    check_backend(built, "torch", ((1, 1), (batch, T)))
    if result.report.family in CHUNKED:
        check_small_chunks(built, ((batch, 7),))
    if triton and TRITON:
        check_backend(built, "triton", ((batch, T),), steps=False, h0s=(True,))


@PROPERTY
@given(gen=dplr_specs(), shape=shapes)
def test_random_dplr_specs(gen, shape):
    check_generated(gen, shape)


@PROPERTY
@given(gen=rank_specs(), shape=shapes)
def test_random_rank_r_specs(gen, shape):
    check_generated(gen, shape)


@PROPERTY
@given(gen=attention_specs(), shape=shapes)
def test_random_attention_specs(gen, shape):
    check_generated(gen, shape)


@PROPERTY
@given(gen=linear_attention_specs(), shape=shapes)
def test_random_linear_attention_specs(gen, shape):
    check_generated(gen, shape)


@PROPERTY
@given(gen=complex_specs(), shape=shapes)
def test_random_complex_specs(gen, shape):
    check_generated(gen, shape)


@PROPERTY
@given(gen=rotating_key_specs(), shape=shapes)
def test_random_rotating_key_specs(gen, shape):
    check_generated(gen, shape)


def check_attention(built, backend, shapes, tol=1e-8):
    """Quadratic attention on ``backend`` against the float64 reference, which evaluates the infinite feature state
    from the start of a sequence (no initial state): output, gradients of the input and every parameter, step (the
    KV cache, one token at a time, torch only) and a continuation: the second half of the sequence run from the cache
    the first half returned gives the reference's second half."""
    model = built.model
    model.backend = backend
    gen = torch.Generator().manual_seed(0)
    for b, t in shapes:
        u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
        y_ref, _ = built.reference(u)
        with torch.no_grad():
            y = model(u)
        assert rel_err(y, y_ref) < tol, (backend, b, t, "forward")
        if backend == "torch":
            with torch.no_grad():
                y_s, _ = run_steps(model, u, None)
            assert rel_err(y_s, y_ref) < tol, (backend, b, t, "step")
        p = t // 2
        with torch.no_grad():
            _, cache = model(u[:, :p], output_final_state=True)
            y2 = model(u[:, p:], initial_state=cache)
        assert rel_err(y2, y_ref[:, p:]) < tol, (backend, b, t, "continued from the cache")
        w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
        got, want = grads_of(model, built, u, None, w), grads_of(None, built, u, None, w)
        scale = max((g.abs().max().item() for g in want if g.numel()), default=0.0)
        for k, (g, r) in enumerate(zip(got, want)):
            err = (g - r).abs().max().item() if g.numel() else 0.0
            assert torch.isfinite(g).all() and err <= 1e-7 * scale, (backend, b, t, "gradient", k)
