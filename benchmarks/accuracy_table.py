"""The README's accuracy table: each model alone and each preset, on utkface-dev (exact
ages) and fairface-dev (apparent-age groups, gender, race), with CPU time per face.

Every row is one ``agegender evaluate --json`` run per dataset in its own process (so the
CPU time is that row's alone: user + system of the child, model loading included),
the same way each time:

    python benchmarks/accuracy_table.py --utkface ../shared/datasets/utkface-dev/images \
        --fairface ../shared/datasets/fairface-dev

Rows are ``NAME=evaluate options`` (``--row``), by default the ones below. The race gap is
the largest difference in gender accuracy between FairFace's races (groups of 20+ faces).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

AGEGENDER = [sys.executable, "-m", "agegender"]
CC0 = "--age-model cc0-age-v1 --gender-model cc0-gender-v1"
ROWS = {
    "before (CC0 pair, dlib)": f"--detector dlib {CC0} --calibration none",
    "CC0 pair, CenterFace INT8": f"{CC0} --calibration none",
    "faceres alone": "--age-model faceres-age --gender-model faceres-gender",
    "faceres-deep alone": "--age-model faceres-deep-age --gender-model faceres-deep-gender",
    "GEAR gender alone (age: CC0)": "--age-model cc0-age-v1 --gender-model gear-gender",
    "fast": "--preset fast",
    "default": "--preset default",
    "best": "--preset best",
}


def evaluate(dataset: list[str], options: str) -> tuple[dict, float, float]:
    """(the run's JSON, CPU seconds of the child, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [*AGEGENDER, "evaluate", *dataset, "--json", "--no-progress", *shlex.split(options)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"evaluate {options}: {done.stderr.strip().splitlines()[-1:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(done.stdout), cpu, wall


def _gap(metrics: dict) -> str:
    fairness = metrics.get("fairness") or {}
    gaps = fairness.get("gaps") or {}
    gap = gaps.get("gender_accuracy") or {}
    value = gap.get("gap")
    return "-" if value is None else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utkface", required=True, help="utkface-dev images folder")
    parser.add_argument("--fairface", required=True, help="fairface-dev folder (labels.csv)")
    parser.add_argument("--row", action="append", help="NAME=OPTIONS (default: the built-in rows)")
    parser.add_argument("--json-out", help="also write every run's figures here")
    args = parser.parse_args(argv)
    rows = dict(r.split("=", 1) for r in args.row) if args.row else ROWS
    fair = Path(args.fairface)
    utk = [args.utkface, "--format", "utkface"]
    ff = [str(fair / "labels.csv"), "--root", str(fair / "images"), "--format", "csv"]
    print(
        "| setting | utkface-dev MAE | gender | fairface-dev gender | race gap (points) "
        "| age group | faces found (FF) | CPU ms per face |"
    )
    print("|---|---|---|---|---|---|---|---|")
    out = {}
    for name, options in rows.items():
        u, cpu_u, _ = evaluate(utk, options)
        f, cpu_f, _ = evaluate(ff, options)
        um, fm = u["settings"][0]["metrics"], f["settings"][0]["metrics"]
        ue, fe = um["excluding_no_face"], fm["excluding_no_face"]
        faces = um["faces_found"]["n"] + fm["faces_found"]["n"]
        groups = fe.get("groups", {}).get("accuracy")
        print(
            f"| {name} | {ue['age']['mae']:.2f} | {100 * ue['gender']['accuracy']:.1f}% "
            f"| {100 * fe['gender']['accuracy']:.1f}% | {_gap(fm)} "
            f"| {'-' if groups is None else f'{100 * groups:.1f}%'} "
            f"| {100 * fm['faces_found']['share']:.1f}% | {1000 * (cpu_u + cpu_f) / faces:.1f} |",
            flush=True,
        )
        out[name] = {"options": options, "utkface": um, "fairface": fm, "cpu": cpu_u + cpu_f}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
