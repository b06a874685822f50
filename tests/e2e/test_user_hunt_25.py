"""Input hunt 25: the code of the thirtieth session used as a user would, each against a float64 loop written here
from the maths (not from dsfc): the block-triangular eigenvalue rule over one of several mixed axes, the warning for
B or D written as the product B u, the dense block sized by dims that the module decides at construction
(``block_scan`` at a product <= 4, the per-step loop above), and PolaFormer's block-read state split.

Tested: the biquad cascade (hunt 29's spec, two transposed-DF-II sections per channel) at ``S = 2`` (block_scan) and
``S = 3`` (the loop; a third section, uncoupled, rings down from its initial state), checked to run the path it claims,
against the loop at T = 0, 1, 63, 64, 65 (the loop's 64-step blocks +- 1), batch 1 and 5, from a random state; a
sequence cut at an odd offset and continued from its final state; token-by-token ``step``; a transposed (non-contiguous)
and an expanded input; the gradients of the input, the initial state and every parameter; fp32 / bf16 / fp16 inputs (the
output in the input's dtype, the state in fp32, within a few roundings of the loop run on the rounded inputs and
parameters); ``torch.compile`` (eager backend, graph breaks allowed, S = 2) of a model that holds the layer; ``S = 1``
(the spec reads section 1) refused at construction; a state_dict of ``S = 2`` loaded at ``S = 3`` and a state of
``S = 2`` given at ``S = 3`` (errors naming the shapes). PolaFormer (hunt 28's spec, its state split by the block reads)
at its dims and two others (H = 1 with K = 2, Vh = 3; K = Vh = 1), T = 0, 1, 7, 65: the initial, final and step states
in the declared layout [B, H, 2K, V] (and the flat [B, N] and a non-contiguous one accepted), split sequences, torch /
reference / Triton (interpreted, T = 7), bf16 / fp16 / fp32. The block-triangular rule against the eigenvalues of the
module's own A: sections coupled by relu(m - m2) and min(relu(m - m2), 1), and a ring (the last section fed back into
the first, written with a modulo: no triangle). The product warning on the lowered spec for B and D through a let, a
transposed let, and the matrix forms that are fine; the warning through ``compile_text`` twice (shown once by Python's
registry) and its position; the 409 catalog and test spec texts that lower (none warned, before or after the fix;
probed, not a test).

Found and fixed (a silently different layer, missed by the warning): B written as the product through a let,
``let Bm[i: N, k: d] = g[i] * z[i]`` then ``B[i, k] = Bm[i, k]``, compiled without a word and computes g z sum(u):
the warning took any read of the column index as using it, and ``Bm[i, k]`` reads ``k`` as a subscript whose axis the
let never uses. A let subscripted by the column now counts as reading it only where its definition reads that axis's
index (through any chain of lets; a window or feature-map let is assumed to). D likewise. The warning then names the
let (B's entry writes k, so "reads ... not B's column index (k)" alone read as false).

Found and fixed (a report weaker than the truth): sections coupled by ``relu(m - m2) g`` or ``min(relu(m - m2), 1) g``
(strictly below the diagonal blocks) were "unknown": the block-triangular rule did not read relu as max(x, 0),
which the one-axis triangular rule already did. Now |lambda| < 1 from the diagonal blocks, true on the module's A.

Found, not fixed: nothing else. The dims-sized block paths, PolaFormer's state split, the warning's CLI display
(printed once per command, positioned, with a hint) and the block-triangular rule's soundness held in every probe.

Probed, not tests (each held): relu(m - m2 + 1) couplings (the diagonal blocks then hold the coupling: "unknown",
not a claim), a ring written with two deltas, couplings upper triangular, two apart, from every section into the
first and from the first into every other, channels coupled below each other on top of the section chain (the rule
nested: block triangular on c, then on m) and in a ring across channels, every one checked against the eigenvalues of
the module's A at S = 2, 3, 5.

Not done: the inductor backend of torch.compile (it works on the biquad at S = 2 and 3, ~100-160 s of CPU compile
each: probed, not a test); a long T (2048) timing of block_scan vs the loop; a 'last section outside the unit circle'
cascade is "unknown", not "exceeds" (true, weaker; the diagonal-block rule is not proven per section).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import torch  # noqa: E402

from dsf_testing import F64, INTERPRETER_WARNINGS, TRITON, build, rel_err  # noqa: E402
from dsfc.analysis.facts import Bound  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402

pytestmark = INTERPRETER_WARNINGS

_HERE = Path(__file__).parent


def _spec_from(test_file: str, name: str) -> str:
    """A spec text of an earlier hunt, read from its test file (the same text its authors checked)."""
    return re.search(rf'\n{name} = """(.*?)"""', (_HERE / test_file).read_text(), re.S).group(1)


BIQUAD2 = _spec_from("test_user_specs_29.py", "BIQUAD2")
CHAIN = _spec_from("test_user_specs_29.py", "_CHAIN")
POLA = _spec_from("test_user_specs_28.py", "POLA")


@functools.lru_cache(maxsize=None)
def _compiled(text: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_text(text, "h25.dsf")


# -- the biquad cascade: a 4 x 4 block per channel at S = 2 (block_scan), 6 x 6 at S = 3 (the per-step loop) -----------

def _biquad_loop(P, u, h0):
    """Two biquads in series per channel, H(z) = (b0 + b1 z^-1 + b2 z^-2) / (1 + a1 z^-1 + a2 z^-2) with
    a1 = -2 r cos th, a2 = r^2, r = sigmoid(rho), transposed direct form II: y = b0 x + s1, s1' = b1 x - a1 y + s2,
    s2' = b2 x - a2 y; section 0's output is section 1's input. Sections m >= 2 (S = 3) have no input and no reader:
    the same update at x = 0 (their poles ring their initial state down). h0 [B, d, S, 2] -> (y [B, T, d], state)."""
    r = torch.sigmoid(P["rho"])
    a1, a2 = -2 * r * torch.cos(P["th"]), r ** 2
    s = [[h0[:, :, m, 0], h0[:, :, m, 1]] for m in range(h0.shape[2])]
    ys = []
    for t in range(u.shape[1]):
        x, new = u[:, t], []
        for m, (s1, s2) in enumerate(s):
            if m < 2:
                y = P["b0"][:, m] * x + s1
                new.append([P["b1"][:, m] * x - a1[:, m] * y + s2, P["b2"][:, m] * x - a2[:, m] * y])
                x = y
            else:
                new.append([-a1[:, m] * s1 + s2, -a2[:, m] * s1])
        s = new
        ys.append(x)
    y = torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, u.shape[2])
    return y, torch.stack([torch.stack(p, -1) for p in s], 2)


def _biquad(S: int, seed: int = 0):
    built = build(_compiled(BIQUAD2), {"d": 3, "S": S}, seed=seed)
    with torch.no_grad():  # poles spread over the disc and non-trivial zeros (the defaults are near one filter)
        built.model.th.uniform_(-3, 3)
    return built


def _spy_block_scan(model):
    """Count the module's calls of block_scan (the chunked path); the loop path makes none."""
    from dsfc.runtime import scans

    module = sys.modules[type(model).__module__]
    calls = []
    module.block_scan = lambda *args, **kw: calls.append(1) or scans.block_scan(*args, **kw)
    return calls


@pytest.mark.parametrize("S, chunked", [(2, True), (3, False)], ids=["S=2-block_scan", "S=3-loop"])
def test_a_dims_sized_block_matches_the_loop_on_both_sides_of_the_threshold(S, chunked):
    """Both branches the module chooses at construction, against the loop: T around the loop's 64-step blocks, batch
    1 and 5, from a random state; a cut at an odd offset; token by token; transposed and expanded inputs."""
    built = _biquad(S)
    model, P = built.model, built.params()
    calls = _spy_block_scan(model)
    g = torch.Generator().manual_seed(S)
    with torch.no_grad():
        for T in (0, 1, 63, 64, 65):
            for batch in (1, 5):
                u = torch.randn(batch, T, 3, generator=g, dtype=F64)
                h0 = 0.5 * torch.randn(batch, 3, S, 2, generator=g, dtype=F64)
                y, hT = model(u, initial_state=h0, output_final_state=True)
                want_y, want_h = _biquad_loop(P, u, h0)
                assert y.shape == (batch, T, 3) and hT.shape == (batch, 3, S, 2)
                assert rel_err(y, want_y) < 1e-12 and rel_err(hT, want_h) < 1e-12, (T, batch)
        assert bool(calls) == chunked
        u = torch.randn(2, 67, 3, generator=g, dtype=F64)
        want_y, want_h = _biquad_loop(P, u, u.new_zeros(2, 3, S, 2))
        y1, h1 = model(u[:, :33], output_final_state=True)
        y2, h2 = model(u[:, 33:], initial_state=h1, output_final_state=True)
        assert rel_err(torch.cat([y1, y2], 1), want_y) < 1e-12 and rel_err(h2, want_h) < 1e-12
        state, ys = None, []
        for t in range(9):
            y_t, state = model.step(u[:, t], state)
            ys.append(y_t)
        assert state.shape == (2, 3, S, 2) and rel_err(torch.stack(ys, 1), want_y[:, :9]) < 1e-12
        ut = torch.randn(2, 3, 65, generator=g, dtype=F64).transpose(1, 2)  # non-contiguous
        ue = u[:1, :40].expand(4, -1, -1)  # a batch of one sequence, stride 0
        zero = u.new_zeros(4, 3, S, 2)
        assert rel_err(model(ut), _biquad_loop(P, ut, zero[:2])[0]) < 1e-12
        assert rel_err(model(ue), _biquad_loop(P, ue, zero)[0]) < 1e-12


@pytest.mark.parametrize("S", [2, 3])
def test_a_dims_sized_block_has_the_loops_gradients(S):
    """The gradients of a weighted sum of the outputs and final state: the input, the initial state and every
    parameter, against autograd through the loop (T = 70: past one 64-step block of the loop path)."""
    built = _biquad(S)
    model = built.model
    g = torch.Generator().manual_seed(10 + S)
    u = torch.randn(2, 70, 3, generator=g, dtype=F64, requires_grad=True)
    h0 = (0.5 * torch.randn(2, 3, S, 2, generator=g, dtype=F64)).requires_grad_(True)
    wy, wh = torch.randn(2, 70, 3, generator=g, dtype=F64), torch.randn(2, 3, S, 2, generator=g, dtype=F64)
    y, hT = model(u, initial_state=h0, output_final_state=True)
    names = [n for n, _ in model.named_parameters()]
    got = torch.autograd.grad((y * wy).sum() + (hT * wh).sum(), [u, h0, *model.parameters()])
    P = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    want_y, want_h = _biquad_loop(P, u, h0)
    want = torch.autograd.grad((want_y * wy).sum() + (want_h * wh).sum(), [u, h0, *P.values()])
    for name, a, b in zip(["u", "initial_state", *names], got, want):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2 ** -7), (torch.float16, 2 ** -9)])
def test_a_dims_sized_block_in_half_and_single_precision(dtype, tol):
    """Half and single inputs: y in the input's dtype, the state in fp32 (the accumulation dtype), against the loop
    run in float64 on the same rounded inputs and parameters. What is left is the fp32 accumulation (~1e-7 per step,
    the filter's gain < 10 here) and y's rounding to the dtype (2^-9 relative for bf16, 2^-12 for fp16 per entry,
    against the largest |y|): the tolerance is two such roundings."""
    for S in (2, 3):
        built = _biquad(S)
        model = built.model.to(dtype)
        P = {k: v.to(F64) for k, v in built.params(model).items()}
        u = torch.randn(2, 65, 3, generator=torch.Generator().manual_seed(4), dtype=F64).to(dtype)
        h0 = (0.5 * torch.randn(2, 3, S, 2, generator=torch.Generator().manual_seed(5), dtype=F64)).to(dtype)
        with torch.no_grad():
            y, hT = model(u, initial_state=h0, output_final_state=True)
        want_y, want_h = _biquad_loop(P, u.to(F64), h0.to(F64))
        assert y.dtype == dtype and hT.dtype == torch.promote_types(dtype, torch.float32)
        assert rel_err(y, want_y) < tol and rel_err(hT, want_h) < max(tol / 4, 1e-5), (S, dtype)


def test_a_dims_sized_block_under_torch_compile():
    """A model holding the layer, compiled with graph breaks allowed (the eager backend: dynamo's tracing of the
    branch on S and of block_scan, without inductor's minutes of CPU compile), matches the uncompiled one (S = 2;
    S = 3's loop path probed the same way, and both under inductor, not tests: ~100 s of CPU compile each)."""
    built = _biquad(2)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3, dtype=F64), built.model)
    u = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    compiled = torch.compile(net, fullgraph=False, backend="eager")
    assert rel_err(compiled(u), net(u)) < 1e-13


def test_dims_that_do_not_fit_the_spec_or_the_checkpoint_are_named():
    """S = 1 (the spec reads section 1 of be1) is refused at construction, naming the subscript and the dims; an
    S = 2 checkpoint loaded at S = 3 names each parameter and both shapes (torch's error, which is clear); an S = 2
    state given at S = 3 names the shape wanted."""
    with pytest.raises(ValueError, match=r"at d=3, S=1: subscript 1 \(axis 1 of 'be1', spec line \d+\)"):
        build(_compiled(BIQUAD2), {"d": 3, "S": 1})
    small, large = _biquad(2), _biquad(3)
    with pytest.raises(RuntimeError, match=r"size mismatch for rho: copying a param with shape torch.Size\(\[3, 2\]\)"):
        large.model.load_state_dict(small.model.state_dict())
    small.model.load_state_dict(_biquad(2, seed=1).model.state_dict())  # the same dims: loads
    with pytest.raises(ValueError, match=r"initial_state must have shape \(1, 3, 3, 2\) \(or flat \[batch, 18\]\), "
                                         r"got \(1, 3, 2, 2\)"):
        large.model(torch.randn(1, 4, 3, dtype=F64), initial_state=torch.zeros(1, 3, 2, 2, dtype=F64))


# -- PolaFormer: the state split by the block reads, in the declared layout ------------------------------------------

def _pola_loop(P, u, h0):
    """PolaFormer per head (Meng et al. 2025): q = W_q u, k = W_k u, v = W_v u; phi+(x) = relu(x)^3,
    phi-(x) = relu(-x)^3; the state S [2K, V] adds [phi+(k); phi-(k)] v^T; the first V / 2 outputs read it with
    [phi+(q); phi-(q)] (same sign), the rest with [phi-(q); phi+(q)] (opposite sign), after the update."""
    S, ys = h0, []
    for t in range(u.shape[1]):
        q, k = torch.einsum("hkd,bd->bhk", P["W_q"], u[:, t]), torch.einsum("hkd,bd->bhk", P["W_k"], u[:, t])
        v = torch.einsum("hvd,bd->bhv", P["W_v"], u[:, t])
        kf = torch.cat([torch.relu(k), torch.relu(-k)], -1) ** 3
        same = torch.cat([torch.relu(q), torch.relu(-q)], -1) ** 3
        opposite = torch.cat([torch.relu(-q), torch.relu(q)], -1) ** 3
        S = S + kf[..., None] * v[:, :, None, :]
        half = S.shape[-1] // 2
        y = torch.cat([torch.einsum("bhf,bhfe->bhe", same, S[..., :half]),
                       torch.einsum("bhf,bhfe->bhe", opposite, S[..., half:])], -1)
        ys.append(y.reshape(u.shape[0], -1))
    return (torch.stack(ys, 1) if ys else u.new_zeros(u.shape[0], 0, S.shape[1] * S.shape[3])), S


@pytest.mark.parametrize("dims", [{"d": 5, "H": 2, "K": 3, "Vh": 2}, {"d": 4, "H": 1, "K": 2, "Vh": 3},
                                  {"d": 3, "H": 3, "K": 1, "Vh": 1}], ids=["defaults", "H1-K2-Vh3", "K1-Vh1"])
def test_polaformer_states_keep_the_declared_layout_at_other_dims(dims):
    built = build(_compiled(POLA), dims)
    model, P = built.model, built.params()
    H, K, V = dims["H"], dims["K"], 2 * dims["Vh"]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for T, batch in ((0, 2), (1, 1), (7, 5), (65, 2)):
            u = torch.randn(batch, T, dims["d"], generator=g, dtype=F64)
            h0 = 0.3 * torch.randn(batch, H, 2 * K, V, generator=g, dtype=F64)
            want_y, want_h = _pola_loop(P, u, h0)
            for backend in ("torch", "reference", *(("triton",) if TRITON and T == 7 else ())):
                model.backend = backend
                y, hT = model(u, initial_state=h0, output_final_state=True)
                assert hT.shape == (batch, H, 2 * K, V) and y.shape == (batch, T, H * V), backend
                assert rel_err(y, want_y) < 1e-12 and rel_err(hT, want_h) < 1e-12, (T, backend)
        model.backend = "auto"
        u = torch.randn(2, 9, dims["d"], generator=g, dtype=F64)
        h0 = 0.3 * torch.randn(2, H, 2 * K, V, generator=g, dtype=F64)
        want_y, want_h = _pola_loop(P, u, h0)
        y1, s1 = model(u[:, :5], initial_state=h0, output_final_state=True)
        y2, s2 = model(u[:, 5:], initial_state=s1, output_final_state=True)
        assert rel_err(torch.cat([y1, y2], 1), want_y) < 1e-12 and rel_err(s2, want_h) < 1e-12
        state, ys = h0, []
        for t in range(9):
            y_t, state = model.step(u[:, t], state)
            ys.append(y_t)
        assert state.shape == h0.shape and rel_err(torch.stack(ys, 1), want_y) < 1e-12
        assert rel_err(model(u, initial_state=h0.reshape(2, -1)), want_y) < 1e-12  # the flat [B, N] state
        strided = h0.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, not contiguous
        assert not strided.is_contiguous() and rel_err(model(u, initial_state=strided), want_y) < 1e-12
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2 ** -7), (torch.float16, 2 ** -9)):
            half = build(_compiled(POLA), dims).model.to(dtype)
            Ph = {k: v.to(F64) for k, v in built.params(half).items()}
            y, hT = half(u.to(dtype), initial_state=h0.to(dtype), output_final_state=True)
            want_y, want_h = _pola_loop(Ph, u.to(dtype).to(F64), h0.to(dtype).to(F64))
            assert y.dtype == dtype and hT.dtype == torch.promote_types(dtype, torch.float32)
            assert rel_err(y, want_y) < tol and rel_err(hT, want_h) < 1e-5, dtype


# -- the block-triangular rule: couplings written with relu, and a ring ------------------------------------------------

_LOW = "    + delta(m, m2 + 1) * delta(j, 1) * delta(j2, 0) * g[c, m])"


def _chain(coupling: str) -> str:
    assert _LOW in CHAIN
    return CHAIN.replace(_LOW, f"    + {coupling} * delta(j, 1) * delta(j2, 0) * g[c, m])")


@pytest.mark.parametrize("coupling, bound", [
    ("relu(m - m2) / 4", Bound.STABLE),  # strictly below the diagonal blocks, at every distance
    ("min(relu(m - m2), 1)", Bound.STABLE),
], ids=["relu", "min-relu"])
def test_sections_coupled_through_relu_are_block_triangular(coupling, bound):
    """Found here: sections coupled by relu(m - m2) were "unknown" (the block rule did not read relu as max(x, 0)).
    The claim holds on the module's own A at S = 3 and 5."""
    result = _compiled(_chain(coupling))
    report = result.report
    assert report.eigen_bound == bound and "block lower triangular on axis 'm'" in report.eigen_reason
    worst = 0.0
    for S in (3, 5):
        built = build(result, {"d": 2, "S": S}, seed=S)
        with torch.no_grad():
            u = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(S), dtype=F64)
            A = built.model.dsf_matrices(u)[0]
        worst = max(worst, torch.linalg.eigvals(A).abs().max().item())
    assert worst < 1


def test_a_ring_of_sections_is_no_block_triangle():
    """The last section fed back into the first (a ring, written with a modulo): no side of the diagonal blocks is
    empty, and the rule must not claim their eigenvalues."""
    from dsfc.lang.parse import parse_spec
    from dsfc.pipeline import analyse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = analyse(parse_spec(_chain("delta(m, (m2 + 1) % S)"), "ring.dsf"))[3]
    assert "is block" not in report.eigen_reason and report.eigen_bound == Bound.UNKNOWN, report.eigen_reason


# -- the product form B u written for B, through a let ---------------------------------------------------------------

_BASE = """model P "p"
dim d = 4
dim N = 3
input u[d]
state h[N]
output y[N]
param W[N, d] ~ normal(0, 1)
param a[N] ~ normal(0, 1)
param Wd[N, d] ~ normal(0, 1)
let g[i: N] = sigmoid(sum(k, W[i, k] * u[k]))
let z[i: N] = sum(k, Wd[i, k] * u[k])
A[i, j] = delta(i, j) * sigmoid(a[i])
"""
_C = "C[o, i] = delta(o, i)\n"


@pytest.mark.parametrize("tail, warned", [
    ("let Bm[i: N, k: d] = g[i] * z[i]\nB[i, k] = Bm[i, k]\n" + _C, "B"),
    ("let Bt[k: d, i: N] = g[i] * z[i]\nB[i, k] = Bt[k, i]\n" + _C, "B"),  # the column read at another position
    ("let Bm[i: N, k: d] = z[i]\nlet Bg[i: N, k: d] = g[i] * Bm[i, k]\nB[i, k] = Bg[i, k]\n" + _C, "B"),  # two lets
    ("let Dm[o: N, k: d] = g[o] * z[o]\nB[i, k] = Wd[i, k]\n" + _C + "D[o, k] = Dm[o, k]\n", "D"),
    ("let Bm[i: N, k: d] = g[i] * Wd[i, k]\nB[i, k] = Bm[i, k]\n" + _C, None),  # the matrix through a let
    ("let Bt[k: d, i: N] = g[i] * Wd[i, k]\nB[i, k] = Bt[k, i]\n" + _C, None),
    ("let Wm[i: N, k: d] = W[i, k] / 2\nlet Bm[i: N, k: d] = g[i] * Wm[i, k]\nB[i, k] = Bm[i, k]\n" + _C, None),
    ("B[i, k] = delta(i, k) * g[i]\n" + _C, None),
], ids=["B-let", "B-transposed-let", "B-two-lets", "D-let", "B-matrix-let", "B-matrix-transposed", "B-matrix-2-lets",
        "B-delta"])
def test_the_product_form_through_a_let_is_warned_about(tail, warned):
    """Found here: ``B[i, k] = Bm[i, k]`` with ``let Bm[i: N, k: d] = g[i] * z[i]`` (z = W u) compiled silently
    and computes g z sum(u): the subscript k counted as reading the column. Now warned, at B (or D); the matrix
    written through lets (its column read by a param at the end of the chain) is not."""
    from dsfc.ir.lower import lower_to_sympy
    from dsfc.ir.product_as_matrix import product_as_matrix
    from dsfc.lang.check import check_spec
    from dsfc.lang.parse import parse_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        said = [w.message for w in product_as_matrix(lower_to_sympy(check_spec(parse_spec(_BASE + tail, "w.dsf"))))]
    if warned is None:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(f"{warned}'s entry reads the input but not {warned}'s column")


def test_the_product_form_through_a_let_is_shown_once_where_b_is_and_computes_what_it_says():
    """Through compile_text, twice (Python's registry shows it once under the default filter), at B's line, naming
    the let (k is written in B's entry, so "not B's column index (k)" alone read as false); the layer computes what
    the spec says, g z sum(u) on the diagonal decay, against the loop."""
    from dsfc.lang.errors import SpecWarning

    text = _BASE + "let Bm[i: N, k: d] = g[i] * z[i]\nB[i, k] = Bm[i, k]\n" + _C
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = compile_text(text, "w.dsf")
        compile_text(text, "w.dsf")
    said = [str(w.message) for w in caught if issubclass(w.category, SpecWarning)]
    assert len(said) == 1 and said[0].startswith("w.dsf:14:1: warning: B's entry reads the input but not B's column "
                                                 "index (k) (the let 'Bm' read at it does not vary along that axis)")
    assert "B[i, k] = Bm[i, k]" in said[0], said
    built = build(result, {"d": 4, "N": 3})
    P = built.params()
    u = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    h, ys = u.new_zeros(2, 3), []
    for t in range(6):
        g, z = torch.sigmoid(u[:, t] @ P["W"].T), u[:, t] @ P["Wd"].T
        h = torch.sigmoid(P["a"]) * h + g * z * u[:, t].sum(-1, keepdim=True)
        ys.append(h)
    with torch.no_grad():
        assert rel_err(built.model(u), torch.stack(ys, 1)) < 1e-12
