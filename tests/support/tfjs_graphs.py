"""TF.js graph models for the converter's tests: tiny ones built here, real topologies from
fixtures with generated weights, and TF.js itself (node + @tensorflow/tfjs) to run them.

- :class:`TfjsGraph` writes a ``model.json`` dict and its weight file for a handful of
  nodes, with TF's JSON-protobuf attribute encoding (base64 strings, int64 as strings)
  and any of the manifest's weight encodings (float32, int32, float16, uint8, uint16).
- :func:`fixture_model` / :func:`random_weights`: the real ``model.json`` of faceres, gear,
  SSR-Net age and oarriaga gender (``tests/fixtures/tfjs/*.json.gz``, weights stripped),
  with weights generated from the manifest's names, shapes and dtypes (He-scaled by what
  reads them) and the graph's structural constants (shapes, axes, slice bounds, scalars
  such as ReLU6's 6) kept from the original.
- :func:`tfjs_modules` / :func:`run_tfjs`: the npm package ``scripts/setup.sh`` installs
  in ``.node/`` (or ``$AGEGENDER_TFJS_MODULES``) and ``tfjs_run.mjs``, to compare the
  converted graph with TF.js on the same input. Nothing here reaches the network.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tfjs"
RUNNER = Path(__file__).with_name("tfjs_run.mjs")
TFJS_VERSION = "4.22.0"


# --------------------------------------------------------------------------- attributes


def a_s(value: str) -> dict[str, Any]:
    return {"s": base64.b64encode(value.encode()).decode()}


def a_i(value: int) -> dict[str, Any]:
    return {"i": str(value)}


def a_f(value: float) -> dict[str, Any]:
    return {"f": value}


def a_b(value: bool) -> dict[str, Any]:
    return {"b": value}


def a_ints(values: Sequence[int]) -> dict[str, Any]:
    return {"list": {"i": [str(v) for v in values]}} if values else {"list": {}}


def a_strs(values: Sequence[str]) -> dict[str, Any]:
    return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in values]}}


def a_type(value: str = "DT_FLOAT") -> dict[str, Any]:
    return {"type": value}


def conv_attrs(
    strides: Sequence[int] = (1, 1),
    padding: str = "SAME",
    dilations: Sequence[int] = (1, 1),
    explicit: Sequence[int] = (),
) -> dict[str, Any]:
    """Conv2D / DepthwiseConv2dNative / pool attributes as the TF.js converter writes them."""
    return {
        "T": a_type(),
        "data_format": a_s("NHWC"),
        "strides": a_ints([1, *strides, 1]),
        "dilations": a_ints([1, *dilations, 1]),
        "padding": a_s(padding),
        "explicit_paddings": a_ints(list(explicit)),
    }


# --------------------------------------------------------------------------- tiny graphs


def encode_weight(
    name: str, value: NDArray[Any], quantization: str | None = None
) -> tuple[dict[str, Any], bytes, NDArray[Any]]:
    """(manifest entry, bytes, the values TF.js will decode) for one weight."""
    dtype = "int32" if value.dtype.kind in "iu" else "float32"
    spec: dict[str, Any] = {"name": name, "shape": list(value.shape), "dtype": dtype}
    if quantization is None:
        arr = value.astype("<i4" if dtype == "int32" else "<f4")
        return spec, arr.tobytes(), arr.astype(np.int32 if dtype == "int32" else np.float32)
    if quantization == "float16":
        half = value.astype("<f2")
        spec["quantization"] = {"dtype": "float16", "original_dtype": dtype}
        return spec, half.tobytes(), half.astype(np.float32)
    levels = {"uint8": 255, "uint16": 65535}[quantization]
    lo, hi = float(value.min()), float(value.max())
    scale = (hi - lo) / levels if hi > lo else 1.0
    q = np.round((value.astype(np.float64) - lo) / scale).astype("u1" if levels == 255 else "<u2")
    spec["quantization"] = {
        "dtype": quantization,
        "scale": scale,
        "min": lo,
        "original_dtype": dtype,
    }
    decoded = q.astype(np.float64) * scale + lo
    if dtype == "int32":
        return spec, q.tobytes(), np.floor(decoded + 0.5).astype(np.int32)
    return spec, q.tobytes(), decoded.astype(np.float32)


@dataclass
class TfjsGraph:
    """A TF.js graph model under construction: ``model_json()`` and ``files()`` at the end."""

    weights_path: str = "weights.bin"
    nodes: list[dict[str, Any]] = field(default_factory=list)
    specs: list[dict[str, Any]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    decoded: dict[str, NDArray[Any]] = field(default_factory=dict)

    def placeholder(self, name: str, shape: Sequence[int], dtype: str = "DT_FLOAT") -> str:
        dims = [{"size": str(d)} for d in shape]
        self.nodes.append(
            {
                "name": name,
                "op": "Placeholder",
                "attr": {"dtype": a_type(dtype), "shape": {"shape": {"dim": dims}}},
            }
        )
        return name

    def const(self, name: str, value: Any, quantization: str | None = None) -> str:
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int32)
        spec, raw, decoded = encode_weight(name, arr, quantization)
        dtype = "DT_INT32" if spec["dtype"] == "int32" else "DT_FLOAT"
        dims = [{"size": str(d)} for d in arr.shape]
        self.nodes.append(
            {
                "name": name,
                "op": "Const",
                "attr": {
                    "dtype": a_type(dtype),
                    "value": {"tensor": {"dtype": dtype, "tensorShape": {"dim": dims}}},
                },
            }
        )
        self.specs.append(spec)
        self.data += raw
        self.decoded[name] = decoded
        return name

    def op(self, op: str, name: str, inputs: Sequence[str], **attr: dict[str, Any]) -> str:
        attrs = {"T": a_type()} | attr
        self.nodes.append({"name": name, "op": op, "input": list(inputs), "attr": attrs})
        return name

    def model_json(self, outputs: Sequence[str] | None = None) -> dict[str, Any]:
        model: dict[str, Any] = {
            "format": "graph-model",
            "generatedBy": "tests/support/tfjs_graphs.py",
            "convertedBy": None,
            "modelTopology": {"node": self.nodes, "library": {}, "versions": {}},
            "weightsManifest": [{"paths": [self.weights_path], "weights": self.specs}],
        }
        if outputs is not None:
            sig = {f"{o}:0": {"name": f"{o}:0", "dtype": "DT_FLOAT"} for o in outputs}
            model["signature"] = {"outputs": sig}
        return model

    def files(self) -> dict[str, bytes]:
        return {self.weights_path: bytes(self.data)}


# --------------------------------------------------------------------------- fixtures

FIXTURE_MODELS = ("faceres", "gear", "age", "gender")


def strip(model_json: Mapping[str, Any], weights: Mapping[str, NDArray[Any]]) -> dict[str, Any]:
    """A fixture: the model.json as published, plus the structural constants (int32 and
    scalar float consts: shapes, axes, slice bounds, ReLU6's 6) that random weights must
    not replace. No trained weight is kept."""
    kept = {
        name: {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.reshape(-1).tolist()}
        for name, v in weights.items()
        if v.dtype != np.float32 or v.ndim == 0
    }
    return {"model": dict(model_json), "kept": kept}


def write_fixture(name: str, fixture: Mapping[str, Any], folder: Path = FIXTURES) -> Path:
    path = folder / f"{name}.json.gz"
    text = json.dumps(fixture, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    return path


def fixture(name: str) -> dict[str, Any]:
    return json.loads(gzip.decompress((FIXTURES / f"{name}.json.gz").read_bytes()))


def _readers(nodes: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, int]]:
    """Const name -> (op, input index) of its first reader."""
    out: dict[str, tuple[str, int]] = {}
    for node in nodes:
        for k, ref in enumerate(node.get("input", [])):
            out.setdefault(ref.split(":")[0], (node["op"], k))
    return out


def _random_value(rng: np.random.Generator, shape: list[int], reader: tuple[str, int]) -> Any:
    op, index = reader
    if op in ("Conv2D", "_FusedConv2D") and index == 1:
        kh, kw, cin, _ = shape
        return rng.standard_normal(shape) * np.sqrt(2.0 / (kh * kw * cin))
    if op.endswith("DepthwiseConv2dNative") and index == 1:
        return rng.standard_normal(shape) * np.sqrt(2.0 / (shape[0] * shape[1]))
    if op in ("MatMul", "_FusedMatMul") and index == 1:
        return rng.standard_normal(shape) * np.sqrt(1.0 / shape[0])
    if op == "Mul":
        return rng.uniform(0.8, 1.2, shape)
    return rng.standard_normal(shape) * 0.05


def random_weights(fixture_data: Mapping[str, Any], seed: int = 0) -> dict[str, bytes]:
    """Weight files for a fixture's manifest: random (seeded) float values encoded as the
    manifest says (float16 where it is quantised), kept constants as they were."""
    model = fixture_data["model"]
    kept = fixture_data["kept"]
    readers = _readers(model["modelTopology"]["node"])
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for group in model["weightsManifest"]:
        data = bytearray()
        for spec in group["weights"]:
            name, shape = spec["name"], spec["shape"]
            if name in kept:
                value = np.asarray(kept[name]["values"], dtype=kept[name]["dtype"]).reshape(shape)
            else:
                value = _random_value(rng, shape, readers.get(name, ("", 0)))
            q = spec.get("quantization", {}).get("dtype")
            if q not in (None, "float16"):
                raise ValueError(f"{name}: fixture weights support float16 quantisation only")
            arr = np.asarray(value).astype(
                "<f2" if q == "float16" else ("<i4" if spec["dtype"] == "int32" else "<f4")
            )
            data += arr.tobytes()
        paths = group["paths"]
        files[paths[0]] = bytes(data)
        for extra in paths[1:]:
            files[extra] = b""
    return files


def write_model(folder: Path, model_json: Mapping[str, Any], files: Mapping[str, bytes]) -> Path:
    """model.json and its weight files in ``folder`` (what tfjs_run.mjs reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        (folder / path).write_bytes(data)
    target = folder / "model.json"
    target.write_text(json.dumps(model_json))
    return target


# --------------------------------------------------------------------------- TF.js


def tfjs_modules() -> Path | None:
    """The folder holding node_modules/@tensorflow/tfjs, or None."""
    candidates = [os.environ.get("AGEGENDER_TFJS_MODULES", ""), str(ROOT / ".node")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "node_modules/@tensorflow/tfjs/package.json").is_file():
            return Path(candidate)
    return None


def tfjs_missing() -> str | None:
    """Why TF.js cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/ci-deps.sh installs nodejs)"
    if tfjs_modules() is None:
        return (
            "@tensorflow/tfjs is not installed in .node/ (scripts/setup.sh runs "
            f"npm install --prefix .node @tensorflow/tfjs@{TFJS_VERSION})"
        )
    return None


@dataclass(frozen=True)
class TfjsJob:
    model: Path  # model.json, weight files beside it
    input: str
    x: NDArray[np.float32]
    outputs: Sequence[str]


def run_tfjs(
    jobs: Sequence[TfjsJob], workdir: Path, timeout: float = 900
) -> list[dict[str, NDArray[np.float32]]]:
    """Each job run by TF.js (cpu backend) in one node process: outputs by name."""
    modules = tfjs_modules()
    if modules is None:
        raise RuntimeError(tfjs_missing() or "TF.js is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    request = []
    for k, job in enumerate(jobs):
        feed = workdir / f"input{k}.f32"
        feed.write_bytes(np.ascontiguousarray(job.x, dtype="<f4").tobytes())
        request.append(
            {
                "model": str(job.model),
                "input": job.input,
                "file": str(feed),
                "shape": list(job.x.shape),
                "outputs": list(job.outputs),
                "out": str(workdir / f"out{k}"),
            }
        )
    req = workdir / "request.json"
    req.write_text(json.dumps({"modules": str(modules), "jobs": request}))
    proc = subprocess.run(
        ["node", str(RUNNER), str(req)], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tfjs_run.mjs failed ({proc.returncode}): {proc.stderr[-2000:]}")
    results = []
    for k in range(len(jobs)):
        out = workdir / f"out{k}"
        listing = json.loads((out / "outputs.json").read_text())
        results.append(
            {
                entry["name"]: np.frombuffer((out / f"{i}.f32").read_bytes(), dtype="<f4").reshape(
                    entry["shape"]
                )
                for i, entry in enumerate(listing)
            }
        )
    return results
