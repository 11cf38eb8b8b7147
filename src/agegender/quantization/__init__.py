"""INT8 copies of model files, built on the user's machine from shipped ranges.

Static INT8 quantization needs the range of every activation tensor, which a calibrator
measures by running the fp32 graph on representative inputs. Those inputs are our
development data, which a user does not have. So the calibration runs here, once
(``scripts/int8_ranges.py``), and the package ships only its result: one JSON file per
model in this folder (``NAME.json``) holding the fp32 file's sha256, the recipe (graph
preparation steps and ONNX Runtime's quantization options) and each tensor's [min, max].
``build`` turns the user's verified fp32 file plus that file into the INT8 graph with ONNX
Runtime's own ``quantize_static`` (QDQ format), fed the ranges as its calibration cache
instead of data, so the result is what the calibration here would have produced, and the
same bytes every time on one ONNX Runtime version.

A card whose ``[source]`` says ``quantize = "BASE"`` and ``ranges = "NAME.json"`` is such a
copy (``model_cards/centerface-int8.toml``); ``agegender models pull`` builds it into the
store (``store/manage.py``) and records the built file's sha256 beside it.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelFileError

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from numpy.typing import NDArray

FORMAT = 1
PREPARE_STEPS = ("free_dims", "opset13")  # what a recipe's "prepare" may list
_QUANT_TYPES = ("QInt8", "QUInt8")


class QuantizationError(ModelFileError):
    """A ranges file that does not fit the model, or a build that cannot run here."""


@dataclass(frozen=True)
class Recipe:
    """How the fp32 graph becomes INT8: preparation steps and ``quantize_static`` options.

    ``prepare``: "free_dims" makes a fixed-size input symbolic (CenterFace's file declares
    1x3x32x32, and the calibration fed whole scenes), "opset13" upgrades the graph so the
    quantizer can use per-channel QDQ (opset 9 cannot). ``exclude``: node names left in
    fp32 (where INT8 cost accuracy). ``op_types``: only these operators are quantized
    (empty: all ONNX Runtime can); dlib's per-channel "affine" Mul/Add layers, quantized,
    become a QLinearAdd that ONNX Runtime 1.30 refuses to load, so cc0-age-v1 lists Conv
    and Gemm. ``reduce_range`` (on unless a file says otherwise) keeps the weights to 7
    bits: on an x86 CPU without VNNI (AVX2, AVX-512 before VNNI) ONNX Runtime multiplies
    UINT8 activations by INT8 weights with ``vpmaddubsw``, which adds each pair of
    products into a saturating 16-bit integer (255 x 127 x 2 > 32,767), so a full 8-bit
    copy computes other numbers there than on a VNNI CPU, and wrong ones; with 7-bit
    weights (255 x 64 x 2 <= 32,767) the integer arithmetic is exact on both.
    """

    prepare: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "prepare": list(self.prepare),
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "exclude": list(self.exclude),
            "op_types": list(self.op_types),
        }


@dataclass(frozen=True)
class Ranges:
    """A shipped ranges file: which fp32 file it belongs to, the recipe, the ranges."""

    name: str
    card: str
    sha256: str
    recipe: Recipe
    ranges: dict[str, tuple[float, float]] = field(repr=False)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "card": self.card,
            "sha256": self.sha256,
            "notes": self.notes,
            "recipe": self.recipe.to_dict(),
            "calibration_method": "MinMax",
            "ranges": {name: [lo, hi] for name, (lo, hi) in sorted(self.ranges.items())},
        }

    def dumps(self) -> str:
        """The file's text: sorted, one tensor a line (reviewable diffs), floats exact."""
        data = self.to_dict()
        ranges = data.pop("ranges")
        head = json.dumps(data, indent=2)[:-2]
        lines = [f"    {json.dumps(k)}: [{lo!r}, {hi!r}]" for k, (lo, hi) in ranges.items()]
        return head + ',\n  "ranges": {\n' + ",\n".join(lines) + "\n  }\n}\n"


def _fail(where: str, message: str) -> QuantizationError:
    return QuantizationError(f"{where}: {message}")


def parse_ranges(data: Any, name: str) -> Ranges:
    """Check a ranges file's content; every fault is one line naming the file."""
    where = f"quantization/{name}"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _fail(where, f"not a ranges file of format {FORMAT}")
    card, sha = data.get("card"), data.get("sha256")
    if not isinstance(card, str) or not isinstance(sha, str) or len(sha) != 64:
        raise _fail(where, "needs 'card' (the fp32 card's id) and 'sha256' (its file's)")
    if data.get("calibration_method") != "MinMax":
        raise _fail(where, "calibration_method must be 'MinMax'")
    raw = data.get("recipe", {})
    try:
        recipe = Recipe(
            prepare=tuple(raw.get("prepare", ())),
            per_channel=bool(raw.get("per_channel", True)),
            reduce_range=bool(raw.get("reduce_range", True)),
            activation_type=str(raw.get("activation_type", "QUInt8")),
            weight_type=str(raw.get("weight_type", "QInt8")),
            exclude=tuple(raw.get("exclude", ())),
            op_types=tuple(raw.get("op_types", ())),
        )
    except (AttributeError, TypeError):
        raise _fail(where, "'recipe' must be a table") from None
    unknown = [s for s in recipe.prepare if s not in PREPARE_STEPS]
    if unknown:
        raise _fail(where, f"unknown prepare step {unknown[0]!r} (known: {PREPARE_STEPS})")
    if recipe.activation_type not in _QUANT_TYPES or recipe.weight_type not in _QUANT_TYPES:
        raise _fail(where, f"activation_type and weight_type must be one of {_QUANT_TYPES}")
    table = data.get("ranges")
    if not isinstance(table, dict) or not table:
        raise _fail(where, "'ranges' must map tensor names to [min, max]")
    ranges: dict[str, tuple[float, float]] = {}
    for key, value in table.items():
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and value[0] <= value[1]
        ):
            raise _fail(where, f"range of tensor {key!r} must be [min, max] numbers")
        ranges[key] = (float(value[0]), float(value[1]))
    return Ranges(name, card, sha, recipe, ranges, str(data.get("notes", "")))


def load_ranges(name: str, folder: Path | None = None) -> Ranges:
    """A ranges file shipped in this package (or, for tests and tools, in ``folder``)."""
    try:
        if folder is not None:
            text = (folder / name).read_text(encoding="utf-8")
        else:
            text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    except (OSError, ValueError):
        raise _fail(f"quantization/{name}", "no such ranges file in the package") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise _fail(f"quantization/{name}", f"not valid JSON ({error})") from None
    return parse_ranges(data, name)


def check_base(ranges: Ranges, base_id: str, sha256: str | None) -> None:
    """Refuse ranges computed for another file: the tensor names and value ranges of one
    graph say nothing about another's, and a silently wrong INT8 model is worse than none."""
    if ranges.card != base_id:
        raise _fail(
            f"quantization/{ranges.name}",
            f"ranges are for card {ranges.card}, not {base_id}; nothing was built",
        )
    if sha256 != ranges.sha256:
        raise _fail(
            f"quantization/{ranges.name}",
            f"ranges were computed for the {base_id} file with sha256 {ranges.sha256}, this "
            f"one has {sha256}; nothing was built",
        )


def prepare(model: onnx.ModelProto, steps: Iterable[str]) -> onnx.ModelProto:
    """The fp32 graph the ranges were measured on (the same steps in the same order)."""
    from onnx import version_converter

    for step in steps:
        if step == "free_dims":
            from ..detectors.centerface import free_dims

            model = free_dims(model)
        elif step == "opset13":
            model = version_converter.convert_version(model, 13)
        else:  # parse_ranges refused it already
            raise ValueError(step)
    return model


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs pre-processing advice on the root logger; a user
    building a shipped recipe can do nothing about it, so it stays out of their terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_static() -> Any:
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise QuantizationError(
            f"building INT8 copies needs an onnxruntime whose quantize_static reads a "
            f"calibration cache (this one is {onnxruntime.__version__}); "
            "pip install -U onnxruntime"
        )
    return quantize_static


def _options(recipe: Recipe) -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": recipe.per_channel,
        "reduce_range": recipe.reduce_range,
        "activation_type": getattr(QuantType, recipe.activation_type),
        "weight_type": getattr(QuantType, recipe.weight_type),
        "nodes_to_exclude": list(recipe.exclude),
        "op_types_to_quantize": list(recipe.op_types) or None,
    }


def _write_cache(ranges: dict[str, tuple[float, float]], path: Path) -> None:
    """The ranges as ONNX Runtime's calibration cache (``TensorsData``, MinMax)."""
    import numpy as np
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    data = {
        # shape (1,), as ONNX Runtime's MinMax calibrator leaves them
        name: TensorData(lowest=np.array([lo], np.float32), highest=np.array([hi], np.float32))
        for name, (lo, hi) in ranges.items()
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def _read_cache(path: Path) -> dict[str, tuple[float, float]]:
    import numpy as np
    from onnxruntime.quantization.calibrate import load_tensors_data

    tensors = load_tensors_data(path)
    ranges = {}
    for name, value in tensors.data.items():
        lo, hi = (np.asarray(v, np.float32).reshape(-1) for v in value.range_value)
        if lo.size != 1 or hi.size != 1:
            raise QuantizationError(f"tensor {name}: per-channel activation ranges are not kept")
        ranges[name] = (float(lo[0]), float(hi[0]))
    return ranges


def build(base_path: Path, ranges: Ranges, dest: Path) -> None:
    """Write the INT8 graph of the fp32 file ``base_path`` to ``dest`` (checked by the
    caller against ``check_base`` first). Deterministic: same inputs, same bytes."""
    import onnx

    quantize_static = _quantize_static()
    model = prepare(onnx.load(str(base_path)), ranges.recipe.prepare)
    names = {v for node in model.graph.node for v in (*node.input, *node.output)}
    missing = sorted(set(ranges.ranges) - names)
    if missing:
        raise _fail(
            f"quantization/{ranges.name}",
            f"tensor {missing[0]!r} is not in the prepared graph of {base_path.name}",
        )
    with tempfile.TemporaryDirectory(prefix="agegender-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        _write_cache(ranges.ranges, cache)
        out = Path(tmp) / "model.onnx"
        with _quiet_quantizer():
            try:
                quantize_static(
                    model, out, None, calibration_cache_path=cache, **_options(ranges.recipe)
                )
            except (KeyError, ValueError) as error:  # a tensor the quantizer needs is absent
                raise _fail(
                    f"quantization/{ranges.name}", f"ONNX Runtime's quantizer refused it ({error})"
                ) from None
        dest.write_bytes(out.read_bytes())


def calibrate(
    base_path: Path,
    base_id: str,
    sha256: str,
    recipe: Recipe,
    feeds: Iterable[dict[str, NDArray[np.float32]]],
    *,
    name: str,
    notes: str = "",
    feeds_per_pass: int | None = None,
) -> Ranges:
    """Measure the ranges on development inputs (here, never on a user's machine) with
    ONNX Runtime's own MinMax calibrator, through the same ``quantize_static`` call that
    ``build`` makes (so the ranges are the tensors and options the build will need).

    The calibrator keeps every tensor of every feed until the end (faceres-deep: ~110 MB
    per 224x224 crop), and its own limit (``CalibMaxIntermediateOutputs``) drops what it
    collected in ONNX Runtime 1.30; so ``feeds_per_pass`` feeds at most go through one
    ``quantize_static`` call and the passes' ranges are merged: each tensor's lowest
    minimum and highest maximum, which is what one pass over all feeds measures."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, items: Iterator[dict[str, Any]]) -> None:
            self.items = items

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    quantize_static = _quantize_static()
    # the quantizer moves a ModelProto's weights to files of its own: a fresh one each pass
    graph = prepare(onnx.load(str(base_path)), recipe.prepare).SerializeToString()
    items = iter(feeds)
    measured: dict[str, tuple[float, float]] = {}
    while True:
        chunk = list(itertools.islice(items, feeds_per_pass)) if feeds_per_pass else list(items)
        if not chunk and measured:
            break
        with tempfile.TemporaryDirectory(prefix="agegender-calib-") as tmp:
            cache = Path(tmp) / "ranges.json"
            with _quiet_quantizer():
                quantize_static(
                    onnx.load_from_string(graph),
                    Path(tmp) / "model.onnx",
                    Reader(iter(chunk)),
                    calibration_cache_path=cache,
                    **_options(recipe),
                )
            for tensor, (lo, hi) in _read_cache(cache).items():
                old = measured.get(tensor, (lo, hi))
                measured[tensor] = (min(old[0], lo), max(old[1], hi))
        if not feeds_per_pass:
            break
    return Ranges(name, base_id, sha256, recipe, measured, notes)


__all__ = [
    "QuantizationError",
    "Ranges",
    "Recipe",
    "build",
    "calibrate",
    "check_base",
    "load_ranges",
    "parse_ranges",
    "prepare",
]
