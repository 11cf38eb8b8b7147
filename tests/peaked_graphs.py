"""Tiny ONNX graphs with a card's input and output, whose output peaks at a chosen index.

Which index a result shows tells a test which file the pipeline ran for which role.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agegender.cards import ModelCard


def standin_graph(card: ModelCard, peak: int) -> bytes:
    """``input`` 1x3xHxW (the card's size) -> channel means -> MatMul + bias -> Softmax."""
    width = card.output.width
    rng = np.random.default_rng(peak)
    weight = (rng.standard_normal((3, width)) * 1e-4).astype(np.float32)
    bias = np.zeros(width, dtype=np.float32)
    bias[peak] = 30.0
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weight"], ["logits0"]),
        helper.make_node("Add", ["logits0", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        f"standin-{card.id}",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, [1, 3, card.input.height, card.input.width]
            )
        ],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, width])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
