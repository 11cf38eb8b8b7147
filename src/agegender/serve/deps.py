"""Dependencies of the routes: the service, the API key, an estimate request's options."""

from __future__ import annotations

import hmac
import math
from typing import Annotated

from fastapi import Depends, Query, Request

from ..faces import DETECTORS
from .errors import ApiError
from .service import EstimateOptions, Service


async def get_service(request: Request) -> Service:
    """The app's one Service (made by `create_app`)."""
    service: Service = request.app.state.service
    return service


async def require_key(request: Request) -> None:
    """With an API key set, the request must carry it (Bearer or X-API-Key): 401 else."""
    expected = (await get_service(request)).settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if given is None and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if given is None or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(
            401,
            "unauthorized",
            "this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            {"WWW-Authenticate": "Bearer"},
        )


async def estimate_options(
    service: Annotated[Service, Depends(get_service)],
    tta: bool | None = Query(None, description="average with the mirror image"),
    detector: str | None = Query(
        None, description=f"one of {', '.join(DETECTORS)} (default: the server's)"
    ),
    min_face: int | None = Query(None, ge=0, le=100_000, description="smallest face side, px"),
    age_threshold: float | None = Query(
        None, ge=0, le=150, description="adds P(age >= t) to each face's age"
    ),
) -> EstimateOptions:
    """The query options of POST /v1/estimate; a name not in the registry, or one whose
    model file is not on this server, is a 400."""
    if detector is not None and detector not in DETECTORS:
        raise ApiError(
            400,
            "invalid_option",
            f"detector {detector!r}: choose one of {', '.join(service.detectors)}",
        )
    if detector is not None and detector not in service.detectors:
        raise ApiError(
            400,
            "invalid_option",
            f"detector {detector!r} is not installed on this server; choose one of "
            f"{', '.join(service.detectors)}",
        )
    if age_threshold is not None and not math.isfinite(age_threshold):
        raise ApiError(400, "invalid_option", "age_threshold must be a finite number")
    return EstimateOptions(detector, min_face, tta, age_threshold)


ServiceDep = Annotated[Service, Depends(get_service)]
OptionsDep = Annotated[EstimateOptions, Depends(estimate_options)]
