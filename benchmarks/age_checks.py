"""Age-check rules: which "pass if P(age >= s) >= c" keeps the faces under t from passing.

    python benchmarks/age_checks.py ../shared/datasets/utkface-dev/images --format utkface \
        --choose-on ../shared/datasets/utkface-calib/images
    python benchmarks/age_checks.py DATA --format utkface --preset fast --max-minors 0.01

Runs a setting (calibrated, as a user gets it; the whole image when no face is found)
over a labelled dataset `evaluate` reads, then for each check age t (18, 21, 25) tries
every rule "P(age >= s) >= c" for s in t, t+3, 25, 28, 30 (s >= t) and c in 0.5..0.99,
chooses on --choose-on (a set not scored: utkface-calib) the rules that let at most
--max-minors of its faces under t pass, cheapest for the faces at or over t first, and
prints them and the baseline P(age >= t) >= 0.5 scored on the source. The
share of minors passing carries its exact (Clopper-Pearson) 95% upper bound: with ~100
minors, "1%" is one face.
"""

from __future__ import annotations

import argparse
import math
import sys

CHECKS = (18.0, 21.0, 25.0)
CONFIDENCES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """Exact one-sided upper confidence bound of a binomial proportion (k of n)."""
    if n == 0 or k >= n:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    low, high = k / n, 1.0
    for _ in range(60):  # P(X <= k | p) falls with p: find where it is 1 - level
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 1 - level else (low, mid)
    return high


def collect(args: argparse.Namespace, source: str) -> list[tuple[float, dict[float, float]]]:
    from agegender.config import EstimatorConfig
    from agegender.evaluate import readers, runner
    from agegender.pipeline import Estimator

    thresholds = sorted({s for t in CHECKS for s in (t, t + 3, 25.0, 28.0, 30.0) if s >= t})
    config = EstimatorConfig.from_preset(args.preset, age_thresholds=tuple(thresholds))
    dataset = readers.read_dataset(args.format, source)
    outcomes = runner.run_setting(Estimator(config), dataset.records, fallback=True)
    out = []
    for record, outcome in zip(dataset.records, outcomes, strict=True):
        p = outcome.final_p(True)
        if record.age is not None and p:
            out.append((float(record.age), p))
    return out


Rule = tuple[float, float, str]  # minors passing, adults failing (shares), text


def rules_for(t: float, faces: list[tuple[float, dict[float, float]]]) -> dict[str, Rule]:
    minors = [p for age, p in faces if age < t]
    adults = [p for age, p in faces if age >= t]
    out = {}
    for s in sorted(faces[0][1]):
        for c in CONFIDENCES if s >= t else ():
            text = f"P(age >= {s:g}) >= {c:g}"
            passing = sum(p[s] >= c for p in minors) / len(minors)
            out[text] = (passing, sum(p[s] < c for p in adults) / len(adults), text)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the dataset the rules are scored on")
    parser.add_argument(
        "--choose-on", metavar="DATA", help="choose the rules on this dataset (default: source)"
    )
    parser.add_argument("--format", default="utkface")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--max-minors", type=float, default=0.01)
    parser.add_argument("--show", type=int, default=3, help="rules shown per check")
    args = parser.parse_args()
    faces = collect(args, args.source)
    chosen_on = collect(args, args.choose_on) if args.choose_on else faces
    print(
        f"{len(faces)} faces scored ({args.source}); rules chosen on "
        f"{args.choose_on or 'the same faces'} ({len(chosen_on)}); preset {args.preset}"
    )
    print("| check | rule | under t passing (95% upper bound) | at or over t failing |")
    print("|---|---|---|---|")
    for t in CHECKS:
        minors = sum(age < t for age, _ in faces)
        scored = rules_for(t, faces)
        baseline = f"P(age >= {t:g}) >= 0.5"
        candidates = sorted(
            (cost, text)
            for passing, cost, text in rules_for(t, chosen_on).values()
            if passing <= args.max_minors and text != baseline  # the baseline: its own row
        )
        for text in [baseline, *(text for _, text in candidates[: args.show])]:
            passing, cost, _ = scored[text]
            k = round(passing * minors)
            print(
                f"| {t:g} | {'baseline: ' if text == baseline else ''}pass if {text} "
                f"| {k} of {minors} ({100 * passing:.1f}%, up to "
                f"{100 * upper_bound(k, minors):.1f}%) "
                f"| {100 * cost:.1f}% of {len(faces) - minors} |"
            )
        if not candidates:
            print(f"| {t:g} | no rule tried keeps minors under {100 * args.max_minors:g}% | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
