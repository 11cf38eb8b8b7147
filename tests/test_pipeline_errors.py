"""Defect 4 (issue 8): any exception while one input is prepared or estimated becomes that
input's error; the other inputs' results are intact and the run goes on."""

from __future__ import annotations

import pytest
from faceutils import ASTRONAUT

from agegender import Estimator
from agegender.heads import Head


def test_a_stage_raising_value_error_fails_only_its_input(monkeypatch, astronaut_rgb) -> None:
    est = Estimator(tta=False)
    real_crop = Head.crop

    def crop(self, rgb, detection):  # fails on the marked image only
        if rgb[:8, :8].sum() == 0:
            raise ValueError("synthetic crop failure")
        return real_crop(self, rgb, detection)

    monkeypatch.setattr(Head, "crop", crop)
    marked = astronaut_rgb.copy()
    marked[:8, :8] = 0
    results = list(est.predict_many([astronaut_rgb, marked, str(ASTRONAUT)]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "<array>: ValueError: synthetic crop failure"
    assert len(results[0].faces) == 1 and len(results[2].faces) == 1


def test_a_model_failure_on_one_input_keeps_the_others(monkeypatch, astronaut_rgb) -> None:
    est = Estimator(tta=False)
    head = est.heads["age"][0]
    real_outputs = head.model.outputs
    bad = astronaut_rgb.copy()
    bad[:8, :8] = 0  # marks the input whose crops the model "cannot" run

    def outputs(batch, names):
        if any(c.shape[0] != 64 for c in batch):
            raise AssertionError("unexpected crop size")
        if len(batch) == 1 and marked["bad"]:
            raise RuntimeError("synthetic ONNX Runtime failure\nsecond line")
        if len(batch) > 1:
            raise RuntimeError("a batch with the bad input fails as a whole")
        return real_outputs(batch, names)

    marked = {"bad": False}
    real_prepare = est.prepare

    def prepare(rgb, name="<array>"):
        prepared = real_prepare(rgb, name)
        prepared.name = "bad" if rgb[:8, :8].sum() == 0 else "good"
        return prepared

    real_estimate = est.estimate

    def estimate(prepared):
        marked["bad"] = any(p.name == "bad" for p in prepared)
        return real_estimate(prepared)

    monkeypatch.setattr(head.model, "outputs", outputs)
    monkeypatch.setattr(est, "prepare", prepare)
    monkeypatch.setattr(est, "estimate", estimate)
    results = list(est.predict_many([astronaut_rgb, bad, astronaut_rgb]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "<array>: RuntimeError: synthetic ONNX Runtime failure"
    assert results[0].faces[0].age.value == pytest.approx(results[2].faces[0].age.value, rel=1e-5)
