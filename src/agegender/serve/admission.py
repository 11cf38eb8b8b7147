"""Admission of estimate requests: at most `max_pending` in flight (503 with Retry-After
beyond), each under the request timeout (504); both counted in the metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import ApiError
from .metrics import Metrics


class Admission:
    """Counts the requests in flight; `admit()` wraps one request's whole work.

    `timeout_s` is read when a request is admitted (None: no limit), so a running app can
    be given another one.
    """

    def __init__(
        self, max_pending: int, timeout_s: float | None, retry_after_s: int, metrics: Metrics
    ) -> None:
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.in_flight = 0

    def _set_depth(self, depth: int) -> None:
        self.in_flight = depth
        self.metrics.queue_depth.set(depth)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Admit one request or refuse it (503); time its work out after `timeout_s` (504)."""
        if self.in_flight >= self.max_pending:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                503,
                "queue_full",
                f"{self.in_flight} requests are in flight (limit {self.max_pending}); "
                f"retry in {self.retry_after_s} s",
                {"Retry-After": str(self.retry_after_s)},
            )
        timeout_s = self.timeout_s
        self._set_depth(self.in_flight + 1)
        try:
            async with asyncio.timeout(timeout_s):
                yield
        except TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            raise ApiError(
                504,
                "timeout",
                f"no answer within {timeout_s:g} s; retry, or send a smaller image",
            ) from None
        finally:
            self._set_depth(self.in_flight - 1)
