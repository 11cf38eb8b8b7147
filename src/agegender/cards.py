"""Model cards: what a model file is, how to feed it, and what its output means.

A card is a TOML file (the embedded ones live in ``agegender/model_cards/``). Nothing about
a model's preprocessing or output is hard-coded elsewhere: supporting a new ONNX file
means writing a card. Cards are checked when loaded, and against the graph when a
session opens (input rank and size, output width).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .errors import CardError

Task = Literal["age", "age-groups", "gender"]
CropKind = Literal["chip", "margin", "none"]
TASKS: tuple[Task, ...] = ("age", "age-groups", "gender")
CROP_KINDS: tuple[CropKind, ...] = ("chip", "margin", "none")


@dataclass(frozen=True)
class Source:
    """Where a card's file comes from: an installed package's data, a URL, or neither.

    With neither, ``file`` is a path relative to the card's own TOML file.
    """

    file: str
    bytes: int | None = None
    sha256: str | None = None
    package: str | None = None
    resource: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class InputSpec:
    """How a crop becomes the tensor the graph expects: (pixel - mean) * scale / std."""

    height: int
    width: int
    channels: Literal["RGB", "BGR"]
    layout: Literal["NCHW", "NHWC"]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str | None = None


@dataclass(frozen=True)
class CropSpec:
    """Which crop the model was trained on."""

    kind: CropKind
    padding: float = 0.2
    margin: float = 0.4


@dataclass(frozen=True)
class OutputSpec:
    """What the output vector means."""

    width: int
    softmax_in_graph: bool
    values: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()
    groups: tuple[tuple[float, float], ...] = ()
    name: str | None = None

    def value_array(self) -> NDArray[np.float64]:
        return np.asarray(self.values, dtype=np.float64)


@dataclass(frozen=True)
class ModelCard:
    """A declarative description of one model file."""

    id: str
    task: Task
    title: str
    source: Source
    input: InputSpec
    crop: CropSpec
    output: OutputSpec
    license: str = ""
    notes: str = ""
    origin: str = field(default="", compare=False)


def _req(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise CardError(f"{where}: missing required field '{key}'")
    return table[key]


def _triple(value: Any, where: str, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3  # type: ignore[return-value]
    if not isinstance(value, list) or len(value) != 3:
        raise CardError(f"{where}: '{key}' must be a number or a list of 3 numbers")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def parse_card(data: dict[str, Any], origin: str = "<card>") -> ModelCard:
    """Build and validate a card from its TOML table."""
    where = origin
    card_id = str(_req(data, "id", where))
    where = f"card {card_id} ({origin})"
    task = _req(data, "task", where)
    if task not in TASKS:
        raise CardError(f"{where}: task must be one of {', '.join(TASKS)}, got {task!r}")

    src = _req(data, "source", where)
    package, url = src.get("package"), src.get("url")
    if package and url:
        raise CardError(f"{where}: [source] needs at most one of 'package' or 'url'")
    if not package and not url and not src.get("file"):
        raise CardError(f"{where}: [source] needs 'package', 'url' or a local 'file'")
    if package and not src.get("resource"):
        raise CardError(f"{where}: [source] with 'package' needs 'resource'")
    sha = src.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise CardError(f"{where}: [source] sha256 must be 64 lowercase hex digits")
    if url and not sha:
        raise CardError(f"{where}: a downloaded file must have a sha256")
    file_name = src.get("file") or Path(src.get("resource") or url).name
    source = Source(
        file=file_name,
        bytes=src.get("bytes"),
        sha256=sha,
        package=package,
        resource=src.get("resource"),
        url=url,
    )

    inp = _req(data, "input", where)
    size = _req(inp, "size", where)
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(s, int) and s > 0 for s in size)
    ):
        raise CardError(f"{where}: [input] size must be [height, width] positive integers")
    channels = inp.get("channels", "RGB")
    if channels not in ("RGB", "BGR"):
        raise CardError(f"{where}: [input] channels must be RGB or BGR, got {channels!r}")
    layout = inp.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise CardError(f"{where}: [input] layout must be NCHW or NHWC, got {layout!r}")
    std = _triple(inp.get("std", 1.0), where, "std")
    if any(s <= 0 for s in std):
        raise CardError(f"{where}: [input] std must be positive")
    input_spec = InputSpec(
        height=size[0],
        width=size[1],
        channels=channels,
        layout=layout,
        scale=float(inp.get("scale", 1.0)),
        mean=_triple(inp.get("mean", 0.0), where, "mean"),
        std=std,
        name=inp.get("name"),
    )

    crop = _req(data, "crop", where)
    kind = _req(crop, "kind", where)
    if kind not in CROP_KINDS:
        raise CardError(f"{where}: [crop] kind must be one of {', '.join(CROP_KINDS)}")
    crop_spec = CropSpec(
        kind=kind, padding=float(crop.get("padding", 0.2)), margin=float(crop.get("margin", 0.4))
    )
    if crop_spec.padding < 0 or crop_spec.margin < 0:
        raise CardError(f"{where}: [crop] padding and margin must be >= 0")

    out = _req(data, "output", where)
    values: tuple[float, ...] = ()
    labels = tuple(str(x) for x in out.get("labels", ()))
    groups: tuple[tuple[float, float], ...] = ()
    if task == "age":
        if "values" in out:
            values = tuple(float(v) for v in out["values"])
        elif "range" in out:
            lo, hi = out["range"]
            values = tuple(float(v) for v in range(int(lo), int(hi) + 1))
        else:
            raise CardError(f"{where}: an age card needs [output] 'values' or 'range'")
        if list(values) != sorted(values):
            raise CardError(f"{where}: [output] age values must be increasing")
        width = len(values)
    elif task == "gender":
        if sorted(label.lower() for label in labels) != ["female", "male"]:
            raise CardError(
                f"{where}: a gender card needs labels 'female' and 'male' in output order"
            )
        labels = tuple(label.lower() for label in labels)
        width = 2
    else:
        groups = tuple((float(a), float(b)) for a, b in out.get("groups", ()))
        if not groups or len(groups) != len(labels):
            raise CardError(f"{where}: an age-groups card needs as many 'groups' as 'labels'")
        width = len(groups)
    declared = out.get("width")
    if declared is not None and declared != width:
        raise CardError(f"{where}: [output] width {declared} disagrees with {width} values/labels")
    output = OutputSpec(
        width=width,
        softmax_in_graph=bool(out.get("softmax_in_graph", True)),
        values=values,
        labels=labels,
        groups=groups,
        name=out.get("name"),
    )
    return ModelCard(
        id=card_id,
        task=task,
        title=str(data.get("title", card_id)),
        source=source,
        input=input_spec,
        crop=crop_spec,
        output=output,
        license=str(data.get("license", "")),
        notes=str(data.get("notes", "")),
        origin=origin,
    )


def load_card_file(path: str | Path) -> ModelCard:
    """Load a card from a TOML file anywhere on disk."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CardError(f"{path}: cannot read card ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise CardError(f"{path}: not valid TOML ({error})") from None
    return parse_card(data, str(path))


def builtin_cards() -> dict[str, ModelCard]:
    """Every card shipped in the package, by id."""
    cards: dict[str, ModelCard] = {}
    for entry in sorted(resources.files("agegender.model_cards").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            card = parse_card(
                tomllib.loads(entry.read_text(encoding="utf-8")), f"model_cards/{entry.name}"
            )
            if card.id in cards:
                raise CardError(f"{entry.name}: duplicate card id {card.id!r}")
            cards[card.id] = card
    return cards


def get_card(ref: str) -> ModelCard:
    """A card by built-in id, or from a path to a TOML file."""
    if ref.endswith(".toml") or "/" in ref or "\\" in ref:
        return load_card_file(ref)
    cards = builtin_cards()
    if ref not in cards:
        raise CardError(f"unknown model card {ref!r}; known: {', '.join(sorted(cards))}")
    return cards[ref]


def check_against_graph(
    card: ModelCard, input_shape: list[int | str | None], output_shape: list[int | str | None]
) -> None:
    """Raise CardError when the graph's input/output shapes contradict the card."""
    where = f"card {card.id}"
    if len(input_shape) != 4:
        raise CardError(
            f"{where}: graph input has rank {len(input_shape)}, "
            f"the card needs 4 ({card.input.layout})"
        )
    spatial = input_shape[2:4] if card.input.layout == "NCHW" else input_shape[1:3]
    channel = input_shape[1] if card.input.layout == "NCHW" else input_shape[3]
    shape = "x".join(str(d) if d is not None else "?" for d in input_shape)
    # The channel axis first: a wrong layout shows there, and names the real problem.
    if isinstance(channel, int) and channel != 3:
        raise CardError(
            f"{where}: graph input is {shape}, which has no 3-channel axis where the card's "
            f"layout {card.input.layout} puts it"
        )
    expected = [card.input.height, card.input.width]
    for got, want, what in zip(spatial, expected, ("height", "width"), strict=True):
        if isinstance(got, int) and got != want:
            raise CardError(f"{where}: graph input {shape} has {what} {got}, the card says {want}")
    width = output_shape[-1] if output_shape else None
    if isinstance(width, int) and width != card.output.width:
        raise CardError(
            f"{where}: graph output width is {width}, the card says {card.output.width}"
        )
