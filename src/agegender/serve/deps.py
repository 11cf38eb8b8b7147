"""Dependencies of the routes: the service, the API key, an estimate request's options."""

from __future__ import annotations

import hmac
import math
from typing import Annotated

from fastapi import Depends, Query, Request

from ..config import MAX_AGE_THRESHOLD
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


# The query parameters of POST /v1/estimate (estimate_options); POST /v1/sessions takes
# these and its tracking ones.
ESTIMATE_QUERY = frozenset({"tta", "detector", "min_face", "age_threshold"})
REPEATABLE_QUERY = frozenset({"age_threshold"})


def known_query(request: Request, allowed: frozenset[str]) -> None:
    """A 400 for a query parameter the endpoint does not take (a misspelt
    ``age_treshold`` would otherwise be ignored and the answer look complete)."""
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise ApiError(
            400,
            "invalid_option",
            f"unknown query parameter {unknown[0]!r}; this endpoint takes "
            + (", ".join(sorted(allowed)) if allowed else "none (the session has the options)"),
        )
    # One value each (FastAPI would take the last of ?tta=true&tta=false in silence).
    for name in sorted(set(request.query_params) - REPEATABLE_QUERY):
        given = len(request.query_params.getlist(name))
        if given > 1:
            raise ApiError(
                400,
                "invalid_option",
                f"query parameter {name!r} is given {given} times; give it once (only "
                f"{', '.join(sorted(REPEATABLE_QUERY))} may be repeated)",
            )


async def estimate_options(
    service: Annotated[Service, Depends(get_service)],
    tta: bool | None = Query(None, description="average with the mirror image"),
    detector: str | None = Query(
        None, description=f"one of {', '.join(DETECTORS)} (default: the server's)"
    ),
    min_face: int | None = Query(None, ge=0, le=100_000, description="smallest face side, px"),
    age_threshold: Annotated[
        list[float] | None,
        Query(description="adds P(age >= t) to each face's age, 0 to 150; repeat it for several"),
    ] = None,
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
    thresholds = None
    if age_threshold:
        for t in age_threshold:
            if not (math.isfinite(t) and 0 <= t <= MAX_AGE_THRESHOLD):
                raise ApiError(
                    400,
                    "invalid_option",
                    f"age_threshold {t}: give a finite number from 0 to {MAX_AGE_THRESHOLD:g}",
                )
        thresholds = tuple(age_threshold)  # the configuration counts a repeated one once
    return EstimateOptions(detector, min_face, tta, thresholds)


ServiceDep = Annotated[Service, Depends(get_service)]
OptionsDep = Annotated[EstimateOptions, Depends(estimate_options)]
