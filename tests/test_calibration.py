"""Calibration: fitting on synthetic data, card/file validation, application in estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agegender import calibration as cal
from agegender.cards import parse_card
from agegender.errors import CardError
from agegender.estimates import age_from_distribution, gender_from_probs

VALUES = np.arange(0.0, 81.0)


def _peaked(centres: np.ndarray, width: float) -> np.ndarray:
    """(N, 81) distributions: a Gaussian of `width` years around each centre."""
    p = np.exp(-((VALUES[None, :] - centres[:, None]) ** 2) / (2 * width**2))
    return p / p.sum(axis=1, keepdims=True)


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    centres = rng.uniform(10, 70, 3000)
    truth = _peaked(centres, 4.0)  # the real distribution of the age given the face
    ages = np.array([rng.choice(VALUES, p=row) for row in truth])
    for known in (2.0, 0.5):
        # An overconfident (T = 2) or underconfident (T = 0.5) model: truth ** T.
        model = cal.temper(truth, 1.0 / known)
        fitted, kernel = cal.fit_temperature_kernel(
            model, VALUES, [(a, a) for a in ages], with_kernel=False
        )
        assert kernel == 0.0
        assert fitted == pytest.approx(known, rel=0.08)


def test_kernel_fit_widens_a_model_whose_error_grows_with_age() -> None:
    rng = np.random.default_rng(1)
    centres = rng.uniform(5, 70, 2000)
    ages = np.clip(np.round(np.exp(np.log1p(centres) + rng.normal(0, 0.2, 2000)) - 1), 0, 80)
    model = _peaked(centres, 1.0)  # far sharper than the 20% log-age error
    labels = [(a, a) for a in ages]
    mask = cal.label_mask(VALUES, labels)
    temperature, kernel = cal.fit_temperature_kernel(model, VALUES, labels)
    assert 0.1 < kernel < 0.3
    assert cal.age_nll(model, VALUES, mask, temperature, kernel) < cal.age_nll(
        model, VALUES, mask, 1.0, 0.0
    )


def test_conformal_quantile_by_hand() -> None:
    # n = 9, mass 0.8: rank ceil(10 * 0.8) = 8 -> the 8th smallest score
    assert cal.conformal_quantile([9, 1, 8, 2, 7, 3, 6, 4, 5], 0.8) == 8
    # n = 3: rank ceil(4 * 0.8) = 4 > 3: no finite quantile
    assert cal.conformal_quantile([1, 2, 3], 0.8) == math.inf


def test_conformal_widening_gives_the_requested_coverage() -> None:
    rng = np.random.default_rng(2)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        predicted = rng.uniform(0, 80, n)
        noise = np.where(predicted < 13, 1.0, 6.0)  # children's errors are smaller
        ages = predicted + rng.normal(0, noise)
        return predicted - 1.0, predicted + 1.0, ages, predicted  # far too narrow intervals

    lo, hi, ages, predicted = draw(4000)
    widen = cal.fit_widening(lo, hi, ages, predicted, cal.DEFAULT_AGE_BANDS, 0.8)
    assert widen[0] < widen[2]  # the children's band needs less
    c = cal.Calibration("age", bands=cal.DEFAULT_AGE_BANDS, widen=widen)
    lo, hi, ages, predicted = draw(20000)
    w = np.array([c.widening(p) for p in predicted])
    inside = (ages >= lo - w) & (ages <= hi + w)
    assert inside.mean() == pytest.approx(0.8, abs=0.015)
    for low, high in ((0, 13), (25, 45)):  # and within each band
        band = (predicted >= low) & (predicted < high)
        assert inside[band].mean() == pytest.approx(0.8, abs=0.03)


def test_band_below_min_band_takes_the_pooled_widening() -> None:
    lows, highs = [0.0] * 40, [1.0] * 40
    ages = [float(i % 10) for i in range(40)]
    predicted = [30.0] * 40  # all in one band: the others have none
    widen = cal.fit_widening(lows, highs, ages, predicted, (0.0, 25.0), 0.8)
    assert widen[0] == widen[1]


def test_gender_fit_per_band() -> None:
    rng = np.random.default_rng(3)
    ages = rng.uniform(0, 70, 4000)
    stated = rng.uniform(0.55, 0.999, 4000)  # P(male) the model states
    # adults: right as often as stated; children: far less sure than stated
    true_p = np.where(ages < 13, 0.5 + (stated - 0.5) * 0.3, stated)
    is_male = rng.uniform(size=4000) < true_p
    c = cal.fit_gender(stated.tolist(), is_male.tolist(), ages.tolist())
    assert c.bands == (0.0, 13.0)
    assert c.temperatures[0] > 2.0 and c.temperatures[1] == pytest.approx(1.0, abs=0.15)
    assert c.gender_temperature(5.0) == c.temperatures[0]
    assert c.gender_temperature(None) == c.temperature


def _card(calibration: object, task: str = "age") -> dict:
    data: dict = {
        "id": "my-age",
        "task": task,
        "source": {"file": "m.onnx"},
        "input": {"size": [64, 64]},
        "crop": {"kind": "chip"},
        "output": {"range": [0, 80]} if task == "age" else {"labels": ["female", "male"]},
    }
    data["calibration"] = calibration
    return data


def test_card_calibration_is_parsed_and_validated() -> None:
    card = parse_card(
        _card({"temperature": 1.5, "kernel": 0.2, "bands": [0, 13], "widen": [0.5, -1.0]}),
        "my.toml",
    )
    assert card.calibration == cal.Calibration("age", 1.5, 0.2, 0.8, (0.0, 13.0), (0.5, -1.0), ())
    gender = parse_card(_card({"temperature": 2.0}, task="gender"), "g.toml")
    assert gender.calibration is not None and gender.calibration.task == "gender"
    for table, field in (
        ({"temperature": 0}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"kernel": -1}, "kernel"),
        ({"mass": 1.0}, "mass"),
        ({"bands": [13, 0], "widen": [1, 1]}, "bands"),
        ({"bands": [0, 13], "widen": [1]}, "widen"),
        ({"bands": [0, 13]}, "bands"),
        ({"temperatures": [1.0]}, "temperatures"),  # a gender key on an age card
        ({"warmth": 1}, "warmth"),
        ("hot", "[calibration]"),
    ):
        with pytest.raises(CardError) as error:
            parse_card(_card(table), "my.toml")
        message = str(error.value)
        assert "\n" not in message and message.startswith("card my-age (my.toml)")
        assert field in message


def test_calibration_file_round_trip_and_which_applies(tmp_path) -> None:
    age = cal.Calibration("age", 1.4, 0.19, 0.8, (0.0, 13.0), (0.1, -0.8))
    gender = cal.Calibration("gender", 1.9, bands=(0.0, 13.0), temperatures=(4.5, 1.7))
    fitted = cal.CalibrationSet(age, gender, ("a1",), ("g1",), None, None, "synthetic")
    path = tmp_path / "c.toml"
    path.write_text(cal.to_toml(fitted, ["a comment"]))
    back = cal.load_file(path)
    assert (back.age, back.gender, back.age_models, back.data) == (
        age,
        gender,
        ("a1",),
        "synthetic",
    )
    card_own = cal.Calibration("age", 3.0)
    # The preset's, for the very models it was fitted for; else a lone card's own.
    assert cal.resolve("", back, "age", ["a1"], None, [None]) == age
    assert cal.resolve("", back, "age", ["a1"], (2.0,), [None]) == age  # one weight: same
    assert cal.resolve("", back, "age", ["other"], None, [card_own]) == card_own
    assert cal.resolve("", back, "age", ["a1", "a2"], None, [None, None]) is None
    assert cal.resolve("none", back, "age", ["a1"], None, [card_own]) is None
    assert cal.resolve(str(path), None, "gender", ["g1"], None, [None]) == gender
    with pytest.raises(cal.CalibrationError, match="fitted for g1, not g2"):
        cal.resolve(str(path), None, "gender", ["g2"], None, [None])
    bad = tmp_path / "bad.toml"
    bad.write_text("[age]\ntemperature = -1\n")
    with pytest.raises(cal.CalibrationError, match="temperature must be"):
        cal.load_file(bad)


def test_estimates_apply_the_calibration() -> None:
    probs = _peaked(np.array([30.0]), 1.0)[0]
    raw = age_from_distribution(probs, VALUES, thresholds=(25,))
    c = cal.Calibration("age", 2.0, 0.1, 0.8, (0.0, 25.0), (0.0, 3.0))
    calibrated = age_from_distribution(probs, VALUES, thresholds=(25,), calibration=c)
    assert calibrated.value == raw.value  # the point estimate does not move
    assert calibrated.std > 2 * raw.std
    assert calibrated.p_at_least[25.0] < raw.p_at_least[25.0]
    # the interval: the calibrated distribution's (interpolated) plus 3 years each side
    q = cal.calibrate_age(probs, VALUES, 2.0, 0.1)
    lo, hi = cal.interval_of(q, VALUES, 0.8)
    assert calibrated.interval == (round(lo[0] - 3.0, 1), round(hi[0] + 3.0, 1))
    # gender: the temperature of the face's age band; the label never changes
    g = cal.Calibration("gender", 2.0, bands=(0.0, 13.0), temperatures=(4.0, 1.0))
    p = np.array([0.2, 0.8])  # logit(male) = log 4
    child = gender_from_probs(p, ["female", "male"], g, age=5.0)
    adult = gender_from_probs(p, ["female", "male"], g, age=40.0)
    assert child.label == adult.label == "male"
    assert child.probability == pytest.approx(1 / (1 + 4 ** (-1 / 4)))
    assert adult.probability == pytest.approx(0.8)
