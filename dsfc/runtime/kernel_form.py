"""The DSF's convolution (kernel) form y = Phi u, from dense per-step matrices, and the size guard of the dense
forms (``dsf_matrices``, ``kernel_form``, ``backend="reference"``)."""

from __future__ import annotations

from typing import Callable

import torch

# The most bytes one dense form may take: the four matrices of ``dsf_matrices`` together, or ``kernel_form``'s Phi.
# They are documented "small sizes only"; above this they are refused before the allocation (at a large T torch's own
# allocation error came from deep inside, or a CPU allocation below the RAM size succeeded and was then filled, which
# can bring the OOM killer). Read at each call: ``dsfc.runtime.kernel_form.MAX_DENSE_BYTES = 8 << 30`` raises it.
MAX_DENSE_BYTES = 2 << 30


class DenseSizeError(ValueError):
    """A dense DSF form (``dsf_matrices``, ``kernel_form``) larger than ``MAX_DENSE_BYTES``."""


def check_dense_size(where: str, what: str, batch: int, T: int, elements_at: Callable[[int], int],
                     dtype: torch.dtype) -> None:
    """Refuse a dense form of ``elements_at(T)`` numbers of ``dtype`` above ``MAX_DENSE_BYTES``.

    Args:
        where: the model and method, which start the message (``"S6.dsf_matrices"``).
        what: the shapes it would build, in words (``"A [B,T,N,N] ..."`` at the call's sizes).
        batch, T: the call's batch and sequence length.
        elements_at: the number of entries at a sequence length (nondecreasing in it), for the largest T that fits.
        dtype: the dtype it would be built in.

    Raises:
        DenseSizeError naming the size, the limit and the largest T that fits at this batch.
    """
    item = torch.empty((), dtype=dtype).element_size()
    nbytes = elements_at(T) * item
    if nbytes <= MAX_DENSE_BYTES:
        return
    lo, hi = 0, T  # the largest T' < T with elements_at(T') * item <= MAX_DENSE_BYTES (0: not even one step)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if elements_at(mid) * item <= MAX_DENSE_BYTES else (lo, mid - 1)
    fit = f"use a smaller T (at most {lo} at batch {batch})" if lo > 0 else "use a smaller batch or smaller dims"
    raise DenseSizeError(
        f"{where}: the dense form would take {nbytes / 2**30:.3g} GiB ({what}, {dtype}) at batch {batch}, T = {T}, "
        f"above the limit of {MAX_DENSE_BYTES / 2**30:.3g} GiB for these small-size helpers "
        f"(dsfc.runtime.kernel_form.MAX_DENSE_BYTES); {fit}"
    )


def check_dense_matrices(where: str, batch: int, T: int, shapes_at: Callable[[int], dict], dtype: torch.dtype) -> None:
    """``check_dense_size`` of ``dsf_matrices``: ``shapes_at(t)`` maps each matrix to its (rows, cols) at t steps
    (a kernelised attention's slot basis grows with t)."""
    what = ", ".join(f"{name} [{batch}, {T}, {r}, {c}]" for name, (r, c) in shapes_at(T).items())
    check_dense_size(where, what, batch, T, lambda t: sum(batch * t * r * c for r, c in shapes_at(t).values()), dtype)


def kernel_matrix(A, B, C, D, pre_readout: bool = False) -> torch.Tensor:
    """Phi [batch, T*p, T*d], lower block-triangular, with blocks

        Phi_ij = C_i A_i A_(i-1) ... A_(j+1) B_j  (j < i),     Phi_ii = C_i B_i + D_i

    (post-update readout). For pre-update readout (y_i = C_i h_(i-1) + D_i u_i) the product stops one step
    earlier: Phi_ij = C_i A_(i-1) ... A_(j+1) B_j for j < i and Phi_ii = D_i.
    A [b,T,N,N], B [b,T,N,d], C [b,T,p,N], D [b,T,p,d] as returned by ``dsf_matrices``.
    """
    b, T, N, _ = A.shape
    d, p = B.shape[-1], C.shape[-2]
    # before the [b, T*p, T*d] buffer: Phi grows as T^2 (and its loop as T^2 products)
    check_dense_size("kernel_form", f"Phi [{b}, {T}*{p}, {T}*{d}]", b, T, lambda t: b * t * p * t * d, A.dtype)
    phi = A.new_zeros(b, T, p, T, d)
    for j in range(T):
        # propagate column j forward: M = A_i ... A_(j+1) B_j, starting from B_j at i = j
        M = B[:, j]
        for i in range(j, T):
            if i > j:
                if pre_readout:
                    M_read = M
                    M = torch.einsum("bnm,bmd->bnd", A[:, i], M)
                else:
                    M = torch.einsum("bnm,bmd->bnd", A[:, i], M)
                    M_read = M
            else:
                M_read = None if pre_readout else M
            block = D[:, i] if i == j else 0
            if M_read is not None:
                block = block + torch.einsum("bpn,bnd->bpd", C[:, i], M_read)
            phi[:, i, :, j, :] = block
    return phi.reshape(b, T * p, T * d)
