"""The Python API embedded in an application: predict_many fed by a generator that fails,
one PIL image read by several threads at once, and the process's warning filters while
threads decode (Pillow's DecompressionBombWarning is ignored only inside a decode)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from faceutils import ASTRONAUT, encode
from PIL import Image, ImageFile

from agegender import Estimator, images

WAIT = 60  # seconds a thread waits for its partner's step (only ever reached on a bug)
OVERLAP = 3  # seconds a thread waits to see whether another one reads the image with it


class SourceFailed(Exception):
    pass


def _astronauts_then_failure(count: int) -> Iterator[str]:
    for _ in range(count):
        yield str(ASTRONAUT)
    raise SourceFailed("the caller's source broke")


@pytest.mark.parametrize("chunk", [16, 2])
def test_a_source_that_fails_gives_the_results_before_it_then_its_error(
    estimator: Estimator, chunk: int
) -> None:
    """The results of the inputs a generator gave before it raised came out first: they were
    dropped (none of the 3 came out, with chunk 16 or 2), prepared for nothing."""
    got = []
    with pytest.raises(SourceFailed, match="broke"):
        for result in estimator.predict_many(_astronauts_then_failure(3), chunk=chunk):
            got.append(result)
    assert [r.path for r in got] == [str(ASTRONAUT)] * 3
    assert all(r.ok and len(r.faces) == 1 for r in got)
    assert not [t for t in threading.enumerate() if t.name.startswith("agegender-prepare")]


def test_one_lazily_opened_pil_image_read_by_threads_at_once(
    estimator: Estimator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same opened (not yet loaded) PIL image given to two threads: Pillow loaded it
    from its file in both at once (predict_many([image] * 4): wrong faces, AssertionError)."""
    real_load = ImageFile.ImageFile.load
    both_in = threading.Barrier(2)
    overlapped: list[bool] = []

    def load(image: ImageFile.ImageFile, *args: Any, **kwargs: Any) -> Any:
        if image.tile:  # not loaded yet: is another thread loading it too?
            try:
                both_in.wait(OVERLAP)
                overlapped.append(True)
            except threading.BrokenBarrierError:
                pass
        return real_load(image, *args, **kwargs)

    with Image.open(ASTRONAUT) as reference:
        want = np.asarray(reference.convert("RGB"))
    image = Image.open(ASTRONAUT)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    got: list[object] = []

    def read() -> None:
        try:
            got.append(images.load(image).rgb)
        except Exception as error:  # reported below
            got.append(error)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not overlapped
    assert len(got) == 2 and all(isinstance(g, np.ndarray) and np.array_equal(g, want) for g in got)
    monkeypatch.undo()

    # as predict_many's workers read it: each result the path's own
    faces = estimator.predict(ASTRONAUT)
    results = list(estimator.derive(workers=4).predict_many([Image.open(ASTRONAUT)] * 4))
    assert [r.error for r in results] == [None] * 4
    for result in results:
        assert len(result.faces) == len(faces) == 1
        np.testing.assert_allclose(result.faces[0].box, faces[0].box, atol=1e-3)
        np.testing.assert_allclose(result.faces[0].age.value, faces[0].age.value, atol=1e-3)


class _HeldDecodes:
    """Decodes, each in a thread of its own, held inside decode_bytes (past the warning
    filter's setup, before Pillow opens the image) until finished."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.data = encode(Image.fromarray(np.full((40, 40, 3), 90, np.uint8)), "PNG")
        self.inside: dict[str, threading.Event] = {}
        self.release: dict[str, threading.Event] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.outcome: dict[str, object] = {}
        real_open = images._open_header

        def open_header(data: bytes, label: str) -> Image.Image:
            name = threading.current_thread().name
            self.inside[name].set()
            assert self.release[name].wait(WAIT)
            return real_open(data, label)

        monkeypatch.setattr(images, "_open_header", open_header)

    def start(self, name: str) -> None:
        self.inside[name], self.release[name] = threading.Event(), threading.Event()
        self.threads[name] = threading.Thread(target=self._decode, args=(name,), name=name)
        self.threads[name].start()
        assert self.inside[name].wait(WAIT)

    def finish(self, name: str) -> None:
        self.release[name].set()
        self.threads[name].join(WAIT)
        assert self.outcome[name] == (40, 40, 3)

    def _decode(self, name: str) -> None:
        try:
            self.outcome[name] = images.decode_bytes(self.data, name=name).shape
        except Exception as error:  # reported by finish
            self.outcome[name] = error


def test_threads_decoding_at_once_leave_the_warning_filters_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """warnings.catch_warnings in each decode: the second thread put back the list it saw
    on entering (the first's, with the ignore filter in it) for good, so the application
    saw no DecompressionBombWarning any more."""
    before = list(warnings.filters)
    decodes = _HeldDecodes(monkeypatch)
    decodes.start("first")
    decodes.start("second")
    decodes.finish("first")
    decodes.finish("second")
    assert warnings.filters == before
    shown: list[Warning | str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kw: shown.append(message))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image._decompression_bomb_check((40, 40))  # 1,600 pixels: Pillow warns the application
    assert [type(w) for w in shown] == [Image.DecompressionBombWarning]


def test_a_decode_ending_in_another_threads_catch_warnings_keeps_its_recording(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decode that began before the application's catch_warnings(record=True) and ended
    inside it put back the process's showwarning: the application's warnings went to stderr
    instead of its record, and the decode's ignore filter stayed after the block."""
    before = list(warnings.filters)
    decodes = _HeldDecodes(monkeypatch)
    decodes.start("first")
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        decodes.finish("first")
        warnings.warn("the application's own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in log] == ["the application's own"]
    assert warnings.filters == before
