"""The CPU-testable parts of the GPU benchmark (dsfc/gpu_bench.py): arguments, sizes, the device peak table, the JSON
writer, ratios, skipped anchors, and one smoke run of the S6 group on CPU under the interpreter (anchors absent)."""


from tests.triton._device import DEVICE  # noqa: E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import json  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dsfc import gpu_bench  # noqa: E402
from dsfc.cli import main as cli_main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")


def test_arguments_and_sizes():
    args = gpu_bench.parse_args([])
    assert args.groups == list(gpu_bench.GROUPS) and args.dtype is None and not args.quick  # bf16 on a GPU
    full = gpu_bench.plan_sizes(args)
    assert full["batch"] == 8 and full["T"] == (1024, 4096, 16384)
    assert 1024 <= full["s6"]["d"] <= 2048 and full["s6"]["n"] == 16
    assert 8 <= full["gla"]["H"] <= 16 and 64 <= full["gla"]["K"] <= 128
    quick = gpu_bench.plan_sizes(gpu_bench.parse_args(["--quick"]))
    assert quick["T"] == (1024,) and quick["s6"]["d"] < full["s6"]["d"]
    custom = gpu_bench.plan_sizes(gpu_bench.parse_args(["--quick", "-T", "64", "128", "--batch", "2"]))
    assert custom["T"] == (64, 128) and custom["batch"] == 2
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--repeats", "0"])
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--groups", "nope"])


@pytest.mark.parametrize("name,key", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                      ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"),
                                      ("Tesla T4", None)])
def test_device_peak_table(name, key):
    assert gpu_bench.device_key(name) == key
    if key:
        assert gpu_bench.PEAKS[key]["hbm_GBps"] > 1000


def test_ratios_bandwidth_and_json(tmp_path):
    rows = [gpu_bench.Row("s6", "generated (triton)", 1024, {"d": 8}, fwd_ms=2.0, fwdbwd_ms=6.0, min_bytes=4_000_000_000),
            gpu_bench.Row("s6", "mamba-ssm selective_scan_fn", 1024, {"d": 8}, fwd_ms=1.0, fwdbwd_ms=3.0,
                          min_bytes=4_000_000_000),
            gpu_bench.Row("s6", "fla x", 1024, {"d": 8}, skipped="fla not importable")]
    gpu_bench.add_ratios(rows, peak_GBps=4000.0)
    assert rows[0].achieved_GBps == pytest.approx(2000.0) and rows[0].frac_peak_bw == pytest.approx(0.5)
    assert rows[1].speedup_vs_generated_fwd == pytest.approx(2.0)
    assert rows[1].speedup_vs_generated_fwdbwd == pytest.approx(2.0)
    assert rows[0].speedup_vs_generated_fwd is None and rows[2].speedup_vs_generated_fwd is None
    report = gpu_bench.Report("NVIDIA H200", gpu_bench.PEAKS["H200"], "2.11", "3.6", "quick", "now", rows)
    path = gpu_bench.write_report(report, gpu_bench.result_path(report.device, tmp_path))
    assert path.name == "nvidia-h200.json"
    data = json.loads(path.read_text())
    assert data["device"] == "NVIDIA H200" and data["peak"]["hbm_GBps"] == 4800.0
    assert [r["impl"] for r in data["rows"]] == [r.impl for r in rows] and data["rows"][2]["skipped"]
    assert "skipped: fla not importable" in gpu_bench.format_rows(rows)


def test_missing_anchor_is_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "fla", None)  # import fla -> ImportError
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    for name in ("chunk_gla", "chunk_simple_gla", "chunk_linear_attn", "selective_scan_fn",
                 "mamba_chunk_scan_combined", "fused_recurrent_gla"):
        fn, reason = gpu_bench.import_anchor(name)
        assert fn is None and name in reason


# bf16: the GPU run's dtype. The kernel reads its streams (u, dt, B, C and the hoisted dt projection) rounded to
# bf16 once each and rounds y once (each 2^-9 relative); the loop runs in fp32, so a few bf16 eps (2^-8) apart
SMOKE_TOL = {"fp32": 1e-5, "bf16": 4 * 2.0 ** -8}


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreted smoke run; on a GPU gpu_check.sh runs the benchmark")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_smoke_run_on_cpu(monkeypatch, tmp_path, dtype):
    """The S6 group end to end on CPU: the generated kernel (interpreted) times, the anchor row is skipped with its
    reason, and the independent sequential loop agrees with the generated output. In bf16 too: the H100 run of
    2026-11-27 failed there (the benchmark handed the core a bf16 input, which S6's hoisted projection multiplies
    with fp32 weights in torch), and the CPU smoke ran fp32 only."""
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    out = tmp_path / "cpu.json"
    assert gpu_bench.main(["--device", "cpu", "--groups", "s6", "--dtype", dtype, "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["complete"] is True and data["mode"] == "smoke"
    rows = data["rows"]
    by_impl = {r["impl"]: r for r in rows}
    gen = by_impl["generated (triton)"]
    assert gen["fwd_ms"] > 0 and gen["fwdbwd_ms"] > 0 and not gen["skipped"]
    assert "not importable" in by_impl["mamba-ssm selective_scan_fn"]["skipped"]
    loop = by_impl["torch sequential loop"]
    assert loop["max_rel_diff_vs_generated"] <= SMOKE_TOL[dtype] and loop["speedup_vs_generated_fwd"] > 0


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreted smoke run; on a GPU gpu_check.sh runs the benchmark")
def test_sweeps_and_kernel_rows_on_cpu(monkeypatch, tmp_path):
    """The GPU-only rows (the diagonal kernels' sweep, the outer kernel alone and its sweep), forced on at smoke
    size: every configuration computes what the default does, and the reference row of a group stays the
    generated module's own ("generated (...)"), not a sweep row. fla and mamba-ssm are absent, so the outer
    groups' kernel rows run without their anchors."""
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    monkeypatch.setattr(gpu_bench, "_sweeping", lambda device, T: True)
    monkeypatch.setattr(gpu_bench, "OUTER_SWEEP", {"scalar": [(32, 16, 4, "split")], "per_key": [(16, 16, 4, "split")]})
    monkeypatch.setitem(sys.modules, "fla", None)  # the kernel rows do not need the anchors
    out = tmp_path / "sweep.json"
    groups = ["s6", "ssd", "gla", "linear_attention"]
    assert gpu_bench.main(["--device", "cpu", "--groups", *groups, "-T", "20", "-o", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    for r in rows:
        assert r["skipped"] is None or "not importable" in r["skipped"], (r["group"], r["impl"], r["skipped"])
    s6 = [r for r in rows if r["group"] == "s6" and r["note"] == "sweep"]
    assert len(s6) == len(gpu_bench.DIAGONAL_SWEEP)
    for group in ("ssd", "gla", "linear_attention"):
        kernel = [r for r in rows if r["group"] == group and r["impl"].startswith("generated kernel only")]
        assert len(kernel) == 2, group  # the default configuration and the one sweep entry
    for r in s6 + [r for r in rows if r["impl"].startswith("generated kernel only")]:
        # every configuration computes what the generated module does (the outer groups compare the kernel
        # alone with the module's output: SSD without its D term, see bench_ssd)
        assert r["max_rel_diff_vs_generated"] <= 1e-5, (r["group"], r["impl"])
        assert r["speedup_vs_generated_fwd"] > 0  # the ratio is taken against the generated module's own row
    for group in ("ssd", "gla", "linear_attention"):
        # the sweep runs after the anchors: a sweep configuration that ends the CUDA context cannot cost them
        impls = [r["impl"] for r in rows if r["group"] == group]
        anchors = [k for k, impl in enumerate(impls) if impl.startswith(("fla", "mamba"))]
        sweep = [k for k, impl in enumerate(impls) if impl.startswith("generated kernel only (chunked_outer_triton) ")]
        assert anchors and sweep and max(anchors) < min(sweep), (group, impls)


try:
    import triton as _triton

    @_triton.jit
    def _noop_kernel(x, n, BLOCK: _triton.language.constexpr):
        pass
except ImportError:  # the test that uses it is skipped
    _noop_kernel = None


def test_warm_mode_compiles_slices_and_times_nothing(monkeypatch, tmp_path):
    """--warm PART/PARTS: every triton.autotune built afterwards keeps slice PART of its configs (PARTS processes
    compile all of them between them), every row runs once untimed, and the sweep is sliced the same way."""
    triton = pytest.importorskip("triton")
    from triton.runtime import autotuner

    assert gpu_bench.parse_args(["--warm", "2/5"]).warm == (2, 5)
    for bad in ("5/5", "x", "1/0", "-1/3"):
        with pytest.raises(SystemExit):
            gpu_bench.parse_args(["--warm", bad])
    monkeypatch.setattr(autotuner.Autotuner, "__init__", autotuner.Autotuner.__init__)  # undone after the test
    gpu_bench.slice_autotune_configs(1, 3)
    configs = [triton.Config({"BLOCK": b}) for b in (16, 32, 64, 128, 256)]
    tuned = triton.autotune(configs=configs, key=["n"])(_noop_kernel)
    assert [c.kwargs["BLOCK"] for c in tuned.configs] == [32, 256]  # configs[1::3]
    one = triton.autotune(configs=configs[:1], key=["n"])(_noop_kernel)
    assert len(one.configs) == 1  # a single config is every part's
    monkeypatch.setattr(gpu_bench, "_WARM", (0, 2))
    calls = []
    assert gpu_bench.time_ms(lambda: calls.append(1), "cpu", repeats=5) is None and calls == [1]

def test_cli_bench_gpu_arguments(capsys):
    assert cli_main(["bench", "--quick"]) == 2
    assert cli_main(["bench"]) == 2
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            cli_main(["bench", "--gpu", "--quick"])


def test_probe_runs_one_configuration_against_the_torch_scan():
    """benchmarks/probe_outer_configs.py's per-configuration check, here under the interpreter at a small size: a
    right configuration is ok (and the grid only names value slices its V can hold)."""
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    sys.path.insert(0, str(gpu_bench.ROOT / "benchmarks"))
    try:
        import probe_outer_configs as probe
    finally:
        sys.path.pop(0)
    assert all(bv <= V for K, V, decay, schedule, bv, w in probe.GRID)
    out = probe.run_one(8, 8, 2, "split", 0, 0, B=1, T=21, H=1)
    assert out["ok"] and out["max_rel_err"] < 3e-2


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreted smoke run; on a GPU gpu_check.sh runs the benchmark")
def test_softmax_attention_group_smoke_run(tmp_path):
    """The quadratic-attention group on CPU: the fused softmax kernels (interpreted), the two-pass kernels and torch's
    scaled_dot_product_attention on the same q, k, v agree (an independent implementation), and the rows carry their
    ratios."""
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    out = tmp_path / "cpu.json"
    assert gpu_bench.main(["--device", "cpu", "--groups", "softmax_attention", "-o", str(out)]) == 0
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    gen = rows["generated (triton, fp32)"]
    assert gen["fwd_ms"] > 0 and gen["fwdbwd_ms"] > 0 and not gen["skipped"]
    # the half path (in fp16 on CPU, whose run is fp32): the same kernels on fp16 q, k, v, against the fp32 row's
    # output; listed last, it is the group's reference for the speed ratios
    half = rows["generated (triton, float16)"]
    assert half["fwd_ms"] > 0 and half["fwdbwd_ms"] > 0 and not half["skipped"] and half["dtype"] == "float16"
    assert 0 < half["max_rel_diff_vs_generated"] <= 1e-2  # fp16 inputs, L, P and y: 2^-11 per rounding
    assert gen["speedup_vs_generated_fwd"] > 0 and half["speedup_vs_generated_fwd"] is None
    # the two passes the module ran before the fused kernels: the same numbers, a ratio against the fused row
    two = rows["two-pass kernels (triton, float16)"]
    assert not two["skipped"] and 0 < two["max_rel_diff_vs_generated"] <= 1e-2 and two["speedup_vs_generated_fwd"] > 0
    sdpa = next(r for name, r in rows.items() if name.startswith("torch scaled_dot_product_attention"))
    assert not sdpa["skipped"] and sdpa["max_rel_diff_vs_generated"] <= 2e-2  # bf16 inputs: 2^-8 per rounding
    assert sdpa["speedup_vs_generated_fwd"] > 0


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreted smoke run; on a GPU gpu_check.sh runs the benchmark")
def test_gla_step_group_smoke_run(monkeypatch, tmp_path):
    """The GLA decode-step group on CPU: the module's core and the decode kernel alone time at T = 1 (interpreted);
    with fla absent its row is skipped with the reason."""
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    monkeypatch.setitem(sys.modules, "fla", None)
    out = tmp_path / "step.json"
    assert gpu_bench.main(["--device", "cpu", "--groups", "gla_step", "-o", str(out)]) == 0
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    for impl in ("generated (torch streams + triton)", "generated decode kernel (chunked_outer_triton, T = 1)"):
        assert rows[impl]["T"] == 1 and rows[impl]["fwd_ms"] > 0 and not rows[impl]["skipped"], impl
    assert "not importable" in rows["fla fused_recurrent_gla"]["skipped"]


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreted smoke run; on a GPU gpu_check.sh runs the benchmark")
def test_gated_deltanet_group_smoke_run(monkeypatch, tmp_path):
    """The Gated DeltaNet group on CPU: the Triton path and the torch path time on the same lets and agree (the
    torch row's difference from the Triton row is fp32 rounding); with fla absent its row is skipped with the
    reason."""
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    monkeypatch.setitem(sys.modules, "fla", None)
    out = tmp_path / "gdn.json"
    assert gpu_bench.main(["--device", "cpu", "--groups", "gated_deltanet", "-o", str(out)]) == 0
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    gen = rows["generated (torch streams + triton)"]
    torch_path = rows["generated (torch path: chunk loop in Python)"]
    for r in (gen, torch_path):
        assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and not r["skipped"]
    assert torch_path["max_rel_diff_vs_generated"] <= 1e-5
    assert "not importable" in rows["fla chunk_gated_delta_rule"]["skipped"]
