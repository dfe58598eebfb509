"""The sensing matrix H: tile geometry, the fixed base rows, and new rows from posterior samples.

H is block diagonal over T x T tiles of the (padded) signal: each row lives in one tile and has unit norm.
Entries that fall in the padding are zero, so padded pixels are never measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: Orthonormal luma / chroma basis for 3-channel signals (other channel counts use the identity).
COLOUR_BASIS = torch.tensor([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float64)
COLOUR_BASIS = COLOUR_BASIS / COLOUR_BASIS.norm(dim=1, keepdim=True)


@dataclass(frozen=True)
class TileGrid:
    """Geometry of a signal of `channels` x height x width split into tile x tile blocks."""

    channels: int
    height: int
    width: int
    tile: int

    @property
    def rows_of_tiles(self) -> int:
        return math.ceil(self.height / self.tile)

    @property
    def cols_of_tiles(self) -> int:
        return math.ceil(self.width / self.tile)

    @property
    def count(self) -> int:
        return self.rows_of_tiles * self.cols_of_tiles

    @property
    def dim(self) -> int:
        """Entries per tile vector (channels * tile * tile)."""
        return self.channels * self.tile * self.tile

    def to_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) region made of whole tiles -> (tiles, N, dim), tiles in raster order."""
        n, c, h, w = x.shape
        t = self.tile
        return x.reshape(n, c, h // t, t, w // t, t).permute(2, 4, 0, 1, 3, 5).reshape((h // t) * (w // t), n, c * t * t)

    def from_tiles(self, tiles: torch.Tensor, tile_rows: int, tile_cols: int) -> torch.Tensor:
        """Inverse of :meth:`to_tiles` for a region of tile_rows x tile_cols tiles."""
        n, t, c = tiles.shape[1], self.tile, self.channels
        return tiles.reshape(tile_rows, tile_cols, n, c, t, t).permute(2, 3, 0, 4, 1, 5).reshape(
            n, c, tile_rows * t, tile_cols * t)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad a (N, C, height, width) signal to whole tiles."""
        ph, pw = self.rows_of_tiles * self.tile - x.shape[2], self.cols_of_tiles * self.tile - x.shape[3]
        return torch.nn.functional.pad(x, (0, pw, 0, ph))

    def masks(self, device: torch.device) -> torch.Tensor:
        """(tiles, dim) 1 where the entry lies inside the signal, 0 in the padding."""
        ones = torch.ones(1, self.channels, self.height, self.width, device=device)
        return self.to_tiles(self.pad(ones))[:, 0]


def base_rows(grid: TileGrid, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """(tiles, channels, dim): per tile, the normalised block mean of each colour-basis channel.

    Built `chunk` tiles at a time in float64, so the temporaries stay small on large images.
    """
    basis = (COLOUR_BASIS if grid.channels == 3 else torch.eye(grid.channels, dtype=torch.float64)).to(device)
    masks = grid.masks(device).reshape(grid.count, 1, grid.channels, grid.tile * grid.tile)
    out = torch.empty(grid.count, grid.channels, grid.dim, device=device)
    for start in range(0, grid.count, chunk):
        rows = basis[None, :, :, None] * masks[start:start + chunk].double()  # (tiles, basis row, channel, pixel)
        rows = rows.reshape(-1, grid.channels, grid.dim)
        out[start:start + chunk] = rows / rows.norm(dim=-1, keepdim=True)
    return out


def principal_directions(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per tile PCA of posterior samples (tiles, s, dim).

    Returns the sample mean (tiles, dim), the s-1 principal directions (tiles, s-1, dim) by decreasing
    variance, and the standard deviation along each (tiles, s-1). Computed via the s x s Gram matrix in
    float64 so that it is cheap for dim >> s and identical on both sides of the codec.
    """
    x = samples.double()
    mean = x.mean(1)
    centred = x - mean[:, None]
    lam, vec = torch.linalg.eigh(centred @ centred.transpose(1, 2))
    keep = x.shape[1] - 1
    lam = lam.flip(-1)[:, :keep].clamp_min(0)
    vec = vec.flip(-1)[:, :, :keep]
    directions = (vec.transpose(1, 2) @ centred) / lam.clamp_min(1e-30).sqrt()[..., None]
    return mean.float(), directions.float(), (lam / keep).sqrt().float()


def orthonormalise(new: torch.Tensor, existing: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make rows (m, dim) orthonormal to their tiles' existing rows (m, k, dim; zero rows allowed).

    Two Gram-Schmidt passes in float64; padding entries are zeroed; the sign is fixed so that the entry with
    the largest magnitude is positive (both codec sides agree without side information). Returns the rows and
    a boolean mask of rows that kept a usable norm (a direction already spanned is dropped).
    """
    v = new.double() * mask.double()
    e = existing.double()
    for _ in range(2):  # batched matrix products: no (m, k, dim) temporary
        v = v - torch.bmm(torch.bmm(e, v[:, :, None]).transpose(1, 2), e)[:, 0]
    norm = v.norm(dim=-1)
    usable = norm > 1e-4
    v = v / norm.clamp_min(1e-30)[:, None]
    peak = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
    v = v * torch.where(peak < 0, -1.0, 1.0).to(v)
    return v.float(), usable


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n x n), float64."""
    k = np.arange(n)
    m = np.cos(np.pi * (k[None, :] + 0.5) * k[:, None] / n) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def dct_bands(rows: int, cols: int) -> np.ndarray:
    """Band index of each 2-D DCT coefficient: floor(log2(1 + radial frequency))."""
    fy, fx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.floor(np.log2(1.0 + np.sqrt(fy * fy + fx * fx))).astype(np.int64)
