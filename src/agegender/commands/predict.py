"""``agegender predict``: faces, ages and genders of images, folders and crops."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import AgegenderError, single_line
from .options import add_estimator_options, add_input_options, config_from_args

if TYPE_CHECKING:  # the heavy modules (numpy, OpenCV, ONNX Runtime) load in run()
    from ..images import ImageInput
    from ..results import ImageResult

PROGRESS_MIN_FILES = 4


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "predict",
        help="estimate age and gender of the faces in images and videos",
        description="Estimate age and gender of every face in images, videos and folders.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="image and video files, and folders (searched recursively; hidden files "
        "and folders, names starting with '.', are skipped there)",
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
        "--annotate",
        metavar="DIR",
        type=folder_path,
        help="also write images with boxes and labels into DIR (made if missing). A file "
        "there is never replaced: a name taken gets -1, -2, ... DIR may not be an input "
        "folder; a DIR inside one is marked (.agegender-output) and later folder searches "
        "skip it, so annotated copies are never read as inputs",
    )
    add_input_options(parser)
    add_estimator_options(parser)
    parser.set_defaults(run=run, format="table")


def folder_path(text: str) -> Path:
    """An output folder's argument: an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (give a folder; '.' for this one)")
    return Path(text)


def check_annotate_dir(folder: Path, inputs: list[str]) -> None:
    """Refuse (AgegenderError, exit 2) an annotation folder that cannot take new files or
    lies in an input folder; make it when missing. Runs before any image is read."""
    from ..images import OUTPUT_MARKER, is_output_folder

    where = f"--annotate {folder}"
    target = folder.resolve()
    inside = False
    for item in inputs:
        if Path(item).is_dir():
            source = Path(item).resolve()
            if target == source:
                raise AgegenderError(
                    f"{where}: is the input folder {item} (annotated copies would sit among "
                    "the originals); choose another folder"
                )
            inside = inside or source in target.parents
    # os.path's: a name the file system refuses (too long) is the mkdir's one-line error
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise AgegenderError(f"{where}: exists and is not a folder")
    if inside and os.path.isdir(folder) and not is_output_folder(folder):
        raise AgegenderError(
            f"{where}: an existing folder inside an input folder that agegender did not "
            "make (its images are inputs); choose a new or an outside folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if inside:
            # Later folder searches skip a folder with this marker (images.expand_each).
            (folder / OUTPUT_MARKER).touch()
    except OSError as error:
        raise AgegenderError(f"{where}: cannot make the folder ({_reason(error)})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AgegenderError(f"{where}: not writable (permission denied)")


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of `folder`'s path that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    return missing


def _reason(error: OSError) -> str:
    reason = error.strerror or str(error) or type(error).__name__
    return f"{reason}: {error.filename}" if error.filename else reason


def _folder_problem(folder: str) -> str:
    if not os.access(folder, os.R_OK | os.X_OK):
        return "cannot read the folder (permission denied)"
    return "folder holds no image files"


def run(args: argparse.Namespace) -> int:
    with _quiet_libraries(verbose=getattr(args, "verbose", False)):
        return _run(args)


@contextlib.contextmanager
def _quiet_libraries(verbose: bool) -> Iterator[None]:
    """Pillow's warnings and log records about a bad file ("Truncated File Read", ...)
    would be more stderr lines beside the one error line that reports the file; they
    are shown with -v."""
    if verbose:
        yield
        return
    pil = logging.getLogger("PIL")
    level = pil.level
    pil.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            yield
    finally:
        pil.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import outputs, video
    from ..images import IMAGE_SUFFIXES, expand_each, remove_output_folder
    from ..pipeline import Estimator

    config = config_from_args(args)  # a bad option or preset: exit 2 before anything
    made: list[Path] = []  # the --annotate folders this run makes
    if args.annotate is not None:
        made = _missing_folders(args.annotate)
        check_annotate_dir(args.annotate, args.inputs)
    failures = 0
    files: list[str] = []
    for item, found in expand_each(args.inputs, IMAGE_SUFFIXES | video.VIDEO_SUFFIXES):
        if Path(item).is_dir() and not found:
            print(
                f"agegender: error: {single_line(item)}: {_folder_problem(item)}",
                file=sys.stderr,
            )
            failures += 1
        files.extend(found)
    videos = [f for f in files if video.is_video(f)]

    def sources() -> Iterator[ImageInput]:
        for file in files:
            if video.is_video(file):
                yield from video.frames(
                    file,
                    step=args.video_step,
                    max_frames=args.max_frames,
                    pixel_limit=config.pixel_limit,
                )
            else:
                yield file

    try:
        estimator = Estimator(config)
    except BaseException:
        for folder in made:  # nothing was written: leave nothing behind
            remove_output_folder(folder)
        raise
    if args.annotate is None:
        results = estimator.predict_many(sources())
    else:
        # Each kept image stays decoded until it is drawn: chunks of one per worker hold
        # at most two chunks (about what the workers hold decoding anyway), where chunks
        # of 16 held 32 (4.6 GB of 7,071 x 7,071 photos).
        results = estimator.predict_many(sources(), chunk=estimator.workers, keep_images=True)
    show = (
        (len(files) >= PROGRESS_MIN_FILES or bool(videos))
        and not args.no_progress
        and sys.stderr.isatty()  # never into a log file or a CI transcript
    )
    total = None if videos else len(files)  # frames of a video are not counted ahead
    bar = tqdm(total=total, unit="img", file=sys.stderr, disable=not show, mininterval=0.5)
    state = {"failures": failures, "annotated": 0}
    used: set[Path] = set()

    def report(message: str) -> None:
        state["failures"] += 1
        line = f"agegender: error: {message}"
        if show:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def watched() -> Iterator[ImageResult]:
        for result in results:
            bar.update(1)
            if result.error:
                report(result.error)
            elif args.annotate is not None and result.image is not None:
                try:
                    outputs.write_annotated(args.annotate, result, result.image, used)
                    state["annotated"] += 1
                except OSError as error:
                    report(
                        f"{outputs.source_label(result)}: cannot write the annotated image "
                        f"({_reason(error)})"
                    )
            yield result

    def write_csv(items: Iterator[ImageResult], out: TextIO) -> None:
        outputs.write_csv(items, out, thresholds=config.age_thresholds)

    writer = {
        "table": outputs.write_table,
        "json": outputs.write_json,
        "jsonl": outputs.write_jsonl,
        "csv": write_csv,
    }[args.format]
    try:
        writer(watched(), sys.stdout)
    finally:
        bar.close()
        if not state["annotated"]:
            for folder in made:  # no input gave a copy (all failed): no empty folder left
                remove_output_folder(folder)
    return 1 if state["failures"] else 0
