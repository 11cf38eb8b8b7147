"""Cost of face alignment: detection + landmarks + crops per image with --align none,
landmarks and sweep, on the test photo rotated by 0 and 30 degrees.

    python benchmarks/align_cost.py [--rounds 5]

Uses the DEX margin crop (card dex-imdb-age, on a narrow stand-in graph: the model's time
is not what is measured here, only ``Estimator.prepare``). Reports the best and median
of the rounds, and the eye-line tilt of the crop measured by dlib on the crop.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import standins  # test support: the stand-in graph generator

from agegender.detectors.dlib_hog import DlibHogDetector
from agegender.images import load
from agegender.landmarks import Landmarker
from agegender.pipeline import Estimator

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "data" / "astronaut.png"


def rotated(rgb: np.ndarray, degrees: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, (w, h), borderValue=(128, 128, 128))


def tilt(crop: np.ndarray, landmarker: Landmarker) -> float | None:
    found = DlibHogDetector(upsample=0).detect(crop)
    if not found:
        return None
    points = landmarker(crop, max(found, key=lambda d: d.score).box)
    right, left = points[0:2].mean(axis=0), points[2:4].mean(axis=0)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    photo = load(PHOTO).rgb
    landmarker = Landmarker()
    print(f"image {photo.shape[1]}x{photo.shape[0]}, {os.cpu_count()} CPUs")
    print("| align | scene rotation | ms per image (best) | median | faces | crop eye tilt |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        path = standins.save(standins.vgg16(), Path(tmp) / "age.onnx")
        for align in ("none", "landmarks", "sweep"):
            est = Estimator.from_preset(
                "dex-imdb", age_models=[f"dex-imdb-age={path}"], gender_models=[], align=align
            )
            crop_key = est.heads["age"][0].crop_key
            for degrees in (0, 30):
                scene = rotated(photo, degrees)
                times = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    prepared = est.prepare(scene)
                    times.append(time.perf_counter() - t0)
                faces = len(prepared.detections)
                angle = None
                if faces:
                    best = max(range(faces), key=lambda i: prepared.detections[i].score)
                    angle = tilt(prepared.crops[crop_key][best], landmarker)
                shown = "no face" if angle is None else f"{angle:+.1f} deg"
                print(
                    f"| {align} | {degrees} | {min(times) * 1e3:.0f} "
                    f"| {statistics.median(times) * 1e3:.0f} | {faces} | {shown} |"
                )
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
