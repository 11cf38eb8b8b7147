"""Probe graphs: prove what tensor each built-in card's model is fed.

A probe has the card's input signature (the zoo's fixed-batch ``input`` 1x3x224x224 with
a Reshape that bakes in batch 1, or the CC0 models' ``images`` Nx3xSxS) and two outputs:
a valid distribution of the card's width (first, so the card's checks pass) and
``fed_Y``, the graph's own copy of its input, which is what the session received. The
pipeline runs on the astronaut photo with the probe in place of the real file; the test
computes the expected tensor itself from the detected box (or landmarks) with numpy, cv2
and dlib, following each card's published contract, not the pipeline's functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agegender.cards import builtin_cards
from agegender.images import load
from agegender.pipeline import Estimator

DATA = Path(__file__).parent / "data"
FED = "fed_Y"
# The age and gender cards (face-detection cards are probed in test_centerface.py).
CARDS = sorted(k for k, c in builtin_cards().items() if c.task != "face-detection")

# The contracts, written out here from MODELS.md (independently of the TOML cards).
CC0_MEAN_RGB = np.array([122.781998, 117.000999, 104.297997], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


@dataclass(frozen=True)
class Contract:
    """What a card's model is fed: the crop (kind, size, DEX margin or chip padding), the
    channel order, mean and scale, the layout and the graph's input and output names."""

    kind: str
    size: int
    order: str
    mean: np.ndarray
    scale: float
    width: int  # the graph's output columns
    margin: float = 0.4
    padding: float = 0.2
    layout: str = "NCHW"
    input: str = "images"
    output: str | None = None


FACERES = {"order": "BGR", "mean": CAFFE_MEAN_BGR, "scale": 1.0, "layout": "NHWC"}
CONTRACTS = {
    "cc0-age-v1": Contract("chip", 64, "RGB", CC0_MEAN_RGB, 1 / 256, 81),
    "cc0-age-v1-int8": Contract("chip", 64, "RGB", CC0_MEAN_RGB, 1 / 256, 81),
    "cc0-gender-v1": Contract("chip", 32, "RGB", CC0_MEAN_RGB, 1 / 256, 2),
    "dex-chalearn-age": Contract("margin", 224, "BGR", np.zeros(3, np.float32), 1.0, 101),
    "dex-imdb-age": Contract("margin", 224, "BGR", np.zeros(3, np.float32), 1.0, 101),
    "dex-imdb-gender": Contract("margin", 224, "BGR", np.zeros(3, np.float32), 1.0, 2),
    "levi-age": Contract("margin", 224, "BGR", np.array([104, 117, 123], np.float32), 1.0, 8),
    "levi-gender": Contract("margin", 224, "BGR", np.array([104, 117, 123], np.float32), 1.0, 2),
    # HSE faceres (TF.js, NHWC 224, Caffe-style BGR means; measured in MODELS.md section 6)
    "faceres-age": Contract(
        "margin", 224, width=100, margin=0.2, input="input_1", output="age_pred/Softmax", **FACERES
    ),
    "faceres-gender": Contract(
        "margin", 224, width=1, margin=0.2, input="input_1", output="gender_pred/Sigmoid", **FACERES
    ),
    "faceres-deep-age": Contract(
        "margin", 224, width=100, margin=0.2, input="input_1", output="age_pred/Softmax", **FACERES
    ),
    "faceres-deep-gender": Contract(
        "margin", 224, width=1, margin=0.2, input="input_1", output="gender_pred/Sigmoid", **FACERES
    ),
    "faceres-deep-age-int8": Contract(
        "margin", 224, width=100, margin=0.2, input="input_1", output="age_pred/Softmax", **FACERES
    ),
    "faceres-deep-gender-int8": Contract(
        "margin", 224, width=1, margin=0.2, input="input_1", output="gender_pred/Sigmoid", **FACERES
    ),
    # GEAR: RGB in [0, 1], NHWC 198
    "gear-gender": Contract(
        "chip",
        198,
        "RGB",
        np.zeros(3, np.float32),
        1 / 255,
        2,
        layout="NHWC",
        input="input_1",
        output="Identity_1",
    ),
}


def test_every_builtin_card_has_a_contract_here() -> None:
    assert set(CARDS) == set(CONTRACTS)


def probe_graph(contract: Contract, fixed_batch: bool) -> onnx.ModelProto:
    batch: int | str = 1 if fixed_batch else "N"
    name, size = contract.input, contract.size
    shape = [batch, 3, size, size] if contract.layout == "NCHW" else [batch, size, size, 3]
    output = contract.output or "prob_Y"
    last = (
        helper.make_node("Softmax", ["logits"], [output], axis=1)
        if contract.width > 1
        else helper.make_node("Sigmoid", ["logits"], [output])
    )
    nodes = [
        helper.make_node("Identity", [name], [FED]),
        helper.make_node("ReduceMean", [name], ["mean"], axes=[1, 2, 3], keepdims=0),
        # like the zoo's Reshape in front of each Gemm, with batch 1 baked in when fixed
        helper.make_node("Reshape", ["mean", "shape"], ["column"]),
        helper.make_node("Mul", ["column", "ones"], ["logits"]),
        last,
    ]
    inits = [
        numpy_helper.from_array(np.array([1 if fixed_batch else 0, 1], np.int64), "shape"),
        numpy_helper.from_array(np.linspace(0, 1, contract.width, dtype=np.float32)[None], "ones"),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, contract.width]),
            helper.make_tensor_value_info(FED, TensorProto.FLOAT, shape),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    return model


class Recorder:
    """Wraps the session: fetches ``fed_Y`` too, and keeps it with the feed it was given."""

    def __init__(self, session):
        self.session = session
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def run(self, names, feed):
        *outs, fed = self.session.run([*names, FED], feed)
        (given,) = feed.values()
        self.calls.append((np.array(given), fed))
        return outs

    def __getattr__(self, name):
        return getattr(self.session, name)


def expected_margin(rgb: np.ndarray, box, size: int, margin: float) -> np.ndarray:
    """DEX: box + `margin` of its width/height on every side, squared, edges repeated,
    resized."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    gx1, gy1, gx2, gy2 = x1 - margin * w, y1 - margin * h, x2 + margin * w, y2 + margin * h
    side = max(gx2 - gx1, gy2 - gy1)
    left = round((gx1 + gx2) / 2 - side / 2)
    top = round((gy1 + gy2) / 2 - side / 2)
    length = round(side)
    pad = length
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    region = padded[top + pad : top + pad + length, left + pad : left + pad + length]
    interpolation = cv2.INTER_AREA if length > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interpolation)


def expected_chip(rgb: np.ndarray, box, landmarks, size: int, padding: float) -> np.ndarray:
    """CC0: dlib's face chip from the 5 landmarks."""
    x1, y1, x2, y2 = (round(v) for v in box)
    rect = dlib.rectangle(x1, y1, x2 - 1, y2 - 1)
    shape = dlib.full_object_detection(rect, [dlib.point(round(x), round(y)) for x, y in landmarks])
    return dlib.extract_image_chip(rgb, dlib.get_face_chip_details(shape, size, padding))


def expected_tensor(
    card_id: str, rgb: np.ndarray, detection, order: str | None = None
) -> np.ndarray:
    """The tensor (without the batch axis) in the contract's layout."""
    c = CONTRACTS[card_id]
    order = order or c.order
    if c.kind == "chip":
        crop = expected_chip(rgb, detection.box, detection.landmarks, c.size, c.padding)
    else:
        crop = expected_margin(rgb, detection.box, c.size, c.margin)
    pixels = crop.astype(np.float32)
    if order == "BGR":
        pixels = pixels[..., [2, 1, 0]]
    hwc = (pixels - c.mean) * np.float32(c.scale)
    return hwc.transpose(2, 0, 1) if c.layout == "NCHW" else hwc


def mirrored(card_id: str, tensor: np.ndarray) -> np.ndarray:
    """The tensor of the mirrored crop (the width axis reversed)."""
    return tensor[:, :, ::-1] if CONTRACTS[card_id].layout == "NCHW" else tensor[:, ::-1]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load(DATA / "astronaut.png").rgb


def _estimator(card_id: str, tmp_path: Path) -> tuple[Estimator, Recorder]:
    card = builtin_cards()[card_id]
    contract = CONTRACTS[card_id]
    zoo = card.source.url is not None  # the zoo's files: `input`, fixed batch 1
    if zoo:
        contract = dataclasses.replace(contract, input="input")
    model = probe_graph(contract, fixed_batch=zoo)
    path = tmp_path / f"{card_id}.onnx"
    onnx.save_model(model, str(path))
    role = "gender" if card.task == "gender" else "age"
    refs: dict[str, list[str]] = {"age_models": [], "gender_models": []}
    refs[f"{role}_models"] = [f"{card_id}={path}"]
    est = Estimator.from_preset("default", tta=True, **refs)
    model = est.heads[role][0].model
    recorder = Recorder(model.session)
    model.session = recorder
    return est, recorder


@pytest.mark.parametrize("card_id", CARDS)
def test_pipeline_feeds_each_card_exactly_its_contract(card_id: str, photo, tmp_path: Path) -> None:
    est, recorder = _estimator(card_id, tmp_path)
    prepared = est.prepare(photo)
    (detection,) = prepared.detections
    est.estimate([prepared])
    # The crop, then its mirror (TTA): one run of two rows, or two runs of a fixed-batch
    # graph; the session received exactly what the pipeline handed to it.
    given = np.concatenate([g for g, _ in recorder.calls])
    fed = np.concatenate([f for _, f in recorder.calls])
    np.testing.assert_array_equal(fed, given)
    want = expected_tensor(card_id, photo, detection)
    assert fed.shape == (2, *want.shape) and fed.dtype == np.float32
    np.testing.assert_allclose(fed[0], want, atol=1e-4)
    np.testing.assert_allclose(fed[1], mirrored(card_id, want), atol=1e-4)
    # the test can tell the orders apart: the other one is off by many grey levels
    other = "RGB" if CONTRACTS[card_id].order == "BGR" else "BGR"
    swapped = expected_tensor(card_id, photo, detection, order=other)
    assert np.abs(fed[0] - swapped).mean() > 10 * CONTRACTS[card_id].scale


@pytest.mark.parametrize("card_id", ["dex-imdb-age", "levi-gender"])
def test_fixed_batch_zoo_signature_is_fed_in_one_batch(card_id: str, photo, tmp_path: Path) -> None:
    est, recorder = _estimator(card_id, tmp_path)
    assert est.heads["age" if "age" in card_id else "gender"][0].model.max_batch > 1
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    results = list(est.predict_many([photo, mirrored]))
    assert [len(r.faces) for r in results] == [1, 1]
    given, fed = recorder.calls[0]
    # both faces and their mirrors (TTA) in one run of the once fixed-batch graph
    assert fed.shape[0] == 4
    np.testing.assert_array_equal(fed, given)
    for row, image in enumerate((photo, mirrored)):
        (detection,) = est.prepare(image).detections
        want = expected_tensor(card_id, image, detection)
        np.testing.assert_allclose(fed[row], want, atol=1e-4)
        np.testing.assert_allclose(fed[row + 2], want[:, :, ::-1], atol=1e-4)
