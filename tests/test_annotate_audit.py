"""predict --annotate's drawing: labels inside the image and sized to their face, boxes
inside the image (outputs.annotate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agegender import outputs
from agegender.results import AgeEstimate, Face, GenderEstimate

BLUE = (40, 160, 255)  # a face not labelled female


def _face(box: tuple[float, float, float, float]) -> Face:
    age = AgeEstimate(34.0, 10.0, (20.0, 50.0))
    return Face(box, 0.9, None, age, GenderEstimate("male", 0.9))


def _white(image: np.ndarray) -> int:
    return int((image.min(axis=2) > 200).sum())


def _blue(image: np.ndarray) -> np.ndarray:
    return np.all(image == BLUE, axis=2)


def test_a_label_at_the_right_edge_is_moved_inside_the_image() -> None:
    """A face at the right edge of a 640 x 480 picture: its label ran off the edge ("22 +-
    7, m"); all of its text is drawn, as on the picture made wider."""
    image = np.full((480, 640, 3), 90, np.uint8)
    face = _face((520.0, 100.0, 640.0, 230.0))
    wide = np.pad(image, ((0, 0), (0, 600), (0, 0)), constant_values=90)
    assert _white(outputs.annotate(image, [face])) == _white(outputs.annotate(wide, [face]))


def test_a_face_filling_a_tiny_picture_keeps_its_label_in_it() -> None:
    """A 64 px picture, its face from top to bottom: the label was drawn below the image."""
    image = np.full((64, 64, 3), 90, np.uint8)
    drawn = outputs.annotate(image, [_face((2.0, 2.0, 52.0, 57.0))])
    assert _white(drawn) >= 30


def test_a_small_face_in_a_large_photo_takes_a_label_of_its_size() -> None:
    """A 60 px face in a 4,000 x 3,000 photo: its label was 1,200 px wide (at the image's
    scale), hiding the faces beside it."""
    image = np.full((3000, 4000, 3), 90, np.uint8)
    drawn = outputs.annotate(image, [_face((1000.0, 1000.0, 1060.0, 1070.0))])
    columns = np.nonzero(_blue(drawn).any(axis=0))[0]
    assert columns.max() - columns.min() <= 5 * 60


def test_a_box_at_the_image_edge_is_drawn_inside_it() -> None:
    image = np.full((200, 200, 3), 90, np.uint8)
    drawn = outputs.annotate(image, [_face((150.0, 120.0, 200.0, 200.0))])
    assert _blue(drawn)[150:, 199].all()  # the right side, along the last column
    assert _blue(drawn)[199, 160:190].all()  # the bottom side, along the last row


def test_a_tracked_faces_label_at_the_right_edge_of_a_video_is_inside_the_frame(
    tmp_path: Path,
) -> None:
    """video --annotate drew its label from the box's left edge to the right whatever the
    frame's width: at the right edge its end was cut off (118 of its 282 px drawn, 1080p).
    It now draws as predict's copy does (outputs.draw_face): the label's background is as
    wide as in a wider frame."""
    import cv2
    from faceutils import ASTRONAUT
    from PIL import Image

    from agegender.cli import main
    from agegender.commands.video import _colour

    face = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((240, 240)))[:, :, ::-1]

    def label_width(width: int) -> int:
        clip, copy = tmp_path / f"clip{width}.avi", tmp_path / f"copy{width}.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 5, (width, 1080))
        for _ in range(3):
            frame = np.full((1080, width, 3), 90, np.uint8)
            frame[400:640, 1080 - 200 : 1080] = face[:, :200]  # its right side cut off
            writer.write(frame)
        writer.release()
        assert main(["video", str(clip), "--annotate", str(copy), "--min-hits", "1"]) == 0
        capture = cv2.VideoCapture(str(copy))
        ok, frame = capture.read()
        capture.release()
        assert ok
        widest = 0
        for track in range(4):  # the label's background: a run of the track's colour
            near = np.abs(frame.astype(int) - np.array(_colour(track))).max(axis=2) < 40
            widest = max(widest, int((near.sum(axis=0) >= 8).sum()))
        return widest

    edge, room = label_width(1080), label_width(1600)
    assert room > 60
    assert edge >= 0.9 * room, (edge, room)
