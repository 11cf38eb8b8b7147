"""`agegender predict` in-process: bad files, output formats, progress bar, --detector none.

Each bad file gives exactly one line on stderr naming it, the good files still give
their results on stdout, the exit status is 1, and no traceback is printed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT, ASTRONAUT_BOX, box_matches, encode, exif_rotated_jpeg, png_bomb
from PIL import Image

from agegender import cli
from agegender.outputs import CSV_FIELDS

FACE_KEYS = {"box", "score", "landmarks", "age", "gender"}
IMAGE_KEYS = {"path", "width", "height", "faces", "error"}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["predict", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return status, out, err


def write_bad_files(folder: Path, astronaut_rgb: np.ndarray) -> dict[str, str]:
    """Bad inputs (path -> the reason their error line must give)."""
    png = encode(Image.fromarray(astronaut_rgb), "PNG")
    corrupt = bytearray(png)
    corrupt[len(png) // 2 : len(png) // 2 + 64] = bytes(64)
    files = {
        "empty.jpg": (b"", "empty file"),
        "truncated.png": (png[: len(png) // 2], "truncated image data"),
        "corrupt.png": (bytes(corrupt), "corrupt image"),
        "notes.jpg": (b"these are not pixels\n" * 20, "not an image"),
        "bomb.png": (png_bomb(20000, 20000), "20000x20000 = 400000000 pixels exceeds the limit"),
        "bomb8k.png": (png_bomb(8000, 8000), "exceeds the limit"),
    }
    reasons = {}
    for name, (data, reason) in files.items():
        (folder / name).write_bytes(data)
        reasons[str(folder / name)] = reason
    # Unreadable: a dangling symlink, a path through a plain file, a missing file.
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    reasons[str(folder / "dangling.jpg")] = "no such file"
    reasons[str(folder / "empty.jpg" / "inside.jpg")] = "cannot read"
    reasons[str(folder / "missing.png")] = "no such file"
    return reasons


def write_good_files(folder: Path, astronaut_rgb: np.ndarray) -> list[str]:
    """The astronaut in every mode that must be converted, and with EXIF orientation."""
    image = Image.fromarray(astronaut_rgb)
    rgba = np.dstack([astronaut_rgb, np.full((512, 512), 255, np.uint8)])
    rgba[:60, :60, 3] = 0
    gray16 = np.asarray(image.convert("L")).astype(np.uint16) * 257
    files = {
        "gray.png": encode(image.convert("L"), "PNG"),
        "alpha.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "gray16.png": encode(Image.fromarray(gray16), "PNG"),
        "palette.png": encode(image.quantize(256), "PNG"),
        "cmyk.jpg": encode(image.convert("CMYK"), "JPEG", quality=95),
        "rotated.jpg": exif_rotated_jpeg(astronaut_rgb),
    }
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(str(folder / name))
    deep = folder / "deep16.png"
    assert cv2.imwrite(str(deep), astronaut_rgb[:, :, ::-1].astype(np.uint16) * 257)
    paths.append(str(deep))
    return paths


def test_bad_files_one_line_each_others_still_answered(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, astronaut_rgb
) -> None:
    bad = write_bad_files(tmp_path, astronaut_rgb)
    good = write_good_files(tmp_path, astronaut_rgb)
    inputs = [str(ASTRONAUT), *bad, *good]
    status, out, err = run(capsys, *inputs, "--jsonl", "--no-progress")
    assert status == 1

    lines = err.splitlines()
    assert len(lines) == len(bad), err
    for path, reason in bad.items():
        (line,) = [x for x in lines if x.startswith(f"agegender: error: {path}: ")]
        assert reason in line, line

    results = [json.loads(x) for x in out.splitlines()]
    assert [r["path"] for r in results] == inputs  # every input, in order
    for result in results:
        if result["path"] in bad:
            assert result["faces"] == [] and bad[result["path"]] in result["error"]
            continue
        assert result["error"] is None
        assert (result["width"], result["height"]) == (512, 512)
        faces = sorted(result["faces"], key=lambda f: -f["score"])
        face = faces[0]
        assert box_matches(face["box"], ASTRONAUT_BOX), result["path"]
        # JPEG re-encodings of this photo (with or without EXIF) also give dlib a weak
        # second detection on the suit (score ~0.1 at its threshold 0); PNGs give one face.
        assert all(f["score"] < 0.2 for f in faces[1:]), result["path"]
        if result["path"].endswith(".png"):
            assert len(faces) == 1, result["path"]
        assert face["gender"]["label"] == "female", result["path"]
        assert 20 <= face["age"]["value"] <= 60, result["path"]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root reads files whatever their mode; dangling links and paths through "
    "files cover the unreadable case there",
)
def test_permission_denied(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(ASTRONAUT.read_bytes())
    locked.chmod(0)
    try:
        status, out, err = run(capsys, str(locked), str(ASTRONAUT), "--no-progress")
    finally:
        locked.chmod(0o600)
    assert status == 1
    assert err.splitlines() == [f"agegender: error: {locked}: permission denied"]
    assert str(ASTRONAUT) in out


def test_folder_without_images(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    status, out, err = run(capsys, str(tmp_path / "empty"), str(ASTRONAUT), "--no-progress")
    assert status == 1
    assert err.splitlines() == [
        f"agegender: error: {tmp_path / 'empty'}: folder holds no image files"
    ]
    assert "female" in out


def test_all_good_exit_zero_and_folders_expand(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(ASTRONAUT.read_bytes())
    (tmp_path / "a.png").write_bytes(ASTRONAUT.read_bytes())
    (tmp_path / "readme.txt").write_text("not an image, not picked up")
    status, out, err = run(capsys, str(tmp_path), "--jsonl")
    assert status == 0 and err == ""
    paths = [json.loads(line)["path"] for line in out.splitlines()]
    assert paths == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.png")]


# -- output formats ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def blank_png(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("blank") / "blank.png"
    Image.new("RGB", (200, 150), (128, 128, 128)).save(path)
    return str(path)


def test_table(capsys: pytest.CaptureFixture[str], blank_png: str) -> None:
    status, out, _ = run(capsys, str(ASTRONAUT), blank_png)
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{ASTRONAUT}  #0  [179,83,267,171]  age ")
    assert "gender female" in lines[0]
    assert lines[1] == f"{blank_png}: no face found"


def test_json_array_schema(capsys: pytest.CaptureFixture[str], blank_png: str) -> None:
    status, out, _ = run(capsys, str(ASTRONAUT), blank_png, "--json", "--age-threshold", "18")
    assert status == 0
    data = json.loads(out)  # one JSON document
    assert isinstance(data, list) and len(data) == 2
    assert all(set(r) >= IMAGE_KEYS for r in data)
    astronaut, blank = data
    assert astronaut["path"] == str(ASTRONAUT) and astronaut["error"] is None
    (face,) = astronaut["faces"]
    assert set(face) >= FACE_KEYS
    assert face["box"] == list(ASTRONAUT_BOX)
    assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
    assert set(face["age"]) >= {"value", "std", "interval"}
    low, high = face["age"]["interval"]
    assert low <= face["age"]["value"] <= high
    assert 0.9 < face["age"]["p_at_least"]["18"] <= 1.0
    assert set(face["gender"]) == {"label", "probability"}
    assert face["gender"]["label"] == "female"
    assert blank == {"path": blank_png, "width": 200, "height": 150, "faces": [], "error": None}


def test_jsonl_one_object_per_line(
    capsys: pytest.CaptureFixture[str], blank_png: str, tmp_path: Path
) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"")
    status, out, err = run(capsys, str(ASTRONAUT), str(tmp_path / "bad.jpg"), blank_png, "--jsonl")
    assert status == 1
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["path"] for o in objects] == [str(ASTRONAUT), str(tmp_path / "bad.jpg"), blank_png]
    assert len(objects[0]["faces"]) == 1 and objects[1]["error"].endswith("empty file")
    assert err.splitlines() == [f"agegender: error: {tmp_path / 'bad.jpg'}: empty file"]


def test_csv(capsys: pytest.CaptureFixture[str], blank_png: str) -> None:
    status, out, _ = run(capsys, str(ASTRONAUT), blank_png, "--csv")
    assert status == 0
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == CSV_FIELDS
    rows = list(reader)
    assert len(rows) == 2
    face, blank = rows
    assert (face["path"], face["face"], face["gender"]) == (str(ASTRONAUT), "0", "female")
    assert [float(face[k]) for k in ("x1", "y1", "x2", "y2")] == list(ASTRONAUT_BOX)
    assert float(face["age_low"]) <= float(face["age"]) <= float(face["age_high"])
    assert blank["path"] == blank_png and blank["face"] == "" and blank["error"] == ""


def test_annotate_writes_images(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, astronaut_rgb
) -> None:
    other = tmp_path / "in" / "astronaut.png"  # same file name: must not overwrite
    other.parent.mkdir()
    other.write_bytes(ASTRONAUT.read_bytes())
    out_dir = tmp_path / "out"
    status, out, _ = run(capsys, str(ASTRONAUT), str(other), "--json", "--annotate", str(out_dir))
    assert status == 0 and len(json.loads(out)) == 2
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["astronaut-1.png", "astronaut.png"]
    drawn = np.asarray(Image.open(out_dir / "astronaut.png").convert("RGB"))
    assert drawn.shape == astronaut_rgb.shape
    changed = np.any(drawn != astronaut_rgb, axis=2)
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_BOX)
    assert changed[y1 : y2 + 1, x1].all() and changed[y1, x1 : x2 + 1].all()  # the box is drawn
    assert not changed[400:, 400:].any()  # far from the face nothing is drawn


def test_progress_bar_on_stderr_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a bar is drawn on a terminal only
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        path.write_bytes(ASTRONAUT.read_bytes())
        paths.append(str(path))
    status, out, err = run(capsys, *paths, "--jsonl")
    assert status == 0
    assert "5/5" in err and "img" in err  # tqdm's bar
    assert len([json.loads(line) for line in out.splitlines()]) == 5  # stdout is clean
    _, _, quiet = run(capsys, *paths[:3], "--jsonl")
    assert quiet == ""  # a few files: no bar
    _, _, off = run(capsys, *paths, "--jsonl", "--no-progress")
    assert off == ""


def test_detector_none_on_a_crop(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, astronaut_rgb
) -> None:
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_BOX)
    crop = tmp_path / "crop.png"
    Image.fromarray(astronaut_rgb[y1 - 12 : y2 + 12, x1 - 12 : x2 + 12]).save(crop)
    status, out, _ = run(capsys, str(crop), "--detector", "none", "--json")
    assert status == 0
    (result,) = json.loads(out)
    (face,) = result["faces"]
    assert face["box"] == [0, 0, 112, 112]
    assert face["gender"]["label"] == "female" and 20 <= face["age"]["value"] <= 60


def test_usage_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["predict", str(ASTRONAUT), "--age-model", "no-such-card"])
    _, err = capsys.readouterr()
    assert status == 2
    (line,) = err.splitlines()
    assert line.startswith("agegender: error: unknown model card 'no-such-card'")
