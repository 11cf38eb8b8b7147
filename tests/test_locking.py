"""The one advisory lock every writer takes (store downloads, batch DEST, evaluate
reports): held elsewhere refuses, released with its file, a file system that cannot lock
goes on unlocked."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agegender.locking import LockHeld, try_exclusive


def test_a_lock_held_by_another_open_file_refuses_and_goes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with path.open("a+b") as first:
        assert try_exclusive(first.fileno()) is True
        with path.open("a+b") as second, pytest.raises(LockHeld):
            try_exclusive(second.fileno())
    with path.open("a+b") as third:  # the first closed: its lock went with it
        assert try_exclusive(third.fileno()) is True


def test_a_folder_locks_like_a_file(tmp_path: Path) -> None:
    one = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    two = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert try_exclusive(one) is True
        with pytest.raises(LockHeld):
            try_exclusive(two)
    finally:
        os.close(one)
        os.close(two)


def test_a_lock_held_by_another_process_refuses_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'a+b'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with path.open("a+b") as mine, pytest.raises(LockHeld):
            try_exclusive(mine.fileno())
    finally:
        holder.kill()
        holder.wait()
    with path.open("a+b") as mine:
        assert try_exclusive(mine.fileno()) is True


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_file_system_without_locks_is_not_another_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def refuse(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)
    with (tmp_path / "lock").open("a+b") as handle:
        assert try_exclusive(handle.fileno()) is False
