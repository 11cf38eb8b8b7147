"""A bad-input campaign against `agegender evaluate`'s dataset readers and runner (Hypothesis).

Label files: a valid file of each published format (generic CSV, Adience fold file,
ChaLearn CSV, APPA-REAL's two CSVs, the IMDB-WIKI ``.mat``) with generated faults: fields
deleted, cells replaced by another type (text, NaN, infinities, huge or negative numbers,
NUL characters), junk bytes (invalid UTF-8, quotes, tabs), truncation, and for the
``.mat``: struct fields removed, given another type or length, and the file's bytes
truncated or bit-flipped. Whatever happens, a reader returns records with sane labels
(ages finite in 0..120 or unknown, genders female/male or unknown, vote std >= 0) and
counts what it dropped, or raises one ``DatasetError`` of one line naming the file — never
another exception. The command turns that error into one line and exit status 2.

The ``.mat`` cases of the default run are parsed in the test's process; the long run's
in a child process as the command does (SciPy's reader can crash on a damaged file: one
such file, found here, is kept as a regression case).

Images: a labelled dataset whose images are truncated, zero-length, bit-flipped, junk or
misnamed encodings, beside a good face crop: every broken image becomes that record's
error (one line naming it), and the good one is still scored with its result alone.

The default run is small and the same every time (``HYPOTHESIS_PROFILE=long`` runs ten
times more, new ones each run); the number of cases is printed at the end.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.io import savemat

from agegender import Estimator
from agegender.cli import main
from agegender.evaluate import readers, runner
from agegender.evaluate.readers import DatasetError

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1
CAMPAIGN = settings(
    max_examples=200 * SCALE,
    deadline=None,
    database=None,
    derandomize=SCALE == 1,  # the default run is the same cases every time (CI); long: new ones
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
COUNTS: dict[str, int] = {}


def _count(kind: str, n: int = 1) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + n


@pytest.fixture(scope="module", autouse=True)
def _show_counts(request: pytest.FixtureRequest) -> None:
    def show() -> None:
        total = sum(COUNTS.values())
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(COUNTS.items()))
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\nevaluate campaign: {total} cases ({parts})")

    request.addfinalizer(show)


# -- faults in text label files ------------------------------------------------------------
JUNK = st.one_of(
    st.sampled_from(
        [
            "",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "-5",
            "999999999999",
            "abc",
            "f",
            "m",
            "u",
            "2",
            '"',
            '"a,b"',
            "\t",
            ";",
            ",",
            "\x00",
            "(8, 12)",
            "(99999999999999999999999, 1)",
            "( 4 , 6 )",
            "../../etc/passwd",
            "a" * 300,
        ]
    ),
    st.text(max_size=12),
)


@st.composite
def text_faults(draw: st.DrawFn, lines: list[list[str]], delimiter: str) -> bytes:
    """`lines` (header first) joined with `delimiter`, after a few generated faults."""
    rows = [list(row) for row in lines]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "retype", "drop_line", "dup_line", "extra"]))
        r = draw(st.integers(0, len(rows) - 1))
        row = rows[r]
        if kind == "delete" and row:
            del row[draw(st.integers(0, len(row) - 1))]
        elif kind == "retype" and row:
            row[draw(st.integers(0, len(row) - 1))] = draw(JUNK)
        elif kind == "drop_line" and len(rows) > 1:
            del rows[r]
        elif kind == "dup_line":
            rows.insert(r, list(row))
        else:
            row.append(draw(JUNK))
    data = "\n".join(delimiter.join(row) for row in rows).encode("utf-8")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"\xff\xfe", b"\x00", b"\x80abc", b"\r", b'"\n"', b"\xef"]))
        data = data[:at] + junk + data[at:]
    return data


CSV_LINES = [
    ["path", "age", "gender", "age_std", "race", "x1", "y1", "x2", "y2"],
    ["a.jpg", "30", "f", "2.5", "asian", "1", "2", "30", "40"],
    ["b.jpg", "41", "male", "", "", "", "", "", ""],
    ["sub/c.jpg", "", "m", "", "white", "0", "0", "10", "10"],
]
ADIENCE_LINES = [
    ["user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy"],
    ["u1", "a.jpg", "1", "(25, 32)", "f", "0", "0", "10", "10"],
    ["u1", "b.jpg", "2", "(38, 42)", "m", "0", "0", "10", "10"],
    ["u2", "c.jpg", "3", "35", "u", "0", "0", "10", "10"],
]
CHALEARN_LINES = [
    ["image", "mean", "stdev"],
    ["000001.jpg", "25.3", "4.1"],
    ["000002.jpg", "61", "0"],
]
APPA_GT_LINES = [
    ["file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age"],
    ["005613.jpg", "38", "20.4", "3.1", "22"],
    ["005614.jpg", "40", "55.0", "5.2", "59"],
]
APPA_CAT_LINES = [
    ["file", "gender", "race", "makeup", "time", "happiness"],
    ["005613.jpg", "female", "asian", "makeup", "modern", "happy"],
    ["005614.jpg", "male", "caucasian", "no_makeup", "modern", "neutral"],
]


def _check(read: Callable[[], readers.Dataset], names: list[Path]) -> str:
    """Run a reader; its result must be sane, its error one line naming a file. Returns
    "read" or "error" for the counts."""
    try:
        data = read()
    except DatasetError as error:
        message = str(error)
        assert "\n" not in message and message.strip() == message, message
        assert any(str(n) in message for n in names) or message.startswith("--"), message
        return "error"
    for record in data.records:
        assert isinstance(record.path, str) and "\x00" not in record.path
        for age in (record.age, record.real_age):
            assert age is None or (math.isfinite(age) and 0 <= age <= readers.MAX_AGE), record
        assert record.age_std is None or (math.isfinite(record.age_std) and record.age_std >= 0)
        assert record.gender in (None, "female", "male"), record
        assert record.group is None or record.group in {g[0] for g in readers.ADIENCE_GROUPS}
        assert record.box is None or all(math.isfinite(v) for v in record.box)
    assert all(n > 0 for n in data.dropped.values())
    return "read"


@CAMPAIGN
@given(data=st.data(), fmt=st.sampled_from(["csv", "adience", "chalearn", "appa-gt", "appa-cat"]))
def test_text_label_files_give_records_or_one_line(data: st.DataObject, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if fmt == "csv":
            path = folder / "labels.csv"
            path.write_bytes(data.draw(text_faults(CSV_LINES, data.draw(st.sampled_from(",;\t")))))
            outcome = _check(lambda: readers.read_dataset("csv", path), [path])
        elif fmt == "adience":
            path = folder / "fold_0_data.txt"
            path.write_bytes(data.draw(text_faults(ADIENCE_LINES, "\t")))
            outcome = _check(lambda: readers.read_dataset("adience", folder), [path, folder])
        elif fmt == "chalearn":
            path = folder / "Train.csv"
            path.write_bytes(data.draw(text_faults(CHALEARN_LINES, ";")))
            outcome = _check(lambda: readers.read_dataset("chalearn", path), [path])
        else:
            gt, cat = folder / "gt_avg_test.csv", folder / "allcategories_test.csv"
            gt_lines = text_faults(APPA_GT_LINES, ",") if fmt == "appa-gt" else None
            cat_lines = text_faults(APPA_CAT_LINES, ",") if fmt == "appa-cat" else None
            plain_gt = "\n".join(",".join(r) for r in APPA_GT_LINES).encode()
            plain_cat = "\n".join(",".join(r) for r in APPA_CAT_LINES).encode()
            gt.write_bytes(data.draw(gt_lines) if gt_lines is not None else plain_gt)
            cat.write_bytes(data.draw(cat_lines) if cat_lines is not None else plain_cat)
            outcome = _check(
                lambda: readers.read_dataset("appa-real", folder, split="test"), [gt, cat, folder]
            )
    _count(f"{fmt} files ({outcome})")


# -- faults in the IMDB-WIKI .mat ---------------------------------------------------------
def _cells(values: list[Any]) -> np.ndarray:
    cells = np.empty((1, len(values)), dtype=object)
    for i, v in enumerate(values):
        cells[0, i] = v
    return cells


def _imdb_struct() -> dict[str, Any]:
    """Four entries as IMDB-WIKI stores them: two good, one with no face, one with two."""
    return {
        "dob": np.array([[723671.0, 711000.0, 730000.0, 720000.0]]),
        "photo_taken": np.array([[2009.0, 1990.0, 2012.0, 2010.0]]),
        "full_path": _cells(["01/a.jpg", "02/b.jpg", "03/c.jpg", "04/d.jpg"]),
        "gender": np.array([[1.0, 0.0, np.nan, 0.0]]),
        "name": _cells(["A", "B", "C", "D"]),
        "face_location": _cells([np.array([[10.0, 10.0, 50.0, 60.0]])] * 4),
        "face_score": np.array([[4.5, -np.inf, 2.0, 3.0]]),
        "second_face_score": np.array([[np.nan, np.nan, 1.5, np.nan]]),
    }


MAT_VALUES = st.sampled_from(
    [
        "text",
        np.array([["a", "b", "c"]]),
        np.array([[1.0, 2.0]]),
        np.array([[np.nan, np.inf, -np.inf, 1.0]]),
        np.array([[1e300, -1e300, 0.0, 5.0]]),
        np.array([[2.0, -1.0, 7.0, 0.5]]),
        np.array([["a.jpg", "", "\x00", "d.jpg"]]),
        np.zeros((0, 0)),
        np.ones((4, 4)),
        np.array([[1, 2, 3, 4]], dtype=np.int32),
        {"nested": np.array([[1.0]])},
    ]
)


@st.composite
def mat_faults(draw: st.DrawFn) -> tuple[bytes, bool]:
    struct = _imdb_struct()
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(struct) or ["dob"]))
        kind = draw(st.sampled_from(["delete", "retype", "cells"]))
        if kind == "delete":
            struct.pop(name, None)
        elif kind == "retype":
            struct[name] = draw(MAT_VALUES)
        else:
            struct[name] = _cells([draw(MAT_VALUES) for _ in range(4)])
    key = draw(st.sampled_from(["imdb", "wiki", "other"]))
    top: dict[str, Any] = {key: struct}
    if draw(st.integers(0, 5)) == 0:
        top = {key: draw(MAT_VALUES)}
    buffer = io.BytesIO()
    savemat(buffer, top)
    data = buffer.getvalue()
    fault = draw(st.sampled_from(["none"] * 5 + ["truncate", "flip", "zero"]))
    if fault == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif fault == "flip":
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(raw) - 1))
            raw[at] ^= 1 << draw(st.integers(0, 7))
        data = bytes(raw)
    elif fault == "zero":
        data = b""
    return data, fault in ("truncate", "flip")


@settings(CAMPAIGN, max_examples=150 * SCALE)
@given(case=mat_faults())
def test_imdb_mat_gives_records_or_one_line(case: tuple[bytes, bool]) -> None:
    # A damaged file can crash SciPy's reader (a segmentation fault, not always the same
    # bytes: it reads past its buffers), so it is parsed in a child as the command does;
    # files savemat wrote intact are parsed in this process (fast).
    data, damaged = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "imdb.mat"
        path.write_bytes(data)
        outcome = _check(lambda: readers.read_imdb_wiki(path, isolate=damaged), [path])
    _count(f"imdb .mat files ({outcome})")


# Found by this campaign: a savemat file with a few flipped bits on which SciPy 1.17's
# loadmat dies with a segmentation fault (no exception to catch).
CRASHING_MAT = (
    "eNrzdQzxcXRSMNUzUPB1DNFNy8xJVQjISSxJyy/KtVIoyC/OrNBRcC5KTSxJTVHIz7NSCC7NU/DLL1MwslQwMLQy"
    "NrEyNFUwMjAyYyADMHr68gGpDFYGBjYgzQHETFApViifEY5ZGDJzU5JYgTQfVCwEiFPyk5AMLMjIL8mPL0nMTs0D"
    "8tJKc3LiCxJLMsBy6al5KalFMJV5ibmpCH1picmp8Tn5yYklmfl5YBGQHQEMCHexYXEXC5RmgIopQNnrRNUcQfSG"
    "TapgWsEdwmf4qepIqrmcSOYypMx3ANMSULoASmfMPwAyV4MRYS4jAXNB6i2Q3MGCRT2yOQJQvoGhfqJeVkE62fqN"
    "9JMo0m+sn0yRfhP9FJh+1HhgJD4eGD7YoybkH/UMSOHKQWI8GBDwByOKPxgZHMnU54RFHw8R+pzJtM8Fqq+DxPAg"
    "O38wqDig0p5Q2s9h1FyIuQBOUVSI"
)


def test_a_mat_file_that_crashes_scipy_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "imdb.mat"
    path.write_bytes(zlib.decompress(base64.b64decode("".join(CRASHING_MAT))))
    with pytest.raises(DatasetError, match=r"imdb.mat: not a readable MATLAB file \(the reader"):
        readers.read_dataset("imdb-wiki", path)
    _count("imdb .mat files (error)")


def test_bad_labels_through_the_command_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "binary.csv").write_bytes(b"path,age\n\xff\xfe\x00junk,3\n")
    (tmp_path / "age.csv").write_text("path,age\nx.jpg,old\n")
    (tmp_path / "imdb.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    cases = [
        ("binary.csv", "csv", "not a UTF-8 text file"),
        ("age.csv", "csv", "age.csv:2: age 'old' is not a number from 0 to 120"),
        ("imdb.mat", "imdb-wiki", "imdb.mat: not a readable MATLAB file"),
    ]
    for name, fmt, message in cases:
        assert main(["evaluate", str(tmp_path / name), "--format", fmt, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    _count("command runs", len(cases))


# -- broken images in a dataset -----------------------------------------------------------
def _encoded(fmt: str) -> bytes:
    with Image.open(ASTRONAUT) as image:
        small = image.convert("RGB").crop((140, 40, 306, 214)).resize((64, 64))
    buffer = io.BytesIO()
    small.save(buffer, fmt)
    return buffer.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "BMP", "WEBP")}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp"}


@st.composite
def broken_image(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(suffix, bytes, surely unreadable)."""
    fmt = draw(st.sampled_from(sorted(ENCODED)))
    data = ENCODED[fmt]
    kind = draw(st.sampled_from(["zero", "truncate", "flip", "junk", "misnamed"]))
    if kind == "zero":
        return SUFFIX[fmt], b"", True
    if kind == "truncate":
        return SUFFIX[fmt], data[: draw(st.integers(0, 24))], True
    if kind == "junk":
        return SUFFIX[fmt], draw(st.binary(min_size=1, max_size=64)), False
    if kind == "misnamed":
        other = draw(st.sampled_from(sorted(set(SUFFIX.values()) - {SUFFIX[fmt]})))
        return other, data, False  # Pillow reads by content: may well decode
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 16))):
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] ^= 1 << draw(st.integers(0, 7))
    return SUFFIX[fmt], bytes(raw), False


@pytest.fixture(scope="module")
def whole_image() -> Estimator:
    return Estimator(detector="none", tta=False)


@pytest.fixture(scope="module")
def good_face(tmp_path_factory: pytest.TempPathFactory, whole_image: Estimator) -> tuple:
    path = tmp_path_factory.mktemp("good") / "good.png"
    path.write_bytes(ENCODED["PNG"])
    (face,) = whole_image.predict(path)
    return path, face


@settings(CAMPAIGN, max_examples=60 * SCALE)
@given(broken=st.lists(broken_image(), min_size=1, max_size=4), at=st.integers(0, 4))
def test_broken_images_are_their_records_errors(
    whole_image: Estimator, good_face: tuple, broken: list, at: int
) -> None:
    good_path, good = good_face
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (suffix, data, _) in enumerate(broken):
            path = Path(tmp) / f"broken{i}{suffix}"
            path.write_bytes(data)
            paths.append(str(path))
        at = min(at, len(paths))
        paths.insert(at, str(good_path))
        records = [readers.Record(p, age=41.0, gender="female") for p in paths]
        outcomes = runner.run_setting(whole_image, records)
    assert len(outcomes) == len(records)
    for i, (outcome, path) in enumerate(zip(outcomes, paths, strict=True)):
        if outcome.status == "error":
            assert outcome.error and "\n" not in outcome.error and path in outcome.error
        if i != at and broken[i - (i > at)][2]:
            assert outcome.status == "error", (path, outcome)
    mine = outcomes[at]
    assert mine.status == "ok" and mine.age == pytest.approx(good.age.value, rel=1e-4)
    assert mine.gender == good.gender.label
    _count("image datasets")
    _count("broken images", len(broken))


def test_broken_images_through_the_command(
    tmp_path: Path, good_face: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    good_path, good = good_face
    (tmp_path / "good.png").write_bytes(good_path.read_bytes())
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(ENCODED["PNG"][:40])
    (tmp_path / "junk.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPjunk")
    names = ["zero.jpg", "good.png", "cut.png", "junk.webp"]
    rows = "".join(f"{n},41,f\n" for n in names)
    (tmp_path / "labels.csv").write_text("path,age,gender\n" + rows)
    args = [str(tmp_path / "labels.csv"), "--format", "csv", "--cropped", "--no-tta"]
    code = main(["evaluate", *args, "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    metrics = json.loads(captured.out)["settings"][0]["metrics"]
    assert metrics["unreadable"] == 3 and metrics["excluding_no_face"]["age"]["n"] == 1
    assert metrics["excluding_no_face"]["age"]["mae"] == pytest.approx(
        abs(good.age.value - 41), abs=1e-3
    )
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 3 and all(any(n in w for n in names) for w in warnings)
    _count("command runs")
