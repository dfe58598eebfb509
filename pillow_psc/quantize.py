"""Float8 quantization of measurement residuals (ml_dtypes float8_e4m3fn).

A residual r (measurement minus its prediction) is scaled so that the e4m3fn subnormal spacing 2^-9 equals the
quantizer step delta: the quantizer is uniform with step delta for |r| < 16*delta and logarithmic beyond
(3 mantissa bits), saturating at 448 * 2^9 * delta. Each of the 253 distinct finite float8 values (-0 folds
onto +0) is one coding symbol, numbered in increasing value order.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

FLOAT8 = ml_dtypes.float8_e4m3fn
SUBNORMAL_STEP = 2.0 ** -9
LARGEST = 448.0

_all_bytes = np.arange(256, dtype=np.uint8)
_all_values = _all_bytes.view(FLOAT8).astype(np.float64)
#: Representable values in units of delta, ascending; symbol i decodes to VALUES[i] * delta.
VALUES = np.unique(_all_values[np.isfinite(_all_values)]) / SUBNORMAL_STEP
N_SYMBOLS = len(VALUES)  # 253
_SYMBOL_OF_BYTE = np.searchsorted(VALUES, np.nan_to_num(_all_values) / SUBNORMAL_STEP).astype(np.int32)


def quantize(residual: np.ndarray, delta: float) -> np.ndarray:
    """Residuals -> int32 symbols (round to nearest float8, ties to even, saturating)."""
    scaled = np.clip(np.asarray(residual, dtype=np.float64) * (SUBNORMAL_STEP / delta), -LARGEST, LARGEST)
    return _SYMBOL_OF_BYTE[scaled.astype(FLOAT8).view(np.uint8)]


def dequantize(symbols: np.ndarray, delta: float) -> np.ndarray:
    """Symbols -> residuals in signal units."""
    return VALUES[np.asarray(symbols)] * delta


def cell_edges() -> np.ndarray:
    """Boundaries (in units of delta) between neighbouring symbols' quantization cells, N_SYMBOLS-1 of them."""
    return (VALUES[1:] + VALUES[:-1]) / 2


def float8_bytes(values: np.ndarray) -> np.ndarray:
    """Values -> raw float8_e4m3fn bytes (uint8), unscaled and saturating at +-448: the paper's quantizer."""
    return np.clip(np.asarray(values, dtype=np.float64), -LARGEST, LARGEST).astype(FLOAT8).view(np.uint8)


def float8_values(data: np.ndarray) -> np.ndarray:
    """Raw float8_e4m3fn bytes -> float64 values; NaN bytes come back as NaN (callers reject them)."""
    return np.asarray(data, dtype=np.uint8).view(FLOAT8).astype(np.float64)
