"""The Estimator: image -> faces -> crops per card -> batched ONNX Runtime -> estimates.

``prepare`` does the per-image work (decode, detect, landmarks, crops); ``estimate``
runs the crops of any number of prepared images through each model in batches.
``predict_many`` chains the two over chunks of inputs, so the faces of many images share
batches, and captures each input's error instead of raising it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from . import crops, images, rotation, sources
from .cards import ModelCard, get_card
from .errors import AgegenderError, CardError
from .estimates import age_estimate, gender_from_probs
from .faces import Detection, FaceDetector, Landmarker, make_detector
from .inference import DEFAULT_BATCH, OnnxModel
from .presets import get_preset
from .results import Face, ImageResult

log = logging.getLogger(__name__)

# Measured on utkface-dev (README): flip averaging lowers the CC0 age model's MAE.
DEFAULT_TTA = True
CHUNK_IMAGES = 16

ModelRef = str | ModelCard | tuple[ModelCard, str | Path]


def load_model(
    ref: ModelRef, *, threads: int | None = None, max_batch: int = DEFAULT_BATCH
) -> OnnxModel:
    """An ONNX model from a card id, a card, ``CARD=PATH`` or (card, path).

    With an explicit path the card's size and hash are not required to match (a user's
    own conversion of the same model); the graph is still checked against the card.
    """
    path: Path | None = None
    if isinstance(ref, tuple):
        card, path = ref[0], Path(ref[1])
    elif isinstance(ref, ModelCard):
        card = ref
    elif "=" in ref:
        card_ref, _, file = ref.partition("=")
        card, path = get_card(card_ref), Path(file).expanduser()
    else:
        card = get_card(ref)
    if path is None:
        path = sources.resolve(card)
    elif not path.is_file():
        raise AgegenderError(f"model {card.id}: {path} is not a file")
    return OnnxModel(card, path, threads=threads, max_batch=max_batch)


@dataclass
class PreparedImage:
    """One decoded image, its faces and each face's crop for every model."""

    name: str
    width: int
    height: int
    detections: list[Detection]
    crops: dict[str, list[NDArray[np.uint8]]] = field(default_factory=dict)
    image: NDArray[np.uint8] | None = None


class Estimator:
    """Age and gender of every face, with the models and detector of a preset.

    >>> faces = Estimator().predict("photo.jpg")
    >>> faces[0].age.value, faces[0].gender.label
    """

    def __init__(
        self,
        preset: str = "default",
        *,
        age_model: ModelRef | None = None,
        gender_model: ModelRef | None = None,
        detector: str | FaceDetector | None = None,
        tta: bool | None = None,
        upsample: int | None = None,
        max_detect_side: int | None = 1600,
        min_face: int = 0,
        min_score: float | None = None,
        pixel_limit: int | None = images.DEFAULT_PIXEL_LIMIT,
        age_thresholds: Sequence[float] = (),
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        workers: int | None = None,
        align: str | None = None,
        sweep: tuple[float, float, float] = rotation.DEFAULT_SWEEP,
    ):
        chosen = get_preset(preset)
        self.preset = chosen.name
        align = align if align is not None else chosen.align
        if align not in rotation.ALIGN_MODES:
            raise AgegenderError(
                f"unknown alignment {align!r}; choose one of {', '.join(rotation.ALIGN_MODES)}"
            )
        age_ref = age_model if age_model is not None else chosen.age
        gender_ref = gender_model if gender_model is not None else chosen.gender
        self.models: dict[str, OnnxModel] = {}
        if age_ref:
            self.models["age"] = load_model(age_ref, threads=threads, max_batch=batch_size)
            if self.models["age"].card.task not in ("age", "age-groups"):
                raise CardError(f"card {self.models['age'].card.id} is not an age model")
        if gender_ref:
            self.models["gender"] = load_model(gender_ref, threads=threads, max_batch=batch_size)
            if self.models["gender"].card.task != "gender":
                raise CardError(f"card {self.models['gender'].card.id} is not a gender model")
        if upsample is None and align == "sweep":
            upsample = 0  # auto would upsample (4x the time) at every angle without a face
        self.upsample = upsample
        self.max_detect_side = max_detect_side
        if isinstance(detector, str) or detector is None:
            detector = self.make_detector(detector or chosen.detector)
        self.landmarker = Landmarker()
        self.align = align
        if align == "sweep":
            try:
                detector = rotation.SweepDetector(
                    detector,
                    start=sweep[0],
                    stop=sweep[1],
                    step=sweep[2],
                    landmarks=self.landmarker,
                )
            except ValueError as error:
                raise AgegenderError(f"rotation sweep: {error}") from None
        self.detector: FaceDetector = detector
        self.tta = DEFAULT_TTA if tta is None else tta
        self.min_face = min_face
        self.min_score = min_score
        self.pixel_limit = pixel_limit
        self.age_thresholds = tuple(age_thresholds)
        # Threads that decode and detect in predict_many (dlib releases the GIL).
        self.workers = workers or min(4, os.cpu_count() or 1)

    def make_detector(self, name: str) -> FaceDetector:
        """A detector backend by name, with this estimator's upsampling and size limit."""
        return make_detector(name, upsample=self.upsample, max_side=self.max_detect_side)

    @property
    def cards(self) -> dict[str, ModelCard]:
        """The loaded cards by role ("age", "gender")."""
        return {role: model.card for role, model in self.models.items()}

    # -- per image -------------------------------------------------------------
    def prepare(
        self,
        rgb: NDArray[np.uint8],
        name: str = "<array>",
        *,
        detector: FaceDetector | None = None,
        min_face: int | None = None,
    ) -> PreparedImage:
        """Detect faces in an RGB uint8 image and cut each model's crop.

        `detector` and `min_face` override the estimator's for this image only (the
        server's per-request options share one set of loaded models).
        """
        detector = detector or self.detector
        min_face = self.min_face if min_face is None else min_face
        detections = [
            d
            for d in detector.detect(rgb)
            if min(d.width, d.height) >= min_face
            and (self.min_score is None or d.score >= self.min_score)
        ]
        for detection in detections:
            if detection.landmarks is None:
                detection.landmarks = self.landmarker(rgb, detection.box)
            if self.align == "landmarks" and not detection.whole_image:
                rotation.align_by_landmarks(detection)
        prepared = PreparedImage(name, rgb.shape[1], rgb.shape[0], detections)
        for role, model in self.models.items():
            card = model.card
            size = (card.input.height, card.input.width)
            prepared.crops[role] = [crops.crop_for(rgb, d, card.crop, size) for d in detections]
        return prepared

    def estimate(
        self,
        prepared: Sequence[PreparedImage],
        *,
        tta: bool | None = None,
        age_thresholds: Sequence[float] | None = None,
    ) -> list[list[Face]]:
        """Run the crops of all prepared images through each model in shared batches.

        `tta` and `age_thresholds` override the estimator's for this call only.
        """
        tta = self.tta if tta is None else tta
        thresholds = self.age_thresholds if age_thresholds is None else tuple(age_thresholds)
        probs: dict[str, NDArray[np.float64]] = {}
        for role, model in self.models.items():
            batch = [c for p in prepared for c in p.crops[role]]
            out = model.run(batch)
            if tta and batch:
                # Horizontal flip: average the two distributions (the README has the gain).
                out = (out + model.run([np.ascontiguousarray(c[:, ::-1]) for c in batch])) / 2
            probs[role] = out
        results: list[list[Face]] = []
        row = 0
        for p in prepared:
            faces = []
            for detection in p.detections:
                faces.append(self._face(detection, probs, row, thresholds))
                row += 1
            results.append(faces)
        return results

    def _face(
        self,
        detection: Detection,
        probs: dict[str, NDArray[np.float64]],
        row: int,
        thresholds: tuple[float, ...],
    ) -> Face:
        age = gender = None
        if "age" in probs:
            age = age_estimate(self.models["age"].card, probs["age"][row], thresholds)
        if "gender" in probs:
            gender = gender_from_probs(
                probs["gender"][row], self.models["gender"].card.output.labels
            )
        landmarks = None
        if detection.landmarks is not None:
            landmarks = tuple((float(x), float(y)) for x, y in detection.landmarks)
        return Face(tuple(float(v) for v in detection.box), detection.score, landmarks, age, gender)  # type: ignore[arg-type]

    # -- public entry points ----------------------------------------------------------
    def decode(
        self, source: images.ImageInput, *, channels: images.ChannelOrder = "RGB"
    ) -> images.DecodedImage:
        return images.load(source, channels=channels, pixel_limit=self.pixel_limit)

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
        sources_: Iterable[images.ImageInput],
        *,
        channels: images.ChannelOrder = "RGB",
        chunk: int = CHUNK_IMAGES,
        keep_images: bool = False,
    ) -> Iterator[ImageResult]:
        """One ImageResult per input, in order; an input's error is captured, not raised.

        Inputs are decoded and detected by `workers` threads, `chunk` images at a time
        (the next chunk is prepared while the current one runs through the models).
        With ``keep_images`` each result carries its decoded RGB image (for annotation).
        """
        inputs = iter(sources_)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="agegender-prepare") as pool:

            def submit() -> list[Future[tuple[images.ImageInput, PreparedImage | str]]]:
                return [
                    pool.submit(self._load_and_prepare, s, channels, keep_images)
                    for s in islice(inputs, chunk)
                ]

            window = submit()
            while window:
                following = submit()
                yield from self._flush([future.result() for future in window])
                window = following

    def _load_and_prepare(
        self, source: images.ImageInput, channels: images.ChannelOrder, keep_image: bool
    ) -> tuple[images.ImageInput, PreparedImage | str]:
        try:
            decoded = self.decode(source, channels=channels)
            prepared = self.prepare(decoded.rgb, decoded.name)
        except AgegenderError as error:
            return source, str(error)
        if keep_image:
            prepared.image = decoded.rgb
        return source, prepared

    def _flush(
        self, pending: list[tuple[images.ImageInput, PreparedImage | str]]
    ) -> Iterator[ImageResult]:
        ready = [p for _, p in pending if isinstance(p, PreparedImage)]
        faces = iter(self.estimate(ready)) if ready else iter(())
        for source, item in pending:
            if isinstance(item, str):
                result = ImageResult(images.describe(source), error=item)
            else:
                result = ImageResult(
                    images.describe(source),
                    next(faces),
                    None,
                    item.width,
                    item.height,
                    image=item.image,
                )
            if isinstance(source, images.Frame):
                # A video frame is reported under its video's path, with its index and time.
                result = replace(result, path=source.path, frame=source.index, time=source.time)
            yield result
