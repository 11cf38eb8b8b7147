"""Metrics: the numbers papers report, as pure functions of labels and predictions.

MAE, RMSE, CS@k, ChaLearn's epsilon-error, accuracies (gender, age groups, 1-off), the
accuracy of P(age >= t) >= 0.5 as a decision at each --age-threshold, and ``summarize``,
which turns one setting's per-image outcomes into the report's numbers and breaks them
down by decade, gender, race and fold. No I/O here, so every number can be checked by hand
in a test.

Calibration (does the stated uncertainty hold?): the share of true ages inside the
stated interval (``interval.coverage``, by decade in ``by_decade``), and for P(age >= t)
and the gender probability a reliability table over ten equal-width probability bins,
the expected calibration error (ECE: the bins' |mean probability - observed share|,
weighted by their counts; with ``ece_chance``, the ECE that exactly calibrated
probabilities would exceed only one time in ten on the same faces: on a few hundred faces
an ECE is mostly noise) and the Brier score (mean squared difference between the
probability and the 0/1 truth). For gender the probability is that of the predicted
label and the truth whether it is right; ``under_13`` repeats the scores for children.

Groups are scored in a *scheme*, a list of (label, low, high) age spans: the groups of
the setting's age-groups card, else FairFace's nine when every interval label is one of
them (FairFace-style data), else Adience's eight. A labelled group the scheme does not
have is mapped to the scheme's nearest group (by the exact age when the labels give one,
else by the group's midpoint) and counted as relabelled. An estimate falls in a group of a
contiguous scheme (each group starting one year after the previous one ends, FairFace's)
when low <= age < high + 1, ages in whole years; in a scheme with gaps (Adience's) in the
nearest group. Interval labels (Record.age_min/age_max) have no exact age, so they count
for group accuracy and never for MAE; in FairFace's scheme a hit is exactly
age_min <= estimate < age_max + 1.

Fairness (``fairness``): with race (or --group-column) labels, the per-group figures of
the ``by_race`` breakdown (gender accuracy, MAE where ages are exact, group accuracy,
faces found) and, for gender accuracy, MAE and group accuracy, the largest gap between two
groups (max - min), naming them. A group measured on fewer than ``min_n`` faces is listed
but left out of that gap (a 10-face group's accuracy is mostly noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .readers import ADIENCE_GROUPS, FAIRFACE_GROUPS, Record

GroupScheme = Sequence[tuple[str, float, float]]  # (label, low, high), ordered by low
GROUP_LABELS = tuple(g[0] for g in ADIENCE_GROUPS)
ADIENCE_SPANS = {label: (lo, hi) for label, lo, hi in ADIENCE_GROUPS}
GENDERS = ("female", "male")
DECISION_P = 0.5  # P(age >= t) at or above this: judged at least t
RELIABILITY_BINS = 10
CHANCE_DRAWS = 1000  # ece_chance: sets of truths drawn from the stated probabilities
CHANCE_SHARE = 0.9  # ... and the quantile of their ECEs reported
EXACT_CHANCE_N = 20_000  # more faces: each bin's count drawn from its normal approximation
CHILD_AGE = 13  # under_13: the children's breakdown (gender is hardest there)
MIN_GROUP_N = 20  # fairness: a group measured on fewer faces is left out of the gaps
FAIRFACE_SPANS = {(lo, hi) for _, lo, hi in FAIRFACE_GROUPS}


def reliability(
    probs: Sequence[float], truth: Sequence[bool], bins: int = RELIABILITY_BINS
) -> dict[str, Any]:
    """n, ECE, Brier score and the reliability table of probabilities against 0/1 truths.

    Bin i holds probabilities in [i/bins, (i+1)/bins) (the last one includes 1); each
    table row: low, high, n, mean probability, observed share of true.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0]} probabilities for {t.shape[0]} labels")
    if not p.size:
        return {"n": 0, "ece": None, "ece_chance": None, "brier": None, "bins": []}
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    table, ece = [], 0.0
    for i in range(bins):
        inside = index == i
        n = int(inside.sum())
        if not n:
            continue
        mean_p, share = float(p[inside].mean()), float(t[inside].mean())
        ece += n * abs(mean_p - share)
        table.append(
            {"low": i / bins, "high": (i + 1) / bins, "n": n, "mean_p": mean_p, "share": share}
        )
    return {
        "n": int(p.size),
        "ece": ece / p.size,
        "ece_chance": ece_by_chance(p, index, bins),
        "brier": float(np.mean((p - t) ** 2)),
        "bins": table,
    }


def ece_by_chance(
    probs: NDArray[np.float64],
    index: NDArray[np.int64],
    bins: int,
    *,
    draws: int = CHANCE_DRAWS,
    share: float = CHANCE_SHARE,
    seed: int = 0,
) -> float:
    """The ECE that exactly calibrated probabilities would exceed only with probability
    1 - `share` on these faces: the `share` quantile of the ECE over `draws` sets of
    truths drawn as coin flips of the stated probabilities (consistency resampling,
    Broecker & Smith 2007; seeded, so the same faces give the same figure).

    On a few hundred faces an ECE is mostly sampling noise: perfectly calibrated gender
    probabilities on utkface-dev's 300 faces read 0.029 in the median draw, and above 0.03
    in nearly half of them. An ECE under this figure cannot be told from calibrated."""
    rng = np.random.default_rng(seed)
    if probs.size > EXACT_CHANCE_N:  # each bin's count of truths: its normal approximation
        spread = np.sqrt(np.bincount(index, probs * (1.0 - probs), minlength=bins))
        noise = rng.standard_normal((draws, bins)) * spread
        return float(np.quantile(np.abs(noise).sum(axis=1) / probs.size, share))
    onehot = np.zeros((probs.size, bins))
    onehot[np.arange(probs.size), index] = 1.0
    stated = probs @ onehot  # the sum of the probabilities in each bin
    chunk = max(1, min(draws, 4_000_000 // max(probs.size, 1)))
    eces = []
    for start in range(0, draws, chunk):
        truths = rng.random((min(chunk, draws - start), probs.size)) < probs
        eces.append(np.abs(truths @ onehot - stated).sum(axis=1) / probs.size)
    return float(np.quantile(np.concatenate(eces), share))


def interval_coverage(
    intervals: Sequence[tuple[float, float]], ages: Sequence[float]
) -> dict[str, Any]:
    """n, the share of ages inside their interval (ends included) and the mean width."""
    if len(intervals) != len(ages):
        raise ValueError(f"{len(intervals)} intervals for {len(ages)} labels")
    if not ages:
        return {"n": 0, "coverage": None, "mean_width": None}
    inside = [lo <= a <= hi for (lo, hi), a in zip(intervals, ages, strict=True)]
    return {
        "n": len(ages),
        "coverage": sum(inside) / len(ages),
        "mean_width": float(np.mean([hi - lo for lo, hi in intervals])),
    }


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


def nearest_group(age: float, groups: GroupScheme) -> int:
    """Index of the group containing `age`, or of the nearest one when it falls in a gap
    (ties go to the younger group)."""
    best, best_distance = 0, math.inf
    for i, (_, lo, hi) in enumerate(groups):
        distance = 0.0 if lo <= age <= hi else min(abs(age - lo), abs(age - hi))
        if distance < best_distance:
            best, best_distance = i, distance
    return best


def contiguous(groups: GroupScheme) -> bool:
    """Whether each group starts one whole year after the previous one ends (FairFace's
    0-2, 3-9, ...): then the groups cover every age and need no nearest-group rule."""
    return len(groups) > 1 and all(b[1] == a[2] + 1 for a, b in pairwise(groups))


def group_containing(age: float, groups: GroupScheme) -> int:
    """Index of the scheme's group for an estimated `age`: in a contiguous scheme the one
    with low <= age < high + 1 (ages in whole years, as FairFace's annotators judged; below
    the first or past the last: that end group), otherwise the nearest group."""
    if not contiguous(groups):
        return nearest_group(age, groups)
    for i, (_, _, hi) in enumerate(groups):
        if age < hi + 1:
            return i
    return len(groups) - 1


def scheme_for(records: Sequence[Record]) -> GroupScheme:
    """The dataset's default group scheme: FairFace's groups when the records carry
    interval labels and every one is a FairFace group's span, else Adience's."""
    spans = {(r.age_min, r.age_max) for r in records if r.age_min is not None}
    return FAIRFACE_GROUPS if spans and spans <= FAIRFACE_SPANS else ADIENCE_GROUPS


def threshold_metrics(p_at_least: Sequence[float], at_least: Sequence[bool]) -> dict[str, Any]:
    """P(age >= t) >= 0.5 taken as the decision "at least t", against the truth.

    accuracy over all; false_accept: share of those under t judged at least t (a minor
    let through at t = 18); false_reject: share of those at or over t judged under it;
    ece, brier and reliability: how well P(age >= t) itself is calibrated.
    """
    if len(p_at_least) != len(at_least):
        raise ValueError(f"{len(p_at_least)} predictions for {len(at_least)} labels")
    judged = [p >= DECISION_P for p in p_at_least]
    below = [j for j, truth in zip(judged, at_least, strict=True) if not truth]
    above = [j for j, truth in zip(judged, at_least, strict=True) if truth]
    return {
        "n": len(judged),
        "accuracy": accuracy(judged, list(at_least)),
        "n_at_least": len(above),
        "n_under": len(below),
        "false_accept": sum(below) / len(below) if below else None,
        "false_reject": (len(above) - sum(above)) / len(above) if above else None,
        **_calibration_of(p_at_least, at_least),
    }


def _calibration_of(probs: Sequence[float], truth: Sequence[bool]) -> dict[str, Any]:
    rel = reliability(probs, truth)
    return {
        "ece": rel["ece"],
        "ece_chance": rel["ece_chance"],
        "brier": rel["brier"],
        "reliability": rel["bins"],
    }


def _at_least(record: Record, t: float) -> bool | None:
    """Whether the labelled age is at least `t`: from the age label, else from an interval
    label or Adience group that lies wholly on one side of `t`; None when they do not
    tell."""
    if record.age is not None:
        return record.age >= t
    if record.age_min is not None and record.age_max is not None:
        if record.age_min >= t:
            return True
        return False if record.age_max + 1 <= t else None
    span = ADIENCE_SPANS.get(record.group or "")
    if span is None:
        return None
    if span[0] >= t:
        return True
    return False if span[1] < t else None


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
    p_at_least: dict[float, float] | None = None  # --age-threshold t -> P(age >= t)
    fallback_p_at_least: dict[float, float] | None = None
    interval: tuple[float, float] | None = None  # the stated age interval
    fallback_interval: tuple[float, float] | None = None

    def final(self, with_fallback: bool) -> tuple[float | None, str | None, str | None]:
        """(age, group, gender) used for scoring, with or without the fallback."""
        if self.status == "ok":
            return self.age, self.group, self.gender
        if self.status == "no_face" and with_fallback:
            return self.fallback_age, self.fallback_group, self.fallback_gender
        return None, None, None

    def final_interval(self, with_fallback: bool) -> tuple[float, float] | None:
        """The stated age interval used for scoring, with or without the fallback."""
        if self.status == "ok":
            return self.interval
        if self.status == "no_face" and with_fallback:
            return self.fallback_interval
        return None

    def final_p(self, with_fallback: bool) -> dict[float, float] | None:
        """P(age >= t) per threshold used for scoring, with or without the fallback."""
        if self.status == "ok":
            return self.p_at_least
        if self.status == "no_face" and with_fallback:
            return self.fallback_p_at_least
        return None


def _group_index(
    label: str | None, age: float | None, groups: GroupScheme
) -> tuple[int | None, bool]:
    """(index in the scheme, relabelled): the label itself when the scheme has it, else
    the nearest group to `age`, else to the midpoint of the label's Adience span."""
    if label is not None:
        for i, group in enumerate(groups):
            if group[0] == label:
                return i, False
    if age is not None:
        return group_containing(age, groups), label is not None
    span = ADIENCE_SPANS.get(label or "")
    if span is not None:
        return nearest_group((span[0] + span[1]) / 2, groups), True
    return None, False


def _true_group(record: Record, groups: GroupScheme) -> tuple[int | None, bool]:
    """(index in the scheme, relabelled) of a record's labelled group: for an interval
    label the group with that very span, else the one its label names, else the group of
    the range's midpoint (relabelled); otherwise as ``_group_index``."""
    if record.age_min is not None and record.age_max is not None:
        for i, (_, lo, hi) in enumerate(groups):
            if (lo, hi) == (record.age_min, record.age_max):
                return i, False
        for i, group in enumerate(groups):
            if group[0] == record.group:
                return i, False
        return group_containing((record.age_min + record.age_max) / 2, groups), True
    return _group_index(record.group, record.age, groups)


def score(
    records: Sequence[Record],
    outcomes: Sequence[Outcome],
    *,
    k: float = 5,
    with_fallback: bool = False,
    groups: GroupScheme = ADIENCE_GROUPS,
    thresholds: Sequence[float] = (),
) -> dict[str, Any]:
    """Age, gender, group and threshold metrics over the records that have each label and
    a prediction; groups in the scheme `groups` (the card's own, or Adience's)."""
    ages, labels, stds, real_pred, real_true = [], [], [], [], []
    g_pred, g_true, grp_pred, grp_true = [], [], [], []
    relabelled = 0
    intervals: list[tuple[float, float]] = []
    covered_ages: list[float] = []
    confidence: list[float] = []
    right: list[bool] = []
    decisions: dict[float, tuple[list[float], list[bool]]] = {t: ([], []) for t in thresholds}
    for record, outcome in zip(records, outcomes, strict=True):
        age, group, gender = outcome.final(with_fallback)
        if record.age is not None and age is not None:
            ages.append(age)
            labels.append(record.age)
            stds.append(record.age_std)
        if record.real_age is not None and age is not None:
            real_pred.append(age)
            real_true.append(record.real_age)
        interval = outcome.final_interval(with_fallback)
        if record.age is not None and interval is not None:
            intervals.append(interval)
            covered_ages.append(record.age)
        if record.gender is not None and gender is not None:
            g_pred.append(gender)
            g_true.append(record.gender)
            if outcome.status == "ok" and outcome.gender_probability is not None:
                confidence.append(outcome.gender_probability)
                right.append(gender == record.gender)
        if record.group is not None or record.age_min is not None:
            predicted, _ = _group_index(group, age, groups)
            true, mapped = _true_group(record, groups)
            if predicted is not None and true is not None:
                grp_pred.append(predicted)
                grp_true.append(true)
                relabelled += mapped
        p_at_least = outcome.final_p(with_fallback) or {}
        for t, (p_list, truth_list) in decisions.items():
            truth = _at_least(record, t)
            if truth is not None and t in p_at_least:
                p_list.append(p_at_least[t])
                truth_list.append(truth)
    out: dict[str, Any] = {}
    if labels:
        out["age"] = age_metrics(
            ages, labels, stds if any(s is not None for s in stds) else None, k
        )
    if real_true:
        out["age_vs_real"] = age_metrics(real_pred, real_true, None, k)
    if intervals:
        out["interval"] = interval_coverage(intervals, covered_ages)
    if g_true:
        out["gender"] = {
            "n": len(g_true),
            "accuracy": accuracy(g_pred, g_true),
            "confusion": confusion(g_pred, g_true, GENDERS),
            "labels": list(GENDERS),
        }
        if confidence:
            out["gender"].update(_calibration_of(confidence, right), calibration_n=len(right))
    if grp_true:
        out["groups"] = {
            "n": len(grp_true),
            "accuracy": accuracy(grp_pred, grp_true),
            "one_off": one_off_accuracy(grp_pred, grp_true),
            "labels": [g[0] for g in groups],
            "relabelled": relabelled,
        }
    if thresholds:
        out["thresholds"] = {
            f"{t:g}": threshold_metrics(p_list, truth_list)
            for t, (p_list, truth_list) in decisions.items()
        }
    return out


def _breakdown(
    records: Sequence[Record],
    outcomes: Sequence[Outcome],
    key: Callable[[Record], str | None],
    k: float,
    order: Callable[[str], Any] = str,
    **scoring: Any,
) -> dict[str, Any]:
    """``score`` per value of `key` (records whose key is None are left out), each with
    its ``faces_found`` (a group whose faces are missed more often is treated worse too)."""
    buckets: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        name = key(record)
        if name is not None:
            buckets.setdefault(name, []).append(i)
    out: dict[str, Any] = {}
    for name, idx in sorted(buckets.items(), key=lambda item: order(item[0])):
        chosen = [outcomes[i] for i in idx]
        out[name] = score([records[i] for i in idx], chosen, k=k, **scoring)
        out[name]["faces_found"] = _faces_found(chosen)
    return out


def _faces_found(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """n faces found, of the readable images, and the share."""
    readable = sum(o.status != "error" for o in outcomes)
    found = sum(o.status == "ok" for o in outcomes)
    return {"n": found, "of": readable, "share": found / readable if readable else None}


# (name in the report, where score() puts the value, where it puts the count it is over)
FAIRNESS_FIGURES: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("gender_accuracy", ("gender", "accuracy"), ("gender", "n")),
    ("mae", ("age", "mae"), ("age", "n")),
    ("group_accuracy", ("groups", "accuracy"), ("groups", "n")),
)


def fairness(
    breakdown: dict[str, Any], *, column: str = "race", min_n: int = MIN_GROUP_N
) -> dict[str, Any]:
    """Per-group figures and the largest gaps, from a ``_breakdown`` over the groups.

    ``groups``: per group, its readable ``images``, the share of them whose face was found
    and each figure with the count it is over (gender accuracy, MAE only where labels give
    exact ages, group accuracy). ``gaps``:
    per figure, max - min over the groups measured on at least `min_n` faces, naming the
    two (None with fewer than two such groups); ``excluded`` lists the other groups
    (name -> count, 0 for a group none of whose faces was found): shown, too few to rank.
    """
    groups: dict[str, Any] = {}
    for name, entry in breakdown.items():
        found = entry.get("faces_found") or {}
        row: dict[str, Any] = {"faces_found": found.get("share"), "images": found.get("of")}
        for figure, (part, value), (_, count) in FAIRNESS_FIGURES:
            measured = entry.get(part) or {}
            row[figure] = measured.get(value)
            row[f"{figure}_n"] = measured.get(count, 0)
        groups[name] = row
    gaps: dict[str, Any] = {}
    for figure, _, _ in FAIRNESS_FIGURES:
        measured = {name: row for name, row in groups.items() if row[figure] is not None}
        if not measured:
            continue
        ranked = {n: r[figure] for n, r in measured.items() if r[f"{figure}_n"] >= min_n}
        # every group under min_n, a group with no face measured (0) included
        excluded = {n: r[f"{figure}_n"] for n, r in groups.items() if n not in ranked}
        gap: dict[str, Any] = {"gap": None, "max": None, "min": None, "groups": len(ranked)}
        if len(ranked) >= 2:
            high = max(ranked, key=ranked.__getitem__)
            low = min(ranked, key=ranked.__getitem__)
            gap.update(
                gap=ranked[high] - ranked[low],
                max={"group": high, "value": ranked[high]},
                min={"group": low, "value": ranked[low]},
            )
        gap["excluded"] = excluded
        gaps[figure] = gap
    return {"column": column, "min_n": min_n, "groups": groups, "gaps": gaps}


def summarize(
    records: Sequence[Record],
    outcomes: Sequence[Outcome],
    *,
    k: float = 5,
    groups: GroupScheme | None = None,
    thresholds: Sequence[float] = (),
    group_column: str = "race",
    min_group: int = MIN_GROUP_N,
) -> dict[str, Any]:
    """Everything the report shows for one setting.

    Main numbers count only images whose face was found ("excluding no-face images");
    ``with_fallback`` adds the whole-image estimates of the images with no face found.
    `groups`: the scheme group accuracy is scored in (None: the dataset's, ``scheme_for``);
    `thresholds`: the --age-threshold values whose decisions are scored. With race labels
    (read from `group_column`), ``fairness`` holds the per-group figures and gaps, groups
    measured on fewer than `min_group` faces left out of the gaps.
    """
    scoring: dict[str, Any] = {
        "groups": groups or scheme_for(records),
        "thresholds": thresholds,
    }
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
        "excluding_no_face": score(records, outcomes, k=k, **scoring),
        "with_fallback": score(records, outcomes, k=k, with_fallback=True, **scoring),
        "no_face_images": [
            r.path for r, o in zip(records, outcomes, strict=True) if o.status == "no_face"
        ],
        "by_decade": _breakdown(
            records,
            outcomes,
            lambda r: decade(r.age) if r.age is not None else None,
            k,
            _decade_order,
            **scoring,
        ),
        "by_gender": _breakdown(records, outcomes, lambda r: r.gender, k, **scoring),
    }
    children = [i for i, r in enumerate(records) if r.age is not None and r.age < CHILD_AGE]
    if children:
        out["under_13"] = score(
            [records[i] for i in children], [outcomes[i] for i in children], k=k, **scoring
        )
    if any(r.race for r in records):
        out["by_race"] = _breakdown(records, outcomes, lambda r: r.race, k, **scoring)
        out["fairness"] = fairness(out["by_race"], column=group_column, min_n=min_group)
    folds = {r.fold for r in records if r.fold is not None}
    if len(folds) > 1:
        by_fold = _breakdown(records, outcomes, lambda r: r.fold, k, _natural, **scoring)
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
    """Floats rounded for JSON, NaN and infinities as null (JSON has neither)."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    return value
