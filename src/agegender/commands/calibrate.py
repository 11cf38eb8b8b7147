"""``agegender calibrate``: fit calibration parameters on a labelled dataset.

Runs the configuration's models with calibration off over any dataset ``evaluate``
reads (its readers and runner), recovers each face's age distribution from P(age >= v)
at every bin value v, and splits the faces at random (``--seed``): ``--holdout`` of them
are never fitted on and get the before/after figures; the rest fit the age temperature and
kernel by likelihood and, cross-fitted in folds, the recalibration map of each band of
predicted age (see calibration.py), and the gender temperatures. The parameters are
written as a calibration TOML (``--out``; ``--calibration FILE`` applies it, a preset
names its own file in ``agegender/calibrations/``).

Nothing heavy is imported at module level (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

from .. import calibration as cal
from ..config import EstimatorConfig, name_too_long
from ..errors import AgegenderError
from ..evaluate.readers import READERS
from .options import (
    add_estimator_options,
    check_cropped,
    check_folder_of,
    number,
    overrides_from_args,
    refuse_ignored,
)

DEFAULT_HOLDOUT = 0.2
REPORT_THRESHOLDS = (18.0, 21.0, 25.0)
# Fewer labelled faces cannot be cross-fitted in 5 folds (a file fitted on 1 face said
# it had been, with a gender temperature that made every probability 1.00).
MIN_FIT_FACES = 10


def _bands(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ages such as 0,13,25, got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing ages >= 0, got {text!r}")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "calibrate",
        help="fit calibrated uncertainty (interval, P(age >= t), gender) on a labelled dataset",
        description=(
            "Fit the temperature, log-age smoothing and per-band recalibration map (conformal) "
            "of the age distribution and the gender temperatures on a labelled dataset (any "
            "--format evaluate reads); print before/after figures on a held-out part; write "
            "the parameters as a calibration file (--out)."
        ),
    )
    parser.add_argument("source", help="the dataset: a folder, a .mat file, a CSV or a fold file")
    parser.add_argument("--format", required=True, choices=list(READERS), help="label format")
    parser.add_argument("--split", help="the reader's split (as evaluate's --split)")
    parser.add_argument("--root", help="folder relative image paths start from")
    parser.add_argument(
        "--cropped", action="store_true", help="inputs are already faces (no detection)"
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write the calibration TOML here (default: print it on stdout); an existing "
        "file is replaced only with --force",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        help=f"share of faces kept out of the fit for the before/after figures "
        f"(default: {DEFAULT_HOLDOUT})",
    )
    parser.add_argument(
        "--seed", type=number(int, 0), default=0, help="seed of the split (default: 0)"
    )
    parser.add_argument(
        "--mass", type=float, default=0.8, help="interval mass to calibrate (default: 0.8)"
    )
    parser.add_argument(
        "--age-bands",
        type=_bands,
        default=None,
        metavar="A,B,...",
        help="predicted-age bands of the recalibration map (default: 0,5,13,17,21,25,30,45,60)",
    )
    parser.add_argument(
        "--balance",
        choices=tuple(cal.BALANCE),
        default=cal.DEFAULT_BALANCE,
        help="weigh each face in the map and the levels by 1/n (decade: every decade of "
        "true age counts equally), 1/sqrt(n) (sqrt, the default) or 1 (none), n the "
        "faces of its decade",
    )
    parser.add_argument(
        "--gender-bands",
        type=_bands,
        default=None,
        metavar="A,B,...",
        help="predicted-age bands of the gender temperatures (default: 0,13)",
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="leave out images with no face found (default: the whole image is the face)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_estimator_options(parser)
    # calibrate runs the raw outputs: --calibration is refused (_check), so not offered in
    # --help (it read "default: the preset's", as if a calibration applied)
    for action in parser._actions:
        if action.dest == "calibration":
            action.help = argparse.SUPPRESS
    parser.set_defaults(run=run)


def _check(args: argparse.Namespace, cli: dict[str, Any]) -> None:
    if "calibration" in cli:
        raise AgegenderError("calibrate fits the raw model outputs: --calibration has no use here")
    if args.cropped:  # the whole image is the face: refuse what would be ignored
        check_cropped(cli)
    if not 0 < args.holdout < 1:
        raise AgegenderError(f"--holdout {args.holdout:g}: must be between 0 and 1")
    if not 0 < args.mass < 1:
        raise AgegenderError(f"--mass {args.mass:g}: must be between 0 and 1")
    # an option the configuration would ignore, refused as predict refuses it
    refuse_ignored(cli, _config(args, cli))
    if args.out:  # before any model runs (a wrong path must not cost the whole fit)
        out = Path(args.out)
        if out.suffix.lower() != ".toml":
            # also keeps --force from replacing an input image with TOML
            raise AgegenderError(f"--out {args.out}: a calibration file is .toml")
        if os.path.isdir(out):
            raise AgegenderError(f"--out {args.out}: is a folder (give a .toml file)")
        if name_too_long(out.name):  # found only when written, after the fit
            raise AgegenderError(f"--out {args.out}: the name is too long for a file")
        # lexists: a link that leads nowhere is refused too (it was found only when the
        # file was written, after the whole fit)
        if os.path.lexists(out) and not args.force:
            raise AgegenderError(f"--out {args.out}: exists (--force replaces it)")
        for item in _input_files(args, cli):  # not even --force replaces an input
            if os.path.exists(out) and os.path.exists(item) and os.path.samefile(out, item):
                raise AgegenderError(f"--out {args.out}: is an input ({item}); choose another file")
        check_folder_of(f"--out {args.out}", out)


def _input_files(args: argparse.Namespace, cli: dict[str, Any]) -> list[str]:
    """The files the run reads that --out could name: the dataset, and the card TOML
    files of --age-model / --gender-model (CARD=FILE's FILE too)."""
    files = [args.source]
    for ref in (*cli.get("age_models", ()), *cli.get("gender_models", ())):
        if isinstance(ref, str):
            files.extend(part for part in ref.split("=", 1) if part)
    return files


def _write_whole(path: Path, text: str, force: bool) -> None:
    """`text` as the file `path`, whole or not at all: written beside it, then renamed
    there. Written in place, a Ctrl-C, SIGTERM or full disk part way left a truncated
    TOML under the name (and with --force the previous calibration gone)."""
    import tempfile

    where = f"--out {path}"
    if not force and os.path.lexists(path):  # made since the check: still not replaced
        raise AgegenderError(f"{where}: exists (--force replaces it)")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        # (the name cut: a name near the file system's limit must still give a temporary one)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}-", suffix=".part", dir=folder)
    except OSError as error:
        raise AgegenderError(f"{where}: cannot write it ({error.strerror or error})") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o644)  # as every other output (mkstemp's are private)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise AgegenderError(
            f"{where}: cannot write it ({error.strerror or error}); the file there is as it was"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _figures(
    rows: list[int],
    data: dict[str, Any],
    calibration: Any,
    thresholds: tuple[float, ...],
) -> dict[str, Any]:
    """MAE, interval coverage (overall, by decade), ECE/Brier of P(age >= t) and of the
    gender probability (overall, under 13) on `rows`, decoded as the pipeline does."""
    from ..estimates import age_from_distribution, gender_from_probs
    from ..evaluate import metrics

    values = data["values"]
    out: dict[str, Any] = {"n": len(rows)}
    ages_rows = [i for i in rows if data["ages"][i] is not None and data["probs"][i] is not None]
    decoded: dict[int, Any] = {}
    for i in ages_rows:
        decoded[i] = age_from_distribution(
            data["probs"][i],
            values,
            thresholds=thresholds,
            calibration=calibration.age if calibration else None,
        )
    if ages_rows:
        true = [data["ages"][i] for i in ages_rows]
        out["mae"] = metrics.mae([decoded[i].value for i in ages_rows], true)
        cover = metrics.interval_coverage([decoded[i].interval for i in ages_rows], true)
        out["coverage"], out["mean_width"] = cover["coverage"], cover["mean_width"]
        out["median_std"] = sorted(decoded[i].std for i in ages_rows)[len(ages_rows) // 2]
        by_decade: dict[str, Any] = {}
        for i in ages_rows:
            by_decade.setdefault(metrics.decade(data["ages"][i]), []).append(i)
        out["coverage_by_decade"] = {
            name: {
                "n": len(idx),
                "coverage": metrics.interval_coverage(
                    [decoded[i].interval for i in idx], [data["ages"][i] for i in idx]
                )["coverage"],
            }
            for name, idx in sorted(
                by_decade.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+"))
            )
        }
        for t in thresholds:
            rel = metrics.reliability(
                [decoded[i].p_at_least[t] for i in ages_rows],
                [data["ages"][i] >= t for i in ages_rows],
            )
            out[f"p_age_ge_{t:g}"] = {k: rel[k] for k in ("ece", "ece_chance", "brier")}
    gender_rows = [i for i in rows if data["gender_probs"][i] is not None]
    if gender_rows:
        conf, right, child = [], [], []
        for i in gender_rows:
            age = decoded[i].value if i in decoded else data["raw_age"][i]
            g = gender_from_probs(
                data["gender_probs"][i],
                data["gender_labels"],
                calibration.gender if calibration else None,
                age,
            )
            conf.append(g.probability)
            right.append(g.label == data["genders"][i])
            child.append(data["ages"][i] is not None and data["ages"][i] < 13)
        rel = metrics.reliability(conf, right)
        out["gender"] = {k: rel[k] for k in ("n", "ece", "ece_chance", "brier")}
        kids = [k for k, c in enumerate(child) if c]
        if kids:
            rel = metrics.reliability([conf[k] for k in kids], [right[k] for k in kids])
            out["gender_under_13"] = {k: rel[k] for k in ("n", "ece", "ece_chance", "brier")}
    return out


def _config(args: argparse.Namespace, cli: dict[str, Any]) -> EstimatorConfig:
    """The configuration the raw models run with: the preset and the command line's
    options, uncalibrated (with --cropped, the whole image is the face)."""
    from ..config import EstimatorConfig

    overrides = dict(cli, calibration="none")
    if args.cropped:
        overrides.update(detector="none", align="none")
    return EstimatorConfig.from_preset(getattr(args, "preset", "default"), **overrides)


def _collect(args: argparse.Namespace, cli: dict[str, Any]) -> tuple[dict[str, Any], Any, str]:
    """Run the raw models over the dataset: per record its distributions and labels."""
    import numpy as np

    from ..evaluate import readers, runner
    from ..evaluate.metrics import ADIENCE_SPANS
    from ..pipeline import Estimator

    config = _config(args, cli)
    dataset = readers.read_dataset(
        args.format, args.source, split=args.split, cropped=args.cropped, root=args.root
    )
    records = dataset.records
    if not records:
        raise AgegenderError(f"{args.source}: no labelled images")
    estimator = Estimator(config)
    age_task, gender_task = estimator.tasks.get("age"), estimator.tasks.get("gender")
    values = None
    if age_task is not None and age_task.support.kind == "age":
        values = age_task.support.values
        estimator = estimator.derive(age_thresholds=tuple(float(v) for v in values))
    outcomes = runner.run_setting(estimator, records, fallback=not args.no_fallback)
    labels = gender_task.support.labels if gender_task is not None else ()
    data: dict[str, Any] = {
        "values": values,
        "probs": [],
        "ages": [],
        "labels": [],
        "raw_age": [],
        "gender_probs": [],
        "genders": [],
        "gender_labels": labels,
    }
    for record, outcome in zip(records, outcomes, strict=True):
        survival = outcome.final_p(not args.no_fallback)
        probs = None
        if values is not None and survival:
            s = np.array([survival[float(v)] for v in values] + [0.0])
            probs = np.clip(s[:-1] - s[1:], 0.0, None)
            probs = probs / probs.sum() if probs.sum() > 0 else None
        label = None
        if record.age is not None:
            label = (record.age, record.age)
        elif record.age_min is not None and record.age_max is not None:
            label = (record.age_min, record.age_max)  # an age-range label: interval-censored
        elif record.group in ADIENCE_SPANS:
            label = ADIENCE_SPANS[record.group]  # interval-censored
        gender_probs = None
        if (
            outcome.status == "ok"
            and outcome.gender is not None
            and outcome.gender_probability is not None
            and record.gender is not None
        ):
            p = outcome.gender_probability
            gender_probs = np.array([p if g == outcome.gender else 1 - p for g in labels])
        data["probs"].append(probs)
        data["ages"].append(record.age if probs is not None else None)
        data["labels"].append(label if probs is not None else None)
        data["raw_age"].append(None if probs is None else float(probs @ values))
        data["gender_probs"].append(gender_probs)
        data["genders"].append(record.gender)
    source = f"{args.format} {args.source}"
    return data, config, source


def run(args: argparse.Namespace) -> int:
    import random
    import tomllib

    import numpy as np

    cli = overrides_from_args(args)
    _check(args, cli)
    data, config, source = _collect(args, cli)
    n = len(data["probs"])
    order = list(range(n))
    random.Random(args.seed).shuffle(order)
    n_hold = max(1, round(args.holdout * n))
    holdout, rest = sorted(order[:n_hold]), order[n_hold:]
    thresholds = tuple(config.age_thresholds) or REPORT_THRESHOLDS

    age_cal = gender_cal = None
    values = data["values"]
    usable = sorted(i for i in rest if data["labels"][i] is not None)
    gender_rows = [i for i in rest if data["gender_probs"][i] is not None]
    if not rest:
        raise AgegenderError(f"--holdout {args.holdout:g} leaves none of the {n} faces to fit")
    # Each task is fitted on its own labelled faces: MIN_FIT_FACES of them, or none.
    counts = {"age": len(usable) if values is not None else 0, "gender": len(gender_rows)}
    short = {task: k for task, k in counts.items() if 0 < k < MIN_FIT_FACES}
    if short and all(k < MIN_FIT_FACES for k in counts.values()):
        task, k = max(short.items(), key=lambda item: item[1])
        raise AgegenderError(
            f"{source}: {k} labelled faces to fit for {task} (after --holdout); calibrate "
            f"needs at least {MIN_FIT_FACES} (5-fold cross-fitting), and hundreds to be trusted"
        )
    for task, k in short.items():
        print(
            f"agegender: warning: only {k} labelled faces to fit for {task} (after "
            f"--holdout; {MIN_FIT_FACES} needed): no {task} calibration is written",
            file=sys.stderr,
        )
    if values is not None and counts["age"] >= MIN_FIT_FACES:
        width = len(values)
        probs = np.array([p if p is not None else np.ones(width) / width for p in data["probs"]])
        labels = [lab if lab is not None else (0.0, 0.0) for lab in data["labels"]]
        age_cal = cal.fit_age(
            probs,
            values,
            labels,
            usable,
            bands=args.age_bands or cal.DEFAULT_AGE_BANDS,
            mass=args.mass,
            balance=cal.BALANCE[args.balance],
            seed=args.seed,
        )
    exact = sum(1 for i in usable if data["labels"][i][0] == data["labels"][i][1])
    folds = cal.fold_count(exact)
    if age_cal is not None and not age_cal.pit:
        # group labels give the likelihood, not the PIT values the map is fitted on
        print(
            f"agegender: warning: {exact} of the {len(usable)} age labels to fit are exact "
            f"ages ({cal.MIN_BAND} needed for the recalibration map; age groups cannot give "
            "it): the age calibration is one temperature and smoothing, no map per band",
            file=sys.stderr,
        )
    if counts["gender"] >= MIN_FIT_FACES:
        labels_g = data["gender_labels"]
        male = labels_g.index("male")
        gender_cal = cal.fit_gender(
            [float(data["gender_probs"][i][male]) for i in gender_rows],
            [data["genders"][i] == "male" for i in gender_rows],
            [data["raw_age"][i] for i in gender_rows],
            bands=args.gender_bands or cal.DEFAULT_GENDER_BANDS,
        )
    if age_cal is None and gender_cal is None:
        raise AgegenderError(f"{source}: nothing to fit (no labelled face with an estimate)")
    weighting = cal.BALANCE_WORDS[args.balance]
    method = (
        f"the recalibration map cross-fitted in {folds} folds, {weighting}"
        if age_cal is not None and age_cal.pit
        else f"no recalibration map: {exact} exact ages"
        if age_cal is not None
        else "gender only"
    )
    fitted = cal.CalibrationSet(
        age_cal,
        gender_cal,
        tuple(_ids(config.age_models)) if age_cal else (),
        tuple(_ids(config.gender_models)) if gender_cal else (),
        config.age_weights if age_cal else None,
        config.gender_weights if gender_cal else None,
        f"{source}: {len(rest)} faces fitted ({method}), "
        f"{len(holdout)} held out (seed {args.seed})",
        "<fitted>",
    )
    # The figures are those of the file as it is written (its values rounded), so that
    # --calibration FILE gives exactly the estimates and the held-out figures stated here.
    fitted = cal.parse_set(tomllib.loads(cal.to_toml(fitted)), "<fitted>")
    before = _figures(holdout, data, None, thresholds)
    after = _figures(holdout, data, fitted, thresholds)
    text = cal.to_toml(
        fitted,
        [
            f"Written by `agegender calibrate` on {date.today().isoformat()} for preset "
            f"{config.preset}.",
            "Held-out figures (before -> after): " + _summary_line(before, after, thresholds),
        ],
    )
    if args.out:
        _write_whole(Path(args.out), text, args.force)
        print(f"agegender: calibration written to {args.out}", file=sys.stderr)
    if args.json:
        json.dump({"calibration": text, "before": before, "after": after}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not args.out:
        sys.stdout.write(text + "\n")
    print(f"held out: {len(holdout)} of {n} faces ({source}); before -> after calibration")
    _print_table(before, after, thresholds)
    return 0


def _ids(refs: Any) -> list[str]:
    out = []
    for ref in refs:
        if isinstance(ref, str):
            out.append(ref.partition("=")[0] if "=" in ref else ref)
        elif isinstance(ref, tuple):
            out.append(ref[0].id)
        else:
            out.append(str(getattr(ref, "id", ref)))
    # a card given as a file is recorded by its id (as the task compares them)
    from ..cards import get_card

    return [get_card(r).id if r.endswith(".toml") or "/" in r else r for r in out]


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"


def _summary_line(before: dict[str, Any], after: dict[str, Any], thresholds: Any) -> str:
    parts = []
    if "coverage" in before:
        parts.append(
            f"80% interval coverage {_fmt(before['coverage'], True)} -> "
            f"{_fmt(after['coverage'], True)}"
        )
        parts.append(f"MAE {before['mae']:.2f} -> {after['mae']:.2f}")
        t = f"{thresholds[0]:g}"
        parts.append(
            f"ECE P(age>={t}) {_fmt(before[f'p_age_ge_{t}']['ece'])} -> "
            f"{_fmt(after[f'p_age_ge_{t}']['ece'])}"
        )
    if "gender" in before:
        parts.append(
            f"gender ECE {_fmt(before['gender']['ece'])} -> {_fmt(after['gender']['ece'])}"
        )
    return "; ".join(parts)


# ece_chance: the ECE exactly calibrated probabilities would exceed one time in ten on the
# same faces (evaluate.metrics.ece_by_chance): an ECE under it cannot be told from calibrated
_METRIC_NAMES = {"ece": "{} ECE", "ece_chance": "  by chance (90%)", "brier": "{} Brier"}


def _print_table(before: dict[str, Any], after: dict[str, Any], thresholds: Any) -> None:
    rows: list[tuple[str, str, str]] = []
    if "coverage" in before:
        rows += [
            ("MAE", f"{before['mae']:.2f}", f"{after['mae']:.2f}"),
            ("median std", f"{before['median_std']:.2f}", f"{after['median_std']:.2f}"),
            (
                "interval coverage",
                _fmt(before["coverage"], True),
                _fmt(after["coverage"], True),
            ),
            ("interval mean width", f"{before['mean_width']:.1f}", f"{after['mean_width']:.1f}"),
        ]
        for name, entry in before["coverage_by_decade"].items():
            rows.append(
                (
                    f"  coverage {name} (n={entry['n']})",
                    _fmt(entry["coverage"], True),
                    _fmt(after["coverage_by_decade"][name]["coverage"], True),
                )
            )
        for t in thresholds:
            key = f"p_age_ge_{t:g}"
            for metric in ("ece", "ece_chance", "brier"):
                rows.append(
                    (
                        _METRIC_NAMES[metric].format(f"P(age>={t:g})"),
                        _fmt(before[key][metric]),
                        _fmt(after[key][metric]),
                    )
                )
    for key, name in (("gender", "gender"), ("gender_under_13", "gender, under 13")):
        if key in before:
            for metric in ("ece", "ece_chance", "brier"):
                rows.append(
                    (
                        _METRIC_NAMES[metric].format(name)
                        + (f" (n={before[key]['n']})" if metric == "ece" else ""),
                        _fmt(before[key][metric]),
                        _fmt(after[key][metric]),
                    )
                )
    if not rows:
        print("(no held-out face has a label these figures need: nothing to compare)")
        return
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'before':>8}  {'after':>8}")
    for label, b, a in rows:
        print(f"{label:{width}}  {b:>8}  {a:>8}")
