"""Chip landmarks from CenterFace's own 5 points (a template) against dlib's predictor.

    # 1. the template: CenterFace's points in dlib's chip frame, averaged over utkface-calib
    python benchmarks/chip_template.py fit ../shared/datasets/utkface-calib/images
    # 2. both ways in one run (the card's template against dlib's predictor)
    python benchmarks/chip_template.py compare -- ../shared/datasets/utkface-dev/images \\
        --format utkface --age-model cc0-age-v1 --gender-model cc0-gender-v1 --calibration none
    # 3. time per face: dlib's predictor on the box against the template fit
    python benchmarks/chip_template.py timing ../shared/datasets/utkface-dev/images
    # 4. composed scenes (make_scenes.py): MAE and gender of upright and rotated faces
    python benchmarks/chip_template.py scenes /tmp/sim/scenes

`fit`: for each image, the largest CenterFace face (the card's detector, predictor mode)
and dlib's 5 points on its dlib_box; CenterFace's points mapped into dlib's chip frame
(size 1, padding 0) by the transform dlib's chip makes of those 5 points, then averaged.
`compare` registers DETECTOR+predictor and DETECTOR+template (the card with
chip_landmarks set to each) and runs `agegender evaluate --compare
default:detector=D+predictor default:detector=D+template` with the arguments after `--`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agegender import chip_template, faces, store
from agegender.cards import get_card
from agegender.detectors.centerface import CenterFaceDetector
from agegender.images import load
from agegender.landmarks import Landmarker


def detector(card_id: str, mode: str | None = None) -> CenterFaceDetector:
    card = get_card(card_id)
    assert card.detection is not None
    if mode is not None:
        card = replace(card, detection=replace(card.detection, chip_landmarks=mode))
    return CenterFaceDetector(card, store.resolve(card))


def register(card_id: str, mode: str) -> str:
    """DETECTOR+MODE in the registry: the card with chip_landmarks = MODE."""
    name = f"{card_id}+{mode}"
    faces.DETECTORS[name] = faces.DetectorSpec(
        name, f"chip landmarks: {mode}", lambda config: detector(card_id, mode)
    )
    return name


def images(folder: Path, limit: int | None) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:limit]


def fit(args: argparse.Namespace) -> None:
    det, landmarker = detector(args.detector, "predictor"), Landmarker()
    mapped, residuals = [], []
    for path in images(args.folder, args.limit):
        rgb = load(str(path)).rgb
        found = det.detect(rgb)
        if not found:
            continue
        face = max(found, key=lambda d: d.width * d.height)
        assert face.keypoints is not None
        dlib_points = landmarker(rgb, face.landmark_box or face.box)
        to_chip = chip_template.to_chip_frame(dlib_points)
        mapped.append(chip_template.apply(to_chip, face.keypoints))
        residuals.append(
            float(
                np.abs(
                    chip_template.apply(to_chip, dlib_points) - chip_template.DLIB_CHIP_POINTS
                ).max()
            )
        )
    points = np.stack(mapped)
    template = points.mean(axis=0)
    print(
        json.dumps(
            {
                "faces": len(points),
                "template": np.round(template, 4).tolist(),
                "median": np.round(np.median(points, axis=0), 4).tolist(),
                "std": np.round(points.std(axis=0), 4).tolist(),
                "dlib_fit_residual_median": round(statistics.median(residuals), 4),
            }
        )
    )


def compare(args: argparse.Namespace) -> int:
    from agegender import cli

    names = [register(args.detector, mode) for mode in ("predictor", "template")]
    rest = [a for a in args.rest if a != "--"]
    return cli.main(["evaluate", *rest, "--compare", *(f"default:detector={n}" for n in names)])


def timing(args: argparse.Namespace) -> None:
    det, landmarker = detector(args.detector, "predictor"), Landmarker()
    template = np.asarray(get_card(args.detector).detection.chip_template)  # type: ignore[union-attr]
    predictor, fitted = [], []
    for path in images(args.folder, args.limit):
        rgb = load(str(path)).rgb
        for face in det.detect(rgb):
            started = time.perf_counter()
            landmarker(rgb, face.landmark_box or face.box)
            predictor.append(time.perf_counter() - started)
            started = time.perf_counter()
            chip_template.landmarks_from_keypoints(face.keypoints, template)
            fitted.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "faces": len(predictor),
                "predictor_ms_median": round(1000 * statistics.median(predictor), 3),
                "predictor_ms_mean": round(1000 * statistics.fmean(predictor), 3),
                "template_ms_median": round(1000 * statistics.median(fitted), 3),
                "template_ms_mean": round(1000 * statistics.fmean(fitted), 3),
            }
        )
    )


def scenes(args: argparse.Namespace) -> None:
    """Each truth face matched to the found face nearest its centre (within half its size)."""
    from agegender import Estimator

    truth = json.loads((args.folder / "truth.json").read_text())[: args.limit]
    for name in (register(args.detector, "predictor"), register(args.detector, "template")):
        est = Estimator.from_preset(
            "default",
            detector=name,
            age_models=["cc0-age-v1"],
            gender_models=["cc0-gender-v1"],
            calibration="none",
        )
        paths = [str(args.folder / "images" / scene["file"]) for scene in truth]
        scores: dict[str, list[tuple[float, bool]]] = {"upright": [], "rotated": []}
        for scene, result in zip(truth, est.predict_many(paths), strict=True):
            for want in scene["faces"]:
                near = [
                    f
                    for f in result.faces
                    if abs((f.box[0] + f.box[2]) / 2 - want["cx"]) < want["size"] / 2
                    and abs((f.box[1] + f.box[3]) / 2 - want["cy"]) < want["size"] / 2
                ]
                if not near:
                    continue
                face = near[0]
                assert face.age is not None and face.gender is not None
                kind = "rotated" if want["angle"] else "upright"
                scores[kind].append(
                    (abs(face.age.value - want["age"]), face.gender.label == want["gender"])
                )
        out: dict[str, object] = {"setting": name}
        for kind, rows in scores.items():
            out[kind] = {
                "faces": len(rows),
                "mae": round(statistics.fmean(e for e, _ in rows), 3),
                "gender_acc": round(statistics.fmean(g for _, g in rows), 4),
            }
        print(json.dumps(out), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", default="centerface-int8", help="a CenterFace card")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("fit", "timing", "scenes"):
        p = sub.add_parser(command)
        p.add_argument("folder", type=Path)
        p.add_argument("--limit", type=int)
    p = sub.add_parser("compare")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- agegender evaluate's arguments")
    args = parser.parse_args()
    if args.command == "fit":
        fit(args)
    elif args.command == "timing":
        timing(args)
    elif args.command == "scenes":
        scenes(args)
    else:
        return compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
