"""The logarithm of a decay, written without a round trip through exp.

The log-space scans (chunked outer product, delta rule) take log(decay). Printing ``log(alpha)`` for a let
``alpha = exp(z)`` is exact in real arithmetic but not in floating point: ``exp(z)`` underflows to 0 once
``z < -87`` (fp32), the log is then ``-inf`` and its backward ``(1 / alpha) * alpha' = inf * 0`` is NaN. RWKV-6's
``w = exp(-exp(x))`` gets there at ``x > 4.5``. ``log_of`` looks through the decay's definition (lets included)
and returns the exponent itself: ``log(exp(z)) = z``, ``log(sigmoid(z)) = logsigmoid(z)``,
``log(x^p) = p log(x)``, and the log of a product of positive factors is the sum of their logs.
"""

from __future__ import annotations

import sympy as sp

from ..ir.functions import LogSigmoid, Sigmoid
from ..ir.symspec import SymSpec


def log_of(expr: sp.Expr, sym: SymSpec) -> sp.Expr:
    """log(expr), with every exp / sigmoid in its definition cancelled against the log where one is found."""
    expr = sp.S(expr)
    exact = exact_log(expr, sym)
    return exact if exact is not None else sp.log(expr)


def exact_log(expr: sp.Expr, sym: SymSpec) -> sp.Expr | None:
    """log(expr) with no log of a non-constant left in it, or None when there is no such form."""
    if isinstance(expr, sp.exp):
        return expr.args[0]
    if isinstance(expr, Sigmoid):
        return LogSigmoid(expr.args[0])
    if isinstance(expr, sp.Pow) and expr.exp.is_real:
        inner = exact_log(expr.base, sym)  # found only for a positive base (exp, sigmoid): x^p is then real
        return None if inner is None else expr.exp * inner
    if isinstance(expr, sp.Mul):
        parts = []
        for factor in expr.args:
            if factor.is_number:
                if not factor.is_positive:
                    return None  # a negative constant: the decay's sign is the scan's business (fold_decay_sign)
                parts.append(sp.log(factor))
                continue
            inner = exact_log(factor, sym)
            if inner is None:
                return None
            parts.append(inner)
        return sp.Add(*parts)
    if isinstance(expr, sp.Indexed):
        let = sym.let(sym.base_name(expr.base))
        if let is None or let.running or let.feature is not None:
            return None
        body = sp.S(let.expr).subs(dict(zip(let.index, expr.indices)), simultaneous=True)
        return exact_log(body, sym)
    return None
