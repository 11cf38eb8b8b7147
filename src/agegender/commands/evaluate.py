"""``agegender evaluate``: accuracy on a labelled dataset, one or more settings side by side."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from tqdm import tqdm

from ..errors import AgegenderError
from ..evaluate import readers, report, runner
from .options import add_estimator_options
from .options import overrides_from_args as estimator_kwargs  # interim: evaluate moves to configs

SHOW_UNREADABLE = 10


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "evaluate",
        help="measure age/gender accuracy on a labelled dataset",
        description=(
            "Measure MAE, RMSE, CS@k, epsilon-error, gender and group accuracy on a published "
            "benchmark or your own CSV, for one or several settings over the same images."
        ),
    )
    parser.add_argument("source", help="the dataset: a folder, a .mat file, a CSV or a fold file")
    parser.add_argument(
        "--format", required=True, choices=list(readers.READERS), help="how the labels are stored"
    )
    parser.add_argument(
        "--split",
        help="appa-real: train, valid or test; adience: fold numbers (0,1); fgnet: subject ids",
    )
    parser.add_argument(
        "--cropped",
        action="store_true",
        help="inputs are already faces: no detection, the whole image is the face "
        "(appa-real: use the _face.jpg crops)",
    )
    parser.add_argument(
        "--root", help="folder that relative image paths start from (csv, chalearn)"
    )
    parser.add_argument("--limit", type=int, help="evaluate a random sample of this many images")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the --limit sample (default: 0)"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="SETTING",
        help="several settings over the same images: PRESET or PRESET:age=CARD,gender=CARD,"
        "detector=NAME,tta=on|off",
    )
    parser.add_argument("--k", type=float, default=5, help="CS@k: within k years (default: 5)")
    parser.add_argument(
        "--report", metavar="DIR", help="write report.json, report.md, predictions.csv, plots"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="do not estimate on the whole image when no face is found",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_estimator_options(parser)
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> list[runner.Setting]:
    """The --compare settings, or one setting from --preset and the model options."""
    # A setting overrides the models, detector and TTA; every other option is shared.
    per_setting = ("age_model", "gender_model", "detector", "tta")
    extra = {k: v for k, v in estimator_kwargs(args).items() if k not in per_setting}
    base = runner.Setting(
        args.preset, args.preset, args.age_model, args.gender_model, args.detector, args.tta, extra
    )
    if not args.compare:
        options = [
            f"{key}={value}"
            for key, value in (
                ("age", args.age_model),
                ("gender", args.gender_model),
                ("detector", args.detector),
            )
            if value
        ]
        if args.tta is not None:
            options.append(f"tta={'on' if args.tta else 'off'}")
        base.name = args.preset + (":" + ",".join(options) if options else "")
        return [base]
    if len(set(args.compare)) != len(args.compare):
        raise AgegenderError("--compare: the same setting is named twice")
    return [runner.parse_setting(spec, base) for spec in args.compare]


def _progress(enabled: bool) -> Callable[[str, int], Callable[[int], None]] | None:
    if not enabled:
        return None

    def start(name: str, total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, desc=name, unit="img", file=sys.stderr, mininterval=0.5, leave=True)

        def advance(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return advance

    return start


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit <= 0:
        raise AgegenderError(f"--limit {args.limit}: must be a positive number of images")
    if args.k <= 0:
        raise AgegenderError(f"--k {args.k:g}: must be positive")
    dataset = readers.read_dataset(
        args.format, args.source, split=args.split, cropped=args.cropped, root=args.root
    )
    if not dataset.records:
        dropped = ", ".join(f"{n} {why}" for why, n in dataset.dropped.items()) or "nothing found"
        raise AgegenderError(f"{args.source}: no labelled images to evaluate ({dropped})")
    records = readers.sample(dataset.records, args.limit, args.seed)
    settings = settings_from_args(args)
    runs = runner.run(
        records,
        settings,
        cropped=args.cropped,
        fallback=not args.no_fallback,
        progress=_progress(not args.no_progress),
    )
    result = report.build(dataset, records, runs, k=args.k, cropped=args.cropped)

    failed = False
    for entry in result["settings"]:
        if "error" in entry:
            failed = True
            print(f"agegender: error: setting {entry['name']}: {entry['error']}", file=sys.stderr)
            continue
        unreadable = entry["metrics"]["unreadable_images"]
        if unreadable and len(unreadable) == entry["metrics"]["images"]:
            failed = True
            print(
                f"agegender: error: setting {entry['name']}: none of the {len(unreadable)} images "
                "could be read (wrong folder or --root?)",
                file=sys.stderr,
            )
        for item in unreadable[:SHOW_UNREADABLE]:
            print(f"agegender: warning: {item['error']}", file=sys.stderr)
        if len(unreadable) > SHOW_UNREADABLE:
            print(
                f"agegender: warning: {len(unreadable) - SHOW_UNREADABLE} more unreadable images "
                "(--report lists all)",
                file=sys.stderr,
            )
    if args.report:
        written = report.write(args.report, result, records, runs)
        print(f"agegender: report written to {args.report} ({len(written)} files)", file=sys.stderr)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        ds = result["dataset"]
        dropped = "; ".join(f"{n} {why}" for why, n in ds["dropped"].items())
        print(
            f"{ds['format']} {ds['source']}: {ds['records']} labelled images"
            + (f" (dropped: {dropped})" if dropped else "")
            + (
                f", evaluated a sample of {len(records)} (seed {args.seed})"
                if len(records) < ds["records"]
                else ""
            )
            + f"; {result['mode']}"
        )
        print(report.table(result))
    return 1 if failed else 0
