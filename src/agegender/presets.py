"""Presets: named choices of detector and model cards (``presets.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources

from .errors import AgegenderError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    detector: str
    age: str | None
    gender: str | None
    align: str = "none"  # none | landmarks | sweep (rotation.py)


def presets() -> dict[str, Preset]:
    """Every built-in preset, by name."""
    data = tomllib.loads(resources.files("agegender").joinpath("presets.toml").read_text("utf-8"))
    return {
        name: Preset(
            name,
            t.get("description", ""),
            t.get("detector", "dlib"),
            t.get("age"),
            t.get("gender"),
            t.get("align", "none"),
        )
        for name, t in data.items()
    }


def get_preset(name: str) -> Preset:
    known = presets()
    if name not in known:
        raise AgegenderError(f"unknown preset {name!r}; known: {', '.join(known)}")
    return known[name]
