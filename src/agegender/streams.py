"""Frame sources for ``agegender video``: files, webcams and network streams.

``open_source(spec)`` reads ``spec`` as a webcam index (``0``), a URL (``rtsp://``,
``http://``, ...) or a file path, and returns a :class:`Source` whose ``frames()`` yields
:class:`SourceFrame`\\ s in order:

- batch (default): every frame, none dropped; files through :func:`agegender.video.frames`
  (its one-line errors for missing, empty and broken files);
- live (``live=True``): a reader thread keeps only the newest frame, so processing never
  falls behind (frames that arrive while the last one is being processed are dropped and
  counted), files are paced at their own frame rate as a camera would deliver them, and
  a stream that stops is reopened with exponential backoff; after ``retries`` failed
  attempts in a row it ends with a one-line error (:class:`StreamLost`).

Frame indices count the frames the source delivered (dropped ones too), so the tracker's
time steps stay true when frames are dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from . import video
from .errors import AgegenderError

DEFAULT_RETRIES = 5
BACKOFF_START = 0.5  # seconds before the first reconnection; doubled each time
BACKOFF_MAX = 8.0
DEFAULT_FPS = 25.0


class StreamLost(AgegenderError):
    """A live stream stopped and could not be reopened."""


@dataclass
class SourceFrame:
    index: int  # frame number in the source (dropped frames counted)
    time: float  # seconds from the start of the source
    rgb: NDArray[np.uint8]
    captured: float  # time.monotonic() when the frame was read (live latency)


def kind_of(spec: str) -> str:
    """'camera', 'url' or 'file'."""
    if spec.strip().isdigit():
        return "camera"
    if "://" in spec:
        return "url"
    return "file"


def check_input(spec: str) -> None:
    """Refuse a file input that cannot be read, before any model is loaded."""
    if kind_of(spec) != "file":
        return
    path = Path(spec)
    try:
        if not path.exists():
            raise AgegenderError(f"{spec}: no such file")
        if path.is_dir():
            raise AgegenderError(f"{spec}: is a directory (give one video file)")
        if path.stat().st_size == 0:
            raise AgegenderError(f"{spec}: empty file")
    except OSError as error:  # a name too long for the file system, ...
        raise AgegenderError(f"{spec}: cannot read ({error.strerror or error})") from None


class Source:
    def __init__(
        self,
        spec: str,
        *,
        live: bool = False,
        retries: int = DEFAULT_RETRIES,
        pixel_limit: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.spec = spec
        self.kind = kind_of(spec)
        self.live = live
        self.retries = retries
        self.pixel_limit = pixel_limit
        self.sleep = sleep
        self.fps = DEFAULT_FPS
        self.dropped = 0
        self.reconnects = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    # -- opening -------------------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture:
        if self.kind == "camera":
            with video._opencv_quiet():
                capture = cv2.VideoCapture(int(self.spec))
        else:
            capture = video._open(self.spec)
        if not capture.isOpened():
            capture.release()
            what = {"camera": "cannot open camera", "url": "cannot open the stream"}
            raise AgegenderError(f"{self.spec}: {what.get(self.kind, 'cannot open as a video')}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        if fps and np.isfinite(fps) and 0 < fps <= 240:
            self.fps = float(fps)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if self.pixel_limit is not None and width * height > self.pixel_limit:
            capture.release()
            raise AgegenderError(
                f"{self.spec}: {width}x{height} = {width * height} pixels per frame exceeds "
                f"the limit of {self.pixel_limit} (raise it with --pixel-limit)"
            )
        return capture

    @staticmethod
    def _read(capture: cv2.VideoCapture) -> NDArray[np.uint8] | None:
        with video._opencv_quiet():
            try:
                ok, bgr = capture.read()
            except cv2.error:
                return None
        if not ok or bgr is None or bgr.ndim != 3 or not bgr.size:
            return None
        return np.ascontiguousarray(bgr[:, :, 2::-1], dtype=np.uint8)

    # -- frames --------------------------------------------------------------------------
    def frames(self) -> Iterator[SourceFrame]:
        if self.live:
            yield from self._live()
        elif self.kind == "file":
            yield from self._file()
        else:
            yield from self._batch_stream()

    def _file(self) -> Iterator[SourceFrame]:
        capture = video._open(self.spec)  # only its frame rate: video.frames reads the file
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
        capture.release()
        if fps and np.isfinite(fps) and 0 < fps <= 240:
            self.fps = float(fps)
        for frame in video.frames(self.spec, step=0, pixel_limit=self.pixel_limit):
            if frame.error:
                raise AgegenderError(frame.error)
            assert frame.rgb is not None
            yield SourceFrame(frame.index, frame.time, frame.rgb, time.monotonic())
            if self._stop.is_set():
                return

    def _batch_stream(self) -> Iterator[SourceFrame]:
        capture = self._open()
        stamp: float | None = None
        try:
            index = 0
            while not self._stop.is_set():
                rgb = self._read(capture)
                if rgb is None:
                    if index == 0:
                        raise AgegenderError(f"{self.spec}: the stream gave no frames")
                    return
                stamp = video.frame_time(capture, index, self.fps, stamp)
                yield SourceFrame(index, stamp, rgb, time.monotonic())
                index += 1
        finally:
            capture.release()

    def _live(self) -> Iterator[SourceFrame]:
        """A reader thread puts the newest frame in a one-slot queue; the consumer takes
        whatever is newest, so frames that arrive during processing are dropped."""
        slot: queue.Queue[SourceFrame | BaseException | None] = queue.Queue(maxsize=1)

        def put(item: SourceFrame | BaseException | None) -> None:
            while not self._stop.is_set():
                try:
                    if isinstance(item, SourceFrame):
                        slot.put_nowait(item)
                    else:  # the end or an error waits for the last frame to be taken
                        slot.put(item, timeout=0.1)
                    return
                except queue.Full:
                    if not isinstance(item, SourceFrame):
                        continue
                    try:
                        old = slot.get_nowait()
                        if isinstance(old, SourceFrame) and isinstance(item, SourceFrame):
                            self.dropped += 1
                    except queue.Empty:
                        pass

        def reader() -> None:
            try:
                self._read_live(put)
            except BaseException as error:  # handed to the consumer, raised there
                put(error)
                return
            put(None)

        thread = threading.Thread(target=reader, name="agegender-live-reader", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = slot.get(timeout=0.1)
                except queue.Empty:
                    if not thread.is_alive() and slot.empty():
                        return
                    continue
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            thread.join(timeout=5)

    def _read_live(self, put: Callable[[SourceFrame | BaseException | None], None]) -> None:
        index = 0
        failures = 0
        start = time.monotonic()
        file_stamp: float | None = None  # a file's last frame time
        capture: cv2.VideoCapture | None = None
        try:
            while not self._stop.is_set():
                if capture is None:
                    try:
                        capture = self._open()
                    except AgegenderError as error:
                        if self.kind == "file" or failures >= self.retries:
                            if failures and self.kind != "file":
                                raise StreamLost(
                                    f"{self.spec}: stream lost after {index} frames; "
                                    f"{failures} reconnection attempts failed ({error})"
                                    if index
                                    else f"{error} ({failures + 1} attempts)"
                                ) from None
                            raise
                        failures += 1
                        self.reconnects += 1
                        self._wait(min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1)))
                        continue
                    if self.kind == "file":
                        start = time.monotonic()
                rgb = self._read(capture)
                if rgb is None and self.kind == "file":
                    rgb = self._read_past_damage(capture)
                if rgb is None:
                    capture.release()
                    capture = None
                    if self.kind == "file":
                        if index == 0:
                            raise AgegenderError(f"{self.spec}: video has no readable frames")
                        return  # the end of a file is the end of the stream
                    failures += 1
                    if failures > self.retries:
                        raise StreamLost(
                            f"{self.spec}: stream lost after {index} frames, "
                            f"{self.retries} reconnection attempts failed"
                        )
                    self.reconnects += 1
                    self._wait(min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1)))
                    continue
                failures = 0
                now = time.monotonic()
                if self.kind == "file":
                    # a file plays at its own timing, as a camera would deliver it: its
                    # frames' own timestamps (a variable frame rate, frames skipped in a
                    # damaged stretch), index / fps where it has none
                    stamp = video.frame_time(capture, index, self.fps, file_stamp)
                    file_stamp = stamp
                    due = start + stamp
                    if due > now:
                        self._wait(due - now)
                    now = time.monotonic()
                else:
                    stamp = now - start
                put(SourceFrame(index, stamp, rgb, now))
                index += 1
        finally:
            if capture is not None:
                capture.release()

    def _read_past_damage(self, capture: cv2.VideoCapture) -> NDArray[np.uint8] | None:
        """A file's read failed: a packet the decoder refuses (a damaged stretch) fails
        one read and the frames after it decode again, as video.frames reads them; only
        a run of failures is the end of the file."""
        for _ in range(video.MAX_FAILED_GRABS):
            if self._stop.is_set():
                return None
            rgb = self._read(capture)
            if rgb is not None:
                return rgb
        return None

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)
