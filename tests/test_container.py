"""The .psc container alone (pillow_psc/container.py): framing, CRCs, header fields, chunk order, truncation,
limits; and that the container module does not need torch. No codec, no model: these tests are fast."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pillow_psc import container as C
from pillow_psc.errors import CorruptFileError, NotPSCError, PSCError, UnsupportedFileError

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "format_spec" / "vectors"


def _hexdump():
    from test_vectors import make_vectors
    return make_vectors.load_file_module(REPO / "format_spec" / "hexdump.py", "psc_hexdump")


def header(**changes) -> C.Header:
    base = C.Header(width=33, height=21, channels=3, has_alpha=True, prior_id="ffdnet-color", model_sha256=bytes(range(32)),
                    seed=2 ** 64 - 1, prompt="a parrot \u00e9", sampler="ddnm", sampler_steps=6, samples=8, eta=1.0,
                    sigma_max=75 / 255, sigma_min=1.5 / 255, output_samples=4, tile=16, window=16, margin=2,
                    float8="e4m3fn", delta=0.08, rows_per_step=[2.0, 1.5, 0.25], coding="raw",
                    precision="bfloat16", output_sampler_steps=24, coarse_sigma=0.3, mean_sigma_min=20 / 255,
                    extrapolation=0.375)
    return dataclasses.replace(base, **changes)


def chunk(ctype: bytes, payload: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(ctype + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def data_chunk(step: int, words: bytes = b"\x01\x02\x03\x04", params: bytes = b"\x00") -> bytes:
    return chunk(b"DATA", C.DataChunk(step, 3, 0xDEADBEEF, params, words).to_bytes())


def psc_file(*chunks: bytes, hdr: C.Header | None = None) -> bytes:
    return C.SIGNATURE + chunk(b"HEAD", (hdr or header()).to_bytes()) + b"".join(chunks)


PEND = chunk(b"PEND", b"")


# -- signature and framing ----------------------------------------------------------------------------------------
def test_signature_bytes() -> None:
    assert C.SIGNATURE == bytes([0x89, 0x50, 0x53, 0x43, 0x0D, 0x0A, 0x1A, 0x0A])


def test_pack_chunk_layout() -> None:
    raw = C.pack_chunk(b"DATA", b"hello")
    assert raw[:4] == b"\x00\x00\x00\x05" and raw[4:8] == b"DATA" and raw[8:13] == b"hello"
    assert raw[13:] == struct.pack(">I", zlib.crc32(b"DATAhello"))
    assert C.pack_chunk(b"PEND", b"") == b"\x00\x00\x00\x00PEND" + struct.pack(">I", zlib.crc32(b"PEND"))


def test_pack_chunk_length_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert C.MAX_CHUNK_LENGTH == 2 ** 31 - 1
    monkeypatch.setattr(C, "MAX_CHUNK_LENGTH", 4)
    C.pack_chunk(b"note", b"1234")
    with pytest.raises(ValueError):
        C.pack_chunk(b"note", b"12345")


def test_iter_chunks() -> None:
    body = chunk(b"HEAD", b"x") + chunk(b"note", b"") + chunk(b"DATA", b"abcd")
    assert list(C.iter_chunks(io.BytesIO(body))) == [(b"HEAD", b"x"), (b"note", b""), (b"DATA", b"abcd")]
    assert list(C.iter_chunks(io.BytesIO(body), verify=False)) == [(b"HEAD", None), (b"note", None), (b"DATA", None)]
    for cut in range(len(body)):  # an incomplete trailing chunk ends the iteration silently
        got = list(C.iter_chunks(io.BytesIO(body[:cut])))
        assert len(got) == sum(cut >= end for end in (13, 25, 41))
        assert len(list(C.iter_chunks(io.BytesIO(body[:cut]), verify=False))) == len(got)


@pytest.mark.parametrize("ctype", [b"DA A", b"DAT1", b"\x00ATA", b"D\xc3TA", b"[ead", b"HEA@"])
def test_chunk_type_must_be_letters(ctype: bytes) -> None:
    with pytest.raises(CorruptFileError):
        list(C.iter_chunks(io.BytesIO(chunk(ctype, b""))))


def test_declared_length_over_limit() -> None:
    raw = struct.pack(">I", 2 ** 31) + b"DATA"  # rejected before any read of the payload
    with pytest.raises(CorruptFileError):
        list(C.iter_chunks(io.BytesIO(raw)))
    with pytest.raises(CorruptFileError):
        list(C.iter_chunks(io.BytesIO(raw), verify=False))


@pytest.mark.parametrize("where", ["type", "payload", "crc"])
def test_crc_mismatch(where: str) -> None:
    good = bytearray(psc_file(data_chunk(0), PEND))
    pos = {"type": 12, "payload": 20, "crc": 8 + 8 + len(header().to_bytes())}[where]
    good[pos] ^= 0x01 if where != "type" else 0x20  # HEAD -> hEAD keeps the type a valid letter
    with pytest.raises(CorruptFileError, match="CRC|HEAD"):
        C.read_file(bytes(good))


def test_crc_of_data_chunk_checked_on_read() -> None:
    raw = bytearray(psc_file(data_chunk(0), data_chunk(1), PEND))
    raw[-12 - 5] ^= 0x80  # inside DATA step 1's words
    with pytest.raises(CorruptFileError, match="CRC"):
        C.read_file(bytes(raw))
    assert C.count_data_chunks(io.BytesIO(bytes(raw[8:]))) == (2, True)  # the cheap count does not verify


# -- the header ---------------------------------------------------------------------------------------------------
def test_header_round_trip() -> None:
    h = header()
    back = C.Header.from_bytes(h.to_bytes())
    f32 = lambda v: struct.unpack(">f", struct.pack(">f", v))[0]  # noqa: E731
    assert back == dataclasses.replace(h, sigma_max=f32(h.sigma_max), sigma_min=f32(h.sigma_min), delta=f32(h.delta),
                                       coarse_sigma=f32(h.coarse_sigma), mean_sigma_min=f32(h.mean_sigma_min))
    assert back.to_bytes() == h.to_bytes()
    assert back.mode == "RGBA" and header(has_alpha=False).mode == "RGB"
    assert header(channels=1).mode == "LA" and header(channels=1, has_alpha=False).mode == "L"


def test_header_byte_layout() -> None:
    """HEAD built by hand from the byte table in PSC.md equals Header.to_bytes."""
    h = header()
    prior, prompt = h.prior_id.encode(), h.prompt.encode()
    raw = (bytes([11]) + struct.pack(">II", 33, 21) + bytes([3, 1]) + bytes([len(prior)]) + prior + bytes(range(32))
           + struct.pack(">Q", 2 ** 64 - 1) + struct.pack(">H", len(prompt)) + prompt + b"\x04ddnm"
           + struct.pack(">HHfffH", 6, 8, 1.0, 75 / 255, 1.5 / 255, 4) + struct.pack(">HHH", 16, 16, 2)
           + b"\x06e4m3fn" + struct.pack(">fB", 0.08, 3) + struct.pack(">3f", 2.0, 1.5, 0.25)
           + bytes([1, 1]) + struct.pack(">Hfff", 24, 0.3, 20 / 255, 0.375))
    assert h.to_bytes() == raw
    fixed = 1 + 4 + 4 + 1 + 1 + 1 + 32 + 8 + 2 + 1 + 2 + 2 + 4 + 4 + 4 + 2 + 2 + 2 + 2 + 1 + 4 + 1 + 1 + 1 + 2 + 4 + 4 + 4
    assert len(raw) == fixed + len(prior) + len(prompt) + 4 + 6 + 4 * 3


@pytest.mark.parametrize("version", [0, 12, 255])
def test_header_version(version: int) -> None:
    raw = bytearray(header().to_bytes())
    raw[0] = version
    with pytest.raises(UnsupportedFileError):
        C.Header.from_bytes(bytes(raw))


@pytest.mark.parametrize("version, appended", [(1, 0), (2, 0), (3, 1), (4, 2), (5, 2), (6, 4), (7, 8), (8, 8),
                                               (9, 8), (10, 12)])
def test_older_versions_are_still_read(version: int, appended: int) -> None:
    """Versions 1 and 2 end after rows_per_step (innovation coding, float32), version 3 after coding, versions 4
    and 5 after precision, version 6 after output_sampler_steps, versions 7 to 9 after coarse_sigma, version 10
    after mean_sigma_min; before version 6 the output samples take sampler_steps, before version 7 nothing is
    denoised at half resolution, before version 10 the mean output's samples stop at sigma_min, before version 11
    the sampler is first order (extrapolation 0)."""
    older = {"output_sampler_steps": 6} if version < 6 else {}
    older.update(coarse_sigma=0.3 if version >= 7 else 0.0, mean_sigma_min=1.5 / 255, extrapolation=0.0)
    raw = header(version=version, **older).to_bytes()
    assert raw[1:] == header(**older).to_bytes()[1:len(raw)] and raw[0] == version
    assert len(raw) == len(header().to_bytes()) - 16 + appended
    back = C.Header.from_bytes(raw)
    coarse = struct.unpack(">f", struct.pack(">f", 0.3))[0] if version >= 7 else 0.0
    assert (back.version, back.coding, back.precision, back.output_sampler_steps, back.coarse_sigma,
            back.mean_sigma_min, back.extrapolation) == (version, "raw" if appended else "innovation",
                                     "bfloat16" if appended >= 2 else "float32", 24 if version >= 6 else 6, coarse,
                                     back.sigma_min, 0.0)
    assert header().version == C.FORMAT_VERSION == 11
    with pytest.raises(CorruptFileError, match="trailing"):
        C.Header.from_bytes(bytes([version]) + header().to_bytes()[1:])  # version-11 fields in an older header
    with pytest.raises(ValueError, match="extrapolation"):
        header(version=version, **{**older, "extrapolation": 0.5}).to_bytes()
    if version < 10:
        with pytest.raises(ValueError, match="mean_sigma_min"):
            header(version=version, **{**older, "mean_sigma_min": 20 / 255}).to_bytes()
    if version < 7:
        with pytest.raises(ValueError, match="coarse_sigma"):
            header(version=version, **{**older, "coarse_sigma": 0.3}).to_bytes()
    if version < 6:
        with pytest.raises(ValueError, match="output_sampler_steps"):
            header(version=version, **{**older, "output_sampler_steps": 24}).to_bytes()


@pytest.mark.parametrize("field, offset, values", [("coding", -16, C.CODINGS), ("precision", -15, C.PRECISIONS)])
def test_enumerated_fields(field: str, offset: int, values: tuple[str, ...]) -> None:
    raw = bytearray(header().to_bytes())
    assert getattr(C.Header.from_bytes(bytes(raw)), field) == values[1] and raw[offset] == 1
    raw[offset] = 0
    assert getattr(C.Header.from_bytes(bytes(raw)), field) == values[0]
    raw[offset] = 2
    with pytest.raises(CorruptFileError, match=field):
        C.Header.from_bytes(bytes(raw))


def test_header_flags_and_strings() -> None:
    raw = bytearray(header(has_alpha=False).to_bytes())
    raw[10] = 0x01
    assert C.Header.from_bytes(bytes(raw)).has_alpha
    with pytest.raises(CorruptFileError, match="UTF-8"):
        C.Header.from_bytes(header(prior_id="\u00e9").to_bytes().replace("\u00e9".encode(), b"\xff\xfe"))
    with pytest.raises(ValueError):
        header(prior_id="x" * 256).to_bytes()
    with pytest.raises(ValueError):
        header(prompt="x" * 65536).to_bytes()
    assert C.Header.from_bytes(header(prompt="x" * 65535).to_bytes()).prompt == "x" * 65535


def test_header_payload_length() -> None:
    raw = header().to_bytes()
    with pytest.raises(CorruptFileError, match="trailing"):
        C.Header.from_bytes(raw + b"\x00")
    for cut in (0, 1, 11, 40, len(raw) - 1):
        with pytest.raises(CorruptFileError, match="shorter"):
            C.Header.from_bytes(raw[:cut])


RANGES = [
    ("width", 0, 1), ("width", 65536, 65535), ("height", 0, 1), ("height", 65536, 65535),
    ("channels", 2, 1), ("channels", 4, 3), ("channels", 0, 3),
    ("tile", 0, 1), ("tile", 257, 256), ("window", 0, 1), ("window", 4097, 4096), ("margin", 65, 64),
    ("sampler_steps", 0, 1), ("sampler_steps", 1001, 1000), ("samples", 1, 2), ("samples", 257, 256),
    ("output_samples", 0, 1), ("output_samples", 257, 256), ("output_sampler_steps", 0, 1),
    ("output_sampler_steps", 1001, 1000), ("eta", -0.5, 0.0), ("eta", 1.5, 1.0),
    ("eta", float("nan"), 0.5), ("sigma_min", 0.0, 1e-6), ("sigma_max", 1e4, 9999.0), ("delta", 0.0, 1e-6),
    ("delta", 1e4, 9999.0), ("delta", float("inf"), 1.0), ("coarse_sigma", -0.5, 0.0),
    ("coarse_sigma", 1e4, 9999.0), ("coarse_sigma", float("nan"), 0.45), ("mean_sigma_min", 1 / 255, 1.5 / 255),
    ("mean_sigma_min", 76 / 255, 75 / 255), ("mean_sigma_min", float("nan"), 0.1), ("extrapolation", -0.5, 0.0),
    ("extrapolation", 1.5, 1.0), ("extrapolation", float("nan"), 0.5), ("rows_per_step", [], [1.0]),
    ("rows_per_step", [1.0, 0.0], [1.0, 1e-3]), ("rows_per_step", [1025.0], [1024.0]),
]


@pytest.mark.parametrize("field, bad, good", RANGES)
def test_header_ranges(field: str, bad, good) -> None:
    extra = {"width": 1, "height": 1} if field in ("width", "height") else {}
    ok = header(**{**extra, field: good})
    C.Header.from_bytes(ok.to_bytes())
    with pytest.raises(CorruptFileError):
        C.Header.from_bytes(header(**{**extra, field: bad}).to_bytes())


def test_sigma_order_and_pixel_limit() -> None:
    with pytest.raises(CorruptFileError):
        C.Header.from_bytes(header(sigma_min=0.5, sigma_max=0.25).to_bytes())
    C.Header.from_bytes(header(sigma_min=0.25, sigma_max=0.25, mean_sigma_min=0.25).to_bytes())
    assert C.MAX_DIMENSION == 65535 and C.MAX_PIXELS == 2 ** 28
    C.Header.from_bytes(header(width=16384, height=16384).to_bytes())
    C.Header.from_bytes(header(width=65535, height=4096).to_bytes())
    with pytest.raises(CorruptFileError, match="pixels"):
        C.Header.from_bytes(header(width=16385, height=16384).to_bytes())


def test_float8_variant() -> None:
    with pytest.raises(UnsupportedFileError):
        C.Header.from_bytes(header(float8="e5m2").to_bytes())


# -- DATA chunks --------------------------------------------------------------------------------------------------
def test_data_chunk_round_trip_and_errors() -> None:
    d = C.DataChunk(7, 123456, 0x01020304, b"\xfe", b"\x00" * 8)
    raw = d.to_bytes()
    assert raw[:12] == struct.pack(">HIIH", 7, 123456, 0x01020304, 1) and raw[12:] == b"\xfe" + b"\x00" * 8
    assert C.DataChunk.from_bytes(raw) == d
    assert C.DataChunk.from_bytes(struct.pack(">HIIH", 0, 1, 0, 0)).words == b""
    with pytest.raises(CorruptFileError, match="multiple of 4"):
        C.DataChunk.from_bytes(raw + b"\x00")
    with pytest.raises(CorruptFileError):
        C.DataChunk.from_bytes(raw[:11])
    with pytest.raises(CorruptFileError):
        C.DataChunk.from_bytes(struct.pack(">HIIH", 0, 1, 0, 5) + b"abc")


# -- chunk order --------------------------------------------------------------------------------------------------
def test_full_file_round_trip_and_writer_order() -> None:
    psc = C.PSCFile(header(), b"alpha", {"xmp": b"X", "icc_profile": b"I", "exif": b"E"},
                    [C.DataChunk(0, 3, 1, b"\x00", b"abcd"), C.DataChunk(1, 2, 2, b"\x01", b"")])
    raw = psc.to_bytes()
    types = [raw[o + 4:o + 8] for o in _offsets(raw)]
    assert types == [b"HEAD", b"ALPH", b"iccp", b"exif", b"xmpd", b"DATA", b"DATA", b"PEND"]
    back = C.read_file(raw)
    assert back.alpha == b"alpha" and back.metadata == psc.metadata and back.data == psc.data
    assert not back.truncated
    assert C.read_file(io.BytesIO(raw)).data == psc.data
    assert b"iccp" not in C.PSCFile(header(), None, {"icc_profile": b""}).to_bytes()


def _offsets(raw: bytes) -> list[int]:
    out, pos = [], 8
    while pos + 12 <= len(raw):
        (length,) = struct.unpack(">I", raw[pos:pos + 4])
        if pos + 12 + length > len(raw):
            break
        out.append(pos)
        pos += 12 + length
    return out


@pytest.mark.parametrize("raw, error, match", [
    (b"", NotPSCError, "signature"),
    (C.SIGNATURE[:7], NotPSCError, "signature"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, NotPSCError, "signature"),
    (C.SIGNATURE, CorruptFileError, "HEAD"),
    (C.SIGNATURE + chunk(b"HEAD", b"")[:10], CorruptFileError, "HEAD"),
    (C.SIGNATURE + data_chunk(0), CorruptFileError, "HEAD"),
    (C.SIGNATURE + chunk(b"iccp", b"x"), CorruptFileError, "HEAD"),
    (psc_file(chunk(b"HEAD", header().to_bytes())), CorruptFileError, "second HEAD"),
    (psc_file(chunk(b"ALPH", b"a"), hdr=header(has_alpha=False)), CorruptFileError, "ALPH"),
    (psc_file(chunk(b"ALPH", b"a"), chunk(b"ALPH", b"a")), CorruptFileError, "ALPH"),
    (psc_file(data_chunk(0), chunk(b"ALPH", b"a")), CorruptFileError, "after the first DATA"),
    (psc_file(data_chunk(0), chunk(b"iccp", b"i")), CorruptFileError, "after the first DATA"),
    (psc_file(data_chunk(0), chunk(b"note", b"n")), CorruptFileError, "after the first DATA"),
    (psc_file(data_chunk(0), chunk(b"SPCL", b"n")), CorruptFileError, "after the first DATA"),
    (psc_file(data_chunk(0), data_chunk(0)), CorruptFileError, "step 0 where step 1"),
    (psc_file(data_chunk(1)), CorruptFileError, "step 1 where step 0"),
    (psc_file(data_chunk(0), data_chunk(2)), CorruptFileError, "step 2"),
    (psc_file(chunk(b"SPCL", b"future")), UnsupportedFileError, "critical"),
    (psc_file(chunk(b"Zzzz", b"")), UnsupportedFileError, "critical"),
    (psc_file(data_chunk(0, words=b"\x00\x00\x00")), CorruptFileError, "multiple of 4"),
])
def test_read_errors(raw: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        C.read_file(raw)
    assert issubclass(error, PSCError) and issubclass(error, OSError)


def test_ancillary_chunks() -> None:
    raw = psc_file(chunk(b"note", b"?"), chunk(b"exif", b"E1"), chunk(b"ALPH", b"a"), chunk(b"zzzz", b""),
                   chunk(b"exif", b"E2"), data_chunk(0), PEND)
    psc = C.read_file(raw)
    assert psc.alpha == b"a" and psc.metadata == {"exif": b"E2"} and len(psc.data) == 1  # the last one wins


def test_pend_ends_the_file() -> None:
    raw = psc_file(data_chunk(0), PEND)
    for tail in (b"garbage after the end", data_chunk(1), chunk(b"SPCL", b""), b"\x00\x00"):
        psc = C.read_file(raw + tail)
        assert len(psc.data) == 1 and not psc.truncated
    assert C.read_file(psc_file(PEND)).data == [] and not C.read_file(psc_file(PEND)).truncated
    assert C.read_file(psc_file(chunk(b"PEND", b"ignored payload"))).truncated is False


def test_header_only() -> None:
    raw = psc_file(chunk(b"ALPH", b"a"), data_chunk(0, words=b"bad"), PEND)  # the DATA payload is not parsed
    psc = C.read_file(raw, header_only=True)
    assert psc.alpha == b"a" and psc.data == [] and psc.truncated
    with pytest.raises(CorruptFileError):
        C.read_file(raw)


# -- truncation ---------------------------------------------------------------------------------------------------
def test_truncation_inside_every_chunk() -> None:
    """Every prefix of a file with every chunk kind: a documented error, or the complete chunks before the cut."""
    psc = C.PSCFile(header(), zlib.compress(b"\xff" * 33 * 21), {"icc_profile": b"I" * 5, "exif": b"E", "xmp": b"X"},
                    [C.DataChunk(i, 3, i, b"\x00", b"w" * 4 * (i + 1)) for i in range(3)])
    raw = psc.to_bytes()
    ends = [o + 12 + struct.unpack(">I", raw[o:o + 4])[0] for o in _offsets(raw)]
    kinds = [raw[o + 4:o + 8] for o in _offsets(raw)]
    for n in range(len(raw) + 1):
        prefix = raw[:n]
        if n < 8:
            with pytest.raises(NotPSCError):
                C.read_file(prefix)
            continue
        if n < ends[0]:
            with pytest.raises(CorruptFileError, match="ends before its HEAD"):
                C.read_file(prefix)
            continue
        got = C.read_file(prefix)
        done = [k for k, e in zip(kinds, ends) if e <= n]
        assert (got.alpha is not None) == (b"ALPH" in done)
        assert set(got.metadata) == {C.ANCILLARY[k] for k in done if k in C.ANCILLARY}
        assert got.data == psc.data[:done.count(b"DATA")]
        assert got.truncated == (n < len(raw))
        fp = io.BytesIO(prefix)
        fp.seek(8)
        assert C.count_data_chunks(fp) == (done.count(b"DATA"), n == len(raw))


# -- the vectors through the container and the independent dump tool ----------------------------------------------
def test_vectors_parse_with_hexdump() -> None:
    hexdump = _hexdump()
    expected = json.loads((VECTORS / "expected.json").read_text())["files"]
    for name, entry in expected.items():
        data = (VECTORS / name).read_bytes()
        if not data.startswith(C.SIGNATURE):
            continue
        rows = hexdump.fields(data)
        values = {field: value for _, _, _, field, value in rows}
        if "width (u32)" in values and entry["outcome"] == "image":
            hdr = C.read_file(data).header
            assert (values["width (u32)"], values["height (u32)"], values["tile (u16)"]) == (hdr.width, hdr.height,
                                                                                              hdr.tile)
            assert all("MISMATCH" not in str(v) for _, _, _, f, v in rows if "CRC" in f), name
        covered = sum(size for _, size, _, _, _ in rows)
        assert covered == len(data), f"{name}: the dump covers {covered} of {len(data)} bytes"
    assert "00000000: 8950 5343 0d0a 1a0a" in hexdump.xxd((VECTORS / "gray_8x8.psc").read_bytes())


# -- no torch -----------------------------------------------------------------------------------------------------
def test_container_does_not_import_torch() -> None:
    """Load pillow_psc.container under a stub parent package (pillow_psc/__init__ imports the codec and torch)."""
    code = f"""
import importlib, sys, types
pkg = types.ModuleType("pillow_psc")
pkg.__path__ = [{str(REPO / "pillow_psc")!r}]
sys.modules["pillow_psc"] = pkg
container = importlib.import_module("pillow_psc.container")
data = container.PSCFile(container.Header(1, 1, 1, False, "ffdnet-gray", bytes(32), 0, "", "ddnm", 1, 2, 1.0, 1.0,
                                          0.1, 1, 16, 1, 0, "e4m3fn", 0.1)).to_bytes()
assert container.read_file(data).header.width == 1
heavy = sorted(m for m in ("torch", "numpy", "PIL", "constriction", "ml_dtypes") if m in sys.modules)
print(",".join(heavy) or "none")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"
