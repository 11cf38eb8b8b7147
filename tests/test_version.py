"""One version number: pyproject.toml reads it from ``agegender.__version__``."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import agegender
from agegender import cli

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "agegender.__version__"


def test_installed_metadata_and_cli_agree(capsys: pytest.CaptureFixture[str]) -> None:
    assert importlib.metadata.version("agegender") == agegender.__version__
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"agegender {agegender.__version__}"
