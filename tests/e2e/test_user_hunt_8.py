"""Found by the eighth user hunt (a new user of the generated modules and the CLI: the delta-rule Triton path with
odd shapes, T = 0 / 1, batch 1, strided / flat / half / float64 initial states, gradients through the state only,
no_grad / inference_mode, torch.compile and torch.export of it; dims as numpy ints; CRLF / BOM / tab specs; odd spec
file names; analyze --json; check --dims with inexact derived dims; bench, plot, compare and catalog argument edge
cases). Each test failed before its fix.

- ``dsfc plot --dpi 1`` (up to 5) computed the whole plot, then failed drawing its text with "internal error:
  RuntimeError: FT_Set_Char_Size ... invalid ppem value ... This is a bug in dsfc" (exit 3): the minimum is now 10
  dpi, refused (exit 2) before the compute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
