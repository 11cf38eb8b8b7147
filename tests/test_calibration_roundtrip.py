"""Calibration audit: what calibrate states is what its file gives, and a file is read
only with values the estimates can use (synthetic data with known truth, no models run)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agegender import calibration as cal
from agegender.cli import main
from agegender.commands import calibrate as command

VALUES = np.arange(0.0, 81.0)
FAIRFACE = [(0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 120)]


def _synthetic(n: int, *, groups: bool) -> dict[str, Any]:
    """Faces whose model is too sharp by a temperature of 2 (the truth is a Gaussian in
    log(1 + age) of width 0.25 around each centre); exact ages, or FairFace's groups."""
    rng = np.random.default_rng(0)
    centres = np.log1p(rng.uniform(1, 75, n))
    truth = np.exp(-((np.log1p(VALUES)[None] - centres[:, None]) ** 2) / (2 * 0.25**2))
    truth /= truth.sum(axis=1, keepdims=True)
    ages = [float(rng.choice(VALUES, p=row)) for row in truth]
    probs = cal.temper(truth, 0.5)
    p_male = rng.uniform(0.05, 0.95, n)
    male = rng.random(n) < p_male**0.5  # the stated probabilities are too unsure
    labels = [next(g for g in FAIRFACE if g[0] <= a < g[1] + 1) if groups else (a, a) for a in ages]
    return {
        "values": VALUES,
        "probs": list(probs),
        "ages": [None if groups else a for a in ages],
        "labels": labels,
        "raw_age": [float(p @ VALUES) for p in probs],
        "gender_probs": [np.array([1 - q, q]) for q in p_male],
        "genders": ["male" if m else "female" for m in male],
        "gender_labels": ("female", "male"),
    }


def _run(monkeypatch, capsys, data: dict[str, Any], *extra: str) -> tuple[int, str, str]:
    def collect(args: Any, cli: Any) -> tuple[dict[str, Any], Any, str]:
        return data, command._config(args, cli), "synthetic"

    monkeypatch.setattr(command, "_collect", collect)
    code = main(["calibrate", "labels.csv", "--format", "csv", "--cropped", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_held_out_figures_are_those_of_the_file_as_written(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The file rounds its values (4 decimals); the held-out figures in its header and in
    --json had been computed with the unrounded fit, so --calibration FILE gave other
    estimates than the ones measured (P(age >= t) by ~1e-4, some intervals by 0.1 year)."""
    data = _synthetic(150, groups=False)
    out = tmp_path / "fitted.toml"
    code, text, err = _run(
        monkeypatch, capsys, data, "--age-bands", "0,30", "--out", str(out), "--json"
    )
    assert code == 0, err
    after = json.loads(text)["after"]
    order = list(range(150))
    random.Random(0).shuffle(order)
    holdout = sorted(order[:30])
    from_file = command._figures(holdout, data, cal.load_file(out), command.REPORT_THRESHOLDS)
    assert json.loads(json.dumps(from_file)) == after


def test_group_labels_only_give_no_map_and_the_file_says_so(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Group labels only (FairFace's): the map needs exact ages, so only one temperature
    and smoothing are fitted. The file had said "the recalibration map cross-fitted in 5
    folds, ages balanced by decade" and nothing warned."""
    data = _synthetic(150, groups=True)
    out = tmp_path / "fitted.toml"
    code, _, err = _run(monkeypatch, capsys, data, "--out", str(out))
    assert code == 0, err
    assert "0 of the 120 age labels to fit are exact ages" in err and "no map" in err
    fitted = cal.load_file(out)
    assert fitted.age is not None and not fitted.age.pit and not fitted.age.bands
    assert "cross-fitted" not in fitted.data and "no recalibration map: 0 exact ages" in fitted.data


@pytest.mark.parametrize(
    "line,message",
    [
        ("temperature = 1e-310", "[age] temperature must be a finite number >= 0.01 and <= 100"),
        ("temperature = 150", "[age] temperature must be a finite number >= 0.01 and <= 100"),
        ("kernel = 7", "[age] kernel must be a finite number >= 0 and <= 5, got 7"),
        ("temperatures = [1e-310]\nbands = [0]\nkernels = [0.1]", "[age] temperatures must be"),
    ],
)
def test_a_temperature_the_estimates_cannot_use_is_refused(
    tmp_path: Path, line: str, message: str
) -> None:
    """A temperature of 1e-310 (> 0, so it was read) overflows log p / T: the estimates
    were NaN and predict --json stopped with a traceback; a value over the top bound was
    told only the lower one ("must be a finite number > 0, got 150")."""
    path = tmp_path / "hand.toml"
    path.write_text(f'age_models = ["cc0-age-v1"]\n\n[age]\n{line}\n')
    with pytest.raises(cal.CalibrationError) as error:
        cal.load_file(path)
    assert str(path) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "option,power,words",
    [
        ((), 0.5, "ages weighted by 1/sqrt(faces of their decade)"),
        (("--balance", "decade"), 1.0, "ages balanced by decade"),
        (("--balance", "none"), 0.0, "unweighted"),
    ],
)
def test_balance_reaches_the_fit_and_the_file_says_which(
    tmp_path: Path, monkeypatch, capsys, option: tuple[str, ...], power: float, words: str
) -> None:
    """--balance (default sqrt) is the power of the decade weights the map and levels get."""
    seen: list[float] = []
    real = cal.fit_age

    def spy(*args: Any, **kwargs: Any) -> cal.Calibration:
        seen.append(kwargs["balance"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cal, "fit_age", spy)
    out = tmp_path / "fitted.toml"
    code, _, err = _run(
        monkeypatch, capsys, _synthetic(150, groups=False), "--out", str(out), *option
    )
    assert code == 0, err
    assert seen == [power]
    assert f"cross-fitted in 4 folds, {words})" in cal.load_file(out).data
