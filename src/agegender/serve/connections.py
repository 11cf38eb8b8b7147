"""A deadline for each request's head (request line and headers) on uvicorn's connections.

uvicorn times out nothing before a request's head is in: a connection that sends
nothing, or half a request line, stays open for as long as the client keeps it. Every
such connection counts against uvicorn's `limit_concurrency`, so a few hundred idle
sockets made the whole server (/healthz included) answer a plain-text 503 for as long
as they stayed, and the app's own `--timeout` never saw them. Here a connection must
deliver each request's head within the request timeout, counted from the connection (or
the previous answer): a partial head gets a 408 with the JSON error body, a connection
that sent nothing since is closed. A request whose head is in is the app's to time out.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class _HeadDeadline:
    """Mixed into uvicorn's HTTP protocol class (h11 or httptools: both keep `cycle`,
    `transport`, `loop` and call `on_response_complete`)."""

    head_timeout_s: float = 30.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0  # bytes received since the connection opened or the last answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        self._head_bytes = 0
        self._arm_head_deadline()  # before: a pipelined request may start in there
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        me: Any = self
        self._head_timer = me.loop.call_later(self.head_timeout_s, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        me: Any = self
        cycle = me.cycle
        if me.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # closed already, or a request is being served (the app's timeout)
        if self._head_bytes:
            me.transport.write(request_timeout_answer(self.head_timeout_s))
        me.transport.close()


def request_timeout_answer(seconds: float) -> bytes:
    """The raw 408 for a request whose head did not arrive in time."""
    body = json.dumps(
        {
            "error": {
                "code": "timeout",
                "message": f"the request's headers did not arrive within {seconds:g} s",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def head_deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (`Config(http=...)`) whose connections must send each
    request's head within `seconds`."""
    return type(
        "HeadDeadlineProtocol",
        (_HeadDeadline, AutoHTTPProtocol),
        {"head_timeout_s": float(seconds)},
    )
