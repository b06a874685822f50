"""Property tests: random well-formed specs (tests/e2e/spec_gen.py) compile to modules that match the reference.

This is the evidence that the compiler is general rather than tuned to the four catalog specs: decays, gates,
feature maps, state ranks, B/C/D forms, readout modes and A structures are combined at random, and the generated
``forward``, ``step`` and ``dsf_matrices`` must agree with ``reference.py`` (dense matrices, one step at a time, float64)
to 1e-8 of the output scale.

15 examples per property by default (10-15 s each on 2 cores); for bug hunting run more, e.g.
``DSFC_PROPERTY_EXAMPLES=400 python -m pytest tests/e2e/test_properties.py``.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, Phase, assume, event, given, note, settings
from hypothesis import strategies as st

from dsf_testing import F64, build, rel_err, run_steps, state_err
from dsfc.lang.parse import parse_spec
from dsfc.pipeline import analyse, compile_text
from spec_gen import GenSpec, dense_specs, diagonal_specs, outer_specs, ssd_specs

TOL = 1e-8

# Local settings (no global profile: other test modules keep their own hypothesis defaults).
EXAMPLES = int(os.environ.get("DSFC_PROPERTY_EXAMPLES", "15"))
# derandomized: the same examples every CI run (a random one that fails once turns an unrelated change red);
# DSFC_PROPERTY_RANDOM=1 draws new ones. No explain phase: it traces every line of a failing example again, which
# under the Triton interpreter took CI's workers past their time limit
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("DSFC_PROPERTY_RANDOM"),
                    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

shapes = st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 5, 17, 70]), st.booleans(), st.integers(0, 2**16))


def _check_against_reference(gen: GenSpec, shape):
    batch, T, with_h0, seed = shape
    note(gen.text)
    note(f"labels={gen.labels} batch={batch} T={T} h0={with_h0} seed={seed}")
    result = compile_text(gen.text, "gen.dsf")
    event(f"{gen.kind} -> {result.report.family}")
    b = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}, seed=seed)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, T, b.d_in(), generator=g, dtype=F64)
    h0 = b.initial_state(batch, g) if with_h0 else None
    y_ref, h_ref = b.reference(u, h0)
    with torch.no_grad():
        y, hT = b.model(u, initial_state=h0, output_final_state=True)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= TOL, "forward y"
    assert state_err(hT, h_ref) <= TOL, "forward final state"
    ys, state = run_steps(b.model, u[:, :9], h0)
    y9, h9 = b.reference(u[:, :9], h0)
    assert rel_err(ys, y9) <= TOL, "step"
    assert state_err(state, h9) <= TOL, "step state"
    got = b.dsf_matrices(u[:, :3], h0)
    for name, x, w in zip("ABCD", got, b.dense(u[:, :3], h0)):
        assert x.shape == w.shape and rel_err(x, w) <= TOL, f"dsf_matrices {name}"
    _check_eigen_bound(result, b.dsf_matrices(u, h0)[0])
    return result


def _check_eigen_bound(result, A: torch.Tensor):
    """The proven bound holds at every step of this run: a claimed |lambda| < 1 is never met by an eigenvalue of
    modulus 1 (e.g. exp(-relu(x)) at x <= 0) and |lambda| <= 1 is never exceeded (beyond rounding)."""
    n = A.shape[-1]
    lam = torch.linalg.eigvals(A.reshape(-1, n, n)).abs().max().item()
    bound = result.report.eigen_bound
    note(f"max |lambda| over the run = {lam!r}; reported {bound}: {result.report.eigen_reason}")
    if bound == "|lambda| < 1":
        assert lam < 1, "eigenvalue bound |lambda| < 1 violated"
    elif bound == "|lambda| <= 1":
        assert lam <= 1 + 1e-9, "eigenvalue bound |lambda| <= 1 violated"


@PROPERTY
@given(gen=diagonal_specs(), shape=shapes)
def test_random_diagonal_specs_match_reference(gen, shape):
    result = _check_against_reference(gen, shape)
    assert not result.structure.a.mixed_axes  # every state axis carries a delta by construction
    assert result.report.family in ("diagonal scan", "chunked outer-product scan")


@PROPERTY
@given(gen=outer_specs(), shape=shapes)
def test_random_outer_product_specs_match_reference(gen, shape):
    result = _check_against_reference(gen, shape)
    if gen.labels.get("readout") != "pre" and gen.labels["decay"] != "value":
        # post-update readout, decay constant along the value axis: the linear-attention form must be found
        assert result.report.family == "chunked outer-product scan", result.report.family_reason


@PROPERTY
@given(gen=dense_specs(), shape=shapes)
def test_random_dense_specs_match_reference(gen, shape):
    result = _check_against_reference(gen, shape)
    delta_rule = gen.labels["A"] in ("delta_rule", "gated_delta_rule")
    if delta_rule and gen.labels["write"] != "other_key":
        assert result.report.family == "chunked delta-rule scan", result.report.family_reason
    elif delta_rule:
        # B writes a key other than A's: not the WY delta rule, but diag(s) + x y^T with any rank-1 vectors
        assert result.report.family == "chunked diagonal-plus-rank-1 scan", result.report.family_reason
    else:
        assert result.report.family == "dense scan", result.report.family_reason
    if delta_rule:
        assert result.report.a_low_rank
        assert result.report.a_kind == "block-diagonal"
    elif gen.labels["A"] in ("param", "kronecker", "toeplitz"):
        assert not result.report.a_low_rank  # a general matrix is not identity minus rank one


@PROPERTY
@given(gen=ssd_specs(), shape=shapes)
def test_random_ssd_like_specs_match_reference(gen, shape):
    result = _check_against_reference(gen, shape)
    if gen.labels.get("readout") != "pre":
        assert result.report.family == "chunked outer-product scan", result.report.family_reason


@settings(PROPERTY, max_examples=max(1, EXAMPLES // 3))
@given(gen=st.one_of(diagonal_specs(), outer_specs(), dense_specs(), ssd_specs()), T=st.sampled_from([3, 70]),
       seed=st.integers(0, 2**16))
def test_random_spec_gradients_match_reference(gen, T, seed):
    """Autograd through the structured algorithm (chunked scans included, T = 70) == through the reference loop."""
    from torch.func import functional_call

    from dsfc.codegen.plan import py_name
    from dsfc.reference import reference_forward

    note(gen.text)
    result = compile_text(gen.text, "gen.dsf")
    b = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}, seed=seed)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2, T, b.d_in(), generator=g, dtype=F64)
    names = [n for n, _ in b.model.named_parameters()]
    grads, weights = [], None
    for run in ("module", "reference"):
        uu = u.clone().requires_grad_()
        ps = {n: p.detach().clone().requires_grad_() for n, p in b.model.named_parameters()}
        if run == "module":
            y, s = functional_call(b.model, ps, (uu,), {"output_final_state": True})
        else:
            y, s = reference_forward(b.sym, b.all_dims, {p.tensor.name: ps[py_name(p.tensor.name)]
                                                         for p in b.sym.params}, uu)
        outs = (y, *([s[k] for k in sorted(s)] if isinstance(s, dict) else [s]))
        weights = weights or [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
        loss = sum((o.reshape(w.shape) * w).sum() for o, w in zip(outs, weights))
        grads.append(torch.autograd.grad(loss, [uu, *[ps[n] for n in names]], allow_unused=True))
    for label, a, c in zip(["u", *names], *grads):
        a = torch.zeros(()) if a is None else a
        c = torch.zeros(()) if c is None else c
        assert rel_err(a, c) <= 1e-7, label


@settings(PROPERTY, max_examples=max(1, EXAMPLES // 3))
@given(gen=st.one_of(diagonal_specs(), outer_specs(), dense_specs(), ssd_specs()),
       scale=st.sampled_from([30.0, 300.0]), seed=st.integers(0, 2**16))
def test_random_specs_with_saturated_gates_stay_finite(gen, scale, seed):
    """Inputs scaled far out (gates saturate, decays underflow in fp32 and even in float64): the fp32 module's torch
    path gives finite outputs and gradients wherever the float64 reference's are finite and below 1e30 (past that,
    fp32's own range ends). Catches log(0), 0 * inf and exp overflow in the generated maths; values are checked by
    the other properties, at ordinary scales. Left out: the normalised form (A = eta_prev / eta), whose normaliser
    of features that all round to 0 in fp32 (elu(x) + 1 at x < -17) is 0 / 0 there, float64 having the range."""
    from torch.func import functional_call

    assume(gen.labels.get("decay") != "normalized")

    from dsfc.codegen.plan import py_name
    from dsfc.reference import reference_forward

    note(gen.text)
    result = compile_text(gen.text, "gen.dsf")
    b = build(result, {k: result.sym.dim_defaults[k] for k in result.sym.free_dims}, seed=seed)
    b.model.check_finite = False  # raw outputs: a NaN where the reference's is NaN too is skipped below, not an error
    g = torch.Generator().manual_seed(seed)
    u = scale * torch.randn(2, 21, b.d_in(), generator=g, dtype=F64)
    names = [n for n, _ in b.model.named_parameters()]
    runs = {}
    for run, dtype in (("module", torch.float32), ("reference", F64)):
        uu = u.to(dtype).requires_grad_()
        ps = {n: p.detach().to(dtype).requires_grad_() for n, p in b.model.named_parameters()}
        if run == "module":
            y = functional_call(b.model.to(dtype), ps, (uu,))
        else:
            y, _ = reference_forward(b.sym, b.all_dims, {p.tensor.name: ps[py_name(p.tensor.name)]
                                                         for p in b.sym.params}, uu)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype)
        grads = torch.autograd.grad((y.reshape(w.shape) * w).sum(), [uu, *[ps[n] for n in names]], allow_unused=True)
        runs[run] = [y.detach(), *grads]
    for label, a, c in zip(["y", "u", *names], runs["module"], runs["reference"]):
        if c is None or not torch.isfinite(c).all() or c.abs().max() > 1e30:
            continue
        assert a is not None and torch.isfinite(a).all(), f"{label}: non-finite in fp32 where float64 is finite"

# -- the same system, written with a dense A ---------------------------------------------------------------------

# Two ways to hide the deltas of a diagonal A from the structure analysis without changing its value:
#  * "abs":   delta(c, c2) written as 1 - min(abs(c - c2), 1) (equal on integers; uses indices as values);
#  * "param": delta(c, c2) replaced by a parameter E[c, c2] initialised to delta(c, c2) (the identity matrix).
_HIDE = {
    "abs": lambda n: f"(1 - min(abs({n} - {n}2), 1))",
    "param": lambda n: f"E_{n}[{n}, {n}2]",
}


def _densify(gen: GenSpec, how: str, which: list[str]) -> str:
    lines = gen.text.splitlines()
    out = []
    for line in lines:
        if line.startswith("A["):
            for n in which:
                line = line.replace(f"delta({n}, {n}2)", _HIDE[how](n))
        out.append(line)
    text = "\n".join(out) + "\n"
    if how == "param":
        state = next(x for x in lines if x.startswith("state "))
        extents = dict(p.split(": ") for p in state[state.index("[") + 1: state.rindex("]")].split(", "))
        decls = "".join(f"param E_{n}[{n}: {extents[n]}, {n}2: {extents[n]}] = delta({n}, {n}2)\n" for n in which)
        text = text.replace("\nA[", "\n" + decls + "A[", 1)
    return text


@settings(PROPERTY, max_examples=max(1, EXAMPLES * 2 // 3))  # two compilations per example
@given(gen=st.one_of(diagonal_specs(), outer_specs(), ssd_specs()), how=st.sampled_from(sorted(_HIDE)),
       data=st.data())
def test_diagonal_spec_rewritten_with_dense_A_gives_the_same_output(gen, how, data):
    rows = [line for line in gen.text.splitlines() if line.startswith("A[")][0]
    names = [n for n in ("c", "j", "l", "h", "a", "b", "p") if f"delta({n}, {n}2)" in rows]
    which = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="hidden deltas")
    dense_text = _densify(gen, how, which)
    note(gen.text)
    note(dense_text)
    diag = compile_text(gen.text, "diag.dsf")
    dense = compile_text(dense_text, "dense.dsf")
    assert dense.report.family == "dense scan"
    assert sorted(dense.report.a_axes["mixed"]) == sorted(which)
    event(f"{diag.report.family} vs dense ({how})")

    dims = {k: diag.sym.dim_defaults[k] for k in diag.sym.free_dims}
    m1, m2 = build(diag, dims, seed=1), build(dense, dims, seed=1)
    p2 = dict(m2.model.named_parameters())
    with torch.no_grad():  # same parameter values; the extra E_* params stay at their identity initialisation
        for name, p in m1.model.named_parameters():
            p2[name].copy_(p)
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 19, m1.d_in(), generator=g, dtype=F64)
    h0 = m1.initial_state(2, g)
    with torch.no_grad():
        y1, s1 = m1.model(u, initial_state=h0, output_final_state=True)
        y2, s2 = m2.model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y2, y1) <= TOL
    assert state_err(s2, s1) <= TOL


# -- stability facts hold by construction ------------------------------------------------------------------------

_STABLE_DECAYS = [
    "sigmoid({X})",
    "exp(-softplus({X}))",
    "exp(-softplus({X}) * exp({P}))",
    "1 - sigmoid({X})",
    "tanh({X})",
    "{c} * sigmoid({X})",
    "exp(-{c} - relu({X}))",
]


@settings(PROPERTY, max_examples=15)
@given(form=st.sampled_from(_STABLE_DECAYS), c=st.sampled_from(["0.5", "0.99", "0.1"]))
def test_random_contracting_diagonal_is_reported_stable(form, c):
    decay = form.format(X="x[c]", P="p[c]", c=c)
    text = f"""
dim d = 3
input u[d]
state h[c: d]
param p[d] ~ normal(0, 1)
param w[d] ~ normal(0, 1)
let x[c: d] = w[c] * u[c]
A[c, c2] = delta(c, c2) * ({decay})
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
"""
    r = analyse(parse_spec(text, "x.dsf"))[3]  # analysis only: no code generation needed
    assert r.eigen_bound == "|lambda| < 1", (decay, r.eigen_reason)
