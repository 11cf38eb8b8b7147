"""The HTTP service (``agegender serve``): API, metrics and the web page.

Sits on top of the pipeline; nothing below imports it. Needs the ``serve`` extras
(FastAPI, uvicorn, python-multipart, prometheus-client).

    app.py               create_app: lifespan, error handlers, routers, middleware
    settings.py          ServeSettings (limits, batching, workers)
    service.py           Service: the estimator and its derived estimators, worker pools,
                         warm-up, the one `estimate(upload, options)` a request calls
    admission.py         in-flight limit (503), request timeout (504), their metrics
    deps.py              dependencies: the service, the API key, the estimate options
    routes/              estimate, sessions (live), models (+ info), health (+ metrics),
                         pages (+ docs)
    sessions.py          live sessions: one PeopleTracker per client stream, capped, expired
    request_batching.py  Batcher: faces of concurrent requests share model runs
    uploads.py           size-bounded body read, multipart parsed in memory
    errors.py            ApiError, the JSON error body and the exception handlers
    middleware.py        request counts and latency by route template
    metrics.py           the Prometheus registry of one app
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import ServeSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # create_app pulls in FastAPI and the pipeline: imported when first asked for.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
