"""The StructureReport's claims hold numerically, for every catalog spec, every user spec of the e2e tests and random
specs (tests/e2e/spec_gen.py): the generated module (float64, small dims, its own init and a perturbed one) is fed
inputs at several scales, large ones saturating gates, and ``dsf_matrices(u)`` is checked against each claim:

* A's kind: zero off the diagonal axes; on a diagonal A, the decay constant along the axes it does not depend on
  ("scalar per group"), over the whole state ("scalar"), and A = I ("identity");
* time invariance: A (every matrix, where the spec is time-invariant) equal across steps and inputs;
* B u an outer product: for some split of the state axes into group, key and value axes, every group's [key, value]
  matrix of B u has rank 1;
* D absent: D = 0;
* a proven eigenvalue bound: every eigenvalue of every sampled A_t has |lambda| <= 1 (float64 rounding aside); a
  proven "|lambda| > 1": some sample has it. "not proven <= 1" and "unknown" claim nothing to check.

A claim that fails here is an analysis bug, not a tolerance to loosen.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from dsf_testing import F64, build  # noqa: E402
from spec_gen import any_specs  # noqa: E402

from dsfc.analysis.facts import AKind, BForm, Bound, Family  # noqa: E402
from dsfc.check import small_dims  # noqa: E402
from dsfc.codegen import emit  # noqa: E402
from dsfc.ir import lower  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

SCALES = (0.1, 1.0, 10.0, 300.0)  # 300: every sigmoid / softplus / exp gate saturated
EIG_TOL = 1e-9
USER_MODULES = ("test_user_specs", "test_user_specs_2", "test_user_specs_3", "test_user_specs_4", "test_user_specs_5",
                "test_user_specs_6", "test_user_specs_7")


def _user_specs() -> dict[str, str]:
    """Every spec text the user-spec tests define at module level (a string with a model line and an A entry)."""
    out, seen = {}, set()
    for mod_name in USER_MODULES:
        mod = importlib.import_module(mod_name)
        for key, value in vars(mod).items():
            if isinstance(value, str) and "model " in value and "\nA[" in value and value not in seen:
                seen.add(value)
                out[f"{mod_name}.{key}"] = value
    return out


USER = _user_specs()
CATALOG = {p.stem: p.read_text() for p in sorted((ROOT / "specs").glob("*.dsf"))}


@pytest.fixture(autouse=True, scope="module")
def fast_codegen():
    """Skip black, re-parsing the templates and the per-element check of constant initialisers (it only rejects
    specs; tests/lang covers it): the generated code's semantics do not depend on them."""
    stub = types.SimpleNamespace(format_str=lambda source, mode: source, Mode=lambda **kw: None,
                                 InvalidInput=emit.black.InvalidInput)
    mp = pytest.MonkeyPatch()
    mp.setattr(emit, "black", stub)
    mp.setattr(emit, "_env", functools.lru_cache(maxsize=None)(emit._env))
    mp.setattr(lower._Lowering, "check_init_values", lambda *args: None)
    yield
    mp.undo()


def _compile(text: str, name: str):
    try:
        return compile_text(text, f"{name.replace('.', '_')}.dsf")
    except Exception as exc:  # noqa: BLE001 - a text that is not meant to compile (templates, error cases)
        pytest.skip(f"does not compile: {type(exc).__name__}")


def _samples(model, d_in: int, gen: torch.Generator, batch: int = 2, T: int = 4):
    """(scale, A, B, C, D, x) per input scale, x what B and D multiply (the driven input)."""
    for scale in SCALES:
        u = scale * torch.randn(batch, T, d_in, generator=gen, dtype=F64)
        with torch.no_grad():
            mats = model.dsf_matrices(u)
            x = model.driven_input(u) if hasattr(model, "driven_input") else u
        yield scale, *mats, x


def _finite(*ts) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts)


def _rank_one_split(bu: torch.Tensor, shape: tuple[int, ...]):
    """A split of the state axes (group, key, value; key and value non-empty) in which every group's [key, value]
    matrix of every sample of bu [S, N] has rank <= 1, or None."""
    k = len(shape)
    bu = bu.reshape(-1, *shape)
    for roles in itertools.product((0, 1, 2), repeat=k):
        if 1 not in roles or 2 not in roles:
            continue
        g = [i for i in range(k) if roles[i] == 0]
        a = [i for i in range(k) if roles[i] == 1]
        b = [i for i in range(k) if roles[i] == 2]
        mats = bu.permute(0, *[i + 1 for i in g + a + b])
        mats = mats.reshape(-1, _prod(shape[i] for i in a), _prod(shape[i] for i in b))
        sv = torch.linalg.svdvals(mats)
        if sv.shape[-1] < 2 or bool((sv[:, 1] <= 1e-9 * sv[:, 0].clamp_min(1e-300)).all()):
            return g, a, b
    return None


def _spectral_radius(A: torch.Tensor, shape, diag_axes) -> float:
    """max |lambda| over the A_t, computed per block of the mixed axes (the diagonal axes' deltas checked above)."""
    if A.shape[-1] == 0:
        return 0.0
    if diag_axes:  # [S, *rows, *cols] -> [S, diag rows, diag cols, mixed rows, mixed cols] -> blocks
        k = len(shape)
        mixed = [i for i in range(k) if i not in diag_axes]
        p, m = _prod(shape[i] for i in diag_axes), _prod(shape[i] for i in mixed)
        a = A.reshape(-1, *shape, *shape)
        order = [1 + i for i in diag_axes] + [1 + k + i for i in diag_axes] + [1 + i for i in mixed] \
            + [1 + k + i for i in mixed]
        a = a.permute(0, *order).reshape(-1, p, p, m, m)
        A = torch.diagonal(a, dim1=1, dim2=2).movedim(-1, 1).reshape(-1, m, m)
    else:
        A = A.reshape(-1, A.shape[-1], A.shape[-1])
    lam = torch.linalg.eigvals(A).abs()
    return float(lam.max()) if lam.numel() else 0.0


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def check_claims(result, dims: dict[str, int], seed: int = 0) -> dict[str, bool]:
    """Check every numerically checkable claim of ``result.report`` on its module at ``dims``; returns which
    eigenvalue facts were seen (for the wording of unproven bounds)."""
    rep = result.report
    built = build(result, dims, seed=seed)
    model = built.model
    sym = result.core or result.sym
    quadratic = rep.family == Family.QUADRATIC.value  # dsf_matrices in the slot basis: no state axes to check
    shape = () if quadratic else tuple(int(sym.subs_dims(x.extent, built.all_dims)) for x in sym.state.axes)
    names = [x.name or f"axis{k}" for k, x in enumerate(sym.state.axes)]
    axes_of = lambda key: [names.index(n) for n in rep.a_axes[key]]  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    seen = {"exceeds": False, "checked": False}
    for perturb in (0.0, 0.5):
        if perturb:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(perturb * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for scale, A, B, C, D, x in _samples(model, built.d_in(), gen):
            where = f"{result.spec.path} perturb={perturb} scale={scale}"
            n = A.shape[-1]
            if not _finite(A):
                continue
            seen["checked"] = True
            if not quadratic:
                a = A.reshape(*A.shape[:2], *shape, *shape)
                k = len(shape)
                for ax in axes_of("diagonal"):  # delta over this axis: zero wherever row != col
                    off = torch.arange(shape[ax]).view(-1, 1) != torch.arange(shape[ax]).view(1, -1)
                    view = [1] * (2 * k)
                    view[ax], view[k + ax] = shape[ax], shape[ax]
                    mask = off.view(view).expand(*shape, *shape)
                    assert bool((a[..., mask] == 0).all()), f"{where}: A not diagonal over {names[ax]}"
                if rep.a_kind in (AKind.IDENTITY.value, AKind.SCALAR.value, AKind.SCALAR_PER_GROUP.value,
                                  AKind.DIAGONAL.value):
                    diag = torch.diagonal(A, dim1=-2, dim2=-1).reshape(*A.shape[:2], *shape)
                    dep = set(axes_of("decay depends on"))
                    for ax in set(range(k)) - dep:  # constant along axes the decay does not depend on
                        first = diag.narrow(2 + ax, 0, 1)
                        assert bool((diag == first).all()), f"{where}: decay varies along {names[ax]} ({rep.a_kind})"
                    if rep.a_kind == AKind.IDENTITY.value:
                        assert bool((A == torch.eye(n, dtype=A.dtype)).all()), f"{where}: A != I"
            if not rep.a_time_varying:
                assert bool((A == A[:1, :1]).all()), f"{where}: A claimed input-independent but varies"
            if rep.time_invariant and _finite(B, C, D):
                for name, m in zip("BCD", (B, C, D)):
                    assert bool((m == m[:1, :1]).all()), f"{where}: {name} claimed time-invariant but varies"
            if not rep.d_present:
                assert bool((D == 0).all()), f"{where}: D claimed absent but nonzero"
            if rep.b_form == BForm.OUTER.value and not quadratic and _finite(B, x):
                bu = torch.einsum("btnd,btd->btn", B, x).reshape(-1, n)
                if bool((bu.abs().amax(-1) > 0).any()):
                    assert _rank_one_split(bu[bu.abs().amax(-1) > 0], shape) is not None, \
                        f"{where}: B u claimed an outer product, no split of the state axes gives rank 1"
            worst = _spectral_radius(A, shape, [] if quadratic else axes_of("diagonal"))
            seen["exceeds"] |= worst > 1 + EIG_TOL
            if rep.eigen_bound in (Bound.STABLE.value, Bound.MARGINAL.value):
                assert worst <= 1 + EIG_TOL, \
                    f"{where}: |lambda| = {worst} > 1 but the report proves {rep.eigen_bound} ({rep.eigen_reason})"
    assert seen["checked"], "no sample with a finite A"
    if rep.eigen_bound == Bound.EXCEEDS.value:
        assert seen["exceeds"], f"{result.spec.path}: the report proves |lambda| > 1, no sample has it"
    return seen


@pytest.mark.parametrize("name", list(CATALOG))
def test_catalog_claims(name):
    result = _compile(CATALOG[name], name)
    check_claims(result, small_dims(result))


@pytest.mark.parametrize("name", list(USER))
def test_user_spec_claims(name):
    result = _compile(USER[name], name)
    check_claims(result, small_dims(result))


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(gen=any_specs)
def test_random_spec_claims(gen):
    result = compile_text(gen.text, "gen.dsf")
    check_claims(result, small_dims(result))


def test_a_factor_over_both_axes_is_no_outer_product():
    """S6 with a bilinear discretisation: B u = dt[c] u[c] b[j] / (1 - dt[c] a[c, j] / 2). The factors over c and
    over j alone are not nested, but the last one ties (c, j): B u has full rank there, and was called an outer
    product (any two factors with non-nested dependences were enough)."""
    assert _compile(USER["test_user_specs_4.S6_BILINEAR"], "s6_bilinear").report.b_form != BForm.OUTER.value


EXCEEDS_SPEC = """
model Grow
dim d = 3
input u[d]
state h[c: d]
output y[d]
param g[d] ~ normal(0, 1)
A[c, c2] = delta(c, c2) * (1.5 + sigmoid(g[c]))
B[c, m] = delta(c, m)
C[o, c] = delta(o, c)
"""


@pytest.mark.parametrize("decay, want", [("(1.5 + sigmoid(g[c]))", Bound.EXCEEDS), ("exp(g[c] ^ 2)", Bound.UNBOUNDED)])
def test_unproven_and_proven_growth_are_told_apart(decay, want):
    """An interval above 1 proves growth ("|lambda| > 1"); one that reaches inf from below 1 proves nothing ("not
    proven <= 1", formerly "unbounded: can exceed 1" even where no eigenvalue can exceed 1, minLSTM's share)."""
    result = _compile(EXCEEDS_SPEC.replace("(1.5 + sigmoid(g[c]))", decay), "grow")
    assert result.report.eigen_bound == want.value, result.report.eigen_reason
    assert "can exceed 1" not in result.report.eigen_reason
    check_claims(result, {"d": 3})
