"""Presets: named configurations (``presets.toml``): detector, alignment, model heads.

A preset is data read into an :class:`~agegender.config.EstimatorConfig`; a task may list
several cards (an ensemble) with optional weights. A preset's ``calibration`` names a
file in ``agegender/calibrations/`` written by ``agegender calibrate`` (or is an inline
table of the same form: see calibration.py).

``AGEGENDER_DETECTOR`` (a detector name) replaces every preset's detector when a preset
becomes a configuration, e.g. ``dlib`` on a machine without the default's CenterFace file
(the test suite sets it); an explicit ``detector=`` / ``--detector`` still wins.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .calibration import CalibrationError, CalibrationSet, parse_set
from .config import EstimatorConfig
from .errors import AgegenderError

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
    calibration: CalibrationSet | None = None

    def config(self) -> EstimatorConfig:
        """The preset as a configuration (its detector replaced by ``$AGEGENDER_DETECTOR``)."""
        return EstimatorConfig(
            preset=self.name,
            detector=env_detector() or self.detector,
            align=self.align,
            age_models=self.age,
            gender_models=self.gender,
            age_weights=self.age_weights,
            gender_weights=self.gender_weights,
        )


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


def _calibration(name: str, value: Any) -> CalibrationSet | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return parse_set(value, f"of preset {name}")
    if not (isinstance(value, str) and value.endswith(".toml") and "/" not in value):
        raise CalibrationError(f"preset {name}: calibration must name a .toml file, got {value!r}")
    entry = resources.files("agegender").joinpath("calibrations", value)
    return parse_set(tomllib.loads(entry.read_text("utf-8")), f"calibrations/{value}")


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
        )
        for name, t in data.items()
    }


def get_preset(name: str) -> Preset:
    known = presets()
    if name not in known:
        raise AgegenderError(f"unknown preset {name!r}; known: {', '.join(known)}")
    return known[name]


def preset_calibration(name: str) -> CalibrationSet | None:
    """The calibration stored with a built-in preset (None: none, or no such preset)."""
    preset = presets().get(name)
    return None if preset is None else preset.calibration
