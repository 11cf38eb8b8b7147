"""An S3-compatible server (moto's server mode) on 127.0.0.1 for the object-store tests.

``moto_s3`` starts one on a free port and puts the ``AWS_*`` settings that point
pyarrow, boto3 and the ``agegender`` commands at it into ``os.environ`` (the commands
the tests start inherit them) until it stops; ``bucket`` makes a bucket there. moto is
imported when a server starts, so importing this module needs no moto.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def moto_s3() -> Iterator[dict[str, str]]:
    """A moto server on 127.0.0.1; yields the environment settings that reach it."""
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def bucket(env: dict[str, str], name: str) -> Any:
    """A pyarrow S3FileSystem on the server of `env`, with the bucket `name` made."""
    from pyarrow import fs as pafs

    store = pafs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"], scheme="http", allow_bucket_creation=True
    )
    store.create_dir(name)
    return store
