"""sha256 of files and streams, in one place: hashing a file, resuming a hash over a
partial download, and hashing while copying."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class Sha256:
    """An incremental sha256 fed by bytes, files (a resumed ``.part``) or copies."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, block: bytes) -> None:
        self._digest.update(block)

    def update_file(self, path: Path) -> Sha256:
        """Feed the whole of ``path`` (the bytes a resumed download already has)."""
        with path.open("rb") as handle:
            self.copy(handle, None)
        return self

    def copy(self, source: BinaryIO, out: BinaryIO | None) -> Sha256:
        """Feed everything ``source`` still holds, writing it to ``out`` too when given."""
        while block := source.read(CHUNK):
            self._digest.update(block)
            if out is not None:
                out.write(block)
        return self

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """The sha256 of bytes held in memory (a converted model)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    return Sha256().update_file(path).hexdigest()
