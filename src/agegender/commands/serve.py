"""``agegender serve``: the HTTP API and the web page, on uvicorn."""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
from typing import TYPE_CHECKING

from ..errors import AgegenderError
from .options import add_estimator_options, estimator_from_args

if TYPE_CHECKING:
    import uvicorn

    from ..serve.settings import ServeSettings


def port_number(text: str) -> int:
    """A TCP port for --port: 1-65535, else argparse's one-line usage error."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {port}")
    return port


def _number(kind: type, low: float, *, above: bool = False) -> object:
    """A finite number >= low (> low with `above`), else argparse's one-line error."""

    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if above else '>='} {low:g}, got {text!r}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "serve",
        help="serve the HTTP API and the web page",
        description="Serve POST /v1/estimate, /v1/sessions (live tracking), /v1/models, "
        "/healthz, /readyz, /metrics and a web page at /. Binds to 127.0.0.1 unless --host "
        "says otherwise.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=port_number, default=8000, help="port, 1-65535 (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require the key held in this environment variable on every API call",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-body-mb",
        type=_number(float, 0, above=True),
        default=20.0,
        help="largest request body (default: 20 MB)",
    )
    limits.add_argument(
        "--max-pending",
        type=_number(int, 1),
        default=32,
        help="estimate requests in flight before 503 (default: %(default)s)",
    )
    limits.add_argument(
        "--timeout",
        type=_number(float, 0, above=True),
        default=30.0,
        help="seconds per request (default: %(default)s)",
    )
    limits.add_argument(
        "--max-sessions",
        type=_number(int, 1),
        default=8,
        help="live (frame-by-frame) tracking sessions at once before 429 (default: %(default)s)",
    )
    limits.add_argument(
        "--session-idle",
        type=_number(float, 0, above=True),
        default=60.0,
        metavar="SECONDS",
        help="a live session without a frame for this long ends (default: %(default)s)",
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch the faces of concurrent requests (default: on)",
    )
    batching.add_argument(
        "--batch-window-ms",
        type=_number(float, 0),
        default=20.0,
        help="how long a batch waits for requests still being decoded and detected; a lone "
        "request never waits (default: %(default)s)",
    )
    batching.add_argument(
        "--max-batch",
        type=_number(int, 1),
        default=16,
        help="images per model batch (default: %(default)s)",
    )
    batching.add_argument(
        "--prepare-workers",
        type=_number(int, 1),
        default=2,
        help="threads that decode and detect faces (default: %(default)s)",
    )
    add_estimator_options(parser)
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The server's settings from the command line; the API key is read from the env."""
    from ..serve.settings import ServeSettings

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise AgegenderError(
                f"--api-key-env {args.api_key_env}: that environment variable is unset or empty"
            )
    return ServeSettings(
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        batching=args.batching,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        max_pending=args.max_pending,
        request_timeout_s=args.timeout,
        prepare_workers=args.prepare_workers,
        max_sessions=args.max_sessions,
        session_idle_s=args.session_idle,
    )


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a one-line error (address in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise AgegenderError(f"--host {host}: cannot resolve it ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        hint = "; choose another --port or stop the other server" if port else ""
        raise AgegenderError(f"cannot listen on {host}:{port}: {reason.lower()}{hint}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as error:
        raise AgegenderError(
            f"serve needs the server extras ({error.name} is missing): "
            "pip install 'agegender[serve]'"
        ) from None
    settings = settings_from_args(args)
    # Bound before the models load: a port in use fails at once, and nothing says
    # "serving" before the address is ours.
    try:
        sock = bind(settings.host, settings.port)
    except AgegenderError as error:  # a run-time failure (exit 1), not a usage error
        print(f"agegender: error: {error}", file=sys.stderr)
        return 1
    try:
        # The same options as `predict` build the same Estimator (one place maps them).
        estimator = estimator_from_args(args)
        app = create_app(settings, estimator)
        config = uvicorn_config(app, settings)
        print(
            f"agegender: serving preset {estimator.preset} on "
            f"http://{_url_host(settings.host)}:{settings.port}/"
            + (" (API key required)" if settings.api_key else ""),
            file=sys.stderr,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def uvicorn_config(app: object, settings: ServeSettings) -> uvicorn.Config:
    """How `agegender serve` runs the app on uvicorn."""
    import uvicorn

    from ..serve.connections import head_deadline_protocol

    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        # A last guard on open connections (the app's own 503 comes at --max-pending).
        limit_concurrency=8 * settings.max_pending + 64,
        timeout_keep_alive=5,
        # A connection must send each request's head within the request timeout: idle or
        # half-sent connections would otherwise stay, each counted in that guard, until
        # the server answered nothing but uvicorn's 503.
        http=head_deadline_protocol(settings.request_timeout_s),
        # After SIGTERM the requests in flight finish, for at most one request's
        # timeout (a stalled upload must not hold the process until it is killed).
        timeout_graceful_shutdown=max(1, math.ceil(settings.request_timeout_s)),
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
