"""TensorFlow.js graph models (``model.json`` + weight shards) as ONNX graphs, without TensorFlow.

Why this exists: several face models (vladmandic/human's ``faceres``, ``gear``, SSR-Net
``age``/``gender``, oarriaga's ``gender``) are published only as TF.js graph models, and
the package runs everything on ONNX Runtime. Installing TensorFlow (and tf2onnx) to
convert four small CNNs would dwarf the package, so this module reads the TF.js format
directly: the graph is TensorFlow's ``GraphDef`` as JSON protobuf, the weights are the
manifest's raw little-endian arrays (optionally quantised). Only the ops these graphs use
are implemented; anything else is a one-line :class:`TfjsError` naming the node and op.

Semantics kept from TensorFlow (and checked against TF.js itself in the tests):

- the graph stays NHWC (a card feeds NHWC); convolutions and pools run in ONNX's NCHW
  inside a Transpose pair;
- ``SAME`` padding puts the odd extra pixel at the bottom/right (ONNX ``SAME_UPPER``);
  ``AvgPool`` leaves padding out of the average (``count_include_pad=0``);
- weights are decoded exactly as ``tf.io.decodeWeights`` does (float16 halves widened,
  ``uint8``/``uint16`` affine ``q * scale + min`` computed in double and rounded to
  float32, ``Math.round`` for int32).

The output is deterministic (same ``model.json`` and weights -> byte-identical
``ModelProto``) because a model card pins the sha256 of the converted file.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from ..errors import TfjsError

__all__ = ["IR_VERSION", "OPSET", "PRODUCER", "TfjsError", "convert", "weight_paths"]

OPSET = 13
# IR 7 is the version onnx pairs with opset 13; every ONNX Runtime the package accepts
# (>= 1.17) loads it, and pinning it keeps the bytes (and the card's sha256) stable
# across onnx releases whose default IR version moves.
IR_VERSION = 7
PRODUCER = "agegender-tfjs"
PRODUCER_VERSION = "1"

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)


# --------------------------------------------------------------------------- manifest


def _manifest(model_json: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    manifest = model_json.get("weightsManifest")
    if manifest is None:
        return []
    if not isinstance(manifest, list) or not all(isinstance(g, Mapping) for g in manifest):
        raise TfjsError("model.json: weightsManifest is not a list of groups")
    return manifest


def weight_paths(model_json: Mapping[str, Any]) -> list[str]:
    """The weight files the manifest names, in manifest order (``["faceres.bin"]``).

    The store fetches exactly these (relative to ``model.json``) before :func:`convert`;
    a path named twice is listed once.
    """
    paths: list[str] = []
    for index, group in enumerate(_manifest(model_json)):
        group_paths = group.get("paths", [])
        if not isinstance(group_paths, list) or not all(isinstance(p, str) for p in group_paths):
            raise TfjsError(f"model.json: weightsManifest[{index}].paths is not a list of strings")
        for path in group_paths:
            if path not in paths:
                paths.append(path)
    return paths


_DTYPE_BYTES = {"float32": 4, "int32": 4, "bool": 1, "float16": 2, "uint16": 2, "uint8": 1}
_NUMPY_DTYPE = {"float32": "<f4", "int32": "<i4", "bool": "u1"}


def _decode_weight(
    spec: Mapping[str, Any], data: bytes, offset: int, where: str
) -> tuple[NDArray[Any], int]:
    """One manifest entry decoded from ``data`` at ``offset`` -> (array, next offset)."""
    name = spec.get("name")
    shape = spec.get("shape")
    dtype = spec.get("dtype")
    if not isinstance(name, str):
        raise TfjsError(f"model.json: a weight in {where} has no name")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TfjsError(f"weight {name!r}: shape {shape!r} is not a list of sizes")
    if dtype not in _NUMPY_DTYPE:
        raise TfjsError(f"weight {name!r}: dtype {dtype!r} is not float32, int32 or bool")
    count = math.prod(shape)
    quantization = spec.get("quantization")
    stored = dtype
    if quantization is not None:
        if not isinstance(quantization, Mapping):
            raise TfjsError(f"weight {name!r}: quantization is not an object")
        stored = quantization.get("dtype")
        if stored in ("uint8", "uint16"):
            if not all(isinstance(quantization.get(k), int | float) for k in ("scale", "min")):
                raise TfjsError(
                    f"weight {name!r}: {stored} quantization needs numeric 'scale' and 'min'"
                )
        elif stored == "float16":
            if dtype != "float32":
                raise TfjsError(
                    f"weight {name!r}: float16 quantization only applies to float32, not {dtype}"
                )
        else:
            raise TfjsError(
                f"weight {name!r}: quantization dtype {stored!r} is not uint8, uint16 or float16"
            )
    size = count * _DTYPE_BYTES[stored]
    if offset + size > len(data):
        raise TfjsError(
            f"weight {name!r}: needs bytes {offset}..{offset + size} of {where}, "
            f"which holds {len(data)}"
        )
    raw = data[offset : offset + size]
    if quantization is None:
        values = np.frombuffer(raw, dtype=_NUMPY_DTYPE[dtype]).astype(_NUMPY_DTYPE[dtype])
        if dtype == "bool":
            values = values.astype(np.bool_)
    elif stored == "float16":
        values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    else:
        q = np.frombuffer(raw, dtype="u1" if stored == "uint8" else "<u2").astype(np.float64)
        # TF.js computes q * scale + min in double and stores it in a Float32Array
        # (int32: Math.round, which rounds halves up).
        affine = q * float(quantization["scale"]) + float(quantization["min"])  # type: ignore[index]
        if dtype == "float32":
            values = affine.astype(np.float32)
        elif dtype == "int32":
            values = np.floor(affine + 0.5).astype(np.int32)
        else:
            raise TfjsError(f"weight {name!r}: {stored} quantization does not apply to {dtype}")
    return values.reshape(shape), offset + size


def _decode_weights(
    model_json: Mapping[str, Any], read: Callable[[str], bytes]
) -> dict[str, NDArray[Any]]:
    """Every manifest weight by name; a group's files are concatenated in order (as TF.js
    does), each group decoded from its own buffer."""
    weights: dict[str, NDArray[Any]] = {}
    cache: dict[str, bytes] = {}
    for index, group in enumerate(_manifest(model_json)):
        paths = group.get("paths", [])
        specs = group.get("weights", [])
        if not isinstance(specs, list):
            raise TfjsError(f"model.json: weightsManifest[{index}].weights is not a list")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise TfjsError(f"model.json: weightsManifest[{index}].paths is not a list of strings")
        for path in paths:
            if path not in cache:
                cache[path] = bytes(read(path))
        data = b"".join(cache[p] for p in paths)
        where = "+".join(repr(p) for p in paths) or f"weightsManifest[{index}] (no paths)"
        offset = 0
        for spec in specs:
            if not isinstance(spec, Mapping):
                raise TfjsError(
                    f"model.json: an entry of weightsManifest[{index}] is not an object"
                )
            value, offset = _decode_weight(spec, data, offset, where)
            weights[spec["name"]] = value
    return weights


# --------------------------------------------------------------------------- graph nodes


@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    inputs: tuple[str, ...]  # data inputs as "node" or "node:k"; control inputs dropped
    attr: Mapping[str, Any]

    # TF's JSON protobuf encoding: int64 as strings, strings base64, lists in "list".
    def has(self, key: str) -> bool:
        return key in self.attr

    def s(self, key: str, default: str = "") -> str:
        value = self.attr.get(key, {}).get("s")
        return default if value is None else base64.b64decode(value).decode("utf-8")

    def i(self, key: str, default: int = 0) -> int:
        value = self.attr.get(key, {}).get("i")
        return default if value is None else int(value)

    def f(self, key: str, default: float = 0.0) -> float:
        value = self.attr.get(key, {}).get("f")
        return default if value is None else float(value)

    def b(self, key: str, default: bool = False) -> bool:
        value = self.attr.get(key, {}).get("b")
        return default if value is None else bool(value)

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.attr.get(key, {}).get("list", {}).get("i", [])]

    def strings(self, key: str) -> list[str]:
        values = self.attr.get(key, {}).get("list", {}).get("s", [])
        return [base64.b64decode(v).decode("utf-8") for v in values]

    def type(self, key: str, default: str = "DT_FLOAT") -> str:
        value = self.attr.get(key, {}).get("type")
        return default if value is None else str(value)

    def fail(self, reason: str) -> TfjsError:
        return TfjsError(f"node {self.name!r} ({self.op}): {reason}")


def _parse_nodes(model_json: Mapping[str, Any]) -> dict[str, _Node]:
    fmt = model_json.get("format")
    if fmt not in (None, "graph-model"):
        raise TfjsError(f"model.json: format {fmt!r} is not a TF.js graph-model")
    topology = model_json.get("modelTopology")
    if not isinstance(topology, Mapping) or not isinstance(topology.get("node"), list):
        raise TfjsError("model.json: modelTopology has no node list (not a graph model)")
    nodes: dict[str, _Node] = {}
    for raw in topology["node"]:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise TfjsError("model.json: a node has no name")
        name = raw["name"]
        op = raw.get("op")
        if not isinstance(op, str):
            raise TfjsError(f"node {name!r}: no op")
        if name in nodes:
            raise TfjsError(f"node {name!r}: defined twice")
        inputs = tuple(i for i in raw.get("input", []) if not str(i).startswith("^"))
        attr = raw.get("attr", {})
        if not isinstance(attr, Mapping):
            raise TfjsError(f"node {name!r} ({op}): attr is not an object")
        nodes[name] = _Node(name, op, inputs, attr)
    return nodes


def _tensor_node(ref: str) -> tuple[str, int]:
    """'conv/Relu' -> ('conv/Relu', 0); 'split:1' -> ('split', 1)."""
    head, sep, tail = ref.rpartition(":")
    if sep and tail.isdigit():
        return head, int(tail)
    return ref, 0


def _strip_zero(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _output_names(model_json: Mapping[str, Any], nodes: Mapping[str, _Node]) -> list[str]:
    """The signature's outputs that name real nodes, else the graph's terminal nodes."""
    signature = model_json.get("signature")
    if not isinstance(signature, Mapping):
        meta = model_json.get("userDefinedMetadata")
        signature = meta.get("signature") if isinstance(meta, Mapping) else None
    found: list[str] = []
    if isinstance(signature, Mapping) and isinstance(signature.get("outputs"), Mapping):
        for key, entry in signature["outputs"].items():
            candidates = [entry.get("name")] if isinstance(entry, Mapping) else []
            candidates.append(key)
            for candidate in candidates:
                if isinstance(candidate, str) and _strip_zero(candidate) in nodes:
                    if _strip_zero(candidate) not in found:
                        found.append(_strip_zero(candidate))
                    break
    if found:
        return found
    consumed = {_tensor_node(i)[0] for node in nodes.values() for i in node.inputs}
    terminal = [
        n.name for n in nodes.values() if n.name not in consumed and n.op not in ("Const", "NoOp")
    ]
    if not terminal:
        raise TfjsError("model.json: the graph has no outputs")
    return terminal


def _const_from_attr(node: _Node) -> NDArray[Any] | None:
    """A Const whose value is inline in the graph (tensorContent or *_val), if any."""
    tensor = node.attr.get("value", {}).get("tensor")
    if not isinstance(tensor, Mapping):
        return None
    dtype = {"DT_FLOAT": np.float32, "DT_INT32": np.int32}.get(tensor.get("dtype", ""))
    if dtype is None:
        return None
    dims = [int(d.get("size", 0)) for d in tensor.get("tensorShape", {}).get("dim", [])]
    if "tensorContent" in tensor:
        flat = np.frombuffer(base64.b64decode(tensor["tensorContent"]), dtype=np.dtype(dtype))
        return flat.astype(dtype).reshape(dims)
    vals = tensor.get("floatVal" if dtype is np.float32 else "intVal")
    if vals is None:
        return None
    flat = np.asarray([float(v) for v in vals], dtype=dtype)
    count = math.prod(dims)
    if flat.size == 1 and count != 1:
        flat = np.full(count, flat[0], dtype=dtype)  # proto's repeated-last-value rule
    return flat.reshape(dims)


# --------------------------------------------------------------------------- builder


class _Graph:
    """ONNX nodes and initializers in the order they are made (deterministic names)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.used: set[str] = set()

    def fresh(self, base: str) -> str:
        name = base
        k = 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    def add(
        self,
        op: str,
        inputs: Sequence[str],
        output: str | None,
        name: str,
        **attrs: Any,
    ) -> str:
        out = output if output is not None else self.fresh(name)
        self.used.add(out)
        self.nodes.append(
            helper.make_node(op, list(inputs), [out], name=self.fresh(f"{name}#{op}"), **attrs)
        )
        return out

    def initializer(self, name: str, value: NDArray[Any]) -> str:
        existing = self.initializers.get(name)
        if existing is None:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
            self.used.add(name)
        return name

    def prune(self, outputs: Iterable[str]) -> None:
        """Drop nodes and initializers no output depends on (what a fused pattern such
        as :meth:`_Converter.clip` left behind)."""
        needed = set(outputs)
        kept: list[onnx.NodeProto] = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(node.input)
        self.nodes = kept[::-1]
        self.initializers = {k: v for k, v in self.initializers.items() if k in needed}

    def int64s(self, name: str, values: Iterable[int]) -> str:
        return self.initializer(name, np.asarray(list(values), dtype=np.int64))


_ACTIVATIONS = ("Relu", "Relu6", "Elu", "Sigmoid", "Tanh", "LeakyRelu", "Prelu")


class _Converter:
    def __init__(self, nodes: dict[str, _Node], weights: dict[str, NDArray[Any]]) -> None:
        self.nodes = nodes
        self.weights = weights
        self.consts: dict[str, NDArray[Any]] = {}
        self.g = _Graph()
        self.consumers: dict[str, int] = {}  # TF node -> how many nodes (and outputs) read it
        for node in nodes.values():  # reserve every TF name so helper tensors never clash
            self.g.used.add(node.name)

    # -- inputs ----------------------------------------------------------------------

    def const(self, node: _Node, index: int, what: str) -> NDArray[Any]:
        """The constant value of input ``index`` (folded through Identity)."""
        if index >= len(node.inputs):
            raise node.fail(f"missing input {index} ({what})")
        ref = node.inputs[index]
        name, port = _tensor_node(ref)
        source = self.nodes.get(name)
        while source is not None and source.op == "Identity" and port == 0 and source.inputs:
            name, port = _tensor_node(source.inputs[0])
            source = self.nodes.get(name)
        if port == 0 and name in self.consts:
            return self.consts[name]
        raise node.fail(f"{what} ({ref!r}) must be a constant")

    def tensor(self, node: _Node, index: int) -> str:
        """The ONNX tensor name of data input ``index`` (a Const becomes an initializer)."""
        if index >= len(node.inputs):
            raise node.fail(f"missing input {index}")
        return self.ref(node, node.inputs[index])

    def ref(self, node: _Node, ref: str) -> str:
        """The ONNX tensor name of TF tensor ``ref``, an input of ``node``."""
        name, port = _tensor_node(ref)
        if name not in self.nodes:
            raise node.fail(f"input {ref!r} is not a node of the graph")
        if port != 0:
            raise node.fail(f"input {ref!r}: only single-output ops are supported")
        if name in self.consts:
            value = self.consts[name]
            return self.g.initializer(name, value)
        return name

    def scalar(self, name: str, value: float) -> str:
        return self.g.initializer(name, np.asarray(value, dtype=np.float32))

    # -- driver ----------------------------------------------------------------------

    def order(self, outputs: Sequence[str]) -> list[_Node]:
        """The nodes the outputs depend on, inputs first (iterative DFS, deterministic)."""
        seen: set[str] = set()
        ordered: list[_Node] = []
        for out in outputs:
            stack: list[tuple[str, bool]] = [(out, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    ordered.append(self.nodes[name])
                    continue
                if name in seen:
                    continue
                seen.add(name)
                node = self.nodes.get(name)
                if node is None:
                    raise TfjsError(f"node {name!r} is referenced but not in the graph")
                stack.append((name, True))
                for ref in reversed(node.inputs):
                    source = _tensor_node(ref)[0]
                    if source not in seen:
                        if source not in self.nodes:
                            raise node.fail(f"input {ref!r} is not a node of the graph")
                        stack.append((source, False))
        return ordered

    def run(self, order: Sequence[_Node], outputs: Sequence[str]) -> list[onnx.ValueInfoProto]:
        inputs: list[onnx.ValueInfoProto] = []
        for node in order:
            for ref in node.inputs:
                source = _tensor_node(ref)[0]
                self.consumers[source] = self.consumers.get(source, 0) + 1
        for out in outputs:
            self.consumers[out] = self.consumers.get(out, 0) + 1
        for node in order:
            if node.op == "Const":
                value = self.weights.get(node.name)
                if value is None:
                    value = _const_from_attr(node)
                if value is None:
                    raise node.fail("no value in the weights manifest")
                self.consts[node.name] = value
            elif node.op in ("Placeholder", "PlaceholderWithDefault"):
                inputs.append(self._placeholder(node))
            else:
                handler = _HANDLERS.get(node.op)
                if handler is None:
                    raise node.fail("op is not supported by the TF.js converter")
                handler(self, node)
        return inputs

    def _placeholder(self, node: _Node) -> onnx.ValueInfoProto:
        elem = {"DT_FLOAT": TensorProto.FLOAT, "DT_INT32": TensorProto.INT32}.get(
            node.type("dtype")
        )
        if elem is None:
            raise node.fail(f"input dtype {node.type('dtype')} is not DT_FLOAT or DT_INT32")
        shape = node.attr.get("shape", {}).get("shape", {})
        if shape.get("unknownRank"):
            raise node.fail("input has unknown rank")
        dims: list[int | str] = []
        for k, dim in enumerate(shape.get("dim", [])):
            size = int(dim.get("size", -1))
            if size >= 0:
                dims.append(size)
            else:
                dims.append("N" if k == 0 else f"{node.name}_d{k}")
        return helper.make_tensor_value_info(node.name, elem, dims)

    # -- ops -------------------------------------------------------------------------

    def unary(self, node: _Node, op: str) -> None:
        self.g.add(op, [self.tensor(node, 0)], node.name, node.name)

    def _scalar_const(self, node: _Node, index: int) -> float | None:
        name, port = _tensor_node(node.inputs[index])
        value = self.consts.get(name) if port == 0 else None
        if value is None or value.size != 1 or value.dtype != np.float32:
            return None
        return float(value.reshape(-1)[0])

    def _only_reader(self, ref: str, op: str) -> _Node | None:
        """The node ``ref`` names when it has op ``op`` and one reader (the caller)."""
        name, port = _tensor_node(ref)
        source = self.nodes.get(name)
        if port or source is None or source.op != op or self.consumers.get(name) != 1:
            return None
        return source

    def clip(self, node: _Node) -> None:
        """Minimum/Maximum against scalar constants (Keras' ``clip_by_value``, ReLU6).

        ``Maximum(Minimum(x, hi), lo)`` (either nesting, either operand order, an inner
        Relu folded in) is one ``Clip(x, lo, hi)``: the same values, and ONNX Runtime fuses
        a Clip into the convolution before it, where a Min/Max pair keeps the
        convolution's blocked (NCHWc) output being reordered back and forth (a quarter of
        faceres' time). Anything else stays an element-wise Max/Min.
        """
        op, inner_op = ("Max", "Minimum") if node.op == "Maximum" else ("Min", "Maximum")
        for k in (0, 1):
            outer = self._scalar_const(node, 1 - k)
            inner = self._only_reader(node.inputs[k], inner_op)
            if outer is None or inner is None:
                continue
            for j in (0, 1):
                bound = self._scalar_const(inner, 1 - j)
                if bound is None or self._scalar_const(inner, j) is not None:
                    continue
                lo, hi = (outer, bound) if node.op == "Maximum" else (bound, outer)
                if not lo <= hi:
                    continue
                source = inner.inputs[j]
                relu = self._only_reader(source, "Relu")
                if relu is not None and max(lo, 0.0) <= hi:
                    source, lo = relu.inputs[0], max(lo, 0.0)
                x = self.ref(inner, source)
                lo_name = self.scalar(self.g.fresh(f"{node.name}/min"), lo)
                hi_name = self.scalar(self.g.fresh(f"{node.name}/max"), hi)
                self.g.add("Clip", [x, lo_name, hi_name], node.name, node.name)
                return
        self.binary(node, op)

    def binary(self, node: _Node, op: str) -> None:
        self.g.add(op, [self.tensor(node, 0), self.tensor(node, 1)], node.name, node.name)

    def activation(self, node: _Node, kind: str, x: str, out: str | None, extra: str | None) -> str:
        """``x`` through a TF activation; ``extra`` is Prelu's alpha tensor."""
        if kind == "Relu6":
            return self.g.add(
                "Clip",
                [x, self.scalar("tfjs/zero", 0.0), self.scalar("tfjs/six", 6.0)],
                out,
                node.name,
            )
        if kind == "LeakyRelu":
            alpha = node.f("leakyrelu_alpha", node.f("alpha", 0.2))
            return self.g.add("LeakyRelu", [x], out, node.name, alpha=alpha)
        if kind == "Elu":
            return self.g.add("Elu", [x], out, node.name, alpha=1.0)
        if kind == "Prelu":
            if extra is None:
                raise node.fail("Prelu needs an alpha argument")
            return self.g.add("PRelu", [x, extra], out, node.name)
        if kind in ("Relu", "Sigmoid", "Tanh"):
            return self.g.add(kind, [x], out, node.name)
        raise node.fail(f"fused activation {kind!r} is not supported")

    def _padding(
        self, node: _Node, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
    ) -> dict[str, Any]:
        """ONNX padding attributes for TF's padding of a conv or pool.

        SAME is TF's rule (output ceil(size / stride), the odd pixel at the bottom/right).
        With stride 1 its pads do not depend on the input size, so they are written out
        (ONNX Runtime refuses SAME_UPPER with dilations); otherwise ``SAME_UPPER``, which
        is the same rule, and which keeps the graph free of fixed spatial sizes."""
        padding = node.s("padding", "VALID")
        if any(d > 1 for d in dilations) and any(s > 1 for s in strides):
            raise node.fail(f"strides {list(strides)} with dilations {list(dilations)}")
        if padding == "SAME":
            if any(s > 1 for s in strides):
                return {"auto_pad": "SAME_UPPER"}
            totals = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
            return {"pads": [t // 2 for t in totals] + [t - t // 2 for t in totals]}
        if padding == "VALID":
            return {"pads": [0, 0, 0, 0]}
        if padding == "EXPLICIT":
            explicit = node.ints("explicit_paddings")
            if len(explicit) != 8 or any(explicit[k] for k in (0, 1, 6, 7)):
                raise node.fail(f"explicit_paddings {explicit} is not 8 values padding H and W")
            top, bottom, left, right = explicit[2:6]
            return {"pads": [top, left, bottom, right]}
        raise node.fail(f"padding {padding!r} is not SAME, VALID or EXPLICIT")

    def _nhwc_attrs(self, node: _Node, key: str) -> list[int]:
        values = node.ints(key) or [1, 1, 1, 1]
        if len(values) != 4 or values[0] != 1 or values[3] != 1:
            raise node.fail(f"{key} {values} must be [1, h, w, 1]")
        return values[1:3]

    def _check_nhwc(self, node: _Node) -> None:
        fmt = node.s("data_format", "NHWC")
        if fmt != "NHWC":
            raise node.fail(f"data_format {fmt} is not supported (only NHWC)")

    def conv(self, node: _Node, depthwise: bool, fused: bool) -> None:
        self._check_nhwc(node)
        kernel = self.const(node, 1, "filter").astype(np.float32)
        if kernel.ndim != 4:
            raise node.fail(f"filter has shape {list(kernel.shape)}, expected 4 dimensions")
        kh, kw, cin, cout = kernel.shape
        if depthwise:
            # [kh, kw, in, mult] -> [in*mult, 1, kh, kw]; output channel c*mult + m.
            weight = kernel.transpose(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw)
            group = int(cin)
        else:
            weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            group = 1
        bias: NDArray[Any] | None = None
        act: str | None = None
        alpha: str | None = None
        if fused:
            fused_weight, bias, act, alpha = self._fused_args(node, weight, conv=True)
            assert fused_weight is not None
            weight = fused_weight
        strides = self._nhwc_attrs(node, "strides")
        dilations = self._nhwc_attrs(node, "dilations")
        attrs = self._padding(node, [int(kh), int(kw)], strides, dilations)
        x = self.g.add(
            "Transpose", [self.tensor(node, 0)], None, f"{node.name}/nchw", perm=_NHWC_TO_NCHW
        )
        w_name = self.g.initializer(self.g.fresh(f"{node.name}/weight_oihw"), weight)
        conv_inputs = [x, w_name]
        if bias is not None:
            conv_inputs.append(self.g.initializer(self.g.fresh(f"{node.name}/bias"), bias))
        y = self.g.add(
            "Conv",
            conv_inputs,
            None,
            f"{node.name}/conv",
            kernel_shape=[int(kh), int(kw)],
            strides=strides,
            dilations=dilations,
            group=group,
            **attrs,
        )
        if act is not None:
            if alpha is not None:
                alpha_value = self.consts[alpha].astype(np.float32).reshape(-1, 1, 1)
                alpha = self.g.initializer(self.g.fresh(f"{node.name}/alpha_c11"), alpha_value)
            y = self.activation(node, act, y, None, alpha)
        self.g.add("Transpose", [y], node.name, node.name, perm=_NCHW_TO_NHWC)

    def _fused_args(
        self, node: _Node, weight: NDArray[Any] | None, conv: bool
    ) -> tuple[NDArray[Any] | None, NDArray[Any] | None, str | None, str | None]:
        """(weight, bias, activation, Prelu alpha const name) of a _Fused* node.

        ``weight`` is a convolution's OIHW kernel (None for MatMul); FusedBatchNorm is
        folded into it (TF.js itself refuses FusedBatchNorm in fused convolutions, but
        TensorFlow's grappler writes it, so it is kept here)."""
        ops = node.strings("fused_ops")
        num_args = node.i("num_args", len(node.inputs) - 2)
        if len(node.inputs) < 2 + num_args:
            raise node.fail(f"num_args {num_args} but only {len(node.inputs) - 2} arguments")
        args = [self.const(node, 2 + k, f"fused argument {k}") for k in range(num_args)]
        if not ops:
            raise node.fail("fused_ops is empty")
        head, rest = ops[0], ops[1:]
        if head == "BiasAdd":
            if num_args < 1:
                raise node.fail("BiasAdd needs a bias argument")
            bias = args[0].astype(np.float32).reshape(-1)
        elif head == "FusedBatchNorm" and conv and weight is not None:
            if num_args < 4:
                raise node.fail("FusedBatchNorm needs scale, offset, mean and variance")
            scale, offset, mean, variance = (a.astype(np.float64).reshape(-1) for a in args[:4])
            factor = scale / np.sqrt(variance + node.f("epsilon", 1e-3))
            weight = (weight * factor.reshape(-1, 1, 1, 1)).astype(np.float32)
            bias = (offset - mean * factor).astype(np.float32)
        else:
            raise node.fail(f"fused_ops {ops} is not supported")
        if weight is not None and bias.size != weight.shape[0]:
            raise node.fail(f"bias has {bias.size} values for {weight.shape[0]} channels")
        act: str | None = None
        alpha: str | None = None
        if len(rest) > 1:
            raise node.fail(f"fused_ops {ops} is not supported")
        if rest:
            act = rest[0]
            if act not in _ACTIVATIONS:
                raise node.fail(f"fused activation {act!r} is not supported")
            if act == "Prelu":
                if num_args < 2:
                    raise node.fail("Prelu needs an alpha argument")
                alpha = _tensor_node(node.inputs[3])[0]
                while alpha not in self.consts:  # through Identity
                    alpha = _tensor_node(self.nodes[alpha].inputs[0])[0]
        return weight, bias, act, alpha

    def pool(self, node: _Node, op: str) -> None:
        self._check_nhwc(node)
        ksize = self._nhwc_attrs(node, "ksize")
        strides = self._nhwc_attrs(node, "strides")
        attrs = self._padding(node, ksize, strides, [1, 1])
        x = self.g.add(
            "Transpose", [self.tensor(node, 0)], None, f"{node.name}/nchw", perm=_NHWC_TO_NCHW
        )
        if op == "AveragePool":
            attrs["count_include_pad"] = 0  # TF leaves SAME padding out of the average
        y = self.g.add(
            op, [x], None, f"{node.name}/pool", kernel_shape=ksize, strides=strides, **attrs
        )
        self.g.add("Transpose", [y], node.name, node.name, perm=_NCHW_TO_NHWC)

    def matmul(self, node: _Node, fused: bool) -> None:
        ta = node.b("transpose_a")
        tb = node.b("transpose_b")
        if node.b("adj_x") or node.b("adj_y"):
            raise node.fail("adjoint MatMul is not supported")
        inputs = [self.tensor(node, 0), self.tensor(node, 1)]
        act: str | None = None
        alpha: str | None = None
        if fused:
            _, bias, act, alpha = self._fused_args(node, None, conv=False)
            if bias is not None:
                inputs.append(self.g.initializer(self.g.fresh(f"{node.name}/bias"), bias))
        out = None if act is not None else node.name
        y = self.g.add("Gemm", inputs, out, node.name, transA=int(ta), transB=int(tb))
        if act is not None:
            self.activation(node, act, y, node.name, self.tensor_of(alpha) if alpha else None)

    def tensor_of(self, const_name: str) -> str:
        return self.g.initializer(const_name, self.consts[const_name])

    def reduce(self, node: _Node, op: str) -> None:
        axes = [int(v) for v in self.const(node, 1, "axes").reshape(-1)]
        keep = node.b("keep_dims", node.b("keepdims"))
        x = self.tensor(node, 0)
        if not axes:  # TF reduces nothing; ONNX would reduce everything
            self.g.add("Identity", [x], node.name, node.name)
            return
        self.g.add(op, [x], node.name, node.name, axes=axes, keepdims=int(keep))

    def reshape(self, node: _Node) -> None:
        shape = [int(v) for v in self.const(node, 1, "shape").reshape(-1)]
        if 0 in shape:
            raise node.fail(f"shape {shape} has a 0 (ONNX would copy the input dimension)")
        if shape.count(-1) > 1:
            raise node.fail(f"shape {shape} has more than one -1")
        s = self.g.int64s(self.g.fresh(f"{node.name}/shape"), shape)
        self.g.add("Reshape", [self.tensor(node, 0), s], node.name, node.name)

    def expand_dims(self, node: _Node) -> None:
        axis = self.const(node, 1, "axis").reshape(-1)
        if axis.size != 1:
            raise node.fail(f"axis {axis.tolist()} is not one value")
        axes = self.g.int64s(self.g.fresh(f"{node.name}/axes"), [int(axis[0])])
        self.g.add("Unsqueeze", [self.tensor(node, 0), axes], node.name, node.name)

    def strided_slice(self, node: _Node) -> None:
        begin = [int(v) for v in self.const(node, 1, "begin").reshape(-1)]
        end = [int(v) for v in self.const(node, 2, "end").reshape(-1)]
        strides = [int(v) for v in self.const(node, 3, "strides").reshape(-1)]
        if not len(begin) == len(end) == len(strides):
            raise node.fail(
                f"begin/end/strides have lengths {len(begin)}/{len(end)}/{len(strides)}"
            )
        ellipsis, new_axis = node.i("ellipsis_mask"), node.i("new_axis_mask")
        if ellipsis or new_axis:
            raise node.fail(
                f"ellipsis_mask={ellipsis} new_axis_mask={new_axis} are not supported (only 0)"
            )
        begin_mask, end_mask, shrink = (
            node.i("begin_mask"),
            node.i("end_mask"),
            node.i("shrink_axis_mask"),
        )
        starts: list[int] = []
        ends: list[int] = []
        steps: list[int] = []
        axes: list[int] = []
        squeeze: list[int] = []
        for k, (b, e, s) in enumerate(zip(begin, end, strides, strict=True)):
            bit = 1 << k
            if s == 0:
                raise node.fail(f"stride 0 on axis {k}")
            if shrink & bit:
                if (begin_mask | end_mask) & bit:
                    raise node.fail(
                        f"axis {k} has shrink_axis_mask and begin/end_mask bits (not supported)"
                    )
                starts.append(b)
                ends.append(_INT64_MAX if b == -1 else b + 1)
                steps.append(1)
                axes.append(k)
                squeeze.append(k)
                continue
            if begin_mask & bit and end_mask & bit and s == 1:
                continue  # the whole axis
            # A masked bound is the axis' far end in the stride's direction (ONNX clamps).
            start = (0 if s > 0 else _INT64_MAX) if begin_mask & bit else b
            stop = (_INT64_MAX if s > 0 else _INT64_MIN) if end_mask & bit else e
            starts.append(start)
            ends.append(stop)
            steps.append(s)
            axes.append(k)
        x = self.tensor(node, 0)
        if not axes:
            self.g.add("Identity", [x], node.name, node.name)
            return
        sliced = self.g.add(
            "Slice",
            [
                x,
                self.g.int64s(self.g.fresh(f"{node.name}/starts"), starts),
                self.g.int64s(self.g.fresh(f"{node.name}/ends"), ends),
                self.g.int64s(self.g.fresh(f"{node.name}/axes"), axes),
                self.g.int64s(self.g.fresh(f"{node.name}/steps"), steps),
            ],
            None if squeeze else node.name,
            node.name,
        )
        if squeeze:
            sq = self.g.int64s(self.g.fresh(f"{node.name}/squeeze_axes"), squeeze)
            self.g.add("Squeeze", [sliced, sq], node.name, node.name)

    def identity(self, node: _Node) -> None:
        source, port = _tensor_node(node.inputs[0]) if node.inputs else ("", 0)
        if port == 0 and source in self.consts:
            # A Const seen through Identity is that Const (an initializer under this name
            # when something reads it at run time), not an Identity node.
            self.consts[node.name] = self.consts[source]
            return
        self.unary(node, "Identity")

    def relu6(self, node: _Node) -> None:
        self.activation(node, "Relu6", self.tensor(node, 0), node.name, None)

    def bias_add(self, node: _Node) -> None:
        self._check_nhwc(node)
        self.binary(node, "Add")

    def softmax(self, node: _Node) -> None:
        self.g.add("Softmax", [self.tensor(node, 0)], node.name, node.name, axis=-1)


_HANDLERS: dict[str, Callable[[_Converter, _Node], None]] = {
    "Identity": _Converter.identity,
    "Conv2D": lambda c, n: c.conv(n, depthwise=False, fused=False),
    "_FusedConv2D": lambda c, n: c.conv(n, depthwise=False, fused=True),
    "DepthwiseConv2dNative": lambda c, n: c.conv(n, depthwise=True, fused=False),
    "FusedDepthwiseConv2dNative": lambda c, n: c.conv(n, depthwise=True, fused=True),
    "_FusedDepthwiseConv2dNative": lambda c, n: c.conv(n, depthwise=True, fused=True),
    "MaxPool": lambda c, n: c.pool(n, "MaxPool"),
    "AvgPool": lambda c, n: c.pool(n, "AveragePool"),
    "Add": lambda c, n: c.binary(n, "Add"),
    "AddV2": lambda c, n: c.binary(n, "Add"),
    "Sub": lambda c, n: c.binary(n, "Sub"),
    "Mul": lambda c, n: c.binary(n, "Mul"),
    "RealDiv": lambda c, n: c.binary(n, "Div"),
    "Maximum": _Converter.clip,
    "Minimum": _Converter.clip,
    "BiasAdd": _Converter.bias_add,
    "Relu": lambda c, n: c.unary(n, "Relu"),
    "Relu6": _Converter.relu6,
    "Tanh": lambda c, n: c.unary(n, "Tanh"),
    "Sigmoid": lambda c, n: c.unary(n, "Sigmoid"),
    "Softmax": _Converter.softmax,
    "Mean": lambda c, n: c.reduce(n, "ReduceMean"),
    "Max": lambda c, n: c.reduce(n, "ReduceMax"),
    "Reshape": _Converter.reshape,
    "StridedSlice": _Converter.strided_slice,
    "ExpandDims": _Converter.expand_dims,
    "MatMul": lambda c, n: c.matmul(n, fused=False),
    "_FusedMatMul": lambda c, n: c.matmul(n, fused=True),
}

SUPPORTED_OPS = frozenset(_HANDLERS) | {"Const", "Placeholder"}


# --------------------------------------------------------------------------- entry point


def convert(
    model_json: Mapping[str, Any], read: Callable[[str], bytes], *, name: str = "model"
) -> onnx.ModelProto:
    """The TF.js graph model as a checked ONNX model (opset 13, NHWC input, batch ``N``).

    ``read(path)`` returns the bytes of one weight file named by the manifest (see
    :func:`weight_paths`); it is called once per file, and what it raises (a missing
    file, say) propagates unchanged. The input keeps the Placeholder's
    name; outputs are the signature's (``age_pred/Softmax``, ``Identity``), ``:0`` dropped.
    Raises :class:`TfjsError` for anything this converter cannot represent faithfully.
    """
    nodes = _parse_nodes(model_json)
    weights = _decode_weights(model_json, read)
    outputs = _output_names(model_json, nodes)
    converter = _Converter(nodes, weights)
    order = converter.order(outputs)
    inputs = converter.run(order, outputs)
    if not inputs:
        raise TfjsError("model.json: no Placeholder feeds the outputs")
    g = converter.g
    g.prune(outputs)
    out_infos = []
    for out in outputs:
        if out in converter.consts and not any(out in n.output for n in g.nodes):
            raise TfjsError(f"output {out!r} is a constant, not computed from the input")
        out_infos.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    graph = helper.make_graph(
        g.nodes, name, inputs, out_infos, initializer=list(g.initializers.values())
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        ir_version=IR_VERSION,
    )
    model = _finish(model)
    return model


def _finish(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the outputs the shapes shape inference finds, then check the model."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        known = {v.name: v for v in inferred.graph.value_info}
        known.update({v.name: v for v in inferred.graph.output})
        for out in model.graph.output:
            info = known.get(out.name)
            if info is None or not info.type.tensor_type.HasField("shape"):
                raise TfjsError(f"output {out.name!r}: shape inference found no shape")
            out.type.CopyFrom(info.type)
            for dim in out.type.tensor_type.shape.dim:
                if dim.dim_param.startswith("unk__"):  # inference's made-up names
                    dim.ClearField("dim_param")
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise TfjsError(f"the converted graph is not valid ONNX: {first}") from exc
    return model
