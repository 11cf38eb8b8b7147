"""`agegender serve` in production: defects found by a third audit, each reproduced first.

Connections that send nothing, or half a request head, were never timed out: each counted
against uvicorn's connection guard, and a few dozen (72 with --max-pending 1, 320 with
the defaults) made every answer, /healthz included, a plain-text 503 for as long as they
stayed open. A scalar query option given twice (?tta=true&tta=false) was taken as its
last value in silence. The real command on loopback; slowness is the test's own (idle
sockets), never the machine's speed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from serve_support import ASTRONAUT, shared_estimator

from agegender.serve import ServeSettings, create_app

PNG = ASTRONAUT.read_bytes()
HANG_GUARD_S = 120  # far beyond the 1 s deadline under test: only a hang reaches it


def start_command(*options: str) -> tuple[subprocess.Popen[str], str, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=str(src))
    command = [sys.executable, "-m", "agegender", "serve", "--port", str(port), *options]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # models load and workers warm
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the server did not become ready"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url, port
        except httpx.HTTPError:
            time.sleep(0.2)


def test_idle_and_half_sent_connections_do_not_lock_the_server_out() -> None:
    # --max-pending 1: uvicorn's guard is 8 * 1 + 64 = 72 connections.
    process, url, port = start_command("--timeout", "1", "--max-pending", "1", "--no-batching")
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(72)]
        half = socket.create_connection(("127.0.0.1", port))
        idle.append(half)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow")  # never finished
        half.settimeout(HANG_GUARD_S)
        answer = half.recv(4096)  # before: nothing, ever
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert b"application/json" in head and b'"code": "timeout"' in body, answer
        silent = idle[0]
        silent.settimeout(HANG_GUARD_S)
        assert silent.recv(4096) == b""  # closed: it sent nothing, nothing to answer
        deadline = time.monotonic() + HANG_GUARD_S
        while True:  # every idle one is closed by now or very soon
            health = httpx.get(f"{url}/healthz", timeout=30)
            if health.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text
        answer = httpx.post(f"{url}/v1/estimate", files={"image": ("a.png", PNG)}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["faces"]) == 1
    finally:
        for sock in idle:
            sock.close()
        process.terminate()
        process.wait(timeout=30)


def test_a_request_in_progress_is_not_cut_by_the_head_deadline() -> None:
    """A request whose head is in is the app's to time out (its 504), not cut by the head
    deadline; a keep-alive client's requests go on."""
    process, url, port = start_command("--timeout", "1", "--no-batching")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                + f"Content-Length: {len(PNG)}\r\n\r\n".encode()
                + PNG[:1000]
            )
            sock.settimeout(HANG_GUARD_S)
            answer = sock.recv(4096)  # the app's own timeout for the stalled upload
            assert answer.startswith(b"HTTP/1.1 504"), answer
        with httpx.Client(timeout=60) as client:
            for _ in range(2):
                answer = client.post(f"{url}/v1/estimate", files={"image": ("a.png", PNG)})
                assert answer.status_code == 200 and len(answer.json()["faces"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_scalar_option_given_twice_is_refused_not_the_last_one_taken() -> None:
    app = create_app(ServeSettings(), estimator=shared_estimator())
    files = {"image": ("a.png", PNG, "image/png")}
    with TestClient(app) as client:
        for path, query in (
            ("/v1/estimate", "tta=true&tta=false"),
            ("/v1/estimate", "min_face=10&min_face=400"),
            ("/v1/estimate", "detector=dlib&detector=haar"),
            ("/v1/sessions", "detect_every=1&detect_every=5"),
            ("/v1/sessions", "max_lost=1&max_lost=2"),
        ):
            answer = client.post(f"{path}?{query}", files=files)
            assert answer.status_code == 400, (query, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "invalid_option", error
            name = query.split("=")[0]
            assert f"'{name}'" in error["message"] and "2 times" in error["message"], error
        # age_threshold stays repeatable (one P(age >= t) per value)
        answer = client.post("/v1/estimate?age_threshold=18&age_threshold=21", files=files)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["faces"][0]["age"]["p_at_least"]) == {"18", "21"}
