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
        found: list[_Seen] = []
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
                # the detector's own landmarks (CenterFace's from its points, as without
                # the sweep), else the landmark model's on the box it is run on
                points = det.landmarks
                if points is None and self.landmarks is not None:
                    points = self.landmarks(rotated, det.landmark_box or det.box)
                keypoints = det.keypoints
                if inverse is not None:
                    points = None if points is None else _apply(inverse, points)
                    keypoints = None if keypoints is None else _apply(inverse, keypoints)
                tilt = None if det.keypoints is None else abs(eye_points_tilt(det.keypoints))
                found.append(_Seen(det.score, upright, points, keypoints, angle == 0, tilt))
        return self._merge(found, rgb.shape[1], rgb.shape[0])

    def _merge(self, found: Sequence[_Seen], width: int, height: int) -> list[Detection]:
        # Greedy, best score first: a detection joins the first kept face whose centre is
        # near its own, else it starts a new face.
        faces: list[_Face] = []
        for seen in sorted(found, key=lambda f: -f.score):
            upright = seen.upright
            for face in faces:
                first = face.best.upright
                size = max(first.width, first.height, upright.width, upright.height)
                near = math.dist((first.cx, first.cy), (upright.cx, upright.cy))
                if near < MERGE_DISTANCE * size:
                    face.support += 1
                    face.at_zero = face.at_zero or seen.at_zero
                    face.offer(seen)
                    break
            else:
                faces.append(_Face(seen, seen, seen.at_zero))
        detections = []
        for face in faces:
            # Seen upright as the plain detector would, or a strong face seen at 2+ angles.
            if not face.at_zero and (face.best.score < self.min_score or face.support < 2):
                continue
            kept = face.kept
            box = _face_box(kept.upright)
            if kept.upright.angle != 0:
                # cut at the image's edges: on a rotated copy a face at the edge reaches
                # into the repeated border pixels (10 px over a 200 px chip's top edge)
                box = (
                    max(0.0, box[0]),
                    max(0.0, box[1]),
                    min(float(width), box[2]),
                    min(float(height), box[3]),
                )
            detections.append(
                Detection(
                    box,
                    face.best.score,
                    kept.points,
                    upright=kept.upright,
                    support=face.support,
                    keypoints=kept.keypoints,
                )
            )
        return detections


@dataclass
class _Seen:
    """One detection on one rotated copy, mapped back to the image."""

    score: float
    upright: Upright
    points: NDArray[np.float64] | None
    keypoints: NDArray[np.float64] | None
    at_zero: bool
    tilt: float | None  # how far its eye line tilts on that copy (a detector's own points)


@dataclass
class _Face:
    """A face's detections merged: the best-scoring one (its score, and where the others
    join), and the one kept (its angle, box and points).

    The kept one is the best-scoring, as DEX kept it, unless the detections carry the
    detector's own eye points (CenterFace): then the one whose eye line is most level on
    its copy. CenterFace scores a face alike from -60 to 60 degrees (INT8 scores tie at
    several angles): on 9 composed utkface-dev scenes the best score's angle was 23.6
    degrees from upright on average (an upright face kept at 45 or 50 degrees), the most
    level eye line's 2.5 (11.6 without turning)."""

    best: _Seen
    kept: _Seen
    at_zero: bool
    support: int = 1

    def offer(self, seen: _Seen) -> None:
        if seen.tilt is not None and self.kept.tilt is not None and seen.tilt < self.kept.tilt:
            self.kept = seen


def eye_points_tilt(keypoints: NDArray[np.float64]) -> float:
    """Degrees the eye line of a detector's own 5 points tilts (CenterFace's: the eye
    centres first, the one on the image's left first; clockwise on screen is positive)."""
    (lx, ly), (rx, ry) = keypoints[0], keypoints[1]
    return math.degrees(math.atan2(ry - ly, rx - lx))


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
