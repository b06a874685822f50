"""End to end, every spec of the catalog: compile, import the generated module, run it against ``reference.py``.

The float64 reference (dsfc/reference.py) builds the dense A_t, B_t, C_t, D_t of every step from the SymPy IR and
loops over t; the generated module runs the structured algorithm (diagonal scan, chunked outer-product scan or
dense block scan). Both compute the same real numbers in float64 with a different order of operations, so they must
agree to ``TOL64`` relative to the output scale (rounding of a length-63 recurrence over O(1) values is ~1e-14).

Dims are the small ones of ``dsfc.check.small_dims`` (5 and 3 here: odd, not powers of two). Sequences have T = 1 and
T = 63 (odd, one short of the scans' chunk length 64), and T = 130 once (three chunks, the last one ragged) so that
the chunked paths of ``diagonal_scan`` and ``chunked_outer_scan`` run too.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from dsf_testing import F64, Built, build, h_of, map_state, rel_err, run_steps, state_err
from dsfc.check import small_dims
from dsfc.pipeline import compile_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.dsf"))
SPEC_IDS = [p.stem for p in SPECS]
TOL64 = 1e-8
SHAPES = [(1, 1), (3, 1), (1, 63), (3, 63)]  # (batch, T)


@pytest.fixture(scope="module", params=SPECS, ids=SPEC_IDS)
def built(request) -> Built:
    """The spec compiled from the repository root (so the stamp reads specs/<name>.dsf) and built at small dims."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = compile_spec(request.param.relative_to(ROOT).as_posix())
    finally:
        os.chdir(cwd)
    if result.structure.family.value == "quadratic attention":
        pytest.skip("infinite state (quadratic attention): no dense h, no dsfc reference recurrence at fixed N; "
                    "covered by tests/e2e/test_softmax_attention.py (SDPA oracle, KV cache, slot-form dsf_matrices)")
    return build(result, small_dims(result))


def _inputs(b: Built, batch: int, T: int, seed: int = 1):
    """u [batch, T, d] and an initial state (a tensor, or a dict for specs with running quantities)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, T, b.d_in(), generator=g, dtype=F64)
    return u, b.initial_state(batch, g)


def _with_h(state, h):
    """The state with its recurrent part replaced by ``h`` (running quantities kept)."""
    return {**state, "h": h} if isinstance(state, dict) else h


def _batch(x, b: int):
    """The first ``b`` sequences of a tensor, of a state dict, or None."""
    return map_state(x, lambda t: t[:b])


@pytest.fixture(scope="module")
def cases(built: Built):
    """Reference runs shared by the tests of one spec: (T, with_h0) -> (u, h0, y_ref, final_ref) at batch 3.

    The reference treats every sequence of a batch on its own, so batch 1 is the first row of these (sliced, not
    recomputed); the module itself is always run at the batch size under test.
    """
    memo = {}

    def get(T: int, with_h0: bool):
        if (T, with_h0) not in memo:
            u, h0 = _inputs(built, 3, T)
            h0 = h0 if with_h0 else None
            memo[T, with_h0] = (u, h0, *built.reference(u, h0))
        return memo[T, with_h0]

    return get


def test_catalog_is_not_empty():
    assert SPECS, "no specs found under specs/"


# -- float64 agreement with the reference ------------------------------------------------------------------------


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("batch,T", SHAPES, ids=[f"B{b}-T{t}" for b, t in SHAPES])
def test_forward_matches_reference(built: Built, cases, batch, T, with_h0):
    u, h0, y_ref, h_ref = (_batch(x, batch) for x in cases(T, with_h0))
    with torch.no_grad():
        y, hT = built.model(u, initial_state=h0, output_final_state=True)
        y_only = built.model(u, initial_state=h0)
    assert y.shape == (batch, T, built.d_out()) and y.dtype == F64
    assert h_of(hT).shape == (batch, *built.state_shape())
    assert rel_err(y, y_ref) <= TOL64
    assert state_err(hT, h_ref) <= TOL64
    assert torch.equal(y_only, y)


def test_long_sequence_crosses_chunks(built: Built):
    u, h0 = _inputs(built, 2, 130, seed=4)
    y_ref, h_ref = built.reference(u, h0)
    with torch.no_grad():
        y, hT = built.model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_ref) <= TOL64
    assert state_err(hT, h_ref) <= TOL64


def test_flat_initial_state_is_accepted(built: Built):
    u, h0 = _inputs(built, 3, 5)
    with torch.no_grad():
        y1, s1 = built.model(u, initial_state=h0, output_final_state=True)
        y2, s2 = built.model(u, initial_state=_with_h(h0, h_of(h0).reshape(3, -1)), output_final_state=True)
    assert torch.equal(y1, y2) and state_err(s1, s2) == 0


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
def test_step_matches_forward(built: Built, cases, with_h0):
    u, h0, y_ref, h_ref = cases(63, with_h0)
    with torch.no_grad():
        y, hT = built.model(u, initial_state=h0, output_final_state=True)
    ys, state = run_steps(built.model, u, h0)
    assert rel_err(ys, y) <= TOL64
    assert state_err(state, hT) <= TOL64
    assert rel_err(ys, y_ref) <= TOL64
    assert state_err(state, h_ref) <= TOL64


def test_chunked_forward_composes(built: Built, cases):
    """forward over [0, T) == forward over [0, t) then [t, T) from the carried state (state layout round-trips)."""
    u, h0, y, hT = cases(63, True)
    with torch.no_grad():
        y1, h1 = built.model(u[:, :20], initial_state=h0, output_final_state=True)
        y2, h2 = built.model(u[:, 20:], initial_state=h1, output_final_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) <= TOL64
    assert state_err(h2, hT) <= TOL64


@pytest.mark.parametrize("batch,T", [(1, 1), (3, 7)])
def test_dsf_matrices_equal_dense_reference(built: Built, batch, T):
    u, h0 = _inputs(built, batch, T)
    got = built.dsf_matrices(u, h0)
    want = built.dense(u, h0)
    assert len(got) == 4
    for name, g, w in zip("ABCD", got, want):
        assert g.shape == w.shape, name
        assert rel_err(g, w) <= TOL64, name


def test_dsf_matrices_of_an_empty_sequence_are_empty(built: Built):
    """T = 0: four matrices with no steps, shaped as one step's (running lets cannot be evaluated on no steps)."""
    u, h0 = _inputs(built, 2, 1)
    one = built.dsf_matrices(u, h0)
    none = built.dsf_matrices(u[:, :0], h0)
    assert len(none) == 4
    for name, a, b in zip("ABCD", one, none):
        assert b.shape == (2, 0, *a.shape[2:]) and b.dtype == a.dtype, name


def test_empty_sequence_returns_initial_state(built: Built):
    _, h0 = _inputs(built, 3, 1)
    u = torch.zeros(3, 0, built.d_in(), dtype=F64)
    with torch.no_grad():
        y, hT = built.model(u, initial_state=h0, output_final_state=True)
        y0, hz = built.model(u, output_final_state=True)
    assert y.shape == (3, 0, built.d_out()) and y.dtype == F64
    assert state_err(hT, h0) == 0
    assert y0.shape == (3, 0, built.d_out())
    assert torch.count_nonzero(h_of(hz)) == 0
    y_ref, h_ref = built.reference(u, h0)  # the reference agrees (and runs) at T = 0
    assert y_ref.shape == y.shape and state_err(hT, h_ref) == 0


# -- bad inputs ----------------------------------------------------------------------------------------------------


def test_wrong_feature_dim_is_a_value_error_naming_the_shape(built: Built):
    d = built.d_in()
    u = torch.randn(2, 4, d + 1, dtype=F64)
    with pytest.raises(ValueError, match=rf"\[batch, time, {d}\].*\(2, 4, {d + 1}\)"):
        built.model(u)


def test_two_dim_input_is_a_value_error(built: Built):
    with pytest.raises(ValueError, match="expected u of shape"):
        built.model(torch.randn(4, built.d_in(), dtype=F64))
    with pytest.raises(ValueError, match="expected u_t of shape"):
        built.model.step(torch.randn(2, 4, built.d_in(), dtype=F64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_input_is_a_value_error(built: Built, bad):
    u = torch.randn(2, 5, built.d_in(), dtype=F64)
    u[1, 3, 0] = bad
    with pytest.raises(ValueError, match=r"NaN.*\[1, 3, 0\]"):
        built.model(u)


def test_finiteness_check_can_be_switched_off(built: Built):
    """``check_finite = False`` (for decoding loops: each check is a device sync on a GPU) skips the NaN / inf scan
    of u on that instance only; the output then carries the NaN instead of an error naming it."""
    u = torch.randn(2, 5, built.d_in(), dtype=F64)
    u[1, 3, 0] = float("nan")
    model = copy.deepcopy(built.model)
    model.check_finite = False
    y = model(u)
    y = y[0] if isinstance(y, tuple) else y
    assert not bool(torch.isfinite(y).all())
    with pytest.raises(ValueError, match="NaN"):  # the class default and other instances still check
        built.model(u)


def test_integer_input_is_a_type_error(built: Built):
    u = torch.ones(2, 5, built.d_in(), dtype=torch.int64)
    with pytest.raises(TypeError, match="floating-point"):
        built.model(u)


def test_wrong_initial_state_shape_is_a_value_error(built: Built):
    u, h0 = _inputs(built, 2, 5)
    for bad in (torch.zeros(2, built.n_state() + 1, dtype=F64), torch.zeros(3, *built.state_shape(), dtype=F64)):
        with pytest.raises(ValueError, match="initial_state must have shape"):
            built.model(u, initial_state=_with_h(h0, bad))


def test_bad_initial_state_values_and_types(built: Built):
    u, h0 = _inputs(built, 2, 5)
    nan_state = torch.zeros(2, *built.state_shape(), dtype=F64)
    nan_state[0, ...] = float("nan")
    with pytest.raises(ValueError, match="initial_state contains NaN or inf"):
        built.model(u, initial_state=_with_h(h0, nan_state))
    with pytest.raises(TypeError, match=r"initial_state(\[.h.\])? must be a floating-point tensor"):
        built.model(u, initial_state=_with_h(h0, torch.zeros(2, *built.state_shape(), dtype=torch.int64)))


def test_bad_dims_are_value_errors_naming_the_dim(built: Built):
    cls = type(built.model)
    name = next(iter(built.dims))
    for bad in (0, -2, 2.5, "4", True):
        with pytest.raises(ValueError, match=rf"dim {name} must be a positive integer"):
            cls(**{**built.dims, name: bad})


# -- lower precision -----------------------------------------------------------------------------------------------


def _naive_fp32(b: Built, model32, u32: torch.Tensor, h0):
    """The 'eager run at the test dtype' of FlexAttention's rule: the dense reference matrices rounded to fp32 and
    the plain step-by-step recurrence run in fp32 (post-ops, if any, applied after it as the reference does). Its
    error against the fp64 golden is what fp32 costs anyway."""
    from dsfc.reference import apply_posts, dense_matrices, evaluate_lets

    p = {k: v.to(F64) for k, v in b.params(model32).items()}
    running0 = {k: v.to(F64) for k, v in h0.items() if k != "h"} if isinstance(h0, dict) else None
    tables = evaluate_lets(b.sym, b.all_dims, p, u32.to(F64), running0)
    A, Bm, C, D = (m.float() for m in dense_matrices(b.sym, b.all_dims, p, u32, _tables=tables))
    Bsz, T = u32.shape[:2]
    drive = b.sym.driven.name
    x = tables[0][drive]
    x = (x if drive in tables[1] else x.expand(Bsz, T, *x.shape)).reshape(Bsz, T, -1).float()
    h = h_of(h0).reshape(Bsz, -1).float()
    ys = []
    for t in range(T):
        h_prev = h
        h = torch.einsum("bij,bj->bi", A[:, t], h) + torch.einsum("bij,bj->bi", Bm[:, t], x[:, t])
        read = h_prev if b.sym.readout == "pre" else h
        ys.append(torch.einsum("bij,bj->bi", C[:, t], read) + torch.einsum("bij,bj->bi", D[:, t], x[:, t]))
    y = torch.stack(ys, 1)
    if getattr(b.sym, "posts", ()):
        y = apply_posts(b.sym, b.all_dims, tables, y.to(F64)).float()
    return y, h


def test_fp32_matches_reference_within_error_ratio(built: Built):
    """FlexAttention's rule: err(generated fp32 vs fp64 golden) <= FUDGE * err(naive fp32 vs golden) + floor.

    FUDGE = 10 allows the structured algorithm a different (not worse in kind) summation order, and the floor
    (64 fp32 ulps of the output scale, 64 * 2^-24 ~ 4e-6) covers the case where the naive run happens to be almost
    exact. The generated module also evaluates the lets (norms, feature maps) in fp32, which the naive run does not,
    and that is inside the floor: a let is O(d) operations of O(1) values.
    """
    model32 = copy.deepcopy(built.model).float()
    u, h0 = _inputs(built, 2, 17)
    u32, h32 = u.float(), map_state(h0, lambda x: x.float())
    with torch.no_grad():
        y, hT = model32(u32, initial_state=h32, output_final_state=True)
    assert y.dtype == torch.float32 and h_of(hT).dtype == torch.float32
    y_gold, h_gold = built.reference(u32, h32, model=model32)
    y_naive, h_naive = _naive_fp32(built, model32, u32, h32)
    floor = 64 * 2.0**-24
    assert rel_err(y, y_gold) <= 10 * rel_err(y_naive, y_gold) + floor
    assert rel_err(h_of(hT).reshape(2, -1), h_of(h_gold)) <= 10 * rel_err(h_naive, h_of(h_gold)) + floor


def test_fp32_input_on_float64_module_returns_fp32(built: Built):
    u, _ = _inputs(built, 2, 9)
    with torch.no_grad():
        y = built.model(u.float())
    assert y.dtype == torch.float32


def test_bf16_input_runs_and_returns_bf16(built: Built):
    """bf16 in, bf16 out (the state fp32), accumulated in fp32. The golden run takes the same bf16-rounded input in fp64, so the
    remaining error is the final cast to bf16 (half an ulp: 2^-9 relative to each entry) plus fp32 arithmetic (far
    smaller): 2^-7 of the output scale leaves a 4x margin."""
    model = copy.deepcopy(built.model).float()
    u, h0 = _inputs(built, 2, 17)
    ub, hb = u.bfloat16(), map_state(h0, lambda x: x.bfloat16())
    with torch.no_grad():
        y, hT = model(ub, initial_state=hb, output_final_state=True)
    # the state stays fp32, the accumulation dtype (test_half_state.py: a bf16 state drifted in step() loops)
    assert y.dtype == torch.bfloat16 and all(v.dtype == torch.float32 for v in (hT.values() if isinstance(hT, dict)
                                                                               else [hT]))
    assert torch.isfinite(y.float()).all()
    y_gold, h_gold = built.reference(ub, hb, model=model)
    assert rel_err(y, y_gold) <= 2.0**-7
    assert state_err(hT, h_gold) <= 2.0**-7


# -- gradients -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(built: Built) -> Built:
    """The same spec at dims of 2 (clamped to each default), for gradcheck's O(#inputs) forward passes."""
    sym = built.sym
    dims = {k: min(2, sym.dim_defaults[k]) for k in sym.free_dims}
    return build(built.result, dims, seed=3)


def _state_leaves(state) -> tuple[list[str], list[torch.Tensor]]:
    """Keys and tensors of a state (one unnamed tensor, or a dict), as fresh leaves that require grad."""
    if isinstance(state, dict):
        keys = sorted(state)
        return keys, [state[k].detach().clone().requires_grad_() for k in keys]
    return [None], [state.detach().clone().requires_grad_()]


def _state_from(keys, values):
    return values[0] if keys == [None] else dict(zip(keys, values))


def _flat_outputs(y, state):
    return (y, *([state[k] for k in sorted(state)] if isinstance(state, dict) else [state]))


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
def test_gradcheck_wrt_input_and_initial_state(tiny: Built, with_h0):
    g = torch.Generator().manual_seed(5)
    u = torch.randn(1, 3, tiny.d_in(), generator=g, dtype=F64, requires_grad=True)
    if not with_h0:
        assert torch.autograd.gradcheck(lambda u: tiny.model(u), (u,))
        return
    keys, leaves = _state_leaves(tiny.initial_state(1, g))

    def f(u, *state):
        return _flat_outputs(*tiny.model(u, initial_state=_state_from(keys, list(state)), output_final_state=True))

    assert torch.autograd.gradcheck(f, (u, *leaves))


def test_gradcheck_wrt_parameters(tiny: Built):
    g = torch.Generator().manual_seed(6)
    u = torch.randn(1, 3, tiny.d_in(), generator=g, dtype=F64)
    names = [n for n, _ in tiny.model.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for _, p in tiny.model.named_parameters())
    assert names, "every catalog spec has parameters"

    def f(*ps):
        return _flat_outputs(*functional_call(tiny.model, dict(zip(names, ps)), (u,), {"output_final_state": True}))

    assert torch.autograd.gradcheck(f, values)


def test_gradients_match_reference(built: Built):
    """Autograd through the structured algorithm == autograd through the dense reference loop (w.r.t. u, h0, W)."""
    from dsfc.codegen.plan import py_name
    from dsfc.reference import reference_forward

    u, h0 = _inputs(built, 2, 8)
    g = torch.Generator().manual_seed(9)
    names = [n for n, _ in built.model.named_parameters()]
    grads = []
    for run in ("module", "reference"):
        uu = u.detach().clone().requires_grad_()
        keys, leaves = _state_leaves(h0)
        ps = {n: p.detach().clone().requires_grad_() for n, p in built.model.named_parameters()}
        if run == "module":
            y, hT = functional_call(built.model, ps, (uu,),
                                    {"initial_state": _state_from(keys, leaves), "output_final_state": True})
        else:
            spec_params = {p.tensor.name: ps[py_name(p.tensor.name)] for p in built.sym.params}
            y, hT = reference_forward(built.sym, built.all_dims, spec_params, uu,
                                      initial_state=_state_from(keys, leaves))
        outs = _flat_outputs(y, hT)
        if run == "module":
            weights = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
        loss = sum((o.reshape(w.shape) * w).sum() for o, w in zip(outs, weights))
        grads.append(torch.autograd.grad(loss, [uu, *leaves, *[ps[n] for n in names]], allow_unused=True))
    labels = ["u", *[f"h0[{k}]" for k in keys], *names]
    for label, a, b in zip(labels, *grads):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros(()) if b is None else b
        assert rel_err(a, b) <= 1e-7, label


# -- deterministic code generation ---------------------------------------------------------------------------------


_OTHER_PROCESS = """
import json, sys
from dsfc.pipeline import compile_spec
print(json.dumps({p: compile_spec(p).source for p in sys.argv[1:]}))
"""


@pytest.fixture(scope="session")
def other_process_sources(tmp_path_factory, worker_id) -> dict[str, str]:
    """Every catalog spec compiled in a second interpreter with another hash seed (from absolute paths, run in the
    repository root). Compiling twice in one process would not vary set and dict orders that depend on str hashes.
    Under xdist the first worker to get here compiles (~30 s of CPU) and the others read its file (pytest-xdist's
    documented once-per-session pattern): every worker compiled the whole catalog again."""
    if worker_id == "master":
        return _compile_in_another_process()
    from filelock import FileLock  # a torch dependency

    shared = tmp_path_factory.getbasetemp().parent / "catalog_other_process_sources.json"
    with FileLock(f"{shared}.lock"):
        if not shared.is_file():
            shared.write_text(json.dumps(_compile_in_another_process()))
        return json.loads(shared.read_text())


def _compile_in_another_process() -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", _OTHER_PROCESS, *map(str, SPECS)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True, timeout=300)
    return {Path(k).stem: v for k, v in json.loads(out.stdout).items()}


def test_codegen_is_deterministic_and_stamped(built: Built, other_process_sources):
    import hashlib

    spec = ROOT / built.result.spec.path
    rel = spec.relative_to(ROOT).as_posix()
    a = built.result.source  # compiled from the relative path by the fixture, in this process
    assert other_process_sources[spec.stem] == a  # same text from another process, hash seed and path spelling
    first = a.splitlines()[0]
    assert first.startswith("# Generated by dsfc ")
    assert f"from {rel} " in first
    digest = hashlib.sha256(spec.read_text(encoding="utf-8").encode("utf-8")).hexdigest()[:16]
    assert f"spec sha256 {digest}" in first
    for absolute in {str(ROOT), str(Path.home()), os.sep + "tmp" + os.sep, str(Path.cwd())}:
        assert absolute not in a


def test_codegen_outside_the_repo_names_the_file_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = SPECS[0]
    src = compile_spec(spec).source
    assert src.splitlines()[0].split(" from ")[1].startswith(f"{spec.name} (spec sha256")
    assert str(tmp_path) not in src and str(ROOT) not in src


GENERATED = sorted((ROOT / "generated").glob("*.py"))
GENERATED = [g for g in GENERATED if g.name != "__init__.py"]


def test_generated_files_are_fresh(built: Built):
    """generated/<name>.py, if committed, is byte for byte what dsfc compiles from specs/<name>.dsf today."""
    name = Path(built.result.spec.path).stem
    gen = ROOT / "generated" / f"{name}.py"
    if not gen.exists():
        pytest.skip(f"generated/{name}.py is not committed")
    assert gen.read_text(encoding="utf-8") == built.result.source, (
        f"generated/{name}.py is stale: regenerate it with dsfc compile specs/*.dsf -o generated"
    )


@pytest.mark.skipif(not GENERATED, reason="generated/ holds no modules")
@pytest.mark.parametrize("gen", GENERATED, ids=[g.stem for g in GENERATED])
def test_every_generated_file_has_a_spec(gen: Path):
    assert (ROOT / "specs" / f"{gen.stem}.dsf").exists(), f"generated/{gen.name} has no specs/{gen.stem}.dsf"
