"""PSC on the 24 whole Kodak photos (768x512) against WebP, AVIF and JPEG 2000 at the same bits per pixel.

    python examples/kodak_whole.py --rates 0.05 0.1 0.2 --precision bfloat16 --threads 2 --out examples/results/kodak24

`psc bench` decodes every file twice (mean and sample) and drives the baselines to the target rates, where WebP
often cannot go (its smallest Kodak file is 0.07-0.21 bpp). This script is the cheaper whole-photo run:

* PSC: one encode per photo and rate with the effort's settings (`--samples` overrides its samples per step, for
  screening a change before it becomes an effort's); the PSNR is that of the encoder's `mean`
  reconstruction, which is what the decoder returns (tests/test_codec.py checks that they are bit-identical).
  Each result is appended to `psc.jsonl` as soon as it exists, and photos already there are skipped, so a run
  of an hour or more can be stopped and resumed.
* Baselines: a sweep of 41 quality settings per photo and codec (`psc bench`'s codec settings), cached in
  `--baselines` (whole photos: examples/results/baselines.json, which every run and merge shares; with `--crop`:
  the run's own folder); a codec's PSNR at PSC's bpp is read off its curve by linear interpolation in log(bpp).
  Below the codec's smallest file it is extrapolated from its lowest points and counted as such.

`summary.md` gets one row per rate: means over the photos done, PSC minus each baseline, and on how many photos
PSC is ahead. With `--compare DIR ...` (earlier runs' folders, e.g. another build or rate control; a photo's
record comes from the last folder that holds it) it also gets PSC minus those records on the photos both hold,
per rate: a change measured on only the photos it affects. With `--merge DIR ...` it encodes nothing: `--out`
gets each photo's record from the last of those folders that holds it (tagged with the folder) and their
summary: the standing when later builds re-encoded only some photos.

    python examples/kodak_whole.py --images kodim09 kodim19 --rates 0.2 --out new --compare examples/results/kodak24
    python examples/kodak_whole.py --merge examples/results/kodak24 examples/results/kodak24_v6 --out merged
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import pillow_psc
from pillow_psc.bench import baseline_codecs, load_image, psnr

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
WHOLE_PHOTO_BASELINES = Path(__file__).resolve().parent / "results" / "baselines.json"
BASELINES = ("webp", "avif", "j2k")
SWEEP_POINTS = 41


def encode_photos(names: list[str], rates: list[float], config: pillow_psc.CodecConfig, out: Path,
                  crop: int | None = None) -> None:
    """Encode every (photo, rate) not yet in psc.jsonl; append one JSON line each."""
    done = {(r["image"], r["rate"]) for r in _lines(out / "psc.jsonl")}
    for rate in rates:
        for name in names:
            if (name, rate) in done:
                continue
            pixels = load_image(KODAK / f"{name}.png", crop)
            start = time.perf_counter()
            encoded = pillow_psc.encode(pixels, rate=rate, config=config)
            seconds = time.perf_counter() - start
            header = pillow_psc.container.read_file(encoded.data).header
            record = {"image": name, "rate": rate, "bpp": 8 * len(encoded.data) / pixels[..., 0].size,
                      "psnr": psnr(pixels, encoded.reconstruct("mean")), "encode_s": round(seconds, 1),
                      "evaluations": encoded.evaluations, "delta": header.delta, "steps": encoded.steps,
                      "precision": header.precision, "effort": config.effort, "samples": header.samples,
                      "rows_per_step": header.rows_per_step}
            (out / f"{name}_{rate}.psc").write_bytes(encoded.data)
            with open(out / "psc.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


def sweep_baselines(names: list[str], path: Path, crop: int | None = None) -> dict[str, list[list[float]]]:
    """{"kodimNN/codec": [[bpp, psnr], ...] by increasing bpp}, computed once per photo and cached in `path`."""
    curves = json.loads(path.read_text()) if path.exists() else {}
    available, _ = baseline_codecs()
    for name in names:
        pixels = load_image(KODAK / f"{name}.png", crop)
        for codec_name in BASELINES:
            key = f"{name}/{codec_name}"
            if key in curves or codec_name not in available:
                continue
            c = available[codec_name]
            points = set()
            # integer qualities (WebP, AVIF) go evenly; JPEG 2000's nominal bpp spans decades, so it goes in log
            spaced = np.linspace if c.integer else np.geomspace
            for quality in spaced(c.low, c.high, SWEEP_POINTS):
                data = c.encode(pixels, float(round(quality)) if c.integer else float(quality))
                points.add((8 * len(data) / pixels[..., 0].size, psnr(pixels, c.decode(data))))
            curves[key] = sorted(points)
        path.write_text(json.dumps(curves))
    return curves


def psnr_at(curve: list[list[float]], bpp: float) -> tuple[float, bool]:
    """PSNR of a baseline at `bpp` on its curve (log-bpp interpolation), and whether it had to extrapolate."""
    points = np.array(curve)
    log_bpp, quality = np.log(points[:, 0]), points[:, 1]
    if bpp >= points[0, 0]:
        return float(np.interp(np.log(bpp), log_bpp, quality)), False
    slope = np.polyfit(log_bpp[:4], quality[:4], 1)[0]
    return float(quality[0] + slope * (np.log(bpp) - log_bpp[0])), True


def summary(out: Path, curves: dict[str, list[list[float]]]) -> str:
    records = _lines(out / "psc.jsonl")
    lines = ["| target bpp | photos | PSC bpp | PSC PSNR (dB) | encoder evaluations | "
             + " | ".join(f"{c} at PSC's bpp (dB) | PSC − {c} (dB), ahead on" for c in BASELINES) + " |",
             "|" + "---|" * (5 + 2 * len(BASELINES))]
    for rate in sorted({r["rate"] for r in records}):
        rows = [r for r in records if r["rate"] == rate]
        cells = [f"{rate}", f"{len(rows)}", f"{np.mean([r['bpp'] for r in rows]):.4f}",
                 f"{np.mean([r['psnr'] for r in rows]):.2f}", f"{np.mean([r['evaluations'] for r in rows]):.0f}"]
        for codec_name in BASELINES:
            at = [psnr_at(curves[f"{r['image']}/{codec_name}"], r["bpp"]) for r in rows]
            gaps = [r["psnr"] - value for r, (value, _) in zip(rows, at)]
            extrapolated = sum(flag for _, flag in at)
            cells += [f"{np.mean([v for v, _ in at]):.2f} ({extrapolated} extrapolated)",
                      f"{np.mean(gaps):+.2f}, {sum(g > 0 for g in gaps)}/{len(rows)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latest_records(folders: list[Path]) -> list[dict]:
    """Each (photo, rate)'s record from the last of `folders` that holds it, tagged with that folder's name unless
    an earlier merge tagged it already (merging a merged folder keeps where each record was made)."""
    latest = {(r["image"], r["rate"]): {"folder": folder.name, **r}
              for folder in folders for r in _lines(folder / "psc.jsonl")}
    return [latest[key] for key in sorted(latest, key=lambda key: (key[1], key[0]))]


def merge(folders: list[Path], out: Path) -> None:
    """Write the latest records of `folders` into `out`."""
    records = latest_records(folders)
    (out / "psc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def sources(out: Path) -> str:
    """Per rate: how many of the merged records came from each folder."""
    records = _lines(out / "psc.jsonl")
    lines = ["| target bpp | records from |", "|---|---|"]
    for rate in sorted({r["rate"] for r in records}):
        counts = Counter(r["folder"] for r in records if r["rate"] == rate)
        lines.append(f"| {rate} | " + ", ".join(f"{folder} {n}" for folder, n in sorted(counts.items())) + " |")
    return "\n".join(lines)


def compare(out: Path, references: list[Path]) -> str:
    """Per rate: this run minus earlier runs' records of the same photos (PSNR, encoder evaluations). A photo's
    record is taken from the last of `references` that holds it (a later run overrides an earlier one)."""
    before = {(r["image"], r["rate"]): r for r in latest_records(references)}
    pairs = [(new, before[new["image"], new["rate"]]) for new in _lines(out / "psc.jsonl")
             if (new["image"], new["rate"]) in before]
    names = " + ".join(ref.name for ref in references)
    lines = [f"| target bpp | photos | PSC − {names} (dB), mean | better / worse by 0.05 dB or more | "
             "encoder evaluations (this run / reference) |", "|---|---|---|---|---|"]
    for rate in sorted({new["rate"] for new, _ in pairs}):
        rows = [(new, old) for new, old in pairs if new["rate"] == rate]
        gaps = [new["psnr"] - old["psnr"] for new, old in rows]
        lines.append(f"| {rate} | {len(rows)} ({', '.join(new['image'][-2:] for new, _ in rows)}) | "
                     f"{np.mean(gaps):+.2f} | {sum(g >= 0.05 for g in gaps)} / {sum(g <= -0.05 for g in gaps)} | "
                     f"{np.mean([new['evaluations'] for new, _ in rows]):.0f} / "
                     f"{np.mean([old['evaluations'] for _, old in rows]):.0f} |")
    return "\n".join(lines)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=[f"kodim{i:02d}" for i in range(1, 25)])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--precision", choices=pillow_psc.container.PRECISIONS, default="float32")
    parser.add_argument("--effort", type=int, choices=sorted(pillow_psc.codec.EFFORTS),
                        default=pillow_psc.codec.DEFAULT_EFFORT, help="encoder effort (pillow_psc.codec.EFFORTS)")
    parser.add_argument("--samples", type=int, help="posterior samples per step (default: by effort and rate)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--crop", type=int, help="centre crop N x N (default: whole photos; for quick checks)")
    parser.add_argument("--out", type=Path, default=Path("kodak24"))
    parser.add_argument("--baselines", type=Path, help="baseline curves cache (default: "
                        "examples/results/baselines.json for whole photos, OUT/baselines.json with --crop)")
    parser.add_argument("--compare", type=Path, nargs="+",
                        help="earlier runs' folders: add this run minus them (later folders override earlier)")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="encode nothing: write the latest record of each photo from these folders (later "
                             "override earlier) and their summary to --out")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    baselines = args.baselines or (args.out / "baselines.json" if args.crop else WHOLE_PHOTO_BASELINES)
    if args.merge:
        merge(args.merge, args.out)
        table = summary(args.out, json.loads(baselines.read_text())) + "\n\n" + sources(args.out)
    else:
        config = pillow_psc.CodecConfig(precision=args.precision, effort=args.effort, samples=args.samples)
        encode_photos(args.images, args.rates, config, args.out, args.crop)
        table = summary(args.out, sweep_baselines(args.images, baselines, args.crop))
    if args.compare:
        table += "\n\n" + compare(args.out, args.compare)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
