"""Multi-object tracking of face boxes: a constant-velocity Kalman filter per face and
Hungarian assignment (SciPy's ``linear_sum_assignment``) on IoU, as in SORT.

Why not ByteTrack from ``supervision``: faces come from one detector whose scores are not
calibrated across backends (dlib's margin, Haar's stage weight), so ByteTrack's two-pass
high/low score split has nothing reliable to split on; and SciPy is already a dependency,
while supervision brings its own detection types and a dozen packages. The filter here is
SORT's (Bewley et al. 2016) on (centre, width, height) with their velocities.

Frames are counted by index (``step(frame, boxes)``): between detections (``boxes=None``:
a frame that was not run through the detector) every track's box is the filter's
prediction. A track is *confirmed* after ``min_hits`` matched detections, and ended when
no detection has matched it for more than ``max_lost`` frames; a face that leaves and
comes back after that gets a new track (there is no appearance re-identification).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

Box = tuple[float, float, float, float]

DEFAULT_IOU_GATE = 0.2
DEFAULT_MIN_HITS = 3
# Frame times are sums and quotients of floats (index / fps, milliseconds / 1000): a gap
# of exactly max_lost_time seconds must not count as longer.
TIME_TOLERANCE = 1e-6


def iou_matrix(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """IoU of every box of `a` (n, 4) with every box of `b` (m, 4), boxes [x1, y1, x2, y2]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class BoxFilter:
    """Constant-velocity Kalman filter on (cx, cy, w, h) and their per-frame velocities.

    Noise scales with the face's size, so that a small far face and a big near one are
    followed alike.
    """

    def __init__(self, box: Box):
        x1, y1, x2, y2 = box
        side = max(1.0, max(x2 - x1, y2 - y1))
        self.x = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0, 0, 0, 0], float)
        self.P = np.diag([0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 0.25, 0.25]) * side**2
        self.side = side

    def _F(self, dt: float) -> NDArray[np.float64]:
        F = np.eye(8)
        F[:4, 4:] = np.eye(4) * dt
        return F

    def predict(self, dt: float = 1.0) -> Box:
        F = self._F(dt)
        q = (0.03 * self.side) ** 2
        # white-noise acceleration, per axis
        G = np.vstack([np.eye(4) * (dt * dt / 2), np.eye(4) * dt])
        Q = G @ G.T * q
        self.x = F @ self.x
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)
        self.P = F @ self.P @ F.T + Q
        return self.box

    def update(self, box: Box) -> None:
        x1, y1, x2, y2 = box
        z = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], float)
        H = np.hstack([np.eye(4), np.zeros((4, 4))])
        R = np.eye(4) * (0.05 * self.side) ** 2
        S = H @ self.P @ H.T + R
        K = self.P @ H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - H @ self.x)
        self.P = (np.eye(8) - K @ H) @ self.P
        self.side = 0.8 * self.side + 0.2 * max(1.0, max(z[2], z[3]))

    @property
    def box(self) -> Box:
        cx, cy, w, h = self.x[:4]
        return (float(cx - w / 2), float(cy - h / 2), float(cx + w / 2), float(cy + h / 2))


@dataclass
class Track:
    """One followed face. ``id`` is given when the track is confirmed (1, 2, ...)."""

    key: int  # internal, unique per tracker
    filter: BoxFilter
    first_frame: int
    last_frame: int  # last frame a detection matched
    hits: int = 1
    last_time: float | None = None  # its time, when the caller gives times
    id: int | None = None
    frame: int = 0  # frame of the filter's current state
    data: dict[str, object] = field(default_factory=dict)  # the caller's per-track state

    @property
    def box(self) -> Box:
        return self.filter.box

    @property
    def confirmed(self) -> bool:
        return self.id is not None


@dataclass
class Match:
    """A track's place in one frame: the detection it matched (index) or None (carried)."""

    track: Track
    detection: int | None


class Tracker:
    """SORT-style tracker: predict, match by IoU (Hungarian), update, start, end."""

    def __init__(
        self,
        *,
        max_lost: int = 10,
        min_hits: int = DEFAULT_MIN_HITS,
        iou_gate: float = DEFAULT_IOU_GATE,
        max_lost_time: float | None = None,
    ):
        """`max_lost`: frames without a matching detection before a track ends; with
        `max_lost_time` (seconds) it must also have been unseen that long, by the times
        given to `step` (a variable-frame-rate video, a live stream: frames are not
        evenly spaced, so a frame count is not a time)."""
        if max_lost < 0 or min_hits < 1 or not 0 < iou_gate <= 1:
            raise ValueError("need max_lost >= 0, min_hits >= 1 and 0 < iou_gate <= 1")
        if max_lost_time is not None and not max_lost_time >= 0:
            raise ValueError("need max_lost_time >= 0")
        self.max_lost = max_lost
        self.max_lost_time = max_lost_time
        self.min_hits = min_hits
        self.iou_gate = iou_gate
        self.tracks: list[Track] = []
        self._keys = 0
        self._ids = 0

    def step(
        self, frame: int, boxes: Sequence[Box] | None, time: float | None = None
    ) -> tuple[list[Match], list[Track]]:
        """Advance to `frame` (at `time` seconds, needed with `max_lost_time`) with its
        detected `boxes` (None: not detected this frame).

        Returns the live tracks' matches (every track alive after this frame, confirmed
        or not) and the tracks that ended (no detection for more than `max_lost` frames,
        and more than `max_lost_time` seconds when that is set).
        """
        # With times, a track unseen too long ends before this frame's detections are
        # matched: a face that comes back after max_lost_time is a new person, even when
        # no frame came in between to end its track (a variable frame rate, a stall).
        early: list[Track] = []
        if self.max_lost_time is not None and time is not None:
            early = self._end([t for t in self.tracks if self._lost(t, frame, time)])
        for track in self.tracks:
            dt = frame - track.frame
            if dt > 0:
                track.filter.predict(float(dt))
                track.frame = frame
        matches: list[Match] = []
        if boxes is None:
            matches = [Match(t, None) for t in self.tracks]
        else:
            dets = np.asarray(boxes, float).reshape(-1, 4)
            predicted = np.array([t.box for t in self.tracks], float).reshape(-1, 4)
            iou = iou_matrix(predicted, dets)
            matched: dict[int, int] = {}
            if iou.size:
                rows, cols = linear_sum_assignment(-iou)
                matched = {
                    int(r): int(c)
                    for r, c in zip(rows, cols, strict=True)
                    if iou[r, c] >= self.iou_gate
                }
            used = set(matched.values())
            for index, track in enumerate(self.tracks):
                det = matched.get(index)
                if det is not None:
                    track.filter.update(tuple(dets[det]))  # type: ignore[arg-type]
                    track.hits += 1
                    track.last_frame = frame
                    track.last_time = time
                    if track.id is None and track.hits >= self.min_hits:
                        self._ids += 1
                        track.id = self._ids
                matches.append(Match(track, det))
            for det in range(len(dets)):
                if det not in used:
                    self._keys += 1
                    box: Box = tuple(float(v) for v in dets[det])  # type: ignore[assignment]
                    track = Track(
                        self._keys, BoxFilter(box), frame, frame, last_time=time, frame=frame
                    )
                    if self.min_hits <= 1:
                        self._ids += 1
                        track.id = self._ids
                    self.tracks.append(track)
                    matches.append(Match(track, det))
        ended = self._end([t for t in self.tracks if self._lost(t, frame, time)])
        gone = {t.key for t in ended}
        matches = [m for m in matches if m.track.key not in gone]
        return matches, early + ended

    def _end(self, tracks: list[Track]) -> list[Track]:
        """Remove `tracks` from the live ones; returns them."""
        gone = {t.key for t in tracks}
        self.tracks = [t for t in self.tracks if t.key not in gone]
        return tracks

    def _lost(self, track: Track, frame: int, time: float | None) -> bool:
        if frame - track.last_frame <= self.max_lost:
            return False
        if self.max_lost_time is None or time is None or track.last_time is None:
            return True
        return time - track.last_time > self.max_lost_time + TIME_TOLERANCE

    def finish(self) -> list[Track]:
        """End every track (the input is over)."""
        ended, self.tracks = self.tracks, []
        return ended
