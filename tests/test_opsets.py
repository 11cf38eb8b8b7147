"""Opset upgrade (:mod:`agegender.onnxgraph.opsets`): legacy Caffe conversions run the
same as their opset-11 twins, and what cannot be upgraded is a one-line error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from support import standins
from support.tolerance import DEEP_RTOL

from agegender.errors import ModelFileError
from agegender.onnxgraph import opsets


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


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
    # two sessions of a deep float32 graph: equal within rounding, not bit for bit
    np.testing.assert_allclose(got, want, rtol=DEEP_RTOL, atol=1e-6)


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
