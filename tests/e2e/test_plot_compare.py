"""``dsfc plot`` and ``dsfc compare`` end to end, and the kernel (convolution) form of every catalog spec.

The kernel form y = Phi x (``kernel_form`` of each generated module, built by ``dsfc.runtime.kernel_matrix`` from the
dense ``dsf_matrices``; x is the driven input, u itself unless the spec says ``drive``) is checked against the float64
reference recurrence of ``dsfc.reference`` (an independent path: it evaluates the SymPy IR and loops over t), and
against the module's own structured ``forward`` (before post-ops). Phi must be lower block-triangular: every block
above the diagonal is exactly zero (causality).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path

import pytest
import torch

import dsfc.codegen.emit
import dsfc.pipeline
from dsf_testing import F64, build, rel_err
from dsfc.check import small_dims
from dsfc.cli import main
from dsfc.pipeline import compile_spec as _compile_spec
from dsfc.reference import evaluate_lets, reference_forward

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.dsf"))
SPEC_IDS = [p.stem for p in SPECS]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_KERNEL = 5  # odd, several blocks; kernel_matrix is O(T^2) small matmuls
TOL64 = 1e-10

BAD_SPEC = """model Bad "unknown name in A"
dim d = 4
input u[d]
state h[c: d]
output y[d]
param a[d] = 0.5
A[c, c2] = delta(c, c2) * aa[c]
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
"""


@functools.cache
def _compiled_cached(path: str):
    return _compile_spec(path)


def _compiled(path):
    return _compiled_cached(str(Path(path).resolve()))


class _NoFormat:
    """Stands in for black in dsfc.codegen.emit: the generated source unformatted (same code, same numbers).

    Black takes most of a compile (~0.5-1 s per spec) and these tests check numbers and CLI behaviour, not layout;
    test_catalog and CI's byte-for-byte check of generated/ cover the formatted output."""

    Mode = staticmethod(lambda **kw: None)
    InvalidInput = SyntaxError

    @staticmethod
    def format_str(source, mode=None):
        compile(source, "<generated>", "exec")  # still reject invalid Python, as black would
        return source


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """Reuse one compile per catalog spec across tests (the CLI compiles through dsfc.pipeline.compile_spec; a
    failing compile raises and is not cached), and skip black formatting."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dsfc.pipeline, "compile_spec", _compiled)
        mp.setattr(dsfc.codegen.emit, "black", _NoFormat, raising=False)
        yield


# -- dsfc plot ----------------------------------------------------------------------------------------------------


def test_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sub" / "s6.png"
    rc = main(["plot", str(ROOT / "specs" / "s6.dsf"), "-o", str(out), "--T", "6", "--dims", "d=3", "n=2", "r=2",
               "--dpi", "40"])
    assert rc == 0
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["s6.png"], "temporary file left behind"


def test_plot_matrix_that_is_a_parameter(tmp_path, capsys):
    """A time-invariant dense A written as a parameter, A[i, k] = Am[i, k]: dsf_matrices hands back a view of the
    parameter, which requires grad even under no_grad, and plot's numpy() of its eigenvalues was an internal error
    (exit 3)."""
    pytest.importorskip("matplotlib")
    spec = tmp_path / "dense_ti.dsf"
    spec.write_text("dim d = 3\ndim N = 4\ninput u[d]\nstate h[N]\nparam Am[N, N] ~ normal(0, 0.3)\n"
                    "param Bm[N, d] ~ normal(0, 0.5)\nparam Cm[d, N] ~ normal(0, 0.5)\n"
                    "A[i, k] = Am[i, k]\nB[i, k] = Bm[i, k]\nC[o, k] = Cm[o, k]\n")
    out = tmp_path / "dense_ti.png"
    assert main(["plot", str(spec), "-o", str(out), "--T", "4", "--dpi", "40"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    from dsfc.plot import compute

    data = compute(_compile_spec(str(spec)), T=4)
    assert not data.eig_abs.requires_grad and torch.isfinite(data.eig_abs).all()
    assert torch.equal(data.eig_abs, data.eig_abs[:1].expand_as(data.eig_abs))  # time-invariant: every step alike


def test_plot_default_output_is_spec_stem_in_cwd(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    rc = main(["plot", str(ROOT / "specs" / "linear_attention.dsf"), "--T", "3", "--dims", "d=2", "H=1", "K=2", "V=2",
               "--dpi", "30"])
    assert rc == 0
    assert (tmp_path / "linear_attention.png").read_bytes()[:8] == PNG_MAGIC
    assert capsys.readouterr().out.strip() == "linear_attention.png"


def test_plot_bad_spec_exit_2_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "bad.dsf"
    spec.write_text(BAD_SPEC)
    out = tmp_path / "out" / "bad.png"
    assert main(["plot", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.dsf:7:" in err and "error" in err and "aa" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.dsf"]  # no output file, no output dir


@pytest.mark.parametrize("spec,args", [
    ("s6", ["--dims", "x=3"]), ("s6", ["--dims", "d=abc"]), ("s6", ["--dims", "d"]), ("s6", ["--dims", "d=0"]),
    ("ssd", ["--dims", "R=2"]), ("ssd", ["--dims", "H=5", "G=2"]), ("s6", ["--T", "0"]),
    ("s6", ["--dpi", "0"]), ("s6", ["--dpi", "-5"]),
], ids=["unknown", "not-int", "no-eq", "zero", "derived", "not-divisible", "T0", "dpi0", "dpi-neg"])
def test_plot_bad_args_exit_2_writes_nothing(tmp_path, spec, args, capsys):
    out = tmp_path / "out.png"
    assert main(["plot", str(ROOT / "specs" / f"{spec}.dsf"), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "dsfc plot: error:" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


# -- dsfc compare -------------------------------------------------------------------------------------------------


def test_compare_linear_attention_vs_s6(capsys):
    rc = main(["compare", str(ROOT / "specs" / "linear_attention.dsf"), str(ROOT / "specs" / "s6.dsf")])
    assert rc == 0
    out = capsys.readouterr().out
    head, _, rest = out.partition("== differences")
    diff, _, same = rest.partition("== same")
    assert "LinearAttention" in head and "S6" in head
    # the DSF matrices in index form (sympy.sstr)
    assert "A[(c, j), (c2, j2)] = exp(-exp(A_log[c, j])*dt[c])" in head
    assert "B[(h, a, b), (m)] = W_V[h, b, m]*kf[h, a]" in head
    diff_lines = [x[2:] for x in diff.splitlines() if x.startswith("- ")]
    assert "A: identity vs diagonal" in diff_lines
    assert "coupling A/B: none vs dt" in diff_lines
    assert "A input-dependent: no vs yes" in diff_lines
    assert "D: absent (0) vs present" in diff_lines
    assert any(x.startswith("B input channels: mixes input channels through W_V vs per channel") for x in diff_lines)
    assert any(x.startswith("normalisation: ") and x.endswith(" vs recurrent") for x in diff_lines)
    assert any(x.startswith("family: chunked outer-product scan vs diagonal scan") for x in diff_lines)
    assert any(x.startswith("eigenvalues: ") for x in diff_lines)
    same_lines = [x[2:] for x in same.splitlines() if x.startswith("- ")]
    assert "B u: outer product" in same_lines
    assert "time-invariant: no" in same_lines
    assert "C readout: I (x) c^T" in same_lines


def test_compare_doc_shows_the_current_output(monkeypatch, capsys):
    """docs/compare-linear-attention-s6.md prints the output of its commands: keep both blocks what dsfc prints."""
    doc = (ROOT / "docs" / "compare-linear-attention-s6.md").read_text()
    monkeypatch.chdir(ROOT)
    assert main(["compare", "specs/linear_attention.dsf", "specs/s6.dsf"]) == 0
    out = capsys.readouterr().out.replace(f"{ROOT}/", "")  # this module's compile cache resolves the paths
    assert f"```\n{out}```" in doc
    assert main(["compare", "specs/linear_attention_normalized.dsf", "specs/s6.dsf"]) == 0
    diff = "== differences" + capsys.readouterr().out.partition("== differences")[2]
    assert f"```\n{diff}```" in doc


@pytest.mark.parametrize("stem,normaliser", [("linear_attention_normalized", "eta"),
                                             ("normalized_attention", "s")])
def test_compare_normalised_attention_vs_s6(stem, normaliser, capsys):
    """The paper's comparison: A scalar per head (eta_(i-1)/eta_i) vs diagonal; normalisation at output time vs
    recurrent (the eta ratio in A telescopes with B's 1/eta; S6's dt does not)."""
    spec = ROOT / "specs" / f"{stem}.dsf"
    if not spec.exists():
        pytest.skip(f"no {stem}.dsf in the catalog")
    assert main(["compare", str(spec), str(ROOT / "specs" / "s6.dsf")]) == 0
    diff = capsys.readouterr().out.partition("== differences")[2].partition("== same")[0]
    lines = [x[2:] for x in diff.splitlines() if x.startswith("- ")]
    assert "A: scalar per group vs diagonal" in lines
    assert f"coupling A/B: {normaliser} vs dt" in lines
    assert "normalisation: at output time vs recurrent" in lines


def test_compare_latex_and_same_spec(capsys):
    s6 = str(ROOT / "specs" / "s6.dsf")
    assert main(["compare", s6, s6, "--latex"]) == 0
    out = capsys.readouterr().out
    assert r"A_{(c, j),(c_{2}, j_{2})} =" in out and r"\delta_{c c_{2}}" in out
    assert "== differences (0)\n- none" in out


def test_compare_bad_spec_exit_2(tmp_path, capsys):
    spec = tmp_path / "bad.dsf"
    spec.write_text(BAD_SPEC)
    assert main(["compare", str(ROOT / "specs" / "s6.dsf"), str(spec)]) == 2
    captured = capsys.readouterr()
    assert "bad.dsf:7:" in captured.err and captured.out == ""


# -- kernel form of every spec ------------------------------------------------------------------------------------


def _reference_core(b, u: torch.Tensor):
    """The independent float64 path (dsfc.reference): the driven input x (what B and D multiply: u, or the spec's
    'drive' let) and the DSF output y = C h + D x before any post-ops, both [batch, T, *]."""
    sym = b.sym
    params = {k: v.to(F64) for k, v in b.params().items()}
    core = dataclasses.replace(sym, posts=()) if getattr(sym, "posts", ()) else sym
    y, _ = reference_forward(core, b.all_dims, params, u)
    driven = getattr(sym, "driven", None)
    batch, T = u.shape[:2]
    if driven is None or driven.name == sym.input.name:
        return u, y
    tables, batched = evaluate_lets(sym, b.all_dims, params, u)
    x = tables[driven.name]
    x = x.expand(batch, T, *x.shape[2:]) if driven.name in batched else x.expand(batch, T, *x.shape)
    return x.reshape(batch, T, -1), y


@pytest.fixture(scope="module", params=SPECS, ids=SPEC_IDS)
def kernel_case(request):
    result = _compiled(request.param)
    if result.structure.family.value == "quadratic attention":
        pytest.skip("infinite state (quadratic attention): its kernel form is checked in the slot basis by "
                    "tests/e2e/test_softmax_attention.py")
    b = build(result, small_dims(result), seed=3)
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, T_KERNEL, b.d_in(), generator=g, dtype=F64)
    with torch.no_grad():
        phi = b.model.kernel_form(u)
    x, y_ref = _reference_core(b, u)
    return b, u, phi, x, y_ref


def test_kernel_form_times_u_is_forward(kernel_case):
    b, u, phi, x, y_ref = kernel_case
    batch, T, d = x.shape
    p = y_ref.shape[-1]
    assert phi.shape == (batch, T * p, T * d) and phi.dtype == F64
    y_phi = torch.einsum("bij,bj->bi", phi, x.reshape(batch, T * d)).reshape(batch, T, p)
    assert rel_err(y_phi, y_ref) < TOL64  # vs the reference recurrence (dense matrices, one step at a time)
    if getattr(b.sym, "posts", ()):
        if "post" not in inspect.signature(b.model.forward).parameters:
            pytest.skip("spec has post-ops and forward has no post=False switch")
        with torch.no_grad():
            y = b.model(u, post=False)
    else:
        with torch.no_grad():
            y = b.model(u)
    assert rel_err(y_phi, y.reshape(batch, T, p)) < TOL64  # vs the structured forward


def test_kernel_form_is_lower_block_triangular(kernel_case):
    b, u, phi, x, y_ref = kernel_case
    batch, T, d = x.shape
    p = y_ref.shape[-1]
    blocks = phi.reshape(batch, T, p, T, d)
    for i in range(T):
        for j in range(i + 1, T):
            assert torch.count_nonzero(blocks[:, i, :, j, :]) == 0, f"block ({i}, {j}) above the diagonal is non-zero"
    # and it is not trivially zero below: each output block row reads at least its own time step
    assert all(torch.count_nonzero(blocks[:, i, :, : i + 1, :]) > 0 for i in range(T))


def test_plot_repeated_dims_flags_accumulate(tmp_path):
    # `--dims d=3 --dims n=2`: argparse kept only the last list, so d silently fell back to the small default
    out = tmp_path / "s6.png"
    rc = main(["plot", str(ROOT / "specs" / "s6.dsf"), "-o", str(out), "--T", "3", "--dims", "d=3", "--dims", "n=2",
               "r=2", "--dims", "d=0"])
    assert rc == 2 and not out.exists()  # the third list's d=0 is seen, so all three were read
