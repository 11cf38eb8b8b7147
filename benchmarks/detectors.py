"""Detectors compared in one run: recall on composed scenes, faces found on FairFace tight
crops, and the age/gender accuracy of the default models with each detector's crops.

    python ../shared/tools/make_scenes.py ../shared/datasets/utkface-dev /tmp/scenes
    python benchmarks/detectors.py --scenes /tmp/scenes --tools ../shared/tools \\
        --fairface ../shared/datasets/fairface-dev --utkface ../shared/datasets/utkface-dev \\
        --setting dlib --setting centerface --setting centerface:max_detect_side=640

A setting is DETECTOR[:option=value,...] (EstimatorConfig options). Scenes are scored by
`score_scenes.py`, FairFace by `score_fairface.py` (both from --tools, fed our JSONL);
UTKFace: the face nearest the centre of each 200x200 chip, against labels.csv.
`--card FILE` points the centerface detector at a card file (for a file not yet in the
store). `--limit N` takes the first N images of each dataset and scores them against
their own labels only. Prints one JSON line per setting and dataset.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agegender import Estimator


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    detector, _, rest = text.partition(":")
    options: dict[str, Any] = {"detector": detector}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1] in "0123456789-[tfn" else value
    return text, options


def read_labels(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_jsonl(est: Estimator, paths: list[Path]) -> tuple[list[str], float]:
    lines = []
    started = time.perf_counter()
    for result in est.predict_many(str(p) for p in paths):
        lines.append(json.dumps(result.to_dict()))
    return lines, time.perf_counter() - started


def score(tool: Path, truth: Path, lines: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(tool), str(truth)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def limited_truth(truth: Path, names: set[str], out: Path) -> Path:
    """`truth` (truth.json or labels.csv) cut to the images in `names`, written into
    `out`: the scorers count recall and faces found over every entry of the file."""
    target = out / truth.name
    if truth.suffix == ".json":
        entries = [t for t in json.loads(truth.read_text()) if t["file"] in names]
        target.write_text(json.dumps(entries))
        return target
    with open(truth, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [r for r in reader if r["file"] in names]
        fields = reader.fieldnames or []
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return target


def utkface(est: Estimator, folder: Path, limit: int | None = None) -> dict[str, Any]:
    rows = read_labels(folder / "labels.csv")[:limit]
    paths = [folder / "images" / r["file"] for r in rows]
    errors, right, found = [], 0, 0
    started = time.perf_counter()
    for row, result in zip(rows, est.predict_many(str(p) for p in paths), strict=True):
        if not result.faces:
            continue
        found += 1
        cx, cy = (result.width or 0) / 2, (result.height or 0) / 2
        face = min(
            result.faces,
            key=lambda f: (
                ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2
            ),
        )
        errors.append(abs(face.age.value - float(row["age"])))  # type: ignore[union-attr]
        right += face.gender.label == row["gender"]  # type: ignore[union-attr]
    seconds = time.perf_counter() - started
    return {
        "images": len(rows),
        "found": found,
        "mae": round(statistics.fmean(errors), 3),
        "gender_acc": round(right / max(found, 1), 4),
        "images_per_s": round(len(rows) / seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", required=True)
    parser.add_argument("--scenes", type=Path)
    parser.add_argument("--fairface", type=Path)
    parser.add_argument("--utkface", type=Path)
    parser.add_argument("--tools", type=Path, default=Path("../shared/tools"))
    parser.add_argument("--card", type=Path, help="card file for the centerface detector")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per dataset")
    args = parser.parse_args()
    if args.card:
        from agegender import cards

        real = cards.get_card
        cards.get_card = lambda ref: (
            cards.load_card_file(args.card) if ref == "centerface" else real(ref)
        )  # type: ignore[assignment]
    work = Path(tempfile.mkdtemp(prefix="detectors-"))
    scenes: list[Path] = []
    fairface: list[Path] = []
    if args.scenes:
        scenes = sorted((args.scenes / "images").iterdir())[: args.limit]
        scenes_truth = args.scenes / "truth.json"
        if args.limit is not None:
            scenes_truth = limited_truth(scenes_truth, {p.name for p in scenes}, work)
    if args.fairface:
        names = [r["file"] for r in read_labels(args.fairface / "labels.csv")][: args.limit]
        fairface = [args.fairface / "images" / n for n in names]
        fairface_labels = args.fairface / "labels.csv"
        if args.limit is not None:
            fairface_labels = limited_truth(fairface_labels, set(names), work)
    try:
        for text in args.setting:
            name, options = parse_setting(text)
            est = Estimator(**options)
            est.warm()
            if args.scenes:
                lines, seconds = run_jsonl(est, scenes)
                out = score(args.tools / "score_scenes.py", scenes_truth, lines)
                out["ms_per_scene"] = round(1000 * seconds / len(scenes), 1)
                print(json.dumps({"setting": name, "data": "scenes", **out}), flush=True)
            if args.fairface:
                lines, seconds = run_jsonl(est, fairface)
                out = score(args.tools / "score_fairface.py", fairface_labels, lines)
                out["images_per_s"] = round(len(fairface) / seconds, 1)
                print(json.dumps({"setting": name, "data": "fairface", **out}), flush=True)
            if args.utkface:
                scored = utkface(est, args.utkface, args.limit)
                print(json.dumps({"setting": name, "data": "utkface", **scored}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
