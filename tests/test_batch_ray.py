"""agegender batch --engine ray: the same rows as the local engine, on a Ray instance the
command starts itself, on one the test starts (the command joins it; a second run resumes
the first) and on a two-node cluster simulated here. Ray binds to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

# Ray on the loopback address only (its single-machine switch): no traffic leaves here.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
pytest.importorskip("ray", reason="agegender[ray] (ray[data]) is not installed")

from test_batch import _env, assert_rows_equal, batch, make_images, rows_of

from agegender.sessions import cpu_kind


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
    inputs: tuple[Path, Path], tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command joins the Ray instance running in its process (as under ray job
    submit); a second run resumes the first and the rows equal the local engine's. The
    actors write the part files: the driver (this process) is refused any part write and
    receives only small per-part summaries, never rows."""
    import ray

    from agegender.batch import dataset, ray_engine

    received: list[Any] = []
    summaries = ray_engine._summaries

    def recorded(data: Any) -> Any:
        for table in summaries(data):
            received.append(table)
            yield table

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the driver wrote a part file")

    def remote_metadata(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the blocks' metadata was computed by a Ray task")

    monkeypatch.setattr(ray_engine, "_summaries", recorded)
    monkeypatch.setattr(ray.data, "from_arrow_refs", remote_metadata)  # Ray's public path
    monkeypatch.setattr(dataset, "write_part", refused)  # the actors import their own
    monkeypatch.setattr(dataset.Dataset, "commit", refused)
    folder, local = inputs
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "resumed"
        first_half = sorted(str(p) for p in folder.glob("img*"))[:6]
        options = ["--engine", "ray", "--concurrency", "2", "--num-cpus", "1"]
        assert batch(*first_half, "--out", str(out), "--part-size", "3", *options) == 0
        assert ray.is_initialized()  # the command leaves a Ray it did not start running
        # the actors noted the kind of CPU that ran the models (the driver ran none)
        here = cpu_kind()
        assert dataset.cpu_kinds(dataset._Files(str(out))) == [here]
        assert "kinds of CPU" not in capsys.readouterr().err
        # rows from a machine of another kind (a node of a mixed cluster, a resume there):
        # the driver reads the notes at the end, and is quiet here because these models
        # compute alike on every kind (test_batch: the warning of those that do not)
        other = out / dataset.CPUS / "other.json"
        other.write_text(json.dumps({"cpu": "aarch64 dotprod"}))
        assert batch(str(folder), "--out", str(out), "--part-size", "3", *options) == 1
        err = capsys.readouterr().err
        assert "6 skipped (done before" in err and "1 failed" in err, err
        assert "kinds of CPU" not in err
        assert dataset.cpu_kinds(dataset._Files(str(out))) == sorted([here, "aarch64 dotprod"])
        assert_rows_equal(rows_of(out), rows_of(local))
    finally:
        ray.shutdown()
    parts = [row for table in received for row in table.to_pylist()]
    assert len(parts) == 5 == len(list(out.glob("part-*.parquet")))
    assert sum(json.loads(p["summary"])["inputs"] for p in parts) == 13
    for table in received:
        assert tuple(table.column_names) == ray_engine.SUMMARY_COLUMNS
        # per part: its name, 3 keys of 8 bytes, counts and at most a few error lines
        assert table.nbytes < 1000 * table.num_rows, table.nbytes
    for part in parts:
        assert set(json.loads(part["summary"])) == {
            "inputs",
            "retried",
            "rows",
            "faces",
            "failed",
            "reasons",
            "errors",
        }


def _committed(dest: Path) -> int:
    return len(list((dest / "_agegender" / "keys").glob("part-*.npy"))) if dest.exists() else 0


def test_ray_engine_kill_9_then_resume_equals_uninterrupted_run(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The driver killed (SIGKILL) after some parts were committed, its Ray instance
    with it; a second Ray run resumes: the rows equal the local engine's uninterrupted
    run, without duplicates, and every part left in DEST is committed."""
    folder, local = inputs
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "agegender", "batch", str(folder), "--out", str(out)]
    command += ["--engine", "ray", "--concurrency", "1", "--part-size", "1", "--no-progress"]
    env = _env(tmp_path)
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a speed limit
        while _committed(out) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        # the Ray processes this run started (its own session): gone before the resume
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, "the job ended before it was killed"
    before = _committed(out)
    assert 2 <= before < 13
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    # 1 if broken.png was left for the resume, 0 if it was among the committed parts
    assert again.returncode in (0, 1) and "Traceback" not in again.stderr, again.stderr
    assert f"{before} skipped (done before" in again.stderr, again.stderr
    got = rows_of(out)
    assert len({(r["path"], r["face"]) for r in got}) == len(got)  # no duplicates
    assert_rows_equal(got, rows_of(local))
    stems = {p.stem for p in out.glob("part-*")}
    assert stems == {p.stem for p in (out / "_agegender" / "keys").glob("part-*.npy")}
    assert not [p for p in out.rglob(".tmp-*")]


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


def test_a_ray_started_for_the_job_stops_its_monitor_before_the_gcs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ray.shutdown stops the GCS first; the autoscaler monitor, stopped after it, waits
    out Ray's grace period reporting to the stopped GCS. The engine stops the monitor of
    a Ray it started first, at once, and then every Ray process of the instance ends."""
    import psutil
    import ray
    from ray._private import node as ray_node

    from agegender.batch.ray_engine import stop_started_ray

    kills: list[tuple[str, bool]] = []
    kill = ray_node.Node._kill_process_type

    def recorded(self: Any, process_type: str, *args: Any, **kwargs: Any) -> Any:
        kills.append((process_type, bool(kwargs.get("allow_graceful", False))))
        return kill(self, process_type, *args, **kwargs)

    monkeypatch.setattr(ray_node.Node, "_kill_process_type", recorded)
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    node = ray._private.worker._global_node
    pids = [info.process.pid for infos in node.all_processes.values() for info in infos]
    stop_started_ray(ray)
    assert not ray.is_initialized()
    types = [process_type for process_type, _ in kills]
    assert types[0] == "monitor" and ("monitor", False) in kills, kills
    assert types.index("gcs_server") > 0 and types.count("monitor") == 1, kills
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    assert all(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in alive), alive


def test_a_failure_to_stop_the_monitor_first_still_stops_ray() -> None:
    """Ray's node API is internal: when stopping the monitor first fails, ray.shutdown
    still runs and stops everything."""
    from agegender.batch.ray_engine import stop_started_ray

    calls: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append("kill")
        raise OSError("no such process")

    node = SimpleNamespace(all_processes={"monitor": [], "gcs_server": []})
    node._kill_process_type = refuse
    fake = SimpleNamespace(
        _private=SimpleNamespace(worker=SimpleNamespace(_global_node=node)),
        shutdown=lambda: calls.append("shutdown"),
    )
    stop_started_ray(fake)
    assert calls == ["kill", "shutdown"]
    fake._private.worker = SimpleNamespace()  # another Ray: no _global_node
    stop_started_ray(fake)
    assert calls == ["kill", "shutdown", "shutdown"]


def test_without_the_drivers_metadata_rays_public_call_builds_the_dataset() -> None:
    """The engine computes each block's Ray Data metadata itself (the end-to-end test
    above refuses ``from_arrow_refs``, which would run a Ray task for it); where that
    metadata or Ray Data's internal classes are missing, the public call does the work."""
    from agegender.batch import ray_engine

    public = SimpleNamespace(data=SimpleNamespace(from_arrow_refs=lambda refs: ("public", refs)))
    assert ray_engine.from_blocks(public, ["ref"], [None]) == ("public", ["ref"])
    with pytest.MonkeyPatch.context() as patch:
        # a Ray release without this module
        patch.setitem(sys.modules, "ray.data._internal.logical.operators.from_operators", None)
        assert ray_engine.from_blocks(public, ["ref"], [object()]) == ("public", ["ref"])


def test_each_actor_reserves_an_equal_share_of_the_cpus() -> None:
    from agegender.batch.ray_engine import cpu_share

    assert cpu_share([2.0], 1) == 2.0
    assert cpu_share([2.0], 2) == 1.0
    assert cpu_share([16.0] * 100, 100) == 16.0
    assert cpu_share([16.0] * 4, 3) == 16.0  # 21.3 each would fit no node
    assert cpu_share([16.0, 4.0], 2) == 4.0  # no more than the smallest node has
    assert cpu_share([8.0, 8.0], 3) == 5.0  # whole CPUs from one up
    assert cpu_share([2.0], 3) == pytest.approx(2 / 3)  # more actors than CPUs
    assert cpu_share([0.0, 4.0], 4) == 1.0  # a node without CPUs (a GPU-only head) counts 0
    assert cpu_share([], 2) == 1.0


def test_an_actors_threads_follow_its_reservation() -> None:
    from agegender.batch.ray_engine import actor_config
    from agegender.config import EstimatorConfig

    config = EstimatorConfig.from_preset("default")
    one = actor_config(config, 1.0)
    assert (one.workers, one.threads) == (1, 1)
    assert one.with_overrides(workers=None, threads=None) == config  # nothing else changed
    assert (actor_config(config, 0.5).workers, actor_config(config, 0.5).threads) == (1, 1)
    sixteen = actor_config(config, 16.0)
    assert (sixteen.workers, sixteen.threads) == (4, 16)  # decode/detect: at most 4
    chosen = actor_config(config.with_overrides(workers=3, threads=2), 8.0)
    assert (chosen.workers, chosen.threads) == (3, 2)  # the job's own settings are kept


def test_without_concurrency_one_actor_per_cpu_or_gpu_share_at_most_one_per_part() -> None:
    from agegender.batch.ray_engine import actor_count as count

    assert count([2.0], [], 2) == 2  # this machine, 2,000 inputs in parts of 1,000
    assert count([2.0], [], 1) == 1  # one part: one actor (which then reserves both CPUs)
    assert count([16.0] * 100, [], 10**6) == 1600
    assert count([16.0] * 100, [], 10**6, num_cpus=4.0) == 400
    assert count([16.0] * 4, [1.0] * 4, 100, num_gpus=0.5) == 8  # two actors per GPU
    assert count([16.0], [], 100, num_cpus=0.0) == 16  # 0 reserved: still one per CPU
    assert count([0.0], [], 5) == 1  # no CPUs known (an autoscaling head): one


# Imported at start-up by every Python process of the job below (PYTHONPATH): in a Ray
# worker, reading a file named crash-* kills the process as a crash in a native decoder
# (SIGSEGV) would. The driver, which never reads the inputs with --engine ray, is spared.
_CRASHING_READER = """
import os, pathlib, signal, sys
if sys.argv and sys.argv[0].endswith("default_worker.py"):
    _read_bytes = pathlib.Path.read_bytes
    def read_bytes(self):
        if self.name.startswith("crash-"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return _read_bytes(self)
    pathlib.Path.read_bytes = read_bytes
"""


def test_an_input_that_kills_the_actor_process_is_an_error_row(tmp_path: Path) -> None:
    """An input whose reading kills the actor's process (a decoder's segfault, the OOM
    killer): Ray restarts the actor and retries the part, which then reads its inputs one
    at a time; the input the process died on twice is an error row, the job ends (it
    retried the part forever before: no end, no output) and the other rows are the local
    engine's."""
    folder = tmp_path / "in"
    make_images(folder, 5)
    (folder / "crash-1.jpg").write_bytes(b"\xff\xd8\xff\xe0 read by a crashing decoder")
    local = tmp_path / "local"
    assert batch(str(folder), "--out", str(local), "--part-size", "3") == 1
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASHING_READER)
    env = _env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "agegender", "batch", str(folder), "--out", str(out)]
    command += ["--engine", "ray", "--concurrency", "1", "--part-size", "3", "--no-progress"]
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = process.communicate(timeout=900)  # a hang guard, not a speed limit
    except subprocess.TimeoutExpired:
        pytest.fail("the job never ended: the part was retried without end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its Ray, left by a hung job
    assert process.returncode == 1, err
    assert "6 inputs done" in err and "1 failed" in err and "Traceback" not in err, err
    got = rows_of(out)
    crashed = [r for r in got if r["path"].endswith("crash-1.jpg")]
    assert len(crashed) == 1 and crashed[0]["face"] is None, crashed
    assert "the worker process died while reading it, 2 times" in crashed[0]["error"]
    want = [r for r in rows_of(local) if not r["path"].endswith("crash-1.jpg")]
    assert_rows_equal([r for r in got if r not in crashed], want)
    assert not list((out / "_agegender" / "inflight").iterdir())  # the notes are removed


HANG_GUARD_S = 600  # a hang guard for the jobs below, not a speed limit


def _job(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a batch command in its own session; its exit status and stderr. A job that
    never ends fails the test, and the Ray processes it left are killed either way."""
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = process.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail("the job never ended: its actors were restarted without end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its Ray, left by a hung job
    return process.returncode, err


def _one_error_line(err: str) -> str:
    """The job's one error line, its last: before it only the job's own lines (an input's
    error) and the line Ray's core prints for every job (README); no traceback, nor Ray's
    exception text or logs."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("agegender: error: "), err
    for line in lines[:-1]:
        assert line.startswith("agegender: ") or "core_worker.cc" in line, err
    for text in ("Traceback", "RayTaskError", "UserCodeException", "ActorDiedError"):
        assert text not in err, err
    return lines[-1]


def _with_hook(tmp_path: Path, code: str) -> dict[str, str]:
    """The test's environment with `code` as the sitecustomize of every Python process."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(code)
    env = _env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    return env


def _committed_inputs(dest: Path) -> int:
    import numpy as np

    return sum(len(np.load(p)) for p in (dest / "_agegender" / "keys").glob("part-*.npy"))


# In a Ray worker, writing the part of the inputs from number 6 on (its temporary file)
# fails as on a full disk; every other write, and the driver, are spared.
_FULL_DEST = r"""
import errno, os, re, sys
if sys.argv and sys.argv[0].endswith("default_worker.py"):
    _open = os.open
    def _failing_open(path, *args, **kwargs):
        name = os.path.basename(os.fsdecode(path))
        if re.fullmatch(r"\.tmp-\d+-part-.*-000006\.parquet", name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(path))
        return _open(path, *args, **kwargs)
    os.open = _failing_open
"""


def test_a_dest_failing_in_an_actor_is_one_line_and_resume_is_exact(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """An actor cannot write its part (DEST's disk full): the job ends with the local
    engine's one line, `--out DEST: cannot write it (...)`, and exit 2, not Ray's
    traceback; the parts committed before stay and the next run resumes exactly."""
    folder, local = inputs
    out = tmp_path / "full"
    command = [sys.executable, "-m", "agegender", "batch", str(folder), "--out", str(out)]
    command += ["--engine", "ray", "--concurrency", "1", "--part-size", "3", "--no-progress"]
    code, err = _job(command, _with_hook(tmp_path, _FULL_DEST))
    assert code == 2, err
    line = _one_error_line(err)
    assert line.startswith(f"agegender: error: --out {out}: cannot write it ("), line
    assert "No space left on device" in line and "the same command resumes" in line, line
    before = _committed_inputs(out)
    assert before < 13 and not list((out / "_agegender" / "keys").glob("part-*-000006.npy"))
    code, err = _job(command, _env(tmp_path))
    # 1 if broken.png was left for the resume, 0 if it was among the committed parts
    assert code in (0, 1) and "Traceback" not in err, err
    assert f"{before} skipped (done before" in err, err
    assert_rows_equal(rows_of(out), rows_of(local))
    stems = {p.stem for p in out.glob("part-*")}
    assert stems == {p.stem for p in (out / "_agegender" / "keys").glob("part-*.npy")}
    assert not list(out.rglob(".tmp-*"))


# In a Ray worker, loading a model (an ONNX Runtime session) fails as LOAD_FAULT says:
# "kill" kills the process (SIGKILL: the OOM killer, a crash in the runtime), "raise"
# raises; each failure leaves a file in LOAD_FAULT_DIR, and after LOAD_FAULT_TIMES of
# them (when given) the models load. The driver, which loads its own first, is spared.
_FAILING_LOADER = """
import os, sys
if sys.argv and sys.argv[0].endswith("default_worker.py") and os.environ.get("LOAD_FAULT"):
    import pathlib, signal
    import onnxruntime
    _init = onnxruntime.InferenceSession.__init__
    def _failing_init(self, *args, **kwargs):
        failures = pathlib.Path(os.environ["LOAD_FAULT_DIR"])
        times = os.environ.get("LOAD_FAULT_TIMES")
        if times is None or len(list(failures.iterdir())) < int(times):
            (failures / str(os.getpid())).touch()
            if os.environ["LOAD_FAULT"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected failure while loading")
        _init(self, *args, **kwargs)
    onnxruntime.InferenceSession.__init__ = _failing_init
"""


def test_actors_dying_while_loading_the_models_stop_the_job(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """An actor whose process dies while it loads the models (the OOM killer, a crash):
    Ray restarted it without end and the job never finished. Now its third death while
    loading stops the job with one line naming the cause and what to check, exit 2, the
    committed parts kept; an actor that dies twice and then loads is kept (Ray's restart),
    and that run resumes the job exactly."""
    folder, local = inputs
    out = tmp_path / "dying"
    options = ["--out", str(out), "--engine", "ray", "--concurrency", "1", "--part-size", "3"]
    command = [sys.executable, "-m", "agegender", "batch", *options, "--no-progress"]
    first_half = sorted(str(p) for p in folder.glob("img*"))[:6]
    code, err = _job([*command, *first_half], _env(tmp_path))
    assert code == 0, err
    assert _committed_inputs(out) == 6

    env = _with_hook(tmp_path, _FAILING_LOADER)
    deaths = tmp_path / "deaths"
    deaths.mkdir()
    code, err = _job(
        [*command, str(folder)], {**env, "LOAD_FAULT": "kill", "LOAD_FAULT_DIR": str(deaths)}
    )
    assert code == 2, err
    line = _one_error_line(err)
    assert "died 3 times while loading the models" in line, line
    assert "memory" in line and "--num-cpus" in line and "resumes" in line, line
    assert len(list(deaths.iterdir())) == 3  # three starts died; the fourth stopped the job
    assert _committed_inputs(out) == 6  # the parts committed before stay

    again = tmp_path / "deaths-again"
    again.mkdir()
    fault = {"LOAD_FAULT": "kill", "LOAD_FAULT_DIR": str(again), "LOAD_FAULT_TIMES": "2"}
    code, err = _job([*command, str(folder)], {**env, **fault})
    assert code == 1 and "Traceback" not in err, err  # broken.png
    assert len(list(again.iterdir())) == 2  # died twice, then loaded: Ray's restarts kept
    assert "6 skipped (done before" in err and "7 inputs done" in err, err
    assert_rows_equal(rows_of(out), rows_of(local))
    assert not list((out / "_agegender" / "inflight").iterdir())  # the notes are removed


def test_an_error_while_an_actor_loads_the_models_is_one_line(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A Python exception while an actor loads its models (a model file it cannot load)
    ends the job at once with that error's one line and exit 2, as the driver's own load
    would, instead of Ray's traceback of the actor's creation task."""
    folder, _ = inputs
    out = tmp_path / "unloadable"
    command = [sys.executable, "-m", "agegender", "batch", str(folder), "--out", str(out)]
    command += ["--engine", "ray", "--concurrency", "1", "--part-size", "3", "--no-progress"]
    failures = tmp_path / "failures"
    failures.mkdir()
    env = {
        **_with_hook(tmp_path, _FAILING_LOADER),
        "LOAD_FAULT": "raise",
        "LOAD_FAULT_DIR": str(failures),
    }
    code, err = _job(command, env)
    assert code == 2, err
    line = _one_error_line(err)
    assert "is not a loadable ONNX graph (injected failure while loading)" in line, line
    assert len(list(failures.iterdir())) == 1  # one actor start: no retry
    assert _committed_inputs(out) == 0


def test_an_actors_start_counts_the_deaths_of_its_earlier_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start notes without Ray: an actor notes its start (with the deaths of its
    earlier starts) before it loads the models and removes the note once they are loaded;
    the start that finds three deaths loads nothing; an error while loading is kept as
    one line; an actor that cannot start gives back that line instead of a part."""
    import pyarrow as pa

    from agegender import pipeline
    from agegender.batch import ray_engine
    from agegender.batch.dataset import INFLIGHT
    from agegender.batch.local import Work
    from agegender.config import EstimatorConfig
    from agegender.errors import AgegenderError

    dest = tmp_path / "dest"
    (dest / INFLIGHT).mkdir(parents=True)
    note = dest / INFLIGHT / "start-RUN-a1.json"
    seen: list[Any] = []
    failure: list[BaseException] = []

    def load(config: Any) -> str:
        seen.append(json.loads(note.read_text()))  # noted before the models load
        if failure:
            raise failure[0]
        return "estimator"

    monkeypatch.setattr(pipeline, "Estimator", load)
    monkeypatch.setattr(ray_engine, "_actor_id", lambda: "a1")
    settings = {
        "config": EstimatorConfig.from_preset("default"),
        "work": Work({}),
        "target": ray_engine.Target(str(dest), "RUN", "parquet", "DEST"),
        "cpus": 1.0,
    }
    worker = type("Worker", (ray_engine._Worker,), settings)

    def stop_line(actor: Any) -> str:
        table = actor(pa.table({"seq": pa.array([0], pa.int64())}))
        assert tuple(table.column_names) == ray_engine.SUMMARY_COLUMNS
        summary = json.loads(table.column("summary")[0].as_py())
        assert set(summary) == {"stop"} and table.column("keys")[0].as_py() == b""
        return str(summary["stop"])

    assert worker().failed is None and seen == [{"deaths": 0}] and not note.exists()
    note.write_text('{"deaths": 0}')  # that start died loading: Ray restarted the actor
    assert worker().failed is None and seen[-1] == {"deaths": 1} and not note.exists()
    note.write_text('{"deaths": 2}')  # three starts died
    stopped = worker()
    assert len(seen) == 2  # nothing loaded
    assert "died 3 times while loading the models" in stop_line(stopped)
    assert "--num-cpus" in str(stopped.failed) and "resumes" in str(stopped.failed)

    note.unlink()
    failure.append(RuntimeError("no memory for the session\nsecond line"))
    line = stop_line(worker())
    assert line == (
        "--engine ray: an actor could not load the models (RuntimeError: no memory for the session)"
    )
    failure[0] = AgegenderError("model m: not a loadable ONNX graph")
    assert stop_line(worker()) == "model m: not a loadable ONNX graph"


def test_an_actor_with_other_model_files_than_the_drivers_stops_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Ray: an actor whose node loaded other model files than the driver (an INT8
    copy built by another ONNX Runtime, a file replaced on one node) gives back one line
    naming the model instead of parts whose rows would carry the driver's sha256."""
    import pyarrow as pa

    from agegender import pipeline
    from agegender.batch import job, ray_engine
    from agegender.batch.local import Work
    from agegender.config import EstimatorConfig

    driver = [
        {"role": "age", "id": "cc0-age-v1", "sha256": "a" * 64},
        {"role": "detector", "id": "centerface-int8", "sha256": "b" * 64},
    ]
    loaded: list[dict[str, str]] = [dict(m) for m in driver]
    monkeypatch.setattr(pipeline, "Estimator", lambda config: "estimator")
    monkeypatch.setattr(job, "model_identities", lambda estimator: loaded)
    work = Work({}, models=tuple(driver))
    settings = {
        "config": EstimatorConfig.from_preset("default"),
        "work": work,
        "target": ray_engine.Target(str(tmp_path / "dest"), "RUN", "parquet", "DEST"),
        "cpus": 1.0,
    }
    worker = type("Worker", (ray_engine._Worker,), settings)
    assert worker().failed is None  # the same files: it starts
    loaded[1] = {"role": "detector", "id": "centerface-int8", "sha256": "c" * 64}
    stopped = worker()
    table = stopped(pa.table({"seq": pa.array([0], pa.int64())}))
    line = json.loads(table.column("summary")[0].as_py())["stop"]
    assert line.startswith("--engine ray: the actor on ") and "\n" not in line
    assert "centerface-int8: sha256 bbbbbbbbbbbb on the driver, sha256 cccccccccccc there" in line
    del loaded[1]  # a model the driver has and the actor does not
    assert "centerface-int8: sha256 bbbbbbbbbbbb on the driver, not loaded there" in str(
        worker().failed
    )
    loaded.append({"role": "age", "id": "other", "sha256": "d" * 64})
    loaded.insert(1, {"role": "detector", "id": "centerface-int8", "sha256": "b" * 64})
    assert "loaded other models than the driver (cc0-age-v1, centerface-int8, other" in str(
        worker().failed
    )
