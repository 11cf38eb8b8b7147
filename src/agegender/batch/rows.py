"""The dataset's rows: one per face, plus one per input without a face or with an error.

The README's "Batch jobs" section documents these columns; every sink (Parquet, JSONL,
CSV) and both engines write exactly these, in this order. Values keep full precision
(``predict``'s JSON rounds them for reading).

With ``--video-rows tracks`` (the manifest's ``video.rows``) a video gives one row per
tracked person instead of one per face per sampled frame, and :data:`TRACK_COLUMNS`
follow ``time`` in every row of the dataset (empty for images):

    track            the person's track id in the video (as ``agegender video --tracks``)
    first_frame      first and last frame index the person was detected in
    last_frame
    first_time       the same in seconds
    last_time
    frames_seen      detection frames matched to the track
    frames_used      frames the fusion kept (robust to a few bad frames)

and the usual columns hold the person's values: ``age_*``, ``p_age_ge_*``, ``gender_*``
fused over the track; ``box_*``, ``score``, ``frame``, ``time`` the best face (highest
quality weight: size, sharpness, detector score) and the frame it is in; ``face`` the
person's number in the video (0, 1, ... by track id); ``landmarks`` empty. A video with no
confirmed person gives one row without a face, as an image without one does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from ..results import ImageResult
    from .sources import Input

BASE_COLUMNS: list[tuple[str, str]] = [
    ("path", "string"),
    ("frame", "int32"),
    ("time", "float64"),
    ("source_size", "int64"),
    ("source_mtime_ns", "int64"),
    ("source_sha256", "string"),
    ("width", "int32"),
    ("height", "int32"),
    ("face", "int32"),
    ("box_x1", "float64"),
    ("box_y1", "float64"),
    ("box_x2", "float64"),
    ("box_y2", "float64"),
    ("score", "float64"),
    ("landmarks", "list<float64>"),
    ("age_value", "float64"),
    ("age_std", "float64"),
    ("age_low", "float64"),
    ("age_high", "float64"),
    ("age_interval_mass", "float64"),
    ("age_group", "string"),
    ("age_group_probability", "float64"),
]
TRACK_COLUMNS: list[tuple[str, str]] = [
    ("track", "int32"),
    ("first_frame", "int32"),
    ("last_frame", "int32"),
    ("first_time", "float64"),
    ("last_time", "float64"),
    ("frames_seen", "int32"),
    ("frames_used", "int32"),
]
TAIL_COLUMNS: list[tuple[str, str]] = [
    ("gender_label", "string"),
    ("gender_probability", "float64"),
    ("error", "string"),
    ("age_models", "string"),
    ("gender_models", "string"),
    ("model_sha256", "string"),
    ("agegender_version", "string"),
]


def threshold_column(t: float) -> str:
    return f"p_age_ge_{t:g}"


def columns(thresholds: Sequence[float] = (), tracks: bool = False) -> list[tuple[str, str]]:
    extra = [(threshold_column(t), "float64") for t in thresholds]
    base = BASE_COLUMNS
    if tracks:
        at = [name for name, _ in BASE_COLUMNS].index("time") + 1
        base = BASE_COLUMNS[:at] + TRACK_COLUMNS + BASE_COLUMNS[at:]
    return base + extra + TAIL_COLUMNS


def arrow_schema(thresholds: Sequence[float] = (), tracks: bool = False) -> pa.Schema:
    import pyarrow as pa

    kinds = {
        "string": pa.string(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "list<float64>": pa.list_(pa.float64()),
    }
    return pa.schema([(name, kinds[kind]) for name, kind in columns(thresholds, tracks)])


def result_rows(
    item: Input,
    result: ImageResult,
    constants: dict[str, Any],
    thresholds: Sequence[float] = (),
    sha256: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of one result (an image, or one video frame) of `item`."""
    base: dict[str, Any] = {
        "path": item.path,
        "frame": result.frame,
        "time": result.time,
        "source_size": item.size if item.size >= 0 else None,
        "source_mtime_ns": item.mtime_ns if item.mtime_ns >= 0 else None,
        "source_sha256": sha256,
        "width": result.width,
        "height": result.height,
    }
    error = result.error
    if error is not None and not error.startswith(item.path):
        error = f"{item.path}: {error.split(': ', 1)[-1]}" if error.startswith("<") else error
    if error is not None or not result.faces:
        return [{**base, "error": error, **constants}]
    rows = []
    for index, face in enumerate(result.faces):
        row: dict[str, Any] = dict(base)
        x1, y1, x2, y2 = face.box
        row.update(face=index, box_x1=x1, box_y1=y1, box_x2=x2, box_y2=y2, score=face.score)
        if face.landmarks is not None:
            row["landmarks"] = [float(v) for point in face.landmarks for v in point]
        age = face.age
        if age is not None:
            row.update(_age_values(age, thresholds))
        if face.gender is not None:
            row.update(
                gender_label=face.gender.label, gender_probability=float(face.gender.probability)
            )
        row["error"] = None
        row.update(constants)
        rows.append(row)
    return rows


def person_rows(
    item: Input,
    people: Sequence[Any],
    size: tuple[int, int] | None,
    constants: dict[str, Any],
    thresholds: Sequence[float] = (),
    sha256: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of one video with ``--video-rows tracks``: one per person
    (:class:`agegender.people.Person`), or one without a face when there is none."""
    base: dict[str, Any] = {
        "path": item.path,
        "source_size": item.size if item.size >= 0 else None,
        "source_mtime_ns": item.mtime_ns if item.mtime_ns >= 0 else None,
        "source_sha256": sha256,
        "width": None if size is None else size[0],
        "height": None if size is None else size[1],
    }
    if not people:
        return [{**base, "error": None, **constants}]
    rows = []
    for index, person in enumerate(people):
        row: dict[str, Any] = dict(base)
        row.update(
            track=person.id,
            first_frame=person.first_frame,
            last_frame=person.last_frame,
            first_time=float(person.first_time),
            last_time=float(person.last_time),
            frames_seen=person.frames_seen,
            frames_used=person.frames_used,
            face=index,
        )
        if person.best_box is not None:
            x1, y1, x2, y2 = person.best_box
            row.update(
                frame=person.best_frame,
                time=person.best_time,
                box_x1=float(x1),
                box_y1=float(y1),
                box_x2=float(x2),
                box_y2=float(y2),
                score=None if person.best_score is None else float(person.best_score),
            )
        age = person.age
        if age is not None:
            row.update(_age_values(age, thresholds))
        if person.gender is not None:
            row.update(
                gender_label=person.gender.label,
                gender_probability=float(person.gender.probability),
            )
        row["error"] = None
        row.update(constants)
        rows.append(row)
    return rows


def _age_values(age: Any, thresholds: Sequence[float]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "age_value": float(age.value),
        "age_std": float(age.std),
        "age_low": float(age.interval[0]),
        "age_high": float(age.interval[1]),
        "age_interval_mass": float(age.interval_mass),
        "age_group": age.group,
        "age_group_probability": None
        if age.group_probability is None
        else float(age.group_probability),
    }
    for t in thresholds:
        p = age.p_at_least.get(t)
        out[threshold_column(t)] = None if p is None else float(p)
    return out


def error_row(item: Input, message: str, constants: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": item.path,
        "source_size": item.size if item.size >= 0 else None,
        "source_mtime_ns": item.mtime_ns if item.mtime_ns >= 0 else None,
        "error": message,
        **constants,
    }


def text_value(value: Any) -> Any:
    """A value as CSV holds it: lists as JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    return value
