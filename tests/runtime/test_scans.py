"""Tests of dsfc.runtime.scans against naive per-step float64 loops.

Tolerances:
* float64 vs the float64 oracle: 1e-10 relative to the output's magnitude.  Both sides compute the same sums in a
  different order; with the O(100) terms per output used here the rounding is ~1e-14.
* float32 vs the float64 oracle: 2e-5 relative to the output's magnitude.  Each output of these tests is a sum of
  at most a few hundred products (fp32 unit roundoff 6e-8, error growth ~ number of terms), and the chunked
  algorithms only regroup those sums; 2e-5 leaves a ~3x margin over the worst error we saw and is still 100x below
  anything a wrong decay factor or a misplaced chunk boundary would produce.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

import dsfc.runtime.scans as scans
from dsfc.runtime import chunked_delta_scan, chunked_outer_scan, diagonal_scan

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

F64 = torch.float64
RTOL_F64 = 1e-10
RTOL_F32 = 2e-5


@pytest.fixture(autouse=True)
def _eager_only(monkeypatch):
    """Every test runs the eager path unless it opts in to compilation itself."""
    monkeypatch.setattr(scans, "COMPILE", "never")


# ---------------------------------------------------------------------------------------------------------------------
# oracles: one Python iteration per time step, float64
# ---------------------------------------------------------------------------------------------------------------------


def naive_diagonal_scan(a, b, h0=None):
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), F64)  # float64 or complex128
    a, b = a.to(dtype), b.to(dtype)
    state_shape = (b.shape[0], *b.shape[2:])
    h = torch.zeros(state_shape, dtype=dtype) if h0 is None else h0.to(dtype).expand(state_shape)
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1) if out else b.clone()


def naive_outer_scan(q, k, v, log_decay=None, h0=None, readout="post"):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, y_t = S_t^T q_t (post) or S_{t-1}^T q_t (pre), per (batch, head);
    returns (y, S_T)."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=F64) if h0 is None else h0.to(F64)
    ys = []
    for t in range(T):
        S_prev = S
        if log_decay is not None:
            d = torch.exp(log_decay[:, t].to(F64))
            S = S * (d[..., None, None] if log_decay.dim() == 3 else d[..., None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhkv,bhk->bhv", S if readout == "post" else S_prev, q[:, t]))
    y = torch.stack(ys, 1) if ys else torch.zeros(B, 0, H, V, dtype=F64)
    return y, S


def assert_close_rel(actual, expected, rtol):
    """|actual - expected| <= rtol * max|expected| (errors measured against the output's magnitude)."""
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.to(F64) - expected.to(F64)).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * max(scale, 1e-30), f"max error {err:.3e} vs scale {scale:.3e} (rtol {rtol})"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def diag_inputs(B, T, S, dtype=F64, seed=0, h0=True):
    g = gen(seed)
    a = torch.rand(B, T, *S, generator=g, dtype=F64) * 1.1 - 0.05  # mostly in (0, 1), some negative, some > 1
    b = torch.randn(B, T, *S, generator=g, dtype=F64)
    h = torch.randn(B, *S, generator=g, dtype=F64) if h0 else None
    return a.to(dtype), b.to(dtype), None if h is None else h.to(dtype)


def outer_inputs(B, T, H, K, V, decay, dtype=F64, seed=0, h0=True):
    g = gen(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=F64)
    k = torch.randn(B, T, H, K, generator=g, dtype=F64) / math.sqrt(K)
    v = torch.randn(B, T, H, V, generator=g, dtype=F64)
    if decay is None:
        ld = None
    elif decay == "scalar":
        ld = -torch.rand(B, T, H, generator=g, dtype=F64) * 0.5
    else:
        ld = -torch.rand(B, T, H, K, generator=g, dtype=F64) * 0.5
    hh = torch.randn(B, H, K, V, generator=g, dtype=F64) if h0 else None
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return cast(q), cast(k), cast(v), cast(ld), cast(hh)


# ---------------------------------------------------------------------------------------------------------------------
# diagonal_scan
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "T,chunk,B,S,with_h0",
    list(itertools.product([1, 7, 64, 100], [4, 16, 64], [1, 3], [(5,), (3, 4)], [False, True])),
)
def test_diagonal_scan_float64(T, chunk, B, S, with_h0):
    a, b, h0 = diag_inputs(B, T, S, h0=with_h0, seed=T * 7 + chunk)
    out = diagonal_scan(a, b, h0, chunk=chunk)
    assert out.dtype == F64 and out.shape == (B, T, *S)
    assert_close_rel(out, naive_diagonal_scan(a, b, h0), RTOL_F64)


@pytest.mark.parametrize("T,chunk", [(7, 4), (100, 16), (300, 64), (1000, 4)])
def test_diagonal_scan_float32(T, chunk):
    a, b, h0 = diag_inputs(2, T, (3, 4), dtype=torch.float32, seed=T)
    a = a.clamp(-1, 1)  # keep |h| bounded so the fp32 error bound in the module docstring applies
    out = diagonal_scan(a, b, h0, chunk=chunk)
    assert out.dtype == torch.float32
    assert_close_rel(out, naive_diagonal_scan(a, b, h0), RTOL_F32)


def test_diagonal_scan_chunk_one_and_two():
    a, b, h0 = diag_inputs(2, 37, (3,), seed=1)
    ref = naive_diagonal_scan(a, b, h0)
    for chunk in (1, 2, 3):
        assert_close_rel(diagonal_scan(a, b, h0, chunk=chunk), ref, RTOL_F64)


def test_diagonal_scan_broadcast_transition():
    """a with size-1 state dims (one decay per head) broadcasts against b, as for Mamba-2 written per state."""
    g = gen(3)
    a = torch.rand(2, 50, 3, 1, 1, generator=g, dtype=F64)
    b = torch.randn(2, 50, 3, 4, 5, generator=g, dtype=F64)
    h0 = torch.randn(2, 3, 4, 5, generator=g, dtype=F64)
    out = diagonal_scan(a, b, h0, chunk=8)
    assert_close_rel(out, naive_diagonal_scan(a.expand_as(b), b, h0), RTOL_F64)


def test_diagonal_scan_empty_and_single_step():
    a, b, h0 = diag_inputs(2, 0, (3, 2))
    out = diagonal_scan(a, b, h0)
    assert out.shape == (2, 0, 3, 2) and out.dtype == F64
    a, b, h0 = diag_inputs(2, 1, (3, 2))
    assert_close_rel(diagonal_scan(a, b, h0), a[:, :1] * h0[:, None] + b, RTOL_F64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_diagonal_scan_half_inputs_accumulate_in_fp32(dtype):
    a, b, h0 = diag_inputs(2, 200, (8,), dtype=dtype, seed=5)
    a = a.clamp(0, 1)
    out = diagonal_scan(a, b, h0, chunk=16)
    assert out.dtype == dtype
    # Same inputs (exactly representable in fp32) scanned in fp32: only the final rounding to `dtype` differs.
    ref = diagonal_scan(a.float(), b.float(), h0.float(), chunk=16)
    assert torch.equal(out, ref.to(dtype))
    assert_close_rel(ref, naive_diagonal_scan(a, b, h0), RTOL_F32)


def test_diagonal_scan_complex():
    g = gen(11)
    a = torch.polar(torch.rand(2, 40, 3, generator=g, dtype=F64), torch.randn(2, 40, 3, generator=g, dtype=F64))
    b = torch.randn(2, 40, 3, generator=g, dtype=torch.complex128)
    out = diagonal_scan(a, b, chunk=4)
    ref = naive_diagonal_scan(a.to(torch.complex128), b)
    assert (out - ref).abs().max() < 1e-12


def test_diagonal_scan_gradcheck():
    a, b, h0 = diag_inputs(2, 11, (2, 3), seed=2)
    inputs = [x.clone().requires_grad_() for x in (a, b, h0)]
    # chunk 3 on T = 11: padding, 4 chunks, and a second recursion level for the 3 carries.
    assert torch.autograd.gradcheck(lambda a, b, h: diagonal_scan(a, b, h, chunk=3), inputs)


def test_diagonal_scan_gradient_matches_oracle():
    a, b, h0 = diag_inputs(2, 130, (4,), seed=9)
    w = torch.randn(2, 130, 4, generator=gen(10), dtype=F64)
    grads = []
    for fn in (lambda *x: diagonal_scan(*x, chunk=16), naive_diagonal_scan):
        xs = [x.clone().requires_grad_() for x in (a, b, h0)]
        (fn(*xs) * w).sum().backward()
        grads.append([x.grad for x in xs])
    for got, want in zip(*grads):
        assert_close_rel(got, want, RTOL_F64)


def test_diagonal_scan_long_strong_decay():
    """T = 8192, per-step decays exp(-160 u) (underflow to 0 in fp32), exact zeros, and exact ones; fp32 and fp64.

    The inputs are fp32 numbers, so one float64 oracle serves both dtypes.
    """
    g = gen(4)
    B, T, D = 1, 8192, 6
    a = torch.exp(-160 * torch.rand(B, T, D, generator=g))
    a[:, ::97] = 0.0  # a = 0: the state restarts from b
    a[:, :, 0] = 1.0  # a = 1 in one channel: a running sum (the largest values)
    a[:, 1000:1100, 1] = 1.0
    b = torch.randn(B, T, D, generator=g)
    ref = naive_diagonal_scan(a, b)
    for dtype, tol in ((torch.float32, RTOL_F32), (F64, RTOL_F64)):
        out = diagonal_scan(a.to(dtype), b.to(dtype), chunk=64)
        assert torch.isfinite(out).all()
        # Compare per channel: the running-sum channel is ~100x larger than the decaying ones.
        for d in range(D):
            assert_close_rel(out[..., d], ref[..., d], tol)


@settings(max_examples=25, deadline=None, database=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(0, 150),
    S=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    chunk=st.integers(1, 40),
    with_h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_diagonal_scan_property(B, T, S, chunk, with_h0, seed):
    a, b, h0 = diag_inputs(B, T, tuple(S), h0=with_h0, seed=seed)
    out = diagonal_scan(a, b, h0, chunk=chunk)
    assert out.shape == (B, T, *S)
    assert_close_rel(out, naive_diagonal_scan(a, b, h0), RTOL_F64)


class _CountOps(torch.overrides.TorchFunctionMode):
    """Counts torch function calls (tensor methods and torch.* functions) made inside the block."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fn", ["diagonal", "outer-diag"])
def test_no_python_loop_over_time(fn):
    """T = 4096 steps take a few hundred torch calls (O(chunk + T / chunk)), not O(T)."""
    T = 4096
    with _CountOps() as ops:
        if fn == "diagonal":
            diagonal_scan(torch.rand(1, T, 2), torch.rand(1, T, 2), chunk=64)
        else:
            chunked_outer_scan(*outer_inputs(1, T, 1, 2, 2, "diag", dtype=torch.float32)[:4], chunk=64)
    assert ops.calls < T / 4, ops.calls


def test_diagonal_scan_rejects_bad_shapes():
    with pytest.raises(ValueError):
        diagonal_scan(torch.rand(2, 5, 3), torch.rand(2, 5, 4))
    with pytest.raises(ValueError):
        diagonal_scan(torch.rand(2, 5, 3), torch.rand(2, 5, 3), chunk=0)
    with pytest.raises(TypeError):
        diagonal_scan(torch.ones(2, 5, 3, dtype=torch.int64), torch.ones(2, 5, 3, dtype=torch.int64))


def test_diagonal_scan_compile_failure_falls_back(monkeypatch):
    """If the compiled path raises, the call still returns the eager result and compilation is switched off."""

    def broken(*args, **kwargs):
        raise RuntimeError("simulated Inductor failure")

    monkeypatch.setattr(scans, "COMPILE", "always")
    monkeypatch.setattr(scans, "_compile_broken", False)
    monkeypatch.setattr(scans, "_compiled", {"summary": broken, "states": broken})
    a, b, h0 = diag_inputs(1, 70, (3,), dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="simulated Inductor failure"):
        out = diagonal_scan(a, b, h0)
    assert scans._compile_broken
    assert_close_rel(out, naive_diagonal_scan(a, b, h0), RTOL_F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls are silent and eager
        diagonal_scan(a, b, h0)


@pytest.mark.parametrize("T", [1, 5, 16, 17, 100, 600])
def test_diagonal_scan_compiled_path_logic(monkeypatch, T):
    """The compiled path's padding, flattening and carry recursion, with the uncompiled loop bodies plugged in."""
    monkeypatch.setattr(scans, "COMPILE", "always")
    monkeypatch.setattr(scans, "_compile_broken", False)
    monkeypatch.setattr(scans, "_compiled", {"summary": scans._flat_summary, "states": scans._flat_states})
    a, b, h0 = diag_inputs(2, T, (3, 4), seed=T)
    with torch.no_grad():
        out = diagonal_scan(a, b, h0)
    assert_close_rel(out, naive_diagonal_scan(a, b, h0), RTOL_F64)


def test_diagonal_scan_compiled_path_not_used_for_autograd_or_broadcast(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled path used")

    monkeypatch.setattr(scans, "COMPILE", "always")
    monkeypatch.setattr(scans, "_compile_broken", False)
    monkeypatch.setattr(scans, "_compiled", {"summary": refuse, "states": refuse})
    a, b, h0 = diag_inputs(2, 50, (3,))
    diagonal_scan(a.requires_grad_(), b, h0)  # autograd recording
    with torch.no_grad():
        diagonal_scan(a[:, :, :1].expand(2, 50, 3), b, h0)  # expanded (stride-0) transition
        diagonal_scan(a[:, :, :1], b, h0)  # broadcast transition


def test_diagonal_scan_compiled_small(monkeypatch):
    """The one compiled test: a small inference call through torch.compile matches the oracle.

    Compilation takes ~10-60 s on the 2-core CPU (less with a warm Inductor cache), so it only runs when
    DSFC_TEST_COMPILE=1.
    """
    import os

    if os.environ.get("DSFC_TEST_COMPILE") != "1":
        pytest.skip("set DSFC_TEST_COMPILE=1 to run the torch.compile test")
    monkeypatch.setattr(scans, "COMPILE", "always")
    a, b, h0 = diag_inputs(2, 100, (3, 4), dtype=torch.float32, seed=8)
    a = a.clamp(-1, 1)
    with torch.no_grad():
        out = diagonal_scan(a, b, h0)
    assert not scans._compile_broken
    assert_close_rel(out, naive_diagonal_scan(a, b, h0), RTOL_F32)


# ---------------------------------------------------------------------------------------------------------------------
# chunked_outer_scan
# ---------------------------------------------------------------------------------------------------------------------

DECAYS = [None, "scalar", "diag"]


def _outer_cases():
    """T x chunk x decay, each decay kind cycling through (B, H) in {(1, 1), (3, 3)} x (h0 or not)."""
    variants = list(itertools.product([(1, 1), (3, 3)], [False, True]))
    for decay in DECAYS:
        for i, (T, chunk) in enumerate(itertools.product([1, 7, 64, 100], [4, 16, 64])):
            (B, H), with_h0 = variants[i % len(variants)]
            yield pytest.param(T, chunk, B, H, decay, with_h0, id=f"T{T}-C{chunk}-B{B}-H{H}-{decay}-h0{int(with_h0)}")


@pytest.mark.parametrize("T,chunk,B,H,decay,with_h0", list(_outer_cases()))
def test_outer_scan_float64(T, chunk, B, H, decay, with_h0):
    K, V = 5, 3
    q, k, v, ld, h0 = outer_inputs(B, T, H, K, V, decay, h0=with_h0, seed=T + chunk)
    y, S = chunked_outer_scan(q, k, v, ld, h0, chunk=chunk, output_final_state=True)
    y_ref, S_ref = naive_outer_scan(q, k, v, ld, h0)
    assert y.shape == (B, T, H, V) and S.shape == (B, H, K, V)
    assert_close_rel(y, y_ref, RTOL_F64)
    assert_close_rel(S, S_ref, RTOL_F64)
    y_only = chunked_outer_scan(q, k, v, ld, h0, chunk=chunk)
    assert torch.equal(y_only, y)


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("T,chunk,with_h0", [(1, 4, True), (7, 4, False), (37, 16, True), (64, 16, True)])
def test_outer_scan_pre_readout(decay, T, chunk, with_h0):
    """readout="pre" (RWKV): y_t = S_(t-1)^T q_t, including the first step's read of h0 and chunk boundaries."""
    B, H, K, V = 2, 2, 5, 3
    q, k, v, ld, h0 = outer_inputs(B, T, H, K, V, decay, h0=with_h0, seed=T + chunk + 11)
    y, S = chunked_outer_scan(q, k, v, ld, h0, chunk=chunk, output_final_state=True, readout="pre")
    y_ref, S_ref = naive_outer_scan(q, k, v, ld, h0, readout="pre")
    assert_close_rel(y, y_ref, RTOL_F64)
    assert_close_rel(S, S_ref, RTOL_F64)
    with pytest.raises(ValueError, match="readout"):
        chunked_outer_scan(q, k, v, ld, h0, readout="before")


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("T,chunk", [(100, 16), (257, 64), (64, 64)])
def test_outer_scan_float32(decay, T, chunk):
    q, k, v, ld, h0 = outer_inputs(2, T, 3, 8, 6, decay, dtype=torch.float32, seed=T)
    y, S = chunked_outer_scan(q, k, v, ld, h0, chunk=chunk, output_final_state=True)
    assert y.dtype == torch.float32
    y_ref, S_ref = naive_outer_scan(q, k, v, ld, h0)
    assert_close_rel(y, y_ref, RTOL_F32)
    assert_close_rel(S, S_ref, RTOL_F32)


@pytest.mark.parametrize("decay", ["scalar", "diag"])
def test_outer_scan_positive_log_decay(decay):
    """Eigenvalues > 1 (log_decay up to +0.3) are handled exactly, without clamping."""
    q, k, v, ld, h0 = outer_inputs(2, 90, 2, 4, 3, decay, seed=6)
    ld = ld * 1.6 + 0.3  # in [-0.5, 0.3]
    y, S = chunked_outer_scan(q, k, v, ld, h0, chunk=16, output_final_state=True)
    y_ref, S_ref = naive_outer_scan(q, k, v, ld, h0)
    assert_close_rel(y, y_ref, RTOL_F64)
    assert_close_rel(S, S_ref, RTOL_F64)


def test_outer_scan_empty_and_single_step():
    q, k, v, ld, h0 = outer_inputs(2, 0, 3, 4, 5, "diag")
    y, S = chunked_outer_scan(q, k, v, ld, h0, output_final_state=True)
    assert y.shape == (2, 0, 3, 5) and torch.equal(S, h0)
    y, S = chunked_outer_scan(q, k, v, None, None, output_final_state=True)
    assert y.shape == (2, 0, 3, 5) and torch.equal(S, torch.zeros(2, 3, 4, 5, dtype=F64))
    for decay in DECAYS:
        q, k, v, ld, h0 = outer_inputs(2, 1, 3, 4, 5, decay)
        y, S = chunked_outer_scan(q, k, v, ld, h0, output_final_state=True)
        y_ref, S_ref = naive_outer_scan(q, k, v, ld, h0)
        assert_close_rel(y, y_ref, RTOL_F64)
        assert_close_rel(S, S_ref, RTOL_F64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_outer_scan_half_inputs(dtype):
    q, k, v, ld, h0 = outer_inputs(1, 70, 2, 8, 4, "diag", dtype=dtype, seed=3)
    y, S = chunked_outer_scan(q, k, v, ld, h0, chunk=16, output_final_state=True)
    assert y.dtype == dtype and S.dtype == dtype
    y32, S32 = chunked_outer_scan(*(x.float() for x in (q, k, v, ld, h0)), chunk=16, output_final_state=True)
    assert torch.equal(y, y32.to(dtype)) and torch.equal(S, S32.to(dtype))
    assert_close_rel(y32, naive_outer_scan(q, k, v, ld, h0)[0], RTOL_F32)


@pytest.mark.parametrize("decay", DECAYS)
def test_outer_scan_gradcheck(decay):
    # T = 5 with chunk 2: padding, 3 chunks, a 2-level carry scan; chunk 4 on the per-key decay: 2 levels of
    # the divide-and-conquer split plus padding to a power of two in the last chunk.
    q, k, v, ld, h0 = outer_inputs(1, 5, 2, 3, 2, decay, seed=12)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, ld, h0) if x is not None]
    chunk = 4 if decay == "diag" else 2

    def fn(*xs):
        q, k, v, *rest = xs
        ld = rest[0] if decay is not None else None
        y, S = chunked_outer_scan(q, k, v, ld, rest[-1], chunk=chunk, output_final_state=True)
        return y, S

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("decay", ["scalar", "diag"])
def test_outer_scan_long_strong_decay(decay):
    """T = 4096, log decay down to -160 per step plus exact zero transitions (log_decay = -inf), fp32 and fp64.

    The inputs are drawn in fp32, so their float64 copies are exact and one float64 oracle serves both dtypes.
    """
    B, T, H, K, V = 1, 4096, 2, 4, 3
    q, k, v, ld, h0 = outer_inputs(B, T, H, K, V, decay, dtype=torch.float32, seed=21)
    ld = (-160 * torch.rand(ld.shape, generator=gen(22)) ** 4).float()  # mostly mild, down to -160
    ld[:, ::101] = -math.inf  # zero transition: the state restarts
    ld[:, 2000:2100] = 0.0  # no decay for 100 steps
    args32 = (q, k, v, ld, h0)
    y_ref, S_ref = naive_outer_scan(*args32)
    for dtype, tol in ((torch.float32, RTOL_F32), (F64, RTOL_F64)):
        y, S = chunked_outer_scan(*(x.to(dtype) for x in args32), chunk=64, output_final_state=True)
        assert torch.isfinite(y).all() and torch.isfinite(S).all()
        assert_close_rel(y, y_ref, tol)
        assert_close_rel(S, S_ref, tol)


@settings(max_examples=20, deadline=None, database=None)
@given(
    B=st.integers(1, 2),
    T=st.integers(0, 80),
    H=st.integers(1, 3),
    K=st.integers(1, 5),
    V=st.integers(1, 5),
    chunk=st.integers(1, 33),
    decay=st.sampled_from(DECAYS),
    with_h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_outer_scan_property(B, T, H, K, V, chunk, decay, with_h0, seed):
    q, k, v, ld, h0 = outer_inputs(B, T, H, K, V, decay, h0=with_h0, seed=seed)
    y, S = chunked_outer_scan(q, k, v, ld, h0, chunk=chunk, output_final_state=True)
    y_ref, S_ref = naive_outer_scan(q, k, v, ld, h0)
    assert_close_rel(y, y_ref, RTOL_F64)
    assert_close_rel(S, S_ref, RTOL_F64)


def test_outer_scan_rejects_bad_shapes():
    q = torch.rand(1, 4, 2, 3)
    with pytest.raises(ValueError):
        chunked_outer_scan(q, torch.rand(1, 4, 2, 4), torch.rand(1, 4, 2, 5))
    with pytest.raises(ValueError):
        chunked_outer_scan(q, q, torch.rand(1, 4, 2, 5), torch.rand(1, 4, 3))
    with pytest.raises(ValueError):
        chunked_outer_scan(q, q, torch.rand(1, 4, 2, 5), h0=torch.rand(1, 2, 5, 3))


# ---------------------------------------------------------------------------------------------------------------------
# chunked_delta_scan
# ---------------------------------------------------------------------------------------------------------------------


def naive_delta_scan(q, k, v, f, log_decay=None, h0=None, readout="post"):
    """S_t = s_t (I - k_t f_t^T) S_(t-1) + k_t v_t^T, one step at a time (fla's naive delta rule, generalised)."""
    q, k, v, f = (x.to(F64) for x in (q, k, v, f))
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=F64) if h0 is None else h0.to(F64)
    ys = []
    for t in range(T):
        S_prev = S
        erase = k[:, t, :, :, None] * torch.einsum("bhk,bhkv->bhv", f[:, t], S)[:, :, None, :]
        S = S - erase
        if log_decay is not None:
            S = S * torch.exp(log_decay[:, t].to(F64))[..., None, None]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhkv,bhk->bhv", S if readout == "post" else S_prev, q[:, t]))
    return (torch.stack(ys, 1) if ys else torch.zeros(B, 0, H, V, dtype=F64)), S


def delta_inputs(B, T, H, K, V, gated, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    key = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    key = key / key.norm(dim=-1, keepdim=True)  # DeltaNet's L2-normalised keys: I - beta k k^T has |eig| <= 1
    beta = torch.rand(B, T, H, 1, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    ld = -torch.rand(B, T, H, generator=g, dtype=dtype) if gated else None
    h0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, beta * key, v, key, ld, h0


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("readout", ["post", "pre"])
@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (37, 16), (64, 16), (100, 64)])
def test_delta_scan_float64(T, chunk, gated, readout):
    q, k, v, f, ld, h0 = delta_inputs(2, T, 3, 5, 4, gated, seed=T * 7 + chunk)
    y, S = chunked_delta_scan(q, k, v, f, ld, h0, chunk=chunk, output_final_state=True, readout=readout)
    y_ref, S_ref = naive_delta_scan(q, k, v, f, ld, h0, readout=readout)
    assert_close_rel(y, y_ref, RTOL_F64)
    assert_close_rel(S, S_ref, RTOL_F64)


def naive_scaled_delta_scan(q, k, v, f, log_decay, h0=None, readout="post"):
    """S_t = s_t S - k_t f_t^T S + k_t v_t^T (the read carries the decay), step by step in float64."""
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=F64) if h0 is None else h0.to(F64)
    ys = []
    for t in range(T):
        S_prev = S
        erase = k[:, t, :, :, None].to(F64) * torch.einsum("bhk,bhkv->bhv", f[:, t].to(F64), S)[:, :, None, :]
        S = torch.exp(log_decay[:, t].to(F64))[..., None, None] * S - erase
        S = S + (k[:, t, :, :, None] * v[:, t, :, None, :]).to(F64)
        ys.append(torch.einsum("bhkv,bhk->bhv", S if readout == "post" else S_prev, q[:, t].to(F64)))
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("readout", ["post", "pre"])
@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (37, 16), (100, 64)])
def test_scaled_read_delta_scan_float64(T, chunk, readout):
    """scaled_read: A = s I - k f^T as it is (Comba's al I - be k k^T with f = be k), not s (I - k (f / s)^T)."""
    q, k, v, f, ld, h0 = delta_inputs(2, T, 3, 5, 4, True, seed=T * 5 + chunk)
    f = 0.7 * f
    y, S = chunked_delta_scan(q, k, v, f, ld, h0, chunk=chunk, output_final_state=True, readout=readout,
                              scaled_read=True)
    y_ref, S_ref = naive_scaled_delta_scan(q, k, v, f, ld, h0, readout=readout)
    assert_close_rel(y, y_ref, RTOL_F64)
    assert_close_rel(S, S_ref, RTOL_F64)


def test_scaled_read_delta_scan_float32_underflowing_decay():
    """Decays of exp(-200) (0 in fp32) inside chunks: the WY build never divides by a decay, so fp32 stays finite
    and close to float64 (the unscaled read f / s would be inf there)."""
    q, k, v, f, ld, h0 = delta_inputs(2, 50, 2, 6, 5, True, seed=11, dtype=torch.float32)
    ld = ld.clone()
    ld[:, ::7] = -200.0
    y, S = chunked_delta_scan(q, k, v, f, ld, h0, chunk=16, output_final_state=True, scaled_read=True)
    y_ref, S_ref = naive_scaled_delta_scan(q, k, v, f, ld, h0)
    assert torch.isfinite(y).all() and torch.isfinite(S).all()
    assert_close_rel(y, y_ref, RTOL_F32)
    assert_close_rel(S, S_ref, RTOL_F32)


def test_scaled_read_delta_scan_gradcheck():
    inputs = delta_inputs(1, 6, 1, 3, 2, True, seed=9)
    inputs = tuple(x.clone().requires_grad_() for x in inputs)
    fn = lambda *xs: chunked_delta_scan(*xs, chunk=4, output_final_state=True, scaled_read=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_delta_scan_empty_and_bad_shapes():
    q, k, v, f, ld, h0 = delta_inputs(1, 0, 2, 3, 2, True, seed=0)
    y, S = chunked_delta_scan(q, k, v, f, ld, h0, output_final_state=True)
    assert y.shape == (1, 0, 2, 2) and torch.equal(S, h0)
    q, k, v, f, ld, h0 = delta_inputs(1, 5, 2, 3, 2, True, seed=0)
    with pytest.raises(ValueError, match="log_decay"):
        chunked_delta_scan(q, k, v, f, ld[..., None].expand(1, 5, 2, 3), h0)
    with pytest.raises(ValueError, match="expects q, k, f"):
        chunked_delta_scan(q, k, v, f[..., :2], ld, h0)


def test_delta_scan_float32_long_strong_gate():
    """T = 4096 in fp32 with gates down to exp(-20) per step: every factor is exp(<= 0), nothing overflows."""
    q, k, v, f, _, h0 = delta_inputs(1, 4096, 2, 8, 8, False, seed=5, dtype=torch.float32)
    ld = -20 * torch.rand(1, 4096, 2, generator=torch.Generator().manual_seed(6))
    y, S = chunked_delta_scan(q, k, v, f, ld, h0, output_final_state=True)
    y_ref, S_ref = naive_delta_scan(q, k, v, f, ld, h0)
    assert_close_rel(y, y_ref, RTOL_F32)
    assert_close_rel(S, S_ref, RTOL_F32)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_scan_gradcheck(gated):
    inputs = delta_inputs(1, 6, 1, 3, 2, gated, seed=9)
    inputs = tuple(None if x is None else x.clone().requires_grad_() for x in inputs)
    fn = lambda *xs: chunked_delta_scan(*xs, chunk=4, output_final_state=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_bad_arguments_name_the_problem():
    """A float / None / bool chunk was a TypeError from a comparison, accepted (True) or floored (2.5 -> 2); an h0 that
    does not fit the state was torch's "expanded size" error naming neither; a list operand an AttributeError."""
    a, b = torch.rand(2, 5, 3), torch.randn(2, 5, 3)
    q, k, v = torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 3)
    with pytest.raises(ValueError, match=r"diagonal_scan: h0 \(2, 4\) does not broadcast to the state shape"):
        diagonal_scan(a, b, torch.zeros(2, 4))
    with pytest.raises(TypeError, match="diagonal_scan: h0 must be a torch.Tensor, got list"):
        diagonal_scan(a, b, [0.0])
    with pytest.raises(TypeError, match="chunked_outer_scan: v must be a torch.Tensor, got list"):
        chunked_outer_scan(q, k, v.tolist())
    with pytest.raises(TypeError, match="chunked_delta_scan: f must be a torch.Tensor, got tuple"):
        chunked_delta_scan(q, k, v, (1.0,))
    for bad, err in [(None, TypeError), (16.0, TypeError), ("16", TypeError), (True, TypeError), (0, ValueError),
                     (2.5, TypeError)]:
        with pytest.raises(err, match="chunk must be an integer"):
            diagonal_scan(a, b, chunk=bad)
        with pytest.raises(err, match="chunk must be an integer"):
            chunked_outer_scan(q, k, v, chunk=bad)
        with pytest.raises(err, match="chunk must be an integer"):
            chunked_delta_scan(q, k, v, k, chunk=bad)
    # an integer-like chunk still works (numpy ints, torch sizes)
    assert torch.equal(diagonal_scan(a, b, chunk=torch.Size([2])[0]), diagonal_scan(a, b, chunk=2))


def test_unknown_dsfc_compile_value_is_said_and_means_auto():
    """DSFC_COMPILE=alwyas (a typo) silently behaved like auto: now a warning names the value."""
    import subprocess
    import sys

    code = "import dsfc.runtime.compiled_chunks as c; print(c.MODE)"
    env = {**__import__("os").environ, "DSFC_COMPILE": "alwyas"}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "auto"
    assert "DSFC_COMPILE must be auto, never or always (or 0 / 1), got 'alwyas'" in out.stderr


def test_diagonal_scan_first_compile_says_so(monkeypatch):
    """Creating the compiled loops pauses the first large call for seconds: one CompileNotice naming the switch."""
    from dsfc.runtime.compiled_chunks import CompileNotice

    monkeypatch.setattr(scans, "COMPILE", "always")
    monkeypatch.setattr(scans, "_compile_broken", False)
    monkeypatch.setattr(scans, "_compiled", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)  # the notice, not Inductor, is under test
    a, b, h0 = diag_inputs(1, 70, (3,), dtype=torch.float32)
    with pytest.warns(CompileNotice, match="DSFC_SCAN_COMPILE=never"):
        out = diagonal_scan(a, b, h0)
    assert_close_rel(out, naive_diagonal_scan(a, b, h0), RTOL_F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileNotice)
        diagonal_scan(a, b, h0)  # once per process


@pytest.mark.parametrize("chunk", [2, 3, 16, 64])
def test_block_scan_matches_the_step_loop(chunk):
    """block_scan (the dense family's small blocks) against h_t = M_t h_(t-1) + b_t step by step, float64, with
    rotation-scaling 2 x 2 blocks (LRU / S4D) and a T that is not a multiple of the chunk; gradients too."""
    from dsfc.runtime.scans import block_scan

    torch.manual_seed(0)
    B, T, G = 2, 203, 3
    th = torch.rand(B, T, G, dtype=torch.float64) * 3
    r = torch.rand(B, T, G, dtype=torch.float64) ** 0.1
    m = torch.stack([torch.stack([r * th.cos(), -r * th.sin()], -1), torch.stack([r * th.sin(), r * th.cos()], -1)], -2)
    b = torch.randn(B, T, G, 2, dtype=torch.float64)
    h0 = torch.randn(B, G, 2, dtype=torch.float64)
    m.requires_grad_(), b.requires_grad_(), h0.requires_grad_()
    h, ref = h0, []
    for t in range(T):
        h = torch.einsum("bgij,bgj->bgi", m[:, t], h) + b[:, t]
        ref.append(h)
    ref = torch.stack(ref, 1)
    out = block_scan(m, b, h0, chunk=chunk)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    got = torch.autograd.grad((out * w).sum(), (m, b, h0))
    want = torch.autograd.grad((ref * w).sum(), (m, b, h0))
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("T", [1, 203])
def test_rotation_scan_matches_the_step_loop_of_its_real_blocks(axis, T):
    """rotation_scan (S4D's / LRU's 2 x 2 rotation-scaling blocks as complex numbers) against the real 2 x 2
    matrix-vector loop, float64, with the pair axis first or last among the state axes, x and y per step or
    time-invariant (broadcast); gradients of x, y, b and h0 against autograd through the loop."""
    from dsfc.runtime.scans import rotation_scan

    torch.manual_seed(1)
    B, G = 2, 3
    for invariant in (False, True):
        th = torch.rand(1 if invariant else B, 1 if invariant else T, G, dtype=torch.float64) * 3
        r = torch.rand(*th.shape, dtype=torch.float64) ** 0.1
        x, y = (r * th.cos()).requires_grad_(), (r * th.sin()).requires_grad_()
        b = torch.randn(B, T, G, 2, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(B, G, 2, dtype=torch.float64, requires_grad=True)
        m = torch.stack([torch.stack([x, -y], -1), torch.stack([y, x], -1)], -2).expand(B, T, G, 2, 2)
        h, ref = h0, []
        for t in range(T):
            h = torch.einsum("bgij,bgj->bgi", m[:, t], h) + b[:, t]
            ref.append(h)
        ref = torch.stack(ref, 1)
        if axis == 0:  # the pair axis before the group axis: [B, T, 2, G]
            out = rotation_scan(x, y, b.transpose(2, 3), h0.transpose(1, 2), 0).transpose(2, 3)
        else:
            out = rotation_scan(x, y, b, h0, 1)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        w = torch.randn_like(ref)
        got = torch.autograd.grad((out * w).sum(), (x, y, b, h0))
        want = torch.autograd.grad((ref * w).sum(), (x, y, b, h0))
        for g1, g2 in zip(got, want):
            torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)


def test_rotation_scan_takes_expanded_modes_and_returns_parts_of_unit_stride():
    """The generated modules hand rotation_scan x, y expanded to [B, T, ...] (stride 0 over batch and time for S4D's
    fixed modes): the same states and gradients as the compact x, y, and each part of the pair axis (the readout's
    delta(s, 0) / delta(s, 1) selects) has unit innermost stride (a stride-2 part sent torch.einsum's CPU bmm into a
    copy ~100x slower than the contraction)."""
    from dsfc.runtime.scans import rotation_scan

    torch.manual_seed(2)
    B, T, G = 2, 9, 3
    th = torch.rand(G, dtype=torch.float64) * 3
    r = torch.rand(G, dtype=torch.float64) ** 0.1
    x, y = (r * th.cos()).requires_grad_(), (r * th.sin()).requires_grad_()
    b = torch.randn(B, T, G, 2, dtype=torch.float64)
    h0 = torch.randn(B, G, 2, dtype=torch.float64)
    compact = rotation_scan(x[None, None], y[None, None], b, h0, 1)
    expanded = rotation_scan(x.expand(B, T, G), y.expand(B, T, G), b, h0, 1)
    torch.testing.assert_close(expanded, compact, rtol=0, atol=0)
    w = torch.randn_like(compact)
    g_compact = torch.autograd.grad((compact * w).sum(), (x, y))
    g_expanded = torch.autograd.grad((expanded * w).sum(), (x, y))
    for g1, g2 in zip(g_expanded, g_compact):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    assert expanded[..., 0].stride(-1) == 1 and expanded[..., 1].stride(-1) == 1
