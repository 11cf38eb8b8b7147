"""GET /v1/models: the loaded model cards, and the options a request may send."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..deps import ServiceDep, require_key

router = APIRouter(dependencies=[Depends(require_key)])


@router.get("/v1/models", summary="The loaded model cards and where they came from")
async def models(service: ServiceDep) -> dict[str, Any]:
    return service.models()
