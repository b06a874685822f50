"""The compiled CPU path of the diagonal family: torch.compile fuses a generated chunk of steps into one loop nest.

Eager torch has to materialise the per-step decay and input terms as [B, T, N] tensors (several passes over
memory); the generated ``_diagonal_chunk`` computes them one step at a time from the lets, and Inductor turns a
chunk of ``CHUNK`` unrolled steps into a single C++ loop. Measured on the 2-core CPU (docs: README, Benchmark).
Compile cost is paid once per module and input shape (seconds), so this path is only taken for large inference
calls on CPU; everything else uses the eager path.
"""

from __future__ import annotations

import itertools
import os
import sys
import types
import warnings

import torch

CHUNK = 32  # steps per compiled graph (unrolled); 16-32 measured best on this CPU
MIN_NUMEL = 2**22  # B * T * N below which compile time cannot pay off
MODE = os.environ.get("DSFC_COMPILE", "auto").strip().lower()  # "auto" | "never" | "always"
# the spellings DSFC_SCAN_COMPILE takes: DSFC_COMPILE=off was warned about and meant auto (compiling) there
_SPELLINGS = {"false": "never", "off": "never", "no": "never", "true": "always", "on": "always", "yes": "always"}
MODE = _SPELLINGS.get(MODE, MODE)
if MODE not in ("auto", "never", "always", "0", "1"):  # a typo silently meant "auto"; said, not raised: an import
    warnings.warn(f"DSFC_COMPILE must be auto, never or always (or 0 / 1), got {MODE!r}: using auto", stacklevel=2)
    MODE = "auto"
_broken = False


class _Compiled:
    """A module's compiled functions (``torch.compile`` of its ``_lets`` and of a chunk of steps), bound to that
    module. Kept in ``module.__dict__`` as one of these: a copy or a pickle of the module starts with none. As plain
    entries of ``__dict__`` they went along: ``copy.deepcopy`` of a module that had made one large CPU inference call
    ran its ``_lets`` with the ORIGINAL module's parameters (a silently wrong output once the copy was trained, an
    EMA / teacher copy), and ``pickle`` / ``torch.save`` failed with "Can't pickle <function S6._lets ...>"."""

    def __init__(self):
        self.fns = {}

    def __deepcopy__(self, memo):
        return _Compiled()

    def __reduce__(self):
        return (_Compiled, ())


def _compiled(module) -> dict:
    """``module``'s own cache of compiled functions (name -> function)."""
    holder = module.__dict__.get("_dsfc_compiled")
    if holder is None:
        holder = module.__dict__["_dsfc_compiled"] = _Compiled()
    return holder.fns


class CompileNotice(UserWarning):
    """Said once per module on its first compiled call: the call pauses for seconds while Inductor compiles."""


def _importable(module) -> bool:
    """Dynamo looks the generated code's globals up through sys.modules: a generated file exec'd without being
    registered there (importlib's ``spec_from_file_location`` + ``exec_module``) failed to compile with
    "No module named ..." and switched compiling off for every module. Such a module runs eagerly instead."""
    if type(module).__module__ in sys.modules:
        return True
    if not module.__dict__.get("_said_not_importable"):
        module.__dict__["_said_not_importable"] = True
        warnings.warn(f"dsfc: {type(module).__name__}: its module {type(module).__module__!r} is not in sys.modules, "
                      "so torch.compile cannot trace it and the CPU scan runs eagerly (~10x slower for large calls); "
                      "import the generated file, or set sys.modules[name] = module before spec.loader.exec_module",
                      CompileNotice, stacklevel=3)
    return False


def _own_code(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` with a copy of its code object. Dynamo keeps compiled graphs, and counts recompiles against
    ``config.recompile_limit`` (8), per code object: every module's ``chunk_into`` and every instance's ``_lets`` of
    one generated class shared theirs, so the ninth (module, batch size, dtype) of a process ran eagerly, ~10x
    slower, with only a log line. A copy per module gives each module its own cache and limit."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    return copy


def use_compiled_chunks(x: torch.Tensor, h0: torch.Tensor, module: torch.nn.Module | None = None) -> bool:
    """CPU, no autograd, big enough (or DSFC_COMPILE=always), and torch.compile has not failed before.

    No autograd means no gradient can flow to ``x``, ``h0`` or a parameter of ``module``: only ``x`` was asked, so a
    training step with an input that does not require grad (the usual case: the gradient is the parameters') took
    this path, broke the compiled graph (which marked the path broken for the whole process) and then failed in the
    eager tail with torch's "A view was created in no_grad mode and is being modified inplace"."""
    if _broken or MODE in ("0", "never") or x.is_cuda:
        return False
    if torch.compiler.is_compiling():
        # inside the caller's own torch.compile the eager path is traced and fused by it: this path's nested
        # compile machinery (a code object copied per module, a notice warned once) broke the caller's graph in
        # five places (fullgraph=True failed) for a large no-grad call or under DSFC_COMPILE=always
        return False
    if torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad or (
            module is not None and any(p.requires_grad for p in module.parameters()))):
        return False
    if MODE in ("1", "always"):
        return x.shape[1] >= CHUNK
    return x.shape[0] * x.shape[1] * h0[0].numel() >= MIN_NUMEL and x.shape[1] >= CHUNK


def run_compiled_chunks(module, h0: torch.Tensor, args: list, time_varying: list[bool], out_shape: tuple):
    """Run ``module._diagonal_chunk(h, *args)`` over the sequence in compiled chunks of CHUNK steps (the tail
    eagerly). ``time_varying[i]``: ``args[i]`` is [B, T, ...] and is sliced per chunk; the others are passed whole.
    Returns y [B, T, *out_shape] and the final state."""
    global _broken
    fn = _compiled(module).get("chunk")
    if fn is None:
        def chunk_into(h, out, *chunk_args):
            # the compiled graph stores its chunk of y straight into the caller's output (no per-chunk buffer, no
            # concatenation afterwards)
            y, h_end = module._diagonal_chunk(h, *chunk_args)
            out.copy_(y)
            return h_end

        fn = torch.compile(_own_code(chunk_into), dynamic=False) if _importable(module) else chunk_into
        _compiled(module)["chunk"] = fn
    B, T = args[-1].shape[0], args[-1].shape[1]  # the input is last and always time-varying
    y = h0.new_empty((B, T, *out_shape))
    # split once into views, one column per argument; zip hands each chunk its slices without building dicts
    columns = [a.split(CHUNK, 1) if tv else itertools.repeat(a) for a, tv in zip(args, time_varying)]
    full = T // CHUNK
    h = h0
    for i, (out, chunk) in enumerate(zip(y.split(CHUNK, 1), zip(*columns))):
        if i < full and not _broken:  # the last, shorter chunk runs eagerly: the graph is specialised to CHUNK steps
            try:
                h = fn(h, out, *chunk)
                continue
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to the eager chunk
                _broken = True
                warnings.warn(f"dsfc: torch.compile of the chunk failed ({type(exc).__name__}: {exc}); using eager",
                              RuntimeWarning, stacklevel=2)
        y_chunk, h = module._diagonal_chunk(h, *chunk)
        out.copy_(y_chunk)
    return y, h


def run_compiled_lets(module, x: torch.Tensor, dtype: torch.dtype, running0=None) -> dict:
    """``module._lets`` through torch.compile: the spec's elementwise maths on the projections (softplus, gates,
    exp) fuses into one pass instead of one eager kernel and one fresh [B, T, ...] tensor per operation (S6 at
    T=4096, d=256: 4 ms -> 1.5 ms). Shapes are automatic-dynamic, so a new T does not recompile after the second."""
    global _broken
    fn = _compiled(module).get("lets")
    if fn is None and not _importable(module):
        return module._lets(x, dtype, running0)
    if fn is None:
        # a 10-20 s silent pause on a first call looks like a hang: say what it is and how to avoid it
        warnings.warn(f"dsfc: {type(module).__name__}: compiling the CPU scan with torch.compile on this first large "
                      "call (seconds; cached afterwards; DSFC_COMPILE=never skips it)", CompileNotice, stacklevel=2)
        fn = torch.compile(types.MethodType(_own_code(type(module)._lets), module))
        _compiled(module)["lets"] = fn
    try:
        return fn(x, dtype, running0)
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
        _broken = True
        warnings.warn(f"dsfc: torch.compile of the lets failed ({type(exc).__name__}: {exc}); using eager",
                      RuntimeWarning, stacklevel=2)
        return module._lets(x, dtype, running0)
