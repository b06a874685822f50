"""A parameter of a generated module replaced by one of another shape or dtype is named in the error.

It failed deep in the scan with torch's broadcast or einsum error (``The size of tensor a (64) must match ...``),
naming no parameter (the thirteenth input hunt's "Found, NOT fixed"). ``_check_input`` now compares every parameter
with the shape the spec's dims give it, on every call of forward / step / dsf_matrices, in ~3 us (it reads
``_parameters``, not ``getattr``: decoding loops call it once a token).
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.e2e.dsf_testing import generated_class  # noqa: E402

# one module per template: the recurrent module (diagonal, outer-product, delta-rule scans) and quadratic attention
MODELS = ["s6", "gated_deltanet", "softmax_attention"]


def _layer(name):
    torch.manual_seed(0)
    return generated_class(name)()


def _u(layer, T=3):
    return torch.randn(2, T, layer._in_features())


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_of_another_shape_is_named(name):
    layer = _layer(name)
    u = _u(layer)
    for pname, p in list(layer.named_parameters()):
        good = p.detach().clone()
        wrong = torch.zeros(*p.shape, 2) if p.dim() else torch.zeros(3)
        setattr(layer, pname, torch.nn.Parameter(wrong))
        want, got = (re.escape(str(tuple(t.shape))) for t in (p, wrong))
        message = rf"parameter {pname} must have shape {want}.*got {got}"
        with pytest.raises(ValueError, match=message):
            layer(u)
        setattr(layer, pname, torch.nn.Parameter(good))
    layer(u)  # restored: runs again


@pytest.mark.parametrize("name", MODELS)
def test_a_removed_or_integer_parameter_is_named(name):
    layer = _layer(name)
    u = _u(layer)
    pname, p = next(iter(layer.named_parameters()))
    p.requires_grad_(False)
    p.data = p.data.to(torch.int32)
    with pytest.raises(TypeError, match=rf"parameter {pname} must be a floating-point tensor, got torch.int32"):
        layer(u)
    setattr(layer, pname, None)  # nn.Module allows a registered parameter to be set to None
    with pytest.raises(ValueError, match=rf"parameter {pname} must have shape .* got None \(removed\)"):
        layer(u)


def test_step_and_dsf_matrices_check_the_parameters_too():
    layer = _layer("s6")
    layer.D = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(ValueError, match=r"parameter D must have shape \(64,\)"):
        layer.step(torch.randn(2, 64))
    with pytest.raises(ValueError, match=r"parameter D must have shape \(64,\)"):
        layer.dsf_matrices(torch.randn(2, 3, 64))


def test_a_state_dict_of_other_dims_loaded_non_strictly_is_caught_at_forward():
    """load_state_dict(strict=False) raises torch's size mismatch but leaves the matching parameters copied; a
    parameter the user then swaps in by hand to make it 'fit' is caught before the scan."""
    small = generated_class("s6")(d=8)
    layer = _layer("s6")
    layer.W_B = torch.nn.Parameter(small.W_B.detach().clone())
    with pytest.raises(ValueError, match=r"parameter W_B must have shape \(16, 64\).*got \(16, 8\)"):
        layer(_u(layer))
