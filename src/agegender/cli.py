"""The ``agegender`` command: one module per subcommand under ``agegender.commands``.

Parsing the command line imports only argparse-level code: the package ``__init__`` is
lazy and each command module imports ONNX Runtime, dlib, OpenCV and numpy inside its
``run``, so ``--version`` and ``--help`` answer at once.

When the reader of stdout goes away (``agegender predict ... | head -1``), the command
ends quietly, as Unix tools do: no traceback, exit status 141 (128 + SIGPIPE).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import AgegenderError

# Each module has add_parser(subparsers) and run(args) -> int.
COMMANDS = ["predict", "models", "evaluate", "calibrate", "serve", "batch", "video"]

BROKEN_PIPE_STATUS = 141  # what a shell reports for a process ended by SIGPIPE
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


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the process's own command line (not a caller's list)
        argv = _arguments_from_file()
        if argv is None:
            _arguments_via_file()
    try:
        try:
            return _main(argv)
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
        print(f"agegender: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agegender: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
