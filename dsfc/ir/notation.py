"""SymPy expressions printed in the spec's own notation, for the reasons the analysis reports.

``sp.sstr`` shows SymPy's internals: ``Sum(kr[floor(h/R), _sd6636aab89]**2, (_sd6636aab89, 0, K - 1))`` for what the
spec writes ``sum(a2, kr[h // R, a2] ^ 2)``. ``spec_str`` prints sums as ``sum(i, body)`` (the full range of a dim is
the language's only range), ``floor(x / y)`` as ``x // y``, powers with ``^``, the language's function names
(``sigmoid``, ``delta``, ``min``) and the analysis's own summation indices (canonical ``_s<hash>`` names, dummies)
renamed to short names that do not clash with the expression's symbols.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

_FRESH = ("j", "i", "n", "p", "q", "r")


class SpecPrinter(StrPrinter):
    def __init__(self, taken: set[str]):
        super().__init__({"order": None})
        self._taken = set(taken)
        self._names: dict[sp.Symbol, str] = {}

    def _rename(self, var: sp.Symbol) -> str:
        if not (isinstance(var, sp.Dummy) or str(var).startswith("_")):
            return str(var)
        if var not in self._names:
            fresh = (f"{base}{n}" if n else base for n in range(0, 100) for base in _FRESH)
            name = next(x for x in fresh if x not in self._taken)
            self._taken.add(name)
            self._names[var] = name
        return self._names[var]

    def _print_Symbol(self, e):
        return self._rename(e)

    _print_Dummy = _print_Symbol

    def _print_Sum(self, e):
        out = self._print(e.function)
        for var, _lo, _hi in e.limits:  # innermost first: sum(i, sum(j, body)) for limits (j, ..), (i, ..)
            out = f"sum({self._rename(var)}, {out})"
        return out

    def _print_Pow(self, e, rational=False):
        base, ex = e.args
        if ex == sp.S.Half:
            return f"sqrt({self._print(base)})"
        if ex == -sp.S.Half:
            return f"1 / sqrt({self._print(base)})"
        if ex == -1:
            return f"1 / {self.parenthesize(base, PRECEDENCE['Mul'], strict=True)}"
        return f"{self.parenthesize(base, PRECEDENCE['Pow'], strict=True)}^{self.parenthesize(ex, PRECEDENCE['Pow'])}"

    def _print_floor(self, e):
        num, den = sp.fraction(sp.together(e.args[0]))
        if den != 1:
            prec = PRECEDENCE["Mul"]
            return f"{self.parenthesize(num, prec)} // {self.parenthesize(den, prec, strict=True)}"
        return f"floor({self._print(e.args[0])})"

    def _print_KroneckerDelta(self, e):
        return f"delta({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_Abs(self, e):
        return f"abs({self._print(e.args[0])})"

    def _print_Min(self, e):
        return f"min({', '.join(self._print(a) for a in e.args)})"

    def _print_Max(self, e):
        return f"max({', '.join(self._print(a) for a in e.args)})"

    def _print_Function(self, e):
        name = type(e).__name__
        name = name.lower() if name[:1].isupper() else name  # dsfc's elementwise classes: Sigmoid -> sigmoid
        return f"{name}({', '.join(self._print(a) for a in e.args)})"

    def _print_Indexed(self, e):
        return f"{self._print(e.base.label)}[{', '.join(self._print(i) for i in e.indices)}]"

    def parenthesize(self, item, level, strict=False):
        if isinstance(item, sp.floor) and sp.fraction(sp.together(item.args[0]))[1] != 1:
            # printed x // y, which SymPy ranks as a call: 2^h // R read (2^h) // R, -h // R read (-h) // R.
            # Every caller here is an operator (a product, a power), sums print their terms unbracketed
            return f"({self._print(item)})"
        if (precedence(item) < level) or ((not strict) and precedence(item) <= level):
            return f"({self._print(item)})"
        return self._print(item)


def spec_str(expr) -> str:
    """``expr`` in the spec's notation (see the module docstring)."""
    expr = sp.S(expr)
    taken = {str(s) for s in expr.atoms(sp.Symbol)} | {str(b.label) for b in expr.atoms(sp.IndexedBase)}
    return SpecPrinter(taken).doprint(expr)
