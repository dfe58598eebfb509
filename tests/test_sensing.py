"""Rows of the sensing matrix, the float8 quantizer and the entropy coder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pillow_psc import entropy, quantize
from pillow_psc.rows import TileGrid, base_rows, dct_matrix, orthonormalise, principal_directions
from pillow_psc.samplers import (at_half_resolution, karras_sigmas, sample_projected, upsample_bilinear,
                                 upsample_bilinear_v7)


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


@pytest.mark.parametrize("c", [0.0, 0.5])
def test_sampler_re_noises_from_the_estimate_pushed_on_along_its_last_change(c: float):
    """PSC.md §6.9: x0_i + c (h_i / h_(i-1)) (x0_i - x0_(i-1)), h_i = log(sigma_i / sigma_(i+1)), is re-noised;
    c = 0 is the first-order sampler. With the Gaussian prior's denoiser x / (1 + sigma^2) and no noise, the
    steps can be followed by hand."""
    zero = lambda i: torch.zeros(1, 1)  # noqa: E731
    out = sample_projected(lambda x, s: x / (1 + s * s), lambda x: x, torch.ones(1, 1), [1.0, 0.5, 0.25], zero,
                           eta=1.0, extrapolation=c)
    # x0 = 1/2 at sigma 1, 0.5/1.25 = 0.4 at sigma 0.5 (h = log 2 both times): re-noised from 0.4 + c (0.4 - 0.5)
    assert out.item() == pytest.approx((0.4 - 0.1 * c) / 1.0625, rel=1e-6)


def test_sampler_extrapolation_keeps_the_measurements_and_tolerates_repeated_levels():
    """The difference of two projected estimates adds nothing along the rows, so every level is re-noised from a
    measurement-consistent point (seen here without noise: the denoiser's inputs keep the pinned value); a repeated
    level (h = 0) does not divide by zero."""
    pin = lambda x: torch.cat([torch.full_like(x[:, :1], 0.3), x[:, 1:]], 1)  # noqa: E731
    inputs: list[torch.Tensor] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        inputs.append(x.clone())
        return 0.9 * x + 0.1

    out = sample_projected(denoise, pin, torch.zeros(2, 4), [0.5, 0.5, 0.3, 0.1], lambda i: torch.zeros(2, 4),
                           extrapolation=0.5)
    assert len(inputs) == 4 and all(torch.equal(x[:, 0], torch.full((2,), 0.3)) for x in inputs[1:])
    assert torch.isfinite(out).all() and not torch.equal(inputs[3], inputs[2])


def test_half_resolution_denoises_the_averaged_image_at_half_the_noise_and_upsamples_bilinearly():
    """PSC.md §6.9: from coarse_sigma up, D(x, s) is up(D(down(x), s / 2)); below it (or with 0) D is untouched."""
    seen = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append((tuple(x.shape), sigma))
        return x * 2

    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    coarse = at_half_resolution(denoise, 0.3)
    assert torch.equal(coarse(x, 0.2), x * 2) and seen[-1] == ((1, 1, 4, 4), 0.2)
    out = coarse(x, 0.3)
    assert seen[-1] == ((1, 1, 2, 2), 0.15)
    small = torch.tensor([[2.5, 4.5], [10.5, 12.5]]) * 2  # 2x2 block means, "denoised"
    # bilinear x2 with half-sample centres: output 0 and 3 clamp to the edge, 1 and 2 mix 3/4 + 1/4
    up = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(out[0, 0].double(), up @ small.double() @ up.T)
    assert at_half_resolution(denoise, 0.0) is denoise


def test_upsampling_gives_the_same_floats_on_any_thread_count():
    """PSC.md §6.9 (format 8): the encoder's and the decoder's thread counts may differ. torch's bilinear CPU
    kernel rounds differently with 1 and 2 threads on a whole photo's half-resolution batch (format 7, kept for
    reading version-7 files); the elementwise form does not, and stays within float rounding of it."""
    small = torch.randn(4, 3, 256, 272, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = upsample_bilinear(small)
        torch.set_num_threads(2)
        two = upsample_bilinear(small)
    finally:
        torch.set_num_threads(threads)
    assert one.shape == (4, 3, 512, 544) and torch.equal(one, two)
    assert torch.allclose(one, upsample_bilinear_v7(small), atol=1e-6, rtol=0)
