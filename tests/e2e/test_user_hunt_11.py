"""Found by the eleventh user hunt (a new user of the spec language, the CLI and the generated modules on inputs nobody
tested: a mutation fuzzer over the catalog specs (tokens deleted, duplicated, swapped, functions and numbers
replaced) run through the compiler and, where a mutant compiled, through ``dsfc check``; spec text pasted from a paper
or a word processor; double backward of every module on the torch backend; modules with parameters of one dtype and
inputs or states of another; states on meta, of another batch, or of another dtype; NaN parameters;
``load_state_dict`` with wrong shapes; inference-mode inputs then backward; ``torch.use_deterministic_algorithms``).
Each test failed before its fix.

Found and fixed:

- A spec function in the argument of a ``~`` initialiser (``~ normal(0, silu(1))``, ``uniform(-1, sigmoid(d))``)
  was "internal error: TypeError: Cannot convert expression to float ... This is a bug in dsfc" (the fuzzer's only
  crash, three times): the spec's own functions (softplus, sigmoid, logsigmoid, relu, silu, elu, gelu) had no numeric
  evaluation, so ``evalf`` left ``silu(1)`` symbolic. They evaluate now (``_Elementwise._eval_evalf`` in
  ``dsfc/ir/functions.py``), and a dist argument that still is not a number is a spec error, not a TypeError.
- For the same reason ``param D[d] = log(relu(-1))`` or ``= sqrt(silu(-1))`` (every entry -inf / NaN) compiled, and
  failed only at the module's construction; ``log(0)`` itself was refused at compile time. Now refused there too.
- An unexpected non-ASCII character said "names are letters, digits and '_'", about 'β', which is a letter; and a
  Unicode minus (U+2212), '×', '÷' or a fullwidth digit pasted from a paper got the same hint. The hint now names the
  ASCII operator to type, or says the letter / digit is not ASCII, or that a no-break / zero-width space or a BOM
  inside the file is an invisible space (``dsfc.lang.parse._character_hint``).
- A spec named ``dsfc.dsf`` compiled to ``dsfc.py`` (``torch.dsf`` to ``torch.py``, ``math.dsf``, ``triton.dsf``):
  imported from its own directory (a script there, ``python -c`` there, ``-o .``) it shadowed the package the file
  itself imports and failed with "No module named 'dsfc.runtime'; 'dsfc' is not a package" (round 10 left
  ``torch.py`` as not fixed). The names of the modules generated code imports get a ``_`` suffix, as keywords do
  (``dsfc.pipeline.IMPORTED_BY_GENERATED``).
- ``step`` ran under ``@torch.no_grad()`` (since the first template, undocumented): y_t and the new state had no
  grad_fn even for an input that requires grad, so a token-by-token loss (online learning, RL, a per-token training
  loop) failed with torch's "element 0 of tensors does not require grad", or, summed with any other trainable term,
  silently left the layer's parameters without gradients. ``step`` is differentiable now, as ``forward`` (whose
  gradients it matches); a decoding loop runs it under ``no_grad`` / ``inference_mode``, as the benchmark's and
  ``dsfc check``'s loops do. Documented in the README.

Checked clean (no change): ``gradgradcheck`` (T = 4) and a Hessian-vector product against finite differences
(T = 67, across chunk boundaries) of every catalog module on the torch backend; ``.half()`` / ``.bfloat16()`` /
``.double()`` modules fed fp32 / fp64 / bf16 input (the input's dtype, as documented), fp64 and bf16 states into fp32
calls; a state on meta, of batch 1 for batch 2; a NaN parameter (named); ``load_state_dict`` with a wrong shape
(torch names the parameter); ``use_deterministic_algorithms(True)``; zero-batch ``step``; cpu bf16 autocast;
``--seed -1``, ``--dims d=1e3`` / ``d=0x10`` / repeated dims / unknown dims, ``bench -T 0`` / ``--repeats 0`` /
``--batch 0``, ``plot --T 0``, ``compare --width 0``; transposed, expanded (stride 0 over T or over everything) and
feature-strided inputs on the Triton backend (interpreted: outputs and parameter gradients equal the torch
backend's); ``torch.compile(fullgraph=False)`` of a model holding a module, with backward; ``.to(memory_format=
torch.channels_last)``; dims as ``3.0`` / ``True`` / ``'3'`` (refused), a backend typo, ``dtype='float32'``; spec
names that collide after mangling (``a-b`` / ``a_b``, ``class`` / ``class_``, ``9x`` / ``m9x``: refused); duplicate
dims, matrices and readouts; a zero-size state axis; ``(-1) ^ 0.5`` and a power tower as constants.

Found, not fixed:

- An inference-mode tensor given as u to a module whose parameters require grad fails with torch's own (clear)
  "Inference tensors cannot be saved for backward ... make a clone" from inside the module, not naming u. Refusing
  it up front needs to know whether anything will be saved: a frozen module called without no_grad works with it.
- ``forward(u, output_final_state="no")`` (any truthy non-bool) returns the ``(y, state)`` tuple, as Python's truth
  rules say; refusing non-bools would also refuse the numpy / tensor bools that callers pass.
- ``dsfc analyze specs/rg_lru.dsf`` takes ~12 s of CPU (the analysis, not the parse); a comment edit does not change it.
"""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401,I001  (sets TRITON_INTERPRET=1 before triton is imported)

import math
import os
import sys
from pathlib import Path

import pytest
import sympy as sp
import torch

from dsfc.cli import main
from dsfc.lang.errors import SpecError, SpecErrors, render_error
from dsfc.pipeline import compile_text

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
S6_TEXT = (SPECS / "s6.dsf").read_text()
NORMAL_WB = "param W_B[n, d] ~ normal(0, 1 / sqrt(d))"
PARAM_D = "param D[d] = 1"


def _s6_with(old: str, new: str) -> str:
    assert old in S6_TEXT
    return S6_TEXT.replace(old, new)


def _spec_errors(text: str) -> str:
    """The errors as the CLI prints them, hints included."""
    with pytest.raises((SpecError, SpecErrors)) as info:
        compile_text(text, "x.dsf")
    exc = info.value
    return exc.render() if isinstance(exc, SpecErrors) else render_error(exc, "x.dsf", text)


# -- 1. spec functions evaluate at compile time ---------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["silu(1)", "sigmoid(d)", "softplus(-2)", "relu(-1)", "gelu(1) / elu(1)"])
def test_a_spec_function_in_a_dist_argument_compiles(tmp_path, capsys, arg):
    """Was "internal error: TypeError: Cannot convert expression to float" (exit 3)."""
    spec = tmp_path / "fn_arg.dsf"
    spec.write_text(_s6_with(NORMAL_WB, f"param W_B[n, d] ~ normal(0, {arg})"))
    rc = main(["compile", str(spec), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "internal error" not in err and (tmp_path / "out" / "fn_arg.py").is_file()


def test_a_dist_range_of_spec_functions_is_checked_with_their_values():
    # sigmoid(3) = 0.9526 > silu(1) = 0.7311: computed here with math, not with the code under test
    lo, hi = 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))
    err = _spec_errors(_s6_with(NORMAL_WB, "param W_B[n, d] ~ uniform(sigmoid(3), silu(1))"))
    assert f"uniform(lo, hi) for 'W_B' needs lo <= hi, got {lo:g} > {hi:g}" in err
    err = _spec_errors(_s6_with(NORMAL_WB, "param W_B[n, d] ~ normal(0, -softplus(0))"))
    assert f"must be >= 0, got {-math.log(2):g}" in err


@pytest.mark.parametrize("init", ["log(relu(-1))", "sqrt(silu(-1))", "1 / relu(-2)", "1 / gelu(0)"])
def test_an_initialiser_that_is_not_finite_through_a_spec_function_is_refused_at_compile_time(tmp_path, capsys, init):
    """Compiled, then failed at construction ("parameter 'D' has inf / NaN entries after the spec's initialiser")."""
    spec = tmp_path / "bad_init.dsf"
    spec.write_text(_s6_with(PARAM_D, f"param D[d] = {init}"))
    rc = main(["compile", str(spec), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "not a finite real number" in err and "param D[d] = " + init in err and "no files written" in err
    assert not (tmp_path / "out").exists()


def test_spec_functions_evaluate_to_torchs_values():
    """The numeric evaluation each function got, against torch's own function in float64."""
    from dsfc.ir.functions import FUNCTION_TABLE

    F = torch.nn.functional
    want = {"softplus": F.softplus, "sigmoid": torch.sigmoid, "logsigmoid": F.logsigmoid, "relu": F.relu,
            "silu": F.silu, "elu": F.elu, "gelu": F.gelu}
    points = [-3.5, -1.0, 0.0, 0.25, 2.0, 7.0]
    for name, fn in want.items():
        got = [float(FUNCTION_TABLE[name](sp.Float(x)).evalf()) for x in points]
        ref = fn(torch.tensor(points, dtype=torch.float64)).tolist()
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-15), name
    assert FUNCTION_TABLE["silu"](sp.Symbol("x")).evalf().has(sp.Symbol("x"))  # symbolic stays symbolic


# -- 2. characters pasted from a paper ------------------------------------------------------------------------------


@pytest.mark.parametrize("old,new,hint", [
    ("exp(-dt[c]", "exp(\u2212dt[c]", "'\u2212' (U+2212) is not '-': type the ASCII '-'"),
    ("W_B[j, k] * u[k]", "W_B[j, k] \u00d7 u[k]", "'\u00d7' (U+00D7) is not '*'"),
    ("1 / sqrt(d)", "1 \u00f7 sqrt(d)", "'\u00f7' (U+00F7) is not '/'"),
    ("W_B", "W\u03b2", "'\u03b2' (U+03B2) is not an ASCII letter: names are ASCII letters, digits and '_'"),
    ("dim n = 16", "dim n = \uff11\uff16", "is a non-ASCII digit: numbers are written with 0-9"),
    ("dim n = 16", "dim n =\u00a016", "U+00A0 is an invisible or non-ASCII space"),
    ("W_B[j, k]", "W_B\u200b[j, k]", "U+200B is an invisible or non-ASCII space"),
])
def test_a_non_ascii_character_gets_a_hint_that_says_what_it_is(old, new, hint):
    err = _spec_errors(_s6_with(old, new))
    assert "unexpected character" in err and hint in err, err
    assert "names are letters" not in err  # the old hint, wrong about 'β'


def test_an_ascii_stray_character_keeps_the_general_hint():
    err = _spec_errors(_s6_with(PARAM_D, PARAM_D + " $"))
    assert "unexpected character '$'" in err
    assert "hint: names are ASCII letters, digits and '_'; comments start with '#'" in err


# -- 3. spec names of the modules the generated code imports --------------------------------------------------------


@pytest.mark.parametrize("stem", ["dsfc", "torch", "math"])
def test_a_spec_named_like_an_imported_module_does_not_shadow_it(tmp_path, capsys, stem):
    """``dsfc compile dsfc.dsf -o out`` wrote ``out/dsfc.py``: importing it from ``out`` (a script there, ``-o .``)
    failed with "No module named 'dsfc.runtime'; 'dsfc' is not a package" (torch.py, math.py: torch's own import
    broke). It is written as ``<stem>_.py`` now, as a Python keyword is."""
    import subprocess

    spec = tmp_path / f"{stem}.dsf"
    spec.write_text(S6_TEXT)
    out = tmp_path / "out"
    assert main(["compile", str(spec), "-o", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}_.py"]
    code = f"import {stem}_, torch; m = {stem}_.S6(d=3, n=2, r=1); print(tuple(m(torch.randn(2, 4, 3)).shape))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(2, 4, 3)"


# -- 4. step is differentiable --------------------------------------------------------------------------------------

STEP_DIMS = {"s6": dict(d=3, n=2, r=1), "ssd": dict(H=2, P=2, n=2, G=2), "gla": dict(d=3, H=2, K=2, V=2, R=1),
             "gated_deltanet": dict(d=3, H=2, K=2, V=2), "rg_lru": dict(W=4, nh=2), "mlstm": dict(H=2, DH=2, bs=2),
             "mamba_block": dict(d=2, e=2, n=2, r=1, W=2), "softmax_attention": dict(d=3, H=2, K=2, V=2)}


@pytest.mark.parametrize("name", sorted(STEP_DIMS))
def test_a_token_by_token_loss_through_step_trains_the_layer(name):
    """``step`` ran under ``@torch.no_grad()``: y_t had no grad_fn, so a loss over a step loop either failed
    ("element 0 of tensors does not require grad") or, with any other trainable term in it, silently left the
    layer's parameters (and the input) without gradients. The step loop's gradients now equal forward's, computed by
    the in-module float64 reference recurrence (softmax attention: its torch backend, which has no reference)."""
    from dsf_testing import generated_class

    torch.manual_seed(0)
    cls = generated_class(name)
    model = cls(**STEP_DIMS[name]).double()
    oracle = cls(**STEP_DIMS[name], backend="torch" if name == "softmax_attention" else "reference").double()
    oracle.load_state_dict(model.state_dict())
    u = torch.randn(2, 5, model._in_features(), dtype=torch.float64)
    w = torch.randn(2, 5, oracle(u).shape[-1], dtype=torch.float64)

    u1 = u.clone().requires_grad_(True)
    state, loss = None, 0
    for t in range(u.shape[1]):
        y_t, state = model.step(u1[:, t], state)
        loss = loss + (y_t * w[:, t]).sum()
    got = torch.autograd.grad(loss, [u1, *model.parameters()])

    u2 = u.clone().requires_grad_(True)
    want = torch.autograd.grad((oracle(u2) * w).sum(), [u2, *oracle.parameters()])
    for (pname, _), g, r in zip([("u", None), *model.named_parameters()], got, want):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-11), (pname, (g - r).abs().max().item())
    with torch.no_grad():  # a decoding loop under no_grad builds no graph, as before
        y_t, state = model.step(u[:, 0])
    assert not y_t.requires_grad and not state_requires_grad(state)


def state_requires_grad(state) -> bool:
    return any(v.requires_grad for v in (state.values() if isinstance(state, dict) else [state]))


@pytest.mark.parametrize("name", ["s6", "gla", "softmax_attention"])
def test_a_step_loop_on_the_triton_backend_has_the_torch_backends_gradients(name):
    """The same through the Triton kernels (interpreted on the CPU): step's gradients through the first-derivative
    kernels, against the torch backend's."""
    import copy

    from dsf_testing import generated_class

    torch.manual_seed(0)
    ref = generated_class(name)(**STEP_DIMS[name], backend="torch").double()
    tri = copy.deepcopy(ref)
    tri.backend = "triton"
    u = torch.randn(2, 4, ref._in_features(), dtype=torch.float64)
    grads = []
    for model in (ref, tri):
        state, loss = None, 0
        for t in range(u.shape[1]):
            y_t, state = model.step(u[:, t], state)
            loss = loss + y_t.square().sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for (pname, _), g, r in zip(ref.named_parameters(), grads[1], grads[0]):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-12), pname
