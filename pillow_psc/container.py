"""The .psc container: chunks <-> bytes (pure Python: no torch, so `psc info` and `Image.open` stay fast).

Layout (normative text in format_spec/PSC.md)::

    signature  89 50 53 43 0D 0A 1A 0A            "\\x89PSC\\r\\n\\x1a\\n"
    chunk*     length:u32be  type:4 ASCII  payload[length]  crc32(type+payload):u32be

Chunk order: HEAD, [ALPH], ancillary (iccp/exif/xmpd, any order), DATA step 0, DATA step 1, ..., PEND.
A type whose first letter is upper case is critical: a reader that does not know it must refuse the file.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from .errors import CorruptFileError, NotPSCError, UnsupportedFileError

SIGNATURE = b"\x89PSC\r\n\x1a\n"
FORMAT_VERSION = 11  # written by this build
# 1 ranks by raw spread (PSC.md §6.10); 3 +coding, 4 +precision, 5 +delta code, 6 +output_sampler_steps,
# 7 +coarse_sigma, 8 thread-invariant upsampling (§6.9), 9 antithetic output samples (§6.9), 10 +mean_sigma_min
# (§6.12), 11 +extrapolation (§6.9)
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
CODINGS = ("innovation", "raw")  # how adaptive measurements are coded (PSC.md §6.11)
PRECISIONS = ("float32", "bfloat16")  # arithmetic of the denoiser (PSC.md §6.2)
MAX_DIMENSION = 65535
MAX_PIXELS = 1 << 28
MAX_CHUNK_LENGTH = (1 << 31) - 1

HEAD, ALPH, DATA, PEND = b"HEAD", b"ALPH", b"DATA", b"PEND"
ANCILLARY = {b"iccp": "icc_profile", b"exif": "exif", b"xmpd": "xmp"}
COLOUR_CHANNELS = {1: "L", 3: "RGB"}


@dataclass
class Header:
    """Everything a decoder needs besides the data chunks: image geometry, the prior, the codec settings."""

    width: int
    height: int
    channels: int  # colour channels coded by PSC: 1 (L) or 3 (RGB)
    has_alpha: bool
    prior_id: str
    model_sha256: bytes  # 32 bytes
    seed: int
    prompt: str
    sampler: str
    sampler_steps: int
    samples: int  # posterior samples per step (encoder and decoder)
    eta: float
    sigma_max: float
    sigma_min: float
    output_samples: int  # samples averaged by the `mean` decode
    tile: int  # tile side in signal pixels; H is block diagonal over tiles
    window: int  # sampling window core, in tiles
    margin: int  # sampling window margin, in tiles
    float8: str  # "e4m3fn"
    delta: float  # quantizer step in signal units
    rows_per_step: list[float] = field(default_factory=lambda: [2.0])  # rows per tile, last value repeats
    coding: str = "innovation"  # "innovation" (range-coded residuals) or "raw" (float8 bytes, paper-faithful)
    precision: str = "float32"  # "bfloat16": the denoiser runs under bfloat16 autocast (fast, less portable)
    output_sampler_steps: int | None = None  # denoiser evaluations per output sample; None: sampler_steps
    coarse_sigma: float = 0.0  # noise levels from this one up are denoised at half resolution; 0: none
    mean_sigma_min: float | None = None  # lowest noise level of the `mean` output's samples; None: sigma_min
    extrapolation: float = 0.0  # weight of the sampler's second-order term (PSC.md §6.9); 0: first order
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.output_sampler_steps is None:  # files before version 6 sample the output like the steps
            self.output_sampler_steps = self.sampler_steps
        if self.mean_sigma_min is None:  # files before version 10 end the `mean` output's samples at sigma_min
            self.mean_sigma_min = self.sigma_min

    @property
    def mode(self) -> str:
        base = COLOUR_CHANNELS[self.channels]
        return base + "A" if self.has_alpha else base

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        out.write(struct.pack(">BIIBB", self.version, self.width, self.height, self.channels, int(self.has_alpha)))
        _put_str(out, self.prior_id, "B")
        out.write(self.model_sha256)
        out.write(struct.pack(">Q", self.seed))
        _put_str(out, self.prompt, "H")
        _put_str(out, self.sampler, "B")
        out.write(struct.pack(">HHfffH", self.sampler_steps, self.samples, self.eta, self.sigma_max,
                              self.sigma_min, self.output_samples))
        out.write(struct.pack(">HHH", self.tile, self.window, self.margin))
        _put_str(out, self.float8, "B")
        out.write(struct.pack(">fB", self.delta, len(self.rows_per_step)))
        out.write(struct.pack(f">{len(self.rows_per_step)}f", *self.rows_per_step))
        if self.version >= 3:
            out.write(struct.pack(">B", CODINGS.index(self.coding)))
        if self.version >= 4:
            out.write(struct.pack(">B", PRECISIONS.index(self.precision)))
        if self.version >= 6:
            out.write(struct.pack(">H", self.output_sampler_steps))
        elif self.output_sampler_steps != self.sampler_steps:
            raise ValueError(f"format version {self.version} cannot hold output_sampler_steps")
        if self.version >= 7:
            out.write(struct.pack(">f", self.coarse_sigma))
        elif self.coarse_sigma:
            raise ValueError(f"format version {self.version} cannot hold coarse_sigma")
        if self.version >= 10:
            out.write(struct.pack(">f", self.mean_sigma_min))
        elif self.mean_sigma_min != self.sigma_min:
            raise ValueError(f"format version {self.version} cannot hold mean_sigma_min")
        if self.version >= 11:
            out.write(struct.pack(">f", self.extrapolation))
        elif self.extrapolation:
            raise ValueError(f"format version {self.version} cannot hold extrapolation")
        return out.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "Header":
        r = _Reader(payload)
        version, width, height, channels, flags = r.unpack(">BIIBB")
        if version not in READABLE_VERSIONS:
            raise UnsupportedFileError(f"PSC format version {version} is not supported (this build reads "
                                       f"{', '.join(map(str, READABLE_VERSIONS))})")
        prior_id = r.string("B")
        sha = r.take(32)
        (seed,) = r.unpack(">Q")
        prompt = r.string("H")
        sampler = r.string("B")
        steps, samples, eta, smax, smin, out_samples = r.unpack(">HHfffH")
        tile, window, margin = r.unpack(">HHH")
        float8 = r.string("B")
        delta, n_rates = r.unpack(">fB")
        rates = list(r.unpack(f">{n_rates}f"))
        (coding,) = r.unpack(">B") if version >= 3 else (0,)
        (precision,) = r.unpack(">B") if version >= 4 else (0,)
        (out_steps,) = r.unpack(">H") if version >= 6 else (steps,)
        (coarse_sigma,) = r.unpack(">f") if version >= 7 else (0.0,)
        (mean_sigma_min,) = r.unpack(">f") if version >= 10 else (smin,)
        (extrapolation,) = r.unpack(">f") if version >= 11 else (0.0,)
        r.finish()
        for name, value, names in (("coding", coding, CODINGS), ("precision", precision, PRECISIONS)):
            if value >= len(names):
                raise CorruptFileError(f"header field {name} has the unknown value {value}")
        hdr = cls(width, height, channels, bool(flags & 1), prior_id, sha, seed, prompt, sampler, steps, samples,
                  eta, smax, smin, out_samples, tile, window, margin, float8, delta, rates,
                  CODINGS[coding], PRECISIONS[precision], out_steps, coarse_sigma, mean_sigma_min, extrapolation,
                  version)
        hdr.validate()
        return hdr

    def validate(self) -> None:
        """Reject values that no encoder writes, before anything is allocated from them."""
        if not (1 <= self.width <= MAX_DIMENSION and 1 <= self.height <= MAX_DIMENSION):
            raise CorruptFileError(f"image size {self.width}x{self.height} is outside 1..{MAX_DIMENSION}")
        if self.width * self.height > MAX_PIXELS:
            raise CorruptFileError(f"image of {self.width * self.height} pixels exceeds the limit of {MAX_PIXELS}")
        if self.channels not in COLOUR_CHANNELS:
            raise CorruptFileError(f"colour channel count {self.channels} is not 1 or 3")
        if self.float8 != "e4m3fn":
            raise UnsupportedFileError(f"float8 variant {self.float8!r} is not supported")
        checks = [
            (1 <= self.tile <= 256, "tile"), (1 <= self.window <= 4096, "window"), (self.margin <= 64, "margin"),
            (1 <= self.sampler_steps <= 1000, "sampler_steps"), (2 <= self.samples <= 256, "samples"),
            (1 <= self.output_sampler_steps <= 1000, "output_sampler_steps"),
            (1 <= self.output_samples <= 256, "output_samples"), (0.0 <= self.eta <= 1.0, "eta"),
            (0.0 < self.sigma_min <= self.sigma_max < 1e4, "sigma range"), (0.0 < self.delta < 1e4, "delta"),
            (self.sigma_min <= self.mean_sigma_min <= self.sigma_max, "mean_sigma_min"),
            (0.0 <= self.coarse_sigma < 1e4, "coarse_sigma"), (0.0 <= self.extrapolation <= 1.0, "extrapolation"),
            (len(self.rows_per_step) >= 1 and all(0.0 < v <= 1024.0 for v in self.rows_per_step), "rows_per_step"),
        ]
        for ok, name in checks:
            if not ok:
                raise CorruptFileError(f"header field {name} is out of range")


@dataclass
class DataChunk:
    """One progressive step: rows added at this step and their range-coded measurements."""

    step: int
    rows: int
    check: int  # CRC-32 of the decoder-visible state that chose this step's rows (desync detection)
    params: bytes  # small per-step side information (entropy-model scales)
    words: bytes  # range-coder output, little-endian uint32 words

    def to_bytes(self) -> bytes:
        return struct.pack(">HIIH", self.step, self.rows, self.check, len(self.params)) + self.params + self.words

    @classmethod
    def from_bytes(cls, payload: bytes) -> "DataChunk":
        r = _Reader(payload)
        step, rows, check, n = r.unpack(">HIIH")
        params = r.take(n)
        words = r.rest()
        if len(words) % 4:
            raise CorruptFileError("DATA chunk: coded length is not a multiple of 4 bytes")
        return cls(step, rows, check, params, words)


@dataclass
class PSCFile:
    """A parsed file. `truncated` is true when the end chunk is missing (the data may still decode)."""

    header: Header
    alpha: bytes | None = None  # zlib-compressed 8-bit plane, width*height bytes once inflated
    metadata: dict[str, bytes] = field(default_factory=dict)  # icc_profile / exif / xmp
    data: list[DataChunk] = field(default_factory=list)
    truncated: bool = False

    def to_bytes(self) -> bytes:
        out = [SIGNATURE, pack_chunk(HEAD, self.header.to_bytes())]
        if self.alpha is not None:
            out.append(pack_chunk(ALPH, self.alpha))
        for ctype, key in ANCILLARY.items():
            if self.metadata.get(key):
                out.append(pack_chunk(ctype, self.metadata[key]))
        out += [pack_chunk(DATA, d.to_bytes()) for d in self.data]
        out.append(pack_chunk(PEND, b""))
        return b"".join(out)


def pack_chunk(ctype: bytes, payload: bytes) -> bytes:
    if len(payload) > MAX_CHUNK_LENGTH:
        raise ValueError(f"{ctype!r} chunk of {len(payload)} bytes exceeds the chunk length limit")
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def iter_chunks(fp: BinaryIO, verify: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
    """Yield (type, payload) after the signature; stop silently at an incomplete trailing chunk.

    With ``verify=False`` payloads are skipped (seeked over) and yielded as None: used to count steps cheaply.
    """
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return
        (length,) = struct.unpack(">I", head[:4])
        ctype = head[4:]
        if not all(65 <= c <= 90 or 97 <= c <= 122 for c in ctype):
            raise CorruptFileError(f"chunk type {ctype!r} is not four ASCII letters")
        if length > MAX_CHUNK_LENGTH:
            raise CorruptFileError(f"chunk {ctype.decode()} declares {length} bytes, over the limit")
        if not verify:
            here = fp.tell()
            end = fp.seek(0, io.SEEK_END)
            if end - here < length + 4:
                return
            fp.seek(here + length + 4)
            yield ctype, None
            continue
        body = fp.read(length + 4)
        if len(body) < length + 4:
            return
        payload, (crc,) = body[:length], struct.unpack(">I", body[length:])
        if zlib.crc32(ctype + payload) != crc:
            raise CorruptFileError(f"CRC mismatch in {ctype.decode()} chunk")
        yield ctype, payload


def read_file(fp: BinaryIO | bytes, header_only: bool = False) -> PSCFile:
    """Parse a .psc stream. With ``header_only`` stop before the first DATA chunk (fast path for `_open`)."""
    if isinstance(fp, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(bytes(fp))
    if fp.read(8) != SIGNATURE:
        raise NotPSCError("not a PSC file (bad signature)")
    chunks = iter_chunks(fp)
    first = next(chunks, None)
    if first is None or first[0] != HEAD:
        if first is None:
            raise CorruptFileError("PSC file ends before its HEAD chunk is complete")
        raise CorruptFileError(f"first chunk is {first[0]!r}, expected HEAD")
    result = PSCFile(Header.from_bytes(first[1]), truncated=True)
    for ctype, payload in chunks:
        if ctype == DATA:
            if header_only:
                return result
            chunk = DataChunk.from_bytes(payload)
            if chunk.step != len(result.data):
                raise CorruptFileError(f"DATA chunk for step {chunk.step} where step {len(result.data)} was expected")
            result.data.append(chunk)
        elif ctype == PEND:
            result.truncated = False
            return result
        elif result.data:
            raise CorruptFileError(f"{ctype.decode()} chunk after the first DATA chunk")
        elif ctype == ALPH:
            if not result.header.has_alpha or result.alpha is not None:
                raise CorruptFileError("unexpected ALPH chunk")
            result.alpha = payload
        elif ctype == HEAD:
            raise CorruptFileError("second HEAD chunk")
        elif ctype in ANCILLARY:
            result.metadata[ANCILLARY[ctype]] = payload
        elif 65 <= ctype[0] <= 90:
            raise UnsupportedFileError(f"unknown critical chunk {ctype.decode()}")
        # unknown ancillary chunks are skipped
    return result


def count_data_chunks(fp: BinaryIO) -> tuple[int, bool]:
    """Count complete DATA chunks from the current position without reading payloads; also report PEND."""
    count = 0
    for ctype, _ in iter_chunks(fp, verify=False):
        if ctype == PEND:
            return count, True
        count += ctype == DATA
    return count, False


def step_prefix_lengths(data: bytes) -> list[int]:
    """Length of the shortest prefix of `data` that holds k complete DATA chunks, for k = 1, 2, ...

    By the truncation rule each such prefix decodes to the step-k image: these are the file's quality layers.
    """
    fp = io.BytesIO(data)
    if fp.read(len(SIGNATURE)) != SIGNATURE:
        raise NotPSCError("not a PSC file (bad signature)")
    return [fp.tell() for ctype, _ in iter_chunks(fp, verify=False) if ctype == DATA]


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CorruptFileError("chunk payload is shorter than its fields")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self, len_fmt: str) -> str:
        (n,) = self.unpack(">" + len_fmt)
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptFileError("text field is not valid UTF-8") from exc

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise CorruptFileError("chunk payload has trailing bytes")


def _put_str(out: io.BytesIO, text: str, len_fmt: str) -> None:
    raw = text.encode("utf-8")
    limit = 255 if len_fmt == "B" else 65535
    if len(raw) > limit:
        raise ValueError(f"text field of {len(raw)} bytes exceeds {limit}")
    out.write(struct.pack(">" + len_fmt, len(raw)) + raw)
