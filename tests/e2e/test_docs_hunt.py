"""Documentation hunt (session 18d): README.md and docs/language.md read as a new user, every command and example run.

Run (scratch dir, small dims), all as documented unless listed below: the tour's `dsfc analyze` (table, --json,
--latex), `compile`, `check` (and `--dims d=3 d=4`, refused), `compare`, `plot`; `dsfc bench` with `--dims -T
--memory` at small dims; every complete ``dsf`` block of docs/language.md through `python -m dsfc compile` (the
GatedDecay intro, normalised linear attention, the Taylor-feature spec, the S6 walk-through; the last two equal
specs/linear_attention_normalized.dsf and specs/s6.dsf without comments) and `dsfc analyze` of the normalised linear
attention (its eigenvalue "not proven <= 1 (0, inf)" as the doc says); every error claim by writing the bad file:
empty / comment-only / NUL / Latin-1 / UTF-16 / missing path / directory, the two warnings (a never-read param, a
param only in cancelling terms), `unused` naming a read param, `my-spec.dsf -> my_spec.py`, `__init__.dsf` refused,
`torch.dsf -> torch_.py`, `compile -`, `-o ""`, `--width 0`, `--seed 2**64`, a reader going away (`| head -1`), the
`did you mean` hints (sigmod, cumsom, tayler in an extent, parm, lte, a lower-case matrix) and two pasted models.
(The doc's ``bad.dsf`` error blocks are compared text-for-text by tests/lang/test_language_doc.py, the README's
blocks by tests/e2e/test_readme.py.)

Found and fixed:
- Two misspelt statement starts in a row (`parm w[d] ...` then `lte a[...] = ...`, or a lower-case matrix line after
  either) gave one error: such a line cannot open a statement for the splitter, so it continued the one before, and
  the parser stopped at its first failure. The user met the second only after fixing the first, although
  docs/language.md promises one error per broken statement. The parser (dsfc/lang/parse.py) now resumes after such
  an error at the next line of the chunk that looks like a misspelt start, skipping the broken statement's
  continuation lines, which are not parsed on their own (no spurious errors).
- docs/language.md's `drive` section quoted the error for `drive u` (the input), which is accepted (the default driven
  signal): the doc now quotes a param, and says the input is allowed. A `post` reading a later post is the error shown.
"""

from __future__ import annotations

import pytest

from dsfc.lang.errors import SpecErrors
from dsfc.lang.parse import parse_spec

GOOD = """model G "g"
dim d = 4
input u[d]
state h[c: d]
output y[d]
param w[d] ~ normal(0, 0.02)
let a[c: d] = sigmoid(w[c] * u[c])
A[i, k] = delta(i, k) * a[i]
B[i, k] = delta(i, k)
C[o, k] = delta(o, k)
"""


def _errors(text: str) -> list[tuple[int, str]]:
    with pytest.raises(SpecErrors) as info:
        parse_spec(text, "bad.dsf")
    return [(e.span.line, e.message) for e in info.value.errors]


def _misspelt(*pairs: tuple[str, str]) -> str:
    text = GOOD
    for old, new in pairs:
        assert old in text
        text = text.replace(old, new, 1)
    return text


def test_good_spec_parses():
    parse_spec(GOOD, "good.dsf")


@pytest.mark.parametrize("pairs, lines", [
    ((("param w", "parm w"), ("let a", "lte a")), [6, 7]),
    ((("param w", "parm w"), ("let a", "lte a"), ("A[i", "a[i")), [6, 7, 8]),
    ((("let a", "lte a"), ("A[i", "a[i"), ("C[o", "c[o")), [7, 8, 10]),
])
def test_each_misspelt_start_in_a_row_is_reported(pairs, lines):
    errs = _errors(_misspelt(*pairs))
    assert [line for line, _ in errs] == lines, errs
    assert all("after the end of the statement" in msg for _, msg in errs), errs


def test_continuation_lines_of_a_misspelt_statement_give_no_error_of_their_own():
    """A multi-line let with a misspelt keyword is one error: its continuation lines (a sum, a `+ b[c]`, a name such
    as `c` opening a line) are skipped, not parsed as statements of their own."""
    text = GOOD.replace("let a[c: d] = sigmoid(w[c] * u[c])",
                        "lte a[c: d] =\n    sum(k: d, w[k] * u[k])\n  + w[c]\n    * c[0]")
    assert [line for line, _ in _errors(text)] == [7]


def test_an_error_inside_a_statement_does_not_resume():
    """Only an error at a line's first token resumes: `B[i, k] = delta(i k)` then a misspelt line is one error, at the
    missing comma (the misspelt line is read as the broken statement's continuation, as before)."""
    text = GOOD.replace("B[i, k] = delta(i, k)", "B[i, k] = delta(i k)\nlte z = 1")
    errs = _errors(text)
    assert len(errs) == 1 and errs[0][0] == 9, errs


def test_drive_names_a_let_or_the_input_as_the_doc_says():
    """docs/language.md showed `'drive' must name a let ..., got 'u'` for the input, which the checker accepts (the
    default driven signal); the doc now shows a param, and says the input is allowed."""
    from dsfc.lang.check import check_spec

    check_spec(parse_spec(GOOD + "drive u\n", "good.dsf"))
    with pytest.raises(SpecErrors) as info:
        check_spec(parse_spec(GOOD + "drive w\n", "bad.dsf"))
    assert [e.message for e in info.value.errors] == [
        "'drive' must name a let (the signal B and D multiply), got 'w', which is a param"]
