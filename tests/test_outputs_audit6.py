"""Audit (outputs against their schemas and the README): a video that gave no frame is
reported without a frame index or time; every field of `models list --json` and every
error code of the server is in the README; the OpenAPI document lists the 503 that ending
a session can answer."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from faceutils import run_cli
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from serve_support import shared_estimator

from agegender import schemas
from agegender.commands.models import model_entries
from agegender.serve import ServeSettings, create_app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SERVE = ROOT / "src" / "agegender" / "serve"


def _broken_videos(folder: Path) -> list[Path]:
    noise = folder / "noise.mp4"
    noise.write_bytes(b"this is not a video")
    empty = folder / "empty.avi"
    empty.write_bytes(b"")
    return [noise, empty, folder / "missing.mkv"]


def test_a_video_that_gave_no_frame_has_no_frame_index_or_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable, empty or missing video was reported as `"frame": 0, "time": 0.0`
    (CSV `0,0.0`): a frame that was never decoded. `batch --video-rows tracks` wrote the
    same input with both null; now every output reports it as an unreadable image is."""
    videos = _broken_videos(tmp_path)
    status, out, _ = run_cli(capsys, "predict", *map(str, videos), "--jsonl", "--no-progress")
    assert status == 1
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in results] == [str(v) for v in videos]
    for result in results:
        assert result["error"] and result["faces"] == []
        assert "frame" not in result and "time" not in result, result
        Draft202012Validator(schemas.IMAGE_RESULT).validate(result)
    status, out, _ = run_cli(capsys, "predict", *map(str, videos), "--csv", "--no-progress")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["frame"], r["time"]) for r in rows] == [("", "")] * len(videos)


def test_a_batch_row_of_a_video_that_gave_no_frame_has_null_frame_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    videos = _broken_videos(tmp_path)
    dest = tmp_path / "out"
    status, _, err = run_cli(
        capsys, "batch", *map(str, videos), "--out", str(dest), "--format", "jsonl",
        "--no-progress",
    )  # fmt: skip
    assert status in (0, 1), err
    rows = [json.loads(line) for part in dest.glob("*.jsonl") for line in part.open()]
    assert sorted(r["path"] for r in rows) == sorted(map(str, videos))
    schema = schemas.batch_row()
    for row in rows:
        assert row["error"] and row["frame"] is None and row["time"] is None, row
        Draft202012Validator(schema).validate(row)


def _readme_paragraph(start: str) -> str:
    at = README.index(start)
    return README[at : README.index("\n\n", at)]


def test_every_field_of_models_list_json_is_in_the_readme() -> None:
    """`wheel`, `npm`, `member`, `source_kind` and a detector card's `detection` were
    printed but not named where the README lists the fields."""
    text = _readme_paragraph("`models list --json` gives one object per card")
    named = set(re.findall(r"`([a-z_0-9]+)`", text))
    fields: set[str] = set()
    for entry in model_entries():
        fields |= set(entry)
        fields |= set(entry.get("detection") or {})
    assert fields - named == set()


def _error_codes() -> set[str]:
    """Every `code` the server's ApiErrors carry, read from its source."""
    codes: set[str] = set()
    for path in SERVE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        # ApiError(404, "session_not_found", ...), and the HTTP layer's {404: "not_found"}
        codes |= set(re.findall(r"\b\d{3}[,:]\s*\"([a-z_]+)\"", text))
    return codes


def test_every_error_code_of_the_server_is_in_the_readme() -> None:
    """The live sessions' codes (`session_not_found`, `session_busy`,
    `too_many_sessions`, `frame_size_changed`) were in no table of the README."""
    section = README[README.index("### Limits and errors") : README.index("### How a request")]
    named = set(re.findall(r"`([a-z_]+)`", section))
    codes = _error_codes()
    assert {"session_not_found", "frame_size_changed", "queue_full"} <= codes
    assert codes - named == set()


def test_ending_a_session_while_stopping_is_a_503_the_document_lists() -> None:
    """DELETE /v1/sessions/ID answers 503 `shutting_down` once the server stops, but its
    OpenAPI entry listed only 200 and 404."""
    app = create_app(ServeSettings(), estimator=shared_estimator().derive(upsample=0))
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()
        opened = client.post("/v1/sessions")
        assert opened.status_code == 201, opened.text
        app.state.service.stopping = True
        try:
            answer = client.delete(f"/v1/sessions/{opened.json()['id']}")
        finally:
            app.state.service.stopping = False
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
    responses = doc["paths"]["/v1/sessions/{session_id}"]["delete"]["responses"]
    assert "503" in responses
    schema = responses["503"]["content"]["application/json"]["schema"]
    Draft202012Validator(schema).validate(answer.json())
