"""Encoder/decoder agreement across environments (issue #4): which changes alter the decoder's floats, and the cost.

PSC's decoder must repeat the encoder's floating-point computation exactly (format_spec/PSC.md §11). This program
encodes centre crops of Kodak photos once in a *reference* environment (one intra-op thread, the CPU's native
ATen kernels, oneDNN on, default precisions) and decodes the same files in fresh processes that each change one
thing: thread count, ATen kernel ISA (``ATEN_CPU_CAPABILITY``), oneDNN and MKL ISA (``ONEDNN_MAX_CPU_ISA``,
``MKL_ENABLE_INSTRUCTIONS``: what another, older CPU would run), oneDNN off, deterministic algorithms, reduced
float32 matmul/convolution precision. Environment variables and torch switches only take effect in a process
that has not yet imported torch, hence one subprocess per environment (``--worker``). For every image it records
whether the decoded pixels are bit-identical to the encoder's own reconstruction, the largest pixel difference,
the PSNR cost, and how many steps were decoded before the ``check`` values caught a drift (``desync_step``).
Drift that the check values do not cover (they hash only the chosen tiles and snapped spreads) shows up as
"silent drift": all steps decode, the pixels differ.

CPU versus CUDA (not measurable on a machine without a GPU). A CUDA decoder of a CPU-encoded file (or the reverse)
computes the same mathematics with other kernels: cuDNN picks convolution algorithms (implicit GEMM, Winograd,
FFT) per shape and GPU, each summing in its own order; float32 matmuls and convolutions may run in TF32 (10-bit
mantissa) when ``torch.backends.cuda.matmul.allow_tf32`` / ``cudnn.allow_tf32`` or a matmul precision below
"highest" allow it; reductions (means, norms) use tree orders across thread blocks; and the normal generator is
only shared because the codec draws its noise on the CPU. Every denoiser output therefore differs in its last
bits at least (far more under TF32), and the sampler amplifies that over ``sampler_steps`` iterations. The check
values turn a wrong reconstruction into a shorter one: the first step whose chosen tiles or snapped spreads
differ fails its check, and decoding stops at the verified prefix with a warning; drift too small to move a tile
choice or a spread level passes unnoticed and yields a slightly different image. The reduced-precision variants
(oneDNN matmul or convolution in bfloat16) are the nearest CPU stand-in for TF32.

Files written with ``--precision bfloat16`` (PSC.md §6.2) run the denoiser in bfloat16 on both sides; the variant
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` is a CPU with AVX-512 bfloat16 instructions but no AMX.

``--coarse-sigma 0.3`` makes the files use the half-resolution level of efforts 1 and 2 (PSC.md §6.9).

Usage: ``python -m pillow_psc.agreement [--images kodim01 ...] [--crop 128] [--rate 0.3] [--precision P]
[--coarse-sigma S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bench import load_image, psnr
from .container import PRECISIONS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ("kodim01", "kodim05", "kodim19", "kodim23")
#: Variables that select kernels; cleared in every worker so that the caller's shell cannot leak into the reference.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                    "MKL_CBWR")
#: What an AVX2-only CPU (no AVX-512) would run in all three kernel libraries.
AVX2_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@dataclass
class Env:
    """One execution environment; the defaults are the reference. Applied in a fresh worker process."""

    name: str
    threads: int = 1
    variables: dict[str, str] = field(default_factory=dict)  # set before torch is imported
    mkldnn: bool = True
    deterministic: bool = False
    matmul_precision: str = "highest"  # torch.set_float32_matmul_precision (on CPU: oneDNN matmul in bf16/tf32)
    conv_precision: str | None = None  # torch.backends.mkldnn.conv.fp32_precision, e.g. "bf16"


REFERENCE = Env("reference")


def decoder_variants() -> list[Env]:
    """The single changes tried on the decoder side (the reference decode is always added as the control)."""
    cpus = os.cpu_count() or 1
    return [
        *(Env(f"threads={n}" + (" (all cores)" if n == cpus else ""), threads=n) for n in sorted({2, cpus})),
        Env("ATEN_CPU_CAPABILITY=default", variables={"ATEN_CPU_CAPABILITY": "default"}),
        Env("ATEN_CPU_CAPABILITY=avx2", variables={"ATEN_CPU_CAPABILITY": "avx2"}),
        Env("ONEDNN_MAX_CPU_ISA=AVX2", variables={"ONEDNN_MAX_CPU_ISA": "AVX2"}),
        Env("ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16", variables={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}),
        Env("MKL_ENABLE_INSTRUCTIONS=AVX2", variables={"MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
        Env("AVX2 CPU (ATen+oneDNN+MKL)", variables=AVX2_CPU),
        Env("mkldnn.enabled=False", mkldnn=False),
        Env("use_deterministic_algorithms", deterministic=True),
        Env("matmul precision high", matmul_precision="high"),
        Env("matmul precision medium", matmul_precision="medium"),
        Env("mkldnn conv fp32_precision=bf16", conv_precision="bf16"),
    ]


def encoder_variants() -> list[Env]:
    """Encoders run outside the reference environment, each decoded in the reference (the other direction)."""
    return [Env("AVX2 CPU (ATen+oneDNN+MKL)", variables=AVX2_CPU), Env("threads=2", threads=2)]


# -- images ---------------------------------------------------------------------------------------------------
def kodak_dir() -> Path:
    """The Kodak set: $PSC_KODAK, else ../shared/data/kodak beside the repository."""
    return Path(os.environ.get("PSC_KODAK", REPO.parent / "shared" / "data" / "kodak"))


def kodak_crop(name: str, size: int) -> np.ndarray:
    """Centre crop size x size of a Kodak photo, RGB uint8."""
    return load_image(kodak_dir() / f"{name}.png", size)


# -- the worker (a fresh process per environment) -------------------------------------------------------------
def _apply(env: Env) -> dict[str, str]:
    """Set the torch switches of `env` (its variables were set by the parent); return what torch then reports."""
    import torch
    torch.set_num_threads(env.threads)
    torch.backends.mkldnn.enabled = env.mkldnn
    torch.use_deterministic_algorithms(env.deterministic)
    torch.set_float32_matmul_precision(env.matmul_precision)
    if env.conv_precision is not None:
        torch.backends.mkldnn.conv.fp32_precision = env.conv_precision
    return {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def _work(job: dict[str, Any]) -> dict[str, Any]:
    """Encode (writing NAME.psc and NAME.recon.npy) or decode (writing NAME.npy) every image of the job."""
    import pillow_psc
    info = _apply(Env(**job["env"]))
    src, dst = Path(job["src"]), Path(job["dst"])
    dst.mkdir(parents=True, exist_ok=True)
    images = []
    for name in job["images"]:
        start, record = time.perf_counter(), {"name": name}
        if job["task"] == "encode":
            config = pillow_psc.CodecConfig(samples=4, sampler_steps=3, output_samples=2,  # the tests' FAST config
                                            precision=job["precision"], coarse_sigma=job["coarse_sigma"])
            enc = pillow_psc.encode(kodak_crop(name, job["crop"]), rate=job["rate"], config=config, device="cpu")
            (dst / f"{name}.psc").write_bytes(enc.data)
            np.save(dst / f"{name}.recon.npy", enc.reconstruct("mean"))
            record.update(bytes=len(enc.data), steps=enc.steps)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    dec = pillow_psc.decode_array((src / f"{name}.psc").read_bytes(), device="cpu")
                except Exception as exc:  # e.g. an op refused by use_deterministic_algorithms: a finding, not a crash
                    record["error"] = f"{type(exc).__name__}: {exc}"
                else:
                    np.save(dst / f"{name}.npy", dec.pixels)
                    record.update(steps_present=dec.steps_present, steps_decoded=dec.steps_decoded,
                                  desync_step=dec.desync_step)
            record["warnings"] = sorted({str(w.message) for w in caught})
        record["seconds"] = round(time.perf_counter() - start, 2)
        images.append(record)
    return {**info, "images": images}


def run_worker(task: str, env: Env, images: list[str], crop: int, rate: float, src: Path, dst: Path,
               precision: str = "float32", coarse_sigma: float = 0.0) -> dict:
    """Run one task in a fresh interpreter whose environment is `env` (variables must precede torch's import)."""
    dst.mkdir(parents=True, exist_ok=True)
    job_path = dst / f"{task}-job.json"
    job = {"task": task, "env": dataclasses.asdict(env), "images": images, "crop": crop, "rate": rate,
           "src": str(src), "dst": str(dst), "precision": precision,
           "coarse_sigma": coarse_sigma}
    job_path.write_text(json.dumps(job))
    variables = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES} | env.variables
    proc = subprocess.run([sys.executable, "-m", "pillow_psc.agreement", "--worker", str(job_path)], env=variables,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{task} worker for {env.name!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads((dst / f"{task}-result.json").read_text())


# -- the measurement ------------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _compare(decoded: dict, enc_dir: Path, dec_dir: Path, crop: int) -> dict:
    """Per image: the decode against the encoder's reconstruction and against the original."""
    name = decoded["name"]
    if "error" in decoded:
        return decoded
    original, recon = kodak_crop(name, crop), np.load(enc_dir / f"{name}.recon.npy")
    pixels = np.load(dec_dir / f"{name}.npy")
    ref, got = psnr(original, recon), psnr(original, pixels)
    return {**decoded, "identical": bool(np.array_equal(pixels, recon)),
            "max_abs_diff": int(np.abs(pixels.astype(np.int16) - recon).max()),
            "psnr_reference": round(ref, 3), "psnr": round(got, 3), "delta_psnr": round(got - ref, 3)}


def measure(images: list[str], crop: int, rate: float, out: Path, decoders: list[Env] | None = None,
            encoders: list[Env] | None = None, precision: str = "float32", coarse_sigma: float = 0.0) -> dict:
    """Encode in the reference (and in each of `encoders`), decode in each environment; write out/agreement.json.

    Rows: reference encoder x (reference decoder as the control, then each of `decoders`), then each encoder
    variant x reference decoder.
    """
    decoders = decoder_variants() if decoders is None else decoders
    encoders = encoder_variants() if encoders is None else encoders
    start, work, rows, versions = time.perf_counter(), out / "work", [], set()
    for encoder in [REFERENCE, *encoders]:
        enc_dir = work / f"enc-{_slug(encoder.name)}"
        encoded = run_worker("encode", encoder, images, crop, rate, enc_dir, enc_dir, precision, coarse_sigma)
        versions.add(encoded["torch"])
        for decoder in [REFERENCE, *decoders] if encoder is REFERENCE else [REFERENCE]:
            dec_dir = enc_dir / f"dec-{_slug(decoder.name)}"
            result = run_worker("decode", decoder, images, crop, rate, enc_dir, dec_dir)
            rows.append({"encoder": encoder.name, "decoder": decoder.name, "encoder_env": dataclasses.asdict(encoder),
                         "decoder_env": dataclasses.asdict(decoder), "capability": result["capability"],
                         "encoded": encoded["images"],
                         "images": [_compare(r, enc_dir, dec_dir, crop) for r in result["images"]]})
            print(f"{encoder.name} -> {decoder.name}: {outcome(rows[-1]['images'])}", file=sys.stderr, flush=True)
    report = {"images": images, "crop": crop, "rate": rate, "precision": precision, "coarse_sigma": coarse_sigma,
              "torch": ", ".join(sorted(versions)), "wall_seconds": round(time.perf_counter() - start, 1), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(report, indent=1))
    return report


def outcome(images: list[dict]) -> str:
    """One cell: how many decodes were bit-identical, where the check values stopped, what drifted silently."""
    n, parts = len(images), []
    errors = [i for i in images if "error" in i]
    if errors:
        parts.append(f"error on {len(errors)}/{n} ({errors[0]['error'][:80]})")
    good = [i for i in images if "error" not in i]
    parts.append(f"bit-identical on {sum(i['identical'] for i in good)}/{n}")
    desyncs = [f"{i['name']} at step {i['desync_step']} of {i['steps_present'] - 1}" for i in good
               if i["desync_step"] is not None]
    if desyncs:
        parts.append("desync: " + ", ".join(desyncs))
    silent = [i for i in good if not i["identical"] and i["desync_step"] is None]
    if silent:
        worst = max(i["max_abs_diff"] for i in silent)
        parts.append(f"silent drift on {len(silent)}/{n} (all steps decoded, max abs Δ {worst})")
    return "; ".join(parts)


def markdown(report: dict) -> str:
    """The Markdown table of a report."""
    lines = [f"{len(report['images'])} Kodak centre crops {report['crop']}x{report['crop']} "
             f"({', '.join(report['images'])}), rate {report['rate']} bpp, precision {report['precision']}, "
             f"coarse_sigma {report.get('coarse_sigma', 0.0)}, "
             f"torch {report['torch']}; "
             f"{report['wall_seconds']} s in all.", "",
             "| encoder env | decoder env | ATen ISA | outcome | max abs Δ px | ΔPSNR dB mean (worst) | decode s |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        good = [i for i in row["images"] if "error" not in i]
        deltas = [i["delta_psnr"] for i in good]
        delta = f"{np.mean(deltas):+.3f} ({min(deltas):+.3f})" if deltas else "–"
        diff = max((i["max_abs_diff"] for i in good), default="–")
        seconds = sum(i["seconds"] for i in row["images"])
        lines.append(f"| {row['encoder']} | {row['decoder']} | {row['capability']} | {outcome(row['images'])} "
                     f"| {diff} | {delta} | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pillow_psc.agreement", description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=list(DEFAULT_IMAGES))
    parser.add_argument("--crop", type=int, default=128, help="centre crop side, pixels")
    parser.add_argument("--rate", type=float, default=0.3, help="bits per pixel")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="denoiser arithmetic of the files")
    parser.add_argument("--coarse-sigma", type=float, default=0.0,
                        help="denoise noise levels from this one up at half resolution (efforts 1 and 2: 0.3)")
    parser.add_argument("--out", type=Path, default=Path("agreement-out"))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: a job file of run_worker
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker.read_text())
        result = _work(job)
        (Path(job["dst"]) / f"{job['task']}-result.json").write_text(json.dumps(result))
        return 0
    report = measure(args.images, args.crop, args.rate, args.out, precision=args.precision,
                     coarse_sigma=args.coarse_sigma)
    table = markdown(report)
    (args.out / "agreement.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
