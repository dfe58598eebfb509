"""Diffusers priors (pixel UNet2DModel, Stable Diffusion latent), on tiny random models built offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pillow_psc.errors import ModelMismatchError
from pillow_psc.priors import load_prior

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def _pixel_unet(seed: int) -> "diffusers.UNet2DModel":
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))


def _bytes_to_unicode() -> list[str]:
    """The 256 base symbols of CLIP's byte-level BPE (printable bytes as is, the rest shifted past 255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _write_tokenizer(path: Path) -> None:
    chars = _bytes_to_unicode()
    merges = ["p h", "ph o", "t o</w>", "pho to</w>"]
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def _build_sd(root: Path) -> None:
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8).save_pretrained(root / "unet")
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(root / "vae")
    _write_tokenizer(root / "raw_tokenizer")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(root / "raw_tokenizer", model_max_length=77)
    tokenizer.save_pretrained(root / "tokenizer")
    vocab = len(tokenizer)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab,
        max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )).save_pretrained(root / "text_encoder")
    diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        root / "scheduler")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """pipe: pipeline layout; bare: top-level config.json + scheduler_config.json (other weights); sd: SD."""
    root = tmp_path_factory.mktemp("diffusers_models")
    pipe, bare, sd = root / "pipe", root / "bare", root / "sd"
    _pixel_unet(0).save_pretrained(pipe / "unet")
    diffusers.DDPMScheduler().save_pretrained(pipe / "scheduler")
    _pixel_unet(1).save_pretrained(bare)
    diffusers.DDIMScheduler().save_pretrained(bare)
    _build_sd(sd)
    return {"pipe": pipe, "bare": bare, "sd": sd}


def test_pixel_prior_loads_both_layouts(models):
    p = load_prior("diffusers-pixel:" + str(models["pipe"]), "cpu")
    b = load_prior("diffusers-pixel:" + str(models["bare"]), "cpu")
    for prior, key in ((p, "pipe"), (b, "bare")):
        assert prior.id == "diffusers-pixel:" + str(models[key])
        assert (prior.channels, prior.pixel_channels, prior.tile, prior.signal_mean) == (3, 3, 16, 0.0)
        assert 0 < prior.sigma_min < 0.02 and prior.sigma_max == 80.0
        assert len(prior.sha256) == 32
    assert p.sha256 != b.sha256


def test_sha256_stable_and_weight_sensitive(models):
    from pillow_psc.priors.diffusers_pixel import DiffusersPixelPrior

    a = DiffusersPixelPrior(str(models["pipe"]), torch.device("cpu"))
    b = DiffusersPixelPrior(str(models["pipe"]), torch.device("cpu"))
    assert a.sha256 == b.sha256
    with torch.no_grad():
        next(b.unet.parameters()).view(-1)[0] += 1e-3
    b._sha256 = None
    assert a.sha256 != b.sha256


def test_pixel_denoise(models):
    prior = load_prior("diffusers-pixel:" + str(models["pipe"]), "cpu")
    x = prior.to_signal(torch.rand(2, 3, 24, 40, dtype=torch.float64))  # not a multiple of the UNet factor
    for sigma in (prior.sigma_max, 1.0, 0.1):
        out = prior.denoise(x + sigma * torch.randn_like(x), sigma)
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert torch.allclose(prior.denoise(x, 1e-6), x, atol=1e-4)
    assert torch.allclose(prior.to_pixels(x, 20, 30), (x[..., :20, :30] + 1) / 2)


def test_vp_denoiser_prediction_types():
    from pillow_psc.priors.diffusers_pixel import VPDenoiser

    ac = diffusers.DDPMScheduler().alphas_cumprod
    clean, noise, sigma = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), 2.0
    x, c_in = clean + sigma * noise, 1 / (sigma ** 2 + 1) ** 0.5
    v = c_in * noise - sigma * c_in * clean  # sqrt(a) eps - sqrt(1-a) x0
    for kind, target in (("epsilon", noise), ("v_prediction", v), ("sample", clean)):
        vp = VPDenoiser(ac, kind, 1)
        assert torch.allclose(vp(lambda xin, t: target, x, sigma, torch.device("cpu")), clean, atol=1e-5)
    vp = VPDenoiser(ac, "epsilon", 1)
    assert vp.timestep(float(vp.sigmas[10])) == pytest.approx(10)
    assert 10 < vp.timestep(float(vp.sigmas[10:12].mean())) < 11


def test_sd_prior(models):
    prior = load_prior("sd:" + str(models["sd"]), "cpu")
    assert prior.id == "sd:" + str(models["sd"])
    assert (prior.channels, prior.pixel_channels, prior.tile, prior.downscale) == (4, 3, 4, 8)
    assert len(prior.sha256) == 32
    signal = prior.to_signal(torch.rand(1, 3, 37, 21))
    assert signal.shape == (1, 4, 5, 3)
    pixels = prior.to_pixels(signal, 37, 21)
    assert pixels.shape == (1, 3, 37, 21) and pixels.min() >= 0 and pixels.max() <= 1
    x = torch.randn(2, 4, 5, 3)
    a, b = prior.denoiser("a photo")(x, 1.0), prior.denoiser("a cat")(x, 1.0)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert not torch.allclose(a, b)
    assert torch.equal(prior.denoise(x, 1.0), prior.denoiser("")(x, 1.0))


# --- codec round trips (need pillow_psc.codec) ---

def _kodak_dir() -> Path:
    here = Path(__file__).resolve()
    for base in (here.parents[1].parent, here.parents[1]):
        path = base / "shared" / "data" / "kodak"
        if path.is_dir():
            return path
    pytest.skip("Kodak images not found (expected ../shared/data/kodak beside the repo)")


def _crop() -> np.ndarray:
    from PIL import Image

    with Image.open(_kodak_dir() / "kodim23.png") as im:
        return np.asarray(im.convert("RGB"))[200:232, 300:332].copy()


@pytest.mark.parametrize("kind", ["pipe", "sd"])
def test_codec_round_trip(models, kind):
    from pillow_psc import codec

    model = ("sd:" if kind == "sd" else "diffusers-pixel:") + str(models[kind])
    pixels = _crop()
    config = codec.CodecConfig(samples=3, sampler_steps=2, output_samples=2)
    data = codec.encode_array(pixels, max_bytes=400, model=model, prompt="a photo" if kind == "sd" else "",
                              config=config, device="cpu")
    assert len(data) <= 400
    first = codec.decode_array(data, device="cpu")
    second = codec.decode_array(data, device="cpu")
    assert first.pixels.shape == pixels.shape and first.pixels.dtype == np.uint8
    assert np.array_equal(first.pixels, second.pixels)
    with pytest.raises(ModelMismatchError):
        codec.decode_array(data, model="diffusers-pixel:" + str(models["bare"]), device="cpu")
