"""ONNX Runtime per card: preprocessing from the card, softmax when the graph lacks it,
batching across faces and images, and graphs whose batch is fixed to 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from faceutils import box_matches, card_with
from support.spies import CountingSession
from support.standins import standin_graph
from support.tolerance import PROB_ATOL, RTOL, expected_value

from agegender import Estimator
from agegender.cards import get_card, parse_card
from agegender.inference import OnnxModel, preprocess


def count_runs(estimator: Estimator) -> dict[str, CountingSession]:
    spies = {}
    for role, heads in estimator.heads.items():
        model = heads[0].model
        spies[role] = CountingSession(model.session)
        model.session = spies[role]  # type: ignore[assignment]
    return spies


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stand-ins for the CC0 pair, free batch and batch fixed to 1 (same weights)."""
    folder = tmp_path_factory.mktemp("standins")
    return {
        "age-free": standin_graph(folder / "af.onnx", input_shape=["N", 3, 64, 64], width=81),
        "age-fixed": standin_graph(folder / "a1.onnx", input_shape=[1, 3, 64, 64], width=81),
        "gender-free": standin_graph(
            folder / "gf.onnx", input_shape=["N", 3, 32, 32], width=2, seed=1
        ),
        "gender-fixed": standin_graph(
            folder / "g1.onnx", input_shape=[1, 3, 32, 32], width=2, seed=1
        ),
    }


def standin_estimator(standins: dict[str, Path], kind: str, **options) -> Estimator:
    return Estimator(
        age_models=[(get_card("cc0-age-v1"), standins[f"age-{kind}"])],
        gender_models=[(get_card("cc0-gender-v1"), standins[f"gender-{kind}"])],
        **options,
    )


def test_preprocess_by_hand() -> None:
    # BGR, mean [1, 2, 3] (in BGR order), scale 0.5, std [1, 2, 4]; pixel RGB (10, 20, 30):
    # BGR (30, 20, 10) -> ((30-1)*.5/1, (20-2)*.5/2, (10-3)*.5/4) = (14.5, 4.5, 0.875)
    table = {"input.channels": "BGR", "input.scale": 0.5, "input.std": [1, 2, 4]}
    crop = np.zeros((64, 64, 3), np.uint8)
    crop[:] = (10, 20, 30)
    nchw = preprocess(parse_card(card_with(**table), "c"), [crop, crop])
    assert nchw.shape == (2, 3, 64, 64) and nchw.dtype == np.float32
    assert nchw[1, :, 5, 7].tolist() == [14.5, 4.5, 0.875]
    nhwc = preprocess(parse_card(card_with(**table, **{"input.layout": "NHWC"}), "c"), [crop])
    assert nhwc.shape == (1, 64, 64, 3) and nhwc[0, 3, 2].tolist() == [14.5, 4.5, 0.875]
    with pytest.raises(ValueError, match="crops are"):
        preprocess(parse_card(card_with(), "c"), [np.zeros((32, 32, 3), np.uint8)])


@pytest.mark.parametrize("channels", ["RGB", "BGR"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(
    "normalise",
    [
        {"input.mean": [0, 0, 0]},  # nothing to subtract or scale: the pixels as floats
        {"input.mean": [103.939, 116.779, 123.68]},  # Caffe-style, scale 1 (faceres-deep)
        {"input.scale": 0.00390625, "input.std": [0.229, 0.224, 0.225]},
    ],
)
def test_preprocess_is_the_plain_formula_on_every_pixel(
    channels: str, layout: str, normalise: dict
) -> None:
    # (pixel - mean) * scale / std, channels reordered, then the layout: computed the
    # plain way on random, non-square crops, compared exactly (the same float operations)
    table = {"input.size": [48, 40], "input.channels": channels, "input.layout": layout}
    table["crop"] = {"kind": "margin", "margin": 0.2}
    card = parse_card(card_with(**table, **normalise), "c")
    rng = np.random.default_rng(11)
    crops = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    crops.append(crops[0][:, ::-1])  # a mirrored view, as flip TTA passes it
    x = np.stack([np.ascontiguousarray(c) for c in crops]).astype(np.float32)
    if channels == "BGR":
        x = np.ascontiguousarray(x[..., ::-1])
    spec = card.input
    mean = np.asarray(spec.mean, np.float32)
    factor = np.float32(spec.scale) / np.asarray(spec.std, np.float32)
    want = (x - mean) * factor
    if layout == "NCHW":
        want = want.transpose(0, 3, 1, 2)
    got = preprocess(card, crops)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_softmax_applied_when_not_in_graph(tmp_path: Path) -> None:
    path = standin_graph(
        tmp_path / "logits.onnx", input_shape=["N", 3, 64, 64], width=101, softmax=False
    )
    card = parse_card(card_with(**{"output.softmax_in_graph": False}), "logits.toml")
    model = OnnxModel(card, path)
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    (logits,) = model.session.run(None, {"images": preprocess(card, crops)})
    assert not np.allclose(logits.sum(axis=1), 1.0)  # the graph gives raw scores
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probs = model.run(crops)
    np.testing.assert_allclose(probs, expected, rtol=RTOL, atol=PROB_ATOL)
    # a float32 softmax of 101 outputs sums to 1 within 101 eps (at worst)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=101 * PROB_ATOL)


def test_fixed_batch_graph_is_really_fixed(standins) -> None:
    session = ort.InferenceSession(str(standins["age-fixed"]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):  # noqa: B017 - ORT's own error types
        session.run(None, {"images": np.zeros((3, 3, 64, 64), np.float32)})


@pytest.mark.parametrize("rewrite", [False, True])
@pytest.mark.parametrize("tta", [False, True])
def test_fixed_batch_one_face_at_a_time_same_results(
    standins, scene, tta: bool, rewrite: bool
) -> None:
    free = standin_estimator(standins, "free", tta=tta)
    fixed = standin_estimator(standins, "fixed", tta=tta)
    if not rewrite:  # the path a graph takes when its batch cannot be freed (batching.py)
        for role, card_id in (("age", "cc0-age-v1"), ("gender", "cc0-gender-v1")):
            path = standins[f"{role}-fixed"]
            fixed.heads[role][0].model = OnnxModel(get_card(card_id), path, batch_rewrite=False)
        fixed_age = fixed.heads["age"][0].model
        assert (fixed_age.fixed_batch, fixed_age.max_batch) == (1, 1)
    else:  # rewritten to a free batch (and checked against one-by-one runs) when loaded
        fixed_age = fixed.heads["age"][0].model
        assert fixed_age.fixed_batch is None and fixed_age.max_batch > 1
    assert (
        free.heads["age"][0].model.fixed_batch is None and free.heads["age"][0].model.max_batch > 1
    )
    free_runs, fixed_runs = count_runs(free), count_runs(fixed)

    want = free.predict(scene.rgb)
    got = fixed.predict(scene.rgb)
    faces = len(scene.expected)
    assert len(want) == len(got) == faces
    passes = 2 if tta else 1  # TTA's mirrored crops go in the same run as the crops
    assert free_runs["age"].batches == [faces * passes]
    per_run = [faces * passes] if rewrite else [1] * faces * passes
    assert fixed_runs["age"].batches == per_run
    assert fixed_runs["gender"].batches == per_run
    # Other sessions and batch sizes: equal within float32 rounding (support/tolerance.py)
    for a, b in zip(want, got, strict=True):
        assert a.box == b.box
        assert b.age.value == pytest.approx(a.age.value, rel=RTOL)
        assert b.age.std == pytest.approx(a.age.std, rel=RTOL)
        assert b.age.interval == a.age.interval
        assert (b.gender.label, b.gender.probability) == (
            a.gender.label,
            pytest.approx(a.gender.probability, rel=RTOL),
        )
    # The stand-in's output depends on the face: the comparison is not between constants.
    assert len({round(f.age.value, 3) for f in want}) == faces


def test_faces_of_many_images_share_batches(standins, scene, astronaut_rgb) -> None:
    estimator = standin_estimator(standins, "free", tta=False)
    runs = count_runs(estimator)
    results = list(estimator.predict_many([scene.rgb, astronaut_rgb, scene.rgb]))
    assert [len(r.faces) for r in results] == [3, 1, 3]
    assert runs["age"].batches == [7] and runs["gender"].batches == [7]
    # Results are attached to the right image, in input order.
    one_by_one = [estimator.predict(image) for image in (scene.rgb, astronaut_rgb, scene.rgb)]
    for result, alone in zip(results, one_by_one, strict=True):
        assert [f.box for f in result.faces] == [f.box for f in alone]
        for f, g in zip(result.faces, alone, strict=True):
            assert f.age.value == pytest.approx(g.age.value, rel=RTOL)  # other batch sizes
    for want in scene.expected:
        assert sum(box_matches(f.box, want) for f in results[0].faces) == 1


def test_batch_size_splits_runs(standins, scene) -> None:
    estimator = standin_estimator(standins, "free", tta=False, batch_size=2)
    runs = count_runs(estimator)
    assert len(estimator.predict(scene.rgb)) == 3
    assert runs["age"].batches == [2, 1]


def test_tta_averages_the_mirrored_face(estimator: Estimator, astronaut_rgb) -> None:
    """With TTA the probabilities are the mean of the face's and its mirror's.

    The TTA estimator has sessions of its own: equal within float32 rounding, and the
    distribution renormalised in float64 as estimates.py does (not bit for bit).
    """
    prepared = estimator.prepare(astronaut_rgb)
    head = estimator.heads["age"][0]
    model = head.model
    chip = prepared.crops[head.crop_key][0]
    mean = (model.run([chip]) + model.run([np.ascontiguousarray(chip[:, ::-1])])) / 2
    values = np.asarray(model.card.output.values)
    (face,) = Estimator(tta=True).estimate([prepared])[0]
    assert face.age.value == pytest.approx(expected_value(mean[0], values), rel=RTOL)
    # and the mirror counts: far more than the tolerance away from the face alone
    unflipped = expected_value(model.run([chip])[0], values)
    assert abs(unflipped - face.age.value) > 100 * RTOL * face.age.value


def test_large_inputs_run_in_smaller_batches(tmp_path: Path) -> None:
    """Rows x pixels per run are capped (ONNX Runtime's arena keeps its largest
    activations): 224 x 224 inputs run 8 rows at a time, 64 x 64 chips the batch size."""
    from agegender.inference import MAX_BATCH_PIXELS

    big = standin_graph(tmp_path / "big.onnx", input_shape=["N", 3, 224, 224], width=101)
    small = standin_graph(tmp_path / "small.onnx", input_shape=["N", 3, 64, 64], width=101)
    small_card = parse_card(card_with(), "small.toml")
    assert OnnxModel(small_card, small, max_batch=32).max_batch == 32
    assert MAX_BATCH_PIXELS // (224 * 224) == 8
    big_card = parse_card(card_with(**{"input.size": [224, 224], "crop.kind": "margin"}), "b.toml")
    model = OnnxModel(big_card, big, max_batch=32)
    assert model.max_batch == 8
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(19)]
    spy = CountingSession(model.session)
    model.session = spy  # type: ignore[assignment]
    assert model.run(crops).shape == (19, 101)
    assert spy.batches == [8, 8, 3]
