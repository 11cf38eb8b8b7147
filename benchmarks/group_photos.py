"""Group photos for measuring face recall: compose them from labelled chips, score a run.

    python benchmarks/group_photos.py compose CHIPS_DIR OUT_DIR [--faces 300] [--seed 3]
    agegender predict OUT_DIR/images --jsonl > run.jsonl
    python benchmarks/group_photos.py score OUT_DIR/truth.json run.jsonl
    python benchmarks/group_photos.py closeups CHIPS_DIR OUT_DIR [--photos 100] [--seed 3]

``compose`` pastes UTKFace-style chips (CHIPS_DIR/labels.csv with file, age, gender, and
CHIPS_DIR/images/) onto smooth random backgrounds: by default 4,000 x 3,000 photos (12 MP,
a phone's) of 8-20 faces whose chips are 50-150 px (faces of about 40-110 px), 40% of them
turned by 15-35 degrees, saved as JPEG (quality 92) with OUT_DIR/truth.json (per face: centre,
chip size, angle, age, gender). The composition is that of the composed scenes used
throughout the README (``make_scenes.py`` of the development data: the same random draws
for a seed) with the photo size, faces per photo and chip sizes as options, so the 1,280 x
960 scenes are ``--width 1280 --height 960 --per-photo 1,5 --sizes 90,260``.

``score`` matches each reported face to a true one as ``score_scenes.py`` does (centre within
0.3 of the chip size, width 0.3-1.3 of it, each true face once) and prints recall (all,
upright, turned), false faces per photo, and the MAE and gender accuracy of the faces found.
With ``--by-size`` it prints two more lines: recall by the true face's size (0.87 of the
chip: under 24 px, 24-32, 32-40, 40-56, 56 and up), and, by the width of the box reported
(under 32 px, 32-48, 48-96, 96 and up), the faces found, the share whose 80% interval holds
the true age (ends included, as ``agegender evaluate`` counts it), the interval's mean
width, the MAE, the gender accuracy and the mean probability stated for the gender given.

    python benchmarks/group_photos.py shrink SCENES_DIR OUT_DIR --scale 0.25

``shrink`` makes small pictures with small faces from composed ones (``make_scenes.py``'s or
``compose``'s folder: images/ and truth.json): each image scaled by ``--scale`` with area
averaging, saved as JPEG (quality 95), its truth scaled alike.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np


def _pair(text: str) -> tuple[int, int]:
    low, high = (int(v) for v in text.split(","))
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW <= HIGH, got {text!r}")
    return low, high


def _fresh_output(out: Path) -> None:
    """OUT/images made empty: a folder this script made (it holds truth.json) is replaced."""
    if out.is_dir():
        if not (out / "truth.json").is_file():
            sys.exit(f"{out}: exists and holds no truth.json (not a folder this script made)")
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)


def compose(args: argparse.Namespace) -> None:
    src, out = Path(args.chips), Path(args.out)
    with (src / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    count = min(args.faces, len(rows))
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    _fresh_output(out)
    width, height = args.width, args.height
    truth: list[dict] = []
    used = index = 0
    nprng = np.random.default_rng(args.seed)
    while used < count:
        k = min(rng.randint(*args.per_photo), count - used)
        low = nprng.random((6, 8, 3)) * 255
        background = cv2.resize(
            low.astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC
        )
        canvas = background.astype(np.float32)
        canvas += nprng.normal(0, 6, canvas.shape)
        canvas = np.clip(canvas, 0, 255)
        placed: list[tuple[int, int, int]] = []
        faces = []
        for row in rows[used : used + k]:
            chip = cv2.imread(str(src / "images" / row["file"])).astype(np.float32)
            for _ in range(200):
                size = rng.randint(*args.sizes)
                cx, cy = rng.randint(size, width - size), rng.randint(size, height - size)
                if all(math.hypot(cx - px, cy - py) > 0.75 * (size + ps) for px, py, ps in placed):
                    break
            else:
                continue
            # upright (the choice among zeros only keeps make_scenes.py's random draws)
            upright = rng.random() < 0.6
            angle = rng.choice([0, 0, 0]) if upright else rng.choice([-1, 1]) * rng.uniform(15, 35)
            big = int(size * 1.5)
            tile = cv2.resize(chip, (size, size), interpolation=cv2.INTER_AREA)
            pad = (big - size) // 2
            mask = np.zeros((size, size), np.float32)
            cv2.rectangle(mask, (4, 4), (size - 5, size - 5), 1.0, -1)
            mask = cv2.GaussianBlur(mask, (9, 9), 3)
            border = (pad, big - size - pad, pad, big - size - pad)
            tile = cv2.copyMakeBorder(tile, *border, cv2.BORDER_CONSTANT)
            mask = cv2.copyMakeBorder(mask, *border, cv2.BORDER_CONSTANT)
            turn = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
            tile = cv2.warpAffine(tile, turn, (big, big), flags=cv2.INTER_LINEAR)
            mask = cv2.warpAffine(mask, turn, (big, big), flags=cv2.INTER_LINEAR)[..., None]
            x0, y0 = cx - big // 2, cy - big // 2
            roi = canvas[y0 : y0 + big, x0 : x0 + big]
            canvas[y0 : y0 + big, x0 : x0 + big] = roi * (1 - mask) + tile * mask
            placed.append((cx, cy, size))
            faces.append(
                {
                    "cx": cx,
                    "cy": cy,
                    "size": size,
                    "angle": round(angle, 1),
                    "age": int(row["age"]),
                    "gender": row["gender"],
                    "source": row["file"],
                }
            )
        used += k
        name = f"scene_{index:04d}.jpg"
        cv2.imwrite(
            str(out / "images" / name), canvas.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        truth.append({"file": name, "faces": faces})
        index += 1
    (out / "truth.json").write_text(json.dumps(truth, indent=0))
    turned = sum(1 for t in truth for f in t["faces"] if f["angle"])
    print(f"{index} photos, {sum(len(t['faces']) for t in truth)} faces, {turned} turned")


def closeups(args: argparse.Namespace) -> None:
    """One chip per photo, scaled to `share` (uniform in 0.2-0.95, or `--shares`) of the
    shorter side of a 4,000 x 3,000 or 3,000 x 4,000 photo (or one of `--sizes`), at a
    random place on a smooth random background: close-ups (portraits, selfies) as a phone
    takes them. A chip larger than the photo (share over 1: the face, about 0.87 of a
    UTKFace chip, fills the frame) is centred, within a tenth of its overhang."""
    src, out = Path(args.chips), Path(args.out)
    with (src / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    nprng = np.random.default_rng(args.seed)
    _fresh_output(out)
    truth = []
    for index, row in enumerate(rows[: args.photos]):
        if args.sizes:
            width, height = rng.choice(args.sizes)
        else:
            width, height = (4000, 3000) if rng.random() < 0.5 else (3000, 4000)
        low = (nprng.random((6, 8, 3)) * 255).astype(np.uint8)
        canvas = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        canvas += nprng.normal(0, 6, canvas.shape)
        canvas = np.clip(canvas, 0, 255)
        share = rng.uniform(*args.shares)
        size = int(share * min(width, height))
        chip = cv2.imread(str(src / "images" / row["file"]))
        tile = cv2.resize(chip, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        x0, y0 = (_place(rng, side, size) for side in (width, height))
        tx, ty = max(0, -x0), max(0, -y0)
        pasted = tile[ty : ty + height - max(0, y0), tx : tx + width - max(0, x0)]
        canvas[
            max(0, y0) : max(0, y0) + pasted.shape[0], max(0, x0) : max(0, x0) + pasted.shape[1]
        ] = pasted
        name = f"close_{index:04d}.jpg"
        cv2.imwrite(
            str(out / "images" / name), canvas.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        face = {"cx": x0 + size // 2, "cy": y0 + size // 2, "size": size, "angle": 0}
        face |= {"age": int(row["age"]), "gender": row["gender"], "share": round(share, 3)}
        truth.append({"file": name, "faces": [face]})
    (out / "truth.json").write_text(json.dumps(truth))
    print(f"{len(truth)} close-ups")


def _place(rng: random.Random, side: int, size: int) -> int:
    """Where a chip of `size` starts along a photo's `side`: anywhere it fits whole, or,
    larger than the side, centred within a tenth of its overhang."""
    if size <= side:
        return rng.randint(0, side - size)
    over = size - side
    return -over // 2 + rng.randint(-over // 10, over // 10)


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(v) for v in part.split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH[,WxH...], got {text!r}") from None
    if any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected WxH[,WxH...], got {text!r}")
    return [(s[0], s[1]) for s in sizes]


def _shares(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    if not 0 < low <= high <= 2:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH <= 2, got {text!r}")
    return low, high


def score(args: argparse.Namespace) -> None:
    truth = {t["file"]: t["faces"] for t in json.loads(Path(args.truth).read_text())}
    found = {"upright": 0, "turned": 0}
    total = {"upright": 0, "turned": 0}
    false_faces, errors, right = 0, [], []
    matched: list[tuple[dict, dict]] = []
    seen: set[str] = set()
    for line in Path(args.predictions).read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        name = Path(record.get("path", "")).name
        if name not in truth or name in seen:
            continue
        seen.add(name)
        taken: set[int] = set()
        for face in record.get("faces") or []:
            x1, y1, x2, y2 = (float(v) for v in face["box"])
            cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
            best: tuple[float, int] | None = None
            for i, t in enumerate(truth[name]):
                distance = math.hypot(cx - t["cx"], cy - t["cy"])
                if i in taken or distance >= 0.3 * t["size"]:
                    continue
                if 0.3 * t["size"] <= w <= 1.3 * t["size"] and (best is None or distance < best[0]):
                    best = (distance, i)
            if best is None:
                false_faces += 1
                continue
            taken.add(best[1])
            t = truth[name][best[1]]
            errors.append(abs(float(face["age"]["value"]) - t["age"]))
            right.append(str(face["gender"]["label"]).lower() == t["gender"])
            found["turned" if t["angle"] else "upright"] += 1
            matched.append((t, face))
    for faces in truth.values():
        for t in faces:
            total["turned" if t["angle"] else "upright"] += 1
    faces = sum(total.values())
    print(
        json.dumps(
            {
                "photos": len(truth),
                "answered": len(seen),
                "faces": faces,
                "recall": round(sum(found.values()) / max(faces, 1), 4),
                "recall_upright": round(found["upright"] / max(total["upright"], 1), 4),
                "recall_turned": round(found["turned"] / max(total["turned"], 1), 4),
                "false_per_photo": round(false_faces / max(len(truth), 1), 3),
                "mae": round(sum(errors) / max(len(errors), 1), 3),
                "gender_accuracy": round(sum(right) / max(len(right), 1), 4),
            }
        )
    )
    if args.by_size:
        _by_size(truth, matched)


FACE_BINS = ((0, 24, "<24"), (24, 32, "24-32"), (32, 40, "32-40"), (40, 56, "40-56"))
BOX_BINS = ((0, 32, "<32"), (32, 48, "32-48"), (48, 96, "48-96"))


def _bin(value: float, bins: tuple[tuple[int, int, str], ...], last: str) -> str:
    return next((label for low, high, label in bins if low <= value < high), last)


def _by_size(truth: dict[str, list[dict]], matched: list[tuple[dict, dict]]) -> None:
    """Recall by the true face's size, and the estimates by the reported box's width."""
    found_ids = {id(t) for t, _ in matched}
    recall: dict[str, list[int]] = {}
    for faces in truth.values():
        for t in faces:
            counts = recall.setdefault(_bin(0.87 * t["size"], FACE_BINS, ">=56"), [0, 0])
            counts[0] += id(t) in found_ids
            counts[1] += 1
    print(json.dumps({"recall_by_face_px": {k: round(f / n, 4) for k, (f, n) in recall.items()}}))
    rows: dict[str, list[tuple[bool, float, float, bool, float]]] = {}
    for t, face in matched:
        x1, _, x2, _ = face["box"]
        lo, hi = face["age"]["interval"]
        rows.setdefault(_bin(x2 - x1, BOX_BINS, ">=96"), []).append(
            (
                lo <= t["age"] <= hi,
                hi - lo,
                abs(float(face["age"]["value"]) - t["age"]),
                str(face["gender"]["label"]).lower() == t["gender"],
                float(face["gender"]["probability"]),
            )
        )
    table = {
        k: {
            "faces": len(v),
            "coverage": round(float(np.mean([r[0] for r in v])), 4),
            "width": round(float(np.mean([r[1] for r in v])), 1),
            "mae": round(float(np.mean([r[2] for r in v])), 2),
            "gender_accuracy": round(float(np.mean([r[3] for r in v])), 4),
            "gender_stated": round(float(np.mean([r[4] for r in v])), 3),
        }
        for k, v in rows.items()
    }
    print(json.dumps({"by_box_px": table}))


def shrink(args: argparse.Namespace) -> None:
    src, out = Path(args.scenes), Path(args.out)
    if not 0 < args.scale < 1:
        sys.exit(f"--scale {args.scale}: expected a number between 0 and 1")
    _fresh_output(out)
    scaled = []
    for item in json.loads((src / "truth.json").read_text()):
        image = cv2.imread(str(src / "images" / item["file"]))
        height, width = image.shape[:2]
        size = (round(width * args.scale), round(height * args.scale))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / "images" / item["file"]), small, [cv2.IMWRITE_JPEG_QUALITY, 95])
        faces = [
            dict(f, cx=f["cx"] * args.scale, cy=f["cy"] * args.scale, size=f["size"] * args.scale)
            for f in item["faces"]
        ]
        scaled.append({"file": item["file"], "faces": faces})
    (out / "truth.json").write_text(json.dumps(scaled))
    print(f"{len(scaled)} images scaled by {args.scale}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("compose", help="compose group photos from labelled chips")
    make.add_argument("chips", help="folder with labels.csv (file, age, gender) and images/")
    make.add_argument("out", help="output folder (replaced if this script made it)")
    make.add_argument("--faces", type=int, default=300, help="faces in all (default 300)")
    make.add_argument("--seed", type=int, default=3, help="seed (default 3)")
    make.add_argument("--width", type=int, default=4000)
    make.add_argument("--height", type=int, default=3000)
    make.add_argument("--per-photo", type=_pair, default=(8, 20), help="faces per photo LOW,HIGH")
    make.add_argument("--sizes", type=_pair, default=(50, 150), help="chip sizes in px LOW,HIGH")
    make.set_defaults(run=compose)
    close = sub.add_parser("closeups", help="compose close-ups (12 MP by default), one chip each")
    close.add_argument("chips", help="folder with labels.csv (file, age, gender) and images/")
    close.add_argument("out", help="output folder (replaced if this script made it)")
    close.add_argument("--photos", type=int, default=100, help="photos (default 100)")
    close.add_argument("--seed", type=int, default=3, help="seed (default 3)")
    close.add_argument(
        "--sizes", type=_sizes, help="photo sizes WxH,... drawn from (default 4000x3000, 3000x4000)"
    )
    close.add_argument(
        "--shares",
        type=_shares,
        default=(0.2, 0.95),
        help="chip side over the photo's shorter side LOW,HIGH (default 0.2,0.95; up to 2)",
    )
    close.set_defaults(run=closeups)
    check = sub.add_parser("score", help="score predict --jsonl output against truth.json")
    check.add_argument("truth", help="truth.json written by compose")
    check.add_argument("predictions", help="the JSONL of agegender predict --jsonl")
    check.add_argument(
        "--by-size", action="store_true", help="also recall by face size and estimates by box"
    )
    check.set_defaults(run=score)
    small = sub.add_parser("shrink", help="scale composed pictures and their truth down")
    small.add_argument("scenes", help="a folder with images/ and truth.json")
    small.add_argument("out", help="output folder (replaced if this script made it)")
    small.add_argument("--scale", type=float, required=True, help="e.g. 0.25")
    small.set_defaults(run=shrink)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
