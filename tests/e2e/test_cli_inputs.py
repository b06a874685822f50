"""Bad input to the command line found by the input hunt: each is a clear error (exit 2, nothing written) or the
right result, where it was a silent overwrite or an 'internal error' blaming dsfc for the spec's own problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dsfc.check import run_check
from dsfc.cli import main
from dsfc.pipeline import compile_text

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"

# fine at its default d = 8 (the compiler checks the initialisers there), log(0) at d = 5, log(-2) at d = 3
LOG_D = """model LogD
dim d = 8
input u[d]
state h[c: d]
param w[c: d] = log(d - 5)
A[i, k] = delta(i, k) * 0.5
B[i, k] = delta(i, k) * w[i]
C[i, k] = delta(i, k)
"""


def test_same_module_name_from_two_specs_is_refused(tmp_path, capsys):
    # a/x.dsf and b/x.dsf (or my-spec.dsf and my_spec.dsf) both went to x.py: the second silently replaced the first
    # while both were reported as compiled
    for a, b in (("a/x.dsf", "b/x.dsf"), ("my-spec.dsf", "my_spec.dsf")):
        for name, spec in ((a, "s6"), (b, "hgrn")):
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_text((SPECS / f"{spec}.dsf").read_text())
        out = tmp_path / "out"
        assert main(["compile", str(tmp_path / a), str(tmp_path / b), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / a} and {tmp_path / b} would both be written to" in err and "no files written" in err
        assert not out.exists()


def test_the_same_spec_twice_is_written_once(tmp_path, capsys):
    spec = tmp_path / "s6.dsf"
    spec.write_text((SPECS / "s6.dsf").read_text())
    out = tmp_path / "out"
    assert main(["compile", str(spec), str(tmp_path / "." / "s6.dsf"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.count("compiled ") == 1
    assert [p.name for p in out.iterdir()] == ["s6.py"]


def test_check_falls_back_to_the_default_dims_when_the_initialisers_fail_small(tmp_path, capsys):
    # `dsfc check` (and compile --check) shrank d to 3, where log(d - 5) is NaN: exit 3, "internal error ... a bug in
    # dsfc, not in your spec"; the default dims, where the compiler checked the initialisers, are used instead
    report = run_check(compile_text(LOG_D, "log_d.dsf"), triton=False)
    assert report.ok and report.dims == {"d": 8}, report.table()
    spec = tmp_path / "log_d.dsf"
    spec.write_text(LOG_D)
    assert main(["check", str(spec), "--no-triton"]) == 0
    assert main(["compile", str(spec), "-o", str(tmp_path / "out"), "--check"]) == 0


def test_bench_at_dims_where_the_initialisers_fail_is_a_spec_error(tmp_path, capsys):
    spec = tmp_path / "log_d.dsf"
    spec.write_text(LOG_D)
    assert main(["bench", str(spec), "-T", "4", "--repeats", "1", "--dims", "d=5"]) == 2
    err = capsys.readouterr().err
    # refused before the module is built: log(d - 5) is the initial value's dims-only log argument (a DimDomain)
    assert "log_d.dsf:5:21: d - 5 is 0 at d=5, but as the argument of log it must be positive" in err
    assert "internal error" not in err


def test_python_dash_m_dsfc_runs_the_cli(tmp_path):
    # `python -m dsfc` was "No module named dsfc.__main__" (only the installed `dsfc` script worked)
    proc = subprocess.run([sys.executable, "-m", "dsfc", "--version"], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("dsfc "), proc.stderr


def test_an_empty_output_path_is_a_usage_error(tmp_path, monkeypatch, capsys):
    # -o "" (an unset shell variable in -o "$OUT") is Path(""), the current directory: compile wrote its modules there
    # silently, catalog failed on its temporary file, plot fell back to <stem>.png
    monkeypatch.chdir(tmp_path)
    spec = str(SPECS / "s6.dsf")
    for args in (["compile", spec, "-o", ""], ["catalog", spec, "-o", ""], ["plot", spec, "-o", ""]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert f"dsfc {args[0]}: error: -o/--output is an empty path" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_numeric_options_out_of_range_are_refused(capsys):
    a, b = str(SPECS / "s6.dsf"), str(SPECS / "hgrn.dsf")
    for width in ("0", "-5"):  # printed a table anyway, as if the width were 48
        assert main(["compare", a, b, "--width", width]) == 2
        assert f"dsfc compare: error: --width must be at least 1, got {width}" in capsys.readouterr().err
    for cmd in (["check", a, "--no-triton"], ["plot", a]):  # torch's overflow: exit 3, "a bug in dsfc"
        assert main(cmd + ["--seed", str(2**64)]) == 2
        err = capsys.readouterr().err
        assert "--seed must be a 64-bit signed integer" in err and "internal error" not in err


def test_gpu_bench_refuses_the_cpu_bench_options(capsys):
    # --gpu times fixed groups: specs, --dims, -T, ... were silently ignored
    spec = str(SPECS / "s6.dsf")
    for extra, named in (([spec], "spec arguments"), (["--dims", "d=8"], "--dims"), (["-T", "64"], "-T"),
                         (["--batch", "2", "--memory"], "--batch, --memory")):
        assert main(["bench", "--gpu", *extra]) == 2
        err = capsys.readouterr().err
        assert f"--gpu does not take {named}: it times fixed groups" in err, err
        assert "benchmarks/gpu_bench.py --help" in err


def test_gpu_bench_rejects_a_zero_batch(capsys):
    from dsfc.gpu_bench import parse_args

    with pytest.raises(SystemExit) as exc:  # --batch 0 fell back to the default batch 8
        parse_args(["--batch", "0"])
    assert exc.value.code == 2 and "--batch must be >= 1, got 0" in capsys.readouterr().err


def test_a_spec_named_like_a_package_file_is_refused(tmp_path, capsys):
    # __init__.dsf was written to generated/__init__.py, replacing the package's own file
    out = tmp_path / "out"
    out.mkdir()
    (out / "__init__.py").write_text("# the package\n")
    for stem in ("__init__", "__main__"):
        spec = tmp_path / f"{stem}.dsf"
        spec.write_text((SPECS / "s6.dsf").read_text())
        assert main(["compile", str(spec), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{spec} would be written to {out / (stem + '.py')}, a name Python reserves" in err
        assert "no files written" in err
    assert [p.name for p in out.iterdir()] == ["__init__.py"] and (out / "__init__.py").read_text() == "# the package\n"


def test_check_at_user_dims(capsys):
    """`dsfc check --dims` overrides the small check dims (the rest stay shrunk): the check runs, and passes, at
    exactly those dims; unknown names, non-positive values and inexact derived dims are spec errors naming the spec
    before any check runs."""
    assert main(["check", str(SPECS / "gla.dsf"), "--dims", "d=7", "H=3", "K=5", "V=3", "R=2", "--no-triton"]) == 0
    out = capsys.readouterr().out
    assert "'d': 7, 'H': 3, 'K': 5, 'V': 3, 'R': 2" in out and "PASS" in out
    for dims, message in ((["zz=3"], "unknown dim 'zz'; S6 has dims d, n, r"), (["d=0"], "dim d must be positive"),
                          (["d=x"], "expected an integer")):
        assert main(["check", str(SPECS / "s6.dsf"), "--dims", *dims]) == 2
        assert message in capsys.readouterr().err
    assert main(["check", str(SPECS / "ssd.dsf"), "--dims", "H=3", "G=2"]) == 2
    err = capsys.readouterr().err
    assert "ssd.dsf" in err and "H // G is not exact" in err


def test_an_output_file_that_is_a_directory_stops_the_run_before_any_file(tmp_path, capsys):
    # out/hgrn.py was a directory: s6.py was written, then the run stopped at hgrn.py with "cannot write out: Is a
    # directory" (the directory named, not the file in the way) and exit 2, leaving a partial set of modules
    names = ("s6", "hgrn", "lru")
    for name in names:
        (tmp_path / f"{name}.dsf").write_text((SPECS / f"{name}.dsf").read_text())
    out = tmp_path / "out"
    (out / "hgrn.py").mkdir(parents=True)
    assert main(["compile", *(str(tmp_path / f"{n}.dsf") for n in names), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'hgrn.py'}: it is a directory, not a file; no files written" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["hgrn.py"]  # nothing else written


def test_a_closed_pipe_keeps_the_exit_status_and_the_files(tmp_path):
    # `dsfc compile bad.dsf 2>&1 | head -1`: the second error line hit the closed pipe and the CLI returned 0, so a
    # spec error passed as success under `set -o pipefail`; a closed stdout must not stop a compile half-way either
    bad = tmp_path / "bad.dsf"
    bad.write_text("dim d = 4\ninput u[d]\nstate h[c: d, j: 2]\nA[i, k] = 1\nB[i, k] = 1\nC[i, k] = 1\n")
    good = [SPECS / f"{n}.dsf" for n in ("s6", "hgrn")]
    for specs, stream, code in (([bad], "stderr", 2), (good, "stdout", 0)):
        out = tmp_path / f"out_{stream}"
        proc = subprocess.Popen([sys.executable, "-m", "dsfc", "compile", *map(str, specs), "-o", str(out)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        getattr(proc, stream).close()  # the reader goes away before the first line is written
        other = (proc.stdout if stream == "stderr" else proc.stderr).read().decode()
        assert proc.wait() == code, other
        assert "Traceback" not in other and "Exception ignored" not in other, other
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert written == (["hgrn.py", "s6.py"] if code == 0 else [])  # all or nothing


def test_check_leaves_no_temporary_directory_behind(tmp_path):
    # every `dsfc check` (and bench, plot) imported the generated source from a fresh /tmp/dsfc-* directory that
    # nothing removed: thousands piled up. One directory per process now, removed at exit.
    import os

    env = dict(os.environ, TMPDIR=str(tmp_path), TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "dsfc", "check", str(SPECS / "lru.dsf"), "--no-triton"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout
    assert not list(tmp_path.glob("dsfc-*")), sorted(p.name for p in tmp_path.iterdir())
