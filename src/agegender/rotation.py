"""Upright faces: DEX's rotation sweep, and a cheaper rotation from the 5 landmarks.

DEX ran its face detector on the image rotated from -60 to 60 degrees in 5 degree steps
and kept the best-scoring detection, so faces come out upright without landmarks; the
margin crop is then cut from the image rotated by the winning angle. ``SweepDetector``
does that around any :class:`~agegender.faces.FaceDetector` (detections of one face at
several angles are merged by the distance of their centres once mapped back), and
``align_by_landmarks`` gets the angle from the eye line instead, for one detector run.

A detection that has been aligned carries its upright box in ``Detection.upright``
(``angle`` in degrees, counter-clockwise as OpenCV counts, plus the centre and size of
the box in the upright frame); ``crops.crop_for`` then cuts margin crops with
:func:`upright_region` (one affine warp, border pixels repeated). Landmark chips need
nothing: dlib's chip is already rotated by the landmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from .config import DEFAULT_SWEEP
from .errors import AgegenderError
from .faces import Detection, FaceDetector, Upright

# Each rotated copy is another chance of a false positive: a face seen only on rotated
# copies is kept when its best score reaches this and it was seen at 2+ angles (dlib HOG
# scores; measured on the astronaut photo rotated by 30 degrees: the face 1.40, a patch
# of her suit 0.42 at -45 degrees).
SWEEP_MIN_SCORE = 0.5
# Two detections are one face when their centres are closer than this share of its size.
MERGE_DISTANCE = 0.5

Landmarks = Callable[[NDArray[np.uint8], tuple[float, float, float, float]], NDArray[np.float64]]


def sweep_angles(start: float, stop: float, step: float) -> list[float]:
    """Angles from start to stop inclusive, 0 first (it settles ties toward no rotation)."""
    if step <= 0 or stop < start:
        raise AgegenderError(
            f"rotation sweep needs start <= stop and step > 0, got {start}, {stop}, {step}"
        )
    count = math.floor((stop - start) / step + 1e-9) + 1
    angles = [round(start + i * step, 6) for i in range(count)]
    return sorted(angles, key=lambda a: (abs(a), a))


def rotate_image(
    rgb: NDArray[np.uint8], angle: float
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """The image rotated about its centre on a canvas that holds all of it, and the 2x3 map."""
    height, width = rgb.shape[:2]
    matrix = np.asarray(cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0), np.float64)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w = math.ceil(height * sin + width * cos)
    new_h = math.ceil(height * cos + width * sin)
    matrix[0, 2] += new_w / 2 - width / 2
    matrix[1, 2] += new_h / 2 - height / 2
    rotated = cv2.warpAffine(
        rgb, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(rotated, np.uint8), matrix


def _apply(matrix: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _face_box(upright: Upright) -> tuple[float, float, float, float]:
    """The face's box in the image: its centre and size, not the bounds of the rotated box
    (those grow by up to 41% at 45 degrees and no longer match a detector's face box)."""
    half_w, half_h = upright.width / 2, upright.height / 2
    return (upright.cx - half_w, upright.cy - half_h, upright.cx + half_w, upright.cy + half_h)


class SweepDetector:
    """DEX's alignment: the base detector on rotated copies, best score per face kept.

    The returned boxes are each face's own box in the original image (its upright box's
    centre mapped back, its size: ``_face_box``); landmarks, when a landmark model is
    given, are found on the upright copy and mapped back.
    """

    def __init__(
        self,
        base: FaceDetector,
        *,
        start: float = DEFAULT_SWEEP[0],
        stop: float = DEFAULT_SWEEP[1],
        step: float = DEFAULT_SWEEP[2],
        landmarks: Landmarks | None = None,
        min_score: float = SWEEP_MIN_SCORE,
    ):
        self.base = base
        self.name = f"{base.name}+sweep"
        self.angles = sweep_angles(start, stop, step)
        self.landmarks = landmarks
        self.min_score = min_score

    def detect(self, rgb: NDArray[np.uint8]) -> list[Detection]:
        found: list[tuple[float, Upright, NDArray[np.float64] | None, bool]] = []
        for angle in self.angles:
            rotated, matrix = (rgb, None) if angle == 0 else rotate_image(rgb, angle)
            inverse = None
            if matrix is not None:
                inverse = np.asarray(cv2.invertAffineTransform(matrix), np.float64)
            for det in self.base.detect(rotated):
                if det.whole_image:
                    return [det]  # nothing to sweep: the image is the face
                x1, y1, x2, y2 = det.box
                centre = np.array([[(x1 + x2) / 2, (y1 + y2) / 2]])
                if inverse is not None:
                    centre = _apply(inverse, centre)
                upright = Upright(float(centre[0, 0]), float(centre[0, 1]), x2 - x1, y2 - y1, angle)
                points = None
                if self.landmarks is not None:
                    points = self.landmarks(rotated, det.box)
                    if inverse is not None:
                        points = _apply(inverse, points)
                found.append((det.score, upright, points, angle == 0))
        return self._merge(found)

    def _merge(
        self, found: Sequence[tuple[float, Upright, NDArray[np.float64] | None, bool]]
    ) -> list[Detection]:
        # Greedy, best score first: a detection joins the first kept face whose centre is
        # near its own, else it starts a new face.
        faces: list[_Face] = []
        for score, upright, points, at_zero in sorted(found, key=lambda f: -f[0]):
            for face in faces:
                size = max(face.upright.width, face.upright.height, upright.width, upright.height)
                near = math.dist((face.upright.cx, face.upright.cy), (upright.cx, upright.cy))
                if near < MERGE_DISTANCE * size:
                    face.support += 1
                    face.at_zero = face.at_zero or at_zero
                    break
            else:
                faces.append(_Face(score, upright, points, at_zero))
        detections = []
        for face in faces:
            # Seen upright as the plain detector would, or a strong face seen at 2+ angles.
            if not face.at_zero and (face.score < self.min_score or face.support < 2):
                continue
            detections.append(
                Detection(
                    _face_box(face.upright),
                    face.score,
                    face.points,
                    upright=face.upright,
                    support=face.support,
                )
            )
        return detections


@dataclass
class _Face:
    score: float
    upright: Upright
    points: NDArray[np.float64] | None
    at_zero: bool
    support: int = 1


def eye_line_angle(landmarks: NDArray[np.float64]) -> float:
    """Degrees the eye line of dlib's 5 points tilts (clockwise on screen is positive).

    Points 0-1 are the corners of the eye on the image's right, 2-3 of the other eye.
    """
    right = landmarks[0:2].mean(axis=0)
    left = landmarks[2:4].mean(axis=0)
    dx, dy = right - left
    return math.degrees(math.atan2(dy, dx))


def align_by_landmarks(detection: Detection) -> None:
    """Mark a detection upright by its eye line (it must have 5 landmarks)."""
    if detection.landmarks is None or len(detection.landmarks) < 4:
        raise AgegenderError("landmark alignment needs the 5 landmarks")
    x1, y1, x2, y2 = detection.box
    angle = eye_line_angle(detection.landmarks)
    detection.upright = Upright((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, angle)


def upright_region(rgb: NDArray[np.uint8], upright: Upright, margin: float) -> NDArray[np.uint8]:
    """The square margin region of an upright box, at its own resolution.

    Like ``crops.margin_region``: the box grown by `margin` on every side and made square,
    border pixels repeated where it leaves the image; cut with one rotation about the
    face's centre, so only the region's pixels are interpolated, not the whole image.
    """
    side = max(upright.width, upright.height) * (1 + 2 * margin)
    length = max(1, round(side))
    matrix = cv2.getRotationMatrix2D((upright.cx, upright.cy), upright.angle, 1.0)
    matrix[0, 2] += length / 2 - upright.cx
    matrix[1, 2] += length / 2 - upright.cy
    region = cv2.warpAffine(
        rgb, matrix, (length, length), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(region, np.uint8)
