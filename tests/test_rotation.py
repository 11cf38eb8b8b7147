"""Upright faces: DEX's rotation sweep and the landmarks' eye line, on a rotated photo.

Uprightness is measured independently of the code under test: dlib's detector and its
5-point landmark model are run again on the crop, and the eye line's tilt is read there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import standins

from agegender import cli, crops, rotation
from agegender.cards import CropSpec
from agegender.config import DEFAULT_SWEEP
from agegender.detectors.dlib_hog import DlibHogDetector
from agegender.errors import AgegenderError
from agegender.faces import Upright
from agegender.images import load
from agegender.landmarks import Landmarker
from agegender.pipeline import Estimator

DATA = Path(__file__).parent / "data"
MARGIN = CropSpec(kind="margin", margin=0.4)
SIZE = (224, 224)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load(DATA / "astronaut.png").rgb


@pytest.fixture(scope="module")
def landmarker() -> Landmarker:
    return Landmarker()


def scene(rgb: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated counter-clockwise by `degrees` (grey corners) and the 2x3 map."""
    h, w = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    out = cv2.warpAffine(
        rgb, matrix, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=(128,) * 3
    )
    return out, matrix


def eye_tilt(crop: np.ndarray, landmarker: Landmarker) -> float:
    """Degrees the eye line of the face in `crop` tilts, from a fresh detection there."""
    found = DlibHogDetector(upsample=0).detect(crop)
    assert found, "no face in the crop"
    points = landmarker(crop, max(found, key=lambda d: d.score).box)
    right, left = points[0:2].mean(axis=0), points[2:4].mean(axis=0)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def test_default_sweep_is_deXs_minus_60_to_60_in_5_degree_steps() -> None:
    angles = rotation.sweep_angles(*DEFAULT_SWEEP)
    assert len(angles) == 25 and angles[0] == 0
    assert sorted(angles) == [float(a) for a in range(-60, 61, 5)]
    assert rotation.sweep_angles(-10, 10, 10) == [0, -10, 10]
    with pytest.raises(AgegenderError):
        rotation.sweep_angles(10, -10, 5)


@pytest.mark.parametrize("degrees", [30, -30])
def test_sweep_finds_the_rotated_face_and_cuts_it_upright(photo, landmarker, degrees) -> None:
    upright_face = DlibHogDetector().detect(photo)[0]
    rotated, matrix = scene(photo, degrees)
    detector = rotation.SweepDetector(DlibHogDetector(upsample=0), landmarks=landmarker)
    found = detector.detect(rotated)
    best = max(found, key=lambda d: d.score)
    up = best.upright
    assert up is not None
    # the face's centre, carried through the scene's rotation independently
    x1, y1, x2, y2 = upright_face.box
    expected_centre = matrix @ np.array([(x1 + x2) / 2, (y1 + y2) / 2, 1.0])
    assert math.dist((up.cx, up.cy), expected_centre) < 0.15 * (x2 - x1)
    assert abs(up.angle + degrees) <= 10  # the sweep undoes the scene's rotation
    # the reported box is the face's box in the scene: its centre and about its size (not
    # the 1.37x larger bounds of the box rotated by 30 degrees)
    bx1, by1, bx2, by2 = best.box
    assert math.dist(((bx1 + bx2) / 2, (by1 + by2) / 2), expected_centre) < 0.15 * (x2 - x1)
    assert 0.8 < (bx2 - bx1) / (x2 - x1) < 1.2 and 0.8 < (by2 - by1) / (y2 - y1) < 1.2
    # landmarks come back in the scene's coordinates: compare with the photo's, rotated
    photo_points = landmarker(photo, upright_face.box)
    moved = photo_points @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(best.landmarks - moved).max() < 6
    aligned = crops.crop_for(rotated, best, MARGIN, SIZE)
    plain = crops.margin_crop(rotated, best.box, MARGIN.margin, SIZE)
    reference = eye_tilt(
        crops.margin_crop(photo, upright_face.box, MARGIN.margin, SIZE), landmarker
    )
    assert abs(eye_tilt(aligned, landmarker) - reference) <= 8
    assert abs(eye_tilt(plain, landmarker) - reference) >= 20  # what no alignment gives


@pytest.mark.parametrize("degrees", [30, -30])
def test_landmark_alignment_levels_the_eye_line(photo, landmarker, degrees) -> None:
    rotated, _ = scene(photo, degrees)
    (face,) = DlibHogDetector().detect(rotated)  # dlib's detector still finds a 30 degree face
    face.landmarks = landmarker(rotated, face.box)
    rotation.align_by_landmarks(face)
    up = face.upright
    assert up is not None and abs(up.angle + degrees) <= 6  # the photo's own tilt is ~3 degrees
    assert abs(eye_tilt(crops.crop_for(rotated, face, MARGIN, SIZE), landmarker)) <= 3


def test_angle_zero_keeps_the_plain_margin_crop(photo) -> None:
    found = rotation.SweepDetector(DlibHogDetector(upsample=0), start=0, stop=0, step=5).detect(
        photo
    )
    (face,) = found
    assert face.upright.angle == 0
    plain = crops.margin_crop(photo, face.box, 0.4, SIZE)
    assert np.array_equal(crops.crop_for(photo, face, MARGIN, SIZE), plain)


def test_upright_region_matches_the_margin_crop_when_not_rotated(photo) -> None:
    # the warp path and the copyMakeBorder path agree on an unrotated box
    box = (179.0, 83.0, 267.0, 171.0)
    up = Upright(223.0, 127.0, 88.0, 88.0, 0.0)
    region = rotation.upright_region(photo, up, 0.4)
    x1, y1, x2, y2 = crops.margin_region(box, 0.4)
    assert region.shape == (y2 - y1, x2 - x1, 3)
    assert np.abs(region.astype(int) - photo[y1:y2, x1:x2].astype(int)).mean() < 1.0


def _standins(tmp_path: Path) -> tuple[str, str]:
    age = standins.save(standins.vgg16(outputs=101, seed=1), tmp_path / "age.onnx")
    gender = standins.save(standins.vgg16(outputs=2, seed=2), tmp_path / "gender.onnx")
    return f"dex-imdb-age={age}", f"dex-imdb-gender={gender}"


def test_estimator_sweep_on_a_rotated_photo(tmp_path: Path, photo) -> None:
    age, gender = _standins(tmp_path)
    rotated, _ = scene(photo, 30)
    est = Estimator.from_preset(
        "dex-imdb", age_models=[age], gender_models=[gender], align="sweep", tta=False
    )
    prepared = est.prepare(rotated)
    best = max(range(len(prepared.detections)), key=lambda i: prepared.detections[i].score)
    assert abs(prepared.detections[best].upright.angle + 30) <= 10
    assert prepared.crops[est.heads["age"][0].crop_key][best].shape == (224, 224, 3)
    faces = est.estimate([prepared])[0]
    assert len(faces) == len(prepared.detections) and faces[best].age is not None


def test_cli_align_option(tmp_path: Path, photo, capsys) -> None:
    age, gender = _standins(tmp_path)
    rotated, _ = scene(photo, -30)
    path = tmp_path / "rotated.png"
    cv2.imwrite(str(path), cv2.cvtColor(rotated, cv2.COLOR_RGB2BGR))
    common = [
        "predict",
        str(path),
        "--preset",
        "dex-imdb",
        "--age-model",
        age,
        "--gender-model",
        gender,
    ]
    assert cli.main([*common, "--json", "--align", "landmarks", "--no-progress"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert len(result["faces"]) == 1
    with pytest.raises(SystemExit) as info:
        cli.main([*common, "--align", "sweep", "--sweep", "10:-10:5"])
    assert info.value.code == 2
    assert "--sweep: need START <= STOP" in capsys.readouterr().err


def test_unknown_alignment_is_a_one_line_error() -> None:
    with pytest.raises(
        Exception, match=r"^unknown alignment 'tilt'; choose one of none, landmarks, sweep$"
    ):
        Estimator(align="tilt")


def test_a_preset_may_name_the_alignment_and_the_caller_overrides_it(monkeypatch) -> None:
    from agegender import config
    from agegender.presets import Preset, get_preset, presets

    assert {p.align for p in presets().values()} == {"none"}
    default = get_preset("default")
    tilted = Preset(
        "tilted",
        "",
        default.detector,
        default.age,
        default.gender,
        "landmarks",
        optional=default.optional,
    )
    monkeypatch.setattr("agegender.presets.get_preset", lambda name: tilted)
    assert config.EstimatorConfig.from_preset("tilted").align == "landmarks"
    assert Estimator.from_preset("tilted").config.align == "landmarks"
    assert Estimator.from_preset("tilted", align="none").config.align == "none"
