"""Live sessions: /v1/sessions. A client (the page's webcam mode) opens a session, sends
its frames one by one and gets each frame's tracked people with their fused estimates,
as `agegender video --frames` writes them; see `serve/sessions.py` for why HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ...schemas import LIVE_FRAME, SESSION_OPENED, SESSION_SUMMARY, json_response
from ..deps import ESTIMATE_QUERY, OptionsDep, ServiceDep, known_query, require_key
from ..errors import error_responses
from ..sessions import SessionOptions
from ..uploads import read_body, read_image
from .estimate import ESTIMATE_ERRORS, REQUEST_BODY

router = APIRouter(dependencies=[Depends(require_key)], tags=["live sessions"])

NOT_FOUND = {404: "no such session, it ended, or it expired after its idle timeout"}
FRAME_ERRORS = {
    **ESTIMATE_ERRORS,
    400: "missing image, malformed multipart, a query parameter (the session has the "
    "options), a frame of another size than the session's first",
    **NOT_FOUND,
    409: "the session's previous frame is still being processed",
}


SESSION_QUERY = ESTIMATE_QUERY | {"detect_every", "min_hits", "max_lost"}


@router.post(
    "/v1/sessions",
    status_code=201,
    summary="Open a live session: frames sent to it are tracked, one fused estimate per person",
    responses={
        201: json_response(SESSION_OPENED, "The session: its id and where to send frames"),
        **error_responses(
            {
                400: "bad option",
                401: "API key missing or wrong",
                429: "as many sessions as the server allows are open (Retry-After)",
            }
        ),
    },
)
async def open_session(
    request: Request,
    service: ServiceDep,
    options: OptionsDep,
    detect_every: int = Query(1, ge=1, le=100, description="run the detector every K frames"),
    min_hits: int = Query(3, ge=1, le=100, description="detections before a track gets an id"),
    max_lost: float = Query(
        1.0,
        ge=0,
        le=600,
        allow_inf_nan=False,
        description="seconds unseen (by the server's clock) before a person's track ends",
    ),
) -> Any:
    known_query(request, SESSION_QUERY)
    tracking = SessionOptions(detect_every, min_hits, max_lost)
    session = service.start_session(options, tracking)
    body = {
        "id": session.id,
        "frames_url": f"/v1/sessions/{session.id}/frames",
        "idle_timeout_s": service.sessions.idle_s,
        "options": tracking.to_dict(),
    }
    return JSONResponse(body, status_code=201, headers={"Location": f"/v1/sessions/{session.id}"})


@router.post(
    "/v1/sessions/{session_id}/frames",
    summary="Track one frame: every face with its track id and the track's fused estimate",
    responses={
        200: json_response(
            LIVE_FRAME,
            "The frame as `agegender video --frames` writes it, plus the image size and the "
            "people whose tracks ended with this frame",
        ),
        **error_responses(FRAME_ERRORS),
    },
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def frame(session_id: str, request: Request, service: ServiceDep) -> Any:
    known_query(request, frozenset())  # a frame takes no option: the session has them
    session = service.sessions.get(session_id)
    async with service.admission.admit():
        body = await read_body(request, service.settings.max_body_bytes)
        upload = await read_image(body, request.headers.get("content-type"))
        del body
        return await service.track(session, upload)


@router.get(
    "/v1/sessions/{session_id}",
    summary="A session's frame count, idle time and the people whose tracks ended",
    responses={
        200: json_response(SESSION_SUMMARY, "The session's summary"),
        **error_responses(NOT_FOUND),
    },
)
async def session_info(session_id: str, service: ServiceDep) -> Any:
    session = service.sessions.get(session_id)
    return session.summary(service.sessions.clock())


@router.delete(
    "/v1/sessions/{session_id}",
    summary="End a session: every person it saw, fused over their whole track",
    responses={
        200: json_response(SESSION_SUMMARY, "The session's summary, every person finished"),
        **error_responses(
            {
                **NOT_FOUND,
                503: "the server is shutting down; its tracks are not finished (Retry-After)",
            }
        ),
    },
)
async def end_session(session_id: str, service: ServiceDep) -> Any:
    return await service.end_session(session_id)
