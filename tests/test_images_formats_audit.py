"""Regressions of decoding found by an audit of the pixels each kind of input gives the
models (each failed before its fix)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from faceutils import encode, png_chunk
from numpy.typing import NDArray
from PIL import Image

from agegender import Estimator, images
from agegender.errors import ImageError


def _overshooting(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The photo as a 0..1 float image, enlarged with a cubic filter: its values pass 1 (and
    0) a little at sharp edges, as any 0..1 image resized so does."""
    unit = rgb.astype(np.float32) / 255.0
    big = cv2.resize(unit, (768, 768), interpolation=cv2.INTER_CUBIC)
    assert 1.0 < big.max() < 1.5 and big.min() < 0.0
    return big


def test_a_unit_float_array_a_little_past_one_is_read_as_0_to_1(
    astronaut_rgb: NDArray[np.uint8], estimator: Estimator
) -> None:
    big = _overshooting(astronaut_rgb)
    expected = np.clip(big * 255.0 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(images.load(big).rgb, expected)  # was read as 0..255: ~black
    faces = estimator.predict(big)  # was no face at all
    assert len(faces) == 1
    assert len(estimator.predict(expected)) == 1
    assert faces[0].box == pytest.approx(estimator.predict(expected)[0].box)


def test_a_float_tiff_a_little_past_one_is_read_as_0_to_1(
    astronaut_rgb: NDArray[np.uint8],
) -> None:
    gray = _overshooting(astronaut_rgb).mean(axis=2).astype(np.float32)
    data = encode(Image.fromarray(gray, "F"), "TIFF")
    rgb = images.load(data).rgb
    expected = np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(rgb[:, :, 0].astype(int) - expected).max() <= 1  # float32 vs 64 rounding
    # a 0..255 float image is still read as 0..255
    np.testing.assert_array_equal(
        images.load(np.full((4, 4, 3), 200.0)).rgb, np.full((4, 4, 3), 200, np.uint8)
    )


def _png(
    width: int, height: int, colour_type: int, rows: bytes, trns: bytes, depth: int = 16
) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"tRNS", trns)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def test_a_sixteen_bit_grey_pngs_transparent_level_is_composited_on_white() -> None:
    grey = np.full((4, 4), 0x8080, ">u2")
    grey[0, 0] = 0x1234  # the tRNS level
    grey[0, 1] = 0x1235  # one step off: opaque
    rows = b"".join(b"\x00" + row.tobytes() for row in grey)
    rgb = images.load(_png(4, 4, 0, rows, struct.pack(">H", 0x1234))).rgb
    assert rgb[0, 0].tolist() == [255, 255, 255]  # was 18: the keyed grey, opaque
    assert rgb[0, 1].tolist() == [18, 18, 18]
    assert rgb[1, 1].tolist() == [128, 128, 128]
    # the same pixels in an 8-bit PNG with its tRNS level: the same answer
    eight = Image.fromarray(np.where(grey == 0x1234, 0, 128).astype(np.uint8))
    assert images.load(encode(eight, "PNG", transparency=0)).rgb[0, 0].tolist() == [255] * 3


def test_a_sixteen_bit_rgb_pngs_transparent_colour_is_composited_on_white() -> None:
    rgb16 = np.full((4, 4, 3), 0x8080, ">u2")
    rgb16[0, 0] = (0x1234, 0x5678, 0x9ABC)  # the tRNS colour
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    data = _png(4, 4, 2, rows, struct.pack(">HHH", 0x1234, 0x5678, 0x9ABC))
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "RGB"  # Pillow keeps 8 bits a sample
        assert check.info["transparency"] == (0x1234, 0x5678, 0x9ABC)
    rgb = images.load(data).rgb
    assert rgb[0, 0].tolist() == [255, 255, 255]  # was (18, 86, 154): the keyed colour
    assert rgb[1, 1].tolist() == [128, 128, 128]


def test_a_premultiplied_grey_pil_image_is_read() -> None:
    la = Image.new("LA", (3, 2), (100, 255))
    la.putpixel((0, 0), (100, 0))
    rgb = images.load(la.convert("La")).rgb  # was "conversion from La to L not supported"
    np.testing.assert_array_equal(rgb, images.load(la).rgb)
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [100, 100, 100]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_float_tiff_with_nan_is_an_image_error(astronaut_rgb: NDArray[np.uint8], bad) -> None:
    """As a float array with NaN is: the one NaN made the whole image scale as 0..255
    (black: "no face found"), and numpy's cast warning went to stderr."""
    gray = astronaut_rgb.mean(axis=2).astype(np.float32) / 255.0
    gray[5, 5] = bad
    data = encode(Image.fromarray(gray, "F"), "TIFF")
    with pytest.raises(ImageError, match=r"^spoilt\.tif: .*NaN or infinite pixel values"):
        images.decode_bytes(data, name="spoilt.tif")


@pytest.mark.parametrize(
    "make_p", [lambda im: im.quantize(4), lambda im: im.convert("P")], ids=["quantize", "convert"]
)
def test_a_pil_palette_image_with_alpha_is_composited_as_its_png_is(make_p) -> None:
    """A "P" image whose palette holds alpha (quantize / convert("P") of an RGBA image)
    gave its transparent pixels' colour (black here) as a PIL image, white as its PNG."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[0, 0] = (0, 0, 0, 0)
    palette = make_p(Image.fromarray(rgba, "RGBA"))
    assert palette.mode == "P" and "transparency" not in palette.info
    from_pil = images.load(palette).rgb
    assert from_pil[0, 0].tolist() == [255, 255, 255]  # was [0, 0, 0]
    assert from_pil[1, 1].tolist() == [200, 0, 0]
    np.testing.assert_array_equal(from_pil, images.load(encode(palette, "PNG")).rgb)
    np.testing.assert_array_equal(from_pil, images.load(rgba).rgb)


def test_a_one_bit_pngs_transparent_level_is_composited_on_white() -> None:
    bits = Image.new("1", (8, 1), 1)
    bits.putpixel((0, 0), 0)  # black: the tRNS level
    data = encode(bits, "PNG", transparency=0)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "1" and check.info["transparency"] == 0
    rgb = images.load(data).rgb
    assert rgb[0, 0].tolist() == [255, 255, 255]  # was [0, 0, 0]: the keyed black, opaque
    # as the same pixels in an 8-bit grey PNG with its tRNS level
    np.testing.assert_array_equal(
        rgb, images.load(encode(bits.convert("L"), "PNG", transparency=0)).rgb
    )


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_a_low_bit_grey_pngs_transparent_level_is_composited_on_white(depth: int) -> None:
    """A 2- or 4-bit grey PNG's tRNS level: Pillow scales the pixels to 0..255 but kept the
    key at the file's depth, so the transparent level stayed grey (2-bit level 1: 85). Every
    level in turn is the key."""
    top = (1 << depth) - 1
    levels = np.arange(top + 1)
    per_byte = 8 // depth
    width = len(levels) + (-len(levels)) % per_byte
    packed = np.zeros(width, np.uint8)
    packed[: len(levels)] = levels
    row = bytearray()
    for i in range(0, width, per_byte):
        byte = 0
        for value in packed[i : i + per_byte]:
            byte = (byte << depth) | int(value)
        row.append(byte)
    for key in levels.tolist():
        data = _png(width, 1, 0, b"\x00" + bytes(row), struct.pack(">H", key), depth=depth)
        got = images.load(data).rgb[0, : len(levels), 0].tolist()
        want = [255 if level == key else level * 255 // top for level in levels.tolist()]
        assert got == want, (depth, key, got)
        # the same file opened by the caller (a PIL image not yet loaded): the same answer,
        # and the caller's image keeps its own tRNS value
        opened = Image.open(io.BytesIO(data))
        own = opened.info["transparency"]
        assert images.load(opened).rgb[0, : len(levels), 0].tolist() == want, (depth, key)
        assert opened.info["transparency"] == own
