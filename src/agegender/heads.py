"""Heads and tasks: the models that turn face crops into estimates.

A **head** is one card + its ONNX Runtime session + the crop the card asks for; it maps
a batch of crops to probability vectors (mirror-averaged with TTA). A **task** is the
heads that fill one field of a :class:`~agegender.results.Face` (``age`` or ``gender``):
with several heads (a DEX-style ensemble) it maps each head's distribution onto a common
support and takes their weighted mean, then decodes that one distribution.

Which field a card fills and how its distribution is decoded is data (``TASK_ROLE`` and
``DECODERS`` below), not branches: a new model family needs a card, not code here.

A task's **calibration** (calibration.py) is applied when its combined distribution is
decoded: the preset's (or ``--calibration FILE``'s) when fitted for exactly these cards
and weights, else a lone card's own ``[calibration]``. ``decode_face`` decodes age
before gender, whose calibration depends on the estimated age.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import crops
from .calibration import Calibration, resolve
from .cards import ModelCard, get_card
from .config import DEFAULT_BATCH
from .errors import AgegenderError, CardError
from .estimates import age_from_distribution, age_from_groups, gender_from_probs, group_ages
from .faces import Detection
from .inference import OnnxModel
from .results import AgeEstimate, GenderEstimate

# Which Face field a card's task fills.
TASK_ROLE = {"age": "age", "age-groups": "age", "gender": "gender"}
ROLES = ("age", "gender")

CropKey = tuple[str, float, float, int, int]


@dataclass(frozen=True)
class Support:
    """What a task's combined distribution is over: age values, age groups or labels."""

    kind: str  # a card task: "age", "age-groups" or "gender"
    values: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    labels: tuple[str, ...] = ()
    groups: tuple[tuple[float, float], ...] = ()


# (support, distribution, thresholds[, calibration or None[, the face's estimated age]])
Decoder = Callable[..., Any]

DECODERS: dict[str, Decoder] = {
    "age": lambda s, p, t, c=None, a=None: age_from_distribution(
        p, s.values, thresholds=t, calibration=c
    ),
    "age-groups": lambda s, p, t, c=None, a=None: age_from_groups(
        p, s.groups, s.labels, thresholds=t, calibration=c
    ),
    "gender": lambda s, p, t, c=None, a=None: gender_from_probs(p, s.labels, c, a),
}


def load_model(
    ref: Any,
    *,
    threads: int | None = None,
    max_batch: int = DEFAULT_BATCH,
    opened: dict[tuple[Any, ...], OnnxModel] | None = None,
) -> OnnxModel:
    """An ONNX model from a card id, a card, ``CARD=PATH`` or (card, path).

    With an explicit path the card's size and hash are not required to match (a user's
    own conversion of the same model); the graph is still checked against the card.
    `opened`: models loaded so far (by file and input); a card of a file already open with
    the same input reuses that session instead of opening the file again.
    """
    from . import store

    path: Path | None = None
    if isinstance(ref, tuple):
        card, path = ref[0], Path(ref[1])
    elif isinstance(ref, ModelCard):
        card = ref
    elif isinstance(ref, str) and "=" in ref:
        card_ref, _, file = ref.partition("=")
        card = get_card(card_ref)
        if not file.strip():
            raise AgegenderError(f"model {card.id}: {ref!r} names no file after '='")
        path = Path(file).expanduser()
    elif isinstance(ref, str):
        card = get_card(ref)
    else:
        raise AgegenderError(f"a model is a card id, CARD=FILE or a ModelCard, not {ref!r}")
    if path is None:
        path = store.resolve(card)
    elif not path.is_file():
        raise AgegenderError(f"model {card.id}: {path} is not a file")
    elif path.stat().st_size == 0:
        raise AgegenderError(f"model {card.id}: {path} is an empty file")
    key = (path.resolve(), card.input, threads, max_batch)
    shared = opened.get(key) if opened is not None else None
    model = OnnxModel(card, path, threads=threads, max_batch=max_batch, session_of=shared)
    if opened is not None and shared is None:
        opened[key] = model
    return model


@dataclass
class Head:
    """One model of a task: its card, session, crop and weight in the task's mean."""

    model: OnnxModel
    weight: float = 1.0

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def crop_key(self) -> CropKey:
        """Heads with equal keys share one crop per face."""
        card = self.card
        spec = card.crop
        return (spec.kind, spec.padding, spec.margin, card.input.height, card.input.width)

    def crop(self, rgb: NDArray[np.uint8], detection: Detection) -> NDArray[np.uint8]:
        size = (self.card.input.height, self.card.input.width)
        return crops.crop_for(rgb, detection, self.card.crop, size)

    @property
    def run_key(self) -> tuple[str, CropKey, Any]:
        """Heads with equal keys read outputs of one session run: the same graph file fed
        the same crops the same way (faceres' age and gender heads)."""
        return (str(self.model.path), self.crop_key, self.card.input)

    def run(self, batch: Sequence[NDArray[np.uint8]], *, tta: bool) -> NDArray[np.float64]:
        """Probabilities (N, outputs); with `tta`, averaged with the mirrored crops'."""
        return run_together([self], batch, tta=tta)[0]


def run_together(
    heads: Sequence[Head], batch: Sequence[NDArray[np.uint8]], *, tta: bool
) -> list[NDArray[np.float64]]:
    """Each head's probabilities for the same crops, from one run of the first head's
    session that fetches every head's output (heads of one ``run_key``). With `tta` the
    mirrored crops go in the same run, and each head averages the two distributions
    (the README has the gain)."""
    first = heads[0]
    if not len(batch):
        return [np.zeros((0, h.card.output.width)) for h in heads]
    names = list(dict.fromkeys(h.model.output.name for h in heads))
    crops = list(batch)
    if tta:  # a view (the crops are contiguous): preprocess copies it into the tensor anyway
        crops += [c[:, ::-1] for c in batch]
    raw = first.model.outputs(crops, names)
    results = []
    for head in heads:
        probs = head.model.probabilities(raw[head.model.output.name])
        if tta:
            probs = (probs[: len(batch)] + probs[len(batch) :]) / 2
        results.append(probs)
    return results


@dataclass(frozen=True)
class Mirror:
    """Which heads average each face with its mirror image (test-time augmentation).

    ``gated``: cards whose mirrored crop runs only for faces whose gender is uncertain:
    the gender task's top probability (its raw mixture, before calibration), computed with
    those cards on the crop alone (and every other head mirror-averaged), below
    ``0.5 + margin``. The other heads always
    average. ``margin`` 0.5 or more mirrors every face; without a gender task every face
    is mirrored. The README has the measurement behind the default's gate.
    """

    on: bool = True
    gated: frozenset[str] = frozenset()
    margin: float = 0.5

    def gates(self, head: Head) -> bool:
        return self.on and self.margin < 0.5 and head.card.id in self.gated


def distributions(
    tasks: dict[str, Task],
    crops_of: Callable[[Head], Sequence[NDArray[np.uint8]]],
    *,
    tta: bool | Mirror,
) -> dict[str, NDArray[np.float64]]:
    """Each task's combined distribution (faces x support): the heads grouped by
    ``run_key`` so that one session run serves every head reading the same graph.

    With a gating ``Mirror``, a group of gated heads first runs on the crops alone; the
    faces whose gender is then uncertain get a second run on their mirrored crops, which
    is averaged in exactly as an ungated run averages it."""
    mirror = tta if isinstance(tta, Mirror) else Mirror(on=tta)
    groups: dict[tuple[str, CropKey, Any], list[Head]] = {}
    for task in tasks.values():
        for head in task.heads:
            groups.setdefault(head.run_key, []).append(head)
    gender = tasks.get("gender")
    probs: dict[int, NDArray[np.float64]] = {}
    later: list[tuple[list[Head], Sequence[NDArray[np.uint8]]]] = []
    for group in groups.values():
        gate = gender is not None and all(mirror.gates(h) for h in group)
        crops = crops_of(group[0])
        if gate:
            later.append((group, crops))
        outs = run_together(group, crops, tta=mirror.on and not gate)
        for head, out in zip(group, outs, strict=True):
            probs[id(head)] = out
    if later and gender is not None:
        combined = gender.combine([probs[id(h)] for h in gender.heads])
        uncertain = np.flatnonzero(combined.max(axis=1) < 0.5 + mirror.margin)
        for group, crops in later if len(uncertain) else ():
            mirrored = run_together(group, [crops[int(i)][:, ::-1] for i in uncertain], tta=False)
            for head, out in zip(group, mirrored, strict=True):
                probs[id(head)][uncertain] = (probs[id(head)][uncertain] + out) / 2
    return {role: task.combine([probs[id(h)] for h in task.heads]) for role, task in tasks.items()}


def _support(card: ModelCard) -> Support:
    out = card.output
    return Support(card.task, values=out.value_array(), labels=out.labels, groups=out.groups)


def _age_values(support: Support) -> NDArray[np.float64]:
    """The ages a head's outputs put mass on: its bins, or every year of its groups."""
    if support.kind == "age":
        return support.values
    return np.concatenate([group_ages(g) for g in support.groups])


def support_map(head: Support, common: Support) -> NDArray[np.float64]:
    """The (head outputs, common support) matrix that moves a head's distribution onto the
    common support: a bin to the same age, a group's mass spread evenly over its years, a
    label to the same label. Each row sums to 1, so mass is kept; summing the common
    support back over a group's years gives the group's mass again."""
    matrix = np.zeros((_width(head), _width(common)), np.float64)
    if common.kind == "age":
        if head.kind == "age":
            rows = np.arange(len(head.values))
            matrix[rows, np.searchsorted(common.values, head.values)] = 1.0
        else:
            for row, group in enumerate(head.groups):
                ages = group_ages(group)
                matrix[row, np.searchsorted(common.values, ages)] = 1.0 / len(ages)
    elif common.kind == "age-groups":
        for row, group in enumerate(head.groups):
            matrix[row, common.groups.index(group)] = 1.0
    else:
        for row, label in enumerate(head.labels):
            matrix[row, common.labels.index(label)] = 1.0
    return matrix


def _width(support: Support) -> int:
    if support.kind == "age":
        return len(support.values)
    return len(support.groups) if support.kind == "age-groups" else len(support.labels)


def common_support(role: str, supports: Sequence[Support], ids: str) -> Support:
    """One support for a task's heads: the same groups or labels when they all share them;
    else, for age, every age any head puts mass on (bins, and the years of groups)."""
    first = supports[0]
    same = all(
        s.kind == first.kind and set(s.labels) == set(first.labels) and s.groups == first.groups
        for s in supports
    )
    if first.kind == "gender" or (same and first.kind == "age-groups"):
        if not same:
            raise CardError(f"{role} ensemble {ids}: the cards' labels or groups differ")
        return first
    return Support("age", values=np.unique(np.concatenate([_age_values(s) for s in supports])))


class Task:
    """The heads that fill one Face field, combined by a weighted mean of distributions.

    Heads on different supports are mapped onto one before averaging (``support_map``):
    age bins of different models (81 bins from 0.25 to 80, 100 or 101 ages) onto every age
    any of them names, age groups onto the years they span, so the combined distribution
    still gives a meaningful std, interval and P(age >= t)."""

    def __init__(self, role: str, heads: Sequence[Head], calibration: Calibration | None = None):
        if not heads:
            raise AgegenderError(f"the {role} task has no model")
        self.role = role
        self.heads = list(heads)
        self.calibration = calibration
        supports = [_support(h.card) for h in self.heads]
        ids = ", ".join(h.card.id for h in self.heads)
        if len({TASK_ROLE[s.kind] for s in supports}) > 1:
            raise CardError(f"{role} ensemble {ids}: cards of different tasks cannot be combined")
        self.support = common_support(role, supports, ids)
        self._maps = [support_map(s, self.support) for s in supports]
        total = sum(h.weight for h in self.heads)
        self._weights = [h.weight / total for h in self.heads]
        self._identity = len(self.heads) == 1 and np.array_equal(
            self._maps[0], np.eye(len(self._maps[0]))
        )

    def combine(self, outputs: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
        """The weighted mean (N, support) of the heads' distributions (N, outputs) each."""
        if self._identity:
            return outputs[0]
        rows = outputs[0].shape[0]
        mean = np.zeros((rows, _width(self.support)), np.float64)
        for out, matrix, weight in zip(outputs, self._maps, self._weights, strict=True):
            totals = out.sum(axis=1, keepdims=True)
            mean += weight * (out / np.where(totals > 0, totals, 1.0)) @ matrix
        return mean

    def decode(
        self, probs: NDArray[np.float64], thresholds: Sequence[float], age: float | None = None
    ) -> AgeEstimate | GenderEstimate:
        """One face's estimate; `age` (the face's estimated age) picks a gender calibration's
        age band."""
        return DECODERS[self.support.kind](self.support, probs, thresholds, self.calibration, age)


def decode_face(
    tasks: dict[str, Task], rows: dict[str, NDArray[np.float64]], thresholds: Sequence[float]
) -> dict[str, Any]:
    """Every task's estimate of one face (age first: gender's calibration depends on it)."""
    out: dict[str, Any] = {}
    age = None
    for role in sorted(tasks, key=lambda r: r != "age"):
        out[role] = tasks[role].decode(rows[role], thresholds, age)
        if role == "age":
            age = out[role].value
    return out


def build_tasks(
    refs: dict[str, Sequence[Any]],
    weights: dict[str, Sequence[float] | None],
    *,
    threads: int | None,
    batch_size: int,
    calibration: str = "none",
    preset: str = "",
) -> dict[str, Task]:
    """Load every head of every role and check that each card fills its role.

    `calibration`: "none", "" (the calibration of `preset`, or a lone card's own) or a
    calibration file (calibration.resolve says which applies)."""
    from .presets import preset_calibration

    tasks: dict[str, Task] = {}
    opened: dict[tuple[Any, ...], OnnxModel] = {}
    for role in ROLES:
        role_refs = [r for r in refs.get(role, ()) if r not in ("", None)]
        if not role_refs:
            continue
        role_weights = weights.get(role) or [1.0] * len(role_refs)
        heads = []
        for ref, weight in zip(role_refs, role_weights, strict=True):
            model = load_model(ref, threads=threads, max_batch=batch_size, opened=opened)
            if TASK_ROLE.get(model.card.task) != role:
                raise CardError(
                    f"card {model.card.id} is not a{'n' * (role == 'age')} {role} model"
                )
            heads.append(Head(model, float(weight)))
        ids = tuple(h.card.id for h in heads)
        fitted = preset_calibration(preset, role, ids) if calibration != "none" and preset else None
        chosen = resolve(
            calibration,
            fitted,
            role,
            [h.card.id for h in heads],
            weights.get(role),
            [getattr(h.card, "calibration", None) for h in heads],
        )
        tasks[role] = Task(role, heads, chosen)
    return tasks
