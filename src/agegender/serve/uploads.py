"""Request bodies in memory: a size-bounded read, and multipart parsed without spooling.

Starlette's form parser spools file parts over 1 MiB to a temporary file; an upload
must never touch the disk, so multipart bodies are parsed here with `python_multipart`'s
streaming parser into bytes, after the whole body was read under the size limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

IMAGE_FIELD = "image"
# Parts a form may have: the image and a few fields (a browser's form, curl -F ...). A
# body of 20 MB cut into 380,000 empty parts took 3.5 s of CPU to parse.
MAX_PARTS = 32


@dataclass(frozen=True)
class Upload:
    """The image bytes of one request and the file name the client gave (a label only)."""

    data: bytes
    filename: str | None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise _too_large(limit)
            body += chunk
    except ClientDisconnect:  # nobody is left to answer; counted as a 400
        raise ApiError(
            400, "client_disconnected", "the client left before sending its body"
        ) from None
    return bytes(body)


async def read_image(body: bytes, content_type: str | None) -> Upload:
    """extract_image, a multipart body parsed in a worker thread: never on the event loop,
    where a form of many parts would hold every other request (and /healthz) back."""
    kind, _ = parse_options_header(content_type or "")
    if kind == b"multipart/form-data":
        return await anyio.to_thread.run_sync(extract_image, body, content_type)
    return extract_image(body, content_type)


def extract_image(body: bytes, content_type: str | None) -> Upload:
    """The image of a request: the `image` part of a multipart form, else the raw body."""
    kind, params = parse_options_header(content_type or "")
    if kind == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(
                400,
                "bad_request",
                "multipart/form-data without a boundary parameter; let the HTTP client "
                f"build the form (curl -F {IMAGE_FIELD}=@photo.jpg)",
            )
        return _from_multipart(body, boundary)
    if kind == b"application/x-www-form-urlencoded":
        # curl's default for --data/--data-binary: a form type that cannot carry a file.
        raise ApiError(
            415,
            "unsupported_media_type",
            "Content-Type application/x-www-form-urlencoded cannot carry an image: send "
            f"multipart/form-data with an '{IMAGE_FIELD}' file part (curl -F "
            f"{IMAGE_FIELD}=@photo.jpg), or the raw image with Content-Type image/* or "
            "application/octet-stream (curl --data-binary @photo.jpg -H 'Content-Type: "
            "image/jpeg')",
        )
    if not body:
        raise ApiError(
            400,
            "missing_image",
            "the request has no body; send the image as the body or as a multipart "
            f"'{IMAGE_FIELD}' part",
        )
    return Upload(body, None)


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    data: bytearray | None = None


def _from_multipart(body: bytes, boundary: bytes) -> Upload:
    parts: list[_Part] = []
    current = _Part(data=bytearray())
    header_field = bytearray()
    header_value = bytearray()

    begun = 0  # parts begun: one more than ended when the body stops inside a part

    def on_part_begin() -> None:
        nonlocal current, begun
        begun += 1
        if len(parts) >= MAX_PARTS:
            raise ApiError(
                400,
                "bad_request",
                f"the form has more than {MAX_PARTS} parts; send one '{IMAGE_FIELD}' part",
            )
        current = _Part(data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if bytes(header_field).lower() == b"content-disposition":
            _, disposition = parse_options_header(bytes(header_value))
            name = disposition.get(b"name")
            filename = disposition.get(b"filename")
            current.name = name.decode("utf-8", "replace") if name is not None else None
            current.filename = filename.decode("utf-8", "replace") if filename else None
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        assert current.data is not None
        current.data.extend(data[start:end])

    def on_part_end() -> None:
        parts.append(current)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as error:  # python_multipart raises its own exception types
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ApiError(400, "bad_request", f"malformed multipart body ({reason})") from None
    if begun > len(parts):  # cut short by the client or a proxy: told so, not "no image"
        raise ApiError(
            400,
            "bad_request",
            "malformed multipart body (it ends inside a part, without the closing "
            "boundary: truncated?)",
        )
    # The image part, else the form's one file part (whatever its field name); more than
    # one would leave all but one without an answer: refused, one image per request.
    candidates = [p for p in parts if p.name == IMAGE_FIELD] or [p for p in parts if p.filename]
    if len(candidates) > 1:
        names = ", ".join(repr(_printable(p.filename or p.name or "?")) for p in candidates[:4])
        raise ApiError(
            400,
            "bad_request",
            f"the form has {len(candidates)} image parts ({names}); send one image per request",
        )
    chosen = candidates[0] if candidates else None
    if chosen is None:
        raise ApiError(
            400,
            "missing_image",
            f"the form has no '{IMAGE_FIELD}' file part; attach the image as '{IMAGE_FIELD}'",
        )
    if not chosen.data:
        name = f" ({_printable(chosen.filename)})" if chosen.filename else ""
        raise ApiError(
            400,
            "missing_image",
            f"the form's '{chosen.name or IMAGE_FIELD}' part{name} is empty (0 bytes); "
            "attach the image file's contents",
        )
    return Upload(bytes(chosen.data), chosen.filename)


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())[:200]
