"""Chip landmarks from a detector's own 5 points and the card's template (chip_template.py):
the similarity fit against hand-computed transforms, the chip it gives against dlib's own,
the card fields, and the pipeline with a CenterFace stand-in whose points are known."""

from __future__ import annotations

import math
from pathlib import Path

import dlib
import numpy as np
import onnx
import pytest
from support.standins import CENTERFACE_CARD, centerface_graph

from agegender import Estimator, cards, crops
from agegender.cards import load_card_file, parse_card
from agegender.chip_template import (
    DLIB_CHIP_POINTS,
    apply,
    fit_similarity,
    invert,
    landmarks_from_keypoints,
    to_chip_frame,
)
from agegender.detectors.centerface import CenterFaceDetector
from agegender.errors import CardError
from agegender.faces import Detection
from agegender.landmarks import Landmarker

# dlib's predictor on the test photo's face (as tests/test_crops.py)
ASTRONAUT_LANDMARKS = np.array(
    [(255.0, 104.0), (237.0, 105.0), (195.0, 101.0), (212.0, 103.0), (224.0, 135.0)]
)
TEMPLATE = np.array(
    [[0.2182, 0.2254], [0.7839, 0.235], [0.4887, 0.5041], [0.2533, 0.7623], [0.7051, 0.7657]]
)


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(math.radians(degrees)), scale * math.sin(math.radians(degrees))
    return np.array([[c, -s, tx], [s, c, ty]])


# -- the fit ------------------------------------------------------------------------------


def test_fit_of_two_points_by_hand() -> None:
    # (0, 0) -> (2, 3) and (1, 0) -> (2, 5): scale 2, a quarter turn, shift (2, 3)
    matrix = fit_similarity([[0, 0], [1, 0]], [[2, 3], [2, 5]])
    np.testing.assert_allclose(matrix, [[0, -2, 2], [2, 0, 3]], atol=1e-12)


@pytest.mark.parametrize(
    ("scale", "degrees", "tx", "ty"), [(1, 0, 0, 0), (0.01, 30, 5, -7), (3.5, -120, 400, 12)]
)
def test_fit_recovers_a_known_similarity(scale, degrees, tx, ty) -> None:
    truth = similarity(scale, degrees, tx, ty)
    src = np.array([[10.0, 20.0], [40.0, 22.0], [25.0, 45.0], [12.0, 60.0], [38.0, 61.0]])
    np.testing.assert_allclose(fit_similarity(src, apply(truth, src)), truth, atol=1e-9)
    np.testing.assert_allclose(apply(invert(truth), apply(truth, src)), src, atol=1e-9)


def test_fit_is_least_squares_and_never_a_reflection() -> None:
    # the template's mirror image is not reached: the fit keeps a rotation (det >= 0)
    matrix = fit_similarity(TEMPLATE, TEMPLATE * [-1, 1])
    assert np.linalg.det(matrix[:, :2]) >= 0
    assert not np.allclose(apply(matrix, TEMPLATE), TEMPLATE * [-1, 1], atol=1e-3)
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # noise that sums to nothing around an exact similarity leaves the fit where it was
    truth = similarity(2.0, 15, 3, 4)
    noise = np.array([[0.1, 0.0], [-0.1, 0.0], [-0.1, 0.0], [0.1, 0.0]])
    moved = apply(truth, src) + noise
    fitted = fit_similarity(src, moved)
    residual = ((apply(fitted, src) - moved) ** 2).sum()
    assert residual <= ((apply(truth, src) - moved) ** 2).sum() + 1e-12


def test_coinciding_points_are_refused() -> None:
    with pytest.raises(ValueError):
        fit_similarity(np.ones((5, 2)), TEMPLATE)


def test_dlibs_chip_frame_is_its_own_fit() -> None:
    """to_chip_frame is the transform dlib's get_face_chip_details makes (size 1, padding 0)."""
    shape = dlib.full_object_detection(
        dlib.rectangle(180, 80, 270, 170),
        [dlib.point(int(x), int(y)) for x, y in ASTRONAUT_LANDMARKS],
    )
    size = 1000
    details = dlib.get_face_chip_details(shape, size, 0.0)
    to_chip = to_chip_frame(ASTRONAUT_LANDMARKS)
    scale = 1 / math.hypot(to_chip[0, 0], to_chip[1, 0])  # image pixels per chip unit
    assert details.rect.width() == pytest.approx(scale, rel=1e-6)  # the unit square
    to_image = invert(to_chip)
    assert details.angle == pytest.approx(math.atan2(to_image[1, 0], to_image[0, 0]), abs=1e-9)
    centre = apply(invert(to_chip), [[0.5, 0.5]])[0]
    middle = (
        (details.rect.left() + details.rect.right()) / 2,
        (details.rect.top() + details.rect.bottom()) / 2,
    )
    np.testing.assert_allclose(middle, centre, atol=1e-3)


# -- the chip -------------------------------------------------------------------------------


def dlib_chip(rgb, landmarks, size: int, padding: float) -> np.ndarray:
    shape = dlib.full_object_detection(
        dlib.rectangle(0, 0, 10, 10), [dlib.point(int(x), int(y)) for x, y in landmarks]
    )
    return dlib.extract_image_chip(rgb, dlib.get_face_chip_details(shape, size, padding))


@pytest.mark.parametrize(("size", "padding"), [(64, 0.2), (32, 0.2), (150, 0.25)])
def test_the_predictors_landmarks_give_dlibs_own_chip(astronaut_rgb, size, padding) -> None:
    face = Detection((180.0, 80.0, 270.0, 170.0), 1.0, landmarks=ASTRONAUT_LANDMARKS)
    ours = crops.chip(astronaut_rgb, face, (size, size), padding)
    np.testing.assert_array_equal(
        ours, dlib_chip(astronaut_rgb, ASTRONAUT_LANDMARKS, size, padding)
    )


@pytest.mark.parametrize(("size", "padding"), [(64, 0.2), (32, 0.2)])
def test_keypoints_on_the_template_give_the_dlib_chip(astronaut_rgb, size, padding) -> None:
    """Keypoints that are the template mapped into the image by dlib's chip transform of
    the predictor's points: their chip is dlib's chip of those points."""
    keypoints = apply(invert(to_chip_frame(ASTRONAUT_LANDMARKS)), TEMPLATE)
    landmarks = landmarks_from_keypoints(keypoints, TEMPLATE)
    face = Detection((180.0, 80.0, 270.0, 170.0), 1.0, landmarks=landmarks, keypoints=keypoints)
    ours = crops.chip(astronaut_rgb, face, (size, size), padding)
    expected = dlib_chip(astronaut_rgb, ASTRONAUT_LANDMARKS, size, padding)
    assert np.abs(ours.astype(int) - expected).max() <= 1
    assert np.mean(ours != expected) < 0.01


def test_the_template_fit_follows_a_rotated_face() -> None:
    """Keypoints rotated and scaled in the image: the landmarks move with them."""
    keypoints = apply(similarity(120.0, 0, 100, 50), TEMPLATE)
    moved = similarity(0.5, 30, 10, 20)
    np.testing.assert_allclose(
        landmarks_from_keypoints(apply(moved, keypoints), TEMPLATE),
        apply(moved, landmarks_from_keypoints(keypoints, TEMPLATE)),
        atol=1e-9,
    )
    np.testing.assert_allclose(
        landmarks_from_keypoints(keypoints, TEMPLATE),
        apply(similarity(120.0, 0, 100, 50), DLIB_CHIP_POINTS),
        atol=1e-9,
    )


# -- the card ---------------------------------------------------------------------------------


def detector_card(**output) -> dict:
    return {
        "id": "cf",
        "task": "face-detection",
        "source": {"file": "cf.onnx"},
        "input": {"channels": "RGB"},
        "output": {
            "decoder": "centerface",
            "outputs": {"heatmap": "a", "scale": "b", "offset": "c", "landmarks": "d"},
            **output,
        },
    }


def test_the_card_fields() -> None:
    spec = parse_card(detector_card()).detection
    assert spec is not None and spec.chip_landmarks == "predictor" and spec.chip_template is None
    spec = parse_card(
        detector_card(chip_landmarks="template", chip_template=TEMPLATE.tolist())
    ).detection
    assert spec is not None and spec.chip_landmarks == "template"
    np.testing.assert_allclose(spec.chip_template, TEMPLATE)
    for card_id in ("centerface", "centerface-int8"):
        shipped = cards.get_card(card_id).detection
        assert shipped is not None and shipped.chip_landmarks == "template"
        assert shipped.chip_template is not None and len(shipped.chip_template) == 5


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            {"chip_landmarks": "keypoints"},
            "[output] chip_landmarks must be one of predictor, template",
        ),
        (
            {"chip_landmarks": "template"},
            'chip_landmarks = "template" needs [output] chip_template',
        ),
        ({"chip_template": [[0.2, 0.2]] * 4}, "[output] chip_template must be 5 distinct [x, y]"),
        ({"chip_template": [[0.5, 0.5]] * 5}, "[output] chip_template must be 5 distinct [x, y]"),
        ({"chip_template": [["a", 0]] * 5}, "[output] chip_template must be 5 distinct [x, y]"),
        ({"chip_template": [[0.1, 0.2, 0.3]] * 5}, "[output] chip_template must be 5 distinct"),
        ({"chip_template": "mean"}, "[output] chip_template must be 5 distinct [x, y]"),
        ({"chip_template": [[1e9, 0], *TEMPLATE.tolist()[1:]]}, "[output] chip_template must"),
    ],
)
def test_card_faults_are_one_line(output: dict, message: str) -> None:
    with pytest.raises(CardError) as info:
        parse_card(detector_card(**output))
    assert message in str(info.value) and "\n" not in str(info.value)


# -- the pipeline -------------------------------------------------------------------------------

# (y, x) of each point in units of the box's height and width from its top left corner
POINTS_YX = [0.3, 0.3, 0.3, 0.7, 0.55, 0.5, 0.75, 0.35, 0.75, 0.65]
CARD = CENTERFACE_CARD.format(max_side=960).replace("{", "{{").replace("}", "}}") + (
    """chip_landmarks = "{mode}"
chip_template = [[0.2182, 0.2254], [0.7839, 0.235], [0.4887, 0.5041],
                 [0.2533, 0.7623], [0.7051, 0.7657]]
"""
)


def standin_graph() -> onnx.ModelProto:
    """heatmap = a cell's brightness / 255; boxes 64 px (scale log 16); fixed points."""
    return centerface_graph(log_scale=math.log(16), points=POINTS_YX)


def standin(tmp_path: Path, mode: str, monkeypatch) -> Path:
    onnx.save_model(standin_graph(), str(tmp_path / "centerface.onnx"))
    path = tmp_path / "centerface.toml"
    path.write_text(CARD.format(mode=mode))
    real = cards.get_card
    monkeypatch.setattr(
        cards, "get_card", lambda ref: load_card_file(path) if ref == "centerface" else real(ref)
    )
    return path


def bright_square() -> np.ndarray:
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:264, 300:364] = 200
    return image


def test_the_detector_places_landmarks_from_its_points(tmp_path: Path, monkeypatch) -> None:
    path = standin(tmp_path, "template", monkeypatch)
    detector = CenterFaceDetector(load_card_file(path), tmp_path / "centerface.onnx")
    faces = detector.detect(bright_square())
    assert faces
    for face in faces:
        assert face.keypoints is not None and face.landmarks is not None
        np.testing.assert_allclose(
            face.landmarks, landmarks_from_keypoints(face.keypoints, TEMPLATE), atol=1e-9
        )


@pytest.mark.parametrize("mode", ["predictor", "template"])
def test_the_pipeline_runs_the_predictor_only_when_asked(
    tmp_path: Path, monkeypatch, mode: str
) -> None:
    standin(tmp_path, mode, monkeypatch)
    calls = []
    real = Landmarker.__call__

    def counted(self, rgb, box):
        calls.append(box)
        return real(self, rgb, box)

    monkeypatch.setattr(Landmarker, "__call__", counted)
    est = Estimator(detector="centerface", tta=False)
    found = est.predict(bright_square())
    assert found and all(f.age is not None and f.gender is not None for f in found)
    assert all(f.landmarks is not None for f in found)
    if mode == "template":
        assert calls == []
        # the eye line of the placed landmarks is level, as the stand-in's points are
        for face in found:
            assert face.landmarks is not None
            ys = [y for _, y in face.landmarks[:4]]
            assert max(ys) - min(ys) < 8
    else:
        assert len(calls) == len(found)
