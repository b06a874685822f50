"""The sum budget of ``dsfc.analysis.index_algebra.simplify``.

SymPy's simplify combines an expression's sums pairwise and re-simplifies their bodies inside each rewrite it tries:
its cost roughly doubles with every ``Sum``. A dense block averaging five softmax-normalised transitions hands the
eigenvalue prover's inlined reading six sums in 36 operations (15 s a compile on 2 cores, 35 s busy; a gated
DeltaProduct's seven sums took 24 minutes). Beyond ``SIMPLIFY_MAX_SUMS`` sums every sum is held opaque while SymPy
simplifies the rest, so the cost is bounded by the expression's structure, not by a clock (generated code and the
catalog stay reproducible byte for byte). The checks here are structural: the sizes SymPy is handed, and the
simplified value against the same sums evaluated term by term.
"""

from __future__ import annotations

import itertools

import sympy as sp

from dsfc.analysis import index_algebra, stability, structure
from dsfc.analysis.index_algebra import SIMPLIFY_MAX_SUMS, simplify, sum_count
from dsfc.pipeline import compile_text

MIXTURE = "\n".join(
    ["model Mixture \"a transition averaging five softmax-normalised matrices\"", "dim d = 3", "dim N = 3",
     "input u[d]", "state h[i: N]", "output y[i: N]", "param W[N, d] ~ normal(0, 0.5)"]
    + [f"param P{s}[N, N] ~ normal(0, 0.5)" for s in range(5)]
    + [f"let s{s}[i: N, j: N] = exp(P{s}[i, j]) / sum(j2, exp(P{s}[i, j2]))" for s in range(5)]
    + ["A[i, j] = 0.9 / 5 * (" + " + ".join(f"s{s}[i, j]" for s in range(5)) + ")",
       "B[i, m] = W[i, m]", "C[o, i] = delta(o, i)"]) + "\n"


def _value(expr, n: int, x, y) -> float:
    """``expr`` over index range [0, n) with x[i] and y[i, j] given: every sum written out by a plain loop."""
    xs, ys = sp.IndexedBase("x"), sp.IndexedBase("y")
    out = expr.subs(sp.Symbol("n", positive=True, integer=True), n).doit()
    vals = {xs[i]: x[i] for i in range(n)}
    vals.update({ys[i, j]: y[i][j] for i, j in itertools.product(range(n), repeat=2)})
    return float(out.xreplace(vals))


def test_beyond_the_budget_sums_are_held_and_restored():
    n = sp.Symbol("n", positive=True, integer=True)
    i, j, k = (sp.Symbol(c, integer=True, nonnegative=True) for c in "ijk")
    x, y = sp.IndexedBase("x"), sp.IndexedBase("y")
    inner = sp.Sum(y[i, j] ** 2, (j, 0, n - 1))
    sums = [sp.Sum(x[i] ** p, (i, 0, n - 1)) for p in range(1, 5)]
    nested = sp.Sum(x[i] * inner / (inner + 1), (i, 0, n - 1))  # a sum whose body holds another
    expr = (sums[0] + sums[1]) * (sums[2] + nested) / (sums[3] + 1) + sp.cos(k) ** 2 + sp.sin(k) ** 2 - sums[1]
    assert sum_count(expr) == 6 > SIMPLIFY_MAX_SUMS
    out = simplify(expr)
    assert not any(str(f.func).startswith("_held_sum") for f in out.atoms(sp.Function)), out
    assert not out.has(sp.sin) and not out.has(sp.cos), out  # the rest still simplified: cos^2 + sin^2 = 1
    xv, yv = [0.3, -1.2, 0.7], [[0.5, -0.1, 2.0], [1.5, 0.2, -0.4], [0.0, 0.9, -1.1]]
    want = _value(expr.subs(k, 0), 3, xv, yv)
    assert abs(_value(out, 3, xv, yv) - want) <= 1e-12 * max(1.0, abs(want))


def test_the_prover_hands_sympy_at_most_the_budget(monkeypatch):
    """The mixture's row-sum reading inlines the five softmaxes under one sum (six sums): SymPy is handed no more than
    ``SIMPLIFY_MAX_SUMS`` of them at a time, and the analysis did meet such an expression (the budget was used)."""
    asked, handed = [], []
    real = sp.simplify

    def recording(expr, *args, **kwargs):
        handed.append(sum_count(expr))
        return real(expr, *args, **kwargs)

    inner = index_algebra.simplify.__wrapped__  # uncached: every question is seen

    def asking(expr):
        asked.append(sum_count(expr))
        return inner(expr)

    monkeypatch.setattr(index_algebra.sp, "simplify", recording)  # SymPy's own, whoever calls it
    monkeypatch.setattr(stability, "simplify", asking)
    monkeypatch.setattr(structure, "simplify", asking)
    result = compile_text(MIXTURE)
    assert max(asked) > SIMPLIFY_MAX_SUMS, asked
    assert handed and max(handed) <= SIMPLIFY_MAX_SUMS, handed
    assert result.report.eigen_bound is not None


NORMALISED_DENSE = """
model NormalisedDense "normalised linear attention: decay prev(eta) / eta, head delta as 1 - min(|h - h2|, 1)"
dim M = 1
dim G = 1
dim R = 2
dim H = G * R
dim K = 1
dim V = 1
input u[M]
state S[h: H, a: K, b: V]
output y[o: H, e: V]
param W1[G, K, M] ~ normal(0, 0.7)
param W2[G, K, M] ~ normal(0, 0.7)
param bias[G, K] ~ uniform(-1, 1)
param F[H, V, M] ~ normal(0, 1)
let q[g: G, a: K] = sigmoid(sum(m, W1[g, a, m] * u[m]))
let k[g: G, a: K] = elu(sum(m, W2[g, a, m] * u[m]) + bias[g, a]) + 1
let z[g: G, a: K] = cumsum(k[g, a])
let eta[h: H] = sum(a, q[h // R, a] * z[h // R, a])
let eta_prev[h: H] = prev(eta[h])
A[(h, a, b), (h2, a2, b2)] = (1 - min(abs(h - h2), 1)) * delta(a, a2) * delta(b, b2) * (eta_prev[h] / eta[h])
B[(h, a, b), m] = 1 / eta[h] * k[h // R, a] * F[h, b, m]
C[(o, e), (h, a, b)] = delta(o, h) * delta(e, b) * q[h // R, a]
readout pre
"""


def test_sympy_failing_inside_its_sum_combining_falls_back_to_held_sums():
    """SymPy's ``sum_add`` raises StopIteration on a term whose only Sum is in a denominator (``x / Sum(...)``): the
    2x2 check's trace of this block (a random property-test spec) crashed ``dsfc compile`` with a raw traceback.
    ``simplify`` now retries with every sum held opaque, and the spec compiles."""
    result = compile_text(NORMALISED_DENSE, "normalised_dense.dsf")
    assert result.structure.family is not None
