"""Posterior samplers over a denoiser D(x, sigma); they know nothing about which prior drives them.

Measurement consistency enters through `project`, which maps a clean estimate onto {x : Hx = y}
(x0 <- x0 + H^T (y - H x0) for orthonormal rows, as in DDNM/DDRM).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def karras_sigmas(n: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """Noise levels of Karras et al. (2022), from sigma_max down to sigma_min, n of them."""
    if n == 1:
        return [float(sigma_min)]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float((hi + i / (n - 1) * (lo - hi)) ** rho) for i in range(n)]


def _double_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Twice the length along `dim`: output 2i+0 is 0.75 x[i] + 0.25 x[i-1], 2i+1 is 0.75 x[i] + 0.25 x[i+1],
    with the ends repeated. Elementwise on purpose: the same floats on any thread count (PSC.md §6.9)."""
    n = x.shape[dim]
    before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    after = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    return torch.stack([0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after], dim + 1).flatten(dim, dim + 1)


def upsample_bilinear(x: torch.Tensor) -> torch.Tensor:
    """2x bilinear upsampling of (N, C, H, W) with half-pixel centres, rows first, then columns."""
    return _double_axis(_double_axis(x, 2), 3)


def upsample_bilinear_v7(x: torch.Tensor) -> torch.Tensor:
    """Format version 7's upsampling: torch's kernel, whose CPU rounding depends on the thread count."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def at_half_resolution(denoise: Denoiser, coarse_sigma: float,
                       upsample: Callable[[torch.Tensor], torch.Tensor] = upsample_bilinear) -> Denoiser:
    """D(x, sigma), but from `coarse_sigma` up on the 2x2-averaged x (whose noise is sigma / 2), upsampled bilinearly.

    A quarter of the work where the clean estimate is smooth anyway; it also brings noise levels above a
    denoiser's training range back into it (priors/ffdnet.py). 0: never.
    """
    if coarse_sigma <= 0:
        return denoise

    def coarse(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma < coarse_sigma:
            return denoise(x, sigma)
        return upsample(denoise(F.avg_pool2d(x, 2), sigma / 2))

    return coarse


def sample_projected(denoise: Denoiser, project: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                     sigmas: list[float], noise: Callable[[int], torch.Tensor], eta: float = 1.0,
                     extrapolation: float = 0.0) -> torch.Tensor:
    """Ancestral sampling with the clean estimate projected onto the measurements at every step.

    `start` is a measurement-consistent initial guess (batch of samples); `noise(i)` returns fresh standard
    normal noise shaped like `start` for iteration i. eta=1 re-noises with fresh noise only (DDPM-like),
    eta=0 reuses the predicted noise (DDIM-like). `extrapolation` c > 0 re-noises from x0_i + c (h_i / h_(i-1))
    (x0_i - x0_(i-1)) instead of x0_i, with h_i = log(sigma_i / sigma_(i+1)): the second-order multistep term
    of DPM-Solver++(2M) (c = 1/2), which recovers some of the detail that a few large steps leave out; the
    difference of two projected estimates keeps the measurements. Returns the final projected clean estimate.
    """
    x = start + sigmas[0] * noise(0)
    previous, h_previous = None, 0.0
    for i, sigma in enumerate(sigmas):
        x0 = project(denoise(x, sigma))
        if i == len(sigmas) - 1:
            return x0
        eps = (x - x0) / sigma
        h = math.log(sigma / sigmas[i + 1])
        target = x0
        if extrapolation > 0 and previous is not None and h_previous > 0:
            target = x0 + extrapolation * (h / h_previous) * (x0 - previous)
        fresh = noise(i + 1)
        x = target + sigmas[i + 1] * (eta * fresh + math.sqrt(max(0.0, 1 - eta * eta)) * eps)
        previous, h_previous = x0, h
    raise ValueError("sigmas must not be empty")
