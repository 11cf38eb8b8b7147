"""Configuration overlays, derived estimators, and ensembles of several heads per task.

The heads are stand-in graphs whose softmax is nearly one-hot at a chosen index whatever
the pixels, so the combined estimate can be worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from faceutils import ASTRONAUT
from support.spies import CountingSession
from support.standins import card_graph, faceres_like_graph

from agegender import Estimator
from agegender.cards import get_card
from agegender.cli import main
from agegender.config import EstimatorConfig
from agegender.errors import AgegenderError, CardError
from agegender.heads import Mirror, Support, Task, distributions

DEX_LIKE = """\
id = "{id}"
task = "{task}"
title = "stand-in"
[source]
file = "{file}"
[input]
size = [32, 32]
channels = "BGR"
layout = "NCHW"
[crop]
kind = "margin"
margin = 0.4
[output]
softmax_in_graph = true
{output}
"""


def _graph(path: Path, size: int, width: int, peak: int) -> Path:
    model = card_graph(input_shape=[1, 3, size, size], width=width, peak=peak, seed=peak)
    onnx.save_model(model, str(path))
    return path


def _card(folder: Path, card_id: str, task: str, output: str, width: int, peak: int) -> Path:
    """A card TOML with its stand-in graph beside it."""
    _graph(folder / f"{card_id}.onnx", 32, width, peak)
    path = folder / f"{card_id}.toml"
    path.write_text(DEX_LIKE.format(id=card_id, task=task, file=f"{card_id}.onnx", output=output))
    return path


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("heads")
    cc0 = get_card("cc0-age-v1")
    # The CC0 card's 81 bins (0.25, 1..80): index 30 is 30 years.
    cc0_30 = _graph(folder / "cc0-30.onnx", 64, 81, 30)
    gender = get_card("cc0-gender-v1")
    return {
        "cc0@30": f"cc0-age-v1={cc0_30}",
        # 101 bins 0..100, margin crops of another size: index 50 is 50 years.
        "dex@50": str(_card(folder, "dex-50", "age", "range = [0, 100]", 101, 50)),
        "groups": str(
            _card(
                folder,
                "grp",
                "age-groups",
                'labels = ["young", "old"]\ngroups = [[0, 30], [31, 90]]',
                2,
                1,
            )
        ),
        # Gender heads with opposite label orders, each sure of its index 0.
        "female": f"cc0-gender-v1={_graph(folder / 'g-f.onnx', 32, 2, 0)}",
        "male": str(_card(folder, "g-m", "gender", 'labels = ["male", "female"]', 2, 0)),
        "cc0_values": ",".join(f"{v:g}" for v in cc0.output.values[:3]),
        "gender_labels": ",".join(gender.output.labels),
    }


def test_card_facts_the_tests_rely_on(heads) -> None:
    assert heads["cc0_values"] == "0.25,1,2"
    assert heads["gender_labels"] == "female,male"


def test_two_age_heads_average_their_distributions(heads, astronaut_rgb) -> None:
    est = Estimator(
        age_models=[heads["cc0@30"], heads["dex@50"]],
        age_weights=[3, 1],
        gender_models=[heads["female"], heads["male"]],
        gender_weights=[0.6, 0.4],
        tta=True,
        age_thresholds=[40],
    )
    assert [h.card.id for h in est.heads["age"]] == ["cc0-age-v1", "dex-50"]
    (face,) = est.predict(astronaut_rgb)
    # 3/4 of the mass at 30 years, 1/4 at 50 (a common support: 0.25, 0..100)
    assert face.age.value == pytest.approx(0.75 * 30 + 0.25 * 50, abs=1e-3)
    assert face.age.std == pytest.approx(np.sqrt(0.75 * 5**2 + 0.25 * 15**2), abs=1e-2)
    assert face.age.p_at_least[40.0] == pytest.approx(0.25, abs=1e-4)
    assert face.age.interval == (30.0, 50.0)
    # female 0.6 (first head) vs male 0.4 (second head, labels in the other order)
    assert face.gender.label == "female"
    assert face.gender.probability == pytest.approx(0.6, abs=1e-4)


def test_one_head_alone_is_unchanged_by_the_task(heads, astronaut_rgb) -> None:
    (alone,) = Estimator(age_models=[heads["dex@50"]], gender_models=[]).predict(astronaut_rgb)
    assert alone.age.value == pytest.approx(50.0, abs=1e-3) and alone.gender is None


def test_ensemble_from_the_command_line(heads, capsys) -> None:
    argv = ["predict", str(ASTRONAUT), "--json", "--no-progress"]
    argv += ["--age-model", heads["cc0@30"], "--age-model", heads["dex@50"]]
    argv += ["--age-weights", "1,1", "--gender-model", heads["male"]]
    assert main(argv) == 0
    (result,) = json.loads(capsys.readouterr().out)
    (face,) = result["faces"]
    assert face["age"]["value"] == pytest.approx(40.0, abs=0.01)
    assert face["gender"] == {"label": "male", "probability": pytest.approx(1.0, abs=1e-4)}


def test_age_bins_and_age_groups_combine_on_the_years(heads, astronaut_rgb) -> None:
    """An age-groups head joins an age ensemble: its group's mass is spread over the years
    the group spans (the stand-in is sure of "old", 31..90, mean 60.5)."""
    est = Estimator(
        age_models=[heads["cc0@30"], heads["groups"]], age_weights=[1, 1], age_thresholds=[31]
    )
    assert est.tasks["age"].support.kind == "age"
    (face,) = est.predict(astronaut_rgb)
    assert face.age.value == pytest.approx(0.5 * 30 + 0.5 * 60.5, abs=1e-3)
    assert face.age.p_at_least[31.0] == pytest.approx(0.5, abs=1e-3)


def test_a_distribution_mapped_to_the_common_support_and_back_keeps_mean_and_mass() -> None:
    from agegender.heads import common_support, group_ages, support_map

    rng = np.random.default_rng(3)
    cc0 = Support("age", values=get_card("cc0-age-v1").output.value_array())
    dex = Support("age", values=np.arange(0.0, 101.0))
    levi_card = get_card("levi-age")
    levi = Support("age-groups", labels=levi_card.output.labels, groups=levi_card.output.groups)
    common = common_support("age", [cc0, dex, levi], "cc0, dex, levi")
    for head in (cc0, dex, levi):
        p = rng.dirichlet(np.ones(len(head.groups) or len(head.values)))
        matrix = support_map(head, common)
        mapped = p @ matrix
        assert mapped.sum() == pytest.approx(1.0)
        back = (
            matrix @ mapped
            if head.kind == "age"
            else np.array(
                [mapped[np.isin(common.values, group_ages(g))].sum() for g in head.groups]
            )
        )
        np.testing.assert_allclose(back, p, atol=1e-12)
        if head.kind == "age":  # a bin's age is kept, so the mean is too
            assert mapped @ common.values == pytest.approx(p @ head.values)
        else:  # a group's mean is its years' mean
            means = np.array([group_ages(g).mean() for g in head.groups])
            assert mapped @ common.values == pytest.approx(p @ means)


def test_heads_of_different_kinds_or_labels_do_not_combine(heads) -> None:
    class FakeHead:
        def __init__(self, card, weight):
            self.card, self.weight = card, weight

    age, gender = get_card("cc0-age-v1"), get_card("cc0-gender-v1")
    with pytest.raises(CardError, match="different tasks"):
        Task("age", [FakeHead(age, 1.0), FakeHead(gender, 1.0)])  # type: ignore[list-item]
    with pytest.raises(CardError, match="not a gender model"):
        Estimator(gender_models=[heads["cc0@30"]])
    with pytest.raises(AgegenderError, match="2 weights for 1 age models"):
        Estimator(age_models=[heads["cc0@30"]], age_weights=[1, 2])


def test_task_combine_maps_each_support_onto_the_union() -> None:
    class FakeHead:
        def __init__(self, card, weight):
            self.card, self.weight = card, weight

    cc0, dex = get_card("cc0-age-v1"), get_card("dex-imdb-age")
    task = Task("age", [FakeHead(cc0, 1.0), FakeHead(dex, 1.0)])  # type: ignore[list-item]
    assert isinstance(task.support, Support)
    np.testing.assert_array_equal(task.support.values[:3], [0.0, 0.25, 1.0])
    assert len(task.support.values) == 102  # 0..100 and 0.25
    p_cc0 = np.zeros((1, 81))
    p_cc0[0, 0] = 1.0  # 0.25 years
    p_dex = np.zeros((1, 101))
    p_dex[0, 100] = 2.0  # unnormalised: each head is normalised before the mean
    mean = task.combine([p_cc0, p_dex])
    assert mean.shape == (1, 102) and mean.sum() == pytest.approx(1.0)
    assert mean[0, 1] == pytest.approx(0.5) and mean[0, -1] == pytest.approx(0.5)


def test_config_overlay_and_checks() -> None:
    base = EstimatorConfig.from_preset("levi", tta=False)
    assert base.age_models == ("levi-age",) and base.tta is False
    assert base.with_overrides(min_face=20).min_face == 20
    assert base.with_overrides(preset="default").age_models == ("cc0-age-v1",)
    with pytest.raises(AgegenderError, match="unknown option 'colour'"):
        base.with_overrides(colour=1)
    # defect 10: --sweep without --align sweep was silently ignored
    with pytest.raises(AgegenderError, match="--sweep applies only with --align sweep"):
        EstimatorConfig(sweep=(-30, 30, 5))
    assert EstimatorConfig(align="sweep", sweep=(-30, 30, 5)).sweep_range == (-30.0, 30.0, 5.0)
    with pytest.raises(AgegenderError, match="--min-face must be >= 0"):
        EstimatorConfig(min_face=-1)
    with pytest.raises(AgegenderError, match="--age-threshold must be a number"):
        EstimatorConfig(age_thresholds=[float("nan")])


def test_sweep_without_align_sweep_is_rejected_on_the_command_line(capsys) -> None:
    assert main(["predict", str(ASTRONAUT), "--sweep=-30:30:5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "agegender: error: --sweep applies only with --align sweep"


def test_derived_estimators_share_the_sessions(estimator: Estimator, astronaut_rgb) -> None:
    whole = estimator.derive(detector="none", age_thresholds=[18])
    assert whole.heads["age"][0] is estimator.heads["age"][0]
    assert whole.detector.name == "none" and estimator.detector.name == "dlib"
    (face,) = whole.predict(astronaut_rgb)
    assert face.box == (0.0, 0.0, 512.0, 512.0) and 18.0 in face.age.p_at_least
    with pytest.raises(AgegenderError, match="cannot change"):
        estimator.derive(age_models=["levi-age"])
    # the same detection options share one detector (its per-thread state is reused),
    # whatever the filters: a request's min_face does not build a detector
    built = len(estimator._shared.detectors)
    for min_face in range(1, 50):
        assert estimator.derive(tta=True, min_face=min_face).detector is estimator.detector
    assert len(estimator._shared.detectors) == built


def test_a_preset_listing_two_cards_is_an_ensemble(heads, monkeypatch, astronaut_rgb) -> None:
    from agegender import presets

    real = presets.presets()
    pair = presets.Preset(
        "pair", "", "dlib", (heads["cc0@30"], heads["dex@50"]), (), age_weights=(1.0, 3.0)
    )
    monkeypatch.setattr(presets, "presets", lambda: {**real, "pair": pair})
    est = Estimator.from_preset("pair", tta=False)
    assert len(est.heads["age"]) == 2 and "gender" not in est.heads
    (face,) = est.predict(astronaut_rgb)
    assert face.age.value == pytest.approx(0.25 * 30 + 0.75 * 50, abs=1e-3)


TWO_HEADS = """\
id = "{id}"
task = "{task}"
[source]
file = "two.onnx"
[input]
size = [32, 32]
layout = "NHWC"
name = "input_1"
[crop]
kind = "margin"
margin = 0.2
[output]
name = "{output}"
{extra}
"""


def test_heads_reading_one_graph_share_each_session_run(tmp_path: Path, astronaut_rgb) -> None:
    """faceres' age and gender heads: one run of one session per batch (and TTA's mirrors in
    the same run), each head reading its own output, the same numbers as running alone."""
    faceres_like_graph(tmp_path / "two.onnx", size=32)
    age = tmp_path / "two-age.toml"
    age.write_text(
        TWO_HEADS.format(
            id="two-age", task="age", output="age_pred/Softmax", extra="range = [0, 99]"
        )
    )
    gender = tmp_path / "two-gender.toml"
    gender.write_text(
        TWO_HEADS.format(
            id="two-gender",
            task="gender",
            output="gender_pred/Sigmoid",
            extra='labels = ["female", "male"]\nbinary = "male"',
        )
    )
    est = Estimator(age_models=[str(age)], gender_models=[str(gender)], detector="none", tta=True)
    (age_head,), (gender_head,) = est.heads["age"], est.heads["gender"]
    assert age_head.run_key == gender_head.run_key
    assert gender_head.model.session is age_head.model.session  # the file opened once
    spy = CountingSession(age_head.model.session)
    age_head.model.session = spy  # type: ignore[assignment]
    (face,) = est.predict(astronaut_rgb)
    assert spy.calls == [(["age_pred/Softmax", "gender_pred/Sigmoid"], 2)]
    # the same estimates as each head alone (separate sessions, float32 tolerances)
    (alone_age,) = Estimator(age_models=[str(age)], gender_models=[], detector="none").predict(
        astronaut_rgb
    )
    (alone_gender,) = Estimator(
        age_models=[], gender_models=[str(gender)], detector="none"
    ).predict(astronaut_rgb)
    assert face.age.value == pytest.approx(alone_age.age.value, abs=1e-4)
    assert face.gender.probability == pytest.approx(alone_gender.gender.probability, abs=1e-5)


def test_gated_heads_average_with_the_mirror_only_for_uncertain_gender(tmp_path: Path) -> None:
    """heads.Mirror: gated heads run their mirrored crops only for the faces whose gender
    is uncertain (top probability below 0.5 + margin, from the crops alone), and those
    faces get exactly what full TTA gives; the others what no TTA gives."""
    age_file, gender_file = tmp_path / "age.onnx", tmp_path / "gender.onnx"
    onnx.save_model(card_graph(input_shape=["N", 3, 64, 64], width=81, seed=1), str(age_file))
    onnx.save_model(card_graph(input_shape=["N", 3, 32, 32], width=2, seed=2), str(gender_file))
    est = Estimator(
        age_models=[f"cc0-age-v1={age_file}"],
        gender_models=[f"cc0-gender-v1={gender_file}"],
        detector="none",
        calibration="none",
    )
    rng = np.random.default_rng(3)
    crops = {
        h.crop_key: [
            rng.integers(0, 256, (h.card.input.height, h.card.input.width, 3), dtype=np.uint8)
            for _ in range(16)
        ]
        for hs in est.heads.values()
        for h in hs
    }
    gated = frozenset({"cc0-age-v1", "cc0-gender-v1"})

    def run(tta: bool | Mirror, tasks: dict[str, Task] | None = None) -> dict[str, np.ndarray]:
        return distributions(tasks or est.tasks, lambda head: crops[head.crop_key], tta=tta)

    full, none = run(True), run(False)
    assert not np.allclose(full["age"], none["age"], atol=1e-4)  # the mirror matters here
    assert not np.allclose(full["gender"], none["gender"], atol=1e-4)
    closed = run(Mirror(True, gated, 0.0))  # margin 0: no face is uncertain
    for role in full:
        np.testing.assert_allclose(closed[role], none[role], atol=1e-6)
    top = none["gender"].max(axis=1)
    margin = float(np.median(top)) - 0.5
    unsure = top < 0.5 + margin
    assert 0 < unsure.sum() < len(top)
    (gender_head,) = est.heads["gender"]
    spy = CountingSession(gender_head.model.session)
    gender_head.model.session = spy  # type: ignore[assignment]
    out = run(Mirror(True, gated, margin))
    gender_head.model.session = spy.session
    assert spy.batches == [16, int(unsure.sum())]  # the crops, then the unsure faces' mirrors
    for role in full:
        np.testing.assert_allclose(out[role][unsure], full[role][unsure], atol=1e-6)
        np.testing.assert_allclose(out[role][~unsure], none[role][~unsure], atol=1e-6)
    # margin 0.5 mirrors every face; so does a gate without a gender task to decide by
    everyone = run(Mirror(True, gated, 0.5))
    no_gender = run(Mirror(True, gated, margin), {"age": est.tasks["age"]})
    for role in full:
        np.testing.assert_allclose(everyone[role], full[role], atol=1e-6)
    np.testing.assert_allclose(no_gender["age"], full["age"], atol=1e-6)
    assert run(Mirror(False, gated, margin))["age"] == pytest.approx(none["age"], abs=1e-6)


def test_the_mirror_gate_is_configured_by_preset_and_option(capsys) -> None:
    config = EstimatorConfig.from_preset("default")
    assert set(config.tta_gated) == {"faceres-deep-age-int8", "faceres-deep-gender-int8"}
    assert config.tta_margin == 0.2
    assert config.mirror() == Mirror(True, frozenset(config.tta_gated), 0.2)
    assert EstimatorConfig.from_preset("default", tta_margin=0.5).mirror().margin == 0.5
    assert EstimatorConfig().mirror() == Mirror(True, frozenset(), 0.5)  # no gate
    with pytest.raises(AgegenderError, match=r"--tta-margin must be between 0 and 0\.5"):
        EstimatorConfig(tta_margin=0.6)
    with pytest.raises(SystemExit):
        main(["predict", str(ASTRONAUT), "--tta-margin", "0.7"])
    err = capsys.readouterr().err
    assert "--tta-margin: must be in [0, 0.5], got '0.7'" in err
    assert main(["models", "list"]) == 0
    presets = capsys.readouterr().out.partition("presets (")[2]
    assert "fast: " in presets and "no TTA)" in presets
    gate = "TTA of faceres-deep-age{0}, faceres-deep-gender{0} only when gender is within 0.2"
    assert gate.format("-int8") in presets.partition("fast: ")[0]  # the default
    assert gate.format("") in presets.partition("best: ")[2]  # best: fp32
