"""Upgrading legacy-opset graphs (opset < 7) so ONNX Runtime can run them.

The zoo's seed card lists opset 5 for the age/gender files. ONNX Runtime has no kernels
for several opset-1..6 operators (it refuses ``Relu(1)``), and onnx's own version
converter needs every tensor's shape to adapt ``Gemm``'s ``broadcast`` attribute, which
shape inference cannot give through those same old operators. The operators a Caffe
conversion emits changed between their legacy versions and opset 11 only by losing
attributes (``consumed_inputs``, ``is_test``, ``broadcast``, ``spatial``), so they are
rewritten in place here; anything else goes through ``onnx.version_converter``.
"""

from __future__ import annotations

import onnx
from onnx import checker, helper, version_converter

from ..errors import ModelFileError

TARGET_OPSET = 11
MIN_RUNTIME_OPSET = 7  # ONNX Runtime's oldest supported default-domain opset

# op -> attributes dropped by opset 7+ whose removal keeps inference semantics.
_DROPPED: dict[str, frozenset[str]] = {
    "Relu": frozenset({"consumed_inputs"}),
    "LeakyRelu": frozenset({"consumed_inputs"}),
    "Sigmoid": frozenset({"consumed_inputs"}),
    "Tanh": frozenset({"consumed_inputs"}),
    "Dropout": frozenset({"consumed_inputs", "is_test"}),
    "Gemm": frozenset({"broadcast"}),
    "BatchNormalization": frozenset({"consumed_inputs", "is_test", "spatial"}),
    "Conv": frozenset(),
    "MaxPool": frozenset(),
    "AveragePool": frozenset(),
    "LRN": frozenset(),
    "Concat": frozenset(),
    "Reshape": frozenset(),
    "Flatten": frozenset(),
    "Softmax": frozenset(),
    "Identity": frozenset(),
    "GlobalAveragePool": frozenset(),
    "GlobalMaxPool": frozenset(),
    "Transpose": frozenset(),
}
# Element-wise ops whose opset-1..6 `broadcast`/`axis` form is only safe to drop when
# there is no `axis` (numpy-style trailing broadcast is what opset 7 does).
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min"})


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain ("" or "ai.onnx") opset version."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def needs_upgrade(model: onnx.ModelProto) -> bool:
    return default_opset(model) < MIN_RUNTIME_OPSET


def _rewrite_in_place(model: onnx.ModelProto) -> bool:
    """Drop legacy attributes; False if an operator is not one this knows to be safe."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type in _ELEMENTWISE:
            if any(a.name == "axis" for a in node.attribute):
                return False
            dropped = frozenset({"broadcast", "consumed_inputs"})
        elif node.op_type in _DROPPED:
            dropped = _DROPPED[node.op_type]
        else:
            return False
        kept = [a for a in node.attribute if a.name not in dropped]
        if node.op_type == "Concat" and not any(a.name == "axis" for a in kept):
            kept.append(helper.make_attribute("axis", 1))  # Concat-1's default axis
        del node.attribute[:]
        node.attribute.extend(kept)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = TARGET_OPSET
    model.ir_version = max(model.ir_version, 6)
    return True


def upgrade(model: onnx.ModelProto, name: str = "<graph>") -> onnx.ModelProto:
    """Return `model` at opset 11 when it is older than opset 7, else unchanged."""
    if not needs_upgrade(model):
        return model
    upgraded = onnx.ModelProto()
    upgraded.CopyFrom(model)
    if _rewrite_in_place(upgraded):
        try:
            checker.check_model(upgraded)
            return upgraded
        except checker.ValidationError as error:
            reason = f"{error}".splitlines()[0]
            raise ModelFileError(
                f"{name}: cannot upgrade opset {default_opset(model)} graph ({reason})"
            ) from None
    try:
        return version_converter.convert_version(model, TARGET_OPSET)
    except Exception as error:  # the converter raises bare RuntimeErrors from C++
        reason = f"{error}".splitlines()[0] if f"{error}" else type(error).__name__
        raise ModelFileError(
            f"{name}: opset {default_opset(model)} graph cannot be upgraded ({reason})"
        ) from None
