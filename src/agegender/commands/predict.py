"""``agegender predict``: faces, ages and genders of images, folders and crops."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import outputs, rotation, video
from ..images import DEFAULT_PIXEL_LIMIT, IMAGE_SUFFIXES, ImageInput, expand_inputs
from ..pipeline import Estimator
from ..results import ImageResult

PROGRESS_MIN_FILES = 4


def add_estimator_options(parser: argparse.ArgumentParser) -> None:
    """Options that choose and tune the Estimator (shared with other commands)."""
    group = parser.add_argument_group("models and faces")
    group.add_argument(
        "--preset", default="default", help="preset of detector and models (default: %(default)s)"
    )
    group.add_argument(
        "--age-model", metavar="CARD[=FILE]", help="age model card id (or CARD=path/to/file.onnx)"
    )
    group.add_argument(
        "--gender-model", metavar="CARD[=FILE]", help="gender model card id (or CARD=FILE)"
    )
    group.add_argument(
        "--detector",
        choices=["dlib", "haar", "none"],
        help="face detector; 'none' when inputs are already face crops",
    )
    group.add_argument(
        "--upsample",
        type=int,
        default=None,
        help="dlib upsampling steps for small faces (default: auto)",
    )
    group.add_argument(
        "--max-detect-side",
        type=int,
        default=1600,
        help="detect on a copy with this longer side at most (default: %(default)s)",
    )
    group.add_argument(
        "--align",
        choices=list(rotation.ALIGN_MODES),
        default=None,
        help="turn tilted faces upright for margin crops: 'sweep' runs the detector on "
        "rotated copies as DEX did, 'landmarks' uses the eye line (default: the preset's, "
        "'none' in the built-in presets)",
    )
    group.add_argument(
        "--sweep",
        type=_sweep_range,
        default=rotation.DEFAULT_SWEEP,
        metavar="START:STOP:STEP",
        help="angles of --align sweep in degrees (default: -60:60:5)",
    )
    group.add_argument(
        "--min-face", type=int, default=0, help="ignore faces smaller than this (pixels)"
    )
    group.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="ignore detections scoring lower (dlib: 0.2 drops weak false positives "
        "on JPEG textures, and a few real faces)",
    )
    group.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each face with its mirror image (default: on)",
    )
    group.add_argument(
        "--age-threshold",
        type=float,
        action="append",
        default=[],
        metavar="T",
        help="also report P(age >= T); repeatable",
    )
    group.add_argument(
        "--pixel-limit",
        type=int,
        default=DEFAULT_PIXEL_LIMIT,
        help="refuse images with more pixels (default: %(default)s)",
    )
    group.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per model")
    group.add_argument(
        "--batch-size", type=int, default=32, help="faces per model run (default: 32)"
    )


def _sweep_range(text: str) -> tuple[float, float, float]:
    try:
        start, stop, step = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP:STEP in degrees, got {text!r}"
        ) from None
    if step <= 0 or stop < start:
        raise argparse.ArgumentTypeError(f"need START <= STOP and STEP > 0, got {text!r}")
    return start, stop, step


def estimator_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Estimator keyword arguments from `add_estimator_options` (the one place mapping them)."""
    return {
        "age_model": args.age_model,
        "gender_model": args.gender_model,
        "detector": args.detector,
        "tta": args.tta,
        "upsample": args.upsample,
        "max_detect_side": args.max_detect_side,
        "min_face": args.min_face,
        "min_score": args.min_score,
        "pixel_limit": args.pixel_limit,
        "age_thresholds": args.age_threshold,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "align": args.align,
        "sweep": args.sweep,
    }


def estimator_from_args(args: argparse.Namespace) -> Estimator:
    return Estimator(args.preset, **estimator_kwargs(args))


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
