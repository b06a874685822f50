"""``dsfc compare A.dsf B.dsf``: two models side by side, in DSF terms.

Three sections, plain text for a terminal:

1. **structure**: the two :class:`~dsfc.analysis.report.StructureReport` rows side by side (A class, B form, C form,
   D, coupling, eigenvalue bound and reason, time invariance, N, state bytes, FLOPs/token, family), plus two rows
   read off the index form: how B treats the input channels (per channel via a delta, or mixed through a parameter
   such as W_V) and which state axes C contracts;
2. **DSF matrices**: A, B, C, D of both in index form (``sympy.sstr``, or LaTeX with ``--latex``);
3. **differences**: every property that differs, in words ("A: identity vs diagonal", "coupling A/B: none vs dt"),
   then the properties that are the same.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import sympy as sp

from .pipeline import CompileResult
from .analysis.index_algebra import simplify

LABEL = 18  # width of the property column


@dataclass(frozen=True)
class Prop:
    """One compared property: ``key`` is what differences compare, ``text`` what the table shows."""

    label: str
    key: str
    text: str
    diff: bool = True  # take part in the differences section (explanations such as "why" do not)
    short: str | None = None  # the value in a few words for the differences section (default: key)


# -- properties read off the index form ---------------------------------------------------------------------------


def _deltas(entry: sp.Expr) -> list[tuple[sp.Symbol, sp.Symbol]]:
    """Kronecker deltas between two plain index symbols that multiply the whole entry."""
    out = []
    for f in sp.Mul.make_args(sp.factor_terms(entry)):
        if isinstance(f, sp.KroneckerDelta) and all(isinstance(a, sp.Symbol) for a in f.args):
            out.append(tuple(f.args))
    return out


def _carriers(entry: sp.Expr, idx: set[sp.Symbol]) -> list[str]:
    """Names of the tensors subscripted by one of ``idx`` in ``entry``."""
    names = set()
    for node in sp.preorder_traversal(entry):
        if isinstance(node, sp.Indexed) and any(i.free_symbols & idx for i in node.indices):
            names.add(str(node.base.label))
    return sorted(names)


def b_input_channels(result: CompileResult) -> tuple[str, str, str]:
    """(key, text, short): does B keep input channels apart (a delta per input index) or mix them through a
    parameter?"""
    m = result.sym.matrices.get("B")
    if m is None:
        return "absent", "B = 0", "B = 0"
    rows, cols = set(m.rows), set(m.cols)
    linked = {}
    for a, b in _deltas(m.entry):
        if a in cols and b in rows:
            linked[a] = b
        elif b in cols and a in rows:
            linked[b] = a
    free = [c for c in m.cols if c not in linked]
    if not free:
        pairs = ", ".join(f"delta({linked[c]}, {c})" for c in m.cols)
        return "per channel", f"per channel: {pairs} (each input channel drives only its own state slice)", \
            f"per channel ({pairs})"
    via = _carriers(m.entry, set(free))
    through = f" through {', '.join(via)}" if via else ""
    return "mixes channels", (f"mixes input channels: every state entry reads all of {', '.join(map(str, free))}"
                              + through), f"mixes input channels{through}"


def c_readout(result: CompileResult) -> tuple[str, str]:
    """(key, text): which state axes C copies to the output (deltas) and which it contracts."""
    m = result.sym.matrices.get("C")
    if m is None:
        return "absent", "C = 0"
    rows, cols = set(m.rows), set(m.cols)
    copied = set()
    for a, b in _deltas(m.entry):
        if (a in rows and b in cols) or (b in rows and a in cols):
            copied.add(a if a in cols else b)
    contracted = [c for c in m.cols if c not in copied]
    ext = dict(zip(m.cols, m.col_extents))
    if not contracted:
        return "elementwise", "elementwise: every output reads its own state entry"
    over = ", ".join(f"{c} ({sp.sstr(ext[c])})" for c in contracted)
    kept = ", ".join(str(c) for c in m.cols if c in copied) or "-"
    return "I (x) c^T", f"I (x) c^T: output copies state axes {kept}, contracts {over}"


def _telescoping(result: CompileResult) -> str | None:
    """The normaliser G(x) when A's factor is G(prev(x)) / G(x) and B carries 1 / G(x): then the kernel-form product
    A_i ... A_(j+1) B_j = (...) / G(x_i) telescopes, and the normalisation acts at output time only (normalised
    linear attention's eta, normalized attention's exp(s))."""
    sym = result.sym
    A, B = sym.matrices.get("A"), sym.matrices.get("B")
    if A is None or B is None:
        return None
    prevs = {let.tensor.name: let for let in sym.lets if getattr(let, "running", None) == "prev" and let.args}
    if not prevs:
        return None
    rest = sp.Mul(*[f for f in sp.Mul.make_args(A.entry) if not isinstance(f, sp.KroneckerDelta)])
    to_b = dict(zip(A.rows, B.rows))  # the state axes, as B names them
    for node in sp.preorder_traversal(rest):
        if not (isinstance(node, sp.Indexed) and str(node.base.label) in prevs):
            continue
        let = prevs[str(node.base.label)]
        x = let.value_at(node.indices, let.args[0])
        try:
            g = 1 / rest.subs(node, 1)  # G(x) up to a constant factor
            if g.has(sp.zoo, sp.nan) or not g.has(x):
                continue
            g = sp.expand(g).as_independent(x, as_Add=False)[1]  # drop the constant factor
            if simplify(rest - g.subs(x, node) / g) != 0:
                continue
            gb = g.subs(to_b, simultaneous=True)
            xb = x.subs(to_b, simultaneous=True)
            if simplify(B.entry * gb).has(xb):
                continue
        except Exception:  # noqa: BLE001 - an expression sympy cannot decide is simply not recognised
            continue
        return sp.sstr(g)
    return None


def normalisation(result: CompileResult) -> tuple[str, str]:
    rep = result.report
    x = _telescoping(result)
    if x is not None:
        return "at output time", (f"at output time: A_i = G_(i-1) / G_i with G = {x} (via prev), and B_i carries "
                                  f"1 / G_i, so A_i ... A_(j+1) B_j telescopes to (...) / G_i: one factor at the "
                                  f"output time")
    if rep.coupling and rep.a_time_varying:
        names = ", ".join(rep.coupling)
        return "recurrent", (f"recurrent: {names} scales both the decay in A and the input in B, so the weight of "
                             f"u_j at time i is a product of per-step factors")
    if rep.a_kind == "identity":
        return "none in the recurrence", ("none in the recurrence: A = I, nothing decays; a normaliser can only act "
                                          "at output time (on C / y)")
    return "none shared", "no quantity shared by A and B"


# -- the property list ------------------------------------------------------------------------------------------


def properties(result: CompileResult) -> list[Prop]:
    rep = result.report
    ev = rep.eigen_bound + (f"  {rep.eigen_interval}" if rep.eigen_interval else "")
    a_kind = rep.a_kind + (" (I - rank-1 blocks)" if rep.a_low_rank else "")
    b_key, b_text, b_short = b_input_channels(result)
    c_key, c_text = c_readout(result)
    n_key, n_text = normalisation(result)
    return [
        Prop("A", a_kind, a_kind),
        Prop("A input-dependent", str(rep.a_time_varying), "yes" if rep.a_time_varying else "no",
             short="yes" if rep.a_time_varying else "no"),
        Prop("A axes", "", ", ".join(f"{k}: {', '.join(v) or '-'}" for k, v in rep.a_axes.items()), diff=False),
        Prop("B u", rep.b_form, rep.b_form),
        Prop("B input channels", b_key, b_text, short=b_short),
        Prop("C", rep.c_form, rep.c_form),
        Prop("C readout", c_key, c_text),
        Prop("D", str(rep.d_present), "present" if rep.d_present else "absent (0)",
             short="present" if rep.d_present else "absent (0)"),
        Prop("coupling A/B", ", ".join(rep.coupling) or "none", ", ".join(rep.coupling) or "none"),
        Prop("shared params", ", ".join(rep.coupling_params) or "none", ", ".join(rep.coupling_params) or "none",
             diff=False),
        Prop("normalisation", n_key, n_text),
        Prop("eigenvalues", ev, ev, short=ev.replace("  ", " ")),
        Prop("  why", "", rep.eigen_reason, diff=False),
        Prop("time-invariant", str(rep.time_invariant), "yes" if rep.time_invariant else "no",
             short="yes" if rep.time_invariant else "no"),
        Prop("state", "", f"[{', '.join(rep.state_shape)}]", diff=False),
        Prop("N", rep.state_size, rep.state_size_text, short=rep.state_size_text),
        Prop("state bytes/seq", str(rep.state_bytes_default), f"{rep.state_bytes_default:,} (fp32, default dims)"
             if rep.state_bytes_default is not None else f"grows with T: KV cache of {rep.kv_cache}",
             short=f"{rep.state_bytes_default:,}" if rep.state_bytes_default is not None else "grows with T"),
        Prop("FLOPs/token", f"{rep.flops_per_token:.3g}", f"{rep.flops_per_token:.3g} (default dims)"),
        Prop("family", rep.family, rep.family),
        Prop("  why", "", rep.family_reason, diff=False),
    ]


# -- rendering --------------------------------------------------------------------------------------------------


def _side_by_side(left: list[Prop], right: list[Prop], names: tuple[str, str], width: int) -> list[str]:
    col = max(24, (width - LABEL - 4) // 2)
    out = [f"{'':<{LABEL}}  {names[0]:<{col}}  {names[1]}", f"{'':<{LABEL}}  {'-' * col}  {'-' * col}"]
    for a, b in zip(left, right):
        wa = textwrap.wrap(a.text, col) or [""]
        wb = textwrap.wrap(b.text, col) or [""]
        for k in range(max(len(wa), len(wb))):
            label = a.label if k == 0 else ""
            mark = "*" if (k == 0 and a.diff and a.key != b.key) else " "
            la = wa[k] if k < len(wa) else ""
            lb = wb[k] if k < len(wb) else ""
            out.append(f"{mark}{label:<{LABEL - 1}}  {la:<{col}}  {lb}".rstrip())
    return out


def matrix_text(result: CompileResult, name: str, latex: bool = False) -> str:
    m = result.sym.matrices.get(name)
    if m is None:
        return f"{name} = 0" if not latex else f"{name} = 0"
    if latex:
        rows = ", ".join(sp.latex(s) for s in m.rows)
        cols = ", ".join(sp.latex(s) for s in m.cols)
        return f"{name}_{{({rows}),({cols})}} = {sp.latex(m.entry)}"
    rows = ", ".join(sp.sstr(s) for s in m.rows)
    cols = ", ".join(sp.sstr(s) for s in m.cols)
    return f"{name}[({rows}), ({cols})] = {sp.sstr(m.entry)}"


def differences(left: list[Prop], right: list[Prop]) -> tuple[list[str], list[str]]:
    """(differ, same): one line each, in words."""
    differ, same = [], []
    same_readout = {p.label: p.key for p in left}.get("C readout") == {p.label: p.key for p in right}.get("C readout")
    for a, b in zip(left, right):
        if not a.diff:
            continue
        sa, sb = a.short or a.key, b.short or b.key
        if a.key != b.key:
            line = f"{a.label}: {sa} vs {sb}"
            if a.label == "C" and same_readout:
                line += " (wording of each algorithm; both index forms are I (x) c^T, see C readout)"
            differ.append(line)
        else:
            same.append(f"{a.label}: {sa}")
    return differ, same


def compare_text(a: CompileResult, b: CompileResult, latex: bool = False, width: int = 120) -> str:
    pa, pb = properties(a), properties(b)
    names = (a.sym.model, b.sym.model)
    lines = [f"dsfc compare: {names[0]} ({a.spec.path})  vs  {names[1]} ({b.spec.path})", ""]
    lines.append("== structure (dsfc analyze; N, bytes and FLOPs at each spec's default dims; * = differs)")
    lines += _side_by_side(pa, pb, names, width)
    lines += ["", "== DSF matrices (index form" + (", LaTeX" if latex else "") + ")"]
    pad = max(len(n) for n in names)
    for name in ("A", "B", "C", "D"):
        for k, (r, n) in enumerate(((a, names[0]), (b, names[1]))):
            lines.append(f"{name if k == 0 else ' '}  {n:<{pad}}  {matrix_text(r, name, latex)}")
    differ, same = differences(pa, pb)
    lines += ["", f"== differences ({len(differ)})"]
    lines += [f"- {x}" for x in differ] or ["- none"]
    lines += ["", f"== same ({len(same)})"]
    lines += [f"- {x}" for x in same] or ["- none"]
    return "\n".join(lines)
