"""ONNX Runtime: one session per model card, created once, fed in batches.

Preprocessing is read from the card (size, channel order, layout, scale, mean, std);
nothing here knows a particular model. A graph whose batch dimension is fixed to 1 is
rewritten to take any batch (``batching.py``, checked against one-by-one runs); when
that fails its crops go through one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from . import sessions
from .cards import InputSpec, ModelCard, check_against_graph
from .config import DEFAULT_BATCH
from .errors import AgegenderError, CardError, ModelFileError
from .onnxgraph import batch_free

log = logging.getLogger(__name__)


def preprocess(card: ModelCard, crops: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
    """Stack RGB uint8 crops into the tensor the card describes."""
    spec = card.input
    batch = np.stack(crops)  # N, H, W, 3 (RGB), uint8
    if batch.shape[1:] != (spec.height, spec.width, 3):
        raise ValueError(
            f"card {card.id}: crops are {batch.shape[1:]}, the card needs "
            f"{(spec.height, spec.width, 3)}"
        )
    return tensor_from_pixels(batch, spec)


def tensor_from_pixels(batch: NDArray[np.uint8], spec: InputSpec) -> NDArray[np.float32]:
    """(N, H, W, 3) RGB uint8 pixels -> the float32 tensor `spec` describes:
    ``(pixel - mean) * scale / std`` in its channel order and layout.

    Channel order and layout are changed on the uint8 pixels (views), so the one
    conversion to float32 writes the tensor in its final, contiguous order; mean and
    scale are then applied in place, and skipped where they change nothing (a zero mean,
    a factor of 1). The same float operations in the same order as the plain formula:
    the tensor is bitwise the same, in a quarter of the time for a 224 x 224 BGR crop
    (1.22 -> 0.33 ms of CPU: one pass instead of four) and half for CenterFace's input
    of a 1280 x 960 photo (10.7 -> 5.3 ms, most of what remains being the resize).
    """
    if spec.channels == "BGR":
        batch = batch[..., ::-1]
    channel_axis = (1, 1, 1, 3)  # where mean and scale broadcast
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
        channel_axis = (1, 3, 1, 1)
    tensor = batch.astype(np.float32, order="C")
    mean = np.asarray(spec.mean, dtype=np.float32)
    factor = np.float32(spec.scale) / np.asarray(spec.std, dtype=np.float32)
    # in place: each new array of a batch is megabytes, which glibc hands to a worker
    # thread (where Ray Data runs the actors' work) as freshly mapped, page-faulting memory
    if mean.any():
        tensor -= mean.reshape(channel_axis)
    if (factor != 1).any():
        tensor *= factor.reshape(channel_axis)
    return tensor


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def binary_columns(column: NDArray[np.float32], index: int, *, logit: bool) -> NDArray[np.float64]:
    """Two probability columns from a one-column output: ``column`` (a probability, or a
    logit when ``logit``) goes to ``index`` (0 or 1), its complement to the other."""
    p = column.astype(np.float64)
    if logit:
        p = 1.0 / (1.0 + np.exp(-p))
    p = np.clip(p, 0.0, 1.0)
    return np.stack([1.0 - p, p] if index == 1 else [p, 1.0 - p], axis=1)


def fed_range(card: ModelCard) -> tuple[float, float]:
    """The range of the tensor the card feeds (pixels 0..255 after its normalisation)."""
    spec = card.input
    ends = [
        (v - m) * spec.scale / s for m, s in zip(spec.mean, spec.std, strict=True) for v in (0, 255)
    ]
    return min(ends), max(ends)


# Rows x pixels per session run. ONNX Runtime's arena keeps the largest activations it
# has held: faceres-deep (224 x 224) at 64 rows held ~760 MiB peak RSS over 200 FairFace
# crops, at 8 rows 323 MiB, and ran faster (CPU 6.3 -> 5.0 s; one run). Small inputs
# (the CC0 chips) still batch up to the batch size.
MAX_BATCH_PIXELS = 8 * 224 * 224


def _dims(value_info: ort.NodeArg) -> list[int | str | None]:
    return [d if isinstance(d, int) else (d or None) for d in value_info.shape]


class OnnxModel:
    """A card and its ONNX Runtime session."""

    session: ort.InferenceSession
    graph_source: str

    def __init__(
        self,
        card: ModelCard,
        path: str | Path,
        *,
        threads: int | None = None,
        max_batch: int = DEFAULT_BATCH,
        batch_rewrite: bool = True,
        providers: Sequence[str] | None = None,
        session_of: OnnxModel | None = None,
    ):
        """`providers`: execution providers (short or full names); None: those of the
        enclosing ``sessions.using`` (the Estimator's), else the CPU. `session_of`: another
        card's model of the same file, whose session this one uses (checked against this
        card like a new one: faceres' age and gender cards hold one session)."""
        self.card = card
        self.path = Path(path)
        if session_of is not None:
            self.session, self.graph_source = session_of.session, session_of.graph_source
        else:
            try:
                loaded = batch_free.open_graph(
                    self.path,
                    # quiet: a wrong graph is our one-line error, not ONNX Runtime's
                    # dozens of warnings before it (as for the detectors)
                    options=sessions.options(threads, quiet=True),
                    providers=providers,
                    value_range=fed_range(card),
                    name=f"model {card.id}",
                    rewrite=batch_rewrite,
                )
            except AgegenderError:
                raise
            except Exception as error:  # ORT and protobuf raise their own types
                raise ModelFileError(
                    f"model {card.id}: {self.path} is not a loadable ONNX graph "
                    f"({(str(error).splitlines() or [type(error).__name__])[0]})"
                ) from None
            self.session = loaded.session
            self.graph_source = loaded.source
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise CardError(f"card {card.id}: graph has {len(inputs)} inputs, expected 1")
        self.input = inputs[0]
        if card.input.name and card.input.name != self.input.name:
            raise CardError(
                f"card {card.id}: graph input is {self.input.name!r}, the card says "
                f"{card.input.name!r}"
            )
        names = [o.name for o in outputs]
        if card.output.name:
            if card.output.name not in names:
                raise CardError(
                    f"card {card.id}: graph has no output {card.output.name!r} "
                    f"(it has {', '.join(names)})"
                )
            self.output = outputs[names.index(card.output.name)]
        else:
            self.output = outputs[0]
        check_against_graph(card, _dims(self.input), _dims(self.output))
        first = _dims(self.input)[0]
        self.fixed_batch = first if isinstance(first, int) else None
        pixels = card.input.height * card.input.width
        self.max_batch = (
            1 if self.fixed_batch == 1 else max(1, min(max_batch, MAX_BATCH_PIXELS // pixels))
        )
        if self.fixed_batch == 1:
            log.info("model %s: graph batch is fixed to 1; faces run one at a time", card.id)
        # On an accelerator every run has one shape: batches are padded to max_batch.
        # ONNX Runtime's CUDA convolutions set themselves up again whenever the input
        # shape differs from the previous run's: 170-580 ms for faceres-deep on an H200,
        # whose run of 8 faces then takes 4 ms (README, GPU). On the CPU a shape change
        # costs nothing and padding would cost compute, so batches stay as they come.
        self.padded = (
            sessions.on_accelerator(self.session)
            and self.fixed_batch is None
            and self.max_batch > 1
        )

    def outputs(
        self, crops: Sequence[NDArray[np.uint8]], names: Sequence[str]
    ) -> dict[str, NDArray[np.float32]]:
        """The graph's raw outputs `names` (each N x columns) for N crops, in batches of at
        most max_batch: one session run gives every output asked for, so heads reading
        different outputs of one graph (faceres' age and gender) share the run."""
        parts: dict[str, list[NDArray[np.float32]]] = {name: [] for name in names}
        for start in range(0, len(crops), self.max_batch):
            tensor = preprocess(self.card, crops[start : start + self.max_batch])
            rows = len(tensor)
            if self.padded and rows < self.max_batch:  # zero rows after the crops
                tensor = np.pad(tensor, [(0, self.max_batch - rows)] + [(0, 0)] * (tensor.ndim - 1))
            outs = self.session.run(list(names), {self.input.name: tensor})
            for name, out in zip(names, outs, strict=True):
                parts[name].append(np.asarray(out, dtype=np.float32)[:rows].reshape(rows, -1))
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def probabilities(self, raw: NDArray[np.float32]) -> NDArray[np.float64]:
        """This card's distribution (N, width) from its raw output (N, graph columns)."""
        spec = self.card.output
        if raw.shape[1] != spec.graph_width:
            raise CardError(
                f"card {self.card.id}: graph gave {raw.shape[1]} outputs, the card "
                f"says {spec.graph_width}"
            )
        if spec.binary:
            return binary_columns(
                raw[:, 0], spec.labels.index(spec.binary), logit=not spec.softmax_in_graph
            )
        if not spec.softmax_in_graph:
            raw = softmax(raw)
        return raw.astype(np.float64)

    def run(self, crops: Sequence[NDArray[np.uint8]]) -> NDArray[np.float64]:
        """Probabilities (N, width) for N crops, in batches of at most max_batch."""
        if not crops:
            return np.zeros((0, self.card.output.width))
        return self.probabilities(self.outputs(crops, [self.output.name])[self.output.name])
