"""Images per second: predict --jsonl vs batch (local engine, Ray with 1 and 2 actors),
and the local engine's peak memory on a list of missing paths.

    python benchmarks/batch_throughput.py ../shared/datasets/utkface-dev/images --count 600
    python benchmarks/batch_throughput.py ../shared/datasets/utkface-calib/images --count 2000 \\
        --rounds 2
    python benchmarks/batch_throughput.py ../shared/datasets/utkface-calib/images --count 8000 \\
        --only "ray x1" --running-ray
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


def run(command: list[str], label: str, count: int) -> float:
    """Run one command; print and return its images per second."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = after.ru_maxrss / 1024
    status = "" if done.returncode in (0, 1) else f" (exit {done.returncode})"
    print(
        f"{label:28s} {count} images in {elapsed:6.1f} s = {count / elapsed:6.1f} images/s,"
        f" CPU {1000 * cpu / count:5.1f} ms per image, load before {load:.1f}"
        f" (largest child so far {peak:.0f} MB){status}",
        flush=True,
    )
    if status:
        print(done.stderr.decode()[-2000:], file=sys.stderr)
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="?")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--missing", type=int, default=0, help="paths in the memory run")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument(
        "--running-ray",
        action="store_true",
        help="also run Ray x1 joining an instance started before the timing (ray start)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="each round runs all, every other one reversed"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the runs whose label contains TEXT (repeatable; predict always runs)",
    )
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
        ray_batch = [*AGEGENDER, "batch", str(listing), "--engine", "ray", "--no-progress"]
        runs: list[tuple[str, list[str]]] = [
            ("predict --jsonl", [*AGEGENDER, "predict", "--jsonl", "--no-progress", str(links)]),
            ("batch --engine local", [*AGEGENDER, "batch", str(listing), "--no-progress"]),
        ]
        if not args.no_ray:
            runs += [
                (f"batch --engine ray x{n}", [*ray_batch, "--concurrency", str(n)]) for n in (1, 2)
            ]
        if args.running_ray and not args.no_ray:
            # the same engine joining a Ray instance that is already up (as on a cluster):
            # Ray's own start is paid once, outside the timing; its workers at normal
            # priority, as the engine runs the Ray it starts itself
            runs += [
                (
                    f"batch --engine ray x{n}, Ray already up",
                    [*ray_batch, "--concurrency", str(n), "--address", "auto"],
                )
                for n in (1, 2)
            ]
        if args.only:
            runs = [
                (label, command)
                for label, command in runs
                if label.startswith("predict") or any(text in label for text in args.only)
            ]
        ray = str(Path(sys.executable).with_name("ray"))
        running = any("--address" in command for _, command in runs)
        if running:
            # its `ray stop` at the end stops every Ray instance of this machine
            up = subprocess.run([ray, "status"], capture_output=True, check=False)
            if up.returncode == 0:
                print(
                    "a Ray instance is running here already: --running-ray starts its own "
                    "and stops it with `ray stop`, which would stop that one too",
                    file=sys.stderr,
                )
                return 2
            start = [ray, "start", "--head", "--num-cpus", str(os.cpu_count() or 2)]
            subprocess.run(
                [*start, "--include-dashboard", "false", "--disable-usage-stats"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "RAY_worker_niceness": "0"},
            )
        rates: dict[str, list[float]] = {label: [] for label, _ in runs}
        try:
            for round_ in range(args.rounds):
                order = list(enumerate(runs))
                for index, (label, command) in order if round_ % 2 == 0 else order[::-1]:
                    if "batch" in command:
                        command = [*command, "--out", str(work / f"out-{round_}-{index}")]
                    rates[label].append(run(command, label, args.count))
        finally:
            if running:
                subprocess.run([ray, "stop"], check=False, stdout=subprocess.DEVNULL)
        base = sum(rates["predict --jsonl"]) / args.rounds
        for label, values in rates.items():
            mean = sum(values) / len(values)
            print(f"{label:28s} mean {mean:6.1f} images/s = {mean / base:5.2f}x predict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
