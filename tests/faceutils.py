"""Helpers shared by the tests: the astronaut's geometry, composed scenes, encoders for odd
image files, and a card table to vary (stand-in graphs: `support/standins.py`)."""

from __future__ import annotations

import copy
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

DATA = Path(__file__).parent / "data"
ASTRONAUT = DATA / "astronaut.png"
# dlib HOG box of the astronaut's face, [x1, y1, x2, y2) (checked in test_astronaut.py).
ASTRONAUT_BOX = (179.0, 83.0, 267.0, 171.0)
# The region copied into composed scenes: the face with some hair and background.
PATCH = (130, 30, 320, 240)


@dataclass
class Scene:
    rgb: NDArray[np.uint8]
    expected: list[tuple[float, float, float, float]]  # where each copy's face box should be
    placements: list[tuple[float, int, int, bool]]


def gradient_canvas(height: int, width: int) -> NDArray[np.uint8]:
    """The smooth colour gradient composed scenes and clips draw the face patch on."""
    yy, xx = np.mgrid[0:height, 0:width]
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[..., 0] = (90 + 60 * xx / width).astype(np.uint8)
    canvas[..., 1] = (110 + 40 * yy / height).astype(np.uint8)
    canvas[..., 2] = 120
    return canvas


def compose_scene(
    face_rgb: NDArray[np.uint8],
    placements: list[tuple[float, int, int, bool]],
    size: tuple[int, int] = (720, 1280),
) -> Scene:
    """A gradient canvas with scaled, shifted (and maybe mirrored) copies of the face patch.

    Each placement is (scale, x offset, y offset, mirrored); the expected box of each
    copy is the astronaut's box carried through the same scale, flip and shift.
    """
    height, width = size
    canvas = gradient_canvas(height, width)
    px1, py1, px2, py2 = PATCH
    patch = face_rgb[py1:py2, px1:px2]
    expected = []
    for scale, ox, oy, mirrored in placements:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        copy = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=interpolation)
        if mirrored:
            copy = copy[:, ::-1]
        h, w = copy.shape[:2]
        canvas[oy : oy + h, ox : ox + w] = copy
        origin = (px1, py1, px1, py1)
        bx1, by1, bx2, by2 = ((v - o) * scale for v, o in zip(ASTRONAUT_BOX, origin, strict=True))
        if mirrored:
            bx1, bx2 = w - bx2, w - bx1
        expected.append((bx1 + ox, by1 + oy, bx2 + ox, by2 + oy))
    return Scene(canvas, expected, placements)


SCENE_PLACEMENTS = [(1.0, 40, 60, False), (1.6, 360, 300, False), (1.3, 900, 80, True)]


def box_matches(got, want, tolerance: float = 0.15) -> bool:
    """Centres within `tolerance` of the expected side, sides within 25% of each other."""
    gx, gy = (got[0] + got[2]) / 2, (got[1] + got[3]) / 2
    wx, wy = (want[0] + want[2]) / 2, (want[1] + want[3]) / 2
    side_got, side_want = got[2] - got[0], want[2] - want[0]
    near = max(abs(gx - wx), abs(gy - wy)) <= tolerance * side_want
    return near and 0.8 <= side_got / side_want <= 1.25


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    """The photo stored turned 90 degrees left, with EXIF orientation 6 ("rotate 90 CW")."""
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif)


GOOD = {
    "id": "test-age",
    "task": "age",
    "source": {"url": "https://example.org/age.onnx", "sha256": "0" * 64},
    "input": {"size": [64, 64], "channels": "RGB", "layout": "NCHW", "mean": [1, 2, 3]},
    "crop": {"kind": "chip", "padding": 0.2},
    "output": {"range": [0, 100]},
}


def card_with(**changes) -> dict:
    """GOOD with dotted keys changed ("input.size": ...) or removed (value None)."""
    data = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        table = data
        for parent in parents:
            table = table[parent]
        if value is None:
            del table[key]
        else:
            table[key] = value
    return data


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`agegender ARGS...` in this process: (exit status, stdout, stderr); argparse's own
    usage errors (SystemExit) give their status too."""
    from agegender.cli import main

    try:
        status = main(list(args))
    except SystemExit as done:
        status = int(done.code or 0)
    out, err = capsys.readouterr()
    return status, out, err
