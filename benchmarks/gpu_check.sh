#!/usr/bin/env bash
# The device check for a session that has a GPU (~7 minutes in all; budget it against the session's device time):
#   (a) tests/triton on the real GPU, compiled Triton (no interpreter): every generated kernel vs the reference,
#       forward and backward -- Triton 3.6 miscompiles some kernels on Hopper (fla issue 640), so the interpreter
#       passing is not enough. Parallel over pytest-xdist workers when it is installed (compiling dominates);
#   (b) the benchmark, one process per group (s6, s6_step, ssd, gla, gla_step, linear_attention, gated_deltanet,
#       softmax_attention) with its own timeout, so that one anchor's autotuning or a hang cannot eat the others'
#       time; each writes OUT_DIR/bench-<group>.json after every T, and the finished groups are merged into
#       OUT_DIR/merged.json (copy it to benchmarks/results/<device>.json).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_bench.py arguments...]   (OUT_DIR default: /tmp/dsfc-gpu-check)
# Environment:
#   TEST_TIMEOUT (s, default 200), TEST_PATHS (default tests/triton), DSFC_TEST_WORKERS (12); TEST_VERBOSE=1: one
#     line per test, so that a run cut off by its limit still names what passed and failed;
#   BENCH_GROUPS (which groups, in order), BENCH_TIMEOUT (s per group, default 100; BENCH_TIMEOUT_<group> for one);
#   WARM_PARTS (default 12, at most what GPU memory fits; 0: off), WARM_TIMEOUT (s, default 150): before the timed
#     run, WARM_PARTS processes run it once untimed (`gpu_bench.py --warm i/WARM_PARTS`), each compiling a slice of
#     every anchor's autotune configs into triton's on-disk cache, so that the timed run's autotuning only benchmarks;
#   WARM_WITH_TESTS=1: run that warm phase in the background during the tests (saves its minutes when the session's
#     device time is short; both compile on the CPU cores, so give the tests fewer workers);
#   PHASES (default "tests bench": their order, or a subset; "probe" runs benchmarks/probe_outer_configs.py,
#     PROBE_TIMEOUT).
# Budget (H100 and H200, 2026-11-26): tests/triton ~90 s per half over 14 workers; the probe ~45 s; s6 ~40 s with
# its sweep; linear_attention and ssd ~40-60 s each with their anchors; fla's chunk_gla autotuning did not finish in
# 80 s even after the warm phase: give gla 180 s or more. H100, 2026-11-27: all of tests/triton (470 tests) reached
# 98% in 250 s over 12 workers with WARM_WITH_TESTS=1 (4 parts, gla ssd gla_step) beside it; give it 300 s. After
# that warm phase gla (fla and the sweep included) and gla_step finished well within 170 s and 45 s; ssd was cut at
# 70 s inside mamba-ssm's autotuning: give it 150 s. The whole call took 415 s plus the machine's start.
# H100, 2026-11-27 22:03: tests/triton (533 tests) in 137 s over 14 workers with the warm phase (3 parts: gla ssd
# gated_deltanet) beside it; gla and ssd with their anchors and sweeps within 120 / 125 s; gated_deltanet's fla row
# was cut at 60 s (give it 120 s); a second warm call (softmax_attention, linear_attention, gla_step) took 157 s,
# linear_attention's fla row cut at 80 s: warm the groups you time. The whole first call took 428 s plus the start.
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

run_tests() {
    echo "== (a) ${TEST_PATHS:-tests/triton} on the GPU"
    local opts=""
    python -c "import xdist" 2>/dev/null && opts="-n ${DSFC_TEST_WORKERS:-12}"
    python -c "import pytest_timeout" 2>/dev/null && opts="$opts --timeout 120"   # one hung kernel fails its test only
    # shellcheck disable=SC2086
    timeout "${TEST_TIMEOUT:-200}" python -m pytest ${TEST_PATHS:-tests/triton} -p no:cacheprovider $opts \
        "$([ -n "${TEST_VERBOSE:-}" ] && echo -v || echo -q)" --tb=short -rfE --durations=10 2>&1 | tee -a "$out/tests.log" || status=1
}

run_warm() {
    local groups="${BENCH_GROUPS:-s6 linear_attention ssd gla s6_step gla_step softmax_attention gated_deltanet}" parts="${WARM_PARTS:-12}" i fit
    # each part holds one group's tensors at a time: ~5.5 GB at T=4096 (H100, 2026-11-26: 14 parts ran out of its
    # 80 GB); WARM_GB_PER_PART (default 8) of free memory per part
    fit=$(python -c "import torch; print(max(1, torch.cuda.mem_get_info()[0] // (${WARM_GB_PER_PART:-8} << 30)))")
    [ "$parts" -gt "$fit" ] && parts=$fit
    [ "$parts" -gt 0 ] || return 0
    echo "== (b0) compiling the benchmark's kernels and the anchors' autotune configs in $parts processes"
    local t0=$SECONDS
    for ((i = 0; i < parts; i++)); do
        # shellcheck disable=SC2086
        timeout "${WARM_TIMEOUT:-150}" python benchmarks/gpu_bench.py --groups $groups "$@" --warm "$i/$parts" \
            -o "$out/warm-$i.json.tmp" >"$out/warm-$i.log.tmp" 2>&1 &
    done
    wait
    echo "   done in $((SECONDS - t0)) s; part 0's log:"
    tail -5 "$out/warm-0.log.tmp"
    rm -f "$out"/warm-*.tmp
}

run_bench() {
    local groups="${BENCH_GROUPS:-s6 linear_attention ssd gla s6_step gla_step softmax_attention gated_deltanet}"
    [ -n "${WARM_WITH_TESTS:-}" ] || run_warm "$@"
    echo "== (b) benchmark"
    for group in $groups; do
        limit_var="BENCH_TIMEOUT_$group"   # e.g. BENCH_TIMEOUT_ssd=150: mamba-ssm's autotuning is the slow part
        timeout "${!limit_var:-${BENCH_TIMEOUT:-100}}" python benchmarks/gpu_bench.py --groups "$group" "$@" \
            -o "$out/bench-$group.json" 2>&1 | tee -a "$out/bench.log" || status=1
    done
}

run_probe() {
    echo "== (c) which outer-product kernel configurations run correctly here (one process each)"
    timeout "${PROBE_TIMEOUT:-150}" python benchmarks/probe_outer_configs.py -j "${DSFC_TEST_WORKERS:-12}" \
        -o "$out/probe.json" 2>&1 | tee -a "$out/probe.log" || status=1
}

for phase in ${PHASES:-tests bench}; do
    case $phase in
        tests)
            if [ -n "${WARM_WITH_TESTS:-}" ] && [[ " ${PHASES:-tests bench} " == *" bench "* ]]; then
                # compiling the anchors' autotune configs is CPU work that can overlap the tests (nothing is timed)
                run_warm "$@" >"$out/warm.log" 2>&1 &
                warm_pid=$!
                run_tests
                wait $warm_pid
                cat "$out/warm.log"
            else
                run_tests
            fi ;;
        bench) run_bench "$@" ;;
        probe) run_probe ;;
        *) echo "unknown phase $phase (PHASES: tests bench probe)"; exit 2 ;;
    esac
done
ls "$out"/bench-*.json >/dev/null 2>&1 && python benchmarks/gpu_bench.py --merge "$out"/bench-*.json -o "$out/merged.json" --markdown 2>&1 \
    | tee -a "$out/bench.log" || status=1
exit $status
