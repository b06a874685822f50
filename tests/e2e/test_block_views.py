"""Block-diagonal projections print as reshaped views and a batched einsum, not as a gather.

RG-LRU's gates ``sum(i: bw, x[(c // bw) * bw + i] * W_a[c // bw, i, c % bw])`` and mLSTM's headwise q / k / v were
printed as an advanced-index gather of x to [B, T, W, bw] (bw times the input; 86 GB in fp32 at RG-LRU's own dims,
batch 8, T = 4096) and a gathered weight. Now the let's axis c, read only through ``c // bw`` and ``c % bw``, is
printed over block axes (g, j) (``ir.digits.split_axes``), x's subscript ``bw g + i`` is an ``unflatten`` (a view:
``ir.digits.radix_digits`` checks it tiles W exactly) and the result is reshaped back to c. Checked here: the
generated source (no such gather), the numerics of the torch and the Triton path (interpreted on CPU) against the
float64 reference recurrence with gradients at small odd dims, specs where the rewrite must not (or only partly)
happen, and the size of the largest tensor the forward allocates.
"""

from tests.triton._device import DEVICE  # noqa: F401,E402  (CPU: sets TRITON_INTERPRET=1 before triton is imported)

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from dsf_testing import check_all_paths, compile_and_build, generated_class  # noqa: E402
from dsfc.analysis.structure import Family  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RG_LRU = (ROOT / "specs" / "rg_lru.dsf").read_text()
MLSTM = (ROOT / "specs" / "mlstm.dsf").read_text()


def _einsums(src: str) -> list[str]:
    """Every torch.einsum call's text (up to its closing parenthesis)."""
    out = []
    for m in re.finditer(r"torch\.einsum\(", src):
        depth, k = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(src[k], 0)
            k += 1
        out.append(src[m.start():k])
    return out


@pytest.mark.parametrize("name", ["rg_lru", "mlstm"])
def test_generated_projections_are_views_not_gathers(name):
    src = (ROOT / "generated" / f"{name}.py").read_text()
    stride = "bw" if name == "rg_lru" else "bs"
    lets = src[src.index("def _lets"):]
    lets = lets[:lets.index("\n    def ", 10)]
    # no einsum operand indexed with a block number (the gather of x and the gathered weight)
    for call in _einsums(lets):
        assert f"// {stride})" not in call and f"% {stride})" not in call, call
    assert re.search(rf"\.unflatten\(2, \(\w+, {stride}\)\)", lets)
    assert ".reshape(_B, _T, " in lets
    if name == "mlstm":  # the gates read q, k, v flat (sum(e: E, .. q[e // DH, e % DH]), dim E = H * DH): a view
        code = "\n".join(line.split("#")[0] for line in lets.splitlines())  # the spec's text sits in comments
        assert "// DH" not in code and code.count(".flatten(2, 3)") == 6
    if name == "rg_lru":  # the Triton path's hoisted projections too
        for stem in ("_r_sum", "_ig_sum"):
            hoisted = src[src.index(f"    {stem} = "):]
            hoisted = hoisted[:hoisted.index("# a sum inside the maths")]
            assert "unflatten(2, (nh, bw))" in hoisted and "// bw" not in hoisted, hoisted


@pytest.mark.parametrize("dims", [{"W": 6, "nh": 3}, {"W": 4, "nh": 1}, {"W": 5, "nh": 5}])
def test_rg_lru_matches_the_reference_on_every_path(dims):
    built = compile_and_build(RG_LRU, dims, "rg_lru.dsf")
    check_all_paths(built, Family.DIAGONAL_SCAN)


@pytest.mark.parametrize("dims", [{"H": 2, "DH": 3, "bs": 2}, {"H": 1, "DH": 5, "bs": 5}, {"H": 3, "DH": 2, "bs": 3}])
def test_mlstm_matches_the_reference_on_every_path(dims):
    built = compile_and_build(MLSTM, dims, "mlstm.dsf")
    check_all_paths(built, Family.CHUNKED_OUTER)


OTHER = """
model M "block reads that are not (all) views"
dim W = 6
dim nb = W // 3
input x[W]
state h[c: W]
output y[W]
param Wa[nb, 3, 3] ~ normal(0, 0.5)
let r[c: W] = sigmoid({body})
A[c, c2] = delta(c, c2) * r[c]
B[c, m] = delta(c, m) * (1 - r[c])
C[o, c] = delta(o, c)
"""

CASES = {
    # the axis splits (c = 3 g + j) but x's subscript 2 g + i does not tile W: x stays a gather
    "overlapping": ("sum(i: 3, x[(c // 3) * 2 + i] * Wa[c // 3, i, c % 3])", True, False),
    # a shifted read (3 g + i + 1): no tiling either
    "shifted": ("sum(i: 2, x[(c // 3) * 3 + i + 1] * Wa[c // 3, i + 1, c % 3])", True, False),
    # wraps into the next block: a mod of the block offset, no split
    "wrapping": ("sum(i: 3, x[((c // 3) * 3 + i + 1) % W] * Wa[c // 3, i, c % 3])", False, False),
    # two strides: no split, the plain gather
    "two_strides": ("x[(c // 2) * 2] * Wa[c // 3, 0, c % 3]", False, False),
    # c also read on its own: no split
    "bare_too": ("sum(i: 3, x[(c // 3) * 3 + i] * Wa[c // 3, i, c % 3]) + x[c]", False, False),
    # the positive case over a literal block size
    "tiling": ("sum(i: 3, x[(c // 3) * 3 + i] * Wa[c // 3, i, c % 3])", True, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("W", [6, 9])
def test_blocks_that_do_not_tile_stay_gathers_and_still_match(case, W):
    body, splits, view = CASES[case]
    built = compile_and_build(OTHER.format(body=body), {"W": W}, "m.dsf")
    lets = built.result.source[built.result.source.index("def _lets"):]
    lets = re.sub(r"\s+", "", lets[:lets.index("\n    def ", 10)])  # black's line breaks vary
    assert (".expand(_B,_T,nb,3).reshape(_B,_T,W)" in lets) == splits, lets
    assert ("x.unflatten(2,(nb,3))" in lets) == view, lets
    check_all_paths(built, Family.DIAGONAL_SCAN)


class _Largest(TorchDispatchMode):
    """The largest tensor any op returns (bytes): a gather to [B, T, W, bw] would be one."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_rg_lru_forward_allocates_no_block_gather():
    B, T, W, nh = 1, 512, 256, 4
    bw = W // nh
    model = generated_class("rg_lru")(W=W, nh=nh, backend="torch")
    u = torch.randn(B, T, W)
    with _Largest() as seen, torch.no_grad():
        model(u)
    gather = B * T * W * bw * 4  # fp32 [B, T, W, bw]: 33.5 MB
    assert seen.largest <= B * T * W * 4 * 4, (seen.largest, gather)  # a few [B, T, W] at most
    assert seen.largest < gather // 8
