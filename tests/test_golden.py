"""The JSON of `agegender predict` on the test photos matches golden files made before the
restructuring (tests/golden/, from `make_inputs.py` and the commands below).

Key order, strings, booleans, nulls and integers must match exactly; a float may differ
by one unit of its last printed digit (ONNX Runtime's float32 sums may round the other
way on another CPU), never more.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agegender.cli import main

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_inputs import write_inputs  # noqa: E402

CASES = {
    "default": [],
    "none": ["--detector", "none"],
    "thr": ["--age-threshold", "18", "--age-threshold", "30"],
    "haar": ["--detector", "haar"],
    "landmarks": ["--align", "landmarks"],
    "notta": ["--no-tta", "--min-face", "60"],
}


def _digits(text: str) -> int:
    return len(text.partition(".")[2]) if "." in text else 0


def assert_same(got: Any, want: Any, where: str = "$") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float), f"{where}: {got!r} is not a float"
        unit = 10.0 ** -_digits(repr(want)) if _digits(repr(want)) < 5 else 1e-4
        assert abs(got - want) <= unit * 1.0001, f"{where}: {got} vs golden {want}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("golden")
    write_inputs(folder)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_json_matches_the_golden_file(
    case: str, inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(inputs)
    argv = ["predict", "astronaut.png", "scene.png", "tilted.png", "--json", "--no-progress"]
    assert main([*argv, *CASES[case]]) == 0
    got = capsys.readouterr().out
    want = (GOLDEN / f"predict-{case}.json").read_text()
    assert_same(json.loads(got), json.loads(want))
