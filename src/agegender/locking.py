"""Advisory OS locks, one meaning everywhere: the model store's downloads and builds, a
batch job's DEST and an evaluate report folder each take one with `try_exclusive`.

A lock is exclusive and non-blocking, held while the file (or folder) stays open and
released by the OS when it is closed or its process dies, so a killed job never leaves a
stale lock. Only a lock held by another process refuses the caller (`LockHeld`, which
each caller turns into its own one-line error). A file system that cannot lock at all
(ENOLCK on some NFS and SMB mounts, EOPNOTSUPP, ENOSYS) is not "another process": the
caller goes on unlocked and says so if that matters to it.
"""

from __future__ import annotations

import sys


class LockHeld(Exception):
    """Another process holds the lock."""


def try_exclusive(fd: int) -> bool:
    """Lock the open file or folder `fd` exclusively without waiting.

    True: taken. False: this file system does not lock (the caller is not protected).
    Raises LockHeld when another open file description holds it."""
    if sys.platform == "win32":  # byte-range lock on a file (folders do not lock there)
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:  # EACCES, the only failure of an open file: locked elsewhere
            raise LockHeld from None
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK / EAGAIN: held elsewhere
        raise LockHeld from None
    except OSError:  # ENOLCK, EOPNOTSUPP, ENOSYS, ...: no locks on this file system
        return False
    return True
