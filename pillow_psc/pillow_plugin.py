"""Pillow glue: `Image.open` reads only the header; pixels are decoded in `load()`; `save` encodes.

Mode rules on save: L, RGB, LA and RGBA are coded natively (alpha losslessly); 1 -> L; P/PA -> RGBA when the
palette carries transparency, else RGB; I;16*, I and F -> L (values clipped to 0..255 as Pillow's convert("L")
does); La -> LA, RGBa -> RGBA; RGBX, CMYK, YCbCr, LAB, HSV -> RGB. Any other mode raises OSError.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageFile

from . import codec
from .container import SIGNATURE, count_data_chunks, read_file
from .errors import NotPSCError
from .options import get_decode_options

_TO_RGB = {"RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_TO_L = {"1", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _accept(prefix: bytes) -> bool:
    return prefix[:8] == SIGNATURE


class PscImageFile(ImageFile.ImageFile):
    format = "PSC"
    format_description = "Posterior-Sampling-based Compression"

    def _open(self) -> None:
        try:
            psc = read_file(self.fp, header_only=True)
        except NotPSCError as exc:
            raise SyntaxError(str(exc)) from exc
        header = psc.header
        self.fp.seek(len(SIGNATURE))
        steps, complete = count_data_chunks(self.fp)
        self._size = (header.width, header.height)
        self._mode = header.mode
        self.info.update(psc.metadata)
        self.info.update({
            "model": header.prior_id, "model_sha256": header.model_sha256.hex(), "seed": header.seed,
            "prompt": header.prompt, "precision": header.precision, "steps": steps, "steps_decoded": 0,
            "truncated": not complete,
        })
        self.tile = []

    def load(self):
        if self._im is None or self.info.get("steps_decoded") == 0:
            opts = get_decode_options()
            self.fp.seek(0)
            decoded = codec.decode_array(self.fp.read(), mode=opts.mode, steps=opts.steps, device=opts.device,
                                         strict=opts.strict)
            self.load_prepare()
            self.frombytes(np.ascontiguousarray(decoded.pixels).tobytes())
            self.info["steps_decoded"] = decoded.steps_decoded
            if decoded.desync_step is not None:
                self.info["desync_step"] = decoded.desync_step
            if self._exclusive_fp and self.fp:
                self.fp.close()
            self.fp = None
        return Image.Image.load(self)


def codable_image(im: Image.Image) -> Image.Image:
    """Convert an image to L, LA, RGB or RGBA by the module's documented mode rules."""
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    if mode in _TO_L:
        return im.convert("L")
    if mode in _TO_RGB:
        return im.convert("RGB")
    if mode == "La":
        return im.convert("LA")
    if mode == "RGBa":
        return im.convert("RGBA")
    raise OSError(f"cannot write mode {mode} as PSC")


def _metadata(im: Image.Image, info: dict) -> dict[str, bytes]:
    out = {}
    for key in ("icc_profile", "exif", "xmp"):
        value = info.get(key, im.info.get(key))
        if isinstance(value, Image.Exif):
            value = value.tobytes()
        if isinstance(value, str):
            value = value.encode("utf-8")
        if value:
            out[key] = bytes(value)
    return out


def _save(im: Image.Image, fp, filename) -> None:
    info = im.encoderinfo
    pixels = np.asarray(codable_image(im))
    config = info.get("config")
    if "effort" in info:
        config = dataclasses.replace(config or codec.CodecConfig(), effort=info["effort"])
    data = codec.encode_array(
        pixels, rate=info.get("rate"), max_bytes=info.get("max_bytes"), model=info.get("model"),
        prompt=info.get("prompt", ""), seed=int(info.get("seed", 0)), device=info.get("device", "auto"),
        config=config, metadata=_metadata(im, info), progress=bool(info.get("progress", False)))
    fp.write(data)


def register() -> None:
    Image.register_open(PscImageFile.format, PscImageFile, _accept)
    Image.register_save(PscImageFile.format, _save)
    Image.register_extensions(PscImageFile.format, [".psc"])
    Image.register_mime(PscImageFile.format, "image/x-psc")


def open_bytes(data: bytes) -> Image.Image:
    """Open .psc bytes with Pillow (convenience for tests and tools)."""
    return Image.open(io.BytesIO(data), formats=[PscImageFile.format])
