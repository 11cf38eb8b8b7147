"""Phones' photos: HEIF/HEIC (through pillow-heif, the `heif` extra) and AVIF (Pillow's
own). Each file is encoded here from the test photo, turned by the container's
orientation, and must give the faces of the same picture decoded from PNG."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from faceutils import run_cli
from numpy.typing import NDArray
from PIL import Image

from agegender import Estimator, images
from agegender.errors import ImageError, ImageTooLargeError, UnsupportedImageError

pillow_heif = pytest.importorskip("pillow_heif", reason="agegender[heif] is not installed")

ORIENTATION = 0x0112
NEEDS_EXTRA = "a HEIF/HEIC image, which needs pillow-heif (pip install 'agegender[heif]')"


def _landscape(astronaut_rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A 4:3 crop of the test photo, so that a wrong turn changes the shape."""
    return np.ascontiguousarray(astronaut_rgb[:384, :])


def _sideways(astronaut_rgb: NDArray[np.uint8]) -> Image.Image:
    """The crop as a phone held sideways stores it: turned 90 degrees anticlockwise, to be
    shown turned back clockwise (EXIF orientation 6)."""
    return Image.fromarray(np.ascontiguousarray(np.rot90(_landscape(astronaut_rgb), k=1)))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def _heic(picture: Image.Image, orientation: int = 1) -> bytes:
    """HEIC bytes as a phone writes them: stored as captured, with the turn to show it
    upright in the container (`irot`) and in EXIF. Encoded through pillow-heif's own
    API, so that Pillow is not given its plugin here."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(picture).save(buffer, quality=92, exif=_exif(orientation))
    data = buffer.getvalue()
    assert data[4:12] == b"ftypheic"
    return data


def _avif(picture: Image.Image, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "AVIF", quality=92, exif=_exif(orientation))
    return buffer.getvalue()


@pytest.mark.parametrize("encode", [_heic, _avif], ids=["heic", "avif"])
def test_a_turned_phone_photo_gives_the_faces_of_the_upright_picture(
    encode, astronaut_rgb: NDArray[np.uint8], estimator: Estimator
) -> None:
    upright = _landscape(astronaut_rgb)
    data = encode(_sideways(astronaut_rgb), 6)
    rgb = images.load(data).rgb
    assert rgb.shape == upright.shape  # turned once: not left as stored, not turned twice
    assert np.abs(rgb.astype(int) - upright).mean() < 3  # lossy, but the same picture
    ours, reference = estimator.predict(data), estimator.predict(upright)
    assert len(ours) == len(reference) == 1
    assert ours[0].box == pytest.approx(reference[0].box, abs=4)
    assert ours[0].age.value == pytest.approx(reference[0].age.value, abs=2)
    assert ours[0].gender.label == reference[0].gender.label


def test_heic_without_pillow_heif_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, astronaut_rgb: NDArray[np.uint8]
) -> None:
    """Before, every HEIC was 'not an image (unrecognised format)'."""
    monkeypatch.setattr(Image, "ID", [kind for kind in Image.ID if kind != "HEIF"])
    monkeypatch.setattr(images, "_heif_plugin", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    with pytest.raises(UnsupportedImageError) as raised:
        images.load(_heic(_sideways(astronaut_rgb)), name="IMG_0001.HEIC")
    assert str(raised.value) == f"IMG_0001.HEIC: {NEEDS_EXTRA}"
    # other ISO-BMFF files (a video's) are still not images
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64
    with pytest.raises(UnsupportedImageError, match="not an image"):
        images.load(mp4, name="clip.jpg")


def test_a_heic_over_the_pixel_limit_is_refused_from_its_header(
    astronaut_rgb: NDArray[np.uint8],
) -> None:
    data = _heic(Image.fromarray(_landscape(astronaut_rgb)))
    with pytest.raises(ImageTooLargeError, match="512x384"):
        images.load(data, pixel_limit=100_000)


def test_a_folder_of_phone_photos_is_searched_and_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, astronaut_rgb: NDArray[np.uint8]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture = Image.fromarray(_landscape(astronaut_rgb))
    (photos / "IMG_0001.HEIC").write_bytes(_heic(_sideways(astronaut_rgb), 6))
    (photos / "b.heif").write_bytes(_heic(picture))
    (photos / "c.avif").write_bytes(_avif(picture))
    (photos / "d.png").write_bytes(b"")  # an image that cannot be read keeps its line
    out = tmp_path / "annotated"
    status, stdout, stderr = run_cli(
        capsys, "predict", str(photos), "--jsonl", "--annotate", str(out), "--no-progress"
    )
    rows = {Path(row["path"]).name: row for row in map(json.loads, stdout.splitlines())}
    assert status == 1 and stderr.count("\n") == 1 and "d.png: empty file" in stderr
    assert set(rows) == {"IMG_0001.HEIC", "b.heif", "c.avif", "d.png"}
    assert (rows["IMG_0001.HEIC"]["width"], rows["IMG_0001.HEIC"]["height"]) == (512, 384)
    for name in ("IMG_0001.HEIC", "b.heif", "c.avif"):
        assert len(rows[name]["faces"]) == 1, name
    assert sorted(path.name for path in out.iterdir()) == ["IMG_0001.png", "b.png", "c.png"]
    with Image.open(out / "IMG_0001.png") as annotated:
        assert annotated.size == (512, 384)  # the upright picture


def _damaged(data: bytes) -> bytes:
    """The file with its coded picture (the `mdat` box's content) zeroed: its headers
    read, its pixels cannot be decoded."""
    start = data.index(b"mdat") + 4
    return data[:start] + bytes(len(data) - start)


def _one_line_error(raised: pytest.ExceptionInfo[ImageError], name: str) -> str:
    message = str(raised.value)
    assert message.startswith(f"{name}: ") and "\n" not in message, repr(message)
    return message


@pytest.mark.parametrize("encode", [_heic, _avif], ids=["heic", "avif"])
def test_a_damaged_phone_photo_is_a_one_line_image_error(
    encode, astronaut_rgb: NDArray[np.uint8], estimator: Estimator
) -> None:
    """Before, pillow-heif's EOFError (HEIC) and Pillow's RuntimeError (AVIF) escaped
    images.load and Estimator.predict, whose contract is ImageError."""
    data = _damaged(encode(Image.fromarray(_landscape(astronaut_rgb))))
    with pytest.raises(ImageError) as raised:
        images.load(data, name="IMG_0001")
    assert "corrupt image" in _one_line_error(raised, "IMG_0001")
    with pytest.raises(ImageError):
        estimator.predict(data)
    images._heif_registered()
    with Image.open(io.BytesIO(data)) as opened, pytest.raises(ImageError) as raised:
        images.load(opened)  # the caller's PIL image, decoded when first used
    _one_line_error(raised, "<PIL image>")


@pytest.mark.parametrize(
    ("encode", "reason"),
    [
        (_heic, "corrupt image (Invalid input: Unexpected end of file"),
        (_avif, "corrupt image (Failed to decode image"),
    ],
    ids=["heic", "avif"],
)
def test_a_truncated_phone_photo_is_corrupt_not_an_unknown_format(
    encode, reason: str, astronaut_rgb: NDArray[np.uint8]
) -> None:
    """A photo cut short in a transfer: before, Image.open hid libheif's and libavif's
    reason, so it was 'not an image (unrecognised format)' (the server's 415)."""
    data = encode(Image.fromarray(_landscape(astronaut_rgb)))
    with pytest.raises(ImageError) as raised:
        images.load(data[: len(data) // 2], name="IMG_0001")
    assert not isinstance(raised.value, UnsupportedImageError)
    assert reason in _one_line_error(raised, "IMG_0001")


def test_a_damaged_avif_without_pillow_heif_does_not_ask_for_it(
    monkeypatch: pytest.MonkeyPatch, astronaut_rgb: NDArray[np.uint8]
) -> None:
    """An AVIF names HEIF's brand mif1 too: before, one Pillow could not read asked for
    pillow-heif, which does not read AVIF."""
    monkeypatch.setattr(Image, "ID", [kind for kind in Image.ID if kind != "HEIF"])
    monkeypatch.setattr(images, "_heif_plugin", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    data = _avif(Image.fromarray(_landscape(astronaut_rgb)))
    with pytest.raises(ImageError) as raised:
        images.load(data[:200], name="IMG_0001.avif")
    assert "truncated image data" in _one_line_error(raised, "IMG_0001.avif")
    assert "pillow-heif" not in str(raised.value)


def _with_ispe(data: bytes, width: int, height: int) -> bytes:
    at = data.index(b"ispe") + 8  # the box's type, version and flags, then its size
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


def test_a_crop_cannot_hide_a_heic_over_the_pixel_limit() -> None:
    """libheif decodes the whole coded picture, then crops it (`clap`) to the size the
    plugin reports: a 12 KB file showing 64x48 decoded 8194x6146 (RSS +180 MiB) past the
    default limit. Here a 1001x751 picture (coded a little larger) cropped to 64x48."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (1001, 751), (200, 0, 0))).save(buffer)
    data = buffer.getvalue()
    at = data.index(b"ispe") + 8
    width, height = struct.unpack(">II", data[at : at + 8])
    at = data.index(b"clap") + 4  # the encoder's crop of its padding
    assert images.load(data, pixel_limit=None).rgb.shape == (751, 1001, 3)
    crop = struct.pack(">8i", 64, 1, 48, 1, 64 - width, 2, 48 - height, 2)  # the top left
    cropped = data[:at] + crop + data[at + len(crop) :]
    assert images.load(cropped, pixel_limit=None).rgb.shape == (48, 64, 3)
    with pytest.raises(ImageTooLargeError, match=f"{width}x{height}"):
        images.load(cropped, pixel_limit=100_000)


def test_an_avif_over_the_pixel_limit_is_refused_not_unrecognised(
    astronaut_rgb: NDArray[np.uint8],
) -> None:
    """Over libavif's own limit (16384 x 16384) Pillow cannot identify it: before, 'not
    an image (unrecognised format)' (415) instead of the pixel limit's refusal (413)."""
    data = _with_ispe(_avif(Image.fromarray(_landscape(astronaut_rgb))), 30_000, 20_000)
    with pytest.raises(ImageTooLargeError, match="30000x20000"):
        images.load(data)
