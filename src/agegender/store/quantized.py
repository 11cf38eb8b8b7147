"""INT8 copies in the store: built here from the fp32 card's verified file and the ranges
shipped in ``agegender/quantization/``, then recorded beside the file.

No card can pin an INT8 copy's sha256 (ONNX Runtime's quantizer may write other bytes in
another version), so the build writes ``<file>.built.json``: the copy's sha256 and bytes,
the fp32 file's sha256, the ranges file's sha256 and the ONNX Runtime version. Loading
checks the copy against that record, and against the ranges the installed package ships
(a package upgrade with new ranges makes the copy stale: one line says to rebuild it).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..cards import ModelCard
from ..errors import CardError, ModelFileError
from .download import exclusive
from .files import card_folder
from .hashing import sha256_file
from .layout import StoreLayout, built_path, clear_unverified, read_built, write_built


def ranges_folder(card: ModelCard) -> Path | None:
    """Where the card's ranges file is: next to a card outside the package that has it there
    (as its model file would be), else None for the package's ``agegender/quantization/``."""
    folder = card_folder(card)
    if folder is not None and card.source.ranges and (folder / card.source.ranges).is_file():
        return folder
    return None


def base_card(card: ModelCard) -> ModelCard:
    """The fp32 card a copy quantizes: a built-in id, or a TOML file relative to the
    copy's own card file."""
    from ..cards import get_card

    ref = card.source.quantize
    assert ref
    folder = card_folder(card)
    if ref.endswith(".toml") and folder is not None:
        return get_card(str(folder / ref))
    return get_card(ref)


def _card_named(card_id: str, near: ModelCard) -> ModelCard | None:
    """A built-in card, or a card file next to ``near``'s, with this id (None: none)."""
    from ..cards import get_card

    try:
        return get_card(card_id)
    except CardError:
        pass
    folder = card_folder(near)
    for path in sorted(folder.glob("*.toml")) if folder is not None else ():
        try:
            found = get_card(str(path))
        except CardError:
            continue
        if found.id == card_id:
            return found
    return None


def ranges_base_id(named: str, base: ModelCard) -> str:
    """The fp32 card id the ranges must name for ``base``: its own, or that of another card
    reading the very same file (faceres-deep's age and gender cards: one graph, so one set
    of ranges and one INT8 copy for both). The ranges' sha256 is checked all the same."""
    if named == base.id or not base.source.sha256:
        return base.id
    other = _card_named(named, base)
    if other is not None and (other.source.file, other.source.sha256) == (
        base.source.file,
        base.source.sha256,
    ):
        return named
    return base.id


def _ranges_sha256(card: ModelCard) -> str:
    """The sha256 of the card's ranges file (what the copy was built from)."""
    assert card.source.ranges
    folder = ranges_folder(card)
    if folder is not None:
        data = (folder / card.source.ranges).read_bytes()
    else:
        data = resources.files("agegender.quantization").joinpath(card.source.ranges).read_bytes()
    return hashlib.sha256(data).hexdigest()


def _runtime() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _rebuild(card: ModelCard) -> str:
    return f"run 'agegender models pull {card.id}' to rebuild it"


def _other_stale_copies(card: ModelCard, path: Path) -> list[str]:
    """The built-in INT8 cards whose copy in the default store was built from ranges other
    than those shipped (a package upgrade makes them stale together: one pull for all),
    one card per file (faceres-deep's age and gender cards share one), `path` left out."""
    from ..cards import builtin_cards

    layout = StoreLayout.default()
    stale: dict[Path, str] = {}
    for other in sorted(builtin_cards().values(), key=lambda c: c.id):
        if not other.source.quantize:
            continue
        try:
            copy = layout.model_path(other)
            if copy == path or copy in stale or not copy.is_file():
                continue
            record = read_built(copy)
            if record is not None and record.get("ranges_sha256") != _ranges_sha256(other):
                stale[copy] = other.id
        except (OSError, ValueError, CardError):
            continue
    return list(stale.values())


def check_built(card: ModelCard, path: Path, *, verify: bool = True) -> None:
    """Raise ModelFileError when the copy at ``path`` is not the one its record describes,
    or was built from ranges other than those this package ships."""
    record = read_built(path)
    if record is None:
        raise ModelFileError(
            f"model {card.id}: {path} has no build record (it was not built here); {_rebuild(card)}"
        )
    try:
        shipped = _ranges_sha256(card)
    except (OSError, ValueError):
        raise ModelFileError(
            f"model {card.id}: no ranges file {card.source.ranges} (in the package's "
            "quantization/ or next to the card)"
        ) from None
    if record.get("ranges_sha256") != shipped:
        stale = [card.id, *_other_stale_copies(card, path)]
        what = "it" if len(stale) == 1 else "it and the other stale INT8 copies in the store"
        raise ModelFileError(
            f"model {card.id}: {path} was built from other ranges than this package's "
            f"quantization/{card.source.ranges}; run 'agegender models pull "
            f"{' '.join(stale)}' to rebuild {what}"
        )
    if path.stat().st_size != record.get("bytes") or (
        verify and sha256_file(path) != record.get("sha256")
    ):
        raise ModelFileError(
            f"model {card.id}: {path} changed since it was built; {_rebuild(card)}"
        )


def build_copy(
    card: ModelCard, base: ModelCard, base_path: Path, layout: StoreLayout
) -> tuple[Path, Literal["built", "present"]]:
    """Build the card's INT8 copy of ``base``'s file at ``base_path`` into the store, unless
    an intact copy built from the same fp32 file, ranges and ONNX Runtime is there."""
    from ..quantization import build, check_base, load_ranges

    assert card.source.ranges
    dest = layout.model_path(card)
    base_sha = sha256_file(base_path)
    ranges = load_ranges(card.source.ranges, ranges_folder(card))
    check_base(ranges, ranges_base_id(ranges.card, base), base_sha)
    wanted: dict[str, Any] = {
        "card": card.id,
        "base": base.id,
        "base_sha256": base_sha,
        "ranges": card.source.ranges,
        "ranges_sha256": _ranges_sha256(card),
        "onnxruntime": _runtime(),
    }
    record = read_built(dest) if dest.is_file() else None
    # the cards sharing one copy (one file, one ranges file) differ only in card and base
    same = [k for k in wanted if k not in ("card", "base")]
    if record is not None and all(record.get(k) == wanted[k] for k in same):
        try:
            check_built(card, dest)
        except ModelFileError:
            pass
        else:
            return dest, "present"
    layout.models_dir().mkdir(parents=True, exist_ok=True)
    with exclusive(layout.lock_path(dest)):
        tmp = layout.staging_file()
        try:
            build(base_path, ranges, tmp)
            sha = sha256_file(tmp)
            size = tmp.stat().st_size
            built_path(dest).unlink(missing_ok=True)  # no old record beside the new file
            clear_unverified(dest)  # nor an import's (older releases let one be made)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        write_built(
            dest,
            {
                **wanted,
                "sha256": sha,
                "bytes": size,
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
    return dest, "built"
