"""Mutation fuzzing of the .psc reader and decoder (`psc fuzz`).

Every case is a mutation of a real file from the conformance vectors (format_spec/vectors). Most mutations
recompute the CRCs of the chunks they touch, so that the corruption gets past the container's CRC check and
reaches the header validation, the chunk-order rules, the DATA parsers, the range decoder and the sampler. Each
case goes through

* ``pillow_psc.decode_array`` (the full decoder),
* Pillow: ``Image.open`` (header only) and, for some cases, ``load()`` (full decode, compared with the above),
* ``psc info --json`` (the command line, on a temporary file),

and must end, within a time limit, either with an image of exactly the size and mode its header declares or with
a documented exception (:class:`pillow_psc.PSCError`, an ``OSError``; Pillow may also refuse with its own
``UnidentifiedImageError`` or ``DecompressionBombError``). Anything else -- another exception, a crash of the
process, a time-out, an image of the wrong shape, Pillow and ``decode_array`` disagreeing -- is a failure: the
input is saved with a JSON note (mutation, traceback) for reproduction (``psc fuzz --replay FILE``).

Cases run in a worker process (spawned, one torch thread, an address-space limit): a hang or a crash kills the
worker, not the harness, and is recorded as a failure. Decoding is kept cheap: by default the decoder uses the
first few DATA chunks (always including the ones a mutation touched); every ``full_every``-th case decodes the
whole file. A header that makes even a one-step decode cost more than ``work_limit`` denoiser pixel-evaluations
(e.g. ``sampler_steps`` mutated to 1000) is valid but too slow to fuzz: such cases are parsed and opened but not
decoded, and counted as ``costly`` in the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import container
from .errors import PSCError

#: Default corpus: the conformance vectors of the source tree.
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "format_spec" / "vectors"
DEFAULT_TIME_LIMIT_S = 60.0  # per case; the slowest vector decodes fully in ~2.5 s on one core
DEFAULT_WORK_LIMIT = 2_000_000  # denoiser pixel-evaluations per decode (~7 s on one 2020s core)
DEFAULT_MEMORY_LIMIT_MB = 6144  # address space the worker may add after start-up
DEFAULT_STEPS = 3  # DATA chunks decoded in ordinary cases (plus the ones a mutation touched, plus one)
FAILURE_KINDS = ("exception", "wrong_shape", "inconsistent", "timeout", "crash", "info")


# -- the corpus and the file model ----------------------------------------------------------------------------
@dataclass
class Chunk:
    ctype: bytes
    payload: bytes
    crc: int | None = None  # None: the correct CRC (recomputed on output); an int: written as is

    def to_bytes(self, length: int | None = None) -> bytes:
        crc = zlib.crc32(self.ctype + self.payload) if self.crc is None else self.crc
        n = len(self.payload) if length is None else length
        return struct.pack(">I", n) + self.ctype + self.payload + struct.pack(">I", crc & 0xFFFFFFFF)


@dataclass
class Doc:
    """A file as signature + chunks + trailing bytes (whatever does not parse as a chunk)."""

    signature: bytes
    chunks: list[Chunk]
    tail: bytes = b""

    def to_bytes(self) -> bytes:
        return self.signature + b"".join(c.to_bytes() for c in self.chunks) + self.tail

    def copy(self) -> "Doc":
        return Doc(self.signature, [dataclasses.replace(c) for c in self.chunks], self.tail)

    def index_of(self, ctype: bytes) -> list[int]:
        return [i for i, c in enumerate(self.chunks) if c.ctype == ctype]


def parse_doc(data: bytes) -> Doc:
    """Lenient split into chunks (keeps each chunk's stored CRC when it is wrong)."""
    pos, chunks = 8, []
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        if pos + 12 + n > len(data):
            break
        ctype, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        chunks.append(Chunk(ctype, payload, None if crc == zlib.crc32(ctype + payload) else crc))
        pos += 12 + n
    return Doc(data[:8], chunks, data[pos:])


@dataclass
class Seed:
    name: str
    data: bytes
    doc: Doc
    valid: bool  # the container reader accepts it (it may still fail to decode)


def load_corpus(corpus_dir: str | os.PathLike | None = None) -> list[Seed]:
    directory = Path(corpus_dir) if corpus_dir else DEFAULT_CORPUS
    files = sorted(directory.glob("*.psc"))
    if not files:
        raise FileNotFoundError(f"no .psc files in {directory} (pass a corpus directory)")
    seeds = []
    for p in files:
        data = p.read_bytes()
        try:
            valid = bool(container.read_file(data).data)
        except PSCError:
            valid = False
        seeds.append(Seed(p.name, data, parse_doc(data), valid))
    return seeds


# -- HEAD fields (lenient: any values, so that out-of-range ones can be written) -----------------------------
_HEAD_LAYOUT = [("version", "B"), ("width", "I"), ("height", "I"), ("channels", "B"), ("flags", "B"),
                ("prior_id", "sB"), ("model_sha256", "32s"), ("seed", "Q"), ("prompt", "sH"), ("sampler", "sB"),
                ("sampler_steps", "H"), ("samples", "H"), ("eta", "f"), ("sigma_max", "f"), ("sigma_min", "f"),
                ("output_samples", "H"), ("tile", "H"), ("window", "H"), ("margin", "H"), ("float8", "sB"),
                ("delta", "f"), ("rows_per_step", "rates")]
# (format version that appended it, field)
_APPENDED_FIELDS = [(3, ("coding", "B")), (4, ("precision", "B")), (6, ("output_sampler_steps", "H")),
                    (7, ("coarse_sigma", "f")), (10, ("mean_sigma_min", "f")),
                    (11, ("extrapolation", "f"))]


def parse_head(payload: bytes) -> list[list] | None:
    """[[name, fmt, value], ...] of a HEAD payload, or None if it does not split into the fields."""
    out, pos = [], 0
    version = payload[0] if payload else 0
    layout = _HEAD_LAYOUT + [f for since, f in _APPENDED_FIELDS if version >= since]
    try:
        for name, fmt in layout:
            if fmt.startswith("s"):
                size = struct.calcsize(">" + fmt[1])
                (n,) = struct.unpack(">" + fmt[1], payload[pos:pos + size])
                value = payload[pos + size:pos + size + n]
                if len(value) != n:
                    return None
                pos += size + n
            elif fmt == "rates":
                n = payload[pos]
                value = list(struct.unpack(f">{n}f", payload[pos + 1:pos + 1 + 4 * n]))
                pos += 1 + 4 * n
            else:
                size = struct.calcsize(">" + fmt)
                (value,) = struct.unpack(">" + fmt, payload[pos:pos + size])
                pos += size
            out.append([name, fmt, value])
    except (struct.error, IndexError):
        return None
    return out if pos == len(payload) else None


def pack_head(fields: list[list]) -> bytes:
    out = []
    for _, fmt, value in fields:
        if fmt.startswith("s"):
            limit = 255 if fmt[1] == "B" else 65535
            value = value[:limit]
            out.append(struct.pack(">" + fmt[1], len(value)) + value)
        elif fmt == "rates":
            value = value[:255]
            out.append(struct.pack(f">B{len(value)}f", len(value), *value))
        else:
            out.append(struct.pack(">" + fmt, value))
    return b"".join(out)


_INT_MAX = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": 2 ** 64 - 1}


def _interesting_int(rng: random.Random, fmt: str, value: int) -> int:
    top = _INT_MAX[fmt]
    pool = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 255, 256, 1000, 1001, 4096, 4097,
            16384, 65535, 65536, 2 ** 28, 2 ** 31 - 1, 2 ** 31, top, top - 1, value + 1, value - 1, value * 2,
            value // 2, value + 2, rng.randrange(top + 1)]
    return min(max(rng.choice(pool), 0), top)


def _interesting_float(rng: random.Random, value: float) -> float:
    pool = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e-45, 1e4, 9999.0, 1e30, 3.4e38, math.inf, -math.inf, math.nan,
            value * 2, value / 2, -value, value * 1000, value / 1000, rng.uniform(-2, 2), rng.uniform(0, 1024)]
    v = rng.choice(pool)
    try:
        return struct.unpack(">f", struct.pack(">f", v))[0]
    except OverflowError:
        return math.inf


def _interesting_text(rng: random.Random, value: bytes) -> bytes:
    pool = [b"", b"ffdnet", b"ffdnet-color", b"ffdnet-gray", b"diffusers-pixel:", b"sd:",
            b"diffusers-pixel:/nonexistent-psc-model", b"sd:/nonexistent-psc-model", b"ddnm", b"e4m3fn", b"e5m2",
            b"\xff\xfe", b"\xc3", value + b"x", value[:-1], value.upper(), bytes(rng.randrange(256) for _ in range(8)),
            b"a" * 255]
    return rng.choice(pool)


#: In-range values for header fields (small, so that the decode stays cheap).
_PLAUSIBLE: dict[str, Callable[[random.Random, Any], Any]] = {
    "width": lambda r, v: max(1, min(64, v + r.randint(-17, 17))),
    "height": lambda r, v: max(1, min(64, v + r.randint(-17, 17))),
    "channels": lambda r, v: r.choice([1, 3]),
    "flags": lambda r, v: v ^ (1 << r.randrange(8)),
    "seed": lambda r, v: r.randrange(2 ** 64),
    "sampler_steps": lambda r, v: r.randint(1, 8),
    "samples": lambda r, v: r.randint(2, 9),
    "eta": lambda r, v: r.choice([0.0, 1.0, r.random()]),
    "sigma_max": lambda r, v: r.choice([1e-3, 0.05, 1.0, 5.0, 100.0, v * 1.01]),
    "sigma_min": lambda r, v: r.choice([1e-6, 1e-3, 0.05, v * 1.01]),
    "output_samples": lambda r, v: r.randint(1, 5),
    "output_sampler_steps": lambda r, v: r.randint(1, 8),
    "coarse_sigma": lambda r, v: r.choice([0.0, 1e-3, 0.3, 0.45, 100.0]),
    "mean_sigma_min": lambda r, v: r.choice([1e-6, 0.05, 0.45, v * 1.01]),
    "extrapolation": lambda r, v: r.choice([0.0, 0.25, 0.5, 1.0, 1.01]),
    "tile": lambda r, v: r.choice([1, 2, 3, 4, 6, 8, 10, 12, 14, 15, 18, 20, 24, 32, 33]),
    "window": lambda r, v: r.randint(1, 5),
    "margin": lambda r, v: r.randint(0, 4),
    "delta": lambda r, v: r.choice([1e-6, 1e-3, 0.01, 0.5, 2.0, 100.0, v * 1.5]),
    "rows_per_step": lambda r, v: [r.choice([1e-3, 0.1, 0.5, 1.0, 3.0, 16.0, 1024.0]) for _ in range(r.randint(1, 4))],
}


# -- mutations (each returns a description; `touched` collects DATA step indices they changed) ----------------
class _Ctx:
    def __init__(self, rng: random.Random, doc: Doc, corpus: list[Seed]):
        self.rng, self.doc, self.corpus = rng, doc, corpus
        self.touched: set[int] = set()
        self.raw: bytes | None = None  # set by byte-level mutations: the case is these bytes
        self.priors: dict[bytes, bytes] = {}  # prior_id -> model_sha256 in the corpus's headers
        for seed in corpus:
            fields = parse_head(seed.doc.chunks[0].payload) if seed.doc.chunks else None
            if fields:
                self.priors[fields[5][2]] = fields[6][2]

    def data_index(self, chunk_index: int) -> int:
        return sum(c.ctype == b"DATA" for c in self.doc.chunks[:chunk_index])

    def pick(self, *types: bytes) -> int | None:
        idx = [i for i, c in enumerate(self.doc.chunks) if not types or c.ctype in types]
        return self.rng.choice(idx) if idx else None


def _mutate_bytes(rng: random.Random, payload: bytes) -> tuple[bytes, str]:
    b = bytearray(payload)
    op = rng.choice(["flip", "set", "insert", "delete", "truncate", "extend", "copy"])
    if op == "flip" and b:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
    elif op == "set" and b:
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif op == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8])))
    elif op == "delete" and b:
        i = rng.randrange(len(b))
        del b[i:i + rng.choice([1, 2, 4, 8])]
    elif op == "truncate" and b:
        del b[rng.randrange(len(b)):]
    elif op == "extend":
        b += bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 4, 16])))
    elif op == "copy" and len(b) > 2:
        i, j = rng.randrange(len(b)), rng.randrange(len(b))
        n = rng.randint(1, 8)
        b[j:j + n] = b[i:i + n]
    return bytes(b), op


def m_head_field(ctx: _Ctx) -> str:
    i = ctx.pick(b"HEAD")
    if i is None:
        return "head_field: no HEAD"
    fields = parse_head(ctx.doc.chunks[i].payload)
    if fields is None:
        return m_payload_bytes(ctx)
    rng = ctx.rng
    k = rng.randrange(len(fields))
    name, fmt, value = fields[k]
    if name in _PLAUSIBLE and rng.random() < 0.5:  # in range (cheap to decode): reaches the decoder
        new = _PLAUSIBLE[name](rng, value)
    elif fmt in _INT_MAX:
        new = _interesting_int(rng, fmt, value)
    elif fmt == "f":
        new = _interesting_float(rng, value)
    elif fmt == "32s":
        new = bytes(32) if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(32))
        if rng.random() < 0.5:  # the hash of another bundled prior
            other = [sha for sha in ctx.priors.values() if sha != value]
            new = rng.choice(other) if other else new
    elif fmt == "rates":
        new = rng.choice([[], [0.0], [math.nan], [1e-30], [1024.0], [1025.0], [2.0] * 255, [0.5, 64.0],
                          [_interesting_float(rng, v) for v in value] or [1.0]])
    else:
        new = _interesting_text(rng, value)
    fields[k][2] = new
    if name == "prior_id" and new in ctx.priors and rng.random() < 0.5:  # a consistent pair: reach the checks
        fields[6][2] = ctx.priors[new]
    ctx.doc.chunks[i].payload = pack_head(fields)
    ctx.doc.chunks[i].crc = None
    return f"head_field {name}: {value!r} -> {new!r}"


def _pick_data(ctx: _Ctx) -> int | None:
    """A random DATA chunk long enough to hold its fixed fields (None: mutate some other payload instead)."""
    i = ctx.pick(b"DATA")
    return i if i is not None and len(ctx.doc.chunks[i].payload) >= 12 else None


def m_data_field(ctx: _Ctx) -> str:
    i = _pick_data(ctx)
    if i is None:
        return m_payload_bytes(ctx)
    rng, c = ctx.rng, ctx.doc.chunks[i]
    step, rows, check, m = struct.unpack(">HIIH", c.payload[:12])
    params, words = c.payload[12:12 + m], c.payload[12 + m:]
    what = rng.choice(["step", "rows", "rows", "check", "m", "params", "params", "words_len"])
    if what == "step":
        step = _interesting_int(rng, "H", step)
    elif what == "rows":
        rows = _interesting_int(rng, "I", rows)
    elif what == "check":
        check = rng.choice([0, check ^ 1, rng.randrange(2 ** 32)])
    elif what == "m":
        m = _interesting_int(rng, "H", m)
    elif what == "params":
        if params and rng.random() < 0.7:
            p = bytearray(params)
            p[rng.randrange(len(p))] = rng.choice([0, 0x7F, 0x80, 0x81, 0xFF, 1, rng.randrange(256)])
            params = bytes(p)
        else:
            params, _ = _mutate_bytes(rng, params)
    else:
        words = words[:len(words) - 4 * rng.randint(1, 3)] if words and rng.random() < 0.5 else words + bytes(4)
    c.payload = struct.pack(">HIIH", step, rows, check, m) + params + words
    c.crc = None
    ctx.touched.add(ctx.data_index(i))
    return f"data_field {what} in DATA #{ctx.data_index(i)}"


def m_words(ctx: _Ctx) -> str:
    i = _pick_data(ctx)
    if i is None:
        return m_payload_bytes(ctx)
    rng, c = ctx.rng, ctx.doc.chunks[i]
    m = struct.unpack(">H", c.payload[10:12])[0]
    head, words = c.payload[:12 + m], bytearray(c.payload[12 + m:])
    op = rng.choice(["flip", "flip", "zero", "ones", "shuffle", "drop", "add", "random"])
    n = len(words) // 4
    if op == "flip" and words:
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(len(words) * 8)
            words[j // 8] ^= 1 << (j % 8)
    elif op in ("zero", "ones") and words:
        j = rng.randrange(len(words))
        words[j:j + 4] = (b"\x00" if op == "zero" else b"\xff") * len(words[j:j + 4])
    elif op == "shuffle" and n > 1:
        w = [bytes(words[4 * k:4 * k + 4]) for k in range(n)]
        rng.shuffle(w)
        words = bytearray(b"".join(w))
    elif op == "drop" and n:
        del words[4 * rng.randrange(n):][:4]
        words = words[:4 * (len(words) // 4)]
    elif op == "add":
        words += bytes(rng.randrange(256) for _ in range(4 * rng.randint(1, 4)))
    else:
        words = bytearray(rng.randrange(256) for _ in range(4 * max(1, n)))
    c.payload = head + bytes(words)
    c.crc = None
    ctx.touched.add(ctx.data_index(i))
    return f"words {op} in DATA #{ctx.data_index(i)}"


def m_payload_bytes(ctx: _Ctx) -> str:
    i = ctx.pick()
    if i is None:
        return "payload_bytes: no chunk"
    c = ctx.doc.chunks[i]
    c.payload, op = _mutate_bytes(ctx.rng, c.payload)
    c.crc = None
    if c.ctype == b"DATA":
        ctx.touched.add(ctx.data_index(i))
    return f"payload_bytes {op} in {c.ctype.decode('latin-1')} (chunk {i}), CRC fixed"


def m_chunk_order(ctx: _Ctx) -> str:
    rng, chunks = ctx.rng, ctx.doc.chunks
    op = rng.choice(["duplicate", "remove", "swap", "move", "foreign", "unknown", "pend_early", "pend_payload"])
    if not chunks:
        return "chunk_order: no chunks"
    i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks) + 1)
    if op == "duplicate":
        chunks.insert(j, dataclasses.replace(chunks[i]))
    elif op == "remove":
        del chunks[i]
    elif op == "swap":
        j = min(j, len(chunks) - 1)
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif op == "move":
        chunks.insert(j, chunks.pop(i))
    elif op == "foreign":  # a chunk of another vector, possibly replacing this file's chunk of the same type
        other = rng.choice(ctx.corpus).doc.chunks
        if other:
            k = rng.randrange(len(other))
            same = [n for n, c in enumerate(chunks) if c.ctype == other[k].ctype]
            if same and rng.random() < 0.7:
                chunks[rng.choice(same)] = dataclasses.replace(other[k])
            else:
                chunks.insert(j, dataclasses.replace(other[k]))
    elif op == "unknown":
        ctype = rng.choice([b"abcd", b"Abcd", b"zzzz", b"ZZZZ", b"iccp", b"exif", b"xmpd", b"ALPH", b"HEAD"])
        chunks.insert(j, Chunk(ctype, bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 64])))))
    elif op == "pend_early":
        chunks.insert(j, Chunk(b"PEND", b""))
    else:
        pend = ctx.doc.index_of(b"PEND")
        if pend:
            chunks[pend[0]].payload = b"junk"
    ctx.touched.update(range(0, 64))  # the DATA list may have shifted: decode everything
    return f"chunk_order {op}"


def m_alpha(ctx: _Ctx) -> str:
    rng = ctx.rng
    fields = parse_head(ctx.doc.chunks[0].payload) if ctx.doc.chunks else None
    size = fields[1][2] * fields[2][2] if fields else 64
    size = min(size, 1 << 20)
    payload = rng.choice([
        zlib.compress(bytes(max(size - 1, 0))), zlib.compress(bytes(size + 1)), zlib.compress(b""), b"",
        zlib.compress(bytes(size))[:-2], b"\x78\x9c" + bytes(8), zlib.compress(bytes(size)) + b"trailing",
        zlib.compress(bytes(8 << 20), 9),  # an 8 MiB plane: inflate must stop at W*H bytes
        zlib.compress(bytes(rng.randrange(256) for _ in range(size))),
    ])
    alph = ctx.doc.index_of(b"ALPH")
    if alph:
        ctx.doc.chunks[alph[0]].payload = payload
    else:
        ctx.doc.chunks.insert(1, Chunk(b"ALPH", payload))
        if fields and rng.random() < 0.7:
            fields[4][2] |= 1  # declare alpha
            ctx.doc.chunks[0].payload = pack_head(fields)
            ctx.doc.chunks[0].crc = None
    return f"alpha payload of {len(payload)} bytes"


def m_length_field(ctx: _Ctx) -> str:
    """Edit a chunk's length field in the raw bytes (CRC untouched)."""
    data = bytearray(ctx.doc.to_bytes())
    starts, pos = [], len(ctx.doc.signature)
    for c in ctx.doc.chunks:
        starts.append(pos)
        pos += 12 + len(c.payload)
    if not starts:
        ctx.raw = bytes(data)
        return "length_field: no chunk"
    at = ctx.rng.choice(starts)
    (n,) = struct.unpack(">I", data[at:at + 4])
    new = ctx.rng.choice([0, 1, n - 1, n + 1, n - 4, n + 4, n * 2, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
                          len(data), ctx.rng.randrange(2 ** 32)]) & 0xFFFFFFFF
    data[at:at + 4] = struct.pack(">I", max(new, 0))
    ctx.raw = bytes(data)
    ctx.touched.update(range(0, 64))
    return f"length_field at {at}: {n} -> {new}"


def m_raw_bits(ctx: _Ctx) -> str:
    data = bytearray(ctx.doc.to_bytes())
    for _ in range(ctx.rng.randint(1, 8)):
        i = ctx.rng.randrange(len(data) * 8)
        data[i // 8] ^= 1 << (i % 8)
    ctx.raw = bytes(data)
    return "raw bit flips (CRCs not fixed)"


def m_raw_bytes(ctx: _Ctx) -> str:
    data, op = _mutate_bytes(ctx.rng, ctx.doc.to_bytes())
    ctx.raw = data
    return f"raw bytes {op} (CRCs not fixed)"


def m_truncate(ctx: _Ctx) -> str:
    data = ctx.doc.to_bytes()
    n = ctx.rng.randrange(len(data) + 1)
    ctx.raw = data[:n]
    ctx.touched.update(range(0, 64))
    return f"truncate to {n} of {len(data)} bytes"


def m_signature(ctx: _Ctx) -> str:
    sig = bytearray(ctx.doc.signature)
    if sig:
        sig[ctx.rng.randrange(len(sig))] ^= 1 << ctx.rng.randrange(8)
    ctx.doc.signature = bytes(sig)
    return "signature bit flip"


def m_splice_head(ctx: _Ctx) -> str:
    """The HEAD (and ALPH) of one vector with the DATA chunks of another: geometry and model mismatches."""
    other = ctx.rng.choice(ctx.corpus).doc
    heads = other.index_of(b"HEAD")
    mine = ctx.doc.index_of(b"HEAD")
    if heads and mine:
        ctx.doc.chunks[mine[0]] = dataclasses.replace(other.chunks[heads[0]])
    ctx.touched.update(range(0, 64))
    return "splice HEAD of another vector"


#: (mutation, weight, whether it leaves every CRC correct)
MUTATIONS: list[tuple[Callable[[_Ctx], str], int, bool]] = [
    (m_head_field, 22, True), (m_data_field, 16, True), (m_words, 12, True), (m_payload_bytes, 14, True),
    (m_chunk_order, 8, True), (m_alpha, 3, True), (m_splice_head, 3, True), (m_length_field, 5, False),
    (m_raw_bits, 6, False), (m_raw_bytes, 3, False), (m_truncate, 5, False), (m_signature, 1, True),
]


@dataclass
class Case:
    index: int
    seed_name: str
    data: bytes
    description: list[str]
    touched: list[int]  # DATA step indices the mutations touched (decode at least up to them)
    full: bool  # decode every DATA chunk
    crc_fixed: bool  # every chunk's CRC is correct


def make_case(corpus: list[Seed], seed: int, index: int, full_every: int = 5) -> Case:
    """The `index`-th case of run `seed` (deterministic: the same arguments give the same bytes)."""
    rng = random.Random(f"psc-fuzz:{seed}:{index}")
    valid = [s for s in corpus if s.valid]
    source = rng.choice(valid if valid and rng.random() < 0.85 else corpus)
    ctx = _Ctx(rng, source.doc.copy(), corpus)
    weights = [w for _, w, _ in MUTATIONS]
    description, crc_fixed = [], True
    for _ in range(rng.choice([1, 1, 1, 1, 2, 2, 3])):
        fn, _, keeps_crc = rng.choices(MUTATIONS, weights)[0]
        description.append(fn(ctx))
        crc_fixed &= keeps_crc
        if ctx.raw is not None:
            break  # byte-level: the case is these bytes
    data = ctx.raw if ctx.raw is not None else ctx.doc.to_bytes()
    return Case(index, source.name, data, description, sorted(t for t in ctx.touched if t < 64),
                full_every > 0 and index % full_every == 0, crc_fixed)


# -- checking one input (runs in the worker; callable directly for regression tests) -------------------------
def decode_work(header: container.Header, steps: int) -> float:
    """Denoiser pixel-evaluations of a decode with `steps` DATA chunks (FFDNet priors, signal = pixels)."""
    t, w, m = header.tile, header.window, header.margin
    rows, cols = -(-header.height // t), -(-header.width // t)

    def span(n: int) -> int:  # tiles covered by all regions along one axis
        return sum(min(c + w + m, n) - max(c - m, 0) for c in range(0, n, w))

    evals = (header.sampler_steps * header.samples * max(steps - 1, 0)
             + header.output_sampler_steps * header.output_samples)
    return float(span(rows) * span(cols) * t * t * 3) * evals


def _documented(exc: BaseException, pillow: bool = False) -> bool:
    from PIL import Image, UnidentifiedImageError

    from .errors import PSCError
    if isinstance(exc, PSCError):
        return True
    return pillow and isinstance(exc, (UnidentifiedImageError, Image.DecompressionBombError))


def _expected_shape(header: container.Header) -> tuple[int, ...]:
    channels = len(header.mode)
    return (header.height, header.width) if channels == 1 else (header.height, header.width, channels)


def _exc_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def check_bytes(data: bytes, steps: int | None = None, full: bool = False, pillow_load: bool = True,
                info: bool = True, work_limit: float = DEFAULT_WORK_LIMIT,
                tmpdir: str | None = None) -> dict[str, Any]:
    """Run one input through decode_array, Pillow and `psc info`; classify the outcome.

    Returns {"outcome": "image" | "error:<Class>" | "costly", "failure": None | kind, "detail": str, ...}.
    `steps` limits the DATA chunks decoded (None with full=True: all; None otherwise: DEFAULT_STEPS).
    """
    import numpy as np
    from PIL import Image

    from . import cli, codec
    from .options import set_decode_options
    result: dict[str, Any] = {"outcome": None, "failure": None, "detail": "", "steps_decoded": None,
                              "desync": False}

    def fail(kind: str, detail: str) -> dict[str, Any]:
        result["failure"], result["detail"] = kind, detail
        return result

    # 1. the container alone: what the header says (None if the file does not parse)
    header = None
    try:
        psc = container.read_file(data)
        header = psc.header
        present = len(psc.data)
    except Exception as exc:  # noqa: BLE001 - classified below
        if not _documented(exc):
            return fail("exception", "read_file: " + traceback.format_exc(limit=8))
        parse_error: BaseException | None = exc
    else:
        parse_error = None

    use = None
    if header is not None:
        use = present if full else (steps if steps is not None else DEFAULT_STEPS)
        use = max(1, min(use, max(present, 1)))
        if decode_work(header, use) > work_limit:
            use = 1
        if decode_work(header, use) > work_limit:
            use = None  # valid, but too slow to fuzz: parse/open only
    result["steps_used"] = use

    # 2. decode_array
    decoded = decode_error = None
    if parse_error is not None or use is not None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                decoded = codec.decode_array(data, mode="mean", steps=use, device="cpu")
            result["desync"] = decoded.desync_step is not None
            result["warnings"] = sorted({w.category.__name__ for w in caught})
        except Exception as exc:  # noqa: BLE001
            if not _documented(exc):
                return fail("exception", "decode_array: " + traceback.format_exc(limit=12))
            decode_error = exc
        if parse_error is not None and decode_error is None:
            return fail("inconsistent", f"read_file raised {_exc_text(parse_error)} but decode_array decoded")
        if decoded is not None:
            shape = _expected_shape(header)
            if decoded.pixels.dtype != np.uint8 or decoded.pixels.shape != shape:
                return fail("wrong_shape", f"decoded {decoded.pixels.dtype}{decoded.pixels.shape}, header says "
                                           f"{header.mode} {header.width}x{header.height} -> {shape}")
            if not (1 <= decoded.steps_decoded <= present):
                return fail("wrong_shape", f"steps_decoded {decoded.steps_decoded} of {present} present")
            result["steps_decoded"] = decoded.steps_decoded
            result["outcome"] = "image"
        else:
            result["outcome"] = f"error:{type(decode_error).__name__}"
    else:
        result["outcome"] = "costly"

    # 3. Pillow: open (header only) always; load for some cases, compared with decode_array
    opened: tuple[int, int] | bool | None = False  # size after a successful open; None: a bomb refusal
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=["PSC"])
    except Exception as exc:  # noqa: BLE001
        if not _documented(exc, pillow=True):
            return fail("exception", "Image.open: " + traceback.format_exc(limit=8))
        if isinstance(exc, Image.DecompressionBombError):
            opened = None
        elif decoded is not None:
            return fail("inconsistent", f"Image.open raised {_exc_text(exc)} but decode_array decoded")
    else:
        opened = im.size
        with im:
            if header is not None and (im.size != (header.width, header.height) or im.mode != header.mode):
                return fail("wrong_shape", f"Image.open: {im.mode} {im.size} vs header {header.mode} "
                                           f"{header.width}x{header.height}")
            if pillow_load and use is not None:
                previous = set_decode_options(mode="mean", steps=use, device="cpu")
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        im.load()
                except Exception as exc:  # noqa: BLE001
                    if not _documented(exc, pillow=True):
                        return fail("exception", "Image.load: " + traceback.format_exc(limit=12))
                    if decoded is not None or type(exc) is not type(decode_error):
                        return fail("inconsistent", f"Image.load raised {_exc_text(exc)}; decode_array gave "
                                                    f"{_exc_text(decode_error) if decode_error else 'an image'}")
                else:
                    if decoded is None:
                        return fail("inconsistent", f"Image.load decoded; decode_array raised "
                                                    f"{_exc_text(decode_error)}")
                    if im.tobytes() != np.ascontiguousarray(decoded.pixels).tobytes():
                        return fail("inconsistent", "Image.load pixels differ from decode_array's")
                finally:
                    set_decode_options(**dataclasses.asdict(previous))

    # 4. psc info --json (exit status 0 or 1, never an escaping exception)
    if info:
        with tempfile.NamedTemporaryFile(suffix=".psc", dir=tmpdir, delete=False) as f:
            f.write(data)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli.main(["info", "--json", f.name])
        except BaseException:  # noqa: BLE001 - SystemExit included
            return fail("info", "psc info: " + traceback.format_exc(limit=8))
        finally:
            os.unlink(f.name)
        if status not in (0, 1):
            return fail("info", f"psc info exited {status}: {err.getvalue()[:300]}")
        if status == 0:
            shown = json.loads(out.getvalue())
            if opened is False or (opened and (shown["width"], shown["height"]) != opened):
                return fail("info", f"psc info shows {shown['width']}x{shown['height']}; Image.open gave "
                                    f"{opened or 'an error'}")
        elif opened:
            return fail("info", f"psc info failed ({err.getvalue().strip()[:300]}) where Image.open succeeded")
    return result


# -- the worker process ----------------------------------------------------------------------------------------
def _worker(conn, memory_limit_mb: int, work_limit: float, tmpdir: str) -> None:  # pragma: no cover - subprocess
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(1)
    import pillow_psc  # noqa: F401 - registers the Pillow plugin
    from .priors import load_prior
    for model in ("ffdnet-color", "ffdnet-gray"):
        load_prior(model, "cpu")
    _limit_memory(memory_limit_mb)
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        data, steps, full, pillow_load = job
        start = time.perf_counter()
        try:
            res = check_bytes(data, steps=steps, full=full, pillow_load=pillow_load, work_limit=work_limit,
                              tmpdir=tmpdir)
        except MemoryError:
            res = {"outcome": None, "failure": "exception", "detail": "MemoryError: " + traceback.format_exc(limit=8)}
        except BaseException:  # noqa: BLE001
            res = {"outcome": None, "failure": "exception", "detail": "harness: " + traceback.format_exc(limit=12)}
        res["seconds"] = time.perf_counter() - start
        conn.send(res)


def _limit_memory(extra_mb: int) -> None:
    """Cap the address space at its current size plus extra_mb (Linux; a no-op elsewhere)."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            vm_pages = int(f.read().split()[0])
        limit = vm_pages * os.sysconf("SC_PAGE_SIZE") + extra_mb * 2 ** 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError, ImportError):
        pass


class _Worker:
    """One worker process and its scratch folder, which this side owns: a killed worker cannot remove it."""

    def __init__(self, memory_limit_mb: int, work_limit: float):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.tmpdir = tempfile.mkdtemp(prefix="psc-fuzz-")
        self.proc = ctx.Process(target=_worker, args=(child, memory_limit_mb, work_limit, self.tmpdir), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError("fuzz worker did not start")

    def run(self, job: tuple, timeout: float) -> dict[str, Any] | None:
        """The worker's result, or None after a time-out; raises EOFError if the worker died."""
        self.conn.send(job)
        if not self.conn.poll(timeout):
            return None
        return self.conn.recv()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        self.kill()


# -- the campaign ----------------------------------------------------------------------------------------------
def fuzz(n_cases: int, seed: int = 0, corpus_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None
         = None, *, time_limit: float = DEFAULT_TIME_LIMIT_S, work_limit: float = DEFAULT_WORK_LIMIT,
         memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB, full_every: int = 5, pillow_load_every: int = 4,
         start: int = 0, progress: bool = False) -> dict[str, Any]:
    """Run cases start..start+n_cases-1 of campaign `seed`; return the report (JSON-ready).

    Failures are written to `out_dir`/failures (case-NNNNNN-KIND.psc + .json); `out_dir`/report.json holds the
    report. Without out_dir nothing is written.
    """
    corpus = load_corpus(corpus_dir)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        (out / "failures").mkdir(parents=True, exist_ok=True)
    outcomes: Counter = Counter()
    failures: list[dict[str, Any]] = []
    mutations: Counter = Counter()
    stats = Counter()
    slowest = (0.0, None)
    began = time.perf_counter()
    worker = _Worker(memory_limit_mb, work_limit)
    try:
        for index in range(start, start + n_cases):
            case = make_case(corpus, seed, index, full_every)
            for d in case.description:
                mutations[d.split(" ")[0].rstrip(":")] += 1
            stats["crc_fixed"] += case.crc_fixed
            steps = None if case.full else max([DEFAULT_STEPS] + [t + 2 for t in case.touched if t < 62])
            job = (case.data, steps, case.full, pillow_load_every > 0 and index % pillow_load_every == 0)
            try:
                res = worker.run(job, time_limit)
            except (EOFError, OSError, BrokenPipeError):
                code = worker.proc.exitcode if worker.proc.join(5) is None else worker.proc.exitcode
                res = {"outcome": None, "failure": "crash", "detail": f"worker died (exit code {code})"}
                worker.kill()
                worker = _Worker(memory_limit_mb, work_limit)
            if res is None:
                res = {"outcome": None, "failure": "timeout", "detail": f"no result within {time_limit} s"}
                worker.kill()
                worker = _Worker(memory_limit_mb, work_limit)
            outcomes[res["outcome"] or "failure"] += 1
            stats["desync"] += bool(res.get("desync"))
            stats["full_decodes"] += bool(res.get("steps_used") and case.full)
            if res.get("seconds", 0) > slowest[0]:
                slowest = (res["seconds"], index)
            if res["failure"]:
                entry = {"index": index, "kind": res["failure"], "seed_file": case.seed_name,
                         "mutations": case.description, "detail": res["detail"]}
                if out is not None:
                    stem = out / "failures" / f"case-{index:06d}-{res['failure']}"
                    stem.with_suffix(".psc").write_bytes(case.data)
                    stem.with_suffix(".json").write_text(json.dumps(
                        {**entry, "steps": steps, "full": case.full, "seed": seed}, indent=1))
                    entry["file"] = str(stem.with_suffix(".psc"))
                failures.append(entry)
            done = index - start + 1
            if progress and (done % 100 == 0 or done == n_cases):
                rate = done / (time.perf_counter() - began)
                print(f"psc fuzz: {done}/{n_cases} cases, {len(failures)} failures, {rate:.1f} cases/s",
                      file=sys.stderr, flush=True)
    finally:
        worker.close()
    elapsed = time.perf_counter() - began
    report = {
        "cases": n_cases, "seed": seed, "start": start, "corpus": str(Path(corpus_dir) if corpus_dir else DEFAULT_CORPUS),
        "corpus_files": len(corpus), "seconds": elapsed, "cases_per_s": n_cases / elapsed if elapsed else None,
        "failures": len(failures), "failures_by_kind": dict(Counter(f["kind"] for f in failures)),
        "outcomes": dict(sorted(outcomes.items())), "mutations": dict(sorted(mutations.items())),
        "crc_fixed_cases": stats["crc_fixed"], "desync_cases": stats["desync"],
        "full_decodes": stats["full_decodes"], "slowest_case": {"index": slowest[1], "seconds": slowest[0]},
        "limits": {"time_limit_s": time_limit, "work_limit": work_limit, "memory_limit_mb": memory_limit_mb,
                   "full_every": full_every, "pillow_load_every": pillow_load_every},
        "failure_list": failures,
    }
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    o = report["outcomes"]
    images = o.get("image", 0)
    errors = {k.split(":", 1)[1]: v for k, v in o.items() if k.startswith("error:")}
    lines = [
        f"cases: {report['cases']} (seed {report['seed']}, start {report['start']}, corpus {report['corpus_files']} "
        f"files), {report['seconds']:.1f} s, {report['cases_per_s']:.2f} cases/s",
        f"failures: {report['failures']}" + (f" {report['failures_by_kind']}" if report["failures"] else ""),
        f"outcomes: {images} images ({report['desync_cases']} stopped at a desync check, {report['full_decodes']} "
        f"full decodes), {sum(errors.values())} documented errors "
        + ", ".join(f"{k} {v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1]))
        + f"; {o.get('costly', 0)} too costly to decode (parsed and opened only)",
        f"CRC-correct cases: {report['crc_fixed_cases']}; mutations: "
        + ", ".join(f"{k} {v}" for k, v in report["mutations"].items()),
        f"slowest case: #{report['slowest_case']['index']} {report['slowest_case']['seconds']:.2f} s",
    ]
    lines += [f"  FAIL #{f['index']} {f['kind']}: {f['seed_file']} {f['mutations']} -> "
              f"{f['detail'].strip().splitlines()[-1] if f['detail'].strip() else ''}"
              + (f" [{f['file']}]" if f.get("file") else "") for f in report["failure_list"][:20]]
    return "\n".join(lines)


def replay(paths: list[str], full: bool = True) -> list[dict[str, Any]]:
    """Check saved inputs in this process (full decodes): for reproducing a failure under a debugger."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return [{"file": p, **check_bytes(Path(p).read_bytes(), full=full, work_limit=math.inf)} for p in paths]


def main(args) -> int:
    """`psc fuzz`: returns 1 when any case failed."""
    if args.replay:
        results = replay(args.replay)
        for r in results:
            print(f"{r['file']}: {r['outcome']} {('FAIL ' + r['failure'] + ': ' + r['detail']) if r['failure'] else 'ok'}")
        return 1 if any(r["failure"] for r in results) else 0
    report = fuzz(args.cases, args.seed, args.corpus, args.out, time_limit=args.time_limit, start=args.start,
                  progress=True)
    print(summary(report))
    if args.out:
        print(f"report: {Path(args.out) / 'report.json'}")
    return 1 if report["failures"] else 0
