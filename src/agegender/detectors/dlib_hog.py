"""dlib's HOG + linear SVM frontal face detector (the default)."""

from __future__ import annotations

import threading

import dlib
import numpy as np
from numpy.typing import NDArray

from ..config import DEFAULT_MAX_DETECT_SIDE
from ..faces import Detection
from . import downscale


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector.

    It finds faces of about 80 px and up; each upsampling step halves that and costs
    about 4x the time. ``upsample=None`` (auto) runs at the image's size and upsamples
    once only when nothing was found, which keeps false positives of upsampled runs
    away from images whose faces are already visible.
    """

    name = "dlib"

    def __init__(
        self,
        upsample: int | None = None,
        threshold: float = 0.0,
        max_side: int | None = DEFAULT_MAX_DETECT_SIDE,
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
        small, factor = downscale(rgb, self.max_side)
        detector = self._detector()
        rects, scores, _ = detector.run(small, self.upsample or 0, self.threshold)
        if self.upsample is None and len(rects) == 0:
            rects, scores, _ = detector.run(small, 1, self.threshold)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            box = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
            found.append(Detection(tuple(v / factor for v in box), float(score)))  # type: ignore[arg-type]
        return found
