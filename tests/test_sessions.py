"""Execution providers: their resolution, the one-line error, and that every session the
Estimator opens (heads and the CenterFace detector) gets them, from Python and the CLI.

A second real provider is needed to see a choice reach a session: ONNX Runtime's CPU
wheels ship the Azure provider, which runs nothing itself (its nodes fall to the CPU);
where a build lacks it those tests are skipped. Unavailability is simulated by
narrowing ``onnxruntime.get_available_providers``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from faceutils import ASTRONAUT
from support.standins import CENTERFACE_CARD
from test_centerface import card_file, standin_graph  # noqa: F401 (fixture)

from agegender import Estimator, EstimatorConfig, cards, cli, sessions
from agegender.detectors import centerface
from agegender.detectors.centerface import CenterFaceDetector
from agegender.errors import AgegenderError
from agegender.sessions import CPU, ProviderError, resolve_providers

AZURE = "AzureExecutionProvider"
needs_azure = pytest.mark.skipif(
    AZURE not in ort.get_available_providers(), reason="this ONNX Runtime has no Azure provider"
)


@pytest.fixture
def offered(monkeypatch: pytest.MonkeyPatch):
    """Pretend this ONNX Runtime offers exactly the given providers."""

    def offer(*names: str) -> None:
        monkeypatch.setattr(ort, "get_available_providers", lambda: [*names, CPU])

    return offer


def test_the_cpu_alone_by_default() -> None:
    assert resolve_providers(()) == [CPU]
    assert resolve_providers(["cpu"]) == [CPU]


def test_order_as_given_cpu_last_without_repeats(offered) -> None:
    offered("CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider")
    got = resolve_providers(["cpu", "TensorRT", "cuda", "CUDAExecutionProvider", "openvino"])
    assert got == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "OpenVINOExecutionProvider",
        CPU,
    ]


def test_an_unavailable_provider_is_one_line_naming_it_and_the_available(offered) -> None:
    offered(AZURE)
    with pytest.raises(ProviderError) as caught:
        resolve_providers(["cuda"])
    message = str(caught.value)
    assert "\n" not in message
    assert "'cuda' (CUDAExecutionProvider) is not available" in message
    assert "available: azure, cpu" in message


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ProviderError, match=r"unknown execution provider 'cudda'.*cuda"):
        resolve_providers(["cudda"])


def test_the_config_takes_a_comma_list_and_refuses_a_malformed_name() -> None:
    assert EstimatorConfig(providers="cuda, cpu").providers == ("cuda", "cpu")
    assert EstimatorConfig(providers=["dml"]).providers == ("dml",)
    assert EstimatorConfig(providers=None).providers == ()
    with pytest.raises(AgegenderError, match="--providers: 'cu da' is not a provider name"):
        EstimatorConfig(providers=["cu da"])


def test_a_derived_estimator_cannot_change_providers(estimator: Estimator) -> None:
    with pytest.raises(AgegenderError, match="cannot change"):
        estimator.derive(providers=("azure",))


@needs_azure
def test_every_head_session_gets_the_providers() -> None:
    est = Estimator(providers=("azure",), detector="none")
    for task in est.tasks.values():
        for head in task.heads:
            assert head.model.session.get_providers() == [AZURE, CPU]
    assert Estimator(detector="none").tasks["age"].heads[0].model.session.get_providers() == [CPU]


@needs_azure
def test_the_centerface_session_gets_them_too(card_file: Path, monkeypatch) -> None:  # noqa: F811
    real = cards.get_card
    monkeypatch.setattr(
        cards,
        "get_card",
        lambda ref: cards.load_card_file(card_file) if ref == "centerface" else real(ref),
    )
    est = Estimator(detector="centerface", providers="azure")
    assert est.detector.session.get_providers() == [AZURE, CPU]  # type: ignore[attr-defined]
    # a detector built later for a derived estimator (serve's per-request detector) too
    est = Estimator(providers="azure")
    derived = est.derive(detector="centerface")
    assert derived.detector.session.get_providers() == [AZURE, CPU]  # type: ignore[attr-defined]


def test_sessions_made_outside_an_estimator_default_to_the_cpu(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    onnx.save_model(standin_graph(), str(path))
    assert sessions.create(path).get_providers() == [CPU]
    with sessions.using(["cpu"]):
        assert sessions.create(path.read_bytes()).get_providers() == [CPU]


def test_the_estimator_refuses_an_unavailable_provider(offered) -> None:
    offered()
    with pytest.raises(ProviderError, match="'cuda'"):
        Estimator(providers=("cuda", "cpu"), detector="none")


def test_the_cli_exits_non_zero_with_one_line(offered, capsys) -> None:
    offered()
    status = cli.main(["predict", str(ASTRONAUT), "--providers", "cuda,cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status != 0
    assert len(err.splitlines()) == 1
    assert "'cuda' (CUDAExecutionProvider) is not available" in err
    assert "available: cpu" in err


def test_the_cli_flag_reaches_the_config() -> None:
    from agegender.commands.options import config_from_args

    parser = cli.build_parser()
    args = parser.parse_args(["predict", "x.jpg", "--providers", "tensorrt,cuda"])
    assert config_from_args(args).providers == ("tensorrt", "cuda")
    args = parser.parse_args(["serve", "--providers", "cuda"])
    assert config_from_args(args).providers == ("cuda",)


@needs_azure
def test_the_cli_runs_with_an_available_provider(capsys) -> None:
    status = cli.main(["predict", str(ASTRONAUT), "--providers", "azure", "--json"])
    assert status == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["faces"] and np.isfinite(result["faces"][0]["age"]["value"])


def test_cuda_sessions_get_heuristic_cudnn_algorithm_search(offered, monkeypatch, tmp_path) -> None:
    # Batches change shape with the number of faces; cuDNN's exhaustive search (ONNX
    # Runtime's default) would time every algorithm again for each new shape.
    offered("CUDAExecutionProvider")
    seen: dict[str, object] = {}

    class Recorder:
        def __init__(self, source, sess_options=None, providers=None, provider_options=None):
            seen.update(providers=providers, provider_options=provider_options)

        def get_providers(self) -> list[str]:
            return list(seen["providers"])  # type: ignore[call-overload]

    monkeypatch.setattr(ort, "InferenceSession", Recorder)
    sessions.create(b"graph", providers=["cuda"])
    assert seen["providers"] == ["CUDAExecutionProvider", CPU]
    assert seen["provider_options"] == [{"cudnn_conv_algo_search": "HEURISTIC"}, {}]
    sessions.create(b"graph")
    assert seen["provider_options"] == [{}]


def _recording(monkeypatch, session) -> list[tuple[int, ...]]:
    """The input shapes of every run of `session` from now on."""
    shapes: list[tuple[int, ...]] = []
    real = session.run

    def run(names, feed, *rest):
        shapes.append(next(iter(feed.values())).shape)
        return real(names, feed, *rest)

    monkeypatch.setattr(session, "run", run)
    return shapes


@needs_azure
def test_on_an_accelerator_head_batches_are_padded_to_one_shape(monkeypatch) -> None:
    # ONNX Runtime's CUDA convolutions set themselves up again at every change of input
    # shape; on an accelerator each run is padded to max_batch, the outputs unchanged.
    est, cpu = Estimator(providers="azure", detector="none"), Estimator(detector="none")
    model, plain = est.tasks["age"].heads[0].model, cpu.tasks["age"].heads[0].model
    assert model.padded and not plain.padded and model.max_batch > 3

    spec = model.card.input
    face = cv2.resize(cv2.imread(str(ASTRONAUT))[40:240, 150:330], (spec.width, spec.height))
    crops = [face, face[:, ::-1].copy(), np.roll(face, 7, axis=0)]
    names = [model.output.name]
    shapes = _recording(monkeypatch, model.session)
    for count in (1, 3, model.max_batch + 2):
        batch = (crops * model.max_batch)[:count]
        got, want = model.outputs(batch, names), plain.outputs(batch, names)
        assert got[names[0]].shape == want[names[0]].shape == (count, want[names[0]].shape[1])
        np.testing.assert_allclose(got[names[0]], want[names[0]], rtol=1e-4, atol=1e-6)
    assert {shape[0] for shape in shapes} == {model.max_batch}
    assert len(shapes) == 4  # 1, 3, then max_batch + 2 in two runs


def _centerface_on_cpu_and_azure(
    tmp_path: Path,
) -> tuple[CenterFaceDetector, CenterFaceDetector]:
    """The stand-in CenterFace on the CPU alone and on the Azure provider (an accelerator
    to the code: every node goes to the CPU)."""
    onnx.save_model(standin_graph(), str(tmp_path / "centerface.onnx"))
    card_path = tmp_path / "centerface.toml"
    card_path.write_text(CENTERFACE_CARD.format(max_side=960))
    card = cards.load_card_file(card_path)
    plain = CenterFaceDetector(card, tmp_path / "centerface.onnx")
    return plain, CenterFaceDetector(card, tmp_path / "centerface.onnx", providers=["azure"])


@needs_azure
def test_on_an_accelerator_centerface_keeps_a_session_a_shape(tmp_path, monkeypatch) -> None:
    # ONNX Runtime's CUDA convolutions set themselves up again whenever a run's shape
    # differs from the previous run's: on an accelerator each shape gets its own session
    # and each image its own run, fed exactly as on the CPU.
    plain, det = _centerface_on_cpu_and_azure(tmp_path)
    assert det.accelerated and not plain.accelerated
    wide = np.zeros((1080, 1920, 3), np.uint8)
    wide[400:408, 800:808] = 255
    tall = np.zeros((1920, 1080, 3), np.uint8)
    tall[96:104, 40:48] = 255
    wide2 = np.zeros((1080, 1920, 3), np.uint8)
    wide2[96:104, 40:48] = 255
    small = np.zeros((200, 300, 3), np.uint8)
    small[100:104, 200:204] = 255  # one cell at stride 4
    images = [wide, tall, wide2, small]
    want = plain.detect_many(images)
    for _ in range(2):
        got = det.detect_many(images)
        assert [len(faces) for faces in got] == [len(faces) for faces in want] == [1, 1, 1, 1]
        for mine, theirs in zip(got, want, strict=True):
            np.testing.assert_allclose(mine[0].box, theirs[0].box, atol=1e-4)
            assert mine[0].score == pytest.approx(theirs[0].score, rel=1e-5)
        if _ == 0:  # the sessions made on first use, then watched
            kept = dict(det._by_shape)
            assert list(kept) == [(544, 960), (960, 544), (224, 320)]
            assert kept[(544, 960)] is det.session
            assert len({id(session) for session in kept.values()}) == 3
            shapes = {fed: _recording(monkeypatch, session) for fed, session in kept.items()}
    assert det._by_shape == kept  # no session made again
    assert shapes == {
        (544, 960): [(1, 3, 544, 960), (1, 3, 544, 960)],  # wide and wide2, one a run
        (960, 544): [(1, 3, 960, 544)],
        (224, 320): [(1, 3, 224, 320)],
    }
    # more shapes than SHAPE_SESSIONS: the least recently used session goes
    monkeypatch.setattr("agegender.detectors.centerface.SHAPE_SESSIONS", 3)
    det.detect(np.zeros((100, 100, 3), np.uint8))
    assert list(det._by_shape) == [(960, 544), (224, 320), (128, 128)]


@needs_azure
def test_on_an_accelerator_small_pictures_of_both_orientations_keep_their_sessions(
    tmp_path, monkeypatch
) -> None:
    # A small picture with a small face is fed at its own size, enlarged (the card's
    # `enlarge`) and, with --detect-mirror, mirrored at half its side: three input sizes,
    # six for landscape and portrait ones. With four kept, every picture made its sessions
    # again (a CUDA session sets itself up for hundreds of ms).
    onnx.save_model(standin_graph(), str(tmp_path / "centerface.onnx"))
    card_path = tmp_path / "centerface.toml"
    extra = "max_side = 960\nsmall_face = 8\nenlarge = 2\nmirror_scale = 0.5"
    card_path.write_text(CENTERFACE_CARD.format(max_side=960).replace("max_side = 960", extra))
    card = cards.load_card_file(card_path)
    plain = CenterFaceDetector(card, tmp_path / "centerface.onnx", mirror=True)
    det = CenterFaceDetector(card, tmp_path / "centerface.onnx", providers=["azure"], mirror=True)
    wide = np.zeros((240, 320, 3), np.uint8)
    wide[100:104, 200:204] = 255  # a face 4 px wide, under small_face
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    made: list[object] = []
    real = sessions.create

    def create(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(sessions, "create", create)
    for _ in range(3):
        for image in (wide, tall):
            got, want = det.detect(image), plain.detect(image)
            np.testing.assert_allclose([f.box for f in got], [f.box for f in want], atol=1e-4)
    assert sorted(det._by_shape) == [
        (128, 160),
        (160, 128),
        (256, 320),
        (320, 256),
        (480, 640),
        (640, 480),
    ]
    assert len(made) == 5  # the first size runs the detector's own session


@needs_azure
def test_on_an_accelerator_a_session_being_made_holds_up_no_other_shape(
    tmp_path, monkeypatch
) -> None:
    # Setting a session up on a GPU takes a while: meanwhile other threads (predict_many's
    # workers, serve's) run the shapes they already have, and two threads wanting one new
    # shape get one session.
    plain, det = _centerface_on_cpu_and_azure(tmp_path)
    have = np.zeros((200, 300, 3), np.uint8)
    have[100:104, 200:204] = 255
    new = np.zeros((300, 200, 3), np.uint8)
    new[40:44, 60:64] = 255
    det.detect(have)  # its shape's session is the first one, kept
    started, release, made = threading.Event(), threading.Event(), []
    real = centerface.sessions.create

    def slow(*args, **kwargs):
        made.append(threading.current_thread().name)
        started.set()
        release.wait(300)  # longer than the wait below: a held-up thread stays held up
        return real(*args, **kwargs)

    monkeypatch.setattr(centerface.sessions, "create", slow)
    results: dict[str, list] = {}

    def run(name: str, image) -> None:
        results[name] = det.detect(image)

    makers = [threading.Thread(target=run, args=(f"new{i}", new), name=f"t{i}") for i in (1, 2)]
    makers[0].start()
    assert started.wait(60)
    makers[1].start()
    other = threading.Thread(target=run, args=("have", have))
    other.start()
    other.join(60)  # a tiny stand-in detection: only a bug makes it wait this long
    held_up = other.is_alive()
    release.set()
    for thread in (*makers, other):
        thread.join(60)
    assert not held_up, "a cached shape waited for another shape's session to be made"
    assert made == ["t1"]  # one session for the new shape
    assert list(det._by_shape) == [(224, 320), (320, 224)]
    for name, image in (("have", have), ("new1", new), ("new2", new)):
        want = plain.detect(image)
        assert len(results[name]) == len(want) == 1
        np.testing.assert_allclose(results[name][0].box, want[0].box, atol=1e-4)


def test_a_cuda_provider_that_does_not_start_is_logged_with_the_usual_cause(
    offered, monkeypatch, caplog
) -> None:
    # A CUDA build whose libraries ONNX Runtime cannot load makes its session on the CPU
    # alone: one warning naming both and what usually fixes it.
    offered("CUDAExecutionProvider")

    class CpuOnly:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def get_providers(self) -> list[str]:
            return [CPU]

    monkeypatch.setattr(ort, "InferenceSession", CpuOnly)
    with caplog.at_level("WARNING", logger="agegender.sessions"):
        sessions.create(b"graph", providers=["cuda"])
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith("execution provider cuda did not start; running on cpu (")
    assert "LD_LIBRARY_PATH" in message and "onnxruntime.preload_dlls()" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "cpuinfo, level",
    [
        ("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni amx_tile\n", "avx512-vnni"),
        ("flags\t\t: fpu sse2 avx2 avx512bw avx512_vnni amx_int8\n", "amx"),
        ("flags\t\t: fpu sse2 avx avx2 fma\nbugs\t\t: spectre\n", "avx2"),
        ("flags\t\t: fpu sse2 avx2 avx_vnni\n", "avx-vnni"),
        ("Features\t: fp asimd evtstrm asimddp sve\n", "dotprod"),
        ("Features\t: fp asimd asimddp i8mm\n", "i8mm"),
        ("flags\t\t: fpu sse2\n", None),
        ("", None),
    ],
)
def test_the_kind_of_cpu_is_its_best_integer_kernel_feature(
    cpuinfo: str, level: str | None
) -> None:
    import platform

    from agegender.sessions import cpu_kind

    machine = platform.machine().lower()
    assert cpu_kind(cpuinfo) == (f"{machine} {level}" if level else machine)
    assert cpu_kind().startswith(machine)  # this machine's, read from /proc/cpuinfo
