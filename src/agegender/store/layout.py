"""The store's on-disk layout: the one place that knows where its files go.

Under the root (``$AGEGENDER_HOME``, else the platform's user cache folder)::

    models/<file>                   downloaded and imported model files (URL, wheel and
                                    npm cards)
    models/<file>.part              a download in progress (resumed with a Range request)
    models/<file>.unverified.json   sidecar: the record of an import with --card whose
                                    sha256 is not the card's
    models/<file>.built.json        sidecar: the record of an INT8 copy built here (its
                                    sha256, what it was built from: store/quantized.py)
    models/<file>.installed.json    sidecar: which card's file was installed there (its
                                    sha256, size and time), so that another card naming
                                    the same file is refused, not run on it
    models/.import-<host>-<pid>-<random>.part
                                    a file being imported, extracted or built (renamed
                                    into place; one whose process is gone is removed)
    locks/<file>.lock               one download of <file> at a time (kept: see download.py)
    batched/                        batch-free copies of fixed-batch graphs (onnxgraph)
    fetch/<tmp>/                    a wheel or npm tarball while its member is extracted
                                    (removed afterwards)

Nothing else computes these paths: ask :meth:`StoreLayout.default`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platformdirs import user_cache_dir

if TYPE_CHECKING:
    from ..cards import ModelCard

HOME_ENV = "AGEGENDER_HOME"
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
UNVERIFIED_SUFFIX = ".unverified.json"
BUILT_SUFFIX = ".built.json"
INSTALLED_SUFFIX = ".installed.json"


@dataclass(frozen=True)
class StoreLayout:
    """Where the store keeps model files, partial downloads, locks, sidecars and graph copies."""

    root: Path

    @classmethod
    def default(cls) -> StoreLayout:
        """The layout under ``$AGEGENDER_HOME`` (read now), else the user cache folder."""
        env = os.environ.get(HOME_ENV)
        return cls(Path(env).expanduser() if env else Path(user_cache_dir("agegender")))

    def models_dir(self) -> Path:
        """The folder of downloaded and imported model files."""
        return self.root / "models"

    def locks_dir(self) -> Path:
        """The folder of download locks (apart, so the models folder holds models only)."""
        return self.root / "locks"

    def graph_cache_dir(self) -> Path:
        """The folder of batch-free copies of graphs that live in read-only folders."""
        return self.root / "batched"

    def fetch_dir(self) -> Path:
        """The folder of temporary folders holding fetched wheels and npm tarballs."""
        return self.root / "fetch"

    def model_path(self, card: ModelCard) -> Path:
        """Where a stored (URL, wheel or npm) card's file lives."""
        return self.models_dir() / card.source.file

    def lock_path(self, dest: Path) -> Path:
        """The lock held while ``dest`` is being downloaded."""
        return self.locks_dir() / (dest.name + LOCK_SUFFIX)

    def staging_file(self) -> Path:
        """A new empty file in the models folder (same disk: ``os.replace`` installs it),
        readable by all (0644) as downloaded files are (mkstemp's are private).

        Its name holds this host and process; staging files of this host whose process
        is gone (an import killed with SIGKILL, a power cut) are removed first."""
        folder = self.models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        host = _host_tag()
        _remove_orphaned_staging(folder, host)
        handle, name = tempfile.mkstemp(
            prefix=f".import-{host}-{os.getpid()}-", suffix=PART_SUFFIX, dir=folder
        )
        os.fchmod(handle, 0o644)
        os.close(handle)
        return Path(name)


def _host_tag() -> str:
    """This machine's name as a file name's part (a store may be shared over NFS)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _remove_orphaned_staging(folder: Path, host: str) -> None:
    """Remove this host's staging files whose process no longer runs. Other hosts'
    are left alone (their processes cannot be seen from here), and so is a file whose
    process id was reused (kept until that process ends: harmless)."""
    pattern = re.compile(re.escape(f".import-{host}-") + r"(\d+)-[^/]*" + re.escape(PART_SUFFIX))
    for entry in folder.iterdir():
        found = pattern.fullmatch(entry.name)
        pid = int(found.group(1)) if found else 0
        if found and pid != os.getpid() and not _alive(pid) and entry.is_file():
            entry.unlink(missing_ok=True)


def part_path(dest: Path) -> Path:
    """Where a download of ``dest`` collects its bytes until they are checked."""
    return dest.with_name(dest.name + PART_SUFFIX)


def sidecar_path(path: Path) -> Path:
    """Where the record of an unverified import (``models import --card``) of ``path`` lives."""
    return path.with_name(path.name + UNVERIFIED_SUFFIX)


def read_unverified(path: Path) -> dict[str, Any] | None:
    """The unverified-import record of a store file, or None for a verified one."""
    record = sidecar_path(path)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def write_unverified(path: Path, record: dict[str, Any]) -> None:
    """Mark ``path`` as an unverified import, with ``record`` saying what it is."""
    sidecar_path(path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def clear_unverified(path: Path) -> None:
    """``path`` now matches its card: drop any unverified-import record."""
    sidecar_path(path).unlink(missing_ok=True)


def installed_path(path: Path) -> Path:
    """Where the record of the card whose file was installed at ``path`` lives."""
    return path.with_name(path.name + INSTALLED_SUFFIX)


def read_installed(path: Path) -> dict[str, Any] | None:
    """The install record of a store file (None without one: older installs, imports
    with --card, files put there by hand)."""
    try:
        data = json.loads(installed_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mark_installed(path: Path, card_id: str, sha256: str | None) -> None:
    """``path`` now holds the card's own (checked) file: record it, drop any
    unverified-import record."""
    clear_unverified(path)
    stat = path.stat()
    record = {
        "card": card_id,
        "sha256": sha256,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    installed_path(path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def clear_installed(path: Path) -> None:
    installed_path(path).unlink(missing_ok=True)


def built_path(path: Path) -> Path:
    """Where the record of a file built here (an INT8 copy) lives."""
    return path.with_name(path.name + BUILT_SUFFIX)


def read_built(path: Path) -> dict[str, Any] | None:
    """The build record of a store file, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads(built_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_built(path: Path, record: dict[str, Any]) -> None:
    """Record how ``path`` was built (written after the file itself is in place)."""
    built_path(path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def home() -> Path:
    """The store's root (``StoreLayout.default().root``)."""
    return StoreLayout.default().root


def models_dir() -> Path:
    """The folder that holds downloaded and imported model files."""
    return StoreLayout.default().models_dir()


def store_path(card: ModelCard) -> Path:
    """Where a downloaded (URL) card's file lives in the default store."""
    return StoreLayout.default().model_path(card)
