"""Kernelising a spec whose state lives on an infinite feature range (``taylor(K, inf)``: the features of exp).

Such a state cannot be materialised; what can be computed are contractions over the feature index, because
phi(x) . phi(y) = exp(x . y / sqrt(K)). A spec is kernelisable when

- every let on an infinite range is a feature map ``taylor(a, x[..., a])``, a ``cumsum`` of one (carried as the
  history of its vectors: a KV cache) or a decayed history ``scan(g, phi(k))`` with g > 0 per group (not per
  feature: g multiplies every feature of the running sum alike, so z_i = sum_(j<=i) exp(G_i - G_j) phi(k_j) with
  G the cumulative log g);
- every other let that reads one is a kernel sum ``sum(f, phi(x)[.., f] * psi[.., f])`` with psi = phi(y) or a
  cumsum of phi(y) (computed as a causal log-sum-exp of scores, and carried as its log: a *log let*), plus
  optionally a provably positive term without the feature range (an attention sink ``+ exp(s[h])``: its log joins
  the log-sum-exp through logaddexp);
- A is ``c * prev(X) / X`` or ``c`` per group (X a kernel sum, c > 0 a per-step factor per group, either part may
  be absent): log A splits into log X_(i-1) - log X_i, whose segment sum over (j, i] telescopes to log X_j - log X_i,
  and the per-step log-decay log c, whose segment sum is G_i - G_j (G its cumulative sum). B u = phi(k)[g, f] *
  value[g, v] and C contracts f against phi(q)[g, f] (times factors without f) with the same feature map.
- the decays agree: there is one per-step log-decay per group (a decayed history's log g, A's log c, or both when
  they are equal), so one cumulative G serves the kernel sums and the attention, and one carried entry of the cache.

Then y_i = qscale_i * sum_(j<=i) exp(x_i . y_j / sqrt(K) + row_i + col_j + G_i - G_j) v_j: quadratic attention
(decayed: the Forgetting Transformer, ALiBi), every weight formed in log space; the runtime forms G_i - G_j in
float64 pair by pair before the cast, so long sequences with |G| large lose nothing to cancellation. Anything
else is a positioned error naming the part that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..ir.functions import is_infinite_range
from ..ir.notation import spec_str
from ..ir.symspec import SymLet, SymSpec
from ..lang.errors import SpecError, SpecErrors
from .index_algebra import simplify
from .log_space import exact_log, prev_reads


@dataclass(frozen=True)
class Kernelised:
    query: SymLet  # the feature-map let C reads (phi(q))
    key: SymLet  # the feature-map let B writes (phi(k)); its vectors are the KV cache
    histories: tuple[str, ...]  # cumsum lets over ``key``: represented by the key history
    log_lets: tuple[str, ...]  # lets computed and carried as their logarithm (kernel sums, prev of them)
    # (let, query-side let, key-side let, over history, log of a positive term added to the sum or None)
    kernel_sums: tuple[tuple[str, str, str, bool, sp.Expr | None], ...]
    value: sp.Expr  # over the group + value row symbols, log lets substituted
    value_log: sp.Expr  # log of the positive factors of the value (over group row symbols), moved into col
    row_log: sp.Expr  # per query step i (group row symbols)
    col_log: sp.Expr  # per key step j (group row symbols)
    qscale: sp.Expr  # factors of C's query without the feature index (group + value row symbols)
    group_axes: tuple[int, ...]
    value_axes: tuple[int, ...]
    feature_axis: int
    log_decay: sp.Expr = sp.Integer(0)  # the per-step log-decay per group (group row symbols, log lets as read)
    history_decayed: bool = False  # the kernel sums over the history carry exp(G_i - G_j) (a scan history)
    attention_decayed: bool = False  # the attention weights carry exp(G_i - G_j) (A's factor c)


def has_infinite_state(sym: SymSpec) -> bool:
    return any(is_infinite_range(a.extent) for a in sym.state.axes)


def reject_infinite_lets(sym: SymSpec) -> None:
    """A let on an infinite feature range is only computable kernelised, i.e. when the state itself is infinite."""
    for x in sym.lets:
        if any(is_infinite_range(ax.extent) for ax in x.tensor.axes):
            _fail(sym, f"let {x.tensor.name!r} lives on an infinite feature range, but the state does not: only a "
                  "state on taylor(K, inf) is kernelised (quadratic attention)", x.tensor.span,
                  hint="use a finite order, taylor(K, p), or put the state on the infinite range")


def _fail(sym: SymSpec, msg: str, span, hint: str | None = None):
    raise SpecErrors([SpecError(msg, span, hint)], sym.checked.spec.path, sym.checked.spec.source)


def _name(e) -> str | None:
    return str(e.base.label) if isinstance(e, sp.Indexed) else None


def _output_read_fault(sym: SymSpec, readout) -> tuple[str, str] | None:
    """What in C's read of the state keeps it from the kernelised form's y[g, v] = o[g, v], and a hint, or None: a
    state axis read at an expression of the output indices (``delta(b, (e + 1) % V)``: the value slots permuted), or
    through a delta that stayed under a sum (an output axis of an independent dim E read through ``delta(e, b)``,
    b < V: not provably in range at every dims)."""
    if readout is None:
        return None
    outs, axes = set(readout.out_syms), sym.state.axes
    for node in sp.preorder_traversal(readout.ch):
        if isinstance(node, sp.Indexed) and node.base == sym.state.base:
            for k, i in enumerate(node.indices):
                if not i.is_Symbol and i.free_symbols & outs:
                    return (f"C reads the state's axis {axes[k].name!r} at {spec_str(i)}, not at an output index",
                            "read the axis at the output's own index (delta(e, b)) and rearrange the output in a "
                            "post, e.g. post y2[h: H, e: V] = y[h, (e + 1) % V]")
        if isinstance(node, sp.Sum):
            for d in node.function.atoms(sp.KroneckerDelta):
                if set(node.variables) & d.free_symbols and d.free_symbols & outs:
                    return (f"C reads the state through {spec_str(d)}, which is not provably in range at every dims",
                            "declare the output axis as a formula of the state axis it reads (dim E = V - 1), or "
                            "read every slot and cut the output in a post")
    return None


def kernelise(sym: SymSpec, a, outer, readout=None) -> Kernelised:
    """Check the kernelisable form (see the module docstring) and return its pieces; raise a positioned error.
    ``readout`` (C h as analysed) only sharpens the error when C's read is not the kernelised form's."""
    lets = {x.tensor.name: x for x in sym.lets}
    infinite = {n for n, x in lets.items() if any(is_infinite_range(ax.extent) for ax in x.tensor.axes)}
    hist_of: dict[str, str] = {}
    hist_decay: dict[str, sp.Expr] = {}  # a scan history's log-decay, over its own index symbols
    for n in sorted(infinite):
        x = lets[n]
        if x.feature is not None:
            continue
        src = _name(x.args[-1]) if x.running in ("cumsum", "scan") else None
        if src in infinite and lets[src].feature is not None:
            hist_of[n] = src
            if x.running == "scan":
                hist_decay[n] = _history_log_decay(sym, x)
            continue
        _fail(sym, f"let {n!r} lives on an infinite feature range but is neither a feature map taylor(a, ...) nor a "
              "cumsum or decayed scan of one: it cannot be kernelised", x.tensor.span,
              hint="on an infinite range, use only feature maps, their cumsums or scan(g, phi(k)) with g > 0 per "
              "group, and sums over the feature index")
    kernel_sums, log_lets = [], []
    for x in sym.lets:
        n = x.tensor.name
        if n in infinite:
            continue
        reads = {_name(e) for d in x.definition for e in sp.preorder_traversal(d) if _name(e)}
        if x.running == "prev" and _name(x.args[0]) in log_lets:
            log_lets.append(n)
            continue
        if not reads & infinite:
            continue
        # a kernel sum, plus optionally a positive term without the feature range (an attention sink: softmax's
        # denominator gains exp(s), as in gpt-oss's learned sinks or softmax1's + 1); the rest is carried as a log
        terms = sp.Add.make_args(x.expr) if not x.running else ()
        sums = [t for t in terms if isinstance(t, sp.Sum) and len(t.limits) == 1]
        extra = sp.Add(*[t for t in terms if t not in sums])
        ok = len(sums) == 1 and not ({_name(e) for e in _reads(extra)} & (infinite | set(log_lets)))
        fs = sp.Mul.make_args(sums[0].function) if ok else ()
        names = [_name(f) for f in fs]
        if not ok or len(fs) != 2 or not all(m in infinite for m in names):
            _fail(sym, f"let {n!r} reads a let on an infinite feature range; only a kernel sum "
                  "sum(f, phi(x)[.., f] * phi(y)[.., f]) (or with a cumsum of phi(y)) can be kernelised", x.tensor.span)
        var = sums[0].limits[0][0]
        maps = [lets[hist_of.get(m, m)] for m in names]
        at = [f.indices[lets[m].feature.axis] if m not in hist_of else
              f.indices[next(k for k, ax in enumerate(lets[m].tensor.axes) if is_infinite_range(ax.extent))]
              for m, f in zip(names, fs)]
        if any(i != var for i in at) or len({(y.feature.kind, y.feature.length, y.feature.order) for y in maps}) != 1:
            _fail(sym, f"let {n!r}: a kernel sum must sum over the feature index of both factors, and both must be the "
                  "same feature map", x.tensor.span)
        q_side = [m for m in names if m not in hist_of]
        k_side = [m for m in names if m in hist_of] or q_side[1:]
        extra_log = None if extra == 0 else exact_log(extra, sym) if not extra.is_number else (
            sp.log(extra) if extra.is_positive else None)
        if extra != 0 and extra_log is None:
            _fail(sym, f"let {n!r}: the term {sp.sstr(extra)} added to the kernel sum is not provably positive; the "
                  "kernel sum is carried as its logarithm, so the whole let must be positive", x.tensor.span,
                  hint="write the added term as exp(...), sigmoid(...), a positive constant or a product of such "
                  "factors (an attention sink: + exp(s[h]))")
        kernel_sums.append((n, q_side[0], hist_of.get(k_side[0], k_side[0]), k_side[0] in hist_of, extra_log))
        log_lets.append(n)
    m_b, m_c = sym.matrices["B"], sym.matrices["C"]
    if sym.readout == "pre":
        _fail(sym, "an infinite feature state supports the standard (post-update) readout only", m_c.span,
              hint="remove 'readout pre'")
    for post in sym.posts:  # post-ops run on the attention output; they may read finite lets, not feature vectors
        bad = sorted({_name(e) for e in sp.preorder_traversal(post.expr) if _name(e)} & infinite)
        if bad:
            _fail(sym, f"post {post.tensor.name!r} reads {bad[0]!r}, which lives on the infinite feature range",
                  post.tensor.span, hint="a post-op may read the output, the input, params and finite lets")
    fault = _output_read_fault(sym, readout) if outer is None and not a.mixed_axes else None
    if fault is not None:
        _fail(sym, f"{fault[0]}: the kernelised form (an infinite feature range) needs each output axis to read a "
              "group or value axis of the state at its own index", m_c.span, hint=fault[1])
    if outer is None or a.mixed_axes:
        _fail(sym, "an infinite feature range needs A scalar per group, B u = phi(k) (x) value over the feature index "
              "and C contracting the feature index (the kernelised form); this spec does not have that form",
              sym.matrices["A"].span)
    if None in outer.out_map:
        _fail(sym, "the kernelised form needs every output axis to be one of the state's group or value axes; "
              "an output axis the state lacks (broadcast by C) is not supported here", m_c.span,
              hint="drop the extra output axis and add it in a post-op: "
                   "post y2[h: H, w: Z, b: V] = y[h, b] * delta(w, 0)")
    fax = [k for k, ax in enumerate(sym.state.axes) if is_infinite_range(ax.extent)]
    if list(outer.key_axes) != fax:
        _fail(sym, "C must contract exactly the infinite feature axis of the state", m_c.span)
    if set(a.decay_axes) - set(outer.group_axes):
        _fail(sym, "A's decay may depend only on the group (head) axes for the kernelised form", sym.matrices["A"].span)
    rows = a.rows
    fsym = rows[fax[0]]
    key = outer.key
    if _name(key) not in lets or lets[_name(key)].feature is None or key.indices[lets[_name(key)].feature.axis] != fsym:
        _fail(sym, "B's factor over the infinite feature axis must be one feature-map let, e.g. kf[h, f]", m_b.span)
    qf = [f for f in sp.Mul.make_args(outer.query) if fsym in f.free_symbols]
    if len(qf) != 1 or _name(qf[0]) not in lets or lets[_name(qf[0])].feature is None:
        _fail(sym, "C's factor over the infinite feature axis must be one feature-map let, e.g. qf[h, f]", m_c.span)
    qlet, klet = lets[_name(qf[0])], lets[_name(key)]
    fq, fk = qlet.feature, klet.feature
    if (fq.kind, fq.length, fq.order) != (fk.kind, fk.length, fk.order):
        _fail(sym, "the query and key feature maps must be the same map over vectors of the same length", m_c.span)
    # the query's factors off the feature axis and C's output gate: both multiply the attention output per group
    # and value entry
    qscale = sp.Mul(*[f for f in sp.Mul.make_args(outer.query) if fsym not in f.free_symbols], outer.gate)
    # log lets hold logarithms: read X as exp(X) everywhere else
    logsub = {}
    for e in sp.preorder_traversal(sp.Add(a.decay, outer.value, qscale)):
        if _name(e) in log_lets:
            logsub[e] = sp.exp(e)
    value = outer.value.subs(logsub)
    pos = [f for f in sp.Mul.make_args(value) if isinstance(f, sp.exp)]
    value_log = sp.Add(*[f.args[0] for f in pos])
    value = sp.Mul(*[f for f in sp.Mul.make_args(value) if not isinstance(f, sp.exp)])
    row_log, col_log, a_decay = sp.Integer(0), value_log, sp.Integer(0)
    if a.decay != 1:
        logd = sp.expand_log(sp.log(a.decay.subs(logsub)), force=True)
        rest = logd
        for prev_x, x_now in prev_reads(logd, sym):  # A = c prev(X) / X: log X_(i-1) - log X_i telescopes
            left = simplify(logd - (prev_x - x_now))
            if _name(x_now) in log_lets and not ({prev_x, x_now} & _reads(left)):
                row_log, col_log, rest = -x_now, x_now + value_log, left
                break
        a_decay = _positive_log(sym, sp.exp(rest), sym.matrices["A"].span, "A's per-step factor c")
    g_syms = tuple(rows[k] for k in outer.group_axes)
    h_decays = {n: _at_group(lets[n], d, g_syms) for n, d in sorted(hist_decay.items())}
    for d in (a_decay, *h_decays.values()):
        if d != 0 and (d.free_symbols & set(rows)) - set(g_syms):
            _fail(sym, "the kernelised form's decay may depend only on the group (head) axes, not on the feature or "
                  f"value axes; got log-decay {sp.sstr(d)}", sym.matrices["A"].span)
    # one log-decay per group: A's factor c and every decayed history's g must agree (a history without decay,
    # a cumsum, with A = c: only the attention decays; a decayed history with A = prev(X) / X: only the kernel sums)
    nonzero = [d for d in (a_decay, *h_decays.values()) if d != 0]
    for n, d in h_decays.items():
        if any(simplify(d - o) != 0 for o in nonzero):
            _fail(sym, f"let {n!r}: the history's log-decay {sp.sstr(d)} differs from A's per-step log-decay "
                  f"{sp.sstr(a_decay)} (or another history's); the kernelised form carries one log-decay per group "
                  "for the kernel sums and the attention", lets[n].tensor.span,
                  hint="decay the normaliser's history with A's factor: A = c * prev(X) / X with "
                  "X = sum(f, phi(q) * scan(c, phi(k)))")
    plain = sorted(h for h in hist_of if h not in h_decays)
    if h_decays and plain:  # the kernel sums name the key map, not the history: one kind of history per spec
        _fail(sym, f"let {plain[0]!r}: a cumsum history next to a decayed (scan) history of the same keys; the "
              "kernelised form supports one kind of history per spec", lets[plain[0]].tensor.span,
              hint=f"use one history, e.g. {sorted(h_decays)[0]!r}, in every kernel sum")
    log_decay = nonzero[0] if nonzero else sp.Integer(0)
    return Kernelised(qlet, klet, tuple(sorted(hist_of)), tuple(log_lets), tuple(kernel_sums), value,
                      value_log, row_log, simplify(col_log), qscale.subs(logsub), outer.group_axes,
                      outer.value_axes, fax[0], log_decay, bool(h_decays), a_decay != 0)


def _reads(e: sp.Expr) -> set:
    return {x for x in sp.preorder_traversal(e) if isinstance(x, sp.Indexed)}


def _positive_log(sym: SymSpec, c: sp.Expr, span, what: str) -> sp.Expr:
    """log(c) for a per-step factor that is provably positive (exp, sigmoid, products of them, positive numbers),
    written without a round trip through exp (log_space.exact_log); else a positioned error."""
    if c == 1:
        return sp.Integer(0)
    if c.is_number:
        if not c.is_positive:
            _fail(sym, f"{what} must be positive, got {sp.sstr(c)}", span)
        return sp.log(c)
    lg = exact_log(c, sym)
    if lg is None:
        _fail(sym, f"the kernelised form supports A = c * prev(X) / X or A = c per group (X a kernel sum, c > 0); "
              f"{what} {sp.sstr(c)} is not provably positive", span,
              hint="write the decay as exp(...), sigmoid(...) or a product of such factors (a let defined so)")
    return lg


def _history_log_decay(sym: SymSpec, x: SymLet) -> sp.Expr:
    """The log-decay of a scan history ``scan(g, phi(k))`` over the let's own index symbols: g may not vary along
    the feature axis (it multiplies every feature alike)."""
    fpos = next(k for k, ax in enumerate(x.tensor.axes) if is_infinite_range(ax.extent))
    if x.index[fpos] in x.args[0].free_symbols:
        _fail(sym, f"let {x.tensor.name!r}: the decay of a history on the infinite feature range may not depend on "
              "the feature index (it must scale every feature of phi(k) alike)", x.tensor.span,
              hint="use a decay per group (head), e.g. scan(f[h], kf[h, e])")
    return _positive_log(sym, x.args[0], x.tensor.span, f"the decay of {x.tensor.name!r}")


def _at_group(x: SymLet, e: sp.Expr, g_syms: tuple) -> sp.Expr:
    """e over the history let's index symbols -> over the state's group row symbols (its non-feature axes, in
    order; the plan checks that the feature lets have the state's group axes)."""
    own = [ix for k, ix in enumerate(x.index) if not is_infinite_range(x.tensor.axes[k].extent)]
    return e.xreplace(dict(zip(own, g_syms))) if len(own) == len(g_syms) else e
