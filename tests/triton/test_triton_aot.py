"""The kernels compile for a real GPU (sm_90, Hopper), checked without one: tests/triton/aot_compile.py in a fresh
process without TRITON_INTERPRET (the interpreter runs kernels as numpy and skips Triton's typing and lowering, so a
kernel can pass every interpreted test and still fail to compile). Covers S6 and RG-LRU (forward and backward, fused
and states-out, fp32 / bf16 operands / fp64), the dense block-scan kernels, the delta rule's and the DPLR scan's state-passing kernels, the quadratic-attention kernels (exact
fp32 / fp64 and the bf16 / fp16 tensor-core path), the fused softmax-attention kernels (the same variants, in a test of
their own: --softmax-only) and the outer-product kernels (both schedules, every decay kind)."""

import os
import subprocess
import sys

import pytest

from tests.triton._device import DEVICE
from tests.triton.test_triton_diagonal import ROOT

pytest.importorskip("triton")


def _aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "triton" / "aot_compile.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"this triton's ahead-of-time API differs: {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the kernels are compiled and run by the other tests")
def test_kernels_compile_for_sm90():
    out = _aot("--no-outer", str(ROOT / "specs" / "s6.dsf"), str(ROOT / "specs" / "rg_lru.dsf"))
    assert "ok s6" in out and "ok rg_lru" in out and "ok dense block scan" in out and "ok attention kernels" in out
    assert "ok delta-rule kernels" in out and "ok DPLR kernels" in out


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the kernels are compiled and run by the other tests")
def test_outer_kernels_compile_for_sm90():
    assert "ok outer kernels" in _aot("--outer-only")


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the kernels are compiled and run by the other tests")
def test_softmax_kernels_compile_for_sm90():
    assert "ok softmax kernels" in _aot("--softmax-only")
