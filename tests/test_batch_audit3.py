"""agegender batch, a third audit (kill -9 at every write point): what a killed job leaves
that a re-run must take, and files of the user's edited between a crash and the resume (a
--calibration file, a card TOML: the manifest records their sha256), refused as any other
configuration; and the built-in cards (the heads' and the detector's) and calibrations in
effect, by content (`data_sha256`): the agegender version alone pinned them, and it did
not change when a built-in card did (CenterFace INT8's enlarged pass came under the same
version), so a job resumed after such a change mixed rows of both."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faceutils import ASTRONAUT
from PIL import Image

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

from agegender import cards, cli
from agegender.batch import dataset, job
from agegender.calibration import Calibration


def batch(*args: str) -> int:
    return cli.main(["batch", "--no-progress", *args])


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "in" / "face.jpg"
    path.parent.mkdir()
    Image.open(ASTRONAUT).convert("RGB").resize((256, 256)).save(path)
    return str(path)


def test_resume_with_an_edited_calibration_file_is_refused(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--calibration FILE edited between a crash and the resume is another configuration:
    the manifest held its path only, so the resumed rows silently used the new calibration
    beside the old one's (a dataset neither run would make)."""
    import agegender

    calibration = tmp_path / "cal.toml"
    package = Path(agegender.__file__).parent / "calibrations" / "default.toml"
    calibration.write_text(package.read_text())
    out = str(tmp_path / "out")
    assert batch(image, "--out", out, "--calibration", str(calibration)) == 0
    capsys.readouterr()
    text = calibration.read_text().replace("[age]\ntemperature = ", "[age]\ntemperature = 3")
    assert text != calibration.read_text()
    calibration.write_text(text)
    assert batch(image, "--out", out, "--calibration", str(calibration)) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration" in err[0] and "another configuration" in err[0], err
    # the same file again resumes (nothing to do)
    calibration.write_text(package.read_text())
    assert batch(image, "--out", out, "--calibration", str(calibration)) == 0


def test_resume_with_an_edited_card_toml_is_refused(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A card of the user's (a TOML file beside its model) edited between a crash and the
    resume changes the preprocessing of the rows still to come: refused, as a model file
    of other bytes is."""
    import agegender
    from agegender.store.files import package_path

    folder = tmp_path / "mycard"
    folder.mkdir()
    builtin = Path(agegender.__file__).parent / "model_cards" / "cc0-age-v1.toml"
    text = builtin.read_text().replace('id = "cc0-age-v1"', 'id = "my-age"')
    from agegender.cards import get_card

    (folder / "age.onnx").write_bytes(package_path(get_card("cc0-age-v1")).read_bytes())
    text = (
        text.split("[source]")[0]
        + '[source]\nfile = "age.onnx"\n'
        + "[input]"
        + (text.split("[input]", 1)[1])
    )
    card = folder / "card.toml"
    card.write_text(text)
    out = str(tmp_path / "out")
    args = (image, "--out", out, "--age-model", str(card))
    assert batch(*args) == 0
    capsys.readouterr()
    card.write_text(text.replace("padding = 0.2", "padding = 0.3"))
    assert batch(*args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "files_sha256" in err[0] and "another configuration" in err[0], err
    card.write_text(text)  # as it was: resumes (nothing to do)
    assert batch(*args) == 0


def test_kill_while_writing_the_manifest_then_same_pid_resumes(image: str, tmp_path: Path) -> None:
    """A job killed between the manifest's temporary write and its rename leaves
    _agegender/.tmp-<pid>-manifest.json; a re-run that gets the same pid (a restarted
    container, where the job's pid is the same every time) must still resume, and no
    temporary file may stay."""
    out = tmp_path / "out"
    meta = out / dataset.META
    for sub in (dataset.KEYS, dataset.ATTEMPTS):
        (out / sub).mkdir(parents=True)
    (meta / "lock").write_bytes(b"")
    leftover = meta / f"{dataset.TMP_PREFIX}{os.getpid()}-manifest.json"
    leftover.write_bytes(b'{"format": "agegender-batch/1", "half')
    assert batch(image, "--out", str(out)) == 0
    assert (out / dataset.MANIFEST).is_file()
    assert [p.name for p in out.rglob(f"{dataset.TMP_PREFIX}*")] == []
    assert len(list(dataset.iter_rows(str(out)))) == 1


def _with_card(monkeypatch: pytest.MonkeyPatch, card_id: str, **changes: Any) -> None:
    """The package's card `card_id` as if its TOML said `changes` (crop fields)."""
    real = cards.builtin_cards

    def edited() -> dict[str, cards.ModelCard]:
        found = real()
        card = found[card_id]
        found[card_id] = dataclasses.replace(card, crop=dataclasses.replace(card.crop, **changes))
        return found

    monkeypatch.setattr(cards, "builtin_cards", edited)


def test_resume_after_a_built_in_card_changed_is_refused(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "out")
    assert batch(image, "--out", out) == 0
    pinned = json.loads((Path(out) / dataset.MANIFEST).read_text())["data_sha256"]
    assert {"age card cc0-age-v1", "gender card cc0-gender-v1"} <= set(pinned), pinned
    capsys.readouterr()
    # the age model's crop as a later release's card might have it, same version
    _with_card(monkeypatch, "cc0-age-v1", padding=0.31)
    assert batch(image, "--out", out) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "another configuration (data_sha256 age card cc0-age-v1:" in err[0], err
    monkeypatch.undo()  # the package's card again: resumes, nothing to do
    assert batch(image, "--out", out) == 0
    assert len(list(dataset.iter_rows(out))) == 1


def _card(card_id: str) -> cards.ModelCard:
    return cards.get_card(card_id)


def _estimator(detector: Any, age: Calibration | None = None) -> Any:
    head = SimpleNamespace(card=_card("cc0-age-v1"))
    return SimpleNamespace(
        heads={"age": [head]},
        detector=detector,
        tasks={"age": SimpleNamespace(calibration=age)},
    )


def test_the_digests_follow_what_shapes_the_rows_and_nothing_else() -> None:
    centerface = _card("centerface-int8")
    assert centerface.detection is not None
    digests = job.data_digests(_estimator(SimpleNamespace(card=centerface)))
    assert set(digests) == {"age card cc0-age-v1", "detector card centerface-int8"}
    # the same card read again, or from another place, with other notes: the same digests
    moved = dataclasses.replace(centerface, origin="/elsewhere/c.toml", notes="edited", title="T")
    assert job.data_digests(_estimator(SimpleNamespace(card=moved))) == digests
    # a detection field (the enlarged pass's factor): the detector's digest changes
    enlarge = dataclasses.replace(
        centerface, detection=dataclasses.replace(centerface.detection, enlarge=1.5)
    )
    changed = job.data_digests(_estimator(SimpleNamespace(card=enlarge)))
    assert changed["detector card centerface-int8"] != digests["detector card centerface-int8"]
    assert changed["age card cc0-age-v1"] == digests["age card cc0-age-v1"]
    # the rotation sweep wraps the detector: its card is found under it
    swept = SimpleNamespace(base=SimpleNamespace(card=enlarge))
    assert job.data_digests(_estimator(swept)) == changed
    # a detector without a card (dlib's HOG): the heads' digests only
    assert set(job.data_digests(_estimator(SimpleNamespace()))) == {"age card cc0-age-v1"}
    # a calibration in effect: its parameters count, to the last bit
    one = job.data_digests(_estimator(SimpleNamespace(), Calibration("age", temperature=1.5)))
    two = job.data_digests(
        _estimator(SimpleNamespace(), Calibration("age", temperature=1.5000000000000002))
    )
    assert one["age calibration"] != two["age calibration"]
    assert one["age card cc0-age-v1"] == two["age card cc0-age-v1"]
