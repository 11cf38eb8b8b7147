"""The Ray engine: Ray Data's batch-inference pattern over the job's pending inputs.

    driver: pending inputs (keys checked against DEST) -> blocks of --part-size inputs
            in Ray's object store (never a whole list in the driver's memory)
    Ray Data: from_arrow_refs -> map_batches(_Worker, concurrency=N, num_cpus, num_gpus):
            an actor pool, each actor loads one Estimator once and runs ``local.process``
    driver: each output batch (one row per input: its key and its rows) is committed as a
            part by dataset.py, so the exactly-once protocol is the local engine's

``--address`` joins a running cluster (``auto``, ``ray://host:10001``); without it a Ray
instance is started on this machine and stopped at the end. Workers read the inputs
themselves (a shared file system or an object store) and need agegender and its models
(installed in the cluster's image or shipped by a runtime environment; README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .job import Job, Pending, Tally, pending
from .local import Work, process
from .sources import Input

if TYPE_CHECKING:
    import pyarrow as pa

    from ..config import EstimatorConfig


def _to_table(entries: list[Pending]) -> pa.Table:
    import pyarrow as pa

    return pa.table(
        {
            "path": [e.item.path for e in entries],
            "size": pa.array([e.item.size for e in entries], pa.int64()),
            "mtime_ns": pa.array([e.item.mtime_ns for e in entries], pa.int64()),
            "remote": pa.array([e.item.remote for e in entries], pa.bool_()),
            "key": pa.array([e.key for e in entries], pa.uint64()),
            "sha256": pa.array([e.sha256 for e in entries], pa.string()),
            "error": pa.array([e.error for e in entries], pa.string()),
        }
    )


def _entries(table: pa.Table) -> Iterator[Pending]:
    for row in table.to_pylist():
        item = Input(row["path"], row["size"], row["mtime_ns"], row["remote"])
        yield Pending(item, int(row["key"]), row["sha256"], None, row["error"])


class _Worker:
    """One actor: an Estimator loaded once, run on batches of pending inputs (a subclass
    made per job sets ``config`` and ``work``)."""

    config: EstimatorConfig
    work: Work

    def __init__(self) -> None:
        from ..pipeline import Estimator

        logging.getLogger("PIL").setLevel(logging.CRITICAL)
        self.estimator = Estimator(self.config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        keys, payloads = [], []
        for entry, rows in process(self.estimator, _entries(batch), self.work):
            keys.append(entry.key)
            payloads.append(json.dumps(rows))
        return pa.table({"key": pa.array(keys, pa.uint64()), "rows": payloads})


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


def _run_ray(job: Job, args: argparse.Namespace) -> Tally:
    if not args.address and "ray" not in sys.modules:
        # A Ray started here serves this machine only: it binds to the loopback address
        # (Ray's switch for single-machine use), never to a network interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import pyarrow as pa
    import ray
    from tqdm import tqdm

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
        ray.init(
            # "local": a new instance, never one a stale /tmp/ray record points at
            address=args.address or "local",
            include_dashboard=False,
            logging_level=logging.INFO if verbose else logging.ERROR,
            log_to_driver=verbose,
            configure_logging=True,
        )
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        if hasattr(context, "enable_rich_progress_bars"):
            context.enable_rich_progress_bars = False
        refs: list[Any] = []
        chunk: list[Pending] = []
        total = 0
        for entry in pending(job, tally):
            if entry.data is not None:  # --key hash read it: the actor reads it again
                entry = Pending(entry.item, entry.key, entry.sha256, None, entry.error)
            chunk.append(entry)
            if len(chunk) >= job.part_size:
                refs.append(ray.put(_to_table(chunk)))
                total += len(chunk)
                chunk = []
        if chunk:
            refs.append(ray.put(_to_table(chunk)))
            total += len(chunk)
        if not refs:
            return tally
        tally.started = time.monotonic()
        # The configuration travels with the actor class (pickled by value), not as
        # constructor arguments held in the object store.
        worker = type("Worker", (_Worker,), {"config": job.config, "work": Work.of(job)})
        dataset = ray.data.from_arrow_refs(refs).map_batches(
            worker,
            batch_size=job.part_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=args.concurrency),
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus or None,
        )
        bar = tqdm(total=total, unit="img", file=sys.stderr, disable=not job.progress)

        def report(line: str) -> None:
            if job.progress:
                bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

        thresholds = job.config.age_thresholds
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                assert isinstance(batch, pa.Table)
                keys = [int(k) for k in batch.column("key").to_pylist()]
                part: list[dict[str, Any]] = []
                for text in batch.column("rows").to_pylist():
                    rows = json.loads(text)
                    tally.add(rows, report)
                    part.extend(rows)
                if keys:
                    job.dataset.commit(part, keys, thresholds)
                bar.update(len(keys))
        finally:
            bar.close()
    finally:
        if started_here:
            ray.shutdown()
    return tally
