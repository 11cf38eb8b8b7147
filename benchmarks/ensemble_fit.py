"""Fit ensemble weights offline: every candidate head once per labelled face, then every
weighting scored from the stored outputs.

A mixture's expected age is the weighted mean of the heads' expected ages (each head's
distribution sums to 1), and a gender mixture's P(male) is the weighted mean of the
heads' P(male); calibration changes neither the expected age nor the more probable
gender. So each head runs once per face and any weighting is scored in microseconds.

    python benchmarks/ensemble_fit.py collect ../shared/datasets/utkface-calib/images \
        --format utkface --age cc0-age-v1 faceres-age --gender cc0-gender-v1 faceres-gender \
        --out /tmp/fit/calib.npz
    python benchmarks/ensemble_fit.py fit /tmp/fit/calib.npz --report /tmp/fit/dev.npz \
        /tmp/fit/fairface.npz

``collect`` uses the same detector, alignment, TTA and face selection as
``agegender evaluate`` (the face the labels describe; the whole image when none is found,
like evaluate's fallback). ``fit`` grids each task's weights on the simplex (step 0.1)
on the first file and reports the best and each head alone on the others: MAE where
ages are exact, group accuracy where labels are intervals (age_min <= age < age_max + 1),
gender accuracy, and the largest gap in gender accuracy between races.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from agegender import Estimator
from agegender.evaluate.readers import read_dataset
from agegender.evaluate.runner import select_face

MIN_GROUP = 20  # races with fewer faces are left out of the gap


def labelled_face(est: Estimator, whole: Estimator, record: Any) -> tuple[Any, int, bool]:
    """The prepared image and the index of the face a record's labels describe, and
    whether it was found (else the whole image, `whole`'s, like evaluate's fallback)."""
    decoded = est.decode(record.path)
    prepared = est.prepare(decoded.rgb, decoded.name)
    pseudo = [SimpleNamespace(box=d.box) for d in prepared.detections]
    face = select_face(pseudo, record.box, prepared.width, prepared.height)  # type: ignore[arg-type]
    if face is None:
        return whole.prepare(decoded.rgb, decoded.name), 0, False
    return prepared, pseudo.index(face), True


def group_bounds(record: Any) -> tuple[float, float]:
    low = getattr(record, "age_min", None)
    high = getattr(record, "age_max", None)
    if low is None or high is None:
        return (np.nan, np.nan)
    return (float(low), float(high))


def collect(args: argparse.Namespace) -> int:
    dataset = read_dataset(args.format, args.source, root=args.root)
    records = dataset.records[: args.limit] if args.limit else dataset.records
    est = Estimator(
        preset=args.preset,
        age_models=tuple(args.age),
        gender_models=tuple(args.gender),
        calibration="none",
        detector=args.detector or Estimator.from_preset(args.preset).config.detector,
    )
    whole = est.derive(detector="none")
    heads = [(role, h) for role, hs in est.heads.items() for h in hs]
    names = [f"{role}:{h.card.id}" for role, h in heads]
    out: dict[str, list[Any]] = {n: [] for n in names}
    meta: dict[str, list[Any]] = {k: [] for k in ("age", "gender", "race", "lo", "hi", "found")}
    start = time.perf_counter()
    for i, record in enumerate(records):
        prepared, index, found = labelled_face(est, whole, record)
        for (role, head), name in zip(heads, names, strict=True):
            crop = prepared.crops[head.crop_key][index]
            probs = head.run([crop], tta=est.config.tta)[0]
            if role == "age":
                values = head.card.output.value_array()
                if head.card.task == "age-groups":
                    values = np.array([(a + b) / 2 for a, b in head.card.output.groups])
                out[name].append(float(probs @ values) / float(probs.sum()))
            else:
                out[name].append(float(probs[head.card.output.labels.index("male")]))
        meta["age"].append(np.nan if record.age is None else float(record.age))
        meta["gender"].append(record.gender or "")
        meta["race"].append(getattr(record, "race", None) or "")
        lo, hi = group_bounds(record)
        meta["lo"].append(lo)
        meta["hi"].append(hi)
        meta["found"].append(found)
        if (i + 1) % 100 == 0:
            rate = (i + 1) / (time.perf_counter() - start)
            print(f"{i + 1}/{len(records)} ({rate:.1f}/s)", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out,
        names=np.array(names),
        **{f"h:{n}": np.array(v) for n, v in out.items()},
        **{f"m:{k}": np.array(v) for k, v in meta.items()},
        interval=np.array(bool(args.interval)),
    )
    print(f"{args.out}: {len(records)} faces, heads {', '.join(names)}")
    return 0


class Labels:
    """Scores against a collected file's labels (``meta``: age, gender, race, lo, hi;
    ``interval``: the ages are groups)."""

    meta: dict[str, np.ndarray]
    interval: bool

    def age_score(self, mean: np.ndarray) -> tuple[str, float]:
        """MAE (exact ages) or group accuracy (interval labels)."""
        if self.interval:
            lo, hi = self.meta["lo"], self.meta["hi"]
            ok = ~np.isnan(lo)
            return "group acc", float(np.mean((mean[ok] >= lo[ok]) & (mean[ok] < hi[ok] + 1)))
        age = self.meta["age"]
        ok = ~np.isnan(age)
        return "MAE", float(np.mean(np.abs(mean[ok] - age[ok])))

    def gender_scores(self, p_male: np.ndarray) -> tuple[float, float, str]:
        """Gender accuracy, the largest gap between races and which two."""
        truth = self.meta["gender"]
        ok = (truth == "male") | (truth == "female")
        right = (p_male >= 0.5) == (truth == "male")
        acc = float(np.mean(right[ok]))
        races = self.meta["race"]
        per = {
            r: float(np.mean(right[ok & (races == r)]))
            for r in sorted(set(races[ok]) - {""})
            if int(np.sum(ok & (races == r))) >= MIN_GROUP
        }
        if len(per) < 2:
            return acc, float("nan"), ""
        lo, hi = min(per, key=per.__getitem__), max(per, key=per.__getitem__)
        return acc, per[hi] - per[lo], f"{lo}..{hi}"


class Data(Labels):
    def __init__(self, path: str):
        z = np.load(path, allow_pickle=False)
        self.path = path
        self.names = [str(n) for n in z["names"]]
        self.heads = {n: z[f"h:{n}"] for n in self.names}
        self.meta = {k[2:]: z[k] for k in z.files if k.startswith("m:")}
        self.interval = bool(z["interval"])


def _simplex(n: int, step: float = 0.1) -> list[tuple[float, ...]]:
    k = round(1 / step)
    return [
        tuple(c / k for c in combo)
        for combo in itertools.product(range(k + 1), repeat=n)
        if sum(combo) == k
    ]


def _mix(data: Data, names: list[str], weights: tuple[float, ...]) -> np.ndarray:
    return sum(w * data.heads[n] for n, w in zip(names, weights, strict=True))  # type: ignore[return-value]


def fit(args: argparse.Namespace) -> int:
    train = Data(args.train)
    others = [Data(p) for p in args.report]
    for role in ("age", "gender"):
        names = [n for n in train.names if n.startswith(role + ":")]
        chosen = getattr(args, f"{role}_heads")
        if chosen:
            names = [f"{role}:{h}" for h in chosen]
        if not names:
            continue
        best: tuple[float, tuple[float, ...]] | None = None
        for weights in _simplex(len(names), args.step):
            mix = _mix(train, names, weights)
            if role == "age":
                score = train.age_score(mix)[1]
                score = score if not train.interval else -score
            else:
                score = -train.gender_scores(mix)[0]
            if best is None or score < best[0] - 1e-12:
                best = (score, weights)
        assert best is not None
        rows = [(f"{n[len(role) + 1 :]} alone", tuple(float(n == m) for m in names)) for n in names]
        rows.append(("fitted " + "/".join(f"{w:.1f}" for w in best[1]), best[1]))
        print(f"\n## {role}: heads {', '.join(n[len(role) + 1 :] for n in names)}")
        print(f"fitted on {train.path} ({len(train.meta['age'])} faces)")
        for label, weights in rows:
            cells = []
            for data in [train, *others]:
                mix = _mix(data, names, weights)
                if role == "age":
                    what, value = data.age_score(mix)
                    cells.append(f"{what} {value:.3f}" if what == "MAE" else f"{what} {value:.1%}")
                else:
                    acc, gap, pair = data.gender_scores(mix)
                    gap_text = f", race gap {gap:.1%} ({pair})" if pair else ""
                    cells.append(f"gender {acc:.1%}{gap_text}")
            print(f"- {label}: " + " | ".join(cells))
    return 0


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """A collect command's dataset (as ``agegender evaluate`` reads it) and preset."""
    parser.add_argument("source")
    parser.add_argument("--format", required=True)
    parser.add_argument("--root")
    parser.add_argument("--preset", default="default")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="run every head once per labelled face")
    add_dataset_arguments(c)
    c.add_argument("--detector")
    c.add_argument("--age", nargs="+", default=[])
    c.add_argument("--gender", nargs="+", default=[])
    c.add_argument("--limit", type=int)
    c.add_argument("--interval", action="store_true", help="labels are age groups (FairFace)")
    c.add_argument("--out", required=True)
    f = sub.add_parser("fit", help="grid the weights on one file, report on the others")
    f.add_argument("train")
    f.add_argument("--report", nargs="*", default=[])
    f.add_argument("--step", type=float, default=0.1)
    f.add_argument("--age-heads", nargs="*", help="fit only these age heads (ids as collected)")
    f.add_argument("--gender-heads", nargs="*", help="fit only these gender heads")
    args = parser.parse_args(argv)
    return collect(args) if args.command == "collect" else fit(args)


if __name__ == "__main__":
    raise SystemExit(main())
