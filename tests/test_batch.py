"""agegender batch, local engine: rows equal predict's, resume after kill -9 equals an
uninterrupted run, bad inputs are error rows, configuration changes refused, lists
streamed. Inputs are generated from tests/data/astronaut.png; nothing from ../shared."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faceutils import ASTRONAUT
from jsonschema import Draft202012Validator
from PIL import Image

pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")

import agegender
from agegender import cli, images, schemas
from agegender.batch import dataset, sources
from agegender.errors import ImageError

SRC = Path(agegender.__file__).resolve().parent.parent
REL = 1e-5
# predict's JSON rounds (value, std, interval: 2 digits; probabilities, score: 4; box: 1)
ROUNDING = {"age_value": 0.006, "age_std": 0.006, "age_low": 0.006, "age_high": 0.006}


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` images: rescaled, cropped and mirrored astronauts, and faceless ones."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(ASTRONAUT).convert("RGB")
    rng = np.random.default_rng(7)
    out = []
    for i in range(count):
        if i % 5 == 4:
            image = Image.fromarray(rng.integers(90, 110, (96, 128, 3), dtype=np.uint8))
        else:
            side = 200 + 31 * (i % 7)
            image = base.resize((side, side))
            if i % 2:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"img{i:03d}.{'png' if i % 3 else 'jpg'}"
        image.save(path)
        out.append(path)
    return out


def batch(*args: str) -> int:
    return cli.main(["batch", "--no-progress", *args])


def rows_of(dest: Path) -> list[dict[str, Any]]:
    rows = list(dataset.iter_rows(str(dest)))
    return sorted(
        rows, key=lambda r: (r["path"], r["frame"] or 0, -1 if r["face"] is None else r["face"])
    )


def assert_rows_equal(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            x, y = a[name], b[name]
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=REL, abs_tol=1e-9), (name, x, y)
            elif isinstance(x, list) and x and isinstance(x[0], float):
                assert np.allclose(x, y, rtol=REL), (name, x, y)
            else:
                assert x == y, (name, x, y)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    make_images(folder, 30)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / ".hidden.jpg").write_bytes(b"skipped: hidden")
    return folder


def test_rows_equal_predict_jsonl(photos: Path, tmp_path: Path, capsys: Any) -> None:
    listing = tmp_path / "list.txt"
    names = sorted(p.name for p in photos.iterdir() if not p.name.startswith("."))
    listing.write_text("# a comment\n" + "".join(f"{photos / n}\n" for n in names) + "\n")
    missing = str(tmp_path / "missing.jpg")
    with open(listing, "a") as f:
        f.write(missing + "\n")

    assert cli.main(["predict", "--jsonl", "--no-progress", str(photos), missing]) == 1
    predicted = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert batch(str(listing), "--out", str(tmp_path / "out")) == 1  # some inputs failed
    summary = capsys.readouterr().err
    assert "33 inputs done" in summary and "3 failed" in summary, summary
    rows = rows_of(tmp_path / "out")

    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    assert set(by_path) == {r["path"] for r in predicted}
    faces = 0
    for result in predicted:
        mine = by_path[result["path"]]
        if result["error"]:
            assert [r["error"] for r in mine] == [result["error"]]
            continue
        assert (mine[0]["width"], mine[0]["height"]) == (result["width"], result["height"])
        if not result["faces"]:
            assert len(mine) == 1 and mine[0]["face"] is None and mine[0]["error"] is None
            continue
        assert [r["face"] for r in mine] == list(range(len(result["faces"])))
        for row, face in zip(mine, result["faces"], strict=True):
            faces += 1
            assert [row["box_x1"], row["box_y1"], row["box_x2"], row["box_y2"]] == pytest.approx(
                face["box"], abs=0.051
            )
            assert row["score"] == pytest.approx(face["score"], abs=5.1e-5)
            age, gender = face["age"], face["gender"]
            assert row["age_value"] == pytest.approx(age["value"], abs=0.0051)
            assert row["age_std"] == pytest.approx(age["std"], abs=0.0051)
            assert [row["age_low"], row["age_high"]] == pytest.approx(age["interval"], abs=0.0051)
            assert row["gender_label"] == gender["label"]
            assert row["gender_probability"] == pytest.approx(gender["probability"], abs=5.1e-5)
            assert row["age_models"] == "cc0-age-v1" and row["agegender_version"] == "0.1.0"
            assert row["source_size"] == os.path.getsize(row["path"])
    assert faces >= 20
    # the folder itself as a source gives the same rows (the same walk as predict)
    assert batch(str(photos), missing, "--out", str(tmp_path / "out2")) == 1
    assert_rows_equal(rows_of(tmp_path / "out2"), rows)


def test_sinks_jsonl_and_csv(photos: Path, tmp_path: Path) -> None:
    some = [str(p) for p in sorted(photos.glob("img00*"))][:4]
    batch(*some, "--out", str(tmp_path / "pq"))
    batch(*some, "--out", str(tmp_path / "js"), "--format", "jsonl")
    batch(*some, "--out", str(tmp_path / "cs"), "--format", "csv")
    want = rows_of(tmp_path / "pq")
    assert_rows_equal(rows_of(tmp_path / "js"), want)
    csv_rows = rows_of(tmp_path / "cs")
    assert [r["path"] for r in csv_rows] == [r["path"] for r in want]
    assert [float(r["age_value"]) for r in csv_rows if r["age_value"]] == pytest.approx(
        [r["age_value"] for r in want if r["age_value"] is not None], rel=REL
    )
    assert list(tmp_path.joinpath("js").glob("part-*.jsonl"))
    # every JSONL row as the published schema says (agegender.schemas.batch_row)
    validator = Draft202012Validator(schemas.batch_row())
    for row in rows_of(tmp_path / "js"):
        validator.validate(row)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["AGEGENDER_HOME"] = str(tmp_path / "home")
    return env


def _committed(dest: Path) -> int:
    return len(list((dest / dataset.KEYS).glob("part-*.npy"))) if dest.exists() else 0


def test_the_kinds_of_cpu_that_computed_the_rows_are_noted_and_a_mix_is_told(
    photos: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default's faceres-deep INT8 copy gives estimates that differ between kinds of
    # CPU by up to about a year: a resume on another kind (or a mixed cluster) mixes them
    # in one dataset. Each kind is noted once; a second kind is one warning line when a
    # model in use is marked so (its card's [source] cpu_dependent).
    import agegender
    from agegender import sessions
    from agegender.cards import get_card
    from agegender.sessions import cpu_kind
    from agegender.store.files import package_path

    # the tests' store holds no faceres-deep: a card of the user's marked as that copy is
    folder = tmp_path / "mycard"
    folder.mkdir()
    (folder / "age.onnx").write_bytes(package_path(get_card("cc0-age-v1")).read_bytes())
    text = (Path(agegender.__file__).parent / "model_cards" / "cc0-age-v1.toml").read_text()
    head, _, rest = text.partition("[source]")
    card = folder / "card.toml"
    card.write_text(
        head.replace('id = "cc0-age-v1"', 'id = "my-age-int8"')
        + '[source]\nfile = "age.onnx"\ncpu_dependent = true\n[input]'
        + rest.split("[input]", 1)[1]
    )
    model = ("--age-model", str(card))
    out = tmp_path / "out"
    images = sorted(str(p) for p in photos.glob("img*"))  # img004: no face
    here, other = cpu_kind(), "x86_64 amx"
    assert batch(images[4], "--out", str(out), *model) == 0  # no estimate: nothing noted
    assert list((out / dataset.CPUS).iterdir()) == []
    assert batch(images[0], "--out", str(out), *model) == 0
    assert "kinds of CPU" not in capsys.readouterr().err
    notes = sorted((out / dataset.CPUS).iterdir())
    assert [json.loads(p.read_text())["cpu"] for p in notes] == [here]
    assert batch(images[0], images[1], "--out", str(out), *model) == 0  # same kind: quiet
    assert "kinds of CPU" not in capsys.readouterr().err
    assert sorted((out / dataset.CPUS).iterdir()) == notes
    # a resume on a machine of another kind: nothing new to do there, nothing noted
    monkeypatch.setattr(sessions, "cpu_kind", lambda: other)
    assert batch(images[0], images[1], "--out", str(out), *model) == 0
    assert "kinds of CPU" not in capsys.readouterr().err
    assert sorted((out / dataset.CPUS).iterdir()) == notes
    # ... and with a new face: noted, and told once, at the end
    assert batch(images[0], images[1], images[2], "--out", str(out), *model) == 0
    err = capsys.readouterr().err.strip().splitlines()
    said = [line for line in err if "kinds of CPU" in line]
    assert len(said) == 1 and err[-2:] == [said[0], err[-1]], err  # then the summary
    assert err[-1].startswith("agegender: batch: 1 inputs done"), err
    kinds = ", ".join(sorted([here, other]))
    assert said[0].startswith(
        f"agegender: warning: --out {out}: rows there were computed on 2 kinds of CPU "
        f"({kinds}); the estimates of my-age-int8 differ between kinds"
    )
    # --overwrite starts over: the notes go with the rows
    assert batch(images[0], "--out", str(out), "--overwrite", *model) == 0
    assert "kinds of CPU" not in capsys.readouterr().err
    assert [json.loads(p.read_text())["cpu"] for p in (out / dataset.CPUS).iterdir()] == [other]


def test_a_mix_of_cpus_is_quiet_without_models_that_depend_on_the_cpu() -> None:
    assert dataset.mixed_cpus_warning("d", ["x86_64 avx2", "x86_64 amx"], []) is None
    assert dataset.mixed_cpus_warning("d", ["x86_64 avx2"], ["faceres-deep-age-int8"]) is None
    line = dataset.mixed_cpus_warning("d", ["a", "b"], ["m"])
    assert line is not None and line.startswith("--out d: rows there were computed on 2 kinds")


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    make_images(folder, 40)
    command = [sys.executable, "-m", "agegender", "batch", str(folder), "--part-size", "2"]
    env = _env(tmp_path)
    whole = tmp_path / "whole"
    done = subprocess.run(
        [*command, "--out", str(whole)], env=env, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # a hang guard, not a speed limit
    while _committed(killed) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the job ended before it was killed"
    parts_before = _committed(killed)
    assert 3 <= parts_before < 20

    again = subprocess.run(
        [*command, "--out", str(killed)], env=env, capture_output=True, check=False
    )
    assert again.returncode == 0, again.stderr
    assert "skipped (done before" in again.stderr.decode()
    got, want = rows_of(killed), rows_of(whole)
    assert len({(r["path"], r["face"]) for r in got}) == len(got)  # no duplicates
    assert_rows_equal(got, want)
    leftovers = [p.name for p in killed.rglob("*") if p.name.startswith(dataset.TMP_PREFIX)]
    assert not leftovers
    # a third run has nothing left to do
    third = subprocess.run(
        [*command, "--out", str(killed)], env=env, capture_output=True, check=False
    )
    assert third.returncode == 0 and "0 inputs done" in third.stderr.decode()


def test_uncommitted_part_and_temp_files_are_redone(photos: Path, tmp_path: Path) -> None:
    """A kill between a part's rename and its keys' rename: the part is dropped, redone."""
    some = [str(p) for p in sorted(photos.glob("img01*"))][:6]
    out = tmp_path / "out"
    assert batch(*some, "--out", str(out), "--part-size", "2") == 0
    want = rows_of(out)
    keys = sorted((out / dataset.KEYS).glob("*.npy"))
    keys[-1].unlink()  # the last part written but not committed
    # and what write_atomic leaves when killed while writing a part and a keys file
    stem = keys[0].stem
    (out / f"{dataset.TMP_PREFIX}123-{stem}.parquet").write_bytes(b"half")
    (out / dataset.KEYS / f"{dataset.TMP_PREFIX}123-{stem}.npy").write_bytes(b"half")
    assert batch(*some, "--out", str(out), "--part-size", "2") == 0
    assert_rows_equal(rows_of(out), want)
    assert not [p for p in out.rglob(f"{dataset.TMP_PREFIX}*")]
    assert len(list(out.glob("part-*.parquet"))) == 3


def test_duplicates_and_key_hash(photos: Path, tmp_path: Path, capsys: Any) -> None:
    one = str(photos / "img001.png")
    out = tmp_path / "out"
    assert batch(one, one, "--out", str(out), "--key", "hash") == 0
    rows = rows_of(out)
    assert {r["path"] for r in rows} == {one} and rows[0]["source_sha256"]
    capsys.readouterr()
    os.utime(one)  # a new mtime: the content key still says done
    assert batch(one, "--out", str(out), "--key", "hash") == 0
    assert "1 skipped" in capsys.readouterr().err
    assert rows_of(out) == rows


def test_configuration_change_refused_and_overwrite(
    photos: Path, tmp_path: Path, capsys: Any
) -> None:
    one = str(photos / "img001.png")
    out = tmp_path / "out"
    assert batch(one, "--out", str(out)) == 0
    capsys.readouterr()
    assert batch(one, "--out", str(out), "--no-tta") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another configuration" in err and "tta" in err
    assert batch(one, "--out", str(out), "--format", "csv") == 2
    assert "sink" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert batch(one, "--out", str(out), "--no-tta", "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine"  # never touched
    manifest = json.loads((out / dataset.MANIFEST).read_text())
    assert manifest["config"]["tta"] is False and manifest["models"][0]["sha256"]
    assert len(list(out.glob("part-*"))) == 1 and {r["path"] for r in rows_of(out)} == {one}


def test_output_paths_checked_before_work(tmp_path: Path, capsys: Any) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.parquet").write_bytes(b"someone's")
    assert batch(str(ASTRONAUT), "--out", str(foreign)) == 2
    assert "did not make" in capsys.readouterr().err
    assert (foreign / "data.parquet").read_bytes() == b"someone's"
    assert sorted(p.name for p in foreign.iterdir()) == ["data.parquet"]
    a_file = tmp_path / "file.parquet"
    a_file.write_bytes(b"x")
    assert batch(str(ASTRONAUT), "--out", str(a_file)) == 2
    assert "not a folder" in capsys.readouterr().err
    assert batch(str(tmp_path / "nolist.txt"), "--out", str(tmp_path / "o")) == 2
    assert "no such list file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_lists_are_streamed(tmp_path: Path) -> None:
    """100,000 listed paths (text, CSV and Parquet) pass through in bounded memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 100_000
    names = [f"missing/dir{i % 100}/photo-{i:07d}.jpg" for i in range(count)]
    text = tmp_path / "list.txt"
    text.write_text("\n".join(names) + "\n")
    table = tmp_path / "list.csv"
    table.write_text("id,path\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    parquet = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": names}), parquet, row_group_size=10_000)
    held = sum(sys.getsizeof(n) for n in names)  # what a list in memory would take
    del names
    for listing in (text, table, parquet):
        tracemalloc.start()
        n = 0
        last = None
        for item in sources.iter_inputs([str(listing)]):
            n += 1
            last = item
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert n == count and last is not None and last.path.endswith("photo-0099999.jpg")
        assert last.path.startswith(str(tmp_path))  # relative to the list's folder
        assert peak < held / 5, (listing.name, peak, held)


def test_walk_matches_predict_rules(tmp_path: Path) -> None:
    from agegender.images import expand_inputs

    root = tmp_path / "tree"
    for rel in [
        "a/x.jpg",
        "a/.h.jpg",
        ".hid/y.png",
        "b/c/z.PNG",
        "b/c/n.txt",
        "b.jpg",
        "a-b/w.png",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    walked = [i.path for i in sources.iter_inputs([str(root)])]
    assert sorted(walked) == sorted(expand_inputs([str(root)]))
    globbed = [i.path for i in sources.iter_inputs([str(root / "**" / "*.jpg")])]
    assert sorted(globbed) == sorted(str(root / p) for p in ["a/x.jpg", "b.jpg"])


def test_help_loads_nothing_heavy(tmp_path: Path) -> None:
    probe = (
        "import sys\nfrom agegender import cli\n"
        "try:\n    cli.main(['batch', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        check=False,
    )
    assert "--out DEST" in done.stdout
    heavy = {"numpy", "pyarrow", "ray", "onnxruntime", "cv2", "dlib"}
    assert not heavy & {m.split(".")[0] for m in done.stderr.split()}


def test_a_name_that_is_not_utf8_is_a_row_in_every_sink(tmp_path: Path) -> None:
    """A file name in another encoding (bytes UTF-8 cannot decode) reached Parquet and
    CSV as a lone surrogate, which they cannot store: the whole job failed, every time.
    Its bytes are written as \\xNN; the job resumes past it."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = folder / "a.png"
    Image.open(ASTRONAUT).convert("RGB").resize((240, 240)).save(good)
    odd = os.path.join(os.fsencode(folder), b"zz\xff.png")
    with open(odd, "wb") as handle:
        handle.write(good.read_bytes())
    for sink in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"out-{sink}"
        assert batch(str(folder), "--out", str(out), "--format", sink) == 0
        paths = sorted(str(r["path"]) for r in rows_of(out))
        name = os.fsdecode(odd)
        written = name if sink == "jsonl" else str(folder / "zz\\xff.png")
        assert paths == sorted([str(good), written]), sink
        assert batch(str(folder), "--out", str(out), "--format", sink) == 0  # nothing to redo
        assert len(rows_of(out)) == 2


def test_retried_rows_of_a_name_written_with_escaped_bytes_are_pruned() -> None:
    """Pruning finds a row by its input's key: for a name written with \\xNN bytes, the
    key of the name those bytes spell."""
    name = os.fsdecode(b"/photos/zz\xff.png")
    key = sources.stat_key(name, 5, 7)
    rows = [
        {"path": name, "source_size": 5, "source_mtime_ns": 7, "error": "x: cannot read (EIO)"},
        {"path": "/photos/b.png", "source_size": 3, "source_mtime_ns": 1, "error": None},
    ]
    for sink in ("parquet", "csv"):
        data = dataset.encode(rows, sink, ())
        kept = dataset.filter_rows(data, sink, "stat", {key})
        assert kept != data
        assert dataset.filter_rows(kept, sink, "stat", {key}) == kept
        if sink == "csv":
            assert "zz\\xff.png" in data.decode() and "zz" not in kept.decode()


def test_files_of_the_user_in_dest_are_never_removed(photos: Path, tmp_path: Path) -> None:
    """Only the names agegender gives its parts (part-<run>-<seq>.<sink>, .tmp-<pid>-<part>)
    are removed by a resume or --overwrite: a user's part-notes.csv or .tmp-keep stays,
    and a folder with a part-like name does not stop the job."""
    one = str(photos / "img001.png")
    out = tmp_path / "out"
    assert batch(one, "--out", str(out)) == 0
    mine = {"part-notes.csv": "notes", ".tmp-keep": "keep", "part-1.parquet": "mine"}
    for name, text in mine.items():
        (out / name).write_text(text)
    (out / "part-old.parquet").mkdir()
    assert batch(one, str(photos / "img002.png"), "--out", str(out)) == 0
    assert batch(one, "--out", str(out), "--overwrite") == 0
    for name, text in mine.items():
        assert (out / name).read_text() == text
    assert (out / "part-old.parquet").is_dir()
    assert {r["path"] for r in rows_of(out)} == {one}


def test_dest_that_cannot_be_the_dataset_is_refused_before_work(
    tmp_path: Path, capsys: Any
) -> None:
    one = str(ASTRONAUT)
    a_file = tmp_path / "in1.png"
    a_file.write_bytes(ASTRONAUT.read_bytes())
    marked = tmp_path / "d1"
    marked.mkdir()
    (marked / dataset.META).write_text("mine")
    missing = tmp_path / "g3.jpg"
    for dest, sources_given, why in [
        ("", [one], "an empty path"),
        (f"{a_file}/", [one], "not a folder"),
        (str(marked), [one], f"a file named {dataset.META}"),
        (str(missing), [one, str(missing)], "also given as a source"),
    ]:
        assert batch(*sources_given, "--out", dest) == 2, dest
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and why in err, (dest, err)
    assert a_file.read_bytes() == ASTRONAUT.read_bytes()
    assert (marked / dataset.META).read_text() == "mine"
    assert not missing.exists() and sorted(os.listdir(tmp_path)) == ["d1", "in1.png"]


def test_a_second_job_on_dest_names_the_holder(photos: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    manifest = dataset.make_manifest({}, [], "parquet", "stat", {})
    holder = dataset.Dataset(str(out), manifest, "parquet", overwrite=False)
    try:
        assert batch(str(photos / "img001.png"), "--out", str(out)) == 2
        err = capsys.readouterr().err.strip()
        assert "another agegender batch is writing it" in err
        assert f"process {os.getpid()} on " in err and err.count("\n") == 0
    finally:
        holder.close()


def test_a_dest_on_a_file_system_without_flock_is_written_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # ENOLCK (some NFS and SMB mounts) is no lock at all, not "another agegender batch":
    # the job goes on, and says that nothing guards DEST against a second job.
    import errno
    import fcntl

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    out = tmp_path / "out"
    manifest = dataset.make_manifest({}, [], "parquet", "stat", {})
    with caplog.at_level("WARNING", logger="agegender"):
        opened = dataset.Dataset(str(out), manifest, "parquet", overwrite=False)
    try:
        assert (out / dataset.MANIFEST).is_file()
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert said == [
            f"--out {out}: this file system does not lock files; nothing stops a second "
            "job writing it at the same time"
        ]
    finally:
        opened.close()


def test_a_broken_parquet_list_is_refused_before_work(tmp_path: Path, capsys: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = tmp_path / "broken.parquet"
    broken.write_text("garbage")
    nopath = tmp_path / "nopath.parquet"
    pq.write_table(pa.table({"file": ["a.jpg"]}), nopath)
    for listing, why in [(broken, "not a readable Parquet list"), (nopath, "'path' column")]:
        out = tmp_path / f"o-{listing.stem}"
        assert batch(str(ASTRONAUT), str(listing), "--out", str(out)) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and why in err and str(listing) in err
        assert not out.exists()


def test_a_list_that_fails_part_way_is_an_error_row_and_the_job_goes_on(
    tmp_path: Path,
) -> None:
    """A Parquet list whose second row group is damaged: the entries before it are done,
    the list itself is a row with the error, and the sources after it are done too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    first, last = tmp_path / "first.png", tmp_path / "last.png"
    Image.open(ASTRONAUT).convert("RGB").resize((240, 240)).save(first)
    Image.open(ASTRONAUT).convert("RGB").resize((260, 260)).save(last)
    listing = tmp_path / "list.parquet"
    table = pa.table({"path": [str(first), "x" * 64]})
    pq.write_table(table, listing, row_group_size=1, use_dictionary=False)
    chunk = pq.ParquetFile(listing).metadata.row_group(1).column(0)
    data = bytearray(listing.read_bytes())
    start = chunk.data_page_offset  # the second row group's page header: unreadable now
    data[start : start + 8] = b"\xff" * 8
    listing.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert batch(str(listing), str(last), "--out", str(out)) == 1
    rows = {str(r["path"]): r for r in rows_of(out)}
    assert set(rows) == {str(first), str(listing), str(last)}
    assert rows[str(first)]["error"] is None and rows[str(last)]["error"] is None
    error = rows[str(listing)]["error"]
    assert error.startswith(f"{listing}: cannot read the list after 1 entries (")


def test_links_to_folders_are_not_followed(tmp_path: Path) -> None:
    """A link loop inside a folder: walked once, as predict walks it (os.walk)."""
    from agegender.images import expand_inputs

    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (root / "sub" / "up").symlink_to("..")
    walked = [i.path for i in sources.iter_inputs([str(root)])]
    assert walked == [str(root / "sub" / "a.jpg")] == expand_inputs([str(root)])


@contextlib.contextmanager
def fifo_writer_guard(fifo: Path) -> Iterator[None]:
    """A writer for `fifo` in a thread, so that code that wrongly opens the pipe reads one
    byte and fails instead of waiting forever; released at the end either way."""

    def write() -> None:
        # open waits until a reader opens the pipe
        with contextlib.suppress(OSError), open(fifo, "wb") as pipe:
            pipe.write(b"x")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield
    finally:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open return
        writer.join(timeout=60)
        os.close(reader)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_among_the_inputs_is_a_row_with_its_error(tmp_path: Path, capsys: Any) -> None:
    # a glob, a list or a path naming a pipe: the job waited for a writer forever (a
    # device such as /dev/zero was read without end)
    folder = tmp_path / "in"
    folder.mkdir()
    photo = folder / "a.png"
    photo.write_bytes(ASTRONAUT.read_bytes())
    fifo = folder / "capture.pipe"
    os.mkfifo(fifo)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{fifo}\n")
    assert [i.error for i in sources.iter_inputs([str(fifo)])] == [
        f"{fifo}: not a regular file (a pipe, a device or a socket)"
    ]
    with fifo_writer_guard(fifo):
        with pytest.raises(ImageError, match=r"capture\.pipe: not a regular file"):
            images.load(fifo)
        for given, dest in (
            ([str(folder / "*")], "globbed"),
            ([str(fifo), str(photo)], "named"),
            ([str(listing), str(photo)], "listed"),
        ):
            assert batch(*given, "--out", str(tmp_path / dest)) == 1
            rows = {r["path"]: r for r in rows_of(tmp_path / dest)}
            assert rows[str(fifo)]["error"] == (
                f"{fifo}: not a regular file (a pipe, a device or a socket)"
            )
            assert rows[str(photo)]["error"] is None and rows[str(photo)]["face"] == 0
    assert "not a regular file" in capsys.readouterr().err


def test_a_glob_over_the_folder_holding_dest_skips_the_dataset(tmp_path: Path) -> None:
    # 'photos/**/*' read the job's own parts and _agegender files as inputs, more of them
    # at every run, so a resume never settled
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(ASTRONAUT.read_bytes())
    dest = folder / "faces"
    pattern = str(folder / "**" / "*")
    for _ in range(2):
        assert batch(pattern, "--out", str(dest)) == 0
        assert [r["path"] for r in rows_of(dest)] == [str(folder / "a.png")]
    assert dataset.MANIFEST == sources.DATASET_MANIFEST


def test_lists_with_a_byte_order_mark(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" starts with one: the header's "path" was not found and the
    # first entry of a text list began with an invisible character
    (tmp_path / "a b.png").write_bytes(b"x")
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfpath,label\r\na b.png,x\r\n")
    (tmp_path / "plain.txt").write_bytes(b"\xef\xbb\xbfa b.png\n")
    for name in ("excel.csv", "plain.txt"):
        assert [i.path for i in sources.iter_inputs([str(tmp_path / name)])] == [
            str(tmp_path / "a b.png")
        ]


def test_the_ray_engines_options_are_refused_with_the_local_engine(
    tmp_path: Path, capsys: Any
) -> None:
    # --concurrency 8 ran one local job and said nothing
    for options, named in (
        (["--concurrency", "8"], "--concurrency applies only to --engine ray"),
        (["--num-cpus", "2", "--num-gpus", "1"], "--num-cpus, --num-gpus apply only to"),
        (["--address", "auto"], "--address applies only to --engine ray"),
    ):
        assert batch(str(ASTRONAUT), "--out", str(tmp_path / "out"), *options) == 2
        err = capsys.readouterr().err
        assert named in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()
