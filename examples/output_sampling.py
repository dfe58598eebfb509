"""How the output image's sampling (output_samples x output_sampler_steps) changes PSNR, at the same bits.

    python examples/output_sampling.py --images kodim05 kodim19 kodim23 --rates 0.1 --precision bfloat16 --threads 1

The output is sampled after the last step and changes neither the rows nor the measurements, so each photo is
encoded once and its final state decoded with every variant: the header's output fields are replaced, as a file
written with them would say. One JSON line per photo and rate: PSNR of each variant ("8x12": 8 samples of 12
sampler steps, in antithetic pairs as format version 9 draws them; "8x12i": independent ones, as version 8 did;
"4x12@24": samples that stop at the noise level 24/255 instead of the header's mean_sigma_min, so "8x12i@1.5" is
format 8's output and "4x12@1.5" format 9's) and its gain over the first. `--crop N` takes an N x N centre crop.
The "Output sampling", "Antithetic output samples" and "Where the samples stop" sections of
examples/results/RESULTS.md came from this measurement.
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

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def output_psnr(encoded: pillow_psc.codec.Encoded, original: np.ndarray, variant: str) -> float:
    """PSNR of the `mean` output of a variant "SAMPLESxSTEPS[i][@LEVEL]": "i" for independent samples (format
    version 8), "@LEVEL" for samples that stop at LEVEL/255 (as a header's float32 holds it)."""
    shape, _, level = variant.partition("@")
    samples, steps = (int(v) for v in shape.rstrip("i").split("x"))
    state = encoded.state
    header = state.header
    lowest = float(np.float32(float(level) / 255)) if level else header.mean_sigma_min
    state.header = dataclasses.replace(header, output_samples=samples, output_sampler_steps=steps,
                                       version=8 if shape.endswith("i") else header.version, mean_sigma_min=lowest)
    try:
        return psnr(encoded.reconstruct("mean"), original)
    finally:
        state.header = header


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=["kodim05", "kodim19", "kodim23"])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1])
    parser.add_argument("--variants", nargs="+", default=["8x12i@1.5", "4x12@1.5", "4x12"],
                        help="SAMPLESxSTEPS[i][@LEVEL] (i: independent samples, as format version 8; @LEVEL: the "
                             "samples stop at LEVEL/255, not the header's mean_sigma_min); gains against the first")
    parser.add_argument("--effort", type=int, choices=sorted(pillow_psc.codec.EFFORTS),
                        default=pillow_psc.codec.DEFAULT_EFFORT)
    parser.add_argument("--precision", choices=pillow_psc.container.PRECISIONS, default="float32")
    parser.add_argument("--crop", type=int, help="centre crop N x N (default: whole photos)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for rate in args.rates:
        for name in args.images:
            original = load_image(KODAK / f"{name}.png", args.crop)
            config = pillow_psc.CodecConfig(precision=args.precision, effort=args.effort)
            encoded = pillow_psc.encode(original, rate=rate, config=config)
            scores = {variant: round(output_psnr(encoded, original, variant), 3) for variant in args.variants}
            first = scores[args.variants[0]]
            print(json.dumps({"image": name, "rate": rate, "crop": args.crop, "effort": args.effort, "psnr": scores,
                              "gain": {k: round(v - first, 3) for k, v in scores.items()}}), flush=True)


if __name__ == "__main__":
    main()
