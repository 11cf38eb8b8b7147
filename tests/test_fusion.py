"""Fusion maths (agegender.fusion) on hand-made distributions, and the coverage of the
fused 80% interval on synthetic tracks whose true age is fixed by construction.

Synthetic tracks (``simulate``): a person of true age a; the model's error on that person
has a common part b ~ N(0, rho s^2) shared by every frame and a per-frame part
e_i ~ N(0, (1 - rho) s^2); frame i's distribution is a Gaussian of width s centred at
a + b + e_i, discretised on 0..100 (so each frame is calibrated on its own: its 80%
interval holds the truth 80% of the time). A share of frames can be replaced by bad ones
centred anywhere. ``python tests/test_fusion.py`` prints the README's coverage table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray

from agegender.estimates import age_from_distribution
from agegender.fusion import (
    FusionSettings,
    centres_of,
    estimate_correlation,
    frame_weight,
    pool,
    sharpness,
    trim_mask,
)

VALUES = np.arange(0.0, 101.0)


def gaussian(centre: float, width: float, values: NDArray[np.float64] = VALUES) -> NDArray:
    p = np.exp(-0.5 * ((values - centre) / width) ** 2)
    return p / p.sum()


# -- hand-made distributions ---------------------------------------------------------------


def test_one_frame_is_itself() -> None:
    p = gaussian(30, 5)
    fused = pool([p], centres=VALUES, settings=FusionSettings(floor=1e-12))
    assert fused.n_eff == pytest.approx(1.0)
    assert fused.power == pytest.approx(1.0)
    np.testing.assert_allclose(fused.probs, p, rtol=1e-6, atol=1e-12)


def test_identical_frames_sharpen_by_the_power() -> None:
    # n equal Gaussians of width s: the pool is a Gaussian of width s / sqrt(k),
    # k = 1 / (rho + (1 - rho) / n); rho = 0.5, n = 4 -> k = 1 / (0.5 + 0.125) = 1.6
    s = 6.0
    fixed = FusionSettings(correlation=0.5, adaptive=False, floor=1e-12)
    fused = pool([gaussian(40, s)] * 4, centres=VALUES, settings=fixed)
    assert fused.power == pytest.approx(1.6)
    age = age_from_distribution(fused.probs, VALUES)
    assert age.value == pytest.approx(40.0, abs=1e-6)
    assert age.std == pytest.approx(s / math.sqrt(1.6), rel=1e-3)


def test_correlation_bounds() -> None:
    frames = [gaussian(30, 5), gaussian(34, 5)]
    independent = pool(frames, settings=FusionSettings(correlation=0.0, floor=1e-12))
    assert independent.correlation == 0.0  # no centres: nothing to estimate rho from
    # rho = 0: the plain product of the two likelihoods (normalised)
    product = frames[0] * frames[1]
    np.testing.assert_allclose(independent.probs, product / product.sum(), rtol=1e-6, atol=1e-12)
    shared = pool(frames, settings=FusionSettings(correlation=1.0, floor=1e-12))
    # rho = 1: the geometric mean, as wide as one frame, centred between them
    age = age_from_distribution(shared.probs, VALUES)
    assert age.value == pytest.approx(32.0, abs=1e-6)
    assert age.std == pytest.approx(5.0, rel=1e-3)


def test_weights_move_the_centre_and_set_n_eff() -> None:
    # weights 3:1 -> centre 0.75 * 20 + 0.25 * 40 = 25; Kish n_eff = 16 / 10 = 1.6
    fused = pool(
        [gaussian(20, 5), gaussian(40, 5)], [3.0, 1.0], settings=FusionSettings(floor=1e-12)
    )
    assert fused.n_eff == pytest.approx(1.6)
    assert age_from_distribution(fused.probs, VALUES).value == pytest.approx(25.0, abs=1e-4)


def test_a_bad_frame_is_trimmed() -> None:
    good = [gaussian(c, 5) for c in (30, 31, 29, 30.5, 29.5, 30)]
    bad = gaussian(80, 5)
    fused = pool([*good, bad], centres=VALUES)
    assert fused.frames_used == 6 and not fused.used[-1]
    assert age_from_distribution(fused.probs, VALUES).value == pytest.approx(30.0, abs=0.3)


def test_a_zero_frame_cannot_veto() -> None:
    # Two frames: no trimming; one is a spike far away with zeros elsewhere. The floor
    # keeps the pooled distribution finite and between the two.
    spike = np.zeros(101)
    spike[90] = 1.0
    fused = pool([gaussian(30, 5), spike], centres=VALUES)
    assert np.all(np.isfinite(fused.probs)) and fused.probs.sum() == pytest.approx(1.0)
    assert fused.frames_used == 2


def test_trimming_is_capped() -> None:
    centres = np.array([10.0, 10.0, 10.0, 50.0, 60.0, 70.0])
    keep = trim_mask(centres, np.full(6, 1.0), np.ones(6), max_trim=1 / 3)
    assert keep.sum() >= 4
    assert trim_mask(np.array([0.0, 90.0]), np.ones(2), np.ones(2)).all()


def test_gender_is_weighted_log_odds() -> None:
    # two labels, rho = 0.5, frames p(male) = 0.8 and 0.6 with weights 1, 1
    # mean log-odds = (log 4 + log 1.5) / 2; k = 1 / (0.5 + 0.25) = 4/3
    frames = [[0.2, 0.8], [0.4, 0.6]]
    fused = pool(frames, settings=FusionSettings(floor=1e-12), correlation=0.5)
    logit = (4 / 3) * (math.log(4) + math.log(1.5)) / 2
    assert fused.probs[1] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-6)


def test_more_frames_give_a_narrower_distribution() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (1, 3, 10, 30):
        frames = [gaussian(35 + rng.normal(0, 3), 6) for _ in range(n)]
        fixed = FusionSettings(correlation=0.5, adaptive=False)
        age = age_from_distribution(pool(frames, centres=VALUES, settings=fixed).probs, VALUES)
        widths.append(age.std)
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.8 * widths[0]


def test_correlation_estimated_from_the_frames() -> None:
    # copies of one frame: no scatter, rho_data = 1; with 4 frames (3 degrees of freedom)
    # against a prior of 0.5 worth 4 frames: (4 * 0.5 + 3 * 1) / 7
    same = np.full(4, 30.0)
    assert estimate_correlation(same, np.full(4, 5.0), np.ones(4), 0.5, 4.0) == pytest.approx(5 / 7)
    # means 25, 35 (weighted variance 25, times 1 / (1 - 1/2) = 50) against frame variance
    # 100: rho_data = 0.5; one degree of freedom against 1 prior frame at 0.9 -> 0.7
    got = estimate_correlation(np.array([25.0, 35.0]), np.full(2, 10.0), np.ones(2), 0.9, 1.0)
    assert got == pytest.approx(0.7)
    # frames scattered more than their spread: rho_data is clipped to 0
    wide = estimate_correlation(np.array([0.0, 50.0]), np.full(2, 1.0), np.ones(2), 0.8, 1.0)
    assert wide == pytest.approx(0.4)
    assert estimate_correlation(np.array([30.0]), np.array([5.0]), np.ones(1), 0.8) == 0.8


def test_copies_of_one_frame_do_not_narrow_much() -> None:
    # 30 copies: the frames show no per-frame error, so rho -> 1 and the interval stays
    # near one frame's (a fixed rho of 0.5 would shrink it by sqrt(2))
    p = gaussian(40, 6)
    one = age_from_distribution(p, VALUES).std
    fused = pool([p] * 30, centres=VALUES)
    assert fused.correlation == pytest.approx((4 * 0.8 + 29 * 1.0) / 33)
    assert age_from_distribution(fused.probs, VALUES).std > 0.96 * one


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        pool(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        pool([[0.5, np.nan]])
    with pytest.raises(ValueError):
        pool([[0.5, 0.5]], [-1.0])
    with pytest.raises(ValueError):
        FusionSettings(correlation=1.5)
    # all-zero rows and zero weights are tolerated (uniform rows, equal weights)
    fused = pool([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    np.testing.assert_allclose(fused.probs, [0.5, 0.5])


def test_frame_weight_and_sharpness() -> None:
    assert frame_weight(64, 100, 0.0) == pytest.approx(0.5 * 0.5 * 0.5)
    assert frame_weight(200, 1000, 2.0) > frame_weight(40, 1000, 2.0)
    assert frame_weight(200, 1000, 2.0) > frame_weight(200, 10, 2.0)
    assert frame_weight(200, 1000, 2.0) > frame_weight(200, 1000, -1.0)
    assert 0 < frame_weight(0, 0, -10) < 0.001
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (80, 80), dtype=np.uint8)
    flat = np.full((80, 80), 128, np.uint8)
    assert sharpness(noisy) > sharpness(flat) == 0.0


def test_centres_of_groups() -> None:
    np.testing.assert_allclose(centres_of(None, [(0, 2), (4, 6)]), [1.0, 5.0])  # type: ignore[arg-type]
    assert centres_of(None, None) is None


# -- synthetic tracks: coverage ------------------------------------------------------------


@dataclass
class Coverage:
    frames: int
    single: float  # share of single frames whose 80% interval holds the truth
    fused: float  # share of tracks whose fused 80% interval holds the truth
    single_width: float
    fused_width: float
    single_mae: float
    fused_mae: float


def simulate(
    frames: int,
    tracks: int = 1000,
    *,
    rho: float = 0.5,
    assumed_rho: float | None = None,
    adaptive: bool = True,
    bad_share: float = 0.0,
    seed: int = 0,
) -> Coverage:
    """Coverage of the 80% interval on `tracks` synthetic tracks of `frames` frames.

    `assumed_rho`: the fusion's rho (adaptive: its prior); None: the default prior
    (adaptive) or the true rho (fixed)."""
    rng = np.random.default_rng(seed)
    if assumed_rho is None:
        settings = FusionSettings() if adaptive else FusionSettings(correlation=rho, adaptive=False)
    else:
        settings = FusionSettings(correlation=assumed_rho, adaptive=adaptive)
    hits = single_hits = 0
    widths, single_widths, errors, single_errors = [], [], [], []
    for _ in range(tracks):
        truth = rng.uniform(12, 78)
        s = rng.uniform(4, 9)
        common = rng.normal(0, math.sqrt(rho) * s)
        centres = truth + common + rng.normal(0, math.sqrt(1 - rho) * s, frames)
        probs = np.array([gaussian(c, s) for c in centres])
        bad = rng.random(frames) < bad_share
        for i in np.flatnonzero(bad):
            probs[i] = gaussian(rng.uniform(0, 100), rng.uniform(3, 9))
        weights = rng.uniform(0.3, 1.0, frames)
        fused = age_from_distribution(
            pool(probs, weights, centres=VALUES, settings=settings).probs, VALUES
        )
        low, high = fused.interval
        hits += low <= truth <= high
        widths.append(high - low)
        errors.append(abs(fused.value - truth))
        for p in probs[~bad]:
            one = age_from_distribution(p, VALUES)
            single_hits += one.interval[0] <= truth <= one.interval[1]
            single_widths.append(one.interval[1] - one.interval[0])
            single_errors.append(abs(one.value - truth))
    return Coverage(
        frames,
        single_hits / max(1, len(single_widths)),
        hits / tracks,
        float(np.mean(single_widths)),
        float(np.mean(widths)),
        float(np.mean(single_errors)),
        float(np.mean(errors)),
    )


@pytest.mark.parametrize("frames", [1, 5, 20, 60])
def test_known_rho_is_exactly_calibrated(frames: int) -> None:
    # rho known (fixed): the fused interval holds the truth 80% of the time at any length
    result = simulate(frames, tracks=600, adaptive=False, seed=frames)
    # 600 tracks: the binomial standard error of an 80% rate is 1.6 points
    assert 0.75 <= result.fused <= 0.85, result
    assert 0.77 <= result.single <= 0.83, result
    if frames > 1:
        assert result.fused_width < result.single_width, result
        assert result.fused_mae < result.single_mae, result


@pytest.mark.parametrize(("rho", "frames"), [(0.5, 5), (0.5, 20), (0.8, 20), (1.0, 20), (0.2, 60)])
def test_adaptive_rho_keeps_coverage(rho: float, frames: int) -> None:
    # rho unknown (the default: estimated per track, prior 0.8): at least about 80%, and
    # narrower than one frame wherever the frames carry independent evidence
    result = simulate(frames, tracks=600, rho=rho, seed=int(100 * rho) + frames)
    assert 0.75 <= result.fused <= 0.9, result
    if rho < 1:
        assert result.fused_width < result.single_width, result
        assert result.fused_mae < result.single_mae, result
    else:
        assert result.fused_width == pytest.approx(result.single_width, rel=0.05), result


def test_calibrated_with_a_few_bad_frames() -> None:
    result = simulate(20, tracks=600, bad_share=0.1, seed=7)
    assert 0.75 <= result.fused <= 0.9, result
    assert result.fused_width < result.single_width


def test_interval_floor_is_the_common_error() -> None:
    # rho = 1 (known): frames repeat the same error, so many frames are no better than one
    result = simulate(30, tracks=1500, rho=1.0, adaptive=False, seed=11)
    assert 0.75 <= result.fused <= 0.85, result
    assert result.fused_width == pytest.approx(result.single_width, rel=0.05)


def table() -> None:  # pragma: no cover - prints the README's numbers
    print(
        "| true rho | fusion | frames | single-frame coverage | fused coverage "
        "| width single -> fused | MAE single -> fused |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = [(rho, n, True, 0.0) for rho in (0.2, 0.5, 0.8, 1.0) for n in (1, 5, 20, 60)]
    rows += [(0.5, n, False, 0.0) for n in (5, 20, 60)] + [(0.8, 20, True, 0.1)]
    for rho, n, adaptive, bad in rows:
        if adaptive:
            how = "adaptive (prior 0.8)" + (f", {bad:.0%} bad frames" if bad else "")
        else:
            how = f"fixed rho = {rho}"
        r = simulate(n, tracks=2000, rho=rho, adaptive=adaptive, bad_share=bad, seed=n)
        print(
            f"| {rho} | {how} | {n} | {r.single:.3f} | {r.fused:.3f} | "
            f"{r.single_width:.1f} -> {r.fused_width:.1f} | "
            f"{r.single_mae:.2f} -> {r.fused_mae:.2f} |"
        )


if __name__ == "__main__":  # pragma: no cover
    table()
