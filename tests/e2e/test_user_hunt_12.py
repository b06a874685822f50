"""Found by the twelfth user hunt (a new user of the generated modules and the CLI on inputs nobody tested: modules
built or fed under ``torch.inference_mode()`` then trained, non-bool flags, forward-mode AD, activation checkpointing,
``torch.compile`` with T changing between calls (T = 0 and 1 among them), CPU fp16 autocast, ``functional_call``,
tuple / list / numpy states, non-contiguous inputs, state dicts between backends, anomaly detection, zero / large /
fp16 inputs to every module; CLI outputs onto files, pathological spec expressions). Each test failed before its
fix, except three that pin what the fixes keep (numpy bools are flags, an inf output passes) or was checked clean
(forward-mode AD).

Found and fixed:

- (Round 11's first open item.) An input made under ``torch.inference_mode()`` (``u``, or a state a decoding loop
  returned there) given to a call recorded for backward failed with torch's "Inference tensors cannot be saved for
  backward" from inside the module, naming no argument. It now names it (``u``, ``initial_state['h']``, step's
  ``u_t`` / ``state``) and what to do (``.clone()``, or no_grad / inference_mode for the call). Not refused up front:
  only some modules save a given input (RWKV-6 trains with an inference ``u``; linear attention, RetNet and softmax
  attention with an inference state), so the module's own error is renamed (``inference_input_error``).
- A module BUILT under ``torch.inference_mode()`` (its parameters inference tensors), then trained: ``backward()``
  ran, and S6 got gradients for 2 of its 7 parameters, silently (autograd does not track inference tensors; torch's
  own ``nn.Linear`` does the same). A call recorded for backward now refuses such a module, naming the parameter
  (``check_inference_parameters``); under no_grad / inference_mode it runs as before.
- (Round 11's second open item.) ``forward(u, output_final_state="False")`` (or ``2``, ``[]``, a tensor) was read by
  its truth value: the string "False" returned the ``(y, state)`` tuple. ``output_final_state`` and ``post`` now take
  a Python or numpy bool only (``check_flag``; a tensor flag is told ``bool(...)``).
- ``step``'s errors about its input came from forward: "u is on meta ...", "u contains NaN or inf (first at [batch,
  time, feature] = [1, 0, 2])", naming forward's argument and a time axis ``u_t`` has not. They name ``u_t`` and
  ``[batch, feature]`` now (``step_state_errors``, which already renamed ``initial_state`` to ``state``).
- DeltaNet and Gated DeltaNet normalise q and k as ``x / sqrt(sum(x^2))`` (fla's eps left out on purpose): an
  all-zero input step, i.e. zero padding, gave a NaN output and, through the state, NaN at every later step of that
  sequence, without a word; Gated DeltaNet at u = +-1e3, Taylor attention at ``randn * 30`` and normalised linear
  attention at u = -1e3 did too (found with ``torch.autograd.detect_anomaly``, then a probe of every module at zero,
  large and fp16 inputs). The NaN / inf check of the inputs (``check_finite``) now has its counterpart on the output:
  a NaN in ``forward``'s output of checked-finite inputs is a FloatingPointError naming the first NaN entry
  (``check_finite_output``); ``check_finite = False`` lets it through, as before. An inf is let through: it can be a
  true value beyond the dtype (an fp16 output over 65504; normalised attention's spike test, test_numerics_4.py, now
  turns the check off for its overflowing steps). Two older tests that pinned the silent NaN were updated. The CLI
  (``dsfc check`` / ``bench`` / ``plot`` / ``compare`` of a spec whose maths is NaN at the random input) reports it
  as the spec's error (exit 2), not as an internal error of dsfc; ``dsfc check`` runs its models with the check off
  (its own "reference stays finite" row reports the NaN, as before).

Found, NOT fixed:

- The delta-rule specs' NaN at a zero input is the specs' maths (no eps, so ||k|| = 1 exactly, as the eigenvalue
  analysis and the oracles assume); it is named now, not avoided. fla's layers add eps = 1e-6 and give 0 there.
  Likewise Gated DeltaNet at u = +-1e3, Taylor attention at ``randn * 30`` and normalised linear attention at
  u = -1e3: their NaN (0 / 0 or inf - inf of the spec's maths at those inputs) is named, not avoided.
- The output check costs a second host read-back per call (a device sync on a GPU) while ``check_finite`` is on;
  folding it into the input check's read-back would run the layer before refusing a NaN input.

Checked clean (no change): ``torch.func.jvp`` (forward-mode AD) of every catalog module against finite differences;
``torch.utils.checkpoint`` (non-reentrant) gradients; ``torch.compile(dynamic=True)`` with T = 5, 7, 1, 0, 9 in turn
(S6, softmax attention, Mamba block); CPU fp16 autocast; ``torch.func.functional_call`` with another module's
parameters; sliced (feature-strided) and transposed inputs; a state dict loaded into a ``backend="reference"`` module;
a state with an extra key, a tuple / list / numpy state, a 3-d or 1-d ``u_t`` (each named); gradients reach every
entry of a ``requires_grad`` state that the next call reads; ``dsfc compile -o`` onto a file or below one;
a spec with 5000 nested parentheses, a chain of 20000 ``+`` or 3000 ``^`` (depth error with a hint), 1 MB of
comments; ``dsfc check --dims d=3 --dims n=2`` (both kept).
"""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401,I001  (sets TRITON_INTERPRET=1 before triton is imported)

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from dsf_testing import generated_class  # noqa: E402
from test_shape_hunt import DIMS  # noqa: E402  (one small, odd configuration per catalog module)

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(DIMS)


def _model(name: str, **kw):
    torch.manual_seed(0)
    return generated_class(name)(**DIMS[name], **kw)


def _leaves(state) -> dict:
    return dict(state) if isinstance(state, dict) else {None: state}


# -- 1. inference-mode tensors in a call recorded for backward -------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_an_inference_mode_input_is_named_or_works(name):
    """Was torch's "Inference tensors cannot be saved for backward" naming no argument (or, for a module that does
    not save it, a result: kept)."""
    model = _model(name)
    d = model._in_features()
    with torch.inference_mode():
        u = torch.randn(2, 5, d)
        _, state = model(torch.randn(2, 3, d), output_final_state=True)
    for label, call in (("u", lambda: model(u)), ("u_t", lambda: model.step(u[:, 0])),
                        ("initial_state", lambda: model(torch.randn(2, 5, d), initial_state=state)),
                        ("state", lambda: model.step(torch.randn(2, d), state))):
        try:
            out = call()
        except RuntimeError as exc:
            msg = str(exc)
            assert "Inference tensors cannot be saved" not in msg, msg
            assert msg.startswith(f"{type(model).__name__}: {label}"), msg
            assert ("is an inference tensor" in msg or "are inference tensors" in msg) and "torch.no_grad()" in msg
            assert (f"({label}.clone())" if label.startswith("u") or "[" not in msg
                    else f"({{k: v.clone() for k, v in {label}.items()}})") in msg, msg
        else:  # nothing of it saved for backward: it trains as a clone would
            y = out[0] if isinstance(out, tuple) else out
            y.sum().backward()
    # the ways out the message names work
    model(u.clone()).sum().backward()
    with torch.no_grad():
        model(u)


@pytest.mark.parametrize("name", ["s6", "softmax_attention", "mamba_block"])
def test_a_module_built_under_inference_mode_is_refused_for_training(name):
    """Was a silent partial backward: S6 got gradients for 2 of its 7 parameters."""
    with torch.inference_mode():
        model = _model(name)
    u = torch.randn(2, 4, model._in_features())
    with pytest.raises(RuntimeError, match=r"parameter '\w+' .*is an inference tensor \(the module was built or "
                                           r"loaded under torch.inference_mode\(\)\)"):
        model(u)
    with torch.no_grad():  # inference is fine
        want = model(u)
    with torch.inference_mode():
        assert torch.equal(model(u), want)
    model.requires_grad_(False)  # frozen: nothing to lose
    assert torch.equal(model(u), want)


# -- 2. flags are bools ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["False", "no", 2, 0, None, [], torch.tensor(True)])
def test_output_final_state_takes_a_bool_only(flag):
    """Was Python's truth value: "False" returned the (y, state) tuple."""
    model = _model("s6")
    u = torch.randn(2, 3, 3)
    with pytest.raises(TypeError, match=r"S6: output_final_state must be True or False, got "):
        model(u, output_final_state=flag)


def test_a_tensor_flag_is_told_how_to_pass_it_and_post_is_checked_too():
    model = _model("mamba_block")
    u = torch.randn(2, 3, model._in_features())
    with pytest.raises(TypeError, match=r"for a tensor flag pass bool\(output_final_state\)"):
        model(u, output_final_state=torch.tensor(True))
    with pytest.raises(TypeError, match=r"MambaBlock: post must be True or False, got str 'False'"):
        model(u, post="False")


@pytest.mark.parametrize("name", ["s6", "softmax_attention"])
def test_python_and_numpy_bools_are_flags(name):
    model = _model(name)
    u = torch.randn(2, 3, model._in_features())
    y = model(u)
    for flag in (True, np.True_, np.bool_(True)):
        got, _ = model(u, output_final_state=flag)
        assert torch.equal(got, y)
    for flag in (False, np.False_):
        assert torch.equal(model(u, output_final_state=flag), y)


# -- 3. a NaN output of finite inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
def test_a_zero_padded_step_of_the_delta_rule_is_named_not_a_nan_sequence(name):
    """k / sqrt(sum(k^2)) at an all-zero input (left padding) made that output and every later one NaN, silently."""
    model = _model(name)
    u = torch.randn(2, 6, model._in_features())
    u[1, :2] = 0  # the second sequence left-padded by two steps
    with pytest.raises(FloatingPointError, match=rf"{type(model).__name__}: the output is NaN at \[batch, time, "
                                                 r"feature\] = \[1, 0, 0\], though u, the initial state and the "
                                                 r"parameters are finite"):
        model(u)
    with pytest.raises(FloatingPointError, match=r"the output is NaN at \[batch, feature\] = \[1, 0\], though u_t, "
                                                 r"the state and the parameters are finite"):
        model.step(u[:, 0])
    model.check_finite = False  # the documented way to let it through
    y = model(u)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all()


@pytest.mark.parametrize("name,scale", [("gated_deltanet", 1e3), ("linear_attention_normalized", -1e3)])
def test_other_nan_outputs_of_finite_inputs_are_named(name, scale):
    """Found by the same probe (u = +-1e3): NaN outputs, silently, from finite inputs."""
    model = _model(name)
    d = model._in_features()
    with pytest.raises(FloatingPointError, match="the output is NaN at"):
        model(torch.full((2, 6, d), scale))


def test_taylor_attention_at_scale_30_is_no_longer_nan():
    """The same probe's Taylor attention at randn * 30 was NaN (log of a decay eta_prev / eta that rounds to 0); the
    thirteenth spec hunt takes such decays through log_abs_decay: fp32 now matches float64 (relative 1e-5: fp32
    rounding of the normaliser's large sums)."""
    model = _model("taylor_attention")
    torch.manual_seed(0)
    u = torch.randn(2, 6, model._in_features()) * 30
    y = model(u)
    want = model.double()(u.double())
    assert torch.isfinite(want).all()
    assert ((y.double() - want).abs().max() / want.abs().max()).item() < 1e-5


def test_an_inf_output_is_let_through():
    """A true value beyond the dtype (an fp16 output over 65504) is inf, the other steps right: not refused."""
    model = _model("s6")
    u = torch.randn(2, 6, 3)
    u[0, 2] = 300.0
    y = model(u.half())
    assert torch.isinf(y).any() and not torch.isnan(y).any()


def test_the_cli_reports_a_layer_that_is_nan_as_the_specs_problem(tmp_path, capsys):
    """With the output check, ``dsfc bench`` (or ``dsfc check`` with its Triton rows) of a spec whose maths is NaN
    everywhere (log of a negative) was "internal error: FloatingPointError ... This is a bug in dsfc" (exit 3): the
    spec's own problem, exit 2. ``dsfc check`` runs its models with ``check_finite`` off: the NaN is its own BAD row."""
    from dsfc.cli import main

    text = (ROOT / "specs" / "s6.dsf").read_text()
    old = "D[o, k] = delta(o, k) * D[k]"
    assert old in text
    spec = tmp_path / "nan_d.dsf"
    spec.write_text(text.replace(old, "D[o, k] = delta(o, k) * log(-softplus(cq[0]))"))
    rc = main(["bench", str(spec), "-T", "8", "--repeats", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "dsfc bench: error: the spec's layer gives NaN on this command's random input: S6: the output is NaN" in err
    assert "internal error" not in err
    rc = main(["check", str(spec)])
    out, err = capsys.readouterr()
    assert rc == 1 and "BAD reference stays finite" in out and "FAIL" in out, out + err


def test_steps_errors_about_its_input_name_u_t_and_its_axes():
    """step's input errors came from forward: "u is on meta", "u contains NaN ... [batch, time, feature] = [1, 0,
    2]", naming forward's argument and a time axis step's u_t does not have."""
    model = _model("s6")
    u_t = torch.randn(2, 3)
    u_t[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"S6: u_t contains NaN or inf \(first at \[batch, feature\] = \[1, 2\]\)"):
        model.step(u_t)
    with pytest.raises(ValueError, match=r"S6: u_t is on meta but the parameters are on cpu"):
        model.step(torch.randn(2, 3, device="meta"))


# -- checked clean -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s6", "mamba_block", "softmax_attention", "gated_deltanet", "rwkv6"])
def test_forward_mode_ad_matches_finite_differences(name):
    model = _model(name).double()
    u = torch.randn(2, 6, model._in_features(), dtype=torch.float64)
    t = torch.randn_like(u)
    _, tangent = torch.func.jvp(model, (u,), (t,))
    eps = 1e-6
    fd = (model(u + eps * t) - model(u - eps * t)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, atol=1e-6, rtol=1e-5)
