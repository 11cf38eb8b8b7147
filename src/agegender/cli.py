"""The ``agegender`` command: one module per subcommand under ``agegender.commands``.

Parsing the command line imports only argparse-level code: the package ``__init__`` is
lazy and each command module imports ONNX Runtime, dlib, OpenCV and numpy inside its
``run``, so ``--version`` and ``--help`` answer at once.

When the reader of stdout goes away (``agegender predict ... | head -1``), the command
ends quietly, as Unix tools do: no traceback, exit status 141 (128 + SIGPIPE).

Ctrl-C (SIGINT) at any moment, the start included, ends the command with the one line
``agegender: interrupted`` and exit status 130; SIGTERM (``timeout``, ``docker stop``, a
job scheduler) with ``agegender: terminated`` and 143 (128 + SIGTERM). Both unwind the
command as an exception does, so temporary files are removed, locks released and files
being written either finished or left as they were.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import __version__
from .errors import AgegenderError, single_line

# Each module has add_parser(subparsers) and run(args) -> int.
COMMANDS = ["predict", "models", "evaluate", "calibrate", "serve", "batch", "video"]

BROKEN_PIPE_STATUS = 141  # what a shell reports for a process ended by SIGPIPE
INTERRUPTED_STATUS = 130  # 128 + SIGINT
TERMINATED_STATUS = 143  # 128 + SIGTERM
# ONNX Runtime 1.30 dies with SIGSEGV while being imported when the process's command line
# is longer than about 40 KB (e.g. `agegender predict` given 600 paths). Above this many
# bytes the command re-executes itself with its arguments in a file (named by ARGS_ENV).
ARGV_LIMIT = 16 * 1024
ARGS_ENV = "AGEGENDER_ARGS_FILE"


def _arguments_via_file() -> None:
    """Re-execute with a short command line when this process's own is long (POSIX)."""
    total = sum(len(os.fsencode(arg)) + 1 for arg in sys.argv)
    if total <= ARGV_LIMIT or os.name != "posix" or os.environ.get(ARGS_ENV):
        return
    import json
    import tempfile

    handle, path = tempfile.mkstemp(prefix="agegender-args-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(sys.argv[1:], out)  # surrogate-escaped (non-UTF-8) names survive as \udcXX
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "agegender"], {**os.environ, ARGS_ENV: path})


def _arguments_from_file() -> list[str] | None:
    """The arguments a long command line left in a file (which is removed), or None."""
    path = os.environ.pop(ARGS_ENV, None)
    if not path:
        return None
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            args = json.load(handle)
    finally:
        os.unlink(path)
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise SystemExit(f"agegender: error: {path}: not a list of arguments")
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agegender",
        description="Age and gender of every face in photos, folders, videos and HTTP requests.",
    )
    parser.add_argument("--version", action="version", version=f"agegender {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"agegender.commands.{name}").add_parser(sub)
    return parser


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at /dev/null, so the flush at exit cannot fail again.

    Python's documentation on SIGPIPE advises this: the unwritten rest of the buffer goes
    nowhere instead of raising BrokenPipeError once more at shutdown.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the command unwinds as after Ctrl-C (every
    ``except KeyboardInterrupt`` and ``finally`` runs), then exits with status 143."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises Terminated while the command runs (its default action killed the
    process where it stood: temporary files stayed, a report folder half replaced); the
    previous handler is back afterwards (in a caller's own process)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals are not ours to take
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that `error` is or was caused by, else None: a C extension
    interrupted while it loads (ONNX Runtime's pybind11 module) raises ImportError
    "initialization failed" from the KeyboardInterrupt."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _interruption(signal_error: KeyboardInterrupt) -> int:
    """Say that the command was stopped; its exit status."""
    if isinstance(signal_error, Terminated):
        print("agegender: terminated", file=sys.stderr)
        return TERMINATED_STATUS
    print("agegender: interrupted", file=sys.stderr)
    return INTERRUPTED_STATUS


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the process's own command line (not a caller's list)
        argv = _arguments_from_file()
        if argv is None:
            _arguments_via_file()
    try:
        try:
            with sigterm_unwinds():
                try:
                    return _main(argv)
                except KeyboardInterrupt as error:  # also while the commands' parsers load
                    return _interruption(error)
                except Exception as error:
                    cause = _interrupted(error)
                    if cause is None:
                        raise
                    return _interruption(cause)
        finally:
            # Flushed here (also after --help and --version), so that a reader gone away
            # is seen below rather than as an "Exception ignored" message at exit.
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return BROKEN_PIPE_STATUS
    except OSError as error:
        if error.errno not in _FULL_OUTPUT:
            raise
        # stdout on a full disk (or /dev/full): one line, as for a closed pipe
        _stdout_to_devnull()
        print(f"agegender: error: cannot write the output ({error.strerror})", file=sys.stderr)
        return 1


_FULL_OUTPUT = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="agegender: %(levelname)s: %(message)s", stream=sys.stderr
    )
    # Our own level, not the root's: a library that raises the root level (Ray sets it to
    # ERROR when it starts) must not silence this project's warnings.
    logging.getLogger("agegender").setLevel(level)
    try:
        return int(args.run(args))
    except AgegenderError as error:
        # one line, also for a path holding a line break (--out 'a<newline>b')
        print(f"agegender: error: {single_line(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
