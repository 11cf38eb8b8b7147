"""Model cards: the shipped ones load and fit their graphs; malformed cards and cards that
contradict their graph are refused with a CardError that says what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from faceutils import GOOD, card_with
from support.standins import standin_graph

from agegender import Estimator
from agegender.cards import (
    builtin_cards,
    check_against_graph,
    get_card,
    load_card_file,
    parse_card,
)
from agegender.errors import CardError
from agegender.inference import OnnxModel
from agegender.store import resolve


def test_good_card_parses() -> None:
    card = parse_card(GOOD, "good.toml")
    assert (card.id, card.task, card.output.width) == ("test-age", "age", 101)
    assert card.output.values[0] == 0 and card.output.values[-1] == 100
    assert (card.input.height, card.input.width, card.input.mean) == (64, 64, (1.0, 2.0, 3.0))
    assert card.source.file == "age.onnx"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"id": None}, "missing required field 'id'"),
        ({"task": "height"}, "task must be one of age, age-groups, gender, got 'height'"),
        ({"source": {}}, "[source] needs 'package', 'url' or a local 'file'"),
        ({"source.package": "somepkg"}, "[source] needs at most one of 'package' or 'url'"),
        ({"source": {"package": "somepkg"}}, "with 'package' needs 'resource'"),
        ({"source.sha256": None}, "a downloaded file must have a sha256"),
        ({"source.sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
        ({"input": None}, "missing required field 'input'"),
        ({"input.size": [64]}, "size must be [height, width] positive integers"),
        ({"input.size": [64, 0]}, "size must be [height, width] positive integers"),
        ({"input.size": [64.5, 64]}, "size must be [height, width] positive integers"),
        ({"input.channels": "RGBA"}, "[input] channels must be one of RGB, BGR, got 'RGBA'"),
        ({"input.layout": "CHW"}, "[input] layout must be one of NCHW, NHWC, got 'CHW'"),
        ({"input.std": [1, 0, 1]}, "[input] std must be a positive number or a list of 3 positive numbers"),
        ({"input.mean": [1, 2]}, "[input] mean must be a finite number or a list of 3 finite numbers"),
        ({"crop.kind": "blur"}, "[crop] kind must be one of chip, margin, none"),
        ({"crop.margin": -0.1}, "[crop] margin must be a finite number >= 0, got -0.1"),
        ({"output.range": None}, "an age card needs [output] 'values' or 'range'"),
        ({"output": {"values": [1, 3, 2]}}, "age values must be increasing"),
        ({"output.width": 100}, "[output] width 100 disagrees with 101 values/labels"),
        ({"task": "gender", "output": {"labels": ["woman", "man"]}}, "labels 'female' and 'male'"),
        (
            {"task": "age-groups", "output": {"labels": ["a", "b"], "groups": [[0, 2]]}},
            "needs as many 'groups' as 'labels'",
        ),
    ],
)
def test_malformed_card(changes: dict, message: str) -> None:
    with pytest.raises(CardError, match=re.escape(message)) as caught:
        parse_card(card_with(**changes), "bad.toml")
    text = str(caught.value)
    assert "\n" not in text
    assert "bad.toml" in text  # names the card


def test_card_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('id = "x"\ntask = [unclosed\n')
    with pytest.raises(CardError, match=r"broken\.toml: not valid TOML"):
        load_card_file(broken)
    with pytest.raises(CardError, match=r"missing\.toml: cannot read card"):
        load_card_file(tmp_path / "missing.toml")
    with pytest.raises(CardError, match="unknown model card 'nope'; known: cc0-age-v1"):
        get_card("nope")
    good = tmp_path / "good.toml"
    good.write_text(
        'id = "file-card"\ntask = "gender"\n[source]\npackage = "p"\nresource = "r/g.onnx"\n'
        '[input]\nsize = [32, 32]\n[crop]\nkind = "none"\n[output]\nlabels = ["male", "female"]\n'
    )
    card = get_card(str(good))
    assert (card.id, card.output.labels, card.source.file) == (
        "file-card",
        ("male", "female"),
        "g.onnx",
    )


def test_builtin_cards() -> None:
    cards = builtin_cards()
    assert set(cards) == {
        "cc0-age-v1",
        "cc0-gender-v1",
        "dex-imdb-age",
        "dex-chalearn-age",
        "dex-imdb-gender",
        "levi-age",
        "levi-gender",
    }
    assert cards["dex-imdb-age"].output.width == 101
    assert cards["levi-age"].output.width == 8
    assert all(c.output.width == 2 for k, c in cards.items() if c.task == "gender")


@pytest.mark.parametrize("card_id", ["cc0-age-v1", "cc0-gender-v1"])
def test_embedded_cards_fit_their_graphs(card_id: str) -> None:
    card = get_card(card_id)
    model = OnnxModel(card, resolve(card))  # checks bytes, sha256 and the graph
    assert model.fixed_batch is None and model.max_batch > 1


# -- card against graph -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cc0_age():
    return get_card("cc0-age-v1")


def test_standin_graph_fits(tmp_path: Path, cc0_age) -> None:
    path = standin_graph(tmp_path / "age.onnx", input_shape=["N", 3, 64, 64], width=81)
    model = OnnxModel(cc0_age, path)
    assert model.input.name == "images" and model.output.name == "probabilities"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"input_shape": ["N", 3, 32, 32], "width": 81},
            "graph input Nx3x32x32 has height 32, the card says 64",
        ),
        (
            {"input_shape": ["N", 3, 64, 48], "width": 81},
            "graph input Nx3x64x48 has width 48, the card says 64",
        ),
        (
            {"input_shape": ["N", 3, 64, 64], "width": 101},
            "graph output width is 101, the card says 81",
        ),
        (
            {"input_shape": ["N", 64, 64, 3], "width": 81, "nhwc": True},
            "graph input is Nx64x64x3, which has no 3-channel axis where the card's layout NCHW puts it",  # noqa: E501 NHWC graph read as NCHW
        ),
    ],
)
def test_card_contradicting_graph(tmp_path: Path, cc0_age, kwargs: dict, message: str) -> None:
    path = standin_graph(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(CardError, match=re.escape(message)) as caught:
        OnnxModel(cc0_age, path)
    assert str(caught.value).startswith("card cc0-age-v1: ")
    # The same refusal through the public API and the command line's CARD=FILE form.
    with pytest.raises(CardError, match=re.escape(message)):
        Estimator(age_models=[f"cc0-age-v1={path}"], gender_models=[], detector="none")


def test_nhwc_card_and_graph(tmp_path: Path) -> None:
    card = parse_card(card_with(**{"input.layout": "NHWC"}), "nhwc.toml")
    path = standin_graph(tmp_path / "nhwc.onnx", input_shape=["N", 64, 64, 3], width=101, nhwc=True)
    assert OnnxModel(card, path).card.input.layout == "NHWC"
    with pytest.raises(
        CardError,
        match=re.escape(
            "graph input is Nx3x64x64, which has no 3-channel axis where the card's layout NHWC"
        ),
    ):
        OnnxModel(
            card, standin_graph(tmp_path / "nchw.onnx", input_shape=["N", 3, 64, 64], width=101)
        )


def test_rank_and_channels(cc0_age) -> None:
    with pytest.raises(CardError, match="graph input has rank 2, the card needs 4 \\(NCHW\\)"):
        check_against_graph(cc0_age, [None, 12288], [None, 81])
    with pytest.raises(
        CardError, match=re.escape("graph input is ?x1x64x64, which has no 3-channel axis")
    ):
        check_against_graph(cc0_age, [None, 1, 64, 64], [None, 81])
    check_against_graph(cc0_age, ["N", 3, 64, 64], ["N", 81])
    check_against_graph(cc0_age, [None, None, None, None], [None, None])  # nothing to contradict


def test_names_and_files(tmp_path: Path, cc0_age) -> None:
    path = standin_graph(
        tmp_path / "age.onnx", input_shape=["N", 3, 64, 64], width=81, input_name="data"
    )
    named = parse_card(
        card_with(**{"input.name": "images", "output": {"range": [0, 80]}}), "n.toml"
    )
    with pytest.raises(CardError, match="graph input is 'data', the card says 'images'"):
        OnnxModel(named, path)
    renamed = parse_card(card_with(**{"output": {"range": [0, 80], "name": "ages"}}), "o.toml")
    with pytest.raises(CardError, match="graph has no output 'ages' \\(it has probabilities\\)"):
        OnnxModel(renamed, path)
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a graph")
    with pytest.raises(Exception, match="is not a loadable ONNX graph"):
        OnnxModel(cc0_age, not_onnx)


def test_a_gender_card_is_not_an_age_model(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="card cc0-gender-v1 is not an age model"):
        Estimator(age_models=["cc0-gender-v1"], detector="none")
