"""Every place a command writes a file: defects found by an audit of the output paths,
each reproduced first.

calibrate --out through a link that leads nowhere (refused only after the whole fit) and
--out --force over an input card TOML (replaced), evaluate --report over an input given
through a link of another name (replaced), video --thumbs through a link that leads
nowhere or in a folder that takes no new folder (refused after the models loaded), an
output path holding a line break (an error of two lines), an annotated image whose write
failed part way (a truncated image left under its name), batch globs that read predict's
annotated copies as inputs, video --annotate names that FFmpeg read as an option or a
protocol (no video written), a video file named like a protocol (not read), and an output
name too long for the file system (a traceback, or an error after the models loaded),
and the empty --annotate folders a run whose every input failed left behind."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faceutils import run_cli
from numpy.typing import NDArray
from PIL import Image

from agegender import outputs

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
CARDS = Path(__file__).parent.parent / "src" / "agegender" / "model_cards"


def test_calibrate_out_a_link_that_leads_nowhere_is_refused_before_the_fit(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cal.toml"
    out.symlink_to(tmp_path / "nowhere" / "cal.toml")
    missing = tmp_path / "no-such-labels.csv"  # read first, it would be the error instead
    code, _, err = run_cli(
        capsys, "calibrate", str(missing), "--format", "csv", "--cropped", "--out", str(out)
    )
    assert code == 2 and f"--out {out}: exists" in err and "no such" not in err, err


def test_calibrate_out_force_never_replaces_an_input_card(tmp_path: Path, capsys) -> None:
    card = tmp_path / "card.toml"
    text = (CARDS / "cc0-age-v1.toml").read_text(encoding="utf-8")
    card.write_text(text.replace('id = "cc0-age-v1"', 'id = "my-age"', 1), encoding="utf-8")
    before = card.read_bytes()
    missing = tmp_path / "no-such-labels.csv"
    for ref in (str(card), f"my-age={tmp_path / '.' / 'card.toml'}"):
        code, _, err = run_cli(
            capsys,
            *("calibrate", str(missing), "--format", "csv", "--cropped"),
            *("--age-model", ref, "--out", str(card), "--force"),
        )
        assert code == 2 and "is an input" in err and "Traceback" not in err, err
    assert card.read_bytes() == before


def test_evaluate_report_never_replaces_an_input_linked_under_another_name(
    tmp_path: Path, capsys
) -> None:
    face = tmp_path / "img" / "face.png"
    face.parent.mkdir()
    Image.open(ASTRONAUT).convert("RGB").crop((150, 50, 300, 200)).save(face)
    report = tmp_path / "rep"  # as an earlier evaluate left it
    report.mkdir()
    (report / ".agegender-report").write_text(
        json.dumps({"written_by": "agegender evaluate", "files": ["predictions.csv"]})
    )
    labels = report / "predictions.csv"
    labels.write_text(f"path,age,gender\n{face},30,f\n")
    before = labels.read_bytes()
    link = tmp_path / "labels.csv"  # the labels the user gives, a link into the report
    link.symlink_to(labels)
    code, _, err = run_cli(
        capsys,
        *("evaluate", str(link), "--format", "csv", "--cropped", "--no-progress"),
        *("--threads", "1", "--report", str(report)),
    )
    assert code == 2 and "predictions.csv there is an input" in err, err
    assert labels.read_bytes() == before


def test_video_thumbs_a_link_that_leads_nowhere_is_refused_before_the_work(
    tmp_path: Path, capsys
) -> None:
    thumbs = tmp_path / "thumbs"
    thumbs.symlink_to(tmp_path / "nowhere")
    missing = tmp_path / "no-such.mp4"  # read first, it would be the error instead
    code, _, err = run_cli(
        capsys,
        *("video", str(missing), "--tracks", str(tmp_path / "t.jsonl")),
        *("--thumbs", str(thumbs)),
    )
    assert code == 2 and f"--thumbs {thumbs}: exists and is not a folder" in err, err
    assert not (tmp_path / "t.jsonl").exists()


def test_video_thumbs_in_a_folder_that_takes_no_new_folder_is_refused_before_the_work(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"  # a read-only folder (as root, chmod cannot make one)
    locked.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    thumbs = locked / "thumbs"
    missing = tmp_path / "no-such.mp4"  # read first, it would be the error instead
    code, _, err = run_cli(
        capsys,
        *("video", str(missing), "--tracks", str(tmp_path / "t.jsonl")),
        *("--thumbs", str(thumbs)),
    )
    assert code == 2 and f"--thumbs {thumbs}: the folder {locked} is not writable" in err, err


@pytest.mark.parametrize(
    "command",
    [
        ["calibrate", "{dataset}", "--format", "csv", "--cropped", "--out", "{out}"],
        ["evaluate", "{dataset}", "--format", "csv", "--cropped", "--report", "{out}"],
        ["video", "{dataset}", "--tracks", "{out}"],
        ["predict", "{dataset}", "--annotate", "{out}"],
    ],
    ids=lambda c: c[0],
)
def test_an_output_path_with_a_line_break_is_one_error_line(
    command: list[str], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "a\nb.toml"
    out.write_text("the user's\n")
    dataset = str(tmp_path / "no-such.csv")
    args = [a.format(dataset=dataset, out=out) for a in command]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "a\\nb.toml" in err, err
    assert out.read_text() == "the user's\n"


@pytest.mark.parametrize(
    "command",
    [
        ["calibrate", "{dataset}", "--format", "csv", "--cropped", "--out", "{out}.toml"],
        ["evaluate", "{dataset}", "--format", "csv", "--cropped", "--report", "{out}"],
        ["predict", "{image}", "--annotate", "{out}"],
        ["batch", "{image}", "--out", "{out}"],
    ],
    ids=lambda c: c[0],
)
def test_an_output_name_too_long_is_one_error_line_before_any_model_loads(
    command: list[str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agegender import pipeline

    def no_models(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the models loaded before the output path was checked")

    monkeypatch.setattr(pipeline.Estimator, "__init__", no_models)
    out = tmp_path / ("a" * 300)  # a traceback (calibrate, evaluate, predict), or batch's
    image = tmp_path / "no-such.png"  # error once its models had loaded
    values = {"dataset": tmp_path / "no-such.csv", "image": image, "out": out}
    code, _, err = run_cli(capsys, *(a.format(**values) for a in command))
    assert code == 2 and err.count("\n") == 1 and "too long" in err, err
    assert err.startswith("agegender: error: ") and "no such" not in err, err


def test_a_run_whose_every_input_failed_leaves_no_annotate_folder(tmp_path: Path, capsys) -> None:
    made = tmp_path / "new" / "annotated"  # both folders made by the run
    code, _, err = run_cli(
        capsys, "predict", str(tmp_path / "no-such.png"), "--annotate", str(made), "--no-tta"
    )
    assert code == 1 and "no-such.png: no such file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # as the README says


def test_an_annotated_image_whose_write_fails_leaves_no_truncated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, astronaut_rgb: NDArray[np.uint8]
) -> None:
    real_open = Path.open

    class DiskFull:
        """A file that takes half of what is written, then fails as a full disk does."""

        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> DiskFull:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def close(self) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, mode, *args, **kwargs)
        return DiskFull(handle) if mode == "xb" else handle

    monkeypatch.setattr(Path, "open", full_open)
    path = tmp_path / "ann" / "astronaut.png"
    with pytest.raises(OSError, match="No space"):
        outputs.save_rgb(path, np.asarray(astronaut_rgb))
    assert not path.exists()  # the next run would keep it and write astronaut-1.png


def test_batch_globs_skip_folders_agegender_marked_as_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agegender.batch import sources

    for name in ("photos/a.jpg", "photos/sub/b.jpg", "photos/annotated/a.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"jpeg")
    # as `predict photos --annotate photos/annotated` leaves it
    (tmp_path / "photos" / "annotated" / ".agegender-output").touch()
    monkeypatch.chdir(tmp_path)

    def paths(*items: str) -> list[str]:
        return [i.path for i in sources.iter_inputs(list(items), stat=False)]

    # a folder walk skips the annotated copies; a glob over the same folder does too
    assert paths("photos") == ["photos/a.jpg", "photos/sub/b.jpg"]
    assert paths("photos/**/*.jpg") == ["photos/a.jpg", "photos/sub/b.jpg"]
    assert paths(str(tmp_path / "photos" / "**" / "*.jpg")) == [
        str(tmp_path / "photos" / p) for p in ("a.jpg", "sub/b.jpg")
    ]
    assert paths("photos/*") == ["photos/a.jpg", "photos/sub/b.jpg"]  # sub walked
    # a glob inside the marked folder names it, as a folder named on the command line
    assert paths("photos/annotated/*.jpg") == ["photos/annotated/a.jpg"]


@pytest.mark.parametrize("h264", [True, False], ids=["ffmpeg", "opencv"])
@pytest.mark.parametrize("name", ["-annotated.mp4", "cam:1.mp4"])
def test_video_annotate_names_ffmpeg_would_read_as_an_option_or_a_protocol(
    name: str, h264: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    from agegender import video_writer

    if h264:
        pytest.importorskip(
            "imageio_ffmpeg", reason="agegender[video] (imageio-ffmpeg) is not installed"
        )
    else:  # OpenCV's writer (its FFmpeg), as without the video extra
        monkeypatch.setattr(video_writer, "ffmpeg_exe", lambda: None)
    monkeypatch.chdir(tmp_path)  # as `video clip.mp4 --annotate=-annotated.mp4` gives it
    writer = video_writer.open_writer(Path(name), 10, (160, 120))
    assert isinstance(writer, video_writer.FfmpegWriter) == h264
    for _ in range(3):  # ffmpeg had stopped: "Option not found", "Protocol not found"
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    capture = cv2.VideoCapture(str(tmp_path / name))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()


def test_a_video_file_named_like_a_protocol_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    from agegender import video

    monkeypatch.chdir(tmp_path)
    writer = cv2.VideoWriter(
        str(tmp_path / "cam:1.avi"), cv2.VideoWriter.fourcc(*"MJPG"), 10, (160, 120)
    )
    for _ in range(3):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    # 'cam:1.avi' as given on the command line: FFmpeg read it as the protocol 'cam'
    frames = list(video.frames("cam:1.avi", step=0))
    assert [f.error for f in frames] == [None] * 3, frames


_KILLED_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
import numpy as np
from agegender import outputs

real_open = Path.open

class Dying:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 half way through the image

def dying_open(self, mode="r", *args, **kwargs):
    handle = real_open(self, mode, *args, **kwargs)
    return Dying(handle) if "x" in mode else handle

Path.open = dying_open
rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
outputs.save_rgb(Path(sys.argv[1]) / "photo.png", rgb)
"""


def test_a_process_killed_while_writing_an_image_leaves_no_truncated_image(
    tmp_path: Path,
) -> None:
    """kill -9 (or the OOM killer) while an annotated copy or a thumbnail was being written
    left a truncated image under its name, which a viewer or the next run took for a
    result. The bytes now go to a hidden file linked to the name when whole."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_WRITING, str(tmp_path)], capture_output=True
    )
    assert done.returncode == -9, done.stderr.decode()
    assert not (tmp_path / "photo.png").exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".photo.png.partial-")  # hidden: skipped


def test_an_image_written_whole_leaves_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    outputs.save_rgb(tmp_path / "a.png", rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgb)
    with pytest.raises(FileExistsError):  # never replaced
        outputs.save_rgb(tmp_path / "a.png", rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    # a file system without hard links: the name itself is written

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    outputs.save_rgb(tmp_path / "b.png", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
