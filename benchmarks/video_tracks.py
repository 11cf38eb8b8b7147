"""`agegender video` on composed clips: speed, and per-track vs per-frame accuracy.

    python benchmarks/video_tracks.py speed                      # astronaut clips, frames/s
    python benchmarks/video_tracks.py utkface ../shared/datasets/utkface-dev [--clips 40]

speed: 60-frame clips at 640x480 (2 faces) and 1280x720 (3 faces), composed from
tests/data/astronaut.png, run through the command with detection on every frame and on
every 3rd; frames/s is the wall time of the run after the models are loaded.

utkface: clips of two UTKFace chips (known age and gender) moving across a 640x480
canvas, scaled over time, with some frames blurred and some half covered by a bar; the
tracks are matched to the true faces and scored: identity switches, MAE of the fused
estimate vs of single frames, gender accuracy, coverage of the 80% intervals.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from faceutils import gradient_canvas  # noqa: E402

from agegender.fusion import FusionSettings  # noqa: E402
from agegender.people import PeopleTracker  # noqa: E402
from agegender.pipeline import Estimator  # noqa: E402
from agegender.streams import Source  # noqa: E402
from agegender.tracking import iou_matrix  # noqa: E402

FPS = 10


def paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    h, w = image.shape[:2]
    H, W = canvas.shape[:2]
    xs, ys, xe, ye = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if xe > xs and ye > ys:
        canvas[ys:ye, xs:xe] = image[ys - y : ye - y, xs - x : xe - x]


def write(path: Path, frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (w, h))
    for rgb in frames:
        out.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    out.release()


# -- speed ----------------------------------------------------------------------------------


def speed(_: argparse.Namespace) -> None:
    with Image.open(ROOT / "tests/data/astronaut.png") as image:
        rgb = np.asarray(image.convert("RGB"))
    patch = rgb[30:240, 130:320]
    estimator = Estimator()
    estimator.warm()
    with tempfile.TemporaryDirectory() as tmp:
        for width, height, faces in ((640, 480, 2), (1280, 720, 3)):
            bg = gradient_canvas(height, width)
            frames = []
            for i in range(60):
                canvas = bg.copy()
                for f in range(faces):
                    x = 20 + f * (width // faces) + 3 * i
                    paste(canvas, patch, x, 40 + 120 * (f % 2) + i)
                frames.append(canvas)
            clip = Path(tmp) / f"{width}x{height}.avi"
            write(clip, frames)
            for every in (1, 3):
                tracker = PeopleTracker(estimator, detect_every=every)
                start = time.perf_counter()
                count = 0
                for frame in Source(str(clip)).frames():
                    tracker.process(frame)
                    count += 1
                people = tracker.finish()
                elapsed = time.perf_counter() - start
                print(
                    f"{width}x{height} {faces} faces, detect every {every}: "
                    f"{count / elapsed:.1f} frames/s ({len(people)} people)"
                )


# -- UTKFace clips --------------------------------------------------------------------------


def utkface(args: argparse.Namespace) -> None:
    root = Path(args.folder)
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    rows = rows[: 2 * args.clips]
    estimator = Estimator()
    width, height = 640, 480
    bg = gradient_canvas(height, width)
    switches = 0
    track_err, frame_err, track_hit, frame_hit = [], [], [], []
    track_width, frame_width, track_gender, frame_gender = [], [], [], []
    missed = 0
    rhos: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in range(args.clips):
            people = rows[2 * c : 2 * c + 2]
            chips = []
            for person in people:
                with Image.open(root / "images" / person["file"]) as image:
                    chips.append(np.asarray(image.convert("RGB")))
            starts = [
                (rng.uniform(0, 150), rng.uniform(0, 250)),
                (rng.uniform(300, 420), rng.uniform(0, 250)),
            ]
            velocity = [(rng.uniform(-4, 4), rng.uniform(-3, 3)) for _ in people]
            frames, truth = [], []
            for i in range(args.frames):
                canvas = bg.copy()
                boxes = []
                for p, chip in enumerate(chips):
                    scale = 0.9 + 0.3 * math.sin(i / 6 + p)
                    img = cv2.resize(chip, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                    if rng.random() < 0.15:
                        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.5, 3.0))
                    if rng.random() < 0.1:  # the lower half covered
                        img = img.copy()
                        img[img.shape[0] // 2 :] = 40
                    x = int(starts[p][0] + velocity[p][0] * i)
                    y = int(starts[p][1] + velocity[p][1] * i)
                    paste(canvas, img, x, y)
                    h, w = img.shape[:2]
                    boxes.append((x + 0.2 * w, y + 0.2 * h, x + 0.8 * w, y + 0.85 * h))
                frames.append(canvas)
                truth.append(boxes)
            clip = Path(tmp) / f"clip{c}.avi"
            write(clip, frames)
            tracker = PeopleTracker(
                estimator,
                fusion=FusionSettings(correlation=args.correlation, adaptive=not args.fixed),
            )
            ids: list[list[int]] = [[] for _ in people]
            found = []
            for frame, boxes in zip(Source(str(clip)).frames(), truth, strict=False):
                report, ended = tracker.process(frame)
                found += ended
                faces = [f for f in report.faces if f.track is not None]
                for p, box in enumerate(boxes):
                    if not faces:
                        continue
                    iou = iou_matrix(np.array([box]), np.array([f.box for f in faces]))[0]
                    if iou.max() < 0.2:
                        continue
                    face = faces[int(iou.argmax())]
                    ids[p].append(face.track)  # type: ignore[arg-type]
                    if face.detected and face.age is not None and face.gender is not None:
                        age = float(people[p]["age"])
                        frame_err.append(abs(face.age.value - age))
                        lo, hi = face.age.interval
                        frame_hit.append(lo <= age <= hi)
                        frame_width.append(hi - lo)
                        frame_gender.append(face.gender.label == people[p]["gender"])
            found += tracker.finish()
            by_id = {t.id: t for t in found}
            for p, seq in enumerate(ids):
                switches += sum(a != b for a, b in itertools.pairwise(seq))
                if not seq:
                    missed += 1
                    continue
                main_id = max(set(seq), key=seq.count)
                track = by_id.get(main_id)
                if track is None or track.age is None or track.gender is None:
                    missed += 1
                    continue
                age = float(people[p]["age"])
                track_err.append(abs(track.age.value - age))
                lo, hi = track.age.interval
                track_hit.append(lo <= age <= hi)
                track_width.append(hi - lo)
                track_gender.append(track.gender.label == people[p]["gender"])
                rhos.append(track.fusion.get("correlation", float("nan")))
    print(f"{args.clips} clips x 2 people x {args.frames} frames, correlation {args.correlation}")
    print(f"identity switches: {switches}; people without a track: {missed}")
    print(
        f"single frames ({len(frame_err)}): MAE {np.mean(frame_err):.2f}, gender "
        f"{np.mean(frame_gender):.3f}, 80% interval coverage {np.mean(frame_hit):.3f}, "
        f"mean width {np.mean(frame_width):.1f}"
    )
    print(
        f"tracks ({len(track_err)}): MAE {np.mean(track_err):.2f}, gender "
        f"{np.mean(track_gender):.3f}, 80% interval coverage {np.mean(track_hit):.3f}, "
        f"mean width {np.mean(track_width):.1f}"
    )
    low, mid, high = np.percentile(rhos, [5, 50, 95])
    print(f"rho per track: 5% {low:.3f}, median {mid:.3f}, 95% {high:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("speed").set_defaults(run=speed)
    utk = sub.add_parser("utkface")
    utk.add_argument("folder")
    utk.add_argument("--clips", type=int, default=40)
    utk.add_argument("--frames", type=int, default=15)
    utk.add_argument("--correlation", type=float, default=0.8)
    utk.add_argument("--fixed", action="store_true", help="rho = --correlation, not adapted")
    utk.set_defaults(run=utkface)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
