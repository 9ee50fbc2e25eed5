"""Hand-made bad images for tests: a PNG whose header claims a huge size, and one that verifies but cannot load."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _png(color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (8, 8)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, format="PNG")
    return b.getvalue()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def _build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
        for t, d in chunks
    )
    return b"\x89PNG\r\n\x1a\n" + body


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid small PNG whose IHDR (with a correct CRC) claims width x height pixels."""
    chunks = _chunks(_png())
    t, d = chunks[0]
    assert t == b"IHDR"
    chunks[0] = (t, struct.pack(">II", width, height) + d[8:])
    return _build(chunks)


def unloadable_png() -> bytes:
    """A PNG whose chunks and checksums are intact (verify() passes) but whose pixel data is not zlib data."""
    chunks = [(t, b"\x00garbage-not-zlib" * 4 if t == b"IDAT" else d) for t, d in _chunks(_png())]
    return _build(chunks)
