"""Faces: what a detector finds (``Detection``), the detector protocol, and the registry.

The registry ``DETECTORS`` maps a name to a :class:`DetectorSpec` whose factory builds the
backend from an :class:`~agegender.config.EstimatorConfig`. The CLI's ``--detector``
choices, serve's validation and ``models list`` read it; a new detector is one module
under ``detectors/`` plus one line here. This module imports no detection library (the
backends import theirs when built), so reading the registry is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .errors import AgegenderError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .config import EstimatorConfig

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Upright:
    """A face box in the frame where the face is upright: centre (image pixels), size, angle."""

    cx: float
    cy: float
    width: float
    height: float
    angle: float  # degrees the image is rotated (counter-clockwise) to make the face upright


@dataclass
class Detection:
    """One face: box [x1, y1, x2, y2] in image pixels, a score, optional 5 landmarks.

    ``landmarks`` are dlib's 5 points (eye corners, base of the nose), which chip crops
    are cut by (from dlib's predictor, or placed from the keypoints by the detector card's
    ``chip_template``: ``chip_template.py``); ``keypoints`` are a CNN detector's own 5
    points (CenterFace: eye centres, nose tip, mouth corners). ``upright`` is set when the
    face was aligned (``rotation.py``: DEX's sweep or the eye line); ``support`` counts
    the sweep angles the face was seen at.
    """

    box: Box
    score: float
    landmarks: NDArray[np.float64] | None = None  # (5, 2) x, y
    whole_image: bool = False
    upright: Upright | None = None
    support: int | None = None
    keypoints: NDArray[np.float64] | None = None  # (5, 2) x, y: the detector's own points
    # The box dlib's 5-point predictor is run on, when it differs from `box` (a CNN's box
    # mapped to the geometry of the dlib HOG boxes the predictor was trained with).
    landmark_box: Box | None = None

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


NO_DOWNLOAD_HINT = "or use --detector dlib (or AGEGENDER_DETECTOR=dlib; no download)"


@dataclass(frozen=True)
class DetectorSpec:
    """A registry entry: how to build a detector from the configuration."""

    name: str
    description: str
    factory: Callable[[EstimatorConfig], FaceDetector]
    card: str | None = None  # the model card whose file the detector runs
    mirror: bool = False  # it can search each image's mirror image too (detect_mirror)
    # Its scores are probabilities (CenterFace's heatmap, 0..1): a min_score of 0 or less
    # makes every cell a face, 1 or more leaves none (config.validate refuses both).
    probability: bool = False


def detector_problem(name: str) -> str | None:
    """Why the named detector cannot run here (its model file is missing), or None."""
    spec = DETECTORS.get(name)
    if spec is None:
        return f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}"
    if spec.card is None:
        return None
    from . import store
    from .cards import get_card

    try:
        store.resolve(get_card(spec.card))
    except AgegenderError as error:
        return f"{error}; {NO_DOWNLOAD_HINT}"
    return None


def _dlib(config: EstimatorConfig) -> FaceDetector:
    from .config import DEFAULT_MAX_DETECT_SIDE
    from .detectors.dlib_hog import DlibHogDetector

    side = config.max_detect_side or DEFAULT_MAX_DETECT_SIDE
    return DlibHogDetector(upsample=config.upsample, max_side=side)


def _haar(config: EstimatorConfig) -> FaceDetector:
    from .config import DEFAULT_MAX_DETECT_SIDE
    from .detectors.haar import HaarDetector

    return HaarDetector(max_side=config.max_detect_side or DEFAULT_MAX_DETECT_SIDE)


def _centerface(config: EstimatorConfig, card_id: str = "centerface") -> FaceDetector:
    from . import store
    from .cards import get_card
    from .detectors.centerface import CenterFaceDetector
    from .errors import ModelNotInstalledError

    card = get_card(card_id)
    try:
        path = store.resolve(card)
    except ModelNotInstalledError as error:
        raise ModelNotInstalledError(f"{error}; {NO_DOWNLOAD_HINT}") from None
    # --min-score is the decoder's threshold: below the card's it finds weaker faces too
    return CenterFaceDetector(
        card,
        path,
        max_side=config.max_detect_side,
        threshold=config.min_score,
        threads=config.threads,
        mirror=config.detect_mirror,
    )


def _centerface_int8(config: EstimatorConfig) -> FaceDetector:
    return _centerface(config, "centerface-int8")


def _whole(config: EstimatorConfig) -> FaceDetector:
    from .detectors.whole import WholeImageDetector

    return WholeImageDetector()


# Measured in one run (README "Face detectors": benchmarks/detectors.py on 101 dev scenes of
# 1280x960 with 300 faces, 103 rotated; whole-pipeline time on a busy 2-core machine with
# AVX-512 VNNI; on an AVX2 CPU everything runs about twice as slowly: README Limits).
_DLIB = "scenes: recall 0.947, rotated 0.942, 78 ms"
_CENTERFACE = "scenes: recall 0.993, rotated 0.990, 110 ms"
_CENTERFACE_INT8 = (
    "scenes at max side 800, threshold 0.25: recall 0.990-1.000 (dev), 0.991 (calib); "
    "41-50 ms on a VNNI CPU (dlib 127-164)"
)
_HAAR = "scenes: recall 0.697, rotated 0.223, 136 ms"

DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in (
        DetectorSpec(
            "dlib", f"dlib HOG + linear SVM, frontal faces of ~80 px and up; {_DLIB}", _dlib
        ),
        DetectorSpec("haar", f"OpenCV Haar cascade (frontal faces); {_HAAR}", _haar),
        DetectorSpec(
            "centerface",
            f"CenterFace CNN, 5 landmarks; {_CENTERFACE} (agegender models pull centerface)",
            _centerface,
            card="centerface",
            mirror=True,
            probability=True,
        ),
        DetectorSpec(
            "centerface-int8",
            f"CenterFace as INT8, built here from centerface's file; {_CENTERFACE_INT8} "
            "(agegender models pull centerface-int8)",
            _centerface_int8,
            card="centerface-int8",
            mirror=True,
            probability=True,
        ),
        DetectorSpec("none", "no detection: the whole image is the face (face crops)", _whole),
    )
}


def make_detector(name: str, config: EstimatorConfig | None = None) -> FaceDetector:
    """A detector backend by registry name, built with `config`'s detection options."""
    from .config import EstimatorConfig

    spec = DETECTORS.get(name)
    if spec is None:
        raise AgegenderError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return spec.factory(config or EstimatorConfig(detector=name))
