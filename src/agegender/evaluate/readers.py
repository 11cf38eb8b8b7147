"""Readers: the public age/gender benchmarks as they are published, into one record type.

Each reader takes the dataset as its publisher ships it (file names, ``.mat`` structs, fold
files, CSVs) and returns ``Record`` objects plus a count of every entry it dropped and why,
so a number measured here can be compared with a paper's.

``READERS`` (at the end) is the one registry of formats: name -> :class:`Reader` (the read
function, a description, and what ``--split`` selects, if anything). The CLI's ``--format``
choices and help read it; a new dataset format is one ``read_*`` function and one line
there. A reader takes the options it understands as keyword arguments (``split``, ``root``,
``cropped``); an option given to a reader without that parameter is an error, never ignored.

Malformed label files give one ``DatasetError`` naming the file (and line or entry) and
the fault; entries a reader's design leaves out (no face, unknown code) are counted in
``Dataset.dropped``. This module imports nothing heavy at import time (``--help`` reads it).
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from inspect import signature
from pathlib import Path
from typing import Any

from ..errors import AgegenderError

Box = tuple[float, float, float, float]

# Adience's eight age groups (Levi & Hassner); the levi-age card uses the same labels.
ADIENCE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-2", 0, 2),
    ("4-6", 4, 6),
    ("8-12", 8, 12),
    ("15-20", 15, 20),
    ("25-32", 25, 32),
    ("38-43", 38, 43),
    ("48-53", 48, 53),
    ("60-100", 60, 100),
)
UTKFACE_RACES = ("white", "black", "asian", "indian", "other")
MAX_AGE = 120  # a label above this (or below 0) is not an age
# FairFace's nine apparent-age groups (Karkkainen & Joo), as its label files spell them;
# "more than 70" spans 70..MAX_AGE. Contiguous in whole years: an age is in the group
# when low <= age < high + 1.
FAIRFACE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-2", 0, 2),
    ("3-9", 3, 9),
    ("10-19", 10, 19),
    ("20-29", 20, 29),
    ("30-39", 30, 39),
    ("40-49", 40, 49),
    ("50-59", 50, 59),
    ("60-69", 60, 69),
    ("more than 70", 70, MAX_AGE),
)
FAIRFACE_SPLITS = ("train", "val")


PROBLEMS_SHOWN = 100  # malformed rows listed in the report's dataset summary


class DatasetError(AgegenderError):
    """A dataset's labels cannot be read (wrong path, wrong format, malformed file)."""


@dataclass
class Record:
    """One labelled face: the image, its labels, and where the labels came from."""

    path: str
    age: float | None = None  # real age, or the mean of apparent-age votes
    age_std: float | None = None  # std of apparent-age votes (ChaLearn, APPA-REAL)
    gender: str | None = None  # "female" | "male"
    race: str | None = None
    group: str | None = None  # Adience age group label, e.g. "25-32"
    box: Box | None = None  # labelled face box (x1, y1, x2, y2), 0-based pixels
    subject: str | None = None  # person id (FG-NET, Adience user, IMDB-WIKI name)
    fold: str | None = None  # fold or split this record belongs to
    real_age: float | None = None  # APPA-REAL: real age besides the apparent one
    # An interval label (FairFace's apparent-age groups): the age lies in age_min..age_max
    # whole years, so it is scored by group accuracy (age_min <= estimate < age_max + 1),
    # never by MAE against a midpoint; `age` stays None then.
    age_min: float | None = None
    age_max: float | None = None


@dataclass
class Dataset:
    """Records read from one dataset, and what was dropped while reading it."""

    format: str
    source: str
    records: list[Record]
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> entries left out
    adjusted: Counter[str] = field(default_factory=Counter)  # reason -> entries kept, changed
    # One line per malformed row a reader left out while keeping the others
    # ("FILE:LINE: reason"), for readers whose published files are known to hold a few.
    problems: list[str] = field(default_factory=list)
    # The label column Record.race was read from: the groups fairness is measured over.
    group_column: str = "race"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "source": self.source,
            "records": len(self.records),
            "dropped": dict(self.dropped),
            "adjusted": dict(self.adjusted),
            "group_column": self.group_column,
        }
        if self.problems:
            out["problems"] = self.problems[:PROBLEMS_SHOWN]
            out["problems_total"] = len(self.problems)
        return out


def _images_under(root: Path) -> list[Path]:
    """Image files under `root`, recursively, as predict finds them: hidden files and
    folders (``.x.jpg``, macOS ``._*`` resource forks, ``.git``) and the folders agegender
    wrote into (``--annotate``, an evaluate ``--report``) are not part of a dataset."""
    from ..images import walk_images  # here: reading the registry stays light

    return [Path(p) for p in walk_images(root)]


def _exists(path: Path) -> bool:
    """Path.exists that says False for names the OS cannot look up (too long, NUL)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _need_dir(path: Path, what: str) -> None:
    if not _exists(path):
        raise DatasetError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} expects a folder")


def _float(value: Any) -> float | None:
    """A number from a label cell; None for empty, NaN, infinite or non-numeric."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _age_or_none(number: float | None) -> float | None:
    """An age label kept only when it is one (0..MAX_AGE)."""
    return number if number is not None and 0 <= number <= MAX_AGE else None


def _bad_path(text: str) -> bool:
    """A path no file can have (a NUL character)."""
    return "\0" in text


def _text_of(path: Path) -> str:
    """A label file's text; one-line DatasetError when it cannot be read as UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: not a UTF-8 text file (byte {error.start}: {error.reason})"
        ) from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror or error})") from None


def _csv_rows(path: Path, rows: Iterator[Any]) -> Iterator[Any]:
    """`rows` of a csv reader, with the csv module's faults as one-line DatasetErrors."""
    try:
        yield from rows
    except csv.Error as error:
        raise DatasetError(f"{path}: malformed CSV ({error})") from None


def _header(path: Path, reader: csv.DictReader[str]) -> set[str]:
    """The stripped column names of a DictReader, with the csv module's faults (a header
    field over its size limit, as a stray quote makes) as one-line DatasetErrors."""
    try:
        names = [(f or "").strip() for f in reader.fieldnames or ()]
    except csv.Error as error:
        raise DatasetError(f"{path}: malformed CSV header ({error})") from None
    _refuse_repeated(path, names)
    return set(names)


def _refuse_repeated(path: Path, names: Iterable[str]) -> None:
    """A header naming a column twice is refused: the csv module keeps the last one's
    cells, so `path,age,age` read its labels from the second column without a word."""
    seen: set[str] = set()
    for name in names:
        if name and name.lower() in seen:
            raise DatasetError(
                f"{path}: the header names the column {name!r} twice; keep one of them"
            )
        seen.add(name.lower())


def _cells(row: dict[Any, Any]) -> dict[str, str]:
    """A DictReader row with stripped names and values; cells past the header (key None)
    are dropped and missing cells are empty."""
    return {
        k.strip(): (v if isinstance(v, str) else "").strip()
        for k, v in row.items()
        if isinstance(k, str)
    }


def _gender(value: str | None) -> str | None:
    text = (value or "").strip().lower()
    if text in ("f", "female", "woman", "w"):
        return "female"
    if text in ("m", "male", "man"):
        return "male"
    return None


def group_of(age: float) -> str:
    """The Adience group containing `age`, or the nearest one when it falls in a gap."""
    best, best_distance = ADIENCE_GROUPS[0][0], math.inf
    for label, lo, hi in ADIENCE_GROUPS:
        distance = 0.0 if lo <= age <= hi else min(abs(age - lo), abs(age - hi))
        if distance < best_distance:
            best, best_distance = label, distance
    return best


# -- UTKFace -----------------------------------------------------------------------------
_UTK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)")
_UTK_NO_RACE = re.compile(r"^(\d+)_(\d+)_(\d{8,})")


def read_utkface(root: str | Path) -> Dataset:
    """UTKFace: ``age_gender_race_datetime.jpg[.chip.jpg]``, gender 0 male / 1 female.

    Race is 0 white, 1 black, 2 asian, 3 indian, 4 other. A few published files lack the
    race field (``age_gender_datetime``): they are kept with race unknown.
    """
    root = Path(root)
    _need_dir(root, "--format utkface")
    data = Dataset("utkface", str(root), [])
    for path in _images_under(root):
        name = path.name
        match = _UTK_NAME.match(name)
        race: str | None = None
        lacks_race = False
        if match:
            age, sex, race_code = int(match[1]), int(match[2]), int(match[3])
            if race_code >= len(UTKFACE_RACES):
                data.dropped["race code outside 0..4"] += 1
                continue
            race = UTKFACE_RACES[race_code]
        elif match := _UTK_NO_RACE.match(name):
            age, sex = int(match[1]), int(match[2])
            lacks_race = True
        else:
            data.dropped["name not age_gender_race_date"] += 1
            continue
        if sex not in (0, 1):
            data.dropped["gender code not 0/1"] += 1
            continue
        if age > MAX_AGE:  # the name's digits allow none below 0
            data.dropped[f"age outside 0..{MAX_AGE}"] += 1
            continue
        if lacks_race:  # counted only once kept: a dropped name is not also "adjusted"
            data.adjusted["name lacks race: race unknown"] += 1
        data.records.append(
            Record(str(path), age=float(age), gender=("male", "female")[sex], race=race)
        )
    return data


# -- IMDB-WIKI ---------------------------------------------------------------------------
def datenum_to_date(datenum: float) -> date:
    """A MATLAB datenum (days since year 0) as a date; datenum 1 is 0000-01-01."""
    return date.fromordinal(max(int(datenum) - 366, 1))


def dex_age(dob_datenum: float, photo_taken: float) -> int:
    """Age at the photo as IMDB-WIKI's users compute it: the photo taken mid-year (1 July)."""
    born = datenum_to_date(dob_datenum)
    return int(photo_taken) - born.year - (0 if born.month < 7 else 1)


def _mat_column(meta: Any, name: str) -> list[Any]:
    import numpy as np

    if name not in meta.dtype.names:
        raise KeyError(name)
    column = np.asarray(meta[name]).reshape(-1)
    return [np.asarray(v).squeeze() if isinstance(v, np.ndarray) else v for v in column]


def _text(cell: Any) -> str:
    import numpy as np

    array = np.asarray(cell)
    if array.size == 0:
        return ""
    if array.dtype.kind in ("U", "S"):
        value = array.reshape(-1)[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return str(array)


class _EntryError(Exception):
    """A field of one .mat entry that is not what IMDB-WIKI stores there."""


def _number(cell: Any, field: str) -> float:
    """One number from a .mat cell (a 1x1 array or a scalar)."""
    import numpy as np

    try:
        array = np.asarray(cell)
    except Exception:  # numpy refuses ragged or odd objects in several ways
        raise _EntryError(f"{field} is not a number") from None
    if array.size != 1 or array.dtype.kind not in "biuf":
        raise _EntryError(f"{field} is not a number")
    return float(array.reshape(-1)[0])


def _box(cell: Any) -> Box | None:
    """face_location (MATLAB, 1-based x1 y1 x2 y2) as a 0-based box; None when unusable."""
    import numpy as np

    try:
        array = np.asarray(cell, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if array.size != 4 or not np.isfinite(array).all():
        return None
    x1, y1, x2, y2 = (float(v) - 1 for v in array)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


IMDB_FIELDS = (
    "full_path",
    "dob",
    "photo_taken",
    "gender",
    "face_score",
    "second_face_score",
    "face_location",
)


def _imdb_struct_isolated(mat_path: Path) -> dict[str, list[Any]]:
    """`_imdb_struct` in a child process: SciPy's MATLAB reader can crash the process on a
    damaged file (a segmentation fault, not an exception), which must cost one line, not
    the run."""
    import pickle
    import subprocess
    import sys

    code = (
        "import pickle, sys\n"
        "from agegender.evaluate.readers import DatasetError, _imdb_struct\n"
        "try:\n"
        "    out = ('ok', _imdb_struct(sys.argv[1]))\n"
        "except DatasetError as error:\n"
        "    out = ('error', str(error))\n"
        "sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(mat_path)], capture_output=True)
    if done.returncode != 0:
        how = "crashed" if done.returncode < 0 else "failed"
        raise DatasetError(f"{mat_path}: not a readable MATLAB file (the reader {how} on it)")
    kind, value = pickle.loads(done.stdout)  # our own child's output
    if kind == "error":
        raise DatasetError(value)
    return value  # type: ignore[no-any-return]


def _imdb_struct(mat_path: str | Path) -> dict[str, list[Any]]:
    """The columns of an IMDB-WIKI .mat (each as long as full_path), or a DatasetError."""
    import numpy as np
    from scipy.io import loadmat

    mat_path = Path(mat_path)
    try:
        mat = loadmat(str(mat_path))
    except Exception as error:  # scipy raises several types for a bad file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(f"{mat_path}: not a readable MATLAB file ({reason})") from None
    keys = [k for k in ("imdb", "wiki") if k in mat]
    if not keys:
        raise DatasetError(f"{mat_path}: no 'imdb' or 'wiki' struct in the file")
    struct = mat[keys[0]]
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None or struct.size != 1:
        raise DatasetError(f"{mat_path}: '{keys[0]}' is not a 1x1 struct")
    meta = struct.reshape(-1)[0]
    columns: dict[str, list[Any]] = {}
    try:
        for name in IMDB_FIELDS:
            columns[name] = _mat_column(meta, name)
    except KeyError as missing:
        raise DatasetError(f"{mat_path}: struct lacks the field {missing}") from None
    if "name" in meta.dtype.names:
        columns["name"] = _mat_column(meta, "name")
    n = len(columns["full_path"])
    for name, column in columns.items():
        if len(column) != n:
            raise DatasetError(
                f"{mat_path}: field '{name}' has {len(column)} entries, full_path has {n}"
            )
    return columns


def read_imdb_wiki(
    source: str | Path,
    *,
    min_face_score: float | None = None,
    boxes: bool | None = None,
    isolate: bool = True,
) -> Dataset:
    """IMDB-WIKI: ``imdb.mat`` or ``wiki.mat`` (a file, or the folder holding one).

    Cleaning as usually done: drop entries with no face (face_score -inf), with a second
    face (second_face_score not NaN), optionally a face_score under `min_face_score`, and
    ages outside 0..100. Gender 0 female / 1 male; NaN gender keeps the entry, gender unknown.

    ``face_location`` (MATLAB, 1-based) is in the full photo, so it becomes the record's
    0-based box only for the full-image release; the face-only releases (``imdb_crop``,
    ``wiki_crop``) ship the same .mat with crops in another frame. `boxes` overrides the guess.
    A field that is not a number where IMDB-WIKI stores one is an error naming the entry;
    entries with values the cleaning rules leave out are counted. The file is parsed in a
    child process (`isolate`), since a damaged one can crash SciPy's reader.
    """
    source = Path(source)
    if source.is_dir():
        found = [source / n for n in ("imdb.mat", "wiki.mat") if (source / n).is_file()]
        if not found:
            raise DatasetError(f"{source}: no imdb.mat or wiki.mat in this folder")
        mat_path = found[0]
    elif source.is_file():
        mat_path = source
    else:
        raise DatasetError(f"{source}: no such file or folder")
    columns = _imdb_struct_isolated(mat_path) if isolate else _imdb_struct(mat_path)
    names = columns.get("name")
    root = mat_path.parent
    if boxes is None:
        boxes = not root.resolve().name.endswith("_crop")
    data = Dataset("imdb-wiki", str(mat_path), [])
    for i in range(len(columns["full_path"])):
        try:
            record, reason = _imdb_entry(columns, i, root, boxes, min_face_score, names)
        except _EntryError as error:
            raise DatasetError(f"{mat_path}: entry {i + 1}: {error}") from None
        if record is None:
            data.dropped[reason] += 1
        else:
            data.records.append(record)
    return data


def _imdb_entry(
    columns: dict[str, list[Any]],
    i: int,
    root: Path,
    boxes: bool,
    min_face_score: float | None,
    names: list[Any] | None,
) -> tuple[Record | None, str]:
    """Entry `i` as a Record, or (None, why it is left out)."""
    score = _number(columns["face_score"][i], "face_score")
    second_score = _number(columns["second_face_score"][i], "second_face_score")
    if math.isnan(score):
        return None, "no face score"
    if math.isinf(score):
        return None, "no face (face_score -inf)"
    if not math.isnan(second_score):
        return None, "second face"
    if min_face_score is not None and score < min_face_score:
        return None, f"face_score < {min_face_score:g}"
    dob = _number(columns["dob"][i], "dob")
    if math.isnan(dob):
        return None, "no date of birth"
    taken = _number(columns["photo_taken"][i], "photo_taken")
    if not math.isfinite(taken):
        return None, "no photo year"
    try:
        age = dex_age(dob, taken)
    except (ValueError, OverflowError):
        return None, "date of birth out of range"
    if not 0 <= age <= 100:
        return None, "age outside 0..100"
    sex = _number(columns["gender"][i], "gender")
    if not math.isnan(sex) and sex not in (0.0, 1.0):
        return None, "gender code not 0/1"
    gender = None if math.isnan(sex) else ("female", "male")[int(sex)]
    path = _text(columns["full_path"][i]).strip()
    if not path or _bad_path(path):
        return None, "no usable image path"
    box = _box(columns["face_location"][i]) if boxes else None
    name = _text(names[i]) if names is not None else None
    return Record(
        str(root / path), age=float(age), gender=gender, box=box, subject=name or None
    ), ""


# -- ChaLearn LAP 2015 -------------------------------------------------------------------
def _resolve(root: Path, name: str, extra_dirs: Sequence[str] = ()) -> str:
    """`name` under `root`, or under one of `extra_dirs` of root if it is there instead."""
    direct = root / name
    if _exists(direct):
        return str(direct)
    for extra in extra_dirs:
        candidate = root / extra / name
        if _exists(candidate):
            return str(candidate)
    return str(direct)


def _label_file(source: Path, pattern: str, what: str) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        found = sorted(p for p in source.glob(pattern) if not p.name.startswith("."))
        if not found:
            raise DatasetError(f"{source}: no {pattern} file in this folder ({what})")
        return found
    raise DatasetError(f"{source}: no such file or folder")


def read_chalearn(source: str | Path, *, root: str | Path | None = None) -> Dataset:
    """ChaLearn LAP apparent age: 2015's ``image;mean;stdev`` per line (header optional),
    or 2016's ``train_gt.csv`` / ``valid_gt.csv`` / ``test_gt.csv`` (``image,mean,stdv``,
    comma separated); the separator is read from the first line.

    Images are looked up next to the CSV, or in a folder named like it (``Train.csv`` ->
    ``Train/``, ``train_gt.csv`` -> ``train_gt/`` or ``train/``), or under `root`.
    """
    files = _label_file(Path(source), "*.csv", "--format chalearn")
    data = Dataset("chalearn", str(source), [])
    for csv_path in files:
        base = Path(root) if root else csv_path.parent
        split = csv_path.stem.removesuffix("_gt") or csv_path.stem  # LAP 2016: train_gt
        text = _text_of(csv_path)
        first = next((line for line in text.splitlines() if line.strip()), "")
        delimiter = "," if "," in first and ";" not in first else ";"
        lines = io.StringIO(text, newline="")
        rows = _csv_rows(csv_path, csv.reader(lines, delimiter=delimiter))
        for line_no, row in enumerate(rows, start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise DatasetError(
                    f"{csv_path}:{line_no}: expected image;mean;stdev (LAP 2015) or "
                    f"image,mean,stdv (LAP 2016), got {row!r}"
                )
            mean, std = _float(row[1]), _float(row[2])
            if mean is not None and not 0 <= mean <= MAX_AGE:
                data.dropped[f"mean age outside 0..{MAX_AGE}"] += 1
                continue
            if mean is None:
                if line_no == 1:
                    continue  # header
                data.dropped["no mean age"] += 1
                continue
            name = row[0].strip()
            if not name or _bad_path(name):
                data.dropped["no usable image name"] += 1
                continue
            path = _resolve(base, name, tuple(dict.fromkeys((csv_path.stem, split))))
            data.records.append(Record(path, age=mean, age_std=std, fold=split))
    return data


# -- APPA-REAL ---------------------------------------------------------------------------
APPA_SPLITS = ("train", "valid", "test")


def read_appa_real(root: str | Path, *, split: str | None = None, cropped: bool = False) -> Dataset:
    """APPA-REAL: ``gt_avg_{train,valid,test}.csv`` and the images in ``{split}/``.

    ``cropped`` picks the published ``<name>_face.jpg`` crops instead of the full images.
    The age is the mean apparent age (its vote std kept for the epsilon-error); real age is
    kept too. Gender and race come from ``allcategories_{split}.csv`` when it is there.
    """
    root = Path(root)
    _need_dir(root, "--format appa-real")
    if split is not None and split not in APPA_SPLITS:
        raise DatasetError(f"--split {split!r}: APPA-REAL splits are {', '.join(APPA_SPLITS)}")
    splits = [split] if split else [s for s in APPA_SPLITS if (root / f"gt_avg_{s}.csv").is_file()]
    if not splits:
        raise DatasetError(f"{root}: no gt_avg_{{train,valid,test}}.csv in this folder")
    data = Dataset("appa-real", str(root), [])
    for name in splits:
        gt = root / f"gt_avg_{name}.csv"
        if not gt.is_file():
            raise DatasetError(f"{gt}: no such file (APPA-REAL split {name})")
        categories: dict[str, dict[str, str]] = {}
        cat_path = root / f"allcategories_{name}.csv"
        if cat_path.is_file():
            reader = csv.DictReader(io.StringIO(_text_of(cat_path), newline=""))
            for row in _csv_rows(cat_path, reader):
                cells = _cells(row)
                if "file" not in cells:
                    raise DatasetError(f"{cat_path}: needs a 'file' column")
                categories[cells["file"]] = cells
        reader = csv.DictReader(io.StringIO(_text_of(gt), newline=""))
        need = {"file_name", "apparent_age_avg", "apparent_age_std", "real_age"}
        if not need <= _header(gt, reader):
            raise DatasetError(f"{gt}: needs columns {', '.join(sorted(need))}")
        for row in _csv_rows(gt, reader):
            cells = _cells(row)
            file_name = cells["file_name"]
            apparent = _float(cells["apparent_age_avg"])
            if apparent is None:
                data.dropped["no apparent age"] += 1
                continue
            if not 0 <= apparent <= MAX_AGE:
                data.dropped[f"apparent age outside 0..{MAX_AGE}"] += 1
                continue
            if not file_name or _bad_path(file_name):
                data.dropped["no usable file name"] += 1
                continue
            image = root / name / (file_name + "_face.jpg" if cropped else file_name)
            extra = categories.get(file_name, {})
            real = _float(cells["real_age"])
            if real is not None and _age_or_none(real) is None:
                data.adjusted[f"real age outside 0..{MAX_AGE}: left out"] += 1
            data.records.append(
                Record(
                    str(image),
                    age=apparent,
                    age_std=_float(cells["apparent_age_std"]),
                    gender=_gender(extra.get("gender")),
                    race=(extra.get("race") or "").lower() or None,
                    fold=name,
                    real_age=_age_or_none(real),
                )
            )
    return data


# -- Adience -----------------------------------------------------------------------------
_ADIENCE_FOLD = re.compile(r"^fold_(\d+)_data\.txt$")
_RANGE = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def adience_group(label: str) -> tuple[str | None, float | None, bool]:
    """(group, exact age or None, relabelled) for one Adience age cell.

    The eight published groups map to themselves; a number, or a range that is not one of
    the eight (``(38, 42)``), maps to the group nearest its midpoint and counts as
    relabelled; ``None``, empty, or anything that is not an age from 0 to MAX_AGE gives no
    group.
    """
    text = label.strip()
    if match := _RANGE.match(text):
        lo, hi = int(match[1]), int(match[2])
        for name, g_lo, g_hi in ADIENCE_GROUPS:
            if (lo, hi) == (g_lo, g_hi):
                return name, None, False
        if lo > hi or hi > MAX_AGE:
            return None, None, False
        return group_of((lo + hi) / 2), None, True
    number = _float(text)
    if number is None or not 0 <= number <= MAX_AGE:
        return None, None, False
    return group_of(number), number, True


def read_adience(source: str | Path, *, split: str | None = None) -> Dataset:
    """Adience: ``fold_{0..4}_data.txt`` (tab separated) next to ``aligned/`` or ``faces/``.

    The image is ``aligned/<user>/landmark_aligned_face.<face_id>.<image>`` when that folder
    exists, else ``faces/<user>/coarse_tilt_aligned_face.<face_id>.<image>``. Gender f/m,
    ``u`` or empty is unknown. The fold file's box (x, y, dx, dy) is in the original Flickr
    photo, not in these face images, so it is not used to match faces.
    """
    source = Path(source)
    if source.is_file():
        files, root = [source], source.parent
    else:
        _need_dir(source, "--format adience")
        root = source
        files = sorted(p for p in source.iterdir() if _ADIENCE_FOLD.match(p.name))
        if not files:
            raise DatasetError(f"{source}: no fold_N_data.txt files in this folder")
    if split is not None:
        wanted = {s.strip() for s in split.split(",")}
        files = [f for f in files if (_ADIENCE_FOLD.match(f.name) or [None, f.stem])[1] in wanted]
        if not files:
            raise DatasetError(f"--split {split!r}: no such Adience fold in {source}")
    aligned = (root / "aligned").is_dir()
    data = Dataset("adience", str(source), [])
    for fold_path in files:
        fold_match = _ADIENCE_FOLD.match(fold_path.name)
        fold = fold_match[1] if fold_match else fold_path.stem
        reader = csv.DictReader(io.StringIO(_text_of(fold_path), newline=""), delimiter="\t")
        need = {"user_id", "original_image", "face_id", "age", "gender"}
        if not need <= _header(fold_path, reader):
            raise DatasetError(
                f"{fold_path}: not an Adience fold file (needs {', '.join(sorted(need))})"
            )
        for row in _csv_rows(fold_path, reader):
            cells = _cells(row)
            group, exact, relabelled = adience_group(cells["age"])
            gender = _gender(cells["gender"])
            if group is None and gender is None:
                data.dropped["no age and no gender label"] += 1
                continue
            user, image, face_id = cells["user_id"], cells["original_image"], cells["face_id"]
            if not user or not image or any(map(_bad_path, (user, image, face_id))):
                data.dropped["no usable user_id or original_image"] += 1
                continue
            if relabelled:
                data.adjusted["age label mapped to the nearest group"] += 1
            if aligned:
                path = root / "aligned" / user / f"landmark_aligned_face.{face_id}.{image}"
            else:
                path = root / "faces" / user / f"coarse_tilt_aligned_face.{face_id}.{image}"
            data.records.append(
                Record(str(path), age=exact, gender=gender, group=group, subject=user, fold=fold)
            )
    return data


# -- FG-NET ------------------------------------------------------------------------------
_FGNET_NAME = re.compile(r"^(\d{3})A(\d{2})[a-z]?\.(jpg|jpeg|png|bmp)$", re.IGNORECASE)


def read_fgnet(root: str | Path, *, split: str | None = None) -> Dataset:
    """FG-NET: ``001A02.JPG`` is subject 001 at age 2. Each subject is one fold
    (leave-one-person-out); `split` keeps only the listed subjects (``"001,002"``)."""
    root = Path(root)
    _need_dir(root, "--format fgnet")
    wanted = {s.strip().zfill(3) for s in split.split(",")} if split else None
    data = Dataset("fgnet", str(root), [])
    for path in _images_under(root):
        match = _FGNET_NAME.match(path.name)
        if not match:
            data.dropped["name not NNNAnn.jpg"] += 1
            continue
        if wanted is not None and match[1] not in wanted:
            continue
        data.records.append(
            Record(str(path), age=float(int(match[2])), subject=match[1], fold=match[1])
        )
    if wanted is not None and not data.records:
        raise DatasetError(f"--split {split!r}: no FG-NET subject with that id in {root}")
    return data


# -- FairFace ----------------------------------------------------------------------------
_FAIRFACE_AGES = {label: (lo, hi) for label, lo, hi in FAIRFACE_GROUPS} | {"70+": (70, MAX_AGE)}


def read_fairface(source: str | Path, *, split: str | None = None) -> Dataset:
    """FairFace: ``fairface_label_{train,val}.csv`` (file, age, gender, race, service_test)
    in the release folder, ``file`` (``val/1.jpg``) relative to that folder.

    `split` picks the label file (default ``val``, the split FairFace reports on); the
    source may also be one label file. ``age`` is an apparent-age group (``0-2`` ...
    ``more than 70``): the record gets the group and its range (70+ is 70..MAX_AGE), no
    exact age, so it is scored by group accuracy and never by MAE. Gender Male/Female;
    race (7 labels) is kept, lower-cased, for the fairness figures. A malformed row (an
    unknown age group or gender, no file name) is left out with one line naming the file
    and line in ``Dataset.problems``; the other rows are kept.
    """
    source = Path(source)
    if split is not None and split not in FAIRFACE_SPLITS:
        raise DatasetError(f"--split {split!r}: FairFace splits are {', '.join(FAIRFACE_SPLITS)}")
    if source.is_file():
        labels, root = source, source.parent
        if split is not None:
            raise DatasetError(f"--split with the label file {source}: give the folder instead")
    else:
        _need_dir(source, "--format fairface")
        root = source
        labels = root / f"fairface_label_{split or 'val'}.csv"
        if not labels.is_file():
            others = sorted(p.name for p in root.glob("fairface_label_*.csv"))
            hint = f" (found: {', '.join(others)}; pick one with --split)" if others else ""
            raise DatasetError(f"{labels}: no such FairFace label file{hint}")
    match = re.match(r"^fairface_label_(\w+)\.csv$", labels.name)
    fold = match[1] if match else labels.stem
    reader = csv.DictReader(io.StringIO(_text_of(labels), newline=""))
    need = {"file", "age", "gender", "race"}
    try:
        names = [(f or "").strip() for f in reader.fieldnames or ()]
    except csv.Error as error:
        raise DatasetError(f"{labels}: malformed CSV ({error})") from None
    _refuse_repeated(labels, names)
    header = set(names)
    if not need <= header:
        raise DatasetError(
            f"{labels}: not a FairFace label file (needs columns {', '.join(sorted(need))})"
        )
    data = Dataset("fairface", str(labels), [])

    def leave_out(line_no: int, reason: str, detail: str) -> None:
        data.dropped[reason] += 1
        data.problems.append(f"{labels}:{line_no}: {detail}")

    for row in _csv_rows(labels, reader):
        line_no = reader.line_num
        cells = _cells(row)
        file_name, raw_age, raw_gender = cells["file"], cells["age"], cells["gender"]
        if not file_name or _bad_path(file_name):
            leave_out(line_no, "no usable file name", "no usable file name")
            continue
        span = _FAIRFACE_AGES.get(raw_age.lower())
        if span is None:
            leave_out(
                line_no,
                "age not a FairFace group",
                f"age {raw_age[:40]!r} is not a FairFace age group "
                f"({', '.join(label for label, _, _ in FAIRFACE_GROUPS)})",
            )
            continue
        gender = _gender(raw_gender)
        if gender is None:
            leave_out(
                line_no,
                "gender not Male/Female",
                f"gender {raw_gender[:40]!r} is not Male or Female",
            )
            continue
        race = cells["race"].lower() or None
        if race is None:
            data.adjusted["no race label: race unknown"] += 1
        label = next(g for g, lo, hi in FAIRFACE_GROUPS if (lo, hi) == span)
        data.records.append(
            Record(
                str(root / file_name),
                gender=gender,
                race=race,
                group=label,
                fold=fold,
                age_min=span[0],
                age_max=span[1],
            )
        )
    return data


# -- generic CSV -------------------------------------------------------------------------
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "image")
_STD_COLUMNS = ("age_std", "std", "stdev")


def _interval(source: Path, line_no: int, raw_min: str, raw_max: str) -> tuple[float, float] | None:
    """(age_min, age_max) of one CSV row, None when both cells are empty; a half-given,
    non-numeric, out-of-range or reversed range is an error naming the line."""
    if not raw_min and not raw_max:
        return None
    low, high = _float(raw_min), _float(raw_max)
    if low is None or high is None or not 0 <= low <= high <= MAX_AGE:
        raise DatasetError(
            f"{source}:{line_no}: age_min {raw_min[:20]!r}, age_max {raw_max[:20]!r} is not "
            f"a range of ages from 0 to {MAX_AGE} (age_min <= age_max)"
        )
    return low, high


def read_csv(
    source: str | Path, *, root: str | Path | None = None, group_column: str | None = None
) -> Dataset:
    """A CSV with a header: path (or file/image), age, and optional gender, age_std, race,
    and box columns x1, y1, x2, y2. Comma, semicolon or tab separated; relative paths are
    taken from the CSV's folder (or `root`). An empty age (or NaN) keeps the row for gender
    only; an age that is not a number from 0 to 120, or a gender not f/m, is an error
    naming the line.

    Interval labels: with ``age_min`` and ``age_max`` columns, a row whose range spans more
    than one whole year (FairFace's ``20-29``; ``70``..``120`` for 70+) is scored by group
    accuracy, never by MAE: its ``age`` cell, often just the group's midpoint, is not used
    as an exact age (it must lie in the range), and its ``group`` cell names the group. A
    row with age_min = age_max has that exact age.

    Fairness groups: the ``race`` column, or `group_column` (``--group-column ethnicity``),
    fills Record.race; the report's per-group figures and gaps are computed over it.
    """
    source = Path(source)
    if source.is_dir():
        raise DatasetError(f"{source}: a folder; --format csv reads one CSV file of labels")
    if not source.is_file():
        raise DatasetError(f"{source}: no such CSV file")
    base = Path(root) if root else source.parent
    text = _text_of(source)
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        fieldnames = reader.fieldnames or ()
    except csv.Error as error:
        raise DatasetError(f"{source}: malformed CSV ({error})") from None
    _refuse_repeated(source, [(c or "").strip() for c in fieldnames])
    columns = {(c or "").strip().lower(): (c or "").strip() for c in fieldnames}
    path_col = next((columns[c] for c in _PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise DatasetError(f"{source}: no path column (one of {', '.join(_PATH_COLUMNS)})")
    has_interval = "age_min" in columns and "age_max" in columns
    if "age" not in columns and "gender" not in columns and not has_interval:
        raise DatasetError(f"{source}: needs an 'age' or a 'gender' column")
    std_col = next((columns[c] for c in _STD_COLUMNS if c in columns), "")
    has_box = all(c in columns for c in ("x1", "y1", "x2", "y2"))
    if group_column is not None:
        if group_column.strip().lower() not in columns:
            raise DatasetError(
                f"{source}: --group-column {group_column!r}: no such column "
                f"(columns: {', '.join(columns.values())})"
            )
        race_col = columns[group_column.strip().lower()]
    else:
        race_col = columns.get("race", "")
    data = Dataset("csv", str(source), [], group_column=race_col or "race")
    for row in _csv_rows(source, reader):
        line_no = reader.line_num
        cells = _cells(row)
        path = cells.get(path_col, "")
        if not path:
            data.dropped["empty path"] += 1
            continue
        if _bad_path(path):
            data.dropped["path with a NUL character"] += 1
            continue
        raw_age = cells.get(columns.get("age", ""), "")
        age = _float(raw_age)
        if raw_age and raw_age.lower() != "nan" and (age is None or not 0 <= age <= MAX_AGE):
            raise DatasetError(
                f"{source}:{line_no}: age {raw_age[:40]!r} is not a number from 0 to {MAX_AGE}"
            )
        span = None
        if has_interval:
            span = _interval(
                source,
                line_no,
                cells.get(columns["age_min"], ""),
                cells.get(columns["age_max"], ""),
            )
        if span is not None and span[0] == span[1]:  # a one-year range is an exact age
            if age is not None and age != span[0]:
                raise DatasetError(
                    f"{source}:{line_no}: age {raw_age[:40]!r} differs from age_min = age_max "
                    f"{span[0]:g}"
                )
            age, span = span[0], None
        if span is not None:
            if age is not None and not span[0] <= age < span[1] + 1:
                raise DatasetError(
                    f"{source}:{line_no}: age {raw_age[:40]!r} lies outside its range "
                    f"{span[0]:g}..{span[1]:g}"
                )
            if age is not None:
                data.adjusted["age inside an age_min..age_max range: scored as a group"] += 1
            age = None
        raw_gender = cells.get(columns.get("gender", ""), "")
        gender = _gender(raw_gender)
        if raw_gender and gender is None:
            raise DatasetError(
                f"{source}:{line_no}: gender {raw_gender[:40]!r} is not one of f, m, female, male"
            )
        if age is None and span is None and gender is None:
            data.dropped["no age and no gender"] += 1
            continue
        box: Box | None = None
        if has_box:
            x1, y1, x2, y2 = (_float(cells.get(columns[c], "")) for c in ("x1", "y1", "x2", "y2"))
            if x1 is not None and y1 is not None and x2 is not None and y2 is not None:
                if x2 <= x1 or y2 <= y1:  # e.g. x, y, width, height given as x1..y2
                    raise DatasetError(
                        f"{source}:{line_no}: face box x1={x1:g}, y1={y1:g}, x2={x2:g}, "
                        f"y2={y2:g} is empty or reversed (x2 must exceed x1, y2 exceed y1)"
                    )
                box = (x1, y1, x2, y2)
        full = Path(path) if Path(path).is_absolute() else base / path
        std = _float(cells.get(std_col, "")) if std_col else None
        data.records.append(
            Record(
                str(full),
                age=age,
                age_std=std if std is not None and std >= 0 else None,
                gender=gender,
                race=(cells.get(race_col, "").lower() or None) if race_col else None,
                group=(cells.get(columns.get("group", ""), "") or f"{span[0]:g}-{span[1]:g}")
                if span is not None
                else None,
                box=box,
                age_min=span[0] if span is not None else None,
                age_max=span[1] if span is not None else None,
            )
        )
    return data


# -- the registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class Reader:
    """A dataset format: its read function, one line for the help, and what --split picks.

    `read` takes the source and, as keyword arguments, the options it understands:
    ``split`` (then `split` below says what it selects), ``root``, ``cropped``.
    """

    read: Callable[..., Dataset]
    description: str
    split: str | None = None

    @property
    def options(self) -> frozenset[str]:
        """The read function's keyword options (split, root, cropped, ...)."""
        parameters = list(signature(self.read).parameters.values())[1:]
        return frozenset(p.name for p in parameters)


# One line per format: the CLI's --format choices and help, and read_dataset, read this.
READERS: dict[str, Reader] = {
    "utkface": Reader(read_utkface, "folder of age_gender_race_date.jpg files"),
    "imdb-wiki": Reader(read_imdb_wiki, "imdb.mat / wiki.mat, or the folder holding it"),
    "chalearn": Reader(
        read_chalearn, "ChaLearn LAP 2015 image;mean;stdev or 2016 *_gt.csv (or folder)"
    ),
    "appa-real": Reader(read_appa_real, "APPA-REAL release folder", "train, valid or test"),
    "adience": Reader(read_adience, "folder of fold_N_data.txt (or one)", "fold numbers (0,1)"),
    "fgnet": Reader(read_fgnet, "folder of 001A02.JPG files", "subject ids (001,002)"),
    "fairface": Reader(
        read_fairface, "folder of fairface_label_{train,val}.csv (or one)", "train or val (val)"
    ),
    "csv": Reader(
        read_csv,
        "CSV with path, age, gender, ... columns (age_min, age_max: age-group labels; race or "
        "--group-column: fairness groups)",
    ),
}


def formats_taking(option: str) -> list[str]:
    """The formats whose reader takes `option` (split, root, cropped)."""
    return [name for name, entry in READERS.items() if option in entry.options]


def read_dataset(
    fmt: str,
    source: str | Path,
    *,
    split: str | None = None,
    cropped: bool = False,
    root: str | Path | None = None,
    group_column: str | None = None,
) -> Dataset:
    """Read `source` as `fmt` (a name in READERS); an option the format has no use for
    (--split, --root, --group-column) is an error, never ignored."""
    entry = READERS.get(fmt)
    if entry is None:
        raise DatasetError(f"--format {fmt!r}: known formats are {', '.join(READERS)}")
    options: dict[str, Any] = {}
    for flag, name, value in (
        ("--split", "split", split),
        ("--root", "root", root),
        ("--group-column", "group_column", group_column),
    ):
        if value is None:
            continue
        if name not in entry.options:
            raise DatasetError(f"{flag} is for {', '.join(formats_taking(name))}, not {fmt}")
        options[name] = value
    if cropped and "cropped" in entry.options:
        options["cropped"] = True
    return entry.read(source, **options)


def sample(records: list[Record], limit: int | None, seed: int = 0) -> list[Record]:
    """At most `limit` records, drawn at random with `seed`, kept in their read order."""
    if limit is None or limit >= len(records):
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]
