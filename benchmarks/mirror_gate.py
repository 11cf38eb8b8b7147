"""Which faces need the mirror: score gates of the default's mirror averaging offline.

``collect`` runs every head of a preset once on each labelled face's crop and once on its
mirror (the face the labels describe, as ``agegender evaluate`` picks it; the whole image
when none is found) and stores both distributions; ``score`` then replays the preset's
ensemble under each gate: the gated cards (faceres-deep) average with their mirror only
for faces whose ensemble gender probability, computed without that mirror, is within a
margin of 0.5; the other cards always average (as ``heads.Mirror`` does).

    python benchmarks/mirror_gate.py collect ../shared/datasets/utkface-calib/images \
        --format utkface --out /tmp/gate/calib.npz
    python benchmarks/mirror_gate.py collect ../shared/datasets/utkface-dev/images \
        --format utkface --out /tmp/gate/dev.npz
    python benchmarks/mirror_gate.py collect ../shared/datasets/fairface-dev/labels.csv \
        --root ../shared/datasets/fairface-dev/images --format csv --out /tmp/gate/ff.npz
    python benchmarks/mirror_gate.py score /tmp/gate/calib.npz /tmp/gate/dev.npz /tmp/gate/ff.npz

Prints, per margin, MAE (exact ages) or group accuracy (age_min <= age < age_max + 1),
gender accuracy, the largest gap in gender accuracy between races (groups of 20+) and the
share of faces whose gated cards ran the mirror. Choose on the first file (utkface-calib),
report on the others. Raw outputs (no calibration): calibration changes neither the
expected age nor the more probable gender.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from ensemble_fit import (  # benchmarks/ is on sys.path
    Labels,
    add_dataset_arguments,
    group_bounds,
    labelled_face,
)

from agegender import Estimator
from agegender.evaluate.readers import read_dataset

MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def collect(args: argparse.Namespace) -> int:
    dataset = read_dataset(args.format, args.source, root=args.root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the long run, not after
    est = Estimator(preset=args.preset, calibration="none")
    whole = est.derive(detector="none")
    heads = [(role, h) for role, hs in est.heads.items() for h in hs]
    names = [f"{role}:{h.card.id}" for role, h in heads]
    plain: dict[str, list[np.ndarray]] = {n: [] for n in names}
    mirror: dict[str, list[np.ndarray]] = {n: [] for n in names}
    meta: dict[str, list[object]] = {k: [] for k in ("age", "gender", "race", "lo", "hi")}
    start = time.perf_counter()
    for record in dataset.records:
        prepared, index, _ = labelled_face(est, whole, record)
        for (_, head), name in zip(heads, names, strict=True):
            crop = prepared.crops[head.crop_key][index]
            out = head.run([crop, np.ascontiguousarray(crop[:, ::-1])], tta=False)
            plain[name].append(out[0])
            mirror[name].append(out[1])
        meta["age"].append(np.nan if record.age is None else float(record.age))
        meta["gender"].append(record.gender or "")
        meta["race"].append(getattr(record, "race", None) or "")
        low, high = group_bounds(record)
        meta["lo"].append(low)
        meta["hi"].append(high)
    arrays = {f"o:{n}": np.array(v) for n, v in plain.items()}
    arrays |= {f"f:{n}": np.array(v) for n, v in mirror.items()}
    arrays |= {f"m:{k}": np.array(v) for k, v in meta.items()}
    config = est.config
    weights = dict(zip(config.age_models, config.age_weights or (), strict=False))
    weights |= dict(zip(config.gender_models, config.gender_weights or (), strict=False))
    for (role, head), name in zip(heads, names, strict=True):
        arrays[f"w:{name}"] = np.array(weights.get(head.card.id, 1.0))
        arrays[f"g:{name}"] = np.array(head.card.id in est.config.tta_gated)
        if role == "age":
            arrays[f"v:{name}"] = head.card.output.value_array()
        else:
            arrays[f"male:{name}"] = np.array(head.card.output.labels.index("male"))
    np.savez(args.out, names=np.array(names), **arrays)
    took = time.perf_counter() - start
    print(f"{args.out}: {len(dataset.records)} faces in {took:.0f} s, heads {', '.join(names)}")
    return 0


class Data(Labels):
    def __init__(self, path: str):
        z = np.load(path, allow_pickle=False)
        self.path = path
        self.z = z
        self.names = [str(n) for n in z["names"]]
        self.meta = {k[2:]: z[k] for k in z.files if k.startswith("m:")}
        self.interval = bool(np.isnan(self.meta["age"]).all())  # group labels only
        self.n = len(self.meta["age"])

    def _probs(self, name: str, mirrored: np.ndarray) -> np.ndarray:
        plain, flip = self.z[f"o:{name}"], self.z[f"f:{name}"]
        plain = plain / plain.sum(axis=1, keepdims=True)
        flip = flip / flip.sum(axis=1, keepdims=True)
        return np.where(mirrored[:, None], (plain + flip) / 2, plain)

    def ensemble(self, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(expected age, P(male), whether the gated cards ran the mirror) per face."""
        every = np.ones(self.n, bool)

        def mean(role: str, gated_mirror: np.ndarray) -> np.ndarray:
            total, out = 0.0, np.zeros(self.n)
            for name in (n for n in self.names if n.startswith(role + ":")):
                weight = float(self.z[f"w:{name}"])
                probs = self._probs(name, gated_mirror if self.z[f"g:{name}"] else every)
                if role == "age":
                    out += weight * (probs @ self.z[f"v:{name}"])
                else:
                    out += weight * probs[:, int(self.z[f"male:{name}"])]
                total += weight
            return out / total

        before = mean("gender", np.zeros(self.n, bool))
        unsure = np.abs(before - 0.5) < margin if margin < 0.5 else every
        return mean("age", unsure), mean("gender", unsure), unsure

    def scores(self, margin: float) -> str:
        age, p_male, unsure = self.ensemble(margin)
        what, value = self.age_score(age)
        age_text = f"MAE {value:.3f}" if what == "MAE" else f"{what} {100 * value:.1f}%"
        gender, gap, _ = self.gender_scores(p_male)
        gap_text = "-" if np.isnan(gap) else f"{100 * gap:.1f}"
        return (
            f"{age_text}, gender {100 * gender:.1f}%, race gap {gap_text}, "
            f"mirrored {100 * unsure.mean():.0f}%"
        )


def score(args: argparse.Namespace) -> int:
    data = [Data(p) for p in args.files]
    for margin in args.margin or MARGINS:
        print(f"margin {margin:.2f}: " + " | ".join(f"{d.path}: {d.scores(margin)}" for d in data))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="each head on every face's crop and its mirror")
    add_dataset_arguments(c)
    c.add_argument("--out", required=True)
    s = sub.add_parser("score", help="each margin's figures on each collected file")
    s.add_argument("files", nargs="+")
    s.add_argument("--margin", type=float, action="append", help="(default: 0 to 0.5)")
    args = parser.parse_args(argv)
    return collect(args) if args.command == "collect" else score(args)


if __name__ == "__main__":
    sys.exit(main())
