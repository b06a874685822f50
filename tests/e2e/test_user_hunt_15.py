"""Found by the fifteenth user hunt (a new user of the spec language, the CLI and the generated modules on inputs
nobody tested, starting from the two items round 14 left open: a non-bool ``model.check_finite`` and a param nothing
reads). Each test failed before its fix, except those that pin what a fix keeps (the shipped specs stay silent, a
marked name stays silent, a right state dict still reaches driven_input).

Found and fixed:

- (Round 14's open item.) ``model.check_finite = "no"`` (or ``0.0``, a tensor) kept the NaN checks on by Python's
  truth rules. Every call now refuses a non-bool with "S6: check_finite must be True or False, got str 'no'"
  (``check_flag`` at the top of the generated ``_check_input``; also under torch.compile).
- (Round 14's open item.) A param that A, B, C, D, the posts and the drive let never read (directly or through
  lets) was silently created, initialised and trained with a zero gradient; a let nothing reads was computed on
  every call. ``check_spec`` now issues a ``dsfc.lang.errors.SpecWarning`` per such name through
  ``warnings.warn``, rendered ``path:line:col: warning: ...`` with the source line, a caret and a hint; the CLI
  prints each once (``compile``, ``check``, ``analyze``, ``catalog``, ``plot``, ``compare``) and still exits 0.
  The new statement ``unused NAME, ...`` marks names as deliberate (a checkpoint's keys); naming a read,
  undeclared or non-param/let name there is an error, so the statement cannot go stale.
- ``model M "C:\\new\\Nope"``: the description went raw into the generated docstrings, and ``\\N`` made the
  module a SyntaxError on import ("malformed \\N character escape"); a form feed or ESC went in raw. Backslashes
  are doubled and control characters escaped (``dsfc.codegen.emit.docstring_text``).
- A spec file whose name holds a newline split the ``# Generated ... from`` comment in two: "dsfc compile:
  internal error: ... dsfc generated invalid Python" followed by the whole module. The path is escaped
  (``dsfc.codegen.emit.printable``).
- ``torch.jit.trace(model, u)`` failed with "Tracing failed sanity checks! Graphs differed across invocations"
  (forward branches in Python on the input); it is now refused by name with the ways out (torch.compile,
  torch.export at fixed shapes), for ``step`` and ``trace_module`` too.
- A dim argument whose ``__index__`` raises (``S6(d=torch.tensor(4.0))``, a two-element tensor) was torch's "only
  integer tensors of a single element can be converted to an index", naming no dim: now "S6: dim d must be a
  positive integer, got tensor(4.)" (``dsfc.runtime.checks.check_dim_arguments``).
- ``dsf_matrices(u, running0=...)`` / ``driven_input`` with a tensor ``running0`` was "Boolean value of Tensor with
  more than one value is ambiguous", a list "unknown running quantity key(s) ['1']" (its items read as keys);
  the quadratic modules (softmax attention, FoX) did not check ``driven_input``'s running0 at all (an IndexError or
  KeyError inside ``_lets``). Now a TypeError naming running0, and the quadratic modules check it as the state dict
  it is.
- ``MambaBlock(E=256)`` (``dim E = e * d`` in the spec) was Python's bare "unexpected keyword argument 'E'"; a
  constructor of a spec with derived dims now says "'E' is a derived dim ..., set the free dims it is computed from:
  d, e, n, r, W", as ``dsfc check --dims E=...`` does (``dsfc.runtime.checks.check_no_derived_arguments``).

Checked clean (no change): weight_norm on a parameter; ``set_default_dtype(float64)`` then construction; a module
built under ``torch.device("meta")``; forward pre-hooks that change u's shape (named); overlapping-stride and
flipped u; the gradient of a requires_grad initial_state against the reference backend; a KV cache that requires
grad (gradients reach keys and values), a truncated, NaN, list or key-less cache; ``eval()``; ``load_state_dict``
with ``assign=True`` of float64 tensors; T = 0 and B = 0 in kernel_form; ``SSD(H=5, G=2)`` (named); initialisers with reversed or degenerate
ranges (positioned); CLI outputs into a directory, through a file, onto the spec itself, with a bad suffix;
``--dims`` duplicates, empties, floats and unknown names.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from dsf_testing import generated_class

from dsfc.cli import main
from dsfc.check import load_module
from dsfc.lang.errors import SpecErrors, SpecWarning
from dsfc.lang.parse import parse_spec
from dsfc.lang.check import check_spec
from dsfc.pipeline import compile_text

SMALL = {"s6": dict(d=4, n=2, r=2), "softmax_attention": dict(d=4, H=2, K=2, V=2),
         "mamba_block": dict(d=4, n=2, r=2), "fox": dict(d=4)}


def _small(name):
    torch.manual_seed(0)
    return generated_class(name)(**SMALL[name])


def _u(model, B=2, T=3):
    return torch.randn(B, T, model._in_features())


# -- 1. model.check_finite must be a bool -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s6", "softmax_attention"])
@pytest.mark.parametrize("value", ["no", 0.0, torch.tensor(False)])
def test_a_non_bool_check_finite_is_refused_on_every_call(name, value):
    model = _small(name)
    u = _u(model)
    model.check_finite = value
    for call in (lambda: model(u), lambda: model.step(u[:, 0]), lambda: model.dsf_matrices(u[:, :2])):
        with pytest.raises(TypeError, match=r"check_finite must be True or False, got "):
            call()
    model.check_finite = False  # a bool still works, as before
    assert model(u).shape[:2] == (2, 3)


# -- 2. a param or let nothing reads: a SpecWarning; 'unused' marks it deliberate -------------------------------------

UNUSED = """\
model Unused
dim d = 3
input u[d]
state h[d]
param a[d] = 0.5
param extra[d] ~ normal(0, 1)
let spare[c: d] = extra[c] * 2
A[i, j] = delta(i, j) * a[i]
B[i, k] = delta(i, k)
C[o, i] = delta(o, i)
"""


def _warnings_of(text, path="unused.dsf"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_spec(parse_spec(text, path))
    return [w.message for w in caught if issubclass(w.category, SpecWarning)]


def test_a_param_and_a_let_nothing_reads_are_warned_about_at_their_lines():
    extra, spare = _warnings_of(UNUSED)
    assert (extra.span.line, extra.span.column, spare.span.line) == (6, 1, 7)
    assert extra.message == ("param 'extra' is never read by A, B, C, D, a post or the drive let: it is created and "
                             "trained, but its gradient is always zero")
    assert str(extra).startswith("unused.dsf:6:1: warning: param 'extra' is never read")
    assert "    param extra[d] ~ normal(0, 1)\n    ^~~" in str(extra)
    assert str(extra).endswith("hint: use it, delete it, or declare it deliberate with: unused extra")
    assert spare.message.startswith("let 'spare' is never read") and "computed on every call" in spare.message


def test_the_unused_statement_silences_the_warning():
    assert _warnings_of(UNUSED + "unused extra, spare\n") == []
    assert [w.span.line for w in _warnings_of(UNUSED + "unused spare\n")] == [6]  # only what it names


@pytest.mark.parametrize("names, message", [
    ("a", "'unused' names param 'a', but the layer reads it"),
    ("nope", "'unused' names 'nope', which is not declared; it takes params and lets"),
    ("u", "'unused' names 'u', which is the input; it takes params and lets"),
])
def test_the_unused_statement_cannot_go_stale(names, message):
    with pytest.raises(SpecErrors) as info:
        check_spec(parse_spec(UNUSED + f"unused extra, spare, {names}\n", "x.dsf"))
    (err,) = info.value.errors
    assert err.message == message
    assert (err.span.line, err.span.column) == (11, len("unused extra, spare, ") + 1)


def test_reads_through_drive_posts_and_let_chains_count_and_unused_stays_a_name():
    text = """\
model Reads
dim d = 2
input u[d]
state h[d]
param unused = 0.5
param g[d] = 1
param w[d] = 1
let x0[c: d] = w[c] * u[c]
let x[c: d] = silu(x0[c])
A[i, j] = delta(i, j) * unused
B[i, k] = delta(i, k)
C[o, i] = delta(o, i)
drive x
post out[o: d] = y[o] * g[o]
"""
    assert _warnings_of(text) == []  # unused read by A, w via x0 via the drive let x, g by the post


def test_the_shipped_specs_have_no_unused_declarations():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].glob("specs/*.dsf")):
        assert _warnings_of(path.read_text(), str(path)) == [], path


def test_the_cli_prints_each_warning_once_and_still_succeeds(tmp_path, capsys):
    spec = tmp_path / "unused.dsf"
    spec.write_text(UNUSED)
    assert main(["compile", str(spec), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: param 'extra' is never read") == 1 and err.count("warning: let 'spare'") == 1
    assert f"{spec}:6:1: warning:" in err and "SpecWarning" not in err  # no Python warning prefix
    assert (tmp_path / "out" / "unused.py").is_file()


# -- 3. spec text that lands in the generated source ------------------------------------------------------------------

TINY = """\
model Tiny {description}
dim d = 2
input u[d]
state h[d]
param a[d] = 0.5
A[i, j] = delta(i, j) * a[i]
B[i, k] = delta(i, k)
C[o, i] = delta(o, i)
"""


def test_a_description_with_backslashes_and_control_characters_reads_back_unchanged():
    description = "path C:\\new\\Nope \\x \\u00e9 \x0c ends in \\"
    result = compile_text(TINY.format(description=f'"{description}"'), "tiny.dsf")
    module = load_module(result, name="dsfc_hunt15_tiny_doc")
    assert module.Tiny.__doc__.startswith(description + "\n")
    assert module.__doc__.startswith(f"Tiny: {description}\n")


def test_a_spec_file_name_with_a_newline_still_compiles():
    result = compile_text(TINY.format(description='"x"'), "odd\nname.dsf")
    assert result.source.splitlines()[0].startswith("# Generated by dsfc ") and "odd\\nname.dsf" in result.source
    module = load_module(result, name="dsfc_hunt15_tiny_path")
    assert module.Tiny()(torch.randn(1, 2, 2)).shape == (1, 2, 2)


# -- 4. torch.jit.trace -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s6", "softmax_attention"])
def test_torch_jit_trace_is_refused_by_name(name):
    model = _small(name)
    u = _u(model)
    for trace in (lambda: torch.jit.trace(model, (u,)), lambda: torch.jit.trace_module(model, {"forward": (u,)})):
        with pytest.raises(RuntimeError, match=r"torch\.jit\.trace .* is not supported.*use torch\.compile"):
            trace()


# -- 5. constructor dims and running0 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s6", "softmax_attention"])
@pytest.mark.parametrize("value", [torch.tensor(4.0), torch.tensor([4, 4])])
def test_a_dim_tensor_that_is_not_one_integer_is_named(name, value):
    with pytest.raises(ValueError, match=r": dim d must be a positive integer, got tensor"):
        generated_class(name)(d=value)


def test_a_one_element_integer_tensor_or_numpy_dim_still_works():
    import numpy as np

    model = generated_class("s6")(d=np.int64(4), n=torch.tensor(2), r=2)
    assert (model.d, model.n) == (4, 2) and type(model.n) is int


def test_a_derived_dim_passed_to_the_constructor_says_what_to_set_instead():
    with pytest.raises(TypeError, match=r"^MambaBlock: 'E' is a derived dim .* set the free dims it is computed from: "
                                        r"d, e, n, r, W$"):
        generated_class("mamba_block")(E=8)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'dtyp'"):  # any other name: Python's message
        generated_class("mamba_block")(dtyp=1)
    assert generated_class("mamba_block")(d=4, e=1, n=2, r=1).E == 4


@pytest.mark.parametrize("name", ["s6", "mamba_block"])
@pytest.mark.parametrize("running0", [torch.zeros(2), [1]])
def test_a_running0_that_is_not_a_dict_is_named(name, running0):
    model = _small(name)
    u = _u(model)
    for call in (lambda: model.dsf_matrices(u, running0), lambda: model.driven_input(u, running0)):
        with pytest.raises(TypeError, match=r"running0 must be None or a dict of running quantities .*got "):
            call()


@pytest.mark.parametrize("name", ["softmax_attention", "fox"])
def test_the_quadratic_driven_input_checks_its_state_dict(name):
    model = _small(name)
    u = _u(model)
    with pytest.raises(ValueError, match=r"the state is a KV cache dict .* not a Tensor"):
        model.driven_input(u, torch.zeros(2))
    with pytest.raises(ValueError, match=r"the KV cache dict lacks 'cache:keys'"):
        model.driven_input(u, {})
    _, state = model(u, output_final_state=True)
    assert model.driven_input(u, state).shape == (2, 3, model._in_features())  # a right state dict still works
