"""``agegender evaluate``: accuracy on a labelled dataset, one or more settings side by side.

Nothing heavy is imported here at module level (``--help`` stays fast): the readers'
registry is plain Python; the runner, metrics and report load in ``run``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AgegenderError
from ..evaluate.readers import READERS, formats_taking
from .options import (
    add_estimator_options,
    check_cropped,
    overrides_from_args,
    refuse_ignored,
)

if TYPE_CHECKING:
    from ..evaluate import runner

SHOW_UNREADABLE = 10
SHOW_PROBLEMS = 10  # malformed label rows said on stderr (report.json lists up to 100)
MIN_GROUP_N = 20  # metrics.MIN_GROUP_N, repeated here so --help does not import numpy
# Options that only steer face detection, which --cropped skips (the image is the face).


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
        "--format",
        required=True,
        choices=list(READERS),
        help="how the labels are stored: "
        + "; ".join(f"{name}: {entry.description}" for name, entry in READERS.items()),
    )
    parser.add_argument(
        "--split",
        help="; ".join(f"{name}: {e.split}" for name, e in READERS.items() if e.split),
    )
    parser.add_argument(
        "--cropped",
        action="store_true",
        help="inputs are already faces: no detection, the whole image is the face"
        + "".join(f" ({name}: its face crops)" for name in formats_taking("cropped")),
    )
    parser.add_argument(
        "--root",
        help=f"folder that relative image paths start from ({', '.join(formats_taking('root'))})",
    )
    parser.add_argument(
        "--group-column",
        metavar="NAME",
        help="the labels' column of demographic groups (e.g. ethnicity) that per-group "
        "figures and the largest gaps are computed over (default: race, when there is one; "
        f"{', '.join(formats_taking('group_column'))}). A csv with age_min and age_max "
        "columns gives age-group labels: a row spanning more than one year is scored by "
        "group accuracy (age_min <= estimate < age_max + 1), never by MAE against its age "
        "cell",
    )
    parser.add_argument(
        "--min-group-size",
        type=int,
        default=MIN_GROUP_N,
        metavar="N",
        help="a race/group measured on fewer faces is listed but left out of the largest "
        f"gaps (default: {MIN_GROUP_N})",
    )
    parser.add_argument("--limit", type=int, help="evaluate a random sample of this many images")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the --limit sample (default: 0)"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="SETTING",
        help="several settings over the same images: PRESET or PRESET:age=CARD[+CARD],"
        "gender=CARD,age_weights=W[+W],gender_weights=W[+W],detector=NAME,tta=on|off "
        "(cards named here run with equal weights unless their weights are given); every "
        "other option applies to every setting",
    )
    parser.add_argument("--k", type=float, default=5, help="CS@k: within k years (default: 5)")
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write report.json, report.md, predictions.csv and plots into this folder "
        "(created if missing). Checked before the evaluation starts: an existing file there "
        "is replaced only if an earlier evaluate wrote it (listed in DIR/.agegender-report); "
        "never a file of the dataset, nor a folder inside the dataset's; one evaluate at a "
        "time writes a folder",
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


def _check_options(args: argparse.Namespace, cli: dict[str, Any]) -> None:
    """Refuse option combinations that would be ignored (never ignore an option)."""
    if args.limit is not None and args.limit <= 0:
        raise AgegenderError(f"--limit {args.limit}: must be a positive number of images")
    if args.seed is not None and args.limit is None:
        raise AgegenderError("--seed picks the --limit sample: give --limit too")
    if args.min_group_size < 1:
        raise AgegenderError(f"--min-group-size {args.min_group_size}: must be 1 or more")
    if not math.isfinite(args.k) or args.k <= 0:
        raise AgegenderError(f"--k {args.k:g}: must be a positive number")
    if args.compare and hasattr(args, "preset"):
        raise AgegenderError(
            "--preset with --compare: each setting names its preset (--compare PRESET ...)"
        )
    if args.report is not None and not args.report.strip():
        raise AgegenderError("--report '': give the folder to write the report into")
    if args.seed is not None and args.seed < 0:
        raise AgegenderError(f"--seed {args.seed}: must be >= 0")
    if args.cropped:
        check_cropped(cli)


# The options that name models: whether they exist is each setting's own outcome.
_MODEL_OPTIONS = ("preset", "age_models", "gender_models", "age_weights", "gender_weights")


def _check_settings(
    args: argparse.Namespace, cli: dict[str, Any], settings: list[runner.Setting]
) -> None:
    """Usage errors (exit 2) before the dataset is read: a bad command-line value (it
    would fail every setting), the single setting that cannot be made, two --compare
    settings that are the same configuration. A --compare setting of its own that
    cannot be made, or a model that is not installed, stays a row of the report."""
    from ..calibration import load_file
    from ..config import EstimatorConfig

    EstimatorConfig(**{k: v for k, v in cli.items() if k not in _MODEL_OPTIONS}).validate()
    if cli.get("calibration") not in (None, "", "none", "preset"):
        load_file(cli["calibration"])
    if not args.compare:
        (setting,) = settings
        if setting.error is not None:
            raise AgegenderError(setting.error)
        if setting.config is not None:
            refuse_ignored(cli, setting.config)  # as predict refuses it
        return
    _refuse_ignored_everywhere(cli, settings)
    seen: dict[str, str] = {}
    for setting in settings:
        if setting.config is None:
            continue
        key = json.dumps(setting.config.as_dict(), sort_keys=True, default=str)
        if key in seen:
            raise AgegenderError(
                f"--compare {seen[key]} and {setting.name}: the same setting is named twice"
            )
        seen[key] = setting.name


def _refuse_ignored_everywhere(cli: dict[str, Any], settings: list[runner.Setting]) -> None:
    """A command-line option every --compare setting would ignore (--upsample where no
    setting runs dlib, --tta-margin where none runs TTA, ...) is refused, as predict
    refuses it; one that some setting uses is kept."""
    made = [(setting.name, setting.config) for setting in settings if setting.config is not None]
    problems = []
    for name, config in made:
        try:
            refuse_ignored(cli, config)
        except AgegenderError as error:
            problems.append(f"{name}: {error}")
    if made and len(problems) == len(made):
        raise AgegenderError(
            f"an option every --compare setting would ignore ({'; '.join(problems)})"
        )


def _name(preset: str, cli: dict[str, Any]) -> str:
    """The single setting's name: the preset and the setting keys given on the command line."""
    options = []
    for key, field in (("age", "age_models"), ("gender", "gender_models")):
        if field in cli:
            options.append(f"{key}=" + "+".join(str(ref) for ref in cli[field]))
    if "detector" in cli:
        options.append(f"detector={cli['detector']}")
    if "tta" in cli:
        options.append(f"tta={'on' if cli['tta'] else 'off'}")
    return preset + (":" + ",".join(options) if options else "")


def settings_from_args(args: argparse.Namespace) -> list[runner.Setting]:
    """The --compare settings, or one setting from --preset; every option given on the
    command line applies to every setting (a setting's own keys override it)."""
    from ..evaluate import runner

    cli = overrides_from_args(args)
    shared = dict(cli)
    if args.cropped:
        shared.update(detector="none", align="none")  # the whole image is the face
        if args.compare:
            for spec in args.compare:
                detector = runner.setting_overrides(spec)[1].get("detector", "none")
                if detector != "none":
                    raise AgegenderError(
                        f"--cropped with --compare {spec}: with --cropped the whole image is "
                        "the face (no detector)"
                    )
    if args.compare:
        return [runner.parse_setting(spec, shared) for spec in args.compare]
    preset = getattr(args, "preset", "default")
    return [replace(runner.parse_setting(preset, shared), name=_name(preset, cli))]


def _progress(enabled: bool) -> Callable[[str, int], Callable[[int], None]] | None:
    if not enabled:
        return None
    from tqdm import tqdm

    def start(name: str, total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, desc=name, unit="img", file=sys.stderr, mininterval=0.5, leave=True)

        def advance(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return advance

    return start


def _dataset_folders(args: argparse.Namespace) -> list[str]:
    """Folders the dataset is read from: the report must not go inside them."""

    folders = [args.source] if Path(args.source).is_dir() else []
    if args.root:
        folders.append(args.root)
    return folders


def run(args: argparse.Namespace) -> int:
    from ..images import remove_output_folder

    cli = overrides_from_args(args)
    _check_options(args, cli)
    settings = settings_from_args(args)
    _check_settings(args, cli, settings)
    folders = _dataset_folders(args)
    from ..evaluate import report

    made_here = False
    held = None
    try:
        if args.report:  # before reading anything: a wrong path costs nothing
            made_here = report.check_target(args.report, dataset_folders=folders)
            held = report.hold(args.report)  # one evaluate at a time writes a report folder
        return _evaluate_into(args, settings, folders, made_here)
    except report.ReportBusy:  # the folder is the other run's now, whoever made it
        raise
    except BaseException:
        # an error or an interrupt before the report was written: the folder this run
        # made for it is not left behind empty
        if made_here:
            remove_output_folder(Path(args.report))
        raise
    finally:
        if held is not None:
            os.close(held)


def _evaluate_into(
    args: argparse.Namespace, settings: list[runner.Setting], folders: list[str], made_here: bool
) -> int:
    from ..evaluate import readers, report, runner

    dataset = readers.read_dataset(
        args.format,
        args.source,
        split=args.split,
        cropped=args.cropped,
        root=args.root,
        group_column=args.group_column,
    )
    for problem in dataset.problems[:SHOW_PROBLEMS]:
        print(f"agegender: warning: {problem} (row left out)", file=sys.stderr)
    if len(dataset.problems) > SHOW_PROBLEMS:
        print(
            f"agegender: warning: {len(dataset.problems) - SHOW_PROBLEMS} more malformed rows "
            "left out (--report lists up to 100)",
            file=sys.stderr,
        )
    if not dataset.records:
        dropped = ", ".join(f"{n} {why}" for why, n in dataset.dropped.items()) or "nothing found"
        raise AgegenderError(f"{args.source}: no labelled images to evaluate ({dropped})")
    if args.report:  # and with the inputs known, before the work
        inputs = [args.source, *(r.path for r in dataset.records)]
        # Nor among the images (a labels file's may be anywhere): inside their folder, the
        # report is marked as output so that folder searches skip its plots.
        beside = sorted({os.path.dirname(os.path.abspath(r.path)) for r in dataset.records})
        report.check_target(
            args.report,
            inputs=inputs,
            dataset_folders=folders,
            image_folders=beside,
            made_here=made_here,
        )
    seed = 0 if args.seed is None else args.seed
    records = readers.sample(dataset.records, args.limit, seed)
    runs = runner.run(
        records,
        settings,
        fallback=not args.no_fallback,
        progress=_progress(not args.no_progress and sys.stderr.isatty()),
    )
    result = report.build(
        dataset, records, runs, k=args.k, cropped=args.cropped, min_group=args.min_group_size
    )

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
        found = entry["metrics"]["faces_found"]
        if found["of"] and not found["n"]:
            smaller = getattr(args, "min_face", None)
            print(
                f"agegender: warning: setting {entry['name']}: no face found in any of the "
                f"{found['of']} readable images"
                + (f" (faces under --min-face {smaller} px are not counted)" if smaller else ""),
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
    _warn_unscored_thresholds(result)
    if args.report:
        try:
            written = report.write(args.report, result, records, runs)
        except AgegenderError as error:  # the table and JSON below still come out
            failed = True
            print(f"agegender: error: {error}", file=sys.stderr)
        else:
            print(
                f"agegender: report written to {args.report} ({len(written)} files)",
                file=sys.stderr,
            )
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
                f", evaluated a sample of {len(records)} (seed {seed})"
                if len(records) < ds["records"]
                else ""
            )
            + f"; {result['mode']}"
        )
        print(report.table(result))
        fairness = report.fairness_text(result)
        if fairness:
            print()
            print(fairness)
    return 1 if failed else 0


def _warn_unscored_thresholds(result: dict[str, Any]) -> None:
    """An --age-threshold that no image could be scored at is said, not silently dropped."""
    counts: dict[str, int] = {}
    for entry in result["settings"]:
        scored = entry.get("metrics", {}).get("with_fallback", {}).get("thresholds", {})
        for t, numbers in scored.items():
            counts[t] = counts.get(t, 0) + numbers["n"]
    for t, n in counts.items():
        if n == 0:
            print(
                f"agegender: warning: --age-threshold {t}: no image has both an age label "
                "on one side of it and an age estimate; nothing scored",
                file=sys.stderr,
            )
