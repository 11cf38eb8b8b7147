"""Runner: one or more settings over the same records.

A setting is a name and an :class:`~agegender.config.EstimatorConfig`: the command line's
configuration with the setting's own overrides (``PRESET:age=A+B,gender=G,detector=D,
tta=on|off``), so every other option of the command line applies to every setting. Each
setting is one ``Estimator``; its faces are matched to the labelled face, images with no
face found get a whole-image estimate from the same loaded models (``derive(detector=
"none")``), and unreadable images are recorded with their reason. Nothing here computes a
metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import EstimatorConfig
from ..errors import AgegenderError
from ..results import Face, ImageResult
from .metrics import GroupScheme, Outcome
from .readers import Box, Record

# A detection must overlap the labelled box at least this much to be the labelled face.
MATCH_IOU = 0.3
SETTING_KEYS = ("age", "gender", "age_weights", "gender_weights", "detector", "tta")


@dataclass(frozen=True)
class Setting:
    """A named configuration, or why the name could not become one (unknown preset...)."""

    name: str
    config: EstimatorConfig | None
    error: str | None = None


def _cards(value: str) -> list[str]:
    return [v.strip() for v in value.split("+") if v.strip()]


def setting_overrides(spec: str) -> tuple[str, dict[str, Any]]:
    """(preset, configuration overrides) of ``PRESET[:key=value,...]``.

    Keys: age (a card; ``A+B`` or the key repeated: an ensemble), gender (likewise),
    age_weights / gender_weights (``W+W``, one per card: a setting's cards otherwise run
    with equal weights, not the preset's), detector, tta=on|off. A malformed spec is an
    AgegenderError.
    """
    preset, _, options = spec.partition(":")
    preset = preset.strip()
    if not preset:
        raise AgegenderError(f"--compare {spec!r}: a setting starts with a preset name")
    overrides: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or key not in SETTING_KEYS or not value:
            raise AgegenderError(
                f"--compare {spec!r}: options are {', '.join(k + '=...' for k in SETTING_KEYS)}"
            )
        if key == "tta":
            if value not in ("on", "off"):
                raise AgegenderError(f"--compare {spec!r}: tta is on or off")
            overrides["tta"] = value == "on"
        elif key in ("age", "gender"):
            field = f"{key}_models"
            overrides[field] = (*overrides.get(field, ()), *_cards(value))
        elif key in ("age_weights", "gender_weights"):
            try:
                overrides[key] = tuple(float(w) for w in value.split("+"))
            except ValueError:
                raise AgegenderError(
                    f"--compare {spec!r}: {key} is numbers joined by +, such as 0.4+0.6"
                ) from None
        elif "detector" in overrides:
            raise AgegenderError(f"--compare {spec!r}: detector is named twice")
        else:
            overrides["detector"] = value
    return preset, overrides


def parse_setting(spec: str, cli: Mapping[str, Any] | None = None) -> Setting:
    """The setting ``PRESET[:key=value,...]`` over the command line's configuration.

    `cli` holds the options given on the command line (``overrides_from_args``): the
    setting's configuration is the command line's, ``from_preset(PRESET, **cli)``, that
    is ``cli_config.with_overrides(preset=PRESET, **cli)``, with the setting's own keys
    over it. A card named in the setting replaces the command line's cards of that task
    (and their weights, unless --age-weights/--gender-weights were given: then they must
    fit). A malformed spec raises; a preset, option value or card that does not exist
    gives a Setting with its error (its row reports it, the other settings run).
    """
    preset, overrides = setting_overrides(spec)
    try:
        # from_preset drops the preset's weights for cards the caller replaces, unless
        # weights come too (here: the command line's --age-weights / --gender-weights)
        config = EstimatorConfig.from_preset(preset, **{**(cli or {}), **overrides})
    except AgegenderError as error:
        return Setting(spec, None, str(error))
    return Setting(spec, config)


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


def _estimates(
    face: Face,
) -> tuple[float | None, str | None, str | None, float | None, dict[float, float] | None]:
    age = face.age.value if face.age is not None else None
    group = face.age.group if face.age is not None else None
    p_at_least = dict(face.age.p_at_least) if face.age is not None else None
    gender = face.gender.label if face.gender is not None else None
    probability = face.gender.probability if face.gender is not None else None
    return age, group, gender, probability, p_at_least


def outcome_of(record: Record, result: ImageResult) -> Outcome:
    """Turn one image's result into an Outcome (before any fallback)."""
    if result.error is not None:
        return Outcome("error", error=result.error)
    face = select_face(result.faces, record.box, result.width or 0, result.height or 0)
    if face is None:
        return Outcome("no_face", faces=len(result.faces))
    age, group, gender, probability, p_at_least = _estimates(face)
    return Outcome(
        "ok",
        age,
        group,
        gender,
        probability,
        faces=len(result.faces),
        p_at_least=p_at_least,
        interval=face.age.interval if face.age is not None else None,
    )


@dataclass
class SettingRun:
    """One setting's outcome for every record, in record order, or why it could not run.

    `groups` is the scheme its group accuracy is scored in: the groups of its age-groups
    card, or None (Adience's eight)."""

    setting: Setting
    outcomes: list[Outcome]
    error: str | None = None
    groups: GroupScheme | None = None


Progress = Callable[[str, int], Callable[[int], None]]


def group_scheme(estimator: Any) -> GroupScheme | None:
    """The (label, low, high) groups of the estimator's first age-groups card, by low."""
    for card in estimator.cards.get("age", []):
        if card.task == "age-groups":
            spans = zip(card.output.labels, card.output.groups, strict=True)
            return tuple(sorted(((label, lo, hi) for label, (lo, hi) in spans), key=_low))
    return None


def _low(group: tuple[str, float, float]) -> float:
    return group[1]


def run_setting(
    estimator: Any,
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
        # The same loaded models; the whole image is the face (no detector, no sweep).
        whole = estimator.derive(detector="none", align="none", sweep=None)
        for i, result in zip(
            missed, whole.predict_many(records[i].path for i in missed), strict=True
        ):
            if result.error is None and result.faces:
                age, group, gender, _, p_at_least = _estimates(result.faces[0])
                outcomes[i].fallback_age, outcomes[i].fallback_group = age, group
                outcomes[i].fallback_gender = gender
                outcomes[i].fallback_p_at_least = p_at_least
                face_age = result.faces[0].age
                outcomes[i].fallback_interval = face_age.interval if face_age else None
    return outcomes


def run(
    records: Sequence[Record],
    settings: Sequence[Setting],
    *,
    fallback: bool = True,
    progress: Progress | None = None,
) -> list[SettingRun]:
    """Every setting over the same records, one loaded at a time. A setting that cannot
    be built or loaded, or fails while running, gets its error and no outcomes; the other
    settings still run."""
    from ..pipeline import Estimator, describe_error  # here: --help stays light

    runs = []
    for setting in settings:
        if setting.config is None:
            runs.append(SettingRun(setting, [], setting.error or "no configuration"))
            continue
        try:
            estimator = Estimator(setting.config)
            advance = progress(setting.name, len(records)) if progress else None
            outcomes = run_setting(estimator, records, fallback=fallback, advance=advance)
            scheme = group_scheme(estimator)
        except Exception as error:  # one setting's failure must not lose the others
            runs.append(SettingRun(setting, [], describe_error(error)))
            continue
        runs.append(SettingRun(setting, outcomes, groups=scheme))
        del estimator
    return runs
