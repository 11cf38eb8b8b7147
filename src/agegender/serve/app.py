"""The HTTP service: `create_app(settings)` builds a FastAPI app around one Estimator.

Models are loaded once, when the app is created. A request to /v1/estimate is admitted
only while fewer than `max_pending` are in flight (503 otherwise), its body is read into
memory under a size limit, decoded and prepared (detect + crop) in a worker pool, and
its faces join the next model batch (see `batching.py`); the whole request runs under
a timeout. Every error answer is `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, images
from ..errors import AgegenderError, ImageTooLargeError, UnsupportedImageError
from ..faces import DETECTORS
from ..pipeline import Estimator, PreparedImage
from ..results import Face, ImageResult
from .errors import ApiError
from .metrics import Metrics
from .request_batching import Batcher
from .uploads import extract_image, read_body

MAX_LABEL = 200
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
ESTIMATE_ERRORS = {
    400: "missing image, bad option, malformed multipart",
    401: "API key missing or wrong",
    413: "body or pixel count over the limit",
    415: "not an image format the server reads",
    422: "truncated or corrupt image",
    503: "too many requests in flight (Retry-After)",
    504: "the request took longer than the timeout",
}


@dataclass
class ServeSettings:
    """Everything `agegender serve` can set; the defaults are the safe ones."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # every /v1 call and /metrics need it when set
    max_body_bytes: int = 20 << 20
    pixel_limit: int = images.DEFAULT_PIXEL_LIMIT
    batching: bool = True
    batch_window_ms: float = 20.0  # waited only while other requests are on their way
    max_batch: int = 16
    max_pending: int = 32  # estimate requests in flight before 503
    request_timeout_s: float = 30.0
    prepare_workers: int = 2
    retry_after_s: int = 1


@dataclass(frozen=True)
class EstimateOptions:
    """Per-request options; `batch_key` holds those that change the model pass."""

    detector: str
    min_face: int
    tta: bool
    age_threshold: float | None

    @property
    def batch_key(self) -> Hashable:
        return (self.tta, self.age_threshold)


class Service:
    """The app's state: the estimator, detectors by name, worker pools, batcher, metrics."""

    def __init__(self, settings: ServeSettings, estimator: Estimator) -> None:
        self.settings = settings
        self.estimator = estimator
        self.metrics = Metrics()
        self.detectors = {estimator.detector.name: estimator.detector}
        self._detector_lock = asyncio.Lock()
        self.prepare_pool = ThreadPoolExecutor(
            max(1, settings.prepare_workers), thread_name_prefix="agegender-prepare"
        )
        # One model worker: ONNX Runtime already uses every core inside one run.
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="agegender-model")
        self.batcher: Batcher[PreparedImage, list[Face]] = Batcher(
            self._run_batch,
            self.model_pool,
            window_s=settings.batch_window_ms / 1000 if settings.batching else 0.0,
            max_batch=settings.max_batch if settings.batching else 1,
            on_batch=self.metrics.batch_size.observe,
            arriving=lambda: self.preparing,
        )
        self.in_flight = 0
        self.preparing = 0  # admitted, not yet handed to the batcher
        self.ready = False

    def _run_batch(self, key: Hashable, prepared: list[PreparedImage]) -> list[list[Face]]:
        tta, age_threshold = cast(tuple[bool | None, float | None], key)
        thresholds = None if age_threshold is None else (age_threshold,)
        return self.estimator.estimate(prepared, tta=tta, age_thresholds=thresholds)

    async def detector(self, name: str) -> Any:
        """A detector backend by name, created once on first use."""
        if name not in self.detectors:
            async with self._detector_lock:
                if name not in self.detectors:
                    self.detectors[name] = await asyncio.get_running_loop().run_in_executor(
                        self.prepare_pool, self.estimator.make_detector, name
                    )
        return self.detectors[name]

    def decode_and_prepare(
        self, data: bytes, label: str, detector: Any, min_face: int
    ) -> PreparedImage:
        """Decode in memory and detect + crop (runs in the prepare pool)."""
        rgb = images.decode_bytes(data, pixel_limit=self.settings.pixel_limit, name=label)
        return self.estimator.prepare(rgb, label, detector=detector, min_face=min_face)

    async def estimate(self, request: Request, options: EstimateOptions) -> dict[str, Any]:
        self.preparing += 1
        try:
            prepared = await self._prepare(request, options)
        finally:
            self.preparing -= 1
        faces = await self.batcher.submit(options.batch_key, prepared)
        self.metrics.images.inc()
        self.metrics.faces.inc(len(faces))
        return ImageResult(prepared.name, faces, None, prepared.width, prepared.height).to_dict()

    async def _prepare(self, request: Request, options: EstimateOptions) -> PreparedImage:
        body = await read_body(request, self.settings.max_body_bytes)
        upload = extract_image(body, request.headers.get("content-type"))
        del body
        label = _label(upload.filename)
        detector = await self.detector(options.detector)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.prepare_pool,
                self.decode_and_prepare,
                upload.data,
                label,
                detector,
                options.min_face,
            )
        except ImageTooLargeError as error:
            raise ApiError(413, "image_too_large", str(error)) from None
        except UnsupportedImageError as error:
            raise ApiError(415, "unsupported_image", str(error)) from None
        except AgegenderError as error:
            raise ApiError(422, "invalid_image", str(error)) from None

    def models(self) -> dict[str, Any]:
        """The loaded cards by role, with where each came from (never a server path)."""
        out: dict[str, Any] = {}
        for role, card in self.estimator.cards.items():
            source = {
                k: v
                for k, v in (
                    ("package", card.source.package),
                    ("resource", card.source.resource),
                    ("url", card.source.url),
                    ("file", card.source.file),
                    ("bytes", card.source.bytes),
                    ("sha256", card.source.sha256),
                )
                if v is not None
            }
            out[role] = {
                "id": card.id,
                "task": card.task,
                "title": card.title,
                "license": card.license,
                "source": source,
                "input": {
                    "size": [card.input.height, card.input.width],
                    "channels": card.input.channels,
                    "layout": card.input.layout,
                },
                "crop": card.crop.kind,
            }
        return {
            "preset": self.estimator.preset,
            "detector": self.estimator.detector.name,
            "detectors": list(DETECTORS),
            "tta": self.estimator.tta,
            "batching": self.settings.batching,
            "models": out,
        }


def _label(filename: str | None) -> str:
    """The name a result is reported under: the client's file name, printable, short."""
    if not filename:
        return "<upload>"
    clean = "".join(c for c in filename if c.isprintable())
    return clean[:MAX_LABEL] or "<upload>"


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(
    settings: ServeSettings | None = None, estimator: Estimator | None = None
) -> FastAPI:
    """The service's app; loads the default models now unless an `estimator` is given."""
    settings = settings or ServeSettings()
    # The models and detector are the Estimator's (the command builds it from the same
    # options as `predict`); the settings are the server's own.
    estimator = estimator or Estimator()
    service = Service(settings, estimator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            await service.batcher.stop()
            service.prepare_pool.shutdown(wait=False, cancel_futures=True)
            service.model_pool.shutdown(wait=False, cancel_futures=True)

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
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # The traceback goes to the server's log (Starlette re-raises after answering).
        return _error_response(
            ApiError(500, "internal", f"internal error ({type(error).__name__})")
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in error.errors()
        )
        return _error_response(ApiError(400, "invalid_option", problems or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(error.status_code, "http_error")
        return _error_response(
            ApiError(error.status_code, code, str(error.detail), dict(error.headers or {}))
        )

    async def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if given is None and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if given is None or not hmac.compare_digest(
            given.encode("utf-8"), settings.api_key.encode("utf-8")
        ):
            raise ApiError(
                401,
                "unauthorized",
                "this server needs an API key: "
                "send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )

    keyed = [Depends(require_key)]

    @app.post(
        "/v1/estimate",
        dependencies=keyed,
        summary="Age and gender of every face in one image",
        response_description="The same JSON as `agegender predict --json` gives for one image",
        responses={
            status: {
                "description": why,
                "content": {"application/json": {"schema": _ERROR_SCHEMA}},
            }
            for status, why in ESTIMATE_ERRORS.items()
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"image": {"type": "string", "format": "binary"}},
                            "required": ["image"],
                        }
                    },
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def estimate(
        request: Request,
        tta: bool | None = Query(None, description="average with the mirror image"),
        detector: str | None = Query(None, description=f"one of {', '.join(DETECTORS)}"),
        min_face: int | None = Query(None, ge=0, le=100_000, description="smallest face side, px"),
        age_threshold: float | None = Query(
            None, ge=0, le=150, description="adds P(age >= t) to each face's age"
        ),
    ) -> Any:
        if detector is not None and detector not in DETECTORS:
            raise ApiError(
                400,
                "invalid_option",
                f"detector {detector!r}: choose one of {', '.join(DETECTORS)}",
            )
        if age_threshold is not None and not math.isfinite(age_threshold):
            raise ApiError(400, "invalid_option", "age_threshold must be a finite number")
        options = EstimateOptions(
            detector=detector or estimator.detector.name,
            min_face=estimator.min_face if min_face is None else min_face,
            tta=estimator.tta if tta is None else tta,
            age_threshold=age_threshold,
        )
        if service.in_flight >= settings.max_pending:
            service.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                503,
                "queue_full",
                f"{service.in_flight} requests are in flight "
                f"(limit {settings.max_pending}); retry later",
                {"Retry-After": str(settings.retry_after_s)},
            )
        service.in_flight += 1
        service.metrics.queue_depth.set(service.in_flight)
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                return await service.estimate(request, options)
        except TimeoutError:
            service.metrics.rejected.labels("timeout").inc()
            raise ApiError(
                504, "timeout", f"no answer within {settings.request_timeout_s:g} s"
            ) from None
        finally:
            service.in_flight -= 1
            service.metrics.queue_depth.set(service.in_flight)

    @app.get(
        "/v1/models", dependencies=keyed, summary="The loaded model cards and where they came from"
    )
    async def models() -> dict[str, Any]:
        return service.models()

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models are loaded and requests are being taken")
    async def readyz() -> Any:
        if not service.ready:
            raise ApiError(503, "not_ready", "the server is starting or stopping")
        return {"status": "ready", "models": [c.id for c in estimator.cards.values()]}

    @app.get("/metrics", dependencies=keyed, summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        service.metrics.batch_waiting.set(service.batcher.waiting)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    _mount_docs(app)
    static = resources.files("agegender.serve").joinpath("static")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(static.joinpath("index.html").read_text("utf-8"))

    app.mount("/static", StaticFiles(packages=[("agegender.serve", "static")]), name="static")
    return app


def _mount_docs(app: FastAPI) -> None:
    """OpenAPI's Swagger UI at /docs from the `swagger-ui-bundle-v2` package's files, so
    it works offline; FastAPI's default (assets from a CDN) when that is missing."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        app.get("/docs", include_in_schema=False)(
            lambda: get_swagger_ui_html(openapi_url=app.openapi_url or "", title=app.title)
        )
        return
    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _MetricsMiddleware:
    """Counts every HTTP answer by route template (not raw path) and times it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(template, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
