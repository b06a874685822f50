"""Found by the eighth user hunt (a new user of the generated modules and the CLI: the delta-rule Triton path with
odd shapes, T = 0 / 1, batch 1, strided / flat / half / float64 initial states, gradients through the state only,
no_grad / inference_mode, torch.compile and torch.export of it; dims as numpy ints; CRLF / BOM / tab specs; odd spec
file names; analyze --json; check --dims with inexact derived dims; bench, plot, compare and catalog argument edge
cases). Each test failed before its fix.

- ``dsfc plot --dpi 1`` (up to 5) computed the whole plot, then failed drawing its text with "internal error:
  RuntimeError: FT_Set_Char_Size ... invalid ppem value ... This is a bug in dsfc" (exit 3): the minimum is now 10
  dpi, refused (exit 2) before the compute.
- ``torch.jit.script(model)`` (or of a user's model holding one) failed with TorchScript's "Comprehension ifs are
  not supported yet" pointing into the generated file, which reads as a bug in it: the modules'
  ``__prepare_scriptable__`` (called by torch.jit.script first, on submodules too) now raises a RuntimeError saying
  TorchScript is not supported and naming torch.compile / torch.export.
- ``dsfc catalog specs/*.dsf specs/s6.dsf`` wrote S6's section twice, and ``dsfc catalog a/x.dsf b/x.dsf`` two
  sections with one anchor id (the table of contents led to the first for both); ``-o docs`` (a directory) failed
  only after every spec had been analysed. A spec given twice is now one section; two specs of one name and a
  directory output are refused (exit 2) before any analysis.
- A spec saved as UTF-16 (Windows Notepad's "Unicode") was "file is binary, not a spec (contains NUL bytes)" over a
  line of replacement characters: now "file is UTF-16 text ...; save it as UTF-8", with the first line readable.
- ``dsfc compile specs`` (a directory, as a new user tries first) was a bare "cannot read spec: Is a directory": it
  now says how to give the directory's specs (``specs/*.dsf``). An empty argument (``dsfc compile "$SPEC"`` with the
  variable unset) was read as the current directory (": error: ... Is a directory"): now
  "'': error: cannot read spec: the path is empty".
- ``print(model)`` was ``DeltaNet()``: neither the dims the module was built with nor its backend (a model summary
  could not tell a d=512 layer from a d=64 one). The modules' ``extra_repr`` now lists both.
- ``dsfc check``'s table had a fixed 28-character label column: "triton grad dt_bias (vs torch)" pushed its row's
  shape and errors out of line with the others. The widest label now sets the column.
- The two compile switches disagreed: ``DSFC_SCAN_COMPILE=nevr`` (a typo) silently meant auto, and ``DSFC_COMPILE=off``
  (a spelling ``DSFC_SCAN_COMPILE`` takes) was warned about and meant auto, i.e. compiling. Both now take the same
  spellings (0 / never / off / false / no, 1 / always / on / true / yes) and warn about any other value.
- ``dsfc bench --gpu`` without a GPU said "use --device cpu for a smoke test", an option ``dsfc bench`` does not take
  ("unrecognized arguments: --device"): it now names ``python benchmarks/gpu_bench.py --device cpu``.

Found, not fixed (no GPU to check a change):

- ``dsfc.runtime.triton_delta._launch_cfg`` keeps the state slice at MAX_STATE_TILE (2048) fp32 entries only up to
  K = 128: the block's value width has a floor of 16, so Gated DeltaNet's default K = 256 gets a [256, 16] slice
  (4096 entries; fp64 at K = 128 likewise twice its cap), the size ptxas spilled registers at for K = 128, [128, 32].
  Correct under the interpreter; speed (and, at K >= 1024, whether it compiles at all) is unchecked on sm_90.
- ``dsfc analyze --json`` prints one object for one spec and a list for several, so a script over a glob that
  happens to match one spec gets another shape.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsfc.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
S4D = str(SPECS / "s4d.dsf")


@pytest.mark.parametrize("dpi", ["1", "5"])
def test_plot_refuses_a_resolution_too_small_for_its_text(tmp_path, capsys, dpi):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.png"
    assert main(["plot", S4D, "-o", str(out), "--dims", "d=2", "Nh=1", "--T", "2", "--dpi", dpi]) == 2
    err = capsys.readouterr().err
    assert "dsfc plot: error: --dpi must be at least 10" in err and f"got {dpi}" in err and "internal" not in err
    assert not out.exists()
    assert main(["plot", S4D, "-o", str(out), "--dims", "d=2", "Nh=1", "--T", "2", "--dpi", "10"]) == 0
    assert out.is_file()


@pytest.mark.parametrize("name", ["s6", "softmax_attention"])  # the recurrent and the quadratic template
def test_torch_jit_script_says_it_is_not_supported(name):
    import importlib

    module = importlib.import_module(f"generated.{name}")
    cls = next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.nn.Module))
    model = cls()
    for target in (model, torch.nn.Sequential(torch.nn.Identity(), model)):
        with pytest.raises(RuntimeError, match=rf"{cls.__name__}: torch.jit.script is not supported .*torch.compile"):
            torch.jit.script(target)


def test_catalog_takes_each_spec_once_and_refuses_a_shared_anchor(tmp_path, capsys):
    spec = str(SPECS / "hgrn.dsf")
    out = tmp_path / "c.md"
    assert main(["catalog", spec, str(SPECS / ".." / "specs" / "hgrn.dsf"), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.count('<a id="hgrn"></a>') == 1 and "(1 spec(s))" in capsys.readouterr().out
    other = tmp_path / "b" / "hgrn.dsf"
    other.parent.mkdir()
    other.write_text(Path(spec).read_text())
    out.unlink()
    assert main(["catalog", spec, str(other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{spec} and {other} would share the section anchor #hgrn" in err and not out.exists()
    assert main(["catalog", spec, "-o", str(tmp_path)]) == 2
    assert "is a directory; give the output file" in capsys.readouterr().err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_spec_is_named_as_such(tmp_path, capsys, encoding):
    spec = tmp_path / "s4d.dsf"
    text = Path(S4D).read_text()
    spec.write_bytes((b"" if encoding == "utf-16" else "\ufeff".encode(encoding)) + text.encode(encoding))
    assert main(["compile", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:1:1: error: file is UTF-16 text" in err and "save it as UTF-8" in err, err
    assert "binary" not in err and "\ufffd" not in err and text.splitlines()[0][:60] in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["compile", "check", "analyze", "catalog"])
def test_a_directory_given_as_a_spec_says_how_to_give_its_specs(tmp_path, capsys, command):
    args = [command, str(SPECS)] + (["-o", str(tmp_path / "out.md")] if command == "catalog" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{SPECS}: error: cannot read spec: " in err and f"(give its specs, e.g. {SPECS / '*.dsf'})" in err, err
    assert not list(tmp_path.iterdir())


def test_print_shows_the_dims_and_the_backend():
    from generated.deltanet import DeltaNet
    from generated.softmax_attention import SoftmaxAttention

    assert repr(DeltaNet(d=4, H=1, K=2, V=3)) == "DeltaNet(d=4, H=1, K=2, V=3, backend='auto')"
    model = torch.nn.Sequential(SoftmaxAttention(d=4, H=2, K=2, V=2, backend="torch"))
    assert "(0): SoftmaxAttention(d=4, H=2, K=2, V=2, backend='torch')" in repr(model)


def test_check_table_columns_line_up():
    from dsfc.check import CheckReport, CheckRow

    rows = [CheckRow(what, "B=2 T=7", 1e-17, 1e-15, True) for what in ("forward", "triton grad dt_bias (vs torch)")]
    lines = CheckReport("M", {}, rows).table().splitlines()[1:]
    assert len({line.index("B=2") for line in lines}) == 1, lines


def test_the_compile_switches_take_the_same_spellings_and_name_a_typo():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from dsfc.runtime import compiled_chunks, scans\n"
            "print(compiled_chunks.MODE, scans.COMPILE)")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "DSFC_COMPILE": "off", "DSFC_SCAN_COMPILE": "nevr"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["never", "auto"]
    assert "DSFC_SCAN_COMPILE must be auto, never or always (or 0 / 1), got 'nevr': using auto" in run.stderr
    assert "DSFC_COMPILE must" not in run.stderr


def test_bench_gpu_without_a_gpu_names_a_command_that_exists(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device") as exc:
        main(["bench", "--gpu", "--quick"])
    hint = "python benchmarks/gpu_bench.py --device cpu"
    assert hint in str(exc.value.code) and (ROOT / "benchmarks" / "gpu_bench.py").is_file()


@pytest.mark.parametrize("command", ["compile", "check", "analyze"])
def test_an_empty_spec_path_is_named_as_empty(capsys, command):
    assert main([command, ""]) == 2
    assert capsys.readouterr().err.startswith("'': error: cannot read spec: the path is empty\n")
