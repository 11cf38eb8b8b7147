"""A bad-input campaign against `agegender predict` (Hypothesis).

Each example is one run of the command over a good photo mixed with generated bad and
doubtful inputs: truncated, bit-flipped, overwritten and zero-length encodings of the
astronaut in every format Pillow writes (PNG, JPEG, BMP, GIF, TIFF, WEBP, PPM), wrong
extensions, decompression-bomb headers, folders and dangling links named as files,
unreadable files, and broken videos (empty, random bytes, truncated real ones).

A corruption may still decode (a flipped bit in pixel data is only a different image),
so the checks do not guess which input fails; they hold whatever happens:

- no traceback, exit status 1 (each run holds at least one input that cannot work);
- every input is in the output, in order; an input that failed gives exactly one line on
  stderr naming it, one that worked gives none;
- the good photo's result is the one it gives alone (within float32 tolerance).

The default run is small (``HYPOTHESIS_PROFILE=long`` runs more examples); the number of
runs and inputs is printed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.corrupt import FORMATS, damage, encode, png_chunk

from agegender import cli
from agegender import video as _video_module  # noqa: F401  quiets FFmpeg before its first use

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
# --detector none: the whole image is the face, so a run costs one model pass per input.
OPTIONS = ["--jsonl", "--detector", "none", "--no-progress"]
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0

settings.register_profile(
    "default",
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("default"), max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

COUNTS = {"runs": 0, "inputs": 0, "failed inputs": 0}


def _small_astronaut() -> Image.Image:
    with Image.open(ASTRONAUT) as image:
        return image.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR)


SMALL = _small_astronaut()
ENCODED = {fmt: encode(SMALL, fmt) for fmt in FORMATS}


def png_with_size(width: int, height: int) -> bytes:
    """The small PNG with its header claiming another size (a valid CRC): a bomb header."""
    png = ENCODED["PNG"]
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    return png[:8] + png_chunk(b"IHDR", bytes(ihdr)) + png[33:]


def gif_with_size(width: int, height: int) -> bytes:
    gif = bytearray(ENCODED["GIF"])
    gif[6:10] = struct.pack("<HH", width, height)  # logical screen
    return bytes(gif)


def _video(fourcc: str, suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip{suffix}"
        bgr = np.ascontiguousarray(np.asarray(SMALL)[:, :, ::-1])
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 4, (96, 96))
        assert writer.isOpened()
        for _ in range(6):
            writer.write(bgr)
        writer.release()
        return path.read_bytes()


VIDEOS = {".avi": _video("MJPG", ".avi"), ".mp4": _video("mp4v", ".mp4")}


@dataclass(frozen=True)
class Bad:
    """One input to write: its file name suffix and how to make it."""

    kind: str
    suffix: str
    data: bytes = b""
    certain: bool = False  # never usable, whatever the bytes happen to be


def corruptions() -> st.SearchStrategy[Bad]:
    """A real encoding, truncated, bit-flipped or overwritten, maybe under another suffix."""

    @st.composite
    def make(draw: st.DrawFn) -> Bad:
        fmt = draw(st.sampled_from(sorted(FORMATS)))
        how, data = damage(draw, ENCODED[fmt])
        suffix = draw(
            st.sampled_from([FORMATS[fmt]] * 4 + sorted(set(FORMATS.values()) | {".mp4"}))
        )
        return Bad(f"{how} {fmt}", suffix, data, certain=not data)

    return make()


def certain_bad() -> st.SearchStrategy[Bad]:
    """Inputs that can never give a result."""
    huge = st.tuples(st.integers(8000, 60000), st.integers(7000, 60000))
    return st.one_of(
        st.sampled_from(sorted(FORMATS.values())).map(lambda s: Bad("empty", s, certain=True)),
        st.builds(
            lambda text, s: Bad("text", s, b"not an image: " + text, True),
            st.binary(max_size=200),
            st.sampled_from(sorted(FORMATS.values())),
        ),
        huge.map(lambda wh: Bad("png bomb", ".png", png_with_size(*wh), True)),
        huge.map(lambda wh: Bad("gif bomb", ".gif", gif_with_size(*wh), True)),
        st.just(Bad("folder", ".jpg", certain=True)),
        st.just(Bad("dangling link", ".png", certain=True)),
        st.just(Bad("missing", ".png", certain=True)),
        st.sampled_from([".mp4", ".avi", ".mkv"]).map(lambda s: Bad("empty", s, certain=True)),
        st.binary(min_size=1, max_size=2000).map(
            lambda b: Bad("random video", ".mp4", b"\x00garbage" + b, True)
        ),
    )


def doubtful() -> st.SearchStrategy[Bad]:
    """Inputs that may or may not work."""

    @st.composite
    def truncated_video(draw: st.DrawFn) -> Bad:
        suffix = draw(st.sampled_from(sorted(VIDEOS)))
        data = VIDEOS[suffix]
        return Bad("truncated video", suffix, data[: draw(st.integers(1, len(data) - 1))])

    return st.one_of(
        corruptions(),
        truncated_video(),
        st.just(Bad("unreadable", ".png", ENCODED["PNG"])),
    )


def write_input(folder: Path, index: int, bad: Bad) -> str:
    path = folder / f"in{index:02d}{bad.suffix}"
    if bad.kind == "folder":
        path.mkdir()
    elif bad.kind == "dangling link":
        path.symlink_to(folder / "gone.png")
    elif bad.kind == "missing":
        pass
    else:
        path.write_bytes(bad.data)
        if bad.kind == "unreadable":
            path.chmod(0)
    return str(path)


def predict(capfd: pytest.CaptureFixture[str], *inputs: str) -> tuple[int, str, str]:
    status = cli.main(["predict", *inputs, *OPTIONS])
    out, err = capfd.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def baseline(request: pytest.FixtureRequest) -> dict:
    """The good photo's result when it runs alone; the campaign's counts are shown after."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(["predict", str(ASTRONAUT), *OPTIONS]) == 0
    (line,) = buffer.getvalue().splitlines()

    def show_counts() -> None:
        message = (
            f"predict campaign: {COUNTS['runs']} runs, {COUNTS['inputs']} inputs, "
            f"{COUNTS['failed inputs']} of them failed (one line each)"
        )
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n{message}")

    request.addfinalizer(show_counts)
    return json.loads(line)


def same_result(got: dict, want: dict) -> bool:
    """Equal up to float32 differences (another batch composition, another session)."""
    if set(got) != set(want):
        return False
    for key, value in want.items():
        if isinstance(value, dict):
            if not isinstance(got[key], dict) or not same_result(got[key], value):
                return False
        elif isinstance(value, list):
            if not isinstance(got[key], list) or len(got[key]) != len(value):
                return False
            for a, b in zip(got[key], value, strict=True):
                if not same_result({"v": a}, {"v": b}):
                    return False
        elif isinstance(value, float) and not isinstance(value, bool):
            # JSON rounds to 2-4 digits: a float32 difference may move the last one.
            if not math.isclose(got[key], value, rel_tol=1e-4, abs_tol=0.011):
                return False
        elif got[key] != value:
            return False
    return True


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    certain=st.lists(certain_bad(), min_size=1, max_size=3),
    maybe=st.lists(doubtful(), max_size=5),
    order=st.randoms(use_true_random=False),
)
def test_bad_inputs_never_lose_the_good_result(
    capfd: pytest.CaptureFixture[str], baseline: dict, certain: list, maybe: list, order
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bads = [*certain, *maybe]
        order.shuffle(bads)
        paths = [write_input(folder, i, bad) for i, bad in enumerate(bads)]
        good_at = order.randrange(len(paths) + 1)
        inputs = [*paths[:good_at], str(ASTRONAUT), *paths[good_at:]]
        try:
            status, out, err = predict(capfd, *inputs)
        finally:
            for path in paths:
                if os.path.lexists(path) and not os.path.islink(path):
                    os.chmod(path, 0o700)
    assert "Traceback" not in err and "Traceback" not in out, err
    results = [json.loads(line) for line in out.splitlines()]
    # Every input, in order (a video: one result per sampled frame, or one error).
    # A folder named as an input is searched, not read: it has no result of its own.
    folders = {p for p, b in zip(paths, bads, strict=True) if b.kind == "folder"}
    seen = [r["path"] for r in results]
    in_order = [p for i, p in enumerate(seen) if i == 0 or seen[i - 1] != p]
    assert in_order == [p for p in inputs if p not in folders], err
    lines = err.splitlines()
    assert all(line.startswith("agegender: error: ") for line in lines), err
    failed = 0
    for path in inputs:
        mine = [r for r in results if r["path"] == path]
        named = [x for x in lines if x.startswith(f"agegender: error: {path}: ")]
        if path in folders:
            failed += 1
            assert named == [f"agegender: error: {path}: folder holds no image files"], err
        elif any(r["error"] for r in mine):
            failed += 1
            assert len(named) == 1, (path, err)
            assert all(r["error"] for r in mine) and len(mine) == 1, path
            assert named[0] == f"agegender: error: {mine[0]['error']}"
        else:
            assert named == [], (path, err)
    assert len(lines) == failed, err
    for bad, path in zip(bads, paths, strict=True):
        if path in folders:
            continue
        if bad.certain or (bad.kind == "unreadable" and not ROOT_USER):
            mine = [r for r in results if r["path"] == path]
            assert len(mine) == 1 and mine[0]["error"], (bad.kind, path, mine)
    assert status == 1
    (good,) = [r for r in results if r["path"] == str(ASTRONAUT)]
    assert same_result(good, baseline), (good, baseline)
    COUNTS["runs"] += 1
    COUNTS["inputs"] += len(inputs)
    COUNTS["failed inputs"] += failed
