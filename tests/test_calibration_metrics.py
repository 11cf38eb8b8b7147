"""evaluate's calibration figures against numbers worked out by hand; calibrate end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from agegender import calibration as cal
from agegender.cli import main
from agegender.evaluate.metrics import (
    Outcome,
    interval_coverage,
    reliability,
    summarize,
    threshold_metrics,
)
from agegender.evaluate.readers import Record

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"


def test_reliability_by_hand() -> None:
    # bin 0.1-0.2: 0.1, 0.1 (truth 0, 1): mean 0.1, share 0.5, |gap| 0.4, n 2
    # bin 0.9-1.0: 0.9, 1.0 (truth 1, 1): mean 0.95, share 1.0, |gap| 0.05, n 2
    # ECE = (2 * 0.4 + 2 * 0.05) / 4 = 0.225
    # Brier = (0.01 + 0.81 + 0.01 + 0) / 4 = 0.2075
    rel = reliability([0.1, 0.1, 0.9, 1.0], [False, True, True, True])
    assert rel["n"] == 4
    assert rel["ece"] == pytest.approx(0.225)
    assert rel["brier"] == pytest.approx(0.2075)
    assert [(b["low"], b["n"]) for b in rel["bins"]] == [(0.1, 2), (0.9, 2)]
    assert rel["bins"][1]["mean_p"] == pytest.approx(0.95)
    assert reliability([], [])["ece"] is None
    assert reliability([], [])["ece_chance"] is None


def test_ece_by_chance_is_what_calibrated_probabilities_read() -> None:
    """Truths drawn as coin flips of the stated probabilities (calibrated by construction):
    their ECE stays under the chance figure about nine times in ten; a model too sure of
    itself (stated 0.95 where 0.75 come true) is far above it. The figure shrinks as
    1/sqrt(n) and, seeded, is the same for the same probabilities."""
    rng = np.random.default_rng(11)
    probs = rng.uniform(0.5, 1.0, 300)
    chance = reliability(probs, probs > 0.7)["ece_chance"]
    assert chance == reliability(probs, probs > 0.2)["ece_chance"]  # the truths play no part
    under = [reliability(probs, rng.random(300) < probs)["ece"] <= chance for _ in range(400)]
    assert 0.84 <= np.mean(under) <= 0.96
    sure = np.full(300, 0.95)
    rel = reliability(sure, rng.random(300) < 0.75)
    assert rel["ece"] > 3 * rel["ece_chance"]
    many = rng.uniform(0.5, 1.0, 30_000)  # over EXACT_CHANCE_N: the normal approximation
    big = reliability(many, many > 0.7)["ece_chance"]
    assert big == pytest.approx(chance * np.sqrt(300 / 30_000), rel=0.25)


def test_interval_coverage_by_hand() -> None:
    # 20 in [10, 30] yes; 30 in [10, 30] yes (ends count); 5 in [10, 30] no; widths 20 20 20
    out = interval_coverage([(10, 30)] * 3, [20, 30, 5])
    assert out == {"n": 3, "coverage": pytest.approx(2 / 3), "mean_width": 20.0}


def test_threshold_metrics_carry_ece_and_brier() -> None:
    # P(age>=18): .95 (adult), .6 (minor), .2 (minor), .99 (adult)
    # at 0.5: the minor at .6 passes -> false_accept 1/2; no adult fails
    # bins: .2 -> [.2,.3) truth 0 gap .2; .6 -> truth 0 gap .6; .95 and .99 -> [.9,1)
    #   mean .97 share 1 gap .03 (n 2): ECE = (.2 + .6 + 2 * .03) / 4 = .215
    # Brier = (.0025 + .36 + .04 + .0001) / 4 = .100650
    m = threshold_metrics([0.95, 0.6, 0.2, 0.99], [True, False, False, True])
    assert m["false_accept"] == 0.5 and m["false_reject"] == 0.0
    assert m["ece"] == pytest.approx(0.215)
    assert m["brier"] == pytest.approx(0.10065)
    assert len(m["reliability"]) == 3


def test_summarize_reports_coverage_gender_calibration_and_children() -> None:
    records = [
        Record("a", age=8.0, gender="female"),
        Record("b", age=9.0, gender="male"),
        Record("c", age=35.0, gender="male"),
        Record("d", age=50.0, gender="female"),
    ]
    outcomes = [
        Outcome("ok", 10.0, None, "male", 0.8, 1, interval=(6.0, 12.0)),  # covered, wrong
        Outcome("ok", 12.0, None, "male", 0.6, 1, interval=(10.0, 14.0)),  # missed, right
        Outcome("ok", 33.0, None, "male", 0.9, 1, interval=(25.0, 40.0)),  # covered, right
        Outcome("ok", 40.0, None, "female", 0.9, 1, interval=(30.0, 45.0)),  # missed, right
    ]
    out = summarize(records, outcomes)
    main_scores = out["excluding_no_face"]
    assert main_scores["interval"]["coverage"] == 0.5
    assert main_scores["interval"]["mean_width"] == pytest.approx((6 + 4 + 15 + 15) / 4)
    # gender: .8 wrong, .6 right, .9 right, .9 right
    # bins .6 -> gap .4 (n 1), .8 -> gap .8 (n 1), .9 -> gap .1 (n 2): ECE = (.4+.8+.2)/4
    assert main_scores["gender"]["ece"] == pytest.approx(0.35)
    assert main_scores["gender"]["brier"] == pytest.approx((0.64 + 0.16 + 0.01 + 0.01) / 4)
    # children under 13: the first two only
    kids = out["under_13"]
    assert kids["interval"]["coverage"] == 0.5 and kids["gender"]["n"] == 2
    assert kids["gender"]["ece"] == pytest.approx((0.8 + 0.4) / 2)
    # coverage by decade: 0-9 half, 30-39 all, 50-59 none
    by = out["by_decade"]
    assert [by[d]["interval"]["coverage"] for d in ("0-9", "30-39", "50-59")] == [0.5, 1, 0]


@pytest.fixture(scope="module")
def faces_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Face crops of the portrait made different (brightness, contrast, flips, zoom),
    with made-up ages: enough for calibrate to run, not to learn anything true."""
    root = tmp_path_factory.mktemp("calib")
    portrait = Image.open(ASTRONAUT).convert("RGB").crop((150, 50, 300, 200))
    rows = ["path,age,gender"]
    for i in range(24):
        face = ImageEnhance.Brightness(portrait).enhance(0.6 + 0.05 * i)
        face = ImageEnhance.Contrast(face).enhance(0.7 + 0.03 * (i % 7))
        if i % 2:
            face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        margin = i % 5
        face = face.crop((margin, margin, 150 - margin, 150 - margin))
        face.save(root / f"f{i}.png")
        rows.append(f"f{i}.png,{20 + 2 * i},{'f' if i % 3 else 'm'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_calibrate_writes_a_file_evaluate_applies(
    faces_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fitted.toml"
    args = ["calibrate", str(faces_csv), "--format", "csv", "--cropped", "--threads", "1"]
    code = main([*args, "--holdout", "0.25", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "held out: 6 of 24 faces" in captured.out and "interval coverage" in captured.out
    fitted = cal.load_file(out)
    assert fitted.age_models == ("cc0-age-v1",) and fitted.gender_models == ("cc0-gender-v1",)
    assert fitted.age is not None and fitted.age.temperature > 0
    assert "18 faces fitted" in fitted.data and "6 held out" in fitted.data
    # an existing file is not replaced without --force
    assert main([*args, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    # evaluate with that file: the interval and the probabilities are scored
    code = main(
        [
            "evaluate",
            str(faces_csv),
            "--format",
            "csv",
            "--cropped",
            "--calibration",
            str(out),
            "--age-threshold",
            "30",
            "--json",
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    scores = report["settings"][0]["metrics"]["excluding_no_face"]
    assert scores["interval"]["n"] == 24 and "ece" in scores["thresholds"]["30"]
    assert scores["gender"]["calibration_n"] == 24
    assert report["settings"][0]["config"]["calibration"] == str(out)


def test_calibrate_checks_out_and_seed_before_any_work_and_refuses_too_few_faces(
    faces_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from agegender.commands import calibrate as command

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the models ran before the arguments were checked")

    args = ["calibrate", str(faces_csv), "--format", "csv", "--cropped", "--threads", "1"]
    image = faces_csv.parent / "f0.png"
    before = image.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(command, "_collect", no_work)
        for extra, message in [
            (["--out", str(tmp_path / "nodir" / "c.toml")], "does not exist"),
            (["--out", str(tmp_path), "--force"], "a calibration file is .toml"),
            (["--out", str(tmp_path / "d.toml")], "is a folder"),
            (["--out", str(image), "--force"], "a calibration file is .toml"),
            (["--seed", "-1"], "-1"),
        ]:
            (tmp_path / "d.toml").mkdir(exist_ok=True)
            try:
                code = main([*args, *extra])
            except SystemExit as done:  # argparse's own usage error
                code = int(done.code or 0)
            err = capsys.readouterr().err
            assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    assert image.read_bytes() == before
    code = main([*args, "--holdout", "0.9"])  # 2 of 24 faces left to fit
    err = capsys.readouterr().err
    assert code == 2 and "2 labelled faces to fit" in err and "at least 10" in err


def test_a_calibration_file_without_tables_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text('data = "x"\n')
    with pytest.raises(cal.CalibrationError, match="holds no calibration"):
        cal.load_file(empty)
