"""Crops per card: the image region each model was trained to see.

- ``chip``: dlib's landmark-aligned face chip (``get_face_chip_details`` +
  ``extract_image_chip``), the crop the CC0 models were trained on; padding and size
  come from the card.
- ``margin``: DEX's crop: the detector's box grown by the card's margin on every
  side, made square around its centre, border pixels repeated past the image edge,
  then resized to the card's input size.
- ``none``: the box resized as it is.

A detection aligned upright (``rotation.py``: DEX's sweep or the landmarks' eye line)
gets its margin crop from the region rotated by its angle.

A detection that is the whole image (``--detector none``) is already a face crop: a
margin crop then takes the image as it is instead of adding a border around it.
"""

from __future__ import annotations

import cv2
import dlib
import numpy as np
from numpy.typing import NDArray

from .cards import CropSpec
from .chip_template import DLIB_CHIP_POINTS
from .errors import AgegenderError
from .faces import Box, Detection
from .rotation import upright_region


class CropError(AgegenderError):
    """A face's crop cannot be cut (a missing landmark, a box outside the image)."""


def chip(
    rgb: NDArray[np.uint8], detection: Detection, size: tuple[int, int], padding: float
) -> NDArray[np.uint8]:
    """dlib's aligned face chip of `size` (height, width) from 5 landmarks.

    The chip ``get_face_chip_details`` + ``extract_image_chip`` make, with the landmarks
    kept as floats (the predictor's are whole pixels; those from a detector's keypoints
    and its card's template, ``chip_template.py``, are not): dlib's chip points for this
    size and padding are fitted to them by dlib's own similarity fit.
    """
    if detection.landmarks is None:
        raise CropError("a chip crop needs landmarks")
    if size[0] != size[1]:
        raise CropError(f"dlib face chips are square, the card asks for {size}")
    frame = (padding + DLIB_CHIP_POINTS) / (2 * padding + 1) * size[0]
    chip_points = dlib.dpoints([dlib.dpoint(float(x), float(y)) for x, y in frame])
    image_points = dlib.dpoints([dlib.dpoint(float(x), float(y)) for x, y in detection.landmarks])
    details = dlib.chip_details(chip_points, image_points, dlib.chip_dims(size[0], size[1]))
    return np.ascontiguousarray(dlib.extract_image_chip(rgb, details))


def margin_region(box: Box, margin: float) -> tuple[int, int, int, int]:
    """The square region [x1, y1, x2, y2) DEX crops: box + margin on every side, squared."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    gx1, gy1, gx2, gy2 = x1 - margin * w, y1 - margin * h, x2 + margin * w, y2 + margin * h
    side = max(gx2 - gx1, gy2 - gy1)
    cx, cy = (gx1 + gx2) / 2, (gy1 + gy2) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    length = max(1, round(side))
    return left, top, left + length, top + length


def margin_crop(
    rgb: NDArray[np.uint8],
    box: Box,
    margin: float,
    size: tuple[int, int],
) -> NDArray[np.uint8]:
    """DEX's margin crop resized to `size` (height, width), edges replicated."""
    x1, y1, x2, y2 = margin_region(box, margin)
    height, width = rgb.shape[:2]
    pad_l, pad_t = max(0, -x1), max(0, -y1)
    pad_r, pad_b = max(0, x2 - width), max(0, y2 - height)
    inside = rgb[max(0, y1) : min(height, y2), max(0, x1) : min(width, x2)]
    if inside.size == 0:
        raise CropError(f"box {box} lies outside the {width}x{height} image")
    region = np.asarray(
        cv2.copyMakeBorder(inside, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE), np.uint8
    )
    return resize(region, size)


def resize(region: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """Resize to (height, width): area averaging when shrinking, bilinear when growing."""
    target = (size[1], size[0])
    if region.shape[0] == size[0] and region.shape[1] == size[1]:
        return np.ascontiguousarray(region)
    shrinking = region.shape[0] > size[0] or region.shape[1] > size[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(region, target, interpolation=interpolation))


def crop_for(
    rgb: NDArray[np.uint8], detection: Detection, spec: CropSpec, size: tuple[int, int]
) -> NDArray[np.uint8]:
    """The crop a card asks for, as an RGB uint8 array of `size` (height, width)."""
    if spec.kind == "chip":
        return chip(rgb, detection, size, spec.padding)
    if spec.kind == "margin" and not detection.whole_image:
        upright = detection.upright
        if upright is not None and upright.angle != 0:
            return resize(upright_region(rgb, upright, spec.margin), size)
        return margin_crop(rgb, detection.box, spec.margin, size)
    x1, y1, x2, y2 = (round(v) for v in detection.box)
    return resize(rgb[max(0, y1) : y2, max(0, x1) : x2], size)
