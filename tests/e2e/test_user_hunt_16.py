"""Found by the sixteenth user hunt (a new user following README.md, then feeding dsfc unusual spec text, CLI
arguments and runtime inputs). Each test failed before its fix, except those that pin what a fix keeps.

Found and fixed:

- A param read only in terms that SymPy folds to 0 as it lowers them (``w[k] + v[k] - v[k]``, ``0 * v[k]``,
  ``D[o, k] = delta(o, k) * (v[k] - v[k])``) passed round 15's unused-declaration check (its text is read), yet the
  generated module never used it: an nn.Parameter created, initialised, saved and weight-decayed, with a gradient of
  None that optimisers skip, and nothing said so. ``dsfc.ir.cancelled.cancelled_reads`` repeats the read analysis on
  the lowered spec and issues a SpecWarning at the declaration ("read only in terms that simplify to 0").
- A KV-cache state dict (softmax attention, FoX) with a typo'd key said "unknown running quantity key(s) ['zz'];
  expected keys ['eta_prev']", as if the cache entries the dict rightly holds were unknown too: the message now
  lists every key the state may hold ('cache:keys', 'cache:values', ..., 'eta_prev').
- ``dsfc compile -`` (the usual spelling of standard input) said only "-: error: cannot read spec: No such file or
  directory": it now says that '-' is not standard input here and to save the spec to a file.
- ``model.step(u_t)`` with an integer or complex ``u_t`` said "u must be a floating-point tensor" (forward's name;
  its shape and NaN errors already said u_t): now "u_t must be ..." (``dsfc.runtime.checks.step_state_errors``).
- ``dsfc compare A.dsf B.dsf --width 100000000000`` padded its table to that width and ended in "out of memory; use
  smaller sizes", naming no option: --width above 10000 is now refused by name.

Checked clean (no change): CRLF, CR-only, BOM, tab and form-feed spec text (errors keep their line:col); an empty,
binary, directory or non-UTF-8 spec; a duplicate matrix or model statement; numbers 1e400, 1e-400, 0x10, 1_000;
deep nesting (200 levels of parentheses are fine, 64 levels of operators are named); a 100 kB line; non-ASCII and
NBSP characters (named with their code point); params named model, self, lambda, torch, nn (compile and check) and
sum, exp, delta, u (refused by name); unknown flags; every subcommand's --help; an output path that is a file; one
module name from two specs. At runtime (diagonal, Mamba block, softmax attention, GLA, DeltaNet): u of int, bool,
complex dtype (named), float64 / bf16 / fp16 (run), non-contiguous, expanded and stride-0 u, u on meta, T = 0,
B = 0, a numpy / list / None u, states of the wrong dtype, device, batch and key, a NaN state entry, double backward,
deepcopy, pickle, state_dict round trips (wrong shapes refused by torch naming the parameter, float64 cast),
half() / double() / to(bfloat16), no_grad with inference_mode, functional_call, vmap and vmap(grad), torch.compile
(eager backend), a NaN parameter, inputs of 1e18 / 1e30 (finite in, NaN out: the documented FloatingPointError).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dsfc.cli import main
from dsfc.lang.errors import SpecWarning
from dsfc.pipeline import compile_text

MINI = """\
model Mini "tiny diagonal"
dim d = 4
input u[d]
state h[d]
output y[d]
param a[d] = 0.5
param w[d] ~ normal(0, 1)
param v[d] ~ normal(0, 1)
A[i, j] = delta(i, j) * sigmoid(a[i])
B[i, k] = delta(i, k) * {B}
C[o, i] = delta(o, i)
D[o, k] = {D}
"""


def _compile_warnings(text: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_text(text, "mini.dsf")
    return [str(w.message) for w in caught if issubclass(w.category, SpecWarning)]


@pytest.mark.parametrize("b, d", [
    ("(w[k] + v[k] - v[k])", "0"),
    ("(w[k] + 0 * v[k])", "0"),
    ("w[k]", "delta(o, k) * (v[k] - v[k])"),
])
def test_a_param_read_only_in_terms_that_cancel_is_warned_at_its_line(b, d):
    found = _compile_warnings(MINI.format(B=b, D=d))
    assert len(found) == 1, found
    assert found[0].startswith("mini.dsf:8:1: warning: param 'v' is read only in terms that simplify to 0")
    assert "param v[d] ~ normal(0, 1)" in found[0] and "hint:" in found[0]


def test_a_let_read_only_in_cancelled_terms_is_warned_with_the_param_only_it_reads():
    text = MINI.format(B="(w[k] + z[k] - z[k])", D="0").replace("A[i, j]", "let z[c: d] = 2 * v[c]\nA[i, j]")
    found = [w.splitlines()[0] for w in _compile_warnings(text)]
    assert found == [
        "mini.dsf:8:1: warning: param 'v' is read only in terms that simplify to 0 (such as x - x or 0 * x): the "
        "layer never uses it, and it is created and trained, but its gradient is always None",
        "mini.dsf:9:1: warning: let 'z' is read only in terms that simplify to 0 (such as x - x or 0 * x): the "
        "layer never uses it, and it is computed on every call for nothing",
    ]


def test_a_param_that_really_reads_and_a_let_that_is_zero_are_not_warned_about():
    assert _compile_warnings(MINI.format(B="(w[k] + v[k])", D="0")) == []
    # a let whose value is 0 is still read by D: the let is used; the param it cancels is read by B too
    zero_let = MINI.format(B="(w[k] + v[k])", D="delta(o, k) * z[k]").replace(
        "A[i, j]", "let z[c: d] = w[c] * 0\nA[i, j]")
    assert _compile_warnings(zero_let) == []


def test_a_never_read_param_is_warned_once_not_twice():
    found = _compile_warnings(MINI.format(B="w[k]", D="0"))
    assert len(found) == 1 and "param 'v' is never read" in found[0]


def test_the_cli_prints_the_cancelled_read_warning_and_succeeds(tmp_path, capsys):
    spec = tmp_path / "mini.dsf"
    spec.write_text(MINI.format(B="(w[k] + v[k] - v[k])", D="0"))
    assert main(["compile", str(spec), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: param 'v' is read only in terms that simplify to 0") == 1
    assert "SpecWarning" not in err and (tmp_path / "out" / "mini.py").is_file()


def test_an_unknown_key_in_a_kv_cache_state_lists_the_cache_entries_too():
    from generated.softmax_attention import SoftmaxAttention

    model = SoftmaxAttention(d=8, H=2, K=4, V=4)
    u = torch.randn(2, 3, 8)
    _, state = model(u, output_final_state=True)
    bad = {**state, "zz": state["eta_prev"]}
    with pytest.raises(ValueError, match=r"unknown state key\(s\) \['zz'\]; expected keys "
                                         r"\['cache:keys', 'cache:values', 'eta_prev'\]"):
        model(u, initial_state=bad)
    with pytest.raises(ValueError, match=r"\['zz'\]; expected keys \['cache:keys'"):
        model.step(u[:, 0], bad)


def test_a_dash_as_the_spec_path_says_it_is_not_standard_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "-", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "-: error: cannot read spec" in err and "'-' is not standard input here" in err
    assert not (tmp_path / "out").exists()


def test_step_names_u_t_when_its_dtype_is_wrong():
    from generated.s4d import S4D

    model = S4D(d=4, Nh=2)
    for bad in (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.complex64)):
        with pytest.raises(TypeError, match=r"^S4D: u_t must be a floating-point tensor, got torch\."):
            model.step(bad)


def test_compare_refuses_a_width_it_would_run_out_of_memory_padding(tmp_path, capsys):
    spec = tmp_path / "mini.dsf"
    spec.write_text(MINI.format(B="(w[k] + v[k])", D="0"))
    assert main(["compare", str(spec), str(spec), "--width", str(10**11)]) == 2
    assert f"dsfc compare: error: --width must be at most 10000 (a line width in characters), got {10**11}" \
        in capsys.readouterr().err
    assert main(["compare", str(spec), str(spec), "--width", "10000"]) == 0
