"""The Python API: defects found by a second audit, each reproduced first.

derive(min_score) with CenterFace (its threshold), a bounded number of detection setups
kept, prepare() on array views, Pillow's errors as ImageError, memoryview and big-endian
inputs, a calibration file whose text holds a line break, a served app started twice."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support.standins import CENTERFACE_CARD, centerface_graph

from agegender import Estimator, cards
from agegender import calibration as cal
from agegender.cards import load_card_file
from agegender.errors import AgegenderError, ImageError
from agegender.pipeline import MAX_DETECTORS
from agegender.serve import ServeSettings, create_app

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"


@pytest.fixture
def centerface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> float:
    """The CenterFace stand-in (heatmap = a cell's brightness) as the built-in card."""
    onnx.save_model(centerface_graph(), str(tmp_path / "centerface.onnx"))
    path = tmp_path / "centerface.toml"
    path.write_text(CENTERFACE_CARD.format(max_side=960))
    real = cards.get_card
    monkeypatch.setattr(
        cards, "get_card", lambda ref: load_card_file(path) if ref == "centerface" else real(ref)
    )
    return float(load_card_file(path).detection.threshold)  # type: ignore[union-attr]


def test_derive_min_score_is_centerfaces_threshold_too(centerface: float) -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:264, 300:364] = round(255 * (centerface - 0.1))  # under the card's threshold

    def found(est: Estimator) -> int:
        return len(est.predict(image))

    plain = Estimator(detector="centerface", tta=False)
    assert found(plain) == 0
    low = centerface - 0.15
    assert found(plain.derive(min_score=low)) > 0  # it had kept the parent's threshold
    assert found(Estimator(detector="centerface", tta=False, min_score=low)) > 0
    assert (
        found(Estimator(detector="centerface", tta=False, min_score=low).derive(min_score=None))
        == 0
    )


def test_derived_detection_setups_are_kept_within_a_bound() -> None:
    est = Estimator(detector="haar", tta=False)
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    for side in range(300, 300 + 3 * MAX_DETECTORS):
        est.derive(max_detect_side=side).predict(rgb)
    assert len(est._shared.detectors) <= MAX_DETECTORS  # it grew by one every derive


def test_prepare_takes_array_views(estimator: Estimator) -> None:
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    want = [f.box for f in estimator.estimate([estimator.prepare(rgb)])[0]]
    for view in (bgr[:, :, ::-1], np.asfortranarray(rgb)):
        assert not view.flags.c_contiguous
        got = [f.box for f in estimator.estimate([estimator.prepare(view)])[0]]
        assert got == want  # dlib's chip cutter refused the view (a TypeError)


def test_pillow_failures_are_image_errors(estimator: Estimator, tmp_path: Path) -> None:
    closed = Image.open(ASTRONAUT)
    closed.load()
    closed.close()
    data = ASTRONAUT.read_bytes()
    jpeg = io.BytesIO()
    Image.open(ASTRONAUT).convert("RGB").save(jpeg, format="JPEG")
    truncated = Image.open(io.BytesIO(jpeg.getvalue()[:2000]))  # lazily opened, not loaded
    for image in (closed, truncated):
        with pytest.raises(ImageError):
            estimator.predict(image)
    assert data  # the file itself is untouched


def test_memoryview_is_one_input_not_its_bytes(estimator: Estimator) -> None:
    with pytest.raises(AgegenderError, match="iterable"):
        list(estimator.predict_many(memoryview(ASTRONAUT.read_bytes())))  # type: ignore[arg-type]


def test_big_endian_arrays_read_as_their_native_twins(estimator: Estimator) -> None:
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    for native in (rgb.astype("<u2") * 257, rgb.astype("<f4") / 255):
        swapped = native.astype(native.dtype.newbyteorder(">"))
        a, b = estimator.predict(native), estimator.predict(swapped)
        assert [f.box for f in a] == [f.box for f in b] and a


def test_a_calibration_file_reads_back_a_line_break_in_its_data(tmp_path: Path) -> None:
    fitted = cal.CalibrationSet(
        None,
        cal.Calibration("gender", bands=(0.0, 13.0), temperatures=(1.2, 0.9)),
        (),
        ("cc0-gender-v1",),
        None,
        None,
        'csv /data/odd\nname "x".csv: 40 faces fitted',
        "<fitted>",
    )
    path = tmp_path / "c.toml"
    path.write_text(cal.to_toml(fitted, ["header with a\nbreak"]), encoding="utf-8")
    back = cal.load_file(path)
    assert back.data == fitted.data and back.gender == fitted.gender


def test_a_served_app_starts_again_after_it_stopped() -> None:
    from serve_support import shared_estimator

    app = create_app(ServeSettings(), estimator=shared_estimator())
    for _ in range(2):
        with TestClient(app) as client:
            answer = client.post(
                "/v1/estimate", files={"image": ("a.png", ASTRONAUT.read_bytes(), "image/png")}
            )
            assert answer.status_code == 200, answer.text


def test_estimate_refuses_images_prepared_for_other_models(
    estimator: Estimator, astronaut_rgb: np.ndarray, tmp_path: Path
) -> None:
    """A prepared image holds the crops of the models that prepared it; another
    estimator's heads need others. It had been a bare KeyError of a crop key."""
    from support import standins

    levi = standins.save(standins.googlenet(seed=3), tmp_path / "levi.onnx")
    other = Estimator(tta=False, calibration="none", age_models=[f"levi-age={levi}"])
    prepared = estimator.prepare(astronaut_rgb, "astronaut.png")
    with pytest.raises(AgegenderError, match=r"^astronaut\.png: .*no crop for levi-age"):
        other.estimate([prepared])
    # a face added or removed after the crops were cut is refused too, not misaligned
    prepared.detections.append(prepared.detections[0])
    with pytest.raises(AgegenderError, match=r"astronaut\.png: .*no crop for every face"):
        estimator.estimate([prepared])
    prepared.detections.pop()
    assert len(estimator.estimate([prepared])[0]) == 1  # its own estimator still takes it


def test_estimate_reads_any_iterable_once_and_refuses_what_is_not_prepared(
    estimator: Estimator, astronaut_rgb: np.ndarray
) -> None:
    """A generator was read by the first of estimate's three passes, and the result was
    [] without an error."""
    prepared = estimator.prepare(astronaut_rgb, "astronaut.png")
    want = [[f.box for f in faces] for faces in estimator.estimate([prepared, prepared])]
    assert len(want) == 2 and want[0]
    for given in (
        (p for p in [prepared, prepared]),
        iter([prepared, prepared]),
        (prepared, prepared),
    ):
        assert [[f.box for f in faces] for faces in estimator.estimate(given)] == want
    with pytest.raises(TypeError, match=r"a list of prepared images, not one"):
        estimator.estimate(prepared)
    with pytest.raises(TypeError, match=r"got ndarray \(decode and prepare an image first\)"):
        estimator.estimate([astronaut_rgb])  # type: ignore[list-item]
