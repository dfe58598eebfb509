"""When should an automatic quantizer step start again at half of it? Both choices, forced, on whole Kodak photos.

    python examples/restart_study.py --effort 1 --rates 0.1 --out examples/results/restart_study
    python examples/restart_study.py --effort 1 --rates 0.05 --arms C --images kodim08 --out examples/results/restart_study
    python examples/restart_study.py --summarise examples/results/restart_study
    python examples/restart_study.py --decisions --effort 3 --rates 0.1 --out DIR
    python examples/restart_study.py --against examples/results/kodak24_latest --out DIR

The encoder judges after two adaptive steps whether the automatic step is so coarse that it should start again at
δ/2 (`codec._start_finer`). This script encodes every photo twice with that test switched off: arm A keeps the
automatic step (and refines it from step to step as usual), arm B starts at half of it. Each record also holds
arm A's first two chunk sizes and the rest of the budget after them, the numbers the test reads, so any rule can
be scored offline: a restart costs arm A's two steps of evaluations and gives arm B's result exactly (a fresh
encode from the same seed). Records are appended to `arms.jsonl` as they finish; a stopped run resumes.

`--summarise` prints, per rate: the oracle (the better arm on every photo), the former rule (a geometric tail of
the chunk sizes under a quarter of the rest), the pace alone (more steps than the pace at the second chunk's size),
the current rule (smooth photos, `codec.block_texture` below `codec.SMOOTH_TEXTURE`, start at half the step without
the test's two steps; busy ones below `codec.TEXTURE_RATE_BPP` start one refinement coarser, arm C, where it was
encoded; the others by the pace) and fixed step counts in place of the pace. The arms ignore the texture: A starts at
`codec.automatic_step`, B at half of it, C (`--arms C`, for busy photos) at 2^(1/2) times it, D (for smooth
photos) at 2^(-1/2) times B's, E at twice A's (`ARM_FACTORS`).

`--decisions` is the cheap half, for when a rule changes after records were made: each encode stops after its second
adaptive step and `decisions.jsonl` gets those numbers and what the current and former rules decide. `--against
RECORDS` then lists the photos whose record (`examples/kodak_whole.py`'s psc.jsonl: an encode started again when its
header's step is below the automatic one) decided otherwise than the current rule: the ones to encode again.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import pillow_psc
from pillow_psc import codec, container
from pillow_psc.bench import load_image, psnr

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


#: The arms' first quantizer steps, as factors of `codec.automatic_step`: A keeps it, B starts at half of it (where
#: starting again goes), C one refinement coarser (where busy photos start at low rates, `codec.auto_delta`), D one
#: refinement finer than B (for smooth photos; it lost at 0.1 bpp), E two refinements coarser (for the busiest).
ARM_FACTORS = {"A": 1.0, "B": 0.5, "C": math.sqrt(2), "D": 0.5 / math.sqrt(2), "E": 2.0}


def encode_arm(pixels: np.ndarray, rate: float, effort: int, arm: str) -> dict:
    """Encode with the restart test off, starting at the automatic step times the arm's factor (ARM_FACTORS)."""
    first_two: dict = {}

    def never_restart(step_bytes: list[int], remaining: int, pace: float) -> bool:
        if len(step_bytes) == 2:
            first_two.update(first2=list(step_bytes), remaining2=remaining)
        return False

    saved = codec._start_finer, codec.auto_delta
    codec._start_finer = never_restart
    # the arms ignore the photo's texture: A starts at the automatic step, the others at a factor of it
    codec.auto_delta = lambda bits_per_pixel, texture: codec.automatic_step(bits_per_pixel) * ARM_FACTORS[arm]
    try:
        start = time.perf_counter()
        encoded = pillow_psc.encode(pixels, rate=rate, config=pillow_psc.CodecConfig(effort=effort))
        seconds = time.perf_counter() - start
    finally:
        codec._start_finer, codec.auto_delta = saved
    parsed = container.read_file(encoded.data)
    return {"psnr": psnr(pixels, encoded.reconstruct("mean")), "bpp": 8 * len(encoded.data) / pixels[..., 0].size,
            "evaluations": encoded.evaluations, "encode_s": round(seconds, 1),
            "delta": parsed.header.delta, "chunk_bytes": [len(c.words) for c in parsed.data],
            "texture": codec.block_texture(pixels), **first_two}


def run(names: list[str], rates: list[float], effort: int, out: Path, crop: int | None = None,
        arms: str = "AB") -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "arms.jsonl"
    done = {(r["image"], r["rate"], r["effort"], r["arm"]) for r in _records([out])}
    for rate in rates:
        for name in names:
            for arm in arms:
                if (name, rate, effort, arm) in done:
                    continue
                record = {"image": name, "rate": rate, "effort": effort, "arm": arm,
                          **encode_arm(load_image(KODAK / f"{name}.png", crop), rate, effort, arm)}
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)


class _SecondStep(Exception):
    """Stops an encode once it has the numbers the restart test reads."""


def first_two_steps(pixels: np.ndarray, rate: float, effort: int) -> dict:
    """The first two chunk sizes and the rest of the budget after them, from an encode stopped there; {} where the
    encode ends within two steps (the test is never reached)."""

    def stop(step_bytes: list[int], remaining: int, pace: float) -> bool:
        if len(step_bytes) == 2:
            raise _SecondStep(list(step_bytes), remaining)
        return False

    saved = codec._start_finer
    codec._start_finer = stop
    try:
        pillow_psc.encode(pixels, rate=rate, config=pillow_psc.CodecConfig(effort=effort))
        return {}
    except _SecondStep as exc:
        return {"first2": exc.args[0], "remaining2": exc.args[1]}
    finally:
        codec._start_finer = saved


def decide(names: list[str], rates: list[float], effort: int, out: Path, crop: int | None = None) -> None:
    """Append each photo's first two steps and both rules' decisions to decisions.jsonl (a stopped run resumes)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "decisions.jsonl"
    done = {(r["image"], r["rate"], r["effort"]) for r in _lines(path)}
    for rate in rates:
        for name in names:
            if (name, rate, effort) in done:
                continue
            numbers = first_two_steps(load_image(KODAK / f"{name}.png", crop), rate, effort)
            record = {"image": name, "rate": rate, "effort": effort, **numbers}
            if numbers:
                first2, remaining = numbers["first2"], numbers["remaining2"]
                record.update(steps=round(codec._steps_at_last_size(first2, remaining), 2),
                              current=codec._start_finer(first2, remaining, _pace(rate, effort)),
                              former=_former_rule(first2, remaining))
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


def stale(decisions: Path, records: Path) -> list[str]:
    """'RATE PHOTO' for every photo whose record in `records` decided otherwise than the current rule."""
    started_again = {(r["image"], r["rate"]): r["delta"] < codec.automatic_step(r["rate"]) * (1 - 1e-6)
                     for r in _lines(records / "psc.jsonl")}
    return [f"{d['rate']} {d['image']}" for d in _lines(decisions / "decisions.jsonl")
            if (d["image"], d["rate"]) in started_again
            and d.get("current", False) != started_again[d["image"], d["rate"]]]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _records(folders: list[Path]) -> list[dict]:
    return [r for folder in folders for r in _lines(folder / "arms.jsonl")]


def _pace(rate: float, effort: int) -> float:
    """The current rule's pace at an effort's default settings (`codec.restart_pace`)."""
    settings = codec.EFFORTS[effort]
    return codec.restart_pace(rate, codec.effort_samples(settings, rate), (settings.rows,))


def _former_rule(first2: list[int], remaining: int) -> bool:
    """The test before this study: the chunks' geometric tail could spend under a quarter of the rest."""
    return codec._tail(first2) < 0.25 * remaining


def summarise(folders: list[Path]) -> str:
    """A table per (rate, effort): PSNR over the photos with both arms, mean evaluations, per rule."""
    arms: dict[tuple, dict[str, dict]] = {}
    for r in _records(folders):
        arms.setdefault((r["rate"], r["effort"]), {}).setdefault(r["image"], {})[r["arm"]] = r
    lines = []
    for (rate, effort), photos in sorted(arms.items()):
        complete = {name: p for name, p in photos.items() if {"A", "B"} <= p.keys()}
        pairs = [(p["A"], p["B"]) for p in complete.values()]
        if not pairs:
            continue
        abandoned = 2 * (pairs[0][0]["evaluations"] // max(1, len(pairs[0][0]["chunk_bytes"]) - 1))

        def score(restarts: list[bool], at_once: list[bool] | None = None, coarser: list[dict] | None = None) -> str:
            """`coarser`: per photo, the record that replaces arm A where the encode starts coarser (arm C), or {}."""
            firsts = [c or a for (a, _), c in zip(pairs, coarser or [{}] * len(pairs))]
            chosen = [b if go else a for (_, b), a, go in zip(pairs, firsts, restarts)]
            psnr_mean = np.mean([c["psnr"] for c in chosen])
            at_once = at_once or [False] * len(pairs)  # started at half the step, no test steps spent
            evals = np.mean([b["evaluations"] + (0 if now else abandoned) if go else a["evaluations"]
                             for (_, b), a, go, now in zip(pairs, firsts, restarts, at_once)])
            return f"{psnr_mean:.3f} dB, {evals:.0f} evaluations, {sum(restarts)} start again"

        # the encoder starts smooth photos at half the step (`codec.auto_delta`), without the two steps of the test
        smooth = [codec.auto_delta(rate, a["texture"]) < codec.automatic_step(rate) * (1 - 1e-6) for a, _ in pairs]
        # an encode that ended within two steps was never tested: 0 steps
        steps = [2 + a["remaining2"] / a["first2"][1] if "first2" in a else 0.0 for a, _ in pairs]
        lines += [f"## {rate} bpp, effort {effort}: {len(pairs)} photos", "",
                  f"- never start again: {score([False] * len(pairs))}",
                  f"- always start again: {score([True] * len(pairs))}",
                  f"- oracle (the better arm): {score([b['psnr'] > a['psnr'] for a, b in pairs])}",
                  f"- former rule (tail < 0.25 of the rest): "
                  f"{score([s > 0 and _former_rule(a['first2'], a['remaining2']) for s, (a, _) in zip(steps, pairs)])}",
                  f"- the pace alone (more than {_pace(rate, effort):g} steps): "
                  f"{score([s > _pace(rate, effort) for s in steps])}"]
        current = [h or s > _pace(rate, effort) for h, s in zip(smooth, steps)]
        # ... and busy photos at low rates one refinement coarser: arm C, whose own test is taken to keep its step
        busy = [codec.auto_delta(rate, a["texture"]) > codec.automatic_step(rate) * (1 + 1e-6) for a, _ in pairs]
        coarser = [complete[name].get("C", {}) if b else {} for name, b in zip(complete, busy)]
        if any(busy) and all(c for c, b in zip(coarser, busy) if b):
            lines.append(f"- current rule (texture below {codec.SMOOTH_TEXTURE}: half the step at once; from "
                         f"{codec.BUSY_TEXTURE} below {codec.TEXTURE_RATE_BPP} bpp: arm C; else more than the pace): "
                         f"{score(current, smooth, coarser)}")
        elif any(busy):
            lines.append(f"- current rule: not scored ({sum(busy)} busy photos start coarser; arm C missing)")
        else:
            lines.append(f"- current rule (texture below {codec.SMOOTH_TEXTURE}: half the step at once; else more than "
                         f"the pace): {score(current, smooth)}")
        lines += [f"- more than {limit} steps: {score([s > limit for s in steps])}" for limit in (6, 7, 8, 9, 10, 12)]
        others = [arm for arm in ARM_FACTORS if arm != "A"]
        header = ["photo", "steps at the 2nd chunk's size (arm A)", "texture"] + [f"{arm} − A (dB)" for arm in others]
        lines += ["", _row(header), _row(["---"] * len(header))]
        lines += [_row([name, f"{s:.1f}", f"{p['A']['texture']:.4f}"]
                       + [f"{p[arm]['psnr'] - p['A']['psnr']:+.2f}" if arm in p else "" for arm in others])
                  for s, (name, p) in sorted(zip(steps, complete.items()))]
        lines.append("")
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", default=[f"kodim{i:02d}" for i in range(1, 25)])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.1])
    parser.add_argument("--effort", type=int, default=1)
    parser.add_argument("--crop", type=int, help="centre crop N x N (default: whole photos; for quick checks)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="folder for arms.jsonl")
    parser.add_argument("--arms", default="AB", help=f"arms to encode, of {''.join(ARM_FACTORS)} (default: AB)")
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="DIR", help="print the tables of these folders")
    parser.add_argument("--decisions", action="store_true",
                        help="stop each encode after two steps; record what each rule decides (decisions.jsonl)")
    parser.add_argument("--against", type=Path, metavar="RECORDS",
                        help="print the photos whose record in RECORDS/psc.jsonl the current rule would change")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return
    if args.out is None:
        parser.error("--out is required unless --summarise is given")
    if not args.arms or set(args.arms) - ARM_FACTORS.keys():
        parser.error(f"--arms takes letters of {''.join(ARM_FACTORS)}, not {args.arms!r}")
    if args.against:
        print("\n".join(stale(args.out, args.against)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decisions:
        decide(args.images, args.rates, args.effort, args.out, args.crop)
    else:
        run(args.images, args.rates, args.effort, args.out, args.crop, args.arms)


if __name__ == "__main__":
    main()
