"""POST /v1/estimate: age and gender of every face in one uploaded image."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ...schemas import IMAGE_RESULT, json_response
from ..deps import ESTIMATE_QUERY, OptionsDep, ServiceDep, known_query, require_key
from ..errors import error_responses
from ..uploads import read_body, read_image

ESTIMATE_ERRORS = {
    400: "missing image, bad option, malformed multipart",
    401: "API key missing or wrong",
    413: "body or pixel count over the limit",
    415: "not an image format the server reads, or a form type that carries no file",
    422: "truncated or corrupt image",
    503: "too many requests in flight, or shutting down (Retry-After)",
    504: "the request took longer than the timeout",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        "image/*": _BINARY,
        "application/octet-stream": _BINARY,
    },
}

router = APIRouter(dependencies=[Depends(require_key)])


@router.post(
    "/v1/estimate",
    summary="Age and gender of every face in one image",
    responses={
        200: json_response(
            IMAGE_RESULT, "The same JSON as `agegender predict --json` gives for one image"
        ),
        **error_responses(ESTIMATE_ERRORS),
    },
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def estimate(
    request: Request,
    options: OptionsDep,
    service: ServiceDep,
) -> Any:
    known_query(request, ESTIMATE_QUERY)
    # Admitted (or 503) before the body is read; the timeout covers reading it too.
    async with service.admission.admit():
        body = await read_body(request, service.settings.max_body_bytes)
        upload = await read_image(body, request.headers.get("content-type"))
        del body
        return await service.estimate(upload, options)
