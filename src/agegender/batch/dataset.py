"""The output folder of a batch job: manifest, lock, atomic parts with their input keys.

    DEST/part-<run>-<seq>.parquet     rows (or .jsonl / .csv), written to a temporary name
                                      and renamed: readers never see half a part
    DEST/_agegender/manifest.json     configuration, model hashes, sink, key mode
    DEST/_agegender/keys/<part>.npy   the input keys a part holds: written (temp + rename)
                                      after its part; a part is committed once its keys are
    DEST/_agegender/attempts/<part>.npy  (key, attempt, transient) of the part's inputs that
                                      failed with a transient error or were a retry: written
                                      before the keys, so a committed part always has it
                                      (transient 2: a retirement, see below)
    DEST/_agegender/lock              held (flock) by the one job writing DEST
    DEST/_agegender/inflight/<part>.json  a Ray actor's note of the part it is doing (and,
                                      after an actor died, of the input): see ray_engine
    DEST/_agegender/inflight/start-<run>-<actor>.json  a Ray actor's note that it is
                                      loading the models (and how often it died doing so)

On resume a part without its keys file (the job died between the two writes) and any
temporary file are removed, and the committed keys say which inputs are done: a job
killed at any moment redoes at most the parts it had in flight. Who writes a part does
not matter: the local engine writes its own, Ray actors write theirs (``write_part``)
and the driver commits their keys. Readers that skip names starting with ``_`` or ``.``
(pyarrow.dataset, DuckDB's ``DEST/*.parquet``) see rows only. DEST may be a local folder
or an object-store URI (pyarrow.fs; locked by ``lock.py``'s lock object, which a
second job finds and stops on).

Retries: an input whose error is transient (``transient``: an I/O error, a timeout) is
done again by a later run until it has had ``max_attempts``. Its new rows go into a new
part and the old part is then rewritten without the old rows (``prune``): the key with
the highest attempt wins, and a run that dies between the two leaves a state the next
run repairs the same way (pruning is idempotent: rows are found by their key).

Retirements: a source (an object-store prefix) whose listing failed has one error row,
`<uri>: cannot list (...)` (transient) or, on a local file system, `permission denied`
or `no such file` (final), keyed as the URI alone and recorded. A later run that lists it
in full (``relisted``) commits, after all of the run's parts, a part with no rows holding
that key at the next attempt, recorded as RETIRED (``retire_relisted``); pruning then
removes the older row as for any retry, and then the retirement part itself (keys file
first): the dataset is an uninterrupted run's, which never had the row. A kill at any
step leaves a state the next run's pruning finishes; the retirement is committed only
after the source's objects are, so a kill never leaves them missing without the row.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import __version__
from ..config import name_too_long
from ..errors import AgegenderError
from ..locking import LockHeld, try_exclusive
from . import sources

log = logging.getLogger(__name__)

META = "_agegender"
MANIFEST = f"{META}/manifest.json"
KEYS = f"{META}/keys"
ATTEMPTS = f"{META}/attempts"
# A Ray actor's note of the part it is doing (removed once the part is written): found by
# the retry of a task whose actor process died, it names the input that was being read;
# and its note that it is loading the models (removed once loaded), found by its restart
INFLIGHT = f"{META}/inflight"
LOCK = f"{META}/lock"
# One note per kind of CPU that ran the models for this DEST (sessions.cpu_kind), written
# by the local job or by each Ray actor: with INT8 copies, rows from two kinds may differ
# by about a year of age, and a resume or a cluster can mix them
CPUS = f"{META}/cpus"
FORMAT = "agegender-batch/1"
SINKS = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}
TMP_PREFIX = ".tmp-"
PART_PREFIX = "part-"
# The names this project writes beside the user's files in DEST, and the only ones it
# removes there: part-<run>-<seq>.<sink> (run: time and 8 hex digits; seq: 6 digits or
# more) and the temporary .tmp-<pid>-<part> of one being written. A user's part-notes.csv
# or .tmp-keep is not one of them.
_PART_NAME = re.compile(r"part-\d{8}T\d{6}-[0-9a-f]{8}-\d{6,}\.(?:parquet|jsonl|csv)")
_TMP_PART_NAME = re.compile(r"\.tmp-\d+-" + _PART_NAME.pattern)
# The manifest's temporary copy (in _agegender/), left by a job killed while writing it.
_TMP_MANIFEST_NAME = re.compile(r"\.tmp-\d+-manifest\.json")
# (input key, attempt number, 1 if its error was transient) of a part's retried or failed inputs
ATTEMPT_DTYPE = np.dtype([("key", "<u8"), ("attempt", "<u2"), ("transient", "u1")])
# the "transient" of a retirement: the key's older rows go, then the key itself
RETIRED = 2
DEFAULT_MAX_ATTEMPTS = 3
# Options of the configuration that change how fast rows come, not what they hold (ONNX
# Runtime threads, faces per model run, decode/detect threads: the values differ by float
# noise, ~4e-7 relative, on one machine): not in the manifest, so a resume may tune them.
# (Another CPU kind rounds the fp32 layers before faceres-deep's INT8 copy otherwise, which
# that copy amplifies to about a year of age: README, "7-bit weights".)
EXECUTION_OPTIONS = ("threads", "batch_size", "workers")
# Below this many keys a Python set answers "done?"; above, sorted arrays (8 bytes a key).
SET_LIMIT = 1_000_000


class _Files:
    """The few file operations the dataset needs, on a local folder or an object store."""

    def __init__(self, dest: str):
        self.dest = dest
        self.remote = sources.is_uri(dest)
        if self.remote:
            self.fs, self.root = sources.filesystem(dest)
            self.root = self.root.rstrip("/")
            if self.fs.type_name == "s3" and "allow_delayed_open" not in dest:
                # One PutObject per (small) object, sent when it is closed, instead of a
                # multipart upload begun at open: a job killed mid-write left the begun
                # upload in the bucket (unlisted, billed) until a lifecycle rule ends it.
                # (a pyarrow without allow_delayed_open keeps the multipart upload)
                rebuild, (options,) = self.fs.__reduce__()
                with contextlib.suppress(TypeError, ValueError):
                    self.fs = rebuild({**options, "allow_delayed_open": True})

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}" if self.remote else os.path.join(self.dest, name)

    def kind(self, name: str = "") -> str:
        """'missing', 'file' or 'dir' ("file/" is the file, not a missing folder)."""
        if self.remote:
            from pyarrow import fs as pafs

            info = self.fs.get_file_info(self._p(name) if name else self.root)
            return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(
                info.type, "missing"
            )
        path = self._p(name) if name else (self.dest.rstrip(os.sep) or os.sep)
        if os.path.isdir(path):
            return "dir"
        return "file" if os.path.lexists(path) else "missing"

    def names(self, sub: str = "") -> list[str]:
        if self.remote:
            from pyarrow import fs as pafs

            base = self._p(sub) if sub else self.root
            selector = pafs.FileSelector(base, allow_not_found=True)
            return sorted(Path(f.path).name for f in self.fs.get_file_info(selector))
        try:
            return sorted(os.listdir(self._p(sub) if sub else self.dest))
        except FileNotFoundError:
            return []

    def mkdirs(self) -> None:
        for sub in (KEYS, ATTEMPTS, INFLIGHT, CPUS):
            if self.remote:
                self.fs.create_dir(self._p(sub), recursive=True)
            else:
                os.makedirs(self._p(sub), exist_ok=True)

    @property
    def object_store(self) -> bool:
        """An object store publishes an object whole when its upload completes (S3 PUT or
        multipart completion, GCS): a write there needs no temporary name, whose "rename"
        would be a copy and a delete."""
        return self.remote and self.fs.type_name in ("s3", "gcs")

    def read(self, name: str) -> bytes:
        if self.remote:
            with self.fs.open_input_stream(self._p(name)) as stream:
                return bytes(stream.read())
        with open(self._p(name), "rb") as f:
            return f.read()

    def write_atomic(self, name: str, data: bytes) -> None:
        """`data` under `name`, never half written: a temporary name, then a rename."""
        folder, _, base = name.rpartition("/")
        tmp = f"{folder + '/' if folder else ''}{TMP_PREFIX}{os.getpid()}-{base}"
        if self.object_store:
            with self.fs.open_output_stream(self._p(name)) as stream:
                stream.write(data)
            return
        if self.remote:
            with self.fs.open_output_stream(self._p(tmp)) as stream:
                stream.write(data)
            self.fs.move(self._p(tmp), self._p(name))
            return
        fd = os.open(self._p(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._p(tmp), self._p(name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self._p(tmp))
            raise

    def delete(self, name: str) -> None:
        if self.remote:
            self.fs.delete_file(self._p(name))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._p(name))


def store_failure(error: BaseException) -> bool:
    """An error of DEST's store or file system (pyarrow's OSError, botocore's errors for
    the lock object): the job stops with one line instead of a traceback."""
    return isinstance(error, OSError) or type(error).__module__.startswith("botocore")


@contextlib.contextmanager
def writing(dest: str) -> Iterator[None]:
    """Errors of DEST's store (gone, refusing, timing out) as one line; committed parts
    stay, so the same command resumes once the store is back."""
    try:
        yield
    except Exception as error:
        if not store_failure(error) or isinstance(error, AgegenderError):
            raise
        raise AgegenderError(
            f"--out {dest}: cannot write it ({sources.one_line(error)}); the parts "
            "committed so far stay and the same command resumes"
        ) from None


def check_dest(dest: str) -> None:
    """Refuse, before any work, a DEST that is a file or a folder agegender did not make
    (other files in a folder agegender made are left alone: only its own names are
    written or removed)."""
    if not dest.strip():
        raise AgegenderError("--out '': an empty path (give the dataset's folder)")
    files = _Files(dest)
    if files.remote:
        try:
            _check_remote_dest(files)
        except OSError as error:  # the store cannot be reached, access denied, ...
            raise AgegenderError(
                f"--out {dest}: cannot reach it ({sources.one_line(error)})"
            ) from None
    kind = files.kind()
    if kind == "file":
        raise AgegenderError(f"--out {dest}: exists and is not a folder (batch writes a folder)")
    if kind == "dir":
        if files.kind(META) == "file":
            raise AgegenderError(
                f"--out {dest}: holds a file named {META}, which agegender batch did not "
                "make; choose a new or empty folder"
            )
        names = [n for n in files.names() if n != META]
        if files.kind(MANIFEST) != "file" and names:
            raise AgegenderError(
                f"--out {dest}: a folder agegender batch did not make (no {MANIFEST}); "
                "choose a new or empty folder"
            )
    if not files.remote:
        parent = os.path.dirname(os.path.abspath(dest))
        if kind == "missing" and not os.path.isdir(parent):
            raise AgegenderError(f"--out {dest}: the folder {parent} does not exist")
        name = os.path.basename(os.path.abspath(dest))
        if kind == "missing" and name_too_long(name):  # made after the models load
            raise AgegenderError(f"--out {dest}: the name is too long for a folder")
        target = dest if kind == "dir" else parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise AgegenderError(f"--out {dest}: not writable (permission denied)")


def _check_remote_dest(files: _Files) -> None:
    """An object-store DEST: reachable, and in a bucket that exists (pyarrow would make
    the "folder" and fail only on the first write, after the models load)."""
    from pyarrow import fs as pafs

    files.kind()
    bucket = files.root.split("/", 1)[0]
    if bucket and files.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise AgegenderError(f"--out {files.dest}: the bucket {bucket} does not exist")


def check_not_a_source(dest: str, items: list[str]) -> None:
    """Refuse a DEST that is also one of the sources (a missing input named like DEST
    would otherwise be walked as the new, empty folder and give no row)."""

    def same(path: str) -> str:
        if sources.is_uri(path):
            return path.rstrip("/")
        return os.path.normcase(os.path.abspath(path))

    target = same(dest)
    for item in items:
        if same(item) == target:
            raise AgegenderError(f"--out {dest}: also given as a source; choose another --out")


def _ours(name: str) -> bool:
    """A part file or a part's temporary file, by the names this project gives them."""
    return bool(_PART_NAME.fullmatch(name) or _TMP_PART_NAME.fullmatch(name))


def _part(name: str) -> bool:
    return bool(_PART_NAME.fullmatch(name))


class Dataset:
    """An open output folder: which inputs are done, and commit of new parts."""

    def __init__(
        self,
        dest: str,
        manifest: dict[str, Any],
        sink: str,
        overwrite: bool,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ):
        self.dest = dest
        self.sink = sink
        self.suffix = SINKS[sink]
        self.files = _Files(dest)
        self.manifest = manifest
        self.key_mode = str(manifest.get("key", "stat"))
        # --video-rows tracks: the track columns in every part (rows.TRACK_COLUMNS)
        self.tracks = (manifest.get("video") or {}).get("rows") == "tracks"
        self.max_attempts = max_attempts
        self._lock_file: Any = None
        self._object_lock: Any = None
        check_dest(dest)
        try:
            self.files.mkdirs()
        except OSError as error:  # a file system that refuses the folder (/proc as root, ...)
            raise AgegenderError(
                f"--out {dest}: cannot make the folder ({sources.one_line(error)})"
            ) from None
        try:
            with writing(dest):
                self._open(manifest, overwrite)
        except BaseException:
            self.close()  # the lock of a job that cannot go on
            raise

    def _open(self, manifest: dict[str, Any], overwrite: bool) -> None:
        dest = self.dest
        self._lock()
        try:
            old = self._read_manifest()
            if old is not None and old != manifest and not overwrite:
                raise AgegenderError(f"--out {dest}: {_difference(old, manifest)}")
            if overwrite:
                self._remove_all()
            self._recover()
            if old is None or overwrite:
                self.files.write_atomic(MANIFEST, json.dumps(manifest, indent=2).encode())
        except BaseException:
            self.close()  # an object-store lock would otherwise stay until it expires
            raise
        # Unique per run (two runs in one second and process must not share names).
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        self.seq = 0
        self.parts_written = 0
        self._sorted: list[NDArray[np.uint64]] = []
        self._set: set[int] = set()
        self._retry_taken: set[int] = set()
        self._retry: dict[int, tuple[int, bool]] = {}
        self._relisted: dict[int, int] = {}  # key -> attempt of its retirement
        self.prune()  # rows a retry superseded, left by a run that died before pruning
        self.done_before = self._load_keys()

    # -- opening ------------------------------------------------------------------------
    def _lock(self) -> None:
        if self.files.remote:
            from .lock import ObjectLock

            self._object_lock = ObjectLock(self.files, LOCK, self.dest)
            self._object_lock.acquire()
            return
        self._lock_file = open(os.path.join(self.dest, LOCK), "a+b")  # noqa: SIM115
        try:
            locked = try_exclusive(self._lock_file.fileno())
        except LockHeld:
            self._lock_file.seek(0)
            holder = self._lock_file.read(200).decode("utf-8", "replace").strip()
            self._lock_file.close()
            who = f" ({holder})" if holder else ""
            raise AgegenderError(
                f"--out {self.dest}: another agegender batch is writing it{who}"
            ) from None
        if not locked:  # ENOLCK on some network mounts: not another job, so go on
            log.warning(
                "--out %s: this file system does not lock files; nothing stops a second "
                "job writing it at the same time",
                self.dest,
            )
        # Who holds it, for the message a second job prints (the lock is the flock).
        self._lock_file.truncate(0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._lock_file.write(
            f"process {os.getpid()} on {socket.gethostname()} since {started}\n".encode()
        )
        self._lock_file.flush()

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        if self._object_lock is not None:
            self._object_lock.release()
            self._object_lock = None

    def _read_manifest(self) -> dict[str, Any] | None:
        if self.files.kind(MANIFEST) != "file":
            return None
        try:
            data = json.loads(self.files.read(MANIFEST))
        except (OSError, ValueError) as error:
            raise AgegenderError(f"--out {self.dest}: unreadable {MANIFEST} ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise AgegenderError(f"--out {self.dest}: {MANIFEST} is not agegender's")
        if isinstance(data.get("video"), dict):
            data["video"].setdefault("rows", "frames")  # made before --video-rows
            if data["video"]["rows"] == "tracks":  # recorded before it was left out there
                data["video"]["step"] = None
        config = data.get("config")
        if isinstance(config, dict):  # made before these were left out, or resolved
            for name in EXECUTION_OPTIONS:
                config.pop(name, None)
            if config.get("providers") == []:  # the CPU alone (it always starts)
                config["providers"] = ["cpu"]
        return data

    def _remove_all(self) -> None:
        """--overwrite: every part, key and attempt record goes. The manifest stays until
        the new one replaces it (write_atomic): removed here, a job killed before that
        left DEST without one, and a DEST holding a file of the user's was then refused
        by every later run as a folder agegender did not make."""
        for name in self.files.names():
            if _ours(name):
                self.files.delete(name)
        for sub in (KEYS, ATTEMPTS, INFLIGHT, CPUS):
            for name in self.files.names(sub):
                self.files.delete(f"{sub}/{name}")

    def _recover(self) -> None:
        """Drop what a killed job left uncommitted: temporary files, parts without keys
        (written by this process or by a Ray actor), attempt records of such parts."""
        # The manifest's temporary copy: a job killed between its write and its rename
        # left it, and a later job with the same pid (a restarted container) could not
        # create it again (O_EXCL) when it writes the manifest.
        for name in self.files.names(META):
            if _TMP_MANIFEST_NAME.fullmatch(name):
                self.files.delete(f"{META}/{name}")
        keyed = {n[: -len(".npy")] for n in self.files.names(KEYS) if n.endswith(".npy")}
        parts = set()
        for name in self.files.names():
            if _TMP_PART_NAME.fullmatch(name):
                self.files.delete(name)
            elif _part(name):
                stem = name[: -len(Path(name).suffix)]
                if stem in keyed:
                    parts.add(stem)
                else:
                    self.files.delete(name)  # written, never committed: redone now
        for name in self.files.names(INFLIGHT):  # notes of an earlier run's actors
            self.files.delete(f"{INFLIGHT}/{name}")
        for name in self.files.names(CPUS):
            if name.startswith(TMP_PREFIX):
                self.files.delete(f"{CPUS}/{name}")
        for sub in (KEYS, ATTEMPTS):
            for name in self.files.names(sub):
                committed = name.endswith(".npy") and name[: -len(".npy")] in parts
                if name.startswith(TMP_PREFIX) or not committed:
                    self.files.delete(f"{sub}/{name}")

    def _load_keys(self) -> int:
        arrays = []
        for name in self.files.names(KEYS):
            arrays.append(np.load(io.BytesIO(self.files.read(f"{KEYS}/{name}"))))
        if not arrays:
            return 0
        keys = np.unique(np.concatenate(arrays).astype(np.uint64))
        if len(keys) <= SET_LIMIT:
            self._set = set(keys.tolist())
        else:
            self._sorted = [keys]
        return len(keys)

    def _attempt_records(self) -> dict[int, list[tuple[int, int, str]]]:
        """Every committed part's attempt records: key -> [(attempt, transient, stem)]
        (transient: 0, 1 or RETIRED)."""
        records: dict[int, list[tuple[int, int, str]]] = {}
        for name in self.files.names(ATTEMPTS):
            if not name.endswith(".npy") or name.startswith(TMP_PREFIX):
                continue
            stem = name[: -len(".npy")]
            table = load_attempts(self.files.read(f"{ATTEMPTS}/{name}"))
            for key, attempt, transient in table.tolist():
                records.setdefault(int(key), []).append((int(attempt), int(transient), stem))
        return records

    def prune(self) -> int:
        """Resolve inputs done more than once (a retry): the highest attempt's rows stay,
        the older part is rewritten without the older rows and keys. Returns the number
        of superseded (input, part) pairs removed; also refreshes the retry table.

        A retirement that wins (RETIRED) goes too once the older rows have: its part,
        which holds no rows, is rewritten without its key (removed when that was its
        last), so the key is not in the dataset at all, as in a run where the source was
        listed the first time."""
        stale: dict[str, set[int]] = {}
        spent: dict[str, set[int]] = {}
        retry: dict[int, tuple[int, bool]] = {}
        for key, entries in self._attempt_records().items():
            entries.sort(key=lambda e: (e[0], e[2]))
            attempt, transient, last = entries[-1]
            for _, _, stem in entries[:-1]:
                stale.setdefault(stem, set()).add(key)
            if transient == RETIRED:
                spent.setdefault(last, set()).add(key)
            else:
                retry[key] = (attempt, bool(transient))
        self._retry = retry
        with writing(self.dest):  # a store failing here is one line, as in commit
            gone = set()
            for stem, keys in sorted(stale.items()):
                if self._prune_part(stem, keys):
                    gone.add(stem)
            # after the older rows: killed in between, the next run's pruning finds the
            # retirement again and does both
            for stem, keys in sorted(spent.items()):
                if stem not in gone:
                    self._prune_part(stem, keys)
        return sum(len(keys) for keys in stale.values())

    def _prune_part(self, stem: str, drop: set[int]) -> bool:
        """The part `stem` without the inputs `drop`, in an order safe at any kill: rows
        first (the newer part already holds these inputs), then keys, then attempts; a
        part left with no input is uncommitted (keys first) and removed (True)."""
        key_name, attempt_name = f"{KEYS}/{stem}.npy", f"{ATTEMPTS}/{stem}.npy"
        keys = np.load(io.BytesIO(self.files.read(key_name))).astype(np.uint64)
        dropped = np.isin(keys, np.fromiter(drop, dtype=np.uint64, count=len(drop)))
        if dropped.all():
            self.files.delete(key_name)
            self.files.delete(stem + self.suffix)
            self.files.delete(attempt_name)
            return True
        data = self.files.read(stem + self.suffix)
        kept = filter_rows(data, self.sink, self.key_mode, drop)
        if kept != data:
            self.files.write_atomic(stem + self.suffix, kept)
        if dropped.any():
            self.files.write_atomic(key_name, _npy(keys[~dropped]))
        table = load_attempts(self.files.read(attempt_name))
        left = table[~np.isin(table["key"], np.fromiter(drop, dtype=np.uint64, count=len(drop)))]
        if len(left) == 0:
            self.files.delete(attempt_name)
        elif len(left) != len(table):
            self.files.write_atomic(attempt_name, _npy(left))
        return False

    # -- keys -----------------------------------------------------------------------------
    def is_done(self, key: int) -> bool:
        if key in self._set:
            return True
        for array in self._sorted:
            i = int(np.searchsorted(array, np.uint64(key)))
            if i < len(array) and int(array[i]) == key:
                return True
        return False

    def retry_attempt(self, key: int) -> int | None:
        """The attempt number a done input gets now if it is to be done again (its last
        attempt failed with a transient error and had fewer than max_attempts), else
        None. Only the first occurrence of a key in a run is retried."""
        record = self._retry.get(key)
        if record is None or not record[1] or record[0] >= self.max_attempts:
            return None
        if key in self._retry_taken:
            return None
        self._retry_taken.add(key)
        return record[0] + 1

    def relisted(self, key: int) -> None:
        """A source listed in full in this run (sources.Input.listed), keyed as the
        row of a failed listing of it: if an earlier run wrote that row (its attempt is
        recorded: job.attempt_record), the row is to be retired at the end of this run
        (retire_relisted), whatever its error and attempt (transient or not, within
        --max-attempts or past them: listing is no retry, every run lists its sources to
        find their inputs). Not when the row was redone in this run (the source given
        twice), nor twice."""
        record = self._retry.get(key)
        if record is None or key in self._retry_taken:
            return
        self._retry_taken.add(key)
        self._relisted[key] = record[0] + 1

    def retire_relisted(self, thresholds: Any) -> int:
        """Retire the `cannot list` rows of the sources listed now (relisted): one part
        with no rows, holding their keys at a higher attempt recorded as RETIRED, then
        pruning (which removes the older rows, then that part). Called once every part
        of the run is committed (both engines), so a kill before leaves the rows to the
        next run. Returns the number retired."""
        if not self._relisted:
            return 0
        keys = sorted(self._relisted)
        attempts = [(key, self._relisted[key], RETIRED) for key in keys]
        self.commit([], keys, thresholds, attempts)
        self._relisted = {}
        self.parts_written -= 1  # gone again once pruned: not one of the run's parts
        self.prune()
        return len(keys)

    def mark(self, key: int) -> None:
        """Remember a key taken in this run (a later duplicate input is skipped)."""
        self._set.add(key)
        if len(self._set) > SET_LIMIT:
            merged = np.fromiter(self._set, dtype=np.uint64, count=len(self._set))
            merged.sort()
            self._sorted.append(merged)
            self._set = set()
            if len(self._sorted) > 4:
                self._sorted = [np.unique(np.concatenate(self._sorted))]

    # -- parts ------------------------------------------------------------------------------
    def next_stem(self) -> str:
        stem = part_stem(self.run, self.seq)
        self.seq += 1
        return stem

    def commit(
        self,
        rows: list[dict[str, Any]],
        keys: list[int],
        thresholds: Any,
        attempts: list[tuple[int, int, int]] | None = None,
    ) -> str:
        """Write a part with its rows, then its keys: from then on those inputs are done."""
        stem = self.next_stem()
        with writing(self.dest):
            name = write_part(self.files, stem, rows, self.sink, thresholds, tracks=self.tracks)
        self.commit_keys(stem, keys, attempts)
        return name

    def commit_keys(
        self, stem: str, keys: Any, attempts: list[tuple[int, int, int]] | None = None
    ) -> None:
        """Commit a part already written (here or by a Ray actor): its attempt records,
        then its keys (the commit point)."""
        with writing(self.dest):
            if attempts:
                self.files.write_atomic(f"{ATTEMPTS}/{stem}.npy", _npy(attempt_table(attempts)))
            keys = _npy(np.asarray(keys, dtype=np.uint64))
            self.files.write_atomic(f"{KEYS}/{stem}.npy", keys)
        self.parts_written += 1

    def part_names(self) -> list[str]:
        return [n for n in self.files.names() if _part(n)]


def part_stem(run: str, seq: int) -> str:
    return f"{PART_PREFIX}{run}-{seq:06d}"


def write_part(
    files: _Files | str,
    stem: str,
    rows: list[dict[str, Any]],
    sink: str,
    thresholds: Any,
    tracks: bool = False,
) -> str:
    """A part file of `rows` under its final name, never half visible; what a Ray actor
    calls for its own parts (the driver then commits their keys). A part with estimates
    first notes this machine's kind of CPU (record_cpu), so every writer notes its own."""
    if isinstance(files, str):
        files = _Files(files)
    if has_estimates(rows):
        record_cpu(files, stem)
    name = stem + SINKS[sink]
    files.write_atomic(name, encode(rows, sink, thresholds, tracks))
    return name


def attempt_table(attempts: list[tuple[int, int, int]]) -> NDArray[Any]:
    return np.array([(k, a, int(t)) for k, a, t in attempts], dtype=ATTEMPT_DTYPE)


def load_attempts(data: bytes) -> NDArray[Any]:
    return np.load(io.BytesIO(data)).astype(ATTEMPT_DTYPE)


def _npy(array: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def row_key(row: dict[str, Any], mode: str) -> int:
    """The resume key of the input a row came from (None and CSV's "" read as missing)."""
    from .sources import hash_key, stat_key

    def number(value: Any) -> int:
        return -1 if value is None or value == "" else int(value)

    if mode == "hash":
        return hash_key(str(row["path"]), row.get("source_sha256") or "")
    return stat_key(
        str(row["path"]), number(row.get("source_size")), number(row.get("source_mtime_ns"))
    )


def utf8_text(value: str) -> str:
    """`value` as UTF-8 text can hold it. A name read from a file system in another
    encoding carries its undecodable bytes as lone surrogates (Python's surrogateescape:
    predict's JSON writes them as \\udcNN), which Parquet and CSV cannot store: each such
    byte is written as \\xNN, as ``ls -b`` shows it."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (from a JSON list)
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _utf8_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their text as utf8_text writes it (a row of ASCII text as it is)."""

    def plain(row: dict[str, Any]) -> bool:
        return all(v.isascii() for v in row.values() if isinstance(v, str))

    def written(row: dict[str, Any]) -> dict[str, Any]:
        return {k: utf8_text(v) if isinstance(v, str) else v for k, v in row.items()}

    return [row if plain(row) else written(row) for row in rows]


_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")


def _row_keys(row: dict[str, Any], mode: str) -> set[int]:
    """The resume keys the input of a row may have: its path as written and, for a path
    written by utf8_text with \\xNN bytes, the path those bytes spell."""
    keys = {row_key(row, mode)}
    path = str(row["path"])
    if "\\x" in path:
        raw = _ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), path.encode("utf-8"))
        keys.add(row_key({**row, "path": raw.decode("utf-8", "surrogateescape")}, mode))
    return keys


def filter_rows(data: bytes, sink: str, mode: str, drop: set[int]) -> bytes:
    """A part's bytes without the rows of the inputs keyed `drop` (the same bytes when
    none is there, so a repeated prune writes nothing)."""
    if sink == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        columns = ["path", "source_size", "source_mtime_ns", "source_sha256"]
        keep = [not _row_keys(r, mode) & drop for r in table.select(columns).to_pylist()]
        if all(keep):
            return data
        out = pa.BufferOutputStream()
        pq.write_table(table.filter(pa.array(keep)), out, compression="zstd")
        return bytes(out.getvalue())
    if sink == "jsonl":
        lines = data.decode().splitlines(keepends=True)
        kept_lines = [line for line in lines if row_key(json.loads(line), mode) not in drop]
        return data if len(kept_lines) == len(lines) else "".join(kept_lines).encode()
    import csv

    records = list(csv.reader(io.StringIO(data.decode(), newline="")))
    header, body = records[0], records[1:]
    kept = [r for r in body if not _row_keys(dict(zip(header, r, strict=True)), mode) & drop]
    if len(kept) == len(body):
        return data
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(kept)
    return text.getvalue().encode()


def encode(rows: list[dict[str, Any]], sink: str, thresholds: Any, tracks: bool = False) -> bytes:
    from .rows import arrow_schema, columns, text_value

    names = [name for name, _ in columns(thresholds, tracks)]
    if sink != "jsonl":  # JSON escapes what UTF-8 cannot hold; Parquet and CSV cannot
        rows = _utf8_rows(rows)
    if sink == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=arrow_schema(thresholds, tracks))
        out = pa.BufferOutputStream()
        pq.write_table(table, out, compression="zstd")
        return bytes(out.getvalue())
    if sink == "jsonl":
        return "".join(
            json.dumps({n: row.get(n) for n in names}, allow_nan=False) + "\n" for row in rows
        ).encode()
    import csv

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([text_value(row.get(n)) for n in names])
    return text.getvalue().encode()


def record_cpu(files: _Files, part: str) -> None:
    """Note that this machine's kind of CPU computes estimates for DEST, before `part`:
    once per kind (a later part finds the note, one look per part)."""
    from ..sessions import cpu_kind

    kind = cpu_kind()
    name = f"{CPUS}/{re.sub(r'[^A-Za-z0-9_.-]+', '-', kind)}.json"
    if files.kind(name) == "file":
        return
    if not files.object_store and files.kind(CPUS) == "missing":  # the driver makes it;
        files.mkdirs()  # an actor given a DEST without it makes it too
    import onnxruntime

    note = {
        "cpu": kind,
        "first_part": part,
        "host": socket.gethostname(),
        "onnxruntime": onnxruntime.__version__,
    }
    files.write_atomic(name, json.dumps(note).encode())


def has_estimates(rows: list[dict[str, Any]]) -> bool:
    """Whether any row holds a model's estimate (not only a missing face or an error)."""
    return any(r.get("age_value") is not None or r.get("gender_label") is not None for r in rows)


def cpu_kinds(files: _Files) -> list[str]:
    """The kinds of CPU that have run the models for DEST (record_cpu's notes)."""
    kinds = set()
    for name in files.names(CPUS):
        if name.startswith(TMP_PREFIX) or not name.endswith(".json"):
            continue
        with contextlib.suppress(OSError, ValueError, AttributeError):
            kinds.add(str(json.loads(files.read(f"{CPUS}/{name}")).get("cpu")))
    return sorted(kinds)


def mixed_cpus_warning(dest: str, kinds: list[str], dependent: list[str]) -> str | None:
    """The line to show when rows of DEST come from more than one kind of CPU and models
    in use are marked `cpu_dependent` (their estimates differ between kinds); else None."""
    if len(kinds) < 2 or not dependent:
        return None
    return (
        f"--out {dest}: rows there were computed on {len(kinds)} kinds of CPU "
        f"({', '.join(kinds)}); the estimates of {', '.join(dependent)} differ between "
        "kinds (the default's faceres-deep INT8 copy by up to about a year of age: "
        "README, 7-bit weights); --overwrite on machines of one kind, or --preset best, "
        "keeps them alike"
    )


def make_manifest(
    config: dict[str, Any],
    models: list[dict[str, str]],
    sink: str,
    key: str,
    video: dict[str, Any],
    files: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`files`: the sha256 of each file of the user's that shapes the rows besides the
    models (a --calibration file, a card's own TOML), by role: their paths alone, in
    `config`, would let a file edited between a crash and the resume change the rows
    unseen. `data`: the digest of each card and calibration in effect, built-in ones
    included (job.data_digests), which the agegender version alone does not pin."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "sink": sink,
        "key": key,
        "config": {k: v for k, v in config.items() if k not in EXECUTION_OPTIONS},
        "models": models,
        "video": video,
        "agegender_version": __version__,
    }
    if files:
        manifest["files_sha256"] = files
    if data:
        manifest["data_sha256"] = data
    return manifest


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    sections = ("sink", "key", "config", "models", "video", "files_sha256", "data_sha256")
    for section in (*sections, "agegender_version"):
        a, b = old.get(section), new.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    return (
                        f"made with another configuration ({section} {name}: "
                        f"{a.get(name)!r} there, {b.get(name)!r} now); --overwrite starts "
                        "over, or choose another --out"
                    )
        return (
            f"made with another configuration ({section}: {a!r} there, {b!r} now); "
            "--overwrite starts over, or choose another --out"
        )
    return "made with another configuration; --overwrite starts over"


def iter_rows(dest: str) -> Iterator[dict[str, Any]]:
    """Every committed row of a dataset (tests and small tools; Parquet, JSONL or CSV)."""
    files = _Files(dest)
    keyed = {n[: -len(".npy")] for n in files.names(KEYS)}
    for name in files.names():
        if not _part(name) or Path(name).stem not in keyed:
            continue
        data = files.read(name)
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            yield from pq.read_table(io.BytesIO(data)).to_pylist()
        elif name.endswith(".jsonl"):
            for line in data.decode().splitlines():
                yield json.loads(line)
        else:
            import csv

            yield from csv.DictReader(io.StringIO(data.decode()))
