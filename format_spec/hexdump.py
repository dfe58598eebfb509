"""Annotated dump of a .psc file: an xxd-style listing, then one table row per field (Markdown).

Usage::

    python format_spec/hexdump.py format_spec/vectors/gray_8x8.psc > dump.md

Standard library only; the parser follows format_spec/PSC.md, not pillow_psc, so it doubles as a check of the
spec's byte tables (tests/test_container.py runs it on the vectors).
"""

from __future__ import annotations

import struct
import sys
import zlib

SIGNATURE = b"\x89PSC\r\n\x1a\n"


def xxd(data: bytes, width: int = 16) -> str:
    lines = []
    for off in range(0, len(data), width):
        row = data[off:off + width]
        groups = " ".join(row[i:i + 2].hex() for i in range(0, len(row), 2))
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{off:08x}: {groups:<{width * 2 + width // 2 - 1}}  {text}")
    return "\n".join(lines)


class _Fields:
    def __init__(self, data: bytes):
        self.data, self.rows = data, []

    def add(self, off: int, size: int, name: str, value) -> int:
        raw = self.data[off:off + size]
        shown = raw.hex(" ") if size <= 8 else raw[:6].hex(" ") + f" .. ({size} bytes)"
        self.rows.append((off, size, shown, name, value))
        return off + size


def _head(f: _Fields, p: int, end: int) -> str:
    """Annotate HEAD; returns the file's coding ("innovation" or "raw")."""
    d = f.data
    version = d[p]
    p = f.add(p, 1, "version (u8)", version)
    p = f.add(p, 4, "width (u32)", struct.unpack(">I", d[p:p + 4])[0])
    p = f.add(p, 4, "height (u32)", struct.unpack(">I", d[p:p + 4])[0])
    p = f.add(p, 1, "channels (u8)", d[p])
    p = f.add(p, 1, "flags (u8; bit 0 = has_alpha)", d[p])
    for name, lfmt in (("prior_id", "B"), ("model_sha256", None), ("seed", "Q"), ("prompt", "H"), ("sampler", "B")):
        if name == "model_sha256":
            p = f.add(p, 32, "model_sha256 (32 bytes)", d[p:p + 32].hex())
        elif name == "seed":
            p = f.add(p, 8, "seed (u64)", struct.unpack(">Q", d[p:p + 8])[0])
        else:
            size = struct.calcsize(">" + lfmt)
            (n,) = struct.unpack(">" + lfmt, d[p:p + size])
            p = f.add(p, size, f"{name} length (u{8 * size})", n)
            if n:
                p = f.add(p, n, f"{name} (UTF-8)", repr(d[p:p + n].decode("utf-8")))
    for name, fmt in (("sampler_steps", ">H"), ("samples", ">H"), ("eta", ">f"), ("sigma_max", ">f"),
                      ("sigma_min", ">f"), ("output_samples", ">H"), ("tile", ">H"), ("window", ">H"),
                      ("margin", ">H")):
        size = struct.calcsize(fmt)
        (v,) = struct.unpack(fmt, d[p:p + size])
        kind = "f32" if fmt.endswith("f") else "u16"
        p = f.add(p, size, f"{name} ({kind})", round(v, 9) if kind == "f32" else v)
    (n,) = struct.unpack(">B", d[p:p + 1])
    p = f.add(p, 1, "float8 length (u8)", n)
    p = f.add(p, n, "float8 (UTF-8)", repr(d[p:p + n].decode()))
    p = f.add(p, 4, "delta (f32)", round(struct.unpack(">f", d[p:p + 4])[0], 9))
    (n,) = struct.unpack(">B", d[p:p + 1])
    p = f.add(p, 1, "rows_per_step count (u8)", n)
    for i in range(n):
        p = f.add(p, 4, f"rows_per_step[{i}] (f32)", round(struct.unpack(">f", d[p:p + 4])[0], 9))
    coding = "innovation"
    if version >= 3:
        coding = {0: "innovation", 1: "raw"}.get(d[p], "?")
        p = f.add(p, 1, "coding (u8)", f"{d[p]} ({coding})")
    if version >= 4:
        p = f.add(p, 1, "precision (u8)", f"{d[p]} ({ {0: 'float32', 1: 'bfloat16'}.get(d[p], '?') })")
    if version >= 6:
        p = f.add(p, 2, "output_sampler_steps (u16)", struct.unpack(">H", d[p:p + 2])[0])
    if version >= 7:
        p = f.add(p, 4, "coarse_sigma (f32)", round(struct.unpack(">f", d[p:p + 4])[0], 9))
    if version >= 10:
        p = f.add(p, 4, "mean_sigma_min (f32)", round(struct.unpack(">f", d[p:p + 4])[0], 9))
    if version >= 11:
        p = f.add(p, 4, "extrapolation (f32)", round(struct.unpack(">f", d[p:p + 4])[0], 9))
    if p != end:
        raise ValueError("HEAD payload length does not match its fields")
    return coding


def _data(f: _Fields, p: int, end: int, coding: str) -> None:
    d = f.data
    step, rows, check, n = struct.unpack(">HIIH", d[p:p + 12])
    p = f.add(p, 2, "step (u16)", step)
    p = f.add(p, 4, "rows (u32)", rows)
    p = f.add(p, 4, "check (u32)", f"0x{check:08x}")
    p = f.add(p, 2, "params length (u16)", n)
    params = d[p:p + n]
    if step == 0 and n:
        p = f.add(p, 1, "params: delta_code (i8)", struct.unpack(">b", params[:1])[0])
        if n > 1:
            levels = list(struct.unpack(f">{n - 1}b", params[1:]))
            p = f.add(p, n - 1, "params: band levels (i8, channel-major)", levels)
    elif n:
        p = f.add(p, 1, "params: spread-scale code (i8)", struct.unpack(">b", params[:1])[0])
        if n > 1:
            p = f.add(p, 1, "params: delta code (i8)", struct.unpack(">b", params[1:2])[0])
    words = (end - p) // 4
    if end > p and step > 0 and coding == "raw":
        f.add(p, end - p, f"measurements ({end - p} bytes: float8 e4m3fn, zero-padded)", d[p:end].hex(" "))
    elif end > p:
        f.add(p, end - p, f"words ({words} x u32 LE, range coder)",
              " ".join(f"{w:08x}" for w in struct.unpack(f"<{words}I", d[p:end])))


def fields(data: bytes) -> list[tuple[int, int, str, str, object]]:
    """(offset, size, bytes shown, field, value) for every field of every complete chunk."""
    f = _Fields(data)
    f.add(0, 8, "signature", repr(data[:8]))
    pos, coding = 8, "innovation"
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8]) if pos + 8 <= len(data) else (0, b"")
        if pos + 12 + length > len(data):
            f.add(pos, len(data) - pos, "incomplete trailing chunk (ignored)", ctype.decode("latin-1") or "?")
            break
        name = ctype.decode("latin-1")
        f.add(pos, 4, f"[{name}] length (u32)", length)
        f.add(pos + 4, 4, f"[{name}] type", repr(name))
        body, end = pos + 8, pos + 8 + length
        if ctype == b"HEAD":
            coding = _head(f, body, end)
        elif ctype == b"DATA":
            _data(f, body, end, coding)
        elif length:
            f.add(body, length, f"[{name}] payload", f"{length} bytes")
        (crc,) = struct.unpack(">I", data[end:end + 4])
        ok = "ok" if crc == zlib.crc32(data[pos + 4:end]) else "MISMATCH"
        f.add(end, 4, f"[{name}] CRC-32 of type+payload", f"0x{crc:08x} ({ok})")
        pos = end + 4
    return f.rows


def markdown(data: bytes) -> str:
    out = ["```", xxd(data), "```", "", "| offset | size | bytes | field | value |", "|---:|---:|---|---|---|"]
    for off, size, shown, name, value in fields(data):
        out.append(f"| {off} | {size} | `{shown}` | {name} | {str(value).replace('|', '/')} |")
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as fh:
        print(markdown(fh.read()))
