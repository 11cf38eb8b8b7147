"""Images per second: predict --jsonl vs batch (local engine, Ray with 1 and 2 actors),
and the local engine's peak memory on a list of missing paths.

    python benchmarks/batch_throughput.py ../shared/datasets/utkface-dev/images --count 600
    python benchmarks/batch_throughput.py --missing 1000000

The images are linked under distinct names until --count is reached (batch keys inputs
by path, so a repeated path would be done once). Prints one line per run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGEGENDER = [sys.executable, "-m", "agegender"]


def run(command: list[str], label: str, count: int) -> None:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    status = "" if done.returncode in (0, 1) else f" (exit {done.returncode})"
    print(
        f"{label:28s} {count} images in {elapsed:6.1f} s = {count / elapsed:6.1f} images/s"
        f" (largest child so far {peak:.0f} MB){status}",
        flush=True,
    )
    if status:
        print(done.stderr.decode()[-2000:], file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", nargs="?")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--missing", type=int, default=0, help="paths in the memory run")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.missing:
            listing = work / "missing.txt"
            with open(listing, "w") as f:
                for i in range(args.missing):
                    f.write(f"/nonexistent/d{i % 1000}/photo-{i:08d}.jpg\n")
            run(
                [*AGEGENDER, "batch", str(listing), "--out", str(work / "m"), "--no-progress"],
                "batch local, missing paths",
                args.missing,
            )
            return 0
        found = sorted(p for p in Path(args.images).iterdir() if p.suffix == ".jpg")
        links = work / "in"
        links.mkdir()
        for i in range(args.count):
            os.symlink(
                found[i % len(found)].resolve(), links / f"{i:06d}-{found[i % len(found)].name}"
            )
        files = sorted(str(p) for p in links.iterdir())
        listing = work / "list.txt"
        listing.write_text("\n".join(files) + "\n")
        run(
            [*AGEGENDER, "predict", "--jsonl", "--no-progress", str(links)],
            "predict --jsonl",
            args.count,
        )
        run(
            [*AGEGENDER, "batch", str(listing), "--out", str(work / "local"), "--no-progress"],
            "batch --engine local",
            args.count,
        )
        if not args.no_ray:
            for actors in (1, 2):
                run(
                    [
                        *AGEGENDER,
                        "batch",
                        str(listing),
                        "--out",
                        str(work / f"ray{actors}"),
                        "--engine",
                        "ray",
                        "--concurrency",
                        str(actors),
                        "--no-progress",
                    ],
                    f"batch --engine ray x{actors}",
                    args.count,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
