"""Calibration audit: an age past the last bin has all the mass below it (u = 1)."""

from __future__ import annotations

import numpy as np

from agegender import calibration as cal

CC0 = np.concatenate([[0.25], np.arange(1.0, 81.0)])


def test_pit_of_an_age_past_the_last_bin_is_one() -> None:
    """A 95-year-old under a model whose bins end at 80: every bin lies below the age,
    so u = 1 (no interval read off these bins can hold it); counting it as an 80-year-old
    (u anywhere in [F(79), 1]) told the recalibration map that such faces are covered."""
    p = np.full(len(CC0), 1.0 / len(CC0))
    u = cal.pit_values(np.vstack([p, p, p]), CC0, [95.0, 80.0, 80.4], seed=0)
    assert u[0] == 1.0
    assert F_below(p, 80.0) <= u[1] <= 1.0 and F_below(p, 80.0) <= u[2] <= 1.0
    assert u[1] < 1.0


def F_below(p: np.ndarray, age: float) -> float:
    return float(p[age > CC0].sum())
