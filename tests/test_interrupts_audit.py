"""Ctrl-C and SIGTERM: what a stopped command leaves behind (interrupt audit).

- SIGTERM (``timeout``, ``docker stop``, a job scheduler) killed the process where it stood:
  no line, status -15, an evaluate report's temporary files left; now it unwinds as
  Ctrl-C does, with ``agegender: terminated`` and status 143.
- Ctrl-C while the commands' parsers load, or while a C extension loads (ONNX Runtime's
  ImportError "initialization failed" from the KeyboardInterrupt), was a traceback.
- ``evaluate --report DIR`` stopped while writing left DIR with some files of the new
  report beside the rest of the previous one.
- ``calibrate --out FILE --force`` wrote FILE in place: stopped part way, a truncated TOML
  under the name and the previous calibration gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faceutils import run_cli
from PIL import Image, ImageEnhance

from agegender import cli
from agegender.evaluate import report as report_module

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
TESTS = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = TESTS.parent / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _main(argv: list[str]) -> int | str:
    """cli.main's status; a KeyboardInterrupt it let through is a failure of the test, not
    the end of the test session."""
    try:
        return cli.main(argv)
    except KeyboardInterrupt:
        return "KeyboardInterrupt escaped"


def _terminate_when(process: subprocess.Popen, ready: Callable[[], bool]) -> str:
    """SIGTERM to `process` once `ready()` (polled; 600 s is a hang guard, not a speed
    limit) while it still runs; its stderr after it ended."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read() if process.stderr else ""
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    return str(err)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigterm_ends_predict_with_one_line_and_143_keeping_the_lines_out(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(300):  # links: one file on disk, 300 inputs
        os.link(ASTRONAUT, photos / f"p{i:03d}.png")
    out = tmp_path / "out.jsonl"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "agegender", "predict", str(photos), "--jsonl"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
    try:
        err = _terminate_when(process, lambda: len(_lines(out)) >= 2)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err
    assert err.strip() == "agegender: terminated"
    lines = _lines(out)
    assert 2 <= len(lines) < 300
    assert all(json.loads(line)["faces"] for line in lines)  # every line whole


def test_ctrl_c_while_the_commands_load_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert _main(["predict", "x.png"]) == 130
    assert capsys.readouterr().err == "agegender: interrupted\n"


def test_ctrl_c_while_a_native_module_loads_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.commands import predict

    def run(args: object) -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as error:  # what pybind11 makes of it
            raise ImportError("initialization failed") from error

    monkeypatch.setattr(predict, "run", run)
    assert _main(["predict", "x.png"]) == 130
    assert capsys.readouterr().err == "agegender: interrupted\n"
    # an ImportError of its own is still raised as it is
    monkeypatch.setattr(predict, "run", lambda args: __import__("no_such_module_here"))
    with pytest.raises(ImportError):
        cli.main(["predict", "x.png"])


def _faces(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    portrait = Image.open(ASTRONAUT).convert("RGB").crop((150, 50, 300, 200))
    paths = []
    for i in range(n):
        path = folder / f"f{i}.png"
        ImageEnhance.Brightness(portrait).enhance(0.6 + 0.1 * i).save(path)
        paths.append(path)
    return paths


def test_an_interrupted_report_leaves_the_previous_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = _faces(tmp_path / "img", 3)
    labels = tmp_path / "labels.csv"
    out = tmp_path / "rep"
    args = ["evaluate", str(labels), "--format", "csv", "--cropped", "--no-progress"]
    args += ["--threads", "1", "--report", str(out)]
    labels.write_text("path,age,gender\n" + "".join(f"{p},30,f\n" for p in faces))
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(before["report.json"])["settings"][0]["metrics"]["images"] == 3

    # The next report (other labels) is stopped while its last file is written.
    labels.write_text("path,age,gender\n" + "".join(f"{p},60,m\n" for p in faces[:2]))

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "write_predictions", stopped)
    code, _, err = run_cli(capsys, *args)
    assert code == 130 and err.strip().endswith("agegender: interrupted"), err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(after) == sorted(before)  # no temporary file left either
    changed = sorted(name for name in before if after[name] != before[name])
    assert changed in ([], [report_module.MANIFEST]), changed


CALIBRATE = """
import resource, sys
from test_calibration_roundtrip import _synthetic
from agegender.cli import main
from agegender.commands import calibrate as command
data = _synthetic(150, groups=False)
command._collect = lambda args, cli: (data, command._config(args, cli), "synthetic")
# Writes past 200 bytes fail (EFBIG), as a full disk or a kill part way through would stop them
resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.RLIM_INFINITY))
sys.exit(main(["calibrate", "labels.csv", "--format", "csv", "--cropped", *sys.argv[1:]]))
"""


def test_calibrate_out_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "cal.toml"
    previous = "# an earlier calibration\n" + "x = 1\n" * 100
    out.write_text(previous)
    done = subprocess.run(
        [sys.executable, "-c", CALIBRATE, "--out", str(out), "--force"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert out.read_text() == previous  # not a truncated TOML under the name
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"agegender: error: --out {out}: cannot write it"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.toml"]  # no temporary file


def test_sigterm_stops_a_ray_job_with_one_line_and_143(tmp_path: Path) -> None:
    """ray.init took SIGTERM: its core worker's native handler printed a stack dump and the
    job ended with status 15. Now the job unwinds (its Ray stopped, the lock released)."""
    pytest.importorskip("ray.data", reason="the ray extra is not installed")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        os.link(ASTRONAUT, photos / f"p{i:02d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "agegender", "batch", str(photos), "--out", str(out)]
    command += ["--engine", "ray", "--concurrency", "1", "--part-size", "1", "--no-progress"]
    command += ["--detector", "none"]
    env = {**_env(), "RAY_worker_niceness": "0"}
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    keys = out / "_agegender" / "keys"
    try:
        err = _terminate_when(process, lambda: keys.is_dir() and any(keys.glob("part-*.npy")))
    finally:
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(ProcessLookupError):  # Ray's processes of this session
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "agegender: terminated", err
    assert "SIGTERM received" not in err and "Traceback" not in err, err
    assert not list(out.rglob(".tmp-*"))
