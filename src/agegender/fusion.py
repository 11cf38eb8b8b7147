"""Fusing the per-frame distributions of one tracked person into one estimate.

Each frame of a track gives a distribution over the task's support (age bins, age groups
or gender labels). Frames are evidence about one unknown, but not independent evidence:
part of a model's error is the person's own (a face that looks older than it is looks
older in every frame), and only the rest averages out over frames. The pool below follows
that split.

For frames i = 1..n with distributions p_i and quality weights w_i (face size, sharpness,
detector score: :func:`frame_weight`), normalised to w~_i = w_i / sum(w):

1. **floor**: q_i = (1 - eps) p_i + eps / K, so one frame that puts (almost) zero on the
   truth cannot veto it;
2. **trim**: frames whose expected value lies more than ``trim_z`` robust scales from the
   weighted median of the frames' expected values are dropped (at most ``max_trim`` of
   them, the farthest first): a face half turned away or a blurred frame;
3. **pool**: L = sum_i w~_i log q_i, a weighted geometric mean of the kept frames (for
   Gaussian frames of one width s: a Gaussian of width s at the weighted mean centre);
4. **temper**: fused ∝ exp(k L), with k set so that the fused variance is
   (rho + (1 - rho) / n_eff) times the kept frames' weighted mean variance, where n_eff =
   (sum w)^2 / sum w^2 is the kept frames' effective number (Kish) and rho (``correlation``)
   the share of a frame's error variance common to all frames of the person. For Gaussian
   frames of one width that is k = 1 / (rho + (1 - rho) / n_eff); for other shapes the
   geometric mean is already narrower than the frames, and k is smaller. (Without
   centres, for labels, k is that formula.)

If each frame's distribution is calibrated (its spread is the frame's error) and the
common share is rho, the fused distribution's variance s^2 (rho + (1 - rho) / n_eff) is the
variance of the weighted mean centre: its intervals keep their coverage while they shrink
with n_eff, down to sqrt(rho) of a single frame's width (the person-level error cannot be
averaged away). rho = 1 makes every track as wide as one frame; rho = 0 treats frames as
independent draws (the plain product of likelihoods). For two labels (gender) the pool is
the weighted mean of log-odds times k.

rho is not known in advance, and a wrong guess costs coverage (too low) or width (too
high). Each track estimates its own (:func:`estimate_correlation`): only the per-frame
part of the error makes the frames disagree, so the scatter of their expected values
against their own spread measures 1 - rho; the estimate is shrunk towards a prior
(``correlation``, worth ``prior_frames`` frames). ``FusionSettings(adaptive=False)``
uses the prior as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

# Prior share of a frame's error variance common to all frames of one person (see
# above). High on purpose: a person's frames mostly repeat one error (on composed
# UTKFace clips rho is close to 1), and a rho guessed too low makes intervals too narrow,
# while one too high only keeps them wider; each track's own frames move it (adaptive).
DEFAULT_CORRELATION = 0.8
DEFAULT_FLOOR = 1e-3
DEFAULT_TRIM_Z = 3.0
DEFAULT_MAX_TRIM = 1 / 3
MIN_FRAMES_TO_TRIM = 3
DEFAULT_PRIOR_FRAMES = 4.0

# Quality weights: each factor is in (0, 1) and saturates for good frames.
SIZE_HALF = 64.0  # face side (pixels) at which the size factor is 1/2
SHARPNESS_HALF = 100.0  # variance of the Laplacian (64x64 grey crop) at which it is 1/2
SCORE_SLOPE = 2.0  # score factor = sigmoid(SCORE_SLOPE * detector score)
MIN_FACTOR = 0.05


@dataclass(frozen=True)
class FusionSettings:
    """How frames are pooled. With ``adaptive`` (the default) ``correlation`` is a prior:
    the track's own frames estimate rho (:func:`estimate_correlation`), and the prior
    counts as ``prior_frames`` frames of evidence; without it rho is ``correlation``."""

    correlation: float = DEFAULT_CORRELATION
    floor: float = DEFAULT_FLOOR
    trim_z: float = DEFAULT_TRIM_Z
    max_trim: float = DEFAULT_MAX_TRIM
    adaptive: bool = True
    prior_frames: float = DEFAULT_PRIOR_FRAMES

    def __post_init__(self) -> None:
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"correlation must be in [0, 1], got {self.correlation!r}")
        if not 0.0 < self.floor < 1.0:
            raise ValueError(f"floor must be in (0, 1), got {self.floor!r}")
        if not self.trim_z > 0:
            raise ValueError(f"trim_z must be > 0, got {self.trim_z!r}")
        if not 0.0 <= self.max_trim < 1.0:
            raise ValueError(f"max_trim must be in [0, 1), got {self.max_trim!r}")
        if not self.prior_frames > 0:
            raise ValueError(f"prior_frames must be > 0, got {self.prior_frames!r}")


@dataclass(frozen=True)
class Pooled:
    """A fused distribution and how it was made."""

    probs: NDArray[np.float64]  # over the support, sums to 1
    used: NDArray[np.bool_]  # which frames were kept (not trimmed)
    n_eff: float  # effective number of the kept frames
    power: float  # k: how much sharper than the weighted geometric mean
    correlation: float  # the rho used

    @property
    def frames_used(self) -> int:
        return int(self.used.sum())


def frame_weight(side: float, sharpness: float, score: float | None) -> float:
    """Quality weight of one frame's face: size x sharpness x detector score, in (0, 1).

    `side`: the face box's shorter side in pixels; `sharpness`: variance of the Laplacian
    of the face (:func:`sharpness`); `score`: the detector's score (None: no score).
    """
    size = side * side / (side * side + SIZE_HALF * SIZE_HALF) if side > 0 else 0.0
    sharp = sharpness / (sharpness + SHARPNESS_HALF) if sharpness > 0 else 0.0
    confident = 1.0 if score is None else 1.0 / (1.0 + np.exp(-SCORE_SLOPE * float(score)))
    return float(max(size, MIN_FACTOR) * max(sharp, MIN_FACTOR) * max(confident, MIN_FACTOR))


def sharpness(grey: NDArray[np.uint8]) -> float:
    """Variance of the Laplacian of a grey face crop resized to 64x64 (bigger: sharper)."""
    import cv2

    if grey.size == 0:
        return 0.0
    small = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(small, cv2.CV_64F).var())


def _weighted_median(values: NDArray[np.float64], weights: NDArray[np.float64]) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][int(np.searchsorted(cum, 0.5 * cum[-1]))])


def trim_mask(
    centres: NDArray[np.float64],
    spreads: NDArray[np.float64],
    weights: NDArray[np.float64],
    *,
    trim_z: float = DEFAULT_TRIM_Z,
    max_trim: float = DEFAULT_MAX_TRIM,
) -> NDArray[np.bool_]:
    """Frames to keep: those whose expected value is within `trim_z` robust scales of the
    weighted median of expected values. The scale is the larger of 1.4826 x the weighted
    median absolute deviation and half the median frame std (so that frames agreeing
    closely are not trimmed for tiny differences); at most `max_trim` of the frames
    (the farthest) are dropped, and none of fewer than three."""
    n = len(centres)
    keep = np.ones(n, bool)
    if n < MIN_FRAMES_TO_TRIM:
        return keep
    middle = _weighted_median(centres, weights)
    distance = np.abs(centres - middle)
    mad = _weighted_median(distance, weights)
    scale = max(1.4826 * mad, 0.5 * float(np.median(spreads)), 1e-9)
    far = distance > trim_z * scale
    limit = int(np.floor(max_trim * n))
    if far.sum() > limit:
        order = np.argsort(-distance)
        far = np.zeros(n, bool)
        far[order[:limit]] = True
    keep[far] = False
    return keep


def pool(
    probs: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    centres: ArrayLike | None = None,
    used: ArrayLike | None = None,
    settings: FusionSettings | None = None,
    correlation: float | None = None,
) -> Pooled:
    """Fuse the rows of `probs` (n frames x K) into one distribution over the K outputs.

    `centres` (K values: age bins, group midpoints) turns on trimming by expected value
    and, with ``settings.adaptive``, the track's own estimate of rho; without them
    (labels) no frame is trimmed unless `used` says which to keep, and rho is
    `correlation` (e.g. the one the same frames' age pool estimated) or the setting.
    """
    settings = settings or FusionSettings()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"need a non-empty (frames, outputs) array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    n, k = p.shape
    totals = p.sum(axis=1, keepdims=True)
    p = np.where(totals > 0, p / np.where(totals > 0, totals, 1.0), 1.0 / k)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be n finite, non-negative numbers")
    if w.sum() <= 0:
        w = np.ones(n)
    keep = np.ones(n, bool) if used is None else np.asarray(used, bool).copy()
    if not keep.any():
        keep[:] = True
    means = spreads = None
    if centres is not None:
        c = np.asarray(centres, dtype=np.float64)
        means = p @ c
        spreads = np.sqrt(np.maximum(0.0, p @ (c * c) - means * means))
        if used is None:
            keep = trim_mask(
                means, spreads, w, trim_z=settings.trim_z, max_trim=settings.max_trim
            ) & (w > 0)
            if not keep.any():
                keep = w > 0
    wk = np.where(keep, w, 0.0)
    n_eff = float(wk.sum() ** 2 / np.sum(wk * wk))
    wn = wk / wk.sum()
    q = (1.0 - settings.floor) * p + settings.floor / k
    log_pool = wn @ np.log(q)
    if correlation is not None:
        rho = float(correlation)
    elif settings.adaptive and means is not None and spreads is not None:
        rho = estimate_correlation(
            means[keep], spreads[keep], wk[keep], settings.correlation, settings.prior_frames
        )
    else:
        rho = settings.correlation
    shrink = rho + (1.0 - rho) / n_eff
    power = 1.0 / shrink
    if means is not None and spreads is not None:
        # Set k so that the fused variance is the theory's, shrink x the frames' mean
        # variance: for Gaussian frames of one width that is k = 1 / shrink, but the
        # geometric mean of frames of other shapes (skewed, two-peaked, of different
        # widths) is itself narrower than they are, and k = 1 / shrink would then narrow
        # the interval more than the evidence allows.
        variance = float(wn @ (spreads * spreads))
        if variance > 0:
            power = _power_for_variance(
                log_pool, np.asarray(centres, np.float64), shrink * variance
            )
    log_fused = power * log_pool
    fused = np.exp(log_fused - log_fused.max())
    return Pooled(fused / fused.sum(), keep, n_eff, power, rho)


def _variance_at(log_pool: NDArray[np.float64], centres: NDArray[np.float64], k: float) -> float:
    z = k * log_pool
    p = np.exp(z - z.max())
    p /= p.sum()
    mean = float(p @ centres)
    return float(p @ (centres - mean) ** 2)


def _power_for_variance(
    log_pool: NDArray[np.float64], centres: NDArray[np.float64], target: float
) -> float:
    """k > 0 with Var(exp(k L)) = target, by bisection on log k (the variance falls as k
    grows); the nearest end of [1e-2, 1e4] when the target is out of reach."""
    low, high = math.log(1e-2), math.log(1e4)
    if _variance_at(log_pool, centres, math.exp(low)) <= target:
        return math.exp(low)
    if _variance_at(log_pool, centres, math.exp(high)) >= target:
        return math.exp(high)
    for _ in range(50):
        middle = (low + high) / 2
        if _variance_at(log_pool, centres, math.exp(middle)) > target:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


def estimate_correlation(
    means: NDArray[np.float64],
    spreads: NDArray[np.float64],
    weights: NDArray[np.float64],
    prior: float = DEFAULT_CORRELATION,
    prior_frames: float = DEFAULT_PRIOR_FRAMES,
) -> float:
    """rho from one track's frames, shrunk towards `prior`.

    Only the per-frame part of the error, (1 - rho) s^2, makes frames of one person
    disagree, so the scatter of their expected values estimates it:
    rho_data = 1 - (weighted variance of the frames' means) / (mean frame variance),
    clipped to [0, 1]. Frames that are near copies (a still face) give rho near 1 and
    the interval stays as wide as one frame's; frames that vary as much as their own
    spread give rho near 0. The estimate counts as n_eff - 1 frames against the prior's
    `prior_frames`.
    """
    total = float(weights.sum())
    if len(means) < 2 or total <= 0:
        return prior
    wn = weights / total
    sum_w2 = float(np.sum(wn * wn))
    dof = 1.0 / sum_w2 - 1.0  # n_eff - 1
    if dof <= 0:
        return prior
    centre = float(wn @ means)
    between = float(wn @ (means - centre) ** 2) / (1.0 - sum_w2)
    within = float(wn @ (spreads * spreads))
    if within <= 0:
        return prior
    data = min(1.0, max(0.0, 1.0 - between / within))
    return (prior_frames * prior + dof * data) / (prior_frames + dof)


def centres_of(
    values: Sequence[float] | NDArray[np.float64] | None,
    groups: Sequence[tuple[float, float]] | None,
) -> NDArray[np.float64] | None:
    """The value of each output of an age support: bin values, or group midpoints."""
    if values is not None and len(values):
        return np.asarray(values, dtype=np.float64)
    if groups:
        return np.array([(lo + hi) / 2 for lo, hi in groups], dtype=np.float64)
    return None
