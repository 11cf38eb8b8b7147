"""Videos as users have them (audit): a damaged stretch in the middle of a file, a
variable frame rate sampled by --video-step, and the annotated copy of a
variable-frame-rate video. Each test failed before its fix; clips are composed here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender import video
from agegender.cli import main

SIZE = (160, 120)


def write_mjpg(path: Path, frames: int, fps: float = 10) -> None:
    """A plain MJPG clip whose frames differ (a moving bar), written by OpenCV."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, SIZE)
    assert writer.isOpened()
    for index in range(frames):
        canvas = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
        canvas[:, 4 * index : 4 * index + 8] = 250
        writer.write(canvas)
    writer.release()


def damage_frames(path: Path, frames: tuple[int, ...]) -> None:
    """Overwrite these frames' JPEG data (not the AVI chunk headers) with other bytes, as
    a bad sector or a broken copy leaves a file: the decoder refuses those packets."""
    data = bytearray(path.read_bytes())
    starts = []
    at = data.find(b"\xff\xd8\xff")
    while at >= 0:
        starts.append(at)
        at = data.find(b"\xff\xd8\xff", at + 3)
    for index in frames:
        begin, end = starts[index], starts[index + 1] - 8  # the next chunk's 8-byte header
        data[begin:end] = bytes((7 * i + 3) % 256 for i in range(end - begin))
    path.write_bytes(bytes(data))


def test_a_damaged_stretch_mid_file_does_not_end_the_video(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Frames 10-12 of 30 cannot be decoded: the other 27 are read, as a player shows
    them, with their own times (the video was cut off at frame 10, silently)."""
    clip = tmp_path / "damaged.avi"
    write_mjpg(clip, 30)
    damage_frames(clip, (10, 11, 12))
    read = list(video.frames(clip, step=0))
    assert all(f.error is None for f in read)
    times = [round(f.time, 3) for f in read]
    assert len(read) == 27
    assert times[9:11] == [0.9, 1.3] and times[-1] == 2.9
    # predict samples it every second: the damaged second is sampled after the stretch
    code = main(["predict", str(clip), "--detector", "none", "--jsonl", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert [json.loads(line)["time"] for line in out.out.splitlines()] == [0.0, 1.3, 2.0]


def ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the video extra")
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def variable_rate_clip(tmp_path: Path) -> Path:
    """40 frames: 30 at 10 fps (0-2.9 s), then 10 at 2 fps (3.0-7.5 s), as a phone that
    lowers its rate in the dark; the container's average rate is 5.3 fps."""
    source, vfr = tmp_path / "cfr.avi", tmp_path / "vfr.mkv"
    write_mjpg(source, 40)
    timing = "(if(lt(N,30),N*0.1,3.0+(N-30)*0.5))/TB"
    command = [ffmpeg(), "-loglevel", "error", "-i", str(source)]
    command += ["-vf", f"setpts='{timing}'", "-fps_mode", "vfr", "-c:v", "mjpeg", str(vfr)]
    subprocess.run(command, check=True)
    return vfr


def test_video_step_samples_a_variable_frame_rate_by_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--video-step 1 gives one frame a second by the frames' timestamps; it had been
    every round(1 s x 5.3 fps) = 5 frames: 0.5 s apart, then 2.5 s apart."""
    vfr = variable_rate_clip(tmp_path)
    sampled = [round(f.time, 3) for f in video.frames(vfr, step=1.0)]
    assert sampled == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert [round(f.time, 3) for f in video.frames(vfr, step=2.0)] == [0.0, 2.0, 4.0, 6.0]
    assert len(list(video.frames(vfr, step=0))) == 40
    out = tmp_path / "rows"
    code = main(["batch", str(vfr), "--out", str(out), "--format", "jsonl", "--no-progress"])
    capsys.readouterr()
    assert code == 0
    (part,) = out.glob("part-*.jsonl")
    rows = [json.loads(line) for line in part.read_text().splitlines()]
    assert sorted(round(r["time"], 3) for r in rows) == sampled


def test_constant_rate_sampling_is_unchanged(tmp_path: Path) -> None:
    """29.97 fps, step 0.5: the first frame at or after each half second."""
    clip = tmp_path / "ntsc.mkv"
    command = [ffmpeg(), "-loglevel", "error", "-f", "lavfi", "-i"]
    command += ["testsrc=size=96x64:rate=30000/1001:duration=2", "-c:v", "mjpeg", str(clip)]
    subprocess.run(command, check=True)
    sampled = [(f.index, round(f.time, 3)) for f in video.frames(clip, step=0.5)]
    assert sampled == [(0, 0.0), (15, 0.501), (30, 1.001), (45, 1.502)]


def test_a_live_file_reads_past_a_damaged_stretch_with_its_own_times(
    tmp_path: Path,
) -> None:
    """--live on a file: the frames after the damaged stretch are played too, at their
    own times (the run had ended at frame 9; times were index / fps)."""
    clip = tmp_path / "damaged.avi"
    write_mjpg(clip, 30)
    damage_frames(clip, (10, 11, 12))
    frames = tmp_path / "frames.jsonl"
    tracks = tmp_path / "tracks.jsonl"
    args = ["video", str(clip), "--live", "--detector", "none", "--frames", str(frames)]
    assert main([*args, "--tracks", str(tracks)]) == 0
    times = [json.loads(line)["time"] for line in frames.read_text().splitlines()]
    real = {round(0.1 * i, 1) for i in range(30) if i not in (10, 11, 12)}
    assert set(times) <= real  # frames may be dropped to keep up, never mistimed
    assert times[-1] == 2.9  # the last frame is never dropped


def test_the_end_of_a_live_source_does_not_push_out_its_last_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader's end-of-stream mark waited for nobody: put right after the last frame,
    it took that frame's place in the one-frame slot, uncounted."""
    import threading

    from agegender import streams

    source = streams.Source("clip.avi", live=True)
    go, done = threading.Event(), threading.Event()
    rgb = np.zeros((4, 4, 3), np.uint8)

    def read_live(put) -> None:  # type: ignore[no-untyped-def]
        put(streams.SourceFrame(0, 0.0, rgb, 0.0))
        go.wait()
        put(streams.SourceFrame(1, 0.1, rgb, 0.0))
        put(None)
        done.set()

    monkeypatch.setattr(source, "_read_live", read_live)
    delivered = source.frames()
    assert next(delivered).index == 0
    go.set()
    done.wait(timeout=0.5)  # set at once before the fix; after it, put(None) waits for us
    assert [frame.index for frame in delivered] == [1]


@pytest.mark.parametrize("suffix", [".3gp", ".mts", ".m2ts", ".wmv", ".flv"])
def test_phone_and_camcorder_suffixes_are_videos(
    suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A phone's .3gp or a camcorder's .mts was read as an image: 'not an image
    (unrecognised format)', and a folder search left it out. (FFmpeg reads a file by its
    content: the MJPG clip under these names stands in for the real formats.)"""
    folder = tmp_path / "holiday"
    folder.mkdir()
    write_mjpg(folder / "clip.avi", 25)
    (folder / "clip.avi").rename(folder / f"clip{suffix}")
    code = main(["predict", str(folder), "--detector", "none", "--jsonl", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    results = [json.loads(line) for line in out.out.splitlines()]
    assert [(r["frame"], r["time"], r["error"]) for r in results] == [
        (0, 0.0, None),
        (10, 1.0, None),
        (20, 2.0, None),
    ]
    from agegender.batch import sources

    assert sources.is_video(f"clip{suffix}") and video.is_video(f"clip{suffix}")


class _Recorder:
    def __init__(self) -> None:
        self.frames: list[int] = []

    def write(self, image: np.ndarray) -> None:
        self.frames.append(int(image[0, 0, 0]))

    def release(self) -> None:
        pass


def _timed(times: list[float], fps: float) -> list[int]:
    """Which frame (by index) fills each slot of a TimedWriter at `fps`."""
    from agegender.video_writer import TimedWriter

    recorder = _Recorder()
    writer = TimedWriter(recorder, fps)
    for index, at in enumerate(times):
        writer.write(np.full((2, 2, 3), index, np.uint8), at)
    writer.release()
    return recorder.frames


def test_the_timed_writer_puts_each_frame_at_its_own_time() -> None:
    """Evenly spaced frames are written once each; a slower stretch repeats each frame
    until the next one's time; a frame sooner than one slot after the one before is left
    out (its slot is taken), and repeated if a gap follows it; a gap of more than ten
    seconds (a stalled stream) is not filled."""
    assert _timed([0.1 * i for i in range(5)], 10) == [0, 1, 2, 3, 4]
    assert _timed([5.0 + i / 29.97 for i in range(4)], 29.97) == [0, 1, 2, 3]  # any start
    assert _timed([0.0, 0.1, 0.3, 0.6], 10) == [0, 1, 1, 2, 2, 2, 3]
    assert _timed([0.0, 0.1, 0.12, 0.3], 10) == [0, 1, 2, 3]  # 0.12: the slot of 0.1
    assert _timed([0.0, 0.1, 0.11, 0.14, 0.4], 10) == [0, 1, 3, 3, 4]
    assert _timed([0.0, 0.1, 60.0, 60.1], 10) == [0, 1, 2, 3]  # a jump: not 600 copies
    assert _timed([0.0, 0.1, 9.9], 10) == [0] + [1] * 98 + [2]  # under ten seconds: filled


def test_the_annotated_copy_of_a_variable_rate_video_keeps_its_times(tmp_path: Path) -> None:
    """The clip's 40 frames span 8 s (30 at 10 fps, then 10 at 2 fps). Its copy was the 40
    frames at the 10 fps OpenCV reports: 4 s, so from 3 s on it showed the source's
    frames up to 4.5 s early. Now it lasts 7.6 s and its frame at 5 s is the source's."""
    clip = variable_rate_clip(tmp_path)
    copy = tmp_path / "annotated.mp4"
    tracks = tmp_path / "tracks.jsonl"
    args = ["video", str(clip), "--detector", "none", "--annotate", str(copy)]
    assert main([*args, "--tracks", str(tracks)]) == 0
    capture = cv2.VideoCapture(str(copy))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    bars = []  # the moving bar's left edge on a row below the annotation
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        bars.append(int((frame[100, :, 1] > 200).argmax()))
    capture.release()
    assert len(bars) == 76  # 7.5 s of frames and the last one's slot
    source = {round(0.1 * n, 1) if n < 30 else round(3.0 + 0.5 * (n - 30), 1): n for n in range(40)}
    for slot in (10, 29, 30, 34, 35, 50, 62, 75):
        shown = max(at for at in source if at <= slot / 10 + 1e-9)
        assert abs(bars[slot] - 4 * source[shown]) <= 1, (slot, bars[slot], source[shown])


def test_a_tracks_dataset_resumes_with_another_video_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--video-step does not apply to --video-rows tracks (every frame is tracked), but the
    manifest recorded it, so a resume that gave another was refused; with frame rows it
    still is (it changes the rows)."""
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    clip = tmp_path / "clip.avi"
    write_mjpg(clip, 12)
    out = str(tmp_path / "tracks")
    base = ["batch", str(clip), "--out", out, "--detector", "none", "--no-progress"]
    assert main([*base, "--video-rows", "tracks", "--video-step", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--video-rows", "tracks", "--video-step", "0.5"]) == 0
    assert "1 skipped" in capsys.readouterr().err
    frames = str(tmp_path / "frames")
    base = ["batch", str(clip), "--out", frames, "--detector", "none", "--no-progress"]
    assert main([*base, "--video-step", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--video-step", "0.5"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "video step: 1.0 there, 0.5 now" in err[0], err
