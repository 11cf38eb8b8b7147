"""Report: the numbers as a stdout table, one JSON object, a Markdown page and PNG plots.

matplotlib is imported only when plots are drawn, with the Agg backend (no display).

The report folder (``--report DIR``) is checked before any work (:func:`check_target`) and
again before each file is written. agegender writes only the files in ``REPORT_FILES``
and lists what it wrote in ``DIR/.agegender-report`` (JSON); an existing file of those
names is replaced only when that list names it, so a file agegender did not write (or an
input of the evaluation) is never overwritten. Every file is first written whole beside
its name, and only then are they all renamed into place, one after another: an
interrupted write (Ctrl-C, SIGTERM, a full disk) leaves the previous report whole, not
some of its files replaced by this run's.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AgegenderError
from ..locking import LockHeld, try_exclusive
from .metrics import GENDERS, MIN_GROUP_N, clean, summarize
from .readers import Dataset, Record

if TYPE_CHECKING:
    from .runner import SettingRun

PLOT_BIN = 5  # years per bin on the error-by-age curve
MANIFEST = ".agegender-report"
WRITTEN_BY = "agegender evaluate"
REPORT_FILES = (
    "report.json",
    "report.md",
    "predictions.csv",
    "error_by_age.png",
    "predicted_vs_true.png",
    "gender_confusion.png",
    "reliability.png",
)


class ReportError(AgegenderError):
    """The report cannot be written where asked without losing a file, or at all."""


class ReportBusy(ReportError):
    """Another evaluate holds the report folder (its files would mix with ours)."""


def hold(directory: str | Path) -> int:
    """Lock the report folder (made by check_target) for this run: an exclusive flock on
    the folder itself, held while the returned descriptor is open (the caller closes it
    when the run ends; a killed run's lock goes with its process). A second evaluate
    writing to the same folder would rename its files among this run's (report.json of
    one, report.md of the other) or remove the folder this run made: it stops with
    ReportBusy, one line, before reading anything. On a file system that has no flock
    the run goes on unlocked."""
    where = f"--report {directory}"
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise ReportError(f"{where}: cannot open it ({error.strerror or error})") from None
    try:
        try_exclusive(fd)  # False, no flock on this file system: the run goes on unlocked
    except LockHeld:
        os.close(fd)
        raise ReportBusy(
            f"{where}: another agegender evaluate is writing its report there; "
            "wait for it to end or choose another folder"
        ) from None
    return fd


def build(
    dataset: Dataset,
    records: Sequence[Record],
    runs: Sequence[SettingRun],
    *,
    k: float = 5,
    cropped: bool = False,
    min_group: int = MIN_GROUP_N,
) -> dict[str, Any]:
    """The whole evaluation as one JSON-able object; `min_group`: the fewest faces a
    race (or --group-column) group needs to enter the fairness gaps."""
    settings = []
    for run in runs:
        config = run.setting.config
        entry: dict[str, Any] = {"name": run.setting.name}
        if config is not None:
            options = config.as_dict()
            for key in ("preset", "age_models", "gender_models", "detector", "tta"):
                entry[key] = options[key]
            entry["config"] = options
        if run.error is not None:
            entry["error"] = run.error
        else:
            entry["metrics"] = summarize(
                records,
                run.outcomes,
                k=k,
                groups=run.groups,
                thresholds=config.age_thresholds if config is not None else (),
                group_column=dataset.group_column,
                min_group=min_group,
            )
        settings.append(entry)
    return clean(
        {
            "dataset": dataset.summary(),
            "evaluated": len(records),
            "mode": "cropped (whole image is the face)"
            if cropped
            else "full pipeline (detect, align, estimate)",
            "k": k,
            "settings": settings,
        }
    )


def _fmt(value: Any, kind: str = "f2") -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "f3":
        return f"{value:.3f}"
    if kind == "pts":  # a gap between two shares, in percentage points
        return f"{100 * value:.1f} pts"
    return f"{value:.2f}"


def _get(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table; columns without any value are left out."""
    cs = f"cs@{report['k']:g}"
    columns: list[tuple[str, tuple[str, ...], str]] = [
        ("images", ("images",), "int"),
        ("unreadable", ("unreadable",), "int"),
        ("faces found", ("faces_found", "share"), "pct"),
        ("MAE", ("excluding_no_face", "age", "mae"), "f2"),
        ("RMSE", ("excluding_no_face", "age", "rmse"), "f2"),
        (cs.upper(), ("excluding_no_face", "age", cs), "pct"),
        ("eps-error", ("excluding_no_face", "age", "epsilon_error"), "f3"),
        ("MAE vs real", ("excluding_no_face", "age_vs_real", "mae"), "f2"),
        ("MAE w/ fallback", ("with_fallback", "age", "mae"), "f2"),
        ("interval cover", ("excluding_no_face", "interval", "coverage"), "pct"),
        ("gender acc", ("excluding_no_face", "gender", "accuracy"), "pct"),
        ("gender ECE", ("excluding_no_face", "gender", "ece"), "f3"),
        ("by chance", ("excluding_no_face", "gender", "ece_chance"), "f3"),
        ("gender ECE <13", ("under_13", "gender", "ece"), "f3"),
        ("<13 by chance", ("under_13", "gender", "ece_chance"), "f3"),
        ("group acc", ("excluding_no_face", "groups", "accuracy"), "pct"),
        ("1-off", ("excluding_no_face", "groups", "one_off"), "pct"),
        ("gender gap", ("fairness", "gaps", "gender_accuracy", "gap"), "pts"),
        ("MAE gap", ("fairness", "gaps", "mae", "gap"), "f2"),
        ("group acc gap", ("fairness", "gaps", "group_accuracy", "gap"), "pts"),
        ("fold-mean MAE", ("fold_mean", "mae"), "f2"),
        ("fold-mean group acc", ("fold_mean", "group_accuracy"), "pct"),
    ]
    for t in thresholds_of(report):
        where = ("excluding_no_face", "thresholds", t)
        columns += [
            (f">={t} acc", (*where, "accuracy"), "pct"),
            (f"<{t} accepted", (*where, "false_accept"), "pct"),
            (f">={t} rejected", (*where, "false_reject"), "pct"),
            (f"P>={t} ECE", (*where, "ece"), "f3"),
            ("by chance", (*where, "ece_chance"), "f3"),
            (f"P>={t} Brier", (*where, "brier"), "f3"),
        ]
    present = [
        c
        for c in columns
        if any(_get(s.get("metrics", {}), *c[1]) is not None for s in report["settings"])
    ]
    header = ["setting", *[c[0] for c in present]]
    body = []
    for s in report["settings"]:
        if "error" in s:
            body.append([s["name"], f"error: {s['error']}"])
            continue
        cells = [s["name"]]
        for _, path, kind in present:
            value = _get(s["metrics"], *path)
            cells.append(str(value) if kind == "int" and value is not None else _fmt(value, kind))
        body.append(cells)
    return header, body


def thresholds_of(report: dict[str, Any]) -> list[str]:
    """The --age-threshold values the report scored, as their JSON keys ("18")."""
    seen: dict[str, None] = {}
    for s in report["settings"]:
        for t in _get(s.get("metrics", {}), "excluding_no_face", "thresholds") or {}:
            seen[t] = None
    return list(seen)


def table(report: dict[str, Any]) -> str:
    """The summary as aligned plain text for stdout; a setting that did not run gets its
    error after its name instead of numbers."""
    header, body = rows(report)
    failed = {s["name"] for s in report["settings"] if "error" in s}
    full = [header, *(r for r in body if r[0] not in failed)]
    widths = [max(len(r[i]) for r in full) for i in range(len(header))]
    widths[0] = max(len(r[0]) for r in [header, *body])
    lines = []
    for r in [header, *body]:
        if r is not header and r[0] in failed:
            lines.append(f"{r[0].ljust(widths[0])}  {r[1]}")
        else:
            cells = (
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            lines.append("  ".join(cells))
    return "\n".join(lines)


FAIRNESS_COLUMNS = (
    ("gender acc", "gender_accuracy", "pct"),
    ("MAE", "mae", "f2"),
    ("group acc", "group_accuracy", "pct"),
)


def fairness_rows(fair: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one setting's per-group table: images, faces found, and each
    figure measured on any group with the count it is over; a group left out of the gaps
    for too few faces is marked with *."""
    figures = [c for c in FAIRNESS_COLUMNS if fair["gaps"].get(c[1]) is not None]
    excluded = {name for gap in fair["gaps"].values() for name in gap["excluded"]}
    header = [fair["column"], "images", "faces found"]
    for title, _, _ in figures:
        header += [title, "n"]
    body = []
    for name, row in fair["groups"].items():
        cells = [name + (" *" if name in excluded else ""), str(row["images"] or 0)]
        cells.append(_fmt(row["faces_found"], "pct"))
        for _, key, kind in figures:
            cells += [_fmt(row[key], kind), str(row[f"{key}_n"])]
        body.append(cells)
    return header, body


def gap_lines(fair: dict[str, Any]) -> list[str]:
    """One line per figure: the largest gap and its two groups, and the groups left out."""
    lines = []
    for title, key, kind in FAIRNESS_COLUMNS:
        gap = fair["gaps"].get(key)
        if gap is None:
            continue
        if gap["gap"] is None:
            text = f"largest {title} gap: - (fewer than two groups with {fair['min_n']}+ faces)"
        else:
            size = _fmt(gap["gap"], "pts" if kind == "pct" else kind)
            text = (
                f"largest {title} gap: {size} ({gap['max']['group']} "
                f"{_fmt(gap['max']['value'], kind)}, {gap['min']['group']} "
                f"{_fmt(gap['min']['value'], kind)})"
            )
        if gap["excluded"]:
            left = ", ".join(f"{n} ({c})" for n, c in gap["excluded"].items())
            text += f"; left out, under {fair['min_n']} faces: {left}"
        lines.append(text)
    return lines


def fairness_text(report: dict[str, Any]) -> str:
    """Per-group tables and gaps of every setting that has them, for stdout ("" if none)."""
    blocks = []
    for s in report["settings"]:
        fair = _get(s.get("metrics", {}), "fairness")
        if not fair:
            continue
        header, body = fairness_rows(fair)
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = [
            f"fairness by {fair['column']}, {s['name']} (faces found; * under "
            f"{fair['min_n']} faces: listed, not in the gaps):"
        ]
        for r in [header, *body]:
            lines.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        lines += gap_lines(fair)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    width = max(len(r) for r in [header, *body])
    out = ["| " + " | ".join(header + [""] * (width - len(header))) + " |", "|" + "---|" * width]
    for r in body:
        out.append("| " + " | ".join(r + [""] * (width - len(r))) + " |")
    return "\n".join(out)


def _breakdown_md(title: str, breakdown: dict[str, Any], k: float) -> str:
    cs = f"cs@{k:g}"
    header = ["", "n", "MAE", cs.upper(), "interval cover", "gender acc", "gender ECE"]
    body = [
        [
            name,
            str(_get(v, "age", "n") or _get(v, "gender", "n") or 0),
            _fmt(_get(v, "age", "mae")),
            _fmt(_get(v, "age", cs), "pct"),
            _fmt(_get(v, "interval", "coverage"), "pct"),
            _fmt(_get(v, "gender", "accuracy"), "pct"),
            _fmt(_get(v, "gender", "ece"), "f3"),
        ]
        for name, v in breakdown.items()
    ]
    return f"#### {title}\n\n" + _md_table(header, body)


def markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """A Markdown page: what was read, the summary table, breakdowns, plots, failures."""
    ds = report["dataset"]
    lines = [
        f"# Evaluation: {ds['format']} ({ds['source']})",
        "",
        f"- records read: {ds['records']}, evaluated: {report['evaluated']}",
        f"- mode: {report['mode']}",
    ]
    for reason, n in ds["dropped"].items():
        lines.append(f"- dropped while reading: {n} ({reason})")
    for reason, n in ds.get("adjusted", {}).items():
        lines.append(f"- kept with a change: {n} ({reason})")
    lines += [
        "",
        "MAE, RMSE, CS and accuracies count the images whose face was found; "
        '"MAE w/ fallback" adds, for images with no face found, the same models\' estimate '
        'on the whole image. Calibration: "interval cover" is the share of true ages inside '
        "the stated interval (80% when calibrated); ECE is the expected calibration error of "
        "P(age >= t) or of the gender probability (10 bins), Brier the mean squared error of "
        "that probability against the 0/1 truth; reliability.png plots them.",
        "",
        _md_table(*rows(report)),
        "",
    ]
    lines += [f"![{Path(p).stem}]({Path(p).name})\n" for p in plots]
    for s in report["settings"]:
        if "metrics" not in s:
            continue
        m = s["metrics"]
        lines += [f"## {s['name']}", ""]
        for key, title in (
            ("by_decade", "By age decade"),
            ("under_13", "Children under 13"),
            ("by_gender", "By gender"),
            ("by_race", "By race"),
            ("by_fold", "By fold"),
        ):
            if m.get(key):
                # under_13 is one score (the children); the others map names to scores
                table = {"under 13": m[key]} if key == "under_13" else m[key]
                lines += [_breakdown_md(title, table, report["k"]), ""]
        if m.get("fairness"):
            fair = m["fairness"]
            lines += [
                f"#### Fairness by {fair['column']}",
                "",
                f"Figures over the faces found; a group marked * was measured on fewer than "
                f"{fair['min_n']} faces: listed, but left out of the gaps.",
                "",
                _md_table(*fairness_rows(fair)),
                "",
                *(f"- {line}" for line in gap_lines(fair)),
                "",
            ]
        if m["unreadable_images"]:
            lines += ["#### Unreadable images", ""]
            lines += [f"- `{u['path']}`: {u['error']}" for u in m["unreadable_images"]]
            lines.append("")
        if m["no_face_images"]:
            lines += [f"#### No face found ({len(m['no_face_images'])})", ""]
            lines += [f"- `{p}`" for p in m["no_face_images"][:50]]
            if len(m["no_face_images"]) > 50:
                lines.append(
                    f"- ... and {len(m['no_face_images']) - 50} more (report.json lists all)"
                )
            lines.append("")
    return "\n".join(lines)


def _pairs(records: Sequence[Record], run: SettingRun) -> tuple[np.ndarray, np.ndarray]:
    true, pred = [], []
    for record, outcome in zip(records, run.outcomes, strict=True):
        if outcome.status == "ok" and record.age is not None and outcome.age is not None:
            true.append(record.age)
            pred.append(outcome.age)
    return np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_by_age(records: Sequence[Record], runs: Sequence[SettingRun], path: Path) -> bool:
    """Absolute error against true age: points, and the mean per 5-year bin per setting."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    drawn = False
    top = 0.0
    for i, run in enumerate(r for r in runs if r.error is None):
        true, pred = _pairs(records, run)
        if not true.size:
            continue
        err = np.abs(pred - true)
        color = f"C{i}"
        ax.scatter(true, err, s=6, alpha=0.25, color=color, linewidths=0)
        bins = (true // PLOT_BIN).astype(int)
        centres, means = [], []
        for b in np.unique(bins):
            centres.append(b * PLOT_BIN + PLOT_BIN / 2)
            means.append(err[bins == b].mean())
        ax.plot(
            centres,
            means,
            marker="o",
            ms=3,
            color=color,
            label=f"{run.setting.name} (MAE {err.mean():.2f})",
        )
        top = max(top, float(np.percentile(err, 99)))
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("absolute error (years)")
    ax.set_ylim(0, max(top * 1.05, 1.0))
    ax.set_title(f"Absolute age error by true age (line: mean per {PLOT_BIN}-year bin)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_predicted_vs_true(
    records: Sequence[Record], runs: Sequence[SettingRun], path: Path
) -> bool:
    """Predicted against true age, one panel per setting, with the identity line."""
    plt = _pyplot()
    good = [r for r in runs if r.error is None and _pairs(records, r)[0].size]
    if not good:
        return False
    fig, axes = plt.subplots(1, len(good), figsize=(4 * len(good), 4), dpi=90, squeeze=False)
    for ax, run in zip(axes[0], good, strict=True):
        true, pred = _pairs(records, run)
        hi = max(float(true.max()), float(pred.max()), 1.0)
        ax.scatter(true, pred, s=6, alpha=0.35, linewidths=0)
        ax.plot([0, hi], [0, hi], color="k", lw=0.8)
        ax.set_xlim(0, hi * 1.02)
        ax.set_ylim(0, hi * 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("true age")
        ax.set_ylabel("predicted age")
        ax.set_title(run.setting.name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_gender_confusion(report: dict[str, Any], path: Path) -> bool:
    """The gender confusion matrix (rows: label, columns: prediction) per setting."""
    plt = _pyplot()
    good = [
        s for s in report["settings"] if _get(s.get("metrics", {}), "excluding_no_face", "gender")
    ]
    if not good:
        return False
    fig, axes = plt.subplots(1, len(good), figsize=(3.2 * len(good), 3), dpi=90, squeeze=False)
    for ax, s in zip(axes[0], good, strict=True):
        matrix = np.asarray(s["metrics"]["excluding_no_face"]["gender"]["confusion"])
        ax.imshow(matrix, cmap="Blues")
        for (row, col), n in np.ndenumerate(matrix):
            color = "white" if n > matrix.max() / 2 else "black"
            ax.text(col, row, str(n), ha="center", va="center", color=color)
        ax.set_xticks(range(len(GENDERS)), GENDERS)
        ax.set_yticks(range(len(GENDERS)), GENDERS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        ax.set_title(s["name"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_reliability(report: dict[str, Any], path: Path) -> bool:
    """Reliability diagrams: observed share against stated probability, for P(age >= t)
    at each threshold and for the gender probability, one panel per setting."""
    plt = _pyplot()
    good = [s for s in report["settings"] if "metrics" in s]
    curves = []
    for s in good:
        m = s["metrics"]["excluding_no_face"]
        lines = [
            (f"P(age>={t})", v.get("reliability") or [], v.get("ece"), v.get("ece_chance"))
            for t, v in (m.get("thresholds") or {}).items()
        ]
        gender = m.get("gender") or {}
        if gender.get("reliability"):
            lines.append(
                ("gender", gender["reliability"], gender.get("ece"), gender.get("ece_chance"))
            )
        lines = [line for line in lines if line[1]]
        if lines:
            curves.append((s["name"], lines))
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4), dpi=90, squeeze=False)
    for ax, (name, lines) in zip(axes[0], curves, strict=True):
        ax.plot([0, 1], [0, 1], color="k", lw=0.8)
        for label, table, ece, chance in lines:
            xs = [b["mean_p"] for b in table]
            ys = [b["share"] for b in table]
            text = label + (f" (ECE {ece:.3f}" if ece is not None else "")
            if ece is not None:  # what calibrated probabilities could read on these faces
                text += f", by chance {chance:.3f})" if chance is not None else ")"
            ax.plot(xs, ys, marker="o", ms=3, label=text)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("stated probability")
        ax.set_ylabel("observed share")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_predictions(records: Sequence[Record], runs: Sequence[SettingRun], path: Path) -> None:
    """One CSV row per record and setting: labels, estimates, status, fallback; the
    interval label and race last (added later: earlier columns keep their places)."""
    with path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "setting",
                "path",
                "age",
                "age_std",
                "gender",
                "group",
                "status",
                "faces",
                "pred_age",
                "pred_group",
                "pred_gender",
                "fallback_age",
                "fallback_gender",
                "error",
                "age_min",
                "age_max",
                "race",
            ]
        )
        for run in runs:
            if run.error is not None:
                continue
            for record, o in zip(records, run.outcomes, strict=True):
                writer.writerow(
                    [
                        run.setting.name,
                        record.path,
                        record.age,
                        record.age_std,
                        record.gender,
                        record.group,
                        o.status,
                        o.faces,
                        None if o.age is None else round(o.age, 2),
                        o.group,
                        o.gender,
                        None if o.fallback_age is None else round(o.fallback_age, 2),
                        o.fallback_gender,
                        o.error,
                        record.age_min,
                        record.age_max,
                        record.race,
                    ]
                )


def _manifest(directory: Path) -> set[str] | None:
    """The names an earlier report listed as its own; None when the list is not ours."""
    path = directory / MANIFEST
    if not path.exists() and not path.is_symlink():
        return set()
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != WRITTEN_BY:
        return None
    files = data.get("files")
    if not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str) and f in REPORT_FILES}


def _resolved(path: str | Path) -> Path | None:
    try:
        return Path(path).resolve()
    except (OSError, ValueError, RuntimeError):
        return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_target(
    directory: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    dataset_folders: Iterable[str | Path] = (),
    image_folders: Iterable[str | Path] = (),
    made_here: bool = False,
) -> bool:
    """Raise ReportError (one line) unless the report can go to `directory` without
    replacing a file agegender did not write or an input; creates the folder and checks
    that a file can be written in it. Called before the evaluation starts. True when this
    call made the folder (its own mkdir, not a look beforehand: of two runs racing to one
    new folder, only the one whose mkdir made it is told so; a folder it made and cannot
    write in is removed again).

    `dataset_folders` (a dataset folder, --root): the report may not be in them.
    `image_folders` (a labels file's folder, the images' folders): it may not be one of
    them; inside one it is marked as an output folder, which folder searches skip, and so
    it must be new, or one agegender marked (`made_here`: this run's first check made it)."""
    out = Path(directory)
    where = f"--report {directory}"
    # os.path's: a name the file system refuses (too long) is the mkdir's one-line error
    if os.path.exists(out) and not os.path.isdir(out):
        raise ReportError(f"{where}: exists and is not a folder (the report is a folder)")
    resolved = _resolved(out)
    if resolved is None:
        raise ReportError(f"{where}: not a usable folder name")
    for folder in dataset_folders:
        folder_path = _resolved(folder)
        if folder_path is not None and folder_path.is_dir() and _inside(resolved, folder_path):
            raise ReportError(
                f"{where}: inside the dataset folder {folder}; write the report elsewhere"
            )
    marked = False
    for folder in image_folders:
        folder_path = _resolved(folder)
        if folder_path is None or not folder_path.is_dir():
            continue
        if resolved == folder_path:
            raise ReportError(
                f"{where}: the folder of the dataset's images; write the report elsewhere"
            )
        marked = marked or _inside(resolved, folder_path)
    wanted = {name: resolved / name for name in (*REPORT_FILES, MANIFEST)}
    targets = {path: name for name, path in wanted.items()}
    for item in inputs:
        # a link of another name (labels.csv -> DIR/predictions.csv) is resolved too: its
        # target would be replaced all the same
        if Path(item).name in wanted or os.path.islink(item):
            found = _resolved(item)
            if found in targets:
                raise ReportError(f"{where}: {targets[found]} there is an input ({item})")
    if os.path.isdir(out):
        from ..images import is_output_folder

        if marked and not made_here and not is_output_folder(out):
            # marking it would hide the user's own images there from later folder searches
            raise ReportError(
                f"{where}: an existing folder inside the images' folder that agegender did "
                "not make (its images would be skipped by later runs); choose a new or an "
                "outside folder"
            )
        _check_existing(out, where)
    made = False
    try:
        with contextlib.suppress(FileExistsError):
            out.mkdir(parents=True)
            made = True
        handle, probe = tempfile.mkstemp(prefix=".agegender-probe-", dir=out)
        os.close(handle)
        os.unlink(probe)
        if marked:
            from ..images import OUTPUT_MARKER

            (out / OUTPUT_MARKER).touch()
    except OSError as error:
        if made:
            from ..images import remove_output_folder

            remove_output_folder(out)
        raise ReportError(f"{where}: cannot write there ({error.strerror or error})") from None
    return made


def _check_existing(out: Path, where: str) -> set[str]:
    """The names agegender may replace in `out`; ReportError when one exists otherwise."""
    own = _manifest(out)
    if own is None:
        raise ReportError(
            f"{where}: {MANIFEST} there was not written by agegender; choose another folder"
        )
    for name in REPORT_FILES:
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if name not in own or path.is_symlink() or not path.is_file():
            raise ReportError(
                f"{where}: {name} exists and was not written by agegender evaluate; "
                "choose another folder or move it away"
            )
    return own


def _stage(out: Path, name: str, write: Callable[[Path], Any]) -> tuple[Any, str | None]:
    """Write `name`'s content under a temporary name in `out`: (what `write` returned,
    the temporary file), the file None when `write` returned False (nothing to write)."""
    suffix = Path(name).suffix
    handle, tmp = tempfile.mkstemp(prefix=f".{Path(name).stem}-", suffix=suffix, dir=out)
    os.fchmod(handle, 0o644)  # as every other output (mkstemp's files are private)
    os.close(handle)
    try:
        result = write(Path(tmp))
    except BaseException:
        os.unlink(tmp)
        raise
    if result is False:
        os.unlink(tmp)
        return result, None
    return result, tmp


def _replace(out: Path, name: str, write: Callable[[Path], Any]) -> Any:
    """Write `name` under a temporary name in `out` and rename it into place."""
    result, tmp = _stage(out, name, write)
    if tmp is not None:
        try:
            os.replace(tmp, out / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return result


def write(
    directory: str | Path,
    report: dict[str, Any],
    records: Sequence[Record],
    runs: Sequence[SettingRun],
) -> list[Path]:
    """report.json, report.md, predictions.csv and the PNG plots in `directory`.

    Only files listed in the folder's manifest (written by an earlier report) are replaced;
    a report file of an earlier run that this one does not write (a plot with nothing to
    draw) is removed, so the folder never mixes two runs."""
    out = Path(directory)
    where = f"--report {directory}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportError(f"{where}: cannot write there ({error.strerror or error})") from None
    own = _check_existing(out, where)
    manifest = {"written_by": WRITTEN_BY, "files": sorted(own | set(REPORT_FILES))}
    staged: dict[str, str] = {}  # name -> its complete temporary file, not yet renamed
    try:
        # Listed before they are written: a file left by an interrupted run is still ours.
        _replace(out, MANIFEST, lambda p: p.write_text(json.dumps(manifest) + "\n"))
        for name, draw in (
            ("error_by_age.png", lambda p: plot_error_by_age(records, runs, p)),
            ("predicted_vs_true.png", lambda p: plot_predicted_vs_true(records, runs, p)),
            ("gender_confusion.png", lambda p: plot_gender_confusion(report, p)),
            ("reliability.png", lambda p: plot_reliability(report, p)),
        ):
            _, tmp = _stage(out, name, draw)
            if tmp is not None:
                staged[name] = tmp
        plots = [str(out / name) for name in staged]
        for name, write_file in (
            (
                "report.json",
                lambda p: p.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"),
            ),
            (
                "report.md",
                lambda p: p.write_text(
                    markdown(report, plots) + "\n", encoding="utf-8", errors="backslashreplace"
                ),
            ),
            ("predictions.csv", lambda p: write_predictions(records, runs, p)),
        ):
            staged[name] = str(_stage(out, name, write_file)[1])
        # Every file is whole: only now does this run's report replace the previous one
        # (renames, a moment), so an interruption before here changed none of its files.
        written = ["report.json", "report.md", "predictions.csv"]
        written += [name for name in staged if name not in written]
        for name in written:
            os.replace(staged.pop(name), out / name)
        for stale in sorted(own - set(written)):
            (out / stale).unlink(missing_ok=True)
        manifest["files"] = sorted(written)
        _replace(out, MANIFEST, lambda p: p.write_text(json.dumps(manifest) + "\n"))
    except OSError as error:
        raise ReportError(f"{where}: cannot write the report ({error.strerror or error})") from None
    finally:
        for tmp in staged.values():  # written, never renamed: an interrupted or failed run
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return [out / name for name in written]
