"""The inputs of the golden-output test (tests/test_golden.py), written to a folder.

Deterministic: the astronaut photo, a composed scene with four copies of her face and
the photo rotated by 25 degrees, as lossless PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from faceutils import ASTRONAUT, SCENE_PLACEMENTS, compose_scene


def write_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    scene = compose_scene(rgb, SCENE_PLACEMENTS).rgb
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), 25, 1.0)
    rotated = cv2.warpAffine(rgb, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    paths = []
    for name, image in (("astronaut.png", rgb), ("scene.png", scene), ("tilted.png", rotated)):
        path = folder / name
        Image.fromarray(np.asarray(image, np.uint8)).save(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for path in write_inputs(Path(sys.argv[1])):
        print(path)
