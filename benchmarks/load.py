"""Load test of `agegender serve` on loopback: throughput, latency, errors, memory.

Starts the server itself (a subprocess bound to 127.0.0.1 on a free port), once with
cross-request batching and once without, and for each sends the same image from 1, 4
and 16 concurrent clients. Bounded: a fixed number of requests per level and a time
cap per level; it never sends to anything but 127.0.0.1.

    python benchmarks/load.py                      # 200 / 600 / 1200 requests per mode
    python benchmarks/load.py --requests 50 100 200 --image tests/data/astronaut.png

Prints a Markdown table (requests/s, p50, p99, errors, 5xx) and the server's RSS after
warm-up and after all requests of a mode (2,000 with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, by construction


@dataclass
class Level:
    batching: bool
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    server_errors: int
    cpu_ms: float = float("nan")  # server CPU time per request (user + system)
    mean_batch: float = float("nan")  # images per model batch, from /metrics
    rss_mb: float = float("nan")  # server RSS after the level
    round: int = 1

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(port: int, batching: bool, extra: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    command = [sys.executable, "-m", "agegender", "serve", "--host", HOST, "--port", str(port)]
    command += ["--batching" if batching else "--no-batching", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise SystemExit(f"load: server exited: {err.strip()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("load: server not ready in time")


async def run_level(
    url: str, image: bytes, clients: int, total: int, cap_s: float, batching: bool
) -> Level:
    latencies: list[float] = []
    errors = server_errors = 0
    sent = 0
    deadline = time.perf_counter() + cap_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent, errors, server_errors
        while sent < total and time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                response = await http.post(
                    f"{url}/v1/estimate", files={"image": ("load.png", image, "image/png")}
                )
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors += 1
                    server_errors += response.status_code >= 500
            except httpx.HTTPError:
                errors += 1

    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - began
    return Level(batching, clients, sent, seconds, latencies, errors, server_errors)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def batch_totals(url: str) -> tuple[float, float]:
    """(batches, images) so far, from the server's own histogram."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("agegender_batch_images_count", "agegender_batch_images_sum")):
            name, value = line.split()
            values[name] = float(value)
    return values["agegender_batch_images_count"], values["agegender_batch_images_sum"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=ROOT / "tests/data/astronaut.png")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--requests", type=int, nargs="+", default=[200, 600, 1200], help="per client level"
    )
    parser.add_argument("--cap-s", type=float, default=180.0, help="time cap per level")
    parser.add_argument("--modes", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the modes in turn (a shared machine is noisy)"
    )
    parser.add_argument("server_args", nargs="*", help="extra `agegender serve` options (after --)")
    args = parser.parse_args()
    if len(args.requests) != len(args.clients):
        parser.error("give one --requests count per --clients level")
    image = args.image.read_bytes()
    cpus = f"{os.cpu_count()} CPUs"
    print(f"machine: {platform.platform()}, {cpus}, Python {platform.python_version()}")
    print(f"image: {args.image.name} ({len(image)} bytes), clients {args.clients}")
    print(f"requests per level: {args.requests}, server options: {args.server_args}")
    rows: list[Level] = []
    memory: list[tuple[int, str, float, float, int]] = []
    for round_ in range(1, args.rounds + 1):
        for mode in args.modes:
            batching = mode == "on"
            port = free_port()
            url = f"http://{HOST}:{port}"
            process = start_server(port, batching, args.server_args)
            try:
                wait_ready(url, process)
                for _ in range(5):  # warm-up: first runs allocate ONNX Runtime's arenas
                    httpx.post(f"{url}/v1/estimate", files={"image": ("w.png", image)}, timeout=60)
                before = rss_mb(process.pid)
                done = 0
                for clients, total in zip(args.clients, args.requests, strict=True):
                    cpu0, (batches0, images0) = cpu_s(process.pid), batch_totals(url)
                    level = asyncio.run(run_level(url, image, clients, total, args.cap_s, batching))
                    batches1, images1 = batch_totals(url)
                    level.cpu_ms = (cpu_s(process.pid) - cpu0) / max(level.requests, 1) * 1000
                    level.mean_batch = (images1 - images0) / max(batches1 - batches0, 1)
                    level.round = round_
                    level.rss_mb = rss_mb(process.pid)
                    rows.append(level)
                    done += level.requests
                    print(
                        f"  round {round_} batching {mode:3} clients {clients:2}: "
                        f"{level.requests} requests, {level.rps:.1f}/s, "
                        f"p50 {level.pct(0.5):.0f} ms, p99 {level.pct(0.99):.0f} ms, "
                        f"errors {level.errors}, batch {level.mean_batch:.2f}, "
                        f"RSS {level.rss_mb:.0f} MiB",
                        file=sys.stderr,
                    )
                memory.append((round_, mode, before, rss_mb(process.pid), done))
            finally:
                process.terminate()
                process.wait(timeout=30)
    print()
    print(
        "| round | batching | clients | requests | requests/s | p50 ms | p99 ms | errors | 5xx "
        "| server CPU ms/request | images/batch | RSS MiB after |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.round} | {'on' if r.batching else 'off'} | {r.clients} | {r.requests} "
            f"| {r.rps:.1f} | {r.pct(0.5):.0f} | {r.pct(0.99):.0f} | {r.errors} "
            f"| {r.server_errors} | {r.cpu_ms:.1f} | {r.mean_batch:.2f} | {r.rss_mb:.0f} |"
        )
    if args.rounds > 1:
        print()
        print("Median over rounds:")
        print()
        print(
            "| batching | clients | requests/s | p50 ms | p99 ms | errors | 5xx | CPU ms/request |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for mode in args.modes:
            for clients in args.clients:
                cell = [r for r in rows if r.batching == (mode == "on") and r.clients == clients]
                print(
                    f"| {mode} | {clients} | {statistics.median(r.rps for r in cell):.1f} "
                    f"| {statistics.median(r.pct(0.5) for r in cell):.0f} "
                    f"| {statistics.median(r.pct(0.99) for r in cell):.0f} "
                    f"| {sum(r.errors for r in cell)} | {sum(r.server_errors for r in cell)} "
                    f"| {statistics.median(r.cpu_ms for r in cell):.1f} |"
                )
    print()
    print("| round | batching | RSS after warm-up MiB | RSS after MiB | requests |")
    print("|---:|---|---:|---:|---:|")
    for round_, mode, before, after, done in memory:
        print(f"| {round_} | {mode} | {before:.0f} | {after:.0f} | {done} |")
    return 1 if any(r.server_errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
