"""The service's error: an HTTP status and the JSON body `{"error": {"code", "message"}}`."""

from __future__ import annotations


class ApiError(Exception):
    """An answer other than 200, raised anywhere in a request and rendered by one handler."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON body every error answer carries."""
        return {"error": {"code": self.code, "message": self.message}}
