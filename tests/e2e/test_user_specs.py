"""Specs a new user writes that the catalog does not cover (found by writing new model variants): each must compile,
check and run like the catalog's. Compared against the float64 reference recurrence, never against stored outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsf_testing import F64, build, compile_and_build, rel_err, run_steps, state_err
from dsfc.analysis.structure import Family
from dsfc.check import run_check, small_dims
from dsfc.cli import main
from dsfc.ir.symspec import DimError
from dsfc.pipeline import compile_spec, compile_text
from dsfc.reference import reference_forward

TOL = 1e-8
ROOT = Path(__file__).resolve().parents[2]

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


def test_check_dims_tell_grouped_indexing_apart():
    """dsfc check shrank H, G to 2, 2, so R = H // G was 1 and `h // R` read the same group as `h % G` (or `h`): a
    spec indexing its groups wrongly passed the check. Derived dims larger than 1 by default stay larger than 1."""
    right = compile_text(SSD_GROUPS, "ssd_groups.dsf")
    wrong = compile_text(SSD_GROUPS.replace("Cm[h // R, j]", "Cm[h % G, j]"), "ssd_groups.dsf")
    dims = small_dims(right)
    assert right.sym.dim_values(dims)["R"] > 1
    ys = []
    for result in (right, wrong):
        model = build(result, dims, seed=0).model
        params = {name: p.detach() for name, p in model.named_parameters()}
        u = torch.randn(2, 5, model._in_features(), dtype=F64, generator=torch.Generator().manual_seed(1))
        ys.append(reference_forward(result.sym, result.sym.dim_values(dims), params, u)[0])
    assert rel_err(ys[1], ys[0]) > 1e-3  # the two specs differ at the check dims


def test_check_dims_keep_rg_lru_blocks_wider_than_one():
    result = compile_spec(ROOT / "specs" / "rg_lru.dsf")
    assert result.sym.dim_values(small_dims(result))["bw"] > 1  # was W = nh = 5: blocks of width 1


# a literal stride in a subscript: in range at the defaults (where the compiler checks it), out of range at the
# dims `dsfc check` shrank to (d = 5), where the generated module indexed past u: an "internal error", exit 3
LITERAL_STRIDE = """
model LiteralStride
dim d = 8
dim H = 2
dim V = 4
input u[d]
state S[h: H, b: V]
output y[h: H, b: V]
param W[H, V, d] ~ normal(0, 0.4)
param a[H] ~ uniform(0.5, 0.9)
A[(h, b), (h2, b2)] = delta(h, h2) * delta(b, b2) * a[h]
B[(h, b), m] = W[h, b, m]
C[(o, e), (h, b)] = delta(o, h) * delta(e, b)
post z[h: H, b: V] = y[h, b] * sigmoid(u[h * 4 + b])
"""


def test_check_picks_dims_where_the_subscripts_stay_in_range(tmp_path, capsys):
    result = compile_text(LITERAL_STRIDE, "literal_stride.dsf")
    dims = small_dims(result)
    assert dims["d"] >= 4 * (dims["H"] - 1) + dims["V"]
    report = run_check(result, triton=False)
    assert report.ok, report.table()
    spec = tmp_path / "literal_stride.dsf"
    spec.write_text(LITERAL_STRIDE)
    assert main(["check", str(spec), "--no-triton"]) == 0
    capsys.readouterr()
    for argv in (["bench", str(spec), "-T", "4", "--repeats", "1", "--dims", "d=5"],
                 ["plot", str(spec), "--dims", "d=5", "-o", str(tmp_path / "x.png")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "subscript 0 of 'u' reaches 5" in err and "literal_stride.dsf:14:" in err, err
    assert not (tmp_path / "x.png").exists()


def test_bench_reports_bad_dims_without_a_traceback(tmp_path, capsys):
    spec = tmp_path / "ssd_groups.dsf"
    spec.write_text(SSD_GROUPS)
    for dims, msg in ((["H=3", "G=2"], "H // G is not exact"), (["Q=3"], "unknown dim 'Q'"),
                      (["R=2"], "a derived dim"), (["H=0"], "must be positive")):
        assert main(["bench", str(spec), "-T", "4", "--repeats", "1", "--dims", *dims]) == 2
        assert msg in capsys.readouterr().err


# linear attention with the query and key written inline (no lets), a flat output, heads x groups: C's query is a
# sum over the input, which the outer-product split took for the contraction over the state (family fell back to
# the elementwise diagonal scan: right numbers, not the chunked matmul form)
INLINE_QUERY = """
model InlineQuery
dim d = 4
dim H = 2
dim K = 3
dim V = 2
input u[d]
state S[h: H, a: K, b: V]
output y[H * V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
param lam[H] ~ normal(0, 1)
A[(h, a, b), (h2, a2, b2)] = delta(h, h2) * delta(a, a2) * delta(b, b2) * sigmoid(lam[h])
B[(h, a, b), m] = sum(k, W_K[h, a, k] * u[k]) * W_V[h, b, m]
C[o, (h, a, b)] = delta(o, h * V + b) * sum(k, W_Q[h, a, k] * u[k])
"""

INLINE_QUERY_NO_HEADS = """
model InlineQueryNoHeads
dim d = 3
dim K = 2
dim V = 3
input u[d]
state S[a: K, b: V]
output y[b: V]
param W_K[K, d] ~ normal(0, 0.5)
param W_V[V, d] ~ normal(0, 0.5)
param W_Q[K, d] ~ normal(0, 0.5)
A[(a, b), (a2, b2)] = delta(a, a2) * delta(b, b2) * (-0.5)
B[(a, b), m] = sum(k, W_K[a, k] * u[k]) * W_V[b, m]
C[e, (a, b)] = delta(e, b) * sum(k, W_Q[a, k] * u[k]) / sqrt(K)
"""


@pytest.mark.parametrize("text", [INLINE_QUERY, INLINE_QUERY_NO_HEADS], ids=["heads_flat_output", "no_heads"])
def test_inline_query_gets_the_chunked_outer_form(text):
    built = compile_and_build(text)
    assert built.result.structure.family == Family.CHUNKED_OUTER
    gen = torch.Generator().manual_seed(0)
    for b, t in ((1, 1), (3, 33), (2, 100)):
        u = torch.randn(b, t, built.d_in(), generator=gen, dtype=F64)
        h0 = built.initial_state(b, gen)
        y_ref, h_ref = built.reference(u, h0)
        with torch.no_grad():
            y, hT = built.model(u, initial_state=h0, output_final_state=True)
        assert rel_err(y, y_ref) < TOL and state_err(hT, h_ref) < TOL
        y_s, h_s = run_steps(built.model, u, h0)
        assert rel_err(y_s, y_ref) < TOL and state_err(h_s, h_ref) < TOL


# a product of an index or dim with itself (an extent K * K, a subscript c * c) reaches the printers as SymPy's
# K**2, which none of the three index printers (torch, Triton, the reference's) knew: compile or check crashed
SQUARE_SUBSCRIPTS = """
model SqDiag
dim d = 3
input u[d]
state h[c: d * d]
param W[c: d * d] = 0.1 * c
A[c, c2] = delta(c, c2) * sigmoid(W[c] * u[(c * c) % d])
B[c, m] = delta(m, (c * c) % d) * u[c // d]
C[o, c] = delta(o, c // d) * u[(c * c + 1) % d]
"""

SQUARE_FEATURES = """
model QuadFeat
dim d = 3
dim H = 2
dim K = 2
dim V = 3
input u[d]
state S[h: H, f: K * K, b: V]
output y[h: H, b: V]
param W_Q[H, K, d] ~ normal(0, 0.5)
param W_K[H, K, d] ~ normal(0, 0.5)
param W_V[H, V, d] ~ normal(0, 0.5)
let q[h: H, a: K] = sum(m, W_Q[h, a, m] * u[m])
let k[h: H, a: K] = sum(m, W_K[h, a, m] * u[m])
let qf[h: H, f: K * K] = q[h, f // K] * q[h, f % K]
let kf[h: H, f: K * K] = k[h, f // K] * k[h, f % K]
A[(h, f, b), (h2, f2, b2)] = delta(h, h2) * delta(f, f2) * delta(b, b2) * 0.95
B[(h, f, b), m] = kf[h, f] * W_V[h, b, m]
C[(o, e), (h, f, b)] = delta(o, h) * delta(e, b) * qf[h, f] / K
"""


def _sq_diag_loop(W, u, h0):
    """SQUARE_SUBSCRIPTS by hand, one step at a time (independent of dsfc's reference)."""
    b, t, d = u.shape
    c = torch.arange(d * d)
    h, ys = h0.clone(), []
    for i in range(t):
        x = u[:, i]
        h = torch.sigmoid(W * x[:, (c * c) % d]) * h + x[:, (c * c) % d] * x[:, c // d]
        ys.append(torch.zeros(b, d, dtype=F64).index_add_(1, c // d, x[:, (c * c + 1) % d] * h))
    return torch.stack(ys, 1), h


def test_square_subscripts_match_a_hand_loop():
    built = compile_and_build(SQUARE_SUBSCRIPTS)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(3, 33, 3, generator=gen, dtype=F64)
    h0 = built.initial_state(3, gen).reshape(3, -1)
    y_want, h_want = _sq_diag_loop(built.params()["W"], u, h0)
    y_ref, h_ref = built.reference(u, h0)
    assert rel_err(y_ref, y_want) < TOL and state_err(h_ref, h_want) < TOL
    with torch.no_grad():
        y, hT = built.model(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_want) < TOL and state_err(hT, h_want) < TOL


def test_square_feature_extent_compiles_and_checks():
    result = compile_text(SQUARE_FEATURES, "quad_feat.dsf")
    assert result.structure.family == Family.CHUNKED_OUTER
    report = run_check(result, triton=False)
    assert report.ok, report.table()


# derived dims through sqrt / log / a real power (the language allows them when they land on a positive integer)
# were printed as floats (d**0.5) or as torch code naming undefined locals (torch.as_tensor(d, dtype=_dtype)): the
# constructor failed with a TypeError from torch.empty or a NameError
DIM_FUNCTIONS = """
model DimFuncs
dim d = 8
dim L = log(d) / log(2)
dim s = sqrt(d * 2)
dim c3 = 27 ^ (1 / 3)
input u[d]
state h[c: L, j: s]
param W[L, s, d] ~ normal(0, 1)
param Z[c3] ~ normal(0, 1)
A[(c, j), (c2, j2)] = delta(c, c2) * delta(j, j2) * sigmoid(Z[j % c3] * u[c + j])
B[(c, j), m] = W[c, j, m]
C[o, (c, j)] = delta(o, c + j)
"""


def test_derived_dims_through_functions_are_ints():
    built = compile_and_build(DIM_FUNCTIONS)
    m = built.model
    assert (m.L, m.s, m.c3) == (3, 4, 3) and all(type(x) is int for x in (m.L, m.s, m.c3))
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 9, built.d_in(), generator=gen, dtype=F64)
    h0 = built.initial_state(2, gen)
    y_ref, h_ref = built.reference(u, h0)
    with torch.no_grad():
        y, hT = m(u, initial_state=h0, output_final_state=True)
    assert rel_err(y, y_ref) < TOL and state_err(hT, h_ref) < TOL
    assert run_check(built.result, triton=False).ok
    with pytest.raises(ValueError, match=r"dim L = log\(d\)/log\(2\) must be a positive integer"):
        type(m)(d=6)
