"""A diffusers pixel-space diffusion model (UNet2DModel + scheduler, e.g. google/ddpm-cifar10-32) as a prior.

Diffusers models are discrete-time variance-preserving (VP) networks; the codec wants a variance-exploding
denoiser D(x, sigma). :class:`VPDenoiser` does the conversion the way k-diffusion's Discrete*DDPMDenoiser
does, and is shared with the Stable Diffusion prior.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PSCError
from .base import Prior

#: net(x_in, t) -> raw network output, for an input already scaled to the VP convention.
Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: from_pretrained options for diffusers models: float32, and low_cpu_mem_usage off explicitly, which is what
#: diffusers falls back to without `accelerate` anyway, minus its warning on every load.
LOAD_KWARGS = {"torch_dtype": torch.float32, "low_cpu_mem_usage": False}


class VPDenoiser:
    """D(x, sigma) for a discrete-time VP network trained on the schedule `alphas_cumprod`.

    x = clean + sigma * noise (VE) equals x_t / sqrt(alphas_cumprod[t]) (VP) when
    sigma = sqrt((1 - a_t) / a_t), so the network sees x * c_in with c_in = 1 / sqrt(sigma^2 + 1).
    A sigma between two schedule entries maps to a *fractional* timestep, linearly interpolated in
    log sigma (k-diffusion's sigma_to_t): smooth in sigma, and diffusers' timestep embeddings accept floats.
    Inputs are replicate-padded to a multiple of `multiple` (the UNet's total downsampling) and cropped back.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, multiple: int):
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r} (expected one of {_PREDICTION_TYPES})")
        ac = alphas_cumprod.detach().double().cpu()
        self.sigmas = ((1 - ac) / ac).sqrt()
        self._log_sigmas = self.sigmas.log().numpy()
        self.prediction_type = prediction_type
        self.multiple = multiple

    def timestep(self, sigma: float) -> float:
        """Fractional timestep whose schedule sigma is `sigma` (clamped to the schedule's range)."""
        return float(np.interp(np.log(sigma), self._log_sigmas, np.arange(len(self._log_sigmas))))

    def __call__(self, net: Net, x: torch.Tensor, sigma: float, device: torch.device) -> torch.Tensor:
        sigma = float(sigma)
        h, w = x.shape[-2:]
        xin = x.to(device=device, dtype=torch.float32)
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            xin = F.pad(xin, (0, pad_w, 0, pad_h), mode="replicate")
        c_in = 1.0 / (sigma * sigma + 1.0) ** 0.5
        t = torch.full((xin.shape[0],), self.timestep(sigma), dtype=torch.float32, device=device)
        out = net(xin * c_in, t)[:, : x.shape[1], :h, :w]  # drop learned-variance channels and padding
        out = out.to(device=x.device, dtype=x.dtype)
        if self.prediction_type == "epsilon":
            return x - sigma * out
        if self.prediction_type == "v_prediction":  # x0 = c_skip * x + c_out * v
            return x / (sigma * sigma + 1.0) - out * (sigma * c_in)
        return out


def schedule_alphas_cumprod(source: str, **kwargs) -> tuple[torch.Tensor, str]:
    """alphas_cumprod and prediction_type of any diffusers scheduler config (read through DDPMScheduler,
    which understands the shared beta_* keys, so DDIM/PNDM/Euler configs work too)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(source, **kwargs)
    return scheduler.alphas_cumprod, scheduler.config.prediction_type


def _load_pixel(source: str):
    from diffusers import UNet2DModel

    errors = []
    for kwargs in ({"subfolder": "unet"}, {}):  # pipeline layout first, then a bare model directory
        try:
            unet = UNet2DModel.from_pretrained(source, **LOAD_KWARGS, **kwargs)
            sched_kwargs = {"subfolder": "scheduler"} if kwargs else {}
            return unet, *schedule_alphas_cumprod(source, **sched_kwargs)
        except (OSError, ValueError) as exc:
            errors.append(f"{kwargs or 'top level'}: {exc}")
    raise PSCError(f"cannot load a diffusers UNet2DModel + scheduler from {source!r}: " + "; ".join(errors))


class DiffusersPixelPrior(Prior):
    """Signal = pixels mapped to [-1, 1], the range diffusers pixel models are trained on."""

    signal_mean = 0.0
    sampler_steps = 10

    def __init__(self, source: str, device: torch.device):
        super().__init__(device)
        self.id = "diffusers-pixel:" + source
        unet, alphas_cumprod, prediction_type = _load_pixel(source)
        if unet.config.in_channels not in (1, 3):
            raise ValueError(f"{source!r}: UNet has {unet.config.in_channels} input channels; only 1 or 3 supported")
        if unet.config.num_class_embeds is not None or unet.config.class_embed_type is not None:
            raise ValueError(f"{source!r}: class-conditional UNets are not supported")
        self.unet = unet.to(device).eval()
        self.channels = self.pixel_channels = unet.config.in_channels
        multiple = 2 ** (len(unet.config.down_block_types) - 1)
        self.tile = max(16, multiple)  # both powers of two, so a multiple of the UNet's downsampling
        self.vp = VPDenoiser(alphas_cumprod, prediction_type, multiple)
        self.sigma_min = float(self.vp.sigmas.min())
        self.sigma_max = float(min(self.vp.sigmas.max(), 80.0))

    def to_signal(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels * 2 - 1

    def to_pixels(self, signal: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return ((signal[..., :height, :width] + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.vp(lambda xin, t: self.unet(xin, t).sample, x, sigma, self.device)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}
