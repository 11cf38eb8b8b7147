"""agegender batch --engine ray with an object store, and its retries of transient
failures, on one Ray instance this module starts (127.0.0.1 only; the command joins it,
as under ray job submit):

- the actors read the inputs from, and write the Parquet dataset to, an S3-compatible
  server (moto) on 127.0.0.1: the rows equal the local engine's on the same images, and
  a second run resumes (nothing new; the dataset's objects unchanged);
- an input whose read fails in an actor with an I/O error is an error row, retried and
  replaced by its rows in the next run, and left an error once --max-attempts is spent.

- two actors share the parts: each holds one while the other starts its own (an actor
  that queued both parts would wait at the meeting point for an actor that never came);
- the driver commits a part as soon as it is done: one actor's second part waits until
  the first part's keys are in DEST.

The failing reader is test_batch_retry.py's (images._read_file raising EIO for chosen
file names). It reaches the actors through Ray's own ``worker_process_setup_hook``, a
function every worker process of this Ray instance runs before its tasks; it patches
the worker's reader and reads which names fail from a file at every read, so the test
changes them between runs; reads of files named ``meet-*`` wait at a meeting point (a
folder where each reading process leaves its pid), reads of ``late-*`` until the folder
named in a watch file has an entry (noting in ``<watch>.waited`` whether it came). The
driver (this process) keeps the real reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Ray on the loopback address only (its single-machine switch): no traffic leaves here.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
pytest.importorskip("ray", reason="agegender[ray] (ray[data]) is not installed")

from support.s3 import bucket
from test_batch import assert_rows_equal, batch, make_images, rows_of
from test_batch_retry import _attempts

from agegender import images
from agegender.batch import dataset

RAY = ["--engine", "ray", "--no-progress"]


MEETING_WAIT = 300.0  # seconds an actor waits for the other one before it gives up


def _worker_reads(control: Path, meeting: Path, watch: Path) -> Callable[[], None]:
    """A worker setup hook: images._read_file fails with EIO (a bad disk, a dropped
    network mount) for the file names listed in `control`, read at every call; a read of
    a file named ``meet-*`` leaves the process's pid in `meeting` and waits until two
    processes have; a read of ``late-*`` waits until the folder named in `watch` has an
    entry and writes "came" or "timed out" to ``<watch>.waited`` (each wait at most
    MEETING_WAIT). A local function, so Ray pickles it by value: the workers need not
    import this module."""
    where, folder, watched = str(control), str(meeting), str(watch)

    def setup() -> None:
        import errno
        import os
        import time
        from pathlib import Path

        from agegender import images

        real = images._read_file

        class Failing(type(Path())):  # type: ignore[misc]
            def read_bytes(self) -> bytes:
                raise OSError(errno.EIO, "Input/output error")

        def wait_until(done: Callable[[], bool]) -> bool:
            give_up = time.monotonic() + MEETING_WAIT
            while not done():
                if time.monotonic() >= give_up:
                    return False
                time.sleep(0.05)
            return True

        def meet() -> None:
            Path(folder, str(os.getpid())).touch()
            wait_until(lambda: len(os.listdir(folder)) >= 2)

        def entered() -> bool:
            target = Path(Path(watched).read_text().strip())
            return target.is_dir() and any(target.iterdir())

        def late() -> None:
            came = wait_until(entered)
            Path(watched + ".waited").write_text("came" if came else "timed out")

        def read(path: Path, label: str) -> bytes:
            if path.name.startswith("meet-"):
                meet()
            if path.name.startswith("late-"):
                late()
            names = Path(where).read_text().split() if os.path.exists(where) else []
            return real(Failing(path) if path.name in names else path, label)

        images._read_file = read

    return setup


@pytest.fixture(scope="module")
def ray_here(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Path, Path, Path]]:
    """One Ray instance (2 CPUs) for the module's tests, its workers given the S3
    server's settings and the failing reader. Yields (the S3 settings, {} without moto;
    the file of names whose reads fail in the workers; the meeting folder; the watch
    file)."""
    import ray

    try:
        s3: dict[str, str] = request.getfixturevalue("s3")
    except pytest.skip.Exception:  # no moto: the object-store test skips, not the others
        s3 = {}
    control = tmp_path_factory.mktemp("failing") / "names"
    control.write_text("")
    meeting = tmp_path_factory.mktemp("meeting")
    watch = tmp_path_factory.mktemp("watch") / "folder"
    watch.write_text("")
    runtime_env = {
        "worker_process_setup_hook": _worker_reads(control, meeting, watch),
        "env_vars": dict(s3),
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env)
    try:
        yield s3, control, meeting, watch
    finally:
        ray.shutdown()


def _order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        rows, key=lambda r: (r["path"], r["frame"] or 0, -1 if r["face"] is None else r["face"])
    )


def _objects(store: Any, prefix: str) -> dict[str, tuple[Any, bytes]]:
    """Every object under `prefix`: its modification time and its bytes."""
    from pyarrow import fs as pafs

    found = store.get_file_info(pafs.FileSelector(prefix, recursive=True))
    objects = {}
    for info in found:
        if info.type == pafs.FileType.File:
            with store.open_input_stream(info.path) as stream:
                objects[info.path] = (info.mtime, bytes(stream.read()))
    return objects


def test_ray_engine_reads_and_writes_an_object_store(
    ray_here: tuple[dict[str, str], Path, Path, Path],
    s3: dict[str, str],
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inputs on S3, the dataset on S3, the parts written there by the actors (the
    driver is refused any part write); the rows equal a local run's on the same images
    (floats to float32's tolerance, test_batch.REL); a second run does nothing."""
    folder = tmp_path / "in"
    store = bucket(s3, "ray")
    for photo in make_images(folder, 6):
        with store.open_output_stream(f"ray/in/{photo.name}") as out:
            out.write(photo.read_bytes())
    with store.open_output_stream("ray/in/broken.jpg") as out:
        out.write(b"not a jpeg")
    local = tmp_path / "local"
    assert batch(str(folder), "--out", str(local), "--part-size", "3") == 0

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the driver wrote a part file")

    monkeypatch.setattr(dataset, "write_part", refused)  # the actors import their own
    monkeypatch.setattr(dataset.Dataset, "commit", refused)
    dest = "s3://ray/faces"
    command = ["s3://ray/in/", "--out", dest, "--part-size", "3", *RAY, "--concurrency", "2"]
    capsys.readouterr()
    assert batch(*command) == 1  # broken.jpg
    err = capsys.readouterr().err
    assert "7 inputs done" in err and "in 3 parts" in err and "1 failed" in err, err
    objects = _objects(store, "ray/faces")
    parts = [name for name in objects if name.startswith("ray/faces/part-")]
    assert len(parts) == 3 and all(name.endswith(".parquet") for name in parts), parts
    assert sum(f"/{dataset.KEYS}/" in name for name in objects) == 3

    rows = _order(list(dataset.iter_rows(dest)))
    broken = [r for r in rows if r["path"] == "s3://ray/in/broken.jpg"]
    assert len(broken) == 1 and "not an image" in broken[0]["error"], broken
    # Where a file lies changes its path and its mtime (the upload's), nothing else.
    got = [
        {**r, "path": str(folder / Path(r["path"]).name), "source_mtime_ns": None}
        for r in rows
        if r is not broken[0]
    ]
    want = [{**r, "source_mtime_ns": None} for r in rows_of(local)]
    assert sum(r["age_value"] is not None for r in want) >= 4  # faces were compared
    assert_rows_equal(_order(got), want)

    assert batch(*command) == 0  # resumed: broken.jpg (not transient) is not tried again
    err = capsys.readouterr().err
    assert "0 inputs done" in err and "7 skipped (done before" in err, err
    assert _objects(store, "ray/faces") == objects  # nothing written, nothing removed
    assert _order(list(dataset.iter_rows(dest))) == rows


def test_ray_engine_retries_transient_failures(
    ray_here: tuple[dict[str, str], Path, Path, Path], tmp_path: Path, capsys: Any
) -> None:
    """Reads failing in the actors (EIO) are error rows; the next run retries them and
    their rows replace the error rows; after --max-attempts an input stays an error
    (until a run allows more attempts)."""
    _, control, _, _ = ray_here
    folder = tmp_path / "in"
    make_images(folder, 4)
    clean = tmp_path / "clean"
    assert batch(str(folder), "--out", str(clean)) == 0
    want = rows_of(clean)
    out = tmp_path / "out"
    command = [str(folder), "--out", str(out), "--part-size", "2", *RAY]

    def named(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
        return [r for r in rows if Path(r["path"]).name == name]

    control.write_text("img001.png\nimg002.png\n")
    capsys.readouterr()
    assert batch(*command, "--max-attempts", "2") == 1
    err = capsys.readouterr().err
    assert "4 inputs done" in err and "2 failed (cannot read: 2)" in err, err
    errors = {Path(r["path"]).name: r["error"] for r in rows_of(out) if r["error"]}
    assert set(errors) == {"img001.png", "img002.png"}, errors
    assert all("cannot read (Input/output error)" in e for e in errors.values()), errors
    assert sorted((a, t) for _, a, t in _attempts(out)) == [(1, 1), (1, 1)]
    assert images._read_file.__qualname__ == "_read_file"  # failing in the actors only

    control.write_text("img002.png\n")  # img001.png readable again, img002.png not yet
    assert batch(*command, "--max-attempts", "2") == 1
    err = capsys.readouterr().err
    assert "2 inputs done" in err and "2 retried" in err and "2 skipped" in err, err
    assert "1 failed (cannot read: 1)" in err, err
    rows = rows_of(out)
    assert_rows_equal(named(rows, "img001.png"), named(want, "img001.png"))  # error row gone
    assert len(named(rows, "img002.png")) == 1 and named(rows, "img002.png")[0]["error"]
    assert sorted((a, t) for _, a, t in _attempts(out)) == [(2, 0), (2, 1)]

    control.write_text("")  # readable again, but img002.png has had its 2 attempts
    assert batch(*command, "--max-attempts", "2") == 0
    err = capsys.readouterr().err
    assert "0 inputs done" in err and "4 skipped" in err, err
    assert_rows_equal(rows_of(out), rows)
    assert sorted((a, t) for _, a, t in _attempts(out)) == [(2, 0), (2, 1)]

    assert batch(*command, "--max-attempts", "3") == 0  # a third attempt allowed
    err = capsys.readouterr().err
    assert "1 inputs done" in err and "1 retried" in err and "3 skipped" in err, err
    assert_rows_equal(rows_of(out), want)
    assert sorted((a, t) for _, a, t in _attempts(out)) == [(2, 0), (3, 0)]


def test_ray_engine_gives_each_actor_its_own_part(
    ray_here: tuple[dict[str, str], Path, Path, Path], tmp_path: Path, capsys: Any
) -> None:
    """Two actors, two parts: each actor takes one (its first read waits at the meeting
    point until the other actor reads too). Ray Data's default of several batches in
    flight per actor queued both parts on the first actor ready, so one actor did all
    the work while the other idled; then only one pid reaches the meeting."""
    _, _, meeting, _ = ray_here
    folder = tmp_path / "in"
    folder.mkdir()
    for number, photo in enumerate(make_images(tmp_path / "made", 4)):
        photo.rename(folder / f"meet-{number}{photo.suffix}")
    out = tmp_path / "out"
    command = [str(folder), "--out", str(out), "--part-size", "2", *RAY, "--concurrency", "2"]
    capsys.readouterr()
    assert batch(*command) == 0
    err = capsys.readouterr().err
    assert "4 inputs done" in err and "in 2 parts" in err, err
    assert len(os.listdir(meeting)) == 2, os.listdir(meeting)  # two actors met
    assert len(rows_of(out)) >= 4


def test_ray_engine_commits_each_part_when_it_is_done(
    ray_here: tuple[dict[str, str], Path, Path, Path], tmp_path: Path, capsys: Any
) -> None:
    """One actor, two parts: the second part's reads wait until the first part's keys
    are committed in DEST. With Ray Data's default prefetch of one batch, the driver got
    the first summary only when the second part was done (so it would wait in vain, and a
    crash meanwhile would redo a finished part)."""
    _, _, _, watch = ray_here
    folder = tmp_path / "in"
    folder.mkdir()
    for number, photo in enumerate(make_images(tmp_path / "made", 4)):
        name = f"img-{number}" if number < 2 else f"late-{number}"
        photo.rename(folder / f"{name}{photo.suffix}")
    out = tmp_path / "out"
    watch.write_text(str(out / dataset.KEYS))
    command = [str(folder), "--out", str(out), "--part-size", "2", *RAY, "--concurrency", "1"]
    capsys.readouterr()
    assert batch(*command) == 0
    err = capsys.readouterr().err
    assert "4 inputs done" in err and "in 2 parts" in err, err
    assert Path(f"{watch}.waited").read_text() == "came"
    assert len(rows_of(out)) >= 4
