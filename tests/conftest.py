"""Shared fixtures: real Kodak photographs (../shared/data/kodak) and a fast codec configuration."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_psc

REPO = Path(__file__).resolve().parents[1]


def kodak_dir() -> Path:
    """The Kodak set: $PSC_KODAK, else ../shared/data/kodak beside the repository."""
    return Path(os.environ.get("PSC_KODAK", REPO.parent / "shared" / "data" / "kodak"))


def kodak_crop(name: str = "kodim23", size: tuple[int, int] = (128, 128), mode: str = "RGB") -> np.ndarray:
    """Centre crop (width, height) of a Kodak photo as uint8 pixels."""
    with Image.open(kodak_dir() / f"{name}.png") as im:
        w, h = im.size
        left, top = (w - size[0]) // 2, (h - size[1]) // 2
        return np.asarray(im.convert(mode).crop((left, top, left + size[0], top + size[1])))


#: Few samples and sampler steps: the codec is the same, only cheaper (used by most tests).
# full resolution and 4 rows per tile per step: the settings the vectors were written with (PSC.md §16)
FAST = pillow_psc.CodecConfig(samples=4, sampler_steps=3, output_samples=2, coarse_sigma=0.0, rows_per_step=(4.0,))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-vectors", action="store_true",
                     help="rewrite format_spec/vectors (files and expected.json) instead of checking them")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests run tiny images: one intra-op thread gives identical results and, on a busy 2-core machine, avoids
    ~100x slowdowns (every small op waiting at a barrier for a descheduled peer thread)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def regen_vectors(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-vectors"))
