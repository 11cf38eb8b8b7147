"""Calibration audit: the log-age smoothing is a Gaussian in log(1 + age), centred on the age."""

from __future__ import annotations

import numpy as np
import pytest

from agegender import calibration as cal

# the default ensemble's common support: the CC0 model's 0.25, then 1 ... 100
ENSEMBLE = np.concatenate([[0.25], np.arange(1.0, 101.0)])


@pytest.mark.parametrize("age,width", [(2.0, 0.35), (8.0, 0.32), (40.0, 0.14), (40.0, 0.3)])
def test_log_age_smoothing_is_centred_on_the_age(age: float, width: float) -> None:
    """A Gaussian in log(1 + age) around a bin keeps its median there and its mean
    log(1 + age) (up to the bins' discreteness); weighting whole-year bins by the density
    alone moved it up by width^2 (0.12 for 0.35: a 2-year-old smoothed to 2.4)."""
    p = (age == ENSEMBLE).astype(np.float64)
    q = p @ cal.kernel_matrix(ENSEMBLE, width)
    assert q.sum() == pytest.approx(1.0)
    assert float(q @ np.log1p(ENSEMBLE)) == pytest.approx(np.log1p(age), abs=0.01)
    median = ENSEMBLE[int(np.searchsorted(np.cumsum(q), 0.5))]
    assert median == age


def test_smoothing_matches_a_log_normal_error() -> None:
    """Ages drawn as the model's times a log-normal error of width 0.3: the smoothing
    of that width centres on the truth (mean log-age error of the smoothed
    distribution against the labels near 0)."""
    rng = np.random.default_rng(0)
    centres = rng.integers(5, 40, 1500).astype(np.float64)
    ages = np.round(np.expm1(np.log1p(centres) + rng.normal(0, 0.3, 1500)))
    model = (ENSEMBLE[None, :] == centres[:, None]).astype(np.float64)
    q = model @ cal.kernel_matrix(ENSEMBLE, 0.3)
    bias = float(np.mean(q @ np.log1p(ENSEMBLE) - np.log1p(ages)))
    assert abs(bias) < 0.02


def test_the_smoothing_matrices_kept_are_bounded() -> None:
    """A fit tries hundreds of widths; each matrix made was kept for the process's life
    (a serve or batch process that calibrates, or fits again and again, grew without end).
    The most recently used are kept, and a matrix is the same whether kept or made again."""
    values = np.arange(0, 101, dtype=np.float64)
    first = cal.kernel_matrix(values, 0.123).copy()
    for width in np.linspace(0.05, 0.5, 300):
        cal.kernel_matrix(values, float(width))
        cal.kernel_matrix(values, 0.2)  # used over and over: stays
    assert len(cal._KERNELS) <= cal._KERNELS_KEPT
    assert (values.tobytes(), 0.2) in cal._KERNELS
    np.testing.assert_array_equal(cal.kernel_matrix(values, 0.123), first)
