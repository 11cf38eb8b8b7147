"""Download one file over HTTP(S), resumably, installing it only once it is checked.

``download(url, dest, sha256=..., size=..., policy=...)`` knows nothing of model cards
(compare timm's ``download_cached_file``): the bytes collect in ``dest.part`` and reach
``dest`` only by ``os.replace`` after their size and sha256 were checked while they were
written, so an interrupted or corrupted download never sits where a file is expected. A
broken transfer resumes from the ``.part`` file with an HTTP Range request. The standard
library's ``urllib`` does the HTTP: it follows redirects, keeps the Range header across
them, and adds no dependency for one GET per file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DownloadError, ModelFileError, NetworkError
from ..locking import LockHeld, try_exclusive
from .hashing import CHUNK, Sha256
from .layout import StoreLayout, part_path

if TYPE_CHECKING:
    from tqdm import tqdm

OFFLINE_ENV = "AGEGENDER_OFFLINE"
# Answers worth another try; any other 4xx means the address is wrong.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "agegender-model-store"

log = logging.getLogger(__name__)


def is_offline(flag: bool = False) -> bool:
    """True when ``flag`` (``--offline``) is set or ``AGEGENDER_OFFLINE`` is a true value."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    return flag or value not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard a download tries, and whether it may use the network at all.

    ``retries`` counts tries in a row that added no bytes, after the first such try (each
    waits ``backoff * 2**n`` seconds first); a try that adds bytes resets the count, so a
    slow link that keeps dropping still finishes.
    """

    timeout: float = 30.0  # seconds per connect and per read
    retries: int = 4
    backoff: float = 1.0
    offline: bool = False  # never touch the network (AGEGENDER_OFFLINE=1 also sets it)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"DownloadPolicy.timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"DownloadPolicy.retries must be >= 0, got {self.retries}")
        if not self.backoff >= 0:
            raise ValueError(f"DownloadPolicy.backoff must be >= 0 seconds, got {self.backoff}")

    @property
    def is_offline(self) -> bool:
        return is_offline(self.offline)


class _Retry(Exception):
    """A transient failure: the part file is kept and the request is tried again."""


class _Restart(Exception):
    """The part file cannot be continued: start again from byte zero."""


def progress_bar(total: int | None, label: str, enabled: bool | None) -> tqdm:
    """A byte progress bar on stderr; ``enabled=None``: only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=True if enabled is False else (None if enabled is None else False),
        leave=True,
    )


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an OS lock on ``lock`` (released by the OS if the process dies), or refuse.
    On a file system that does not lock (ENOLCK on some network mounts) it goes on
    unlocked, with a warning: the download still installs only a file that matches."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = lock.open("a+b")
    try:
        try:
            locked = try_exclusive(handle.fileno())
        except LockHeld:
            raise DownloadError(
                f"{lock.stem}: another download of this file is running (lock {lock})"
            ) from None
        if not locked:
            log.warning("%s: this file system does not lock files; going on unlocked", lock)
        yield
    finally:
        handle.close()


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    policy: DownloadPolicy | None = None,
    progress: bool | None = None,
    label: str | None = None,
    layout: StoreLayout | None = None,
    resumable: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; install it only if it matches.

    ``sha256`` and ``size``, when given, are checked; a mismatch removes the part file and
    raises (ModelFileError, DownloadError): nothing is left at ``dest``. A failure that
    another try may cure keeps the part file for the next call to resume (removed instead
    when not ``resumable``: a download into a temporary folder). Raises NetworkError when
    the server cannot be reached or will not serve the file.
    """
    policy = policy or DownloadPolicy()
    if policy.is_offline:
        raise DownloadError(
            f"{url}: not downloaded: offline ({OFFLINE_ENV}=1 or --offline); put the file at "
            f"{dest} by other means"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if size is not None:
        need = size - (part.stat().st_size if part.is_file() else 0)
        free = shutil.disk_usage(dest.parent).free
        if need > free:
            raise DownloadError(
                f"{dest.parent}: {need / 2**20:.0f} MiB needed for {dest.name}, "
                f"{free / 2**20:.0f} MiB free (set AGEGENDER_HOME to a larger disk)"
            )
    # Two processes appending to one part file would corrupt it behind both hashes. Lock
    # files are kept: deleting one while another process opens it would let two through.
    with exclusive((layout or StoreLayout.default()).lock_path(dest)):
        bar = progress_bar(size, label or dest.name, progress)
        try:
            return _Download(url, dest, part, sha256, size, policy, bar, resumable).run()
        finally:
            bar.close()


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    return int(match.group(1)) if match else None


def _gave_up(retries: int) -> str:
    if retries == 0:
        return "gave up: no progress, and no retries allowed"
    return f"gave up after {retries} retr{'y' if retries == 1 else 'ies'} without progress"


@dataclass
class _Download:
    url: str
    dest: Path
    part: Path
    sha256: str | None
    size: int | None
    policy: DownloadPolicy
    bar: tqdm
    resumable: bool = True

    def _have(self) -> int:
        return self.part.stat().st_size if self.part.is_file() else 0

    def run(self) -> Path:
        failures = 0
        best = 0
        restarted = False
        while True:
            have = self._have()
            if self.size is not None and have > self.size:
                self.part.unlink()
                have = 0
            best = max(best, have)
            resumed = have > 0
            try:
                if self.size is not None and have == self.size:
                    digest, length = Sha256().update_file(self.part), have
                else:
                    self.bar.reset(total=self.size)
                    self.bar.update(have)
                    digest, length = self._transfer(have)
            except _Restart:
                self.part.unlink(missing_ok=True)
                continue
            except _Retry as error:
                now = self._have()
                failures = 0 if now > best else failures + 1
                if failures > self.policy.retries:
                    if not now:
                        kept = "nothing was received"
                    elif self.resumable:
                        kept = (
                            f"the partial file {self.part} ({now} bytes) is kept: "
                            "run again to resume"
                        )
                    else:
                        self.part.unlink(missing_ok=True)
                        kept = f"{now} bytes received, not kept"
                    raise NetworkError(
                        f"{self.url}: {error}; {_gave_up(self.policy.retries)} ({kept})"
                    ) from None
                self.policy.sleep(self.policy.backoff * 2 ** max(failures - 1, 0))
                continue
            except DownloadError:
                self.part.unlink(missing_ok=True)
                raise
            if self.size is not None and length != self.size:
                self.part.unlink(missing_ok=True)
                raise DownloadError(f"{self.url}: got {length} bytes, expected {self.size}")
            actual = digest.hexdigest()
            if self.sha256 is not None and actual != self.sha256:
                self.part.unlink(missing_ok=True)
                if resumed and not restarted:
                    # The stitched halves may come from two versions of the file: retry whole.
                    restarted = True
                    continue
                raise ModelFileError(
                    f"{self.url}: the downloaded file's sha256 {actual} differs from the "
                    f"expected {self.sha256}; nothing was installed"
                )
            os.replace(self.part, self.dest)
            return self.dest

    def _transfer(self, have: int) -> tuple[Sha256, int]:
        """One GET (ranged when ``have`` > 0) appended to the part file: (sha256, length).

        Raises _Retry when the connection fails or ends early, _Restart when the server
        will not continue the part file, DownloadError when retrying cannot help.
        """
        # urllib (with ssl and email) only when a download starts: `--help` stays light.
        from http.client import HTTPException
        from urllib.error import HTTPError, URLError
        from urllib.request import Request, urlopen

        url, size = self.url, self.size
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            response = urlopen(Request(url, headers=headers), timeout=self.policy.timeout)
        except HTTPError as error:
            if error.code == 416 and have:
                raise _Restart("the server refused to continue the partial file") from None
            if error.code in RETRY_STATUS:
                raise _Retry(f"HTTP {error.code} {error.reason}") from None
            raise NetworkError(f"{url}: HTTP {error.code} {error.reason}") from None
        except ValueError as error:  # an address urllib cannot use
            raise NetworkError(f"{url}: {error}") from None
        except (URLError, OSError, HTTPException) as error:
            reason = getattr(error, "reason", None) or error
            raise _Retry(f"cannot connect ({reason})") from None

        with response:
            if have and response.status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != have:
                    raise _Restart(f"the server resumed at byte {start}, not {have}")
                digest, mode = Sha256().update_file(self.part), "ab"
            else:
                # 200 to a ranged request: the server sends the whole file, so start over.
                digest, mode, have = Sha256(), "wb", 0
                self.bar.reset(total=size)
            declared = response.headers.get("Content-Length")
            remaining = int(declared) if declared and declared.isdigit() else None
            if size is not None and remaining is not None and have + remaining != size:
                raise DownloadError(
                    f"{url}: the server's file has {have + remaining} bytes, expected {size}"
                )
            received = 0
            # read1 returns what has arrived, so a stall loses nothing already received.
            read = getattr(response, "read1", response.read)
            with self.part.open(mode) as out:
                try:
                    while block := read(CHUNK):
                        if size is not None and have + received + len(block) > size:
                            raise DownloadError(
                                f"{url}: the server sent more than the expected {size} bytes"
                            )
                        out.write(block)
                        digest.update(block)
                        received += len(block)
                        self.bar.update(len(block))
                except (OSError, HTTPException) as error:
                    raise _Retry(
                        f"connection lost after {have + received} bytes ({error})"
                    ) from None
                out.flush()
                os.fsync(out.fileno())
            if remaining is not None and received < remaining:
                raise _Retry(
                    f"connection closed after {have + received} of {have + remaining} bytes"
                )
        return digest, have + received
