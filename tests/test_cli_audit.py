"""Regressions found by an audit of the commands (each failed before its fix): options
that would be ignored, thresholds given twice or out of range, an empty output folder,
a video or an evaluated image whose name is not UTF-8, UTKFace ages out of range, and a
report written among a labels file's images."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT
from PIL import Image

from agegender import cli


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(args))
    except SystemExit as done:  # argparse's usage errors
        status = int(done.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return status, out, err


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["--detector", "none", "--upsample", "1"], "--upsample applies only to --detector dlib"),
        (["--detector", "centerface", "--upsample", "0"], "--upsample applies only to"),
        (["--detector", "none", "--max-detect-side", "16"], "--max-detect-side steers"),
        (["--detector", "none", "--min-score", "0.5"], "--min-score steers"),
        (["--detector", "none", "--align", "sweep"], "--align sweep"),
        # the whole image has no landmarks: it ran unaligned and said nothing
        (["--detector", "none", "--align", "landmarks"], "--detector none finds no landmarks"),
        (["--no-tta", "--tta-margin", "0.5"], "--tta-margin applies only with TTA"),
        # the gate's cards (faceres-deep) are not installed in the tests' store: the
        # default runs the CC0 pair alone, where a margin changes nothing
        (["--tta-margin", "0.3"], "none of them runs here"),
        (["--age-model", "cc0-age-v1", "--tta-margin", "0.3"], "none of them runs here"),
        (["--age-threshold", "-5"], "from 0 to 150"),
        (["--age-threshold", "151"], "from 0 to 150"),
    ],
)
def test_an_option_that_would_be_ignored_or_is_out_of_range_is_refused(
    capsys: pytest.CaptureFixture[str], options: list[str], why: str
) -> None:
    status, out, err = run(capsys, "predict", "--jsonl", str(ASTRONAUT), *options)
    assert status == 2 and out == ""
    assert why in err and err.strip().count("\n") == 0


def test_options_that_apply_are_taken(capsys: pytest.CaptureFixture[str]) -> None:
    for options in (
        ["--detector", "dlib", "--upsample", "0"],
        ["--detector", "none", "--align", "none"],
    ):
        status, out, _ = run(capsys, "predict", "--jsonl", str(ASTRONAUT), *options)
        assert status == 0 and json.loads(out)["faces"], options


def test_a_threshold_given_twice_is_one_column(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", "--detector", "none", str(ASTRONAUT)]
    status, out, _ = run(capsys, *args, "--csv", "--age-threshold", "18", "--age-threshold", "18")
    assert status == 0
    header = next(csv.reader(io.StringIO(out)))
    assert header.count("p_age_ge_18") == 1 and len(header) == len(set(header))


def test_minus_zero_is_the_threshold_zero(capsys: pytest.CaptureFixture[str]) -> None:
    # "-0" passed the range check and named the column p_age_ge_-0 (and the JSON key "-0")
    args = ["predict", "--detector", "none", str(ASTRONAUT)]
    status, out, _ = run(capsys, *args, "--csv", "--age-threshold", "-0", "--age-threshold", "0")
    assert status == 0
    header = next(csv.reader(io.StringIO(out)))
    assert [h for h in header if h.startswith("p_age_ge_")] == ["p_age_ge_0"]
    status, out, _ = run(capsys, *args, "--jsonl", "--age-threshold", "-0")
    assert status == 0
    assert list(json.loads(out)["faces"][0]["age"]["p_at_least"]) == ["0"]


def test_an_empty_annotation_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "predict", str(ASTRONAUT), "--annotate", "")
    assert status == 2 and "an empty path" in err and os.listdir(tmp_path) == []


def _clip(path: bytes | str, frames: int = 6) -> None:
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((256, 256)))
    writer = cv2.VideoWriter("clip.avi", cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for _ in range(frames):
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    os.replace("clip.avi", path)


def test_a_video_whose_name_is_not_utf8_is_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenCV's binding crashed the process (SIGSEGV) on such a name: every other input's
    result was lost."""
    monkeypatch.chdir(tmp_path)
    raw = b"v\xff.avi"
    _clip(raw)
    name = os.fsdecode(raw)
    status, out, err = run(capsys, "predict", "--jsonl", str(ASTRONAUT), name)
    rows = [json.loads(line) for line in out.splitlines()]
    assert status == 0, err
    frames = [r for r in rows if r["path"] == name]  # one a second (--video-step 1)
    assert len(rows) == 2 and len(frames) == 1
    assert all(r["faces"] and r["error"] is None for r in rows)
    assert not [n for n in os.listdir(os.environ.get("TMPDIR", "/tmp")) if "agegender-video-" in n]
    status, out, _ = run(capsys, "video", name, "--max-frames", "6")
    assert status == 0 and json.loads(out.splitlines()[0])["frames_seen"] >= 1


def test_retries_without_live_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _clip("clip.avi")
    status, out, err = run(capsys, "video", "clip.avi", "--retries", "3")
    assert status == 2 and "--retries applies only with --live" in err and out == ""


def utk_folder(tmp_path: Path, *names: str | bytes) -> Path:
    """A UTKFace-style folder of astronaut copies under these (byte) names."""
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in names:
        with open(os.path.join(os.fsencode(folder), os.fsencode(name)), "wb") as handle:
            handle.write(ASTRONAUT.read_bytes())
    return folder


def test_utkface_ages_out_of_range_are_dropped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = utk_folder(tmp_path, "41_1_0_20170103200522151.png", "999_1_0_2017010100.png")
    status, out, err = run(
        capsys,
        "evaluate",
        str(folder),
        "--format",
        "utkface",
        "--json",
        "--no-progress",
        "--detector",
        "none",
    )
    assert status == 0, err
    report = json.loads(out)
    assert report["dataset"]["records"] == 1
    assert report["dataset"]["dropped"] == {"age outside 0..120": 1}


def evaluate_labels(
    capsys: pytest.CaptureFixture[str], labels: Path, report: Path
) -> tuple[int, str, str]:
    args = ["evaluate", str(labels), "--format", "csv", "--no-progress", "--detector", "none"]
    return run(capsys, *args, "--report", str(report))


def test_report_is_written_with_names_that_are_not_utf8_and_never_among_the_images(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = utk_folder(tmp_path, "41_1_0_20170103200522151.png", b"27_1_0_2017\xff.png")
    (folder / "28_1_0_2017.png").write_bytes(b"")  # unreadable: its error is reported too
    out_dir = tmp_path / "rep"
    status, _, err = run(
        capsys,
        "evaluate",
        str(folder),
        "--format",
        "utkface",
        "--no-progress",
        "--detector",
        "none",
        "--report",
        str(out_dir),
    )
    assert status in (0, 1), err
    predictions = (out_dir / "predictions.csv").read_text(encoding="utf-8")
    assert "27_1_0_2017\\udcff.png" in predictions and (out_dir / "report.md").is_file()

    labels = folder / "labels.csv"
    labels.write_text("path,age,gender\n41_1_0_20170103200522151.png,41,f\n")
    status, _, err = evaluate_labels(capsys, labels, folder)
    assert status == 2 and "the folder of the dataset's images" in err
    assert not (folder / "report.md").exists()
    inside = folder / "rep"
    status, _, err = evaluate_labels(capsys, labels, inside)
    assert status == 0, err
    assert (inside / ".agegender-output").is_file()  # folder searches skip it


def test_a_video_that_gives_no_frame_leaves_no_outputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The empty tracks file and thumbs folder it left made the same command refuse to
    start again (the file exists)."""
    monkeypatch.chdir(tmp_path)
    Path("bad.avi").write_bytes(b"not a video at all")
    Path("mine").mkdir()  # a thumbs folder an earlier run made: it stays
    Path("mine", ".agegender-output").touch()
    for _ in range(2):
        status, _, err = run(capsys, "video", "bad.avi", "--tracks", "t.csv", "--thumbs", "th")
        assert status == 1 and "cannot open as a video" in err
        assert sorted(os.listdir(tmp_path)) == ["bad.avi", "mine"]
    status, _, _ = run(capsys, "video", "bad.avi", "--tracks", "t.csv", "--thumbs", "mine")
    assert status == 1 and sorted(os.listdir(tmp_path)) == ["bad.avi", "mine"]


def test_haar_faces_come_highest_score_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV returned the faces in an order that changed with its threads' timing (the
    same image's two faces swapped under concurrent requests)."""
    from agegender.detectors import haar

    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    boxes = np.array([[10, 10, 50, 50], [100, 100, 80, 80], [200, 20, 60, 60]])
    weights = np.array([[1.5], [4.0], [2.5]])

    class Cascade:
        def detectMultiScale3(self, *args: object, **kwargs: object) -> tuple:
            return boxes, None, weights

    detector = haar.HaarDetector(max_side=4096)
    monkeypatch.setattr(detector, "_cascade", lambda: Cascade())
    found = detector.detect(rgb)
    assert [d.score for d in found] == [4.0, 2.5, 1.5]
    assert found[0].box == (100.0, 100.0, 180.0, 180.0)


def test_a_model_file_given_empty_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for ref, why in [
        (f"cc0-age-v1={empty}", f"{empty} is an empty file"),
        ("cc0-age-v1=", "names no file after '='"),
    ]:
        status, out, err = run(capsys, "predict", str(ASTRONAUT), "--age-model", ref)
        assert status == 2 and out == "" and why in err and err.count("\n") == 1, err
