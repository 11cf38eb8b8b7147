"""Every metric against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from agegender.evaluate import metrics
from agegender.evaluate.metrics import Outcome
from agegender.evaluate.readers import Record

# errors: -2, 0, 5, 7
PRED = [10.0, 20.0, 30.0, 47.0]
TRUE = [12.0, 20.0, 25.0, 40.0]


def test_age_errors_by_hand() -> None:
    assert metrics.mae(PRED, TRUE) == pytest.approx(14 / 4)
    assert metrics.rmse(PRED, TRUE) == pytest.approx(math.sqrt((4 + 0 + 25 + 49) / 4))
    assert metrics.mean_error(PRED, TRUE) == pytest.approx(10 / 4)
    assert metrics.cs_at(PRED, TRUE, 5) == pytest.approx(3 / 4)  # |e| <= 5 counts
    assert metrics.cs_at(PRED, TRUE, 4.9) == pytest.approx(2 / 4)
    assert metrics.mae([], []) is None and metrics.cs_at([], []) is None
    with pytest.raises(ValueError, match="3 predictions for 4 labels"):
        metrics.mae(PRED[:3], TRUE)


def test_epsilon_error_by_hand() -> None:
    # one image: 1 - exp(-(30 - 25)^2 / (2 * 5^2)) = 1 - exp(-0.5)
    assert metrics.epsilon_error([30], [25], [5]) == pytest.approx(1 - math.exp(-0.5))
    # exact hit scores 0; sigma 0 is undefined and left out
    assert metrics.epsilon_error([30, 25, 40], [25, 25, 10], [5, 2, 0]) == pytest.approx(
        (1 - math.exp(-0.5)) / 2
    )
    assert metrics.epsilon_error([1], [2], [0]) is None


def test_accuracies_and_confusion() -> None:
    assert metrics.accuracy(["male", "female", "male"], ["male", "male", "male"]) == pytest.approx(
        2 / 3
    )
    assert metrics.one_off_accuracy([0, 2, 5, 7], [1, 2, 3, 7]) == pytest.approx(3 / 4)
    table = metrics.confusion(
        ["female", "male", "male", "female", "x"],
        ["female", "female", "male", "female", "male"],
        ["female", "male"],
    )
    assert table == [[2, 1], [0, 1]]  # rows: label, columns: prediction; "x" is not counted


def test_decades() -> None:
    assert [metrics.decade(a) for a in (0, 9.9, 10, 42, 89.5, 90, 100)] == [
        "0-9",
        "0-9",
        "10-19",
        "40-49",
        "80-89",
        "90+",
        "90+",
    ]


def test_age_metrics_with_votes() -> None:
    out = metrics.age_metrics([30, 20], [25, 20], [5, None], k=5)
    assert out["n"] == 2 and out["mae"] == pytest.approx(2.5) and out["cs@5"] == 1.0
    assert out["epsilon_error"] == pytest.approx(1 - math.exp(-0.5)) and out["epsilon_n"] == 1
    assert "epsilon_error" not in metrics.age_metrics([30], [25])


def _dataset() -> tuple[list[Record], list[Outcome]]:
    records = [
        Record("a.jpg", age=12, gender="female", race="asian", fold="1"),
        Record("b.jpg", age=20, gender="male", race="white", fold="1"),
        Record("c.jpg", age=25, gender="male", race="white", fold="2", age_std=5),
        Record("d.jpg", age=40, gender="female", fold="2"),
        Record("e.jpg", age=33, gender="female", fold="2"),
        Record("f.jpg", group="25-32", gender="male", fold="2"),
    ]
    outcomes = [
        Outcome("ok", age=10, gender="female", faces=1),
        Outcome("ok", age=20, gender="female", faces=1),
        Outcome("ok", age=30, gender="male", faces=2),
        Outcome("no_face", fallback_age=47, fallback_gender="female"),
        Outcome("error", error="e.jpg: no such file"),
        Outcome("ok", age=41.0, gender="male", faces=1),  # group from age: 38-43, one off
    ]
    return records, outcomes


def test_summarize_by_hand() -> None:
    records, outcomes = _dataset()
    s = metrics.summarize(records, outcomes, k=5)
    assert s["images"] == 6 and s["unreadable"] == 1
    assert s["unreadable_images"] == [{"path": "e.jpg", "error": "e.jpg: no such file"}]
    assert s["faces_found"] == {"n": 4, "of": 5, "share": pytest.approx(4 / 5)}
    assert s["no_face_images"] == ["d.jpg"]

    found = s["excluding_no_face"]
    # ages a, b, c: errors -2, 0, 5
    assert found["age"]["n"] == 3 and found["age"]["mae"] == pytest.approx(7 / 3)
    assert found["age"]["cs@5"] == pytest.approx(1.0)
    assert found["age"]["epsilon_error"] == pytest.approx(1 - math.exp(-0.5))
    # genders a, b, c, f: right, wrong, right, right
    assert found["gender"]["accuracy"] == pytest.approx(3 / 4)
    assert found["gender"]["confusion"] == [[1, 0], [1, 2]]
    assert found["groups"] == {
        "n": 1,
        "accuracy": 0.0,
        "one_off": 1.0,
        "labels": list(metrics.GROUP_LABELS),
        "relabelled": 0,
    }

    fallback = s["with_fallback"]
    # adds d: error 7
    assert fallback["age"]["n"] == 4 and fallback["age"]["mae"] == pytest.approx(14 / 4)
    assert fallback["gender"]["accuracy"] == pytest.approx(4 / 5)

    assert list(s["by_decade"]) == ["10-19", "20-29", "30-39", "40-49"]
    assert s["by_decade"]["10-19"]["age"]["mae"] == pytest.approx(2)
    assert s["by_decade"]["20-29"]["age"]["mae"] == pytest.approx(2.5)
    assert "age" not in s["by_decade"]["40-49"]  # d had no face; e was unreadable
    assert s["by_gender"]["male"]["gender"]["accuracy"] == pytest.approx(2 / 3)
    assert set(s["by_race"]) == {"asian", "white"}
    assert s["by_race"]["white"]["age"]["mae"] == pytest.approx(2.5)
    assert s["by_fold"]["1"]["age"]["mae"] == pytest.approx(1)
    assert s["by_fold"]["2"]["age"]["mae"] == pytest.approx(5)
    # means over folds, not over images: fold 1 gender 1/2, fold 2 gender 2/2
    assert s["fold_mean"] == {
        "mae": pytest.approx(3),
        "gender_accuracy": pytest.approx(0.75),
        "group_accuracy": 0.0,
        "one_off": 1.0,
    }


def test_group_model_output_is_used_as_is() -> None:
    records = [Record("g.jpg", group="4-6"), Record("h.jpg", group="60-100")]
    outcomes = [Outcome("ok", age=5.0, group="4-6"), Outcome("ok", age=50.0, group="38-43")]
    groups = metrics.summarize(records, outcomes)["excluding_no_face"]["groups"]
    assert (groups["n"], groups["accuracy"], groups["one_off"]) == (2, 0.5, 0.5)  # 38-43 is
    # two groups from 60-100


# A card whose groups are not Adience's (defect 8: GROUP_LABELS.index raised ValueError).
CHILD_ADULT = (("child", 0, 12), ("teen", 13, 17), ("adult", 18, 64), ("senior", 65, 100))


def test_groups_are_scored_in_the_cards_own_scheme() -> None:
    records = [
        Record("a.jpg", group="4-6"),  # -> child (midpoint 5)
        Record("b.jpg", group="25-32"),  # -> adult
        Record("c.jpg", group="60-100"),  # midpoint 80 -> senior
        Record("d.jpg", group="15-20", age=16.0),  # exact age 16 -> teen
        Record("e.jpg", group="child"),  # the scheme's own label is used as is
    ]
    outcomes = [
        Outcome("ok", age=6.0, group="child"),
        Outcome("ok", age=40.0, group="adult"),
        Outcome("ok", age=40.0, group="adult"),  # one off
        Outcome("ok", age=30.0, group="adult"),  # one off
        Outcome("ok", age=70.0, group="senior"),  # three off
    ]
    s = metrics.summarize(records, outcomes, groups=CHILD_ADULT)
    groups = s["excluding_no_face"]["groups"]
    assert groups["n"] == 5 and groups["labels"] == ["child", "teen", "adult", "senior"]
    assert groups["accuracy"] == pytest.approx(2 / 5)
    assert groups["one_off"] == pytest.approx(4 / 5)
    assert groups["relabelled"] == 4
    # An age model's value (no group) is mapped into the same scheme.
    records, outcomes = [Record("x.jpg", group="25-32")], [Outcome("ok", age=14.0)]
    teen = metrics.score(records, outcomes, groups=CHILD_ADULT)["groups"]  # teen vs adult
    assert (teen["accuracy"], teen["one_off"]) == (0.0, 1.0)


def test_nearest_group() -> None:
    assert metrics.nearest_group(3.0, metrics.ADIENCE_GROUPS) == 0  # a tie goes to the younger
    assert metrics.nearest_group(2.4, metrics.ADIENCE_GROUPS) == 0
    assert metrics.nearest_group(13.5, CHILD_ADULT) == 1
    assert metrics.nearest_group(200, CHILD_ADULT) == 3


def test_age_threshold_decisions_by_hand() -> None:
    # Defect 10: --age-threshold was accepted by evaluate and did nothing.
    records = [
        Record("a.jpg", age=10),  # under 18, judged under: right
        Record("b.jpg", age=16),  # under, judged over: false accept
        Record("c.jpg", age=30),  # over, judged over: right
        Record("d.jpg", age=20),  # over, judged under: false reject
        Record("e.jpg", age=50),  # no face: only with the fallback (judged over)
        Record("f.jpg", group="60-100"),  # Adience group wholly over 18: over, judged over
        Record("g.jpg", group="15-20"),  # straddles 18: not scored
        Record("h.jpg", gender="male"),  # no age label: not scored
    ]

    def ok(p: float) -> Outcome:
        return Outcome("ok", age=1.0, p_at_least={18.0: p})

    outcomes = [
        ok(0.1),
        ok(0.5),
        ok(0.9),
        ok(0.49),
        Outcome("no_face", fallback_age=50, fallback_p_at_least={18.0: 0.99}),
        ok(0.7),
        ok(0.7),
        ok(0.7),
    ]
    s = metrics.summarize(records, outcomes, thresholds=(18.0,))
    t = s["excluding_no_face"]["thresholds"]["18"]
    # (ece, brier and reliability: tests/test_calibration_metrics.py)
    assert {
        k: v for k, v in t.items() if k not in ("ece", "ece_chance", "brier", "reliability")
    } == {
        "n": 5,
        "accuracy": pytest.approx(3 / 5),
        "n_at_least": 3,
        "n_under": 2,
        "false_accept": pytest.approx(1 / 2),
        "false_reject": pytest.approx(1 / 3),
    }
    fallback = s["with_fallback"]["thresholds"]["18"]
    assert fallback["n"] == 6 and fallback["accuracy"] == pytest.approx(4 / 6)
    assert "thresholds" not in metrics.summarize(records, outcomes)["excluding_no_face"]


def test_clean_rounds_and_nulls_nan() -> None:
    assert metrics.clean({"a": [1.234567, float("nan")], "b": "x"}) == {
        "a": [1.2346, None],
        "b": "x",
    }


def test_clean_writes_no_float_json_cannot_hold() -> None:
    """NaN was null, but an infinity stayed a float and json.dumps wrote `Infinity`, which
    strict JSON readers refuse."""
    import json

    from agegender.evaluate.metrics import clean

    data = clean({"a": float("inf"), "b": [float("-inf"), float("nan"), 1.23456], "c": 2})
    assert data == {"a": None, "b": [None, None, 1.2346], "c": 2}
    json.dumps(data, allow_nan=False)
