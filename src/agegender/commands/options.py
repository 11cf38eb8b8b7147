"""Command-line options that choose and tune the Estimator, shared by every command.

Each option maps to one field of :class:`~agegender.config.EstimatorConfig`; its default
and help come from that class, and an option not given on the command line keeps the
preset's value (argparse's default is ``SUPPRESS``, so only given options overlay it).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import config as cfg
from ..errors import AgegenderError

if TYPE_CHECKING:
    from ..pipeline import Estimator


def check_folder_of(where: str, path: Path) -> None:
    """The folder an output file goes into exists and takes new files (one-line errors,
    before any work)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise AgegenderError(f"{where}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AgegenderError(f"{where}: the folder {parent} is not writable")


def number(kind: type, low: float | None = None, high: float | None = None) -> Any:
    """An argparse type: a finite `kind` (int or float) within [low, high], one-line errors."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def sweep_range(text: str) -> tuple[float, float, float]:
    try:
        start, stop, step = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP:STEP in degrees, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in (start, stop, step)) or step <= 0 or stop < start:
        raise argparse.ArgumentTypeError(f"need START <= STOP and STEP > 0, got {text!r}")
    return start, stop, step


def _weights(text: str) -> tuple[float, ...]:
    parse = number(float, 0.0)
    return tuple(parse(part) for part in text.split(","))


def _providers(text: str) -> tuple[str, ...]:
    """--providers a,b: the names as a tuple; availability is checked when sessions open."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected NAME[,NAME...], got {text!r}")
    return names


def _detector_names() -> list[str]:
    from ..faces import DETECTORS  # the registry; imported here to keep --help light

    return list(DETECTORS)


DEFAULT_VIDEO_STEP = 1.0  # = video.DEFAULT_STEP_SECONDS (video.py imports OpenCV)
MIN_VIDEO_STEP = 1e-6  # = video.MIN_STEP_SECONDS


def video_step(text: str) -> float:
    """--video-step: 0 (every frame) or at least MIN_VIDEO_STEP seconds."""
    value = float(number(float, 0)(text))
    if 0 < value < MIN_VIDEO_STEP:
        raise argparse.ArgumentTypeError(
            f"must be 0 (every frame) or at least {MIN_VIDEO_STEP:g} seconds, got {text!r}"
        )
    return value


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """Progress and video sampling options of the commands that read many inputs."""
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (drawn on stderr only when it is a terminal)",
    )
    parser.add_argument(
        "--video-step",
        type=video_step,
        default=DEFAULT_VIDEO_STEP,
        metavar="SECONDS",
        help="videos: analyse one frame every SECONDS (0: every frame; default %(default)s)",
    )
    parser.add_argument(
        "--max-frames",
        type=number(int, 1),
        default=None,
        metavar="N",
        help="videos: at most N frames each",
    )


def add_estimator_options(parser: argparse.ArgumentParser) -> None:
    """Options that choose and tune the Estimator (EstimatorConfig fields)."""
    d = cfg.default_of
    S = argparse.SUPPRESS
    group = parser.add_argument_group("models and faces")
    group.add_argument(
        "--preset", default=S, help=f"preset of detector and models (default: {d('preset')})"
    )
    group.add_argument(
        "--age-model",
        dest="age_models",
        action="append",
        default=S,
        metavar="CARD[=FILE]",
        help="age model card id (or CARD=path/to/file.onnx); repeat for an ensemble",
    )
    group.add_argument(
        "--gender-model",
        dest="gender_models",
        action="append",
        default=S,
        metavar="CARD[=FILE]",
        help="gender model card id (or CARD=FILE); repeat for an ensemble",
    )
    group.add_argument(
        "--age-weights",
        type=_weights,
        default=S,
        metavar="W,W,...",
        help="weights of the age models' distributions (default: equal)",
    )
    group.add_argument(
        "--gender-weights",
        type=_weights,
        default=S,
        metavar="W,W,...",
        help="weights of the gender models' distributions (default: equal)",
    )
    group.add_argument(
        "--detector",
        choices=_DetectorChoices(),
        default=S,
        help="face detector; 'none' when inputs are already face crops "
        "(default: $AGEGENDER_DETECTOR, else the preset's)",
    )
    group.add_argument(
        "--upsample",
        type=number(int, 0, cfg.MAX_UPSAMPLE),
        default=S,
        help="dlib upsampling steps for small faces (default: auto)",
    )
    group.add_argument(
        "--max-detect-side",
        type=number(int, 1),
        default=S,
        help="detect on a copy with this longer side at most (default: the detector's: "
        f"{cfg.DEFAULT_MAX_DETECT_SIDE} for dlib and haar, the card's for CNN detectors)",
    )
    group.add_argument(
        "--detect-mirror",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="CenterFace: search each image's mirror image too, for the faces its passes "
        "missed (scenes: recall 0.990 -> 0.997, about 30%% more detection work; default: "
        "the preset's: on in best)",
    )
    group.add_argument(
        "--align",
        choices=list(cfg.ALIGN_MODES),
        default=S,
        help="turn tilted faces upright for margin crops: 'sweep' runs the detector on "
        "rotated copies as DEX did, 'landmarks' uses the eye line (default: the preset's, "
        "'none' in the built-in presets)",
    )
    start, stop, step = cfg.DEFAULT_SWEEP
    group.add_argument(
        "--sweep",
        type=sweep_range,
        default=S,
        metavar="START:STOP:STEP",
        help=f"angles of --align sweep in degrees (default: {start:g}:{stop:g}:{step:g})",
    )
    group.add_argument(
        "--min-face",
        type=number(int, 0),
        default=S,
        help=f"ignore faces smaller than this (pixels; default: {d('min_face')})",
    )
    group.add_argument(
        "--min-score",
        type=number(float),
        default=S,
        help="ignore detections scoring lower (dlib: 0.2 drops weak false positives "
        "on JPEG textures, and a few real faces)",
    )
    group.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=S,
        help=f"average each face with its mirror image (default: the preset's: {_tta_defaults()})",
    )
    group.add_argument(
        "--tta-margin",
        type=number(float, 0, 0.5),
        default=S,
        metavar="M",
        help="the preset's costly heads (default: faceres-deep) average with the mirror "
        "only for faces whose gender probability is within M of 0.5 (default: the "
        "preset's, 0.2; 0.5: every face)",
    )
    group.add_argument(
        "--age-threshold",
        dest="age_thresholds",
        type=number(float),
        action="append",
        default=S,
        metavar="T",
        help="also report P(age >= T); repeatable",
    )
    group.add_argument(
        "--calibration",
        default=S,
        metavar="FILE|none",
        help="calibration of spread, interval and probabilities: a file written by "
        "'agegender calibrate', or 'none' for the models' raw outputs (default: the preset's)",
    )
    group.add_argument(
        "--pixel-limit",
        type=number(int, 1),
        default=S,
        help=f"refuse images with more pixels (default: {d('pixel_limit')})",
    )
    group.add_argument(
        "--threads",
        type=number(int, 1, cfg.MAX_THREADS),
        default=S,
        help="ONNX Runtime threads per model",
    )
    group.add_argument(
        "--batch-size",
        type=number(int, 1),
        default=S,
        help=f"faces per model run (default: {d('batch_size')})",
    )
    group.add_argument(
        "--providers",
        type=_providers,
        default=S,
        metavar="NAME,...",
        help="ONNX Runtime execution providers in order of preference, e.g. cuda or "
        "tensorrt,cuda (short or full names); the CPU is always added last (default: cpu)",
    )


def _tta_defaults() -> str:
    """Which presets run TTA, for --tta's help ("on; off in fast"), read from presets.toml
    (not through presets.py, which loads the calibration files: --help stays light)."""
    import tomllib
    from importlib import resources

    text = resources.files("agegender").joinpath("presets.toml").read_text(encoding="utf-8")
    default = cfg.default_of("tta")
    tables = tomllib.loads(text).items()
    other = [name for name, table in tables if table.get("tta", default) != default]
    said = "on" if default else "off"
    return said + (f"; {'off' if default else 'on'} in {', '.join(other)}" if other else "")


class _DetectorChoices:
    """argparse choices read from the detector registry when first used (not at import)."""

    def __contains__(self, name: object) -> bool:
        return name in _detector_names()

    def __iter__(self) -> Any:
        return iter(_detector_names())


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields given on the command line (and only those)."""
    names = set(cfg.option_names())
    return {k: v for k, v in vars(args).items() if k in names and k != "preset"}


def config_from_args(args: argparse.Namespace) -> cfg.EstimatorConfig:
    """The preset named by --preset (or the default) overlaid with the given options."""
    preset = getattr(args, "preset", cfg.default_of("preset"))
    overrides = overrides_from_args(args)
    config = cfg.EstimatorConfig.from_preset(preset, **dict(overrides))
    refuse_ignored(overrides, config)
    return config


def refuse_ignored(given: dict[str, Any], config: cfg.EstimatorConfig) -> None:
    """A one-line error for an option given on the command line that the resulting
    configuration would ignore (the run would look as if it had applied)."""
    detector = config.detector
    if "upsample" in given and detector != "dlib":
        raise AgegenderError(f"--upsample applies only to --detector dlib (here: {detector})")
    if detector == "none":
        for name in ("max_detect_side", "min_score", "detect_mirror"):
            if name in given:
                raise AgegenderError(
                    f"--{name.replace('_', '-')} steers face detection, which --detector none skips"
                )
        if "align" in given and config.align == "sweep":
            raise AgegenderError(
                "--align sweep searches rotations with a detector: not with --detector none"
            )
        if "align" in given and config.align == "landmarks":
            raise AgegenderError(
                "--align landmarks turns each face by the detector's eye landmarks: "
                "--detector none finds no landmarks (the whole image is the face)"
            )
    if "tta_margin" in given and not config.tta:
        raise AgegenderError(f"--tta-margin applies only with TTA ({_tta_off_by(given, config)})")
    if "tta_margin" in given and not _gated_cards_run(config):
        gated = ", ".join(config.tta_gated) or "none"
        raise AgegenderError(
            "--tta-margin applies only to the models mirrored behind the gate (this preset's: "
            f"{gated}), and none of them runs here: it would change nothing"
        )


def _tta_off_by(given: dict[str, Any], config: cfg.EstimatorConfig) -> str:
    """What turned TTA off, for the error: --no-tta, else the preset (whose own setting a
    user who never typed --no-tta should be told of), else the caller's configuration."""
    from ..presets import get_preset

    if "tta" in given:
        return "turned off by --no-tta"
    try:
        preset_tta = get_preset(config.preset).tta
    except AgegenderError:
        preset_tta = True
    if not preset_tta:
        if _gated_cards_run(config):
            return f"the preset {config.preset} runs without it; add --tta"
        # --tta would not help: no model of this run is mirrored behind the gate
        return f"the preset {config.preset} runs without it, and gates none of its models"
    return "it is off in this configuration"


def _gated_cards_run(config: cfg.EstimatorConfig) -> bool:
    """Whether a card of the mirror gate may run (a card TOML path or a ModelCard: its id
    is known only once loaded, so it may)."""
    ids = set()
    for ref in (*config.age_models, *config.gender_models):
        if not isinstance(ref, str) or ref.lower().endswith(".toml"):
            return True
        ids.add(ref.split("=", 1)[0])
    return bool(ids & set(config.tta_gated))


def estimator_from_args(args: argparse.Namespace) -> Estimator:
    from ..pipeline import Estimator

    return Estimator(config_from_args(args))


# Options that steer face detection, which --cropped (the whole image is the face) skips.
DETECTION_ONLY = ("upsample", "max_detect_side", "min_score", "detect_mirror", "align", "sweep")


def check_cropped(cli: dict[str, Any]) -> None:
    """With --cropped (evaluate, calibrate): refuse a detector or a detection option given
    on the command line; it would be ignored."""
    if cli.get("detector", "none") != "none":
        raise AgegenderError(
            f"--cropped with --detector {cli['detector']}: with --cropped the whole image "
            "is the face (no detector)"
        )
    for name in DETECTION_ONLY:
        if name in cli:
            raise AgegenderError(
                f"--cropped with --{name.replace('_', '-')}: that option steers face "
                "detection, which --cropped skips"
            )
