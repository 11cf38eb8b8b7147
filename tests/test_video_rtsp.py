"""``agegender video rtsp://...`` against an RTSP server on 127.0.0.1.

FFmpeg's RTSP muxer only pushes to a server (``-rtsp_flags listen`` is an input option:
it receives a pushed stream), so it cannot serve a player. The server here is split in
two: the ffmpeg that ``imageio-ffmpeg`` ships encodes a composed clip (H.264, looped, at
its own frame rate) into RTP packets sent over UDP to 127.0.0.1, and a small RTSP server
in this file answers OPTIONS, DESCRIBE (ffmpeg's SDP), SETUP (TCP interleaved, which
OpenCV's FFmpeg backend asks for by default; a UDP request gets 461, to which FFmpeg's
client answers by retrying over TCP) and PLAY, then relays the RTP packets to the client
over the RTSP connection. No network beyond the loopback, no camera.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from test_video_tracks import face_box, write_clip

from agegender import streams
from agegender.cli import main

LOOP = 40  # frames in the clip; the face goes right and back, so the loop has no jump
HANG_GUARD = 120.0  # seconds; a guard against a hang, not a speed limit


def _place(i: int) -> tuple[float, float]:
    phase = i % LOOP
    step = phase if phase <= LOOP // 2 else LOOP - phase
    return (120 + 3 * step, 110)


def _ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip(
        "imageio_ffmpeg", reason="imageio-ffmpeg (the video extra) is not installed"
    )
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    muxers = subprocess.run(
        [exe, "-hide_banner", "-muxers"], capture_output=True, text=True, timeout=60
    ).stdout
    encoders = subprocess.run(
        [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=60
    ).stdout
    if not re.search(r"^\s*E\s+rtp\s", muxers, re.M):
        pytest.skip(f"{exe} has no RTP muxer")
    if "libx264" not in encoders:
        pytest.skip(f"{exe} has no libx264 encoder")
    return exe


class RtspServer:
    """One RTSP path (``/live``) on 127.0.0.1, fed by ffmpeg's RTP output.

    ``frames_limit``: after relaying that many complete frames (RTP marker bit) to a
    client, the server stops: ffmpeg is killed, the listening socket and the client's
    connection are closed, so the stream ends mid-way and reconnections are refused.
    """

    def __init__(self, ffmpeg: str, clip: Path, frames_limit: int | None = None):
        self.frames_limit = frames_limit
        self.frames_sent = 0
        self.transports: list[str] = []  # each SETUP's Transport header
        self.stopped = threading.Event()
        self._stopping = threading.Lock()
        self._lock = threading.Lock()
        self._clients: list[socket.socket] = []
        self._rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._rtp.bind(("127.0.0.1", 0))
        self._rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._rtcp.bind(("127.0.0.1", 0))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self.port = self._listener.getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/live"
        sdp_file = clip.with_suffix(".sdp")
        rtp_port, rtcp_port = self._rtp.getsockname()[1], self._rtcp.getsockname()[1]
        # the error log goes to a file: a pipe nobody reads would fill and stall ffmpeg
        self._log = open(clip.with_suffix(".log"), "w")  # noqa: SIM115 (closed in stop)
        self._ffmpeg = subprocess.Popen(
            [
                ffmpeg,
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
                str(clip),
                "-an",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "5",  # a key frame every half second: a client joining mid-stream decodes soon
                "-x264-params",
                "repeat-headers=1",
                "-payload_type",
                "96",
                "-f",
                "rtp",
                "-sdp_file",
                str(sdp_file),
                f"rtp://127.0.0.1:{rtp_port}?rtcpport={rtcp_port}&pkt_size=1200",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + HANG_GUARD
        while not (sdp_file.exists() and "m=video" in sdp_file.read_text()):
            if self._ffmpeg.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = clip.with_suffix(".log").read_text()
                pytest.skip(f"ffmpeg did not start an RTP stream: {log.strip()[-300:]}")
            time.sleep(0.05)
        self.sdp = self._describe(sdp_file.read_text())
        for target in (self._relay, self._drain_rtcp, self._accept):
            threading.Thread(target=target, daemon=True).start()

    @staticmethod
    def _describe(sdp: str) -> str:
        """ffmpeg's SDP (for a UDP receiver) as an RTSP DESCRIBE answer."""
        lines = []
        for line in sdp.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            elif line.startswith("m=video"):
                line = re.sub(r"^m=video \d+", "m=video 0", line)
            lines.append(line)
        lines.append("a=control:streamid=0")
        return "\r\n".join(lines) + "\r\n"

    # -- the RTP relay -----------------------------------------------------------------
    def _relay(self) -> None:
        while not self.stopped.is_set():
            try:
                packet = self._rtp.recv(65536)
            except OSError:
                return
            with self._lock:
                clients = list(self._clients)
            if not clients:
                continue
            for client in clients:
                try:
                    client.sendall(b"$\x00" + len(packet).to_bytes(2, "big") + packet)
                except OSError:
                    self._drop(client)
            if len(packet) > 1 and packet[1] & 0x80:  # marker: the last packet of a frame
                self.frames_sent += 1
                if self.frames_limit is not None and self.frames_sent >= self.frames_limit:
                    self.stop()
                    return

    def _drain_rtcp(self) -> None:
        while not self.stopped.is_set():
            try:
                self._rtcp.recv(65536)
            except OSError:
                return

    # -- RTSP --------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while not self.stopped.is_set():
                first = reader.read(1)
                if not first:
                    return
                if first == b"$":  # the client's interleaved RTCP: skipped
                    header = reader.read(3)
                    reader.read(int.from_bytes(header[1:3], "big"))
                    continue
                head = first + b"".join(iter(reader.readline, b"\r\n"))
                request, *header_lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                if length:
                    reader.read(length)
                method = request.split(" ", 1)[0]
                playing = self._answer(client, method, headers)
                if playing:
                    with self._lock:
                        self._clients.append(client)
        except OSError:
            return
        finally:
            self._drop(client)
            reader.close()

    def _answer(self, client: socket.socket, method: str, headers: dict[str, str]) -> bool:
        cseq = headers.get("cseq", "0")
        extra: list[str] = []
        body = ""
        status = "200 OK"
        if method == "OPTIONS":
            extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
        elif method == "DESCRIBE":
            body = self.sdp
            extra += [f"Content-Base: {self.url}/", "Content-Type: application/sdp"]
        elif method == "SETUP":
            transport = headers.get("transport", "")
            self.transports.append(transport)
            if "TCP" not in transport.upper():
                status = "461 Unsupported Transport"
            else:
                extra += ["Transport: RTP/AVP/TCP;unicast;interleaved=0-1", "Session: 4242"]
        elif method in ("PLAY", "GET_PARAMETER", "TEARDOWN"):
            extra.append("Session: 4242")
        else:
            status = "405 Method Not Allowed"
        lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", *extra]
        lines.append(f"Content-Length: {len(body.encode())}")
        message = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
        with self._lock:
            client.sendall(message)
        return method == "PLAY" and status.startswith("200")

    def _drop(self, client: socket.socket) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        client.close()

    def stop(self) -> None:
        with self._stopping:  # from the relay (frames_limit) and the fixture
            self._stop()

    def _stop(self) -> None:
        self.stopped.set()
        if self._ffmpeg.poll() is None:
            self._ffmpeg.kill()
        self._ffmpeg.wait(timeout=30)
        self._log.close()
        for sock in (self._listener, self._rtp, self._rtcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            self._drop(client)


@pytest.fixture(scope="module")
def looped_clip(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: NDArray[np.uint8]) -> Path:
    path = tmp_path_factory.mktemp("rtsp") / "face.avi"
    write_clip(path, astronaut_rgb, [(_place, False)], LOOP)
    return path


@pytest.fixture()
def rtsp_server(looped_clip: Path, request: pytest.FixtureRequest) -> Iterator[RtspServer]:
    limit = getattr(request, "param", None)
    server = RtspServer(_ffmpeg(), looped_clip, frames_limit=limit)
    try:
        yield server
    finally:
        server.stop()


def _run(argv: list[str]) -> int:
    """main(argv) in a thread, bounded by the hang guard."""
    result: list[int | BaseException] = []

    def target() -> None:
        try:
            result.append(main(argv))
        except BaseException as error:  # re-raised in the test
            result.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"agegender video {argv[1]} hung"
    (outcome,) = result
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def test_rtsp_stream_is_read_and_tracked(
    rtsp_server: RtspServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames.jsonl"
    code = _run(
        [
            "video",
            rtsp_server.url,
            "--tracks",
            "-",
            "--frames",
            str(frames),
            "--max-frames",
            "20",
            "--upsample",
            "0",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert rtsp_server.transports == ["RTP/AVP/TCP;unicast;interleaved=0-1"]
    records = [line for line in frames.read_text().splitlines() if line.strip()]
    assert len(records) == 20
    people = [json.loads(line) for line in out.splitlines() if line.strip()]
    (person,) = people
    assert person["track"] == 1
    assert person["frames_seen"] >= 15
    assert person["gender"]["label"] == "female"
    assert 15 <= person["age"]["value"] <= 60
    ids = {f["track"] for r in map(json.loads, records) for f in r["faces"] if f["track"]}
    assert ids == {1}
    # the face is where the clip put it (somewhere on its path, whatever frame came first)
    x1, y1, x2, y2 = face_box(*_place(0), False)
    side = (x2 - x1 + y2 - y1) / 2
    start = person["path"]["start"]
    assert abs(start[1] - (y1 + y2) / 2) < 10 and abs(start[2] - side) < 0.4 * side


@pytest.mark.parametrize("rtsp_server", [30], indirect=True)
def test_rtsp_server_stopping_is_one_error_line(
    rtsp_server: RtspServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server relays 30 frames, then stops and refuses connections: the live run
    # reconnects (short backoff here), fails, and ends with one error line and status 1;
    # the person seen so far is still written.
    monkeypatch.setattr(streams, "BACKOFF_START", 0.05)
    tracks = tmp_path / "t.jsonl"
    code = _run(
        [
            "video",
            rtsp_server.url,
            "--live",
            "--retries",
            "2",
            "--upsample",
            "0",
            "--min-hits",
            "1",
            "--tracks",
            str(tracks),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rtsp_server.stopped.is_set()
    assert code == 1, err
    errors = [line for line in err if line.startswith("agegender: error: ")]
    assert len(errors) == 1, err
    assert re.fullmatch(
        rf"agegender: error: {re.escape(rtsp_server.url)}: stream lost after [1-9]\d* frames; "
        r"2 reconnection attempts failed \(.*cannot open the stream\)",
        errors[0],
    ), errors[0]
    assert "reconnections" in err[-1]
    assert tracks.read_text().strip()  # the person seen before the loss
