#!/usr/bin/env bash
# One short device check for a session that has a GPU (~8 minutes in all):
#   (a) tests/triton on the real GPU, compiled Triton (no interpreter): every generated kernel vs the reference,
#       forward and backward -- Triton 3.6 miscompiles some kernels on Hopper (fla issue 640), so the interpreter
#       passing is not enough;
#   (b) the quick benchmark (dsfc/gpu_bench.py --quick), written to benchmarks/results/<device>.json.
# Anchors (mamba-ssm, fla) are used when importable, else their rows say why they were skipped.
# Each stage has its own timeout so that one hang cannot eat the session's device time.
set -u
cd "$(dirname "$0")/.."
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-dsfc}"
export DSFC_TEST_DEVICE=cuda   # tests/triton/_device.py: CUDA tensors, no TRITON_INTERPRET
unset TRITON_INTERPRET
status=0

python -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" || exit 1

echo "== (a) tests/triton on the GPU"
timeout 270 python -m pytest tests/triton -q -p no:cacheprovider --durations=5 || status=1

echo "== (b) quick benchmark"
# the JSON is rewritten after each group, so a timeout keeps the groups that finished ("complete": false)
timeout 210 python benchmarks/gpu_bench.py --quick || status=1

exit $status
