"""``dsfc bench``: the two sides compute the same thing, and the peak-memory probe reports a figure per side."""

import sys
from pathlib import Path

import pytest

from dsfc.bench import run_bench
from dsfc.cli import main
from dsfc.pipeline import compile_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


BENCH_DIMS = {
    "s6": {"d": 8, "n": 4},
    "linear_attention": {"d": 8, "H": 2, "K": 4, "V": 4},
    "rwkv6": {"d": 8, "H": 2, "K": 4, "V": 4, "R": 2, "Rw": 3},  # pre-update readout: the loop reads S_(t-1)
    "gated_deltanet": {"d": 8, "H": 2, "K": 4, "V": 4},  # the delta-rule loop
}


@pytest.mark.parametrize("name", sorted(BENCH_DIMS))
def test_bench_sides_agree(name):
    result = compile_spec(SPECS / f"{name}.dsf")
    dims = BENCH_DIMS[name]
    row = run_bench(result, batch=2, T=37, dims=dims, repeats=1)
    # the loop baseline is the same module with its scan swapped for a per-step loop: outputs must agree
    assert row["max_rel_err"] < 1e-5
    assert row["generated_ms"] > 0 and row["loop_ms"] > 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists() or sys.platform != "linux",
                    reason="peak memory is read from /proc (Linux)")
def test_bench_memory_probe(capsys):
    rc = main(["bench", str(SPECS / "s6.dsf"), "-T", "256", "--dims", "d=16", "n=4", "--repeats", "1", "--memory"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "peak memory of one forward: generated" in out
    # the loop materialises [B, T, d, n] decay and input terms (2 x 64 KB here); the figure must be a number
    gen, loop = [float(x) for x in out.split("generated")[-1].replace("MB", "").split("loop")]
    assert gen >= 0 and loop >= 0


@pytest.mark.parametrize("spec, dims, message", [
    ("s4d", ["zz=4"], "unknown dim 'zz'; S4D has dims d, Nh"),
    ("ssd", ["H=3", "G=2"], "H // G is not exact at H=3"),
    ("ssd", ["R=2"], "unknown dim 'R' (a derived dim"),
    ("s6", ["d=0"], "dim d must be positive, got 0"),
    ("s6", ["d=1000000000000"], "GiB in fp32), more than half this machine's"),  # ~6e13 numbers
], ids=["unknown", "not-divisible", "derived", "zero", "larger-than-memory"])
def test_bench_bad_dims_exit_2_before_running(spec, dims, message, capsys):
    # an unknown dim was a TypeError traceback from the module's constructor, H % G != 0 a ValueError traceback
    rc = main(["bench", str(SPECS / f"{spec}.dsf"), "-T", "4", "--repeats", "1", "--dims", *dims])
    captured = capsys.readouterr()
    assert rc == 2
    assert "dsfc bench: error:" in captured.err and message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_bench_repeated_dims_flags_accumulate(capsys):
    # `--dims Nh=2 --dims d=4`: argparse kept only the last list, so Nh silently ran at its default (32)
    rc = main(["bench", str(SPECS / "s4d.dsf"), "-T", "4", "--repeats", "1", "--dims", "Nh=2", "--dims", "d=4"])
    assert rc == 0
    assert "dims={'d': 4, 'Nh': 2}" in capsys.readouterr().out
