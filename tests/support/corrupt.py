"""Real encodings of a photo and the ways the campaigns damage them (shared by the
`predict` and `serve` campaigns, which feed the same kinds of broken files)."""

from __future__ import annotations

import io
import struct
import zlib

from hypothesis import strategies as st
from PIL import Image

# Pillow's format name -> the usual file name suffix
FORMATS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "PPM": ".ppm",
}


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with a valid CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def damage(draw: st.DrawFn, encoded: bytes) -> tuple[str, bytes]:
    """The encoding truncated, bit-flipped, overwritten or flipped and truncated: how, and
    the bytes."""
    data = bytearray(encoded)
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "flip+truncate"]))
    if "flip" in how:
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
    if how == "overwrite":
        start = draw(st.integers(0, len(data) - 1))
        data[start : start + 64] = draw(st.binary(min_size=1, max_size=64))
    if "truncate" in how:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return how, bytes(data)
