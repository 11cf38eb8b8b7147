"""Calibration: fitting on synthetic data, card/file validation, application in estimates."""

from __future__ import annotations

from dataclasses import replace

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


def test_pit_values_are_uniform_under_the_true_distribution() -> None:
    rng = np.random.default_rng(2)
    centres = rng.uniform(3, 75, 6000)
    truth = _peaked(centres, 3.0)
    ages = np.array([rng.choice(VALUES, p=row) for row in truth])
    u = cal.pit_values(truth, VALUES, ages.tolist(), seed=0)
    deciles = np.histogram(u, bins=10, range=(0, 1))[0] / len(u)
    assert np.all(np.abs(deciles - 0.1) < 0.015)
    # an overconfident model (width 1 instead of 3) puts far more than 20% in the tails
    sharp = cal.pit_values(_peaked(centres, 1.0), VALUES, ages.tolist())
    assert np.mean((sharp < 0.1) | (sharp > 0.9)) > 0.5


def test_pit_map_and_remap_by_hand() -> None:
    u = np.array([0.1, 0.2, 0.3, 0.4])
    # grid 0, .25, .5, .75, 1: two of four at or below .25, all below .5
    assert cal.fit_pit_map(u, np.ones(4), points=5) == (0.0, 0.5, 1.0, 1.0, 1.0)
    assert cal.fit_pit_map(u, np.array([3.0, 1, 1, 1]), points=5)[1] == pytest.approx(4 / 6)
    # a value exactly on a grid point counts half below, half above
    assert cal.fit_pit_map(np.array([0.25, 0.75]), np.ones(2), points=5)[1] == 0.25
    p = np.array([0.25, 0.25, 0.25, 0.25])
    assert np.allclose(cal.remap(p, (0.0, 1.0)), p)  # the identity map
    # R(0.5) = 0.8: the first half of the mass becomes 0.8
    assert np.allclose(cal.remap(p, (0.0, 0.8, 1.0)), [0.4, 0.4, 0.1, 0.1])


def test_decade_weights_make_every_decade_count_equally() -> None:
    w = cal.decade_weights([5, 6, 7, 25, 95, 85])  # 80+ is one decade
    assert w[:3].sum() == pytest.approx(w[3]) == pytest.approx(w[4:].sum())
    assert w.sum() == pytest.approx(6)


def test_decade_weights_power_half_and_none() -> None:
    ages = [5, 6, 7, 8, 25]  # four faces in 0-9, one in 20-29
    w = cal.decade_weights(ages, 0.5)  # 1/sqrt(4) against 1/sqrt(1), mean 1
    assert w[:4] == pytest.approx([w[4] / 2] * 4)
    assert w.mean() == pytest.approx(1.0)
    assert cal.decade_weights(ages, 0.0) == pytest.approx(np.ones(5))
    assert cal.BALANCE[cal.DEFAULT_BALANCE] == 0.5
    assert set(cal.BALANCE_WORDS) == set(cal.BALANCE)  # every choice named in the file


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A model far too sure (width 1) and biased for children, whose error grows with age:
    its distributions and the true ages."""
    centres = rng.uniform(2, 60, n)
    noise = 1.0 + 0.15 * centres
    ages = np.clip(np.round(centres + 3.0 * (centres < 13) + rng.normal(0, noise)), 0, 80)
    return _peaked(centres, 1.0), ages


def test_recalibration_gives_the_requested_coverage_and_reliable_probabilities() -> None:
    rng = np.random.default_rng(4)
    model, ages = _draw(rng, 4000)
    labels = [(a, a) for a in ages]
    fitted = cal.fit_age(model, VALUES, labels, range(4000), balance=False)
    assert len(fitted.pit) == len(cal.DEFAULT_AGE_BANDS) and fitted.widen == ()
    test, truth = _draw(rng, 6000)
    raw = [age_from_distribution(p, VALUES, thresholds=(18.0,)) for p in test]
    calibrated = [
        age_from_distribution(p, VALUES, thresholds=(18.0,), calibration=fitted) for p in test
    ]

    def covered(estimates: list) -> np.ndarray:
        return np.array(
            [e.interval[0] <= a <= e.interval[1] for e, a in zip(estimates, truth, strict=True)]
        )

    inside = covered(calibrated)
    assert covered(raw).mean() < 0.5  # the model's own interval: far too narrow
    assert inside.mean() == pytest.approx(0.8, abs=0.02)
    predicted = np.array([e.value for e in raw])
    for low, high in ((13, 20), (30, 45), (45, 60)):  # and within each band of adults
        band = (predicted >= low) & (predicted < high)
        assert inside[band].mean() == pytest.approx(0.8, abs=0.04)
    # children's distributions span few bins: read at the mass, the interval holds their
    # whole-year ages more often than the mass (its end bins counted in whole); their
    # bands' levels (fitted on the same faces) bring it back
    young = predicted < 13
    assert min(fitted.levels[:2]) < 0.79 < 0.8 == fitted.mass
    assert inside[young].mean() == pytest.approx(0.8, abs=0.03)
    at_mass = replace(fitted, levels=())
    without = covered([age_from_distribution(p, VALUES, calibration=at_mass) for p in test])
    assert without[young].mean() > inside[young].mean() + 0.015
    # children are 3 years older than the model says: their band's map moves the interval up
    middle = np.array([(e.interval[0] + e.interval[1]) / 2 for e in calibrated])
    assert np.mean(middle[young] - predicted[young]) > 1.5
    assert np.mean(middle[~young] - predicted[~young]) < 1.0
    # P(age >= 18): reliable (expected calibration error, 10 bins)
    stated = np.array([e.p_at_least[18.0] for e in calibrated])
    adult = truth >= 18
    bins = np.minimum((stated * 10).astype(int), 9)
    ece = sum(
        abs(stated[bins == b].mean() - adult[bins == b].mean()) * (bins == b).sum()
        for b in range(10)
        if (bins == b).any()
    ) / len(stated)
    assert ece < 0.03
    # the point estimate does not move
    assert [e.value for e in calibrated] == pytest.approx([e.value for e in raw])


def test_decade_balance_evens_coverage_across_ages() -> None:
    rng = np.random.default_rng(5)
    model, ages = _draw(rng, 4000)
    # nine in ten calibration faces are 20-39; the rest of the ages are few
    keep = np.flatnonzero((ages >= 20) & (ages < 40))
    few = np.flatnonzero((ages < 20) | (ages >= 40))[: len(keep) // 9]
    rows = np.concatenate([keep, few])
    labels = [(a, a) for a in ages]
    one_band = {"bands": (0.0,)}  # one map for all: only the weighting differs
    plain = cal.fit_age(model, VALUES, labels, rows, balance=False, **one_band)
    balanced = cal.fit_age(model, VALUES, labels, rows, balance=True, **one_band)
    test, truth = _draw(rng, 4000)

    def spread(c: cal.Calibration) -> float:
        inside = np.array(
            [
                e.interval[0] <= a <= e.interval[1]
                for e, a in zip(
                    (age_from_distribution(p, VALUES, calibration=c) for p in test),
                    truth,
                    strict=True,
                )
            ]
        )
        decade = np.minimum(truth // 10, 7)
        per = [inside[decade == d].mean() for d in range(8) if (decade == d).sum() > 100]
        return float(max(per) - min(per))

    assert spread(balanced) < spread(plain)


def test_temperature_and_kernel_are_fitted_per_band() -> None:
    """Children's error (in log-age) is five times adults' here: their band gets the wider
    smoothing, and each estimate uses its own band's pair."""
    rng = np.random.default_rng(7)
    centres = rng.uniform(1, 60, 3000)
    spread = np.where(centres < 5, 0.5, 0.1)
    ages = np.clip(np.round(np.expm1(np.log1p(centres) + rng.normal(0, spread))), 0, 80)
    model = _peaked(centres, 0.7)
    fitted = cal.fit_age(model, VALUES, [(a, a) for a in ages], range(3000), bands=(0.0, 5.0))
    assert len(fitted.kernels) == len(fitted.temperatures) == 2
    assert fitted.kernels[0] > 2 * fitted.kernels[1]
    assert fitted.age_parameters(3.0) == (fitted.temperatures[0], fitted.kernels[0])
    assert fitted.age_parameters(30.0) == (fitted.temperatures[1], fitted.kernels[1])


def test_band_below_min_band_takes_the_pooled_map() -> None:
    rng = np.random.default_rng(6)
    model, ages = _draw(rng, 400)
    centres = model @ VALUES
    rows = np.flatnonzero(centres >= 30)  # no face in the children's bands
    bands = (0.0, 13.0, 30.0, 45.0)
    labels = [(a, a) for a in ages]
    fitted = cal.fit_age(model, VALUES, labels, rows, bands=bands, balance=False)
    # the empty bands take the map of all faces and the global temperature and kernel
    assert fitted.pit[0] == fitted.pit[1]
    assert fitted.pit[2] != fitted.pit[0] and fitted.pit[3] != fitted.pit[0]
    assert fitted.age_parameters(5.0) == fitted.age_parameters(20.0)
    assert fitted.age_parameters(5.0) == (fitted.temperature, fitted.kernel)
    assert fitted.age_parameters(35.0) != fitted.age_parameters(5.0)


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
    pit = [[0, 0.3, 1], [0, 0.5, 1]]
    card = parse_card(_card({"bands": [0, 13], "pit": pit}), "my.toml")
    assert card.calibration is not None
    assert card.calibration.pit == ((0.0, 0.3, 1.0), (0.0, 0.5, 1.0))
    assert card.calibration.pit_map(20.0) == (0.0, 0.5, 1.0)
    assert card.calibration.interval_mass(20.0) == 0.8  # no levels: the mass
    card = parse_card(_card({"bands": [0, 13], "pit": pit, "levels": [0.6, 0.78]}), "my.toml")
    assert card.calibration is not None
    assert card.calibration.interval_mass(3.0) == 0.6
    assert card.calibration.interval_mass(20.0) == 0.78
    per_band = {"bands": [0, 13], "temperatures": [1.2, 0.9], "kernels": [0.5, 0.1]}
    card = parse_card(_card(per_band), "my.toml")
    assert card.calibration is not None
    assert card.calibration.age_parameters(5.0) == (1.2, 0.5)
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
        ({"bands": [0, 13], "pit": [[0, 1]]}, "pit"),
        ({"bands": [0], "pit": [[0, 0.7, 0.6, 1]]}, "pit[0]"),
        ({"bands": [0], "pit": [[0.1, 1]]}, "pit[0]"),
        ({"bands": [0], "pit": [[0, 1.5, 1]]}, "pit[0]"),
        ({"bands": [0], "pit": [0, 1]}, "pit"),
        ({"bands": [0, 1], "pit": [[0, 1], [0, 0.5, 1]]}, "pit"),
        ({"bands": [0], "pit": [[0, 1]], "widen": [1]}, "both"),
        ({"bands": [0], "levels": [0.7]}, "levels without pit"),
        ({"bands": [0], "pit": [[0, 1]], "levels": [1.0]}, "levels"),
        ({"bands": [0], "pit": [[0, 1]], "levels": [0]}, "levels"),
        ({"bands": [0, 1], "pit": [[0, 1], [0, 1]], "levels": [0.7]}, "levels has 1"),
        ({"bands": [0], "temperatures": [1.0], "pit": [[0, 1]]}, "kernels"),
        ({"bands": [0], "temperatures": [1.0], "kernels": [9.0]}, "kernels"),
        ({"bands": [0, 1], "temperatures": [1.0, 1], "kernels": [0.1]}, "kernels"),
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
    # a recalibration map survives the file too (to 4 decimals)
    mapped = cal.Calibration(
        "age",
        1.0,
        0.1,
        0.8,
        (0.0, 30.0),
        temperatures=(1.1, 0.9),
        pit=((0.0, 0.3, 1.0),) * 2,
        kernels=(0.4, 0.1),
    )
    other = tmp_path / "mapped.toml"
    other.write_text(cal.to_toml(cal.CalibrationSet(mapped, None, ("a1",)), []))
    assert cal.load_file(other).age == mapped
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
    # the same models with other ensemble weights: the error said "fitted for a1+a2, not
    # a1+a2"; it names the weights
    pair = tmp_path / "pair.toml"
    pair.write_text(
        cal.to_toml(cal.CalibrationSet(age, None, ("a1", "a2"), age_weights=(0.4, 0.6)), [])
    )
    assert cal.resolve(str(pair), None, "age", ["a1", "a2"], (2.0, 3.0), [None, None]) == age
    with pytest.raises(
        cal.CalibrationError, match=r"fitted for a1\+a2 weighted 0.4/0.6, not 0.6/0.4; fit one"
    ):
        cal.resolve(str(pair), None, "age", ["a1", "a2"], (0.6, 0.4), [None, None])
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


def test_ages_past_the_last_bin_do_not_widen_their_band() -> None:
    """No interval read off bins ending at 80 holds a 90-year-old: such faces are left out
    of the level fit, so the band's other faces are covered at the mass. With them in, the
    level would be raised until the band as a whole reached the mass, and the faces the
    bins can hold would be covered about mass / 0.9 of the time."""
    rng = np.random.default_rng(8)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        model, ages = _draw(rng, n)
        old = np.flatnonzero(model @ VALUES >= 45)
        ages[old[::10]] = 90.0  # a tenth of the old band past the last bin (80)
        return model, ages

    model, ages = draw(1500)
    # unweighted: by decade, the 80+ faces (all past the bin) would weigh as much as each
    # other decade and move the map itself up (the map counts them: u = 1)
    labels = [(a, a) for a in ages]
    fitted = cal.fit_age(model, VALUES, labels, range(1500), bands=(0.0, 45.0), balance=False)
    test, truth = draw(4000)
    estimates = [age_from_distribution(p, VALUES, calibration=fitted) for p in test]
    pairs = zip(estimates, truth, strict=True)
    inside = np.array([e.interval[0] <= a <= e.interval[1] for e, a in pairs])
    holdable = (test @ VALUES >= 45) & (truth <= 80)
    # 0.84 here (the band's 300 faces fit; with the 90-year-olds in the level fit: 0.90)
    assert 0.76 < inside[holdable].mean() < 0.87
    assert not inside[truth > 80].any()


def test_no_level_without_an_age_the_bins_can_hold() -> None:
    """Every labelled age past the last bin: the map is fitted (all u = 1) but no level
    can be, so the file has none and the interval is read at the mass."""
    rng = np.random.default_rng(9)
    model, _ = _draw(rng, 120)
    ages = np.full(120, 95.0)
    fitted = cal.fit_age(model, VALUES, [(a, a) for a in ages], range(120), bands=(0.0,))
    assert fitted.pit and fitted.levels == ()
    assert fitted.interval_mass(30.0) == fitted.mass == 0.8
