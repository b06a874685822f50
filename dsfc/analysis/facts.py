"""Named analysis facts. Each member's docstring-like comment says what it guarantees."""

from __future__ import annotations

from enum import Enum


class AKind(str, Enum):
    IDENTITY = "identity"  # A_t = I for every input
    SCALAR = "scalar"  # A_t = a_t I: one scalar for the whole state
    SCALAR_PER_GROUP = "scalar per group"  # one scalar per value of some state axes (e.g. per head), identity inside
    DIAGONAL = "diagonal"  # A_t diagonal, entries vary over the state
    BLOCK_DIAGONAL = "block-diagonal"  # delta over some state axes, dense blocks over the others
    DENSE = "dense"  # no delta structure


class BForm(str, Enum):
    ELEMENTWISE = "elementwise"  # (B u)[s] needs no contraction over the input and no outer-product split
    OUTER = "outer product"  # (B u)[g, k, v] = key[g, k] * value[g, v]
    GENERAL = "general"  # anything else (a dense contraction of the input)


class Family(str, Enum):
    DIAGONAL_SCAN = "diagonal scan"  # elementwise linear recurrence over all N state entries
    CHUNKED_OUTER = "chunked outer-product scan"  # chunkwise-parallel linear attention with decay masks
    CHUNKED_DELTA = "chunked delta-rule scan"  # A = s (I - k f^T) per group, B u = k (x) v: WY/UT chunked form
    # A = diag(d) + x y^T per group on the key axes (d per key: KDA, RWKV-7), B u = k (x) v: chunked DPLR form
    CHUNKED_DPLR = "chunked diagonal-plus-rank-1 scan"
    DENSE_SCAN = "dense scan"  # per-step block matrix-vector recurrence
    QUADRATIC = "quadratic attention"  # infinite feature state: kernelised, O(T^2) in log space, KV cache for steps


class Bound(str, Enum):
    STABLE = "|lambda| < 1"
    MARGINAL = "|lambda| <= 1"
    UNKNOWN = "unknown"  # no range derived (a dense A), or one the verdicts above and below do not cover
    # interval arithmetic bounds the eigenvalues only by a range from lo >= 0 that reaches above 1 ((lo, inf), or
    # I + beta k k^T's [1, 2)): a bound <= 1 is not proven, which is not a proof that an eigenvalue exceeds 1
    # (minLSTM's f / (f + i) read (0, inf) this way before the share rule)
    UNBOUNDED = "not proven <= 1"
    EXCEEDS = "|lambda| > 1"  # proven: some eigenvalue lies outside the unit circle for every input
