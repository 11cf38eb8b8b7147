"""``agegender predict``: faces, ages and genders of images, folders and crops."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from .. import outputs, video
from ..images import IMAGE_SUFFIXES, ImageInput, expand_inputs
from ..results import ImageResult
from .options import add_estimator_options, estimator_from_args

PROGRESS_MIN_FILES = 4


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "predict",
        help="estimate age and gender of the faces in images",
        description="Estimate age and gender of every face in images and folders.",
    )
    parser.add_argument(
        "inputs", nargs="+", help="image and video files, and folders (searched recursively)"
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json", action="store_const", dest="format", const="json", help="one JSON array"
    )
    fmt.add_argument(
        "--jsonl",
        action="store_const",
        dest="format",
        const="jsonl",
        help="one JSON object per image, streamed",
    )
    fmt.add_argument(
        "--csv", action="store_const", dest="format", const="csv", help="one CSV row per face"
    )
    parser.add_argument(
        "--annotate", metavar="DIR", type=Path, help="also write images with boxes and labels"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--video-step",
        type=float,
        default=video.DEFAULT_STEP_SECONDS,
        metavar="SECONDS",
        help="videos: analyse one frame every SECONDS (0: every frame; default %(default)s)",
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, help="videos: at most this many frames each"
    )
    add_estimator_options(parser)
    parser.set_defaults(run=run, format="table")


def run(args: argparse.Namespace) -> int:
    files = expand_inputs(args.inputs, IMAGE_SUFFIXES | video.VIDEO_SUFFIXES)
    failures = 0
    for item in args.inputs:
        if Path(item).is_dir() and not any(f.startswith(str(Path(item))) for f in files):
            print(f"agegender: error: {item}: folder holds no image files", file=sys.stderr)
            failures += 1
    videos = [f for f in files if video.is_video(f)]

    def sources() -> Iterator[ImageInput]:
        for file in files:
            if video.is_video(file):
                yield from video.frames(file, step=args.video_step, max_frames=args.max_frames)
            else:
                yield file

    estimator = estimator_from_args(args)
    if args.annotate:
        args.annotate.mkdir(parents=True, exist_ok=True)
    results = estimator.predict_many(sources(), keep_images=bool(args.annotate))
    show = (len(files) >= PROGRESS_MIN_FILES or bool(videos)) and not args.no_progress
    total = None if videos else len(files)  # frames of a video are not counted ahead
    bar = tqdm(total=total, unit="img", file=sys.stderr, disable=not show, mininterval=0.5)
    state = {"failures": failures}
    used: set[Path] = set()

    def watched() -> Iterator[ImageResult]:
        for result in results:
            bar.update(1)
            if result.error:
                state["failures"] += 1
                bar.write(f"agegender: error: {result.error}", file=sys.stderr)
            elif args.annotate and result.image is not None:
                path = outputs.annotated_path(args.annotate, result.path, used, result.frame)
                outputs.save_rgb(path, outputs.annotate(result.image, result.faces))
            yield result

    writer = {
        "table": outputs.write_table,
        "json": outputs.write_json,
        "jsonl": outputs.write_jsonl,
        "csv": outputs.write_csv,
    }[args.format]
    try:
        writer(watched(), sys.stdout)
    finally:
        bar.close()
    return 1 if state["failures"] else 0
