"""The real photo and scenes composed from it: faces found where they are, plausible estimates."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT, ASTRONAUT_BOX, box_matches, compose_scene
from PIL import Image

from agegender import Estimator, Face


def _plausible_adult_woman(face: Face) -> None:
    assert face.gender is not None and face.age is not None
    assert face.gender.label == "female"
    assert 0.5 < face.gender.probability <= 1.0
    assert 20 <= face.age.value <= 60
    low, high = face.age.interval
    assert low <= face.age.value <= high
    assert 0 < face.age.std < 25


def test_astronaut_one_adult_woman(estimator: Estimator) -> None:
    faces = estimator.predict(str(ASTRONAUT))
    assert len(faces) == 1
    face = faces[0]
    assert face.box == ASTRONAUT_BOX
    assert face.landmarks is not None and len(face.landmarks) == 5
    x1, y1, x2, y2 = face.box
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)
    _plausible_adult_woman(face)


def test_astronaut_with_default_tta(astronaut_rgb) -> None:
    faces = Estimator().predict(astronaut_rgb)
    assert len(faces) == 1
    _plausible_adult_woman(faces[0])


def test_every_input_kind_gives_the_same_face(estimator: Estimator, astronaut_rgb) -> None:
    """Path, bytes, PIL image, RGB array and BGR array are the same picture."""
    reference = estimator.predict(str(ASTRONAUT))
    with Image.open(ASTRONAUT) as image:
        from_pil = estimator.predict(image)
    others = [
        estimator.predict(ASTRONAUT.read_bytes()),
        from_pil,
        estimator.predict(astronaut_rgb),
        estimator.predict(np.ascontiguousarray(astronaut_rgb[:, :, ::-1]), channels="BGR"),
    ]
    for faces in others:
        assert faces == reference


def test_scene_one_result_per_face_at_the_right_place(estimator: Estimator, scene) -> None:
    faces = estimator.predict(scene.rgb)
    assert len(faces) == len(scene.expected)
    unmatched = list(faces)
    for want in scene.expected:
        hits = [f for f in unmatched if box_matches(f.box, want)]
        assert len(hits) == 1, f"no single face near {want}: {[f.box for f in faces]}"
        unmatched.remove(hits[0])
        _plausible_adult_woman(hits[0])


def test_scene_small_faces_need_upsampling(astronaut_rgb) -> None:
    """Copies at 45% (about 40 px faces) are below dlib's 80 px; auto upsampling finds them."""
    small = compose_scene(
        astronaut_rgb, [(0.45, 30, 40, False), (0.45, 400, 200, True)], size=(400, 640)
    )
    without = Estimator(tta=False, upsample=0).detector.detect(small.rgb)
    assert without == []
    faces = Estimator(tta=False).predict(small.rgb)
    assert len(faces) == 2
    for want in small.expected:
        assert sum(box_matches(f.box, want) for f in faces) == 1


def test_huge_image_detected_on_a_downscaled_copy(estimator: Estimator, astronaut_rgb) -> None:
    """A 2048 px image is detected on a 1600 px copy and the boxes are mapped back exactly."""
    big = cv2.resize(astronaut_rgb, (2048, 2048), interpolation=cv2.INTER_LINEAR)
    copy = cv2.resize(big, (1600, 1600), interpolation=cv2.INTER_AREA)
    found = estimator.detector.detect(big)
    on_copy = estimator.detector.detect(copy)
    assert len(found) == len(on_copy) >= 1
    for got, small in zip(found, on_copy, strict=True):
        assert got.box == pytest.approx(tuple(v * 2048 / 1600 for v in small.box))
    faces = sorted(estimator.predict(big), key=lambda f: -f.score)
    assert box_matches(faces[0].box, tuple(v * 4 for v in ASTRONAUT_BOX))
    _plausible_adult_woman(faces[0])
