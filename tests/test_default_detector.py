"""The default preset's detector is CenterFace INT8; AGEGENDER_DETECTOR replaces a preset's.

The rest of the suite runs with AGEGENDER_DETECTOR=dlib and an empty model store
(conftest.py); these tests unset the variable to see the default itself. The store stays
empty, so the default's file is missing here, which is the case a user without it meets.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from faceutils import ASTRONAUT

from agegender import Estimator, EstimatorConfig, cli
from agegender.errors import AgegenderError
from agegender.presets import DETECTOR_ENV, get_preset


@pytest.fixture
def no_env_detector(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv(DETECTOR_ENV, raising=False)
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_default_preset_runs_centerface_int8(no_env_detector: Path) -> None:
    assert get_preset("default").detector == "centerface-int8"
    assert EstimatorConfig.from_preset().detector == "centerface-int8"
    # the other presets keep their own
    assert EstimatorConfig.from_preset("dex-imdb").detector == "dlib"


def test_the_variable_replaces_every_presets_detector_and_an_explicit_one_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DETECTOR_ENV, "haar")
    assert EstimatorConfig.from_preset().detector == "haar"
    assert EstimatorConfig.from_preset("levi").detector == "haar"
    assert EstimatorConfig.from_preset(detector="none").detector == "none"
    # a preset switched by an override reads it too; the caller's detector still wins
    base = EstimatorConfig.from_preset()
    assert base.with_overrides(preset="dex-imdb").detector == "haar"
    assert base.with_overrides(preset="dex-imdb", detector="dlib").detector == "dlib"
    monkeypatch.setenv(DETECTOR_ENV, "  ")  # blank: unset
    assert EstimatorConfig.from_preset().detector == "centerface-int8"


def test_an_unknown_detector_in_the_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DETECTOR_ENV, "hog")
    with pytest.raises(AgegenderError) as info:
        EstimatorConfig.from_preset()
    message = str(info.value)
    assert message.startswith("AGEGENDER_DETECTOR='hog' is not a detector; choose one of dlib")
    assert "centerface-int8" in message and "\n" not in message


def test_without_the_file_the_default_stops_with_the_pull_hint(no_env_detector: Path) -> None:
    with pytest.raises(AgegenderError) as info:
        Estimator()
    message = str(info.value)
    assert "agegender models pull centerface-int8" in message
    assert "--detector dlib" in message and "AGEGENDER_DETECTOR=dlib" in message
    assert "\n" not in message
    # no silent fallback: nothing was built under another detector, and dlib still works
    assert Estimator(detector="dlib", tta=False).predict(ASTRONAUT)


def test_predict_without_the_file_is_one_line_and_exit_2(
    no_env_detector: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["predict", str(ASTRONAUT), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("agegender: error: model centerface-int8 is not installed")
    assert "agegender models pull centerface-int8" in line


def test_serve_without_the_default_detectors_file_fails_at_startup(
    no_env_detector: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn", reason="agegender[serve] is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the models load before the server runs: a missing file ends it there, in one line
    assert cli.main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert "agegender models pull centerface-int8" in line and "serving" not in line


def test_pulling_or_verifying_a_preset_includes_its_detectors_card() -> None:
    from agegender.commands.models import expand_names

    # every card of the preset, its optional ones too (pull installs them)
    assert [c.id for c in expand_names(["default"])] == [
        "cc0-age-v1",
        "faceres-deep-age-int8",
        "cc0-gender-v1",
        "faceres-deep-gender-int8",
        "centerface-int8",
    ]
    assert [c.id for c in expand_names(["dex-imdb"])] == ["dex-imdb-age", "dex-imdb-gender"]


def test_best_searches_mirror_images_where_its_detector_can(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """detect_mirror: the best preset's CenterFace searches each image's mirror image too;
    another detector (the variable's, or the caller's) drops it unless asked for, and
    asking for it with one that cannot is a one-line error, not ignored."""
    monkeypatch.delenv(DETECTOR_ENV, raising=False)
    assert EstimatorConfig.from_preset("best").detect_mirror
    assert not EstimatorConfig.from_preset().detect_mirror
    assert not EstimatorConfig.from_preset("best", detector="dlib").detect_mirror
    assert EstimatorConfig.from_preset("best", detector="centerface").detect_mirror
    assert EstimatorConfig.from_preset(detect_mirror=True).detect_mirror
    best = EstimatorConfig.from_preset("best")
    assert not best.with_overrides(detector="haar").detect_mirror  # e.g. serve's ?detector=
    assert best.with_overrides(detector="centerface").detect_mirror
    monkeypatch.setenv(DETECTOR_ENV, "dlib")
    assert not EstimatorConfig.from_preset("best").detect_mirror
    assert EstimatorConfig.from_preset("best", detector="centerface-int8").detect_mirror
    for make in (
        lambda: EstimatorConfig.from_preset(detect_mirror=True),
        lambda: EstimatorConfig(detector="haar", detect_mirror=True),
    ):
        with pytest.raises(AgegenderError, match="--detect-mirror applies only to the CenterFace"):
            make()
    with pytest.raises(AgegenderError, match="detect_mirror must be True or False"):
        EstimatorConfig(detector="centerface", detect_mirror="yes")  # type: ignore[arg-type]
    code = cli.main(["predict", str(ASTRONAUT), "--detect-mirror"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--detect-mirror applies only to the CenterFace detectors (here: dlib)" in err
