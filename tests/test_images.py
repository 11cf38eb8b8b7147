"""Decoding: every image mode becomes RGB, EXIF orientation is honoured, bad files are
refused with one line that names them, and a decompression bomb is refused before its
pixels are decoded."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT, encode, exif_rotated_jpeg, png_bomb
from PIL import Image, ImageFile

from agegender import images
from agegender.errors import ImageError, ImageTooLargeError

# -- conversions -----------------------------------------------------------------------


def test_rgb_png_is_read_exactly(astronaut_rgb) -> None:
    decoded = images.load(ASTRONAUT)
    assert decoded.name == str(ASTRONAUT)
    np.testing.assert_array_equal(decoded.rgb, astronaut_rgb)


def test_exif_orientation_is_honoured(astronaut_rgb) -> None:
    data = exif_rotated_jpeg(astronaut_rgb)
    with Image.open(io.BytesIO(data)) as raw:  # stored sideways
        assert np.abs(np.asarray(raw).astype(int) - astronaut_rgb).mean() > 30
    rgb = images.load(data).rgb
    assert rgb.shape == astronaut_rgb.shape
    assert np.abs(rgb.astype(int) - astronaut_rgb).mean() < 4  # JPEG noise only


def test_exif_orientation_on_a_non_square_image() -> None:
    """Orientation 8 ("rotate 90 CCW") on a 40x20 image: 20x40 upright, top-left kept."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (250, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 8
    rgb = images.load(encode(Image.fromarray(stored), "JPEG", quality=100, exif=exif)).rgb
    assert rgb.shape == (40, 20, 3)
    # Rotating 90 CCW moves the stored left half to the bottom.
    assert rgb[30, 10, 0] > 200 and rgb[5, 10, 0] < 50


def test_a_callers_pil_image_is_not_turned_in_place(astronaut_rgb) -> None:
    """Decoded bytes are oriented in place (no copy); a PIL image the caller passes is
    not ours to change, and both give the same upright pixels."""
    data = exif_rotated_jpeg(astronaut_rgb)
    with Image.open(io.BytesIO(data)) as theirs:
        theirs.load()
        before = np.asarray(theirs).copy()
        from_pil = images.load(theirs).rgb
        np.testing.assert_array_equal(np.asarray(theirs), before)
        assert theirs.getexif().get(0x0112) not in (None, 1)
    np.testing.assert_array_equal(from_pil, images.load(data).rgb)


def test_grayscale(astronaut_rgb) -> None:
    gray = Image.fromarray(astronaut_rgb).convert("L")
    rgb = images.load(encode(gray, "PNG")).rgb
    assert rgb.shape == (512, 512, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], np.asarray(gray))


def test_sixteen_bit_grayscale(astronaut_rgb) -> None:
    gray = np.asarray(Image.fromarray(astronaut_rgb).convert("L"))
    wide = Image.fromarray(gray.astype(np.uint16) * 257)  # 0..65535
    data = encode(wide, "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I")
    rgb = images.load(data).rgb
    np.testing.assert_array_equal(rgb[:, :, 1], gray)


def test_sixteen_bit_colour(astronaut_rgb, tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    bgr16 = astronaut_rgb[:, :, ::-1].astype(np.uint16) * 257
    assert cv2.imwrite(str(path), bgr16)
    rgb = images.load(path).rgb
    assert rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - astronaut_rgb).max() <= 1


def test_sixteen_bit_array() -> None:
    array = np.full((4, 4, 3), 65535, np.uint16)
    array[0, 0] = (0, 32896, 65535)
    rgb = images.load(array).rgb
    assert rgb[0, 0].tolist() == [0, 128, 255] and rgb[1, 1].tolist() == [255, 255, 255]


def test_alpha_is_composited_on_white(astronaut_rgb) -> None:
    rgba = np.dstack([astronaut_rgb, np.full((512, 512), 255, np.uint8)])
    rgba[:100, :100, 3] = 0  # transparent corner
    rgba[100:200, :100, 3] = 128  # half transparent band
    rgb = images.load(encode(Image.fromarray(rgba, "RGBA"), "PNG")).rgb
    assert (rgb[:100, :100] == 255).all()
    np.testing.assert_array_equal(rgb[200:, 100:], astronaut_rgb[200:, 100:])
    half = astronaut_rgb[100:200, :100].astype(float) * 128 / 255 + 255 * 127 / 255
    assert np.abs(rgb[100:200, :100] - half).max() <= 1.0


def test_gray_with_alpha(astronaut_rgb) -> None:
    la = Image.fromarray(astronaut_rgb).convert("LA")
    rgb = images.load(encode(la, "PNG")).rgb
    np.testing.assert_array_equal(rgb[:, :, 0], np.asarray(la)[:, :, 0])


def test_palette(astronaut_rgb) -> None:
    palette = Image.fromarray(astronaut_rgb).quantize(256)
    rgb = images.load(encode(palette, "PNG")).rgb
    np.testing.assert_array_equal(rgb, np.asarray(palette.convert("RGB")))
    assert np.abs(rgb.astype(int) - astronaut_rgb).mean() < 6


def test_palette_with_transparency() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.putpixel((1, 1), 1)
    rgb = images.load(encode(image, "PNG", transparency=0)).rgb
    assert rgb[0, 0].tolist() == [255, 255, 255]  # transparent index -> white
    assert rgb[1, 1].tolist() == [200, 10, 10]


def test_cmyk(astronaut_rgb) -> None:
    cmyk = Image.fromarray(astronaut_rgb).convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    rgb = images.load(data).rgb
    assert np.abs(rgb.astype(int) - astronaut_rgb).mean() < 4
    pure = Image.new("CMYK", (2, 2), (255, 0, 0, 0))  # full cyan
    assert images.load(encode(pure, "TIFF")).rgb[0, 0].tolist() == [0, 255, 255]


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, this is text\n" * 10, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not an image"),
    ],
)
def test_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=f"^bad.jpg: {reason}"):
        images.decode_bytes(data, name="bad.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(astronaut_rgb, fmt: str) -> None:
    data = encode(Image.fromarray(astronaut_rgb), fmt)
    with pytest.raises(ImageError, match=r"^cut: truncated image data"):
        images.decode_bytes(data[: len(data) // 2], name="cut")


def test_corrupt_png_data(astronaut_rgb) -> None:
    data = bytearray(encode(Image.fromarray(astronaut_rgb), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    with pytest.raises(ImageError, match=r"^broken\.png: corrupt image"):
        images.decode_bytes(bytes(data), name="broken.png")


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.jpg: no such file"):
        images.load(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        images.load(tmp_path)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageError, match=r"dangling\.jpg: no such file"):
        images.load(tmp_path / "dangling.jpg")
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(ImageError, match="cannot read"):
        images.load(tmp_path / "plain" / "inside.jpg")


class LoadSpy:
    """Counts calls of Pillow's pixel decoding (ImageFile.load)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        original = ImageFile.ImageFile.load

        def load(image, *args, **kwargs):
            self.calls += 1
            return original(image, *args, **kwargs)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize(
    "width, height, message",
    [
        # Above our 50 MP default, below Pillow's own guard: our limit, with its numbers.
        (8000, 8000, "8000x8000 = 64000000 pixels exceeds the limit of 50000000"),
        # 400 MP, 1.2 GB if decoded: Pillow's own guard fires in Image.open; same message.
        (20000, 20000, "20000x20000 = 400000000 pixels exceeds the limit of 50000000"),
    ],
)
def test_decompression_bomb_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, width: int, height: int, message: str
) -> None:
    spy = LoadSpy(monkeypatch)
    data = png_bomb(width, height)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=message):
            images.decode_bytes(data, name="bomb.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The pixels were never decoded (no wall-clock limit: it would measure the machine)
    assert spy.calls == 0
    assert peak < 5_000_000


def test_pixel_limit_is_configurable(astronaut_rgb, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.fromarray(astronaut_rgb), "PNG")
    spy = LoadSpy(monkeypatch)
    with pytest.raises(ImageTooLargeError, match="512x512 = 262144 pixels exceeds the limit"):
        images.decode_bytes(data, pixel_limit=100_000, name="a.png")
    assert spy.calls == 0
    # the message names the setting both ways (it named only the CLI's flag to API users)
    with pytest.raises(ImageTooLargeError, match=r"--pixel-limit, or pixel_limit in Python\)$"):
        images.decode_bytes(data, pixel_limit=100_000, name="a.png")
    assert images.decode_bytes(data, pixel_limit=262_144, name="a.png").shape == (512, 512, 3)
    assert images.decode_bytes(data, pixel_limit=None, name="a.png").shape == (512, 512, 3)


def _peak_while_refused(error: type[Exception], message: str, path: Path, **options) -> int:
    """Python's peak allocation while images.load refuses `path` with `message`."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=message):
            images.load(path, **options)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_file_that_is_no_image_is_refused_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    # a video, an archive or a disk image named on the command line: a 2 GB file was read
    # whole into memory before Pillow said it was not an image
    path = tmp_path / "recording.ts"
    with open(path, "wb") as f:
        f.write(b"G@\x00\x10" + bytes(184))  # an MPEG transport stream's first packet
        f.truncate(64 * 2**20)  # sparse: no disk used
    message = r"recording\.ts: not an image \(unrecognised format\)$"
    assert _peak_while_refused(ImageError, message, path) < 8 * 2**20


def test_a_large_image_file_is_checked_from_its_header_then_decoded(
    astronaut_rgb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a JPEG followed by 17 MiB that decoders ignore: over the size where the header is
    # read first
    data = encode(Image.fromarray(astronaut_rgb), "JPEG", quality=95)
    path = tmp_path / "padded.jpg"
    path.write_bytes(data + bytes(17 * 2**20))
    assert path.stat().st_size > images.IDENTIFY_ABOVE_BYTES
    expected = images.decode_bytes(data, name="a.jpg")
    assert np.array_equal(images.load(path).rgb, expected)
    # over the pixel limit: refused from the header, before the file is read
    message = "padded.jpg: 512x512 = 262144 pixels exceeds the limit of 100000"
    peak = _peak_while_refused(ImageTooLargeError, message, path, pixel_limit=100_000)
    assert peak < 8 * 2**20


class ReachedDecoding(Exception):
    pass


@pytest.mark.parametrize("limit", [500_000_000, None])
def test_raised_limit_is_honoured_above_pillows_guard(
    monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    """--pixel-limit 500000000 (or none) lets a 400 MP image through to decoding."""

    def load(image, *args, **kwargs):
        raise ReachedDecoding(image.size)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ReachedDecoding):
        images.decode_bytes(png_bomb(20000, 20000), pixel_limit=limit, name="big.png")
    assert before == Image.MAX_IMAGE_PIXELS  # Pillow's global is restored


def test_permission_denied_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The EACCES mapping, runnable as root too (test_cli checks a real chmod 000 file
    when not root): Path.read_bytes raises as it would for an unreadable file."""
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")
    real = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ImageError, match=r"locked\.png: permission denied$"):
        images.load(locked)
