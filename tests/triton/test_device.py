"""The tests run where tests/triton/_device.py says: under the interpreter on CPU, compiled on a GPU with
DSFC_TEST_DEVICE=cuda. Run after every test module has been imported (pytest collects all of them first, and each
pytest-xdist worker imports every module), so a module that sets TRITON_INTERPRET itself fails here on the GPU run
instead of silently interpreting every kernel (and then failing on CUDA tensors)."""

import os

from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")


def test_interpreter_matches_device():
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    interpreting = isinstance(standard.sum, InterpretedFunction)  # decided when triton.language was imported
    if DEVICE == "cpu":
        assert os.environ.get("TRITON_INTERPRET") == "1" and interpreting
    else:
        assert torch.cuda.is_available(), "DSFC_TEST_DEVICE=cuda without a CUDA device"
        assert os.environ.get("TRITON_INTERPRET", "0") != "1", "a test module turned the Triton interpreter on"
        assert not interpreting, "triton was imported with TRITON_INTERPRET=1"
