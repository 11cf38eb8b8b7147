"""Gender cards with a one-column output (``[output] binary``): faceres' ``gender_pred``
is a sigmoid, the probability that the face is male."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from faceutils import ASTRONAUT
from support.standins import card_graph

from agegender import Estimator
from agegender.cards import load_card_file, parse_card
from agegender.errors import CardError
from agegender.inference import binary_columns

CARD = """\
id = "{id}"
task = "gender"
[source]
file = "{id}.onnx"
[input]
size = [32, 32]
layout = "NHWC"
[crop]
kind = "margin"
[output]
labels = ["female", "male"]
binary = "{binary}"
softmax_in_graph = false
"""


def _card(folder: Path, card_id: str, binary: str) -> Path:
    """A binary gender card whose graph's one logit is 30 whatever the pixels."""
    model = card_graph(
        input_shape=["N", 32, 32, 3], width=1, softmax=False, nhwc=True, peak=0, seed=1
    )
    onnx.save_model(model, str(folder / f"{card_id}.onnx"))
    path = folder / f"{card_id}.toml"
    path.write_text(CARD.format(id=card_id, binary=binary))
    return path


def test_binary_columns_put_the_probability_under_its_label() -> None:
    p = np.array([0.9, 0.2], np.float32)
    # float32 inputs: 0.9 is 0.89999998, so compare with float32's resolution
    np.testing.assert_allclose(
        binary_columns(p, 1, logit=False), [[0.1, 0.9], [0.8, 0.2]], atol=1e-7
    )
    np.testing.assert_allclose(
        binary_columns(p, 0, logit=False), [[0.9, 0.1], [0.2, 0.8]], atol=1e-7
    )
    logits = np.array([0.0, np.log(3.0)], np.float32)
    np.testing.assert_allclose(
        binary_columns(logits, 1, logit=True), [[0.5, 0.5], [0.25, 0.75]], rtol=1e-6
    )


def test_a_binary_card_checks_its_graph_width(tmp_path: Path) -> None:
    card = load_card_file(_card(tmp_path, "sig", "male"))
    assert card.output.binary == "male"
    assert card.output.width == 2 and card.output.graph_width == 1
    assert card.to_dict(public=False)["output"]["binary"] == "male"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('binary = "man"', "[output] binary"),
        ("width = 2", "width 2 disagrees with 1"),
    ],
)
def test_binary_card_faults_are_one_line(change: str, message: str) -> None:
    text = CARD.format(id="bad", binary="male")
    if change.startswith("binary"):
        text = text.replace('binary = "male"', change)
    else:
        text += change + "\n"
    import tomllib

    with pytest.raises(CardError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_card(tomllib.loads(text), "bad.toml")
    assert "\n" not in str(info.value)


def test_binary_is_for_gender_cards_only() -> None:
    import tomllib

    text = CARD.format(id="age", binary="male").replace('task = "gender"', 'task = "age"')
    text = text.replace('labels = ["female", "male"]', "range = [0, 99]")
    with pytest.raises(CardError, match="only a gender card"):
        parse_card(tomllib.loads(text), "age.toml")


@pytest.mark.parametrize(("binary", "expected"), [("male", "male"), ("female", "female")])
def test_a_binary_head_estimates_gender(tmp_path: Path, binary: str, expected: str) -> None:
    card = _card(tmp_path, f"sig-{binary}", binary)
    est = Estimator(gender_models=(str(card),), detector="none")
    (face,) = est.predict(ASTRONAUT)
    assert face.gender is not None
    assert face.gender.label == expected
    assert face.gender.probability == pytest.approx(1.0, abs=1e-6)
