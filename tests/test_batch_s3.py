"""agegender batch with an object store: an S3-compatible server (moto) started by the
test on 127.0.0.1 serves the inputs and receives the dataset; the rows equal a local
run's on the same images, and a second run resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")

from test_batch import REL, _env, batch, make_images, rows_of  # noqa: E402

from agegender.batch import dataset  # noqa: E402


@pytest.fixture(scope="module")
def s3() -> Any:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


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
