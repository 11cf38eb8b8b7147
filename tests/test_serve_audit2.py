"""`agegender serve`: defects found by a second audit, each reproduced first.

A DELETE while a frame of the session was on its way held a prepare worker waiting for
that frame, whose own job was queued behind it (every request stalled until the frame
timed out); frames of another size than the session's; query parameters on a frame; the
OpenAPI document against the answers (no 422, the API key, /metrics as text); live
frames counted as images. Real models, a real server on loopback."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from serve_support import ASTRONAUT, running_app, shared_estimator

from agegender.serve import ServeSettings, create_app
from agegender.serve.routes import sessions as session_routes

PNG = ASTRONAUT.read_bytes()


def png_of(size: int) -> bytes:
    out = io.BytesIO()
    Image.open(ASTRONAUT).convert("RGB").resize((size, size)).save(out, format="PNG")
    return out.getvalue()


def test_delete_while_a_frame_is_on_its_way_stalls_nothing(monkeypatch) -> None:
    """One prepare worker, kept busy. The frame has found its session and is reading its
    upload when DELETE comes: DELETE must not queue a job that waits for the frame (the
    frame's own job would queue behind it). The frame gets a 404 (the session ended) and
    DELETE its summary, both as soon as the worker is free."""
    gate = threading.Event()
    real = session_routes.read_image

    async def slow_upload(*args: object, **kwargs: object) -> object:
        await asyncio.to_thread(gate.wait, 60)  # the rest of the body is on its way
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(session_routes, "read_image", slow_upload)
    settings = ServeSettings(prepare_workers=1, request_timeout_s=60)
    with running_app(settings) as (url, app), ThreadPoolExecutor(3) as pool:
        service = app.state.service
        session = httpx.post(f"{url}/v1/sessions", params={"min_hits": 1}).json()["id"]
        blocker = threading.Event()
        service.prepare_pool.submit(blocker.wait, 60)  # the only worker is busy
        frame = pool.submit(
            httpx.post,
            f"{url}/v1/sessions/{session}/frames",
            files={"image": ("f.png", PNG, "image/png")},
            timeout=120,
        )
        deleted = pool.submit(httpx.delete, f"{url}/v1/sessions/{session}", timeout=120)
        while len(service.sessions):  # until DELETE has ended it
            threading.Event().wait(0.01)
        gate.set()  # the frame's upload completes: it reaches the tracker's lock
        frame_answer = frame.result(timeout=120)
        blocker.set()
        assert frame_answer.status_code == 404, frame_answer.text
        assert frame_answer.json()["error"]["code"] == "session_not_found"
        assert deleted.result(timeout=120).status_code == 200
        after = httpx.post(
            f"{url}/v1/estimate", files={"image": ("a.png", PNG, "image/png")}, timeout=120
        )
        assert after.status_code == 200


def test_a_frame_of_another_size_is_refused_and_the_session_goes_on() -> None:
    app = create_app(ServeSettings(), estimator=shared_estimator().derive(upsample=0))
    with TestClient(app) as client:
        session = client.post("/v1/sessions", params={"min_hits": 1}).json()["id"]
        frames = f"/v1/sessions/{session}/frames"
        first = client.post(frames, files={"image": ("a.png", png_of(512), "image/png")})
        assert first.status_code == 200 and first.json()["faces"]
        other = client.post(frames, files={"image": ("b.png", png_of(128), "image/png")})
        assert other.status_code == 400, other.text
        error = other.json()["error"]
        assert error["code"] == "frame_size_changed" and "128x128" in error["message"]
        again = client.post(frames, files={"image": ("c.png", png_of(512), "image/png")})
        assert again.status_code == 200
        box = again.json()["faces"][0]["box"]
        assert 0 <= box[0] < box[2] <= 512 and again.json()["faces"][0]["track"] == 1
        people = client.delete(f"/v1/sessions/{session}").json()["people"]
        assert [p["track"] for p in people] == [1]  # one face, one person


def test_a_frame_takes_no_query_parameter() -> None:
    app = create_app(ServeSettings(), estimator=shared_estimator())
    with TestClient(app) as client:
        session = client.post("/v1/sessions").json()["id"]
        answer = client.post(
            f"/v1/sessions/{session}/frames",
            params={"age_threshold": 18},
            files={"image": ("a.png", PNG, "image/png")},
        )
        assert answer.status_code == 400
        assert "'age_threshold'" in answer.json()["error"]["message"]


def test_the_openapi_document_says_what_the_server_answers() -> None:
    """With an API key: every operation that lists the key's security scheme answers 401
    without it, the others do not; no operation lists FastAPI's own 422 (validation
    errors are 400s); /metrics is text."""
    app = create_app(ServeSettings(api_key="k"), estimator=shared_estimator())
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()
        assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                validation = operation["responses"].get("422", {})
                assert "HTTPValidationError" not in str(validation), (path, method)
                concrete = path.replace("{session_id}", "nosuch")
                answer = client.request(method.upper(), concrete)
                guarded = "security" in operation
                assert (answer.status_code == 401) == guarded, (path, method, answer.text)
                assert ("401" in operation["responses"]) == guarded, (path, method)
        metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert list(metrics) == ["text/plain"]
        text = client.get("/metrics", headers={"X-API-Key": "k"})
        assert text.headers["content-type"].startswith("text/plain")


def test_live_frames_count_as_images_processed() -> None:
    app = create_app(ServeSettings(), estimator=shared_estimator())

    def images(client: TestClient) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("agegender_images_processed_total "):
                return float(line.split()[1])
        raise AssertionError("no agegender_images_processed_total")

    with TestClient(app) as client:
        before = images(client)
        session = client.post("/v1/sessions").json()["id"]
        for _ in range(2):
            frame = client.post(
                f"/v1/sessions/{session}/frames", files={"image": ("a.png", PNG, "image/png")}
            )
            assert frame.status_code == 200
        assert images(client) - before == 2
    assert np.isfinite(before)
