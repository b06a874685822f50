"""Source positions and user-facing spec errors.

Every mistake in a spec becomes a :class:`SpecError` carrying a :class:`Span`; the CLI renders it as
``path:line:col: error: message`` followed by the source line and a caret, and exits with code 2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range in a spec file."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    @staticmethod
    def from_meta(meta) -> "Span":
        if getattr(meta, "empty", False) or not hasattr(meta, "line"):
            return Span(1, 1)
        return Span(meta.line, meta.column, meta.end_line, meta.end_column)

    @staticmethod
    def from_token(tok) -> "Span":
        return Span(tok.line, tok.column, tok.end_line, tok.end_column)


NOWHERE = Span(1, 1)


class SpecError(Exception):
    """One user mistake in a spec, located by a span."""

    def __init__(self, message: str, span: Span = NOWHERE, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"SpecError({self.message!r}, {self.span!r})"


class SpecErrors(Exception):
    """Several independent mistakes found in one run, in source order."""

    def __init__(self, errors: list[SpecError], path: str = "<spec>", source: str | None = ""):
        errors = sorted(errors, key=lambda e: (e.span.line, e.span.column))
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors
        self.path = path
        self.source = source

    def render(self) -> str:
        return "\n".join(render_error(e, self.path, self.source) for e in self.errors)


class SpecWarning(UserWarning):
    """Something in a spec that compiles but is probably a mistake (a param nothing reads), located by a span.

    Issued with ``warnings.warn`` by ``check_spec``; its text is the rendered ``path:line:col: warning: ...`` block,
    so Python's own warning display and the CLI (which prints each one once) both show where it is."""

    def __init__(self, message: str, span: Span, path: str, source: str | None, hint: str | None = None):
        self.message, self.span, self.path, self.source, self.hint = message, span, path, source, hint
        super().__init__(render_error(SpecError(message, span, hint), path, source, kind="warning"))


class NotADSFError(SpecError):
    """The spec describes a system whose matrices depend on the state: not a DSF."""


EXCERPT_WIDTH = 100  # source characters shown of a longer line


def render_error(err: SpecError, path: str, source: str | None, kind: str = "error") -> str:
    """Format an error the way compilers do: location, message, source line, caret.

    ``source`` None: there is no source (the file could not be read): the one line ``path: error: message``, where
    an empty excerpt line and a caret under nothing followed ``path:1:1:`` for a missing file or a directory."""
    if source is None:
        return f"{path}: {kind}: {err.message}" + (f"\n  hint: {err.hint}" if err.hint else "")
    line_no, col = err.span.line, err.span.column
    lines = [line.removesuffix("\r") for line in source.split("\n")]  # the lines Lark counts
    out = [f"{path}:{line_no}:{col}: {kind}: {err.message}"]
    # an empty file, or an error just past the last line, still gets its (empty) source line and a caret
    text = lines[line_no - 1] if 1 <= line_no <= len(lines) else ""
    # one character per column, and nothing that a terminal would interpret (tabs, escapes, binary garbage)
    text = "".join(" " if ch == "\t" else ch if ch.isprintable() else "\ufffd" for ch in text)
    width = 1
    if err.span.end_line == line_no and err.span.end_column and err.span.end_column > col:
        width = err.span.end_column - col
    # a long line (a 3000-term sum, a binary file's first "line") is cut to a window around the column, marked by
    # "..." at each cut: printed whole it filled screens, with a caret underline as long
    start = 0
    if len(text) > EXCERPT_WIDTH:
        start = min(max(0, col - 1 - EXCERPT_WIDTH // 3), len(text) - EXCERPT_WIDTH)
        end = start + EXCERPT_WIDTH
        text = ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")
        start -= 3 if start else 0
        width = max(1, min(width, end - (col - 1)))
    out.append(f"    {text}")
    out.append("    " + " " * (col - 1 - start) + "^" + "~" * (width - 1))
    if err.hint:
        out.append(f"  hint: {err.hint}")
    return "\n".join(out)
