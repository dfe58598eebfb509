"""Priors behind one denoiser interface, and `load_prior`, which builds one from the id stored in a file.

Model ids:
  ``ffdnet`` (default; picks ``ffdnet-color`` or ``ffdnet-gray`` by the image), ``ffdnet-color``, ``ffdnet-gray``
  ``diffusers-pixel:<hub id or local dir>``  a diffusers UNet2DModel + scheduler (pixel space)
  ``sd:<hub id or local dir>``               a Stable Diffusion pipeline (Latent-PSC, text prompt)
"""

from __future__ import annotations

import threading

import torch

from .base import Prior, at_precision, resolve_device

__all__ = ["Prior", "at_precision", "load_prior", "resolve_device", "DEFAULT_MODEL"]

DEFAULT_MODEL = "ffdnet"
_cache: dict[tuple[str, str], Prior] = {}
_lock = threading.Lock()


def canonical_model_id(model: str | None, channels: int) -> str:
    """Resolve the shorthand ``ffdnet`` to the variant matching the image's colour channels."""
    model = model or DEFAULT_MODEL
    if model == "ffdnet":
        return "ffdnet-color" if channels == 3 else "ffdnet-gray"
    return model


def load_prior(model_id: str, device: str | torch.device | None = "auto") -> Prior:
    """Build (once per process and device) the prior named by a canonical model id."""
    dev = resolve_device(device)
    key = (model_id, str(dev))
    with _lock:
        if key not in _cache:
            _cache[key] = _build(model_id, dev)
        return _cache[key]


def _build(model_id: str, device: torch.device) -> Prior:
    kind, _, source = model_id.partition(":")
    if model_id in ("ffdnet-color", "ffdnet-gray"):
        from .ffdnet import FFDNetPrior
        return FFDNetPrior(3 if model_id == "ffdnet-color" else 1, device)
    if kind == "diffusers-pixel" and source:
        from .diffusers_pixel import DiffusersPixelPrior
        return DiffusersPixelPrior(source, device)
    if kind == "sd" and source:
        from .sd_latent import StableDiffusionPrior
        return StableDiffusionPrior(source, device)
    raise ValueError(f"unknown model id {model_id!r} (expected ffdnet, ffdnet-color, ffdnet-gray, "
                     "diffusers-pixel:<id or dir> or sd:<id or dir>)")
