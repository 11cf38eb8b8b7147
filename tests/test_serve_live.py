"""Live sessions of `agegender serve` (/v1/sessions): frame-by-frame tracking with the
video command's tracker and fusion, one per session; expiry, the cap and bad frames.

Frames are composed here from the astronaut photo (tests/data, public domain) as in
tests/test_video_tracks.py: the face patch moving along a straight line over a gradient,
each frame sent as a JPEG. Idle expiry moves an injected clock; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import cv2
import httpx
import numpy as np
import pytest
from faceutils import ASTRONAUT_BOX, PATCH, gradient_canvas
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from serve_support import shared_estimator

from agegender.pipeline import Estimator
from agegender.serve import ServeSettings, create_app
from agegender.serve.service import Service

SIZE = (640, 480)  # width, height
STEP = (6, 3)  # pixels the face moves per frame


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@lru_cache(maxsize=1)
def estimator() -> Estimator:
    # The serve tests' loaded models; no upsampling, as the video tests run dlib.
    return shared_estimator().derive(upsample=0)


@contextmanager
def live_client(**settings: object) -> Iterator[tuple[TestClient, Service, FakeClock]]:
    app = create_app(ServeSettings(**settings), estimator=estimator())  # type: ignore[arg-type]
    service: Service = app.state.service
    clock = FakeClock()
    service.sessions.clock = clock
    with TestClient(app) as client:
        yield client, service, clock


def frame_jpeg(patch: NDArray[np.uint8] | None, index: int) -> bytes:
    """Frame `index`: the patch at (20, 30) + index * STEP over a gradient (None: the
    gradient alone), as JPEG."""
    width, height = SIZE
    canvas = gradient_canvas(height, width)
    if patch is not None:
        x0, y0 = 20 + STEP[0] * index, 30 + STEP[1] * index
        h, w = patch.shape[:2]
        canvas[y0 : y0 + h, x0 : x0 + w] = patch
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(canvas[:, :, ::-1]))
    assert ok
    return data.tobytes()


def true_box(index: int) -> tuple[float, float, float, float]:
    px1, py1, _, _ = PATCH
    bx1, by1, bx2, by2 = ASTRONAUT_BOX
    dx, dy = 20 + STEP[0] * index - px1, 30 + STEP[1] * index - py1
    return (bx1 + dx, by1 + dy, bx2 + dx, by2 + dy)


@pytest.fixture(scope="module")
def patch(astronaut_rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    px1, py1, px2, py2 = PATCH
    return np.ascontiguousarray(astronaut_rgb[py1:py2, px1:px2])


def open_session(client: TestClient, **params: object) -> str:
    response = client.post("/v1/sessions", params=params)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/sessions/{body['id']}"
    assert body["frames_url"] == f"/v1/sessions/{body['id']}/frames"
    return str(body["id"])


def send(client: TestClient, session: str, data: bytes, name: str = "frame.jpg"):
    return client.post(
        f"/v1/sessions/{session}/frames", files={"image": (name, data, "image/jpeg")}
    )


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    message = body["error"]["message"]
    assert isinstance(message, str) and message and "\n" not in message
    return str(message)


def iou(a: list[float], b: tuple[float, float, float, float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


# -- tracking across frames --------------------------------------------------------------


def test_a_moving_face_keeps_its_track_and_the_fused_estimate_is_narrower(patch) -> None:
    frames = 10
    with live_client() as (client, _, clock):
        session = open_session(client)
        answers = []
        for index in range(frames):
            response = send(client, session, frame_jpeg(patch, index))
            assert response.status_code == 200, response.text
            answers.append(response.json())
            clock.now += 0.1
        summary = client.delete(f"/v1/sessions/{session}")
        assert summary.status_code == 200, summary.text
        gone = client.get(f"/v1/sessions/{session}")
        metrics = client.get("/metrics").text

    for index, answer in enumerate(answers):
        assert answer["session"] == session and answer["frame"] == index
        assert answer["time"] == pytest.approx(0.1 * index)
        assert (answer["width"], answer["height"]) == SIZE and answer["detected"]
        assert answer["ended"] == []
        assert len(answer["faces"]) == 1
        face = answer["faces"][0]
        assert face["detected"] and iou(face["box"], true_box(index)) > 0.5
        assert face["age"]["value"] > 0 and face["gender"]["label"] in ("female", "male")
        # an id once confirmed (3 detections, the video command's default), then the same
        assert face["track"] == (None if index < 2 else 1)
    # The frames are near copies of one face: the fusion reads their agreement as one
    # error repeated (rho near 1), so the fused interval stays about one frame's width,
    # narrower than the frames' own on average (test_interval_narrows_... for more).
    fused = answers[-1]["faces"][0]["fused"]["age"]
    assert fused["std"] < np.mean([a["faces"][0]["age"]["std"] for a in answers])
    assert answers[-1]["faces"][0]["fused"]["gender"]["label"] == "female"

    body = summary.json()
    assert body["id"] == session and body["frames"] == frames
    assert [p["track"] for p in body["people"]] == [1]
    person = body["people"][0]
    assert person["frames_seen"] == frames and person["thumbnail"] is None
    assert person["age"] == answers[-1]["faces"][0]["fused"]["age"]
    assert_error(gone, 404, "session_not_found")
    assert "agegender_live_frames_total 10.0" in metrics
    assert "agegender_live_sessions 0.0" in metrics


def test_interval_narrows_as_independent_frames_arrive(
    patch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session keeps one track's evidence across requests: with per-frame age
    distributions whose errors are independent (stand-ins around 35 years in place of the
    models' outputs; the detector and tracker are real), its fused interval narrows."""
    from agegender import people

    rng = np.random.default_rng(3)
    real = people.face_distributions

    def independent(estimator: Estimator, prepared: object) -> dict[str, NDArray[np.float64]]:
        out = real(estimator, prepared)
        values = estimator.tasks["age"].support.values
        rows = []
        for _ in out["age"]:
            g = np.exp(-0.5 * ((values - 35 - rng.normal(0, 6)) / 6) ** 2)
            rows.append(g / g.sum())
        return {**out, "age": np.array(rows)}

    monkeypatch.setattr(people, "face_distributions", independent)
    with live_client() as (client, _, _):
        session = open_session(client, min_hits=1)
        widths = []
        for index in range(10):
            face = send(client, session, frame_jpeg(patch, index)).json()["faces"][0]
            assert face["track"] == 1
            low, high = face["fused"]["age"]["interval"]
            widths.append(high - low)
    # one run: 30.6 at the first frame, 16-18 from the fifth on
    assert max(widths[-3:]) < 0.75 * widths[0], widths


def test_a_face_that_leaves_is_reported_when_its_track_ends(patch) -> None:
    blank = frame_jpeg(None, 0)
    with live_client() as (client, _, clock):
        session = open_session(client, max_lost=0.4, min_hits=2)
        for index in range(3):
            assert send(client, session, frame_jpeg(patch, index)).status_code == 200
        ended = []
        for _ in range(4):  # the clock 0.2 s a frame: ends once unseen for more than 0.4 s
            clock.now += 0.2
            answer = send(client, session, blank).json()
            ended.extend(answer["ended"])
        info = client.get(f"/v1/sessions/{session}").json()
    assert [p["track"] for p in ended] == [1]
    assert ended[0]["frames_seen"] == 3
    assert info["frames"] == 7 and [p["track"] for p in info["people"]] == [1]
    assert info["options"] == {"detect_every": 1, "min_hits": 2, "max_lost": 0.4}


# -- errors keep the session ---------------------------------------------------------------


def test_bad_frames_are_one_line_errors_and_keep_the_session(patch) -> None:
    with live_client() as (client, _, _clock):
        session = open_session(client, min_hits=1)
        first = send(client, session, frame_jpeg(patch, 0)).json()
        assert first["faces"][0]["track"] == 1
        truncated = frame_jpeg(patch, 1)[:2000]
        assert_error(send(client, session, truncated), 422, "invalid_image")
        assert_error(send(client, session, b"not an image at all"), 415, "unsupported_image")
        assert_error(
            client.post(f"/v1/sessions/{session}/frames", content=b""), 400, "missing_image"
        )
        after = send(client, session, frame_jpeg(patch, 1)).json()
    # the bad frames did not count: the next good one is frame 1 of the same track
    assert after["frame"] == 1 and after["faces"][0]["track"] == 1
    assert after["faces"][0]["fused"]["age"] is not None


def test_a_frame_while_the_previous_one_runs_is_refused(patch) -> None:
    with live_client() as (client, service, _):
        session = open_session(client)
        live = service.sessions.get(session)
        live.busy.acquire()  # as a worker does while it tracks a frame
        try:
            message = assert_error(send(client, session, frame_jpeg(patch, 0)), 409, "session_busy")
        finally:
            live.busy.release()
        assert "previous frame" in message
        assert send(client, session, frame_jpeg(patch, 0)).status_code == 200


def test_unknown_session_and_bad_options() -> None:
    with live_client() as (client, _, _):
        message = assert_error(
            client.post("/v1/sessions/nope/frames", content=b"x"), 404, "session_not_found"
        )
        assert "no session nope" in message
        assert_error(client.delete("/v1/sessions/nope"), 404, "session_not_found")
        assert_error(client.post("/v1/sessions", params={"detect_every": 0}), 400, "invalid_option")
        assert_error(client.post("/v1/sessions", params={"detector": "x"}), 400, "invalid_option")


def test_sessions_need_the_api_key() -> None:
    with live_client(api_key="k") as (client, _, _):
        assert_error(client.post("/v1/sessions"), 401, "unauthorized")
        response = client.post("/v1/sessions", headers={"X-API-Key": "k"})
        assert response.status_code == 201


# -- expiry and the cap ------------------------------------------------------------------


def test_idle_sessions_expire(patch) -> None:
    with live_client(session_idle_s=30) as (client, _, clock):
        session = open_session(client)
        clock.now += 29
        assert send(client, session, frame_jpeg(patch, 0)).status_code == 200
        clock.now += 29  # idle time counts from the last frame
        assert client.get(f"/v1/sessions/{session}").status_code == 200
        clock.now += 31
        message = assert_error(
            send(client, session, frame_jpeg(patch, 1)), 404, "session_not_found"
        )
        assert "expired after 30 s" in message
        assert_error(client.delete(f"/v1/sessions/{session}"), 404, "session_not_found")


def test_sessions_are_capped(patch) -> None:
    with live_client(max_sessions=2, session_idle_s=60) as (client, _, clock):
        first = open_session(client)
        clock.now += 10
        second = open_session(client)
        refused = client.post("/v1/sessions")
        message = assert_error(refused, 429, "too_many_sessions")
        assert "limit 2" in message
        assert refused.headers["retry-after"] == "50"  # when the first one would expire
        assert client.delete(f"/v1/sessions/{first}").status_code == 200
        third = open_session(client)
        assert_error(client.post("/v1/sessions"), 429, "too_many_sessions")
        clock.now += 61  # both idle: expired, so new ones fit
        fourth = open_session(client)
        assert len({first, second, third, fourth}) == 4
        assert_error(client.get(f"/v1/sessions/{second}"), 404, "session_not_found")
