"""Live sessions: frame-by-frame tracking for a client that sends a stream one image at a
time (the web page's webcam mode).

A session is what ``agegender video`` keeps for one input, held between requests: one
:class:`agegender.people.PeopleTracker` (SORT tracker + per-track evidence and fusion), so
a face sent in successive frames keeps its track id and its fused interval narrows as
frames add evidence. Plain HTTP rather than a WebSocket: uvicorn serves WebSockets only
with the ``websockets`` or ``wsproto`` package, neither of which the ``serve`` extras
install; one POST per frame also reuses the upload, admission, error and metrics paths of
``/v1/estimate`` unchanged, and the page waits for each answer before sending the next
frame, which drops frames on a slow server instead of queueing them.

Sessions live in memory, at most ``max_sessions`` at once (429 beyond), and expire after
``idle_s`` seconds without a frame; expiry is checked whenever the registry is used, with
an injected clock (tests move it instead of sleeping). A session processes one frame at a
time: a frame sent while the previous one is still running is refused (409), because a
tracker must see its frames in order.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ApiError

if TYPE_CHECKING:
    from ..people import PeopleTracker, Person

MAX_PEOPLE_KEPT = 1000  # finished people a session remembers for its final summary
EXPIRED_IDS_KEPT = 256  # ids remembered to say "expired" rather than "no such session"


@dataclass(frozen=True)
class SessionOptions:
    """How a session tracks: the `agegender video` options that make sense per request."""

    detect_every: int = 1
    min_hits: int = 3
    max_lost: float = 1.0  # seconds without a match before a track ends

    def to_dict(self) -> dict[str, Any]:
        return {
            "detect_every": self.detect_every,
            "min_hits": self.min_hits,
            "max_lost": self.max_lost,
        }


@dataclass
class LiveSession:
    """One client's stream: its tracker, frame count and the people whose tracks ended."""

    id: str
    tracker: PeopleTracker
    options: SessionOptions
    created: float
    last_used: float
    frames: int = 0
    people: list[dict[str, Any]] = field(default_factory=list)
    busy: threading.Lock = field(default_factory=threading.Lock)
    ended: bool = False  # DELETE ran: a frame that got the session before is refused
    size: tuple[int, int] | None = None  # (width, height) of its frames: one per session

    def add_people(self, people: list[Person]) -> None:
        """Remember the people whose tracks ended (the newest MAX_PEOPLE_KEPT)."""
        self.people.extend(p.to_dict() for p in people)
        del self.people[:-MAX_PEOPLE_KEPT]

    def summary(self, now: float) -> dict[str, Any]:
        """What GET and DELETE answer: the session's state, without per-frame detail."""
        return {
            "id": self.id,
            "frames": self.frames,
            "age_s": round(now - self.created, 3),
            "idle_s": round(now - self.last_used, 3),
            "options": self.options.to_dict(),
            "people": list(self.people),
        }


class Sessions:
    """The live sessions of one server: capped in number, expired when idle.

    `clock` is read for every expiry decision (``time.monotonic`` unless a test gives
    another), so idle expiry is tested by moving a fake clock, never by sleeping.
    """

    def __init__(
        self,
        max_sessions: int,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.clock = clock
        self._live: dict[str, LiveSession] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._live)

    def sweep(self) -> int:
        """End the sessions idle for longer than `idle_s` (a busy one is never idle);
        returns how many are left."""
        now = self.clock()
        with self._lock:
            for key, session in list(self._live.items()):
                if now - session.last_used > self.idle_s and not session.busy.locked():
                    del self._live[key]
                    self._expired[key] = None
            while len(self._expired) > EXPIRED_IDS_KEPT:
                self._expired.popitem(last=False)
            return len(self._live)

    def create(
        self, make_tracker: Callable[[], PeopleTracker], options: SessionOptions
    ) -> LiveSession:
        """A new session, or 429 when `max_sessions` are live (after expiring idle ones)."""
        self.sweep()
        now = self.clock()
        with self._lock:
            if len(self._live) >= self.max_sessions:
                # the soonest a slot frees by itself: when the longest-idle session expires
                oldest = min(s.last_used for s in self._live.values())
                wait = max(1, math.ceil(oldest + self.idle_s - now))
                raise ApiError(
                    429,
                    "too_many_sessions",
                    f"{len(self._live)} live sessions (limit {self.max_sessions}); end one "
                    f"with DELETE /v1/sessions/ID, or retry when an idle one expires "
                    f"({self.idle_s:g} s without a frame)",
                    {"Retry-After": str(wait)},
                )
            key = secrets.token_urlsafe(12)
            session = LiveSession(key, make_tracker(), options, now, now)
            self._live[key] = session
            return session

    def get(self, key: str) -> LiveSession:
        """The live session `key`, or 404 (never made, ended, or expired when idle)."""
        self.sweep()
        with self._lock:
            session = self._live.get(key)
            if session is not None:
                return session
            expired = key in self._expired
        shown = "".join(c for c in key if c.isprintable())[:40]
        if expired:
            message = (
                f"session {shown} expired after {self.idle_s:g} s without a frame; "
                "start a new one with POST /v1/sessions"
            )
        else:
            message = f"no session {shown}; start one with POST /v1/sessions"
        raise ApiError(404, "session_not_found", message)

    def end(self, key: str) -> LiveSession:
        """Remove the session `key` (404 as `get`); its tracks end with it."""
        session = self.get(key)
        with self._lock:
            self._live.pop(key, None)
        return session

    def touch(self, session: LiveSession) -> None:
        """The session was used now (a frame started or finished)."""
        session.last_used = self.clock()
