"""``agegender video``: faces tracked across frames, one fused estimate per person.

Clips are composed here from the astronaut photo (tests/data, public domain): copies of
the face patch moving along known straight paths over a gradient, written with
cv2.VideoWriter (MJPG, 10 fps). Ground truth is where each copy's face box is in every
frame; an *identity switch* is a change of the track id that covers a true face.
No network (a local HTTP server on 127.0.0.1 serves a clip), no camera.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT_BOX, PATCH, gradient_canvas
from jsonschema import Draft202012Validator
from numpy.typing import NDArray

from agegender import schemas
from agegender.cli import main
from agegender.tracking import Tracker, iou_matrix

FPS = 10
SIZE = (640, 480)  # width, height
# A path: frame index -> (x, y) of the patch's top-left corner, or None (not in the clip).
Path2D = Callable[[int], tuple[float, float] | None]


# -- composed clips ------------------------------------------------------------------------


def face_box(x: float, y: float, mirrored: bool) -> tuple[float, float, float, float]:
    """Where the face of a patch placed at (x, y) is (the astronaut's box, shifted)."""
    px1, py1, px2, _ = PATCH
    bx1, by1, bx2, by2 = ASTRONAUT_BOX
    x1, x2 = bx1 - px1, bx2 - px1
    if mirrored:
        x1, x2 = (px2 - px1) - x2, (px2 - px1) - x1
    return (x + x1, y + by1 - py1, x + x2, y + by2 - py1)


def write_clip(
    path: Path, rgb: NDArray[np.uint8], paths: list[tuple[Path2D, bool]], frames: int
) -> list[list[tuple[float, float, float, float] | None]]:
    """Write the clip; returns, per frame, each face's true box (None: not fully in view)."""
    width, height = SIZE
    background = gradient_canvas(height, width)
    px1, py1, px2, py2 = PATCH
    patch = rgb[py1:py2, px1:px2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, SIZE)
    assert writer.isOpened()
    truth = []
    for index in range(frames):
        canvas = background.copy()
        boxes: list[tuple[float, float, float, float] | None] = []
        for where, mirrored in paths:
            place = where(index)
            if place is None:
                boxes.append(None)
                continue
            x0, y0 = round(place[0]), round(place[1])
            copy = patch[:, ::-1] if mirrored else patch
            h, w = copy.shape[:2]
            xs, ys, xe, ye = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
            if xe > xs and ye > ys:
                canvas[ys:ye, xs:xe] = copy[ys - y0 : ye - y0, xs - x0 : xe - x0]
            box = face_box(x0, y0, mirrored)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            boxes.append(box if inside else None)
        writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))
        truth.append(boxes)
    writer.release()
    return truth


def linear(x0: float, y0: float, vx: float, vy: float = 0.0) -> Path2D:
    return lambda i: (x0 + vx * i, y0 + vy * i)


def with_gap(inner: Path2D, start: int, stop: int) -> Path2D:
    return lambda i: None if start <= i < stop else inner(i)


@pytest.fixture(scope="module")
def clips(
    tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: NDArray[np.uint8]
) -> dict[str, tuple[Path, list[list[tuple[float, float, float, float] | None]]]]:
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    specs: dict[str, tuple[list[tuple[Path2D, bool]], int]] = {
        # two faces on separate diagonal paths
        "simple": ([(linear(10, 20, 4, 2), False), (linear(430, 260, -4, -1), True)], 30),
        # two faces crossing: the second passes in front of the first, hiding it ~8 frames
        "crossing": ([(linear(0, 40, 11), False), (linear(450, 120, -11), True)], 40),
        # one face walks out of the right edge, is away 2.5 s, and comes back in
        "reenter": ([(lambda i: (300 + 20 * i, 100) if i < 20 else (450, 100), False)], 55),
    }
    for name, (paths, frames) in specs.items():
        path = folder / f"{name}.avi"
        made[name] = (path, write_clip(path, astronaut_rgb, paths, frames))
    return made


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def identity_switches(
    frames: list[dict], truth: list[list[tuple[float, float, float, float] | None]]
) -> tuple[int, list[list[int | None]]]:
    """Per true face, the track id over it in each frame (IoU >= 0.3) and the switches."""
    ids: list[list[int | None]] = [[] for _ in truth[0]]
    for record, boxes in zip(frames, truth, strict=True):
        found = [(f["track"], f["box"]) for f in record["faces"] if f["track"] is not None]
        for face, box in enumerate(boxes):
            best = None
            if box is not None and found:
                iou = iou_matrix(np.array([box]), np.array([b for _, b in found]))[0]
                if iou.max() >= 0.3:
                    best = found[int(iou.argmax())][0]
            ids[face].append(best)
    switches = 0
    for seq in ids:
        seen = [i for i in seq if i is not None]
        switches += sum(a != b for a, b in itertools.pairwise(seen))
    return switches, ids


def run_video(tmp: Path, clip: Path, *extra: str) -> tuple[int, list[dict], list[dict]]:
    tracks, frames = tmp / "tracks.jsonl", tmp / "frames.jsonl"
    code = main(
        [
            "video",
            str(clip),
            "--tracks",
            str(tracks),
            "--frames",
            str(frames),
            "--upsample",
            "0",
            *list(extra),
        ]
    )
    people, reports = read_jsonl(tracks), read_jsonl(frames)
    # every line as its published schema says (agegender.schemas)
    for record in people:
        Draft202012Validator(schemas.PERSON).validate(record)
    for record in reports:
        Draft202012Validator(schemas.VIDEO_FRAME).validate(record)
    return code, people, reports


# -- the tracker alone (no models) ---------------------------------------------------------


def test_tracker_keeps_ids_on_known_paths() -> None:
    tracker = Tracker(max_lost=5, min_hits=2)
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    for frame in range(40):
        boxes = [
            (10 + 6 * frame, 50, 100 + 6 * frame, 140),
            (500 - 6 * frame, 90, 590 - 6 * frame, 180),
        ]
        matches, ended = tracker.step(frame, boxes)
        assert not ended
        for m in matches:
            if m.detection is not None and m.track.id is not None:
                seen[m.detection].add(m.track.id)
    # crossing at frame ~33 with boxes overlapping by 40 px vertically: no switch
    assert seen == {0: {1}, 1: {2}}


def test_tracker_carries_boxes_between_detections() -> None:
    tracker = Tracker(max_lost=10, min_hits=1)
    for frame in range(30):
        x = 10 + 5 * frame
        matches, _ = tracker.step(frame, [(x, 50, x + 90, 140)] if frame % 4 == 0 else None)
        (match,) = matches
        assert match.track.id == 1
        if frame >= 8:  # after two detections the filter knows the velocity
            assert abs(match.track.box[0] - x) < 10, frame


def test_tracker_ends_lost_tracks() -> None:
    tracker = Tracker(max_lost=3, min_hits=1)
    tracker.step(0, [(0, 0, 50, 50)])
    for frame in range(1, 4):
        assert tracker.step(frame, [])[1] == []
    _, ended = tracker.step(4, [])
    assert [t.id for t in ended] == [1]
    matches, _ = tracker.step(5, [(0, 0, 50, 50)])
    assert [m.track.id for m in matches] == [2]  # the same place later: a new track


# -- the whole per-person path on synthetic evidence ---------------------------------------


def test_people_tracker_fused_interval_coverage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracking, evidence, fusion and decoding end to end, with stand-in per-frame outputs
    that are noisy draws around a known age: each person's frames are Gaussians of width s
    centred at truth + b + e_i (person-level b ~ N(0, s²/2), per-frame e_i ~ N(0, s²/2)),
    so single frames are calibrated by construction. 50 clips x 4 people x 12 frames."""
    from types import SimpleNamespace

    from agegender import people
    from agegender.faces import Detection
    from agegender.heads import DECODERS, Support
    from agegender.streams import SourceFrame

    values = np.arange(0.0, 101.0)
    rng = np.random.default_rng(5)

    class StandInTask:
        def __init__(self, support: Support):
            self.support, self.calibration = support, None

        def decode(self, probs, thresholds, age=None):  # type: ignore[no-untyped-def]
            return DECODERS[self.support.kind](self.support, probs, thresholds, None, age)

    tasks = {
        "age": StandInTask(Support("age", values=values)),
        "gender": StandInTask(Support("gender", labels=("female", "male"))),
    }
    clip: dict[str, object] = {}

    def prepare(rgb, name):  # type: ignore[no-untyped-def]
        index = int(name.split()[-1])
        boxes = [
            (40.0 + 150 * p + 2 * index, 60.0, 140.0 + 150 * p + 2 * index, 160.0) for p in range(4)
        ]
        return SimpleNamespace(detections=[Detection(b, 1.0) for b in boxes], index=index)

    def distributions(estimator, prepared):  # type: ignore[no-untyped-def]
        ages = []
        for p in range(4):
            truth, s, common = clip["people"][p]  # type: ignore[index]
            centre = truth + common + rng.normal(0, s / np.sqrt(2))
            g = np.exp(-0.5 * ((values - centre) / s) ** 2)
            ages.append(g / g.sum())
        return {"age": np.array(ages), "gender": np.tile([0.3, 0.7], (4, 1))}

    monkeypatch.setattr(people, "face_distributions", distributions)
    estimator = SimpleNamespace(
        tasks=tasks, prepare=prepare, config=SimpleNamespace(age_thresholds=())
    )
    rgb = np.full((240, 720, 3), 128, np.uint8)
    fused_hits = single_hits = singles = 0
    fused_widths, single_widths = [], []
    tracks = 0
    for _ in range(50):
        clip["people"] = [
            (t, s, rng.normal(0, s / np.sqrt(2)))
            for t, s in zip(rng.uniform(15, 70, 4), rng.uniform(4, 9, 4), strict=True)
        ]
        tracker = people.PeopleTracker(estimator)  # type: ignore[arg-type]
        for index in range(12):
            report, ended = tracker.process(SourceFrame(index, index / 10, rgb, 0.0))
            assert not ended
            for face in report.faces:
                if face.age is not None:
                    truth = clip["people"][int((face.box[0] - 2 * index - 40) // 150)][0]  # type: ignore[index]
                    singles += 1
                    single_hits += face.age.interval[0] <= truth <= face.age.interval[1]
                    single_widths.append(face.age.interval[1] - face.age.interval[0])
        persons = tracker.finish()
        assert [p.id for p in persons] == [1, 2, 3, 4]
        for person in persons:
            truth = clip["people"][int((person.path["start"][0] - 90) // 150)][0]  # type: ignore[index]
            assert person.age is not None and person.gender is not None
            assert person.gender.label == "male" and person.gender.probability > 0.7
            fused_hits += person.age.interval[0] <= truth <= person.age.interval[1]
            fused_widths.append(person.age.interval[1] - person.age.interval[0])
            tracks += 1
    assert tracks == 200 and singles == 200 * 12
    single_cov, fused_cov = single_hits / singles, fused_hits / tracks
    # 200 tracks: the binomial standard error of an 80% rate is 2.8 points
    assert 0.75 <= single_cov <= 0.85, single_cov
    assert 0.72 <= fused_cov <= 0.92, fused_cov
    assert np.mean(fused_widths) < 0.9 * np.mean(single_widths)
    print(
        f"single frames: coverage {single_cov:.3f}, width {np.mean(single_widths):.1f}; "
        f"tracks: coverage {fused_cov:.3f}, width {np.mean(fused_widths):.1f}"
    )


# -- the command on composed clips --------------------------------------------------------


def test_simple_clip(clips, tmp_path: Path) -> None:
    clip, truth = clips["simple"]
    annotated = tmp_path / "out.mp4"
    code, tracks, frames = run_video(tmp_path, clip, "--annotate", str(annotated))
    assert code == 0
    assert len(frames) == 30
    switches, ids = identity_switches(frames, truth)
    assert switches == 0, ids
    assert [t["track"] for t in tracks] == [1, 2]
    for track in tracks:
        assert track["first_time"] == 0.0 and track["last_time"] == pytest.approx(2.9)
        assert track["frames_seen"] >= 28 and 0 < track["frames_used"] <= track["frames_seen"]
        assert track["gender"]["label"] == "female"
        assert 15 <= track["age"]["value"] <= 60
        low, high = track["age"]["interval"]
        assert 0 <= low <= high <= 80
        thumb = Path(track["thumbnail"])
        assert thumb.parent == tmp_path / "tracks-thumbs" and thumb.is_file()
        assert cv2.imread(str(thumb)) is not None
        assert len(track["path"]["points"]) == 10
    # the first face starts near its true box centre
    x1, y1, x2, y2 = truth[0][0]
    assert tracks[0]["path"]["start"][:2] == pytest.approx([(x1 + x2) / 2, (y1 + y2) / 2], abs=8)
    # fused estimates are narrower than single frames'
    for track in tracks:
        singles = [
            f["age"]["std"]
            for r in frames
            for f in r["faces"]
            if f["track"] == track["track"] and f["detected"]
        ]
        assert track["age"]["std"] < np.mean(singles)
    capture = cv2.VideoCapture(str(annotated))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    capture.release()


def test_detect_every_k_carries_boxes(clips, tmp_path: Path) -> None:
    clip, truth = clips["simple"]
    code, tracks, frames = run_video(tmp_path, clip, "--detect-every", "3", "--min-hits", "2")
    assert code == 0
    assert [r["detected"] for r in frames[:6]] == [True, False, False, True, False, False]
    switches, ids = identity_switches(frames, truth)
    assert switches == 0
    # every true face is covered by a track on carried frames too, once confirmed
    assert all(i is not None for seq in ids for i in seq[6:]), ids
    assert [t["track"] for t in tracks] == [1, 2]
    assert all(t["frames_seen"] == 10 for t in tracks)


def test_crossing_faces_keep_their_ids(clips, tmp_path: Path) -> None:
    clip, truth = clips["crossing"]
    code, tracks, frames = run_video(tmp_path, clip)
    assert code == 0
    switches, ids = identity_switches(frames, truth)
    assert switches == 0, ids
    assert [t["track"] for t in tracks] == [1, 2]  # the hidden face was carried, not lost
    hidden = next(t for t in tracks if t["frames_seen"] < 40)
    assert hidden["last_frame"] == 39


def test_a_face_coming_back_is_a_new_person(clips, tmp_path: Path) -> None:
    # Gone for longer than --max-lost (1 s): no appearance re-identification, a new id.
    clip, truth = clips["reenter"]
    code, tracks, frames = run_video(tmp_path, clip)
    assert code == 0
    assert [t["track"] for t in tracks] == [1, 2]
    first, second = tracks
    assert first["last_time"] < 2.0 <= second["first_time"]
    switches, _ = identity_switches(frames, truth)
    assert switches == 1  # the one face: id 1, then id 2 after coming back


def test_tracks_to_stdout(clips, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip, _ = clips["simple"]
    code = main(["video", str(clip), "--upsample", "0", "--max-frames", "10"])
    out = capsys.readouterr()
    assert code == 0, out.err
    tracks = [json.loads(line) for line in out.out.splitlines()]
    assert [t["track"] for t in tracks] == [1, 2]
    assert all(t["thumbnail"] is None and t["last_frame"] == 9 for t in tracks)


def test_tracks_as_csv(clips, tmp_path: Path) -> None:
    import csv

    clip, _ = clips["simple"]
    out = tmp_path / "people.csv"
    args = ["video", str(clip), "--upsample", "0", "--max-frames", "6", "--age-threshold", "18"]
    assert main([*args, "--tracks", str(out)]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["track"] for r in rows] == ["1", "2"]
    assert all(
        r["gender"] == "female" and float(r["age_low"]) <= float(r["age_high"]) for r in rows
    )
    assert all(0 <= float(r["p_age_ge_18"]) <= 1 and Path(r["thumbnail"]).is_file() for r in rows)
    # no people: still a CSV with its header
    blank = tmp_path / "blank.avi"
    write_clip(blank, np.zeros((300, 300, 3), np.uint8), [], 3)
    empty = tmp_path / "empty.csv"
    assert main(["video", str(blank), "--tracks", str(empty)]) == 0
    assert empty.read_text().startswith("track,first_frame,")
    assert len(empty.read_text().splitlines()) == 1


# -- bad inputs and outputs: one line, an exit status -------------------------------------


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agegender: error: "), err
    return lines[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["video", str(tmp_path / "nope.mp4")]) == 1
    assert "nope.mp4: no such file" in one_error(capsys)


def test_broken_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    out = tmp_path / "t.jsonl"
    assert main(["video", str(bad), "--tracks", str(out)]) == 1
    assert "broken.mp4" in one_error(capsys)
    # Made by agegender and removed again: the input gave no frame, and an empty file
    # left behind would make the same command refuse to start the next time.
    assert not out.exists()


def test_truncated_video_keeps_its_frames(clips, tmp_path: Path, capsys) -> None:
    clip, _ = clips["simple"]
    cut = tmp_path / "cut.avi"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code = main(["video", str(cut), "--upsample", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len(out.out.splitlines()) == 2


def test_bad_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["video", "http://127.0.0.1:9/none.avi"]) == 1
    assert "cannot open the stream" in one_error(capsys)
    assert main(["video", "http://127.0.0.1:9/none.avi", "--live", "--retries", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert any("cannot open the stream (2 attempts)" in line for line in err), err
    assert sum(line.startswith("agegender: error: ") for line in err) == 1


def test_outputs_are_checked_first(clips, tmp_path: Path, capsys) -> None:
    clip, _ = clips["simple"]
    taken = tmp_path / "taken.jsonl"
    taken.write_text("mine\n")
    assert main(["video", str(clip), "--tracks", str(taken)]) == 2
    assert "exists" in one_error(capsys)
    assert taken.read_text() == "mine\n"
    folder = tmp_path / "photos"
    folder.mkdir()
    assert (
        main(["video", str(clip), "--tracks", str(tmp_path / "n.jsonl"), "--thumbs", str(folder)])
        == 2
    )
    assert "did not make" in one_error(capsys)
    assert main(["video", str(clip), "--annotate", str(tmp_path / "out.gif")]) == 2
    assert "--annotate" in one_error(capsys)
    assert main(["video", str(clip), "--frames", "-"]) == 2
    assert "stdout" in one_error(capsys)
    assert main(["video", str(clip), "--tracks", str(tmp_path / "no" / "t.jsonl")]) == 2
    assert "does not exist" in one_error(capsys)
    assert not (tmp_path / "n.jsonl").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["video", str(clip), "--detect-every", "0"])
    assert exit_.value.code == 2


def test_thumbs_folder_of_an_earlier_run_is_reused(clips, tmp_path: Path) -> None:
    clip, _ = clips["simple"]
    args = ["video", str(clip), "--upsample", "0", "--max-frames", "5"]
    thumbs = tmp_path / "thumbs"
    assert main([*args, "--tracks", str(tmp_path / "a.jsonl"), "--thumbs", str(thumbs)]) == 0
    assert main([*args, "--tracks", str(tmp_path / "a2.jsonl"), "--thumbs", str(thumbs)]) == 0
    names = sorted(p.name for p in thumbs.glob("*.jpg"))
    assert names == ["a-0001.jpg", "a-0002.jpg", "a2-0001.jpg", "a2-0002.jpg"]


# -- streams --------------------------------------------------------------------------------


@pytest.fixture()
def http_server(clips) -> Iterator[str]:
    folder = clips["simple"][0].parent
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_http_stream(http_server: str, tmp_path: Path) -> None:
    code, tracks, frames = run_video(tmp_path, f"{http_server}/simple.avi")  # type: ignore[arg-type]
    assert code == 0
    assert len(frames) == 30 and [t["track"] for t in tracks] == [1, 2]


def test_live_http_stream_reports_latency(
    http_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tracks = tmp_path / "t.jsonl"
    code = main(
        [
            "video",
            f"{http_server}/simple.avi",
            "--live",
            "--max-frames",
            "8",
            "--upsample",
            "0",
            "--tracks",
            str(tracks),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "latency mean" in err and "frames dropped" in err


class _LimitedHandler(_QuietHandler):
    """Serves GET requests while the server's `remaining` count lasts, then 503."""

    def do_GET(self) -> None:
        server = self.server
        if server.remaining <= 0:  # type: ignore[attr-defined]
            self.send_error(503)
            return
        server.remaining -= 1  # type: ignore[attr-defined]
        super().do_GET()


def test_live_stream_reconnects_then_reports_the_loss(
    clips, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The clip is served twice: the live run plays it, reconnects once when it ends,
    # plays it again, then fails to reconnect: one error line, status 1, and the people
    # seen so far are still written.
    folder = clips["simple"][0].parent
    handler = functools.partial(_LimitedHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.remaining = 2  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    tracks = tmp_path / "t.jsonl"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/simple.avi"
        code = main(
            [
                "video",
                url,
                "--live",
                "--retries",
                "2",
                "--upsample",
                "0",
                "--min-hits",
                "1",
                "--tracks",
                str(tracks),
            ]
        )
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    errors = [line for line in err if line.startswith("agegender: error: ")]
    assert len(errors) == 1 and "stream lost after 60 frames" in errors[0], err
    assert "3 reconnections" in err[-1]  # one that worked, two that failed
    assert read_jsonl(tracks)  # flushed


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["AGEGENDER_HOME"] = str(tmp_path / "home")
    return env


@pytest.mark.parametrize(
    ("how", "live"), [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGINT, False)]
)
def test_a_run_stops_cleanly(
    astronaut_rgb: NDArray[np.uint8], tmp_path: Path, how: signal.Signals, live: bool
) -> None:
    # A long clip, stopped once the first frames are out: the person in view is still
    # written; a live run (played at 10 fps) ends with status 0, a file run with 130.
    clip = tmp_path / "long.avi"
    write_clip(
        clip, astronaut_rgb, [(lambda i: (100 + (i % 50), 100), False)], 200 if live else 600
    )
    tracks, frames = tmp_path / "t.jsonl", tmp_path / "f.jsonl"
    command = [
        sys.executable,
        "-m",
        "agegender",
        "video",
        str(clip),
        "--upsample",
        "0",
        "--tracks",
        str(tracks),
        "--frames",
        str(frames),
    ] + (["--live"] if live else [])
    # A suite started in the background of a shell without job control inherits SIGINT
    # ignored, and so would the child (Python keeps an ignored SIGINT ignored): give the
    # child the default disposition, as a terminal's foreground job has.
    inherited = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        deadline = time.monotonic() + 300  # a hang guard, not a speed limit
        while time.monotonic() < deadline and process.poll() is None:
            if frames.exists() and len(read_jsonl_safe(frames)) >= 5:
                break
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        process.send_signal(how)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    if live:
        assert process.returncode == 0, err
        assert "latency" in err and "error" not in err
    else:
        assert process.returncode == 130, err
        assert err.strip() == "agegender: interrupted"
    (person,) = read_jsonl(tracks)
    assert person["track"] == 1 and person["last_frame"] < (199 if live else 599)


def read_jsonl_safe(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def test_help_loads_nothing_heavy(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from agegender.cli import main\n"
        "try:\n"
        "    main(['video', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'numpy', 'cv2', 'onnxruntime', 'dlib', 'scipy'}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert "--detect-every" in done.stdout
    assert done.stderr.strip() == "[]"


# -- the annotated video: H.264 through imageio-ffmpeg, mp4v without it ----------------------


def video_info(path: Path) -> tuple[str, int, tuple[int, int], str]:
    """(fourcc, frames decoded, (width, height), ffmpeg's stream line) of a video file."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    code = int(capture.get(cv2.CAP_PROP_FOURCC))
    fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    stream = ""
    try:
        from agegender.video_writer import ffmpeg_exe

        exe = ffmpeg_exe()
    except ImportError:
        exe = None
    if exe is not None:
        # `ffmpeg -i FILE` with no output describes the file on stderr (and exits 1)
        err = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True).stderr
        stream = next((line.strip() for line in err.decode().splitlines() if "Video:" in line), "")
    return fourcc, count, size, stream


def test_writer_encodes_h264(tmp_path: Path) -> None:
    pytest.importorskip(
        "imageio_ffmpeg", reason="agegender[video] (imageio-ffmpeg) is not installed"
    )
    from agegender.video_writer import FfmpegWriter, open_writer

    rng = np.random.default_rng(0)
    for name, (width, height) in {"even.mp4": (160, 120), "odd.mov": (161, 121)}.items():
        path = tmp_path / name
        writer = open_writer(path, 12.5, (width, height))
        assert isinstance(writer, FfmpegWriter)
        for _ in range(17):
            writer.write(rng.integers(0, 255, (height, width, 3), np.uint8))
        writer.release()
        fourcc, count, size, stream = video_info(path)
        assert fourcc in ("avc1", "h264") and count == 17
        assert "h264" in stream and "yuv420p" in stream
        assert size == (width + width % 2, height + height % 2)  # odd sides padded


def test_writer_without_imageio_ffmpeg_warns_and_writes_mp4v(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender import video_writer

    monkeypatch.setattr(video_writer, "ffmpeg_exe", lambda: None)
    path = tmp_path / "out.mp4"
    writer = video_writer.open_writer(path, 10, (160, 120))
    for _ in range(5):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agegender: warning: --annotate")
    assert "imageio-ffmpeg" in lines[0]
    fourcc, count, _, stream = video_info(path)
    assert fourcc in ("mp4v", "FMP4") and count == 5  # OpenCV reads MPEG-4 Part 2 as FMP4
    assert "h264" not in stream


def test_writer_failure_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip(
        "imageio_ffmpeg", reason="agegender[video] (imageio-ffmpeg) is not installed"
    )
    from agegender.errors import AgegenderError
    from agegender.video_writer import open_writer

    writer = open_writer(tmp_path / "out.mp4", 10, (64, 48))
    with pytest.raises(AgegenderError, match=r"frame size changed from 64x48 to 32x32$"):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()  # already reported: no second error


def test_annotated_clip_is_h264(clips, tmp_path: Path) -> None:
    pytest.importorskip(
        "imageio_ffmpeg", reason="agegender[video] (imageio-ffmpeg) is not installed"
    )
    clip, _ = clips["simple"]
    annotated = tmp_path / "out.mp4"
    code, tracks, frames = run_video(
        tmp_path, clip, "--annotate", str(annotated), "--max-frames", "8"
    )
    assert code == 0 and len(frames) == 8 and len(tracks) == 2
    fourcc, count, size, stream = video_info(annotated)
    assert fourcc in ("avc1", "h264") and count == 8 and size == SIZE
    assert "h264" in stream and "yuv420p" in stream and "10 fps" in stream
