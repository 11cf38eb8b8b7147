"""INT8 copies built from shipped ranges: against their fp32 originals, refused for another
file, deterministic, selected by card, pulled and checked through the store and the CLI.

Every graph is a stand-in (``tests/support/standins.conv_graph``) and its ranges are
calibrated here on crops of the test photo: no download, no development data.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto

from agegender import cards, quantization, store
from agegender.cli import main as cli_main
from agegender.errors import CardError, ModelFileError, ModelNotInstalledError
from agegender.quantization import (
    QuantizationError,
    Recipe,
    build,
    calibrate,
    check_base,
    load_ranges,
    parse_ranges,
    prepare,
)
from agegender.store.layout import write_built
from agegender.store.quantized import _ranges_sha256
from tests.support.standins import conv_graph

SIZE = 32
# The fp32 stand-in card and its INT8 copy differ only in [source].
CARD_BODY = """\
[input]
size = [{size}, {size}]
channels = "RGB"
scale = 0.00392156862745098
mean = [127.5, 127.5, 127.5]
[crop]
kind = "margin"
[output]
labels = ["female", "male"]
"""
FP32_CARD = (
    """\
id = "tiny-gender"
task = "gender"
[source]
file = "tiny.onnx"
sha256 = "{sha}"
"""
    + CARD_BODY
)
INT8_CARD = (
    """\
id = "tiny-gender-int8"
task = "gender"
[source]
quantize = "{base}"
ranges = "tiny.json"
file = "tiny-int8.onnx"
"""
    + CARD_BODY
)
# Measured on this stand-in (astronaut crops, 24 calibration and 24 test inputs): the
# largest difference of a probability between the INT8 and fp32 graphs was about 0.01 with
# 8-bit weights on a VNNI CPU, 0.0065 with the 7-bit weights of today's recipe on an AVX2 one.
PROB_TOLERANCE = 0.03


def crops(rgb: NDArray[np.uint8], count: int, seed: int) -> NDArray[np.float32]:
    """``count`` random square crops of the photo, resized to SIZE, as the card feeds them."""
    rng = np.random.default_rng(seed)
    height, width = rgb.shape[:2]
    out = []
    for _ in range(count):
        side = int(rng.integers(48, min(height, width)))
        y, x = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        chip = cv2.resize(rgb[y : y + side, x : x + side], (SIZE, SIZE))
        out.append((chip.astype(np.float32) - 127.5) / 255)
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))


@pytest.fixture
def model_folder(tmp_path: Path, astronaut_rgb: NDArray[np.uint8]) -> Path:
    """A folder holding a stand-in fp32 card and file, its INT8 card and its ranges file."""
    folder = tmp_path / "cards"
    folder.mkdir()
    model = conv_graph(size=SIZE)
    (folder / "tiny.onnx").write_bytes(model.SerializeToString())
    sha = hashlib.sha256((folder / "tiny.onnx").read_bytes()).hexdigest()
    (folder / "tiny.toml").write_text(FP32_CARD.format(sha=sha, size=SIZE))
    (folder / "tiny-int8.toml").write_text(INT8_CARD.format(base="tiny.toml", size=SIZE))
    feeds = [{"images": batch[None]} for batch in crops(astronaut_rgb, 24, seed=1)]
    ranges = calibrate(folder / "tiny.onnx", "tiny-gender", sha, Recipe(), feeds, name="tiny.json")
    (folder / "tiny.json").write_text(ranges.dumps())
    return folder


def run(path: Path | bytes, batch: NDArray[np.float32]) -> NDArray[np.float32]:
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": batch})
    return np.asarray(out)


def test_the_int8_graph_follows_its_fp32_original(
    model_folder: Path, tmp_path: Path, astronaut_rgb: NDArray[np.uint8]
) -> None:
    ranges = load_ranges("tiny.json", model_folder)
    build(model_folder / "tiny.onnx", ranges, tmp_path / "int8.onnx")
    graph = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    weights = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights, "the convolution weights are stored as INT8"
    batch = crops(astronaut_rgb, 24, seed=2)  # not the calibration crops
    fp32 = run(model_folder / "tiny.onnx", batch)
    int8 = run(tmp_path / "int8.onnx", batch)
    assert np.abs(int8 - fp32).max() < PROB_TOLERANCE
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_two_builds_give_the_same_bytes(model_folder: Path, tmp_path: Path) -> None:
    ranges = load_ranges("tiny.json", model_folder)
    build(model_folder / "tiny.onnx", ranges, tmp_path / "a.onnx")
    build(model_folder / "tiny.onnx", ranges, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_the_ranges_file_round_trips_exactly(model_folder: Path) -> None:
    ranges = load_ranges("tiny.json", model_folder)
    again = parse_ranges(json.loads(ranges.dumps()), "tiny.json")
    assert again.ranges == ranges.ranges and again.recipe == ranges.recipe


def test_ranges_for_another_file_are_refused_in_one_line(model_folder: Path) -> None:
    ranges = load_ranges("tiny.json", model_folder)
    with pytest.raises(QuantizationError) as info:
        check_base(ranges, "tiny-gender", "0" * 64)
    message = str(info.value)
    assert "quantization/tiny.json" in message and "nothing was built" in message
    assert "\n" not in message
    with pytest.raises(QuantizationError, match="not cc0-age-v1"):
        check_base(ranges, "cc0-age-v1", ranges.sha256)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "not a ranges file"),
        ({"sha256": "abc"}, "'sha256'"),
        ({"ranges": {"c1": [2.0, 1.0]}}, "[min, max]"),
        ({"recipe": {"prepare": ["fold"]}}, "unknown prepare step"),
        ({"recipe": {"weight_type": "QInt4"}}, "weight_type"),
    ],
)
def test_bad_ranges_files_are_one_line_errors(
    model_folder: Path, change: dict, message: str
) -> None:
    data = json.loads((model_folder / "tiny.json").read_text())
    data.update(change)
    with pytest.raises(QuantizationError) as info:
        parse_ranges(data, "tiny.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pull_builds_records_and_checks_the_copy(
    model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    card = cards.get_card(str(model_folder / "tiny-int8.toml"))
    assert card.source.kind == "quantized" and card.source.stored
    with pytest.raises(ModelNotInstalledError, match="agegender models pull"):
        store.resolve(card)
    first = store.pull(card)
    assert first.action == "built"
    record = json.loads(first.path.with_name(first.path.name + ".built.json").read_text())
    assert record["sha256"] == store.sha256_file(first.path)
    assert record["base_sha256"] == cards.get_card(str(model_folder / "tiny.toml")).source.sha256
    assert store.resolve(card) == first.path
    assert store.pull(card).action == "present"
    assert store.verify(card).status == "ok"
    first.path.write_bytes(first.path.read_bytes()[:-1] + b"\0")  # damaged afterwards
    with pytest.raises(ModelFileError) as info:
        store.resolve(card)
    assert "changed since it was built" in str(info.value)
    assert "agegender models pull tiny-gender-int8" in str(info.value)
    assert store.verify(card).status == "mismatch"
    assert store.pull(card).action == "built"  # rebuilt
    assert store.resolve(card) == first.path


def test_a_copy_from_other_ranges_is_stale(
    model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    card = cards.get_card(str(model_folder / "tiny-int8.toml"))
    store.pull(card)
    ranges = model_folder / "tiny.json"
    ranges.write_text(ranges.read_text().replace('"notes": ""', '"notes": "new"'))
    with pytest.raises(ModelFileError, match="other ranges") as info:
        store.resolve(card)
    assert "run 'agegender models pull tiny-gender-int8' to rebuild it" in str(info.value)
    # a package upgrade makes every copy in the store stale at once: one line names them
    # all (a copy whose record names older ranges; not one built from today's, nor a
    # record without its file)
    layout = store.StoreLayout.default()
    for card_id, sha, with_file in (
        ("centerface-int8", "0" * 64, True),
        ("cc0-age-v1-int8", None, True),
        ("faceres-deep-age-int8", "1" * 64, False),
    ):
        other = cards.get_card(card_id)
        path = layout.model_path(other)
        path.parent.mkdir(parents=True, exist_ok=True)
        if with_file:
            path.write_bytes(b"copy")
        write_built(path, {"ranges_sha256": sha or _ranges_sha256(other)})
    with pytest.raises(ModelFileError) as info:
        store.resolve(card)
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith(
        "run 'agegender models pull tiny-gender-int8 centerface-int8' "
        "to rebuild it and the other stale INT8 copies in the store"
    )
    assert store.pull(card).action == "built"


def test_the_int8_card_is_selected_like_any_card(
    model_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    astronaut_rgb: NDArray[np.uint8],
) -> None:
    from agegender import Estimator

    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    store.pull(cards.get_card(str(model_folder / "tiny-int8.toml")))
    faces = {}
    for name in ("tiny.toml", "tiny-int8.toml"):
        est = Estimator(detector="none", gender_models=[str(model_folder / name)], tta=False)
        assert est.cards["gender"][0].id == name.removesuffix(".toml").replace(
            "tiny", "tiny-gender"
        )
        faces[name] = est.predict(astronaut_rgb)
    fp32, int8 = (faces[n][0].gender for n in ("tiny.toml", "tiny-int8.toml"))
    assert fp32 is not None and int8 is not None
    assert abs(fp32.probability - int8.probability) < PROB_TOLERANCE


def test_cli_pull_and_verify(
    model_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    card = str(model_folder / "tiny-int8.toml")
    assert cli_main(["models", "pull", card]) == 0
    out = capsys.readouterr().out
    assert "tiny-gender-int8: INT8 copy of" in out and "sha256 recorded" in out
    assert cli_main(["models", "verify", card]) == 0
    assert "sha256 matches its build record" in capsys.readouterr().out


def test_a_build_from_the_wrong_fp32_file_stops_in_one_line(
    model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    ranges = json.loads((model_folder / "tiny.json").read_text())
    ranges["sha256"] = "1" * 64
    (model_folder / "tiny.json").write_text(json.dumps(ranges))
    with pytest.raises(QuantizationError) as info:
        store.pull(cards.get_card(str(model_folder / "tiny-int8.toml")))
    assert "computed for the tiny-gender file with sha256 111" in str(info.value)
    assert not (tmp_path / "home" / "models" / "tiny-int8.onnx").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"quantize": "centerface", "file": "c.onnx"}, "needs both 'quantize'"),
        ({"quantize": "c", "ranges": "c.json", "url": "https://h/m.onnx"}, "no 'url'"),
        ({"quantize": "c", "ranges": "../c.json", "file": "c.onnx"}, "[source] ranges"),
        ({"quantize": "c", "ranges": "c.json", "file": "c.onnx", "sha256": "0" * 64}, "when"),
        ({"quantize": "c", "ranges": "c.json"}, "a local 'file'"),
    ],
)
def test_int8_card_faults_are_one_line(source: dict, message: str) -> None:
    data = {
        "id": "x-int8",
        "task": "gender",
        "source": source,
        "input": {"size": [32, 32]},
        "crop": {"kind": "margin"},
        "output": {"labels": ["female", "male"]},
    }
    with pytest.raises(CardError) as info:
        cards.parse_card(data, "x.toml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_builtin_int8_cards_keep_their_originals_contract() -> None:
    builtin = cards.builtin_cards()
    copies = [c for c in builtin.values() if c.source.quantize]
    assert "centerface-int8" in {c.id for c in copies}
    for card in copies:
        base = builtin[card.source.quantize or ""]
        assert (card.task, card.input, card.crop, card.output, card.detection) == (
            base.task,
            base.input,
            base.crop,
            base.output,
            base.detection,
        ) or card.detection is not None  # a detector copy may cap its size differently
        if card.detection is not None and base.detection is not None:
            assert card.detection.outputs == base.detection.outputs
            assert card.input == base.input
        ranges = load_ranges(card.source.ranges or "")
        assert ranges.sha256 == base.source.sha256
        named = builtin[ranges.card]  # the base, or a card reading the very same file
        assert (named.source.file, named.source.sha256) == (base.source.file, base.source.sha256)
    # faceres-deep's age and gender copies: one INT8 file, one crop (the pipeline's one run)
    age, gender = builtin["faceres-deep-age-int8"], builtin["faceres-deep-gender-int8"]
    assert (age.source.file, age.source.ranges, age.crop, age.input) == (
        gender.source.file,
        gender.source.ranges,
        gender.crop,
        gender.input,
    )


def test_the_int8_detector_without_its_file_is_a_one_line_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agegender import Estimator
    from agegender.faces import detector_problem

    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path))
    with pytest.raises(ModelNotInstalledError) as info:
        Estimator(detector="centerface-int8")
    message = str(info.value)
    assert "agegender models pull centerface-int8" in message and "--detector dlib" in message
    assert "\n" not in message
    assert "agegender models pull centerface-int8" in (detector_problem("centerface-int8") or "")


def test_a_fixed_size_opset9_detector_is_prepared_then_quantized(
    tmp_path: Path, astronaut_rgb: NDArray[np.uint8]
) -> None:
    """CenterFace's recipe: free_dims (its file declares 1x3x32x32) and opset 13 (per-channel
    QDQ needs it), then the INT8 graph runs at another size, as the detector feeds it."""
    model = conv_graph(size=32, opset=9, fixed_batch=True)
    path = tmp_path / "det.onnx"
    path.write_bytes(model.SerializeToString())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    recipe = Recipe(prepare=("free_dims", "opset13"))
    feeds = [
        {"images": np.repeat(np.repeat(b[None], 2, axis=2), 2, axis=3)}
        for b in crops(astronaut_rgb, 6, seed=3)
    ]
    ranges = calibrate(path, "det", sha, recipe, feeds, name="det.json")
    build(path, ranges, tmp_path / "det-int8.onnx")
    graph = onnx.load(str(tmp_path / "det-int8.onnx"))
    assert graph.opset_import[0].version >= 13
    batch = np.repeat(np.repeat(crops(astronaut_rgb, 4, seed=4), 2, axis=2), 2, axis=3)
    session = ort.InferenceSession(
        str(tmp_path / "det-int8.onnx"), providers=["CPUExecutionProvider"]
    )
    (int8,) = session.run(None, {"images": batch})  # 4 x 3 x 64 x 64: not the declared size
    prepared = prepare(onnx.load(str(path)), recipe.prepare).SerializeToString()
    fp32 = run(prepared, batch)
    assert int8.shape == (4, 2) and np.abs(int8 - fp32).max() < PROB_TOLERANCE


# faceres-deep's INT8 copy: one graph, two outputs, read by an age card and a gender card.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
FACERES_CARD = """\
id = "{id}"
task = "{task}"
[source]
{source}
[input]
size = [{size}, {size}]
channels = "BGR"
layout = "NHWC"
mean = [103.939, 116.779, 123.68]
name = "input_1"
[crop]
kind = "margin"
margin = 0.2
[output]
{output}
"""
FACERES_OUTPUTS = {
    "age": 'name = "age_pred/Softmax"\nrange = [0, 99]',
    "gender": 'name = "gender_pred/Sigmoid"\nlabels = ["female", "male"]\nbinary = "male"',
}
# faceres-deep's recipe on its stand-in: Conv only, the first convolution left in fp32
FACERES_RECIPE = Recipe(op_types=("Conv",), exclude=("conv1#Conv",))
# Measured on the stand-in (astronaut crops, 24 calibration and 24 test inputs): the
# expected age moved by at most 0.061 years and P(male) by 0.0044 with 8-bit weights on a
# VNNI CPU, 0.053 and 0.0033 with today's 7-bit ones on an AVX2 one (across the crops the
# fp32 graph's age varies by 0.34 years, P(male) by 0.037: standard deviations).
AGE_TOLERANCE = 0.2
GENDER_TOLERANCE = 0.01


def nhwc_crops(rgb: NDArray[np.uint8], count: int, seed: int) -> NDArray[np.float32]:
    """As faceres' cards feed them: BGR, the Caffe means subtracted, NHWC."""
    nchw = crops(rgb, count, seed)  # (pixel - 127.5) / 255, RGB
    pixels = nchw.transpose(0, 2, 3, 1) * 255 + 127.5
    return np.ascontiguousarray(pixels[..., ::-1] - CAFFE_MEAN_BGR)


def faceres_outputs(
    source: Path | bytes, batch: NDArray[np.float32]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Expected age and P(male) of each input."""
    session = ort.InferenceSession(
        source if isinstance(source, bytes) else str(source), providers=["CPUExecutionProvider"]
    )
    ages, male = session.run(["age_pred/Softmax", "gender_pred/Sigmoid"], {"input_1": batch})
    return np.asarray(ages, np.float64) @ np.arange(100), np.asarray(male, np.float64)[:, 0]


@pytest.fixture
def faceres_folder(tmp_path: Path, astronaut_rgb: NDArray[np.uint8]) -> Path:
    """Stand-in fp32 age and gender cards reading one file, their INT8 cards reading one
    built file, and the ranges file (named for the age card) that both INT8 cards use."""
    from tests.support.standins import faceres_graph

    folder = tmp_path / "faceres"
    folder.mkdir()
    (folder / "fr.onnx").write_bytes(faceres_graph(size=SIZE).SerializeToString())
    sha = hashlib.sha256((folder / "fr.onnx").read_bytes()).hexdigest()
    for task in ("age", "gender"):
        fp32 = f'file = "fr.onnx"\nsha256 = "{sha}"'
        int8 = f'quantize = "fr-{task}.toml"\nranges = "fr.json"\nfile = "fr-int8.onnx"'
        for name, source in ((f"fr-{task}", fp32), (f"fr-{task}-int8", int8)):
            text = FACERES_CARD.format(
                id=name, task=task, source=source, size=SIZE, output=FACERES_OUTPUTS[task]
            )
            (folder / f"{name}.toml").write_text(text)
    feeds = [{"input_1": nhwc_crops(astronaut_rgb, 24, seed=1)[i : i + 8]} for i in (0, 8, 16)]
    ranges = calibrate(
        folder / "fr.onnx", "fr-age", sha, FACERES_RECIPE, feeds, name="fr.json", feeds_per_pass=1
    )
    (folder / "fr.json").write_text(ranges.dumps())
    return folder


def test_ranges_measured_in_several_passes_are_those_of_one(
    faceres_folder: Path, astronaut_rgb: NDArray[np.uint8]
) -> None:
    feeds = [{"input_1": nhwc_crops(astronaut_rgb, 24, seed=1)[i : i + 8]} for i in (0, 8, 16)]
    path = faceres_folder / "fr.onnx"
    sha = load_ranges("fr.json", faceres_folder).sha256
    one = calibrate(path, "fr-age", sha, FACERES_RECIPE, feeds, name="fr.json")
    assert one.ranges == load_ranges("fr.json", faceres_folder).ranges  # 3 passes of 1 feed
    assert "conv1#Conv" not in str(one.ranges) and "pw#Conv" not in str(one.ranges)


def test_the_faceres_int8_graph_follows_its_fp32_original(
    faceres_folder: Path, tmp_path: Path, astronaut_rgb: NDArray[np.uint8]
) -> None:
    ranges = load_ranges("fr.json", faceres_folder)
    build(faceres_folder / "fr.onnx", ranges, tmp_path / "fr-int8.onnx")
    graph = onnx.load(str(tmp_path / "fr-int8.onnx"))
    int8_weights = {i.name for i in graph.graph.initializer if i.data_type == TensorProto.INT8}
    assert any(name.startswith("wd") for name in int8_weights)  # the depthwise conv
    assert any(name.startswith("wp") for name in int8_weights)  # the pointwise conv
    assert not any(name.startswith(("w1", "fc", "age", "gender")) for name in int8_weights)
    assert [o.name for o in graph.graph.output] == ["gender_pred/Sigmoid", "age_pred/Softmax"]
    batch = nhwc_crops(astronaut_rgb, 24, seed=2)  # not the calibration crops
    age32, male32 = faceres_outputs(faceres_folder / "fr.onnx", batch)
    age8, male8 = faceres_outputs(tmp_path / "fr-int8.onnx", batch)
    assert np.abs(age8 - age32).max() < AGE_TOLERANCE
    assert np.abs(male8 - male32).max() < GENDER_TOLERANCE


def test_age_and_gender_cards_share_one_int8_copy(
    faceres_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    astronaut_rgb: NDArray[np.uint8],
) -> None:
    from agegender import Estimator

    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    age, gender = (
        cards.get_card(str(faceres_folder / f"fr-{t}-int8.toml")) for t in ("age", "gender")
    )
    first = store.pull(age)
    assert first.action == "built"
    second = store.pull(gender)  # ranges named for fr-age: fr-gender reads the same file
    assert second.action == "present" and second.path == first.path
    assert store.pull(age).action == "present"  # no rebuild back and forth
    assert store.resolve(age) == store.resolve(gender) == first.path
    est = Estimator(
        detector="none",
        age_models=[str(faceres_folder / "fr-age-int8.toml")],
        gender_models=[str(faceres_folder / "fr-gender-int8.toml")],
        tta=False,
    )
    assert est.heads["age"][0].run_key == est.heads["gender"][0].run_key  # one run for both
    (face,) = est.predict(astronaut_rgb)
    (fp32,) = Estimator(
        detector="none",
        age_models=[str(faceres_folder / "fr-age.toml")],
        gender_models=[str(faceres_folder / "fr-gender.toml")],
        tta=False,
    ).predict(astronaut_rgb)
    assert face.age is not None and fp32.age is not None
    assert face.gender is not None and fp32.gender is not None
    assert abs(face.age.value - fp32.age.value) < AGE_TOLERANCE
    assert abs(face.gender.probability - fp32.gender.probability) < GENDER_TOLERANCE


def test_ranges_named_for_a_card_of_another_file_are_still_refused(
    faceres_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    text = (faceres_folder / "fr-gender.toml").read_text()
    (faceres_folder / "fr-gender.toml").write_text(text.replace('"fr.onnx"', '"other.onnx"'))
    (faceres_folder / "other.onnx").write_bytes((faceres_folder / "fr.onnx").read_bytes())
    with pytest.raises(QuantizationError, match="ranges are for card fr-age, not fr-gender"):
        store.pull(cards.get_card(str(faceres_folder / "fr-gender-int8.toml")))


def saturating_conv(path: Path) -> None:
    """One 1x1 convolution whose UINT8 activations times INT8 weights, taken in pairs, pass
    the 16-bit range (near 255 x 127 x 2 = 64,770): what the AVX2 kernel saturates."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 1.0, (16, 64, 1, 1)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["images", "w"], ["out"])],
        "saturating-conv",
        [onnx.helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 64, 8, 8])],
        [onnx.helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8
    )
    path.write_bytes(model.SerializeToString())


def test_the_shipped_recipe_is_exact_on_cpus_without_vnni(tmp_path: Path) -> None:
    """With the default recipe (7-bit weights) the INT8 copy follows the fp32 graph on any
    x86 CPU; with full 8-bit weights it is a third off on one without VNNI (this machine
    kind's AVX2 EPYC) and right on one with it, so only a CPU without VNNI can fail this."""
    assert Recipe().reduce_range
    shipped = [f.name for f in resources.files(quantization).iterdir() if f.name.endswith(".json")]
    assert shipped and all(load_ranges(name).recipe.reduce_range for name in shipped)
    saturating_conv(tmp_path / "conv.onnx")
    sha = hashlib.sha256((tmp_path / "conv.onnx").read_bytes()).hexdigest()
    rng = np.random.default_rng(1)
    feeds = [{"images": rng.uniform(0.8, 1.0, (1, 64, 8, 8)).astype(np.float32)} for _ in range(4)]
    ranges = calibrate(tmp_path / "conv.onnx", "conv", sha, Recipe(), feeds, name="conv.json")
    build(tmp_path / "conv.onnx", ranges, tmp_path / "conv-int8.onnx")
    batch = rng.uniform(0.8, 1.0, (4, 64, 8, 8)).astype(np.float32)
    fp32 = run(tmp_path / "conv.onnx", batch)
    int8 = run(tmp_path / "conv-int8.onnx", batch)
    # 7-bit weights and 8-bit activations: under 2% of the output (measured: 0.34%; with
    # 8-bit weights 31% on an AVX2 EPYC)
    assert np.abs(int8 - fp32).max() / np.abs(fp32).max() < 0.02
