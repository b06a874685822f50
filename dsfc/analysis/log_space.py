"""The logarithm of a decay, written without a round trip through exp.

The log-space scans (chunked outer product, delta rule) take log(decay). Printing ``log(alpha)`` for a let
``alpha = exp(z)`` is exact in real arithmetic but not in floating point: ``exp(z)`` underflows to 0 once
``z < -87`` (fp32), the log is then ``-inf`` and its backward ``(1 / alpha) * alpha' = inf * 0`` is NaN. RWKV-6's
``w = exp(-exp(x))`` gets there at ``x > 4.5``, ``1 - sigmoid(z)`` (rounded to 0) at ``z > 17``. ``log_of`` looks
through the decay's definition (lets included) and returns the exponent itself: ``log(exp(z)) = z``,
``log(sigmoid(z)) = logsigmoid(z)``, ``log(1 - sigmoid(z)) = logsigmoid(-z)``, ``log(x^p) = p log(x)``
(x a positive constant too), the log of a product of positive factors is the sum of their logs, and
``log(min(a, b)) = min(log(a), log(b))`` (max likewise).

``complements`` uses the same exact logs for ``1 - P``: RG-LRU's input scale ``sqrt(1 - a^2)`` with
``a = exp(-8 r softplus(L))`` is 0 in fp32 once ``a`` rounds to 1 (a closed gate, ``r < 1e-8``), where the true
value is ``sqrt(16 r softplus(L))``, and the backward of ``sqrt(0)`` made every gradient NaN. Written as
``-expm1(2 log a)`` it keeps its value; ``1 - sigmoid(z)`` becomes ``sigmoid(-z)``. The linear-attention feature
map ``elu(z) + 1`` is ``(exp(z) - 1) + 1`` for z < 0: 0 in fp32 below z = -17, where the normalised variants then
divide 0 by 0. It becomes ``elu1p(z) = exp(min(z, 0)) + relu(z)``.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..ir.functions import Elu, Elu1p, Expm1, LogSigmoid, Sigmoid, Softplus
from ..ir.symspec import SymLet, SymSpec, SymTensor
from .index_algebra import simplify


def log_of(expr: sp.Expr, sym: SymSpec) -> sp.Expr:
    """log(expr), with every exp / sigmoid in its definition cancelled against the log where one is found."""
    expr = sp.S(expr)
    exact = exact_log(expr, sym)
    return exact if exact is not None else sp.log(expr)


def exact_log(expr: sp.Expr, sym: SymSpec | None) -> sp.Expr | None:
    """log(expr) with no log of a non-constant left in it, or None when there is no such form (``sym`` None: lets
    are not looked through)."""
    if isinstance(expr, sp.exp):
        return expr.args[0]
    if isinstance(expr, Sigmoid):
        return LogSigmoid(expr.args[0])
    if isinstance(expr, sp.Add):
        content, primitive = expr.as_content_primitive()  # c/2 - c sigmoid(z)/2 = (c/2) (1 - sigmoid(z))
        if content != 1 and content.is_positive:
            inner = exact_log(primitive, sym)
            return None if inner is None else sp.log(content) + inner
        complement = _sigmoid_complement(expr)
        if complement is not None:  # 1 - sigmoid(z) = sigmoid(-z): fp32 rounds it to 0 from z ~ 17 on
            return LogSigmoid(-complement)
        return _log_positive_sum(expr.args, sym)
    if isinstance(expr, sp.Pow) and (expr.exp.is_real or expr.base.is_positive):
        # found only for a positive base (exp, sigmoid, a positive constant): x^p is then real. A constant base with
        # a varying exponent, 2 ^ (-softplus(z)), is p log 2: its log(2^p) underflowed to log(0) = -inf in fp32
        # once p < -149, and the decay's backward was NaN
        inner = _log_term(expr.base, sym)
        return None if inner is None else expr.exp * inner
    if isinstance(expr, sp.Mul):
        share = share_parts(expr, sym)
        if share is not None:  # rest n / (n + r): log rest - softplus(log r - log n), no log(0) where n, r underflow
            rest, log_n, log_r = share
            log_rest = _log_term(rest, sym)
            return None if log_rest is None else log_rest - Softplus(log_r - log_n)
    if isinstance(expr, (sp.Mul, sp.Min, sp.Max)):
        # log of a product: the sum of the factors' logs; log is increasing: log min(a, b) = min(log a, log b)
        parts = [_log_term(arg, sym) for arg in expr.args]
        if any(p is None for p in parts):
            return None
        return sp.Add(*parts) if isinstance(expr, sp.Mul) else type(expr)(*parts)
    # a let read, scalar lets included (a scalar decay let nn = exp(-softplus(z) * exp(F)) was scanned as log(nn),
    # -inf where fp32 rounds nn to 0: NaN gradients)
    read = sym.let_read(expr) if sym is not None else None
    if read is None or read[0].running or read[0].feature is not None or read[0].expr is None:
        return None
    # _log_term: a let holding a positive constant (ALiBi's `let f[h: H] = 0.9`) has log(c), as the same constant
    # written inline does; exact_log alone refused it as not provably positive
    return _log_term(read[0].value_at(read[1]), sym)


def _log_term(expr: sp.Expr, sym: SymSpec | None) -> sp.Expr | None:
    """exact_log, and log(c) for a positive constant (None for a negative one: the decay's sign is the scan's
    business, fold_decay_sign)."""
    if expr.is_number:
        return sp.log(expr) if expr.is_positive else None
    return exact_log(expr, sym)


def _log_positive_sum(terms, sym: SymSpec | None) -> sp.Expr | None:
    """log(t1 + t2 + ...) for terms that all have exact logs (so all are positive): the log-sum-exp folded as
    ``L + softplus(log t - L)`` term by term (``log(1 + exp(x)) = softplus(x)``), else None."""
    logs = [_log_term(t, sym) for t in sorted(terms, key=sp.default_sort_key)]
    if len(logs) < 2 or any(lg is None for lg in logs):
        return None
    out = logs[0]
    for lg in logs[1:]:
        out = out + Softplus(lg - out)
    return out


def share_parts(expr: sp.Expr, sym: SymSpec | None) -> tuple[sp.Expr, sp.Expr, sp.Expr] | None:
    """``(rest, log n, log r)`` when ``expr = rest * n / (n + r)``: a product with a factor ``1 / (n + r)`` and n,
    up to a numeric factor, among its other factors, where n and r (one term or a sum of several) have exact logs,
    so both are positive (minLSTM's ``f / (f + i)`` of two sigmoid gates); else None. The share is then
    ``sigmoid(log n - log r)`` and its log ``-softplus(log r - log n)``: no ``0 / 0`` where n and r both underflow
    (fp32: sigmoids of arguments below -88), and the share of the larger term is ``1 - share`` of the smaller."""
    if not isinstance(expr, (sp.Mul, sp.Pow)):
        return None
    factors = list(sp.Mul.make_args(expr))
    for den in factors:
        if not (isinstance(den, sp.Pow) and den.exp == -1 and isinstance(den.base, sp.Add)):
            continue
        num = [f for f in factors if f is not den]
        terms = sorted(den.base.args, key=sp.default_sort_key)
        for n in sorted(terms, key=lambda t: bool(t.is_number)):  # a constant n last: exp(z) / (1 + exp(z)) is
            if n.is_number and not n.is_positive:                     # sigmoid(z), not exp(z) sigmoid(-z)
                continue
            # n may be a positive constant: 1 / (1 + exp(z)) is sigmoid(-z). Printed as the quotient, the Triton
            # backward's symbolic derivative exp(z) g / (1 + exp(z))^2 was inf / inf = NaN in fp32 from z ~ 44 on
            coeff, n_factors = n.as_coeff_mul()
            left = _without(num, n_factors)
            if left is None:
                continue
            log_n = _log_term(n, sym)
            r = [t for t in terms if t is not n]
            log_r = _log_term(r[0], sym) if len(r) == 1 else _log_positive_sum(r, sym)
            if log_n is None or log_r is None:
                continue
            return sp.Mul(*left) / coeff, log_n, log_r
    return None


def _without(factors: list, drop) -> list | None:
    """``factors`` less one copy of each of ``drop``, or None when one is missing."""
    left = list(factors)
    for f in drop:
        if f not in left:
            return None
        left.remove(f)
    return left


def shares(expr: sp.Expr, sym: SymSpec | None) -> sp.Expr:
    """``expr`` with every share ``n / (n + r)`` (``share_parts``) written ``sigmoid(log n - log r)``."""
    expr = sp.S(expr)
    if not expr.args or isinstance(expr, (sp.Indexed, sp.IndexedBase)):
        return expr
    # the whole product first: its factor 1 / (1 + exp(z)) alone is a share too, and rewritten first,
    # exp(z) / (1 + exp(z)) became exp(z) sigmoid(-z) (inf * 0 from z = 89 on in fp32), not sigmoid(z)
    share = share_parts(expr, sym)
    if share is None:
        args = [shares(a, sym) for a in expr.args]
        if any(a is not b for a, b in zip(args, expr.args)):
            expr = expr.func(*args)
        share = share_parts(expr, sym)
    if share is None:
        return expr
    rest, log_n, log_r = share
    return shares(rest, sym) * Sigmoid(log_n - log_r)


def _sigmoid_complement(expr: sp.Expr) -> sp.Expr | None:
    """z when ``expr`` is ``1 - sigmoid(z)``, else None."""
    if not isinstance(expr, sp.Add) or len(expr.args) != 2 or sp.S.One not in expr.args:
        return None
    rest = next(a for a in expr.args if a != sp.S.One)
    coeff, factors = rest.as_coeff_mul()
    if coeff == -1 and len(factors) == 1 and isinstance(factors[0], Sigmoid):
        return factors[0].args[0]
    return None


def power_as_exp(expr: sp.Pow) -> sp.Expr | None:
    """``x^p`` (p not an integer) as ``exp(p log x)`` when log x has an exact form, else None. The printed power's
    autograd backward is ``p x^(p-1) x'``: ``inf * 0 = NaN`` once x (sigmoid(z) at z < -88 in fp32) underflows to 0;
    ``exp(p logsigmoid(z))`` differentiates to a finite ``p x (1 - sigmoid(z))``."""
    if expr.exp.is_Integer or not expr.exp.is_real:
        return None
    log_base = exact_log(expr.base, None)
    return None if log_base is None else sp.exp(expr.exp * log_base)


def complements(expr: sp.Expr, sym: SymSpec) -> sp.Expr:
    """``expr`` with every sum ``X - X P`` whose P has an exact log (an exp, a sigmoid, a product or power of those,
    lets looked through) written ``-X expm1(log P)`` (``X sigmoid(-z)`` for ``P = sigmoid(z)``): no cancellation
    where P rounds to 1; and ``X + X elu(z)`` as ``X elu1p(z)``. X is any common factor (SymPy expands
    ``(1 - a^2) x`` into ``x - a^2 x``). Shares ``n / (n + r)`` of terms with exact logs are written
    ``sigmoid(log n - log r)`` first (``shares``), so ``1 - n / (n + r)`` becomes ``sigmoid(log r - log n)``.
    A log of something with an exact log is that (``log(1 + exp(z))`` is ``softplus(z)``). Codegen only; the
    float64 reference evaluates the spec as written."""
    return _complements(shares(expr, sym), sym)


def _complements(expr: sp.Expr, sym: SymSpec) -> sp.Expr:
    expr = sp.S(expr)
    if not expr.args or isinstance(expr, (sp.Indexed, sp.IndexedBase)):
        return expr
    args = [_complements(a, sym) for a in expr.args]
    if isinstance(expr, sp.log) and not args[0].is_number:
        # log(1 + exp(z)) as softplus(z), log(sigmoid(z)) as logsigmoid(z): printed as written they were inf
        # (exp(z) overflows from z = 89 on in fp32, 710 in float64) and -inf (sigmoid(z) = 0 below z = -104)
        exact = exact_log(args[0], None)
        if exact is not None:
            return exact
    if not isinstance(expr, sp.Add):
        return expr.func(*args) if any(a is not b for a, b in zip(args, expr.args)) else expr
    while True:
        pair = _complement_pair(args, sym)
        if pair is None:
            return sp.Add(*args)
        args = pair


def _complement_pair(args: list, sym: SymSpec) -> list | None:
    """The terms of a sum with one pair ``X``, ``-X P`` (or ``X``, ``X elu(z)``) combined, or None."""
    for term in args:
        for p in sp.Mul.make_args(term):
            if p.is_Number:
                continue
            rest = term / p
            others = [a for a in args if a is not term]
            if isinstance(p, Elu) and rest in others:  # X + X elu(z)
                new, other = rest * Elu1p(p.args[0]), rest
            elif -rest in others:  # X - X P
                affine = _affine_complement(p, sym)
                if isinstance(p, Sigmoid):
                    new = -rest * Sigmoid(-p.args[0])
                elif affine is not None and not affine.has(sp.Sum):  # P = a + (1 - a) Q: X (1 - a) (1 - Q)
                    new = -rest * affine
                else:
                    log_p = exact_log(p, sym)
                    # a log that re-reads a let's reduction (1 - f for a gate f = sigmoid(W u)) would recompute it,
                    # a new [B, T, ...] stream for the Triton kernels, for a term that is merely small when f -> 1
                    if log_p is None or log_p.has(sp.Sum):
                        continue
                    new = rest * Expm1(log_p)
                other = -rest
            else:
                continue
            others.remove(other)
            return [new, *others]
    return None


def telescoping_gauge(decay: sp.Expr, value: sp.Expr, sym: SymSpec) -> tuple[sp.Expr, sp.Expr, sp.Expr] | None:
    """``(ell, ell_prev, value')`` when the per-group decay is ``X_(t-1) / X_t`` with ``log X = ell`` (a ``prev``
    running let, written as ``exp(s_prev - s)`` or ``eta_prev / eta``) and the value carries the factor ``1 / X_t``
    exactly (``value = value' / X_t``, normalised attention's ``B = k v^T / eta``); else None.

    Unrolled, ``h_t = X_t^-1 (X_0 h_0 + sum_(j<=t) X_j B_j u_j)``: the state ``S_t = X_t h_t`` has decay 1 and the
    input ``value'``, and ``y_t = exp(-ell_t) q_t . S_t``. The per-step form overflows where the true output does
    not: ``exp(-s_j)`` is inf in fp32 for ``s_j < -88`` (then ``inf * exp(s_j - s_t) = inf``, or ``inf * 0``), and a
    segment of growing decays ``exp(s_j - s_t)`` with ``s_j > 88`` is inf times the tiny ``exp(-s_j)``. In the gauge
    form every exponential is of ``-ell_t`` (the output's own scale) or of ``ell_prev_1 - ell_t`` (the initial state's
    decay to step t), so it is finite wherever the output is. ``ell_prev`` is the log of the ``prev`` let, read at the
    first step for the initial state."""
    if decay == 1:
        return None
    logd = sp.expand_log(log_of(decay, sym), force=True)
    for prev_x, x_now in prev_reads(logd, sym):
        if simplify(logd - (prev_x - x_now)) == 0:  # exp(s_prev - s): X = exp(s)
            ell, ell_prev = x_now, prev_x
        elif simplify(logd - sp.expand_log(sp.log(prev_x) - sp.log(x_now), force=True)) == 0:
            ell, ell_prev = log_of(x_now, sym), log_of(prev_x, sym)  # eta_prev / eta: X = eta
        else:
            continue
        logs, rest = [], []
        for f in sp.Mul.make_args(value):
            lf = None if f.is_number else exact_log(f, sym)
            (rest if lf is None else logs).append(f if lf is None else lf)
        if logs and simplify(ell + sp.Add(*logs)) == 0:
            return ell, ell_prev, sp.Mul(*rest)
    return None


def prev_reads(expr: sp.Expr, sym: SymSpec) -> list[tuple[sp.Expr, sp.Expr]]:
    """``(X_prev[i], X[i])`` for every read of a ``prev`` running let ``X_prev = prev(X)`` in ``expr``: the let as
    read, and its argument at the same indices. A decay whose log is ``log X_prev - log X`` telescopes over a
    segment (normalised attention's gauge form here, the kernelised attention's row / column logs)."""
    out = []
    for p in sym.running_lets:
        if p.running != "prev":
            continue
        reads = {e for e in sp.preorder_traversal(expr)
                 if isinstance(e, sp.Indexed) and sym.base_name(e.base) == p.tensor.name}
        for prev_x in sorted(reads, key=sp.default_sort_key):
            out.append((prev_x, p.value_at(prev_x.indices, p.args[0])))
    return out


def _q_complement(q: sp.Expr) -> sp.Expr | None:
    """1 - Q without cancellation for Q = sigmoid(z) or exp(w), else None."""
    if isinstance(q, Sigmoid):
        return Sigmoid(-q.args[0])
    if isinstance(q, sp.exp):
        return -Expm1(q.args[0])
    return None


def affine_parts(body: sp.Expr) -> tuple[sp.Expr, sp.Expr, sp.Expr] | None:
    """``(a, b, Q)`` when ``body = a + b Q`` with ``a + b = 1``, Q one sigmoid or exp and a, b free of it (HGRN's
    gate ``f = gam + (1 - gam) sigmoid(z)``), else None. Then ``1 - body = b (1 - Q)`` exactly."""
    e = sp.expand(body)
    if not isinstance(e, sp.Add):
        return None
    qs = {q for q in e.atoms(Sigmoid, sp.exp) if not q.is_number}
    if len(qs) != 1:
        return None
    q = qs.pop()
    b = e.coeff(q)
    a = sp.expand(e - b * q)
    if a.has(q) or b.has(q) or b == 0 or simplify(a + b - 1) != 0:
        return None
    return a, sp.factor(b), q


def _affine_complement(p: sp.Expr, sym: SymSpec | None) -> sp.Expr | None:
    """``1 - p`` as ``b (1 - Q)`` (``1 - Q`` from _q_complement) when p, a let looked through, is ``a + b Q`` with
    ``a + b = 1``: ``1 - f`` for HGRN's ``f = gam + (1 - gam) sigmoid(z)`` is ``(1 - gam) sigmoid(-z)``, where fp32's
    ``1 - f`` kept ~eps / (1 - f) relative precision (1e-3 at z = 12, 15% at z = 16)."""
    read = sym.let_read(p) if sym is not None else None
    if read is None or read[0].running or read[0].feature is not None:
        return None
    let, indices = read
    parts = affine_parts(let.expr)
    if parts is None:
        return None
    a, b, q = parts
    comp = _q_complement(q)
    if comp is None:
        return None
    return let.value_at(indices, b * comp)


def hoist_complement_sums(sym: SymSpec, entries) -> SymSpec:
    """``sym`` with the argument z of Q hoisted into a let of its own for every let ``f = a + (1 - a) Q(z)`` whose
    complement ``1 - f`` appears in ``entries`` and whose z is a reduction (``sigmoid(sum(m, W_f u))``): then
    ``_affine_complement`` writes ``1 - f`` as ``(1 - a) sigmoid(-f_pre)`` reading the hoisted let, not a second
    copy of the sum (a recomputed projection; a new stream for the Triton kernels). Likewise for every let
    ``f = Q(z)`` read by a share's terms (``shares``: minLSTM's ``f / (f + i)`` in ``entries`` or in a let), whose
    ``log f = logsigmoid(z)`` then reads the hoisted let. Codegen only."""
    used = set()
    bodies = [let.expr for let in sym.lets if not let.running and let.feature is None and let.expr is not None]
    for body in bodies + list(entries):
        for node in sp.preorder_traversal(sp.S(body)):
            if isinstance(node, sp.Mul) and share_parts(node, sym) is not None:
                used |= {sym.base_name(x.base) for f in node.args if isinstance(f, sp.Pow) and f.exp == -1
                         for x in sp.preorder_traversal(f.base) if isinstance(x, sp.Indexed)}
    for entry in entries:
        for node in sp.preorder_traversal(sp.S(entry)):
            if not isinstance(node, sp.Add):
                continue
            for t in node.args:
                for f in sp.Mul.make_args(t):
                    if isinstance(f, sp.Indexed) and -t / f in node.args:  # X P next to -X or X next to -X P
                        used.add(sym.base_name(f.base))
    lets, names = [], set(sym.tensors)
    for let in sym.lets:
        parts = None
        if let.tensor.name in used and not let.running and let.feature is None:
            q = isinstance(let.expr, (Sigmoid, sp.exp))  # f = Q(z) itself (a = 0, b = 1)
            parts = (sp.S.Zero, sp.S.One, let.expr) if q else affine_parts(let.expr)
        z = None if parts is None or _q_complement(parts[2]) is None else parts[2].args[0]
        if z is None or not z.has(sp.Sum):
            lets.append(let)
            continue
        name = f"{let.tensor.name}_pre"
        while name in names:
            name += "_"
        names.add(name)
        base = sp.IndexedBase(name)
        tensor = SymTensor("let", name, base, let.tensor.axes, let.tensor.span)
        ref = base[let.index] if let.index else base
        lets += [SymLet(tensor, let.index, z, let.time_varying),
                 dataclasses.replace(let, expr=let.expr.subs(z, ref))]
    if len(lets) == len(sym.lets):
        return sym
    return dataclasses.replace(sym, lets=tuple(lets))
