"""Regressions of the Python API found by an audit (each failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest
from faceutils import ASTRONAUT
from PIL import Image

from agegender import Estimator, EstimatorConfig
from agegender.errors import AgegenderError, ImageError
from agegender.results import AgeEstimate


@pytest.fixture(scope="module")
def est() -> Estimator:
    return Estimator(detector="none", tta=False)


def test_predict_many_refuses_a_bare_input_and_a_bad_chunk(est: Estimator) -> None:
    path = str(ASTRONAUT)
    with pytest.raises(AgegenderError, match="iterable of inputs"):
        list(est.predict_many(path))  # was read letter by letter: 40 "no such file"
    for chunk in (0, -1, 2.5):
        with pytest.raises(AgegenderError, match="chunk must be a whole number"):
            list(est.predict_many([path, path], chunk=chunk))  # type: ignore[arg-type]
    assert [r.path for r in est.predict_many([path, path], chunk=1)] == [path, path]


def test_a_float_array_with_nan_is_an_image_error(est: Estimator) -> None:
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"), dtype=np.float32) / 255.0
    assert est.predict(rgb)
    for bad in (np.nan, np.inf):
        spoilt = rgb.copy()
        spoilt[3, 4, 1] = bad
        with pytest.raises(ImageError, match="NaN or infinite"):
            est.predict(spoilt)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"min_face": "3"}, "--min-face must be a whole number"),
        ({"threads": 1.5}, "--threads must be a whole number"),
        ({"batch_size": 2.5}, "--batch-size must be a whole number"),
        ({"min_score": "0.5"}, "--min-score must be a number"),
        ({"tta": "no"}, "tta must be True or False"),
        ({"align": "sweep", "sweep": (1, 2)}, "--sweep needs START:STOP:STEP"),
        ({"age_thresholds": ["x"]}, "--age-thresholds must be numbers"),
        ({"age_thresholds": "18"}, "--age-thresholds must be numbers"),
        ({"age_thresholds": [True]}, "--age-thresholds must be numbers"),
        ({"age_weights": "0.4,0.6"}, "--age-weights must be numbers"),
        ({"detector": "mtcnn"}, "unknown detector 'mtcnn'; choose one of dlib"),
        # the order pairs each model with its weight: a set has none
        ({"age_models": {"cc0-age-v1", "faceres-deep-age"}}, "--age-models: give a list"),
    ],
)
def test_options_of_the_wrong_type_are_one_line_errors(options: dict, named: str) -> None:
    with pytest.raises(AgegenderError, match=named):
        EstimatorConfig.from_preset("default", **options)


def test_new_cards_drop_the_old_cards_weights_in_every_way_of_giving_them() -> None:
    # an ensemble with weights (the cards are not loaded: a configuration only names them)
    base = EstimatorConfig(age_models=("dex-imdb-age", "cc0-age-v1"), age_weights=(0.7, 0.3))
    for config in (
        base.with_overrides(preset="dex-imdb", age_models=["cc0-age-v1"]),
        base.with_overrides(age_models=["cc0-age-v1"]),
    ):
        assert config.age_models == ("cc0-age-v1",) and config.age_weights is None
    kept = base.with_overrides(age_models=["cc0-age-v1"], age_weights=[1.0])
    assert kept.age_weights == (1.0,)


def test_derive_names_the_model_option_it_cannot_change(est: Estimator) -> None:
    with pytest.raises(AgegenderError, match=r"^a derived estimator .*: calibration cannot"):
        est.derive(calibration="none")
    with pytest.raises(AgegenderError, match=r": threads cannot change"):
        est.derive(threads=3)
    assert est.derive(min_face=10).config.min_face == 10


def test_thresholds_and_weights_may_be_numpy_arrays() -> None:
    # an array of two was a bare ValueError ("truth value ... is ambiguous"), of one a
    # false "must be numbers"
    for given, kept in ((np.array([18, 21]), (18.0, 21.0)), (np.array([18.0]), (18.0,))):
        assert EstimatorConfig(age_thresholds=given).age_thresholds == kept
    assert EstimatorConfig(age_thresholds=18).age_thresholds == (18.0,)
    assert EstimatorConfig(age_thresholds=None).age_thresholds == ()
    pair = ("cc0-age-v1", "faceres-deep-age")
    weights = EstimatorConfig(age_models=pair, age_weights=np.array([0.4, 0.6])).age_weights
    assert weights == (0.4, 0.6)


def test_thresholds_keep_the_digits_they_are_printed_with() -> None:
    config = EstimatorConfig(age_thresholds=(18.0, 18.0000001, 21))
    assert config.age_thresholds == (18.0, 21.0)
    age = AgeEstimate(30.0, 5.0, (25.0, 35.0), p_at_least={18.0: 0.99, 21.0: 0.9})
    assert age.to_dict()["p_at_least"] == {"18": 0.99, "21": 0.9}


def test_prepare_takes_only_rgb_uint8_and_says_so(est: Estimator) -> None:
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    assert est.prepare(rgb, "ok").width == rgb.shape[1]
    for bad in (
        np.zeros((0, 0, 3), np.uint8),
        rgb[:, :, 0],
        rgb.astype(np.float32),
        rgb[:, :, :2],
    ):
        with pytest.raises(ImageError, match=r"^name: prepare takes an RGB uint8 array"):
            est.prepare(bad, "name")


def test_an_input_of_no_known_type_is_named_by_its_type(est: Estimator) -> None:
    with pytest.raises(ImageError, match=r"^<NoneType>: unsupported input type NoneType"):
        est.predict(None)  # type: ignore[arg-type]
