"""SymPy -> Triton (``tl.``) source over one block of state entries. With the templates, the only code that knows
Triton syntax.

Inside a generated kernel every state index symbol is an integer tensor derived from the block's flat offsets
(``i_c = rr // dim_n``), shaped ``[BLOCK_R, 1]`` or ``[1, BLOCK_C]``; every leaf of the maths (an entry of a param,
of a let, of the input) has already been loaded into a named register tile. So an expression is printed over names:

* ``values``: value symbols (loaded leaves, host constants, CSE temporaries, gradient slots) -> their names;
* ``indices``: state index symbols -> integer tensors; in a value position they are cast, ``i_j.to(DTYPE)``;
* ``dims``: dim symbols -> integer kernel arguments (in subscripts and extents only: the planner hoists dim-only
  value subexpressions to host constants, so ``1 / sqrt(K)`` never reaches the kernel as integer arithmetic).

Elementwise functions without a numerically safe ``tl`` builtin print as calls of small ``@triton.jit`` helpers
that the template defines (``_softplus``: ``tl.where(x > 20, x, tl.log(1 + tl.exp(x)))``, ``_logsigmoid``, ``_silu``,
``_elu``, ``_tanh``, ``_step`` for Heaviside). Like SymPy's strict code printers, an unknown node raises
``PrinterError`` (an internal bug, never ``str(expr)``).
"""

from __future__ import annotations

import math

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.printer import Printer

from ..analysis.log_space import power_as_exp
from ..ir.functions import Elu, Elu1p, Expm1, Gelu, LogSigmoid, Relu, Sigmoid, Silu, Softplus
from .printers import PrinterError

# function class name -> Triton callable (a tl builtin or a helper the template defines)
_CALLS = {
    "exp": "tl.exp",
    Expm1.__name__: "_expm1",
    "log": "tl.log",
    "sin": "tl.sin",
    "cos": "tl.cos",
    "Abs": "tl.abs",
    "tanh": "_tanh",
    "sign": "_sign",
    "Heaviside": "_step",
    Softplus.__name__: "_softplus",
    Sigmoid.__name__: "tl.sigmoid",
    LogSigmoid.__name__: "_logsigmoid",
    Relu.__name__: "_relu",
    Silu.__name__: "_silu",
    Elu.__name__: "_elu",
    Elu1p.__name__: "_elu1p",
    Gelu.__name__: "_gelu",
    "erf": "tl.math.erf",  # in gelu's derivative
}

# the helpers a kernel may call; the template defines exactly these
HELPERS = ("_expm1", "_tanh", "_sign", "_step", "_softplus", "_logsigmoid", "_relu", "_silu", "_elu", "_elu1p",
           "_gelu")


class TritonPrinter(Printer):
    """Prints value expressions (``doprint``) and integer index expressions (``index``) as Triton source."""

    printmethod = "_tritoncode"
    _default_settings = {"order": None}

    def __init__(self, values: dict[sp.Symbol, str], indices: dict[sp.Symbol, str], dims: dict[sp.Symbol, str],
                 dtype: str = "DTYPE"):
        super().__init__()
        self.values = values
        self.indices = indices
        self.dims = dims
        self.dtype = dtype
        self.helpers: set[str] = set()  # the template helpers the printed code calls

    def _print(self, expr, **kwargs):
        # a constant that is not a plain number (log(10) from a power 10 ^ x, sqrt(2), exp(-3)) prints as its float
        # value: tl.log(10) of an integer literal is an int32 tensor, which tl.log refuses (the interpreter raised
        # "numpy data itemsize (64 bits) exceeds ... int32" for a decay 1 - 10 ^ (-1 - s))
        if isinstance(expr, sp.Expr) and not expr.is_Atom and expr.is_number and expr.is_real:
            value = float(expr)
            if math.isfinite(value):
                return repr(value)
        return super()._print(expr, **kwargs)

    # -- strictness ----------------------------------------------------------------------------------------------
    def emptyPrinter(self, expr):
        raise PrinterError(f"the Triton printer does not know {type(expr).__name__}: {expr}")

    def _paren(self, e, level: int) -> str:
        code = self._print(e)
        return f"({code})" if precedence(e) < level else code

    # -- integers: subscripts, extents, flat offsets ---------------------------------------------------------------
    def index(self, e) -> str:
        """An integer expression over state index symbols and dims (a subscript, an extent, a flat offset)."""
        code = self._index(sp.S(e))
        return code[1:-1] if isinstance(e, sp.Add) else code

    def index_factor(self, e) -> str:
        """Like ``index``, safe as the left operand of ``*`` (sums keep their parentheses)."""
        return self._index(sp.S(e))

    def _index(self, e) -> str:
        if e.is_Integer:
            return str(int(e))
        if isinstance(e, sp.Symbol):
            if e in self.indices:
                return self.indices[e]
            if e in self.dims:
                return self.dims[e]
            raise PrinterError(f"unbound index symbol {e}")
        if isinstance(e, sp.Add):
            parts = []
            for k, a in enumerate(sorted(e.args, key=sp.default_sort_key)):
                if k and a.could_extract_minus_sign():
                    parts.append(f"- {self._index_factor(-a)}")
                else:
                    parts.append(("+ " if k else "") + self._index(a))
            return "(" + " ".join(parts) + ")"
        if isinstance(e, sp.Mul):
            num, den = sp.fraction(e)
            if den != 1:
                raise PrinterError(f"non-integer subscript {e}")
            coeff, rest = e.as_coeff_Mul()
            fs = [self._index_factor(f) for f in sorted(sp.Mul.make_args(rest), key=sp.default_sort_key)]
            if coeff == -1:
                return "(-" + " * ".join(fs) + ")"
            if coeff != 1:
                fs.insert(0, str(int(coeff)))
            return " * ".join(fs)
        if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
            # SymPy folds K * K into K**2: print it back as a product
            return "(" + " * ".join([self._index_factor(e.base)] * int(e.exp)) + ")"
        # Triton's integer // and % truncate toward zero (C), SymPy's floor and Mod round down (Python): they differ
        # for a negative numerator, which SymPy makes of an index that never is one ((d - 1 - c + 2) % d folds to
        # Mod(1 - c, d): -1 at c = 2 where Python gives 2). Unless SymPy proves the numerator nonnegative, the
        # floored forms are printed (denominators are extents: positive).
        if isinstance(e, sp.floor):
            num, den = sp.fraction(sp.together(e.args[0]))
            n, q = self._index_factor(num), self._index_factor(den)
            if num.is_nonnegative:
                return f"({n} // {q})"
            return f"(({n} - (({n} % {q}) + {q}) % {q}) // {q})"
        if isinstance(e, sp.Mod):
            n, q = self._index_factor(e.args[0]), self._index_factor(e.args[1])
            return f"({n} % {q})" if e.args[0].is_nonnegative else f"((({n} % {q}) + {q}) % {q})"
        raise PrinterError(f"unsupported subscript {e}")

    def _index_factor(self, e) -> str:
        code = self._index(e)
        return f"({code})" if isinstance(e, sp.Mul) and not code.startswith("(") else code

    # -- values ----------------------------------------------------------------------------------------------------
    def _print_Integer(self, e):
        return str(int(e))

    def _print_Rational(self, e):
        return repr(float(e))

    def _print_Float(self, e):
        return repr(float(e))

    def _print_NumberSymbol(self, e):  # pi, E
        return repr(float(e))

    def _print_Exp1(self, e):
        return repr(float(e))

    def _print_Symbol(self, e):
        if e in self.values:
            return self.values[e]
        if e in self.indices:
            return f"{self.indices[e]}.to({self.dtype})"
        if e in self.dims:
            return self.dims[e]
        raise PrinterError(f"unknown symbol {e}")

    def _print_Indexed(self, e):
        raise PrinterError(f"tensor entry {e} was not loaded into a register tile before printing")

    def _print_Add(self, e):
        parts = []
        for k, a in enumerate(sorted(e.args, key=sp.default_sort_key)):
            if k and a.could_extract_minus_sign():
                parts.append(f"- {self._paren(-a, PRECEDENCE['Add'] + 1)}")
            else:
                parts.append(("+ " if k else "") + self._paren(a, PRECEDENCE["Add"]))
        return " ".join(parts)

    def _print_Mul(self, e):
        step = next((f for f in e.args if isinstance(f, sp.Heaviside)), None)
        if step is not None:
            # a kink's derivative (relu's, elu's) selects, as torch's relu backward does, rather than multiplies:
            # d sqrt(relu(z)) = H(z) / (2 sqrt(relu(z))) was 0 * inf = NaN for every z < 0, where torch's is 0
            rest = sp.Mul(*[f for f in e.args if f is not step])
            return f"tl.where({self._print(step.args[0])} > 0.0, {self._print(rest)}, 0.0)"
        coeff, rest = e.as_coeff_Mul()
        if coeff < 0:
            inner = self._print_Mul_pos(-coeff, rest)
            return f"-{inner}" if not inner.startswith("-") else f"-({inner})"
        return self._print_Mul_pos(coeff, rest)

    def _print_Mul_pos(self, coeff, rest) -> str:
        num, den = [], []
        for f in sp.Mul.make_args(rest):
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0 and f.exp != -sp.Rational(1, 2):
                den.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp))
            elif f != 1:
                num.append(f)
        num.sort(key=sp.default_sort_key)
        den.sort(key=sp.default_sort_key)
        parts = [self._paren(f, PRECEDENCE["Mul"]) for f in num]
        if coeff != 1 or not parts:
            parts.insert(0, self._print(coeff))
        out = " * ".join(parts)
        for d in den:
            out += f" / {self._paren(d, PRECEDENCE['Mul'] + 1)}"
        return out

    def _print_Pow(self, e):
        base, ex = e.args
        if ex.is_Float and float(ex).is_integer():
            # a whole-number float exponent (a let constant such as 2 * half + 1 folds to 2.0) is an integer power:
            # the real-power form below takes the log of the base, NaN wherever the base is negative
            ex = sp.Integer(int(ex))
        if ex.is_Integer:
            n = int(ex)
            if n == 0:
                return "1.0"
            b = self._paren(base, PRECEDENCE["Mul"] + 1)
            prod = " * ".join([b] * abs(n)) if abs(n) <= 4 else None
            if prod is None:  # a large integer power: square-and-multiply is not worth it here
                prod = f"tl.exp({abs(n)} * tl.log(tl.abs({self._print(base)})))"
                if n % 2:
                    self.helpers.add("_sign")
                    prod = f"_sign({self._print(base)}) * {prod}"
            if n > 0:
                return f"({prod})" if abs(n) > 1 else prod
            return f"1.0 / ({prod})" if abs(n) > 1 else f"1.0 / {b}"
        stable = power_as_exp(e)
        if stable is not None:  # as the torch printer: sigmoid(z)^(1/2) as exp(logsigmoid(z) / 2), not exp(log(0) / 2)
            return self._print(stable)
        if ex == sp.Rational(1, 2):
            return f"tl.sqrt({self._print(base)})"
        if ex == -sp.Rational(1, 2):
            return f"tl.rsqrt({self._print(base)})"
        if base.is_number and base.is_negative and ex.is_integer:
            # (-b)^n with n an integer that is not a literal (LegT's (-1)^(i - j + 1)): the sign 1 - 2 (n mod 2)
            # times b^n; the real-power form below would take the log of the negative base (NaN)
            sign = f"(1.0 - 2.0 * {self._print(sp.Mod(ex, 2))})"
            return sign if base == -1 else f"{sign} * {self._print(sp.Pow(-base, ex, evaluate=False))}"
        if ex.is_integer and not base.is_nonnegative:
            # g^n with g of either sign (a tanh gate, a Laguerre pole -a) and n an integer index expression: |g|^n,
            # negated where g < 0 and n is odd, and 1 where n = 0 (also at g = 0, where exp(0 * log 0) is NaN)
            # n's parity in floating point: n may be a kernel value (a CSE temporary), not an index expression
            b, n = self._print(base), self._paren(ex, PRECEDENCE["Mul"])
            odd = f"({n} - 2.0 * tl.floor(0.5 * {n}))"
            return (f"tl.where({n} == 0, 1.0, tl.where({b} < 0.0, 1.0 - 2.0 * {odd}, 1.0)"
                    f" * tl.exp({n} * tl.log(tl.abs({b}))))")
        # a real power of a (presumed positive) base; a constant base's log is a float constant (tl.log of the
        # integer literal 10 is an int32 tensor, which tl.log refuses)
        log_base = (repr(math.log(float(base))) if base.is_number and base.is_positive
                    else f"tl.log({self._print(base)})")
        return f"tl.exp({self._paren(ex, PRECEDENCE['Mul'])} * {log_base})"

    def _print_Function(self, e):
        name = type(e).__name__
        fn = _CALLS.get(name)
        if fn is None:
            raise PrinterError(f"the Triton printer does not know the function {name}: {e}")
        if fn in HELPERS:
            self.helpers.add(fn)
        return f"{fn}({self._print(e.args[0])})"

    def _print_KroneckerDelta(self, e):
        a, b = (self.index(x) for x in e.args[:2])
        # in the compute dtype: tl.where of two float literals is an fp32 tile, and a function of it was evaluated in
        # fp32 (0.5 exp(delta(i, 2)) was 0.5 e to 4e-7 in an fp64 kernel, which `dsfc check` failed at 1e-8)
        return f"tl.where({a} == {b}, 1.0, 0.0).to({self.dtype})"

    def _print_Max(self, e):
        return self._minmax(e, "tl.maximum")

    def _print_Min(self, e):
        return self._minmax(e, "tl.minimum")

    def _minmax(self, e, fn) -> str:
        args = sorted(e.args, key=sp.default_sort_key)
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)})"
        return out

    def _print_floor(self, e):
        return f"({self.index(e)}).to({self.dtype})"

    def _print_Mod(self, e):
        return f"({self.index(e)}).to({self.dtype})"
