"""Chip landmarks from a detector's own 5 points, by a template in dlib's chip frame.

dlib's ``get_face_chip_details`` maps its 5 points (eye corners, base of the nose) onto
:data:`DLIB_CHIP_POINTS` (a chip of size 1 and padding 0) by a least-squares similarity
transform, and the CC0 chip models were trained on those chips. A detector with other
points (CenterFace: eye centres, nose tip, mouth corners) reaches the same frame through a
template: where its points lie on average in that frame (``chip_template`` in its card,
fitted on utkface-calib by ``benchmarks/chip_template.py``). :func:`landmarks_from_keypoints`
fits the template to the detector's points (Umeyama: rotation, one scale, translation;
chip frame -> image, the direction dlib fits in) and maps dlib's chip points into the
image: those are the face's landmarks, so ``crops.chip`` cuts dlib's chip from them (the
same fit, now exact) and the eye line (``align="landmarks"``) reads them as it reads the
predictor's, with no predictor run.

This module imports numpy only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

# dlib's get_face_chip_details, 5 points: where its points land in a chip of size 1 with
# padding 0 (dlib/image_transforms/interpolation.h).
DLIB_CHIP_POINTS = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def fit_similarity(src: ArrayLike, dst: ArrayLike) -> NDArray[np.float64]:
    """The 2x3 similarity (rotation, one scale, translation) best taking `src` to `dst`.

    Least squares over the points (Umeyama 1991, the fit dlib's
    ``find_similarity_transform`` makes); never a reflection.
    """
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2 or len(a) < 2:
        raise ValueError(f"need two (N >= 2, 2) point arrays, got {a.shape} and {b.shape}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    da, db = a - mean_a, b - mean_b
    var_a = (da**2).sum() / len(a)
    if var_a <= 1e-12:
        raise ValueError("the source points coincide")
    cov = db.T @ da / len(a)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d)) / var_a
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_b - scale * rotation @ mean_a
    return matrix


def apply(matrix: NDArray[np.float64], points: ArrayLike) -> NDArray[np.float64]:
    """`points` (N, 2) through the 2x3 `matrix`."""
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """The inverse of a 2x3 (invertible) affine transform."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2])[:, None]])


def to_chip_frame(landmarks: ArrayLike) -> NDArray[np.float64]:
    """The transform dlib's chip makes of 5 dlib landmarks (image -> chip of size 1, padding 0).

    dlib fits its chip points to the image points (chip -> image) and inverts; with
    points that are no exact similarity copy, the other direction's scale differs.
    """
    return invert(fit_similarity(DLIB_CHIP_POINTS, landmarks))


def landmarks_from_keypoints(keypoints: ArrayLike, template: ArrayLike) -> NDArray[np.float64]:
    """dlib-style 5 landmarks (image pixels) whose chip is the template's fit to `keypoints`.

    Fitted in dlib's direction (chip frame -> image, as ``to_chip_frame``); the landmarks
    are an exact similarity copy of dlib's chip points, so dlib's chip of them is that fit.
    """
    return apply(fit_similarity(template, keypoints), DLIB_CHIP_POINTS)
