"""Inputs of a batch job, streamed: every argument becomes a sequence of Input records.

An argument is, in this order of checks:

- a URI with a scheme (``s3://bucket/prefix/``, ``gs://...``, ``file:///...``): a file or
  a prefix listed recursively through ``pyarrow.fs``;
- a list of paths, by its suffix: ``.txt``/``.lst`` (one path a line; blank lines and
  ``#`` comments skipped), ``.csv`` (the ``path`` column, else the first), ``.parquet``
  (the ``path`` column); relative entries are relative to the list's folder; read in
  blocks, never whole; a list that fails part way gives an error row of its own after
  the entries read before it failed;
- a folder: its image and video files, recursively, with predict's rules (hidden files
  and folders skipped, folders agegender marked as outputs skipped, links to folders
  not followed), each folder's entries in name order, walked lazily;
- a glob (``photos/**/*.jpg``) that names no existing file: its matches, sorted, less
  those in folders agegender marked as outputs below the glob's fixed part;
- anything else: one image or video file (a missing one becomes an error row).

Each Input carries its resume key: a 64-bit hash of (path, size, mtime) or, with
``--key hash``, of (path, sha256 of the content).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any

from ..errors import AgegenderError
from ..images import (
    IMAGE_SUFFIXES,
    NOT_REGULAR,
    OUTPUT_MARKER,
    VIDEO_SUFFIXES,
    is_output_folder,
)

MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
TEXT_LISTS = frozenset({".txt", ".lst"})
LIST_SUFFIXES = TEXT_LISTS | {".csv", ".parquet"}
KEY_MODES = ("stat", "hash")
_GLOB_CHARS = set("*?[")
_LIST_BLOCK = 8192  # rows read at a time from a Parquet list
# Left as they are when a URI typed with a raw key is percent-encoded (the rest is).
URI_SAFE = "/:@"


@dataclass(frozen=True)
class Input:
    """One input file: its path as reported, how to read it, and what keys it."""

    path: str
    size: int = -1  # -1: unknown (missing or unreadable: the estimator reports why)
    mtime_ns: int = -1
    remote: bool = False  # read through pyarrow.fs (path is a URI)
    error: str | None = None  # why it gives no result, known before reading it (a list)
    # The row of a source (a URI) that could not be listed: `error` says why; its key is
    # the URI's alone, and its attempt is always recorded (job.attempt_record)
    unlisted: bool = False
    # Not an input: the mark that the source `path` (a URI) was listed in full, after its
    # inputs (iter_inputs with `listed`); keyed as that source's unlisted row, which the
    # job then retires if an earlier run wrote it (job.pending, Dataset.relisted)
    listed: bool = False


def is_uri(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isalnum() and len(scheme) > 1


def is_video(path: str) -> bool:
    return Path(path.split("?", 1)[0]).suffix.lower() in VIDEO_SUFFIXES


def stat_key(path: str, size: int, mtime_ns: int) -> int:
    return _key64(f"{path}\0{size}\0{mtime_ns}")


def hash_key(path: str, sha256: str) -> int:
    return _key64(f"{path}\0sha256:{sha256}")


def _key64(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def check_sources(items: list[str]) -> None:
    """One-line errors, before any work, for arguments that cannot stand for anything."""
    for item in items:
        if is_uri(item):
            _check_uri(item)
            continue
        suffix = Path(item).suffix.lower()
        if Path(item).exists():
            if suffix == ".parquet" and Path(item).is_file():
                _parquet_list(item)  # its footer and its path column, before any model loads
            continue
        if _GLOB_CHARS & set(item):
            continue  # a glob may match nothing: no inputs from it
        if suffix in LIST_SUFFIXES:
            raise AgegenderError(f"{item}: no such list file")
        # a missing image is an error row of its own, as in predict


def _check_uri(item: str) -> None:
    """A URI that does not parse, and a Parquet list in an object store that is missing or
    not one (as for a local list); a store that cannot be reached is the rows' error."""
    fs, path = filesystem(item)
    if Path(path).suffix.lower() != ".parquet":
        return
    try:
        stream = fs.open_input_file(path)
    except FileNotFoundError:
        raise AgegenderError(f"{item}: no such list file") from None
    except OSError:
        return  # unreachable now: the job's row for it says why
    with stream:
        _parquet_list(item, stream)


def _parquet_list(item: str, stream: Any = None) -> Any:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(stream if stream is not None else item)
    except Exception as error:
        raise AgegenderError(f"{item}: not a readable Parquet list ({one_line(error)})") from None
    if "path" not in parquet.schema_arrow.names:
        raise AgegenderError(f"{item}: a Parquet list needs a 'path' column")
    return parquet


def iter_inputs(items: list[str], stat: bool = True, listed: bool = False) -> Iterator[Input]:
    """Every input of the arguments, in order, streamed (without `stat`: paths only, for
    counting). With `listed`, also each object-store source that could be listed, as an
    Input with `listed` set after that source's inputs (see Input.listed)."""
    for item in items:
        for entry in _expand(item, stat):
            if listed or not entry.listed:
                yield entry


def _expand(item: str, stat: bool) -> Iterator[Input]:
    if is_uri(item):
        yield from _expand_uri(item, stat)
        return
    path = Path(item)
    if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        yield from _listed(item, _local_list(item, stat), lambda: local_input(item, stat))
    elif path.is_dir():
        yield from _walk(item, stat)
    elif not path.exists() and _GLOB_CHARS & set(item):
        for match in _glob(item):
            if Path(match).is_dir():
                yield from _walk(match, stat)
            elif Path(match).name.startswith("."):
                continue
            else:
                yield local_input(match, stat)
    else:
        yield local_input(item, stat)


DATASET_MANIFEST = "_agegender/manifest.json"  # = dataset.MANIFEST (dataset imports numpy)


def _glob(pattern: str) -> list[str]:
    """A glob's matches, sorted, less those in a folder agegender made as its output
    (``--annotate`` inside a photo folder, a batch dataset) below the pattern's fixed
    part, as a folder walk skips them: 'photos/**/*.jpg' read the annotated copies as
    inputs."""
    fixed: list[str] = []
    for part in Path(pattern).parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    depth = len(fixed)
    marked: dict[Path, bool] = {}  # each folder looked at once, however many matches

    def is_marked(folder: Path) -> bool:
        if folder not in marked:
            # an --annotate folder, or a batch dataset (the job's own DEST: 'photos/**/*'
            # read its parts and its _agegender files, more of them at every run)
            marked[folder] = is_output_folder(folder) or (folder / DATASET_MANIFEST).is_file()
        return marked[folder]

    kept = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        below = [p for p in (path, *path.parents) if len(p.parts) > depth]
        if not any(is_marked(p) for p in below):
            kept.append(match)
    return kept


def local_input(path: str, stat: bool = True) -> Input:
    if not stat:
        return Input(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return Input(path)
    if not (S_ISREG(st.st_mode) or S_ISDIR(st.st_mode)):
        # a pipe or a device: reading one waited for a writer forever, or without end
        return Input(path, error=f"{path}: {NOT_REGULAR}")
    return Input(path, st.st_size, st.st_mtime_ns)


def _listed(item: str, inputs: Iterator[Input], itself: Any) -> Iterator[Input]:
    """The inputs a list names; if reading it fails part way (a damaged file, a lost
    connection), one more input: the list itself (`itself()`) with the error, so the job
    goes on with its other sources."""
    count = 0
    try:
        for entry in inputs:
            count += 1
            yield entry
    except Exception as error:
        text = one_line(error)
        if not (count == 0 and isinstance(error, AgegenderError)):
            text = f"{item}: cannot read the list after {count} entries ({text})"
        yield replace(itself(), error=text)


def _walk(folder: str, stat: bool = True) -> Iterator[Input]:
    """predict's folder rules (images.expand_each, os.walk: links to folders are not
    followed, so a link loop is not walked forever), walked lazily in name order."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                if not os.path.isfile(os.path.join(entry.path, OUTPUT_MARKER)):
                    yield from _walk(entry.path, stat)
            elif Path(entry.name).suffix.lower() not in MEDIA_SUFFIXES:
                continue
            elif entry.is_symlink() and not os.path.exists(entry.path):
                # a dangling link or a loop: an input whose row says why it cannot be read
                yield Input(entry.path)
            elif entry.is_file():
                if not stat:
                    yield Input(entry.path)
                    continue
                st = entry.stat()
                yield Input(entry.path, st.st_size, st.st_mtime_ns)
        except OSError:
            continue


def _resolve(entry: str, base: str) -> str:
    if is_uri(entry) or os.path.isabs(entry) or not base:
        return entry
    return os.path.join(base, entry)


def _local_list(item: str, stat: bool) -> Iterator[Input]:
    base = os.path.dirname(item)
    for entry in list_entries(item):
        yield _entry_input(_resolve(entry, base), stat)


def _entry_input(path: str, stat: bool = True) -> Input:
    if is_uri(path):
        return remote_input(path) if stat else Input(path, remote=True)
    return local_input(path, stat)


def list_entries(item: str, stream: Any = None) -> Iterator[str]:
    """The paths of a list file (text, CSV or Parquet), streamed."""
    suffix = Path(item.split("?", 1)[0]).suffix.lower()
    if suffix == ".parquet":
        parquet = _parquet_list(item, stream)
        # Row group by row group: the entries of the groups before a damaged one are used.
        for group in range(parquet.num_row_groups):
            blocks = parquet.iter_batches(
                batch_size=_LIST_BLOCK, row_groups=[group], columns=["path"]
            )
            for block in blocks:
                for value in block.column(0).to_pylist():
                    if value:
                        yield str(value)
        return
    text = (
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8" writes one) is not part of the
        # first entry or of the header's "path"
        io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        if stream is not None
        else open(item, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
    )
    with text:
        if suffix == ".csv":
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                return
            column = header.index("path") if "path" in header else 0
            if "path" not in header and header and header[0].strip():
                yield header[0].strip()  # no header: the first line is an entry
            for row in reader:
                if len(row) > column and row[column].strip():
                    yield row[column].strip()
            return
        for line in text:
            entry = line.rstrip("\r\n")
            if entry.strip() and not entry.lstrip().startswith("#"):
                yield entry


# -- object stores (pyarrow.fs) ----------------------------------------------------------
def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) of a URI; a one-line error if unsupported."""
    from pyarrow import fs as pafs

    # A '#' is part of the key: a fragment means nothing to a store, and pyarrow dropped
    # it, so 's3://b/x#y.jpg' read the object 'x' under that name.
    parsed = uri.replace("#", "%23")
    try:
        return pafs.FileSystem.from_uri(parsed)
    except Exception as error:
        # A key typed as it is (a space, a non-ASCII letter): percent-encoded, it parses.
        scheme, _, rest = uri.partition("://")
        quoted = f"{scheme}://{urllib.parse.quote(rest, safe=URI_SAFE)}"
        if quoted != uri:
            try:
                return pafs.FileSystem.from_uri(quoted)
            except Exception:
                pass
        raise AgegenderError(f"{uri}: cannot open ({one_line(error)})") from None


def object_uri(prefix: str, path: str) -> str:
    """The URI of a listed object: its key percent-encoded, so that reading the URI back
    (FileSystem.from_uri decodes it) gives exactly that key (a key holding a space, '%',
    '#', '?' or a non-ASCII letter was unreadable, or read another object)."""
    return prefix + urllib.parse.quote(path, safe="/")


def one_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _expand_uri(uri: str, stat: bool) -> Iterator[Input]:
    from pyarrow import fs as pafs

    fs, path = filesystem(uri)
    scheme = uri.split("://", 1)[0]
    prefix = uri[: len(uri) - len(uri.split("://", 1)[1])]  # "s3://"
    try:
        info = fs.get_file_info(path)
        found = []
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path.rstrip("/"), recursive=True)
            found = [
                f
                for f in fs.get_file_info(selector)
                if f.type == pafs.FileType.File
                and Path(f.path).suffix.lower() in MEDIA_SUFFIXES
                and not any(part.startswith(".") for part in Path(f.path).parts)
            ]
    except (FileNotFoundError, PermissionError) as error:
        # A local file system's answer (file://), the same on the next try: final, as a
        # missing or unreadable file's row is
        what = "no such file" if isinstance(error, FileNotFoundError) else "permission denied"
        yield Input(uri, remote=True, error=f"{uri}: {what} ({one_line(error)})", unlisted=True)
        return
    except OSError as error:  # the store cannot be reached, access denied, a timeout, ...
        # transient (job.TRANSIENT_MARKS): the next run lists it again, and once it is
        # listed this row leaves the dataset (the `listed` mark below)
        yield Input(
            uri, remote=True, error=f"{uri}: cannot list ({one_line(error)})", unlisted=True
        )
        return
    if info.type == pafs.FileType.Directory:
        for f in sorted(found, key=lambda f: f.path):
            yield Input(object_uri(prefix, f.path), f.size or 0, f.mtime_ns or 0, remote=True)
    elif Path(path).suffix.lower() in LIST_SUFFIXES and info.type == pafs.FileType.File:
        base = prefix + os.path.dirname(path) if scheme else ""

        def entries() -> Iterator[Input]:
            with fs.open_input_file(path) as stream:
                for entry in list_entries(uri, stream):
                    yield _entry_input(_resolve(entry, base), stat)

        itself = Input(uri, info.size or 0, info.mtime_ns or 0, remote=True)
        yield from _listed(uri, entries(), lambda: itself)
    else:
        yield remote_input(uri, info)
    # After the source's inputs: the row of an earlier run's failed listing of it is
    # retired only once they are all committed (a later failing listing finds it again)
    yield Input(uri, remote=True, listed=True)


def remote_input(uri: str, info: Any = None) -> Input:
    from pyarrow import fs as pafs

    if info is None:
        try:
            fs, path = filesystem(uri)
            info = fs.get_file_info(path)
        except Exception:
            return Input(uri, remote=True)
    if info.type != pafs.FileType.File:
        return Input(uri, remote=True)
    return Input(uri, info.size or 0, info.mtime_ns or 0, remote=True)


def read_remote(uri: str) -> bytes:
    from ..errors import ImageError

    try:
        fs, path = filesystem(uri)
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except AgegenderError as error:
        raise ImageError(str(error)) from None
    except FileNotFoundError:
        raise ImageError(f"{uri}: no such file") from None
    except OSError as error:  # the store's I/O error, a timeout: worth another try
        raise ImageError(f"{uri}: cannot read ({one_line(error)})") from None
    except Exception as error:  # a key pyarrow cannot address ('a//b'): the same next time
        raise ImageError(f"{uri}: cannot read this key ({one_line(error)})") from None
