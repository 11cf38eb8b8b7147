"""Metrics: the numbers papers report, as pure functions of labels and predictions.

MAE, RMSE, CS@k, ChaLearn's epsilon-error, accuracies (gender, Adience groups, 1-off), and
``summarize``, which turns one setting's per-image outcomes into the report's numbers and
breaks them down by decade, gender, race and fold. No I/O here, so every number can be
checked by hand in a test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .readers import ADIENCE_GROUPS, Record, group_of

GROUP_LABELS = tuple(g[0] for g in ADIENCE_GROUPS)
GENDERS = ("female", "male")


def _arrays(pred: Sequence[float], true: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0]} predictions for {t.shape[0]} labels")
    return p, t


def mae(pred: Sequence[float], true: Sequence[float]) -> float | None:
    """Mean absolute error in years; None when there is nothing to average."""
    p, t = _arrays(pred, true)
    return float(np.mean(np.abs(p - t))) if p.size else None


def rmse(pred: Sequence[float], true: Sequence[float]) -> float | None:
    """Root mean squared error in years."""
    p, t = _arrays(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2))) if p.size else None


def mean_error(pred: Sequence[float], true: Sequence[float]) -> float | None:
    """Signed mean error (prediction - label): positive means the model guesses too old."""
    p, t = _arrays(pred, true)
    return float(np.mean(p - t)) if p.size else None


def cs_at(pred: Sequence[float], true: Sequence[float], k: float = 5) -> float | None:
    """Cumulative score: the share of predictions within `k` years of the label (|e| <= k)."""
    p, t = _arrays(pred, true)
    return float(np.mean(np.abs(p - t) <= k)) if p.size else None


def epsilon_error(
    pred: Sequence[float], mean: Sequence[float], std: Sequence[float]
) -> float | None:
    """ChaLearn LAP's error: mean of 1 - exp(-(x - mu)^2 / (2 sigma^2)) over images with
    a vote std above 0 (it is undefined for sigma 0)."""
    p, mu = _arrays(pred, mean)
    sigma = np.asarray(std, dtype=np.float64)
    keep = sigma > 0
    if not keep.any():
        return None
    e = 1.0 - np.exp(-((p[keep] - mu[keep]) ** 2) / (2.0 * sigma[keep] ** 2))
    return float(np.mean(e))


def accuracy(pred: Sequence[Any], true: Sequence[Any]) -> float | None:
    """Share of exact matches."""
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predictions for {len(true)} labels")
    return sum(p == t for p, t in zip(pred, true, strict=True)) / len(true) if true else None


def one_off_accuracy(pred: Sequence[int], true: Sequence[int]) -> float | None:
    """Adience's 1-off accuracy: the predicted group index is the true one or a neighbour."""
    p, t = _arrays(pred, true)
    return float(np.mean(np.abs(p - t) <= 1)) if p.size else None


def confusion(pred: Sequence[str], true: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts [true][predicted] in the order of `labels`; other values are not counted."""
    index = {label: i for i, label in enumerate(labels)}
    table = [[0] * len(labels) for _ in labels]
    for p, t in zip(pred, true, strict=True):
        if p in index and t in index:
            table[index[t]][index[p]] += 1
    return table


def decade(age: float) -> str:
    """The decade an age falls in, as a label: "0-9", "10-19", ..., "90+"."""
    low = min(int(age // 10) * 10, 90)
    return "90+" if low == 90 else f"{low}-{low + 9}"


def age_metrics(
    pred: Sequence[float],
    true: Sequence[float],
    std: Sequence[float | None] | None = None,
    k: float = 5,
) -> dict[str, Any]:
    """n, MAE, RMSE, signed mean error, CS@k, and the epsilon-error where stds are known."""
    out: dict[str, Any] = {
        "n": len(true),
        "mae": mae(pred, true),
        "rmse": rmse(pred, true),
        "mean_error": mean_error(pred, true),
        f"cs@{k:g}": cs_at(pred, true, k),
    }
    if std is not None:
        known = [i for i, s in enumerate(std) if s is not None and s > 0]
        if known:
            out["epsilon_error"] = epsilon_error(
                [pred[i] for i in known],
                [true[i] for i in known],
                [std[i] for i in known],  # type: ignore[misc]
            )
            out["epsilon_n"] = len(known)
    return out


@dataclass
class Outcome:
    """What one setting made of one record.

    status: "ok" (the labelled face was found), "no_face" (none found; the fallback fields
    hold the whole-image estimate), or "error" (unreadable image; `error` says why).
    """

    status: str
    age: float | None = None
    group: str | None = None
    gender: str | None = None
    gender_probability: float | None = None
    faces: int = 0
    error: str | None = None
    fallback_age: float | None = None
    fallback_group: str | None = None
    fallback_gender: str | None = None

    def final(self, with_fallback: bool) -> tuple[float | None, str | None, str | None]:
        """(age, group, gender) used for scoring, with or without the fallback."""
        if self.status == "ok":
            return self.age, self.group, self.gender
        if self.status == "no_face" and with_fallback:
            return self.fallback_age, self.fallback_group, self.fallback_gender
        return None, None, None


def _predicted_group(age: float | None, group: str | None) -> str | None:
    if group is not None:
        return group
    return group_of(age) if age is not None else None


def score(
    records: Sequence[Record],
    outcomes: Sequence[Outcome],
    *,
    k: float = 5,
    with_fallback: bool = False,
) -> dict[str, Any]:
    """Age, gender and group metrics over the records that have each label and a prediction."""
    ages, labels, stds, real_pred, real_true = [], [], [], [], []
    g_pred, g_true, grp_pred, grp_true = [], [], [], []
    for record, outcome in zip(records, outcomes, strict=True):
        age, group, gender = outcome.final(with_fallback)
        if record.age is not None and age is not None:
            ages.append(age)
            labels.append(record.age)
            stds.append(record.age_std)
        if record.real_age is not None and age is not None:
            real_pred.append(age)
            real_true.append(record.real_age)
        if record.gender is not None and gender is not None:
            g_pred.append(gender)
            g_true.append(record.gender)
        predicted_group = _predicted_group(age, group)
        if record.group is not None and predicted_group is not None:
            grp_pred.append(GROUP_LABELS.index(predicted_group))
            grp_true.append(GROUP_LABELS.index(record.group))
    out: dict[str, Any] = {}
    if labels:
        out["age"] = age_metrics(
            ages, labels, stds if any(s is not None for s in stds) else None, k
        )
    if real_true:
        out["age_vs_real"] = age_metrics(real_pred, real_true, None, k)
    if g_true:
        out["gender"] = {
            "n": len(g_true),
            "accuracy": accuracy(g_pred, g_true),
            "confusion": confusion(g_pred, g_true, GENDERS),
            "labels": list(GENDERS),
        }
    if grp_true:
        out["groups"] = {
            "n": len(grp_true),
            "accuracy": accuracy(grp_pred, grp_true),
            "one_off": one_off_accuracy(grp_pred, grp_true),
        }
    return out


def _breakdown(
    records: Sequence[Record],
    outcomes: Sequence[Outcome],
    key: Callable[[Record], str | None],
    k: float,
    order: Callable[[str], Any] = str,
) -> dict[str, Any]:
    buckets: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        name = key(record)
        if name is not None:
            buckets.setdefault(name, []).append(i)
    return {
        name: score([records[i] for i in idx], [outcomes[i] for i in idx], k=k)
        for name, idx in sorted(buckets.items(), key=lambda item: order(item[0]))
    }


def summarize(
    records: Sequence[Record], outcomes: Sequence[Outcome], *, k: float = 5
) -> dict[str, Any]:
    """Everything the report shows for one setting.

    Main numbers count only images whose face was found ("excluding no-face images");
    ``with_fallback`` adds the whole-image estimates of the images with no face found.
    """
    readable = [o for o in outcomes if o.status != "error"]
    found = [o for o in outcomes if o.status == "ok"]
    unreadable = [
        {"path": r.path, "error": o.error}
        for r, o in zip(records, outcomes, strict=True)
        if o.status == "error"
    ]
    out: dict[str, Any] = {
        "images": len(records),
        "unreadable": len(unreadable),
        "unreadable_images": unreadable,
        "faces_found": {
            "n": len(found),
            "of": len(readable),
            "share": len(found) / len(readable) if readable else None,
        },
        "excluding_no_face": score(records, outcomes, k=k),
        "with_fallback": score(records, outcomes, k=k, with_fallback=True),
        "no_face_images": [
            r.path for r, o in zip(records, outcomes, strict=True) if o.status == "no_face"
        ],
        "by_decade": _breakdown(
            records,
            outcomes,
            lambda r: decade(r.age) if r.age is not None else None,
            k,
            _decade_order,
        ),
        "by_gender": _breakdown(records, outcomes, lambda r: r.gender, k),
    }
    if any(r.race for r in records):
        out["by_race"] = _breakdown(records, outcomes, lambda r: r.race, k)
    folds = {r.fold for r in records if r.fold is not None}
    if len(folds) > 1:
        by_fold = _breakdown(records, outcomes, lambda r: r.fold, k, _natural)
        out["by_fold"] = by_fold
        # Papers with folds (FG-NET leave-one-person-out, Adience's five) average over folds.
        fold_mean = {
            name: float(np.mean(values))
            for name, values in (
                ("mae", [v["age"]["mae"] for v in by_fold.values() if "age" in v]),
                (
                    "gender_accuracy",
                    [v["gender"]["accuracy"] for v in by_fold.values() if "gender" in v],
                ),
                (
                    "group_accuracy",
                    [v["groups"]["accuracy"] for v in by_fold.values() if "groups" in v],
                ),
                ("one_off", [v["groups"]["one_off"] for v in by_fold.values() if "groups" in v]),
            )
            if values
        }
        if fold_mean:
            out["fold_mean"] = fold_mean
    return out


def _decade_order(label: str) -> int:
    return int(label.split("-")[0].rstrip("+"))


def _natural(label: str) -> tuple[int, Any]:
    return (0, int(label)) if label.isdigit() else (1, label)


def clean(value: Any) -> Any:
    """Floats rounded for JSON, NaN as null."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value
