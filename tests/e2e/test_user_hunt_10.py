"""Found by the tenth user hunt (a new user of the CLI and of every generated module on inputs nobody tested: spec
files with a BOM, CRLF / lone-CR line endings, tabs, no trailing newline, non-UTF-8 bytes, empty or whitespace-only
files, directories, FIFOs; `-o` onto special files and symlinks; `--dims` syntax; modules under deepcopy / pickle /
torch.save, `.double()` / `.half()`, autocast, inference_mode, flipped / expanded inputs, meta, integer / bool /
complex / float8 / sparse / nested inputs, vmap / grad / jacrev, `torch.compile(fullgraph=True)`, step with a wrong
batch, T = 100000 at d = 2; and the two gaps round 9 left). Each test failed before its fix, except two that pin the
documented state contract the fix keeps (``test_h_alone_...``, ``test_the_kv_cache_contract_is_kept``); three of
the reserved-name tests fail only on this round's own earlier commits (helpers it added).

Found and fixed:

- A state dict without ``"h"`` (``step(u_t, {})``, or ``{"xs": xs}`` alone) silently started h from zero, and a dict
  missing one of several running entries silently restarted that quantity. ``"h"`` is now required (``state=None``
  is the way to start from zero; ``{"h": None}`` is refused too), and the running entries come all or none: none
  (``{"h": h}``, the state an empty first call returns) starts each as at t = 0, as documented; some of them is
  refused, listing the missing keys (``dsfc.runtime.checks.split_state_dict``, ``check_running_state``).
- ``dsf_matrices`` / ``kernel_form`` / ``backend="reference"`` (documented "small sizes only") had no size guard: at
  a large T they failed with torch's allocation error, or allocated and filled several GiB. They now refuse above
  ``dsfc.runtime.kernel_form.MAX_DENSE_BYTES`` (2 GiB) before allocating, with a ``DenseSizeError`` naming the size
  and the largest T that fits; the CLI reports it as exit 2.
- ``dsfc check --dims d=700`` (S6, N = 11200) passed the check's guard, which counted N^2 once, and reached a 13 GiB
  allocation of dense A_t (one per step of its check shapes): the guard now counts the steps.
- A nested tensor (a ragged batch) as u failed with torch's "Internal error: NestedTensorImpl doesn't support sizes.
  Please file an issue"; a sparse u with "reshape is not implemented for sparse tensors"; a sparse state entry with
  "Could not run 'aten::ne.Scalar' ... 'SparseCPU' backend"; a float8 u or state (a floating-point dtype, so it
  passed the dtype check) with '"sum_cpu" not implemented for Float8_e4m3fn'. Each is now refused naming the argument
  (``check_tensor_kind``).
- ``dsfc catalog -o /dev/full`` (or ``/dev/stdout``) run as root replaced the device node with a regular file
  holding the catalog (os.replace of the atomic write swaps the directory entry; this machine's /dev/full had to be
  recreated); ``-o`` a FIFO replaced the FIFO instead of feeding it; a symlinked output (compile, catalog, plot)
  became a plain file, leaving the link's target stale. Special files are now written as streams and symlinks
  followed (``dsfc.codegen.emit.replace_target``).

- A param named ``check_finite`` (the modules' class attribute) failed at construction with "KeyError: attribute
  'check_finite' already exists"; and the helpers this round added (``check_dense_matrices``, ``check_tensor_kind``,
  ...) were not reserved, so a param or dim of that name shadowed them. The public functions and classes of
  ``dsfc.runtime.checks`` and ``dsfc.runtime.kernel_form`` are now reserved as a set (``_RESERVED`` in
  ``dsfc/codegen/plan.py``), so the next helper is too.

- ``dsfc analyze /dev/zero`` (or /dev/urandom, or a multi-GB file given by mistake) read the path whole: until the
  machine ran out of memory (23 GB here, shared), then "out of memory; use smaller sizes". A spec is read up to
  ``dsfc.lang.parse.MAX_SPEC_BYTES`` (4 MiB) and refused above it.

Checked clean (no change): BOM / CRLF / lone-CR / tab / no-trailing-newline specs compile to the same module and
report errors at the right line and column; non-UTF-8 bytes are positioned; empty and whitespace-only specs say
"empty spec"; keyword and digit spec names get importable module names; two specs of one module name and the same
spec twice are handled; ``--dims`` with ``d=``, ``d=0``, ``d=-3``, ``d=1.5``, ``x=3``, ``=3``; deepcopy, pickle,
torch.save of whole modules, ``.double()``, ``.half()``, cpu bf16 autocast, inference_mode, flipped and expanded
inputs, meta, integer / bool / complex inputs, step with a wrong batch, vmap(grad), grad, jacrev and
``torch.compile(fullgraph=True)`` of a model holding a module (S6, Mamba block, softmax attention, DeltaNet, LRU);
T = 100000 at d = 2 takes at most ~3.3 s on every module (dense LRU / S4D), linear in T.

Found, not fixed:

- A FIFO given as the spec with no writer blocks ``dsfc compile`` forever (as ``cat`` does); a FIFO with a writer
  (``dsfc compile <(sed ... spec.dsf)``) is a real use, so FIFOs are not refused.
- ``{"h": h}`` alone is still accepted for a spec with running quantities (each then starts as at t = 0): that is
  the state an empty first call returns (a ``prev`` entry has no value meaning "not started"), so a user who builds
  ``{"h": h}`` by hand for Mamba's block gets a fresh conv window without a word. Documented.
- A spec named ``torch.dsf`` (or ``math.dsf``) compiled into a directory that is on sys.path (``-o .``) gives a
  ``torch.py`` that shadows torch for every script run there; in a package such as generated/ it is harmless. (Fixed
  since, by the eleventh hunt: it is written to ``torch_.py``; test_user_hunt_11.py.)
- ``dsfc catalog -o /dev/stdout`` prints its "wrote ..." line on stdout after the catalog.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from dsfc.cli import main
from dsfc.pipeline import compile_spec
from dsfc.reference import reference_forward

sys.path.insert(0, str(Path(__file__).parent))
from dsf_testing import build, generated_class, rel_err  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
F64 = torch.float64


def _built(name: str, dims: dict):
    return build(compile_spec(str(SPECS / f"{name}.dsf")), dims)


# -- 1. state dicts: "h" required, running entries all or none ------------------------------------------------------

MAMBA = dict(d=3, e=2, n=2, r=1, W=3)
TAYLOR_DIMS = dict(d=3, H=2, K=2, V=2, p=1)  # two running entries: z and eta_prev


@pytest.mark.parametrize("state", [{}, "running-only"])
def test_a_state_dict_without_h_is_refused(state):
    b = _built("mamba_block", MAMBA)
    u = torch.randn(2, 4, b.d_in(), dtype=F64)
    _, full = b.model(u, output_final_state=True)
    state = {} if state == {} else {"xs": full["xs"]}
    with pytest.raises(ValueError, match=r"MambaBlock: the state dict lacks 'h' .*None to start from zero"):
        b.model.step(u[:, 0], state)
    with pytest.raises(ValueError, match="lacks 'h'"):
        b.model(u, initial_state=state)


def test_a_state_dict_without_h_is_refused_for_a_spec_without_running_quantities():
    b = _built("s6", dict(d=3, n=2, r=1))
    u = torch.randn(2, 4, b.d_in(), dtype=F64)
    with pytest.raises(ValueError, match=r"S6: the state dict lacks 'h' \(it has \[\]\)"):
        b.model.step(u[:, 0], {})
    with pytest.raises(TypeError, match=r"S6: state\['h'\] must be a floating-point tensor, got NoneType"):
        b.model.step(u[:, 0], {"h": None})


@pytest.mark.parametrize("drop", ["z", "eta_prev"])
def test_a_state_dict_missing_some_running_entries_is_refused_naming_them(drop):
    b = _built("taylor_attention", TAYLOR_DIMS)
    u = torch.randn(2, 4, b.d_in(), dtype=F64)
    _, state = b.model(u, output_final_state=True)
    del state[drop]
    with pytest.raises(ValueError, match=rf"lacks the running entry '{drop}' .*all of them, or none"):
        b.model.step(u[:, 0], state)


def test_h_alone_and_none_still_start_as_documented_against_the_reference():
    """A pin of the contract kept (it passed before): ``state=None`` is zero; ``{"h": h}`` (the state of an empty
    first call) starts the conv window as at t = 0: both checked against the float64 reference recurrence with the
    same initial state."""
    b = _built("mamba_block", MAMBA)
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 5, b.d_in(), dtype=F64, generator=gen)
    h = 0.5 * torch.randn(2, *b.state_shape(), dtype=F64, generator=gen)
    params = b.params()
    y, _ = b.model(u, initial_state={"h": h}, output_final_state=True)
    y_ref, _ = reference_forward(b.sym, b.all_dims, params, u, initial_state={"h": h.reshape(2, -1)})
    assert rel_err(y, y_ref) < 1e-10
    _, empty_state = b.model(u[:, :0], output_final_state=True)
    assert set(empty_state) == {"h"}
    y0, _ = b.model.step(u[:, 0], empty_state)  # accepted, from zero
    y0_ref, _ = reference_forward(b.sym, b.all_dims, params, u[:, :1])
    assert rel_err(y0, y0_ref[:, 0]) < 1e-10


def test_the_kv_cache_contract_is_kept():
    """The quadratic family (a pin, not a fix: it passed before): the cache entries are required, and its carried
    running entries come all or none. FoX carries one (eta_prev): without it the cache is accepted, as an empty first
    call returns it."""
    b = _built("fox", dict(d=3, H=2, K=2, V=2))
    u = torch.randn(2, 4, b.d_in(), dtype=F64)
    _, cache = b.model(u, output_final_state=True)
    with pytest.raises(ValueError, match="lacks 'cache:keys'"):
        b.model.step(u[:, 0], {"eta_prev": cache["eta_prev"]})
    _, empty = b.model(u[:, :0], output_final_state=True)
    assert "eta_prev" not in empty
    b.model.step(u[:, 0], empty)


# -- 2. dense forms: a size guard before the allocation -------------------------------------------------------------


def test_dsf_matrices_refuses_a_large_T_naming_the_size_and_the_largest_T_that_fits():
    from dsfc.runtime.kernel_form import DenseSizeError

    S6 = generated_class("s6")
    m = S6()  # d = 64, n = 16: N = 1024
    N, d = 1024, 64
    per_step = (N * N + N * d + d * N + d * d) * 4  # A, B, C, D in fp32, computed here independently
    fits = (2 << 30) // per_step
    with pytest.raises(DenseSizeError, match=rf"S6.dsf_matrices: .*GiB .*A \[1, 1000, 1024, 1024\].*at most {fits} "):
        m.dsf_matrices(torch.randn(1, 1000, d))
    with pytest.raises(DenseSizeError, match="S6.dsf_matrices"):  # backend="reference" builds them too
        S6(backend="reference")(torch.randn(1, 1000, d))
    assert issubclass(DenseSizeError, ValueError)


def test_kernel_form_refuses_a_large_phi_before_building_it():
    from dsfc.runtime.kernel_form import DenseSizeError

    m = generated_class("s6")(d=2, n=2, r=1)
    # the four matrices of T = 30000 steps at N = 4 take 5 MB; Phi [1, 60000, 60000] would take 13 GiB
    with pytest.raises(DenseSizeError, match=r"kernel_form: .*Phi \[1, 30000\*2, 30000\*2\]"):
        m.kernel_form(torch.randn(1, 30000, 2))


@pytest.mark.parametrize("name,dims", [("s6", dict(d=3, n=2, r=1)), ("softmax_attention", dict(d=3, H=2, K=2, V=2))])
def test_the_dense_guard_counts_exactly_the_bytes_dsf_matrices_returns(monkeypatch, name, dims):
    """At the limit it passes, one byte below it refuses: the estimate is the allocation (the slot basis of softmax
    attention grows with T, so its matrices grow as T^3)."""
    import dsfc.runtime.kernel_form as kf

    m = generated_class(name)(**dims)
    u = torch.randn(2, 5, m._in_features())
    nbytes = sum(x.numel() * x.element_size() for x in m.dsf_matrices(u))
    monkeypatch.setattr(kf, "MAX_DENSE_BYTES", nbytes)
    m.dsf_matrices(u)
    monkeypatch.setattr(kf, "MAX_DENSE_BYTES", nbytes - 1)
    with pytest.raises(kf.DenseSizeError, match=r"at most 4 at batch 2"):
        m.dsf_matrices(u)


def test_the_cli_reports_the_dense_guard_as_a_size_error(monkeypatch, tmp_path, capsys):
    import dsfc.runtime.kernel_form as kf

    monkeypatch.setattr(kf, "MAX_DENSE_BYTES", 1000)  # plot's own guard (1 GiB) passes; the module's refuses
    rc = main(["plot", str(SPECS / "s6.dsf"), "--T", "4", "-o", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "dsf_matrices: the dense form would take" in err and "internal error" not in err
    assert not (tmp_path / "p.png").exists()


def test_check_counts_dense_A_for_every_step_of_its_shapes(capsys):
    # N = 700 * 16 = 11200: N^2 = 1.25e8 passed the old guard (1.34e8); 48 steps of it are 6e9 numbers (48 GB)
    rc = main(["check", str(SPECS / "s6.dsf"), "--dims", "d=700", "n=16", "r=2", "--no-triton"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "N = 11200" in err and "for each of 48 steps" in err


# -- 3. sparse, nested and float8 tensors ---------------------------------------------------------------------------

KINDS = {
    "sparse": lambda t: t.to_sparse(),
    "float8": lambda t: t.to(torch.float8_e4m3fn),
}


@pytest.mark.parametrize("name,dims", [("s6", dict(d=3, n=2, r=1)), ("mamba_block", MAMBA),
                                       ("softmax_attention", dict(d=3, H=2, K=2, V=2))])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sparse_and_float8_tensors_are_refused_naming_the_argument(name, dims, kind):
    m = generated_class(name)(**dims)
    u = torch.randn(2, 3, m._in_features())
    _, state = m(u, output_final_state=True)
    what = "layout torch.sparse_coo" if kind == "sparse" else "dtype torch.float8_e4m3fn"
    with pytest.raises((TypeError, ValueError), match=rf"^{type(m).__name__}: u has {what}"):
        m(KINDS[kind](u))
    with pytest.raises((TypeError, ValueError), match=rf"^{type(m).__name__}.step: u_t has {what}"):
        m.step(KINDS[kind](u[:, 0]), state)
    for key in (state if isinstance(state, dict) else [None]):
        bad = KINDS[kind](state) if key is None else {**state, key: KINDS[kind](state[key])}
        label = "state" if key is None else rf"state\['{key}'\]"
        with pytest.raises((TypeError, ValueError), match=rf"^{type(m).__name__}: {label} has {what}"):
            m.step(u[:, 0], bad)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_a_nested_tensor_batch_is_refused_with_what_to_do(layout):
    m = generated_class("s6")(d=3, n=2, r=1)
    u = torch.nested.nested_tensor([torch.randn(4, 3), torch.randn(2, 3)], layout=layout)
    with pytest.raises(ValueError, match=r"S6: u is a nested tensor; .*pad the sequences"):
        m(u)


# -- 4. outputs: special files are streams, symlinks are followed ---------------------------------------------------


def test_catalog_into_a_fifo_feeds_it_and_leaves_it_a_fifo(tmp_path):
    fifo = tmp_path / "catalog.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    assert main(["catalog", str(SPECS / "s6.dsf"), "-o", str(fifo)]) == 0
    reader.join(30)
    assert fifo.is_fifo()  # was replaced by a regular file (and the reader blocked forever)
    assert got and got[0].startswith("# dsfc model catalog") and "S6" in got[0]


def test_outputs_through_a_symlink_keep_the_link_and_write_its_target(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (target / "cat.md").write_text("old")
    (tmp_path / "cat.md").symlink_to(target / "cat.md")
    assert main(["catalog", str(SPECS / "s6.dsf"), "-o", str(tmp_path / "cat.md")]) == 0
    assert (tmp_path / "cat.md").is_symlink()
    assert (target / "cat.md").read_text().startswith("# dsfc model catalog")
    out = tmp_path / "gen"
    out.mkdir()
    (target / "s6.py").write_text("old")
    (out / "s6.py").symlink_to(target / "s6.py")
    assert main(["compile", str(SPECS / "s6.dsf"), "-o", str(out)]) == 0
    assert (out / "s6.py").is_symlink()
    assert (target / "s6.py").read_text().startswith("# Generated by dsfc")


# -- 5. spec names that meet the generated module's own names -------------------------------------------------------


@pytest.mark.parametrize("old,new", [("W_B", "check_finite"), ("W_B", "check_dense_matrices"),
                                     ("r", "check_tensor_kind"), ("r", "check_float_tensor")])
def test_spec_names_equal_to_a_runtime_helper_or_class_attribute_compile_and_check(old, new):
    """A param named check_finite (the class attribute) was "KeyError: attribute 'check_finite' already exists" at
    construction; names of the runtime's check helpers were shadowed by a dim or a local let. Checked against the
    float64 reference by run_check."""
    import re

    from dsfc.check import run_check
    from dsfc.pipeline import compile_text

    text = re.sub(rf"\b{old}\b", new, (SPECS / "s6.dsf").read_text())
    rep = run_check(compile_text(text, "renamed.dsf"), triton=False)
    assert rep.ok, rep.table()


# -- 6. a spec path that is not a small file ------------------------------------------------------------------------


def test_a_spec_larger_than_the_limit_is_refused_without_reading_it_whole(tmp_path, capsys):
    """A large file was read whole. At most MAX_SPEC_BYTES + 1 bytes are read now."""
    from dsfc.lang.parse import MAX_SPEC_BYTES

    path = tmp_path / "big.dsf"
    path.write_bytes(b"# " + b"x" * MAX_SPEC_BYTES + b"\n")
    assert main(["analyze", str(path)]) == 2
    assert f"{path}: error: cannot read spec: it is larger than 4 MiB" in capsys.readouterr().err


def test_dev_zero_as_a_spec_is_refused_not_read_until_memory_runs_out():
    """``dsfc analyze /dev/zero`` read until the machine ran out of memory (then "out of memory; use smaller sizes").
    Run in a process limited to 2 GiB of address space and 120 s, so a regression fails here instead of taking the
    machine's memory."""
    import resource
    import subprocess

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dsfc", "analyze", "/dev/zero"], capture_output=True, text=True,
                          timeout=120, preexec_fn=limit, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "/dev/zero: error: cannot read spec: it is larger than 4 MiB" in proc.stderr
