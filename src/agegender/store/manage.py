"""The model store: downloads and imports of URL cards' files, checked against the card.

A file reaches its final path (``<home>/models/<card.source.file>``) only by ``os.replace``
of a complete copy whose size and sha256 were checked while it was written, so an
interrupted or corrupted download never sits where a model is expected. Downloads resume
from a ``.part`` file with an HTTP Range request. The standard library's ``urllib`` does
the HTTP: it follows redirects and keeps the Range header across them, and it adds no
dependency for one GET per model.

A file imported with ``--card`` whose hash differs from the card's is kept with a sidecar
``<file>.unverified.json`` recording its hash, so ``models verify`` can say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from . import cards as cardlib
from .cards import ModelCard
from .errors import DownloadError, ModelFileError, ModelNotInstalledError
from .sources import (
    home,
    package_path,
    read_unverified,
    sha256_file,
    sidecar_path,
    store_path,
)

CHUNK = 1 << 20
PART_SUFFIX = ".part"
OFFLINE_ENV = "AGEGENDER_OFFLINE"
# Answers worth another try; any other 4xx means the address is wrong.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "agegender-model-store"

InstallStatus = Literal["installed", "unverified", "missing", "partial"]


class _Retry(Exception):
    """A transient failure: the part file is kept and the request is tried again."""


class _Restart(Exception):
    """The part file cannot be continued: start again from byte zero."""


def models_dir() -> Path:
    """The folder that holds downloaded and imported model files."""
    return home() / "models"


def is_offline(flag: bool = False) -> bool:
    """True when ``--offline`` was given or ``AGEGENDER_OFFLINE`` is set to a true value."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    return flag or value not in ("", "0", "false", "no", "off")


def offline_message(card: ModelCard) -> str:
    """Tell an offline user exactly which file to fetch and where to put it."""
    return (
        f"offline ({OFFLINE_ENV}=1 or --offline): model {card.id} needs {card.source.file}; "
        f"fetch {card.source.url} elsewhere, then run 'agegender models import FILE' "
        f"(or put it at {store_path(card)} and run 'agegender models verify')"
    )


@dataclass(frozen=True)
class InstallState:
    """Whether a card's file is on this machine, and where."""

    card: ModelCard
    status: InstallStatus
    path: Path | None


def install_state(card: ModelCard) -> InstallState:
    """Where a card's file is, without hashing it (``verify`` hashes)."""
    if card.source.package:
        try:
            path = package_path(card)
        except ModelNotInstalledError:
            return InstallState(card, "missing", None)
        return InstallState(card, "installed" if path.is_file() else "missing", path)
    path = store_path(card)
    if path.is_file():
        status: InstallStatus = "unverified" if read_unverified(path) is not None else "installed"
        return InstallState(card, status, path)
    if path.with_name(path.name + PART_SUFFIX).is_file():
        return InstallState(card, "partial", None)
    return InstallState(card, "missing", None)


def _progress(total: int | None, label: str, enabled: bool | None) -> tqdm:
    # enabled=None lets tqdm decide: a bar on a terminal, nothing in a log file.
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


def _hash_prefix(path: Path) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    return int(match.group(1)) if match else None


def _transfer(
    url: str, part: Path, have: int, size: int | None, timeout: float, bar: tqdm
) -> tuple[Any, int]:
    """One GET (ranged when ``have`` > 0) appended to ``part``; returns (sha256, length).

    Raises _Retry when the connection fails or ends early, _Restart when the server will
    not continue the part file, DownloadError when retrying cannot help.
    """
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as error:
        if error.code == 416 and have:
            raise _Restart("the server refused to continue the partial file") from None
        if error.code in RETRY_STATUS:
            raise _Retry(f"HTTP {error.code} {error.reason}") from None
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (URLError, OSError, HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise _Retry(f"cannot connect ({reason})") from None

    with response:
        if have and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != have:
                raise _Restart(f"the server resumed at byte {start}, not {have}")
            digest, mode = _hash_prefix(part), "ab"
        else:
            # 200 to a ranged request: the server sends the whole file, so start over.
            digest, mode, have = hashlib.sha256(), "wb", 0
            bar.reset(total=size)
        declared = response.headers.get("Content-Length")
        remaining = int(declared) if declared and declared.isdigit() else None
        if size is not None and remaining is not None and have + remaining != size:
            raise DownloadError(
                f"{url}: the server's file has {have + remaining} bytes, the card says {size}"
            )
        received = 0
        # read1 returns what has arrived, so a stall loses nothing already received.
        read = getattr(response, "read1", response.read)
        with part.open(mode) as out:
            try:
                while block := read(CHUNK):
                    if size is not None and have + received + len(block) > size:
                        raise DownloadError(
                            f"{url}: the server sent more than the card's {size} bytes"
                        )
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, HTTPException) as error:
                raise _Retry(f"connection lost after {have + received} bytes ({error})") from None
            out.flush()
            os.fsync(out.fileno())
        if remaining is not None and received < remaining:
            raise _Retry(f"connection closed after {have + received} of {have + remaining} bytes")
    return digest, have + received


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an OS lock on ``lock`` (released by the OS if the process dies), or refuse."""
    handle = lock.open("a+b")
    try:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError(
                f"{lock.stem}: another download of this file is running (lock {lock})"
            ) from None
        yield
    finally:
        handle.close()


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None = None,
    timeout: float = 30.0,
    retries: int = 4,
    backoff: float = 1.0,
    progress: bool | None = None,
    label: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; install it only if it matches.

    ``retries`` counts consecutive attempts that added no bytes (each waits
    ``backoff * 2**n`` seconds first), so a slow link that keeps dropping still finishes.
    A size or sha256 mismatch removes the part file and raises; nothing is left at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    if size is not None:
        need = size - (part.stat().st_size if part.is_file() else 0)
        free = shutil.disk_usage(dest.parent).free
        if need > free:
            raise DownloadError(
                f"{dest.parent}: {need / 2**20:.0f} MiB needed for {dest.name}, "
                f"{free / 2**20:.0f} MiB free (set AGEGENDER_HOME to a larger disk)"
            )
    # Two processes appending to one part file would corrupt it behind both hashes.
    # Lock files live apart so the models folder holds models only; they are kept because
    # deleting one while another process opens it would let two downloads through.
    locks = dest.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with _exclusive(locks / (dest.name + ".lock")):
        return _fetch_locked(
            url, dest, part, sha256, size, timeout, retries, backoff, progress, label, sleep
        )


def _fetch_locked(
    url: str,
    dest: Path,
    part: Path,
    sha256: str,
    size: int | None,
    timeout: float,
    retries: int,
    backoff: float,
    progress: bool | None,
    label: str | None,
    sleep: Callable[[float], None],
) -> Path:
    failures = 0
    best = 0
    restarted = False
    bar = _progress(size, label or dest.name, progress)
    try:
        while True:
            have = part.stat().st_size if part.is_file() else 0
            if size is not None and have > size:
                part.unlink()
                have = 0
            best = max(best, have)
            resumed = have > 0
            try:
                if size is not None and have == size:
                    digest, length = _hash_prefix(part), have
                else:
                    bar.reset(total=size)
                    bar.update(have)
                    digest, length = _transfer(url, part, have, size, timeout, bar)
            except _Restart:
                part.unlink(missing_ok=True)
                continue
            except _Retry as error:
                now = part.stat().st_size if part.is_file() else 0
                failures = 0 if now > best else failures + 1
                if failures > retries:
                    raise DownloadError(
                        f"{url}: {error}; gave up after {failures} tries without progress "
                        f"(the partial file {part} is kept: run again to resume)"
                    ) from None
                sleep(backoff * 2 ** max(failures - 1, 0))
                continue
            except DownloadError:
                part.unlink(missing_ok=True)
                raise
            if size is not None and length != size:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: got {length} bytes, the card says {size}")
            actual = digest.hexdigest()
            if actual != sha256:
                part.unlink(missing_ok=True)
                if resumed and not restarted:
                    # The stitched halves may come from two versions of the file: retry whole.
                    restarted = True
                    continue
                raise ModelFileError(
                    f"{url}: the downloaded file's sha256 {actual} differs from the card's "
                    f"{sha256}; nothing was installed"
                )
            os.replace(part, dest)
            return dest
    finally:
        bar.close()


@dataclass(frozen=True)
class PullResult:
    """What ``pull`` did for one card."""

    card: ModelCard
    path: Path
    action: Literal["downloaded", "present", "package"]


def pull(
    card: ModelCard,
    *,
    offline: bool = False,
    progress: bool | None = None,
    timeout: float = 30.0,
    retries: int = 4,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> PullResult:
    """Make sure the card's file is installed and matches the card, downloading if needed.

    A file already in place is re-hashed; one that does not match (or was imported
    unverified) is replaced by the real one.
    """
    if card.source.package:
        return PullResult(card, package_path(card), "package")
    dest = store_path(card)
    assert card.source.url and card.source.sha256  # guaranteed by the card loader
    if dest.is_file() and read_unverified(dest) is None:
        if sha256_file(dest) == card.source.sha256:
            return PullResult(card, dest, "present")
        dest.unlink()  # a corrupted copy must not stay where the model is expected
    if is_offline(offline):
        raise ModelNotInstalledError(offline_message(card))
    fetch(
        card.source.url,
        dest,
        sha256=card.source.sha256,
        size=card.source.bytes,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        progress=progress,
        label=card.id,
        sleep=sleep,
    )
    sidecar_path(dest).unlink(missing_ok=True)
    return PullResult(card, dest, "downloaded")


@dataclass(frozen=True)
class ImportResult:
    """What ``import_file`` stored, and whether its hash is the card's."""

    card: ModelCard
    path: Path
    sha256: str
    verified: bool


def _copy_hashing(source: BinaryIO, out: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := source.read(CHUNK):
        digest.update(block)
        out.write(block)
    return digest.hexdigest()


def url_cards(cards: Iterable[ModelCard] | None = None) -> list[ModelCard]:
    """The cards whose files live in the store (URL sources)."""
    pool = cardlib.builtin_cards().values() if cards is None else cards
    return [card for card in pool if card.source.url]


def _check_graph(card: ModelCard, path: Path) -> None:
    """Refuse a file that is not an ONNX graph with the card's input and output shapes."""
    from .inference import OnnxModel  # ONNX Runtime only when an unverified file arrives

    OnnxModel(card, path, threads=1, batch_rewrite=False)  # no batch-free copy beside it


def import_file(
    source: str | os.PathLike[str],
    card_ref: str | None = None,
    *,
    cards: Iterable[ModelCard] | None = None,
) -> ImportResult:
    """Copy a user's model file into the store, recognised by its sha256.

    A file that matches no card is refused unless ``card_ref`` names the card it follows;
    then it must still open as an ONNX graph whose input and output fit the card, and it is
    stored under that card's file name with an unverified-import record and a warning
    (``UserWarning``).
    """
    src = Path(source).expanduser()
    if not src.is_file():
        raise ModelFileError(f"{src}: no such file")
    pool = url_cards(cards)
    named: ModelCard | None = None
    if card_ref is not None:
        named = next((c for c in pool if c.id == card_ref), None) or cardlib.get_card(card_ref)
        if not named.source.url:
            raise ModelFileError(
                f"{src}: card {named.id} reads its file from package {named.source.package}; "
                "only downloaded (URL) models are imported"
            )
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=".import-", suffix=PART_SUFFIX, dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out, src.open("rb") as inp:
            actual = _copy_hashing(inp, out)
            out.flush()
            os.fsync(out.fileno())
        matches = [c for c in pool if c.source.sha256 == actual]
        if named is not None:
            card = named
            verified = named.source.sha256 == actual
            if not verified and matches:
                raise ModelFileError(
                    f"{src}: this is the file of card {matches[0].id}, not of {named.id}; "
                    f"import it without --card"
                )
        elif matches:
            card, verified = matches[0], True
        else:
            raise ModelFileError(
                f"{src}: sha256 {actual} matches no known model; if it follows a card, "
                "name the card with --card ID (it will be marked unverified)"
            )
        if not verified:
            _check_graph(card, src)
        dest = store_path(card)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    record = sidecar_path(dest)
    if verified:
        record.unlink(missing_ok=True)
    else:
        record.write_text(
            json.dumps(
                {
                    "card": card.id,
                    "sha256": actual,
                    "card_sha256": card.source.sha256,
                    "bytes": dest.stat().st_size,
                    "imported_from": str(src.resolve()),
                    "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        warnings.warn(
            f"{src}: sha256 {actual} is not the one card {card.id} names "
            f"({card.source.sha256}); stored at {dest} as UNVERIFIED: its results are yours "
            "to check",
            UserWarning,
            stacklevel=2,
        )
    return ImportResult(card, dest, actual, verified)


VerifyStatus = Literal["ok", "mismatch", "unverified", "changed", "missing"]


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of re-hashing one card's installed file."""

    card: ModelCard
    status: VerifyStatus
    path: Path | None
    sha256: str | None
    detail: str

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "changed")


def verify(card: ModelCard) -> VerifyResult:
    """Re-hash the card's installed file and compare it with the card (or the import record).

    ``unverified``: imported with ``--card`` and unchanged since; ``changed``: an unverified
    import whose bytes changed afterwards; ``mismatch``: a file that should match the card
    and does not.
    """
    state = install_state(card)
    if state.path is None or state.status in ("missing", "partial"):
        return VerifyResult(card, "missing", None, None, "not installed")
    actual = sha256_file(state.path)
    record = read_unverified(state.path) if not card.source.package else None
    if actual == card.source.sha256:
        return VerifyResult(card, "ok", state.path, actual, "sha256 matches the card")
    if record is not None:
        if record.get("sha256") == actual:
            return VerifyResult(
                card,
                "unverified",
                state.path,
                actual,
                "imported with --card; not the card's sha256",
            )
        return VerifyResult(
            card, "changed", state.path, actual, "changed since it was imported with --card"
        )
    if card.source.sha256 is None:
        return VerifyResult(card, "ok", state.path, actual, "the card names no sha256")
    return VerifyResult(
        card,
        "mismatch",
        state.path,
        actual,
        f"sha256 {actual} differs from the card's {card.source.sha256}",
    )
