"""Odd but well-formed specs through the CLI: names that collide with Python or the generated module, degenerate
matrices, constant sums and sizes too large to check. Each either works end to end or stops with a clear message and
exit code 2; none raises a traceback, and no output file is left behind by a failed compile."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dsfc.cli import main

BASE = """model M
dim d = 4
dim n = 2
input u[d]
state h[c: d, j: n]
output y[d]
param W[n, d] ~ normal(0, 1)
param a_log[c: d, j: n] = log(j + 1)
let b[j: n] = sum(k, W[j, k] * u[k])
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * exp(-exp(a_log[c, j]))
B[(c, j), k] = delta(c, k) * b[j]
C[o, (c, j)] = delta(o, c)
"""


def _run(tmp_path, capsys, text, *cmd, name="bad.dsf"):
    path = tmp_path / name
    path.write_text(text)
    rc = main([cmd[0], str(path), *cmd[1:]])
    io = capsys.readouterr()
    assert "Traceback" not in io.err
    return rc, io.out, io.err, path


@pytest.mark.parametrize("dim", ["self", "lambda", "dtype", "device", "state", "backend"])
def test_a_dim_named_like_a_python_or_module_name_checks(tmp_path, capsys, dim):
    text = BASE.replace("dim n", f"dim {dim}").replace(": n]", f": {dim}]").replace("W[n,", f"W[{dim},")
    rc, out, err, _ = _run(tmp_path, capsys, text, "check", "--no-triton")
    assert rc == 0, err
    assert "PASS" in out


@pytest.mark.parametrize("model", ["None", "True", "F", "BACKENDS"])
def test_a_model_name_the_class_cannot_take_is_an_error(tmp_path, capsys, model):
    out_dir = tmp_path / "out"
    rc, _, err, path = _run(tmp_path, capsys, BASE.replace("model M", f"model {model}"), "compile", "-o", str(out_dir))
    assert rc == 2
    assert f"{path}:1:1: error: model name {model!r} cannot name the nn.Module class" in err
    assert not out_dir.exists()


@pytest.mark.parametrize("stem, cls", [("none", "NoneModel"), ("f", "FModel"), ("true", "TrueModel")])
def test_a_file_name_that_would_make_a_bad_class_name_gets_a_suffix(tmp_path, capsys, stem, cls):
    out_dir = tmp_path / "out"
    rc, _, err, _ = _run(tmp_path, capsys, BASE.replace("model M\n", ""), "compile", "-o", str(out_dir),
                         name=f"{stem}.dsf")
    assert rc == 0, err
    spec = importlib.util.spec_from_file_location(f"odd_{stem}", out_dir / f"{stem}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert getattr(mod, cls)()(torch.randn(1, 3, 4)).shape == (1, 3, 4)


def test_a_zero_C_is_an_error_not_a_broken_module(tmp_path, capsys):
    out_dir = tmp_path / "out"
    text = BASE.replace("C[o, (c, j)] = delta(o, c)", "C[o, (c, j)] = 0 * delta(o, c)")
    rc, _, err, path = _run(tmp_path, capsys, text, "compile", "-o", str(out_dir))
    assert rc == 2
    assert f"{path}:12:1: error: matrix C is zero: the output never reads the state" in err
    assert not out_dir.exists()


def test_a_sum_whose_body_ignores_its_index_is_a_product(tmp_path, capsys):
    # sum(k: 10^9, 1) printed as (1).expand(..., 10^9).sum(...): an AttributeError, and 10^9 adds if it had run
    text = BASE.replace("C[o, (c, j)] = delta(o, c)", "C[o, (c, j)] = delta(o, c) * sum(k: 10^9, 1) / 10^9")
    rc, out, err, _ = _run(tmp_path, capsys, text, "check", "--no-triton")
    assert rc == 0, err
    assert "PASS" in out


@pytest.mark.parametrize("change, what", [
    (("dim d = 4", "dim d = 10^9"), "the parameters hold"),  # a derived dim: not shrunk for the check
    (("param W[n, d]", "param Z[100000, 100000]\nparam W[n, d]"), "the parameters hold 1e+10 numbers"),
    (("dim n = 2", "dim n = 10^7"), "the state has N = "),
])
@pytest.mark.parametrize("cmd", ["check", "plot"])
def test_sizes_too_large_to_check_stop_before_allocating(tmp_path, capsys, change, what, cmd):
    pytest.importorskip("matplotlib") if cmd == "plot" else None
    extra = ["--no-triton"] if cmd == "check" else ["-o", str(tmp_path / "x.png")]
    rc, _, err, _ = _run(tmp_path, capsys, BASE.replace(*change), cmd, *extra)
    assert rc == 2
    assert f"dsfc {cmd}: error:" in err and (what in err or "GiB" in err)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_the_quadratic_module_rejects_a_bad_dim_like_the_others(value):
    # generated/softmax_attention.py (quadratic template) had no dim check: d=0 was a ZeroDivisionError
    from generated.softmax_attention import SoftmaxAttention

    with pytest.raises(ValueError, match="SoftmaxAttention: dim d must be a positive integer"):
        SoftmaxAttention(d=value)


SPEC = str(Path(__file__).resolve().parents[2] / "specs" / "s4d.dsf")


@pytest.mark.parametrize("cmd, target", [
    ("compile", "file"), ("compile", "under-a-file"), ("plot", "dir"), ("plot", "under-a-file"), ("catalog", "dir"),
])
def test_an_output_path_that_cannot_be_written_is_a_clear_error(tmp_path, capsys, cmd, target):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    out = {"file": blocker, "under-a-file": blocker / "out", "dir": tmp_path}[target]
    if cmd == "plot":
        pytest.importorskip("matplotlib")
        out = out if target == "dir" else out.with_suffix(".png")  # the suffix picks the format: give one
    args = [cmd, SPEC, "-o", str(out)] + (["--T", "4"] if cmd == "plot" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    # plot and catalog refuse a directory before computing anything (plot.image_format, cli's catalog -o check);
    # the rest fail at the write
    reason = "is a directory" if target == "dir" else "cannot write"
    assert "Traceback" not in err and f"dsfc {cmd}: error:" in err and reason in err and str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # no partial or temporary file left


@pytest.mark.parametrize("extra, message", [
    (["--dims", "d=abc"], "--dims d: expected an integer, got 'abc'"),
    (["-T", "0"], "-T, --batch and --repeats must be at least 1"),
])
def test_bench_rejects_bad_options_with_a_message(capsys, extra, message):
    assert main(["bench", SPEC] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_exploding_recurrence_fails_the_check_with_a_reason(tmp_path, capsys):
    """|A| = 1e300: the reference itself overflows float64 after a few steps. The check says so (exit 1) instead
    of a traceback from the module's input check on the overflowed state."""
    text = """model Explode
dim d = 3
input u[d]
state h[c: d]
output y[d]
A[c, c2] = delta(c, c2) * 1e300
B[c, k] = delta(c, k)
C[o, c] = delta(o, c)
"""
    rc, out, err, _ = _run(tmp_path, capsys, text, "check", "--no-triton")
    assert rc == 1
    assert "BAD reference stays finite" in out and "overflows float64" in out


def test_plot_of_an_exploding_recurrence_is_an_error(tmp_path, capsys):
    text = "model Explode\ndim d = 3\ninput u[d]\nstate h[c: d]\noutput y[d]\nA[c, c2] = delta(c, c2) * 1e300\n" \
           "B[c, k] = delta(c, k)\nC[o, c] = delta(o, c)\n"
    out_png = tmp_path / "x.png"
    rc, out, err, _ = _run(tmp_path, capsys, text, "plot", "-o", str(out_png))
    assert rc == 2 and "overflows float64" in err and not out_png.exists()


@pytest.mark.parametrize("stem, module", [("9lives", "m9lives"), ("my-spec", "my_spec"), ("class", "class_"),
                                          ("s6", "s6")])
def test_the_generated_file_is_an_importable_module_name(tmp_path, capsys, stem, module):
    """The output file is named after the spec, made a valid Python module name, so `import` works on it."""
    out = tmp_path / "out"
    rc, _, err, _ = _run(tmp_path, capsys, BASE, "compile", "-o", str(out), name=f"{stem}.dsf")
    assert rc == 0, err
    assert [p.name for p in out.iterdir()] == [f"{module}.py"]
    spec = importlib.util.spec_from_file_location(module, out / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.M(d=4, n=2)(torch.randn(1, 3, 4)).shape == (1, 3, 4)


def test_a_post_op_using_an_index_as_a_number_checks(tmp_path, capsys):
    """`(1 + e)` in a post-op prints as an index tensor in the compute dtype; _posts must define that dtype."""
    text = """model PostIdx
dim H = 2
dim V = 3
input u[d: H * V]
state h[a: H, b: V]
output y[o: H, e: V]
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * 0.5
B[(a, b), k] = delta(k, a * V + b)
C[(o, e), (a, b)] = delta(o, a) * delta(e, b)
post z[o: H, e: V] = y[o, e] * (1 + e)
"""
    rc, out, err, _ = _run(tmp_path, capsys, text, "check", "--no-triton")
    assert rc == 0, out + err
    assert "PASS" in out


def test_initialisers_that_break_at_other_dims_are_value_errors(tmp_path, capsys):
    """Initialisers are checked at the spec's default dims when compiling; at other dims the module checks them
    when built: a torch failure (a negative std) or inf / NaN values (log(0)) is a ValueError naming the dims."""
    text = """model BadInit
dim d = 4
input u[d]
state h[c: d]
output y[d]
param w[c: d] = log(c + 5 - d)
param W[d, d] ~ normal(0, d - 3)
A[c, c2] = delta(c, c2) * sigmoid(w[c])
B[c, k] = W[c, k]
C[o, c] = delta(o, c)
"""
    out = tmp_path / "out"
    rc, _, err, _ = _run(tmp_path, capsys, text, "compile", "-o", str(out), name="badinit.dsf")
    assert rc == 0, err
    spec = importlib.util.spec_from_file_location("badinit_mod", out / "badinit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.BadInit(d=4)(torch.randn(1, 2, 4)).shape == (1, 2, 4)
    with pytest.raises(ValueError, match=r"parameter 'w' has inf / NaN entries after the spec's initialiser at d=5"):
        mod.BadInit(d=5)
    with pytest.raises(ValueError, match=r"initialisers fail at d=2: normal expects std >= 0"):
        mod.BadInit(d=2)
    mod.BadInit(d=5, device="meta")  # no values to check on the meta device


def test_internal_error_is_one_line_with_exit_3(tmp_path, monkeypatch, capsys):
    """An exception the spec did not cause (a bug in dsfc, e.g. a construct a printer does not know) is one line
    naming it and where, exit 3, no traceback and no file written; DSFC_TRACEBACK=1 raises it."""
    from dsfc import cli

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported subscript K**2")

    monkeypatch.setattr("dsfc.pipeline.compile_spec", broken)
    monkeypatch.setattr(cli, "compile_spec", broken, raising=False)
    out = tmp_path / "out"
    spec = Path(__file__).resolve().parents[2] / "specs" / "s6.dsf"
    monkeypatch.delenv("DSFC_TRACEBACK", raising=False)
    assert main(["compile", str(spec), "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: unsupported subscript K**2" in err and "bug in dsfc" in err
    assert "Traceback" not in err and not (out.exists() and any(out.iterdir()))
    monkeypatch.setenv("DSFC_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="K\\*\\*2"):
        main(["compile", str(spec), "-o", str(out)])
