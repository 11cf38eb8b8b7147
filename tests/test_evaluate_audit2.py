"""evaluate and calibrate: defects found by a second audit, each reproduced first.

The children's table of report.md, output folders read back as data, --report marking a
folder of the user's, APPA-REAL ages out of range, reversed CSV boxes, command-line values
refused before the dataset is read, calibrate's per-task minimum, age-range labels and
its held-out table with nothing to compare, --cropped with detection options."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from faceutils import run_cli
from PIL import Image, ImageEnhance

from agegender.evaluate import readers

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
UTK = "{age}_1_0_2017010{i}.jpg.chip.jpg"


def _faces(folder: Path, n: int) -> list[Path]:
    """n varied crops of the portrait's face (brightness, flips), as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    portrait = Image.open(ASTRONAUT).convert("RGB").crop((150, 50, 300, 200))
    paths = []
    for i in range(n):
        face = ImageEnhance.Brightness(portrait).enhance(0.6 + 0.05 * i)
        if i % 2:
            face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"f{i}.png"
        face.save(path)
        paths.append(path)
    return paths


def test_report_md_has_the_childrens_row(tmp_path: Path, capsys) -> None:
    faces = _faces(tmp_path / "img", 3)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,age,gender\n"
        + "".join(f"{p},{a},f\n" for p, a in zip(faces, (8, 11, 40), strict=True))
    )
    code, _, err = run_cli(
        capsys,
        *("evaluate", str(labels), "--format", "csv", "--cropped", "--no-progress"),
        *("--threads", "1", "--report", str(tmp_path / "rep")),
    )
    assert code == 0, err
    page = (tmp_path / "rep" / "report.md").read_text()
    # readable by all, as every other output (mkstemp had left them 0600)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "rep").iterdir() if p.is_file()} == {
        0o644
    }
    table = page.split("Children under 13", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| under 13 ")]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "2", table  # n = 2 children


def test_folders_agegender_wrote_are_not_read_as_data(tmp_path: Path) -> None:
    root = tmp_path / "utk"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(root / UTK.format(age=30 + i, i=i))
    annotated = root / "annotated"  # as predict --annotate leaves it: marked as output
    annotated.mkdir()
    (annotated / ".agegender-output").touch()
    Image.new("RGB", (8, 8)).save(annotated / UTK.format(age=30, i=0))
    data = readers.read_dataset("utkface", str(root))
    assert sorted(Path(r.path).parent for r in data.records) == [root] * 3


def test_report_refuses_an_existing_folder_of_the_users_among_the_images(
    tmp_path: Path, capsys
) -> None:
    faces = _faces(tmp_path / "img", 2)
    mine = tmp_path / "img" / "holiday"  # the user's own folder of photos
    mine.mkdir()
    Image.new("RGB", (8, 8)).save(mine / "beach.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,age,gender\n" + "".join(f"{p},30,f\n" for p in faces))
    code, _, err = run_cli(
        capsys,
        *("evaluate", str(labels), "--format", "csv", "--cropped", "--no-progress"),
        *("--threads", "1", "--report", str(mine)),
    )
    assert code == 2 and "did not make" in err and "Traceback" not in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["beach.jpg"]  # not marked


def test_appa_real_ages_outside_0_to_120_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    rows = ["file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age"]
    for i, (apparent, real) in enumerate([(-7, 30), (500, 30), (30.5, 31), (40, 999)]):
        name = f"{i:06d}.jpg"
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / name)
        rows.append(f"{name},30,{apparent},3.2,{real}")
    (tmp_path / "gt_avg_test.csv").write_text("\n".join(rows) + "\n")
    data = readers.read_dataset("appa-real", str(tmp_path))
    assert [(r.age, r.real_age) for r in data.records] == [(30.5, 31.0), (40.0, None)]
    assert data.dropped == {"apparent age outside 0..120": 2}


def test_a_reversed_csv_box_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (face,) = _faces(tmp_path / "img", 1)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,age,gender,x1,y1,x2,y2\n{face},30,f,180,190,20,10\n")
    code, _, err = run_cli(capsys, "evaluate", str(labels), "--format", "csv", "--no-progress")
    assert code == 2 and "labels.csv:2: face box" in err and "reversed" in err, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--age-threshold", "200"], "--age-threshold must be a number from 0 to 150"),
        (["--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["--calibration", "/nonexistent/c.toml"], "cannot read it"),
        (["--compare", "default", "default:"], "the same setting is named twice"),
        (["--report", ""], "--report ''"),
        (["--limit", "3", "--seed", "-1"], "--seed -1: must be >= 0"),
    ],
)
def test_command_line_values_are_refused_before_the_dataset_is_read(
    extra: list[str], message: str, tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "no-such-dataset"  # read first, it would be the error instead
    code, _, err = run_cli(capsys, "evaluate", str(missing), "--format", "utkface", *extra)
    assert code == 2 and message in err and "no such" not in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _faces(tmp_path_factory.mktemp("calibrate"), 16)


CALIBRATE = ("calibrate", "--format", "csv", "--cropped", "--threads", "1")


def _calibrate(capsys, labels: Path, *extra: str) -> tuple[int, str, str]:
    command, *options = CALIBRATE
    return run_cli(capsys, command, str(labels), *options, *extra)


def test_calibrate_fits_each_task_only_on_enough_of_its_own_labels(
    faces_dir: list[Path], tmp_path: Path, capsys
) -> None:
    """16 faces with a gender, 5 of them with an exact age and the rest with no age:
    gender is fitted, age is not (it had been fitted on 4 faces, called "12 fitted")."""
    labels = tmp_path / "labels.csv"
    rows = [f"{p},{20 + i if i < 5 else ''},{'fm'[i % 2]}" for i, p in enumerate(faces_dir)]
    labels.write_text("path,age,gender\n" + "\n".join(rows) + "\n")
    out = tmp_path / "c.toml"
    code, _, err = _calibrate(capsys, labels, "--holdout", "0.2", "--out", str(out))
    assert code == 0, err
    assert "labelled faces to fit for age" in err and "no age calibration is written" in err
    fitted = tomllib.loads(out.read_text())
    assert "gender" in fitted and "age" not in fitted


def test_calibrate_takes_age_ranges_as_interval_labels(
    faces_dir: list[Path], tmp_path: Path, capsys
) -> None:
    labels = tmp_path / "labels.csv"
    rows = [f"{p},{20 + 10 * (i % 4)},{29 + 10 * (i % 4)},f" for i, p in enumerate(faces_dir)]
    labels.write_text("path,age_min,age_max,gender\n" + "\n".join(rows) + "\n")
    code, out, err = _calibrate(capsys, labels, "--holdout", "0.2", "--json")
    assert code == 0, err
    fitted = tomllib.loads(json.loads(out)["calibration"])
    assert fitted["age"]["temperature"] > 0  # fitted on the 13 ranges (FairFace-style groups)


def test_calibrate_with_nothing_to_compare_on_the_held_out_faces(
    faces_dir: list[Path], tmp_path: Path, capsys
) -> None:
    """The held-out face has only an age range (no exact age, no gender), which none of
    the before/after figures can score: the table says so (it crashed)."""
    labels = tmp_path / "labels.csv"
    rows = [f"{p},{25 + i},f,," for i, p in enumerate(faces_dir[:15])]
    rows.append(f"{faces_dir[15]},,,20,29")
    labels.write_text("path,age,gender,age_min,age_max\n" + "\n".join(rows) + "\n")
    seed = next(s for s in range(100) if _held_out(s, 16) == 15)  # it is the one held out
    code, out, err = _calibrate(capsys, labels, "--holdout", "0.05", "--seed", str(seed))
    assert code == 0 and "Traceback" not in err, err
    assert "nothing to compare" in out


def _held_out(seed: int, n: int) -> int:
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[0]


@pytest.mark.parametrize(
    "extra", [["--detector", "haar"], ["--min-score", "0.9"], ["--align", "landmarks"]]
)
def test_calibrate_cropped_refuses_detection_options(
    extra: list[str], faces_dir: list[Path], tmp_path: Path, capsys
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,age,gender\n" + "".join(f"{p},30,f\n" for p in faces_dir))
    code, _, err = _calibrate(capsys, labels, *extra)
    assert code == 2 and "--cropped with" in err, err


def test_no_face_found_anywhere_is_said(tmp_path: Path, capsys) -> None:
    """--min-face larger than every face leaves an all-zero table: a warning says why."""
    faces = _faces(tmp_path / "img", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,age,gender\n" + "".join(f"{p},30,f\n" for p in faces))
    base = ("evaluate", str(labels), "--format", "csv", "--no-progress", "--threads", "1")
    code, out, err = run_cli(capsys, *base, "--min-face", "4000")
    assert code == 0, err
    assert (
        "agegender: warning: setting default: no face found in any of the 2 readable images "
        "(faces under --min-face 4000 px are not counted)"
    ) in err
    assert "0.0%" in out
    code, _, err = run_cli(capsys, *base)  # the faces are found: no such warning
    assert code == 0, err
    assert "no face found" not in err
