"""The runner's face matching, and whole evaluations on real faces with the embedded models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender import Estimator
from agegender.cli import main
from agegender.config import EstimatorConfig
from agegender.errors import AgegenderError
from agegender.evaluate import report as report_module
from agegender.evaluate import runner
from agegender.evaluate.readers import ADIENCE_GROUPS
from agegender.results import Face

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
# Eileen Collins (born November 1956) in her NASA portrait of about 1998.
LABEL_AGE, LABEL_GENDER = 41.0, "female"


def _face(box: tuple[float, float, float, float]) -> Face:
    return Face(box, 1.0, None, None, None)


def test_iou_by_hand() -> None:
    assert runner.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert runner.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert runner.iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0


def test_select_face_by_box_then_by_size_and_centre() -> None:
    small_left, big_right = _face((10, 40, 40, 70)), _face((60, 10, 100, 50))
    faces = [small_left, big_right]
    assert runner.select_face(faces, (12, 42, 41, 71), 100, 100) is small_left
    # The labelled face was not detected: other faces do not stand in for it.
    assert runner.select_face(faces, (40, 80, 50, 90), 100, 100) is None
    # No box (or a box from another frame, outside the image): largest, weighted by centrality.
    assert runner.select_face(faces, None, 100, 100) is big_right
    assert runner.select_face(faces, (500, 500, 600, 600), 100, 100) is big_right
    # corner: 1600 px, centre 42.4 px from the image centre, d = 42.4 / 70.7 = 0.6: weight 640
    # central: 900 px at the centre, d = 0: weight 900
    central = _face((35, 35, 65, 65))
    corner = _face((0, 0, 40, 40))
    assert runner.select_face([corner, central], None, 100, 100) is central
    assert runner.select_face([], None, 100, 100) is None


def test_parse_setting_is_the_command_lines_config_with_the_settings_keys() -> None:
    cli = {"detector": "haar", "threads": 1, "min_score": 0.2, "age_thresholds": (18.0,)}
    s = runner.parse_setting("dex-imdb:age=cc0-age-v1,tta=off", cli)
    assert s.name == "dex-imdb:age=cc0-age-v1,tta=off" and s.error is None
    expected = EstimatorConfig.from_preset("dex-imdb", **cli).with_overrides(
        age_models=("cc0-age-v1",), tta=False
    )
    assert s.config == expected
    # Every command-line option reaches every setting; the preset's own heads otherwise.
    assert s.config.min_score == 0.2 and s.config.age_thresholds == (18.0,)
    assert s.config.gender_models == EstimatorConfig.from_preset("dex-imdb").gender_models
    # An ensemble: A+B or the key repeated.
    both = runner.parse_setting("default:age=cc0-age-v1+dex-imdb-age").config
    assert both is not None and both.age_models == ("cc0-age-v1", "dex-imdb-age")
    again = runner.parse_setting("default:age=cc0-age-v1,age=dex-imdb-age").config
    assert again == both
    # A setting's card replaces the command line's cards and (unless given) their weights.
    weighted = {"age_models": ("a", "b"), "age_weights": (1.0, 2.0)}
    fits = runner.parse_setting("default:age=x+y", weighted).config
    assert fits is not None and fits.age_weights == (1.0, 2.0)
    assert "2 weights for 1 age models" in str(runner.parse_setting("default:age=x", weighted))
    # A setting's own weights (without them its cards run with equal weights)
    fitted = runner.parse_setting(
        "default:age=cc0-age-v1+dex-imdb-age,age_weights=0.4+0.6,"
        "gender=cc0-gender-v1+dex-imdb-gender,gender_weights=0.3+0.7"
    ).config
    assert fitted is not None and fitted.age_weights == (0.4, 0.6)
    assert fitted.age_models == ("cc0-age-v1", "dex-imdb-age")
    assert fitted.gender_weights == (0.3, 0.7)
    assert both.age_weights is None
    wrong = runner.parse_setting("default:age=cc0-age-v1+dex-imdb-age,age_weights=1+2+3")
    assert wrong.config is None and "3 weights for 2 age models" in (wrong.error or "")
    with pytest.raises(AgegenderError, match="numbers joined by"):
        runner.parse_setting("default:age_weights=a+b")
    # Names that do not exist: an error row, not an exception.
    missing = runner.parse_setting("no-such-preset")
    assert missing.config is None and "unknown preset" in (missing.error or "")
    with pytest.raises(AgegenderError, match="options are"):
        runner.parse_setting("default:colour=red")
    with pytest.raises(AgegenderError, match="tta is on or off"):
        runner.parse_setting("default:tta=yes")
    with pytest.raises(AgegenderError, match="starts with a preset"):
        runner.parse_setting(":tta=on")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A labelled folder: the portrait, a two-face scene, a faceless image, a broken and a
    missing file, with a CSV that labels the smaller face of the scene by its box."""
    root = tmp_path_factory.mktemp("scenes")
    portrait = Image.open(ASTRONAUT).convert("RGB")
    portrait.save(root / "astronaut.png")
    scene = Image.new("RGB", (1024, 512), (40, 40, 40))
    scene.paste(portrait.resize((358, 358)), (40, 100))  # smaller copy, the labelled one
    scene.paste(portrait, (512, 0))
    scene.save(root / "two.png")
    Image.new("RGB", (300, 300), (128, 128, 128)).save(root / "blank.png")
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    # The face box of the portrait is about (179, 83, 267, 171): scaled by 0.7, shifted.
    box = (179 * 0.7 + 40, 83 * 0.7 + 100, 267 * 0.7 + 40, 171 * 0.7 + 100)
    (root / "labels.csv").write_text(
        "path,age,gender,x1,y1,x2,y2\n"
        f"astronaut.png,{LABEL_AGE},f,,,,\n"
        f"two.png,{LABEL_AGE},f,{box[0]},{box[1]},{box[2]},{box[3]}\n"
        "blank.png,30,m,,,,\n"
        "broken.jpg,30,m,,,,\n"
        "missing.jpg,30,m,,,,\n"
    )
    return {"root": root, "box": box}


def _run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(["evaluate", *args, "--json", "--no-progress"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_end_to_end_on_real_faces(
    scenes: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root, box = scenes["root"], scenes["box"]
    estimator = Estimator()
    portrait = estimator.predict(root / "astronaut.png")
    assert len(portrait) == 1
    scene_faces = estimator.predict(root / "two.png")
    # The labelled face: the detection whose centre lies in the labelled box.
    labelled = [
        f
        for f in scene_faces
        if box[0] < (f.box[0] + f.box[2]) / 2 < box[2]
        and box[1] < (f.box[1] + f.box[3]) / 2 < box[3]
    ]
    assert len(labelled) == 1 and len(scene_faces) >= 2
    whole = Estimator(detector="none").predict(root / "blank.png")[0]
    assert Estimator().predict(root / "blank.png") == []

    code, report, err = _run_json(
        [str(root / "labels.csv"), "--format", "csv", "--report", str(tmp_path / "out")], capsys
    )

    assert code == 0
    m = report["settings"][0]["metrics"]
    assert m["images"] == 5 and m["unreadable"] == 2
    assert {Path(u["path"]).name for u in m["unreadable_images"]} == {"broken.jpg", "missing.jpg"}
    assert "missing.jpg: no such file" in err and "broken.jpg" in err
    assert m["faces_found"] == {"n": 2, "of": 3, "share": pytest.approx(2 / 3, abs=1e-4)}
    assert [Path(p).name for p in m["no_face_images"]] == ["blank.png"]

    errors = [abs(portrait[0].age.value - LABEL_AGE), abs(labelled[0].age.value - LABEL_AGE)]
    found = m["excluding_no_face"]
    assert found["age"]["n"] == 2
    # The report rounds to 4 decimals, and its sessions are not ours: float32 rounding of
    # ages up to 100 years (relative 1e-5, tests/support/tolerance.py) adds up to 1e-3.
    assert found["age"]["mae"] == pytest.approx(np.mean(errors), abs=1e-3)
    assert found["age"]["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(errors))), abs=1e-3)
    genders = [portrait[0].gender.label, labelled[0].gender.label]
    assert found["gender"]["accuracy"] == pytest.approx(
        np.mean([g == "female" for g in genders]), abs=1e-4
    )

    fallback = m["with_fallback"]
    assert fallback["age"]["n"] == 3
    expected = np.mean([*errors, abs(whole.age.value - 30)])
    assert fallback["age"]["mae"] == pytest.approx(expected, abs=1e-3)

    out = tmp_path / "out"
    for name in (
        "report.json",
        "report.md",
        "predictions.csv",
        "error_by_age.png",
        "predicted_vs_true.png",
    ):
        assert (out / name).is_file(), name
    assert Image.open(out / "error_by_age.png").size[0] > 300
    assert json.loads((out / "report.json").read_text()) == report
    markdown = (out / "report.md").read_text()
    assert "| default |" in markdown and "![error_by_age](error_by_age.png)" in markdown
    assert "broken.jpg" in markdown


def test_cropped_and_compare_with_a_failing_setting(
    scenes: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    portrait = Image.open(scenes["root"] / "astronaut.png")
    crop = portrait.crop((140, 40, 306, 214))  # the face with some margin
    crop.save(tmp_path / "face.png")
    (tmp_path / "faces.csv").write_text(f"path,age,gender\nface.png,{LABEL_AGE},female\n")
    whole = Estimator(detector="none").predict(tmp_path / "face.png")[0]
    whole_no_tta = Estimator(detector="none", tta=False).predict(tmp_path / "face.png")[0]

    code, report, err = _run_json(
        [
            str(tmp_path / "faces.csv"),
            "--format",
            "csv",
            "--cropped",
            "--compare",
            "default",
            "default:tta=off",
            "no-such-preset",
            "--report",
            str(tmp_path / "out"),
        ],
        capsys,
    )

    assert code == 1  # one setting could not run; the others are still reported
    assert "setting no-such-preset: unknown preset 'no-such-preset'" in err
    first, second, third = report["settings"]
    assert first["detector"] == "none" and first["metrics"]["faces_found"]["share"] == 1.0
    # rounding + other sessions, as in test_end_to_end_on_real_faces
    assert first["metrics"]["excluding_no_face"]["age"]["mae"] == pytest.approx(
        abs(whole.age.value - LABEL_AGE), abs=1e-3
    )
    assert second["metrics"]["excluding_no_face"]["age"]["mae"] == pytest.approx(
        abs(whole_no_tta.age.value - LABEL_AGE), abs=1e-3
    )
    assert third["error"].startswith("unknown preset")
    lines = report_module.table(report).splitlines()
    assert len(lines[0]) == len(lines[1]) == len(lines[2])  # rows align; the error row is free
    assert lines[3].startswith("no-such-preset   error: unknown preset")
    predictions = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in predictions] == ["setting", "default", "default:tta=off"]
    assert "no-such-preset | error: unknown preset" in (tmp_path / "out" / "report.md").read_text()

    # The table names every setting, the failed one with its error.
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "faces.csv"),
                "--format",
                "csv",
                "--cropped",
                "--no-progress",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "faces found" in table and "MAE" in table and "default" in table


def test_bad_dataset_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "nothing"), "--format", "utkface"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"agegender: error: {tmp_path / 'nothing'}: no such file or folder"
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), "--format", "fgnet"]) == 2
    assert "no labelled images to evaluate" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--format", "utkface", "--limit", "0"]) == 2
    assert "--limit 0: must be a positive" in capsys.readouterr().err
    (tmp_path / "gone.csv").write_text("path,age\ngone1.jpg,3\ngone2.jpg,4\n")
    assert main(["evaluate", str(tmp_path / "gone.csv"), "--format", "csv", "--no-progress"]) == 1
    assert "none of the 2 images could be read" in capsys.readouterr().err
    # No setting can run: every error is reported, the table still prints, exit 1.
    args = [str(tmp_path / "gone.csv"), "--format", "csv", "--no-progress"]
    assert main(["evaluate", *args, "--compare", "default:detector=foo", "default:age=nope"]) == 1
    captured = capsys.readouterr()
    assert "setting default:detector=foo: unknown detector 'foo'" in captured.err
    assert "setting default:age=nope: unknown model card 'nope'" in captured.err
    last = captured.out.splitlines()[-1]
    assert last.startswith(
        "default:age=nope".ljust(len("default:detector=foo")) + "  error: unknown model"
    )


def _stand_in_group_model(path: Path) -> Path:
    """A graph with levi-age's I/O (1 x 3 x 224 x 224 -> softmax over 8 groups, batch 1):
    channel means through a fixed 3 x 8 matrix, so different faces give different groups."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.linspace(-0.05, 0.05, 24, dtype=np.float32).reshape(3, 8)
    weights[1] *= -1.5
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["prob_Y"], axis=1),
        ],
        "levi_age_stand_in",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("prob_Y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _adience_folder(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Three face crops of the portrait in Adience's layout (and a fourth entry whose image
    is missing); labels 38-43, 25-32, 48-53 and 8-12."""
    portrait = Image.open(ASTRONAUT).convert("RGB")
    faces = {
        "1.a.jpg": portrait.crop((140, 40, 306, 214)),
        "2.b.jpg": portrait.crop((140, 40, 306, 214)).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "3.c.jpg": Image.eval(portrait.crop((120, 30, 320, 230)), lambda v: v // 2),
    }
    user = tmp_path / "adience" / "aligned" / "7153718@N04"
    user.mkdir(parents=True)
    for name, image in faces.items():
        face_id, original = name.split(".", 1)
        image.save(user / f"landmark_aligned_face.{face_id}.{original}", "JPEG")
    header = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\t" + (
        "tilt_ang\tfiducial_yaw_angle\tfiducial_score"
    )
    lines = [
        "7153718@N04\ta.jpg\t1\t(38, 43)\tf\t0\t0\t10\t10\t0\t0\t0",
        "7153718@N04\tb.jpg\t2\t(25, 32)\tf\t0\t0\t10\t10\t0\t0\t0",
        "7153718@N04\tc.jpg\t3\t(48, 53)\tu\t0\t0\t10\t10\t0\t0\t0",
        "7153718@N04\tmissing.jpg\t4\t(8, 12)\tm\t0\t0\t10\t10\t0\t0\t0",
    ]
    (tmp_path / "adience" / "fold_0_data.txt").write_text("\n".join([header, *lines]) + "\n")
    return tmp_path / "adience", sorted(user.iterdir())


def test_adience_groups_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _stand_in_group_model(tmp_path / "age_googlenet_stand_in.onnx")
    folder, paths = _adience_folder(tmp_path)

    reference = Estimator(age_models=(f"levi-age={model}",), detector="none")
    truth = ["38-43", "25-32", "48-53"]
    order = [label for label, _, _ in ADIENCE_GROUPS]
    predicted = [reference.predict(path)[0].age.group for path in paths]
    assert len(set(predicted)) > 1, predicted  # the stand-in tells these faces apart
    assert all(p in order for p in predicted)
    hits = [p == t for p, t in zip(predicted, truth, strict=True)]
    one_off = [
        abs(order.index(p) - order.index(t)) <= 1 for p, t in zip(predicted, truth, strict=True)
    ]

    code, report, _ = _run_json(
        [str(folder), "--format", "adience", "--cropped", "--age-model", f"levi-age={model}"],
        capsys,
    )

    assert code == 0
    m = report["settings"][0]["metrics"]
    assert m["unreadable"] == 1 and m["faces_found"] == {"n": 3, "of": 3, "share": 1.0}
    groups = m["excluding_no_face"]["groups"]
    assert groups["n"] == 3 and groups["relabelled"] == 0
    assert groups["accuracy"] == pytest.approx(np.mean(hits), abs=1e-4)
    assert groups["one_off"] == pytest.approx(np.mean(one_off), abs=1e-4)
    assert m["excluding_no_face"]["gender"]["n"] == 2  # "u" is no gender label


# -- defect 8: an age-groups card whose labels are not Adience's --------------------------
OWN_GROUPS = {
    "baby": (0, 3),
    "child": (4, 9),
    "teen": (10, 17),
    "young": (18, 24),
    "adult": (25, 39),
    "middle": (40, 54),
    "older": (55, 69),
    "senior": (70, 100),
}


def _own_groups_card(tmp_path: Path) -> Path:
    """A card for the stand-in graph with eight groups of its own (not Adience's)."""
    _stand_in_group_model(tmp_path / "stand_in_groups.onnx")
    labels = ", ".join(f'"{label}"' for label in OWN_GROUPS)
    groups = ", ".join(f"[{lo}, {hi}]" for lo, hi in OWN_GROUPS.values())
    card = tmp_path / "own-groups.toml"
    card.write_text(
        'id = "own-groups"\ntask = "age-groups"\ntitle = "stand-in"\nlicense = "CC0"\n'
        '[source]\nfile = "stand_in_groups.onnx"\n'
        '[input]\nsize = [224, 224]\nchannels = "BGR"\nlayout = "NCHW"\nscale = 1.0\n'
        "mean = [104.0, 117.0, 123.0]\n"
        '[crop]\nkind = "margin"\nmargin = 0.4\n'
        f"[output]\nsoftmax_in_graph = true\nlabels = [{labels}]\ngroups = [{groups}]\n"
    )
    return card


def test_groups_are_scored_with_the_cards_own_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: ValueError from GROUP_LABELS.index('young') after the whole run (traceback).
    card = _own_groups_card(tmp_path)
    folder, paths = _adience_folder(tmp_path)
    reference = Estimator(age_models=(str(card),), detector="none", gender_models=())
    predicted = [reference.predict(path)[0].age.group for path in paths]
    assert all(p in OWN_GROUPS for p in predicted)
    order = list(OWN_GROUPS)
    # Adience's 38-43, 25-32, 48-53 by their midpoints: middle, adult, middle.
    truth = ["middle", "adult", "middle"]
    hits = [p == t for p, t in zip(predicted, truth, strict=True)]
    near = [
        abs(order.index(p) - order.index(t)) <= 1 for p, t in zip(predicted, truth, strict=True)
    ]

    code, report, err = _run_json(
        [str(folder), "--format", "adience", "--cropped", "--age-model", str(card)], capsys
    )

    assert code == 0, err
    groups = report["settings"][0]["metrics"]["excluding_no_face"]["groups"]
    assert groups["labels"] == order and groups["n"] == 3 and groups["relabelled"] == 3
    assert groups["accuracy"] == pytest.approx(np.mean(hits), abs=1e-4)
    assert groups["one_off"] == pytest.approx(np.mean(near), abs=1e-4)


# -- defect 3: a bad report path is refused before the work, nothing overwritten ---------
def test_report_path_is_checked_before_the_work(
    scenes: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    # Before: the evaluation ran to the end, then mkdir raised (traceback, results lost).
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation started before the report path was checked")

    monkeypatch.setattr(runner, "run", no_work)
    root = scenes["root"]
    labels = root / "labels.csv"
    afile = tmp_path / "afile.jpg"
    afile.write_bytes(b"a photo")
    utk = tmp_path / "UTKFace"
    utk.mkdir()
    Image.new("RGB", (8, 8)).save(utk / "26_0_2_20170104023102422.jpg")
    # A label CSV named like a report file, in the folder the report would go to; once a
    # file agegender did not write, once one an earlier report wrote (still an input now).
    shared, earlier = tmp_path / "shared", tmp_path / "earlier"
    for folder in (shared, earlier):
        folder.mkdir()
        (folder / "predictions.csv").write_text(f"path,age\n{root / 'astronaut.png'},41\n")
    manifest = {"written_by": "agegender evaluate", "files": ["predictions.csv"]}
    (earlier / report_module.MANIFEST).write_text(json.dumps(manifest))
    cases = [
        ([str(labels), "--format", "csv"], afile, "exists and is not a folder"),
        ([str(labels), "--format", "csv"], "/proc/nope", "cannot write there"),
        ([str(labels), "--format", "csv"], labels, "exists and is not a folder"),
        ([str(utk), "--format", "utkface"], utk, "inside the dataset folder"),
        ([str(utk), "--format", "utkface"], utk / "out", "inside the dataset folder"),
        (
            [str(shared / "predictions.csv"), "--format", "csv"],
            shared,
            "predictions.csv exists and was not written by agegender",
        ),
        (
            [str(earlier / "predictions.csv"), "--format", "csv"],
            earlier,
            "predictions.csv there is an input",
        ),
    ]
    inputs = (afile, labels, shared / "predictions.csv", earlier / "predictions.csv")
    before = {p: p.read_bytes() for p in inputs}
    for args, target, message in cases:
        code = main(["evaluate", *args, "--report", str(target), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, (target, err)
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in shared.iterdir()) == ["predictions.csv"]
    assert len(list(earlier.iterdir())) == 2


def test_report_replaces_only_its_own_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    portrait = Image.open(ASTRONAUT).convert("RGB")
    portrait.crop((140, 40, 306, 214)).save(tmp_path / "face.png")
    (tmp_path / "faces.csv").write_text(f"path,age,gender\nface.png,{LABEL_AGE},female\n")
    out = tmp_path / "out"
    args = ["evaluate", str(tmp_path / "faces.csv"), "--format", "csv", "--cropped"]
    args += ["--no-progress", "--report", str(out)]
    assert main(args) == 0
    first = (out / "report.json").read_text()
    manifest = json.loads((out / report_module.MANIFEST).read_text())
    assert manifest["written_by"] == "agegender evaluate"
    # out lies in the images' folder: marked as output, so folder searches skip its plots
    written = {p.name for p in out.iterdir()} - {report_module.MANIFEST, ".agegender-output"}
    assert set(manifest["files"]) == written and (out / ".agegender-output").is_file()
    # A second run replaces the files the first one wrote (and listed).
    (out / "report.md").write_text("stale")
    assert main(args) == 0
    assert (out / "report.md").read_text() != "stale" and (out / "report.json").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".report")]  # no partial files
    capsys.readouterr()
    # A file of a report name that agegender did not write is never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    args[-1] = str(mine)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "report.md exists and was not written by agegender evaluate" in err
    assert (mine / "report.md").read_text() == "my notes" and len(list(mine.iterdir())) == 1
    assert first  # the first report was complete


def test_a_report_folder_is_written_by_one_evaluate_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two evaluates writing one folder would rename their files among each other's
    # (report.json of one, report.md of the other); the second stops before any work.
    portrait = Image.open(ASTRONAUT).convert("RGB")
    data = tmp_path / "data"
    data.mkdir()
    portrait.crop((140, 40, 306, 214)).save(data / "face.png")
    (data / "faces.csv").write_text(f"path,age,gender\nface.png,{LABEL_AGE},female\n")
    out = tmp_path / "out"
    out.mkdir()  # made by the other run, which has written nothing yet
    args = ["evaluate", str(data / "faces.csv"), "--format", "csv", "--cropped"]
    args += ["--no-progress", "--report", str(out)]
    import agegender.commands.evaluate as evaluate_command

    # this run saw no folder when it started (the other made it since): still not removed
    real_lexists = os.path.lexists
    monkeypatch.setattr(
        evaluate_command.os.path, "lexists", lambda p: False if p == str(out) else real_lexists(p)
    )
    held = report_module.hold(out)  # the other run's lock
    try:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--report {out}: another agegender evaluate is writing its report there" in err
        assert out.is_dir() and not list(out.iterdir())
    finally:
        os.close(held)
    monkeypatch.undo()
    assert main(args) == 0  # the other run ended: its lock went with it
    assert (out / "report.json").is_file()
    capsys.readouterr()


def test_a_report_folder_on_a_file_system_without_flock_is_written_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a lock held elsewhere stops a run; a file system that refuses flock (ENOLCK on
    # some network mounts) is not "another evaluate".
    import errno
    import fcntl

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    fd = report_module.hold(tmp_path)
    os.close(fd)
    with pytest.raises(AgegenderError, match="cannot open it"):
        report_module.hold(tmp_path / "missing")


def test_only_the_check_whose_mkdir_made_the_report_folder_owns_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Made here" is the check's own mkdir, not a look before it: of two runs racing to
    # one new folder, the one that finds it made by the other must never remove it.
    out = tmp_path / "new" / "report"
    assert report_module.check_target(out) is True
    assert out.is_dir()
    assert report_module.check_target(out) is False  # there now: made by the first
    # A folder it made and cannot write in is removed again; one that was there is kept.
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    fresh = tmp_path / "fresh"
    with pytest.raises(AgegenderError, match="cannot write there"):
        report_module.check_target(fresh)
    assert not fresh.exists()
    with pytest.raises(AgegenderError, match="cannot write there"):
        report_module.check_target(out)
    assert out.is_dir()


# -- defect 10 and the option audit: nothing accepted and ignored ------------------------
def test_age_threshold_is_scored(scenes: dict, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: --age-threshold was accepted by evaluate and changed nothing.
    root = scenes["root"]
    labels = root / "labels.csv"
    estimator = Estimator(age_thresholds=(18.0, 45.0))
    portrait = estimator.predict(root / "astronaut.png")[0]
    code, report, _ = _run_json(
        [str(labels), "--format", "csv", "--age-threshold", "18", "--age-threshold", "45"],
        capsys,
    )
    assert code == 0
    found = report["settings"][0]["metrics"]["excluding_no_face"]
    assert set(found["thresholds"]) == {"18", "45"}
    # Both found faces are labelled 41: at least 18, under 45.
    at18, at45 = found["thresholds"]["18"], found["thresholds"]["45"]
    assert (at18["n"], at18["n_at_least"], at18["n_under"]) == (2, 2, 0)
    assert (at45["n"], at45["n_at_least"], at45["n_under"]) == (2, 0, 2)
    assert at18["false_accept"] is None and at45["false_reject"] is None
    assert portrait.age.p_at_least[18.0] > 0.5  # the portrait's decision at 18 is right
    assert at18["accuracy"] >= 0.5
    assert report["settings"][0]["config"]["age_thresholds"] == [18.0, 45.0]
    assert main(["evaluate", str(labels), "--format", "csv", "--no-progress",
                 "--age-threshold", "18"]) == 0  # fmt: skip
    header = capsys.readouterr().out.splitlines()[1]
    # No minor among the labels: the "<18 accepted" column has no value and is left out.
    assert ">=18 acc" in header and ">=18 rejected" in header and "<18" not in header


def test_age_threshold_with_nothing_to_score_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.open(ASTRONAUT).convert("RGB").crop((140, 40, 306, 214)).save(tmp_path / "face.png")
    (tmp_path / "genders.csv").write_text("path,gender\nface.png,f\n")
    args = [str(tmp_path / "genders.csv"), "--format", "csv", "--cropped", "--no-progress"]
    assert main(["evaluate", *args, "--age-threshold", "18"]) == 0
    assert "--age-threshold 18: no image has both an age label" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cropped", "--min-score", "0.5"], "--cropped with --min-score"),
        (["--cropped", "--detector", "haar"], "--cropped with --detector haar"),
        (["--cropped", "--compare", "default:detector=haar"], "--cropped with --compare"),
        (["--preset", "levi", "--compare", "default"], "--preset with --compare"),
        (["--seed", "3"], "--seed picks the --limit sample"),
        (["--root", "."], "--root is for chalearn, csv, not utkface"),
        (["--split", "0"], "--split is for appa-real, adience, fgnet, fairface, not utkface"),
        (["--k", "nan"], "--k nan: must be a positive number"),
        (["--compare", "default", "default"], "the same setting is named twice"),
    ],
)
def test_options_that_would_be_ignored_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    assert main(["evaluate", str(tmp_path), "--format", "utkface", *options]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_every_command_line_option_reaches_every_setting(
    monkeypatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[EstimatorConfig] = []

    def record(records: list, settings: list, **kwargs: object) -> list:
        seen.extend(s.config for s in settings)
        return [runner.SettingRun(s, [runner.Outcome("error", error="x")] * len(records))
                for s in settings]  # fmt: skip

    monkeypatch.setattr(runner, "run", record)
    (tmp_path / "a.csv").write_text("path,age\na.jpg,3\n")
    options = ["--min-score", "0.3", "--age-threshold", "18", "--threads", "1", "--min-face", "9"]
    options += ["--compare", "default", "levi:tta=off", "default:detector=haar"]
    main(["evaluate", str(tmp_path / "a.csv"), "--format", "csv", "--no-progress", *options])
    capsys.readouterr()
    assert [c.preset for c in seen] == ["default", "levi", "default"]
    for config in seen:
        assert (config.min_score, config.age_thresholds, config.threads, config.min_face) == (
            0.3,
            (18.0,),
            1,
            9,
        )
    assert seen[1].tta is False and seen[2].detector == "haar"
    assert seen[1].age_models == EstimatorConfig.from_preset("levi").age_models


# -- defect 6: output into a closed pipe ends quietly -----------------------------------
def test_json_into_a_closed_pipe_prints_no_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    Image.open(ASTRONAUT).convert("RGB").crop((140, 40, 306, 214)).save(tmp_path / "face.png")
    (tmp_path / "faces.csv").write_text(f"path,age,gender\nface.png,{LABEL_AGE},female\n")
    command = [sys.executable, "-m", "agegender", "evaluate", str(tmp_path / "faces.csv")]
    command += ["--format", "csv", "--cropped", "--json", "--no-progress"]
    # A reader that is gone before anything is written: every write fails (EPIPE).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, timeout=600)
    finally:
        os.close(write_end)
    # The shell's way: `| head -c 10`.
    shell = " ".join(f"'{part}'" for part in command) + " | head -c 10"
    headed = subprocess.run(["sh", "-c", shell], capture_output=True, timeout=600)
    assert headed.stdout == b'{\n  "datas'
    for done in (closed, headed):
        err = done.stderr.decode()
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
        assert "Exception ignored" not in err, err


def test_help_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import agegender.commands.evaluate\n"
        "heavy = {'numpy', 'onnxruntime', 'dlib', 'cv2', 'onnx', 'PIL', 'matplotlib', 'scipy'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_run_stopped_before_its_report_leaves_no_folder_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """The report folder is made before the work (its path checked); a dataset with no
    labelled image, or an interrupt, before the report is written left it there, empty."""
    empty = tmp_path / "empty"
    empty.mkdir()
    made = tmp_path / "new" / "report"
    code = main(["evaluate", str(empty), "--format", "utkface", "--report", str(made)])
    assert code == 2 and "no labelled images" in capsys.readouterr().err
    assert not made.exists() and made.parent.is_dir()
    # interrupted during the work: the same, and Ctrl-C's line and status
    utk = tmp_path / "UTKFace"
    utk.mkdir()
    Image.new("RGB", (8, 8)).save(utk / "26_0_2_20170104023102422.jpg")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    code = main(["evaluate", str(utk), "--format", "utkface", "--report", str(made)])
    assert code == 130 and not made.exists()
    # a folder that was there before is left as it was, empty or not
    made.mkdir()
    (made.parent / "other").mkdir()
    code = main(["evaluate", str(utk), "--format", "utkface", "--report", str(made)])
    assert code == 130 and made.is_dir() and not list(made.iterdir())
    capsys.readouterr()
