"""The dataset's rows: one per face, plus one per input without a face or with an error.

The README's "Batch jobs" section documents these columns; every sink (Parquet, JSONL,
CSV) and both engines write exactly these, in this order. Values keep full precision
(``predict``'s JSON rounds them for reading).
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


def columns(thresholds: Sequence[float] = ()) -> list[tuple[str, str]]:
    extra = [(threshold_column(t), "float64") for t in thresholds]
    return BASE_COLUMNS + extra + TAIL_COLUMNS


def arrow_schema(thresholds: Sequence[float] = ()) -> pa.Schema:
    import pyarrow as pa

    kinds = {
        "string": pa.string(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "list<float64>": pa.list_(pa.float64()),
    }
    return pa.schema([(name, kinds[kind]) for name, kind in columns(thresholds)])


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
            row.update(
                age_value=float(age.value),
                age_std=float(age.std),
                age_low=float(age.interval[0]),
                age_high=float(age.interval[1]),
                age_interval_mass=float(age.interval_mass),
                age_group=age.group,
                age_group_probability=None
                if age.group_probability is None
                else float(age.group_probability),
            )
            for t in thresholds:
                p = age.p_at_least.get(t)
                row[threshold_column(t)] = None if p is None else float(p)
        if face.gender is not None:
            row.update(
                gender_label=face.gender.label, gender_probability=float(face.gender.probability)
            )
        row["error"] = None
        row.update(constants)
        rows.append(row)
    return rows


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
