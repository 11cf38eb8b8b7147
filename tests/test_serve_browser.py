"""The page in a real browser: headless Chromium (the system's) driven by Playwright.

Uploads the astronaut photo through the page's file input, waits for the labelled box,
checks the label and the table against the API's JSON, and saves a screenshot to
`test-artifacts/serve-page.png`; runs the webcam's live mode on Chromium's fake camera
(`test-artifacts/serve-live.png`). Needs Debian's `chromium` (scripts/ci-deps.sh installs it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from faceutils import PATCH
from PIL import Image
from playwright.sync_api import Page, Playwright, Route, sync_playwright
from serve_support import ASTRONAUT, running_server, shared_estimator

from agegender.serve import ServeSettings

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LABEL = re.compile(r"^(\d+\.\d) ± (\d+\.\d), (female|male) (0\.\d\d|1\.00)$")


def chromium_path() -> str:
    path = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not path:
        pytest.fail("no chromium on PATH: run scripts/ci-deps.sh (apt-get install chromium)")
    return path


@contextlib.contextmanager
def ready_page(p: Playwright, url: str) -> Iterator[Page]:
    """The server's page in a new headless Chromium, its detector list loaded."""
    browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    try:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#detector option[value='haar']", state="attached")
        yield page
    finally:
        browser.close()


def test_page_shows_a_labelled_box_for_the_astronaut() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with running_server(ServeSettings()) as url:
        api = httpx.post(
            f"{url}/v1/estimate?tta=true&age_threshold=18",
            files={"image": ("astronaut.png", ASTRONAUT.read_bytes())},
            timeout=60,
        ).json()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 1100})
                outside: list[str] = []
                page.on(
                    "request",
                    lambda r: (
                        None if r.url.startswith((url, f"blob:{url}")) else outside.append(r.url)
                    ),
                )
                console_errors: list[str] = []
                page.on(
                    "console",
                    lambda m: console_errors.append(m.text) if m.type == "error" else None,
                )
                page.goto(url + "/")
                page.wait_for_selector("#detector option[value='haar']", state="attached")
                page.fill("#age_threshold", "18")
                page.set_input_files("#file", str(ASTRONAUT))
                box = page.wait_for_selector(".face-box .face-label", timeout=30_000)
                label = box.inner_text().strip()
                page.wait_for_function("document.getElementById('photo').naturalWidth > 0")
                page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
                boxes = page.locator(".face-box").count()
                rows = page.locator("#faces tbody tr").all_inner_texts()
                status = page.inner_text("#status")
                assert not page.is_visible("#json")  # the raw JSON is shown on demand
                page.click("#raw summary")
                shown_json = page.inner_text("#json")
                geometry = page.eval_on_selector(
                    ".face-box",
                    "b => { const r = b.getBoundingClientRect();"
                    " const i = document.getElementById('photo').getBoundingClientRect();"
                    " return [r.left - i.left, r.top - i.top, r.width, i.width]; }",
                )
                # The OpenAPI page renders from local files (Swagger UI 5 reads OpenAPI 3.1).
                page.goto(url + "/docs")
                page.wait_for_selector(".opblock", timeout=15_000)
                operations = page.locator(".opblock").count()
            finally:
                browser.close()

    assert boxes == 1
    match = LABEL.match(label)
    assert match, f"label {label!r} is not 'age ± std, gender p'"
    face = api["faces"][0]
    assert float(match.group(1)) == pytest.approx(face["age"]["value"], abs=0.051)
    assert float(match.group(2)) == pytest.approx(face["age"]["std"], abs=0.051)
    assert match.group(3) == face["gender"]["label"]
    assert float(match.group(4)) == pytest.approx(face["gender"]["probability"], abs=0.0051)
    assert len(rows) == 1
    cells = rows[0].split("\t")
    assert cells[4] == face["gender"]["label"]
    assert float(cells[6]) == pytest.approx(face["age"]["p_at_least"]["18"], abs=0.0006)
    assert status.startswith("1 face in 512 \u00d7 512")
    assert '"faces"' in shown_json and str(face["age"]["value"]) in shown_json
    # The box sits where the API says, scaled to the displayed image.
    left, top, width, shown_width = geometry
    scale = shown_width / api["width"]
    x1, y1, x2, _ = face["box"]
    assert left == pytest.approx(x1 * scale, abs=2)
    assert top == pytest.approx(y1 * scale, abs=2)
    assert width == pytest.approx((x2 - x1) * scale, abs=2)
    assert operations == 9  # estimate, 4 live-session routes, models, 3 probes
    assert outside == [], f"the page fetched from elsewhere: {outside}"
    assert console_errors == []


def test_page_lists_the_faces_of_a_photo_it_cannot_show(tmp_path: Path) -> None:
    """A HEIC (an iPhone's photo): the server reads it, Chromium cannot draw it. The page
    waited for the picture to load before showing anything, so it showed nothing."""
    pillow_heif = pytest.importorskip("pillow_heif", reason="agegender[heif] is not installed")
    heic = tmp_path / "IMG_0001.HEIC"
    with Image.open(ASTRONAUT) as image:
        pillow_heif.from_pillow(image.convert("RGB").crop((0, 0, 512, 384))).save(heic, quality=92)
    with running_server(ServeSettings()) as url, sync_playwright() as p, ready_page(p, url) as page:
        page.set_input_files("#file", str(heic))
        page.wait_for_selector("#result", state="visible", timeout=30_000)
        rows = page.locator("#faces tbody tr").count()
        status = page.inner_text("#status")
        stage_shown = page.is_visible("#stage")
    assert rows == 1
    assert status.startswith("1 face in 512 \u00d7 384")
    assert not stage_shown  # no broken picture with boxes over nothing


def test_page_asks_for_the_api_key_and_uses_it() -> None:
    with running_server(ServeSettings(api_key="page-key")) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#key-row", state="visible")
            assert "API key" in page.inner_text("#models")
            page.fill("#api_key", "wrong")
            page.set_input_files("#file", str(ASTRONAUT))
            page.wait_for_selector("#status.error")
            refused = page.inner_text("#status")
            page.fill("#api_key", "page-key")
            page.dispatch_event("#api_key", "change")
            page.wait_for_selector("#detector option[value='haar']", state="attached")
            page.set_input_files("#file", [])
            page.set_input_files("#file", str(ASTRONAUT))
            label = page.wait_for_selector(".face-box .face-label", timeout=30_000).inner_text()
        finally:
            browser.close()
    assert refused.startswith("error 401")
    assert LABEL.match(label.strip())


def test_page_after_an_error_and_a_new_key(tmp_path: Path) -> None:
    """A failed upload hides the previous image's table and JSON (they were left showing
    under the error); entering the key again does not add the detector list again."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with running_server(ServeSettings()) as url, sync_playwright() as p, ready_page(p, url) as page:
        options = page.eval_on_selector_all("#detector option", "o => o.length")
        page.select_option("#detector", "haar")
        page.uncheck("#tta")
        for _ in range(2):  # loadModels runs again: wait for its answer, then its DOM work
            with page.expect_response(lambda r: r.url.endswith("/v1/models")):
                page.dispatch_event("#api_key", "change")
            page.wait_for_function("document.getElementById('models').textContent")
        again = page.eval_on_selector_all("#detector option", "o => o.length")
        kept = (page.input_value("#detector"), page.is_checked("#tta"))
        page.set_input_files("#file", str(ASTRONAUT))
        page.wait_for_selector("#result", state="visible", timeout=30_000)
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status.error")
        hidden = page.eval_on_selector("#result", "e => e.hidden")
    assert again == options  # "preset's" and each detector once
    assert kept == ("haar", False)  # the user's choices survive a reload of the list
    assert hidden


def write_y4m(path: Path, rgb: np.ndarray, frames: int, fps: int = 10) -> None:
    """A Y4M clip (Chromium's fake camera reads it): the astronaut's face patch moving
    2 px a frame to the right over a grey background."""
    px1, py1, px2, py2 = PATCH
    patch = rgb[py1:py2, px1:px2, ::-1]
    width, height = 640, 480
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for index in range(frames):
            canvas = np.full((height, width, 3), 120, np.uint8)
            x0, y0 = 60 + 2 * index, 120
            canvas[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
            out.write(b"FRAME\n" + cv2.cvtColor(canvas, cv2.COLOR_BGR2YUV_I420).tobytes())


TRACK_LABEL = re.compile(r"^#1 \d+ \((\d+)\u2013(\d+)\) (female|male) (0\.\d\d|1\.00)$")


def fake_camera_args(tmp_path: Path, rgb: np.ndarray) -> list[str]:
    """Chromium's arguments for a fake webcam playing the moving-face clip (80 frames)."""
    clip = tmp_path / "face.y4m"
    write_y4m(clip, rgb, 80)
    return [
        *CHROMIUM_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]


def test_webcam_live_mode_shows_tracked_fused_estimates(
    tmp_path: Path, astronaut_rgb: np.ndarray
) -> None:
    """The webcam mode on Chromium's fake camera (a clip of the moving face): each frame
    goes to a live session; the box is labelled with track #1 and its fused estimate,
    and stopping lists the person the session saw."""
    ARTIFACTS.mkdir(exist_ok=True)
    args = fake_camera_args(tmp_path, astronaut_rgb)
    estimator = shared_estimator().derive(upsample=0)
    with running_server(ServeSettings(), estimator) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=args)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1100})
            console_errors: list[str] = []
            page.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )
            page.goto(url + "/")
            page.wait_for_selector("#detector option[value='haar']", state="attached")
            page.click("#webcam")
            page.click("#live")
            label = page.wait_for_selector(
                ".face-box[data-track='1'] .face-label", timeout=60_000
            ).inner_text()
            # a few more frames of the same track
            page.wait_for_function(
                "/frame ([4-9]|\\d\\d+),/.test(document.getElementById('status').textContent)",
                timeout=60_000,
            )
            tracks = page.eval_on_selector_all(
                ".face-box[data-track]", "boxes => boxes.map(b => b.dataset.track)"
            )
            page.screenshot(path=str(ARTIFACTS / "serve-live.png"), full_page=True)
            page.click("#live")
            page.wait_for_selector("#live-title:has-text('People seen')")
            rows = page.locator("#people tbody tr").all_inner_texts()
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert TRACK_LABEL.match(label.strip()), label
    assert tracks == ["1"]
    assert len(rows) == 1 and rows[0].split("\t")[0] == "#1"
    assert re.match(r"^stopped: 1 person in \d+ frames$", status), status
    assert console_errors == []


def test_stopping_live_mode_waits_for_the_frame_on_its_way(
    tmp_path: Path, astronaut_rgb: np.ndarray
) -> None:
    """Stop pressed while a frame is on its way: the page ended the session at once, so
    the server answered that frame 404 (a console error, seen on a busy machine) and
    lost it. Now the page waits for the frame's answer, then ends the session, which
    counts it. The frame is held in the browser until the page had time to send the end
    (the same hold that showed the old page sending it at once)."""
    args = fake_camera_args(tmp_path, astronaut_rgb)
    estimator = shared_estimator().derive(upsample=0)
    held: list[Route] = []
    hold = False
    seen: list[tuple[str, int]] = []  # (method, status) of each answer under /v1/sessions/

    def frames(route: Route) -> None:
        if hold and not held:
            held.append(route)  # answered below, after the stop
        else:
            route.continue_()

    with running_server(ServeSettings(), estimator) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=args)
        try:
            page = browser.new_page()
            console_errors: list[str] = []
            page.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )
            page.on(
                "response",
                lambda r: (
                    seen.append((r.request.method, r.status)) if "/v1/sessions/" in r.url else None
                ),
            )
            deletes: list[str] = []
            page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
            page.route("**/v1/sessions/*/frames", frames)
            page.goto(url + "/")
            page.wait_for_selector("#detector option[value='haar']", state="attached")
            page.click("#webcam")
            page.click("#live")
            page.wait_for_function(
                "/frame ([2-9]|\\d\\d+),/.test(document.getElementById('status').textContent)",
                timeout=60_000,
            )
            hold = True
            while not held:
                page.wait_for_timeout(20)
            page.click("#live")
            for _ in range(100):  # the old page sent the end at once; give it 2 s
                if deletes:
                    break
                page.wait_for_timeout(20)
            ended_under_the_frame = bool(deletes)
            stopping = page.inner_text("#status")
            held[0].continue_()
            page.wait_for_selector("#live-title:has-text('People seen')", timeout=60_000)
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert not ended_under_the_frame
    assert stopping == "stopping: waiting for the frame on its way"
    assert console_errors == []
    answered = [code for method, code in seen if method == "POST"]  # the frames' answers
    assert answered and set(answered) == {200}, seen
    assert seen[-1] == ("DELETE", 200), seen
    # the held frame is counted in the session's final figures
    match = re.match(r"^stopped: \d+ (?:person|people) in (\d+) frames$", status)
    assert match and int(match.group(1)) == len(answered), (status, seen)
