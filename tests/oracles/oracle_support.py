"""Shared helpers of the oracle tests (not a test module): load a spec's SymPy IR, draw float64 parameters, and run
the float64 reference recurrence with the parameters written out by hand in a test."""

from __future__ import annotations

from pathlib import Path

import torch

from dsfc.ir.lower import lower_to_sympy
from dsfc.lang.check import check_spec
from dsfc.lang.parse import parse_file
from dsfc.reference import reference_forward

SPECS = Path(__file__).resolve().parents[2] / "specs"
F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
BATCH, T = 2, 7

_CACHE: dict[str, object] = {}


def load(name: str):
    if name not in _CACHE:
        _CACHE[name] = lower_to_sympy(check_spec(parse_file(str(SPECS / name))))
    return _CACHE[name]


def randn(gen: torch.Generator, *shape, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale + shift


def check_param_names(sym, params: dict[str, torch.Tensor], dims: dict[str, int]):
    """The params written out by hand in a test must be exactly the spec's, with the spec's shapes."""
    assert set(params) == {p.tensor.name for p in sym.params}
    for p in sym.params:
        want = tuple(int(sym.subs_dims(a.extent, dims)) for a in p.tensor.axes)
        assert tuple(params[p.tensor.name].shape) == want, p.tensor.name


def run_dsfc(sym, overrides: dict[str, int], params, u, h0=None):
    dims = sym.dim_values(overrides)
    check_param_names(sym, params, dims)
    return reference_forward(sym, dims, params, u, initial_state=h0)
