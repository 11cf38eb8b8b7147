"""Stand-in graphs: the zoo's topologies, names and fixed batch, loadable at both opsets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agegender import opsets, standins
from agegender.errors import ModelFileError


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


@pytest.mark.parametrize("kind", ["vgg16", "googlenet"])
def test_opset_5_is_refused_by_onnx_runtime_but_upgrades_to_the_same_outputs(kind: str) -> None:
    legacy = standins.build(kind, opset=5, seed=3)
    assert opsets.default_opset(legacy) == 5
    assert any(a.name == "broadcast" for n in legacy.graph.node for a in n.attribute)
    with pytest.raises(Exception, match="Could not find an implementation"):
        _session(legacy)
    upgraded = opsets.upgrade(legacy)
    assert opsets.default_opset(upgraded) == opsets.TARGET_OPSET
    x = np.random.default_rng(2).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)
    (got,) = _session(upgraded).run(None, {"input": x})
    (want,) = _session(standins.build(kind, opset=11, seed=3)).run(None, {"input": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_seeds_give_different_weights_and_the_same_seed_the_same() -> None:
    a, b, c = (standins.googlenet(seed=s) for s in (0, 0, 1))
    wa, wb, wc = (onnx.numpy_helper.to_array(m.graph.initializer[0]) for m in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)


def test_cli_writes_a_loadable_file(tmp_path) -> None:
    path = tmp_path / "g.onnx"
    assert standins.main(["--kind", "googlenet", "--outputs", "2", "-o", str(path)]) == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape == [1, 2]


def test_upgrade_refuses_what_it_cannot_convert_with_a_one_line_error() -> None:
    # Upsample-1 is outside the in-place list, and onnx's converter needs the Gemm's shapes.
    helper, tp = onnx.helper, onnx.TensorProto
    nodes = [
        helper.make_node("Gemm", ["input", "w", "b"], ["y"], broadcast=1),
        helper.make_node("Upsample", ["y"], ["z"], mode="nearest", scales=[1.0, 2.0]),
    ]
    inputs = [helper.make_tensor_value_info(n, tp.FLOAT, None) for n in ("input", "w", "b")]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("z", tp.FLOAT, None)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 5)])
    with pytest.raises(
        ModelFileError, match=r"^legacy\.onnx: opset 5 graph cannot be upgraded \("
    ) as info:
        opsets.upgrade(model, "legacy.onnx")
    assert "\n" not in str(info.value)
