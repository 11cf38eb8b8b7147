"""Regression tests of `agegender predict` for issue 8 (defects 1, 2, 3, 10, 11, 12, 13).

Each test failed on the code before its fix. Most runs use ``--detector none`` (the whole
image is the face): the defects are in the command, not in the detector.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT
from numpy.typing import NDArray
from PIL import Image

from agegender import cli, images, outputs

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = cli.main(["predict", *args])
    except SystemExit as done:  # argparse's usage errors
        status = int(done.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return status, out, err


def copy_astronaut(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ASTRONAUT.read_bytes())
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: NDArray[np.uint8]) -> Path:
    """1.5 s at 2 fps of the astronaut, downscaled (3 frames)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    small = np.ascontiguousarray(astronaut_rgb[::4, ::4, ::-1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 2, (128, 128))
    assert writer.isOpened()
    for _ in range(3):
        writer.write(small)
    writer.release()
    return path


# -- 1: --annotate never writes over an input or an existing file -------------------------


def test_annotate_into_the_input_folder_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    same = tmp_path / "same"
    copy_astronaut(same / "zoo-bruce.png")
    copy_astronaut(same / "mine" / "kept.png")  # a user's own subfolder of inputs
    before = tree(same)
    for annotate in (same, same / "mine"):
        status, out, err = run(capsys, str(same), "--annotate", str(annotate), "--detector", "none")
        assert status == 2 and out == ""
        (line,) = err.splitlines()
        assert line.startswith(f"agegender: error: --annotate {annotate}: ")
        assert tree(same) == before  # nothing written, nothing replaced


def test_annotate_into_a_new_subfolder_is_marked_and_never_read_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    same = tmp_path / "same"
    photo = copy_astronaut(same / "zoo-bruce.png")
    out_dir = same / "annotated"
    for _ in range(2):  # the second run neither reads nor refuses the marked folder
        status, out, err = run(capsys, str(same), "--annotate", str(out_dir), "--jsonl")
        assert status == 0, err
        assert [json.loads(line)["path"] for line in out.splitlines()] == [str(photo)]
    assert photo.read_bytes() == ASTRONAUT.read_bytes()
    assert sorted(p.name for p in out_dir.iterdir()) == [
        ".agegender-output",
        "zoo-bruce-1.png",
        "zoo-bruce.png",
    ]


def test_annotate_beside_a_named_input_keeps_the_original(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photo = copy_astronaut(tmp_path / "photo.png")
    status, _, err = run(capsys, str(photo), "--annotate", str(tmp_path), "--detector", "none")
    assert status == 0, err
    assert photo.read_bytes() == ASTRONAUT.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo-1.png", "photo.png"]


def test_annotate_never_replaces_existing_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "astronaut.png").write_bytes(b"mine")
    (out_dir / "astronaut-1.png").write_bytes(b"mine too")
    args = (str(ASTRONAUT), "--annotate", str(out_dir), "--detector", "none")
    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args)[0] == 0  # a second run adds, never replaces
    assert (out_dir / "astronaut.png").read_bytes() == b"mine"
    assert (out_dir / "astronaut-1.png").read_bytes() == b"mine too"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "astronaut-1.png",
        "astronaut-2.png",
        "astronaut-3.png",
        "astronaut.png",
    ]


def test_annotated_path_skips_existing_and_used(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    used: set[Path] = set()
    first = outputs.annotated_path(tmp_path, "in/a.jpg", used)
    second = outputs.annotated_path(tmp_path, "other/a.jpg", used)
    assert (first.name, second.name) == ("a-1.jpg", "a-2.jpg")


def test_a_failed_annotation_write_is_one_error_and_the_run_goes_on(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = copy_astronaut(tmp_path / "in" / "first.png")
    second = copy_astronaut(tmp_path / "in" / "second.png")
    real = outputs.save_rgb

    def failing(path: Path, rgb: NDArray[np.uint8]) -> None:
        if path.name.startswith("first"):
            raise OSError(28, "No space left on device")
        return real(path, rgb)

    monkeypatch.setattr(outputs, "save_rgb", failing)
    out_dir = tmp_path / "out"
    status, out, err = run(
        capsys, str(first), str(second), "--annotate", str(out_dir), "--jsonl", "--detector", "none"
    )
    assert status == 1
    (line,) = err.splitlines()
    assert line.startswith(f"agegender: error: {first}: cannot write the annotated image ")
    assert "No space left on device" in line
    assert [json.loads(x)["path"] for x in out.splitlines()] == [str(first), str(second)]
    assert [p.name for p in out_dir.iterdir()] == ["second.png"]


# -- 2: video with --csv -------------------------------------------------------------------


def test_video_with_csv_has_frame_and_time_columns(
    capsys: pytest.CaptureFixture[str], clip: Path
) -> None:
    status, out, err = run(
        capsys, str(clip), str(ASTRONAUT), "--csv", "--detector", "none", "--no-progress"
    )
    assert status == 0, err
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames is not None
    assert reader.fieldnames[:4] == ["path", "frame", "time", "face"]
    rows = list(reader)
    assert [(r["path"], r["frame"], r["time"]) for r in rows] == [
        (str(clip), "0", "0.0"),
        (str(clip), "2", "1.0"),
        (str(ASTRONAUT), "", ""),  # the input after the video is not lost
    ]
    assert all(r["gender"] in ("female", "male") for r in rows)


# -- 3: bad output paths are refused before any work ---------------------------------------


@pytest.mark.parametrize("kind", ["file", "proc", "under-a-file"])
def test_bad_annotate_path_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    existing = tmp_path / "afile.jpg"
    existing.write_bytes(b"keep me")
    target = {
        "file": existing,
        "proc": Path("/proc/nope"),
        "under-a-file": existing / "sub",
    }[kind]
    status, out, err = run(capsys, str(ASTRONAUT), "--annotate", str(target), "--json")
    assert status == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"agegender: error: --annotate {target}: ")
    assert existing.read_bytes() == b"keep me"


@pytest.mark.skipif(ROOT_USER, reason="root writes into any folder")
def test_unwritable_annotate_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        status, out, err = run(capsys, str(ASTRONAUT), "--annotate", str(locked))
    finally:
        locked.chmod(0o700)
    assert status == 2 and out == ""
    assert err.startswith(f"agegender: error: --annotate {locked}: not writable")


# -- 10: --age-threshold in the table and CSV; video options checked ------------------------


def test_age_threshold_in_table_and_csv(capsys: pytest.CaptureFixture[str]) -> None:
    common = (str(ASTRONAUT), "--detector", "none", "--age-threshold", "18")
    status, out, _ = run(capsys, *common, "--age-threshold", "65.5", "--json")
    assert status == 0
    p = json.loads(out)[0]["faces"][0]["age"]["p_at_least"]
    status, out, _ = run(capsys, *common, "--age-threshold", "65.5")
    assert status == 0
    (line,) = out.splitlines()
    shown = dict(re.findall(r"P\(age>=([0-9.]+)\) ([0-9.]+)", line))
    assert set(shown) == {"18", "65.5"}, line
    assert all(abs(float(shown[t]) - p[t]) <= 0.0051 for t in shown), (line, p)
    status, out, _ = run(capsys, *common, "--age-threshold", "65.5", "--csv")
    assert status == 0
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames is not None
    assert reader.fieldnames[-3:] == ["p_age_ge_18", "p_age_ge_65.5", "error"]
    (row,) = list(reader)
    assert math.isclose(float(row["p_age_ge_18"]), p["18"], abs_tol=1e-4)
    assert math.isclose(float(row["p_age_ge_65.5"]), p["65.5"], abs_tol=1e-4)


@pytest.mark.parametrize(
    "option",
    [
        ("--video-step", "-1"),
        ("--video-step", "nan"),
        ("--video-step", "inf"),
        ("--video-step", "soon"),
        ("--max-frames", "0"),
        ("--max-frames", "-2"),
    ],
)
def test_bad_video_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], option: tuple[str, str]
) -> None:
    status, out, err = run(capsys, str(ASTRONAUT), *option)
    assert status == 2 and out == ""
    assert f"argument {option[0]}: " in err.splitlines()[-1]


# -- 11: errors on stderr only; a progress bar only on a terminal --------------------------


def test_table_errors_only_on_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    status, out, err = run(capsys, str(bad), str(ASTRONAUT), "--detector", "none")
    assert status == 1
    assert err.splitlines() == [f"agegender: error: {bad}: empty file"]
    assert "error" not in out and str(bad) not in out
    assert out.startswith(f"{ASTRONAUT}  #0  ")


def test_progress_bar_only_on_a_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [str(copy_astronaut(tmp_path / f"{i}.png")) for i in range(5)]
    args = (*paths, "--jsonl", "--detector", "none")
    assert run(capsys, *args)[2] == ""  # stderr is a file or pipe: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    status, out, err = run(capsys, *args)
    assert status == 0 and "5/5" in err and len(out.splitlines()) == 5
    assert run(capsys, *args, "--no-progress")[2] == ""


# -- 12: hidden files and folders are skipped in folder walks -------------------------------


def test_hidden_files_and_folders_are_skipped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shown = copy_astronaut(tmp_path / "photos" / "a.png")
    copy_astronaut(tmp_path / "photos" / ".x.png")
    (tmp_path / "photos" / "._a.png").write_bytes(b"\x00\x05\x16\x07resource fork")
    copy_astronaut(tmp_path / "photos" / ".thumbs" / "b.png")
    named = tmp_path / "photos" / ".x.png"
    status, out, err = run(capsys, str(tmp_path / "photos"), str(named), "--jsonl")
    assert status == 0, err
    assert [json.loads(x)["path"] for x in out.splitlines()] == [str(shown), str(named)]


def test_a_hidden_folder_named_is_searched(tmp_path: Path) -> None:
    inside = copy_astronaut(tmp_path / ".cache" / "a.png")
    copy_astronaut(tmp_path / ".cache" / ".b.png")
    assert images.expand_inputs([str(tmp_path / ".cache")]) == [str(inside)]


# -- 13: an empty folder is reported even when a sibling shares its name's prefix ---------


def test_empty_folder_beside_a_prefix_sibling(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "x" / "a").mkdir(parents=True)
    inside = copy_astronaut(tmp_path / "x" / "ab" / "1.png")
    status, out, err = run(capsys, str(tmp_path / "x" / "a"), str(tmp_path / "x" / "ab"), "--jsonl")
    assert status == 1
    assert err.splitlines() == [
        f"agegender: error: {tmp_path / 'x' / 'a'}: folder holds no image files"
    ]
    assert [json.loads(x)["path"] for x in out.splitlines()] == [str(inside)]


def test_expand_per_argument(tmp_path: Path) -> None:
    (tmp_path / "x" / "a").mkdir(parents=True)
    inside = copy_astronaut(tmp_path / "x" / "ab" / "1.png")
    found = images.expand_each([str(tmp_path / "x" / "a"), str(tmp_path / "x" / "ab"), "f.png"])
    assert found == [
        (str(tmp_path / "x" / "a"), []),
        (str(tmp_path / "x" / "ab"), [str(inside)]),
        ("f.png", ["f.png"]),
    ]


# -- one line per bad input in a real process (no library noise, no bar in a pipe) --------


def test_a_real_process_writes_only_error_lines_to_stderr(
    tmp_path: Path, clip: Path, astronaut_rgb: NDArray[np.uint8]
) -> None:
    """FFmpeg ("moov atom not found"), OpenCV and Pillow (warnings, log records) write
    to the process's stderr themselves; with stderr a pipe there is no progress bar."""
    tiff = io.BytesIO()
    Image.fromarray(astronaut_rgb[::4, ::4]).save(tiff, "TIFF")
    bad = {
        tmp_path / "half.tif": tiff.getvalue()[: len(tiff.getvalue()) // 2],
        tmp_path / "random.mp4": b"\x00garbage" + bytes(range(256)) * 4,
        tmp_path / "cut.mp4": b"\x00\x00\x00\x1cftypisom" + bytes(100),
    }
    for path, data in bad.items():
        path.write_bytes(data)
    inputs = [*map(str, bad), str(clip), str(ASTRONAUT)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("OPENCV_FFMPEG_LOGLEVEL", None)
    done = subprocess.run(
        [sys.executable, "-m", "agegender", "predict", *inputs, "--detector", "none", "--jsonl"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == len(bad), done.stderr
    for path, line in zip(bad, lines, strict=True):
        assert line.startswith(f"agegender: error: {path}: "), done.stderr
    paths = [json.loads(x)["path"] for x in done.stdout.splitlines()]
    assert paths == [*map(str, bad), str(clip), str(clip), str(ASTRONAUT)]


def test_a_video_over_the_pixel_limit_is_one_error(
    capsys: pytest.CaptureFixture[str], clip: Path, tmp_path: Path, astronaut_rgb
) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(astronaut_rgb[::8, ::8]).save(small)  # 64 x 64
    status, out, err = run(
        capsys, str(clip), str(small), "--pixel-limit", "10000", "--jsonl", "--detector", "none"
    )
    assert status == 1
    (line,) = err.splitlines()
    assert line.startswith(f"agegender: error: {clip}: 128x128 = 16384 pixels per frame exceeds")
    results = [json.loads(x) for x in out.splitlines()]
    assert [r["path"] for r in results] == [str(clip), str(small)]
    assert results[1]["error"] is None
