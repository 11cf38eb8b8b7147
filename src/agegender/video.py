"""Video files: frames sampled at a fixed time step, decoded with OpenCV (FFmpeg).

Each sampled frame becomes an ``images.Frame`` that the pipeline treats like any other
image, named ``<path>@<seconds>s``; results carry the frame index and time.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .images import NOT_REGULAR, VIDEO_SUFFIXES, Frame

# FFmpeg's own messages ("moov atom not found", "overread 8", ...) would go straight to
# stderr, beside the one line per bad input; the error is reported from what OpenCV
# returns instead. Read when FFmpeg is first used; a value set by the user is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

DEFAULT_STEP_SECONDS = 1.0
# The smallest sampling step but 0 (every frame): no video's frames are closer together,
# and smaller steps overflowed the count of steps between two frames.
MIN_STEP_SECONDS = 1e-6
# Grabs that may fail in a row before a video counts as ended: each failure is one packet
# the decoder refused (a damaged stretch; a run of 500 is over 8 s at 60 fps), and at the
# end of a file a failed grab costs microseconds.
MAX_FAILED_GRABS = 500


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def frames(
    path: str | Path,
    *,
    step: float = DEFAULT_STEP_SECONDS,
    max_frames: int | None = None,
    pixel_limit: int | None = None,
) -> Iterator[Frame]:
    """Frames every `step` seconds (step <= 0: every frame), lazily, in order.

    Sampling goes by the frames' own timestamps: the first frame at or after each
    multiple of `step` from the first frame's time, so a variable-frame-rate video (a
    phone's) or one whose container states a wrong frame rate is still sampled every
    `step` seconds, not every round(step * fps) frames.

    A video whose frames have more than `pixel_limit` pixels is refused before decoding
    (one error, not one per frame).

    Never raises for a bad file: a video that cannot be opened or has no frames yields
    one Frame carrying the error, and one that breaks off after some frames (truncated)
    ends there, with its good frames kept. A damaged stretch in the middle (packets the
    decoder refuses) is skipped as a player skips it: the frames after it are read too.
    """
    if not math.isfinite(step):
        raise ValueError(f"step must be a finite number of seconds, got {step!r}")
    if 0 < step < MIN_STEP_SECONDS:
        raise ValueError(
            f"step must be 0 (every frame) or at least {MIN_STEP_SECONDS:g} seconds, got {step!r}"
        )
    name = str(path)
    if not Path(path).is_file():
        if Path(path).is_dir():
            reason = "is a directory"
        elif Path(path).exists():  # never opened: a pipe waits for a writer
            reason = NOT_REGULAR
        else:
            reason = "no such file"
        yield Frame(name, 0, 0.0, error=f"{name}: {reason}")
        return
    if not os.access(path, os.R_OK):
        yield Frame(name, 0, 0.0, error=f"{name}: permission denied")
        return
    if Path(path).stat().st_size == 0:
        yield Frame(name, 0, 0.0, error=f"{name}: empty file")
        return
    capture = None
    index = emitted = 0
    stamp: float | None = None
    try:
        capture = _open(name)
        if not capture.isOpened():
            yield Frame(name, 0, 0.0, error=f"{name}: cannot open as a video")
            return
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
        origin: float | None = None  # the first sampled frame's time
        due = 0.0  # step > 0: the time from which the next frame is sampled
        tolerance = min(0.001, step / 4)  # timestamps rounded to their time base
        failed = 0  # grabs failed in a row
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if pixel_limit is not None and width * height > pixel_limit:
            yield Frame(
                name,
                0,
                0.0,
                error=f"{name}: {width}x{height} = {width * height} pixels per frame exceeds "
                f"the limit of {pixel_limit} (raise it with --pixel-limit)",
            )
            return
        while max_frames is None or emitted < max_frames:
            # grab() skips the colour conversion of frames that are not sampled.
            with _opencv_quiet():
                grabbed = capture.grab()
            if not grabbed:
                # One packet the decoder refuses (bytes overwritten mid-file) fails one
                # grab and the frames after it decode again; at the end of the file every
                # grab fails (quickly), so only a long run of failures ends the video.
                failed += 1
                if failed > MAX_FAILED_GRABS:
                    break
                continue
            failed = 0
            stamp = frame_time(capture, index, fps, stamp)
            if step <= 0 or origin is None or stamp >= due - tolerance:
                with _opencv_quiet():
                    ok, bgr = capture.retrieve()
                if ok and bgr is not None and bgr.ndim == 3 and bgr.size:
                    rgb = np.ascontiguousarray(bgr[:, :, 2::-1], dtype=np.uint8)
                    yield Frame(name, index, stamp, rgb)
                    emitted += 1
                    if step > 0:
                        origin = stamp if origin is None else origin
                        # the next multiple of step after this frame (a long gap in a
                        # variable-frame-rate video skips the multiples it holds)
                        due = origin + (math.floor((stamp - origin + tolerance) / step) + 1) * step
            index += 1
    except cv2.error as error:  # OpenCV's own failure on a broken file: end this video
        if emitted == 0:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else "OpenCV error"
            yield Frame(name, index, 0.0, error=f"{name}: cannot decode the video ({reason})")
        return
    finally:
        if capture is not None:
            capture.release()
    if emitted == 0:
        yield Frame(name, 0, 0.0, error=f"{name}: video has no readable frames")


def frame_time(capture: cv2.VideoCapture, index: int, fps: float, previous: float | None) -> float:
    """Seconds from the start to the frame just read: its own timestamp (a variable frame
    rate gives frames that are not index / fps apart), else index / fps; never earlier
    than the frame before it."""
    stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
    if not (np.isfinite(stamp) and stamp >= 0 and (previous is None or stamp > previous)):
        stamp = index / fps  # no usable timestamp (some streams have none)
        if previous is not None and stamp <= previous:
            stamp = previous + 1.0 / fps
    return float(stamp)


def _open(name: str) -> cv2.VideoCapture:
    """A capture through FFmpeg (whose messages are silenced) when OpenCV has it."""
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    if ":" in name and not os.path.isabs(name) and os.path.isfile(name):
        name = os.path.abspath(name)  # FFmpeg read a file 'cam:1.mp4' as the protocol 'cam'
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return _open_by_link(name, backend)
    with _opencv_quiet():
        return cv2.VideoCapture(name, backend)


def _open_by_link(name: str, backend: int) -> cv2.VideoCapture:
    """A file whose name is not UTF-8 (bytes from a file system in another encoding,
    held as lone surrogates): OpenCV's binding crashed the process on such a name
    (SIGSEGV), so the file is opened through a link with a plain name in a private
    folder, removed once the capture holds the file open."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="agegender-video-")
    try:
        link = os.path.join(folder, "video" + Path(name).suffix.encode("ascii", "ignore").decode())
        try:
            os.symlink(os.path.abspath(os.fsencode(name)), link)
        except OSError:
            return cv2.VideoCapture()  # not opened: reported as unreadable by the caller
        with _opencv_quiet():
            return cv2.VideoCapture(link, backend)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's log lines about a file it cannot read ("[ERROR:0@0.1] ... Could not find
    decoder") held back while it reads one; what it returns is reported instead."""
    logging = cv2.utils.logging
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)
