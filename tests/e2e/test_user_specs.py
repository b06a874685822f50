"""Specs a new user writes that the catalog does not cover (found by writing new model variants): each must compile,
check and run like the catalog's. Compared against the float64 reference recurrence, never against stored outputs."""

from __future__ import annotations

import pytest

from dsfc.check import run_check, small_dims
from dsfc.cli import main
from dsfc.ir.symspec import DimError
from dsfc.pipeline import compile_text

# Mamba-2 with several groups: the derived dim R = H // G must stay exact when `dsfc check` shrinks the dims
SSD_GROUPS = """
model SSDGroups
dim H = 4
dim P = 3
dim n = 2
dim G = 2
dim R = H // G
input u[h: H, p: P]
state S[h: H, p: P, j: n]
output y[h: H, p: P]
param A_log[h: H] = log(1 + h)
param W_dt[H, H * P] ~ normal(0, 0.3)
param W_B[G, n, H * P] ~ normal(0, 0.3)
param W_C[G, n, H * P] ~ normal(0, 0.3)
let dt[h: H] = softplus(sum(m: H * P, W_dt[h, m] * u[m // P, m % P]))
let Bm[g: G, j: n] = sum(m: H * P, W_B[g, j, m] * u[m // P, m % P])
let Cm[g: G, j: n] = sum(m: H * P, W_C[g, j, m] * u[m // P, m % P])
A[(h, p, j), (h2, p2, j2)] = delta(h, h2) * delta(p, p2) * delta(j, j2) * exp(-dt[h] * exp(A_log[h]))
B[(h, p, j), (h2, p2)] = delta(h, h2) * delta(p, p2) * dt[h] * Bm[h // R, j]
C[(o, e), (h, p, j)] = delta(o, h) * delta(e, p) * Cm[h // R, j]
"""


def test_dim_values_refuses_an_inexact_floor():
    sym = compile_text(SSD_GROUPS, "ssd_groups.dsf").sym
    assert sym.dim_values({"H": 6, "G": 3})["R"] == 2
    with pytest.raises(DimError, match=r"dim 'R': H // G is not exact"):
        sym.dim_values({"H": 3, "G": 2})


def test_check_shrinks_grouped_dims_exactly():
    # the first shrink (every free dim <= 3) gave H = 3, G = 2: R was floored to 1 and the constructor refused it
    result = compile_text(SSD_GROUPS, "ssd_groups.dsf")
    dims = small_dims(result)
    assert dims["H"] % dims["G"] == 0
    report = run_check(result, triton=False)
    assert report.ok, report.table()


def test_bench_reports_bad_dims_without_a_traceback(tmp_path, capsys):
    spec = tmp_path / "ssd_groups.dsf"
    spec.write_text(SSD_GROUPS)
    for dims, msg in ((["H=3", "G=2"], "H // G is not exact"), (["Q=3"], "unknown dim 'Q'"),
                      (["R=2"], "a derived dim"), (["H=0"], "must be positive")):
        assert main(["bench", str(spec), "-T", "4", "--repeats", "1", "--dims", *dims]) == 2
        assert msg in capsys.readouterr().err
