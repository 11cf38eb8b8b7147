"""Phones' photos: HEIF/HEIC (through pillow-heif, the `heif` extra) and AVIF (Pillow's
own). Each file is encoded here from the test photo, turned by the container's
orientation, and must give the faces of the same picture decoded from PNG."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from faceutils import run_cli
from numpy.typing import NDArray
from PIL import Image

from agegender import Estimator, images
from agegender.errors import ImageTooLargeError, UnsupportedImageError

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
