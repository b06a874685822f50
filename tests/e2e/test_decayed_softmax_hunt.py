"""A new-user hunt on decayed softmax attention (specs/fox.dsf variants), against dsfc/reference.py's float64
recurrence and the module's own one-pass output.

Findings:

1. A gate that is a let holding a positive constant (``let f[h: H] = 0.9``, the README's "a positive constant" ALiBi
   gate given a name) was refused: "the decay of 'z' f[h] is not provably positive", though the same 0.9 written
   inline compiled. Cause: ``log_space.exact_log`` looks through a let read with ``exact_log`` itself, which has no
   case for a number (its callers treat bare numbers). Fix: the let's value goes through ``_log_term`` (log c for a
   positive constant, None for a negative one), as a constant factor of a product already did. Generated code of
   specs/ is unchanged.
2. A cache without 'cache:decay' (a plain softmax attention cache handed to the FoX model, or the entry dropped) was
   refused with "state['cache:decay'] must be a floating-point tensor, got NoneType". Cause:
   ``runtime.checks.check_kv_cache`` checked presence only for 'cache:keys' and 'cache:values'. Fix: every cache
   entry the model wants is checked for presence, so the message says the dict lacks 'cache:decay'.

Checked clean (torch; Triton interpreted where noted in the hunt, not all repeated here): gates exp(-softplus(x)),
sigmoid of a let, a product of two gates, 1 - sigmoid, a per-head param gate from the param initialiser
(ALiBi, ``param sl[h: H] = 2 ^ (-8 * (h + 1) / H)``), a decay reading a cumsum let; an output gate and an out
projection as posts, D, an output gate factor in C, grouped-query heads (``k[h // R, a]``), one head with K = V = 1,
odd dims, the un-normalised kernel A = f I; forward at T = 0, 1, 5, 33 and batch 1, 3, a split call through
``output_final_state`` / ``initial_state`` and token-by-token ``step`` equal to one pass (cache entries included),
gradients of input and params against the reference and of the cache entries Triton against torch; fp32 T = 2000
with |G| up to 4e5 (torch and Triton within 4e-7 of float64); NaN input (refused with its position), empty batch,
bf16 input (finite, ~4e-3); a gate per key group (``f[h // R]``), a gate of the previous step's projection
(``prev``), a decay read in A as exp(-s) and in the history as 1 / exp(s), A = (eta_prev / eta)^2 with a cumsum
history; ``kernel_form`` against forward; fp32 gradients (cache entries included) at gate scales 50 and 500.
Refused with a positioned error: tanh and negative or zero gates, a history decay f^2 against A's f, a decay per
value or feature entry, gates reading eta / z / prev(eta) (a let cycle).

Seen, not changed: with ``check_finite=False`` a NaN input at step t makes earlier outputs of that sequence NaN too
(plain softmax attention alike, both backends: masked weights 0 times a NaN value); a growing gate exp(softplus(x))
in fp32 with G_i - G_j ~ 2000 is 9e-5 off float64 (the pairwise terms are cast to fp32 before the row maximum is
taken); a batch of 0 rows returns no running entries ('eta_prev') in its final state, as every family does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsf_testing import compile_and_build, grads_of, rel_err, run_steps

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
DIMS = {"d": 5, "H": 2, "K": 3, "V": 4}
FOX = (ROOT / "specs" / "fox.dsf").read_text(encoding="utf-8")
SIG = "sigmoid(sum(m, W_F[h, m] * u[m]))"


def _variant(repl, extra_lets=""):
    text = FOX
    for old, new in repl:
        assert old in text, old
        text = text.replace(old, new)
    if extra_lets:
        text = text.replace("let qf[", extra_lets + "\nlet qf[", 1)
    return text


VARIANTS = {
    "const_let": _variant([(SIG, "0.9")]),
    "const_let_per_head": _variant([(SIG, "exp(-sl[h])")], "let sl[h: H] = 0.5 * (h + 1)"),
    "softplus": _variant([(SIG, "exp(-softplus(sum(m, W_F[h, m] * u[m])))")]),
    "product": _variant([(SIG, SIG + " * exp(-sum(m, W_F[h, m] * u[m]) ** 2)")]),
    "alibi_param": _variant([("param W_F[H, d] ~ uniform(-1 / sqrt(d), 1 / sqrt(d))",
                              "param sl[h: H] = 2 ^ (-8 * (h + 1) / H)"), (SIG, "exp(-sl[h])")]),
    "cumsum_gate": _variant([(SIG, "exp(-cs[h])")], "let cs[h: H] = cumsum(sum(m, W_F[h, m] * u[m]) ** 2)"),
}


def _check(built):
    m = built.model
    gen = torch.Generator().manual_seed(0)
    for batch, T in ((1, 0), (1, 1), (3, 5), (1, 33)):
        u = torch.randn(batch, T, built.d_in(), generator=gen, dtype=F64)
        with torch.no_grad():
            y, cache = m(u, output_final_state=True)
        if T <= 5:  # the slot-form reference is O(T^3)
            y_ref, _ = built.reference(u)
            assert rel_err(y, y_ref) < 1e-9, (batch, T)
            w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
            got, want = grads_of(m, built, u, None, w), grads_of(None, built, u, None, w)
            scale = max((g.abs().max().item() for g in want if g.numel()), default=0.0)
            for g, r in zip(got, want):
                assert not g.numel() or (g - r).abs().max().item() <= 1e-7 * max(scale, 1e-300), (batch, T)
        if T:
            s = T // 2
            with torch.no_grad():
                y1, c1 = m(u[:, :s], output_final_state=True)
                y2, c2 = m(u[:, s:], initial_state=c1, output_final_state=True)
                ys, cs = run_steps(m, u, None)
            assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(ys, y) < 1e-10
            for key in cache:
                assert rel_err(c2[key], cache[key]) < 1e-10 and rel_err(cs[key], cache[key]) < 1e-10, key


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_gate_variants_match_the_reference(name):
    built = compile_and_build(VARIANTS[name], DIMS, path=f"{name}.dsf")
    assert built.result.structure.kernel.attention_decayed
    _check(built)


def test_constant_let_gate_on_triton(triton_interpret):
    built = compile_and_build(VARIANTS["const_let"], DIMS, path="const_let.dsf")
    m = built.model
    u = torch.randn(2, 7, 5, dtype=F64)
    with torch.no_grad():
        want = m(u)
        m.backend = "triton"
        y1, c = m(u[:, :3], output_final_state=True)
        y2 = m(u[:, 3:], initial_state=c)
    assert rel_err(torch.cat([y1, y2], 1), want) < 1e-10


@pytest.fixture
def triton_interpret():
    import os

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1 (set before triton is imported)")


def test_a_cache_without_the_decay_entry_is_named_missing():
    built = compile_and_build(FOX, DIMS, path="fox.dsf")
    m = built.model
    u = torch.randn(2, 3, 5, dtype=F64)
    _, cache = m(u, output_final_state=True)
    plain = {k: v for k, v in cache.items() if k != "cache:decay"}
    with pytest.raises(ValueError, match=r"FoX: the KV cache dict lacks 'cache:decay' \(it has \["):
        m(u, initial_state=plain)
    with pytest.raises(ValueError, match="lacks 'cache:decay'"):
        m.step(u[:, 0], plain)
