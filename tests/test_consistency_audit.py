"""Regressions found by an audit of consistency across interfaces (each failed before its
fix): the same image gives the same faces whichever way it is passed (an RGBA numpy array
as its PNG file), and evaluate and calibrate refuse the options predict refuses as
ignored, with a message that names what turned TTA off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faceutils import ASTRONAUT, encode, run_cli
from numpy.typing import NDArray
from PIL import Image

from agegender import Estimator, images


def _rgba(astronaut_rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The astronaut with a transparent corner and a half-transparent band over the face."""
    alpha = np.full(astronaut_rgb.shape[:2], 255, np.uint8)
    alpha[:100, :100] = 0
    alpha[60:200, 150:300] = 128  # over the face: its pixels change when composited
    return np.dstack([astronaut_rgb, alpha])


def test_an_rgba_array_reads_as_its_png(astronaut_rgb: NDArray[np.uint8]) -> None:
    """A file or PIL image with alpha is composited on white; an RGBA (or OpenCV BGRA)
    array of the same pixels had its alpha dropped, so its faces differed."""
    rgba = _rgba(astronaut_rgb)
    from_file = images.load(encode(Image.fromarray(rgba), "PNG")).rgb
    assert (from_file[:100, :100] == 255).all()
    np.testing.assert_array_equal(images.load(rgba).rgb, from_file)
    bgra = np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(images.load(bgra, channels="BGR").rgb, from_file)
    # opaque: the same pixels as before (alpha 255 everywhere)
    opaque = np.dstack([astronaut_rgb, np.full(astronaut_rgb.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(images.load(opaque).rgb, astronaut_rgb)


def test_an_rgba_array_gives_the_files_faces(
    estimator: Estimator, astronaut_rgb: NDArray[np.uint8]
) -> None:
    rgba = _rgba(astronaut_rgb)
    from_file = estimator.predict(encode(Image.fromarray(rgba), "PNG"))
    from_array = estimator.predict(rgba)
    assert from_file and len(from_array) == len(from_file)
    for a, b in zip(from_array, from_file, strict=True):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        assert a.age is not None and b.age is not None
        assert a.gender is not None and b.gender is not None
        assert a.age.value == pytest.approx(b.age.value, abs=1e-3)
        assert a.gender.probability == pytest.approx(b.gender.probability, abs=1e-4)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status, out, err = run_cli(capsys, *args)
    assert "Traceback" not in err
    return status, out, err


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(f"path,age,gender\n{ASTRONAUT},30,female\n")
    return path


IGNORED = [
    (["--detector", "haar", "--upsample", "1"], "--upsample applies only to --detector dlib"),
    (["--detector", "none", "--min-score", "0.5"], "--min-score steers"),
    (["--detector", "none", "--max-detect-side", "64"], "--max-detect-side steers"),
    (["--no-tta", "--tta-margin", "0.3"], "--tta-margin applies only with TTA"),
]


@pytest.mark.parametrize(("options", "why"), IGNORED)
def test_evaluate_refuses_what_predict_refuses(
    capsys: pytest.CaptureFixture[str], labels: Path, options: list[str], why: str
) -> None:
    status, _, err = _run(capsys, "predict", "--jsonl", str(ASTRONAUT), *options)
    assert status == 2 and why in err
    status, out, err = _run(capsys, "evaluate", str(labels), "--format", "csv", *options)
    assert status == 2 and out == "" and why in err
    assert err.strip().count("\n") == 0


@pytest.mark.parametrize(("options", "why"), IGNORED)
def test_calibrate_refuses_what_predict_refuses(
    capsys: pytest.CaptureFixture[str], labels: Path, options: list[str], why: str
) -> None:
    out_file = labels.parent / "cal.toml"
    status, _, err = _run(
        capsys, "calibrate", str(labels), "--format", "csv", "--out", str(out_file), *options
    )
    assert status == 2 and why in err and not out_file.exists()


def test_evaluate_compare_refuses_an_option_every_setting_ignores(
    capsys: pytest.CaptureFixture[str], labels: Path
) -> None:
    status, out, err = _run(
        capsys,
        "evaluate",
        str(labels),
        "--format",
        "csv",
        "--compare",
        "default:detector=none",
        "default:detector=none,tta=off",
        "--min-score",
        "0.5",
    )
    assert status == 2 and out == "" and "--min-score steers" in err


def test_evaluate_compare_keeps_an_option_one_setting_uses(
    capsys: pytest.CaptureFixture[str], labels: Path
) -> None:
    status, out, err = _run(
        capsys,
        "evaluate",
        str(labels),
        "--format",
        "csv",
        "--no-progress",
        "--compare",
        "default:detector=none",
        "default:detector=dlib",
        "--min-score",
        "0.5",
    )
    assert status == 0, err
    assert "default:detector=dlib" in out


def test_tta_margin_with_a_preset_without_tta_does_not_blame_no_tta(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--preset fast --tta-margin M` (fast runs without TTA): the error said "turned off
    by --no-tta", an option the user never gave."""
    status, _, err = _run(
        capsys, "predict", "--jsonl", str(ASTRONAUT), "--preset", "fast", "--tta-margin", "0.3"
    )
    assert status == 2
    assert "--no-tta" not in err and "add --tta" not in err  # --tta would not help: no gate
    assert "the preset fast runs without it, and gates none of its models" in err
