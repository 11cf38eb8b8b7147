"""The test support's stand-in graphs: the zoo's topologies, names and fixed batch, and the
card-shaped graphs (shapes, batch, peak)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from support import standins

from agegender.cards import get_card
from agegender.onnxgraph import opsets


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("outputs", [101, 2])
def test_vgg16_has_the_dex_topology(outputs: int) -> None:
    model = standins.vgg16(outputs=outputs)
    onnx.checker.check_model(model)
    ops = _ops(model)
    assert ops["Conv"] == 13 and ops["MaxPool"] == 5 and ops["Gemm"] == 3
    assert ops["Relu"] == 15 and ops["Softmax"] == 1 and ops["Reshape"] == 3
    (inp,) = [v for v in model.graph.input if v.name == "input"]
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    (out,) = model.graph.output
    assert out.name == "prob_Y"
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, outputs]
    # caffe-onnx bakes batch 1 into the Reshape in front of every fully connected layer
    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape":
            assert shapes[node.input[1]][0] == 1


def test_full_width_vgg16_has_vgg16s_parameter_count() -> None:
    model = standins.vgg16(width="full")
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == 1)
    # VGG-16 with a 101-way head: 134.3 M for the body + 4096 * 101 + 101 for fc8
    assert params == 134_260_544 + 4096 * 101 + 101


@pytest.mark.parametrize("kind", ["vgg16", "googlenet"])
def test_opset_11_runs_and_gives_a_distribution(kind: str) -> None:
    model = standins.build(kind)
    assert model.ir_version == 6 and opsets.default_opset(model) == 11
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)
    (probs,) = _session(model).run(None, {"input": x})
    width = 101 if kind == "vgg16" else 8
    assert probs.shape == (1, width)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert probs.max() < 0.999  # the scaled head keeps the softmax from being one-hot


def test_seeds_give_different_weights_and_the_same_seed_the_same() -> None:
    a, b, c = (standins.googlenet(seed=s) for s in (0, 0, 1))
    wa, wb, wc = (onnx.numpy_helper.to_array(m.graph.initializer[0]) for m in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)


def test_cli_writes_a_loadable_file(tmp_path) -> None:
    path = tmp_path / "g.onnx"
    assert standins.main(["--kind", "googlenet", "--outputs", "2", "-o", str(path)]) == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape == [1, 2]


@pytest.mark.parametrize("batch", [1, "N"])
def test_card_graph_has_the_asked_shapes_and_a_distribution(batch: int | str) -> None:
    model = standins.card_graph(input_shape=[batch, 3, 64, 64], width=81, seed=2)
    session = _session(model)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "probabilities")
    assert inp.shape == [batch, 3, 64, 64] and out.shape == [batch, 81]
    n = 1 if batch == 1 else 3
    x = np.random.default_rng(0).uniform(0, 1, (n, 3, 64, 64)).astype(np.float32)
    (probs,) = session.run(None, {"images": x})
    # a softmax in float32: each row sums to 1 within a few units of float32's epsilon
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("card_id", ["levi-age", "dex-imdb-gender", "cc0-age-v1"])
def test_peaked_graph_peaks_where_asked_for_any_pixels(card_id: str) -> None:
    card = get_card(card_id)
    peak = card.output.width - 1
    session = ort.InferenceSession(
        standins.peaked_graph(card, peak), providers=["CPUExecutionProvider"]
    )
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape == [1, 3, card.input.height, card.input.width]
    for value in (0.0, 255.0):
        x = np.full((1, 3, card.input.height, card.input.width), value, np.float32)
        (probs,) = session.run(None, {"input": x})
        assert probs.shape == (1, card.output.width)
        assert int(np.argmax(probs)) == peak and probs[0, peak] > 0.99
