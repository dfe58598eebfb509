"""`psc bench`: rate-distortion and speed of PSC against JPEG, WebP, AVIF, JPEG XL and JPEG 2000 on Kodak.

Evaluation in the CompressAI spirit: one command writes a JSON file (per-image points, mean curves,
Bjøntegaard-delta rates, machine info), RD plots next to it, and prints the mean results as Markdown.
Baselines are driven to each target rate by bisecting their quality parameter; PSC hits it by its own
rate control, so every codec is compared at (about) the same file sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL
import torch
from PIL import Image, features

from . import codec
from .errors import BudgetError
from .priors import canonical_model_id, load_prior, resolve_device

CODECS = ("psc", "jpeg", "webp", "avif", "jxl", "j2k")
DEFAULT_RATES = (0.05, 0.1, 0.2, 0.4)
QUICK = {"images": ("kodim01", "kodim23"), "crop": 176, "rates": (0.2, 0.3, 0.5, 0.75),
         "config": codec.CodecConfig(samples=4, sampler_steps=3, output_samples=2)}
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


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


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


def run_psc(pixels: np.ndarray, target: float, config: codec.CodecConfig, device: str) -> dict[str, Any]:
    """One RD point: encode at the target rate, decode the real file (mean), and the sample output's PSNR."""
    try:
        encoded, enc_s = _timed(codec.encode, pixels, rate=target, config=config, device=device)
    except BudgetError as exc:
        return {"target_bpp": target, "error": str(exc)}
    decoded, dec_s = _timed(codec.decode_array, encoded.data, mode="mean", device=device)
    return {**_point(pixels, decoded.pixels, target, len(encoded.data), enc_s, dec_s), "steps": encoded.steps,
            "desync_step": decoded.desync_step, "psnr_sample": psnr(pixels, encoded.reconstruct("sample")),
            "peak_rss_mib": _peak_rss_mib()}


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


def mean_curve(per_image: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """Average each target rate's points over the images; a target that failed on any image is left out."""
    curve = []
    for points in zip(*per_image.values()):
        if any("error" in p for p in points):
            continue
        mean = {"target_bpp": points[0]["target_bpp"], "images": len(points)}
        for key in ("bpp", "psnr", "ms_ssim", "enc_s", "dec_s", "psnr_sample"):
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
            for name, curve in means.items() if name != "psc"}


def machine_info(device: str) -> dict[str, Any]:
    """What the timings depend on."""
    info = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(resolve_device(device)), "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor(), "pillow": PIL.__version__}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


@dataclass
class BenchOptions:
    """What to run, resolved from the command line."""

    kodak: Path
    images: list[str]
    crop: int | None
    rates: list[float]
    codecs: list[str]
    config: codec.CodecConfig
    device: str
    out: Path
    quick: bool


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Resolve the CLI arguments; --quick only fills in what was not given explicitly."""
    kodak = Path(args.kodak or os.environ.get("PSC_KODAK", "../shared/data/kodak"))
    if args.all or not (args.images or args.quick):
        images = sorted(p.stem for p in kodak.glob("kodim*.png"))
        if not images:
            raise FileNotFoundError(f"no kodim*.png in {kodak} (use --kodak DIR or set PSC_KODAK)")
    else:
        images = list(args.images or QUICK["images"])
    config = QUICK["config"] if args.quick else codec.CodecConfig()
    overrides = {"samples": args.samples, "sampler_steps": args.sampler_steps}
    return BenchOptions(
        kodak=kodak, images=images, crop=args.crop or (QUICK["crop"] if args.quick else None),
        rates=list(args.rates or (QUICK["rates"] if args.quick else DEFAULT_RATES)),
        codecs=list(dict.fromkeys(args.codecs or CODECS)),
        config=dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}),
        device=args.device, out=Path(args.out), quick=args.quick)


def run(opts: BenchOptions) -> dict[str, Any]:
    """Every requested codec on every image at every target rate; returns the JSON-ready report."""
    available, missing = baseline_codecs()
    baselines = {name: available[name] for name in opts.codecs if name in available}
    skipped = {name: missing[name] for name in opts.codecs if name in missing}
    if "psc" in opts.codecs:
        load_prior(canonical_model_id(None, 3), opts.device)  # model load stays out of the timings
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in opts.codecs if name not in skipped}
    start = time.perf_counter()
    for image in opts.images:
        pixels = load_image(opts.kodak / f"{image}.png", opts.crop)
        for name in results:
            results[name][image] = []
            for target in opts.rates:
                point = (run_psc(pixels, target, opts.config, opts.device) if name == "psc"
                         else run_baseline(baselines[name], pixels, target))
                results[name][image].append(point)
                _log(image, name, point)
    means = {name: mean_curve(per_image) for name, per_image in results.items()}
    described = {name: {"label": c.name, "settings": c.settings} for name, c in baselines.items()}
    described["psc"] = {"label": "PSC", "settings": "pillow_psc, default prior (FFDNet), decode mode mean"}
    return {
        "config": {"kodak": str(opts.kodak), "images": opts.images, "crop": opts.crop, "rates": opts.rates,
                   "codecs": opts.codecs, "quick": opts.quick, "psc_config": dataclasses.asdict(opts.config)},
        "codecs": {name: described[name] for name in results},
        "skipped": skipped,
        "machine": {**machine_info(opts.device), "peak_rss_mib": _peak_rss_mib()},
        "wall_s": time.perf_counter() - start,
        "notes": [MS_SSIM_NOTE, "bpp counts every byte of the file (headers included).",
                  "BD-rate: PSC against each baseline on the mean curves; negative = PSC needs fewer bits. "
                  "The ms_ssim variant uses -10*log10(1 - MS-SSIM) as the quality axis.",
                  "Baselines: the quality is bisected for the largest file within the target; over_target marks "
                  "points where even the lowest quality is larger.",
                  "psnr_sample: PSNR of the 'sample' decode (one posterior sample), from the encoder's state."],
        "results": results,
        "mean": means,
        "bd_rate": bd_rates(means),
    }


def _log(image: str, name: str, p: dict[str, Any]) -> None:
    if "error" in p:
        print(f"{image} {name} @{p['target_bpp']}: {p['error']}", file=sys.stderr)
    else:
        print(f"{image} {name} @{p['target_bpp']}: {p['bpp']:.3f} bpp, {p['psnr']:.2f} dB, "
              f"enc {p['enc_s']:.2f} s, dec {p['dec_s']:.2f} s", file=sys.stderr, flush=True)


# -- outputs --------------------------------------------------------------------------------------------------
def plot(report: dict[str, Any], metric: str, path: Path) -> None:
    """Mean RD curves of every codec for one metric (psnr or ms_ssim), as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, renders with Agg
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in report["mean"].items():
        points = [p for p in curve if p[metric] is not None]
        if points:
            ax.plot([p["bpp"] for p in points], [p[metric] for p in points], marker="o",
                    linewidth=2.5 if name == "psc" else 1.2, label=report["codecs"][name]["label"])
    cfg = report["config"]
    size = f"{cfg['crop']}px centre crops" if cfg["crop"] else "full size"
    ax.set(xlabel="bits per pixel", ylabel="PSNR (dB, RGB)" if metric == "psnr" else "MS-SSIM",
           title=f"Kodak, {len(cfg['images'])} images, {size}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The mean results and BD-rates as Markdown tables (for the README's Results section)."""
    lines = ["| codec | target bpp | bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, curve in report["mean"].items():
        lines += [f"| {report['codecs'][name]['label']} | {p['target_bpp']:g} | {p['bpp']:.3f}"
                  f"{'*' if p.get('over_target') else ''} | {p['psnr']:.2f} | {_fmt(p['ms_ssim'], 4)} | "
                  f"{p['enc_s']:.3f} | {p['dec_s']:.3f} |" for p in curve]
    if any(p.get("over_target") for curve in report["mean"].values() for p in curve):
        lines.append("\n\\* above the target even at the lowest quality (on at least one image)")
    if report["bd_rate"]:
        lines += ["", "| PSC vs | BD-rate, PSNR | BD-rate, MS-SSIM |", "|---|---|---|"]
        lines += [f"| {report['codecs'][name]['label']} | {_bd_cell(bd['psnr'])} | {_bd_cell(bd['ms_ssim'])} |"
                  for name, bd in report["bd_rate"].items()]
    return "\n".join(lines)


def _bd_cell(bd: dict[str, Any]) -> str:
    if bd["value"] is None:
        return f"– ({bd['reason']})"
    return f"{bd['value']:+.1f} %" + (f" (degree-{bd['fit_degree']} fit)" if bd["fit_degree"] < 3 else "")


def main(args: argparse.Namespace) -> None:
    """`psc bench`: run, write bench.json and the RD plots (rd_psnr.png, rd_ms_ssim.png where MS-SSIM is
    defined) into --out, and print the Markdown tables."""
    opts = options_from_args(args)
    opts.out.mkdir(parents=True, exist_ok=True)  # fail now, not after hours of benchmarking
    report = run(opts)
    (opts.out / "bench.json").write_text(json.dumps(report, indent=1))
    for metric in ("psnr", "ms_ssim"):
        if any(p[metric] is not None for curve in report["mean"].values() for p in curve):
            plot(report, metric, opts.out / f"rd_{metric}.png")
    print(markdown(report))
