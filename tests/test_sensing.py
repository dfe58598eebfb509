"""Rows of the sensing matrix, the float8 quantizer and the entropy coder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pillow_psc import entropy, quantize
from pillow_psc.rows import TileGrid, base_rows, dct_matrix, orthonormalise, principal_directions
from pillow_psc.samplers import karras_sigmas


def test_quantizer_is_uniform_near_zero_and_saturates():
    delta = 0.1
    r = np.linspace(-1.5, 1.5, 301)
    err = quantize.dequantize(quantize.quantize(r, delta), delta) - r
    assert np.abs(err).max() <= delta / 2 + 1e-12
    big = quantize.quantize(np.array([1e12, -1e12, 0.0, -0.0]), delta)
    assert big.tolist() == [quantize.N_SYMBOLS - 1, 0, big[2], big[2]]
    assert quantize.N_SYMBOLS == 253


def test_entropy_round_trip_and_cost_estimate():
    rng = np.random.default_rng(1)
    sig = np.exp(rng.uniform(-2, 4, 2000))
    symbols = quantize.quantize(rng.normal(0, sig), 1.0)
    levels = entropy.scale_levels(sig)
    words = entropy.encode(symbols, levels)
    assert np.array_equal(entropy.decode(words, levels), symbols)
    ideal = entropy.cost_bits(symbols, levels).sum()
    assert abs(len(words) * 8 - ideal) < 0.02 * ideal + 64


def test_tiles_round_trip_and_masks():
    g = TileGrid(3, 20, 35, 16)
    x = torch.randn(2, 3, 32, 48)
    assert torch.equal(g.from_tiles(g.to_tiles(x), 2, 3), x)
    m = g.masks(torch.device("cpu"))
    assert m.shape == (6, 768) and int(m.sum()) == 3 * 20 * 35


def test_base_rows_are_orthonormal_and_masked():
    g = TileGrid(3, 20, 35, 16)
    rows = base_rows(g, torch.device("cpu")).double()
    gram = rows @ rows.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(3, dtype=torch.float64).expand_as(gram), atol=1e-6)
    assert torch.all(rows * (1 - g.masks(torch.device("cpu")).double()[:, None]) == 0)
    assert torch.equal(base_rows(g, torch.device("cpu"), chunk=2), rows.float())  # built in chunks: same bits


def test_principal_directions_find_the_dominant_axis():
    gen = torch.Generator().manual_seed(0)
    axis = torch.zeros(12)
    axis[3] = 1
    samples = (torch.randn(1, 9, 1, generator=gen) * 5) * axis + 0.01 * torch.randn(1, 9, 12, generator=gen)
    mean, dirs, spread = principal_directions(samples)
    assert dirs.shape == (1, 8, 12) and abs(float(dirs[0, 0, 3])) > 0.99
    assert spread[0, 0] > 10 * spread[0, 1]


def test_orthonormalise_sign_convention_and_dropping():
    existing = torch.eye(4)[None, :2]  # rows e0, e1
    new = torch.tensor([[0.5, 0.1, -2.0, 0.3], [1.0, 1.0, 0.0, 0.0]])
    rows, ok = orthonormalise(new, existing.expand(2, 2, 4), torch.ones(2, 4))
    assert ok.tolist() == [True, False]
    assert torch.allclose(rows[0], torch.tensor([0.0, 0.0, 2.0, -0.3]) / np.hypot(2.0, 0.3), atol=1e-6)


def test_dct_is_orthonormal_and_sigmas_decrease():
    d = dct_matrix(7)
    assert np.allclose(d @ d.T, np.eye(7))
    s = karras_sigmas(5, 1.0, 0.01)
    assert s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(0.01) and s == sorted(s, reverse=True)
