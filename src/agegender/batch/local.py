"""The local engine: the job's pending inputs through one Estimator's predict_many.

Decoding and detection run in the estimator's worker threads, faces of several images
share model batches (as in ``predict``); a part is committed every ``part_size``
finished inputs, so a killed job loses at most the part in flight. ``process`` (inputs
-> rows of each input) is what a Ray actor runs too.

With ``--video-rows tracks`` a video is read frame by frame through the ``video``
command's :class:`agegender.people.PeopleTracker` (its defaults: every frame detected,
tracks end after 1 s unseen, 3 detections make a person), in the thread that feeds
``predict_many``, and gives one row per person (``rows.person_rows``).
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..images import Frame
from . import rows as rowmod
from .job import Job, PartBuffer, Pending, Tally, pending, prefetched
from .sources import is_video, iter_inputs

if TYPE_CHECKING:
    from ..images import ImageInput
    from ..pipeline import Estimator


@dataclass(frozen=True)
class Work:
    """What turns inputs into rows, besides the estimator (picklable: sent to actors)."""

    constants: dict[str, Any]
    thresholds: tuple[float, ...] = ()
    video_step: float = 1.0
    max_frames: int | None = None
    pixel_limit: int | None = None
    video_rows: str = "frames"  # or "tracks": one row per tracked person
    models: tuple[dict[str, str], ...] = ()  # the driver's model_identities

    @classmethod
    def of(cls, job: Job) -> Work:
        return cls(
            job.constants,
            tuple(job.config.age_thresholds),
            job.video_step,
            job.max_frames,
            job.config.pixel_limit,
            job.video_rows,
            tuple(job.models),
        )


def track_video(estimator: Estimator, entry: Pending, work: Work) -> list[dict[str, Any]]:
    """One video's rows with ``--video-rows tracks``: one per person, as ``agegender video
    --tracks`` finds them; a read error ends the video with an error row after the people
    seen until then."""
    from ..errors import AgegenderError
    from ..people import PeopleTracker
    from ..streams import Source

    item = entry.item
    source = Source(item.path, pixel_limit=work.pixel_limit)
    tracker: PeopleTracker | None = None
    people: list[Any] = []
    size: tuple[int, int] | None = None
    error: str | None = None
    count = 0
    try:
        for frame in source.frames():
            if tracker is None:
                tracker = PeopleTracker(estimator, thumbnails=False)
                size = (int(frame.rgb.shape[1]), int(frame.rgb.shape[0]))
            people.extend(tracker.process(frame)[1])
            count += 1
            if work.max_frames is not None and count >= work.max_frames:
                break
    except AgegenderError as failure:
        error = str(failure)
    finally:
        source.stop()
    if tracker is not None:
        people.extend(tracker.finish())
    elif error is None:
        error = f"{item.path}: no frames"
    people.sort(key=lambda p: p.id)
    found = rowmod.person_rows(item, people, size, work.constants, work.thresholds, entry.sha256)
    if error is None:
        return found
    if not error.startswith(item.path):
        error = f"{item.path}: {error}"
    error_only = rowmod.error_row(item, error, work.constants)
    return (found if people else []) + [error_only]


def process(
    estimator: Estimator, entries: Iterable[Pending], work: Work
) -> Iterator[tuple[Pending, list[dict[str, Any]]]]:
    """Each input with all its rows, in input order (a video's frames together)."""
    from .. import video

    tags: deque[tuple[int, Pending]] = deque()
    tracked: dict[int, list[dict[str, Any]]] = {}  # --video-rows tracks: a video's rows

    def feed() -> Iterator[ImageInput]:
        for seq, entry in enumerate(entries):
            item = entry.item
            if entry.error is not None:
                tags.append((seq, entry))
                yield Frame(item.path, 0, 0.0, error=entry.error)
            elif is_video(item.path) and not item.remote and work.video_rows == "tracks":
                tracked[seq] = track_video(estimator, entry, work)
                tags.append((seq, entry))
                yield Frame(item.path, 0, 0.0, error="tracked")  # a placeholder
            elif is_video(item.path) and not item.remote:
                count = 0
                for frame in video.frames(
                    item.path,
                    step=work.video_step,
                    max_frames=work.max_frames,
                    pixel_limit=work.pixel_limit,
                ):
                    tags.append((seq, entry))
                    count += 1
                    yield frame
                if count == 0:
                    tags.append((seq, entry))
                    yield Frame(item.path, 0, 0.0, error=f"{item.path}: no frames")
            elif item.remote and entry.data is None:
                from ..errors import ImageError
                from .sources import read_remote

                try:
                    data = read_remote(item.path)
                except ImageError as error:
                    tags.append((seq, entry))
                    yield Frame(item.path, 0, 0.0, error=str(error))
                    continue
                tags.append((seq, entry))
                yield data
            else:
                tags.append((seq, entry))
                yield entry.data if entry.data is not None else item.path

    current: tuple[int, Pending] | None = None
    rows: list[dict[str, Any]] = []
    for result in estimator.predict_many(feed()):
        tag = tags.popleft()
        if current is not None and tag[0] != current[0]:
            yield current[1], rows
            rows = []
        current = tag
        entry = tag[1]
        if tag[0] in tracked:
            rows.extend(tracked.pop(tag[0]))
            continue
        if not is_video(entry.item.path) or entry.error is not None:
            result = replace(result, frame=None, time=None)
        rows.extend(
            rowmod.result_rows(entry.item, result, work.constants, work.thresholds, entry.sha256)
        )
    if current is not None:
        yield current[1], rows


def run_local(job: Job, estimator: Estimator) -> Tally:
    from tqdm import tqdm

    tally = Tally()
    bar = tqdm(total=None, unit="img", file=sys.stderr, disable=not job.progress, mininterval=0.5)
    if job.progress:
        _count_in_background(job, bar)

    def report(line: str) -> None:
        if job.progress:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    thresholds = job.config.age_thresholds
    part = PartBuffer()
    skipped_shown = 0

    def commit() -> None:
        if part.keys:
            job.dataset.commit(part.rows, part.keys, thresholds, part.attempts)
            part.clear()

    try:
        entries = prefetched(pending(job, tally))
        for entry, rows in process(estimator, entries, Work.of(job)):
            tally.add(rows, report, entry.attempt)
            part.add(entry, rows)
            bar.update(1 + tally.skipped - skipped_shown)
            skipped_shown = tally.skipped
            if len(part.keys) >= job.part_size:
                commit()
        commit()
    finally:
        bar.close()
    return tally


def _count_in_background(job: Job, bar: Any) -> None:
    """Count the inputs (no stat, no key) so the bar can show an ETA; a daemon thread."""

    def count() -> None:
        n = 0
        try:
            for _ in iter_inputs(job.sources, stat=False):
                n += 1
        except Exception:
            return
        bar.total = n
        bar.refresh()

    threading.Thread(target=count, daemon=True, name="agegender-count").start()
