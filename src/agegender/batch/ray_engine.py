"""The Ray engine: Ray Data's batch-inference pattern over the job's pending inputs.

    driver: pending inputs (keys checked against DEST) -> blocks of --part-size inputs
            in Ray's object store (never a whole list in the driver's memory), each input
            numbered in input order
    Ray Data: the blocks (their metadata computed by the driver, ``from_blocks``) ->
            map_batches(_Worker, concurrency=N, num_cpus, num_gpus):
            an actor pool, each actor loads one Estimator once, runs ``local.process``
            and writes the batch's part file to DEST itself (``dataset.write_part``:
            temporary name + rename, or one whole object on an object store), named after
            the run and its first input's number (a retried task writes the same name)
    driver: receives one small summary per part (its name, its input keys, its attempt
            records, counts, the first errors: never rows) and commits the part by
            writing its keys (dataset.py): the exactly-once protocol is the local
            engine's, and the driver's work per part is two small writes; or, from an
            actor that cannot go on (DEST failing, models it cannot load, its process
            dying while it loads them), a summary holding only the job's one error line,
            which the driver raises as the local engine would (Ray Data hands a UDF's
            exception to the driver as its traceback's text only, not the exception)

``--address`` joins a running cluster (``auto``, ``ray://host:10001``); without it a Ray
instance is started on this machine and stopped at the end. Workers read the inputs and
write the parts themselves, so inputs and DEST must be reachable from every node (an
object store or a shared file system), and workers need agegender and its models
(installed in the cluster's image or shipped by a runtime environment; README).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AgegenderError
from . import sources
from .dataset import writing
from .job import Job, PartBuffer, Pending, Tally, pending
from .local import Work, process
from .sources import Input

if TYPE_CHECKING:
    import pyarrow as pa

    from ..config import EstimatorConfig


# The columns of what an actor returns for a part: nothing row-sized (tests check it).
SUMMARY_COLUMNS = ("part", "keys", "attempts", "summary")
ADDRESS_TIMEOUT_S = 5.0  # --address: how long a cluster's address may take to answer
# An input a Ray actor's process died on this many times (each time restarted by Ray, the
# part retried one input at a time) is an error row instead of a retry without end.
DEATHS_PER_INPUT = 2
# An actor whose process died this many times while loading its models (each time
# restarted by Ray) stops the job with one line instead of a restart without end.
START_DEATHS = 3


def _to_table(entries: list[Pending], first: int) -> pa.Table:
    import pyarrow as pa

    return pa.table(
        {
            "seq": pa.array(range(first, first + len(entries)), pa.int64()),
            "path": [e.item.path for e in entries],
            "size": pa.array([e.item.size for e in entries], pa.int64()),
            "mtime_ns": pa.array([e.item.mtime_ns for e in entries], pa.int64()),
            "remote": pa.array([e.item.remote for e in entries], pa.bool_()),
            "unlisted": pa.array([e.item.unlisted for e in entries], pa.bool_()),
            "key": pa.array([e.key for e in entries], pa.uint64()),
            "sha256": pa.array([e.sha256 for e in entries], pa.string()),
            "error": pa.array([e.error for e in entries], pa.string()),
            "attempt": pa.array([e.attempt for e in entries], pa.int32()),
        }
    )


def block_metadata(table: pa.Table) -> Any:
    """Ray Data's metadata (and schema) of one block, computed here in the driver by the
    function ``from_arrow_refs`` runs as a Ray task; None where this Ray has no such
    function (the dataset is then made by ``from_arrow_refs`` itself)."""
    try:
        from ray.data.read_api import get_table_block_metadata_schema
    except ImportError:
        return None
    return get_table_block_metadata_schema(table)


def from_blocks(ray: Any, refs: list[Any], metadata: list[Any]) -> Any:
    """A Ray Dataset of the Arrow blocks in `refs`, as ``ray.data.from_arrow_refs`` makes
    it, from the blocks' metadata computed by the driver when it made them.
    ``from_arrow_refs`` computes that metadata in a Ray task, which waits for a worker
    process to import Ray Data before the job can start: 1.0-1.2 s of every job on this
    machine, against 0.1 s here. The dataset is put together from Ray Data's internal
    classes, as ``from_arrow_refs`` itself does; where they differ in another Ray release
    (or the metadata could not be computed) the public call does the work."""
    if all(entry is not None for entry in metadata):
        try:
            from ray.data._internal.logical.interfaces import LogicalPlan
            from ray.data._internal.logical.operators.from_operators import FromArrow
            from ray.data._internal.stats import DatasetStats
            from ray.data.dataset import MaterializedDataset

            context = ray.data.DataContext.get_current().copy()
            stats = DatasetStats(metadata={"FromArrow": metadata}, parent=None)
            plan = LogicalPlan(FromArrow(refs, metadata), context)
            return MaterializedDataset(plan, context, stats)
        except (ImportError, AttributeError, TypeError) as error:
            logging.getLogger(__name__).debug("Ray Data's internal classes: %s", error)
    return ray.data.from_arrow_refs(refs)


def _entries(table: pa.Table) -> Iterator[Pending]:
    for row in table.to_pylist():
        item = Input(
            row["path"], row["size"], row["mtime_ns"], row["remote"], unlisted=row["unlisted"]
        )
        yield Pending(item, int(row["key"]), row["sha256"], None, row["error"], int(row["attempt"]))


def cpu_share(node_cpus: list[float], concurrency: int) -> float:
    """CPUs each of `concurrency` actors reserves by default: an equal share of the
    cluster's (whole CPUs from one up), never more than its smallest node has, so every
    actor can be placed; under one CPU each when there are more actors than CPUs."""
    cpus = [c for c in node_cpus if c > 0]
    if not cpus:
        return 1.0
    share = sum(cpus) / concurrency
    if share >= 1:
        share = float(math.floor(share))
    return min(share, min(cpus))


def actor_count(
    node_cpus: list[float],
    node_gpus: list[float],
    parts: int,
    num_cpus: float | None = None,
    num_gpus: float = 0.0,
) -> int:
    """Actors when ``--concurrency`` is not given: one per ``--num-gpus`` share of the
    cluster's GPUs, else one per ``--num-cpus`` share (one per CPU without it), never
    more than there are parts to do (an actor with no part would only load models)."""
    if num_gpus:
        count = math.floor(sum(node_gpus) / num_gpus)
    else:
        count = math.floor(sum(node_cpus) / (num_cpus or 1.0))
    return max(1, min(count, parts))


def actor_config(config: EstimatorConfig, cpus: float) -> EstimatorConfig:
    """An actor's Estimator sized to the CPUs it reserved, not to the node's: its decode
    and detect threads and each model's ONNX Runtime threads (unless the job sets them),
    so actors sharing a node do not each start a thread per core of it."""
    n = max(1, round(cpus))
    workers = config.workers or min(4, n)
    return config.with_overrides(workers=workers, threads=config.threads or n)


@dataclass(frozen=True)
class Target:
    """Where and how an actor writes its parts (picklable: travels with the actor class)."""

    dest: str
    run: str
    sink: str
    shown: str  # DEST as the job was given it, for the error lines


class _Worker:
    """One actor: an Estimator loaded once, run on batches of pending inputs, each batch
    written as one part file by the actor (a subclass made per job sets ``config``,
    ``work``, ``target`` and the ``cpus`` it reserves)."""

    config: EstimatorConfig
    work: Work
    target: Target
    cpus: float

    def __init__(self) -> None:
        from .dataset import _Files

        logging.getLogger("PIL").setLevel(logging.CRITICAL)
        # The job's one error line when this actor cannot start, given back by its first
        # call instead of a part (an exception here would reach the driver as Ray's
        # traceback of the actor's creation task).
        self.failed: str | None = None
        try:
            self.files = _Files(self.target.dest)
            self._start()
        except AgegenderError as error:  # a model it cannot load, DEST failing, ...
            self.failed = str(error)
        except Exception as error:
            self.failed = (
                "--engine ray: an actor could not load the models "
                f"({type(error).__name__}: {sources.one_line(error)})"
            )

    def _start(self) -> None:
        """Load the models, noted first in ``_agegender/inflight/`` (one note per actor
        of the run, removed once they are loaded). A note found by an actor's start means
        its process died loading them (killed: out of memory; a crash in the model
        runtime) and Ray restarted it, which it did without end: after START_DEATHS such
        deaths the actor loads nothing and stops the job. An actor lost after its start
        (its node gone) is restarted by Ray as before: its note was removed. The note
        comes before the model code is imported (a crash there counts too)."""
        from .dataset import INFLIGHT

        actor = _actor_id()
        note = f"{INFLIGHT}/start-{self.target.run}-{actor}.json" if actor else None
        if note is not None:
            earlier = self._read_note(note)
            deaths = 0
            if earlier is not None:  # the last start of this actor died loading
                before = earlier.get("deaths")
                deaths = (before if isinstance(before, int) else 0) + 1
            if deaths >= START_DEATHS:
                raise AgegenderError(
                    f"--engine ray: an actor's process died {deaths} times while loading "
                    "the models (killed, as by the out-of-memory killer, or a crash in "
                    "the model runtime); check the memory each actor has (each loads its "
                    "own models: about 350 MB with the default preset) and give fewer "
                    "actors per node (a larger --num-cpus, or --concurrency); the parts "
                    "committed so far stay and the same command resumes"
                )
            with writing(self.target.shown):
                self.files.write_atomic(note, json.dumps({"deaths": deaths}).encode())
        from ..pipeline import Estimator

        self.estimator = Estimator(actor_config(self.config, self.cpus))
        self._check_models()
        if note is not None:
            with writing(self.target.shown):
                self.files.delete(note)

    def _check_models(self) -> None:
        """The model files this actor loaded must be the driver's (the manifest and every
        row's model_sha256 name those): a node with other files (an INT8 copy built by
        another ONNX Runtime, a file edited or replaced on one node) would put its rows
        under the driver's names."""
        from .job import model_identities

        driver = list(self.work.models)
        if not driver:
            return
        here = model_identities(self.estimator)
        if here == driver:
            return
        mine = {(m["role"], m["id"]): m["sha256"] for m in here}
        for model in driver:
            sha = mine.get((model["role"], model["id"]))
            if sha != model["sha256"]:
                found = f"sha256 {sha[:12]}" if sha else "not loaded"
                raise AgegenderError(
                    f"--engine ray: the actor on {socket.gethostname()} loaded other model "
                    f"files than the driver ({model['id']}: sha256 {model['sha256'][:12]} "
                    f"on the driver, {found} there); give every node the same files (a "
                    "shared model store: AGEGENDER_HOME) and run the same command again"
                )
        raise AgegenderError(
            f"--engine ray: the actor on {socket.gethostname()} loaded other models than "
            f"the driver ({', '.join(m['id'] for m in here)} there); give every node the "
            "same files and run the same command again"
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The batch's part written to DEST and its summary; or, where this actor cannot
        go on (it could not start, DEST fails, any error of this project's), the job's
        one error line (``_stop``), as the local engine stops on the same errors."""
        if self.failed is not None:
            return _stop(self.failed)
        try:
            return self._part(batch)
        except AgegenderError as error:  # DEST failing: dataset.writing's line
            return _stop(str(error))

    def _part(self, batch: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        from .dataset import INFLIGHT, _npy, attempt_table, part_stem, write_part

        empty = pa.table({name: pa.array([], pa.binary()) for name in SUMMARY_COLUMNS})
        if not batch.num_rows:
            return empty
        # Named after the batch's first input: unique in the run, the same if Ray retries
        # the task (the retry replaces the file; the driver commits it once).
        stem = part_stem(self.target.run, int(batch.column("seq")[0].as_py()))
        note = f"{INFLIGHT}/{stem}.json"
        entries = list(_entries(batch))
        crashed = self._read_note(note)
        if crashed is None:
            self._write_note(note, {"input": None, "deaths": {}})
            results = process(self.estimator, entries, self.work)
        else:  # an actor died doing this part: Ray restarted it and retries the task
            results = self._one_at_a_time(entries, note, crashed)
        tally = Tally()
        part = PartBuffer()
        for entry, found in results:
            tally.add(found, None, entry.attempt)
            part.add(entry, found)
        rows, keys, attempts = part.rows, part.keys, part.attempts
        with writing(self.target.shown):  # DEST failing: one line, as the local engine
            if not keys:
                self.files.delete(note)
                return empty
            tracks = self.work.video_rows == "tracks"
            write_part(self.files, stem, rows, self.target.sink, self.work.thresholds, tracks)
            self.files.delete(note)
        return pa.table(
            {
                "part": pa.array([stem.encode()], pa.binary()),
                "keys": pa.array([np.asarray(keys, dtype=np.uint64).tobytes()], pa.binary()),
                "attempts": pa.array(
                    [_npy(attempt_table(attempts)) if attempts else b""], pa.binary()
                ),
                "summary": pa.array([json.dumps(tally.summary_of_part()).encode()], pa.binary()),
            }
        )

    def _write_note(self, note: str, state: dict[str, Any]) -> None:
        with writing(self.target.shown):
            self.files.write_atomic(note, json.dumps(state).encode())

    def _read_note(self, note: str) -> dict[str, Any] | None:
        """The note an earlier attempt of this part (or start of this actor) left, its
        process having died (killed, a crash in a decoder, out of memory), or None on a
        first attempt."""
        try:
            data = self.files.read(note)
        except OSError:  # none (FileNotFoundError): a first attempt
            return None
        try:
            found = json.loads(data)
        except ValueError:  # cut short as its writer died: a death, input unknown
            found = {}
        return found if isinstance(found, dict) else {}

    def _one_at_a_time(
        self, entries: list[Pending], note: str, crashed: dict[str, Any]
    ) -> Iterator[tuple[Pending, list[dict[str, Any]]]]:
        """A part whose actor died: its inputs one at a time, each named in the note
        before it is read, so the next retry knows which input the process died on. An
        input the process died on DEATHS_PER_INPUT times is an error row, not read again
        (without this Ray restarted the actor and retried the part forever: the job never
        ended)."""
        deaths = {int(seq): int(n) for seq, n in dict(crashed.get("deaths") or {}).items()}
        last = crashed.get("input")
        if isinstance(last, int):
            deaths[last] = deaths.get(last, 0) + 1
        for seq, entry in enumerate(entries):
            died = deaths.get(seq, 0)
            if died >= DEATHS_PER_INPUT and entry.error is None:
                entry.error = (
                    f"{entry.item.path}: the worker process died while reading it, {died} "
                    "times (killed, a crash in a decoder, or out of memory)"
                )
            else:
                self._write_note(note, {"input": seq, "deaths": deaths})
            yield from process(self.estimator, [entry], self.work)


def _actor_id() -> str | None:
    """The id of the Ray actor this runs in (kept by Ray when it restarts the actor), or
    None outside one."""
    import ray

    if not ray.is_initialized():
        return None
    actor: str | None = ray.get_runtime_context().get_actor_id()
    return actor


def _stop(line: str) -> pa.Table:
    """What an actor gives back instead of a part when the job cannot go on: a summary
    holding only the job's one error line (the driver raises it)."""
    import pyarrow as pa

    columns = {name: pa.array([b""], pa.binary()) for name in SUMMARY_COLUMNS}
    columns["summary"] = pa.array([json.dumps({"stop": line}).encode()], pa.binary())
    return pa.table(columns)


def _summaries(dataset: Any) -> Generator[pa.Table, None, None]:
    """The actors' part summaries as they arrive (a seam for tests: what the driver gets).
    No prefetching: with Ray Data's default of one batch, each summary reached the driver
    only when the next part was done, so a finished part stayed uncommitted (redone after
    a crash) for as long as its successor took."""
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


def run_ray(job: Job, args: argparse.Namespace) -> Tally:
    """The job on Ray. Ray reconfigures the logging of the process that starts it (in the
    test suite it raised the root handlers' levels to ERROR, which silenced this project's
    warnings for the rest of the process): the root handlers' levels are put back after."""
    levels = [(handler, handler.level) for handler in logging.getLogger().handlers]
    try:
        return _run_ray(job, args)
    finally:
        for handler, level in levels:
            handler.setLevel(level)


def _check_resources(
    args: argparse.Namespace, node_cpus: list[float], node_gpus: list[float], joined: bool
) -> None:
    """An actor that asks for more than any node has would wait forever: on a Ray started
    for this job nothing can ever add it (an error); on a cluster an autoscaler might (a
    warning)."""
    problems = [
        f"--num-{kind.lower()}s {asked:g}: no node has that many {kind}s (the largest has "
        f"{largest:g})"
        for kind, asked, largest in (
            ("CPU", args.num_cpus, max(node_cpus, default=0.0)),
            ("GPU", args.num_gpus, max(node_gpus, default=0.0)),
        )
        if asked and asked > largest
    ]
    if not problems:
        return
    if not joined:
        raise AgegenderError(f"{problems[0]}; its actors could never start")
    for problem in problems:
        print(
            f"agegender: warning: {problem} now; the actors wait until one joins",
            file=sys.stderr,
        )


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a Ray started here binds to loopback


def require_ray_data(address: str | None) -> None:
    """Import Ray Data (the command's first import of Ray), or one line naming the extra
    that brings it. ``import ray`` alone is not enough: a plain ``pip install ray`` has
    no pandas, and ``import ray.data`` then fails deep inside the job, after DEST was made.

    A Ray started here (no --address) serves this machine only: it binds to the loopback
    address (Ray's switch for single-machine use), never to a network interface. Ray
    reads the switch once, when it is first imported, so it is set before."""
    if not address and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray.data  # noqa: F401
    except ImportError as error:
        missing = f" ({error.name} is missing)" if error.name else ""
        raise AgegenderError(
            f"--engine ray needs Ray Data{missing}: pip install 'agegender[ray]'"
        ) from None


def check_address(address: str | None) -> None:
    """Before any work: a host:port (or ray://host:port) that takes no connection is one
    line, not a wait (Ray retries a GCS it cannot reach for minutes)."""
    if not address or address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise AgegenderError(f"--address {address}: give auto, HOST:PORT or ray://HOST:PORT")
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as error:
        raise AgegenderError(
            f"--address {address}: nothing answers there ({error.strerror or error})"
        ) from None


def connect_error(address: str | None, error: BaseException) -> str:
    """The one line for a Ray that could not be started or joined. Ray joins an address
    given as HOST:PORT without token authentication (only ``auto`` turns it on by
    itself), so a cluster that uses it, as ``ray start`` does on a machine holding a Ray
    token, refuses the job after 20 s of retries with only "Failed to connect": the line
    names the likely fix."""
    what = f"--address {address}" if address else "starting Ray"
    line = f"{what}: {sources.one_line(error)}"
    explicit = address not in (None, "", "auto", "local")
    if explicit and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        line += (
            " (if the cluster uses token authentication, as `ray start` does where a Ray "
            "token exists, set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or "
            "~/.ray/auth_token; --address auto does that by itself for a Ray on this machine)"
        )
    return line


def _run_ray(job: Job, args: argparse.Namespace) -> Tally:
    # Ray is imported already, after its loopback switch (require_ray_data, the command)
    import numpy as np
    import pyarrow as pa
    import ray
    from tqdm import tqdm

    from .dataset import load_attempts

    tally = Tally()
    verbose = bool(getattr(args, "verbose", False))
    if not verbose:  # Ray's own notices (token setup, execution plans) stay out of stderr
        import ray.data  # configures its loggers: console at INFO, a file in the session

        logging.getLogger("ray").setLevel(logging.ERROR)
        for handler in logging.getLogger("ray.data").handlers:
            if (
                not isinstance(handler, logging.FileHandler)
                and "File" not in type(handler).__name__
            ):
                handler.setLevel(logging.ERROR)
    started_here = not ray.is_initialized()
    if started_here:
        if not args.address:
            # Ray runs its workers at niceness 15 by default: on a machine with other
            # work the actors (where the models run) would get a few percent of a core.
            # A Ray started for this job runs them at the job's own priority.
            os.environ.setdefault("RAY_worker_niceness", "0")
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(
                # "local": a new instance, never one a stale /tmp/ray record points at
                address=args.address or "local",
                include_dashboard=False,
                logging_level=logging.INFO if verbose else logging.ERROR,
                log_to_driver=verbose,
                configure_logging=True,
            )
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise AgegenderError(connect_error(args.address, error)) from None
        finally:
            # ray.init takes SIGTERM (its core worker's native handler printed a stack
            # dump and ended the job with status 15): the command's own handler again, so
            # a job stopped by SIGTERM unwinds, stops this Ray and exits 143 (cli).
            if sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, sigterm)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        if hasattr(context, "enable_rich_progress_bars"):
            context.enable_rich_progress_bars = False
        refs: list[Any] = []
        metadata: list[Any] = []
        chunk: list[Pending] = []
        total = 0

        def put(entries: list[Pending], first: int) -> None:
            table = _to_table(entries, first)
            metadata.append(block_metadata(table))
            refs.append(ray.put(table))

        for entry in pending(job, tally):
            if entry.data is not None:  # --key hash read it: the actor reads it again
                entry = Pending(
                    entry.item, entry.key, entry.sha256, None, entry.error, entry.attempt
                )
            chunk.append(entry)
            if len(chunk) >= job.part_size:
                put(chunk, total)
                total += len(chunk)
                chunk = []
        if chunk:
            put(chunk, total)
            total += len(chunk)
        # The actors' parts are numbered by their first input (0 .. total-1): a part the
        # driver writes itself (Dataset.retire_relisted) is numbered after them
        job.dataset.seq = total
        if not refs:
            return tally
        tally.started = time.monotonic()
        dest = job.dataset.dest
        if not sources.is_uri(dest):
            dest = os.path.abspath(dest)  # an actor's working folder is not the driver's
        target = Target(dest, job.dataset.run, job.dataset.sink, job.dataset.dest)
        # The configuration travels with the actor class (pickled by value), not as
        # constructor arguments held in the object store.
        alive = [node for node in ray.nodes() if node.get("Alive")]
        node_cpus = [node["Resources"].get("CPU", 0.0) for node in alive]
        node_gpus = [node["Resources"].get("GPU", 0.0) for node in alive]
        _check_resources(args, node_cpus, node_gpus, joined=bool(args.address) or not started_here)
        concurrency = args.concurrency
        if concurrency is None:
            concurrency = actor_count(node_cpus, node_gpus, len(refs), args.num_cpus, args.num_gpus)
        else:  # an actor per part at most: more would load their models and idle
            concurrency = min(concurrency, len(refs))
        cpus = args.num_cpus
        if cpus is None:
            cpus = cpu_share(node_cpus, concurrency)
        settings = {"config": job.config, "work": Work.of(job), "target": target, "cpus": cpus}
        worker = type("Worker", (_Worker,), settings)
        dataset = from_blocks(ray, refs, metadata).map_batches(
            worker,
            batch_size=job.part_size,
            batch_format="pyarrow",
            # one batch in flight per actor: with more, the first actor to start queues
            # several parts while the others idle (2 parts, 2 actors: one did both)
            compute=ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus,
            num_gpus=args.num_gpus or None,
        )
        bar = tqdm(total=total, unit="img", file=sys.stderr, disable=not job.progress)

        def report(line: str) -> None:
            if job.progress:
                bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

        summaries = _summaries(dataset)
        try:
            for batch in summaries:
                assert isinstance(batch, pa.Table)
                for part in batch.to_pylist():
                    summary = json.loads(part["summary"])
                    if "stop" in summary:  # an actor cannot go on: the job's one line
                        raise AgegenderError(str(summary["stop"]))
                    keys = np.frombuffer(part["keys"], dtype=np.uint64)
                    attempts = part["attempts"]
                    records = load_attempts(attempts).tolist() if attempts else None
                    job.dataset.commit_keys(part["part"].decode(), keys, records)
                    tally.merge(summary, report)
                    bar.update(summary["inputs"])
        finally:
            summaries.close()  # on a stop: Ray Data's execution ends (its actors go)
            bar.close()
        _remove_notes(job)
    finally:
        if started_here:
            stop_started_ray(ray)
    return tally


def _remove_notes(job: Job) -> None:
    """The notes in ``_agegender/inflight/`` the job's actors left, gone once the job is
    done: a start note of an actor ended while it loaded the models (Ray Data stops the
    pool's actors with the job), a note's temporary copy left by an actor process that
    died while writing it. A job that stopped leaves its notes to the next run, which
    removes every note, and so does a store failing here (the job's parts are all
    committed: it is not failed for a note)."""
    from .dataset import INFLIGHT

    files = job.dataset.files
    try:
        for name in files.names(INFLIGHT):
            if f"-{job.dataset.run}-" in name:
                files.delete(f"{INFLIGHT}/{name}")
    except OSError as error:
        logging.getLogger(__name__).debug("removing the actors' notes: %s", error)


def stop_started_ray(ray: Any) -> None:
    """Stop the Ray instance this job started. ``ray.shutdown`` stops the GCS before
    Ray's autoscaler monitor, whose SIGTERM handler then tries to report its own end to
    the stopped GCS and is killed after Ray's one-second grace period: a second of every
    job (1.7 s of shutdown, measured; 0.5 s with the monitor stopped first). On an
    instance started for this job alone the monitor has nothing to scale and no driver
    to tell, so it is stopped at once before the rest. Ray's node API is internal: where
    it differs or fails, ``ray.shutdown`` alone does the whole work."""
    try:
        from ray._private import ray_constants

        node = ray._private.worker._global_node
        monitor = ray_constants.PROCESS_TYPE_MONITOR
        if node is not None and monitor in node.all_processes:
            node._kill_process_type(monitor, check_alive=False, allow_graceful=False, wait=True)
    except Exception as error:  # any failure leaves the monitor to ray.shutdown
        logging.getLogger(__name__).debug("stopping Ray's monitor first: %s", error)
    finally:
        ray.shutdown()
