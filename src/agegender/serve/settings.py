"""The server's own settings (limits, batching, workers); the Estimator's options are not
here: its `EstimatorConfig` is the one place for them (pixel limit included)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """Everything `agegender serve` can set; the defaults are the safe ones."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # every /v1 call and /metrics need it when set
    max_body_bytes: int = 20 << 20
    batching: bool = True
    batch_window_ms: float = 20.0  # waited only while other requests are on their way
    max_batch: int = 16
    max_pending: int = 32  # estimate requests in flight before 503
    request_timeout_s: float = 30.0
    prepare_workers: int = 2
    retry_after_s: int = 1
    max_sessions: int = 8  # live (frame-by-frame) sessions at once before 429
    session_idle_s: float = 60.0  # a live session without a frame for this long ends
