"""Compress a real photo at several rates and write the decodes side by side.

    python examples/progressive.py ../shared/data/kodak/kodim23.png --rates 0.1 0.25 --crop 256 --out out/

Writes one .psc per rate, a strip `<name>_rates.png` (original | decode at each rate, with bpp and PSNR), and a
strip `<name>_progressive.png` with the decode after every step of the highest-rate file (any prefix of a .psc
decodes, so these are just truncations of the same file).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import pillow_psc


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def labelled(pixels: np.ndarray, text: str) -> Image.Image:
    im = Image.fromarray(pixels).convert("RGB")
    ImageDraw.Draw(im).text((4, 4), text, fill=(255, 255, 0))
    return im


def strip(images: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(i.width for i in images) + 4 * (len(images) - 1), images[0].height), "white")
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + 4
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.25])
    parser.add_argument("--crop", type=int, default=256, help="centre crop size (0: whole photo)")
    parser.add_argument("--out", default="examples/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    im = Image.open(args.photo).convert("RGB")
    if args.crop:
        left, top = (im.width - args.crop) // 2, (im.height - args.crop) // 2
        im = im.crop((left, top, left + args.crop, top + args.crop))
    original = np.asarray(im)
    name = Path(args.photo).stem
    tiles = [labelled(original, "original")]
    for rate in args.rates:
        path = out / f"{name}_{rate:g}.psc"
        im.save(path, rate=rate, progress=True)
        decoded = np.asarray(Image.open(path))
        bpp = path.stat().st_size * 8 / original.shape[0] / original.shape[1]
        print(f"{path}: {bpp:.3f} bpp, PSNR {psnr(decoded, original):.2f} dB")
        tiles.append(labelled(decoded, f"{bpp:.3f} bpp  {psnr(decoded, original):.1f} dB"))
    strip(tiles).save(out / f"{name}_rates.png")
    data = path.read_bytes()
    steps = pillow_psc.decode_array(data).steps_present
    progressive = [labelled(original, "original")]
    for k in range(1, steps + 1):
        decoded = pillow_psc.decode_array(data, steps=k).pixels
        progressive.append(labelled(decoded, f"step {k}: {psnr(decoded, original):.1f} dB"))
    strip(progressive).save(out / f"{name}_progressive.png")
    print(f"wrote {out / f'{name}_rates.png'} and {out / f'{name}_progressive.png'}")


if __name__ == "__main__":
    main()
