"""Runtime helpers imported by dsfc-generated modules (torch only; no dependency on the compiler)."""

from dsfc.runtime.compiled_chunks import run_compiled_chunks, run_compiled_lets, use_compiled_chunks
from dsfc.runtime.features import elu1p, expm1, taylor_dim, taylor_features
from dsfc.runtime.indexing import axis, cached_index
from dsfc.runtime.init import dt_bias_
from dsfc.runtime.kernel_form import kernel_matrix
from dsfc.runtime.scans import (chunked_delta_scan, chunked_outer_scan, diagonal_scan, fold_decay_sign,
                                 log_abs_decay, rank_readouts, rank_substep_keys,
                                 rank_substeps)

__all__ = ["axis", "cached_index", "chunked_delta_scan", "chunked_outer_scan", "diagonal_scan", "dt_bias_", "elu1p",
           "expm1", "fold_decay_sign", "kernel_matrix", "log_abs_decay", "rank_readouts", "rank_substep_keys",
           "rank_substeps", "run_compiled_chunks", "run_compiled_lets", "taylor_dim", "taylor_features",
           "use_compiled_chunks"]
