"""Prometheus metrics of one app: requests by route and status, latency, faces, queue.

Built on `prometheus_client` (its text exposition format and histogram buckets are the
reference implementation) with a registry per app, so two apps in one process (tests)
never share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The `_created` timestamp series double every counter's lines and no dashboard reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """The counters the service updates; `render()` gives the /metrics answer."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agegender_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agegender_http_request_duration_seconds",
            "Time from request start to the answer, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.faces = Counter(
            "agegender_faces_processed",
            "Faces estimated (age and gender) across all requests.",
            registry=self.registry,
        )
        self.images = Counter(
            "agegender_images_processed",
            "Images that went through detection and estimation.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "agegender_queue_depth",
            "Estimate requests admitted and not yet answered (decoding, detecting, "
            "waiting for a batch or running).",
            registry=self.registry,
        )
        self.batch_waiting = Gauge(
            "agegender_batch_waiting",
            "Prepared images waiting for the next model batch.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "agegender_batch_images",
            "Images per model batch (1 when batching is off).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "agegender_rejected",
            "Estimate requests refused before any work, by reason.",
            ["reason"],
            registry=self.registry,
        )

        self.live_sessions = Gauge(
            "agegender_live_sessions",
            "Live (frame-by-frame) tracking sessions open.",
            registry=self.registry,
        )
        self.live_frames = Counter(
            "agegender_live_frames",
            "Frames tracked in live sessions.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)
