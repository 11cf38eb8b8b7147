"""The store's on-disk layout: the one place that knows where its files go.

Under the root (``$AGEGENDER_HOME``, else the platform's user cache folder)::

    models/<file>                   downloaded and imported model files (URL, wheel and
                                    npm cards)
    models/<file>.part              a download in progress (resumed with a Range request)
    models/<file>.unverified.json   sidecar: the record of an import with --card whose
                                    sha256 is not the card's
    models/<file>.built.json        sidecar: the record of an INT8 copy built here (its
                                    sha256, what it was built from: store/quantized.py)
    locks/<file>.lock               one download of <file> at a time (kept: see download.py)
    batched/                        batch-free copies of fixed-batch graphs (onnxgraph)
    fetch/<tmp>/                    a wheel or npm tarball while its member is extracted
                                    (removed afterwards)

Nothing else computes these paths: ask :meth:`StoreLayout.default`.
"""

from __future__ import annotations

import json
import os
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
        readable by all (0644) as downloaded files are (mkstemp's are private)."""
        folder = self.models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".import-", suffix=PART_SUFFIX, dir=folder)
        os.fchmod(handle, 0o644)
        os.close(handle)
        return Path(name)


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
