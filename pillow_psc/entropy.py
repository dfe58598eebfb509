"""Range coding of quantized residuals with constriction.

Every residual has a predicted spread sigma (from the posterior samples). sigma/delta is snapped to a log grid
(LEVELS_PER_OCTAVE levels per octave); each grid level owns one categorical table: the mass of a zero-mean
Gaussian-Laplace mixture on the float8 quantization cells. Symbols are coded grouped by level, ascending, in
their original order inside a level, so the decoder (which knows every level) reads them back in that order.
"""

from __future__ import annotations

import math
from functools import lru_cache

import constriction
import numpy as np

from .errors import CorruptFileError
from .quantize import N_SYMBOLS, cell_edges

LEVELS_PER_OCTAVE = 4
LEVEL_MIN, LEVEL_MAX = -24, 72  # sigma/delta from 2^-6 to 2^18
TAIL_WEIGHT = 0.02  # Laplace share of the mixture: keeps outliers affordable
TAIL_SCALE = 4.0  # Laplace scale relative to sigma


def scale_levels(sigma_over_delta: np.ndarray) -> np.ndarray:
    """Snap spreads (in units of delta) to integer grid levels."""
    s = np.maximum(np.asarray(sigma_over_delta, dtype=np.float64), 2.0 ** (LEVEL_MIN / LEVELS_PER_OCTAVE))
    return np.clip(np.rint(np.log2(s) * LEVELS_PER_OCTAVE), LEVEL_MIN, LEVEL_MAX).astype(np.int64)


@lru_cache(maxsize=None)
def level_probabilities(level: int) -> np.ndarray:
    """Probability of each symbol for one grid level (float64, sums to 1)."""
    sigma = 2.0 ** (level / LEVELS_PER_OCTAVE)
    edges = cell_edges()
    gauss = np.array([0.5 * (1.0 + math.erf(e / (sigma * math.sqrt(2.0)))) for e in edges])
    b = TAIL_SCALE * sigma
    laplace = np.where(edges < 0, 0.5 * np.exp(np.minimum(edges, 0) / b), 1.0 - 0.5 * np.exp(-np.maximum(edges, 0) / b))
    cdf = np.concatenate([[0.0], (1 - TAIL_WEIGHT) * gauss + TAIL_WEIGHT * laplace, [1.0]])
    probs = np.diff(cdf)
    return probs / probs.sum()


@lru_cache(maxsize=None)
def _model(level: int):
    return constriction.stream.model.Categorical(level_probabilities(level).astype(np.float64), perfect=False)


def _groups(levels: np.ndarray):
    levels = np.asarray(levels)
    order = np.argsort(levels, kind="stable")
    bounds = np.flatnonzero(np.diff(levels[order])) + 1
    for idx in np.split(order, bounds):
        if len(idx):
            yield int(levels[idx[0]]), idx


def encode(symbols: np.ndarray, levels: np.ndarray) -> bytes:
    """Range-code int32 symbols whose tables are given by `levels`; returns little-endian uint32 words."""
    symbols = np.asarray(symbols, dtype=np.int32)
    coder = constriction.stream.queue.RangeEncoder()
    for level, idx in _groups(levels):
        coder.encode(np.ascontiguousarray(symbols[idx]), _model(level))
    return coder.get_compressed().astype("<u4").tobytes()


def decode(words: bytes, levels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`."""
    levels = np.asarray(levels)
    out = np.zeros(len(levels), dtype=np.int32)
    coder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    try:
        for level, idx in _groups(levels):
            out[idx] = coder.decode(_model(level), len(idx))
    except Exception as exc:  # constriction raises ValueError/AssertionError on exhausted or invalid data
        raise CorruptFileError(f"range-coded data cannot be decoded: {exc}") from exc
    if np.any(out < 0) or np.any(out >= N_SYMBOLS):
        raise CorruptFileError("range-coded data decodes to an invalid symbol")
    return out


def cost_bits(symbols: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Ideal code length of each symbol in bits (for rate control before coding)."""
    levels = np.asarray(levels)
    out = np.empty(len(levels))
    for level, idx in _groups(levels):
        out[idx] = -np.log2(level_probabilities(level)[np.asarray(symbols)[idx]])
    return out
