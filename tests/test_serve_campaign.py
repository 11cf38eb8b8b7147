"""A bad-input campaign against `agegender serve` (Hypothesis).

Generated requests: truncated, bit-flipped, overwritten and zero-length encodings of a
small photo in every format Pillow writes (PNG, JPEG, BMP, GIF, TIFF, WEBP, PPM), under
wrong extensions, decompression-bomb headers, random bytes; each sent as a multipart
`image` part or as the raw body, under right, wrong, odd and missing Content-Types;
bad query options; huge headers; slow, stalled and abandoned uploads; bad and good
requests at once. Whatever happens:

- never a 5xx; every answer the app gives is JSON: a result, or `{"error": {"code",
  "message"}}` with a one-line message and a 4xx status;
- an input that can never work (empty, a bomb, not an image, a form type that carries
  no file) is a 4xx; a corruption may still decode (a flipped bit in pixel data is only
  another image), so it may give a 200;
- no hang: every request is answered (httpx and socket timeouts are hang guards only;
  the slow uploads set their own slowness), and after each abuse a good request works;
- the good requests sent among bad ones all succeed, with the photo's one face.

The default run is small; AGEGENDER_SERVE_CAMPAIGN=long runs ten times the examples.
The number of requests by kind and the run time are printed at the end.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_support import ASTRONAUT, running_app, shared_estimator
from support.corrupt import FORMATS, damage, encode, png_chunk

from agegender.faces import DETECTORS
from agegender.serve import ServeSettings, create_app

SCALE = 10 if os.environ.get("AGEGENDER_SERVE_CAMPAIGN") == "long" else 1
CAMPAIGN = settings(
    deadline=None,  # no wall-clock limit on an example: the machine may be busy
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_BODY = 1 << 20
COUNTS: Counter[str] = Counter()
HANG_GUARD = 120.0  # seconds; only a hang reaches it


def _small_photo() -> Image.Image:
    with Image.open(ASTRONAUT) as image:
        # The astronaut's face stays findable by dlib at this size (about 90 px wide).
        return image.convert("RGB").crop((96, 0, 352, 256))


PHOTO = _small_photo()
ENCODED = {fmt: encode(PHOTO, fmt) for fmt in FORMATS}
GOOD = ENCODED["PNG"]


# -- generated bodies ------------------------------------------------------------------
@dataclass(frozen=True)
class Body:
    kind: str
    data: bytes = field(repr=False)
    suffix: str
    certain: bool  # can never give a result, whatever the bytes happen to be

    @property
    def category(self) -> str:
        for word in ("bomb", "header only", "good", "over the limit"):
            if word in self.kind:
                return word
        return self.kind.split()[0]

    def __repr__(self) -> str:
        head = self.data[:16]
        return f"Body({self.kind!r}, {len(self.data)} bytes {head!r}..., {self.suffix!r})"


def bomb(fmt: str, width: int, height: int) -> bytes:
    """The small photo with its header claiming `width` x `height` (a bomb header)."""
    data = bytearray(ENCODED[fmt])
    if fmt == "PNG":
        ihdr = bytearray(data[16:29])
        ihdr[0:8] = struct.pack(">II", width, height)
        return bytes(data[:8] + png_chunk(b"IHDR", bytes(ihdr)) + data[33:])
    if fmt == "GIF":
        data[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
        return bytes(data)
    if fmt == "BMP":
        data[18:26] = struct.pack("<ii", width, height)
        return bytes(data)
    if fmt == "JPEG":
        at = data.find(b"\xff\xc0")
        data[at + 5 : at + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
        return bytes(data)
    raise ValueError(fmt)


@st.composite
def corrupted(draw: st.DrawFn) -> Body:
    """A real encoding, truncated, bit-flipped or overwritten, maybe under another suffix."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    how, data = damage(draw, ENCODED[fmt])
    suffix = draw(st.sampled_from([FORMATS[fmt]] * 3 + [*FORMATS.values(), ".txt", ""]))
    return Body(f"{how} {fmt}", data, suffix, certain=not data)


def certain_bad() -> st.SearchStrategy[Body]:
    """Bodies that can never give a result."""
    huge = st.tuples(st.integers(8000, 65535), st.integers(8000, 65535))
    return st.one_of(
        st.sampled_from(sorted(FORMATS.values())).map(lambda s: Body("empty", b"", s, True)),
        st.builds(
            lambda text, s: Body("text", b"not an image: " + text, s, True),
            st.binary(max_size=300),
            st.sampled_from(sorted(FORMATS.values())),
        ),
        st.builds(
            lambda fmt, wh: Body(f"{fmt} bomb", bomb(fmt, *wh), FORMATS[fmt], True),
            st.sampled_from(["PNG", "GIF", "BMP", "JPEG"]),
            huge,
        ),
        st.builds(
            lambda fmt, n: Body(f"{fmt} header only", ENCODED[fmt][:n], FORMATS[fmt], True),
            st.sampled_from(["PNG", "GIF", "BMP"]),
            st.integers(1, 24),
        ),
        # Over the server's body limit: refused while reading.
        st.just(Body("over the limit", GOOD + bytes(MAX_BODY), ".png", True)),
    )


def bodies() -> st.SearchStrategy[Body]:
    return st.one_of(
        corrupted(),
        certain_bad(),
        st.sampled_from(sorted(FORMATS)).map(
            lambda f: Body(
                f"good {f} wrong suffix", ENCODED[f], ".gif" if f != "GIF" else ".png", False
            )
        ),
    )


FILENAMES = st.one_of(
    st.just(None),
    st.text(max_size=40),
    st.sampled_from(["../../etc/passwd", "/tmp/x.png", "C:\\x.png", "a\nb.png", "\x00.png"]),
)
RAW_TYPES = st.sampled_from(
    [
        None,
        "",
        "image/png",
        "image/jpeg",
        "application/octet-stream",
        "text/plain",
        "application/json",
        "image/png; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=nothere",
        ";;;",
        "image/",
    ]
)
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


# -- checks ----------------------------------------------------------------------------
def check(response: httpx.Response, *, certain: bool, kind: str) -> None:
    """No 5xx; a JSON result (only when the input may work) or a JSON 4xx error."""
    COUNTS[kind] += 1
    status = response.status_code
    assert status < 500, f"{kind}: {status} {response.text[:300]}"
    body = response.json()
    if status == 200:
        assert not certain, f"{kind}: a 200 for an input that cannot work"
        assert {"path", "width", "height", "faces", "error"} <= set(body)
        return
    assert 400 <= status < 500, f"{kind}: {status}"
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"}
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"].strip()
    assert "\n" not in error["message"] and "Traceback" not in error["message"]


def assert_good(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert len(response.json()["faces"]) == 1


# -- in-process app: generated requests ------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.perf_counter()
    yield
    line = (
        f"serve campaign: {sum(COUNTS.values())} requests in "
        f"{time.perf_counter() - started:.1f} s; by kind: "
        + ", ".join(f"{k} {n}" for k, n in sorted(COUNTS.items()))
    )
    # Shown whatever the capture mode (-q, -s or neither).
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\n{line}")
    else:
        print(line)


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    app = create_app(ServeSettings(max_body_bytes=MAX_BODY), estimator=shared_estimator())
    with TestClient(app) as client:
        yield client
        # The campaign left the server as it found it: nothing in flight, good requests work.
        assert app.state.service.admission.in_flight == 0
        assert_good(client.post("/v1/estimate", files={"image": ("a.png", GOOD, "image/png")}))


@settings(CAMPAIGN, max_examples=300 * SCALE)
@given(body=bodies(), filename=FILENAMES, part_type=HEADER_TEXT)
def test_bad_bodies_as_multipart(
    api: TestClient, body: Body, filename: str | None, part_type: str
) -> None:
    name = filename if filename is not None else f"upload{body.suffix}"
    response = api.post(
        "/v1/estimate", files={"image": (name, body.data, part_type or "image/png")}
    )
    check(response, certain=body.certain, kind=f"multipart {body.category}")


@settings(CAMPAIGN, max_examples=300 * SCALE)
@given(body=bodies(), content_type=RAW_TYPES)
def test_bad_bodies_as_raw(api: TestClient, body: Body, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = api.post("/v1/estimate", content=body.data, headers=headers)
    never = content_type is not None and (
        content_type.startswith(("multipart/", "application/x-www-form-urlencoded"))
    )
    check(response, certain=body.certain or never, kind=f"raw {body.category}")
    if content_type == "application/x-www-form-urlencoded" and len(body.data) <= MAX_BODY:
        assert response.status_code == 415
        assert "multipart/form-data" in response.json()["error"]["message"]


@settings(CAMPAIGN, max_examples=100 * SCALE)
@given(content_type=HEADER_TEXT, multipart=st.booleans())
def test_odd_content_types(api: TestClient, content_type: str, multipart: bool) -> None:
    # A random Content-Type on a good image: raw bodies are read whatever it says, except
    # the form types; a multipart body under a random type is a raw body that is no image.
    if multipart:
        boundary = "campaignboundary"
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + GOOD
            + f"\r\n--{boundary}--\r\n".encode()
        )
    else:
        data = GOOD
    response = api.post("/v1/estimate", content=data, headers={"content-type": content_type})
    check(response, certain=False, kind="odd content-type")


def _text_or_number() -> st.SearchStrategy[str]:
    numbers = st.one_of(
        st.integers(-(10**12), 10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "", " ", "1_000", "٣"]),
    )
    return st.one_of(numbers, st.text(max_size=20))


@settings(CAMPAIGN, max_examples=200 * SCALE)
@given(
    detector=st.one_of(st.none(), st.sampled_from(list(DETECTORS)), st.text(max_size=20)),
    min_face=st.one_of(st.none(), _text_or_number()),
    tta=st.one_of(st.none(), st.sampled_from(["true", "false", "1", "0"]), st.text(max_size=8)),
    age_threshold=st.one_of(st.none(), _text_or_number()),
    extra=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=2),
)
def test_bad_query_options(
    api: TestClient,
    detector: str | None,
    min_face: str | None,
    tta: str | None,
    age_threshold: str | None,
    extra: dict[str, str],
) -> None:
    params = {k: v for k, v in extra.items() if k not in {"detector", "min_face", "tta"}}
    params.pop("age_threshold", None)
    for name, value in (
        ("detector", detector),
        ("min_face", min_face),
        ("tta", tta),
        ("age_threshold", age_threshold),
    ):
        if value is not None:
            params[name] = value
    response = api.post(
        "/v1/estimate", files={"image": ("a.png", GOOD, "image/png")}, params=params
    )
    check(response, certain=False, kind="query options")
    if response.status_code != 200:
        assert (response.status_code, response.json()["error"]["code"]) == (
            400,
            "invalid_option",
        )
    if detector is not None and detector not in DETECTORS:
        assert response.status_code == 400
    if age_threshold is not None and age_threshold.strip().lower() in {"nan", "inf", "-inf"}:
        assert response.status_code == 400


def test_huge_headers_in_process(api: TestClient) -> None:
    big = "x" * 200_000
    answers = [
        api.post("/v1/estimate", content=GOOD, headers={"content-type": "image/png; a=" + big}),
        api.post("/v1/estimate", content=GOOD, headers={"x-api-key": big}),
        api.post("/v1/estimate", content=GOOD, headers={"x-" + "h" * 1000: big}),
        api.post("/v1/estimate", files={"image": ("n" * 3000 + ".png", GOOD, "image/png")}),
        api.post("/v1/estimate", files={"image": (big + ".png", GOOD, "image/png")}),
        api.post("/v1/estimate", files={"image": ("a.png", GOOD, "image/png; q=" + big)}),
    ]
    for response in answers:
        check(response, certain=False, kind="huge header")
    # The file name is a label, cut short: never 200 kB echoed back.
    assert len(answers[3].json()["path"]) <= 200


# -- a real server: sockets, slow and abandoned uploads, concurrency -------------------
@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FastAPI]]:
    settings_ = ServeSettings(max_body_bytes=MAX_BODY, max_pending=64)
    with running_app(settings_) as (url, app):
        app.state.service.admission.timeout_s = None  # a test sets one when it wants one
        yield url, app


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.settimeout(HANG_GUARD)
    return sock


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer (Content-Length framed) from a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), head[:200]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def _wait_idle(app: FastAPI) -> None:
    """Until no estimate request is in flight (an abandoned one is noticed and ended)."""
    deadline = time.monotonic() + HANG_GUARD
    while app.state.service.admission.in_flight:
        assert time.monotonic() < deadline, "an abandoned request was never ended"
        time.sleep(0.02)


def _post(url: str, data: bytes = GOOD, **kwargs: object) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/estimate",
        files={"image": ("a.png", data, "image/png")},
        timeout=HANG_GUARD,
        **kwargs,  # type: ignore[arg-type]
    )


def test_slow_upload_is_answered(server: tuple[str, FastAPI]) -> None:
    # A body that trickles in (no timeout set): it is read to the end and answered.
    url, _ = server
    sock = _connect(url)
    with sock:
        sock.sendall(
            b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(GOOD)}\r\n\r\n".encode()
        )
        step = max(1, len(GOOD) // 8)
        for start in range(0, len(GOOD), step):
            sock.sendall(GOOD[start : start + step])
            time.sleep(0.05)
        status, body = _answer(sock)
    COUNTS["slow upload"] += 1
    assert status == 200, body[:300]


def test_stalled_upload_times_out_and_abandoned_ones_end(server: tuple[str, FastAPI]) -> None:
    url, app = server
    admission = app.state.service.admission
    # Stalled: headers promise a body that never comes; the request timeout ends it.
    admission.timeout_s = 0.3
    try:
        with _connect(url) as sock:
            sock.sendall(
                b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 100000\r\n\r\n" + GOOD[:100]
            )
            status, body = _answer(sock)
    finally:
        admission.timeout_s = None
    COUNTS["stalled upload"] += 1
    assert status == 504 and b'"timeout"' in body
    # Abandoned: the client leaves mid-body (Content-Length and chunked), or mid-headers.
    abandoned = [
        b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(GOOD)}\r\n\r\n".encode()
        + GOOD[: len(GOOD) // 2],
        b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + GOOD[:100],
        b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Ty",
        b"POST /v1/estimate?detector=none HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
        b"form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\nContent-Disposition: "
        b'form-data; name="image"; filename="a.png"\r\n\r\n' + GOOD[:500],
    ]
    for request in abandoned:
        with _connect(url) as sock:
            sock.sendall(request)
        COUNTS["abandoned upload"] += 1
    _wait_idle(app)
    assert_good(_post(url))


def test_huge_headers_on_the_wire(server: tuple[str, FastAPI]) -> None:
    # Over the HTTP parser's header limit the server answers before the app sees it
    # (its own 4xx, not our JSON): never a 5xx, and it goes on serving.
    url, _ = server
    for size in (8_000, 70_000, 1_000_000):
        with _connect(url) as sock:
            head = (
                b"POST /v1/estimate HTTP/1.1\r\nHost: x\r\nX-Big: "
                + b"a" * size
                + b"\r\nContent-Type: image/png\r\n"
                + f"Content-Length: {len(GOOD)}\r\n\r\n".encode()
            )
            try:
                sock.sendall(head + GOOD)
                status, _ = _answer(sock)
            except (ConnectionResetError, BrokenPipeError):
                status = 400  # refused and closed while we were still sending
        COUNTS["huge header"] += 1
        assert status == 200 or 400 <= status < 500, status
    assert_good(_post(url))


def test_bad_and_good_requests_at_once(server: tuple[str, FastAPI]) -> None:
    url, app = server
    rng = random.Random(8)
    bad: list[tuple[str, bytes, str | None]] = []
    for fmt in sorted(FORMATS):
        data = ENCODED[fmt]
        bad.append(("empty", b"", "image/png"))
        bad.append(("truncated", data[: rng.randrange(1, 24)], "image/png"))
        bad.append(("not an image", b"hello" * rng.randrange(1, 50), None))
        bad.append(("form type", data, "application/x-www-form-urlencoded"))
    bad.append(("bomb", bomb("PNG", 60000, 60000), "image/png"))
    bad.append(("over the limit", GOOD + bytes(MAX_BODY), "image/png"))

    def send_bad(item: tuple[str, bytes, str | None]) -> tuple[str, httpx.Response]:
        kind, data, content_type = item
        headers = {} if content_type is None else {"content-type": content_type}
        return kind, httpx.post(
            f"{url}/v1/estimate", content=data, headers=headers, timeout=HANG_GUARD
        )

    jobs: list[tuple[str, object]] = [("good", None)] * 12 + [("bad", b) for b in bad]
    rng.shuffle(jobs)
    with ThreadPoolExecutor(12) as pool:
        futures = [
            pool.submit(_post, url) if kind == "good" else pool.submit(send_bad, item)  # type: ignore[arg-type]
            for kind, item in jobs
        ]
        results = [f.result() for f in futures]
    good = [r for r in results if isinstance(r, httpx.Response)]
    assert len(good) == 12
    for response in good:
        COUNTS["concurrent good"] += 1
        assert_good(response)
    first = good[0].json()["faces"][0]
    for response in good[1:]:
        face = response.json()["faces"][0]
        assert face["box"] == first["box"]
        assert face["age"]["value"] == pytest.approx(first["age"]["value"], rel=1e-5)
    for kind, response in (r for r in results if isinstance(r, tuple)):
        check(response, certain=True, kind="concurrent bad")
        assert response.status_code >= 400, kind
    _wait_idle(app)


def test_the_server_survived(server: tuple[str, FastAPI]) -> None:
    url, app = server
    assert httpx.get(f"{url}/readyz", timeout=HANG_GUARD).status_code == 200
    assert_good(_post(url))
    _wait_idle(app)
    assert threading.active_count() < 200
