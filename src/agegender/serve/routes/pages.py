"""The web page (/ and /static) and the OpenAPI docs (/docs), all served from local files."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)
_STATIC = resources.files("agegender.serve").joinpath("static")


@router.api_route("/", methods=["GET", "HEAD"])
async def page() -> HTMLResponse:
    return HTMLResponse(_STATIC.joinpath("index.html").read_text("utf-8"))


def _swagger_assets() -> str | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI from the `swagger-ui-bundle` package's files, so it works offline;
    FastAPI's default (assets from a CDN) when that package is missing."""
    app: FastAPI = request.app
    title = f"{app.title} API"
    openapi_url = app.openapi_url or "/openapi.json"
    if _swagger_assets() is None:
        return get_swagger_ui_html(openapi_url=openapi_url, title=title)
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    )


def mount_files(app: FastAPI) -> None:
    """The page's assets at /static and Swagger UI's at /docs/assets."""
    app.mount("/static", StaticFiles(packages=[("agegender.serve", "static")]), name="static")
    assets = _swagger_assets()
    if assets is not None:
        app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")
