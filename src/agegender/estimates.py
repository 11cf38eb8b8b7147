"""From a model's output distribution to the numbers a user reads.

Age distribution over bin values v_i with probabilities p_i (DEX's expected value):
value = sum p_i v_i, std = sqrt(sum p_i (v_i - value)^2), the central interval holding
`mass` of the distribution (its (1-mass)/2 and (1+mass)/2 quantiles, read off the
cumulative distribution), and P(age >= t) = sum of p_i over v_i >= t.

With a :class:`~agegender.calibration.Calibration` (the task's, see calibration.py) the
value stays the raw distribution's expected value (so the MAE does not move); the std,
interval and P(age >= t) are those of the calibrated distribution (temperature, log-age
smoothing, then the recalibration map of the value's age band), the interval read off its
cumulative distribution interpolated between bin values, at the band's level (the mass at
which whole-year ages fall inside with probability `mass`; without levels, `mass`; an
older calibration's split-conformal widening added; rounded to 0.1 year, never below 0). The gender
probability is the tempered one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .calibration import Calibration, calibrate_in_band, interval_of, remap, temper
from .errors import ModelFileError
from .results import AgeEstimate, GenderEstimate

INTERVAL_MASS = 0.8


def quantile(values: NDArray[np.float64], probs: NDArray[np.float64], q: float) -> float:
    """The smallest bin value whose cumulative probability reaches q."""
    cdf = np.cumsum(probs)
    index = int(np.searchsorted(cdf, q * cdf[-1] - 1e-12, side="left"))
    return float(values[min(index, len(values) - 1)])


def normalised(probs: NDArray[np.float64]) -> NDArray[np.float64]:
    """`probs` scaled to sum to 1; a model output that is no distribution (negative or
    non-finite values, nothing at all: a graph whose card is wrong, logits where the card
    says probabilities) is a one-line error, never NaN in the results."""
    probs = np.asarray(probs, dtype=np.float64)
    total = float(probs.sum())
    if not (np.isfinite(probs).all() and (probs >= 0).all() and total > 0):
        raise ModelFileError(
            "a model's output is not a probability distribution (negative, infinite or "
            "all-zero values): its graph does not do what its card says (check [output], "
            "softmax_in_graph)"
        )
    return probs / total


def age_from_distribution(
    probs: NDArray[np.float64],
    values: NDArray[np.float64],
    *,
    thresholds: Sequence[float] = (),
    mass: float = INTERVAL_MASS,
    calibration: Calibration | None = None,
) -> AgeEstimate:
    """Expected value, std, central interval and P(age >= t) of one distribution."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = normalised(probs)
    mean = float(probs @ values)
    if calibration is not None:
        mass = calibration.mass
        probs = calibrate_in_band(calibration, probs, values, mean)
        pit = calibration.pit_map(mean)
        if pit is not None:
            probs = remap(probs, pit)
    spread_mean = float(probs @ values)
    std = float(np.sqrt(max(0.0, float(probs @ (values - spread_mean) ** 2))))
    tail = (1.0 - mass) / 2
    interval = (quantile(values, probs, tail), quantile(values, probs, 1.0 - tail))
    if calibration is not None:
        lows, highs = interval_of(probs, values, calibration.interval_mass(mean))
        widen = calibration.widening(mean)
        low, high = max(0.0, float(lows[0]) - widen), float(highs[0]) + widen
        if low > high:  # a negative widening past the middle: the middle
            low = high = (float(lows[0]) + float(highs[0])) / 2
        interval = (round(low, 1), round(high, 1))
    p_at_least = {float(t): float(probs[values >= t].sum()) for t in thresholds}
    return AgeEstimate(mean, std, interval, mass, p_at_least)


def group_ages(group: tuple[float, float]) -> NDArray[np.float64]:
    """The whole years a group [first, last] spans (its midpoint when it spans none)."""
    ages = np.arange(np.ceil(group[0]), np.floor(group[1]) + 1.0)
    return ages if len(ages) else np.array([(group[0] + group[1]) / 2.0])


def age_from_groups(
    probs: NDArray[np.float64],
    groups: Sequence[tuple[float, float]],
    labels: Sequence[str],
    *,
    thresholds: Sequence[float] = (),
    mass: float = INTERVAL_MASS,
    calibration: Calibration | None = None,
) -> AgeEstimate:
    """Most probable group, and a point estimate over the groups' midpoints.

    P(age >= t) counts a group by the share of its whole years at or above t (15-20 is
    six years, three of them 18 or more), as an ensemble's support spreads a group's
    mass over its years. A calibration's temperature applies to the groups' distribution
    (the groups and the best one stay).
    """
    probs = np.asarray(probs, dtype=np.float64)
    probs = normalised(probs)
    if calibration is not None:
        probs = temper(probs, calibration.temperature)
    lows = np.array([g[0] for g in groups], dtype=np.float64)
    highs = np.array([g[1] for g in groups], dtype=np.float64)
    mids = (lows + highs) / 2
    mean = float(probs @ mids)
    std = float(np.sqrt(max(0.0, float(probs @ (mids - mean) ** 2))))
    tail = (1.0 - mass) / 2
    cdf = np.cumsum(probs)
    lo_index = int(np.searchsorted(cdf, tail - 1e-12))
    hi_index = int(np.searchsorted(cdf, 1.0 - tail - 1e-12))
    interval = (
        float(lows[min(lo_index, len(lows) - 1)]),
        float(highs[min(hi_index, len(highs) - 1)]),
    )
    p_at_least = {}
    years = [group_ages(g) for g in groups]
    for t in thresholds:
        share = np.array([float(np.mean(y >= t)) for y in years])
        p_at_least[float(t)] = float(probs @ share)
    best = int(np.argmax(probs))
    return AgeEstimate(mean, std, interval, mass, p_at_least, labels[best], float(probs[best]))


def gender_from_probs(
    probs: NDArray[np.float64],
    labels: Sequence[str],
    calibration: Calibration | None = None,
    age: float | None = None,
) -> GenderEstimate:
    """The more probable label; ties go to the first, as in the model's own order.

    With a calibration, the probability is tempered with the temperature of the band of
    `age` (the face's estimated age; None: the overall temperature)."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = normalised(probs)
    if calibration is not None:
        probs = temper(probs, calibration.gender_temperature(age))
    best = int(np.argmax(probs))
    return GenderEstimate(labels[best], float(probs[best]))
