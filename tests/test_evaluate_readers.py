"""Each benchmark format, written here in its published layout, read back with its labels."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from agegender.evaluate import readers
from agegender.evaluate.readers import DatasetError


def _jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 90, 60)).save(path)
    return path


# -- UTKFace -------------------------------------------------------------------------------
def test_utkface_names(tmp_path: Path) -> None:
    _jpeg(tmp_path / "UTKFace" / "26_0_2_20170104023102422.jpg.chip.jpg")
    _jpeg(tmp_path / "UTKFace" / "sub" / "1_1_4_20161221193016140.jpg")
    _jpeg(tmp_path / "UTKFace" / "39_1_20170116174525125.jpg.chip.jpg")  # published without race
    _jpeg(tmp_path / "UTKFace" / "40_0_7_20170104023102422.jpg")  # race code 7
    _jpeg(tmp_path / "UTKFace" / "40_3_1_20170104023102422.jpg")  # gender code 3
    _jpeg(tmp_path / "UTKFace" / "cover.jpg")
    (tmp_path / "UTKFace" / "labels.txt").write_text("not an image")

    data = readers.read_utkface(tmp_path / "UTKFace")

    got = {Path(r.path).name: (r.age, r.gender, r.race) for r in data.records}
    assert got == {
        "26_0_2_20170104023102422.jpg.chip.jpg": (26.0, "male", "asian"),
        "1_1_4_20161221193016140.jpg": (1.0, "female", "other"),
        "39_1_20170116174525125.jpg.chip.jpg": (39.0, "female", None),
    }
    assert data.dropped == {
        "race code outside 0..4": 1,
        "gender code not 0/1": 1,
        "name not age_gender_race_date": 1,
    }
    assert data.adjusted == {"name lacks race: race unknown": 1}


def test_utkface_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        readers.read_utkface(tmp_path / "nope")


# -- IMDB-WIKI -----------------------------------------------------------------------------
def _datenum(d: date) -> float:
    """MATLAB datenum: Python's ordinal + 366 (MATLAB counts from year 0)."""
    return float(d.toordinal() + 366)


def _cells(values: list) -> np.ndarray:
    cells = np.empty((1, len(values)), dtype=object)
    for i, v in enumerate(values):
        cells[0, i] = v
    return cells


def _write_imdb(path: Path, key: str, rows: list[dict]) -> None:
    """A .mat with IMDB-WIKI's 1x1 struct of 1xN fields, as the published files have."""
    struct = {
        "dob": np.array([[r["dob"] for r in rows]], dtype=np.float64),
        "photo_taken": np.array([[r["taken"] for r in rows]], dtype=np.float64),
        "full_path": _cells([r["path"] for r in rows]),
        "gender": np.array([[r["gender"] for r in rows]], dtype=np.float64),
        "name": _cells([r["name"] for r in rows]),
        "face_location": _cells([np.array([r["loc"]], dtype=np.float64) for r in rows]),
        "face_score": np.array([[r["score"] for r in rows]], dtype=np.float64),
        "second_face_score": np.array([[r["second"] for r in rows]], dtype=np.float64),
        "celeb_names": _cells(sorted({r["name"] for r in rows})),
        "celeb_id": np.array([[i + 1 for i in range(len(rows))]], dtype=np.float64),
    }
    savemat(str(path), {key: struct})


def test_matlab_datenum_and_dex_age() -> None:
    assert readers.datenum_to_date(730486) == date(2000, 1, 1)  # datenum('2000-01-01') in MATLAB
    assert readers.dex_age(_datenum(date(1960, 3, 15)), 2000) == 40  # born before mid-year
    assert readers.dex_age(_datenum(date(1960, 9, 1)), 2000) == 39  # born after: 39 on 1 July


def test_imdb_wiki_mat(tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    base = {"gender": 1.0, "loc": [11, 21, 110, 120], "score": 3.5, "second": nan, "name": "A B"}
    rows = [
        {**base, "path": "00/a.jpg", "dob": _datenum(date(1960, 3, 15)), "taken": 2000},
        {
            **base,
            "path": "00/b.jpg",
            "dob": _datenum(date(1960, 9, 1)),
            "taken": 2000,
            "gender": 0.0,
        },
        {
            **base,
            "path": "01/c.jpg",
            "dob": _datenum(date(1970, 1, 2)),
            "taken": 2004,
            "gender": nan,
        },
        {
            **base,
            "path": "01/d.jpg",
            "dob": _datenum(date(1970, 1, 2)),
            "taken": 2004,
            "score": -inf,
        },
        {
            **base,
            "path": "02/e.jpg",
            "dob": _datenum(date(1970, 1, 2)),
            "taken": 2004,
            "second": 1.2,
        },
        {**base, "path": "02/f.jpg", "dob": _datenum(date(1850, 1, 2)), "taken": 2004},
        {**base, "path": "02/g.jpg", "dob": _datenum(date(2010, 1, 2)), "taken": 2004},
    ]
    folder = tmp_path / "wiki_crop"
    folder.mkdir()
    _write_imdb(folder / "wiki.mat", "wiki", rows)

    data = readers.read_imdb_wiki(folder)

    assert [
        (Path(r.path).relative_to(folder).as_posix(), r.age, r.gender) for r in data.records
    ] == [
        ("00/a.jpg", 40.0, "male"),
        ("00/b.jpg", 39.0, "female"),
        ("01/c.jpg", 34.0, None),
    ]
    # face_location is in the full photo: not a box in the face-only (_crop) release's images
    assert data.records[0].box is None
    full = readers.read_imdb_wiki(folder, boxes=True)
    assert full.records[0].box == (10.0, 20.0, 109.0, 119.0)  # MATLAB 1-based -> 0-based
    assert data.records[0].subject == "A B"
    assert data.dropped == {
        "no face (face_score -inf)": 1,
        "second face": 1,
        "age outside 0..100": 2,
    }
    (tmp_path / "wiki").mkdir()
    _write_imdb(tmp_path / "wiki" / "wiki.mat", "wiki", rows)  # the full-image release
    assert readers.read_imdb_wiki(tmp_path / "wiki").records[1].box == (10.0, 20.0, 109.0, 119.0)
    # The .mat file itself works too; a minimum face score is checked before the age.
    strict = readers.read_imdb_wiki(folder / "wiki.mat", min_face_score=4.0)
    assert strict.records == []
    assert strict.dropped == {"no face (face_score -inf)": 1, "second face": 1, "face_score < 4": 5}


def test_imdb_wiki_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no imdb\.mat or wiki\.mat"):
        readers.read_imdb_wiki(tmp_path)
    savemat(str(tmp_path / "imdb.mat"), {"imdb": {"dob": np.array([[1.0]])}})
    with pytest.raises(DatasetError, match="lacks the field"):
        readers.read_imdb_wiki(tmp_path / "imdb.mat")
    (tmp_path / "bad.mat").write_bytes(b"not matlab")
    with pytest.raises(DatasetError, match="not a readable MATLAB file"):
        readers.read_imdb_wiki(tmp_path / "bad.mat")


# -- ChaLearn LAP 2015 ---------------------------------------------------------------------
def test_chalearn_csv(tmp_path: Path) -> None:
    _jpeg(tmp_path / "Train" / "image_000001.jpg")
    _jpeg(tmp_path / "image_000003.jpg")
    (tmp_path / "Train.csv").write_text(
        "image;mean;stdev\nimage_000001.jpg;36.000000;3.905125\n"
        "image_000002.jpg;;1.0\nimage_000003.jpg;7.5;0\n"
    )
    data = readers.read_chalearn(tmp_path / "Train.csv")
    assert [
        (Path(r.path).relative_to(tmp_path).as_posix(), r.age, r.age_std) for r in data.records
    ] == [
        ("Train/image_000001.jpg", 36.0, 3.905125),
        ("image_000003.jpg", 7.5, 0.0),
    ]
    assert data.records[0].fold == "Train"
    assert data.dropped == {"no mean age": 1}
    (tmp_path / "Bad.csv").write_text("image_1.jpg,36\n")
    with pytest.raises(DatasetError, match="expected image;mean;stdev"):
        readers.read_chalearn(tmp_path / "Bad.csv")


# -- APPA-REAL -----------------------------------------------------------------------------
def _appa(root: Path) -> None:
    (root / "gt_avg_test.csv").write_text(
        "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age\n"
        "005613.jpg,38,23.394736842105,3.2893812284826,24\n"
        "005614.jpg,39,61.974358974359,6.2564102564103,60\n"
    )
    (root / "allcategories_test.csv").write_text(
        "file,gender,race,makeup,time,happiness\n"
        "005613.jpg,female,caucasian,makeup,modernphoto,happy\n"
        "005614.jpg,male,afroamerican,no_makeup,modernphoto,slightlyhappy\n"
    )
    (root / "gt_avg_valid.csv").write_text(
        "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age\n"
        "004113.jpg,36,30.0,5.0,31\n"
    )


def test_appa_real(tmp_path: Path) -> None:
    _appa(tmp_path)
    data = readers.read_appa_real(tmp_path, split="test")
    first, second = data.records
    assert Path(first.path) == tmp_path / "test" / "005613.jpg"
    assert (first.age, first.age_std, first.real_age) == (23.394736842105, 3.2893812284826, 24.0)
    assert (first.gender, first.race, first.fold) == ("female", "caucasian", "test")
    assert (second.gender, second.race, second.real_age) == ("male", "afroamerican", 60.0)

    faces = readers.read_appa_real(tmp_path, split="test", cropped=True)
    assert Path(faces.records[0].path) == tmp_path / "test" / "005613.jpg_face.jpg"

    both = readers.read_appa_real(tmp_path)  # every split whose csv is there
    assert [r.fold for r in both.records] == ["valid", "test", "test"]
    assert both.records[0].gender is None  # no allcategories_valid.csv

    with pytest.raises(DatasetError, match="splits are train, valid, test"):
        readers.read_appa_real(tmp_path, split="dev")
    with pytest.raises(DatasetError, match=r"gt_avg_train\.csv: no such file"):
        readers.read_appa_real(tmp_path, split="train")


# -- Adience -------------------------------------------------------------------------------
ADIENCE_HEADER = (
    "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
    "fiducial_yaw_angle\tfiducial_score\n"
)


def _tabs(row: str) -> str:
    """A fold-file line from a space-separated row ("_" stands for a space in a cell)."""
    return (
        "\t".join(cell.replace("_", " ") if cell.startswith("(") else cell for cell in row.split())
        + "\n"
    )


def test_adience_folds(tmp_path: Path) -> None:
    (tmp_path / "aligned").mkdir()
    rows = [
        "30601258@N03 10399646885_67c7d20df9_o.jpg 1 (25,_32) f 0 414 1086 1383 -115 30 17",
        "30601258@N03 10424815813_e94629b1ec_o.jpg 2 (38,_42) m 301 105 640 641 0 0 94",
        "30601258@N03 10437979845_5985be4b26_o.jpg 1 35 u 2395 876 771 771 175 -30 74",
        "30601258@N03 11816644924_075c3d8d59_o.jpg 4 None u 0 0 10 10 0 0 0",
    ]
    (tmp_path / "fold_0_data.txt").write_text(ADIENCE_HEADER + "".join(_tabs(r) for r in rows))
    (tmp_path / "fold_1_data.txt").write_text(
        ADIENCE_HEADER
        + "113445054@N07\t11763777465_11d01c34ce_o.jpg\t1671\t(0, 2)\t\t1\t2\t3\t4\t0\t0\t0\n"
    )
    (tmp_path / "fold_frontal_0_data.txt").write_text(ADIENCE_HEADER)  # not a fold of the 5

    data = readers.read_adience(tmp_path)

    assert [(r.group, r.age, r.gender, r.fold) for r in data.records] == [
        ("25-32", None, "female", "0"),
        ("38-43", None, "male", "0"),
        ("25-32", 35.0, None, "0"),
        ("0-2", None, None, "1"),
    ]
    assert Path(data.records[0].path) == (
        tmp_path
        / "aligned"
        / "30601258@N03"
        / "landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg"
    )
    assert data.records[0].subject == "30601258@N03" and data.records[0].box is None
    assert data.dropped == {"no age and no gender label": 1}
    assert data.adjusted == {"age label mapped to the nearest group": 2}

    only_1 = readers.read_adience(tmp_path, split="1")
    assert [r.fold for r in only_1.records] == ["1"]
    (tmp_path / "aligned").rmdir()
    faces = readers.read_adience(tmp_path / "fold_1_data.txt")
    assert Path(faces.records[0].path).parts[-3:] == (
        "faces",
        "113445054@N07",
        "coarse_tilt_aligned_face.1671.11763777465_11d01c34ce_o.jpg",
    )
    with pytest.raises(DatasetError, match="no such Adience fold"):
        readers.read_adience(tmp_path, split="7")


def test_adience_group_labels() -> None:
    assert readers.adience_group("(25, 32)") == ("25-32", None, False)
    assert readers.adience_group("(60, 100)") == ("60-100", None, False)
    assert readers.adience_group("(27, 32)") == ("25-32", None, True)  # midpoint 29.5
    assert readers.adience_group("(8, 23)") == ("15-20", None, True)  # midpoint 15.5
    assert readers.adience_group("57") == ("60-100", 57.0, True)  # 3 from 60, 4 from 53
    assert readers.adience_group("None") == (None, None, False)
    assert readers.group_of(3) == "0-2"  # 1 from each neighbour: the younger group
    assert readers.group_of(13) == "8-12"
    assert readers.group_of(100) == "60-100"


# -- FG-NET --------------------------------------------------------------------------------
def test_fgnet_names(tmp_path: Path) -> None:
    for name in ("001A02.JPG", "001A43a.JPG", "002A10.jpg", "Thumbs.jpg"):
        _jpeg(tmp_path / "images" / name)
    data = readers.read_fgnet(tmp_path)
    assert [(Path(r.path).name, r.age, r.subject, r.fold) for r in data.records] == [
        ("001A02.JPG", 2.0, "001", "001"),
        ("001A43a.JPG", 43.0, "001", "001"),
        ("002A10.jpg", 10.0, "002", "002"),
    ]
    assert data.dropped == {"name not NNNAnn.jpg": 1}
    assert [r.subject for r in readers.read_fgnet(tmp_path, split="2").records] == ["002"]
    with pytest.raises(DatasetError, match="no FG-NET subject"):
        readers.read_fgnet(tmp_path, split="083")


# -- generic CSV ---------------------------------------------------------------------------
def test_generic_csv(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text(
        "path;age;gender;age_std;x1;y1;x2;y2\n"
        "faces/a.jpg;31;F;2.5;10;20;30;40\n"
        "/abs/b.jpg;;male;;;;;\n"
        "c.jpg;;;;;;;\n"
        ";40;m;;;;;\n"
    )
    data = readers.read_csv(tmp_path / "labels.csv")
    a, b = data.records
    assert (Path(a.path), a.age, a.gender, a.age_std, a.box) == (
        tmp_path / "faces" / "a.jpg",
        31.0,
        "female",
        2.5,
        (10.0, 20.0, 30.0, 40.0),
    )
    assert (b.path, b.age, b.gender, b.box) == ("/abs/b.jpg", None, "male", None)
    assert data.dropped == {"no age and no gender": 1, "empty path": 1}

    (tmp_path / "plain.csv").write_text("file,age\nx.jpg,20\n")
    rooted = readers.read_csv(tmp_path / "plain.csv", root=tmp_path / "images")
    assert Path(rooted.records[0].path) == tmp_path / "images" / "x.jpg"

    (tmp_path / "bad.csv").write_text("path,age,gender\nx.jpg,20,1\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: gender '1' is not one of"):
        readers.read_csv(tmp_path / "bad.csv")
    (tmp_path / "nopath.csv").write_text("age,gender\n20,m\n")
    with pytest.raises(DatasetError, match="no path column"):
        readers.read_csv(tmp_path / "nopath.csv")


def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    # the csv module kept the last column's cells: `path,age,age` scored the second ages
    for header in ("path,age,age,gender", "path,age,gender,Gender"):
        (tmp_path / "twice.csv").write_text(f"{header}\na.jpg,10,99,m\n")
        with pytest.raises(DatasetError, match=r"twice\.csv: the header names the column '"):
            readers.read_csv(tmp_path / "twice.csv")
    # empty names (trailing separators) are not columns
    (tmp_path / "trailing.csv").write_text("path,age,,\na.jpg,10,,\n")
    assert readers.read_csv(tmp_path / "trailing.csv").records[0].age == 10.0
    fair = tmp_path / "fairface_label_val.csv"
    fair.write_text("file,age,gender,race,age\nval/1.jpg,20-29,Male,White,3-9\n")
    with pytest.raises(DatasetError, match=r"names the column 'age' twice"):
        readers.read_fairface(fair)


def test_read_dataset_dispatch_and_sample(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="known formats"):
        readers.read_dataset("morph", tmp_path)
    with pytest.raises(DatasetError, match="--split is for"):
        readers.read_dataset("utkface", tmp_path, split="test")
    records = [readers.Record(f"{i}.jpg", age=float(i)) for i in range(10)]
    picked = readers.sample(records, 4, seed=1)
    assert len(picked) == 4 and picked == sorted(picked, key=lambda r: r.age or 0)
    assert picked == readers.sample(records, 4, seed=1)
    assert picked != readers.sample(records, 4, seed=2)
    assert readers.sample(records, 50) == records


def test_registry_is_the_one_list_of_formats(tmp_path: Path) -> None:
    # --split help names exactly the readers that take a split; --root only csv, chalearn.
    for name, entry in readers.READERS.items():
        assert (entry.split is not None) == ("split" in entry.options), name
        assert entry.description, name
    assert readers.formats_taking("root") == ["chalearn", "csv"]
    assert readers.formats_taking("cropped") == ["appa-real"]
    # An option the format does not use is an error, not ignored (it was ignored before).
    with pytest.raises(DatasetError, match="--root is for chalearn, csv, not utkface"):
        readers.read_dataset("utkface", tmp_path, root=tmp_path)
