"""CenterFace (MIT, Star-Clouds): a small CNN face detector with 5 landmarks.

Everything model-specific is read from its card (``model_cards/centerface.toml``): the
channel order and scaling of the input, the size rule (a multiple of 32, the longer side
capped), the output names and the decoder's threshold. The published file has fixed
1 x 3 x 32 x 32 dims; they are made symbolic when the graph is opened (in memory).

Decoding (``decode``): each heatmap cell above the threshold is a face centred at
((j + offset_x + 0.5) * stride, (i + offset_y + 0.5) * stride) of size
exp(scale) * stride; the 10 landmark channels place 5 points relative to the box
(eye centres, nose tip, mouth corners); non-maximum suppression keeps the best of
overlapping boxes.

Chip crops need dlib's 5 landmarks: with the card's ``chip_landmarks = "template"`` (the
shipped cards) they come from the 5 points and the card's ``chip_template``
(``chip_template.py``), with no predictor run; with ``"predictor"`` the finder runs dlib's
predictor on the card's ``dlib_box``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from .. import sessions
from ..cards import ModelCard
from ..chip_template import landmarks_from_keypoints
from ..errors import CardError, ModelFileError
from ..faces import Detection
from ..inference import tensor_from_pixels
from . import shrink

# The pixel value the fed image is padded with up to the card's multiple (see _tensor).
PAD_VALUE = 128
# On an accelerator, the sessions kept, one per input shape (CenterFaceDetector.session_for):
# landscape and portrait pictures each fed at their own size, enlarged (the card's
# `enlarge`) and mirrored (--detect-mirror) are six.
SHAPE_SESSIONS = 6


def intersections(box: Sequence[float], boxes: NDArray[np.float64]) -> NDArray[np.float64]:
    """The area `box` (x1, y1, x2, y2) shares with each of `boxes` (N x 4)."""
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.asarray(np.clip(w, 0, None) * np.clip(h, 0, None), dtype=np.float64)


def nms(boxes: NDArray[np.float64], scores: NDArray[np.float64], iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        inter = intersections(boxes[best], boxes[rest])
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        # on arrays: a map with thousands of cells over the threshold took minutes as lists
        order = rest[overlap <= iou]
    return keep


def decode(
    heatmap: NDArray[np.float32],
    scale: NDArray[np.float32],
    offset: NDArray[np.float32],
    landmarks: NDArray[np.float32],
    *,
    stride: int,
    threshold: float,
    nms_iou: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Boxes (N, 4) [x1, y1, x2, y2], scores (N,) and landmarks (N, 5, 2) of one image.

    Inputs are one image's maps: heatmap (H, W), scale (2, H, W) as log(height, width) /
    stride, offset (2, H, W) as (y, x) in cells, landmarks (10, H, W) as (y, x) pairs in
    units of the box's height and width from its top left corner.
    """
    ys, xs = np.nonzero(heatmap > threshold)
    if len(ys) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    h = np.exp(scale[0, ys, xs].astype(np.float64)) * stride
    w = np.exp(scale[1, ys, xs].astype(np.float64)) * stride
    cy = (ys + offset[0, ys, xs] + 0.5) * stride
    cx = (xs + offset[1, ys, xs] + 0.5) * stride
    x1, y1 = cx - w / 2, cy - h / 2
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
    scores = heatmap[ys, xs].astype(np.float64)
    points = np.empty((len(ys), 5, 2))
    for k in range(5):
        points[:, k, 0] = x1 + landmarks[2 * k + 1, ys, xs] * w
        points[:, k, 1] = y1 + landmarks[2 * k, ys, xs] * h
    keep = nms(boxes, scores, nms_iou)
    return boxes[keep], scores[keep], points[keep]


def free_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with batch, height and width of its input and outputs made symbolic."""
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    # The exporter declared every weight as a graph input too; as inputs they could be
    # overridden, so ONNX Runtime would not fold them (and warns once per weight).
    kept = [v for v in graph.input if v.name not in initialisers]
    del graph.input[:]
    graph.input.extend(kept)
    used = {name for node in graph.node for name in node.input}
    weights = [i for i in graph.initializer if i.name in used]  # BatchNorm counters are not
    del graph.initializer[:]
    graph.initializer.extend(weights)
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4:
            for index, name in ((0, "N"), (2, "H"), (3, "W")):
                dims[index].ClearField("dim_value")
                dims[index].dim_param = f"{value.name}_{name}" if value in graph.output else name
    del graph.value_info[:]
    return model


# A pass at a side within this share of another's sees what that one saw.
NEAR_SIDE = 0.95

# CenterFace's 5 points: eye centres, nose tip, mouth corners, each pair in the order the
# image shows them (left, right); in a mirror image the pairs change places.
_MIRRORED_POINTS = [1, 0, 2, 4, 3]


def _unmirrored(
    boxes: NDArray[np.float64], points: NDArray[np.float64], width: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Boxes (N, 4) and points (N, 5, 2) found in the mirror image of an image `width`
    pixels wide (fed coordinates), in the image itself."""
    boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    points = points[:, _MIRRORED_POINTS].copy()
    points[..., 0] = width - points[..., 0]
    return boxes, points


def scaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """(width, height) of an image scaled by `factor` before the multiple's padding."""
    return max(1, round(width * factor)), max(1, round(height * factor))


def feed_size(
    height: int, width: int, max_side: int, multiple: int, enlarge: bool = False
) -> tuple[float, int, int]:
    """The factor an image is scaled by and the padded (height, width) it is fed at: its
    longer side at `max_side`, never more than its own unless `enlarge`."""
    factor = max_side / max(height, width)
    if not enlarge:
        factor = min(1.0, factor)
    scaled_w, scaled_h = scaled_size(width, height, factor)
    fed_h = max(multiple, math.ceil(scaled_h / multiple) * multiple)
    fed_w = max(multiple, math.ceil(scaled_w / multiple) * multiple)
    return factor, fed_h, fed_w


class CenterFaceDetector:
    """CenterFace run by ONNX Runtime, as its card says."""

    name = "centerface"

    def __init__(
        self,
        card: ModelCard,
        path: str | Path,
        *,
        max_side: int | None = None,
        threshold: float | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        mirror: bool = False,
    ):
        """`providers`: None takes the enclosing ``sessions.using`` (the Estimator's).
        `mirror`: each image's mirror image is fed too (at the card's `mirror_scale` of
        its first side), for the faces the passes did not find."""
        if card.detection is None or card.detection.decoder != "centerface":
            raise CardError(f"card {card.id} is not a CenterFace detector card")
        self.card = card
        self.path = Path(path)  # the graph's file (a batch manifest pins its sha256)
        self.spec = card.detection
        # A side given (--max-detect-side) is the side every image is fed at; else the
        # card's policy (side_for).
        self.fixed_side = max_side
        self.mirror = mirror
        self.threads = threads
        self.max_side = max_side or self.spec.max_side
        self.threshold = self.spec.threshold if threshold is None else threshold
        self.template = (
            np.asarray(self.spec.chip_template, dtype=np.float64)
            if self.spec.chip_landmarks == "template" and self.spec.chip_template is not None
            else None
        )
        try:
            model = free_dims(onnx.load(str(path)))
        except Exception as error:  # protobuf raises its own types
            raise ModelFileError(
                f"model {card.id}: {path} is not an ONNX graph ({error})"
            ) from None
        # quiet: errors only, the file's own quirks are handled here
        serialized = model.SerializeToString()
        self.session = sessions.create(
            serialized, session_options=sessions.options(threads, quiet=True), providers=providers
        )
        # In predict_many's workers (several images detected at once) a twin session on
        # one intra-op thread runs instead (sessions.parallel_worker); made on first use,
        # only where it differs: more than one thread here, and on the CPU alone. The
        # graph's bytes are kept only for that.
        self.accelerated = sessions.on_accelerator(self.session)
        differs = threads != 1 and not self.accelerated
        self._twin_model = serialized if differs else None
        self._twin: ort.InferenceSession | None = None
        self._twin_lock = threading.Lock()
        # On an accelerator each input shape gets a session of its own and images are fed
        # one a run: ONNX Runtime's CUDA convolutions set themselves up again whenever a
        # run's input shape differs from the previous run's (hundreds of ms on an H200;
        # README, GPU), which landscape and portrait photos, or batches of 1 and 3
        # images, would pay image after image. (Padding every image to one square
        # canvas would need one session but changes the boxes of faces in the lower half
        # of a landscape photo by up to 8 px: the network sees more grey there.) The
        # images are fed exactly as on the CPU.
        self._by_shape: OrderedDict[tuple[int, int], ort.InferenceSession] = OrderedDict()
        self._by_shape_model = serialized if self.accelerated else None
        self._by_shape_lock = threading.Lock()
        self._making: dict[tuple[int, int], threading.Lock] = {}  # shapes being made
        self.input_name = card.input.name or self.session.get_inputs()[0].name
        self.output_names = [
            self.spec.output(role) for role in ("heatmap", "scale", "offset", "landmarks")
        ]

    def session_here(self) -> ort.InferenceSession:
        """The session this thread runs: in a parallel worker (``sessions.parallel_worker``)
        the single-threaded twin, else the configured one."""
        if self._twin_model is None or not sessions.in_parallel_worker():
            return self.session
        if self._twin is not None:  # made: no lock on every image
            return self._twin
        with self._twin_lock:
            if self._twin is None:
                self._twin = sessions.create(
                    self._twin_model,
                    session_options=sessions.options(1, quiet=True),
                    providers=[sessions.CPU],
                )
            return self._twin

    def session_for(self, fed: tuple[int, int]) -> ort.InferenceSession:
        """On an accelerator, the session kept for input shape `fed` (made on first use
        with the first session's providers; the least recently used of more than
        SHAPE_SESSIONS is dropped); on the CPU alone, :meth:`session_here`.

        A session is made outside the lock of the kept ones (setting one up on a GPU
        takes a while): other threads meanwhile run the shapes they have; one wanting the
        same new shape waits for that one to be made (never two made for one shape)."""
        if self._by_shape_model is None:
            return self.session_here()
        with self._by_shape_lock:
            session = self._kept(fed)
            if session is not None:
                return session
            if not any(kept is self.session for kept in self._by_shape.values()):
                return self._keep(fed, self.session)
            making = self._making.setdefault(fed, threading.Lock())
        with making:
            with self._by_shape_lock:
                session = self._kept(fed)
            if session is not None:
                return session
            try:
                session = sessions.create(
                    self._by_shape_model,
                    session_options=sessions.options(self.threads, quiet=True),
                    providers=self.session.get_providers(),
                )
            finally:
                with self._by_shape_lock:
                    if self._making.get(fed) is making:
                        del self._making[fed]
                    if session is not None:
                        self._keep(fed, session)
            return session

    def _kept(self, fed: tuple[int, int]) -> ort.InferenceSession | None:
        """The session kept for `fed`, now the most recently used (under the lock)."""
        session = self._by_shape.get(fed)
        if session is not None:
            self._by_shape.move_to_end(fed)
        return session

    def _keep(self, fed: tuple[int, int], session: ort.InferenceSession) -> ort.InferenceSession:
        """Keep `session` for `fed`, dropping the least recently used (under the lock)."""
        self._by_shape[fed] = session
        self._by_shape.move_to_end(fed)
        while len(self._by_shape) > SHAPE_SESSIONS:
            self._by_shape.popitem(last=False)
        return session

    def _tensor(
        self, rgb: NDArray[np.uint8], factor: float, fed: tuple[int, int], mirrored: bool = False
    ) -> NDArray[np.float32]:
        height, width = rgb.shape[:2]
        size = scaled_size(width, height, factor)
        if size[0] > width or size[1] > height:  # the card's `enlarge`
            small = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR), np.uint8)
        else:
            small = rgb if size == (width, height) else shrink(rgb, size)
        if mirrored:
            small = small[:, ::-1]
        # Padded at the bottom and right up to the multiple with mid-grey, not black: a black
        # band along the image's edge hid faces cut by that edge (at 800, 4:3 photos get 8
        # rows, 16:9 ones 30; faces half outside the bottom edge: 9 -> 11 of 15 found).
        canvas = np.full((fed[0], fed[1], 3), PAD_VALUE, np.uint8)
        canvas[: small.shape[0], : small.shape[1]] = small
        return tensor_from_pixels(canvas[None], self.card.input)

    def _dlib_box(
        self, box: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        """The box dlib's 5-point predictor sees for this face (the card's dlib_box)."""
        dx, dy, fw, fh = self.spec.dlib_box
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h
        return (cx - fw * w / 2, cy - fh * h / 2, cx + fw * w / 2, cy + fh * h / 2)

    def _landmarks(self, keypoints: NDArray[np.float64]) -> NDArray[np.float64] | None:
        """With the card's chip_landmarks = "template": the chip landmarks from the
        keypoints (chip_template.py); else None (the finder runs dlib's predictor, as it
        does for keypoints that coincide and so give no transform)."""
        if self.template is None:
            return None
        try:
            return landmarks_from_keypoints(keypoints, self.template)
        except ValueError:
            return None

    def side_for(self, height: int, width: int) -> int:
        """The longer side an image is fed at (before the multiple's padding): the side
        given, else the card's `max_side`, or `min_scale` of the image's own longer side
        when that is more (at most `side_limit`): a face keeps the same size at the
        detector's input in a photo of 4,000 px as in one of 1,280."""
        if self.fixed_side is not None:
            return self.fixed_side
        side = self.spec.max_side
        if self.spec.min_scale > 0:
            side = max(side, math.ceil(self.spec.min_scale * max(height, width)))
        if self.spec.side_limit:  # the card reader keeps it >= max_side
            side = min(side, self.spec.side_limit)
        return side

    def detect(self, rgb: NDArray[np.uint8]) -> list[Detection]:
        return self.detect_many([rgb])[0]

    def detect_many(self, images: Sequence[NDArray[np.uint8]]) -> list[list[Detection]]:
        """Faces of several images; images fed at the same size share one run.

        Each image is fed at its `side_for`; one scaled down in which nothing was found
        gets a second pass at up to twice that side (its faces may be small in a large
        frame; with the card's policy, at most at its `side_limit`). Under the card's
        policy, one scaled down in which a face came out narrower than the card's
        `small_face` pixels at the input (a group photo: its smaller faces may have been
        missed) gets a second pass too, at up to twice the side (at most `side_limit` and
        the image's own size); its faces are the second pass's and those of the first that
        overlap none of them. With the card's `large_face`, an image whose faces came from
        a pass above `max_side` (fed above it, or passed again so for its small faces)
        takes its faces of `large_face` pixels or more at the first input, as either pass
        measured them, from a pass at `max_side` (the first, where it was fed so); the
        other pass's smaller ones not half inside one of those. With the card's
        `largest_face`, that pass is at a smaller side where the image's shorter side
        would be more than `largest_face` (`coarse_side`), and an image fed at `max_side`
        or less whose shorter side is more than that at the input takes its large faces
        from such a pass too when a face of `large_face` pixels or more, or none, was found.
        With the card's `enlarge`, an image fed at its own size in which a face came out
        narrower than `small_face` is fed again enlarged by that factor (at most to
        `side_limit`, or `max_side` without one):
        its faces narrower than `small_face` that pass found and those found only there
        come from that pass. Last, with `mirror`, the faces of each image's mirror image
        (fed at the card's `mirror_scale` of its side) that overlap none of those are
        added.
        """
        sides = [self.side_for(*im.shape[:2]) for im in images]
        first = self._detect_at(images, sides)
        results = list(first)
        again, larger = self._finer_passes(images, sides, first)
        if again:
            retried = self._detect_at([images[i] for i in again], larger)
            for i, found in zip(again, retried, strict=True):
                results[i] = found + self._apart(results[i], found)
        grown, grown_sides = self._enlarged(images, sides, first)
        if grown:
            enlarged = self._detect_at([images[i] for i in grown], grown_sides, enlarge=True)
            for i, found in zip(grown, enlarged, strict=True):
                results[i] = self._with_enlarged(first[i], found, images[i], sides[i])
        if self.fixed_side is None and self.spec.large_face:
            # a pass above max_side for the small faces of a photo fed at max_side: its
            # large faces are the first pass's (at max_side)
            above = {
                i
                for i, side in zip(again, larger, strict=True)
                if first[i] and side > self.spec.max_side
            }
            self._large_faces(images, sides, first, results, above)
        if self.mirror:
            scale, multiple = self.spec.mirror_scale, self.spec.multiple
            # at mirror_scale of the side each image is fed at (its own, when smaller)
            at = [
                max(multiple, round(scale * min(side, max(image.shape[:2]))))
                for image, side in zip(images, sides, strict=True)
            ]
            mirrored = self._detect_at(images, at, mirrored=True)
            for i, found in enumerate(mirrored):
                # a face of the mirror image overlapping none found, nor half inside one
                apart = self._apart(self._apart(found, results[i]), results[i], inside=True)
                results[i] = results[i] + apart
        return results

    def _finer_passes(
        self, images: Sequence[NDArray[np.uint8]], sides: list[int], first: list[list[Detection]]
    ) -> tuple[list[int], list[int]]:
        """The images to feed again at a larger side, and those sides: scaled down with no
        face found (at up to twice the side), or, under the card's policy, with a face
        narrower than `small_face` at the input (up to twice the side and their own)."""
        limit = self.spec.side_limit if self.fixed_side is None else 0
        small = self.spec.small_face if self.fixed_side is None else 0
        again: list[int] = []
        larger: list[int] = []
        for i, (image, side, found) in enumerate(zip(images, sides, first, strict=True)):
            longer = max(image.shape[:2])
            bigger = min(2 * side, limit) if limit else 2 * side
            if not found and longer > side and bigger > side:
                again.append(i)
                larger.append(bigger)
                continue
            bigger = min(bigger, longer)
            if small and found and bigger > side and min(self._widths(found, image, side)) < small:
                again.append(i)
                larger.append(bigger)
        return again, larger

    def _enlarged(
        self, images: Sequence[NDArray[np.uint8]], sides: list[int], first: list[list[Detection]]
    ) -> tuple[list[int], list[int]]:
        """The images to feed again enlarged (the card's `enlarge`), and their sides: fed
        at their own size, with a face narrower than `small_face` found, enlarged by that
        factor, at most to `side_limit` (`max_side` without one)."""
        spec = self.spec
        if self.fixed_side is not None or spec.enlarge <= 1 or not spec.small_face:
            return [], []
        grown: list[int] = []
        grown_sides: list[int] = []
        for i, (image, side, found) in enumerate(zip(images, sides, first, strict=True)):
            longer = max(image.shape[:2])
            target = min(round(spec.enlarge * longer), spec.side_limit or spec.max_side)
            if (
                found
                and longer <= side
                and target > longer
                and min(self._widths(found, image, side)) < spec.small_face
            ):
                grown.append(i)
                grown_sides.append(target)
        return grown, grown_sides

    def _with_enlarged(
        self, first: list[Detection], found: list[Detection], image: NDArray[np.uint8], side: int
    ) -> list[Detection]:
        """An image's faces once passed again enlarged: the first pass's of `small_face`
        px or more, the enlarged pass's (`found`) that overlap none of those nor lie half
        inside one, and the first pass's smaller ones that it did not find again."""
        large = self._widths(first, image, side) >= self.spec.small_face
        kept = [d for d, w in zip(first, large, strict=True) if w]
        smaller = [d for d, w in zip(first, large, strict=True) if not w]
        added = self._apart(self._apart(found, kept), kept, inside=True)
        return kept + added + self._apart(smaller, added)

    def _large_faces(
        self,
        images: Sequence[NDArray[np.uint8]],
        sides: list[int],
        first: list[list[Detection]],
        results: list[list[Detection]],
        above: set[int],
    ) -> None:
        """The card's `large_face` rule, in `results`: an image fed above max_side (or
        passed again above it, `above`), or fed at `coarse_side` or more where it found a
        face of `large_face` px or more or none, takes its faces of `large_face` px or
        more at the first input, as either pass measured them, from a pass at its
        `coarse_side` (its first pass where it was fed so), the others' smaller ones not
        half inside one of those unless that pass found them too."""
        large, max_side = self.spec.large_face, self.spec.max_side
        coarse: dict[int, int] = {}  # image: the side its large faces come from
        for i, (image, side, found) in enumerate(zip(images, sides, first, strict=True)):
            at = self.coarse_side(image, side)
            if max(image.shape[:2]) > max_side and (side > max_side or i in above):
                coarse[i] = at
            elif at < side and (not found or self._widths(found, image, side).max() >= large):
                coarse[i] = at  # a face may fill this frame: too large at the first input
        # a side within 5% of the first pass's is that pass (a photo just over 2,000 px fed
        # at 801 was fed again at 800 for nothing)
        fed = [i for i, at in coarse.items() if at < NEAR_SIDE * sides[i]]
        passed = self._detect_at([images[i] for i in fed], [coarse[i] for i in fed]) if fed else []
        seen = dict(zip(fed, passed, strict=True))
        for i in coarse:
            found = seen.get(i, first[i])
            now = results[i]
            wide = self._widths(now, images[i], sides[i]) >= large
            wider = [d for d, w in zip(now, wide, strict=True) if w]
            # A face large at either pass is the coarse pass's: the two passes measure one face a
            # few pixels apart, and one measured large at the first pass only would
            # otherwise be dropped from both.
            big: list[Detection] = []
            smaller: list[Detection] = []
            for d, w in zip(found, self._widths(found, images[i], sides[i]), strict=True):
                (big if w >= large or not self._apart([d], wider) else smaller).append(d)
            fine = [d for d, w in zip(now, wide, strict=True) if not w]
            # A smaller face half inside a large one is a part of it, unless the coarse
            # pass found it too: a face behind one in front (whose box at the coarse pass
            # reaches over the heads behind it).
            results[i] = big + [
                d
                for d in fine
                if self._apart([d], big, inside=True) or not self._apart([d], smaller)
            ]

    def coarse_side(self, image: NDArray[np.uint8], side: int) -> int:
        """The side of the pass an image fed at `side` takes its large faces from (card's
        `large_face`): `max_side` or less, and, with the card's `largest_face`, the side
        at which its shorter side is that where it would be more (a face filling the
        frame breaks apart beyond it)."""
        side = min(side, self.spec.max_side)
        largest = self.spec.largest_face
        height, width = image.shape[:2]
        factor = feed_size(height, width, side, self.spec.multiple)[0]
        if largest and min(height, width) * factor > largest:
            side = math.floor(largest * max(height, width) / min(height, width))
        return side

    def _widths(
        self, faces: list[Detection], image: NDArray[np.uint8], side: int
    ) -> NDArray[np.float64]:
        """The faces' widths at the input an image is fed at when its side is `side`."""
        factor = feed_size(image.shape[0], image.shape[1], side, self.spec.multiple)[0]
        return np.array([(d.box[2] - d.box[0]) * factor for d in faces], dtype=np.float64)

    def _apart(
        self, first: list[Detection], second: list[Detection], *, inside: bool = False
    ) -> list[Detection]:
        """The faces of `first` that overlap no face of `second` by more than the card's
        NMS overlap (a face the larger pass lost, e.g. a large one); with `inside`, that
        lie not half or more inside one (a part of a large face the finer pass saw)."""
        if not first or not second:
            return list(first)
        boxes = np.array([d.box for d in second], dtype=np.float64)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        kept = []
        for d in first:
            x1, y1, x2, y2 = d.box
            inter = intersections(d.box, boxes)
            own = (x2 - x1) * (y2 - y1)
            if inside:
                if (inter / max(own, 1e-9)).max() < 0.5:
                    kept.append(d)
                continue
            overlap = inter / np.maximum(own + areas - inter, 1e-9)
            if overlap.max() <= self.spec.nms_iou:
                kept.append(d)
        return kept

    def _detect_at(
        self,
        images: Sequence[NDArray[np.uint8]],
        sides: Sequence[int],
        mirrored: bool = False,
        enlarge: bool = False,
    ) -> list[list[Detection]]:
        """Each image's faces fed at its side; `mirrored`: fed as its mirror image, the
        faces mapped back (boxes, and points with left and right swapped); `enlarge`: at
        that side even above the image's own."""
        spec = self.spec
        plans = [
            feed_size(im.shape[0], im.shape[1], side, spec.multiple, enlarge)
            for im, side in zip(images, sides, strict=True)
        ]
        results: list[list[Detection]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (_, fed_h, fed_w) in enumerate(plans):
            groups.setdefault((fed_h, fed_w), []).append(index)
        runs = list(groups.items())
        if self.accelerated:  # one image a run (the batch size is part of the shape)
            runs = [(fed, [member]) for fed, members in runs for member in members]
        for fed, members in runs:
            session = self.session_for(fed)
            batch = np.concatenate(
                [self._tensor(images[i], plans[i][0], fed, mirrored) for i in members]
            )
            # InferenceSession.run may be called from several threads at once (ORT
            # documents it thread-safe): predict_many's workers detect in parallel.
            heat, scale, offset, marks = session.run(self.output_names, {self.input_name: batch})
            for row, index in enumerate(members):
                boxes, scores, points = decode(
                    heat[row, 0],
                    scale[row],
                    offset[row],
                    marks[row],
                    stride=spec.stride,
                    threshold=self.threshold,
                    nms_iou=spec.nms_iou,
                )
                factor = plans[index][0]
                height, width = images[index].shape[:2]
                if mirrored:  # in the shrunk image's own width, as _tensor mirrored it
                    fed_width = scaled_size(width, height, factor)[0]
                    boxes, points = _unmirrored(boxes, points, fed_width)
                for box, score, pts in zip(boxes / factor, scores, points / factor, strict=True):
                    x1, y1 = max(0.0, box[0]), max(0.0, box[1])
                    x2, y2 = min(float(width), box[2]), min(float(height), box[3])
                    if x2 - x1 < 2 or y2 - y1 < 2:
                        continue
                    face = (float(x1), float(y1), float(x2), float(y2))
                    results[index].append(
                        Detection(
                            face,
                            float(score),
                            landmarks=self._landmarks(pts),
                            keypoints=pts,
                            landmark_box=self._dlib_box(face),
                        )
                    )
        return results
