"""Result types: what a user gets back, and their JSON form (the README documents it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


@dataclass(frozen=True)
class AgeEstimate:
    """Age in years: expected value, spread, a central interval and P(age >= t).

    For an age-groups model, ``group`` and ``group_probability`` name the most
    probable group and ``value`` is the expected value over the groups' midpoints.
    """

    value: float
    std: float
    interval: tuple[float, float]
    interval_mass: float = 0.8
    p_at_least: dict[float, float] = field(default_factory=dict)
    group: str | None = None
    group_probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": _r(self.value),
            "std": _r(self.std),
            "interval": [_r(self.interval[0]), _r(self.interval[1])],
            "interval_mass": self.interval_mass,
        }
        if self.p_at_least:
            out["p_at_least"] = {f"{t:g}": _r(p, 4) for t, p in self.p_at_least.items()}
        if self.group is not None:
            out["group"] = self.group
            out["group_probability"] = _r(self.group_probability or 0.0, 4)
        return out


@dataclass(frozen=True)
class GenderEstimate:
    """The more probable gender and its probability."""

    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": _r(self.probability, 4)}


@dataclass(frozen=True)
class Face:
    """One face: where it is, how sure the detector was, and the estimates."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None
    age: AgeEstimate | None
    gender: GenderEstimate | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [_r(v, 1) for v in self.box],
            "score": _r(self.score, 4),
            "landmarks": None
            if self.landmarks is None
            else [[_r(x, 1), _r(y, 1)] for x, y in self.landmarks],
            "age": None if self.age is None else self.age.to_dict(),
            "gender": None if self.gender is None else self.gender.to_dict(),
        }


@dataclass(frozen=True)
class ImageResult:
    """All faces of one input, or the reason it could not be processed."""

    path: str
    faces: list[Face] = field(default_factory=list)
    error: str | None = None
    width: int | None = None
    height: int | None = None
    frame: int | None = None  # video frames only: index and time (seconds) in the video
    time: float | None = None
    # The decoded RGB image, kept only when asked (for annotation); never serialised.
    image: NDArray[np.uint8] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.frame is not None:
            out["frame"] = self.frame
            out["time"] = None if self.time is None else round(self.time, 3)
        out.update(
            width=self.width,
            height=self.height,
            faces=[f.to_dict() for f in self.faces],
            error=self.error,
        )
        return out
