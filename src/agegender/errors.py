"""The exception hierarchy: one-line messages that name the input and the reason."""

from __future__ import annotations


class AgegenderError(Exception):
    """Base class of every error this package raises on purpose."""


def single_line(text: str) -> str:
    """`text` with its line breaks written as \\n and \\r (a file name may hold one), so
    that an error line, a table row or a comment stays one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class ImageError(AgegenderError):
    """An input could not be read or decoded as an image."""


class UnsupportedImageError(ImageError):
    """The bytes are not in any image format Pillow can read (the server answers 415)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the configured limit (decompression bomb guard)."""


class CardError(AgegenderError):
    """A model card is malformed or does not match its graph."""


class ModelNotInstalledError(AgegenderError):
    """A card's file is not in the store; the message says how to get it."""


class ModelFileError(AgegenderError):
    """A model file exists but is not what its card says (hash, size, graph)."""


class TfjsError(AgegenderError):
    """A TF.js graph model cannot be converted: malformed manifest, short weight data, an
    op or attribute combination this converter does not implement. One line, naming the
    node (or weight) and the reason."""


class DownloadError(AgegenderError):
    """A model file could not be downloaded (HTTP error, connection lost, wrong size)."""


class NetworkError(DownloadError):
    """The server could not be reached, or would not serve the file (after the retries)."""
