"""What a batch manifest pins, found by an audit of resumes across configurations: the
detector's model file (an INT8 copy built here, a card's own file, an unverified import:
the card alone does not fix its bytes), the execution providers that actually run (one
that did not start leaves the CPU), and not the options that only change how fast rows
come (ONNX Runtime threads, faces per model run) nor how the CPU is spelled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from faceutils import ASTRONAUT
from PIL import Image
from support.standins import CENTERFACE_CARD, centerface_graph

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

from agegender import cards, cli
from agegender.batch import dataset
from agegender.cards import load_card_file


def batch(*args: str) -> int:
    return cli.main(["batch", "--no-progress", *args])


def manifest_of(out: str) -> dict[str, Any]:
    return json.loads((Path(out) / dataset.MANIFEST).read_text())


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for n, size in enumerate((256, 224)):
        path = folder / f"face{n}.jpg"
        Image.open(ASTRONAUT).convert("RGB").resize((size, size)).save(path)
        paths.append(str(path))
    return paths


def _standin_centerface(folder: Path, monkeypatch: pytest.MonkeyPatch, log_scale: float) -> Path:
    """The CenterFace stand-in (heatmap = a cell's brightness) as the built-in card, its
    boxes exp(log_scale) cells wide; returns the graph's file."""
    folder.mkdir(exist_ok=True)
    graph = folder / "centerface.onnx"
    onnx.save_model(centerface_graph(log_scale=log_scale), str(graph))
    card = folder / "centerface.toml"
    card.write_text(CENTERFACE_CARD.format(max_side=960))
    real = cards.get_card
    monkeypatch.setattr(
        cards, "get_card", lambda ref: load_card_file(card) if ref == "centerface" else real(ref)
    )
    return graph


def _bright_square(path: Path, corner: int) -> str:
    image = np.zeros((256, 256, 3), np.uint8)
    image[corner : corner + 8, corner : corner + 8] = 220  # 2 x 2 cells above 0.5
    Image.fromarray(image).save(path)
    return str(path)


def test_resume_with_another_detector_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _standin_centerface(tmp_path / "cards", monkeypatch, log_scale=float(np.log(8)))
    one = _bright_square(tmp_path / "one.png", 96)
    two = _bright_square(tmp_path / "two.png", 128)
    out = str(tmp_path / "out")
    assert batch(one, "--out", out, "--detector", "centerface") == 0
    first = [r for r in dataset.iter_rows(out) if r["face"] is not None]
    assert len(first) == 1
    width = first[0]["box_x2"] - first[0]["box_x1"]
    capsys.readouterr()
    # the same card, another file: its boxes are half again as wide (a rebuilt INT8 copy,
    # an imported file, a card's own file replaced)
    onnx.save_model(centerface_graph(log_scale=float(np.log(12))), str(graph))
    assert batch(one, two, "--out", out, "--detector", "centerface") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another configuration (models" in err[0], err
    # what a resume would have mixed: the same picture's face is another size now
    fresh = str(tmp_path / "fresh")
    assert batch(one, "--out", fresh, "--detector", "centerface") == 0
    again = [r for r in dataset.iter_rows(fresh) if r["face"] is not None]
    assert abs((again[0]["box_x2"] - again[0]["box_x1"]) - width) > 10
    assert [r["path"] for r in dataset.iter_rows(out)] == [one]  # nothing was added
    models = manifest_of(out)["models"]
    assert [m["role"] for m in models][-1] == "detector", models
    # the rows' model column names the heads' files only, as before
    assert "centerface" not in first[0]["model_sha256"]


def test_resume_with_other_threads_batch_size_or_the_cpu_named_goes_on(
    images: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    assert batch(images[0], "--out", out) == 0
    capsys.readouterr()
    # a resume tuned for another machine: the rows hold the same values (float noise)
    assert (
        batch(
            *images,
            "--out",
            out,
            "--threads",
            "1",
            "--batch-size",
            "3",
            "--providers",
            "CPUExecutionProvider",
        )
        == 0
    ), capsys.readouterr().err
    assert sorted(r["path"] for r in dataset.iter_rows(out)) == sorted(images)
    config = manifest_of(out)["config"]
    assert config["providers"] == ["cpu"]
    assert not {"threads", "batch_size", "workers"} & set(config)
    # a manifest written before (execution options recorded, providers as typed) resumes
    path = Path(out) / dataset.MANIFEST
    old = json.loads(path.read_text())
    old["config"].update(threads=None, batch_size=32, workers=None, providers=[])
    path.write_text(json.dumps(old))
    assert batch(*images, "--out", out) == 0, capsys.readouterr().err


@pytest.mark.skipif(
    "AzureExecutionProvider" not in ort.get_available_providers(),
    reason="needs ONNX Runtime's Azure provider (in the CPU wheel) as a stand-in accelerator",
)
def test_resume_where_a_provider_did_not_start_is_refused(
    images: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(tmp_path / "out")
    assert batch(images[0], "--out", out, "--providers", "azure") == 0
    capsys.readouterr()
    # the same command where the provider does not start (a CUDA build without its
    # libraries): every session runs on the CPU, and the rows are the CPU's
    real = ort.InferenceSession.get_providers
    monkeypatch.setattr(
        ort.InferenceSession,
        "get_providers",
        lambda self: [p for p in real(self) if p != "AzureExecutionProvider"],
    )
    assert batch(*images, "--out", out, "--providers", "azure") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "another configuration (config providers" in err[-1], err
    assert [r["path"] for r in dataset.iter_rows(out)] == [images[0]]
    assert manifest_of(out)["config"]["providers"] == ["azure", "cpu"]


def test_resume_with_the_same_files_given_by_another_path_goes_on(
    images: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A --calibration file and a CARD=FILE model pinned by content: given by a relative
    path from another folder, or moved, they are the same configuration (their paths in
    the manifest refused the resume); an edited one is still refused."""
    import agegender
    from agegender import store

    package = Path(agegender.__file__).parent / "calibrations" / "default.toml"
    first = tmp_path / "a"
    first.mkdir()
    (first / "cal.toml").write_text(package.read_text())
    model = store.resolve(cards.get_card("cc0-age-v1"))
    (first / "age.onnx").write_bytes(model.read_bytes())
    out = str(tmp_path / "out")
    options = ("--calibration", "cal.toml", "--age-model", "cc0-age-v1=age.onnx")
    monkeypatch.chdir(first)
    assert batch(images[0], "--out", out, *options) == 0
    capsys.readouterr()
    moved = tmp_path / "b" / "c"
    moved.parent.mkdir()
    first.rename(moved)
    monkeypatch.chdir(moved.parent)
    options = ("--calibration", "c/cal.toml", "--age-model", "cc0-age-v1=c/age.onnx")
    assert batch(*images, "--out", out, *options) == 0, capsys.readouterr().err
    assert sorted(r["path"] for r in dataset.iter_rows(out)) == sorted(images)
    config = manifest_of(out)["config"]
    assert config["calibration"] == "file" and config["age_models"] == ["cc0-age-v1"]
    (moved / "cal.toml").write_text(
        package.read_text().replace("[age]\ntemperature = ", "[age]\ntemperature = 3")
    )
    assert batch(*images, "--out", out, *options) == 2
    assert "files_sha256 calibration" in capsys.readouterr().err
