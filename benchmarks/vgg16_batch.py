"""Per-face time of the full-size DEX VGG-16 stand-in at batch 1, 8 and 32, against the
machine's measured fp32 matrix-multiply rate.

    python benchmarks/vgg16_batch.py [--threads 2] [--batches 1 8 32] [--json out.json]

The stand-in (``vgg16(width="full")`` of ``tests/support/standins.py``) has the zoo file's topology
and sizes with random weights, so its speed is the real model's speed. Three variants:
the graph as the zoo ships it (fixed batch 1, weights declared as graph inputs), and the
graph ``batch_free.open_graph`` makes of it (batch free, weights constant) at each batch.
FLOPs are counted from the graph (2 per multiply-add); the matmul rate is the best of
numpy and ONNX Runtime on a 2048 x 2048 fp32 product with the same thread count.
The variants are timed in turns and the best run is reported beside the median, since
the machine may be shared (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import standins  # test support: the stand-in graph generator

from agegender.onnxgraph import batch_free


def graph_flops(model: onnx.ModelProto) -> int:
    """FLOPs of one 224x224 face (2 per multiply-add of Conv and Gemm), from the graph's shapes."""
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info
    }
    shapes.update(
        {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output}
    )
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out_c, in_c, kh, kw = weights[node.input[1]]
            _, _, h, w = shapes[node.output[0]]
            total += 2 * out_c * in_c * kh * kw * h * w
        elif node.op_type == "Gemm":
            out_f, in_f = weights[node.input[1]]
            total += 2 * out_f * in_f
    return total


def options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the as-shipped graph warns once per weight declared as an input
    return opts


def timed(fn, min_runs: int, min_seconds: float) -> list[float]:
    fn()  # warm-up: first-run allocations and pre-packing
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def interleaved(variants: dict[str, tuple[object, int]], rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each variant, taken in turns so that load from other processes
    (this machine is shared) falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn, _ in variants.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, (fn, _) in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def matmul_rate(threads: int, n: int = 2048) -> dict[str, float]:
    """GFLOP/s (2 n^3 per product) of numpy and of ONNX Runtime's MatMul."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    numpy_s = min(timed(lambda: a @ b, 10, 3.0))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "mm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(
        model.SerializeToString(), options(threads), providers=["CPUExecutionProvider"]
    )
    ort_s = min(timed(lambda: session.run(None, {"a": a, "b": b}), 10, 3.0))
    return {"numpy_gflops": flops / numpy_s / 1e9, "ort_gflops": flops / ort_s / 1e9}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each variant")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    rate = matmul_rate(args.threads)
    peak = max(rate.values())  # the 2048 x 2048 rate is the reference
    big = matmul_rate(args.threads, 4096)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; onnxruntime {ort.__version__}")
    print(f"threads: {args.threads}")
    for n, r in ((2048, rate), (4096, big)):
        print(
            f"fp32 matmul {n}x{n}: numpy {r['numpy_gflops']:.0f} GFLOP/s, "
            f"ONNX Runtime {r['ort_gflops']:.0f} GFLOP/s"
        )

    model = standins.vgg16(outputs=101, width="full", seed=0)
    flops = graph_flops(model)
    print(f"VGG-16 stand-in: {flops / 1e9:.2f} GFLOP per face ({flops / 2e9:.2f} G multiply-adds)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = standins.save(model, Path(tmp) / "vgg16.onnx")
        del model
        x = np.random.default_rng(1).uniform(0, 255, (max(args.batches), 3, 224, 224))
        x = x.astype(np.float32)
        shipped = ort.InferenceSession(
            str(path), options(args.threads), providers=["CPUExecutionProvider"]
        )
        t0 = time.perf_counter()
        loaded = batch_free.open_graph(path, options=options(args.threads))
        rewrite_s = time.perf_counter() - t0
        assert loaded.batched, loaded.reason
        print(f"rewrite + equivalence check + cache write: {rewrite_s:.1f} s (once per file)")
        first = x[:1]
        variants = {
            "as shipped (fixed batch 1, weights as graph inputs)": (
                lambda: shipped.run(None, {"input": first}),
                1,
            )
        }
        for batch in args.batches:
            feed = {"input": x[:batch]}
            variants[f"batch-free rewrite, batch {batch}"] = (
                lambda feed=feed: loaded.session.run(None, feed),
                batch,
            )
        times = interleaved(variants, args.rounds)
        load = os.getloadavg()[0]
    for name, (_, batch) in variants.items():
        rows.append((name, batch, min(times[name]) / batch, statistics.median(times[name]) / batch))

    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs")
    print()
    print(
        "| graph | ms per face (best) | ms per face (median) | GFLOP/s (best) | share of matmul |"
    )
    print("|---|---:|---:|---:|---:|")
    results = []
    for name, batch, best, median in rows:
        achieved = flops / best / 1e9
        print(
            f"| {name} | {best * 1e3:.0f} | {median * 1e3:.0f} | {achieved:.0f} "
            f"| {achieved / peak:.0%} |"
        )
        results.append(
            {
                "graph": name,
                "batch": batch,
                "ms_per_face_best": best * 1e3,
                "ms_per_face_median": median * 1e3,
                "gflops_best": achieved,
            }
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu_name(),
                    "threads": args.threads,
                    "matmul": rate,
                    "matmul_4096": big,
                    "flops_per_face": flops,
                    "rows": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
