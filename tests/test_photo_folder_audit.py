"""A photographer's folder as it really is: transparency keyed by one PNG colour, links
that lead nowhere, names with line breaks in batch's summary."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from faceutils import encode
from PIL import Image

from agegender import cli, images
from agegender.errors import ImageError

# -- transparency given as one colour (PNG tRNS), not as an alpha channel ---------------


def _cutout(mode: str) -> tuple[np.ndarray, bytes]:
    """A grey square on a keyed (transparent) black background, and its PNG."""
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[10:30, 10:30] = 120
    image = Image.fromarray(rgb).convert(mode)
    key: int | tuple[int, int, int] = 0 if mode == "L" else (0, 0, 0)
    data = encode(image, "PNG", transparency=key)
    with Image.open(io.BytesIO(data)) as check:  # Pillow keeps the key, no alpha channel
        assert check.mode == mode and check.info.get("transparency") == key
    return rgb, data


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_transparent_colour_is_composited_on_white_as_alpha_is(mode: str) -> None:
    rgb, data = _cutout(mode)
    decoded = images.load(data).rgb
    assert decoded[0, 0].tolist() == [255, 255, 255]  # was black: transparent -> white
    assert decoded[20, 20].tolist() == [120, 120, 120]  # opaque pixels unchanged
    # the same picture with an alpha channel decodes to the same pixels
    rgba = np.dstack([rgb, np.where(rgb[:, :, 0] > 0, 255, 0).astype(np.uint8)])
    with_alpha = images.load(encode(Image.fromarray(rgba, "RGBA"), "PNG")).rgb
    np.testing.assert_array_equal(decoded, with_alpha)


def test_pil_rgb_image_with_a_transparent_colour() -> None:
    _, data = _cutout("RGB")
    with Image.open(io.BytesIO(data)) as image:
        assert images.load(image).rgb[0, 0].tolist() == [255, 255, 255]


# -- links in a folder that lead nowhere ---------------------------------------------------


def _folder_with_broken_links(root: Path) -> Path:
    root.mkdir()
    Image.new("RGB", (64, 48), (90, 100, 110)).save(root / "plain.png")
    (root / "gone.jpg").symlink_to(root / "unmounted" / "IMG_0001.jpg")  # dangling
    (root / "loop.jpg").symlink_to(root / "loop.jpg")  # a loop
    (root / "notes.txt").symlink_to(root / "nowhere.txt")  # not an image's suffix
    return root


def test_folder_walk_keeps_links_that_lead_nowhere(tmp_path: Path) -> None:
    root = _folder_with_broken_links(tmp_path / "photos")
    found = images.expand_inputs([str(root)])
    assert found == [str(root / "gone.jpg"), str(root / "loop.jpg"), str(root / "plain.png")]
    with pytest.raises(ImageError, match=r"gone\.jpg: no such file"):
        images.load(root / "gone.jpg")
    with pytest.raises(ImageError, match=r"loop\.jpg: cannot read"):
        images.load(root / "loop.jpg")


def test_predict_reports_broken_links_in_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder_with_broken_links(tmp_path / "photos")
    status = cli.main(["predict", str(root), "--jsonl"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines == [
        f"agegender: error: {root / 'gone.jpg'}: no such file",
        f"agegender: error: {root / 'loop.jpg'}: cannot read (Too many levels of symbolic links)",
    ]
    assert status == 1  # an input failed
    paths = [line.split('"')[3] for line in out.strip().splitlines()]
    assert paths == [str(root / n) for n in ("gone.jpg", "loop.jpg", "plain.png")]


def test_batch_walk_keeps_links_that_lead_nowhere(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    from agegender.batch import sources

    root = _folder_with_broken_links(tmp_path / "photos")
    inputs = list(sources.iter_inputs([str(root)]))
    assert [i.path for i in inputs] == [
        str(root / n) for n in ("gone.jpg", "loop.jpg", "plain.png")
    ]
    assert [i.path for i in inputs] == images.expand_inputs([str(root)])  # predict's rule


def test_batch_rows_of_links_that_lead_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    from agegender.batch import dataset

    root = _folder_with_broken_links(tmp_path / "photos")
    out = tmp_path / "out"
    status = cli.main(["batch", "--no-progress", str(root), "--out", str(out)])
    capsys.readouterr()
    assert status == 1
    errors = {str(r["path"]): r["error"] for r in dataset.iter_rows(str(out))}
    assert errors[str(root / "gone.jpg")].endswith("gone.jpg: no such file")
    assert "loop.jpg: cannot read (" in errors[str(root / "loop.jpg")]
    assert errors[str(root / "plain.png")] is None


# -- batch's summary of failures: a name with a line break ---------------------------------


def test_batch_summary_reason_of_a_name_with_a_line_break() -> None:
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    from agegender.batch.job import reason

    path = "shoot/bad\nname.jpg"
    assert reason(path, "shoot/bad\\nname.jpg: empty file") == "empty file"
    assert reason(path, "shoot/bad\\nname.jpg: not an image (unrecognised format)") == (
        "not an image"
    )
    assert reason("a (1).jpg", "a (1).jpg: truncated image data (x)") == "truncated image data"


def test_batch_summary_names_the_reasons_not_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    root = tmp_path / "shoot"
    root.mkdir()
    (root / "bad\nname.jpg").write_bytes(b"")
    (root / "other\nname.png").write_bytes(b"")
    status = cli.main(
        ["batch", "--no-progress", str(root), "--out", str(tmp_path / "out"), "--format", "jsonl"]
    )
    err = capsys.readouterr().err
    assert status == 1
    summary = [line for line in err.splitlines() if line.startswith("agegender: batch:")]
    assert len(summary) == 1 and "2 failed (empty file: 2)" in summary[0], err
