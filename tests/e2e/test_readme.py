"""The README's runnable examples stay true: every ```python block runs as written (from the repository root, where
`generated` imports), and the bad-spec example prints exactly the error the README shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    """The fenced blocks opened by ```lang (``""``: a bare fence), in order."""
    out, current = [], None
    for line in README.splitlines():
        if current is None and line.startswith("```"):
            current = [] if line[3:].strip() == lang else False
        elif current is not None and line.startswith("```"):
            if current is not False:
                out.append("\n".join(current) + "\n")
            current = None
        elif current:
            current.append(line)
        elif current == []:
            current = [line]
    return out


@pytest.mark.parametrize("k", range(len(_blocks("python"))))
def test_python_block_runs(k):
    code = _blocks("python")[k]
    done = subprocess.run([sys.executable, "-c", code + "\nprint('README-OK')"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "README-OK" in done.stdout, done.stderr[-2000:]


def test_bad_spec_example_prints_the_error_shown(tmp_path):
    """Section 5: specs/s6.dsf with `dt` misspelt in A gives the error text the README quotes, line and column
    included, and exit code 2."""
    shown = next(b for b in _blocks("") if "unknown name 'dtt'" in b)
    spec = (ROOT / "specs" / "s6.dsf").read_text(encoding="utf-8")
    a_line = next(line for line in spec.splitlines() if line.startswith("A["))
    bad = spec.replace(a_line, a_line.replace("-dt[c]", "-dtt[c]"))
    assert bad != spec
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "bad.dsf").write_text(bad, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "dsfc", "compile", "specs/bad.dsf", "-o", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == shown.strip()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tour_spec_is_the_catalog_s6_without_comments():
    """Section 1 shows specs/s6.dsf: the same lines in the same order, comments and blank lines dropped."""
    shown = next(b for b in _blocks("") if b.startswith("model S6"))
    spec = (ROOT / "specs" / "s6.dsf").read_text(encoding="utf-8")
    lines = [line.split("#")[0].rstrip() for line in spec.splitlines()]
    assert [x for x in lines if x] == [x.rstrip() for x in shown.splitlines() if x.strip()]


def test_tour_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """The tour's ```bash lines (sections 2, 3 and 6) run from a directory holding specs/, as a new user would:
    exit 0 and the files they say they write. Skipped: the catalog-wide `specs/*.dsf` lines and the benchmarks
    (minutes), and pip."""
    import json
    import shlex
    import shutil

    from dsfc.cli import main

    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    lines = [line.split("#")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    tour = [shlex.split(line)[1:] for line in lines if line.startswith("dsfc ") and "*" not in line
            and not line.startswith("dsfc bench")]
    assert {argv[0] for argv in tour} == {"analyze", "compile", "check", "compare", "plot"}, tour
    for argv in tour:
        if argv[0] == "check":
            argv = argv + ["--no-triton"]  # the Triton rows run interpreted: slow, and tests/triton covers them
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        if argv[:2] == ["analyze", "specs/s6.dsf"] and "--json" in argv:
            assert json.loads(out)["model"] == "S6"
        if argv[0] == "check":
            assert "PASS" in out and "FAIL" not in out, out
    spec_sha = __import__("hashlib").sha256((tmp_path / "specs" / "s6.dsf").read_bytes()).hexdigest()
    first = (tmp_path / "generated" / "s6.py").read_text().splitlines()[0]
    assert "from specs/s6.dsf" in first and spec_sha[:16] in first, first
    assert (tmp_path / "s6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tour_python_block_gives_the_shapes_its_comments_state(monkeypatch):
    """Section 4's comments: y [2, 100, 64], state [2, 64, 16]; step keeps the state layout; dsf_matrices are the
    dense per-step matrices A [B, T, N, N], B [B, T, N, d], C [B, T, p, N], D [B, T, p, d] (N = d*n = 1024)."""
    code = next(b for b in _blocks("python") if "from generated.s6 import S6" in b)
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    assert tuple(env["y"].shape) == (2, 100, 64)
    assert tuple(env["state"].shape) == (2, 64, 16) and tuple(env["y_t"].shape) == (2, 64)
    shapes = [tuple(env[k].shape) for k in "ABCD"]
    assert shapes == [(2, 8, 1024, 1024), (2, 8, 1024, 64), (2, 8, 64, 1024), (2, 8, 64, 64)], shapes
