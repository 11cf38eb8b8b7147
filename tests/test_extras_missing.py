"""A command whose extra is not installed (audit): one line naming the extra that brings
it, exit 2, no traceback and nothing written. Missing modules are simulated in this
process (sys.modules, builtins.__import__), nothing is uninstalled."""

from __future__ import annotations

import builtins
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from faceutils import ASTRONAUT, run_cli

RAY_LINE = "pip install 'agegender[ray]'"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch: "0" binds to 127.0.0.1


def test_engine_ray_without_pyarrow_names_the_ray_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`batch --engine ray` without pyarrow advised 'agegender[batch]', which brings no
    Ray: the next run failed again, on Ray. The [ray] extra brings both."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    out = tmp_path / "out"
    status, _, err = run_cli(
        capsys, "batch", str(ASTRONAUT), "--out", str(out), "--engine", "ray", "--no-progress"
    )
    assert status == 2
    assert err == f"agegender: error: agegender batch needs pyarrow: {RAY_LINE}\n"
    assert not out.exists()


def test_engine_ray_with_ray_but_not_ray_data_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A plain `pip install ray` (no [data]: no pandas) passed the `import ray` check, then
    `import ray.data` failed inside the job with a traceback (exit 1), after the models
    were loaded and DEST was made."""
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))  # Ray core is here
    monkeypatch.setitem(sys.modules, "ray.data", None)  # Ray Data cannot be imported
    out = tmp_path / "out"
    status, _, err = run_cli(
        capsys, "batch", str(ASTRONAUT), "--out", str(out), "--engine", "ray", "--no-progress"
    )
    assert status == 2
    assert err == (
        f"agegender: error: --engine ray needs Ray Data (ray.data is missing): {RAY_LINE}\n"
    )
    assert not out.exists()


def test_engine_ray_sets_the_loopback_switch_before_ray_is_imported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported. The command
    imported ray (its extra check) before the engine set the switch, so a Ray the job
    started bound to the machine's network address instead of 127.0.0.1."""
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    monkeypatch.setenv(LOOPBACK_ENV, "1")  # undone after the test, whatever it was
    monkeypatch.delenv(LOOPBACK_ENV)
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # not imported yet
    seen: list[str | None] = []
    real_import = builtins.__import__

    def ray_import(name: str, *args: Any, **kwargs: Any) -> Any:
        level = args[3] if len(args) > 3 else kwargs.get("level", 0)
        if level == 0 and (name == "ray" or name.startswith("ray.")):
            seen.append(os.environ.get(LOOPBACK_ENV))  # what Ray would read now
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", ray_import)
    status, _, err = run_cli(
        capsys, "batch", str(ASTRONAUT), "--out", str(tmp_path / "o"), "--engine", "ray"
    )
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert seen and seen[0] == "0"
    assert status == 2
    assert err == f"agegender: error: --engine ray needs Ray Data (pandas is missing): {RAY_LINE}\n"
