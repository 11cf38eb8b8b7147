"""One job per object-store DEST: a lock object, ``DEST/_agegender/lock``.

A local DEST is locked with flock (dataset.py); an object store has no flock, and two
jobs writing one DEST would both commit the same inputs (duplicates) and remove each
other's in-flight parts as "uncommitted". So the job that opens DEST first writes a lock
object naming it (owner id, host, pid, start and heartbeat times) and keeps it fresh:

- S3 with boto3 installed: the object is created only if absent (``PutObject`` with
  ``If-None-Match: *``, which S3 has supported since 2024); of two jobs racing, the store
  lets exactly one create it. Heartbeats and a takeover are ``If-Match`` on the ETag
  read, so a lock changed by someone else is never overwritten blindly.
- elsewhere (another store, a server without conditional writes, no boto3): read; if
  absent or expired, write ours, wait ``SETTLE`` seconds, read back: of two jobs racing,
  the later write wins and the other sees a foreign owner and stops. Safe while a job's
  check and write are closer together than ``SETTLE`` (milliseconds against seconds).

A lock whose heartbeat is older than ``TTL`` belongs to a job that died (kill -9, a lost
machine): it is taken over, so a crashed job blocks its DEST for at most ``TTL`` (not at
all when the dead job ran on this machine: its pid is checked). The
heartbeat is written every ``TTL / 5`` by a daemon thread; the clock is the writer's
(machines more than a minute apart in time would shorten the expiry by that much).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import AgegenderError

if TYPE_CHECKING:
    from .dataset import _Files

log = logging.getLogger(__name__)

TTL = 300.0  # seconds without a heartbeat after which a lock is a dead job's
SETTLE = 2.0  # fallback: seconds between writing the lock and reading it back


class ObjectLock:
    """The lock object of one DEST, held by this process from acquire() to release()."""

    def __init__(self, files: _Files, name: str, dest: str, ttl: float = TTL):
        self.files = files
        self.name = name
        self.dest = dest
        self.ttl = ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self.started = time.time()
        self._etag: str | None = None
        self._client = _conditional_client(files)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # -- the lock's content ------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self.started,
                "heartbeat": time.time(),
            }
        ).encode()

    def _refusal(self, held: dict[str, Any]) -> AgegenderError:
        age = time.time() - float(held.get("heartbeat", 0))
        return AgegenderError(
            f"--out {self.dest}: another agegender batch is writing it (lock held by "
            f"{held.get('host', '?')} pid {held.get('pid', '?')}, last heartbeat "
            f"{age:.0f} s ago; a lock without a heartbeat for {self.ttl:.0f} s is taken over)"
        )

    def _stale(self, held: dict[str, Any]) -> bool:
        """A dead job's lock: no heartbeat for TTL, or its process, on this machine, is
        gone (a re-run right after kill -9 need not wait TTL)."""
        if time.time() - float(held.get("heartbeat", 0)) > self.ttl:
            return True
        if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
            return False
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # alive, someone else's
        return False

    # -- acquire / release -------------------------------------------------------------
    def acquire(self) -> None:
        """Hold the lock, or raise a one-line AgegenderError naming the holder."""
        if self._client is not None:
            try:
                self._acquire_conditional()
            except _Unsupported:
                self._client = None  # a store without conditional writes
        if self._client is None:
            self._acquire_by_reading_back()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="agegender-dest-lock")
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            held, _ = self._read()
            if held is not None and held.get("owner") == self.owner:
                self.files.delete(self.name)
        except Exception as error:  # the job is done; an expired lock frees DEST anyway
            log.warning("%s: could not remove the lock (%s)", self.dest, error)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 5):
            try:
                self.refresh()
            except Exception as error:  # a missed beat is not fatal before TTL
                log.warning("%s: lock heartbeat failed (%s)", self.dest, error)

    def refresh(self) -> None:
        """Write a new heartbeat, unless the lock is no longer ours (then say so once)."""
        if self._client is not None:
            try:
                self._etag = self._put(IfMatch=self._etag)
                return
            except _Conflict:
                pass
        else:
            held, _ = self._read()
            if held is not None and held.get("owner") == self.owner:
                self.files.write_atomic(self.name, self._body())
                return
        if not self.lost:
            self.lost = True
            log.warning("%s: the lock was taken over by another job", self.dest)

    # -- S3 conditional writes ---------------------------------------------------------
    def _acquire_conditional(self) -> None:
        for _ in range(3):
            try:
                self._etag = self._put(IfNoneMatch="*")
                return
            except _Conflict:
                pass
            held, etag = self._read()
            if held is None:
                continue  # released between our write and our read: try again
            if not self._stale(held):
                raise self._refusal(held)
            try:  # a dead job's lock: replaced only if it is still the one we read
                self._etag = self._put(IfMatch=etag)
                return
            except _Conflict:
                continue
        raise AgegenderError(f"--out {self.dest}: another agegender batch is taking the lock")

    def _put(self, **condition: Any) -> str | None:
        from botocore.exceptions import ClientError

        assert self._client is not None
        bucket, key = self._bucket_key()
        extra = {k: v for k, v in condition.items() if v is not None}
        try:
            response = self._client.put_object(Bucket=bucket, Key=key, Body=self._body(), **extra)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                raise _Conflict from None
            if status in (409, 412):
                raise _Conflict from None
            if code in ("NotImplemented", "InvalidArgument") or status == 501:
                raise _Unsupported from None
            raise
        etag = response.get("ETag")
        return str(etag) if etag else None

    def _bucket_key(self) -> tuple[str, str]:
        path = f"{self.files.root}/{self.name}"
        bucket, _, key = path.partition("/")
        return bucket, key

    # -- anything pyarrow.fs opens -----------------------------------------------------
    def _acquire_by_reading_back(self) -> None:
        held, _ = self._read()
        if held is not None and not self._stale(held) and held.get("owner") != self.owner:
            raise self._refusal(held)
        self.files.write_atomic(self.name, self._body())
        time.sleep(SETTLE)
        held, _ = self._read()
        if held is None or held.get("owner") != self.owner:
            raise self._refusal(held or {})

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lock's content and ETag (None, None when there is none)."""
        if self._client is not None:
            from botocore.exceptions import ClientError

            bucket, key = self._bucket_key()
            try:
                response = self._client.get_object(Bucket=bucket, Key=key)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None, None
                raise
            return _parse(response["Body"].read()), response.get("ETag")
        if self.files.kind(self.name) != "file":
            return None, None
        try:
            return _parse(self.files.read(self.name)), None
        except FileNotFoundError:
            return None, None


class _Conflict(Exception):
    """A conditional write refused: someone else's lock is there (or changed)."""


class _Unsupported(Exception):
    """The store does not do conditional writes."""


def _parse(data: bytes) -> dict[str, Any]:
    try:
        held = json.loads(data)
    except ValueError:
        return {}  # unreadable: treated as a lock with no heartbeat (stale)
    return held if isinstance(held, dict) else {}


def _conditional_client(files: _Files) -> Any:
    """A boto3 S3 client for conditional writes when DEST is plain ``s3://`` (no
    pyarrow options in the URI, so boto3 reaches the same store through the same
    environment: AWS_ENDPOINT_URL, credentials, region) and boto3 is installed."""
    if not files.dest.startswith("s3://") or "?" in files.dest:
        return None
    try:
        import boto3
    except ImportError:
        return None
    return boto3.session.Session().client("s3")
