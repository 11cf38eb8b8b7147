"""agegender batch: a source whose listing failed (an object-store prefix whose store
answered with an error) gives one error row; the next run lists it again, and once it is
listed that row leaves the dataset, so the final dataset is an uninterrupted run's. The
failures come from an injected file system whose listings fail (the store itself, a
moto server on 127.0.0.1, stays up), so every run is deterministic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

from support.s3 import bucket as _store
from test_batch import assert_rows_equal, batch, make_images, rows_of

from agegender.batch import dataset, job, sources

# What pyarrow's S3 file system raises for a listing the store refuses (no "timeout" in
# it: the row is transient for being a failed listing, not for the word)
STORE_ERROR = "AWS Error SERVICE_UNAVAILABLE during ListObjectsV2 operation: Slow Down"


class _Unlistable:
    """A pyarrow file system whose listings (a FileSelector) fail; the rest works."""

    def __init__(self, fs: Any, error: BaseException):
        self._fs = fs
        self._error = error

    def get_file_info(self, what: Any) -> Any:
        from pyarrow import fs as pafs

        if isinstance(what, pafs.FileSelector):
            raise self._error
        return self._fs.get_file_info(what)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)


@pytest.fixture
def unlistable(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, BaseException]]:
    """Source URI prefixes whose listing fails (with the error given) while in the dict."""
    failing: dict[str, BaseException] = {}
    real = sources.filesystem

    def filesystem(uri: str) -> tuple[Any, str]:
        fs, path = real(uri)
        for prefix, error in failing.items():
            if uri.startswith(prefix):
                return _Unlistable(fs, error), path
        return fs, path

    monkeypatch.setattr(sources, "filesystem", filesystem)
    yield failing


def _upload(s3: dict[str, str], name: str, images: list[Path]) -> str:
    store = _store(s3, name)
    for image in images:
        with store.open_output_stream(f"{name}/in/{image.name}") as out:
            out.write(image.read_bytes())
    return f"s3://{name}/in/"


def _attempts(out: Path) -> list[tuple[int, int, int]]:
    records = []
    for path in sorted((out / dataset.ATTEMPTS).glob("*.npy")):
        records += dataset.load_attempts(path.read_bytes()).tolist()
    return records


def _keys(out: Path) -> list[int]:
    return sorted(k for p in (out / dataset.KEYS).glob("*.npy") for k in np.load(p).tolist())


def test_a_failed_listing_is_transient() -> None:
    assert job.transient(f"s3://b/in/: cannot list ({STORE_ERROR})")
    assert not job.transient("file:///x/in/: permission denied ([errno 13] Cannot list)")


@pytest.mark.parametrize(("sink", "key"), [("parquet", "stat"), ("jsonl", "hash"), ("csv", "stat")])
def test_a_prefix_listed_by_the_next_run_leaves_no_error_row(
    s3: dict[str, str],
    tmp_path: Path,
    unlistable: dict[str, BaseException],
    capsys: Any,
    sink: str,
    key: str,
) -> None:
    """Run 1: the prefix cannot be listed (one error row, exit 1); run 2: it can: its
    objects are done, its error row is gone, exit 0 and a summary without a failure; the
    dataset equals one uninterrupted run's, its keys are the inputs' only."""
    local = tmp_path / "local"
    make_images(local, 2)
    prefix = _upload(s3, f"relist-{sink}", make_images(tmp_path / "remote", 3))
    options = ["--format", sink, "--key", key, "--part-size", "2"]
    clean = tmp_path / "clean"
    assert batch(str(local), prefix, "--out", str(clean), *options) == 0
    want = rows_of(clean)
    out = tmp_path / "out"

    unlistable[prefix] = OSError(STORE_ERROR)
    capsys.readouterr()
    assert batch(str(local), prefix, "--out", str(out), *options) == 1
    err = capsys.readouterr().err
    assert "1 failed (cannot list: 1)" in err, err
    errors = [(r["path"], r["error"]) for r in rows_of(out) if r["error"]]
    assert errors == [(prefix, f"{prefix}: cannot list ({STORE_ERROR})")]

    unlistable.clear()  # the store answers again
    assert batch(str(local), prefix, "--out", str(out), *options) == 0
    err = capsys.readouterr().err
    assert_rows_equal(rows_of(out), want)  # no error row left, no duplicates
    assert "3 inputs done" in err and "1 listed now" in err and "failed" not in err, err
    assert _keys(out) == _keys(clean) and _attempts(out) == []
    assert not [p for p in out.iterdir() if p.name.startswith(dataset.TMP_PREFIX)]
    assert len(list(out.glob("part-*"))) == len(list(clean.glob("part-*")))  # none empty

    assert batch(str(local), prefix, "--out", str(out), *options) == 0  # nothing left
    err = capsys.readouterr().err
    assert "0 inputs done" in err and "listed now" not in err, err
    assert_rows_equal(rows_of(out), want)


def test_a_listing_failing_past_the_cap_keeps_its_row_until_listed(
    s3: dict[str, str], tmp_path: Path, unlistable: dict[str, BaseException], capsys: Any
) -> None:
    """A listing that keeps failing: its row is redone by each run up to --max-attempts
    (one row, its latest attempt), then final (the run skips it). Listing is no retry
    (every run lists its sources to find their inputs): a run that lists it still retires
    the row."""
    prefix = _upload(s3, "relist-cap", make_images(tmp_path / "remote", 2))
    clean = tmp_path / "clean"
    assert batch(prefix, "--out", str(clean)) == 0
    out = tmp_path / "out"
    options = ["--out", str(out), "--max-attempts", "2"]
    unlistable[prefix] = OSError(STORE_ERROR)
    for attempt, status in ((1, 1), (2, 1), (2, 0)):
        capsys.readouterr()
        assert batch(prefix, *options) == status
        err = capsys.readouterr().err
        rows = rows_of(out)
        assert len(rows) == 1 and rows[0]["error"].startswith(f"{prefix}: cannot list ("), rows
        assert [(a, t) for _, a, t in _attempts(out)] == [(attempt, 1)]
    assert "1 skipped" in err and "failed" not in err, err  # past the cap: final
    unlistable.clear()
    assert batch(prefix, *options) == 0
    assert "2 inputs done" in capsys.readouterr().err
    assert_rows_equal(rows_of(out), rows_of(clean))
    assert _keys(out) == _keys(clean) and _attempts(out) == []


def test_a_local_listing_refused_is_final_and_retired_once_listed(
    tmp_path: Path, unlistable: dict[str, BaseException], capsys: Any
) -> None:
    """A file:// prefix whose listing is refused by the file system (permission denied)
    is final, as an unreadable file's row: not redone by a run that fails the same way
    (exit 0, skipped); a run that lists it does its files and retires the row."""
    folder = tmp_path / "in"
    make_images(folder, 2)
    prefix = folder.as_uri() + "/"
    clean = tmp_path / "clean"
    assert batch(prefix, "--out", str(clean)) == 0
    out = tmp_path / "out"
    unlistable[prefix] = PermissionError(13, f"Cannot list directory '{folder}'")
    assert batch(prefix, "--out", str(out)) == 1
    rows = rows_of(out)
    assert len(rows) == 1 and rows[0]["error"].startswith(f"{prefix}: permission denied (")
    assert not job.transient(rows[0]["error"])
    capsys.readouterr()
    assert batch(prefix, "--out", str(out)) == 0  # not retried
    assert "1 skipped" in capsys.readouterr().err
    assert len(rows_of(out)) == 1
    unlistable.clear()
    assert batch(prefix, "--out", str(out)) == 0
    assert_rows_equal(rows_of(out), rows_of(clean))
    assert _keys(out) == _keys(clean) and _attempts(out) == []


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (as in test_batch_resume_audit4)."""


def _row(path: str, error: str | None = None, size: int = 10) -> dict[str, object]:
    return {
        "path": path,
        "source_size": size if size >= 0 else None,
        "source_mtime_ns": 1 if size >= 0 else None,
        "error": error,
    }


MANIFEST = dataset.make_manifest(
    {"tta": True}, [], "parquet", "stat", {"step": 1.0, "max_frames": None, "rows": "frames"}
)
PREFIX = "s3://b/in/"
PREFIX_KEY = sources.stat_key(PREFIX, -1, -1)
OBJECTS = [f"{PREFIX}{n}.jpg" for n in range(3)]


def _open(out: Path) -> dataset.Dataset:
    return dataset.Dataset(str(out), MANIFEST, "parquet", overwrite=False)


def _listing_failed(out: Path) -> None:
    """A run whose listing of PREFIX failed, then a run that listed it and committed its
    objects: where the retirement starts."""
    first = _open(out)
    try:
        first.commit(
            [_row("a.jpg"), _row(PREFIX, f"{PREFIX}: cannot list (x)", -1)],
            [sources.stat_key("a.jpg", 10, 1), PREFIX_KEY],
            (),
            [(PREFIX_KEY, 1, 1)],
        )
    finally:
        first.close()


def _relist(out: Path, killed_at: int | None, monkeypatch: pytest.MonkeyPatch) -> int:
    """A run that lists PREFIX: its objects in two parts, then the retirement, killed at
    the file operation `killed_at` of the run (None: not killed); the operations done."""
    done = [0]
    write, delete = dataset._Files.write_atomic, dataset._Files.delete

    def step() -> None:
        if done[0] == killed_at:
            raise Killed
        done[0] += 1

    def killed_write(self: dataset._Files, name: str, data: bytes) -> None:
        step()
        write(self, name, data)

    def killed_delete(self: dataset._Files, name: str) -> None:
        step()
        delete(self, name)

    run = _open(out)
    monkeypatch.setattr(dataset._Files, "write_atomic", killed_write)
    monkeypatch.setattr(dataset._Files, "delete", killed_delete)
    try:
        for chunk in (OBJECTS[:2], OBJECTS[2:]):
            run.commit([_row(p) for p in chunk], [sources.stat_key(p, 10, 1) for p in chunk], ())
        run.relisted(PREFIX_KEY)
        run.retire_relisted(())
    except Killed:
        pass
    finally:
        monkeypatch.setattr(dataset._Files, "write_atomic", write)
        monkeypatch.setattr(dataset._Files, "delete", delete)
        run.close()
    return done[0]


def test_a_kill_at_any_step_of_a_retirement_keeps_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed at each file operation of a run that lists the prefix (its objects' parts,
    the retirement part, the pruning of the older part, the retirement part's removal):
    the dataset always holds either the prefix's error row or all of its objects; the
    next run that lists it ends with exactly the objects' rows, once each; one whose
    listing fails again keeps an error row beside the objects done."""
    whole = tmp_path / "whole"
    _listing_failed(whole)
    steps = _relist(whole, None, monkeypatch)
    want = sorted(r["path"] for r in dataset.iter_rows(str(whole)))
    assert want == sorted(["a.jpg", *OBJECTS]) and steps > 6
    for killed_at in range(steps):
        out = tmp_path / f"killed-{killed_at}"
        _listing_failed(out)
        assert _relist(out, killed_at, monkeypatch) == killed_at
        again = _open(out)  # the next run's start (its pruning finishes a retirement)
        try:
            paths = sorted(r["path"] for r in dataset.iter_rows(str(out)))
            objects = [p for p in paths if p in OBJECTS]
            assert PREFIX in paths or objects == OBJECTS, (killed_at, paths)
            assert len(paths) == len(set(paths)), (killed_at, paths)
            if PREFIX in paths:  # not retired: a run that lists it does, at the end
                for p in OBJECTS:
                    if not again.is_done(sources.stat_key(p, 10, 1)):
                        again.commit([_row(p)], [sources.stat_key(p, 10, 1)], ())
                again.relisted(PREFIX_KEY)
                assert again.retire_relisted(()) == 1
            else:  # retired: a failing listing now is a new error row (attempt 1)
                assert not again.is_done(PREFIX_KEY)
        finally:
            again.close()
        assert sorted(r["path"] for r in dataset.iter_rows(str(out))) == want, killed_at
        assert not list((out / dataset.ATTEMPTS).glob("*.npy")), killed_at
        keys = _keys(out)
        assert PREFIX_KEY not in keys and len(keys) == len(set(keys)) == len(want), killed_at


# The command with the listings of the source prefix argv[1] failing (the driver lists
# the sources: Ray's actors only read the objects); argv[1] '' for none.
RAY_DRIVER = f"""
import sys
from agegender import cli
from agegender.batch import sources

real = sources.filesystem

class Unlistable:
    def __init__(self, fs):
        self._fs = fs
    def get_file_info(self, what):
        from pyarrow import fs as pafs
        if isinstance(what, pafs.FileSelector):
            raise OSError({STORE_ERROR!r})
        return self._fs.get_file_info(what)
    def __getattr__(self, name):
        return getattr(self._fs, name)

def filesystem(uri):
    fs, path = real(uri)
    return (Unlistable(fs), path) if sys.argv[1] and uri.startswith(sys.argv[1]) else (fs, path)

sources.filesystem = filesystem
sys.exit(cli.main(sys.argv[2:]))
"""


def test_ray_engine_retires_the_row_of_a_prefix_listed_by_the_next_run(tmp_path: Path) -> None:
    """The Ray engine shares the listing and the retirement (its driver lists the sources
    and commits the actors' parts, then the retirement, numbered after the actors' parts):
    run 1 cannot list the prefix, run 2 can; the rows are the local engine's clean run's."""
    import subprocess
    import sys

    pytest.importorskip("ray", reason="agegender[ray] (ray[data]) is not installed")
    from test_batch import _env

    folder = tmp_path / "in"
    make_images(folder, 2)
    prefix = folder.as_uri() + "/"
    clean = tmp_path / "clean"
    assert batch(prefix, "--out", str(clean), "--part-size", "1") == 0
    out = tmp_path / "out"
    env = {**_env(tmp_path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = ["batch", prefix, "--out", str(out), "--no-progress", "--part-size", "1"]
    command += ["--engine", "ray", "--concurrency", "1"]
    for failing, status in ((prefix, 1), ("", 0)):
        done = subprocess.run(
            [sys.executable, "-c", RAY_DRIVER, failing, *command],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == status and "Traceback" not in done.stderr, done.stderr
        if failing:
            rows = rows_of(out)
            assert len(rows) == 1 and rows[0]["error"].startswith(f"{prefix}: cannot list (")
            assert _attempts(out) == [(sources.stat_key(prefix, -1, -1), 1, 1)]
    assert "2 inputs done" in done.stderr and "1 listed now" in done.stderr, done.stderr
    assert_rows_equal(rows_of(out), rows_of(clean))
    assert _keys(out) == _keys(clean) and _attempts(out) == []
