"""The service's errors: an HTTP status and the JSON body `{"error": {"code", "message"}}`,
and the handlers that turn every failure (ours, FastAPI's, Starlette's) into that body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

ERROR_SCHEMA: dict[str, Any] = {
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


class ApiError(Exception):
    """An answer other than 200, raised anywhere in a request and rendered by one handler."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON body every error answer carries."""
        return {"error": {"code": self.code, "message": self.message}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def shutting_down() -> ApiError:
    return ApiError(
        503, "shutting_down", "the server is shutting down; retry the request", {"Retry-After": "1"}
    )


def error_responses(errors: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses, each with the error body schema."""
    return {
        status: {"description": why, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for status, why in errors.items()
    }


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error.response()


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # The traceback goes to the server's log (Starlette re-raises after answering).
    return ApiError(500, "internal", f"internal error ({type(error).__name__})").response()


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
        for e in error.errors()
    )
    return ApiError(400, "invalid_option", problems or "invalid request").response()


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(error.status_code, "http_error")
    headers = dict(error.headers or {})
    return ApiError(error.status_code, code, str(error.detail), headers).response()


def install_handlers(app: FastAPI) -> None:
    """Every error answer of `app` is the JSON error body, never HTML or a traceback."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
