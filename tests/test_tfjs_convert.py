"""The TF.js graph-model converter (agegender.onnxgraph.tfjs), op by op.

Every op is checked on tiny tensors against numpy (convolutions and pools by their
definition, with TF's SAME rule written out), then the same tiny graphs and stand-ins with
the real topologies of faceres, gear, SSR-Net age and oarriaga gender (random weights) are
run by TF.js itself (node, @tensorflow/tfjs, cpu backend) and compared with ONNX Runtime
on the converted graph. The TF.js part is skipped, saying why, where node or the npm
package is missing (scripts/setup.sh installs it in .node/).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from support import tfjs_graphs as tg
from support.tfjs_graphs import a_b, a_f, a_i, a_ints, a_s, a_strs, a_type, conv_attrs

from agegender.errors import AgegenderError
from agegender.onnxgraph import tfjs
from agegender.onnxgraph.tfjs import TfjsError

F32 = NDArray[np.float32]


def convert(graph: tg.TfjsGraph, outputs: list[str] | None = None) -> onnx.ModelProto:
    files = graph.files()
    return tfjs.convert(graph.model_json(outputs), files.__getitem__)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: F32) -> dict[str, F32]:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x}), strict=True))


# --------------------------------------------------------------------------- numpy references


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF's SAME: output ceil(size / stride), the odd extra pixel at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _windows(
    x: NDArray[Any],
    k: tuple[int, int],
    s: tuple[int, int],
    d: tuple[int, int],
    pads: Any,
    fill: float,
) -> tuple[NDArray[Any], int, int]:
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    oh = (xp.shape[1] - ((k[0] - 1) * d[0] + 1)) // s[0] + 1
    ow = (xp.shape[2] - ((k[1] - 1) * d[1] + 1)) // s[1] + 1
    patches = np.stack(
        [
            np.stack(
                [
                    xp[
                        :,
                        i * d[0] : i * d[0] + (oh - 1) * s[0] + 1 : s[0],
                        j * d[1] : j * d[1] + (ow - 1) * s[1] + 1 : s[1],
                        :,
                    ]
                    for j in range(k[1])
                ],
                axis=3,
            )
            for i in range(k[0])
        ],
        axis=3,
    )  # n, oh, ow, kh, kw, c
    return patches, oh, ow


def _pads(padding: str | list[int], x: NDArray[Any], k: Any, s: Any, d: Any) -> Any:
    if padding == "SAME":
        return same_pads(x.shape[1], k[0], s[0], d[0]), same_pads(x.shape[2], k[1], s[1], d[1])
    if padding == "VALID":
        return (0, 0), (0, 0)
    return (padding[0], padding[1]), (padding[2], padding[3])  # top, bottom, left, right


def np_conv(x: F32, w: F32, s=(1, 1), padding: Any = "SAME", d=(1, 1)) -> F32:
    k = w.shape[:2]
    patches, _, _ = _windows(x.astype(np.float64), k, s, d, _pads(padding, x, k, s, d), 0.0)
    return np.einsum("nhwijc,ijco->nhwo", patches, w.astype(np.float64)).astype(np.float32)


def np_depthwise(x: F32, w: F32, s=(1, 1), padding: Any = "SAME", d=(1, 1)) -> F32:
    k = w.shape[:2]
    patches, oh, ow = _windows(x.astype(np.float64), k, s, d, _pads(padding, x, k, s, d), 0.0)
    out = np.einsum("nhwijc,ijcm->nhwcm", patches, w.astype(np.float64))
    return out.reshape(x.shape[0], oh, ow, -1).astype(np.float32)


def np_pool(x: F32, k: Any, s: Any, padding: str, kind: str) -> F32:
    pads = _pads(padding, x, k, s, (1, 1))
    if kind == "max":
        patches, _, _ = _windows(x, k, s, (1, 1), pads, -np.inf)
        return patches.max(axis=(3, 4)).astype(np.float32)
    patches, _, _ = _windows(x.astype(np.float64), k, s, (1, 1), pads, np.nan)
    return np.nanmean(patches, axis=(3, 4)).astype(np.float32)  # padding left out


def np_softmax(x: NDArray[Any]) -> F32:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    graph: tg.TfjsGraph
    x: F32
    outputs: list[str]
    expected: dict[str, NDArray[Any]]
    atol: float = 1e-5


CASES: dict[str, Callable[[np.random.Generator], Case]] = {}


def case(name: str) -> Callable[[Callable[[np.random.Generator], Case]], Any]:
    def register(fn: Callable[[np.random.Generator], Case]) -> Any:
        CASES[name] = fn
        return fn

    return register


def _rand(rng: np.random.Generator, *shape: int) -> F32:
    return rng.standard_normal(shape).astype(np.float32)


def _unary_case(
    op: str, fn: Callable[[F32], NDArray[Any]]
) -> Callable[[np.random.Generator], Case]:
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        x = _rand(rng, 2, 3, 4) * 4
        g.placeholder("x", [-1, 3, 4])
        g.op(op, "y", ["x"])
        return Case(g, x, ["y"], {"y": fn(x)})

    return build


for _op, _fn in {
    "Relu": lambda x: np.maximum(x, 0),
    "Relu6": lambda x: np.clip(x, 0, 6),
    "Tanh": np.tanh,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x.astype(np.float64))),
    "Softmax": np_softmax,
    "Identity": lambda x: x,
}.items():
    CASES[_op.lower()] = _unary_case(_op, _fn)


def _binary_case(op: str, fn: Callable[[Any, Any], Any], const_shape: tuple[int, ...]):
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        x = _rand(rng, 2, 3, 4)
        c = _rand(rng, *const_shape)
        if op == "RealDiv":
            c = np.sign(c) * (np.abs(c) + 0.5)
        g.placeholder("x", [-1, 3, 4])
        g.const("c", c)
        g.op(op, "y", ["x", "c"])
        g.op(op, "z", ["c", "y"])  # the constant on either side
        y = fn(x, g.decoded["c"])
        return Case(g, x, ["y", "z"], {"y": y, "z": fn(g.decoded["c"], y)})

    return build


for _op, _fn in {
    "Add": np.add,
    "AddV2": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "RealDiv": np.divide,
    "Maximum": np.maximum,
    "Minimum": np.minimum,
}.items():
    CASES[f"{_op.lower()}_vector"] = _binary_case(_op, _fn, (4,))
    CASES[f"{_op.lower()}_scalar"] = _binary_case(_op, _fn, ())


@case("bias_add")
def _bias_add(rng: np.random.Generator) -> Case:
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 3, 3, 4)
    g.placeholder("x", [-1, 3, 3, 4])
    g.const("b", _rand(rng, 4))
    g.op("BiasAdd", "y", ["x", "b"], data_format=a_s("NHWC"))
    return Case(g, x, ["y"], {"y": x + g.decoded["b"]})


def _conv_case(
    size: tuple[int, int],
    k: int,
    stride: int,
    padding: str,
    dilation: int = 1,
    depthwise: bool = False,
    explicit: tuple[int, int, int, int] = (0, 0, 0, 0),
):
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        h, w = size
        cin, cout = 3, 4
        x = _rand(rng, 2, h, w, cin)
        g.placeholder("x", [-1, h, w, cin])
        g.const("w", _rand(rng, k, k, cin, 2 if depthwise else cout))
        ex = [0, 0, *explicit, 0, 0] if padding == "EXPLICIT" else []
        op = "DepthwiseConv2dNative" if depthwise else "Conv2D"
        g.op(op, "y", ["x", "w"], **conv_attrs((stride, stride), padding, (dilation, dilation), ex))
        ref = np_depthwise if depthwise else np_conv
        pad: Any = list(explicit) if padding == "EXPLICIT" else padding
        y = ref(x, g.decoded["w"], (stride, stride), pad, (dilation, dilation))
        return Case(g, x, ["y"], {"y": y}, atol=1e-4)

    return build


for _size in ((5, 5), (6, 6), (7, 6)):
    for _k, _s in ((1, 1), (2, 2), (3, 1), (3, 2), (3, 3)):
        for _pad in ("SAME", "VALID"):
            CASES[f"conv_{_size[0]}x{_size[1]}_k{_k}_s{_s}_{_pad.lower()}"] = _conv_case(
                _size, _k, _s, _pad
            )
    CASES[f"depthwise_{_size[0]}x{_size[1]}_k3_s2_same"] = _conv_case(
        _size, 3, 2, "SAME", depthwise=True
    )
    CASES[f"depthwise_{_size[0]}x{_size[1]}_k3_s1_valid"] = _conv_case(
        _size, 3, 1, "VALID", depthwise=True
    )
CASES["conv_dilated_same"] = _conv_case((7, 7), 3, 1, "SAME", dilation=2)
CASES["depthwise_dilated_same"] = _conv_case((7, 7), 3, 1, "SAME", dilation=2, depthwise=True)
CASES["conv_explicit"] = _conv_case((6, 5), 3, 2, "EXPLICIT", explicit=(1, 2, 0, 1))


def _fused_conv_case(fused_ops: list[str], depthwise: bool = False):
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        x = _rand(rng, 2, 6, 5, 3) * 3
        g.placeholder("x", [-1, 6, 5, 3])
        cout = 6 if depthwise else 4
        g.const("w", _rand(rng, 3, 3, 3, 2 if depthwise else 4))
        args = ["b"]
        g.const("b", _rand(rng, cout))
        if "Prelu" in fused_ops:
            g.const("alpha", rng.uniform(0, 0.5, cout).astype(np.float32))
            args.append("alpha")
        op = "FusedDepthwiseConv2dNative" if depthwise else "_FusedConv2D"
        attrs = conv_attrs((2, 2), "SAME") | {
            "fused_ops": a_strs(fused_ops),
            "num_args": a_i(len(args)),
            "epsilon": a_f(0.0),
            "leakyrelu_alpha": a_f(0.1),
        }
        g.op(op, "y", ["x", "w", *args], **attrs)
        ref = np_depthwise if depthwise else np_conv
        y = ref(x, g.decoded["w"], (2, 2), "SAME") + g.decoded["b"]
        act = fused_ops[1] if len(fused_ops) > 1 else None
        if act == "Relu":
            y = np.maximum(y, 0)
        elif act == "Relu6":
            y = np.clip(y, 0, 6)
        elif act == "LeakyRelu":
            y = np.where(y > 0, y, 0.1 * y)
        elif act == "Prelu":
            y = np.where(y > 0, y, g.decoded["alpha"] * y)
        elif act == "Elu":
            y = np.where(y > 0, y, np.expm1(y))
        elif act == "Sigmoid":
            y = 1 / (1 + np.exp(-y))
        return Case(g, x, ["y"], {"y": y}, atol=1e-4)

    return build


for _ops in (
    ["BiasAdd"],
    ["BiasAdd", "Relu"],
    ["BiasAdd", "Relu6"],
    ["BiasAdd", "LeakyRelu"],
    ["BiasAdd", "Prelu"],
    ["BiasAdd", "Elu"],
    ["BiasAdd", "Sigmoid"],
):
    CASES["fused_conv_" + "_".join(o.lower() for o in _ops)] = _fused_conv_case(_ops)
CASES["fused_depthwise_biasadd_relu"] = _fused_conv_case(["BiasAdd", "Relu"], depthwise=True)


def _pool_case(size: tuple[int, int], k: int, s: int, padding: str, kind: str):
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        x = _rand(rng, 2, *size, 3)
        g.placeholder("x", [-1, *size, 3])
        attrs = conv_attrs((s, s), padding) | {"ksize": a_ints([1, k, k, 1])}
        del attrs["dilations"]
        g.op("MaxPool" if kind == "max" else "AvgPool", "y", ["x"], **attrs)
        return Case(g, x, ["y"], {"y": np_pool(x, (k, k), (s, s), padding, kind)})

    return build


for _size in ((5, 5), (6, 6), (7, 4)):
    for _k, _s in ((2, 2), (3, 2), (3, 1)):
        for _pad in ("SAME", "VALID"):
            for _kind in ("max", "avg"):
                _name = f"{_kind}pool_{_size[0]}x{_size[1]}_k{_k}_s{_s}_{_pad.lower()}"
                CASES[_name] = _pool_case(_size, _k, _s, _pad, _kind)


def _reduce_case(op: str, axes: list[int], keep: bool):
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        x = _rand(rng, 2, 3, 4, 5)
        g.placeholder("x", [-1, 3, 4, 5])
        g.const("axes", np.asarray(axes if len(axes) != 1 else axes[0], dtype=np.int32))
        g.op(op, "y", ["x", "axes"], Tidx=a_type("DT_INT32"), keep_dims=a_b(keep))
        fn = np.mean if op == "Mean" else np.max
        return Case(g, x, ["y"], {"y": fn(x, axis=tuple(axes), keepdims=keep)})

    return build


for _op in ("Mean", "Max"):
    CASES[f"{_op.lower()}_hw"] = _reduce_case(_op, [1, 2], False)
    CASES[f"{_op.lower()}_hw_keep"] = _reduce_case(_op, [1, 2], True)
    CASES[f"{_op.lower()}_last_scalar_axis"] = _reduce_case(_op, [-1], False)


@case("reshape_flatten")
def _reshape(rng: np.random.Generator) -> Case:
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 3, 4, 5)
    g.placeholder("x", [-1, 3, 4, 5])
    g.const("shape", np.asarray([-1, 60], dtype=np.int32))
    g.op("Reshape", "y", ["x", "shape"], Tshape=a_type("DT_INT32"))
    return Case(g, x, ["y"], {"y": x.reshape(-1, 60)})  # NHWC order, as TF flattens


@case("expand_dims")
def _expand_dims(rng: np.random.Generator) -> Case:
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 3)
    g.placeholder("x", [-1, 3])
    g.const("one", np.asarray(1, dtype=np.int32))
    g.const("last", np.asarray(-1, dtype=np.int32))
    g.op("ExpandDims", "y", ["x", "one"], Tdim=a_type("DT_INT32"))
    g.op("ExpandDims", "z", ["x", "last"], Tdim=a_type("DT_INT32"))
    return Case(g, x, ["y", "z"], {"y": x[:, None, :], "z": x[:, :, None]})


def _slice_case(
    begin: list[int],
    end: list[int],
    strides: list[int],
    masks: tuple[int, int, int],
    ref: Callable[[F32], F32],
):
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        x = _rand(rng, 2, 6, 5)
        g.placeholder("x", [-1, 6, 5])
        for name, v in (("b", begin), ("e", end), ("s", strides)):
            g.const(name, np.asarray(v, dtype=np.int32))
        g.op(
            "StridedSlice",
            "y",
            ["x", "b", "e", "s"],
            Index=a_type("DT_INT32"),
            begin_mask=a_i(masks[0]),
            end_mask=a_i(masks[1]),
            shrink_axis_mask=a_i(masks[2]),
            ellipsis_mask=a_i(0),
            new_axis_mask=a_i(0),
        )
        return Case(g, x, ["y"], {"y": ref(x)})

    return build


# SSR-Net's form: x[:, k] (begin_mask 1, end_mask 1, shrink_axis_mask 2).
CASES["strided_slice_ssrnet"] = _slice_case([0, 2], [0, 3], [1, 1], (1, 1, 2), lambda x: x[:, 2])
CASES["strided_slice_range"] = _slice_case(
    [0, 1, 0], [0, 5, 4], [1, 2, 1], (1, 1, 0), lambda x: x[:, 1:5:2, 0:4]
)
CASES["strided_slice_negative"] = _slice_case(
    [0, -1], [0, -1], [1, 1], (1, 1, 2), lambda x: x[:, -1]
)
CASES["strided_slice_reverse"] = _slice_case(
    [0, 0, 4], [0, 0, 0], [1, 1, -2], (3, 3, 0), lambda x: x[:, :, 4:0:-2]
)
CASES["strided_slice_masked_reverse"] = _slice_case(
    [0, 0, 0], [0, 0, 0], [1, 1, -1], (7, 7, 0), lambda x: x[:, :, ::-1]
)
CASES["strided_slice_end_mask"] = _slice_case([0, 2], [0, 0], [1, 1], (1, 3, 0), lambda x: x[:, 2:])


def _matmul_case(ta: bool, tb: bool, fused: list[str] | None):
    def build(rng: np.random.Generator) -> Case:
        g = tg.TfjsGraph()
        x = _rand(rng, 3, 4) if not ta else _rand(rng, 4, 3)
        g.placeholder("x", [-1, 4] if not ta else [4, -1])
        w = _rand(rng, 4, 5)
        g.const("w", w.T if tb else w)
        inputs = ["x", "w"]
        attrs: dict[str, Any] = {"transpose_a": a_b(ta), "transpose_b": a_b(tb)}
        if fused is not None:
            g.const("b", _rand(rng, 5))
            inputs.append("b")
            attrs |= {"fused_ops": a_strs(fused), "num_args": a_i(1), "epsilon": a_f(0.0)}
        g.op("_FusedMatMul" if fused is not None else "MatMul", "y", inputs, **attrs)
        y = (x.T if ta else x).astype(np.float64) @ w
        if fused is not None:
            y = y + g.decoded["b"]
            if "Relu" in fused:
                y = np.maximum(y, 0)
            if "Relu6" in fused:
                y = np.clip(y, 0, 6)
        return Case(g, x, ["y"], {"y": y.astype(np.float32)})

    return build


CASES["matmul"] = _matmul_case(False, False, None)
CASES["matmul_transpose_b"] = _matmul_case(False, True, None)
CASES["matmul_transpose_a"] = _matmul_case(True, False, None)
CASES["fused_matmul_biasadd"] = _matmul_case(False, False, ["BiasAdd"])
CASES["fused_matmul_biasadd_relu"] = _matmul_case(False, False, ["BiasAdd", "Relu"])
CASES["fused_matmul_biasadd_relu6_tb"] = _matmul_case(False, True, ["BiasAdd", "Relu6"])


@case("clip_by_value")
def _clip_by_value(rng: np.random.Generator) -> Case:
    """faceres' ReLU6: Relu -> Minimum(6) -> Maximum(0), written as one Clip."""
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 8) * 5
    g.placeholder("x", [-1, 8])
    g.const("six", np.float32(6.0))
    g.const("zero", np.float32(0.0))
    g.op("Relu", "r", ["x"])
    g.op("Minimum", "m", ["r", "six"])
    g.op("Maximum", "y", ["m", "zero"])
    return Case(g, x, ["y"], {"y": np.clip(x, 0, 6)})


@case("clip_shared_minimum")
def _clip_shared(rng: np.random.Generator) -> Case:
    """A Minimum read twice stays a Min (and an output), lo > hi stays a Max."""
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 8) * 5
    g.placeholder("x", [-1, 8])
    g.const("one", np.float32(1.0))
    g.const("two", np.float32(2.0))
    g.op("Minimum", "m", ["x", "one"])
    g.op("Maximum", "y", ["m", "two"])  # lo 2 > hi 1: max(min(x, 1), 2) == 2
    g.op("Maximum", "z", ["m", "one"])
    m = np.minimum(x, 1)
    return Case(g, x, ["m", "y", "z"], {"m": m, "y": np.maximum(m, 2), "z": np.maximum(m, 1)})


@case("const_through_identity")
def _const_identity(rng: np.random.Generator) -> Case:
    """Constants read through Identity (a filter, an operand), as grappler leaves them."""
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 5, 5, 3)
    g.placeholder("x", [-1, 5, 5, 3])
    g.const("w", _rand(rng, 3, 3, 3, 4))
    g.op("Identity", "w/read", ["w"])
    g.const("c", _rand(rng, 4))
    g.op("Identity", "c/read", ["c"])
    g.op("Conv2D", "conv", ["x", "w/read"], **conv_attrs())
    g.op("Mul", "y", ["conv", "c/read"])
    return Case(g, x, ["y"], {"y": np_conv(x, g.decoded["w"]) * g.decoded["c"]}, atol=1e-4)


@case("quantized_weights")
def _quantized(rng: np.random.Generator) -> Case:
    """uint8, uint16 and float16 weights decoded as TF.js decodes them."""
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 6)
    g.placeholder("x", [-1, 6])
    g.const("w8", _rand(rng, 6), quantization="uint8")
    g.const("w16", _rand(rng, 6), quantization="uint16")
    g.const("wh", _rand(rng, 6), quantization="float16")
    g.op("Mul", "a", ["x", "w8"])
    g.op("Add", "b", ["a", "w16"])
    g.op("Mul", "y", ["b", "wh"])
    d = g.decoded
    return Case(g, x, ["y"], {"y": (x * d["w8"] + d["w16"]) * d["wh"]})


@case("quantized_int32_shape")
def _quantized_int(rng: np.random.Generator) -> Case:
    """An int32 Reshape shape stored as uint8 (Math.round of q * scale + min)."""
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 3, 4)
    g.placeholder("x", [-1, 3, 4])
    g.const("shape", np.asarray([-1, 12], dtype=np.int32), quantization="uint8")
    assert g.decoded["shape"].tolist() == [-1, 12]
    g.op("Reshape", "y", ["x", "shape"], Tshape=a_type("DT_INT32"))
    return Case(g, x, ["y"], {"y": x.reshape(-1, 12)})


@pytest.fixture(params=sorted(CASES))
def op_case(request: pytest.FixtureRequest) -> Case:
    seed = int.from_bytes(hashlib.sha256(request.param.encode()).digest()[:4], "little")
    return CASES[request.param](np.random.default_rng(seed))


def test_op_against_numpy(op_case: Case) -> None:
    got = run(convert(op_case.graph, op_case.outputs), op_case.x)
    assert sorted(got) == sorted(op_case.expected)
    for name, want in op_case.expected.items():
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=op_case.atol, err_msg=name)


def test_clip_by_value_is_one_clip() -> None:
    c = CASES["clip_by_value"](np.random.default_rng(0))
    ops = [n.op_type for n in convert(c.graph, c.outputs).graph.node]
    assert ops == ["Clip"]


def test_batch_is_free() -> None:
    c = _conv_case((6, 6), 3, 2, "SAME")(np.random.default_rng(0))
    model = convert(c.graph, c.outputs)
    sess = session(model)
    x = np.random.default_rng(1).standard_normal((5, 6, 6, 3)).astype(np.float32)
    whole = sess.run(None, {"x": x})[0]
    one = np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(whole, one, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- the model


def _small_model() -> tuple[dict[str, Any], dict[str, bytes]]:
    g = tg.TfjsGraph()
    g.placeholder("input_1", [-1, 8, 8, 3])
    g.const("k", np.random.default_rng(0).standard_normal((3, 3, 3, 4)), quantization="float16")
    g.const("b", np.zeros(4))
    g.op(
        "_FusedConv2D",
        "conv/Relu",
        ["input_1", "k", "b"],
        **conv_attrs((2, 2)),
        fused_ops=a_strs(["BiasAdd", "Relu"]),
        num_args=a_i(1),
    )
    g.const("axes", np.asarray([1, 2], dtype=np.int32))
    g.op("Mean", "pool/Mean", ["conv/Relu", "axes"], keep_dims=a_b(False))
    g.op("Softmax", "age_pred/Softmax", ["pool/Mean"])
    g.op("Sigmoid", "gender_pred/Sigmoid", ["pool/Mean"])
    g.op("Identity", "Identity", ["age_pred/Softmax"])
    return g.model_json(["age_pred/Softmax", "gender_pred/Sigmoid"]), g.files()


def test_model_contract() -> None:
    """Input name and NHWC shape with batch N, outputs named after the TF nodes, opset,
    producer and an IR version ONNX Runtime loads; checker and shape inference pass."""
    model_json, files = _small_model()
    model = tfjs.convert(model_json, files.__getitem__, name="small")
    onnx.checker.check_model(model, full_check=True)
    assert model.producer_name == "agegender-tfjs"
    assert model.ir_version == tfjs.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert model.graph.name == "small"
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == ("input_1", ["N", 8, 8, 3])
    outs = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
        for o in model.graph.output
    }
    assert outs == {"age_pred/Softmax": ["N", 4], "gender_pred/Sigmoid": ["N", 4]}
    assert [o.name for o in model.graph.output] == ["age_pred/Softmax", "gender_pred/Sigmoid"]
    assert not {i.name for i in model.graph.initializer} & {"axes"}  # folded, not stored


def test_outputs_from_user_metadata_and_terminal_nodes() -> None:
    model_json, files = _small_model()
    sig = model_json.pop("signature")
    # gear's form: keys are Keras names, `name` the node (with :0)
    model_json["userDefinedMetadata"] = {
        "signature": {
            "outputs": {
                "age_output": {"name": "Identity:0"},
                "other": sig["outputs"]["gender_pred/Sigmoid:0"],
            }
        }
    }
    model = tfjs.convert(model_json, files.__getitem__)
    assert [o.name for o in model.graph.output] == ["Identity", "gender_pred/Sigmoid"]
    del model_json["userDefinedMetadata"]
    model = tfjs.convert(model_json, files.__getitem__)  # no signature: the terminal nodes
    assert [o.name for o in model.graph.output] == ["gender_pred/Sigmoid", "Identity"]


def test_deterministic() -> None:
    model_json, files = _small_model()
    first = tfjs.convert(model_json, files.__getitem__).SerializeToString()
    second = tfjs.convert(model_json, dict(files).__getitem__).SerializeToString()
    assert first == second


def test_weight_paths_and_groups() -> None:
    """Manifest order, each path once; a group's files are concatenated (a weight may
    straddle two shards), each group read from its own buffer."""
    a = np.arange(6, dtype=np.float32)
    b = np.arange(10, 14, dtype=np.float32)
    blob = a.tobytes()
    model_json: dict[str, Any] = {
        "format": "graph-model",
        "modelTopology": {
            "node": [
                {
                    "name": "x",
                    "op": "Placeholder",
                    "attr": {
                        "dtype": a_type(),
                        "shape": {"shape": {"dim": [{"size": "-1"}, {"size": "6"}]}},
                    },
                },
                {"name": "a", "op": "Const", "attr": {}},
                {"name": "b", "op": "Const", "attr": {}},
                {"name": "y", "op": "Mul", "input": ["x", "a"], "attr": {}},
                {"name": "z", "op": "Add", "input": ["y", "b:0"], "attr": {}},
            ]
        },
        "weightsManifest": [
            {
                "paths": ["g1-shard1of2.bin", "g1-shard2of2.bin"],
                "weights": [{"name": "a", "shape": [6], "dtype": "float32"}],
            },
            {
                "paths": ["g2.bin"],
                "weights": [
                    {"name": "b", "shape": [2, 1], "dtype": "float32"},
                    {"name": "unused", "shape": [2], "dtype": "int32"},
                ],
            },
        ],
    }
    files = {
        "g1-shard1of2.bin": blob[:10],
        "g1-shard2of2.bin": blob[10:],
        "g2.bin": b[:2].tobytes() + np.asarray([7, 8], dtype=np.int32).tobytes(),
    }
    assert tfjs.weight_paths(model_json) == ["g1-shard1of2.bin", "g1-shard2of2.bin", "g2.bin"]
    read: list[str] = []

    def reader(path: str) -> bytes:
        read.append(path)
        return files[path]

    model = tfjs.convert(model_json, reader)
    assert read == ["g1-shard1of2.bin", "g1-shard2of2.bin", "g2.bin"]
    x = np.ones((1, 6), dtype=np.float32)
    (z,) = session(model).run(None, {"x": x})
    np.testing.assert_array_equal(z, a * x + b[:2].reshape(2, 1))
    assert tfjs.weight_paths({"modelTopology": {"node": []}}) == []


# --------------------------------------------------------------------------- errors


def _one_line_error(model_json: dict[str, Any], files: dict[str, bytes], *parts: str) -> str:
    with pytest.raises(TfjsError) as info:
        tfjs.convert(model_json, files.__getitem__)
    message = str(info.value)
    assert "\n" not in message and message, message
    assert isinstance(info.value, AgegenderError)
    for part in parts:
        assert part in message, message
    return message


def test_unknown_op() -> None:
    g = tg.TfjsGraph()
    g.placeholder("x", [-1, 4])
    g.op("Erf", "head/erf", ["x"])
    _one_line_error(g.model_json(["head/erf"]), g.files(), "head/erf", "Erf", "not supported")


def test_short_weights() -> None:
    g = tg.TfjsGraph()
    g.placeholder("x", [-1, 4])
    g.const("w", np.ones(4))
    g.op("Mul", "y", ["x", "w"])
    files = {"weights.bin": g.files()["weights.bin"][:-1]}
    _one_line_error(g.model_json(["y"]), files, "'w'", "weights.bin", "15")


@pytest.mark.parametrize(
    ("quantization", "dtype", "reason"),
    [
        ({"dtype": "int4"}, "float32", "'int4' is not uint8, uint16 or float16"),
        ({"dtype": "uint8", "scale": 0.1}, "float32", "needs numeric 'scale' and 'min'"),
        ({"dtype": "float16"}, "int32", "float16 quantization only applies to float32"),
        (None, "complex64", "dtype 'complex64'"),
    ],
)
def test_bad_weight_specs(quantization: dict[str, Any] | None, dtype: str, reason: str) -> None:
    g = tg.TfjsGraph()
    g.placeholder("x", [-1, 4])
    g.const("w", np.ones(4))
    g.op("Mul", "y", ["x", "w"])
    model_json = g.model_json(["y"])
    spec = model_json["weightsManifest"][0]["weights"][0]
    spec["dtype"] = dtype
    if quantization is not None:
        spec["quantization"] = quantization
    _one_line_error(model_json, {"weights.bin": bytes(64)}, "weight 'w'", reason)


def _graph_with(op: str, **attrs: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    g = tg.TfjsGraph()
    g.placeholder("x", [-1, 6, 6, 3])
    if op == "StridedSlice":
        for name, v in (("b", [0, 1]), ("e", [0, 2]), ("s", [1, 1])):
            g.const(name, np.asarray(v, dtype=np.int32))
        g.op(op, "n", ["x", "b", "e", "s"], **attrs)
    elif op == "Conv2D":
        g.const("w", np.ones((1, 1, 3, 2)))
        g.op(op, "n", ["x", "w"], **attrs)
    elif op == "Conv2D-runtime-filter":
        g.op("Conv2D", "n", ["x", "x"], **attrs)
    elif op == "Reshape":
        g.const("shape", np.asarray([0, -1], dtype=np.int32))
        g.op(op, "n", ["x", "shape"])
    elif op == "_FusedConv2D":
        g.const("w", np.ones((1, 1, 3, 2)))
        g.const("b", np.ones(2))
        g.op(op, "n", ["x", "w", "b"], **attrs)
    return g.model_json(["n"]), g.files()


@pytest.mark.parametrize(
    ("op", "attrs", "reason"),
    [
        ("StridedSlice", {"ellipsis_mask": a_i(1)}, "ellipsis_mask=1"),
        ("StridedSlice", {"new_axis_mask": a_i(2)}, "new_axis_mask=2"),
        ("StridedSlice", {"shrink_axis_mask": a_i(1), "begin_mask": a_i(1)}, "shrink_axis_mask"),
        ("Conv2D", conv_attrs() | {"data_format": a_s("NCHW")}, "data_format NCHW"),
        ("Conv2D", conv_attrs(padding="FULL"), "padding 'FULL'"),
        ("Conv2D", conv_attrs() | {"strides": a_ints([2, 1, 1, 1])}, "strides [2, 1, 1, 1]"),
        ("Conv2D-runtime-filter", conv_attrs(), "must be a constant"),
        ("Reshape", {}, "has a 0"),
        (
            "_FusedConv2D",
            conv_attrs() | {"fused_ops": a_strs(["BiasAdd", "Gelu"]), "num_args": a_i(1)},
            "'Gelu'",
        ),
        (
            "_FusedConv2D",
            conv_attrs() | {"fused_ops": a_strs(["BiasAdd"]), "num_args": a_i(3)},
            "num_args 3",
        ),
    ],
)
def test_unsupported_attributes(op: str, attrs: dict[str, Any], reason: str) -> None:
    model_json, files = _graph_with(op, **attrs)
    _one_line_error(model_json, files, "node 'n'", reason)


def test_malformed_models() -> None:
    _one_line_error({"format": "layers-model", "modelTopology": {}}, {}, "layers-model")
    _one_line_error({"modelTopology": {"config": {}}}, {}, "no node list")
    g = tg.TfjsGraph()
    g.placeholder("x", [-1, 4])
    g.op("Mul", "y", ["x", "missing"])
    _one_line_error(g.model_json(["y"]), g.files(), "'missing'")
    model_json = g.model_json(["y"])
    model_json["modelTopology"]["node"].append({"name": "missing", "op": "Const", "attr": {}})
    _one_line_error(model_json, g.files(), "node 'missing' (Const)", "no value")


def test_fused_batch_norm_folded() -> None:
    """_FusedConv2D with FusedBatchNorm (TensorFlow writes it; TF.js refuses it) is folded
    into the convolution's weights and bias."""
    rng = np.random.default_rng(4)
    g = tg.TfjsGraph()
    x = _rand(rng, 2, 5, 5, 3)
    g.placeholder("x", [-1, 5, 5, 3])
    g.const("w", _rand(rng, 3, 3, 3, 4))
    scale, offset, mean = _rand(rng, 4), _rand(rng, 4), _rand(rng, 4)
    var = rng.uniform(0.5, 2, 4).astype(np.float32)
    for name, v in (("scale", scale), ("offset", offset), ("mean", mean), ("var", var)):
        g.const(name, v)
    attrs = conv_attrs() | {
        "fused_ops": a_strs(["FusedBatchNorm", "Relu"]),
        "num_args": a_i(4),
        "epsilon": a_f(0.001),
    }
    g.op("_FusedConv2D", "y", ["x", "w", "scale", "offset", "mean", "var"], **attrs)
    conv = np_conv(x, g.decoded["w"])
    want = np.maximum((conv - mean) / np.sqrt(var + 0.001) * scale + offset, 0)
    got = run(convert(g, ["y"]), x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- real topologies


@pytest.fixture(scope="module", params=tg.FIXTURE_MODELS)
def standin(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    fixture = tg.fixture(request.param)
    return request.param, fixture["model"], tg.random_weights(fixture, seed=7)


EXPECTED_IO = {
    "faceres": (
        "input_1",
        [224, 224, 3],
        {"age_pred/Softmax": 100, "gender_pred/Sigmoid": 1, "global_pooling/Mean": 1024},
    ),
    "gear": ("input_1", [198, 198, 3], {"Identity": 7, "Identity_1": 2, "Identity_2": 5}),
    "age": ("input_1", [64, 64, 3], {"Identity": 1}),
    "gender": ("input_1", [64, 64, 1], {"Identity": 2}),
}


def test_standin_converts(standin: tuple[str, dict[str, Any], dict[str, bytes]]) -> None:
    """The real topologies convert, check, keep their I/O names, and convert the same
    bytes twice (a card pins the sha256 of the converted file)."""
    name, model_json, files = standin
    model = tfjs.convert(model_json, files.__getitem__, name=name)
    again = tfjs.convert(model_json, files.__getitem__, name=name)
    assert model.SerializeToString() == again.SerializeToString()
    input_name, hwc, outputs = EXPECTED_IO[name]
    (inp,) = model.graph.input
    assert inp.name == input_name
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", *hwc]
    assert tfjs.weight_paths(model_json) == [f"{name}.bin"]
    sess = session(model)
    x = np.random.default_rng(0).random((2, *hwc), dtype=np.float32)
    results = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, {input_name: x}), strict=True)
    )
    assert {k: v.shape for k, v in results.items()} == {k: (2, n) for k, n in outputs.items()}
    assert all(np.isfinite(v).all() for v in results.values())
    if name == "faceres":  # ReLU6 as Clip; NHWC in, so one input Transpose survives ORT
        assert sum(n.op_type == "Clip" for n in model.graph.node) == 27


# --------------------------------------------------------------------------- TF.js parity

TFJS_MISSING = tg.tfjs_missing()
needs_tfjs = pytest.mark.skipif(TFJS_MISSING is not None, reason=f"TF.js parity: {TFJS_MISSING}")


@pytest.fixture(scope="module")
def tfjs_op_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Case, dict[str, F32]]]:
    """Every op case run by TF.js, in one node process."""
    work = tmp_path_factory.mktemp("tfjs_ops")
    cases: dict[str, Case] = {}
    jobs = []
    for name in sorted(CASES):
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
        c = CASES[name](np.random.default_rng(seed))
        cases[name] = c
        path = tg.write_model(
            work / name.replace("/", "_"), c.graph.model_json(c.outputs), c.graph.files()
        )
        jobs.append(tg.TfjsJob(path, "x", c.x, c.outputs))
    results = tg.run_tfjs(jobs, work / "run")
    return {name: (c, r) for (name, c), r in zip(cases.items(), results, strict=True)}


@needs_tfjs
def test_ops_match_tfjs(tfjs_op_results: dict[str, tuple[Case, dict[str, F32]]]) -> None:
    failures = []
    for name, (c, want) in tfjs_op_results.items():
        got = run(convert(c.graph, c.outputs), c.x)
        for out in c.outputs:
            if got[out].shape != want[out].shape or not np.allclose(
                got[out], want[out], rtol=1e-5, atol=c.atol
            ):
                diff = (
                    np.abs(got[out] - want[out]).max()
                    if got[out].shape == want[out].shape
                    else "shape"
                )
                failures.append(
                    f"{name}:{out} {got[out].shape} vs {want[out].shape} max diff {diff}"
                )
    assert not failures, failures


@needs_tfjs
def test_standins_match_tfjs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """faceres, gear, SSR-Net age, oarriaga gender (real topologies, random weights): TF.js
    and ONNX Runtime on the converted graph agree on the same random batch."""
    work = tmp_path_factory.mktemp("tfjs_standins")
    rng = np.random.default_rng(11)
    jobs, sessions = [], []
    for name in tg.FIXTURE_MODELS:
        fixture = tg.fixture(name)
        files = tg.random_weights(fixture, seed=5)
        model = tfjs.convert(fixture["model"], files.__getitem__)
        input_name, hwc, outputs = EXPECTED_IO[name]
        x = rng.random((2, *hwc), dtype=np.float32)
        jobs.append(
            tg.TfjsJob(
                tg.write_model(work / name, fixture["model"], files), input_name, x, sorted(outputs)
            )
        )
        sessions.append((name, session(model), x, input_name))
    results = tg.run_tfjs(jobs, work / "run")
    for (name, sess, x, input_name), want in zip(sessions, results, strict=True):
        names = sorted(want)
        got = dict(zip(names, sess.run(names, {input_name: x}), strict=True))
        for out in names:
            scale = max(1.0, float(np.abs(want[out]).max()))
            np.testing.assert_allclose(
                got[out], want[out], rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name}:{out}"
            )
