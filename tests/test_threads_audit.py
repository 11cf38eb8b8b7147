"""The Python API used from threads: one Estimator shared by many threads, predict_many
abandoned early, and Pillow's decompression-bomb guard, a global the threads share."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from faceutils import ASTRONAUT, encode
from PIL import Image, ImageFile

from agegender import Estimator, images, pipeline

WAIT = 60  # seconds a thread waits for its partner's step (only ever reached on a bug)


def _close(a: Any, b: Any, tolerance: float = 1e-4) -> bool:
    """JSON-like values equal, floats within `tolerance` (sessions run in other threads)."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= tolerance
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_close(x, y, tolerance) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_one_estimator_shared_by_threads_gives_the_sequential_results(
    estimator: Estimator, astronaut_rgb: np.ndarray
) -> None:
    inputs = [
        astronaut_rgb,
        astronaut_rgb[:, ::-1],
        np.ascontiguousarray(astronaut_rgb[::2, ::2].repeat(3, axis=0).repeat(3, axis=1)),
        astronaut_rgb[64:448, 32:480],
    ]
    want = [[f.to_dict() for f in estimator.predict(rgb)] for rgb in inputs]
    assert all(want)
    start = threading.Barrier(4)

    def work(k: int) -> list[list[dict[str, Any]]]:
        start.wait(WAIT)
        order = inputs[k:] + inputs[:k]
        got = [[f.to_dict() for f in estimator.predict(rgb)] for rgb in order]
        return got[len(inputs) - k :] + got[: len(inputs) - k]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for got in results:
        assert _close(got, want)


class _ShutdownSpy(ThreadPoolExecutor):
    """predict_many's pool: at shutdown, first drops what the call asks to drop (without
    waiting), then lets the blocked worker go on, then waits as asked."""

    release = threading.Event()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        self.release.set()
        super().shutdown(wait=wait)


def test_closing_predict_many_early_drops_the_images_queued_ahead(
    estimator: Estimator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """break / close() / Ctrl-C: the images queued for the next chunk are not decoded and
    detected after the caller stopped (they were: close() waited for all of them)."""
    est = estimator.derive(workers=1)
    monkeypatch.setattr(pipeline, "ThreadPoolExecutor", _ShutdownSpy)
    _ShutdownSpy.release = threading.Event()
    started: list[int] = []
    real = est._load_and_prepare

    def load_and_prepare(source: Any, *args: Any) -> Any:
        index = int(source.stem.rsplit("-", 1)[1])
        started.append(index)
        if index == 2:  # the first of the next chunk: busy until the pool shuts down
            assert _ShutdownSpy.release.wait(WAIT)
        return real(ASTRONAUT, *args)

    monkeypatch.setattr(est, "_load_and_prepare", load_and_prepare)
    paths = [ASTRONAUT.with_name(f"astronaut-{i}") for i in range(6)]
    results = est.predict_many(paths, chunk=2)
    first = next(results)
    assert first.ok and len(first.faces) == 1
    results.close()
    # 0 and 1 (the first chunk), 2 if it was being prepared when closed; not 3, queued
    assert started in ([0, 1], [0, 1, 2])
    assert not [t for t in threading.enumerate() if t.name.startswith("agegender-prepare")]


def test_a_decode_under_another_threads_lifted_pillow_guard_stays_lifted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads decode images their raised pixel limit allows but Pillow's guard would
    refuse: the first to finish restored Pillow's limit under the second's decoding, which
    was then refused ("exceeds the limit ... raise it with --pixel-limit")."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2,000 pixels
    data = encode(Image.fromarray(np.full((100, 100, 3), 90, np.uint8)), "PNG")  # 10,000
    real_load = ImageFile.ImageFile.load
    first_in, second_in, first_done = threading.Event(), threading.Event(), threading.Event()
    seen: list[object] = []
    loaded: set[int] = set()

    def load(image: ImageFile.ImageFile, *args: Any, **kwargs: Any) -> Any:
        if id(image) in loaded:  # loaded already (numpy asks again): nothing to decode
            return real_load(image, *args, **kwargs)
        loaded.add(id(image))
        seen.append(Image.MAX_IMAGE_PIXELS)
        if threading.current_thread().name == "first":
            first_in.set()
            assert second_in.wait(WAIT)
        else:
            second_in.set()
            assert first_done.wait(WAIT)
            Image._decompression_bomb_check(image.size)  # as GIF's and others' load do
        return real_load(image, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    outcome: dict[str, object] = {}

    def decode(name: str) -> None:
        try:
            outcome[name] = images.decode_bytes(data, pixel_limit=None, name=name).shape
        except Exception as error:  # reported below
            outcome[name] = error

    first = threading.Thread(target=decode, args=("first",), name="first")
    first.start()
    assert first_in.wait(WAIT)
    second = threading.Thread(target=decode, args=("second",), name="second")
    second.start()
    first.join()
    first_done.set()
    second.join()
    assert outcome == {"first": (100, 100, 3), "second": (100, 100, 3)}
    # Lifted, the guard is a number, never None: Pillow's check reads it twice
    # (`is None`, then `2 * MAX_IMAGE_PIXELS`), and None at the second read in another
    # thread was a TypeError that Image.open took for "cannot identify image file".
    assert seen and all(isinstance(limit, int) and limit > 10**9 for limit in seen)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored once both are done
