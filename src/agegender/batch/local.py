"""The local engine: the job's pending inputs through one Estimator's predict_many.

Decoding and detection run in the estimator's worker threads, faces of several images
share model batches (as in ``predict``); a part is committed every ``part_size``
finished inputs, so a killed job loses at most the part in flight.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..images import Frame
from . import rows as rowmod
from .job import Job, Pending, Tally, pending
from .sources import is_video, iter_inputs

if TYPE_CHECKING:
    from ..images import ImageInput
    from ..pipeline import Estimator


def run_local(job: Job, estimator: Estimator) -> Tally:
    from tqdm import tqdm

    from .. import video

    tally = Tally()
    bar = tqdm(total=None, unit="img", file=sys.stderr, disable=not job.progress, mininterval=0.5)
    if job.progress:
        _count_in_background(job, bar)

    def report(line: str) -> None:
        if job.progress:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    tags: deque[tuple[int, Pending]] = deque()
    thresholds = job.config.age_thresholds

    def feed() -> Iterator[ImageInput]:
        for seq, entry in enumerate(pending(job, tally)):
            item = entry.item
            if entry.error is not None:
                tags.append((seq, entry))
                yield Frame(item.path, 0, 0.0, error=entry.error)
            elif is_video(item.path) and not item.remote:
                count = 0
                for frame in video.frames(
                    item.path,
                    step=job.video_step,
                    max_frames=job.max_frames,
                    pixel_limit=job.config.pixel_limit,
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

    part_rows: list[dict[str, Any]] = []
    part_keys: list[int] = []
    current: tuple[int, Pending] | None = None
    current_rows: list[dict[str, Any]] = []
    shown_skipped = [0]

    def finish() -> None:
        nonlocal current_rows
        assert current is not None
        tally.add(current_rows, report)
        part_rows.extend(current_rows)
        part_keys.append(current[1].key)
        current_rows = []
        bar.update(1 + tally.skipped - shown_skipped[0])
        shown_skipped[0] = tally.skipped
        if len(part_keys) >= job.part_size:
            commit()

    def commit() -> None:
        if part_keys:
            job.dataset.commit(part_rows, part_keys, thresholds)
            part_rows.clear()
            part_keys.clear()

    try:
        for result in estimator.predict_many(feed()):
            tag = tags.popleft()
            if current is not None and tag[0] != current[0]:
                finish()
            current = tag
            entry = tag[1]
            if not is_video(entry.item.path) or entry.error is not None:
                from dataclasses import replace

                result = replace(result, frame=None, time=None)
            current_rows.extend(
                rowmod.result_rows(entry.item, result, job.constants, thresholds, entry.sha256)
            )
        if current is not None:
            finish()
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
