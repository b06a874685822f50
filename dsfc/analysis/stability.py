"""Eigenvalue bounds of A, proven by interval reasoning over the SymPy IR.

For diagonal (and scalar, identity) A the eigenvalues are the decay entries themselves. Their range is derived
from the expression tree: exp of a provably negative exponent lies in (0, 1), softplus is positive, sigmoid lies in
(0, 1), and so on. Sign facts of lets come from SymPy's assumptions on their definitions (see ir/lower.py).
"""

from __future__ import annotations

import collections
import itertools
import math
import re
from dataclasses import dataclass, replace

import sympy as sp

from ..ir.functions import Elu, LogSigmoid, Relu, Sigmoid, Silu, Softplus
from ..ir.notation import spec_str
from ..ir.symspec import SymSpec
from .facts import AKind, Bound
from .index_algebra import delta_pairs, factors, simplify, split_deltas, terms
from .structure import pair_blocks, rotation_parts

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

        left = "(" if self.lo_open or self.lo == -INF else "["
        right = ")" if self.hi_open or self.hi == INF else "]"
        return f"{left}{fmt(self.lo)}, {fmt(self.hi)}{right}"


ANY = Interval(-INF, INF, True, True)
POS = Interval(0.0, INF, True, True)
NEG = Interval(-INF, 0.0, True, True)
NONNEG = Interval(0.0, INF, False, True)
UNIT_OPEN = Interval(0.0, 1.0, True, True)


def _mono(iv: Interval, f) -> Interval:
    """Image of an interval under an increasing function."""
    return Interval(f(iv.lo), f(iv.hi), iv.lo_open, iv.hi_open)


def _int_pow(x: float, p: int) -> float:
    """x ** p for an integer p > 0, +-inf where it overflows (x ** 1000 of x = 10 raises OverflowError)."""
    try:
        return float(x) ** p
    except OverflowError:
        return INF if x > 0 or p % 2 == 0 else -INF


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


# monotone functions at an interval's end points (inf included); the cut-offs keep math.exp from overflowing
def _softplus(x):
    return INF if x == INF else 0.0 if x == -INF else math.log1p(math.exp(x)) if x < 30 else x


def _sigmoid(x):
    return 1.0 if x == INF else 0.0 if x == -INF else 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def _logsigmoid(x):
    return 0.0 if x == INF else -INF if x == -INF else -math.log1p(math.exp(-x)) if x > -30 else x


def _tanh(x):
    return 1.0 if x == INF else -1.0 if x == -INF else math.tanh(x)


def _mul(a: Interval, b: Interval) -> Interval:
    cands = []
    for x, xo in ((a.lo, a.lo_open), (a.hi, a.hi_open)):
        for y, yo in ((b.lo, b.lo_open), (b.hi, b.hi_open)):
            v = 0.0 if (x == 0 or y == 0) else x * y
            # an attained 0 times anything is an attained 0: [0, inf) * (0, inf) reaches 0
            cands.append((v, (xo or yo) and not ((x == 0 and not xo) or (y == 0 and not yo))))
    lo = min(c[0] for c in cands)
    hi = max(c[0] for c in cands)
    lo_open = all(o for v, o in cands if v == lo)
    hi_open = all(o for v, o in cands if v == hi)
    return Interval(lo, hi, lo_open, hi_open)


def _intersect(a: Interval, b: Interval) -> Interval:
    """Both intervals hold the same quantity: their intersection does too."""
    lo, lo_open = max((a.lo, a.lo_open), (b.lo, b.lo_open))
    hi, hi_open = min((a.hi, not a.hi_open), (b.hi, not b.hi_open))
    return Interval(lo, hi, lo_open, not hi_open)


def _add(a: Interval, b: Interval) -> Interval:
    return Interval(a.lo + b.lo, a.hi + b.hi, a.lo_open or b.lo_open, a.hi_open or b.hi_open)


def _neg(a: Interval) -> Interval:
    return Interval(-a.hi, -a.lo, a.hi_open, a.lo_open)


def _min(a: Interval, b: Interval) -> Interval:
    """Range of min(x, y), x in a and y in b independently: the smaller lower end (reached when either argument
    reaches it) and the smaller upper end (reached only when both can reach it)."""
    if a.lo != b.lo:
        lo, lo_open = (a.lo, a.lo_open) if a.lo < b.lo else (b.lo, b.lo_open)
    else:
        lo, lo_open = a.lo, a.lo_open and b.lo_open
    if a.hi != b.hi:
        hi, hi_open = (a.hi, a.hi_open) if a.hi < b.hi else (b.hi, b.hi_open)
    else:
        hi, hi_open = a.hi, a.hi_open or b.hi_open
    return Interval(lo, hi, lo_open, hi_open)


def _abs(a: Interval) -> Interval:
    if a.lo >= 0:
        return a
    if a.hi <= 0:
        return _neg(a)
    # straddles 0: from 0 (attained) to the farther end
    far, far_open = max((-a.lo, not a.lo_open), (a.hi, not a.hi_open))
    return Interval(0.0, far, False, not far_open)


# The largest expression (sp.count_ops) the prover inlines lets into and simplifies: a normalised key's |k|^2 is
# ~20 ops; simplifying RWKV-6's low-rank decay projections (hundreds) took minutes per compile.
INLINE_MAX_OPS = 120
INLINE_MAX_DEPTH = 1
# How deep a chain of lets read outside sums is followed when inlining them (n2 -> nrm = sqrt(n2 + eps) -> A's scale)
INLINE_CHAIN_DEPTH = 4
# The same limit for the norm readings of a dense block (``_norm_bound``), tried on every block the form rules leave
# open: the proofs they exist for inline <= 25 ops (an HMM's softmax rows, W / ||W||_F), while a product of three
# Householder reflections (gated DeltaProduct) inlined to 60 ops with seven sums, whose simplify ran for minutes.
NORM_INLINE_MAX_OPS = 40
# The most terms ``_partial_total`` writes a part-over-total ratio's sums out to at the default dims (a layer count)
PARTIAL_TOTAL_MAX_TERMS = 256


class IntervalProver:
    """Ranges of expressions of a spec, with the facts used recorded as human-readable reasons."""

    def __init__(self, sym: SymSpec, inline_max_ops: int = INLINE_MAX_OPS):
        self.sym = sym
        self.inline_max_ops = inline_max_ops  # the largest expression inlined into and simplified (cost, not rigour)
        self.reasons: list[str] = []
        self._lets = {let.tensor.name: let for let in sym.lets}
        self._cache: dict[str, Interval] = {}
        self._normalised: dict[str, int | None] = {}
        self._unit: set[sp.Symbol] = set()  # stand-ins i / extent for index symbols: in [0, 1)
        self._sums: dict[sp.Sum, Interval] = {}
        self._atoms: dict[sp.Expr, tuple[list, collections.Counter]] = {}
        self._depth = 0  # how many inlined readings enclose the range being computed

    def of_name(self, name: str, base) -> Interval:
        if name in self._cache:
            return self._cache[name]
        let = self._lets.get(name)
        if let is not None and let.running:
            self._cache[name] = ANY  # guards recursion through a running quantity's own name
            x = self.range(let.args[0] if let.running == "prev" else let.args[-1])
            if let.running == "prev" and len(let.args) > 1:  # prev(x, s): x_(t-1), or s at a fresh start
                x = iv = _hull([x, self.range(let.args[1])])
            elif let.running in ("prev", "window"):
                iv = x if let.running == "prev" else ANY
            elif let.running == "scan" and self.range(let.args[0]).lo < 0:
                iv = ANY
            elif x.lo > 0:  # a running sum of terms >= x.lo > 0 (a scan's decay >= 0) is at least its newest term
                iv = Interval(x.lo, INF, x.lo_open, True)
            else:  # a running sum of terms in x: positive terms stay positive
                iv = POS if (x.lo == 0 and x.lo_open) else NONNEG if x.lo >= 0 else ANY
            if iv != ANY:
                self.reasons.append(f"{name} in {iv} ({let.running} of terms in {x})")
        elif let is not None and let.positive_reason:
            iv = POS
            self.reasons.append(f"{name} in {iv} ({let.positive_reason})")
        elif let is not None and let.feature is not None:
            iv = ANY  # Taylor features of a real vector take either sign
        elif let is not None and self._normalised_axis(let) is not None:
            iv = Interval(0.0, 1.0, True, False)
            j = let.index[self._normalised_axis(let)]
            self.reasons.append(f"{name} in {iv} (a positive term over its sum along {j}: a softmax-like weight)")
        elif let is not None:
            iv = self.range_over(let.expr, let.index, [ax.extent for ax in let.tensor.axes])
            if iv != ANY:
                self.reasons.append(f"{name} in {iv} (from its definition)")
        elif getattr(base, "is_positive", None):
            iv = POS
        elif getattr(base, "is_nonnegative", None):  # index symbols: 0 .. extent - 1
            iv = NONNEG
        else:
            iv = ANY
        self._cache[name] = iv
        return iv

    def _normalised_axis(self, let) -> int | None:
        """Position k when ``let[.., j, ..] = X(j) / sum(j2, X(j2))`` over j's whole range with X > 0, else None.
        Asked for every let on every sum the prover meets: computed once per let."""
        name = let.tensor.name
        if name not in self._normalised:
            self._normalised[name] = None  # guards recursion through range(X)
            self._normalised[name] = self._find_normalised_axis(let)
        return self._normalised[name]

    def _find_normalised_axis(self, let) -> int | None:
        if let.running or let.feature is not None or not isinstance(let.expr, sp.Mul):
            return None
        dens = [f for f in let.expr.args if isinstance(f, sp.Pow) and f.exp == -1 and isinstance(f.base, sp.Sum)]
        if len(dens) != 1 or len(dens[0].base.limits) != 1:
            return None
        total = dens[0].base
        j2, lo, hi = total.limits[0]
        num = sp.Mul(*[f for f in let.expr.args if f is not dens[0]])
        for k, j in enumerate(let.index):
            ext = let.tensor.axes[k].extent
            if lo == 0 and simplify(hi - (ext - 1)) == 0 and simplify(total.function.subs(j2, j) - num) == 0:
                iv = self.range(num)
                if iv.lo > 0 or (iv.lo == 0 and iv.lo_open):
                    return k
        return None

    def _weight_combination(self, e) -> Interval | None:
        """``sum_j a_j w[j]`` with w softmax-like over j (weights in (0, 1] summing to 1): a convex combination of the
        a_j, so it lies between their min and max. The coefficients come from index arithmetic on dims (e.g. a
        layer's lower-bound mask), so they are evaluated at the spec's default dims (said in the reason)."""
        weights = {name: self._normalised_axis(let) for name, let in self._lets.items()}
        weights = {n: k for n, k in weights.items() if k is not None}
        if not weights or not any(isinstance(x, sp.Indexed) and str(x.base.label) in weights
                                  for x in sp.preorder_traversal(e)):
            return None
        # only sums whose terms are the weights themselves are expanded (a projection over d would be thousands)
        if any(isinstance(x, sp.Sum) and not any(isinstance(y, sp.Indexed) and str(y.base.label) in weights
                                                 for y in sp.preorder_traversal(x.function))
               for x in sp.preorder_traversal(e)):
            return None
        values = self.sym.dim_values()
        concrete = e.subs({self.sym.dims[k]: v for k, v in values.items()})
        if any(isinstance(x, sp.Sum) and any(int(hi - lo) > 4096 for _, lo, hi in x.limits)
               for x in sp.preorder_traversal(concrete)):
            return None
        concrete = sp.expand(concrete.doit())
        if concrete == 0:
            # every coefficient cancelled (HGRN's first layer: the mask keeps w[0] alone, minus w[0]): exactly 0
            self.reasons.append(f"{spec_str(e)} = 0 at the default dims (its softmax-like weights cancel)")
            return Interval(0.0, 0.0)
        coef: dict[int, sp.Expr] = {}
        name, rest_idx, extent = None, None, None
        for term in sp.Add.make_args(concrete):
            c, w = term.as_independent(sp.Indexed)
            if not (isinstance(w, sp.Indexed) and str(w.base.label) in weights and c.is_Number):
                return None
            k = weights[str(w.base.label)]
            idx = list(w.indices)
            other = idx[:k] + idx[k + 1:]
            if name is None:
                name, rest_idx = str(w.base.label), other
                extent = int(sp.S(self._lets[name].tensor.axes[k].extent).subs(
                    {self.sym.dims[kk]: v for kk, v in values.items()}))
            if str(w.base.label) != name or other != rest_idx or not idx[k].is_Integer:
                return None
            coef[int(idx[k])] = coef.get(int(idx[k]), 0) + c
        a = [float(coef.get(j, 0)) for j in range(extent)]
        lo, hi = min(a), max(a)
        # every weight is > 0, so unless all a_j are equal the extremes are approached, never attained
        iv = Interval(lo, hi, lo != hi, lo != hi)
        self.reasons.append(f"{spec_str(e)} in {iv}: a convex combination of softmax-like weights {name} "
                            f"(coefficients evaluated at the default dims)")
        return iv

    def _outer_atoms(self, e) -> list:
        """The outermost lets, symbols, function applications and sums ``e`` reads (not the deltas), sorted; cached:
        the multilinear and one-quantity rules ask for every sum and product the prover meets."""
        if e not in self._atoms:
            # min / max are no sp.Function: ``s + (1 - s) min(relu(x), 1)`` was no polynomial in its atoms, and the
            # multilinear rule left a lower-bounded gate read twice at (0, 2)
            kinds = (sp.Indexed, sp.Function, sp.Sum, sp.Symbol, sp.Min, sp.Max)
            seen = [x for x in sp.preorder_traversal(e) if isinstance(x, kinds) and not isinstance(x, sp.KroneckerDelta)]
            inner = {y for x in set(seen) if not isinstance(x, sp.Symbol) for y in sp.preorder_traversal(x) if y != x}
            counts = collections.Counter(x for x in seen if x not in inner)
            self._atoms[e] = (sorted(counts, key=sp.default_sort_key), counts)
        return self._atoms[e][0]

    def _atom_counts(self, e) -> collections.Counter:
        """How often each of ``_outer_atoms(e)`` occurs in e."""
        self._outer_atoms(e)
        return self._atoms[e][1]

    def _independent_factors(self, e: sp.Mul) -> list:
        """The factors of ``e`` grouped into products that share no atom with each other (``t * (beta kk / (1 + beta
        kk))``): each group is ranged as one expression, so the rules above see a quantity read twice inside it,
        and the groups vary independently, so the product of their ranges holds. Plain factors when every group is
        one factor (the usual case, and the only reading before)."""
        args = list(e.args)
        atoms = [set(self._outer_atoms(a)) for a in args]
        parent = list(range(len(args)))

        def root(i):
            while parent[i] != i:
                i = parent[i]
            return i

        for i, j in itertools.combinations(range(len(args)), 2):
            if atoms[i] & atoms[j]:
                parent[root(i)] = root(j)
        groups: dict[int, list] = {}
        for i, a in enumerate(args):
            groups.setdefault(root(i), []).append(a)
        if len(groups) == len(args) or len(groups) == 1:
            return args
        return [sp.Mul(*g) for g in groups.values()]

    def _multilinear(self, e) -> Interval | None:
        """Exact hull of an expression that is affine in each of its atoms (lets, function applications) when an
        atom occurs more than once (``g + (1 - g) s``): interval arithmetic would count g twice; a multilinear
        function takes its extremes at the corners of the atoms' box."""
        atoms = [x for x in self._outer_atoms(e) if not isinstance(x, sp.Symbol)]
        if not 2 <= len(atoms) <= 4:
            return None
        if all(self._atom_counts(e)[x] == 1 for x in atoms):
            return None  # every atom once: plain interval arithmetic is already exact (and no expansion is paid)
        ex = sp.expand(e)
        try:
            poly = sp.Poly(ex, *atoms)
        except sp.PolynomialError:
            return None
        if any(d > 1 for monom in poly.monoms() for d in monom) or not all(sp.S(c).is_Number for c in poly.coeffs()):
            return None
        ivs = [self.range(x) for x in atoms]
        if any(INF in (abs(iv.lo), abs(iv.hi)) for iv in ivs):
            return None
        corners = []
        expr = poly.as_expr()
        for pick in itertools.product((0, 1), repeat=len(atoms)):
            point = {x: (iv.lo if p == 0 else iv.hi) for x, iv, p in zip(atoms, ivs, pick)}
            at_open = [x for x, iv, p in zip(atoms, ivs, pick) if (iv.lo_open if p == 0 else iv.hi_open)]
            # a corner at an open end is still attained where the value does not depend on the atoms picked
            # there: w s + 1 - w (a head's role w = h % 2 in [0, 1], s in (0, 1)) is 1 at w = 0 whatever s is, so
            # the range is (0, 1], not (0, 1) (every corner with an open end was taken as open: a false |lambda| < 1)
            rest = sp.expand(expr.subs({x: v for x, v in point.items() if x not in at_open}))
            corners.append((float(expr.subs(point)), any(rest.has(x) for x in at_open)))
        lo = min(v for v, _ in corners)
        hi = max(v for v, _ in corners)
        return Interval(lo, hi, all(o for v, o in corners if v == lo), all(o for v, o in corners if v == hi))

    def _one_quantity(self, e) -> Interval | None:
        """Exact range of an expression that is a rational function f(X) of one quantity X read more than once: an
        atom (``4 g (1 - g)``) or the product of all its atoms (the bilinear (Tustin) step ``(1 + dt a / 2) / (1 - dt
        a / 2)`` is f(dt a)). Interval arithmetic reads each occurrence apart: the Tustin decay was (-inf, inf),
        "unknown"; f's extremes over X's range lie at its ends (limits at open or infinite ones) or where f' = 0, and a
        pole inside the range leaves it unbounded (None). Polynomials of degree <= 4, with number coefficients."""
        atoms, counts = self._outer_atoms(e), self._atom_counts(e)
        # a function of the atoms' product reads each of them equally often
        if not 1 <= len(atoms) <= 3 or counts[atoms[0]] < 2 or len(set(counts.values())) > 1 or sp.count_ops(e) > 40:
            return None
        X = sp.Dummy("X")
        f = e.xreplace({atoms[0]: X}) if len(atoms) == 1 else e.subs(sp.Mul(*atoms), X)
        if f.has(*atoms) or not f.has(X):
            return None
        xiv = self.range(sp.Mul(*atoms))  # the product's range (each atom read once: interval arithmetic's own)
        iv = _rational_range(f, X, xiv)
        if iv is not None:
            self.reasons.append(f"{spec_str(e)} in {iv}: a rational function of the one quantity "
                                f"{spec_str(sp.Mul(*atoms))} in {xiv} (extremes at its ends or where the derivative "
                                "is 0)")
        return iv

    def _sign_cases(self, e) -> Interval | None:
        """A rational function of one quantity x and its magnitude |x| (softsign ``x / (1 + |x|)``, as fla's
        preconditioned gated delta rule squashes a log-scale): |x| is x where x >= 0 and -x where x <= 0, so the
        range is the hull of the two rational functions' ranges over those halves of x's range. Interval arithmetic
        reads x and |x| apart: softsign of x in [-13.6, inf) was [-13.6, inf), not [-0.93, 1)."""
        absolutes = e.atoms(sp.Abs)
        if len(absolutes) != 1 or sp.count_ops(e) > 40:
            return None
        (magnitude,) = absolutes
        x = magnitude.args[0]
        if not isinstance(x, (sp.Indexed, sp.Symbol)) or not e.xreplace({magnitude: sp.Integer(0)}).has(x):
            return None
        X = sp.Dummy("X")
        xiv = self.range(x)
        halves = []
        if xiv.hi >= 0:
            halves.append((sp.Integer(1), Interval(max(xiv.lo, 0.0), xiv.hi, xiv.lo_open and xiv.lo >= 0,
                                                   xiv.hi_open)))
        if xiv.lo <= 0:
            halves.append((sp.Integer(-1), Interval(xiv.lo, min(xiv.hi, 0.0), xiv.lo_open,
                                                    xiv.hi_open and xiv.hi <= 0)))
        pieces = []
        for sign, half in halves:
            f = e.xreplace({magnitude: sign * x}).xreplace({x: X})
            iv = _rational_range(f, X, half) if half.lo < half.hi else self.range(f.xreplace({X: sp.Float(half.lo)}))
            if iv is None:
                return None
            pieces.append(iv)
        iv = _hull(pieces)
        self.reasons.append(f"{spec_str(e)} in {iv}: a rational function of {spec_str(x)} in {xiv} and its "
                            "magnitude, read on each sign of it")
        return iv

    def _convex_combination(self, e) -> Interval | None:
        """``e`` affine in an atom w with w in [0, 1] read more than once: ``e = (1 - w) e|w=0 + w e|w=1`` exactly, so
        e lies in the hull of the ranges of e at w = 0 and at w = 1. ReGLA's refining gate ``(1 - r) g^2 + r (1 -
        (1 - g)^2)`` (a mix of two gates in (0, 1)) read term by term was (0, 2), "not proven <= 1"; it is (0, 1).
        An end of the hull is closed only where an end of e|w=0 or e|w=1 that reaches it is (a superset). A product
        too: SymPy factors a gate mixing s and s^2, ``g s + (1 - g) s^2``, into ``s (g + (1 - g) s)``."""
        # occurrences counted in one traversal (e.count(x) per node was quadratic: a random DPLR spec's Jury test
        # spent 42 of its 48 s of compile here)
        counts = collections.Counter(x for x in sp.preorder_traversal(e) if isinstance(x, (sp.Indexed, sp.Function))
                                     and not isinstance(x, sp.KroneckerDelta))
        atoms = sorted((x for x, c in counts.items() if c > 1), key=sp.default_sort_key)
        for w in atoms:
            wiv = self.range(w)
            if wiv.lo < 0 or wiv.hi > 1:
                continue
            # SymPy differentiates by a symbol or an Indexed, not by a function application (a sigmoid, an exp: its
            # ValueError ended every sharper rule for e in _range_plain): such an atom is differentiated by a Dummy
            # standing for it, an independent variable (the hull then covers the atom's every value); w left in ex
            # (read under a sum binding its index) is skipped
            by, ex = (w, e) if w._diff_wrt else (W := sp.Dummy("w"), e.subs(w, W))
            if (by is not w and ex.has(w)) or _curved_in(ex, by) or sp.expand(sp.diff(ex, by, 2)) != 0:
                continue
            at = [e.subs(w, v) for v in (0, 1)]
            if e in at:
                # w read only under a sum over one of its indices (sm[j, c] in Sum(.., (j, 0, L - 1))): subs leaves a
                # bound variable's atom alone, and ranging e again recursed until Python's limit (HGRN's first layer)
                continue
            ends = [self.range(x) for x in at]
            lo, hi = min(iv.lo for iv in ends), max(iv.hi for iv in ends)
            if -INF < lo and hi < INF:
                if by is w:
                    return Interval(lo, hi, all(iv.lo_open for iv in ends if iv.lo == lo),
                                    all(iv.hi_open for iv in ends if iv.hi == hi))
                # e at an end is reached only where w reaches 0 (or 1), or where both ends reach it: for w in (0, 1)
                # e is a strict mix. A sigmoid never reaches 0 or 1, so Titans' 1 - tr + det (the ends [0, 0.5) and
                # (0, 1.5)) is (0, 1.5), not [0, 1.5): |lambda| < 1, as it was proven before this rule read sigmoids
                reach = [wiv.lo == 0 and not wiv.lo_open, wiv.hi == 1 and not wiv.hi_open]
                return Interval(lo, hi, _open_end(ends, reach, lo, lambda iv: (iv.lo, iv.lo_open)),
                                _open_end(ends, reach, hi, lambda iv: (iv.hi, iv.hi_open)))
        return None

    def _share(self, e) -> Interval | None:
        """``n / (n + r)`` with n, r >= 0 (not both 0): a share of a total, in [0, 1]. Interval arithmetic reads n
        twice and gave [0, inf), so minLSTM's normalised forget gate ``f / (f + i)`` was reported "unbounded: can
        exceed 1" (now worded "not proven <= 1"). The share increases with n and decreases with r: its ends are at
        the ends of their ranges."""
        dens = [f for f in e.args if isinstance(f, sp.Pow) and f.exp == -1 and isinstance(f.base, sp.Add)]
        if len(dens) != 1:
            return None
        num = sp.Mul(*[f for f in e.args if f is not dens[0]])
        rest = sp.expand(dens[0].base - num)
        if rest == dens[0].base:  # num is no term of the denominator
            return None
        n, r = self.range(num), self.range(rest)
        if n.lo < 0 or r.lo < 0:
            return None
        if not (n.lo > 0 or n.lo_open or r.lo > 0 or r.lo_open):
            return None  # 0 / 0 possible
        if n.hi == 0:
            return Interval(0.0, 0.0)
        lo = 0.0 if n.lo == 0 or r.hi == INF else n.lo / (n.lo + r.hi)
        lo_open = not ((n.lo == 0 and not n.lo_open) or (not n.lo_open and not r.hi_open and r.hi < INF))
        hi = 1.0 if n.hi == INF else n.hi / (n.hi + r.lo)
        hi_open = not ((r.lo == 0 and not r.lo_open) or (not n.hi_open and not r.lo_open and n.hi < INF))
        return Interval(lo, hi, lo_open, hi_open)

    def _partial_total(self, e) -> Interval | None:
        """``sum(l: n, x[l + c]) / sum(l: N, x[l])`` with x >= 0: part of a total over the total, in [0, 1]. HGRN2's
        layer lower bound written inline, ``cumsum(softmax(Gam))[layer] - softmax(Gam)[0]`` as
        ``sum(l: layer, exp(Gam[l + 1])) / sum(l: L, exp(Gam[l]))``, was (0, inf), its gate ``lb + (1 - lb) s``
        "unknown". Read at the default dims (as ``_weight_combination`` reads its masks) as the share rule's
        ``n / (n + r)``: both sums written out term by term, n the numerator's terms and r the total's others; a term
        the total lacks or one counted twice leaves r signed, and nothing is claimed."""
        dens = [f for f in e.args if isinstance(f, sp.Pow) and f.exp == -1 and isinstance(f.base, sp.Sum)]
        nums = [f for f in e.args if isinstance(f, sp.Sum)]
        if len(dens) != 1 or len(nums) != 1 or len(e.args) != 2:
            return None
        num, whole = nums[0], dens[0].base
        # one index each, terms without sums of their own (a projection over d would be written out d times)
        if any(len(s.limits) != 1 or s.function.has(sp.Sum) for s in (num, whole)):
            return None
        if self.range(num.function).lo < 0 or self.range(whole.function).lo < 0:
            return None
        subs = {self.sym.dims[k]: v for k, v in self.sym.dim_values().items()}
        terms = 1
        for s in e.atoms(sp.Sum):
            for _, lo, hi in s.limits:
                count = sp.S(hi - lo + 1).subs(subs)
                if not count.is_Integer:
                    return None
                terms *= max(int(count), 1)
        if terms > PARTIAL_TOTAL_MAX_TERMS:
            return None
        whole = sp.expand(whole.subs(subs).doit())
        part = sp.expand(num.subs(subs).doit())
        if not isinstance(whole, sp.Add) or part.has(sp.Sum) or whole.has(sp.Sum):
            return None
        iv = self._share(sp.Mul(part, sp.Pow(whole, -1, evaluate=False), evaluate=False))
        if iv is not None:
            self.reasons.append(f"{spec_str(e)} in {iv}: part of a total of terms >= 0 over the total (written out "
                                f"at the default dims)")
        return iv

    def _running_share(self, e) -> Interval | None:
        """``prev(n) / n`` for a running sum ``n = cumsum(x)`` of terms x >= 0: n = prev(n) + x after the first step
        (and the ratio is 1 at a first step with no carried state), so it is the share ``prev(n) / (prev(n) + x)``,
        in [0, 1]. Read apart, n_prev and n are each (0, inf) and their ratio unbounded: power-law forgetting
        ``(n_prev / n) ^ al`` was "not proven <= 1"."""
        for den in (f for f in e.args if isinstance(f, sp.Pow) and f.exp == -1):
            read = self.sym.let_read(den.base)
            if read is None or read[0].running != "cumsum":
                continue
            let, at = read
            for num in e.args:
                prev = self.sym.let_read(num)
                if prev is None or prev[0].running != "prev" or len(prev[0].args) > 1 or self.sym.let_read(
                        prev[0].value_at(prev[1], prev[0].args[0])) != read:  # prev(n, s): s / n at a first step
                    continue
                share = self._share(sp.Mul(num, sp.Pow(sp.Add(num, let.value_at(at, let.args[0])), -1)))
                if share is None:
                    continue
                share = Interval(share.lo, 1.0, share.lo_open, False)  # exactly 1 at a first step
                self.reasons.append(f"{spec_str(num / den.base)} = {spec_str(num)} / ({spec_str(num)} + "
                                    f"{spec_str(let.value_at(at, let.args[0]))}) in {share} (a running sum's share)")
                rest = [f for f in e.args if f is not den and f is not num]
                return _mul(share, self.range(sp.Mul(*rest))) if rest else share
        return None

    def _divided_out(self, e) -> Interval | None:
        """``(n - 1) / n`` read as ``1 - 1 / n``: a quotient whose numerator holds its denominator ``x`` (a let, a
        parameter entry) is expanded so that x occurs once per term. Read as a product, n - 1 and 1 / n vary apart:
        a running mean's decay with n = cumsum(1) in [1, inf) was [0, inf) rather than [0, 1). Only when the
        expanded form is bounded and sharper; both readings are enclosures, so the intersection is one too."""
        dens = [f.base for f in e.args
                if isinstance(f, sp.Pow) and f.exp == -1 and isinstance(f.base, (sp.Indexed, sp.Symbol))]
        if not any(f.has(x) for x in dens for f in e.args if isinstance(f, sp.Add)):
            return None
        ex = sp.expand(e)
        if not isinstance(ex, sp.Add) or any(t.count(x) > 1 for t in ex.args for x in dens):
            return None
        iv = self.range(ex)
        if iv.lo == -INF and iv.hi == INF:
            return None
        plain = self.range(e.args[0])
        for a in e.args[1:]:
            plain = _mul(plain, self.range(a))
        return _intersect(iv, plain)

    def _weighted_mean(self, e) -> Interval | None:
        """``(x_1 w_1 + ... + x_m w_m) / (w_1 + ... + w_m)`` with every weight w_i >= 0 and their total > 0: a mean
        of the x_i, inside the hull of their ranges (a bound is open when every x_i reaching it has it open). The
        share rule reads only ``n / (n + r)``; PaTH's Householder factor with an epsilon in its norm,
        ``1 - be |w|^2 = ((1 - be) S + eps) / (S + eps)`` for ``S = sum(a, wr[a]^2)``, is this mean of 1 - be and 1,
        which interval arithmetic (S read twice) left unbounded."""
        dens = [f for f in e.args if isinstance(f, sp.Pow) and f.exp == -1 and isinstance(f.base, sp.Add)]
        if len(dens) != 1:
            return None
        weights = sp.Add.make_args(dens[0].base)
        symbolic = [w for w in weights if not w.is_number]
        constant = sp.Add(*[w for w in weights if w.is_number])
        rest = sp.expand_mul(sp.Mul(*[f for f in e.args if f is not dens[0]]), deep=False)
        xs = []
        for w in symbolic:
            x = rest.coeff(w)
            xs.append(x)
            rest = sp.expand_mul(rest - x * w, deep=False)
        if constant != 0:
            xs.append(rest / constant)
        elif rest != 0:
            return None
        if not symbolic or any(x.has(w) for x in xs for w in symbolic):
            return None  # not linear in the weights (w^2, w1 w2): no mean
        wivs = [self.range(w) for w in weights]
        if any(iv.lo < 0 for iv in wivs) or not any(iv.lo > 0 or iv.lo_open for iv in wivs):
            return None  # a negative weight, or all of them possibly 0 (0 / 0)
        ivs = [self.range(x) for x in xs]
        lo, hi = min(iv.lo for iv in ivs), max(iv.hi for iv in ivs)
        if lo == -INF and hi == INF:
            return None
        return Interval(lo, hi, all(iv.lo_open for iv in ivs if iv.lo == lo),
                        all(iv.hi_open for iv in ivs if iv.hi == hi))

    def _norm_ratio(self, e) -> Interval | None:
        """``sum(j, |y_j|^p) / D`` with p >= 1 and a denominator at least ``sum(j, |y_j|)^p``: ||y||_p^p over at
        least ||y||_1^p, in [0, 1] (||y||_p <= ||y||_1). D is ``(sum(j, |y_j|) + c)^p`` with c >= 0, or its expanded
        form (SymPy's simplify expands ``(S + eps)^2``). A key normalised by its L1 norm, ``k = x / sum(a,
        abs(x[a]))``, has ``|k|^2 = sum(j, x_j^2) / sum(a, |x_a|)^2`` once its lets are inlined; read apart (the sums
        vary apart) it was [0, inf), so a delta rule with such keys (or with sum-normalised features
        ``f / sum(a, f[a])``, f >= 0) was "unknown" where ``alpha (1 - beta |k|^2)`` is in (0, 1). The terms may be
        written ``y^p`` for an even p or for y >= 0 (``exp(p x)`` for ``exp(x)^p``: a softmax over the key axis); the
        two sums run over the same ranges (their bound names may differ)."""
        dens = [f for f in e.args if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0]
        sums = [f for f in e.args if isinstance(f, sp.Sum)]
        if len(dens) != 1 or len(sums) != 1:
            return None
        s2, den = sums[0], dens[0]
        if isinstance(s2.function, sp.Pow):
            base, p = s2.function.args
        elif isinstance(s2.function, sp.exp):  # SymPy writes exp(x)^2 as exp(2 x): p from the denominator's power
            p = -den.exp
            base = sp.exp(s2.function.args[0] / p)
        else:
            return None
        if not p.is_Number or p < 1:
            return None
        y = base.args[0] if isinstance(base, sp.Abs) else base
        if base is y and not ((p.is_Integer and p % 2 == 0) or self.range(y).lo >= 0):
            return None  # y^p of a signed y and an odd p is no |y|^p
        ones = [x for x in den.base.atoms(sp.Sum) if len(x.limits) == len(s2.limits) and all(
            (lo1, hi1) == (lo2, hi2) for (_, lo1, hi1), (_, lo2, hi2) in zip(x.limits, s2.limits))]
        s1 = next((x for x in ones if x.function.xreplace({v1: v2 for (v1, _, _), (v2, _, _) in zip(
            x.limits, s2.limits)}) in (sp.Abs(y), y)), None)
        if s1 is None or (s1.function == y.xreplace({v2: v1 for (v1, _, _), (v2, _, _) in zip(
                s1.limits, s2.limits)}) and self.range(y).lo < 0):
            return None  # no L1 sum of the same y (sum(j, y_j) of a signed y is no norm)
        if -den.exp == p:
            over = den.base - s1  # D = (S + c)^p: c >= 0
        elif den.exp == -1:
            over = sp.expand(den.base - s1 ** p)  # D >= S^p
        else:
            return None
        if over != 0 and self.range(over).lo < 0:
            return None
        rest = [f for f in e.args if f is not den and f is not s2]
        share = Interval(0.0, 1.0)
        self.reasons.append(f"{spec_str(s2 * den)} in {share} (an L{p} norm is at most the L1 norm)")
        return _mul(share, self.range(sp.Mul(*rest))) if rest else share

    def _mean(self, e) -> Interval | None:
        """``rest * sum(i: n, x_i) / n``: the sum over its count is a mean, inside the range of ``x``. Plain interval
        arithmetic bounds the sum by [0, inf) (its count n is a dim, unbounded), so a delta rule with keys scaled
        by 1 / K (``|k|^2 = sum(a, tanh(.)^2) / K`` in [0, 1)) was "unknown" instead of ``|lambda| <= 1``."""
        for s in (a for a in e.args if isinstance(a, sp.Sum)):
            count = sp.Mul(*(hi - lo + 1 for _, lo, hi in s.limits))
            num, den = sp.fraction(sp.Mul(*(a for a in e.args if a is not s)))
            quotient = sp.cancel(den / count)
            if sp.fraction(quotient)[1] != 1:
                continue
            return _mul(self.range(num / quotient), self.range(s.function))
        return None

    def _sum(self, e: sp.Sum) -> Interval:
        """A sum over full index ranges: the term-by-term bound, intersected with the range of its exact reading
        where it has one (``_picked_or_permuted``: a delta picks one term, a residue permutes the range)."""
        exact = _picked_or_permuted(e)
        iv = self._sum_term_by_term(e)
        if len(e.limits) == 1 and isinstance(e.function, sp.Indexed) and str(e.function.base.label) in self._lets \
                and self._normalised_axis(self._lets[str(e.function.base.label)]) is not None:
            # a partial sum of softmax-like weights, sum(l: layer, sm[l + 1]) (HGRN2's layer lower bound): in (0, 1]
            # as a convex combination with coefficients 0 and 1, where the term-by-term reading gave (0, inf)
            try:
                weights = self._weight_combination(e)
            except (TypeError, ValueError, NotImplementedError, sp.PolynomialError):
                weights = None
            iv = iv if weights is None else _intersect(iv, weights)
        return iv if exact is None else _intersect(iv, _hull([self.range(x) for x in exact]))

    def _sum_term_by_term(self, e: sp.Sum) -> Interval:
        """Positive terms give a positive sum (the count is a dim, unbounded). Two sharper readings are intersected
        with it when that is not finite:

        * a weighted mean: ``sum(j, c_j x_j)`` with ``x_j >= 0`` is ``t sum(j, x_j)`` for some t in the hull of the
          c_j (any t when the sum of x is 0), so it lies in ``range(c) * range(sum(j, x_j))`` (a per-key beta:
          ``sum(a, bk[a] k[a]^2)`` in ``(0, 1) * [0, 1)``);
        * the lets the terms read, inlined one level (any let chain, one level per nesting), with the sums
          canonicalised and simplified: ``|k|^2 = sum(a, k[a]^2)`` for ``k = x / sqrt(sum(j, x[j]^2) + eps)`` is
          ``S / (S + eps)`` with ``S = sum(j, x[j]^2)``, in [0, 1) by the share rule (exactly 1 for eps = 0); grouped
          reads ``k[h // R, a]`` inline the same way."""
        body = self.range(e.function)
        iv = POS if body.lo > 0 or (body.lo == 0 and body.lo_open) else NONNEG if body.lo >= 0 else ANY
        if body.lo == 0 and body.hi == 0 and not body.lo_open and not body.hi_open:
            return Interval(0.0, 0.0)
        if iv.hi < INF or body.lo < 0:
            # the sharper readings bound sums of terms >= 0 (|k|^2, a weighted mean); a signed body (RWKV-6's
            # low-rank decay projections) would only pay for them: inlining and simplifying its lets took minutes
            return iv if body.lo >= 0 else _intersect(iv, self._cauchy_schwarz(e))
        factors = sp.Mul.make_args(e.function)
        if len(factors) > 1:
            for f in factors:
                if f.free_symbols.isdisjoint(v for v, _, _ in e.limits) or self.range(f).lo < 0:
                    continue
                rest = sp.Mul(*[g for g in factors if g is not f])
                iv = _intersect(iv, _mul(self.range(rest), self.range(sp.Sum(f, *e.limits))))
        # one level of inlining per nesting, at most INLINE_MAX_DEPTH deep: each level's simplify is costly, and
        # unbounded, a chain of feature-map lets (Hedgehog: eta over qf over qp over q) took minutes per compile
        inlined = self._inlined(e) if self._depth < INLINE_MAX_DEPTH else None
        if inlined is not None:
            self._depth += 1
            try:
                inlined_iv = self.range(inlined)
            finally:
                self._depth -= 1
            better = _intersect(iv, inlined_iv)
            if better != iv:
                self.reasons.append(f"{spec_str(e)} = {spec_str(inlined)} in {better} (its lets inlined)")
            iv = better
        return iv

    def _cauchy_schwarz(self, e: sp.Sum) -> Interval:
        """A signed contraction ``sum(j, c f[j] g[j])`` of two lets f, g (c free of j): |sum| <= |c| |f| |g| by
        Cauchy-Schwarz, with |f|^2 = sum(j, f[j]^2) bounded as the prover bounds any sum of squares (a normalised
        key's is 1). Comba's ``sum(a, k[a] p[a])`` of two L2-normalised keys is in [-1, 1]; it was (-inf, inf). Only
        reads of lets (not params, whose sums of squares are unbounded) are tried: each costs an inlining."""
        over = [v for v, _, _ in e.limits]
        factors = sp.Mul.make_args(e.function)
        vecs = [f for f in factors if not f.free_symbols.isdisjoint(over)]
        coef = sp.Mul(*[f for f in factors if f.free_symbols.isdisjoint(over)])
        if len(vecs) != 2 or not all(isinstance(f, sp.Indexed) and str(f.base.label) in self._lets
                                     and not self._lets[str(f.base.label)].running for f in vecs):
            return ANY
        norms = [self.range(sp.Sum(f**2, *e.limits)) for f in vecs]
        if any(n.hi == INF for n in norms):
            return ANY
        c = _abs(self.range(coef))
        if c.hi == INF:
            return ANY
        bound = c.hi * math.sqrt(norms[0].hi * norms[1].hi)
        iv = Interval(-bound, bound)
        self.reasons.append(f"{spec_str(e)} in {iv} (Cauchy-Schwarz: |f . g| <= |f| |g|, |f|^2 in {norms[0]}, "
                            f"|g|^2 in {norms[1]})")
        return iv

    def _inlined(self, e, outside_sums: bool = False):
        """``e`` with the lets it reads (not running, not feature maps) replaced by their definitions, one level
        (``outside_sums``: only the reads outside any sum, through chains of such lets up to INLINE_CHAIN_DEPTH
        deep), float exponents that are multiples of 1/2 made exact (``^ (-0.5)``), sums canonicalised and the
        result simplified; None when nothing was inlined."""
        def let_of(x):
            read = self.sym.let_read(x)
            return read if read is not None and not read[0].running and read[0].feature is None else None

        def walk(x, depth: int):
            if let_of(x) is not None:
                value = let_of(x)[0].value_at(let_of(x)[1])
                # outside sums the chain is cheap to follow: ``let n2 = sum(i, sum(j, W[i, j]^2))`` read through
                # ``let nrm = sqrt(n2 + eps)`` was left as n2, and W / nrm's Frobenius norm went unproven
                return walk(value, depth + 1) if outside_sums and depth < INLINE_CHAIN_DEPTH else value
            if (outside_sums and isinstance(x, sp.Sum)) or not x.args or isinstance(x, sp.Indexed):
                return x
            return x.func(*[walk(a, depth) for a in x.args])

        out = walk(e, 1)
        if out == e or sp.count_ops(out) > self.inline_max_ops:
            return None
        try:
            out = simplify(_canonical_sums(_exact_exponents(out)))
        except Exception:  # noqa: BLE001 - SymPy's Sum simplification can fail inside (sum_add's StopIteration on
            return None  # 2*Elu(Sum(...))); this is an optional sharper reading, the plain range still holds
        return None if out == e or out.has(sp.zoo, sp.nan) else out

    def _exclusive_cases(self, e: sp.Add) -> Interval | None:
        """A sum whose terms select distinct values of one index, ``delta(h, 0) + delta(h, 2) g``: at any h at most
        one selected term is present, so the range is the hull over the cases h = 0, h = 2 (``e`` at that h) and h
        anything else (those deltas 0). Term by term, interval arithmetic read the example with g in [0, 1) as
        [0, 2) and could not bound a per-head decay of exactly 1 and a gate by 1. One selected value splits as well:
        a gamma memory's diagonal ``(mu - 1) delta(k, 0) + 1 - mu`` is 0 at k = 0 and 1 - mu elsewhere, [0, 1), not
        the [0, 1] of reading the delta as [0, 1]. Every delta of the index in ``e`` is collected, nested ones too,
        since the last case sets them all to 0 and must not skip a value that one of them selects. A selected value
        may be a formula of dims: the input tap of a gamma memory laid out oldest first is ``delta(k, Q)``."""
        # an index a nested sum binds is not one value per case (``sum(j, delta(j, 0) x[j])``): left alone
        bound = {v for s in e.atoms(sp.Sum) for v in s.variables}
        dims = set(self.sym.dims.values())

        def fixed(x) -> bool:  # one value for every index: a number or a formula of dims (the last tap, delta(k, Q))
            return x.is_Integer or bool(x.free_symbols) and x.free_symbols <= dims

        def selects(f) -> tuple | None:  # delta(index, value) as (index, value)
            for i, c in (f.args, f.args[::-1]):
                if isinstance(i, sp.Symbol) and i not in bound and i not in dims and fixed(c):
                    return i, c
            return None

        picks: dict[sp.Symbol, set] = {}
        for f in e.atoms(sp.KroneckerDelta):
            pick = selects(f)
            if pick is not None:
                picks.setdefault(pick[0], set()).add(pick[1])
        index = min(picks, key=lambda i: (-len(picks[i]), str(i)), default=None)
        if index is None:
            return None
        cases = [e.subs(index, c) for c in sorted(picks[index], key=str)]
        cases.append(e.replace(lambda n: isinstance(n, sp.KroneckerDelta) and (selects(n) or (None,))[0] == index,
                               lambda n: sp.Integer(0)))
        return _hull([self.range(c) for c in cases])

    def range_over(self, e, index, extents) -> Interval:
        """range(e) where the symbols ``index`` run over ``0 .. extent - 1``. Plain interval arithmetic reads an
        index as [0, inf) and a dim as [1, inf), so ``(a + 0.4 K) / (1.4 K)`` (a per-key decay, a < K) came out
        unbounded. When it does, each index is also written ``extent * t`` with t in [0, 1) (a superset of its
        values), common factors taken out (``factor_terms``: K cancels), and the two ranges intersected."""
        iv = self.range(e)
        present = [(i, ext) for i, ext in zip(index, extents) if i in e.free_symbols]
        if (iv.lo > -INF and iv.hi < INF) or not present:
            return iv
        subs = {}
        for i, ext in present:
            t = sp.Dummy(f"{i}_frac", nonnegative=True)
            self._unit.add(t)
            subs[i] = ext * t
        def frac_part(f):  # floor(x) = x - {x} with {x} in [0, 1): K cancels in (a // 2) * 2 / K once a = K t
            t = sp.Dummy("frac", nonnegative=True)
            self._unit.add(t)
            return f.args[0] - t

        try:
            scaled = sp.S(e).subs(subs, simultaneous=True)
            forms = [sp.factor_terms(scaled, radical=False)]
            # (N - (N t + 1) s) / N: expanded, N cancels from the t term (small forms only: expand is costly)
            if scaled.has(*self.sym.dims.values()) and sp.count_ops(scaled) <= NORM_INLINE_MAX_OPS:
                forms.append(sp.expand(scaled, deep=False))
            if scaled.has(sp.floor):  # (K t / 2 - {x}) * 2 / K: expanded, K cancels from the t term
                forms.append(sp.expand(scaled.replace(lambda x: isinstance(x, sp.floor), frac_part)))
        except (TypeError, ValueError, sp.PolynomialError):
            return iv
        for form in forms:
            iv = _intersect(iv, self.range(form))
        return iv

    def range(self, e) -> Interval:
        if e.is_Number:
            v = float(e)
            return Interval(v, v)
        if e.is_number and not e.has(sp.Sum):
            # a constant SymPy keeps exact (E / 2, sqrt(2)): its value, widened by a few ulps so that rounding
            # cannot move it across 1 (a 1 + 1e-20 read as exactly 1); it was (0, inf) from its sign alone
            try:
                v = complex(e)
            except (TypeError, ValueError):
                v = complex("nan")
            if v.imag == 0 and math.isfinite(v.real):
                pad = 4 * math.ulp(v.real)
                return Interval(v.real - pad, v.real + pad)
        if isinstance(e, sp.Indexed):
            return self.of_name(str(e.base.label), e.base)
        if isinstance(e, sp.Symbol):
            if e in self._unit:
                return Interval(0.0, 1.0, False, True)
            if e in self.sym.dims.values():
                return Interval(1.0, INF, False, True)
            return self.of_name(str(e), e)
        if isinstance(e, (sp.Add, sp.Mul)) and (complemented := _sigmoid_complements(e)) is not None:
            # both readings hold, so their intersection does; the rewritten form reads one gate where e read two
            return _intersect(self.range(complemented), self._range_plain(e))
        return self._range_plain(e)

    def _range_plain(self, e) -> Interval:
        if isinstance(e, (sp.Add, sp.Mul)):
            try:  # the sharper rules; any form they do not understand falls back to plain interval arithmetic
                special = self._exclusive_cases(e) if isinstance(e, sp.Add) else None
                special = special or (self._weight_combination(e) if isinstance(e, sp.Add) else None)
                special = special or self._multilinear(e)
                special = special or self._one_quantity(e)
                special = special or self._sign_cases(e)
                special = special or self._convex_combination(e)
                special = special or (self._share(e) if isinstance(e, sp.Mul) else None)
                special = special or (self._mean(e) if isinstance(e, sp.Mul) else None)
                special = special or (self._norm_ratio(e) if isinstance(e, sp.Mul) else None)
                special = special or (self._running_share(e) if isinstance(e, sp.Mul) else None)
                special = special or (self._partial_total(e) if isinstance(e, sp.Mul) else None)
                special = special or (self._divided_out(e) if isinstance(e, sp.Mul) else None)
                # a weighted mean's hull is intersected with whichever reading below holds: either can be sharper
                mean = self._weighted_mean(e) if isinstance(e, sp.Mul) else None
            except (TypeError, ValueError, NotImplementedError, sp.PolynomialError):
                special = mean = None
            if special is not None:
                return special if mean is None else _intersect(special, mean)
        if isinstance(e, sp.Add):
            out = self.range(e.args[0])
            for a in e.args[1:]:
                out = _add(out, self.range(a))
            return out
        if isinstance(e, sp.Mul):
            groups = self._independent_factors(e)
            out = self.range(groups[0])
            for a in groups[1:]:
                out = _mul(out, self.range(a))
            return out if mean is None else _intersect(out, mean)
        if isinstance(e, sp.exp):
            return _mono(self.range(e.args[0]), _exp)
        if isinstance(e, Softplus):
            return _mono(self.range(e.args[0]), _softplus)
        if isinstance(e, Sigmoid):
            return _mono(self.range(e.args[0]), _sigmoid)
        if isinstance(e, LogSigmoid):
            return _mono(self.range(e.args[0]), _logsigmoid)
        if isinstance(e, Relu):
            iv = self.range(e.args[0])
            return Interval(max(iv.lo, 0.0), max(iv.hi, 0.0), iv.lo_open and iv.lo > 0, iv.hi_open and iv.hi > 0)
        if isinstance(e, sp.tanh):
            return _mono(self.range(e.args[0]), _tanh)
        if isinstance(e, (sp.sin, sp.cos)):  # a rotation's entries: cos(theta)^2 is a decay in [0, 1]
            return Interval(-1.0, 1.0)
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
                def f(x, p=p):  # x**p at the ends: 0**-1 and inf**1 are inf, inf**-1 and 0**1 are 0
                    if (x == INF and p > 0) or (x == 0 and p < 0):
                        return INF
                    return 0.0 if x == INF or x == 0 else x**p
                if p > 0:
                    return _mono(biv, f)
                return Interval(f(biv.hi), f(biv.lo), biv.hi_open, biv.lo_open)
            if biv.lo >= 0 and (biv.lo > 0 or biv.lo_open):
                return self.range(sp.exp(ex * sp.log(base)))
            if ex.is_Integer and ex > 0:  # a base of either sign: x^2 = |x|^2 >= 0, x^3 increasing
                p = int(ex)
                return _mono(_abs(biv) if p % 2 == 0 else biv, lambda x: _int_pow(x, p))
            mag = _abs(biv)
            if ex.is_integer and ex.is_nonnegative and mag.hi <= 1:
                # x^n for an integer n >= 0 of no fixed value (an index expression: g_c^(c + 1) with g a tanh):
                # |x^n| <= |x| <= 1 for n >= 1, and n = 0 adds the value 1
                out = Interval(-mag.hi, mag.hi, mag.hi_open, mag.hi_open)
                return out if ex.is_positive else _hull([out, Interval(1.0, 1.0)])
            return ANY
        if isinstance(e, sp.Abs):
            return _abs(self.range(e.args[0]))
        if isinstance(e, sp.floor):  # h // R: a group index, as in a decay 1 - 2^(-5 - h // R) shared by R heads
            iv = self.range(e.args[0])  # nondecreasing; the closed hull of the floors of the ends holds every value
            lo, hi = (x if abs(x) == INF else float(math.floor(x)) for x in (iv.lo, iv.hi))
            return Interval(lo, hi, abs(lo) == INF, abs(hi) == INF)  # an infinite end is never reached
        if isinstance(e, sp.Mod):
            # h % 2: a head's role (even heads one rule, odd ones another). SymPy's Mod, like Python's % and the
            # generated code's, takes the divisor's sign: in [0, m) for m > 0, [0, m - 1] for integers
            miv = self.range(e.args[1])
            if miv.lo > 0:
                if e.args[0].is_integer and e.args[1].is_integer and miv.hi < INF:
                    return Interval(0.0, miv.hi - 1)
                return Interval(0.0, miv.hi, False, True)
            return ANY
        if isinstance(e, (sp.Min, sp.Max)):
            ivs = [self.range(a) for a in e.args]
            if isinstance(e, sp.Max):  # max(x, y) = -min(-x, -y)
                ivs = [_neg(iv) for iv in ivs]
            out = ivs[0]
            for iv in ivs[1:]:
                out = _min(out, iv)
            return out if isinstance(e, sp.Min) else _neg(out)
        if isinstance(e, sp.Sum):
            if e not in self._sums:
                self._sums[e] = ANY  # guards recursion
                self._sums[e] = self._sum(e)
            return self._sums[e]
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


CURVED_CALLS = (sp.exp, sp.Abs, sp.Min, sp.Max)  # d^2/dw^2 of f(.. w ..) is not 0 for these (see _curved_in)


def _open_end(ends: list[Interval], reach: list[bool], x: float, end) -> bool:
    """Whether a convex-combination hull's end ``x`` is open: closed only where the range of e at w = 0 (or 1)
    reaches x closed and w reaches 0 (or 1), or where both ends' ranges reach x closed (a mix of the two)."""
    closed = [end(iv) == (x, False) for iv in ends]
    return not (all(closed) or any(c and r for c, r in zip(closed, reach)))


def _curved_in(e, w) -> bool:
    """Whether ``e`` reads ``w`` inside an exp, abs, min or max, a power with a non-integer or negative exponent, or
    an exponent: not affine in w, decided without SymPy's second derivative. ``_convex_combination`` asked
    ``diff(e, w, 2)`` of every atom read twice, and on a block's norm readings (sums of ``|exp(-dt (i + 1)) ...|``)
    that cost ~0.5 s a call, 26 s of a HiPPO-LegS compile; the derivative there is never 0 (a DiracDelta, a
    Heaviside, an exp's own factor), so the answer is the same. A function atom (``sigmoid(x)``) is asked about as
    the Dummy the rule differentiates by in its place."""
    for x in sp.preorder_traversal(e):
        if isinstance(x, CURVED_CALLS) and any(a.has(w) for a in x.args):
            return True
        if isinstance(x, sp.Pow) and (x.exp.has(w) or (x.base.has(w) and not (x.exp.is_Integer and x.exp >= 0))):
            return True
    return False


def _verdict(ivs: list[Interval]) -> Bound:
    """|lambda| bound from intervals of the (real) eigenvalues or of their magnitudes."""
    lo = min(iv.lo for iv in ivs)
    hi = max(iv.hi for iv in ivs)
    below_one = all(iv.hi < 1 or (iv.hi == 1 and iv.hi_open) for iv in ivs)
    above_m1 = all(iv.lo > -1 or (iv.lo == -1 and iv.lo_open) for iv in ivs)
    if below_one and above_m1:
        return Bound.STABLE
    if all(iv.lo > 1 or (iv.lo == 1 and iv.lo_open) or iv.hi < -1 or (iv.hi == -1 and iv.hi_open) for iv in ivs):
        return Bound.EXCEEDS
    if hi <= 1 and lo >= -1:
        return Bound.MARGINAL
    if lo >= 0 and hi > 1:
        return Bound.UNBOUNDED
    return Bound.UNKNOWN


def _rational_range(f, X: sp.Dummy, xiv: Interval) -> Interval | None:
    """Exact range of f(X), a rational function of X with number coefficients and degree <= 4, over X in ``xiv``:
    the extremes lie at its ends (limits at open or infinite ones) or where f' = 0; None for a pole in the range
    (or at an end), a higher degree, other coefficients, or a single point."""
    f = sp.cancel(sp.together(f))
    num, den = (sp.Poly(_exact_decimals(x), X) for x in sp.fraction(f))
    if max(num.degree(), den.degree()) > 4 or not all(c.is_Rational for c in num.coeffs() + den.coeffs()):
        return None
    if xiv.lo == xiv.hi:
        return None
    if den.degree() > 0 and any(xiv.lo <= float(r) <= xiv.hi for r in sp.real_roots(den)):
        return None  # a pole in (or at an end of) X's range
    fx = num.as_expr() / den.as_expr()

    def at(x):  # f at x, its limit at an infinite end
        if abs(x) == INF:
            v = sp.limit(fx, X, sp.oo if x > 0 else -sp.oo)
            return INF if v == sp.oo else -INF if v == -sp.oo else float(v)
        return float(fx.subs(X, sp.Rational(x)))

    points = [(at(xiv.lo), xiv.lo_open or xiv.lo == -INF), (at(xiv.hi), xiv.hi_open or xiv.hi == INF)]
    slope = sp.Poly(num.diff(X) * den - num * den.diff(X), X)
    if not slope.is_zero:
        for r in sp.real_roots(slope):
            if xiv.lo < float(r) < xiv.hi:
                points.append((float(fx.subs(X, r).evalf(30)), False))
    lo = min(v for v, _ in points)
    hi = max(v for v, _ in points)
    return Interval(lo, hi, all(o for v, o in points if v == lo), all(o for v, o in points if v == hi))


def _hull(ivs: list[Interval]) -> Interval:
    lo = min(ivs, key=lambda iv: (iv.lo, iv.lo_open))  # a closed end wins a tie
    hi = max(ivs, key=lambda iv: (iv.hi, not iv.hi_open))
    return Interval(lo.lo, hi.hi, lo.lo_open, hi.hi_open)


def _picked_or_permuted(e: sp.Sum) -> list | None:
    """Exact readings of a sum over one index j, as expressions whose hull holds its value, or None:

    * a delta of j picks one term: ``sum(j, f(j) delta(j, x))`` (x free of j) is f(x) where x lies in j's range
      and 0 elsewhere, so [f(x), 0];
    * j read only through one residue ``(c +- j) % n`` with n the length of j's range 0 .. n - 1 runs over a
      permutation of that range: ``sum(j, f((c - j) % n)) = sum(j, f(j))`` (c an integer free of j).

    A decayed cyclic shift ``g delta(j, (i - 1) % n)`` and a circulant ``w[(i - j) % n]`` (a circular convolution)
    were "unknown": bounding the sum term by term gives n times the largest term, and n is a dim, unbounded."""
    if len(e.limits) != 1:
        return None
    j, lo, hi = e.limits[0]
    body = e.function
    if any(j in s.variables for s in body.atoms(sp.Sum)):  # j bound again inside: substituting it would be wrong
        return None
    for f in sp.Mul.make_args(body):
        if isinstance(f, sp.KroneckerDelta) and j in f.args:
            x = f.args[1] if f.args[0] == j else f.args[0]
            if j not in x.free_symbols:
                rest = sp.Mul(*[g for g in sp.Mul.make_args(body) if g is not f])
                return [rest.xreplace({j: x}), sp.Integer(0)]
    residues = {m for m in body.atoms(sp.Mod) if j in m.free_symbols}
    if len(residues) != 1 or lo != 0:
        return None
    (m,) = residues
    p, n = m.args
    s = sp.diff(p, j)
    c = sp.expand(p - s * j)
    if s not in (1, -1) or j in c.free_symbols or not c.is_integer or sp.simplify(n - hi - 1) != 0:
        return None
    if j in body.xreplace({m: sp.Dummy()}).free_symbols:  # j also read outside the residue
        return None
    return [sp.Sum(body.xreplace({m: j}), (j, lo, hi))]


def _canonical_sums(expr):
    """Alpha-equivalent sums written alike, so that sum(a, k[a]^2) and sum(a2, k[a2]^2) compare equal (|k|^2 = 1 for
    an L2-normalised k) and so do ``sum(i, sum(j, W[i, j]^2))`` and ``sum(j, sum(i, W[i, j]^2))`` (a Frobenius norm
    and its square written out). Three steps:

    1. each Sum over nested ranges that do not depend on each other has its indices ordered by how its body reads
       them (not by their names), and factors that do not depend on an index are pulled out of its Sum;
    2. every summation index is renamed after its nesting depth, so the names inside a sum no longer depend on the
       names the spec chose;
    3. each index is renamed after its whole Sum in that form, so alpha-equivalent sums at the same depth get the
       same index and different sums different ones."""
    import hashlib

    def digest(x) -> str:
        # a Dummy's dummy_index is drawn at random per process (the prover's i_frac placeholders): hashed into the
        # names and the index order it made them differ from run to run, and with them which bounds were proven
        text = re.sub(r", dummy_index=\d+", "", sp.srepr(x))
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def index(name: str):
        return sp.Symbol(name, integer=True, nonnegative=True)

    here, other = index("_here"), index("_other")

    def tidy(e):
        if not isinstance(e, sp.Sum):
            return e.func(*[tidy(x) for x in e.args]) if e.args else e
        body, limits = e.function, list(e.limits)  # innermost first
        while isinstance(body, sp.Sum):
            body, limits = body.function, list(body.limits) + limits
        body = tidy(body)
        names = {v for v, _, _ in limits}
        if not any((lo.free_symbols | hi.free_symbols) & names for _, lo, hi in limits):
            def read_as(limit):  # how the body reads this index, the chain's other indices all alike
                v = limit[0]
                return digest((body.xreplace({w: (here if w == v else other) for w in names}), limit[1], limit[2]))
            limits.sort(key=read_as)
        out = body
        for v, lo, hi in limits:
            factors = sp.Mul.make_args(out)
            inside = sp.Mul(*[f for f in factors if v in f.free_symbols])
            outside = sp.Mul(*[f for f in factors if v not in f.free_symbols])
            out = outside * sp.Sum(inside, (v, lo, hi))
        return out

    # SymPy merges a Sum whose body is a Sum into one Sum of several limits (innermost first): each limit counts
    def by_depth(e, depth=0):
        if isinstance(e, sp.Sum):
            outermost_first = list(reversed(e.limits))
            names = {v: index(f"_depth{depth + k}") for k, (v, _, _) in enumerate(outermost_first)}
            limits = [(names[v], lo.xreplace(names), hi.xreplace(names)) for v, lo, hi in e.limits]
            return sp.Sum(by_depth(e.function.xreplace(names), depth + len(limits)), *limits)
        return e.func(*[by_depth(x, depth) for x in e.args]) if e.args else e

    def by_body(e, names):
        if isinstance(e, sp.Sum):
            key = digest(e)
            inner = {**names, **{v: index(f"_s{key}_{k}") for k, (v, _, _) in enumerate(e.limits)}}
            limits = [(inner[v], lo.xreplace(inner), hi.xreplace(inner)) for v, lo, hi in e.limits]
            return sp.Sum(by_body(e.function, inner), *limits)
        if isinstance(e, sp.Symbol):
            return names.get(e, e)
        return e.func(*[by_body(x, names) for x in e.args]) if e.args else e

    return by_body(by_depth(tidy(expr)), {})


def _exact_exponents(expr):
    """Float exponents that are multiples of 1/2 as Rationals: ``(S + 1e-6) ^ (-0.5)`` squared is ``1 / (S + 1e-6)``,
    which the share rule reads; with ``-1.0`` SymPy keeps ``Pow(.., -1.0)`` apart from its numerator."""
    def exact(e):
        return isinstance(e, sp.Pow) and isinstance(e.exp, sp.Float) and float(e.exp * 2).is_integer()

    return expr.replace(exact, lambda e: sp.Pow(e.base, sp.Rational(int(e.exp * 2), 2)))


def _sigmoid_complements(e):
    """``e`` with each ``sigmoid(-x)`` written ``1 - sigmoid(x)`` where e also reads ``sigmoid(x)``, else None. Read
    apart, the two are two gates: HGRN's forget gate written as a mixture, ``gam sigmoid(-x) + sigmoid(x)`` with gam
    in [0, 1], was (0, 2) term by term; it is ``gam (1 - s) + s`` in one gate s, whose corners give [0, 1]."""
    gates = {g for g in e.atoms(Sigmoid)}
    args = {g.args[0] for g in gates}
    flipped = {g: 1 - Sigmoid(-g.args[0]) for g in gates
               if g.args[0].could_extract_minus_sign() and sp.expand(-g.args[0]) in {sp.expand(a) for a in args}}
    return e.xreplace(flipped) if flipped else None


def _inline_lets(sym: SymSpec, expr, depth: int = 1):
    """Replace (non-running) let entries by their definitions, ``depth`` levels deep."""
    lets = {let.tensor.name: let for let in sym.lets if not let.running}
    for _ in range(depth):
        def repl(e):
            if isinstance(e, sp.Indexed) and str(e.base.label) in lets:
                let = lets[str(e.base.label)]
                return let.value_at(e.indices)
            return None
        expr = expr.replace(lambda e: repl(e) is not None, repl)
    return expr


def _two_by_two(sym: SymSpec, a) -> EigenBound | None:
    """Rotation-scaling 2x2 blocks [[x, -y], [y, x]] (a complex diagonal): |lambda|^2 = det = x^2 + y^2."""
    dims = {sym.dims[k]: v for k, v in sym.dim_values().items()}
    sizes = [int(sp.S(sym.state.axes[k].extent).subs(dims)) for k in a.mixed_axes]
    m = pair_blocks(a)
    if len(sizes) != 1 or sizes[0] != 2 or m is None:
        return None
    if rotation_parts(m) is None:
        return _jury(sym, m)
    det = simplify(sp.expand_trig(m[0][0] ** 2 + m[1][0] ** 2))
    prover = IntervalProver(sym)
    iv = prover.range(det)
    why = ""
    if iv.hi > 1 or (iv.hi == 1 and not iv.hi_open):
        # entries that are lets, ar = r cos(th) and ai = r sin(th) (a selective S5's exp(dt lam) in real form): each
        # let's own range gives ar^2 + ai^2 in [0, 2); inlined, the sum simplifies to r^2
        inlined = sum(_exact_decimals(_inline_lets(sym, m[i][0], depth=3)) ** 2 for i in range(2))
        inlined = simplify(sp.expand_trig(inlined)) if sp.count_ops(inlined) <= INLINE_MAX_OPS else det
        if inlined != det and (better := _intersect(iv, prover.range(inlined))) != iv:
            iv, why = better, f"(= {spec_str(inlined)}, its lets inlined) "
    if iv.hi > 1 or (iv.hi == 1 and not iv.hi_open):
        below = _ratio_below_one(sym, prover, sp.expand_trig(m[0][0] ** 2 + m[1][0] ** 2))
        if below is not None:
            iv, why = _intersect(iv, below[0]), below[1]
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    verdict = _verdict([iv])
    mag = Interval(math.sqrt(max(iv.lo, 0)), math.sqrt(iv.hi) if iv.hi != INF else INF, iv.lo_open, iv.hi_open)
    return EigenBound(verdict, str(mag),
                      f"2x2 rotation-scaling blocks (a complex diagonal): |lambda|^2 = det = {spec_str(det)} in {iv} "
                      f"{why}({facts})")


def _rational_lets_inlined(sym: SymSpec, expr, rounds: int = 4):
    """``expr`` with the lets whose definitions are rational in other reads (no function call, no sum: S4D-Inv's
    bilinear ``ar = (1 - p^2 - q^2) / den``, ``den = (1 - p)^2 + q^2``) replaced by them, ``rounds`` levels deep.
    Lets with an exp, a sigmoid, ... stay names, each with the range its definition gives."""
    lets = {let.tensor.name: let for let in sym.lets if not let.running and let.feature is None}

    def rational(x):
        if not (isinstance(x, sp.Indexed) and str(x.base.label) in lets):
            return None
        value = lets[str(x.base.label)].value_at(x.indices)
        return value if not value.atoms(sp.Function) and not value.has(sp.Sum) else None

    for _ in range(rounds):
        new = expr.replace(lambda x: rational(x) is not None, rational)
        if new == expr:
            break
        expr = new
    return expr


def _ratio_below_one(sym: SymSpec, prover: IntervalProver, expr) -> tuple[Interval, str] | None:
    """An upper bound 1 on ``expr`` from its form as one fraction N / D: with D > 0 and D - N >= 0 (> 0), expr <= 1
    (< 1). The bilinear transform's |(1 + z) / (1 - z)|^2 = ((1 + p)^2 + q^2) / ((1 - p)^2 + q^2) with p < 0 is this
    (D - N = -4 p): interval arithmetic reads N and D apart ([0, inf) / (1, inf)) and could not bound it by 1."""
    inlined = _rational_lets_inlined(sym, expr)
    if sp.count_ops(inlined) > INLINE_MAX_OPS:
        return None
    try:
        num, den = sp.fraction(sp.cancel(sp.together(inlined)))
        gap = den - num
        d_iv = _intersect(prover.range(sp.factor(den)), prover.range(sp.expand(den)))
        g_iv = _intersect(prover.range(sp.factor(gap)), prover.range(sp.expand(gap)))
    except (TypeError, ValueError, sp.PolynomialError):
        return None
    if not (d_iv.lo > 0 or (d_iv.lo == 0 and d_iv.lo_open)) or g_iv.lo < 0:
        return None
    strict = g_iv.lo > 0 or g_iv.lo_open
    return (Interval(-INF, 1.0, True, strict),
            f"({'<' if strict else '<='} 1: det = N / D = ({spec_str(num)}) / ({spec_str(den)}), D in {d_iv}, "
            f"D - N = {spec_str(sp.factor(gap))} in {g_iv}) ")


def _exact_decimals(expr):
    """Float constants as the Rationals of their decimals (0.9 -> 9/10). SymPy distributes a Float factor over a sum
    in one place and not in another (exp(-0.9 dt (s + 0.5)) against exp(-dt (1.8 s + 0.9))), and Float exponents
    never cancel, so an exactly discretised oscillator with decimal constants kept e^(a) e^(-a) apart: its
    tr^2 - 4 det did not simplify to -4 e^(-2 ze w dt) sin^2(wd dt) and the pair was "unknown"."""
    return expr.xreplace({f: sp.Rational(str(f)) for f in expr.atoms(sp.Float)})


def _jury(sym: SymSpec, m, known: dict[str, Interval] | None = None) -> EigenBound | None:
    """Any real 2x2 block (LinOSS's oscillator [[S, -dt a S], [dt S, S]]), by the Schur-Cohn / Jury conditions:
    both eigenvalues lie in the closed unit disk iff |det| <= 1 and |tr| <= 1 + det, in the open one iff both hold
    strictly. The entries' lets are inlined so that det and tr simplify (S (1 + dt^2 a) S = S); only det and tr are
    simplified, not each entry first (three times the cost on an oscillator's trigonometric block, same result).
    ``known``: ranges of plain symbols in ``m`` (stand-ins for quantities bounded by the caller)."""
    m = [[_exact_decimals(_inline_lets(sym, x, depth=3)) for x in row] for row in m]
    det = simplify(m[0][0] * m[1][1] - m[0][1] * m[1][0])
    tr = simplify(m[0][0] + m[1][1])
    prover = IntervalProver(sym)
    prover._cache.update(known or {})
    d_iv, lo_iv, hi_iv = (prover.range(x) for x in (det, simplify(1 + det - tr), simplify(1 + det + tr)))
    if not (d_iv.lo >= -1 and d_iv.hi <= 1 and lo_iv.lo >= 0 and hi_iv.lo >= 0):
        d_iv, lo_iv, hi_iv = (_collected_range(prover, x, iv) for x, iv in
                              ((det, d_iv), (simplify(1 + det - tr), lo_iv), (simplify(1 + det + tr), hi_iv)))
    if not (d_iv.lo >= -1 and d_iv.hi <= 1 and lo_iv.lo >= 0 and hi_iv.lo >= 0):
        return _complex_pair(prover, det, tr, d_iv)
    strict = ((d_iv.lo > -1 or d_iv.lo_open) and (d_iv.hi < 1 or d_iv.hi_open)
              and (lo_iv.lo > 0 or lo_iv.lo_open) and (hi_iv.lo > 0 or hi_iv.lo_open))
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    return EigenBound(Bound.STABLE if strict else Bound.MARGINAL, "[0, 1)" if strict else "[0, 1]",
                      f"2x2 blocks: det = {spec_str(det)} in {d_iv}, 1 - tr + det in {lo_iv} and 1 + tr + det in "
                      f"{hi_iv}, so both eigenvalues lie in the {'open' if strict else 'closed'} unit disk "
                      f"(Jury's conditions; {facts})")


def _collected_range(prover: IntervalProver, expr, iv: Interval, most: int = 6) -> Interval:
    """``iv`` (a range of ``expr``) intersected with the ranges of ``expr`` collected in each of its calls and
    symbols in turn: interval arithmetic reads each occurrence of a gate apart, so Jury's 1 + tr + det of a
    memory with momentum, 2 + 2 eta - al - al eta + ..., was (-0.5, 4) and is eta (2 - al) + 2 - al + ... in
    (0.5, 4) collected in eta. Each collected form equals ``expr``, so every range holds and so does their
    intersection. At most ``most`` atoms are tried (cost)."""
    expanded = sp.expand(expr, deep=False)
    atoms = sorted(expr.atoms(sp.Function, sp.Symbol, sp.Indexed), key=sp.default_sort_key)
    atoms = [x for x in atoms if not (isinstance(x, sp.Symbol) and any(x in y.free_symbols for y in atoms
                                                                       if y is not x and not y.is_Symbol))]
    for x in atoms[:most]:
        try:
            iv = _intersect(iv, prover.range(sp.collect(expanded, x)))
        except (TypeError, ValueError):
            continue
    return iv


def _complex_pair(prover: IntervalProver, det, tr, d_iv: Interval) -> EigenBound | None:
    """A real 2x2 block whose discriminant tr^2 - 4 det is provably <= 0 has a complex-conjugate (or double real)
    pair of eigenvalues with |lambda|^2 = det. Jury's |tr| <= 1 + det is out of reach of interval arithmetic when tr
    and det share a factor: an exactly discretised damped oscillator, det = e^(-2 ze om dt) and tr = 2 e^(-ze om dt)
    cos(wd dt), needs 2 r |cos| <= 1 + r^2; its discriminant -4 r^2 sin^2 is plainly <= 0."""
    disc = simplify(tr ** 2 - 4 * det)
    disc_iv = prover.range(disc)
    if disc_iv.hi > 0 or d_iv.lo < 0:
        return None
    mag = Interval(math.sqrt(d_iv.lo), math.sqrt(d_iv.hi) if d_iv.hi != INF else INF, d_iv.lo_open, d_iv.hi_open)
    verdict = _verdict([mag])
    if verdict == Bound.UNKNOWN:
        return None
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    return EigenBound(verdict, str(mag),
                      f"2x2 blocks with tr^2 - 4 det = {spec_str(disc)} in {disc_iv}: a complex-conjugate pair, "
                      f"|lambda|^2 = det = {spec_str(det)} in {d_iv} ({facts})")


def _identity_minus_rank1(sym: SymSpec, a, hull_out: list | None = None) -> EigenBound | None:
    """block = s I - f g^T on the mixed axes: eigenvalues s (multiplicity M-1) and s - g^T f. ``hull_out``: gets
    the hull of the eigenvalues' ranges appended (an Interval; the bound's text rounds it)."""
    from .structure import split_rank_one

    parts = split_rank_one(a)
    if parts is None:
        return None
    rows, cols, mixed = a.rows, a.cols, a.mixed_axes
    s_coef, f = parts.scale, parts.row_vec
    g = parts.col_vec.subs({cols[k]: rows[k] for k in mixed}, simultaneous=True)
    trace = f * g
    for k in mixed:
        ext = sym.state.axes[k].extent
        trace = sp.Sum(trace, (rows[k], 0, ext - 1))
    # the same eigenvalue s - g^T f in three written forms; each range holds, so their intersection does:
    # 1. lets kept by name, factors such as beta pulled out of the contraction: s - beta sum(a, k[a]^2), whose sum
    #    the prover bounds itself (a normalised key's |k|^2 in [0, 1], a per-key beta as a weighted mean)
    trace = _canonical_sums(sym.inline_product_lets(trace))  # let bk = beta * k: read as beta * k, as if written inline
    named = simplify(s_coef + trace)
    # 2. the lets inside the contraction inlined (the rank-1 vectors), so scalars such as beta keep their names
    inside = trace.replace(lambda e: isinstance(e, sp.Sum), lambda e: _inline_lets(sym, e))
    other = simplify(s_coef + simplify(_canonical_sums(inside)))  # rest carries its own sign: s + (-f g^T)
    prover = IntervalProver(sym)
    # 3. form 1 with the lets read outside the contraction inlined too (beta = 1 / (1 + k.k): 1 - beta |k|^2 is
    #    1 / (1 + |k|^2) only when beta's own sum is seen)
    forms = [named, other, prover._inlined(named, outside_sums=True)]
    forms = list(dict.fromkeys(f for f in forms if f is not None))
    ranges = [prover.range(f) for f in forms]
    final = ranges[0]
    for iv in ranges[1:]:
        final = _intersect(final, iv)
    # the reason shows the shortest form that alone gives the final range (DeltaNet: 1 - beta[h])
    best = min((k for k, iv in enumerate(ranges) if iv == final), key=lambda k: len(spec_str(forms[k])), default=0)
    ivs = [prover.range(s_coef), final]
    if hull_out is not None:
        hull_out.append(_hull(ivs))
    verdict = _verdict(ivs)
    why = _rank1_unknown_note(sym, prover, forms, ivs[0]) if verdict == Bound.UNKNOWN else ""
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    return EigenBound(verdict, str(_hull(ivs)),
                      f"A = s I - f g^T per block: eigenvalues s = {spec_str(s_coef)} in {ivs[0]} and "
                      f"s - g^T f = {spec_str(forms[best])} in {ivs[1]}{why} ({facts})")


def _rank1_unknown_note(sym: SymSpec, prover: IntervalProver, forms, s_iv: Interval) -> str:
    """Why s - g^T f was not bounded. When the contraction runs over a dim and the eigenvalue is bounded at the
    default dims: its sum of K terms is bounded for every K only when its terms shrink with K (a normalised key), so
    tanh keys give [0, K) and the delta rule at K = 1 was a bare "unknown"; the range at the defaults (each sum over
    the defaults' entries) is added, with the spelling proven at every dims. The verdict stays unknown (a dim can be
    set at construction). Otherwise the parameters that reach the eigenvalue, if any (``_parameter_note``)."""
    dims = {sym.dims[k]: v for k, v in sym.dim_values().items()}
    over = sorted({str(hi + 1) for x in sp.S(forms[0]).atoms(sp.Sum) for _, _, hi in x.limits
                   if (hi + 1).free_symbols & set(dims)})
    at = []
    for f in forms if over else []:
        concrete = sp.S(f).subs(dims)
        if all(int(hi - lo) < 64 for x in concrete.atoms(sp.Sum) for _, lo, hi in x.limits):
            try:
                at.append(prover.range(concrete.doit()))
            except (TypeError, ValueError):
                continue
    iv = at[0] if at else None
    for x in at[1:]:
        iv = _intersect(iv, x)
    if iv is not None and _verdict([s_iv, iv]) in (Bound.STABLE, Bound.MARGINAL):
        shown = ", ".join(f"{k} = {v}" for k, v in sym.dim_values().items() if k in over)
        return (f": not proven for every {', '.join(over)} (a sum over a dim's entries grows with the dim, which "
                f"can be set at construction); at the default dims ({shown}) it lies in {iv}, "
                f"{_verdict([s_iv, iv]).value} there; keys normalised as k / sqrt(sum(a, k[a]^2) + eps) are bounded "
                "at every dims")
    return _parameter_note(sym, forms[0], RANK1_SPELLINGS)


def _scaled_symmetric_rank1(sym: SymSpec, a) -> EigenBound | None:
    """A block diag(d) M or M diag(d) with M = I + f f^T c symmetric on the mixed axes (a scalar c): Kimi's per-key
    gated delta rule, alpha[a] (delta(a, a2) - beta k[a] k[a2]). Its eigenvalues have no closed form, but the spectral
    radius is at most ||diag(d)||_2 ||M||_2 = max |d| * max(1, |1 + c f^T f|) (M symmetric: its norm is its
    spectral radius, bounded by the delta rule's reading, ``_identity_minus_rank1``). It was "unknown": neither s I
    - f g^T with one scale s, nor bounded by a row or column sum (1 + |beta| |k_a| sum |k|)."""
    from dataclasses import replace

    from .structure import _diagonal_plus_rank_one

    parts = _diagonal_plus_rank_one(a)
    if parts is None or a.low_rank:
        return None
    rows, cols, mixed = a.rows, a.cols, a.mixed_axes
    row_m, col_m = {rows[k] for k in mixed}, {cols[k] for k in mixed}
    to_rows = {cols[k]: rows[k] for k in mixed}
    d = parts.scale.xreplace(to_rows)  # the identity's coefficient, on the diagonal (col = row)
    for side, f, g in (("row", parts.row_vec / d, parts.col_vec),
                       ("column", parts.row_vec, parts.col_vec / d.xreplace({v: k for k, v in to_rows.items()}))):
        f, g = simplify(f), simplify(g)
        if f.free_symbols & col_m or g.free_symbols & row_m:
            continue
        den = sp.fraction(sp.together(f * g))[1]
        if den.atoms(sp.Indexed, sp.Function) & d.atoms(sp.Indexed, sp.Function):
            continue  # the rank-1 term does not carry d as a factor: A = diag(d) M fails where d = 0
        ratio = simplify(f / g.xreplace(to_rows))
        if ratio.free_symbols & row_m or ratio.has(sp.zoo, sp.nan):
            continue  # not symmetric: a norm of M is not its spectral radius
        eye = sp.Mul(*[sp.KroneckerDelta(rows[k], cols[k]) for k in mixed])
        hull: list[Interval] = []
        inner = _identity_minus_rank1(sym, replace(a, block=eye + f * g, low_rank=True), hull)
        if inner is None or not hull or inner.bound not in (Bound.STABLE, Bound.MARGINAL):
            return None
        prover = IntervalProver(sym)
        d_iv = _abs(prover.range_over(d, rows, [ax.extent for ax in sym.state.axes]))
        m_iv = _abs(hull[0])
        if d_iv.hi == INF:
            return None
        hi = d_iv.hi * m_iv.hi
        mag = Interval(0.0, hi, False, hi > 0 and (d_iv.hi_open or m_iv.hi_open))
        facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
        where = "diag(d) M" if side == "row" else "M diag(d)"
        d_range = prover.range_over(d, rows, [ax.extent for ax in sym.state.axes])
        return EigenBound(_verdict([mag]), str(mag),
                          f"A = {where} with d = {spec_str(d)} in {d_range} and M = I - c f f^T symmetric: "
                          f"|lambda| <= max |d| * ||M||_2 {'<' if mag.hi_open else '<='} {mag.hi:.6g} "
                          f"(||M||_2 = its largest |eigenvalue|: {inner.reason}; {facts})")
    return None


def _similar_symmetric_rank1(sym: SymSpec, a) -> EigenBound | None:
    """A block diag(d) + x y^T on the mixed axes whose rank-1 vectors are proportional entry by entry with a ratio
    of one sign, x = r * y with r >= 0 (or r <= 0) per key: RWKV-7's diag(w) - (kk * a) kk^T (fla's
    generalized_delta_rule with alpha = -kk, beta = kk * a). With S = diag(sqrt(|r|)), S^-1 A S = diag(d) +- (S y)
    (S y)^T is symmetric, so the eigenvalues are real and (Weyl) lie in [min d + min(0, y^T x), max d + max(0, y^T
    x)] (y^T x = sum r y^2 has r's sign; an r that vanishes somewhere is the limit of positive ones, and the
    eigenvalues are continuous). It was "unknown": not a multiple of I minus rank 1, and diag(d) (I - c f f^T) only
    when a = w."""
    from .structure import _diagonal_plus_rank_one

    parts = _diagonal_plus_rank_one(a)
    if parts is None or a.low_rank:
        return None
    rows, cols, mixed = a.rows, a.cols, a.mixed_axes
    col_m = {cols[k] for k in mixed}
    to_rows = {cols[k]: rows[k] for k in mixed}
    d, x, y = parts.scale.xreplace(to_rows), simplify(parts.row_vec), simplify(parts.col_vec.xreplace(to_rows))
    if x.free_symbols & col_m or y.free_symbols & col_m:
        return None
    prover = IntervalProver(sym)
    extents = [ax.extent for ax in sym.state.axes]
    # the vectors as written, then with product lets inlined: fla's and RWKV-LM's names for RWKV-7's vectors,
    # a = -kk and b = kk * a as lets, have a ratio b / a of no sign of its own, while -(kk a) / kk = -a is <= 0
    for x, y in ((x, y), (sym.inline_product_lets(x), sym.inline_product_lets(y))):
        ratio = simplify(x / y)
        if ratio.free_symbols & col_m or ratio.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            continue
        r_iv = prover.range_over(ratio, rows, extents)
        if r_iv.lo >= 0 or r_iv.hi <= 0:
            break
    else:
        return None
    # |y^T x| = sum(|r| y^2) as a sum of terms >= 0, which the prover reads sharper (a weighted mean of |r| with
    # weights y^2: RWKV-7's sum(a, av[a] kk[a]^2) with |kk| = 1 is in (0, 1))
    sign = 1 if r_iv.lo >= 0 else -1
    magnitude = sign * x * y
    for k in mixed:
        magnitude = sp.Sum(magnitude, (rows[k], 0, sym.state.axes[k].extent - 1))
    magnitude = _canonical_sums(sym.inline_product_lets(magnitude))
    m_iv = prover.range(magnitude)
    inside = magnitude.replace(lambda e: isinstance(e, sp.Sum), lambda e: _inline_lets(sym, e))
    m_iv = _intersect(_intersect(m_iv, prover.range(simplify(_canonical_sums(inside)))), NONNEG)
    # and as |r|'s range times |y|^2 (a weighted mean of |r|): the sum above may be read with r's sign pulled out
    ysq = y**2
    for k in mixed:
        ysq = sp.Sum(ysq, (rows[k], 0, sym.state.axes[k].extent - 1))
    ysq = _canonical_sums(ysq)
    inside = ysq.replace(lambda e: isinstance(e, sp.Sum), lambda e: _inline_lets(sym, e))
    y_iv = _intersect(prover.range(ysq), prover.range(simplify(_canonical_sums(inside))))
    m_iv = _intersect(m_iv, _mul(_abs(r_iv), y_iv))
    trace = sign * magnitude
    tr_iv = m_iv if sign > 0 else _neg(m_iv)
    tr_iv = Interval(tr_iv.lo + 0.0, tr_iv.hi + 0.0, tr_iv.lo_open, tr_iv.hi_open)  # no -0
    if r_iv.hi <= 0:  # y^T x <= 0: the rank-1 term only lowers the eigenvalues
        shift = Interval(min(tr_iv.lo, 0.0), 0.0, tr_iv.lo_open and tr_iv.lo < 0, False)
    else:
        shift = Interval(0.0, max(tr_iv.hi, 0.0), False, tr_iv.hi_open and tr_iv.hi > 0)
    d_iv = prover.range_over(d, rows, extents)
    lam = _add(d_iv, shift)
    floor = _congruence_floor(sym, prover, d, d_iv, x, y, rows, mixed) if r_iv.hi <= 0 else None
    if floor is not None:
        lam = _intersect(lam, Interval(floor[0].lo, INF, floor[0].lo_open, True))
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    rel = ">=" if r_iv.lo >= 0 else "<="
    also = "" if floor is None else (
        f"; and D - w w^T = D^(1/2) (I - u u^T) D^(1/2) with |u|^2 = -sum(x y / d) = {spec_str(floor[1])} in "
        f"{floor[2]}: lambda >= min(d) (1 - |u|^2) in {floor[0]}")
    return EigenBound(_verdict([lam]), str(lam),
                      f"A = diag(d) + x y^T with x = r y entry by entry, r = {spec_str(ratio)} {rel} 0: similar to a "
                      f"symmetric matrix (real eigenvalues), in d's range plus y^T x's between 0 and it: d = "
                      f"{spec_str(d)} in {d_iv}, y^T x = {spec_str(trace)} in {tr_iv}{also} ({facts})")


def _congruence_floor(sym: SymSpec, prover, d, d_iv: Interval, x, y, rows, mixed):
    """The lower end of diag(d) + x y^T with x = r y, r <= 0 and d >= 0, sharper than Weyl's min d + y^T x: with
    w = sqrt(-r) y the block is similar to D - w w^T = D^(1/2) (I - u u^T) D^(1/2), u = D^(-1/2) w, |u|^2 =
    sum(-x y / d). Where |u|^2 <= 1 the middle factor is positive semi-definite with smallest eigenvalue 1 - |u|^2,
    and (Ostrowski, a congruence) lambda_min >= min(d) (1 - |u|^2) >= 0: KDA with a per-key beta, (I - (be o k)
    k^T) diag(al), is in (0, 1), where Weyl's bound gave (-1, 1). Returns (that floor's interval, |u|^2, its
    interval), or None where d may be negative or |u|^2 is not proven <= 1 (d = 0 leaves |u|^2 unbounded)."""
    if d_iv.lo < 0:
        return None
    usq = simplify(-x * y / d)
    for k in mixed:
        usq = sp.Sum(usq, (rows[k], 0, sym.state.axes[k].extent - 1))
    usq = _canonical_sums(sym.inline_product_lets(usq))
    inside = usq.replace(lambda e: isinstance(e, sp.Sum), lambda e: _inline_lets(sym, e))
    u_iv = _intersect(_intersect(prover.range(usq), prover.range(simplify(_canonical_sums(inside)))), NONNEG)
    if u_iv.hi > 1:
        return None
    return _mul(d_iv, _add(Interval(1.0, 1.0, False, False), _neg(u_iv))), usq, u_iv


def _rank1_parts(block, rows, cols, mixed) -> tuple[sp.Expr, sp.Expr, sp.Expr] | None:
    """``block`` as alpha * I + f g^T on the ``mixed`` axes, (alpha, f, g), alpha free of them, f over their row
    symbols and g over their column symbols (f = g = 0 when there is no rank-1 part); None for any other form."""
    pairs = {frozenset((rows[k], cols[k])) for k in mixed}
    mixed_syms = {rows[k] for k in mixed} | {cols[k] for k in mixed}
    col_syms = {cols[k] for k in mixed}
    ident, rest = [], []
    for t in terms(block):
        (ident if pairs <= delta_pairs(split_deltas(t)[0]) else rest).append(t)
    alpha = sp.Add(*[split_deltas(t)[1] for t in ident])
    if alpha.free_symbols & mixed_syms:
        return None
    if not rest:
        return alpha, sp.Integer(0), sp.Integer(0)
    rank_one = sp.factor_terms(sp.Add(*rest))
    g = sp.Mul(*[f for f in factors(rank_one) if f.free_symbols & col_syms])
    f = sp.Mul(*[f for f in factors(rank_one) if not (f.free_symbols & col_syms)])
    # g over the column symbols alone: a sum that does not factor (k k^T + p p^T, rank 2) is one factor over both
    if f.free_symbols & col_syms or g.free_symbols & (mixed_syms - col_syms) or sp.expand(f * g - sp.Add(*rest)) != 0:
        return None
    return alpha, f, g


def _stacked_rank1(sym: SymSpec, a) -> EigenBound | None:
    """A block over a mixed axis p of extent 2 and key axes, each of its 2 x 2 sub-blocks alpha_ij I + beta_ij f g^T
    with one f and g (a memory and its momentum stacked on p, Titans: [[(1 - al) I - th k k^T, eta I],
    [-th k k^T, eta I]]). The subspace {x : g^T x = 0} (per p entry) is invariant, A acts there as alpha (x) I, and
    on the quotient as alpha + (g^T f) beta, so the eigenvalues are those of the 2 x 2 matrices alpha and
    alpha + (g^T f) beta; each is bounded by Jury's conditions (``_jury``). Such a block was "unknown": it is not
    s I - f g^T, nor one 2 x 2 block."""
    if a.block is None or len(a.mixed_axes) < 2:
        return None
    rows, cols = a.rows, a.cols
    for p in a.mixed_axes:
        if sp.S(sym.state.axes[p].extent) != 2:
            continue
        keys = tuple(k for k in a.mixed_axes if k != p)
        parts = {}
        for i, j in itertools.product(range(2), repeat=2):
            sub = sp.S(a.block).subs({rows[p]: i, cols[p]: j}, simultaneous=True)
            if sub.free_symbols & {rows[p], cols[p]}:
                return None
            parts[i, j] = _rank1_parts(sub, rows, cols, keys)
        if any(v is None for v in parts.values()):
            continue
        ref = next(((f, g) for _, f, g in parts.values() if f != 0), None)
        if ref is None:
            continue
        f0, g0 = ref
        beta, ok = {}, True
        for ij, (_, f, g) in parts.items():
            ratio = simplify(f * g / (f0 * g0)) if f != 0 else sp.Integer(0)
            if ratio.free_symbols & ({rows[k] for k in keys} | {cols[k] for k in keys}) or ratio.has(sp.zoo, sp.nan):
                ok = False
                break
            beta[ij] = ratio
        if not ok:
            continue
        c = f0 * g0.subs({cols[k]: rows[k] for k in keys}, simultaneous=True)
        for k in keys:
            c = sp.Sum(c, (rows[k], 0, sym.state.axes[k].extent - 1))
        c = _canonical_sums(sym.inline_product_lets(c))
        # g^T f's range from its forms as the delta rule's (``_identity_minus_rank1``) reads them, the lets inside
        # the contraction inlined or not; Jury's conditions then see it as one symbol of that range
        prover = IntervalProver(sym)
        inside = c.replace(lambda e: isinstance(e, sp.Sum), lambda e: _inline_lets(sym, e))
        forms = list(dict.fromkeys(x for x in (c, simplify(_canonical_sums(inside)),
                                               prover._inlined(c, outside_sums=True)) if x is not None))
        c_iv = prover.range(forms[0])
        for x in forms[1:]:
            c_iv = _intersect(c_iv, prover.range(x))
        gtf = sp.Symbol("g^T f")  # not a spec name: no let or param can be read as it
        alpha = [[parts[i, j][0] for j in range(2)] for i in range(2)]
        shifted = [[alpha[i][j] + gtf * beta[i, j] for j in range(2)] for i in range(2)]
        found = [_jury(sym, alpha), _jury(sym, shifted, {str(gtf): c_iv})]
        if any(x is None for x in found):
            return None
        verdict = Bound.STABLE if all(x.bound == Bound.STABLE for x in found) else Bound.MARGINAL
        if any(x.bound not in (Bound.STABLE, Bound.MARGINAL) for x in found):
            return None
        name = sym.state.axes[p].name
        return EigenBound(verdict, "[0, 1)" if verdict == Bound.STABLE else "[0, 1]",
                          f"A = alpha (x) I + beta (x) f g^T on axis {name!r} and the key axes: the eigenvalues are "
                          f"those of alpha (on g^T x = 0) and of alpha + (g^T f) beta, g^T f = {spec_str(c)} in "
                          f"{c_iv}; alpha: {found[0].reason}; alpha + (g^T f) beta: {found[1].reason}")
    return None


def _triangular(sym: SymSpec, a) -> EigenBound | None:
    """A block triangular over its one mixed axis (an Euler step of HiPPO-LegS, a Laguerre cascade): its eigenvalues
    are its diagonal entries, whatever lies on the other side. Triangular is proven for every dims, not read off the
    defaults: the entry vanishes with the column index ``gap >= 1`` past the row index (lower) or behind it (upper),
    for a symbolic integer ``gap``; a block SymPy cannot show to vanish there is left to the other rules."""
    if len(a.mixed_axes) != 1 or a.block is None:
        return None
    k = a.mixed_axes[0]
    r, c = a.rows[k], a.cols[k]
    gap = sp.Symbol("gap", integer=True, positive=True)
    # the block as written, then with its lets inlined one level and relu(x) as max(x, 0), which SymPy evaluates at
    # a signed argument: a selective HiPPO-LegS step I + dt AL with the lower-triangular AL a let (entries
    # min(relu(n - m), 1) ...) was "unknown", AL[n, m] read as a name that SymPy cannot show to vanish for m > n
    forms = [sp.S(a.block)]
    inlined = _inline_lets(sym, forms[0], depth=1).replace(lambda x: isinstance(x, Relu),
                                                          lambda x: sp.Max(x.args[0], 0))
    if inlined != forms[0] and sp.count_ops(inlined) <= NORM_INLINE_MAX_OPS:
        forms.append(inlined)
    for block in forms:
        if (side := _triangle_side(block, r, c, gap)) is not None:
            break
    else:
        return None
    prover = IntervalProver(sym)
    iv = None
    for form in forms[:forms.index(block) + 1]:  # the diagonal as written, and inlined where that showed the shape
        diagonal = simplify(form.subs(c, r))
        here = prover.range_over(diagonal, a.rows, [ax.extent for ax in sym.state.axes])
        iv = here if iv is None else _intersect(iv, here)
        if iv == here:
            shown = diagonal
    diagonal = shown
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    return EigenBound(_verdict([iv]), str(iv),
                      f"A is {side} triangular on axis {sym.state.axes[k].name!r}: its eigenvalues are the diagonal "
                      f"entries lambda = {spec_str(diagonal)} in {iv} ({facts})")


def _triangle_side(block, r, c, gap) -> str | None:
    """"lower" when ``block`` vanishes wherever the column index c is ``gap >= 1`` past the row index r, "upper"
    when it vanishes with r past c (for every gap, so at every dims), None when neither is shown."""
    for side, beyond in (("lower", {c: r + gap}), ("upper", {r: c + gap})):
        try:
            if simplify(block.subs(beyond, simultaneous=True)) == 0:
                return side
        except (TypeError, ValueError):
            continue
    return None


def _block_triangular(sym: SymSpec, a) -> EigenBound | None:
    """A block triangular over one of several mixed axes (biquads in series, each section's 2x2 block fed by the
    sections before it): its eigenvalues are those of its diagonal blocks, the blocks over the other mixed axes at
    equal indices on this one, which the block rules then bound as a matrix of their own. Proven for every dims as
    in ``_triangular``: the entry vanishes with this axis's column index ``gap >= 1`` past its row index (lower) or
    behind it (upper), whatever the other axes' indices."""
    if len(a.mixed_axes) < 2 or a.block is None:
        return None
    written = sp.S(a.block)
    # relu(x) as max(x, 0) too, which SymPy evaluates at a signed argument (as in ``_triangular``): sections coupled
    # by relu(m - m2) g or min(relu(m - m2), 1) g were "unknown"
    forms = dict.fromkeys([written, written.replace(lambda x: isinstance(x, Relu), lambda x: sp.Max(x.args[0], 0))])
    gap = sp.Symbol("gap", integer=True, positive=True)
    for k in a.mixed_axes:
        r, c = a.rows[k], a.cols[k]
        side = next((s for f in forms if (s := _triangle_side(f, r, c, gap)) is not None), None)
        if side is None:
            continue
        # the diagonal blocks: equal indices on axis k, which is then diagonal (delta(m, 1) delta(m, 0) products of
        # the off-diagonal terms cancel; a relu(m - m2) coupling is relu(0) there, which SymPy leaves unevaluated)
        diagonal = written.subs(c, r).replace(lambda x: isinstance(x, Relu) and x.args[0].is_number,
                                             lambda x: sp.Max(x.args[0], 0))
        diagonal = sp.simplify(sp.kroneckersimp(sp.expand(diagonal)))
        sub = replace(a, kind=AKind.BLOCK_DIAGONAL, diag_axes=tuple(sorted((*a.diag_axes, k))),
                      mixed_axes=tuple(x for x in a.mixed_axes if x != k), block=diagonal, low_rank=False)
        found = _first_block_rule(sym, sub)
        if found is None or found.bound not in (Bound.STABLE, Bound.MARGINAL, Bound.EXCEEDS):
            return None
        return EigenBound(found.bound, found.interval,
                          f"A is block {side} triangular on axis {sym.state.axes[k].name!r}: its eigenvalues are those "
                          f"of its diagonal blocks; {found.reason}")
    return None


def _norm_bound(sym: SymSpec, a) -> EigenBound | None:
    """Any block: the spectral radius is at most every induced norm and the Frobenius norm, so a block whose largest
    row or column sum of |entries| (the infinity and 1 norms), or whose sum of squared entries, is proven <= 1 has
    |lambda| <= 1. A learned transition normalised over its rows (``exp(W) / sum(exp(W))``, an HMM's forward pass),
    ``tanh(W) / N`` or ``W / ||W||_F`` were "unknown". A norm above 1 proves nothing, so only a bound <= 1 is kept;
    the sums range over every block (the diagonal axes' indices are free in them)."""
    if a.block is None or not a.mixed_axes:
        return None
    axes = sym.state.axes
    block = sp.S(a.block)
    entry = block if IntervalProver(sym, NORM_INLINE_MAX_OPS).range(block).lo >= 0 else sp.Abs(block)  # |a_ij|, no Abs when >= 0

    def summed(body, over):
        for k in a.mixed_axes:
            body = sp.Sum(body, *[(s[k], 0, axes[k].extent - 1) for s in over])
        return _canonical_sums(body)

    def free_range(prover, e):  # over every block: the row (and column) indices left free in e
        index = [i for i in (*a.rows, *a.cols) if i in e.free_symbols]
        extents = [axes[a.rows.index(i) if i in a.rows else a.cols.index(i)].extent for i in index]
        return prover.range_over(e, index, extents)

    readings = [(f"its largest sum of |A| over the {what} (the induced {norm} norm)", summed(entry, [over]), False)
                for what, over, norm in (("columns", a.cols, "infinity"), ("rows", a.rows, "1"))]
    readings.append(("its Frobenius norm", summed(block**2, [a.cols, a.rows]), True))
    best = None
    for what, total, squared in readings:
        prover = IntervalProver(sym, NORM_INLINE_MAX_OPS)
        iv = free_range(prover, total)
        # the lets read outside the sums inlined too: W / fro with fro = sqrt(sum(i, sum(j, W[i, j]^2)))
        inlined = prover._inlined(total, outside_sums=True) if iv.hi > 1 else None
        shown = spec_str(total)
        if inlined is not None and (better := _intersect(iv, free_range(prover, inlined))) != iv:
            iv, shown = better, f"{shown} = {spec_str(inlined)} (its lets inlined)"
        if iv.hi <= 1 and (best is None or (iv.hi, not iv.hi_open) < (best[2].hi, not best[2].hi_open)):
            best = (what, shown, iv, squared, prover.reasons)
    if best is None:
        return None
    what, shown, iv, squared, reasons = best
    mag = Interval(0.0, math.sqrt(iv.hi) if squared else iv.hi, False, iv.hi_open)
    facts = "; ".join(dict.fromkeys(reasons)) or "no facts needed"
    shown = f"the square root of {shown}" if squared else shown
    return EigenBound(_verdict([mag]), str(mag),
                      f"|lambda| is at most {what}: {shown} in {mag} ({facts})")


def _params_read(sym: SymSpec, expr) -> list[str]:
    """The parameters ``expr`` reads outside any function application (a sigmoid's or an exp's argument is bounded
    through the function), directly or through the lets it reads, in the spec's order."""
    lets = {let.tensor.name: let for let in sym.lets}
    names, todo, seen = set(), [expr], set()

    def walk(node):
        if isinstance(node, sp.Function) and not isinstance(node, (sp.Min, sp.Max, sp.Abs, sp.KroneckerDelta)):
            return
        name = str(node.base.label) if isinstance(node, sp.Indexed) else str(node) if node.is_Symbol else None
        if name is not None and name not in seen:
            seen.add(name)
            names.add(name)
            if name in lets and lets[name].expr is not None and not lets[name].running:
                todo.append(lets[name].expr)
        if not isinstance(node, sp.Indexed):
            for arg in node.args:
                walk(arg)

    while todo:
        walk(todo.pop())
    return [p.tensor.name for p in sym.params if p.tensor.name in names]


# what a bound needs when a parameter of any value reaches A, and the spellings the prover reads
LEARNED_WHY = ("a trained parameter takes any real value (its initialiser bounds nothing), so A is bounded only "
               "through a parameterisation")
DIAGONAL_SPELLINGS = "exp(-exp(p)), exp(-softplus(p)) or sigmoid(p) (in (0, 1)), or exp(-dt * exp(p)) with dt > 0"
DENSE_SPELLINGS = ("a diagonal decay (" + DIAGONAL_SPELLINGS + "); 2x2 rotation-scaling blocks r [[cos(t), -sin(t)], "
                   "[sin(t), cos(t)]] with r in (0, 1) (a rotation times a contraction); a triangular A with a bounded "
                   "diagonal; or a normalised matrix (W / sqrt(sum(i, sum(j, W[i, j]^2))), exp(W) / sum(exp(W)) over "
                   "a row)")


RANK1_SPELLINGS = ("a step size in (0, 1) or (0, 2) (sigmoid(p), 2 * sigmoid(p)) and keys normalised as "
                   "k / sqrt(sum(a, k[a]^2) + eps)")


def _parameter_note(sym: SymSpec, expr, spellings: str) -> str:
    """Why an unbounded A that reads parameters is not proven, and spellings that would be: '' without parameters."""
    params = _params_read(sym, expr)
    if not params:
        return ""
    return f"; it reads the parameter{'s' if len(params) > 1 else ''} {', '.join(params)}: {LEARNED_WHY}; " \
           f"provable spellings: {spellings}"


def _term_of_its_sum(sym: SymSpec, prover: IntervalProver, decay, rows) -> tuple[Interval, str] | None:
    """A diagonal entry that reads a term ``x(j)`` >= 0 of a sum ``S = sum(j2, x(j2))`` (a let) over j's whole range,
    j a state index, and S itself: x(j) = t S for some t in [0, 1]. Longhorn's ``1 - eps[i] k[j]^2`` with ``eps =
    beta / (1 + beta S)``, ``S = sum(j, k[j]^2)``, read apart was (-inf, 1]; with its rational lets inlined and k[j]^2 =
    t S it is ``1 - t (beta S / (1 + beta S))``, t and the share ranged apart: (0, 1]."""
    def quotient(x):  # a let (not itself a sum: a projection, |k|^2 stay names) with no function call: inlined
        read = sym.let_read(x)
        if read is None or read[0].running or read[0].feature is not None:
            return None
        value = read[0].value_at(read[1])
        return None if isinstance(value, sp.Sum) or value.atoms(sp.Function) else value

    expr = decay
    for _ in range(4):
        new = expr.replace(lambda x: quotient(x) is not None, quotient)
        if new == expr:
            break
        expr = new
    extents = {r: ax.extent for r, ax in zip(rows, sym.state.axes)}
    sums = {x: sp.Dummy("S") for x in expr.atoms(sp.Sum)}  # held opaque: a term is replaced outside them only
    masked = expr.xreplace(sums)
    totals = [(x, x) for x in sums]
    for x in sorted(expr.atoms(sp.Indexed, sp.Symbol), key=sp.default_sort_key):
        read = sym.let_read(x)
        if read is not None and not read[0].running and read[0].feature is None:
            totals.append((x, read[0].value_at(read[1])))
    for x, total in totals:
        if not isinstance(total, sp.Sum) or len(total.limits) != 1:
            continue
        j2, lo, hi = total.limits[0]
        if lo != 0 or j2 not in total.function.free_symbols or prover.range(total.function).lo < 0:
            continue
        for j in (r for r in rows if r in masked.free_symbols):
            term = total.function.xreplace({j2: j})
            if simplify(hi + 1 - extents[j]) != 0 or not masked.has(term):
                continue
            t = sp.Dummy("t", nonnegative=True)
            prover._unit.add(t)  # ranged [0, 1) by the prover; t = 1 (S = x(j)) is added as its own case below
            back = {v: k for k, v in sums.items()}
            shared = masked.xreplace({term: t * sums.get(x, x)}).xreplace(back)
            iv = _hull([prover.range(shared), prover.range(shared.xreplace({t: sp.Integer(1)}))])
            return iv, f"{spec_str(term)} = t * {spec_str(x)}, t in [0, 1] (a term of its sum {spec_str(total)})"
    return None


def _exceeding_case(sym: SymSpec, prover: IntervalProver, decay, rows) -> str | None:
    """A diagonal entry that a delta of a state index picks (``0.5 exp(delta(i, 2))`` at i = 2) whose own range lies
    outside [-1, 1]: that eigenvalue exceeds 1 in modulus for every input, wherever the index value exists (the
    default dims at least, every dims for index 0). The whole decay's range, the hull over all entries, reaches
    both sides of 1 and said only "not proven <= 1"."""
    dims = {sym.dims[k]: v for k, v in sym.dim_values().items()}
    for f in sorted(decay.atoms(sp.KroneckerDelta), key=sp.default_sort_key):
        for i, c in (f.args, f.args[::-1]):
            if i not in rows or not c.is_Integer or c < 0:
                continue
            extent = sym.state.axes[rows.index(i)].extent
            if int(sp.S(extent).subs(dims)) <= int(c):
                continue
            iv = prover.range(decay.subs(i, c))
            if iv.lo > 1 or (iv.lo == 1 and iv.lo_open) or iv.hi < -1 or (iv.hi == -1 and iv.hi_open):
                where = "" if c == 0 else f" (at every dims where {spec_str(extent)} > {c}, the defaults among them)"
                return (f"the entry at {i} = {c}, {spec_str(decay.subs(i, c))} in {iv}, exceeds 1 in modulus for "
                        f"every input{where}")
    return None


def _first_block_rule(sym: SymSpec, a) -> EigenBound | None:
    """The first bound a block rule finds. Jury's 2x2 test holds where the mixed axis has 2 entries: a pair axis
    written with a literal 2 (LinOSS's, S4D's modes) is tried first; an axis of a dim that is 2 only at the defaults
    (a delta rule's keys at K = 2) goes last, after the rules that hold at every dims (triangular, rank-1 blocks),
    which also cost far less there: SymPy's trigsimp of Jury's det and tr, with the gates' lets inlined, took ~50 s
    on a random DPLR spec with a sin^2 gate that the symmetric rank-1 rule bounds in a second."""
    rules = [_two_by_two, _triangular, _block_triangular, _stacked_rank1, _scaled_symmetric_rank1,
             _similar_symmetric_rank1]
    if not all(sp.S(sym.state.axes[k].extent).is_Integer for k in a.mixed_axes):
        rules = rules[1:] + rules[:1]
    for rule in rules:
        if (found := rule(sym, a)) is not None:
            return found
    return None


def _delta_product_bound(sym: SymSpec, a, scale, steps) -> EigenBound | None:
    """A = s M_(n-1) ... M_0, M_j = I - k_j f_j^T (the gated delta product, ``structure.split_delta_product``; steps
    = [(k_j, f_j)] over the rows): |lambda| <= ||A||_2 <= max |s| prod ||M_j||_2, and a symmetric M_j (k_j = c f_j,
    c free of the key) has the norm of its largest |eigenvalue|, 1 or 1 - c f^T f, which the delta rule's reading
    (``_identity_minus_rank1``) bounds. None unless every factor is symmetric and bounded, and s is."""
    from dataclasses import replace

    (key,), mixed_rows = a.mixed_axes, {a.rows[k] for k in a.mixed_axes}
    row, col = a.rows[key], a.cols[key]
    norms, reasons = [], []
    for j, (k, f) in enumerate(steps):
        ratio = simplify(sym.inline_product_lets(k) / sym.inline_product_lets(f))
        if ratio.free_symbols & mixed_rows or ratio.has(sp.zoo, sp.nan):
            return None
        hull: list[Interval] = []
        block = sp.KroneckerDelta(row, col) - k * f.xreplace({row: col})
        inner = _identity_minus_rank1(sym, replace(a, block=block, low_rank=True), hull)
        if inner is None or not hull:
            return None
        norms.append(_abs(hull[0]))
        reasons.append(f"M_{j}: {inner.reason}")
    prover = IntervalProver(sym)
    s_iv = prover.range_over(scale, a.rows, [ax.extent for ax in sym.state.axes])
    mag = _abs(s_iv)
    for m in norms:
        if m.hi == INF or mag.hi == INF:
            return None
        mag = Interval(0.0, mag.hi * m.hi, False, mag.hi_open or m.hi_open)
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    return EigenBound(_verdict([mag]), str(mag),
                      f"A = s M_{len(steps) - 1} ... M_0 with s = {spec_str(scale)} in {s_iv} and each M_j = I - c "
                      f"f f^T symmetric (a product of delta-rule factors): |lambda| <= max |s| * prod ||M_j||_2 "
                      f"{'<' if mag.hi_open else '<='} {mag.hi:.6g} ({'; '.join(reasons)}; {facts})")


def eigenvalue_bound(sym: SymSpec, a, product=None) -> EigenBound:
    """Bound of |lambda(A_t)| over all inputs, with the reason. ``product``: (s, [(k_j, f_j)]) when the structure
    read A as a product of delta-rule factors (the gated delta product), tried first."""
    if a.kind == AKind.IDENTITY:
        return EigenBound(Bound.MARGINAL, "[1, 1]", "A = I: every eigenvalue is exactly 1 (marginally stable)")
    if product is not None and a.decay is None and len(a.mixed_axes) == 1:
        found = _delta_product_bound(sym, a, *product)
        if found is not None and found.bound in (Bound.STABLE, Bound.MARGINAL):
            return found
    if a.decay is None:
        found = _identity_minus_rank1(sym, a) if a.low_rank else _first_block_rule(sym, a)
        if found is None or found.bound not in (Bound.STABLE, Bound.MARGINAL, Bound.EXCEEDS):
            found = _norm_bound(sym, a) or found  # a norm <= 1 bounds what the block's form did not
        if found is not None:
            return found
        if a.low_rank:
            return EigenBound(
                Bound.UNKNOWN,
                None,
                "A is s*I minus a rank-1 term on the mixed axes: eigenvalues are s (multiplicity K-1) and "
                "s - g^T f; their range was not proven",
            )
        return EigenBound(Bound.UNKNOWN, None,
                          "A is not diagonal: eigenvalues are not derived symbolically (no form the prover reads: a "
                          "multiple of I minus rank 1, 2x2 blocks, triangular, stacked rank-1 blocks, a gate times a "
                          "symmetric delta rule, a diagonal plus a rank-1 term similar to a symmetric one; and no "
                          "norm of it proven <= 1)"
                          + _parameter_note(sym, sym.matrices["A"].entry, DENSE_SPELLINGS))
    prover = IntervalProver(sym)
    iv = prover.range_over(a.decay, a.rows, [ax.extent for ax in sym.state.axes])
    facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
    lam = f"lambda = {spec_str(a.decay)} in {iv}"
    verdict = _verdict([iv])
    if verdict not in (Bound.STABLE, Bound.MARGINAL, Bound.EXCEEDS) and (
            shared := _term_of_its_sum(sym, prover, a.decay, a.rows)) is not None:
        better = _intersect(iv, shared[0])
        if _verdict([better]) in (Bound.STABLE, Bound.MARGINAL):
            iv, verdict = better, _verdict([better])
            prover.reasons.append(shared[1])
            lam = f"lambda = {spec_str(a.decay)} in {iv}"
            facts = "; ".join(dict.fromkeys(prover.reasons))
    if verdict in (Bound.UNBOUNDED, Bound.UNKNOWN) and (exceeds := _exceeding_case(sym, prover, a.decay, a.rows)):
        facts = "; ".join(dict.fromkeys(prover.reasons)) or "no facts needed"
        return EigenBound(Bound.EXCEEDS, str(iv), f"{lam}: {exceeds} ({facts})")
    tail = {Bound.UNBOUNDED: ": not proven <= 1 (the interval " + ("has no finite upper end)" if iv.hi == INF
                                                                      else "reaches above 1)"),
            Bound.UNKNOWN: ": no bound proven", Bound.EXCEEDS: ": exceeds 1 in modulus for every input"}
    tail = tail.get(verdict, "")
    if verdict in (Bound.UNBOUNDED, Bound.UNKNOWN):
        tail += _parameter_note(sym, a.decay, DIAGONAL_SPELLINGS)
    return EigenBound(verdict, str(iv), f"{lam}{tail} ({facts})")
