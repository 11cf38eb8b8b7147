"""The annotated video of ``agegender video --annotate``: H.264 where it can be written.

OpenCV's wheels carry an FFmpeg built without an H.264 encoder (licensing), so
``cv2.VideoWriter`` puts MPEG-4 Part 2 ('mp4v') into an .mp4, which browsers and many
players do not play. ``imageio-ffmpeg`` (the ``video`` extra) ships a static ffmpeg with
libx264: frames are piped to it as raw BGR and encoded H.264 in yuv420p (the profile
every player decodes), ``+faststart`` so a browser can play the file while it loads.
Without that package, mp4v through OpenCV with one warning line; .avi is MJPG through
OpenCV either way.

The ffmpeg process runs in its own process group: a Ctrl-C at the terminal reaches only
agegender, which then closes the pipe so that ffmpeg finishes the file (a process
stopped by the same signal would leave an .mp4 without its index).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Protocol

import numpy as np
from numpy.typing import NDArray

from .errors import AgegenderError

# Suffix -> OpenCV fourcc: the fallback (and .avi's only) writer.
OPENCV_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
H264_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv"})


class FrameWriter(Protocol):
    """What the video command writes frames to (cv2.VideoWriter has the same two)."""

    def write(self, image: NDArray[np.uint8]) -> None: ...

    def release(self) -> None: ...


# A gap between two frames' times longer than this (a stream that stalled, a jump in the
# timestamps) is not filled with copies of the frame before it: the next frame follows.
MAX_FILLED_GAP = 10.0  # seconds


class TimedWriter:
    """Frames written at one constant rate, each at its own time.

    A video's frames need not be evenly spaced (a phone lowers its rate in the dark; a
    live source drops frames to keep up), but the annotated copy is written at one rate.
    Each frame is given the slot of its own time at that rate: the frame before it is
    repeated until then, and a frame whose slot is already taken (it came sooner than one
    slot after the one before) is left out, as FFmpeg's constant-rate output does. Every
    moment of the copy shows the frame of that moment, and the copy lasts as long as the
    source. Before, every frame was written once: a variable-rate clip's copy ran ahead of
    its source, and was shorter (one clip here: 4 s for 8 s).
    """

    def __init__(self, writer: FrameWriter, fps: float) -> None:
        self.writer = writer
        self.fps = fps
        self.slots = 0  # frames written
        self.origin = 0.0  # the time of the first slot
        self.held: NDArray[np.uint8] | None = None  # the latest frame given

    def write(self, image: NDArray[np.uint8], time: float) -> None:
        if self.held is None:
            self.origin = time
        slot = round((time - self.origin) * self.fps)
        if self.held is not None and slot - self.slots > MAX_FILLED_GAP * self.fps:
            self.origin = time - self.slots / self.fps  # a jump: this frame comes next
            slot = self.slots
        if slot < self.slots:  # its slot is taken: left out, but repeated in a gap after
            self.held = image
            return
        while self.held is not None and self.slots < slot:
            self.writer.write(self.held)
            self.slots += 1
        self.writer.write(image)
        self.slots += 1
        self.held = image

    def release(self) -> None:
        self.writer.release()


def ffmpeg_exe() -> str | None:
    """imageio-ffmpeg's ffmpeg (or the one IMAGEIO_FFMPEG_EXE names), None without it."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:  # the package without a binary for this platform
        return None


class FfmpegWriter:
    """BGR frames piped to ffmpeg, encoded H.264 (libx264, yuv420p)."""

    def __init__(self, exe: str, path: Path, fps: float, size: tuple[int, int]) -> None:
        width, height = size
        self.path = path
        self.size = size
        # ffmpeg's messages: a file, as a pipe nobody reads could fill and block it
        self._errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in release)
        self._failed = False  # a write failed: already reported, release only cleans up
        command = [
            exe,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-s",
            f"{width}x{height}",
            "-framerate",
            f"{fps:.6g}",
            "-i",
            "pipe:0",
            "-an",
            # yuv420p needs even sides: an odd row or column is padded, never cropped
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-n",  # never replaces a file (checked before, and again here)
            # file: a name is a file's, never an option ('-a.mp4') or a protocol ('x:y.mp4')
            f"file:{path}",
        ]
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._errors,
                process_group=0,
            )
        except OSError as error:
            self._errors.close()
            raise AgegenderError(
                f"--annotate {path}: cannot start ffmpeg ({error.strerror or error})"
            ) from None

    def write(self, image: NDArray[np.uint8]) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        if image.shape[1::-1] != self.size:
            self._failed = True
            raise AgegenderError(
                f"--annotate {self.path}: the frame size changed from "
                f"{self.size[0]}x{self.size[1]} to {image.shape[1]}x{image.shape[0]}"
            )
        try:
            stdin.write(np.ascontiguousarray(image).tobytes())
        except BrokenPipeError:
            self._process.wait()
            self._failed = True
            raise AgegenderError(
                f"--annotate {self.path}: ffmpeg stopped ({self._reason()})"
            ) from None

    def release(self) -> None:
        """Close the pipe and wait for ffmpeg to finish the file; a failure is one line."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        code = self._process.wait()
        reason = self._reason() if code != 0 else ""
        self._errors.close()
        if code != 0 and not self._failed:
            raise AgegenderError(f"--annotate {self.path}: ffmpeg failed ({reason})")

    def _reason(self) -> str:
        self._errors.seek(0)
        lines = self._errors.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1].strip()[:200] if lines else f"exit status {self._process.returncode}"


def open_writer(path: Path, fps: float, size: tuple[int, int]) -> FrameWriter:
    """The writer for `path` (its suffix one of OPENCV_CODECS): H.264 through
    imageio-ffmpeg when installed, else OpenCV (mp4v in an .mp4, with a warning line)."""
    import cv2

    suffix = path.suffix.lower()
    if suffix in H264_SUFFIXES:
        exe = ffmpeg_exe()
        if exe is not None:
            return FfmpegWriter(exe, path, fps, size)
        print(
            f"agegender: warning: --annotate {path}: writing MPEG-4 Part 2 (mp4v), which "
            "browsers do not play; for H.264 install imageio-ffmpeg (pip install "
            "'agegender[video]')",
            file=sys.stderr,
        )
    fourcc = cv2.VideoWriter.fourcc(*OPENCV_CODECS[suffix])
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # OpenCV's binding crashes the process (SIGSEGV) on a name that is not UTF-8
        # (bytes from a file system in another encoding): write under a plain name, then
        # move the finished file to its own name.
        return _MovedOnRelease(path, fps, size, fourcc)
    # absolute: FFmpeg reads a relative 'cam:1.mp4' as the protocol 'cam' (not opened)
    writer = cv2.VideoWriter(str(path.absolute()), fourcc, fps, size)
    if not writer.isOpened():
        raise AgegenderError(f"--annotate {path}: OpenCV cannot write this video format")
    return writer


class _MovedOnRelease:
    """cv2.VideoWriter on a file in a private folder, moved to `path` when released."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], fourcc: int) -> None:
        import cv2

        self.path = path
        self.folder = tempfile.mkdtemp(prefix="agegender-annotate-")
        self.temp = os.path.join(self.folder, "video" + path.suffix.lower())
        self.writer = cv2.VideoWriter(self.temp, fourcc, fps, size)
        if not self.writer.isOpened():
            shutil.rmtree(self.folder, ignore_errors=True)
            raise AgegenderError(f"--annotate {path}: OpenCV cannot write this video format")

    def write(self, image: NDArray[np.uint8]) -> None:
        self.writer.write(image)

    def release(self) -> None:
        self.writer.release()
        try:
            if os.path.lexists(self.path):  # made since the check: still never replaced
                raise AgegenderError(
                    f"--annotate {self.path}: exists; agegender never replaces a file "
                    f"(the video is left at {self.temp})"
                )
            shutil.move(self.temp, self.path)
        except OSError as error:
            raise AgegenderError(
                f"--annotate {self.path}: cannot move the video there "
                f"({error.strerror or error}; it is left at {self.temp})"
            ) from None
        shutil.rmtree(self.folder, ignore_errors=True)
