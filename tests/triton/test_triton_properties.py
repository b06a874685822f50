"""Property tests of the Triton path: random well-formed specs of each structure class (tests/e2e/spec_gen.py: random
decays, gates, feature maps, state ranks, shared parameters, readouts) compile to modules whose backend="triton"
forward, final state, step and gradients match the float64 reference recurrence (forward) and the torch path
(gradients). The compiler must be general, not tuned to the catalog: the kernels are generated per spec.

Specs of a family without a Triton kernel of its own are skipped by assume() (none is generated now: spec_gen draws no
quadratic-attention specs, whose kernels tests/triton/test_triton_attention.py covers); the
diagonal family runs the step-by-step and the chunked kernels (drawn), so both are covered on random maths.
Float64 modules, so the kernels compute in fp64: TOL = 1e-8 of the output scale, as tests/e2e/test_properties.py
(a wrong index, mask or derivative is an O(1) error; fp64 rounding over <= 17 steps is ~1e-15).
Examples per property: DSFC_PROPERTY_EXAMPLES // 3 (default 5; the interpreter costs ~1 ms per op per step).
"""

from tests.triton._device import DEVICE  # (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # spec_gen, dsf_testing (plain modules)

from dsf_testing import F64, build, rel_err, run_steps, state_err  # noqa: E402
from spec_gen import dense_specs, diagonal_specs, outer_specs, ssd_specs  # noqa: E402

import dsfc.runtime.triton_diagonal as triton_diagonal  # noqa: E402
import dsfc.runtime.triton_outer as triton_outer  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

TOL = 1e-8
EXAMPLES = max(1, int(os.environ.get("DSFC_PROPERTY_EXAMPLES", "15")) // 3)
# derandomized: the same examples every CI run (a random one that fails once turns an unrelated change red);
# DSFC_PROPERTY_RANDOM=1 draws new ones. No explain phase: it traces every line of a failing example again, which
# under the Triton interpreter took CI's workers past their time limit
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("DSFC_PROPERTY_RANDOM"),
                    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
shapes = st.tuples(st.integers(1, 2), st.sampled_from([1, 5, 17]), st.booleans(), st.integers(0, 2**16))


def _to(state, device):
    if state is None:
        return None
    if isinstance(state, dict):
        return {k: v.to(device) for k, v in state.items()}
    return state.to(device)


def _check_triton(gen, shape, chunked: bool):
    """chunked: the other kernels of the family (diagonal: the chunked pair; outer product: the split schedule)."""
    batch, T, with_h0, seed = shape
    note(gen.text)
    note(f"labels={gen.labels} batch={batch} T={T} h0={with_h0} seed={seed} chunked={chunked}")
    result = compile_text(gen.text, "gen.dsf")
    b = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}, seed=seed)
    module = sys.modules[type(b.model).__module__]
    assume(module._core_triton_available is not None)  # a family with a Triton kernel
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, T, b.d_in(), generator=g, dtype=F64)
    h0 = b.initial_state(batch, g) if with_h0 else None
    y_ref, h_ref = b.reference(u, h0)  # on CPU, before the model moves
    y3, h3 = b.reference(u[:, :3], h0)
    b.model.to(DEVICE).backend = "triton"
    saved = (triton_diagonal.CHUNKED_FORWARD, triton_diagonal.CHUNKED_BACKWARD, triton_outer.SCHEDULE)
    triton_outer.SCHEDULE = "split" if chunked else "fused"
    triton_diagonal.CHUNKED_FORWARD = chunked
    triton_diagonal.CHUNKED_BACKWARD = "always" if chunked else "never"
    try:
        ud, hd = u.to(DEVICE), _to(h0, DEVICE)
        with torch.no_grad():
            y, hT = b.model(ud, initial_state=hd, output_final_state=True)
        assert rel_err(y.cpu(), y_ref) <= TOL, "triton forward y"
        assert state_err(_to(hT, "cpu"), h_ref) <= TOL, "triton final state"
        with torch.no_grad():
            ys, state = run_steps(b.model, ud[:, :3], hd)
        assert rel_err(ys.cpu(), y3) <= TOL, "triton step"
        assert state_err(_to(state, "cpu"), h3) <= TOL, "triton step state"
        # gradients of the input and every parameter: triton vs the torch path
        grads = {}
        for backend in ("triton", "torch"):
            b.model.backend = backend
            b.model.zero_grad(set_to_none=True)
            uu = ud.clone().requires_grad_()
            out = b.model(uu, initial_state=hd)
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64).to(out)
            # a parameter the output does not reach has no gradient (None) on a path that leaves it out of the graph
            # (torch's one-step scan at T = 1 with a pre-update readout and no initial state: y = q^T 0) and zeros on
            # one that keeps it: both mean 0. With a constant readout (no query) nothing at all reaches that output
            # on the torch path (y = C 0 does not require grad): every gradient is then 0
            if out.requires_grad:
                (out * w).sum().backward()
            grads[backend] = {"u": torch.zeros_like(uu) if uu.grad is None else uu.grad,
                              **{n: torch.zeros_like(p) if p.grad is None else p.grad
                                 for n, p in b.model.named_parameters()}}
        # scale: the layer's largest gradient entry, not the compared tensor's own: a gradient that is exactly 0
        # (e.g. of a decay acting on an empty state, T = 1 without h0) comes back from the outer-product kernel as
        # the rounding residue of q.dq - k.dk (see test_triton_outer.py)
        scale = max(g.abs().max().item() for g in grads["torch"].values() if g.numel())
        for name, want in grads["torch"].items():
            err = (grads["triton"][name].cpu() - want.cpu()).abs().max().item() if want.numel() else 0.0
            assert err <= TOL * max(scale, 1e-300), f"gradient of {name}: {err} vs scale {scale}"
    finally:
        triton_diagonal.CHUNKED_FORWARD, triton_diagonal.CHUNKED_BACKWARD, triton_outer.SCHEDULE = saved
        b.model.backend = "auto"


@PROPERTY
@given(gen=diagonal_specs(), shape=shapes, chunked=st.booleans())
def test_random_diagonal_specs_triton(gen, shape, chunked):
    _check_triton(gen, shape, chunked)


@PROPERTY
@given(gen=outer_specs(), shape=shapes, split=st.booleans())
def test_random_outer_product_specs_triton(gen, shape, split):
    _check_triton(gen, shape, split)


@PROPERTY
@given(gen=ssd_specs(), shape=shapes, split=st.booleans())
def test_random_ssd_like_specs_triton(gen, shape, split):
    _check_triton(gen, shape, split)


@PROPERTY
@given(gen=dense_specs(), shape=shapes)
def test_random_dense_specs_triton(gen, shape):
    _check_triton(gen, shape, False)
