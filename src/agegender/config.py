"""One configuration for every entry point: a preset's values overlaid with the caller's.

``EstimatorConfig`` is frozen; ``EstimatorConfig.from_preset(name, **overrides)`` takes the
preset's detector, alignment and model heads and applies the overrides with
``dataclasses.replace`` (as timm's ``resolve_pretrained_cfg`` and ultralytics'
``get_cfg(cfg, overrides)`` do). The CLI's defaults, evaluate's settings and serve's
per-request options are all read from or written into this one object; nothing else
restates an option or its default.

This module imports nothing heavy (no ONNX Runtime, dlib or OpenCV): ``--help`` reads it.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .errors import AgegenderError

if TYPE_CHECKING:
    from .heads import Mirror

ALIGN_MODES = ("none", "landmarks", "sweep")
DEFAULT_SWEEP = (-60.0, 60.0, 5.0)  # DEX: -60..60 degrees in 5 degree steps
DEFAULT_PIXEL_LIMIT = 50_000_000
MAX_AGE_THRESHOLD = 150.0  # P(age >= t) beyond any age: t is a typo
DEFAULT_MAX_DETECT_SIDE = 1600
MAX_UPSAMPLE = 4  # dlib's upsampling steps (each quadruples the pixels)
MAX_THREADS = 256  # threads per model session, decode/detect workers
DEFAULT_BATCH = 32
NAME_BYTES = 255  # the longest file name most file systems take


def name_too_long(name: str) -> bool:
    """Whether a file or folder name is longer than most file systems take (checked
    before the work for outputs made after it)."""
    return len(os.fsencode(name)) > NAME_BYTES


# Options that change which graphs are loaded or how: an estimator derived for a request
# or a fallback shares its loaded models, so these must stay the same.
MODEL_FIELDS = (
    "age_models",
    "gender_models",
    "age_weights",
    "gender_weights",
    "threads",
    "batch_size",
    "calibration",
    "providers",
)


@dataclass(frozen=True)
class EstimatorConfig:
    """Everything that decides what an Estimator does (the README's option table).

    Build one with :meth:`from_preset` (the preset supplies detector, alignment and
    models): a bare ``EstimatorConfig()`` names no model, which is a detector-only setup.
    """

    preset: str = "default"
    # Heads: a card id, "CARD=path/to/file.onnx", a ModelCard or (card, path), one or
    # more per task; several are combined by a weighted mean of
    # their distributions (DEX-style ensembles). Empty: no estimate of that task.
    age_models: tuple[Any, ...] = ()
    gender_models: tuple[Any, ...] = ()
    age_weights: tuple[float, ...] | None = None  # None: equal weights
    gender_weights: tuple[float, ...] | None = None
    # faces
    detector: str = "dlib"
    upsample: int | None = None  # dlib: None = at size, then once more if nothing found
    max_detect_side: int | None = None  # None: the detector's own (dlib, haar: 1600)
    min_face: int = 0
    min_score: float | None = None
    align: str = "none"
    sweep: tuple[float, float, float] | None = None  # only with align="sweep"
    # CenterFace detectors: the image's mirror image is searched too, for the faces the
    # passes missed (README, Face detectors: dev scenes' recall 0.990 -> 0.997, for about
    # 30% more detection work).
    detect_mirror: bool = False
    # estimates
    # Measured on utkface-dev (README): flip averaging lowers the CC0 age model's MAE.
    tta: bool = True
    # With tta, these cards (the costly ones) average with the mirror image only for faces
    # whose gender is uncertain: top probability below 0.5 + tta_margin, computed without
    # their mirror (heads.Mirror). 0.5: every face, as for the other cards.
    tta_gated: tuple[str, ...] = ()
    tta_margin: float = 0.5
    age_thresholds: tuple[float, ...] = ()
    # Calibration of std, interval, P(age >= t) and gender probability (calibration.py):
    # "" the preset's (or a lone card's own), "none" raw model outputs, or a TOML file
    # written by `agegender calibrate`.
    calibration: str = ""
    # inputs and execution
    pixel_limit: int | None = DEFAULT_PIXEL_LIMIT
    threads: int | None = None  # ONNX Runtime threads per model
    batch_size: int = DEFAULT_BATCH
    workers: int | None = None  # decode/detect threads (None: min(4, CPUs))
    # ONNX Runtime execution providers, short ("cuda") or full ("CUDAExecutionProvider")
    # names, tried in this order with the CPU always last (sessions.py); () is the CPU.
    providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Sequences given as lists are kept as tuples (hashable, frozen).
        for name in ("age_models", "gender_models", "age_thresholds", "tta_gated"):
            value = getattr(self, name)
            if value is None or (isinstance(value, (str, bytes)) and not value):
                value = ()
            elif isinstance(value, (set, frozenset, dict)):  # models pair with weights
                raise AgegenderError(
                    f"--{_flag(name)}: give a list or a tuple (in order), not a "
                    f"{type(value).__name__}"
                )
            elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                value = (value,)  # one name, one number
            object.__setattr__(self, name, tuple(value))  # a list, a numpy array, ...
        for name in ("age_weights", "gender_weights"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _numbers(name, value))
        if self.sweep is not None:
            sweep = _numbers("sweep", self.sweep)
            if len(sweep) != 3:
                raise AgegenderError(f"--sweep needs START:STOP:STEP, got {len(sweep)} numbers")
            object.__setattr__(self, "sweep", sweep)
        # A threshold is kept as it is printed (6 significant digits: the JSON key, the CSV
        # column), and one given twice counts once (-0 is 0).
        given = _numbers("age_thresholds", self.age_thresholds)
        thresholds = dict.fromkeys(float(f"{t:g}") + 0.0 for t in given)  # -0.0 is 0
        object.__setattr__(self, "age_thresholds", tuple(thresholds))
        object.__setattr__(self, "providers", _provider_names(self.providers))
        if self.calibration is None:
            object.__setattr__(self, "calibration", "")
        object.__setattr__(self, "calibration", str(self.calibration))
        self.validate()

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str = "default", **overrides: Any) -> EstimatorConfig:
        """The preset's configuration with `overrides` applied (unknown names are an error)."""
        from .presets import get_preset

        preset = get_preset(name)
        base = preset.config()
        detector = overrides.get("detector")
        if "detect_mirror" not in overrides and detector is not None:
            # the preset's mirror-image search, where the detector asked for can run it
            overrides["detect_mirror"] = preset.detect_mirror and mirrors(detector)
        # The caller's cards for a task replace the preset's, and so drop the preset's
        # weights for them (unless the caller gives weights too).
        for role in ("age", "gender"):
            if f"{role}_models" in overrides and f"{role}_weights" not in overrides:
                overrides[f"{role}_weights"] = None
        return base.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> EstimatorConfig:
        """A copy with the given fields replaced; a preset override starts from that preset."""
        unknown = sorted(set(overrides) - set(option_names()))
        if unknown:
            raise AgegenderError(
                f"unknown option {unknown[0]!r}; options are {', '.join(option_names())}"
            )
        preset = overrides.pop("preset", None)
        if preset is not None and preset != self.preset:
            return EstimatorConfig.from_preset(preset, **overrides)
        # Another detector drops the mirror-image search (the preset's, for its detector)
        # where it cannot run it, unless asked for.
        detector = overrides.get("detector")
        if "detect_mirror" not in overrides and detector is not None and not mirrors(detector):
            overrides["detect_mirror"] = False
        # New cards for a task drop the weights of the old ones (unless weights come too),
        # as from_preset does.
        for role in ("age", "gender"):
            if f"{role}_models" in overrides and f"{role}_weights" not in overrides:
                overrides[f"{role}_weights"] = None
        return replace(self, **overrides) if overrides else self

    # -- checks ---------------------------------------------------------------------
    def mirror(self) -> Mirror:
        """The test-time augmentation policy the heads run with (heads.Mirror)."""
        from .heads import Mirror

        return Mirror(self.tta, frozenset(self.tta_gated), self.tta_margin)

    def validate(self) -> None:
        """Reject impossible values with one line naming the option (never ignore one)."""
        self._check_types()
        if self.align not in ALIGN_MODES:
            raise AgegenderError(
                f"unknown alignment {self.align!r}; choose one of {', '.join(ALIGN_MODES)}"
            )
        from .faces import DETECTORS  # the registry only: no detection library is imported

        if self.detector not in DETECTORS:  # told when the configuration is made, not later
            raise AgegenderError(
                f"unknown detector {self.detector!r}; choose one of {', '.join(DETECTORS)}"
            )
        if self.detect_mirror and not mirrors(self.detector):
            raise AgegenderError(
                f"--detect-mirror applies only to the CenterFace detectors (here: {self.detector})"
            )
        if self.sweep is not None:
            if self.align != "sweep":
                raise AgegenderError("--sweep applies only with --align sweep")
            start, stop, step = self.sweep
            if not all(math.isfinite(v) for v in self.sweep) or step <= 0 or stop < start:
                raise AgegenderError(
                    f"--sweep needs START <= STOP and STEP > 0, got {start:g}:{stop:g}:{step:g}"
                )
        for name, low in (("min_face", 0), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise AgegenderError(f"--{_flag(name)} must be >= {low}, got {getattr(self, name)}")
        high = {"upsample": MAX_UPSAMPLE, "threads": MAX_THREADS, "workers": MAX_THREADS}
        for name in ("upsample", "max_detect_side", "pixel_limit", "threads", "workers"):
            value = getattr(self, name)
            low = 0 if name == "upsample" else 1
            if value is not None and value < low:
                raise AgegenderError(f"--{_flag(name)} must be >= {low}, got {value}")
            if value is not None and name in high and value > high[name]:
                # dlib's upsampling quadruples the pixels each step (5: 26 s, 3 GB for a
                # 512 x 512 photo); thousands of threads abort ONNX Runtime
                raise AgegenderError(f"--{_flag(name)} must be <= {high[name]}, got {value}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise AgegenderError(f"--min-score must be a number, got {self.min_score}")
        # CenterFace's decoding threshold: at 0 or less every heatmap cell is a face, at 1
        # or more none is (and each image scaled down is passed again for nothing)
        score = self.min_score
        if score is not None and scores_probabilities(self.detector) and not 0.0 < score < 1.0:
            raise AgegenderError(
                f"--min-score must be between 0 and 1 (exclusive) with --detector "
                f"{self.detector}, whose scores are probabilities; got {score:g}"
            )
        if not (math.isfinite(self.tta_margin) and 0.0 <= self.tta_margin <= 0.5):
            raise AgegenderError(f"--tta-margin must be between 0 and 0.5, got {self.tta_margin}")
        if not all(isinstance(c, str) and c for c in self.tta_gated):
            gated = list(self.tta_gated)
            raise AgegenderError(f"tta_gated must name cards by id, got {gated!r:.80}")
        for t in self.age_thresholds:
            if not (math.isfinite(t) and 0 <= t <= MAX_AGE_THRESHOLD):
                raise AgegenderError(
                    f"--age-threshold must be a number from 0 to {MAX_AGE_THRESHOLD:g}, got {t}"
                )
        for task in ("age", "gender"):
            weights = getattr(self, f"{task}_weights")
            heads = getattr(self, f"{task}_models")
            if weights is None:
                continue
            if len(weights) != len(heads):
                raise AgegenderError(
                    f"--{task}-weights: {len(weights)} weights for {len(heads)} {task} models"
                )
            if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise AgegenderError(
                    f"--{task}-weights must be >= 0 with a positive sum, got "
                    f"{','.join(f'{w:g}' for w in weights)}"
                )

    def _check_types(self) -> None:
        """Options of the wrong type (from Python: the command line parses its own), with
        one line naming the option, before they fail somewhere deep or act wrongly (the
        string "no" for tta is true)."""
        for name, kind, optional in _NUMBER_FIELDS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                what = "a whole number" if kind is numbers.Integral else "a number"
                raise AgegenderError(f"--{_flag(name)} must be {what}, got {value!r}")
        for name in ("tta", "detect_mirror"):
            if not isinstance(getattr(self, name), bool):
                raise AgegenderError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("detector", "align"):
            if not isinstance(getattr(self, name), str):
                raise AgegenderError(f"--{_flag(name)} must be a name, got {getattr(self, name)!r}")

    # -- views ------------------------------------------------------------------------
    @property
    def sweep_range(self) -> tuple[float, float, float]:
        return self.sweep if self.sweep is not None else DEFAULT_SWEEP  # type: ignore[return-value]

    def models_key(self) -> tuple[Any, ...]:
        """What decides the loaded graphs (an estimator derived from this one shares them)."""
        return tuple(getattr(self, name) for name in MODEL_FIELDS)

    def as_dict(self) -> dict[str, Any]:
        """The options as plain data (for reports, manifests and logs)."""
        out: dict[str, Any] = {}
        for name in option_names():
            value = getattr(self, name)
            if name in ("age_models", "gender_models"):
                value = [_ref_name(v) for v in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def option_names() -> list[str]:
    """The configuration's option names, in declaration order."""
    return [f.name for f in fields(EstimatorConfig)]


def default_of(name: str) -> Any:
    """An option's default (for help texts): the dataclass field's own."""
    for f in fields(EstimatorConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


def mirrors(detector: str) -> bool:
    """Whether a detector can search an image's mirror image too (detect_mirror): its
    registry entry says so."""
    from .faces import DETECTORS  # the registry only: no detection library is imported

    spec = DETECTORS.get(detector) if isinstance(detector, str) else None
    return spec is not None and spec.mirror


def scores_probabilities(detector: str) -> bool:
    """Whether a detector's scores are probabilities (0..1), so a min_score must lie
    strictly between: its registry entry says so."""
    from .faces import DETECTORS  # the registry only: no detection library is imported

    spec = DETECTORS.get(detector) if isinstance(detector, str) else None
    return spec is not None and spec.probability


# The numeric options: (name, type, whether None is allowed).
_NUMBER_FIELDS: tuple[tuple[str, type, bool], ...] = (
    ("min_face", numbers.Integral, False),
    ("batch_size", numbers.Integral, False),
    ("upsample", numbers.Integral, True),
    ("max_detect_side", numbers.Integral, True),
    ("pixel_limit", numbers.Integral, True),
    ("threads", numbers.Integral, True),
    ("workers", numbers.Integral, True),
    ("min_score", numbers.Real, True),
    ("tta_margin", numbers.Real, False),
)


def _numbers(name: str, values: Any) -> tuple[float, ...]:
    """`values` as floats, or a one-line error naming the option."""
    try:
        if any(isinstance(v, (str, bytes, bool)) for v in values):
            raise TypeError  # "18" or True where a number goes, as min_face="3" is
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise AgegenderError(f"--{_flag(name)} must be numbers, got {values!r:.80}") from None


def _provider_names(value: Any) -> tuple[str, ...]:
    """Providers as a tuple of names: "cuda,cpu", ["cuda", "cpu"] and None are accepted.

    Only the spelling is checked here (this module must not import ONNX Runtime); whether
    the installed ONNX Runtime offers a provider is checked when sessions are made.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items)
    if isinstance(value, str) and names == ("",):
        return ()
    for name in names:
        if not name.replace("_", "").isalnum():
            raise AgegenderError(
                f"--providers: {name!r} is not a provider name (e.g. cpu, cuda, "
                "tensorrt, openvino, coreml, dml, or CUDAExecutionProvider)"
            )
    return names


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _ref_name(ref: Any) -> str:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, tuple):
        return f"{ref[0].id}={ref[1]}"
    return str(getattr(ref, "id", ref))
