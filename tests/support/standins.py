"""Stand-in ONNX graphs for tests and benchmarks: one generator, two families.

**Zoo topologies** (:func:`vgg16`, :func:`googlenet`, :func:`build`, and the command line
below). The zoo's DEX (VGG-16) and GoogLeNet files cannot be downloaded on the project's
machines, and weights must never be committed, so tests and benchmarks generate graphs
of the same shape instead. They copy what the Caffe-to-ONNX converter used for the zoo
(asiryan/caffe-onnx) writes: input ``input`` of fixed shape 1x3x224x224, outputs named
after the Caffe tops with a ``_Y`` suffix, every fully connected layer as a Reshape whose
shape initializer bakes in batch 1 followed by a Gemm, initializers also declared as graph
inputs, value_info with fixed shapes for every intermediate, softmax at the end. Opset 5
(the seed card's) and opset 11 (the zoo's current files) variants are written; opset 5
uses the legacy attributes (Gemm ``broadcast``) that ONNX Runtime cannot run without the
upgrade in :mod:`agegender.onnxgraph.opsets`.

Weights are random (seeded) with He scaling so activations neither vanish nor explode,
and the last layer is scaled down so the softmax is not one-hot: a stand-in says
nothing about faces, only about shapes, speed and plumbing.

**Card-shaped graphs** (:func:`standin_graph`, :func:`peaked_graph`): tiny graphs with a
card's input and output (names, size, layout, fixed or free batch, softmax or logits)
whose output depends on the pixels; a peaked one puts nearly all its probability on one
chosen index, so which index a result shows tells a test which file ran for which role.

    python tests/support/standins.py --kind vgg16 --outputs 101 --width full -o vgg16.onnx
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from agegender.cards import ModelCard

Width = Literal["narrow", "full"]

# IR versions of the ONNX releases the zoo files were written with (1.5 and 1.6);
# ONNX Runtime 1.30 refuses the IR 14 that onnx 1.23 writes by default.
IR_VERSION = {5: 5, 11: 6}
INPUT_NAME = "input"
INPUT_SIZE = 224

# VGG-16's convolution widths per stage (the zoo's DEX files are VGG-16 "D").
VGG16_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG16_FC = 4096
NARROW_DIVISOR = 16


@dataclass
class _Builder:
    """Collects nodes, initializers and shapes the way caffe-onnx lays them out."""

    opset: int
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)

    def param(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def conv(self, name: str, x: str, out_ch: int, k: int, stride: int = 1, pad: int = 0) -> str:
        n, c, h, w = self.shapes[x]
        fan_in = c * k * k
        weight = self.rng.standard_normal((out_ch, c, k, k), dtype=np.float32)
        weight *= np.float32(np.sqrt(2.0 / fan_in))
        bias = np.zeros(out_ch, np.float32)
        y = f"{name}_Y"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.param(f"{name}_W", weight), self.param(f"{name}_b", bias)],
                [y],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
                dilations=[1, 1],
                group=1,
            )
        )
        self.shapes[y] = [
            n,
            out_ch,
            (h + 2 * pad - k) // stride + 1,
            (w + 2 * pad - k) // stride + 1,
        ]
        return y

    def relu(self, name: str, x: str) -> str:
        y = f"{name}_Y"
        self.nodes.append(helper.make_node("Relu", [x], [y], name=name))
        self.shapes[y] = list(self.shapes[x])
        return y

    def pool(
        self,
        name: str,
        x: str,
        k: int,
        stride: int,
        pads: Sequence[int] = (0, 0, 0, 0),
        op: str = "MaxPool",
    ) -> str:
        n, c, h, w = self.shapes[x]
        y = f"{name}_Y"
        self.nodes.append(
            helper.make_node(
                op,
                [x],
                [y],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=list(pads),
            )
        )
        self.shapes[y] = [
            n,
            c,
            (h + pads[0] + pads[2] - k) // stride + 1,
            (w + pads[1] + pads[3] - k) // stride + 1,
        ]
        return y

    def lrn(self, name: str, x: str) -> str:
        y = f"{name}_Y"
        self.nodes.append(
            helper.make_node("LRN", [x], [y], name=name, size=5, alpha=1e-4, beta=0.75, bias=1.0)
        )
        self.shapes[y] = list(self.shapes[x])
        return y

    def concat(self, name: str, xs: Sequence[str]) -> str:
        y = f"{name}_Y"
        self.nodes.append(helper.make_node("Concat", list(xs), [y], name=name, axis=1))
        first = self.shapes[xs[0]]
        self.shapes[y] = [first[0], sum(self.shapes[x][1] for x in xs), first[2], first[3]]
        return y

    def dropout(self, name: str, x: str) -> str:
        y = f"{name}_Y"
        self.nodes.append(helper.make_node("Dropout", [x], [y], name=name, ratio=0.5))
        self.shapes[y] = list(self.shapes[x])
        return y

    def inner_product(self, name: str, x: str, out: int, gain: float = 1.0) -> str:
        """Caffe InnerProduct as caffe-onnx writes it: Reshape to [1, C*H*W], then Gemm."""
        in_shape = self.shapes[x]
        flat = int(np.prod(in_shape[1:]))
        reshaped = f"{name}_Reshape_Y"
        shape = self.param(f"{name}_reshape_shape", np.array([in_shape[0], flat], np.int64))
        self.nodes.append(
            helper.make_node("Reshape", [x, shape], [reshaped], name=f"{name}_Reshape")
        )
        self.shapes[reshaped] = [in_shape[0], flat]
        weight = self.rng.standard_normal((out, flat), dtype=np.float32)
        weight *= np.float32(gain * np.sqrt(2.0 / flat))
        bias = np.zeros(out, np.float32)
        y = f"{name}_Gemm_Y"
        gemm = helper.make_node(
            "Gemm",
            [reshaped, self.param(f"{name}_W", weight), self.param(f"{name}_b", bias)],
            [y],
            name=f"{name}_Gemm",
            alpha=1.0,
            beta=1.0,
            transA=0,
            transB=1,
        )
        if self.opset < 7:  # Gemm-1/6 broadcast C only when told to
            gemm.attribute.append(helper.make_attribute("broadcast", 1))
        self.nodes.append(gemm)
        self.shapes[y] = [in_shape[0], out]
        return y

    def softmax(self, name: str, x: str) -> str:
        y = f"{name}_Y"
        self.nodes.append(helper.make_node("Softmax", [x], [y], name=name, axis=1))
        self.shapes[y] = list(self.shapes[x])
        return y

    def model(self, graph_name: str, output: str) -> onnx.ModelProto:
        inputs = [
            helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, self.shapes[INPUT_NAME])
        ]
        # caffe-onnx declares every parameter as a graph input too (pre-IR-4 style).
        inputs += [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits
        ]
        outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, self.shapes[output])]
        value_info = [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in self.shapes.items()
            if name not in (INPUT_NAME, output)
        ]
        graph = helper.make_graph(
            self.nodes, graph_name, inputs, outputs, self.inits, value_info=value_info
        )
        model = helper.make_model(
            graph,
            producer_name="agegender.standins",
            opset_imports=[helper.make_opsetid("", self.opset)],
        )
        model.ir_version = IR_VERSION[self.opset]
        return model


def _builder(opset: int, seed: int) -> _Builder:
    if opset not in IR_VERSION:
        raise ValueError(f"opset must be one of {sorted(IR_VERSION)}, got {opset}")
    builder = _Builder(opset=opset, rng=np.random.default_rng(seed))
    builder.shapes[INPUT_NAME] = [1, 3, INPUT_SIZE, INPUT_SIZE]
    return builder


def vgg16(
    *, outputs: int = 101, opset: int = 11, width: Width = "narrow", seed: int = 0
) -> onnx.ModelProto:
    """The DEX topology: 13 Conv+ReLU in 5 stages with MaxPool, fc6/fc7 (+Dropout), fc8, Softmax.

    ``width="full"`` has VGG-16's real widths (138 M parameters, about 15.5 GFLOPs a face);
    ``"narrow"`` divides every width by 16 for fast tests.
    """
    div = 1 if width == "full" else NARROW_DIVISOR
    b = _builder(opset, seed)
    x = INPUT_NAME
    for stage, (channels, convs) in enumerate(VGG16_STAGES, start=1):
        for i in range(1, convs + 1):
            x = b.conv(f"conv{stage}_{i}", x, channels // div, 3, pad=1)
            x = b.relu(f"relu{stage}_{i}", x)
        x = b.pool(f"pool{stage}", x, 2, 2)
    for fc in ("fc6", "fc7"):
        x = b.inner_product(fc, x, VGG16_FC // div)
        x = b.relu(fc.replace("fc", "relu"), x)
        x = b.dropout(fc.replace("fc", "drop"), x)
    x = b.inner_product("fc8-101" if outputs == 101 else "fc8-2", x, outputs, gain=0.05)
    x = b.softmax("prob", x)
    return b.model("vgg16", x)


def _inception(b: _Builder, name: str, x: str, widths: tuple[int, int, int, int, int, int]) -> str:
    """One GoogLeNet inception block: 1x1 | 1x1>3x3 | 1x1>5x5 | pool>1x1, concatenated."""
    c1, r3, c3, r5, c5, cp = widths
    a = b.relu(f"{name}/relu_1x1", b.conv(f"{name}/1x1", x, c1, 1))
    t = b.relu(f"{name}/relu_3x3_reduce", b.conv(f"{name}/3x3_reduce", x, r3, 1))
    t = b.relu(f"{name}/relu_3x3", b.conv(f"{name}/3x3", t, c3, 3, pad=1))
    f = b.relu(f"{name}/relu_5x5_reduce", b.conv(f"{name}/5x5_reduce", x, r5, 1))
    f = b.relu(f"{name}/relu_5x5", b.conv(f"{name}/5x5", f, c5, 5, pad=2))
    p = b.pool(f"{name}/pool", x, 3, 1, pads=(1, 1, 1, 1))
    p = b.relu(f"{name}/relu_pool_proj", b.conv(f"{name}/pool_proj", p, cp, 1))
    return b.concat(f"{name}/output", [a, t, f, p])


# GoogLeNet's first blocks (3a, 3b, 4a, 4b) and stem widths.
GOOGLENET_BLOCKS: dict[str, tuple[int, int, int, int, int, int]] = {
    "inception_3a": (64, 96, 128, 16, 32, 32),
    "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64),
    "inception_4b": (160, 112, 224, 24, 64, 64),
}


def googlenet(
    *, outputs: int = 8, opset: int = 11, width: Width = "narrow", seed: int = 0
) -> onnx.ModelProto:
    """A small GoogLeNet-like graph: the stem, four inception blocks, average pool, FC, Softmax.

    The zoo's Adience models are full GoogLeNets; this keeps the operator mix (LRN,
    Concat, padded pooling, AveragePool, Reshape+Gemm) at a fraction of the depth.
    """
    div = 1 if width == "full" else 8
    b = _builder(opset, seed)
    x = b.relu("conv1/relu_7x7", b.conv("conv1/7x7_s2", INPUT_NAME, 64 // div, 7, stride=2, pad=3))
    x = b.lrn("pool1/norm1", b.pool("pool1/3x3_s2", x, 3, 2, pads=(0, 0, 1, 1)))  # 56
    x = b.relu("conv2/relu_3x3_reduce", b.conv("conv2/3x3_reduce", x, 64 // div, 1))
    x = b.relu("conv2/relu_3x3", b.conv("conv2/3x3", x, 192 // div, 3, pad=1))
    x = b.pool("pool2/3x3_s2", b.lrn("conv2/norm2", x), 3, 2, pads=(0, 0, 1, 1))  # 28
    for name in ("inception_3a", "inception_3b"):
        x = _inception(b, name, x, tuple(w // div for w in GOOGLENET_BLOCKS[name]))  # type: ignore[arg-type]
    x = b.pool("pool3/3x3_s2", x, 3, 2, pads=(0, 0, 1, 1))  # 14
    for name in ("inception_4a", "inception_4b"):
        x = _inception(b, name, x, tuple(w // div for w in GOOGLENET_BLOCKS[name]))  # type: ignore[arg-type]
    x = b.pool("pool4/3x3_s2", x, 3, 2, pads=(0, 0, 1, 1))  # 7
    x = b.pool("pool5/7x7_s1", x, 7, 1, op="AveragePool")
    x = b.dropout("pool5/drop_7x7_s1", x)
    x = b.inner_product(f"loss3/classifier_{outputs}", x, outputs, gain=0.05)
    x = b.softmax("prob", x)
    return b.model("googlenet", x)


KINDS = {"vgg16": vgg16, "googlenet": googlenet}


def build(
    kind: str,
    *,
    outputs: int | None = None,
    opset: int = 11,
    width: Width = "narrow",
    seed: int = 0,
) -> onnx.ModelProto:
    """A stand-in by kind name ("vgg16" or "googlenet"); default outputs 101 and 8."""
    if kind not in KINDS:
        raise ValueError(f"unknown stand-in kind {kind!r}; known: {', '.join(KINDS)}")
    default = 101 if kind == "vgg16" else 8
    return KINDS[kind](outputs=outputs or default, opset=opset, width=width, seed=seed)


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write a stand-in; full VGG-16 (about 550 MB) fits the 2 GB protobuf limit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


# -- card-shaped graphs -----------------------------------------------------------------


def card_graph(
    *,
    input_shape: Sequence[int | str],
    width: int,
    softmax: bool = True,
    input_name: str = "images",
    output_name: str = "probabilities",
    nhwc: bool = False,
    seed: int = 0,
    peak: int | None = None,
) -> onnx.ModelProto:
    """A small graph with a card's input/output shapes whose output depends on the pixels.

    (NHWC -> NCHW) -> 8x8 average pooling -> flatten -> fixed random linear layer
    (-> softmax). With ``input_shape[0] == 1`` the batch is fixed to 1, as in the zoo's
    exports. With `peak`, the linear layer is nearly zero and its bias puts a logit of 30
    at index `peak`, so the softmax is close to one-hot there whatever the pixels.
    """
    rng = np.random.default_rng(seed)
    nodes = []
    x = input_name
    if nhwc:
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
        h, w = input_shape[1], input_shape[2]
    else:
        h, w = input_shape[2], input_shape[3]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise ValueError(f"height and width must be fixed, got {list(input_shape)}")
    kh, kw = h // 8, w // 8
    nodes.append(
        helper.make_node("AveragePool", [x], ["pooled"], kernel_shape=[kh, kw], strides=[kh, kw])
    )
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    features = 3 * (h // kh) * (w // kw)
    if peak is None:
        weight = rng.normal(0, 0.3, (features, width)).astype(np.float32)
        bias = rng.normal(0, 1.0, (width,)).astype(np.float32)
    else:
        if not 0 <= peak < width:
            raise ValueError(f"peak {peak} is outside the output width {width}")
        weight = (rng.standard_normal((features, width)) * 1e-4).astype(np.float32)
        bias = np.zeros(width, np.float32)
        bias[peak] = 30.0
    logits = output_name if not softmax else "logits"
    nodes.append(helper.make_node("Gemm", ["flat", "W", "B"], [logits]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "standin",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [input_shape[0], width])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # ONNX Runtime refuses onnx's newest IR versions
    onnx.checker.check_model(model)
    return model


# A CenterFace detector card for the stand-in below (format with max_side; more
# [output] lines may follow).
CENTERFACE_CARD = """\
id = "centerface"
task = "face-detection"
title = "stand-in"
[source]
file = "centerface.onnx"
[input]
channels = "RGB"
multiple = 32
max_side = {max_side}
[output]
decoder = "centerface"
stride = 4
threshold = 0.5
nms_iou = 0.3
outputs = {{ heatmap = "537", scale = "538", offset = "539", landmarks = "540" }}
"""


def centerface_graph(
    log_scale: float | None = None, points: Sequence[float] | None = None
) -> onnx.ModelProto:
    """CenterFace's outputs for a 1x3x32x32 input: heatmap = a cell's brightness / 255;
    scale 0 (or `log_scale` in both channels), offset 0, landmarks 0 (or the 10 `points`,
    y then x of each in box units, the same in every cell)."""
    const = {"zero": np.zeros(1, np.float32), "k": np.full(1, 1 / 255, np.float32)}
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
        ),
        helper.make_node("ReduceMean", ["pooled"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "k"], ["537"]),
        helper.make_node("Mul", ["mean", "zero"], ["z"]),
        helper.make_node("Concat", ["z", "z"], ["539"], axis=1),
    ]
    for name, channels, value in (("538", 2, log_scale), ("540", 10, points)):
        if value is None:
            nodes.append(helper.make_node("Concat", ["z"] * channels, [name], axis=1))
            continue
        const[f"c{name}"] = np.broadcast_to(
            np.asarray(value, np.float32).reshape(1, -1, 1, 1), (1, channels, 1, 1)
        ).copy()
        nodes.append(helper.make_node("Concat", ["z"] * channels, [f"z{name}"], axis=1))
        nodes.append(helper.make_node("Add", [f"z{name}", f"c{name}"], [name]))
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, 8, 8])
        for name, c in (("537", 1), ("538", 2), ("539", 2), ("540", 10))
    ]
    graph = helper.make_graph(
        nodes,
        "centerface-standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 32, 32])],
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in const.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def faceres_like_graph(path: str | Path, size: int = 224, seed: int = 5) -> Path:
    """A graph with faceres' signature: ``input_1`` N x size x size x 3 (NHWC), a 100-age
    softmax ``age_pred/Softmax``, a one-column sigmoid ``gender_pred/Sigmoid`` and the
    features output ``global_pooling/Mean``; both heads read the pixels' channel means."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("ReduceMean", ["input_1"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["pooled", "Wa", "Ba"], ["age_logits"]),
        helper.make_node("Softmax", ["age_logits"], ["age_pred/Softmax"], axis=1),
        helper.make_node("Gemm", ["pooled", "Wg", "Bg"], ["gender_logit"]),
        helper.make_node("Sigmoid", ["gender_logit"], ["gender_pred/Sigmoid"]),
        helper.make_node("ReduceMean", ["input_1"], ["global_pooling/Mean"], axes=[1, 2]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.05, (3, 100)).astype(np.float32), "Wa"),
        numpy_helper.from_array(np.zeros(100, np.float32), "Ba"),
        numpy_helper.from_array(rng.normal(0, 0.05, (3, 1)).astype(np.float32), "Wg"),
        numpy_helper.from_array(np.zeros(1, np.float32), "Bg"),
    ]
    graph = helper.make_graph(
        nodes,
        "faceres-like",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", size, size, 3])],
        [
            helper.make_tensor_value_info("gender_pred/Sigmoid", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("global_pooling/Mean", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("age_pred/Softmax", TensorProto.FLOAT, ["N", 100]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return save(model, path)


def standin_graph(
    path: str | Path,
    *,
    input_shape: Sequence[int | str],
    width: int,
    softmax: bool = True,
    input_name: str = "images",
    output_name: str = "probabilities",
    nhwc: bool = False,
    seed: int = 0,
) -> Path:
    """:func:`card_graph` written to `path`."""
    model = card_graph(
        input_shape=input_shape,
        width=width,
        softmax=softmax,
        input_name=input_name,
        output_name=output_name,
        nhwc=nhwc,
        seed=seed,
    )
    return save(model, path)


def peaked_graph(card: ModelCard, peak: int) -> bytes:
    """The bytes of a graph shaped like `card`'s file (``input`` 1x3xHxW -> ``prob``)
    whose output peaks at index `peak`."""
    model = card_graph(
        input_shape=[1, 3, card.input.height, card.input.width],
        width=card.output.width,
        input_name="input",
        output_name="prob",
        seed=peak,
        peak=peak,
    )
    return model.SerializeToString()


def conv_graph(
    *,
    size: int = 32,
    width: int = 2,
    seed: int = 0,
    opset: int = 13,
    fixed_batch: bool = False,
    input_name: str = "images",
    output_name: str = "probabilities",
) -> onnx.ModelProto:
    """A small convolutional classifier (conv, relu, conv, relu, global pool, gemm,
    softmax) with a card's NCHW input: what static INT8 quantization acts on (per-channel
    conv weights, activation ranges), for tests of quantized copies against their fp32
    originals. The input expects pixels scaled to about [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(0, 1, (8, 3, 3, 3)) * np.sqrt(2 / 27)).astype(np.float32)
    w2 = (rng.normal(0, 1, (8, 8, 3, 3)) * np.sqrt(2 / 72)).astype(np.float32)
    fc = rng.normal(0, 1.0, (8, width)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b2"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.zeros(width, np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", [input_name, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=1),
    ]
    batch: int | str = 1 if fixed_batch else "N"
    graph = helper.make_graph(
        nodes,
        "conv-standin",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def faceres_graph(*, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """faceres-deep's signature and layer kinds, small: NHWC input ``input_1`` (Caffe-style
    BGR pixels, mean subtracted), Transpose to NCHW, conv + ReLU6 (Clip), depthwise conv
    with its batch norm as Mul and Add (as the TF.js conversion leaves it), pointwise conv
    + ReLU6, spatial mean, a Gemm + ReLU feature layer and two heads: ``age_pred/Softmax``
    (100 ages) and ``gender_pred/Sigmoid`` (one column). Node names end in ``#Op`` as the
    converter writes them, so a recipe can exclude the first convolution by name."""
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return rng.normal(0, scale, shape).astype(np.float32)

    inits = {
        "w1": normal((8, 3, 3, 3), np.sqrt(2 / 27) / 60),  # pixels are about +-120
        "b1": normal((8,), 0.1),
        "wd": normal((8, 1, 3, 3), np.sqrt(2 / 9)),
        "bn_mul": np.abs(normal((1, 8, 1, 1), 1.0)) + 0.5,
        "bn_add": normal((1, 8, 1, 1), 0.1),
        "wp": normal((16, 8, 1, 1), np.sqrt(2 / 8)),
        "bp": normal((16,), 0.1),
        "fc": normal((16, 16), np.sqrt(2 / 16)),
        "fcb": normal((16,), 0.1),
        "age": normal((16, 100), 0.5),
        "ageb": np.zeros(100, np.float32),
        "gender": normal((16, 1), 1.0),
        "genderb": np.zeros(1, np.float32),
        "lo": np.array(0, np.float32),
        "hi": np.array(6, np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2], name="in#T"),
        helper.make_node(
            "Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1] * 4, strides=[2, 2], name="conv1#Conv"
        ),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu1#Clip"),
        helper.make_node("Conv", ["r1", "wd"], ["d1"], pads=[1] * 4, group=8, name="dw#Conv"),
        helper.make_node("Mul", ["d1", "bn_mul"], ["m1"], name="dw_bn#Mul"),
        helper.make_node("Add", ["m1", "bn_add"], ["a1"], name="dw_bn#Add"),
        helper.make_node("Clip", ["a1", "lo", "hi"], ["r2"], name="relu2#Clip"),
        helper.make_node("Conv", ["r2", "wp", "bp"], ["p1"], name="pw#Conv"),
        helper.make_node("Clip", ["p1", "lo", "hi"], ["r3"], name="relu3#Clip"),
        helper.make_node("ReduceMean", ["r3"], ["pooled"], axes=[2, 3], keepdims=0, name="pool"),
        helper.make_node("Gemm", ["pooled", "fc", "fcb"], ["f"], name="feats#Gemm"),
        helper.make_node("Relu", ["f"], ["feats"], name="feats#Relu"),
        helper.make_node("Gemm", ["feats", "gender", "genderb"], ["g"], name="gender#Gemm"),
        helper.make_node("Sigmoid", ["g"], ["gender_pred/Sigmoid"], name="gender#Sigmoid"),
        helper.make_node("Gemm", ["feats", "age", "ageb"], ["a"], name="age#Gemm"),
        helper.make_node("Softmax", ["a"], ["age_pred/Softmax"], axis=1, name="age#Softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "faceres-standin",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", size, size, 3])],
        [
            helper.make_tensor_value_info("gender_pred/Sigmoid", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("age_pred/Softmax", TensorProto.FLOAT, ["N", 100]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/support/standins.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kind", choices=sorted(KINDS), default="vgg16")
    parser.add_argument(
        "--outputs", type=int, help="output width (default 101 for vgg16, 8 for googlenet)"
    )
    parser.add_argument("--opset", type=int, choices=sorted(IR_VERSION), default=11)
    parser.add_argument("--width", choices=("narrow", "full"), default="narrow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True, help="file to write")
    args = parser.parse_args(argv)
    if args.outputs is not None and args.outputs < 1:
        parser.error("--outputs must be positive")
    path = save(
        build(args.kind, outputs=args.outputs, opset=args.opset, width=args.width, seed=args.seed),
        args.output,
    )
    print(f"{path}: {args.kind} {args.width}, opset {args.opset}, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
