"""`agegender video`: defects found by a second audit, each reproduced first.

Times and --max-lost by the frames' own timestamps (a variable frame rate), a non-UTF-8
--annotate name (OpenCV's writer crashed the process), outputs that clash with the
thumbnails folder, names too long for the file system, a non-UTF-8 CSV tracks file,
--max-lost out of range, the summary's count of detected frames after an interrupt.
Clips are composed from the astronaut photo (tests/data, public domain)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from faceutils import PATCH, gradient_canvas

from agegender import people
from agegender.cli import main
from agegender.tracking import Tracker

SRC = Path(__file__).resolve().parents[1] / "src"
SIZE = (480, 360)


def write_clip(path: Path, astronaut_rgb: np.ndarray, frames: int, absent=()) -> None:
    """A still face patch over a gradient, MJPG at 10 fps; no face in the `absent` frames."""
    px1, py1, px2, py2 = PATCH
    patch = astronaut_rgb[py1:py2, px1:px2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, SIZE)
    assert writer.isOpened()
    for index in range(frames):
        canvas = gradient_canvas(SIZE[1], SIZE[0])
        if index not in absent:
            canvas[60 : 60 + patch.shape[0], 100 : 100 + patch.shape[1]] = patch
        writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))
    writer.release()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    write_clip(path, astronaut_rgb, 12)
    return path


def run_video(*args: str | Path) -> int:
    return main(["video", *(str(a) for a in args), "--upsample", "0"])


def agegender_video(*args: str | Path | bytes) -> subprocess.CompletedProcess[bytes]:
    """The command in a process of its own (a crash there must not end the tests)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command: list[str | bytes] = [sys.executable, "-m", "agegender", "video", "--upsample", "0"]
    command += [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run(command, env=env, capture_output=True, check=False)


# -- time, not frame counts -----------------------------------------------------------------


def test_tracker_ends_a_track_by_time_when_given_times() -> None:
    """Frames 0-4 at 10 fps see the face; then frames come 1.5 s apart without it: the
    track is unseen for 1.6 s after two frames, so max_lost_time 1 s ends it there."""
    tracker = Tracker(max_lost=2, min_hits=1, max_lost_time=1.0)
    box = (10.0, 10.0, 50.0, 50.0)
    for index in range(5):
        _, ended = tracker.step(index, [box], index / 10)
        assert not ended
    assert tracker.step(5, [], 1.9)[1] == []  # two frames at least: not yet
    assert tracker.step(6, [], 3.4)[1] == []
    (ended,) = tracker.step(7, [], 4.9)[1]
    assert ended.last_frame == 4
    # evenly spaced frames: the same as counting frames (10 fps, 1 s: ends 11 frames on)
    tracker = Tracker(max_lost=2, min_hits=1, max_lost_time=1.0)
    tracker.step(0, [box], 0.0)
    assert [i for i in range(1, 15) if tracker.step(i, [], i / 10)[1]] == [11]


def test_a_variable_frame_rate_video_keeps_its_times_and_max_lost(
    astronaut_rgb: np.ndarray, tmp_path: Path
) -> None:
    """Frames 15 and 16 (no face) last 1.5 s each: the face is away 3 s, more than
    --max-lost 1, so it comes back as a second person, and the times are the frames' own
    (the last frame at 5.7 s, not 2.9 s as 30 frames at the nominal 10 fps would say)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the video extra")
    source, vfr = tmp_path / "cfr.avi", tmp_path / "vfr.mkv"
    write_clip(source, astronaut_rgb, 30, absent=(15, 16))
    timing = "(if(lt(N,15),N*0.1,if(lt(N,17),1.5+(N-15)*1.5,4.5+(N-17)*0.1)))/TB"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(source)]
    command += ["-vf", f"setpts='{timing}'", "-fps_mode", "vfr", "-c:v", "mjpeg", str(vfr)]
    subprocess.run(command, check=True)
    tracks, frames = tmp_path / "t.jsonl", tmp_path / "f.jsonl"
    assert run_video(vfr, "--max-lost", "1", "--tracks", tracks, "--frames", frames) == 0
    times = [json.loads(line)["time"] for line in frames.read_text().splitlines()]
    assert times[14:18] == pytest.approx([1.4, 1.5, 3.0, 4.5], abs=0.011)
    assert times[-1] == pytest.approx(5.7, abs=0.011)
    persons = [json.loads(line) for line in tracks.read_text().splitlines()]
    assert [p["track"] for p in persons] == [1, 2]
    assert persons[0]["last_time"] == pytest.approx(1.4, abs=0.011)
    assert persons[1]["last_time"] == pytest.approx(5.7, abs=0.011)


# -- output names ----------------------------------------------------------------------------


def test_a_non_utf8_annotate_name_is_written(clip: Path, tmp_path: Path) -> None:
    """OpenCV's writer crashed the whole process (SIGSEGV) on such a name: run apart."""
    out = os.fsencode(tmp_path) + b"/a\xe9.avi"
    done = agegender_video(clip, "--tracks", tmp_path / "t.jsonl", "--annotate", out)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert os.path.getsize(out) > 0
    link = tmp_path / "plain.avi"  # OpenCV reads it under a plain name
    os.symlink(out, os.fsencode(link))
    capture = cv2.VideoCapture(str(link))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    capture.release()
    link.unlink()
    names = sorted(os.listdir(os.fsencode(tmp_path)))
    assert names == [b"a\xe9.avi", b"t-thumbs", b"t.jsonl"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tracks", "t.jsonl", "--frames", "t-thumbs"], "--frames and the thumbnails folder"),
        (["--tracks", "same", "--thumbs", "same"], "--tracks and --thumbs both name"),
        (["--tracks", "u.jsonl", "--thumbs", "o.mp4", "--annotate", "o.mp4"], "--annotate and"),
        (["--tracks", "x" * 251 + ".jsonl"], "too long"),
        (["--tracks", "y" * 251 + ".csv"], "too long"),
        (["--tracks", "t.jsonl", "--max-lost", "1e308"], "--max-lost"),
    ],
)
def test_clashing_or_impossible_outputs_are_refused_before_any_work(
    options: list[str], message: str, clip: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(people, "PeopleTracker", None)  # no model may run
    try:
        code = run_video(clip, *options)
    except SystemExit as done:  # argparse's own range check
        code = int(done.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []  # nothing left behind


def test_an_input_name_too_long_is_one_line(tmp_path: Path, capsys) -> None:
    assert run_video(tmp_path / ("z" * 260 + ".mp4")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err, err


def test_a_non_utf8_csv_tracks_file_keeps_its_rows(clip: Path, tmp_path: Path) -> None:
    tracks = os.fsencode(tmp_path) + b"/t\xe9.csv"
    done = agegender_video(clip, "--min-hits", "1", "--tracks", tracks)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    with open(tracks, "rb") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 2 and b"\xe9-thumbs/t\xe9-0001.jpg" in lines[1]  # the name's bytes


def test_the_summary_counts_only_frames_done_after_an_interrupt(
    clip: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    """An interrupt inside the tracker's work on a frame: that frame is not done, and
    is not counted as detected either (the line said "2 frames (3 detected)")."""
    real = people.PeopleTracker.process
    calls = {"n": 0}

    def interrupted_on_the_third(self, frame):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        out = real(self, frame)
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(people.PeopleTracker, "process", interrupted_on_the_third)
    command = ["-v", "video", str(clip), "--upsample", "0", "--tracks", str(tmp_path / "t.jsonl")]
    assert main(command) == 130  # -v: the summary is logged at INFO
    lines = [r.getMessage() for r in caplog.records]
    assert any("2 frames (2 detected)" in line for line in lines), lines
