"""The Triton printer (SymPy -> ``tl.`` source) and the Triton plan, on tiny hand-built inputs. No kernel runs here."""

from pathlib import Path

import pytest
import sympy as sp

from dsfc.codegen.printers import PrinterError
from dsfc.codegen.triton_plan import _split_readout
from dsfc.codegen.triton_printer import TritonPrinter
from dsfc.ir.functions import Elu, Gelu, LogSigmoid, Relu, Sigmoid, Silu, Softplus
from dsfc.pipeline import compile_spec

ROOT = Path(__file__).resolve().parents[2]
x, y = sp.symbols("x y", real=True)
c, j = sp.symbols("c j", integer=True)
n, d = sp.symbols("n d", integer=True, positive=True)


def printer():
    return TritonPrinter({x: "x_a", y: "x_b"}, {c: "i_c", j: "i_j"}, {n: "dim_n", d: "dim_d"})


@pytest.mark.parametrize("expr,code", [
    (sp.exp(-x * y), "tl.exp(-x_a * x_b)"),
    (x ** 2, "(x_a * x_a)"),
    (1 / x, "1.0 / x_a"),
    (sp.sqrt(x), "tl.sqrt(x_a)"),
    (1 / sp.sqrt(x), "tl.rsqrt(x_a)"),
    (x / (1 + y), "x_a / (1 + x_b)"),
    (sp.Rational(1, 2) * x, "0.5 * x_a"),
    (x - y, "x_a - x_b"),
    ((j + 1) * x, "x_a * (1 + i_j.to(DTYPE))"),
    (Sigmoid(x), "tl.sigmoid(x_a)"),
    (sp.Max(x, 0), "tl.maximum(0, x_a)"),
    (sp.KroneckerDelta(c, j), "tl.where(i_c == i_j, 1.0, 0.0).to(DTYPE)"),  # fp32 literals: in the dtype
])
def test_values(expr, code):
    assert printer().doprint(expr) == code


@pytest.mark.parametrize("fn,helper", [
    (Softplus, "_softplus"), (LogSigmoid, "_logsigmoid"), (Relu, "_relu"), (Silu, "_silu"), (Elu, "_elu"),
    (sp.tanh, "_tanh"), (sp.Heaviside, "_step"),
])
def test_functions_without_a_safe_builtin_call_template_helpers(fn, helper):
    pr = printer()
    assert pr.doprint(fn(x + y)) == f"{helper}(x_a + x_b)"
    assert pr.helpers == {helper}


def test_indices():
    pr = printer()
    assert pr.index(c * n + j) == "i_j + i_c * dim_n"
    assert pr.index_factor(c + 1) == "(1 + i_c)"
    # Triton's // and % truncate (C): a numerator SymPy cannot prove nonnegative (c: any integer here) is printed
    # floored, as SymPy (and Python) mean it
    assert pr.index(sp.floor(c / n)) == "((i_c - ((i_c % dim_n) + dim_n) % dim_n) // dim_n)"
    assert pr.index(sp.Mod(c, d)) == "(((i_c % dim_d) + dim_d) % dim_d)"
    assert pr.index(sp.Mod(1 - c, d)) == "((((1 - i_c) % dim_d) + dim_d) % dim_d)"
    k = sp.Symbol("c", integer=True, nonnegative=True)  # a state index symbol (nonnegative)
    pr = TritonPrinter({}, {k: "i_c"}, {n: "dim_n", d: "dim_d"})
    assert pr.index(sp.floor(k / n)) == "(i_c // dim_n)"
    assert pr.index(sp.Mod(k + 1, d)) == "((1 + i_c) % dim_d)"


@pytest.mark.parametrize("expr", [
    sp.Sum(sp.IndexedBase("W")[j], (j, 0, n - 1)),  # sums are hoisted to torch before printing
    sp.IndexedBase("W")[c],  # tensor entries are loaded into tiles before printing
    sp.Symbol("unknown"),
    sp.gamma(x),
])
def test_unknown_nodes_raise(expr):
    with pytest.raises(PrinterError):
        printer().doprint(expr)


@pytest.mark.parametrize("fn,deriv", [
    (Softplus, Sigmoid(x)),
    (Sigmoid, Sigmoid(x) * (1 - Sigmoid(x))),
    (LogSigmoid, 1 - Sigmoid(x)),
    (Relu, sp.Heaviside(x)),
    (Silu, Sigmoid(x) * (1 + x * (1 - Sigmoid(x)))),
    (Elu, 1 + (1 - sp.Heaviside(x)) * Elu(x)),
    (Gelu, (1 + sp.erf(x / sp.sqrt(2))) / 2 + x * sp.exp(-x ** 2 / 2) / sp.sqrt(2 * sp.pi)),  # to ~1e-17
])
def test_function_derivatives(fn, deriv):
    diff = sp.simplify(sp.diff(fn(x), x) - deriv)
    assert diff == 0 or all(abs(diff.subs(x, v).evalf()) < 1e-15 for v in (-2.5, -0.3, 0.7, 3))
    assert not sp.diff(fn(x), x).has(sp.Derivative)


def test_s6_readout_splits_per_channel():
    r = compile_spec(ROOT / "specs" / "s6.dsf")
    coef, red, out_map = _split_readout(r.sym, r.structure)
    assert isinstance(coef, sp.Indexed) and str(coef.base) == "cq" and coef.indices == (r.structure.a.rows[1],)
    assert red == (1,) and out_map == (0,)
    plan = r.plan.triton
    assert plan.readout and not plan.pre and (plan.R, plan.C, plan.P) == ("d", "n", "d")
    # dt = softplus(W_dt W_xdt u + b_dt) is computed in the kernel from its projection, hoisted as _dt_sum
    # D: the elementwise D u the forward kernel adds without autograd (fwd_skip)
    assert [t.name for t in plan.tensors] == ["A_log", "b_dt", "D", "b", "cq", "u", "_dt_sum"]
    assert [x.var for x in plan.leaves_of("skip", False)] == ["x_D"] and plan.fwd_skip.results == ["x_D * x_u"]


def test_generated_source_is_deterministic():
    a = compile_spec(ROOT / "specs" / "s6.dsf").source
    b = compile_spec(ROOT / "specs" / "s6.dsf").source
    assert a == b


def test_gelu_prints_as_the_erf_helper():
    """gelu had no Triton form: a spec using it lost its Triton kernel (the CLI's 'no Triton kernel' note)."""
    pr = printer()
    assert pr.doprint(Gelu(x)) == "_gelu(x_a)" and "_gelu" in pr.helpers
    assert "tl.math.erf" in pr.doprint(sp.diff(Gelu(x), x))


class _NumpyTl:
    """Enough of ``triton.language`` to evaluate a printed power elementwise with numpy."""

    def __init__(self):
        import numpy as np
        self.exp, self.log, self.abs, self.floor, self.where = np.exp, np.log, np.abs, np.floor, np.where


_EA1 = sp.Symbol("ea1", integer=True)  # a CSE temporary standing for an index expression (the backward kernel)


@pytest.mark.parametrize("expr", [
    x ** sp.Float(2.0),  # a let constant folded to a whole-number float: SharedChain's l2 ^ two (hunt 16)
    x ** sp.Float(3.0),
    x ** (c + 1),  # an integer index exponent on a signed base: g_c ^ (c + 1)
    x ** c,  # c = 0 included: x^0 = 1, also at x = 0
    x ** _EA1,
])
def test_integer_powers_of_a_negative_base_keep_their_sign(expr):
    """A power whose exponent is an integer but not an integer literal printed as exp(n log(x)): NaN for x < 0.
    The printed code, evaluated at bases of both signs and zero and exponents 0 .. 4, equals x^n."""
    import numpy as np
    code = TritonPrinter({x: "x_a", _EA1: "ea1"}, {c: "i_c"}, {}).doprint(expr).replace(".to(DTYPE)", "")
    assert "tl.log(x_a)" not in code, code
    bases = np.array([-1.5, -0.7, 0.0, 0.4, 2.0])
    for k in range(5):
        n = int(expr.exp.subs({c: k, _EA1: k}))
        with np.errstate(divide="ignore", invalid="ignore"):
            got = eval(code, {"tl": _NumpyTl(), "x_a": bases, "i_c": k, "ea1": float(k)})  # noqa: S307
        assert np.allclose(got, bases ** n), (code, k, got)
