"""Long runs: what a process keeps must not grow with the count of its inputs (a server up
for weeks, a live stream that runs until stopped), whatever its clients send."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agegender.serve.metrics import Metrics
from agegender.serve.middleware import MetricsMiddleware

SRC = Path(__file__).resolve().parents[1] / "src"


def test_metrics_keep_a_bounded_set_of_methods() -> None:
    """Every HTTP answer is counted by method; a made-up method (any token is one) must
    not become a series of its own, kept for the life of the server."""
    metrics = Metrics()
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        for i in range(50):
            assert client.request(f"M{i:04d}", "/healthz").status_code == 405
            assert client.request(f"X{i:04d}", f"/nowhere/{i}").status_code == 404
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "agegender_http_requests_total":
                key = (sample.labels["route"], sample.labels["method"], sample.labels["status"])
                counts[key] = sample.value
    assert counts == {
        ("/healthz", "GET", "200"): 1,
        ("/healthz", "other", "405"): 50,
        ("other", "other", "404"): 50,
    }


def test_a_track_in_view_for_long_keeps_a_bounded_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A face in view for good (a live stream, a session) gains a path point per
    detection; past a bound the points thin out, while start, end, distance and mean
    side still count every detection."""
    from types import SimpleNamespace

    from agegender import people
    from agegender.faces import Detection
    from agegender.heads import DECODERS, Support
    from agegender.streams import SourceFrame

    class StandInTask:
        def __init__(self, support: Support):
            self.support, self.calibration = support, None

        def decode(self, probs, thresholds, age=None):  # type: ignore[no-untyped-def]
            return DECODERS[self.support.kind](self.support, probs, thresholds, None, age)

    values = np.arange(0.0, 101.0)
    tasks = {
        "age": StandInTask(Support("age", values=values)),
        "gender": StandInTask(Support("gender", labels=("female", "male"))),
    }
    age = np.exp(-0.5 * ((values - 30) / 5) ** 2)

    def box(index: int) -> tuple[float, float, float, float]:
        x = float(round(100 + 20 * np.sin(index / 50)))  # whole pixels, as the path's are
        return (x, 60.0, x + 100 + index % 3, 160.0 + index % 3)

    def prepare(rgb, name):  # type: ignore[no-untyped-def]
        return SimpleNamespace(detections=[Detection(box(int(name.split()[-1])), 1.0)])

    def distributions(estimator, prepared):  # type: ignore[no-untyped-def]
        return {"age": (age / age.sum())[None], "gender": np.array([[0.3, 0.7]])}

    monkeypatch.setattr(people, "face_distributions", distributions)
    monkeypatch.setattr(people, "MAX_EVIDENCE", 20)  # the fusion's own cap: kept small here
    estimator = SimpleNamespace(
        tasks=tasks, prepare=prepare, config=SimpleNamespace(age_thresholds=())
    )
    rgb = np.full((240, 400, 3), 128, np.uint8)
    tracker = people.PeopleTracker(estimator)  # type: ignore[arg-type]
    frames = 3000
    for index in range(frames):
        tracker.process(SourceFrame(index, index / 10, rgb, 0.0))
    (track,) = tracker.tracker.tracks
    evidence = track.data["evidence"]
    assert len(evidence.frames) == 20
    assert len(evidence.path) <= 2001  # not one point per frame
    (person,) = tracker.finish()
    assert person.frames_seen == frames
    assert (person.first_time, person.last_time) == (0.0, (frames - 1) / 10)
    centres = np.array(
        [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0]] for b in map(box, range(frames))]
    )
    steps = np.hypot(np.diff(centres[:, 0]), np.diff(centres[:, 1]))
    assert person.path["start"] == [round(v, 1) for v in centres[0]]
    assert person.path["end"] == [round(v, 1) for v in centres[-1]]
    assert person.path["distance"] == pytest.approx(steps.sum(), abs=0.06)
    assert person.path["mean_side"] == pytest.approx(centres[:, 2].mean(), abs=0.06)
    times = [point[0] for point in person.path["points"]]
    assert len(times) == 10 and times[0] == 0.0 and times[-1] == (frames - 1) / 10
    assert max(np.diff(times)) < 2 * (frames / 10) / 9  # spread over the whole track


def test_onnx_runtime_leaves_no_files_behind(tmp_path: Path) -> None:
    """A process that runs a model leaves nothing in $TMPDIR or $HOME (ONNX Runtime's
    telemetry wrote a log per process there, and an event database)."""
    home, temp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), TMPDIR=str(temp))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    script = (
        "import onnx, numpy as np\n"
        "from onnx import TensorProto, helper\n"
        "from agegender import sessions\n"
        "x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])\n"
        "y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])\n"
        "graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', [x], [y])\n"
        "model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)],"
        " ir_version=9)\n"
        "session = sessions.create(model.SerializeToString())\n"
        "print(session.run(None, {'x': np.ones(1, np.float32)})[0][0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1.0"
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == []


def test_a_live_run_keeps_no_record_per_frame(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`video --live` runs until stopped: what it keeps for its summary line (the latency
    mean and p95) must not grow by one entry per frame."""
    from agegender import people, pipeline, streams
    from agegender.cli import main
    from agegender.commands import video

    frames = 3000
    runs: list[object] = []

    class Source:
        def __init__(self, spec: str, **options: object) -> None:
            self.fps, self.dropped, self.reconnects = 25.0, 0, 0

        def frames(self):  # type: ignore[no-untyped-def]
            rgb = np.zeros((8, 8, 3), np.uint8)
            for index in range(frames):
                yield streams.SourceFrame(index, index / 25, rgb, time.monotonic())

        def stop(self) -> None:
            pass

    class Tracker:
        def __init__(self, estimator: object, **options: object) -> None:
            pass

        def process(self, frame: streams.SourceFrame):  # type: ignore[no-untyped-def]
            return people.FrameReport(frame.index, frame.time, False, []), []

        def finish(self) -> list[object]:
            return []

    summary = video._Run._summary

    def keep(run: object, *args: object) -> None:
        runs.append(run)
        summary(run, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(streams, "Source", Source)
    monkeypatch.setattr(people, "PeopleTracker", Tracker)
    monkeypatch.setattr(pipeline, "Estimator", lambda config: None)
    monkeypatch.setattr(video._Run, "_summary", keep)
    code = main(["video", "rtsp://127.0.0.1:9/x", "--live", "--tracks", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{frames} frames" in err
    assert "latency mean" in err and "p95" in err
    (run,) = runs

    def sizes(value: object) -> list[int]:  # entries of a container, or of its attributes'
        if isinstance(value, list | dict | set):
            return [len(value)]
        inner = getattr(value, "__dict__", {})
        return [len(v) for v in inner.values() if isinstance(v, list | dict | set)]

    held = {name: max(sizes(value), default=0) for name, value in vars(run).items()}
    assert max(held.values()) < 100, held
    # the summary's numbers from the bins: 40, 41, ..., 49 ms, as many frames each
    latencies = video.Latencies()
    for index in range(frames):
        latencies.add(0.04 + index % 10 / 1000)
    assert latencies.mean_ms() == pytest.approx(44.5)
    assert latencies.percentile_ms(95) == 49 and latencies.percentile_ms(50) == 44
    assert video.Latencies().percentile_ms(95) == 0
