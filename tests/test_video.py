"""Video inputs: frames sampled every --video-step seconds, each reported with its index
and time; a video that cannot be opened is one error line and the other inputs go on."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from agegender import video
from agegender.cli import main

FPS = 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: NDArray[np.uint8]) -> Path:
    """2.5 s at 10 fps: 2 s of the astronaut, then 0.5 s of a blank frame."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (width, height))
    assert writer.isOpened()
    for index in range(25):
        writer.write(bgr if index < 20 else np.full_like(bgr, 255))
    writer.release()
    return path


def test_frames_sampled_by_time(clip: Path) -> None:
    sampled = list(video.frames(clip, step=1.0))
    assert [(f.index, f.time) for f in sampled] == [(0, 0.0), (10, 1.0), (20, 2.0)]
    assert all(f.rgb is not None and f.rgb.shape == (512, 512, 3) for f in sampled)
    assert len(list(video.frames(clip, step=0))) == 25
    assert len(list(video.frames(clip, step=0.5, max_frames=2))) == 2


def test_predict_on_video(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "annotated"
    code = main(
        [
            "predict",
            str(clip),
            "--video-step",
            "1",
            "--jsonl",
            "--min-score",
            "0.2",
            "--annotate",
            str(out),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["path"], r["frame"], r["time"]) for r in results] == [
        (str(clip), 0, 0.0),
        (str(clip), 10, 1.0),
        (str(clip), 20, 2.0),
    ]
    for result in results[:2]:
        (face,) = result["faces"]
        x1, y1, x2, y2 = face["box"]
        assert max(abs(x1 - 179), abs(y1 - 83), abs(x2 - 267), abs(y2 - 171)) < 10
        assert face["gender"]["label"] == "female"
        assert 20 <= face["age"]["value"] <= 60
    assert results[2]["faces"] == [] and results[2]["error"] is None  # the blank frame
    written = sorted(p.name for p in out.iterdir())
    assert written == ["clip-000000.jpg", "clip-000010.jpg", "clip-000020.jpg"]


def test_unreadable_video_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    code = main(["predict", str(bad), "tests/data/astronaut.png", "--jsonl", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert results[0]["path"] == str(bad) and "cannot open as a video" in results[0]["error"]
    assert len(results[1]["faces"]) == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("agegender: error:")]
    assert errors == [f"agegender: error: {bad}: cannot open as a video"]
    assert "Traceback" not in captured.err


def test_broken_videos_are_one_error_each(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Empty, truncated to its header, random bytes: one line each, the photo still answered;
    a real video cut in the middle keeps the frames before the cut."""
    data = clip.read_bytes()
    broken = {
        tmp_path / "empty.mp4": (b"", "empty file"),
        tmp_path / "header.avi": (data[:200], ""),
        tmp_path / "noise.mkv": (bytes(range(256)) * 8, ""),
    }
    for path, (content, _) in broken.items():
        path.write_bytes(content)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 3 // 5])
    inputs = [*map(str, broken), str(cut), "tests/data/astronaut.png"]
    code = main(["predict", *inputs, "--jsonl", "--no-progress", "--detector", "none"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == len(broken), captured.err
    for (path, (_, reason)), line in zip(broken.items(), lines, strict=True):
        assert line.startswith(f"agegender: error: {path}: ") and reason in line
    results = [json.loads(line) for line in captured.out.splitlines()]
    kept = [r for r in results if r["path"] == str(cut)]
    assert kept and all(r["error"] is None for r in kept)
    assert [r["frame"] for r in kept] == [0, 10][: len(kept)]
    assert results[-1]["path"] == "tests/data/astronaut.png" and results[-1]["error"] is None


def test_predict_default_step_is_the_video_modules() -> None:
    from agegender.commands import options

    assert options.DEFAULT_VIDEO_STEP == video.DEFAULT_STEP_SECONDS
    assert options.MIN_VIDEO_STEP == video.MIN_STEP_SECONDS


def test_the_smallest_step_samples_every_frame_and_smaller_ones_are_refused(
    clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 5e-324 s overflowed the count of steps between two frames: a traceback after the
    # first frames, and the inputs after the video were never read
    assert len(list(video.frames(clip, step=video.MIN_STEP_SECONDS))) == 25
    refused = r"step must be 0 \(every frame\) or at least 1e-06 seconds"
    with pytest.raises(ValueError, match=refused):
        list(video.frames(clip, step=5e-324))
    for tiny in ("5e-324", "1e-320", "1e-7"):
        with pytest.raises(SystemExit) as stopped:
            main(["predict", str(clip), "--video-step", tiny, "--no-progress"])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert err.rstrip().endswith(
            f"--video-step: must be 0 (every frame) or at least 1e-06 seconds, got '{tiny}'"
        ), err
