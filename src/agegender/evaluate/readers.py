"""Readers: the public age/gender benchmarks as they are published, into one record type.

Each reader takes the dataset as its publisher ships it (file names, ``.mat`` structs, fold
files, CSVs) and returns ``Record`` objects plus a count of every entry it dropped and why,
so a number measured here can be compared with a paper's.
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ..errors import AgegenderError
from ..images import IMAGE_SUFFIXES

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
FORMATS = ("utkface", "imdb-wiki", "chalearn", "appa-real", "adience", "fgnet", "csv")


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


@dataclass
class Dataset:
    """Records read from one dataset, and what was dropped while reading it."""

    format: str
    source: str
    records: list[Record]
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> entries left out
    adjusted: Counter[str] = field(default_factory=Counter)  # reason -> entries kept, changed

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "records": len(self.records),
            "dropped": dict(self.dropped),
            "adjusted": dict(self.adjusted),
        }


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _need_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} expects a folder")


def _float(value: Any) -> float | None:
    """A number from a label cell; None for empty, NaN or non-numeric."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return None if math.isnan(number) else number


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
        if match:
            age, sex, race_code = int(match[1]), int(match[2]), int(match[3])
            if race_code >= len(UTKFACE_RACES):
                data.dropped["race code outside 0..4"] += 1
                continue
            race = UTKFACE_RACES[race_code]
        elif match := _UTK_NO_RACE.match(name):
            age, sex = int(match[1]), int(match[2])
            data.adjusted["name lacks race: race unknown"] += 1
        else:
            data.dropped["name not age_gender_race_date"] += 1
            continue
        if sex not in (0, 1):
            data.dropped["gender code not 0/1"] += 1
            continue
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
        return str(array.reshape(-1)[0])
    return str(array)


def read_imdb_wiki(
    source: str | Path, *, min_face_score: float | None = None, boxes: bool | None = None
) -> Dataset:
    """IMDB-WIKI: ``imdb.mat`` or ``wiki.mat`` (a file, or the folder holding one).

    Cleaning as usually done: drop entries with no face (face_score -inf), with a second
    face (second_face_score not NaN), optionally a face_score under `min_face_score`, and
    ages outside 0..100. Gender 0 female / 1 male; NaN gender keeps the entry, gender unknown.

    ``face_location`` (MATLAB, 1-based) is in the full photo, so it becomes the record's
    0-based box only for the full-image release; the face-only releases (``imdb_crop``,
    ``wiki_crop``) ship the same .mat with crops in another frame. `boxes` overrides the guess.
    """
    from scipy.io import loadmat

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
    try:
        mat = loadmat(str(mat_path))
    except Exception as error:  # scipy raises several types for a bad file
        raise DatasetError(f"{mat_path}: not a readable MATLAB file ({error})") from None
    keys = [k for k in ("imdb", "wiki") if k in mat]
    if not keys:
        raise DatasetError(f"{mat_path}: no 'imdb' or 'wiki' struct in the file")
    meta = mat[keys[0]][0, 0]
    try:
        paths = _mat_column(meta, "full_path")
        dobs = _mat_column(meta, "dob")
        taken = _mat_column(meta, "photo_taken")
        genders = _mat_column(meta, "gender")
        scores = _mat_column(meta, "face_score")
        second = _mat_column(meta, "second_face_score")
        locations = _mat_column(meta, "face_location")
    except KeyError as missing:
        raise DatasetError(f"{mat_path}: struct lacks the field {missing}") from None
    names = _mat_column(meta, "name") if "name" in meta.dtype.names else [None] * len(paths)
    root = mat_path.parent
    if boxes is None:
        boxes = not root.resolve().name.endswith("_crop")
    data = Dataset("imdb-wiki", str(mat_path), [])
    for i, cell in enumerate(paths):
        score, second_score = float(scores[i]), float(second[i])
        if math.isinf(score):
            data.dropped["no face (face_score -inf)"] += 1
            continue
        if not math.isnan(second_score):
            data.dropped["second face"] += 1
            continue
        if min_face_score is not None and score < min_face_score:
            data.dropped[f"face_score < {min_face_score:g}"] += 1
            continue
        dob = float(dobs[i])
        if math.isnan(dob):
            data.dropped["no date of birth"] += 1
            continue
        age = dex_age(dob, float(taken[i]))
        if not 0 <= age <= 100:
            data.dropped["age outside 0..100"] += 1
            continue
        sex = float(genders[i])
        gender = None if math.isnan(sex) else ("female", "male")[int(sex)]
        loc = [float(v) for v in locations[i].reshape(-1)]
        box = (loc[0] - 1, loc[1] - 1, loc[2] - 1, loc[3] - 1) if boxes and len(loc) == 4 else None
        name = _text(names[i]) if names[i] is not None else None
        data.records.append(
            Record(
                str(root / _text(cell)),
                age=float(age),
                gender=gender,
                box=box,
                subject=name or None,
            )
        )
    return data


# -- ChaLearn LAP 2015 -------------------------------------------------------------------
def _resolve(root: Path, name: str, extra_dirs: Sequence[str] = ()) -> str:
    """`name` under `root`, or under one of `extra_dirs` of root if it is there instead."""
    direct = root / name
    if direct.exists():
        return str(direct)
    for extra in extra_dirs:
        candidate = root / extra / name
        if candidate.exists():
            return str(candidate)
    return str(direct)


def _label_file(source: Path, pattern: str, what: str) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        found = sorted(source.glob(pattern))
        if not found:
            raise DatasetError(f"{source}: no {pattern} file in this folder ({what})")
        return found
    raise DatasetError(f"{source}: no such file or folder")


def read_chalearn(source: str | Path, *, root: str | Path | None = None) -> Dataset:
    """ChaLearn LAP 2015 apparent age: ``image;mean;stdev`` per line (header optional).

    Images are looked up next to the CSV, or in a folder named like it (``Train.csv`` ->
    ``Train/``), or under `root`.
    """
    files = _label_file(Path(source), "*.csv", "--format chalearn")
    data = Dataset("chalearn", str(source), [])
    for csv_path in files:
        base = Path(root) if root else csv_path.parent
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle, delimiter=";"), start=1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 3:
                    raise DatasetError(
                        f"{csv_path}:{line_no}: expected image;mean;stdev, got {row!r}"
                    )
                mean, std = _float(row[1]), _float(row[2])
                if mean is None:
                    if line_no == 1:
                        continue  # header
                    data.dropped["no mean age"] += 1
                    continue
                path = _resolve(base, row[0].strip(), (csv_path.stem,))
                data.records.append(Record(path, age=mean, age_std=std, fold=csv_path.stem))
    return data


# -- APPA-REAL ---------------------------------------------------------------------------
APPA_SPLITS = ("train", "valid", "test")


def read_appa_real(root: str | Path, *, split: str | None = None, faces: bool = False) -> Dataset:
    """APPA-REAL: ``gt_avg_{train,valid,test}.csv`` and the images in ``{split}/``.

    ``faces`` picks the published ``<name>_face.jpg`` crops instead of the full images. The
    age is the mean apparent age (its vote std kept for the epsilon-error); real age is kept
    too. Gender and race come from ``allcategories_{split}.csv`` when it is there.
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
            with cat_path.open(newline="", encoding="utf-8-sig") as handle:
                categories = {row["file"]: row for row in csv.DictReader(handle)}
        with gt.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            need = {"file_name", "apparent_age_avg", "apparent_age_std", "real_age"}
            if not need <= set(reader.fieldnames or ()):
                raise DatasetError(f"{gt}: needs columns {', '.join(sorted(need))}")
            for row in reader:
                file_name = row["file_name"].strip()
                apparent = _float(row["apparent_age_avg"])
                if apparent is None:
                    data.dropped["no apparent age"] += 1
                    continue
                image = root / name / (file_name + "_face.jpg" if faces else file_name)
                extra = categories.get(file_name, {})
                data.records.append(
                    Record(
                        str(image),
                        age=apparent,
                        age_std=_float(row["apparent_age_std"]),
                        gender=_gender(extra.get("gender")),
                        race=(extra.get("race") or "").strip().lower() or None,
                        fold=name,
                        real_age=_float(row["real_age"]),
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
    relabelled; ``None`` or empty gives no group.
    """
    text = label.strip()
    if match := _RANGE.match(text):
        lo, hi = int(match[1]), int(match[2])
        for name, g_lo, g_hi in ADIENCE_GROUPS:
            if (lo, hi) == (g_lo, g_hi):
                return name, None, False
        return group_of((lo + hi) / 2), None, True
    number = _float(text)
    if number is None:
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
        with fold_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            need = {"user_id", "original_image", "face_id", "age", "gender"}
            if not need <= {(f or "").strip() for f in reader.fieldnames or ()}:
                raise DatasetError(
                    f"{fold_path}: not an Adience fold file (needs {', '.join(sorted(need))})"
                )
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                group, exact, relabelled = adience_group(row["age"])
                gender = _gender(row["gender"])
                if group is None and gender is None:
                    data.dropped["no age and no gender label"] += 1
                    continue
                if relabelled:
                    data.adjusted["age label mapped to the nearest group"] += 1
                user, image, face_id = row["user_id"], row["original_image"], row["face_id"]
                if aligned:
                    path = root / "aligned" / user / f"landmark_aligned_face.{face_id}.{image}"
                else:
                    path = root / "faces" / user / f"coarse_tilt_aligned_face.{face_id}.{image}"
                data.records.append(
                    Record(
                        str(path), age=exact, gender=gender, group=group, subject=user, fold=fold
                    )
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


# -- generic CSV -------------------------------------------------------------------------
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "image")
_STD_COLUMNS = ("age_std", "std", "stdev")


def read_csv(source: str | Path, *, root: str | Path | None = None) -> Dataset:
    """A CSV with a header: path (or file/image), age, and optional gender, age_std, race,
    and box columns x1, y1, x2, y2. Comma, semicolon or tab separated; relative paths are
    taken from the CSV's folder (or `root`). An empty age keeps the row for gender only."""
    source = Path(source)
    if not source.is_file():
        raise DatasetError(f"{source}: no such CSV file")
    base = Path(root) if root else source.parent
    text = source.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or ()}
    path_col = next((columns[c] for c in _PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise DatasetError(f"{source}: no path column (one of {', '.join(_PATH_COLUMNS)})")
    if "age" not in columns and "gender" not in columns:
        raise DatasetError(f"{source}: needs an 'age' or a 'gender' column")
    std_col = next((columns[c] for c in _STD_COLUMNS if c in columns), None)
    has_box = all(c in columns for c in ("x1", "y1", "x2", "y2"))
    data = Dataset("csv", str(source), [])
    for line_no, row in enumerate(reader, start=2):
        path = (row.get(path_col) or "").strip()
        if not path:
            data.dropped["empty path"] += 1
            continue
        age = _float(row.get(columns.get("age", ""), ""))
        raw_gender = (row.get(columns.get("gender", ""), "") or "").strip()
        gender = _gender(raw_gender)
        if raw_gender and gender is None:
            raise DatasetError(
                f"{source}:{line_no}: gender {raw_gender!r} is not one of f, m, female, male"
            )
        if age is None and gender is None:
            data.dropped["no age and no gender"] += 1
            continue
        box: Box | None = None
        if has_box:
            x1, y1, x2, y2 = (_float(row[columns[c]]) for c in ("x1", "y1", "x2", "y2"))
            if x1 is not None and y1 is not None and x2 is not None and y2 is not None:
                box = (x1, y1, x2, y2)
        full = Path(path) if Path(path).is_absolute() else base / path
        data.records.append(
            Record(
                str(full),
                age=age,
                age_std=_float(row[std_col]) if std_col else None,
                gender=gender,
                race=(row.get(columns.get("race", ""), "") or "").strip().lower() or None,
                box=box,
            )
        )
    return data


# -- dispatch ----------------------------------------------------------------------------
def read_dataset(
    fmt: str,
    source: str | Path,
    *,
    split: str | None = None,
    cropped: bool = False,
    root: str | Path | None = None,
) -> Dataset:
    """Read `source` as `fmt` (one of FORMATS)."""
    readers: dict[str, Callable[[], Dataset]] = {
        "utkface": lambda: read_utkface(source),
        "imdb-wiki": lambda: read_imdb_wiki(source),
        "chalearn": lambda: read_chalearn(source, root=root),
        "appa-real": lambda: read_appa_real(source, split=split, faces=cropped),
        "adience": lambda: read_adience(source, split=split),
        "fgnet": lambda: read_fgnet(source, split=split),
        "csv": lambda: read_csv(source, root=root),
    }
    if fmt not in readers:
        raise DatasetError(f"--format {fmt!r}: known formats are {', '.join(FORMATS)}")
    if split is not None and fmt not in ("appa-real", "adience", "fgnet"):
        raise DatasetError(f"--split is for appa-real, adience and fgnet, not {fmt}")
    return readers[fmt]()


def sample(records: list[Record], limit: int | None, seed: int = 0) -> list[Record]:
    """At most `limit` records, drawn at random with `seed`, kept in their read order."""
    if limit is None or limit >= len(records):
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]
