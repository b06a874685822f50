"""Compile the generated and runtime Triton kernels for sm_90 (Hopper) without a GPU: catches what the interpreter
lets through (it runs the kernels as numpy, without Triton's type checks and lowering). Run without
TRITON_INTERPRET (tests/triton/test_triton_aot.py runs it in a subprocess). Exit 3: this triton's ahead-of-time API
differs (ASTSource / GPUTarget), nothing was checked; exit 1: a kernel failed to compile.

    python tests/triton/aot_compile.py [spec.dsf ...]
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

try:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    print(f"no ahead-of-time API: {exc}")
    sys.exit(3)

from dsfc.check import load_module  # noqa: E402
from dsfc.pipeline import compile_spec  # noqa: E402
from dsfc.runtime import triton_dense  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
STATE_ARGS = ("h0_ptr", "hT_ptr", "states_ptr", "dh0_ptr", "dhT_ptr", "kc_ptr")


def compile_one(fn, signature, constexprs, num_warps=4):
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    except TypeError as exc:  # an older / newer ASTSource signature
        print(f"ASTSource API differs: {exc}")
        sys.exit(3)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps})


def diagonal_signature(fn, leaf, state, out):
    sig = {}
    for name in fn.arg_names:
        if name in ("BLOCK_R", "BLOCK_C", "READOUT", "DTYPE", "CHUNK_T", "STARTS", "PREFETCH"):
            sig[name] = "constexpr"
        elif name in ("out_ptr", "dout_ptr"):
            sig[name] = out
        elif name in STATE_ARGS or name == "starts_ptr" or name.startswith("g_"):  # gradient buffers are in the compute dtype
            sig[name] = state
        elif name.startswith("p_") and not re.fullmatch(r"p_.*_s\d+", name):  # a pointer, not one of its strides
            sig[name] = leaf
        else:
            sig[name] = "i32"
    return sig


def main(specs) -> int:
    failed = 0
    cases = [("fp32", "*fp32", "*fp32", tl.float32), ("bf16 in", "*bf16", "*fp32", tl.float32),
             ("fp64", "*fp64", "*fp64", tl.float64)]
    for path in specs:
        result = compile_spec(path)
        if result.plan.triton is None:
            continue
        module = load_module(result, name=f"dsfc_aot_{Path(path).stem}")
        for label, leaf, state, dt in cases:
            kernels = [(module._scan_fwd, {"PREFETCH": False}), (module._scan_fwd, {"PREFETCH": True}),
                       (module._scan_bwd, {})]
            if getattr(module, "_scan_fwd_chunked", None) is not None:  # the chunked kernels (not for pre readouts)
                kernels += [(module._scan_fwd_chunked, {"CHUNK_T": 16, "STARTS": False}),
                            (module._scan_fwd_chunked, {"CHUNK_T": 16, "STARTS": True}),
                            (module._scan_bwd_chunked, {"CHUNK_T": 16, "STARTS": False})]
            for fn, extra in kernels:
                for readout in (True, False):
                    out = (leaf if leaf != "*fp64" else state) if readout else state
                    chunked = "CHUNK_T" in extra
                    block_r = 16 if chunked else 32
                    try:
                        compile_one(fn, diagonal_signature(fn, leaf, state, out),
                                    {"BLOCK_R": block_r, "BLOCK_C": 16, "READOUT": readout, "DTYPE": dt, **extra},
                                    8 if chunked else 4)
                    except Exception as exc:  # noqa: BLE001 - report every failure
                        failed += 1
                        print(f"FAIL {Path(path).stem} {fn.__name__} {label} READOUT={readout}: {exc}")
        print(f"ok {Path(path).stem}")
    dense = [(triton_dense._block_scan_fwd, ("blocks_ptr", "bu_ptr", "h0_ptr", "states_ptr")),
             (triton_dense._block_scan_bwd, ("blocks_ptr", "h0_ptr", "states_ptr", "dstates_ptr", "dblocks_ptr",
                                             "dbu_ptr", "dh0_ptr"))]
    for fn, ptrs in dense:
        for label, ty, dt, bm in (("fp32", "*fp32", tl.float32, 128), ("bf16 blocks", "*bf16", tl.float32, 16),
                                  ("fp64", "*fp64", tl.float64, 8)):
            sig = {p: (ty if p in ("blocks_ptr", "bu_ptr") else ("*fp64" if ty == "*fp64" else "*fp32")) for p in ptrs}
            sig.update({"L": "i32", "G": "i32", "M": "i32", "BLOCK_G": "constexpr", "BLOCK_M": "constexpr",
                        "DTYPE": "constexpr"})
            try:
                compile_one(fn, sig, {"BLOCK_G": max(1, 8192 // (bm * bm)), "BLOCK_M": bm, "DTYPE": dt}, 8)
            except Exception as exc:  # noqa: BLE001
                failed += 1
                print(f"FAIL {fn.__name__} {label}: {exc}")
    print("ok dense block scan" if not failed else f"{failed} kernel(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or [str(ROOT / "specs" / "s6.dsf")]))
