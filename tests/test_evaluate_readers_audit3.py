"""evaluate's dataset readers: defects found by an audit of each benchmark's published
layout, each reproduced first with a small dataset written here in that layout.

UTKFace's race-less names counted as kept when they were dropped; APPA-REAL's and
Adience's label files whose header the csv module refuses (a traceback, not one line);
ChaLearn LAP 2016's comma-separated ``train_gt.csv`` (image,mean,stdv) refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from faceutils import run_cli
from PIL import Image

from agegender.evaluate import readers
from agegender.evaluate.readers import DatasetError

ADIENCE_HEADER = (
    "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
    "fiducial_yaw_angle\tfiducial_score\n"
)


def _jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 90, 60)).save(path)
    return path


def test_utkface_a_dropped_name_without_race_is_not_also_counted_as_kept(
    tmp_path: Path,
) -> None:
    # Published without the race field (kept, race unknown) ...
    _jpeg(tmp_path / "61_1_20170109142408075.jpg.chip.jpg")
    # ... and two race-less names the reader drops: gender code 3, age over 120.
    _jpeg(tmp_path / "61_3_20170109150557335.jpg.chip.jpg")
    _jpeg(tmp_path / "130_0_20170109150557335.jpg.chip.jpg")

    data = readers.read_utkface(tmp_path)

    assert [(r.age, r.gender, r.race) for r in data.records] == [(61.0, "female", None)]
    assert data.dropped == {"gender code not 0/1": 1, "age outside 0..120": 1}
    # "adjusted" counts entries kept with a change: the one kept, not the two dropped
    assert data.adjusted == {"name lacks race: race unknown": 1}
    assert sum(data.adjusted.values()) <= len(data.records)


def _huge_header(path: Path, header: str) -> Path:
    """A label file whose header opens a quote that is never closed: the csv module reads
    the rest of the file as one header field, past its 128 KiB field limit."""
    rows = "".join(f"row{i}\t(25, 32)\tf,1,2,3\n" for i in range(8000))
    path.write_text('"' + header + rows)
    return path


def test_appa_real_malformed_header_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = _huge_header(
        tmp_path / "gt_avg_test.csv",
        "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age\n",
    )
    with pytest.raises(DatasetError, match=r"gt_avg_test\.csv: malformed CSV header"):
        readers.read_appa_real(tmp_path, split="test")

    code, out, err = run_cli(
        capsys, "evaluate", str(tmp_path), "--format", "appa-real", "--cropped"
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(gt) in err and "malformed CSV header" in err


def test_adience_malformed_header_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fold = _huge_header(tmp_path / "fold_0_data.txt", ADIENCE_HEADER)
    with pytest.raises(DatasetError, match=r"fold_0_data\.txt: malformed CSV header"):
        readers.read_adience(tmp_path)

    code, out, err = run_cli(capsys, "evaluate", str(tmp_path), "--format", "adience", "--cropped")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(fold) in err and "malformed CSV header" in err


def test_chalearn_lap_2016_comma_separated_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # LAP 2016 (CVPR '16): train_gt.csv / valid_gt.csv, header image,mean,stdv, commas.
    _jpeg(tmp_path / "valid" / "000001.jpg")
    _jpeg(tmp_path / "000002.jpg")
    (tmp_path / "valid_gt.csv").write_text(
        "image,mean,stdv\n000001.jpg,36.0,3.905125\n000002.jpg,7.5,1.2\n000003.jpg,,1.0\n"
    )
    data = readers.read_chalearn(tmp_path / "valid_gt.csv")
    assert [
        (Path(r.path).relative_to(tmp_path).as_posix(), r.age, r.age_std, r.fold)
        for r in data.records
    ] == [
        ("valid/000001.jpg", 36.0, 3.905125, "valid"),
        ("000002.jpg", 7.5, 1.2, "valid"),
    ]
    assert data.dropped == {"no mean age": 1}
    # LAP 2015's semicolons are still read as before
    (tmp_path / "Train.csv").write_text("image_000001.jpg;36.000000;3.905125\n")
    assert [r.age for r in readers.read_chalearn(tmp_path / "Train.csv").records] == [36.0]

    labels = str(tmp_path / "valid_gt.csv")
    code, out, err = run_cli(
        capsys,
        *("evaluate", labels, "--format", "chalearn", "--cropped", "--json", "--no-progress"),
    )
    assert code == 0, err
    assert '"records": 2' in out


def test_csv_format_given_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="a folder; --format csv reads one CSV file"):
        readers.read_dataset("csv", tmp_path)


def test_appa_real_a_real_age_out_of_range_is_counted(tmp_path: Path) -> None:
    (tmp_path / "gt_avg_test.csv").write_text(
        "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age\n"
        "000001.jpg,30,25.0,3.0,250\n"
        "000002.jpg,30,40.0,4.0,41\n"
    )
    data = readers.read_appa_real(tmp_path, split="test")
    assert [r.real_age for r in data.records] == [None, 41.0]  # kept, real age left out
    assert data.adjusted == {"real age outside 0..120: left out": 1}
