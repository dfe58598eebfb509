"""The default prior, FFDNet: a real denoiser, and its CPU speed paths give exactly the plain network's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pillow_psc.priors import ffdnet, load_prior

from conftest import kodak_crop, psnr


@pytest.fixture(scope="module")
def prior():
    return load_prior("ffdnet-color", "cpu")


def test_ffdnet_denoises_a_kodak_crop(prior):
    clean = torch.from_numpy(kodak_crop("kodim23", (96, 96)).copy()).permute(2, 0, 1)[None].float() / 255
    sigma = 25 / 255
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    restored = prior.denoise(noisy, sigma).clamp(0, 1)

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    before, after = psnr(to_uint8(noisy), to_uint8(clean)), psnr(to_uint8(restored), to_uint8(clean))
    assert after > before + 6, (before, after)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cpu_slices_give_the_batched_result_bit_for_bit(prior, precision):
    """Old files must decode as before: slicing a batch (to keep activations off glibc's mmap path) may not change
    a single bit of D(x, sigma)."""
    x = torch.rand(4, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    dtype = torch.float32 if precision == "float32" else torch.bfloat16
    per_slice = ffdnet.CPU_SLICE_BYTES // prior.net.activation_bytes(x, dtype)
    assert 1 <= per_slice < len(x), "the batch must be big enough to be sliced"
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bfloat16"):
        sliced, whole = prior.denoise(x, 0.1), prior.net(x, 0.1)
    assert torch.equal(sliced, whole)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_relu_is_relu(dtype):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(2)).to(dtype)
    x[:3] = torch.tensor([-0.0, 0.0, -torch.inf])
    expected = torch.relu(x)
    ffdnet._relu_(x)
    assert torch.equal(x, expected)
    assert not torch.signbit(x).any(), "zeros come out as +0"
