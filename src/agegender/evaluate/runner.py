"""Runner: one or more settings (preset, models, detector) over the same records.

Each setting is one ``Estimator``; its faces are matched to the labelled face, images with
no face found get a whole-image estimate from the same models (detector "none"), and
unreadable images are recorded with their reason. Nothing here computes a metric.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AgegenderError
from ..faces import make_detector
from ..pipeline import Estimator
from ..results import Face, ImageResult
from .metrics import Outcome
from .readers import Box, Record

# A detection must overlap the labelled box at least this much to be the labelled face.
MATCH_IOU = 0.3
SETTING_KEYS = ("age", "gender", "detector", "tta")


@dataclass
class Setting:
    """A named pipeline configuration: a preset and the options that override it."""

    name: str
    preset: str = "default"
    age_model: str | None = None
    gender_model: str | None = None
    detector: str | None = None
    tta: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other Estimator keyword arguments

    def estimator(self, *, cropped: bool = False) -> Estimator:
        """The Estimator of this setting; with `cropped`, the whole image is the face."""
        return Estimator(
            self.preset,
            age_model=self.age_model,
            gender_model=self.gender_model,
            detector="none" if cropped else self.detector,
            tta=self.tta,
            **self.extra,
        )


def parse_setting(spec: str, base: Setting | None = None) -> Setting:
    """``PRESET`` or ``PRESET:key=value,...`` (keys: age, gender, detector, tta=on|off).

    Options not given come from `base` (the command line's own --age-model etc.).
    """
    preset, _, options = spec.partition(":")
    preset = preset.strip()
    if not preset:
        raise AgegenderError(f"--compare {spec!r}: a setting starts with a preset name")
    setting = copy.deepcopy(base) if base else Setting(spec)
    setting.name, setting.preset = spec, preset
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in SETTING_KEYS:
            raise AgegenderError(
                f"--compare {spec!r}: options are {', '.join(k + '=...' for k in SETTING_KEYS)}"
            )
        if key == "tta":
            if value not in ("on", "off"):
                raise AgegenderError(f"--compare {spec!r}: tta is on or off")
            setting.tta = value == "on"
        elif key == "age":
            setting.age_model = value
        elif key == "gender":
            setting.gender_model = value
        else:
            setting.detector = value
    return setting


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(box: Box, width: int, height: int) -> bool:
    slack_x, slack_y = 0.05 * width, 0.05 * height
    return (
        box[0] >= -slack_x
        and box[1] >= -slack_y
        and box[2] <= width + slack_x
        and box[3] <= height + slack_y
    )


def select_face(faces: Sequence[Face], box: Box | None, width: int, height: int) -> Face | None:
    """The detected face that the labels describe.

    With a labelled box inside the image: the face with the highest IoU, if it reaches
    MATCH_IOU (else None: the labelled face was missed even if others were found).
    Otherwise: the face with the largest area weighted by how central it is,
    area * (1 - d), d the distance of its centre from the image centre over half the diagonal.
    """
    if not faces:
        return None
    if box is not None and _inside(box, width, height):
        best = max(faces, key=lambda f: iou(f.box, box))
        return best if iou(best.box, box) >= MATCH_IOU else None
    cx, cy, half_diagonal = width / 2, height / 2, max((width**2 + height**2) ** 0.5 / 2, 1e-9)

    def weight(face: Face) -> float:
        x1, y1, x2, y2 = face.box
        d = (((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2) ** 0.5 / half_diagonal
        return (x2 - x1) * (y2 - y1) * max(1.0 - d, 0.0)

    return max(faces, key=weight)


def _estimates(face: Face) -> tuple[float | None, str | None, str | None, float | None]:
    age = face.age.value if face.age is not None else None
    group = face.age.group if face.age is not None else None
    gender = face.gender.label if face.gender is not None else None
    probability = face.gender.probability if face.gender is not None else None
    return age, group, gender, probability


def outcome_of(record: Record, result: ImageResult) -> Outcome:
    """Turn one image's result into an Outcome (before any fallback)."""
    if result.error is not None:
        return Outcome("error", error=result.error)
    face = select_face(result.faces, record.box, result.width or 0, result.height or 0)
    if face is None:
        return Outcome("no_face", faces=len(result.faces))
    age, group, gender, probability = _estimates(face)
    return Outcome("ok", age, group, gender, probability, faces=len(result.faces))


@dataclass
class SettingRun:
    """One setting's outcome for every record, in record order, or why it could not run."""

    setting: Setting
    outcomes: list[Outcome]
    error: str | None = None


Progress = Callable[[str, int], Callable[[int], None]]


def run_setting(
    estimator: Estimator,
    records: Sequence[Record],
    *,
    fallback: bool = True,
    advance: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Run one Estimator over the records; give no-face images a whole-image estimate."""
    outcomes: list[Outcome] = []
    for record, result in zip(
        records, estimator.predict_many(r.path for r in records), strict=True
    ):
        outcomes.append(outcome_of(record, result))
        if advance:
            advance(1)
    missed = [i for i, o in enumerate(outcomes) if o.status == "no_face"]
    if fallback and missed:
        whole = copy.copy(estimator)  # same loaded models, the whole image as the face
        whole.detector = make_detector("none")
        for i, result in zip(
            missed, whole.predict_many(records[i].path for i in missed), strict=True
        ):
            if result.error is None and result.faces:
                age, group, gender, _ = _estimates(result.faces[0])
                outcomes[i].fallback_age, outcomes[i].fallback_group = age, group
                outcomes[i].fallback_gender = gender
    return outcomes


def run(
    records: Sequence[Record],
    settings: Sequence[Setting],
    *,
    cropped: bool = False,
    fallback: bool = True,
    progress: Progress | None = None,
) -> list[SettingRun]:
    """Every setting over the same records, one loaded at a time. A setting whose models
    cannot be loaded gets its error and no outcomes; the other settings still run."""
    runs = []
    for setting in settings:
        try:
            estimator = setting.estimator(cropped=cropped)
        except AgegenderError as error:
            runs.append(SettingRun(setting, [], str(error)))
            continue
        advance = progress(setting.name, len(records)) if progress else None
        runs.append(
            SettingRun(setting, run_setting(estimator, records, fallback=fallback, advance=advance))
        )
        del estimator
    return runs
