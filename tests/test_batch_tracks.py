"""agegender batch --video-rows tracks: a video gives one row per tracked person, with the
values ``agegender video --tracks`` writes for the same clip; resume skips the video; the
manifest refuses a change of --video-rows. The clip is composed here from the astronaut
photo (tests/data, public domain) and written with OpenCV (MJPG, 10 fps); no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from faceutils import PATCH, gradient_canvas
from numpy.typing import NDArray

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

from agegender import cli
from agegender.batch import dataset, rows

FPS = 10
SIZE = (640, 480)  # width, height
FRAMES = 30
TRACK_NAMES = [name for name, _ in rows.TRACK_COLUMNS]


def write_clip(path: Path, rgb: NDArray[np.uint8] | None) -> None:
    """Two copies of the astronaut's face patch moving on diagonals (the video tests'
    "simple" clip), or, without `rgb`, the background alone."""
    width, height = SIZE
    background = gradient_canvas(height, width)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, SIZE)
    assert writer.isOpened()
    for i in range(FRAMES if rgb is not None else 10):
        canvas = background.copy()
        if rgb is not None:
            px1, py1, px2, py2 = PATCH
            patch = rgb[py1:py2, px1:px2]
            for (x, y), mirrored in (
                ((10 + 4 * i, 20 + 2 * i), False),
                ((430 - 4 * i, 260 - i), True),
            ):
                copy = patch[:, ::-1] if mirrored else patch
                h, w = copy.shape[:2]
                canvas[y : y + h, x : x + w] = copy
        writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))
    writer.release()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: NDArray[np.uint8]) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    write_clip(folder / "people.avi", astronaut_rgb)
    write_clip(folder / "empty.avi", None)
    cv2.imwrite(str(folder / "photo.png"), np.ascontiguousarray(astronaut_rgb[:, :, ::-1]))
    return folder


def batch(*args: str) -> int:
    return cli.main(["batch", "--no-progress", "--upsample", "0", *args])


def by_path(dest: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in dataset.iter_rows(str(dest)):
        out.setdefault(Path(row["path"]).name, []).append(row)
    for found in out.values():
        found.sort(key=lambda r: -1 if r["track"] is None else r["track"])
    return out


def test_one_row_per_person_as_the_video_command(inputs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert batch(str(inputs), "--out", str(out), "--video-rows", "tracks") == 0
    found = by_path(out)
    assert set(found) == {"people.avi", "empty.avi", "photo.png"}

    tracks_file = tmp_path / "tracks.jsonl"
    clip = str(inputs / "people.avi")
    assert cli.main(["video", clip, "--tracks", str(tracks_file), "--upsample", "0"]) == 0
    tracks = [json.loads(line) for line in tracks_file.read_text().splitlines()]
    assert [t["track"] for t in tracks] == [1, 2]

    people = found["people.avi"]
    assert len(people) == len(tracks)
    for face, (row, track) in enumerate(zip(people, tracks, strict=True)):
        names = list(row)
        at = names.index("time") + 1
        assert names[at : at + len(TRACK_NAMES)] == TRACK_NAMES
        assert row["error"] is None and row["face"] == face
        assert (row["width"], row["height"]) == SIZE
        for name in ("track", "first_frame", "last_frame", "frames_seen", "frames_used"):
            assert row[name] == track[name], name
        assert row["first_time"] == pytest.approx(track["first_time"], abs=6e-4)
        assert row["last_time"] == pytest.approx(track["last_time"], abs=6e-4)
        age = track["age"]
        assert row["age_value"] == pytest.approx(age["value"], abs=0.006)
        assert row["age_std"] == pytest.approx(age["std"], abs=0.006)
        assert [row["age_low"], row["age_high"]] == pytest.approx(age["interval"], abs=0.006)
        assert row["gender_label"] == track["gender"]["label"]
        assert row["gender_probability"] == pytest.approx(track["gender"]["probability"], abs=6e-5)
        # the best face: a detection of this person, inside the frame
        assert track["first_frame"] <= row["frame"] <= track["last_frame"]
        assert row["time"] == pytest.approx(row["frame"] / FPS)
        assert 0 <= row["box_x1"] < row["box_x2"] <= SIZE[0]
        assert 0 <= row["box_y1"] < row["box_y2"] <= SIZE[1]
        assert row["score"] > 0
        assert row["age_models"] and row["model_sha256"]

    (empty,) = found["empty.avi"]  # no person: one row without a face
    assert empty["error"] is None and empty["face"] is None and empty["track"] is None
    assert empty["age_value"] is None and (empty["width"], empty["height"]) == SIZE
    photo = found["photo.png"]  # images as before, the track columns empty
    assert photo and all(r["track"] is None and r["age_value"] is not None for r in photo)
    assert all(r["frame"] is None for r in photo)
    capsys.readouterr()

    # resume: every input done, nothing rewritten
    parts = sorted(p.name for p in out.glob("part-*"))
    assert batch(str(inputs), "--out", str(out), "--video-rows", "tracks") == 0
    assert "3 skipped" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("part-*")) == parts
    assert by_path(out) == found

    # another --video-rows: the usual one-line refusal
    assert batch(str(inputs), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another configuration" in err
    assert "video rows" in err and "'tracks' there" in err
    manifest = json.loads((out / dataset.MANIFEST).read_text())
    assert manifest["video"]["rows"] == "tracks"


def test_jsonl_rows_and_a_new_video_resumed(inputs: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "people.avi").write_bytes((inputs / "people.avi").read_bytes())
    out = tmp_path / "out"
    args = ("--out", str(out), "--video-rows", "tracks", "--format", "jsonl")
    assert batch(str(folder), *args) == 0
    first = by_path(out)
    assert [r["track"] for r in first["people.avi"]] == [1, 2]
    (folder / "empty.avi").write_bytes((inputs / "empty.avi").read_bytes())
    capsys.readouterr()
    assert batch(str(folder), *args) == 0
    assert "1 skipped" in capsys.readouterr().err
    second = by_path(out)
    assert second["people.avi"] == first["people.avi"]
    assert [r["track"] for r in second["empty.avi"]] == [None]
    lines = (next(out.glob("part-*.jsonl"))).read_text().splitlines()
    names = list(json.loads(lines[0]))
    assert names == [n for n, _ in rows.columns(tracks=True)]


def test_frames_is_the_default_and_an_old_manifest_resumes(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    clip = str(inputs / "empty.avi")
    assert batch(clip, "--out", str(out)) == 0
    manifest_path = out / dataset.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    assert manifest["video"]["rows"] == "frames"
    assert all("track" not in r for r in dataset.iter_rows(str(out)))
    # a dataset made before --video-rows (no "rows" in its manifest) resumes as frames
    del manifest["video"]["rows"]
    manifest_path.write_text(json.dumps(manifest))
    assert batch(clip, "--out", str(out)) == 0
    assert batch(clip, "--out", str(out), "--video-rows", "tracks") == 2


def test_ray_engine_gives_the_same_person_rows(inputs: Path, tmp_path: Path) -> None:
    """The Ray actors run the local engine's per-input function: the same rows."""
    pytest.importorskip("ray", reason="agegender[ray] (ray[data]) is not installed")
    import subprocess
    import sys

    from test_batch import _env

    local, ray_out = tmp_path / "local", tmp_path / "ray"
    assert batch(str(inputs), "--out", str(local), "--video-rows", "tracks") == 0
    command = [sys.executable, "-m", "agegender", "batch", str(inputs), "--out", str(ray_out)]
    options = ["--engine", "ray", "--video-rows", "tracks", "--upsample", "0", "--no-progress"]
    done = subprocess.run(
        [*command, *options], env=_env(tmp_path), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    got, want = by_path(ray_out), by_path(local)
    assert got.keys() == want.keys()
    for name in want:
        assert len(got[name]) == len(want[name])
        for a, b in zip(got[name], want[name], strict=True):
            assert list(a) == list(b)
            for key in a:
                if isinstance(a[key], float):
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), key
                else:
                    assert a[key] == b[key], key


def test_a_broken_video_is_one_error_row(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all" * 50)
    out = tmp_path / "out"
    assert batch(str(bad), "--out", str(out), "--video-rows", "tracks") == 1
    assert "Traceback" not in capsys.readouterr().err
    (row,) = dataset.iter_rows(str(out))
    assert row["error"].startswith(str(bad)) and "\n" not in row["error"]
    assert row["track"] is None and row["face"] is None
