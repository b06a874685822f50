"""Found by the ninth user hunt (a new user of every generated module and of the CLI: wrong ranks, dtypes and
strides, NaN / inf, empty batches and sequences, long sequences at tiny dims, half-precision modules, gradients
through the initial state only, copies and checkpoints, the public helpers besides forward / step). Each test failed
before its fix.

- ``RGLRU(dtype=torch.bfloat16)`` (the default dims) raised "parameter 'Lambda' has inf / NaN entries after the
  spec's initialiser", blaming the spec, and ``dtype=torch.float16`` silently gave a Lambda up to 0.37 off (the
  recurrence's time constants wrong): the spec's formula initialisers were evaluated in the parameter's dtype, and
  ``log(1 / sqrt(a2) - 1)`` cancels in a half dtype. They are now evaluated in fp32 at least and rounded once, so
  ``Model(dtype=dt)`` equals ``Model().to(dt)``; the message names the dtype where a value does not fit it.
- ``model.driven_input(u)`` (public: what B and D multiply) raised torch's "cannot reshape tensor of 0 elements",
  an IndexError (a ``prev`` let) or "torch.cat(): expected a non-empty list" on an empty input (T = 0 or B = 0), for
  every module, where forward and dsf_matrices return empty results: it now returns ``[B, T, width]`` zeros.
"""

from __future__ import annotations

from tests.triton._device import DEVICE  # noqa: F401,I001  (sets TRITON_INTERPRET=1 before triton is imported)

import sys
from pathlib import Path

import pytest
import torch

from dsf_testing import generated_class  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
sys.path.insert(0, str(Path(__file__).parent))
from test_shape_hunt import DIMS  # noqa: E402  (one odd configuration per catalog module)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_formula_initialisers_are_not_evaluated_in_a_half_dtype(dtype):
    from generated.rg_lru import RGLRU

    torch.manual_seed(0)
    half = RGLRU(dtype=dtype)  # the default W = 2560: a2 up to 0.998, 1 / sqrt(a2) - 1 ~ 1e-3
    torch.manual_seed(0)
    rounded = RGLRU().to(dtype)
    for (name, p), q in zip(half.named_parameters(), rounded.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("name", sorted(DIMS))
def test_driven_input_of_an_empty_input(name):
    torch.manual_seed(0)
    model = generated_class(name)(**DIMS[name])
    width = model.driven_input(torch.randn(2, 3, model._in_features())).shape[-1]
    for shape in ((2, 0), (0, 3)):
        got = model.driven_input(torch.randn(*shape, model._in_features()))
        assert got.shape == (*shape, width) and got.dtype == torch.float32, (name, shape, got.shape)
