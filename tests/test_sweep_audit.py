"""DEX's rotation sweep around a detector that gives its own 5 points (CenterFace).

A marker detector stands in: it finds a red and a green square (the eyes, the red one on
the image's left when upright), reports a box around them clipped to the copy it is fed
(as CenterFace clips), its own 5 points, landmarks placed from them, and a score that
grows as the eye line tilts: CenterFace scores a face alike from -60 to 60 degrees, so
the best score says nothing about which copy is upright.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from agegender import rotation
from agegender.faces import Detection


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


class _Markers:
    name = "markers"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        pixels = rgb.astype(int)
        red = (pixels[..., 0] > 150) & (pixels[..., 1] < 100)
        green = (pixels[..., 1] > 150) & (pixels[..., 0] < 100)
        if not red.any() or not green.any():
            return []
        (lx, ly), (rx, ry) = _centroid(red), _centroid(green)
        tilt = math.degrees(math.atan2(ry - ly, rx - lx))
        cx, cy = (lx + rx) / 2, (ly + ry) / 2
        eyes = math.hypot(rx - lx, ry - ly)
        height, width = rgb.shape[:2]
        box = (
            max(0.0, cx - eyes),
            max(0.0, cy - eyes),
            min(float(width), cx + eyes),
            min(float(height), cy + 1.5 * eyes),
        )
        keypoints = np.array(
            [[lx, ly], [rx, ry], [cx, cy + 0.5 * eyes], [lx, ly + eyes], [rx, ry + eyes]]
        )
        landmarks = keypoints[[1, 1, 0, 0, 2]] + 0.25  # dlib's order, as a card's template
        score = min(0.99, 0.8 + abs(tilt) / 1000)
        return [Detection(box, score, landmarks, keypoints=keypoints, landmark_box=box)]


def _face(width: int, height: int, cx: int, cy: int, degrees: float) -> np.ndarray:
    """A grey picture with the two eye markers 40 px apart about (cx, cy), turned
    counter-clockwise by `degrees`."""
    image = np.full((height, width, 3), 90, np.uint8)
    angle = math.radians(degrees)
    for colour, side in (((255, 0, 0), -1), ((0, 255, 0), 1)):
        x = cx + side * 20 * math.cos(angle)
        y = cy - side * 20 * math.sin(angle)
        cv2.circle(image, (round(x), round(y)), 4, colour, -1)
    return image


def _no_landmark_model(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    raise AssertionError("the detector gave its landmarks: no landmark model is run")


@pytest.mark.parametrize("degrees", [0, 20, -25])
def test_the_sweep_keeps_the_copy_where_the_detectors_eye_points_are_level(degrees) -> None:
    """CenterFace INT8 on 9 composed utkface-dev scenes: the best score's angle was 23.6
    degrees from upright on average (upright faces kept at 45 and 50 degrees), worse than
    no turning (11.6); the most level eye line's 2.5."""
    image = _face(240, 200, 120, 100, degrees)
    sweep = rotation.SweepDetector(_Markers(), landmarks=_no_landmark_model)
    (face,) = sweep.detect(image)
    assert face.upright is not None
    assert abs(face.upright.angle + degrees) <= 2.5  # the sweep's step is 5
    assert face.score >= 0.8 + 55 / 1000  # the score is the best one, at a tilted copy


def test_the_sweep_keeps_the_detectors_own_landmarks_and_points_mapped_back() -> None:
    image = _face(240, 200, 120, 100, 20)
    sweep = rotation.SweepDetector(_Markers(), landmarks=_no_landmark_model)
    (face,) = sweep.detect(image)
    # the markers' places in the image itself
    assert face.keypoints is not None and face.landmarks is not None
    left = np.array([120 - 20 * math.cos(math.radians(20)), 100 + 20 * math.sin(math.radians(20))])
    np.testing.assert_allclose(face.keypoints[0], left, atol=1.5)
    np.testing.assert_allclose(face.landmarks[2], face.keypoints[0] + 0.25, atol=1.0)
    # no landmarks from the detector: the landmark model runs on the detector's landmark box
    boxes: list[tuple[float, ...]] = []

    class Bare(_Markers):
        def detect(self, rgb: np.ndarray) -> list[Detection]:
            found = super().detect(rgb)
            for d in found:
                d.landmarks = None
                d.landmark_box = (1.0, 2.0, 3.0, 4.0)
            return found

    def model(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        boxes.append(box)
        return np.zeros((5, 2))

    rotation.SweepDetector(Bare(), start=0, stop=0, step=5, landmarks=model).detect(image)
    assert boxes == [(1.0, 2.0, 3.0, 4.0)]


def test_a_face_found_on_a_rotated_copy_is_reported_inside_the_image() -> None:
    """A face at the top edge found upright on a copy turned by 20 degrees: its box there
    reaches into the border the rotation adds (repeated edge pixels), above the image."""
    image = _face(240, 200, 120, 12, 20)
    (face,) = rotation.SweepDetector(_Markers(), landmarks=_no_landmark_model).detect(image)
    assert face.upright is not None and face.upright.angle != 0
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= 240 and 0 <= y1 < y2 <= 200
