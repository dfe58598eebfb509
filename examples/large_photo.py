"""Encode and decode one large photo (12 MP by default) and report peak memory and time of each side.

    nice -n 5 python examples/large_photo.py                      # 4000x3000 from kodim23, 0.1 bpp, defaults
    nice -n 5 python examples/large_photo.py kodim05.png --size 2000x1500 --samples 4 --sampler-steps 3

The photo is a Kodak image from ../shared/data/kodak (a name there, or a path) upscaled with Lanczos to --size.
The encode and the decode each run in their own Python subprocess, so each peak RSS belongs to one side only:
`VmHWM` from /proc/self/status and `ru_maxrss` from getrusage, both read by that subprocess when it finishes
(they include the interpreter, torch and the prior). Seconds are the wall time of the `pillow_psc.encode` /
`pillow_psc.decode_array` call (loading the prior included, interpreter start-up not). Also printed: file size
and bpp, steps, PSNR of the decode against the upscaled original, and denoiser evaluations (one window sample
through the network each). Files go to --out: the .psc, and the upscaled original and the decode as .npy.
Cost grows with the pixel count: on a 2-core CPU a 12 MP round trip with the defaults takes hours.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def peak_rss() -> dict[str, float]:
    """This process's peak resident set size in GiB: VmHWM (kernel high-water mark) and ru_maxrss."""
    status = Path("/proc/self/status").read_text()
    hwm_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"vmhwm_gib": hwm_kib / 2 ** 20, "ru_maxrss_gib": maxrss_kib / 2 ** 20}


def run_phase(args: argparse.Namespace) -> dict[str, float | int | None]:
    """Body of one subprocess: encode original.npy to photo.psc, or decode photo.psc to decoded.npy."""
    import torch

    import pillow_psc

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.phase == "encode":
        pixels = np.load(out / "original.npy")
        config = pillow_psc.CodecConfig(samples=args.samples, sampler_steps=args.sampler_steps, delta=args.delta)
        start = time.perf_counter()
        result = pillow_psc.encode(pixels, rate=args.rate, config=config, device=args.device)
        seconds = time.perf_counter() - start
        (out / "photo.psc").write_bytes(result.data)
        figures = {"steps": result.steps, "evaluations": result.evaluations}
    else:
        data = (out / "photo.psc").read_bytes()
        start = time.perf_counter()
        decoded = pillow_psc.decode_array(data, device=args.device)
        seconds = time.perf_counter() - start
        np.save(out / "decoded.npy", decoded.pixels)
        figures = {"steps": decoded.steps_decoded, "evaluations": decoded.evaluations,
                   "desync_step": decoded.desync_step}
    return {"seconds": seconds, **figures, **peak_rss()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", default="kodim23.png", help="Kodak file name or path")
    parser.add_argument("--size", default="4000x3000", help="WxH of the upscaled photo")
    parser.add_argument("--rate", type=float, default=0.1, help="bits per pixel of the whole file")
    parser.add_argument("--samples", type=int, default=8, help="posterior samples per step")
    parser.add_argument("--sampler-steps", type=int, default=None, help="default: the prior's")
    parser.add_argument("--delta", type=float, default=None, help="quantizer step (default: chosen by the encoder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="examples/out/large")
    parser.add_argument("--phase", choices=["encode", "decode"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    source = Path(args.photo) if Path(args.photo).exists() else KODAK / args.photo
    original = np.asarray(Image.open(source).convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    np.save(out / "original.npy", original)

    results: dict[str, dict] = {}
    for phase in ("encode", "decode"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--phase", phase]
        line = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        results[phase] = json.loads(line)
    size = (out / "photo.psc").stat().st_size
    decoded = np.load(out / "decoded.npy")
    print(f"photo     {source.name} upscaled to {width}x{height} ({width * height / 1e6:.1f} MP), Lanczos")
    print(f"config    rate {args.rate} bpp, samples {args.samples}, sampler steps {args.sampler_steps or 'prior'},"
          f" delta {args.delta or 'auto'}, {args.threads} torch thread(s), device {args.device}")
    print(f"file      {size} bytes, {8 * size / (width * height):.4f} bpp, {results['encode']['steps']} steps,"
          f" {results['decode']['steps']} decoded, PSNR {psnr(original, decoded):.2f} dB")
    if results["decode"].get("desync_step") is not None:
        print(f"WARNING   decoder desynced at step {results['decode']['desync_step']}; decode covers fewer steps")
    for phase, r in results.items():
        print(f"{phase:9} {r['seconds']:.1f} s, {r['evaluations']} denoiser evaluations, peak RSS"
              f" {r['vmhwm_gib']:.2f} GiB (VmHWM), {r['ru_maxrss_gib']:.2f} GiB (ru_maxrss)")


if __name__ == "__main__":
    main()
