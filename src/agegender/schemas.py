"""JSON Schemas of what agegender writes: one image's result (`predict --json` and
`--jsonl`, `POST /v1/estimate`), a video frame (`video --frames`) and a live one (`POST
/v1/sessions/{id}/frames`), a person (`video --tracks` as JSONL, a session's `people`)
and a live session's summary.

They are the contract a client codes against: the server puts them in its OpenAPI
document (`/openapi.json`, the 200 answers), and the tests check real outputs against
them. Every object is closed (`additionalProperties: false`), so a field added to an
output without its schema fails those tests. Draft 2020-12, which OpenAPI 3.1 uses.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

NUMBER: Schema = {"type": "number"}
INTEGER: Schema = {"type": "integer"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _pair(item: Schema = NUMBER) -> Schema:
    return {"type": "array", "items": item, "minItems": 2, "maxItems": 2}


def _triple() -> Schema:
    return {"type": "array", "items": NUMBER, "minItems": 3, "maxItems": 3}


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """A closed object: every property required except `optional`."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


BOX: Schema = {
    "type": "array",
    "items": NUMBER,
    "minItems": 4,
    "maxItems": 4,
    "description": "[x1, y1, x2, y2] in pixels of the (EXIF-rotated) image",
}

AGE: Schema = _object(
    {
        "value": {**NUMBER, "description": "expected value of the age distribution (years)"},
        "std": {**NUMBER, "minimum": 0, "description": "its standard deviation (calibrated)"},
        "interval": {**_pair(), "description": "the central interval holding interval_mass"},
        "interval_mass": {**NUMBER, "exclusiveMinimum": 0, "maximum": 1},
        "p_at_least": {
            "type": "object",
            "description": "P(age >= t) for each threshold asked (age_threshold), keyed by t",
            "additionalProperties": {**NUMBER, "minimum": 0, "maximum": 1},
        },
        "group": {"type": "string", "description": "age-group models only: the likeliest group"},
        "group_probability": {**NUMBER, "minimum": 0, "maximum": 1},
    },
    optional=("p_at_least", "group", "group_probability"),
)

GENDER: Schema = _object(
    {
        "label": {"type": "string", "enum": ["female", "male"]},
        "probability": {**NUMBER, "minimum": 0, "maximum": 1, "description": "of the label"},
    }
)

FACE: Schema = _object(
    {
        "box": BOX,
        "score": {**NUMBER, "description": "the detector's confidence"},
        "landmarks": _nullable({"type": "array", "items": _pair(), "minItems": 5, "maxItems": 5}),
        "age": _nullable(AGE),
        "gender": _nullable(GENDER),
    }
)

IMAGE_RESULT: Schema = {
    **_object(
        {
            "path": {"type": "string", "description": "the input as given (upload: its name)"},
            "frame": {**INTEGER, "minimum": 0, "description": "video frames only"},
            "time": {**_nullable(NUMBER), "description": "video frames only: seconds"},
            "width": _nullable({**INTEGER, "minimum": 1}),
            "height": _nullable({**INTEGER, "minimum": 1}),
            "faces": {"type": "array", "items": FACE},
            "error": {
                **_nullable({"type": "string"}),
                "description": "null, or why this input gave no result (then faces is empty)",
            },
        },
        optional=("frame", "time"),
    ),
    "title": "ImageResult",
}

FRAME_FACE: Schema = _object(
    {
        "track": {**_nullable(INTEGER), "description": "null until the track is confirmed"},
        "box": BOX,
        "detected": {"type": "boolean", "description": "the detector ran on this frame"},
        "score": _nullable(NUMBER),
        "age": {**_nullable(AGE), "description": "this frame's own estimate"},
        "gender": _nullable(GENDER),
        "fused": _object({"age": _nullable(AGE), "gender": _nullable(GENDER)}),
    },
    optional=("score", "age", "gender", "fused"),
)

PERSON: Schema = {
    **_object(
        {
            "track": INTEGER,
            "first_frame": INTEGER,
            "last_frame": INTEGER,
            "first_time": NUMBER,
            "last_time": NUMBER,
            "frames_seen": INTEGER,
            "frames_used": INTEGER,
            "path": _object(
                {
                    "start": {**_triple(), "description": "[centre x, centre y, side]"},
                    "end": _triple(),
                    "mean_side": NUMBER,
                    "distance": NUMBER,
                    "points": {
                        "type": "array",
                        "items": {"type": "array", "items": NUMBER, "minItems": 4, "maxItems": 4},
                        "description": "[time, centre x, centre y, side]",
                    },
                }
            ),
            "age": _nullable(AGE),
            "gender": _nullable(GENDER),
            "fusion": {"type": "object", "additionalProperties": NUMBER},
            "thumbnail": _nullable({"type": "string"}),
            "thumbnail_frame": _nullable(INTEGER),
        }
    ),
    "title": "Person",
}

SESSION_OPTIONS: Schema = _object(
    {"detect_every": INTEGER, "min_hits": INTEGER, "max_lost": NUMBER}
)

_FRAME: dict[str, Schema] = {
    "frame": {**INTEGER, "minimum": 0},
    "time": {**NUMBER, "description": "seconds from the start"},
    "detected": {"type": "boolean", "description": "the detector ran on this frame"},
    "faces": {"type": "array", "items": FRAME_FACE},
}

VIDEO_FRAME: Schema = {**_object(_FRAME), "title": "VideoFrame"}

LIVE_FRAME: Schema = {
    **_object(
        {
            "session": {"type": "string"},
            **_FRAME,
            "width": {**INTEGER, "minimum": 1},
            "height": {**INTEGER, "minimum": 1},
            "ended": {"type": "array", "items": PERSON, "description": "tracks ended here"},
        }
    ),
    "title": "LiveFrame",
}

SESSION_OPENED: Schema = {
    **_object(
        {
            "id": {"type": "string"},
            "frames_url": {"type": "string"},
            "idle_timeout_s": NUMBER,
            "options": SESSION_OPTIONS,
        }
    ),
    "title": "SessionOpened",
}

SESSION_SUMMARY: Schema = {
    **_object(
        {
            "id": {"type": "string"},
            "frames": {**INTEGER, "minimum": 0},
            "age_s": NUMBER,
            "idle_s": NUMBER,
            "options": SESSION_OPTIONS,
            "people": {"type": "array", "items": PERSON},
        }
    ),
    "title": "SessionSummary",
}


def json_response(schema: Schema, description: str) -> dict[str, Any]:
    """An OpenAPI response object whose JSON body is `schema`."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def batch_row(thresholds: tuple[float, ...] = (), tracks: bool = False) -> Schema:
    """One row of `agegender batch --format jsonl` (the Parquet and CSV sinks hold the
    same columns): every column present, null where it does not apply. Built from the
    column table the sinks write (`batch.rows.columns`), so the two cannot differ."""
    from .batch.rows import columns

    kinds: dict[str, Schema] = {
        "string": {"type": "string"},
        "int32": INTEGER,
        "int64": INTEGER,
        "float64": NUMBER,
        "list<float64>": {"type": "array", "items": NUMBER},
    }
    return {
        **_object({name: _nullable(kinds[kind]) for name, kind in columns(thresholds, tracks)}),
        "title": "BatchRow",
    }
