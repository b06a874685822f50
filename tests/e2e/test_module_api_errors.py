"""Bad input to a generated module's public API, found by the input hunt: each is an error naming the problem
(it was a raw torch error deep inside, or a silently wrong result). The modules are compiled from specs/ here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsfc.check import load_module
from dsfc.pipeline import compile_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


def _cls(name):
    result = compile_spec(SPECS / f"{name}.dsf")
    return getattr(load_module(result, f"dsfc_api_{name}"), result.plan.model)


@pytest.fixture(scope="module")
def s6():
    torch.manual_seed(0)
    return _cls("s6")(d=4, n=2, r=2)


@pytest.fixture(scope="module")
def mamba():
    torch.manual_seed(0)
    return _cls("mamba_block")(d=4, e=1, n=2, r=1, W=2)


def test_driven_input_checks_u(s6):
    # driven_input skipped the input checks: a wrong width was torch's "shape '[2, 5, 4]' is invalid", an integer u
    # was silently converted
    with pytest.raises(ValueError, match=r"S6: expected u of shape \[batch, time, 4\], got \(2, 5, 3\)"):
        s6.driven_input(torch.randn(2, 5, 3))
    with pytest.raises(TypeError, match="S6: u must be a floating-point tensor, got torch.int64"):
        s6.driven_input(torch.ones(2, 5, 4, dtype=torch.int64))
    u = torch.randn(2, 5, 4)
    assert torch.equal(s6.driven_input(u), u)  # S6 drives B and D with the input itself


def test_running_entries_of_the_state_dict_are_checked(mamba):
    u = torch.randn(2, 5, 4)
    y, state = mamba(u, output_final_state=True)
    assert tuple(state["xs"].shape) == (2, 4, 2)  # [batch, E, W]
    # a wrong shape was an IndexError, a list an AttributeError, a NaN a silently NaN output, an int accepted
    cases = [(torch.zeros(3), ValueError, r"initial_state\['xs'\] must have shape \(2, 4, 2\).*got \(3,\)"),
             (torch.zeros(1, 4, 2), ValueError, r"must have shape \(2, 4, 2\)"),
             ([1.0], TypeError, r"initial_state\['xs'\] must be a floating-point tensor, got list"),
             (state["xs"].int(), TypeError, "must be a floating-point tensor, got torch.int32"),
             (torch.full((2, 4, 2), float("nan")), ValueError, r"initial_state\['xs'\] contains NaN or inf")]
    for bad, err, msg in cases:
        with pytest.raises(err, match=msg):
            mamba(u, initial_state={"h": state["h"], "xs": bad})
        with pytest.raises(err, match=msg.replace("initial_state", "state")):  # step names its own argument
            mamba.step(u[:, 0], {"h": state["h"], "xs": bad})
        with pytest.raises(err, match=msg):
            mamba.dsf_matrices(u, {"xs": bad})
    with pytest.raises(ValueError, match=r"unknown running quantity key\(s\) \['x'\]; expected keys \['xs'\]"):
        mamba.dsf_matrices(u, {"x": state["xs"]})
    # the right entries still continue the sequence: two halves from the carried state equal one forward
    y1, s1 = mamba(u[:, :2], output_final_state=True)
    y2 = mamba(u[:, 2:], initial_state=s1)
    assert torch.allclose(torch.cat([y1, y2], 1), y, atol=1e-6)


def test_running0_for_a_spec_without_running_quantities(s6):
    # silently ignored before: a state dict meant for another model
    with pytest.raises(ValueError, match=r"S6: the spec has no running quantities to carry, got running0 keys \['zz'\]"):
        s6.dsf_matrices(torch.randn(1, 2, 4), {"zz": torch.zeros(1)})


def test_nonfinite_parameters_are_an_error_not_a_nan_output(s6):
    # a NaN loaded from a checkpoint (or left by a diverged step) made every output NaN without a word
    layer = type(s6)(d=4, n=2, r=2)
    layer.load_state_dict(s6.state_dict())
    with torch.no_grad():
        layer.D[1] = float("nan")
    u = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="S6: parameter 'D' contains NaN or inf"):
        layer(u)
    with pytest.raises(ValueError, match="S6: parameter 'D' contains NaN or inf"):
        layer.step(u[:, 0])
    with torch.no_grad():
        layer.D[1] = 1.0
        layer.W_B.fill_(3e38)  # finite but huge: the parameters' sum overflows; the elementwise test clears them
    # (the output then overflows to NaN: named as such, not blamed on a parameter; test_user_hunt_12.py)
    with pytest.raises(FloatingPointError, match="S6: the output is NaN at"):
        layer(u)
    layer.check_finite = False
    assert layer(u).shape == (2, 5, 4)


def test_integer_dtype_and_foreign_device_are_named(s6):
    with pytest.raises(TypeError, match="S6: dtype must be a floating-point torch.dtype, got torch.int64"):
        type(s6)(d=4, n=2, r=2, dtype=torch.int64)  # was torch's "Only Tensors of floating point ... gradients"
    with pytest.raises(TypeError, match="S6: dtype must be a floating-point torch.dtype, got torch.complex64"):
        type(s6)(d=4, n=2, r=2, dtype=torch.complex64)  # was "the spec's parameter initialisers fail"
    # u on another device than the parameters (meta stands in for a GPU): was "Tensor.item() ... meta tensors"
    with pytest.raises(ValueError, match="S6: u is on meta but the parameters are on cpu"):
        s6(torch.randn(2, 5, 4, device="meta"))


@pytest.fixture(scope="module")
def softmax():
    torch.manual_seed(0)
    return _cls("softmax_attention")(d=8, H=2, K=4, V=4)


def test_quadratic_cache_is_checked(softmax):
    """The quadratic family's KV-cache state dict: a wrong shape was a raw torch.cat / einsum error, NaN keys a
    silent NaN output, int keys accepted, a list an AttributeError, extra keys ignored. A well-formed cache
    continues the sequence exactly (checked against one forward over the whole sequence)."""
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    model = softmax.double()
    _, cache = model(x[:, :3], output_final_state=True)
    y_cont = model(x[:, 3:], initial_state=cache)
    torch.testing.assert_close(y_cont, model(x)[:, 3:])
    keys, values = "cache:keys", "cache:values"
    bad = [({**cache, values: cache[values][:, :2]}, ValueError, r"state\['cache:values'\] must be \[2, S, 2, 4\]"),
           ({**cache, keys: cache[keys][..., :3]}, ValueError, r"state\['cache:keys'\] must be \[2, S, 2, 4\]"),
           ({**cache, keys: cache[keys].long()}, TypeError, r"state\['cache:keys'\] must be a floating-point"),
           ({**cache, keys: cache[keys].tolist()}, TypeError, r"must be a floating-point tensor, got list"),
           ({**cache, keys: torch.full_like(cache[keys], float("nan"))}, ValueError, "contains NaN or inf"),
           ({**cache, "zz": cache[keys]}, ValueError, r"unknown .*\['zz'\]"),
           # a cache without its values named the state "not a fixed-size tensor" (it was a dict)
           ({k: v for k, v in cache.items() if k != values}, ValueError, r"the KV cache dict lacks 'cache:values'"),
           (cache[keys], ValueError, r"KV cache dict .* not a Tensor")]
    running = [k for k in cache if not k.startswith("cache:")]
    for name in running:
        bad.append(({**cache, name: cache[name][:, None]}, ValueError, f"initial_state\\['{name}'\\] must have shape"))
    for state, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            model(x[:, 3:], initial_state=state)


def test_quadratic_constructor_and_driven_input(softmax):
    cls = type(softmax)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype, got torch.int32"):
        cls(d=8, H=2, K=4, V=4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"expected u of shape \[batch, time, 8\], got \(2, 5, 3\)"):
        softmax.driven_input(torch.randn(2, 5, 3))
    broken = cls(d=8, H=2, K=4, V=4)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="parameter .* contains NaN or inf"):
        broken(torch.randn(1, 3, 8))


def test_meta_module_infers_shapes(s6, mamba, softmax):
    """A module built on the meta device (shape inference without memory) ran its NaN check on meta u: torch's
    "Tensor.item() cannot be called on meta tensors". Meta tensors have no values, so the check is skipped."""
    dims = {s6: dict(d=4, n=2, r=2), mamba: dict(d=4, e=1, n=2, r=1, W=2), softmax: dict(d=8, H=2, K=4, V=4)}
    for model in (s6, mamba, softmax):
        meta = type(model)(**dims[model], device="meta")
        u = torch.randn(2, 5, model._in_features(), device="meta")
        y, state = meta(u, output_final_state=True)
        assert y.is_meta and y.shape == model(torch.randn(2, 5, model._in_features(), dtype=y.dtype)).shape
        y_t, _ = meta.step(u[:, 0], state)
        assert y_t.shape == (2, y.shape[-1]) and y_t.is_meta


def test_state_on_another_device_is_named(s6, mamba, softmax):
    # meta stands in for a GPU: a state on another device than u was torch's "Tensor.item() ... meta tensors" (or,
    # with a real GPU, a device mismatch deep in the scan)
    u = torch.randn(2, 5, 4)
    _, state = s6(u, output_final_state=True)
    with pytest.raises(ValueError, match="S6: initial_state is on meta but u is on cpu"):
        s6(u, initial_state=state.to("meta"))
    with pytest.raises(ValueError, match="S6: state is on meta but u is on cpu"):
        s6.step(u[:, 0], state.to("meta"))
    _, state = mamba(u, output_final_state=True)
    with pytest.raises(ValueError, match=r"MambaBlock: initial_state\['xs'\] is on meta but u is on cpu"):
        mamba(u, initial_state={"h": state["h"], "xs": state["xs"].to("meta")})
    with pytest.raises(ValueError, match="MambaBlock: initial_state is on meta but u is on cpu"):
        mamba(u, initial_state={"h": state["h"].to("meta"), "xs": state["xs"]})
    x = torch.randn(2, 5, 8)
    _, cache = softmax(x, output_final_state=True)
    with pytest.raises(ValueError, match=r"SoftmaxAttention: state\['cache:values'\] is on meta but u is on cpu"):
        softmax(x, initial_state={**cache, "cache:values": cache["cache:values"].to("meta")})


def test_step_names_u_t_not_a_time_axis(s6, softmax):
    # a wrong width in step was forward's "expected u of shape [batch, time, 4], got (2, 1, 3)", a shape never passed
    with pytest.raises(ValueError, match=r"S6.step: expected u_t of shape \[batch, 4\], got \(2, 3\)"):
        s6.step(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"SoftmaxAttention.step: expected u_t of shape \[batch, 8\], got \(2, 3\)"):
        softmax.step(torch.randn(2, 3))


def test_backend_set_after_construction_is_checked(s6):
    # the constructor refused backend="cuda", but model.backend = "cuda" silently ran the torch path
    layer = type(s6)(d=4, n=2, r=2)
    layer.backend = "cuda"
    with pytest.raises(ValueError, match=r"S6: backend must be one of \('auto', 'torch', 'triton', 'reference'\), got 'cuda'"):
        layer(torch.randn(1, 3, 4))


def test_step_names_its_own_state_argument(s6, mamba, softmax):
    # step's bad state was reported as forward's "initial_state ...", an argument the caller of step never passed
    with pytest.raises(ValueError, match=r"S6: state must have shape \(2, 4, 2\) .*got \(2, 3\)"):
        s6.step(torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(TypeError, match="S6: state must be a floating-point tensor, got str"):
        s6.step(torch.randn(2, 4), "h")
    with pytest.raises(ValueError, match=r"MambaBlock: state\['xs'\] must have shape"):
        mamba.step(torch.randn(2, 4), {"h": torch.zeros(2, 4, 2), "xs": torch.zeros(2, 7)})
    with pytest.raises(ValueError, match="SoftmaxAttention: the KV cache dict lacks"):
        softmax.step(torch.randn(2, 8), {"k": torch.zeros(2, 2)})


# dsf_matrices returned expanded views: a matrix that does not vary over the batch (a time-invariant A, a D read
# straight from a param) came back with stride 0 over batch and time, or as the parameter's own storage, so an
# in-place edit raised "more than one element of the written-to tensor refers to a single memory location" or
# silently changed the parameter
PARAM_MATRICES = """
model ParamMatrices
dim d = 3
input u[d]
state h[c: d]
param a[d] ~ uniform(0.1, 0.9)
param W[d, d] ~ normal(0, 1)
A[i, k] = delta(i, k) * a[i]
B[i, k] = W[i, k]
C[o, k] = delta(o, k)
D[o, k] = W[o, k]
"""


@pytest.mark.parametrize("spec", ["param_matrices", "s6", "softmax_attention"])
def test_dsf_matrices_are_fresh_contiguous_tensors(spec, tmp_path):
    if spec == "param_matrices":
        path = tmp_path / "param_matrices.dsf"
        path.write_text(PARAM_MATRICES)
        result = compile_spec(path)
        model = getattr(load_module(result, "dsfc_api_param_matrices"), result.plan.model)()
    else:
        model = _cls(spec)(**({"d": 4, "n": 2, "r": 2} if spec == "s6" else {}))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for b, t in ((1, 1), (2, 3)):
        mats = model.dsf_matrices(torch.randn(b, t, model._in_features()))
        for m in mats:
            assert m.is_contiguous() and 0 not in m.stride()[:2] or m.numel() == 0
            assert m.untyped_storage().data_ptr() not in storages
            assert len({x.untyped_storage().data_ptr() for x in mats}) == len(mats)
        with torch.no_grad():
            for m in mats:
                m.mul_(2.0)  # in place: must neither raise nor reach a parameter
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
