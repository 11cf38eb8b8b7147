"""No detection: the whole image is one face (inputs that are already face crops)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..faces import Detection


class WholeImageDetector:
    """The whole image is one face (inputs that are already face crops)."""

    name = "none"

    def detect(self, rgb: NDArray[np.uint8]) -> list[Detection]:
        height, width = rgb.shape[:2]
        return [Detection((0.0, 0.0, float(width), float(height)), 1.0, whole_image=True)]
