"""agegender batch, crash-safety audit: states a kill -9 leaves that a re-run must take."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faceutils import ASTRONAUT
from PIL import Image

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

from agegender import cli
from agegender.batch import dataset


def batch(*args: str) -> int:
    return cli.main(["batch", "--no-progress", *args])


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "in" / "face.jpg"
    path.parent.mkdir()
    Image.open(ASTRONAUT).convert("RGB").resize((256, 256)).save(path)
    return str(path)


def test_kill_while_writing_the_manifest_then_same_pid_resumes(image: str, tmp_path: Path) -> None:
    """A job killed between the manifest's temporary write and its rename leaves
    _agegender/.tmp-<pid>-manifest.json; a re-run that gets the same pid (a restarted
    container, where the job's pid is the same every time) must still resume, and no
    temporary file may stay."""
    out = tmp_path / "out"
    meta = out / dataset.META
    for sub in (dataset.KEYS, dataset.ATTEMPTS):
        (out / sub).mkdir(parents=True)
    (meta / "lock").write_bytes(b"")
    leftover = meta / f"{dataset.TMP_PREFIX}{os.getpid()}-manifest.json"
    leftover.write_bytes(b'{"format": "agegender-batch/1", "half')
    assert batch(image, "--out", str(out)) == 0
    assert (out / dataset.MANIFEST).is_file()
    assert [p.name for p in out.rglob(f"{dataset.TMP_PREFIX}*")] == []
    assert len(list(dataset.iter_rows(str(out)))) == 1
