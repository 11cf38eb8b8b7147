"""What both engines share: the job's settings, pending inputs with their keys, the
model identities, the tally and the summary."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
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


@dataclass
class Pending:
    """An input not done yet, its key and (with --key hash) its content and sha256."""

    item: Input
    key: int
    sha256: str | None = None
    data: bytes | None = None
    error: str | None = None


def model_identities(estimator: Estimator) -> list[dict[str, str]]:
    """Each head's card id, role and sha256: the card's when the file has the card's size
    (the store and package installs verified it), else computed (CARD=FILE, own cards)."""
    from ..store.hashing import sha256_file

    out = []
    for role, heads in estimator.heads.items():
        for head in heads:
            card = head.card
            path = head.model.path
            size = path.stat().st_size if path.exists() else -1
            declared = card.source.sha256
            sha = declared if declared and size == card.source.bytes else sha256_file(path)
            out.append({"role": role, "id": card.id, "sha256": sha})
    return out


def row_constants(estimator: Estimator, models: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "age_models": ",".join(m["id"] for m in models if m["role"] == "age") or None,
        "gender_models": ",".join(m["id"] for m in models if m["role"] == "gender") or None,
        "model_sha256": ",".join(f"{m['id']}:{m['sha256']}" for m in models) or None,
        "agegender_version": __version__,
    }


def pending(job: Job, tally: Tally) -> Iterator[Pending]:
    """The inputs of the job not done before (nor earlier in this run), with their keys."""
    for item in iter_inputs(job.sources):
        tally.seen += 1
        entry = _keyed(item, job.key)
        if job.dataset.is_done(entry.key):
            tally.skipped += 1
            continue
        job.dataset.mark(entry.key)
        yield entry


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
        return Pending(item, stat_key(item.path, item.size, item.mtime_ns))
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
    shown: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rows: list[dict[str, Any]], report: Any = None) -> None:
        """Count one finished input (all its rows)."""
        self.inputs += 1
        self.rows += len(rows)
        self.faces += sum(1 for r in rows if r.get("face") is not None)
        errors = [r["error"] for r in rows if r.get("error")]
        if errors:
            self.failed += 1
            self.reasons[reason(rows[0]["path"], errors[0])] += 1
            if self.shown < ERRORS_SHOWN and report is not None:
                report(f"agegender: error: {errors[0]}")
            elif self.shown == ERRORS_SHOWN and report is not None:
                report("agegender: further errors are only in the dataset's error column")
            self.shown += 1

    def summary(self, dest: str, parts: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.inputs / elapsed
        text = (
            f"agegender: batch: {self.inputs} inputs done in {elapsed:.1f} s "
            f"({rate:.1f} images/s), {self.faces} faces, {self.rows} rows in {parts} parts"
        )
        if self.skipped:
            text += f"; {self.skipped} skipped (done before, or repeated)"
        if self.failed:
            worst = ", ".join(f"{why}: {n}" for why, n in self.reasons.most_common(5))
            text += f"; {self.failed} failed ({worst})"
        return f"{text} -> {dest}"


def reason(path: str, error: str) -> str:
    """The kind of an error ("no such file", "corrupt image", ...) for the summary."""
    text = error[len(path) + 2 :] if error.startswith(path + ": ") else error
    for cut in (" (", ": ", "; "):
        text = text.split(cut, 1)[0]
    return text.strip() or "error"


def print_summary(job: Job, tally: Tally) -> None:
    print(tally.summary(job.dataset.dest, job.dataset.parts_written), file=sys.stderr)
