"""Independent reference for the PSC entropy layer (format version 1), written from format_spec/PSC.md.

It does not import pillow_psc or constriction: numpy and the standard library only. The tests check that it
agrees bit for bit with the package (tests/test_vectors.py), which is how the spec's entropy section is kept
honest. Functions:

* ``symbol_values()``         the 253 float8 e4m3fn symbol values in units of the quantizer step
* ``level_cdf(level)``        the 254-entry quantized CDF (24-bit fixed point) of one entropy-model level
* ``range_decode(words, levels)``  the symbols of one DATA chunk's `words`, given every symbol's level
"""

from __future__ import annotations

import math

import numpy as np

PRECISION = 24  # probability precision in bits
N_SYMBOLS = 253
LEVELS_PER_OCTAVE = 4
TAIL_WEIGHT = 0.02
TAIL_SCALE = 4.0
_MASK64 = (1 << 64) - 1


def symbol_values() -> list[float]:
    """Finite float8 e4m3fn values (-0 folded onto +0) divided by 2^-9, ascending: integers and half-integers
    from -229376 to 229376; symbol i decodes to values[i] * step."""
    positive = []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue  # NaN
            v = (m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
            if v > 0:
                positive.append(v / 2.0 ** -9)
    positive.sort()
    return [-v for v in reversed(positive)] + [0.0] + positive


def level_probabilities(level: int) -> np.ndarray:
    """Floating-point model of one level (float64, as the reference implementation computes it)."""
    values = np.array(symbol_values())
    edges = (values[1:] + values[:-1]) / 2
    sigma = 2.0 ** (level / LEVELS_PER_OCTAVE)
    gauss = np.array([0.5 * (1.0 + math.erf(e / (sigma * math.sqrt(2.0)))) for e in edges])
    b = TAIL_SCALE * sigma
    laplace = np.where(edges < 0, 0.5 * np.exp(np.minimum(edges, 0) / b), 1.0 - 0.5 * np.exp(-np.maximum(edges, 0) / b))
    cdf = np.concatenate([[0.0], (1 - TAIL_WEIGHT) * gauss + TAIL_WEIGHT * laplace, [1.0]])
    probs = np.diff(cdf)
    return probs / probs.sum()


def level_cdf(level: int) -> list[int]:
    """Quantized CDF: cdf[i] = floor(c_i * scale) + i with c_i the running float64 sum of p_0..p_{i-1}
    (left to right) and scale = (2^24 - 253) / (p_0 + ... + p_252); cdf[253] = 2^24. Every symbol gets >= 1."""
    p = [float(x) for x in level_probabilities(level)]
    total = 0.0
    for x in p:
        total += x
    scale = float((1 << PRECISION) - len(p)) / total
    cdf, cum = [], 0.0
    for i, x in enumerate(p):
        cdf.append(int(cum * scale) + i)
        cum += x
    cdf.append(1 << PRECISION)
    return cdf


class RangeDecoder:
    """Range decoder over little-endian uint32 words: 64-bit state, 32-bit words, 24-bit probabilities."""

    def __init__(self, words: list[int]):
        self.words, self.pos = words, 0
        self.lower, self.range = 0, _MASK64
        point, n = 0, 0
        while n < 2 and self.pos < len(self.words):
            point = (point << 32) | self._next()
            n += 1
        if n == 1:
            point <<= 32
        self.point = point

    def _next(self) -> int:
        w = self.words[self.pos]
        self.pos += 1
        return w

    def decode(self, cdf: list[int]) -> int:
        scale = self.range >> PRECISION
        quantile = ((self.point - self.lower) & _MASK64) // scale
        if quantile >= 1 << PRECISION:
            raise ValueError("invalid compressed data")
        lo, hi = 0, len(cdf) - 1  # largest s with cdf[s] <= quantile
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cdf[mid] <= quantile:
                lo = mid
            else:
                hi = mid
        s = lo
        self.lower = (self.lower + scale * cdf[s]) & _MASK64
        self.range = scale * (cdf[s + 1] - cdf[s])
        if self.range < 1 << 32:
            self.lower = (self.lower << 32) & _MASK64
            self.range <<= 32
            self.point = (self.point << 32) & _MASK64
            if self.pos < len(self.words):
                self.point |= self._next()
        return s


def range_decode(words: bytes, levels) -> list[int]:
    """Decode one DATA chunk: symbols are stored grouped by level (ascending), in list order within a level."""
    dec = RangeDecoder([int(w) for w in np.frombuffer(words, dtype="<u4")])
    levels = [int(v) for v in levels]
    out = [0] * len(levels)
    tables: dict[int, list[int]] = {}
    for level in sorted(set(levels)):
        cdf = tables.setdefault(level, level_cdf(level))
        for i, v in enumerate(levels):
            if v == level:
                out[i] = dec.decode(cdf)
    return out
