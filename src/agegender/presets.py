"""Presets: named configurations (``presets.toml``): detector, alignment, model heads.

A preset is data read into an :class:`~agegender.config.EstimatorConfig`; a task may list
several cards (an ensemble) with optional weights. Cards named in ``optional`` join only
when their files are installed (``agegender models pull PRESET`` installs them): the
others' weights are renormalised, and the result's ``models`` say which ran. A preset's
``calibration`` names files in ``agegender/calibrations/`` written by ``agegender
calibrate`` (or is an inline table of the same form: see calibration.py); with several,
each task uses the first fitted for exactly its running cards and weights.

``AGEGENDER_DETECTOR`` (a detector name) replaces every preset's detector when a preset
becomes a configuration, e.g. ``dlib`` on a machine without the default's CenterFace file
(the test suite sets it); an explicit ``detector=`` / ``--detector`` still wins.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .calibration import CalibrationError, CalibrationSet, parse_set
from .config import EstimatorConfig, mirrors
from .errors import AgegenderError

log = logging.getLogger(__name__)

DETECTOR_ENV = "AGEGENDER_DETECTOR"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    detector: str
    age: tuple[str, ...]
    gender: tuple[str, ...]
    align: str = "none"  # none | landmarks | sweep (rotation.py)
    age_weights: tuple[float, ...] | None = None
    gender_weights: tuple[float, ...] | None = None
    calibration: tuple[CalibrationSet, ...] = ()
    optional: tuple[str, ...] = ()
    tta: bool = True  # average with the mirrored crop (twice the head work)
    tta_gated: tuple[str, ...] = ()  # cards mirrored only for uncertain gender (heads.Mirror)
    tta_margin: float = 0.5
    detect_mirror: bool = False  # CenterFace: the mirror image searched too

    def config(self) -> EstimatorConfig:
        """The preset as a configuration (its detector replaced by ``$AGEGENDER_DETECTOR``),
        with the optional cards whose files are not installed left out."""
        age, age_weights = self._running(self.age, self.age_weights)
        gender, gender_weights = self._running(self.gender, self.gender_weights)
        detector = env_detector() or self.detector
        return EstimatorConfig(
            preset=self.name,
            detector=detector,
            detect_mirror=self.detect_mirror and mirrors(detector),
            align=self.align,
            age_models=age,
            gender_models=gender,
            age_weights=age_weights,
            gender_weights=gender_weights,
            tta=self.tta,
            tta_gated=self.tta_gated,
            tta_margin=self.tta_margin,
        )

    def _running(
        self, cards: tuple[str, ...], weights: tuple[float, ...] | None
    ) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
        """The cards (and their weights) that run here: optional ones only if installed."""
        missing = [c for c in cards if c in self.optional and not _installed(c)]
        if missing:
            log.info(
                "preset %s: %s not installed, running without (agegender models pull %s)",
                self.name,
                ", ".join(missing),
                self.name,
            )
        keep = [i for i, c in enumerate(cards) if c not in missing]
        kept = tuple(cards[i] for i in keep)
        if weights is None or len(kept) <= 1:
            return kept, None
        return kept, tuple(weights[i] for i in keep)


def _installed(card_id: str) -> bool:
    """Whether a card's file is on this machine (not hashed: loading checks it, and
    refuses a file of the wrong size with its reason rather than leaving it out)."""
    from .cards import get_card
    from .store import install_state

    return install_state(get_card(card_id)).status in ("installed", "wrong-size", "unverified")


def env_detector() -> str | None:
    """The detector ``$AGEGENDER_DETECTOR`` names (read now), None when unset or empty."""
    name = os.environ.get(DETECTOR_ENV, "").strip()
    if not name:
        return None
    from .faces import DETECTORS  # the registry only: no detection library is imported

    if name not in DETECTORS:
        raise AgegenderError(
            f"{DETECTOR_ENV}={name!r} is not a detector; choose one of {', '.join(DETECTORS)}"
        )
    return name


def _cards(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _weights(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _flag(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AgegenderError(f"preset {name}: {key} must be true or false, got {value!r}")
    return value


def _margin(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 0.5:
        raise AgegenderError(f"preset {name}: tta_margin must be a number in 0..0.5, got {value!r}")
    return float(value)


def _calibration(name: str, value: Any) -> tuple[CalibrationSet, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        return (parse_set(value, f"of preset {name}"),)
    if isinstance(value, list):
        return tuple(s for item in value for s in _calibration(name, item))
    if not (isinstance(value, str) and value.endswith(".toml") and "/" not in value):
        raise CalibrationError(f"preset {name}: calibration must name a .toml file, got {value!r}")
    entry = resources.files("agegender").joinpath("calibrations", value)
    return (parse_set(tomllib.loads(entry.read_text("utf-8")), f"calibrations/{value}"),)


def presets() -> dict[str, Preset]:
    """Every built-in preset, by name."""
    data = tomllib.loads(resources.files("agegender").joinpath("presets.toml").read_text("utf-8"))
    return {
        name: Preset(
            name,
            t.get("description", ""),
            t.get("detector", "dlib"),
            _cards(t.get("age")),
            _cards(t.get("gender")),
            t.get("align", "none"),
            _weights(t.get("age_weights")),
            _weights(t.get("gender_weights")),
            _calibration(name, t.get("calibration")),
            _cards(t.get("optional")),
            _flag(name, "tta", t.get("tta", True)),
            _cards(t.get("tta_gated")),
            _margin(name, t.get("tta_margin", 0.5)),
            _flag(name, "detect_mirror", t.get("detect_mirror", False)),
        )
        for name, t in data.items()
    }


def get_preset(name: str) -> Preset:
    known = presets()
    if name not in known:
        raise AgegenderError(f"unknown preset {name!r}; known: {', '.join(known)}")
    return known[name]


def preset_calibration(
    name: str, role: str | None = None, card_ids: tuple[str, ...] | None = None
) -> CalibrationSet | None:
    """The calibration stored with a built-in preset (None: none, or no such preset): the
    first of its files fitted for `card_ids` in `role` when given, else its first."""
    preset = presets().get(name)
    if preset is None or not preset.calibration:
        return None
    if role is not None and card_ids is not None:
        for candidate in preset.calibration:
            fitted = candidate.age_models if role == "age" else candidate.gender_models
            if tuple(fitted) == tuple(card_ids):
                return candidate
    return preset.calibration[0]
