"""The ``agegender`` command as a process: what parsing costs, and a reader that goes away.

``--version`` and ``--help`` must not load the heavy libraries (checked by the modules
loaded, not by a time limit, which would depend on the machine). When stdout's reader
exits early (``agegender predict ... | head -c 1``) the command ends quietly, as Unix
tools do: nothing on stderr, exit status 141.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faceutils import ASTRONAUT

import agegender

SRC = Path(agegender.__file__).resolve().parent.parent
HEAVY = ("onnxruntime", "onnx", "dlib", "cv2", "numpy", "PIL", "scipy", "matplotlib")
FORMATS = {"json": ["--json"], "jsonl": ["--jsonl"], "csv": ["--csv"], "table": []}


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["AGEGENDER_HOME"] = str(tmp_path / "home")  # nothing written outside the test
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_parsing_imports_no_heavy_library(option: str, tmp_path: Path) -> None:
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['agegender', {option!r}]\n"
        "try:\n"
        "    runpy.run_module('agegender', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n' + '\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert done.stdout.startswith("agegender 0.1.0" if option == "--version" else "usage:")
    loaded = set(done.stderr.split())
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"agegender {option} imports {', '.join(heavy)}"


def test_public_names_resolve_lazily() -> None:
    assert set(agegender.__all__) == set(agegender._EXPORTS)
    for name in agegender.__all__:
        assert getattr(agegender, name).__name__ == name
    assert set(agegender.__all__) <= set(dir(agegender))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = agegender.nothing_here  # type: ignore[attr-defined]


def _copies(tmp_path: Path, n: int = 4) -> list[str]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(str(shutil.copyfile(ASTRONAUT, folder / f"astronaut-{i}.png")))
    return paths


def _predict(fmt: str, files: list[str]) -> list[str]:
    command = [sys.executable, "-m", "agegender", "predict", *FORMATS[fmt], "--no-progress"]
    return [*command, "--detector", "none", *files]


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_into_head_ends_quietly(fmt: str, tmp_path: Path) -> None:
    """``agegender predict ... | head -c 1``: head takes one byte and exits."""
    agegender_process = subprocess.Popen(
        _predict(fmt, _copies(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
    )
    assert agegender_process.stdout is not None
    head = subprocess.run(
        ["head", "-c", "1"], stdin=agegender_process.stdout, capture_output=True, check=False
    )
    agegender_process.stdout.close()  # only head holds the read end now
    _, err = agegender_process.communicate(timeout=300)
    assert err.decode() == ""
    assert len(head.stdout) == 1
    assert agegender_process.returncode in (0, 141)  # 0: all written before head exited


def _closed_pipe_run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `command` with stdout a pipe whose reader has already gone (head exited)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            command,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(tmp_path),
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_to_a_reader_gone_is_quiet_and_141(fmt: str, tmp_path: Path) -> None:
    done = _closed_pipe_run(_predict(fmt, _copies(tmp_path)), tmp_path)
    assert done.stderr == ""
    assert done.returncode == 141


@pytest.mark.parametrize(
    "args", [["models", "list", "--json"], ["models", "list"], ["--help"], ["--version"]]
)
def test_other_output_to_a_reader_gone_is_quiet(args: list[str], tmp_path: Path) -> None:
    done = _closed_pipe_run([sys.executable, "-m", "agegender", *args], tmp_path)
    assert done.stderr == ""
    # argparse itself drops a failed write of --help/--version and exits 0
    assert done.returncode in ((0, 141) if args[0].startswith("--") else (141,))


def test_evaluate_json_to_a_reader_gone_is_quiet(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(ASTRONAUT, folder / "astronaut.png")
    (folder / "labels.csv").write_text("path,age,gender\nastronaut.png,45,female\n")
    command = [sys.executable, "-m", "agegender", "evaluate", str(folder / "labels.csv")]
    command += ["--format", "csv", "--cropped", "--json", "--no-progress"]
    done = _closed_pipe_run(command, tmp_path)
    assert done.stderr == ""
    assert done.returncode == 141


def test_models_list_json_still_whole_when_read(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agegender", "models", "list", "--json"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert isinstance(json.loads(done.stdout), list)


def test_our_warnings_survive_a_library_raising_the_root_level(caplog, tmp_path) -> None:
    # Ray (batch --engine ray) sets the root logger to ERROR when it starts; the project's
    # own warnings (an unverified model file, ...) must still reach stderr afterwards.
    import logging

    from agegender.cli import main

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    try:
        assert main(["models", "list"]) == 0
        logging.getLogger("agegender.store.files").warning("still shown")
    finally:
        root.setLevel(before)
    assert any(r.getMessage() == "still shown" for r in caplog.records)


def test_a_command_line_too_long_for_onnxruntime_still_runs(tmp_path: Path) -> None:
    """ONNX Runtime 1.30 segfaults while imported when the process's command line passes
    ~40 KB (600 image paths did): the command re-executes itself with its arguments in a
    file, which is removed; every input gets its result or its one-line error."""
    from agegender.cli import ARGV_LIMIT

    missing = [str(tmp_path / ("d" * 100) / f"x{i}.jpg") for i in range(450)]
    argv = ["predict", str(ASTRONAUT), *missing, "--detector", "dlib", "--jsonl", "--no-progress"]
    assert sum(len(a) + 1 for a in argv) > max(ARGV_LIMIT, 45_000)
    env = _env(tmp_path)
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "agegender", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-500:]  # some inputs failed, none crashed
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows[0]["path"] == str(ASTRONAUT) and len(rows[0]["faces"]) == 1
    assert len(rows) == 451 and all(r.get("error") for r in rows[1:])
    assert done.stderr.count("\n") == 450 and "no such file" in done.stderr
    assert not list((tmp_path / "tmp").glob("agegender-args-*"))  # the arguments file is gone
