"""SymPy function classes for the spec language's elementwise functions.

Each carries the sign facts SymPy's assumption system can use (softplus > 0, 0 < sigmoid < 1, ...), which is how the
stability analysis proves eigenvalue bounds without evaluating anything, and its derivative (``fdiff``), which is how
the generated Triton backward kernels get d(a)/d(leaf) from ``sympy.diff``. Kinks (relu, elu) differentiate to
``Heaviside``, which the Triton printer prints as ``x > 0`` (torch's choice at 0).
"""

from __future__ import annotations

import math

import sympy as sp
from mpmath import libmp as mlib


class _Elementwise(sp.Function):
    nargs = 1

    @staticmethod
    def _closed(x):
        """The function in SymPy's own functions (for numbers), or None."""
        return None

    def _eval_evalf(self, prec):
        # without it evalf() left softplus(2) symbolic: the compile-time checks of initialisers could not tell
        # log(relu(-1)) from log(2), and float() of a dist argument such as normal(0, silu(1)) raised TypeError
        closed = self._closed(self.args[0]) if self.args[0].is_number else None
        return None if closed is None else closed.evalf(mlib.prec_to_dps(prec))

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_extended_real(self):
        return self.args[0].is_extended_real


class Softplus(_Elementwise):
    """log(1 + exp(x)) > 0."""

    _closed = staticmethod(lambda x: sp.log(1 + sp.exp(x)))

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])

    def _eval_is_positive(self):
        return True if self.args[0].is_extended_real else None

    def _eval_is_finite(self):
        return self.args[0].is_finite


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), in (0, 1)."""

    _closed = staticmethod(lambda x: 1 / (1 + sp.exp(-x)))

    def fdiff(self, argindex=1):
        return self * (1 - self)

    def _eval_is_positive(self):
        return True if self.args[0].is_extended_real else None

    def _eval_is_finite(self):
        return True


class LogSigmoid(_Elementwise):
    """log(sigmoid(x)) < 0."""

    _closed = staticmethod(lambda x: -sp.log(1 + sp.exp(-x)))

    def fdiff(self, argindex=1):
        return 1 - Sigmoid(self.args[0])

    def _eval_is_negative(self):
        return True if self.args[0].is_extended_real else None


class Expm1(_Elementwise):
    """exp(x) - 1, > -1. Not a spec function: codegen writes ``1 - exp(z)`` as ``-expm1(z)``
    (``dsfc/analysis/log_space.py``), which stays accurate, and nonzero, where exp(z) rounds to 1."""

    _closed = staticmethod(lambda x: sp.exp(x) - 1)

    def fdiff(self, argindex=1):
        return sp.exp(self.args[0])

    def _eval_is_negative(self):
        return self.args[0].is_negative

    def _eval_is_positive(self):
        return self.args[0].is_positive


class Relu(_Elementwise):
    """max(x, 0) >= 0."""

    _closed = staticmethod(lambda x: sp.Max(x, 0))

    def fdiff(self, argindex=1):
        return sp.Heaviside(self.args[0])

    def _eval_is_nonnegative(self):
        return True if self.args[0].is_extended_real else None

    def _eval_is_positive(self):
        return True if self.args[0].is_positive else None


class Silu(_Elementwise):
    """x * sigmoid(x)."""

    _closed = staticmethod(lambda x: x / (1 + sp.exp(-x)))

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 + self.args[0] * (1 - s))

    def _eval_is_positive(self):
        return self.args[0].is_positive


class Elu(_Elementwise):
    """x for x > 0 else exp(x) - 1; > -1."""

    _closed = staticmethod(lambda x: x if x.is_positive else sp.exp(x) - 1)

    def fdiff(self, argindex=1):
        # 1 for x > 0, exp(x) = elu(x) + 1 below: one expression, no Piecewise
        return 1 + (1 - sp.Heaviside(self.args[0])) * self

    def _eval_is_positive(self):
        return self.args[0].is_positive


class Elu1p(_Elementwise):
    """elu(x) + 1 = exp(min(x, 0)) + relu(x) > 0. Not a spec function: codegen writes ``elu(z) + 1`` with it
    (``dsfc/analysis/log_space.py``), since ``(exp(z) - 1) + 1`` is 0 in fp32 below z = -17."""

    _closed = staticmethod(lambda x: sp.exp(sp.Min(x, 0)) + sp.Max(x, 0))

    def fdiff(self, argindex=1):
        return 1 + (1 - sp.Heaviside(self.args[0])) * (self - 1)

    def _eval_is_positive(self):
        return True if self.args[0].is_extended_real else None


class Gelu(_Elementwise):
    """x * Phi(x) (exact, erf form)."""

    _closed = staticmethod(lambda x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2)

    def fdiff(self, argindex=1):
        # Phi(x) + x phi(x): the Triton backward differentiates lets symbolically (torch uses autograd); the
        # constants as floats, so that no kernel calls tl.sqrt on a Python number
        x = self.args[0]
        return (1 + sp.erf(x * sp.Float(math.sqrt(0.5), 17))) / 2 + x * sp.exp(-x ** 2 / 2) * sp.Float(
            1 / math.sqrt(2 * math.pi), 17)

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


def kronecker_delta(a, b):
    """``delta(a, b)`` with the equation ``a = b`` reduced first, so that deltas that say the same thing look the same.

    The structure analysis recognises a diagonal or a block pair by ``delta(c, c2)`` of two index symbols; written
    ``delta(c + 1, c2 + 1)``, ``delta(c - c2, 0)`` or ``delta(2 * c, 2 * c2)`` it is the same matrix but was analysed
    as a dense A (right numbers, the slow block scan). ``a - b`` with its integer content divided out (only when every
    coefficient, the constant included, is a multiple of it: ``2 c - 2 c2 + 1 = 0`` has no integer solution and is
    left to SymPy as written) is rewritten to ``delta(t1, t2)`` when it is ``t1 - t2`` of two terms with unit
    coefficients, or to ``delta(t, k)`` when it is ``t - k`` with a constant k. Anything else stays as written.
    """
    a, b = sp.S(a), sp.S(b)
    diff = sp.expand(a - b, deep=False)  # not inside floors and mods: delta(x // s, y // s) keeps its form
    terms = sp.Add.make_args(diff)
    coeffs = [t.as_coeff_Mul()[0] for t in terms]
    if len(terms) > 2 or not all(c.is_Integer for c in coeffs):
        return sp.KroneckerDelta(a, b)
    g = math.gcd(*[int(c) for c in coeffs])
    if g > 1:
        diff = sp.expand(diff / g, deep=False)
        terms = sp.Add.make_args(diff)
    pos = [t for t in terms if t.as_coeff_Mul()[0] == 1 and not t.is_number]
    neg = [-t for t in terms if t.as_coeff_Mul()[0] == -1 and not t.is_number]
    const = [t for t in terms if t.is_number]
    if len(terms) == 1 and (pos or neg):  # delta(c + 1, 1), delta(2 * c, 0): c = 0
        return sp.KroneckerDelta((pos or neg)[0], 0)
    if len(pos) == 1 and len(neg) == 1:
        return sp.KroneckerDelta(pos[0], neg[0])
    if len(pos) == 1 and len(const) == 1:
        return sp.KroneckerDelta(pos[0], -const[0])
    if len(neg) == 1 and len(const) == 1:
        return sp.KroneckerDelta(neg[0], const[0])
    return sp.KroneckerDelta(a, b)


# language name -> SymPy callable
FUNCTION_TABLE = {
    "exp": sp.exp,
    "log": sp.log,
    "exp2": lambda x: sp.Integer(2) ** x,  # 2^x (Triton's and fla's exp2), the same expression as 2 ^ x
    "log2": lambda x: sp.log(x) / sp.log(2),
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
    "delta": kronecker_delta,
}


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


# float64 versions of the classes above, for lambdify(modules=[FLOAT_FUNCTIONS, "math"]): a fast numeric screen of
# initial values (dsfc/ir/lower.py) that falls back to exact SymPy wherever the float result is not finite
FLOAT_FUNCTIONS = {
    "Softplus": _softplus,
    "Sigmoid": _sigmoid,
    "LogSigmoid": lambda x: -_softplus(-x),
    "Expm1": math.expm1,
    "Relu": lambda x: max(x, 0.0),
    "Silu": lambda x: x * _sigmoid(x),
    "Elu": lambda x: x if x > 0 else math.expm1(x),
    "Elu1p": lambda x: math.exp(min(x, 0.0)) + max(x, 0.0),
    "Gelu": lambda x: x * (1 + math.erf(x / math.sqrt(2))) / 2,
}
