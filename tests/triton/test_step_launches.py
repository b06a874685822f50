"""The number of aten ops and Triton launches of one decoding ``step`` on backend="triton": a structural bound (a
count, not a time: at T = 1 on a GPU each launch / non-view op costs ~5 us of host time whatever the maths, so the
count is what decides a decode step's speed). The counts are those measured when the per-step zero fill, the final
state copy and einsum's permutes around the projections were removed, then D u moved into the diagonal kernel, SSD's
state transposes, its group index and the outer paths' state copies and unread lets removed (README "Decoding"); a
regression that adds an op per step fails here. Correctness of the same steps: tests/e2e/test_step_path.py,
tests/triton/test_step_trim.py.

Counted with benchmarks/step_overhead.py's ``count_ops`` (a TorchDispatchMode and a hook on the kernels' launcher),
check_finite off (its one host read per check is a documented, switchable cost)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from tests.triton._device import DEVICE  # (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from step_overhead import count_ops, kernel_ops  # noqa: E402

# spec: (dims, most aten ops of a step, most non-view ops, Triton launches), fp32, batch 1, check_finite off.
# S6's 6 non-view ops: its four projections (mm) and the kernel's two output buffers (D u is added in the kernel;
# before: 32 / 8, D u was a mul and an add). SSD: 84 / 21 before (a clone of the transposed state in, a copy out,
# the head -> group index built twice per step: arange and floor_divide each); GLA 97 / 15 (the final state's copy,
# the let alpha that the Triton path never reads: logsigmoid, mul, exp); DeltaNet 113 / 40 (the copy, and 4 ops less
# in each of its two L2 normalisations: the scale's clamp, the division by it). SSD 77 -> 87 with the fused streams
# (2026-11-29): the module hands the v factor, D and the skip term to the launcher as views (3 expands) and the
# launcher's dtype promotion reads them (promote_types); views and dtype queries only, the non-view ops stay 15 (the
# decode step repeats the groups' rows with a cached index, as the module's cached_index did: no arange, no clone).
BOUNDS = {
    "s6": ({"d": 8, "n": 4, "r": 2}, 30, 6, 1),
    "rg_lru": ({"W": 8, "nh": 2}, 47, 4, 1),
    "ssd": ({"H": 4, "P": 2, "n": 4, "G": 2}, 87, 15, 1),
    "gla": ({"d": 8, "H": 2, "K": 4, "V": 4, "R": 2}, 93, 11, 1),
    "deltanet": ({"d": 8, "H": 2, "K": 4, "V": 4}, 104, 31, 1),
}


@pytest.mark.parametrize("name", list(BOUNDS))
def test_triton_step_issues_one_launch_and_few_ops(name):
    dims, most_ops, most_kernel_ops, launches = BOUNDS[name]
    mod = importlib.import_module(f"generated.{name}")
    cls = next(v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == mod.__name__)
    torch.manual_seed(0)
    model = cls(**dims, backend="triton").to(DEVICE)
    model.check_finite = False
    u_t = torch.randn(1, model._in_features(), device=DEVICE)
    with torch.no_grad():
        _, state = model.step(u_t)
        model.step(u_t, state)  # any first-call choice (autochoice timing on a GPU) is made
        ops, n_launch = count_ops(lambda: model.step(u_t, state))
    assert n_launch == launches, f"{name}: {n_launch} Triton launches per step, want {launches}"
    assert kernel_ops(ops) <= most_kernel_ops, f"{name}: {dict(ops)}"
    assert sum(ops.values()) <= most_ops, f"{name}: {dict(ops)}"
    # no fill, no state copy (in or out), no index built per step
    assert not {"zeros", "_to_copy", "copy_", "clone", "arange"} & set(ops), dict(ops)
    # the same step, checks on: one host read more (the finite check of u, the parameters and the state)
    model.check_finite = True
    with torch.no_grad():
        ops_checked, _ = count_ops(lambda: model.step(u_t, state))
    assert ops_checked["_local_scalar_dense"] == 2  # the input check and the output NaN check: one read each


def test_step_state_is_its_own_tensor():
    """The final state is no longer copied once more: it must still be a fresh tensor (not the caller's state, not
    a view of a buffer the next step refills)."""
    mod = importlib.import_module("generated.s6")
    model = mod.S6(d=4, n=3, r=2, backend="triton").to(DEVICE)
    u_t = torch.randn(2, 4, device=DEVICE)
    with torch.no_grad():
        _, s1 = model.step(u_t)
        keep = s1.clone()
        _, s2 = model.step(u_t, s1)
        _, s3 = model.step(u_t, s2)
    assert s2.data_ptr() not in (s1.data_ptr(), s3.data_ptr()) and s2.is_contiguous()
    assert s2._base is None or s2._base.numel() == s2.numel()  # (a reshape of the kernel's [B, N] buffer)
    assert torch.equal(s1, keep)
