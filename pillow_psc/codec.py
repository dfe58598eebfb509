"""The PSC loop (Elata, Michaeli & Elad 2024, Algorithms 1-2), shared by encoder and decoder.

Step 0 measures a fixed base: per tile, the block mean of each colour channel, coded as a 2-D DCT over the
tile grid. Every later step draws posterior samples given all measurements so far (windowed, seeded), takes
per-tile principal directions of the samples as candidate rows, keeps the globally most uncertain ones,
predicts each measurement from the sample mean, and codes the float8-quantized residual with an entropy model
whose spread comes from the samples. The decoder runs the same code and reads residuals instead of measuring.
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass, field, replace
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import entropy
from .container import PRECISIONS, DataChunk, Header, PSCFile, pack_chunk, read_file
from .errors import BudgetError, CorruptFileError, DesyncError, ModelMismatchError, NoDataError
from .priors import Prior, at_precision, canonical_model_id, load_prior
from .quantize import dequantize, float8_bytes, float8_values, quantize
from .rows import TileGrid, base_rows, dct_bands, dct_matrix, orthonormalise, principal_directions
from .samplers import at_half_resolution, karras_sigmas, sample_projected, upsample_bilinear, upsample_bilinear_v7

SAMPLER = "ddnm"
OUTPUT_STEP = 0xFFFF  # step id used to seed the final (output) sampling
DEFAULT_RATE = 0.2
_CHUNK_OVERHEAD = 12 + 12  # chunk frame + DATA fixed fields
ORTHONORMALISE_CHUNK_TILES = 512  # tiles orthonormalised together (bounds memory; results do not depend on it)
DOT_CHUNK_ROWS = 16384  # rows per float64 dot-product batch (bounds memory; results do not depend on it)


class Effort(NamedTuple):
    """What an encoder effort sets where the config leaves it at None (all of it lands in the header)."""

    samples: int  # posterior samples per step
    step_share: float  # share of the prior's sampler steps per sample
    output_samples: int  # samples averaged by the `mean` decode
    coarse: bool  # denoise at half resolution from the prior's coarse_sigma up
    rows: float  # new rows per tile per step (rows_per_step), chosen among samples - 1 directions per tile
    high_rate_samples: int  # samples per step from HIGH_RATE_BPP up: as many rows, chosen among more directions


#: Encoder effort, like cjxl's -e or avifenc's --speed. Samples x a share of the prior's sampler steps is the denoiser
#: evaluations per window and step. At 0.1 bpp (bfloat16) against 8 x 6, on the whole kodim02: 5 x 3 spent 31 % of the
#: evaluations for -1.90 dB, 5 x 4 47 % for -0.39 dB, 6 x 4 50 % for -0.37 dB, 8 x 3 44 % for -1.33 dB. Sampler steps
#: matter more than samples: on kodim19 and kodim23 (format 6) 4 x 4 measured +0.92 and +0.16 dB over 5 x 3 (3 x 4:
#: +0.54 and -0.33 dB). The output samples come in antithetic pairs (format 9): on whole Kodak photos at 0.1 and 0.2 bpp
#: (effort 1) 2 of them gained 0.03-0.06 dB over the 4 independent ones effort 1 had, 4 of them 0.03-0.08 dB; at efforts
#: 2 and 3 4 beat 8 independent ones by 0.02-0.03 dB, for half the output's evaluations (examples/results/RESULTS.md
#: "Antithetic output samples"). Effort 1 also denoises the first noise level at half resolution (format 7, `coarse`):
#: on 8 whole Kodak photos (float32, same machine) +0.11 dB (-0.00..+0.23) for about 19 % less encoder time; at a
#: threshold of 0.1 (two of its four levels) -0.17 / -0.22 dB on kodim23 / 19, and a quarter resolution for the first
#: level -0.49 / -0.07 dB. Effort 2 was 5 x 4 (only 0.03 dB above effort 1 on 8 whole photos); 4 x 6 with the
#: half-resolution level and 8 output samples measured, on all 24 Kodak photos at 0.1 bpp (float32), the default's
#: quality (-0.01 dB) for 58 % of its evaluations, +0.18 dB over effort 1 (20 of 24 better). Effort 3 was 8 x 6 at
#: full resolution taking 4 rows per tile (the default before format 10's encoder) and fell 0.08 dB below effort 2 on
#: all 24 photos at 0.05 bpp; it is now effort 2 with twice the sampler steps (4 x 12, the same 48 evaluations per
#: window and step as 8 x 6): at 0.05 bpp +0.10 dB over effort 2 on all 24 (better on 18, worse on none) for 2.1 times
#: its evaluations, +0.16 dB on all 24 at 0.1 bpp (21 better, 1 worse) and +0.15 / +0.18 / +0.37 dB on kodim19 / 23 / 08 at 0.2 bpp
#: (9 steps: +0.10 dB at 0.05 bpp on four photos). More: examples/results/RESULTS.md "Effort", "Effort 3: twice the
#: sampler steps".
EFFORTS = {1: Effort(4, 2 / 3, 2, True, 3.0, 6), 2: Effort(4, 1.0, 4, True, 3.0, 6),
           3: Effort(4, 2.0, 4, True, 3.0, 6)}
#: From this rate up, efforts take their high_rate_samples. At effort 1 and 0.2 bpp (whole Kodak photos, float32)
#: 6 samples whose 5 directions per tile compete for the 3 rows per tile that 4 samples' 3 directions fill outright
#: measured +0.30 dB on all 24 (better on 21, worse on none; +0.89 / +0.62 / +0.20 on kodim23 / 19 / 08) for 1.33
#: times the evaluations, +0.44 dB over WebP (6 samples taking 4 rows per tile: +0.75 / +0.58 / -0.14; 8 taking 4:
#: +1.07 / +0.50; 5 taking 4: -0.02 on kodim23; examples/results/RESULTS.md "More samples at 0.2 bpp"). Below it
#: effort 1 keeps 4, for the minute per photo at 0.1 bpp: 6 samples there measured only +0.14 dB on all 24 for 1.38
#: times the evaluations, while effort 2's six sampler steps of 4 samples gave +0.18 dB in the same time
#: ("More samples at 0.1 bpp"). Effort 2 with 6 samples at 0.2 bpp measured 28.86 dB on all 24, +0.18 dB over
#: effort 1 (better on 22, worse on 1) for 1.52 times its evaluations, +0.58 over its older 4-sample records
#: (24 of 24 better; +0.68 / +0.19 over 4 samples of the same encoder on kodim19 / 08), -0.23 dB against AVIF.
HIGH_RATE_BPP = 0.15
#: Effort 1 is the default since its steps' samples stop at the output's level (`auto_stop_sigma`): on all 24 whole
#: Kodak photos (float32) it is ahead of WebP at 0.05 / 0.1 / 0.2 bpp and at 0.1 bpp above the former effort 3's
#: records, for 30-40 % of its evaluations (about a minute per photo at 0.1 bpp on a 2-core Xeon); `--effort 2` buys
#: +0.10 / +0.18 / +0.18 dB at 0.05 / 0.1 / 0.2 bpp (all 24 photos) for 1.5 times its evaluations, `--effort 3` +0.20 dB
#: at 0.05 bpp and +0.35 dB at 0.1 bpp (all 24, format 10) for about 3 times (RESULTS.md, "The default effort", "Effort
#: 3: twice the sampler steps", "More samples at 0.2 bpp", "More samples at 0.1 bpp").
DEFAULT_EFFORT = 1
#: The output image is sampled once, so it can afford finer noise levels than the steps: its samples take this
#: many times the steps' sampler steps (format version 6). Against 4 samples x 6 steps, bfloat16: 8 x 12 (effort
#: 3's output_samples) gained 0.05-0.18 dB on five whole Kodak photos (mean +0.12), 4 x 24 -0.09..+0.17
#: (sharper samples need more of them in the mean on smooth photos); examples/results/RESULTS.md "Output sampling".
OUTPUT_STEPS_FACTOR = 2
#: Weight of the samplers' second-order term (format version 11, samplers.sample_projected): each level is re-noised
#: from the clean estimate pushed on along its last change, as DPM-Solver++(2M) does (1/2), instead of from the
#: estimate itself. Free in evaluations; it sharpens what the few large sampler steps of the efforts leave blurred.
#: Effort 1 on all 24 Kodak photos: +0.05 dB at 0.1 bpp (10 better, 1 worse), -0.00 at 0.05 bpp, +0.05 dB at 0.2 bpp
#: (10 better, none worse). On kodim19 at 0.1 bpp 0.3 gained +0.18 dB, 1/2 +0.21, 1 -1.09, and 1/2 lost 0.02-0.06 dB on
#: three photos where 0.3 lost nothing (RESULTS.md, "A second-order sampler").
EXTRAPOLATION = 0.3


@dataclass
class CodecConfig:
    """Encoder settings; every value that the decoder needs is written to the header."""

    effort: int = DEFAULT_EFFORT  # a key of EFFORTS: sets what is left at None below
    samples: int | None = None  # posterior samples per step (s); at most s-1 new rows per tile per step; None: by
    # effort and rate (effort_samples)
    sampler_steps: int | None = None  # denoiser evaluations per sample
    eta: float = 1.0
    extrapolation: float = EXTRAPOLATION  # the sampler's second-order term (samplers.sample_projected); 0: first order
    output_samples: int | None = None  # samples averaged by the `mean` decode; None: by effort
    output_sampler_steps: int | None = None  # per output sample; None: OUTPUT_STEPS_FACTOR x sampler_steps
    coarse_sigma: float | None = None  # denoise at half resolution from this noise level up; 0: never; None: by effort
    rows_per_step: tuple[float, ...] | None = None  # new rows per tile at each step, the last value repeating;
    # None: by effort
    delta: float | None = None  # quantizer step in signal units; None: auto_delta(rate, texture)
    tile: int | None = None  # None: the prior's default
    window: int = 32  # sampling window core, tiles
    margin: int = 2  # sampling window margin, tiles
    sigma_max: float | None = None
    sigma_min: float | None = None  # where the steps' and `sample` output's samples stop; None: auto_stop_sigma,
    # 0: the prior's sigma_min (the paper's)
    mean_sigma_min: float | None = None  # where the `mean` output's samples stop; None: auto_stop_sigma; 0: sigma_min
    base_share: float = 0.3  # the base layer may use at most this share of the budget (coarser step if needed)
    max_steps: int = 4096
    coding: str = "innovation"  # "raw": the paper's unscaled float8 byte per measurement (PSC.md §6.11)
    precision: str = "float32"  # "bfloat16": ~3.6x faster denoiser on AMX CPUs, decodes fully only there (§11)


#: The paper's method (Elata et al. 2024, pixel-space setup) on this codec: 16 samples, 25 sampler steps, eta 1,
#: the low-distortion output as the mean of 64 samples (32 antithetic pairs from format 9, PSC.md §6.9: at 64
#: samples their scatter is small either way) of samples that run down to the prior's sigma_min at full resolution,
#: and every measurement sent as one raw float8 byte (no prediction, no entropy model). Kept for comparison (`psc
#: bench`, `psc encode --paper`).
PAPER_CONFIG = CodecConfig(samples=16, sampler_steps=25, eta=1.0, output_samples=64, output_sampler_steps=25,
                           sigma_min=0, mean_sigma_min=0, coarse_sigma=0.0, extrapolation=0.0, coding="raw")


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8, (H, W) or (H, W, C); alpha last when present
    header: Header
    steps_present: int
    steps_decoded: int
    truncated: bool
    desync_step: int | None = None
    evaluations: int = 0  # denoiser evaluations spent decoding


@dataclass
class _Proposal:
    """Candidate rows of one step, most uncertain first (identical on both sides)."""

    tile_of: torch.Tensor  # (R,) long
    rows: torch.Tensor  # (R, dim) float32, orthonormalised
    mean: np.ndarray  # (R,) predicted measurement
    sigma: np.ndarray  # (R,) predicted spread (before the per-step scale)
    usable: np.ndarray  # (R,) bool: rows that survived orthonormalisation

    def check(self, count: int, delta: float) -> int:
        """CRC-32 of what chose the first `count` rows: their tiles and snapped spreads."""
        tiles = self.tile_of[:count].numpy().astype("<i4").tobytes()
        levels = entropy.scale_levels(self.sigma[:count] / delta).astype("<i2").tobytes()
        return zlib.crc32(tiles + levels)


class SensingState:
    """Everything both sides know: the prior, the geometry, and the rows and quantized measurements so far."""

    def __init__(self, header: Header, prior: Prior, progress: bool = False):
        self.header, self.prior, self.device = header, prior, prior.device
        ds = prior.downscale
        self.grid = TileGrid(prior.channels, math.ceil(header.height / ds), math.ceil(header.width / ds), header.tile)
        self.mask = self.grid.masks(self.device)
        upsample = upsample_bilinear_v7 if header.version == 7 else upsample_bilinear
        self._denoise = at_half_resolution(at_precision(prior.denoiser(header.prompt), header.precision),
                                           header.coarse_sigma, upsample)
        self.evaluations = 0  # denoiser evaluations (images through the network), for benchmarks
        self.step_sigmas = karras_sigmas(header.sampler_steps, header.sigma_max, header.sigma_min)
        self.row_blocks: list[torch.Tensor] = []  # (rows, dim) per add(): appended, never copied into one array
        self.tile_of = torch.zeros(0, dtype=torch.long)
        self.meas = torch.zeros(0, device=self.device)
        self.progress = progress

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.evaluations += x.shape[0]
        return self._denoise(x, sigma)

    # -- geometry -------------------------------------------------------------------------------------------
    def windows(self) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """(core, region) tile ranges (y0, y1, x0, x1) in raster order; regions add the margin."""
        g, w, m = self.grid, self.header.window, self.header.margin
        for cy in range(0, g.rows_of_tiles, w):
            for cx in range(0, g.cols_of_tiles, w):
                core = (cy, min(cy + w, g.rows_of_tiles), cx, min(cx + w, g.cols_of_tiles))
                yield core, (max(cy - m, 0), min(cy + w + m, g.rows_of_tiles), max(cx - m, 0),
                             min(cx + w + m, g.cols_of_tiles))

    def _tile_ids(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return (torch.arange(y0, y1)[:, None] * self.grid.cols_of_tiles + torch.arange(x0, x1)[None]).flatten()

    def rows_of_tiles(self, tile_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and measurements of the given tiles, zero-padded: (n, K, dim) and (n, K)."""
        local = torch.full((self.grid.count,), -1, dtype=torch.long)
        local[tile_ids] = torch.arange(len(tile_ids))
        lid = local[self.tile_of]
        sel = torch.nonzero(lid >= 0).flatten()
        order = torch.argsort(lid[sel], stable=True)
        sel, lid = sel[order], lid[sel][order]
        counts = torch.bincount(lid, minlength=len(tile_ids))
        slot = torch.arange(len(sel)) - (torch.cumsum(counts, 0) - counts)[lid]
        k = int(counts.max()) if len(sel) else 0
        rows = torch.zeros(len(tile_ids), k, self.grid.dim, device=self.device)
        meas = torch.zeros(len(tile_ids), k, device=self.device)
        meas[lid, slot] = self.meas[sel]
        start = 0
        for block in self.row_blocks:
            inside = (sel >= start) & (sel < start + len(block))
            rows[lid[inside], slot[inside]] = block[sel[inside] - start]
            start += len(block)
        return rows, meas

    def add(self, tile_of: torch.Tensor, rows: torch.Tensor, meas: np.ndarray) -> None:
        self.tile_of = torch.cat([self.tile_of, tile_of])
        self.row_blocks.append(rows.to(self.device))
        self.meas = torch.cat([self.meas, torch.as_tensor(meas, dtype=torch.float32, device=self.device)])

    # -- posterior sampling ---------------------------------------------------------------------------------
    def _sample_region(self, region: tuple[int, int, int, int], n: int, step: int, index: int,
                       sigmas: list[float]) -> torch.Tensor:
        """n posterior samples of one window region, over the noise levels `sigmas`, as tiles (region tiles, n, dim)."""
        y0, y1, x0, x1 = region
        ry, rx, t = y1 - y0, x1 - x0, self.grid.tile
        rows, meas = self.rows_of_tiles(self._tile_ids(*region))

        def project(x: torch.Tensor) -> torch.Tensor:
            tiles = self.grid.to_tiles(x)
            tiles = tiles + (meas[:, None, :] - tiles @ rows.transpose(1, 2)) @ rows
            return self.grid.from_tiles(tiles, ry, rx)

        shape = (self.grid.channels, ry * t, rx * t)
        # from version 9 the output's odd samples mirror the noise of the sample before them (antithetic pairs):
        # their mean cancels the noise's first-order effect, so 2 such samples beat 8 independent ones
        mirrored = step == OUTPUT_STEP and self.header.version >= 9
        gens = [None if mirrored and j % 2 else
                torch.Generator().manual_seed(_derive_seed(self.header.seed, step, index, j)) for j in range(n)]

        def noise(_: int) -> torch.Tensor:
            draws: list[torch.Tensor] = []
            for g in gens:
                draws.append(-draws[-1] if g is None else torch.randn(shape, generator=g))
            return torch.stack(draws).to(self.device)

        start = project(torch.full((1, *shape), self.prior.signal_mean, device=self.device)).expand(n, *shape)
        with torch.no_grad():
            samples = sample_projected(self.denoise, project, start, sigmas, noise, self.header.eta,
                                       self.header.extrapolation)
        return self.grid.to_tiles(samples)

    def _sample_all(self, n: int, step: int, sigmas: list[float]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (core tile ids, core tiles (k, n, dim)) for every window."""
        for index, (core, region) in enumerate(self.windows()):
            tiles = self._sample_region(region, n, step, index, sigmas)
            ids = self._tile_ids(*region)
            keep = torch.isin(ids, self._tile_ids(*core))
            yield ids[keep], tiles[keep.to(tiles.device)]

    def propose(self, step: int) -> _Proposal:
        """Candidate rows for `step` >= 1: per-tile principal directions, globally sorted by snapped spread."""
        g, s = self.grid, self.header.samples
        means = torch.zeros(g.count, g.dim, device=self.device)
        dirs = torch.zeros(g.count, s - 1, g.dim, device=self.device)
        spread = torch.zeros(g.count, s - 1, device=self.device)
        for ids, tiles in self._sample_all(s, step, self.step_sigmas):
            means[ids], dirs[ids], spread[ids] = principal_directions(tiles)
        rate = step_rows(self.header.rows_per_step, step)
        count = min(max(1, round(rate * g.count)), g.count * (s - 1))
        # version 2 ranks by snapped level, not raw spread: float drift between machines below one level step
        # cannot reorder the candidates (drift across a level changes the check value and is detected)
        key = spread.flatten().cpu()
        if self.header.version >= 2:
            key = torch.from_numpy(entropy.scale_levels(key.double().numpy() / self.header.delta))
        order = torch.argsort(key, descending=True, stable=True)[:count]
        tile_of, cand = order // (s - 1), order % (s - 1)
        rows, usable = self._orthonormalise(tile_of, dirs[tile_of, cand])
        del dirs  # (tiles, s-1, dim) is the largest temporary: free it before the dot products
        mean = row_dots(rows, means, tile_of)
        return _Proposal(tile_of, rows, mean, spread[tile_of, cand].double().cpu().numpy(),
                         usable.cpu().numpy())

    def _orthonormalise(self, tile_of: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Orthonormalise new rows against their tile's rows and the new rows ahead of them in the list.

        Tiles are independent, so they go in chunks: the (tiles, rows per tile, dim) float64 temporaries stay
        bounded on large images instead of growing with the whole image.
        """
        out = torch.zeros_like(new)
        usable = torch.zeros(len(tile_of), dtype=torch.bool, device=self.device)
        for chunk in torch.split(torch.unique(tile_of), ORTHONORMALISE_CHUNK_TILES):
            pick = torch.nonzero(torch.isin(tile_of, chunk)).flatten()  # ascending: list order is kept
            out[pick], usable[pick] = self._orthonormalise_tiles(tile_of[pick], new[pick])
        return out, usable

    def _orthonormalise_tiles(self, tile_of: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uniq, inverse = torch.unique(tile_of, return_inverse=True)
        existing, _ = self.rows_of_tiles(uniq)  # float32: orthonormalise() widens only the rows it uses
        counts = torch.bincount(inverse, minlength=len(uniq))
        order = torch.argsort(inverse, stable=True)
        slot = torch.empty_like(inverse)  # how many of the tile's candidates come before this one
        slot[order] = torch.arange(len(inverse)) - (torch.cumsum(counts, 0) - counts)[inverse[order]]
        added = torch.zeros(len(uniq), int(counts.max()), self.grid.dim, device=self.device)
        out = torch.zeros_like(new)
        usable = torch.zeros(len(tile_of), dtype=torch.bool, device=self.device)
        for j in range(int(counts.max())):
            sel = torch.nonzero(slot == j).flatten()
            u = inverse[sel]
            basis = torch.cat([existing[u], added[u, :j]], 1)
            rows, ok = orthonormalise(new[sel], basis, self.mask[tile_of[sel]])
            rows = rows * ok[:, None]
            out[sel], usable[sel], added[u, j] = rows, ok, rows
        return out, usable

    # -- output ---------------------------------------------------------------------------------------------
    def reconstruct(self, mode: str = "mean") -> np.ndarray:
        """Pixels (H, W, C) uint8 from the current measurements: sample mean or one posterior sample."""
        if mode not in ("mean", "sample"):
            raise ValueError(f"decode mode must be 'mean' or 'sample', not {mode!r}")
        g, h = self.grid, self.header
        n = h.output_samples if mode == "mean" else 1
        # from version 10 the averaged samples stop at a higher noise level (mean_sigma_min): their last denoised
        # estimate is already a conditional mean, so the average keeps less of the samples' own scatter (§6.12)
        lowest = h.mean_sigma_min if mode == "mean" else h.sigma_min
        sigmas = karras_sigmas(h.output_sampler_steps, h.sigma_max, lowest)
        signal = torch.zeros(g.count, g.dim, device=self.device)
        for ids, tiles in self._sample_all(n, OUTPUT_STEP, sigmas):
            signal[ids] = tiles.mean(1)
        signal = g.from_tiles(signal[:, None], g.rows_of_tiles, g.cols_of_tiles)[:, :, :g.height, :g.width]
        with torch.no_grad():
            pixels = self.prior.to_pixels(signal, h.height, h.width)
        pixels = (pixels[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        if h.channels == 1 and pixels.shape[2] == 3:
            pixels = np.rint(pixels.astype(np.float64).mean(2, keepdims=True)).astype(np.uint8)
        return pixels


def row_dots(rows: torch.Tensor, tiles: torch.Tensor, tile_of: torch.Tensor) -> np.ndarray:
    """<rows[i], tiles[tile_of[i]]> in binary64, a batch of rows at a time (no full-size float64 copies)."""
    out = np.zeros(len(rows))
    for start in range(0, len(rows), DOT_CHUNK_ROWS):
        part = slice(start, start + DOT_CHUNK_ROWS)
        picked = tiles[tile_of[part].to(tiles.device)]
        out[part] = (rows[part].double() * picked.to(rows.device).double()).sum(-1).cpu().numpy()
    return out


def _derive_seed(seed: int, step: int, window: int, sample: int) -> int:
    digest = hashlib.sha256(struct.pack(">QIII", seed, step, window, sample)).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# -- base layer (step 0) --------------------------------------------------------------------------------------
class _BaseLayout(NamedTuple):
    """What both sides derive from the geometry alone for step 0."""

    rows: torch.Tensor  # (tiles*C, dim): tile t's C rows at t*C .. t*C+C-1
    tile_of: torch.Tensor  # (tiles*C,)
    prediction: np.ndarray  # (tiles, C) measurement of a flat signal_mean image
    bands: np.ndarray  # DCT band of each tile-grid coefficient
    dy: np.ndarray  # DCT matrices over tile rows and tile columns
    dx: np.ndarray


def _base_layout(state: SensingState) -> _BaseLayout:
    g = state.grid
    rows = base_rows(g, state.device).reshape(-1, g.dim)  # tile t's C rows at t*C .. t*C+C-1
    tile_of = torch.arange(g.count).repeat_interleave(g.channels)
    prediction = row_dots(rows, torch.ones(1, g.dim, device=state.device), torch.zeros_like(tile_of))
    prediction = (prediction * state.prior.signal_mean).reshape(g.count, g.channels)
    bands = dct_bands(g.rows_of_tiles, g.cols_of_tiles)
    return _BaseLayout(rows, tile_of, prediction, bands, dct_matrix(g.rows_of_tiles), dct_matrix(g.cols_of_tiles))


def _base_params(delta_code: int, levels: np.ndarray) -> bytes:
    return struct.pack(">b", delta_code) + levels.astype(np.int8).tobytes()


def _base_apply(state: SensingState, layout: _BaseLayout, symbols: np.ndarray, delta: float) -> None:
    """Dequantize the base DCT coefficients, add the tiles' rows and measurements to the state."""
    g = state.grid
    coef = dequantize(symbols, delta).reshape(g.channels, g.rows_of_tiles, g.cols_of_tiles)
    resid = np.einsum("ij,cjk,lk->cil", layout.dy.T, coef, layout.dx.T).reshape(g.channels, g.count).T
    state.add(layout.tile_of, layout.rows, (layout.prediction + resid).reshape(-1))


def _base_levels(bands: np.ndarray, band_levels: np.ndarray, channels: int) -> np.ndarray:
    return np.stack([band_levels[c][bands] for c in range(channels)]).reshape(-1)


def _base_check(state: SensingState) -> int:
    g = state.grid
    return zlib.crc32(struct.pack(">IIII", g.channels, g.rows_of_tiles, g.cols_of_tiles, g.tile))


def _encode_base(state: SensingState, signal_tiles: torch.Tensor, budget: int, share: float) -> DataChunk:
    g, delta = state.grid, state.header.delta
    layout = _base_layout(state)
    rows, tile_of, prediction, bands, dy, dx = layout
    meas = row_dots(rows, signal_tiles, tile_of).reshape(g.count, g.channels)
    resid = (meas - prediction).T.reshape(g.channels, g.rows_of_tiles, g.cols_of_tiles)
    coef = np.einsum("ij,cjk,lk->cil", dy, resid, dx)
    n_bands = int(bands.max()) + 1
    # Prefer a base within `share` of the budget; for tiny budgets let it take everything.
    for allowed in (int(budget * share) - _CHUNK_OVERHEAD, budget - _CHUNK_OVERHEAD):
        for delta_code in range(0, 128, 2):
            step = delta * 2.0 ** (delta_code / 4)
            rms = np.stack([[np.sqrt(np.mean(coef[c][bands == b] ** 2)) for b in range(n_bands)]
                            for c in range(g.channels)])
            band_levels = np.clip(entropy.scale_levels(rms / step), -128, 127)
            symbols = quantize(coef, step).reshape(-1)
            words = entropy.encode(symbols, _base_levels(bands, band_levels, g.channels))
            params = _base_params(delta_code, band_levels)
            if len(words) + len(params) <= allowed:
                _base_apply(state, layout, symbols, step)
                return DataChunk(0, g.count * g.channels, _base_check(state), params, words)
    raise BudgetError(f"{budget} bytes left for data cannot hold the base layer; raise rate/max_bytes")


def _decode_base(state: SensingState, chunk: DataChunk) -> None:
    g = state.grid
    layout = _base_layout(state)
    bands = layout.bands
    n_bands = int(bands.max()) + 1
    if len(chunk.params) != 1 + g.channels * n_bands or chunk.rows != g.count * g.channels:
        raise CorruptFileError("base DATA chunk does not match the image geometry")
    if chunk.check != _base_check(state):
        raise CorruptFileError("base DATA chunk check value does not match the image geometry")
    delta_code = struct.unpack(">b", chunk.params[:1])[0]
    band_levels = np.frombuffer(chunk.params[1:], dtype=np.int8).reshape(g.channels, n_bands).astype(np.int64)
    symbols = entropy.decode(chunk.words, _base_levels(bands, band_levels, g.channels))
    _base_apply(state, layout, symbols, state.header.delta * 2.0 ** (delta_code / 4))


# -- adaptive steps -------------------------------------------------------------------------------------------
AUTO_DELTA_MIN = 0.05  # the smallest automatic first step
TAIL_SHARE = 0.4  # later, refined when off pace (pace_steps) or when further chunks could not spend this share,
REFINE_CODES = 2  # ... by this many delta codes: a factor 2^(1/2)
FINEST_DELTA_CODE = -64  # and never below delta * 2^-16
RD_LAMBDA = 0.06  # rate-distortion optimised quantization: squared error (in delta^2) that one bit is worth,
SCALE_SEARCH = 4  # ... judged at the calibrated spread-scale code and this many codes below it (`_rd_quantize`)
_ZERO_SYMBOL = int(quantize(np.zeros(1), 1.0)[0])


def automatic_step(bits_per_pixel: float) -> float:
    """The first adaptive step's quantizer step for a rate, before the photo's texture moves it (`auto_delta`).

    Coarse steps make each row cheap, so more rows fit. Measured on four Kodak 256 px crops against the former
    fixed 0.14: 0.8 is best at 0.05 and 0.1 bpp (+0.2 / +0.85 dB), 0.4-0.56 at 0.2 bpp (+1.1 dB). Hence
    0.08 / bpp, at most 0.8.
    """
    return float(np.clip(0.08 / bits_per_pixel, AUTO_DELTA_MIN, 0.8))


def auto_delta(bits_per_pixel: float, texture: float) -> float:
    """The quantizer step of the first adaptive step for a rate and a photo's `block_texture` (encoder choice;
    written to the header): the `automatic_step`, moved by the texture where whole photos measured better.

    Smooth content needs finer steps (most innovations fall below a coarse one): from TEXTURE_RATE_BPP on, a photo
    whose texture is below SMOOTH_TEXTURE starts at half the step, exactly where the test for starting again
    (`_start_finer`) would send it after two steps spent. Busy content at low rates needs coarser ones: below
    TEXTURE_RATE_BPP, a photo whose texture is at least BUSY_TEXTURE starts one refinement coarser (x 2^(1/2)),
    so that its budget buys more, cheaper rows over more steps. Others adapt step by step (`_encode_with_delta`).
    """
    step = automatic_step(bits_per_pixel)
    if bits_per_pixel >= TEXTURE_RATE_BPP:
        return half_step(step) if texture < SMOOTH_TEXTURE else step
    return step_delta(step, REFINE_CODES) if texture >= BUSY_TEXTURE else step


def auto_stop_sigma(prior: Prior, bits_per_pixel: float, texture: float) -> float:
    """Where the encoder's samples stop unless the config says (written to the header as sigma_min and
    mean_sigma_min): the prior's `stop_sigma`, halved from TEXTURE_RATE_BPP on for a photo below SMOOTH_TEXTURE.

    A sample that stops at noise level σ is a conditional mean of the detail finer than σ. The average of a few
    such samples keeps less of their scatter (the `mean` output), and the principal directions of a few of them
    follow the structure the measurements leave open rather than fine detail no row can pin (the steps); their
    few sampler steps are also spent at levels where the denoiser changes the estimate. Where the measurements pin
    the content tightly (smooth photos at the higher rates) stopping early blurs what they imply. On whole Kodak
    photos (examples/results/RESULTS.md "Where the samples stop") textured ones were best at about 24/255, smooth
    ones at 12-16/255 at 0.1 and 0.2 bpp.
    """
    if prior.stop_sigma is None:
        return prior.sigma_min
    smooth = bits_per_pixel >= TEXTURE_RATE_BPP and texture < SMOOTH_TEXTURE
    return prior.stop_sigma / 2 if smooth else prior.stop_sigma


def half_step(delta: float) -> float:
    """The automatic step an encode starts again at, and a smooth photo starts at: half, down to AUTO_DELTA_MIN."""
    return max(delta / 2, AUTO_DELTA_MIN)


#: Below this `block_texture` a photo starts at half the automatic step (and its samples stop at half the prior's
#: level: `auto_stop_sigma`). On the 24 Kodak photos the 10 below it (0.059-0.078; the other 14:
#: 0.089-0.164) all started again at 0.1 bpp at every effort, gaining 0.36-1.01 dB at effort 1 (both choices
#: encoded: examples/results/RESULTS.md "Smooth photos start at half the step").
SMOOTH_TEXTURE = 0.085
#: From this `block_texture` on a photo starts one refinement above the automatic step below TEXTURE_RATE_BPP. At
#: 0.05 bpp the 5 Kodak photos at or above it (0.104-0.164) gained 0.02-0.29 dB at effort 1, the 9 other textured
#: ones (0.089-0.099) lost 0.01-0.12 (examples/results/RESULTS.md "Busy photos start coarser at low rates").
BUSY_TEXTURE = 0.1
#: The smooth rule holds from this rate on, the busy one below it. Smooth photos were measured at 0.1 and 0.2 bpp,
#: and at 0.05 bpp starting at half lost on 9 of their 10 (effort 1); busy ones gained at 0.05 bpp and lost at 0.1
#: (kodim01 -0.30, kodim05 -0.03 dB, effort 1). Set midway.
TEXTURE_RATE_BPP = 0.075
TEXTURE_BLOCK = 16  # pixels: FFDNet's tile, the base layer's block means
TEXTURE_BAND_VALUES = 1 << 22  # pixel values per pass of block_texture (32 MiB as float64)


def block_texture(colour: np.ndarray) -> float:
    """RMS of the pixels (0..1) about the means of their TEXTURE_BLOCK-square blocks: the detail that the base
    layer's block means leave to the adaptive steps. Whole blocks only; a side shorter than a block is one block.
    Bands of block rows keep the float copy small on huge images (a 2^28-pixel one would need 6 GiB at once)."""
    h, w, channels = colour.shape
    by, bx = min(TEXTURE_BLOCK, h), min(TEXTURE_BLOCK, w)
    rows, cols = h // by, w // bx
    band = max(1, TEXTURE_BAND_VALUES // (by * cols * bx * channels))
    squares = 0.0
    for top in range(0, rows, band):
        n = min(band, rows - top)
        blocks = colour[top * by:(top + n) * by, :cols * bx].astype(np.float64).reshape(n, by, cols, bx, channels)
        squares += float(np.sum((blocks - blocks.mean(axis=(1, 3), keepdims=True)) ** 2))
    return math.sqrt(squares / (rows * by * cols * bx * channels)) / 255


def pace_steps(bits_per_pixel: float) -> float:
    """How many steps an automatic quantizer step may take to spend the budget before it is refined (`_off_pace`).

    Coarse steps give more, cheaper rows and more adaptive steps, but every step costs the same evaluations.
    Measured on whole Kodak photos (bfloat16) against the former 12: at 0.05 and 0.1 bpp a pace of 8 gave about
    the same PSNR (kodim02, 09, 10, 15, 17, 19: -0.08..+0.03 dB) with a third fewer evaluations (768 instead of
    960-1152); at 0.2 bpp it cost 0.07-0.29 dB (kodim03, 07, 09, 11, 19). Hence 8 up to 0.1 bpp, 12 from 0.2 bpp,
    linear between (not measured there).
    """
    return float(np.clip(40 * bits_per_pixel + 4, 8, 12))


#: New rows per tile per step where the test for starting again was measured (efforts 1 and 2: 4 samples give 3
#: principal directions per tile)
RESTART_PACE_ROWS = 3


def step_rows(rows_per_step: Sequence[float], step: int) -> float:
    """New rows per tile that adaptive step `step` (>= 1) asks for: the header's list, its last value repeating."""
    return rows_per_step[min(step, len(rows_per_step)) - 1]


def restart_pace(bits_per_pixel: float, samples: int, rows_per_step: Sequence[float]) -> float:
    """The steps `_start_finer` allows: `pace_steps` counted in rows per tile, so that the test reads the content,
    not the effort. The second step's rows per tile are its rows_per_step, at most the samples - 1 directions.

    A step of 4 rows per tile (8 samples, as effort 3 took before) meets a pace counted in steps 1.4-1.6x sooner;
    counted in steps, the test kept the step on photos that gain by starting again. Counted in rows (6 steps up to
    0.1 bpp, 9 at 0.2 bpp at 4 rows per tile), measured with both choices on the 11 Kodak photos it changes (float32,
    examples/results/RESULTS.md "Starting again, at effort 3"): at 0.1 bpp +0.21 dB mean over 6 photos (kodim09, 10,
    17, 20: +0.44..+0.81; kodim06, 19 at 6.3 and 6.2 steps: -0.32, -0.96) for 480-576 encoder evaluations instead of
    768 (fewer, larger steps); at 0.2 bpp +0.64 over 4 (-0.02..+1.20). The refinement (`_off_pace`) keeps
    `pace_steps`, which was set at effort 3.
    """
    rows_per_tile = min(step_rows(rows_per_step, 2), samples - 1)
    return pace_steps(bits_per_pixel) * RESTART_PACE_ROWS / rows_per_tile


def step_delta(delta: float, delta_code: int) -> float:
    """Quantizer step of an adaptive step: the header's delta times 2^(delta_code/4) (PSC.md §6.11)."""
    return delta * 2.0 ** (delta_code / 4)


def _scale_code(z: np.ndarray) -> int:
    """Per-step calibration of the samples' spread: rms of residual/sigma, as 2^(code/8)."""
    rms = float(np.sqrt(np.mean(z * z))) if len(z) else 1.0
    return int(np.clip(np.rint(8 * np.log2(max(rms, 1e-6))), -64, 127))


def _levels(prop: _Proposal, code: int, delta: float) -> np.ndarray:
    return entropy.scale_levels(prop.sigma * 2.0 ** (code / 8) / delta)


class _Coded(NamedTuple):
    """One step's coding: the rows used (a prefix of the candidates), params, range-coded words, measurements."""

    count: int
    params: bytes
    words: bytes
    meas: np.ndarray


def _tail(step_bytes: list[int]) -> float:
    """Bytes that all further chunks would hold if the last two chunks' ratio r went on: last * r / (1 - r)."""
    ratio = step_bytes[-1] / step_bytes[-2] if len(step_bytes) > 1 else 1.0
    return step_bytes[-1] * ratio / (1 - ratio) if ratio < 1 else math.inf


def _steps_at_last_size(step_bytes: list[int], remaining: int) -> float:
    """The steps an encode would take if every further chunk had the last one's size."""
    return len(step_bytes) + remaining / step_bytes[-1]


def _start_finer(step_bytes: list[int], remaining: int, pace: float) -> bool:
    """Whether an automatic quantizer step is so coarse for the content that the encode should start again at half
    of it: judged after two adaptive steps, when at the second chunk's size the budget would take more than `pace`
    steps (`restart_pace`). Later steps that fall off pace are refined instead (`_off_pace`). Smooth photos, which
    this test sent to half the step at 0.1 bpp every time, start there (`auto_delta`) and spare its two steps.

    On smooth content a coarse step leaves most innovations below it, so each chunk is small. Measured with both
    choices forced on all 24 whole Kodak photos (effort 1, float32; `examples/restart_study.py`,
    examples/results/RESULTS.md "Starting again"): at 0.1 bpp (pace 8) the 7 photos on pace would all have lost
    (0.14-0.88 dB) and 13 of the 17 off pace gained (0.07-1.01 dB); at 0.2 bpp (pace 12) the 12 photos under 11
    steps would all have lost (0.03-1.24 dB), while near the pace neither choice is safe (kodim19 at 11.4 steps
    loses 1.04 dB, kodim09 at 11.3 gains 0.42). That is 0.05 dB above the former test (a geometric tail of the
    chunk sizes under a quarter of the rest) at both rates, and 0.03-0.04 dB below the better choice per photo.
    Two steps are the price of the test.
    """
    return len(step_bytes) == 2 and _steps_at_last_size(step_bytes, remaining) > pace


def _off_pace(step_bytes: list[int], remaining: int, pace: float) -> bool:
    """Whether the automatic quantizer step is too coarse to spend the remaining budget in time (§12).

    Two signs, read after each step: at the last chunk's size the rest would take the encode past `pace` steps
    (`pace_steps`), or the chunks shrink so fast that their tail is under TAIL_SHARE of the rest. A chunk that took
    all but its own size of the budget ends the encode and says nothing.
    """
    if remaining <= step_bytes[-1]:
        return False
    return _steps_at_last_size(step_bytes, remaining) > pace or _tail(step_bytes) < TAIL_SHARE * remaining


def _encode_step(state: SensingState, step: int, signal_tiles: torch.Tensor, budget: int,
                 delta_code: int, refine: bool) -> tuple[DataChunk, int] | None:
    """Code the next step into at most `budget` bytes (chunk included): the chunk and the delta code it used, or
    None when nothing fits. With `refine`, a step at which nothing can be coded (the samples pin the image below
    the quantizer step, or no row fits) is coded at finer steps, REFINE_CODES apart, down to FINEST_DELTA_CODE."""
    if budget < _CHUNK_OVERHEAD + 2 + 8:
        return None
    prop = state.propose(step)
    truth = row_dots(prop.rows, signal_tiles, prop.tile_of)
    coded = None
    if state.header.coding == "raw":
        coded = _code_raw(prop, truth, budget - _CHUNK_OVERHEAD)
    else:
        for code in range(delta_code, FINEST_DELTA_CODE - 1, -REFINE_CODES) if refine else [delta_code]:
            coded = _code_innovation(prop, truth, budget - _CHUNK_OVERHEAD, step_delta(state.header.delta, code),
                                     code)
            if coded is not None:
                delta_code = code
                break
    if coded is None:
        return None
    ok = prop.usable[:coded.count]
    state.add(prop.tile_of[:coded.count][ok], prop.rows[:coded.count][torch.from_numpy(ok)], coded.meas[ok])
    return DataChunk(step, coded.count, prop.check(coded.count, state.header.delta), coded.params,
                     coded.words), delta_code


def _code_innovation(prop: _Proposal, truth: np.ndarray, allowed: int, delta: float,
                     delta_code: int) -> _Coded | None:
    """Residuals against the samples' prediction, float8-quantized with step `delta` (the header's delta at
    `delta_code`), range-coded (§6.11). None when nothing useful fits."""
    resid = truth - prop.mean
    ok = prop.usable
    code = _scale_code(resid[ok] / np.maximum(prop.sigma[ok], 1e-12))
    if not np.any(ok & (prop.sigma * 2.0 ** (code / 8) > delta / 4)):
        return None  # the image is pinned down to below the quantizer step: more rows cannot help
    symbols, levels, code = _rd_quantize(prop, resid, delta, code)
    bits = np.zeros(len(symbols))
    bits[ok] = entropy.cost_bits(symbols[ok], levels[ok])
    params = struct.pack(">bb", code, delta_code)
    allowed -= len(params)
    count = int(np.searchsorted(np.ceil(np.cumsum(bits) / 32) * 4 + 4, allowed, side="right"))
    while count > 0:
        words = entropy.encode(symbols[:count][ok[:count]], levels[:count][ok[:count]])
        if len(words) <= allowed:
            break
        count = int(count * 0.95)
    if count == 0 or not ok[:count].any():
        return None
    return _Coded(count, params, words, prop.mean[:count] + dequantize(symbols[:count], delta))


def _rd_quantize(prop: _Proposal, resid: np.ndarray, delta: float,
                 calibrated: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Symbols, their tables' levels and the spread-scale code that minimise squared error + RD_LAMBDA * bits
    (error in units of delta) over the usable rows; an encoder choice, the decoder reads the result.

    Each residual is rounded to the nearest float8 value or one cell toward zero, whichever costs less: for rows
    whose spread is below the quantizer step a nonzero symbol costs several bits for little error. The zeros this
    adds make a narrower table (a scale code below the calibrated one) cheaper, so a few codes are tried. On four
    320 px Kodak crops at 0.1 and 0.2 bpp (bfloat16) lambda 0.06 with 4 codes gained 0.03-0.38 dB, mean +0.12,
    over rounding to nearest; 0.12 gained +0.11 (one crop -0.35), 0.2 +0.05 (more steps, losses at 0.1 bpp).
    Whole photos: +0.21 dB on 10 at 0.1 bpp, +0.16 dB on 12 at 0.2 bpp (examples/results/RESULTS.md
    "Rate–distortion optimised quantization").
    """
    ok = prop.usable
    nearest = quantize(resid, delta)
    toward = nearest - np.sign(nearest - _ZERO_SYMBOL)
    best = None
    for code in range(calibrated, calibrated - SCALE_SEARCH - 1, -1):
        levels = _levels(prop, code, delta)
        costs = [(resid / delta - dequantize(s, 1.0)) ** 2 + RD_LAMBDA * entropy.cost_bits(s, levels)
                 for s in (nearest, toward)]
        symbols = np.where(costs[1] < costs[0], toward, nearest)
        total = float(np.minimum(*costs)[ok].sum())
        if best is None or total < best[0]:
            best = total, symbols, levels, code
    return best[1:]


def _code_raw(prop: _Proposal, truth: np.ndarray, allowed: int) -> _Coded | None:
    """Paper-faithful coding (§6.11): each measurement as one unscaled float8 byte; no prediction, no model
    (so no use for delta, which only enters the check value)."""
    ok = prop.usable
    count = int(np.searchsorted(np.ceil(np.cumsum(ok) / 4) * 4, allowed, side="right"))
    if count == 0 or not ok[:count].any():
        return None
    raw = float8_bytes(truth[:count])
    return _Coded(count, b"", _pad_words(raw[ok[:count]].tobytes()), float8_values(raw))


def _pad_words(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _decode_step(state: SensingState, chunk: DataChunk) -> None:
    prop = state.propose(chunk.step)
    delta, count, raw = state.header.delta, chunk.rows, state.header.coding == "raw"
    params_size = 0 if raw else (2 if state.header.version >= 5 else 1)  # version 5 added the delta code
    if not 1 <= count <= len(prop.tile_of) or len(chunk.params) != params_size:
        raise CorruptFileError(f"DATA chunk {chunk.step} declares {count} rows, outside 1..{len(prop.tile_of)}, "
                               "or has malformed parameters")
    if chunk.check != prop.check(count, delta):
        raise DesyncError(f"decoder state differs from the encoder's at step {chunk.step} (check value mismatch)")
    ok = prop.usable[:count]
    if raw:
        n = int(ok.sum())
        if len(chunk.words) != len(_pad_words(bytes(n))):
            raise CorruptFileError(f"DATA chunk {chunk.step} holds {len(chunk.words)} bytes for {n} raw measurements")
        meas = float8_values(np.frombuffer(chunk.words, dtype=np.uint8)[:n])
        if not np.all(np.isfinite(meas)):
            raise CorruptFileError(f"DATA chunk {chunk.step} holds a NaN float8 measurement")
    else:
        fields = struct.unpack(f">{params_size}b", chunk.params)  # spread-scale code, then (version 5) delta code
        code, delta_code = fields if params_size == 2 else (fields[0], 0)
        delta = step_delta(delta, delta_code)
        symbols = entropy.decode(chunk.words, _levels(prop, code, delta)[:count][ok])
        meas = prop.mean[:count][ok] + dequantize(symbols, delta)
    state.add(prop.tile_of[:count][ok], prop.rows[:count][torch.from_numpy(ok)], meas)


# -- public API -----------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """An encoded file and the encoder's final state (which can reconstruct what the decoder will see)."""

    data: bytes
    steps: int
    state: SensingState = field(repr=False)
    evaluations: int = 0  # denoiser evaluations spent encoding, a try abandoned after two steps included

    def reconstruct(self, mode: str = "mean") -> np.ndarray:
        return _finish_pixels(self.state.reconstruct(mode), self.state.header, None)


def split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W[, C]) uint8 with C in 1..4 -> colour (H, W, 1 or 3) and alpha (H, W) or None."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, not {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"pixels must be (H, W) or (H, W, 1..4), not {tuple(np.asarray(pixels).shape)}")
    if arr.shape[2] in (2, 4):
        return arr[:, :, :-1], arr[:, :, -1]
    return arr, None


def encode(pixels: np.ndarray, *, rate: float | None = None, max_bytes: int | None = None, model: str | None = None,
           prompt: str = "", seed: int = 0, device: str = "auto", config: CodecConfig | None = None,
           metadata: dict[str, bytes] | None = None, progress: bool = False) -> Encoded:
    """Encode uint8 pixels (H, W) or (H, W, C), C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA).

    The file holds at most `max_bytes` bytes and at most `rate` bits per pixel (header included); with
    neither, rate defaults to DEFAULT_RATE. Raises BudgetError when not even the base layer fits.
    """
    cfg = config or CodecConfig()
    colour, alpha = split_alpha(pixels)
    h, w, channels = colour.shape
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of bits per pixel, not {rate!r}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
    if cfg.delta is not None and not (cfg.delta > 0 and math.isfinite(cfg.delta)):
        raise ValueError(f"delta must be a positive quantizer step, not {cfg.delta!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {cfg.precision!r}")
    if cfg.effort not in EFFORTS:
        raise ValueError(f"effort must be one of {', '.join(map(str, EFFORTS))}, not {cfg.effort!r}")
    if not 0 <= seed < 2 ** 64:
        raise ValueError("seed must be in 0..2**64-1")
    limits = [int(r * h * w / 8) for r in [rate if rate is not None or max_bytes is not None else DEFAULT_RATE]
              if r is not None]
    budget = min(limits + ([max_bytes] if max_bytes is not None else []))
    model_id = canonical_model_id(model, channels)
    prior = load_prior(model_id, device)
    if not _channels_fit(channels, prior):
        raise ValueError(f"model {model_id} codes {prior.pixel_channels}-channel images, not {channels}-channel")
    if (cfg.tile or prior.tile) % prior.tile_multiple:
        raise ValueError(f"model {model_id} needs a tile size that is a multiple of {prior.tile_multiple}")
    # An automatic quantizer step adapts to the content (§12): a step too coarse for smooth content leaves most
    # innovations below it and the budget would take dozens of steps (each a full round of sampling), so a smooth
    # photo starts at half of it (a busy one at a low rate coarser: `auto_delta`) and the encoder starts again at
    # half of it (judged after two steps) or refines it from step to step. An explicit step is the caller's choice
    # and is kept. Raw coding (the paper's) sends every measurement as one byte whatever the step, so its chunk sizes
    # say nothing about the step (which then only sets the base layer's): it keeps the rate's `automatic_step`.
    adapts = cfg.delta is None and cfg.coding != "raw"
    bits_per_pixel = 8 * budget / (h * w)
    texture = block_texture(colour)
    if cfg.delta is not None:
        delta = cfg.delta
    else:
        delta = auto_delta(bits_per_pixel, texture) if adapts else automatic_step(bits_per_pixel)
    stop = auto_stop_sigma(prior, bits_per_pixel, texture)
    sigma_min = stop if cfg.sigma_min is None else cfg.sigma_min or prior.sigma_min
    mean_sigma_min = stop if cfg.mean_sigma_min is None else cfg.mean_sigma_min
    cfg = replace(cfg, sigma_min=sigma_min, mean_sigma_min=max(sigma_min, mean_sigma_min))
    evaluations = 0
    while True:
        restart = adapts and delta > AUTO_DELTA_MIN
        encoded, spent = _encode_with_delta(colour, alpha, budget, delta, prior, prompt, seed, cfg, metadata,
                                            progress, refine=adapts, may_restart=restart)
        evaluations += spent
        if encoded is not None:
            encoded.evaluations = evaluations
            return encoded
        delta = half_step(delta)


def _encode_with_delta(colour: np.ndarray, alpha: np.ndarray | None, budget: int, delta: float, prior: Prior,
                       prompt: str, seed: int, cfg: CodecConfig, metadata: dict[str, bytes] | None,
                       progress: bool, refine: bool, may_restart: bool) -> tuple[Encoded | None, int]:
    """One encode starting at quantizer step `delta`, and the denoiser evaluations it spent. With `refine` the step
    is refined from step to step (`_off_pace`), without it stays `delta`; with `may_restart` the encode gives up
    (None) after two steps when `_start_finer` says so."""
    h, w, channels = colour.shape
    bits_per_pixel = 8 * budget / (h * w)
    effort = EFFORTS[cfg.effort]
    samples = effort_samples(effort, bits_per_pixel) if cfg.samples is None else cfg.samples
    sampler_steps = (max(1, round(prior.sampler_steps * effort.step_share)) if cfg.sampler_steps is None
                     else cfg.sampler_steps)
    tile = cfg.tile or prior.tile
    header = Header(
        width=w, height=h, channels=channels, has_alpha=alpha is not None, prior_id=prior.id,
        model_sha256=prior.sha256, seed=seed, prompt=prompt, sampler=SAMPLER,
        sampler_steps=sampler_steps, samples=samples, eta=cfg.eta, extrapolation=cfg.extrapolation,
        sigma_max=cfg.sigma_max or prior.sigma_max, sigma_min=cfg.sigma_min, mean_sigma_min=cfg.mean_sigma_min,
        output_samples=effort.output_samples if cfg.output_samples is None else cfg.output_samples,
        output_sampler_steps=cfg.output_sampler_steps or OUTPUT_STEPS_FACTOR * sampler_steps,
        coarse_sigma=_effort_coarse_sigma(prior, effort, tile) if cfg.coarse_sigma is None else cfg.coarse_sigma,
        tile=tile, window=cfg.window, margin=cfg.margin,
        float8="e4m3fn", delta=delta, rows_per_step=list(cfg.rows_per_step or (effort.rows,)),
        coding=cfg.coding, precision=cfg.precision)
    try:
        header = Header.from_bytes(header.to_bytes())  # float fields as the decoder will read them (float32)
    except CorruptFileError as exc:  # a setting the format cannot hold: the caller's mistake, not a bad file
        raise ValueError(f"invalid codec settings: {exc}") from None
    if header.tile % tile_multiple(prior, header.coarse_sigma):
        raise ValueError(f"denoising at half resolution (coarse_sigma) on model {prior.id} needs a tile size that is "
                         f"a multiple of {tile_multiple(prior, header.coarse_sigma)}")
    psc = PSCFile(header, zlib.compress(alpha.tobytes(), 9) if alpha is not None else None,
                  {k: v for k, v in (metadata or {}).items() if v})
    remaining = budget - len(psc.to_bytes())
    if remaining <= _CHUNK_OVERHEAD:
        raise BudgetError(f"a budget of {budget} bytes does not exceed the {len(psc.to_bytes())}-byte header and "
                          "metadata; raise rate/max_bytes")

    state = SensingState(header, prior, progress)
    x = torch.from_numpy(np.array(colour)).permute(2, 0, 1)[None].float().div(255).to(prior.device)
    if channels != prior.pixel_channels:
        x = x.expand(1, 3, h, w)
    with torch.no_grad():
        signal = state.grid.pad(prior.to_signal(x))
    signal_tiles = state.grid.to_tiles(signal)[:, 0]
    psc.data.append(_encode_base(state, signal_tiles, remaining, cfg.base_share))
    remaining -= len(pack_chunk(b"DATA", psc.data[0].to_bytes()))
    delta_code, step_bytes, pace = 0, [], pace_steps(bits_per_pixel)
    start_again_pace = restart_pace(bits_per_pixel, header.samples, header.rows_per_step)
    with _progress(progress, "encode", None) as bar:
        for step in range(1, cfg.max_steps + 1):
            coded = _encode_step(state, step, signal_tiles, remaining, delta_code, refine)
            if coded is None:
                break
            chunk, delta_code = coded
            psc.data.append(chunk)
            step_bytes.append(len(pack_chunk(b"DATA", chunk.to_bytes())))
            remaining -= step_bytes[-1]
            bar.update(1)
            if may_restart and _start_finer(step_bytes, remaining, start_again_pace):
                return None, state.evaluations
            if refine and _off_pace(step_bytes, remaining, pace):
                delta_code = max(delta_code - REFINE_CODES, FINEST_DELTA_CODE)
    data = psc.to_bytes()
    assert len(data) <= budget, "rate control exceeded the budget"
    return Encoded(data, len(psc.data), state), state.evaluations


def encode_array(pixels: np.ndarray, **kwargs) -> bytes:
    """Like :func:`encode` but returns only the file's bytes."""
    return encode(pixels, **kwargs).data


def decode_array(data: bytes, *, mode: str = "mean", steps: int | None = None, device: str = "auto",
                 model: str | None = None, strict: bool = False, progress: bool = False) -> Decoded:
    """Decode a .psc file (possibly truncated) to uint8 pixels.

    `steps` limits how many data chunks are used (None: all). A decoder whose model hash differs from the
    file's raises ModelMismatchError. If the decoder's state drifts from the encoder's (another machine or
    library version), decoding stops at the last consistent step with a warning (`desync_step` is set), or,
    with `strict=True`, raises DesyncError.
    """
    if mode not in ("mean", "sample"):
        raise ValueError(f"decode mode must be 'mean' or 'sample', not {mode!r}")
    psc = read_file(data)
    header = psc.header
    if not psc.data:
        raise NoDataError("the file holds no complete DATA chunk (truncated before the first step)")
    if steps is not None and steps < 1:
        raise ValueError("steps must be at least 1")
    prior = _load_matching_prior(header, model, device)
    try:
        return _decode_chunks(psc, prior, mode, steps, strict, progress)
    except RuntimeError as exc:  # a tensor op refused values no encoder writes: report a bad file, not a crash
        raise CorruptFileError(f"the file's parameters cannot be decoded: {exc}") from exc


def _decode_chunks(psc: PSCFile, prior: Prior, mode: str, steps: int | None, strict: bool,
                   progress: bool) -> Decoded:
    header = psc.header
    state = SensingState(header, prior, progress)
    use = psc.data[:steps] if steps is not None else psc.data
    _decode_base(state, use[0])
    decoded, desync = 1, None
    with _progress(progress, "decode", len(use)) as bar:
        bar.update(1)
        for chunk in use[1:]:
            try:
                _decode_step(state, chunk)
            except DesyncError as exc:
                if strict:
                    raise
                warnings.warn(str(exc), RuntimeWarning, stacklevel=3)
                desync = chunk.step
                break
            decoded += 1
            bar.update(1)
    pixels = _finish_pixels(state.reconstruct(mode), header, psc.alpha)
    return Decoded(pixels, header, len(psc.data), decoded, psc.truncated, desync, state.evaluations)


def _finish_pixels(colour: np.ndarray, header: Header, alpha: bytes | None) -> np.ndarray:
    if header.has_alpha and alpha is not None:
        try:
            plane = np.frombuffer(zlib.decompress(alpha), dtype=np.uint8)
        except zlib.error as exc:
            raise CorruptFileError(f"ALPH chunk does not inflate: {exc}") from exc
        if plane.size != header.width * header.height:
            raise CorruptFileError("ALPH chunk holds the wrong number of pixels")
        colour = np.concatenate([colour, plane.reshape(header.height, header.width, 1)], 2)
    elif header.has_alpha:
        colour = np.concatenate([colour, np.full(colour.shape[:2] + (1,), 255, np.uint8)], 2)
    return colour[:, :, 0] if colour.shape[2] == 1 else colour


def _channels_fit(channels: int, prior: Prior) -> bool:
    """Grey images can go through colour priors (replicated); colour images need a colour prior."""
    return channels == prior.pixel_channels or prior.pixel_channels == 3


def effort_samples(effort: Effort, bits_per_pixel: float) -> int:
    """Posterior samples per step that an effort takes at a rate (HIGH_RATE_BPP)."""
    return effort.high_rate_samples if bits_per_pixel >= HIGH_RATE_BPP else effort.samples


def _effort_coarse_sigma(prior: Prior, effort: Effort, tile: int) -> float:
    """The effort's half-resolution level: the prior's where the effort asks for it and the tile can be halved (the
    effort is a preference, so a tile that cannot be halved falls back to full resolution; an explicit coarse_sigma
    with such a tile is refused)."""
    return prior.coarse_sigma if effort.coarse and tile % tile_multiple(prior, prior.coarse_sigma) == 0 else 0.0


def tile_multiple(prior: Prior, coarse_sigma: float) -> int:
    """Tile sides must be multiples of this: the prior's, doubled where regions are also halved (coarse_sigma)."""
    return prior.tile_multiple * (2 if coarse_sigma else 1)


def _load_matching_prior(header: Header, model: str | None, device: str) -> Prior:
    model_id = model or header.prior_id
    try:
        prior = load_prior(model_id, device)
    except (OSError, ValueError) as exc:
        raise ModelMismatchError(f"cannot load model {model_id!r} needed by this file: {exc}") from exc
    if prior.sha256 != header.model_sha256:
        raise ModelMismatchError(
            f"this file needs model {header.prior_id!r} with weights sha256 {header.model_sha256.hex()[:16]}...; "
            f"the loaded model {prior.id!r} has {prior.sha256.hex()[:16]}...")
    if not _channels_fit(header.channels, prior) or header.tile % tile_multiple(prior, header.coarse_sigma):
        raise CorruptFileError(f"header declares {header.channels} channels and tile {header.tile}, which model "
                               f"{prior.id!r} cannot code{' at half resolution' if header.coarse_sigma else ''}")
    return prior


def _progress(enabled: bool, desc: str, total: int | None):
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr,
                disable=not (enabled and sys.stderr.isatty()), leave=False)
