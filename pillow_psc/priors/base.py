"""The one interface every prior implements: a denoiser D(x, sigma) on a "signal" space.

The codec and the samplers only see this interface. A prior maps pixels in [0, 1] to its signal space (identity
for FFDNet, [-1, 1] for diffusers pixel models, the VAE latent for Stable Diffusion) and back, and denoises
x = clean + sigma * noise in that space (variance-exploding convention, as in k-diffusion).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Callable

import torch


class Prior(ABC):
    """A pretrained natural-image prior, wrapped as a denoiser. Subclasses set the class attributes."""

    #: Stored in the file; `load_prior(prior_id)` must rebuild the same model from it.
    id: str
    #: Channels of the signal space the codec measures (3 for RGB pixels, 4 for an SD latent).
    channels: int
    #: Pixel channels the prior models (1 or 3); other images are converted to this and back.
    pixel_channels: int
    #: Value the codec predicts for an unmeasured signal entry.
    signal_mean: float = 0.0
    #: Defaults the encoder writes into the header.
    tile: int = 16
    sigma_max: float = 1.0
    #: The lowest noise level of the prior's own schedule (the paper's sampler runs down to it).
    sigma_min: float = 0.01
    sampler_steps: int = 6
    #: Where the encoder's samples stop by default (codec.auto_stop_sigma): the steps' and the `sample` output's
    #: (header sigma_min) and the `mean` output's (mean_sigma_min, PSC.md §6.12); None: sigma_min.
    stop_sigma: float | None = None
    #: Noise level from which efforts with `coarse` set denoise at half resolution (samplers.at_half_resolution);
    #: 0: never.
    coarse_sigma: float = 0.0
    #: Pixels per signal sample along each axis (8 for an SD latent).
    downscale: int = 1
    #: The tile side must be a multiple of this (FFDNet works on 2x2 pixel blocks).
    tile_multiple: int = 1

    def __init__(self, device: torch.device):
        self.device = device
        self._sha256: bytes | None = None

    @abstractmethod
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x, sigma): estimate of the clean signal from x = clean + sigma * noise. x is (N, channels, h, w)."""

    def denoiser(self, prompt: str = "") -> Callable[[torch.Tensor, float], torch.Tensor]:
        """D(x, sigma) conditioned on the file's prompt; priors without text conditioning ignore it."""
        return self.denoise

    def to_signal(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, pixel_channels, H, W) in [0, 1] -> (1, channels, ceil(H/downscale), ceil(W/downscale))."""
        return pixels

    def to_pixels(self, signal: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Inverse of :meth:`to_signal`, cropped to (height, width), clamped to [0, 1]."""
        return signal[..., :height, :width].clamp(0, 1)

    @abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks whose weights define the prior (hashed into the file)."""

    @property
    def sha256(self) -> bytes:
        """SHA-256 over every weight tensor (name, dtype, shape, bytes), in sorted order."""
        if self._sha256 is None:
            h = hashlib.sha256()
            for prefix, module in sorted(self.modules().items()):
                state = module.state_dict()
                for name in sorted(state):
                    t = state[name].detach().to("cpu").contiguous()
                    h.update(f"{prefix}.{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._sha256 = h.digest()
        return self._sha256


def at_precision(denoise: Callable[[torch.Tensor, float], torch.Tensor],
                 precision: str) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """D(x, sigma) run in the file's `precision`: "float32" as is, "bfloat16" under autocast.

    bfloat16 is about 3.6x faster on a CPU with AMX (and fast on GPUs), but its rounding depends on the kernels: a
    decoder on other bfloat16 hardware drifts from the encoder and stops at the last verified step (PSC.md §11).
    """
    if precision == "float32":
        return denoise
    if precision != "bfloat16":
        raise ValueError(f"precision must be 'float32' or 'bfloat16', not {precision!r}")

    def reduced(x: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return denoise(x, sigma).float()

    return reduced


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" (or None) picks CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
