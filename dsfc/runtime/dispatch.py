"""When a kernel launcher may skip its ``torch.library`` custom op and call the implementation directly.

The custom ops exist for ``torch.compile`` (one opaque node per launch) and for autograd (``register_autograd``).
Neither is involved in eager inference, where the op's dispatch is pure overhead, paid on every token of a decoding
loop: the S6 forward at T = 1 (B = 8, d = 2048, n = 16) with its kernel launch stubbed out took 160 us of Python per
call through the op and 97 us calling the implementation directly (this project's 2-core CPU machine).
"""

import torch

__all__ = ["eager_inference"]


def eager_inference(*tensors: torch.Tensor) -> bool:
    """True outside ``torch.compile`` when no gradient can flow to any of ``tensors``."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
