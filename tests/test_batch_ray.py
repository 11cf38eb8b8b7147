"""agegender batch --engine ray: the same rows as the local engine, on a Ray instance the
command starts itself, on one the test starts (the command joins it; a second run resumes
the first) and on a two-node cluster simulated here. Ray binds to 127.0.0.1 only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Ray on the loopback address only (its single-machine switch): no traffic leaves here.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
pytest.importorskip("ray", reason="agegender[ray] (ray[data]) is not installed")

from test_batch import _env, assert_rows_equal, batch, make_images, rows_of


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ray-in")
    make_images(folder, 12)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    local = tmp_path_factory.mktemp("ray-local") / "out"
    assert batch(str(folder), "--out", str(local), "--part-size", "3") == 1
    return folder, local


def test_ray_engine_on_its_own_local_instance(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    folder, local = inputs
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "agegender", "batch", str(folder), "--out", str(out)]
    options = ["--engine", "ray", "--concurrency", "2", "--part-size", "3", "--no-progress"]
    done = subprocess.run(
        [*command, *options], env=_env(tmp_path), capture_output=True, text=True, check=False
    )
    assert done.returncode == 1, done.stderr  # the broken file failed; the rest is done
    assert "13 inputs done" in done.stderr and "1 failed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert_rows_equal(rows_of(out), rows_of(local))
    assert len(list(out.glob("part-*.parquet"))) == 5  # one part per batch of 3 inputs


def test_ray_engine_resumes_on_a_ray_instance_started_by_the_test(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: Any
) -> None:
    """The command joins the Ray instance running in its process (as under ray job
    submit); a second run resumes the first and the rows equal the local engine's."""
    import ray

    folder, local = inputs
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "resumed"
        first_half = sorted(str(p) for p in folder.glob("img*"))[:6]
        options = ["--engine", "ray", "--concurrency", "2", "--num-cpus", "1"]
        assert batch(*first_half, "--out", str(out), "--part-size", "3", *options) == 0
        assert ray.is_initialized()  # the command leaves a Ray it did not start running
        assert batch(str(folder), "--out", str(out), "--part-size", "3", *options) == 1
        assert "6 skipped (done before" in capsys.readouterr().err
        assert_rows_equal(rows_of(out), rows_of(local))
    finally:
        ray.shutdown()


def test_ray_engine_on_a_two_node_cluster(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """Two Ray nodes of one CPU each (ray.cluster_utils.Cluster, on loopback), joined with
    --address: two one-CPU actors can only run one on each node; same rows."""
    from ray.cluster_utils import Cluster

    folder, local = inputs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        assert len(cluster.list_all_nodes()) == 2
        out = tmp_path / "cluster"
        options = ["--engine", "ray", "--address", cluster.address, "--concurrency", "2"]
        assert batch(str(folder), "--out", str(out), "--part-size", "3", *options) == 1
        assert_rows_equal(rows_of(out), rows_of(local))
    finally:
        cluster.shutdown()
