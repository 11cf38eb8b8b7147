"""Probes and metrics: /healthz (the process answers), /readyz (warmed and taking
requests), /metrics (Prometheus text, behind the API key when one is set)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from ..deps import ServiceDep, require_key
from ..errors import ApiError, error_responses

router = APIRouter()


# Each probe answers HEAD too (a load balancer may send it; the answer has no body): a
# route of its own, left out of the OpenAPI schema, which lists each probe once.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="The process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    summary="Models loaded, every worker warmed, requests being taken",
    responses=error_responses({503: "not ready: starting or stopping"}),
)
async def readyz(service: ServiceDep) -> Any:
    if not service.ready:
        raise ApiError(503, "not_ready", "the server is starting or stopping; retry shortly")
    return {"status": "ready", "models": service.model_ids()}


@router.get(
    "/metrics",
    dependencies=[Depends(require_key)],
    summary="Prometheus metrics (text format)",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(service: ServiceDep) -> Response:
    service.metrics.batch_waiting.set(service.batcher.waiting)
    service.metrics.live_sessions.set(service.sessions.sweep())
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
