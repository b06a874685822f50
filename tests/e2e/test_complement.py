"""``1 - P`` is written without cancellation where P has an exact log (dsfc/analysis/log_space.py, ``complements``).

The bug: RG-LRU's input scale ``sqrt(1 - a^2)`` with ``a = exp(-8 r softplus(Lambda))`` was printed as written.
With the recurrence gate closed (``r`` below ~1e-8, e.g. a gate pre-activation of -20) ``a`` rounds to 1 in fp32,
the scale was exactly 0 instead of ``sqrt(16 r softplus(Lambda))`` (the output lost that input entirely) and the
backward of ``sqrt(0)`` made the gradients of u, W_a, b_a and Lambda NaN. Now the code computes
``sqrt(-expm1(-16 r softplus(Lambda)))``.

Likewise the linear-attention feature map ``elu(z) + 1``, ``(exp(z) - 1) + 1`` below 0, was 0 in fp32 for
z < -17 and lost all precision well before (relative error eps / exp(z)); normalised linear attention divides
``q . S`` by ``q . z``, so its output was 10-100% off or 0 / 0. Now ``elu1p(z) = exp(min(z, 0)) + relu(z)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy as sp
import torch

from dsf_testing import F64, assert_grads_close, compile_and_build, output_and_grads
from dsfc.analysis.log_space import complements
from dsfc.ir.functions import Elu, Elu1p, Expm1, Sigmoid
from dsfc.pipeline import compile_text

SPECS = Path(__file__).resolve().parents[2] / "specs"
SPEC = (SPECS / "rg_lru.dsf").read_text()
DIMS = {"W": 4, "nh": 2}
# b_a = -20: r = sigmoid(-20 + ...) ~ 2e-9, 8 r softplus(Lambda) ~ 1e-9 < fp32's eps / 2: a == 1 in fp32.
# Lambda = -12 with the gate open: softplus(Lambda) = 6e-6, 1 - a^2 ~ 5e-5 (the old fp32 form kept ~3 digits).
CASES = {"closed_gate": ("b_a", -20.0), "weak_decay": ("Lambda", -12.0)}


def test_complements_forms():
    x, z = sp.symbols("x z", real=True)
    sym = compile_text(SPEC, "rg_lru.dsf").sym
    assert complements(1 - sp.exp(x) ** 2, sym) == -Expm1(2 * x)
    assert complements(3 - 3 * sp.exp(-x), sym) == -3 * Expm1(-x)
    assert complements(1 - Sigmoid(z), sym) == Sigmoid(-z)
    assert complements(1 - x, sym) == 1 - x  # no exact log: left alone
    assert complements(2 - sp.exp(x), sym) == 2 - sp.exp(x)  # not n - n P
    assert complements(Elu(z) + 1, sym) == Elu1p(z)
    assert complements(2 * Elu(z) + 2, sym) == 2 * Elu1p(z)
    assert complements(Elu(z) + 2, sym) == Elu(z) + 2
    # a common factor, as SymPy expands (1 - exp(z)) x and (elu(z) + 1) x
    assert complements(x - x * sp.exp(z), sym) == -x * Expm1(z)
    assert complements(x * Elu(z) + x + 1, sym) == x * Elu1p(z) + 1
    assert complements(x - z * sp.exp(z), sym) == x - z * sp.exp(z)
    a = sp.IndexedBase("a")[sp.Symbol("c", integer=True)]
    got = complements(sp.sqrt(1 - a ** 2), sym)  # through the let a = exp(-8 r softplus(Lambda))
    assert got.has(Expm1) and not got.has(a)
    ig = sp.IndexedBase("ig")[sp.Symbol("c", integer=True)]  # sigmoid of a sum: its log would recompute the sum
    assert complements(1 - ig, sym) == 1 - ig


def test_generated_rg_lru_has_no_cancellation():
    src = compile_text(SPEC, "rg_lru.dsf").source
    assert "_bu = torch.sqrt(-expm1(" in src and "_bu = torch.sqrt(1 + (-(a * a)))" not in src


@pytest.mark.parametrize("case", sorted(CASES))
def test_rg_lru_weak_decay_fp32_matches_float64(case):
    """fp32 torch path vs the float64 reference: output and every gradient finite and close."""
    b = compile_and_build(SPEC, DIMS, path="rg_lru.dsf")
    name, value = CASES[case]
    with torch.no_grad():
        getattr(b.model, name).fill_(value)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 21, 4, generator=g, dtype=F64)
    w = torch.randn(2, 21, 4, generator=g, dtype=F64)
    y32, g32 = output_and_grads(b.model, "torch", u, w, torch.float32)
    y64, g64 = output_and_grads(b.model, "reference", u, w, F64)
    # the reference's own 1 - a^2 in float64 carries eps64 / (1 - a^2) <= 1e-7 relative error here; fp32 rounding of
    # O(T) sums adds ~1e-6. The bug gave 0 (relative error 1) and NaN gradients.
    assert (y32 - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
    assert_grads_close(g32, g64, 1e-4)


def test_normalized_linear_attention_negative_features_fp32():
    """Queries and keys with pre-activations around -15: the feature maps are ~3e-7, which fp32 kept only to about
    eps / 3e-7 = 20% as (exp(z) - 1) + 1. fp32 torch path vs the float64 reference (whose own elu(z) + 1 is good to
    eps64 / 3e-7 = 4e-10 here)."""
    b = compile_and_build((SPECS / "linear_attention_normalized.dsf").read_text(), {"d": 4, "H": 2, "K": 3, "V": 2},
                          path="linear_attention_normalized.dsf")
    with torch.no_grad():
        b.model.W_Q.fill_(-1.25)
        b.model.W_K.fill_(-1.25)
        b.model.W_Q.add_(0.1 * torch.randn_like(b.model.W_Q))
        b.model.W_K.add_(0.1 * torch.randn_like(b.model.W_K))
    g = torch.Generator().manual_seed(0)
    u = 3.0 + 0.3 * torch.randn(2, 13, 4, generator=g, dtype=F64)  # W u ~ -15
    b.model.backend = "reference"
    y64 = b.model(u)
    model = b.model.to(torch.float32)
    model.backend = "torch"
    y32 = model(u.float())
    # fp32 rounding of the features (1e-7 relative) and O(T) sums; the bug gave ~0.2 and NaN (0 / 0)
    assert torch.isfinite(y32).all()
    assert (y32.to(F64) - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()


def test_rg_lru_closed_gate_compiled_chunks(monkeypatch):
    """The compiled-chunk CPU inference path (torch.compile of the per-chunk step loop) at the closed gate: Inductor's
    CPU code for torch.expm1 computes exp(x) - 1 (relative error 1 at |x| < 6e-8 in fp32, torch 2.13), so the
    generated code calls dsfc.runtime's expm1, Kahan's form while compiling. Same tolerance as the eager test."""
    from dsfc.runtime import compiled_chunks

    monkeypatch.setattr(compiled_chunks, "MODE", "always")
    b = compile_and_build(SPEC, DIMS, path="rg_lru.dsf")
    with torch.no_grad():
        b.model.b_a.fill_(-20.0)
    u = torch.randn(2, 2 * compiled_chunks.CHUNK + 3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    b.model.backend = "reference"
    y64 = b.model(u)
    model = b.model.to(torch.float32)
    model.backend = "torch"
    with torch.no_grad():
        y32 = model(u.float())
    assert not compiled_chunks._broken  # the compiled path ran
    assert (y32.to(F64) - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
