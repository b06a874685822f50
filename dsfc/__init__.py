"""dsfc: a compiler from Dynamical Systems Framework specs to PyTorch (and Triton) sequence-model layers."""

__version__ = "0.1.0"
