"""OpenCV's frontal-face Haar cascade."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..config import DEFAULT_MAX_DETECT_SIDE
from ..errors import AgegenderError
from ..faces import Detection
from . import downscale


class HaarDetector:
    """OpenCV's frontal-face Haar cascade; score = the cascade's final-stage weight."""

    name = "haar"

    def __init__(
        self,
        min_size: int = 24,
        max_side: int | None = DEFAULT_MAX_DETECT_SIDE,
        min_neighbors: int = 5,
    ):
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
        small, factor = downscale(rgb, self.max_side)
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
        # OpenCV's order depends on its threads' timing (the same image gave its faces in
        # either order under concurrent requests): highest score first, as CenterFace.
        found.sort(key=lambda d: (-d.score, d.box))
        return found
