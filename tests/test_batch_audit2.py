"""agegender batch: defects found by a second audit (object stores, the Ray engine's
checks), each reproduced first. An S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
pytest.importorskip("moto.server", reason="moto[server] is not installed")

from test_batch import _env, make_images

from agegender.batch import dataset, sources
from agegender.errors import AgegenderError


def _store(s3: dict[str, str]):  # type: ignore[no-untyped-def]
    from pyarrow import fs as pafs

    return pafs.S3FileSystem(
        endpoint_override=s3["AWS_ENDPOINT_URL"], scheme="http", allow_bucket_creation=True
    )


def _batch(s3: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agegender", "batch", *args, "--no-progress"]
    env = {**_env(tmp_path), **s3}
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def test_every_listed_key_is_read_as_itself(s3: dict[str, str], tmp_path: Path) -> None:
    """Keys with a space, '%', '#', '?' or a non-ASCII letter: each is read by its exact
    key (they failed, and "a%20b.jpg" was given the estimate of "a b.jpg")."""
    images = make_images(tmp_path / "img", 2)
    store = _store(s3)
    store.create_dir("keys")
    data = {
        name: images[i % 2].read_bytes()
        for i, name in enumerate(
            ["a b.jpg", "a%20b.jpg", "ünï.jpg", "h#x.jpg", "q?x.jpg", "p%zz.jpg"]
        )
    }
    for name, body in data.items():
        with store.open_output_stream(f"keys/in/{name}") as out:
            out.write(body)
    listed = list(sources.iter_inputs(["s3://keys/in/"]))
    assert len(listed) == len(data)
    by_name = {}
    for item in listed:
        fs, path = sources.filesystem(item.path)
        assert fs.get_file_info(path).type.name == "File", item.path  # parses, exists
        by_name[Path(path).name] = sources.read_remote(item.path)
    assert by_name == data  # each URI reads its own object
    done = _batch(s3, tmp_path, "s3://keys/in/", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "6 inputs done" in done.stderr and "failed" not in done.stderr, done.stderr


def test_a_key_typed_as_it_is_is_read(s3: dict[str, str], tmp_path: Path) -> None:
    (image,) = make_images(tmp_path / "img", 1)
    store = _store(s3)
    store.create_dir("typed")
    with store.open_output_stream("typed/my photo é.jpg") as out:
        out.write(image.read_bytes())
    assert sources.read_remote("s3://typed/my photo é.jpg") == image.read_bytes()


def test_a_source_uri_that_does_not_parse_is_refused_before_any_work() -> None:
    for uri in ("foo://x/y.jpg", "s3://b:99999999/x.jpg"):
        with pytest.raises(AgegenderError, match="cannot open"):
            sources.check_sources([uri])


def test_an_unreachable_store_is_a_row_not_the_end(s3: dict[str, str], tmp_path: Path) -> None:
    images = make_images(tmp_path / "img", 3)
    port = _free_port()
    env = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    done = _batch(
        env, tmp_path, str(images[0].parent), "s3://gone/x/", "--out", str(tmp_path / "o")
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "4 inputs done" in done.stderr and "cannot list" in done.stderr, done.stderr


def test_a_dest_in_a_missing_bucket_or_store_is_refused_before_any_work(
    s3: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(AgegenderError, match="the bucket nobucket does not exist"):
        dataset.check_dest("s3://nobucket/out/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(AgegenderError, match="cannot reach it"):
        dataset.check_dest("s3://out/x/")


def test_an_s3_parquet_list_is_checked_before_any_work(s3: dict[str, str], monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    store = _store(s3)
    store.create_dir("lists")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"p": ["x"]}), buffer)
    with store.open_output_stream("lists/nopath.parquet") as out:
        out.write(buffer.getvalue())
    with store.open_output_stream("lists/garbage.parquet") as out:
        out.write(b"not parquet")
    for name, message in [
        ("nopath", "needs a 'path' column"),
        ("garbage", "not a readable Parquet list"),
        ("missing", "no such list file"),
    ]:
        with pytest.raises(AgegenderError, match=message):
            sources.check_sources([f"s3://lists/{name}.parquet"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("bogus", "give auto, HOST:PORT"),
        ("127.0.0.1:{port}", "nothing answers there"),
        ("ray://127.0.0.1:{port}", "nothing answers there"),
    ],
)
def test_an_address_without_a_cluster_is_one_line(address: str, message: str) -> None:
    from agegender.batch.ray_engine import check_address

    with pytest.raises(AgegenderError, match=message):
        check_address(address.format(port=_free_port()))
    check_address(None)
    check_address("auto")  # Ray's own lookup; its failure is one line too (ray.init)


def test_resources_no_node_has(capsys) -> None:
    from argparse import Namespace

    from agegender.batch.ray_engine import _check_resources

    args = Namespace(num_cpus=100.0, num_gpus=0.0)
    with pytest.raises(AgegenderError, match="--num-cpus 100: no node has that many CPUs"):
        _check_resources(args, [2.0], [0.0], joined=False)
    _check_resources(args, [2.0], [0.0], joined=True)  # an autoscaler may add one
    assert "warning: --num-cpus 100" in capsys.readouterr().err
    with pytest.raises(AgegenderError, match="--num-gpus 1: no node has that many GPUs"):
        _check_resources(Namespace(num_cpus=None, num_gpus=1.0), [2.0], [0.0], joined=False)
    _check_resources(Namespace(num_cpus=2.0, num_gpus=0.0), [2.0], [0.0], joined=False)


def test_a_refused_join_names_token_authentication(monkeypatch) -> None:
    """Ray joins HOST:PORT without token authentication (only auto turns it on), so a
    cluster that uses it (`ray start` where a Ray token exists) refused the job with only
    "Failed to connect to Ray cluster at ...": the line names the setting that joins."""
    from agegender.batch.ray_engine import connect_error

    error = ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    line = connect_error("10.0.0.5:6379", error)
    assert line.startswith("--address 10.0.0.5:6379: Failed to connect to Ray cluster")
    assert "RAY_AUTH_MODE=token" in line and "\n" not in line
    assert "RAY_AUTH_MODE" not in connect_error("auto", error)  # Ray's lookup sets it
    assert connect_error(None, error) == "starting Ray: " + str(error)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set already: another cause
    assert "RAY_AUTH_MODE" not in connect_error("10.0.0.5:6379", error)
