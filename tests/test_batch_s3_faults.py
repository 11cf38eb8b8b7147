"""agegender batch against an object store that fails: the store gone mid-job (a moto
server on 127.0.0.1 stopped, then started again with its objects), a write killed
mid-upload, keys that pyarrow reads otherwise than as themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
pytest.importorskip("moto.server", reason="moto[server] is not installed")

from support.s3 import bucket as _store
from test_batch import _env, batch, make_images, rows_of

from agegender.batch import dataset, job, sources
from agegender.errors import ImageError


def _put(env: dict[str, str], bucket: str, key: str, data: bytes) -> None:
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).put_object(
        Bucket=bucket, Key=key, Body=data
    )


def test_store_gone_mid_job_is_one_line_and_resume_is_exact(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes away after the first part: the job ends with one error line (no
    traceback) and exit 2; with the store back, the same command gives exactly the rows
    of an uninterrupted run."""
    from moto import server as moto_server

    images = tmp_path / "in"
    make_images(images, 4)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    dest = "s3://gone/faces"
    commit = dataset.Dataset.commit
    stopped: list[bool] = []

    def commit_then_stop(self: dataset.Dataset, *args: Any, **kwargs: Any) -> str:
        name = commit(self, *args, **kwargs)
        if not stopped:
            server.stop()  # moto's objects live in this process: they outlive the server
            stopped.append(True)
        return name

    back = None
    try:
        _store({"AWS_ENDPOINT_URL": f"http://{host}:{port}"}, "gone")
        monkeypatch.setattr(dataset.Dataset, "commit", commit_then_stop)
        capsys.readouterr()
        assert batch(str(images), "--out", dest, "--part-size", "1") == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("agegender: error:")]
        assert "Traceback" not in err and len(errors) == 1, err
        assert f"--out {dest}: cannot write it (" in errors[0] and "resumes" in errors[0]
        monkeypatch.setattr(dataset.Dataset, "commit", commit)
        back = moto_server.ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        back.start()  # the store is back, with the objects written before
        assert len(list(dataset.iter_rows(dest))) >= 1  # the first part, committed
        # The failed job could not remove its lock (the store was gone); a later process
        # on this machine takes over the lock of a pid that is gone, but the holder here
        # is this test's process, alive: removed as that takeover would.
        files = dataset._Files(dest)
        assert files.kind(dataset.LOCK) == "file"
        files.delete(dataset.LOCK)
        assert batch(str(images), "--out", dest, "--part-size", "1") == 0
        got = sorted(dataset.iter_rows(dest), key=lambda r: (r["path"], r["face"] or 0))
    finally:
        if not stopped:
            server.stop()
        if back is not None:
            back.stop()
    whole = tmp_path / "whole"
    assert batch(str(images), "--out", str(whole), "--part-size", "1") == 0
    want = rows_of(whole)
    assert [(r["path"], r["face"]) for r in got] == [(r["path"], r["face"]) for r in want]


def test_a_write_killed_mid_upload_leaves_no_multipart_upload(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """A job killed while it writes a part to S3: no begun multipart upload stays in the
    bucket (unlisted, billed until a lifecycle rule ends it); a small object is one PUT,
    sent when it is complete."""
    import boto3

    _store(s3, "killed")
    code = (
        "import os\n"
        "from agegender.batch import dataset\n"
        "files = dataset._Files('s3://killed/faces')\n"
        "stream = files.fs.open_output_stream(files._p('part-x.parquet'))\n"
        "stream.write(b'x' * 1000)\n"
        "os._exit(0)  # kill -9 before the part is complete\n"
    )
    env = {**_env(tmp_path), **s3}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    assert client.list_multipart_uploads(Bucket="killed").get("Uploads", []) == []
    # and a whole write is still there, whole
    files = dataset._Files("s3://killed/faces")
    files.write_atomic("part-y.parquet", b"y" * 1000)
    assert files.read("part-y.parquet") == b"y" * 1000


def test_a_hash_in_a_typed_key_is_part_of_the_key(s3: dict[str, str]) -> None:
    """'s3://b/o/x#y.jpg' is the key 'o/x#y.jpg' (a fragment means nothing to a store):
    pyarrow dropped it and the row of x#y.jpg held the object 'o/x'."""
    _store(s3, "hashes")
    _put(s3, "hashes", "o/x", b"the object x")
    _put(s3, "hashes", "o/x#y.jpg", b"the object x#y.jpg")
    assert sources.read_remote("s3://hashes/o/x#y.jpg") == b"the object x#y.jpg"
    assert sources.read_remote("s3://hashes/o/x%23y.jpg") == b"the object x#y.jpg"
    assert sources.remote_input("s3://hashes/o/x#y.jpg").size == len(b"the object x#y.jpg")
    _put(s3, "hashes", "o/a b#c.jpg", b"the object a b#c.jpg")  # raw: a space too
    assert sources.read_remote("s3://hashes/o/a b#c.jpg") == b"the object a b#c.jpg"


def test_a_key_pyarrow_cannot_address_is_not_retried(s3: dict[str, str]) -> None:
    """A listed key with an empty path component ('o//a.jpg') cannot be read through
    pyarrow at all: its error row is final, not a transient 'cannot read (...)' retried
    by every run until --max-attempts."""
    _store(s3, "slashes")
    _put(s3, "slashes", "o//a.jpg", b"not read")
    listed = [item.path for item in sources.iter_inputs(["s3://slashes/o/"])]
    assert listed == ["s3://slashes/o//a.jpg"]
    with pytest.raises(ImageError) as caught:
        sources.read_remote(listed[0])
    assert "cannot read this key (" in str(caught.value)
    assert not job.transient(str(caught.value))
