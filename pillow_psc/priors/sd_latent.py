"""Latent-PSC (paper section 4): a Stable Diffusion pipeline as a prior on its VAE latent, text-conditioned.

The codec measures the (scaled) VAE latent; the UNet, conditioned on the file's prompt, is the denoiser and the
VAE decoder turns the decoded latent back into pixels.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import PSCError
from .base import Prior
from .diffusers_pixel import LOAD_KWARGS, VPDenoiser, schedule_alphas_cumprod

_MAX_CACHED_PROMPTS = 8


class StableDiffusionPrior(Prior):
    """Signal = VAE posterior mean * scaling_factor: 4 channels at 1/8 of the pixel resolution."""

    pixel_channels = 3
    signal_mean = 0.0
    tile = 4
    sampler_steps = 10

    def __init__(self, source: str, device: torch.device):
        super().__init__(device)
        self.id = "sd:" + source
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            self.vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **LOAD_KWARGS)
            self.unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **LOAD_KWARGS)
            self.text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=torch.float32)
            self.tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            alphas_cumprod, prediction_type = schedule_alphas_cumprod(source, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise PSCError(f"cannot load a Stable Diffusion pipeline from {source!r}: {exc}") from exc
        for m in (self.vae, self.unet, self.text_encoder):
            m.to(device).eval()
        self.channels = self.vae.config.latent_channels
        self.downscale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.vp = VPDenoiser(alphas_cumprod, prediction_type, 2 ** (len(self.unet.config.down_block_types) - 1))
        self.sigma_min = float(self.vp.sigmas.min())
        self.sigma_max = float(min(self.vp.sigmas.max(), 80.0))
        self._embeddings: dict[str, torch.Tensor] = {}

    @property
    def _scale_shift(self) -> tuple[float, float]:
        cfg = self.vae.config
        return float(cfg.scaling_factor), float(getattr(cfg, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def to_signal(self, pixels: torch.Tensor) -> torch.Tensor:
        """Edge-replicate to a multiple of `downscale`, then the deterministic (mean) VAE latent."""
        h, w = pixels.shape[-2:]
        x = pixels.to(device=self.device, dtype=torch.float32) * 2 - 1
        x = F.pad(x, (0, -w % self.downscale, 0, -h % self.downscale), mode="replicate")
        scale, shift = self._scale_shift
        latent = (self.vae.encode(x).latent_dist.mean - shift) * scale
        return latent.to(device=pixels.device, dtype=pixels.dtype)

    @torch.no_grad()
    def to_pixels(self, signal: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # One decode call: fine for moderate sizes, memory-hungry for very large latents.
        scale, shift = self._scale_shift
        z = signal.to(device=self.device, dtype=torch.float32) / scale + shift
        x = self.vae.decode(z).sample[..., :height, :width]
        return ((x + 1) / 2).clamp(0, 1).to(device=signal.device, dtype=signal.dtype)

    @torch.no_grad()
    def _embed(self, prompt: str) -> torch.Tensor:
        """(1, tokens, dim) CLIP embedding of the prompt, cached because every sampler call needs it."""
        if prompt not in self._embeddings:
            if len(self._embeddings) >= _MAX_CACHED_PROMPTS:
                self._embeddings.clear()
            ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            self._embeddings[prompt] = self.text_encoder(ids).last_hidden_state
        return self._embeddings[prompt]

    def denoiser(self, prompt: str = "") -> Callable[[torch.Tensor, float], torch.Tensor]:
        context = self._embed(prompt)

        @torch.no_grad()
        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            def net(xin: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                states = context.expand(xin.shape[0], -1, -1)
                return self.unet(xin, t, encoder_hidden_states=states).sample
            return self.vp(net, x, sigma, self.device)

        return denoise

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.denoiser("")(x, sigma)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
