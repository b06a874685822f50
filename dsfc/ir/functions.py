"""SymPy function classes for the spec language's elementwise functions.

Each carries the sign facts SymPy's assumption system can use (softplus > 0, 0 < sigmoid < 1, ...), which is how the
stability analysis proves eigenvalue bounds without evaluating anything, and its derivative (``fdiff``), which is how
the generated Triton backward kernels get d(a)/d(leaf) from ``sympy.diff``. Kinks (relu, elu) differentiate to
``Heaviside``, which the Triton printer prints as ``x > 0`` (torch's choice at 0).
"""

from __future__ import annotations

import sympy as sp


class _Elementwise(sp.Function):
    nargs = 1

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_extended_real(self):
        return self.args[0].is_extended_real


class Softplus(_Elementwise):
    """log(1 + exp(x)) > 0."""

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])

    def _eval_is_positive(self):
        return True if self.args[0].is_extended_real else None

    def _eval_is_finite(self):
        return self.args[0].is_finite


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), in (0, 1)."""

    def fdiff(self, argindex=1):
        return self * (1 - self)

    def _eval_is_positive(self):
        return True if self.args[0].is_extended_real else None

    def _eval_is_finite(self):
        return True


class LogSigmoid(_Elementwise):
    """log(sigmoid(x)) < 0."""

    def fdiff(self, argindex=1):
        return 1 - Sigmoid(self.args[0])

    def _eval_is_negative(self):
        return True if self.args[0].is_extended_real else None


class Relu(_Elementwise):
    """max(x, 0) >= 0."""

    def fdiff(self, argindex=1):
        return sp.Heaviside(self.args[0])

    def _eval_is_nonnegative(self):
        return True if self.args[0].is_extended_real else None

    def _eval_is_positive(self):
        return True if self.args[0].is_positive else None


class Silu(_Elementwise):
    """x * sigmoid(x)."""

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 + self.args[0] * (1 - s))

    def _eval_is_positive(self):
        return self.args[0].is_positive


class Elu(_Elementwise):
    """x for x > 0 else exp(x) - 1; > -1."""

    def fdiff(self, argindex=1):
        # 1 for x > 0, exp(x) = elu(x) + 1 below: one expression, no Piecewise
        return 1 + (1 - sp.Heaviside(self.args[0])) * self

    def _eval_is_positive(self):
        return self.args[0].is_positive


class Gelu(_Elementwise):
    """x * Phi(x) (exact, erf form)."""

    def _eval_is_positive(self):
        return self.args[0].is_positive


class TaylorRange(sp.Function):
    """The size of the order-p Taylor feature range over a K-vector: sum_{r=0..p} K^r (infinite for p = oo).

    A feature range is an extent like any other: it evaluates to an integer once K and p are numbers, and stays
    symbolic (``taylor(K, p)``) in the analysis report so that N reads as a formula in the dims.
    """

    nargs = 2
    is_integer = True
    is_positive = True

    def _eval_is_finite(self):
        return self.args[1] is not sp.oo

    def _sympystr(self, printer):  # as the spec spells it: N = H*V*taylor(K, p)
        order = "inf" if self.args[1] is sp.oo else printer._print(self.args[1])
        return f"taylor({printer._print(self.args[0])}, {order})"

    @classmethod
    def eval(cls, k, p):
        # taylor(K, oo) stays unevaluated (infinite): reports read N = H*V*taylor(K, oo), not oo
        if k.is_Integer and p.is_Integer:
            return sp.Integer(sum(int(k) ** r for r in range(int(p) + 1)))
        return None


def is_infinite_range(e) -> bool:
    """Whether an extent is (or contains) an infinite feature range taylor(K, oo)."""
    return any(t.args[1] is sp.oo for t in sp.S(e).atoms(TaylorRange))


def slots_for_infinite(e, slots):
    """The extent with every infinite feature range replaced by ``slots`` (the paper's bounded-T slot form)."""
    return sp.S(e).xreplace({t: sp.Integer(slots) for t in sp.S(e).atoms(TaylorRange) if t.args[1] is sp.oo})


# language name -> SymPy callable
FUNCTION_TABLE = {
    "exp": sp.exp,
    "log": sp.log,
    "sqrt": sp.sqrt,
    "abs": sp.Abs,
    "tanh": sp.tanh,
    "sin": sp.sin,
    "cos": sp.cos,
    "softplus": Softplus,
    "sigmoid": Sigmoid,
    "logsigmoid": LogSigmoid,
    "relu": Relu,
    "silu": Silu,
    "elu": Elu,
    "gelu": Gelu,
    "pow": sp.Pow,
    "max": sp.Max,
    "min": sp.Min,
    "delta": sp.KroneckerDelta,
}
