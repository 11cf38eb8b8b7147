"""Presets with optional cards (they join when their files are installed) and several
calibration files (each task uses the one fitted for its running cards).

The test session's model store is an empty folder (conftest.py), so the default preset's
faceres-deep heads are missing until a test installs a stand-in as their INT8 copy (with
the build record a build on this machine writes: such cards are built, not imported)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from support.standins import faceres_like_graph

from agegender import Estimator
from agegender.cards import get_card
from agegender.config import EstimatorConfig
from agegender.presets import get_preset, preset_calibration
from agegender.store import store_path
from agegender.store.hashing import sha256_file
from agegender.store.layout import write_built
from agegender.store.quantized import _ranges_sha256


def install_built(graph: Path, card_id: str = "faceres-deep-age-int8") -> None:
    """`graph` in the store as the card's INT8 copy, with the record a build writes."""
    card = get_card(card_id)
    dest = store_path(card)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph, dest)
    record = {"card": card.id, "ranges_sha256": _ranges_sha256(card)}
    write_built(dest, {**record, "sha256": sha256_file(dest), "bytes": dest.stat().st_size})


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AGEGENDER_HOME", str(home))
    return home


def test_missing_optional_cards_leave_the_others_with_their_calibration(own_store) -> None:
    preset = get_preset("default")
    assert set(preset.optional) == {"faceres-deep-age-int8", "faceres-deep-gender-int8"}
    config = EstimatorConfig.from_preset("default")
    assert config.age_models == ("cc0-age-v1",) and config.gender_models == ("cc0-gender-v1",)
    assert config.age_weights is None and config.gender_weights is None
    # the CC0 pair's own calibration file applies
    fitted = preset_calibration("default", "age", ("cc0-age-v1",))
    assert fitted is not None and tuple(fitted.age_models) == ("cc0-age-v1",)
    est = Estimator(config)
    assert est.tasks["age"].calibration == fitted.for_role("age")


def test_installed_optional_cards_join_with_the_fitted_weights(
    own_store, tmp_path: Path, astronaut_rgb
) -> None:
    install_built(faceres_like_graph(tmp_path / "faceres-deep.onnx"))
    config = EstimatorConfig.from_preset("default")
    assert config.age_models == ("cc0-age-v1", "faceres-deep-age-int8")
    assert config.gender_models == ("cc0-gender-v1", "faceres-deep-gender-int8")
    assert config.age_weights == (0.4, 0.6) and config.gender_weights == (0.3, 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = Estimator(config)
    # the ensemble's calibration file (fitted for these cards and weights), not the pair's
    ensemble = preset_calibration("default", "age", config.age_models)
    assert ensemble is not None and tuple(ensemble.age_models) == config.age_models
    assert est.tasks["age"].calibration == ensemble.for_role("age")
    # faceres-deep's two heads read one run; the face gets both tasks
    (age_head, deep_age), (_, deep_gender) = est.heads["age"], est.heads["gender"]
    assert deep_age.run_key == deep_gender.run_key != age_head.run_key
    (face,) = est.predict(astronaut_rgb)
    assert face.age is not None and face.gender is not None
    # the gate's cards run: --tta-margin is taken (refused where none of them runs)
    from agegender.commands.options import refuse_ignored

    refuse_ignored({"tta_margin": 0.3}, config.with_overrides(tta_margin=0.3))


def test_a_preset_without_optional_cards_is_unchanged(own_store) -> None:
    levi = EstimatorConfig.from_preset("levi")
    assert levi.age_models == ("levi-age",) and get_preset("levi").optional == ()


def test_replacing_a_tasks_cards_drops_the_presets_weights(own_store, tmp_path: Path) -> None:
    install_built(faceres_like_graph(tmp_path / "faceres-deep.onnx"))
    assert EstimatorConfig.from_preset("default").age_weights == (0.4, 0.6)
    one = EstimatorConfig.from_preset("default", age_models=("cc0-age-v1",))
    assert one.age_models == ("cc0-age-v1",) and one.age_weights is None
    assert one.gender_weights == (0.3, 0.7)  # the other task keeps its own
    two = EstimatorConfig.from_preset(
        "default", age_models=("cc0-age-v1", "levi-age"), age_weights=(1.0, 3.0)
    )
    assert two.age_weights == (1.0, 3.0)
