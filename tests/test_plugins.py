"""Pillow and imageio glue: registration, header-only open, save keywords, metadata, mode rules."""

from __future__ import annotations

import io

import imageio
import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import pillow_psc
from pillow_psc.container import read_file

from conftest import FAST, kodak_crop, psnr


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(kodak_crop("kodim23", (48, 40)))


@pytest.fixture(scope="module")
def psc_path(tmp_path_factory, photo):
    path = tmp_path_factory.mktemp("psc") / "photo.psc"
    exif = Image.Exif()
    exif[0x010E] = "pillow-psc test"  # ImageDescription
    photo.save(path, rate=2.0, seed=3, config=FAST, exif=exif, icc_profile=b"fake-icc")
    return path


def test_registration():
    assert Image.registered_extensions()[".psc"] == "PSC"
    assert Image.MIME["PSC"] == "image/x-psc"


def test_open_reads_header_only_then_load_decodes(psc_path, photo):
    with Image.open(psc_path) as im:
        assert (im.format, im.mode, im.size) == ("PSC", "RGB", photo.size)
        assert im.info["steps_decoded"] == 0 and im.info["steps"] >= 2 and im.info["truncated"] is False
        assert im.info["model"] == "ffdnet-color" and im.info["seed"] == 3 and len(im.info["model_sha256"]) == 64
        assert im.info["precision"] == "float32"
        assert im.info["icc_profile"] == b"fake-icc" and im.getexif()[0x010E] == "pillow-psc test"
        im.load()
        assert im.info["steps_decoded"] == im.info["steps"]
        assert psnr(np.asarray(im), np.asarray(photo)) > 22


def test_decode_options_select_mode_and_steps(psc_path):
    previous = pillow_psc.set_decode_options(mode="sample", steps=1)
    try:
        with Image.open(psc_path) as im:
            im.load()
            assert im.info["steps_decoded"] == 1
    finally:
        pillow_psc.set_decode_options(**previous.__dict__)
    with pytest.raises(ValueError):
        pillow_psc.set_decode_options(mode="best")
    with pytest.raises(TypeError):
        pillow_psc.set_decode_options(quality=3)


def test_non_psc_bytes_are_unidentified():
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), formats=["PSC"])


def test_save_effort_keyword(photo):
    """save(effort=1) encodes with effort 1 (6 samples at this rate, two thirds of FFDNet's 6 sampler steps), also
    over a config."""
    small = photo.crop((0, 0, 16, 16))
    for extra in ({}, {"config": FAST}):
        buf = io.BytesIO()
        small.save(buf, format="PSC", max_bytes=200, effort=1, **extra)
        header = read_file(buf.getvalue()).header
        assert (header.samples, header.sampler_steps) == ((6, 4) if not extra else (FAST.samples, FAST.sampler_steps))


def test_failed_save_leaves_no_file(tmp_path, photo):
    target = tmp_path / "tiny.psc"
    with pytest.raises(pillow_psc.BudgetError):
        photo.save(target, max_bytes=50)
    assert not target.exists()


@pytest.mark.parametrize("mode,expected", [("1", "L"), ("P", "RGB"), ("I;16", "L"), ("CMYK", "RGB"), ("LA", "LA"),
                                           ("RGBA", "RGBA"), ("F", "L")])
def test_mode_rules(photo, mode, expected):
    im = photo.convert(mode) if mode != "I;16" else photo.convert("L").convert("I;16")
    buf = io.BytesIO()
    im.save(buf, format="PSC", rate=4.0, config=FAST)
    assert read_file(buf.getvalue()).header.mode == expected
    assert Image.open(io.BytesIO(buf.getvalue())).mode == expected


def test_unsupported_mode_is_a_clear_error():
    class YCbCrKImage:
        mode = "YCbCrK"
    with pytest.raises(OSError, match="cannot write mode YCbCrK"):
        pillow_psc.pillow_plugin.codable_image(YCbCrKImage())


def test_imageio_v2_and_v3(psc_path, tmp_path, photo):
    arr = np.asarray(photo)
    assert iio.imread(psc_path).shape == arr.shape
    assert iio2.imread(psc_path).shape == arr.shape
    assert imageio.imread(psc_path, format="psc").shape == arr.shape
    out = tmp_path / "b.psc"
    iio.imwrite(out, arr, rate=1.0, config=FAST)
    assert out.read_bytes()[:4] == b"\x89PSC"
    data = iio.imwrite("<bytes>", arr, extension=".psc", rate=1.0, config=FAST)
    assert data[:4] == b"\x89PSC" and len(data) * 8 <= 1.0 * arr.shape[0] * arr.shape[1]
    assert iio.imread(data, extension=".psc").shape == arr.shape
