"""``agegender serve``: the HTTP API and the web page, on uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..errors import AgegenderError
from .options import add_estimator_options, estimator_from_args

if TYPE_CHECKING:
    from ..serve.app import ServeSettings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "serve",
        help="serve the HTTP API and the web page",
        description="Serve POST /v1/estimate, /v1/models, /healthz, /readyz, /metrics "
        "and a web page at /. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require the key held in this environment variable on every API call",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-body-mb", type=float, default=20.0, help="largest request body (default: 20 MB)"
    )
    limits.add_argument(
        "--max-pending",
        type=int,
        default=32,
        help="estimate requests in flight before 503 (default: %(default)s)",
    )
    limits.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)"
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
        type=float,
        default=20.0,
        help="how long a batch waits for requests still being decoded and detected; a lone "
        "request never waits (default: %(default)s)",
    )
    batching.add_argument(
        "--max-batch", type=int, default=16, help="images per model batch (default: %(default)s)"
    )
    batching.add_argument(
        "--prepare-workers",
        type=int,
        default=2,
        help="threads that decode and detect faces (default: %(default)s)",
    )
    add_estimator_options(parser)
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The server's settings from the command line; the API key is read from the env."""
    from ..serve.app import ServeSettings

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
        pixel_limit=args.pixel_limit,
        batching=args.batching,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        max_pending=args.max_pending,
        request_timeout_s=args.timeout,
        prepare_workers=args.prepare_workers,
    )


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
    # The same options as `predict` build the same Estimator (one place maps them).
    estimator = estimator_from_args(args)
    app = create_app(settings, estimator)
    print(
        f"agegender: serving preset {estimator.preset} on http://{settings.host}:{settings.port}/"
        + (" (API key required)" if settings.api_key else ""),
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        # A last guard on open connections (the app's own 503 comes at --max-pending).
        limit_concurrency=8 * settings.max_pending + 64,
        timeout_keep_alive=5,
    )
    return 0
