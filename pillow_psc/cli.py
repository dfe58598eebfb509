"""`psc` command line: encode, decode, info (and bench). Every command is callable as main(argv)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator, Sequence

from PIL import Image, UnidentifiedImageError

from . import bench, codec
from .container import PRECISIONS, SIGNATURE, count_data_chunks, read_file
from .errors import PSCError


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".psc-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _encode(args: argparse.Namespace) -> None:
    from .pillow_plugin import codable_image
    with Image.open(args.input) as im:
        im.load()
        image = codable_image(im)
        metadata = {k: im.info[k] for k in ("icc_profile", "exif", "xmp") if im.info.get(k)}
    config = codec.PAPER_CONFIG if args.paper else codec.CodecConfig()
    if args.effort is not None:
        config = dataclasses.replace(config, effort=args.effort)
    if args.samples:
        config = dataclasses.replace(config, samples=args.samples)
    if args.delta is not None:
        config = dataclasses.replace(config, delta=args.delta)
    if args.precision:
        config = dataclasses.replace(config, precision=args.precision)
    import numpy as np
    result = codec.encode(np.asarray(image), rate=args.rate, max_bytes=args.max_bytes, model=args.model,
                          prompt=args.prompt, seed=args.seed, device=args.device, config=config,
                          metadata={k: v.encode() if isinstance(v, str) else bytes(v) for k, v in metadata.items()},
                          progress=True)
    with atomic_output(args.output) as tmp:
        with open(tmp, "wb") as f:
            f.write(result.data)
    w, h = image.size
    print(f"{args.output}: {len(result.data)} bytes, {8 * len(result.data) / (w * h):.4f} bpp, {result.steps} steps",
          file=sys.stderr)


def _decode(args: argparse.Namespace) -> None:
    with open(args.input, "rb") as f:
        data = f.read()
    decoded = codec.decode_array(data, mode=args.mode, steps=args.steps, device=args.device,
                                 strict=args.strict, progress=True)
    image = Image.fromarray(decoded.pixels)
    with atomic_output(args.output) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(os.path.splitext(args.output)[1].lower(), "PNG"))


def _info(args: argparse.Namespace) -> None:
    with open(args.input, "rb") as f:
        psc = read_file(f, header_only=True)
        f.seek(len(SIGNATURE))
        steps, complete = count_data_chunks(f)
        size = f.seek(0, os.SEEK_END)
    h = psc.header
    info = {
        "width": h.width, "height": h.height, "mode": h.mode, "bytes": size, "bpp": 8 * size / (h.width * h.height),
        "format_version": h.version, "model": h.prior_id, "model_sha256": h.model_sha256.hex(), "seed": h.seed,
        "prompt": h.prompt, "sampler": h.sampler, "sampler_steps": h.sampler_steps, "samples": h.samples,
        "eta": h.eta, "extrapolation": h.extrapolation, "sigma_max": h.sigma_max, "sigma_min": h.sigma_min,
        "output_samples": h.output_samples,
        "output_sampler_steps": h.output_sampler_steps, "mean_sigma_min": h.mean_sigma_min,
        "coarse_sigma": h.coarse_sigma, "tile": h.tile,
        "window": h.window, "margin": h.margin,
        "float8": h.float8, "delta": h.delta,
        "rows_per_step": h.rows_per_step, "coding": h.coding,
        "precision": h.precision, "steps": steps,
        "truncated": not complete,
        "metadata": sorted(psc.metadata),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:20} {value}")


def _bench(args: argparse.Namespace) -> None:
    bench.main(args)


def _fuzz(args: argparse.Namespace) -> None:
    from . import fuzz
    if fuzz.main(args):
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psc", description="Encode, decode and inspect .psc images.")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="compress an image (any format Pillow reads) to .psc")
    enc.add_argument("input")
    enc.add_argument("output")
    enc.add_argument("--rate", type=float, help=f"bits per pixel of the whole file (default {codec.DEFAULT_RATE})")
    enc.add_argument("--max-bytes", type=int, help="hard limit on the file size")
    enc.add_argument("--model", help="prior: ffdnet (default), diffusers-pixel:<id|dir>, sd:<id|dir>")
    enc.add_argument("--prompt", default="", help="text prompt (Stable Diffusion priors)")
    enc.add_argument("--seed", type=int, default=0)
    enc.add_argument("--effort", type=int, choices=sorted(codec.EFFORTS),
                     help=f"1 (fastest) .. {max(codec.EFFORTS)}: denoiser evaluations per step "
                          f"(default {codec.DEFAULT_EFFORT})")
    enc.add_argument("--samples", type=int,
                     help="posterior samples per step (default: by effort and rate; at the default effort 4, 6 from "
                          "0.15 bpp)")
    enc.add_argument("--delta", type=float,
                     help="quantizer step in signal units (default: chosen from the rate); finer steps mean fewer, "
                          "costlier measurements and fewer steps")
    enc.add_argument("--precision", choices=PRECISIONS,
                     help="denoiser arithmetic (default float32); bfloat16 is about 2.8x faster end to end on a CPU "
                          "with AMX, but the file then decodes fully only where the same bfloat16 kernels run")
    enc.add_argument("--paper", action="store_true",
                     help="the paper-faithful configuration: raw float8 measurements, the paper's sampler settings "
                          "(much slower and larger; for comparison)")
    enc.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    enc.set_defaults(run=_encode)
    dec = sub.add_parser("decode", help="decode a .psc file to any format Pillow writes (by extension)")
    dec.add_argument("input")
    dec.add_argument("output")
    dec.add_argument("--mode", choices=["mean", "sample"], default="mean",
                     help="mean: lowest distortion; sample: one posterior sample (sharper)")
    dec.add_argument("--steps", type=int, help="decode only the first K steps")
    dec.add_argument("--device", default="auto")
    dec.add_argument("--strict", action="store_true",
                     help="fail (exit 1) if the decoder drifts from the encoder, instead of writing the image of "
                          "the verified steps with a warning")
    dec.set_defaults(run=_decode)
    inf = sub.add_parser("info", help="print the header of a .psc file")
    inf.add_argument("input")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(run=_info)
    ben = sub.add_parser(
        "bench", help="rate-distortion and speed benchmark of PSC against JPEG, WebP, AVIF, JPEG XL, JPEG 2000",
        description="Benchmark on Kodak; writes OUT/bench.json and RD plots, prints a Markdown table. Without "
                    "--quick it runs all 24 photos at full size: hours on a CPU (meant for a GPU).")
    which = ben.add_mutually_exclusive_group()
    which.add_argument("--images", nargs="+", metavar="NAME", help="Kodak names, e.g. kodim01 kodim23")
    which.add_argument("--all", action="store_true", help="every kodim*.png (the default without --quick)")
    ben.add_argument("--crop", type=int, metavar="N", help="centre crop N x N (default: full size)")
    ben.add_argument("--rates", type=float, nargs="+", metavar="BPP",
                     help=f"target bits per pixel (default {' '.join(map(str, bench.DEFAULT_RATES))})")
    ben.add_argument("--codecs", nargs="+", choices=bench.CODECS, help="default: all")
    ben.add_argument("--quick", action="store_true",
                     help="4 images, 256 px centre crops, rates 0.05 0.1 0.2, PSC with 4 samples, 3 sampler steps "
                          "and 2 output samples: about 10 minutes on a 2-core CPU; explicit options override these")
    ben.add_argument("--effort", type=int, choices=sorted(codec.EFFORTS),
                     help=f"PSC encoder effort (default {codec.DEFAULT_EFFORT}); with --quick it replaces the quick "
                          "sampler budget")
    ben.add_argument("--paper-budget", choices=("paper", "psc"),
                     help="sampler budget of the paper-faithful curve: the paper's own (16 samples x 25 steps, 64 "
                          "output samples; hours per whole photo on a CPU; the default without --quick) or PSC's "
                          "(the default with --quick), so that the two curves differ only in the method")
    ben.add_argument("--samples", type=int, help="PSC posterior samples per step")
    ben.add_argument("--sampler-steps", type=int, help="PSC denoiser evaluations per sample")
    ben.add_argument("--precision", choices=PRECISIONS, help="PSC denoiser arithmetic (default float32)")
    ben.add_argument("--device", default="auto", help="PSC device: auto (CUDA if present), cpu, cuda, ...")
    ben.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ben.add_argument("--out", default="psc-bench", help="output directory (default psc-bench)")
    ben.add_argument("--kodak", help="Kodak directory (default $PSC_KODAK, else ../shared/data/kodak)")
    ben.add_argument("--readme", metavar="FILE",
                     help="regenerate the Results block (between the psc-bench markers) of this README")
    ben.set_defaults(run=_bench)
    fuz = sub.add_parser(
        "fuzz", help="mutation-fuzz the reader and decoder with corrupted copies of the conformance vectors",
        description="Each case mutates a vector (most keep CRCs valid so the corruption reaches the parsers and "
                    "the decoder) and must decode to the header's size/mode or raise a documented PSCError, "
                    "within a time limit. Prints a summary; exit status 1 if any case failed.")
    fuz.add_argument("--cases", type=int, default=1000)
    fuz.add_argument("--seed", type=int, default=0)
    fuz.add_argument("--start", type=int, default=0, help="first case index (to resume or shard a campaign)")
    fuz.add_argument("--corpus", help="directory of .psc seed files (default format_spec/vectors)")
    fuz.add_argument("--out", help="write report.json and failing inputs (failures/) here")
    fuz.add_argument("--time-limit", type=float, default=60.0, help="seconds per case (default 60)")
    fuz.add_argument("--replay", nargs="+", metavar="FILE", help="check saved inputs in-process instead")
    fuz.set_defaults(run=_fuzz)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 bad input or failure, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.run(args)
    except (PSCError, UnidentifiedImageError, OSError, ValueError) as exc:
        print(f"psc: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("psc: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
