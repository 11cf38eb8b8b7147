"""The Estimator: image -> faces -> crops per head -> batched ONNX Runtime -> estimates.

It composes the stages from one :class:`~agegender.config.EstimatorConfig`: a
:class:`~agegender.finder.FaceFinder` (detector, filters, landmarks, alignment) and a
:class:`~agegender.heads.Task` per Face field (one or more heads each). ``prepare`` does
the per-image work (detect, crop); ``estimate`` runs the crops of any number of prepared
images through each head in shared batches. ``predict_many`` chains the two over chunks
of inputs and captures each input's error instead of raising it.

``derive(**overrides)`` gives an estimator with other per-image options (detector,
thresholds, TTA, ...) that shares the loaded sessions: the server's per-request options
and evaluate's whole-image fallback use it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from . import images, sessions
from .cards import ModelCard
from .config import MODEL_FIELDS, EstimatorConfig
from .errors import AgegenderError, single_line
from .faces import Detection, FaceDetector
from .finder import FaceFinder, build_detector, detector_key
from .heads import CropKey, Head, Task, build_tasks, decode_face, distributions
from .landmarks import Landmarker
from .results import Face, ImageResult

log = logging.getLogger(__name__)

MAX_DETECTORS = 8  # detection setups kept per set of loaded models (derive: LRU)
CHUNK_IMAGES = 16


@dataclass
class PreparedImage:
    """One decoded image, its faces and each face's crop for every distinct crop."""

    name: str
    width: int
    height: int
    detections: list[Detection]
    crops: dict[CropKey, list[NDArray[np.uint8]]] = field(default_factory=dict)
    image: NDArray[np.uint8] | None = None


# An input and what predict_many's workers made of it: its prepared image or its error.
Prepared = tuple[images.ImageInput, PreparedImage | str]


class _Shared:
    """What estimators derived from one another share: sessions, landmarks, finders."""

    def __init__(self, config: EstimatorConfig):
        self.models_key = config.models_key()
        # Every session (heads, CNN detectors) is made under the configured providers;
        # resolved first so an unavailable one is an error even before any model loads.
        self.providers = tuple(sessions.resolve_providers(config.providers))
        with sessions.using(self.providers):
            self.tasks: dict[str, Task] = build_tasks(
                {"age": config.age_models, "gender": config.gender_models},
                {"age": config.age_weights, "gender": config.gender_weights},
                threads=config.threads,
                batch_size=config.batch_size,
                calibration=config.calibration,
                preset=config.preset,
            )
        self.landmarker = Landmarker()
        # One detector per distinct detection setup (a handful: the registry's names and
        # alignments); filters such as min_face are per finder and cost nothing.
        # An LRU of the detection setups asked for (each derive with other detection
        # options makes one: a CenterFace session is ~20 MiB, so they are not kept all).
        self.detectors: OrderedDict[tuple[object, ...], FaceDetector] = OrderedDict()
        self.lock = threading.Lock()

    def finder(self, config: EstimatorConfig) -> FaceFinder:
        key = detector_key(config)
        with self.lock:
            detector = self.detectors.get(key)
            if detector is None:
                with sessions.using(self.providers):
                    detector = self.detectors[key] = build_detector(config, self.landmarker)
                while len(self.detectors) > MAX_DETECTORS:  # the least recently asked for
                    self.detectors.popitem(last=False)
            else:
                self.detectors.move_to_end(key)
        return FaceFinder(config, landmarker=self.landmarker, detector=detector)


def describe_error(error: BaseException) -> str:
    """One line for an error: our own messages whole (a line break, as in a file name
    that holds one, written as \\n), others' first line with their type."""
    if isinstance(error, AgegenderError):
        return single_line(str(error).strip())
    text = (str(error).splitlines() or [""])[0].strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Estimator:
    """Age and gender of every face, as an EstimatorConfig says.

    >>> est = Estimator()                                   # the default preset
    >>> est = Estimator.from_preset("levi", tta=False)      # a preset with overrides
    >>> faces = est.predict("photo.jpg")
    >>> faces[0].age.value, faces[0].gender.label
    """

    def __init__(self, config: EstimatorConfig | None = None, /, **overrides: Any):
        if config is None:
            config = EstimatorConfig.from_preset(overrides.pop("preset", "default"), **overrides)
        elif overrides:
            config = config.with_overrides(**overrides)
        self._setup(config, _Shared(config))

    @classmethod
    def from_preset(cls, name: str = "default", **overrides: Any) -> Estimator:
        """The preset's estimator with `overrides` (any EstimatorConfig field)."""
        return cls(EstimatorConfig.from_preset(name, **overrides))

    # A pickled estimator is its configuration: unpickling (in another process, a Ray
    # actor, a multiprocessing worker) builds the models again from it, as Estimator(config)
    # would there; sessions, threads and locks do not travel.
    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        config = state["config"]
        self._setup(config, _Shared(config))

    def _setup(self, config: EstimatorConfig, shared: _Shared) -> None:
        self.config = config
        self._shared = shared
        self.finder = shared.finder(config)
        # Threads that decode and detect in predict_many (dlib releases the GIL).
        self.workers = config.workers or min(4, os.cpu_count() or 1)

    def derive(self, **overrides: Any) -> Estimator:
        """An estimator with other per-image options that shares this one's models."""
        config = self.config.with_overrides(**overrides)
        if config.models_key() != self._shared.models_key:
            changed = [
                name
                for name, now, loaded in zip(
                    MODEL_FIELDS, config.models_key(), self._shared.models_key, strict=True
                )
                if now != loaded
            ]
            raise AgegenderError(
                f"a derived estimator shares the loaded models: {', '.join(changed)} cannot "
                f"change (model options: {', '.join(MODEL_FIELDS)}); make a new Estimator"
            )
        derived = object.__new__(Estimator)
        derived._setup(config, self._shared)
        return derived

    # -- what is loaded ------------------------------------------------------------------
    @property
    def preset(self) -> str:
        return self.config.preset

    @property
    def tasks(self) -> dict[str, Task]:
        """The task of each Face field ("age", "gender") that has models."""
        return self._shared.tasks

    @property
    def heads(self) -> dict[str, list[Head]]:
        return {role: task.heads for role, task in self.tasks.items()}

    @property
    def cards(self) -> dict[str, list[ModelCard]]:
        """The loaded cards by role."""
        return {role: [h.card for h in task.heads] for role, task in self.tasks.items()}

    @property
    def detector(self) -> FaceDetector:
        return self.finder.detector

    def _distinct_heads(self) -> dict[CropKey, Head]:
        return {h.crop_key: h for task in self.tasks.values() for h in task.heads}

    def warm(self) -> None:
        """Build this thread's detector and run every model once (first calls are slow)."""
        rgb = np.full((96, 96, 3), 128, np.uint8)
        self.finder.find(rgb)
        face = Detection((16.0, 16.0, 80.0, 80.0), 1.0, whole_image=True)
        face.landmarks = self.finder.landmarker(rgb, face.box)
        prepared = PreparedImage("<warm-up>", 96, 96, [face])
        for key, head in self._distinct_heads().items():
            prepared.crops[key] = [head.crop(rgb, face)]
        self.estimate([prepared])

    # -- per image -----------------------------------------------------------------------
    def prepare(self, rgb: NDArray[np.uint8], name: str = "<array>") -> PreparedImage:
        """Detect faces in an RGB uint8 image and cut each head's crop."""
        if not (
            isinstance(rgb, np.ndarray)
            and rgb.dtype == np.uint8
            and rgb.ndim == 3
            and rgb.shape[2] == 3
            and rgb.shape[0] > 0
            and rgb.shape[1] > 0
        ):
            got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise images.ImageError(
                f"{name}: prepare takes an RGB uint8 array of shape (H, W, 3), got {got} "
                "(Estimator.decode or predict take other inputs)"
            )
        rgb = np.ascontiguousarray(rgb)  # a view (BGR reversed, Fortran order): dlib needs rows
        detections = self.finder.find(rgb)
        prepared = PreparedImage(name, rgb.shape[1], rgb.shape[0], detections)
        for key, head in self._distinct_heads().items():
            prepared.crops[key] = [head.crop(rgb, d) for d in detections]
        return prepared

    def estimate(self, prepared: Iterable[PreparedImage]) -> list[list[Face]]:
        """Run the crops of all prepared images through each head in shared batches
        (any iterable of them: it is read once, in order)."""
        if isinstance(prepared, PreparedImage):
            raise TypeError("estimate takes a list of prepared images, not one: [prepared]")
        prepared = list(prepared)
        heads = self._distinct_heads()
        for p in prepared:
            if not isinstance(p, PreparedImage):
                raise TypeError(
                    f"estimate takes the prepared images that prepare() returns, got "
                    f"{type(p).__name__} (decode and prepare an image first)"
                )
            missing = [h.card.id for key, h in heads.items() if key not in p.crops]
            if missing or any(len(p.crops[key]) != len(p.detections) for key in heads):
                raise AgegenderError(
                    f"{single_line(p.name)}: this prepared image has no crop for "
                    f"{', '.join(missing) or 'every face'} (prepared by an estimator with "
                    "other models, or changed since); prepare it with this estimator"
                )
        probs = distributions(
            self.tasks,
            lambda head: [c for p in prepared for c in p.crops[head.crop_key]],
            tta=self.config.mirror(),
        )
        thresholds = self.config.age_thresholds
        results: list[list[Face]] = []
        row = 0
        for p in prepared:
            faces = []
            for detection in p.detections:
                estimates = decode_face(
                    self.tasks, {role: probs[role][row] for role in self.tasks}, thresholds
                )
                faces.append(_face(detection, estimates))
                row += 1
            results.append(faces)
        return results

    # -- public entry points ---------------------------------------------------------------
    def decode(
        self, source: images.ImageInput, *, channels: images.ChannelOrder = "RGB"
    ) -> images.DecodedImage:
        return images.load(source, channels=channels, pixel_limit=self.config.pixel_limit)

    def predict(
        self, source: images.ImageInput, *, channels: images.ChannelOrder = "RGB"
    ) -> list[Face]:
        """Faces of one image (path, bytes, PIL image or numpy array in `channels` order).

        Raises ImageError when the input cannot be read.
        """
        decoded = self.decode(source, channels=channels)
        return self.estimate([self.prepare(decoded.rgb, decoded.name)])[0]

    def predict_many(
        self,
        sources: Iterable[images.ImageInput],
        *,
        channels: images.ChannelOrder = "RGB",
        chunk: int = CHUNK_IMAGES,
        keep_images: bool = False,
    ) -> Iterator[ImageResult]:
        """One ImageResult per input, in order; an input's error is captured, not raised.

        Inputs are decoded and detected by `workers` threads, `chunk` images at a time
        (the next chunk is prepared while the current one runs through the models); with
        more than one worker each detects on one intra-op thread
        (``sessions.parallel_worker``), as the workers already share the cores.
        With ``keep_images`` each result carries its decoded RGB image (for annotation).
        An error of `sources` itself (a generator that raises) is raised after the results
        of the inputs it gave before it.
        """
        single = (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray, Image.Image)
        if isinstance(sources, single):
            raise AgegenderError(
                "predict_many takes an iterable of inputs (a list of paths, ...): for one "
                "input call predict, or pass [input]"
            )
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise AgegenderError(f"chunk must be a whole number >= 1, got {chunk!r}")
        inputs = iter(sources)
        pool = ThreadPoolExecutor(
            self.workers,
            thread_name_prefix="agegender-prepare",
            # several workers detect different images at once: one intra-op thread each
            initializer=sessions.parallel_worker if self.workers > 1 else None,
        )

        def submit() -> tuple[list[Future[Prepared]], Exception | None]:
            """The next chunk's inputs, queued; and the error of `sources` if taking one
            from it failed (the inputs taken before it are still queued)."""
            window: list[Future[Prepared]] = []
            try:
                for source in islice(inputs, chunk):
                    window.append(
                        pool.submit(self._load_and_prepare, source, channels, keep_images)
                    )
            except Exception as error:  # the caller's iterable, not one input: raised below
                return window, error
            return window, None

        try:
            window, failed = submit()
            while window or failed:
                following, failed_next = submit() if failed is None else ([], None)
                yield from self._flush([future.result() for future in window])
                if failed is not None:
                    # the results of every input taken before the iterable failed came
                    # first (they were dropped: up to two chunks, prepared for nothing)
                    raise failed
                window, failed = following, failed_next
        finally:
            # An iteration abandoned early (break, close(), the generator collected, an
            # error in the caller's loop, Ctrl-C) drops the images queued ahead instead of
            # decoding and detecting them for nothing: only those already being prepared
            # finish, and no worker thread outlives the generator.
            pool.shutdown(wait=True, cancel_futures=True)

    def _load_and_prepare(
        self, source: images.ImageInput, channels: images.ChannelOrder, keep_image: bool
    ) -> tuple[images.ImageInput, PreparedImage | str]:
        try:
            decoded = self.decode(source, channels=channels)
            prepared = self.prepare(decoded.rgb, decoded.name)
        except Exception as error:  # any one input's failure is its own result
            return source, self._input_error(source, error)
        if keep_image:
            prepared.image = decoded.rgb
        return source, prepared

    def _input_error(self, source: images.ImageInput, error: Exception) -> str:
        if isinstance(error, AgegenderError):
            return describe_error(error)
        log.debug("unexpected error on %s", images.describe(source), exc_info=error)
        return f"{images.describe(source)}: {describe_error(error)}"

    def _estimate_each(
        self, pending: list[tuple[images.ImageInput, PreparedImage | str]]
    ) -> list[list[Face] | str]:
        """Faces of every prepared input in one batch; if that fails, one input at a time,
        so that only the input that fails gets the error."""
        ready = [p for _, p in pending if isinstance(p, PreparedImage)]
        if not ready:
            return []
        try:
            return list(self.estimate(ready))
        except Exception as error:
            if len(ready) == 1:
                source = next(s for s, p in pending if isinstance(p, PreparedImage))
                return [self._input_error(source, error)]
        out: list[list[Face] | str] = []
        for source, item in pending:
            if isinstance(item, PreparedImage):
                try:
                    out.append(self.estimate([item])[0])
                except Exception as error:
                    out.append(self._input_error(source, error))
        return out

    def _flush(
        self, pending: list[tuple[images.ImageInput, PreparedImage | str]]
    ) -> Iterator[ImageResult]:
        faces = iter(self._estimate_each(pending))
        for source, item in pending:
            if isinstance(item, PreparedImage):
                found = next(faces)
                if isinstance(found, str):
                    item = found
            if isinstance(item, str):
                result = ImageResult(images.describe(source), error=item)
            else:
                result = ImageResult(
                    images.describe(source),
                    found,  # type: ignore[arg-type]
                    None,
                    item.width,
                    item.height,
                    image=item.image,
                )
            if isinstance(source, images.Frame):
                # A video frame is reported under its video's path, with its index and time;
                # a video that gave no frame (unreadable, empty, missing) only under its path,
                # as an unreadable image: no frame index or time that was never decoded.
                if source.rgb is None:
                    result = replace(result, path=source.path)
                else:
                    result = replace(result, path=source.path, frame=source.index, time=source.time)
            yield result


def _face(detection: Detection, estimates: dict[str, Any]) -> Face:
    landmarks = None
    if detection.landmarks is not None:
        landmarks = tuple((float(x), float(y)) for x, y in detection.landmarks)
    box = (
        float(detection.box[0]),
        float(detection.box[1]),
        float(detection.box[2]),
        float(detection.box[3]),
    )
    return Face(box, detection.score, landmarks, estimates.get("age"), estimates.get("gender"))
