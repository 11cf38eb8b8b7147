"""`agegender predict`: defects found by a second audit, each reproduced first.

A head whose graph gives no distribution (NaN in the JSON, exit 0), ONNX Runtime's
warnings before a wrong graph's error, a full disk on stdout (a traceback), --threads and
--upsample without a bound, annotated copies of long names, the --annotate folder a
failed run left, line breaks in names in error lines and the table, 32-bit TIFFs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from support.standins import card_graph

from agegender.cli import main

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
SRC = Path(__file__).resolve().parents[1] / "src"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = main(["predict", *args])
    except SystemExit as done:
        status = int(done.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_a_head_giving_no_distribution_is_an_error_not_nan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    logits = tmp_path / "logits.onnx"  # raw scores where the card says probabilities
    onnx.save_model(card_graph(input_shape=[1, 3, 64, 64], width=81, softmax=False), logits)
    status, out, err = run(
        capsys, "--jsonl", "--detector", "none", str(ASTRONAUT), f"--age-model=cc0-age-v1={logits}"
    )
    assert status == 1, err

    def no_nan(name: str) -> None:
        pytest.fail(f"{name} in the JSON output")

    for line in out.splitlines():  # strict JSON: NaN is not JSON
        record = json.loads(line, parse_constant=no_nan)
        assert "not a probability distribution" in record["error"]
    assert "RuntimeWarning" not in err and "[W:onnxruntime" not in err


def test_a_wrong_graph_is_one_line_without_onnx_runtimes_warnings(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """capfd: ONNX Runtime writes its warnings to the file descriptor, not sys.stderr."""
    wrong = tmp_path / "wrong.onnx"  # another model's graph: the wrong width, and a weight
    model = card_graph(input_shape=[1, 3, 32, 32], width=7)  # no node uses (ORT warns)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    onnx.save_model(model, wrong)
    status, _, err = run(capfd, str(ASTRONAUT), f"--age-model=cc0-age-v1={wrong}")
    assert status == 2 and err.count("\n") == 1, err


def test_a_full_stdout_is_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "agegender", "predict", "--detector", "none", str(ASTRONAUT)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            check=False,
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert (
        done.stderr.strip() == "agegender: error: cannot write the output (No space left on device)"
    )


@pytest.mark.parametrize(
    "options", [["--threads", "20000"], ["--detector", "dlib", "--upsample", "5"]]
)
def test_threads_and_upsample_have_a_bound(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, str(ASTRONAUT), *options)
    assert status == 2 and "must be in [" in err, err


def test_a_long_name_gets_its_annotated_copy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    long = tmp_path / "in" / ("x" * 250 + ".png")
    long.parent.mkdir()
    long.write_bytes(ASTRONAUT.read_bytes())
    out = tmp_path / "ann"
    for _ in range(2):  # the second run's copy needs a "-1" too
        status, _, err = run(capsys, "--detector", "none", str(long), "--annotate", str(out))
        assert status == 0, err
    names = sorted(os.listdir(out), key=len)
    assert len(names) == 2 and all(len(os.fsencode(n)) <= 255 for n in names)


def test_a_failed_run_leaves_no_annotate_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "nd" / "x" / "y"
    status, _, err = run(capsys, str(ASTRONAUT), "--preset", "levi", "--annotate", str(target))
    assert status == 2 and "not installed" in err, err
    assert os.listdir(tmp_path) == []


def test_line_breaks_in_names_keep_each_line_whole(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "emp\nty"
    empty.mkdir()
    image = tmp_path / "new\nline.png"
    image.write_bytes(ASTRONAUT.read_bytes())
    status, out, err = run(capsys, "--detector", "none", str(empty), str(image))
    assert status == 1
    assert err.count("\n") == 1 and "emp\\nty" in err, err
    assert out.count("\n") == 1 and "new\\nline.png" in out, out


def test_a_32_bit_tiff_beyond_16_bits_is_scaled_by_its_range(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gray = np.asarray(Image.open(ASTRONAUT).convert("L"), dtype=np.int64) * 2_000_000 // 255
    path = tmp_path / "i32.tif"
    Image.fromarray(gray.astype(np.int32), "I").save(path)
    status, out, err = run(capsys, "--jsonl", "--detector", "dlib", "--upsample", "0", str(path))
    assert status == 0 and json.loads(out)["faces"], err  # it went white: no face


def test_annotate_keeps_few_decoded_images_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--annotate keeps each image decoded until it is drawn; it had kept two chunks of
    16 (4.6 GB of 7,071 x 7,071 photos). Counted by the kept arrays' finalizers."""
    import weakref

    from agegender.pipeline import Estimator

    folder = tmp_path / "in"
    folder.mkdir()
    small = Image.open(ASTRONAUT).convert("RGB").resize((96, 96))
    for i in range(40):
        small.save(folder / f"{i:02d}.png")
    alive = {"now": 0, "most": 0}

    def gone() -> None:
        alive["now"] -= 1

    real = Estimator._load_and_prepare

    def counting(self, source, channels, keep_image):  # type: ignore[no-untyped-def]
        out = real(self, source, channels, keep_image)
        image = getattr(out[1], "image", None)
        if image is not None:
            alive["now"] += 1
            alive["most"] = max(alive["most"], alive["now"])
            weakref.finalize(image, gone)
        return out

    monkeypatch.setattr(Estimator, "_load_and_prepare", counting)
    status, _, err = run(
        capsys, "--detector", "none", str(folder), "--annotate", str(tmp_path / "a")
    )
    assert status == 0, err
    assert len(os.listdir(tmp_path / "a")) == 40
    # two chunks of one per worker (at most 4 workers) and the one being drawn
    assert 0 < alive["most"] <= 2 * 4 + 1
