"""Build the PSC conformance vectors in format_spec/vectors/ (files + expected.json).

Usage::

    cd /work/main && PYTHONPATH=. python format_spec/make_vectors.py [OUT_DIR]
    # or: PYTHONPATH=. python -m pytest tests/test_vectors.py --regen-vectors

Every good file is made by the real encoder from a crop of a Kodak photograph (tests/conftest.py: ``kodak_crop``
and the ``FAST`` codec configuration); truncated and corrupt variants are derived from them byte by byte. For
files that decode, expected.json records the SHA-256 of the decoded pixels (mode "mean") on the machine that
built the vectors; for bad files it records the exception class that format_spec/PSC.md requires. The build
fails if the implementation does not raise what the spec requires, or if a decode does not match the encoder's
own reconstruction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import platform
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VECTORS = HERE / "vectors"
SIGNATURE = b"\x89PSC\r\n\x1a\n"


def load_file_module(path: Path, name: str):
    """Import a .py file by path under `name` (once); the spec tools and tests/conftest.py are not packages."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _conftest():
    """tests/conftest.py (for kodak_crop, FAST and psnr), loaded under a private name."""
    return load_file_module(REPO / "tests" / "conftest.py", "_psc_vectors_conftest")


# -- raw chunk surgery (independent of pillow_psc.container on purpose) -------------------------------------------
def chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, payload) of every complete chunk after the signature."""
    out, pos = [], len(SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if pos + 12 + length > len(data):
            break
        out.append((pos, data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def chunk(ctype: bytes, payload: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(ctype + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(chunk(t, p) for t, p in parts)


def parts_of(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(t, p) for _, t, p in chunks(data)]


def find(data: bytes, ctype: bytes, nth: int = 0) -> tuple[int, bytes]:
    """(offset, payload) of the nth chunk of a type."""
    hits = [(o, p) for o, t, p in chunks(data) if t == ctype]
    return hits[nth]


def replace_head(data: bytes, edit) -> bytes:
    """Rewrite the HEAD payload with `edit(bytearray)` and recompute its CRC."""
    parts = parts_of(data)
    payload = bytearray(parts[0][1])
    edit(payload)
    parts[0] = (b"HEAD", bytes(payload))
    return assemble(parts)


def head_fields(data: bytes) -> dict:
    """HEAD's fields by name, in pillow_psc.fuzz's lenient field table (not the reader's)."""
    from pillow_psc import fuzz
    return {name: value for name, _, value in fuzz.parse_head(find(data, b"HEAD")[1])}


def set_head_fields(data: bytes, **values) -> bytes:
    """`data` with HEAD fields set by name, CRC recomputed. The field table is pillow_psc.fuzz's lenient one (any
    value packs, so out-of-range ones can be written), not the reader's."""
    from pillow_psc import fuzz

    def edit(payload: bytearray) -> None:
        fields = fuzz.parse_head(bytes(payload))
        assert {name for name, _, _ in fields} >= set(values), f"no HEAD field among {sorted(values)}"
        payload[:] = fuzz.pack_head([[name, fmt, values.get(name, value)] for name, fmt, value in fields])

    return replace_head(data, edit)


# -- the good files ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Source:
    name: str
    kodak: str
    size: tuple[int, int]  # (width, height)
    mode: str  # L, LA, RGB, RGBA
    max_bytes: int
    description: str
    seed: int = 0
    prompt: str = ""
    config: dict = dataclasses.field(default_factory=dict)  # CodecConfig overrides on top of FAST
    alpha_from: str | None = None  # Kodak photo whose posterised grey crop becomes the alpha plane
    metadata: dict = dataclasses.field(default_factory=dict)


SOURCES = [
    Source("gray_8x8.psc", "kodim08", (8, 8), "L", 223,
           "L 8x8 (smaller than one 16x16 tile): the file of the worked hex dump in PSC.md"),
    Source("gray_16x16.psc", "kodim19", (16, 16), "L", 254, "L 16x16, one tile"),
    Source("gray_17x9.psc", "kodim05", (17, 9), "L", 260, "L 17x9: odd sizes, two tiles, padding"),
    Source("la_15x15.psc", "kodim15", (15, 15), "LA", 428, "LA 15x15: grey with an ALPH chunk",
           alpha_from="kodim03"),
    Source("rgb_16x16.psc", "kodim23", (16, 16), "RGB", 300, "RGB 16x16, one tile, several adaptive steps"),
    Source("rgb_33x21.psc", "kodim23", (33, 21), "RGB", 420,
           "RGB 33x21: odd sizes, 3x2 tiles, seed 7 and a prompt (ignored by FFDNet)", seed=7, prompt="parrots"),
    Source("rgba_24x16.psc", "kodim07", (24, 16), "RGBA", 640,
           "RGBA 24x16 with ALPH, iccp, exif and xmpd chunks", alpha_from="kodim21",
           metadata={"icc_profile": b"not a real ICC profile, opaque to PSC",
                     "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00", "xmp": b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"}),
    Source("rgb_48x32_windows.psc", "kodim01", (48, 32), "RGB", 640,
           "RGB 48x32 with tile 8, window 2, margin 1 (6x4 tiles, 6 sampling windows), rows_per_step [1.0, 0.5]",
           seed=12345, config={"tile": 8, "window": 2, "margin": 1, "rows_per_step": (1.0, 0.5)}),
    Source("rgb_32x24_raw.psc", "kodim04", (32, 24), "RGB", 304,
           "RGB 32x24 with coding raw: adaptive measurements as unscaled float8 bytes (the paper's quantizer)",
           config={"coding": "raw"}),
    Source("rgb_16x16_bf16.psc", "kodim23", (16, 16), "RGB", 300,
           "rgb_16x16.psc with precision bfloat16: the denoiser runs under bfloat16 autocast (its pixels depend on "
           "the CPU's bfloat16 kernels: AVX-512 without bfloat16 instructions on the reference build)",
           config={"precision": "bfloat16"}),
    Source("rgb_32x32_coarse.psc", "kodim19", (32, 32), "RGB", 408,
           "RGB 32x32 with coarse_sigma 0.1: noise levels from 0.1 up are denoised at half resolution (the first of "
           "the 3 sampler steps, the first 3 of the 6 output ones)", config={"coarse_sigma": 0.1}),
]
NAMES_GOOD = [s.name for s in SOURCES]

#: Files of earlier format versions, kept verbatim (never re-encoded), with the SHA-256 of the pixels their encoder
#: reconstructed. Readers must go on decoding every step of them; the pixels may differ from the original ones as
#: much as any file's do between builds (PSC.md §11): v1_rgb_33x21.psc is 1 value off by 1 level since 1.0
#: switched FFDNet to channels-last convolutions. expected.json records both hashes.
LEGACY = {
    "v1_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 1 (candidate rows ranked by raw spread)",
                         "d9d95e5c62381bf9065a58f2f8580296ce952b38e94b46409cf4291eecf040f2"),
    "v2_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 2 (no coding field)",
                         "61b786f43a29046b4624159e50fb3b74701aa79db2ad4a7262bce456b0f65045"),
    "v3_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 3 (no precision field)",
                         "54025ca613af2e16f6fadf93e9f31eacc07c9c6cef658f50a455f5ca6037fe4d"),
    "v4_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 4 (adaptive steps without a delta code)",
                         "54025ca613af2e16f6fadf93e9f31eacc07c9c6cef658f50a455f5ca6037fe4d"),
    "v5_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 5 (output samples take sampler_steps)",
                         "79d8156eea5a635ab8d3eb10b990e5a5329b1abbcb016180d8ad3a65a2d53b2e"),
    "v6_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 6 (no coarse_sigma field)",
                         "4bfb54383144deb8696b20f2fc8baded11c23c0722eb8b950bb50c64f1d60cc0"),
    "v7_rgb_32x32_coarse.psc": ("rgb_32x32_coarse.psc as written in format version 7 (half-resolution estimates "
                                "upsampled by torch's bilinear kernel)",
                                "676c2e8fcae55da05c8b87eacc57dc13c99012b51614f1c07252c4c781593e4a"),
    "v8_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 8 (output samples each draw their own noise)",
                         "4bfb54383144deb8696b20f2fc8baded11c23c0722eb8b950bb50c64f1d60cc0"),
    "v9_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 9 (no mean_sigma_min field: the output's "
                         "samples stop at sigma_min)",
                         "eb2db847b7f2e571dc6bc49f6253ccb45b7383edbc4a6f8c21e92909b667736c"),
    "v10_rgb_33x21.psc": ("rgb_33x21.psc as written in format version 10 (no extrapolation field: a first-order "
                          "sampler)", "70f439c0721d1b40e5fd0a423aced9ee01f4b862e17d664d48c664620837d2cf"),
}


def source_pixels(src: Source) -> np.ndarray:
    cf = _conftest()
    base = cf.kodak_crop(src.kodak, src.size, "L" if src.mode in ("L", "LA") else "RGB")
    if src.mode in ("L", "RGB"):
        return base
    alpha = (cf.kodak_crop(src.alpha_from, src.size, "L") // 64 * 85).astype(np.uint8)  # 4-level cut-out mask
    colour = base[:, :, None] if base.ndim == 2 else base
    return np.concatenate([colour, alpha[:, :, None]], 2)


#: Encoder choices (not format rules) pinned here, so retuning the encoder's defaults leaves the vectors and the
#: worked example in PSC.md unchanged.
PINNED_ENCODER_SETTINGS = {"delta": 0.08, "base_share": 0.5, "sigma_min": 1.5 / 255, "mean_sigma_min": 20 / 255,
                           "extrapolation": 0.5}


def encode_source(src: Source):
    import pillow_psc
    cf = _conftest()
    cfg = dataclasses.replace(cf.FAST, **{**PINNED_ENCODER_SETTINGS, **src.config})
    return pillow_psc.encode(source_pixels(src), max_bytes=src.max_bytes, seed=src.seed, prompt=src.prompt,
                             config=cfg, metadata=src.metadata, device="cpu")


# -- derived files ----------------------------------------------------------------------------------------------
def derived(good: dict[str, bytes]) -> list[tuple[str, bytes, str, dict]]:
    """(name, bytes, description, expectation) for truncated and corrupt variants."""
    out = []
    base = good["rgb_16x16.psc"]
    cs = chunks(base)
    data_offsets = [o for o, t, _ in cs if t == b"DATA"]
    head_off, head_payload = find(base, b"HEAD")
    head_end = head_off + 12 + len(head_payload)
    pend_off = [o for o, t, _ in cs if t == b"PEND"][0]

    def data_end(i):
        o, p = find(base, b"DATA", i)
        return o + 12 + len(p)

    def middle(i):
        o, p = find(base, b"DATA", i)
        return o + 8 + len(p) // 2

    img = {"outcome": "image"}
    out += [
        ("trunc_in_signature.psc", base[:5], "rgb_16x16.psc cut to 5 bytes (inside the signature)",
         {"outcome": "error", "error": "NotPSCError"}),
        ("trunc_in_head.psc", base[:head_off + 8 + len(head_payload) // 2], "rgb_16x16.psc cut inside HEAD",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("trunc_after_head.psc", base[:head_end], "rgb_16x16.psc cut right after HEAD",
         {"outcome": "error", "error": "NoDataError"}),
        ("trunc_in_data0.psc", base[:middle(0)], "rgb_16x16.psc cut inside DATA step 0",
         {"outcome": "error", "error": "NoDataError"}),
        ("trunc_after_data0.psc", base[:data_end(0)], "rgb_16x16.psc cut after the first complete DATA chunk",
         dict(img, steps=1, truncated=True)),
        ("trunc_in_data1.psc", base[:middle(1)], "rgb_16x16.psc cut inside DATA step 1 (decodes as step 0)",
         dict(img, steps=1, truncated=True, same_pixels_as="trunc_after_data0.psc")),
        ("trunc_in_data2.psc", base[:middle(2)], "rgb_16x16.psc cut inside DATA step 2 (decodes as step 1)",
         dict(img, steps=2, truncated=True)),
        ("trunc_no_pend.psc", base[:pend_off], "rgb_16x16.psc without its PEND chunk",
         dict(img, truncated=True, same_pixels_as="rgb_16x16.psc")),
        ("trunc_in_pend.psc", base[:-2], "rgb_16x16.psc with the last 2 bytes of PEND cut",
         dict(img, truncated=True, same_pixels_as="rgb_16x16.psc")),
    ]
    assert data_offsets[0] == head_end

    # -- corrupt variants
    flipped = bytearray(base)
    o1, p1 = find(base, b"DATA", 1)
    flipped[o1 + 8 + len(p1) - 3] ^= 0x10  # a bit of step 1's range-coded words
    bad_crc = bytearray(base)
    bad_crc[head_end - 1] ^= 0x01  # last byte of HEAD's CRC

    model_sha256 = head_fields(base)["model_sha256"]
    parts = parts_of(base)
    unknown_critical = assemble(parts[:1] + [(b"SPCL", b"future critical data")] + parts[1:])
    unknown_ancillary = assemble(parts_of(good["gray_16x16.psc"])[:1] + [(b"note", b"an unknown ancillary chunk")]
                                 + parts_of(good["gray_16x16.psc"])[1:])
    anc_after_data = assemble(parts[:2] + [(b"note", b"ancillary chunk after DATA")] + parts[2:])
    swapped = assemble(parts[:1] + [parts[2], parts[1]] + parts[3:])
    dup_data0 = assemble(parts[:2] + [parts[1]] + parts[2:])

    def edit_data(i, edit, data=base):
        ps = parts_of(data)
        idx = [k for k, (t, _) in enumerate(ps) if t == b"DATA"][i]
        payload = bytearray(ps[idx][1])
        edit(payload)
        ps[idx] = (b"DATA", bytes(payload))
        return assemble(ps)

    def bump_check(p):
        p[6:10] = struct.pack(">I", (struct.unpack(">I", bytes(p[6:10]))[0] + 1) & 0xFFFFFFFF)

    rgba = good["rgba_24x16.psc"]
    rgba_parts = parts_of(rgba)
    bad_alpha = assemble([(t, b"\x78\x9c not zlib" if t == b"ALPH" else p) for t, p in rgba_parts])
    no_alpha = assemble([(t, p) for t, p in rgba_parts if t != b"ALPH"])

    out += [
        ("bad_signature.psc", b"\x89PSD" + base[4:], "rgb_16x16.psc with signature byte 3 changed",
         {"outcome": "error", "error": "NotPSCError"}),
        ("bad_crc_head.psc", bytes(bad_crc), "rgb_16x16.psc with one bit of HEAD's CRC flipped",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("bitflip_data1.psc", bytes(flipped), "rgb_16x16.psc with one bit flipped in DATA step 1 (CRC not fixed)",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("huge_dimensions.psc", set_head_fields(base, width=100000, height=100000),
         "width = height = 100000 (> MAX_DIMENSION), CRC recomputed", {"outcome": "error", "error": "CorruptFileError"}),
        ("too_many_pixels.psc", set_head_fields(base, width=65535, height=65535),
         "65535x65535 (> MAX_PIXELS), CRC recomputed", {"outcome": "error", "error": "CorruptFileError"}),
        ("zero_width.psc", set_head_fields(base, width=0, height=16), "width 0, CRC recomputed",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("unknown_critical_chunk.psc", unknown_critical, "a critical chunk SPCL between HEAD and DATA",
         {"outcome": "error", "error": "UnsupportedFileError"}),
        ("unknown_ancillary_chunk.psc", unknown_ancillary,
         "gray_16x16.psc with an unknown ancillary chunk 'note' before DATA (skipped)",
         dict(img, same_pixels_as="gray_16x16.psc")),
        ("ancillary_after_data.psc", anc_after_data, "an ancillary chunk between DATA step 0 and DATA step 1",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("data_out_of_order.psc", swapped, "DATA step 1 before DATA step 0",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("data_repeated.psc", dup_data0, "DATA step 0 twice", {"outcome": "error", "error": "CorruptFileError"}),
        ("wrong_model_hash.psc",
         set_head_fields(base, model_sha256=bytes([model_sha256[0] ^ 0xFF]) + model_sha256[1:]),
         "first byte of model_sha256 inverted, CRC recomputed",
         {"outcome": "error", "error": "ModelMismatchError"}),
        ("version_12.psc", set_head_fields(base, version=12), "format version 12, CRC recomputed",
         {"outcome": "error", "error": "UnsupportedFileError"}),
        ("coding_unknown.psc", set_head_fields(base, coding=2),
         "HEAD coding field 2 (only 0 and 1 are defined), CRC recomputed", {"outcome": "error", "error": "CorruptFileError"}),
        ("precision_unknown.psc", set_head_fields(base, precision=2),
         "HEAD precision field 2 (only 0 and 1 are defined), CRC recomputed",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("output_steps_zero.psc", set_head_fields(base, output_sampler_steps=0),
         "HEAD output_sampler_steps 0 (the range is 1..1000), CRC recomputed",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("coarse_sigma_negative.psc",
         set_head_fields(base, coarse_sigma=-0.3),
         "HEAD coarse_sigma -0.3 (the range is 0 ..< 10^4), CRC recomputed",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("mean_sigma_min_above_max.psc",
         set_head_fields(base, mean_sigma_min=1.0),
         "HEAD mean_sigma_min 1.0, above sigma_max (the range is sigma_min ..= sigma_max), CRC recomputed",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("extrapolation_above_one.psc",
         set_head_fields(base, extrapolation=1.5),
         "HEAD extrapolation 1.5 (the range is 0 ..= 1), CRC recomputed", {"outcome": "error", "error": "CorruptFileError"}),
        ("raw_nan.psc", edit_data(1, lambda p: p.__setitem__(12, 0x7F), good["rgb_32x24_raw.psc"]),
         "rgb_32x24_raw.psc with its first raw float8 byte of DATA step 1 set to NaN (0x7F), CRC recomputed",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("base_check_mismatch.psc", edit_data(0, bump_check), "check value of DATA step 0 changed, CRC recomputed",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("desync_step2.psc", edit_data(2, bump_check),
         "check value of DATA step 2 changed, CRC recomputed: decoding stops after step 1 with a RuntimeWarning",
         dict(img, steps=2, desync_step=2, same_pixels_as="trunc_in_data2.psc")),
        ("alpha_not_zlib.psc", bad_alpha, "rgba_24x16.psc whose ALPH payload does not inflate",
         {"outcome": "error", "error": "CorruptFileError"}),
        ("alpha_missing.psc", no_alpha, "rgba_24x16.psc without its ALPH chunk: alpha decodes as 255",
         dict(img)),
    ]
    return out


def _as3d(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _module(name: str):
    return load_file_module(HERE / f"{name}.py", name)


def entropy_tables_sha256() -> str:
    """SHA-256 of the quantized CDFs of every int8 level -128..127 (254 little-endian u32 each, level order)."""
    ref = _module("psc_entropy_ref")
    h = hashlib.sha256()
    for level in range(-128, 128):
        h.update(np.array(ref.level_cdf(level), dtype="<u4").tobytes())
    return h.hexdigest()


WORKED_EXAMPLE = "gray_8x8.psc"
_BEGIN, _END = "<!-- worked-example:begin (generated by make_vectors.py) -->", "<!-- worked-example:end -->"


def worked_example_markdown(vectors_dir: str | Path = VECTORS) -> str:
    return _module("hexdump").markdown((Path(vectors_dir) / WORKED_EXAMPLE).read_bytes())


def update_spec_dump(vectors_dir: str | Path = VECTORS, spec: Path = HERE / "PSC.md") -> None:
    """Rewrite the worked hex dump in PSC.md (between its markers) from the current vector file."""
    if not spec.exists():
        return
    text = spec.read_text()
    if _BEGIN in text and _END in text:
        head, rest = text.split(_BEGIN, 1)
        _, tail = rest.split(_END, 1)
        spec.write_text(head + _BEGIN + "\n" + worked_example_markdown(vectors_dir) + "\n" + _END + tail)


#: Largest difference (of 255) allowed in any sample between a decode on another build and the expected decode,
#: when every step decodes (PSC.md §11, §16).
PIXEL_TOLERANCE = 2
#: Folder (inside the vectors folder) of the expected decodes, one PNG per decodable file, named after it.
EXPECTED_DECODES = "expected"


def expected_decode_path(vectors_dir: str | Path, name: str) -> Path:
    return Path(vectors_dir) / EXPECTED_DECODES / (Path(name).stem + ".png")


def write_expected_decode(vectors_dir: str | Path, name: str, pixels: np.ndarray, mode: str) -> None:
    """The reference build's decode as a PNG (lossless; L, LA, RGB or RGBA like the file)."""
    from PIL import Image
    path = expected_decode_path(vectors_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels), mode).save(path, optimize=True)


def read_expected_decode(vectors_dir: str | Path, name: str) -> np.ndarray:
    from PIL import Image
    with Image.open(expected_decode_path(vectors_dir, name)) as im:
        return np.asarray(im)


def pixel_sha256(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def reference_build() -> dict:
    import importlib.metadata as md

    import ml_dtypes
    import PIL
    import torch
    return {"python": platform.python_version(), "machine": platform.machine(), "system": platform.system(),
            "numpy": np.__version__, "torch": torch.__version__, "constriction": md.version("constriction"),
            "ml_dtypes": ml_dtypes.__version__, "pillow": PIL.__version__, "device": "cpu", "cpu": _cpu_model()}


def _cpu_model() -> str:
    """The CPU's model name (Linux), which decides the convolution kernels and so the last bits of a decode."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def _pillow_stage(data: bytes) -> str:
    """Where Pillow fails on a bad file: 'open' (header-only parse) or 'load' (full decode)."""
    from pillow_psc import container
    import io
    if not data.startswith(SIGNATURE):
        return "open"
    try:
        container.read_file(data, header_only=True)
        fp = io.BytesIO(data)
        fp.seek(len(SIGNATURE))
        container.count_data_chunks(fp)
    except OSError:
        return "open"
    return "load"


def build_vectors(out_dir: str | Path = VECTORS) -> dict:
    """Encode the good files, derive the bad ones, decode everything, write files and expected.json."""
    import torch

    import pillow_psc
    from pillow_psc import errors

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same results, and far faster on a busy 2-core machine
    try:
        good, info = {}, {}
        for src in SOURCES:
            enc = encode_source(src)
            good[src.name] = enc.data
            info[src.name] = (src, enc)
        files = {}
        entries = [(s.name, good[s.name], s.description, {"outcome": "image"}) for s in SOURCES] + derived(good)
        entries += [(name, (VECTORS / name).read_bytes(), description,
                     {"outcome": "image", "desync_step": None, "original_pixels_sha256": sha})
                    for name, (description, sha) in LEGACY.items()]
        for name, data, description, want in entries:
            entry = {"description": description, "size": len(data), "file_sha256": hashlib.sha256(data).hexdigest()}
            if want["outcome"] == "image":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    dec = pillow_psc.decode_array(data, mode="mean", device="cpu")
                h = dec.header
                entry.update(outcome="image", width=h.width, height=h.height, mode=h.mode,
                             steps=dec.steps_decoded, steps_present=dec.steps_present, truncated=dec.truncated,
                             desync_step=dec.desync_step, pixels_sha256=pixel_sha256(dec.pixels),
                             precision=h.precision)
                write_expected_decode(out_dir, name, dec.pixels, h.mode)
                if dec.desync_step is not None:
                    assert any(issubclass(w.category, RuntimeWarning) for w in caught), name
                    entry["warning"] = "RuntimeWarning"
                for key in ("steps", "truncated", "desync_step", "pixels_sha256"):
                    if key in want:
                        assert entry[key] == want[key], (name, key, entry[key], want[key])
                if "original_pixels_sha256" in want:
                    assert entry["steps"] == entry["steps_present"], name
                    entry["original_pixels_sha256"] = want["original_pixels_sha256"]
                if name in info:
                    src, enc = info[name]
                    assert dec.steps_decoded == enc.steps and not dec.truncated, name
                    nc = h.channels
                    colour = _as3d(dec.pixels)[:, :, :nc]
                    assert np.array_equal(colour, _as3d(enc.reconstruct("mean"))[:, :, :nc]), \
                        f"{name}: the decoder's image differs from the encoder's final state"
                    original = _as3d(source_pixels(src))
                    entry["psnr_db"] = round(_conftest().psnr(colour, original[:, :, :nc]), 3)
                    if src.alpha_from:
                        assert np.array_equal(dec.pixels[:, :, -1], original[:, :, -1]), "alpha must be lossless"
                    config = {k: list(v) if isinstance(v, tuple) else v for k, v in src.config.items()}
                    entry["source"] = {"kodak": src.kodak, "crop": list(src.size), "mode": src.mode,
                                       "alpha_from": src.alpha_from, "max_bytes": src.max_bytes, "seed": src.seed,
                                       "prompt": src.prompt, "config": "FAST" + (f" + {config}" if config else "")}
            else:
                cls = getattr(errors, want["error"])
                try:
                    pillow_psc.decode_array(data, mode="mean", device="cpu")
                except cls:
                    pass
                else:
                    raise AssertionError(f"{name}: decode_array did not raise {want['error']}")
                stage = _pillow_stage(data)
                entry.update(outcome="error", error=want["error"], pillow_stage=stage,
                             pillow_error="UnidentifiedImageError" if want["error"] == "NotPSCError" else want["error"])
            if "same_pixels_as" in want:
                entry["same_pixels_as"] = want["same_pixels_as"]
            files[name] = entry
            (out_dir / name).write_bytes(data)
        for name, entry in files.items():
            if "same_pixels_as" in entry:
                assert entry["pixels_sha256"] == files[entry["same_pixels_as"]]["pixels_sha256"], name
        for stale in out_dir.glob("*.psc"):
            if stale.name not in files:
                stale.unlink()
        decodable = {expected_decode_path(out_dir, n) for n, e in files.items() if e["outcome"] == "image"}
        for stale in (out_dir / EXPECTED_DECODES).glob("*.png"):
            if stale not in decodable:
                stale.unlink()
        expected = {
            "format_version": pillow_psc.container.FORMAT_VERSION,
            "decode": {"mode": "mean", "steps": None, "device": "cpu"},
            "pixels_sha256": "SHA-256 of the decoded uint8 pixels in C order: rows top to bottom, pixels left to "
                             "right, channels interleaved (L | LA | RGB | RGBA, alpha last); equals Image.tobytes()",
            "expected_decodes": f"{EXPECTED_DECODES}/NAME.png: the decoded pixels of NAME.psc on the reference build "
                                "(PNG, the file's mode); other builds conform within pixel_tolerance (PSC.md §16)",
            "pixel_tolerance": PIXEL_TOLERANCE,
            "reference_build": reference_build(),
            "entropy_tables_sha256": entropy_tables_sha256(),
            "files": files,
        }
        (out_dir / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        if out_dir.resolve() == VECTORS.resolve():
            update_spec_dump(out_dir)
        return expected
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else VECTORS
    result = build_vectors(target)
    for fname, e in result["files"].items():
        print(f"{fname:32s} {e['size']:5d} B  {e['outcome']:5s}  "
              + (f"{e['width']}x{e['height']} {e['mode']} steps={e['steps']}" if e["outcome"] == "image" else e["error"]))
