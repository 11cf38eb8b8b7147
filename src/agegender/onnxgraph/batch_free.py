"""Freeing the batch dimension of fixed-batch graphs, so faces go through in one run.

The zoo's Caffe conversions declare batch 1 everywhere: on the input and output, in every
value_info, and in the shape initializer of the Reshape in front of each fully connected
layer. Run as they are, they take one face per call. :func:`free_batch` makes dim 0
symbolic, drops the stale value_info and turns the leading 1 of each Reshape shape
constant into 0 ("copy the batch from the input"). A rewrite is only trusted after
:func:`check_batch_equivalence` shows that a batch of random inputs gives what one-by-one
runs give; otherwise the caller runs one face at a time and says why in the log.

The rewritten graph is cached next to the original as ``<file>.batched.onnx`` (or in the
cache folder when that folder is read-only), keyed by the original's size and mtime, so
the rewrite and its check are paid once per file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .. import sessions
from ..errors import AgegenderError
from ..store.layout import StoreLayout
from . import opsets

log = logging.getLogger(__name__)

BATCH_DIM = "N"
REWRITE_VERSION = "1"  # bump when the rewrite changes, so old caches are ignored
KEY_PROP = "agegender.batched_from"
CHECK_BATCH = 3


class BatchRewriteError(AgegenderError):
    """A graph's batch dimension cannot be freed (the reason says where)."""


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old graphs list both)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def has_fixed_batch(model: onnx.ModelProto) -> bool:
    """True when any real input declares batch dim 0 as the literal 1."""
    return any((dims := _dims(v)) and dims[0] == 1 for v in graph_inputs(model))


def _set_batch(value: onnx.ValueInfoProto) -> None:
    shape = value.type.tensor_type.shape
    if shape.dim:
        shape.dim[0].Clear()
        shape.dim[0].dim_param = BATCH_DIM


def _shape_sources(
    model: onnx.ModelProto,
) -> tuple[dict[str, onnx.TensorProto], dict[str, onnx.NodeProto]]:
    inits = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
    return inits, constants


def _consumers(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    for out in model.graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _batch_free_shape(shape: np.ndarray, where: str) -> np.ndarray | None:
    """The shape with its baked batch (leading 1) replaced by 0, or None if already free."""
    if shape.ndim != 1 or shape.size == 0:
        raise BatchRewriteError(f"{where}: shape constant is not a 1-D list of dims")
    if shape[0] in (0, -1):
        return None
    if shape[0] != 1:
        raise BatchRewriteError(f"{where}: leading dim {int(shape[0])} is not the batch of 1")
    freed = shape.copy()
    freed[0] = 0
    return freed


def _initializer_inputs(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    return any(v.name in inits for v in model.graph.input)


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Stop declaring initializers as graph inputs (caffe-onnx does, pre-IR-4 style).

    ONNX Runtime treats such initializers as overridable, so it neither constant-folds
    nor pre-packs them; from IR 4 on they need not be inputs.
    """
    if model.ir_version < 4:
        model.ir_version = 4
    inits = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.input if v.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def free_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose batch dim is symbolic; BatchRewriteError when it cannot be."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    real = graph_inputs(out)
    if not real:
        raise BatchRewriteError("graph has no input")
    for value in real:
        dims = _dims(value)
        if not dims or (dims[0] not in (1, None) and not isinstance(dims[0], str)):
            raise BatchRewriteError(f"input {value.name!r} has no leading batch dim of 1 ({dims})")
        _set_batch(value)
    for value in graph.output:
        _set_batch(value)
    # Intermediate shapes were inferred for batch 1; ONNX Runtime re-infers them.
    del graph.value_info[:]
    drop_initializer_inputs(out)

    inits, constants = _shape_sources(out)
    uses = _consumers(out)
    for node in graph.node:
        if node.op_type in ("Expand", "Tile", "ConstantOfShape", "Resize", "Upsample"):
            raise BatchRewriteError(
                f"{node.op_type} node {node.name!r} may bake in the batch; not rewritten"
            )
        if node.op_type != "Reshape":
            continue
        where = f"Reshape {node.name or node.output[0]!r}"
        if len(node.input) < 2:  # Reshape-1: the shape is an attribute
            for attr in node.attribute:
                if attr.name == "shape":
                    freed = _batch_free_shape(np.asarray(attr.ints, np.int64), where)
                    if freed is not None:
                        attr.ints[:] = [int(v) for v in freed]
            continue
        source = node.input[1]
        if source in inits:
            freed = _batch_free_shape(numpy_helper.to_array(inits[source]), where)
            if freed is None:
                continue
            if uses.get(source, 0) > 1:  # shared: give this Reshape its own copy
                source = f"{source}__batch_free_{node.output[0]}"
                graph.initializer.append(numpy_helper.from_array(freed, source))
                node.input[1] = source
            else:
                inits[source].CopyFrom(numpy_helper.from_array(freed, source))
        elif source in constants:
            const = constants[source]
            attr = next((a for a in const.attribute if a.name == "value"), None)
            if attr is None:
                raise BatchRewriteError(f"{where}: its Constant has no tensor 'value'")
            freed = _batch_free_shape(numpy_helper.to_array(attr.t), where)
            if freed is None:
                continue
            if uses.get(source, 0) > 1:
                raise BatchRewriteError(f"{where}: its shape Constant is shared")
            attr.t.CopyFrom(numpy_helper.from_array(freed, attr.t.name))
        # Otherwise the shape is computed at run time (Shape -> Gather -> Concat): free already.
    return out


def check_batch_equivalence(
    session: ort.InferenceSession,
    *,
    batch: int = CHECK_BATCH,
    low: float = 0.0,
    high: float = 255.0,
    seed: int = 0,
    rtol: float = 1e-3,
    atol: float = 1e-5,
) -> str | None:
    """None when a batch of random inputs matches one-by-one runs, else the reason it does not."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return f"graph has {len(inputs)} inputs, expected 1"
    spec = inputs[0]
    rest = spec.shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return f"input {spec.name!r} has non-fixed dims {spec.shape}"
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, size=(batch, *rest)).astype(np.float32)
    try:
        together = session.run(None, {spec.name: x})
        alone = [session.run(None, {spec.name: x[i : i + 1]}) for i in range(batch)]
    except Exception as error:  # ORT raises its own exception types from C++
        return f"batched run failed: {f'{error}'.splitlines()[0]}"
    for k, out in enumerate(session.get_outputs()):
        got = np.asarray(together[k])
        want = np.concatenate([np.asarray(a[k]) for a in alone], axis=0)
        if got.shape != want.shape:
            return f"output {out.name!r} has shape {got.shape} batched, {want.shape} one by one"
        if not np.allclose(got, want, rtol=rtol, atol=atol):
            worst = float(np.max(np.abs(got - want)))
            return f"output {out.name!r} differs batched vs one by one (max abs diff {worst:.3g})"
    return None


def file_key(path: Path) -> str:
    """What identifies the original for the cache: its size and mtime, and the rewrite version."""
    st = path.stat()
    return f"v{REWRITE_VERSION}:{st.st_size}:{st.st_mtime_ns}"


def default_cache_dir() -> Path:
    """The store's ``batched`` folder (``$AGEGENDER_HOME``, else the user cache folder)."""
    return StoreLayout.default().graph_cache_dir()


def cache_paths(original: Path, cache_dir: Path | None = None) -> list[Path]:
    """Where a rewrite is cached, in order: ``<file>.batched.onnx`` beside the original,
    then the cache folder (for originals in read-only folders, such as a package's data)."""
    beside = original.with_name(original.name + ".batched.onnx")
    digest = hashlib.sha256(str(original.resolve()).encode()).hexdigest()[:16]
    return [beside, (cache_dir or default_cache_dir()) / f"{original.stem}-{digest}.batched.onnx"]


def _key_file(path: Path) -> Path:
    # A sidecar, so checking the cache does not parse a 500 MB protobuf.
    return path.with_name(path.name + ".key")


def _cached(path: Path, key: str) -> bool:
    try:
        return path.is_file() and _key_file(path).read_text(encoding="utf-8").strip() == key
    except OSError:
        return False


def _stage(data: bytes, target: Path) -> Path:
    """Write `data` to a temporary file beside `target` (renamed into place once trusted)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


@dataclass(frozen=True)
class LoadedGraph:
    """An open session and whether it takes more than one face per run."""

    session: ort.InferenceSession
    batched: bool
    source: str  # the file the session was opened from, or "<memory>"
    reason: str = ""  # why it runs one at a time, when it does


def _session(
    model_or_path: onnx.ModelProto | Path,
    options: ort.SessionOptions | None,
    providers: Sequence[str] | None,
) -> ort.InferenceSession:
    data = model_or_path if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    return sessions.create(data, session_options=options, providers=providers)


def open_graph(
    path: str | Path,
    *,
    cache_dir: Path | None = None,
    options: ort.SessionOptions | None = None,
    providers: Sequence[str] | None = None,
    value_range: tuple[float, float] = (0.0, 255.0),
    name: str | None = None,
    rewrite: bool = True,
) -> LoadedGraph:
    """Open `path` for ONNX Runtime, upgraded from a legacy opset and batch-freed when needed.

    `value_range` is the range of the fed tensor (after the card's normalisation), used for
    the random inputs of the equivalence check. ``rewrite=False`` opens the graph as it is
    (after an opset upgrade) and writes nothing: for a look at a file, not for serving.
    """
    path = Path(path)
    label = name or str(path)
    key = file_key(path)
    targets = cache_paths(path, cache_dir)
    for target in targets if rewrite else ():
        if _cached(target, key):  # checked first: a hit never parses a 500 MB protobuf
            return LoadedGraph(_session(target, options, providers), True, str(target))
    model = onnx.load_model(str(path))
    changed = opsets.needs_upgrade(model)
    if changed:
        model = opsets.upgrade(model, label)
    if _initializer_inputs(model):
        drop_initializer_inputs(model)
        changed = True
    original: onnx.ModelProto | Path = model if changed else path
    original_name = "<memory>" if changed else str(path)
    if not has_fixed_batch(model):
        return LoadedGraph(_session(original, options, providers), True, original_name)
    if not rewrite:
        session = _session(original, options, providers)
        return LoadedGraph(session, False, original_name, "rewrite not asked for")

    try:
        rewritten = free_batch(model)
    except BatchRewriteError as error:
        reason = str(error)
    else:
        rewritten.metadata_props.add(key=KEY_PROP, value=key)
        data = rewritten.SerializeToString()  # once: 2 s for a DEX file
        del rewritten
        reason, loaded = _open_checked(data, targets, key, label, options, providers, value_range)
        if loaded is not None:
            return loaded
    log.warning("%s: fixed batch of 1 kept, faces run one at a time: %s", label, reason)
    return LoadedGraph(_session(original, options, providers), False, original_name, reason)


def _open_checked(
    data: bytes,
    targets: Sequence[Path],
    key: str,
    label: str,
    options: ort.SessionOptions | None,
    providers: Sequence[str] | None,
    value_range: tuple[float, float],
) -> tuple[str, LoadedGraph | None]:
    """Open the rewritten graph, check it, and cache it: ("", graph) or (reason, None).

    It is staged in the first writable cache folder and opened from there (ONNX Runtime
    reads a file faster than it takes 500 MB of bytes from Python); the staged file is
    renamed into place only when the check passes.
    """
    staged: tuple[Path, Path] | None = None
    errors = []
    for target in targets:
        try:
            _key_file(target).unlink(missing_ok=True)
            staged = (_stage(data, target), target)
            break
        except OSError as error:
            errors.append(f"{target}: {error.strerror or error}")
    try:
        source = str(staged[0]) if staged else data
        session = sessions.create(source, session_options=options, providers=providers)
        reason = check_batch_equivalence(session, low=value_range[0], high=value_range[1])
        if reason:
            return reason, None
        if staged is None:
            log.warning("%s: batch-free graph not cached (%s)", label, "; ".join(errors))
            return "", LoadedGraph(session, True, "<memory>")
        tmp, target = staged
        os.replace(tmp, target)
        staged = None
        _key_file(target).write_text(key + "\n", encoding="utf-8")
        return "", LoadedGraph(session, True, str(target))
    except OSError as error:
        return f"cannot cache the rewritten graph: {error.strerror or error}", None
    except sessions.ProviderError:
        raise  # the configuration's fault, not the graph's
    except Exception as error:  # ORT refusing the rewritten graph
        return f"rewritten graph does not load: {f'{error}'.splitlines()[0]}", None
    finally:
        if staged is not None:
            staged[0].unlink(missing_ok=True)
