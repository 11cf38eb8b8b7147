"""CenterFace: the decoder against hand-computed maps, the size rule, the card, and the
session plumbing with a stand-in graph of the published file's signature (input ``input.1``
fixed at 1x3x32x32, outputs ``537``..``540`` at stride 4) whose heatmap is the brightness
of each 4x4 cell, so where a face is reported says exactly what the graph was fed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from support.standins import CENTERFACE_CARD, centerface_graph

from agegender import Estimator, cards
from agegender.cards import load_card_file, parse_card
from agegender.detectors import shrink
from agegender.detectors.centerface import CenterFaceDetector, decode, feed_size, nms
from agegender.errors import CardError
from agegender.faces import Detection

CARD = CENTERFACE_CARD


def standin_graph() -> onnx.ModelProto:
    """heatmap = mean of the cell's pixels / 255; scale, offset and landmarks all zero."""
    return centerface_graph()


@pytest.fixture
def card_file(tmp_path: Path) -> Path:
    onnx.save_model(standin_graph(), str(tmp_path / "centerface.onnx"))
    path = tmp_path / "centerface.toml"
    path.write_text(CARD.format(max_side=960))
    return path


def test_decode_one_cell_by_hand() -> None:
    heat = np.zeros((8, 8), np.float32)
    heat[2, 5] = 0.9
    scale = np.zeros((2, 8, 8), np.float32)
    scale[:, 2, 5] = (np.log(10.0), np.log(6.0))  # height 40, width 24 at stride 4
    offset = np.zeros((2, 8, 8), np.float32)
    offset[:, 2, 5] = (0.25, -0.5)  # y, x in cells
    marks = np.zeros((10, 8, 8), np.float32)
    marks[:, 2, 5] = [0.3, 0.2, 0.3, 0.8, 0.5, 0.5, 0.8, 0.25, 0.8, 0.75]  # (y, x) pairs
    boxes, scores, points = decode(heat, scale, offset, marks, stride=4, threshold=0.5, nms_iou=0.3)
    cx, cy = (5 - 0.5 + 0.5) * 4, (2 + 0.25 + 0.5) * 4  # 20, 11
    np.testing.assert_allclose(boxes, [[cx - 12, cy - 20, cx + 12, cy + 20]], atol=1e-4)
    np.testing.assert_allclose(scores, [0.9], rtol=1e-6)
    x1, y1 = cx - 12, cy - 20
    want = [[x1 + 0.2 * 24, y1 + 0.3 * 40], [x1 + 0.8 * 24, y1 + 0.3 * 40], [x1 + 12, y1 + 20]]
    np.testing.assert_allclose(points[0, :3], want, atol=1e-4)


def test_decode_nothing_above_the_threshold() -> None:
    maps = (
        np.zeros((8, 8), np.float32),
        np.zeros((2, 8, 8)),
        np.zeros((2, 8, 8)),
        np.zeros((10, 8, 8)),
    )
    boxes, scores, points = decode(*maps, stride=4, threshold=0.5, nms_iou=0.3)  # type: ignore[arg-type]
    assert boxes.shape == (0, 4) and scores.shape == (0,) and points.shape == (0, 5, 2)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.6, 0.9, 0.5, 0.7])
    assert nms(boxes, scores, 0.3) == [1, 2]
    assert sorted(nms(boxes, scores, 0.99)) == [0, 1, 2, 3]


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS written out box by box: the best left is kept, and every box left that
    overlaps it by more than `iou` is dropped (a dropped box drops nothing)."""
    left = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable, as argsort's
    keep = []
    while left:
        best = left.pop(0)
        keep.append(best)
        x1, y1, x2, y2 = boxes[best]
        kept_left = []
        for i in left:
            a1, b1, a2, b2 = boxes[i]
            inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
            union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
            if inter / max(union, 1e-9) <= iou:
                kept_left.append(i)
        left = kept_left
    return keep


def test_nms_equals_greedy_suppression_box_by_box_on_many_boxes() -> None:
    # chains (a suppressed box suppresses nothing), ties in score and thousands of boxes,
    # as a map with many cells over the threshold gives
    rng = np.random.default_rng(3)
    for count, iou in ((40, 0.3), (400, 0.5), (1500, 0.3)):
        corner = rng.uniform(0, 300, (count, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(2, 40, (count, 2))], axis=1)
        scores = rng.choice([0.5, 0.75, 0.9], count) + rng.uniform(0, 0.01, count) * (count > 40)
        assert nms(boxes, scores, iou) == _greedy_nms(boxes, scores, iou)


def test_feed_size_caps_the_longer_side_and_pads_to_the_multiple() -> None:
    assert feed_size(1080, 1920, 960, 32) == (0.5, 544, 960)
    assert feed_size(200, 200, 960, 32) == (1.0, 224, 224)
    assert feed_size(10, 5, 960, 32) == (1.0, 32, 32)


def test_detector_maps_boxes_back_to_the_image(card_file: Path) -> None:
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    image = np.zeros((1080, 1920, 3), np.uint8)
    image[400:408, 800:808] = 255  # one 4x4 cell once the image is halved to 960 wide
    (face,) = det.detect(image)
    # cell (50, 100) at stride 4 -> centre (402, 202) fed, (804, 404) in the image; 4 px
    # wide fed (exp(0) * 4) -> 8 px in the image
    np.testing.assert_allclose(face.box, (800, 400, 808, 408), atol=1e-3)
    assert face.score == pytest.approx(1.0, rel=1e-5)
    # two images of the same fed size share a run and give the same faces
    other = np.zeros((1080, 1920, 3), np.uint8)
    other[96:104, 40:48] = 255
    first, second = det.detect_many([image, other])
    assert len(first) == 1 and len(second) == 1
    np.testing.assert_allclose(second[0].box, (40, 96, 48, 104), atol=1e-3)


def test_max_side_is_the_cards_unless_overridden(card_file: Path) -> None:
    card = load_card_file(card_file)
    assert CenterFaceDetector(card, card_file.with_suffix(".onnx")).max_side == 960
    assert CenterFaceDetector(card, card_file.with_suffix(".onnx"), max_side=640).max_side == 640


def test_the_registry_builds_it_into_the_pipeline(card_file: Path, monkeypatch) -> None:
    real = cards.get_card
    monkeypatch.setattr(
        cards,
        "get_card",
        lambda ref: load_card_file(card_file) if ref == "centerface" else real(ref),
    )
    est = Estimator(detector="centerface", tta=False)
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:264, 300:364] = 200  # a 64 px bright square: 16 cells over the threshold
    faces = est.predict(image)
    assert faces and all(300 <= (f.box[0] + f.box[2]) / 2 <= 364 for f in faces)
    assert est.detector.name == "centerface"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output": {"decoder": "yolo"}}, "[output] decoder must be one of centerface"),
        ({"output": {"decoder": "centerface", "outputs": {"heatmap": "537"}}}, "[output] outputs"),
        ({"crop": {"kind": "margin"}}, "a face-detection card has no [crop] table"),
        ({"input": {"multiple": 0}}, "[input] multiple must be a positive integer"),
        ({"input": {"size": [32, 32]}}, "unknown field 'size' in [input]"),
    ],
)
def test_detector_card_faults_are_one_line(change: dict, message: str) -> None:
    data = {
        "id": "cf",
        "task": "face-detection",
        "source": {"file": "cf.onnx"},
        "input": {"channels": "RGB"},
        "output": {
            "decoder": "centerface",
            "outputs": {"heatmap": "a", "scale": "b", "offset": "c", "landmarks": "d"},
        },
    }
    parse_card(data)  # the base is valid
    for key, value in change.items():
        data[key] = value
    with pytest.raises(CardError) as info:
        parse_card(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_builtin_card_and_a_missing_file_is_a_one_line_hint(
    tmp_path: Path, monkeypatch
) -> None:
    card = cards.get_card("centerface")
    assert card.source.kind == "wheel" and card.detection is not None
    assert card.detection.decoder == "centerface" and card.input.channels == "RGB"
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path))
    with pytest.raises(Exception) as info:
        Estimator(detector="centerface")
    message = str(info.value)
    assert "agegender models pull centerface" in message and "--detector dlib" in message
    assert "\n" not in message


def test_a_second_pass_at_twice_the_side_finds_faces_too_small_at_the_first(
    card_file: Path,
) -> None:
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    image = np.zeros((1080, 1920, 3), np.uint8)
    image[400:404, 800:804] = 255  # a 2x2 patch once halved: a quarter of a cell, too weak
    assert det.max_side == 960
    (face,) = det.detect(image)  # found at full size (1920 <= 2 x 960) on the second pass
    np.testing.assert_allclose(face.box, (800, 400, 804, 404), atol=1e-3)
    small = np.zeros((480, 640, 3), np.uint8)  # not scaled down: no second pass to make
    assert det.detect(small) == []


class _Recorder:
    """Wraps the detector's session and keeps every tensor it is fed."""

    def __init__(self, session) -> None:
        self.session, self.fed = session, []

    def run(self, names, feeds):
        self.fed.append(next(iter(feeds.values())).copy())
        return self.session.run(names, feeds)


def test_the_card_contract_against_an_independent_computation(card_file: Path) -> None:
    # What MODELS.md says CenterFace takes: RGB 0..255 as decoded, no mean, no scale, NCHW,
    # height and width multiples of 32; here the image is halved to the card's 960 and
    # padded at the bottom (540 -> 544) with mid-grey (128).
    import cv2

    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    recorder = _Recorder(det.session)
    det.session = recorder  # type: ignore[assignment]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    det.detect(image)
    fed = recorder.fed[0]
    half = cv2.resize(image, (960, 540), interpolation=cv2.INTER_AREA).astype(np.float32)
    want = np.full((1, 3, 544, 960), 128, np.float32)
    want[0, :, :540, :] = half.transpose(2, 0, 1)  # channels as decoded: R, G, B
    assert fed.shape == want.shape and fed.dtype == np.float32
    np.testing.assert_allclose(fed, want, atol=1e-4)
    swapped = want[:, ::-1]  # the test tells the orders apart
    assert np.abs(fed - swapped).mean() > 10


def _bright_squares(count: int) -> list[np.ndarray]:
    out = []
    for k in range(count):
        image = np.zeros((480, 640, 3), np.uint8)
        image[40 + 30 * k : 104 + 30 * k, 60 + 50 * k : 124 + 50 * k] = 200
        out.append(image)
    return out


def test_a_parallel_worker_runs_a_single_threaded_twin_with_the_same_faces(
    card_file: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from agegender import sessions

    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"), threads=2)
    images = _bright_squares(3)
    assert det.session_here() is det.session  # not a worker: the configured session
    plain = [det.detect(im) for im in images]
    with ThreadPoolExecutor(2, initializer=sessions.parallel_worker) as pool:
        twins = set(pool.map(lambda _: det.session_here(), range(4)))
        pooled = list(pool.map(det.detect, images))
    (twin,) = twins  # one twin, made once, shared by the workers
    assert twin is not det.session
    assert twin.get_session_options().intra_op_num_threads == 1
    assert det.session.get_session_options().intra_op_num_threads == 2
    assert [len(f) for f in pooled] == [len(f) for f in plain] and all(plain)
    for ours, theirs in zip(pooled, plain, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)
    # a thread not made by such a pool keeps the configured session
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(det.session_here).result() is det.session


def test_no_twin_when_the_session_has_one_thread_already(card_file: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from agegender import sessions

    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"), threads=1)
    with ThreadPoolExecutor(1, initializer=sessions.parallel_worker) as pool:
        assert pool.submit(det.session_here).result() is det.session


@pytest.mark.parametrize(("workers", "twin"), [(2, True), (1, False)])
def test_predict_many_workers_detect_on_the_twin(
    card_file: Path, monkeypatch, workers: int, twin: bool
) -> None:
    real = cards.get_card
    monkeypatch.setattr(
        cards,
        "get_card",
        lambda ref: load_card_file(card_file) if ref == "centerface" else real(ref),
    )
    est = Estimator(detector="centerface", tta=False, workers=workers, threads=2)
    det = est.detector
    assert isinstance(det, CenterFaceDetector)
    images = _bright_squares(3)
    alone = [est.predict(im) for im in images]
    assert det._twin is None  # predict() detects on the calling thread's session
    many = list(est.predict_many(images))
    assert (det._twin is not None) is twin
    assert [len(r.faces) for r in many] == [len(f) for f in alone] and all(alone)
    for result, faces in zip(many, alone, strict=True):
        for a, b in zip(result.faces, faces, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            assert a.age.value == pytest.approx(b.age.value, abs=1e-3)


def test_min_score_is_the_decoders_threshold(card_file: Path, monkeypatch) -> None:
    """--min-score below the card's threshold finds the weaker faces too (a filter after
    decoding could only remove faces); above it, drops the weaker ones."""
    real = cards.get_card
    monkeypatch.setattr(
        cards,
        "get_card",
        lambda ref: load_card_file(card_file) if ref == "centerface" else real(ref),
    )
    threshold = load_card_file(card_file).detection.threshold  # type: ignore[union-attr]
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:264, 300:364] = round(255 * (threshold - 0.1))  # a face scored under the card's
    image[40:104, 40:104] = round(255 * (threshold + 0.2))  # and one over it

    def squares(**options: object) -> set[str]:
        """Which squares have faces: "weak" (the one under the threshold), "strong"."""
        est = Estimator(detector="centerface", tta=False, **options)  # type: ignore[arg-type]
        return {"weak" if f.box[0] >= 200 else "strong" for f in est.predict(image)}

    assert squares() == {"strong"}
    assert squares(min_score=threshold - 0.15) == {"weak", "strong"}
    assert squares(min_score=threshold + 0.25) == set()


def test_the_padding_up_to_the_multiple_is_mid_grey_not_a_black_band(card_file: Path) -> None:
    # A black band below the image's last row (8 rows for a 4:3 photo fed at 800, 30 for
    # 16:9) is an edge the real model never saw there: faces cut by the bottom edge were
    # found less often than faces cut by the top edge (9 against 11 of 15, half outside;
    # 11 of 15 with mid-grey padding, and no change on the composed dev scenes).
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    recorder = _Recorder(det.session)
    det.session = recorder  # type: ignore[assignment]
    det.detect(np.full((300, 400, 3), 200, np.uint8))  # fed at 320 x 416: 20 rows, 16 columns
    (fed,) = recorder.fed
    assert fed.shape == (1, 3, 320, 416)
    np.testing.assert_array_equal(fed[0, :, :300, :400], 200)
    np.testing.assert_array_equal(fed[0, :, 300:, :], 128)  # below the image
    np.testing.assert_array_equal(fed[0, :, :, 400:], 128)  # right of it


def test_a_large_photo_is_fed_at_the_cards_share_of_its_size(card_file: Path) -> None:
    """min_scale: a 4,000 px photo is fed at 0.4 of its side (1,600), not at max_side, so a
    face keeps the size at the detector's input it has in a smaller photo (at 800 most
    faces under 150 px were lost in 12 MP photos); side_limit bounds the cost, the
    second pass (nothing found) goes up to it, and a side given is fed as before."""
    text = card_file.read_text().replace("max_side = 960", "max_side = 960\nmin_scale = 0.4")
    limited = card_file.with_name("limited.toml")
    limited.write_text(text.replace("min_scale = 0.4", "min_scale = 0.4\nside_limit = 2400"))
    card_file.with_name("unlimited.toml").write_text(text)
    onnx_path = card_file.with_suffix(".onnx")

    def fed(toml: Path, height: int, width: int, **kw: int) -> list[tuple[int, ...]]:
        det = CenterFaceDetector(load_card_file(toml), onnx_path, **kw)  # type: ignore[arg-type]
        recorder = _Recorder(det.session)
        det.session = recorder  # type: ignore[assignment]
        det.detect(np.zeros((height, width, 3), np.uint8))  # no face: the second pass too
        return [f.shape[2:] for f in recorder.fed]

    assert fed(limited, 960, 1280) == [(736, 960), (960, 1280)]  # 0.4 x 1280 < 960: as before
    assert fed(limited, 3000, 4000) == [(1216, 1600), (1824, 2400)]  # 0.4 x 4000; up to 2400
    assert fed(limited, 6000, 8000) == [(1824, 2400)]  # at the limit: no second pass
    assert fed(card_file.with_name("unlimited.toml"), 3000, 4000) == [(1216, 1600), (2400, 3200)]
    assert fed(limited, 3000, 4000, max_side=800) == [(608, 800), (1216, 1600)]  # as given
    assert fed(card_file, 3000, 4000) == [(736, 960), (1440, 1920)]  # a card without it
    with pytest.raises(CardError, match="side_limit"):
        bad = card_file.with_name("bad.toml")
        bad.write_text(text.replace("min_scale = 0.4", "min_scale = 0.4\nside_limit = 500"))
        load_card_file(bad)
    with pytest.raises(CardError, match="min_scale"):
        bad.write_text(text.replace("min_scale = 0.4", "min_scale = 1.5"))
        load_card_file(bad)


def test_a_small_face_sends_a_scaled_down_photo_through_a_second_pass(card_file: Path) -> None:
    """small_face: a face found narrower than that at the input (the stand-in's boxes are
    4 px there) means smaller ones may have been missed (a group photo: 85.7% of the faces
    found in composed 12 MP group photos), so the photo is fed again at up to twice the side
    (at most side_limit and its own size); its faces are the second pass's and the first's
    that overlap none of them."""
    text = card_file.read_text().replace(
        "max_side = 960", "max_side = 960\nmin_scale = 0.4\nside_limit = 2400"
    )
    small = card_file.with_name("small.toml")
    small.write_text(text.replace("side_limit = 2400", "side_limit = 2400\nsmall_face = 8"))
    plain = card_file.with_name("plain.toml")
    plain.write_text(text)
    onnx_path = card_file.with_suffix(".onnx")
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[1000:1006, 1000:1006] = 255  # 2.4 px at 0.4 (a cell 0.36 bright), 3.6 px at 0.6 (0.81)
    image[500:510, 2000:2010] = 255  # a whole cell at 0.4: found, 4 px wide there

    def run(toml: Path, pixels: np.ndarray, **kw: int) -> tuple[list, list[tuple[int, ...]]]:
        det = CenterFaceDetector(load_card_file(toml), onnx_path, **kw)  # type: ignore[arg-type]
        recorder = _Recorder(det.session)
        det.session = recorder  # type: ignore[assignment]
        return det.detect(pixels), [f.shape[2:] for f in recorder.fed]

    def centres(faces: list) -> list[tuple[float, float]]:
        return [((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in faces]

    def near(faces: list, x: float, y: float) -> bool:
        return any(abs(cx - x) < 5 and abs(cy - y) < 5 for cx, cy in centres(faces))

    faces, fed = run(small, image)
    assert fed == [(1216, 1600), (1824, 2400)]
    assert near(faces, 1003, 1003) and near(faces, 2005, 505)
    faces, fed = run(plain, image)  # without small_face: one pass, the faint face missed
    assert fed == [(1216, 1600)]
    assert near(faces, 2005, 505) and not near(faces, 1003, 1003)
    # a side given (--max-detect-side) is fed as it is: no second pass while a face is found
    assert run(small, image, max_side=1600)[1] == [(1216, 1600)]
    # up to the photo's own size, not beyond
    assert run(small, image[:900, :1200])[1] == [(736, 960), (928, 1216)]
    # not scaled down: nothing more to see
    assert run(small, image[:600, :800])[1] == [(608, 800)]
    # faces not small (12 px boxes at the input with a scale of log 3): one pass
    onnx.save_model(centerface_graph(log_scale=float(np.log(3.0))), str(onnx_path))
    assert run(small, image)[1] == [(1216, 1600)]
    with pytest.raises(CardError, match="small_face"):
        bad = card_file.with_name("bad.toml")
        bad.write_text(text.replace("side_limit = 2400", "side_limit = 2400\nsmall_face = -3"))
        load_card_file(bad)


def test_the_second_pass_keeps_the_first_pass_faces_it_lost(card_file: Path) -> None:
    """A face of the first pass that overlaps no face of the second by more than the
    card's NMS overlap is kept; one the second pass found again is not doubled."""
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    second = [Detection((100.0, 100.0, 140.0, 140.0), 0.9)]
    again = Detection((102.0, 101.0, 141.0, 139.0), 0.8)  # the same face, a little off
    lost = Detection((400.0, 100.0, 520.0, 220.0), 0.7)  # a large face the second lost
    touching = Detection((130.0, 130.0, 170.0, 170.0), 0.6)  # overlap 100/3100: apart
    assert det._apart([again, lost, touching], second) == [lost, touching]
    assert det._apart([lost], []) == [lost]
    assert det._apart([], second) == []


def test_a_photo_fed_above_max_side_takes_its_large_faces_from_max_side(card_file: Path) -> None:
    """large_face: fed at 0.4 of a 4,000 px photo, a close-up face of several hundred
    pixels at the input came out as two or three boxes or none; such a photo is also fed at
    max_side, and its faces of large_face px or more (at the first input) come from there,
    those of the first pass under it (and not half inside one of them) from the first."""
    text = card_file.read_text().replace(
        "max_side = 960", "max_side = 960\nmin_scale = 0.4\nside_limit = 2400\nlarge_face = 100"
    )
    large = card_file.with_name("large.toml")
    large.write_text(text)
    onnx_path = card_file.with_suffix(".onnx")
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[500:520, 2000:2020] = 255  # whole cells at 0.4 and at 0.24

    def run(pixels: np.ndarray, **kw: int) -> tuple[list, list[tuple[int, ...]]]:
        det = CenterFaceDetector(load_card_file(large), onnx_path, **kw)  # type: ignore[arg-type]
        recorder = _Recorder(det.session)
        det.session = recorder  # type: ignore[assignment]
        return det.detect(pixels), [f.shape[2:] for f in recorder.fed]

    # 4-px boxes at the input (the stand-in's scale 0): small at 0.4, so the first pass's
    faces, fed = run(image)
    assert fed == [(1216, 1600), (736, 960)]
    widths = {round(f.box[2] - f.box[0]) for f in faces}
    assert widths == {10}  # 4 px at 0.4
    # 240-px boxes at the input (scale log 60): large, so max_side's (1,000 px in the image)
    onnx.save_model(centerface_graph(log_scale=float(np.log(60.0))), str(onnx_path))
    faces, fed = run(image)
    assert fed == [(1216, 1600), (736, 960)]
    widths = [f.box[2] - f.box[0] for f in faces]
    assert all(w * 0.4 >= 100 for w in widths) and not any(abs(w - 600) < 2 for w in widths)
    assert any(  # the patch's face, 240 px at 0.24 (boxes at the edges are cut by them)
        abs((f.box[0] + f.box[2]) / 2 - 2008) < 5
        and abs((f.box[1] + f.box[3]) / 2 - 508) < 5
        and abs(f.box[2] - f.box[0] - 1000) < 2
        for f in faces
    )
    # not fed above max_side, or a side given: one pass
    assert run(image[:900, :1200])[1] == [(736, 960)]
    assert run(image, max_side=1600)[1] == [(1216, 1600)]
    with pytest.raises(CardError, match="large_face"):
        bad = card_file.with_name("bad.toml")
        bad.write_text(text.replace("large_face = 100", "large_face = 0"))
        load_card_file(bad)


def test_a_part_of_a_large_face_is_not_kept_beside_it(card_file: Path) -> None:
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    big = [Detection((100.0, 100.0, 500.0, 500.0), 0.9)]
    part = Detection((300.0, 300.0, 560.0, 560.0), 0.5)  # 40000 of 67600 px inside: 59%
    beside = Detection((420.0, 420.0, 600.0, 600.0), 0.6)  # 6400 of 32400 px inside: 20%
    assert det._apart([part, beside], big, inside=True) == [beside]
    assert det._apart([part, beside], big) == [part, beside]  # by IoU both are apart


def test_a_face_large_at_the_first_pass_only_is_kept(card_file: Path) -> None:
    """The two passes measure one face a few pixels apart: a close-up face 167 px wide at
    the first input (1,600) and 158 px at 800 was in neither list (large_face 160) and the
    photo came back empty (utkface-dev chip in a 4,000 x 3,000 photo). A face large at
    either pass is max_side's."""
    text = card_file.read_text().replace(
        "max_side = 960", "max_side = 960\nmin_scale = 0.4\nside_limit = 2400\nlarge_face = 100"
    )
    card_file.write_text(text)
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    # widths at the first input (factor 0.4): 105 at the first pass, 95 at max_side's
    passes = {
        1600: Detection((1000.0, 1000.0, 1262.5, 1262.5), 0.9),
        960: Detection((1012.0, 1012.0, 1249.5, 1249.5), 0.8),
    }

    def fake(images: list, sides: list[int]) -> list[list[Detection]]:
        return [[passes[side]] for side in sides]

    det._detect_at = fake  # type: ignore[assignment,method-assign]
    assert det.detect(np.zeros((3000, 4000, 3), np.uint8)) == [passes[960]]
    # the other way round (95 at the first, 105 at max_side's): max_side's, once
    passes[1600], passes[960] = (
        Detection((1012.0, 1012.0, 1249.5, 1249.5), 0.9),
        Detection((1000.0, 1000.0, 1262.5, 1262.5), 0.8),
    )
    assert det.detect(np.zeros((3000, 4000, 3), np.uint8)) == [passes[960]]


def test_a_large_face_of_a_photo_fed_at_max_side_is_not_taken_from_its_small_face_pass(
    card_file: Path,
) -> None:
    """A photo of up to 2,000 px is fed at max_side; a small face sends it through a
    second pass at twice the side, where a large face in front is what large_face is
    about (boxes too small, or two or three of them). Its large faces are the first pass's
    (at max_side: no pass more); 1,920 x 1,080 photos with a face of 45-85% of the height
    and small ones behind (utkface-dev chips): 4 of 24 with 2-3 boxes on the face in front
    and its box 0.43-0.69 of the chip in most, now one box of 0.71-0.97."""
    text = card_file.read_text().replace(
        "max_side = 960",
        "max_side = 960\nmin_scale = 0.4\nside_limit = 2400\nsmall_face = 200\nlarge_face = 100",
    )
    card_file.write_text(text)
    onnx_path = card_file.with_suffix(".onnx")
    # boxes of 120 px at every input: large at 960 (100 or more), small (under 200) there
    onnx.save_model(centerface_graph(log_scale=float(np.log(30.0))), str(onnx_path))
    det = CenterFaceDetector(load_card_file(card_file), onnx_path)
    recorder = _Recorder(det.session)
    det.session = recorder  # type: ignore[assignment]
    image = np.zeros((1088, 1920, 3), np.uint8)  # no padding (its grey is over 0.5 here)
    image[400:408, 400:408] = 255  # one cell at 960 (half), two at 1,920
    faces = det.detect(image)
    assert [f.shape[2:] for f in recorder.fed] == [(544, 960), (1088, 1920)]
    (face,) = faces  # not the second pass's 120 px box beside the first's 240 px one
    assert abs(face.box[2] - face.box[0] - 240) < 2
    assert abs((face.box[0] + face.box[2]) / 2 - 404) < 3


def _centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    ys, xs = np.indices(weight.shape)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_shrink_is_area_averaging_to_half_and_anti_aliased_below() -> None:
    """The detector's input resize: area averaging as before down to half the size; below
    that whole blocks averaged, then bilinear (7x cheaper than area averaging at an uneven
    factor), still anti-aliased and not shifted."""
    rng = np.random.default_rng(0)
    smooth = cv2.resize(
        (rng.random((150, 200, 3)) * 255).astype(np.uint8),
        (4000, 3000),
        interpolation=cv2.INTER_CUBIC,
    )
    for size in ((800, 600), (640, 480)):  # factors 0.625 and 0.5: exactly area averaging
        small = smooth[:960, :1280]
        np.testing.assert_array_equal(
            shrink(small, size), cv2.resize(small, size, interpolation=cv2.INTER_AREA)
        )
    area = cv2.resize(smooth, (1600, 1200), interpolation=cv2.INTER_AREA)
    assert np.abs(shrink(smooth, (1600, 1200)).astype(int) - area.astype(int)).mean() < 2
    # A one-pixel checkerboard is mid-grey once shrunk (area averaging: 122..133);
    # bilinear alone aliases it (96..159).
    board = np.repeat((np.indices((3000, 4000)).sum(0) % 2 * 255).astype(np.uint8)[..., None], 3, 2)
    assert np.abs(shrink(board, (1600, 1200)).astype(int) - 128).max() <= 6
    # a blob lands where area averaging puts it (within 0.1 px fed), at any size: blocks
    # of 2 and 3 (6,000 x 4,000 to 1,000 wide: 3 divides 6,000 but not 4,000), and sides
    # that no block divides (area averaging itself)
    for height, width, size in ((3000, 4000, (1600, 1200)), (4000, 6000, (1000, 667))):
        blob = np.zeros((height, width, 3), np.uint8)
        blob[1490:1530, 2210:2250] = 255
        fed = shrink(blob, size)
        assert fed.shape == (size[1], size[0], 3)
        want = _centroid(cv2.resize(blob, size, interpolation=cv2.INTER_AREA))
        np.testing.assert_allclose(_centroid(fed), want, atol=0.1)
    odd = smooth[:2999, :3999]
    np.testing.assert_array_equal(
        shrink(odd, (1000, 750)), cv2.resize(odd, (1000, 750), interpolation=cv2.INTER_AREA)
    )


def test_shrink_averages_areas_only_at_whole_factors_below_half(monkeypatch) -> None:
    """Area averaging at an uneven factor is what cost the time (OpenCV's general path)."""
    import agegender.detectors as detectors

    calls: list[tuple[tuple[int, int], tuple[int, int], int]] = []
    real = cv2.resize

    def spy(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
        calls.append((image.shape[1::-1], size, interpolation))
        return real(image, size, interpolation=interpolation)

    monkeypatch.setattr(detectors.cv2, "resize", spy)
    shrink(np.zeros((3000, 4000, 3), np.uint8), (1600, 1200))
    assert calls == [
        ((4000, 3000), (2000, 1500), cv2.INTER_AREA),
        ((2000, 1500), (1600, 1200), cv2.INTER_LINEAR),
    ]


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [
        (1200, 1600, (480, 360)),  # as 8,000 x 6,000 to 2,400: k = 2 (not 3), rest 0.6
        (802, 1202, (240, 160)),  # sides sharing only 2 (panoramas, crops): rest 0.4
        (802, 1202, (120, 80)),  # --max-detect-side far below: rest 0.2
    ],
)
def test_shrink_does_not_alias_where_no_block_reaches_two_thirds(
    height: int, width: int, size: tuple[int, int]
) -> None:
    """The largest k dividing both sides can be far below the factor; the rest is then
    not bilinear (which passes fine stripes and pixel noise through as they are) but
    area-averaged, as cv2.INTER_AREA does it on the whole image."""
    columns = (np.indices((height, width))[1] // 2) % 2 * 255  # stripes 2 px wide
    stripes = np.repeat(columns.astype(np.uint8)[..., None], 3, 2)
    area = cv2.resize(stripes, size, interpolation=cv2.INTER_AREA).astype(int)
    fed = shrink(stripes, size).astype(int)
    assert fed.shape == area.shape
    assert np.abs(fed - 128).max() <= np.abs(area - 128).max() + 2
    noise = np.random.default_rng(1).normal(128, 40, (height, width, 3))
    noise = noise.clip(0, 255).astype(np.uint8)
    area_std = cv2.resize(noise, size, interpolation=cv2.INTER_AREA).std()
    assert shrink(noise, size).std() <= 1.25 * area_std


def _square_card(card_file: Path, extra: str = "largest_face = 720") -> CenterFaceDetector:
    """The stand-in card with the default's rules scaled to its max_side of 960 (the
    default: 800, large_face 160, largest_face 600)."""
    text = card_file.read_text().replace(
        "max_side = 960",
        f"max_side = 960\nmin_scale = 0.4\nside_limit = 2400\nlarge_face = 100\n{extra}",
    )
    card_file.write_text(text)
    return CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))


def _faked(det: CenterFaceDetector, passes: dict[int, list[Detection]]) -> list[int]:
    """Each pass at a side returns `passes[side]`; the sides fed, in order."""
    fed: list[int] = []

    def fake(images: list, sides: list[int]) -> list[list[Detection]]:
        fed.extend(sides)
        return [list(passes.get(side, [])) for side in sides]

    det._detect_at = fake  # type: ignore[assignment,method-assign]
    return fed


def test_a_face_filling_a_square_photo_comes_whole_from_a_coarser_pass(card_file: Path) -> None:
    """largest_face: a face filling a square photo, 640-800 px at the default's input,
    came out as two boxes of half its size or none (square close-ups composed from
    utkface-dev chips: a box of the face's width for 0 of 16 faces over 0.9 of the
    frame). Such a photo, fed at max_side or less with a shorter side of more than
    largest_face there, takes its faces of large_face px or more from a pass at the side
    where its shorter side is largest_face, when it found a face that large or none."""
    det = _square_card(card_file)
    square = np.zeros((960, 960, 3), np.uint8)
    halves = [  # two halves of one face, 400 px each at the input (fed at its own size)
        Detection((80.0, 100.0, 480.0, 900.0), 0.6),
        Detection((480.0, 100.0, 880.0, 900.0), 0.5),
    ]
    whole = Detection((90.0, 95.0, 870.0, 905.0), 0.9)  # 585 px at 720
    small = Detection((10.0, 10.0, 60.0, 60.0), 0.8)  # a face of 50 px beside it
    fed = _faked(det, {960: [*halves, small], 720: [whole]})
    assert det.detect(square) == [whole, small]
    assert fed == [960, 720]
    # no face found: the coarser pass too, and only its large faces are taken
    fed = _faked(det, {720: [whole, Detection((0.0, 0.0, 40.0, 40.0), 0.9)]})
    assert det.detect(square) == [whole]
    assert fed == [960, 720]
    # small faces only: one pass
    fed = _faked(det, {960: [small], 720: [whole]})
    assert det.detect(square) == [small]
    assert fed == [960]
    # 4:3 (720 px high at 960: not more than largest_face), or a smaller square (fed at
    # its own 700 px): one pass, as before
    for shape in ((720, 960, 3), (700, 700, 3)):
        fed = _faked(det, {960: halves, 720: [whole]})
        assert det.detect(np.zeros(shape, np.uint8)) == halves
        assert fed == [960]
    # a side given (--max-detect-side) is fed alone
    det = CenterFaceDetector(
        load_card_file(card_file), card_file.with_suffix(".onnx"), max_side=960
    )
    fed = _faked(det, {960: halves, 720: [whole]})
    assert det.detect(square) == halves
    assert fed == [960]


def test_faces_behind_a_large_one_in_a_square_photo_are_kept(card_file: Path) -> None:
    """At the coarser pass a large face's box reaches over the heads behind it: their
    faces, half inside it, were dropped as parts of it (squares composed from utkface-dev
    chips, a face of 0.45-0.75 of the side in front of 3-6 small ones: recall 0.987 ->
    0.937). A smaller face the coarser pass found too is a face; a part only the first
    pass saw is still dropped."""
    det = _square_card(card_file)
    square = np.zeros((960, 960, 3), np.uint8)
    front = Detection((250.0, 300.0, 750.0, 900.0), 0.9)  # 500 px at 960
    behind = [
        Detection((300.0, 100.0, 380.0, 200.0), 0.8),
        Detection((600.0, 90.0, 680.0, 190.0), 0.7),
    ]
    part = Detection((420.0, 500.0, 500.0, 600.0), 0.4)  # at 960 only, inside the face
    whole = Detection((160.0, 60.0, 860.0, 920.0), 0.9)  # at 720, over the heads behind
    seen = [  # the faces behind at 720 too
        Detection((305.0, 105.0, 378.0, 198.0), 0.7),
        Detection((598.0, 92.0, 682.0, 188.0), 0.6),
    ]
    fed = _faked(det, {960: [front, *behind, part], 720: [whole, *seen]})
    assert det.detect(square) == [whole, *behind]
    assert fed == [960, 720]


def test_a_square_photo_fed_above_max_side_takes_its_large_faces_below_it(
    card_file: Path,
) -> None:
    """A photo fed above max_side takes its large faces from a pass at max_side, where a
    4:3 photo is 720 px high (largest_face), as before; a square one from the side where it
    is: 720, not 960 (3,000 x 3,000 close-ups: 9 of 18 faces whole -> 18)."""
    det = _square_card(card_file)
    whole = Detection((300.0, 300.0, 3700.0, 3700.0), 0.9)
    fed = _faked(det, {1600: [], 720: [whole]})
    assert det.detect(np.zeros((4000, 4000, 3), np.uint8)) == [whole]
    assert fed == [1600, 2400, 720]  # no face at 1,600: a pass at up to twice the side too
    fed = _faked(det, {1600: [], 960: [whole]})
    assert det.detect(np.zeros((3000, 4000, 3), np.uint8)) == [whole]
    assert fed == [1600, 2400, 960]
    # the sides, and what is fed at them, with the stand-in graph
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    recorder = _Recorder(det.session)
    det.session = recorder  # type: ignore[assignment]
    det.detect(np.zeros((960, 960, 3), np.uint8))  # no face: the coarser pass
    assert [f.shape[2:] for f in recorder.fed] == [(960, 960), (736, 736)]
    assert det.coarse_side(np.zeros((960, 1280, 3), np.uint8), 960) == 960
    assert det.coarse_side(np.zeros((1280, 960, 3), np.uint8), 960) == 960
    assert det.coarse_side(np.zeros((1000, 1000, 3), np.uint8), 960) == 720
    assert det.coarse_side(np.zeros((700, 700, 3), np.uint8), 960) == 960  # fed at 700


def test_largest_face_is_checked_like_every_card_field(card_file: Path) -> None:
    text = card_file.read_text()
    for extra, wrong in (
        ("largest_face = 720", None),
        ("large_face = 100\nlargest_face = 80", "largest_face"),
        ("largest_face = 0", "largest_face"),
    ):
        card_file.write_text(text.replace("max_side = 960", f"max_side = 960\n{extra}"))
        if wrong is None:
            with pytest.raises(CardError, match="largest_face must be an integer > large_face"):
                load_card_file(card_file)  # without large_face, which it needs
        else:
            with pytest.raises(CardError, match=wrong):
                load_card_file(card_file)
    card_file.write_text(
        text.replace("max_side = 960", "max_side = 960\nlarge_face = 100\nlargest_face = 720")
    )
    assert load_card_file(card_file).detection.largest_face == 720  # type: ignore[union-attr]


def test_a_mirror_image_gives_its_faces_in_the_image_with_left_and_right_swapped(
    card_file: Path,
) -> None:
    """The mirrored pass's boxes and points are mapped back: a face found in the mirror
    image at x is at width - x in the image, and its left eye is the mirror image's right
    one. The stand-in's points (box units) are symmetric under that map, so the mirrored
    pass must give the direct pass's faces exactly."""
    points = [0.3, 0.2, 0.3, 0.8, 0.5, 0.5, 0.8, 0.25, 0.8, 0.75]  # y, x: eyes, nose, mouth
    onnx_path = card_file.with_suffix(".onnx")
    onnx.save_model(centerface_graph(log_scale=float(np.log(3.0)), points=points), str(onnx_path))
    det = CenterFaceDetector(load_card_file(card_file), onnx_path)
    image = np.zeros((480, 640, 3), np.uint8)
    image[100:104, 40:44] = 255  # one bright cell left of the middle, fed at its own size
    image[300:304, 500:504] = 200
    (direct,) = det._detect_at([image], [960])
    (mirrored,) = det._detect_at([image], [960], mirrored=True)
    assert len(direct) == 2 and len(mirrored) == 2
    for one, other in zip(
        sorted(direct, key=lambda d: d.box), sorted(mirrored, key=lambda d: d.box), strict=True
    ):
        np.testing.assert_allclose(one.box, other.box, atol=1e-6)
        np.testing.assert_allclose(one.keypoints, other.keypoints, atol=1e-6)
        assert one.keypoints is not None and one.keypoints[0, 0] < one.keypoints[1, 0]


def test_detect_mirror_adds_the_faces_only_the_mirror_image_shows(card_file: Path) -> None:
    """CenterFace misses faces tilted one way more than the other (composed scenes: 11 of
    431 turned clockwise, none of 348 turned the other way); with `mirror` each image's
    mirror image is fed too, at the card's mirror_scale of its side, and its faces that
    overlap none found (nor lie half inside one) are added."""
    text = card_file.read_text().replace("max_side = 960", "max_side = 960\nmirror_scale = 0.5")
    card_file.write_text(text)
    onnx_path = card_file.with_suffix(".onnx")
    found = Detection((100.0, 100.0, 160.0, 160.0), 0.9)
    again = Detection((102.0, 98.0, 161.0, 158.0), 0.8)  # the same face, seen mirrored
    part = Detection((120.0, 120.0, 150.0, 150.0), 0.7)  # inside it
    missed = Detection((400.0, 300.0, 450.0, 350.0), 0.6)  # tilted the way it misses
    fed: list[tuple[int, bool]] = []

    def fake(images: list, sides: list[int], mirrored: bool = False) -> list[list[Detection]]:
        fed.extend((side, mirrored) for side in sides)
        return [[again, part, missed] if mirrored else [found] for _ in sides]

    det = CenterFaceDetector(load_card_file(card_file), onnx_path, mirror=True)
    det._detect_at = fake  # type: ignore[assignment,method-assign]
    assert det.detect(np.zeros((960, 1280, 3), np.uint8)) == [found, missed]
    assert fed == [(960, False), (480, True)]  # fed at 960: the mirror at half of that
    fed.clear()
    # an image smaller than the side is fed at its own size: the mirror at half of that
    assert det.detect(np.zeros((480, 640, 3), np.uint8)) == [found, missed]
    assert fed == [(960, False), (320, True)]
    fed.clear()
    det = CenterFaceDetector(load_card_file(card_file), onnx_path)  # without: one pass
    det._detect_at = fake  # type: ignore[assignment,method-assign]
    assert det.detect(np.zeros((480, 640, 3), np.uint8)) == [found]
    assert fed == [(960, False)]
    for wrong in ("0.05", "1.5", '"half"'):
        card_file.write_text(text.replace("mirror_scale = 0.5", f"mirror_scale = {wrong}"))
        with pytest.raises(CardError, match="mirror_scale"):
            load_card_file(card_file)


def test_a_photo_fed_just_above_max_side_takes_its_large_faces_from_that_pass(
    card_file: Path,
) -> None:
    """A photo just over max_side / min_scale is fed at a side a few pixels over max_side
    (2,001 px: 801); a pass at max_side for its large faces would see what that one saw,
    so within 5% of the side there is none (it was fed twice)."""
    text = card_file.read_text().replace(
        "max_side = 960", "max_side = 960\nmin_scale = 0.4\nside_limit = 2400\nlarge_face = 100"
    )
    card_file.write_text(text)
    det = CenterFaceDetector(load_card_file(card_file), card_file.with_suffix(".onnx"))
    recorder = _Recorder(det.session)
    det.session = recorder  # type: ignore[assignment]
    image = np.zeros((1815, 2420, 3), np.uint8)  # fed at 968 (0.4 x 2,420)
    image[500:520, 1000:1020] = 255  # a face: no second pass for an empty photo
    assert det.detect(image)
    assert [f.shape[2:] for f in recorder.fed] == [(736, 992)]
    recorder.fed.clear()
    det.detect(np.ascontiguousarray(np.pad(image, ((0, 435), (0, 580), (0, 0)))))  # 3,000 px
    assert [f.shape[2:] for f in recorder.fed] == [(928, 1216), (736, 960)]  # 1,200, then 960


def _enlarging_card(
    card_file: Path, extra: str = "small_face = 8\nenlarge = 2", name: str = "enlarging"
) -> Path:
    """The stand-in's card with `extra`; its NMS overlap at 0.2, since the stand-in's boxes
    are 4 px at any input, so one face seen at two sizes overlaps itself by a quarter."""
    path = card_file.with_name(f"{name}.toml")
    text = card_file.read_text().replace("nms_iou = 0.3", "nms_iou = 0.2")
    path.write_text(text.replace("max_side = 960", f"max_side = 960\n{extra}"))
    return path


def test_a_small_picture_with_a_small_face_is_fed_again_enlarged(card_file: Path) -> None:
    """enlarge: a picture fed at its own size (here 320 x 416) in which a face came out
    narrower than small_face (the stand-in's boxes are 4 px) is fed again enlarged by the
    factor, at most to side_limit (max_side without one): a face too faint for the detector
    at its own size is found there. Composed scenes shrunk to 320 x 240 (faces of 20-65
    px): utkface-dev recall 0.923 -> 0.960."""
    onnx_path = card_file.with_suffix(".onnx")
    image = np.full((320, 416, 3), 100, np.uint8)
    image[100:102, 100:102] = 255  # its cell 0.544 bright: found at its own size, 4 px wide
    image[200:202, 300:302] = 200  # its cell 0.490: found only enlarged (0.69 there)

    def run(toml: Path, pixels: np.ndarray, **kw: int) -> tuple[list, list[tuple[int, ...]]]:
        det = CenterFaceDetector(load_card_file(toml), onnx_path, **kw)  # type: ignore[arg-type]
        recorder = _Recorder(det.session)
        det.session = recorder  # type: ignore[assignment]
        return det.detect(pixels), [f.shape[2:] for f in recorder.fed]

    def near(faces: list, x: float, y: float) -> bool:
        return any(
            abs((f.box[0] + f.box[2]) / 2 - x) < 3 and abs((f.box[1] + f.box[3]) / 2 - y) < 3
            for f in faces
        )

    enlarging = _enlarging_card(card_file)
    faces, fed = run(enlarging, image)
    assert fed == [(320, 416), (640, 832)]
    assert len(faces) == 2 and near(faces, 101, 101) and near(faces, 301, 201)
    faces, fed = run(card_file, image)  # without enlarge: one pass, the faint face missed
    assert fed == [(320, 416)]
    assert len(faces) == 1 and near(faces, 101, 101)
    # at most to side_limit, or max_side without one (960: 2 x 608 would be 1216)
    wide = np.pad(image, ((0, 0), (0, 192), (0, 0)))
    assert run(enlarging, wide)[1] == [(320, 608), (512, 960)]
    limited = _enlarging_card(card_file, "side_limit = 1100\nsmall_face = 8\nenlarge = 2", "lim")
    assert run(limited, wide)[1] == [(320, 608), (608, 1120)]  # 1100 padded to 32
    # a side given (--max-detect-side) is fed as it is
    assert run(enlarging, image, max_side=416)[1] == [(320, 416)]
    # no face found: nothing says the picture holds small faces
    assert run(enlarging, np.zeros_like(image))[1] == [(320, 416)]
    # a picture scaled down takes small_face's second pass (up to its own size), never
    # an enlarged one
    large = np.zeros((960, 1248, 3), np.uint8)
    large[100:112, 100:112] = 255
    assert run(enlarging, large)[1] == [(768, 960), (960, 1248)]
    # faces not small (12 px boxes with a scale of log 3): one pass
    onnx.save_model(centerface_graph(log_scale=float(np.log(3.0))), str(onnx_path))
    assert run(enlarging, image)[1] == [(320, 416)]


def test_the_enlarged_pass_replaces_only_the_small_faces(card_file: Path) -> None:
    """A face of small_face px or more stays the first pass's (at 2x a face that fills a
    224 px crop is over 400 px, where the detector measures it worse); the small ones are
    the enlarged pass's, those only it found are added, and a small one it lost is kept."""
    det = CenterFaceDetector(
        load_card_file(_enlarging_card(card_file, "small_face = 30\nenlarge = 2")),  # type: ignore[arg-type]
        card_file.with_suffix(".onnx"),
    )
    big = Detection((20.0, 0.0, 200.0, 210.0), 0.9)
    small = Detection((0.0, 150.0, 20.0, 190.0), 0.8)
    lost = Detection((200.0, 100.0, 215.0, 115.0), 0.4)
    big_again = Detection((10.0, 0.0, 205.0, 220.0), 0.95)
    small_again = Detection((0.0, 152.0, 19.0, 189.0), 0.85)
    part = Detection((60.0, 60.0, 80.0, 80.0), 0.5)  # half inside the big face
    new = Detection((210.0, 180.0, 224.0, 200.0), 0.6)

    def detect_at(images, sides, mirrored=False, enlarge=False):
        return [[big_again, small_again, part, new]] if enlarge else [[big, small, lost]]

    det._detect_at = detect_at  # type: ignore[method-assign]
    faces = det.detect(np.zeros((224, 224, 3), np.uint8))
    assert faces == [big, small_again, new, lost]
    with pytest.raises(CardError, match="enlarge"):
        load_card_file(_enlarging_card(card_file, "small_face = 8\nenlarge = 0.5"))
    with pytest.raises(CardError, match="enlarge"):
        load_card_file(_enlarging_card(card_file, "enlarge = 2"))  # needs small_face


def test_an_enlarged_picture_is_resized_bilinearly_even_where_its_width_stays(
    card_file: Path,
) -> None:
    """enlarge: a tall picture enlarged to max_side by a hair (959 -> 960 rows) keeps its
    100 columns (100 x 960 / 959 rounds to 100); it is still enlarged bilinearly, as a
    picture whose width grows is (it went to the area-averaging shrink, whose rows came
    out unlike bilinear's)."""
    det = CenterFaceDetector(
        load_card_file(_enlarging_card(card_file)), card_file.with_suffix(".onnx")
    )
    recorder = _Recorder(det.session)
    det.session = recorder  # type: ignore[assignment]
    rng = np.random.default_rng(0)
    for shape, fed in (((959, 100, 3), (960, 128)), ((100, 959, 3), (128, 960))):
        image = rng.integers(0, 100, shape, dtype=np.uint8)  # no face (cells under 0.4)
        image[40:44, 40:44] = 255  # a face 4 px wide, under small_face: fed again enlarged
        recorder.fed.clear()
        det.detect(image)
        assert [f.shape[2:] for f in recorder.fed] == [fed, fed]
        size = (round(shape[1] * 960 / 959), round(shape[0] * 960 / 959))
        want = np.full((*fed, 3), 128, np.uint8)
        want[: size[1], : size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(recorder.fed[1][0], want.transpose(2, 0, 1))
