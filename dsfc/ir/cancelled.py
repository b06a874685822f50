"""``cancelled_reads(sym) -> warnings``: a param or let the spec reads only in terms that cancel when lowered.

The checker's unused-declaration warning (lang/check.py ``unused_declarations``) reads the spec's text: a param
written into ``w[k] + v[k] - v[k]`` or ``0 * v[k]`` is read there. SymPy folds such terms to 0 as it builds the
expression, so the generated module never reads the param: it was created, initialised, saved and decayed, with a
gradient of None that an optimiser skips, and nothing said so. This pass repeats the read analysis on the lowered
SymSpec and warns, at the declaration, about each param or let the text reads but the lowered layer does not."""

from __future__ import annotations

from ..lang import ast
from ..lang.errors import SpecWarning
from .symspec import SymSpec, read_closure, tensor_names


def lowered_reads(sym: SymSpec) -> set[str]:
    """The names of the params and lets the lowered layer reads (A, B, C, D, the posts, the drive let, through any
    chain of lets)."""
    roots = {p.tensor.name for p in sym.posts} | ({sym.driven.name} if sym.driven is not None else set())
    for m in sym.matrices.values():
        roots |= tensor_names(m.entry)
    return read_closure((*sym.lets, *sym.posts), roots)


def cancelled_reads(sym: SymSpec) -> tuple[SpecWarning, ...]:
    """A warning per param or let that the spec's text reads but the lowered layer does not, unless the checker
    already warned about it (nothing reads it at all) or an ``unused`` statement names it."""
    spec = sym.checked.spec
    marked = {name for s in spec.statements if isinstance(s, ast.UnusedDecl) for name, _ in s.names}
    warned = {w.span for w in sym.checked.warnings}
    read = lowered_reads(sym)
    found = []
    for t in (*(p.tensor for p in sym.params), *(let.tensor for let in sym.lets)):
        if t.name in read or t.name in marked or t.span in warned:
            continue
        what = ("is created and trained, but its gradient is always None" if t.kind == "param" else
                "is computed on every call for nothing")
        found.append(SpecWarning(
            f"{t.kind} {t.name!r} is read only in terms that simplify to 0 (such as x - x or 0 * x): the layer never "
            f"uses it, and it {what}", t.span, spec.path, spec.source,
            hint=f"fix the terms that cancel, or delete them and {t.name!r}"))
    return tuple(found)
