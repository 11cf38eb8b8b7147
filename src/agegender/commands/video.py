"""``agegender video``: people in a video or live stream, tracked, one fused estimate each.

Exit status: 0 done (a live run ended with Ctrl-C or SIGTERM included), 1 the input could
not be read or a live stream was lost (the tracks so far are still written), 2 a bad
option or output path (checked before any model is loaded), 130 a file run interrupted
(143 when by SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..config import name_too_long
from ..errors import AgegenderError, single_line
from .options import add_estimator_options, check_folder_of, config_from_args, number

if TYPE_CHECKING:  # numpy, OpenCV and ONNX Runtime load in run()
    from ..people import FrameReport, Person

log = logging.getLogger(__name__)

DEFAULT_MAX_LOST = 1.0  # = people.DEFAULT_MAX_LOST_SECONDS (people.py imports OpenCV)
MAX_LOST_LIMIT = 86400.0  # a day: longer is no different from never
DEFAULT_CORRELATION = 0.8  # = fusion.DEFAULT_CORRELATION
DEFAULT_RETRIES = 5  # = streams.DEFAULT_RETRIES
ANNOTATE_CODECS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")  # = video_writer.OPENCV_CODECS


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "video",
        help="track the people in a video or live stream, one fused estimate each",
        description="Detect and track faces in a video file, a webcam or a stream, and "
        "fuse each person's frames into one age and gender estimate whose interval "
        "narrows as the person stays in view.",
    )
    parser.add_argument(
        "input",
        help="a video file (any format OpenCV/FFmpeg reads), a webcam index (0) or a "
        "stream URL (rtsp://, http://, ...)",
    )
    parser.add_argument(
        "--tracks",
        default="-",
        metavar="PATH",
        help="one JSON object per person, written when the person's track ends "
        "('-': stdout, the default); a name ending in .csv gets one CSV row per person "
        "instead. Never replaces an existing file",
    )
    parser.add_argument(
        "--frames",
        metavar="PATH",
        help="also one JSON object per frame: boxes, track ids, per-frame and fused "
        "estimates ('-': stdout)",
    )
    parser.add_argument(
        "--annotate",
        metavar="OUT.mp4",
        type=Path,
        help="also write the video with boxes, track ids and each person's current "
        f"estimate ({', '.join(ANNOTATE_CODECS)}): H.264 with the 'video' extra "
        "(imageio-ffmpeg), else OpenCV's mp4v (.avi: MJPG); never replaces an existing file",
    )
    parser.add_argument(
        "--thumbs",
        metavar="DIR",
        type=Path,
        help="folder for each person's best face crop (default: TRACKS-thumbs next to "
        "the tracks file; none when tracks go to stdout). A new folder, or one "
        "agegender made",
    )
    parser.add_argument(
        "--detect-every",
        type=number(int, 1),
        default=1,
        metavar="K",
        help="run the detector and models on every K-th frame; the tracker carries the "
        "boxes between (default: %(default)s)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="a live source: keep only the newest frame (drop frames to keep up), "
        "reconnect a lost stream, run until the stream ends or Ctrl-C; reports the "
        "processing latency",
    )
    parser.add_argument(
        "--retries",
        type=number(int, 0),
        default=None,
        metavar="N",
        help="--live: reconnection attempts (0.5 s, 1 s, 2 s, ... apart) before a lost "
        f"stream is an error (default: {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--max-frames",
        type=number(int, 1),
        default=None,
        metavar="N",
        help="stop after N frames",
    )
    parser.add_argument(
        "--max-lost",
        type=number(float, 0, MAX_LOST_LIMIT),
        default=DEFAULT_MAX_LOST,
        metavar="SECONDS",
        help="a track ends when its face is not seen for this long; a face that comes "
        "back later is a new person (default: %(default)s)",
    )
    parser.add_argument(
        "--min-hits",
        type=number(int, 1),
        default=3,
        metavar="N",
        help="detections before a track counts as a person (default: %(default)s)",
    )
    parser.add_argument(
        "--correlation",
        type=number(float, 0, 1),
        default=DEFAULT_CORRELATION,
        metavar="RHO",
        help="prior share of a frame's age error common to all frames of a person (1: "
        "a track's interval stays as wide as one frame's; 0: frames are independent "
        "evidence); each track's frames move it, the prior counting as 4 frames "
        "(default: %(default)s)",
    )
    add_estimator_options(parser)
    parser.set_defaults(run=run)


# -- output paths, checked before any work ----------------------------------------------


def _check_new_file(option: str, path: Path) -> None:
    where = f"{option} {path}"
    with _os_errors(where):
        if path.exists() or path.is_symlink():
            raise AgegenderError(
                f"{where}: exists; agegender never replaces a file (choose a new name)"
            )
        check_folder_of(where, path)


def _check_thumbs(folder: Path) -> None:
    from ..images import is_output_folder

    where = f"--thumbs {folder}"
    with _os_errors(where):
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            # a link that leads nowhere too: mkdir failed on it after the models loaded
            raise AgegenderError(f"{where}: exists and is not a folder")
        if folder.is_dir() and not is_output_folder(folder):
            raise AgegenderError(
                f"{where}: an existing folder agegender did not make; choose a new folder"
            )
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise AgegenderError(f"{where}: not writable (permission denied)")
        else:  # made when the run starts: mkdir failed there after the models loaded
            check_folder_of(where, folder)
        if name_too_long(folder.name):  # made later, it would fail after the work
            raise AgegenderError(f"{where}: the name is too long for a folder")


@contextlib.contextmanager
def _os_errors(where: str) -> Iterator[None]:
    """A path the file system refuses to look up (a name too long, ...): one line."""
    try:
        yield
    except OSError as error:
        raise AgegenderError(f"{where}: {error.strerror or error}") from None


def check_outputs(args: argparse.Namespace) -> Path | None:
    """Refuse outputs that would replace a file or clash; returns the thumbnails folder."""
    files = []
    if args.tracks != "-":
        files.append(("--tracks", Path(args.tracks)))
    if args.frames not in (None, "-"):
        files.append(("--frames", Path(args.frames)))
    if args.annotate is not None:
        suffix = args.annotate.suffix.lower()
        if suffix not in ANNOTATE_CODECS:
            raise AgegenderError(
                f"--annotate {args.annotate}: use one of {', '.join(ANNOTATE_CODECS)}"
            )
        files.append(("--annotate", args.annotate))
    if args.tracks == "-" and args.frames == "-":
        raise AgegenderError("--tracks and --frames cannot both go to stdout")
    seen: dict[Path, str] = {}
    for option, path in files:
        key = path.resolve()
        if key in seen:
            raise AgegenderError(f"{option} and {seen[key]} name the same file {path}")
        seen[key] = option
        _check_new_file(option, path)
    thumbs = args.thumbs
    if thumbs is None and args.tracks != "-":
        tracks = Path(args.tracks)
        thumbs = tracks.with_name(f"{tracks.stem}-thumbs")
    if thumbs is not None:
        clash = seen.get(thumbs.resolve())
        if clash is not None:
            name = "--thumbs" if args.thumbs is not None else "the thumbnails folder"
            raise AgegenderError(f"{clash} and {name} both name {thumbs}")
        _check_thumbs(thumbs)
    return thumbs


# -- running ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # a bad option or preset: exit 2 before anything
    if args.retries is not None and not args.live:
        raise AgegenderError("--retries applies only with --live (a file is not reconnected)")
    thumbs = check_outputs(args)
    from ..streams import check_input

    try:
        check_input(args.input)
    except AgegenderError as error:
        print(f"agegender: error: {single_line(str(error))}", file=sys.stderr)
        return 1
    return _Run(args, config, thumbs).run()


class _Run:
    def __init__(self, args: argparse.Namespace, config: Any, thumbs: Path | None):
        self.args = args
        self.config = config
        self.thumbs = thumbs
        self.tracks_out: IO[str] | None = None
        self.frames_out: IO[str] | None = None
        self.writer: Any = None
        self.people = 0
        self.latencies = Latencies()
        self.used_thumbs: set[str] = set()
        self.csv_header = False
        self.created: list[Path] = []  # output files and folders this run made
        self.written = 0  # frame lines, people and annotated frames written
        self.detected = 0  # frames the detector ran on (counted with the frames done)

    def _open(self, path: str | None) -> IO[str] | None:
        if path is None:
            return None
        if path == "-":
            return sys.stdout
        try:
            # exclusive: never replaces a file; newline="" as the csv module asks
            # surrogateescape: a name that is not UTF-8 (a thumbnail's path in a CSV row) is
            # written back as its own bytes, as predict's CSV does
            handle = open(  # noqa: SIM115
                path, "x", encoding="utf-8", errors="surrogateescape", newline=""
            )
        except OSError as error:
            raise AgegenderError(f"{path}: cannot create ({error.strerror or error})") from None
        self.created.append(Path(path))
        return handle

    def run(self) -> int:
        from ..fusion import FusionSettings
        from ..people import PeopleTracker
        from ..pipeline import Estimator
        from ..streams import Source, StreamLost

        args = self.args
        estimator = Estimator(self.config)
        source = Source(
            args.input,
            live=args.live,
            retries=DEFAULT_RETRIES if args.retries is None else args.retries,
            pixel_limit=self.config.pixel_limit,
        )
        status = 0
        interrupted: KeyboardInterrupt | None = None  # Ctrl-C, or SIGTERM (cli.Terminated)
        tracker: PeopleTracker | None = None
        started = time.monotonic()
        frames = 0
        failed = True  # until the run ends by itself, an error line or an interrupt
        try:
            self.tracks_out = self._open(args.tracks)
            if self.tracks_out is not None and args.tracks.lower().endswith(".csv"):
                import csv

                csv.writer(self.tracks_out).writerow(csv_columns(self.config.age_thresholds))
                self.csv_header = True
            self.frames_out = self._open(args.frames)
            if self.thumbs is not None:
                self._make_thumbs_folder(self.thumbs)
            from ..cli import sigterm_unwinds  # SIGTERM ends a run as Ctrl-C does

            with sigterm_unwinds():
                try:
                    for frame in source.frames():
                        if tracker is None:
                            tracker = PeopleTracker(
                                estimator,
                                detect_every=args.detect_every,
                                max_lost=args.max_lost,
                                min_hits=args.min_hits,
                                fusion=FusionSettings(correlation=args.correlation),
                                thumbnails=self.thumbs is not None,
                            )
                        report, ended = tracker.process(frame)
                        frames += 1
                        self.detected += report.detected
                        if args.live:
                            self.latencies.add(time.monotonic() - frame.captured)
                        self._frame(report, frame.rgb, source.fps)
                        self._people(ended)
                        if args.max_frames is not None and frames >= args.max_frames:
                            break
                except KeyboardInterrupt as stop:
                    interrupted = stop
                    source.stop()
                except StreamLost as error:
                    print(f"agegender: error: {single_line(str(error))}", file=sys.stderr)
                    status = 1
                except AgegenderError as error:
                    print(f"agegender: error: {single_line(str(error))}", file=sys.stderr)
                    status = 1
                finally:
                    source.stop()
                # the people still in view: written whatever ended the run
                if tracker is not None:
                    self._people(tracker.finish())
            failed = False
        finally:
            self._close()
            if self.written == 0 and (status != 0 or failed):
                # The input gave no frame: an empty tracks file (or thumbs folder) left
                # behind would only make the next run with the same names refuse to start.
                self._remove_created()
        elapsed = time.monotonic() - started
        self._summary(frames, source, elapsed)
        if interrupted is not None and not args.live:
            raise interrupted  # the command's line and status (cli: 130, or 143 for SIGTERM)
        return status

    # -- outputs -------------------------------------------------------------------------
    def _remove_created(self) -> None:
        from ..images import remove_output_folder

        for path in reversed(self.created):
            if path.is_dir():
                remove_output_folder(path)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _make_thumbs_folder(self, folder: Path) -> None:
        from ..images import OUTPUT_MARKER

        try:
            if not folder.exists():
                folder.mkdir()
                self.created.append(folder)
            (folder / OUTPUT_MARKER).touch()
        except OSError as error:
            raise AgegenderError(
                f"--thumbs {folder}: cannot make the folder ({error.strerror or error})"
            ) from None

    def _frame(self, report: FrameReport, rgb: Any, fps: float) -> None:
        import json

        if self.frames_out is not None:
            self.frames_out.write(json.dumps(report.to_dict()) + "\n")
            self.written += 1
        if self.args.annotate is not None:
            self._annotate(report, rgb, fps)
            self.written += 1

    def _annotate(self, report: FrameReport, rgb: Any, fps: float) -> None:
        import cv2
        import numpy as np

        from ..outputs import draw_face
        from ..video_writer import TimedWriter, open_writer

        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if self.writer is None:
            height, width = bgr.shape[:2]
            path = self.args.annotate
            if path.exists():  # made since the check: still never replaced
                raise AgegenderError(f"--annotate {path}: exists; agegender never replaces a file")
            self.writer = TimedWriter(open_writer(path, fps, (width, height)), fps)
        for face in report.faces:
            if face.track is None:
                x1, y1, x2, y2 = (round(v) for v in face.box)
                cv2.rectangle(bgr, (x1, y1), (x2, y2), (160, 160, 160), 1)
                continue
            label = f"#{face.track}"
            if face.fused_age is not None:
                low, high = face.fused_age.interval
                label += f" {face.fused_age.value:.0f} ({low:.0f}-{high:.0f})"
            if face.fused_gender is not None:
                label += f" {face.fused_gender.label[:1].upper()}"
                label += f" {face.fused_gender.probability:.2f}"
            colour = _colour(face.track)
            draw_face(bgr, face.box, label, colour, thickness=2 if face.detected else 1)
        self.writer.write(bgr, report.time)

    def _people(self, people: list[Person]) -> None:
        import csv
        import json

        for person in people:
            path = self._thumbnail(person)
            if self.tracks_out is not None:
                if self.args.tracks.lower().endswith(".csv"):
                    writer = csv.writer(self.tracks_out)
                    if not self.csv_header:
                        writer.writerow(csv_columns(self.config.age_thresholds))
                        self.csv_header = True
                    writer.writerow(csv_row(person.to_dict(path), self.config.age_thresholds))
                else:
                    self.tracks_out.write(json.dumps(person.to_dict(path)) + "\n")
                self.tracks_out.flush()
                self.written += 1
            self.people += 1

    def _thumbnail(self, person: Person) -> str | None:
        import cv2

        from ..outputs import write_new

        if self.thumbs is None or person.thumbnail is None or not person.thumbnail.size:
            return None
        stem = Path(self.args.tracks).stem if self.args.tracks != "-" else "track"
        base = f"{stem}-{person.id:04d}"
        for n in range(1000):
            name = base + (f"-{n}" if n else "") + ".jpg"
            target = self.thumbs / name
            if name in self.used_thumbs or target.exists():
                continue
            ok, data = cv2.imencode(".jpg", person.thumbnail[:, :, ::-1])
            if not ok:
                return None
            try:
                write_new(target, data.tobytes())
            except FileExistsError:
                continue
            except OSError as error:
                print(
                    f"agegender: error: {single_line(str(target))}: cannot write "
                    f"({error.strerror or error})",
                    file=sys.stderr,
                )
                return None
            self.used_thumbs.add(name)
            return str(target)
        return None

    def _close(self) -> None:
        for out in (self.tracks_out, self.frames_out):
            if out is not None and out is not sys.stdout:
                out.close()
        if self.writer is not None:
            self.writer.release()

    def _summary(self, frames: int, source: Any, elapsed: float) -> None:
        rate = frames / elapsed if elapsed > 0 else 0.0
        line = (
            f"{frames} frames ({self.detected} detected), {self.people} people, {rate:.1f} frames/s"
        )
        if self.args.live and frames:
            lat = self.latencies
            line += (
                f"; live: {source.dropped} frames dropped to keep up, "
                f"{source.reconnects} reconnections, latency mean {lat.mean_ms():.0f} ms, "
                f"p95 {lat.percentile_ms(95):.0f} ms"
            )
            print(f"agegender: {line}", file=sys.stderr)
        else:
            log.info(line)


class Latencies:
    """A live run's frame latencies (reading a frame to its results), counted in 1 ms
    bins: a run that goes on for weeks keeps one count per distinct millisecond, not one
    number per frame (30 frames/s held 80 MB more a day)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0  # seconds
        self.bins: Counter[int] = Counter()  # milliseconds -> frames

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.bins[round(seconds * 1000)] += 1

    def mean_ms(self) -> float:
        return 1000 * self.total / self.count if self.count else 0.0

    def percentile_ms(self, q: float) -> float:
        """The smallest bin holding at least q% of the frames (0 without any)."""
        rank = math.ceil(q / 100 * self.count)
        seen = 0
        for ms in sorted(self.bins):
            seen += self.bins[ms]
            if seen >= rank:
                return float(ms)
        return 0.0


CSV_COLUMNS = [
    "track",
    "first_frame",
    "last_frame",
    "first_time",
    "last_time",
    "frames_seen",
    "frames_used",
    "age",
    "age_std",
    "age_low",
    "age_high",
    "age_group",
    "gender",
    "gender_probability",
    "start_x",
    "start_y",
    "end_x",
    "end_y",
    "mean_side",
    "distance",
    "n_eff",
    "correlation",
    "thumbnail",
]


def csv_columns(thresholds: Any) -> list[str]:
    return CSV_COLUMNS + [f"p_age_ge_{t:g}" for t in thresholds]


def csv_row(record: dict[str, Any], thresholds: Any) -> list[Any]:
    """One person's CSV row (the columns of :func:`csv_columns`; empty where unknown)."""
    age = record.get("age") or {}
    gender = record.get("gender") or {}
    path = record["path"]
    fusion = record.get("fusion") or {}
    interval = age.get("interval") or ["", ""]
    row = [
        record["track"],
        record["first_frame"],
        record["last_frame"],
        record["first_time"],
        record["last_time"],
        record["frames_seen"],
        record["frames_used"],
        age.get("value", ""),
        age.get("std", ""),
        interval[0],
        interval[1],
        age.get("group", ""),
        gender.get("label", ""),
        gender.get("probability", ""),
        *path["start"][:2],
        *path["end"][:2],
        path["mean_side"],
        path["distance"],
        fusion.get("n_eff", ""),
        fusion.get("correlation", ""),
        record.get("thumbnail") or "",
    ]
    p_at_least = age.get("p_at_least") or {}
    return row + [p_at_least.get(f"{t:g}", "") for t in thresholds]


def _colour(track: int) -> tuple[int, int, int]:
    """A distinct, stable colour (BGR) per track id."""
    hue = (track * 0.618034) % 1.0
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.9)
    return (int(b * 255), int(g * 255), int(r * 255))
