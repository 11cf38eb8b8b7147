"""agegender batch with an object store: an S3-compatible server (moto) started by the
test on 127.0.0.1 serves the inputs and receives the dataset; the rows equal a local
run's on the same images, and a second run resumes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
pytest.importorskip("moto.server", reason="moto[server] is not installed")

from support.s3 import bucket as _store
from test_batch import REL, _env, batch, make_images, rows_of

from agegender.batch import dataset


def test_inputs_and_dataset_on_s3(s3: dict[str, str], tmp_path: Path) -> None:
    from pyarrow import fs as pafs

    folder = tmp_path / "in"
    images = make_images(folder, 6)
    store = pafs.S3FileSystem(
        endpoint_override=s3["AWS_ENDPOINT_URL"], scheme="http", allow_bucket_creation=True
    )
    store.create_dir("photos")
    for image in images:
        with store.open_output_stream(f"photos/in/{image.name}") as out:
            out.write(image.read_bytes())
    with store.open_output_stream("photos/in/broken.jpg") as out:
        out.write(b"not a jpeg")

    local = tmp_path / "local"
    assert batch(str(folder), "--out", str(local)) == 0
    env = {**_env(tmp_path), **s3}
    command = [sys.executable, "-m", "agegender", "batch", "s3://photos/in/"]
    command += ["--out", "s3://photos/faces", "--part-size", "4", "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr  # broken.jpg
    assert "7 inputs done" in done.stderr and "1 failed" in done.stderr, done.stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert "7 skipped (done before" in again.stderr, again.stderr

    rows = sorted(dataset.iter_rows("s3://photos/faces"), key=lambda r: (r["path"], r["face"] or 0))
    names = [Path(f.path).name for f in store.get_file_info(pafs.FileSelector("photos/faces"))]
    assert sum(n.startswith("part-") for n in names) == 2 and "_agegender" in names
    broken = [r for r in rows if r["path"] == "s3://photos/in/broken.jpg"]
    assert len(broken) == 1 and "not an image" in broken[0]["error"]
    want = rows_of(local)
    got = [r for r in rows if r is not broken[0]]
    assert [Path(r["path"]).name for r in got] == [Path(r["path"]).name for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["face"] == b["face"] and a["source_size"] == b["source_size"]
        if b["age_value"] is not None:
            assert a["age_value"] == pytest.approx(b["age_value"], rel=REL)
            assert a["gender_label"] == b["gender_label"]


def pafs_selector(path: str) -> Any:
    from pyarrow import fs as pafs

    return pafs.FileSelector(path, allow_not_found=True, recursive=True)


def _put_lock(store: Any, path: str, **fields: Any) -> None:
    with store.open_output_stream(path) as out:
        out.write(json.dumps(fields).encode())


@pytest.mark.parametrize("conditional", [True, False], ids=["if-none-match", "read-back"])
def test_one_job_per_s3_dest(
    s3: dict[str, str],
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    conditional: bool,
) -> None:
    """A second job on a DEST whose lock object is held stops with one line; a released,
    expired or dead-here lock lets the next job run. With S3's conditional create
    (If-None-Match: *) and with the read-back fallback for stores without it."""
    from agegender.batch import lock

    if not conditional:
        monkeypatch.setattr(lock, "_conditional_client", lambda files: None)
        monkeypatch.setattr(lock, "SETTLE", 0.05)
    bucket = f"locks-{'c' if conditional else 'r'}"
    store = _store(s3, bucket)
    dest = f"s3://{bucket}/faces"
    image = str(make_images(tmp_path / "in", 1)[0])
    holder = lock.ObjectLock(dataset._Files(dest), dataset.LOCK, dest)
    holder.acquire()
    assert (holder._client is not None) is conditional
    try:
        capsys.readouterr()
        assert batch(image, "--out", dest) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "another agegender batch is writing it" in err, err
        assert not [
            f for f in store.get_file_info(pafs_selector(f"{bucket}/faces")) if "part-" in f.path
        ]
        holder.refresh()  # the heartbeat of a lock still ours
        assert not holder.lost
    finally:
        holder.release()
    assert batch(image, "--out", dest) == 0
    lock_path = f"{bucket}/faces/{dataset.LOCK}"
    assert store.get_file_info(lock_path).type.name == "NotFound"  # released at the end
    # a lock with no heartbeat for longer than TTL: a dead job's, taken over
    _put_lock(store, lock_path, owner="x", host="elsewhere", pid=1, heartbeat=time.time() - 1e4)
    assert batch(image, "--out", dest, "--overwrite") == 0
    # a fresh lock of a process of this machine that is gone (kill -9): taken over at once
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(gone.stdout)
    _put_lock(
        store, lock_path, owner="y", host=socket.gethostname(), pid=pid, heartbeat=time.time()
    )
    assert batch(image, "--out", dest, "--overwrite") == 0
    # a fresh lock of a live process elsewhere: refused
    _put_lock(store, lock_path, owner="z", host="elsewhere", pid=1, heartbeat=time.time())
    assert batch(image, "--out", dest) == 2
    assert "lock held by elsewhere pid 1" in capsys.readouterr().err


def test_conditional_create_lets_exactly_one_job_in(s3: dict[str, str]) -> None:
    """Eight jobs opening one DEST at the same moment: S3 creates the lock for one."""
    from agegender.batch import lock
    from agegender.errors import AgegenderError

    _store(s3, "race")
    dest = "s3://race/faces"
    locks = [lock.ObjectLock(dataset._Files(dest), dataset.LOCK, dest) for _ in range(8)]
    assert all(item._client is not None for item in locks)
    barrier = threading.Barrier(len(locks))
    won: list[lock.ObjectLock] = []
    refused: list[str] = []

    def open_one(item: lock.ObjectLock) -> None:
        barrier.wait()
        try:
            item.acquire()
            won.append(item)
        except AgegenderError as error:
            refused.append(str(error))

    threads = [threading.Thread(target=open_one, args=(item,)) for item in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 7, refused
    won[0].release()
