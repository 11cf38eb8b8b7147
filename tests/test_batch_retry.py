"""agegender batch: inputs that failed with a transient error (an I/O error, a timeout)
are tried again by the next run, up to --max-attempts, and their older error rows leave
the dataset; "not an image" is never retried. The failures come from an injected reader
(images._read_file raising EIO for chosen files), so every run is deterministic."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

from test_batch import assert_rows_equal, batch, make_images, rows_of

from agegender import images
from agegender.batch import dataset, job

FLAKY = {"img001.png", "img002.png"}


class _Failing(type(Path())):  # type: ignore[misc]
    """A path whose read fails as a bad disk or a dropped network mount does."""

    def read_bytes(self) -> bytes:
        raise OSError(errno.EIO, "Input/output error")


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """The file names whose reads fail (EIO) while the set is not empty."""
    names: set[str] = set()
    real = images._read_file

    def read(path: Path, label: str) -> bytes:
        return real(_Failing(path) if path.name in names else path, label)

    monkeypatch.setattr(images, "_read_file", read)
    yield names


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("retry-in")
    make_images(folder, 6)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _attempts(out: Path) -> list[tuple[int, int, int]]:
    records = []
    for path in sorted((out / dataset.ATTEMPTS).glob("*.npy")):
        records += dataset.load_attempts(path.read_bytes()).tolist()
    return records


def test_transient_kinds() -> None:
    assert job.transient("/a.jpg: cannot read (Input/output error)")
    assert job.transient("s3://b/a.jpg: cannot read (AWS Error NETWORK_CONNECTION: timed out)")
    assert not job.transient("/a.jpg: not an image (unrecognised format)")
    assert not job.transient("/a.jpg: no such file")
    assert not job.transient("/a.jpg: truncated image data (image file is truncated)")
    assert not job.transient(None)


@pytest.mark.parametrize("sink", ["parquet", "jsonl", "csv"])
def test_transient_failures_retried_by_the_next_run(
    photos: Path, tmp_path: Path, failing: set[str], capsys: Any, sink: str
) -> None:
    clean = tmp_path / "clean"
    assert batch(str(photos), "--out", str(clean), "--format", sink) == 1  # broken.jpg
    want = rows_of(clean)
    out = tmp_path / "out"
    options = ["--out", str(out), "--format", sink, "--part-size", "3"]

    failing.update(FLAKY)
    capsys.readouterr()
    assert batch(str(photos), *options) == 1
    err = capsys.readouterr().err
    assert "3 failed" in err and "cannot read: 2" in err, err
    errors = {Path(r["path"]).name: r["error"] for r in rows_of(out) if r["error"]}
    assert set(errors) == FLAKY | {"broken.jpg"}
    assert [a for _, a, t in _attempts(out) if t] == [1, 1]

    failing.clear()  # the disk is back
    assert batch(str(photos), *options) == 0  # broken.jpg is not retried: no failure now
    err = capsys.readouterr().err
    assert "2 inputs done" in err and "2 retried" in err and "5 skipped" in err, err
    got = rows_of(out)
    assert_rows_equal(got, want)  # no old error rows left, no duplicates
    assert sorted((a, t) for _, a, t in _attempts(out)) == [(2, 0), (2, 0)]
    assert batch(str(photos), *options) == 0  # nothing left to do
    assert "0 inputs done" in capsys.readouterr().err
    assert_rows_equal(rows_of(out), want)


def test_attempts_capped(photos: Path, tmp_path: Path, failing: set[str], capsys: Any) -> None:
    out = tmp_path / "out"
    one = str(photos / "img001.png")
    failing.add("img001.png")
    for attempt in (1, 2, 3):
        assert batch(one, "--out", str(out), "--max-attempts", "3") == 1
        rows = rows_of(out)
        assert len(rows) == 1 and "cannot read (Input/output error)" in rows[0]["error"]
        assert [(a, t) for _, a, t in _attempts(out)] == [(attempt, 1)]
    capsys.readouterr()
    assert batch(one, "--out", str(out), "--max-attempts", "3") == 0  # it had its 3 tries
    assert "0 inputs done" in capsys.readouterr().err
    failing.clear()
    more = tmp_path / "more"
    failing.add("img001.png")
    batch(one, "--out", str(more), "--max-attempts", "1")
    failing.clear()
    batch(one, "--out", str(more), "--max-attempts", "1")
    assert "1 skipped" in capsys.readouterr().err  # --max-attempts 1: never retried


def test_a_run_killed_before_pruning_is_repaired_by_the_next(
    photos: Path, tmp_path: Path, failing: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry's part committed, the older part not yet rewritten (the run died in
    between): the older error row is there twice over; the next run removes it."""
    some = [str(photos / name) for name in ("img000.jpg", "img001.png", "img002.png")]
    clean = tmp_path / "clean"
    batch(*some, "--out", str(clean))
    out = tmp_path / "out"
    failing.update(FLAKY)
    assert batch(*some, "--out", str(out), "--part-size", "2") == 1
    failing.clear()
    pruned: list[int] = []
    prune = dataset.Dataset.prune

    def prune_at_open_only(self: dataset.Dataset) -> int:
        if pruned:  # the call at the end of the run: the process "dies" first
            return 0
        pruned.append(1)
        return prune(self)

    monkeypatch.setattr(dataset.Dataset, "prune", prune_at_open_only)
    assert batch(*some, "--out", str(out), "--part-size", "2") == 0
    rows = rows_of(out)
    assert len(rows) == len(rows_of(clean)) + 2 and sum(bool(r["error"]) for r in rows) == 2
    monkeypatch.setattr(dataset.Dataset, "prune", prune)
    assert batch(*some, "--out", str(out), "--part-size", "2") == 0
    assert_rows_equal(rows_of(out), rows_of(clean))
    keys = [np.load(p) for p in sorted((out / dataset.KEYS).glob("*.npy"))]
    assert sum(len(k) for k in keys) == 3  # each input committed once
