"""Detector backends, one module each, registered by name in ``agegender.faces.DETECTORS``.

Huge images are detected on a downscaled copy and the boxes mapped back (``downscale``);
``shrink`` is the anti-aliased resize the detectors feed from.
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


def shrink(rgb: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """`rgb` resized down to `size` (width, height) with area averaging.

    Shrunk to less than half, it is first averaged over whole k x k blocks (OpenCV's
    fast path for a whole factor; k the largest that divides both sides, as it does for
    the usual photo sizes), then resized bilinearly by the rest, a factor of 2/3 or more,
    where bilinear hardly aliases: several times less CPU than area averaging at an
    uneven factor (a 4,000 x 3,000 photo fed at 1,600: 41 -> 15 ms); a rest below 2/3
    (the k found is well below the factor) is area-averaged from the blocks' copy.
    Otherwise (halving or less, or sides no k divides) area averaging as it was.
    """
    height, width = rgb.shape[:2]
    most = min(width // max(size[0], 1), height // max(size[1], 1))
    k = next((k for k in range(most, 1, -1) if width % k == 0 and height % k == 0), 1)
    if k < 2:
        return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.uint8)
    small = cv2.resize(rgb, (width // k, height // k), interpolation=cv2.INTER_AREA)
    # Bilinear only where the rest is 2/3 or more: the largest k that divides both sides
    # may be far below the factor (8,000 x 6,000 to 2,400: k = 2, rest 0.6; sides sharing
    # only 2, as 13,546 x 3,002: 0.35), where bilinear aliases (pixel noise and fine
    # stripes pass through); there the block-averaged copy is area-averaged the rest.
    linear = 3 * k * size[0] >= 2 * width and 3 * k * size[1] >= 2 * height
    method = cv2.INTER_LINEAR if linear else cv2.INTER_AREA
    return np.asarray(cv2.resize(small, size, interpolation=method), np.uint8)
