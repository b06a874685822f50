"""Where tests/triton run: on CPU under the Triton interpreter (the default; sets TRITON_INTERPRET=1, so import this
before triton or any generated module), or with DSFC_TEST_DEVICE=cuda on a GPU with compiled kernels
(benchmarks/gpu_check.sh): the interpreter passing does not prove the compiled kernel right (Triton 3.6 miscompiles
some kernels on Hopper, see /work/shared/gpu-anchors.md)."""

import os

DEVICE = os.environ.get("DSFC_TEST_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise RuntimeError(f"DSFC_TEST_DEVICE must be cpu or cuda, got {DEVICE!r}")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
