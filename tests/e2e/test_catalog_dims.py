"""The catalog at dims it does not use, on the Triton path (interpreted on CPU), and its illegal dims (hunt 24).

``test_dims_sweep.py`` runs every catalog spec at all-1 and odd prime dims on the torch path, and
``tests/triton/test_shape_hunt_triton.py`` six of them on the Triton path. Here the other catalog specs run on
``backend="triton"`` at a dim set of their own (odd or prime sizes, 1 where legal, heads that group unevenly where the
spec allows it: SSD's G = 2 groups of 3 heads, RG-LRU's 5 blocks of 3, mLSTM's projection blocks of 3 across heads of
2), from an initial state (a KV-cache prefix for softmax attention and FoX), with the final state and the gradients of
u, the initial state and every parameter, against dsfc's float64 reference. The hunt ran every spec at two such dim
sets on torch and Triton (T = 0, 1, 5, 7, with step) and found no mismatch; this keeps one set per spec.

Illegal dims, as a user passes them to a generated class (``SSD(H=5, G=2)``): 0, negative, a float, a string, a
derived dim that does not divide or goes to 0, a dim named like a derived one; each a ValueError (TypeError for an
argument that is not a dim) naming the dim.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import functools  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dsf_testing import (F64, INTERPRETER_WARNINGS, TRITON, build, check_backend, generated_class,  # noqa: E402
                         rel_err)
from dsfc.check import spec_errors_at  # noqa: E402
from dsfc.pipeline import compile_spec  # noqa: E402

pytestmark = INTERPRETER_WARNINGS
ROOT = Path(__file__).resolve().parents[2]

# one dim set per catalog spec that tests/triton/test_shape_hunt_triton.py does not run on Triton
DIMS = {
    "fox": dict(d=3, H=3, K=2, V=5),
    "gated_deltanet": dict(d=7, H=5, K=3, V=2),
    "hgrn": dict(d=7, E=5, L=3, layer=2),
    "linear_attention": dict(d=1, H=1, K=7, V=1),
    "linear_attention_normalized": dict(d=7, H=5, K=3, V=2),
    "mamba_block": dict(d=2, e=1, n=1, r=1, W=5),
    "mlstm": dict(H=3, DH=2, bs=3),
    "normalized_attention": dict(d=9, H=3, K=5),
    "normalized_attention_exprelu": dict(d=7, H=7, K=2),
    "normalized_attention_sigmoid": dict(d=10, H=5, K=3),
    "qlstm": dict(d=3, e=3),
    "qlstm_s6": dict(d=1, e=3),
    "rg_lru": dict(W=15, nh=5),
    "rwkv6": dict(d=5, H=3, K=3, V=2, R=2, Rw=3, layer=2, L=3),
    "s4d": dict(d=3, Nh=5),
    "softmax_attention": dict(d=1, H=1, K=1, V=1),
    "ssd": dict(H=6, P=3, n=2, G=2),
    "taylor_attention": dict(d=3, H=2, K=3, V=5, p=3),
}
PREFIX = 3  # KV-cache specs: tokens before the continued call


@functools.lru_cache(maxsize=None)
def _compiled(name):
    return compile_spec(ROOT / "specs" / f"{name}.dsf")


def _kv_cache_on_triton(built, b: int, t: int) -> None:
    """Softmax attention and FoX carry a KV cache: the call continued from a PREFIX-token cache (both on Triton)
    against the reference over the whole sequence, and the gradients of u and every parameter through both calls
    against the torch path's."""
    model, gen = built.model, torch.Generator().manual_seed(0)
    u = torch.randn(b, PREFIX + t, built.d_in(), generator=gen, dtype=F64)
    want = built.reference(u)[0][:, PREFIX:]
    w = torch.randn(want.shape, generator=gen, dtype=F64)
    grads = {}
    for backend in ("torch", "triton"):
        model.backend = backend
        uu = u.clone().requires_grad_()
        _, cache = model(uu[:, :PREFIX], output_final_state=True)
        y = model(uu[:, PREFIX:], initial_state=cache)
        assert rel_err(y.detach(), want) < 1e-8, backend
        grads[backend] = torch.autograd.grad((y * w).sum(), [uu, *model.parameters()])
    scale = max(g.abs().max().item() for g in grads["torch"])
    for g, r in zip(grads["triton"], grads["torch"], strict=True):
        assert (g - r).abs().max().item() <= 1e-8 * scale


@pytest.mark.skipif(not TRITON, reason="triton (and numpy for its interpreter) not installed")
@pytest.mark.parametrize("name", sorted(DIMS))
def test_catalog_spec_at_other_dims_matches_the_reference_on_triton(name):
    result = _compiled(name)
    assert spec_errors_at(result, DIMS[name]) is None
    built = build(result, DIMS[name])
    if result.structure.family.value == "quadratic attention":
        _kv_cache_on_triton(built, 2, 5)
    else:
        check_backend(built, "triton", ((2, 5),), steps=False, h0s=(True,))


ILLEGAL = [
    ("s6", dict(d=0), "dim d must be a positive integer, got 0"),
    ("s6", dict(n=-1), "dim n must be a positive integer, got -1"),
    ("s6", dict(d=2.5), "dim d must be a positive integer, got 2.5"),
    ("s6", dict(d="7"), "dim d must be a positive integer, got '7'"),
    ("ssd", dict(H=5, G=2), "H must be divisible by G"),
    ("ssd", dict(H=3, G=6), "H must be divisible by G"),
    ("rg_lru", dict(W=7, nh=2), "W must be divisible by nh"),
    ("normalized_attention", dict(d=7, H=2), "d must be divisible by H"),
    ("mlstm", dict(H=3, DH=2, bs=4), "DH*H must be divisible by bs"),
    ("hgrn", dict(L=3, layer=5), "dim later = L - layer + 1 must be a positive integer"),
    ("rwkv6", dict(L=1), "L - 1 (spec line 50), a divisor, must be nonzero"),
    ("taylor_attention", dict(p=0), "dim p must be a positive integer, got 0"),
    ("mamba_block", dict(W=0), "dim W must be a positive integer, got 0"),
]


@pytest.mark.parametrize("name, dims, message", ILLEGAL, ids=[f"{n}-{'-'.join(map(str, d.values()))}"
                                                             for n, d, _ in ILLEGAL])
def test_a_generated_class_refuses_illegal_dims_naming_them(name, dims, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generated_class(name)(**dims)


def test_a_derived_dim_is_not_an_argument():
    with pytest.raises(TypeError, match="'R' is a derived dim"):
        generated_class("ssd")(R=2)
