"""The compiled-chunk CPU path of the diagonal family (``dsfc.runtime.compiled_chunks`` + the generated
``_diagonal_chunk``), checked against the float64 reference recurrence.

Every diagonal-family spec runs the chunk path with ``torch.compile`` replaced by the identity (the generated chunk
body itself, eagerly: fast, and the same Python that Inductor traces), over several chunks and a ragged tail, from a
random initial state. One test then runs the real ``torch.compile`` on a tiny S6 (a few seconds of compile).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest
import torch

from dsfc.analysis.facts import Family
from dsfc.check import small_dims
from dsfc.pipeline import compile_spec
from dsfc.runtime import compiled_chunks

from dsf_testing import F64, build

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.dsf"))


def _diagonal_spec_paths() -> list[Path]:
    """The diagonal-family specs, read from docs/catalog.md's table (its last column names the algorithm), not by
    compiling every spec here: collection runs in every xdist worker, and compiling the catalog at collection cost
    ~30-60 s per worker. test_catalog_doc keeps the table equal to what the analysis says, and each test below checks
    its spec's family again."""
    rows = re.findall(r"^\| ([\w.-]+)\.dsf +\|.*\| diagonal scan +\|$",
                      (ROOT / "docs" / "catalog.md").read_text(encoding="utf-8"), flags=re.M)
    paths = [ROOT / "specs" / f"{stem}.dsf" for stem in rows]
    assert paths and all(p in SPECS for p in paths), rows
    return paths


@pytest.fixture
def chunk_mode(monkeypatch):
    monkeypatch.setattr(compiled_chunks, "MODE", "always")
    monkeypatch.setattr(compiled_chunks, "_broken", False)


def _check_against_reference(b, batch, T, seed=3):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, T, b.d_in(), generator=g, dtype=F64)
    h0 = b.initial_state(batch, g)
    with torch.no_grad():  # the chunk path is inference-only (autograd takes the eager scan)
        assert compiled_chunks.use_compiled_chunks(u, torch.zeros(batch, 1, dtype=F64))
        y, final = b.model(u, initial_state=h0, output_final_state=True)
    y_ref, final_ref = b.reference(u, h0)
    torch.testing.assert_close(y, y_ref.to(y.dtype), rtol=1e-9, atol=1e-9)
    h, h_ref = (final["h"], final_ref["h"]) if isinstance(final, dict) else (final, final_ref)
    torch.testing.assert_close(h.reshape(batch, -1), h_ref.reshape(batch, -1).to(h.dtype), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", _diagonal_spec_paths(), ids=lambda p: p.stem)
def test_chunk_body_matches_reference(path, chunk_mode, monkeypatch):
    result = compile_spec(path)
    assert result.structure.family == Family.DIAGONAL_SCAN, path.stem
    # identity "compiler": exercises the chunk splitting, the state hand-over and the generated step body eagerly
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    b = build(result, small_dims(result))
    _check_against_reference(b, batch=2, T=2 * compiled_chunks.CHUNK + 5)


def test_each_module_compiles_under_its_own_recompile_limit(chunk_mode):
    """Dynamo counts recompiles per code object: every module's chunk function and every S6's ``_lets`` shared one,
    so after 8 (module, batch, dtype) combinations in a process the rest ran eagerly (~10x slower, a log line only).
    With the limit at 1, a second S6 of another width must still get compiled graphs of its own. Each width is also
    the compiled path's check against the reference (a separate S6-only test compiled the same graphs again)."""
    if os.environ.get("DSFC_SKIP_COMPILE_TESTS") == "1":
        pytest.skip("DSFC_SKIP_COMPILE_TESTS=1")
    import torch._dynamo
    from torch._dynamo.utils import counters

    # config.patch, not monkeypatch: monkeypatch's undo deleted the option from dynamo's config module, and every
    # later torch.compile in the process failed with "recompile_limit does not exist"
    result = compile_spec(ROOT / "specs" / "s6.dsf")
    with torch._dynamo.config.patch(recompile_limit=1):
        for d in (3, 5):
            graphs = counters["stats"]["unique_graphs"]
            b = build(result, {"d": d, "n": 2, "r": 1})
            _check_against_reference(b, batch=1, T=compiled_chunks.CHUNK + 3)
            assert counters["stats"]["unique_graphs"] >= graphs + 2, f"d={d}: the lets and the chunk ran eagerly"
    assert torch._dynamo.config.recompile_limit > 1  # restored for the rest of the process
    assert not compiled_chunks._broken


def test_first_compiled_call_says_so_once(chunk_mode, monkeypatch):
    """The first compiled call pauses for seconds: a CompileNotice names the model and DSFC_COMPILE, once per module."""
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)  # the notice, not the compiler, is under test
    b = build(compile_spec(ROOT / "specs" / "s6.dsf"), {"d": 4, "n": 2, "r": 1})
    u = torch.randn(1, compiled_chunks.CHUNK + 3, 4, dtype=F64)
    with torch.no_grad():
        with pytest.warns(compiled_chunks.CompileNotice, match=r"S6: compiling .*DSFC_COMPILE=never"):
            b.model(u)
        with warnings.catch_warnings():
            warnings.simplefilter("error", compiled_chunks.CompileNotice)
            b.model(u)  # compiled already: no second notice


def test_a_module_outside_sys_modules_runs_eagerly_and_says_why(chunk_mode, tmp_path):
    """A generated file exec'd without registering it in sys.modules cannot be traced by Dynamo ("No module named
    ..."); that used to switch compiling off for every module. Now it runs eagerly, with a notice saying why."""
    import importlib.util

    path = tmp_path / "s6_unregistered.py"
    path.write_text(compile_spec(ROOT / "specs" / "s6.dsf").source)
    spec = importlib.util.spec_from_file_location("s6_unregistered", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.S6(d=4, n=2, r=1, dtype=F64)
    u = torch.randn(1, compiled_chunks.CHUNK + 3, 4, dtype=F64)
    with torch.no_grad(), pytest.warns(compiled_chunks.CompileNotice, match="not in sys.modules"):
        y = model(u)
    model.backend = "reference"
    torch.testing.assert_close(y, model(u), rtol=1e-9, atol=1e-9)
    assert not compiled_chunks._broken
