#!/usr/bin/env bash
# The device check for a session that has a GPU (~7 minutes in all; budget it against the session's device time):
#   (a) tests/triton on the real GPU, compiled Triton (no interpreter): every generated kernel vs the reference,
#       forward and backward -- Triton 3.6 miscompiles some kernels on Hopper (fla issue 640), so the interpreter
#       passing is not enough. Parallel over pytest-xdist workers when it is installed (compiling dominates);
#   (b) the benchmark, one process per group (s6, s6_step, ssd, gla, linear_attention) with its own timeout, so that one
#       anchor's autotuning or a hang cannot eat the others' time; each writes OUT_DIR/bench-<group>.json after every
#       T, and the finished groups are merged into OUT_DIR/merged.json (copy it to benchmarks/results/<device>.json).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_bench.py arguments...]   (OUT_DIR default: /tmp/dsfc-gpu-check)
# Environment: TEST_TIMEOUT (s, default 200), BENCH_TIMEOUT (s per group, default 100; BENCH_TIMEOUT_<group>
# overrides it for one group), BENCH_GROUPS (which groups, in order), DSFC_TEST_WORKERS (12).
# Budget (H200, 2026-11-26): the tests ~90 s over 14 workers; s6 ~50 s with its sweep; the anchors' first-call
# autotuning (fla, mamba-ssm SSD) did not finish within 60-100 s per group: give ssd, gla and linear_attention 180 s
# or more, e.g. in a second device call of their own (BENCH_GROUPS="linear_attention ssd gla").
# Anchors (mamba-ssm's Triton SSD files, fla) are used when importable, else their rows say why they were skipped.
set -u -o pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/dsfc-gpu-check}"
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-dsfc}"
export DSFC_TEST_DEVICE=cuda   # tests/triton/_device.py: CUDA tensors, no TRITON_INTERPRET
unset TRITON_INTERPRET
status=0

python -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee "$out/tests.log" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,memory.total --format=csv 2>&1 | tee -a "$out/tests.log"

echo "== (a) tests/triton on the GPU"
opts=""
python -c "import xdist" 2>/dev/null && opts="-n ${DSFC_TEST_WORKERS:-12}"
python -c "import pytest_timeout" 2>/dev/null && opts="$opts --timeout 120"   # one hung kernel fails its test only
timeout "${TEST_TIMEOUT:-200}" python -m pytest tests/triton -q -p no:cacheprovider $opts --tb=short -rfE \
    --durations=10 2>&1 | tee -a "$out/tests.log" || status=1

echo "== (b) benchmark"
for group in ${BENCH_GROUPS:-s6 linear_attention ssd gla s6_step}; do
    limit_var="BENCH_TIMEOUT_$group"   # e.g. BENCH_TIMEOUT_ssd=150: mamba-ssm's autotuning is the slow part
    timeout "${!limit_var:-${BENCH_TIMEOUT:-100}}" python benchmarks/gpu_bench.py --groups "$group" "$@" -o "$out/bench-$group.json" \
        2>&1 | tee -a "$out/bench.log" || status=1
done
python benchmarks/gpu_bench.py --merge "$out"/bench-*.json -o "$out/merged.json" --markdown 2>&1 \
    | tee -a "$out/bench.log" || status=1
exit $status
