"""The generated constructor checks its dims as the front end checks the defaults: a subscript that leaves its axis
(``h // R`` past the groups, ``(h + 1) % M`` past a table) is a ValueError naming it, raised when the module is built
rather than an IndexError (or a silently wrong gather) in forward. Catalog: the constructor refuses exactly the dims
at which ``spec_errors_at`` (the front end at those dims) reports an error."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest
import torch

from dsf_testing import F64, build, rel_err
from dsfc.check import load_module, small_dims, spec_errors_at
from dsfc.codegen.plan import constructor_kwargs
from dsfc.pipeline import compile_spec, compile_text

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.dsf"))
TOL = 1e-8

# heads share a decay per group (h // R: R heads a group) and read the input through a flat index h * P + p
GROUPED = """
model Grouped "heads sharing a decay group"
dim H = 4
dim P = 2
dim G = 2
dim R = 2
input u[d: H * P]
state S[h: H, p: P]
param a_log[g: G] = -1 - g
param w[h: H, p: P] ~ normal(0, 1)
let x[h: H, p: P] = u[h * P + p] * w[h, p]
A[(h, p), (h2, p2)] = delta(h, h2) * delta(p, p2) * exp(a_log[h // R])
B[(h, p), (h2, p2)] = delta(h, h2) * delta(p, p2)
C[o, (h, p)] = delta(o, h * P + p)
drive x
"""

# a table read at (h + 1) % M: no closed form for its range (which residues h + 1 reaches depends on H and M), so
# the constructor enumerates its values as the front end does
CYCLIC = """
model Cyclic "a per-head decay read from a table of M entries at (h + 1) % M"
dim H = 3
dim M = 2
dim T = 2
input u[H]
state h[c: H]
param a_log[m: T] = -1 - m
A[c, c2] = delta(c, c2) * exp(a_log[(c + 1) % M])
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
"""

# a sum index of extent K over an axis of d: the two must agree
MATCHED = """
model Matched "a projection summed over K entries of an input of width d"
dim d = 4
dim K = 4
input u[d]
state h[c: d]
param W[c: d, m: d] ~ normal(0, 1)
let x[c: d] = sum(m: K, W[c, m] * u[m])
A[c, c2] = delta(c, c2) * 0.5
B[c, c2] = delta(c, c2)
C[o, c] = delta(o, c)
drive x
"""


@functools.lru_cache(maxsize=None)
def _compiled(text: str, path: str):
    return compile_text(text, path)


def _matches_reference(built) -> None:
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 5, built.d_in(), generator=gen, dtype=F64)
    h0 = built.initial_state(2, gen)
    y_ref, h_ref = built.reference(u, h0)
    with torch.no_grad():
        y, hT = built.model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_ref) < TOL and rel_err(hT.reshape(2, -1), h_ref.reshape(2, -1)) < TOL


@pytest.mark.parametrize("dims", [dict(H=6, P=3, G=3, R=2), dict(H=5, P=1, G=2, R=3), dict(H=2, P=2, G=1, R=4)])
def test_grouped_spec_at_valid_other_dims_matches_the_reference(dims):
    result = _compiled(GROUPED, "grouped.dsf")
    assert spec_errors_at(result, dims) is None
    _matches_reference(build(result, dims))


def test_grouped_spec_at_invalid_dims_fails_at_construction_naming_the_subscript():
    result = _compiled(GROUPED, "grouped.dsf")
    dims = dict(H=6, P=3, G=2, R=2)  # heads 4 and 5 fall in group 2 of 2
    assert spec_errors_at(result, dims) is not None
    with pytest.raises(ValueError) as err:
        build(result, dims)
    message = str(err.value)
    assert message.startswith("Grouped: at H=6, P=3, G=2, R=2: "), message
    assert "subscript h // R (axis 0 of 'a_log', spec line 12) reaches 2" in message
    assert "the axis has 2 entries" in message


def test_a_subscript_without_closed_form_is_enumerated_exactly():
    result = _compiled(CYCLIC, "cyclic.dsf")
    assert "check_subscript_values(" in result.source
    # (c + 1) % 5 for c < 1 is 1 only: inside the table of 2, although % 5 could reach 4
    assert spec_errors_at(result, dict(H=1, M=5, T=2)) is None
    _matches_reference(build(result, dict(H=1, M=5, T=2)))
    assert spec_errors_at(result, dict(H=3, M=5, T=2)) is not None
    with pytest.raises(ValueError, match=re.escape("subscript (c + 1) % M (axis 0 of 'a_log', spec line 9) "
                                                   "reaches 3, but the axis has 2 entries")):
        build(result, dict(H=3, M=5, T=2))


def test_a_sum_index_must_range_over_its_axis():
    result = _compiled(MATCHED, "matched.dsf")
    _matches_reference(build(result, dict(d=3, K=3)))
    assert spec_errors_at(result, dict(d=3, K=2)) is not None
    with pytest.raises(ValueError, match=re.escape("Matched: at d=3, K=2: index m (axis 1 of 'W', spec line 8) "
                                                   "ranges over 2 values, but the axis has 3 entries")):
        build(result, dict(d=3, K=2))


def test_a_derived_dim_must_stay_positive():
    text = GROUPED.replace("dim R = 2", "dim R = H - 2")
    result = _compiled(text, "shrunk.dsf")
    assert spec_errors_at(result, dict(H=2, P=1, G=1)) is not None
    with pytest.raises(ValueError, match=re.escape("at H=2, P=1, G=1: dim R = H - 2 must be a positive integer")):
        build(result, dict(H=2, P=1, G=1))


# -- the catalog ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _catalog(path: Path):
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = compile_spec(path.relative_to(ROOT).as_posix())
    finally:
        os.chdir(cwd)
    return result, getattr(load_module(result, f"dsfc_dims_{result.module_name}"), result.plan.model)


def _dims_to_try(result) -> list[dict[str, int]]:
    """The defaults, ``dsfc check``'s small dims, and each free dim of those moved to 1 or one up."""
    sym = result.sym
    small = small_dims(result)
    out = [{k: sym.dim_defaults[k] for k in sym.free_dims}, small]
    for k in sym.free_dims:
        out += [{**small, k: 1}, {**small, k: small[k] + 1}]
    return out


def _refuses(cls, dims) -> str | None:
    """The constructor's ValueError at ``dims`` (on the meta device: shapes only, nothing allocated), or None."""
    try:
        cls(**constructor_kwargs(dims), device="meta")
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_catalog_constructor_refuses_exactly_the_dims_the_front_end_refuses(path):
    result, cls = _catalog(path)
    for dims in _dims_to_try(result):
        front_end, constructor = spec_errors_at(result, dims), _refuses(cls, dims)
        if constructor is not None and ("initialiser" in constructor or "initial values" in constructor):
            continue  # initial values (rwkv6's (layer - 1) / (L - 1) at L = 1) are not the front end's dims checks
        assert (front_end is None) == (constructor is None), (dims, front_end, constructor)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_catalog_builds_at_small_dims(path):
    result, cls = _catalog(path)
    cls(**constructor_kwargs(small_dims(result)), dtype=F64)
