"""docs/language.md stays true: every ``dsf`` example parses, complete specs check, and every error example produces
exactly the output printed under it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dsfc.lang.check import check_spec
from dsfc.lang.errors import SpecErrors
from dsfc.lang.parse import parse_spec
from dsfc.pipeline import compile_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "language.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks():
    blocks = [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]
    out = []
    for k, (lang, body) in enumerate(blocks):
        if lang != "dsf":
            continue
        nxt = blocks[k + 1] if k + 1 < len(blocks) else None
        expected = nxt[1] if nxt and nxt[0] == "text" and nxt[1].startswith("bad.dsf:") else None
        out.append(pytest.param(body, expected, id=f"block{k}"))
    return out


def _is_complete(text: str) -> bool:
    return all(re.search(rf"^\s*{kw}\b", text, re.M) for kw in ("input", "state")) and re.search(
        r"^\s*A\s*\[", text, re.M
    )


@pytest.mark.parametrize("text, expected", _blocks())
def test_doc_example(text, expected):
    if expected is not None:
        with pytest.raises(SpecErrors) as info:  # the whole front end: some errors show only once evaluated
            compile_text(text, "bad.dsf")
        assert info.value.render() == expected.rstrip("\n")
    elif _is_complete(text):
        check_spec(parse_spec(text, "example.dsf"))
    else:
        parse_spec(text, "example.dsf")


def test_doc_has_examples():
    assert len(_blocks()) > 20
