"""Execution providers: their resolution, the one-line error, and that every session the
Estimator opens (heads and the CenterFace detector) gets them, from Python and the CLI.

A second real provider is needed to see a choice reach a session: ONNX Runtime's CPU
wheels ship the Azure provider, which runs nothing itself (its nodes fall to the CPU);
where a build lacks it those tests are skipped. Unavailability is simulated by
narrowing ``onnxruntime.get_available_providers``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from faceutils import ASTRONAUT
from test_centerface import card_file, standin_graph  # noqa: F401 (fixture)

from agegender import Estimator, EstimatorConfig, cards, cli, sessions
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
