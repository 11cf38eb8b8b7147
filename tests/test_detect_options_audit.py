"""Detection options against the detectors they steer: --min-score, a CenterFace threshold
(its scores are the heatmap's probabilities), refused where no face could pass it or every
cell would, on the command line, the Python API and a server's per-request detector alike;
and --min-score never drops the whole image taken as the face (--detector none), which the
command line refuses it for and the Python API and a server's per-request detector used to
apply it to."""

from __future__ import annotations

import json

import numpy as np
import pytest
from faceutils import ASTRONAUT
from fastapi.testclient import TestClient
from serve_support import shared_estimator

from agegender import cli
from agegender.config import EstimatorConfig
from agegender.errors import AgegenderError
from agegender.finder import FaceFinder
from agegender.serve import ServeSettings, create_app


@pytest.mark.parametrize("detector", ["centerface", "centerface-int8"])
@pytest.mark.parametrize("score", [1.0, 1.5, 0.0, -0.5])
def test_a_centerface_min_score_outside_its_scores_is_refused(detector: str, score: float) -> None:
    # CenterFace's threshold: at 1 or more no face is ever found (and each image scaled
    # down is passed again at twice the side for nothing); at 0 or less every heatmap cell
    # is a face (hundreds of false faces a scene)
    with pytest.raises(AgegenderError, match="--min-score must be between 0 and 1"):
        EstimatorConfig(detector=detector, min_score=score)
    with pytest.raises(AgegenderError, match="--min-score"):
        EstimatorConfig.from_preset("default", detector=detector, min_score=score)
    # a server's per-request detector (with_overrides) from a dlib configuration
    with pytest.raises(AgegenderError, match=detector):
        EstimatorConfig(detector="dlib", min_score=score).with_overrides(detector=detector)


def test_min_scores_that_apply_are_taken() -> None:
    for detector, score in (("centerface-int8", 0.2), ("centerface", 0.99), ("dlib", 1.5)):
        assert EstimatorConfig(detector=detector, min_score=score).min_score == score
    assert EstimatorConfig(detector="dlib", min_score=-0.5).min_score == -0.5  # dlib's margin


def test_the_command_line_refuses_it_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(
        ["predict", "--jsonl", str(ASTRONAUT), "--detector", "centerface-int8", "--min-score", "1"]
    )
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert "--min-score must be between 0 and 1" in err and err.strip().count("\n") == 0


def test_min_score_does_not_drop_the_whole_image_taken_as_the_face() -> None:
    image = np.full((64, 48, 3), 120, np.uint8)
    config = EstimatorConfig(detector="dlib", min_score=1.5).with_overrides(detector="none")
    (face,) = FaceFinder(config).find(image)
    assert face.whole_image and face.box == (0.0, 0.0, 48.0, 64.0)
    # min_face still applies to it (a crop smaller than the faces asked for)
    assert FaceFinder(config.with_overrides(min_face=100)).find(image) == []


def test_a_servers_per_request_detector_none_keeps_the_image_as_the_face() -> None:
    png = ASTRONAUT.read_bytes()
    app = create_app(ServeSettings(), estimator=shared_estimator().derive(min_score=1.5))
    with TestClient(app) as client:
        answer = client.post(
            "/v1/estimate",
            params={"detector": "none"},
            files={"image": (ASTRONAUT.name, png, "image/png")},
        )
        assert answer.status_code == 200, answer.text
        faces = json.loads(answer.text)["faces"]
        assert len(faces) == 1
