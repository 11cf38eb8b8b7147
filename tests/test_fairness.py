"""Fairness figures of `agegender evaluate`, the FairFace reader and interval labels.

Per-group figures and gaps are checked on small record sets worked out by hand (no
models); the FairFace reader on a tiny tree in FairFace's own layout written here; the
command end to end with stand-in graphs peaked at one age and one gender, so every
prediction is known and every figure can be counted by hand. Nothing here reads
``../shared`` or the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.standins import peaked_graph

from agegender import cards as cardlib
from agegender.cli import main
from agegender.evaluate import metrics, readers, report
from agegender.evaluate.metrics import Outcome
from agegender.evaluate.readers import FAIRFACE_GROUPS, DatasetError, Record


# -- metrics level: records and outcomes by hand ----------------------------------------
def _gender_set() -> tuple[list[Record], list[Outcome]]:
    """Race a: 4 records (3 right, 1 wrong); b: 3 (1 found right, 1 wrong, 1 no face);
    c: 2 (both right), a small group. Ages exact: a errors 1, 3, 0, 2; b errors 4, 6."""
    records: list[Record] = []
    outcomes: list[Outcome] = []

    def add(race: str, age: float, gender: str, outcome: Outcome) -> None:
        records.append(Record(f"{race}{len(records)}.jpg", age=age, gender=gender, race=race))
        outcomes.append(outcome)

    add("a", 20, "male", Outcome("ok", age=21, gender="male"))
    add("a", 30, "female", Outcome("ok", age=33, gender="female"))
    add("a", 40, "male", Outcome("ok", age=40, gender="male"))
    add("a", 50, "female", Outcome("ok", age=48, gender="male"))
    add("b", 20, "male", Outcome("ok", age=24, gender="male"))
    add("b", 30, "female", Outcome("ok", age=36, gender="male"))
    add("b", 40, "male", Outcome("no_face"))
    add("c", 20, "female", Outcome("ok", age=20, gender="female"))
    add("c", 30, "male", Outcome("ok", age=30, gender="male"))
    return records, outcomes


def test_per_group_figures_and_gaps_by_hand() -> None:
    records, outcomes = _gender_set()
    s = metrics.summarize(records, outcomes, min_group=2)
    fair = s["fairness"]
    assert fair["column"] == "race" and fair["min_n"] == 2
    a, b, c = (fair["groups"][name] for name in "abc")
    assert a["gender_accuracy"] == pytest.approx(3 / 4) and a["gender_accuracy_n"] == 4
    assert b["gender_accuracy"] == pytest.approx(1 / 2) and b["gender_accuracy_n"] == 2
    assert c["gender_accuracy"] == pytest.approx(1.0)
    assert a["mae"] == pytest.approx(6 / 4) and b["mae"] == pytest.approx(5.0) and c["mae"] == 0
    assert (a["faces_found"], b["faces_found"], c["faces_found"]) == (
        1.0,
        pytest.approx(2 / 3),
        1.0,
    )
    assert (a["images"], b["images"], c["images"]) == (4, 3, 2)
    assert a["group_accuracy"] is None  # exact ages, no group labels
    # The figures are the by_race breakdown's, not a second computation.
    assert s["by_race"]["b"]["gender"]["accuracy"] == b["gender_accuracy"]
    assert s["by_race"]["b"]["faces_found"] == {"n": 2, "of": 3, "share": pytest.approx(2 / 3)}

    gender = fair["gaps"]["gender_accuracy"]
    assert gender["gap"] == pytest.approx(0.5)
    assert gender["max"] == {"group": "c", "value": 1.0}
    assert gender["min"] == {"group": "b", "value": 0.5}
    assert gender["groups"] == 3 and gender["excluded"] == {}
    mae = fair["gaps"]["mae"]
    assert mae["gap"] == pytest.approx(5.0)
    assert (mae["max"]["group"], mae["min"]["group"]) == ("b", "c")
    assert "group_accuracy" not in fair["gaps"]  # no group measured


def test_small_groups_are_listed_but_left_out_of_the_gaps() -> None:
    records, outcomes = _gender_set()
    fair = metrics.summarize(records, outcomes, min_group=3)["fairness"]
    assert set(fair["groups"]) == {"a", "b", "c"}  # every group is listed
    gender = fair["gaps"]["gender_accuracy"]
    # b (2 faces found and gendered) and c (2) are under 3: only a is left, no gap.
    assert gender["excluded"] == {"b": 2, "c": 2}
    assert gender["gap"] is None and gender["groups"] == 1
    fair = metrics.summarize(records, outcomes)["fairness"]  # default: 20
    assert fair["min_n"] == metrics.MIN_GROUP_N == 20
    assert fair["gaps"]["mae"]["excluded"] == {"a": 4, "b": 2, "c": 2}
    # The text says which groups were left out and why.
    built = {"settings": [{"name": "x", "metrics": {"fairness": fair}}]}
    text = report.fairness_text(built)
    assert "left out, under 20 faces: a (4), b (2), c (2)" in text
    assert "a *" in text


def test_interval_labels_score_groups_never_mae() -> None:
    # FairFace-style labels: group accuracy is age_min <= estimate < age_max + 1.
    spans = [("20-29", 20, 29), ("20-29", 20, 29), ("3-9", 3, 9), ("more than 70", 70, 120)]
    estimates = [29.9, 30.0, 9.5, 88.0]  # hit, miss (30 is in 30-39), hit, hit
    races = ["x", "x", "y", "y"]
    records = [
        Record(f"{i}.jpg", gender="male", race=race, group=g, age_min=lo, age_max=hi)
        for i, ((g, lo, hi), race) in enumerate(zip(spans, races, strict=True))
    ]
    outcomes = [Outcome("ok", age=v, gender="male") for v in estimates]
    s = metrics.summarize(records, outcomes, min_group=1)
    found = s["excluding_no_face"]
    assert "age" not in found  # no MAE against a midpoint
    assert found["groups"]["labels"] == [label for label, _, _ in FAIRFACE_GROUPS]
    assert found["groups"]["accuracy"] == pytest.approx(3 / 4)
    assert found["groups"]["relabelled"] == 0
    gap = s["fairness"]["gaps"]["group_accuracy"]
    assert gap["gap"] == pytest.approx(0.5)
    assert (gap["max"]["group"], gap["min"]["group"]) == ("y", "x")
    assert "mae" not in s["fairness"]["gaps"]
    # An interval label says which side of a threshold the age is on, when it can.
    assert metrics._at_least(records[0], 18) is True
    assert metrics._at_least(records[2], 18) is False
    assert metrics._at_least(records[0], 25) is None


def test_group_scheme_membership() -> None:
    # FairFace's groups are contiguous: whole years, low <= age < high + 1.
    assert metrics.contiguous(FAIRFACE_GROUPS)
    assert not metrics.contiguous(readers.ADIENCE_GROUPS)  # gaps: nearest group
    index = [metrics.group_containing(a, FAIRFACE_GROUPS) for a in (0, 2.99, 3, 9.7, 69.9, 70, 130)]
    assert index == [0, 0, 1, 1, 7, 8, 8]
    assert metrics.group_containing(3.5, readers.ADIENCE_GROUPS) == 1  # nearer 4-6 than 0-2
    fairface_like = [Record("a", age_min=20, age_max=29), Record("b", age_min=70, age_max=120)]
    assert metrics.scheme_for(fairface_like) == FAIRFACE_GROUPS
    assert metrics.scheme_for([Record("a", age=30)]) == readers.ADIENCE_GROUPS
    assert metrics.scheme_for([Record("a", age_min=20, age_max=24)]) == readers.ADIENCE_GROUPS


# -- the FairFace reader ------------------------------------------------------------------
def _fairface_tree(root: Path, rows: list[str], split: str = "val", images: bool = True) -> Path:
    """FairFace's layout: fairface_label_{split}.csv and {split}/N.jpg beside it."""
    (root / split).mkdir(parents=True, exist_ok=True)
    lines = ["file,age,gender,race,service_test", *rows]
    (root / f"fairface_label_{split}.csv").write_text("\n".join(lines) + "\n")
    if images:
        rng = np.random.default_rng(len(rows))
        for row in rows:
            name = row.split(",")[0]
            if name.startswith(f"{split}/") and name.endswith(".jpg"):
                pixels = rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / name)
    return root


def test_fairface_reader_reads_the_published_layout(tmp_path: Path) -> None:
    root = _fairface_tree(
        tmp_path / "ff",
        [
            "val/1.jpg,3-9,Male,East Asian,True",
            "val/2.jpg,more than 70,Female,Black,False",
            "val/3.jpg,20-29,Female,Latino_Hispanic,True",
        ],
    )
    _fairface_tree(root, ["train/1.jpg,50-59,Male,White,True"], split="train", images=False)
    data = readers.read_dataset("fairface", root)  # default: val
    assert [(r.group, r.age_min, r.age_max, r.gender, r.race, r.age) for r in data.records] == [
        ("3-9", 3, 9, "male", "east asian", None),
        ("more than 70", 70, 120, "female", "black", None),
        ("20-29", 20, 29, "female", "latino_hispanic", None),
    ]
    assert data.records[0].path == str(root / "val" / "1.jpg")
    assert {r.fold for r in data.records} == {"val"}
    train = readers.read_dataset("fairface", root, split="train")
    assert [(r.group, r.fold) for r in train.records] == [("50-59", "train")]
    # the label file itself is a source too
    assert len(readers.read_fairface(root / "fairface_label_val.csv").records) == 3
    assert "fairface" in readers.formats_taking("split")
    assert readers.formats_taking("group_column") == ["csv"]


def test_fairface_bad_rows_are_one_line_each_and_the_others_kept(tmp_path: Path) -> None:
    root = _fairface_tree(
        tmp_path / "ff",
        [
            "val/1.jpg,3-9,Male,White,True",
            "val/2.jpg,25,Male,White,True",  # line 3: not a FairFace group
            "val/3.jpg,20-29,unknown,White,True",  # line 4: gender
            ",20-29,Male,White,True",  # line 5: no file
            "val/5.jpg,40-49,Female,Indian,False",
        ],
    )
    data = readers.read_fairface(root)
    assert [Path(r.path).name for r in data.records] == ["1.jpg", "5.jpg"]
    labels = root / "fairface_label_val.csv"
    assert data.problems[0].startswith(f"{labels}:3: age '25' is not a FairFace age group")
    assert data.problems[1] == f"{labels}:4: gender 'unknown' is not Male or Female"
    assert data.problems[2] == f"{labels}:5: no usable file name"
    assert all("\n" not in p for p in data.problems)
    assert sum(data.dropped.values()) == 3
    assert data.summary()["problems_total"] == 3


def test_fairface_reader_errors_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "ff"
    root.mkdir()
    with pytest.raises(DatasetError, match=r"fairface_label_val.csv: no such FairFace label"):
        readers.read_fairface(root)
    _fairface_tree(root, ["train/1.jpg,3-9,Male,White,True"], split="train", images=False)
    with pytest.raises(DatasetError, match=r"found: fairface_label_train.csv; pick one with"):
        readers.read_fairface(root)
    with pytest.raises(DatasetError, match=r"--split 'test': FairFace splits are train, val"):
        readers.read_fairface(root, split="test")
    (root / "fairface_label_val.csv").write_text("file,age,sex\nval/1.jpg,3-9,Male\n")
    with pytest.raises(DatasetError, match=r"fairface_label_val.csv: not a FairFace label file"):
        readers.read_fairface(root)
    with pytest.raises(DatasetError, match=r"--group-column is for csv, not fairface"):
        readers.read_dataset("fairface", root, group_column="race")


CELL = st.one_of(
    st.sampled_from(["val/1.jpg", "3-9", "more than 70", "Male", "Female", "Black", "True"]),
    st.sampled_from(["", "nan", "-1", "200", "70+", "0-2 ", '"', "\t", "\x00", "é"]),
    st.text(max_size=8),
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=st.lists(st.lists(CELL, min_size=0, max_size=6), max_size=6))
def test_fairface_reader_on_generated_bad_rows(tmp_path: Path, rows: list[list[str]]) -> None:
    """Whatever the cells, the reader keeps sane records and says each row it left out in
    one line naming the file and line, or raises one one-line DatasetError naming it."""
    labels = tmp_path / "fairface_label_val.csv"
    text = "file,age,gender,race,service_test\n" + "".join(",".join(r) + "\n" for r in rows)
    labels.write_text(text, encoding="utf-8")
    try:
        data = readers.read_fairface(tmp_path)
    except DatasetError as error:
        assert str(labels) in str(error) and "\n" not in str(error)
        return
    spans = {(lo, hi) for _, lo, hi in FAIRFACE_GROUPS}
    for record in data.records:
        assert record.age is None and (record.age_min, record.age_max) in spans
        assert record.gender in ("female", "male")
    assert len(data.problems) == sum(data.dropped.values())
    assert all(p.startswith(f"{labels}:") and "\n" not in p for p in data.problems)


# -- the csv reader: interval labels and --group-column -------------------------------------
def test_csv_with_age_min_max_never_gives_a_midpoint_age(tmp_path: Path) -> None:
    # The development copy's columns: age is only the group's midpoint.
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,age,gender,group,age_min,age_max,race,source_file\n"
        "a.jpg,25,male,20-29,20,29,White,train/1.jpg\n"
        "b.jpg,75,female,70+,70,120,Black,train/2.jpg\n"
        "c.jpg,33,female,,33,33,Black,train/3.jpg\n"  # a one-year range is an exact age
        "d.jpg,41,male,,,,Indian,train/4.jpg\n"  # no range: the age is exact
    )
    data = readers.read_csv(labels)
    got = [(r.age, r.age_min, r.age_max, r.group, r.race) for r in data.records]
    assert got == [
        (None, 20, 29, "20-29", "white"),
        (None, 70, 120, "70+", "black"),
        (33, None, None, None, "black"),
        (41, None, None, None, "indian"),
    ]
    assert data.adjusted == {"age inside an age_min..age_max range: scored as a group": 2}
    # 70+ is FairFace's "more than 70" by its span, not by its label.
    index, relabelled = metrics._true_group(data.records[1], FAIRFACE_GROUPS)
    assert (index, relabelled) == (8, False)

    labels.write_text("file,age,age_min,age_max\na.jpg,35,20,29\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: age '35' lies outside its range 20..29"):
        readers.read_csv(labels)
    labels.write_text("file,age,age_min,age_max\na.jpg,,29,20\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: age_min '29', age_max '20' is not"):
        readers.read_csv(labels)
    labels.write_text("file,age_min,age_max\na.jpg,20,\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: age_min '20', age_max '' is not"):
        readers.read_csv(labels)


def test_group_column_picks_the_fairness_groups(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,age,gender,race,Ethnicity\na.jpg,30,m,white,Hispanic\n")
    default = readers.read_dataset("csv", labels)
    assert default.records[0].race == "white" and default.group_column == "race"
    chosen = readers.read_dataset("csv", labels, group_column="ethnicity")
    assert chosen.records[0].race == "hispanic" and chosen.group_column == "Ethnicity"
    assert chosen.summary()["group_column"] == "Ethnicity"
    with pytest.raises(DatasetError, match=r"--group-column 'tribe': no such column \(columns:"):
        readers.read_dataset("csv", labels, group_column="tribe")


# -- the command end to end, with peaked stand-in models -------------------------------------
AGE_PEAK = 30  # cc0-age-v1's bin 30 is 30 years: every estimate is 30 (group 30-39)
GENDER_PEAK = 0  # cc0-gender-v1's label 0: every face is female


@pytest.fixture(scope="module")
def peaked(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Options that replace the default cards' files by graphs peaked at 30 years and
    female, without calibration (its temperature would widen the peak)."""
    folder = tmp_path_factory.mktemp("peaked")
    options = ["--calibration", "none"]
    for task, card_id, peak in (
        ("age", "cc0-age-v1", AGE_PEAK),
        ("gender", "cc0-gender-v1", GENDER_PEAK),
    ):
        path = folder / f"{card_id}.onnx"
        path.write_bytes(peaked_graph(cardlib.get_card(card_id), peak))
        options += [f"--{task}-model", f"{card_id}={path}"]
    return options


def _evaluate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["evaluate", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fairface_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], peaked: list[str]
) -> None:
    # Every prediction is (30 years, female). Race p: 3 female, 1 male; group hits: the
    # 30-39 rows. Race q: 1 female, 2 male. Race r: 1 row (a small group at --min 2).
    rows = [
        "val/1.jpg,30-39,Female,P,True",
        "val/2.jpg,30-39,Female,P,True",
        "val/3.jpg,20-29,Female,P,True",
        "val/4.jpg,40-49,Male,P,True",
        "val/5.jpg,30-39,Female,Q,True",
        "val/6.jpg,3-9,Male,Q,True",
        "val/7.jpg,more than 70,Male,Q,True",
        "val/8.jpg,30-39,Female,R,True",
        "val/9.jpg,thirty,Female,R,True",  # line 10: left out, said on stderr
    ]
    root = _fairface_tree(tmp_path / "ff", rows)
    args = [str(root), "--format", "fairface", "--cropped", "--min-group-size", "2", *peaked]

    code, out, err = _evaluate([*args, "--json"], capsys)

    assert code == 0, err
    labels = root / "fairface_label_val.csv"
    assert f"warning: {labels}:10: age 'thirty' is not a FairFace age group" in err
    result = json.loads(out)
    assert result["dataset"]["records"] == 8 and result["dataset"]["problems_total"] == 1
    m = result["settings"][0]["metrics"]
    found = m["excluding_no_face"]
    assert "age" not in found  # FairFace has no exact ages: no MAE
    assert found["gender"]["accuracy"] == pytest.approx(5 / 8, abs=1e-4)
    assert found["groups"]["accuracy"] == pytest.approx(4 / 8, abs=1e-4)
    fair = m["fairness"]
    groups = fair["groups"]
    assert groups["p"]["gender_accuracy"] == 0.75 and groups["p"]["group_accuracy"] == 0.5
    assert groups["q"]["gender_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert groups["q"]["group_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert groups["r"]["gender_accuracy"] == 1.0 and groups["r"]["faces_found"] == 1.0
    gender = fair["gaps"]["gender_accuracy"]
    assert gender["gap"] == pytest.approx(0.75 - 1 / 3, abs=1e-4)
    assert (gender["max"]["group"], gender["min"]["group"]) == ("p", "q")
    assert gender["excluded"] == {"r": 1}
    group = fair["gaps"]["group_accuracy"]
    assert group["gap"] == pytest.approx(0.5 - 1 / 3, abs=1e-4)

    code, out, err = _evaluate(args, capsys)
    assert code == 0, err
    assert "gender gap" in out.splitlines()[1] and "41.7 pts" in out.splitlines()[2]
    assert "fairness by race, " in out
    assert (
        "largest gender acc gap: 41.7 pts (p 75.0%, q 33.3%); left out, under 2 faces: r (1)" in out
    )
    assert "largest group acc gap: 16.7 pts (p 50.0%, q 33.3%)" in out
    assert "MAE" not in out


def test_csv_group_column_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], peaked: list[str]
) -> None:
    # Exact ages, so MAE per group: the estimate is 30 for everyone.
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    (tmp_path / "labels.csv").write_text(
        "path,age,gender,race,ethnicity\n"
        "0.png,30,f,white,north\n"  # error 0, right
        "1.png,34,m,white,north\n"  # error 4, wrong
        "2.png,20,f,black,south\n"  # error 10, right
        "3.png,40,f,black,south\n"  # error 10, right
        "4.png,25,m,black,north\n"  # error 5, wrong
    )
    args = [str(tmp_path / "labels.csv"), "--format", "csv", "--cropped", *peaked]
    code, out, err = _evaluate(
        [*args, "--group-column", "ethnicity", "--json", "--min-group-size", "1"], capsys
    )
    assert code == 0, err
    m = json.loads(out)["settings"][0]["metrics"]
    fair = m["fairness"]
    assert fair["column"] == "ethnicity" and set(fair["groups"]) == {"north", "south"}
    assert fair["groups"]["north"]["mae"] == pytest.approx(3.0, abs=1e-3)
    assert fair["groups"]["south"]["mae"] == pytest.approx(10.0, abs=1e-3)
    assert fair["groups"]["north"]["gender_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    mae = fair["gaps"]["mae"]
    assert mae["gap"] == pytest.approx(7.0, abs=1e-3) and mae["max"]["group"] == "south"
    # Without the option, the race column.
    code, out, _ = _evaluate([*args, "--json"], capsys)
    fair = json.loads(out)["settings"][0]["metrics"]["fairness"]
    assert fair["column"] == "race" and set(fair["groups"]) == {"white", "black"}
    assert fair["gaps"]["mae"]["gap"] is None  # default 20: both groups too small
    assert fair["gaps"]["mae"]["excluded"] == {"black": 3, "white": 2}
    # --group-column on a format that has no use for it is refused, not ignored.
    code, _, err = _evaluate(
        [str(tmp_path), "--format", "utkface", "--group-column", "race", *peaked], capsys
    )
    assert code == 2 and "--group-column is for csv, not utkface" in err
    code, _, err = _evaluate([*args, "--min-group-size", "0"], capsys)
    assert code == 2 and "--min-group-size 0: must be 1 or more" in err


def test_a_group_with_no_face_found_is_marked_and_left_out() -> None:
    """A group whose every face was missed has no figure: it is listed with its *, and
    named among the groups left out (with 0), as any group under the minimum is."""
    records, outcomes = _gender_set()
    records.append(Record("d0.jpg", age=30, gender="male", race="d"))
    outcomes.append(Outcome("no_face"))
    fair = metrics.summarize(records, outcomes, min_group=2)["fairness"]
    assert fair["groups"]["d"]["gender_accuracy"] is None
    assert fair["gaps"]["gender_accuracy"]["excluded"] == {"d": 0}
    assert fair["gaps"]["gender_accuracy"]["groups"] == 3  # a, b, c still ranked
    text = report.fairness_text({"settings": [{"name": "x", "metrics": {"fairness": fair}}]})
    row = next(line for line in text.splitlines() if line.startswith("d "))
    assert row.split()[:3] == ["d", "*", "1"]
    assert "left out, under 2 faces: d (0)" in text
