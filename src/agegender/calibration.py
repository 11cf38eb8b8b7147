"""Calibration: parameters that make a model's stated uncertainty hold on real faces.

Models' softmax outputs are sharper than their errors (the CC0 age model's median std is
3.3 years while its MAE is 5.7), so the spread, the 80% interval, P(age >= t) and the
gender probability are turned into calibrated ones in the estimates stage with
parameters kept as data (a preset's ``[NAME.calibration.age]`` / ``[...gender]`` tables,
a calibration TOML written by ``agegender calibrate``, or a card's ``[calibration]``):

Age (a distribution p over bin values v):

1. **temperature** T: ``p' = softmax(log p / T)`` (T > 1 flattens);
2. **kernel** s: ``p'`` is smoothed with a Gaussian of std s in log(1 + age), i.e. the
   true age is the model's times a log-normal error (errors grow with age). T and s are
   fitted together by maximum likelihood of the labelled ages (exact ages: the nearest
   bin; a group label, interval-censored: the mass of the bins inside the group),
   overall and per band of predicted age (``temperatures``, ``kernels``: a baby's error
   is months, an adult's years); a distribution uses its band's pair;
3. **recalibration map** per band of predicted age (distributional conformal prediction,
   Chernozhukov, Wuthrich & Zhu 2021; Kuleshov et al. 2018): for labelled faces, the
   randomised probability integral transform ``u = F(age - 1) + V * p(age)`` (F the
   cumulative distribution after 1-2, V uniform) would be uniform if the distributions
   were calibrated; its empirical distribution R in the band (``pit``: R at ``len(row)``
   evenly spaced points of [0, 1], linear between) turns F into ``R(F)``, from which the
   std, the central interval and P(age >= t) are all read, so they agree with each other.
   The u values are cross-fitted (each face's from T and s fitted without it), and the
   faces are weighted by decade of true age (weighted conformal prediction under label
   shift, Podkopaev & Ramdas 2021), by default by the inverse square root of their
   decade's count (``BALANCE["sqrt"]``): with every decade counted equally (``decade``)
   coverage is most even across ages, but P(age >= t) is calibrated for a population
   spread evenly over the decades, not for the photos' own mix (on utkface-calib,
   cross-fitted: the ECE of P(age >= 18) 0.033 against 0.025, P(age >= 21) 0.055
   against 0.045); as they come (``none``), the rare teenagers' intervals held 67%
   (README, Calibrated uncertainty);
4. **level** per band (``levels``, split-conformal on the interval's mass): the map makes
   the age spread over its year calibrated, but a label is a whole year, inside the
   interval whenever its bin's middle is; where a distribution spans a few bins (a
   baby's) the bin at an end is mostly counted in, and the interval read at `mass` held
   96% of utkface-calib's 1-year-olds. The interval is therefore read at the band's
   level, the smallest mass at which the same cross-fitted faces' whole-year ages fall
   inside with (weighted as the map) probability `mass`: 0.69-0.71 for predicted babies,
   0.73-0.82 elsewhere. Guarantee (up to O(1/n) per band): for faces exchangeable with
   the calibration faces after that reweighting (drawn alike, in the reweighted age
   mix), the interval holds the true whole-year age with probability `mass` on
   average over the faces of a band: marginal, not for each face. With other photos
   (other cameras, populations) it may not hold. The std and P(age >= t) are read off
   ``R(F)`` (P(age >= t) sums whole bins, so needs no level).
   Older files may instead carry ``widen`` (years added at each end of the interval per
   band: split-conformal widening); it is still applied. A file without ``levels``
   reads the interval at `mass`.

The expected value (``AgeEstimate.value``) is the raw distribution's: calibration leaves
the point estimate and so the MAE unchanged (the flattened distribution's mean was worse).

Gender: ``p' = softmax(log p / T)``, with one temperature per band of predicted age
(children's gender is much less certain than adults').

This module imports numpy only inside the functions that compute (cards.py parses
calibration tables while ``--help`` must stay light).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import AgegenderError, single_line

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

AGE_KEYS = (
    "temperature",
    "kernel",
    "mass",
    "bands",
    "widen",
    "pit",
    "temperatures",
    "kernels",
    "levels",
)
GENDER_KEYS = ("temperature", "bands", "temperatures")
FILE_KEYS = (
    "age_models",
    "gender_models",
    "age_weights",
    "gender_weights",
    "data",
    "age",
    "gender",
)
# Bands of predicted age: finer at 17-29, where P(age >= 18 / 21 / 25) is read (in 5-fold
# cross-validation on utkface-calib, against 13-19 and 20-29: the ECE of P(age >= 21)
# 0.045 -> 0.040, P(age >= 25) 0.048 -> 0.045, P(age >= 18) 0.025 both; README,
# Calibrated uncertainty)
DEFAULT_AGE_BANDS = (0.0, 5.0, 13.0, 17.0, 21.0, 25.0, 30.0, 45.0, 60.0)
PIT_POINTS = 41  # points of each band's recalibration map
CROSS_FOLDS = 5
DEFAULT_GENDER_BANDS = (0.0, 13.0)
# --balance: the power of a decade's count in its faces' weights' denominator, and how a
# calibration file's `data` line names it
BALANCE = {"decade": 1.0, "sqrt": 0.5, "none": 0.0}
BALANCE_WORDS = {
    "decade": "ages balanced by decade",
    "sqrt": "ages weighted by 1/sqrt(faces of their decade)",
    "none": "unweighted",
}
DEFAULT_BALANCE = "sqrt"
MIN_BAND = 30  # fewer calibration faces in a band: it takes the pooled value
MAX_TEMPERATURE = 100.0
# below this, log p / T overflows for small p (5e-324 -> -inf) and the tempered
# distribution is NaN; the fits never go under 0.14 (gender) or 0.2 (age)
MIN_TEMPERATURE = 0.01


class CalibrationError(AgegenderError):
    """A calibration table or file is malformed, or does not fit the models it is used with."""


def band_index(bands: Sequence[float], age: float | None) -> int | None:
    """Index of the band (lower bounds, ascending) holding a predicted age (below the
    first: the first); None without bands or a finite age."""
    if not bands or age is None or not math.isfinite(age):
        return None
    index = 0
    for i, low in enumerate(bands):
        if age >= low:
            index = i
    return index


@dataclass(frozen=True)
class Calibration:
    """One task's calibration: age or gender (see the module's docstring)."""

    task: str  # "age" (also age groups: temperature only) or "gender"
    temperature: float = 1.0
    kernel: float = 0.0
    mass: float = 0.8
    bands: tuple[float, ...] = ()  # lower edges of predicted-age bands, increasing
    widen: tuple[float, ...] = ()  # age: years added at each end of the interval, per band
    temperatures: tuple[float, ...] = ()  # temperature per band (gender; age: with kernels)
    pit: tuple[tuple[float, ...], ...] = ()  # age: recalibration map per band
    kernels: tuple[float, ...] = ()  # age: log-age smoothing per band
    levels: tuple[float, ...] = ()  # age: the mass the interval is read at, per band

    def band(self, age: float | None) -> int | None:
        """Index of the band holding a predicted age (below the first: the first)."""
        return band_index(self.bands, age)

    def widening(self, age: float) -> float:
        index = self.band(age)
        return 0.0 if index is None or not self.widen else self.widen[index]

    def age_parameters(self, age: float) -> tuple[float, float]:
        """(temperature, kernel) for a distribution whose expected value is `age`: its
        band's when the calibration has them per band, else the global ones."""
        index = self.band(age)
        if index is None or not self.kernels:
            return self.temperature, self.kernel
        return self.temperatures[index], self.kernels[index]

    def pit_map(self, age: float) -> tuple[float, ...] | None:
        """The recalibration map of the band holding a predicted age (None: no map)."""
        index = self.band(age)
        return None if index is None or not self.pit else self.pit[index]

    def interval_mass(self, age: float) -> float:
        """The mass the interval is read at for a predicted age: its band's level (fitted
        so that whole-year ages fall inside with probability `mass`), else `mass`."""
        index = self.band(age)
        return self.mass if index is None or not self.levels else self.levels[index]

    def gender_temperature(self, age: float | None) -> float:
        index = self.band(age)
        if index is None or not self.temperatures:
            return self.temperature
        return self.temperatures[index]

    def to_table(self) -> dict[str, Any]:
        """The TOML table this calibration is read from."""
        out: dict[str, Any] = {"temperature": round(self.temperature, 4)}
        if self.task == "age":
            out["kernel"] = round(self.kernel, 4)
            out["mass"] = self.mass
        if self.bands:
            out["bands"] = list(self.bands)
        if self.widen:
            out["widen"] = [round(w, 2) for w in self.widen]
        if self.temperatures:
            out["temperatures"] = [round(t, 4) for t in self.temperatures]
        if self.kernels:
            out["kernels"] = [round(k, 4) for k in self.kernels]
        if self.pit:
            out["pit"] = [[round(v, 4) for v in row] for row in self.pit]
        if self.levels:
            out["levels"] = [round(v, 4) for v in self.levels]
        return out


@dataclass(frozen=True)
class CalibrationSet:
    """A preset's or file's calibration: per task, and the models it was fitted for."""

    age: Calibration | None = None
    gender: Calibration | None = None
    age_models: tuple[str, ...] = ()
    gender_models: tuple[str, ...] = ()
    age_weights: tuple[float, ...] | None = None
    gender_weights: tuple[float, ...] | None = None
    data: str = ""
    origin: str = ""

    def for_role(self, role: str) -> Calibration | None:
        return self.age if role == "age" else self.gender


# -- parsing: one line per fault ----------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_table(
    table: Any, task: str, fail: Callable[[str], NoReturn], name: str = "[calibration]"
) -> Calibration:
    """A calibration from its TOML table; `fail` raises the caller's one-line error.

    `task`: the card task ("age", "age-groups" or "gender"). Keys: temperature (0.01..100),
    kernel (>= 0, age), mass (0..1, age), bands (increasing ages >= 0), widen (age: one
    number of years per band), temperatures (gender: one > 0 per band).
    """
    if not isinstance(table, dict):
        fail(f"{name} must be a table, got {table!r:.60}")
    role = "gender" if task == "gender" else "age"
    known: tuple[str, ...] = GENDER_KEYS if role == "gender" else AGE_KEYS
    if task == "age-groups":
        known = ("temperature",)
    unknown = [k for k in table if k not in known]
    if unknown:
        fail(
            f"unknown field {unknown[0]!r} in {name} for a {task} model (known: {', '.join(known)})"
        )

    def number(
        key: str, default: float, low: float, *, strict: bool, high: float = math.inf
    ) -> float:
        value = table.get(key)
        if value is None:
            return default
        if not _is_number(value) or value < low or (strict and value == low) or value > high:
            bound = f"> {low:g}" if strict else f">= {low:g}"
            if math.isfinite(high):  # a value over the top bound is told the top bound
                bound += f" and <= {high:g}"
            fail(f"{name} {key} must be a finite number {bound}, got {value!r:.60}")
        return float(value)

    def numbers(key: str, check: Callable[[float], bool], what: str) -> tuple[float, ...]:
        value = table.get(key)
        if value is None:
            return ()
        if not (
            isinstance(value, list) and value and all(_is_number(v) and check(v) for v in value)
        ):
            fail(f"{name} {key} must be a list of {what}, got {value!r:.60}")
        return tuple(float(v) for v in value)

    temperature = number("temperature", 1.0, MIN_TEMPERATURE, strict=False, high=MAX_TEMPERATURE)
    kernel = number("kernel", 0.0, 0.0, strict=False, high=5.0)
    mass = number("mass", 0.8, 0.0, strict=True)
    if mass >= 1.0:
        fail(f"{name} mass must be between 0 and 1, got {mass:g}")
    bands = numbers("bands", lambda v: v >= 0, "ages >= 0")
    if list(bands) != sorted(set(bands)):
        fail(f"{name} bands must be increasing ages, got {list(bands)}")
    widen = numbers("widen", lambda v: abs(v) <= 200, "years (one per band)")
    temperatures = numbers(
        "temperatures",
        lambda v: MIN_TEMPERATURE <= v <= MAX_TEMPERATURE,
        f"temperatures in {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g} (one per band)",
    )
    pit = _pit_rows(table.get("pit"), name, fail)
    kernels = numbers("kernels", lambda v: 0 <= v <= 5.0, "widths in 0..5 (one per band)")
    levels = numbers("levels", lambda v: 0 < v < 1, "masses between 0 and 1 (one per band)")
    if role == "age" and bool(kernels) != bool(temperatures):
        fail(f"{name} temperatures and kernels go together (one of each per band)")
    checks = (
        ("widen", widen),
        ("temperatures", temperatures),
        ("pit", pit),
        ("kernels", kernels),
        ("levels", levels),
    )
    for key, items in checks:
        if items and len(items) != len(bands):
            fail(f"{name} {key} has {len(items)} entries for {len(bands)} bands")
    if widen and pit:
        fail(f"{name} has both widen and pit (one way to adjust the interval)")
    if levels and not pit:
        fail(f"{name} levels without pit (they are fitted on the map's distributions)")
    if bands and not widen and not temperatures and not pit:
        fail(f"{name} bands without {'temperatures' if role == 'gender' else 'pit or widen'}")
    return Calibration(
        role, temperature, kernel, mass, bands, widen, temperatures, pit, kernels, levels
    )


def _pit_rows(
    value: Any, name: str, fail: Callable[[str], NoReturn]
) -> tuple[tuple[float, ...], ...]:
    """``pit``: one list per band of the same length (>= 2), each rising from 0 to 1."""
    if value is None:
        return ()
    if not (isinstance(value, list) and value and all(isinstance(r, list) for r in value)):
        fail(f"{name} pit must be a list of lists (one per band), got {value!r:.60}")
    rows = []
    for index, row in enumerate(value):
        if not (len(row) >= 2 and all(_is_number(v) and 0 <= v <= 1 for v in row)):
            fail(f"{name} pit[{index}] must hold at least two numbers in 0..1, got {row!r:.60}")
        if row[0] != 0 or row[-1] != 1 or any(b < a for a, b in itertools.pairwise(row)):
            fail(f"{name} pit[{index}] must rise from 0 to 1 (never falling), got {row!r:.60}")
        if len(row) != len(value[0]):
            fail(f"{name} pit rows differ in length ({len(value[0])} and {len(row)})")
        rows.append(tuple(float(v) for v in row))
    return tuple(rows)


def parse_set(data: Mapping[str, Any], origin: str) -> CalibrationSet:
    """A calibration file's (or a preset's ``calibration``) tables."""

    def fail(message: str) -> NoReturn:
        raise CalibrationError(f"calibration {origin}: {message}")

    unknown = [k for k in data if k not in FILE_KEYS]
    if unknown:
        fail(f"unknown field {unknown[0]!r} (known: {', '.join(FILE_KEYS)})")
    models: dict[str, tuple[str, ...]] = {}
    weights: dict[str, tuple[float, ...] | None] = {}
    for role in ("age", "gender"):
        value = data.get(f"{role}_models", [])
        if isinstance(value, str):
            value = [value]
        if not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
            fail(f"{role}_models must be a list of card ids, got {value!r:.60}")
        models[role] = tuple(value)
        w = data.get(f"{role}_weights")
        if w is not None and not (isinstance(w, list) and all(_is_number(v) for v in w)):
            fail(f"{role}_weights must be a list of numbers, got {w!r:.60}")
        weights[role] = None if w is None else tuple(float(v) for v in w)
    tables = {
        role: parse_table(data[role], role, fail, f"[{role}]") if role in data else None
        for role in ("age", "gender")
    }
    text = data.get("data", "")
    return CalibrationSet(
        tables["age"],
        tables["gender"],
        models["age"],
        models["gender"],
        weights["age"],
        weights["gender"],
        text if isinstance(text, str) else "",
        origin,
    )


def load_file(path: str | Path) -> CalibrationSet:
    """A calibration TOML file (what ``agegender calibrate`` writes)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CalibrationError(
            f"--calibration {path}: cannot read it ({error.strerror or error})"
        ) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise CalibrationError(f"--calibration {path}: not a TOML file ({error})") from None
    fitted = parse_set(data, str(path))
    if fitted.age is None and fitted.gender is None:
        # applied, it would change nothing: the run would look calibrated and be raw
        raise CalibrationError(
            f"--calibration {path}: holds no calibration (no [age] or [gender] table); "
            "write one with agegender calibrate, or give --calibration none"
        )
    return fitted


def _normalised(weights: Sequence[float] | None, n: int) -> tuple[float, ...]:
    """Ensemble weights summing to 1 (None: n equal ones), as they are compared and shown."""
    w = [1.0] * n if weights is None else list(weights)
    total = sum(w) or 1.0
    return tuple(round(v / total, 6) for v in w)


def _weights_match(given: Sequence[float] | None, fitted: Sequence[float] | None, n: int) -> bool:
    return len(given or [0] * n) == n and _normalised(given, n) == _normalised(fitted, n)


def _shown_weights(weights: Sequence[float] | None, n: int) -> str:
    return "/".join(f"{v:g}" for v in _normalised(weights, n))


def resolve(
    setting: str,
    preset: CalibrationSet | None,
    role: str,
    card_ids: Sequence[str],
    weights: Sequence[float] | None,
    card_tables: Sequence[Calibration | None],
) -> Calibration | None:
    """The calibration a task uses.

    `setting` is the configuration's ``calibration``: "none" (none at all), "" (the
    preset's, if fitted for these very models and weights; else a lone card's own
    ``[calibration]``), or a calibration file (which must have been fitted for these
    models: an error otherwise).
    """
    if setting == "none":
        return None
    chosen = preset
    explicit = setting not in ("", "preset")
    if explicit:
        chosen = load_file(setting)
    if chosen is not None and chosen.for_role(role) is not None:
        fitted = chosen.age_models if role == "age" else chosen.gender_models
        fitted_weights = chosen.age_weights if role == "age" else chosen.gender_weights
        if tuple(fitted) == tuple(card_ids) and _weights_match(
            weights, fitted_weights, len(card_ids)
        ):
            return chosen.for_role(role)
        if explicit:
            if tuple(fitted) == tuple(card_ids):  # the same models, other weights
                raise CalibrationError(
                    f"--calibration {setting}: its {role} calibration was fitted for "
                    f"{'+'.join(fitted)} weighted {_shown_weights(fitted_weights, len(fitted))}"
                    f", not {_shown_weights(weights, len(card_ids))}; fit one for these "
                    "weights with agegender calibrate"
                )
            raise CalibrationError(
                f"--calibration {setting}: its {role} calibration was fitted for "
                f"{'+'.join(fitted) or 'no models'}, not {'+'.join(card_ids)}"
            )
    if len(card_tables) == 1:
        return card_tables[0]
    return None


# -- applying ------------------------------------------------------------------------------
def temper(
    probs: NDArray[np.float64], temperature: float, *, logs: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """softmax(log p / T) along the last axis (zeros stay zero). `logs`: log(probs), when
    the caller has them (a fit's grid tempers the same distributions at many T)."""
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p / p.sum(axis=-1, keepdims=True)
    if logs is None:
        with np.errstate(divide="ignore"):
            logs = np.log(p)
    logits = logs / temperature
    logits = logits - logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=-1, keepdims=True)


# The smoothing matrices made, most recently used last: a fit tries hundreds of widths, a
# running estimator uses a few per band, so a few dozen are kept (each 101 x 101 floats).
_KERNELS: OrderedDict[tuple[bytes, float], Any] = OrderedDict()
_KERNELS_KEPT = 64
_KERNELS_LOCK = threading.Lock()


def kernel_matrix(values: NDArray[np.float64], width: float) -> NDArray[np.float64]:
    """Row i: where bin i's mass goes, a Gaussian of std `width` in log(1 + age).

    Each bin j receives the Gaussian's mass over its cell in log(1 + age) (from halfway
    to the bin below to halfway to the bin above; the end cells open): weighting bins by
    the density at their value alone would ignore that whole-year bins lie denser in
    log-age the older they are, moving the smoothed mass up by a factor exp(s^2) in
    (1 + age) (13% for s = 0.35), and would count twice where bins crowd (0.25 and 1)."""
    import numpy as np

    key = (np.asarray(values, np.float64).tobytes(), float(width))
    with _KERNELS_LOCK:
        cached = _KERNELS.get(key)
        if cached is not None:
            _KERNELS.move_to_end(key)
    if cached is None:
        v = np.asarray(values, np.float64)
        order = np.argsort(v, kind="stable")
        lv = np.log1p(np.maximum(v[order], 0.0))
        edges = np.concatenate([[-np.inf], (lv[1:] + lv[:-1]) / 2, [np.inf]])
        z = (edges[None, :] - lv[:, None]) / (width * math.sqrt(2.0))
        cdf = 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(z))
        k = np.diff(cdf, axis=1)
        k = k / k.sum(axis=1, keepdims=True)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        cached = k[np.ix_(back, back)]
        with _KERNELS_LOCK:
            _KERNELS[key] = cached
            while len(_KERNELS) > _KERNELS_KEPT:
                _KERNELS.popitem(last=False)
    return cached  # type: ignore[no-any-return]


def calibrate_age(
    probs: NDArray[np.float64], values: NDArray[np.float64], temperature: float, kernel: float
) -> NDArray[np.float64]:
    """Temperature, then log-age smoothing, of one (bins,) or many (N, bins) distributions."""
    return smooth(temper(probs, temperature), values, kernel)


def smooth(
    probs: NDArray[np.float64], values: NDArray[np.float64], kernel: float
) -> NDArray[np.float64]:
    """The log-age smoothing of width `kernel` (none at 0) of (bins,) or (N, bins)."""
    return probs @ kernel_matrix(values, kernel) if kernel > 0 else probs


def calibrate_in_band(
    calibration: Calibration, probs: NDArray[np.float64], values: NDArray[np.float64], age: float
) -> NDArray[np.float64]:
    """A distribution tempered and smoothed with the pair of the band holding `age` (its
    expected value): what a frame's estimate and a frame's fusion evidence both use."""
    temperature, kernel = calibration.age_parameters(age)
    return calibrate_age(probs, values, temperature, kernel)


def remap(probs: NDArray[np.float64], pit: Sequence[float]) -> NDArray[np.float64]:
    """A distribution (bins,) whose cumulative distribution is ``R(F)``: F the given one's,
    R the map through ``pit`` (its values at evenly spaced points of [0, 1])."""
    import numpy as np

    p = np.asarray(probs, np.float64)
    cdf = np.cumsum(p)
    cdf = cdf / cdf[-1]
    mapped = np.interp(cdf, np.linspace(0.0, 1.0, len(pit)), np.asarray(pit, np.float64))
    mapped[-1] = 1.0
    return np.diff(mapped, prepend=0.0)


def interval_of(
    probs: NDArray[np.float64], values: NDArray[np.float64], mass: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The central `mass` interval of each row of (N, bins) distributions, read off the
    cumulative distribution interpolated linearly between bin midpoints (each bin's mass
    counted at its value: half below, half above), so the ends are not tied to whole bins."""
    import numpy as np

    probs = np.atleast_2d(probs)
    cdf = np.cumsum(probs, axis=1)
    cdf = cdf / cdf[:, -1:]
    mid = cdf - probs / probs.sum(axis=1, keepdims=True) / 2
    tail = (1.0 - mass) / 2
    lo = np.array([np.interp(tail, row, values) for row in mid])
    hi = np.array([np.interp(1.0 - tail, row, values) for row in mid])
    return lo, hi


# -- fitting -------------------------------------------------------------------------------
def label_mask(
    values: NDArray[np.float64], labels: Sequence[tuple[float, float]]
) -> NDArray[np.float64]:
    """(N, bins): 1 where a bin is consistent with a label (low, high).

    An exact age (low == high) is its nearest bin; a group (interval-censored) is every
    bin inside it (or the nearest to its middle when none is).
    """
    import numpy as np

    mask = np.zeros((len(labels), len(values)))
    for i, (low, high) in enumerate(labels):
        inside = (values >= low - 0.5) & (values <= high + 0.5) if high > low else None
        if inside is not None and inside.any():
            mask[i, inside] = 1.0
        else:
            mask[i, int(np.argmin(np.abs(values - (low + high) / 2)))] = 1.0
    return mask


def age_nll(
    probs: NDArray[np.float64],
    values: NDArray[np.float64],
    mask: NDArray[np.float64],
    temperature: float,
    kernel: float,
) -> float:
    """Mean negative log-likelihood of the labels under the calibrated distributions."""
    return _labels_nll(calibrate_age(probs, values, temperature, kernel), mask)


def _labels_nll(q: NDArray[np.float64], mask: NDArray[np.float64]) -> float:
    import numpy as np

    return float(-np.mean(np.log(np.maximum((q * mask).sum(axis=1), 1e-300))))


def fit_temperature_kernel(
    probs: NDArray[np.float64],
    values: NDArray[np.float64],
    labels: Sequence[tuple[float, float]],
    *,
    with_kernel: bool = True,
) -> tuple[float, float]:
    """(T, s) minimising the labels' negative log-likelihood (grid, then finer grids)."""
    import numpy as np

    mask = label_mask(values, labels)
    log_t = np.linspace(math.log(0.25), math.log(20.0), 25)
    kernels = np.linspace(0.0, 0.6, 25) if with_kernel else np.zeros(1)
    best = (math.inf, 0.0, 0.0)
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logs = np.log(p)
    for _ in range(3):
        for lt in log_t:
            # age_nll at each (T, s), each tempering done once for all the widths
            tempered = temper(p, math.exp(lt), logs=logs)
            for s in kernels:
                loss = _labels_nll(smooth(tempered, values, float(s)), mask)
                if loss < best[0]:
                    best = (loss, float(lt), float(s))
        step_t = (log_t[1] - log_t[0]) if len(log_t) > 1 else 0.1
        log_t = np.linspace(best[1] - step_t, best[1] + step_t, 9)
        if with_kernel:
            step_s = kernels[1] - kernels[0]
            kernels = np.linspace(max(best[2] - step_s, 0.0), best[2] + step_s, 9)
    return math.exp(best[1]), best[2]


def pit_values(
    probs: NDArray[np.float64], values: NDArray[np.float64], ages: Sequence[float], seed: int = 0
) -> NDArray[np.float64]:
    """Randomised probability integral transform of each exact age under its (N, bins)
    distribution: F(age - 1) + V * p(age), V uniform (seeded: the same fit every time).
    An age past the last bin (by more than half the last step) has all the mass below
    it: u = 1 (no interval read off the bins can hold it), and one before the first, 0."""
    import numpy as np

    probs = np.atleast_2d(probs)
    probs = probs / probs.sum(axis=1, keepdims=True)
    index = np.array([int(np.argmin(np.abs(values - a))) for a in ages], dtype=np.int64)
    rows = np.arange(len(index))
    below = np.cumsum(probs, axis=1)[rows, index] - probs[rows, index]
    draw = np.random.default_rng(seed).random(len(index))
    u = np.clip(below + draw * probs[rows, index], 0.0, 1.0)
    if len(values) > 1:
        a = np.asarray(ages, np.float64)
        u[past_last_bin(values, a)] = 1.0
        u[a < values[0] - (values[1] - values[0]) / 2] = 0.0
    return u  # type: ignore[no-any-return]


def past_last_bin(values: NDArray[np.float64], ages: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Ages past the last bin by more than half the last step: no interval read off the
    bins holds them (u = 1 in the PIT; left out of the level fit)."""
    if len(values) < 2:
        return ages > values[-1]  # type: ignore[no-any-return]
    return ages > values[-1] + (values[-1] - values[-2]) / 2  # type: ignore[no-any-return]


def effective_n(weights: NDArray[np.float64]) -> float:
    """Kish's effective sample size of weighted faces (0 for none): a band below MIN_BAND
    of it takes the pooled map or level."""
    return float(weights.sum() ** 2 / (weights**2).sum()) if len(weights) else 0.0


def decade_weights(ages: Sequence[float], power: float = 1.0) -> NDArray[np.float64]:
    """Each face's weight: 1 / count**power, count the faces of its decade of true age
    (0-9, ..., 80+), normalised to a mean of 1. Power 1: every decade counts equally;
    0.5: a decade counts as the square root of its faces; 0: every face alike."""
    import numpy as np

    decade = np.minimum(np.asarray(ages, np.float64) // 10, 8).astype(np.int64)
    counts = np.bincount(decade, minlength=9)
    weights = 1.0 / counts[decade].astype(np.float64) ** power
    return weights * len(weights) / weights.sum()  # type: ignore[no-any-return]


def fit_pit_map(
    u: NDArray[np.float64], weights: NDArray[np.float64], points: int = PIT_POINTS
) -> tuple[float, ...]:
    """R: the weighted empirical distribution of the u values at `points` evenly spaced
    points of [0, 1] (ties counted half below, half above), pinned to 0 and 1."""
    import numpy as np

    order = np.argsort(u)
    u, w = np.asarray(u, np.float64)[order], np.asarray(weights, np.float64)[order]
    cum = np.concatenate([[0.0], np.cumsum(w)]) / w.sum()
    grid = np.linspace(0.0, 1.0, points)
    below = cum[np.searchsorted(u, grid, side="left")]
    upto = cum[np.searchsorted(u, grid, side="right")]
    row = (below + upto) / 2
    row[0], row[-1] = 0.0, 1.0
    return tuple(float(v) for v in np.maximum.accumulate(row))


def fit_band_parameters(
    probs: NDArray[np.float64],
    values: NDArray[np.float64],
    labels: Sequence[tuple[float, float]],
    rows: Sequence[int],
    band_of: Sequence[int | None],
    count: int,
) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    """(T, s) fitted on all `rows`, and per band on its rows (a band with fewer than
    MIN_BAND rows takes the global pair)."""
    rows = list(rows)
    pooled = fit_temperature_kernel(probs[rows], values, [labels[i] for i in rows])
    per_band = []
    for index in range(count):
        mine = [i for i in rows if band_of[i] == index]
        per_band.append(
            fit_temperature_kernel(probs[mine], values, [labels[i] for i in mine])
            if len(mine) >= MIN_BAND
            else pooled
        )
    return pooled, per_band


def fold_count(exact: int, folds: int = CROSS_FOLDS) -> int:
    """Folds the recalibration map is cross-fitted in, for `exact` exact ages (fewer than
    MIN_BAND: no map at all, only the temperature and the smoothing; 0 here)."""
    return 0 if exact < MIN_BAND else max(2, min(folds, exact // MIN_BAND))


def fit_age(
    probs: NDArray[np.float64],
    values: NDArray[np.float64],
    labels: Sequence[tuple[float, float]],
    rows: Sequence[int],
    *,
    bands: Sequence[float] = DEFAULT_AGE_BANDS,
    mass: float = 0.8,
    balance: float = BALANCE[DEFAULT_BALANCE],
    folds: int = CROSS_FOLDS,
    seed: int = 0,
    points: int = PIT_POINTS,
) -> Calibration:
    """Temperature and kernel by likelihood, globally and per band of predicted age (the
    error's scale differs: a baby's in months, an adult's in years), on `rows`; the
    recalibration map per band from the exact ages' PIT values, each computed with the
    parameters fitted on the other folds (cross-fitting: no face's u comes from
    parameters fitted on it), the faces weighted by `decade_weights(ages, balance)` (the
    map and the levels: 1 every decade alike, 0.5 the default, 0 unweighted). A band whose
    faces weigh as little as fewer than MIN_BAND unweighted ones (Kish's effective sample
    size) takes the map of all."""
    import random

    import numpy as np

    rows = list(rows)
    raw = probs / probs.sum(axis=1, keepdims=True)
    band_of = [band_index(bands, float(a)) for a in raw @ values]
    (temperature, kernel), per_band = fit_band_parameters(
        probs, values, labels, rows, band_of, len(bands)
    )
    exact = [i for i in rows if labels[i][0] == labels[i][1]]
    if len(exact) < MIN_BAND:
        return Calibration("age", temperature, kernel, mass)
    shuffled = list(exact)
    random.Random(seed).shuffle(shuffled)
    k = fold_count(len(exact), folds)
    u = np.empty(len(exact))
    cross = np.empty((len(exact), len(values)))  # each face's distribution, cross-fitted
    position = {row: n for n, row in enumerate(exact)}
    for fold in range(k):
        held = shuffled[fold::k]
        kept = set(held)
        _, fold_params = fit_band_parameters(
            probs, values, labels, [i for i in rows if i not in kept], band_of, len(bands)
        )
        for index in range(len(bands)):
            mine = [i for i in held if band_of[i] == index]
            if mine:
                t, s = fold_params[index]
                q = calibrate_age(probs[mine], values, t, s)
                cross[[position[i] for i in mine]] = q
                u[[position[i] for i in mine]] = pit_values(
                    q, values, [labels[i][0] for i in mine], seed + fold
                )
    ages = [labels[i][0] for i in exact]
    weights = decade_weights(ages, float(balance))
    band = np.array([band_of[i] for i in exact])
    pooled = fit_pit_map(u, weights, points)
    maps = []
    for index in range(len(bands)):
        w = weights[band == index]
        maps.append(
            fit_pit_map(u[band == index], w, points) if effective_n(w) >= MIN_BAND else pooled
        )
    # the map's distributions of the same cross-fitted faces, rounded as the file keeps it
    rounded = [tuple(round(v, 4) for v in row) for row in maps]
    mapped = np.array([remap(q, rounded[b]) for q, b in zip(cross, band, strict=True)])
    true = np.asarray(ages, np.float64)
    within = ~past_last_bin(values, true)  # no level can cover the others
    levels = (  # none when no exact age is within the bins (the interval read at `mass`)
        fit_levels(
            mapped[within], values, true[within], band[within], weights[within], mass, len(bands)
        )
        if within.any()
        else []
    )
    return Calibration(
        "age",
        temperature,
        kernel,
        mass,
        tuple(bands),
        temperatures=tuple(t for t, _ in per_band),
        pit=tuple(maps),
        kernels=tuple(s for _, s in per_band),
        levels=tuple(levels),
    )


def whole_year_coverage(
    probs: NDArray[np.float64],
    values: NDArray[np.float64],
    ages: NDArray[np.float64],
    weights: NDArray[np.float64],
    level: float,
) -> float:
    """Weighted share of the (whole-year) ages inside the central `level` interval of their
    (N, bins) distributions, read and rounded to 0.1 year as the estimates stage does."""
    import numpy as np

    lows, highs = interval_of(probs, values, level)
    inside = (np.round(np.maximum(lows, 0.0), 1) <= ages) & (ages <= np.round(highs, 1))
    return float((weights * inside).sum() / weights.sum())


def fit_levels(
    probs: NDArray[np.float64],
    values: NDArray[np.float64],
    ages: NDArray[np.float64],
    band: NDArray[np.int64],
    weights: NDArray[np.float64],
    mass: float,
    count: int,
) -> list[float]:
    """Per band (of `count`), the smallest mass (to 1e-4) whose central interval holds the faces'
    whole-year ages with weighted probability `mass` (split-conformal on the level).

    The map makes the randomised PIT uniform, i.e. the age spread over its year; the
    interval is then checked against the whole year, which falls inside whenever the
    middle of its bin does. Where a distribution covers only a few bins (a baby's), the
    bin straddling the interval's end is mostly counted in: at the mass itself the
    interval held 96% of the 1-year-olds of utkface-calib and 84% of the 0-9s (README).
    A band whose faces weigh as little as fewer than MIN_BAND unweighted ones takes the
    level of all faces (each read off its own band's map). The caller leaves out ages
    past the last bin: no interval read off the bins holds them, and with them in, a
    band of old faces would be given nearly all of its distribution (the CC0 model's
    bins end at 80: its 60+ band went to 0.999)."""
    import numpy as np

    def solve(rows: NDArray[np.bool_]) -> float:
        low, high = 0.01, 0.999
        if whole_year_coverage(probs[rows], values, ages[rows], weights[rows], high) < mass:
            return mass  # no level reaches it: the map's own interval
        for _ in range(14):  # coverage grows with the level: bisection
            middle = (low + high) / 2
            covered = whole_year_coverage(probs[rows], values, ages[rows], weights[rows], middle)
            low, high = (middle, high) if covered < mass else (low, middle)
        return round(high, 4)

    pooled = solve(np.ones(len(ages), bool))
    out = []
    for index in range(count):
        mine = band == index
        out.append(solve(mine) if effective_n(weights[mine]) >= MIN_BAND else pooled)
    return out


def gender_nll(p_male: Sequence[float], is_male: Sequence[bool], temperature: float) -> float:
    import numpy as np

    p = np.clip(np.asarray(p_male, np.float64), 1e-9, 1 - 1e-9)
    z = np.log(p / (1 - p)) / temperature
    q = np.clip(1 / (1 + np.exp(-z)), 1e-12, 1 - 1e-12)
    t = np.asarray(is_male, bool)
    return float(-np.mean(np.where(t, np.log(q), np.log(1 - q))))


def fit_gender_temperature(p_male: Sequence[float], is_male: Sequence[bool]) -> float:
    """The temperature of the two-class softmax minimising the negative log-likelihood."""
    grid = [math.exp(x / 40) for x in range(-80, 161)]  # 0.14 .. 55
    return min(grid, key=lambda t: gender_nll(p_male, is_male, t)) if p_male else 1.0


def fit_gender(
    p_male: Sequence[float],
    is_male: Sequence[bool],
    predicted_age: Sequence[float | None],
    *,
    bands: Sequence[float] = DEFAULT_GENDER_BANDS,
) -> Calibration:
    """One temperature overall and one per band of predicted age (pooled below MIN_BAND)."""
    pooled = fit_gender_temperature(p_male, is_male)
    per_band = []
    band_of = [band_index(bands, a) for a in predicted_age]
    for index in range(len(bands)):
        rows = [i for i, band in enumerate(band_of) if band == index]
        if len(rows) >= MIN_BAND:
            per_band.append(
                fit_gender_temperature([p_male[i] for i in rows], [is_male[i] for i in rows])
            )
        else:
            per_band.append(pooled)
    return Calibration("gender", pooled, bands=tuple(bands), temperatures=tuple(per_band))


def to_toml(calibration: CalibrationSet, header: Sequence[str] = ()) -> str:
    """A calibration file's text (read back by :func:`load_file`)."""

    def value(v: Any) -> str:
        if isinstance(v, str):  # a TOML basic string is a JSON string (a newline, ...)
            return json.dumps(v.encode("utf-8", "backslashreplace").decode("utf-8"))
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, float):
            return repr(round(v, 6))
        return str(v)

    # a comment ends at a line break: one in a header (a dataset's path) is written as \n
    lines = [f"# {single_line(h)}" for h in header]
    for role in ("age", "gender"):
        lines.append(f"{role}_models = {value(list(getattr(calibration, f'{role}_models')))}")
        weights = getattr(calibration, f"{role}_weights")
        if weights is not None:
            lines.append(f"{role}_weights = {value(list(weights))}")
    if calibration.data:
        lines.append(f"data = {value(calibration.data)}")
    for role in ("age", "gender"):
        cal = calibration.for_role(role)
        if cal is not None:
            lines += ["", f"[{role}]"]
            lines += [f"{k} = {value(v)}" for k, v in cal.to_table().items()]
    return "\n".join(lines) + "\n"
