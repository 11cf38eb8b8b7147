"""``agegender models``: list, pull, verify and import the files the model cards name."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .. import cards as cardlib
from .. import store
from ..cards import ModelCard
from ..errors import AgegenderError, CardError
from ..presets import presets
from ..store import DownloadPolicy

_POLICY = DownloadPolicy()  # the defaults the options show


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "models",
        help="list, download, verify and import model files",
        description="Model files: where they come from, whether they are here and intact.",
    )
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="known models and presets, installed or not")
    listing.add_argument("--json", action="store_true", help="one JSON array of models")
    listing.set_defaults(run=run_list)

    pull = actions.add_parser(
        "pull",
        help="download the files of presets or cards",
        description="Download, resume and check the files of presets or model cards. "
        "A file already installed is re-hashed and kept when it matches. An INT8 card "
        "(such as centerface-int8) gets its fp32 card's file first, then its INT8 copy is "
        "built here from it and the quantization ranges shipped in the package (no "
        "calibration data needed; the same bytes on every build with one ONNX Runtime).",
    )
    pull.add_argument("names", nargs="+", metavar="PRESET|CARD", help="preset names or card ids")
    pull.add_argument(
        "--offline",
        action="store_true",
        help="never touch the network (also AGEGENDER_OFFLINE=1): say what to fetch instead",
    )
    pull.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=_POLICY.timeout,
        help=f"seconds per connect/read (default: {_POLICY.timeout:g})",
    )
    pull.add_argument(
        "--retries",
        type=_count,
        default=_POLICY.retries,
        metavar="N",
        help="after a try that brings no new bytes, try again up to N times before giving up; "
        f"a try that brings bytes resets the count (default: {_POLICY.retries})",
    )
    pull.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    pull.set_defaults(run=_store_errors(run_pull))

    verify = actions.add_parser(
        "verify", help="re-hash installed files; exit 1 if one does not match its card"
    )
    verify.add_argument(
        "names", nargs="*", metavar="PRESET|CARD", help="only these (default: every card)"
    )
    verify.set_defaults(run=run_verify)

    imp = actions.add_parser(
        "import",
        help="copy a model file you already have into the store",
        description="Copy FILE into the store. It is recognised by its sha256; a file that "
        "matches no card is refused unless --card names the card it follows (it is then "
        "stored as unverified). For a card whose file is a member of a PyPI wheel or an npm "
        "package, FILE may be the wheel or the .tgz itself: the member is extracted and must "
        "match the card's sha256.",
    )
    imp.add_argument("file", metavar="FILE", help="a model file, or a wheel / .tgz holding it")
    imp.add_argument(
        "--card",
        metavar="ID",
        help="the card (id or TOML path) FILE follows (a model file's hash is then not checked)",
    )
    imp.set_defaults(run=_store_errors(run_import))


def expand_names(names: list[str]) -> list[ModelCard]:
    """Preset names become their cards (heads, and the detector's when it runs a model
    file); card ids (or card TOML paths) stay themselves."""
    from ..faces import DETECTORS

    known = presets()
    result: list[ModelCard] = []
    for name in names:
        if name in known:
            spec = DETECTORS.get(known[name].detector)
            detector = () if spec is None or spec.card is None else (spec.card,)
            ids = (*known[name].age, *known[name].gender, *detector)
            found = [cardlib.get_card(i) for i in ids]
        elif name.endswith(".toml") or "/" in name or "\\" in name:
            found = [cardlib.get_card(name)]  # a card file: its own error names it
        else:
            try:
                found = [cardlib.get_card(name)]
            except CardError:
                raise CardError(
                    f"{name!r} is neither a preset ({', '.join(known)}) nor a known model card; "
                    "see 'agegender models list'"
                ) from None
        result.extend(c for c in found if c.id not in {r.id for r in result})
    return result


def _source(card: ModelCard) -> str:
    """The SOURCE column: the URL's host, ``wheel NAME==V``, ``npm NAME@V``, ``package P``."""
    if card.source.url:
        return urlsplit(card.source.url).netloc
    return card.source.origin


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def model_entries() -> list[dict[str, Any]]:
    """What ``models list --json`` prints: one object per built-in card.

    The card's public description (``ModelCard.to_dict``, as the server's ``/v1/models``
    gives it), the flat source fields earlier versions printed, and the install state.
    """
    layout = store.StoreLayout.default()
    entries = []
    for card in cardlib.builtin_cards().values():
        state = store.install_state(card, layout)
        described = card.to_dict(public=True)
        entries.append(
            {
                "name": card.id,
                **described,
                "file": card.source.file,
                "bytes": card.source.bytes,
                "sha256": card.source.sha256,
                "url": card.source.url,
                "package": card.source.package,
                "wheel": card.source.wheel,
                "npm": card.source.npm,
                "member": card.source.member,
                "source_kind": card.source.kind,
                "status": state.status,
                "installed": state.status in ("installed", "wrong-size", "unverified"),
                "path": str(state.path) if state.path is not None else None,
                "store_path": str(layout.model_path(card)) if card.source.stored else None,
            }
        )
    return entries


def run_list(args: argparse.Namespace) -> int:
    entries = model_entries()
    if args.json:
        json.dump(entries, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    cards = cardlib.builtin_cards()
    rows = [("MODEL", "TASK", "STATUS", "SIZE", "SOURCE")]
    rows += [
        (e["name"], e["task"], e["status"], _size(e["bytes"]), _source(cards[e["name"]]))
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"\nstore: {store.models_dir()}")
    print("presets (agegender models pull PRESET; agegender predict --preset PRESET):")
    for preset in presets().values():
        models = " + ".join(
            f"{card}?" if card in preset.optional else card
            for card in (*preset.age, *preset.gender)
        )
        tta = "" if preset.tta else ", no TTA"
        if preset.tta and preset.tta_gated and preset.tta_margin < 0.5:
            gated = ", ".join(preset.tta_gated)
            tta = f", TTA of {gated} only when gender is within {preset.tta_margin:g} of 0.5"
        mirror = " searching mirror images too" if preset.detect_mirror else ""
        print(f"  {preset.name}: {models} (detector {preset.detector}{mirror}{tta})")
    if any(p.optional for p in presets().values()):
        print("  (CARD? joins only when its file is installed)")
    from ..faces import DETECTORS

    print("detectors (agegender predict --detector NAME):")
    for spec in DETECTORS.values():
        print(f"  {spec.name}: {spec.description}")
    return 0


def _error(message: str) -> None:
    print(f"agegender: error: {message}", file=sys.stderr)


def _store_errors(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """A store that cannot be written (read-only, AGEGENDER_HOME a file, ...): one line
    naming the path, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except OSError as error:
            where = error.filename or store.home()
            raise AgegenderError(
                f"model store: {where}: {error.strerror or error} (AGEGENDER_HOME is "
                f"{store.home()})"
            ) from None

    return run


def run_pull(args: argparse.Namespace) -> int:
    failures = 0
    progress = False if args.no_progress else None
    policy = DownloadPolicy(timeout=args.timeout, retries=args.retries, offline=args.offline)
    for card in expand_names(args.names):
        try:
            result = store.pull(card, policy=policy, progress=progress)
        except AgegenderError as error:
            _error(str(error))
            failures += 1
            continue
        src = card.source
        fetched = (
            f"converted {src.member} ({src.convert}) from {src.origin} to ONNX, size and "
            "sha256 verified"
            if src.convert
            else f"extracted {src.member} from {src.origin}, size and sha256 verified"
            if src.member
            else "downloaded and verified"
        )
        what = {
            "downloaded": fetched,
            "present": "already installed, sha256 verified",
            "package": f"ships with package {card.source.package}",
            "local": f"read from next to its card, {_local_checks(card)}",
            "built": f"INT8 copy of {card.source.quantize} built from its verified file and "
            f"the shipped ranges (quantization/{card.source.ranges}), sha256 recorded",
        }[result.action]
        print(f"{card.id}: {what}: {result.path}")
    return 1 if failures else 0


def _local_checks(card: ModelCard) -> str:
    """What a pull checked of a file beside its card: only what the card names."""
    named = [
        what
        for what, given in (("size", card.source.bytes), ("sha256", card.source.sha256))
        if given is not None
    ]
    if not named:
        return "not checked (the card names no size or sha256)"
    return " and ".join(named) + " checked"


def run_verify(args: argparse.Namespace) -> int:
    cards = expand_names(args.names) if args.names else list(cardlib.builtin_cards().values())
    failed = 0
    for card in cards:
        result = store.verify(card)
        where = f" {result.path}" if result.path else ""
        print(f"{result.status:<10}  {card.id}{where}: {result.detail}")
        if result.failed:
            failed += 1
            if card.source.stored and result.status == "mismatch":
                _error(f"{card.id}: run 'agegender models pull {card.id}' to replace it")
    return 1 if failed else 0


def run_import(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = store.import_file(args.file, args.card)
    for warning in caught:
        print(f"agegender: warning: {warning.message}", file=sys.stderr)
    if result.action == "package":
        print(
            f"{result.card.id}: already available: this file ships with package "
            f"{result.card.source.package} ({result.path}); nothing was copied"
        )
        return 0
    for each in (result, *result.others):  # an archive may hold several cards' members
        state = "verified (sha256 matches the card)" if each.verified else "UNVERIFIED"
        print(f"{each.card.id}: {state}: {each.path}")
    return 0
