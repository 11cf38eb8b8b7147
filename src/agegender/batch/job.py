"""What both engines share: the job's settings, pending inputs with their keys, the
model identities, the tally and the summary."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import single_line
from .dataset import Dataset
from .sources import Input, hash_key, iter_inputs, read_remote, stat_key

if TYPE_CHECKING:
    from ..config import EstimatorConfig
    from ..pipeline import Estimator

ERRORS_SHOWN = 10


@dataclass
class Job:
    sources: list[str]
    dataset: Dataset
    config: EstimatorConfig
    constants: dict[str, Any]
    key: str = "stat"
    part_size: int = 1000
    video_step: float = 1.0
    max_frames: int | None = None
    progress: bool = False
    video_rows: str = "frames"  # "tracks": one row per tracked person of a video
    # model_identities of the driver's estimator: a Ray actor checks its own against them
    models: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Pending:
    """An input not done yet, its key and (with --key hash) its content and sha256."""

    item: Input
    key: int
    sha256: str | None = None
    data: bytes | None = None
    error: str | None = None
    attempt: int = 1  # > 1: a retry of an input whose last error was transient


def model_identities(estimator: Estimator) -> list[dict[str, str]]:
    """Each head's card id, role and sha256, then the detector's (role "detector") when it
    runs a model file: the card's sha256 when the file has the card's size (the store and
    package installs verified it), else computed (CARD=FILE, own cards, INT8 copies built
    here, whose bytes depend on the ONNX Runtime that built them)."""
    from ..store.hashing import sha256_file

    def identity(role: str, card: Any, path: Path) -> dict[str, str]:
        size = path.stat().st_size if path.exists() else -1
        declared = card.source.sha256
        sha = declared if declared and size == card.source.bytes else sha256_file(path)
        return {"role": role, "id": card.id, "sha256": sha}

    out = [
        identity(role, head.card, head.model.path)
        for role, heads in estimator.heads.items()
        for head in heads
    ]
    detector = _detector(estimator)
    card, path = getattr(detector, "card", None), getattr(detector, "path", None)
    if card is not None and path is not None:
        out.append(identity("detector", card, Path(path)))
    return out


def cpu_dependent_models(estimator: Estimator) -> list[str]:
    """The card ids of the estimator's models whose estimates differ between kinds of CPU
    (a card's `[source] cpu_dependent`: faceres-deep's INT8 copy)."""
    cards = [head.card for heads in estimator.heads.values() for head in heads]
    detector_card = getattr(_detector(estimator), "card", None)
    if detector_card is not None:
        cards.append(detector_card)
    return sorted({card.id for card in cards if card.source.cpu_dependent})


def _detector(estimator: Estimator) -> Any:
    """The estimator's detector, under the rotation sweep's wrapper where there is one."""
    detector: Any = estimator.detector
    while getattr(detector, "base", None) is not None:
        detector = detector.base
    return detector


def providers_in_effect(estimator: Estimator, *, here: bool = True) -> list[str]:
    """The execution providers the estimator's sessions run on (the heads' and the
    detector's), short names in order, the CPU last: what --providers asked for once
    resolved, less a provider that did not start (the session then runs on the CPU). The
    manifest records these: `--providers cpu` and none are one configuration, and a CUDA
    that started for the first run and not for the resume is another. `here=False` (the
    Ray engine: the actors' machines run the models, not this one): those asked for."""
    from .. import sessions

    if not here:
        asked = sessions.resolve_providers(estimator.config.providers)
        return [sessions.short_name(name) for name in asked]
    found: list[str] = []
    runs = [head.model.session for heads in estimator.heads.values() for head in heads]
    detector_session = getattr(_detector(estimator), "session", None)
    if detector_session is not None:
        runs.append(detector_session)
    for session in runs:
        for name in session.get_providers():
            if name not in found:
                found.append(name)
    if sessions.CPU in found:  # always there, always last
        found.remove(sessions.CPU)
    return [sessions.short_name(name) for name in [*found, sessions.CPU]]


def recorded_config(estimator: Estimator, *, here: bool = True) -> dict[str, Any]:
    """The configuration as the manifest records it: the estimator's options, with the
    providers in effect (`providers_in_effect`), and without the places of the user's files,
    whose contents `model_identities`, `user_files` and `data_digests` pin: the models as
    their card ids, a --calibration file as "file" (the same files given by another path, or
    moved, resume)."""
    recorded = estimator.config.as_dict()
    recorded["providers"] = providers_in_effect(estimator, here=here)
    for role in ("age", "gender"):
        recorded[f"{role}_models"] = [h.card.id for h in estimator.heads.get(role, [])]
    if _calibration_file(estimator) is not None:
        recorded["calibration"] = "file"
    return recorded


def _calibration_file(estimator: Estimator) -> str | None:
    """The --calibration file the estimator read, None for the preset's, none or a card's."""
    calibration = estimator.config.calibration
    return None if calibration in ("", "preset", "none") else calibration


def user_files(estimator: Estimator) -> dict[str, str]:
    """The sha256 of the user's files that shape the rows besides the model files: a
    --calibration file, and each card read from a TOML file of the user's (its
    preprocessing, its own calibration). What they hold is also in `data_digests`; their
    bytes here refuse a resume after any edit, as they always have."""
    from ..store.files import card_folder
    from ..store.hashing import sha256_file

    out = {}
    calibration = _calibration_file(estimator)
    if calibration is not None:
        out["calibration"] = sha256_file(Path(calibration))
    for heads in estimator.heads.values():
        for head in heads:
            if card_folder(head.card) is not None and head.card.origin:
                out[f"card {head.card.id}"] = sha256_file(Path(head.card.origin))
    return out


def _digest(data: Any) -> str:
    """sha256 of a dataclass's fields as canonical JSON (floats by repr: exact)."""
    text = json.dumps(data, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_digests(estimator: Estimator) -> dict[str, str]:
    """A digest of what else shapes the rows and the agegender version does not pin: each
    card in use (the heads' and the detector's: preprocessing, decoding, detection passes,
    the declared file) and each task's calibration in effect, read as the Estimator
    parsed them. A built-in card or calibration edited under an unchanged version (a
    development install, a patched package) refuses a resume as a user's edited file
    does. A card's own file's place, title and notes do not count (moving an install
    keeps its datasets resumable), nor does its `cpu_dependent` mark."""
    from dataclasses import asdict

    out: dict[str, str] = {}
    cards: list[tuple[str, Any]] = [
        (f"{role} card {head.card.id}", head.card)
        for role, heads in estimator.heads.items()
        for head in heads
    ]
    detector = _detector(estimator)  # under the rotation sweep's wrapper
    if getattr(detector, "card", None) is not None:
        cards.append((f"detector card {detector.card.id}", detector.card))
    for name, card in cards:
        fields = asdict(card)
        for ignored in ("origin", "title", "notes", "license"):
            fields.pop(ignored, None)
        fields["source"].pop("cpu_dependent", None)  # a warning's trigger, not the rows'
        out[name] = _digest(fields)
    for role, task in estimator.tasks.items():
        if task.calibration is not None:
            out[f"{role} calibration"] = _digest(asdict(task.calibration))
    return out


def row_constants(estimator: Estimator, models: list[dict[str, str]]) -> dict[str, Any]:
    """The columns every row holds: the heads' card ids and files (the detector's file is
    pinned by the manifest, not written in each row)."""
    models = [m for m in models if m["role"] in ("age", "gender")]
    return {
        "age_models": ",".join(m["id"] for m in models if m["role"] == "age") or None,
        "gender_models": ",".join(m["id"] for m in models if m["role"] == "gender") or None,
        "model_sha256": ",".join(f"{m['id']}:{m['sha256']}" for m in models) or None,
        "agegender_version": __version__,
    }


def pending(job: Job, tally: Tally) -> Iterator[Pending]:
    """The inputs of the job not done before (nor earlier in this run), with their keys.
    An object-store source listed in full is told to the dataset (Dataset.relisted): the
    `cannot list` row of an earlier run's failed listing of it is retired at the end."""
    for item in iter_inputs(job.sources, listed=True):
        if item.listed:
            job.dataset.relisted(_keyed(item, job.key).key)
            continue
        tally.seen += 1
        entry = _keyed(item, job.key)
        if job.dataset.is_done(entry.key):
            attempt = job.dataset.retry_attempt(entry.key)
            if attempt is None:
                tally.skipped += 1
                continue
            entry.attempt = attempt
        job.dataset.mark(entry.key)
        yield entry


# What an error row says when its cause may be gone on the next try: images.load and
# sources.read_remote write "cannot read (...)" for an OSError other than a missing file,
# a folder or a denied permission (EIO, ESTALE, a network file system, an object store's
# 5xx or a dropped connection); timeouts are transient wherever they come from. A file
# that is "not an image", truncated or missing is not: trying again gives the same row.
# A source whose listing failed ("cannot list (...)": the store's error, not a missing
# prefix) is transient too: the next run lists it again, and a listing that succeeds
# retires the row (Dataset.relisted).
TRANSIENT_MARKS = (": cannot read (", ": cannot list (", "timed out", "timeout")


def transient(error: str | None) -> bool:
    """Whether an input with this error is worth another try (see TRANSIENT_MARKS)."""
    if not error:
        return False
    text = error.lower()
    return any(mark in text for mark in TRANSIENT_MARKS)


def attempt_record(entry: Pending, rows: list[dict[str, Any]]) -> tuple[int, int, int] | None:
    """(key, attempt, transient) for the part's attempt records, or None for an input
    tried once that did not fail transiently (nothing to record). A source that could
    not be listed is always recorded: a later run that lists it retires its row by that
    record (Dataset.relisted), whether its error was transient or not."""
    failed = any(transient(r.get("error")) for r in rows)
    if failed or entry.attempt > 1 or entry.item.unlisted:
        return (entry.key, entry.attempt, failed)
    return None


@dataclass
class PartBuffer:
    """The rows, input keys and attempt records of the part being filled: what both
    engines gather per input before a part is written (local) or returned (Ray)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    attempts: list[tuple[int, int, int]] = field(default_factory=list)

    def add(self, entry: Pending, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.keys.append(entry.key)
        record = attempt_record(entry, rows)
        if record is not None:
            self.attempts.append(record)

    def clear(self) -> None:
        self.rows.clear()
        self.keys.clear()
        self.attempts.clear()


def prefetched(items: Iterator[Pending], size: int = 256) -> Iterator[Pending]:
    """`items` produced by a thread, `size` ahead: listing, stat and --key hash reads
    overlap the models instead of stalling the loop that feeds them (a stat on a network
    file system takes a millisecond). Exceptions reach the consumer."""
    import queue

    box: queue.Queue[Any] = queue.Queue(maxsize=size)
    end = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for entry in items:
                while not stop.is_set():
                    try:
                        box.put(entry, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(end)
        except BaseException as error:  # handed to the consumer
            box.put(error)

    thread = threading.Thread(target=produce, daemon=True, name="agegender-inputs")
    thread.start()
    try:
        while True:
            entry = box.get()
            if entry is end:
                return
            if isinstance(entry, BaseException):
                raise entry
            yield entry
    finally:
        stop.set()


def _keyed(item: Input, mode: str) -> Pending:
    if mode == "stat":
        return Pending(item, stat_key(item.path, item.size, item.mtime_ns), error=item.error)
    if item.error is not None or item.listed:  # a list or a prefix: nothing to hash
        return Pending(item, hash_key(item.path, ""), error=item.error)
    try:
        if item.remote:
            data = read_remote(item.path)
        else:
            with open(item.path, "rb") as f:
                data = f.read()
    except Exception as error:
        # Unreadable: keyed by the path alone; the estimator (or the row) says why.
        message = str(error) if item.remote else None
        return Pending(item, hash_key(item.path, ""), error=message)
    sha = hashlib.sha256(data).hexdigest()
    return Pending(item, hash_key(item.path, sha), sha, data)


@dataclass
class Tally:
    seen: int = 0
    skipped: int = 0
    inputs: int = 0
    rows: int = 0
    faces: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    relisted: int = 0  # `cannot list` rows of earlier runs retired (Dataset.retire_relisted)
    shown: int = 0
    errors: list[str] = field(default_factory=list)  # kept by part summaries only
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rows: list[dict[str, Any]], report: Any = None, attempt: int = 1) -> None:
        """Count one finished input (all its rows)."""
        self.inputs += 1
        self.retried += attempt > 1
        self.rows += len(rows)
        self.faces += sum(1 for r in rows if r.get("face") is not None)
        errors = [r["error"] for r in rows if r.get("error")]
        if errors:
            self.failed += 1
            self.reasons[reason(rows[0]["path"], errors[0])] += 1
            if len(self.errors) <= ERRORS_SHOWN:
                self.errors.append(errors[0])
            self.note_error(errors[0], report)

    def note_error(self, error: str, report: Any) -> None:
        """Print the first ERRORS_SHOWN errors as they happen, then say where the rest are."""
        if self.shown < ERRORS_SHOWN and report is not None:
            report(f"agegender: error: {error}")
        elif self.shown == ERRORS_SHOWN and report is not None:
            report("agegender: further errors are only in the dataset's error column")
        self.shown += 1

    def summary_of_part(self) -> dict[str, Any]:
        """What a Ray actor sends the driver for one part: counts and the first errors,
        no rows (the rows are in the part file the actor wrote)."""
        return {
            "inputs": self.inputs,
            "retried": self.retried,
            "rows": self.rows,
            "faces": self.faces,
            "failed": self.failed,
            "reasons": dict(self.reasons),
            "errors": list(self.errors),
        }

    def merge(self, part: dict[str, Any], report: Any = None) -> None:
        """Add a part's summary (summary_of_part) made elsewhere."""
        self.inputs += part["inputs"]
        self.retried += part["retried"]
        self.rows += part["rows"]
        self.faces += part["faces"]
        self.failed += part["failed"]
        self.reasons.update(part["reasons"])
        for error in part["errors"]:
            self.note_error(error, report)

    def summary(self, dest: str, parts: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.inputs / elapsed
        text = (
            f"agegender: batch: {self.inputs} inputs done in {elapsed:.1f} s "
            f"({rate:.1f} images/s), {self.faces} faces, {self.rows} rows in {parts} parts"
        )
        if self.retried:
            text += f"; {self.retried} retried (transient errors before)"
        if self.relisted:
            text += f"; {self.relisted} listed now (their earlier listing error rows removed)"
        if self.skipped:
            text += f"; {self.skipped} skipped (done before, or repeated)"
        if self.failed:
            worst = ", ".join(f"{why}: {n}" for why, n in self.reasons.most_common(5))
            text += f"; {self.failed} failed ({worst})"
        return f"{text} -> {dest}"


def reason(path: str, error: str) -> str:
    """The kind of an error ("no such file", "corrupt image", ...) for the summary."""
    text = error
    # the error names the input as error lines do: a line break in it written as \n
    for name in (path, single_line(path)):
        if error.startswith(name + ": "):
            text = error[len(name) + 2 :]
            break
    for cut in (" (", ": ", "; "):
        text = text.split(cut, 1)[0]
    return text.strip() or "error"


def print_summary(job: Job, tally: Tally) -> None:
    print(tally.summary(job.dataset.dest, job.dataset.parts_written), file=sys.stderr)
