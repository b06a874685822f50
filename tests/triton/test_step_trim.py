"""The decoding step after its per-step ops were trimmed (README "Decoding"; op counts: tests/triton/
test_step_launches.py). What changed, and what each test here pins:

- An elementwise D u (S6's ``D[i] u[i]``, the Mamba block's ``silu(z) D x``) is printed into the diagonal forward
  kernel (``TritonPlan.fwd_skip``, the SKIP constexpr) and added there when no gradient is needed; under autograd
  torch adds it (the backward kernels have no term for it). Both must give the reference's y and D's gradient.
- SSD's state [H, P, n] is the kernel's [H, n, P] transposed: the decode kernel ``_outer_step`` now reads and writes
  the state strided (no clone in, no copy out). The state it returns must be SSD's own contiguous layout, a fresh
  buffer (never the caller's), and right for any layout it is given.
- The outer / delta Triton paths hand back the kernel's fresh final state without forward's copy (``owns_storage``).
- SSD's head -> group index ``h // R`` is cached per module and device (``cached_index``): it must be right for the
  dims of each module, after ``.to(...)``, and usable by a training call after an inference-mode call built it. (The
  torch path's: the Triton path hands C and B per group to the kernels and builds no index.)
- Lets that the outer / delta Triton path never reads (GLA's alpha, Gated DeltaNet's alpha, RWKV-6's w: their decays
  are scanned in log space from the gate's logits) are not computed on that path.

Oracles: the module's float64 reference backend (the dense DSF recurrence) and, for the decode kernel, the
recurrence S' = diag(exp(g)) S + k v^T, y = S'^T q written here in float64."""

from __future__ import annotations

import importlib

import pytest

from tests.triton._device import DEVICE  # (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

from dsfc.runtime import triton_diagonal  # noqa: E402
from dsfc.runtime.triton_outer import SCALAR, _single_step  # noqa: E402

F64 = torch.float64
TOL = 1e-10

SPECS = {
    "s6": {"d": 4, "n": 3, "r": 2},
    "mamba_block": {"d": 4, "e": 1, "n": 2, "r": 1, "W": 2},
    "ssd": {"H": 4, "P": 2, "n": 3, "G": 2},
    "gla": {"d": 6, "H": 2, "K": 3, "V": 2, "R": 2},
    "deltanet": {"d": 4, "H": 2, "K": 2, "V": 2},
    "gated_deltanet": {"d": 4, "H": 2, "K": 2, "V": 2},
    "rwkv6": {"d": 4, "H": 2, "K": 2, "V": 2, "R": 2, "Rw": 2, "layer": 1, "L": 2},
}


def _model(name: str, **dims):
    mod = importlib.import_module(f"generated.{name}")
    cls = next(v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == mod.__name__)
    torch.manual_seed(0)
    return cls(**(dims or SPECS[name])).to(device=DEVICE, dtype=F64)


def _h(state):
    return state["h"] if isinstance(state, dict) else state


def _err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _reference(model, u):
    model.backend = "reference"
    try:
        with torch.no_grad():
            return model(u, output_final_state=True)
    finally:
        model.backend = "triton"


@pytest.mark.parametrize("name", list(SPECS))
def test_decode_loop_matches_the_reference_and_owns_its_states(name):
    model = _model(name)
    model.backend = "triton"
    torch.manual_seed(1)
    u = torch.randn(2, 4, model._in_features(), device=DEVICE, dtype=F64)
    y_ref, s_ref = _reference(model, u)
    state, ys, seen = None, [], []
    with torch.no_grad():
        for t in range(u.shape[1]):
            y_t, state = model.step(u[:, t], state)
            h = _h(state)
            # a fresh contiguous buffer of its own: not the previous state, not a view of a larger buffer
            assert h.is_contiguous() and h.untyped_storage().nbytes() == h.numel() * h.element_size(), name
            # (the earlier states are kept alive, so that the allocator cannot hand their memory out again)
            assert all(h.untyped_storage().data_ptr() != p.untyped_storage().data_ptr() for p in seen), name
            seen.append(h)
            ys.append(y_t)
    assert _err(torch.stack(ys, 1), y_ref) <= TOL, name
    assert _err(_h(state).reshape(_h(s_ref).shape), _h(s_ref)) <= TOL, name


@pytest.mark.parametrize("name", ["s6", "mamba_block"])
def test_skip_term_is_in_the_kernel_without_autograd_only(monkeypatch, name):
    """SKIP on under no_grad, off under autograd; y and every gradient (D's included) as on the torch path."""
    model = _model(name)
    skips = []
    launch = triton_diagonal._launch_fwd
    monkeypatch.setattr(triton_diagonal, "_launch_fwd", lambda *a: skips.append(a[1].skip) or launch(*a))
    torch.manual_seed(2)
    u = torch.randn(2, 3, model._in_features(), device=DEVICE, dtype=F64)
    y_ref, _ = _reference(model, u)
    model.backend = "triton"
    with torch.no_grad():
        y_fast = model(u)
    assert skips == [True]
    assert _err(y_fast, y_ref) <= TOL
    grads = {}
    for backend in ("torch", "triton"):
        model.backend = backend
        model.zero_grad()
        uu = u.clone().requires_grad_(True)
        y = model(uu)
        y.pow(2).sum().backward()
        grads[backend] = {"u": uu.grad, **{n: p.grad.clone() for n, p in model.named_parameters()}}
        if backend == "triton":
            assert _err(y, y_ref) <= TOL
    assert skips[1:] and not any(skips[1:])  # autograd: torch adds D u (the forward, and the backward's recompute)
    for key, want in grads["torch"].items():
        assert _err(grads["triton"][key], want) <= 1e-9, key


def _step_oracle(q, k, v, g, s0):
    s = torch.exp(g)[..., None, None] * s0.to(F64) + k[:, 0, :, :, None] * v[:, 0, :, None, :]
    return torch.einsum("bhk,bhkv->bhv", q[:, 0], s), s


@pytest.mark.parametrize("layout", ["contiguous", "keys inner", "heads outer"])
def test_decode_kernel_reads_and_writes_any_state_layout(layout):
    """``_outer_step`` on a state [B, H, K, V] laid out as [B, H, K, V], [B, H, V, K] (SSD's) or [H, B, K, V] in
    memory: the recurrence's result; S' in the same layout as S where (b, h) is one axis (the first two)."""
    B, H, K, V = 3, 2, 5, 4
    torch.manual_seed(3)
    q, k = (torch.randn(B, 1, H, K, dtype=F64, device=DEVICE) for _ in range(2))
    v = torch.randn(B, 1, H, V, dtype=F64, device=DEVICE)
    g = -torch.rand(B, 1, H, dtype=F64, device=DEVICE)
    s0 = torch.randn(B, H, K, V, dtype=F64, device=DEVICE)
    if layout == "keys inner":
        s0 = s0.transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == "heads outer":
        s0 = s0.transpose(0, 1).contiguous().transpose(0, 1)
    keep = s0.clone()
    y, sT = _single_step(q, k, v, g, s0, SCALAR, F64)
    y_want, s_want = _step_oracle(q, k, v, g[:, 0], keep)
    assert _err(y[:, 0], y_want) <= TOL and _err(sT, s_want) <= TOL
    assert torch.equal(s0, keep)  # read only
    if layout != "heads outer":
        assert sT.stride() == s0.stride()


def test_group_index_is_cached_per_module_device_and_dims():
    """SSD (G = 2 groups of R = 2 heads): built once, right for another module's dims, usable by a training call
    after an inference-mode call built it, and still right after ``.to(...)``. The Triton path reads C and B per
    group in the kernels (``heads_per_group``): it builds none."""
    model = _model("ssd")
    model.backend = "triton"
    with torch.no_grad():
        model(torch.randn(2, 3, model._in_features(), device=DEVICE, dtype=F64))
    assert "_dsfc_index_cache" not in model.__dict__
    model.backend = "torch"
    torch.manual_seed(4)
    u = torch.randn(2, 3, model._in_features(), device=DEVICE, dtype=F64)
    y_ref, _ = _reference(model, u)
    with torch.inference_mode():
        y_inf = model(u)
    cache = model.__dict__["_dsfc_index_cache"]
    assert len(cache) == 1 and _err(y_inf, y_ref) <= TOL
    uu = u.clone().requires_grad_(True)
    model(uu).sum().backward()  # an inference tensor saved for backward would raise here
    assert uu.grad is not None and len(cache) == 1
    model.to(DEVICE)
    with torch.no_grad():
        assert _err(model(u), y_ref) <= TOL
    other = _model("ssd", H=6, P=2, n=3, G=3)  # R = 2 again, another H: its own cache
    other.backend = "torch"
    u6 = torch.randn(2, 3, other._in_features(), device=DEVICE, dtype=F64)
    with torch.no_grad():
        assert _err(other(u6), _reference(other, u6)[0]) <= TOL


@pytest.mark.parametrize("name, unread", [("gla", "alpha"), ("gated_deltanet", "alpha"), ("rwkv6", "w")])
def test_lets_the_triton_path_never_reads_are_not_computed_there(name, unread):
    """The let is None in the Triton path's env (and the output still the reference's), computed on the torch path."""
    model = _model(name)
    u = torch.randn(1, 3, model._in_features(), device=DEVICE, dtype=F64)
    y_ref, _ = _reference(model, u)
    envs = []
    lets = model._lets
    model._lets = lambda *a, **k: envs.append(lets(*a, **k)) or envs[-1]
    for backend in ("triton", "torch"):
        model.backend = backend
        with torch.no_grad():
            assert _err(model(u), y_ref) <= TOL, backend
    assert envs[0][unread] is None and envs[-1][unread] is not None
