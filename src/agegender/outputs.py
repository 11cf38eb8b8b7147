"""Writing results: a readable table, JSON, JSON Lines, CSV and annotated images."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from numpy.typing import NDArray

from .config import NAME_BYTES, name_too_long
from .errors import single_line
from .results import Face, ImageResult

CSV_FIELDS = [
    "path",
    "frame",  # video frames only (index in the video); empty for images
    "time",  # video frames only (seconds)
    "face",
    "x1",
    "y1",
    "x2",
    "y2",
    "score",
    "age",
    "age_std",
    "age_low",
    "age_high",
    "age_group",
    "gender",
    "gender_probability",
    # then one "p_age_ge_<t>" column per --age-threshold (see csv_fields)
    "error",
]


def threshold_field(threshold: float) -> str:
    """The CSV column of P(age >= threshold): p_age_ge_18, p_age_ge_65.5."""
    return f"p_age_ge_{threshold:g}"


def csv_fields(thresholds: Sequence[float] = ()) -> list[str]:
    """The CSV header: CSV_FIELDS with a column per age threshold before "error"."""
    return [*CSV_FIELDS[:-1], *(threshold_field(t) for t in thresholds), CSV_FIELDS[-1]]


# A face this wide (px) or wider takes a label at OpenCV's font scale 1 ("34 +- 10, female
# 0.90" is then about 330 px wide); a smaller one a smaller label, down to 0.4.
LABEL_FACE_WIDTH = 90


def face_label(face: Face) -> str:
    """Short label drawn on images: "34 +- 10, female 0.90"."""
    parts = []
    if face.age is not None:
        parts.append(
            face.age.group if face.age.group else f"{face.age.value:.0f} +- {face.age.std:.0f}"
        )
    if face.gender is not None:
        parts.append(f"{face.gender.label} {face.gender.probability:.2f}")
    return ", ".join(parts)


def source_label(result: ImageResult) -> str:
    """The path, with the time for a video frame (clip.mp4@12.00s); a line break in a
    name as \n, so that each row stays one line."""
    path = single_line(result.path)
    if result.frame is None:
        return path
    return f"{path}@{result.time or 0.0:.2f}s"


def table_rows(result: ImageResult) -> list[str]:
    """Lines of the human-readable table for one image (none for an error: the command
    reports errors on stderr)."""
    if result.error:
        return []
    if not result.faces:
        return [f"{source_label(result)}: no face found"]
    lines = []
    for index, face in enumerate(result.faces):
        x1, y1, x2, y2 = (round(v) for v in face.box)
        age = "-"
        if face.age is not None:
            low, high = face.age.interval
            age = f"{face.age.value:5.1f} +- {face.age.std:4.1f} [{low:g}-{high:g}]"
            if face.age.group:
                age = f"{face.age.group} (p {face.age.group_probability:.2f}) ~{face.age.value:.0f}"
            for threshold, p in face.age.p_at_least.items():
                age += f"  P(age>={threshold:g}) {p:.2f}"
        gender = (
            "-" if face.gender is None else f"{face.gender.label:<6} {face.gender.probability:.2f}"
        )
        lines.append(
            f"{source_label(result)}  #{index}  [{x1},{y1},{x2},{y2}]  age {age}  gender {gender}"
        )
    return lines


def write_table(results: Iterable[ImageResult], out: IO[str]) -> None:
    for result in results:
        for line in table_rows(result):
            out.write(line + "\n")
        out.flush()


def write_jsonl(results: Iterable[ImageResult], out: IO[str]) -> None:
    for result in results:
        out.write(json.dumps(result.to_dict(), allow_nan=False) + "\n")
        out.flush()


def write_json(results: Iterable[ImageResult], out: IO[str]) -> None:
    json.dump([r.to_dict() for r in results], out, indent=2, allow_nan=False)
    out.write("\n")


def csv_rows(result: ImageResult) -> list[dict[str, object]]:
    """Rows of csv_fields() for one image: one per face, or one (maybe with the error)."""
    where: dict[str, object] = {"path": result.path}
    if result.frame is not None:
        where.update(frame=result.frame, time=round(result.time or 0.0, 3))
    if result.error or not result.faces:
        return [{**where, "error": result.error or ""}]
    rows = []
    for index, face in enumerate(result.faces):
        row: dict[str, object] = {**where, "face": index, "score": round(face.score, 4)}
        row.update(zip(("x1", "y1", "x2", "y2"), (round(v, 1) for v in face.box), strict=True))
        if face.age is not None:
            row.update(
                age=round(face.age.value, 2),
                age_std=round(face.age.std, 2),
                age_low=face.age.interval[0],
                age_high=face.age.interval[1],
                age_group=face.age.group or "",
            )
            row.update({threshold_field(t): round(p, 4) for t, p in face.age.p_at_least.items()})
        if face.gender is not None:
            row.update(
                gender=face.gender.label, gender_probability=round(face.gender.probability, 4)
            )
        rows.append(row)
    return rows


def write_csv(
    results: Iterable[ImageResult], out: IO[str], thresholds: Sequence[float] = ()
) -> None:
    """A header (csv_fields(thresholds)), then csv_rows of each result, flushed as they come."""
    writer = csv.DictWriter(
        out, fieldnames=csv_fields(thresholds), restval="", extrasaction="ignore"
    )
    writer.writeheader()
    for result in results:
        writer.writerows(csv_rows(result))
        out.flush()


def annotate(rgb: NDArray[np.uint8], faces: list[Face]) -> NDArray[np.uint8]:
    """A copy of the image with each face's box and label drawn (RGB)."""
    canvas = np.ascontiguousarray(rgb.copy())
    for face in faces:
        color = (255, 64, 160) if face.gender and face.gender.label == "female" else (40, 160, 255)
        draw_face(canvas, face.box, face_label(face), color)
    return canvas


def draw_face(
    canvas: NDArray[np.uint8],
    box: Sequence[float],
    label: str,
    color: tuple[int, int, int],
    *,
    thickness: int | None = None,
) -> None:
    """A face's box and label drawn on `canvas` in place (predict's and video's copies).

    The label grows with the image but not past what its face's size calls for (in a 12
    MP group photo a label at the image's scale was 1,200 px wide over a 60 px face,
    hiding its neighbours), and it is kept inside the image: moved left from the right
    edge, below the box when there is no room above, inside the box when neither fits,
    made smaller to fit a narrow image. The box is drawn inside the image. `thickness`:
    the box's line (else one that grows with the label)."""
    height, width = canvas.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, x2 = min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)
    y1, y2 = min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)
    scale = min(max(0.4, min(height, width) / 900), max(0.4, (x2 - x1) / LABEL_FACE_WIDTH))
    text = max(1, round(scale * 2))
    cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness or text)
    (tw, th), base = cv2.getTextSize(label, font, scale, text)
    if tw + 4 > width:  # a narrow image: the label as wide as the image
        scale = max(0.2, scale * (width - 4) / tw)
        text = max(1, round(scale * 2))
        (tw, th), base = cv2.getTextSize(label, font, scale, text)
    if y1 - th - base - 4 >= 0:
        ty = y1 - 4  # above the box
    elif y2 + th + base + 4 <= height:
        ty = y2 + th + 4  # below it
    else:
        ty = min(y1 + th + 4, height - base - 1)  # inside it, at its top
    tx = max(0, min(x1, width - tw - 4))
    cv2.rectangle(canvas, (tx, ty - th - base), (tx + tw + 4, ty + base), color, -1)
    cv2.putText(canvas, label, (tx + 2, ty), font, scale, (255, 255, 255), text, cv2.LINE_AA)


def annotated_path(out_dir: Path, name: str, used: set[Path], frame: int | None = None) -> Path:
    """out_dir/<file name>, made unique: never a path in `used` or one that exists.

    A video frame is written as <video stem>-<frame index>.jpg; a name taken (by another
    input of this run, or by any file already there) gets -1, -2, ... before its suffix.
    """
    base = Path(name).name or "image.png"
    stem, suffix = Path(base).stem, Path(base).suffix.lower() or ".png"
    if frame is not None:
        stem, suffix = f"{stem}-{frame:06d}", ".jpg"
    elif suffix not in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
        suffix = ".png"
    # room for "-NNN" and the suffix in a file system's 255-byte name (a long name that
    # was fine as the input could not be written as its annotated copy)
    while len(os.fsencode(stem)) > NAME_BYTES - len(suffix) - 8:
        stem = stem[:-1]
    path = out_dir / f"{stem}{suffix}"
    counter = 1
    while path in used or os.path.lexists(path):
        path = out_dir / f"{stem}-{counter}{suffix}"
        counter += 1
    used.add(path)
    return path


def save_rgb(path: Path, rgb: NDArray[np.uint8]) -> None:
    """Encode (by the suffix) and write a new file; FileExistsError if `path` exists."""
    try:
        ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error as error:
        raise OSError(f"cannot encode as {path.suffix} ({error})") from None
    if not ok:
        raise OSError(f"cannot encode as {path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_new(path, encoded.tobytes())


def write_new(path: Path, data: bytes) -> None:
    """`data` as a new file; FileExistsError if `path` exists.

    The bytes go to a hidden file beside it first (`.NAME.partial-PID`), which is then
    linked to `path` (a link never replaces a file, even one made meanwhile) and removed:
    a process killed while writing (kill -9, the OOM killer) leaves no truncated image
    under the name, only the hidden file, which folder searches skip. A write that fails
    part way (a full disk, Ctrl-C) removes it. Where the file system has no hard links,
    `path` itself is written."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if name_too_long(partial.name):
        _write_exclusive(path, data)
        return
    try:
        _write_exclusive(partial, data)
    except FileExistsError:  # a hidden file of that name already (not ours to remove)
        _write_exclusive(path, data)
        return
    try:
        os.link(partial, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FAT file systems)
        _write_exclusive(path, data)
    finally:
        partial.unlink(missing_ok=True)


def _write_exclusive(path: Path, data: bytes) -> None:
    handle = path.open("xb")  # "x": never replaces a file, even one made meanwhile
    try:
        with handle:
            handle.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_annotated(
    out_dir: Path, result: ImageResult, rgb: NDArray[np.uint8], used: set[Path]
) -> Path:
    """Draw `result`'s faces on `rgb` and write it as a new file in out_dir (its path).

    Raises OSError when it cannot be written.
    """
    drawn = annotate(rgb, result.faces)
    while True:
        path = annotated_path(out_dir, result.path, used, result.frame)
        try:
            save_rgb(path, drawn)
        except FileExistsError:  # made since annotated_path looked: take the next name
            continue
        return path
