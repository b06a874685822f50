"""Text -> :class:`Spec`: Lark (LALR) parse plus a transformer into the typed AST.

The source is cut into statements at lines that start with a statement keyword, and each piece is parsed on its own,
so one run reports every independent syntax error, not just the first.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .errors import Span, SpecError, SpecErrors

GRAMMAR_PATH = Path(__file__).with_name("grammar.lark")

# A line that opens a statement: a declaration keyword, or a matrix entry ``A[...] =``.
_STATEMENT_START = re.compile(
    r"^\s*(?:(?:model|dim|input|state|output|param|let|readout|post|drive|unused)\b|[ABCD]\s*\[[^\]]*\]\s*=(?!=))"
)

_TOKEN_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a quoted string",
    "MATRIX": "a matrix name (A, B, C or D)",
    "TENSOR_KIND": "'input', 'state' or 'output'",
    "$END": "end of file",
}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(
        GRAMMAR_PATH.read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def _describe_terminal(name: str) -> str:
    if name in _TOKEN_NAMES:
        return _TOKEN_NAMES[name]
    try:
        pattern = _parser().get_terminal(name).pattern
    except KeyError:
        return name
    if pattern.type == "str":
        return repr(pattern.value)
    return name.lower()


# Binary operators can follow any complete expression; listing them one by one would crowd out what is missing
# (a ']' or ')'), so they are summarised as "an operator".
_OPERATOR_TEXT = {"+", "-", "*", "/", "//", "%", "^", "**"}


def _is_operator(name: str) -> bool:
    try:
        pattern = _parser().get_terminal(name).pattern
    except KeyError:
        return False
    return pattern.type == "str" and pattern.value in _OPERATOR_TEXT


def _describe_expected(expected) -> str:
    expected = set(expected)
    operators = {t for t in expected if _is_operator(t)}
    # '+' and '-' also open an expression (unary sign); only summarise when the binary operators are expected too
    if len(operators) > 2:
        names = sorted({_describe_terminal(t) for t in expected - operators}) + ["an operator"]
    else:
        names = sorted({_describe_terminal(t) for t in expected})
    if len(names) > 10:
        names = names[:10] + ["..."]
    return ", ".join(names)


def _end_span(tok, text: str) -> Span:
    """Where a statement stopped short: just after its last token (Lark gives $END the last token's position)."""
    if getattr(tok, "end_line", None) and getattr(tok, "end_column", None):
        return Span(tok.end_line, tok.end_column)
    lines = text.rstrip().splitlines() or [""]
    return Span(len(lines), len(lines[-1]) + 1)


# characters that a word processor, a PDF or a paper's formula puts where the spec wants an ASCII operator
_LOOKALIKES = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-", "\u00d7": "*", "\u22c5": "*",
    "\u00b7": "*", "\u2219": "*", "\u2217": "*", "\u00f7": "/", "\u2215": "/", "\u2044": "/", "\uff08": "(",
    "\uff09": ")", "\uff0c": ",", "\uff1d": "=", "\uff3b": "[", "\uff3d": "]", "\uff1a": ":",
    # a description pasted from a word processor: model S6 \u201c...\u201d (was "names are ASCII letters")
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\uff02": '"',
}


def _character_hint(ch: str) -> str:
    """The hint of an unexpected character: the ASCII operator it looks like, or what names may hold (non-ASCII
    letters such as 'β' were told "names are letters", which they are)."""
    if ch in _LOOKALIKES:
        return f"{ch!r} (U+{ord(ch):04X}) is not {_LOOKALIKES[ch]!r}: type the ASCII {_LOOKALIKES[ch]!r}"
    if ch.isdigit() and not ch.isascii():
        return f"{ch!r} (U+{ord(ch):04X}) is a non-ASCII digit: numbers are written with 0-9"
    if ch.isalpha() and not ch.isascii():
        return f"{ch!r} (U+{ord(ch):04X}) is not an ASCII letter: names are ASCII letters, digits and '_'"
    if ch in "'\u2018\u2019":  # model S6 'a description', or a prime (h')
        return (f"{ch!r} is not part of the language: a description is written in double quotes (model S6 \"...\"); "
                "a name cannot hold a prime (for x' write x2, or prev(x) for a let's value at the step before)")
    if ch in "<>!":
        return (f"{ch!r}: the language has no comparisons (<, >, <=, >=, !=); for integer indices write n > k as "
                "min(max(n - k, 0), 1) and n == k as delta(n, k)")
    if ch.isspace() or ch in ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"):
        return f"U+{ord(ch):04X} is an invisible or non-ASCII space (pasted text?): delete it or type a space"
    return "names are ASCII letters, digits and '_'; comments start with '#'"


# A word that starts as a number and runs on into letters or '_': the lexer reads Python's 0x10 as the number 0 and
# then a name x10 (0B11 as 0, the matrix name B, 11)
_NUMBER_HEAD = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_WORD_CHAR = re.compile(r"[A-Za-z0-9_.]")


def _number_then_name(tok, text: str) -> SpecError | None:
    """A number written in a form the language lacks (``0x10``, ``0b11``, ``1_000``, ``1e``, ``1j``) or a number
    directly followed by a name (``2d``, ``2pi``) at the unexpected token ``tok``, or None. Lark saw a number, then
    an unexpected name, and said "unexpected 'x10' after the end of the statement" with a hint about keywords."""
    start = getattr(tok, "start_pos", None)
    if start is None:  # ($END carries the last token's position: `= 2D` ends on the matrix name D)
        return None
    end = start
    while start > 0 and _WORD_CHAR.match(text[start - 1]):
        start -= 1
    while end < len(text) and _WORD_CHAR.match(text[end]):
        end += 1
    literal = text[start:end]
    head = _NUMBER_HEAD.match(literal)
    if head is None or head.end() == len(literal) or not re.match(r"[A-Za-z_]", literal[head.end()]):
        return None
    number, rest = head.group(), literal[head.end():]
    column = tok.column - (tok.start_pos - start)
    span = Span(tok.line, column, tok.line, column + len(literal))
    if re.fullmatch(r"0(?:[xX][0-9a-fA-F_]+|[bB][01_]+|[oO][0-7_]+)", literal):
        return SpecError(f"{literal!r} is not a spec number", span,
                         hint=f"numbers are decimal (0-9, '.', an exponent e3): write {int(literal, 0)}")
    if "_" in literal and re.fullmatch(r"[0-9_.]+(?:[eE][+-]?[0-9_]*)?", literal):
        return SpecError(f"{literal!r} is not a spec number", span,
                         hint=f"numbers have no '_' digit separators: write {literal.replace('_', '')}")
    if rest in ("e", "E"):
        return SpecError(f"{literal!r} is not a spec number: the exponent has no digits", span,
                         hint=f"write it as {number}e3, {number}e-3, ...")
    if rest in ("j", "J"):
        return SpecError(f"{literal!r} is not a spec number", span,
                         hint="there are no complex numbers: write a complex mode as a real 2 x 2 rotation block "
                         "(specs/lru.dsf)")
    return SpecError(f"a number directly followed by a name: {literal!r}", span,
                     hint=f"a product needs '*': write {number} * {rest}")


def _short_statement_hint(text: str, span: Span, expected) -> str | None:
    """The hint for a statement that stopped short, or None. ``dim d`` without a value was only "unexpected end of
    statement; expected '='", though a user who meant "d is set by the caller" (``--dims d=4``, ``Model(d=4)``) needs
    to know that every dim has a default in the spec."""
    lines = text.splitlines()
    line = lines[span.line - 1] if 0 < span.line <= len(lines) else ""
    words = line.split("#", 1)[0].split()  # a trailing comment is no part of it
    if "EQUAL" in expected and len(words) == 2 and words[0] == "dim":
        return (f"every dim has a value in the spec: write dim {words[1]} = 64 (a free dim's value is its default, "
                f"which the module's constructor argument {words[1]}=... and --dims {words[1]}=... override)")
    return None


def _syntax_error(exc: UnexpectedInput, text: str) -> SpecError:
    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        if ch == '"':
            return SpecError(
                "unterminated string",
                Span(exc.line, exc.column, exc.line, exc.column + 1),
                hint='a description string opens and closes on the same line: model S6 "..."',
            )
        hint = _character_hint(ch)
        if ch == "\\":  # Python's and the shell's line continuation, or a division typed the other way round
            rest = text[exc.pos_in_stream + 1:].split("\n", 1)[0].split("#", 1)[0]
            hint = ("a statement needs no '\\' to continue: every line that does not start a new statement (a "
                    "keyword or A/B/C/D[...] =) continues the one before; delete the '\\'" if not rest.strip()
                    else "'\\' is not an operator: division is '/', floor division '//'")
        return SpecError(
            f"unexpected character {ch!r}",
            Span(exc.line, exc.column, exc.line, exc.column + 1),
            hint=hint,
        )
    if isinstance(exc, UnexpectedEOF):
        span = _end_span(None, text)
        return SpecError(f"unexpected end of statement; expected {_describe_expected(exc.expected)}", span,
                         hint=_short_statement_hint(text, span, exc.expected))
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    foreign = _number_then_name(tok, text)
    if foreign is not None:
        return foreign
    expected = exc.accepts or exc.expected
    if tok.type == "$END":
        span = _end_span(tok, text)
        return SpecError(f"unexpected end of statement; expected {_describe_expected(expected)}", span,
                         hint=_short_statement_hint(text, span, expected))
    span = Span(tok.line, tok.column, tok.end_line, tok.end_column)
    if "$END" in expected and "EQUAL" not in expected:
        # the statement before tok is complete; what follows must be a new statement. (A param without an
        # initialiser is complete too, but there '=' or '~' may be what was meant, so the list is more useful.)
        from .check import _similar  # check imports parse

        starts = ("model", "dim", "input", "state", "output", "param", "let", "post", "drive", "readout", "unused", "A",
                  "B", "C", "D")
        line = text.splitlines()[tok.line - 1] if tok.line <= len(text.splitlines()) else ""
        first = tok.type == "NAME" and not line[: tok.column - 1].strip()
        close = [k for k in starts if _similar(k, str(tok))] if first else []
        before = line[: tok.column - 1].rstrip()
        code = line[: tok.column - 1] + line[tok.column - 1:].split("#", 1)[0]  # without a comment after tok
        if before.lstrip().startswith("model") and before.endswith('"') and code.count('"') > 2:
            # model S6 "a \"quoted\" word": the description ended at its second '"' (there is no escape); the
            # hint listed the statement keywords
            return SpecError(f"unexpected {str(tok)!r} after the end of the statement", span,
                             hint="the description ended at its second '\"': it cannot contain '\"' (there is no "
                             "escape); use ' or \u201c \u201d inside it")
        # a misspelt keyword (parm, lte) or a lower-case matrix (a[...] = ...) reads as a continuation of the line
        # before: name what was probably meant
        return SpecError(
            f"unexpected {str(tok)!r} after the end of the statement",
            span,
            hint=(f"did you mean {close[0]!r}? " if close else "") + "each statement starts with a keyword (model, "
            "dim, input, state, output, param, let, post, drive, readout, unused) or a matrix entry such as "
            "A[...] = ...",
        )
    return SpecError(f"unexpected {str(tok)!r}; expected {_describe_expected(expected)}", span)


# How deeply one statement may nest operators, calls and sums. The analysis, SymPy (differentiation for the Triton
# backward kernels, printing) and the reference all recurse over an expression, a few Python frames per level; past
# this depth they would hit Python's recursion limit. Split a longer expression with lets.
MAX_NESTING = 64


def _too_deep(tree) -> SpecError | None:
    """A positioned error when ``tree`` nests deeper than MAX_NESTING (walked without recursion), else None."""
    stack = [(tree, 0, tree)]
    while stack:
        node, depth, top = stack.pop()
        if depth > MAX_NESTING:
            return SpecError(  # at the outermost expression of the statement that holds the deep part
                f"expression is nested too deeply (more than {MAX_NESTING} levels of operators, calls and sums)",
                _span(top.meta),
                hint="split it into lets: let z[...] = <part>, then use z (a long chain a + b + c + ... counts one "
                "level per operator)",
            )
        # depth 0: start, 1: the statement, 2: its outermost parts (an expression, an axis list, ...)
        # (argument and axis lists are not levels of their own: f(x) is one level)
        step = 0 if node.data in ("arg_list", "axis_list") else 1
        stack.extend((child, depth + step, child if depth == 1 else top) for child in node.children
                     if isinstance(child, Tree))
    return None


def _position(text: str, offset: int) -> Span:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return Span(line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def _binary_error(text: str, path: str) -> SpecErrors:
    at = text.index("\x00")
    return SpecErrors(
        [SpecError("file is binary, not a spec (contains NUL bytes)", _position(text, at))],
        path,
        text.replace("\x00", "\ufffd"),
    )


def _utf16_without_bom(data: bytes) -> str | None:
    """``"utf-16-le"`` or ``"utf-16-be"`` where the file's first bytes are ASCII text in UTF-16 (every other byte
    NUL, the others not), else None."""
    head = data[:256]
    head = head[: len(head) - len(head) % 2]
    if len(head) < 4:
        return None
    even, odd = head[0::2], head[1::2]
    for order, text, zeros in (("utf-16-le", even, odd), ("utf-16-be", odd, even)):
        if zeros == bytes(len(zeros)) and all(0 < b < 128 for b in text):
            return order
    return None


def _check_text(data: bytes | str, path: str) -> str:
    if isinstance(data, bytes):
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # was "file is binary (contains NUL bytes)" and a line of noise
            text = data.decode("utf-16", "replace").replace("\x00", "\ufffd")
            raise SpecErrors([SpecError("file is UTF-16 text (it starts with a UTF-16 byte-order mark); dsfc reads "
                                        "UTF-8: save it as UTF-8", Span(1, 1))], path, text)
        order = _utf16_without_bom(data)
        if order:  # was "file is binary (contains NUL bytes)": UTF-16 saved without a byte-order mark
            text = data.decode(order, "replace").replace("\x00", "\ufffd")
            raise SpecErrors([SpecError(f"file is UTF-16 text ({order.upper()}, without a byte-order mark); dsfc reads "
                                        "UTF-8: save it as UTF-8", Span(1, 1))], path, text)
        if b"\x00" in data:
            raise _binary_error(data.decode("utf-8", "replace"), path)
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            prefix = data[: exc.start].decode("utf-8", "replace")
            message = f"file is not UTF-8 text (invalid byte 0x{data[exc.start]:02x})"
            raise SpecErrors(
                [SpecError(message, _position(prefix, len(prefix)))], path, data.decode("utf-8", "replace")
            ) from None
    if "\x00" in data:
        raise _binary_error(data, path)
    # a byte-order mark is an encoding detail some editors add, not part of the text
    data = data.removeprefix("\ufeff")
    # a lone CR (classic Mac line ends) ends a line too: only "\n" counts as one for the parser's line numbers and
    # for comments, so a comment would otherwise run to the end of the file. One character for one: every offset,
    # and so every error position, stays that of the file (CRLF needs nothing: the CR is whitespace before the LF)
    return re.sub(r"\r(?!\n)", "\n", data)


def _split_statements(text: str) -> list[tuple[int, str]]:
    """Cut the source at statement-opening lines; returns (first line index, chunk text) pairs."""
    # only "\n" ends a line, as for Lark's line numbers (str.splitlines would also cut at form feeds, \u2028, ...)
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    starts = [i for i, line in enumerate(lines) if _STATEMENT_START.match(line)]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    chunks = []
    for a, b in zip(starts, starts[1:] + [len(lines)]):
        chunks.append((a, "".join(lines[a:b])))
    return chunks


# A line that looks like a statement whose keyword is misspelt (``lte a[c: d] = ...``, ``parm w[d] ...``) or whose
# matrix is lower-case (``a[i, k] = ...``). The splitter cannot cut there (it would cut at any name), so such a line
# continues the statement before it; _resume_after_misspelt_start cuts there once the parser has failed on such a line.
_MISSPELT_START = re.compile(r"^\s*(?:([A-Za-z_]\w*)\s+[A-Za-z_]|[abcd]\s*\[[^\]]*\]\s*=(?!=))")
_STATEMENT_KEYWORDS = ("model", "dim", "input", "state", "output", "param", "let", "readout", "post", "drive", "unused")


def _looks_like_misspelt_start(line: str) -> bool:
    from .check import _similar  # check imports parse

    m = _MISSPELT_START.match(line)
    return m is not None and (m.group(1) is None or any(_similar(k, m.group(1)) for k in _STATEMENT_KEYWORDS))


def _resume_after_misspelt_start(exc: UnexpectedInput, first_line: int, chunk: str) -> tuple[int, str] | None:
    """Where to parse on after a syntax error at the first token of a line (a misspelt keyword, a lower-case matrix):
    the next line of the chunk that again looks like a misspelt statement start, as its own chunk, or None.

    Without this, two such lines in a row (``parm w[d] ...`` then ``lte a[...] = ...``) were one chunk, so one run
    reported only the first and the user met the second after fixing it. Lines between the two are the broken
    statement's continuation and are skipped, not parsed on their own (they would give errors of their own)."""
    tok = getattr(exc, "token", None)
    if not isinstance(exc, UnexpectedToken) or tok is None or tok.type == "$END":
        return None
    lines = chunk.split("\n")
    at = tok.line - 1 - first_line  # the failing token's line within the chunk
    if not 0 <= at < len(lines) or lines[at][: tok.column - 1].strip():
        return None  # not the first token of its line: an ordinary error inside a statement
    for k in range(at + 1, len(lines)):
        if _looks_like_misspelt_start(lines[k].split("#")[0]):
            return first_line + k, "\n".join(lines[k:])
    return None


def parse_spec(data: bytes | str, path: str = "<spec>") -> ast.Spec:
    """Parse spec text into an :class:`ast.Spec`; raises :class:`SpecErrors` listing every syntax error."""
    text = _check_text(data, path)
    errors: list[SpecError] = []
    statements: list = []
    chunks = _split_statements(text)
    while chunks:
        first_line, chunk = chunks.pop(0)
        padded = "\n" * first_line + chunk
        try:
            tree = _parser().parse(padded)
            deep = _too_deep(tree)
            if deep is not None:
                errors.append(deep)
                continue
            statements.extend(_ToAst().transform(tree))
        except UnexpectedInput as exc:
            errors.append(_syntax_error(exc, padded))
            resume = _resume_after_misspelt_start(exc, first_line, chunk)
            if resume is not None:
                chunks.insert(0, resume)
        except VisitError as exc:
            if isinstance(exc.orig_exc, SpecError):
                errors.append(exc.orig_exc)
            else:
                raise
    if errors:
        raise SpecErrors(errors, path, text)
    return ast.Spec(path=path, source=text, statements=tuple(statements))


# A spec is a short text file (the catalog's largest is ~3 kB). Reading a path whole had no bound: `dsfc analyze
# /dev/zero` (or /dev/urandom, or a multi-GB log given by mistake) read until the machine ran out of memory, then said
# "out of memory; use smaller sizes".
MAX_SPEC_BYTES = 4 << 20


def parse_file(path: str | Path) -> ast.Spec:
    p = Path(path)
    if not str(path):  # Path("") is ".": an empty argument read as the current directory ("Is a directory")
        raise SpecErrors([SpecError("cannot read spec: the path is empty", Span(1, 1))], "''", None)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecErrors([SpecError(
                f"cannot read spec: it is larger than {MAX_SPEC_BYTES >> 20} MiB (a spec is a short text file; is "
                "this the right path?)", Span(1, 1))], str(path), None)
    except OSError as exc:
        # no source: SpecErrors.render prints one line, not an empty excerpt and a caret at 1:1
        reason = exc.strerror
        if p.is_dir():  # `dsfc compile specs/` was a bare "Is a directory"
            reason += f" (give its specs, e.g. {p / '*.dsf'})"
        elif not p.exists() and any(c in str(path) for c in "*?["):
            # `dsfc compile spec/*.dsf` (a typo in the folder) reached dsfc as the pattern itself: the shell passes a
            # pattern that matches nothing through unchanged, so "No such file or directory" named no real path
            reason += " (no file matches this pattern; the shell passed it through unexpanded)"
        elif str(path) == "-" and not p.exists():
            # the usual spelling of "read standard input": a spec needs a file, whose name names the module
            reason += " ('-' is not standard input here: save the spec to a file and give its path)"
        raise SpecErrors([SpecError(f"cannot read spec: {reason}", Span(1, 1))], str(path), None) from None
    return parse_spec(data, str(path))


def _span(meta) -> Span:
    return Span.from_meta(meta)


def _real_number(text: str, span: Span) -> float:
    """A real literal as float64, refusing one that float64 cannot hold: ``1e400`` was "not a finite real number: it
    is infinite" (as if the spec divided by zero), and ``1e-400`` silently 0.0 (a decay rate, a bias or an
    initialiser's std that vanished). A subnormal (``1e-310``) is kept: it is the literal's value, to a few digits."""
    value = float(text)
    if math.isinf(value):
        raise SpecError(f"number {text!r} is too large for float64 (at most about 1.8e308)", span)
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):  # a nonzero mantissa, not 0e-500
        raise SpecError(f"number {text!r} is too small for float64: it would be 0.0 (the smallest float64 is about "
                        "4.9e-324)", span, hint="write 0 if zero is meant")
    return value


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark parse tree -> AST dataclasses. Only structure here; meaning is checked in check.py."""

    def start(self, meta, stmts):
        return list(stmts)

    # -- declarations ------------------------------------------------------------------------------------------
    def model_decl(self, meta, children):
        name, desc = children
        return ast.ModelDecl(str(name), str(desc)[1:-1] if desc is not None else "", _span(meta))

    def dim_decl(self, meta, children):
        name, value = children
        return ast.DimDecl(str(name), value, _span(meta))

    def tensor_decl(self, meta, children):
        kind, name, axes = children
        return ast.TensorDecl(str(kind), str(name), tuple(axes), _span(meta))

    def param_decl(self, meta, children):
        name, axes, init = children
        return ast.ParamDecl(str(name), tuple(axes or ()), init, _span(meta))

    def let_decl(self, meta, children):
        name, axes, expr = children
        return ast.LetDecl(str(name), tuple(axes or ()), expr, _span(meta))

    def matrix_def(self, meta, children):
        matrix, rows, cols, expr = children
        return ast.MatrixDef(str(matrix), rows, cols, expr, _span(meta))

    def post_decl(self, meta, children):
        name, axes, expr = children
        return ast.PostDecl(str(name), tuple(axes or ()), expr, _span(meta))

    def drive_decl(self, meta, children):
        (name,) = children
        return ast.DriveDecl(str(name), _span(meta))

    def unused_decl(self, meta, children):
        return ast.UnusedDecl(tuple((str(name), Span.from_token(name)) for name in children), _span(meta))

    def readout_decl(self, meta, children):
        (mode,) = children
        if str(mode) not in ("pre", "post"):
            raise SpecError(
                f"unknown readout {str(mode)!r}; expected 'pre' (y_t = C h_(t-1) + D u_t) or 'post'",
                Span.from_token(mode),
            )
        return ast.ReadoutDecl(str(mode), _span(meta))

    def axis_list(self, meta, axes):
        return list(axes)

    def named_axis(self, meta, children):
        name, extent = children
        return ast.Axis(str(name), extent, _span(meta))

    def anon_axis(self, meta, children):
        (extent,) = children
        return ast.Axis(None, extent, _span(meta))

    def single_index(self, meta, children):
        return tuple(ast.IndexVar(str(t), Span.from_token(t)) for t in children)

    tuple_index = single_index

    def init_expr(self, meta, children):
        (expr,) = children
        return ast.InitExpr(expr, _span(meta))

    def init_dist(self, meta, children):
        name, args = children
        return ast.InitDist(str(name), tuple(args or ()), _span(meta))

    # -- expressions -------------------------------------------------------------------------------------------
    def number(self, meta, children):
        (tok,) = children
        text = str(tok)
        if re.fullmatch(r"[0-9]+", text):
            if len(text.lstrip("0")) > 308:  # beyond float64 (and Python's int-from-text limit at 4300 digits)
                raise SpecError(f"number {text[:12]}... ({len(text)} digits) is too large for float64", _span(meta))
            value = int(text)
        else:
            value = _real_number(text, _span(meta))
        return ast.Num(value, span=_span(meta))

    def name(self, meta, children):
        (tok,) = children
        return ast.Name(str(tok), span=_span(meta))

    def index(self, meta, children):
        name, args = children
        for a in args:
            if isinstance(a, tuple):
                raise SpecError("a binder 'k: extent' is only allowed as the first argument of sum", a[2])
        return ast.Index(str(name), tuple(args), span=_span(meta))

    def call(self, meta, children):
        name, args = children
        args = list(args or [])
        if str(name) == "sum":
            if len(args) != 2:
                raise SpecError(
                    f"sum takes 2 arguments (index, body), got {len(args)}",
                    _span(meta),
                    hint="write sum(k: d, W[c, k] * u[k]) or sum(k, W[c, k] * u[k])",
                )
            var, body = args
            if isinstance(var, tuple):
                var_name, extent, _ = var
            elif isinstance(var, ast.Name):
                var_name, extent = var.name, None
            else:
                raise SpecError("the first argument of sum must be an index name, e.g. sum(k: d, ...)", var.span)
            if isinstance(body, tuple):
                raise SpecError("a binder 'k: extent' is only allowed as the first argument of sum", body[2])
            return ast.SumOver(var_name, extent, body, span=_span(meta))
        for a in args:
            if isinstance(a, tuple):
                raise SpecError("a binder 'k: extent' is only allowed as the first argument of sum", a[2])
        return ast.Call(str(name), tuple(args), span=_span(meta))

    def binder(self, meta, children):
        name, extent = children
        return (str(name), extent, _span(meta))

    def arg_list(self, meta, args):
        return list(args)

    def _bin(op):
        def build(self, meta, children):
            left, right = children
            return ast.BinOp(op, left, right, span=_span(meta))

        return build

    add = _bin("+")
    sub = _bin("-")
    mul = _bin("*")
    div = _bin("/")
    floordiv = _bin("//")
    mod = _bin("%")
    pow = _bin("^")
    del _bin

    def neg(self, meta, children):
        (operand,) = children
        return ast.Neg(operand, span=_span(meta))
