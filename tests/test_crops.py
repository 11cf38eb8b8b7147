"""Crops against independent computations.

- DEX margin crop: the square region computed here by hand, cut with clipped numpy
  indices (clipping = repeating the border pixels), then the same resize.
- dlib face chip: dlib's 5-point template (``get_face_chip_details`` in dlib's
  ``image_transforms/interpolation.h``), a least-squares similarity transform (Umeyama)
  from the template to the landmarks, dlib's chip rectangle convention, and bilinear
  sampling written here in numpy (dlib truncates the interpolated value to uint8 and
  writes 0 where the 2x2 neighbourhood leaves the image).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from faceutils import ASTRONAUT_BOX
from numpy.typing import NDArray

from agegender import crops
from agegender.cards import CropSpec
from agegender.crops import CropError
from agegender.faces import Detection

# dlib get_face_chip_details, 5-point shapes: template positions of parts 0..4
# (eye corners right-outer, right-inner, left-outer, left-inner, base of the nose).
DLIB_5_POINT_TEMPLATE = np.array(
    [
        (0.8595674595992, 0.2134981538014),
        (0.6460604764104, 0.2289674387677),
        (0.1205750620789, 0.2137274526848),
        (0.3340850613712, 0.2290642403242),
        (0.4901123135679, 0.6277975316475),
    ]
)
ASTRONAUT_LANDMARKS = np.array(
    [(255.0, 104.0), (237.0, 105.0), (195.0, 101.0), (212.0, 103.0), (224.0, 135.0)]
)


# -- DEX margin crop ------------------------------------------------------------------


def numpy_margin_crop(rgb, box, margin, size):
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top, n = round(cx - side / 2), round(cy - side / 2), round(side)
    rows = np.clip(np.arange(top, top + n), 0, rgb.shape[0] - 1)
    cols = np.clip(np.arange(left, left + n), 0, rgb.shape[1] - 1)
    return crops.resize(np.ascontiguousarray(rgb[rows][:, cols]), size)


def test_margin_region_by_hand() -> None:
    # 100 x 120 box, 40% margin: 180 x 216 grown box, squared to 216 around (60, 80).
    assert crops.margin_region((10, 20, 110, 140), 0.4) == (-48, -28, 168, 188)
    # 50 x 50 box, no margin: itself.
    assert crops.margin_region((5, 5, 55, 55), 0.0) == (5, 5, 55, 55)
    # 80 x 40 box, 25% margin: 120 x 60, squared to 120 around (40, 20).
    assert crops.margin_region((0, 0, 80, 40), 0.25) == (-20, -40, 100, 80)


@pytest.mark.parametrize(
    "box",
    [
        ASTRONAUT_BOX,  # inside: no border
        (0.0, 0.0, 90.0, 110.0),  # top-left corner: left/top border repeated
        (430.0, 400.0, 512.0, 512.0),  # bottom-right corner
        (-20.0, 100.0, 530.0, 300.0),  # wider than the image: every side
        (200.0, 200.0, 230.0, 236.0),  # small: the region is upscaled
    ],
)
@pytest.mark.parametrize("size", [(224, 224), (64, 64)])
def test_margin_crop_equals_numpy(astronaut_rgb, box, size) -> None:
    ours = crops.margin_crop(astronaut_rgb, box, 0.4, size)
    assert ours.shape == (*size, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, numpy_margin_crop(astronaut_rgb, box, 0.4, size))


def test_margin_crop_repeats_border_pixels() -> None:
    """A one-pixel image: every pixel of any margin crop is that pixel."""
    rgb = np.array([[[10, 20, 30]]], dtype=np.uint8)
    out = crops.margin_crop(rgb, (0, 0, 1, 1), 0.4, (8, 8))
    assert (out == [10, 20, 30]).all()


def test_crop_for_kinds(astronaut_rgb) -> None:
    detection = Detection(ASTRONAUT_BOX, 1.0, ASTRONAUT_LANDMARKS)
    margin = crops.crop_for(astronaut_rgb, detection, CropSpec("margin", margin=0.4), (224, 224))
    np.testing.assert_array_equal(
        margin, numpy_margin_crop(astronaut_rgb, ASTRONAUT_BOX, 0.4, (224, 224))
    )
    plain = crops.crop_for(astronaut_rgb, detection, CropSpec("none"), (64, 64))
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_BOX)
    expected = cv2.resize(astronaut_rgb[y1:y2, x1:x2], (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(plain, expected)
    # --detector none: the image is already the crop, a margin card takes it as it is.
    whole = Detection((0.0, 0.0, 512.0, 512.0), 1.0, whole_image=True)
    taken = crops.crop_for(astronaut_rgb, whole, CropSpec("margin", margin=0.4), (224, 224))
    expected = cv2.resize(astronaut_rgb, (224, 224), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(taken, expected)


# -- dlib face chip ---------------------------------------------------------------------


def umeyama(src: NDArray[np.float64], dst: NDArray[np.float64]):
    """Least-squares similarity dst ~ c R src + t (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(cov) < 0:
        flip[1, 1] = -1
    rotation = u @ flip @ vt
    c = np.trace(np.diag(sigma) @ flip) / ((s**2).sum() / len(src))
    return c, rotation, mu_d - c * rotation @ mu_s


def chip_to_image(landmarks, size: int, padding: float):
    """The 2x3 affine map from chip pixels to image points, and the chip's scale.

    dlib builds a rectangle centred on the template centre's image, (size * scale - 1)
    wide, and maps chip pixel 0 to its left edge and size - 1 to its right edge.
    """
    template = (padding + DLIB_5_POINT_TEMPLATE) / (2 * padding + 1) * size
    c, rotation, t = umeyama(template, landmarks)  # crops.chip keeps the landmarks as floats
    centre = c * rotation @ np.array([size / 2, size / 2]) + t
    a = (c * size - 1) / (size - 1) * rotation
    b = centre - a @ np.array([(size - 1) / 2, (size - 1) / 2])
    return np.hstack([a, b[:, None]]), c


def numpy_chip(rgb, landmarks, size: int, padding: float):
    m, scale = chip_to_image(landmarks, size, padding)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    x = m[0, 0] * u + m[0, 1] * v + m[0, 2]
    y = m[1, 0] * u + m[1, 1] * v + m[1, 2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < rgb.shape[1]) & (y0 + 1 < rgb.shape[0])
    x0, y0 = np.clip(x0, 0, rgb.shape[1] - 2), np.clip(y0, 0, rgb.shape[0] - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = rgb.astype(np.float64)
    value = (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x0 + 1] * fx * (1 - fy)
        + img[y0 + 1, x0] * (1 - fx) * fy
        + img[y0 + 1, x0 + 1] * fx * fy
    )
    out = np.floor(value)
    out[~inside] = 0
    return out.astype(np.uint8), scale


def assert_chips_agree(ours, expected) -> None:
    """Equal but for float rounding at a truncation boundary: off by at most 1, rarely."""
    diff = np.abs(ours.astype(int) - expected.astype(int))
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.998


@pytest.mark.parametrize("size, padding", [(64, 0.2), (150, 0.2), (100, 0.5), (200, 0.0)])
def test_chip_equals_independent_similarity_transform(astronaut_rgb, size, padding) -> None:
    detection = Detection(ASTRONAUT_BOX, 1.0, ASTRONAUT_LANDMARKS)
    ours = crops.chip(astronaut_rgb, detection, (size, size), padding)
    expected, scale = numpy_chip(astronaut_rgb, ASTRONAUT_LANDMARKS, size, padding)
    # Above a 2x reduction dlib samples from an image pyramid; these sizes stay below it.
    assert scale < 2
    assert_chips_agree(ours, expected)
    # OpenCV's warpAffine samples at 1/32 pixel and rounds: a few levels on sharp edges.
    m, _ = chip_to_image(ASTRONAUT_LANDMARKS, size, padding)
    warped = cv2.warpAffine(
        astronaut_rgb,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
    )
    diff = np.abs(ours.astype(int) - warped.astype(int))
    assert diff.max() <= 8 and (diff <= 1).mean() >= 0.99


def test_chip_of_a_rotated_face(astronaut_rgb) -> None:
    """Rotate the photo 25 degrees and the landmarks with it: the chip is upright again."""
    centre = (256.0, 256.0)
    rotation = cv2.getRotationMatrix2D(centre, 25, 1.0)
    rotated = cv2.warpAffine(astronaut_rgb, rotation, (512, 512), flags=cv2.INTER_LINEAR)
    landmarks = np.hstack([ASTRONAUT_LANDMARKS, np.ones((5, 1))]) @ rotation.T
    detection = Detection((150.0, 60.0, 300.0, 220.0), 1.0, landmarks)
    ours = crops.chip(rotated, detection, (96, 96), 0.2)
    expected, _ = numpy_chip(rotated, landmarks, 96, 0.2)
    assert_chips_agree(ours, expected)
    upright = crops.chip(
        astronaut_rgb, Detection(ASTRONAUT_BOX, 1.0, ASTRONAUT_LANDMARKS), (96, 96), 0.2
    )
    # Same face, upright in both chips (landmark rounding and resampling differ a little).
    centre_ours, centre_upright = ours[24:72, 24:72].astype(int), upright[24:72, 24:72].astype(int)
    assert np.abs(centre_ours - centre_upright).mean() < 12


def test_chip_past_the_image_edge_is_black_there(astronaut_rgb) -> None:
    """The face moved to the top-left corner: the chip's outside part is 0, as in dlib."""
    shifted = np.ascontiguousarray(astronaut_rgb[70:, 170:])
    landmarks = ASTRONAUT_LANDMARKS - [170, 70]
    detection = Detection((9.0, 13.0, 97.0, 101.0), 1.0, landmarks)
    ours = crops.chip(shifted, detection, (120, 120), 0.2)
    expected, _ = numpy_chip(shifted, landmarks, 120, 0.2)
    assert (expected == 0).all(axis=2).sum() > 300  # the test does reach outside
    assert_chips_agree(ours, expected)


def test_chip_needs_landmarks_and_a_square(astronaut_rgb) -> None:
    with pytest.raises(CropError, match="landmarks"):
        crops.chip(astronaut_rgb, Detection(ASTRONAUT_BOX, 1.0), (64, 64), 0.2)
    with pytest.raises(CropError, match="square"):
        crops.chip(astronaut_rgb, Detection(ASTRONAUT_BOX, 1.0, ASTRONAUT_LANDMARKS), (64, 32), 0.2)
