"""``dsfc check`` covers the Triton path: interpreted without a GPU (and says so), a note for specs without a kernel,
a failure when the kernel is wrong."""

import os

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")

import dsfc.runtime.triton_diagonal as triton_diagonal  # noqa: E402
from dsfc.check import run_check  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from tests.triton.test_triton_diagonal import GATE, ROOT  # noqa: E402

pytestmark = [pytest.mark.skipif(DEVICE != "cpu", reason="exercises the interpreted (no GPU) path"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")]


def test_cli_check_runs_triton_interpreted_in_a_fresh_process():
    """No TRITON_INTERPRET in the environment and no GPU: `dsfc check` sets it before triton is imported."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    specs = [str(ROOT / "specs" / n) for n in ("rg_lru.dsf", "linear_attention.dsf", "deltanet.dsf")]
    proc = subprocess.run([sys.executable, "-m", "dsfc.cli", "check", *specs], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rglru, rest = out.split("LinearAttention")
    linattn, deltanet = rest.split("DeltaNet")
    for part in (rglru, linattn, deltanet):  # the diagonal, chunked outer-product and (delta rule) block-scan kernels
        assert "ok  triton forward y" in part and "ok  triton grad u (vs torch)" in part
    assert "Triton kernels ran interpreted (TRITON_INTERPRET=1, no GPU)" in rglru
    assert "BAD" not in out and out.count("PASS") == 3


def test_run_check_has_triton_rows():
    rep = run_check(compile_text(GATE, "gate.dsf"), shapes=((2, 3),))
    assert rep.ok, rep.table()
    whats = [r.what for r in rep.rows]
    assert "triton forward y" in whats and "triton final state" in whats and "triton grad W_f (vs torch)" in whats
    assert any("interpreted" in n for n in rep.notes)
    rep = run_check(compile_text(GATE, "gate.dsf"), shapes=((2, 3),), triton=False)
    assert not any(r.what.startswith("triton") for r in rep.rows) and not rep.notes


def test_run_check_fails_a_wrong_kernel(monkeypatch):
    """A kernel off by 1e-6 (far above the fp64 tolerance) makes the check fail on the Triton rows only."""
    launch = triton_diagonal._launch_fwd

    def off(*args):
        out, hT = launch(*args)
        return out + 1e-6, hT

    monkeypatch.setattr(triton_diagonal, "_launch_fwd", off)
    rep = run_check(compile_text(GATE, "gate.dsf"), shapes=((2, 3),))
    bad = [r.what for r in rep.rows if not r.ok]
    assert bad and all(w.startswith("triton") for w in bad), rep.table()
