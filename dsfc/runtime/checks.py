"""Checks of the state a caller hands to a generated module (``initial_state`` of ``forward``, the state of ``step``),
and of the dims it is built with (the spec's subscripts must stay inside their axes).

The generated modules pass their spec-specific pieces (model name, expected shapes, known keys) and keep only the
calls, so the checking logic and its messages live here once instead of in every generated file.
"""

import contextlib
import itertools
import math
import re
import warnings
from typing import Callable, Dict, Iterator, Mapping, Tuple

import torch

from dsfc.runtime.dispatch import OffsetLimitError

# KV-cache entries of the quadratic family's state dict (the infinite state is carried as the cache); a decayed
# spec (FoX, ALiBi) also carries each cached key's log-decay up to the last step, G_last - G_j
CACHE_KEYS, CACHE_VALUES, CACHE_COLS, CACHE_DECAY = "cache:keys", "cache:values", "cache:col", "cache:decay"


@contextlib.contextmanager
def step_state_errors() -> Iterator[None]:
    """Around ``step``'s call of ``forward``: forward's errors about the state it was given name forward's argument,
    ``initial_state``, which a caller of ``step`` never passed; re-raised naming step's own, ``state``."""
    try:
        yield
    except (TypeError, ValueError, RuntimeError, FloatingPointError) as exc:
        # and the errors about forward's u (step's u_t): inference_input_error, check_finite_input / _output, the dtype
        msg = re.sub(r": u (is|and|contains|must) ", r": u_t \1 ", str(exc)).replace("(u.clone())", "(u_t.clone())")
        # step has no time axis: forward's [batch, time, feature] = [b, 0, f] of a NaN in u or in the output
        msg = re.sub(r"\[batch, time, feature\] = \[(\d+), 0, (\d+)\]", r"[batch, feature] = [\1, \2]", msg)
        msg = msg.replace("though u, the initial state", "though u_t, the state")
        if "initial_state" not in msg and msg == str(exc):
            raise
        raise type(exc)(msg.replace("initial_state", "state")) from None


def check_dim_arguments(model: str, dims: dict) -> None:
    """The free dims a constructor got: each a positive integer (an int, a numpy integer, a one-element integer
    tensor: anything whose ``__index__`` works; not a bool). ``d=torch.tensor(4.0)`` (a float or many-element tensor
    has an ``__index__`` that raises) was torch's "only integer tensors of a single element can be converted to an
    index", naming no dim."""
    for name, value in dims.items():
        try:
            ok = not isinstance(value, bool) and value.__index__() >= 1
        except (AttributeError, TypeError, ValueError, RuntimeError):
            ok = False
        if not ok:
            raise ValueError(f"{model}: dim {name} must be a positive integer, got {value!r}")
        if value.__index__() > 2**62:  # as the compiler refuses a spec's dim; was torch's "Overflow when unpacking"
            raise ValueError(f"{model}: dim {name} is too large: {value.__index__():.3g} (a tensor size is at most "
                             "2^62)")


class ParameterMemoryError(MemoryError, RuntimeError):
    """A generated module's constructor could not allocate or initialise its parameters at the dims it was given. A
    MemoryError, and a RuntimeError as torch's allocator error it replaces (``except RuntimeError`` still holds)."""


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: MemoryError, torch's CPU allocator refusing (a RuntimeError), CUDA out of memory."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _gib(numel: int, dtype: torch.dtype) -> str:
    return f"{numel * dtype.itemsize / 2**30:.3g} GiB in {str(dtype).replace('torch.', '')}"


def parameter_allocation_error(model: str, exc: BaseException, module: torch.nn.Module,
                               shapes: Mapping[str, Tuple[int, ...]], dtype, dims_text: str) -> BaseException:
    """What the constructor raises for ``exc`` from allocating (``self.W = nn.Parameter(torch.empty(...))``) or
    initialising (``reset_parameters``) the parameters at its dims: ``exc`` itself unless the parameters are too
    large, naming the parameter that did not fit (the first one not yet made), its shape, the dims and the total.
    Out of memory is a ParameterMemoryError: ``S6(n=10**9)`` was torch's "DefaultCPUAllocator: can't allocate
    memory: you tried to allocate 256000000000 bytes", naming no parameter, and a failure in the initialisers'
    temporaries was "the spec's parameter initialisers fail", blaming the spec. A size beyond 64-bit byte counts
    (``S6(d=2**40, n=2**40)``, a derived dim over 2^63) is a ValueError: it was torch's "Storage size calculation
    overflowed" or "Overflow when unpacking long long" with a C++ stack."""
    overflow = isinstance(exc, (RuntimeError, TypeError)) and (
        "Storage size calculation overflowed" in str(exc) or "Overflow when unpacking" in str(exc))
    if not overflow and not out_of_memory(exc):
        return exc
    dtype = dtype or torch.get_default_dtype()
    total = sum(math.prod(shape) for shape in shapes.values())
    missing = [name for name in shapes if name not in module._parameters]
    if missing:
        name = missing[0]
        what = f"parameter {name!r} of shape {tuple(shapes[name])} ({_gib(math.prod(shapes[name]), dtype)})"
        what = f"{what} is too large for a tensor" if overflow else f"cannot allocate {what}"
    else:
        what = "cannot initialise the parameters (the spec's initialisers need temporaries of their size)"
    if overflow:
        return ValueError(f"{model}: at {dims_text}: {what} (its size in bytes overflows 64 bits); use smaller dims")
    asked = re.search(r"allocate (\d+) bytes", str(exc))
    asked = f"; the allocator refused {int(asked.group(1)) / 2**30:.3g} GiB" if asked else ""
    return ParameterMemoryError(
        f"{model}: out of memory at {dims_text}: {what}; the parameters hold {total:.3g} numbers "
        f"({_gib(total, dtype)}){asked}; use smaller dims (device='meta' builds the module without memory)")


def check_no_derived_arguments(model: str, given: Mapping, derived, free) -> None:
    """The keyword arguments a constructor took beyond its own: a derived dim (``MambaBlock(E=256)`` for ``dim E =
    e * d``) is refused with the free dims to set instead (it was Python's bare "unexpected keyword argument 'E'");
    any other name gets Python's own message."""
    for name in given:
        if name in derived:
            raise TypeError(f"{model}: {name!r} is a derived dim (the spec computes it from its free dims), not an "
                            f"argument; set the free dims it is computed from: {', '.join(free)}")
        raise TypeError(f"{model}.__init__() got an unexpected keyword argument {name!r}")


def check_flag(model: str, label: str, value) -> None:
    """A bool argument (``output_final_state``, ``post``): a Python or numpy bool. Anything else was read by its truth
    value: ``output_final_state="False"`` (or ``2``, or a tensor) silently returned the ``(y, state)`` tuple."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return
    if torch.compiler.is_compiling() and not isinstance(value, (str, int, float, type(None), list, tuple, dict)):
        return  # torch.compile traces a numpy bool as a tensor: left to the branch on it, as before this check
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    hint = f"; for a tensor flag pass bool({label})" if isinstance(value, torch.Tensor) else ""
    raise TypeError(f"{model}: {label} must be True or False, got {type(value).__name__} {shown}{hint}")


def _autograd_records() -> bool:
    """True where a call is recorded for backward: grad mode on, outside inference_mode, not traced by
    torch.compile (which has its own rules and where these checks would break the graph)."""
    return torch.is_grad_enabled() and not torch.is_inference_mode_enabled() and not torch.compiler.is_compiling()


def refuse_jit_trace(model: str) -> None:
    """torch.jit.trace (and the TorchScript-based torch.onnx.export) refused by name: forward branches in Python on
    its input, which a trace freezes; it failed as "Tracing failed sanity checks! Graphs differed across
    invocations"."""
    if torch.jit.is_tracing():
        raise RuntimeError(
            f"{model}: torch.jit.trace (and the TorchScript-based torch.onnx.export) is not supported: forward "
            "branches in Python on the input (its length, the NaN checks), which a trace would freeze; use "
            "torch.compile, or torch.export at fixed shapes"
        )


def check_inference_parameters(model: str, module: torch.nn.Module) -> None:
    """A module built (or its parameters replaced) under ``torch.inference_mode()`` and then called with grad on:
    its parameters are inference tensors, which autograd does not track, so ``loss.backward()`` left most of them
    without a gradient (S6: 5 of its 7) without a word, and training silently updated only the rest."""
    if not _autograd_records():
        return
    bad = [name for name, p in module.named_parameters() if p.requires_grad and p.is_inference()]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RuntimeError(
            f"{model}: parameter {bad[0]!r}{more} is an inference tensor (the module was built or loaded under "
            "torch.inference_mode()): autograd cannot track it, so its gradient would be silently missing. Build "
            "the module outside inference_mode to train it, or call it under torch.no_grad() / "
            "torch.inference_mode() for inference"
        )


def inference_input_error(model: str, exc: RuntimeError, inputs: Mapping[str, object]) -> Exception:
    """torch's "Inference tensors cannot be saved for backward" from inside a module's forward, for an input made under
    ``torch.inference_mode()`` and a call recorded for backward: that error named no argument (and only some modules
    save a given input, so it is not refused up front). Returns the error naming the inference input(s) and what to
    do, or ``exc`` itself when it is another error. ``inputs``: label -> tensor, a dict state, or None."""
    if "Inference tensors cannot be saved for backward" not in str(exc):
        return exc
    labels = []
    for label, value in inputs.items():
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, tensor in items:
            if isinstance(tensor, torch.Tensor) and tensor.is_inference():
                labels.append(label if key is None else f"{label}[{key!r}]")
    if not labels:
        return exc
    which = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
    first = labels[0].split("[")[0]
    clone = f"{first}.clone()" if first == labels[0] else f"{{k: v.clone() for k, v in {first}.items()}}"
    return RuntimeError(
        f"{model}: {which} {'is an inference tensor' if len(labels) == 1 else 'are inference tensors'} (made under "
        "torch.inference_mode()), which autograd cannot save for the backward of this call: pass a clone made "
        f"outside inference_mode ({clone}), or make this call under torch.no_grad() / torch.inference_mode() too"
    )


def values_hidden(value: torch.Tensor) -> bool:
    """True where a tensor's values cannot be read back to the host for a check: while torch.compile traces (a
    data-dependent branch breaks the graph), on meta tensors (no data), and under ``torch.func.vmap`` (per-sample
    gradients: ``vmap(grad(loss))`` failed with vmap's "data-dependent control flow" error from the NaN check alone).
    """
    if torch.compiler.is_compiling() or value.is_meta:
        return True
    stack = torch._C._functorch.get_interpreter_stack()  # None outside torch.func transforms
    return bool(stack) and any(i.key() == torch._C._functorch.TransformType.Vmap for i in stack)


# what each torch.func transform is called by its users (the interpreter stack names them Vmap, Grad, ...)
_TRANSFORM_NAMES = {"Vmap": "torch.func.vmap", "Grad": "torch.func.grad / vjp / jacrev",
                    "Jvp": "torch.func.jvp / jacfwd", "Functionalize": "torch.func.functionalize"}


def _state_tensors(state) -> list:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, Mapping):
        return [v for v in state.values() if isinstance(v, torch.Tensor)]
    return []


def triton_refusal(module: torch.nn.Module, u: torch.Tensor, state=None) -> "str | None":
    """Why the Triton kernels cannot run this call, or None. They are custom ops with a reverse-mode formula only: no
    batching rule, no forward-mode (jvp) rule, and an autograd.Function torch.func cannot wrap. Under a torch.func
    transform (vmap, grad, jvp, jacrev, jacfwd, functionalize) or with a forward-mode dual tensor (u, a state entry or
    a parameter; ``torch.autograd.forward_ad``) the call failed deep inside the launcher with torch's "Batching rule
    not implemented for dsfc::diagonal_scan_fwd", "Cannot access storage of TensorWrapper" or "You must implement the
    jvp function for custom autograd.Function", naming neither the backend nor the way out."""
    return transform_in_effect(u, *_state_tensors(state), *module.parameters())


def transform_in_effect(*tensors) -> "str | None":
    """The torch.func transforms this call runs under, named as their users call them ("torch.func.vmap inside
    ...") or forward-mode AD when one of ``tensors`` (None entries skipped) is a dual tensor; None otherwise, and
    while torch.compile traces (it traces a transform away first, and cannot trace this check)."""
    if torch.compiler.is_compiling():
        return None
    stack = torch._C._functorch.get_interpreter_stack()  # None outside torch.func transforms
    if stack:
        names = dict.fromkeys(_TRANSFORM_NAMES.get(i.key().name, i.key().name) for i in stack)
        return " inside ".join(reversed(list(names)))
    level = torch.autograd.forward_ad._current_level  # -1 outside torch.autograd.forward_ad.dual_level()
    if level >= 0:
        for value in tensors:
            if value is not None and torch.autograd.forward_ad.unpack_dual(value, level=level).tangent is not None:
                return "forward-mode AD (a dual tensor of torch.autograd.forward_ad)"
    return None


def on_gpu(u: torch.Tensor) -> bool:
    """Where backend="auto" picks the Triton kernels: CUDA tensors (the interpreter is for tests; a test may patch
    this to run auto's Triton-side logic on the CPU)."""
    return u.is_cuda


def choose_backend(module: torch.nn.Module, model: str, backends: tuple, kernel, u, state, no_kernel: str) -> str:
    """The path a forward call runs, from ``module.backend``: "auto" is Triton on CUDA when the module has a Triton
    kernel (``kernel`` not None) and the call is one the kernels can run (``triton_refusal``), else the torch path; an
    explicit "triton" raises where auto would fall back, naming why (``no_kernel`` when there is no kernel). One helper
    for every generated module (the recurrent and the quadratic template each carried a copy)."""
    backend = module.backend
    if backend not in backends:  # set after construction: an unknown name silently ran the torch path
        raise ValueError(f"{model}: backend must be one of {backends}, got {backend!r}")
    if backend == "triton" and kernel is None:
        raise RuntimeError(f"{model}: {no_kernel}")
    if backend not in ("triton", "auto"):
        return backend
    if backend == "auto" and not (on_gpu(u) and kernel is not None):
        return "torch"
    unbuilt = module.__dict__.get(_UNBUILT)  # device and dtype pairs whose kernels could not be built
    if backend == "auto" and unbuilt and _build_key(u) in unbuilt:
        return "torch"  # (triton_build_fallback)
    refusal = triton_refusal(module, u, state)
    if refusal is None:
        return "triton"
    if backend == "triton":
        raise triton_refusal_error(model, refusal)
    return "torch"  # auto: the torch path runs what the kernels cannot


class OffsetFallback(UserWarning):
    """backend="auto" ran the torch path for a call the Triton kernels refused for size (OffsetLimitError)."""


def triton_offset_fallback(module: torch.nn.Module, model: str, err: OffsetLimitError) -> None:
    """A Triton launch refused a tensor past the kernels' 32-bit offsets (``dispatch.check_offsets``, raised by shape
    before any launch): under backend="auto" the caller then runs the torch path, which has no such limit (warned
    once per module); an explicit backend="triton" keeps the error. Decided where the kernel checks its own
    operands, so exactly when the kernels would refuse: a T * N rule in choose_backend would have sent S6 (whose
    fused kernel reads [B, T, d] and [B, T, n] rows, never a [B, T, d * n] state) to torch long before its limit."""
    if module.backend != "auto":
        raise err
    if not module.__dict__.get("_dsfc_offset_warned", False):
        module.__dict__["_dsfc_offset_warned"] = True  # (a plain attribute: not a buffer, not in the state dict)
        warnings.warn(f"{model}: backend='auto' runs the torch path for this input: {err}", OffsetFallback,
                      stacklevel=3)


class TritonBuildFallback(UserWarning):
    """backend="auto" ran the torch path because a Triton kernel of the module could not be built on this GPU."""


# triton's errors for a kernel that cannot be built for the GPU at hand: a compile error (a construct this triton /
# GPU pair lacks), more shared memory or registers than the GPU has (tiles sized for sm_90 on a smaller GPU), ptxas
# refusing. Matched by name and module, so that this file does not import triton (the modules import without it).
_BUILD_ERRORS = ("CompilationError", "OutOfResources", "PTXASError")
_UNBUILT = "_dsfc_triton_unbuilt"  # module attribute: the (device, dtype) pairs whose kernels failed to build


def _build_key(u: torch.Tensor) -> tuple:
    return (str(u.device), u.dtype)


def triton_build_error(exc: BaseException):
    """The triton build failure behind ``exc`` (itself or a cause: a launcher may re-raise it with a clearer message),
    else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in _BUILD_ERRORS and type(exc).__module__.startswith("triton"):
            return exc
        exc = exc.__cause__
    return None


def triton_build_fallback(module: torch.nn.Module, model: str, exc: BaseException, u) -> bool:
    """After ``exc`` escaped a forward call: True when the caller should run the call again on the torch path, i.e.
    ``module.backend`` is "auto", the call ran the Triton kernels and ``exc`` is a kernel that this GPU cannot
    build (``triton_build_error``). Records the device and input dtype on the module, so that ``choose_backend``
    picks torch for them from now on (a failed build is not retried per call: each try costs a compile), and warns
    once per pair with the error. backend="triton" keeps the error, as does anything else: a bad input, a numerical
    error, a CUDA fault (the process's context may be gone), a failure of the torch path itself."""
    if module.backend != "auto" or not isinstance(u, torch.Tensor) or triton_build_error(exc) is None:
        return False
    unbuilt = module.__dict__.setdefault(_UNBUILT, set())  # (a plain attribute: not a buffer, not in the state dict)
    if _build_key(u) in unbuilt:  # the call already ran the torch path
        return False
    unbuilt.add(_build_key(u))
    cause = triton_build_error(exc)
    warnings.warn(f"{model}: backend='auto' runs the torch path on {u.device} for {u.dtype} inputs from now on: a "
                  f"Triton kernel could not be built there ({type(cause).__name__}: {str(exc).strip()[:400]}); "
                  "backend='triton' shows the full error", TritonBuildFallback, stacklevel=3)
    return True


def triton_refusal_error(model: str, reason: str) -> RuntimeError:
    return RuntimeError(
        f"{model}: backend='triton' cannot run under {reason}: the Triton kernels have a reverse-mode gradient only "
        "(no batching or forward-mode rule); set model.backend = 'torch' for this (backend='auto' picks torch here)"
    )


def _is_finite(value: torch.Tensor, check_finite: bool) -> bool:
    """False only for a tensor with a NaN / inf. Skipped (True) when ``check_finite`` is off (the read-back is a
    device sync), and where ``values_hidden``."""
    if not check_finite or values_hidden(value):
        return True
    return bool(torch.isfinite(value).all())


# the float dtypes the modules compute in (fp16 / bf16 accumulate in fp32); float8 is a floating point dtype too, but
# torch has no CPU sum for it: it failed with '"sum_cpu" not implemented for Float8_e4m3fn' in the NaN check
COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor_kind(model: str, label: str, value) -> None:
    """A tensor argument the modules can compute with: dense (strided) and, if floating point, of a compute dtype.

    A nested tensor (a ragged batch, what a new user reaches for with sequences of different lengths) failed with
    torch's "Internal error: NestedTensorImpl doesn't support sizes. Please file an issue", a sparse one with
    "reshape is not implemented for sparse tensors" (u) or "Could not run 'aten::ne.Scalar' ... 'SparseCPU'" (a
    state). Non-tensors and other dtypes are left to the callers' own checks, which name them.
    """
    if not isinstance(value, torch.Tensor):
        return
    if value.is_nested:
        raise ValueError(
            f"{model}: {label} is a nested tensor; the modules take one padded [batch, time, ...] tensor: pad the "
            "sequences to one length, or run them one at a time"
        )
    if value.layout != torch.strided:
        raise ValueError(f"{model}: {label} has layout {value.layout}; pass a dense tensor ({label}.to_dense())")
    if value.is_floating_point() and value.dtype not in COMPUTE_DTYPES:
        raise TypeError(
            f"{model}: {label} has dtype {value.dtype}, which the modules do not compute in; cast it to float32, "
            "bfloat16, float16 or float64"
        )


def check_float_tensor(model: str, label: str, value) -> None:
    """A state entry: a dense tensor of a compute float dtype (TypeError / ValueError naming ``label``)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{model}: {label} must be a floating-point tensor, got {got}")
    check_tensor_kind(model, label, value)



def check_parameters(model: str, module: torch.nn.Module, device: torch.device,
                     shapes: Mapping[str, Tuple[int, ...]]) -> None:
    """The module's parameters against the shapes its dims give (``shapes``, from the generated ``_check_input``) and
    the input's device: a parameter replaced by one of another shape (``layer.W = nn.Parameter(torch.randn(...))``,
    ``del`` and a plain tensor, ``None``), dtype (complex: its imaginary part was dropped) or device failed deep in the
    forward with torch's einsum / broadcast / device error naming no parameter, or, where the wrong shape broadcasts
    (``D`` of shape [1]), gave a silently wrong output. A ValueError (TypeError for a complex dtype) naming the
    parameter, its expected and its actual shape. A few attribute reads and tuple compares per call (a few us). It
    also runs while torch.compile traces, where the compares are static (no graph break, ``fullgraph=True`` passes):
    skipped there, a compiled module with ``D`` of shape [1] silently broadcast. A parametrized parameter
    (``torch.nn.utils.parametrize``) is not evaluated here (that would run its parametrization twice)."""
    params = module._parameters
    for name, want in shapes.items():
        if name in params:
            p = params[name]
        elif name in getattr(module, "parametrizations", ()):
            continue
        else:
            p = getattr(module, name, None)  # deleted and set to a plain tensor, or a pruned weight (a computed one)
        if not isinstance(p, torch.Tensor):
            raise ValueError(
                f"{model}: parameter {name!r} is {type(p).__name__}, expected a tensor of shape {tuple(want)}"
            )
        if p.shape != want:
            raise ValueError(
                f"{model}: parameter {name!r} has shape {tuple(p.shape)}, but the module's dims "
                f"({module._dims_text()}) give {tuple(want)}; build a module of the dims it was trained with"
            )
        if p.is_complex():  # an integer or bool parameter is cast as the others are; a complex one lost its imag
            raise TypeError(f"{model}: parameter {name!r} must be a real tensor, got {p.dtype}")
        if p.device != device:
            raise ValueError(
                f"{model}: parameter {name!r} is on {p.device} but u is on {device}; move the module (.to(device))"
            )


def check_finite_input(model: str, u: torch.Tensor, module: torch.nn.Module,
                       initial_state: torch.Tensor | None = None) -> None:
    """NaN / inf in the input ``u``, in ``module``'s parameters (a diverged update or a corrupt checkpoint: they
    made every output NaN without a word) or in ``initial_state`` (already checked to be a float tensor on u's
    device), as a ValueError naming the first bad entry or parameter (u, then the parameters, then the state).
    The state was a second host sync of its own, paid on every decoding ``step``.

    One host sync for all of them: the largest |entry| of each tensor is finite exactly when the tensor is (a NaN
    propagates through the max, an inf is the max; unlike a sum, finite values cannot overflow it), and one
    ``torch._foreach_norm(..., inf)`` computes them all in a single call (a multi-tensor kernel on CUDA). It was a
    Python loop of one ``sum`` per parameter, a third of the cost of a small decoding ``step`` on CPU. Only a
    non-finite maximum pays for the elementwise tests that name the entry. Skipped where ``values_hidden``
    (torch.compile, meta tensors: a meta module infers shapes, vmap); the caller skips it when its ``check_finite``
    is off."""
    if values_hidden(u):
        return
    # the inf-norm has no identity: an empty u (T = 0 or B = 0) has nothing to check
    tensors = [u] if u.numel() else []
    tensors += [p for p in module.parameters() if not p.is_meta and p.numel()]
    if initial_state is not None and initial_state.numel():
        tensors.append(initial_state)
    if not tensors:
        return
    # detached: under forward-mode AD (no_grad does not stop it) the foreach norm of dual tensors failed with
    # "Trying to set a forward gradient that has a different size"
    with torch.no_grad():
        peaks = torch.stack(torch._foreach_norm([t.detach() for t in tensors], float("inf")))  # promotes dtypes
    if bool(torch.isfinite(peaks).all()):
        return
    if not bool(torch.isfinite(u).all()):
        bad = (~torch.isfinite(u)).nonzero()[0].tolist()
        raise ValueError(f"{model}: u contains NaN or inf (first at [batch, time, feature] = {bad})")
    for name, p in module.named_parameters():
        if not p.is_meta and not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"{model}: parameter {name!r} contains NaN or inf (a diverged update or a bad checkpoint?)"
            )
    if initial_state is not None and not bool(torch.isfinite(initial_state).all()):
        raise ValueError(f"{model}: initial_state contains NaN or inf")


def check_finite_output(model: str, out, u: torch.Tensor) -> None:
    """NaN in the output of a call whose inputs were checked finite (``u``, the initial state, the parameters: the
    caller checks only when its ``check_finite`` is on): the spec's maths is undefined there, e.g. DeltaNet's
    ``k / sqrt(sum(k^2))`` at a zero input (a zero-padded step), which made that output and every later one of the
    sequence NaN without a word. A FloatingPointError naming the first NaN entry. An inf is let through: it can be a
    true value beyond the dtype (a normalised attention's output at a large spike, an fp16 output over 65504), with
    the other steps right. Skipped where ``values_hidden``."""
    y = out[0] if isinstance(out, tuple) else out
    if values_hidden(y) or values_hidden(u) or not bool(torch.isnan(y).any()):
        return
    bad = torch.isnan(y).nonzero()[0].tolist()
    raise FloatingPointError(
        f"{model}: the output is NaN at [batch, time, feature] = {bad}, though u, the initial state and the "
        "parameters are finite: the spec's maths is undefined there (0 / 0, such as a norm of a zero vector at a "
        "zero-padded step; inf - inf or 0 * inf after an overflow); check u at that step (model.check_finite = "
        "False lets the NaN through)"
    )


def empty_output(u: torch.Tensor, module: torch.nn.Module, shape: Tuple[int, ...]) -> torch.Tensor:
    """The output of an empty input (T = 0 or B = 0): zeros of ``shape`` in u's dtype, tied (with zero gradients) to
    ``u`` and the parameters that require grad, as torch's own layers are on an empty batch. A plain ``new_zeros``
    made ``loss.backward()`` of a training step on an empty batch fail with "element 0 of tensors does not require
    grad and does not have a grad_fn"."""
    y = u.new_zeros(shape)
    if torch.is_grad_enabled():
        tied = [t for t in (u, *module.parameters()) if t.requires_grad]
        if tied:
            y = y + sum(t.sum() * 0 for t in tied).to(u.dtype)
    return y


def check_kv_cache(model: str, state, want: Mapping[str, Tuple[int, ...]], batch: int, device: torch.device,
                   check_finite: bool) -> Dict:
    """Check a quadratic-family state dict as ``forward(..., output_final_state=True)`` returns it.

    Args:
        model: the model's name, which starts every message.
        state: the caller's state; must be a dict with ``CACHE_KEYS`` and ``CACHE_VALUES``.
        want: cache entry -> its shape after ``[batch, S]``, in checking order (``CACHE_KEYS`` first: its S is the
            one every entry must have).
        batch, device: those of the input ``u``.
        check_finite: the module's ``check_finite`` flag (NaN / inf check, a device sync on a GPU).

    Returns:
        The entries of ``state`` that are not cache entries (the carried running quantities), for the module to check.

    Raises:
        ValueError / TypeError naming the entry and what is wrong with it.
    """
    if not isinstance(state, dict):
        raise ValueError(
            f"{model}: the state is a KV cache dict with 'cache:keys' and 'cache:values' (as returned "
            f"with output_final_state=True), not a {type(state).__name__}: the state of this model is infinite"
        )
    # every entry of want, not only keys and values: a plain softmax cache handed to a decayed (FoX) model lacks
    # 'cache:decay' and was refused as "must be a floating-point tensor, got NoneType"
    missing = [k for k in (CACHE_KEYS, CACHE_VALUES, *want) if k not in state]
    missing = list(dict.fromkeys(missing))
    if missing:
        raise ValueError(
            f"{model}: the KV cache dict lacks {', '.join(map(repr, missing))} (it has {sorted(map(str, state))}); "
            "pass the dict forward(..., output_final_state=True) returned"
        )
    for key, tail in want.items():
        value = state.get(key)
        check_float_tensor(model, f"state[{key!r}]", value)
        # checked first (want's order), so its shape is known to be a tensor's here
        S = state[CACHE_KEYS].shape[1] if state[CACHE_KEYS].dim() > 1 else None
        if value.dim() != 2 + len(tail) or value.shape[0] != batch or tuple(value.shape[2:]) != tail \
                or value.shape[1] != S:
            need = ", ".join(map(str, (batch, "S") + tuple(tail)))
            raise ValueError(
                f"{model}: state[{key!r}] must be [{need}] (S cached steps, the same in every cache entry), "
                f"got {tuple(value.shape)}"
            )
        if value.device != device:
            raise ValueError(
                f"{model}: state[{key!r}] is on {value.device} but u is on {device}; move one of them (.to(device))"
            )
        if not _is_finite(value, check_finite):
            raise ValueError(f"{model}: state[{key!r}] contains NaN or inf")
    return {k: v for k, v in state.items() if k not in want}


def split_state_dict(model: str, state: Mapping, running: Tuple[str, ...]):
    """A state dict of a spec with running quantities (or ``{"h": h}`` of one without) -> ``(h, running0)``.

    ``"h"`` is required: a dict without it (``step(u_t, {})``, or ``{"xs": xs}`` alone) started h from zero
    without a word; ``state=None`` is the way to start from zero. The running entries are checked by
    ``check_running_state`` (all of them or none).

    Raises:
        ValueError naming unknown keys or the missing ``"h"``; TypeError when ``state["h"]`` is not a float tensor.
    """
    # a list: `k not in "h"` was a substring test, a TypeError for a non-str key and '' taken as known
    known = ["h", *running]
    unknown = sorted(str(k) for k in state if k not in known)
    if unknown:  # a typo would otherwise start that quantity from zero without a word
        raise ValueError(f"{model}: unknown initial_state key(s) {unknown}; expected keys {known}")
    if "h" not in state:
        raise ValueError(
            f"{model}: the state dict lacks 'h' (it has {sorted(map(str, state))}); pass the state that "
            "forward(..., output_final_state=True) or step returned, or None to start from zero"
        )
    check_float_tensor(model, "initial_state['h']", state["h"])  # {"h": None} silently started from zero
    return state["h"], {k: v for k, v in state.items() if k != "h"}


def check_running0_type(model: str, running0) -> None:
    """``running0`` of dsf_matrices / driven_input: None or a dict (the non-"h" entries of a state dict). A tensor was
    torch's "Boolean value of Tensor with more than one value is ambiguous", a list "unknown running quantity
    key(s)" listing its elements."""
    if running0 is not None and not isinstance(running0, Mapping):
        raise TypeError(f"{model}: running0 must be None or a dict of running quantities (the entries of a state dict "
                        f"other than 'h'), got {type(running0).__name__}")


def check_running_state(model: str, running0: Mapping, want: Mapping[str, Tuple[int, ...]], device: torch.device,
                        check_finite: bool, cache_keys: Tuple[str, ...] = ()) -> None:
    """Check the carried running quantities of a state dict (cumsum / scan / window lets carried with the state).

    Args:
        model: the model's name, which starts every message.
        running0: the caller's running quantities, let name -> tensor (not empty: all of ``want``).
        want: let name -> its full shape ``(batch, *axes of the let)``.
        device: that of the input ``u``.
        check_finite: the module's ``check_finite`` flag.
        cache_keys: the KV cache entries of the same state dict (already checked by ``check_kv_cache``), listed with
            ``want`` as the expected keys of an unknown one: a softmax state's typo listed only ``['eta_prev']``.

    Raises:
        ValueError / TypeError naming the key: unknown or missing keys, a non-float value, a wrong shape, another
        device, NaN.
    """
    unknown = sorted(str(k) for k in running0 if k not in want)
    if unknown:
        raise ValueError(f"{model}: unknown {'state' if cache_keys else 'running quantity'} key(s) {unknown}; "
                         f"expected keys {[*cache_keys, *want]}")
    # all or none: none is the state of an empty first call (each quantity then starts as at t = 0); a state with
    # some of them was never returned by the module, and the missing one silently restarted (a conv window zeroed)
    missing = [k for k in want if k not in running0]
    if missing:
        raise ValueError(
            f"{model}: the state dict lacks the running entr{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(map(repr, missing))} (it has {sorted(map(str, running0))} of {list(want)}); pass the state "
            "forward(..., output_final_state=True) or step returned (with all of them, or none: they then start as "
            "at t = 0)"
        )
    for key, value in running0.items():
        check_float_tensor(model, f"initial_state[{key!r}]", value)
        if tuple(value.shape) != want[key]:
            raise ValueError(
                f"{model}: initial_state[{key!r}] must have shape {want[key]} ([batch, *axes of let "
                f"{key!r}]), got {tuple(value.shape)}"
            )
        if value.device != device:  # was torch's device mismatch inside the lets (or .item() on meta)
            raise ValueError(
                f"{model}: initial_state[{key!r}] is on {value.device} but u is on {device}; move one of "
                "them (.to(device))"
            )
        if not _is_finite(value, check_finite):
            raise ValueError(f"{model}: initial_state[{key!r}] contains NaN or inf")


# -- dims --------------------------------------------------------------------------------------------------------
# The spec's subscripts at the dims a module is built with (dsfc/analysis/dim_conditions.py derives the calls; `dsfc
# compile` checked them at the spec's defaults only). ``where`` names the model and its dims, ``what`` the subscript
# and its place in the spec; a failure is a ValueError at construction, not an IndexError (or a silently wrong
# gather) in forward.


def check_subscript(where: str, what: str, lo: int, hi: int, extent: int) -> None:
    """A subscript taking values lo..hi over its index ranges must stay inside its axis, 0..extent-1."""
    if lo < 0 or hi >= extent:
        raise ValueError(f"{where}: {what} reaches {lo if lo < 0 else hi}, but the axis has {extent} "
                         f"entr{'y' if extent == 1 else 'ies'} (0..{extent - 1})")


def check_subscript_values(where: str, what: str, value: Callable[..., int], ranges: Tuple[int, ...],
                           extent: int) -> None:
    """``check_subscript`` for a subscript without a closed form for its extremes: every value, one by one."""
    try:
        values = [value(*idx) for idx in itertools.product(*(range(n) for n in ranges))]
    except ZeroDivisionError:
        raise ValueError(f"{where}: {what} divides by zero") from None
    check_subscript(where, what, min(values), max(values), extent)


def check_extent_match(where: str, what: str, index_extent: int, extent: int) -> None:
    """An index variable used as a whole subscript must range over exactly the axis it indexes."""
    if index_extent != extent:
        raise ValueError(f"{where}: {what} ranges over {index_extent} values, but the axis has {extent} "
                         f"entr{'y' if extent == 1 else 'ies'}")
