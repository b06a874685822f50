"""``prev(x, s)``: the previous step's value with a start value s (fixed over time) at the first step of a fresh
sequence, as a zero-padded token shift (fla's RWKV ``x_(-1) = 0``); ``prev(x)`` keeps starting from ``x_0``.

Checked against a float64 loop written from the maths (below), on the torch path, the in-module reference backend,
dsfc's reference recurrence (dsfc/reference.py), ``step`` token by token and the Triton path (interpreted on CPU),
with and without a carried state, at T = 0, 1 and an odd T; then the checker's errors for a start value that varies
over time or has the wrong shape.
"""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401  (first: CPU sets TRITON_INTERPRET=1 before triton is imported)

import itertools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dsfc.check import load_module, run_check  # noqa: E402
from dsfc.lang.check import check_spec  # noqa: E402
from dsfc.lang.errors import SpecErrors  # noqa: E402
from dsfc.lang.parse import parse_spec  # noqa: E402
from dsfc.pipeline import compile_text  # noqa: E402
from dsfc.reference import reference_forward  # noqa: E402

F64 = torch.float64
D = 3
_counter = itertools.count()

# h_t = sigmoid(p_t) h_(t-1) + (1 + q_t^2) u_t, y_t = h_t, with p_t = u_(t-1) (p_0 = 0) and q_t = u_(t-1) (q_0 = c0)
SPEC = """\
model PrevStart "a decay from prev(u, 0) and an input gain from prev(u, c0)"
dim d = 3
input u[d]
state h[c: d]
param c0[d] ~ normal(0, 1)
let p[c: d] = prev(u[c], 0)
let q[c: d] = prev(u[c], c0[c])
let r[c: d] = prev(u[c])
A[i, k] = delta(i, k) * sigmoid(p[i])
B[i, k] = delta(i, k) * (1 + q[i] * q[i] + 0.5 * r[i])
C[i, k] = delta(i, k)
"""


def loop(c0, u, state=None):
    """The recurrence from the maths: (y, final state dict). ``state``: carried h, p, q, r (else a fresh start)."""
    B, T = u.shape[:2]
    h = torch.zeros(B, D, dtype=F64) if state is None else state["h"].clone()
    if state is None:
        p, q = torch.zeros(B, D, dtype=F64), c0.expand(B, D).clone()
        r = u[:, 0] if T else None  # prev(u): the first step's own value
    else:
        p, q, r = state["p"], state["q"], state["r"]
    ys = []
    for t in range(T):
        h = torch.sigmoid(p) * h + (1 + q * q + 0.5 * r) * u[:, t]
        ys.append(h)
        p = q = r = u[:, t]
    y = torch.stack(ys, 1) if ys else u.new_zeros(B, 0, D)
    return y, {"h": h, "p": p, "q": q, "r": r}


@pytest.fixture(scope="module")
def result():
    return compile_text(SPEC, "prev_start.dsf")


def model_of(result, backend="torch"):
    module = load_module(result, name=f"dsfc_prev_start_{next(_counter)}")
    torch.manual_seed(0)
    model = getattr(module, result.plan.model)(dtype=F64)
    with torch.no_grad():
        model.c0.copy_(torch.tensor([0.7, -1.3, 2.1], dtype=F64))  # away from 0: a start of x_0 or 0 would differ
    model.backend = backend
    return model


def inputs(T, seed=1, batch=2):
    return torch.randn(batch, T, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def carried(seed=5, batch=2):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, D, generator=g, dtype=F64) for k in ("h", "p", "q", "r")}


def close(got, want, tol=1e-12):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.allclose(got, want, rtol=tol, atol=tol), (got - want).abs().max().item()


def assert_state(got, want, keys=("h", "p", "q", "r")):
    assert set(got) == {"h", "p", "q", "r"}, sorted(got)
    for k in keys:
        close(got[k].reshape(want[k].shape), want[k])


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
@pytest.mark.parametrize("T", [1, 2, 7])
@pytest.mark.parametrize("with_state", [False, True])
def test_forward_matches_the_loop(result, backend, T, with_state):
    model = model_of(result, backend)
    u = inputs(T)
    state = carried() if with_state else None
    with torch.no_grad():
        y, final = model(u, initial_state=state, output_final_state=True)
    want_y, want_final = loop(model.c0.detach(), u, state)
    close(y, want_y)
    assert_state(final, want_final)


def test_the_fresh_start_is_the_start_value_not_x0(result):
    """At t = 0: p = 0 and q = c0 (the start values), r = u_0 (prev without one); read back through the matrices."""
    model = model_of(result)
    u = inputs(3)
    with torch.no_grad():
        A, Bm = model.dsf_matrices(u)[:2]
    close(torch.diagonal(A[:, 0], dim1=-2, dim2=-1), torch.full((2, D), 0.5, dtype=F64))
    close(torch.diagonal(Bm[:, 0], dim1=-2, dim2=-1), 1 + model.c0.detach() ** 2 + 0.5 * u[:, 0])


@pytest.mark.parametrize("with_state", [False, True])
def test_dsfc_reference_recurrence_matches_the_loop(result, with_state):
    model = model_of(result)
    c0 = model.c0.detach()
    u = inputs(5)
    state = carried() if with_state else None
    y, final = reference_forward(result.sym, result.sym.dim_values({}), {"c0": c0}, u, initial_state=state)
    want_y, want_final = loop(c0, u, state)
    close(y.reshape(want_y.shape), want_y)
    assert_state(final, want_final)


@pytest.mark.parametrize("with_state", [False, True])
def test_step_token_by_token_matches_the_loop(result, with_state):
    model = model_of(result)
    u = inputs(5)
    state = carried() if with_state else None
    want_y, want_final = loop(model.c0.detach(), u, state)
    ys = []
    with torch.no_grad():
        for t in range(u.shape[1]):
            y_t, state = model.step(u[:, t], state)
            ys.append(y_t)
    close(torch.stack(ys, 1), want_y)
    assert_state(state, want_final)


def test_chunks_chained_through_the_state_equal_one_forward(result):
    """The start value is used once, on the fresh call; the later chunks read the carried u_(t-1)."""
    model = model_of(result)
    u = inputs(7)
    with torch.no_grad():
        y, final = model(u, output_final_state=True)
        y1, s1 = model(u[:, :3], output_final_state=True)
        y2, s2 = model(u[:, 3:], initial_state=s1, output_final_state=True)
    close(torch.cat([y1, y2], 1), y)
    assert_state(s2, {k: v.reshape(-1, D) for k, v in final.items()})


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_no_steps(result, backend):
    """T = 0: no output, and a carried state comes back unchanged."""
    model = model_of(result, backend)
    state = carried()
    with torch.no_grad():
        y = model(inputs(0))
        y0, s0 = model(inputs(0), initial_state=state, output_final_state=True)
    assert y.shape == (2, 0, D) and y0.shape == (2, 0, D)
    assert_state(s0, state)


def test_sign_facts_keep_the_start_value():
    """prev(exp(u), 0) is nonnegative, not positive (z_0 = 0); prev(exp(u), 1) stays positive."""
    text = SPEC.replace("let r[c: d] = prev(u[c])", "let e[c: d] = exp(u[c])\nlet z0[c: d] = prev(e[c], 0)\n"
                        "let z1[c: d] = prev(e[c], 1)\nlet r[c: d] = prev(u[c])")
    text = text.replace("0.5 * r[i]", "0.5 * r[i] + z0[i] + z1[i]")
    lets = {let.tensor.name: let for let in compile_text(text, "signs.dsf").sym.lets}
    z0, z1 = lets["z0"].tensor.base, lets["z1"].tensor.base
    assert z0.is_nonnegative and not z0.is_positive
    assert z1.is_positive


def _errors(middle: str):
    text = SPEC.replace("let r[c: d] = prev(u[c])", middle)
    with pytest.raises(SpecErrors) as info:
        check_spec(parse_spec(text, "bad.dsf"))
    return [(e.span.line, e.span.column, e.message, e.hint) for e in info.value.errors]


@pytest.mark.parametrize("middle, column, message", [
    ("let r[c: d] = prev(u[c], u[c])", 26, "must be fixed over time (numbers, dims and params only); it reads the "
     "input 'u'"),
    ("let g[c: d] = exp(u[c])\nlet r[c: d] = prev(u[c], 2 * g[c])", 30, "it reads the let 'g'"),
    ("let r[c: d] = prev(u[c], h[c])", 26, "it reads the state 'h'"),
    ("let r[c: d] = prev(u[c], c0)", 26, "param 'c0' has 1 axis; index it as c0["),
    ("let r[c: d] = prev(u[c], c0[c, c])", 26, "param 'c0' has 1 axis but is indexed with 2"),
    ("let r[c: d] = prev(u[c], 0, 1)", 15, "prev takes 1 or 2 arguments (the value and its start), got 3"),
])
def test_a_bad_start_value_is_a_positioned_error_with_a_hint(middle, column, message):
    errors = _errors(middle)
    assert len(errors) == 1, errors
    line, col, msg, hint = errors[0]
    assert (line, col) == (8 + middle.count("\n"), column), errors
    assert message in msg
    assert hint and "prev(x[c], 0)" in hint


def test_a_start_of_params_and_dims_is_accepted():
    text = SPEC.replace("let r[c: d] = prev(u[c])", "let r[c: d] = prev(u[c], sum(j, c0[j]) / d + c)")
    check_spec(parse_spec(text, "ok.dsf"))


# FoX (specs/fox.dsf) keeps its kernel sum eta and eta_prev = prev(eta) as logs: a start value must be logged too
FOX = (Path(__file__).resolve().parents[2] / "specs" / "fox.dsf").read_text()
FOX_PREV = "let eta_prev[h: H] = prev(eta[h])"


@pytest.mark.parametrize("start", ["1", "0"])
def test_quadratic_form_takes_a_start_value_as_a_log(start):
    """dsfc check's float64 comparisons (dsf_matrices A in the slot basis reads A_0 = f_0 s / eta_0)."""
    assert FOX_PREV in FOX
    result = compile_text(FOX.replace(FOX_PREV, f"let eta_prev[h: H] = prev(eta[h], {start})"), "fox.dsf")
    report = run_check(result, dims={"d": 4, "H": 2, "K": 3, "V": 2}, triton=False)
    assert report.ok, report.table()


def test_quadratic_form_refuses_a_start_value_of_unknown_sign():
    text = FOX.replace(FOX_PREV, "param s0[H] ~ normal(0, 1)\nlet eta_prev[h: H] = prev(eta[h], s0[h])")
    with pytest.raises(SpecErrors) as info:
        compile_text(text, "fox.dsf")
    (err,) = info.value.errors
    assert "must be provably >= 0" in err.message and err.hint and err.span.line == FOX.count("\n", 0, FOX.index(
        FOX_PREV)) + 2
