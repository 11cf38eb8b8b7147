"""Spies on ONNX Runtime sessions (what the code under test fed them)."""

from __future__ import annotations

from typing import Any


class CountingSession:
    """Wraps a session and records every run: its output names and batch rows (`calls`),
    the rows alone (`batches`); everything else is the wrapped session's."""

    def __init__(self, session: Any):
        self.session = session
        self.calls: list[tuple[list[str], int]] = []
        self.batches: list[int] = []

    def run(self, names: Any, feeds: dict[str, Any]) -> Any:
        rows = len(next(iter(feeds.values())))
        self.calls.append((list(names), rows))
        self.batches.append(rows)
        return self.session.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)
