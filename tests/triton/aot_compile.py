"""Compile the generated and runtime Triton kernels for sm_90 (Hopper) without a GPU: catches what the interpreter
lets through (it runs the kernels as numpy, without Triton's type checks and lowering). Run without
TRITON_INTERPRET (tests/triton/test_triton_aot.py runs it in a subprocess). Exit 3: this triton's ahead-of-time API
differs (ASTSource / GPUTarget), nothing was checked; exit 1: a kernel failed to compile.

    python tests/triton/aot_compile.py [--resources] [spec.dsf ...]     # the specs' kernels, dense, delta, outer
    python tests/triton/aot_compile.py --delta-only [--resources]        # the delta rule's state-passing kernels
    python tests/triton/aot_compile.py --dplr-only [--resources]         # the DPLR scan's state-passing kernels
    python tests/triton/aot_compile.py --outer-only [--resources] [--decay=0|1|2]   # the outer-product kernels
    python tests/triton/aot_compile.py --no-outer [spec.dsf ...]          # all but the outer-product kernels
    python tests/triton/aot_compile.py --attention-only [--resources]    # the quadratic-attention kernels
    python tests/triton/aot_compile.py --softmax-only [--resources]      # the fused softmax-attention kernels

--resources also assembles each outer-product and attention kernel with the ptxas that ships with triton and prints its registers
per thread and spill bytes: a CPU-side proxy for how a kernel will run (255 registers with spills = local-memory
traffic on the GPU), for tuning without a GPU.
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
from dsfc.runtime import triton_attention, triton_delta, triton_dense, triton_dplr, triton_outer  # noqa: E402
from dsfc.runtime import triton_softmax  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
STATE_ARGS = ("h0_ptr", "hT_ptr", "states_ptr", "dh0_ptr", "dhT_ptr", "kc_ptr")


def compile_one(fn, signature, constexprs, num_warps=4, aligned=False, num_stages=None):
    """``aligned``: the pointer arguments are 16-byte aligned (``tt.divisibility`` 16), as the JIT specialises them
    for torch's allocations: without it, ptxas' numbers can be those of scalar loads that a launch never runs."""
    attrs = None
    if aligned:
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                 if signature.get(name, "").startswith("*")}
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    except TypeError as exc:  # an older / newer ASTSource signature
        print(f"ASTSource API differs: {exc}")
        sys.exit(3)
    options = {"num_warps": num_warps, **({} if num_stages is None else {"num_stages": num_stages})}
    return triton.compile(src, target=TARGET, options=options)


SM90_SHARED_BYTES = 227 * 1024  # the most shared memory one program may take on an H100 / H200


def compile_and_report(fn, signature, constexprs, num_warps, what: str, resources: bool, aligned=False,
                       fits_sm90=False, num_stages=None) -> int:
    """Compile one kernel; print FAIL and return 1 if it fails (``fits_sm90``: or needs more shared memory than
    sm_90 has, which only a launch would otherwise tell), else print its ptxas resources (``resources``), 0."""
    try:
        compiled = compile_one(fn, signature, constexprs, num_warps, aligned, num_stages)
    except Exception as exc:  # noqa: BLE001 - report every failure
        print(f"FAIL {what}: {exc}")
        return 1
    if fits_sm90 and compiled.metadata.shared > SM90_SHARED_BYTES:
        print(f"FAIL {what}: needs {compiled.metadata.shared} bytes of shared memory, sm_90 has {SM90_SHARED_BYTES}")
        return 1
    if resources:
        print(f"  {what:52s} {ptxas_resources(compiled)}")
    return 0


def ptxas_resources(compiled) -> str:
    """'regs=N spill=S/L bytes' of a compiled kernel, from ptxas -v on its PTX (the ptxas that ships with triton)."""
    import os
    import subprocess
    import tempfile

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX versions of newer tritons
        if (bin_dir / name).exists():
            break
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        Path(ptx).write_text(compiled.asm["ptx"])
        out = subprocess.run([str(bin_dir / name), "-v", f"-arch=sm_{TARGET.arch}a", ptx, "-o", ptx + ".cubin"],
                             capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    if not regs or not spill:
        return "ptxas: " + out.strip().splitlines()[-1] if out.strip() else "ptxas: no report"
    return f"regs={regs.group(1)} spill={spill.group(1)}/{spill.group(2)} bytes smem={compiled.metadata.shared}"


def outer_kernels(resources: bool, only_decay=None) -> int:
    """The chunked outer-product kernels (dsfc/runtime/triton_outer.py), both schedules, every decay kind, fp32 and
    bf16 operands, at the GPU launch shapes chunked_outer_triton picks for K = V = 128 (``default_tiles``) and, per
    key, the score kernels (sub-chunks of 16)."""
    failed = 0
    variants = [(triton_outer._outer_fwd, {"WRITE_Y": True, "STORE_STATES": False}),
                (triton_outer._outer_fwd, {"WRITE_Y": False, "STORE_STATES": True}),
                (triton_outer._outer_out, {}),
                (triton_outer._outer_bwd, {"GRADS": True, "STORE_DSTATES": False}),
                (triton_outer._outer_bwd, {"GRADS": False, "STORE_DSTATES": True}),
                (triton_outer._outer_grads, {})]
    # the same kernels with the spec's streams read as they are (v's factor on load, the skip term in the store)
    variants += [(fn, {**flags, **{k: 1 for k in ("V_SCALE", "SKIP") if k in fn.arg_names}}) for fn, flags in variants]
    scores = [(triton_outer._key_scores_fwd, {}), (triton_outer._key_scores_bwd_kernel, {})]
    for decay in (0, 1, 2) if only_decay is None else (only_decay,):
        for label, half, io, states in (("fp32", 0, "*fp32", "*fp32"), ("bf16", 1, "*bf16", "*bf16")):
            tiles = triton_outer.default_tiles(True, half, decay, 128, 128)  # as chunked_outer_triton picks on a GPU
            chunk = tiles.chunk
            for fn, flags in variants + (scores if decay == 2 else []):
                sig = {}
                for name in fn.arg_names:
                    if name in ("BT", "BC", "BK", "BV", "DECAY", "DTYPE", "HALF", "V_SCALE", "SKIP") or name in flags:
                        sig[name] = "constexpr"
                    elif name in ("q_ptr", "k_ptr", "v_ptr", "g_ptr"):
                        sig[name] = io
                    elif name in ("states_ptr", "dstates_ptr", "p_ptr"):
                        sig[name] = states
                    elif name.endswith("_ptr"):
                        sig[name] = "*fp32"
                    else:
                        sig[name] = "i32"
                consts = {**dict(BT=chunk, BK=tiles.block_k, BV=tiles.block_v, DECAY=decay, DTYPE=tl.float32,
                                 HALF=half), **{k: 0 for k in ("V_SCALE", "SKIP") if k in fn.arg_names}, **flags}
                warps = tiles.num_warps
                if fn in (f for f, _ in scores):
                    # K = 128: the forward takes all keys, the backward a slice of them (as chunked_outer_triton)
                    consts = dict(BT=chunk, BC=16, DTYPE=tl.float32, HALF=half,
                                  BK=128 if fn is triton_outer._key_scores_fwd else
                                  min(128, triton_outer.SCORES_BWD_BLOCK_K))
                    if "BV" in fn.arg_names:
                        consts["BV"] = triton_outer.SCORES_BWD_BLOCK_V
                    warps = triton_outer.scores_warps(triton_outer.SCORES_WARPS if fn is triton_outer._key_scores_fwd
                                                      else triton_outer.SCORES_BWD_WARPS, consts["BK"])
                what = f"{fn.__name__}{''.join('+' + k for k, v in flags.items() if v)} decay={decay} {label}"
                # the default tiles must launch on an H100 (the fused and the split schedule alike)
                failed += compile_and_report(fn, sig, consts, warps, what, resources, fits_sm90=True)
        failed += epilogue_kernel(decay, resources)
        failed += step_kernel(decay, resources)
    print("ok outer kernels" if not failed else f"{failed} outer kernel(s) failed")
    return failed


def step_kernel(decay: int, resources: bool) -> int:
    """The decode step (``_outer_step``) at K = 128 (BK = 128, BV = STEP_BLOCK_V, as ``_single_step`` picks): fp32,
    bf16 q, k, v, g and state, fp64."""
    failed = 0
    fn = triton_outer._outer_step
    for label, io, out, dt in (("fp32", "*fp32", "*fp32", tl.float32), ("bf16 io", "*bf16", "*fp32", tl.float32),
                               ("fp64", "*fp64", "*fp64", tl.float64)):
        sig = {name: ("constexpr" if name in ("BK", "BV", "DECAY", "DTYPE") else
                      out if name in ("y_ptr", "sT_ptr") else io if name.endswith("_ptr") else "i32")
               for name in fn.arg_names}
        what = f"{fn.__name__} decay={decay} {label}"
        consts = dict(BK=128, BV=triton_outer.STEP_BLOCK_V, DECAY=decay, DTYPE=dt)
        failed += compile_and_report(fn, sig, consts, 4, what, resources)
    return failed


def epilogue_kernel(decay: int, resources: bool) -> int:
    """The backward's epilogue (``_bwd_epilogue_kernel``: part sums, casts, the log-decay gradient) at the tiles
    ``_epilogue_tiles`` picks on a GPU for K = 128: fp32 parts with bf16 and fp32 q, k, dq, dk (the stores' casts)
    and g; fp64 throughout (the fp64 reverse cumsum)."""
    failed = 0
    bt, bk, warps = triton_outer._epilogue_tiles(decay, 128, True)
    fn = triton_outer._bwd_epilogue_kernel
    for label, io, parts, g, dt in (("fp32 parts, bf16 io", "*bf16", "*fp32", "*fp32", tl.float32),
                                    ("fp32", "*fp32", "*fp32", "*fp32", tl.float32),
                                    ("fp64", "*fp64", "*fp64", "*fp64", tl.float64)):
        sig = {}
        for name in fn.arg_names:
            if name in ("BT", "BK", "DECAY", "DTYPE"):
                sig[name] = "constexpr"
            elif name in ("q_ptr", "k_ptr", "dq_ptr", "dk_ptr"):
                sig[name] = io
            elif name == "dg_ptr":
                sig[name] = g
            elif name.endswith("_ptr"):
                sig[name] = parts
            else:
                sig[name] = "i32"
        what = f"{fn.__name__} decay={decay} {label}"
        failed += compile_and_report(fn, sig, dict(BT=bt, BK=bk, DECAY=decay, DTYPE=dt), warps, what, resources)
    return failed


def delta_kernels(resources: bool) -> int:
    """The delta rule's kernels (dsfc/runtime/triton_delta.py): the state passes, forward and backward, fp32 and
    fp64, at the launch shapes of K = V = 128 at chunk 64 (Gated DeltaNet's), of K = 256 and of a tiny K; the decode
    step at K = 128."""
    failed = 0
    fwd = ("wv_ptr", "wf_ptr", "ke_ptr", "tot_ptr", "h0_ptr", "starts_ptr", "x_ptr", "final_ptr")
    bwd = ("wf_ptr", "ke_ptr", "tot_ptr", "dstarts_ptr", "dx_ptr", "dfinal_ptr", "dwv_ptr", "g_ptr", "dh0_ptr")
    for fn, ptrs in ((triton_delta._delta_pass_fwd, fwd), (triton_delta._delta_pass_bwd, bwd)):
        for label, ty, dt, size in (("fp32", "*fp32", tl.float32, 4), ("fp64", "*fp64", tl.float64, 8)):
            for L, K, V in ((64, 128, 128), (64, 256, 128), (5, 3, 7)):
                block_l, block_k, block_v, _ = triton_delta._launch_cfg(L, K, V, size)
                sig = {p: ty for p in ptrs}
                sig.update({"NC": "i32", "L": "i32", "K": "i32", "V": "i32", "BL": "constexpr", "BK": "constexpr",
                            "BV": "constexpr", "DTYPE": "constexpr"})
                failed += compile_and_report(fn, sig, {"BL": block_l, "BK": block_k, "BV": block_v, "DTYPE": dt},
                                             triton_delta.NUM_WARPS,
                                             f"{fn.__name__} {label} L={L} K={K} V={V}", resources, aligned=True,
                                             fits_sm90=True)
    step = ("q_ptr", "k_ptr", "v_ptr", "f_ptr", "g_ptr", "s0_ptr", "y_ptr", "sT_ptr")
    for label, ty, dt in (("fp32", "*fp32", tl.float32), ("fp64", "*fp64", tl.float64)):
        # SCALED (the read carries the decay: Comba's s I - k f^T) only with a decay
        for decay, scaled in ((False, False), (True, False), (True, True)):
            for pre in (False, True):
                sig = {p: ty for p in step}
                sig.update({"K": "i32", "V": "i32", "BK": "constexpr", "BV": "constexpr", "DECAY": "constexpr",
                            "PRE": "constexpr", "DTYPE": "constexpr", "SCALED": "constexpr"})
                failed += compile_and_report(triton_delta._delta_step, sig,
                                             {"BK": 128, "BV": triton_delta.STEP_BLOCK_V, "DECAY": decay, "PRE": pre,
                                              "DTYPE": dt, "SCALED": scaled}, 4,
                                             f"_delta_step {label} decay={decay} pre={pre} scaled={scaled}",
                                             resources, aligned=True)
    print("ok delta-rule kernels" if not failed else f"{failed} delta-rule kernel(s) failed")
    return failed


def dplr_kernels(resources: bool) -> int:
    """The DPLR scan's kernels (dsfc/runtime/triton_dplr.py): the state passes, forward and backward, fp32 and fp64,
    at the launch shapes of K = V = 64, 128 and 256 and of a tiny K; the decode step at K = 64 and 128."""
    failed = 0
    fwd = ("trans_ptr", "inject_ptr", "h0_ptr", "starts_ptr", "final_ptr")
    bwd = ("trans_ptr", "dstarts_ptr", "dfinal_ptr", "g_ptr", "dh0_ptr")
    for fn, ptrs in ((triton_dplr._dplr_pass_fwd, fwd), (triton_dplr._dplr_pass_bwd, bwd)):
        for label, ty, dt in (("fp32", "*fp32", tl.float32), ("fp64", "*fp64", tl.float64)):
            for K, V in ((64, 64), (128, 128), (256, 256), (3, 7)):
                block_k, block_v, block_j, _ = triton_dplr._launch_cfg(K, V)
                sig = {p: ty for p in ptrs}
                sig.update({"NC": "i32", "K": "i32", "V": "i32", "BK": "constexpr", "BV": "constexpr",
                            "BJ": "constexpr", "DTYPE": "constexpr"})
                failed += compile_and_report(fn, sig, {"BK": block_k, "BV": block_v, "BJ": block_j, "DTYPE": dt},
                                             triton_dplr.NUM_WARPS, f"{fn.__name__} {label} K={K} V={V}",
                                             resources, aligned=True, fits_sm90=True)
    step = ("q_ptr", "k_ptr", "v_ptr", "x_ptr", "y_ptr", "g_ptr", "s0_ptr", "o_ptr", "sT_ptr")
    for label, ty, dt in (("fp32", "*fp32", tl.float32), ("fp64", "*fp64", tl.float64)):
        for K in (64, 128):
            for pre in (False, True):
                sig = {p: ty for p in step}
                sig.update({"K": "i32", "V": "i32", "BK": "constexpr", "BV": "constexpr", "PRE": "constexpr",
                            "DTYPE": "constexpr"})
                failed += compile_and_report(triton_dplr._dplr_step, sig,
                                             {"BK": K, "BV": triton_dplr.STEP_BLOCK_V, "PRE": pre, "DTYPE": dt}, 4,
                                             f"_dplr_step {label} K={K} pre={pre}", resources, aligned=True)
    print("ok DPLR kernels" if not failed else f"{failed} DPLR kernel(s) failed")
    return failed


def _attention_tiles(path: str, width: int, which: str) -> tuple:
    """``triton_attention.TILES``' entry for ``which`` kernel on ``path`` ("cuda" / "cuda_half") at K = V = width,
    as ``tiles_key`` picks it (the half path's wide entry past 64)."""
    return triton_attention.TILES["cuda_half_wide" if path == "cuda_half" and width > 64 else path][which]


def attention_kernels(resources: bool) -> int:
    """The quadratic-attention kernels (dsfc/runtime/triton_attention.py) at their GPU tiles (``TILES``: 32 x 32 at 8
    warps for the exact fp32 / fp64 products, the half path's own), K = V = 64 (and 128 on the half path), with and without row / col weights, pointers 16-byte aligned (as the JIT specialises torch tensors). Half path: q, k, v, y, dy and dq, dk, dv in bf16 / fp16; the maxima,
    log-sums, row / col and the scale fp32 (as ``_forward`` / ``_backward`` pass them)."""
    failed = 0
    fns = [(triton_attention._attn_fwd, {"LSE": False}), (triton_attention._attn_fwd, {"LSE": True}),
           (triton_attention._attn_bwd_kv, {}), (triton_attention._attn_bwd_q, {})]
    operand_ptrs = ("q_ptr", "k_ptr", "v_ptr", "dy_ptr", "dq_ptr", "dk_ptr", "dv_ptr")  # y_ptr too, unless LSE
    variants = [("fp32", "*fp32", "*fp32", tl.float32, 0, "cuda", (64,)),
                ("fp64", "*fp64", "*fp64", tl.float64, 0, "cuda", (64,)),
                ("bf16", "*bf16", "*fp32", tl.float32, 1, "cuda_half", (64, 128)),
                ("fp16", "*fp16", "*fp32", tl.float32, 2, "cuda_half", (64, 128))]
    for label, operand, stats, dt, half, tiles, widths in variants:
        for width in widths:
            for weights in (False, True):  # row / col weights and the FoX decay (fp64 G) together, or none
                for fn, flags in fns:
                    BM, BN, warps, *stages = _attention_tiles(tiles, width, fn.__name__[len("_attn_"):])
                    consts = dict(K=width, V=width, BM=BM, BN=BN, BK=width, BV=width, HAS_ROW=weights,
                                  HAS_COL=weights, HAS_DECAY=weights, HALF=half, DTYPE=dt, **flags)
                    operands = operand_ptrs + (() if flags.get("LSE") else ("y_ptr",))
                    sig = {name: "constexpr" if name in consts else operand if name in operands else
                           "*fp64" if name == "g_ptr" else stats if name.endswith("_ptr") else "i32"
                           for name in fn.arg_names}
                    what = (f"{fn.__name__}{'+LSE' if flags.get('LSE') else ''} {label} K={width} {BM}x{BN}/{warps}w "
                            f"row/col/decay={weights}")
                    failed += compile_and_report(fn, sig, consts, warps, what, resources, aligned=True,
                                                 num_stages=stages[0] if stages else None)
    print("ok attention kernels" if not failed else f"{failed} attention kernel(s) failed")
    return failed


def softmax_kernels(resources: bool) -> int:
    """The fused softmax-attention kernels (dsfc/runtime/triton_softmax.py) at triton_attention's tiles, the same
    variants as ``attention_kernels`` (with and without the FoX decay): L, Delta and dcol in the stats dtype, G fp64,
    and the compiled kernels must fit sm_90's shared memory."""
    failed = 0
    fns = [(triton_softmax._softmax_fwd, "fwd"), (triton_softmax._softmax_bwd_kv, "bwd_kv"),
           (triton_softmax._softmax_bwd_q, "bwd_q")]
    operand_ptrs = ("q_ptr", "k_ptr", "v_ptr", "y_ptr", "dy_ptr", "dq_ptr", "dk_ptr", "dv_ptr")
    variants = [("fp32", "*fp32", "*fp32", tl.float32, 0, "cuda", (64,)),
                ("fp64", "*fp64", "*fp64", tl.float64, 0, "cuda", (64,)),
                ("bf16", "*bf16", "*fp32", tl.float32, 1, "cuda_half", (64, 128)),
                ("fp16", "*fp16", "*fp32", tl.float32, 2, "cuda_half", (64, 128))]
    for label, operand, stats, dt, half, tiles, widths in variants:
        for width in widths:
            for decay in (False, True):
                for fn, which in fns:
                    BM, BN, warps, *stages = _attention_tiles(tiles, width, which)
                    consts = dict(K=width, V=width, BM=BM, BN=BN, BK=width, BV=width, HAS_DECAY=decay, HALF=half,
                                  DTYPE=dt)
                    sig = {name: "constexpr" if name in consts else operand if name in operand_ptrs else
                           "*fp64" if name == "g_ptr" else stats if name.endswith("_ptr") else "i32"
                           for name in fn.arg_names}
                    what = f"{fn.__name__} {label} K={width} {BM}x{BN}/{warps}w decay={decay}"
                    failed += compile_and_report(fn, sig, consts, warps, what, resources, aligned=True,
                                                 fits_sm90=True, num_stages=stages[0] if stages else None)
    print("ok softmax kernels" if not failed else f"{failed} softmax kernel(s) failed")
    return failed


def diagonal_signature(fn, leaf, state, out):
    sig = {}
    for name in fn.arg_names:
        if name in ("BLOCK_R", "BLOCK_C", "READOUT", "DTYPE", "CHUNK_T", "STARTS", "PREFETCH", "SKIP"):
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


def main(specs, resources: bool = False) -> int:
    failed = 0
    cases = [("fp32", "*fp32", "*fp32", tl.float32), ("bf16 in", "*bf16", "*fp32", tl.float32),
             ("fp64", "*fp64", "*fp64", tl.float64)]
    for path in specs:
        result = compile_spec(path)
        if result.plan.triton is None:
            continue
        module = load_module(result, name=f"dsfc_aot_{Path(path).stem}")
        for label, leaf, state, dt in cases:
            # SKIP: the elementwise D u added in the forward kernel (inference), with and without prefetching
            kernels = [(module._scan_fwd, {"PREFETCH": False, "SKIP": False}),
                       (module._scan_fwd, {"PREFETCH": True, "SKIP": True}), (module._scan_bwd, {})]
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
    failed += delta_kernels(resources)
    failed += dplr_kernels(resources)
    failed += attention_kernels(resources)
    if "--no-outer" not in sys.argv:
        failed += outer_kernels(resources)
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    resources = "--resources" in args
    if "--attention-only" in args:
        sys.exit(1 if attention_kernels(resources) else 0)
    if "--softmax-only" in args:
        sys.exit(1 if softmax_kernels(resources) else 0)
    if "--delta-only" in args:
        sys.exit(1 if delta_kernels(resources) else 0)
    if "--dplr-only" in args:
        sys.exit(1 if dplr_kernels(resources) else 0)
    if "--outer-only" in args:
        decay = next((int(a.split("=")[1]) for a in args if a.startswith("--decay=")), None)
        sys.exit(1 if outer_kernels(resources, decay) else 0)
    args = [a for a in args if not a.startswith("--")]
    sys.exit(main(args or [str(ROOT / "specs" / "s6.dsf")], resources))
