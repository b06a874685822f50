"""Found by the thirteenth user hunt (a new user of the spec language, the CLI and the generated modules on inputs
nobody tested: number literals in Python / C forms, names that shadow Python keywords, builtins, torch or nn.Module
attributes, an output path that is the spec itself, shell globs that match nothing, file permissions of rewritten
outputs; modules under threads, hooks, parametrizations, pruning, deferred (meta) initialisation, torch.export with
dynamic sizes, ``torch.compile(fullgraph=True)`` of the module itself, double backward, every backend spelling).
Each test failed before its fix, except ``test_a_name_after_a_space_keeps_the_statement_hint`` (pins what the fix
keeps).

Found and fixed:

- A number in a form the language lacks was "unexpected 'x10' after the end of the statement" with a hint listing
  the statement keywords (``= 0x10``; ``1_000``, ``0b11``, ``0o7``, ``1j``, an exponent without digits ``1e``), or
  "unexpected 'x10'; expected ',', ')'" inside a call; a number directly followed by a name (``2d``, ``2pi``: a
  product as a paper writes it) likewise. They are now "'0x10' is not a spec number" with the decimal to write, or
  "a number directly followed by a name: '2d'" with "write 2 * d", positioned on the whole literal
  (``dsfc.lang.parse._number_then_name``).
- An output path that is one of the input specs replaced the spec with generated text, without a word:
  ``dsfc compile x/m.py -o x`` (a spec saved with a .py suffix), ``dsfc catalog s.dsf -o s.dsf``, an output symlinked
  to the spec (the write follows links), ``dsfc plot m.png -o m.png``. Refused (exit 2) before anything is written
  (``dsfc.cli._overwritten_spec``, by ``os.path.samefile``).
- A glob that matches nothing (``dsfc compile spec/*.dsf``, a typo in the folder) reaches dsfc as the pattern
  itself and was "cannot read spec: No such file or directory": it now also says no file matches the pattern and
  the shell passed it through unexpanded.
- Every write (compile, catalog, plot) set the output file's mode to a fixed 0644: a group-writable generated/ (0664,
  a shared checkout) lost its group write on each compile, a file the user had made read-only became writable,
  and a user with umask 002 got 0644 for new files. An existing file keeps its mode; a new one gets
  ``0666 & ~umask``, as ``open`` gives (``dsfc.codegen.emit.new_file_mode``; plot's PNG followed the umask but
  reset an existing image's mode too).

Found, NOT fixed:

- ``torch.export`` with a dynamic time dimension (``dynamic_shapes={1: Dim("T")}``) fails with torch's
  "Constraints violated (T) ... specialized it to be a constant": the scans unroll their chunk loops over T in
  Python. A dynamic batch exports. The README says "torch.export works at fixed shapes".
- A parameter replaced by one of another shape (``m.D = nn.Parameter(torch.ones(5))``) fails inside the layer with
  torch's broadcast or einsum error, not naming the parameter (as torch's own layers do). (Fixed in the nineteenth
  session: tests/e2e/test_user_hunt_14.py.)
- ``load_state_dict(sd, strict=False)`` from a module of other dims raises torch's size-mismatch error after copying
  the parameters whose shapes match: the module is left half-loaded (torch's behaviour for every nn.Module).
- ``1e-400`` in a spec is 0.0 (an fp64 underflow), without a word; ``1e400`` is refused as infinite. (Fixed in the
  nineteenth session: both are refused at the literal, tests/e2e/test_user_hunt_14.py.)

Checked clean (no change): spec params named ``self``, ``torch``, ``F``, ``math``, ``nn``, ``lambda``, ``super``,
``training``, ``forward``, ``to``, ``cuda``, ``float``, ``state_dict``, ``_parameters``, ``backend`` (renamed with a
``_``, forward equals the reference), ``sum`` / ``exp`` (refused: built-in functions); a comment-only spec; a NUL
byte; ``1e400``; ``dsfc compile`` with no specs; backends ``"TORCH"``, ``""``, ``None``, ``1``, ``b"torch"``
(refused, named), ``np.str_("torch")`` (accepted); T = 0 with an initial state (the same state back) and B = 0 with
a B = 0 state on every catalog module; a call split in two equals one call; eight threads calling one module at
once, with grad and on the compiled no-grad CPU path (T = 4000); forward pre-hooks and full backward hooks;
``torch.nn.utils.parametrize`` and ``prune`` on a parameter, across the compiled no-grad path; ``with
torch.device("meta")`` then ``to_empty`` + ``reset_parameters``; ``torch.export`` at fixed shapes and with a dynamic
batch; ``torch.compile(module, fullgraph=True)`` on a large no-grad input; double backward w.r.t. u (S6, Mamba
block, GLA); bf16 and float64 modules against the reference; a state of another module's dims or another batch
(named); a parameter set to a plain tensor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dsfc.cli import main
from dsfc.codegen.emit import write_atomic
from dsfc.lang.errors import SpecErrors
from dsfc.lang.parse import parse_spec

MINI = """\
model Mini "tiny"
dim d = 4
input u[d]
state h[d]
output y[d]
param a[d] = {value}
param D[d] = 1
A[i, j] = delta(i, j) * a[i]
B[i, k] = delta(i, k)
C[o, i] = delta(o, i)
D[o, k] = delta(o, k) * D[k]
"""


def _spec(value: str = "0.5") -> str:
    return MINI.format(value=value)


# -- 1. number literals the language lacks -----------------------------------------------------------------------------


@pytest.mark.parametrize("value, message, hint", [
    ("0x10", "'0x10' is not a spec number", "write 16"),
    ("0B11", "'0B11' is not a spec number", "write 3"),
    ("0o17", "'0o17' is not a spec number", "write 15"),
    ("1_000", "'1_000' is not a spec number", "write 1000"),
    ("2.5e", "'2.5e' is not a spec number: the exponent has no digits", "2.5e3"),
    ("1j", "'1j' is not a spec number", "no complex numbers"),
    ("2d", "a number directly followed by a name: '2d'", "write 2 * d"),
    ("2D", "a number directly followed by a name: '2D'", "write 2 * D"),  # at the end: Lark's $END
    ("normal(0x10, 1)", "'0x10' is not a spec number", "write 16"),  # inside a call: another parser state
])
def test_a_number_in_a_foreign_form_says_what_to_write(value, message, hint):
    """Was "unexpected 'x10' after the end of the statement" with a hint listing statement keywords."""
    with pytest.raises(SpecErrors) as info:
        parse_spec(_spec(value), "n.dsf")
    (err,) = info.value.errors
    assert err.message == message and hint in err.hint, (err.message, err.hint)
    line = _spec(value).splitlines()[5]
    literal = message.split("'")[1]
    assert err.span.line == 6 and err.span.column == line.index(literal) + 1, err.span  # the caret under the literal


def test_a_name_after_a_space_keeps_the_statement_hint():
    """``= 2 d`` is two tokens, not a number form: still the statement-level error."""
    with pytest.raises(SpecErrors) as info:
        parse_spec(_spec("2 d"), "n.dsf")
    assert "after the end of the statement" in info.value.errors[0].message


# -- 2. the CLI's inputs and outputs -----------------------------------------------------------------------------------


def test_an_output_that_is_the_spec_is_refused(tmp_path, capsys):
    """compile / catalog / plot replaced the user's spec with their output."""
    spec = tmp_path / "mini.py"  # a spec saved with a .py suffix: its module is <out>/mini.py
    spec.write_text(_spec())
    assert main(["compile", str(spec), "-o", str(tmp_path)]) == 2
    assert "is the spec" in capsys.readouterr().err and spec.read_text() == _spec()
    plain = tmp_path / "mini.dsf"
    plain.write_text(_spec())
    assert main(["catalog", str(plain), "-o", str(plain)]) == 2
    link = tmp_path / "catalog.md"
    link.symlink_to(plain)  # the write follows a symlinked output to its target
    assert main(["catalog", str(plain), "-o", str(link)]) == 2
    image = tmp_path / "m.png"
    image.write_text(_spec())
    assert main(["plot", str(image), "-o", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("is the spec") == 3, err
    assert plain.read_text() == _spec() and image.read_text() == _spec()
    assert main(["compile", str(spec), "-o", str(tmp_path / "out")]) == 0  # elsewhere it compiles


def test_a_glob_that_matches_nothing_says_so(tmp_path, capsys):
    pattern = str(tmp_path / "nope" / "*.dsf")
    assert main(["compile", pattern, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no file matches this pattern" in err and "unexpanded" in err, err
    assert not (tmp_path / "out").exists()
    missing = str(tmp_path / "missing.dsf")  # a plain missing path: no pattern to mention
    assert main(["analyze", missing]) == 2
    assert "pattern" not in capsys.readouterr().err


def test_a_rewritten_output_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    """A fixed 0644 dropped a shared checkout's group write (and made read-only files writable)."""
    out = tmp_path / "x.py"
    out.write_text("old")
    for mode in (0o664, 0o444, 0o600):
        os.chmod(out, mode)
        write_atomic(out, "new")
        assert stat.S_IMODE(out.stat().st_mode) == mode and out.read_text() == "new"
    old = os.umask(0o002)
    try:
        write_atomic(tmp_path / "fresh.py", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh.py").stat().st_mode) == 0o664


def test_compile_and_plot_keep_an_outputs_mode(tmp_path):
    spec = tmp_path / "mini.dsf"
    spec.write_text(_spec())
    out = tmp_path / "out"
    assert main(["compile", str(spec), "-o", str(out)]) == 0
    target = Path(out / "mini.py")
    os.chmod(target, 0o664)
    assert main(["compile", str(spec), "-o", str(out)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o664
    pytest.importorskip("matplotlib")
    image = tmp_path / "mini.png"
    assert main(["plot", str(spec), "-o", str(image), "--T", "4"]) == 0
    os.chmod(image, 0o640)
    assert main(["plot", str(spec), "-o", str(image), "--T", "4"]) == 0
    assert stat.S_IMODE(image.stat().st_mode) == 0o640
