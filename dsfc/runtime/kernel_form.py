"""The DSF's convolution (kernel) form y = Phi u, from dense per-step matrices."""

from __future__ import annotations

import torch


def kernel_matrix(A, B, C, D, pre_readout: bool = False) -> torch.Tensor:
    """Phi [batch, T*p, T*d], lower block-triangular, with blocks

        Phi_ij = C_i A_i A_(i-1) ... A_(j+1) B_j  (j < i),     Phi_ii = C_i B_i + D_i

    (post-update readout). For pre-update readout (y_i = C_i h_(i-1) + D_i u_i) the product stops one step
    earlier: Phi_ij = C_i A_(i-1) ... A_(j+1) B_j for j < i and Phi_ii = D_i.
    A [b,T,N,N], B [b,T,N,d], C [b,T,p,N], D [b,T,p,d] as returned by ``dsf_matrices``.
    """
    b, T, N, _ = A.shape
    d, p = B.shape[-1], C.shape[-2]
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
