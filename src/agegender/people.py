"""People in a video: faces detected, followed across frames and estimated once per person.

:class:`PeopleTracker` takes frames in order. On a detection frame (every
``detect_every``-th) it runs the Estimator's detector and heads, matches the faces to
tracks (:mod:`agegender.tracking`) and adds each matched face's age and gender
distributions to its track's evidence, with a quality weight (face size, sharpness,
detector score: :func:`agegender.fusion.frame_weight`). Between detection frames the
tracks' boxes are carried by their Kalman filters and add no evidence. A track's
estimate at any time is its evidence fused by :func:`agegender.fusion.pool`, decoded by the
task's own decoder (so its interval, std and P(age >= t) read as a single frame's do).

A track ends when no face has matched it for ``max_lost`` seconds; only confirmed tracks
(``min_hits`` detections) become :class:`Person` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from .calibration import calibrate_in_band, temper
from .fusion import FusionSettings, centres_of, frame_weight, pool, sharpness
from .heads import DECODERS, Task, decode_face, distributions
from .pipeline import Estimator
from .results import AgeEstimate, GenderEstimate
from .streams import SourceFrame
from .tracking import DEFAULT_MIN_HITS, Box, Track, Tracker

DEFAULT_MAX_LOST_SECONDS = 1.0
MAX_EVIDENCE = 1000  # frames kept per track; beyond, the lowest-weight frame is dropped
# Path points kept per track: beyond, every other one goes and the spacing doubles (a face
# in view for days, a live stream, would otherwise add a point per detection for good).
PATH_KEPT = 2 * MAX_EVIDENCE
THUMB_SIDE = 160
THUMB_MARGIN = 0.3
PATH_POINTS = 10


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


@dataclass
class Evidence:
    """What one track has gathered: per detection frame its box, weight, distributions."""

    frames: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    probs: dict[str, list[NDArray[np.float64]]] = field(default_factory=dict)
    values: list[float] = field(default_factory=list)  # each frame's own age value
    best_weight: float = -1.0
    thumbnail: NDArray[np.uint8] | None = None
    thumbnail_frame: int | None = None
    # the best face (highest weight): frame index, time, box, detector score
    best: tuple[int, float, Box, float] | None = None
    seen: int = 0  # detection frames matched (also those dropped beyond MAX_EVIDENCE)
    # (estimates, frames_used, fusion details), cached until the next frame is added
    fused: tuple[dict[str, Any], int, dict[str, float]] | None = None
    # Where the face went, (t, cx, cy, side): the detected faces 0, k, 2k, ... (k doubles
    # when more than PATH_KEPT are kept) and the latest; the distance and the sides' total
    # run over every detected face.
    path: list[tuple[float, float, float, float]] = field(default_factory=list)
    path_step: int = 1
    last_point: tuple[float, float, float, float] | None = None
    distance: float = 0.0
    side_total: float = 0.0

    def add_point(self, point: tuple[float, float, float, float]) -> None:
        """The face's place in one more detection frame (after `seen` counted it)."""
        last = self.last_point
        if last is not None:
            self.distance += math.hypot(point[1] - last[1], point[2] - last[2])
        self.side_total += point[3]
        self.last_point = point
        if (self.seen - 1) % self.path_step == 0:
            self.path.append(point)
            if len(self.path) > PATH_KEPT:
                del self.path[1::2]
                self.path_step *= 2


@dataclass
class FaceInFrame:
    """A track's face in one frame (or an untracked, unconfirmed detection)."""

    track: int | None
    box: Box
    detected: bool
    score: float | None = None
    age: AgeEstimate | None = None  # this frame's own estimate (detection frames)
    gender: GenderEstimate | None = None
    fused_age: AgeEstimate | None = None  # the track's estimate so far
    fused_gender: GenderEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "track": self.track,
            "box": [_r(v, 1) for v in self.box],
            "detected": self.detected,
        }
        if self.detected:
            out["score"] = None if self.score is None else _r(self.score, 4)
            out["age"] = None if self.age is None else self.age.to_dict()
            out["gender"] = None if self.gender is None else self.gender.to_dict()
        if self.track is not None:
            out["fused"] = {
                "age": None if self.fused_age is None else self.fused_age.to_dict(),
                "gender": None if self.fused_gender is None else self.fused_gender.to_dict(),
            }
        return out


@dataclass
class FrameReport:
    index: int
    time: float
    detected: bool  # the detector ran on this frame
    faces: list[FaceInFrame]

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.index,
            "time": round(self.time, 3),
            "detected": self.detected,
            "faces": [f.to_dict() for f in self.faces],
        }


@dataclass
class Person:
    """One confirmed track, finished: the record written to tracks.jsonl."""

    id: int
    first_frame: int
    last_frame: int
    first_time: float
    last_time: float
    frames_seen: int
    frames_used: int
    path: dict[str, Any]
    age: AgeEstimate | None
    gender: GenderEstimate | None
    fusion: dict[str, float] = field(default_factory=dict)  # n_eff, correlation (rho)
    thumbnail: NDArray[np.uint8] | None = field(default=None, repr=False)
    thumbnail_frame: int | None = None
    best_frame: int | None = None  # the best face (highest weight), with or without thumbnails
    best_time: float | None = None
    best_box: Box | None = None
    best_score: float | None = None

    def to_dict(self, thumbnail_path: str | None = None) -> dict[str, Any]:
        return {
            "track": self.id,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "first_time": round(self.first_time, 3),
            "last_time": round(self.last_time, 3),
            "frames_seen": self.frames_seen,
            "frames_used": self.frames_used,
            "path": self.path,
            "age": None if self.age is None else self.age.to_dict(),
            "gender": None if self.gender is None else self.gender.to_dict(),
            "fusion": self.fusion,
            "thumbnail": thumbnail_path,
            "thumbnail_frame": self.thumbnail_frame,
        }


def face_distributions(estimator: Estimator, prepared: Any) -> dict[str, NDArray[np.float64]]:
    """Each task's combined distribution (faces x support) for a PreparedImage's faces:
    what ``Estimator.estimate`` computes before decoding."""
    combined = distributions(
        estimator.tasks, lambda head: prepared.crops[head.crop_key], tta=estimator.config.mirror()
    )
    return {role: np.asarray(rows, np.float64) for role, rows in combined.items()}


def evidence_row(task: Task, row: NDArray[np.float64], age: Any = None) -> NDArray[np.float64]:
    """One frame's distribution as evidence: calibrated as that frame's own estimate is
    (age: temperature and log-age smoothing; age groups: temperature; gender: the
    temperature of the frame's estimated-age band), so that each frame's spread is its
    error, which the fusion assumes."""
    calibration = task.calibration
    row = np.asarray(row, np.float64)
    if calibration is None:
        return row / row.sum() if row.sum() > 0 else row
    kind = task.support.kind
    if kind == "age":
        values = task.support.values
        mean = float(row @ values / row.sum()) if row.sum() > 0 else float("nan")
        out = calibrate_in_band(calibration, row, values, mean)
    elif kind == "gender":
        value = None if age is None else getattr(age, "value", None)
        out = temper(row, calibration.gender_temperature(value))
    else:
        out = temper(row, calibration.temperature)
    return np.asarray(out, np.float64)


def decode_fused(task: Task, probs: NDArray[np.float64], thresholds: Any) -> Any:
    """Decode a fused distribution of calibrated frames: no second temperature or
    smoothing, and no recalibration map (fitted on single frames' PIT values: the fused
    spread is the fusion's own error model's, rho, and no level fitted on that map's
    distributions); the interval mass and an older file's per-band widening still apply."""
    calibration = task.calibration
    if calibration is not None:
        calibration = replace(
            calibration,
            temperature=1.0,
            kernel=0.0,
            temperatures=(),
            kernels=(),
            pit=(),
            levels=(),
        )
    return DECODERS[task.support.kind](task.support, probs, thresholds, calibration, None)


class PeopleTracker:
    def __init__(
        self,
        estimator: Estimator,
        *,
        detect_every: int = 1,
        max_lost: float = DEFAULT_MAX_LOST_SECONDS,
        min_hits: int = DEFAULT_MIN_HITS,
        fusion: FusionSettings | None = None,
        thumbnails: bool = True,
    ):
        if detect_every < 1:
            raise ValueError("detect_every must be >= 1")
        self.estimator = estimator
        self.detect_every = detect_every
        self.fusion = fusion or FusionSettings()
        self.thumbnails = thumbnails
        # a track survives max_lost seconds without a match, by the frames' own times
        # (a variable frame rate, a live stream), and at least two detections
        self.tracker = Tracker(max_lost=2 * detect_every, min_hits=min_hits, max_lost_time=max_lost)
        self.frames_seen = 0
        self._centres: NDArray[np.float64] | None = None
        age = estimator.tasks.get("age")
        if age is not None:
            support = age.support
            self._centres = centres_of(
                support.values if support.kind == "age" else None, support.groups
            )

    # -- per frame -----------------------------------------------------------------------
    def process(self, frame: SourceFrame) -> tuple[FrameReport, list[Person]]:
        """Track one frame; returns its report and the people whose tracks ended."""
        detect = self.frames_seen % self.detect_every == 0
        self.frames_seen += 1
        rgb = frame.rgb
        detections: list[Any] = []
        probs: dict[str, NDArray[np.float64]] = {}
        estimates: dict[str, list[Any]] = {}
        if detect:
            prepared = self.estimator.prepare(rgb, f"frame {frame.index}")
            detections = prepared.detections
            if detections:
                probs = face_distributions(self.estimator, prepared)
                thresholds = self.estimator.config.age_thresholds
                tasks = self.estimator.tasks
                faces_est = [
                    decode_face(tasks, {r: p[i] for r, p in probs.items()}, thresholds)
                    for i in range(len(detections))
                ]
                estimates = {r: [e[r] for e in faces_est] for r in tasks}
                # the evidence is each frame's calibrated distribution (see _evidence_rows)
                probs = {
                    r: np.array(
                        [
                            evidence_row(tasks[r], row, faces_est[i].get("age"))
                            for i, row in enumerate(p)
                        ]
                    )
                    for r, p in probs.items()
                }
        boxes = [tuple(float(v) for v in d.box) for d in detections] if detect else None
        matches, ended = self.tracker.step(frame.index, boxes, frame.time)  # type: ignore[arg-type]
        faces: list[FaceInFrame] = []
        for match in matches:
            track = match.track
            evidence = self._evidence(track)
            face = FaceInFrame(track.id, track.box, match.detection is not None)
            if match.detection is not None:
                i = match.detection
                detection = detections[i]
                face.box = tuple(float(v) for v in detection.box)  # type: ignore[assignment]
                face.score = float(detection.score)
                face.age = estimates.get("age", [None] * (i + 1))[i]
                face.gender = estimates.get("gender", [None] * (i + 1))[i]
                rows = {r: p[i] for r, p in probs.items()}
                self._add(evidence, frame, rgb, detection, rows, face.age)
            elif track.id is None:
                continue  # an unconfirmed track between detections: not shown
            if track.id is not None:
                fused = self._fused(evidence)
                face.fused_age = fused.get("age")
                face.fused_gender = fused.get("gender")
            faces.append(face)
        people = [p for p in (self._person(t) for t in ended) if p is not None]
        return FrameReport(frame.index, frame.time, detect, faces), people

    def finish(self) -> list[Person]:
        """The people still tracked when the input ends, by id."""
        people = [p for p in (self._person(t) for t in self.tracker.finish()) if p is not None]
        return sorted(people, key=lambda p: p.id)

    # -- evidence ------------------------------------------------------------------------
    @staticmethod
    def _evidence(track: Track) -> Evidence:
        evidence = track.data.get("evidence")
        if evidence is None:
            evidence = track.data["evidence"] = Evidence()
        assert isinstance(evidence, Evidence)
        return evidence

    def _add(
        self,
        evidence: Evidence,
        frame: SourceFrame,
        rgb: NDArray[np.uint8],
        detection: Any,
        probs: dict[str, NDArray[np.float64]],
        age: AgeEstimate | None = None,
    ) -> None:
        x1, y1, x2, y2 = (round(v) for v in detection.box)
        height, width = rgb.shape[:2]
        face = rgb[max(0, y1) : min(height, y2), max(0, x1) : min(width, x2)]
        sharp = (
            sharpness(np.asarray(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), np.uint8))
            if face.size
            else 0.0
        )
        side = float(min(detection.width, detection.height))
        weight = frame_weight(side, sharp, float(detection.score))
        evidence.seen += 1
        evidence.frames.append(frame.index)
        evidence.times.append(frame.time)
        evidence.boxes.append(tuple(float(v) for v in detection.box))  # type: ignore[arg-type]
        evidence.weights.append(weight)
        if age is not None:
            evidence.values.append(float(age.value))
        for role, row in probs.items():
            evidence.probs.setdefault(role, []).append(row)
        evidence.add_point((frame.time, (x1 + x2) / 2, (y1 + y2) / 2, side))
        if len(evidence.weights) > MAX_EVIDENCE:
            drop = int(np.argmin(evidence.weights))
            for items in (
                evidence.frames,
                evidence.times,
                evidence.boxes,
                evidence.weights,
                evidence.values,
            ):
                del items[drop]
            for rows in evidence.probs.values():
                del rows[drop]
        evidence.fused = None
        if weight > evidence.best_weight:
            evidence.best_weight = weight
            box: Box = tuple(float(v) for v in detection.box)  # type: ignore[assignment]
            evidence.best = (frame.index, frame.time, box, float(detection.score))
            if self.thumbnails:
                evidence.thumbnail = _thumbnail(rgb, detection.box)
                evidence.thumbnail_frame = frame.index

    def _fused(self, evidence: Evidence) -> dict[str, Any]:
        if evidence.fused is not None:
            return evidence.fused[0]
        out: dict[str, Any] = {}
        used = None
        correlation: float | None = None
        fusion: dict[str, float] = {}
        thresholds = self.estimator.config.age_thresholds
        frames_used = len(evidence.weights)
        for role in ("age", "gender"):
            rows = evidence.probs.get(role)
            task = self.estimator.tasks.get(role)
            if not rows or task is None:
                continue
            pooled = pool(
                np.array(rows),
                evidence.weights,
                centres=self._centres if role == "age" else None,
                used=used,
                settings=self.fusion,
                correlation=correlation,
            )
            if role == "age":
                # gender uses the frames age kept, and the rho they showed
                used, correlation = pooled.used, pooled.correlation
                frames_used = pooled.frames_used
                fusion = {"n_eff": _r(pooled.n_eff), "correlation": _r(pooled.correlation, 3)}
            estimate = decode_fused(task, pooled.probs, thresholds)
            kept_frames = pooled.used
            if (
                role == "age"
                and task.support.kind == "age"
                and len(evidence.values) == len(kept_frames)
            ):
                # The value, as a frame's, is the raw models' expected value (calibration
                # smooths in log-age, which moves the mean): the kept frames' weighted mean.
                kept = np.where(kept_frames, evidence.weights, 0.0)
                value = float(np.dot(kept, evidence.values) / kept.sum())
                estimate = replace(estimate, value=value)
            out[role] = estimate
        evidence.fused = (out, frames_used, fusion)
        return out

    def _person(self, track: Track) -> Person | None:
        if track.id is None:
            return None
        evidence = self._evidence(track)
        if not evidence.frames or evidence.last_point is None:
            return None
        fused = self._fused(evidence)
        assert evidence.fused is not None
        best = evidence.best
        return Person(
            id=track.id,
            first_frame=track.first_frame,
            last_frame=track.last_frame,
            first_time=evidence.path[0][0],
            last_time=evidence.last_point[0],
            frames_seen=evidence.seen,
            frames_used=evidence.fused[1],
            fusion=evidence.fused[2],
            path=_path_summary(evidence),
            age=fused.get("age"),
            gender=fused.get("gender"),
            thumbnail=evidence.thumbnail,
            thumbnail_frame=evidence.thumbnail_frame,
            best_frame=None if best is None else best[0],
            best_time=None if best is None else best[1],
            best_box=None if best is None else best[2],
            best_score=None if best is None else best[3],
        )


def _thumbnail(rgb: NDArray[np.uint8], box: Box) -> NDArray[np.uint8]:
    x1, y1, x2, y2 = box
    mx, my = THUMB_MARGIN * (x2 - x1), THUMB_MARGIN * (y2 - y1)
    height, width = rgb.shape[:2]
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(width, math.ceil(x2 + mx)), min(height, math.ceil(y2 + my))
    crop = rgb[top:bottom, left:right]
    side = max(crop.shape[:2]) if crop.size else 0
    if side > THUMB_SIDE:
        scale = THUMB_SIDE / side
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), np.uint8)
    return np.ascontiguousarray(crop)


def _path_summary(evidence: Evidence) -> dict[str, Any]:
    """Where the face went: start and end centre and side, distance, a few points."""
    path = evidence.path
    if evidence.last_point is not None and path[-1] is not evidence.last_point:
        path = [*path, evidence.last_point]
    pts = np.array(path, float)
    picks = np.unique(np.linspace(0, len(pts) - 1, min(PATH_POINTS, len(pts))).round().astype(int))
    return {
        "start": [_r(v, 1) for v in pts[0, 1:]],
        "end": [_r(v, 1) for v in pts[-1, 1:]],
        "mean_side": _r(evidence.side_total / max(1, evidence.seen), 1),
        "distance": _r(evidence.distance, 1),
        "points": [[_r(pts[i, 0], 3), *(_r(v, 1) for v in pts[i, 1:])] for i in picks],
    }
