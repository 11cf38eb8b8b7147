"""`create_app(settings, estimator)`: the FastAPI app around one Estimator.

Thin on purpose: the lifespan starts and stops the `Service` (which warms every worker
before /readyz says ready), the handlers make every error `{"error": {"code",
"message"}}`, and the routers (`routes/`) carry the endpoints. Models are loaded once,
when the estimator is made (by the caller, or here with the default preset).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..pipeline import Estimator
from .errors import install_handlers
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
    return app
