"""Detector backends, one module each, registered by name in ``agegender.faces.DETECTORS``.

Huge images are detected on a downscaled copy and the boxes mapped back (``downscale``).
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray


def downscale(rgb: NDArray[np.uint8], max_side: int | None) -> tuple[NDArray[np.uint8], float]:
    """A copy whose longer side is at most max_side, and the factor to map boxes back."""
    side = max(rgb.shape[:2])
    if not max_side or side <= max_side:
        return rgb, 1.0
    factor = max_side / side
    size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.uint8), factor
