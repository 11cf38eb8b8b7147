"""`create_app(settings, estimator)`: the FastAPI app around one Estimator.

Thin on purpose: the lifespan starts and stops the `Service` (which warms every worker
before /readyz says ready), the handlers make every error `{"error": {"code",
"message"}}`, and the routers (`routes/`) carry the endpoints. Models are loaded once,
when the estimator is made (by the caller, or here with the default preset).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .. import __version__
from ..pipeline import Estimator
from .errors import error_responses, install_handlers
from .middleware import MetricsMiddleware
from .routes import ROUTERS
from .routes.pages import mount_files
from .service import Service
from .settings import ServeSettings


def create_app(
    settings: ServeSettings | None = None, estimator: Estimator | None = None
) -> FastAPI:
    """The service's app; loads the default models now unless an `estimator` is given.

    The estimator's configuration (detector, alignment, pixel limit, ...) is the server's
    default for every request; the settings are the server's own (limits, batching).
    """
    service = Service(settings or ServeSettings(), estimator or Estimator())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await service.start()
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="agegender",
        version=__version__,
        description="Age and gender of every face in an image. Errors: "
        '`{"error": {"code", "message"}}`.',
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    mount_files(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made true to what the server answers: not FastAPI's own 422 (a
    request that fails validation is a 400 `invalid_option` with the error body; a 422 of
    ours, a corrupt image, stays), and with an API key
    set, the key as a security scheme (so /docs can send it) and a 401 on every route
    that needs it."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    keyed = app.state.service.settings.api_key is not None
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in str(responses.get("422", "")):  # FastAPI's, not ours
                del responses["422"]
            if keyed and _needs_key(path):
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation["responses"].setdefault(
                    "401", error_responses({401: "API key missing or wrong"})[401]
                )
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if keyed:
        doc.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    app.openapi_schema = doc
    return doc


def _needs_key(path: str) -> bool:
    """The routes behind the API key (deps.require_key): every /v1 route and /metrics
    (tests/test_schemas.py checks this against the answers)."""
    return path.startswith("/v1/") or path == "/metrics"
