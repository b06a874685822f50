"""Unusual input to the generated modules and the CLI found by the API hunt (not covered by test_module_api_errors.py
or test_cli_inputs.py): each case is a clear error naming the problem, or the right result checked against the
reference backend / float64."""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: I001  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import copy
from pathlib import Path

import pytest
import torch

from dsfc.check import load_module
from dsfc.cli import main
from dsfc.pipeline import compile_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
DIMS = {"s6": dict(d=4, n=2, r=2), "mamba_block": dict(d=4, e=1, n=2, r=1, W=2),
        "softmax_attention": dict(d=8, H=2, K=4, V=4)}


@pytest.fixture(scope="module")
def models():
    out = {}
    for name, dims in DIMS.items():
        result = compile_spec(SPECS / f"{name}.dsf")
        torch.manual_seed(0)
        out[name] = getattr(load_module(result, f"dsfc_hunt_{name}"), result.plan.model)(**dims)
    return out


def test_non_string_state_dict_keys_are_named(models):
    # a spec without running quantities tested `k not in "h"`, a substring test: an int key was Python's
    # "'in <string>' requires string as left operand, not int", and '' passed as a known key
    s6 = models["s6"]
    u = torch.randn(2, 3, 4)
    _, state = s6(u, output_final_state=True)
    for key in (1, ""):
        with pytest.raises(ValueError, match=rf"S6: unknown initial_state key\(s\) \['{key}'\]; expected keys \['h'\]"):
            s6(u, initial_state={"h": state, key: state})
        with pytest.raises(ValueError, match=r"S6: unknown state key\(s\)"):
            s6.step(u[:, 0], {"h": state, key: state})
    torch.testing.assert_close(s6(u, initial_state={"h": state}), s6(u, initial_state=state), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(DIMS))
def test_a_bad_backend_is_refused_on_an_empty_input_too(models, name):
    # set after construction, an unknown backend raised on every input but an empty one (T = 0 or B = 0 returned
    # before the backend was read)
    model = copy.deepcopy(models[name])
    model.backend = "cuda"
    width = model._in_features()
    for shape in ((2, 0, width), (0, 3, width)):
        with pytest.raises(ValueError, match=r"backend must be one of .*got 'cuda'"):
            model(torch.randn(*shape))


@pytest.mark.parametrize("name", sorted(DIMS))
def test_the_final_state_of_an_empty_input_is_a_copy(models, name):
    # at T = 0 the "final" state was the caller's initial state itself: zeroing it in place (a reset between
    # sequences) zeroed the initial state too
    model = models[name]
    width = model._in_features()
    u = torch.randn(2, 3, width, dtype=torch.float64)
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        _, state = model(u, output_final_state=True)
    before = copy.deepcopy(state)
    _, final = model(u[:, :0], initial_state=state, output_final_state=True)
    finals = final.values() if isinstance(final, dict) else [final]
    with torch.no_grad():
        for v in finals:
            v.zero_()
    items = state.items() if isinstance(state, dict) else [("h", state)]
    for key, value in items:
        ref = before[key] if isinstance(before, dict) else before
        assert torch.equal(value, ref), key
    # and the state passed through an empty call still continues the sequence exactly
    _, passed = model(u[:, :0], initial_state=state, output_final_state=True)
    x = torch.randn(2, 4, width, dtype=torch.float64)
    torch.testing.assert_close(model(x, initial_state=passed), model(x, initial_state=state), rtol=0, atol=0)


def test_step_and_forward_states_interchange_on_the_reference_backend(models):
    # the reference backend's states continue a torch-backend forward and the other way round (float64: exact up
    # to rounding)
    for name in ("s6", "mamba_block"):
        torch_model = copy.deepcopy(models[name]).double()
        ref_model = copy.deepcopy(torch_model)
        ref_model.backend = "reference"
        u = torch.randn(2, 6, torch_model._in_features(), dtype=torch.float64)
        y = ref_model(u)
        _, state = torch_model(u[:, :3], output_final_state=True)
        ys = []
        for t in range(3, 6):
            y_t, state = ref_model.step(u[:, t], state)
            ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys, 1), y[:, 3:])
        state = None
        for t in range(2):
            _, state = ref_model.step(u[:, t], state)
        torch.testing.assert_close(torch_model(u[:, 2:], initial_state=state), y[:, 2:])


def test_strided_and_half_inputs_match_float64(models):
    # transposed and expanded (stride-0) views of u give the contiguous input's output; fp16 / bf16 inputs are close
    # to the float64 module and come back in their own dtype
    for name in ("s6", "softmax_attention"):
        model = models[name]
        width = model._in_features()
        ut = torch.randn(width, 7, 2).permute(2, 1, 0)
        torch.testing.assert_close(model(ut), model(ut.contiguous()))
        ue = torch.randn(1, 7, width).expand(3, 7, width)
        torch.testing.assert_close(model(ue), model(ue.contiguous()))
        y64 = copy.deepcopy(model).double()(ut.double())
        for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 5e-2)):
            y = model(ut.to(dtype))
            assert y.dtype == dtype
            assert (y.double() - y64).abs().max() < tol * max(1.0, y64.abs().max().item()), (name, dtype)


def test_duplicate_dims_are_refused(capsys):
    # `--dims d=3 d=4` silently ran at d = 4
    spec = str(SPECS / "s6.dsf")
    for cmd in (["check", spec, "--no-triton"], ["bench", spec, "-T", "4", "--repeats", "1"]):
        assert main(cmd + ["--dims", "d=3", "d=4"]) == 2
        err = capsys.readouterr().err
        assert "--dims d is given twice, as 3 and 4" in err and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(DIMS))
def test_an_empty_batch_backpropagates_zero_gradients(models, name):
    # the output of an empty input was a new_zeros tensor without a grad_fn: loss.backward() of a training step on
    # an empty batch failed with "element 0 of tensors does not require grad"; like torch's own layers, it is tied
    # to u and the parameters with zero gradients
    model = copy.deepcopy(models[name])
    for shape in ((2, 0, model._in_features()), (0, 3, model._in_features())):
        model.zero_grad(set_to_none=True)
        u = torch.randn(*shape, requires_grad=True)
        y = model(u)
        assert y.shape[:2] == shape[:2] and y.dtype == u.dtype
        y.sum().backward()
        assert u.grad is not None and u.grad.shape == u.shape
        for p in model.parameters():
            assert p.grad is not None and not p.grad.any()
    with torch.no_grad():  # no graph where none is wanted
        assert model(torch.randn(2, 0, model._in_features())).grad_fn is None


@pytest.mark.parametrize("name", sorted(DIMS))
def test_copies_and_checkpoints_round_trip(models, name, tmp_path):
    # README: modules deep-copy, pickle and torch.save / load_state_dict round-trip (the same outputs, bit for bit)
    import pickle

    model = models[name]
    u = torch.randn(2, 5, model._in_features())
    y = model(u)
    torch.save(model, tmp_path / "m.pt")
    fresh = type(model)(**DIMS[name])
    fresh.load_state_dict(model.state_dict())
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), fresh,
                  torch.load(tmp_path / "m.pt", weights_only=False)):
        assert torch.equal(other(u), y)


def test_the_compute_dtype_follows_the_input(models):
    # README: a float64 module fed fp32 computes in fp32 (and returns fp32); fed float64 it matches float64
    model = models["s6"]
    wide = copy.deepcopy(model).double()
    u = torch.randn(2, 6, 4)
    y = wide(u)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, model(u))
    torch.testing.assert_close(y.double(), wide(u.double()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["s6", "softmax_attention"])
def test_a_second_derivative_through_triton_names_the_way_out(models, name):
    # a gradient of a gradient through the Triton kernels was torch's "Trying to backward through
    # dsfc.diagonal_scan_bwd.default but no autograd formula was registered"; first derivatives (create_graph=True
    # included) are unchanged and match the torch backend
    model = copy.deepcopy(models[name]).to(DEVICE)
    fast = copy.deepcopy(model)
    fast.backend = "triton"
    u = torch.randn(2, 5, model._in_features(), device=DEVICE, requires_grad=True)
    want = torch.autograd.grad(model(u).pow(2).sum(), u)[0]
    g = torch.autograd.grad(fast(u).pow(2).sum(), u, create_graph=True)[0]
    torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match=r"dsfc: the Triton .* kernels have no second derivative .* backend='torch'"):
        torch.autograd.grad(g.pow(2).sum(), u)
    g2 = torch.autograd.grad(model(u).pow(2).sum(), u, create_graph=True)[0]
    assert torch.autograd.grad(g2.pow(2).sum(), u)[0].abs().sum() > 0  # the torch backend has one


def test_a_training_step_on_a_large_cpu_input_does_not_take_the_inference_path(models, monkeypatch):
    # the compiled-chunk CPU path (inference only) asked whether u requires grad, not the parameters: a plain training
    # step on S6 at its default dims with B = 2, T = 2048 took it and failed with torch's "A view was created in
    # no_grad mode and is being modified inplace" (after marking torch.compile broken for the whole process).
    # Forced here at a tiny size (DSFC_COMPILE=always, torch.compile as the identity: the same Python, eagerly).
    from dsfc.runtime import compiled_chunks

    monkeypatch.setattr(compiled_chunks, "MODE", "always")
    monkeypatch.setattr(compiled_chunks, "_broken", False)
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    model = copy.deepcopy(models["s6"])
    model.__dict__.pop("_dsfc_compiled", None)  # (a deep copy starts without compiled functions anyway)
    u = torch.randn(2, 2 * compiled_chunks.CHUNK + 3, 4)
    h0 = torch.zeros(2, 4, 2)
    assert not compiled_chunks.use_compiled_chunks(u, h0, model)  # parameters require grad
    with torch.no_grad():
        assert compiled_chunks.use_compiled_chunks(u, h0, model)
    model.zero_grad(set_to_none=True)
    model(u).pow(2).sum().backward()
    wide = copy.deepcopy(model).double()
    wide.zero_grad(set_to_none=True)
    wide(u.double()).pow(2).sum().backward()
    for (name, p), q in zip(model.named_parameters(), wide.parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # and inference still takes the chunk path, matching float64
        torch.testing.assert_close(model(u).double(), wide(u.double()), rtol=1e-4, atol=1e-6)
