"""Calibrate an INT8 copy here, on development data, and write the ranges file the package
ships (``src/agegender/quantization/NAME.json``); users build the copy from it
(``agegender models pull NAME-int8``) without any of this data.

    # CenterFace: composed scenes of the calibration set (not the dev scenes it is scored on)
    python ../shared/tools/make_scenes.py ../shared/datasets/utkface-calib /tmp/calib-scenes 300 7
    python scripts/int8_ranges.py centerface --scenes /tmp/calib-scenes/images --sides 640,960
    # heads: their crops (and mirrored crops, as TTA feeds them) of utkface-calib chips
    python scripts/int8_ranges.py cc0-age-v1 --images ../shared/datasets/utkface-calib/images
    # faceres-deep (one graph for age and gender): margin crops of the default's detector
    python scripts/int8_ranges.py faceres-deep-age \
        --images ../shared/datasets/utkface-calib/images --detector centerface-int8

The recipe (preparation steps, per-channel, types) is fixed per card below.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from agegender import cards, store
from agegender.quantization import Recipe, calibrate

OUT = Path(__file__).resolve().parents[1] / "src/agegender/quantization"
RECIPES = {
    "centerface": Recipe(prepare=("free_dims", "opset13")),
    "cc0-age-v1": Recipe(op_types=("Conv", "Gemm")),  # see Recipe: its affine layers
    "cc0-gender-v1": Recipe(),  # measured, not shipped: 1.02x faster, gender +0.33 points
    # faceres-deep: its first six convolutions (112x112, the input's) stay fp32, as do the
    # Gemm heads; quantizing every Conv moved utkface-dev MAE +0.18 and FairFace gender -3.0
    # points (per-layer: conv1, dw_1 and pw_1 each moved a crop's age ~1 year)
    "faceres-deep-age": Recipe(
        op_types=("Conv",),
        exclude=tuple(
            f"{name}#Conv"
            for name in (
                "conv1_bn/batchnorm_1/mul_1/conv",
                "conv_dw_1/depthwise/conv",
                "conv_pw_1_bn/batchnorm_1/mul_1/conv",
                "conv_dw_2/depthwise/conv",
                "conv_pw_2_bn/batchnorm_1/mul_1/conv",
                "conv_dw_3/depthwise/conv",
            )
        ),
    ),
}
# the ranges file's name where it is not the card's: one file for the cards reading one graph
RANGES_NAME = {"faceres-deep-age": "faceres-deep.json"}


def images(folder: Path, limit: int) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return paths[:limit]


def read_rgb(path: Path) -> NDArray[np.uint8]:
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise SystemExit(f"{path}: not an image")
    return np.ascontiguousarray(bgr[..., ::-1])


def detector_feeds(
    card: cards.ModelCard, paths: list[Path], sides: list[int]
) -> Iterator[dict[str, NDArray[np.float32]]]:
    from agegender.detectors.centerface import CenterFaceDetector, feed_size

    detector = CenterFaceDetector(card, store.resolve(card))
    assert card.detection is not None
    for path, side in itertools.product(paths, sides):
        rgb = read_rgb(path)
        height, width = rgb.shape[:2]
        factor, fed_h, fed_w = feed_size(height, width, side, card.detection.multiple)
        yield {detector.input_name: detector._tensor(rgb, factor, (fed_h, fed_w))}


def head_feeds(
    card: cards.ModelCard, paths: list[Path], detector: str, batch: int = 32
) -> Iterator[dict[str, NDArray[np.float32]]]:
    from agegender import Estimator
    from agegender.inference import preprocess

    role = "age" if card.task in ("age", "age-groups") else "gender"
    est = Estimator.from_preset("default", detector=detector, **{f"{role}_models": [card.id]})
    head = est.heads[role][0]
    name = head.model.session.get_inputs()[0].name
    crops: list[NDArray[np.uint8]] = []
    for path in paths:
        prepared = est.prepare(read_rgb(path), str(path))
        for crop in prepared.crops.get(head.crop_key, []):
            crops += [crop, np.ascontiguousarray(crop[:, ::-1])]  # TTA's mirrored crop too
        while len(crops) >= batch:
            yield {name: preprocess(card, crops[:batch])}
            crops = crops[batch:]
    if crops:
        yield {name: preprocess(card, crops)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("card", choices=sorted(RECIPES))
    parser.add_argument("--scenes", type=Path, help="detector: a folder of scene images")
    parser.add_argument("--sides", default="960", help="detector: longer sides fed, e.g. 640,960")
    parser.add_argument("--images", type=Path, help="heads: a folder of face images")
    parser.add_argument("--out", type=Path, help="folder written (default: the package's)")
    parser.add_argument("--limit", type=int, default=400, help="images used (default 400)")
    parser.add_argument(
        "--detector", default="dlib", help="heads: the detector whose boxes the crops follow"
    )
    args = parser.parse_args()
    card = cards.get_card(args.card)
    base = store.resolve(card)
    assert card.source.sha256
    if card.task == "face-detection":
        sides = [int(s) for s in args.sides.split(",")]
        paths = images(args.scenes, args.limit)
        feeds = detector_feeds(card, paths, sides)
        notes = f"MinMax over {len(paths)} composed utkface-calib scenes fed at longer side {sides}"
    else:
        paths = images(args.images, args.limit)
        feeds = head_feeds(card, paths, args.detector)
        kind = "chips" if card.crop.kind == "chip" else f"{card.crop.kind} crops"
        notes = (
            f"MinMax over the {kind} (and mirrored {kind}) of {len(paths)} utkface-calib "
            f"images, faces found by {args.detector}"
        )
    name = RANGES_NAME.get(card.id, f"{card.id}.json")
    ranges = calibrate(
        base,
        card.id,
        card.source.sha256,
        RECIPES[card.id],
        feeds,
        name=name,
        notes=notes,
        feeds_per_pass=2,  # batches of 32 crops: faceres-deep's tensors, ~7 GB a pass
    )
    out = (args.out or OUT) / name
    out.write_text(ranges.dumps(), encoding="utf-8")
    print(f"{out}: {len(ranges.ranges)} tensors ({notes})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
