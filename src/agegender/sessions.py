"""ONNX Runtime sessions: the one place that picks execution providers and session options.

Every session the package opens (the heads through ``inference.OnnxModel`` and
``onnxgraph.batch_free``, CNN detectors such as CenterFace) is made by :func:`create`, so
an execution provider chosen once (``--providers cuda``, ``Estimator(providers=...)``)
reaches all of them, and a measured option (threads, spinning) is set in one place.

Providers are named as ONNX Runtime does (``CUDAExecutionProvider``) or by the short name
(``cuda``: the full name without ``ExecutionProvider``, any case). They are tried in the
order given with the CPU provider always last, so a node the accelerator cannot run still
runs. One that this ONNX Runtime build does not offer is a one-line error naming it and
the ones it does offer: silently running on the CPU instead would make a "GPU" benchmark
or deployment wrong without anyone noticing.

The providers in force while the Estimator builds its sessions come from
:func:`using` (a context variable): the head and detector factories between the
configuration and the session need not each pass them on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path

import onnxruntime as ort

from .errors import AgegenderError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
_SUFFIX = "ExecutionProvider"

# Options given to a provider whenever a session uses it. CUDA: cuDNN picks each
# convolution's algorithm by its heuristics instead of timing every candidate
# (EXHAUSTIVE, ONNX Runtime's default). The timing is redone at every change of input
# shape; on an H200 (README, GPU), with batches of varying size, faceres-deep went from
# 52.9 to 36.7 ms a chip. (The rest of that cost, setting the convolutions up again at
# each change of shape, is why batches have one shape on an accelerator: inference.py.)
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"},
}

# Why a CUDA build's provider usually fails to start: ONNX Runtime loads CUDA and cuDNN
# when the session is made and finds the pip packages' libraries only where it is told.
_NEEDS_CUDA = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_CUDA_HINT = (
    " (ONNX Runtime did not load CUDA or cuDNN: put their folders, such as"
    " site-packages/nvidia/*/lib, on LD_LIBRARY_PATH, or call onnxruntime.preload_dlls()"
    " before the first session)"
)


class ProviderError(AgegenderError):
    """An execution provider that is unknown or not offered by this ONNX Runtime."""


def short_name(full: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (what --providers and error messages show)."""
    return full.removesuffix(_SUFFIX).lower()


def full_name(name: str) -> str:
    """The ONNX Runtime name of a provider given by its short or full name (any case)."""
    wanted = name.strip().lower().removesuffix(_SUFFIX.lower())
    for known in ort.get_all_providers():
        if short_name(known) == wanted:
            return known
    raise ProviderError(
        f"unknown execution provider {name!r}; ONNX Runtime knows "
        f"{', '.join(short_name(p) for p in ort.get_all_providers())}"
    )


def resolve_providers(names: Sequence[str] = ()) -> list[str]:
    """Full provider names in the order given, without repeats, the CPU provider last.

    Raises ProviderError (one line) for a name this ONNX Runtime does not offer.
    """
    available = ort.get_available_providers()
    resolved: list[str] = []
    for name in names:
        full = full_name(name)
        if full not in available:
            offered = ", ".join(short_name(p) for p in available)
            raise ProviderError(
                f"execution provider {name!r} ({full}) is not available in this ONNX "
                f"Runtime ({ort.__version__}); available: {offered}"
            )
        if full != CPU and full not in resolved:
            resolved.append(full)
    return [*resolved, CPU]


_PROVIDERS: ContextVar[tuple[str, ...]] = ContextVar("agegender_providers", default=())


@contextlib.contextmanager
def using(providers: Sequence[str]) -> Iterator[None]:
    """Sessions created inside (in this thread) use `providers` unless given their own."""
    token = _PROVIDERS.set(tuple(providers))
    try:
        yield
    finally:
        _PROVIDERS.reset(token)


def current_providers() -> tuple[str, ...]:
    return _PROVIDERS.get()


_WORKER = threading.local()


def parallel_worker() -> None:
    """Mark this thread as one of several that each prepare whole images at once
    (``ThreadPoolExecutor(initializer=...)`` in ``predict_many``).

    In such a thread a detector runs its graph on one intra-op thread
    (:func:`in_parallel_worker`): the workers already keep the cores busy with different
    images, and an intra-op pool split over the same cores only makes them wait on each
    other. 1,000 utkface-calib chips, three interleaved pairs: 142-144 -> 153-156 images/s,
    CPU 12.5 -> 11.6 ms an image (README). The graph's outputs are bitwise the same.
    """
    _WORKER.parallel = True


def in_parallel_worker() -> bool:
    """Whether this thread was marked by :func:`parallel_worker`."""
    return bool(getattr(_WORKER, "parallel", False))


def options(threads: int | None = None, *, quiet: bool = False) -> ort.SessionOptions:
    """Session options for this package's small graphs run beside decode/detect threads.

    Idle ONNX Runtime threads would otherwise spin, taking the cores from the threads
    that decode and detect the next images: 155 -> 213 images/s on utkface-dev (README).
    `threads` sets the intra-op pool (inter-op stays 1: the graphs are sequential).
    """
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if quiet:
        opts.log_severity_level = 3  # errors only
    return opts


def create(
    model: str | Path | bytes,
    *,
    session_options: ort.SessionOptions | None = None,
    providers: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on `model` (a path or serialized bytes).

    `providers`: short or full names; None takes those of the enclosing :func:`using`
    (none: the CPU alone). A provider ONNX Runtime accepted but could not start (a CUDA
    build without its libraries) is logged, since the session then runs on the CPU.
    """
    chosen = resolve_providers(current_providers() if providers is None else providers)
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(
        source,
        sess_options=session_options or options(),
        providers=chosen,
        provider_options=[PROVIDER_OPTIONS.get(p, {}) for p in chosen],
    )
    missing = [p for p in chosen if p not in session.get_providers()]
    if missing:
        log.warning(
            "execution provider %s did not start; running on %s%s",
            ", ".join(short_name(p) for p in missing),
            ", ".join(short_name(p) for p in session.get_providers()),
            _CUDA_HINT if any(p in _NEEDS_CUDA for p in missing) else "",
        )
    return session


def on_accelerator(session: ort.InferenceSession) -> bool:
    """Whether `session` runs on a provider other than the CPU (which is always last, so
    the first one tells). Where a run's input shape changes, such a provider may set
    itself up again (CUDA's convolutions: README, GPU), so callers keep shapes fixed."""
    return bool(session.get_providers()[0] != CPU)


# The CPU features that choose ONNX Runtime's integer kernels, most capable first: the
# INT8 copies' fp32 layers round differently on each (README, "7-bit weights"), so rows
# from two kinds of CPU may differ by about a year of age with those copies.
_CPU_LEVELS = (
    ("amx_int8", "amx"),
    ("avx512_vnni", "avx512-vnni"),
    ("avx_vnni", "avx-vnni"),
    ("avx512bw", "avx512"),
    ("avx2", "avx2"),
    ("i8mm", "i8mm"),
    ("asimddp", "dotprod"),
)


def cpu_kind(cpuinfo: str | None = None) -> str:
    """This machine's kind of CPU as ONNX Runtime's kernels tell them apart: the
    architecture and its most capable integer-kernel feature ("x86_64 avx2", "x86_64
    avx512-vnni", "aarch64 dotprod"); the architecture alone where none is known or
    /proc/cpuinfo cannot be read (not Linux). `cpuinfo`: its text, for tests."""
    import platform

    machine = platform.machine().lower() or "unknown"
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
        if cpuinfo is None:
            return machine
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            break
    for flag, level in _CPU_LEVELS:
        if flag in flags:
            return f"{machine} {level}"
    return machine


@functools.cache
def _cpuinfo() -> str | None:
    """/proc/cpuinfo's first 64 KiB, read once per process (batch asks at every part)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read(1 << 16)
    except OSError:
        return None
