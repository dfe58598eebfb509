"""How the output image's sampling (output_samples x output_sampler_steps) changes PSNR, at the same bits.

    python examples/output_sampling.py --images kodim05 kodim19 kodim23 --rates 0.1 --precision bfloat16 --threads 1

The output is sampled after the last step and changes neither the rows nor the measurements, so each photo is
encoded once and its final state decoded with every variant: the header's output fields are replaced, as a file
written with them would say. One JSON line per photo and rate: PSNR of each variant ("8x12": 8 samples of 12
sampler steps) and its gain over the first. `--crop N` takes an N x N centre crop. The "Output sampling"
table of examples/results/RESULTS.md came from this measurement (whole photos, and 320 px crops).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

import pillow_psc
from pillow_psc.bench import load_image, psnr
from pillow_psc.samplers import karras_sigmas

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def output_psnr(encoded: pillow_psc.codec.Encoded, original: np.ndarray, samples: int, steps: int) -> float:
    """PSNR of the `mean` output with `samples` output samples of `steps` sampler steps."""
    state = encoded.state
    header, sigmas = state.header, state.output_sigmas
    state.header = dataclasses.replace(header, output_samples=samples, output_sampler_steps=steps)
    state.output_sigmas = karras_sigmas(steps, header.sigma_max, header.sigma_min)
    try:
        return psnr(encoded.reconstruct("mean"), original)
    finally:
        state.header, state.output_sigmas = header, sigmas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=["kodim05", "kodim19", "kodim23"])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1])
    parser.add_argument("--variants", nargs="+", default=["4x6", "8x12", "4x12", "4x24", "8x24"],
                        help="SAMPLESxSTEPS; gains are against the first")
    parser.add_argument("--precision", choices=pillow_psc.container.PRECISIONS, default="float32")
    parser.add_argument("--crop", type=int, help="centre crop N x N (default: whole photos)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [tuple(int(v) for v in name.split("x")) for name in args.variants]
    for rate in args.rates:
        for name in args.images:
            original = load_image(KODAK / f"{name}.png", args.crop)
            encoded = pillow_psc.encode(original, rate=rate, config=pillow_psc.CodecConfig(precision=args.precision))
            scores = {f"{n}x{s}": round(output_psnr(encoded, original, n, s), 3) for n, s in variants}
            first = scores[args.variants[0]]
            print(json.dumps({"image": name, "rate": rate, "crop": args.crop, "psnr": scores,
                              "gain": {k: round(v - first, 3) for k, v in scores.items()}}), flush=True)


if __name__ == "__main__":
    main()
