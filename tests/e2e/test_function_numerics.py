"""The spec language's elementwise functions at extreme arguments, on both printers and through gradients.

Each case is a small diagonal spec with x = s[i] u[i] + a[i] (s = 1, -1, 0.5 over three channels, so every value is
seen with both signs) inside a decay (``exp(-softplus(x))``, ``sigmoid(x)^0.5``, ``1 / (1 + exp(x))``, ...), an
input map ``B = f(x)`` and a readout ``C = f(x)``, fed u = +-1e4, +-100, +-88, +-25, -10, 0, -0, 1e-30, 3. The
generated torch path and the Triton path (TRITON_INTERPRET=1 on CPU) run in fp32 and are compared with an
independent float64 loop written here with the stable formulas (softplus and sigmoid split at 0, each branch fed a
masked argument, so that its own gradient is right everywhere, 1/2 at 0): the output and the gradients of u, s and a,
each finite and within 1e-5 (output) / 1e-4 (gradients) of the largest entry of its tensor. The printed source is
checked too: no stable function is rewritten into a naive quotient or log.

Found and fixed:

- ``1 / (1 + exp(x))`` as a decay: the Triton backward differentiates the decay symbolically, and printed
  ``exp(x) g / (1 + exp(x))^2`` was inf / inf = NaN in fp32 from x ~ 44 on (torch's autograd stayed finite).
  ``log_space.share_parts`` now takes a positive constant term as the share's n, so the codegen rewrite (``shares``)
  prints ``sigmoid(-x)`` (and ``exp(x) / (1 + exp(x))`` as ``sigmoid(x)``: the whole product is tried before its
  factors, else it became ``exp(x) sigmoid(-x)``, inf * 0 from x = 89 on).
- ``sqrt(relu(x))``: the Triton backward's ``Heaviside(x) / (2 sqrt(relu(x)))`` was 0 * inf = NaN for every x < 0
  (torch: 0). A product with a Heaviside factor now prints as ``tl.where(x > 0, rest, 0)``, as torch's relu
  backward selects (qlstm_s6's kernel regenerated, same values).
- ``log(1 + exp(x))`` and ``log(sigmoid(x))`` written out were printed as written: inf (x = 100 in fp32, 1e4 in
  float64) and -inf. The codegen rewrite (``log_space.complements``) now prints a log of anything with an exact log
  as that log: ``softplus(x)``, ``logsigmoid(x)``. The reference backend and ``dsf_matrices`` still evaluate the
  spec as written.
- ``sigmoid(x)^0.5``: the torch printer wrote real powers through exact logs (``exp(logsigmoid(x) / 2)``), the
  Triton printer as ``tl.exp(0.5 * tl.log(tl.sigmoid(x)))`` (log(0) once sigmoid underflows). It now calls
  ``log_space.power_as_exp`` too (values were within tolerance at these inputs; the printed form is checked).

Not checked: ``sqrt(x)`` at x = 0 exactly (an infinite derivative on both paths, torch's convention, untested).

Already fine: exp, log, sqrt, abs, tanh, sin, cos, softplus, sigmoid, logsigmoid, relu, silu, elu, gelu, max, min
and unary minus in the input map and the readout; decays exp(-softplus), sigmoid^0.5, sigmoid^2, pow(sigmoid, 1.5),
sigmoid^c with a parameter c, exp(logsigmoid), 1 - sigmoid, exp(-relu), exp(-abs), exp(-exp) (to x = 88),
exp(-x^2), exp(-elu - 1); powers x^2, x^5, x^-2, x^0.5, x^1.5, x^-1.5 and |x|^c with a parameter c; index // and %.
At x = 0 exactly relu, abs, max and min take torch's derivative conventions on both paths (relu'(0) = 0).
"""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401,I001  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools
import math
import re

import pytest
import torch

from dsf_testing import BACKENDS, F64, INTERPRETER_WARNINGS, build, output_and_grads
from dsfc.pipeline import compile_text

pytestmark = INTERPRETER_WARNINGS

SPEC = """model Fn "one function at extreme arguments"
dim d = 3
input u[d]
state h[d]
output y[d]
param s[d] = 1.0
param a[d] = 0.0
param c[d] = 0.7
A[i, j] = delta(i, j) * ({A})
B[i, k] = delta(i, k) * ({B})
C[o, i] = delta(o, i) * ({C})
"""
EXTREME = [1e4, -1e4, 88.0, -88.0, 100.0, -100.0, 0.0, -0.0, 1e-30, 25.0, -25.0, -10.0, 3.0]
UP_TO_88 = [v for v in EXTREME if abs(v) <= 88]  # exp(x) itself overflows fp32 above
UP_TO_25 = [v for v in EXTREME if abs(v) <= 25]  # h accumulates exp(x) u: exp(88) 88 / (1 - 0.5) overflows fp32
POSITIVE = [abs(v) for v in EXTREME if v != 0]   # with s > 0: the argument of log, sqrt, a real power
SIGNS = (1.0, -1.0, 0.5)
POSITIVE_SCALES = (1.0, 0.5, 2.0)


# -- the float64 reference functions, written from their definitions -------------------------------------------------
def _pos(x):
    return torch.where(x > 0, x, torch.zeros_like(x))


def _neg(x):
    return torch.where(x > 0, torch.zeros_like(x), x)


def softplus(x):
    return torch.where(x > 0, _pos(x) + torch.log1p(torch.exp(-_pos(x))), torch.log1p(torch.exp(_neg(x))))


def sigmoid(x):
    return torch.where(x > 0, 1 / (1 + torch.exp(-_pos(x))), torch.exp(_neg(x)) / (1 + torch.exp(_neg(x))))


def elu(x):
    return torch.where(x > 0, x, torch.expm1(_neg(x)))


def gelu(x):
    return x * 0.5 * torch.erfc(-x / math.sqrt(2))


ONE = "1"


def one(x, c):
    return torch.ones_like(x)


def half(x, c):
    return torch.full_like(x, 0.5)


# name -> (A, B, C as spec text over X, the same three in float64 (x, c), inputs, s)
CASES = {
    # the functions in the input map and the readout
    "exp": ("0.5", "exp(X)", "exp(-0.5 * X)", half, lambda x, c: torch.exp(x), lambda x, c: torch.exp(-0.5 * x),
            UP_TO_25, SIGNS),  # not exp(-X): y would not depend on a, and the loop's gradient would be rounding
    "log": ("0.5", "log(X)", "log(X)", half, lambda x, c: torch.log(x), lambda x, c: torch.log(x), POSITIVE,
            POSITIVE_SCALES),
    "sqrt": ("0.5", "sqrt(X)", "sqrt(X)", half, lambda x, c: torch.sqrt(x), lambda x, c: torch.sqrt(x), POSITIVE,
             POSITIVE_SCALES),
    "abs_tanh": ("0.5", "abs(X)", "tanh(X)", half, lambda x, c: x.abs(), lambda x, c: torch.tanh(x), EXTREME, SIGNS),
    "sin_cos": ("0.5", "sin(X)", "cos(X)", half, lambda x, c: torch.sin(x), lambda x, c: torch.cos(x), EXTREME, SIGNS),
    "softplus_logsigmoid": ("0.5", "softplus(X)", "logsigmoid(X)", half, lambda x, c: softplus(x),
                            lambda x, c: -softplus(-x), EXTREME, SIGNS),
    "sigmoid_relu": ("0.5", "sigmoid(X)", "relu(X)", half, lambda x, c: sigmoid(x), lambda x, c: _pos(x), EXTREME,
                     SIGNS),
    "silu_elu": ("0.5", "silu(X)", "elu(X)", half, lambda x, c: x * sigmoid(x), lambda x, c: elu(x), EXTREME, SIGNS),
    "gelu_max_min_neg": ("0.5", "gelu(X)", "max(X, 0.5) + min(-X, -0.5)", half, lambda x, c: gelu(x),
                         lambda x, c: torch.where(x > 0.5, x, 0.5 + 0 * x) + torch.where(-x < -0.5, -x, -0.5 + 0 * x),
                         EXTREME, SIGNS),
    # decays
    "exp_neg_softplus": ("exp(-softplus(X))", ONE, ONE, lambda x, c: torch.exp(-softplus(x)), one, one, EXTREME,
                         SIGNS),
    "sigmoid_sqrt_power": ("sigmoid(X)^0.5", ONE, ONE, lambda x, c: torch.exp(-0.5 * softplus(-x)), one, one,
                           EXTREME, SIGNS),
    "sigmoid_param_power": ("pow(sigmoid(X), c[i])", ONE, ONE, lambda x, c: torch.exp(-c * softplus(-x)), one, one,
                            EXTREME, SIGNS),
    "exp_logsigmoid": ("exp(logsigmoid(X))", ONE, ONE, lambda x, c: sigmoid(x), one, one, EXTREME, SIGNS),
    "one_minus_sigmoid": ("1 - sigmoid(X)", ONE, ONE, lambda x, c: sigmoid(-x), one, one, EXTREME, SIGNS),
    "quotient": ("1 / (1 + exp(X))", ONE, ONE, lambda x, c: sigmoid(-x), one, one, EXTREME, SIGNS),
    "quotient_of_exp": ("exp(X) / (1 + exp(X))", ONE, ONE, lambda x, c: sigmoid(x), one, one, UP_TO_88, SIGNS),
    "exp_neg_exp": ("exp(-exp(X))", ONE, ONE, lambda x, c: torch.exp(-torch.exp(x)), one, one, UP_TO_88, SIGNS),
    "exp_neg_elu": ("exp(-elu(X) - 1)", ONE, ONE, lambda x, c: torch.exp(-elu(x) - 1), one, one, EXTREME, SIGNS),
    # powers
    "integer_powers": ("0.5", "X^2 + X^(-2)", "X^5", half, lambda x, c: x * x + x ** -2, lambda x, c: x ** 5,
                       [v for v in UP_TO_88 if 1e-3 < abs(v) < 30], SIGNS),
    "real_powers": ("0.5", "X^0.5 + pow(X, 1.5)", "X^(-1.5) + abs(X)^c[i]", half, lambda x, c: x ** 0.5 + x ** 1.5,
                    lambda x, c: x ** -1.5 + x.abs() ** c, [v for v in POSITIVE if v > 1e-20], POSITIVE_SCALES),
    # the regressions
    "sqrt_relu": ("0.5", "sqrt(relu(X))", ONE, half, lambda x, c: torch.sqrt(_pos(x)), one,
                  [v for v in EXTREME if abs(v) > 1e-20], SIGNS),
    "log_written_out": ("0.5", "log(1 + exp(X))", "log(sigmoid(X))", half, lambda x, c: softplus(x),
                        lambda x, c: -softplus(-x), EXTREME, SIGNS),
}


@functools.lru_cache(maxsize=None)
def compiled(name: str):
    a, b, c = (part.replace("X", "(s[{0}] * u[{0}] + a[{0}])") for part in CASES[name][:3])
    text = SPEC.format(A=a.format("i"), B=b.format("k"), C=c.format("i"))
    if "c[i]" not in a + b + c:  # an unused param has no gradient: the exponent c is declared where it is read
        text = text.replace("param c[d] = 0.7\n", "")
    return compile_text(text, f"{name}.dsf")


def float64_loop(name: str, u, s, a, c):
    """h_t = A(x_t) h_{t-1} + B(x_t) u_t, y_t = C(x_t) h_t per channel, x_t = s u_t + a."""
    f_a, f_b, f_c = CASES[name][3:6]
    h, ys = torch.zeros_like(u[:, 0]), []
    for t in range(u.shape[1]):
        x = s * u[:, t] + a
        h = f_a(x, c) * h + f_b(x, c) * u[:, t]
        ys.append(f_c(x, c) * h)
    return torch.stack(ys, 1)


def _inputs(name: str):
    values, scales = CASES[name][6:8]
    u = torch.tensor(values, dtype=F64)[None, :, None].repeat(1, 1, 3)
    w = torch.linspace(0.5, 1.5, u.numel(), dtype=F64).reshape(u.shape)
    return u, torch.tensor(scales, dtype=F64), w


@pytest.mark.parametrize("name", list(CASES))
def test_fp32_paths_match_a_float64_loop_at_extreme_arguments(name):
    u, s, w = _inputs(name)
    a, c = torch.zeros(3, dtype=F64), torch.full((3,), 0.7, dtype=F64)
    leaves = [u.clone().requires_grad_(), s.clone().requires_grad_(), a.clone().requires_grad_(), c.clone()]
    want_y = float64_loop(name, *leaves)
    want = dict(zip("usa", torch.autograd.grad((want_y * w).sum(), leaves[:3])))
    want_y = want_y.detach()
    assert torch.isfinite(want_y).all() and all(torch.isfinite(g).all() for g in want.values())
    for backend in BACKENDS:
        for dtype, tol in ((torch.float32, 1e-5), (F64, 1e-10)):
            if backend != "torch" and dtype == F64:
                continue  # the interpreter is slow: fp32 is where the printing matters
            built = build(compiled(name), {"d": 3})
            with torch.no_grad():
                built.model.s.copy_(s)
            y, grads = output_and_grads(built.model, backend, u, w, dtype=dtype)
            got = dict(zip(["u", *(n for n, _ in built.model.named_parameters())], grads))
            assert (y - want_y).abs().max() <= tol * want_y.abs().max(), (backend, dtype, "y")
            for k, g in want.items():
                assert torch.isfinite(got[k]).all(), (backend, dtype, k, got[k])
                assert (got[k] - g).abs().max() <= 10 * tol * g.abs().max(), (backend, dtype, k)


def _printed(name: str) -> str:
    """The generated source less ``dsf_matrices``, which prints A, B, C and D as written (an inspection API)."""
    src = compiled(name).source
    return src[:src.index("def dsf_matrices(")] + src[src.index("@_jit"):]


def _kernels(name: str) -> str:
    src = compiled(name).source
    return src[src.index("@_jit"):]


def test_no_stable_function_is_printed_in_naive_form():
    """Both printers call the stable functions (torch's F.*, the templates' helpers) and never write them out."""
    for name in CASES:
        src = _printed(name)
        assert "log(1 + torch.exp" not in src and "log(1 + tl.exp" not in src, name
        assert "torch.log(torch.sigmoid" not in src and "tl.log(tl.sigmoid" not in src, name
    torch_src = _printed("log_written_out")
    assert "F.softplus(" in torch_src and "F.logsigmoid(" in torch_src
    assert "_softplus(" in _kernels("log_written_out") and "_logsigmoid(" in _kernels("log_written_out")
    for name in ("quotient", "quotient_of_exp"):  # sigmoid(-x), sigmoid(x): no quotient of exponentials left
        assert "torch.sigmoid(" in _printed(name) and "tl.sigmoid(" in _kernels(name), name
        assert "torch.exp(" not in _printed(name) and "tl.exp(" not in _kernels(name).split("def _scan_fwd")[1], name
    # a kink's derivative selects: no 0 * inf where relu is 0
    assert "_step(" not in _kernels("sqrt_relu") and re.search(r"tl.where\(\w+ > 0.0, ", _kernels("sqrt_relu"))


def test_index_floor_division_and_mod_in_a_decay_and_a_readout():
    """``i // 2`` and ``i % 2`` in value positions: the decay sigmoid(x)^(1 + i % 2) and the readout (1 + i // 2)."""
    text = SPEC.replace("param c[d] = 0.7\n", "").format(
        A="sigmoid(s[i] * u[i] + a[i])^(1 + i % 2)", B="1", C="1 + i // 2").replace("dim d = 3", "dim d = 5")
    result = compile_text(text, "index_ops.dsf")
    u = torch.tensor([100.0, -100.0, 0.0, -25.0, 3.0], dtype=F64)[None, :, None].repeat(1, 1, 5)
    w = torch.linspace(0.5, 1.5, u.numel(), dtype=F64).reshape(u.shape)
    i = torch.arange(5, dtype=F64)
    uu, s, a = u.clone().requires_grad_(), torch.ones(5, dtype=F64, requires_grad=True), torch.zeros(5, dtype=F64,
                                                                                                    requires_grad=True)
    h, ys = torch.zeros(1, 5, dtype=F64), []
    for t in range(u.shape[1]):
        h = sigmoid(s * uu[:, t] + a) ** (1 + i % 2) * h + uu[:, t]
        ys.append((1 + i // 2) * h)
    want_y = torch.stack(ys, 1)
    want = torch.autograd.grad((want_y * w).sum(), [uu, s, a])
    for backend in BACKENDS:
        y, got = output_and_grads(build(result, {"d": 5}).model, backend, u, w, dtype=torch.float32)
        assert (y - want_y.detach()).abs().max() <= 1e-5 * want_y.abs().max(), backend
        for g, e in zip(got, want):
            assert torch.isfinite(g).all() and (g - e).abs().max() <= 1e-4 * e.abs().max(), backend
