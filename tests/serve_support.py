"""Helpers shared by the serve tests: one loaded Estimator, a real server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from agegender.pipeline import Estimator
from agegender.serve import ServeSettings, create_app

DATA = Path(__file__).parent / "data"
ASTRONAUT = DATA / "astronaut.png"


@lru_cache(maxsize=1)
def shared_estimator() -> Estimator:
    """The default preset's embedded CC0 models, loaded once for all serve tests."""
    return Estimator()


@contextmanager
def running_server(
    settings: ServeSettings | None = None, estimator: Estimator | None = None
) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 and a free port, in a thread; yields its URL."""
    with running_app(settings, estimator) as (url, _):
        yield url


@contextmanager
def running_app(
    settings: ServeSettings | None = None, estimator: Estimator | None = None
) -> Iterator[tuple[str, FastAPI]]:
    """As `running_server`, and the app (its `state.service` is the live Service)."""
    app = create_app(settings or ServeSettings(), estimator=estimator or shared_estimator())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # startup warms every worker: generous on a busy box
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
