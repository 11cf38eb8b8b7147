"""The face finder: detector, filters, landmarks and alignment, composed.

``FaceFinder.find(rgb)`` runs the configured detector (wrapped in DEX's rotation sweep
with ``align="sweep"``), drops faces under ``min_face`` pixels or ``min_score`` (a whole
image taken as the face has no score to pass), adds 5 landmarks to each face that has
none, and with ``align="landmarks"`` marks each face upright by its eye line. Everything
it does is read from an EstimatorConfig.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from . import rotation
from .config import EstimatorConfig
from .faces import Detection, FaceDetector, make_detector
from .landmarks import Landmarker

# Fields of the configuration the detector depends on: estimators that agree on them
# share one detector (and its per-thread state) whatever their filters.
# min_score too: it is CenterFace's decoding threshold, not only a filter afterwards
DETECTOR_FIELDS = (
    "detector",
    "upsample",
    "max_detect_side",
    "min_score",
    "detect_mirror",
    "align",
    "sweep",
)


def detector_key(config: EstimatorConfig) -> tuple[object, ...]:
    return tuple(getattr(config, name) for name in DETECTOR_FIELDS)


def build_detector(config: EstimatorConfig, landmarker: Landmarker) -> FaceDetector:
    """The configured detector, wrapped in DEX's rotation sweep with align="sweep"."""
    detection = config
    if config.upsample is None and config.align == "sweep":
        # auto would upsample (4x the time) at every angle without a face
        detection = replace(config, upsample=0)
    detector: FaceDetector = make_detector(config.detector, detection)
    if config.align == "sweep":
        start, stop, step = config.sweep_range
        detector = rotation.SweepDetector(
            detector, start=start, stop=stop, step=step, landmarks=landmarker
        )
    return detector


class FaceFinder:
    """An RGB image -> its Detections, as the configuration says."""

    def __init__(
        self,
        config: EstimatorConfig,
        *,
        landmarker: Landmarker | None = None,
        detector: FaceDetector | None = None,
    ):
        """`detector`: one built by :func:`build_detector` for an equal `detector_key`."""
        self.config = config
        self.landmarker = landmarker or Landmarker()
        self.detector = detector or build_detector(config, self.landmarker)

    def find(self, rgb: NDArray[np.uint8]) -> list[Detection]:
        config = self.config
        # min_score is a detector's score: the whole image as the face (detector "none")
        # has none to pass (the command line refuses --min-score there)
        detections = [
            d
            for d in self.detector.detect(rgb)
            if min(d.width, d.height) >= config.min_face
            and (config.min_score is None or d.whole_image or d.score >= config.min_score)
        ]
        for detection in detections:
            if detection.landmarks is None:
                detection.landmarks = self.landmarker(rgb, detection.landmark_box or detection.box)
            if config.align == "landmarks" and not detection.whole_image:
                rotation.align_by_landmarks(detection)
        return detections
