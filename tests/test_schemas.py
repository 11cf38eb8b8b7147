"""The JSON Schemas (`agegender.schemas`) against real outputs: `predict --json`, the
server's answers checked against the schemas its own `/openapi.json` publishes, and the
schemas' strictness (a wrong or extra field fails). `video`'s frames and tracks are
checked in tests/test_video_tracks.py (`run_video`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT, PATCH, gradient_canvas
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import validate as validate_openapi
from serve_support import shared_estimator

from agegender import cli, schemas
from agegender.results import AgeEstimate, Face, GenderEstimate, ImageResult
from agegender.serve import ServeSettings, create_app


def validate(instance: Any, schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    Draft202012Validator(schema).validate(instance)


@pytest.mark.parametrize(
    "schema",
    [
        schemas.IMAGE_RESULT,
        schemas.VIDEO_FRAME,
        schemas.LIVE_FRAME,
        schemas.PERSON,
        schemas.SESSION_OPENED,
        schemas.SESSION_SUMMARY,
        schemas.batch_row((18.0, 21.0), tracks=True),
    ],
)
def test_schemas_are_valid_json_schemas(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)


def test_predict_json_matches_the_schema(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jpg"
    status = cli.main(["predict", str(ASTRONAUT), str(missing), "--json", "--age-threshold", "18"])
    out, _ = capsys.readouterr()
    assert status == 1  # the missing file
    found, failed = json.loads(out)
    assert found["faces"] and "p_at_least" in found["faces"][0]["age"]
    assert failed["error"] and failed["faces"] == []
    for result in (found, failed):
        validate(result, schemas.IMAGE_RESULT)


def test_every_optional_field_matches_the_schema() -> None:
    """Video frames' `frame`/`time`, an age group, a face without landmarks or estimates."""
    grouped = AgeEstimate(30.0, 5.0, (25.0, 38.0), group="(25-32)", group_probability=0.6)
    faces = [
        Face((1, 2, 30, 40), 0.9, None, grouped, GenderEstimate("male", 0.7)),
        Face((1, 2, 30, 40), 0.9, ((1, 2),) * 5, None, None),
    ]
    result = ImageResult("clip.mp4", faces, None, 64, 48, frame=3, time=0.12)
    validate(result.to_dict(), schemas.IMAGE_RESULT)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.pop("faces"),
        lambda r: r.update(extra=1),
        lambda r: r["faces"][0]["gender"].update(label="unknown"),
        lambda r: r["faces"][0]["age"].update(std=-1.0),
        lambda r: r["faces"][0]["age"]["p_at_least"].update({"18": 1.5}),
        lambda r: r["faces"][0].update(box=[1, 2, 3]),
        lambda r: r["faces"][0]["age"].pop("interval"),
    ],
)
def test_the_schema_refuses_what_agegender_never_writes(change) -> None:
    face = Face(
        (1, 2, 30, 40),
        0.9,
        None,
        AgeEstimate(30.0, 5.0, (25.0, 38.0), p_at_least={18.0: 0.97}),
        GenderEstimate("female", 0.8),
    )
    result = ImageResult("a.jpg", [face], None, 64, 48).to_dict()
    validate(result, schemas.IMAGE_RESULT)
    broken = copy.deepcopy(result)
    change(broken)
    with pytest.raises(ValidationError):
        validate(broken, schemas.IMAGE_RESULT)


def _answer_schema(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    """The schema the document gives for an answer; never the empty schema that accepts
    anything (what FastAPI publishes for a route that returns a plain dict)."""
    schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"]
    published = dict(schema["schema"])
    assert published.get("additionalProperties") is False and published["required"], published
    return published


def _frame(patch: np.ndarray, index: int) -> bytes:
    canvas = gradient_canvas(480, 640)
    x0, y0 = 20 + 6 * index, 30 + 3 * index
    canvas[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(canvas[:, :, ::-1]))
    assert ok
    return data.tobytes()


def test_server_answers_match_the_schemas_of_its_openapi_document(astronaut_rgb) -> None:
    """Each 200/201 answer against the schema /openapi.json gives for it: what a client
    generated from the document would expect."""
    app = create_app(ServeSettings(), estimator=shared_estimator().derive(upsample=0))
    px1, py1, px2, py2 = PATCH
    patch = np.ascontiguousarray(astronaut_rgb[py1:py2, px1:px2])
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()
        validate_openapi(doc)  # the whole document is valid OpenAPI 3.1
        answer = client.post(
            "/v1/estimate",
            files={"image": ("astronaut.png", ASTRONAUT.read_bytes(), "image/png")},
            params={"age_threshold": [18, 21]},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["faces"]
        validate(answer.json(), _answer_schema(doc, "/v1/estimate", "post", "200"))

        opened = client.post("/v1/sessions", params={"min_hits": 1})
        assert opened.status_code == 201, opened.text
        validate(opened.json(), _answer_schema(doc, "/v1/sessions", "post", "201"))
        session = opened.json()["id"]
        frames_schema = _answer_schema(doc, "/v1/sessions/{session_id}/frames", "post", "200")
        for index in range(3):
            frame = client.post(
                f"/v1/sessions/{session}/frames",
                files={"image": ("f.jpg", _frame(patch, index), "image/jpeg")},
            )
            assert frame.status_code == 200, frame.text
            assert frame.json()["faces"][0]["track"] == 1
            validate(frame.json(), frames_schema)
        info = client.get(f"/v1/sessions/{session}")
        validate(info.json(), _answer_schema(doc, "/v1/sessions/{session_id}", "get", "200"))
        closed = client.delete(f"/v1/sessions/{session}")
        assert [p["track"] for p in closed.json()["people"]] == [1]  # a person is checked
        validate(closed.json(), _answer_schema(doc, "/v1/sessions/{session_id}", "delete", "200"))
