"""Video files: frames sampled at a fixed time step, decoded with OpenCV (FFmpeg).

Each sampled frame becomes an ``images.Frame`` that the pipeline treats like any other
image, named ``<path>@<seconds>s``; results carry the frame index and time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .images import Frame

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg"})
DEFAULT_STEP_SECONDS = 1.0


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def frames(
    path: str | Path, *, step: float = DEFAULT_STEP_SECONDS, max_frames: int | None = None
) -> Iterator[Frame]:
    """Frames every `step` seconds (step <= 0: every frame), lazily, in order.

    A video that cannot be opened or has no frames yields one Frame carrying the error.
    """
    name = str(path)
    if not Path(path).is_file():
        yield Frame(name, 0, 0.0, error=f"{name}: no such file")
        return
    capture = cv2.VideoCapture(name)
    try:
        if not capture.isOpened():
            yield Frame(name, 0, 0.0, error=f"{name}: cannot open as a video")
            return
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
        every = 1 if step <= 0 else max(1, round(step * fps))
        index = emitted = 0
        while max_frames is None or emitted < max_frames:
            # grab() skips decoding of frames that are not sampled.
            if not capture.grab():
                break
            if index % every == 0:
                ok, bgr = capture.retrieve()
                if ok and bgr is not None:
                    rgb = np.ascontiguousarray(bgr[:, :, ::-1], dtype=np.uint8)
                    yield Frame(name, index, index / fps, rgb)
                    emitted += 1
            index += 1
        if index == 0:
            yield Frame(name, 0, 0.0, error=f"{name}: video has no readable frames")
    finally:
        capture.release()
