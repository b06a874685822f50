"""Eigenvalue bounds of A, proven by interval reasoning over the SymPy IR.

For diagonal (and scalar, identity) A the eigenvalues are the decay entries themselves. Their range is derived
from the expression tree: exp of a provably negative exponent lies in (0, 1), softplus is positive, sigmoid lies in
(0, 1), and so on. Sign facts of lets come from SymPy's assumptions on their definitions (see ir/lower.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from ..ir.functions import Elu, LogSigmoid, Relu, Sigmoid, Silu, Softplus
from ..ir.symspec import SymSpec
from .facts import AKind, Bound

INF = math.inf


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __str__(self) -> str:
        def fmt(x):
            return "inf" if x == INF else "-inf" if x == -INF else f"{x:.6g}"

        return f"{'(' if self.lo_open or self.lo == -INF else '['}{fmt(self.lo)}, {fmt(self.hi)}{')' if self.hi_open or self.hi == INF else ']'}"


ANY = Interval(-INF, INF, True, True)
POS = Interval(0.0, INF, True, True)
NEG = Interval(-INF, 0.0, True, True)
NONNEG = Interval(0.0, INF, False, True)
UNIT_OPEN = Interval(0.0, 1.0, True, True)


def _mono(iv: Interval, f) -> Interval:
    """Image of an interval under an increasing function."""
    return Interval(f(iv.lo), f(iv.hi), iv.lo_open, iv.hi_open)


def _safe(f):
    def g(x):
        try:
            return f(x)
        except OverflowError:
            return INF
        except ValueError:
            return -INF

    return g


def _exp(x):
    return 0.0 if x == -INF else INF if x == INF else _safe(math.exp)(x)


def _mul(a: Interval, b: Interval) -> Interval:
    cands = []
    for x, xo in ((a.lo, a.lo_open), (a.hi, a.hi_open)):
        for y, yo in ((b.lo, b.lo_open), (b.hi, b.hi_open)):
            v = 0.0 if (x == 0 or y == 0) else x * y
            cands.append((v, xo or yo))
    lo = min(c[0] for c in cands)
    hi = max(c[0] for c in cands)
    lo_open = all(o for v, o in cands if v == lo)
    hi_open = all(o for v, o in cands if v == hi)
    return Interval(lo, hi, lo_open, hi_open)


def _add(a: Interval, b: Interval) -> Interval:
    return Interval(a.lo + b.lo, a.hi + b.hi, a.lo_open or b.lo_open, a.hi_open or b.hi_open)


class IntervalProver:
    """Ranges of expressions of a spec, with the facts used recorded as human-readable reasons."""

    def __init__(self, sym: SymSpec):
        self.sym = sym
        self.reasons: list[str] = []
        self._lets = {let.tensor.name: let for let in sym.lets}
        self._cache: dict[str, Interval] = {}

    def of_name(self, name: str, base) -> Interval:
        if name in self._cache:
            return self._cache[name]
        let = self._lets.get(name)
        if let is not None and let.running:
            self._cache[name] = ANY  # guards recursion through a running quantity's own name
            x = self.range(let.args[-1])
            if let.running in ("prev", "window"):
                iv = x if let.running == "prev" else ANY
            elif let.running == "scan" and self.range(let.args[0]).lo < 0:
                iv = ANY
            else:  # a running sum of terms in x: positive terms stay positive
                iv = POS if (x.lo > 0 or (x.lo == 0 and x.lo_open)) else NONNEG if x.lo >= 0 else ANY
            if iv != ANY:
                self.reasons.append(f"{name} in {iv} ({let.running} of terms in {x})")
        elif let is not None:
            iv = self.range(let.expr)
            if iv != ANY:
                self.reasons.append(f"{name} in {iv} (from its definition)")
        elif getattr(base, "is_positive", None):
            iv = POS
        else:
            iv = ANY
        self._cache[name] = iv
        return iv

    def range(self, e) -> Interval:
        if e.is_Number:
            v = float(e)
            return Interval(v, v)
        if isinstance(e, sp.Indexed):
            return self.of_name(str(e.base.label), e.base)
        if isinstance(e, sp.Symbol):
            if e in self.sym.dims.values():
                return Interval(1.0, INF, False, True)
            return self.of_name(str(e), e)
        if isinstance(e, sp.Add):
            out = self.range(e.args[0])
            for a in e.args[1:]:
                out = _add(out, self.range(a))
            return out
        if isinstance(e, sp.Mul):
            out = self.range(e.args[0])
            for a in e.args[1:]:
                out = _mul(out, self.range(a))
            return out
        if isinstance(e, sp.exp):
            return _mono(self.range(e.args[0]), _exp)
        if isinstance(e, Softplus):
            return _mono(self.range(e.args[0]), lambda x: INF if x == INF else 0.0 if x == -INF else math.log1p(math.exp(x)) if x < 30 else x)
        if isinstance(e, Sigmoid):
            return _mono(self.range(e.args[0]), lambda x: 1.0 if x == INF else 0.0 if x == -INF else 1 / (1 + math.exp(-x)) if x > -700 else 0.0)
        if isinstance(e, LogSigmoid):
            return _mono(self.range(e.args[0]), lambda x: 0.0 if x == INF else -INF if x == -INF else -math.log1p(math.exp(-x)) if x > -30 else x)
        if isinstance(e, Relu):
            iv = self.range(e.args[0])
            return Interval(max(iv.lo, 0.0), max(iv.hi, 0.0), iv.lo_open and iv.lo > 0, iv.hi_open and iv.hi > 0)
        if isinstance(e, sp.tanh):
            return _mono(self.range(e.args[0]), lambda x: 1.0 if x == INF else -1.0 if x == -INF else math.tanh(x))
        if isinstance(e, Elu):
            iv = self.range(e.args[0])
            f = lambda x: x if x > 0 else (-1.0 if x == -INF else math.expm1(x))  # noqa: E731
            return _mono(iv, f)
        if isinstance(e, sp.log):
            iv = self.range(e.args[0])
            if iv.lo >= 0:
                return _mono(iv, lambda x: -INF if x == 0 else INF if x == INF else math.log(x))
            return ANY
        if isinstance(e, sp.Pow):
            base, ex = e.args
            biv = self.range(base)
            if ex.is_Number and biv.lo >= 0:
                p = float(ex)
                f = lambda x: INF if (x == INF and p > 0) or (x == 0 and p < 0) else 0.0 if x == INF or x == 0 else x**p  # noqa: E731
                if p > 0:
                    return _mono(biv, f)
                return Interval(f(biv.hi), f(biv.lo), biv.hi_open, biv.lo_open)
            if biv.lo >= 0 and (biv.lo > 0 or biv.lo_open):
                return self.range(sp.exp(ex * sp.log(base)))
            return ANY
        if isinstance(e, sp.Abs):
            iv = self.range(e.args[0])
            return NONNEG if iv.lo < 0 else iv
        if isinstance(e, sp.Sum):
            iv = self.range(e.function)
            if iv.lo > 0 or (iv.lo == 0 and iv.lo_open):
                return POS
            if iv.lo >= 0:
                return NONNEG
            return ANY
        if isinstance(e, sp.KroneckerDelta):
            return Interval(0.0, 1.0)
        if e.is_positive:
            return POS
        if e.is_negative:
            return NEG
        return ANY


@dataclass(frozen=True)
class EigenBound:
    bound: Bound
    interval: str | None
    reason: str


def eigenvalue_bound(sym: SymSpec, a) -> EigenBound:
    """Bound of |lambda(A_t)| over all inputs, with the reason."""
    if a.kind == AKind.IDENTITY:
        return EigenBound(Bound.MARGINAL, "[1, 1]", "A = I: every eigenvalue is exactly 1 (marginally stable)")
    if a.decay is None:
        if a.low_rank:
            return EigenBound(
                Bound.UNKNOWN,
                None,
                "A is s*I minus a rank-1 term on the mixed axes: eigenvalues are s (multiplicity K-1) and "
                "s - beta*|k|^2; dsfc does not yet prove the sign of the rank-1 term",
            )
        return EigenBound(Bound.UNKNOWN, None, "A is not diagonal: eigenvalues are not derived symbolically")
    prover = IntervalProver(sym)
    iv = prover.range(a.decay)
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    lam = f"lambda = {sp.sstr(a.decay)} in {iv}"
    below_one = iv.hi < 1 or (iv.hi == 1 and iv.hi_open)
    above_m1 = iv.lo > -1 or (iv.lo == -1 and iv.lo_open)
    if below_one and above_m1:
        return EigenBound(Bound.STABLE, str(iv), f"{lam} ({facts})")
    if iv.hi <= 1 and iv.lo >= -1:
        return EigenBound(Bound.MARGINAL, str(iv), f"{lam} ({facts})")
    if iv.lo >= 0 and iv.hi == INF:
        return EigenBound(Bound.UNBOUNDED, str(iv), f"{lam}: can exceed 1 ({facts})")
    return EigenBound(Bound.UNKNOWN, str(iv), f"{lam}: no bound proven ({facts})")
