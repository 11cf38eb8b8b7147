"""``agegender batch``: resumable, exactly-once jobs over many images into a dataset."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import AgegenderError
from .options import add_estimator_options, add_input_options, config_from_args, number
from .predict import _quiet_libraries

if TYPE_CHECKING:
    from ..batch.dataset import Dataset

DEFAULT_PART_SIZE = 1000


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "batch",
        help="resumable job over many images into a Parquet (JSONL, CSV) dataset",
        description="Estimate age and gender of every face in many images into a dataset "
        "folder of part files. Run it again with the same --out after a crash: inputs "
        "already done are skipped, and the dataset ends as an uninterrupted run's.",
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image/video files, folders (recursive; hidden names skipped), globs, lists "
        "of paths (.txt/.lst one a line, .csv 'path' column, .parquet 'path' column) and "
        "object-store URIs (s3://bucket/prefix/)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DEST", help="dataset folder (local or s3://...)"
    )
    parser.add_argument(
        "--format",
        choices=["parquet", "jsonl", "csv"],
        default="parquet",
        help="part file format (default: %(default)s)",
    )
    parser.add_argument(
        "--key",
        choices=["stat", "hash"],
        default="stat",
        help="what marks an input done: path + size + mtime (stat), or path + sha256 of "
        "the content (hash) (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: remove the parts agegender wrote in DEST (other files are kept)",
    )
    parser.add_argument(
        "--part-size",
        type=number(int, 1),
        default=DEFAULT_PART_SIZE,
        metavar="N",
        help="inputs per part file: the most a crash makes redo (default: %(default)s)",
    )
    parser.add_argument(
        "--max-attempts",
        type=number(int, 1),
        default=3,
        metavar="N",
        help="tries per input whose error is transient (an I/O error, a timeout; not a "
        "file that is not an image): a later run with the same --out tries it again until "
        "it has had N (1: never retry) (default: %(default)s)",
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: one Estimator on this machine (decoding and detection in threads); "
        "ray: Ray Data's actor pool of Estimators, on this machine or a cluster "
        "(agegender[ray]) (default: %(default)s)",
    )
    ray = parser.add_argument_group("ray engine")
    ray.add_argument(
        "--address", default=None, help="Ray cluster to join ('auto'; default: start a local one)"
    )
    ray.add_argument(
        "--concurrency",
        type=number(int, 1),
        default=None,
        metavar="N",
        help="Estimator actors (default: one per CPU of the cluster, or per --num-gpus share "
        "of its GPUs, at most one per part)",
    )
    ray.add_argument(
        "--num-cpus",
        type=number(float, 0),
        default=None,
        help="CPUs each actor reserves, and its threads (default: an equal share of the "
        "cluster's CPUs, at most a node's)",
    )
    ray.add_argument("--num-gpus", type=number(float, 0), default=0.0, help="GPUs per actor")
    add_input_options(parser)
    parser.add_argument(
        "--video-rows",
        choices=["frames", "tracks"],
        default="frames",
        help="videos: one row per face per sampled frame (frames), or one row per person "
        "tracked through every frame and fused as 'agegender video --tracks' does "
        "(tracks; --video-step does not apply) (default: %(default)s)",
    )
    add_estimator_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with _quiet_libraries(verbose=getattr(args, "verbose", False)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # a bad option or preset: exit 2 before anything
    if args.engine == "local":  # the Ray engine's options would be ignored: refused
        ignored = [
            flag
            for flag, value in (
                ("--address", args.address),
                ("--concurrency", args.concurrency),
                ("--num-cpus", args.num_cpus),
                ("--num-gpus", args.num_gpus or None),
            )
            if value is not None
        ]
        if ignored:
            raise AgegenderError(
                f"{', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} only "
                "to --engine ray (this job runs the local engine)"
            )
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        extra = "ray" if args.engine == "ray" else "batch"  # [ray] brings pyarrow too
        raise AgegenderError(
            f"agegender batch needs pyarrow: pip install 'agegender[{extra}]'"
        ) from None
    from ..batch import dataset, job, sources

    sources.check_sources(args.sources)
    dataset.check_dest(args.out)  # before any model is loaded
    dataset.check_not_a_source(args.out, args.sources)
    if args.engine == "ray":
        from ..batch.ray_engine import check_address, require_ray_data

        require_ray_data(args.address)  # the first import of ray: after its loopback switch
        check_address(args.address)
    from ..pipeline import Estimator

    estimator = Estimator(config)
    models = job.model_identities(estimator)
    # --video-step does not apply to --video-rows tracks (every frame is tracked): not
    # recorded there, so a resume may give another
    step = args.video_step if args.video_rows == "frames" else None
    video = {"step": step, "max_frames": args.max_frames, "rows": args.video_rows}
    manifest = dataset.make_manifest(
        # with Ray, the providers asked for: the actors' machines run the models
        job.recorded_config(estimator, here=args.engine == "local"),
        models,
        args.format,
        args.key,
        video,
        job.user_files(estimator),
        job.data_digests(estimator),
    )
    out = dataset.Dataset(
        args.out, manifest, args.format, args.overwrite, max_attempts=args.max_attempts
    )
    cpu_models = job.cpu_dependent_models(estimator)
    try:
        the_job = job.Job(
            sources=args.sources,
            dataset=out,
            config=config,
            constants=job.row_constants(estimator, models),
            key=args.key,
            part_size=args.part_size,
            video_step=args.video_step,
            max_frames=args.max_frames,
            video_rows=args.video_rows,
            models=models,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        if args.engine == "ray":
            from ..batch.ray_engine import run_ray

            del estimator  # the actors load their own
            tally = run_ray(the_job, args)
        else:
            from ..batch.local import run_local

            tally = run_local(the_job, estimator)
        # the kinds of CPU noted by write_part before each writer's first part with a face
        _warn_mixed_cpus(args.out, out, cpu_models)
        # every part of the run is committed: the `cannot list` rows of sources listed
        # now leave the dataset (their retirement prunes, as a retry's part does)
        tally.relisted = out.retire_relisted(config.age_thresholds)
        if tally.retried and not tally.relisted:  # a retirement has pruned already
            out.prune()  # the retried inputs' older rows leave their older parts
        job.print_summary(the_job, tally)
    finally:
        out.close()
    return 1 if tally.failed else 0


def _warn_mixed_cpus(shown: str, out: Dataset, cpu_models: list[str]) -> None:
    """One warning line when the rows of DEST come from more than one kind of CPU and a
    model in use gives estimates that differ between kinds (dataset.mixed_cpus_warning)."""
    from ..batch import dataset

    line = dataset.mixed_cpus_warning(shown, dataset.cpu_kinds(out.files), cpu_models)
    if line is not None:
        print(f"agegender: warning: {line}", file=sys.stderr)
