"""agegender batch, a fourth audit (inputs changed between a kill and the resume, kill -9
during --overwrite): a job killed while --overwrite started over must leave DEST a
dataset the next run opens, also when DEST holds a file of the user's (allowed: only
agegender's own names are written or removed there)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

from agegender.batch import dataset, sources


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (Dataset.__init__ only closes its lock,
    as the system does for a killed process)."""


def _row(path: str) -> dict[str, object]:
    return {"path": path, "source_size": 10, "source_mtime_ns": 1, "error": None}


def test_kill_during_overwrite_leaves_a_dataset_the_next_run_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite removed the manifest first and wrote the new one only after clearing
    the parts: a job killed in between left DEST with the user's files and no manifest,
    which every later run (with or without --overwrite) refused as "a folder agegender
    batch did not make", for good."""
    out = tmp_path / "out"
    manifest = dataset.make_manifest(
        {"tta": True}, [], "parquet", "stat", {"step": 1.0, "max_frames": None, "rows": "frames"}
    )
    first = dataset.Dataset(str(out), manifest, "parquet", overwrite=False)
    try:
        first.commit([_row("a.jpg")], [sources.stat_key("a.jpg", 10, 1)], ())
    finally:
        first.close()
    (out / "notes.txt").write_text("mine")  # a file of the user's beside the dataset

    write = dataset._Files.write_atomic

    def killed_before_the_manifest(self: dataset._Files, name: str, data: bytes) -> None:
        if name == dataset.MANIFEST:
            raise Killed  # the job dies here: after the old parts went, before the new manifest
        write(self, name, data)

    monkeypatch.setattr(dataset._Files, "write_atomic", killed_before_the_manifest)
    with pytest.raises(Killed):
        dataset.Dataset(str(out), manifest, "parquet", overwrite=True)
    monkeypatch.undo()

    dataset.check_dest(str(out))  # the next run's check before any model loads
    for overwrite in (False, True):
        again = dataset.Dataset(str(out), manifest, "parquet", overwrite=overwrite)
        try:
            again.commit([_row("b.jpg")], [sources.stat_key("b.jpg", 10, 1)], ())
        finally:
            again.close()
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / dataset.MANIFEST).is_file()
    assert [r["path"] for r in dataset.iter_rows(str(out))] == ["b.jpg"]
